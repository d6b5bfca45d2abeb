//! The OCI image layout on disk (`oci-layout`, `index.json`, `blobs/sha256/`):
//! verified blob writes, atomic index updates under a file lock, and blob GC.
//!
//! Besides the standard files, the layout holds `.tmp/` (blobs being written;
//! same filesystem, so a finished blob is renamed into place) and `.locks/`.
//! OCI tools ignore both.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::ImageIndex;
use rustix::fs::FlockOperation;
use tempfile::NamedTempFile;

use crate::digest::{self, Digest, HashingWriter};

/// Layout errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// A blob the store needs is not there.
    #[error("missing blob {0}")]
    MissingBlob(String),
    /// A blob failed verification.
    #[error("blob rejected")]
    Verify(#[from] digest::Error),
    /// index.json (or another JSON document) does not parse.
    #[error("cannot parse {}", path.display())]
    Json {
        /// The document.
        path: PathBuf,
        /// Parser error.
        #[source]
        source: serde_json::Error,
    },
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
const EMPTY_INDEX: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;

/// An OCI image layout directory.
#[derive(Clone, Debug)]
pub struct Layout {
    dir: PathBuf,
}

/// A held `flock`; released when dropped (closing the descriptor drops it).
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
}

impl Layout {
    /// Opens the layout at `dir`, creating an empty one if needed.
    pub fn open(dir: &Path) -> Result<Self> {
        let l = Self {
            dir: dir.to_owned(),
        };
        for sub in ["blobs/sha256", ".tmp", ".locks"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(io_err("cannot create", &p))?;
        }
        if !dir.join("oci-layout").exists() {
            write_atomic(&dir.join("oci-layout"), OCI_LAYOUT)?;
        }
        if !dir.join("index.json").exists() {
            let _g = l.lock("index.lock", FlockOperation::LockExclusive)?;
            if !dir.join("index.json").exists() {
                write_atomic(&dir.join("index.json"), EMPTY_INDEX)?;
            }
        }
        Ok(l)
    }

    /// The layout directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a blob lives (whether or not it exists).
    pub fn blob_path(&self, d: &Digest) -> Result<PathBuf> {
        Ok(self.dir.join("blobs/sha256").join(digest::hex(d)?))
    }

    /// True if the blob is present (with the given size, if one is given).
    pub fn has_blob(&self, d: &Digest, size: Option<u64>) -> bool {
        let Ok(p) = self.blob_path(d) else {
            return false;
        };
        match fs::metadata(p) {
            Ok(m) => m.is_file() && size.is_none_or(|s| s == m.len()),
            Err(_) => false,
        }
    }

