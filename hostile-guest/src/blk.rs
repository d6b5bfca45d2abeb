//! Attacks on a virtio-blk device (the VM's scratch disk, /dev/vdb): every
//! malformed chain we can think of, a notify storm, registers rewritten
//! under a running queue, then a reset and a request that must work.

use std::io;

use crate::dma::{self, Page};
use crate::mmio::{self, Desc, Device, Queue, F_INDIRECT, F_NEXT, F_WRITE};
use crate::report::Report;

const VIRTIO_ID_BLOCK: u32 = 2;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const QSIZE: u16 = 16;

/// Pages for a request: header, data, status.
struct Bufs {
    hdr: Page,
    data: Page,
    status: Page,
}

fn setup(dev: &Device, q: &Queue) -> bool {
    dev.negotiate() && {
        dev.set_queue(0, q);
        dev.driver_ok()
    }
}

fn header(b: &Bufs, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    b.hdr.write(0, &h);
    b.status.write(0, &[0xff]);
}

/// A well-formed request of one sector; returns the status byte, or None if
/// the device never answered.
fn request(dev: &Device, q: &mut Queue, b: &Bufs, kind: u32, sector: u64) -> Option<u8> {
    header(b, kind, sector);
    let data_flags = if kind == T_IN { F_WRITE } else { 0 };
    q.set_desc(0, b.hdr.gpa, 16, F_NEXT, 1);
    q.set_desc(1, b.data.gpa, 512, data_flags | F_NEXT, 2);
    q.set_desc(2, b.status.gpa, 1, F_WRITE, 0);
    submit(dev, q, 0, 2000).then(|| {
        let mut s = [0u8];
        b.status.read(0, &mut s);
        s[0]
    })
}

/// Makes `head` available, notifies, waits for the device to use it.
fn submit(dev: &Device, q: &mut Queue, head: u16, ms: u64) -> bool {
    let want = q.used_idx().wrapping_add(1);
    q.push(head);
    dev.notify(0);
    q.wait_used(want, ms)
}

/// Writes a pattern to sector 1 and reads it back.
fn round_trip(dev: &Device, q: &mut Queue, b: &Bufs, pattern: u8) -> bool {
    b.data.write(0, &[pattern; 512]);
    if request(dev, q, b, T_OUT, 1) != Some(0) {
        return false;
    }
    b.data.write(0, &[0; 512]);
    if request(dev, q, b, T_IN, 1) != Some(0) {
        return false;
    }
    let mut got = [0u8; 512];
    b.data.read(0, &mut got);
    got.iter().all(|&x| x == pattern)
}

/// One malformed chain: descriptors as given, head 0.
fn bad_chain(dev: &Device, q: &mut Queue, descs: &[Desc]) -> bool {
    for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
        q.set_desc(i as u16, addr, len, flags, next);
    }
    submit(dev, q, 0, 300)
}

pub fn attack(r: &mut Report) -> io::Result<()> {
    let dev = mmio::find(VIRTIO_ID_BLOCK, 1)?;
    r.line(&format!("blk: driving {} from user space", dev.name));
    let mut q = Queue::new(QSIZE)?;
    let mut p = dma::pages(3)?;
    let b = Bufs {
        status: p.pop().expect("page"),
        data: p.pop().expect("page"),
        hdr: p.pop().expect("page"),
    };
    r.check(
        "blk-driven-from-user-space",
        setup(&dev, &q) && round_trip(&dev, &mut q, &b, 0x5a),
    );

    malformed_chains(&dev, &mut q, &b, r);
    refused_requests(&dev, &mut q, &b, r);
    ring_lies(&dev, &mut q, r);
    // An activation with a queue beyond guest RAM must fail, not the VMM.
    let bogus = Queue::new(QSIZE)?;
    dev.negotiate();
    dev.set_queue(0, &bogus);
    dev.write(mmio::REG_QUEUE_DESC, 0);
    dev.write(mmio::REG_QUEUE_DESC + 4, 0x10_0000);
    let refused = !dev.driver_ok();
    r.check("blk-refuses-a-queue-beyond-ram", refused);
    r.attack("blk", "queue beyond guest RAM");

    let mut fresh = Queue::new(QSIZE)?;
    r.check(
        "blk-recovers-after-reset",
        setup(&dev, &fresh) && round_trip(&dev, &mut fresh, &b, 0xa5),
    );
    Ok(())
}

