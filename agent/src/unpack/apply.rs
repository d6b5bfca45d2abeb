//! The filesystem side: resolving paths inside the target and creating
//! entries with `*at` system calls relative to a parent directory fd.
//!
//! Every parent directory is opened with `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)` relative to the target's root fd, so `..` and
//! symlinks (absolute or relative, made by this layer or an earlier one)
//! are resolved as if the target were `/`: nothing can land outside it.
//! The final component is never followed: files are created with
//! `O_CREAT | O_EXCL | O_NOFOLLOW`, links and nodes with `*at` calls, and
//! metadata is set with `AT_SYMLINK_NOFOLLOW` or on the fd just opened.
//!
//! Parent fds are kept in a small most-recently-used cache (tar streams
//! list siblings together), so a new file usually costs `openat`, `write`,
//! `futimens`, `close`, plus `fchown`/`fchmod` only when the owner or mode
//! differ from what creation gives.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::rc::Rc;

/// How many parent directory fds are kept open.
const CACHE: usize = 64;

/// Converts a `-1`-on-error return into `io::Result`.
fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A path or name as a C string (a NUL inside is an error).
pub fn cstring(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in name"))
}

/// `errno` of an error, 0 if none.
pub fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// A resolved parent directory.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    /// The directory has the setgid bit (new entries inherit its group).
    pub setgid: bool,
    /// The directory's group.
    pub gid: u32,
}

impl Dir {
    /// Raw fd for `*at` calls.
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The unpack target: its root fd and the parent-directory cache.
pub struct Target {
    root: Rc<Dir>,
    cache: Vec<(Vec<u8>, Rc<Dir>)>,
}

impl Target {
    /// Opens the target directory.
    pub fn open(path: &Path) -> io::Result<Target> {
        use std::os::unix::ffi::OsStrExt;
        let c = cstring(path.as_os_str().as_bytes())?;
        // SAFETY: `c` is a valid NUL-terminated string; the returned fd is
        // checked before use.
        let fd = cvt(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: `fd` was just returned by open and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let root = Rc::new(with_stat(fd)?);
        Ok(Target {
            root,
            cache: Vec::new(),
        })
    }

    /// The target root.
    pub fn root(&self) -> Rc<Dir> {
        self.root.clone()
    }

    /// Forgets cached parents (after anything was removed or replaced).
    pub fn invalidate(&mut self) {
        self.cache.clear();
    }

    /// The directory at `path` (cleaned, relative to the root, "" = root),
    /// following symlinks inside the root. With `create`, missing
    /// components are made (mode 0755); without, a missing directory is
    /// `Ok(None)`.
    pub fn dir(&mut self, path: &[u8], create: bool) -> io::Result<Option<Rc<Dir>>> {
        if path.is_empty() {
            return Ok(Some(self.root.clone()));
        }
        if let Some(i) = self.cache.iter().position(|(p, _)| p == path) {
            let e = self.cache.remove(i);
            let d = e.1.clone();
            self.cache.insert(0, e);
            return Ok(Some(d));
        }
        let d = match self.resolve(path) {
            Ok(d) => d,
            Err(e) if errno(&e) == libc::ENOENT && create => self.create_dirs(path)?,
            Err(e) if matches!(errno(&e), libc::ENOENT | libc::ENOTDIR) => return Ok(None),
            Err(e) => return Err(e),
        };
        let d = Rc::new(d);
        self.cache.insert(0, (path.to_vec(), d.clone()));
        self.cache.truncate(CACHE);
        Ok(Some(d))
    }

    fn resolve(&self, path: &[u8]) -> io::Result<Dir> {
        let fd = openat2(
            self.root.raw(),
            &cstring(path)?,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
        )?;
        with_stat(fd)
    }

    /// Makes every missing directory of `path`, one component at a time.
    /// A dangling symlink on the way is followed (inside the root) and its
    /// target made, as `mkdir -p` through a chroot would.
    fn create_dirs(&self, path: &[u8]) -> io::Result<Dir> {
        self.create_dirs_depth(path, 0)
    }

    fn create_dirs_depth(&self, path: &[u8], depth: u32) -> io::Result<Dir> {
        let mut cur: Option<Dir> = None;
        let mut prefix: Vec<u8> = Vec::with_capacity(path.len());
        for comp in path.split(|&b| b == b'/') {
            if !prefix.is_empty() {
                prefix.push(b'/');
            }
            prefix.extend_from_slice(comp);
            match self.resolve(&prefix) {
                Ok(d) => cur = Some(d),
                Err(e) if errno(&e) == libc::ENOENT => {
                    let parent = cur.as_ref().map_or(self.root.raw(), Dir::raw);
                    let c = cstring(comp)?;
                    match mkdirat(parent, &c, 0o755) {
                        Ok(()) => {}
                        Err(e) if errno(&e) == libc::EEXIST => {
                            // A dangling symlink: make its target.
                            let link = readlinkat(parent, &c)?;
                            if depth >= 40 {
                                return Err(io::Error::from_raw_os_error(libc::ELOOP));
                            }
                            let mut t = if link.starts_with(b"/") {
                                Vec::new()
                            } else {
                                prefix[..prefix.len() - comp.len()].to_vec()
                            };
                            t.extend_from_slice(&link);
                            let t = super::clean(&t);
                            if !t.is_empty() {
                                self.create_dirs_depth(&t, depth + 1)?;
                            }
                        }
                        Err(e) => return Err(e),
                    }
                    cur = Some(self.resolve(&prefix)?);
                }
                Err(e) => return Err(e),
            }
        }
        cur.ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    }
}

/// Wraps `fd` with its setgid flag and group.
fn with_stat(fd: OwnedFd) -> io::Result<Dir> {
    let st = fstat(fd.as_raw_fd())?;
    Ok(Dir {
        fd,
        setgid: st.st_mode & libc::S_ISGID != 0,
        gid: st.st_gid,
    })
}

/// `openat2(2)` relative to `dirfd`.
pub fn openat2(dirfd: RawFd, path: &CStr, flags: i32, resolve: u64) -> io::Result<OwnedFd> {
    // SAFETY: open_how is plain old data; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.resolve = resolve;
    loop {
        // SAFETY: `path` is NUL-terminated, `how` is a valid open_how and
        // its size is passed; the result is checked.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd,
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            // openat2 returns EAGAIN when a concurrent rename raced with
            // RESOLVE_IN_ROOT; retrying is what the man page asks for.
            if matches!(errno(&e), libc::EAGAIN | libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        // SAFETY: `r` is a new fd owned by nobody else.
        return Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) });
    }
}

