//! Guest pages the devices can be pointed at: anonymous memory locked in
//! place, with each page's guest-physical address read from
//! `/proc/self/pagemap` (PID 1 is root, so the frame numbers are shown).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

pub const PAGE: usize = 4096;

/// One locked page and where it is in guest-physical memory.
pub struct Page {
    ptr: *mut u8,
    pub gpa: u64,
}

impl Page {
    /// Writes `bytes` at `offset` (volatile: the device reads them).
    pub fn write(&self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= PAGE);
        for (i, b) in bytes.iter().enumerate() {
            // SAFETY: in bounds of this page (checked above), which stays
            // mapped for the process's life.
            unsafe { self.ptr.add(offset + i).write_volatile(*b) };
        }
    }

    /// Reads `out.len()` bytes at `offset` (volatile: the device wrote them).
    pub fn read(&self, offset: usize, out: &mut [u8]) {
        assert!(offset + out.len() <= PAGE);
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: in bounds of this page, mapped for the process's life.
            *b = unsafe { self.ptr.add(offset + i).read_volatile() };
        }
    }

    pub fn write_u16(&self, offset: usize, v: u16) {
        self.write(offset, &v.to_le_bytes());
    }

    pub fn read_u16(&self, offset: usize) -> u16 {
        let mut b = [0; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    pub fn fill(&self, byte: u8) {
        self.write(0, &[byte; PAGE]);
    }
}

/// `n` locked pages, each with its guest-physical address.
pub fn pages(n: usize) -> io::Result<Vec<Page>> {
    // SAFETY: a fresh anonymous mapping; nothing else refers to it.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            n * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE | libc::MAP_LOCKED,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // Huge pages would be collapsed (and moved) behind our back.
    // SAFETY: advice on the mapping made above.
    unsafe { libc::madvise(base, n * PAGE, libc::MADV_NOHUGEPAGE) };
    let pagemap = File::open("/proc/self/pagemap")?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // SAFETY: within the mapping of n pages.
        let ptr = unsafe { base.cast::<u8>().add(i * PAGE) };
        // SAFETY: touch the page so it is present (MAP_POPULATE should have).
        unsafe { ptr.write_volatile(0) };
        let mut entry = [0u8; 8];
        pagemap.read_exact_at(&mut entry, (ptr as u64 / PAGE as u64) * 8)?;
        let entry = u64::from_le_bytes(entry);
        let pfn = entry & ((1 << 55) - 1);
        if entry & (1 << 63) == 0 || pfn == 0 {
            return Err(io::Error::other("pagemap shows no frame (not root?)"));
        }
        out.push(Page {
            ptr,
            gpa: pfn * PAGE as u64,
        });
    }
    Ok(out)
}
