//! The network namespace of one user network: a bridge (`hull0`) holding
//! the gateway address, and one tap per container VM on it.
//!
//! The namespace is hull's own, never the host's: nothing here adds an
//! interface, route or sysctl to the namespace hull runs in. Each step
//! that must happen inside the namespace runs on a short-lived thread
//! that enters it (`unshare`/`setns` change only the calling thread), so
//! the process's other threads are never moved. A namespace outlives the
//! hull that made it by a bind mount of its `nsfs` file under the
//! network's directory (as `ip netns add` does under /run/netns); after a
//! reboot the mount is gone and [`ensure`] makes the namespace again.
//!
//! Links are made through rtnetlink (netlink messages, no `ip` command);
//! a tap is made by opening /dev/net/tun inside the namespace and is not
//! persistent: it goes away with the last descriptor, so a VMM that dies
//! leaves no port behind on the bridge.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;

use super::subnet::Subnet;

/// The bridge of every user network (each has a namespace of its own).
pub const BRIDGE: &str = "hull0";
/// `statfs` magic of a namespace file (linux/magic.h).
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// TUNSETIFF (linux/if_tun.h): `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// Errors of a network's namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A system call on the namespace failed.
    #[error("{0} ({1})")]
    Sys(&'static str, PathBuf, #[source] std::io::Error),
    /// A netlink request failed.
    #[error("netlink: {0}")]
    Netlink(String, #[source] Box<rtnetlink::Error>),
    /// The netlink connection could not be made.
    #[error("Cannot open a netlink socket")]
    Connection(#[source] std::io::Error),
    /// A link hull made is missing.
    #[error("no link {0} in the network's namespace")]
    NoLink(String),
    /// The helper thread died.
    #[error("network namespace helper thread failed")]
    Thread,
}

fn sys<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> NetnsError + 'a {
    move |e| NetnsError::Sys(what, path.to_path_buf(), e)
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether `path` is a mounted namespace file (it is not after a reboot).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct we own; the path is a
    // NUL-terminated string that outlives the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == NSFS_MAGIC
}

/// Makes the namespace at `path` with its bridge for `subnet` unless it
/// is already there; returns whether it made one.
pub fn ensure(path: &Path, subnet: Subnet) -> Result<bool, NetnsError> {
    if is_mounted(path) {
        return Ok(false);
    }
    let path_owned = path.to_path_buf();
    on_thread(move || {
        // SAFETY: unshare moves only this (helper) thread into a new
        // network namespace.
        check(unsafe { libc::unshare(libc::CLONE_NEWNET) })
            .map_err(sys("Cannot create a network namespace", &path_owned))?;
        bind_namespace(&path_owned)?;
        netlink(|h| set_up_bridge(h, subnet))
    })?;
    Ok(true)
}

/// Keeps this thread's namespace alive by bind-mounting its file at `path`.
fn bind_namespace(path: &Path) -> Result<(), NetnsError> {
    File::create(path).map_err(sys("Cannot create the namespace file", path))?;
    let src = c"/proc/thread-self/ns/net";
    let dst = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| NetnsError::Sys("Bad path", path.to_path_buf(), e.into()))?;
    // SAFETY: both strings are NUL-terminated and outlive the call; a
    // bind mount takes no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    check(rc).map_err(sys("Cannot bind-mount the network namespace", path))
}

/// Unmounts and deletes the namespace at `path` (its bridge, and any tap
/// left, go with it once no process holds it).
pub fn remove(path: &Path) -> Result<(), NetnsError> {
    if is_mounted(path) {
        let dst = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|e| NetnsError::Sys("Bad path", path.to_path_buf(), e.into()))?;
        // SAFETY: a NUL-terminated path that outlives the call.
        check(unsafe { libc::umount2(dst.as_ptr(), libc::MNT_DETACH) })
            .map_err(sys("Cannot unmount the network namespace", path))?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(NetnsError::Sys("Cannot remove", path.to_path_buf(), e))
        }
        _ => Ok(()),
    }
}

/// Opens a new tap named `name` in the namespace at `path`, plugged into
/// its bridge and up. Frames carry no packet-info or virtio header.
pub fn open_tap(path: &Path, name: &str) -> Result<File, NetnsError> {
    let path_owned = path.to_path_buf();
    let name = name.to_string();
    on_thread(move || {
        enter(&path_owned)?;
        let tap = create_tap(&name).map_err(sys("Cannot create a tap device", &path_owned))?;
        netlink(|h| plug_into_bridge(h, name.clone()))?;
        Ok(tap)
    })
}

