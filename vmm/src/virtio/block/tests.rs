//! virtio-blk driven through virtio-queue's mock split queue, as a driver
//! would: chains in guest memory, then the used ring, the status byte, the
//! data buffers and the bytes on disk are checked.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::request::{process_queue, Request, RequestError, RequestType};
use super::*;
use crate::virtio::interrupt::{INT_CONFIG, INT_VRING};

const QSIZE: u16 = 16;
const HDR: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const DATA2: u64 = 0x4_0000;
const STATUS: u64 = 0x6_0000;
/// Guest memory is two adjacent 1 MiB regions; buffers crossing this
/// address exercise the multi-slice path.
const REGION_EDGE: u64 = 0x10_0000;
const MEM_END: u64 = 0x20_0000;
/// A status byte value no device writes, to see whether it was touched.
const UNTOUCHED: u8 = 0xee;

/// A disk image file removed when dropped.
struct TempImage {
    path: PathBuf,
}

impl TempImage {
    fn new(contents: &[u8]) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "hull-blk-test-{}-{}.img",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        fs::write(&path, contents).unwrap();
        Self { path }
    }

    fn bytes(&self) -> Vec<u8> {
        fs::read(&self.path).unwrap()
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// `sectors` sectors where byte i is `(i * 7 + i / 512) as u8`, so any
/// misplaced sector shows.
fn pattern(sectors: usize) -> Vec<u8> {
    (0..sectors * 512)
        .map(|i| (i * 7 + i / 512) as u8)
        .collect()
}

fn guest_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION_EDGE as usize),
        (GuestAddress(REGION_EDGE), (MEM_END - REGION_EDGE) as usize),
    ])
    .unwrap()
}

fn block(image: &TempImage, read_only: bool) -> Block {
    Block::new(BlockConfig {
        path: image.path.clone(),
        read_only,
        id: "hull-test-disk".into(),
    })
    .unwrap()
}

fn header(kind: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

/// A descriptor: guest address, length, device-writable.
type D = (u64, u32, bool);

fn rd(addr: u64, len: u32) -> D {
    (addr, len, false)
}

fn wr(addr: u64, len: u32) -> D {
    (addr, len, true)
}

fn raw(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next))
}

/// Puts one chain in the descriptor table at `first` and offers it.
fn offer(mq: &MockSplitQueue<GuestMemoryMmap>, first: u16, descs: &[D]) {
    let raws: Vec<RawDescriptor> = descs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, write))| {
            let last = i + 1 == descs.len();
            let mut flags = if write { VRING_DESC_F_WRITE } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT;
            }
            raw(addr, len, flags, first + i as u16 + 1)
        })
        .collect();
    mq.add_desc_chains(&raws, first).unwrap();
}

/// What the driver sees after one chain.
#[derive(Debug)]
struct Outcome {
    used_len: u32,
    status: u8,
}

/// Serves one chain on a fresh queue against `disk` and reads the result.
fn serve(mem: &GuestMemoryMmap, block: &mut Block, descs: &[D]) -> Outcome {
    mem.write_obj(UNTOUCHED, GuestAddress(STATUS)).unwrap();
    let mq = MockSplitQueue::new(mem, QSIZE);
    offer(&mq, 0, descs);
    let mut queue: Queue = mq.create_queue().unwrap();
    let notify = process_queue(
        &mut queue,
        mem,
        &mut block.disk,
        &block.id,
        &block.misbehaviour,
    )
    .unwrap();
    assert!(notify, "a used chain must interrupt without EVENT_IDX");
    assert_eq!(mq.used().idx().load(), 1, "exactly one chain used");
    let elem = mq.used().ring().ref_at(0).unwrap().load();
    assert_eq!(elem.id(), 0);
    Outcome {
        used_len: elem.len(),
        status: mem.read_obj(GuestAddress(STATUS)).unwrap(),
    }
}

