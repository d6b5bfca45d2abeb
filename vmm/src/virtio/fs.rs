//! virtio-fs through vhost-user: the guest's FUSE requests go over two
//! virtqueues (hiprio and one request queue) that a separate process,
//! virtiofsd, serves directly from guest memory; this device only
//! negotiates and wires them up (rust-vmm's `vhost` frontend), as
//! Firecracker's and cloud-hypervisor's vhost-user devices do.
//!
//! What the VMM hands virtiofsd: the guest's RAM (a shared memfd, see
//! [`crate::memory::create_shared`]), each queue's ring addresses, the KVM
//! ioeventfd the guest's notifications land on (virtiofsd reads it, not
//! us) and a call eventfd per queue. virtiofsd writes the call eventfd
//! when it used buffers; the event loop turns that into the device's
//! interrupt (InterruptStatus must say VRING before the line is raised,
//! so the call eventfd cannot be an irqfd).
//!
//! The connection is made when the device is created, before the VMM
//! process jails itself; the rest of the protocol runs on the event-loop
//! thread once the driver sets DRIVER_OK. The device cannot be reset.
//!
//! Snapshots: a FUSE session's state (inodes, open files) lives in
//! virtiofsd and cannot move to another one, but the guest driver sends
//! nothing until the file system is mounted. So a template VM is saved
//! with its devices set up and nothing mounted; a VM restored from it
//! connects to its own virtiofsd, hands it the saved rings, and the
//! mount's FUSE_INIT is the first request that virtiofsd sees.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::{
    device_type, ActivateContext, ActivateError, Interrupt, Misbehaviour, VirtioDevice,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

/// Longest tag the config space holds (virtio spec 5.11.4).
pub const TAG_MAX: usize = 36;
/// Queue size of both queues.
const QUEUE_SIZE: u16 = 1024;
/// Queues: hiprio, then one request queue.
const QUEUES: usize = 2;
/// Ring descriptors may be indirect tables (virtio spec 6.1).
const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// vhost-user's own feature bit, never shown to the guest.
const PROTOCOL_FEATURES_BIT: u64 = 1 << 30;

/// Errors making a virtio-fs device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag does not fit the config space or is empty.
    #[error("virtio-fs tag {0:?} must be 1 to {TAG_MAX} bytes")]
    Tag(String),
    /// virtiofsd's socket could not be reached or refused the handshake.
    #[error("cannot talk to virtiofsd at {0}: {1}")]
    Backend(PathBuf, String),
    /// virtiofsd lacks a feature hull needs.
    #[error("virtiofsd at {0} does not offer VIRTIO_F_VERSION_1")]
    Features(PathBuf),
    /// An eventfd could not be made.
    #[error("cannot make an eventfd")]
    EventFd(#[source] std::io::Error),
}

/// One shared directory: virtiofsd's socket and the tag the guest mounts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FsConfig {
    /// virtiofsd's vhost-user socket (it listens; we connect).
    pub socket: PathBuf,
    /// What the guest passes to `mount -t virtiofs TAG`.
    pub tag: String,
}

/// A virtio-fs device backed by virtiofsd.
pub struct Fs {
    socket: PathBuf,
    frontend: Frontend,
    config_space: Vec<u8>,
    /// Virtio features virtiofsd offers (minus vhost-user's own bit).
    features: u64,
    /// Whether vhost-user protocol features were negotiated: the rings
    /// then start disabled and need SET_VRING_ENABLE.
    protocol_features: bool,
    activate_evt: EventFd,
    /// One per queue, made here: the event loop that wires the queues up
    /// runs under a filter that allows no new eventfds.
    calls: Vec<EventFd>,
    pending: Option<ActivateContext>,
    active: Option<Active>,
    /// The queues as the driver set them up, for a snapshot.
    queue_states: Vec<virtio_queue::QueueState>,
    misbehaviour: Arc<Misbehaviour>,
}

/// What a running device keeps: the interrupt its call eventfds raise,
/// and the kick eventfds virtiofsd reads (kept open).
struct Active {
    interrupt: Arc<Interrupt>,
    _kicks: Vec<EventFd>,
}

