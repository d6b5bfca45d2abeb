//! The VMM in a process of its own, behind walls (issue 16).
//!
//! A guest that escapes its kernel reaches the VMM: its vCPU loop and the
//! devices parsing what the guest puts in memory. So the VMM runs apart
//! from hull (which holds the image store, the container's state and its
//! locks) in `hull-vmm`, a binary of its own (the `hull-vmm` crate: the
//! VMM, its launch spec and its jail, nothing else), made by one `clone3` in new PID, mount, IPC, UTS
//! and network namespaces ([`spawn`]). It opens what the VM needs, then
//! ([`jail`]) pivots into an empty read-only root and drops to an
//! unprivileged user with no capabilities before the guest runs; its
//! threads then filter their system calls (`vmm::seccomp`).
//!
//! The host side ([`VmmProcess`]) hands the VM's configuration over as
//! JSON ([`spec`]) with the network back ends and a pipe for the guest's
//! serial output as descriptors, reads the serial output into the
//! configuration's sink, and ends the process through a pidfd. The VMM
//! dies with the hull process (the *thread* of it) that started it
//! (parent-death signal): hull starts VMs from its main thread.
//!
//! `HULL_JAIL=off` keeps the VM on a thread of hull itself (as before the
//! jail: for measuring what it costs). Not being root, hull makes the
//! same jail inside a new user namespace where the VMM is root mapped to
//! the user (it cannot switch to another user there; it drops every
//! capability instead), without a cgroup (a user cannot make one unless
//! the host delegates it).

pub mod cgroup;
mod spawn;

pub use hull_vmm::{child, spec};

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use spec::{LaunchSpec, FIRST_NET_FD, SERIAL_FD, SNAPSHOT_MEMORY_FD, SNAPSHOT_STATE_FD};

/// Errors of a VMM process.
#[derive(Debug, thiserror::Error)]
pub enum VmmProcessError {
    /// It could not be started.
    #[error("starting the VMM process: {0}")]
    Spawn(std::io::Error),
    /// It ended with a failure of its own.
    #[error("{0}")]
    Failed(String),
    /// Its seccomp filter stopped it.
    #[error("the VMM was stopped by its seccomp filter")]
    Seccomp,
    /// A signal ended it.
    #[error("the VMM process was killed by signal {0}")]
    Signal(i32),
    /// The guest crashed.
    #[error("the guest crashed (see the VMM log)")]
    GuestCrash,
}

/// Where VMM processes record a seccomp violation (set once by the
/// container engine: one container per hull process).
static VIOLATION_RECORD: OnceLock<PathBuf> = OnceLock::new();

/// Makes VMM processes started from now on record a seccomp violation in
/// `path` (which must exist).
pub fn record_violations_in(path: &Path) {
    let _ = VIOLATION_RECORD.set(path.to_path_buf());
}

/// Whether VMs run in their own process (`HULL_JAIL` other than `off`).
pub fn enabled() -> bool {
    std::env::var("HULL_JAIL").map_or(true, |v| v != "off")
}

/// Whether hull runs as root (else the jail needs a user namespace).
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A running VMM process.
pub struct VmmProcess {
    pid: i32,
    pidfd: OwnedFd,
    serial: Option<std::thread::JoinHandle<()>>,
    /// Its stdout: why it failed, when it does.
    report: Option<OwnedFd>,
    /// The VM's vsock socket, which the jailed process cannot remove.
    uds: Option<PathBuf>,
    /// Its cgroup, removed once it is gone.
    cgroup: Option<cgroup::VmCgroup>,
    /// Its wait status once reaped.
    ended: Option<Ended>,
}

/// How the process ended.
#[derive(Debug, Clone, Copy)]
enum Ended {
    Exited(i32),
    Signalled(i32),
}

