//! Pseudo-terminals for processes started with a `tty`: allocation in the
//! container's own devpts, resizing, and the relay between the PTY master
//! and the host's `tty` stream.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use agent::protocol::WindowSize;

/// A freshly allocated PTY pair.
pub struct Pty {
    /// The side the agent keeps (relay, resize).
    pub master: File,
    /// The side the process gets as its controlling terminal.
    pub slave: OwnedFd,
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl Pty {
    /// Allocates a PTY from the devpts instance of `root` (its `/dev/ptmx`:
    /// the kernel ties a ptmx node to the devpts mounted beside it at
    /// `pts/`, so the slave is `/dev/pts/N` as the container sees it), or
    /// the guest's own without a root.
    pub fn open(root: Option<&str>, size: WindowSize) -> io::Result<Pty> {
        let path = format!("{}/dev/ptmx", root.unwrap_or(""));
        let cpath = CString::new(path.clone())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in root"))?;
        // O_NOFOLLOW: the container may have replaced its /dev/ptmx; the
        // agent must not be sent elsewhere by a symlink.
        // SAFETY: open(2) with a valid NUL-terminated path.
        let raw = check(unsafe {
            libc::open(
                cpath.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            )
        })
        .map_err(|e| io::Error::new(e.kind(), format!("open {path}: {e}")))?;
        // SAFETY: `raw` is a descriptor we just opened and own.
        let master = unsafe { File::from_raw_fd(raw) };
        let unlock: libc::c_int = 0;
        // SAFETY: TIOCSPTLCK reads one int; it fails on anything that is
        // not a PTY master, which also proves the node was a real ptmx.
        check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) })
            .map_err(|e| io::Error::new(e.kind(), format!("{path} is not a PTY master: {e}")))?;
        // TIOCGPTPEER opens the slave through the master, not by a path
        // the container could have changed.
        // SAFETY: TIOCGPTPEER takes open flags by value and returns a new fd.
        let raw = check(unsafe {
            libc::ioctl(
                master.as_raw_fd(),
                libc::TIOCGPTPEER,
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        })
        .map_err(|e| io::Error::new(e.kind(), format!("open the PTY slave: {e}")))?;
        // SAFETY: `raw` is the new slave descriptor, owned by us.
        let slave = unsafe { OwnedFd::from_raw_fd(raw) };
        set_size(master.as_raw_fd(), size)?;
        Ok(Pty { master, slave })
    }
}

/// Sets the terminal size of a PTY (through either side). The kernel
/// sends SIGWINCH to the terminal's foreground process group when the size
/// changes. A zero size is left as it is.
pub fn set_size(fd: RawFd, size: WindowSize) -> io::Result<()> {
    if size.rows == 0 && size.cols == 0 {
        return Ok(());
    }
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct from a valid pointer.
    check(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) }).map(|_| ())
}

/// Copies between the PTY master and the host's stream until the terminal
/// closes (every process holding the slave is gone: reads give EIO), then
/// half-closes the stream so the host sees the end of output. Without a
/// stream the output is read and dropped, so the process never blocks on a
/// full terminal.
pub fn relay(master: Arc<File>, stream: Option<UnixStream>) {
    let input = stream.as_ref().and_then(|s| s.try_clone().ok());
    if let Some(mut input) = input {
        let master = master.clone();
        // Ends when the host closes its side; detached because the host may
        // keep the stream open until it has collected the exit status.
        let _ = std::thread::Builder::new()
            .name("pty-in".into())
            .spawn(move || {
                let mut m: &File = &master;
                let _ = io::copy(&mut input, &mut m);
            });
    }
    let _ = std::thread::Builder::new()
        .name("pty-out".into())
        .spawn(move || {
            let mut out = stream;
            let mut m: &File = &master;
            // Large reads: on PVM every system call costs ~0.5 ms.
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match m.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if let Some(s) = out.as_mut() {
                            if s.write_all(&buf[..n]).is_err() {
                                // The host went away: keep draining.
                                out = None;
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // EIO: the last holder of the slave closed it.
                    Err(_) => break,
                }
            }
            if let Some(s) = out {
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size_of(fd: RawFd) -> (u16, u16) {
        // SAFETY: winsize is plain old data; all-zero is valid.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes one winsize struct to a valid pointer.
        assert_eq!(unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) }, 0);
        (ws.ws_row, ws.ws_col)
    }

    #[test]
    fn a_pty_has_the_asked_size_and_resizes() {
        let pty = Pty::open(None, WindowSize { rows: 33, cols: 97 }).unwrap();
        assert_eq!(size_of(pty.slave.as_raw_fd()), (33, 97));
        set_size(
            pty.master.as_raw_fd(),
            WindowSize {
                rows: 40,
                cols: 120,
            },
        )
        .unwrap();
        assert_eq!(size_of(pty.slave.as_raw_fd()), (40, 120));
        // Zero means unknown: the size stays.
        set_size(pty.master.as_raw_fd(), WindowSize::default()).unwrap();
        assert_eq!(size_of(pty.slave.as_raw_fd()), (40, 120));
    }

    #[test]
    fn a_root_without_a_ptmx_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("dev")).unwrap();
        // A regular file where the multiplexer should be.
        std::fs::write(dir.path().join("dev/ptmx"), b"").unwrap();
        let root = dir.path().to_str().unwrap();
        let err = Pty::open(Some(root), WindowSize::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("is not a PTY master"), "{err}");
        // A symlink to the real one is not followed.
        std::fs::remove_file(dir.path().join("dev/ptmx")).unwrap();
        std::os::unix::fs::symlink("/dev/ptmx", dir.path().join("dev/ptmx")).unwrap();
        let err = Pty::open(Some(root), WindowSize::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("open "), "{err}");
    }
}
