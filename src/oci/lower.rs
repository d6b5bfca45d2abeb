//! The image's layers unpacked on the host, once per layer chain, as the
//! read-only lower directory of every container-mode container of that
//! image. This is where the container model makes the host parse
//! untrusted image content: it uses the guest's own unpacker (paths
//! resolved inside the target with `openat2(RESOLVE_IN_ROOT)`, final
//! symlinks never followed, lying sizes and GNU sparse bombs refused),
//! with the host's limits on top: each layer may inflate only to
//! `images::inflate::limit_for` its compressed size, and the chain may
//! create at most [`MAX_ENTRIES`] entries (the guest image builder's own
//! limit), so a bomb cannot fill the host's disk or inode table.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use agent::unpack::IdShift;

use super::OciError;

/// Entries the layers of one image may create on the host: the same
/// limit as the VM's image builder (`agent::unpack::ImageOptions`), so
/// both modes refuse the same images.
pub const MAX_ENTRIES: u64 = 1 << 21;

/// The cache of unpacked layer chains under a hull root.
pub struct LowerCache {
    dir: PathBuf,
    limits: HostLimits,
}

/// What the layers of one image may cost the host.
#[derive(Debug, Clone, Copy)]
struct HostLimits {
    /// Entries all layers may create.
    max_entries: u64,
    /// Tar bytes one layer may inflate to; `None`: `images::inflate::limit_for`
    /// the layer's compressed size.
    max_tar_bytes: Option<u64>,
}

impl HostLimits {
    const DEFAULT: HostLimits = HostLimits {
        max_entries: MAX_ENTRIES,
        max_tar_bytes: None,
    };

    fn tar_bytes_for(&self, compressed: u64) -> Result<u64, OciError> {
        match self.max_tar_bytes {
            Some(n) => Ok(n),
            None => Ok(images::inflate::limit_for(compressed)?),
        }
    }
}

/// The cache key of a layer chain unpacked with owners shifted by
/// `shift` (`None`: owners as in the layers): the same chain in another
/// image (a retag, a rebuild with the same layers) shares one lower
/// directory; another user namespace range needs its own.
pub fn chain_key(layers: &[(String, PathBuf)], shift: Option<IdShift>) -> String {
    let mut h = Sha256::new();
    for (digest, _) in layers {
        h.update(digest.as_bytes());
        h.update(b"\n");
    }
    if let Some(IdShift { uid, gid, size }) = shift {
        h.update(format!("ids {uid} {gid} {size}\n").as_bytes());
    }
    hex::encode(h.finalize())
}

impl LowerCache {
    /// The cache of hull root `root`.
    pub fn new(root: &Path) -> Self {
        Self {
            dir: root.join("oci").join("lower"),
            limits: HostLimits::DEFAULT,
        }
    }

    /// The lower directory of `layers` (owners shifted by `shift`),
    /// unpacked now if it is not cached. Atomic: layers are applied in a
    /// temporary directory renamed into place only when all of them
    /// succeeded; a failure leaves nothing.
    pub fn get_or_unpack(
        &self,
        layers: &[(String, PathBuf)],
        shift: Option<IdShift>,
    ) -> Result<PathBuf, OciError> {
        let key = chain_key(layers, shift);
        let dest = self.path_of(layers, shift);
        if dest.is_dir() {
            return Ok(dest);
        }
        std::fs::create_dir_all(&self.dir).map_err(OciError::io("creating the lower cache"))?;
        // One unpack per chain at a time; the loser of a race finds it done.
        let _lock = crate::file_lock::lock_exclusive(&self.dir.join(format!("{key}.lock")))
            .map_err(OciError::io("locking the lower cache"))?;
        if dest.is_dir() {
            return Ok(dest);
        }
        let tmp = self.dir.join(format!(".tmp-{key}-{}", std::process::id()));
        let result = unpack_into(&tmp, layers, self.limits, shift).and_then(|()| {
            std::fs::rename(&tmp, &dest).map_err(OciError::io("renaming the lower directory"))
        });
        if result.is_err() {
            // remove_dir_all never follows the symlinks a layer made.
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result.map(|()| dest)
    }

    /// Where the lower directory of `layers` (owners shifted by `shift`)
    /// is, or would be.
    pub fn path_of(&self, layers: &[(String, PathBuf)], shift: Option<IdShift>) -> PathBuf {
        self.dir.join(chain_key(layers, shift))
    }

    /// The directory holding every cached lower directory.
    #[cfg(test)]
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl LowerCache {
    /// Removes every lower directory whose key is not in `keep` (the
    /// keys of the images and containers left), and what crashed
    /// unpacks left behind; returns how many directories went and their
    /// bytes. Each key's lock is taken first, so an unpack under way
    /// finishes before its key is looked at.
    pub fn prune(
        &self,
        keep: &std::collections::HashSet<String>,
    ) -> Result<(usize, u64), OciError> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok((0, 0));
        };
        let (mut removed, mut bytes) = (0, 0);
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let key = key_of_entry(&name);
            if keep.contains(key) {
                continue;
            }
            let lock = self.dir.join(format!("{key}.lock"));
            let guard = crate::file_lock::lock_exclusive(&lock)
                .map_err(OciError::io("locking the lower cache"))?;
            let path = e.path();
            if path.is_dir() {
                bytes += tree_bytes(&path);
                // remove_dir_all never follows the symlinks a layer made.
                std::fs::remove_dir_all(&path)
                    .map_err(OciError::io(format!("removing {}", path.display())))?;
                removed += 1;
            }
            drop(guard);
            let _ = std::fs::remove_file(&lock);
        }
        Ok((removed, bytes))
    }
}

