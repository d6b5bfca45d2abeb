//! The memory-op doorbell: the guest kernel asks the VMM to copy or fill
//! guest-physical memory for it.
//!
//! Why: on KVM-PVM every instruction of guest kernel code is emulated, so
//! the kernel's bulk loops (`clear_page`, `copy_page`, `copy_to_user`...)
//! cost milliseconds per page, while the VMM has all of guest RAM mapped and
//! copies at native speed. hull's guest kernel (with `hull_pvm`) writes the
//! guest-physical address of a descriptor to one I/O port; the vCPU thread
//! that takes the exit performs the whole operation before the guest's
//! `outl` completes and writes a status back into the descriptor.
//!
//! Protocol (all little-endian; see docs/guest-kernel.md):
//!
//! - `outl` to [`MEMOPS_PORT`] of the descriptor's page frame number
//!   (guest-physical address >> 12): descriptors are page-aligned and fit in
//!   one page. Any other access width or offset is ignored.
//! - Descriptor header (16 bytes): `u16 op`, `u16 count`, `u32 status`
//!   (written by the VMM), `u32 fill` (the byte value for [`OP_FILL`] in
//!   its low 8 bits), `u32 reserved` (must be 0), then `count` segments of
//!   `u64 dst, u64 src, u64 len` (24 bytes each; `src` unused by fills).
//! - Every segment is checked before anything is written: each range must
//!   lie in one guest RAM region, a copy's source and destination must not
//!   overlap, the sum of lengths is capped. A rejected descriptor changes
//!   nothing but its status, so the guest falls back to doing the work
//!   itself. A hostile guest can fail its own operations, never the VMM.
//!
//! The device is stateless (nothing to snapshot): everything it needs is in
//! the descriptor, and the guest keeps its descriptors in its own memory.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::bus::BusDevice;

/// The doorbell's I/O port (4 bytes wide; unused by PC legacy devices).
pub const MEMOPS_PORT: u64 = 0x0e10;
/// The port range the device occupies.
pub const MEMOPS_LEN: u64 = 4;

/// Does nothing; lets the guest probe for the device.
pub const OP_NOP: u16 = 0;
/// Copies `len` bytes from `src` to `dst`, segment after segment.
pub const OP_COPY: u16 = 1;
/// Fills `len` bytes at `dst` with the descriptor's fill byte.
pub const OP_FILL: u16 = 2;

/// Size of the descriptor header.
pub const HEADER_LEN: u64 = 16;
/// Size of one segment.
pub const SEGMENT_LEN: u64 = 24;
/// Most segments a descriptor holds (it must fit in its 4 KiB page).
pub const MAX_SEGMENTS: u16 = ((4096 - HEADER_LEN) / SEGMENT_LEN) as u16;
/// Most bytes one descriptor may move: bounds the time a vCPU thread spends
/// in one exit (64 MiB is a few milliseconds of host memcpy).
pub const MAX_TOTAL: u64 = 64 << 20;

const STATUS_OFFSET: u64 = 4;

/// Why an operation was refused; the numeric value is what the guest reads
/// in the descriptor's status field (0 is success).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[repr(u32)]
pub enum MemOpError {
    /// The operation code is unknown.
    #[error("Unknown memory operation")]
    BadOp = 1,
    /// The segment count is 0 for a copy or fill, or above [`MAX_SEGMENTS`].
    #[error("Bad segment count")]
    BadCount = 2,
    /// A range is not inside one guest RAM region (or wraps around).
    #[error("Range outside guest RAM")]
    OutOfRange = 3,
    /// A copy's source and destination overlap.
    #[error("Overlapping copy")]
    Overlap = 4,
    /// The segments add up to more than [`MAX_TOTAL`] bytes.
    #[error("Operation too large")]
    TooLarge = 5,
    /// The reserved header field is not 0.
    #[error("Reserved field set")]
    Reserved = 6,
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    dst: u64,
    src: u64,
    len: u64,
}

/// The doorbell device on the port-I/O bus.
#[derive(Debug)]
pub struct MemOps {
    mem: GuestMemoryMmap,
}

impl MemOps {
    /// A doorbell operating on `mem`.
    pub fn new(mem: GuestMemoryMmap) -> Self {
        Self { mem }
    }
}

