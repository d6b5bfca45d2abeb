//! virtio-net (virtio spec 1.x §5.1): one rx and one tx queue relayed to a
//! backend of plain Ethernet frames ([`stream`]): a stream socket in
//! passt's "qemu" protocol (the default network) or a tap device (a user
//! network's bridge).
//!
//! - [`frame`]: frames in and out of descriptor chains (header stripped or
//!   added, a checksum left to the device finished here).
//! - [`stream`]: the backend socket or tap with bounded buffers both ways.
//! - this module: config space (the MAC), features, activation, and the
//!   event-manager subscriber that moves frames.
//!
//! Features: VERSION_1, MAC, CSUM (the guest leaves TCP/UDP checksums to
//! us: computing them natively is far cheaper than in a guest kernel that
//! may be emulated, see PLATFORM.md), GUEST_CSUM (frames from the backend
//! carry valid checksums, so the guest need not verify them: passt's do,
//! and a tap without IFF_VNET_HDR gets frames the kernel or another of
//! these devices finished) and EVENT_IDX. No segmentation offload: the qemu protocol carries frames of
//! the link's MTU.
//!
//! Flow control: a guest tx chain is taken only while the out buffer has
//! room for a whole frame; bytes from the backend are read only while the
//! in buffer has room, and a frame waits there until the guest posts an
//! rx buffer. Interrupts: at most one per queue per event-loop wake-up,
//! and none the driver suppressed (EVENT_IDX).
//!
//! A device without a backend (a snapshot template's) consumes tx chains
//! and never fills rx buffers; the backend can be attached before
//! activation only (a restored VM gets its own at creation).

pub mod frame;
pub mod stream;

#[cfg(test)]
mod tests;

use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_bindings::virtio_net::{VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MAC};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{
    device_type, read_config_bytes, ActivateContext, ActivateError, Interrupt, Misbehaviour,
    VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
pub use stream::Backend;
use stream::{QemuStream, StreamError};

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;

/// Errors creating a network device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The activation eventfd cannot be created.
    #[error("Cannot create the network device's eventfd")]
    EventFd(#[source] std::io::Error),
    /// The backend socket cannot be made non-blocking.
    #[error("Cannot use the network backend socket")]
    Backend(#[source] std::io::Error),
    /// A multicast MAC (low bit of the first byte) cannot name a NIC.
    #[error("MAC address {0} is a multicast address")]
    MulticastMac(String),
}

/// How to build a network device.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// The MAC address the guest reads from the config space.
    pub mac: [u8; 6],
    /// A connected stream socket speaking the qemu protocol or a tap, or
    /// `None` for a device with no link (frames the guest sends are
    /// dropped).
    pub backend: Option<Backend>,
}

/// Formats a MAC as `02:00:00:00:00:01`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What the device holds once the driver has activated it.
struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    evts: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    /// Whether `evts` (and the backend) are in epoll yet.
    watched: bool,
}

/// Frames counted for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetCounters {
    /// Guest frames handed to the backend.
    pub tx_frames: u64,
    /// Guest chains dropped as malformed (or with no backend).
    pub tx_dropped: u64,
    /// Backend frames given to the guest.
    pub rx_frames: u64,
    /// Backend frames dropped (a bad rx buffer).
    pub rx_dropped: u64,
}

