//! The pseudo filesystems every container expects.

use std::ffi::CString;
use std::fmt;

/// A mount that failed.
#[derive(Debug)]
pub struct MountError {
    target: &'static str,
    errno: i32,
}

impl fmt::Display for MountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mount {}: {}",
            self.target,
            std::io::Error::from_raw_os_error(self.errno)
        )
    }
}

struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: libc::c_ulong,
    data: &'static str,
}

const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// In order: /dev before /dev/pts, /sys before its cgroup directory.
const MOUNTS: &[Mount] = &[
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: libc::MS_NOSUID,
        data: "mode=0755",
    },
    Mount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: "newinstance,ptmxmode=0666,mode=0620",
    },
    Mount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: "mode=0755",
    },
    Mount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
];

fn cstr(s: &str) -> CString {
    // The strings are the constants above: never with an interior NUL.
    CString::new(s).unwrap_or_default()
}

/// Mounts everything in [`MOUNTS`], creating the mount points.
pub fn mount_all() -> Result<(), MountError> {
    for m in MOUNTS {
        let target = cstr(m.target);
        // SAFETY: `target` is a valid NUL-terminated path; mkdir only
        // creates a directory (EEXIST is fine and ignored).
        unsafe { libc::mkdir(target.as_ptr(), 0o755) };
        let (source, fstype, data) = (cstr(m.source), cstr(m.fstype), cstr(m.data));
        // SAFETY: all pointers are valid NUL-terminated strings that live
        // across the call; `data` is a string as these filesystems expect.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                m.flags,
                data.as_ptr().cast(),
            )
        };
        if rc != 0 {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            // The kernel may have mounted devtmpfs itself (DEVTMPFS_MOUNT).
            if errno != libc::EBUSY {
                return Err(MountError {
                    target: m.target,
                    errno,
                });
            }
        }
    }
    Ok(())
}

/// Guest uptime in seconds, from /proc/uptime.
pub fn uptime() -> Option<f64> {
    std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Unmounts everything mounted under `/run/hull/` (a container's root,
/// its writable layer, its volumes), newest first, before the VM ends:
/// a volume's ext4 is then clean (no journal to replay), so the next VM
/// can mount it read-only. Detached: a mount still busy goes when its
/// last user does.
pub fn unmount_container_mounts() {
    let Ok(text) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let points: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| p.starts_with("/run/hull/"))
        .map(|p| p.replace("\\040", " "))
        .collect();
    for p in points.iter().rev() {
        let Ok(c) = CString::new(p.as_str()) else {
            continue;
        };
        // SAFETY: a valid NUL-terminated path; failure is harmless here.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}
