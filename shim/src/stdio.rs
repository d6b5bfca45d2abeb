//! A process's stdio through containerd's FIFOs. Without a terminal the
//! `hull` child writes the stdout/stderr FIFOs itself and its stdin is a
//! pipe we fill from the stdin FIFO (so that CloseIO can end it, see
//! [`StdinRelay`]). With a
//! terminal the child gets a host PTY (its controlling terminal, so that
//! a resize reaches hull as SIGWINCH and hull passes it to the guest's
//! PTY); we relay between the FIFOs and the PTY's master.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Errors wiring a process's stdio.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// A FIFO containerd named could not be opened.
    #[error("Opening {0}")]
    Fifo(String, #[source] std::io::Error),
    /// openpty, or setting the PTY's mode or size.
    #[error("Host PTY")]
    Pty(#[source] std::io::Error),
}

/// The FIFOs (empty: none) and terminal flag of a create or exec request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// A process's input: the stdin FIFO relayed into `target` (hull's stdin
/// pipe, or the PTY's master). The FIFO is opened read-write, so it never
/// reads as ended while the client reopens it; the input ends on CloseIO,
/// once everything written before it has been relayed (the client closes
/// its end after its last write, then asks CloseIO).
pub struct StdinRelay {
    target: Mutex<Option<Box<dyn Write + Send>>>,
    closing: AtomicBool,
}

/// The relay's share of the process's input.
pub type StdinSlot = Arc<StdinRelay>;

impl StdinRelay {
    fn new(target: Option<Box<dyn Write + Send>>) -> StdinSlot {
        Arc::new(StdinRelay {
            target: Mutex::new(target),
            closing: AtomicBool::new(false),
        })
    }

    /// CloseIO: the input ends once the FIFO is drained.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    fn end(&self) {
        self.target.lock().map(|mut t| t.take()).ok();
    }

    /// Writes `data` on; false once there is nowhere to write.
    fn forward(&self, data: &[u8]) -> bool {
        let Ok(mut guard) = self.target.lock() else {
            return false;
        };
        let Some(w) = guard.as_mut() else {
            return false;
        };
        w.write_all(data).and_then(|()| w.flush()).is_ok()
    }
}

/// The parent's ends of a started process's stdio.
pub struct Attached {
    /// Input relay target (closed by CloseIO or the FIFO's end).
    pub stdin: StdinSlot,
    /// The PTY's master, for ResizePty.
    pub pty: Option<Arc<OwnedFd>>,
    /// The PTY output relay: joined before the exit is reported so that
    /// no output is lost.
    pub output: Option<JoinHandle<()>>,
}

/// Spawns `cmd` with `paths` as its stdio.
pub fn spawn(mut cmd: Command, paths: &StdioPaths) -> Result<(Child, Attached), StdioError> {
    if paths.terminal {
        return spawn_on_pty(cmd, paths);
    }
    cmd.stdout(open_output(&paths.stdout)?);
    cmd.stderr(open_output(&paths.stderr)?);
    cmd.stdin(if paths.stdin.is_empty() {
        Stdio::null()
    } else {
        Stdio::piped()
    });
    let mut child = cmd
        .spawn()
        .map_err(|e| StdioError::Fifo("hull".into(), e))?;
    let stdin = StdinRelay::new(
        child
            .stdin
            .take()
            .map(|s| Box::new(s) as Box<dyn Write + Send>),
    );
    relay_input(&paths.stdin, stdin.clone())?;
    let attached = Attached {
        stdin,
        pty: None,
        output: None,
    };
    Ok((child, attached))
}

/// An output FIFO opened for writing (containerd already reads it), or
/// nothing.
fn open_output(path: &str) -> Result<Stdio, StdioError> {
    if path.is_empty() {
        return Ok(Stdio::null());
    }
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| StdioError::Fifo(path.into(), e))?;
    Ok(f.into())
}

/// Opens the stdin FIFO (read-write: never blocks, never a premature
/// end) and relays it into `relay` from a thread until CloseIO and the
/// FIFO is drained, or the process's input is gone.
fn relay_input(path: &str, relay: StdinSlot) -> Result<(), StdioError> {
    if path.is_empty() {
        return Ok(());
    }
    let fifo = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| StdioError::Fifo(path.into(), e))?;
    std::thread::spawn(move || copy_input(fifo, &relay));
    Ok(())
}

