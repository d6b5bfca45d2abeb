//! Applying OCI image layers onto a directory, inside the guest.
//!
//! hull never unpacks layers on the host: a helper microVM gets an empty
//! ext4 disk, the host streams the layer blobs, unopened, over vsock (port
//! 1026, `unpack_server`), and the agent applies them in order with this
//! module (see `docs/unpack.md`). Compression detection, zstd frames and
//! path cleaning come from the `layerfmt` crate, shared with `images`.
//!
//! ```no_run
//! # fn main() -> Result<(), agent::unpack::Error> {
//! use agent::unpack::{Options, Unpacker};
//! let mut u = Unpacker::new("/mnt/rootfs".as_ref(), Options::default())?;
//! for blob in ["layer1.tar.gz", "layer2.tar.zst"] {
//!     let f = std::fs::File::open(blob).map_err(agent::unpack::Error::Read)?;
//!     let layer = u.apply_layer(f)?; // plain, gzip or zstd: by magic bytes
//!     eprintln!("{blob}: {layer}");
//! }
//! eprintln!("total: {}", u.stats());
//! # Ok(()) }
//! ```
//!
//! Layers are untrusted: `..`, absolute paths and symlinks are resolved
//! inside the target (`openat2(RESOLVE_IN_ROOT)`), final components are
//! never followed, and streams that lie about sizes end in an error.

/// `*at` calls and path resolution inside a root (`openat2(RESOLVE_IN_ROOT)`).
pub mod apply;
mod erofs;
// Public, hidden, for the fuzz target `agent_gzip` (fuzz/fuzz_targets).
#[doc(hidden)]
pub mod gzip;
mod image;
mod tar;
mod tree;
mod whiteout;

pub use image::{ImageBuilder, ImageOptions, Output};

#[cfg(test)]
mod image_tests;
#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::CStr;
use std::fmt;
use std::io::{self, BufReader, Read};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use apply::{cstring, errno, Dir, Target};
use layerfmt::ZstdFrames;
use tar::{Entry, Kind};
use whiteout::{Created, Whiteout};

/// Size of the buffer the tar stream is read into (and written from).
/// Larger means fewer `write`s for big files; but in the guest every page
/// of it costs milliseconds the first time it is touched.
pub const DEFAULT_BUFFER: usize = 256 << 10;
/// Read size for the blob.
const INPUT_BUFFER: usize = 128 << 10;

/// Why unpacking stopped. Messages name the entry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The target directory cannot be opened.
    #[error("unpack target {path}: {source}")]
    Target {
        /// Target directory.
        path: String,
        /// Cause.
        source: io::Error,
    },
    /// Reading or decompressing the layer failed.
    #[error("reading layer: {0}")]
    Read(io::Error),
    /// The stream ended in the middle of an entry or header.
    #[error("layer is truncated: stream ends inside {path}")]
    Truncated {
        /// Entry (or header) being read.
        path: String,
    },
    /// A header is not valid tar.
    #[error("bad tar header at offset {offset}: {reason}")]
    BadHeader {
        /// Offset of the header in the uncompressed stream.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An entry type the unpacker refuses (GNU sparse, unknown types).
    #[error("{path}: unsupported {what}")]
    Unsupported {
        /// Entry path.
        path: String,
        /// What is not supported.
        what: String,
    },
    /// The target filesystem is full (or out of inodes).
    #[error("{path}: target filesystem is full")]
    NoSpace {
        /// Entry being written.
        path: String,
    },
    /// The entry would reach outside the target or is otherwise refused.
    #[error("{path}: {reason}")]
    Unsafe {
        /// Entry path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The layers exceed a limit of the image builder (entries, depth,
    /// image size).
    #[error("{path}: {reason}")]
    Limit {
        /// Entry path (`image` when the whole image is concerned).
        path: String,
        /// Which limit.
        reason: String,
    },
    /// A system call on an entry failed.
    #[error("{path}: {op}: {source}")]
    Io {
        /// Entry path.
        path: String,
        /// The operation (`create`, `write`, `chown`, ...).
        op: &'static str,
        /// Cause.
        source: io::Error,
    },
}

fn io_err(path: &[u8], op: &'static str, e: io::Error) -> Error {
    let path = String::from_utf8_lossy(path).into_owned();
    if matches!(errno(&e), libc::ENOSPC | libc::EDQUOT) {
        Error::NoSpace { path }
    } else {
        Error::Io {
            path,
            op,
            source: e,
        }
    }
}

/// What was unpacked, and how fast.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Layers applied.
    pub layers: u32,
    /// Bytes read from the layer blobs (compressed size).
    pub compressed_bytes: u64,
    /// Bytes of uncompressed tar stream.
    pub tar_bytes: u64,
    /// Bytes of file content written.
    pub data_bytes: u64,
    /// Regular files created.
    pub files: u64,
    /// Directories created or updated.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hard links created.
    pub hardlinks: u64,
    /// Device nodes and fifos created.
    pub nodes: u64,
    /// Whiteouts applied (`.wh.<name>`).
    pub whiteouts: u64,
    /// Directories made opaque (`.wh..wh..opq`).
    pub opaque_dirs: u64,
    /// Image builder: bytes of file data blocks in the image that no
    /// inode refers to (files later replaced or removed).
    pub unreferenced_bytes: u64,
    /// Image builder: peak heap bytes of the in-memory tree.
    pub tree_bytes: u64,
    /// Wall time spent.
    pub elapsed: Duration,
}

