//! The virtio-mmio transport, version 2 (virtio spec 1.x §4.2.2): the
//! register window through which the guest driver discovers a device,
//! negotiates features, sets up queues and starts it.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{
    ActivateContext, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use crate::bus::BusDevice;
use crate::lock;
use crate::virtio::Misbehaviour;

/// Size of one device's register window.
pub const MMIO_WINDOW: u64 = 0x1000;
/// Offset of QueueNotify (where KVM ioeventfds are attached).
pub const QUEUE_NOTIFY: u64 = 0x50;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x4c4c_5548; // "HULL"
const CONFIG_SPACE: u64 = 0x100;

// Device status bits (virtio spec 2.1).
const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_NEEDS_RESET: u32 = 0x40;
const STATUS_FAILED: u32 = 0x80;

/// One virtio device behind its register window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queue_evts: Vec<EventFd>,
    queues: Vec<Queue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    status: u32,
    config_generation: u32,
    activated: bool,
    /// The device's record of guest misbehaviour, shared with it.
    misbehaviour: Arc<Misbehaviour>,
}

impl MmioTransport {
    /// The device's record of guest misbehaviour.
    pub fn misbehaviour(&self) -> Arc<Misbehaviour> {
        self.misbehaviour.clone()
    }

    /// Wraps `device`; `queue_evts` (one per queue) are the eventfds KVM
    /// writes on QueueNotify, `interrupt` the device's irqfd-backed line.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queue_evts: Vec<EventFd>,
    ) -> Result<Self, virtio_queue::Error> {
        let sizes = lock(&device).queue_max_sizes().to_vec();
        let misbehaviour = lock(&device).misbehaviour();
        let queues = sizes
            .iter()
            .map(|s| Queue::new(*s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            device,
            mem,
            interrupt,
            queue_evts,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            status: 0,
            config_generation: 0,
            activated: false,
            misbehaviour,
        })
    }

    /// Number of queues of the device.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// The device status register (for tests and inspection).
    pub fn status(&self) -> u32 {
        self.status
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        // Queue configuration is frozen once the device runs.
        if self.activated {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let dev = lock(&self.device);
        match offset {
            0x000 => MAGIC,
            0x004 => VERSION,
            0x008 => dev.device_type(),
            0x00c => VENDOR,
            0x010 => {
                let features = dev.features();
                match self.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            0x034 => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            0x044 => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(self.activated || q.ready())),
            0x060 => self.interrupt.status(),
            0x070 => self.status,
            0x0fc => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            0x014 => self.device_features_sel = v,
            0x020 => {
                // Only while negotiating, and only bits the device offered.
                if self.status & STATUS_FEATURES_OK == 0 {
                    let offered = lock(&self.device).features();
                    let shift = match self.driver_features_sel {
                        0 => 0,
                        1 => 32,
                        _ => return,
                    };
                    let mask = 0xffff_ffffu64 << shift;
                    self.acked_features =
                        (self.acked_features & !mask) | ((u64::from(v) << shift) & offered);
                }
            }
            0x024 => self.driver_features_sel = v,
            0x030 => self.queue_sel = v,
            0x038 => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(v as u16);
                }
            }
            0x044 => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            QUEUE_NOTIFY => {
                // Reached only when no ioeventfd is attached.
                if let Some(evt) = self.queue_evts.get(v as usize) {
                    let _ = evt.write(1);
                }
            }
            0x064 => self.interrupt.ack(v),
            0x070 => self.write_status(v),
            0x080 => self.with_queue(|q| q.set_desc_table_address(Some(v), None)),
            0x084 => self.with_queue(|q| q.set_desc_table_address(None, Some(v))),
            0x090 => self.with_queue(|q| q.set_avail_ring_address(Some(v), None)),
            0x094 => self.with_queue(|q| q.set_avail_ring_address(None, Some(v))),
            0x0a0 => self.with_queue(|q| q.set_used_ring_address(Some(v), None)),
            0x0a4 => self.with_queue(|q| q.set_used_ring_address(None, Some(v))),
            _ => self
                .misbehaviour
                .record(format_args!("write to unknown register {offset:#x}")),
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected_queue() {
            f(q);
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // The driver only ever adds bits (FAILED aside); anything else is a
        // confused driver and is ignored.
        if v & self.status != self.status && v & STATUS_FAILED == 0 {
            return;
        }
        let added = v & !self.status;
        if added & STATUS_FEATURES_OK != 0 && self.acked_features & VIRTIO_F_VERSION_1 == 0 {
            // Legacy drivers are not supported: leave FEATURES_OK unset so
            // the driver sees the negotiation failed.
            self.status = v & !STATUS_FEATURES_OK;
            return;
        }
        self.status = v;
        let ready = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        if added & STATUS_DRIVER_OK != 0 && self.status & ready == ready && !self.activated {
            self.activate();
        }
    }

    fn activate(&mut self) {
        // The device takes the configured queues; fresh ones (of the same
        // sizes) wait for a reset and renegotiation.
        let fresh: Vec<Queue> = self
            .queues
            .iter()
            .filter_map(|q| Queue::new(q.max_size()).ok())
            .collect();
        let queues = std::mem::replace(&mut self.queues, fresh);
        self.activate_with(queues);
    }

    fn activate_with(&mut self, mut queues: Vec<Queue>) {
        let all_valid = queues.iter().all(|q| q.is_valid(&self.mem));
        let evts: Result<Vec<EventFd>, _> =
            self.queue_evts.iter().map(EventFd::try_clone).collect();
        let result = match (all_valid, evts) {
            (false, _) => Err("a queue is not ready or not valid".to_string()),
            (true, Err(e)) => Err(format!("cannot clone queue eventfds: {e}")),
            (true, Ok(queue_evts)) => {
                let event_idx = self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
                for q in &mut queues {
                    q.set_event_idx(event_idx);
                }
                let ctx = ActivateContext {
                    mem: self.mem.clone(),
                    queues,
                    queue_evts,
                    interrupt: self.interrupt.clone(),
                    acked_features: self.acked_features,
                };
                lock(&self.device).activate(ctx).map_err(|e| e.to_string())
            }
        };
        match result {
            Ok(()) => self.activated = true,
            Err(e) => {
                self.misbehaviour
                    .record(format_args!("activation failed: {e}"));
                self.status |= STATUS_NEEDS_RESET;
                let _ = self.interrupt.signal_config_change();
            }
        }
    }

    fn reset(&mut self) {
        if self.activated && !lock(&self.device).reset() {
            // The device cannot restart: it stays failed for this VM.
            self.status = STATUS_FAILED;
            return;
        }
        self.activated = false;
        self.status = 0;
        self.acked_features = 0;
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.interrupt.ack(u32::MAX);
        for q in &mut self.queues {
            q.reset();
        }
    }

    /// Tells the driver the config space changed (e.g. a swapped disk).
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        let _ = self.interrupt.signal_config_change();
    }

    /// The transport's registers and queues, for a snapshot. The device must
    /// be quiescent (the VM paused with no request in flight).
    pub fn state(&self) -> TransportState {
        let queues = if self.activated {
            lock(&self.device).queue_states()
        } else {
            self.queues.iter().map(Queue::state).collect()
        };
        TransportState {
            device_type: lock(&self.device).device_type(),
            queue_sel: self.queue_sel,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            acked_features: self.acked_features,
            status: self.status,
            config_generation: self.config_generation,
            activated: self.activated,
            interrupt_status: self.interrupt.status(),
            queues: queues.iter().map(SavedQueue::from).collect(),
        }
    }

    /// Puts a freshly made transport (same device kind) into a saved state;
    /// a device that was running is activated again with its saved queues,
    /// and every queue is then notified once so work the guest posted just
    /// before the snapshot is not left waiting.
    pub fn restore(&mut self, state: &TransportState) -> Result<(), RestoreError> {
        let device_type = lock(&self.device).device_type();
        if state.device_type != device_type || state.queues.len() != self.queues.len() {
            return Err(RestoreError::Mismatch(device_type, state.device_type));
        }
        let queues = state
            .queues
            .iter()
            .map(|q| Queue::try_from(QueueState::from(q)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(RestoreError::Queue)?;
        self.queue_sel = state.queue_sel;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.acked_features = state.acked_features;
        self.status = state.status;
        self.config_generation = state.config_generation;
        if state.activated {
            self.activate_with(queues);
            if !self.activated {
                return Err(RestoreError::Activate);
            }
            lock(&self.device).restored();
            for evt in &self.queue_evts {
                let _ = evt.write(1);
            }
        } else {
            self.queues = queues;
        }
        if state.interrupt_status != 0 {
            self.interrupt.raise_bits(state.interrupt_status);
        }
        Ok(())
    }
}

/// Errors putting a transport back into a saved state.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The snapshot's device differs from the one attached now.
    #[error("snapshot device mismatch: attached type {0}, saved type {1}")]
    Mismatch(u32, u32),
    /// A saved queue is invalid.
    #[error("invalid saved virtqueue")]
    Queue(#[source] virtio_queue::Error),
    /// The device refused its saved queues.
    #[error("the device refused its saved queues")]
    Activate,
}

/// A virtio-mmio transport's saved registers and queues.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransportState {
    device_type: u32,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    status: u32,
    config_generation: u32,
    activated: bool,
    interrupt_status: u32,
    queues: Vec<SavedQueue>,
}

