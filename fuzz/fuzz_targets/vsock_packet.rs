//! Fuzzes the virtio-vsock packet path through the real device and its
//! event loop. Two kinds of input, chosen by the first byte:
//!
//! - raw: the input becomes guest memory holding the rx and tx split queues
//!   (descriptor tables, avail rings with any index) and their buffers;
//! - structured: the input is a list of packets (header fields, payload,
//!   how header and payload are spread over descriptors, and one optional
//!   corruption: wrong direction, address outside memory, length beyond the
//!   buffer, a descriptor loop), sent one at a time so connections to a
//!   host listener get established and carry data, with rx buffers of
//!   varied (sometimes bad) shapes.
//!
//! Either way every tx chain is parsed and routed by the muxer and every
//! answer is written into the fuzzed rx buffers. Nothing the guest writes
//! may panic the VMM or reach outside guest memory.

#![no_main]

use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use libfuzzer_sys::fuzz_target;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::virtio::vsock::packet::{Header, HDR_SIZE};
use vmm::virtio::vsock::Vsock;
use vmm::virtio::{ActivateContext, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use vmm_sys_util::eventfd::EventFd;

const QUEUE_SIZE: u16 = 64;
/// Descriptor table, avail ring and used ring of each queue (rx, tx, event).
const QUEUES: [(u64, u64, u64); 3] = [
    (0x0000, 0x0400, 0x0600),
    (0x0a00, 0x0e00, 0x1000),
    (0x1400, 0x1800, 0x1a00),
];
const RX: usize = 0;
const TX: usize = 1;
/// Two adjacent regions, so buffers can straddle a region boundary, and a
/// small one after a hole.
const REGION: usize = 0x8000;
const FAR_REGION: u64 = 0x2_0000;
const MEM_END: u64 = 2 * REGION as u64;
/// Where structured mode puts tx packets and rx buffers.
const TX_DATA: u64 = 0x2000;
const RX_DATA: u64 = 0x7000;
const GUEST_CID: u64 = 3;
/// Host port with a listener (`<uds>_1000`); 1001 has none.
const LISTEN_PORT: u32 = 1000;

const F_WRITE: u16 = 2;
const F_NEXT: u16 = 1;
const F_INDIRECT: u16 = 4;

struct Fixture {
    dev: Arc<Mutex<Vsock>>,
    events: EventManager<Arc<Mutex<Vsock>>>,
    listener: UnixListener,
    /// Clones of the current activation's queue eventfds.
    kicks: Vec<EventFd>,
}

impl Fixture {
    /// Activates the device on the queues in `mem` (as the transport does
    /// on DRIVER_OK).
    fn activate(&mut self, mem: &GuestMemoryMmap) {
        let evts: Vec<EventFd> = (0..3)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        self.kicks = evts.iter().map(|e| e.try_clone().unwrap()).collect();
        let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap(), 5));
        self.dev
            .lock()
            .unwrap()
            .activate(ActivateContext {
                mem: mem.clone(),
                queues: QUEUES.iter().map(|&(d, a, u)| queue(d, a, u)).collect(),
                queue_evts: evts,
                interrupt,
                acked_features: VIRTIO_F_VERSION_1,
            })
            .unwrap();
    }

    /// The guest notifies the rx and tx queues.
    fn kick(&self) {
        self.kicks[RX].write(1).unwrap();
        self.kicks[TX].write(1).unwrap();
    }
}

/// One device, event loop and host listener per process: binding sockets
/// per input would cost more than the input.
static FIXTURE: Mutex<Option<Fixture>> = Mutex::new(None);