fn put(mem: &GuestMemoryMmap, addr: u64, bytes: &[u8]) {
    mem.write_slice(bytes, GuestAddress(addr)).unwrap();
}

fn get(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;

#[test]
fn write_then_read_round_trip() {
    let image = TempImage::new(&[0u8; 8 * 512]);
    let mut dev = block(&image, false);
    let mem = guest_mem();
    let data: Vec<u8> = (0..1024).map(|i| (i % 251) as u8).collect();

    put(&mem, HDR, &header(VIRTIO_BLK_T_OUT, 2));
    put(&mem, DATA, &data);
    let out = serve(
        &mem,
        &mut dev,
        &[rd(HDR, 16), rd(DATA, 1024), wr(STATUS, 1)],
    );
    assert_eq!((out.status, out.used_len), (OK, 1));
    let disk = image.bytes();
    assert_eq!(&disk[1024..2048], &data[..]);
    assert!(disk[..1024].iter().chain(&disk[2048..]).all(|&b| b == 0));

    put(&mem, HDR, &header(VIRTIO_BLK_T_IN, 2));
    let out = serve(
        &mem,
        &mut dev,
        &[rd(HDR, 16), wr(DATA2, 1024), wr(STATUS, 1)],
    );
    assert_eq!((out.status, out.used_len), (OK, 1025));
    assert_eq!(get(&mem, DATA2, 1024), data);
}

#[test]
fn multi_segment_read_fills_each_buffer_in_order() {
    let contents = pattern(8);
    let image = TempImage::new(&contents);
    let mut dev = block(&image, true);
    let mem = guest_mem();
    // The middle buffer straddles the two memory regions.
    let edge = REGION_EDGE - 512;
    put(&mem, HDR, &header(VIRTIO_BLK_T_IN, 1));
    let out = serve(
        &mem,
        &mut dev,
        &[
            rd(HDR, 16),
            wr(DATA, 512),
            wr(edge, 1024),
            wr(DATA2, 512),
            wr(STATUS, 1),
        ],
    );
    assert_eq!((out.status, out.used_len), (OK, 2049));
    assert_eq!(get(&mem, DATA, 512), &contents[512..1024]);
    assert_eq!(get(&mem, edge, 1024), &contents[1024..2048]);
    assert_eq!(get(&mem, DATA2, 512), &contents[2048..2560]);
}

#[test]
fn multi_segment_write_with_header_sharing_a_descriptor() {
    let image = TempImage::new(&[0u8; 8 * 512]);
    let mut dev = block(&image, false);
    let mem = guest_mem();
    let data = pattern(2);
    // Header and the first sector in one descriptor, the second sector in
    // another, then the status.
    put(&mem, HDR, &header(VIRTIO_BLK_T_OUT, 5));
    put(&mem, HDR + 16, &data[..512]);
    put(&mem, DATA, &data[512..]);
    let out = serve(
        &mem,
        &mut dev,
        &[rd(HDR, 16 + 512), rd(DATA, 512), wr(STATUS, 1)],
    );
    assert_eq!((out.status, out.used_len), (OK, 1));
    assert_eq!(&image.bytes()[5 * 512..7 * 512], &data[..]);
}

#[test]
fn read_with_data_and_status_in_one_descriptor() {
    let contents = pattern(4);
    let image = TempImage::new(&contents);
    let mut dev = block(&image, false);
    let mem = guest_mem();
    put(&mem, HDR, &header(VIRTIO_BLK_T_IN, 3));
    mem.write_obj(UNTOUCHED, GuestAddress(DATA + 512)).unwrap();
    let mq = MockSplitQueue::new(&mem, QSIZE);
    offer(&mq, 0, &[rd(HDR, 16), wr(DATA, 513)]);
    let mut queue: Queue = mq.create_queue().unwrap();
    process_queue(&mut queue, &mem, &mut dev.disk, &dev.id, &dev.misbehaviour).unwrap();
    assert_eq!(mq.used().ring().ref_at(0).unwrap().load().len(), 513);
    assert_eq!(get(&mem, DATA, 512), &contents[1536..2048]);
    assert_eq!(get(&mem, DATA + 512, 1), [OK]);
}

#[test]
fn flush_succeeds() {
    let image = TempImage::new(&[0u8; 512]);
    let mut dev = block(&image, false);
    let mem = guest_mem();
    put(&mem, HDR, &header(VIRTIO_BLK_T_FLUSH, 0));
    let out = serve(&mem, &mut dev, &[rd(HDR, 16), wr(STATUS, 1)]);
    assert_eq!((out.status, out.used_len), (OK, 1));
}

#[test]
fn get_id_returns_padded_id_and_truncates_to_the_buffer() {
    let image = TempImage::new(&[0u8; 512]);
    let mut dev = block(&image, true);
    let mem = guest_mem();
    put(&mem, DATA, &[0xff; 20]);
    put(&mem, HDR, &header(VIRTIO_BLK_T_GET_ID, 0));
    let out = serve(&mem, &mut dev, &[rd(HDR, 16), wr(DATA, 20), wr(STATUS, 1)]);
    assert_eq!((out.status, out.used_len), (OK, 21));
    let mut want = b"hull-test-disk".to_vec();
    want.resize(20, 0);
    assert_eq!(get(&mem, DATA, 20), want);

    put(&mem, DATA2, &[0xff; 20]);
    let out = serve(&mem, &mut dev, &[rd(HDR, 16), wr(DATA2, 4), wr(STATUS, 1)]);
    assert_eq!((out.status, out.used_len), (OK, 5));
    assert_eq!(get(&mem, DATA2, 5), b"hull\xff");
}

#[test]
fn write_to_read_only_disk_fails_and_leaves_the_file_alone() {
    let contents = pattern(4);
    let image = TempImage::new(&contents);
    let mut dev = block(&image, true);
    let mem = guest_mem();
    put(&mem, HDR, &header(VIRTIO_BLK_T_OUT, 0));
    put(&mem, DATA, &[0x55; 512]);
    let out = serve(&mem, &mut dev, &[rd(HDR, 16), rd(DATA, 512), wr(STATUS, 1)]);
    assert_eq!((out.status, out.used_len), (IOERR, 1));
    assert_eq!(image.bytes(), contents);
}

#[test]
fn unsupported_type_gets_unsupp() {
    let image = TempImage::new(&[0u8; 512]);
    let mut dev = block(&image, false);
    let mem = guest_mem();
    // 11 is DISCARD, which the device does not offer.
    put(&mem, HDR, &header(11, 0));
    put(&mem, DATA, &[0u8; 16]);
    let out = serve(&mem, &mut dev, &[rd(HDR, 16), rd(DATA, 16), wr(STATUS, 1)]);
    assert_eq!((out.status, out.used_len), (VIRTIO_BLK_S_UNSUPP as u8, 1));
    assert_eq!(image.bytes(), vec![0u8; 512]);
}

#[test]
fn out_of_range_sectors_fail_without_touching_memory_or_file() {
    let contents = pattern(4);
    let image = TempImage::new(&contents);
    let mut dev = block(&image, false);
    let mem = guest_mem();
    put(&mem, DATA, &[0xaa; 1024]);
    // The last sector is fine, one more is not.
    for sector in [3, 4, u64::MAX / 512 + 1, u64::MAX] {
        put(&mem, HDR, &header(VIRTIO_BLK_T_IN, sector));
        let out = serve(
            &mem,
            &mut dev,
            &[rd(HDR, 16), wr(DATA, 1024), wr(STATUS, 1)],
        );
        assert_eq!((out.status, out.used_len), (IOERR, 1), "sector {sector}");
        assert_eq!(get(&mem, DATA, 1024), vec![0xaa; 1024]);

        put(&mem, HDR, &header(VIRTIO_BLK_T_OUT, sector));
        let out = serve(
            &mem,
            &mut dev,
            &[rd(HDR, 16), rd(DATA, 1024), wr(STATUS, 1)],
        );
        assert_eq!((out.status, out.used_len), (IOERR, 1), "sector {sector}");
        assert_eq!(image.bytes(), contents, "file grew or changed");
    }
}

/// A malformed chain: the outcome the driver sees, and nothing written to
/// the data buffers or the file.
fn assert_rejected(descs: &[D], kind: u32, want: Option<u8>) {
    let contents = pattern(4);
    let image = TempImage::new(&contents);
    let mut dev = block(&image, false);
    let mem = guest_mem();
    put(&mem, HDR, &header(kind, 0));
    put(&mem, DATA, &[0xaa; 1024]);
    let out = serve(&mem, &mut dev, descs);
    match want {
        Some(status) => assert_eq!((out.status, out.used_len), (status, 1), "{descs:?}"),
        None => assert_eq!((out.status, out.used_len), (UNTOUCHED, 0), "{descs:?}"),
    }
    assert_eq!(get(&mem, DATA, 1024), vec![0xaa; 1024], "{descs:?}");
    assert_eq!(image.bytes(), contents, "{descs:?}");
}

#[test]
fn chain_without_status_is_used_with_length_zero() {
    assert_rejected(&[rd(HDR, 16)], VIRTIO_BLK_T_FLUSH, None);
    assert_rejected(&[rd(HDR, 16), rd(DATA, 512)], VIRTIO_BLK_T_OUT, None);
    // A zero-length last descriptor has no byte for the status.
    assert_rejected(&[rd(HDR, 16), wr(STATUS, 0)], VIRTIO_BLK_T_FLUSH, None);
}

#[test]
fn chain_too_short_for_a_header_fails() {
    assert_rejected(&[rd(HDR, 8), wr(STATUS, 1)], VIRTIO_BLK_T_OUT, Some(IOERR));
    assert_rejected(&[wr(STATUS, 1)], VIRTIO_BLK_T_IN, Some(IOERR));
}

#[test]
fn writable_header_fails() {
    assert_rejected(
        &[wr(HDR, 16), wr(DATA, 512), wr(STATUS, 1)],
        VIRTIO_BLK_T_IN,
        Some(IOERR),
    );
}

#[test]
fn read_into_read_only_buffer_fails() {
    assert_rejected(
        &[rd(HDR, 16), rd(DATA, 512), wr(STATUS, 1)],
        VIRTIO_BLK_T_IN,
        Some(IOERR),
    );
}

#[test]
fn write_from_writable_buffer_fails() {
    assert_rejected(
        &[rd(HDR, 16), wr(DATA, 512), wr(STATUS, 1)],
        VIRTIO_BLK_T_OUT,
        Some(IOERR),
    );
}

#[test]
fn readable_after_writable_fails() {
    assert_rejected(
        &[rd(HDR, 16), wr(DATA, 512), rd(DATA2, 512), wr(STATUS, 1)],
        VIRTIO_BLK_T_IN,
        Some(IOERR),
    );
}

#[test]
fn partial_sector_fails() {
    assert_rejected(
        &[rd(HDR, 16), wr(DATA, 100), wr(STATUS, 1)],
        VIRTIO_BLK_T_IN,
        Some(IOERR),
    );
}

#[test]
fn addresses_outside_guest_memory_fail() {
    for kind in [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT] {
        let data = if kind == VIRTIO_BLK_T_IN { wr } else { rd };
        // Entirely outside, straddling the end, wrapping around 2^64.
        for (addr, len) in [
            (MEM_END, 512),
            (MEM_END - 512, 1024),
            (u64::MAX - 511, 1024),
        ] {
            assert_rejected(
                &[rd(HDR, 16), data(addr, len), wr(STATUS, 1)],
                kind,
                Some(IOERR),
            );
        }
    }
    // The header itself outside memory.
    assert_rejected(
        &[rd(MEM_END, 16), wr(STATUS, 1)],
        VIRTIO_BLK_T_IN,
        Some(IOERR),
    );
    // The status byte outside memory: nowhere to report.
    assert_rejected(&[rd(HDR, 16), wr(MEM_END, 1)], VIRTIO_BLK_T_FLUSH, None);
}

#[test]
fn absurd_lengths_fail() {
    assert_rejected(
        &[rd(HDR, 16), wr(DATA, u32::MAX - 511), wr(STATUS, 1)],
        VIRTIO_BLK_T_IN,
        Some(IOERR),
    );
    assert_rejected(
        &[
            rd(HDR, 16),
            rd(DATA, 0x8000_0000),
            rd(DATA, 0x8000_0000),
            wr(STATUS, 1),
        ],
        VIRTIO_BLK_T_OUT,
        // The chain's total passes 2^32 bytes: virtio-queue ends it early,
        // before the status descriptor.
        None,
    );
}

#[test]
fn descriptor_loop_ends_and_fails_that_request() {
    let image = TempImage::new(&pattern(4));
    let mut dev = block(&image, false);
    let mem = guest_mem();
    put(&mem, HDR, &header(VIRTIO_BLK_T_IN, 0));
    let mq = MockSplitQueue::new(&mem, QSIZE);
    // 0 -> 1 -> 0 -> ...: header, status, header, status...
    let table = [
        raw(HDR, 16, VRING_DESC_F_NEXT, 1),
        raw(STATUS, 1, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 0),
    ];
    mq.add_desc_chains(&table, 0).unwrap();
    let mut queue: Queue = mq.create_queue().unwrap();
    mem.write_obj(UNTOUCHED, GuestAddress(STATUS)).unwrap();
    process_queue(&mut queue, &mem, &mut dev.disk, &dev.id, &dev.misbehaviour).unwrap();
    assert_eq!(mq.used().idx().load(), 1);
    let elem = mq.used().ring().ref_at(0).unwrap().load();
    assert_eq!(elem.len(), 1);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), IOERR);
    // Counted as the guest's misbehaviour.
    assert_eq!(dev.misbehaviour.count(), 1);
}

