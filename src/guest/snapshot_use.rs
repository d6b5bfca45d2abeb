//! Which snapshots of the store are in use, so that no hull deletes one
//! under another's restore.
//!
//! Several hull processes share a snapshot store, and they need not be
//! the same hull: during an upgrade, or with two checkouts' tests on one
//! machine, one hull's snapshots are "stale" to the other (another kernel
//! or agent). A restore reads the snapshot's files after choosing it; a
//! deletion between the two made the restore fail ("state.json: No such
//! file"). Each restore now holds a shared lock on `<snapshot>/.in-use`
//! until its guest answers (by then the VMM has read and mapped what it
//! needs: its mapping outlives the files), and stamps the file's time as
//! the snapshot's last use. A deletion takes the lock exclusively without
//! waiting and skips a snapshot in use; it first renames the directory
//! out of the store's names, so a restore that gets the lock afterwards
//! finds the snapshot gone instead of half deleted.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The lock file inside a snapshot's directory.
const IN_USE: &str = ".in-use";

/// A snapshot held for a restore: it is not deleted while this lives.
#[derive(Debug)]
pub struct InUse {
    _lock: File,
}

/// Holds snapshot `dir` for a restore and records the use; `None` if the
/// snapshot is gone (deleted since it was chosen: choose again).
pub fn hold(dir: &Path, state_file: &str) -> std::io::Result<Option<InUse>> {
    let lock = match File::create(dir.join(IN_USE)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // SAFETY: flock on a descriptor we own; released when `lock` closes.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_SH) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // A deletion may have renamed the directory while we waited: the
    // file locked must still be the one of that name, in a whole snapshot.
    let still_there = std::fs::metadata(dir.join(IN_USE))
        .is_ok_and(|m| lock.metadata().is_ok_and(|l| l.ino() == m.ino()));
    if !still_there || !dir.join(state_file).exists() {
        return Ok(None);
    }
    lock.set_modified(SystemTime::now())?;
    Ok(Some(InUse { _lock: lock }))
}

/// When snapshot `dir` was last restored (or made, if never restored).
pub fn last_used(dir: &Path) -> Option<SystemTime> {
    let stamp = |name: &str| std::fs::metadata(dir.join(name)).and_then(|m| m.modified());
    stamp(IN_USE).or_else(|_| stamp("meta.json")).ok()
}

/// Deletes snapshot `dir` unless a restore holds it; returns whether it
/// was deleted. The directory is first renamed to `.tmp-PID-removing-NAME`
/// in its store (a name the store's listing skips, and that the next save
/// cleans up if this process dies half way).
pub fn remove_unless_in_use(dir: &Path) -> std::io::Result<bool> {
    let Some(_lock) = crate::file_lock::try_lock_exclusive(&dir.join(IN_USE))? else {
        return Ok(false);
    };
    let aside = removal_name(dir);
    std::fs::rename(dir, &aside)?;
    std::fs::remove_dir_all(&aside)?;
    Ok(true)
}

fn removal_name(dir: &Path) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    let aside = format!(
        ".tmp-{}-removing-{}",
        std::process::id(),
        name.unwrap_or_default()
    );
    dir.with_file_name(aside)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(store: &Path, name: &str) -> PathBuf {
        let dir = store.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("state.json"), b"{}").unwrap();
        std::fs::write(dir.join("meta.json"), b"{}").unwrap();
        dir
    }

    #[test]
    fn a_held_snapshot_is_not_removed_and_a_free_one_is() {
        let store = tempfile::tempdir().unwrap();
        let dir = snapshot(store.path(), "a");
        let held = hold(&dir, "state.json").unwrap().expect("present");
        assert!(!remove_unless_in_use(&dir).unwrap());
        assert!(dir.join("state.json").exists());
        drop(held);
        assert!(remove_unless_in_use(&dir).unwrap());
        assert!(!dir.exists());
        // Nothing left aside either.
        assert_eq!(std::fs::read_dir(store.path()).unwrap().count(), 0);
        assert!(hold(&dir, "state.json").unwrap().is_none(), "gone");
    }

    #[test]
    fn a_hold_stamps_the_last_use() {
        let store = tempfile::tempdir().unwrap();
        let dir = snapshot(store.path(), "a");
        let old = SystemTime::now() - std::time::Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(dir.join("meta.json"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(last_used(&dir), Some(old), "never restored: its making");
        drop(hold(&dir, "state.json").unwrap());
        let used = last_used(&dir).unwrap();
        assert!(used > old + std::time::Duration::from_secs(3500));
    }

    #[test]
    fn a_snapshot_deleted_while_waiting_for_the_hold_is_gone() {
        let store = tempfile::tempdir().unwrap();
        let dir = snapshot(store.path(), "a");
        // The state file goes, as when a deletion renamed the directory
        // and another snapshot of the name is not there (yet).
        std::fs::remove_file(dir.join("state.json")).unwrap();
        assert!(hold(&dir, "state.json").unwrap().is_none());
    }
}