impl Stats {
    /// Entries created (files, dirs, links, nodes).
    pub fn entries(&self) -> u64 {
        self.files + self.dirs + self.symlinks + self.hardlinks + self.nodes
    }

    /// Uncompressed MB/s (10^6 bytes).
    pub fn mb_per_s(&self) -> f64 {
        self.tar_bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Entries per second.
    pub fn entries_per_s(&self) -> f64 {
        self.entries() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn add(&mut self, o: &Stats) {
        self.layers += o.layers;
        self.compressed_bytes += o.compressed_bytes;
        self.tar_bytes += o.tar_bytes;
        self.data_bytes += o.data_bytes;
        self.files += o.files;
        self.dirs += o.dirs;
        self.symlinks += o.symlinks;
        self.hardlinks += o.hardlinks;
        self.nodes += o.nodes;
        self.whiteouts += o.whiteouts;
        self.opaque_dirs += o.opaque_dirs;
        self.unreferenced_bytes += o.unreferenced_bytes;
        self.tree_bytes = self.tree_bytes.max(o.tree_bytes);
        self.elapsed += o.elapsed;
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} layer(s), {:.1} MB read, {:.1} MB tar, {} files, {} dirs, {} symlinks, \
             {} hardlinks, {} nodes, {} whiteouts, {} opaque dirs in {:.3} s \
             ({:.1} MB/s, {:.0} entries/s)",
            self.layers,
            self.compressed_bytes as f64 / 1e6,
            self.tar_bytes as f64 / 1e6,
            self.files,
            self.dirs,
            self.symlinks,
            self.hardlinks,
            self.nodes,
            self.whiteouts,
            self.opaque_dirs,
            self.elapsed.as_secs_f64(),
            self.mb_per_s(),
            self.entries_per_s()
        )
    }
}

/// How to unpack.
#[derive(Debug, Clone)]
pub struct Options {
    /// Set owners from the archive (needs root); otherwise entries belong
    /// to the unpacking user. Default: whether we are root.
    pub chown: bool,
    /// Set extended attributes from PAX `SCHILY.xattr.*` records
    /// (filesystems without xattr support are skipped silently).
    pub xattrs: bool,
    /// Size of the stream buffer.
    pub buffer_size: usize,
    /// Entries (files, directories, links, nodes) all layers may create:
    /// bounds the inodes a hostile layer takes where the target is the
    /// host's own filesystem (container mode). Default: no limit.
    pub max_entries: u64,
    /// Owners shifted into a user namespace's range on the host
    /// (container mode): entries are written owned by host IDs, so a
    /// cached tree serves every container of that namespace without a
    /// chown per container. Default: none (owners as in the archive).
    pub id_shift: Option<IdShift>,
}

/// Container IDs `0..size` stored as host IDs `uid..uid+size` (and
/// `gid..gid+size` for groups), as a user namespace maps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdShift {
    /// Host UID of container UID 0.
    pub uid: u32,
    /// Host GID of container GID 0.
    pub gid: u32,
    /// IDs mapped.
    pub size: u32,
}

