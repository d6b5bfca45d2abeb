//! A virtio-mmio device driven from user space: found through the kernel
//! command line, taken from its kernel driver (unbind), its registers
//! mapped through `/dev/mem`, and split virtqueues in locked pages.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::io::AsRawFd;

use crate::dma::{self, Page};

pub const STATUS_ACK: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const NEEDS_RESET: u32 = 0x40;

pub const REG_DRIVER_FEATURES: usize = 0x020;
pub const REG_DRIVER_FEATURES_SEL: usize = 0x024;
pub const REG_QUEUE_SEL: usize = 0x030;
pub const REG_QUEUE_NUM: usize = 0x038;
pub const REG_QUEUE_READY: usize = 0x044;
pub const REG_QUEUE_NOTIFY: usize = 0x050;
pub const REG_INTERRUPT_ACK: usize = 0x064;
pub const REG_STATUS: usize = 0x070;
pub const REG_QUEUE_DESC: usize = 0x080;
pub const REG_QUEUE_AVAIL: usize = 0x090;
pub const REG_QUEUE_USED: usize = 0x0a0;
pub const REG_CONFIG: usize = 0x100;

/// Descriptor flags.
pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

/// A descriptor as written: address, length, flags, next.
pub type Desc = (u64, u32, u16, u16);

/// One device's register window.
pub struct Device {
    regs: *mut u32,
    pub name: String,
}

/// The n-th `virtio_mmio.device=SIZE@BASE:IRQ` of the kernel command line
/// (the kernel names it `virtio-mmio.n`) and its virtio device ID.
pub fn find(device_id: u32, nth_of_kind: usize) -> io::Result<Device> {
    let cmdline = std::fs::read_to_string("/proc/cmdline")?;
    let bases: Vec<u64> = cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("virtio_mmio.device="))
        .filter_map(|v| v.split('@').nth(1))
        .filter_map(|v| v.split(':').next())
        .filter_map(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        .collect();
    let mut seen = 0;
    for (i, base) in bases.iter().enumerate() {
        let name = format!("virtio-mmio.{i}");
        if read_device_id(&name) != Some(device_id) {
            continue;
        }
        if seen < nth_of_kind {
            seen += 1;
            continue;
        }
        unbind(&name)?;
        return map(*base, name);
    }
    Err(io::Error::other(format!(
        "no virtio device {device_id} number {nth_of_kind}"
    )))
}

fn read_device_id(platform_name: &str) -> Option<u32> {
    let dir = format!("/sys/bus/platform/devices/{platform_name}");
    for e in std::fs::read_dir(&dir).ok()?.flatten() {
        if e.file_name().to_string_lossy().starts_with("virtio") {
            let id = std::fs::read_to_string(e.path().join("device")).ok()?;
            return u32::from_str_radix(id.trim().trim_start_matches("0x"), 16).ok();
        }
    }
    None
}

/// Takes the device from its kernel driver: from here on only we drive it.
fn unbind(platform_name: &str) -> io::Result<()> {
    std::fs::write(
        "/sys/bus/platform/drivers/virtio-mmio/unbind",
        platform_name,
    )
}

fn map(base: u64, name: String) -> io::Result<Device> {
    let mem = OpenOptions::new().read(true).write(true).open("/dev/mem")?;
    // SAFETY: a shared mapping of the device's 4 KiB register window, which
    // is not RAM; the fd may close afterwards (the mapping stays).
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            dma::PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            mem.as_raw_fd(),
            base as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(Device {
        regs: p.cast(),
        name,
    })
}

impl Device {
    // Register accesses are plain 32-bit `mov`s written out: a volatile
    // access may compile to an SSE `movd`, which the hypervisor's
    // instruction emulator (every MMIO access is emulated) refuses.

    pub fn read(&self, reg: usize) -> u32 {
        assert!(reg < dma::PAGE && reg % 4 == 0);
        let v: u32;
        // SAFETY: inside the mapped register window, aligned.
        unsafe {
            std::arch::asm!("mov {v:e}, dword ptr [{p}]", p = in(reg) self.regs.add(reg / 4), v = out(reg) v, options(nostack))
        };
        v
    }

    pub fn write(&self, reg: usize, v: u32) {
        assert!(reg < dma::PAGE && reg % 4 == 0);
        // SAFETY: inside the mapped register window, aligned.
        unsafe {
            std::arch::asm!("mov dword ptr [{p}], {v:e}", p = in(reg) self.regs.add(reg / 4), v = in(reg) v, options(nostack))
        };
    }

    fn write64(&self, reg: usize, v: u64) {
        self.write(reg, v as u32);
        self.write(reg + 4, (v >> 32) as u32);
    }