fn fixture() -> Fixture {
    let path = std::env::temp_dir().join(format!("hull-fuzz-vsock-{}.sock", std::process::id()));
    let mut lpath = path.clone().into_os_string();
    lpath.push(format!("_{LISTEN_PORT}"));
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&lpath);
    let listener = UnixListener::bind(&lpath).unwrap();
    listener.set_nonblocking(true).unwrap();
    let dev = Arc::new(Mutex::new(Vsock::new(GUEST_CID, &path).unwrap()));
    let mut events = EventManager::new().unwrap();
    events.add_subscriber(dev.clone());
    Fixture {
        dev,
        events,
        listener,
        kicks: Vec::new(),
    }
}

fn queue(desc: u64, avail: u64, used: u64) -> Queue {
    let mut q = Queue::new(QUEUE_SIZE).unwrap();
    q.set_size(QUEUE_SIZE);
    q.set_desc_table_address(Some(desc as u32), Some(0));
    q.set_avail_ring_address(Some(avail as u32), Some(0));
    q.set_used_ring_address(Some(used as u32), Some(0));
    q.set_ready(true);
    q
}

/// Reads fields off the input, yielding zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }
    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | (u16::from(self.u8()) << 8)
    }
    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }
}

/// The guest driver's view of one queue in structured mode.
struct Driver {
    desc: u64,
    avail: u64,
    next_desc: u16,
    avail_idx: u16,
}

impl Driver {
    fn new(q: usize) -> Self {
        Self {
            desc: QUEUES[q].0,
            avail: QUEUES[q].1,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    /// Writes a chain (flags as given, NEXT linking added unless `raw_next`)
    /// and makes it available.
    fn push(&mut self, mem: &GuestMemoryMmap, descs: &[(u64, u32, u16)], raw_next: Option<u16>) {
        if descs.is_empty() {
            return;
        }
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = (head + i as u16) % QUEUE_SIZE;
            let last = i + 1 == descs.len();
            let (flags, next) = match (last, raw_next) {
                (true, Some(n)) => (flags | F_NEXT, n),
                (true, None) => (flags & !F_NEXT, 0),
                (false, _) => (flags | F_NEXT, (idx + 1) % QUEUE_SIZE),
            };
            let d = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
            let _ = mem.write_obj(d, GuestAddress(self.desc + 16 * u64::from(idx)));
        }
        self.next_desc = (head + descs.len() as u16) % QUEUE_SIZE;
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % QUEUE_SIZE);
        let _ = mem.write_obj(head, GuestAddress(slot));
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let _ = mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2));
    }
}

fn run_loop(fx: &mut Fixture) {
    for _ in 0..8 {
        if fx.events.run_with_timeout(0).unwrap() == 0 {
            break;
        }
    }
    // Accept (and at once close) what the guest connected to, so the
    // listener's backlog never fills.
    while let Ok((s, _)) = fx.listener.accept() {
        drop(s);
    }
}

/// Spreads `bytes` (at `base`) over descriptors as `layout` says, then
/// applies `corrupt` to one of them.
fn tx_chain(
    base: u64,
    bytes: usize,
    layout: u8,
    split: u8,
    corrupt: u8,
    wild: u32,
) -> Vec<(u64, u32, u16)> {
    let total = bytes as u64;
    let mut descs = match layout % 4 {
        0 => vec![(base, total as u32, 0)],
        1 => vec![
            (base, HDR_SIZE as u32, 0),
            (base + HDR_SIZE as u64, (total - HDR_SIZE as u64) as u32, 0),
        ],
        2 => {
            let k = u64::from(split).min(total);
            vec![(base, k as u32, 0), (base + k, (total - k) as u32, 0)]
        }
        _ => {
            let a = u64::from(split % 32).min(total);
            let b = (a + 20).min(total);
            vec![
                (base, a as u32, 0),
                (base + a, (b - a) as u32, 0),
                (base + b, (total - b) as u32, 0),
            ]
        }
    };
    let n = descs.len();
    let victim = &mut descs[usize::from(split) % n];
    match corrupt % 8 {
        1 => victim.2 |= F_WRITE,
        2 => victim.0 = MEM_END - u64::from(wild % 64),
        3 => victim.0 = u64::MAX - u64::from(wild % 64),
        4 => victim.1 = victim.1.wrapping_add(wild),
        5 => victim.2 |= F_INDIRECT,
        _ => {}
    }
    descs
}

