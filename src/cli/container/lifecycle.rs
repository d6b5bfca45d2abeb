//! `hull start`, `stop`, `restart`, `kill`, `rm`, `wait`, and the hidden
//! `__container-vmm` that runs a detached container's VMM.

use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::{exit_code, CommandError};
use crate::cli::exit;
use crate::cli::progress_view::{ProgressMode, StageFile, StageFileReader, StageView};
use crate::container::engine::{self, Attach};
use crate::container::state::{now_rfc3339, pid_alive, Status};
use crate::container::store::{self, Container, ContainerStore};
use crate::container::State;
use crate::guest::agent_client::AgentError;
use crate::progress::Progress;

/// `hull stop`.
pub fn stop_all(
    root: &Path,
    store: &ContainerStore,
    time: u64,
    containers: &[String],
) -> anyhow::Result<u8> {
    each(store, containers, |_, c| {
        stop(root, c, Duration::from_secs(time))
    })
}

/// `hull restart`: stop, then start detached.
pub fn restart(
    root: &Path,
    store: &ContainerStore,
    time: u64,
    containers: &[String],
) -> anyhow::Result<u8> {
    each(store, containers, |name, c| {
        stop(root, c, Duration::from_secs(time))?;
        start_detached(
            root,
            &store.find(name)?,
            &StageView::new(ProgressMode::Auto, false),
        )
    })
}

/// `hull kill`.
pub fn kill(
    root: &Path,
    store: &ContainerStore,
    signal: &str,
    process: Option<u32>,
    containers: &[String],
) -> anyhow::Result<u8> {
    let sig = parse_signal(signal)?;
    match process {
        Some(id) => each(store, containers, |_, c| signal_process(root, c, id, sig)),
        None => each(store, containers, |_, c| signal_main(root, c, sig)),
    }
}

/// `kill --process ID`: a VM's agent process other than the main one (an
/// exec whose `--pid-file` gave its id).
fn signal_process(root: &Path, c: &Container, id: u32, sig: i32) -> anyhow::Result<()> {
    if c.state.status != Status::Running || c.config.isolation != crate::oci::Isolation::Vm {
        return Err(CommandError::NotRunning(c.config.name.clone()).into());
    }
    crate::guest::agent_client::AgentClient::connect(&engine::socket_path(root, &c.config.id))?
        .signal(id, sig)?;
    Ok(())
}

/// `hull rm`.
pub fn rm(
    root: &Path,
    store: &ContainerStore,
    force: bool,
    volumes: bool,
    containers: &[String],
) -> anyhow::Result<u8> {
    each(store, containers, |name, c| {
        if c.state.status == Status::Running {
            if !force {
                return Err(CommandError::Running(name.to_owned()).into());
            }
            kill_vmm(root, c);
        } else if c.config.isolation == crate::oci::Isolation::Vm
            && crate::container::fs_vm::is_running(c)?
        {
            // Stopped, yet its disk is held: a helper VM (commit, cp,
            // diff, export) is reading or writing it.
            return Err(CommandError::Busy(name.to_owned()).into());
        }
        if c.config.isolation == crate::oci::Isolation::Container {
            // A monitor killed with -9 leaves its container running: the
            // runtime ends whatever it still knows of it.
            crate::oci::engine::force_end(root, &c.config, None);
        }
        // A VMM killed with -9 could not remove its socket, nor take its
        // name off its user network.
        let _ = std::fs::remove_file(engine::socket_path(root, &c.config.id));
        crate::network::detach(root, &c.config.network, &c.config.id)?;
        store.remove(&c.dir)?;
        if volumes {
            super::volumes::remove_anonymous(root, &c.config);
        }
        Ok(())
    })
}

/// Does `f` to each named container in turn and prints the name once it
/// is done, as Docker does; stops at the first error.
fn each(
    store: &ContainerStore,
    containers: &[String],
    mut f: impl FnMut(&str, &Container) -> anyhow::Result<()>,
) -> anyhow::Result<u8> {
    for name in containers {
        let c = store.find(name)?;
        f(name, &c)?;
        println!("{name}");
    }
    Ok(0)
}

/// `hull start`: detached, or with `-a` attached to the first container.
pub fn start(
    root: &Path,
    store: &ContainerStore,
    attach: bool,
    containers: &[String],
) -> anyhow::Result<u8> {
    for name in containers {
        let c = store.find(name)?;
        if c.state.status == Status::Running {
            continue;
        }
        if attach {
            // A created container's first start can be as slow as a run's.
            let view = StageView::new(ProgressMode::Auto, false);
            return Ok(exit_code(engine::run(
                root,
                &c.dir,
                &c.config,
                Attach::Terminal { stdin: false },
                &view,
            )?));
        }
        start_detached(root, &c, &StageView::new(ProgressMode::Auto, false))?;
        println!("{name}");
    }
    Ok(0)
}

