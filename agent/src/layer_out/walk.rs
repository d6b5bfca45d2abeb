//! Walking an overlayfs upper directory: entries in a fixed order, each
//! classified (whiteout, opaque directory, ...) with its own xattrs.

use std::ffi::CString;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path};

use super::Error;

/// What an upper-dir entry stands for.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Kind {
    /// A directory; `opaque` hides the lower directory's contents.
    Dir {
        opaque: bool,
    },
    File,
    /// A symlink and its target.
    Symlink(Vec<u8>),
    Fifo,
    CharDev,
    BlockDev,
    /// Overlay's mark that the lower entry of this name is deleted.
    Whiteout,
    /// Sockets cannot go into a tar.
    Socket,
}

/// One entry of the upper directory.
#[derive(Debug)]
pub(super) struct Entry {
    /// Path relative to the upper dir, no leading or trailing `/`.
    pub rel: Vec<u8>,
    pub kind: Kind,
    /// `lstat` of the entry.
    pub meta: Metadata,
    /// Extended attributes without overlay's own, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

pub(super) fn path_str(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

fn io_err<'a>(rel: &'a [u8], op: &'static str) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        path: if rel.is_empty() {
            "/".into()
        } else {
            format!("/{}", path_str(rel))
        },
        op,
        source,
    }
}

/// `exclude` as relative byte paths (`/etc/hosts` -> `etc/hosts`).
pub(super) fn relative_paths(exclude: &[std::path::PathBuf]) -> Vec<Vec<u8>> {
    exclude
        .iter()
        .map(|p| {
            let parts: Vec<&[u8]> = p
                .components()
                .filter_map(|c| match c {
                    Component::Normal(n) => Some(n.as_bytes()),
                    _ => None,
                })
                .collect();
            parts.join(&b'/')
        })
        .collect()
}

/// Calls `visit` for every entry under `upper` (not the root itself):
/// per directory in byte order of the names, each directory followed by
/// its contents. Excluded paths (and everything under them) are skipped.
pub(super) fn walk(
    upper: &Path,
    exclude: &[Vec<u8>],
    visit: &mut dyn FnMut(&Entry, &Path) -> Result<(), Error>,
) -> Result<(), Error> {
    let meta = fs::symlink_metadata(upper).map_err(io_err(b"", "stat upper dir"))?;
    if !meta.is_dir() {
        return Err(Error::NotADirectory(upper.display().to_string()));
    }
    walk_dir(upper, b"", exclude, visit)
}

/// [`walk`] of what is under `dir`, the entries named `rel/...`.
pub(super) fn walk_dir(
    dir: &Path,
    rel: &[u8],
    exclude: &[Vec<u8>],
    visit: &mut dyn FnMut(&Entry, &Path) -> Result<(), Error>,
) -> Result<(), Error> {
    walk_dir_on(dir, rel, exclude, None, visit)
}

/// [`walk_dir`] that, given the `device` of `dir`'s file system, does not
/// descend into directories of another one (mount points).
pub(super) fn walk_dir_on(
    dir: &Path,
    rel: &[u8],
    exclude: &[Vec<u8>],
    device: Option<u64>,
    visit: &mut dyn FnMut(&Entry, &Path) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut names = Vec::new();
    for dirent in fs::read_dir(dir).map_err(io_err(rel, "read directory"))? {
        let dirent = dirent.map_err(io_err(rel, "read directory"))?;
        names.push(dirent.file_name());
    }
    names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let mut child_rel = rel.to_vec();
        if !child_rel.is_empty() {
            child_rel.push(b'/');
        }
        child_rel.extend_from_slice(name.as_bytes());
        if exclude.contains(&child_rel) {
            continue;
        }
        let path = dir.join(&name);
        let entry = read_entry(&path, child_rel)?;
        visit(&entry, &path)?;
        let same_fs = || {
            use std::os::unix::fs::MetadataExt;
            device.is_none_or(|d| fs::symlink_metadata(&path).is_ok_and(|m| m.dev() == d))
        };
        if matches!(entry.kind, Kind::Dir { .. }) && same_fs() {
            walk_dir_on(&path, &entry.rel, exclude, device, visit)?;
        }
    }
    Ok(())
}