/// The virtio-net device.
pub struct Net {
    mac: [u8; 6],
    backend: Option<QemuStream>,
    /// The epoll interest currently registered for the backend.
    backend_interest: Option<EventSet>,
    /// A backend that failed, still to be taken out of epoll.
    failed_backend: Option<QemuStream>,
    acked_features: u64,
    activate_evt: EventFd,
    active: Option<Active>,
    retired_evts: Vec<EventFd>,
    tx_frame: Vec<u8>,
    counters: NetCounters,
    misbehaviour: Arc<Misbehaviour>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("mac", &format_mac(&self.mac))
            .field("backend", &self.backend.is_some())
            .field("active", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

impl Net {
    /// An inactive device.
    pub fn new(config: NetConfig) -> Result<Self, NetError> {
        if config.mac[0] & 1 != 0 {
            return Err(NetError::MulticastMac(format_mac(&config.mac)));
        }
        let backend = config
            .backend
            .map(QemuStream::new)
            .transpose()
            .map_err(NetError::Backend)?;
        Ok(Self {
            mac: config.mac,
            backend,
            backend_interest: None,
            failed_backend: None,
            acked_features: 0,
            activate_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(NetError::EventFd)?,
            active: None,
            retired_evts: Vec::new(),
            tx_frame: Vec::with_capacity(frame::HDR_SIZE + frame::MAX_FRAME),
            counters: NetCounters::default(),
            misbehaviour: Misbehaviour::new("virtio-net"),
        })
    }

    /// The MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Whether a backend is attached (and has not closed).
    pub fn has_backend(&self) -> bool {
        self.backend.is_some()
    }

    /// Frame counters.
    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    fn drop_backend(&mut self, why: &StreamError) {
        tracing::warn!("virtio-net: link down: {why}");
        // Kept until the event thread has taken its fd out of epoll (the
        // socket may have other owners, so closing it is not enough).
        self.failed_backend = self.backend.take();
    }

    /// Takes every tx chain the out buffer has room for. Returns whether
    /// the guest must hear about used chains.
    fn process_tx(&mut self) -> bool {
        let Some(a) = self.active.as_mut() else {
            return false;
        };
        let q = &mut a.queues[TX];
        let event_idx = q.event_idx_enabled();
        let mut used = false;
        loop {
            if event_idx {
                let _ = q.disable_notification(&a.mem);
            }
            let mut popped = 0;
            while self.backend.as_ref().is_none_or(QemuStream::can_queue) {
                let Some(chain) = q.pop_descriptor_chain(&a.mem) else {
                    break;
                };
                popped += 1;
                let head = chain.head_index();
                match frame::read_tx(&a.mem, chain, &mut self.tx_frame) {
                    Ok(()) => match self.backend.as_mut() {
                        Some(b) => {
                            b.queue(&self.tx_frame);
                            self.counters.tx_frames += 1;
                        }
                        None => self.counters.tx_dropped += 1,
                    },
                    Err(e) => {
                        self.misbehaviour
                            .record(format_args!("dropped a tx chain: {e}"));
                        self.counters.tx_dropped += 1;
                    }
                }
                match q.add_used(&a.mem, head, 0) {
                    Ok(()) => used = true,
                    Err(e) => self
                        .misbehaviour
                        .record(format_args!("bad tx head {head}: {e}")),
                }
            }
            let full = self.backend.as_ref().is_some_and(|b| !b.can_queue());
            if popped == 0 && !full {
                super::misbehaviour::check_avail_index(q, &a.mem, &self.misbehaviour);
            }
            // Stopped for room: the backend's writability resumes us, no
            // guest notification is needed.
            if !event_idx || full {
                break;
            }
            match q.enable_notification(&a.mem) {
                Ok(true) if popped > 0 => continue,
                _ => break,
            }
        }
        let flush = self.backend.as_mut().map(QemuStream::flush);
        if let Some(Err(e)) = flush {
            self.drop_backend(&e);
        }
        used && needs_notification(q_of(&mut self.active, TX))
    }

    /// Gives frames read from the backend to the guest's rx buffers.
    /// Returns whether the guest must hear about filled buffers.
    fn process_rx(&mut self) -> bool {
        let data_valid = self.acked_features & (1 << VIRTIO_NET_F_GUEST_CSUM) != 0;
        let (Some(a), Some(b)) = (self.active.as_mut(), self.backend.as_mut()) else {
            return false;
        };
        if b.wants_read() {
            if let Err(e) = b.fill() {
                // Deliver what came before the error, then drop the link.
                let err = e;
                let used = deliver(a, b, data_valid, &mut self.counters);
                self.drop_backend(&err);
                return used && needs_notification(q_of(&mut self.active, RX));
            }
        }
        let used = deliver(a, b, data_valid, &mut self.counters);
        used && needs_notification(q_of(&mut self.active, RX))
    }

    /// The epoll interest the backend should have now.
    fn wanted_interest(&self) -> Option<EventSet> {
        let b = self.backend.as_ref()?;
        self.active.as_ref().filter(|a| a.watched)?;
        let mut set = EventSet::empty();
        if b.wants_read() {
            set |= EventSet::IN;
        }
        if b.out_pending() > 0 {
            set |= EventSet::OUT;
        }
        Some(set)
    }

    fn sync_backend_interest(&mut self, ops: &mut EventOps) {
        if let Some(old) = self.failed_backend.take() {
            if self.backend_interest.take().is_some() {
                let _ = ops.remove(Events::empty_raw(old.fd()));
            }
        }
        let Some(fd) = self.backend.as_ref().map(QemuStream::fd) else {
            return;
        };
        let want = self.wanted_interest();
        if want == self.backend_interest {
            return;
        }
        let result = match (self.backend_interest, want) {
            (None, Some(w)) => ops.add(Events::new_raw(fd, w)),
            (Some(_), Some(w)) => ops.modify(Events::new_raw(fd, w)),
            (Some(_), None) => ops.remove(Events::empty_raw(fd)),
            (None, None) => Ok(()),
        };
        match result {
            Ok(()) => self.backend_interest = want,
            Err(e) => tracing::error!("virtio-net: cannot watch the backend: {e:?}"),
        }
    }

    fn on_activate_evt(&mut self, ops: &mut EventOps) {
        let _ = self.activate_evt.read();
        for evt in self.retired_evts.drain(..) {
            let _ = ops.remove(Events::new(&evt, EventSet::IN));
        }
        if let Some(a) = self.active.as_mut() {
            if !a.watched {
                a.watched = true;
                for evt in &a.evts {
                    if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                        tracing::error!("virtio-net: cannot watch a queue: {e:?}");
                    }
                }
            }
        }
    }

    fn queue_evt_index(&self, fd: RawFd) -> Option<usize> {
        let a = self.active.as_ref()?;
        a.evts.iter().position(|e| e.as_raw_fd() == fd)
    }

    fn retire(&mut self) {
        if let Some(old) = self.active.take() {
            if old.watched {
                self.retired_evts.extend(old.evts);
            }
        }
    }
}

fn q_of(active: &mut Option<Active>, i: usize) -> Option<(&mut Queue, &GuestMemoryMmap)> {
    active.as_mut().map(|a| (&mut a.queues[i], &a.mem))
}

fn needs_notification(q: Option<(&mut Queue, &GuestMemoryMmap)>) -> bool {
    // An unreadable ring: tell the driver anyway, it will find out.
    q.is_some_and(|(q, mem)| q.needs_notification(mem).unwrap_or(true))
}

/// Moves whole frames from the in buffer into rx chains until either runs
/// out. Returns whether a chain was used.
fn deliver(a: &mut Active, b: &mut QemuStream, data_valid: bool, c: &mut NetCounters) -> bool {
    let q = &mut a.queues[RX];
    let mut used = false;
    loop {
        let frame = match b.peek_frame() {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                // Out of step: nothing after this can be trusted.
                tracing::warn!("virtio-net: {e}");
                b.consume();
                c.rx_dropped += 1;
                break;
            }
        };
        let Some(chain) = q.pop_descriptor_chain(&a.mem) else {
            // No buffer: ask the driver to tell us when it posts one, and
            // look again in case it did meanwhile.
            match q.enable_notification(&a.mem) {
                Ok(true) => continue,
                _ => break,
            }
        };
        let head = chain.head_index();
        let len = match frame::write_rx(&a.mem, chain, frame, data_valid) {
            Ok(n) => {
                c.rx_frames += 1;
                n
            }
            Err(e) => {
                tracing::debug!("virtio-net: dropped a frame for the guest: {e}");
                c.rx_dropped += 1;
                0
            }
        };
        b.consume();
        match q.add_used(&a.mem, head, len) {
            Ok(()) => used = true,
            Err(e) => tracing::debug!("virtio-net: bad rx head {head}: {e}"),
        }
    }
    used
}

