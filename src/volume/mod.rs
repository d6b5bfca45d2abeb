//! Named volumes: data that outlives containers. A volume is a sparse
//! ext4 disk file under `<root>/volumes/<name>/`, made by `mkfs.ext4` on
//! an empty file (the host never parses its content). A container gets it
//! as one more virtio-blk disk, mounted by the agent at the volume's path.
//!
//! A block device cannot be shared safely between two kernels that both
//! write it, so a volume is attached read-write by at most one running
//! container at a time, or read-only by any number while no one writes:
//! the container's VMM holds a lock on the volume for its whole run
//! (exclusive for read-write, shared for `:ro`). See docs/volumes.md.

pub mod bind;
pub mod spec;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// Errors of the volume store.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A name Docker would refuse.
    #[error("invalid volume name {0:?}: allowed are [a-zA-Z0-9][a-zA-Z0-9_.-]+")]
    InvalidName(String),
    /// No such volume.
    #[error("no such volume: {0}")]
    NotFound(String),
    /// Removing a volume containers use.
    #[error("volume {0} is in use by container(s) {1}")]
    InUse(String, String),
    /// Attaching a volume another running container writes (or reads,
    /// for a read-write attach).
    #[error("volume {name} is in use {how} by container {holder}: a volume is a block device, attached read-write by one running container at a time (or read-only by many)")]
    Busy {
        name: String,
        how: &'static str,
        holder: String,
    },
    /// A bad `--opt`.
    #[error("invalid volume option {0:?}: supported is size=SIZE (e.g. size=1G)")]
    BadOption(String),
    /// mkfs.ext4 failed.
    #[error("making the volume's file system: {0}")]
    Mkfs(String),
    /// Filesystem trouble.
    #[error("volume store {0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
}

/// Default size of a volume's disk (sparse: only what is written takes
/// space on the host).
pub const DEFAULT_SIZE: u64 = 8 << 30;
const META: &str = "volume.json";
const DISK: &str = "disk.ext4";
const LOCK: &str = "lock";
const HOLDER: &str = "holder";

/// What `volume inspect` shows of a volume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeMeta {
    pub name: String,
    /// RFC 3339.
    pub created: String,
    /// Size of its disk in bytes.
    pub size: u64,
    /// Made for one container (`-v /path`, an image's VOLUME): removed
    /// with it by `--rm` and `rm -v`.
    pub anonymous: bool,
    /// Filled with the image's content at its path already (done once,
    /// when a container first mounts it, as Docker does).
    #[serde(default)]
    pub populated: bool,
}

/// A volume of the store.
#[derive(Debug, Clone)]
pub struct Volume {
    pub meta: VolumeMeta,
    /// Its directory.
    pub dir: PathBuf,
}

impl Volume {
    /// Its disk file.
    pub fn disk(&self) -> PathBuf {
        self.dir.join(DISK)
    }

    /// Records that the image's content was copied in.
    pub fn mark_populated(&mut self) -> Result<(), VolumeError> {
        self.meta.populated = true;
        write_meta(&self.dir, &self.meta)
    }

    /// Host bytes its disk takes (it is sparse).
    pub fn disk_usage(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(self.disk()).map_or(0, |m| m.blocks() * 512)
    }
}

/// The volumes of one hull root.
pub struct VolumeStore {
    dir: PathBuf,
}

/// Whether `name` is a valid volume name (Docker's rule: two characters
/// at least).
pub fn valid_name(name: &str) -> bool {
    name.len() >= 2 && crate::container::spec::valid_name(name)
}

fn write_meta(dir: &Path, meta: &VolumeMeta) -> Result<(), VolumeError> {
    let tmp = dir.join(".volume.json.tmp");
    let io = |e| VolumeError::Io(dir.to_path_buf(), e);
    write_private(&tmp, &serde_json::to_vec_pretty(meta).unwrap_or_default()).map_err(io)?;
    std::fs::rename(&tmp, dir.join(META)).map_err(io)
}

/// Writes `bytes` to a new file only root reads (like everything of a
/// volume's: its metadata names the containers that use it).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::io::Write::write_all(&mut crate::container::store::create_private(path)?, bytes)
}

