//! End-to-end tests without a VM: the test plays the guest driver through
//! queues in mock guest memory and the host through real Unix sockets,
//! while an `EventManager` in the test thread drives the device.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::packet::{op, Header, HDR_SIZE, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::*;

const CID: u64 = 3;
const QSIZE: u16 = 256;
const RX_PAYLOAD: u32 = 4096;
const RX_AREA: u64 = 0x10_0000;
const TX_AREA: u64 = 0x40_0000;
const TX_SLOT: u64 = 0x11000;
const MEM_SIZE: usize = 0x100_0000;

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

fn socket_path(name: &str) -> PathBuf {
    let n = UNIQUE.fetch_add(1, Ordering::SeqCst);
    let p = std::env::temp_dir().join(format!("hull-vsock-{}-{n}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

#[derive(Clone, Copy)]
struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
}

/// The guest driver's side of the three queues.
struct Guest {
    mem: GuestMemoryMmap,
    rings: [Ring; 3],
    next_head: [u16; 3],
    avail_idx: [u16; 3],
    used_seen: [u16; 3],
    rx_layout: HashMap<u16, Vec<(u64, u32)>>,
    kicks: Vec<EventFd>,
}

impl Guest {
    fn alloc_head(&mut self, q: usize) -> u16 {
        // Even heads only, so a chain may use the following descriptor too.
        let h = self.next_head[q];
        self.next_head[q] = (h + 2) % QSIZE;
        assert!(
            q != RX || !self.rx_layout.contains_key(&h),
            "rx head reused"
        );
        h
    }

    fn put_desc(&self, q: usize, i: u16, addr: u64, len: u32, flags: u32, next: u16) {
        let d = RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next));
        self.mem
            .write_obj(d, GuestAddress(self.rings[q].desc + 16 * u64::from(i)))
            .unwrap();
    }

    fn publish(&mut self, q: usize, head: u16) {
        let r = self.rings[q];
        let idx = self.avail_idx[q];
        self.mem
            .write_obj(head, GuestAddress(r.avail + 4 + 2 * u64::from(idx % QSIZE)))
            .unwrap();
        self.avail_idx[q] = idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx[q], GuestAddress(r.avail + 2))
            .unwrap();
        self.kicks[q].write(1).unwrap();
    }

    fn used(&mut self, q: usize) -> Vec<(u16, u32)> {
        let r = self.rings[q];
        let idx: u16 = self.mem.read_obj(GuestAddress(r.used + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen[q] != idx {
            let at = r.used + 4 + 8 * u64::from(self.used_seen[q] % QSIZE);
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id as u16, len));
            self.used_seen[q] = self.used_seen[q].wrapping_add(1);
        }
        out
    }
}

struct Harness {
    guest: Guest,
    dev: Arc<Mutex<Vsock>>,
    em: EventManager<Arc<Mutex<Vsock>>>,
    path: PathBuf,
    irq: Arc<Interrupt>,
}

fn hdr(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 256 * 1024,
        fwd_cnt: 0,
    }
}

