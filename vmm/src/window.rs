//! Memory windows: host files the guest sees as ranges of physical memory
//! that are not RAM.
//!
//! On PVM hosts every byte the guest kernel copies costs ~1000x its native
//! price, so moving bulk data through virtio queues is slow however the
//! device is written. A window takes the guest kernel out of the data path:
//! the file is mapped shared into the VMM and handed to KVM as its own
//! memory slot, and guest user space maps the range once (through
//! `/dev/mem`, which `STRICT_DEVMEM` allows for non-RAM ranges only) and
//! then reads or writes the host file's page cache at native speed.
//!
//! Windows are placed above RAM, each aligned to [`WINDOW_ALIGN`], and are
//! never part of a snapshot: a restored VM gets the windows of its new
//! config.

use std::fs::File;
use std::path::PathBuf;

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use vm_memory::mmap::{MmapRegion, MmapRegionBuilder};
use vm_memory::FileOffset;

use crate::memory::{self, MMIO_HOLE_END};

/// Alignment of every window's guest address (a huge-page boundary).
pub const WINDOW_ALIGN: u64 = 2 << 20;
/// Where the windows must end: 64 GiB, the guest-physical space every
/// x86-64 CPU addresses (36 bits at least).
pub const WINDOWS_END: u64 = 1 << 36;
/// Most windows a VM takes (one KVM memory slot each).
pub const MAX_WINDOWS: usize = 256;
/// The first KVM slot used for windows; RAM uses the slots below.
const FIRST_SLOT: u32 = 16;
const PAGE: u64 = 4096;

/// Errors setting up windows.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    /// The backing file cannot be opened or mapped.
    #[error("Cannot map window file {0}")]
    Map(PathBuf, #[source] std::io::Error),
    /// An empty file cannot be a window.
    #[error("Window file {0} is empty")]
    Empty(PathBuf),
    /// More windows than slots set aside for them.
    #[error("{0} memory windows asked for; at most {MAX_WINDOWS}")]
    TooMany(usize),
    /// The windows do not fit below [`WINDOWS_END`].
    #[error("Memory windows of {0} MiB do not fit in the guest's physical address space")]
    TooLarge(u64),
    /// KVM refused the memory slot.
    #[error("Cannot register window {0} with KVM")]
    Register(PathBuf, #[source] kvm_ioctls::Error),
}

/// A host file to show the guest as physical memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowConfig {
    /// The backing file; the window covers its length rounded up to a page
    /// (bytes past the end read as zero).
    pub path: PathBuf,
    /// Guest writes reach the file; otherwise the slot is read-only.
    pub writable: bool,
}

/// Where a window landed in guest-physical memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowPlace {
    /// Guest-physical start.
    pub guest_addr: u64,
    /// Length in bytes (a multiple of the page size).
    pub len: u64,
}

/// The guest-physical places of windows of these file lengths in a guest
/// of `mem_mib` MiB: above RAM (and above the 32-bit hole), in order.
pub fn places(mem_mib: u64, lens: &[u64]) -> Vec<WindowPlace> {
    let ram_end = memory::ram_ranges(mem_mib)
        .ok()
        .and_then(|r| r.last().map(|(start, len)| start.0 + *len as u64))
        .unwrap_or(0);
    let mut next = ram_end.max(MMIO_HOLE_END).next_multiple_of(WINDOW_ALIGN);
    lens.iter()
        .map(|len| {
            let len = len.next_multiple_of(PAGE);
            let place = WindowPlace {
                guest_addr: next,
                len,
            };
            next = (next + len).next_multiple_of(WINDOW_ALIGN);
            place
        })
        .collect()
}

/// The windows of one VM: their mappings live as long as the VM.
#[derive(Debug, Default)]
pub struct Windows {
    maps: Vec<MmapRegion>,
    places: Vec<WindowPlace>,
}

impl Windows {
    /// Maps every window file and registers it with KVM at its place.
    pub fn attach(vm: &VmFd, mem_mib: u64, configs: &[WindowConfig]) -> Result<Self, WindowError> {
        if configs.len() > MAX_WINDOWS {
            return Err(WindowError::TooMany(configs.len()));
        }
        let files = configs
            .iter()
            .map(|c| open(c).map(|(f, len)| (c, f, len)))
            .collect::<Result<Vec<_>, _>>()?;
        let lens: Vec<u64> = files.iter().map(|(_, _, len)| *len).collect();
        let places = places(mem_mib, &lens);
        if places
            .last()
            .is_some_and(|p| p.guest_addr + p.len > WINDOWS_END)
        {
            return Err(WindowError::TooLarge(lens.iter().sum::<u64>() >> 20));
        }
        let mut maps = Vec::with_capacity(files.len());
        for (i, ((config, file, _), place)) in files.into_iter().zip(&places).enumerate() {
            let map = map(config, file, place.len)?;
            register(vm, FIRST_SLOT + i as u32, config, &map, place)?;
            maps.push(map);
        }
        Ok(Self { maps, places })
    }

