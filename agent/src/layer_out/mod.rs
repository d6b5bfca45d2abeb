//! The other direction of `unpack`: a container's writable layer (an
//! overlayfs upper directory) turned into an uncompressed OCI layer tar,
//! and Docker's `docker diff` view of it. Runs in the guest; the host
//! never mounts or parses the guest's disk. See docs/unpack.md, "The
//! other direction: a writable layer to a layer tar".

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

mod copy_out;
mod tar_header;
mod walk;

pub use copy_out::{copy_to_window, resolve_in_root, write_copy, CopySource};

#[cfg(test)]
mod overlay_tests;
#[cfg(test)]
mod tests;

use tar_header::{Header, BLOCK};
use walk::{path_str, Entry, Kind};

/// File data is read (and written) in chunks of this size, from one
/// buffer: in the guest every system call costs ~0.5 ms.
const CHUNK: usize = 256 << 10;

/// Why writing the layer (or the diff) stopped. Messages name the path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The upper directory is not a directory.
    #[error("{0}: not a directory")]
    NotADirectory(String),
    /// A system call on an entry of the upper directory failed.
    #[error("{path}: {op}: {source}")]
    Io {
        /// Path in the container (`/etc/passwd`).
        path: String,
        /// The operation (`lstat`, `open`, `read`, ...).
        op: &'static str,
        /// Cause.
        source: io::Error,
    },
    /// An overlay feature this module cannot express from the upper
    /// directory alone.
    #[error("{path}: {what} is not supported")]
    Unsupported {
        /// Path in the container.
        path: String,
        /// What was found.
        what: &'static str,
    },
    /// A file shrank while it was being read.
    #[error("{path}: file changed while it was read")]
    Changed {
        /// Path in the container.
        path: String,
    },
    /// Writing the tar to the output failed.
    #[error("writing the layer tar: {0}")]
    Write(#[source] io::Error),
}

/// How to write the layer.
#[derive(Debug, Clone, Default)]
pub struct LayerOptions {
    /// Paths (as in the container: `/etc/hosts`) left out of the layer
    /// and the diff, with everything under them.
    pub exclude: Vec<PathBuf>,
    /// Mtimes later than this (seconds since the epoch) are written as
    /// this, without fraction (reproducible builds).
    pub mtime_clamp: Option<i64>,
    /// Owner (uid, gid) of every entry (`COPY --chown`).
    pub owner: Option<(u64, u64)>,
    /// Permission bits of every file and directory (`COPY --chmod`).
    pub mode: Option<u32>,
    /// Copy-outs only: a directory on another file system than the
    /// source's (a mount point: /proc, /dev, a volume of a live root) is
    /// written, its contents are not (`tar --one-file-system`).
    pub one_file_system: bool,
}

/// What went into the layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Tar entries written (whiteout and opaque markers included, PAX
    /// headers not counted).
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    /// Devices and fifos.
    pub nodes: u64,
    /// `.wh.<name>` entries.
    pub whiteouts: u64,
    /// Directories marked `.wh..wh..opq`.
    pub opaque_dirs: u64,
    /// Sockets found and left out (a tar cannot hold them).
    pub sockets_skipped: u64,
    /// File content bytes.
    pub data_bytes: u64,
    /// Bytes of tar written, end-of-archive included.
    pub tar_bytes: u64,
}

/// One line of `docker diff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// `A`: not in the lower layers.
    Added,
    /// `C`: in the lower layers too, and in the upper dir.
    Changed,
    /// `D`: in the lower layers, deleted.
    Deleted,
}

/// A path that differs from the image, as `docker diff` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    /// Absolute path in the container (`/etc/passwd`).
    pub path: PathBuf,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = match self.kind {
            ChangeKind::Added => 'A',
            ChangeKind::Changed => 'C',
            ChangeKind::Deleted => 'D',
        };
        write!(f, "{k} {}", self.path.display())
    }
}

/// Writes the upper directory `upper` as an uncompressed OCI layer tar
/// to `out`: applied onto the lower layers it gives the merged view.
/// Ends with the two zero blocks; `out` is not flushed.
pub fn write_layer(
    upper: &Path,
    out: impl Write,
    opts: &LayerOptions,
) -> Result<LayerStats, Error> {
    let exclude = walk::relative_paths(&opts.exclude);
    let mut w = LayerWriter::new(out, opts);
    walk::walk(upper, &exclude, &mut |e, path| w.entry(e, path))?;
    w.finish()
}