impl Harness {
    fn new(name: &str) -> Self {
        let path = socket_path(name);
        let dev = Arc::new(Mutex::new(Vsock::new(CID, &path).unwrap()));
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let mut queues = Vec::new();
        let mut rings = [Ring {
            desc: 0,
            avail: 0,
            used: 0,
        }; 3];
        for (q, ring) in rings.iter_mut().enumerate() {
            let mock = MockSplitQueue::create(&mem, GuestAddress(q as u64 * 0x10000), QSIZE);
            *ring = Ring {
                desc: mock.desc_table_addr().0,
                avail: mock.avail_addr().0,
                used: mock.used_addr().0,
            };
            queues.push(mock.create_queue::<Queue>().unwrap());
        }
        let evts: Vec<EventFd> = (0..3)
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
                acked_features: VIRTIO_F_VERSION_1,
            })
            .unwrap();
        let mut h = Self {
            guest: Guest {
                mem,
                rings,
                next_head: [0; 3],
                avail_idx: [0; 3],
                used_seen: [0; 3],
                rx_layout: HashMap::new(),
                kicks,
            },
            dev,
            em,
            path,
            irq,
        };
        h.pump();
        h
    }

    /// Runs the event loop until it has been idle for a little while.
    fn pump(&mut self) {
        let mut idle = 0;
        for _ in 0..5000 {
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

    /// Offers `n` rx buffers of RX_PAYLOAD payload bytes each, header and
    /// payload in one descriptor or split in two.
    fn give_rx(&mut self, n: usize, split: bool) {
        for _ in 0..n {
            let h = self.guest.alloc_head(RX);
            let addr = RX_AREA + u64::from(h) * 0x2000;
            let layout = if split {
                self.guest.put_desc(
                    RX,
                    h,
                    addr,
                    HDR_SIZE as u32,
                    VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
                    h + 1,
                );
                self.guest
                    .put_desc(RX, h + 1, addr + 0x100, RX_PAYLOAD, VRING_DESC_F_WRITE, 0);
                vec![(addr, HDR_SIZE as u32), (addr + 0x100, RX_PAYLOAD)]
            } else {
                let len = HDR_SIZE as u32 + RX_PAYLOAD;
                self.guest.put_desc(RX, h, addr, len, VRING_DESC_F_WRITE, 0);
                vec![(addr, len)]
            };
            self.guest.rx_layout.insert(h, layout);
            self.guest.publish(RX, h);
        }
        self.pump();
    }

    /// Sends a packet (header `len` set from the payload), header and
    /// payload in one descriptor or split, and runs the loop.
    fn send(&mut self, mut h: Header, payload: &[u8], split: bool) {
        h.len = payload.len() as u32;
        self.send_raw(&h, payload, split);
    }

    fn send_raw(&mut self, h: &Header, payload: &[u8], split: bool) {
        let head = self.guest.alloc_head(TX);
        let addr = TX_AREA + u64::from(head / 2) * TX_SLOT;
        let mem = &self.guest.mem;
        mem.write_slice(&h.to_bytes(), GuestAddress(addr)).unwrap();
        if split {
            mem.write_slice(payload, GuestAddress(addr + 0x100))
                .unwrap();
            self.guest
                .put_desc(TX, head, addr, HDR_SIZE as u32, VRING_DESC_F_NEXT, head + 1);
            self.guest
                .put_desc(TX, head + 1, addr + 0x100, payload.len() as u32, 0, 0);
        } else {
            mem.write_slice(payload, GuestAddress(addr + HDR_SIZE as u64))
                .unwrap();
            let len = (HDR_SIZE + payload.len()) as u32;
            self.guest.put_desc(TX, head, addr, len, 0, 0);
        }
        self.guest.publish(TX, head);
        self.pump();
    }

    /// Sends a chain of raw descriptors on the tx queue.
    fn send_descs(&mut self, descs: &[(u64, u32, u32)]) {
        let head = self.guest.alloc_head(TX);
        assert!(descs.len() <= 2);
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let last = i + 1 == descs.len();
            let flags = if last {
                flags
            } else {
                flags | VRING_DESC_F_NEXT
            };
            self.guest
                .put_desc(TX, head + i as u16, addr, len, flags, head + i as u16 + 1);
        }
        self.guest.publish(TX, head);
        self.pump();
    }

    /// Packets the device put in the rx queue since the last call.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        for (id, len) in self.guest.used(RX) {
            let layout = self.guest.rx_layout.remove(&id).expect("unknown rx head");
            let mut bytes = Vec::new();
            for (addr, seg) in layout {
                let mut b = vec![0u8; seg as usize];
                self.guest
                    .mem
                    .read_slice(&mut b, GuestAddress(addr))
                    .unwrap();
                bytes.extend(b);
            }
            if len == 0 {
                out.push((Header::default(), Vec::new()));
                continue;
            }
            let h = Header::from_bytes(bytes[..HDR_SIZE].try_into().unwrap());
            assert_eq!(len as usize, HDR_SIZE + h.len as usize, "used length");
            let payload = bytes[HDR_SIZE..len as usize].to_vec();
            out.push((h, payload));
        }
        out
    }

    fn recv_one(&mut self) -> (Header, Vec<u8>) {
        let mut v = self.recv();
        assert_eq!(
            v.len(),
            1,
            "expected one packet, got {:?}",
            v.iter().map(|p| p.0).collect::<Vec<_>>()
        );
        v.pop().unwrap()
    }

    /// Host client: connect and complete the `CONNECT` handshake with the
    /// guest listening on `port` (the test answers as the guest). Returns
    /// the stream and the host port.
    fn host_connect(&mut self, port: u32) -> (UnixStream, u32) {
        let mut s = UnixStream::connect(&self.path).unwrap();
        s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        self.pump();
        let (req, _) = self.recv_one();
        assert_eq!(req.op, op::REQUEST);
        assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, CID));
        assert_eq!(req.dst_port, port);
        assert_eq!(req.type_, TYPE_STREAM);
        assert!(req.src_port >= 1 << 30);
        self.send(hdr(op::RESPONSE, port, req.src_port), b"", false);
        s.set_nonblocking(true).unwrap();
        let line = self.host_read_line(&mut s);
        assert_eq!(line, format!("OK {}\n", req.src_port).as_bytes());
        (s, req.src_port)
    }

    /// Reads what the host socket has (pumping the loop in between) until
    /// `want` bytes (or a line) or EOF.
    fn host_read(&mut self, s: &mut UnixStream, want: usize) -> Vec<u8> {
        self.host_read_until(s, want, false)
    }

    /// Reads one `\n`-terminated line (the `OK <port>` answer).
    fn host_read_line(&mut self, s: &mut UnixStream) -> Vec<u8> {
        self.host_read_until(s, 64, true)
    }

    fn host_read_until(&mut self, s: &mut UnixStream, want: usize, line: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        for _ in 0..200 {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if out.len() >= want || (line && out.ends_with(b"\n")) {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.pump(),
                Err(e) => panic!("host read: {e}"),
            }
        }
        out
    }

    fn host_sees_eof(&mut self, s: &mut UnixStream) -> bool {
        let mut b = [0u8; 16];
        for _ in 0..50 {
            match s.read(&mut b) {
                Ok(0) => return true,
                Ok(n) => panic!("unexpected {n} bytes"),
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.pump(),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
                Err(e) => panic!("host read: {e}"),
            }
        }
        false
    }

    fn connections(&self) -> usize {
        self.dev.lock().unwrap().connection_count()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn config_space_and_cid_checks() {
    let path = socket_path("config");
    let dev = Vsock::new(0x1_0203, &path).unwrap();
    let mut b = [0u8; 8];
    dev.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), 0x1_0203);
    let mut hi = [0xffu8; 4];
    dev.read_config(4, &mut hi);
    assert_eq!(hi, [0; 4]);
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.queue_max_sizes().len(), 3);
    assert_ne!(dev.features() & VIRTIO_F_VERSION_1, 0);
    drop(dev);
    assert!(!path.exists(), "socket file removed on drop");
    for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 40] {
        assert!(matches!(
            Vsock::new(cid, &path),
            Err(VsockError::InvalidCid(_))
        ));
    }
}

