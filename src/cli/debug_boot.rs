//! `hull debug boot`: boot a VM with the agent, show what the guest printed
//! and exit with the VM's status.

use std::path::{Path, PathBuf};
use std::time::Instant;

use agent_protocol::Status;
use clap::Args;

use crate::guest::vm::{self as guest_vm, GuestOptions, VmArgs};

/// Options of `hull debug boot`.
#[derive(Args, Debug)]
pub struct DebugBootArgs {
    /// VM size and console.
    #[command(flatten)]
    pub vm: VmArgs,
    /// Kernel to boot instead of the one hull found.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Extra kernel command-line parameters.
    #[arg(long)]
    pub append: Option<String>,
}

/// Errors of a debug boot.
#[derive(Debug, thiserror::Error)]
pub enum DebugBootError {
    /// The VM ended without the agent saying it shut down.
    #[error("VM ended without a clean agent shutdown ({0})")]
    NoShutdown(String),
}

/// Boots and reports; returns the agent's exit status.
pub fn run(args: DebugBootArgs, root: &Path) -> anyhow::Result<u8> {
    let opts = GuestOptions {
        memory: &args.vm.memory,
        cpus: args.vm.cpus,
        console: args.vm.console,
        // The agent's status lines are always shown; --console adds the kernel's.
        echo: true,
        kernel: args.kernel.as_deref(),
        net: Vec::new(),
        windows: Vec::new(),
        extra_cmdline: "",
        fs: Vec::new(),
        progress: None,
    };
    let (mut config, seen) = guest_vm::config(root, &opts)?;
    if let Some(extra) = &args.append {
        config.cmdline.push(' ');
        config.cmdline.push_str(extra);
    }
    tracing::debug!("command line: {}", config.full_cmdline());

    let start = Instant::now();
    // The VM runs on this thread, whose filter a refused call trips: say so.
    vmm::seccomp::install_violation_handler(None)?;
    let exit = vmm::Vm::new(config)?.run()?;
    let total = start.elapsed().as_secs_f64();

    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if seen.dropped() > 0 || seen.overlong() > 0 {
        eprintln!(
            "hull: the guest printed {} status lines too many and {} overlong console lines",
            seen.dropped(),
            seen.overlong()
        );
    }
    for (at, status) in seen.iter() {
        if let Status::Ready { uptime, .. } = status {
            eprintln!(
                "hull: agent ready {:.2} s after VM start (guest kernel uptime {uptime:.2} s)",
                at.as_secs_f64()
            );
        }
    }
    // The agent's own shutdown line is its last one.
    let shutdown = seen
        .iter()
        .filter_map(|(_, s)| match s {
            Status::Shutdown { code } => Some(*code),
            _ => None,
        })
        .last();
    match (exit, shutdown) {
        (vmm::VmExit::GuestShutdown, Some(code)) => {
            eprintln!("hull: VM ended after {total:.2} s: agent shutdown, status {code}");
            Ok(u8::try_from(code).unwrap_or(1))
        }
        (vmm::VmExit::GuestShutdown, None) => {
            Err(DebugBootError::NoShutdown("guest reset, kernel panic?".into()).into())
        }
        (vmm::VmExit::GuestCrash(why), _) => Err(DebugBootError::NoShutdown(why).into()),
        (vmm::VmExit::HostStop | vmm::VmExit::Snapshotted, _) => {
            Err(DebugBootError::NoShutdown("stopped by host".into()).into())
        }
    }
}