/// [`QueueState`] in a serialisable form.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedQueue {
    max_size: u16,
    next_avail: u16,
    next_used: u16,
    event_idx_enabled: bool,
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

impl From<&QueueState> for SavedQueue {
    fn from(q: &QueueState) -> Self {
        Self {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl From<&SavedQueue> for QueueState {
    fn from(q: &SavedQueue) -> Self {
        Self {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            lock(&self.device).read_config(offset - CONFIG_SPACE, data);
            return;
        }
        // Registers are 32-bit; other widths read as zero.
        if data.len() == 4 {
            data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            lock(&self.device).write_config(offset - CONFIG_SPACE, data);
            return;
        }
        if let Ok(bytes) = <[u8; 4]>::try_from(data) {
            self.write_reg(offset, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::ActivateError;
    use vm_memory::GuestAddress;

    #[derive(Default)]
    struct Dummy {
        activated: Option<(usize, u64)>,
        resets: usize,
        queues: Vec<QueueState>,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 1
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[1, 2, 3, 4], offset, data);
        }
        fn misbehaviour(&self) -> Arc<Misbehaviour> {
            Misbehaviour::new("dummy")
        }
        fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
            self.activated = Some((ctx.queues.len(), ctx.acked_features));
            self.queues = ctx.queues.iter().map(Queue::state).collect();
            Ok(())
        }
        fn queue_states(&self) -> Vec<QueueState> {
            self.queues.clone()
        }
        fn reset(&mut self) -> bool {
            self.resets += 1;
            true
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Dummy>>) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let dev = Arc::new(Mutex::new(Dummy::default()));
        let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap(), 5));
        let evts = (0..2)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        (
            MmioTransport::new(dev.clone(), mem, irq, evts).unwrap(),
            dev,
        )
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn setup_queue(t: &mut MmioTransport, idx: u32, base: u64) {
        w(t, 0x030, idx);
        w(t, 0x038, 16);
        w(t, 0x080, base as u32);
        w(t, 0x090, (base + 0x1000) as u32);
        w(t, 0x0a0, (base + 0x2000) as u32);
        w(t, 0x044, 1);
    }

    #[test]
    fn identifies_itself() {
        let (mut t, _) = transport();
        assert_eq!(r(&mut t, 0x000), MAGIC);
        assert_eq!(r(&mut t, 0x004), 2);
        assert_eq!(r(&mut t, 0x008), 42);
        w(&mut t, 0x014, 1);
        assert_eq!(r(&mut t, 0x010), 1); // VERSION_1 is bit 32
        w(&mut t, 0x030, 1);
        assert_eq!(r(&mut t, 0x034), 16);
        w(&mut t, 0x030, 7);
        assert_eq!(r(&mut t, 0x034), 0, "no such queue");
        let mut cfg = [0u8; 2];
        t.read(0x102, &mut cfg);
        assert_eq!(cfg, [3, 4]);
        // Byte-wide register reads are refused, not misread.
        let mut one = [9u8; 1];
        t.read(0x000, &mut one);
        assert_eq!(one, [0]);
    }

    #[test]
    fn full_negotiation_activates_the_device_once() {
        let (mut t, dev) = transport();
        w(&mut t, 0x070, STATUS_ACKNOWLEDGE);
        w(&mut t, 0x070, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, 0x024, 0);
        w(&mut t, 0x020, 0xffff_ffff); // only bit 0 is offered
        w(&mut t, 0x024, 1);
        w(&mut t, 0x020, 1);
        let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        w(&mut t, 0x070, s);
        assert_eq!(r(&mut t, 0x070), s);
        setup_queue(&mut t, 0, 0x1_0000);
        setup_queue(&mut t, 1, 0x2_0000);
        w(&mut t, 0x070, s | STATUS_DRIVER_OK);
        assert_eq!(
            dev.lock().unwrap().activated,
            Some((2, VIRTIO_F_VERSION_1 | 1))
        );
        // Queue setup is frozen once running.
        w(&mut t, 0x030, 0);
        w(&mut t, 0x038, 4);
        assert_eq!(r(&mut t, 0x044), 1);
        // Reset returns to the initial state.
        w(&mut t, 0x070, 0);
        assert_eq!(r(&mut t, 0x070), 0);
        assert_eq!(dev.lock().unwrap().resets, 1);
        assert_eq!(r(&mut t, 0x044), 0);
    }

    #[test]
    fn saved_state_restores_into_a_fresh_transport() {
        let (mut t, dev) = transport();
        let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        w(&mut t, 0x070, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, 0x024, 1);
        w(&mut t, 0x020, 1);
        w(&mut t, 0x070, s);
        setup_queue(&mut t, 0, 0x1_0000);
        setup_queue(&mut t, 1, 0x2_0000);
        w(&mut t, 0x070, s | STATUS_DRIVER_OK);
        // The device has moved along its first queue since activation.
        dev.lock().unwrap().queues[0].next_avail = 7;
        dev.lock().unwrap().queues[0].next_used = 7;
        let saved: TransportState =
            serde_json::from_str(&serde_json::to_string(&t.state()).unwrap()).unwrap();

        let (mut fresh, fresh_dev) = transport();
        fresh.restore(&saved).unwrap();
        assert_eq!(r(&mut fresh, 0x070), s | STATUS_DRIVER_OK);
        let d = fresh_dev.lock().unwrap();
        assert_eq!(d.activated, Some((2, VIRTIO_F_VERSION_1)));
        assert_eq!(d.queues[0].next_avail, 7);
        assert_eq!(d.queues[0].next_used, 7);
        assert_eq!(d.queues[1].desc_table, 0x2_0000);
        drop(d);
        // Each queue was notified once, so posted work is looked at.
        assert_eq!(fresh.queue_evts[0].read().unwrap(), 1);
        assert_eq!(fresh.queue_evts[1].read().unwrap(), 1);

        // A snapshot of another kind of device is refused.
        let mut other = saved.clone();
        other.device_type = 7;
        assert!(transport().0.restore(&other).is_err());
    }

    #[test]
    fn legacy_drivers_and_bad_queues_do_not_activate() {
        let (mut t, dev) = transport();
        w(&mut t, 0x070, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        // No VERSION_1 acked: FEATURES_OK does not stick.
        w(
            &mut t,
            0x070,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(r(&mut t, 0x070) & STATUS_FEATURES_OK, 0);

        w(&mut t, 0x024, 1);
        w(&mut t, 0x020, 1);
        let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        w(&mut t, 0x070, s);
        // Queue 1 points outside guest memory.
        setup_queue(&mut t, 0, 0x1_0000);
        setup_queue(&mut t, 1, 0x4000_0000);
        w(&mut t, 0x070, s | STATUS_DRIVER_OK);
        assert!(dev.lock().unwrap().activated.is_none());
        assert_ne!(r(&mut t, 0x070) & STATUS_NEEDS_RESET, 0);
        assert_ne!(r(&mut t, 0x060) & super::super::interrupt::INT_CONFIG, 0);
    }

    #[test]
    fn notify_without_ioeventfd_reaches_the_queue_eventfd_and_ack_clears() {
        let (mut t, _) = transport();
        w(&mut t, QUEUE_NOTIFY, 1);
        assert_eq!(t.queue_evts[1].read().unwrap(), 1);
        w(&mut t, QUEUE_NOTIFY, 9); // no such queue: ignored
        t.interrupt.signal_used_queue().unwrap();
        assert_eq!(r(&mut t, 0x060), 1);
        w(&mut t, 0x064, 1);
        assert_eq!(r(&mut t, 0x060), 0);
    }
}