/// [`write_layer`] of `upper` into the memory window `output` from
/// `offset` on (`hull build`'s RUN steps); returns the tar's length.
pub fn write_to_window(
    upper: &str,
    exclude: &[String],
    output: agent_protocol::protocol::WindowRange,
    offset: u64,
) -> Result<u64, Error> {
    let window = crate::window::ChunkedWindow::new(output.guest_addr, output.len)
        .map_err(|e| Error::Write(io::Error::other(e)))?;
    let mut out = crate::window::WindowWriter::new(window, offset);
    let opts = LayerOptions {
        exclude: exclude.iter().map(PathBuf::from).collect(),
        ..LayerOptions::default()
    };
    write_layer(Path::new(upper), &mut out, &opts)?;
    Ok(out.offset() - offset)
}

/// `docker diff` of the upper directory, in the layer's entry order:
/// whiteouts are `D`; other entries `C` if `lower_exists` (given the
/// absolute path) says the lower layers have that path, else `A`.
/// Opaque directories are entries like any other (their hidden lower
/// contents are not listed).
pub fn diff_entries(
    upper: &Path,
    opts: &LayerOptions,
    lower_exists: &dyn Fn(&Path) -> bool,
) -> Result<Vec<Change>, Error> {
    use std::os::unix::ffi::OsStrExt;
    let exclude = walk::relative_paths(&opts.exclude);
    let mut changes = Vec::new();
    walk::walk(upper, &exclude, &mut |e, _| {
        let mut abs = b"/".to_vec();
        abs.extend_from_slice(&e.rel);
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(&abs));
        let kind = match e.kind {
            Kind::Socket => return Ok(()),
            Kind::Whiteout => ChangeKind::Deleted,
            _ if lower_exists(&path) => ChangeKind::Changed,
            _ => ChangeKind::Added,
        };
        changes.push(Change { kind, path });
        Ok(())
    })?;
    Ok(changes)
}

/// State of one layer being written.
struct LayerWriter<W: Write> {
    out: W,
    /// Headers and, for files up to `CHUNK`, their data: one `write`.
    stage: Vec<u8>,
    /// (dev, ino) of multiply-linked entries -> the first path written.
    first_link: HashMap<(u64, u64), Vec<u8>>,
    mtime_clamp: Option<i64>,
    owner: Option<(u64, u64)>,
    mode: Option<u32>,
    stats: LayerStats,
}

impl<W: Write> LayerWriter<W> {
    fn new(out: W, opts: &LayerOptions) -> Self {
        LayerWriter {
            out,
            stage: Vec::with_capacity(CHUNK + 4 * BLOCK),
            first_link: HashMap::new(),
            mtime_clamp: opts.mtime_clamp,
            owner: opts.owner,
            mode: opts.mode,
            stats: LayerStats::default(),
        }
    }

    /// Ends the archive (two zero blocks).
    fn finish(mut self) -> Result<LayerStats, Error> {
        self.stage.clear();
        self.stage.resize(2 * BLOCK, 0);
        self.flush()?;
        Ok(self.stats)
    }

    fn entry(&mut self, e: &Entry, path: &Path) -> Result<(), Error> {
        let m = &e.meta;
        let (mtime, mtime_nsec) = self.clamp(m.mtime(), m.mtime_nsec() as u32);
        let (uid, gid) = self
            .owner
            .unwrap_or((u64::from(m.uid()), u64::from(m.gid())));
        let mode = match (self.mode, &e.kind) {
            (Some(mode), Kind::File | Kind::Dir { .. }) => mode,
            _ => m.mode() & 0o7777,
        };
        let mut h = Header {
            name: &e.rel,
            typeflag: b'0',
            mode,
            uid,
            gid,
            size: 0,
            mtime,
            mtime_nsec,
            link: b"",
            dev: (0, 0),
            xattrs: &e.xattrs,
        };
        match &e.kind {
            Kind::Whiteout => return self.whiteout(e, &h),
            Kind::Socket => {
                self.stats.sockets_skipped += 1;
                return Ok(());
            }
            Kind::Dir { opaque } => return self.dir(e, h, *opaque),
            _ => {}
        }
        if m.nlink() > 1 {
            if let Some(first) = self.first_link.get(&(m.dev(), m.ino())) {
                let first = first.clone();
                h.typeflag = b'1';
                h.link = &first;
                h.xattrs = &[];
                self.stats.hardlinks += 1;
                return self.headers_only(&h);
            }
            self.first_link.insert((m.dev(), m.ino()), e.rel.clone());
        }
        match &e.kind {
            Kind::File => self.file(e, h, path),
            Kind::Symlink(target) => {
                h.typeflag = b'2';
                h.link = target;
                self.stats.symlinks += 1;
                self.headers_only(&h)
            }
            _ => {
                // Fifo or device.
                h.typeflag = match e.kind {
                    Kind::CharDev => b'3',
                    Kind::BlockDev => b'4',
                    _ => b'6',
                };
                let rdev = m.rdev();
                h.dev = (libc::major(rdev).into(), libc::minor(rdev).into());
                self.stats.nodes += 1;
                self.headers_only(&h)
            }
        }
    }

