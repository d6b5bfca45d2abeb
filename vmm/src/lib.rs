//! hull's KVM microVM: one VM with guest memory, vCPUs, an in-kernel
//! irqchip, a serial console, an i8042 for reset, booted from an ELF
//! `vmlinux` through its PVH entry.
//!
//! ```no_run
//! # fn main() -> Result<(), vmm::VmError> {
//! let config = vmm::VmConfig::new("vmlinux".into());
//! let exit = vmm::Vm::new(config)?.run()?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod boot;
mod builder;
pub mod bus;
pub mod cpu;
pub mod devices;
pub mod host;
pub mod memory;
pub mod seccomp;
pub mod snapshot;
pub mod virtio;
pub mod window;

use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use bus::Bus;
use cpu::exit::ExitAction;
use cpu::vcpu::{VcpuShared, VcpuThread};
pub use host::HostKind;

/// Errors creating or running a VM. Each is one line a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm does not exist.
    #[error("KVM is not available: {0} does not exist (is virtualization enabled and the kvm module loaded?)")]
    NoKvm(PathBuf),
    /// /dev/kvm exists but cannot be opened by us.
    #[error("No permission to open {0} (run as root or join the kvm group)")]
    KvmPermission(PathBuf),
    /// Any other failure opening /dev/kvm.
    #[error("Cannot open {0}")]
    KvmOpen(PathBuf, #[source] kvm_ioctls::Error),
    /// The host KVM lacks a capability hull needs.
    #[error("KVM on this host lacks {0}")]
    MissingCap(&'static str),
    /// A VM-level KVM call failed.
    #[error("KVM: {0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// A vCPU count of 0 or more than KVM allows.
    #[error("Invalid vCPU count {0} (this host allows 1 to {1})")]
    VcpuCount(u8, usize),
    /// Guest memory could not be made.
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    /// The kernel/initramfs/cmdline could not be loaded.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// A vCPU could not be configured.
    #[error(transparent)]
    Cpu(#[from] cpu::CpuError),
    /// A device could not be registered.
    #[error("Cannot set up devices")]
    Bus(#[from] bus::BusError),
    /// A thread's syscall filter could not be installed.
    #[error(transparent)]
    Seccomp(seccomp::SeccompError),
    /// Host OS resources (eventfd, epoll, threads) failed.
    #[error("Host resource error: {0}")]
    Io(&'static str, #[source] std::io::Error),
    /// More devices than interrupt lines.
    #[error("Too many devices (at most {0})")]
    TooManyDevices(u32),
    /// A device could not be created.
    #[error("Cannot create {0}")]
    Device(String, #[source] Box<dyn std::error::Error + Send + Sync>),
    /// A vCPU hit an exit KVM could not handle.
    #[error("VM failed: {0}")]
    Vcpu(String),
    /// A vCPU thread panicked (its state cannot be saved).
    #[error("VM failed: a vCPU thread panicked")]
    VcpuPanicked,
    /// The device event loop failed.
    #[error("VM failed: event loop: {0}")]
    EventLoop(String),
    /// A virtio device's queues could not be set up.
    #[error("VM failed: virtio queue setup: {0}")]
    VirtioSetup(String),
    /// A snapshot could not be written or restored.
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
    /// A memory window could not be set up.
    #[error(transparent)]
    Window(#[from] window::WindowError),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, VmError>;

/// A disk given to the guest as a virtio-blk device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// Backing file (raw image, size a multiple of 512).
    pub path: PathBuf,
    /// Refuse guest writes.
    pub read_only: bool,
}

/// How to build a VM.
pub struct VmConfig {
    /// ELF vmlinux with a PVH entry note.
    pub kernel: PathBuf,
    /// Uncompressed (or compressed) cpio initramfs.
    pub initramfs: Option<PathBuf>,
    /// Kernel command line; host-specific additions are appended.
    pub cmdline: String,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Where the guest's serial output goes.
    pub serial_out: Box<dyn Write + Send>,
    /// The KVM device (normally /dev/kvm).
    pub kvm_device: PathBuf,
    /// The host kind; decides the command-line additions.
    pub host: HostKind,
    /// Disks, in guest order (/dev/vda, /dev/vdb, ...).
    pub disks: Vec<DiskConfig>,
    /// Unix socket of the hybrid vsock device; `None` for no vsock.
    pub vsock_uds: Option<PathBuf>,
    /// The guest's vsock context ID.
    pub vsock_cid: u64,
    /// Network devices, in guest order (`eth0`, `eth1`, ...), attached
    /// after the disks and vsock; empty for no network device at all.
    pub net: Vec<virtio::net::NetConfig>,
    /// Host files shown to the guest as physical memory above RAM
    /// ([`window`]); not part of snapshots.
    pub windows: Vec<window::WindowConfig>,
    /// Shared host directories (virtio-fs, served by virtiofsd), attached
    /// after the network devices. A VM with any has shared guest memory
    /// (a restored one gets a copy of the snapshot's).
    pub fs: Vec<virtio::fs::FsConfig>,
}

impl std::fmt::Debug for VmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmConfig")
            .field("kernel", &self.kernel)
            .field("initramfs", &self.initramfs)
            .field("cmdline", &self.cmdline)
            .field("mem_mib", &self.mem_mib)
            .field("vcpus", &self.vcpus)
            .finish_non_exhaustive()
    }
}

/// Default guest command line: no PCI or ACPI to probe, reboot through the
/// i8042 (the VM ends), reboot at once on panic. `noreplace-smp` (keep lock
/// prefixes instead of patching them all out on one vCPU) and
/// `percpu_alloc=page` (map per-CPU pages as needed instead of clearing a
/// 2 MiB chunk) cost nothing measurable on hardware KVM and save seconds of
/// emulated boot on PVM (docs/guest-kernel.md). No RCU stall warnings: a
/// guest restored from a snapshot finds its clock moved on by the time the
/// snapshot waited, which the stall detector took for a stall of that
/// length and reported with stack dumps on the serial console (~0.25 s of
/// every fast start here, on hardware too: a serial byte is a VM exit).
/// No memory cgroup: the VM is the container's memory limit, and nothing
/// in the guest sets one, but with the controller on every page mapped,
/// unmapped or allocated is charged and counted per cgroup (0.91x the
/// warm start's time without it on PVM, docs/guest-kernel.md).
pub const BASE_CMDLINE: &str = "reboot=k panic=-1 pci=off nomodule i8042.noaux noreplace-smp \
percpu_alloc=page rcupdate.rcu_cpu_stall_suppress=1 cgroup_disable=memory";

impl VmConfig {
    /// A 1-vCPU, 128 MiB VM of `kernel` with the serial output discarded.
    pub fn new(kernel: PathBuf) -> Self {
        Self {
            kernel,
            initramfs: None,
            cmdline: BASE_CMDLINE.to_string(),
            mem_mib: 128,
            vcpus: 1,
            serial_out: Box::new(std::io::sink()),
            kvm_device: PathBuf::from("/dev/kvm"),
            host: HostKind::detect(),
            disks: Vec::new(),
            vsock_uds: None,
            vsock_cid: 3,
            net: Vec::new(),
            windows: Vec::new(),
            fs: Vec::new(),
        }
    }

    /// The command line the guest will see.
    pub fn full_cmdline(&self) -> String {
        let extra = self.host.cmdline_additions();
        if extra.is_empty() {
            self.cmdline.clone()
        } else {
            format!("{} {}", self.cmdline, extra)
        }
    }
}

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset or powered off (a clean end, from the VMM's view).
    GuestShutdown,
    /// The guest crashed (triple fault, crash event).
    GuestCrash(String),
    /// The host asked the VM to stop.
    HostStop,
    /// The host asked for a snapshot; it was written and the VM ended.
    Snapshotted,
}

/// Stops a running VM from another thread.
#[derive(Clone)]
pub struct StopHandle {
    evt: Arc<EventFd>,
}

impl StopHandle {
    /// Ends the VM; `run` returns [`VmExit::HostStop`].
    pub fn stop(&self) {
        let _ = self.evt.write(1);
    }
}

/// Opens /dev/kvm with errors a user understands.
pub fn open_kvm(path: &std::path::Path) -> Result<Kvm> {
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| VmError::NoKvm(path.into()))?;
    Kvm::new_with_path(&cpath).map_err(|e| match e.errno() {
        libc::ENOENT => VmError::NoKvm(path.into()),
        libc::EACCES | libc::EPERM => VmError::KvmPermission(path.into()),
        _ => VmError::KvmOpen(path.into(), e),
    })
}

/// A created VM, ready to run.
pub struct Vm {
    // Field order is drop order: vCPUs and the VM fd go before the memory
    // they point into.
    vcpus: Vec<VcpuFd>,
    vm: VmFd,
    kvm: Kvm,
    shared: VcpuShared,
    events: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    host_stop: Arc<EventFd>,
    snapshot: Arc<SnapshotRequest>,
    vsock: Option<Arc<Mutex<virtio::vsock::Vsock>>>,
    serial: Arc<Mutex<devices::serial::SerialDevice>>,
    transports: Vec<Arc<Mutex<virtio::mmio::MmioTransport>>>,
    layout: Layout,
    mem: GuestMemoryMmap,
    windows: window::Windows,
}

/// What a snapshot must match to be restored into a VM.
#[derive(Debug, Clone)]
struct Layout {
    mem_mib: u64,
    disks_read_only: Vec<bool>,
    vsock_cid: Option<u64>,
    nics: usize,
    /// virtio-fs devices (snapshotted only before the guest mounts any:
    /// see [`virtio::fs`]).
    shared_dirs: usize,
}

/// A pending snapshot request: where to write it.
#[derive(Default)]
struct SnapshotRequest {
    evt: Option<EventFd>,
    dir: Mutex<Option<PathBuf>>,
    /// Set once the request reached the event loop, which then serves
    /// devices until no vsock connection is open (or refuses).
    quiescence: Mutex<Option<snapshot::Quiescence>>,
}

/// Asks a running VM to pause, write a snapshot and end.
#[derive(Clone)]
pub struct SnapshotHandle {
    request: Arc<SnapshotRequest>,
}

impl SnapshotHandle {
    /// Pauses the VM, writes its snapshot into `dir` (which must exist and
    /// be empty) and ends it: `run` then returns [`VmExit::Snapshotted`]
    /// or the error writing it.
    pub fn snapshot(&self, dir: &std::path::Path) {
        *self.request.dir.lock().unwrap_or_else(|p| p.into_inner()) = Some(dir.to_path_buf());
        if let Some(evt) = &self.request.evt {
            let _ = evt.write(1);
        }
    }
}

impl Vm {
    /// Creates the VM: memory, irqchip, devices, loaded kernel, vCPUs.
    pub fn new(config: VmConfig) -> Result<Self> {
        Self::boot(config)
    }

    /// Creates a VM from the snapshot in `dir`, with the devices of
    /// `config` (disks and vsock socket; they must match the snapshot's in
    /// number and kind). The kernel, initramfs and command line of `config`
    /// are not used: the guest carries on from where it was saved.
    pub fn restore(config: VmConfig, dir: &std::path::Path) -> Result<Self> {
        let state = snapshot::VmState::load(dir)?;
        let path = dir.join(snapshot::MEMORY_FILE);
        let file = std::fs::File::open(&path)
            .map_err(|e| snapshot::SnapshotError::Io(path.display().to_string(), e))?;
        Self::restore_from(config, &state, &file)
    }

    /// Like [`Vm::restore`], from a snapshot's `state.json` and memory
    /// files already open (whoever chose the snapshot opened them, so a
    /// snapshot store cleaned meanwhile cannot take them away).
    pub fn restore_files(
        config: VmConfig,
        state: std::fs::File,
        memory: &std::fs::File,
    ) -> Result<Self> {
        let state = snapshot::VmState::read(state, snapshot::STATE_FILE)?;
        Self::restore_from(config, &state, memory)
    }

    /// Where the memory windows of the config landed, in config order.
    pub fn window_places(&self) -> &[window::WindowPlace] {
        self.windows.places()
    }

    /// A handle that can stop the VM while `run` is running.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            evt: self.host_stop.clone(),
        }
    }

    /// A handle that can snapshot the VM while `run` is running.
    pub fn snapshot_handle(&self) -> SnapshotHandle {
        SnapshotHandle {
            request: self.snapshot.clone(),
        }
    }

    /// Runs the VM until the guest resets or powers off, crashes, or the
    /// host stops or snapshots it.
    pub fn run(mut self) -> Result<VmExit> {
        cpu::vcpu::install_kick_handler().map_err(|e| VmError::Io("signal handler", e))?;
        // Setup read the kernel and initramfs through heap buffers; give
        // that memory back so an idle VMM costs the host only what it uses.
        // SAFETY: malloc_trim only returns free heap memory to the kernel.
        unsafe { libc::malloc_trim(0) };
        let mut threads = Vec::new();
        for (id, vcpu) in self.vcpus.drain(..).enumerate() {
            match VcpuThread::spawn(id as u8, vcpu, self.shared.clone()) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    self.shared.stop.store(true, Ordering::Release);
                    threads.into_iter().for_each(|t| {
                        t.stop_and_join();
                    });
                    return Err(VmError::Io("spawn vCPU thread", e));
                }
            }
        }
        // After the vCPUs exist (they filter themselves before their first
        // KVM_RUN) and before the first device event is handled.
        if let Err(e) = seccomp::install(seccomp::ThreadKind::EventLoop, seccomp::mode()) {
            self.shared.stop.store(true, Ordering::Release);
            threads.into_iter().for_each(|t| {
                t.stop_and_join();
            });
            return Err(VmError::Seccomp(e));
        }
        seccomp::test_violation();
        let loop_error = self.serve_devices();
        self.shared.stop.store(true, Ordering::Release);
        let vcpus: Vec<Option<VcpuFd>> =
            threads.into_iter().map(VcpuThread::stop_and_join).collect();
        self.log_misbehaviour();
        if let Some(e) = loop_error {
            return Err(VmError::EventLoop(e));
        }
        let outcome = self
            .shared
            .outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let snapshot_dir = self
            .snapshot
            .dir
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match (outcome, snapshot_dir) {
            (Some(ExitAction::GuestStop), _) => Ok(VmExit::GuestShutdown),
            (Some(ExitAction::GuestCrash(why)), _) => Ok(VmExit::GuestCrash(why)),
            (Some(ExitAction::Fatal(why)), _) => Err(VmError::Vcpu(why)),
            // Detailed by the vCPU thread; reached only if it could not.
            (Some(ExitAction::InternalError), _) => Err(VmError::Vcpu("KVM internal error".into())),
            (Some(ExitAction::Continue) | None, Some(dir)) => {
                let vcpus: Option<Vec<VcpuFd>> = vcpus.into_iter().collect();
                let mut vcpus = vcpus.ok_or(VmError::VcpuPanicked)?;
                // Checked before any file is written: a refused snapshot
                // leaves the directory as it was given.
                let open = self.open_vsock_connections();
                if open > 0 {
                    return Err(snapshot::SnapshotError::ConnectionsOpen(open).into());
                }
                self.write_snapshot(&mut vcpus, &dir)?;
                Ok(VmExit::Snapshotted)
            }
            (Some(ExitAction::Continue) | None, None) => Ok(VmExit::HostStop),
        }
    }

    /// The guest's misbehaviour over the VM's life, one line, if any: the
    /// devices logged only a bounded sample of it as it happened.
    fn log_misbehaviour(&self) {
        let recorders: Vec<_> = self
            .transports
            .iter()
            .map(|t| lock(t).misbehaviour())
            .collect();
        if let Some(totals) = virtio::misbehaviour::summary(&recorders) {
            tracing::warn!("guest misbehaviour over the VM's life: {totals}");
        }
    }

    /// Runs the device event loop until the VM is to end; the event loop's
    /// error if it failed. A requested snapshot ends it only once no vsock
    /// connection is open or its wait is over (`run` then refuses).
    fn serve_devices(&mut self) -> Option<String> {
        while !self.shared.stop.load(Ordering::Acquire) {
            let waiting = *lock(&self.snapshot.quiescence);
            // While a snapshot waits, the connection table is looked at
            // every 10 ms: closes arrive as ordinary device events.
            let timeout = if waiting.is_some() { 10 } else { -1 };
            if let Err(e) = self.events.run_with_timeout(timeout) {
                return Some(format!("{e:?}"));
            }
            let Some(wait) = waiting else { continue };
            let open = self.open_vsock_connections();
            let now = std::time::Instant::now();
            match wait.step(open, now) {
                Ok(snapshot::QuiesceStep::Wait) => {}
                Ok(snapshot::QuiesceStep::Save) => {
                    tracing::debug!("snapshot: vsock quiet after {:?}", wait.waited(now));
                    self.shared.stop.store(true, Ordering::Release);
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    self.shared.stop.store(true, Ordering::Release);
                }
            }
        }
        None
    }

    /// Host sockets of the vsock device not fully closed.
    fn open_vsock_connections(&self) -> usize {
        self.vsock
            .as_ref()
            .map_or(0, |v| lock(v).open_connections())
    }

    /// Saves the paused VM into `dir`.
    fn write_snapshot(&self, vcpus: &mut [VcpuFd], dir: &std::path::Path) -> Result<()> {
        let started = std::time::Instant::now();
        // A vCPU may have left KVM_RUN with an I/O exit whose result KVM
        // applies only on the next entry: enter once with immediate_exit so
        // the saved registers include it.
        for vcpu in vcpus.iter_mut() {
            vcpu.set_kvm_immediate_exit(1);
            let result = vcpu.run().map(|_| ());
            vcpu.set_kvm_immediate_exit(0);
            match result {
                Ok(()) => {}
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => return Err(VmError::Kvm("finish pending I/O", e)),
            }
        }
        let msr_list = self
            .kvm
            .get_msr_index_list()
            .map_err(|e| VmError::Kvm("get MSR list", e))?;
        let vcpu_states = vcpus
            .iter()
            .map(|v| snapshot::VcpuState::save(v, msr_list.as_slice()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut irqchips = Vec::new();
        for id in snapshot::IRQCHIP_IDS {
            let mut chip = kvm_bindings::kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            self.vm
                .get_irqchip(&mut chip)
                .map_err(|e| VmError::Kvm("get irqchip", e))?;
            irqchips.push(chip);
        }
        let state = snapshot::VmState {
            format: snapshot::FORMAT,
            mem_mib: self.layout.mem_mib,
            disks_read_only: self.layout.disks_read_only.clone(),
            vsock_cid: self.layout.vsock_cid,
            nics: self.layout.nics,
            net: false,
            shared_dirs: self.layout.shared_dirs,
            clock: self
                .vm
                .get_clock()
                .map_err(|e| VmError::Kvm("get clock", e))?,
            pit: self.vm.get_pit2().map_err(|e| VmError::Kvm("get PIT", e))?,
            irqchips,
            serial: lock(&self.serial).state(),
            transports: self.transports.iter().map(|t| lock(t).state()).collect(),
            vcpus: vcpu_states,
        };
        let path = dir.join(snapshot::MEMORY_FILE);
        let file = snapshot::private_file(&path)
            .map_err(|e| snapshot::SnapshotError::Io(path.display().to_string(), e))?;
        memory::dump(&self.mem, &file)?;
        file.sync_all()
            .map_err(|e| snapshot::SnapshotError::Io(path.display().to_string(), e))?;
        state.save(dir)?;
        tracing::debug!("snapshot written in {:?}", started.elapsed());
        Ok(())
    }
}

fn restore_vm_state(vm: &VmFd, state: &snapshot::VmState) -> Result<()> {
    vm.set_pit2(&state.pit)
        .map_err(|e| VmError::Kvm("set PIT", e))?;
    // Flags describe how the clock was read; KVM_SET_CLOCK takes none of them.
    let clock = kvm_bindings::kvm_clock_data {
        flags: 0,
        ..state.clock
    };
    vm.set_clock(&clock)
        .map_err(|e| VmError::Kvm("set clock", e))?;
    for chip in &state.irqchips {
        vm.set_irqchip(chip)
            .map_err(|e| VmError::Kvm("set irqchip", e))?;
    }
    Ok(())
}

/// Locks a mutex, ignoring poisoning: a device whose handler panicked on
/// another thread is still in a consistent-enough state to answer (and the
/// VM is ending anyway).
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn e_errno(e: &event_manager::Error) -> i32 {
    match e {
        event_manager::Error::Epoll(e) => e.errno(),
        _ => libc::EIO,
    }
}

fn new_eventfd() -> Result<EventFd> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Io("eventfd", e))
}