/// Moves this (helper) thread into the namespace at `path`.
fn enter(path: &Path) -> Result<(), NetnsError> {
    let ns = File::open(path).map_err(sys("Cannot open the network namespace", path))?;
    // SAFETY: setns on a descriptor we own moves only this thread.
    check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) })
        .map_err(sys("Cannot enter the network namespace", path))
}

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags.
#[repr(C)]
struct TunRequest {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn create_tap(name: &str) -> std::io::Result<File> {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = TunRequest {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI,
        _pad: [0; 22],
    };
    let n = name.len().min(libc::IFNAMSIZ - 1);
    req.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: TUNSETIFF reads (and writes back) an ifreq-sized struct we own.
    check(unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req) })?;
    // Close-on-exec is already set by std's open; the fd is ours alone.
    // SAFETY: dup of a descriptor we own; the copy is owned by the File.
    let fd = unsafe { libc::fcntl(tun.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    check(fd)?;
    // SAFETY: `fd` is a new descriptor nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Runs `f` on a new thread (so namespace changes die with it).
fn on_thread<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NetnsError> + Send + 'static,
) -> Result<T, NetnsError> {
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(f)
        .map_err(|_| NetnsError::Thread)?
        .join()
        .map_err(|_| NetnsError::Thread)?
}

/// Runs netlink requests on a connection made in this thread's namespace.
fn netlink<F, Fut>(f: F) -> Result<(), NetnsError>
where
    F: FnOnce(rtnetlink::Handle) -> Fut,
    Fut: std::future::Future<Output = Result<(), NetnsError>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(NetnsError::Connection)?;
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetnsError::Connection)?;
        let task = tokio::spawn(conn);
        let r = f(handle).await;
        task.abort();
        r
    })
}

fn nl(what: &str) -> impl FnOnce(rtnetlink::Error) -> NetnsError + '_ {
    move |e| NetnsError::Netlink(what.to_string(), Box::new(e))
}

async fn link_index(h: &rtnetlink::Handle, name: &str) -> Result<u32, NetnsError> {
    let mut links = h
        .clone()
        .link()
        .get()
        .match_name(name.to_string())
        .execute();
    match links.try_next().await {
        Ok(Some(m)) => Ok(m.header.index),
        _ => Err(NetnsError::NoLink(name.to_string())),
    }
}

/// Loopback up, the bridge with the gateway address, up.
async fn set_up_bridge(h: rtnetlink::Handle, subnet: Subnet) -> Result<(), NetnsError> {
    let lo = link_index(&h, "lo").await?;
    h.link().set(lo).up().execute().await.map_err(nl("lo up"))?;
    h.link()
        .add()
        .bridge(BRIDGE.to_string())
        .execute()
        .await
        .map_err(nl("add bridge"))?;
    let br = link_index(&h, BRIDGE).await?;
    let gw: Ipv4Addr = subnet.gateway();
    h.address()
        .add(br, IpAddr::V4(gw), subnet.prefix)
        .execute()
        .await
        .map_err(nl("bridge address"))?;
    h.link()
        .set(br)
        .up()
        .execute()
        .await
        .map_err(nl("bridge up"))
}

async fn plug_into_bridge(h: rtnetlink::Handle, tap: String) -> Result<(), NetnsError> {
    let br = link_index(&h, BRIDGE).await?;
    let idx = link_index(&h, &tap).await?;
    h.link()
        .set(idx)
        .controller(br)
        .up()
        .execute()
        .await
        .map_err(nl("tap on the bridge"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A namespace with a bridge is made, survives its thread, takes a
    /// tap, and is gone after `remove`. Needs root (CAP_NET_ADMIN,
    /// CAP_SYS_ADMIN); the host's namespace is not touched.
    #[test]
    fn namespace_bridge_and_tap_live_and_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("netns");
        let subnet = Subnet::parse("10.77.0.0/24").unwrap();
        assert!(ensure(&path, subnet).unwrap(), "made");
        assert!(is_mounted(&path));
        assert!(!ensure(&path, subnet).unwrap(), "again: nothing to do");
        let tap = open_tap(&path, "htest0").unwrap();
        assert!(tap.as_raw_fd() >= 0);
        // The tap is not in our own namespace.
        assert!(!Path::new("/sys/class/net/htest0").exists());
        drop(tap);
        remove(&path).unwrap();
        assert!(!is_mounted(&path) && !path.exists());
    }
}
