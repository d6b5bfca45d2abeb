//! `hull-hostile-guest`: PID 1 of a test VM (not the agent) that takes the
//! VM's devices from their kernel drivers and attacks the VMM through
//! them from user space (guest root: `/dev/mem` for the registers, its own
//! locked pages for the rings). It reports on the serial console
//! ([`report`]) and resets the VM. tests/hostile_guest.rs boots it with
//! `hull debug boot --init` and checks the VMM held.
//!
//! Guest-physical addresses come from `/proc/self/pagemap`; nothing here
//! needs the guest kernel's help beyond that, the unbind and the mmap: a
//! guest whose kernel is the attacker's can do all of it and more.

mod blk;
mod dma;
mod mmio;
mod net;
mod report;
mod serial;
mod vsock;

use std::ffi::CString;

fn mount(source: &str, target: &str, fstype: &str) {
    let c = |s: &str| CString::new(s).expect("no NUL");
    let (source, target, fstype) = (c(source), c(target), c(fstype));
    // SAFETY: valid C strings; a failure (already mounted) is harmless here.
    unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
}

/// One device's attacks; an error means they could not run at all.
type Attack = fn(&mut report::Report) -> std::io::Result<()>;

fn main() {
    mount("proc", "/proc", "proc");
    mount("sysfs", "/sys", "sysfs");
    mount("devtmpfs", "/dev", "devtmpfs");
    let mut r = report::Report::new();
    r.line("start");
    let attacks: [(&str, Attack); 4] = [
        ("blk", blk::attack),
        ("net", net::attack),
        ("vsock", vsock::attack),
        ("serial", serial::attack),
    ];
    // `hostile_only=NAME` on the kernel command line: one attack alone
    // (`sse` is run only so: it ends the VM).
    let only = std::env::var("hostile_only").ok();
    for (name, attack) in attacks {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        if let Err(e) = attack(&mut r) {
            r.check(&format!("{name}-ran ({e})"), false);
        }
    }
    if only.as_deref() == Some("sse") {
        mmio::sse_store_to_registers(&mut r);
    }
    r.done();
    // SAFETY: flushes the page cache; no memory is involved.
    unsafe { libc::sync() };
    // SAFETY: ends the VM (the VMM sees the guest reset); PID 1 must not
    // return.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