/// First interrupt line given to virtio devices (0-4 are legacy: PIT,
/// keyboard, cascade, COM2, COM1).
const VIRTIO_FIRST_GSI: u32 = 5;
/// IOAPIC pins available to virtio devices.
const VIRTIO_MAX_DEVICES: u32 = mptable_pins() - VIRTIO_FIRST_GSI;

const fn mptable_pins() -> u32 {
    boot::mptable::IOAPIC_PINS as u32
}

/// The MMIO base address and interrupt (GSI) of the `index`th virtio
/// device: one 4 KiB window and one IOAPIC pin each, in attach order.
fn virtio_slot(index: usize) -> Result<(u64, u32)> {
    let count = u32::try_from(index)
        .ok()
        .filter(|&c| c < VIRTIO_MAX_DEVICES)
        .ok_or(VmError::TooManyDevices(VIRTIO_MAX_DEVICES))?;
    let base = memory::VIRTIO_MMIO_START + u64::from(count) * virtio::mmio::MMIO_WINDOW;
    Ok((base, VIRTIO_FIRST_GSI + count))
}

/// Puts virtio devices on the MMIO bus, wires their notifications and
/// interrupts through KVM, and names them on the guest command line.
struct VirtioAttacher<'a> {
    vm: &'a VmFd,
    mem: &'a GuestMemoryMmap,
    mmio: &'a mut Bus,
    events: &'a mut EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    cmdline: String,
    transports: Vec<Arc<Mutex<virtio::mmio::MmioTransport>>>,
}