fn copy_input(mut fifo: File, relay: &StdinRelay) {
    let mut buf = [0u8; 8192];
    loop {
        // Decided before polling: data written before CloseIO is in the
        // FIFO by then, so an empty poll after it means drained.
        let closing = relay.closing.load(Ordering::SeqCst);
        if !readable(&fifo, 100) {
            if closing {
                break;
            }
            continue;
        }
        match fifo.read(&mut buf) {
            Ok(n) if n > 0 && relay.forward(&buf[..n]) => {}
            _ => break,
        }
    }
    relay.end();
}

/// Whether `f` has data within `timeout_ms`.
fn readable(f: &File, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd we own, for an fd open for the call's duration.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    n > 0 && pfd.revents & libc::POLLIN != 0
}

/// A host PTY: (master, slave), the slave raw (the guest's PTY does the
/// line discipline; ours only carries bytes) at 80x24 until a resize.
fn open_pty() -> Result<(OwnedFd, OwnedFd), StdioError> {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two fds into the ints we pass; name, termios
    // and winsize may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(StdioError::Pty(std::io::Error::last_os_error()));
    }
    // SAFETY: openpty succeeded: both fds are open and ours alone.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    make_raw(&slave)?;
    resize(&master, 80, 24)?;
    Ok((master, slave))
}

fn make_raw(fd: &OwnedFd) -> Result<(), StdioError> {
    // SAFETY: termios is plain data; tcgetattr fills it from a valid fd.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and a termios we own.
    if unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) } != 0 {
        return Err(StdioError::Pty(std::io::Error::last_os_error()));
    }
    // SAFETY: cfmakeraw only edits the termios we own.
    unsafe { libc::cfmakeraw(&mut t) };
    // SAFETY: a valid fd and an initialised termios.
    if unsafe { libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &t) } != 0 {
        return Err(StdioError::Pty(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Sets the PTY's window size (the kernel signals its session's
/// foreground group, i.e. hull, with SIGWINCH).
pub fn resize(master: &OwnedFd, width: u16, height: u16) -> Result<(), StdioError> {
    let size = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize we own from a valid PTY fd.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) } != 0 {
        return Err(StdioError::Pty(std::io::Error::last_os_error()));
    }
    Ok(())
}

fn spawn_on_pty(mut cmd: Command, paths: &StdioPaths) -> Result<(Child, Attached), StdioError> {
    let (master, slave) = open_pty()?;
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(StdioError::Pty);
    cmd.stdin(Stdio::from(dup(&slave)?));
    cmd.stdout(Stdio::from(dup(&slave)?));
    cmd.stderr(Stdio::from(slave));
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls (setsid, ioctl) on fd 0, the slave.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| StdioError::Fifo("hull".into(), e))?;
    // The command (and so our copies of the slave) is gone after spawn:
    // the master reads EIO once hull and its children closed theirs.
    drop(cmd);
    let reader = File::from(dup(&master)?);
    let writer: Option<File> = (!paths.stdout.is_empty())
        .then(|| OpenOptions::new().write(true).open(&paths.stdout))
        .transpose()
        .map_err(|e| StdioError::Fifo(paths.stdout.clone(), e))?;
    let relay = std::thread::spawn(move || copy_output(reader, writer));
    let stdin = StdinRelay::new(
        (!paths.stdin.is_empty())
            .then(|| dup(&master).map(|m| Box::new(File::from(m)) as Box<dyn Write + Send>))
            .transpose()?,
    );
    relay_input(&paths.stdin, stdin.clone())?;
    let attached = Attached {
        stdin,
        pty: Some(Arc::new(master)),
        output: Some(relay),
    };
    Ok((child, attached))
}

/// PTY output to the stdout FIFO until the PTY's last writer closes.
fn copy_output(mut from: File, to: Option<File>) {
    let mut buf = [0u8; 8192];
    let mut to = to;
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        if let Some(w) = to.as_mut() {
            if w.write_all(&buf[..n]).is_err() {
                to = None;
            }
        }
    }
}
