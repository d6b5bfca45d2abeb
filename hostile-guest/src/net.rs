//! Attacks on the virtio-net device (the VM has one with no link: the VMM
//! still parses every frame the guest sends, then drops it): malformed tx
//! chains, frames past the size limit, a lying available index, a notify
//! storm; then, after a reset, a well-formed frame must still be taken.

use std::io;

use crate::dma;
use crate::mmio::{self, Desc, Device, Queue, F_NEXT, F_WRITE};
use crate::report::Report;

const VIRTIO_ID_NET: u32 = 1;
const RX: u32 = 0;
const TX: u32 = 1;
const QSIZE: u16 = 16;
/// virtio-net header with VERSION_1 (no mergeable buffers negotiated).
const HDR: u32 = 12;

fn setup(dev: &Device, rx: &Queue, tx: &Queue) -> bool {
    dev.negotiate() && {
        dev.set_queue(RX, rx);
        dev.set_queue(TX, tx);
        dev.driver_ok()
    }
}

/// Sends the chain `descs` (head 0) on tx; whether the device used it.
fn send(dev: &Device, tx: &mut Queue, descs: &[Desc]) -> bool {
    for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
        tx.set_desc(i as u16, addr, len, flags, next);
    }
    let want = tx.used_idx().wrapping_add(1);
    tx.push(0);
    dev.notify(TX);
    tx.wait_used(want, 500)
}

pub fn attack(r: &mut Report) -> io::Result<()> {
    let dev = mmio::find(VIRTIO_ID_NET, 0)?;
    r.line(&format!("net: driving {} from user space", dev.name));
    let rx = Queue::new(QSIZE)?;
    let mut tx = Queue::new(QSIZE)?;
    let frames = dma::pages(17)?;
    // A broadcast ARP-sized frame after a zeroed header.
    frames[0].write(0, &[0; 12]);
    frames[0].write(12, &[0xff; 6]);
    frames[0].write(18, &[0x02, 0, 0, 0, 0, 1, 0x08, 0x06]);
    let f = frames[0].gpa;
    r.check("net-driven-from-user-space", setup(&dev, &rx, &tx));
    r.check(
        "net-takes-a-frame",
        send(&dev, &mut tx, &[(f, HDR + 60, 0, 0)]),
    );

    // 16 pages in a row in the descriptor table: 64 KiB + 4 KiB of frame.
    let big: Vec<_> = frames[1..]
        .iter()
        .enumerate()
        .map(|(i, p)| (p.gpa, 4096, if i < 15 { F_NEXT } else { 0 }, (i + 1) as u16))
        .collect();
    let cases: [(&str, Vec<Desc>); 8] = [
        ("header beyond guest RAM", vec![(1 << 46, HDR + 60, 0, 0)]),
        ("frame length 4 GiB", vec![(f, u32::MAX, 0, 0)]),
        ("address that wraps", vec![(u64::MAX - 16, 72, 0, 0)]),
        ("loop in next", vec![(f, 12, F_NEXT, 1), (f, 60, F_NEXT, 0)]),
        ("frame over 64 KiB", big),
        ("frame of 3 bytes", vec![(f, 3, 0, 0)]),
        (
            "tx buffer the device should write",
            vec![(f, HDR + 60, F_WRITE, 0)],
        ),
        (
            "zero-length descriptors",
            vec![(f, 0, F_NEXT, 1), (f, 0, 0, 0)],
        ),
    ];
    for (name, descs) in &cases {
        send(&dev, &mut tx, descs);
        r.attack("net", name);
    }
    frames[0].write(1, &[4]); // VIRTIO_NET_HDR_GSO_TCPV6
    send(&dev, &mut tx, &[(f, HDR + 60, 0, 0)]);
    r.attack("net", "GSO header never negotiated");
    frames[0].write(1, &[0]);

    tx.push(999);
    dev.notify(TX);
    r.attack("net", "head index out of range");
    r.figure("net-notify-storm-20000-ms", dev.notify_storm(TX, 20_000));
    r.attack("net", "notify storm (20000)");
    tx.set_avail_idx(tx.avail_idx().wrapping_add(30_000));
    for _ in 0..1000 {
        dev.notify(TX);
    }
    r.attack("net", "available index 30000 ahead, notified 1000 times");

    let rx = Queue::new(QSIZE)?;
    let mut tx = Queue::new(QSIZE)?;
    r.check(
        "net-takes-a-frame-after-reset",
        setup(&dev, &rx, &tx) && send(&dev, &mut tx, &[(f, HDR + 60, 0, 0)]),
    );
    Ok(())
}
