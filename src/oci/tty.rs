//! `-t` in container mode. hull copies the master side of the
//! container's terminal to the log and the user's terminal, as the VM
//! mode does with the agent's PTY stream. How hull gets that master
//! depends on the runtime:
//! - crun hands the container's own PTY master over a console socket
//!   ([`ConsoleSocket`], `--console-socket`). Without one, crun copies the
//!   terminal itself and, when the container ends before its copy loop
//!   ran (a short command on a busy host), writes what is left to its log
//!   as an error: the output was lost and the run reported as a runtime
//!   failure (exit 125).
//! - runc in the foreground ignores a console socket: it runs on a
//!   pseudo-terminal hull owns ([`Pty`], its controlling terminal) and
//!   copies the container's PTY to it until the end. For `run` that is
//!   safe (the process starts after runc set up its copy); `exec -t`
//!   without a terminal runs either runtime detached with a console
//!   socket instead (src/oci/engine.rs says why).

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

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

/// A socket the runtime connects to once, to send the master of the
/// container's terminal; removed when dropped.
pub struct ConsoleSocket {
    path: PathBuf,
    listener: UnixListener,
}

/// How long a runtime that connected may take to send the terminal.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(30);

impl ConsoleSocket {
    /// Listens at `path` (a leftover of a killed run is replaced).
    pub fn bind(path: PathBuf) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        Ok(Self { path, listener })
    }

    /// Where the runtime connects (`--console-socket`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The terminal's master, once the runtime has sent it; `None` if
    /// `runtime_ended` says the runtime is gone without (its log says why).
    pub fn receive(
        &self,
        mut runtime_ended: impl FnMut() -> bool,
    ) -> std::io::Result<Option<File>> {
        let conn = loop {
            match self.listener.accept() {
                Ok((conn, _)) => break conn,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if runtime_ended() {
                        return Ok(None);
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(e),
            }
        };
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(HANDOVER_TIMEOUT))?;
        // The runtime sends one byte (or the terminal's name) with it.
        let mut payload = [0u8; 256];
        let (_, master) = conn
            .recv_with_fd(&mut payload)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        master.map(Some).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the runtime sent no terminal on its console socket",
            )
        })
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_terminal_sent_on_the_console_socket_is_received_and_the_socket_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.console");
        let socket = ConsoleSocket::bind(path.clone()).unwrap();
        let pty = open(None).unwrap();
        // What a runtime does: connect, send the master with one byte.
        let runtime = UnixStream::connect(&path).unwrap();
        runtime
            .send_with_fd(&b" "[..], pty.master.as_raw_fd())
            .unwrap();
        let mut master = socket.receive(|| false).unwrap().expect("a terminal");
        // The received master is the same terminal: what the slave side
        // writes comes out of it.
        let mut slave = File::from(pty.slave);
        slave.write_all(b"hello\n").unwrap();
        let mut buf = [0u8; 16];
        let n = master.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"hello"), "{:?}", &buf[..n]);
        drop(socket);
        assert!(!path.exists());
    }

    #[test]
    fn a_runtime_that_ends_without_connecting_gives_no_terminal() {
        let dir = tempfile::tempdir().unwrap();
        let socket = ConsoleSocket::bind(dir.path().join("c.console")).unwrap();
        let mut polls = 0;
        let got = socket
            .receive(|| {
                polls += 1;
                polls > 3
            })
            .unwrap();
        assert!(got.is_none());
    }
}
