//! The vCPU threads: run KVM_RUN, hand exits to [`handle_exit`], report how
//! the VM ended, and stop when kicked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::VcpuFd;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::exit::{handle_exit, ExitAction};
use super::profile::{ProfileConfig, Profiler};
use crate::bus::Bus;

/// KVM_INTERNAL_ERROR_EMULATION (linux/kvm.h).
const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;

/// KVM's internal-error exits carry a suberror and a few words of data
/// (for an emulation failure: the instruction's bytes and where): say them,
/// or the user learns only that something failed.
fn with_internal_error_detail(action: ExitAction, vcpu: &mut VcpuFd) -> ExitAction {
    match action {
        ExitAction::InternalError => {
            let run = vcpu.get_kvm_run();
            // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, so the
            // `internal` member of the exit union is the one KVM filled.
            let internal = unsafe { run.__bindgen_anon_1.internal };
            let n = (internal.ndata as usize).min(internal.data.len());
            let data: Vec<String> = internal.data[..n]
                .iter()
                .map(|d| format!("{d:#x}"))
                .collect();
            let detail = format!("suberror {}, data [{}]", internal.suberror, data.join(", "));
            if internal.suberror == KVM_INTERNAL_ERROR_EMULATION {
                // The guest ran an instruction KVM cannot emulate (on
                // MMIO, or anywhere in an emulated guest kernel): the
                // guest's doing, not the host's.
                ExitAction::GuestCrash(format!(
                    "the guest ran an instruction KVM cannot emulate ({detail})"
                ))
            } else {
                ExitAction::Fatal(format!("KVM internal error ({detail})"))
            }
        }
        other => other,
    }
}

/// Signal that knocks a vCPU thread out of KVM_RUN.
fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler for the kick signal; without one the signal
/// would kill the process. Idempotent.
pub fn install_kick_handler() -> std::io::Result<()> {
    register_signal_handler(kick_signal(), noop_handler)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// State the vCPU threads share with the VM's event loop.
#[derive(Clone)]
pub struct VcpuShared {
    /// Port-I/O devices.
    pub pio: Arc<Bus>,
    /// MMIO devices.
    pub mmio: Arc<Bus>,
    /// Set when the VM is stopping; vCPUs leave their loop.
    pub stop: Arc<AtomicBool>,
    /// How the VM ended, first reporter wins.
    pub outcome: Arc<Mutex<Option<ExitAction>>>,
    /// Written when a vCPU ends the VM, to wake the event loop.
    pub end_evt: Arc<EventFd>,
}

impl VcpuShared {
    /// Records `action` as the VM's outcome unless one is already known and
    /// wakes the event loop.
    pub fn end(&self, action: ExitAction) {
        let mut outcome = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        if outcome.is_none() {
            *outcome = Some(action);
        }
        drop(outcome);
        if let Err(e) = self.end_evt.write(1) {
            tracing::error!("cannot signal VM end: {e}");
        }
    }
}

/// A running vCPU thread.
pub struct VcpuThread {
    handle: JoinHandle<VcpuFd>,
}

impl VcpuThread {
    /// Starts vCPU `id` running.
    pub fn spawn(id: u8, mut vcpu: VcpuFd, shared: VcpuShared) -> std::io::Result<Self> {
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                run_loop(id, &mut vcpu, &shared);
                vcpu
            })?;
        Ok(Self { handle })
    }

    /// Stops the thread: keeps kicking it until it has left KVM_RUN (a kick
    /// sent just before it entered KVM_RUN would otherwise be lost). Gives
    /// the vCPU back (for a snapshot) unless the thread panicked.
    pub fn stop_and_join(self) -> Option<VcpuFd> {
        while !self.handle.is_finished() {
            let _ = self.handle.kill(kick_signal());
            std::thread::sleep(Duration::from_millis(5));
        }
        self.handle.join().ok()
    }
}

fn run_loop(id: u8, vcpu: &mut VcpuFd, shared: &VcpuShared) {
    // Before the filter: the profiler's timer thread must not inherit it.
    let mut profiler = ProfileConfig::from_env().and_then(|config| {
        Profiler::start(&config, id, vcpu, kick_signal())
            .map_err(|e| tracing::warn!("vcpu{id}: {e}"))
            .ok()
    });
    run_filtered(id, vcpu, shared, profiler.as_mut());
    if let Some(profiler) = profiler {
        match profiler.finish() {
            Ok(path) => tracing::info!("vcpu{id}: guest profile in {}", path.display()),
            Err(e) => tracing::warn!("vcpu{id}: {e}"),
        }
    }
}

fn run_filtered(
    id: u8,
    vcpu: &mut VcpuFd,
    shared: &VcpuShared,
    mut profiler: Option<&mut Profiler>,
) {
    // Before the first guest instruction this thread runs.
    let mode = crate::seccomp::mode();
    if let Err(e) = crate::seccomp::install(crate::seccomp::ThreadKind::Vcpu, mode) {
        shared.end(ExitAction::Fatal(format!("vcpu{id}: {e}")));
        return;
    }
    while !shared.stop.load(Ordering::Acquire) {
        match vcpu.run() {
            Ok(exit) => match handle_exit(exit, &shared.pio, &shared.mmio) {
                ExitAction::Continue => {}
                action => {
                    let action = with_internal_error_detail(action, vcpu);
                    tracing::debug!("vcpu{id}: {action:?}");
                    shared.end(action);
                    return;
                }
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                if let Some(profiler) = profiler.as_deref_mut() {
                    profiler.sample(vcpu);
                }
            }
            Err(e) => {
                shared.end(ExitAction::Fatal(format!("vcpu{id}: KVM_RUN failed: {e}")));
                return;
            }
        }
    }
}