#[test]
fn an_available_index_more_than_a_queue_ahead_is_recorded() {
    let image = TempImage::new(&pattern(4));
    let mut dev = block(&image, false);
    let mem = guest_mem();
    let mq = MockSplitQueue::new(&mem, QSIZE);
    let mut queue: Queue = mq.create_queue().unwrap();
    mq.avail().idx().store(u16::to_le(QSIZE + 1));
    process_queue(&mut queue, &mem, &mut dev.disk, &dev.id, &dev.misbehaviour).unwrap();
    assert_eq!(mq.used().idx().load(), 0);
    assert_eq!(dev.misbehaviour.count(), 1);
}

#[test]
fn overlong_chain_is_refused() {
    let mem = guest_mem();
    put(&mem, HDR, &header(VIRTIO_BLK_T_IN, 0));
    let descs = std::iter::once(Descriptor::new(HDR, 16, 0, 0))
        .chain(
            (0..request::MAX_DESCRIPTORS)
                .map(|_| Descriptor::new(DATA, 512, VRING_DESC_F_WRITE as u16, 0)),
        )
        .chain(std::iter::once(Descriptor::new(
            STATUS,
            1,
            VRING_DESC_F_WRITE as u16,
            0,
        )));
    let err = Request::parse(&mem, descs).unwrap_err();
    assert!(matches!(err.error, RequestError::ChainTooLong));
    assert_eq!(err.status, None);
}