impl Fs {
    /// Connects to virtiofsd at `config.socket` and learns its features.
    pub fn new(config: &FsConfig) -> Result<Self, FsError> {
        let backend = |e: vhost::Error| FsError::Backend(config.socket.clone(), e.to_string());
        let config_space = config_space(&config.tag)?;
        let mut frontend = Frontend::connect(&config.socket, QUEUES as u64).map_err(backend)?;
        frontend.set_owner().map_err(backend)?;
        let offered = frontend.get_features().map_err(backend)?;
        if offered & VIRTIO_F_VERSION_1 == 0 {
            return Err(FsError::Features(config.socket.clone()));
        }
        let protocol_features = offered & PROTOCOL_FEATURES_BIT != 0;
        if protocol_features {
            // Only what the handshake below relies on: nothing beyond the
            // base protocol (no config space, no back-channel, no slots).
            let theirs = frontend.get_protocol_features().map_err(backend)?;
            let ours = theirs & VhostUserProtocolFeatures::MQ;
            frontend.set_protocol_features(ours).map_err(backend)?;
        }
        Ok(Self {
            socket: config.socket.clone(),
            frontend,
            config_space,
            features: offered
                & (VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC),
            protocol_features,
            activate_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(FsError::EventFd)?,
            calls: (0..QUEUES)
                .map(|_| EventFd::new(libc::EFD_NONBLOCK))
                .collect::<Result<_, _>>()
                .map_err(FsError::EventFd)?,
            pending: None,
            active: None,
            queue_states: Vec::new(),
            misbehaviour: Misbehaviour::new("virtio-fs"),
        })
    }

    /// Hands virtiofsd the guest memory and the queues of `ctx`, and
    /// returns what the event loop watches from then on.
    fn start_backend(&mut self, ctx: ActivateContext) -> Result<Active, String> {
        let err = |what: &str, e: vhost::Error| format!("{what}: {e}");
        let mut features = ctx.acked_features;
        if self.protocol_features {
            features |= PROTOCOL_FEATURES_BIT;
        }
        self.frontend
            .set_features(features)
            .map_err(|e| err("set features", e))?;
        let regions = ctx
            .mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err("guest memory is not shareable", e))?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(|e| err("set memory table", e))?;
        let queues = ctx.queues.iter().zip(&ctx.queue_evts).zip(&self.calls);
        for (i, ((queue, kick), call)) in queues.enumerate() {
            let ring = ring_addresses(&ctx.mem, queue)
                .ok_or_else(|| format!("queue {i} does not fit in guest memory"))?;
            self.frontend
                .set_vring_num(i, queue.size())
                .and_then(|()| self.frontend.set_vring_addr(i, &ring))
                .and_then(|()| self.frontend.set_vring_base(i, queue.next_avail()))
                .and_then(|()| self.frontend.set_vring_call(i, call))
                .and_then(|()| self.frontend.set_vring_kick(i, kick))
                .map_err(|e| err(&format!("set up queue {i}"), e))?;
            if self.protocol_features {
                self.frontend
                    .set_vring_enable(i, true)
                    .map_err(|e| err(&format!("enable queue {i}"), e))?;
            }
        }
        Ok(Active {
            interrupt: ctx.interrupt,
            _kicks: ctx.queue_evts,
        })
    }

    fn on_activate_evt(&mut self, ops: &mut EventOps) {
        let _ = self.activate_evt.read();
        let Some(ctx) = self.pending.take() else {
            return;
        };
        match self.start_backend(ctx) {
            Ok(active) => {
                for call in &self.calls {
                    if let Err(e) = ops.add(Events::new(call, EventSet::IN)) {
                        tracing::error!("virtio-fs: cannot watch a call eventfd: {e:?}");
                    }
                }
                let hangup = Events::new(&self.frontend_fd(), EventSet::empty());
                if let Err(e) = ops.add(hangup) {
                    tracing::warn!("virtio-fs: cannot watch virtiofsd's socket: {e:?}");
                }
                self.active = Some(active);
            }
            // The guest's mount fails (its requests are never answered);
            // the VM and its other devices go on.
            Err(e) => tracing::error!(
                "virtio-fs: virtiofsd at {} refused the queues: {e}",
                self.socket.display()
            ),
        }
    }

    fn frontend_fd(&self) -> RawFdRef {
        RawFdRef(self.frontend.as_raw_fd())
    }
}

/// A borrowed descriptor number for the event manager's `Events::new`.
struct RawFdRef(std::os::fd::RawFd);