impl VmmProcess {
    /// Starts a VMM process running `config` (restored from `snapshot`
    /// when given). The configuration's serial sink is fed from the
    /// process on a thread of ours.
    pub fn spawn(
        mut config: vmm::VmConfig,
        snapshot: Option<&Path>,
    ) -> Result<Self, VmmProcessError> {
        let (mut spec, net_fds) = LaunchSpec::from_config(&config);
        spec.snapshot = snapshot.map(Path::to_path_buf);
        spec.violation_record = VIOLATION_RECORD.get().cloned();
        spec.jail = true;
        spec.rootless = !is_root();
        let cgroup = cgroup_for(&spec);
        spec.cgroup_procs = cgroup.as_ref().map_or(Vec::new(), |c| c.procs_files());
        let json = serde_json::to_vec(&spec).map_err(|e| VmmProcessError::Spawn(e.into()))?;
        let (spec_read, spec_write) = pipe()?;
        let (serial_read, serial_write) = pipe()?;
        let (report_read, report_write) = pipe()?;
        let mut fds = vec![
            (spec_read.as_raw_fd(), 0),
            (report_write.as_raw_fd(), 1),
            (serial_write.as_raw_fd(), SERIAL_FD),
        ];
        // Opened now, by whoever chose the snapshot: a snapshot store
        // cleaned before the process reads them cannot take them away.
        let snapshot_files = snapshot.map(open_snapshot).transpose()?;
        if let Some((state, memory)) = &snapshot_files {
            fds.push((state.as_raw_fd(), SNAPSHOT_STATE_FD));
            fds.push((memory.as_raw_fd(), SNAPSHOT_MEMORY_FD));
        }
        fds.extend((net_fds.iter().zip(FIRST_NET_FD..)).map(|(&fd, n)| (fd, n)));
        let exe = vmm_binary().map_err(VmmProcessError::Spawn)?;
        let namespaces = if spec.rootless {
            spawn::Namespaces::RootlessJail
        } else {
            spawn::Namespaces::Jail
        };
        let spawned = spawn::spawn(&exe, &[], &fds, namespaces).map_err(|e| {
            VmmProcessError::Spawn(std::io::Error::new(
                e.kind(),
                format!(
                    "{e} (making the VMM's namespaces{})",
                    rootless_hint(spec.rootless)
                ),
            ))
        })?;
        // Only the process holds the write end: end of file on the read
        // end means it is gone.
        drop((spec_read, serial_write, report_write, snapshot_files));
        let mut process = Self {
            pid: spawned.pid,
            pidfd: spawned.pidfd,
            serial: None,
            report: Some(report_read),
            uds: spec.vsock_uds.clone(),
            cgroup,
            ended: None,
        };
        // A pipe holds 64 KiB; the spec is far smaller, so this never
        // waits for the process to read.
        if let Err(e) = std::io::Write::write_all(&mut std::fs::File::from(spec_write), &json) {
            process.kill();
            return Err(VmmProcessError::Spawn(e));
        }
        let mut sink = std::mem::replace(&mut config.serial_out, Box::new(std::io::sink()));
        let mut from = std::fs::File::from(serial_read);
        process.serial = Some(
            std::thread::Builder::new()
                .name("vm-serial".into())
                .spawn(move || {
                    let _ = std::io::copy(&mut from, &mut sink);
                })
                .map_err(VmmProcessError::Spawn)?,
        );
        Ok(process)
    }

    /// Its PID (in our PID namespace).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether it has ended.
    pub fn is_done(&self) -> bool {
        self.ended.is_some() || self.pidfd_readable(0)
    }

    /// Whether its pidfd is readable (the process has ended) within `ms`.
    fn pidfd_readable(&self, ms: i32) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on one valid pollfd; a pidfd is readable once
        // its process has ended.
        unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
    }

    /// Ends it at once and waits until it is gone.
    pub fn kill(&mut self) {
        if self.ended.is_none() {
            // SAFETY: pidfd_send_signal(2) on our pidfd: it names our child
            // even if its PID was reused.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    self.pidfd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
            self.reap(true);
        }
        self.join_serial();
    }

    /// Waits at most `timeout` for it to end (killing it after that);
    /// how the VM ended.
    pub fn wait(&mut self, timeout: Duration) -> Result<vmm::VmExit, VmmProcessError> {
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        self.pidfd_readable(ms);
        self.reap(false);
        if self.ended.is_none() {
            self.kill();
            return Err(VmmProcessError::Signal(libc::SIGKILL));
        }
        // Every line the guest printed has reached the sink.
        self.join_serial();
        match self.ended {
            Some(Ended::Exited(0)) => Ok(vmm::VmExit::GuestShutdown),
            Some(Ended::Exited(c)) if c == child::EXIT_GUEST_CRASH as i32 => {
                Err(VmmProcessError::GuestCrash)
            }
            Some(Ended::Exited(c)) if c == vmm::seccomp::VIOLATION_EXIT => {
                Err(VmmProcessError::Seccomp)
            }
            Some(Ended::Exited(c)) if c == child::EXIT_FAILED as i32 => {
                Err(VmmProcessError::Failed(self.failure()))
            }
            Some(Ended::Exited(c)) => Err(VmmProcessError::Failed(format!("exit status {c}"))),
            Some(Ended::Signalled(s)) => Err(VmmProcessError::Signal(s)),
            None => Err(VmmProcessError::Signal(0)),
        }
    }

    /// Why it ended, waiting at most `timeout` for it to end: `None` if
    /// it still runs, ended normally or through its seccomp filter (the
    /// container's state says that).
    pub fn why_ended(&mut self, timeout: Duration) -> Option<String> {
        self.pidfd_readable(timeout.as_millis() as i32);
        self.reap(false);
        match self.ended? {
            Ended::Signalled(libc::SIGKILL) if self.cgroup.as_ref()?.oom_kills() > 0 => {
                Some(format!(
                    "the VMM went over its memory limit ({} MiB: guest RAM + {} MiB) and the kernel killed it",
                    self.cgroup.as_ref()?.limits.memory_bytes >> 20,
                    cgroup::OVERHEAD_MIB
                ))
            }
            Ended::Signalled(s) => Some(format!("the VMM process was killed by signal {s}")),
            Ended::Exited(c) if c == child::EXIT_FAILED as i32 => Some(self.failure()),
            Ended::Exited(_) => None,
        }
    }

    /// What the ended process said about its failure.
    fn failure(&mut self) -> String {
        let mut text = String::new();
        if let Some(fd) = self.report.take() {
            // It has ended: the pipe's only writer is gone, so this ends.
            let _ = std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut text);
        }
        match text.trim() {
            "" => "the VMM process failed without saying why".into(),
            why => why.to_string(),
        }
    }

    /// Collects its exit status if it has one (waiting for it when
    /// `block`).
    fn reap(&mut self, block: bool) {
        if self.ended.is_some() {
            return;
        }
        // SAFETY: an all-zero siginfo_t is valid; waitid fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | if block { 0 } else { libc::WNOHANG };
        // SAFETY: waitid(2) on our pidfd with a valid siginfo_t.
        let r = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                self.pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                flags,
            )
        };
        // SAFETY: waitid filled `info` for a child that changed state (a
        // zero si_pid means none did, with WNOHANG).
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if r != 0 || pid == 0 {
            return;
        }
        self.ended = Some(if info.si_code == libc::CLD_EXITED {
            Ended::Exited(status)
        } else {
            Ended::Signalled(status)
        });
    }

    /// Once it has ended: waits until its last serial output is read, and
    /// removes its socket.
    fn join_serial(&mut self) {
        if let Some(t) = self.serial.take() {
            let _ = t.join();
        }
        if let Some(uds) = self.uds.take() {
            let _ = std::fs::remove_file(uds);
        }
        drop(self.cgroup.take());
    }

    /// The directories of its cgroup, if it has one.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.cgroup.as_ref().map_or(Vec::new(), |c| c.dirs.clone())
    }
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        // Never leave a VMM behind an error path.
        self.kill();
    }
}

