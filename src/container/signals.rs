//! Signals an attached `hull run`/`hull exec` passes on to the container's
//! process, and terminal size changes it passes on to the process's PTY.

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::container::terminal;
use crate::guest::agent_client::AgentClient;

/// Signals forwarded to the container's process as they are.
const FORWARDED: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Blocks the forwarded signals (and SIGWINCH when `winch_from` is given)
/// in this thread, and so in every thread it starts from now on, and
/// starts a thread that waits for them: each forwarded signal is sent to
/// agent process `process` once its id is known (non-zero); a SIGWINCH
/// sends that process's PTY the new size of the terminal on `winch_from`.
///
/// Call it before any other thread exists (the VM's threads among them),
/// so that none of them takes the signals. A forwarded signal never kills
/// hull itself, so a terminal in raw mode is restored when the container's
/// process ends and hull returns.
pub fn forward(
    uds: PathBuf,
    process: Arc<AtomicU32>,
    winch_from: Option<RawFd>,
) -> std::io::Result<()> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t for these calls.
    unsafe { libc::sigemptyset(&mut set) };
    let winch = winch_from.map(|_| libc::SIGWINCH);
    for sig in FORWARDED.into_iter().chain(winch) {
        // SAFETY: as above, with valid signal numbers.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    // SAFETY: blocking signals in the calling thread with a valid set.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            // One control connection, kept: resizes come in bursts while a
            // window is dragged, and each new connection costs a handshake.
            let mut client: Option<AgentClient> = None;
            loop {
                let mut sig = 0;
                // SAFETY: sigwait on the set blocked above, with a valid out-pointer.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    return;
                }
                let id = process.load(Ordering::Acquire);
                if id == 0 {
                    continue;
                }
                if client.is_none() {
                    client = AgentClient::connect(&uds).ok();
                }
                let Some(c) = client.as_mut() else { continue };
                let sent = match winch_from {
                    Some(fd) if sig == libc::SIGWINCH => match terminal::window_size(fd) {
                        Some(size) => c.resize_tty(id, size),
                        None => Ok(()),
                    },
                    _ => c.signal(id, sig),
                };
                if sent.is_err() {
                    // Reconnect next time: the connection may be what failed.
                    client = None;
                }
            }
        })?;
    Ok(())
}