/// Chains no driver should make, each made available once (head 0): the
/// device must answer or drop each, never fail.
fn malformed_chains(dev: &Device, q: &mut Queue, b: &Bufs, r: &mut Report) {
    let (h, d, s) = (b.hdr.gpa, b.data.gpa, b.status.gpa);
    header(b, T_IN, 0);
    let chains: &[(&str, &[Desc])] = &[
        (
            "header beyond guest RAM",
            &[(1 << 46, 16, F_NEXT, 1), (s, 1, F_WRITE, 0)],
        ),
        (
            "data length 4 GiB",
            &[
                (h, 16, F_NEXT, 1),
                (d, u32::MAX, F_WRITE | F_NEXT, 2),
                (s, 1, F_WRITE, 0),
            ],
        ),
        (
            "address that wraps",
            &[
                (h, 16, F_NEXT, 1),
                (u64::MAX - 100, 512, F_WRITE | F_NEXT, 2),
                (s, 1, F_WRITE, 0),
            ],
        ),
        (
            "loop in next",
            &[(h, 16, F_NEXT, 1), (d, 512, F_WRITE | F_NEXT, 0)],
        ),
        ("next out of the table", &[(h, 16, F_NEXT, 999)]),
        ("indirect table of garbage", &[(d, 0xfff0, F_INDIRECT, 0)]),
        (
            "indirect table beyond RAM",
            &[(1 << 45, 4096, F_INDIRECT, 0)],
        ),
        (
            "no status byte",
            &[(h, 16, F_NEXT, 1), (d, 512, F_NEXT, 2), (s, 1, 0, 0)],
        ),
        (
            "header written by the device",
            &[(h, 16, F_WRITE | F_NEXT, 1), (s, 1, F_WRITE, 0)],
        ),
        ("short header", &[(h, 3, F_NEXT, 1), (s, 1, F_WRITE, 0)]),
        (
            "data into the descriptor table",
            &[
                (h, 16, F_NEXT, 1),
                (q.desc.gpa, 512, F_WRITE | F_NEXT, 2),
                (s, 1, F_WRITE, 0),
            ],
        ),
        (
            "status inside the header",
            &[(h, 16, F_NEXT, 1), (h + 4, 1, F_WRITE, 0)],
        ),
        (
            "odd-sized data",
            &[
                (h, 16, F_NEXT, 1),
                (d, 7, F_WRITE | F_NEXT, 2),
                (s, 1, F_WRITE, 0),
            ],
        ),
        (
            "zero-length descriptors",
            &[(h, 0, F_NEXT, 1), (d, 0, F_NEXT, 2), (s, 0, F_WRITE, 0)],
        ),
    ];
    let mut answered = 0;
    for (name, chain) in chains {
        if bad_chain(dev, q, chain) {
            answered += 1;
        }
        r.attack("blk", name);
    }
    r.figure("blk-bad-chains-answered", answered);
}

/// Well-formed requests the device must refuse with an error status.
fn refused_requests(dev: &Device, q: &mut Queue, b: &Bufs, r: &mut Report) {
    for (name, kind, sector) in [
        ("read beyond the disk", T_IN, u64::MAX - 1),
        ("write beyond the disk", T_OUT, 1 << 40),
        ("unknown request type", 0xdead, 0),
    ] {
        let status = request(dev, q, b, kind, sector);
        r.check(
            &format!("blk-refuses: {name}"),
            matches!(status, Some(x) if x != 0),
        );
        r.attack("blk", name);
    }
}

/// A head index out of range, a notify storm, registers rewritten under
/// the running queue, and an available index far ahead (the queue is
/// unusable afterwards: the caller resets the device).
fn ring_lies(dev: &Device, q: &mut Queue, r: &mut Report) {
    // A head index the ring cannot hold: the device cannot return it.
    q.push(999);
    dev.notify(0);
    r.attack("blk", "head index out of range");

    r.figure("blk-notify-storm-20000-ms", dev.notify_storm(0, 20_000));
    r.attack("blk", "notify storm (20000)");

    abuse_registers(dev, q, r);

    // The driver lies about its available index.
    q.set_avail_idx(q.avail_idx().wrapping_add(30_000));
    for _ in 0..1000 {
        dev.notify(0);
    }
    r.attack("blk", "available index 30000 ahead, notified 1000 times");
}

/// Unknown registers, a queue selector out of range, and the running
/// queue's size and addresses rewritten after DRIVER_OK.
fn abuse_registers(dev: &Device, q: &Queue, r: &mut Report) {
    for reg in (0x100..0x1000).step_by(4) {
        dev.write(reg, 0xffff_ffff);
        let _ = dev.read(reg);
    }
    for reg in [0x0c, 0x18, 0x28, 0x3c, 0x40, 0x48, 0x54, 0x68, 0xb0, 0xf0] {
        dev.write(reg, 0xdead_beef);
    }
    r.attack("blk", "writes to unknown registers and the config space");
    dev.write(mmio::REG_QUEUE_SEL, 77);
    dev.write(mmio::REG_QUEUE_NUM, 65535);
    dev.write(mmio::REG_QUEUE_READY, 1);
    r.attack("blk", "queue selector out of range");
    dev.write(mmio::REG_QUEUE_SEL, 0);
    dev.write(mmio::REG_QUEUE_NUM, 3);
    dev.write(mmio::REG_QUEUE_DESC, 0xffff_f000);
    dev.write(mmio::REG_QUEUE_DESC + 4, 0xffff_ffff);
    dev.write(mmio::REG_QUEUE_AVAIL, 0);
    dev.write(mmio::REG_QUEUE_USED, 0);
    dev.write(mmio::REG_INTERRUPT_ACK, 0xffff_ffff);
    dev.notify(0);
    dev.notify(0xffff);
    r.attack("blk", "queue size and addresses rewritten while running");
    let _ = q;
}
