//! Guest physical memory: the layout hull's VMs use and its creation.
//!
//! Memory is anonymous, private and `MAP_NORESERVE`: the host pays only for
//! pages the guest touches. A restored VM maps its snapshot's memory file
//! private instead: pages it only reads stay shared with every other VM
//! restored from the same file (the host's page cache), pages it writes
//! are copied. RAM is split around the 32-bit hole where the
//! virtio-mmio windows, the IOAPIC and the local APIC live.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

/// Start of the GDT written for the PVH entry.
pub const BOOT_GDT_START: u64 = 0x500;
/// Start of the (empty) boot IDT.
pub const BOOT_IDT_START: u64 = 0x520;
/// Where the PVH `hvm_start_info` structure goes.
pub const PVH_INFO_START: u64 = 0x6000;
/// Where the PVH module list goes (the initramfs entry).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// Where the PVH memory map goes.
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line we accept (the x86 kernel takes 2 KiB by default).
pub const CMDLINE_MAX: usize = 2048;
/// Start of the EBDA, where the MP table lives; RAM below is usable.
pub const EBDA_START: u64 = 0x9fc00;
/// Everything from here up is usable RAM (the kernel loads above).
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole (virtio-mmio windows, IOAPIC, LAPIC).
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the hole: RAM resumes at 4 GiB.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// First virtio-mmio window.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;

/// Smallest guest we start: below this a Linux kernel cannot boot.
pub const MIN_MEM_MIB: u64 = 32;