impl IdShift {
    /// `e`'s owner as the host stores it. An ID outside the range could
    /// not be mapped back in the container: refused (as Docker's
    /// userns-remap refuses it) rather than stored under some host ID.
    fn apply(&self, e: &mut Entry) -> Result<(), Error> {
        let (uid, gid) = (
            self.shift(e, e.uid, self.uid, "uid")?,
            self.shift(e, e.gid, self.gid, "gid")?,
        );
        (e.uid, e.gid) = (uid, gid);
        Ok(())
    }

    fn shift(&self, e: &Entry, id: u32, base: u32, what: &str) -> Result<u32, Error> {
        if id >= self.size {
            return Err(Error::Unsafe {
                path: e.display(),
                reason: format!(
                    "{what} {id} is outside the container's user namespace (0-{})",
                    self.size.saturating_sub(1)
                ),
            });
        }
        base.checked_add(id).ok_or_else(|| Error::Unsafe {
            path: e.display(),
            reason: format!("{what} {id} overflows the host's IDs"),
        })
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            // SAFETY: geteuid has no preconditions.
            chown: unsafe { libc::geteuid() } == 0,
            xattrs: true,
            buffer_size: DEFAULT_BUFFER,
            max_entries: u64::MAX,
            id_shift: None,
        }
    }
}

pub use layerfmt::clean_path as clean;
pub use layerfmt::Compression;

/// Applies layers, in order, onto one target directory.
pub struct Unpacker {
    target: Target,
    opts: Options,
    euid: u32,
    egid: u32,
    umask: u32,
    stats: Stats,
    /// The stream buffer, kept across layers.
    buf: Option<Box<[u8]>>,
}

impl fmt::Debug for Unpacker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unpacker")
            .field("stats", &self.stats)
            .finish()
    }
}

/// Applies `layers` in order onto `target` with default options.
pub fn unpack_layers<R: Read>(
    target: &Path,
    layers: impl IntoIterator<Item = R>,
) -> Result<Stats, Error> {
    let mut u = Unpacker::new(target, Options::default())?;
    for l in layers {
        u.apply_layer(l)?;
    }
    Ok(u.stats().clone())
}

/// State of one layer being applied.
struct Layer {
    created: Created,
    opaque: Vec<Vec<u8>>,
    dir_times: HashMap<Vec<u8>, (i64, u32)>,
    stats: Stats,
}

impl Unpacker {
    /// An unpacker for the (existing) directory `target`.
    pub fn new(target: &Path, opts: Options) -> Result<Unpacker, Error> {
        let t = Target::open(target).map_err(|source| Error::Target {
            path: target.display().to_string(),
            source,
        })?;
        Ok(Unpacker {
            target: t,
            opts,
            // SAFETY: geteuid/getegid have no preconditions.
            euid: unsafe { libc::geteuid() },
            // SAFETY: as above.
            egid: unsafe { libc::getegid() },
            // Unknown: assume every bit may be masked (always chmod).
            umask: apply::umask().unwrap_or(0o777),
            stats: Stats::default(),
            buf: None,
        })
    }

    /// Totals over every layer applied so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Applies one layer blob (plain tar, gzip or zstd). Returns that
    /// layer's statistics. On error the target holds a partial layer.
    /// Reads `blob` to its end (so a `Take` over a shared stream is left
    /// at the next blob).
    pub fn apply_layer<R: Read>(&mut self, blob: R) -> Result<Stats, Error> {
        self.apply_layer_within(blob, u64::MAX)
    }

    /// [`Unpacker::apply_layer`], refusing (with [`Error::Limit`]) a layer
    /// whose tar stream inflates past `max_tar_bytes`: a decompression
    /// bomb stops there, whatever it would write or hold after.
    pub fn apply_layer_within<R: Read>(
        &mut self,
        mut blob: R,
        max_tar_bytes: u64,
    ) -> Result<Stats, Error> {
        // One instantiation of the whole unpacker, whatever the reader.
        self.apply_dyn(&mut blob, max_tar_bytes)
    }