#[test]
fn parse_splits_header_data_and_status_by_bytes() {
    let mem = guest_mem();
    put(&mem, HDR, &header(VIRTIO_BLK_T_OUT, 9));
    // Header split over two descriptors, data in the second one's tail.
    let descs = [
        Descriptor::new(HDR, 10, 0, 0),
        Descriptor::new(HDR + 10, 6 + 512, 0, 0),
        Descriptor::new(STATUS, 1, VRING_DESC_F_WRITE as u16, 0),
    ];
    let req = Request::parse(&mem, descs).unwrap();
    assert_eq!(req.kind, RequestType::Out);
    assert_eq!(req.sector, 9);
    assert_eq!(
        req.data,
        vec![disk::Segment {
            addr: GuestAddress(HDR + 16),
            len: 512
        }]
    );
    assert_eq!(req.status, GuestAddress(STATUS));
}

#[test]
fn bad_head_index_and_avail_index_storm_do_not_hang() {
    let image = TempImage::new(&pattern(4));
    let mut dev = block(&image, false);
    let mem = guest_mem();
    let mq = MockSplitQueue::new(&mem, QSIZE);
    // An avail entry naming descriptor 1000 of a 16-entry table.
    mq.avail().ring().ref_at(0).unwrap().store(1000);
    mq.avail().idx().store(1);
    let mut queue: Queue = mq.create_queue().unwrap();
    let notify =
        process_queue(&mut queue, &mem, &mut dev.disk, &dev.id, &dev.misbehaviour).unwrap();
    assert!(!notify);
    assert_eq!(mq.used().idx().load(), 0);

    // The driver claims far more chains than the queue holds.
    mq.avail().idx().store(1 + 5000);
    for event_idx in [false, true] {
        queue.set_event_idx(event_idx);
        let notify =
            process_queue(&mut queue, &mem, &mut dev.disk, &dev.id, &dev.misbehaviour).unwrap();
        assert!(!notify);
        assert_eq!(mq.used().idx().load(), 0);
    }
}

