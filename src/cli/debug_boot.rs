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
    /// Attach a disk image as virtio-blk (FILE or FILE:ro); /dev/vda, vdb, ... in order.
    #[arg(long = "disk", value_name = "FILE[:ro]")]
    pub disks: Vec<String>,
    /// Run this program of the first disk (an ext4 root) as PID 1 instead of
    /// the agent; the VM also gets a vsock device and a network card with no
    /// link. For testing the VMM with guests that are not hull's
    /// (tests/hostile_guest.rs).
    #[arg(long, value_name = "PATH")]
    pub init: Option<String>,
}

/// Errors of a debug boot.
#[derive(Debug, thiserror::Error)]
pub enum DebugBootError {
    /// The VM ended without the agent saying it shut down.
    #[error("VM ended without a clean agent shutdown ({0})")]
    NoShutdown(String),
}

/// Boots `init` from the first disk instead of the agent: the initramfs's
/// init is skipped (an `rdinit` that does not exist makes the kernel mount
/// `root=` and run `init=`).
fn own_init(config: &mut vmm::VmConfig, root: &Path, init: &str) -> anyhow::Result<()> {
    if config.disks.is_empty() || !init.starts_with('/') || init.contains(char::is_whitespace) {
        anyhow::bail!("--init needs an absolute path without spaces and a --disk to find it on");
    }
    config.cmdline.push_str(&format!(
        " rdinit=/hull-no-agent root=/dev/vda ro init={init}"
    ));
    let run_dir = root.join("run");
    std::fs::create_dir_all(&run_dir)?;
    let uds = run_dir.join(format!("debug-boot-{}.vsock", std::process::id()));
    config.vsock_uds = Some(uds);
    // A network card with no link: the guest can still send it frames.
    config.net.push(vmm::virtio::net::NetConfig {
        mac: crate::network::template_mac(0),
        backend: None,
    });
    Ok(())
}

/// A VM with its own init: a guest reset or power-off is its normal end.
fn own_init_ended(exit: vmm::VmExit, total: f64) -> anyhow::Result<u8> {
    match exit {
        vmm::VmExit::GuestShutdown => {
            eprintln!("hull: VM ended after {total:.2} s: the guest stopped");
            Ok(0)
        }
        vmm::VmExit::GuestCrash(why) => Err(DebugBootError::NoShutdown(why).into()),
        vmm::VmExit::HostStop | vmm::VmExit::Snapshotted => {
            Err(DebugBootError::NoShutdown("stopped by host".into()).into())
        }
    }
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
    config.disks = args
        .disks
        .iter()
        .map(|d| super::debug_run::parse_disk(d))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(init) = &args.init {
        own_init(&mut config, root, init)?;
    }
    if let Some(extra) = &args.append {
        config.cmdline.push(' ');
        config.cmdline.push_str(extra);
    }
    tracing::debug!("command line: {}", config.full_cmdline());

    let start = Instant::now();
    // The VM runs on this thread, whose filter a refused call trips: say so.
    vmm::seccomp::install_violation_handler(None)?;
    // The vsock device removes its socket when the VM is dropped.
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
    if args.init.is_some() {
        return own_init_ended(exit, total);
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