    fn apply_dyn(&mut self, blob: &mut dyn Read, max_tar: u64) -> Result<Stats, Error> {
        let buf = self
            .buf
            .take()
            .unwrap_or_else(|| vec![0u8; self.opts.buffer_size].into_boxed_slice());
        let (stats, buf) = read_layer(blob, buf, max_tar, |tar| {
            let mut layer = Layer {
                created: Created::default(),
                opaque: Vec::new(),
                dir_times: HashMap::new(),
                stats: Stats::default(),
            };
            let result = self.entries(tar, &mut layer);
            // Cached parents may be stale after this layer's removals.
            self.target.invalidate();
            result?;
            self.finish(&mut layer)?;
            self.target.invalidate();
            Ok(layer.stats)
        })?;
        self.buf = Some(buf);
        self.stats.add(&stats);
        Ok(stats)
    }

    fn entries<R: Read>(
        &mut self,
        tar: &mut tar::TarReader<R>,
        layer: &mut Layer,
    ) -> Result<(), Error> {
        while let Some(mut e) = tar.next_entry()? {
            if let Some(shift) = self.opts.id_shift {
                shift.apply(&mut e)?;
            }
            self.entry(tar, e, layer)?;
        }
        Ok(())
    }

    /// Opaque dirs, then directory times (after all their contents).
    fn finish(&mut self, layer: &mut Layer) -> Result<(), Error> {
        let root = self.target.root();
        for d in std::mem::take(&mut layer.opaque) {
            let pruned = whiteout::prune_opaque(root.raw(), &d, &layer.created)
                .map_err(|e| io_err(&d, "make opaque", e))?;
            if pruned {
                layer.stats.opaque_dirs += 1;
            }
        }
        self.target.invalidate();
        let mut dirs: Vec<_> = std::mem::take(&mut layer.dir_times).into_iter().collect();
        dirs.sort_unstable();
        for (path, (sec, nsec)) in dirs {
            let r = if path.is_empty() {
                apply::futimens(root.raw(), sec, nsec)
            } else {
                let (parent, name) = split(&path);
                let Some(p) = self
                    .target
                    .dir(parent, false)
                    .map_err(|e| io_err(&path, "open", e))?
                else {
                    continue;
                };
                apply::lutimensat(
                    p.raw(),
                    &cstring(name).map_err(|e| io_err(&path, "utimes", e))?,
                    sec,
                    nsec,
                )
            };
            match r {
                Ok(()) => {}
                Err(e) if matches!(errno(&e), libc::ENOENT | libc::ENOTDIR) => {}
                Err(e) => return Err(io_err(&path, "set mtime", e)),
            }
        }
        Ok(())
    }