    fn clamp(&self, secs: i64, nsec: u32) -> (i64, u32) {
        match self.mtime_clamp {
            Some(c) if (secs, nsec) > (c, 0) => (c, 0),
            _ => (secs, nsec),
        }
    }

    /// `.wh.<name>`: an empty file in the same directory, the whiteout's
    /// owner and time, mode 0644 (readers only look at the name).
    fn whiteout(&mut self, e: &Entry, h: &Header<'_>) -> Result<(), Error> {
        let name = match e.rel.iter().rposition(|&b| b == b'/') {
            Some(i) => [&e.rel[..=i], b".wh.", &e.rel[i + 1..]].concat(),
            None => [&b".wh."[..], &e.rel].concat(),
        };
        let h = Header {
            name: &name,
            mode: 0o644,
            xattrs: &[],
            ..*h
        };
        self.stats.whiteouts += 1;
        self.headers_only(&h)
    }

    /// The directory (`name/`), then `name/.wh..wh..opq` if it is opaque.
    fn dir(&mut self, e: &Entry, h: Header<'_>, opaque: bool) -> Result<(), Error> {
        let name = [&e.rel[..], b"/"].concat();
        let h = Header {
            name: &name,
            typeflag: b'5',
            ..h
        };
        self.stats.dirs += 1;
        tar_header::encode(&h, &mut self.stage);
        self.stats.entries += 1;
        if opaque {
            let marker = [&e.rel[..], b"/.wh..wh..opq"].concat();
            let marker = Header {
                name: &marker,
                typeflag: b'0',
                mode: 0o644,
                xattrs: &[],
                ..h
            };
            tar_header::encode(&marker, &mut self.stage);
            self.stats.entries += 1;
            self.stats.opaque_dirs += 1;
        }
        self.flush()
    }

    fn headers_only(&mut self, h: &Header<'_>) -> Result<(), Error> {
        tar_header::encode(h, &mut self.stage);
        self.stats.entries += 1;
        self.flush()
    }

    /// Writes `stage` out and empties it.
    fn flush(&mut self) -> Result<(), Error> {
        self.out.write_all(&self.stage).map_err(Error::Write)?;
        self.stats.tar_bytes += self.stage.len() as u64;
        self.stage.clear();
        Ok(())
    }

    /// A regular file: small ones staged with their header and written in
    /// one call after one `read`; larger ones in `CHUNK`s.
    fn file(&mut self, e: &Entry, mut h: Header<'_>, path: &Path) -> Result<(), Error> {
        let size = e.meta.len();
        h.size = size;
        tar_header::encode(&h, &mut self.stage);
        self.stats.entries += 1;
        self.stats.files += 1;
        self.stats.data_bytes += size;
        if size == 0 {
            return self.flush();
        }
        let io_err = |op| {
            move |source| Error::Io {
                path: format!("/{}", path_str(&e.rel)),
                op,
                source,
            }
        };
        let mut file = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(io_err("open"))?;
        if size > CHUNK as u64 {
            // Headers alone; the data follows in whole chunks.
            self.flush()?;
        }
        let mut left = size;
        while left > 0 {
            let start = self.stage.len();
            let n = left.min(CHUNK as u64) as usize;
            self.stage.resize(start + n, 0);
            if !read_full(&mut file, &mut self.stage[start..]).map_err(io_err("read"))? {
                return Err(Error::Changed {
                    path: format!("/{}", path_str(&e.rel)),
                });
            }
            left -= n as u64;
            if left == 0 {
                tar_header::pad(&mut self.stage);
            }
            self.flush()?;
        }
        Ok(())
    }
}

/// Fills `buf` from `file`; false if the file ends first.
fn read_full(file: &mut File, mut buf: &mut [u8]) -> io::Result<bool> {
    while !buf.is_empty() {
        match file.read(buf) {
            Ok(0) => return Ok(false),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