#[test]
fn event_idx_interrupts_only_when_the_driver_asks() {
    let image = TempImage::new(&pattern(4));
    let mut dev = block(&image, false);
    let mem = guest_mem();
    let mq = MockSplitQueue::new(&mem, QSIZE);
    let used_event = GuestAddress(mq.avail_addr().0 + 4 + 2 * u64::from(QSIZE));
    let mut queue: Queue = mq.create_queue().unwrap();
    queue.set_event_idx(true);
    put(&mem, HDR, &header(VIRTIO_BLK_T_FLUSH, 0));

    // used_event = 5: the driver wants to hear once the 6th chain is used.
    mem.write_obj(5u16, used_event).unwrap();
    offer(&mq, 0, &[rd(HDR, 16), wr(STATUS, 1)]);
    assert!(!process_queue(&mut queue, &mem, &mut dev.disk, &dev.id, &dev.misbehaviour).unwrap());
    assert_eq!(mq.used().idx().load(), 1);

    // used_event = 1: the 2nd chain crosses it.
    mem.write_obj(1u16, used_event).unwrap();
    offer(&mq, 2, &[rd(HDR, 16), wr(STATUS, 1)]);
    assert!(process_queue(&mut queue, &mem, &mut dev.disk, &dev.id, &dev.misbehaviour).unwrap());
    assert_eq!(mq.used().idx().load(), 2);
    // The device asked to be kicked at the next avail index.
    let avail_event = GuestAddress(mq.used_addr().0 + 4 + 8 * u64::from(QSIZE));
    assert_eq!(mem.read_obj::<u16>(avail_event).unwrap(), 2);
}