    /// Applies one tar entry (whiteout, directory, file, link, device).
    // Over 80 lines, on purpose: one match over the entry kinds, each arm
    // a few lines sharing the resolved parent, the layer's hardlink map and
    // the entry budget; split, every arm would take all of them as
    // arguments. It is the reference the image builder is compared with
    // (image_tests.rs: 9,000 mutated layers) and the production path of the
    // container mode's host unpack, `hull cp` into a container and volume
    // filling; a rewrite would have to be re-run against that comparison.
    fn entry<R: Read>(
        &mut self,
        tar: &mut tar::TarReader<R>,
        e: Entry,
        layer: &mut Layer,
    ) -> Result<(), Error> {
        let kind = e.kind.unwrap_or(Kind::File);
        let path = clean(&e.path);
        let data_len = e.size;
        if self.stats.entries() + layer.stats.entries() >= self.opts.max_entries {
            return Err(Error::Limit {
                path: e.display(),
                reason: format!("more than {} entries in the image", self.opts.max_entries),
            });
        }
        if path.is_empty() {
            tar.skip(data_len, &e.path)?;
            if kind == Kind::Dir {
                // The layer's "./": metadata of the target root.
                let root = self.target.root();
                self.dir_meta(&root, None, &e, &path, true)?;
                layer.dir_times.insert(Vec::new(), (e.mtime, e.mtime_nsec));
                return Ok(());
            }
            return Err(Error::Unsafe {
                path: e.display(),
                reason: "entry resolves to the target root".into(),
            });
        }
        let (parent, name) = split(&path);
        match whiteout::classify(name) {
            Whiteout::No => {}
            Whiteout::Meta => return tar.skip(data_len, &e.path),
            Whiteout::Opaque => {
                tar.skip(data_len, &e.path)?;
                if !layer.opaque.iter().any(|d| d == parent) {
                    layer.opaque.push(parent.to_vec());
                }
                return Ok(());
            }
            Whiteout::Name(hidden) => {
                tar.skip(data_len, &e.path)?;
                let mut victim = parent.to_vec();
                if !victim.is_empty() {
                    victim.push(b'/');
                }
                victim.extend_from_slice(hidden);
                // Never hide what this same layer added.
                if layer.created.contains(&victim) {
                    return Ok(());
                }
                let Some(p) = self
                    .target
                    .dir(parent, false)
                    .map_err(|err| io_err(&e.path, "open parent", err))?
                else {
                    return Ok(());
                };
                let c = cstring(hidden).map_err(|err| io_err(&e.path, "whiteout", err))?;
                match apply::lstatat(p.raw(), &c) {
                    Ok(_) => {
                        apply::remove_all(p.raw(), &c)
                            .map_err(|err| io_err(&e.path, "whiteout", err))?;
                        self.target.invalidate();
                        layer.stats.whiteouts += 1;
                    }
                    Err(err) if errno(&err) == libc::ENOENT => {}
                    Err(err) => return Err(io_err(&e.path, "whiteout", err)),
                }
                return Ok(());
            }
        }
        layer.created.insert(&path);
        let p = self
            .target
            .dir(parent, true)
            .map_err(|err| io_err(&e.path, "create parent directories", err))?
            .ok_or_else(|| {
                io_err(
                    &e.path,
                    "open parent",
                    io::Error::from_raw_os_error(libc::ENOENT),
                )
            })?;
        let c = cstring(name).map_err(|err| io_err(&e.path, "name", err))?;
        match kind {
            Kind::File => {
                self.file(tar, &p, &c, &e, &path, layer)?;
                layer.stats.files += 1;
                return Ok(());
            }
            Kind::Dir => {
                let existed = self.create(&p, &c, &e.path, true, |fd, n| {
                    apply::mkdirat(fd, n, e.mode & 0o777)
                })?;
                self.dir_meta(&p, Some(&c), &e, &path, existed)?;
                layer
                    .dir_times
                    .insert(path.clone(), (e.mtime, e.mtime_nsec));
                layer.stats.dirs += 1;
            }
            Kind::Symlink => {
                let target = cstring(&e.link).map_err(|err| io_err(&e.path, "symlink", err))?;
                self.create(&p, &c, &e.path, false, |fd, n| {
                    apply::symlinkat(&target, fd, n)
                })?;
                self.replaced(layer, &path);
                self.meta(&p, &c, &e, false, true)?;
                layer.stats.symlinks += 1;
            }
            Kind::HardLink => {
                self.hardlink(&p, &c, &e, &path)?;
                self.replaced(layer, &path);
                layer.stats.hardlinks += 1;
            }
            Kind::Char | Kind::Block | Kind::Fifo => {
                let (fmt, dev) = match kind {
                    Kind::Char => (libc::S_IFCHR, libc::makedev(e.dev_major, e.dev_minor)),
                    Kind::Block => (libc::S_IFBLK, libc::makedev(e.dev_major, e.dev_minor)),
                    _ => (libc::S_IFIFO, 0),
                };
                self.create(&p, &c, &e.path, false, |fd, n| {
                    apply::mknodat(fd, n, fmt | (e.mode & 0o777), dev)
                })?;
                self.replaced(layer, &path);
                self.meta(&p, &c, &e, true, false)?;
                layer.stats.nodes += 1;
            }
        }
        // Links and nodes may carry data in odd archives: skip it.
        tar.skip(data_len, &e.path)
    }

    /// A non-directory now sits at `path`: a directory time recorded for
    /// it earlier in this layer no longer applies.
    fn replaced(&self, layer: &mut Layer, path: &[u8]) {
        if !layer.dir_times.is_empty() {
            layer.dir_times.remove(path);
        }
    }

