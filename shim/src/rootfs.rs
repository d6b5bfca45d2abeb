//! The task's image disk. containerd's snapshotter has unpacked the layers
//! on the host (as with Kata) and hands us mounts; hull's VMs read their
//! image from a read-only EROFS disk, so the shim mounts the snapshot on
//! the bundle's `rootfs` and writes it into an uncompressed EROFS image
//! with `mkfs.erofs` (native, no guest work). A fresh overlay snapshot
//! (empty upper directory) is the image's content alone: its disk is
//! cached by the layer directories, so every container of an image shares
//! one disk and one warm VM snapshot.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Errors preparing or releasing a task's root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A mount containerd passed could not be made.
    #[error("Mounting {kind} on {target}")]
    Mount {
        kind: String,
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Several mounts (we handle one, as containerd's snapshotters give).
    #[error("{0} rootfs mounts given; one is supported")]
    TooManyMounts(usize),
    /// mkfs.erofs is missing or failed.
    #[error("Making the image disk with mkfs.erofs: {0}")]
    Mkfs(String),
    /// Files of the disk cache.
    #[error("Image disk {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One mount of containerd's rootfs list (the protobuf's fields we use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootMount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// The image disk of a task and whether it is only this task's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageDisk {
    pub path: PathBuf,
    /// Made for this task alone (remove it with the task).
    pub private: bool,
}

/// The cache key of a fresh overlay snapshot (empty upper directory):
/// a digest of its layer directories' trees (names, types, modes,
/// owners, sizes, mtimes, link targets, devices). containerd's committed
/// layer snapshots never change, and their directory names are only
/// sequence numbers of one containerd root, so the trees themselves name
/// the image: the same image under another containerd root or namespace
/// finds the same disk (and the same warm VM snapshot).
pub fn shared_key(mounts: &[RootMount]) -> Option<String> {
    let [m] = mounts else { return None };
    if m.kind != "overlay" {
        return None;
    }
    let option = |name: &str| {
        m.options
            .iter()
            .find_map(|o| o.strip_prefix(name)?.strip_prefix('='))
    };
    let lower = option("lowerdir")?;
    let upper_is_empty = option("upperdir")
        .map(|u| std::fs::read_dir(u).is_ok_and(|mut d| d.next().is_none()))
        .unwrap_or(true);
    if !upper_is_empty {
        return None;
    }
    let mut h = Sha256::new();
    for layer in lower.split(':') {
        h.update(b"layer\0");
        digest_tree(Path::new(layer), Path::new(""), &mut h).ok()?;
    }
    Some(hex::encode(h.finalize()))
}

/// Feeds the metadata of every entry under `root/rel`, in name order.
fn digest_tree(root: &Path, rel: &Path, h: &mut Sha256) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut names: Vec<_> = std::fs::read_dir(root.join(rel))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let path = rel.join(&name);
        let m = std::fs::symlink_metadata(root.join(&path))?;
        let link = if m.file_type().is_symlink() {
            std::fs::read_link(root.join(&path))?
        } else {
            PathBuf::new()
        };
        let line = format!(
            "{}\0{:o}\0{}:{}\0{}\0{}.{}\0{}\0{}\n",
            path.display(),
            m.mode(),
            m.uid(),
            m.gid(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.rdev(),
            link.display()
        );
        h.update(line.as_bytes());
        if m.is_dir() {
            digest_tree(root, &path, h)?;
        }
    }
    Ok(())
}

/// The task's image disk: the cached one of its layers (made once), or a
/// new one of the mounted snapshot in the bundle. Returns whether the
/// snapshot was mounted on `<bundle>/rootfs` (to unmount at delete).
pub fn image_disk(
    mounts: &[RootMount],
    bundle: &Path,
    cache: &Path,
) -> Result<(ImageDisk, bool), RootfsError> {
    let rootfs = bundle.join("rootfs");
    let key = shared_key(mounts);
    let disk = match &key {
        Some(k) => ImageDisk {
            path: cache.join(format!("{k}.erofs")),
            private: false,
        },
        None => ImageDisk {
            path: bundle.join("rootfs.erofs"),
            private: true,
        },
    };
    if !disk.private && disk.path.exists() {
        return Ok((disk, false));
    }
    let mounted = mount_all(mounts, &rootfs)?;
    let made = make_erofs(&rootfs, &disk.path);
    if made.is_err() && mounted {
        unmount(&rootfs);
    }
    made.map(|()| (disk, mounted))
}

/// Mounts containerd's rootfs (none: the bundle's rootfs is ready).
fn mount_all(mounts: &[RootMount], target: &Path) -> Result<bool, RootfsError> {
    match mounts {
        [] => Ok(false),
        [m] => mount_one(m, target).map(|()| true),
        _ => Err(RootfsError::TooManyMounts(mounts.len())),
    }
}

