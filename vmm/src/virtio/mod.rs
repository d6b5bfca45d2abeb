//! Virtio devices over the virtio-mmio transport (version 2, modern only).
//!
//! A device implements [`VirtioDevice`]: it describes itself (type,
//! features, queues, config space) and is handed its queues when the driver
//! sets DRIVER_OK. Every device is also an event-manager subscriber: it
//! registers an activation eventfd in `init`, and once activated it watches
//! its queue eventfds (KVM ioeventfds, so a guest notification never exits
//! to our vCPU thread) and raises its interrupt through an irqfd.
//!
//! Guest-controlled input is hostile: a malformed chain or an absurd length
//! fails that request (or that device, marked NEEDS_RESET), never the VMM.

pub mod block;
pub mod fs;
pub mod interrupt;
pub mod misbehaviour;
pub mod mmio;
pub mod net;
pub mod vsock;

use std::sync::Arc;

use virtio_queue::{Queue, QueueState};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use interrupt::Interrupt;
pub use misbehaviour::Misbehaviour;

/// Virtio device type IDs (virtio spec 5).
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Socket device.
    pub const VSOCK: u32 = 19;
    /// File system device (virtio-fs).
    pub const FS: u32 = 26;
}

/// Feature bit every modern device offers.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// The device can use event-index notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// Errors activating a device.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up a different number of queues than the device has.
    #[error("Driver configured {got} queues, device has {want}")]
    QueueCount {
        /// Queues the device needs.
        want: usize,
        /// Queues handed over.
        got: usize,
    },
    /// The activation eventfd could not be signalled.
    #[error("Cannot signal device activation")]
    Signal(#[source] std::io::Error),
    /// Any other device-specific failure.
    #[error("{0}")]
    Device(String),
}

/// What a device receives when the driver sets DRIVER_OK.
pub struct ActivateContext {
    /// Guest memory the queues live in.
    pub mem: GuestMemoryMmap,
    /// The queues, configured and ready, in device order.
    pub queues: Vec<Queue>,
    /// One eventfd per queue, written by KVM when the guest notifies it.
    pub queue_evts: Vec<EventFd>,
    /// The device's interrupt.
    pub interrupt: Arc<Interrupt>,
    /// Features the driver accepted.
    pub acked_features: u64,
}

/// A virtio device as the transport sees it.
pub trait VirtioDevice: Send {
    /// The device type ID ([`device_type`]).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features offered to the driver (must include [`VIRTIO_F_VERSION_1`]).
    fn features(&self) -> u64;
    /// Reads the device-specific config space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific config space (most devices ignore this).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device with its queues.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Stops the device after a driver reset; returns false if the device
    /// cannot be reset (it then stays failed until the VM ends).
    fn reset(&mut self) -> bool {
        false
    }
    /// Called once the device was activated again from a snapshot: a
    /// device whose guest-side state refers to host state that did not
    /// survive (vsock connections) tells the driver here.
    fn restored(&mut self) {}
    /// The state of the queues the device took at activation (empty while
    /// not activated), for a snapshot. Only meaningful while the device is
    /// quiescent: no chain popped and not yet returned.
    fn queue_states(&self) -> Vec<QueueState> {
        Vec::new()
    }
    /// Where the device counts what the guest did wrong to it (the
    /// transport records its own findings there too).
    fn misbehaviour(&self) -> Arc<Misbehaviour>;
}

/// Reads `data.len()` bytes at `offset` of a config space held as bytes;
/// out-of-range reads return zeros rather than failing.
pub fn read_config_bytes(space: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = space.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}