impl BusDevice for MemOps {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Nothing to read: the status travels in the descriptor. Reads
        // answer all-ones like an empty port.
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(pfn) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if offset != 0 {
            return;
        }
        let desc = GuestAddress(u64::from(u32::from_le_bytes(pfn)) << 12);
        if let Err(e) = ring(&self.mem, desc) {
            tracing::trace!("memops: descriptor at {:#x} refused: {e}", desc.0);
        }
    }
}

/// Serves the descriptor at `desc`: performs the operation and writes its
/// status (0 or the error's code) into the descriptor. A descriptor that is
/// itself outside guest RAM gets no status at all.
pub fn ring(mem: &GuestMemoryMmap, desc: GuestAddress) -> Result<(), MemOpError> {
    let result = execute(mem, desc);
    let status = match result {
        Ok(()) => 0,
        Err(e) => e as u32,
    };
    if let Some(at) = desc.0.checked_add(STATUS_OFFSET) {
        // A descriptor outside RAM has nowhere to put a status: the guest
        // then reads its own "pending" value and falls back.
        let _ = mem.write_obj(status.to_le(), GuestAddress(at));
    }
    result
}

fn execute(mem: &GuestMemoryMmap, desc: GuestAddress) -> Result<(), MemOpError> {
    let header: [u8; HEADER_LEN as usize] =
        mem.read_obj(desc).map_err(|_| MemOpError::OutOfRange)?;
    let op = u16::from_le_bytes([header[0], header[1]]);
    let count = u16::from_le_bytes([header[2], header[3]]);
    let fill = header[8];
    if header[12..16] != [0; 4] {
        return Err(MemOpError::Reserved);
    }
    match op {
        OP_NOP => return Ok(()),
        OP_COPY | OP_FILL => {}
        _ => return Err(MemOpError::BadOp),
    }
    if count == 0 || count > MAX_SEGMENTS {
        return Err(MemOpError::BadCount);
    }
    // Copy the segments out of guest memory first: another vCPU may change
    // the descriptor while we work, and what we validated must be what we do.
    let mut raw = [0u8; (MAX_SEGMENTS as usize) * SEGMENT_LEN as usize];
    let raw = &mut raw[..usize::from(count) * SEGMENT_LEN as usize];
    mem.read_slice(raw, GuestAddress(desc.0 + HEADER_LEN))
        .map_err(|_| MemOpError::OutOfRange)?;
    let segments: Vec<Segment> = raw
        .chunks_exact(SEGMENT_LEN as usize)
        .map(|c| {
            let word = |i: usize| u64::from_le_bytes(c[i * 8..i * 8 + 8].try_into().unwrap());
            Segment {
                dst: word(0),
                src: word(1),
                len: word(2),
            }
        })
        .collect();

    let mut total: u64 = 0;
    let mut plan = Vec::with_capacity(segments.len());
    for seg in &segments {
        total = total.saturating_add(seg.len);
        if total > MAX_TOTAL {
            return Err(MemOpError::TooLarge);
        }
        let dst = host_range(mem, seg.dst, seg.len)?;
        let src = if op == OP_COPY {
            let src = host_range(mem, seg.src, seg.len)?;
            if seg.len > 0 && seg.dst < seg.src + seg.len && seg.src < seg.dst + seg.len {
                return Err(MemOpError::Overlap);
            }
            src
        } else {
            std::ptr::null_mut()
        };
        plan.push((dst, src, seg.len as usize));
    }
    for (dst, src, len) in plan {
        if op == OP_COPY {
            // SAFETY: `host_range` checked that both ranges lie inside one
            // mapped guest RAM region each, which stays mapped as long as
            // `mem` lives, and the check above that they do not overlap.
            // Guest memory may change under us (other vCPUs, devices): like
            // a DMA engine, we copy whatever bytes are there.
            unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
        } else {
            // SAFETY: `host_range` checked that the range lies inside one
            // mapped guest RAM region, which outlives this call.
            unsafe { std::ptr::write_bytes(dst, fill, len) };
        }
    }
    Ok(())
}

