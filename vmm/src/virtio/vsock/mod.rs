//! virtio-vsock, emulated in the VMM (there is no vhost-vsock on our hosts),
//! with Firecracker's hybrid-vsock Unix-socket backend.
//!
//! - [`packet`]: the 44-byte header, packets in and out of descriptor chains.
//! - [`connection`]: one stream's state machine and credit-based flow control.
//! - [`muxer`]: the host listener, the connection map and routing.
//! - this module: the device (config space, activation, queues) and its
//!   event-manager subscriber.
//!
//! Wiring: create it with [`Vsock::new`], share it as
//! `Arc<Mutex<Vsock>>` between the virtio-mmio transport (as a
//! [`VirtioDevice`]) and the event manager (as a [`MutEventSubscriber`]).
//! A host process reaches guest port P by connecting to `uds_path` and
//! writing `CONNECT P\n`; a guest connecting to CID 2 port P reaches the Unix
//! socket `<uds_path>_P`.

pub mod connection;
pub mod muxer;
pub mod packet;

#[cfg(test)]
mod tests;

use std::io::ErrorKind;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::{
    device_type, read_config_bytes, ActivateContext, ActivateError, Interrupt, Misbehaviour,
    VirtioDevice, VIRTIO_F_VERSION_1,
};
use muxer::Muxer;
use packet::{RxBuffer, TxPacket};