impl VolumeStore {
    /// The store of hull root `root`.
    pub fn new(root: &Path) -> Self {
        Self {
            dir: root.join("volumes"),
        }
    }

    fn io(&self, e: std::io::Error) -> VolumeError {
        VolumeError::Io(self.dir.clone(), e)
    }

    /// The volume `name`.
    pub fn get(&self, name: &str) -> Result<Volume, VolumeError> {
        let dir = self.dir.join(name);
        if !valid_name(name) {
            return Err(VolumeError::NotFound(name.into()));
        }
        let bytes =
            std::fs::read(dir.join(META)).map_err(|_| VolumeError::NotFound(name.into()))?;
        let meta =
            serde_json::from_slice(&bytes).map_err(|_| VolumeError::NotFound(name.into()))?;
        Ok(Volume { meta, dir })
    }

    /// Every volume, by name.
    pub fn list(&self) -> Result<Vec<Volume>, VolumeError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(e)),
        };
        let mut out: Vec<Volume> = entries
            .flatten()
            .filter_map(|e| self.get(&e.file_name().to_string_lossy()).ok())
            .collect();
        out.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
        Ok(out)
    }

    /// The volume `name`, made first if it does not exist (`volume
    /// create` of an existing name is no error, as in Docker). Without a
    /// name, a new anonymous volume with a random one.
    pub fn create(&self, name: Option<&str>, size: u64) -> Result<Volume, VolumeError> {
        let (name, anonymous) = match name {
            Some(n) if !valid_name(n) => return Err(VolumeError::InvalidName(n.into())),
            Some(n) => (n.to_string(), false),
            None => (crate::container::store::new_id(), true),
        };
        std::fs::create_dir_all(&self.dir).map_err(|e| self.io(e))?;
        let _lock =
            crate::file_lock::lock_exclusive(&self.dir.join(".lock")).map_err(|e| self.io(e))?;
        if let Ok(v) = self.get(&name) {
            return Ok(v);
        }
        // Made in a temporary directory renamed into place: a failure (or
        // a kill) never leaves a half-made volume under its name.
        let tmp = tempfile::Builder::new()
            .prefix(".new-")
            .tempdir_in(&self.dir)
            .map_err(|e| self.io(e))?;
        mkfs(&tmp.path().join(DISK), size, &name)?;
        let meta = VolumeMeta {
            name: name.clone(),
            created: images::time::now_rfc3339(),
            size,
            anonymous,
            populated: false,
        };
        write_meta(tmp.path(), &meta)?;
        let dir = self.dir.join(&name);
        std::fs::rename(tmp.keep(), &dir).map_err(|e| self.io(e))?;
        self.event(&name, "create");
        Ok(Volume { meta, dir })
    }

    /// Removes volume `name`; `users` are the containers that use it
    /// (the caller's to find): a volume in use is not removed.
    pub fn remove(&self, name: &str, users: &[String]) -> Result<(), VolumeError> {
        let v = self.get(name)?;
        if !users.is_empty() {
            return Err(VolumeError::InUse(name.into(), users.join(", ")));
        }
        std::fs::remove_dir_all(&v.dir).map_err(|e| self.io(e))?;
        self.event(name, "destroy");
        Ok(())
    }

    /// Records an event about volume `name`.
    fn event(&self, name: &str, action: &str) {
        let root = self.dir.parent().unwrap_or(&self.dir);
        let event = crate::events::Event::now(
            crate::events::Kind::Volume,
            action,
            name,
            &[("driver", "local")],
        );
        crate::events::record(root, &event);
    }
}