/// `openat(2)` relative to `dirfd`.
pub fn openat(dirfd: RawFd, name: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; the result is checked.
    let fd = cvt(unsafe { libc::openat(dirfd, name.as_ptr(), flags, mode as libc::c_uint) })?;
    // SAFETY: `fd` is a new fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fstat(2)`.
pub fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: stat is plain old data; all-zero is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out pointer.
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

/// `fstatat(2)` without following a final symlink.
pub fn lstatat(dirfd: RawFd, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: stat is plain old data; all-zero is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated, `st` a valid out pointer.
    cvt(unsafe { libc::fstatat(dirfd, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

/// `readlinkat(2)`.
pub fn readlinkat(dirfd: RawFd, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: `name` is NUL-terminated, `buf` valid for its length.
    let n = unsafe { libc::readlinkat(dirfd, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// `mkdirat(2)`.
pub fn mkdirat(dirfd: RawFd, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    cvt(unsafe { libc::mkdirat(dirfd, name.as_ptr(), mode as libc::mode_t) }).map(drop)
}

/// `symlinkat(2)`.
pub fn symlinkat(target: &CStr, dirfd: RawFd, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dirfd, name.as_ptr()) }).map(drop)
}

/// `linkat(2)`, not following a symlink at the source.
pub fn linkat(olddir: RawFd, old: &CStr, newdir: RawFd, new: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated.
    cvt(unsafe { libc::linkat(olddir, old.as_ptr(), newdir, new.as_ptr(), 0) }).map(drop)
}

/// `mknodat(2)`.
pub fn mknodat(dirfd: RawFd, name: &CStr, mode: u32, dev: libc::dev_t) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    cvt(unsafe { libc::mknodat(dirfd, name.as_ptr(), mode as libc::mode_t, dev) }).map(drop)
}

/// `unlinkat(2)`.
pub fn unlinkat(dirfd: RawFd, name: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    cvt(unsafe { libc::unlinkat(dirfd, name.as_ptr(), flags) }).map(drop)
}

/// `fchownat(2)` without following a final symlink.
pub fn lchownat(dirfd: RawFd, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    cvt(unsafe { libc::fchownat(dirfd, name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })
        .map(drop)
}

/// `fchown(2)`.
pub fn fchown(fd: RawFd, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain syscall on an fd.
    cvt(unsafe { libc::fchown(fd, uid, gid) }).map(drop)
}

/// `fchmod(2)`.
pub fn fchmod(fd: RawFd, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall on an fd.
    cvt(unsafe { libc::fchmod(fd, mode as libc::mode_t) }).map(drop)
}

/// `fchmodat(2)`; only for names known not to be symlinks (it follows them).
pub fn fchmodat(dirfd: RawFd, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    cvt(unsafe { libc::fchmodat(dirfd, name.as_ptr(), mode as libc::mode_t, 0) }).map(drop)
}

fn timespecs(sec: i64, nsec: u32) -> [libc::timespec; 2] {
    [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: sec as libc::time_t,
            tv_nsec: nsec as libc::c_long,
        },
    ]
}

/// Sets the modification time of an open file (access time untouched).
pub fn futimens(fd: RawFd, sec: i64, nsec: u32) -> io::Result<()> {
    let ts = timespecs(sec, nsec);
    // SAFETY: `ts` is an array of two timespecs.
    cvt(unsafe { libc::futimens(fd, ts.as_ptr()) }).map(drop)
}

/// Sets the modification time of `name`, not following a symlink.
pub fn lutimensat(dirfd: RawFd, name: &CStr, sec: i64, nsec: u32) -> io::Result<()> {
    let ts = timespecs(sec, nsec);
    // SAFETY: `name` is NUL-terminated, `ts` two timespecs.
    cvt(unsafe { libc::utimensat(dirfd, name.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
        .map(drop)
}

/// `fsetxattr(2)`.
pub fn fsetxattr(fd: RawFd, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; `value` is valid for its length.
    cvt(unsafe { libc::fsetxattr(fd, name.as_ptr(), value.as_ptr().cast(), value.len(), 0) })
        .map(drop)
}

/// `lsetxattr(2)` on `name` in `dirfd` (through `/proc/self/fd`, as there
/// is no `*at` form before Linux 6.13).
pub fn lsetxattrat(dirfd: RawFd, name: &CStr, key: &CStr, value: &[u8]) -> io::Result<()> {
    let mut p = format!("/proc/self/fd/{dirfd}/").into_bytes();
    p.extend_from_slice(name.to_bytes());
    let p = cstring(&p)?;
    // SAFETY: both strings are NUL-terminated; `value` is valid for its length.
    cvt(unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
    .map(drop)
}

/// Writes all of `data` to `fd` (retrying short writes).
pub fn write_all(fd: RawFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: `data` is valid for `data.len()` bytes.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if errno(&e) == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// One directory entry from `getdents64`.
pub struct DirEntry {
    /// Name (never `.` or `..`).
    pub name: Vec<u8>,
    /// `DT_*` type (may be `DT_UNKNOWN`).
    pub kind: u8,
}

/// Every entry of the open directory `fd`.
pub fn read_dir(fd: RawFd) -> io::Result<Vec<DirEntry>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes; the kernel writes
        // whole linux_dirent64 records into it.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(out);
        }
        let mut rec = &buf[..n as usize];
        // struct linux_dirent64 { u64 ino; i64 off; u16 reclen; u8 type; char name[]; }
        while rec.len() >= 19 {
            let reclen = usize::from(u16::from_ne_bytes([rec[16], rec[17]]));
            if reclen < 19 || reclen > rec.len() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "bad dirent"));
            }
            let kind = rec[18];
            let name = &rec[19..reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if name != b"." && name != b".." {
                out.push(DirEntry {
                    name: name.to_vec(),
                    kind,
                });
            }
            rec = &rec[reclen..];
        }
    }
}

/// Removes `name` in `dirfd` and, for a directory, everything under it.
/// A missing `name` is not an error.
pub fn remove_all(dirfd: RawFd, name: &CStr) -> io::Result<()> {
    match unlinkat(dirfd, name, 0) {
        Ok(()) => return Ok(()),
        Err(e) if errno(&e) == libc::ENOENT => return Ok(()),
        Err(e) if matches!(errno(&e), libc::EISDIR | libc::EPERM) => {}
        Err(e) => return Err(e),
    }
    let d = openat(
        dirfd,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        0,
    )?;
    empty_dir(d.as_raw_fd())?;
    drop(d);
    unlinkat(dirfd, name, libc::AT_REMOVEDIR)
}

/// Removes everything inside the open directory `fd`.
pub fn empty_dir(fd: RawFd) -> io::Result<()> {
    for ent in read_dir(fd)? {
        let c = cstring(&ent.name)?;
        if ent.kind == libc::DT_DIR {
            let d = openat(
                fd,
                &c,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0,
            )?;
            empty_dir(d.as_raw_fd())?;
            drop(d);
            unlinkat(fd, &c, libc::AT_REMOVEDIR)?;
        } else {
            remove_all(fd, &c)?;
        }
    }
    Ok(())
}

/// The process umask, read without changing it (`None` if unknown).
pub fn umask() -> Option<u32> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let v = s.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(v.trim(), 8).ok()
}