#[test]
fn config_space_and_features() {
    let image = TempImage::new(&[0u8; 16 * 512]);
    let dev = block(&image, false);
    assert_eq!(dev.device_type(), 2);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE]);
    assert_eq!(dev.capacity(), 16);
    let mut cap = [0u8; 8];
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 16);
    let mut seg_max = [0u8; 4];
    dev.read_config(12, &mut seg_max);
    assert_eq!(u32::from_le_bytes(seg_max), SEG_MAX);
    // A driver may read the capacity as two 32-bit halves.
    let mut half = [0xffu8; 4];
    dev.read_config(4, &mut half);
    assert_eq!(half, [0; 4]);
    // Past the fields we fill: zeros.
    let mut tail = [0xffu8; 8];
    dev.read_config(20, &mut tail);
    assert_eq!(tail, [0; 8]);

    let f = dev.features();
    for bit in [32, 29, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_SEG_MAX] {
        assert_ne!(f & (1 << bit), 0, "feature bit {bit}");
    }
    assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
    let ro = block(&image, true);
    assert_ne!(ro.features() & (1 << VIRTIO_BLK_F_RO), 0);
    assert!(ro.read_only());
}

#[test]
fn image_size_not_a_multiple_of_512_is_refused() {
    let image = TempImage::new(&[0u8; 1000]);
    let err = Block::new(BlockConfig {
        path: image.path.clone(),
        read_only: true,
        id: String::new(),
    })
    .unwrap_err();
    assert!(matches!(
        err,
        BlockError::NotSectorMultiple { size: 1000, .. }
    ));
    assert_eq!(
        err.to_string(),
        format!(
            "Disk image {} is 1000 bytes, not a multiple of 512",
            image.path.display()
        )
    );
}