/// A sparse ext4 disk of `size` bytes at `path`, with a journal (a
/// volume's data must survive a VM killed mid-write).
fn mkfs(path: &Path, size: u64, label: &str) -> Result<(), VolumeError> {
    let io = |e| VolumeError::Io(path.to_path_buf(), e);
    // Only root (and the VMM that opens it as root) reads a volume's data.
    crate::container::store::create_private(path)
        .and_then(|f| f.set_len(size))
        .map_err(io)?;
    // Labels are at most 16 bytes.
    let label: String = label.chars().take(16).collect();
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-L", &label])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1"])
        .arg(path)
        .output()
        .map_err(|e| VolumeError::Mkfs(format!("mkfs.ext4: {e}")))?;
    if !out.status.success() {
        return Err(VolumeError::Mkfs(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

/// A volume attached to a running container: its lock, held until drop.
#[derive(Debug)]
pub struct Attached {
    _lock: File,
    /// The holder file a writer wrote (removed while still locked).
    holder: Option<PathBuf>,
}

/// Takes `v`'s lock for `holder` (a container name): exclusive for a
/// read-write attach, shared for read-only; an error naming the holder
/// when it is taken.
pub fn attach(v: &Volume, holder: &str, read_only: bool) -> Result<Attached, VolumeError> {
    let io = |e| VolumeError::Io(v.dir.clone(), e);
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(v.dir.join(LOCK))
        .map_err(io)?;
    let op = if read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    // SAFETY: flock on a descriptor we own; released when `f` closes.
    if unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
        let holder = std::fs::read_to_string(v.dir.join(HOLDER)).unwrap_or_default();
        let writer = !holder.trim().is_empty();
        return Err(VolumeError::Busy {
            name: v.meta.name.clone(),
            how: if writer { "read-write" } else { "read-only" },
            holder: if writer {
                holder.trim().to_string()
            } else {
                "(several)".into()
            },
        });
    }
    let holder = if read_only {
        None
    } else {
        let path = v.dir.join(HOLDER);
        write_private(&path, holder.as_bytes()).map_err(io)?;
        Some(path)
    };
    Ok(Attached { _lock: f, holder })
}

impl Drop for Attached {
    fn drop(&mut self) {
        // Before the lock goes (a process killed instead leaves a stale
        // name, which only shows in an error while someone reads).
        if let Some(path) = &self.holder {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_are_made_once_listed_and_removed_unless_used() {
        let root = tempfile::tempdir().unwrap();
        let store = VolumeStore::new(root.path());
        let v = store.create(Some("data"), 64 << 20).unwrap();
        assert!(!v.meta.anonymous);
        assert_eq!(std::fs::metadata(v.disk()).unwrap().len(), 64 << 20);
        // Again: the same volume, not a new file system.
        let again = store.create(Some("data"), 64 << 20).unwrap();
        assert_eq!(again.meta, v.meta);
        let anon = store.create(None, 64 << 20).unwrap();
        assert!(anon.meta.anonymous && anon.meta.name.len() == 64);
        assert_eq!(store.list().unwrap().len(), 2);
        assert!(matches!(
            store.create(Some("-bad"), 1 << 20),
            Err(VolumeError::InvalidName(_))
        ));
        let err = store.remove("data", &["web".into()]).unwrap_err();
        assert_eq!(err.to_string(), "volume data is in use by container(s) web");
        store.remove("data", &[]).unwrap();
        assert!(matches!(store.get("data"), Err(VolumeError::NotFound(_))));
        // No temporary directories left behind.
        let names: Vec<_> = std::fs::read_dir(root.path().join("volumes"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with(".lock"))
            .collect();
        assert_eq!(names, vec![anon.meta.name]);
    }

    #[test]
    fn one_writer_or_many_readers() {
        let root = tempfile::tempdir().unwrap();
        let store = VolumeStore::new(root.path());
        let v = store.create(Some("db"), 16 << 20).unwrap();
        let w = attach(&v, "web", false).unwrap();
        let err = attach(&v, "other", false).unwrap_err().to_string();
        assert!(err.contains("in use read-write by container web"), "{err}");
        assert!(attach(&v, "reader", true).is_err());
        drop(w);
        let r1 = attach(&v, "r1", true).unwrap();
        let _r2 = attach(&v, "r2", true).unwrap();
        let err = attach(&v, "writer", false).unwrap_err().to_string();
        assert!(err.contains("in use read-only"), "{err}");
        drop(r1);
    }
}