/// The host address of guest range `[addr, addr + len)`, which must lie in
/// one RAM region.
fn host_range(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Result<*mut u8, MemOpError> {
    let end = addr.checked_add(len).ok_or(MemOpError::OutOfRange)?;
    let len = usize::try_from(len).map_err(|_| MemOpError::OutOfRange)?;
    let region = mem
        .find_region(GuestAddress(addr))
        .ok_or(MemOpError::OutOfRange)?;
    let region_end = region.start_addr().0 + region.len();
    if end > region_end {
        return Err(MemOpError::OutOfRange);
    }
    let slice = mem
        .get_slice(GuestAddress(addr), len)
        .map_err(|_| MemOpError::OutOfRange)?;
    Ok(slice.ptr_guard_mut().as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: usize = 0x10_0000;

    /// Two regions with a gap, like RAM around the MMIO hole.
    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM), (GuestAddress(0x20_0000), RAM)])
            .unwrap()
    }

    fn write_desc(mem: &GuestMemoryMmap, at: u64, op: u16, fill: u8, segs: &[(u64, u64, u64)]) {
        let mut d = Vec::new();
        d.extend_from_slice(&op.to_le_bytes());
        d.extend_from_slice(&(segs.len() as u16).to_le_bytes());
        d.extend_from_slice(&0xffff_ffffu32.to_le_bytes());
        d.extend_from_slice(&u32::from(fill).to_le_bytes());
        d.extend_from_slice(&0u32.to_le_bytes());
        for (dst, src, len) in segs {
            for w in [dst, src, len] {
                d.extend_from_slice(&w.to_le_bytes());
            }
        }
        mem.write_slice(&d, GuestAddress(at)).unwrap();
    }

    fn status(mem: &GuestMemoryMmap, at: u64) -> u32 {
        mem.read_obj::<u32>(GuestAddress(at + 4)).unwrap()
    }

    fn bytes(mem: &GuestMemoryMmap, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }

    /// Rings the doorbell through the bus interface, as a vCPU exit does.
    fn doorbell(dev: &mut MemOps, desc: u64) {
        dev.write(0, &((desc >> 12) as u32).to_le_bytes());
    }

    #[test]
    fn copies_and_fills_segments_and_reports_success() {
        let mem = memory();
        let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
        mem.write_slice(&pattern, GuestAddress(0x1_0000)).unwrap();
        let mut dev = MemOps::new(mem.clone());
        // Two segments, the second in the other region.
        write_desc(
            &mem,
            0x3000,
            OP_COPY,
            0,
            &[(0x4_0000, 0x1_0000, 4096), (0x20_1000, 0x1_1000, 4096)],
        );
        doorbell(&mut dev, 0x3000);
        assert_eq!(status(&mem, 0x3000), 0);
        assert_eq!(bytes(&mem, 0x4_0000, 4096), pattern[..4096]);
        assert_eq!(bytes(&mem, 0x20_1000, 4096), pattern[4096..]);

        write_desc(&mem, 0x3000, OP_FILL, 0xa5, &[(0x4_0010, 0, 100)]);
        doorbell(&mut dev, 0x3000);
        assert_eq!(status(&mem, 0x3000), 0);
        assert_eq!(bytes(&mem, 0x4_0000, 16), pattern[..16]);
        assert_eq!(bytes(&mem, 0x4_0010, 100), vec![0xa5; 100]);
        assert_eq!(bytes(&mem, 0x4_0074, 4), pattern[0x74..0x78]);

        write_desc(&mem, 0x3000, OP_NOP, 0, &[]);
        doorbell(&mut dev, 0x3000);
        assert_eq!(status(&mem, 0x3000), 0);
    }

    #[test]
    fn malformed_descriptors_fail_and_change_nothing() {
        let mem = memory();
        mem.write_slice(&[0x11; 4096], GuestAddress(0x1_0000))
            .unwrap();
        mem.write_slice(&[0x22; 4096], GuestAddress(0x4_0000))
            .unwrap();
        let end = RAM as u64;
        type Case = (u16, Vec<(u64, u64, u64)>, MemOpError);
        let cases: Vec<Case> = vec![
            (7, vec![(0x4_0000, 0x1_0000, 16)], MemOpError::BadOp),
            (OP_COPY, vec![], MemOpError::BadCount),
            // Destination past the end of RAM, in the gap, straddling the
            // end of a region, wrapping around.
            (
                OP_COPY,
                vec![(0x4_0000, 0x1_0000, 16), (end - 8, 0x1_0000, 16)],
                MemOpError::OutOfRange,
            ),
            (
                OP_COPY,
                vec![(end + 0x1000, 0x1_0000, 16)],
                MemOpError::OutOfRange,
            ),
            (OP_FILL, vec![(u64::MAX - 4, 0, 16)], MemOpError::OutOfRange),
            (
                OP_COPY,
                vec![(0x4_0000, u64::MAX, 2)],
                MemOpError::OutOfRange,
            ),
            (OP_FILL, vec![(0x4_0000, 0, u64::MAX)], MemOpError::TooLarge),
            // Each segment valid, together above the cap.
            (
                OP_FILL,
                vec![(0x4_0000, 0, 0x8_0000); 129],
                MemOpError::TooLarge,
            ),
            (
                OP_COPY,
                vec![(0x4_0000, 0x4_0800, 4096)],
                MemOpError::Overlap,
            ),
            (
                OP_COPY,
                vec![(0x4_0800, 0x4_0000, 4096)],
                MemOpError::Overlap,
            ),
        ];
        for (op, segs, want) in cases {
            write_desc(&mem, 0x3000, op, 0, &segs);
            assert_eq!(
                ring(&mem, GuestAddress(0x3000)),
                Err(want),
                "{op} {segs:x?}"
            );
            assert_eq!(status(&mem, 0x3000), want as u32);
            assert_eq!(bytes(&mem, 0x4_0000, 4096), vec![0x22; 4096], "{segs:x?}");
        }

        // Too many segments: the count alone is refused.
        write_desc(&mem, 0x3000, OP_FILL, 0, &[(0x4_0000, 0, 1)]);
        mem.write_obj((MAX_SEGMENTS + 1).to_le(), GuestAddress(0x3002))
            .unwrap();
        assert_eq!(ring(&mem, GuestAddress(0x3000)), Err(MemOpError::BadCount));
        // The reserved word must be 0.
        write_desc(&mem, 0x3000, OP_FILL, 0, &[(0x4_0000, 0, 1)]);
        mem.write_obj(1u32, GuestAddress(0x300c)).unwrap();
        assert_eq!(ring(&mem, GuestAddress(0x3000)), Err(MemOpError::Reserved));
        assert_eq!(bytes(&mem, 0x4_0000, 4096), vec![0x22; 4096]);
    }

    #[test]
    fn descriptor_outside_ram_and_odd_accesses_are_ignored() {
        let mem = memory();
        let mut dev = MemOps::new(mem.clone());
        // The descriptor page in the gap: nothing to read, nothing written.
        assert_eq!(
            ring(&mem, GuestAddress(0x18_0000)),
            Err(MemOpError::OutOfRange)
        );
        doorbell(&mut dev, 0xffff_f000_u64 << 12);
        // A descriptor at the very end of RAM whose segments would run past it.
        let last = RAM as u64 - HEADER_LEN;
        write_desc(&mem, last, OP_FILL, 0, &[]);
        mem.write_obj(1u16.to_le(), GuestAddress(last + 2)).unwrap();
        assert_eq!(ring(&mem, GuestAddress(last)), Err(MemOpError::OutOfRange));
        assert_eq!(status(&mem, last), MemOpError::OutOfRange as u32);
        // Wrong widths and offsets do nothing.
        write_desc(&mem, 0x3000, OP_FILL, 0x33, &[(0x4_0000, 0, 8)]);
        dev.write(0, &[3]);
        dev.write(0, &[0x3, 0, 0, 0, 0, 0, 0, 0]);
        dev.write(1, &[3, 0, 0]);
        assert_eq!(status(&mem, 0x3000), 0xffff_ffff);
        assert_eq!(bytes(&mem, 0x4_0000, 8), vec![0; 8]);
        let mut r = [0u8; 4];
        dev.read(0, &mut r);
        assert_eq!(r, [0xff; 4]);
    }

    /// Guest RAM as bytes, both regions, for before/after comparisons.
    fn all_bytes(mem: &GuestMemoryMmap) -> Vec<u8> {
        let mut v = bytes(mem, 0, RAM);
        v.extend(bytes(mem, 0x20_0000, RAM));
        v
    }

    /// A fixed-seed xorshift generator: failures reproduce.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// An address a hostile guest might try: near region edges and the
    /// gap, anywhere in or past RAM, anything at all, or inside the page
    /// other tests' data sits in.
    fn hostile_address(rng: &mut XorShift) -> u64 {
        const EDGES: [u64; 8] = [
            0,
            0xff0,
            RAM as u64 - 8,
            RAM as u64,
            0x1f_fff8,
            0x20_0000,
            0x2f_fff0,
            u64::MAX - 7,
        ];
        let r = rng.next();
        match r % 4 {
            0 => EDGES[(r >> 8) as usize % EDGES.len()].wrapping_add((r >> 32) % 16),
            1 => (r >> 8) % 0x30_0000,
            2 => r,
            _ => 0x4_0000 + (r >> 8) % 0x1000,
        }
    }

    /// A hostile guest's descriptors, made by a fixed-seed generator so a
    /// failure reproduces: random ops, counts and ranges that are mostly
    /// near region edges, gaps and each other. Whatever they say, the
    /// device must not panic, and a refused one must leave guest memory as
    /// it was except for its status word (the fuzz target checks the same
    /// with coverage guidance; this is its short form for every test run).
    #[test]
    fn random_hostile_descriptors_never_panic_and_refusals_change_nothing() {
        let mem = memory();
        let mut dev = MemOps::new(mem.clone());
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut refused = 0;
        for round in 0..2000 {
            let op = (rng.next() % 4) as u16;
            let count = (rng.next() % 5) as usize;
            let segs: Vec<(u64, u64, u64)> = (0..count)
                .map(|_| {
                    let len = match rng.next() % 3 {
                        0 => rng.next() % 64,
                        1 => rng.next() % 0x2_0000,
                        _ => rng.next(),
                    };
                    (hostile_address(&mut rng), hostile_address(&mut rng), len)
                })
                .collect();
            let desc = 0x3000;
            write_desc(&mem, desc, op, (round % 256) as u8, &segs);
            let before = all_bytes(&mem);
            // Through the port, as a vCPU exit delivers it.
            doorbell(&mut dev, desc);
            let st = status(&mem, desc);
            if st != 0 {
                refused += 1;
                let mut after = all_bytes(&mem);
                after[desc as usize + 4..desc as usize + 8]
                    .copy_from_slice(&before[desc as usize + 4..desc as usize + 8]);
                assert!(
                    after == before,
                    "round {round}: refused {op} {segs:x?} changed memory"
                );
            }
        }
        assert!(
            refused > 1000,
            "too few hostile descriptors were refused: {refused}"
        );
    }

    /// The largest operation a descriptor may ask for is bounded: 170
    /// segments adding up to MAX_TOTAL are done (or refused) in one exit,
    /// so a guest cannot keep a vCPU thread in the device for long.
    #[test]
    fn largest_allowed_operation_completes_and_one_byte_more_is_refused() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 80 << 20)]).unwrap();
        let seg = (MAX_TOTAL / u64::from(MAX_SEGMENTS)) & !0xfff;
        let segs: Vec<_> = (0..u64::from(MAX_SEGMENTS))
            .map(|i| (0x1_0000 + i * seg, 0, seg))
            .collect();
        write_desc(&mem, 0x3000, OP_FILL, 0x5a, &segs);
        assert_eq!(ring(&mem, GuestAddress(0x3000)), Ok(()));
        assert_eq!(bytes(&mem, 0x1_0000 + seg * 100, 16), vec![0x5a; 16]);
        let mut too_big = segs.clone();
        too_big[0].2 += MAX_TOTAL - seg * u64::from(MAX_SEGMENTS) + 1;
        write_desc(&mem, 0x3000, OP_FILL, 0, &too_big);
        assert_eq!(ring(&mem, GuestAddress(0x3000)), Err(MemOpError::TooLarge));
    }
}
