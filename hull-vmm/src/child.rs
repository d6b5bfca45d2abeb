//! `hull-vmm`: the VMM process. It reads its [`LaunchSpec`], creates the
//! VM (restoring a snapshot or booting), confines itself and runs the VM
//! until it ends. Its exit status tells the host how.

use crate::jail;
use crate::spec::{LaunchSpec, SERIAL_FD, SNAPSHOT_MEMORY_FD, SNAPSHOT_STATE_FD};

/// Exit status: the guest shut down (or reset).
pub const EXIT_SHUTDOWN: u8 = 0;
/// Exit status: the guest crashed (the reason is on stderr).
pub const EXIT_GUEST_CRASH: u8 = 2;
/// Exit status: the VMM could not create or run the VM (on stderr).
pub const EXIT_FAILED: u8 = 3;

/// Runs the VMM process; returns its exit status. Why it failed goes to
/// its stdout, a pipe hull reads: hull says it in its own one line.
pub fn main() -> u8 {
    crate::log::init();
    match run() {
        Ok(code) => code,
        Err(e) => {
            print!("{e:#}");
            EXIT_FAILED
        }
    }
}

fn run() -> anyhow::Result<u8> {
    let spec: LaunchSpec = serde_json::from_reader(std::io::stdin().lock())?;
    let record = match &spec.violation_record {
        Some(path) => Some(std::fs::OpenOptions::new().append(true).open(path)?),
        None => None,
    };
    vmm::seccomp::install_violation_handler(record)?;
    // Before guest memory exists: what the VM allocates is charged to
    // its own cgroup.
    for procs in &spec.cgroup_procs {
        std::fs::write(procs, "0")
            .map_err(|e| anyhow::anyhow!("joining cgroup {}: {e}", procs.display()))?;
    }
    let snapshot = spec.snapshot.clone();
    let spec_rootless = spec.rootless;
    let jail_at = match (spec.jail, &spec.vsock_uds) {
        // The socket's directory exists (the VM binds the socket in it):
        // the jail's empty root is mounted over it in our namespace.
        (true, Some(uds)) => uds.parent().map(|p| p.to_path_buf()),
        (true, None) => Some("/tmp".into()),
        (false, _) => None,
    };
    // SAFETY: we are the VMM process `vmm_process::spawn` started, with its
    // descriptors placed at the spec's numbers; nothing else owns them.
    let config = unsafe { spec.into_config() };
    let vm = match snapshot {
        Some(dir) => {
            use std::os::fd::FromRawFd;
            // SAFETY: the spawner placed the snapshot's files at these
            // numbers when it gave a snapshot; nothing else owns them.
            let (state, memory) = unsafe {
                (
                    std::fs::File::from_raw_fd(SNAPSHOT_STATE_FD),
                    std::fs::File::from_raw_fd(SNAPSHOT_MEMORY_FD),
                )
            };
            vmm::Vm::restore_files(config, state, &memory)
                .map_err(|e| anyhow::anyhow!(e).context(format!("snapshot {}", dir.display())))?
        }
        None => vmm::Vm::new(config)?,
    };
    if let Some(dir) = jail_at {
        jail::confine(&dir, spec_rootless)?;
        exit_if_orphaned();
    }
    Ok(match vm.run()? {
        vmm::VmExit::GuestCrash(why) => {
            eprintln!("hull-vmm: guest crashed: {why}");
            EXIT_GUEST_CRASH
        }
        _ => EXIT_SHUTDOWN,
    })
}

/// Ends the process if the hull process that started it is gone (it may
/// have died before the parent-death signal was set again): our serial
/// pipe then has no reader.
fn exit_if_orphaned() {
    let mut pfd = libc::pollfd {
        fd: SERIAL_FD,
        events: 0,
        revents: 0,
    };
    // SAFETY: poll(2) on one valid pollfd, no wait.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    if n > 0 && pfd.revents & libc::POLLERR != 0 {
        // SAFETY: _exit is always safe to call.
        unsafe { libc::_exit(EXIT_FAILED as i32) };
    }
}
