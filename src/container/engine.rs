//! Running one container in its own microVM, in this process: prepare (or
//! reuse) the image's root filesystem, boot, build the container's root in
//! the guest (overlayfs over the read-only image disk), run the process with
//! its stdio streamed, record state and logs, shut the VM down.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent::protocol::ExecSpec;

use super::logs::{self, LogWriter};
use super::state::{now_rfc3339, State, Status};
use super::ContainerConfig;
use crate::agent_client::AgentClient;
use crate::guest_vm::{self, GuestOptions, RunningVm};
use crate::ports::PortForwarder;
use crate::rootfs::{self, RootfsCache};

/// Where the container's root is assembled inside the guest.
pub const GUEST_ROOT: &str = "/run/hull/root";
const GUEST_LOWER: &str = "/run/hull/lower";
const GUEST_SCRATCH: &str = "/run/hull/scratch";
/// Size of a container's writable layer disk (sparse).
const UPPER_DISK_BYTES: u64 = 4 << 30;

/// How the container's stdio is connected.
pub enum Attach {
    /// To this process's terminal/pipes (and the log); stdin if `-i`.
    Terminal {
        /// Forward our stdin.
        stdin: bool,
    },
    /// To the log only.
    Detached,
}

/// The container's hybrid vsock socket (short: Unix socket paths are
/// limited to 108 bytes and the VMM appends `_PORT` for guest connections).
pub fn socket_path(root: &Path, id: &str) -> PathBuf {
    root.join("run")
        .join(format!("{}.vsock", &id[..12.min(id.len())]))
}

fn update(dir: &Path, f: impl FnOnce(&mut State)) -> std::io::Result<()> {
    let mut s = State::load(dir).unwrap_or_else(|_| State::created());
    f(&mut s);
    s.save(dir)
}

/// Runs the container to completion; returns its exit code. State is
/// `running` from boot until the process exits, then `exited`.
pub fn run(
    root: &Path,
    dir: &Path,
    config: &ContainerConfig,
    attach: Attach,
) -> anyhow::Result<i32> {
    update(dir, |s| {
        s.status = Status::Running;
        s.vmm_pid = Some(std::process::id() as i32);
        s.process_id = None;
        s.started_at = Some(now_rfc3339());
        s.finished_at = None;
        s.exit_code = None;
        s.error = None;
    })?;
    let result = run_inner(root, dir, config, attach);
    update(dir, |s| {
        s.status = Status::Exited;
        s.vmm_pid = None;
        s.process_id = None;
        s.ports.clear();
        s.finished_at = Some(now_rfc3339());
        match &result {
            Ok(code) => s.exit_code = Some(*code),
            Err(e) => {
                s.exit_code = Some(125);
                s.error = Some(format!("{e:#}"));
            }
        }
    })?;
    result
}

/// Signals an attached `hull run` passes on to the container's process.
const FORWARDED: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Blocks the forwarded signals in this thread (and so in every thread it
/// starts from now on) and starts a thread that waits for them and sends
/// each to the container's process once its agent id is known.
fn forward_signals(uds: PathBuf, process: Arc<AtomicU32>) -> std::io::Result<()> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t for these calls.
    unsafe { libc::sigemptyset(&mut set) };
    for sig in FORWARDED {
        // SAFETY: as above, with valid signal numbers.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    // SAFETY: blocking signals in the calling thread with a valid set.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig = 0;
            // SAFETY: sigwait on the set blocked above, with a valid out-pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                return;
            }
            let id = process.load(Ordering::Acquire);
            if id != 0 {
                if let Ok(mut c) = AgentClient::connect(&uds) {
                    let _ = c.signal(id, sig);
                }
            }
        })?;
    Ok(())
}

fn run_inner(
    root: &Path,
    dir: &Path,
    config: &ContainerConfig,
    attach: Attach,
) -> anyhow::Result<i32> {
    let main_process = Arc::new(AtomicU32::new(0));
    if matches!(attach, Attach::Terminal { .. }) {
        // Before any VM thread exists, so none of them takes the signals.
        forward_signals(socket_path(root, &config.id), main_process.clone())?;
    }
    // Before the boot: a port in use fails the start at once. Dropped
    // (listeners closed) before `run` records the exit.
    let mut ports = PortForwarder::bind(&config.ports)?;
    update(dir, |s| s.ports = ports.bindings())?;
    let (image_disk, _) = RootfsCache::new(root).get_or_prepare(root, &config.layers)?;
    let upper = dir.join("upper.ext4");
    if !config.auto_remove && !upper.exists() {
        let tmp = dir.join(".upper.ext4.tmp");
        rootfs::mkfs(&tmp, UPPER_DISK_BYTES, "hull-upper")?;
        std::fs::rename(&tmp, &upper)?;
    }
    let memory = format!("{}m", config.mem_mib);
    let opts = GuestOptions {
        memory: &memory,
        cpus: config.cpus,
        console: false,
        echo: false,
        kernel: None,
    };
    let (mut vm_config, seen) = guest_vm::config(root, &opts)?;
    std::fs::create_dir_all(root.join("run"))?;
    vm_config.vsock_uds = Some(socket_path(root, &config.id));
    vm_config.disks = vec![vmm::DiskConfig {
        path: image_disk,
        read_only: true,
    }];
    if !config.auto_remove {
        vm_config.disks.push(vmm::DiskConfig {
            path: upper,
            read_only: false,
        });
    }
    vm_config.cmdline.push_str(" hull.serve");
    let vm = RunningVm::start(vm_config, &seen, Duration::from_secs(600))?;
    ports.start(&vm.uds)?;

    let mut client = AgentClient::connect(&vm.uds)?;
    setup_root(&mut client, config)?;

    let log = logs::open(dir)?;
    let spec = ExecSpec {
        argv: config.argv.clone(),
        env: config.env.clone(),
        cwd: config.cwd.clone(),
        root: Some(GUEST_ROOT.into()),
        user: config.user.clone(),
    };
    let record_pid = |id: u32| {
        main_process.store(id, Ordering::Release);
        let _ = update(dir, |s| s.process_id = Some(id));
    };
    let code = match attach {
        Attach::Terminal { stdin } => {
            let input: Option<Box<dyn std::io::Read + Send>> = if stdin {
                Some(Box::new(std::io::stdin()))
            } else {
                None
            };
            client.run_with(
                spec,
                input,
                LogWriter::new(log.clone(), "stdout", Some(std::io::stdout())),
                LogWriter::new(log, "stderr", Some(std::io::stderr())),
                record_pid,
            )?
        }
        Attach::Detached => client.run_with(
            spec,
            None,
            LogWriter::<std::io::Sink>::new(log.clone(), "stdout", None),
            LogWriter::<std::io::Sink>::new(log, "stderr", None),
            record_pid,
        )?,
    };
    // The container's process is gone: refuse new connections now.
    drop(ports);
    AgentClient::connect(&vm.uds)?.shutdown()?;
    vm.wait(Duration::from_secs(120))?;
    Ok(code)
}

