//! `-t` in container mode: the runtime runs on a pseudo-terminal hull
//! owns (its controlling terminal), and makes the container's own PTY
//! behind it as it does for an interactive shell; hull copies the master
//! side to the log and the user's terminal, as the VM mode does with the
//! agent's PTY stream.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use agent_protocol::protocol::WindowSize;

/// A pseudo-terminal pair.
pub struct Pty {
    /// hull's side.
    pub master: File,
    slave: OwnedFd,
}

fn winsize(size: WindowSize) -> libc::winsize {
    libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Sets the window size of the PTY whose master is `master`; the kernel
/// sends SIGWINCH to the slave's foreground process group (the runtime).
pub fn set_size(master: &File, size: WindowSize) -> std::io::Result<()> {
    let ws = winsize(size);
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer; the
    // descriptor is the open master.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(master),
            libc::TIOCSWINSZ,
            &ws,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The terminal on the standard input of container process `pid`, as
/// the host reaches it (`/proc/PID/fd/0`). The container chooses what
/// that is: opened without blocking and without becoming our controlling
/// terminal, and refused unless it is a terminal; device nodes of the
/// image do not open (the overlay is `nodev`).
pub fn open_terminal_of(pid: u32) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(format!("/proc/{pid}/fd/0"))?;
    // SAFETY: isatty on a descriptor we own.
    if unsafe { libc::isatty(std::os::fd::AsRawFd::as_raw_fd(&f)) } != 1 {
        return Err(std::io::Error::from_raw_os_error(libc::ENOTTY));
    }
    Ok(f)
}

/// Opens a PTY of `size` (80x24 when unknown).
pub fn open(size: Option<WindowSize>) -> std::io::Result<Pty> {
    let ws = winsize(size.unwrap_or(WindowSize { rows: 24, cols: 80 }));
    let (mut m, mut s) = (-1, -1);
    // SAFETY: openpty writes two descriptors; name and termios are null
    // (not wanted), `ws` is a valid winsize it reads.
    let rc = unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openpty returned two fresh descriptors that we now own.
    let (master, slave) = unsafe { (File::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
    Ok(Pty { master, slave })
}

impl Pty {
    /// Makes `cmd` run with the slave as its stdio and controlling
    /// terminal (runc opens /dev/tty; crun reads its attributes).
    pub fn attach(&self, cmd: &mut Command) -> std::io::Result<()> {
        let io = || self.slave.try_clone().map(Stdio::from);
        cmd.stdin(io()?).stdout(io()?).stderr(io()?);
        // SAFETY: setsid and ioctl are async-signal-safe; fd 0 is the
        // slave by then.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// hull's side alone: the slave is closed here, so the master reads
    /// EOF/EIO once the runtime and the container have closed theirs.
    pub fn close_slave(self) -> File {
        drop(self.slave);
        self.master
    }
}