    /// Runs `make`; if the name exists, removes it (keeping an existing
    /// directory when `keep_dir`) and retries once. Returns whether an
    /// existing directory was kept.
    fn create(
        &mut self,
        p: &Dir,
        name: &CStr,
        path: &[u8],
        keep_dir: bool,
        make: impl Fn(i32, &CStr) -> io::Result<()>,
    ) -> Result<bool, Error> {
        match make(p.raw(), name) {
            Ok(()) => return Ok(false),
            Err(err) if errno(&err) == libc::EEXIST => {}
            Err(err) => return Err(io_err(path, "create", err)),
        }
        let st = apply::lstatat(p.raw(), name).map_err(|err| io_err(path, "stat", err))?;
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        if keep_dir && is_dir {
            return Ok(true);
        }
        apply::remove_all(p.raw(), name).map_err(|err| io_err(path, "replace", err))?;
        self.target.invalidate();
        make(p.raw(), name).map_err(|err| io_err(path, "create", err))?;
        Ok(false)
    }

    fn file<R: Read>(
        &mut self,
        tar: &mut tar::TarReader<R>,
        p: &Dir,
        name: &CStr,
        e: &Entry,
        path: &[u8],
        layer: &mut Layer,
    ) -> Result<(), Error> {
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let fd = match apply::openat(p.raw(), name, flags, e.mode & 0o777) {
            Ok(fd) => fd,
            Err(err) if errno(&err) == libc::EEXIST => {
                apply::remove_all(p.raw(), name).map_err(|err| io_err(&e.path, "replace", err))?;
                self.target.invalidate();
                self.replaced(layer, path);
                apply::openat(p.raw(), name, flags, e.mode & 0o777)
                    .map_err(|err| io_err(&e.path, "create", err))?
            }
            Err(err) => return Err(io_err(&e.path, "create", err)),
        };
        let raw = fd.as_raw_fd();
        let mut written = 0u64;
        tar.data(e.size, &e.path, |chunk| {
            written += chunk.len() as u64;
            apply::write_all(raw, chunk).map_err(|err| io_err(&e.path, "write", err))
        })?;
        layer.stats.data_bytes += written;
        // Owner before mode (chown clears setuid/setgid), xattrs after
        // chown (it drops security.capability), time last.
        if self.needs_chown(p, e) {
            apply::fchown(raw, e.uid, e.gid).map_err(|err| io_err(&e.path, "chown", err))?;
        }
        if self.needs_chmod(p, e, false) {
            apply::fchmod(raw, e.mode).map_err(|err| io_err(&e.path, "chmod", err))?;
        }
        if self.opts.xattrs {
            for (k, v) in &e.xattrs {
                let k = cstring(k).map_err(|err| io_err(&e.path, "xattr", err))?;
                xattr_result(apply::fsetxattr(raw, &k, v), &e.path, false)?;
            }
        }
        apply::futimens(raw, e.mtime, e.mtime_nsec)
            .map_err(|err| io_err(&e.path, "set mtime", err))?;
        Ok(())
    }

    fn needs_chown(&self, p: &Dir, e: &Entry) -> bool {
        let gid = if p.setgid { p.gid } else { self.egid };
        self.opts.chown && (e.uid != self.euid || e.gid != gid)
    }

    fn needs_chmod(&self, p: &Dir, e: &Entry, dir: bool) -> bool {
        e.mode & 0o7000 != 0 || e.mode & self.umask != 0 || (dir && p.setgid)
    }

    /// Owner, mode, xattrs of a directory (`name` None: the root itself).
    /// Its time is set at the end of the layer.
    fn dir_meta(
        &mut self,
        p: &Dir,
        name: Option<&CStr>,
        e: &Entry,
        path: &[u8],
        existed: bool,
    ) -> Result<(), Error> {
        let Some(name) = name else {
            let fd = p.raw();
            if self.opts.chown {
                apply::fchown(fd, e.uid, e.gid).map_err(|err| io_err(path, "chown", err))?;
            }
            apply::fchmod(fd, e.mode).map_err(|err| io_err(path, "chmod", err))?;
            return self.fd_xattrs(fd, e);
        };
        if self.opts.chown && (existed || self.needs_chown(p, e)) {
            apply::lchownat(p.raw(), name, e.uid, e.gid)
                .map_err(|err| io_err(&e.path, "chown", err))?;
        }
        if existed || self.needs_chmod(p, e, true) {
            apply::fchmodat(p.raw(), name, e.mode).map_err(|err| io_err(&e.path, "chmod", err))?;
        }
        if self.opts.xattrs && !e.xattrs.is_empty() {
            let fd = apply::openat(
                p.raw(),
                name,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0,
            )
            .map_err(|err| io_err(&e.path, "open", err))?;
            self.fd_xattrs(fd.as_raw_fd(), e)?;
        }
        Ok(())
    }

