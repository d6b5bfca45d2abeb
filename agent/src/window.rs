//! Memory windows seen from the guest: host files the VMM shows as
//! guest-physical ranges that are not RAM (the VMM's `window` module),
//! mapped into this process through `/dev/mem`.
//!
//! Once mapped, reading or writing a window is a plain memory access: no
//! system call and no byte copied by the guest kernel, whose every
//! instruction is emulated on PVM hosts. The kernel is built with
//! `STRICT_DEVMEM` (RAM cannot be mapped this way) and without MTRR/PAT
//! support, so the mapping is write-back cached.

use std::io;

/// Errors mapping a window.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    /// `/dev/mem` cannot be opened (kernel without `CONFIG_DEVMEM`).
    #[error("Cannot open /dev/mem for a memory window")]
    Open(#[source] io::Error),
    /// The range is not page-aligned or empty.
    #[error("Memory window at {0:#x}+{1:#x} is not a whole number of pages")]
    Unaligned(u64, u64),
    /// mmap refused the range (RAM, or not a window).
    #[error("Cannot map the memory window at {0:#x}+{1:#x}")]
    Map(u64, u64, #[source] io::Error),
    /// A write past the end of the window.
    #[error("The output window ({0} bytes) is full")]
    Full(u64),
}

const PAGE: u64 = 4096;

/// One mapped window; unmapped on drop.
#[derive(Debug)]
pub struct Window {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by this value alone; moving it to another
// thread moves that ownership.
unsafe impl Send for Window {}

impl Window {
    /// Maps `len` bytes of guest-physical memory at `guest_addr`, read-only
    /// or read-write.
    pub fn map(guest_addr: u64, len: u64, writable: bool) -> Result<Self, WindowError> {
        if len == 0 || !guest_addr.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) {
            return Err(WindowError::Unaligned(guest_addr, len));
        }
        let mem = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open("/dev/mem")
            .map_err(WindowError::Open)?;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        let map_len = usize::try_from(len).map_err(|_| WindowError::Unaligned(guest_addr, len))?;
        let offset = libc::off_t::try_from(guest_addr)
            .map_err(|_| WindowError::Unaligned(guest_addr, len))?;
        // SAFETY: a new shared mapping at an address the kernel chooses;
        // nothing else in this process refers to it. Without O_SYNC on the
        // fd, /dev/mem maps it cached.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                prot,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&mem),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(WindowError::Map(
                guest_addr,
                len,
                io::Error::last_os_error(),
            ));
        }
        Ok(Self {
            ptr: ptr.cast(),
            len: map_len,
        })
    }

    /// The window's bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes for as long as `self`
        // lives; the host does not change a window while the guest uses it.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// Keeps the mapping for the rest of the process's life. Unmapping
    /// costs the guest kernel as much per page as mapping did (seconds per
    /// hundred MB where its code is emulated); a preparation helper VM ends
    /// right after its work, which frees everything at once.
    pub fn keep_mapped(self) {
        std::mem::forget(self);
    }

    /// The window's bytes, writable (the window must have been mapped
    /// writable, or the first write faults).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; no slice of it
        // outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A writable window mapped a chunk at a time, as writes reach it; the
/// chunks stay mapped after it is dropped ([`Window::keep_mapped`]).
///
/// Mapping costs the guest kernel work per page (tens of microseconds
/// each where its code is emulated), and an output window is sized for the
/// worst case: mapping only the chunks written pays for the bytes used.
#[derive(Debug)]
pub struct ChunkedWindow {
    guest_addr: u64,
    len: u64,
    chunks: Vec<Option<Window>>,
}

/// Bytes mapped at once by [`ChunkedWindow`].
pub const CHUNK: u64 = 16 << 20;

impl ChunkedWindow {
    /// A window of `len` bytes at `guest_addr`, nothing mapped yet.
    pub fn new(guest_addr: u64, len: u64) -> Result<Self, WindowError> {
        if len == 0 || !guest_addr.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) {
            return Err(WindowError::Unaligned(guest_addr, len));
        }
        let chunks = (0..len.div_ceil(CHUNK)).map(|_| None).collect();
        Ok(Self {
            guest_addr,
            len,
            chunks,
        })
    }

    /// The window's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty window (never: `new` refuses one).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `data` to `offset`, mapping the chunks it touches.
    pub fn write_at(&mut self, mut offset: u64, mut data: &[u8]) -> Result<(), WindowError> {
        let end = offset.checked_add(data.len() as u64);
        if end.is_none_or(|end| end > self.len) {
            return Err(WindowError::Full(self.len));
        }
        while !data.is_empty() {
            let index = (offset / CHUNK) as usize;
            let within = (offset % CHUNK) as usize;
            let chunk = self.chunk(index)?;
            let n = data.len().min(chunk.len() - within);
            chunk[within..within + n].copy_from_slice(&data[..n]);
            data = &data[n..];
            offset += n as u64;
        }
        Ok(())
    }

    fn chunk(&mut self, index: usize) -> Result<&mut [u8], WindowError> {
        let start = index as u64 * CHUNK;
        let len = CHUNK.min(self.len - start);
        let slot = &mut self.chunks[index];
        if slot.is_none() {
            *slot = Some(Window::map(self.guest_addr + start, len, true)?);
        }
        Ok(slot.as_mut().map_or(&mut [][..], Window::bytes_mut))
    }
}

impl Drop for ChunkedWindow {
    /// Chunks stay mapped: see [`Window::keep_mapped`].
    fn drop(&mut self) {
        self.chunks
            .drain(..)
            .flatten()
            .for_each(Window::keep_mapped);
    }
}

/// A window written front to back as a stream, from `offset` on (a layer
/// tar: its length is known only at its end).
#[derive(Debug)]
pub struct WindowWriter {
    window: ChunkedWindow,
    offset: u64,
}

impl WindowWriter {
    /// Writes into `window` from `offset`.
    pub fn new(window: ChunkedWindow, offset: u64) -> Self {
        Self { window, offset }
    }

    /// Where the next byte goes.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

impl io::Write for WindowWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        crate::unpack::Output::write_at(&mut self.window, self.offset, buf)?;
        self.offset += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl crate::unpack::Output for ChunkedWindow {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        ChunkedWindow::write_at(self, offset, data).map_err(|e| match e {
            WindowError::Full(_) => io::ErrorKind::StorageFull.into(),
            e => io::Error::other(e),
        })
    }

    fn capacity(&self) -> u64 {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unaligned_or_empty_ranges_are_refused_before_any_mapping() {
        assert!(matches!(
            Window::map(4096, 0, false),
            Err(WindowError::Unaligned(..))
        ));
        assert!(matches!(
            Window::map(4097, 4096, false),
            Err(WindowError::Unaligned(..))
        ));
        assert!(matches!(
            Window::map(4096, 100, true),
            Err(WindowError::Unaligned(..))
        ));
        assert!(matches!(
            ChunkedWindow::new(4096, 0),
            Err(WindowError::Unaligned(..))
        ));
    }

    #[test]
    fn writes_past_the_end_are_refused_before_mapping_anything() {
        let mut w = ChunkedWindow::new(1 << 32, 8192).unwrap();
        assert!(matches!(
            w.write_at(8000, &[0; 200]),
            Err(WindowError::Full(8192))
        ));
        assert!(matches!(
            w.write_at(u64::MAX, &[0; 2]),
            Err(WindowError::Full(_))
        ));
        assert!(w.chunks.iter().all(Option::is_none));
    }
}