    /// Reads a (small) blob whole and re-verifies its digest.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.blob_path(d)?;
        let bytes = match fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::MissingBlob(d.to_string()))
            }
            Err(e) => return Err(io_err("cannot read", &p)(e)),
        };
        let actual = digest::of_bytes(&bytes);
        digest::verify(d, None, &actual, bytes.len() as u64)?;
        Ok(bytes)
    }

    /// Opens a blob for streaming.
    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        let p = self.blob_path(d)?;
        File::open(&p).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::MissingBlob(d.to_string())
            } else {
                io_err("cannot open", &p)(e)
            }
        })
    }

    /// Starts writing a blob; nothing is visible until [`BlobWriter::commit`].
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        let tmpdir = self.dir.join(".tmp");
        let tmp =
            NamedTempFile::new_in(&tmpdir).map_err(io_err("cannot create a file in", &tmpdir))?;
        Ok(BlobWriter {
            w: HashingWriter::new(BufWriter::with_capacity(256 * 1024, tmp)),
            blobs: self.dir.join("blobs/sha256"),
        })
    }

    /// Writes a whole blob from memory.
    pub fn write_blob(
        &self,
        bytes: &[u8],
        expected: Option<(&Digest, u64)>,
    ) -> Result<(Digest, u64)> {
        let d = digest::of_bytes(bytes);
        if self.has_blob(&d, Some(bytes.len() as u64)) {
            if let Some((want, size)) = expected {
                digest::verify(want, Some(size), &d, bytes.len() as u64)?;
            }
            return Ok((d, bytes.len() as u64));
        }
        let mut w = self.blob_writer()?;
        w.write_all(bytes)
            .map_err(io_err("cannot write", &self.dir.join(".tmp")))?;
        w.commit(expected)
    }

    /// Copies a stream into a blob, verifying it against `expected`.
    pub fn copy_blob(
        &self,
        mut r: impl Read,
        expected: Option<(&Digest, u64)>,
    ) -> Result<(Digest, u64)> {
        let mut w = self.blob_writer()?;
        io::copy(&mut r, &mut w)
            .map_err(io_err("cannot copy blob into", &self.dir.join(".tmp")))?;
        w.commit(expected)
    }

    /// Reads index.json.
    pub fn read_index(&self) -> Result<ImageIndex> {
        let p = self.dir.join("index.json");
        let bytes = fs::read(&p).map_err(io_err("cannot read", &p))?;
        serde_json::from_slice(&bytes).map_err(|source| Error::Json { path: p, source })
    }

    /// Read-modify-write of index.json under an exclusive lock; the new index
    /// replaces the old one atomically, and only if `f` succeeds.
    pub fn update_index<T, E: From<Error>>(
        &self,
        f: impl FnOnce(&mut ImageIndex) -> Result<T, E>,
    ) -> Result<T, E> {
        let _g = self.index_lock()?;
        self.remove_index_temporaries()?;
        let mut index = self.read_index()?;
        let out = f(&mut index)?;
        let p = self.dir.join("index.json");
        let bytes = serde_json::to_vec_pretty(&index).map_err(|source| Error::Json {
            path: p.clone(),
            source,
        })?;
        write_atomic(&p, &bytes)?;
        Ok(out)
    }

    /// The exclusive lock index.json is rewritten under.
    pub fn index_lock(&self) -> Result<LockGuard> {
        self.lock("index.lock", FlockOperation::LockExclusive)
    }

    /// Temporary copies of index.json an interrupted rewrite left (named
    /// `.tmp*` by `write_atomic`); only meaningful under [`Layout::index_lock`].
    pub fn index_temporaries(&self) -> Vec<PathBuf> {
        fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn remove_index_temporaries(&self) -> Result<()> {
        for p in self.index_temporaries() {
            fs::remove_file(&p).map_err(io_err("cannot remove", &p))?;
        }
        Ok(())
    }

    /// Shared lock held while blobs are added and not yet referenced from
    /// index.json, so that a concurrent GC does not delete them.
    pub fn ingest_lock(&self) -> Result<LockGuard> {
        self.lock("ingest.lock", FlockOperation::LockShared)
    }

    /// Exclusive counterpart of [`Layout::ingest_lock`], for GC.
    pub fn gc_lock(&self) -> Result<LockGuard> {
        self.lock("ingest.lock", FlockOperation::LockExclusive)
    }

    /// [`Layout::gc_lock`] if it can be had right now.
    pub fn try_gc_lock(&self) -> Result<Option<LockGuard>> {
        match self.lock("ingest.lock", FlockOperation::NonBlockingLockExclusive) {
            Ok(g) => Ok(Some(g)),
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn lock(&self, name: &str, op: FlockOperation) -> Result<LockGuard> {
        let p = self.dir.join(".locks").join(name);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io_err("cannot open lock", &p))?;
        rustix::fs::flock(&file, op).map_err(|e| io_err("cannot lock", &p)(e.into()))?;
        Ok(LockGuard { _file: file })
    }

    /// Deletes every blob whose hex digest is not in `keep`, and every
    /// leftover temporary file. Call with the GC lock held. Returns the
    /// number of blobs and bytes freed.
    pub fn remove_blobs_except(&self, keep: &HashSet<String>) -> Result<(usize, u64)> {
        let (mut n, mut bytes) = (0, 0);
        let blobs = self.dir.join("blobs/sha256");
        for dir in [blobs.clone(), self.dir.join(".tmp")] {
            let entries = fs::read_dir(&dir).map_err(io_err("cannot list", &dir))?;
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if dir == blobs && keep.contains(&name) {
                    continue;
                }
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                let p = e.path();
                fs::remove_file(&p).map_err(io_err("cannot remove", &p))?;
                if dir == blobs {
                    n += 1;
                    bytes += len;
                }
            }
        }
        Ok((n, bytes))
    }
}

impl Layout {
    /// Removes every file of `.tmp/`. Call with the GC lock held (no blob
    /// is being written).
    pub fn remove_temporaries(&self) -> Result<()> {
        let dir = self.dir.join(".tmp");
        let entries = fs::read_dir(&dir).map_err(io_err("cannot list", &dir))?;
        for e in entries.flatten() {
            let p = e.path();
            fs::remove_file(&p).map_err(io_err("cannot remove", &p))?;
        }
        Ok(())
    }
}

