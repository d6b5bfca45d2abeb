//! hull-agent: PID 1 of every hull microVM.
//!
//! It mounts the pseudo filesystems, reports readiness on the serial port,
//! and ends the VM cleanly (sync, then reset, which `reboot=k` turns into
//! the i8042 reset the VMM watches).

mod console;
mod mounts;
mod power;

use agent::Status;

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
    console.status(&Status::Ready {
        version: agent::VERSION.to_string(),
        uptime: mounts::uptime().unwrap_or(0.0),
    });
    // Until the control protocol exists, the agent's work is done once it
    // is ready.
    power::shutdown(&mut console, 0);
}