/// `lstat`, xattrs and classification of one entry.
pub(super) fn read_entry(path: &Path, rel: Vec<u8>) -> Result<Entry, Error> {
    let meta = fs::symlink_metadata(path).map_err(io_err(&rel, "lstat"))?;
    let all = read_xattrs(path).map_err(io_err(&rel, "read xattrs"))?;
    let mut overlay = Vec::new();
    let mut xattrs = Vec::new();
    for (name, value) in all {
        match overlay_key(&name) {
            Some(key) => overlay.push((key.to_vec(), value)),
            None => xattrs.push((name, value)),
        }
    }
    let kind = classify(&meta, &overlay, &rel)?;
    let kind = match kind {
        Kind::Symlink(_) => {
            let target = fs::read_link(path).map_err(io_err(&rel, "readlink"))?;
            Kind::Symlink(target.as_os_str().as_bytes().to_vec())
        }
        k => k,
    };
    Ok(Entry {
        rel,
        kind,
        meta,
        xattrs,
    })
}

/// The part after `trusted.overlay.` / `user.overlay.` (overlay's own
/// xattrs, the latter with the `userxattr` mount option).
fn overlay_key(name: &[u8]) -> Option<&[u8]> {
    name.strip_prefix(b"trusted.overlay.")
        .or_else(|| name.strip_prefix(b"user.overlay."))
}

fn classify(meta: &Metadata, overlay: &[(Vec<u8>, Vec<u8>)], rel: &[u8]) -> Result<Kind, Error> {
    let get = |key: &[u8]| overlay.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    // Both need the lower layers to be understood: refuse rather than
    // write a layer that silently differs from the merged view.
    for (key, what) in [
        (
            &b"redirect"[..],
            "a renamed lower directory (overlay redirect_dir)",
        ),
        (
            &b"metacopy"[..],
            "a metadata-only copy-up (overlay metacopy)",
        ),
    ] {
        if get(key).is_some() {
            return Err(Error::Unsupported {
                path: format!("/{}", path_str(rel)),
                what,
            });
        }
    }
    let ft = meta.file_type();
    let chardev_whiteout = ft.is_char_device() && meta.rdev() == 0;
    // With `userxattr` (or Linux 6.7+ xattr whiteouts): an empty file
    // marked by an xattr.
    let xattr_whiteout = ft.is_file() && meta.len() == 0 && get(b"whiteout").is_some();
    Ok(if chardev_whiteout || xattr_whiteout {
        Kind::Whiteout
    } else if ft.is_dir() {
        // "y": opaque; "x" (Linux 6.7+) only says the directory holds
        // xattr whiteouts, which are seen entry by entry.
        Kind::Dir {
            opaque: get(b"opaque").is_some_and(|v| v.as_slice() == b"y"),
        }
    } else if ft.is_file() {
        Kind::File
    } else if ft.is_symlink() {
        Kind::Symlink(Vec::new())
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_char_device() {
        Kind::CharDev
    } else if ft.is_block_device() {
        Kind::BlockDev
    } else {
        Kind::Socket
    })
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput.into())
}

/// `read_xattrs` for the tests' own tree snapshots.
#[cfg(test)]
pub(super) fn read_xattrs_for_tests(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    read_xattrs(path)
}

/// All xattrs of `path` (not following a symlink), sorted by name. One
/// `llistxattr` for an entry without any (the common case).
fn read_xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let cpath = c_path(path)?;
    let mut names = vec![0u8; 1024];
    let len = loop {
        // SAFETY: cpath is NUL-terminated; the buffer pointer and length
        // describe `names`, which lives across the call.
        let n = unsafe { libc::llistxattr(cpath.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            Some(libc::ERANGE) => names.resize(names.len() * 4, 0),
            _ => return Err(e),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let value = read_xattr(&cpath, name)?;
        // Removed between list and get: it is not there.
        if let Some(value) = value {
            out.push((name.to_vec(), value));
        }
    }
    out.sort();
    Ok(out)
}

/// One xattr's value; None if it no longer exists.
fn read_xattr(cpath: &CString, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut value = vec![0u8; 256];
    loop {
        // SAFETY: both strings are NUL-terminated; pointer and length
        // describe `value`, which lives across the call.
        let n = unsafe {
            libc::lgetxattr(
                cpath.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if n >= 0 {
            value.truncate(n as usize);
            return Ok(Some(value));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENODATA) => return Ok(None),
            // Values are at most 64 KiB (XATTR_SIZE_MAX).
            Some(libc::ERANGE) if value.len() < (64 << 10) => value.resize(64 << 10, 0),
            _ => return Err(e),
        }
    }
}