fn signal(interrupt: &Interrupt) {
    if let Err(e) = interrupt.signal_used_queue() {
        tracing::warn!("virtio-net: cannot raise the interrupt: {e}");
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | (1 << VIRTIO_NET_F_MAC)
            | (1 << VIRTIO_NET_F_CSUM)
            | (1 << VIRTIO_NET_F_GUEST_CSUM)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config: mac, then fields of features not offered.
        read_config_bytes(&self.mac, offset, data);
    }

    fn misbehaviour(&self) -> Arc<Misbehaviour> {
        self.misbehaviour.clone()
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != 2 || ctx.queue_evts.len() != 2 {
            return Err(ActivateError::QueueCount {
                want: 2,
                got: ctx.queues.len().min(ctx.queue_evts.len()),
            });
        }
        let mut queues = ctx.queues;
        for q in &mut queues {
            if !q.is_valid(&ctx.mem) {
                return Err(ActivateError::Device(
                    "virtio-net queue does not fit in guest memory".into(),
                ));
            }
            q.set_event_idx(ctx.acked_features & VIRTIO_RING_F_EVENT_IDX != 0);
        }
        self.retire();
        self.acked_features = ctx.acked_features;
        self.active = Some(Active {
            mem: ctx.mem,
            queues,
            evts: ctx.queue_evts,
            interrupt: ctx.interrupt,
            watched: false,
        });
        self.activate_evt.write(1).map_err(ActivateError::Signal)
    }

    fn reset(&mut self) -> bool {
        self.retire();
        self.acked_features = 0;
        if let Err(e) = self.activate_evt.write(1) {
            tracing::warn!("virtio-net: cannot signal the reset: {e}");
        }
        true
    }

    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        self.active
            .iter()
            .flat_map(|a| a.queues.iter().map(|q| q.state()))
            .collect()
    }
}

impl MutEventSubscriber for Net {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.activate_evt.as_raw_fd() {
            self.on_activate_evt(ops);
        } else if let Some(i) = self.queue_evt_index(fd) {
            if let Some(a) = self.active.as_ref() {
                let _ = a.evts[i].read();
            }
        } else if self.backend.as_ref().is_some_and(|b| b.fd() == fd) {
            // A hang-up is reported whatever the interest; reading what is
            // left first would spin while the guest has no rx buffers.
            if events
                .event_set()
                .intersects(EventSet::ERROR | EventSet::HANG_UP)
            {
                self.drop_backend(&StreamError::Closed);
            }
        } else {
            // Not ours any more (a retired queue eventfd): stop it firing.
            let _ = ops.remove(Events::empty_raw(fd));
        }
        // Whatever woke us, move what can move: tx first (it frees room the
        // backend may be waiting on), then rx.
        let tx_irq = self.process_tx();
        let rx_irq = self.process_rx();
        if tx_irq || rx_irq {
            if let Some(a) = self.active.as_ref() {
                signal(&a.interrupt);
            }
        }
        self.sync_backend_interest(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.activate_evt, EventSet::IN)) {
            tracing::error!("virtio-net: cannot watch its activation: {e:?}");
        }
    }
}
