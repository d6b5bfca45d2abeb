//! Fuzzes the virtio-blk request path: the input becomes guest memory
//! holding a split queue (descriptor table, avail ring, used ring) and the
//! buffers its descriptors point at, and the device serves that queue
//! against a small disk image. Nothing the guest writes may panic the VMM
//! or reach outside guest memory or the image.

#![no_main]

use std::path::PathBuf;
use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::virtio::block::request::process_queue;
use vmm::virtio::block::{DiskFile, ID_BYTES, SECTOR_SIZE};

const QUEUE_SIZE: u16 = 16;
const DESC_TABLE: u64 = 0;
const AVAIL_RING: u64 = 0x100;
const USED_RING: u64 = 0x200;
/// Two adjacent regions, so buffers can straddle a region boundary.
const REGION: usize = 0x8000;
const DISK_SECTORS: u64 = 16;

/// The two disks (read-write, read-only), opened once per process; the
/// image lives in /dev/shm when it can, to keep the I/O cheap.
static DISKS: Mutex<Option<(DiskFile, DiskFile)>> = Mutex::new(None);

fn image_path() -> PathBuf {
    let dir = PathBuf::from("/dev/shm");
    let dir = if dir.is_dir() {
        dir
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("hull-fuzz-blk-{}.img", std::process::id()))
}

fn open_disks() -> (DiskFile, DiskFile) {
    let path = image_path();
    std::fs::write(&path, vec![0u8; (DISK_SECTORS * SECTOR_SIZE) as usize]).unwrap();
    let rw = DiskFile::open(&path, false).unwrap();
    let ro = DiskFile::open(&path, true).unwrap();
    // The open descriptors keep the image alive.
    let _ = std::fs::remove_file(&path);
    (rw, ro)
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, memory)) = data.split_first() else {
        return;
    };
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION),
        (GuestAddress(REGION as u64), REGION),
    ])
    .unwrap();
    let n = memory.len().min(2 * REGION);
    mem.write_slice(&memory[..n], GuestAddress(0)).unwrap();

    let mut queue = Queue::new(QUEUE_SIZE).unwrap();
    queue.set_size(QUEUE_SIZE);
    queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
    queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
    queue.set_event_idx(control & 1 != 0);
    queue.set_ready(true);
    assert!(queue.is_valid(&mem));

    let id = [b'f'; ID_BYTES];
    let mut disks = DISKS.lock().unwrap();
    let (rw, ro) = disks.get_or_insert_with(open_disks);
    let disk = if control & 2 != 0 { ro } else { rw };
    // Errors are fine (a broken used ring); panics and overflows are not.
    let _ = process_queue(&mut queue, &mem, disk, &id, &vmm::virtio::Misbehaviour::new("fuzz"));
    assert_eq!(disk.sectors(), DISK_SECTORS, "the image changed size");
});