/// Errors making guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is below what a kernel needs.
    #[error("Guest memory of {0} MiB is too small (minimum {MIN_MEM_MIB} MiB)")]
    TooSmall(u64),
    /// The mmap of guest memory failed.
    #[error("Cannot allocate guest memory")]
    Allocate(#[source] vm_memory::mmap::FromRangesError),
    /// KVM refused a memory slot.
    #[error("Cannot register guest memory with KVM")]
    Register(#[source] kvm_ioctls::Error),
    /// Mapping a snapshot's memory file failed.
    #[error("Cannot map snapshot memory")]
    MapFile(#[source] std::io::Error),
    /// Writing a snapshot's memory file failed.
    #[error("Cannot write snapshot memory")]
    Dump(#[source] std::io::Error),
}

/// The RAM ranges (start, size) for a guest of `mem_mib` MiB.
pub fn ram_ranges(mem_mib: u64) -> Result<Vec<(GuestAddress, usize)>, MemoryError> {
    if mem_mib < MIN_MEM_MIB {
        return Err(MemoryError::TooSmall(mem_mib));
    }
    let size = mem_mib << 20;
    if size <= MMIO_HOLE_START {
        return Ok(vec![(GuestAddress(0), size as usize)]);
    }
    Ok(vec![
        (GuestAddress(0), MMIO_HOLE_START as usize),
        (
            GuestAddress(MMIO_HOLE_END),
            (size - MMIO_HOLE_START) as usize,
        ),
    ])
}

/// Allocates guest memory and hands every region to KVM.
pub fn create(vm: &VmFd, mem_mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let mem = GuestMemoryMmap::from_ranges(&ram_ranges(mem_mib)?).map_err(MemoryError::Allocate)?;
    register(vm, &mem)?;
    Ok(mem)
}

/// Allocates guest memory that another process can map too (a memfd,
/// shared): what a vhost-user backend such as virtiofsd needs to reach the
/// guest's buffers. Still `MAP_NORESERVE`; the memfd grows as the guest
/// touches pages.
pub fn create_shared(vm: &VmFd, mem_mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let (ranges, total) = ranges_and_total(mem_mib)?;
    let memfd = guest_memfd(total)?;
    map_regions(vm, ranges, &memfd, libc::MAP_SHARED)
}

/// Like [`create_shared`], filled with the data of `file` (written by
/// [`dump`] for a guest of the same size). Only the file's data extents
/// are copied: its holes are zero pages the memfd has already.
pub fn create_shared_from_file(
    vm: &VmFd,
    mem_mib: u64,
    file: &std::fs::File,
) -> Result<GuestMemoryMmap, MemoryError> {
    let (ranges, total) = ranges_and_total(mem_mib)?;
    check_file_len(file, total)?;
    let memfd = guest_memfd(total)?;
    copy_data_extents(file, &memfd, total).map_err(MemoryError::MapFile)?;
    map_regions(vm, ranges, &memfd, libc::MAP_SHARED)
}

fn check_file_len(file: &std::fs::File, total: u64) -> Result<(), MemoryError> {
    let file_len = file.metadata().map_err(MemoryError::MapFile)?.len();
    if file_len != total {
        return Err(MemoryError::MapFile(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("memory file is {file_len} bytes, guest has {total}"),
        )));
    }
    Ok(())
}

/// Copies the data extents of `from` (`SEEK_DATA`/`SEEK_HOLE`) to the
/// same offsets of `to`.
fn copy_data_extents(from: &std::fs::File, to: &std::fs::File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let seek = |offset: u64, whence: libc::c_int| -> Option<u64> {
        // SAFETY: lseek on a descriptor we own; no memory is passed.
        let r = unsafe { libc::lseek(from.as_raw_fd(), offset as libc::off_t, whence) };
        (r >= 0).then_some(r as u64)
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0;
    while offset < len {
        // ENXIO: no data after `offset`.
        let Some(start) = seek(offset, libc::SEEK_DATA) else {
            break;
        };
        let end = seek(start, libc::SEEK_HOLE).unwrap_or(len).min(len);
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            from.read_exact_at(&mut buf[..n], at)?;
            to.write_all_at(&buf[..n], at)?;
            at += n as u64;
        }
        offset = end;
    }
    Ok(())
}

/// [`ram_ranges`] and the bytes they hold.
fn ranges_and_total(mem_mib: u64) -> Result<(Vec<(GuestAddress, usize)>, u64), MemoryError> {
    let ranges = ram_ranges(mem_mib)?;
    let total = ranges.iter().map(|(_, len)| *len as u64).sum();
    Ok((ranges, total))
}

/// An anonymous memory file of `len` bytes, closed on exec.
fn guest_memfd(len: u64) -> Result<std::fs::File, MemoryError> {
    use std::os::fd::FromRawFd;
    // SAFETY: the name is a NUL-terminated literal; the flags are valid.
    let fd = unsafe { libc::memfd_create(c"hull-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::MapFile(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.set_len(len).map_err(MemoryError::MapFile)?;
    Ok(file)
}

/// Maps `file` region after region (`flags`: private or shared) as guest
/// memory and hands it to KVM.
fn map_regions(
    vm: &VmFd,
    ranges: Vec<(GuestAddress, usize)>,
    file: &std::fs::File,
    flags: libc::c_int,
) -> Result<GuestMemoryMmap, MemoryError> {
    let mut regions = Vec::with_capacity(ranges.len());
    let mut offset = 0u64;
    for (start, len) in ranges {
        let fd = file.try_clone().map_err(MemoryError::MapFile)?;
        let map = MmapRegionBuilder::new(len)
            .with_file_offset(FileOffset::new(fd, offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(flags | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| MemoryError::MapFile(std::io::Error::other(e.to_string())))?;
        let region = GuestRegionMmap::new(map, start)
            .ok_or_else(|| MemoryError::MapFile(std::io::Error::other("guest region overflows")))?;
        regions.push(region);
        offset += len as u64;
    }
    let mem = GuestMemoryMmap::from_regions(regions)
        .map_err(|e| MemoryError::MapFile(std::io::Error::other(e.to_string())))?;
    register(vm, &mem)?;
    Ok(mem)
}

/// Maps `file` (written by [`dump`] for a guest of the same size) private
/// and copy-on-write as guest memory and hands it to KVM.
pub fn create_from_file(
    vm: &VmFd,
    mem_mib: u64,
    file: &std::fs::File,
) -> Result<GuestMemoryMmap, MemoryError> {
    let (ranges, total) = ranges_and_total(mem_mib)?;
    check_file_len(file, total)?;
    map_regions(vm, ranges, file, libc::MAP_PRIVATE)
}

/// Writes guest memory, regions back to back, to `file`; pages that are all
/// zero are left as holes so the file costs only what the guest used.
pub fn dump(mem: &GuestMemoryMmap, file: &std::fs::File) -> Result<(), MemoryError> {
    use std::os::unix::fs::FileExt;
    const PAGE: usize = 4096;
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    file.set_len(total).map_err(MemoryError::Dump)?;
    let mut offset = 0u64;
    for region in mem.iter() {
        let len = region.len() as usize;
        // SAFETY: the region is a live mapping of `len` bytes owned by
        // `mem`; the VM is paused, so nothing writes it while we read.
        let bytes = unsafe { std::slice::from_raw_parts(region.as_ptr(), len) };
        for (i, page) in bytes.chunks(PAGE).enumerate() {
            if page.iter().any(|&b| b != 0) {
                file.write_all_at(page, offset + (i * PAGE) as u64)
                    .map_err(MemoryError::Dump)?;
            }
        }
        offset += len as u64;
    }
    Ok(())
}

fn register(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let desc = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem` of exactly
        // `memory_size` bytes, and `mem` outlives the VM: it is kept in the
        // same `Vm` value and dropped after the VM fd.
        unsafe { vm.set_user_memory_region(desc) }.map_err(MemoryError::Register)?;
    }
    Ok(())
}

/// The E820-style map the guest sees: (start, size, is_ram).
pub fn e820_map(mem: &GuestMemoryMmap) -> Vec<(u64, u64, bool)> {
    let mut map = vec![(0, EBDA_START, true)];
    for region in mem.iter() {
        let start = region.start_addr().0.max(HIMEM_START);
        let end = region.start_addr().0 + region.len();
        if end > start {
            map.push((start, end - start, true));
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guests_are_one_range_and_large_ones_skip_the_hole() {
        assert_eq!(ram_ranges(128).unwrap(), vec![(GuestAddress(0), 128 << 20)]);
        let big = ram_ranges(4096).unwrap();
        assert_eq!(big.len(), 2);
        assert_eq!(big[0], (GuestAddress(0), MMIO_HOLE_START as usize));
        assert_eq!(big[1].0, GuestAddress(MMIO_HOLE_END));
        assert_eq!(big[0].1 + big[1].1, 4096 << 20);
        assert!(matches!(ram_ranges(16), Err(MemoryError::TooSmall(16))));
    }

    #[test]
    fn dumped_memory_maps_back_private_and_sparse() {
        use vm_memory::Bytes;
        let kvm = kvm_ioctls::Kvm::new();
        let Ok(kvm) = kvm else {
            panic!("this test needs /dev/kvm, which this machine lacks");
        };
        let vm = kvm.create_vm().unwrap();
        let mem = create(&vm, 32).unwrap();
        mem.write_obj(0xfeed_u64, GuestAddress(0x5000)).unwrap();
        let dir = tempfile_dir();
        let path = dir.join("mem");
        let file = std::fs::File::create(&path).unwrap();
        dump(&mem, &file).unwrap();
        drop(file);
        // One non-zero page: the file is sparse.
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 32 << 20);
        assert!(meta.blocks() * 512 <= 64 * 1024, "{} blocks", meta.blocks());
        let vm2 = kvm.create_vm().unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let back = create_from_file(&vm2, 32, &file).unwrap();
        assert_eq!(back.read_obj::<u64>(GuestAddress(0x5000)).unwrap(), 0xfeed);
        // Writes are private: the file keeps its contents.
        back.write_obj(1u64, GuestAddress(0x5000)).unwrap();
        let again = create_from_file(&kvm.create_vm().unwrap(), 32, &file).unwrap();
        assert_eq!(again.read_obj::<u64>(GuestAddress(0x5000)).unwrap(), 0xfeed);
        assert!(create_from_file(&kvm.create_vm().unwrap(), 64, &file).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn dumped_memory_restores_into_shared_memory_another_mapping_sees() {
        use std::os::fd::AsRawFd;
        use vm_memory::Bytes;
        let kvm = kvm_ioctls::Kvm::new().expect("this test needs /dev/kvm");
        let mem = create(&kvm.create_vm().unwrap(), 32).unwrap();
        mem.write_obj(0xfeed_u64, GuestAddress(0x5000)).unwrap();
        mem.write_obj(0xbeef_u64, GuestAddress((32 << 20) - 8))
            .unwrap();
        // Its own directory: the test beside it removes the shared one.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let file = std::fs::File::create(dir.join("mem")).unwrap();
        dump(&mem, &file).unwrap();
        let file = std::fs::File::open(dir.join("mem")).unwrap();
        let back = create_shared_from_file(&kvm.create_vm().unwrap(), 32, &file).unwrap();
        assert_eq!(back.read_obj::<u64>(GuestAddress(0x5000)).unwrap(), 0xfeed);
        assert_eq!(
            back.read_obj::<u64>(GuestAddress((32 << 20) - 8)).unwrap(),
            0xbeef
        );
        assert_eq!(back.read_obj::<u64>(GuestAddress(0x9000)).unwrap(), 0);
        // A write through the guest mapping is seen through the memfd, as
        // virtiofsd would see it.
        back.write_obj(7u64, GuestAddress(0x5000)).unwrap();
        let region = back.iter().next().unwrap();
        let fd = region.file_offset().unwrap().file().as_raw_fd();
        let memfd = std::fs::File::open(format!("/proc/self/fd/{fd}")).unwrap();
        let mut word = [0u8; 8];
        std::os::unix::fs::FileExt::read_exact_at(&memfd, &mut word, 0x5000).unwrap();
        assert_eq!(u64::from_le_bytes(word), 7);
        drop(tmp);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("hull-mem-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn e820_reserves_the_ebda_and_legacy_hole() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&ram_ranges(64).unwrap()).unwrap();
        assert_eq!(
            e820_map(&mem),
            vec![
                (0, EBDA_START, true),
                (HIMEM_START, (64 << 20) - HIMEM_START, true)
            ]
        );
    }
}
