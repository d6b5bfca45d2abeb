//! Building a VM configuration for hull's guest: kernel, agent initramfs,
//! size, console, and the serial watcher that sees the agent's status.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_protocol::Status;

use super::files as guest_files;
use super::initramfs;
use super::vmm_process;
use crate::guest::serial_watch::{SeenStatus, SerialWatcher};
use crate::guest::vmm_process::VmmProcess;
use crate::units;

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

/// VM size and console flags shared by the `hull debug` commands.
#[derive(clap::Args, Debug)]
pub struct VmArgs {
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u8,
    /// Guest memory (Docker units: 128m, 1g).
    #[arg(long, default_value = "128m")]
    pub memory: String,
    /// Put the kernel console on the serial port and show it.
    #[arg(long)]
    pub console: bool,
}

/// Environment variable whose words are appended to the guest kernel's
/// command line (unset or empty: nothing is added).
pub const KERNEL_ARGS_ENV: &str = "HULL_KERNEL_ARGS";

/// Size and console options shared by commands that boot a VM.
pub struct GuestOptions<'a> {
    /// Docker-style memory size.
    pub memory: &'a str,
    /// vCPUs.
    pub cpus: u8,
    /// Kernel console on the serial port.
    pub console: bool,
    /// Copy everything the guest writes on the serial port to stdout.
    pub echo: bool,
    /// Kernel to use instead of the one found.
    pub kernel: Option<&'a Path>,
    /// Network devices, in guest order (`eth0` first); none for no network.
    pub net: Vec<vmm::virtio::net::NetConfig>,
    /// Host files shown to the guest as memory windows (not part of any
    /// snapshot; see `vmm::window`).
    pub windows: Vec<vmm::window::WindowConfig>,
    /// Words added to the kernel command line (part of the snapshot key).
    pub extra_cmdline: &'a str,
    /// Shared host directories (virtio-fs); a VM with any boots cold.
    pub fs: Vec<vmm::virtio::fs::FsConfig>,
    /// Told when a template VM boots or a snapshot is saved (None: nobody).
    pub progress: Option<&'a dyn crate::progress::Progress>,
}

impl GuestOptions<'_> {
    /// Where to report the stages of a first start.
    pub fn progress(&self) -> &dyn crate::progress::Progress {
        self.progress.unwrap_or(&crate::progress::Silent)
    }
}

/// A VM configuration with hull's kernel and agent, and the handle on the
/// agent's status lines.
pub fn config(root: &Path, opts: &GuestOptions<'_>) -> anyhow::Result<(vmm::VmConfig, SeenStatus)> {
    let mem_mib = units::parse_mib(opts.memory)?;
    let kernel = match opts.kernel {
        Some(k) => k.to_path_buf(),
        None => guest_files::kernel_for(root, opts.cpus)?,
    };
    let agent = guest_files::agent()?;
    let initramfs = initramfs::cached(&agent, &root.join("cache"))?;
    let (watcher, seen) = SerialWatcher::new(opts.echo);
    let mut config = vmm::VmConfig::new(kernel);
    config.initramfs = Some(initramfs);
    config.mem_mib = mem_mib;
    config.vcpus = opts.cpus;
    config.serial_out = Box::new(watcher);
    config.net = opts.net.clone();
    config.windows = opts.windows.clone();
    config.fs = opts.fs.clone();
    if !opts.extra_cmdline.is_empty() {
        config.cmdline.push(' ');
        config.cmdline.push_str(opts.extra_cmdline);
    }
    // Words for the guest kernel's command line, for experiments with
    // kernel parameters (e.g. hull_fault_around=256K); part of the snapshot
    // key like every other word of the command line.
    if let Ok(args) = std::env::var(KERNEL_ARGS_ENV) {
        let args = args.trim();
        if !args.is_empty() {
            config.cmdline.push(' ');
            config.cmdline.push_str(args);
        }
    }
    push_memops_args(&mut config.cmdline);
    if let Ok(dev) = std::env::var("HULL_KVM_DEVICE") {
        config.kvm_device = dev.into();
    }
    // Without console= the kernel still picks ttyS0 as its console, and
    // every byte it prints is a VM exit (emulated driver code on PVM):
    // without --console, keep it to errors.
    config.cmdline.push_str(if opts.console {
        " console=ttyS0"
    } else {
        " quiet"
    });
    Ok((config, seen))
}

