//! Building a [`Vm`]. A fresh boot and a snapshot restore share the KVM
//! checks, the VM fd with its irqchip and PIT, and the devices; they
//! differ in where memory, the serial port and the vCPUs' registers come
//! from (as in Firecracker's builder).

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{kvm_pit_config, CpuId, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::bus::Bus;
use crate::cpu::vcpu::VcpuShared;
use crate::devices::serial::{self, SerialDevice};
use crate::{
    boot, cpu, devices, e_errno, lock, memory, new_eventfd, open_kvm, restore_vm_state, snapshot,
    virtio, window, EndWatcher, Layout, Result, SnapshotRequest, VirtioAttacher, Vm, VmConfig,
    VmError,
};

const TSS_ADDRESS: usize = 0xfffb_d000;

/// The event loop every VM runs its devices on.
type Events = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

impl Vm {
    /// A fresh boot: empty memory, the kernel loaded, vCPUs at its entry.
    pub(crate) fn boot(mut config: VmConfig) -> Result<Self> {
        let kvm = open_checked(&config)?;
        check_size(&kvm, &config)?;
        let vm = create_vm(&kvm)?;
        let mem = if config.fs.is_empty() {
            memory::create(&vm, config.mem_mib)?
        } else {
            memory::create_shared(&vm, config.mem_mib)?
        };
        let windows = window::Windows::attach(&vm, config.mem_mib, &config.windows)?;
        let serial = SerialDevice::new(serial_irq(&vm)?, take_serial_out(&mut config));
        let devices = Devices::attach(&vm, &mem, &config, serial)?;
        let cmdline = format!("{}{}", config.full_cmdline(), devices.cmdline);
        let boot = boot::load(
            &mem,
            &config.kernel,
            config.initramfs.as_deref(),
            &cmdline,
            config.vcpus,
        )?;
        cpu::write_boot_tables(&mem)?;
        let vcpus = create_vcpus(&kvm, &vm, config.vcpus, |vcpu, id, cpuid| {
            Ok(cpu::setup_vcpu(vcpu, id, cpuid, &boot)?)
        })?;
        Ok(Self::assemble(
            kvm,
            vm,
            (mem, windows),
            &config,
            devices,
            vcpus,
            &cmdline,
        ))
    }

    /// A restore: memory mapped from the snapshot's file, device, VM and
    /// vCPU state as saved. `config` must match the snapshot's size and
    /// device set; its kernel and command line are not used.
    pub(crate) fn restore_from(
        mut config: VmConfig,
        state: &snapshot::VmState,
        memory_file: &std::fs::File,
    ) -> Result<Self> {
        let kvm = open_checked(&config)?;
        fit_snapshot(&mut config, state)?;
        check_size(&kvm, &config)?;
        let vm = create_vm(&kvm)?;
        let mem = if config.fs.is_empty() {
            memory::create_from_file(&vm, config.mem_mib, memory_file)?
        } else {
            // virtiofsd must see the guest's pages: a private mapping of
            // the file would hide every page the guest writes.
            memory::create_shared_from_file(&vm, config.mem_mib, memory_file)?
        };
        let windows = window::Windows::attach(&vm, config.mem_mib, &config.windows)?;
        let serial = SerialDevice::from_state(
            &state.serial,
            serial_irq(&vm)?,
            take_serial_out(&mut config),
        )
        .ok_or_else(|| snapshot::SnapshotError::Invalid("bad serial port state".into()))?;
        let devices = Devices::attach(&vm, &mem, &config, serial)?;
        let cmdline = format!("{}{}", config.full_cmdline(), devices.cmdline);
        restore_vm_state(&vm, state)?;
        let vcpus = create_vcpus(&kvm, &vm, config.vcpus, |vcpu, id, cpuid| {
            vcpu.set_cpuid2(cpuid)
                .map_err(|e| VmError::Kvm("set CPUID", e))?;
            let saved = state.vcpus.get(usize::from(id)).ok_or_else(|| {
                snapshot::SnapshotError::Invalid("fewer vCPUs than the VM".into())
            })?;
            Ok(saved.restore(vcpu)?)
        })?;
        for (transport, saved) in devices.transports.iter().zip(&state.transports) {
            lock(transport)
                .restore(saved)
                .map_err(|e| snapshot::SnapshotError::Invalid(format!("virtio device: {e}")))?;
        }
        // The disks behind the restored devices may differ from the ones
        // the guest saw: have it read their size again.
        for transport in &devices.transports[..config.disks.len()] {
            lock(transport).config_changed();
        }
        Ok(Self::assemble(
            kvm,
            vm,
            (mem, windows),
            &config,
            devices,
            vcpus,
            &cmdline,
        ))
    }

    fn assemble(
        kvm: Kvm,
        vm: VmFd,
        (mem, windows): (GuestMemoryMmap, window::Windows),
        config: &VmConfig,
        devices: Devices,
        vcpus: Vec<VcpuFd>,
        cmdline: &str,
    ) -> Self {
        tracing::debug!(
            "VM created: {} vCPUs, {} MiB, cmdline {cmdline:?}",
            config.vcpus,
            config.mem_mib
        );
        Self {
            vcpus,
            vm,
            kvm,
            shared: devices.shared,
            events: devices.events,
            host_stop: devices.host_stop,
            snapshot: devices.snapshot,
            vsock: devices.vsock,
            serial: devices.serial,
            transports: devices.transports,
            layout: Layout {
                mem_mib: config.mem_mib,
                disks_read_only: config.disks.iter().map(|d| d.read_only).collect(),
                vsock_cid: config.vsock_uds.as_ref().map(|_| config.vsock_cid),
                nics: config.net.len(),
                shared_dirs: config.fs.len(),
            },
            mem,
            windows,
        }
    }
}

/// Opens KVM and checks the capabilities hull needs.
fn open_checked(config: &VmConfig) -> Result<Kvm> {
    let kvm = open_kvm(&config.kvm_device)?;
    for (cap, name) in [
        (Cap::Irqchip, "an in-kernel irqchip"),
        (Cap::Irqfd, "irqfd"),
        (Cap::UserMemory, "user memory regions"),
        (Cap::Pit2, "an in-kernel PIT"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(VmError::MissingCap(name));
        }
    }
    Ok(kvm)
}

/// Refuses a snapshot made for another VM size or device set, and takes
/// its vsock CID (the guest knows its CID from before the snapshot).
fn fit_snapshot(config: &mut VmConfig, state: &snapshot::VmState) -> Result<()> {
    let disks: Vec<bool> = config.disks.iter().map(|d| d.read_only).collect();
    if state.mem_mib != config.mem_mib
        || state.vcpus.len() != usize::from(config.vcpus)
        || state.disks_read_only != disks
        || state.vsock_cid.is_some() != config.vsock_uds.is_some()
        || state.nic_count() != config.net.len()
        || state.shared_dirs != config.fs.len()
    {
        return Err(snapshot::SnapshotError::Invalid(
            "it was made for a different VM size or device set".into(),
        )
        .into());
    }
    if let Some(cid) = state.vsock_cid {
        config.vsock_cid = cid;
    }
    Ok(())
}

/// Checks the vCPU count and memory size before asking KVM for anything
/// that costs.
fn check_size(kvm: &Kvm, config: &VmConfig) -> Result<()> {
    let max_vcpus = kvm.get_max_vcpus();
    if config.vcpus == 0 || usize::from(config.vcpus) > max_vcpus {
        return Err(VmError::VcpuCount(config.vcpus, max_vcpus));
    }
    memory::ram_ranges(config.mem_mib)?;
    Ok(())
}

/// The VM fd with its TSS, in-kernel irqchip and PIT.
fn create_vm(kvm: &Kvm) -> Result<VmFd> {
    let vm = kvm.create_vm().map_err(|e| VmError::Kvm("create VM", e))?;
    vm.set_tss_address(TSS_ADDRESS)
        .map_err(|e| VmError::Kvm("set TSS address", e))?;
    vm.create_irq_chip()
        .map_err(|e| VmError::Kvm("create irqchip", e))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(|e| VmError::Kvm("create PIT", e))?;
    Ok(vm)
}

/// The serial port's interrupt, wired to COM1's IRQ.
fn serial_irq(vm: &VmFd) -> Result<vmm_sys_util::eventfd::EventFd> {
    let irq = new_eventfd()?;
    vm.register_irqfd(&irq, serial::COM1_IRQ)
        .map_err(|e| VmError::Kvm("register serial irqfd", e))?;
    Ok(irq)
}

/// The configured serial output; the config keeps a sink in its place.
fn take_serial_out(config: &mut VmConfig) -> Box<dyn std::io::Write + Send> {
    std::mem::replace(&mut config.serial_out, Box::new(std::io::sink()))
}

/// Creates the vCPUs with their CPUID; `setup` then gives each its
/// registers (boot entry or saved state).
fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    count: u8,
    mut setup: impl FnMut(&VcpuFd, u8, &CpuId) -> Result<()>,
) -> Result<Vec<VcpuFd>> {
    let base_cpuid = cpu::supported_cpuid(kvm).map_err(|e| VmError::Kvm("get CPUID", e))?;
    let mut vcpus = Vec::with_capacity(usize::from(count));
    for id in 0..count {
        let vcpu = vm
            .create_vcpu(u64::from(id))
            .map_err(|e| VmError::Kvm("create vCPU", e))?;
        let cpuid = cpu::vcpu_cpuid(&base_cpuid, id, count);
        setup(&vcpu, id, &cpuid)?;
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}

/// The devices and the event loop of a VM, shared by both build paths.
struct Devices {
    events: Events,
    host_stop: Arc<vmm_sys_util::eventfd::EventFd>,
    snapshot: Arc<SnapshotRequest>,
    shared: VcpuShared,
    serial: Arc<Mutex<SerialDevice>>,
    transports: Vec<Arc<Mutex<virtio::mmio::MmioTransport>>>,
    /// The vsock device, whose connections a snapshot waits for.
    vsock: Option<Arc<Mutex<virtio::vsock::Vsock>>>,
    /// What the virtio devices add to the kernel command line.
    cmdline: String,
}

/// The virtio devices attached to a VM.
struct Attached {
    transports: Vec<Arc<Mutex<virtio::mmio::MmioTransport>>>,
    vsock: Option<Arc<Mutex<virtio::vsock::Vsock>>>,
    cmdline: String,
}

impl Devices {
    /// Puts the serial port, i8042 and memory-op doorbell on the PIO bus and the configured
    /// disks and vsock on the MMIO bus, and registers the VM's end watcher.
    fn attach(
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        config: &VmConfig,
        serial: SerialDevice,
    ) -> Result<Self> {
        let mut events: Events = EventManager::new().map_err(|e| {
            VmError::Io("event loop", std::io::Error::from_raw_os_error(e_errno(&e)))
        })?;
        let end_evt = Arc::new(new_eventfd()?);
        let host_stop = Arc::new(new_eventfd()?);
        let snapshot = Arc::new(SnapshotRequest {
            evt: Some(new_eventfd()?),
            ..Default::default()
        });

        let mut pio = Bus::new();
        let serial = Arc::new(Mutex::new(serial));
        pio.insert(serial.clone(), serial::COM1_BASE, serial::COM1_LEN)?;
        let reset_evt = new_eventfd()?;
        pio.insert(
            Arc::new(Mutex::new(devices::i8042::I8042::new(
                reset_evt
                    .try_clone()
                    .map_err(|e| VmError::Io("eventfd", e))?,
            ))),
            devices::i8042::I8042_BASE,
            devices::i8042::I8042_LEN,
        )?;
        // The memory-op doorbell (issue 22). Stateless: nothing of it goes
        // into a snapshot, the guest keeps its descriptors in its own memory.
        pio.insert(
            Arc::new(Mutex::new(devices::memops::MemOps::new(mem.clone()))),
            devices::memops::MEMOPS_PORT,
            devices::memops::MEMOPS_LEN,
        )?;

        let mut mmio = Bus::new();
        let Attached {
            transports,
            vsock,
            cmdline,
        } = attach_virtio(vm, mem, config, &mut mmio, &mut events)?;

        let shared = VcpuShared {
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            stop: Arc::new(AtomicBool::new(false)),
            outcome: Arc::new(Mutex::new(None)),
            end_evt: end_evt.clone(),
        };
        let watcher: Arc<Mutex<dyn MutEventSubscriber + Send>> = Arc::new(Mutex::new(EndWatcher {
            reset: reset_evt,
            host_stop: host_stop.clone(),
            snapshot: snapshot.clone(),
            end: end_evt,
            shared: shared.clone(),
        }));
        events.add_subscriber(watcher);
        Ok(Self {
            events,
            host_stop,
            snapshot,
            shared,
            serial,
            transports,
            vsock,
            cmdline,
        })
    }
}

/// Puts the configured disks, vsock, network and virtio-fs devices on the MMIO bus; returns
/// their transports, the vsock device and what they add to the kernel command line.
fn attach_virtio(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    config: &VmConfig,
    mmio: &mut Bus,
    events: &mut Events,
) -> Result<Attached> {
    let mut attacher = VirtioAttacher {
        vm,
        mem,
        mmio,
        events,
        cmdline: String::new(),
        transports: Vec::new(),
    };
    for (i, disk) in config.disks.iter().enumerate() {
        let block = virtio::block::Block::new(virtio::block::BlockConfig {
            path: disk.path.clone(),
            read_only: disk.read_only,
            id: format!("hull-disk{i}"),
        })
        .map_err(|e| VmError::Device(format!("disk {}", disk.path.display()), Box::new(e)))?;
        attacher.attach(Arc::new(Mutex::new(block)))?;
    }
    let mut vsock = None;
    if let Some(uds) = &config.vsock_uds {
        let device = virtio::vsock::Vsock::new(config.vsock_cid, uds)
            .map_err(|e| VmError::Device(format!("vsock {}", uds.display()), Box::new(e)))?;
        let device = Arc::new(Mutex::new(device));
        attacher.attach(device.clone())?;
        vsock = Some(device);
    }
    for (i, net) in config.net.iter().enumerate() {
        let net = virtio::net::Net::new(net.clone())
            .map_err(|e| VmError::Device(format!("network device {i}"), Box::new(e)))?;
        attacher.attach(Arc::new(Mutex::new(net)))?;
    }
    for fs in &config.fs {
        let fs = virtio::fs::Fs::new(fs)
            .map_err(|e| VmError::Device(format!("shared directory {}", fs.tag), Box::new(e)))?;
        attacher.attach(Arc::new(Mutex::new(fs)))?;
    }
    Ok(Attached {
        transports: attacher.transports,
        vsock,
        cmdline: attacher.cmdline,
    })
}
