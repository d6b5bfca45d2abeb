//! What a guest did wrong to a device: counted for the VM's whole life,
//! logged within bounds.
//!
//! A hostile guest can send malformed chains, absurd lengths or packets for
//! nobody as fast as it can notify. Each one fails a request, never the VMM
//! (see the module above), but it should not pass unseen either, and a
//! warning per bad request would let the guest fill the host's disk through
//! the VMM's log. So the first [`FIRST_LOGGED`] are logged in full, then only
//! the 2^n-th, and the VM's end logs the totals ([`summary`]).

use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

/// Misbehaviour logged in full before only powers of two are.
pub const FIRST_LOGGED: u64 = 8;

/// A device's count of guest misbehaviour.
#[derive(Debug)]
pub struct Misbehaviour {
    device: String,
    count: AtomicU64,
}

impl Misbehaviour {
    /// A recorder for the device named `device` (as the log should say it).
    pub fn new(device: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            device: device.into(),
            count: AtomicU64::new(0),
        })
    }

    /// Counts one piece of misbehaviour; logs it if it is among the first
    /// or its number is a power of two.
    pub fn record(&self, what: impl Display) {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        if should_log(n) {
            tracing::warn!("{}: guest misbehaviour #{n}: {what}", self.device);
        }
    }

    /// How many were recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The device's name.
    pub fn device(&self) -> &str {
        &self.device
    }
}

fn should_log(n: u64) -> bool {
    n <= FIRST_LOGGED || n.is_power_of_two()
}

/// Records a driver whose available index is more than a queue ahead of
/// what the device used: `virtio_queue` then yields no chain at all (and
/// says so only through the `log` crate, which the VMM does not print), so
/// the device would serve nothing without a word. Called when a
/// notification found nothing to pop.
pub fn check_avail_index(queue: &Queue, mem: &GuestMemoryMmap, misbehaviour: &Misbehaviour) {
    if let Ok(avail) = queue.avail_idx(mem, Ordering::Acquire) {
        let ahead = avail.0.wrapping_sub(queue.next_avail());
        if ahead > queue.size() {
            misbehaviour.record(format_args!(
                "available index {ahead} ahead of the device in a queue of {}",
                queue.size()
            ));
        }
    }
}

/// One line for the VM's end, or None if the guest behaved:
/// `virtio-blk 12, vsock 3400`.
pub fn summary(recorders: &[Arc<Misbehaviour>]) -> Option<String> {
    let parts: Vec<String> = recorders
        .iter()
        .filter(|r| r.count() > 0)
        .map(|r| format!("{} {}", r.device(), r.count()))
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_logs_a_logarithmic_number_of_lines() {
        let logged = (1..=1_000_000u64).filter(|&n| should_log(n)).count();
        // 8 in full, then 16, 32, ... 524288: 16 more.
        assert_eq!(logged, 8 + 16);
    }

    #[test]
    fn counts_every_record_and_sums_up_devices_that_misbehaved() {
        let blk = Misbehaviour::new("virtio-blk");
        let vsock = Misbehaviour::new("vsock");
        let quiet = Misbehaviour::new("virtio-net");
        for _ in 0..1000 {
            blk.record("bad chain");
        }
        vsock.record("bad packet");
        assert_eq!(blk.count(), 1000);
        assert_eq!(
            summary(&[blk, quiet.clone(), vsock]).as_deref(),
            Some("virtio-blk 1000, vsock 1")
        );
        assert_eq!(summary(&[quiet]), None);
    }
}
