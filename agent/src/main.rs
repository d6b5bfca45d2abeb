//! hull-agent: PID 1 of every hull microVM.
//!
//! It mounts the pseudo filesystems, reports readiness on the serial port,
//! serves the host's control protocol on vsock (when the kernel command
//! line says `hull.serve`), reaps every process, and ends the VM cleanly
//! (sync, then reset, which `reboot=k` turns into the i8042 reset the VMM
//! watches).

/// A timing line on the console, for measuring the container start path:
/// built in only by `HULL_AGENT_TRACE=1 scripts/build-agent` (a console
/// line costs the guest ~40 ms where its kernel is emulated, so a traced
/// agent is slower; `RUST_LOG=hull=debug` shows the lines with the host's
/// timestamps).
macro_rules! trace {
    ($($arg:tt)*) => {
        if option_env!("HULL_AGENT_TRACE").is_some() {
            eprintln!("trace: {}", format_args!($($arg)*));
        }
    };
}

mod console;
mod forward;
mod mounts;
mod net;
mod power;
mod preattach;
mod process;
mod pty;
mod resume;
mod server;
mod unpack_server;
mod user;
mod vsock;
mod warm;

use std::sync::Arc;

use agent::protocol::{CONTROL_PORT, FORWARD_PORT, STREAM_PORT, UNPACK_PORT};
use agent::Status;

/// Whether the kernel command line has the word `word` (`hull.serve`:
/// listen for the host; `hull.prepare`: an image-preparation helper).
fn cmdline_has(word: &str) -> bool {
    std::fs::read_to_string("/proc/cmdline")
        .map(|c| c.split_whitespace().any(|w| w == word))
        .unwrap_or(false)
}

/// Heap the preparation helper touches before it reports ready.
const PREPARE_HEAP: usize = 32 << 20;

/// Makes the heap of an image-preparation helper ready before its
/// snapshot is taken. Where guest-kernel code is emulated, every fresh page
/// costs ~5 ms of fault and clearing: the image builder touches ~5000 of
/// them for a 300 MB image (the zstd window, buffers, the tree), ~25 s.
/// Pages touched here are in the snapshot, so a restored helper reuses
/// them without a guest fault: one arena for every thread, no mmap for big
/// blocks and no trimming keep freed memory in that heap.
fn warm_heap() {
    // SAFETY: mallopt only changes the allocator's parameters; no
    // allocation is live across a change that could invalidate it.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, (PREPARE_HEAP * 2) as i32);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
    let mut heap: Vec<u8> = Vec::with_capacity(PREPARE_HEAP);
    // One store per page: allocation alone (or calloc of fresh memory)
    // leaves the pages untouched.
    for _ in (0..PREPARE_HEAP).step_by(4096) {
        heap.push(1);
        heap.extend(std::iter::repeat_n(0, 4095));
    }
    std::hint::black_box(&heap);
}

fn main() {
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        eprintln!("hull-agent: must run as PID 1 inside a hull microVM");
        std::process::exit(2);
    }
    let mount_result = mounts::mount_all();
    let mut console = console::Console::open();
    if let Err(e) = mount_result {
        console.status(&Status::Error(e.to_string()));
        power::shutdown(&mut console, 1);
    }
    if let Err(e) = net::loopback_up() {
        console.status(&Status::Error(format!("loopback: {e}")));
        power::shutdown(&mut console, 1);
    }
    if !cmdline_has("hull.serve") {
        // A boot check: ready, then done.
        console.status(&ready());
        power::shutdown(&mut console, 0);
    }
    if cmdline_has("hull.prepare") {
        warm_heap();
    }
    let _ = net::warm_loopback_tcp();
    let (control, streams, unpacks, forwards) = match bind_listeners() {
        Ok(pair) => pair,
        Err(e) => {
            console.status(&Status::Error(format!("vsock: {e}")));
            power::shutdown(&mut console, 1);
        }
    };
    let reaper = Arc::new(process::Reaper::default());
    let (tx, rx) = std::sync::mpsc::channel();
    let agent = Arc::new(server::Agent::new(reaper.clone(), tx));
    let spawn = |f: Box<dyn FnOnce() + Send>| std::thread::Builder::new().spawn(f).is_ok();
    let ok = spawn(Box::new(move || reaper.run()))
        && spawn({
            let agent = agent.clone();
            Box::new(move || server::accept_loop(agent, control, server::Port::Control))
        })
        && spawn({
            let agent = agent.clone();
            Box::new(move || server::accept_loop(agent, streams, server::Port::Streams))
        })
        && spawn(Box::new(move || {
            server::accept_loop(agent, unpacks, server::Port::Unpack)
        }))
        && spawn(Box::new(move || {
            // Only a broken epoll ends it; published ports then stop working.
            let _ = forward::run(forwards.into_fd());
        }));
    if !ok {
        console.status(&Status::Error("cannot start agent threads".into()));
        power::shutdown(&mut console, 1);
    }
    // Listening before announcing: the host may connect as soon as it reads this.
    console.status(&ready());
    let _ = rx.recv();
    power::shutdown(&mut console, 0);
}

fn ready() -> Status {
    Status::Ready {
        version: agent::VERSION.to_string(),
        uptime: mounts::uptime().unwrap_or(0.0),
    }
}

type Listeners = (
    vsock::VsockListener,
    vsock::VsockListener,
    vsock::VsockListener,
    vsock::VsockListener,
);

/// Published ports may see hundreds of connections arrive at once; the
/// guest kernel resets those beyond the backlog.
const FORWARD_BACKLOG: i32 = 1024;

fn bind_listeners() -> std::io::Result<Listeners> {
    Ok((
        vsock::VsockListener::bind(CONTROL_PORT, 64)?,
        vsock::VsockListener::bind(STREAM_PORT, 64)?,
        vsock::VsockListener::bind(UNPACK_PORT, 64)?,
        vsock::VsockListener::bind(FORWARD_PORT, FORWARD_BACKLOG)?,
    ))
}