impl VirtioAttacher<'_> {
    fn attach<T>(&mut self, device: Arc<Mutex<T>>) -> Result<()>
    where
        T: virtio::VirtioDevice + MutEventSubscriber + Send + 'static,
    {
        let (base, gsi) = virtio_slot(self.transports.len())?;
        let irqfd = new_eventfd()?;
        self.vm
            .register_irqfd(&irqfd, gsi)
            .map_err(|e| VmError::Kvm("register virtio irqfd", e))?;
        let queues = device
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .queue_max_sizes()
            .len();
        let mut queue_evts = Vec::with_capacity(queues);
        for i in 0..queues {
            let evt = new_eventfd()?;
            // The guest's QueueNotify write of queue index `i` lands on this
            // eventfd inside KVM, without a userspace exit.
            self.vm
                .register_ioevent(
                    &evt,
                    &kvm_ioctls::IoEventAddress::Mmio(base + virtio::mmio::QUEUE_NOTIFY),
                    i as u32,
                )
                .map_err(|e| VmError::Kvm("register virtio ioeventfd", e))?;
            queue_evts.push(evt);
        }
        let interrupt = Arc::new(virtio::Interrupt::new(irqfd, gsi));
        let transport = virtio::mmio::MmioTransport::new(
            device.clone(),
            self.mem.clone(),
            interrupt,
            queue_evts,
        )
        .map_err(|e| VmError::VirtioSetup(format!("{e:?}")))?;
        let transport = Arc::new(Mutex::new(transport));
        self.mmio
            .insert(transport.clone(), base, virtio::mmio::MMIO_WINDOW)?;
        self.transports.push(transport);
        self.events.add_subscriber(device);
        self.cmdline
            .push_str(&format!(" virtio_mmio.device=4K@{base:#x}:{gsi}"));
        Ok(())
    }
}

