//! The file behind a virtio-blk device.
//!
//! Data moves straight between the file and guest memory (`read(2)` into and
//! `write(2)` from the guest's pages), so a request costs no host-side copy.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, ReadVolatile, WriteVolatile};

use super::BlockError;

/// Bytes per virtio-blk sector; the unit of capacity and request offsets.
pub const SECTOR_SIZE: u64 = 512;

/// A guest-memory range that is part of a request's data buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical start.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// An open disk image.
#[derive(Debug)]
pub struct DiskFile {
    file: File,
    path: PathBuf,
    read_only: bool,
    size: u64,
}

impl DiskFile {
    /// Opens `path`; its size must be a whole number of sectors.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let size = file
            .metadata()
            .map_err(|source| BlockError::Size {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(BlockError::NotSectorMultiple {
                path: path.to_path_buf(),
                size,
            });
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            read_only,
            size,
        })
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the image was opened read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Size in 512-byte sectors (the config space's `capacity`).
    pub fn sectors(&self) -> u64 {
        self.size / SECTOR_SIZE
    }

    /// Reads the image from byte `offset` into the guest buffers `segs`, in
    /// order. Returns how many bytes reached guest memory, even on error,
    /// because the used length must cover what was written.
    pub fn read_into(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        segs: &[Segment],
    ) -> (u64, io::Result<()>) {
        let mut done = 0u64;
        if let Err(e) = self.file.seek(SeekFrom::Start(offset)) {
            return (done, Err(e));
        }
        for seg in segs {
            for slice in mem.get_slices(seg.addr, seg.len as usize) {
                let result = slice.map_err(io::Error::other).and_then(|mut slice| {
                    self.file
                        .read_exact_volatile(&mut slice)
                        .map_err(io::Error::other)
                        .map(|()| slice.len() as u64)
                });
                match result {
                    Ok(n) => done += n,
                    Err(e) => return (done, Err(e)),
                }
            }
        }
        (done, Ok(()))
    }

    /// Writes the guest buffers `segs`, in order, to the image at byte `offset`.
    pub fn write_from(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        segs: &[Segment],
    ) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        self.file.seek(SeekFrom::Start(offset))?;
        for seg in segs {
            for slice in mem.get_slices(seg.addr, seg.len as usize) {
                let slice = slice.map_err(io::Error::other)?;
                self.file
                    .write_all_volatile(&slice)
                    .map_err(io::Error::other)?;
            }
        }
        Ok(())
    }

    /// Makes written data durable (the guest's FLUSH).
    pub fn flush(&mut self) -> io::Result<()> {
        if self.read_only {
            // Nothing was written through this descriptor.
            return Ok(());
        }
        self.file.sync_data()
    }
}