fn structured(mem: &GuestMemoryMmap, fx: &mut Fixture, mut input: Input) {
    let mut rx = Driver::new(RX);
    let mut tx = Driver::new(TX);
    // rx buffers: mostly good, in one or two descriptors, some bad.
    let shapes = input.u32();
    for i in 0..32u64 {
        let addr = RX_DATA + i * 0x180;
        let shape = (shapes >> (i % 16 * 2)) & 3;
        let descs = match shape {
            0 => vec![(addr, 0x180, F_WRITE)],
            1 => vec![
                (addr, HDR_SIZE as u32, F_WRITE),
                (addr + 0x40, 0x140, F_WRITE),
            ],
            2 if i % 5 == 0 => vec![(addr, 20, F_WRITE)],
            2 => vec![(addr, 0x100, F_WRITE), (addr + 0x100, 0x80, F_WRITE)],
            _ if i % 7 == 0 => vec![(addr, 0x180, 0)],
            _ => vec![(addr, 0x180, F_WRITE)],
        };
        rx.push(mem, &descs, None);
    }
    fx.activate(mem);

    let mut slot = 0u64;
    while !input.is_empty() && slot < 24 {
        let ctrl = input.u8();
        let corrupt = input.u8();
        let split = input.u8();
        let wild = input.u32();
        let mut raw = [0u8; HDR_SIZE];
        let got = input.bytes(HDR_SIZE);
        raw[..got.len()].copy_from_slice(got);
        let mut hdr = Header::from_bytes(&raw);
        let plen = usize::from(input.u8()) * 2;
        let payload = input.bytes(plen).to_vec();
        if ctrl & 0x10 == 0 {
            // Mostly sane headers, so packets reach the connections.
            hdr.src_cid = GUEST_CID;
            hdr.dst_cid = 2;
            hdr.type_ = 1;
            hdr.op %= 8;
            hdr.src_port %= 4;
            hdr.dst_port = LISTEN_PORT + hdr.dst_port % 2;
            if ctrl & 0x20 == 0 {
                hdr.len = payload.len() as u32;
            }
            if ctrl & 0x40 == 0 {
                hdr.buf_alloc = 1 << 16;
            }
        }
        let base = TX_DATA + slot * 0x280;
        slot += 1;
        let _ = mem.write_slice(&hdr.to_bytes(), GuestAddress(base));
        let _ = mem.write_slice(&payload, GuestAddress(base + HDR_SIZE as u64));
        let descs = tx_chain(base, HDR_SIZE + payload.len(), ctrl, split, corrupt, wild);
        let loop_to = (corrupt % 8 == 6).then_some(tx.next_desc);
        tx.push(mem, &descs, loop_to);
        fx.kick();
        run_loop(fx);
    }
}

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION),
        (GuestAddress(REGION as u64), REGION),
        (GuestAddress(FAR_REGION), 0x1000),
    ])
    .unwrap();
    let mut guard = FIXTURE.lock().unwrap_or_else(|p| p.into_inner());
    let fx = guard.get_or_insert_with(fixture);
    // Start from a clean device: no connections left by the last input.
    fx.dev.lock().unwrap().reset();
    run_loop(fx);

    let mut input = Input(data);
    if input.u8() & 1 == 0 {
        structured(&mem, fx, input);
        return;
    }
    let rest = input.bytes(data.len());
    let n = rest.len().min(2 * REGION);
    mem.write_slice(&rest[..n], GuestAddress(0)).unwrap();
    if rest.len() > n {
        let m = (rest.len() - n).min(0x1000);
        mem.write_slice(&rest[n..n + m], GuestAddress(FAR_REGION))
            .unwrap();
    }
    fx.activate(&mem);
    fx.kick();
    run_loop(fx);
});
