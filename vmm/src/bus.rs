//! Address-range bus: dispatches port-I/O and MMIO accesses to devices.
//!
//! Both the PIO and the MMIO space use the same [`Bus`]: a sorted map from
//! the start of a range to the device that owns it. Accesses that hit no
//! device are answered like an empty ISA bus (reads float high).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::lock;

/// A device reachable through the bus.
pub trait BusDevice: Send {
    /// Guest reads `data.len()` bytes at `offset` from the device's base.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest writes `data` at `offset` from the device's base.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors of bus registration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps a range already registered.
    #[error("Bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Start of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// Zero-length ranges or ranges wrapping the address space.
    #[error("Bus range {base:#x}+{len:#x} is invalid")]
    InvalidRange {
        /// Start of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
}

/// Shared handle to a device on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

struct Entry {
    len: u64,
    device: SharedDevice,
}

/// A set of non-overlapping address ranges, each owned by one device.
#[derive(Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<_> = self.ranges.iter().map(|(b, e)| (*b, e.len)).collect();
        f.debug_struct("Bus").field("ranges", &ranges).finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives `[base, base+len)` to `device`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        // The closest range starting at or before `end - 1` is the only one
        // that can overlap, because ranges never overlap each other.
        if let Some((b, e)) = self.ranges.range(..end).next_back() {
            if b + e.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// The device owning `addr` and the offset of `addr` within its range.
    fn resolve(&self, addr: u64, size: usize) -> Option<(&SharedDevice, u64)> {
        let (base, entry) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        // An access straddling the end of a range belongs to no device.
        if offset.checked_add(size as u64)? > entry.len {
            return None;
        }
        Some((&entry.device, offset))
    }

    /// Dispatches a read; returns false when no device owns `addr` (the
    /// buffer is then filled with 0xff, what an empty bus returns).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((dev, offset)) => {
                lock(dev).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns false when no device owns `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((dev, offset)) => {
                lock(dev).write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_with_offsets() {
        let mut bus = Bus::new();
        let a = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        let mut buf = [0u8; 1];
        assert!(bus.read(0x3fb, &mut buf));
        assert_eq!(buf, [3]);
        assert!(bus.write(0x3f8, &[0x41]));
        assert_eq!(a.lock().unwrap().writes, vec![(0, vec![0x41])]);
    }

    #[test]
    fn unowned_reads_float_high_and_writes_are_dropped() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x60, 1)
            .unwrap();
        let mut buf = [0u8; 2];
        assert!(!bus.read(0x61, &mut buf));
        assert_eq!(buf, [0xff, 0xff]);
        assert!(!bus.write(0x5f, &[1]));
        // A 2-byte access at the last byte of a 1-byte range straddles it.
        assert!(!bus.read(0x60, &mut buf));
    }

    #[test]
    fn rejects_overlaps_and_empty_ranges() {
        let mut bus = Bus::new();
        let d = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(d.clone(), 0x1000, 0x100).unwrap();
        assert_eq!(
            bus.insert(d.clone(), 0x10ff, 1),
            Err(BusError::Overlap {
                base: 0x10ff,
                len: 1
            })
        );
        assert_eq!(
            bus.insert(d.clone(), 0xf00, 0x101),
            Err(BusError::Overlap {
                base: 0xf00,
                len: 0x101
            })
        );
        assert!(bus.insert(d.clone(), 0x1100, 1).is_ok());
        assert!(bus.insert(d.clone(), 0xeff, 0x101).is_ok());
        assert_eq!(
            bus.insert(d.clone(), 0x5000, 0),
            Err(BusError::InvalidRange {
                base: 0x5000,
                len: 0
            })
        );
        assert!(bus.insert(d, u64::MAX, 2).is_err());
    }
}
