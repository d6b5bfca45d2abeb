//! The host terminal of an attached `-t` container: its size, and raw mode
//! for the time the container's process owns it.

use std::io::{self, IsTerminal};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use agent_protocol::protocol::WindowSize;

/// The size of the terminal on `fd`, if it is one.
pub fn window_size(fd: RawFd) -> Option<WindowSize> {
    // SAFETY: winsize is plain old data; all-zero is valid.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize struct to a valid pointer; on a
    // non-terminal it fails with ENOTTY and writes nothing.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0).then_some(WindowSize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// The terminal whose size the container's PTY follows: our stdout's, as
/// Docker does, else stdin's or stderr's (e.g. `hull run -t ... | less`).
pub fn size_source() -> Option<RawFd> {
    [
        io::stdout().as_raw_fd(),
        io::stdin().as_raw_fd(),
        io::stderr().as_raw_fd(),
    ]
    .into_iter()
    // SAFETY: the standard descriptors stay open for the whole process.
    .find(|fd| unsafe { BorrowedFd::borrow_raw(*fd) }.is_terminal())
}

/// A terminal in raw mode (input bytes pass through unchanged: ^C is a
/// byte for the container's terminal, not SIGINT for us); dropping it
/// restores the saved settings, on every exit path that unwinds or returns.
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    /// Puts the terminal on `fd` into raw mode.
    pub fn enable(fd: RawFd) -> io::Result<RawMode> {
        // SAFETY: termios is plain old data; all-zero is valid.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes one termios struct to a valid pointer.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the termios struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: tcsetattr reads one termios struct from a valid pointer.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: tcsetattr reads the termios saved by `enable`.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};

    fn openpty() -> (OwnedFd, OwnedFd) {
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty writes two descriptors; the name, termios and
        // winsize pointers may be null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        // SAFETY: both are fresh descriptors we own.
        unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
    }

    fn lflag(fd: RawFd) -> libc::tcflag_t {
        // SAFETY: as in `RawMode::enable`.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes one termios struct to a valid pointer.
        assert_eq!(unsafe { libc::tcgetattr(fd, &mut t) }, 0);
        t.c_lflag
    }

    #[test]
    fn raw_mode_is_restored_on_drop_and_sizes_are_read() {
        let (master, slave) = openpty();
        let fd = slave.as_raw_fd();
        let before = lflag(fd);
        assert_ne!(before & libc::ICANON, 0, "a new pty is canonical");
        {
            let _raw = RawMode::enable(fd).unwrap();
            let during = lflag(fd);
            assert_eq!(during & (libc::ICANON | libc::ECHO | libc::ISIG), 0);
        }
        assert_eq!(lflag(fd), before);

        let ws = libc::winsize {
            ws_row: 33,
            ws_col: 97,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize struct from a valid pointer.
        let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(rc, 0);
        assert_eq!(window_size(fd), Some(WindowSize { rows: 33, cols: 97 }));
        let file = tempfile::tempfile().unwrap();
        assert_eq!(window_size(file.as_raw_fd()), None);
        assert!(RawMode::enable(file.as_raw_fd()).is_err());
    }
}