/// mount(2) of one containerd mount: its flag options as flags, the rest
/// as the filesystem's data.
fn mount_one(m: &RootMount, target: &Path) -> Result<(), RootfsError> {
    let err = |source| RootfsError::Mount {
        kind: m.kind.clone(),
        target: target.to_path_buf(),
        source,
    };
    let (flags, data) = mount_flags(&m.options);
    let fstype = if m.kind == "bind" { "none" } else { &m.kind };
    let c = |s: &[u8]| CString::new(s).map_err(|_| err(std::io::ErrorKind::InvalidInput.into()));
    let (source, target_c) = (c(m.source.as_bytes())?, c(target.as_os_str().as_bytes())?);
    let (fstype, data) = (c(fstype.as_bytes())?, c(data.join(",").as_bytes())?);
    // SAFETY: every pointer is a NUL-terminated string that outlives the
    // call; mount(2) only reads them.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Splits mount options into mount(2) flags and filesystem data.
fn mount_flags(options: &[String]) -> (libc::c_ulong, Vec<&str>) {
    let mut flags = 0;
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" => {}
            "bind" => flags |= libc::MS_BIND,
            "rbind" => flags |= libc::MS_BIND | libc::MS_REC,
            "nosuid" => flags |= libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            other => data.push(other),
        }
    }
    (flags, data)
}

/// Unmounts the bundle's rootfs (lazily: a reader still in it must not
/// keep the task from going away).
pub fn unmount(rootfs: &Path) {
    let Ok(target) = CString::new(rootfs.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: a NUL-terminated path that outlives the call.
    let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        log::warn!(
            "unmounting {}: {}",
            rootfs.display(),
            std::io::Error::last_os_error()
        );
    }
}

/// `mkfs.erofs` of `dir` into `disk`, through a temporary file renamed
/// into place (a concurrent maker of the same cached disk is harmless).
fn make_erofs(dir: &Path, disk: &Path) -> Result<(), RootfsError> {
    let io = |source| RootfsError::Io {
        path: disk.to_path_buf(),
        source,
    };
    if let Some(parent) = disk.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let tmp = disk.with_extension(format!("tmp{}", std::process::id()));
    let out = Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg(&tmp)
        .arg(dir)
        .output()
        .map_err(|e| RootfsError::Mkfs(format!("{e} (install erofs-utils)")))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(RootfsError::Mkfs(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    std::fs::rename(&tmp, disk).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay(lower: &[&Path], upper: &Path) -> RootMount {
        let lower: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
        RootMount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "index=off".into(),
                format!("lowerdir={}", lower.join(":")),
                format!("upperdir={}", upper.display()),
            ],
        }
    }

    /// A layer directory with one file whose mtime is fixed.
    fn layer(content: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("etc");
        std::fs::write(&f, content).unwrap();
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(t)
            .unwrap();
        d
    }

    #[test]
    fn a_fresh_overlay_snapshot_is_keyed_by_its_layers_trees() {
        let upper = tempfile::tempdir().unwrap();
        let (a, a_again, b) = (layer("x"), layer("x"), layer("yy"));
        let key = |l: &tempfile::TempDir| shared_key(&[overlay(&[l.path()], upper.path())]);
        // Same tree in another directory (another containerd root): same key.
        assert_eq!(key(&a).unwrap(), key(&a_again).unwrap());
        assert_ne!(key(&a), key(&b));
        std::fs::write(upper.path().join("f"), "x").unwrap();
        assert_eq!(key(&a), None);
    }

    #[test]
    fn bind_snapshots_get_a_private_disk() {
        let bind = RootMount {
            kind: "bind".into(),
            source: "/s/1/fs".into(),
            options: vec!["rbind".into(), "ro".into()],
        };
        assert_eq!(shared_key(&[bind]), None);
        let options = ["rbind".into(), "ro".into(), "index=off".into()];
        let (flags, data) = mount_flags(&options);
        assert_eq!(flags, libc::MS_BIND | libc::MS_REC | libc::MS_RDONLY);
        assert_eq!(data, ["index=off"]);
    }

    #[test]
    fn the_disk_is_an_erofs_image_of_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hello"), "hi").unwrap();
        let bundle = tempfile::tempdir().unwrap();
        std::fs::create_dir(bundle.path().join("rootfs")).unwrap();
        let disk = bundle.path().join("d.erofs");
        make_erofs(dir.path(), &disk).unwrap();
        let bytes = std::fs::read(&disk).unwrap();
        // EROFS superblock magic at offset 1024.
        assert_eq!(bytes[1024..1028], 0xE0F5_E1E2u32.to_le_bytes());
    }
}
