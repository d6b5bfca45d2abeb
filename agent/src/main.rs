//! hull-agent: PID 1 of every hull microVM.
//!
//! It mounts the pseudo filesystems, reports readiness on the serial port,
//! serves the host's control protocol on vsock (when the kernel command
//! line says `hull.serve`), reaps every process, and ends the VM cleanly
//! (sync, then reset, which `reboot=k` turns into the i8042 reset the VMM
//! watches).

mod console;
mod forward;
mod mounts;
mod net;
mod power;
mod process;
mod procs;
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

fn serve_requested() -> bool {
    std::fs::read_to_string("/proc/cmdline")
        .map(|c| c.split_whitespace().any(|w| w == "hull.serve"))
        .unwrap_or(false)
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
    if !serve_requested() {
        // A boot check: ready, then done.
        console.status(&ready());
        power::shutdown(&mut console, 0);
    }
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