/// The cgroup of the VMM process `spec` describes, named after its
/// socket (the container's short ID for containers); none where the host
/// offers none (the reason is in the debug log).
fn cgroup_for(spec: &LaunchSpec) -> Option<cgroup::VmCgroup> {
    if spec.rootless {
        return None;
    }
    let stem = (spec.vsock_uds.as_deref())
        .and_then(Path::file_stem)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| std::process::id().to_string());
    let limits = cgroup::Limits::for_vm(spec.mem_mib, spec.vcpus);
    cgroup::VmCgroup::create(&format!("hull-{stem}"), limits)
        .ok()
        .flatten()
}

/// Removes what a VMM process whose supervising hull process was killed
/// leaves behind: its vsock socket and its cgroup directories. Call once
/// it is gone (it dies with its supervisor).
pub fn remove_leftovers(uds: &Path, cgroups: &[PathBuf]) {
    let _ = std::fs::remove_file(uds);
    cgroup::remove_dirs(cgroups);
}

/// The `state.json` and memory files of the snapshot in `dir`.
fn open_snapshot(dir: &Path) -> Result<(std::fs::File, std::fs::File), VmmProcessError> {
    let open = |name: &str| {
        let path = dir.join(name);
        std::fs::File::open(&path).map_err(|e| {
            VmmProcessError::Spawn(std::io::Error::new(
                e.kind(),
                format!("snapshot {}: {e}", path.display()),
            ))
        })
    };
    Ok((
        open(vmm::snapshot::STATE_FILE)?,
        open(vmm::snapshot::MEMORY_FILE)?,
    ))
}

/// Set to the VMM binary to run instead of the `hull-vmm` beside hull.
pub const VMM_BIN_ENV: &str = "HULL_VMM_BIN";

/// The slim VMM binary: `hull-vmm` in hull's own directory (installed and
/// built together), or [`VMM_BIN_ENV`].
fn vmm_binary() -> std::io::Result<PathBuf> {
    if let Some(p) = std::env::var_os(VMM_BIN_ENV) {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()?;
    let beside = exe.with_file_name("hull-vmm");
    if beside.is_file() {
        return Ok(beside);
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!(
            "{} is missing: hull runs every VM in it (build it with hull: cargo build -p hull)",
            beside.display()
        ),
    ))
}

/// What a user without root may lack for the jail.
fn rootless_hint(rootless: bool) -> &'static str {
    if rootless {
        "; without root they need unprivileged user namespaces \
         (sysctl kernel.unprivileged_userns_clone=1)"
    } else {
        ""
    }
}

/// A close-on-exec pipe: `(read, write)`.
fn pipe() -> Result<(OwnedFd, OwnedFd), VmmProcessError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2(2) fills two descriptors; the result is checked.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(VmmProcessError::Spawn(std::io::Error::last_os_error()));
    }
    use std::os::fd::FromRawFd;
    // SAFETY: two fresh descriptors nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
