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

/// The cache key of a layer chain: the same chain in another image (a
/// retag, a rebuild with the same layers) shares one lower directory.
pub fn chain_key(layers: &[(String, PathBuf)]) -> String {
    let mut h = Sha256::new();
    for (digest, _) in layers {
        h.update(digest.as_bytes());
        h.update(b"\n");
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

    /// The lower directory of `layers`, unpacked now if it is not cached.
    /// Atomic: layers are applied in a temporary directory renamed into
    /// place only when all of them succeeded; a failure leaves nothing.
    pub fn get_or_unpack(&self, layers: &[(String, PathBuf)]) -> Result<PathBuf, OciError> {
        let key = chain_key(layers);
        let dest = self.dir.join(&key);
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
        let result = unpack_into(&tmp, layers, self.limits).and_then(|()| {
            std::fs::rename(&tmp, &dest).map_err(OciError::io("renaming the lower directory"))
        });
        if result.is_err() {
            // remove_dir_all never follows the symlinks a layer made.
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result.map(|()| dest)
    }

    /// The directory holding every cached lower directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn unpack_into(
    tmp: &Path,
    layers: &[(String, PathBuf)],
    limits: HostLimits,
) -> Result<(), OciError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(tmp)
        .map_err(OciError::io(format!("creating {}", tmp.display())))?;
    let opts = agent::unpack::Options {
        max_entries: limits.max_entries,
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
        assert_eq!(chain_key(&a), chain_key(&b));
        assert_ne!(chain_key(&a), chain_key(&c));
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
            .get_or_unpack(&[("sha256:0123456789abcdef".into(), blob)])
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