/// `hull wait`: prints each container's exit code once it has exited.
pub fn wait(store: &ContainerStore, containers: &[String]) -> anyhow::Result<u8> {
    for name in containers {
        let c = store.find(name)?;
        loop {
            let s = match State::load(&c.dir) {
                Ok(s) => s,
                // Removed while we waited: Docker's "No such container".
                Err(e) => return Err(store.find(name).err().map_or(e.into(), Into::into)),
            };
            // A created container is waited for until it has run and
            // ended, as Docker does.
            if !matches!(s.status, Status::Running | Status::Created) {
                println!("{}", s.exit_code.unwrap_or(0));
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(0)
}

/// `hull __container-vmm <id>`: the detached container's VMM process.
pub fn vmm(root: &Path, store: &ContainerStore, id: &str) -> anyhow::Result<u8> {
    let c = store.find(id)?;
    // Our stderr is a log file: the stages go where `start_detached`
    // reads them.
    let progress = StageFile::open(&c.dir.join(PROGRESS_FILE))?;
    let code = engine::run(root, &c.dir, &c.config, Attach::Detached, &progress)?;
    if c.config.auto_remove {
        store.remove(&c.dir)?;
        super::volumes::remove_anonymous(root, &c.config);
    }
    Ok(exit_code(code))
}

/// Where a detached container's VMM process records the stages of its
/// start (in the container's directory).
const PROGRESS_FILE: &str = "start-progress.jsonl";

/// Starts the container's VMM as a background hull process and waits until
/// the container's process runs (or failed), showing the stages of its
/// start on `progress`.
pub fn start_detached(root: &Path, c: &Container, progress: &dyn Progress) -> anyhow::Result<()> {
    let mut stages = StageFileReader::create(&c.dir.join(PROGRESS_FILE))?;
    // `wait_started` waits for a process id: not the last run's.
    let mut state = State::load(&c.dir)?;
    state.process_id = None;
    state.save(&c.dir)?;
    let result = wait_started(spawn_vmm(root, c)?, c, &mut stages, progress);
    stages.replay(progress);
    result
}

/// Spawns `hull __container-vmm ID`, detached from our session.
fn spawn_vmm(root: &Path, c: &Container) -> anyhow::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--root")
        .arg(root)
        .args(["__container-vmm", &c.config.id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(crate::container::store::create_private(
            &c.dir.join("vmm.log"),
        )?);
    // SAFETY: setsid is async-signal-safe; it detaches the VMM from our
    // session so it outlives this command and our terminal.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    Ok(cmd.spawn()?)
}

/// Waits until the VMM process `child` runs the container's process, or
/// ended, replaying its stages meanwhile.
fn wait_started(
    mut child: std::process::Child,
    c: &Container,
    stages: &mut StageFileReader,
    progress: &dyn Progress,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        stages.replay(progress);
        if let Ok(Some(status)) = child.try_wait() {
            // It ended already: finished quickly, or failed.
            let s = State::load(&c.dir).ok();
            if let Some(err) = s.and_then(|s| s.error) {
                let e = CommandError::StartFailed(store::short(&c.config.id), err);
                // The VMM process exits 126/127 when the program could not
                // be executed: keep that kind for our own exit code.
                return Err(match exit::failure_of(status.code()) {
                    Some(f) => AgentError::Exec(f, e.to_string()).into(),
                    None => e.into(),
                });
            }
            return Ok(());
        }
        if let Ok(s) = State::load(&c.dir) {
            if s.process_id.is_some() {
                return Ok(());
            }
        }
        if start.elapsed() > Duration::from_secs(900) {
            let _ = child.kill();
            return Err(
                CommandError::StartFailed(store::short(&c.config.id), "timed out".into()).into(),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn signal_main(root: &Path, c: &Container, sig: i32) -> anyhow::Result<()> {
    let Some(pid) = c
        .state
        .process_id
        .filter(|_| c.state.status == Status::Running)
    else {
        return Err(CommandError::NotRunning(c.config.name.clone()).into());
    };
    // Recorded before it is sent: the container's `die` that the signal
    // may cause comes after it.
    crate::events::container(root, &c.config, "kill", &[("signal", &sig.to_string())]);
    if c.config.isolation == crate::oci::Isolation::Container {
        // The recorded PID is the container's init on the host.
        // SAFETY: kill(2) with a PID and a signal number.
        if unsafe { libc::kill(pid as i32, sig) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    } else {
        crate::guest::agent_client::AgentClient::connect(&engine::socket_path(root, &c.config.id))?
            .signal(pid, sig)?;
    }
    Ok(())
}

fn wait_exited(c: &Container, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        match State::load(&c.dir) {
            Ok(s) if s.status != Status::Running => return true,
            Err(_) => return true,
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    false
}

/// SIGTERM, then SIGKILL after `grace`, then the VMM itself.
fn stop(root: &Path, c: &Container, grace: Duration) -> anyhow::Result<()> {
    if c.state.status != Status::Running {
        return Ok(());
    }
    let ended = (signal_main(root, c, libc::SIGTERM).is_ok() && wait_exited(c, grace)) || {
        // A SIGKILL that cannot be delivered most often means the process
        // ended after the grace time ran out and its exit is being
        // recorded (the guest's clean shutdown): wait for that too,
        // shorter, rather than kill the VMM in the middle of it.
        let wait = if signal_main(root, c, libc::SIGKILL).is_ok() {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(10)
        };
        wait_exited(c, wait)
    };
    if !ended {
        kill_vmm(root, c);
    }
    crate::events::container(root, &c.config, "stop", &[]);
    Ok(())
}

/// SIGKILLs VMM process `pid` if it is still the one `state` recorded.
/// Through a pidfd opened before the start time is compared: if the PID
/// was reused after that, the pidfd still names the old (gone) process
/// and the signal goes nowhere.
fn kill_recorded_vmm(state: &State, pid: i32) {
    // SAFETY: pidfd_open(2) with a PID and no flags; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd < 0 {
        return;
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    if state.vmm_process() == Some(pid) {
        // SAFETY: pidfd_send_signal(2) on our pidfd, no siginfo, no flags.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }
}

/// A pidfd on `pid`, if it exists.
fn pidfd_open(pid: i32) -> Option<std::os::fd::OwnedFd> {
    // SAFETY: pidfd_open(2) with a PID and no flags; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    // SAFETY: a fresh descriptor we own.
    (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Waits at most `timeout` for `pidfd`'s process to end.
fn wait_readable(pidfd: &std::os::fd::OwnedFd, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll(2) on one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
}

/// Ends the VMM process at once and records the container as exited.
fn kill_vmm(root: &Path, c: &Container) {
    if c.config.isolation == crate::oci::Isolation::Container {
        // Its process is not the monitor's child to die with it.
        crate::oci::engine::force_end(root, &c.config, c.state.process_id);
    }
    if let Some(pid) = c.state.vmm_process() {
        // Opened before its supervisor dies: then the PID cannot be
        // another process's by the time we wait on it.
        let vm = c.state.vm_pid.and_then(pidfd_open);
        kill_recorded_vmm(&c.state, pid);
        let start = Instant::now();
        while pid_alive(pid) && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        // The VMM process dies with its supervisor (parent-death signal);
        // its files (disks) are closed when it is gone.
        if let Some(vm) = vm {
            wait_readable(&vm, Duration::from_secs(10));
        }
        crate::guest::vmm_process::remove_leftovers(
            &engine::socket_path(root, &c.config.id),
            &c.state.vm_cgroups,
        );
        // The leader shows as a zombie while its other threads still
        // exit; the process's locks (disk, volumes) go with the last one.
        let disk = c.dir.join(crate::container::fs_vm::DISK_LOCK);
        while start.elapsed() < Duration::from_secs(10)
            && matches!(crate::file_lock::try_lock_exclusive(&disk), Ok(None))
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = State::load(&c.dir).map(|mut s| {
        // Its engine recorded the end (a finish time, and the `die`
        // event) unless the VMM was killed before it could.
        if s.finished_at.is_none() {
            engine::record_die(root, &c.config, s.exit_code.unwrap_or(137));
        }
        s.status = Status::Exited;
        s.exit_code = s.exit_code.or(Some(137));
        s.finished_at = Some(now_rfc3339());
        s.process_id = None;
        s.vmm_pid = None;
        s.vm_pid = None;
        s.vm_cgroups.clear();
        s.vmm_start = None;
        s.save(&c.dir)
    });
}

/// Signal names as Docker accepts them (with or without SIG), or numbers.
pub fn parse_signal(s: &str) -> Result<i32, CommandError> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let sig = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        "WINCH" => libc::SIGWINCH,
        _ => return Err(CommandError::Invalid("signal", s.into())),
    };
    Ok(sig)
}