    fn fd_xattrs(&self, fd: i32, e: &Entry) -> Result<(), Error> {
        if self.opts.xattrs {
            for (k, v) in &e.xattrs {
                let k = cstring(k).map_err(|err| io_err(&e.path, "xattr", err))?;
                xattr_result(apply::fsetxattr(fd, &k, v), &e.path, false)?;
            }
        }
        Ok(())
    }

    /// Owner, mode (not for symlinks), xattrs and time of a symlink or node.
    fn meta(
        &self,
        p: &Dir,
        name: &CStr,
        e: &Entry,
        chmod: bool,
        symlink: bool,
    ) -> Result<(), Error> {
        if self.needs_chown(p, e) {
            apply::lchownat(p.raw(), name, e.uid, e.gid)
                .map_err(|err| io_err(&e.path, "chown", err))?;
        }
        if chmod && self.needs_chmod(p, e, false) {
            apply::fchmodat(p.raw(), name, e.mode).map_err(|err| io_err(&e.path, "chmod", err))?;
        }
        if self.opts.xattrs {
            for (k, v) in &e.xattrs {
                let k = cstring(k).map_err(|err| io_err(&e.path, "xattr", err))?;
                xattr_result(apply::lsetxattrat(p.raw(), name, &k, v), &e.path, symlink)?;
            }
        }
        apply::lutimensat(p.raw(), name, e.mtime, e.mtime_nsec)
            .map_err(|err| io_err(&e.path, "set mtime", err))
    }

    fn hardlink(&mut self, p: &Dir, name: &CStr, e: &Entry, path: &[u8]) -> Result<(), Error> {
        let target = clean(&e.link);
        if target.is_empty() {
            return Err(Error::Unsafe {
                path: e.display(),
                reason: "hard link to the target root".into(),
            });
        }
        if target == path {
            return Ok(()); // a link to itself: nothing to do
        }
        let (tparent, tname) = split(&target);
        let not_found = || Error::Unsafe {
            path: e.display(),
            reason: format!(
                "hard link target {} is not an entry inside the target",
                String::from_utf8_lossy(&e.link)
            ),
        };
        let tp = self
            .target
            .dir(tparent, false)
            .map_err(|err| io_err(&e.path, "open link target", err))?
            .ok_or_else(not_found)?;
        let tc = cstring(tname).map_err(|err| io_err(&e.path, "link", err))?;
        let link = |fd: i32, n: &CStr| apply::linkat(tp.raw(), &tc, fd, n);
        match self.create(p, name, &e.path, false, link) {
            Err(Error::Io { source, .. }) if errno(&source) == libc::ENOENT => Err(not_found()),
            r => r.map(drop),
        }
    }
}

fn xattr_result(r: io::Result<()>, path: &[u8], symlink: bool) -> Result<(), Error> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if matches!(errno(&e), libc::EOPNOTSUPP) => Ok(()),
        // user.* xattrs are not allowed on symlinks.
        Err(e) if symlink && errno(&e) == libc::EPERM => Ok(()),
        Err(e) => Err(io_err(path, "set xattr", e)),
    }
}