#[test]
fn socket_in_use_is_refused_and_stale_socket_replaced() {
    let path = socket_path("inuse");
    let first = Vsock::new(CID, &path).unwrap();
    let err = Vsock::new(CID, &path).unwrap_err();
    assert!(matches!(err, VsockError::SocketInUse(_)), "{err}");
    drop(first);
    // A socket file nobody listens on (a dead VMM's) is replaced.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let again = Vsock::new(CID, &path).unwrap();
    assert!(UnixStream::connect(&path).is_ok());
    drop(again);
}

#[test]
fn activation_checks_queue_count() {
    let path = socket_path("qcount");
    let mut dev = Vsock::new(CID, &path).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let err = dev
        .activate(ActivateContext {
            mem,
            queues: vec![Queue::new(QSIZE).unwrap()],
            queue_evts: vec![EventFd::new(0).unwrap()],
            interrupt: Arc::new(Interrupt::new(EventFd::new(0).unwrap(), 5)),
            acked_features: VIRTIO_F_VERSION_1,
        })
        .unwrap_err();
    assert!(matches!(err, ActivateError::QueueCount { want: 3, got: 1 }));
    assert!(!dev.is_activated());
}

#[test]
fn host_initiated_stream_both_ways_with_half_close() {
    let mut h = Harness::new("hostconn");
    h.give_rx(16, false);
    let (mut s, hp) = h.host_connect(1234);
    assert_eq!(h.connections(), 1);
    assert_ne!(h.irq.status(), 0, "the guest was interrupted");

    // Host → guest.
    s.write_all(b"ping from host").unwrap();
    h.pump();
    let (p, data) = h.recv_one();
    assert_eq!((p.op, p.src_port, p.dst_port), (op::RW, hp, 1234));
    assert_eq!((p.src_cid, p.dst_cid), (HOST_CID, CID));
    assert_eq!(data, b"ping from host");

    // Guest → host, header and payload split and in one descriptor.
    h.send(hdr(op::RW, 1234, hp), b"pong ", true);
    h.send(hdr(op::RW, 1234, hp), b"from guest", false);
    assert_eq!(h.host_read(&mut s, 15), b"pong from guest");

    // Guest half-closes: the host reads EOF but can still send.
    let mut sd = hdr(op::SHUTDOWN, 1234, hp);
    sd.flags = SHUTDOWN_SEND;
    h.send(sd, b"", false);
    assert!(h.host_sees_eof(&mut s));
    s.write_all(b"after half close").unwrap();
    h.pump();
    let (p, data) = h.recv_one();
    assert_eq!((p.op, data.as_slice()), (op::RW, &b"after half close"[..]));

    // Host closes its side: the guest gets SHUTDOWN, then (nobody sends
    // any more) an RST, and the connection is gone.
    s.shutdown(Shutdown::Write).unwrap();
    h.pump();
    let pkts = h.recv();
    let ops: Vec<(u16, u32)> = pkts.iter().map(|(p, _)| (p.op, p.flags)).collect();
    assert_eq!(ops, [(op::SHUTDOWN, SHUTDOWN_SEND), (op::RST, 0)]);
    assert_eq!(h.connections(), 0);
}

