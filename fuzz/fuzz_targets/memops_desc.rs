//! Fuzzes the memory-op doorbell: the input becomes guest memory (two
//! regions with a gap, like RAM around the MMIO hole) and the first four
//! bytes choose the descriptor's page. Whatever the descriptor says, the
//! VMM must not panic or touch memory outside guest RAM; a refused
//! descriptor must leave guest memory unchanged except for its status.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::memops::ring;

const REGION: usize = 0x4000;
const SECOND: u64 = 0x1_0000;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), REGION),
        (GuestAddress(SECOND), REGION),
    ])
    .unwrap();
    let body = &data[4..];
    let first = &body[..body.len().min(REGION)];
    mem.write_slice(first, GuestAddress(0)).unwrap();
    if body.len() > REGION {
        let rest = &body[REGION..body.len().min(2 * REGION)];
        mem.write_slice(rest, GuestAddress(SECOND)).unwrap();
    }
    let pfn = u32::from_le_bytes(data[..4].try_into().unwrap()) & 0x1f;
    let desc = GuestAddress(u64::from(pfn) << 12);
    let before = snapshot(&mem);
    if ring(&mem, desc).is_err() {
        let mut after = snapshot(&mem);
        // Only the status word may differ.
        if let Some(at) = desc.0.checked_add(4) {
            for b in at..at + 4 {
                if let Some(pos) = index(b) {
                    after[pos] = before[pos];
                }
            }
        }
        assert!(before == after, "a refused descriptor changed guest memory");
    }
});

fn index(addr: u64) -> Option<usize> {
    if addr < REGION as u64 {
        Some(addr as usize)
    } else if (SECOND..SECOND + REGION as u64).contains(&addr) {
        Some(REGION + (addr - SECOND) as usize)
    } else {
        None
    }
}

fn snapshot(mem: &GuestMemoryMmap) -> Vec<u8> {
    let mut v = vec![0u8; 2 * REGION];
    mem.read_slice(&mut v[..REGION], GuestAddress(0)).unwrap();
    mem.read_slice(&mut v[REGION..], GuestAddress(SECOND)).unwrap();
    v
}