#[test]
fn missing_image_and_long_id_are_refused() {
    let path = std::env::temp_dir().join("hull-blk-test-does-not-exist.img");
    let err = Block::new(BlockConfig {
        path: path.clone(),
        read_only: false,
        id: String::new(),
    })
    .unwrap_err();
    assert!(matches!(err, BlockError::Open { .. }));
    assert_eq!(
        err.to_string(),
        format!("Cannot open disk image {}", path.display())
    );

    let image = TempImage::new(&[0u8; 512]);
    let err = Block::new(BlockConfig {
        path: image.path.clone(),
        read_only: false,
        id: "x".repeat(21),
    })
    .unwrap_err();
    assert!(matches!(err, BlockError::IdTooLong { .. }));
}

/// What a test keeps of an activated device.
struct Activated {
    mem: GuestMemoryMmap,
    queue_evt: EventFd,
    interrupt: Arc<Interrupt>,
}

fn activate(dev: &mut Block, event_idx: bool) -> Activated {
    let mem = guest_mem();
    let mq = MockSplitQueue::new(&mem, QSIZE);
    let queue: Queue = mq.create_queue().unwrap();
    let queue_evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap(), 5));
    let mut acked = VIRTIO_F_VERSION_1;
    if event_idx {
        acked |= VIRTIO_RING_F_EVENT_IDX;
    }
    dev.activate(ActivateContext {
        mem: mem.clone(),
        queues: vec![queue],
        queue_evts: vec![queue_evt.try_clone().unwrap()],
        interrupt: interrupt.clone(),
        acked_features: acked,
    })
    .unwrap();
    Activated {
        mem,
        queue_evt,
        interrupt,
    }
}

#[test]
fn swap_backing_updates_capacity_and_raises_config_interrupt() {
    let first = TempImage::new(&pattern(4));
    let second = TempImage::new(&pattern(32));
    let mut dev = block(&first, false);
    // Inactive: nothing to interrupt.
    dev.swap_backing(&second.path, true).unwrap();
    assert_eq!(dev.capacity(), 32);
    dev.swap_backing(&first.path, false).unwrap();

    let act = activate(&mut dev, false);
    dev.swap_backing(&second.path, true).unwrap();
    assert_eq!(dev.capacity(), 32);
    assert!(dev.read_only());
    assert_eq!(dev.disk_path(), second.path.as_path());
    let mut cap = [0u8; 8];
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 32);
    assert_eq!(act.interrupt.status(), INT_CONFIG);
    assert_eq!(act.interrupt.irqfd().read().unwrap(), 1);

    // A bad new file leaves the old one serving.
    let bad = TempImage::new(&[0u8; 513]);
    assert!(matches!(
        dev.swap_backing(&bad.path, false),
        Err(BlockError::NotSectorMultiple { size: 513, .. })
    ));
    assert_eq!(dev.disk_path(), second.path.as_path());
    assert_eq!(dev.capacity(), 32);
}

