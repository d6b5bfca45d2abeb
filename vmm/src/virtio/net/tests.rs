//! virtio-net without a VM: the test plays the guest driver through
//! virtio-queue's mock split queues and the backend (passt) through the
//! other end of a Unix socket pair, while an `EventManager` drives the
//! device.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_bindings::virtio_net::{VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::frame::{finish_checksum, FrameError, HDR_SIZE, MAX_FRAME};
use super::*;

const QSIZE: u16 = 64;
const MEM_SIZE: usize = 0x40_0000;
const TX_AREA: u64 = 0x10_0000;
const RX_AREA: u64 = 0x20_0000;
const SLOT: u64 = 0x1_0000;
const MAC: [u8; 6] = [0x02, 0x48, 0x55, 0x4c, 0x4c, 0x01];
const W: u16 = VRING_DESC_F_WRITE as u16;

struct Harness {
    mem: GuestMemoryMmap,
    /// desc table, avail ring, used ring of rx and tx.
    rings: [(u64, u64, u64); 2],
    avail_idx: [u16; 2],
    used_seen: [u16; 2],
    next_desc: [u16; 2],
    kicks: Vec<EventFd>,
    dev: Arc<Mutex<Net>>,
    em: EventManager<Arc<Mutex<Net>>>,
    irq: Arc<Interrupt>,
    peer: Option<UnixStream>,
}

impl Harness {
    fn new(with_backend: bool, features: u64) -> Self {
        let (ours, peer) = UnixStream::pair().unwrap();
        peer.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let dev = Net::new(NetConfig {
            mac: MAC,
            backend: with_backend.then(|| Backend::Stream(Arc::new(ours))),
        })
        .unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let mut queues = Vec::new();
        let mut rings = [(0, 0, 0); 2];
        for (q, ring) in rings.iter_mut().enumerate() {
            let mock = MockSplitQueue::create(&mem, GuestAddress(q as u64 * 0x8000), QSIZE);
            *ring = (
                mock.desc_table_addr().0,
                mock.avail_addr().0,
                mock.used_addr().0,
            );
            queues.push(mock.create_queue::<Queue>().unwrap());
        }
        let evts: Vec<EventFd> = (0..2)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let kicks = evts.iter().map(|e| e.try_clone().unwrap()).collect();
        let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap(), 5));
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        dev.lock()
            .unwrap()
            .activate(ActivateContext {
                mem: mem.clone(),
                queues,
                queue_evts: evts,
                interrupt: irq.clone(),
                acked_features: features,
            })
            .unwrap();
        let mut h = Self {
            mem,
            rings,
            avail_idx: [0; 2],
            used_seen: [0; 2],
            next_desc: [0; 2],
            kicks,
            dev,
            em,
            irq,
            peer: with_backend.then_some(peer),
        };
        h.pump();
        h
    }

    fn pump(&mut self) {
        let mut idle = 0;
        for _ in 0..1000 {
            if self.em.run_with_timeout(5).unwrap() == 0 {
                idle += 1;
                if idle == 3 {
                    return;
                }
            } else {
                idle = 0;
            }
        }
        panic!("event loop never went idle");
    }

    /// Makes a chain of `(addr, len, flags)` available on queue `q`.
    fn push(&mut self, q: usize, descs: &[(u64, u32, u16)]) -> u16 {
        let (table, avail, _) = self.rings[q];
        let head = self.next_desc[q];
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = (head + i as u16) % QSIZE;
            let last = i + 1 == descs.len();
            let (flags, next) = if last {
                (flags, 0)
            } else {
                (flags | VRING_DESC_F_NEXT as u16, (idx + 1) % QSIZE)
            };
            let d = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
            self.mem
                .write_obj(d, GuestAddress(table + 16 * u64::from(idx)))
                .unwrap();
        }
        self.next_desc[q] = (head + descs.len() as u16) % QSIZE;
        let i = self.avail_idx[q];
        self.mem
            .write_obj(head, GuestAddress(avail + 4 + 2 * u64::from(i % QSIZE)))
            .unwrap();
        self.avail_idx[q] = i.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx[q], GuestAddress(avail + 2))
            .unwrap();
        self.kicks[q].write(1).unwrap();
        head
    }

    fn used(&mut self, q: usize) -> Vec<(u16, u32)> {
        let (_, _, used) = self.rings[q];
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen[q] != idx {
            let at = used + 4 + 8 * u64::from(self.used_seen[q] % QSIZE);
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id as u16, len));
            self.used_seen[q] = self.used_seen[q].wrapping_add(1);
        }
        out
    }

    /// Puts header + frame at tx slot `slot` and sends it in one descriptor.
    fn send(&mut self, slot: u64, hdr: [u8; HDR_SIZE], frame: &[u8]) -> u16 {
        let addr = TX_AREA + slot * SLOT;
        self.mem.write_slice(&hdr, GuestAddress(addr)).unwrap();
        self.mem
            .write_slice(frame, GuestAddress(addr + HDR_SIZE as u64))
            .unwrap();
        self.push(TX, &[(addr, (HDR_SIZE + frame.len()) as u32, 0)])
    }

    /// Reads one length-prefixed frame the backend received.
    fn backend_frame(&mut self) -> Option<Vec<u8>> {
        let peer = self.peer.as_mut()?;
        let mut len = [0u8; 4];
        peer.read_exact(&mut len).ok()?;
        let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
        peer.read_exact(&mut f).ok()?;
        Some(f)
    }

    fn backend_send(&mut self, frame: &[u8]) {
        let peer = self.peer.as_mut().unwrap();
        peer.write_all(&(frame.len() as u32).to_be_bytes()).unwrap();
        peer.write_all(frame).unwrap();
    }

    fn counters(&self) -> NetCounters {
        self.dev.lock().unwrap().counters()
    }
}