#[test]
fn host_connect_is_case_insensitive_and_bad_commands_close() {
    let mut h = Harness::new("cmds");
    h.give_rx(4, true);
    let mut s = UnixStream::connect(&h.path).unwrap();
    s.write_all(b"connect 77\n").unwrap();
    h.pump();
    let (req, _) = h.recv_one();
    assert_eq!((req.op, req.dst_port), (op::REQUEST, 77));
    // The guest refuses: the host client sees EOF without an OK.
    h.send(hdr(op::RST, 77, req.src_port), b"", false);
    s.set_nonblocking(true).unwrap();
    assert!(h.host_sees_eof(&mut s));
    assert_eq!(h.connections(), 0);

    for bad in [
        &b"HELLO 1\n"[..],
        b"CONNECT\n",
        b"CONNECT 99999999999\n",
        &[b'A'; 40],
    ] {
        let mut s = UnixStream::connect(&h.path).unwrap();
        s.write_all(bad).unwrap();
        s.set_nonblocking(true).unwrap();
        h.pump();
        assert!(
            h.host_sees_eof(&mut s),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert!(h.recv().is_empty(), "no request for bad commands");
}

#[test]
fn guest_rst_closes_host_stream() {
    let mut h = Harness::new("guestrst");
    h.give_rx(4, false);
    let (mut s, hp) = h.host_connect(50);
    h.send(hdr(op::RST, 50, hp), b"", false);
    assert!(h.host_sees_eof(&mut s));
    assert_eq!(h.connections(), 0);
}

#[test]
fn guest_initiated_connection_reaches_listener() {
    let mut h = Harness::new("guestconn");
    let mut lpath = h.path.clone().into_os_string();
    lpath.push("_5000");
    let listener = UnixListener::bind(&lpath).unwrap();
    h.give_rx(8, false);
    h.send(hdr(op::REQUEST, 7777, 5000), b"", false);
    let (resp, _) = h.recv_one();
    assert_eq!(resp.op, op::RESPONSE);
    assert_eq!((resp.src_cid, resp.dst_cid), (HOST_CID, CID));
    assert_eq!((resp.src_port, resp.dst_port), (5000, 7777));
    let (mut s, _) = listener.accept().unwrap();
    s.set_nonblocking(true).unwrap();

    h.send(hdr(op::RW, 7777, 5000), b"GET / HTTP/1.0\r\n\r\n", false);
    assert_eq!(h.host_read(&mut s, 18), b"GET / HTTP/1.0\r\n\r\n");
    s.write_all(b"HTTP/1.0 200 OK\r\n").unwrap();
    h.pump();
    let (p, data) = h.recv_one();
    assert_eq!((p.op, p.src_port, p.dst_port), (op::RW, 5000, 7777));
    assert_eq!(data, b"HTTP/1.0 200 OK\r\n");

    // The guest closes its socket: both flags; the host sees EOF and the
    // guest gets its RST.
    let mut sd = hdr(op::SHUTDOWN, 7777, 5000);
    sd.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    h.send(sd, b"", false);
    assert!(h.host_sees_eof(&mut s));
    let (rst, _) = h.recv_one();
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (op::RST, 5000, 7777));
    assert_eq!(h.connections(), 0);
    let _ = std::fs::remove_file(&lpath);
}

#[test]
fn guest_connect_without_listener_gets_rst() {
    let mut h = Harness::new("nolisten");
    h.give_rx(2, false);
    h.send(hdr(op::REQUEST, 7000, 5001), b"", false);
    let (rst, _) = h.recv_one();
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (op::RST, 5001, 7000));
    assert_eq!((rst.src_cid, rst.dst_cid), (HOST_CID, CID));
    assert_eq!(h.connections(), 0);
}