#[test]
fn activate_refuses_wrong_queue_count() {
    let image = TempImage::new(&[0u8; 512]);
    let mut dev = block(&image, false);
    let err = dev
        .activate(ActivateContext {
            mem: guest_mem(),
            queues: Vec::new(),
            queue_evts: Vec::new(),
            interrupt: Arc::new(Interrupt::new(EventFd::new(0).unwrap(), 5)),
            acked_features: VIRTIO_F_VERSION_1,
        })
        .unwrap_err();
    assert!(matches!(err, ActivateError::QueueCount { want: 1, got: 0 }));
    assert!(!dev.is_active());
}

/// The whole event path: the event manager picks up the activation, then a
/// guest kick on the queue eventfd gets the chain served and the IRQ raised.
#[test]
fn event_manager_serves_queue_after_activation_and_reset() {
    let contents = pattern(4);
    let image = TempImage::new(&contents);
    let dev = Arc::new(Mutex::new(block(&image, false)));
    let mut manager: EventManager<Arc<Mutex<Block>>> = EventManager::new().unwrap();
    manager.add_subscriber(dev.clone());

    for round in 0..2 {
        let act = activate(&mut dev.lock().unwrap(), round == 1);
        // Activation only: nothing queued yet, no interrupt.
        assert_eq!(manager.run_with_timeout(100).unwrap(), 1);
        assert_eq!(act.interrupt.status(), 0);

        // The mock queue's layout matches the one `activate` used.
        let mq = MockSplitQueue::new(&act.mem, QSIZE);
        put(&act.mem, HDR, &header(VIRTIO_BLK_T_IN, 2));
        offer(&mq, 0, &[rd(HDR, 16), wr(DATA, 1024), wr(STATUS, 1)]);
        act.queue_evt.write(1).unwrap();
        assert_eq!(manager.run_with_timeout(100).unwrap(), 1);

        assert_eq!(mq.used().idx().load(), 1, "round {round}");
        assert_eq!(mq.used().ring().ref_at(0).unwrap().load().len(), 1025);
        assert_eq!(get(&act.mem, DATA, 1024), &contents[1024..2048]);
        assert_eq!(act.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), OK);
        assert_eq!(act.interrupt.status(), INT_VRING);
        assert_eq!(act.interrupt.irqfd().read().unwrap(), 1);

        // A driver reset: the event thread unwatches the old queue eventfd.
        assert!(dev.lock().unwrap().reset());
        assert!(!dev.lock().unwrap().is_active());
        assert_eq!(manager.run_with_timeout(100).unwrap(), 1);
        act.queue_evt.write(1).unwrap();
        assert_eq!(
            manager.run_with_timeout(50).unwrap(),
            0,
            "old queue still watched"
        );
    }
}

#[test]
fn requests_queued_before_the_event_thread_saw_activation_are_served() {
    let image = TempImage::new(&pattern(4));
    let dev = Arc::new(Mutex::new(block(&image, false)));
    let mut manager: EventManager<Arc<Mutex<Block>>> = EventManager::new().unwrap();
    manager.add_subscriber(dev.clone());
    let act = activate(&mut dev.lock().unwrap(), false);
    let mq = MockSplitQueue::new(&act.mem, QSIZE);
    put(&act.mem, HDR, &header(VIRTIO_BLK_T_FLUSH, 0));
    offer(&mq, 0, &[rd(HDR, 16), wr(STATUS, 1)]);
    // No kick is needed: activation serves what is already there.
    manager.run_with_timeout(100).unwrap();
    assert_eq!(mq.used().idx().load(), 1);
    assert_eq!(act.interrupt.irqfd().read().unwrap(), 1);
}
