//! The container's network namespace, made by hull before the runtime
//! runs (the spec joins it by path), so that hull can reach into it:
//! published ports are dialled from inside it on loopback by the same
//! host-side proxy the VM mode uses, and `pasta` attaches to it for
//! outbound access. It is bind-mounted on a file in the monitor's private
//! mount namespace, so it lives exactly as long as the monitor (or the
//! container) does: nothing to clean up on the host after a crash. With a
//! user namespace, hull makes that too and the network namespace inside
//! it ([`create_in_userns`]): the runtime joins both, enters the network
//! namespace on `exec` after the user namespace (runc) and mounts the
//! container's sysfs itself.

use std::ffi::CString;
use std::io::Read;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use agent::unpack::IdShift;

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
    let bound = path.to_path_buf();
    // unshare(CLONE_NEWNET) moves only the calling thread: do it on a
    // thread of its own, which ends once the namespace is bound.
    in_thread(move || {
        // SAFETY: unshare(2) with a flag, on this thread only.
        check(unsafe { libc::unshare(libc::CLONE_NEWNET) })?;
        bind(c"/proc/thread-self/ns/net", &bound)
    })
    .map_err(OciError::io("creating the container's network namespace"))?;
    set_up(path)
}

/// Creates a user namespace mapping container IDs 0..`shift.size` to the
/// host's from `shift.uid`/`shift.gid`, bound on `userns`, and a network
/// namespace owned by it, set up as by [`create`] and bound on `netns`.
/// The runtime joins both: a network namespace of the host's user
/// namespace could not be entered by runc's `exec`, which joins the
/// user namespace first (EPERM).
pub fn create_in_userns(netns: &Path, userns: &Path, shift: IdShift) -> Result<(), OciError> {
    let holder = NamespaceHolder::spawn().map_err(OciError::io("creating a user namespace"))?;
    let map = |id| format!("0 {id} {}\n", shift.size);
    let proc = format!("/proc/{}", holder.pid);
    std::fs::write(format!("{proc}/uid_map"), map(shift.uid))
        .and_then(|()| std::fs::write(format!("{proc}/gid_map"), map(shift.gid)))
        .map_err(OciError::io("mapping the user namespace's IDs"))?;
    for (ns, target) in [("user", userns), ("net", netns)] {
        cstr(Path::new(&format!("{proc}/ns/{ns}")))
            .and_then(|source| bind(&source, target))
            .map_err(OciError::io(format!("binding the {ns} namespace")))?;
    }
    drop(holder);
    set_up(netns)
}

/// A child process in a new user and network namespace, which lives until
/// dropped (long enough to map its IDs and bind its namespaces).
struct NamespaceHolder {
    pid: libc::pid_t,
    /// Closing it ends the child.
    release: Option<std::os::fd::OwnedFd>,
}

impl NamespaceHolder {
    fn spawn() -> std::io::Result<Self> {
        let (ready_r, ready_w) = pipe()?;
        let (release_r, release_w) = pipe()?;
        // SAFETY: the child makes only async-signal-safe system calls
        // (unshare, write, read, _exit) on descriptors it inherited.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: as above; the child never returns into Rust code.
            // Its copy of the release pipe's write end goes first, or
            // its read would never see the end.
            unsafe {
                libc::close(release_w.as_raw_fd());
                let ok = libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) == 0;
                let byte = [u8::from(ok)];
                libc::write(ready_w.as_raw_fd(), byte.as_ptr().cast(), 1);
                let mut buf = [0u8; 1];
                libc::read(release_r.as_raw_fd(), buf.as_mut_ptr().cast(), 1);
                libc::_exit(0);
            }
        }
        check(pid)?;
        drop((ready_w, release_r));
        let holder = Self {
            pid,
            release: Some(release_w),
        };
        let mut byte = [0u8; 1];
        let n = std::fs::File::from(ready_r).read(&mut byte)?;
        if n != 1 || byte[0] != 1 {
            return Err(std::io::Error::other("unshare(CLONE_NEWUSER) failed"));
        }
        Ok(holder)
    }
}

impl Drop for NamespaceHolder {
    fn drop(&mut self) {
        // Closing the pipe's write end wakes the child's read (EOF).
        drop(self.release.take());
        let mut status = 0;
        // SAFETY: waitpid on our own child; writes one integer.
        unsafe { libc::waitpid(self.pid, &mut status, 0) };
    }
}

/// Loopback up and Docker's sysctls in the network namespace bound at
/// `path`, from a thread that joins it.
fn set_up(path: &Path) -> Result<(), OciError> {
    let ns = std::fs::File::open(path).map_err(OciError::io("opening the network namespace"))?;
    in_thread(move || {
        // SAFETY: setns(2) of this short-lived thread only.
        check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) })?;
        loopback_up()?;
        unprivileged_ports_and_ping()
    })
    .map_err(OciError::io("setting up the container's network namespace"))
}

/// Runs `f` on a thread of its own (namespace changes stay there).
fn in_thread(f: impl FnOnce() -> std::io::Result<()> + Send + 'static) -> std::io::Result<()> {
    std::thread::spawn(f)
        .join()
        .map_err(|_| std::io::Error::other("namespace thread panicked"))?
}

/// Bind-mounts the namespace file `source` on `target` (created empty).
fn bind(source: &std::ffi::CStr, target: &Path) -> std::io::Result<()> {
    std::fs::File::create(target)?;
    let dst = cstr(target)?;
    // SAFETY: bind mount between two valid NUL-terminated paths.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    })
}

fn pipe() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned two fresh descriptors that we now own.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

/// Lets any user of the calling thread's network namespace bind ports
/// below 1024 and open ICMP echo sockets, as Docker sets up every
/// container's (its users other than root hold no CAP_NET_BIND_SERVICE
/// or CAP_NET_RAW).
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// NS_GET_USERNS (linux/nsfs.h): the user namespace owning a namespace.
    const NS_GET_USERNS: libc::c_ulong = 0xb701;

    #[test]
    fn the_network_namespace_belongs_to_the_user_namespace_made_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let (net, user) = (dir.path().join("netns"), dir.path().join("userns"));
        let shift = IdShift {
            uid: 300_000,
            gid: 300_000,
            size: 65_536,
        };
        create_in_userns(&net, &user, shift).unwrap();
        let ns = std::fs::File::open(&net).unwrap();
        // SAFETY: NS_GET_USERNS takes no argument and returns a new
        // descriptor, owned below.
        let owner = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_USERNS) };
        check(owner).unwrap();
        // SAFETY: a fresh descriptor the ioctl returned.
        let owner = unsafe { std::fs::File::from_raw_fd(owner) };
        let (a, b) = (owner.metadata().unwrap(), std::fs::metadata(&user).unwrap());
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));
        // Not the host's user namespace.
        let host = std::fs::metadata("/proc/self/ns/user").unwrap();
        assert_ne!(a.ino(), host.ino());
        drop((ns, owner));
        remove(&net);
        remove(&user);
        assert!(!net.exists() && !user.exists());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(dir.path().to_str().unwrap()), "{mounts}");
    }
}