#[test]
fn stray_and_foreign_packets() {
    let mut h = Harness::new("stray");
    h.give_rx(8, false);
    // Data for a connection that does not exist: RST.
    h.send(hdr(op::RW, 1, 2), b"data", false);
    let (p, _) = h.recv_one();
    assert_eq!((p.op, p.src_port, p.dst_port), (op::RST, 2, 1));
    // An RST for nothing: silence.
    h.send(hdr(op::RST, 1, 2), b"", false);
    // A forged source CID: dropped without an answer.
    let mut forged = hdr(op::REQUEST, 1, 2);
    forged.src_cid = 9;
    h.send(forged, b"", false);
    assert!(h.recv().is_empty());
    // Not a stream (SEQPACKET), or for another CID: RST.
    let mut seq = hdr(op::REQUEST, 3, 4);
    seq.type_ = 2;
    h.send(seq, b"", false);
    let mut other = hdr(op::REQUEST, 5, 6);
    other.dst_cid = 42;
    h.send(other, b"", false);
    let got: Vec<(u16, u32)> = h.recv().iter().map(|(p, _)| (p.op, p.dst_port)).collect();
    assert_eq!(got, [(op::RST, 3), (op::RST, 5)]);
}

#[test]
fn malformed_chains_fail_only_themselves() {
    let mut h = Harness::new("malformed");
    h.give_rx(5, false);
    let addr = TX_AREA + 0x100_000;
    let mem = h.guest.mem.clone();
    let mut big = hdr(op::RW, 1, 2);
    big.len = 100;
    mem.write_slice(&big.to_bytes(), GuestAddress(addr))
        .unwrap();
    // len beyond the chain.
    h.send_descs(&[(addr, 44 + 50, 0)]);
    // len above 64 KiB.
    big.len = 70_000;
    mem.write_slice(&big.to_bytes(), GuestAddress(addr))
        .unwrap();
    h.send_descs(&[(addr, 44 + 70_000, 0)]);
    // Too short, outside memory, wrapping address, device-writable.
    h.send_descs(&[(addr, 20, 0)]);
    h.send_descs(&[(MEM_SIZE as u64 - 10, 44, 0)]);
    h.send_descs(&[(addr, 10, 0), (u64::MAX - 5, 40, 0)]);
    h.send_descs(&[(addr, 44, VRING_DESC_F_WRITE)]);
    // All consumed, none answered.
    assert_eq!(h.guest.used(TX).len(), 6);
    assert!(h.recv().is_empty());
    // A head index beyond the queue does not hold up the chains after it
    // (both made available before the device looks).
    h.guest.publish(TX, QSIZE + 44);
    h.send(hdr(op::RW, 77, 9), b"", false);
    let (p, _) = h.recv_one();
    assert_eq!((p.op, p.dst_port), (op::RST, 77));
    assert_eq!(
        h.guest.used(TX).len(),
        1,
        "only the valid chain is returned"
    );

    // Bad rx buffers come back empty; the next good one gets the packet.
    let head = h.guest.alloc_head(RX);
    h.guest.put_desc(RX, head, RX_AREA, 4096, 0, 0); // device-readable
    h.guest.rx_layout.insert(head, vec![(RX_AREA, 4096)]);
    let h2 = h.guest.alloc_head(RX);
    h.guest
        .put_desc(RX, h2, RX_AREA + 0x8000, 20, VRING_DESC_F_WRITE, 0); // too short
    h.guest.rx_layout.insert(h2, vec![(RX_AREA + 0x8000, 20)]);
    // Consume the 4 good buffers first with 4 RSTs, then offer the bad ones.
    for port in 0..4 {
        h.send(hdr(op::RW, port, 9), b"", false);
    }
    assert_eq!(h.recv().len(), 4);
    h.guest.publish(RX, head);
    h.guest.publish(RX, h2);
    h.pump();
    h.send(hdr(op::RW, 10, 9), b"", false);
    h.give_rx(1, true);
    let got: Vec<u16> = h.recv().iter().map(|(p, _)| p.op).collect();
    assert_eq!(got, [0, 0, op::RST], "two empty returns, then the RST");
}

