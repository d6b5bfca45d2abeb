//! virtio-blk: a disk image file as a guest block device (virtio spec 1.x
//! §5.2).
//!
//! One request queue, served synchronously on the event-manager thread:
//! `activate` (vCPU thread, via the transport) stores the queue and kicks
//! the activation eventfd; the event-manager thread then starts watching
//! the queue's eventfd and serves each chain ([`request`]) against the file
//! ([`disk`]). The device is shared as `Arc<Mutex<Block>>` between the
//! transport and the event manager.
//!
//! ```no_run
//! # use std::sync::{Arc, Mutex};
//! # fn main() -> Result<(), vmm::virtio::block::BlockError> {
//! use vmm::virtio::block::{Block, BlockConfig};
//! let block = Block::new(BlockConfig {
//!     path: "rootfs.ext4".into(),
//!     read_only: true,
//!     id: "rootfs".into(),
//! })?;
//! let block = Arc::new(Mutex::new(block));
//! // The transport gets `block.clone()` as its `VirtioDevice`; the event
//! // manager gets it as a `MutEventSubscriber`.
//! # Ok(()) }
//! ```

pub mod disk;
pub mod request;

use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{
    device_type, read_config_bytes, ActivateContext, ActivateError, Interrupt, Misbehaviour,
    VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
pub use disk::{DiskFile, SECTOR_SIZE};
pub use request::ID_BYTES;

/// Entries in the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most data segments per request (config `seg_max`); header and status
/// come on top, and the whole chain must fit in the queue.
pub const SEG_MAX: u32 = 128;

/// Errors creating or re-pointing a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image cannot be opened (missing, or no permission).
    #[error("Cannot open disk image {}", path.display())]
    Open {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The image's size cannot be read.
    #[error("Cannot read the size of disk image {}", path.display())]
    Size {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The image is not a whole number of 512-byte sectors.
    #[error("Disk image {} is {size} bytes, not a multiple of 512", path.display())]
    NotSectorMultiple {
        /// The image.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// The device ID does not fit in GET_ID's 20 bytes.
    #[error("Disk id {id:?} is {} bytes, at most 20", id.len())]
    IdTooLong {
        /// The ID given.
        id: String,
    },
    /// The activation eventfd cannot be created.
    #[error("Cannot create the block device's activation eventfd")]
    EventFd(#[source] std::io::Error),
    /// The config-change interrupt cannot be raised.
    #[error("Cannot raise the block device's config-change interrupt")]
    Interrupt(#[source] std::io::Error),
}

/// How to build a block device.
#[derive(Clone, Debug)]
pub struct BlockConfig {
    /// The disk image; its size must be a multiple of 512.
    pub path: PathBuf,
    /// Refuse guest writes (and open the file read-only).
    pub read_only: bool,
    /// Answer to GET_ID (the guest's `/sys/block/vdX/serial`), at most 20 bytes.
    pub id: String,
}

/// What the device holds once the driver has activated it.
struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    queue_evt: EventFd,
    interrupt: Arc<Interrupt>,
    /// Whether `queue_evt` is in the event manager's epoll set yet.
    registered: bool,
}

/// A virtio-blk device backed by a file.
pub struct Block {
    disk: DiskFile,
    id: [u8; ID_BYTES],
    avail_features: u64,
    acked_features: u64,
    activate_evt: EventFd,
    active: Option<Active>,
    /// Queue eventfds of a reset device, still to be removed from epoll by
    /// the event-manager thread (only it holds `EventOps`).
    stale_evts: Vec<EventFd>,
    queue_sizes: [u16; 1],
    misbehaviour: Arc<Misbehaviour>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("disk", &self.disk)
            .field("active", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

fn features_for(read_only: bool) -> u64 {
    let mut features = VIRTIO_F_VERSION_1
        | VIRTIO_RING_F_EVENT_IDX
        | (1 << VIRTIO_BLK_F_FLUSH)
        | (1 << VIRTIO_BLK_F_SEG_MAX);
    if read_only {
        features |= 1 << VIRTIO_BLK_F_RO;
    }
    features
}

impl Block {
    /// Opens the image and builds an inactive device.
    pub fn new(config: BlockConfig) -> Result<Self, BlockError> {
        if config.id.len() > ID_BYTES {
            return Err(BlockError::IdTooLong { id: config.id });
        }
        // Shorter IDs are NUL-padded, as the spec wants.
        let mut id = [0u8; ID_BYTES];
        id[..config.id.len()].copy_from_slice(config.id.as_bytes());
        let disk = DiskFile::open(&config.path, config.read_only)?;
        let activate_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(BlockError::EventFd)?;
        Ok(Self {
            disk,
            id,
            avail_features: features_for(config.read_only),
            acked_features: 0,
            activate_evt,
            active: None,
            stale_evts: Vec::new(),
            queue_sizes: [QUEUE_SIZE],
            misbehaviour: Misbehaviour::new(format!("virtio-blk {}", config.id)),
        })
    }

    /// Disk size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.sectors()
    }

    /// The current backing file.
    pub fn disk_path(&self) -> &Path {
        self.disk.path()
    }

    /// Whether guest writes are refused.
    pub fn read_only(&self) -> bool {
        self.disk.read_only()
    }

    /// Whether the driver has activated the device.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Replaces the backing file, updates the capacity and tells an active
    /// driver with a config-change interrupt. Requests are served under the
    /// device's lock, so holding `&mut self` means none is in flight. On
    /// error the old file stays.
    ///
    /// The RO feature bit was negotiated with the old file: a swap to a
    /// read-only file is enforced per request (writes fail with IOERR).
    pub fn swap_backing(&mut self, path: &Path, read_only: bool) -> Result<(), BlockError> {
        self.disk = DiskFile::open(path, read_only)?;
        self.avail_features = features_for(read_only);
        if let Some(active) = &self.active {
            active
                .interrupt
                .signal_config_change()
                .map_err(BlockError::Interrupt)?;
        }
        Ok(())
    }

    /// The config space (`struct virtio_blk_config`) up to `seg_max`.
    fn config_space(&self) -> [u8; 16] {
        let mut space = [0u8; 16];
        space[0..8].copy_from_slice(&self.disk.sectors().to_le_bytes());
        // size_max (8..12) stays 0: not offered.
        space[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        space
    }

    /// Serves the queue and interrupts the driver if it should hear.
    fn serve_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        match request::process_queue(
            &mut active.queue,
            &active.mem,
            &mut self.disk,
            &self.id,
            &self.misbehaviour,
        ) {
            Ok(true) => {
                if let Err(e) = active.interrupt.signal_used_queue() {
                    tracing::warn!("virtio-blk: cannot raise the queue interrupt: {e}");
                }
            }
            Ok(false) => {}
            Err(e) => self.misbehaviour.record(format_args!("queue error: {e}")),
        }
    }

    /// The activation eventfd fired: drop stale registrations, watch the
    /// new queue and serve anything the driver queued before we watched.
    fn on_activate(&mut self, ops: &mut EventOps) {
        // Drain the counter; EAGAIN just means it was already drained.
        let _ = self.activate_evt.read();
        for evt in self.stale_evts.drain(..) {
            if let Err(e) = ops.remove(Events::new(&evt, EventSet::IN)) {
                tracing::warn!("virtio-blk: cannot unwatch an old queue eventfd: {e}");
            }
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if active.registered {
            return;
        }
        if let Err(e) = ops.add(Events::new(&active.queue_evt, EventSet::IN)) {
            tracing::error!("virtio-blk: cannot watch the queue eventfd: {e}");
            return;
        }
        active.registered = true;
        self.serve_queue();
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.avail_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space(), offset, data);
    }

    fn misbehaviour(&self) -> Arc<Misbehaviour> {
        self.misbehaviour.clone()
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let ActivateContext {
            mem,
            queues,
            queue_evts,
            interrupt,
            acked_features,
        } = ctx;
        if queues.len() != 1 || queue_evts.len() != 1 {
            return Err(ActivateError::QueueCount {
                want: 1,
                got: queues.len().min(queue_evts.len()),
            });
        }
        let (Some(mut queue), Some(queue_evt)) =
            (queues.into_iter().next(), queue_evts.into_iter().next())
        else {
            return Err(ActivateError::QueueCount { want: 1, got: 0 });
        };
        if !queue.is_valid(&mem) {
            return Err(ActivateError::Device(
                "virtio-blk queue does not fit in guest memory".into(),
            ));
        }
        queue.set_event_idx(acked_features & VIRTIO_RING_F_EVENT_IDX != 0);
        if let Some(old) = self.active.take() {
            if old.registered {
                self.stale_evts.push(old.queue_evt);
            }
        }
        self.acked_features = acked_features;
        self.active = Some(Active {
            mem,
            queue,
            queue_evt,
            interrupt,
            registered: false,
        });
        self.activate_evt.write(1).map_err(ActivateError::Signal)
    }

    fn reset(&mut self) -> bool {
        if let Some(old) = self.active.take() {
            if old.registered {
                self.stale_evts.push(old.queue_evt);
                // Wake the event-manager thread to unwatch it.
                if let Err(e) = self.activate_evt.write(1) {
                    tracing::warn!("virtio-blk: cannot signal reset: {e}");
                }
            }
        }
        self.acked_features = 0;
        true
    }

    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        self.active.iter().map(|a| a.queue.state()).collect()
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.activate_evt, EventSet::IN)) {
            tracing::error!("virtio-blk: cannot watch the activation eventfd: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.activate_evt.as_raw_fd() {
            self.on_activate(ops);
            return;
        }
        let is_queue = self
            .active
            .as_ref()
            .is_some_and(|a| a.queue_evt.as_raw_fd() == fd);
        if is_queue {
            if let Some(active) = &self.active {
                // Epoll said readable, so this does not block.
                let _ = active.queue_evt.read();
            }
            self.serve_queue();
        } else {
            tracing::debug!("virtio-blk: event on unknown fd {fd}");
        }
    }
}

#[cfg(test)]
mod tests;