/// Size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
const EVENT: usize = 2;
/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`: the driver resets every connected
/// socket (and rereads the CID); listening sockets stay.
const EVENT_TRANSPORT_RESET: u32 = 0;
/// How often connection deadlines are checked.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Errors creating the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// CIDs 0-2 are reserved, and Linux CIDs are 32-bit (the last one too).
    #[error("Invalid guest CID {0} (use 3 to 4294967294)")]
    InvalidCid(u64),
    /// Another process listens on the socket path.
    #[error("vsock socket {0} is in use by another process")]
    SocketInUse(PathBuf),
    /// Binding the socket failed.
    #[error("Cannot listen on vsock socket {0}")]
    Bind(PathBuf, #[source] std::io::Error),
    /// Creating an eventfd or timerfd failed.
    #[error("Cannot create vsock {0}")]
    Resource(&'static str, #[source] std::io::Error),
}

/// What the device holds once the driver has activated it.
struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    evts: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    /// Whether `evts` are in epoll yet (done on the event thread).
    watched: bool,
}

/// The virtio-vsock device.
pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    muxer: Muxer,
    activate_evt: EventFd,
    timer: TimerFd,
    active: Option<Active>,
    /// Queue eventfds of an activation undone by a reset, to take out of
    /// epoll on the event thread before they are closed.
    retired_evts: Vec<EventFd>,
    /// Where a transport reset stands (restored from a snapshot: the
    /// guest's connections were to a VMM that is gone).
    reset: TransportReset,
    misbehaviour: Arc<Misbehaviour>,
}

/// A transport reset, from restore until the driver has handled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TransportReset {
    /// None to tell.
    Done,
    /// The driver has yet to be told (no event buffer so far).
    Pending,
    /// Told at this instant, when the driver's available index on the
    /// event queue was this; the driver gives the buffer back (advances
    /// the index) once it has reset its sockets. Until then nothing goes
    /// to the guest's rx queue: a new connection's request must not be
    /// reset with the old ones (the driver handles events and rx on
    /// separate work items).
    Delivered(Instant, u16),
}

/// How long a delivered reset holds rx back at most (a driver that never
/// refills its event queue must not stall the device).
const RESET_HOLD: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("guest_cid", &self.guest_cid)
            .field("uds_path", &self.uds_path)
            .field("active", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

/// Binds `path`, replacing a socket file nobody listens on any more (left
/// behind by a VMM that died) but never one in use.
fn bind_listener(path: &Path) -> Result<UnixListener, VsockError> {
    let listener = match UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) if e.kind() == ErrorKind::AddrInUse => match UnixStream::connect(path) {
            Err(ce) if ce.kind() == ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path).map_err(|e| VsockError::Bind(path.into(), e))?;
                UnixListener::bind(path).map_err(|e| VsockError::Bind(path.into(), e))?
            }
            _ => return Err(VsockError::SocketInUse(path.into())),
        },
        Err(e) => return Err(VsockError::Bind(path.into(), e)),
    };
    listener
        .set_nonblocking(true)
        .map_err(|e| VsockError::Bind(path.into(), e))?;
    Ok(listener)
}

impl Vsock {
    /// A vsock device for a guest with CID `guest_cid`, listening for host
    /// clients on the Unix socket `uds_path` (removed again on drop).
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, VsockError> {
        if !(3..u64::from(u32::MAX)).contains(&guest_cid) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        let activate_evt = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|e| VsockError::Resource("activation eventfd", e))?;
        let timer_err = |e: vmm_sys_util::errno::Error| {
            VsockError::Resource("timer", std::io::Error::from_raw_os_error(e.errno()))
        };
        let mut timer = TimerFd::new().map_err(timer_err)?;
        timer
            .reset(SWEEP_INTERVAL, Some(SWEEP_INTERVAL))
            .map_err(timer_err)?;
        let listener = bind_listener(uds_path)?;
        let misbehaviour = Misbehaviour::new("vsock");
        Ok(Self {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            muxer: Muxer::new(guest_cid, uds_path, listener, misbehaviour.clone()),
            misbehaviour,
            activate_evt,
            timer,
            active: None,
            retired_evts: Vec::new(),
            reset: TransportReset::Done,
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The host socket path.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Whether the driver has activated the device.
    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// Connections a snapshot must wait for (see [`Muxer::open_count`]).
    pub fn open_connections(&self) -> usize {
        self.muxer.open_count()
    }

    /// Pops every packet the guest sent and routes it.
    fn process_tx(&mut self, now: Instant) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        while let Some(chain) = a.queues[TX].pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            match TxPacket::from_descriptors(&a.mem, chain) {
                Ok(pkt) => self.muxer.handle_guest_packet(&pkt, now),
                Err(e) => self
                    .misbehaviour
                    .record(format_args!("dropped a tx packet: {e}")),
            }
            // A head index beyond the queue cannot be returned; the chains
            // after it still can.
            match a.queues[TX].add_used(&a.mem, head, 0) {
                Ok(()) => used = true,
                Err(e) => self.misbehaviour.record(format_args!("bad tx chain: {e}")),
            }
        }
        if used {
            signal(&a.interrupt);
        } else {
            super::misbehaviour::check_avail_index(&a.queues[TX], &a.mem, &self.misbehaviour);
        }
    }

    /// Fills the guest's rx buffers with whatever the muxer has for it.
    fn process_rx(&mut self, now: Instant) {
        if self.rx_held(now) {
            return;
        }
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        while self.muxer.has_pending_rx() {
            let Some(chain) = a.queues[RX].pop_descriptor_chain(&a.mem) else {
                break;
            };
            let head = chain.head_index();
            let len = match RxBuffer::from_descriptors(&a.mem, chain) {
                Ok(buf) => match self.muxer.next_rx_packet(buf.max_payload(), now) {
                    Some((hdr, payload)) => buf
                        .write_packet(&a.mem, &hdr, &payload)
                        .unwrap_or_else(|e| {
                            tracing::warn!("vsock: lost a packet for the guest: {e}");
                            0
                        }),
                    None => {
                        // Nothing after all: leave the buffer for later.
                        a.queues[RX].go_to_previous_position();
                        break;
                    }
                },
                Err(e) => {
                    // Returned unused (length 0): the driver drops it.
                    self.misbehaviour.record(format_args!("bad rx buffer: {e}"));
                    0
                }
            };
            match a.queues[RX].add_used(&a.mem, head, len) {
                Ok(()) => used = true,
                Err(e) => self.misbehaviour.record(format_args!("bad rx chain: {e}")),
            }
        }
        if used {
            signal(&a.interrupt);
        }
    }

    /// Tells the driver of a pending transport reset, in the first buffer
    /// it gave the event queue (kept pending until there is one).
    fn deliver_transport_reset(&mut self, now: Instant) {
        let Some(a) = self
            .active
            .as_mut()
            .filter(|_| self.reset == TransportReset::Pending)
        else {
            return;
        };
        let Some(chain) = a.queues[EVENT].pop_descriptor_chain(&a.mem) else {
            return;
        };
        let head = chain.head_index();
        let written = chain
            .writable()
            .next()
            .filter(|d| d.len() >= 4)
            .and_then(|d| {
                use vm_memory::Bytes;
                a.mem
                    .write_obj(EVENT_TRANSPORT_RESET.to_le(), d.addr())
                    .ok()
            })
            .map_or(0, |()| 4);
        if written == 0 {
            tracing::debug!("vsock: unusable event buffer");
        }
        match a.queues[EVENT].add_used(&a.mem, head, written) {
            Ok(()) => signal(&a.interrupt),
            Err(e) => tracing::debug!("vsock: bad event chain: {e}"),
        }
        if written > 0 {
            let avail = a.queues[EVENT]
                .avail_idx(&a.mem, std::sync::atomic::Ordering::Acquire)
                .map_or(0, |i| i.0);
            self.reset = TransportReset::Delivered(now, avail);
        }
    }

    /// Whether the driver has offered an event buffer again after a
    /// delivered reset (a notification alone proves nothing: restore
    /// notifies every queue once).
    fn event_buffer_returned(&self) -> bool {
        let (TransportReset::Delivered(_, then), Some(a)) = (self.reset, self.active.as_ref())
        else {
            return false;
        };
        // The driver keeps several event buffers posted: only one more
        // than it had when it was told is its answer.
        a.queues[EVENT]
            .avail_idx(&a.mem, std::sync::atomic::Ordering::Acquire)
            .is_ok_and(|avail| avail.0 != then)
    }

    /// Whether rx must wait for the driver to finish a transport reset.
    fn rx_held(&mut self, now: Instant) -> bool {
        match self.reset {
            TransportReset::Done => false,
            TransportReset::Pending => true,
            TransportReset::Delivered(at, _) if now.duration_since(at) >= RESET_HOLD => {
                tracing::debug!("vsock: the driver never refilled its event queue");
                self.reset = TransportReset::Done;
                false
            }
            TransportReset::Delivered(..) => true,
        }
    }

    /// On the event thread after `activate` or `reset`: brings the queue
    /// eventfds in or out of epoll.
    fn on_activate_evt(&mut self, ops: &mut EventOps) {
        let _ = self.activate_evt.read();
        for evt in self.retired_evts.drain(..) {
            // It may already be out (see `process`).
            let _ = ops.remove(Events::new(&evt, EventSet::IN));
        }
        if let Some(a) = self.active.as_mut() {
            if !a.watched {
                a.watched = true;
                for evt in &a.evts {
                    if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                        tracing::error!("vsock: cannot watch a queue: {e:?}");
                    }
                }
            }
        }
    }

    fn queue_evt_index(&self, fd: RawFd) -> Option<usize> {
        let a = self.active.as_ref()?;
        a.evts.iter().position(|e| e.as_raw_fd() == fd)
    }
}

fn signal(interrupt: &Interrupt) {
    if let Err(e) = interrupt.signal_used_queue() {
        tracing::warn!("vsock: cannot raise the interrupt: {e}");
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        // Only our own socket file: never one another process bound since.
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        // Stream sockets only: no VIRTIO_VSOCK_F_SEQPACKET.
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn misbehaviour(&self) -> Arc<Misbehaviour> {
        self.misbehaviour.clone()
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != 3 || ctx.queue_evts.len() != 3 {
            return Err(ActivateError::QueueCount {
                want: 3,
                got: ctx.queues.len().min(ctx.queue_evts.len()),
            });
        }
        if let Some(old) = self.active.take() {
            if old.watched {
                self.retired_evts.extend(old.evts);
            }
        }
        self.active = Some(Active {
            mem: ctx.mem,
            queues: ctx.queues,
            evts: ctx.queue_evts,
            interrupt: ctx.interrupt,
            watched: false,
        });
        self.activate_evt.write(1).map_err(ActivateError::Signal)
    }

    fn reset(&mut self) -> bool {
        if let Some(old) = self.active.take() {
            if old.watched {
                self.retired_evts.extend(old.evts);
            }
        }
        self.muxer.reset();
        // The event thread takes the old fds out of epoll.
        if let Err(e) = self.activate_evt.write(1) {
            tracing::warn!("vsock: cannot signal the reset: {e}");
        }
        true
    }

    fn restored(&mut self) {
        // The guest's sockets were connected to a VMM process that is
        // gone; a fresh muxer knows none of them. Resetting them by
        // protocol, as Firecracker does, keeps a stale one from ever being
        // taken for a new connection.
        self.reset = TransportReset::Pending;
    }

    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        self.active
            .iter()
            .flat_map(|a| a.queues.iter().map(|q| q.state()))
            .collect()
    }
}

impl MutEventSubscriber for Vsock {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        let now = Instant::now();
        if fd == self.activate_evt.as_raw_fd() {
            self.on_activate_evt(ops);
            self.process_tx(now);
        } else if fd == self.muxer.listener_fd() {
            self.muxer.accept();
        } else if fd == self.timer.as_raw_fd() {
            // Readable, so this does not block.
            let _ = self.timer.wait();
            self.muxer.sweep(now);
        } else if let Some(i) = self.queue_evt_index(fd) {
            if let Some(a) = self.active.as_ref() {
                let _ = a.evts[i].read();
            }
            // RX: new buffers, filled below. EVENT: the driver gives a
            // buffer back once it has handled a reset (or a first one for a
            // pending reset, delivered below).
            if i == TX {
                self.process_tx(now);
            }
            if i == EVENT && self.event_buffer_returned() {
                self.reset = TransportReset::Done;
            }
        } else if self.muxer.owns_fd(fd) {
            self.muxer.handle_fd_event(fd, events.event_set());
        } else {
            // Not ours any more (e.g. a queue eventfd retired by a reset):
            // stop it firing.
            let _ = ops.remove(Events::empty_raw(fd));
        }
        self.deliver_transport_reset(now);
        self.process_rx(now);
        self.muxer.sync_epoll(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in [
            self.activate_evt.as_raw_fd(),
            self.muxer.listener_fd(),
            self.timer.as_raw_fd(),
        ] {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                tracing::error!("vsock: cannot watch its events: {e:?}");
            }
        }
    }
}