/// The guest kernel's memory-op doorbell hooks and threshold
/// (docs/guest-kernel.md; inert off PVM) from `HULL_PVM_MEMOPS` and
/// `HULL_PVM_MEMOPS_MIN`; part of the snapshot key like every word of the
/// command line.
fn push_memops_args(cmdline: &mut String) {
    for (var, param) in [
        ("HULL_PVM_MEMOPS", "hull_pvm_memops"),
        ("HULL_PVM_MEMOPS_MIN", "hull_pvm_memops_min"),
    ] {
        let Ok(value) = std::env::var(var) else {
            continue;
        };
        match value.trim().parse::<u32>() {
            Ok(v) => cmdline.push_str(&format!(" {param}={v}")),
            // A developer's knob: say it was ignored rather than fail runs.
            Err(_) => tracing::warn!("{var}={value:?} is not a number; ignored"),
        }
    }
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
            match seen.first() {
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

/// A running VM, reachable through its hybrid vsock socket once the agent
/// is ready: in a confined VMM process of its own
/// ([`super::vmm_process`]), or on a thread of this process (the
/// fast-start templates, which run only hull's agent, and `HULL_JAIL=off`).
pub struct RunningVm {
    /// The VM's hybrid vsock socket.
    pub uds: std::path::PathBuf,
    runner: Runner,
}

/// Where the VM runs.
enum Runner {
    Thread(VmThread),
    Process(VmmProcess),
}

/// A VM on a thread of this process.
struct VmThread {
    stop: vmm::StopHandle,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<vmm::Result<vmm::VmExit>>>,
}

impl RunningVm {
    /// Boots the VM of `config` (which must have `vsock_uds` set and
    /// `hull.serve` on its command line) in a VMM process; waits for the
    /// agent.
    pub fn start(
        config: vmm::VmConfig,
        seen: &SeenStatus,
        ready_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let uds = vm_socket(&config)?;
        let mut running = if vmm_process::enabled() {
            Self {
                uds,
                runner: Runner::Process(VmmProcess::spawn(config, None)?),
            }
        } else {
            Self::spawn(vmm::Vm::new(config)?, uds)?
        };
        if let Err(e) = wait_ready(seen, || running.is_done(), ready_timeout) {
            let why = running.why_ended();
            running.kill();
            return Err(why.map_or_else(|| e.into(), |why| anyhow::anyhow!(why)));
        }
        Ok(running)
    }

    /// Restores the VM saved in `snapshot` with the devices of `config` in
    /// a VMM process and starts it; returns once its agent answers on
    /// vsock (it was already listening when the snapshot was taken).
    pub fn restore(
        config: vmm::VmConfig,
        snapshot: &Path,
        ready_timeout: Duration,
    ) -> anyhow::Result<(Self, crate::guest::agent_client::AgentClient)> {
        let uds = vm_socket(&config)?;
        let running = if vmm_process::enabled() {
            Self {
                uds,
                runner: Runner::Process(VmmProcess::spawn(config, Some(snapshot))?),
            }
        } else {
            Self::spawn(vmm::Vm::restore(config, snapshot)?, uds)?
        };
        running.until_agent_answers(ready_timeout)
    }

    /// Starts `vm`, restored from a snapshot, on a thread of ours; returns
    /// once its agent (listening on `uds`) answers.
    pub fn start_restored(
        vm: vmm::Vm,
        uds: PathBuf,
        ready_timeout: Duration,
    ) -> anyhow::Result<(Self, crate::guest::agent_client::AgentClient)> {
        Self::spawn(vm, uds)?.until_agent_answers(ready_timeout)
    }

    /// Returns once the restored guest's agent answers.
    fn until_agent_answers(
        mut self,
        ready_timeout: Duration,
    ) -> anyhow::Result<(Self, crate::guest::agent_client::AgentClient)> {
        let start = Instant::now();
        loop {
            match crate::guest::agent_client::AgentClient::connect_unanswered(&self.uds) {
                Ok(client) => return Ok((self, client)),
                Err(e) if self.is_done() => {
                    let why = self.why_ended();
                    self.kill();
                    let e = anyhow::anyhow!(e).context("restored VM ended");
                    return Err(match why {
                        Some(why) => e.context(why),
                        None => self.explain(e),
                    });
                }
                Err(e) if start.elapsed() > ready_timeout => {
                    self.kill();
                    return Err(anyhow::anyhow!(e).context("restored VM's agent does not answer"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// Adds what the guest last printed to an error seen after this VM
    /// ended (a kernel panic says more than a closed connection).
    pub fn explain(&self, e: anyhow::Error) -> anyhow::Error {
        // The VM thread may still be writing its last lines.
        std::thread::sleep(Duration::from_millis(200));
        let tail = crate::guest::serial_watch::console_tail();
        match tail.last() {
            Some(last) if self.is_done() => {
                e.context(format!("the VM ended; guest console: {last}"))
            }
            _ => e,
        }
    }

    /// Runs `vm` on its own thread.
    pub fn spawn(vm: vmm::Vm, uds: std::path::PathBuf) -> anyhow::Result<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        // A call the VM threads' filters refuse ends this process with a
        // message (containers also record it: `container::engine`).
        vmm::seccomp::install_violation_handler(None)?;
        let stop = vm.stop_handle();
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let thread = {
            let done = done.clone();
            std::thread::Builder::new()
                .name("vm".into())
                .spawn(move || {
                    let r = vm.run();
                    done.store(true, Ordering::Release);
                    r
                })?
        };
        Ok(Self {
            uds,
            runner: Runner::Thread(VmThread {
                stop,
                done,
                thread: Some(thread),
            }),
        })
    }

    /// The PID of the VMM process, when the VM runs in one.
    pub fn vmm_pid(&self) -> Option<i32> {
        match &self.runner {
            Runner::Process(p) => Some(p.pid()),
            Runner::Thread(_) => None,
        }
    }

    /// Why the VM's process ended, when it did so on its own (killed for
    /// its memory, by a signal, or failing): what an error seen on the
    /// agent connection was caused by.
    pub fn why_ended(&mut self) -> Option<String> {
        match &mut self.runner {
            Runner::Process(p) => p.why_ended(Duration::from_secs(2)),
            Runner::Thread(_) => None,
        }
    }

    /// The cgroup directories of the VMM process, if it has them.
    pub fn vmm_cgroups(&self) -> Vec<PathBuf> {
        match &self.runner {
            Runner::Process(p) => p.cgroup_dirs(),
            Runner::Thread(_) => Vec::new(),
        }
    }

    /// Whether the VM has ended.
    pub fn is_done(&self) -> bool {
        match &self.runner {
            Runner::Thread(t) => t.done.load(std::sync::atomic::Ordering::Acquire),
            Runner::Process(p) => p.is_done(),
        }
    }

    /// Stops the VM at once (no guest shutdown) and waits for it.
    pub fn kill(&mut self) {
        match &mut self.runner {
            Runner::Thread(t) => {
                t.stop.stop();
                if let Some(t) = t.thread.take() {
                    let _ = t.join();
                }
            }
            Runner::Process(p) => p.kill(),
        }
    }

    /// Waits for the VM to end (after an agent `Shutdown`), at most `timeout`.
    pub fn wait(mut self, timeout: Duration) -> anyhow::Result<vmm::VmExit> {
        let t = match &mut self.runner {
            Runner::Process(p) => return Ok(p.wait(timeout)?),
            Runner::Thread(t) => t,
        };
        let start = Instant::now();
        while !t.done.load(std::sync::atomic::Ordering::Acquire) {
            if start.elapsed() > timeout {
                self.kill();
                anyhow::bail!("VM did not shut down within {} s", timeout.as_secs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let thread = t
            .thread
            .take()
            .ok_or_else(|| anyhow::anyhow!("internal: VM already joined"))?;
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("VM thread panicked"))?
            .map_err(Into::into)
    }
}

fn vm_socket(config: &vmm::VmConfig) -> anyhow::Result<std::path::PathBuf> {
    config
        .vsock_uds
        .clone()
        .ok_or_else(|| anyhow::anyhow!("internal: VM without vsock"))
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        // Never leave a VM thread behind an error path.
        self.kill();
    }
}