impl AsRawFd for RawFdRef {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

/// The config space: the tag, NUL-padded to [`TAG_MAX`] bytes, then the
/// number of request queues (le32).
fn config_space(tag: &str) -> Result<Vec<u8>, FsError> {
    if tag.is_empty() || tag.len() > TAG_MAX || tag.contains('\0') {
        return Err(FsError::Tag(tag.into()));
    }
    let mut space = vec![0u8; TAG_MAX + 4];
    space[..tag.len()].copy_from_slice(tag.as_bytes());
    space[TAG_MAX..].copy_from_slice(&1u32.to_le_bytes());
    Ok(space)
}

/// A queue's ring addresses as vhost-user wants them: in this process's
/// address space (virtiofsd translates them with the memory table).
fn ring_addresses(
    mem: &vm_memory::GuestMemoryMmap,
    queue: &virtio_queue::Queue,
) -> Option<VringConfigData> {
    let host = |gpa: u64| {
        mem.get_host_address(GuestAddress(gpa))
            .ok()
            .map(|p| p as u64)
    };
    if !queue.is_valid(mem) {
        return None;
    }
    Some(VringConfigData {
        queue_max_size: QUEUE_SIZE,
        queue_size: queue.size(),
        flags: 0,
        desc_table_addr: host(queue.desc_table())?,
        used_ring_addr: host(queue.used_ring())?,
        avail_ring_addr: host(queue.avail_ring())?,
        log_addr: None,
    })
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        device_type::FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; QUEUES]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config_space, offset, data);
    }

    /// virtiofsd serves the queues; the transport's findings land here.
    fn misbehaviour(&self) -> Arc<Misbehaviour> {
        self.misbehaviour.clone()
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.active.is_some() || self.pending.is_some() {
            return Err(ActivateError::Device(
                "virtio-fs cannot be started twice".into(),
            ));
        }
        if ctx.queues.len() != QUEUES || ctx.queue_evts.len() != QUEUES {
            return Err(ActivateError::QueueCount {
                want: QUEUES,
                got: ctx.queues.len().min(ctx.queue_evts.len()),
            });
        }
        // The vhost-user exchange runs on the event loop: this is a vCPU
        // thread, whose filter allows no new sockets or fds.
        self.queue_states = ctx.queues.iter().map(|q| q.state()).collect();
        self.pending = Some(ctx);
        self.activate_evt.write(1).map_err(ActivateError::Signal)
    }

    /// The queues as the driver set them up. Right only while the guest
    /// has never mounted the file system (a template VM): the indices
    /// move in virtiofsd afterwards, and a FUSE session cannot move to
    /// another virtiofsd anyway.
    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        self.queue_states.clone()
    }
}

impl MutEventSubscriber for Fs {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.activate_evt.as_raw_fd() {
            self.on_activate_evt(ops);
            return;
        }
        if fd == self.frontend.as_raw_fd() {
            tracing::warn!(
                "virtio-fs: virtiofsd at {} went away; the guest's mount stops answering",
                self.socket.display()
            );
            let _ = ops.remove(events);
            return;
        }
        let Some(active) = self.active.as_ref() else {
            let _ = ops.remove(events);
            return;
        };
        if let Some(call) = self.calls.iter().find(|c| c.as_raw_fd() == fd) {
            let _ = call.read();
            if let Err(e) = active.interrupt.signal_used_queue() {
                tracing::warn!("virtio-fs: cannot raise the interrupt: {e}");
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.activate_evt, EventSet::IN)) {
            tracing::error!("virtio-fs: cannot watch its activation: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_space_holds_the_padded_tag_and_one_request_queue() {
        let space = config_space("hull-bind0").unwrap();
        assert_eq!(space.len(), 40);
        assert_eq!(&space[..10], b"hull-bind0");
        assert!(space[10..TAG_MAX].iter().all(|&b| b == 0));
        assert_eq!(&space[TAG_MAX..], &1u32.to_le_bytes());
    }

    #[test]
    fn tags_must_fit_the_config_space() {
        assert!(config_space("").is_err());
        assert!(config_space(&"x".repeat(TAG_MAX + 1)).is_err());
        assert!(config_space("a\0b").is_err());
        assert!(config_space(&"x".repeat(TAG_MAX)).is_ok());
    }

    #[test]
    fn a_missing_virtiofsd_socket_is_one_error_naming_it() {
        let err = Fs::new(&FsConfig {
            socket: "/nonexistent/hull-fs.sock".into(),
            tag: "t".into(),
        })
        .err()
        .unwrap();
        assert!(
            err.to_string().contains("/nonexistent/hull-fs.sock"),
            "{err}"
        );
    }
}
