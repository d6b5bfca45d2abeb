//! Building an EROFS root filesystem image from OCI layers in user space.
//!
//! In the helper VM every guest system call and page fault is emulated
//! (~0.5 ms, ~5 ms), so instead of applying layers onto a mounted ext4
//! the agent writes a complete image into a memory window: file data goes
//! straight from the tar buffer to its blocks as entries stream by, the
//! tree of metadata stays in memory ([`super::tree`]), and `finish` adds
//! directories, inodes and the superblock ([`super::erofs`]).

use std::io::{self, Read};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::erofs::{self, SuperInfo, BLOCK};
use super::tar::{Entry, Kind, TarReader};
use super::tree::{LayerState, Tree};
use super::whiteout::{self, Whiteout};
use super::{clean, read_layer, split, Error, Stats, DEFAULT_BUFFER};

/// Where the image is written: a memory window or a file.
pub trait Output {
    /// Writes `data` at byte `offset` (never past [`Output::capacity`]).
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Bytes the output can hold.
    fn capacity(&self) -> u64;
}

impl Output for &mut [u8] {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::StorageFull)?;
        let end = start
            .checked_add(data.len())
            .filter(|&e| e <= self.len())
            .ok_or(io::ErrorKind::StorageFull)?;
        self[start..end].copy_from_slice(data);
        Ok(())
    }

    fn capacity(&self) -> u64 {
        self.len() as u64
    }
}

impl Output for std::fs::File {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, data, offset)
    }

    fn capacity(&self) -> u64 {
        u64::MAX
    }
}

/// How to build the image.
#[derive(Debug, Clone)]
pub struct ImageOptions {
    /// Keep extended attributes from PAX `SCHILY.xattr.*` records.
    pub xattrs: bool,
    /// Size of the tar stream buffer.
    pub buffer_size: usize,
    /// Entries the layers may create in total (bounds the tree's memory
    /// for hostile layers: ~100 bytes each).
    pub max_entries: u64,
    /// Superblock build time and the time of directories the builder
    /// makes itself; `None`: now.
    pub build_time: Option<(i64, u32)>,
    /// Volume UUID; `None`: random.
    pub uuid: Option<[u8; 16]>,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            xattrs: true,
            buffer_size: DEFAULT_BUFFER,
            max_entries: 1 << 21,
            build_time: None,
            uuid: None,
        }
    }
}

/// Applies layers to an in-memory tree and writes an EROFS image.
///
/// ```no_run
/// # fn main() -> Result<(), agent::unpack::Error> {
/// use agent::unpack::{ImageBuilder, ImageOptions};
/// let mut window = vec![0u8; 64 << 20];
/// let mut b = ImageBuilder::new(&mut window[..], ImageOptions::default())?;
/// b.apply_layer(std::fs::File::open("layer.tar.gz").map_err(agent::unpack::Error::Read)?)?;
/// let (len, stats) = b.finish()?;
/// eprintln!("{len} bytes: {stats}");
/// # Ok(()) }
/// ```
pub struct ImageBuilder<O: Output> {
    out: O,
    tree: Tree,
    /// Next free block for file data (block 0 is the superblock's).
    data_end: u64,
    info: SuperInfo,
    opts: ImageOptions,
    stats: Stats,
    buf: Option<Box<[u8]>>,
}

impl<O: Output> std::fmt::Debug for ImageBuilder<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageBuilder")
            .field("data_end", &self.data_end)
            .field("stats", &self.stats)
            .finish()
    }
}

/// Writes to `out`, refusing to go past its capacity.
fn write_out<O: Output>(out: &mut O, offset: u64, data: &[u8], path: &[u8]) -> Result<(), Error> {
    let path_str = || String::from_utf8_lossy(path).into_owned();
    if offset.saturating_add(data.len() as u64) > out.capacity() {
        return Err(Error::NoSpace { path: path_str() });
    }
    out.write_at(offset, data).map_err(|source| {
        if source.kind() == io::ErrorKind::StorageFull {
            Error::NoSpace { path: path_str() }
        } else {
            Error::Io {
                path: path_str(),
                op: "write image",
                source,
            }
        }
    })
}

