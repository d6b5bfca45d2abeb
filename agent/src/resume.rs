//! What the guest does after its VM was restored from a snapshot: take a
//! fresh identity (wall clock, random state) and see disks that changed.
//!
//! Every VM restored from one snapshot starts with the same memory, so the
//! same kernel RNG state and a wall clock stuck at the moment of the
//! snapshot; without this, two containers would draw the same "random"
//! numbers.

use std::io;
use std::time::{Duration, Instant};

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
/// `BLKFLSBUF`: `_IO(0x12, 97)`.
const BLKFLSBUF: libc::c_ulong = 0x1261;
/// Longest entropy buffer accepted from the host.
const MAX_ENTROPY: usize = 512;
/// How long a disk may take to show its new size.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(20);

/// Sets the wall clock and reseeds the RNG with the host's bytes.
pub fn take_identity(unix_nanos: u64, entropy: &[u8]) -> io::Result<()> {
    if entropy.len() < 32 || entropy.len() > MAX_ENTROPY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "entropy must be 32 to 512 bytes",
        ));
    }
    let ts = libc::timespec {
        tv_sec: (unix_nanos / 1_000_000_000) as libc::time_t,
        tv_nsec: (unix_nanos % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: clock_settime reads a valid timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // struct rand_pool_info { int entropy_count; int buf_size; u32 buf[]; }
    let mut info = Vec::with_capacity(8 + entropy.len());
    info.extend_from_slice(&((entropy.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(entropy.len() as i32).to_ne_bytes());
    info.extend_from_slice(entropy);
    // Room for a whole last u32, which the kernel may read.
    info.resize(8 + entropy.len().div_ceil(4) * 4, 0);
    let random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")?;
    use std::os::unix::io::AsRawFd;
    // SAFETY: RNDADDENTROPY reads a rand_pool_info header and buf_size
    // bytes after it, all inside `info`.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Credited entropy alone reseeds the crng only on its own schedule
    // (up to a minute later); force it now.
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until `device` (`/dev/vdX`) reports `sectors`, then drops its
/// cached blocks, which still hold what the snapshot's placeholder disk
/// had at the same offsets.
pub fn refresh_disk(device: &str, sectors: u64) -> io::Result<()> {
    let name = device
        .strip_prefix("/dev/")
        .filter(|n| !n.is_empty() && !n.contains('/'))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a /dev/ block device"))?;
    let size_file = format!("/sys/block/{name}/size");
    let start = Instant::now();
    loop {
        let now: u64 = std::fs::read_to_string(&size_file)?
            .trim()
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad size in sysfs"))?;
        if now == sectors {
            break;
        }
        if start.elapsed() > REFRESH_TIMEOUT {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("size stayed {now} sectors, expected {sectors}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let dev = std::fs::File::open(device)?;
    use std::os::unix::io::AsRawFd;
    // SAFETY: BLKFLSBUF takes no argument and acts on the open device.
    if unsafe { libc::ioctl(dev.as_raw_fd(), BLKFLSBUF, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