/// The key an entry of the cache belongs to: `KEY`, `KEY.lock`, or a
/// crashed unpack's `.tmp-KEY-PID`.
fn key_of_entry(name: &str) -> &str {
    if let Some(k) = name.strip_suffix(".lock") {
        return k;
    }
    name.strip_prefix(".tmp-")
        .and_then(|t| t.rsplit_once('-'))
        .map_or(name, |(k, _)| k)
}

/// Bytes allocated under `dir`, symlinks not followed; an explicit stack,
/// since an image may nest directories thousands deep.
fn tree_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut stack = vec![dir.to_path_buf()];
    let mut total = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

fn unpack_into(
    tmp: &Path,
    layers: &[(String, PathBuf)],
    limits: HostLimits,
    shift: Option<IdShift>,
) -> Result<(), OciError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(tmp)
        .map_err(OciError::io(format!("creating {}", tmp.display())))?;
    if let Some(s) = shift {
        // Container root owns "/" even when no layer has a "./" entry.
        std::os::unix::fs::chown(tmp, Some(s.uid), Some(s.gid))
            .map_err(OciError::io(format!("chown {}", tmp.display())))?;
    }
    let opts = agent::unpack::Options {
        max_entries: limits.max_entries,
        id_shift: shift,
        ..agent::unpack::Options::default()
    };
    let mut u = agent::unpack::Unpacker::new(tmp, opts)
        .map_err(|e| OciError::Unpack("(target)".into(), e))?;
    for (digest, path) in layers {
        let short = images::digest::short_id(digest);
        let blob = std::fs::File::open(path)
            .map_err(OciError::io(format!("opening layer {}", path.display())))?;
        let size = blob
            .metadata()
            .map_err(OciError::io(format!("reading layer {}", path.display())))?
            .len();
        u.apply_layer_within(blob, limits.tar_bytes_for(size)?)
            .map_err(|e| OciError::Unpack(short.clone(), e))?;
    }
    tracing::debug!("unpacked on the host: {}", u.stats());
    Ok(())
}

#[cfg(test)]
#[path = "lower_hostile_tests.rs"]
mod hostile_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_chain_not_the_paths() {
        let a = vec![("sha256:aa".to_string(), PathBuf::from("/x"))];
        let b = vec![("sha256:aa".to_string(), PathBuf::from("/y"))];
        let c = vec![
            ("sha256:aa".to_string(), PathBuf::from("/x")),
            ("sha256:bb".to_string(), PathBuf::from("/z")),
        ];
        assert_eq!(chain_key(&a, None), chain_key(&b, None));
        assert_ne!(chain_key(&a, None), chain_key(&c, None));
        let shift = IdShift {
            uid: 100_000,
            gid: 100_000,
            size: 65_536,
        };
        assert_ne!(chain_key(&a, None), chain_key(&a, Some(shift)));
    }

    #[test]
    fn prune_keeps_the_keys_asked_for_and_drops_the_rest() {
        let root = tempfile::tempdir().unwrap();
        let cache = LowerCache::new(root.path());
        let (kept, gone) = ("a".repeat(64), "b".repeat(64));
        for d in [&kept, &gone, &format!(".tmp-{gone}-123")] {
            std::fs::create_dir_all(cache.dir().join(d).join("etc")).unwrap();
            std::fs::write(cache.dir().join(d).join("etc/f"), vec![1u8; 8192]).unwrap();
        }
        std::os::unix::fs::symlink("/etc", cache.dir().join(&gone).join("host")).unwrap();
        std::fs::write(cache.dir().join(format!("{gone}.lock")), "").unwrap();
        let keep = [kept.clone()].into_iter().collect();
        let (n, bytes) = cache.prune(&keep).unwrap();
        assert_eq!(n, 2);
        assert!(bytes >= 2 * 8192, "{bytes}");
        let left: Vec<_> = std::fs::read_dir(cache.dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, std::slice::from_ref(&kept));
        assert!(
            Path::new("/etc/passwd").exists(),
            "the symlink's target stays"
        );
        assert_eq!(key_of_entry(&format!(".tmp-{kept}-9")), kept);
    }

    #[test]
    fn a_failed_unpack_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let blob = root.path().join("bad.tar");
        // A header that promises more bytes than the stream holds.
        let mut hdr = vec![0u8; 512];
        hdr[..4].copy_from_slice(b"file");
        hdr[124..135].copy_from_slice(b"00000001000");
        hdr[156] = b'0';
        hdr[148..156].copy_from_slice(b"        ");
        let sum: u32 = hdr.iter().map(|b| u32::from(*b)).sum();
        hdr[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        std::fs::write(&blob, &hdr).unwrap();
        let cache = LowerCache::new(root.path());
        let err = cache
            .get_or_unpack(&[("sha256:0123456789abcdef".into(), blob)], None)
            .unwrap_err();
        assert!(matches!(err, OciError::Unpack(..)), "{err}");
        let left: Vec<_> = std::fs::read_dir(cache.dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
