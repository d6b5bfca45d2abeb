//! Paths of set-up requests that lie in a container root the image made.
//!
//! The image decides what `/etc`, `/data` or `/proc` are in the root: a
//! symlink `/etc -> /run/hull` or `/data -> ../../..` would make a plain
//! `mkdir -p`, `write` or `mount` on `<root>/etc/hosts` land in the
//! guest's own tree (runc's mount-target CVE class). Here every directory
//! on the way is resolved with the unpacker's `openat2(RESOLVE_IN_ROOT)`
//! code, as a chroot would, and the final component is never followed:
//! a file is replaced, not written through, and a mount point is handed
//! to `mount(2)` as `/proc/self/fd/N` of an fd opened inside the root.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use crate::unpack::apply::{self, Dir, Target};

/// A path inside a container root: the root opened, the path relative to it.
struct InRoot {
    target: Target,
    /// Cleaned, relative to the root ("" = the root itself).
    rel: Vec<u8>,
}

impl InRoot {
    /// Splits `path` (absolute guest path) at `root`; a path outside
    /// `root` is refused.
    fn open(root: &str, path: &str) -> io::Result<InRoot> {
        let rest = path
            .strip_prefix(root.trim_end_matches('/'))
            .filter(|r| r.is_empty() || r.starts_with('/'))
            .ok_or_else(|| io::Error::other(format!("{path} is not under {root}")))?;
        Ok(InRoot {
            target: Target::open(std::path::Path::new(root))?,
            rel: crate::unpack::clean(rest.as_bytes()),
        })
    }

    /// The parent directory (made if missing, inside the root) and the
    /// final name; the root itself has no final name.
    fn parent_and_name(&mut self) -> io::Result<(Rc<Dir>, CString)> {
        let (parent, name) = match self.rel.iter().rposition(|&b| b == b'/') {
            Some(i) => (self.rel[..i].to_vec(), self.rel[i + 1..].to_vec()),
            None => (Vec::new(), self.rel.clone()),
        };
        if name.is_empty() {
            return Err(io::Error::other("no file name"));
        }
        let dir = self.target.dir(&parent, true)?.ok_or_else(not_found)?;
        Ok((dir, apply::cstring(&name)?))
    }
}

fn not_found() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOENT)
}

/// Makes directory `path` and its parents inside `root`; an `O_PATH` fd
/// of it (for [`fd_path`]).
pub fn mkdir(root: &str, path: &str) -> io::Result<OwnedFd> {
    let mut at = InRoot::open(root, path)?;
    let dir = at
        .target
        .dir(&at.rel.clone(), true)?
        .ok_or_else(not_found)?;
    reopen(&dir)
}

/// An `O_PATH` fd of an existing `Dir` that outlives the parent cache.
fn reopen(dir: &Dir) -> io::Result<OwnedFd> {
    apply::openat2(
        dir.raw(),
        c".",
        libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    )
}

/// Writes `content` to `path` inside `root`, replacing whatever entry is
/// there (a symlink is removed, never written through); parents are made.
pub fn write_file(root: &str, path: &str, content: &[u8], mode: u32) -> io::Result<()> {
    let mut at = InRoot::open(root, path)?;
    let (dir, name) = at.parent_and_name()?;
    match apply::unlinkat(dir.raw(), &name, 0) {
        Err(e) if apply::errno(&e) != libc::ENOENT => return Err(e),
        _ => {}
    }
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let fd = apply::openat(dir.raw(), &name, flags, mode)?;
    apply::write_all(fd.as_raw_fd(), content)?;
    // Creation applied the umask; the caller's bits are the ones wanted.
    apply::fchmod(fd.as_raw_fd(), mode)
}

