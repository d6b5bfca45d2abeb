//! Attacks on the virtio-vsock device: floods of connection requests the
//! host refuses while the guest takes none of the answers, RST floods,
//! packets with lying lengths and forged addresses, credit abuse, a
//! notify storm; then the device must still answer.

use std::io;

use crate::dma::{self, Page};
use crate::mmio::{self, Device, Queue, F_NEXT, F_WRITE};
use crate::report::Report;

const VIRTIO_ID_VSOCK: u32 = 19;
const RX: u32 = 0;
const TX: u32 = 1;
const EVENT: u32 = 2;
const QSIZE: u16 = 16;
const HDR: usize = 44;
const HOST_CID: u64 = 2;

const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;
const TYPE_STREAM: u16 = 1;

/// A packet header, as the guest may write it.
#[derive(Clone, Copy)]
struct Hdr {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    type_: u16,
    op: u16,
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl Hdr {
    fn to(guest: u64, port: u32, op: u16) -> Self {
        Self {
            src_cid: guest,
            dst_cid: HOST_CID,
            src_port: 40_000,
            dst_port: port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 65536,
            fwd_cnt: 0,
        }
    }

    fn bytes(&self) -> [u8; HDR] {
        let mut b = [0u8; HDR];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// The host writer's bytes as the guest received them: every payload
/// byte must be the writer's 0x42 and the lengths must add up (a lost or
/// torn packet under stress would show here: docs/unpack.md's old broken
/// stream).
#[derive(Default)]
struct StreamCheck {
    bytes: u64,
    bad_bytes: u64,
    bad_lengths: u64,
    bad_heads: u64,
}

impl StreamCheck {
    fn check(&mut self, page: &Page, hdr: &[u8; HDR], used_len: u32) {
        let len = u32::from_le_bytes([hdr[24], hdr[25], hdr[26], hdr[27]]);
        if len as usize > dma::PAGE - HDR || used_len != HDR as u32 + len {
            self.bad_lengths += 1;
            return;
        }
        let mut payload = vec![0u8; len as usize];
        page.read(HDR, &mut payload);
        self.bytes += u64::from(len);
        self.bad_bytes += payload.iter().filter(|&&b| b != 0x42).count() as u64;
    }
}

struct Vsock {
    stream: StreamCheck,
    dev: Device,
    rx: Queue,
    tx: Queue,
    /// Never used, but the device holds its address: kept mapped.
    _event: Queue,
    /// Tx headers: slot i at i * 64 of this page.
    tx_page: Page,
    rx_pages: Vec<Page>,
    guest_cid: u64,
}

impl Vsock {
    /// Sends `pkts` (header + descriptor length for the header), 16 at a
    /// time, each batch waited for.
    fn send(&mut self, pkts: &[(Hdr, u32, u16)]) -> usize {
        let mut used = 0;
        for batch in pkts.chunks(usize::from(QSIZE)) {
            let want = self.tx.used_idx().wrapping_add(batch.len() as u16);
            for (i, (hdr, len, flags)) in batch.iter().enumerate() {
                self.tx_page.write(i * 64, &hdr.bytes());
                self.tx.set_desc(
                    i as u16,
                    self.tx_page.gpa + (i * 64) as u64,
                    *len,
                    *flags,
                    0,
                );
                self.tx.push(i as u16);
            }
            self.dev.notify(TX);
            if self.tx.wait_used(want, 2000) {
                used += batch.len();
            }
        }
        used
    }

    /// Keeps every rx buffer posted and counts the packets the device
    /// delivers until it stays quiet for `quiet_ms`; returns (packets, RSTs).
    /// Buffers are used in the order they were made available, so the one
    /// of available index n is descriptor and page n % 16.
    /// Counting starts at used index `from` (packets may have arrived in
    /// buffers posted earlier).
    fn drain_rx(&mut self, from: u16, quiet_ms: u64, max_rounds: usize) -> Vec<u16> {
        let mut ops = Vec::new();
        let mut before = from;
        // A host that never stops writing must not keep us here forever.
        for round in 0..max_rounds {
            // Read what arrived before a buffer is posted again (a used
            // buffer's page is the next one to be reused).
            let now = self.rx.used_idx();
            let got = now.wrapping_sub(before);
            for k in 0..got {
                let (head, used_len) = self.rx.used_elem(before.wrapping_add(k));
                let mut hdr = [0u8; HDR];
                let Some(page) = self.rx_pages.get(head as usize) else {
                    self.stream.bad_heads += 1;
                    continue;
                };
                page.read(0, &mut hdr);
                let op = u16::from_le_bytes([hdr[30], hdr[31]]);
                if op == OP_RW {
                    self.stream.check(page, &hdr, used_len);
                }
                ops.push(op);
            }
            before = now;
            if got == 0 && round > 0 {
                break;
            }
            while self.rx.avail_idx().wrapping_sub(self.rx.used_idx()) < QSIZE {
                let i = self.rx.avail_idx() % QSIZE;
                let page = &self.rx_pages[usize::from(i)];
                page.write(0, &[0; HDR]);
                self.rx.set_desc(i, page.gpa, 4096, F_WRITE, 0);
                self.rx.push(i);
            }
            self.dev.notify(RX);
            std::thread::sleep(std::time::Duration::from_millis(quiet_ms));
        }
        ops
    }
}

fn count(ops: &[u16], op: u16) -> usize {
    ops.iter().filter(|&&o| o == op).count()
}

fn open(r: &mut Report) -> io::Result<Vsock> {
    let dev = mmio::find(VIRTIO_ID_VSOCK, 0)?;
    let guest_cid =
        u64::from(dev.read(mmio::REG_CONFIG)) | (u64::from(dev.read(mmio::REG_CONFIG + 4)) << 32);
    r.line(&format!(
        "vsock: driving {} (CID {guest_cid}) from user space",
        dev.name
    ));
    let rx = Queue::new(QSIZE)?;
    let tx = Queue::new(QSIZE)?;
    let event = Queue::new(QSIZE)?;
    // Only the tx queue set up: activation must fail, not the VMM.
    r.line("vsock: queues made");
    dev.negotiate();
    r.line("vsock: negotiated");
    dev.set_queue(TX, &tx);
    r.check("vsock-refuses-a-missing-queue", !dev.driver_ok());
    r.attack("vsock", "activation with one of three queues");
    let ok = dev.negotiate() && {
        dev.set_queue(RX, &rx);
        dev.set_queue(TX, &tx);
        dev.set_queue(EVENT, &event);
        dev.driver_ok()
    };
    r.check("vsock-driven-from-user-space", ok);
    Ok(Vsock {
        stream: StreamCheck::default(),
        dev,
        rx,
        tx,
        _event: event,
        tx_page: dma::pages(1)?.pop().expect("page"),
        rx_pages: dma::pages(usize::from(QSIZE))?,
        guest_cid,
    })
}

/// Packets no driver should send, one at a time: lying lengths, forged
/// addresses, nonsense types, traffic for no connection, broken chains.
fn malformed_packets(v: &mut Vsock, r: &mut Report) {
    let g = v.guest_cid;
    let h = HDR as u32;
    let mut lying = Hdr::to(g, 5000, OP_RW);
    lying.len = 0x7fff_ffff;
    let mut forged = Hdr::to(g, 5000, OP_REQUEST);
    forged.src_cid = HOST_CID;
    let mut nobody = Hdr::to(g, 5000, OP_REQUEST);
    nobody.dst_cid = 0xffff_ffff_ffff;
    let mut odd = Hdr::to(g, 5000, 99);
    odd.type_ = 99;
    let mut credit = Hdr::to(g, 5000, OP_CREDIT_UPDATE);
    credit.buf_alloc = u32::MAX;
    credit.fwd_cnt = u32::MAX;
    let cases = [
        ("payload length 2 GiB in a 44-byte chain", lying, h, 0),
        ("source CID forged as the host's", forged, h, 0),
        ("destination CID of nobody", nobody, h, 0),
        ("unknown type and op", odd, h, 0),
        ("credit update for no connection", credit, h, 0),
        ("data for no connection", Hdr::to(g, 5001, OP_RW), h, 0),
        ("header of 10 bytes", Hdr::to(g, 5002, OP_REQUEST), 10, 0),
        (
            "header the device should write",
            Hdr::to(g, 5003, OP_REQUEST),
            h,
            F_WRITE,
        ),
        (
            "header chained to nothing",
            Hdr::to(g, 5004, OP_REQUEST),
            h,
            F_NEXT,
        ),
    ];
    for (name, hdr, len, flags) in cases {
        v.send(&[(hdr, len, flags)]);
        r.attack("vsock", name);
    }
}

/// Host port the test listens on: it writes to the connection as fast as
/// the VMM takes the bytes.
const HOST_WRITER_PORT: u32 = 5000;

/// A live connection to the host's writer whose credit the guest abuses:
/// it advertises 4 GiB of buffer but takes no packets for 3 s, claims to
/// have consumed more than it was sent, and sends data with a lying
/// length. The VMM must hold no more of the host's bytes than the guest
/// takes (the test watches its memory) and keep serving.
fn credit_abuse(v: &mut Vsock, r: &mut Report) {
    let g = v.guest_cid;
    let h = HDR as u32;
    let mut req = Hdr::to(g, HOST_WRITER_PORT, OP_REQUEST);
    req.src_port = 41_000;
    req.buf_alloc = u32::MAX;
    let from = v.rx.used_idx();
    v.send(&[(req, h, 0)]);
    // The response, and the first data (every buffer filled once).
    let ops = v.drain_rx(from, 500, 64);
    r.check(
        "vsock-connects-to-a-host-listener",
        count(&ops, OP_RESPONSE) == 1,
    );
    r.figure(
        "vsock-data-packets-while-draining",
        count(&ops, OP_RW) as u64,
    );
    // Take nothing for a while: the host keeps writing.
    std::thread::sleep(std::time::Duration::from_secs(3));
    r.attack("vsock", "4 GiB of credit, no buffers taken for 3 s");
    let mut lie = Hdr::to(g, HOST_WRITER_PORT, OP_CREDIT_UPDATE);
    lie.src_port = 41_000;
    lie.buf_alloc = u32::MAX;
    lie.fwd_cnt = u32::MAX - 5;
    let mut rw = Hdr::to(g, HOST_WRITER_PORT, OP_RW);
    rw.src_port = 41_000;
    rw.len = 0x4000_0000;
    v.send(&[(lie, h, 0), (rw, h, 0)]);
    r.attack("vsock", "credit update claiming more consumed than sent");
    r.attack("vsock", "data with a lying length on a live connection");
    let from = v.rx.used_idx();
    let ops = v.drain_rx(from, 500, 64);
    r.figure("vsock-packets-after-the-lies", ops.len() as u64);
    let s = &v.stream;
    r.figure("vsock-stream-bytes-received", s.bytes);
    r.check(
        "vsock-stream-bytes-intact",
        s.bytes > 0 && s.bad_bytes == 0 && s.bad_lengths == 0 && s.bad_heads == 0,
    );
    let mut rst = Hdr::to(g, HOST_WRITER_PORT, OP_RST);
    rst.src_port = 41_000;
    v.send(&[(rst, h, 0)]);
    let from = v.rx.used_idx();
    v.drain_rx(from, 300, 64);
}

pub fn attack(r: &mut Report) -> io::Result<()> {
    let mut v = open(r)?;
    let g = v.guest_cid;
    let h = HDR as u32;

    // Requests to host ports nobody listens on, with no rx buffer to take
    // the RSTs: what the VMM keeps for the guest must stay bounded.
    let reqs: Vec<_> = (0..3000)
        .map(|i| (Hdr::to(g, 20_000 + i, OP_REQUEST), h, 0))
        .collect();
    let sent = v.send(&reqs);
    r.figure("vsock-requests-taken", sent as u64);
    r.attack("vsock", "3000 connection requests, rx queue empty");

    let rsts: Vec<_> = (0..3000).map(|i| (Hdr::to(g, i, OP_RST), h, 0)).collect();
    v.send(&rsts);
    r.attack("vsock", "3000 RSTs for no connection");

    malformed_packets(&mut v, r);

    r.figure(
        "vsock-notify-storm-20000-ms",
        v.dev.notify_storm(TX, 20_000),
    );
    r.attack("vsock", "notify storm (20000)");

    let from = v.rx.used_idx();
    let ops = v.drain_rx(from, 300, 100);
    r.figure("vsock-packets-held-for-the-guest", ops.len() as u64);
    r.check(
        "vsock-answered-the-flood-with-rsts",
        count(&ops, OP_RST) > 0,
    );

    credit_abuse(&mut v, r);

    // After all that, a request still gets its answer.
    let from = v.rx.used_idx();
    let sent = v.send(&[(Hdr::to(g, 31_337, OP_REQUEST), h, 0)]);
    let ops = v.drain_rx(from, 300, 64);
    r.line(&format!(
        "vsock: last request taken {sent}, {} answers",
        ops.len()
    ));
    r.check(
        "vsock-still-answers-after-the-attacks",
        count(&ops, OP_RST) == 1,
    );
    Ok(())
}
