//! The serial line the agent reports its status on.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use agent::Status;

/// The first serial port, opened directly: /dev/console only reaches it
/// when the kernel console is on the serial line, which is off by default.
pub struct Console {
    out: Option<File>,
}

impl Console {
    /// Opens /dev/ttyS0 (or /dev/console); status is dropped if neither opens.
    pub fn open() -> Self {
        let out = ["/dev/ttyS0", "/dev/console"].iter().find_map(|p| {
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOCTTY)
                .open(p)
                .ok()
        });
        Self { out }
    }

    /// Writes one status line.
    pub fn status(&mut self, status: &Status) {
        if let Some(out) = self.out.as_mut() {
            // A console that fails to write cannot be reported anywhere.
            let _ = writeln!(out, "{}", status.to_line());
            let _ = out.flush();
        }
    }

    /// Waits until what was written has left the serial port. A write
    /// returns once the line is in the tty's buffer and the UART sends
    /// the rest on interrupts: a reset right after it lost the end of the
    /// shutdown line (seen in CI: a clean `hull debug boot` reported as
    /// "VM ended without a clean agent shutdown").
    pub fn drain(&mut self) {
        if let Some(out) = self.out.as_ref() {
            // SAFETY: tcdrain on a descriptor we own; on one that is not a
            // terminal it fails with ENOTTY, which changes nothing.
            unsafe { libc::tcdrain(std::os::fd::AsRawFd::as_raw_fd(out)) };
        }
    }
}
