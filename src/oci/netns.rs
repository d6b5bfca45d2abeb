//! The container's network namespace, made by hull before the runtime
//! runs (the spec joins it by path), so that hull can reach into it:
//! published ports are dialled from inside it on loopback by the same
//! host-side proxy the VM mode uses, and `pasta` attaches to it for
//! outbound access. It is bind-mounted on a file in the monitor's private
//! mount namespace, so it lives exactly as long as the monitor (or the
//! container) does: nothing to clean up on the host after a crash.

use std::ffi::CString;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::OciError;

fn cstr(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other)
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Puts this process in a mount namespace of its own whose mounts do not
/// propagate to the host (host mounts still appear here). Must run while
/// the process has one thread (unshare(CLONE_NEWNS) needs an unshared fs).
pub fn private_mounts() -> Result<(), OciError> {
    // SAFETY: unshare(2) with a flag; no memory is passed.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) })
        .map_err(OciError::io("unsharing the mount namespace"))?;
    let root = c"/";
    // SAFETY: mount(2) changing propagation of "/": only the path is read.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        )
    })
    .map_err(OciError::io("making mounts private"))
}

/// Creates a network namespace with loopback up and binds it on `path`.
pub fn create(path: &Path) -> Result<(), OciError> {
    let path = path.to_path_buf();
    // unshare(CLONE_NEWNET) moves only the calling thread: do it on a
    // thread of its own, which ends once the namespace is bound.
    std::thread::spawn(move || -> std::io::Result<()> {
        // SAFETY: unshare(2) with a flag, on this thread only.
        check(unsafe { libc::unshare(libc::CLONE_NEWNET) })?;
        loopback_up()?;
        unprivileged_ports_and_ping()?;
        std::fs::File::create(&path)?;
        let src = c"/proc/thread-self/ns/net";
        let dst = cstr(&path)?;
        // SAFETY: bind mount between two valid NUL-terminated paths.
        check(unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        })
    })
    .join()
    .map_err(|_| OciError::Io("network namespace".into(), std::io::Error::other("panic")))?
    .map_err(OciError::io("creating the container's network namespace"))
}

/// Mounts, read-only, a sysfs that shows the network namespace bound at
/// `ns` (sysfs takes the mounter's namespace) on `target`.
pub fn mount_sysfs(ns: &Path, target: &Path) -> Result<(), OciError> {
    let (ns, target) = (ns.to_path_buf(), target.to_path_buf());
    std::thread::spawn(move || -> std::io::Result<()> {
        let f = std::fs::File::open(&ns)?;
        // SAFETY: setns(2) of this short-lived thread only.
        check(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) })?;
        let dst = cstr(&target)?;
        let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        // SAFETY: mount(2) of a new sysfs on a valid NUL-terminated path.
        check(unsafe {
            libc::mount(
                c"sysfs".as_ptr(),
                dst.as_ptr(),
                c"sysfs".as_ptr(),
                flags,
                std::ptr::null(),
            )
        })
    })
    .join()
    .map_err(|_| OciError::Io("sysfs".into(), std::io::Error::other("panic")))?
    .map_err(OciError::io("mounting the container's sysfs"))
}

/// Lets any user of the calling thread's network namespace bind ports
/// below 1024 and open ICMP echo sockets, as Docker sets up every
/// container's. Needed with a user namespace: the network namespace
/// belongs to the host's user namespace (hull made it), so the
/// container's CAP_NET_BIND_SERVICE and CAP_NET_RAW, held in its own
/// user namespace, do not count there.
fn unprivileged_ports_and_ping() -> std::io::Result<()> {
    // /proc/sys/net shows the network namespace of the thread opening it.
    std::fs::write("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0")?;
    std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647")
}

/// `ip link set lo up` in the calling thread's network namespace.
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: socket(2); the descriptor is owned by `sock` below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(fd)?;
    // SAFETY: `fd` is a fresh descriptor we own.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills the flags of the named interface in `req`.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: reading and writing the flags member the kernel just filled.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads `req`.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) })
}

/// Moves the calling thread into the namespace bound at `netns` and
/// connects to the container's `port` on loopback (IPv4, then IPv6). The
/// socket stays in that namespace whatever thread uses it next; the
/// caller's thread should be one made for this connection.
pub fn connect_in(netns: &Path, port: u16) -> std::io::Result<TcpStream> {
    let ns = std::fs::File::open(netns)?;
    // SAFETY: setns(2) with a namespace descriptor we hold open.
    check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) })?;
    TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .or_else(|_| TcpStream::connect(SocketAddr::from((Ipv6Addr::LOCALHOST, port))))
}

/// Unbinds the namespace (it ends once no process is left in it).
pub fn remove(path: &Path) {
    if let Ok(p) = cstr(path) {
        // SAFETY: umount2(2) of a path we bound.
        unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
    }
    let _ = std::fs::remove_file(path);
}