#[test]
fn flow_control_never_overruns_guest_credit() {
    let mut h = Harness::new("credit");
    h.give_rx(4, false);
    let mut s = UnixStream::connect(&h.path).unwrap();
    s.write_all(b"CONNECT 80\n").unwrap();
    h.pump();
    let (req, _) = h.recv_one();
    let hp = req.src_port;
    // The guest has only 1000 bytes of buffer.
    let mut resp = hdr(op::RESPONSE, 80, hp);
    resp.buf_alloc = 1000;
    h.send(resp, b"", false);
    s.set_nonblocking(true).unwrap();
    assert_eq!(h.host_read_line(&mut s), format!("OK {hp}\n").as_bytes());

    let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    s.write_all(&data).unwrap();
    let mut got = Vec::new();
    let mut fwd = 0u32;
    for _ in 0..20 {
        h.give_rx(8, false);
        let mut round = 0;
        for (p, payload) in h.recv() {
            match p.op {
                op::RW => round += payload.len(),
                op::CREDIT_REQUEST => {}
                other => panic!("unexpected op {other}"),
            }
            got.extend(payload);
        }
        assert!(round <= 1000, "sent {round} bytes with 1000 of credit");
        assert_eq!(got.len() as u32, fwd + round as u32);
        // No more without new credit.
        h.give_rx(2, false);
        assert!(h.recv().iter().all(|(p, _)| p.op != op::RW));
        if got.len() == data.len() {
            break;
        }
        // The guest application consumes it all and says so.
        fwd = got.len() as u32;
        let mut cu = hdr(op::CREDIT_UPDATE, 80, hp);
        cu.buf_alloc = 1000;
        cu.fwd_cnt = fwd;
        h.send(cu, b"", false);
    }
    assert_eq!(got, data, "byte-exact after flow control");
}

#[test]
fn bulk_transfer_both_ways_is_byte_exact() {
    let mut h = Harness::new("bulk");
    h.give_rx(8, true);
    let (mut s, hp) = h.host_connect(9000);
    // Guest → host: 300 KiB in 60 KiB packets, more than our buffer, with
    // the host reading as it goes (credit keeps the guest in bounds).
    let data: Vec<u8> = (0..300 * 1024u32).map(|i| (i % 253) as u8).collect();
    let mut received = Vec::new();
    let mut fwd_seen = 0;
    for chunk in data.chunks(60 * 1024) {
        h.send(hdr(op::RW, 9000, hp), chunk, false);
        received.extend(h.host_read(&mut s, 1));
        for (p, _) in h.recv() {
            assert_eq!(p.buf_alloc, connection::CONN_BUF_SIZE);
            fwd_seen = p.fwd_cnt;
        }
    }
    while received.len() < data.len() {
        let more = h.host_read(&mut s, data.len() - received.len());
        assert!(!more.is_empty());
        received.extend(more);
    }
    assert_eq!(received, data);
    h.give_rx(4, false);
    for (p, _) in h.recv() {
        fwd_seen = p.fwd_cnt;
    }
    assert!(fwd_seen > 0, "the guest was told of freed credit");

    // Host → guest: 100 KiB arrives in rx-buffer sized packets, in order.
    let back: Vec<u8> = (0..100 * 1024u32).map(|i| (i % 241) as u8).collect();
    s.set_nonblocking(false).unwrap();
    s.write_all(&back).unwrap();
    let mut got = Vec::new();
    while got.len() < back.len() {
        h.give_rx(32, false);
        for (p, payload) in h.recv() {
            if p.op == op::RW {
                assert!(payload.len() <= RX_PAYLOAD as usize);
                got.extend(payload);
            }
        }
    }
    assert_eq!(got, back);
}