    /// Where each window is, in config order.
    pub fn places(&self) -> &[WindowPlace] {
        &self.places
    }

    /// How many windows are mapped.
    pub fn len(&self) -> usize {
        self.maps.len()
    }

    /// True when the VM has no windows.
    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }
}

fn open(config: &WindowConfig) -> Result<(File, u64), WindowError> {
    let err = |e| WindowError::Map(config.path.clone(), e);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(config.writable)
        .open(&config.path)
        .map_err(err)?;
    let len = file.metadata().map_err(err)?.len();
    if len == 0 {
        return Err(WindowError::Empty(config.path.clone()));
    }
    Ok((file, len))
}

fn map(config: &WindowConfig, file: File, len: u64) -> Result<MmapRegion, WindowError> {
    let prot = if config.writable {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    };
    // Shared: guest writes go to the file's page cache, and a read-only
    // window costs no copy of the file.
    MmapRegionBuilder::new(len as usize)
        .with_file_offset(FileOffset::new(file, 0))
        .with_mmap_prot(prot)
        .with_mmap_flags(libc::MAP_SHARED | libc::MAP_NORESERVE)
        .build()
        .map_err(|e| WindowError::Map(config.path.clone(), std::io::Error::other(e.to_string())))
}

fn register(
    vm: &VmFd,
    slot: u32,
    config: &WindowConfig,
    map: &MmapRegion,
    place: &WindowPlace,
) -> Result<(), WindowError> {
    let desc = kvm_userspace_memory_region {
        slot,
        flags: if config.writable { 0 } else { KVM_MEM_READONLY },
        guest_phys_addr: place.guest_addr,
        memory_size: place.len,
        userspace_addr: map.as_ptr() as u64,
    };
    // SAFETY: `map` is a live mapping of exactly `place.len` bytes owned by
    // the `Windows` value that the `Vm` keeps, declared after the VM fd so
    // it is dropped after it; a read-only mapping is registered read-only.
    unsafe { vm.set_user_memory_region(desc) }
        .map_err(|e| WindowError::Register(config.path.clone(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_sit_above_ram_and_the_hole_aligned_and_apart() {
        let p = places(256, &[1, 5000, 3 << 30]);
        assert_eq!(
            p[0],
            WindowPlace {
                guest_addr: 4 << 30,
                len: 4096
            }
        );
        assert_eq!(
            p[1],
            WindowPlace {
                guest_addr: (4 << 30) + WINDOW_ALIGN,
                len: 8192
            }
        );
        assert_eq!(
            p[2],
            WindowPlace {
                guest_addr: (4 << 30) + 2 * WINDOW_ALIGN,
                len: 3 << 30
            }
        );
        // A guest with RAM above 4 GiB: windows start after it.
        let big = places(6144, &[4096]);
        assert!(big[0].guest_addr >= (4 << 30) + (6144u64 << 20) - memory::MMIO_HOLE_START);
        assert_eq!(big[0].guest_addr % WINDOW_ALIGN, 0);
    }

    #[test]
    fn windows_are_the_files_themselves_and_empty_files_are_refused() {
        let kvm = kvm_ioctls::Kvm::new().expect("this test needs /dev/kvm");
        let vm = kvm.create_vm().unwrap();
        let dir = std::env::temp_dir().join(format!("hull-window-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ro = dir.join("ro");
        let rw = dir.join("rw");
        std::fs::write(&ro, b"layer bytes").unwrap();
        std::fs::write(&rw, vec![0u8; 8192]).unwrap();
        std::fs::write(dir.join("empty"), b"").unwrap();
        let configs = [
            WindowConfig {
                path: ro,
                writable: false,
            },
            WindowConfig {
                path: rw.clone(),
                writable: true,
            },
        ];
        let w = Windows::attach(&vm, 64, &configs).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(w.places()[0].len, 4096);
        // The mapping is the file: a write through it lands in the file.
        // SAFETY: the second window is a live writable mapping of 8192 bytes.
        unsafe { w.maps[1].as_ptr().add(100).write(0x5a) };
        assert_eq!(std::fs::read(&rw).unwrap()[100], 0x5a);
        let empty = [WindowConfig {
            path: dir.join("empty"),
            writable: false,
        }];
        assert!(matches!(
            Windows::attach(&kvm.create_vm().unwrap(), 64, &empty),
            Err(WindowError::Empty(_))
        ));
        // A sparse 61 GiB file: above 4 GiB it would end past 64 GiB.
        let huge = dir.join("huge");
        std::fs::File::create(&huge)
            .unwrap()
            .set_len(61 << 30)
            .unwrap();
        let huge = [WindowConfig {
            path: huge,
            writable: false,
        }];
        assert!(matches!(
            Windows::attach(&kvm.create_vm().unwrap(), 64, &huge),
            Err(WindowError::TooLarge(_))
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
