//! Fuzzes the virtio-net device through its event loop: the input becomes
//! guest memory holding the rx and tx split queues (descriptor tables,
//! avail rings with any index, any flags) and their buffers, and a stream
//! of bytes from the backend (length prefixes of any value, frames of any
//! size). Every tx chain is parsed and relayed, every backend frame is
//! written into the fuzzed rx buffers. Nothing the guest or the backend
//! sends may panic the VMM, reach outside guest memory, or loop forever.

#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::virtio::net::{Net, NetConfig};
use vmm::virtio::{ActivateContext, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use vmm_sys_util::eventfd::EventFd;

const QUEUE_SIZE: u16 = 64;
/// Descriptor table, avail ring and used ring of rx and tx.
const QUEUES: [(u64, u64, u64); 2] = [(0x0000, 0x0400, 0x0600), (0x0a00, 0x0e00, 0x1000)];
/// Two adjacent regions, so buffers can straddle a region boundary.
const REGION: usize = 0x8000;

fn queue(desc: u64, avail: u64, used: u64) -> Queue {
    let mut q = Queue::new(QUEUE_SIZE).unwrap();
    q.set_size(QUEUE_SIZE);
    q.set_desc_table_address(Some(desc as u32), Some(0));
    q.set_avail_ring_address(Some(avail as u32), Some(0));
    q.set_used_ring_address(Some(used as u32), Some(0));
    q.set_ready(true);
    q
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctrl, rest)) = data.split_first() else {
        return;
    };
    // The first 2*REGION bytes are guest memory, the rest backend bytes.
    let n = rest.len().min(2 * REGION);
    let (memory, backend_bytes) = rest.split_at(n);
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION),
        (GuestAddress(REGION as u64), REGION),
    ])
    .unwrap();
    mem.write_slice(memory, GuestAddress(0)).unwrap();

    let (ours, mut peer) = UnixStream::pair().unwrap();
    peer.set_nonblocking(true).unwrap();
    let dev = Net::new(NetConfig {
        mac: [2, 0, 0, 0, 0, 1],
        backend: Some(vmm::virtio::net::Backend::Stream(Arc::new(ours))),
    })
    .unwrap();
    // Every feature the device offers, or the bare minimum.
    let features = if ctrl & 1 == 0 {
        dev.features()
    } else {
        VIRTIO_F_VERSION_1
    };
    let dev = Arc::new(Mutex::new(dev));
    let mut events = EventManager::new().unwrap();
    events.add_subscriber(dev.clone());
    let evts: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let kicks: Vec<EventFd> = evts.iter().map(|e| e.try_clone().unwrap()).collect();
    let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap(), 5));
    let activated = dev.lock().unwrap().activate(ActivateContext {
        mem: mem.clone(),
        queues: QUEUES.iter().map(|&(d, a, u)| queue(d, a, u)).collect(),
        queue_evts: evts,
        interrupt,
        acked_features: features,
    });
    if activated.is_err() {
        return;
    }
    let _ = peer.write(backend_bytes);
    for k in &kicks {
        k.write(1).unwrap();
    }
    let mut sink = vec![0u8; 1 << 16];
    for _ in 0..16 {
        let busy = events.run_with_timeout(0).unwrap();
        while matches!(peer.read(&mut sink), Ok(n) if n > 0) {}
        if busy == 0 {
            break;
        }
    }
});
