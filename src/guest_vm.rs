//! Building a VM configuration for hull's guest: kernel, agent initramfs,
//! size, console, and the serial watcher that sees the agent's status.

use std::path::Path;
use std::time::{Duration, Instant};

use agent::Status;

use crate::serial_watch::{SeenStatus, SerialWatcher};
use crate::{guest_files, initramfs, units};

/// Errors preparing or waiting for a guest.
#[derive(Debug, thiserror::Error)]
pub enum GuestVmError {
    /// The agent did not report ready in time.
    #[error("Guest agent not ready after {0} s")]
    NotReady(u64),
    /// The agent reported an error during start-up.
    #[error("Guest agent failed: {0}")]
    AgentFailed(String),
    /// The VM ended before the agent was ready.
    #[error("VM ended before the guest agent was ready")]
    Ended,
}

/// Size and console options shared by commands that boot a VM.
pub struct GuestOptions<'a> {
    /// Docker-style memory size.
    pub memory: &'a str,
    /// vCPUs.
    pub cpus: u8,
    /// Kernel console on the serial port, echoed to stdout.
    pub console: bool,
    /// Kernel to use instead of the one found.
    pub kernel: Option<&'a Path>,
}

/// A VM configuration with hull's kernel and agent, and the handle on the
/// agent's status lines.
pub fn config(root: &Path, opts: &GuestOptions<'_>) -> anyhow::Result<(vmm::VmConfig, SeenStatus)> {
    let mem_mib = units::parse_mib(opts.memory)?;
    let kernel = match opts.kernel {
        Some(k) => k.to_path_buf(),
        None => guest_files::kernel(root)?,
    };
    let agent = guest_files::agent()?;
    let initramfs = initramfs::cached(&agent, &root.join("cache"))?;
    let (watcher, seen) = SerialWatcher::new(opts.console);
    let mut config = vmm::VmConfig::new(kernel);
    config.initramfs = Some(initramfs);
    config.mem_mib = mem_mib;
    config.vcpus = opts.cpus;
    config.serial_out = Box::new(watcher);
    if let Ok(dev) = std::env::var("HULL_KVM_DEVICE") {
        config.kvm_device = dev.into();
    }
    if opts.console {
        config.cmdline.push_str(" console=ttyS0");
    }
    Ok((config, seen))
}

/// Waits until the agent reports ready (or fails, or the VM ends).
pub fn wait_ready(
    seen: &SeenStatus,
    vm_done: impl Fn() -> bool,
    timeout: Duration,
) -> Result<(), GuestVmError> {
    let start = Instant::now();
    loop {
        {
            let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            // The first status line decides.
            match seen.first().map(|(_, s)| s) {
                Some(Status::Ready { .. }) => return Ok(()),
                Some(Status::Error(e)) => return Err(GuestVmError::AgentFailed(e.clone())),
                Some(Status::Shutdown { .. }) => return Err(GuestVmError::Ended),
                None => {}
            }
        }
        if vm_done() {
            return Err(GuestVmError::Ended);
        }
        if start.elapsed() > timeout {
            return Err(GuestVmError::NotReady(timeout.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