    /// Reset, then ACK, DRIVER, VERSION_1 only, FEATURES_OK.
    pub fn negotiate(&self) -> bool {
        self.write(REG_STATUS, 0);
        self.write(REG_STATUS, STATUS_ACK);
        self.write(REG_STATUS, STATUS_ACK | STATUS_DRIVER);
        self.write(REG_DRIVER_FEATURES_SEL, 1);
        self.write(REG_DRIVER_FEATURES, 1); // VIRTIO_F_VERSION_1 (bit 32)
        self.write(REG_DRIVER_FEATURES_SEL, 0);
        self.write(REG_DRIVER_FEATURES, 0);
        let s = STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.write(REG_STATUS, s);
        self.read(REG_STATUS) & STATUS_FEATURES_OK != 0
    }

    /// Hands queue `index` to the device.
    pub fn set_queue(&self, index: u32, q: &Queue) {
        self.write(REG_QUEUE_SEL, index);
        self.write(REG_QUEUE_NUM, u32::from(q.size));
        self.write64(REG_QUEUE_DESC, q.desc.gpa);
        self.write64(REG_QUEUE_AVAIL, q.avail.gpa);
        self.write64(REG_QUEUE_USED, q.used.gpa);
        self.write(REG_QUEUE_READY, 1);
    }

    /// Sets DRIVER_OK; returns whether the device accepted (no NEEDS_RESET).
    pub fn driver_ok(&self) -> bool {
        let s = STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.write(REG_STATUS, s | STATUS_DRIVER_OK);
        self.read(REG_STATUS) & NEEDS_RESET == 0
    }

    pub fn notify(&self, queue: u32) {
        self.write(REG_QUEUE_NOTIFY, queue);
    }

    /// Notifies `queue` `n` times with nothing new in it; returns the
    /// milliseconds it took the guest.
    pub fn notify_storm(&self, queue: u32, n: u32) -> u64 {
        let start = std::time::Instant::now();
        for _ in 0..n {
            self.notify(queue);
        }
        start.elapsed().as_millis() as u64
    }
}

/// A split virtqueue of our own, each part in its own page.
pub struct Queue {
    pub size: u16,
    pub desc: Page,
    pub avail: Page,
    pub used: Page,
    next_avail: u16,
}

impl Queue {
    pub fn new(size: u16) -> io::Result<Self> {
        let mut p = dma::pages(3)?;
        let used = p.pop().expect("3 pages");
        let avail = p.pop().expect("3 pages");
        let desc = p.pop().expect("3 pages");
        for page in [&desc, &avail, &used] {
            page.fill(0);
        }
        Ok(Self {
            size,
            desc,
            avail,
            used,
            next_avail: 0,
        })
    }

    /// Writes descriptor `i` as it is, whatever it says.
    pub fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        // Indices past the table land in the page anyway (we own 4 KiB).
        self.desc.write((usize::from(i) % 256) * 16, &d);
    }

    /// Makes `head` available (the ring slot of the next index).
    pub fn push(&mut self, head: u16) {
        let slot = usize::from(self.next_avail % self.size);
        self.avail.write_u16(4 + 2 * slot, head);
        self.next_avail = self.next_avail.wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.avail.write_u16(2, self.next_avail);
    }

    /// Sets the available index to anything (a lying driver).
    pub fn set_avail_idx(&self, idx: u16) {
        self.avail.write_u16(2, idx);
    }

    pub fn avail_idx(&self) -> u16 {
        self.next_avail
    }

    pub fn used_idx(&self) -> u16 {
        self.used.read_u16(2)
    }

    /// Waits until the device has used `idx` chains in all; false on timeout.
    pub fn wait_used(&self, idx: u16, ms: u64) -> bool {
        let start = std::time::Instant::now();
        while self.used_idx() != idx {
            if start.elapsed().as_millis() as u64 > ms {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        true
    }

    /// The `i`-th used element: (head, length).
    pub fn used_elem(&self, i: u16) -> (u32, u32) {
        let slot = 4 + 8 * usize::from(i % self.size);
        let mut b = [0u8; 8];
        self.used.read(slot, &mut b);
        (
            u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")),
            u32::from_le_bytes(b[4..8].try_into().expect("4 bytes")),
        )
    }
}

/// Stores to a device register with an SSE `movd`, which the hypervisor's
/// instruction emulator cannot run on MMIO: KVM gives up on the vCPU. The
/// VM must end as a guest crash, the VMM must not.
pub fn sse_store_to_registers(r: &mut crate::report::Report) {
    let Ok(dev) = find(2, 1) else {
        r.check("sse-found-a-device", false);
        return;
    };
    r.line("sse: storing to a register with movd");
    // SAFETY: the register window is mapped; xmm0 is ours to clobber.
    unsafe {
        std::arch::asm!(
            "movd dword ptr [{p}], xmm0",
            p = in(reg) dev.regs.add(REG_STATUS / 4),
            out("xmm0") _,
            options(nostack)
        )
    };
    r.check("sse-store-ended-the-vm", false);
}