/// Reads one layer blob through `apply`, which gets its tar stream and
/// returns the layer's counters; then reads the blob to its end and adds
/// the byte counts and the time. Returns the stream buffer for reuse.
/// A tar stream inflating past `max_tar` bytes ends in [`Error::Limit`].
fn read_layer(
    blob: &mut dyn Read,
    buf: Box<[u8]>,
    max_tar: u64,
    apply: impl FnOnce(&mut tar::TarReader<Box<dyn Read + '_>>) -> Result<Stats, Error>,
) -> Result<(Stats, Box<[u8]>), Error> {
    let start = Instant::now();
    let counter = Rc::new(Cell::new(0u64));
    let capped = Rc::new(Cell::new(false));
    let mut tar = open_layer(blob, &counter, buf, TarCap::new(max_tar, &capped))?;
    let applied = apply(&mut tar).and_then(|stats| tar.drain().map(|()| stats));
    if capped.get() {
        return Err(Error::Limit {
            path: "layer".into(),
            reason: format!("inflates to more than {max_tar} bytes of tar"),
        });
    }
    let mut stats = applied?;
    stats.layers = 1;
    stats.tar_bytes = tar.offset();
    stats.compressed_bytes = counter.get();
    stats.elapsed = start.elapsed();
    Ok((stats, tar.into_buffer()))
}

/// Reads a layer blob through the same decompression, inflation cap and
/// tar reader as [`Unpacker::apply_layer_within`], skipping every entry's
/// data instead of applying it. Public, hidden, for the fuzz targets
/// (`agent_tar`, `agent_gzip` in fuzz/fuzz_targets): it needs no target
/// directory. The statistics count every entry as a file.
#[doc(hidden)]
pub fn scan_layer(mut blob: impl Read, max_tar: u64, buffer_size: usize) -> Result<Stats, Error> {
    let buf = vec![0u8; buffer_size].into_boxed_slice();
    let (stats, _) = read_layer(&mut blob, buf, max_tar, |tar| {
        let mut stats = Stats::default();
        while let Some(e) = tar.next_entry()? {
            tar.skip(e.size, &e.path)?;
            stats.files += 1;
            stats.data_bytes += e.size;
        }
        Ok(stats)
    })?;
    Ok(stats)
}

/// Opens a layer blob (plain tar, gzip or zstd, told by its first bytes)
/// as a tar stream read into `buf`; `counter` gets the blob bytes read.
fn open_layer<'a>(
    blob: &'a mut dyn Read,
    counter: &Rc<Cell<u64>>,
    buf: Box<[u8]>,
    cap: TarCap,
) -> Result<tar::TarReader<Box<dyn Read + 'a>>, Error> {
    let mut counting = Counting {
        inner: blob,
        count: counter.clone(),
    };
    // Enough bytes to tell the compression, even from a stream that
    // hands them out one at a time.
    let mut head = [0u8; 4];
    let mut have = 0;
    while have < head.len() {
        match counting.read(&mut head[have..]) {
            Ok(0) => break,
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Read(e)),
        }
    }
    let comp = Compression::detect(&head[..have]);
    let head = head[..have].to_vec();
    let input = BufReader::with_capacity(INPUT_BUFFER, io::Cursor::new(head).chain(counting));
    let stream: Box<dyn Read + 'a> = match comp {
        Compression::None => Box::new(input),
        Compression::Gzip => Box::new(gzip::GzReader::new(input)),
        Compression::Zstd => Box::new(ZstdFrames::new(input).map_err(Error::Read)?),
    };
    Ok(tar::TarReader::new(Box::new(cap.over(stream)), buf))
}

/// How many tar bytes a layer may inflate to; `hit` records that a
/// stream went past it.
struct TarCap {
    left: u64,
    hit: Rc<Cell<bool>>,
}

impl TarCap {
    fn new(max: u64, hit: &Rc<Cell<bool>>) -> TarCap {
        TarCap {
            left: max,
            hit: hit.clone(),
        }
    }

    fn over<R: Read>(self, inner: R) -> Capped<R> {
        Capped { inner, cap: self }
    }
}

/// A decompressed stream that fails past its [`TarCap`].
struct Capped<R> {
    inner: R,
    cap: TarCap,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.cap.left == 0 {
            // One byte more tells "exactly at the limit" from "past it".
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            self.cap.hit.set(true);
            return Err(io::Error::other("layer inflates past its limit"));
        }
        let want = buf
            .len()
            .min(usize::try_from(self.cap.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.cap.left -= n as u64;
        Ok(n)
    }
}

/// (parent, name) of a cleaned, non-empty path.
fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&b""[..], path),
    }
}

/// Counts the bytes read from the blob.
struct Counting<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}