/// Assembles the container's root in the guest: the image disk as the
/// overlay's lower layer, the writable layer on its own disk (or tmpfs for
/// `--rm`), then /proc, /sys, /dev, hostname, /etc/hosts, /etc/resolv.conf.
fn setup_root(client: &mut AgentClient, config: &ContainerConfig) -> anyhow::Result<()> {
    client.mount("/dev/vda", GUEST_LOWER, "ext4", true, "")?;
    if config.auto_remove {
        client.mount("tmpfs", GUEST_SCRATCH, "tmpfs", false, "mode=0755")?;
    } else {
        client.mount("/dev/vdb", GUEST_SCRATCH, "ext4", false, "")?;
    }
    client.mkdir(&format!("{GUEST_SCRATCH}/upper"))?;
    client.mkdir(&format!("{GUEST_SCRATCH}/work"))?;
    let options = format!(
        "lowerdir={GUEST_LOWER},upperdir={GUEST_SCRATCH}/upper,workdir={GUEST_SCRATCH}/work"
    );
    client.mount("overlay", GUEST_ROOT, "overlay", false, &options)?;
    client.mount("proc", &format!("{GUEST_ROOT}/proc"), "proc", false, "")?;
    client.mount("sysfs", &format!("{GUEST_ROOT}/sys"), "sysfs", true, "")?;
    client.mount("/dev", &format!("{GUEST_ROOT}/dev"), "bind", false, "")?;
    client.mount(
        "shm",
        &format!("{GUEST_ROOT}/dev/shm"),
        "tmpfs",
        false,
        "mode=1777",
    )?;
    client.set_hostname(&config.hostname)?;
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n",
        config.hostname
    );
    client.write_file(&format!("{GUEST_ROOT}/etc/hosts"), &hosts, 0o644)?;
    client.write_file(
        &format!("{GUEST_ROOT}/etc/hostname"),
        &format!("{}\n", config.hostname),
        0o644,
    )?;
    client.write_file(
        &format!("{GUEST_ROOT}/etc/resolv.conf"),
        &resolv_conf(),
        0o644,
    )?;
    if config.read_only {
        client.remount_read_only(GUEST_ROOT)?;
    }
    Ok(())
}

/// The host's resolv.conf without loopback nameservers (unreachable from
/// the guest), falling back to public resolvers as Docker does.
fn resolv_conf() -> String {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let kept: Vec<&str> = host
        .lines()
        .filter(|l| {
            let mut w = l.split_whitespace();
            !(w.next() == Some("nameserver")
                && w.next()
                    .is_some_and(|ip| ip.starts_with("127.") || ip == "::1"))
        })
        .collect();
    let mut out = kept.join("\n");
    if !kept.iter().any(|l| l.starts_with("nameserver")) {
        out.push_str("\nnameserver 8.8.8.8\nnameserver 8.8.4.4");
    }
    out.trim_start().to_string() + "\n"
}

/// Runs another process in a running container (`hull exec`).
pub fn exec(
    root: &Path,
    config: &ContainerConfig,
    argv: Vec<String>,
    env: Vec<String>,
    cwd: Option<String>,
    user: Option<String>,
    stdin: bool,
) -> anyhow::Result<i32> {
    let mut client = AgentClient::connect(&socket_path(root, &config.id))?;
    let mut full_env = config.env.clone();
    for e in env {
        let key = e.split('=').next().unwrap_or_default().to_string();
        full_env.retain(|x| x.split('=').next() != Some(key.as_str()));
        full_env.push(e);
    }
    let spec = ExecSpec {
        argv,
        env: full_env,
        cwd: cwd.unwrap_or_else(|| config.cwd.clone()),
        root: Some(GUEST_ROOT.into()),
        user: user.unwrap_or_else(|| config.user.clone()),
    };
    let input: Option<Box<dyn std::io::Read + Send>> = if stdin {
        Some(Box::new(std::io::stdin()))
    } else {
        None
    };
    Ok(client.run_with(spec, input, std::io::stdout(), std::io::stderr(), |_| {})?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_stay_short() {
        let id = "a".repeat(64);
        let p = socket_path(Path::new("/tmp/.tmpABCDEF"), &id);
        assert_eq!(p, Path::new("/tmp/.tmpABCDEF/run/aaaaaaaaaaaa.vsock"));
    }
}
