//! Exclusive advisory locks between hull processes (container names,
//! root filesystem preparation).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Creates (if needed) and exclusively locks `path`; the lock lasts as long
/// as the returned file is open.
pub fn lock_exclusive(path: &Path) -> std::io::Result<File> {
    let f = File::create(path)?;
    // SAFETY: flock on a descriptor we own; released when `f` closes.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

/// Takes an exclusive lock on `path` if no one holds it; `None` if
/// someone does.
pub fn try_lock_exclusive(path: &Path) -> std::io::Result<Option<File>> {
    let f = File::create(path)?;
    // SAFETY: flock on a descriptor we own; released when `f` closes.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(f))
}
