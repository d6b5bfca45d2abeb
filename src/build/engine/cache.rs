//! The build cache: each step's result (the image state after it) under
//! a key made of its parent's key, the instruction after substitution and
//! what else it reads (build args for RUN, the digest of the copied
//! content for COPY/ADD, the source stage for `COPY --from`). An
//! unchanged rebuild finds every key and runs nothing; a changed input
//! changes that step's key and so every key after it.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::state::ImageState;

/// Errors of the cache's files.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Writing an entry failed.
    #[error("build cache {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Version of the key scheme: a change in what a step's result depends on
/// bumps it, so old entries are never taken for new ones.
const SCHEME: &str = "hull-build-cache-1";

/// A step's cache key.
pub fn key(parent: &str, instruction: &str, inputs: &str) -> String {
    let mut h = Sha256::new();
    for part in [SCHEME, parent, instruction, inputs] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The cache of a hull root, `<root>/build-cache`.
#[derive(Debug, Clone)]
pub struct BuildCache {
    dir: PathBuf,
}

impl BuildCache {
    /// The cache of hull root `root`.
    pub fn new(root: &Path) -> Self {
        BuildCache {
            dir: root.join("build-cache"),
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// The result stored under `key`; an unreadable entry is a miss.
    pub fn get(&self, key: &str) -> Option<ImageState> {
        let bytes = std::fs::read(self.path(key)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Stores a step's result (atomically: a crash leaves no torn entry).
    pub fn put(&self, key: &str, state: &ImageState) -> Result<(), CacheError> {
        let path = self.path(key);
        let io = |source| CacheError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let tmp = self.dir.join(format!(".{key}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec(state).unwrap_or_default()).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_change_with_every_part_and_do_not_run_together() {
        let k = key("p", "RUN a", "");
        assert_eq!(k.len(), 64);
        assert_eq!(k, key("p", "RUN a", ""));
        assert_ne!(k, key("q", "RUN a", ""));
        assert_ne!(k, key("p", "RUN b", ""));
        assert_ne!(k, key("p", "RUN a", "x"));
        assert_ne!(key("ab", "c", ""), key("a", "bc", ""));
    }

    #[test]
    fn entries_round_trip_and_junk_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BuildCache::new(dir.path());
        assert!(cache.get("k").is_none());
        let s = ImageState::scratch(&images::platform::Platform::host());
        cache.put("k", &s).unwrap();
        assert_eq!(cache.get("k").unwrap(), s);
        std::fs::write(dir.path().join("build-cache/j.json"), "{").unwrap();
        assert!(cache.get("j").is_none());
    }
}