/// A regular file at `path` inside `root` to mount a file over (as
/// `/etc/hosts`): kept if it is one, made empty if missing, a symlink
/// replaced by an empty file (mount would follow it). Anything else
/// (a directory, a device) is refused. An `O_PATH` fd of it.
pub fn mount_file(root: &str, path: &str) -> io::Result<OwnedFd> {
    let mut at = InRoot::open(root, path)?;
    let (dir, name) = at.parent_and_name()?;
    match apply::lstatat(dir.raw(), &name) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => {}
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
            apply::unlinkat(dir.raw(), &name, 0)?;
            create_empty(&dir, &name)?;
        }
        Ok(_) => return Err(io::Error::other("mount point is not a file")),
        Err(e) if apply::errno(&e) == libc::ENOENT => create_empty(&dir, &name)?,
        Err(e) => return Err(e),
    }
    apply::openat(
        dir.raw(),
        &name,
        libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        0,
    )
}

fn create_empty(dir: &Dir, name: &CString) -> io::Result<()> {
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    apply::openat(dir.raw(), name, flags, 0o644).map(drop)
}

/// The path through which `mount(2)` (or anything else) reaches exactly
/// the entry `fd` was opened on, whatever the symlinks now say.
pub fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::path::Path;

    /// A root whose `etc`, `data` and `etc/hostname` are symlinks that
    /// lead out of it (absolute, and by `..`), next to a directory
    /// `outside` they must never reach.
    fn hostile_root() -> (tempfile::TempDir, String, std::path::PathBuf) {
        let top = tempfile::tempdir().unwrap();
        let outside = top.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let root = top.path().join("root");
        std::fs::create_dir(&root).unwrap();
        symlink(&outside, root.join("etc")).unwrap();
        symlink("../../../../outside", root.join("data")).unwrap();
        std::fs::create_dir(root.join("run")).unwrap();
        symlink(outside.join("hostname"), root.join("run/hostname")).unwrap();
        let r = root.to_str().unwrap().to_string();
        (top, r, outside)
    }

    fn is_empty(dir: &Path) -> bool {
        std::fs::read_dir(dir).unwrap().next().is_none()
    }

    fn real(fd: &OwnedFd) -> std::path::PathBuf {
        std::fs::read_link(fd_path(fd)).unwrap()
    }

    #[test]
    fn writes_through_escaping_symlinks_land_inside_the_root() {
        let (_top, root, outside) = hostile_root();
        write_file(&root, &format!("{root}/etc/hosts"), b"h\n", 0o644).unwrap();
        write_file(&root, &format!("{root}/run/hostname"), b"n\n", 0o600).unwrap();
        assert!(is_empty(&outside), "something was written outside the root");
        // `/etc -> <outside>` read as a chroot would: `<root><outside>`.
        let hosts = format!("{root}{}/hosts", outside.display());
        assert_eq!(std::fs::read(&hosts).unwrap(), b"h\n");
        let name = Path::new(&root).join("run/hostname");
        assert!(!std::fs::symlink_metadata(&name).unwrap().is_symlink());
        assert_eq!(std::fs::read(&name).unwrap(), b"n\n");
        let mode = std::fs::metadata(&name).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn mount_points_behind_escaping_symlinks_resolve_inside_the_root() {
        let (_top, root, outside) = hostile_root();
        let dir = mkdir(&root, &format!("{root}/data/vol")).unwrap();
        let file = mount_file(&root, &format!("{root}/etc/resolv.conf")).unwrap();
        let replaced = mount_file(&root, &format!("{root}/run/hostname")).unwrap();
        assert!(is_empty(&outside), "something was made outside the root");
        for fd in [&dir, &file, &replaced] {
            assert!(real(fd).starts_with(&root), "{:?}", real(fd));
        }
        // `data -> ../../../../outside`: `..` stops at the root.
        assert_eq!(real(&dir), Path::new(&root).join("outside/vol"));
        assert!(std::fs::metadata(real(&replaced)).unwrap().is_file());
    }

    #[test]
    fn paths_outside_the_root_and_directories_as_files_are_refused() {
        let (_top, root, _outside) = hostile_root();
        assert!(mkdir(&root, "/elsewhere/x").is_err());
        assert!(mkdir(&root, &format!("{root}-sibling/x")).is_err());
        std::fs::create_dir(Path::new(&root).join("adir")).unwrap();
        assert!(mount_file(&root, &format!("{root}/adir")).is_err());
    }
}