#[test]
fn credit_overrun_resets_connection() {
    let mut h = Harness::new("overrun");
    h.give_rx(4, false);
    let (mut s, hp) = h.host_connect(81);
    // Fill our whole advertised buffer while the host reads nothing, then
    // send one byte more than the credit left.
    let chunk = vec![0u8; 64 * 1024];
    for _ in 0..4 {
        h.send(hdr(op::RW, 81, hp), &chunk, false);
    }
    assert!(h.recv().iter().all(|(p, _)| p.op != op::RST));
    // Keep sending without new credit: once the host socket's own buffer
    // and ours are full, the guest is over its credit and is reset.
    let mut reset = false;
    for _ in 0..64 {
        h.give_rx(1, false);
        h.send(hdr(op::RW, 81, hp), &chunk, false);
        if h.recv().iter().any(|(p, _)| p.op == op::RST) {
            reset = true;
            break;
        }
    }
    assert!(reset, "overrun is reset");
    assert_eq!(h.connections(), 0);
    s.set_nonblocking(true).unwrap();
    // The host gets EOF (possibly after buffered bytes).
    let mut buf = vec![0u8; 65536];
    let mut eof = false;
    for _ in 0..100 {
        match s.read(&mut buf) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => h.pump(),
            Err(_) => {
                eof = true;
                break;
            }
        }
    }
    assert!(eof);
}

#[test]
fn many_concurrent_connections() {
    let mut h = Harness::new("many");
    h.give_rx(60, false);
    const N: u32 = 25;
    let mut clients = Vec::new();
    for i in 0..N {
        let mut s = UnixStream::connect(&h.path).unwrap();
        s.write_all(format!("CONNECT {}\n", 2000 + i).as_bytes())
            .unwrap();
        s.set_nonblocking(true).unwrap();
        clients.push(s);
    }
    h.pump();
    let reqs = h.recv();
    assert_eq!(reqs.len(), N as usize);
    let mut host_port = HashMap::new();
    for (r, _) in &reqs {
        assert_eq!(r.op, op::REQUEST);
        host_port.insert(r.dst_port, r.src_port);
        h.send(hdr(op::RESPONSE, r.dst_port, r.src_port), b"", false);
    }
    assert_eq!(h.connections(), N as usize);
    for (i, s) in clients.iter_mut().enumerate() {
        let hp = host_port[&(2000 + i as u32)];
        assert_eq!(h.host_read_line(s), format!("OK {hp}\n").as_bytes());
        s.write_all(format!("client {i}").as_bytes()).unwrap();
    }
    h.pump();
    h.give_rx(30, false);
    let mut seen = 0;
    for (p, data) in h.recv() {
        assert_eq!(p.op, op::RW);
        let i = p.dst_port - 2000;
        assert_eq!(data, format!("client {i}").as_bytes());
        assert_eq!(p.src_port, host_port[&p.dst_port]);
        // Echo back reversed.
        let mut rev = data.clone();
        rev.reverse();
        h.send(hdr(op::RW, p.dst_port, p.src_port), &rev, false);
        seen += 1;
    }
    assert_eq!(seen, N);
    for (i, s) in clients.iter_mut().enumerate() {
        let mut want = format!("client {i}").into_bytes();
        want.reverse();
        assert_eq!(h.host_read(s, want.len()), want);
    }
    // Clients vanish; the guest hears SHUTDOWN for each.
    drop(clients);
    h.pump();
    let shutdowns = h
        .recv()
        .iter()
        .filter(|(p, _)| p.op == op::SHUTDOWN)
        .count();
    assert_eq!(shutdowns, N as usize);
}

#[test]
fn reset_drops_connections_and_reactivation_works() {
    let mut h = Harness::new("reset");
    h.give_rx(4, false);
    let (mut s, _) = h.host_connect(60);
    assert!(h.dev.lock().unwrap().reset());
    h.pump();
    assert!(h.host_sees_eof(&mut s));
    assert_eq!(h.connections(), 0);
    assert!(!h.dev.lock().unwrap().is_activated());
}