fn eth_frame(len: usize, fill: u8) -> Vec<u8> {
    let mut f = vec![fill; len];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&MAC);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f
}

fn plain_hdr() -> [u8; HDR_SIZE] {
    [0; HDR_SIZE]
}

/// Sum of 16-bit big-endian words, folded; 0xffff means "checksum ok".
fn folded_sum(b: &[u8]) -> u16 {
    let mut s: u64 = b
        .chunks(2)
        .map(|w| u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

#[test]
fn config_space_holds_the_mac_and_features_are_modern() {
    let h = Harness::new(true, VIRTIO_F_VERSION_1);
    let dev = h.dev.lock().unwrap();
    let mut mac = [0u8; 6];
    dev.read_config(0, &mut mac);
    assert_eq!(mac, MAC);
    let mut beyond = [0xaau8; 4];
    dev.read_config(6, &mut beyond);
    assert_eq!(beyond, [0; 4]);
    assert_ne!(dev.features() & VIRTIO_F_VERSION_1, 0);
    assert_eq!(dev.device_type(), device_type::NET);
    assert_eq!(format_mac(&MAC), "02:48:55:4c:4c:01");
    assert!(Net::new(NetConfig {
        mac: [1, 0, 0, 0, 0, 0],
        backend: None
    })
    .is_err());
}

#[test]
fn guest_frames_reach_the_backend_without_the_header() {
    let mut h = Harness::new(true, VIRTIO_F_VERSION_1);
    let f1 = eth_frame(60, 0x11);
    let f2 = eth_frame(1514, 0x22);
    let a = h.send(0, plain_hdr(), &f1);
    let b = h.send(1, plain_hdr(), &f2);
    h.pump();
    assert_eq!(h.backend_frame().unwrap(), f1);
    assert_eq!(h.backend_frame().unwrap(), f2);
    assert_eq!(h.used(TX), vec![(a, 0), (b, 0)]);
    assert!(h.irq.irqfd().read().unwrap() >= 1);
    assert_eq!(h.counters().tx_frames, 2);
}

#[test]
fn a_frame_spread_over_descriptors_is_joined() {
    let mut h = Harness::new(true, VIRTIO_F_VERSION_1);
    let frame = eth_frame(100, 0x33);
    let addr = TX_AREA;
    h.mem.write_slice(&plain_hdr(), GuestAddress(addr)).unwrap();
    h.mem
        .write_slice(&frame[..30], GuestAddress(addr + 0x100))
        .unwrap();
    h.mem
        .write_slice(&frame[30..], GuestAddress(addr + 0x200))
        .unwrap();
    h.push(
        TX,
        &[
            (addr, HDR_SIZE as u32, 0),
            (addr + 0x100, 30, 0),
            (addr + 0x200, 70, 0),
        ],
    );
    h.pump();
    assert_eq!(h.backend_frame().unwrap(), frame);
}

#[test]
fn a_checksum_left_to_the_device_is_finished() {
    let mut h = Harness::new(true, VIRTIO_F_VERSION_1 | (1 << VIRTIO_NET_F_CSUM));
    // Ethernet + IPv4 (20) + UDP (8) + 11 bytes of payload (odd length).
    let mut frame = eth_frame(14 + 20 + 8 + 11, 0x5a);
    let l4 = 34;
    frame[l4 + 6..l4 + 8].copy_from_slice(&[0x12, 0x34]); // pseudo-header sum
    let mut hdr = plain_hdr();
    hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    hdr[6..8].copy_from_slice(&(l4 as u16).to_le_bytes());
    hdr[8..10].copy_from_slice(&6u16.to_le_bytes());
    h.send(0, hdr, &frame);
    h.pump();
    let out = h.backend_frame().unwrap();
    assert_eq!(out[..l4], frame[..l4], "bytes before csum_start untouched");
    // The checksum field now makes the whole range sum to 0xffff, given
    // the pseudo-header sum it replaced.
    let mut check = vec![0x12, 0x34];
    check.extend_from_slice(&out[l4..]);
    assert_eq!(folded_sum(&check), 0xffff);
}

#[test]
fn finish_checksum_checks_its_range() {
    let mut f = vec![0u8; 40];
    assert!(finish_checksum(&mut f, 30, 6).is_ok());
    assert!(matches!(
        finish_checksum(&mut f, 30, 9),
        Err(FrameError::ChecksumRange { .. })
    ));
    assert!(finish_checksum(&mut f, 41, 0).is_err());
    assert!(finish_checksum(&mut f, usize::MAX, usize::MAX).is_err());
}

#[test]
fn malformed_tx_chains_are_dropped_and_returned() {
    let mut h = Harness::new(true, VIRTIO_F_VERSION_1);
    let good = eth_frame(60, 0x44);
    // Write-only descriptor.
    let addr = TX_AREA;
    h.mem.write_slice(&plain_hdr(), GuestAddress(addr)).unwrap();
    h.mem
        .write_slice(&good, GuestAddress(addr + HDR_SIZE as u64))
        .unwrap();
    let mut heads = vec![h.push(TX, &[(addr, 72, W)])];
    // Shorter than header + Ethernet header.
    heads.push(h.push(TX, &[(addr, (HDR_SIZE + 13) as u32, 0)]));
    // Outside guest memory, and straddling its end.
    heads.push(h.push(TX, &[(MEM_SIZE as u64 + 0x1000, 100, 0)]));
    heads.push(h.push(TX, &[(MEM_SIZE as u64 - 10, 100, 0)]));
    heads.push(h.push(TX, &[(u64::MAX - 8, 100, 0)]));
    // Longer than any frame.
    heads.push(h.push(
        TX,
        &[(addr, 0x8000, 0), (addr, 0x8000, 0), (addr, 0x8000, 0)],
    ));
    // Segmentation asked for but not offered.
    let mut gso = plain_hdr();
    gso[1] = 1;
    heads.push(h.send(1, gso, &good));
    // Checksum position outside the frame.
    let mut csum = plain_hdr();
    csum[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    csum[6..8].copy_from_slice(&59u16.to_le_bytes());
    csum[8..10].copy_from_slice(&16u16.to_le_bytes());
    heads.push(h.send(2, csum, &good));
    // Then a good frame still goes through.
    heads.push(h.send(3, plain_hdr(), &good));
    h.pump();
    assert_eq!(h.backend_frame().unwrap(), good);
    assert!(
        h.backend_frame().is_none(),
        "nothing else reached the backend"
    );
    let used: Vec<u16> = h.used(TX).into_iter().map(|(id, _)| id).collect();
    assert_eq!(used, heads, "every chain is given back");
    let c = h.counters();
    assert_eq!((c.tx_frames, c.tx_dropped), (1, heads.len() as u64 - 1));
}

#[test]
fn a_descriptor_loop_does_not_hang_the_device() {
    let mut h = Harness::new(true, VIRTIO_F_VERSION_1);
    let (table, _, _) = h.rings[TX];
    // Descriptor 0 points to itself: the walk ends after a queue's worth
    // of descriptors, and that much is more than a frame.
    let d = RawDescriptor::from(Descriptor::new(
        TX_AREA,
        0x1000,
        VRING_DESC_F_NEXT as u16,
        0,
    ));
    h.mem.write_obj(d, GuestAddress(table)).unwrap();
    let avail = h.rings[TX].1;
    h.mem.write_obj(0u16, GuestAddress(avail + 4)).unwrap();
    h.mem.write_obj(1u16, GuestAddress(avail + 2)).unwrap();
    h.avail_idx[TX] = 1;
    h.next_desc[TX] = 1;
    h.kicks[TX].write(1).unwrap();
    h.pump();
    assert!(h.backend_frame().is_none());
    assert_eq!(h.counters().tx_dropped, 1);
}

#[test]
fn backend_frames_fill_rx_buffers_behind_a_header() {
    let mut h = Harness::new(true, VIRTIO_F_VERSION_1 | (1 << VIRTIO_NET_F_GUEST_CSUM));
    let a = h.push(RX, &[(RX_AREA, 2048, W)]);
    // A buffer split in two, header apart.
    let b = h.push(
        RX,
        &[
            (RX_AREA + SLOT, HDR_SIZE as u32, W),
            (RX_AREA + SLOT + 0x100, 2000, W),
        ],
    );
    let f1 = eth_frame(42, 0x66);
    let f2 = eth_frame(1514, 0x77);
    h.backend_send(&f1);
    h.backend_send(&f2);
    h.pump();
    let used = h.used(RX);
    assert_eq!(
        used,
        vec![
            (a, (HDR_SIZE + f1.len()) as u32),
            (b, (HDR_SIZE + f2.len()) as u32)
        ]
    );
    let mut hdr = [0u8; HDR_SIZE];
    h.mem.read_slice(&mut hdr, GuestAddress(RX_AREA)).unwrap();
    assert_eq!(hdr[0], VIRTIO_NET_HDR_F_DATA_VALID as u8);
    assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 1, "num_buffers");
    let mut got = vec![0u8; f1.len()];
    h.mem
        .read_slice(&mut got, GuestAddress(RX_AREA + HDR_SIZE as u64))
        .unwrap();
    assert_eq!(got, f1);
    let mut got = vec![0u8; f2.len()];
    h.mem
        .read_slice(&mut got, GuestAddress(RX_AREA + SLOT + 0x100))
        .unwrap();
    assert_eq!(got, f2);
}

#[test]
fn frames_wait_for_rx_buffers() {
    let mut h = Harness::new(true, VIRTIO_F_VERSION_1);
    let f = eth_frame(64, 0x12);
    for _ in 0..3 {
        h.backend_send(&f);
    }
    h.pump();
    assert!(h.used(RX).is_empty());
    for i in 0..3 {
        h.push(RX, &[(RX_AREA + i * SLOT, 2048, W)]);
    }
    h.pump();
    assert_eq!(h.used(RX).len(), 3);
    assert_eq!(h.counters().rx_frames, 3);
}

#[test]
fn malformed_rx_buffers_lose_one_frame_each() {
    let mut h = Harness::new(true, VIRTIO_F_VERSION_1);
    let bad = [
        vec![(RX_AREA, 2048, 0)],                             // read-only
        vec![(RX_AREA, 40, W)],                               // too small
        vec![(MEM_SIZE as u64 - 100, 2048, W)],               // past memory
        vec![(RX_AREA, HDR_SIZE as u32, W), (RX_AREA, 0, W)], // no room
    ];
    let mut heads: Vec<u16> = bad.iter().map(|d| h.push(RX, d)).collect();
    heads.push(h.push(RX, &[(RX_AREA + SLOT, 2048, W)]));
    for i in 0..5u8 {
        h.backend_send(&eth_frame(100, i));
    }
    h.pump();
    let used = h.used(RX);
    let lens: Vec<u32> = used.iter().map(|&(_, l)| l).collect();
    assert_eq!(used.iter().map(|&(id, _)| id).collect::<Vec<_>>(), heads);
    assert_eq!(lens, vec![0, 0, 0, 0, (HDR_SIZE + 100) as u32]);
    let mut got = vec![0u8; 100];
    h.mem
        .read_slice(&mut got, GuestAddress(RX_AREA + SLOT + HDR_SIZE as u64))
        .unwrap();
    assert_eq!(got, eth_frame(100, 4), "the fifth frame, intact");
    assert_eq!(h.counters().rx_dropped, 4);
}

#[test]
fn a_backend_out_of_step_or_gone_takes_the_link_down() {
    let mut h = Harness::new(true, VIRTIO_F_VERSION_1);
    h.push(RX, &[(RX_AREA, 2048, W)]);
    // A length no frame has.
    h.peer.as_mut().unwrap().write_all(&[0, 2, 0, 0]).unwrap();
    h.pump();
    assert!(h.used(RX).is_empty());
    // Closing the backend: the device keeps serving the guest's tx.
    drop(h.peer.take());
    h.pump();
    assert!(!h.dev.lock().unwrap().has_backend());
    let head = h.send(0, plain_hdr(), &eth_frame(60, 1));
    h.pump();
    assert_eq!(h.used(TX), vec![(head, 0)]);
}

#[test]
fn without_a_backend_tx_is_consumed() {
    let mut h = Harness::new(false, VIRTIO_F_VERSION_1);
    let head = h.send(0, plain_hdr(), &eth_frame(60, 1));
    h.pump();
    assert_eq!(h.used(TX), vec![(head, 0)]);
    assert_eq!(h.counters().tx_dropped, 1);
}

#[test]
fn a_slow_backend_stops_tx_until_it_reads() {
    let mut h = Harness::new(true, VIRTIO_F_VERSION_1);
    let frame = eth_frame(MAX_FRAME, 0x99);
    let mut heads = Vec::new();
    for i in 0..(QSIZE as u64 / 2) {
        heads.push(h.send(i % 8, plain_hdr(), &frame));
        h.pump();
    }
    let used_early = h.used(TX).len();
    assert!(
        used_early < heads.len(),
        "the device stopped taking chains while the backend did not read"
    );
    // The backend drains (in turns with the device: one thread plays
    // both): every frame arrives, every chain comes back.
    let peer = h.peer.take().unwrap();
    peer.set_nonblocking(true).unwrap();
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    for _ in 0..10_000 {
        match (&peer).read(&mut buf) {
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(_) => h.pump(),
        }
        if bytes.len() >= heads.len() * (4 + MAX_FRAME) {
            break;
        }
    }
    assert_eq!(bytes.len(), heads.len() * (4 + MAX_FRAME));
    for f in bytes.chunks(4 + MAX_FRAME) {
        assert_eq!(&f[..4], &(MAX_FRAME as u32).to_be_bytes());
        // (Slots overlap at their ends: check the start.)
        assert!(f[4 + 14..4 + 1000].iter().all(|&b| b == 0x99));
    }
    h.pump();
    assert_eq!(used_early + h.used(TX).len(), heads.len());
}
