//! OCI whiteouts.
//!
//! - `<dir>/.wh.<name>` deletes `<dir>/<name>` (recursively) as it came from
//!   lower layers. Per the OCI image spec a whiteout never hides what the
//!   same layer adds, so a name this layer already created is left alone.
//! - `<dir>/.wh..wh..opq` makes `<dir>` opaque: everything in it that came
//!   from earlier layers goes, what this layer adds stays, whatever the
//!   order of the entries in the tar. The unpacker records every path the
//!   layer creates (and their ancestors) and prunes opaque directories at
//!   the end of the layer.
//! - Other `.wh..wh.*` names (aufs metadata) are ignored; whiteout files are
//!   never created.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::os::fd::AsRawFd;

use super::apply::{self, cstring, errno, openat2};

/// Prefix of whiteout names.
pub const PREFIX: &[u8] = b".wh.";
/// Name of the opaque-directory marker.
pub const OPAQUE: &[u8] = b".wh..wh..opq";

/// What a final path component means.
#[derive(Debug, PartialEq, Eq)]
pub enum Whiteout<'a> {
    /// Not a whiteout: an ordinary entry.
    No,
    /// Delete this name from lower layers.
    Name(&'a [u8]),
    /// Make the parent directory opaque.
    Opaque,
    /// Other `.wh..wh.` metadata: skip.
    Meta,
}

/// Classifies the final component `name`.
pub fn classify(name: &[u8]) -> Whiteout<'_> {
    if name == OPAQUE {
        Whiteout::Opaque
    } else if name.starts_with(b".wh..wh.") {
        Whiteout::Meta
    } else if let Some(n) = name.strip_prefix(PREFIX) {
        if n.is_empty() || n == b"." || n == b".." {
            Whiteout::Meta
        } else {
            Whiteout::Name(n)
        }
    } else {
        Whiteout::No
    }
}

/// Paths created by the current layer, with all their ancestors.
///
/// Kept as 64-bit keyed hashes, not strings: a layer may have a hundred
/// thousand entries and in the guest every page of memory costs
/// milliseconds. The key is random per process, so a layer cannot aim
/// for collisions (which would only keep a lower-layer entry alive).
#[derive(Debug, Default)]
pub struct Created {
    set: HashSet<u64>,
    hasher: RandomState,
}

impl Created {
    fn key(&self, path: &[u8]) -> u64 {
        self.hasher.hash_one(path)
    }

    /// Records `path` (cleaned) and its ancestors.
    pub fn insert(&mut self, path: &[u8]) {
        let mut p = path;
        loop {
            if !self.set.insert(self.key(p)) {
                return; // its ancestors are there already
            }
            match p.iter().rposition(|&b| b == b'/') {
                Some(i) => p = &p[..i],
                None => return,
            }
        }
    }

    /// Whether this layer created `path`.
    pub fn contains(&self, path: &[u8]) -> bool {
        self.set.contains(&self.key(path))
    }
}

/// Removes from the directory `dir` (cleaned path relative to the root fd
/// `root`) everything the current layer did not create. A directory that
/// does not exist, or that is reached through a symlink (whose contents
/// the recorded paths would not match), is left alone. Returns whether
/// the directory was pruned.
pub fn prune_opaque(root: i32, dir: &[u8], created: &Created) -> io::Result<bool> {
    let path = if dir.is_empty() { &b"."[..] } else { dir };
    let fd = match openat2(
        root,
        &cstring(path)?,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_SYMLINKS,
    ) {
        Ok(fd) => fd,
        Err(e) if matches!(errno(&e), libc::ENOENT | libc::ENOTDIR | libc::ELOOP) => {
            return Ok(false)
        }
        Err(e) => return Err(e),
    };
    prune(fd.as_raw_fd(), dir, created)?;
    Ok(true)
}

fn prune(fd: i32, dir: &[u8], created: &Created) -> io::Result<()> {
    for ent in apply::read_dir(fd)? {
        let mut p = Vec::with_capacity(dir.len() + 1 + ent.name.len());
        if !dir.is_empty() {
            p.extend_from_slice(dir);
            p.push(b'/');
        }
        p.extend_from_slice(&ent.name);
        let c = cstring(&ent.name)?;
        if !created.contains(&p) {
            apply::remove_all(fd, &c)?;
        } else if ent.kind == libc::DT_DIR || ent.kind == libc::DT_UNKNOWN {
            match apply::openat(
                fd,
                &c,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0,
            ) {
                Ok(sub) => prune(sub.as_raw_fd(), &p, created)?,
                Err(e) if matches!(errno(&e), libc::ENOTDIR | libc::ELOOP) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(classify(b"a"), Whiteout::No);
        assert_eq!(classify(b".wh.a"), Whiteout::Name(b"a"));
        assert_eq!(classify(b".wh..wh..opq"), Whiteout::Opaque);
        assert_eq!(classify(b".wh..wh.plnk"), Whiteout::Meta);
        assert_eq!(classify(b".wh."), Whiteout::Meta);
        assert_eq!(classify(b".wh.."), Whiteout::Meta);
    }

    #[test]
    fn created_has_ancestors() {
        let mut c = Created::default();
        c.insert(b"a/b/c");
        c.insert(b"a/d");
        assert!(c.contains(b"a") && c.contains(b"a/b") && c.contains(b"a/b/c"));
        assert!(c.contains(b"a/d"));
        assert!(!c.contains(b"a/b/x"));
    }
}