/// A blob being written: hashed as it goes, renamed into `blobs/sha256` only
/// once verified and synced. Dropping it without commit deletes the data.
pub struct BlobWriter {
    w: HashingWriter<BufWriter<NamedTempFile>>,
    blobs: PathBuf,
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.w.len()
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.w.is_empty()
    }

    /// Verifies digest and size (when `expected` is given), syncs and makes
    /// the blob visible under its digest.
    pub fn commit(self, expected: Option<(&Digest, u64)>) -> Result<(Digest, u64)> {
        let (buf, actual, len) = self.w.finish();
        if let Some((want, size)) = expected {
            digest::verify(want, Some(size), &actual, len)?;
        }
        let tmp = buf
            .into_inner()
            .map_err(|e| io_err("cannot write", &self.blobs)(e.into_error()))?;
        tmp.as_file()
            .sync_all()
            .map_err(io_err("cannot sync", tmp.path()))?;
        let dest = self.blobs.join(digest::hex(&actual)?);
        tmp.persist(&dest)
            .map_err(|e| io_err("cannot rename into", &dest)(e.error))?;
        sync_dir(&self.blobs)?;
        Ok((actual, len))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.w.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

/// Writes a file atomically: temp file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = NamedTempFile::new_in(dir).map_err(io_err("cannot create a file in", dir))?;
    tmp.write_all(bytes)
        .map_err(io_err("cannot write", tmp.path()))?;
    tmp.as_file()
        .sync_all()
        .map_err(io_err("cannot sync", path))?;
    tmp.persist(path)
        .map_err(|e| io_err("cannot rename into", path)(e.error))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err("cannot sync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_a_valid_empty_layout() {
        let t = tempfile::tempdir().unwrap();
        let l = Layout::open(t.path()).unwrap();
        assert_eq!(fs::read(t.path().join("oci-layout")).unwrap(), OCI_LAYOUT);
        assert!(l.read_index().unwrap().manifests().is_empty());
        // Re-opening keeps what is there.
        Layout::open(t.path()).unwrap();
    }

    #[test]
    fn blob_visible_only_after_verified_commit() {
        let t = tempfile::tempdir().unwrap();
        let l = Layout::open(t.path()).unwrap();
        let good = digest::of_bytes(b"hello");
        let mut w = l.blob_writer().unwrap();
        w.write_all(b"hellp").unwrap();
        assert!(w.commit(Some((&good, 5))).is_err());
        assert!(!l.has_blob(&good, None));
        assert_eq!(fs::read_dir(t.path().join(".tmp")).unwrap().count(), 0);
        let mut w = l.blob_writer().unwrap();
        w.write_all(b"hello").unwrap();
        let (d, n) = w.commit(Some((&good, 5))).unwrap();
        assert_eq!((d, n), (good.clone(), 5));
        assert!(l.has_blob(&good, Some(5)));
        assert_eq!(l.read_blob(&good).unwrap(), b"hello");
    }

    #[test]
    fn read_blob_detects_corruption() {
        let t = tempfile::tempdir().unwrap();
        let l = Layout::open(t.path()).unwrap();
        let (d, _) = l.write_blob(b"data", None).unwrap();
        fs::write(l.blob_path(&d).unwrap(), b"dat4").unwrap();
        assert!(matches!(l.read_blob(&d), Err(Error::Verify(_))));
    }

    #[test]
    fn failed_update_leaves_index_alone() {
        let t = tempfile::tempdir().unwrap();
        let l = Layout::open(t.path()).unwrap();
        let before = fs::read(t.path().join("index.json")).unwrap();
        let r: Result<(), Error> = l.update_index(|i| {
            i.set_manifests(vec![]);
            Err(Error::MissingBlob("x".into()))
        });
        assert!(r.is_err());
        assert_eq!(fs::read(t.path().join("index.json")).unwrap(), before);
    }

    #[test]
    fn gc_keeps_only_listed_blobs() {
        let t = tempfile::tempdir().unwrap();
        let l = Layout::open(t.path()).unwrap();
        let (a, _) = l.write_blob(b"a", None).unwrap();
        let (b, _) = l.write_blob(b"bb", None).unwrap();
        let keep = HashSet::from([digest::hex(&a).unwrap().to_owned()]);
        let _g = l.gc_lock().unwrap();
        assert_eq!(l.remove_blobs_except(&keep).unwrap(), (1, 2));
        assert!(l.has_blob(&a, None) && !l.has_blob(&b, None));
    }
}
