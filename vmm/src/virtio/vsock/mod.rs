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
    device_type, read_config_bytes, ActivateContext, ActivateError, Interrupt, VirtioDevice,
    VIRTIO_F_VERSION_1,
};
use muxer::Muxer;
use packet::{RxBuffer, TxPacket};

/// Size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
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
}

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
        Ok(Self {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            muxer: Muxer::new(guest_cid, uds_path, listener),
            activate_evt,
            timer,
            active: None,
            retired_evts: Vec::new(),
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
                Err(e) => tracing::debug!("vsock: dropped a tx packet: {e}"),
            }
            // A head index beyond the queue cannot be returned; the chains
            // after it still can.
            match a.queues[TX].add_used(&a.mem, head, 0) {
                Ok(()) => used = true,
                Err(e) => tracing::debug!("vsock: bad tx chain: {e}"),
            }
        }
        if used {
            signal(&a.interrupt);
        }
    }

    /// Fills the guest's rx buffers with whatever the muxer has for it.
    fn process_rx(&mut self, now: Instant) {
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
                    tracing::debug!("vsock: bad rx buffer: {e}");
                    0
                }
            };
            match a.queues[RX].add_used(&a.mem, head, len) {
                Ok(()) => used = true,
                Err(e) => tracing::debug!("vsock: bad rx chain: {e}"),
            }
        }
        if used {
            signal(&a.interrupt);
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
            // RX: new buffers, filled below. The event queue is unused.
            if i == TX {
                self.process_tx(now);
            }
        } else if self.muxer.owns_fd(fd) {
            self.muxer.handle_fd_event(fd, events.event_set());
        } else {
            // Not ours any more (e.g. a queue eventfd retired by a reset):
            // stop it firing.
            let _ = ops.remove(Events::empty_raw(fd));
        }
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