/// Watches the events that end a VM: the i8042 reset, a host stop request,
/// and a vCPU reporting the end.
struct EndWatcher {
    reset: EventFd,
    host_stop: Arc<EventFd>,
    snapshot: Arc<SnapshotRequest>,
    end: Arc<EventFd>,
    shared: VcpuShared,
}

impl MutEventSubscriber for EndWatcher {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.reset.as_raw_fd() {
            let _ = self.reset.read();
            self.shared.end(ExitAction::GuestStop);
        } else if fd == self.host_stop.as_raw_fd() {
            let _ = self.host_stop.read();
        } else if let Some(evt) = self.snapshot.evt.as_ref().filter(|e| e.as_raw_fd() == fd) {
            // Not the end yet: the event loop serves the devices until the
            // vsock connections are closed, then `run` writes the snapshot
            // once the vCPUs are out of KVM_RUN.
            let _ = evt.read();
            let mut waiting = lock(&self.snapshot.quiescence);
            if waiting.is_none() {
                *waiting = Some(snapshot::Quiescence::new(std::time::Instant::now()));
            }
            return;
        } else {
            let _ = self.end.read();
        }
        // Whatever woke us, the VM is ending.
        self.shared.stop.store(true, Ordering::Release);
    }

    fn init(&mut self, ops: &mut EventOps) {
        let snapshot = self.snapshot.evt.as_ref().map(|e| e.as_raw_fd());
        for fd in [
            self.reset.as_raw_fd(),
            self.host_stop.as_raw_fd(),
            self.end.as_raw_fd(),
        ]
        .into_iter()
        .chain(snapshot)
        {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                tracing::error!("cannot watch VM end events: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_virtio_device_has_its_own_window_and_interrupt() {
        // Two disks, vsock and two NICs: the shape of a container on a
        // user network.
        let slots: Vec<(u64, u32)> = (0..5).map(|i| virtio_slot(i).unwrap()).collect();
        for (i, (base, gsi)) in slots.iter().enumerate() {
            for (other_base, other_gsi) in &slots[i + 1..] {
                assert!(base + virtio::mmio::MMIO_WINDOW <= *other_base);
                assert_ne!(gsi, other_gsi);
            }
            assert!(*gsi < mptable_pins(), "an IOAPIC pin");
        }
        assert_eq!(slots[0], (memory::VIRTIO_MMIO_START, VIRTIO_FIRST_GSI));
        let last = VIRTIO_MAX_DEVICES as usize;
        assert!(virtio_slot(last - 1).is_ok());
        assert!(matches!(virtio_slot(last), Err(VmError::TooManyDevices(_))));
    }
}