impl<O: Output> ImageBuilder<O> {
    /// A builder writing to `out` (whose previous contents do not matter).
    pub fn new(out: O, opts: ImageOptions) -> Result<Self, Error> {
        let now = opts.build_time.unwrap_or_else(|| {
            let d = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            (d.as_secs() as i64, d.subsec_nanos())
        });
        let uuid = opts.uuid.unwrap_or_else(random_uuid);
        if out.capacity() < 2 * BLOCK {
            return Err(Error::NoSpace {
                path: "image".into(),
            });
        }
        Ok(ImageBuilder {
            out,
            tree: Tree::new(now, opts.xattrs, opts.max_entries),
            data_end: 1,
            info: SuperInfo {
                build_time: now,
                uuid,
            },
            opts,
            stats: Stats::default(),
            buf: None,
        })
    }

    /// Totals over every layer applied so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Applies one layer blob (plain tar, gzip or zstd), reading it to its
    /// end. Returns that layer's statistics. After an error the image is
    /// garbage.
    pub fn apply_layer<R: Read>(&mut self, mut blob: R) -> Result<Stats, Error> {
        self.apply_dyn(&mut blob)
    }

    fn apply_dyn(&mut self, blob: &mut dyn Read) -> Result<Stats, Error> {
        let buf = self
            .buf
            .take()
            .unwrap_or_else(|| vec![0u8; self.opts.buffer_size].into_boxed_slice());
        let (mut stats, buf) = read_layer(blob, buf, u64::MAX, |tar| {
            let mut layer = LayerState::default();
            while let Some(e) = tar.next_entry()? {
                self.entry(tar, &e, &mut layer)?;
            }
            self.tree.finish_layer(&mut layer)?;
            Ok(std::mem::take(&mut layer.stats))
        })?;
        self.buf = Some(buf);
        stats.tree_bytes = self.tree.memory_bytes();
        self.stats.add(&stats);
        Ok(stats)
    }

    /// One entry: a regular file's data goes to the image now, then the
    /// tree records it.
    fn entry<R: Read>(
        &mut self,
        tar: &mut TarReader<R>,
        e: &Entry,
        layer: &mut LayerState,
    ) -> Result<(), Error> {
        let path = clean(&e.path);
        let is_file = e.kind.unwrap_or(Kind::File) == Kind::File
            && !path.is_empty()
            && whiteout::classify(split(&path).1) == Whiteout::No;
        let file = if is_file {
            Some(self.file_data(tar, e)?)
        } else {
            tar.skip(e.size, &e.path)?;
            None
        };
        self.tree.apply(e, &path, file, layer)
    }

    /// Streams a file's data into fresh blocks at the data cursor, the
    /// last one padded with zeros. Returns (first block, size).
    fn file_data<R: Read>(
        &mut self,
        tar: &mut TarReader<R>,
        e: &Entry,
    ) -> Result<(u32, u64), Error> {
        if e.size == 0 {
            return Ok((0, 0));
        }
        let blocks = e.size.div_ceil(BLOCK);
        let first = self.data_end;
        let end = first
            .checked_add(blocks)
            .filter(|&end| end <= u64::from(u32::MAX) && end * BLOCK <= self.out.capacity())
            .ok_or_else(|| Error::NoSpace { path: e.display() })?;
        let mut offset = first * BLOCK;
        let out = &mut self.out;
        tar.data(e.size, &e.path, |chunk| {
            write_out(out, offset, chunk, &e.path)?;
            offset += chunk.len() as u64;
            Ok(())
        })?;
        let pad = (BLOCK - e.size % BLOCK) % BLOCK;
        if pad > 0 {
            write_out(out, offset, &[0u8; BLOCK as usize][..pad as usize], &e.path)?;
        }
        self.data_end = end;
        Ok((first as u32, e.size))
    }

    /// Writes directories, inodes and the superblock. Returns the image
    /// length (a multiple of 4096) and the totals.
    pub fn finish(mut self) -> Result<(u64, Stats), Error> {
        let start = Instant::now();
        self.tree.sort_dirs();
        let out = &mut self.out;
        let mut write = |offset: u64, data: &[u8]| write_out(out, offset, data, b"image metadata");
        let w = erofs::write(&self.tree, self.data_end as u32, self.info, &mut write)?;
        self.stats.unreferenced_bytes = w.unreferenced_bytes;
        self.stats.elapsed += start.elapsed();
        Ok((w.len, self.stats))
    }
}

/// A random (version 4) UUID from the standard library's random hasher
/// keys: no extra dependency, and uniqueness is all it needs.
fn random_uuid() -> [u8; 16] {
    use std::hash::{BuildHasher, RandomState};
    let s = RandomState::new();
    let a = s.hash_one(0u8).to_le_bytes();
    let b = s.hash_one(1u8).to_le_bytes();
    let mut u = [0u8; 16];
    u[..8].copy_from_slice(&a);
    u[8..].copy_from_slice(&b);
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}