/// After a restore the driver is told its transport was reset (its
/// sockets were connected to a VMM that is gone), in the first event
/// buffer it offers; nothing reaches its rx queue until it has handled
/// the event (it gives the buffer back), so a new connection's request is
/// never reset with the old ones.
#[test]
fn restore_resets_the_transport_before_new_connections() {
    const EVENT_AREA: u64 = 0x80_0000;
    let mut h = Harness::new("restored");
    h.give_rx(4, false);
    h.dev.lock().unwrap().restored();
    // A host client connects before the driver has an event buffer.
    let mut s = UnixStream::connect(&h.path).unwrap();
    s.write_all(b"CONNECT 1234\n").unwrap();
    h.pump();
    assert!(h.recv().is_empty(), "rx before the reset was told");

    // The driver offers event buffers (it keeps several posted): the
    // first gets the reset event.
    let head = h.guest.alloc_head(EVENT);
    h.guest
        .mem
        .write_obj(0xffff_ffffu32, GuestAddress(EVENT_AREA))
        .unwrap();
    h.guest
        .put_desc(EVENT, head, EVENT_AREA, 4, VRING_DESC_F_WRITE, 0);
    let spare = h.guest.alloc_head(EVENT);
    h.guest
        .put_desc(EVENT, spare, EVENT_AREA + 0x100, 4, VRING_DESC_F_WRITE, 0);
    h.guest.publish(EVENT, head);
    h.guest.publish(EVENT, spare);
    h.pump();
    assert_eq!(h.guest.used(EVENT), vec![(head, 4)]);
    let id: u32 = h.guest.mem.read_obj(GuestAddress(EVENT_AREA)).unwrap();
    assert_eq!(u32::from_le(id), 0, "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET");
    assert!(
        h.recv().is_empty(),
        "rx before the driver handled the reset"
    );
    // A notification without a new buffer (restore notifies every queue
    // once), with a spare buffer still posted, is not the driver's answer.
    h.guest.kicks[EVENT].write(1).unwrap();
    h.pump();
    assert!(h.recv().is_empty(), "rx on a bare notification");

    // It handled it (the buffer comes back): the request goes through.
    let again = h.guest.alloc_head(EVENT);
    h.guest
        .put_desc(EVENT, again, EVENT_AREA, 4, VRING_DESC_F_WRITE, 0);
    h.guest.publish(EVENT, again);
    h.pump();
    let (req, _) = h.recv_one();
    assert_eq!((req.op, req.dst_port), (op::REQUEST, 1234));
    // One reset per restore.
    assert!(h.guest.used(EVENT).is_empty());
}

#[test]
fn snapshot_waits_for_open_connections_and_refuses_after_its_timeout() {
    use crate::snapshot::{QuiesceStep, Quiescence, SnapshotError, QUIESCE_TIMEOUT};
    use std::time::Instant;
    let mut h = Harness::new("quiesce");
    h.give_rx(16, false);
    let t0 = Instant::now();
    let wait = Quiescence::new(t0);
    let step = |h: &Harness, at| wait.step(h.dev.lock().unwrap().open_connections(), at);
    assert_eq!(step(&h, t0).unwrap(), QuiesceStep::Save, "nothing open");

    // A host client that has not sent its CONNECT line is open too.
    let idle = UnixStream::connect(&h.path).unwrap();
    h.pump();
    assert_eq!(step(&h, t0).unwrap(), QuiesceStep::Wait);
    drop(idle);
    h.pump();
    assert_eq!(step(&h, t0).unwrap(), QuiesceStep::Save);

    // The host closes an established connection: it stays open until the
    // guest answers the device's SHUTDOWN with its RST.
    let (s, hp) = h.host_connect(77);
    drop(s);
    h.pump();
    let (sd, _) = h.recv_one();
    assert_eq!((sd.op, sd.dst_port), (op::SHUTDOWN, 77));
    assert_eq!(step(&h, t0).unwrap(), QuiesceStep::Wait);
    let refused = step(&h, t0 + QUIESCE_TIMEOUT).unwrap_err();
    assert!(matches!(refused, SnapshotError::ConnectionsOpen(1)));
    assert_eq!(
        refused.to_string(),
        "snapshot refused: 1 vsock connection(s) still open"
    );
    h.send(hdr(op::RST, 77, hp), b"", false);
    assert_eq!(step(&h, t0 + QUIESCE_TIMEOUT).unwrap(), QuiesceStep::Save);
}
