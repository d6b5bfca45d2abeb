//! `-u user[:group]` to numeric IDs from the image's own /etc/passwd and
//! /etc/group, as Docker resolves them (the VM mode's agent does the same
//! in the guest). The files are image content: they are opened inside the
//! root (`RESOLVE_IN_ROOT`), so a symlinked /etc/passwd cannot make hull
//! read a host file.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::OciError;

/// A process's user as the runtime spec wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    /// User ID.
    pub uid: u32,
    /// Primary group ID.
    pub gid: u32,
    /// Supplementary groups (those listing the user by name).
    pub additional: Vec<u32>,
}

/// Reads `rel` under `root` without leaving it; `None` if absent.
fn read_in_root(root: &Path, rel: &str) -> Option<String> {
    let root_c = CString::new(root.as_os_str().as_bytes()).ok()?;
    let rel_c = CString::new(rel).ok()?;
    // SAFETY: plain open(2) of a directory path we own; checked below.
    let dirfd = unsafe {
        libc::open(
            root_c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dirfd < 0 {
        return None;
    }
    // SAFETY: `dirfd` is a fresh descriptor we own.
    let dir = unsafe { OwnedFd::from_raw_fd(dirfd) };
    // SAFETY: open_how is plain data; zero is valid (and required for
    // fields this code does not set).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 reads `how` (valid, with its size) and the path.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            std::os::fd::AsRawFd::as_raw_fd(&dir),
            rel_c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: openat2 returned a fresh descriptor we now own.
    let file = unsafe { std::fs::File::from_raw_fd(fd as i32) };
    let mut text = String::new();
    // An image's passwd is small: cap what a hostile one can make us read.
    file.take(1 << 20).read_to_string(&mut text).ok()?;
    Some(text)
}

/// Fields of the first `name:`-or-numeric line matching `key` in a
/// colon-separated database.
fn lookup<'a>(db: &'a str, key: &str) -> Option<Vec<&'a str>> {
    let rows = db.lines().map(|l| l.split(':').collect::<Vec<_>>());
    let rows: Vec<Vec<&str>> = rows.filter(|f| f.len() >= 3).collect();
    rows.iter()
        .find(|f| f[0] == key)
        .or_else(|| rows.iter().find(|f| f[2] == key))
        .cloned()
}

/// Resolves `spec` (`""`, `name`, `uid`, `name:group`, `uid:gid`) in the
/// root filesystem at `root`.
pub fn resolve(root: &Path, spec: &str) -> Result<Ids, OciError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let passwd = read_in_root(root, "/etc/passwd").unwrap_or_default();
    let groups = read_in_root(root, "/etc/group").unwrap_or_default();
    let entry = lookup(&passwd, user);
    let (uid, mut gid, name) = match (&entry, user.parse::<u32>()) {
        (Some(f), _) => (
            f[2].parse().map_err(|_| OciError::NoUser(user.into()))?,
            f.get(3).and_then(|g| g.parse().ok()).unwrap_or(0),
            Some(f[0]),
        ),
        // A numeric user need not exist, as in Docker.
        (None, Ok(uid)) => (uid, 0, None),
        (None, Err(_)) => return Err(OciError::NoUser(user.into())),
    };
    if let Some(g) = group.filter(|g| !g.is_empty()) {
        gid = match (lookup(&groups, g), g.parse::<u32>()) {
            (Some(f), _) => f[2].parse().map_err(|_| OciError::NoUser(spec.into()))?,
            (None, Ok(n)) => n,
            (None, Err(_)) => return Err(OciError::NoUser(spec.into())),
        };
    }
    let additional = match (name, group) {
        (Some(n), None) => groups
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .filter(|f| f.len() >= 4 && f[3].split(',').any(|m| m == n))
            .filter_map(|f| f[2].parse().ok())
            .filter(|g| *g != gid)
            .collect(),
        _ => Vec::new(),
    };
    Ok(Ids {
        uid,
        gid,
        additional,
    })
}

/// Refuses IDs the container's user namespace (IDs `0..size`) cannot
/// map: the runtime would fail later with a less clear message.
pub fn check_mapped(ids: &Ids, size: u32) -> Result<(), OciError> {
    let all = [ids.uid, ids.gid]
        .into_iter()
        .chain(ids.additional.iter().copied());
    match all.into_iter().find(|id| *id >= size) {
        Some(id) => Err(OciError::Unmapped(id, size - 1)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\napp:x:1000:\nwheel:x:10:app\n",
        )
        .unwrap();
        d
    }

    #[test]
    fn names_numbers_and_groups() {
        let d = root();
        let r = |s| resolve(d.path(), s).unwrap();
        assert_eq!(r("").uid, 0);
        assert_eq!(
            r("app"),
            Ids {
                uid: 1000,
                gid: 1000,
                additional: vec![10]
            }
        );
        assert_eq!((r("1000").uid, r("1000").gid), (1000, 1000));
        assert_eq!((r("4242").uid, r("4242").gid), (4242, 0));
        assert_eq!((r("app:wheel").gid, r("app:7").gid), (10, 7));
        assert!(matches!(
            resolve(d.path(), "nobody"),
            Err(OciError::NoUser(_))
        ));
        assert!(check_mapped(&r("app"), 65_536).is_ok());
        let err = check_mapped(&r("70000"), 65_536).unwrap_err();
        assert_eq!(
            err.to_string(),
            "User 70000 is outside the container's user namespace (IDs 0-65535)"
        );
    }

    #[test]
    fn a_symlinked_passwd_stays_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("etc/passwd")).unwrap();
        // The host's /etc/passwd has root; inside this root there is none.
        assert!(matches!(
            resolve(d.path(), "root"),
            Err(OciError::NoUser(_))
        ));
    }
}
