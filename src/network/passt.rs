//! One `passt` process per container VM, over a socket pair.
//!
//! passt (Debian's `passt` package, the user-mode stack podman uses) takes
//! its end of the pair with `-F FD` and speaks the qemu stream protocol on
//! it; the VMM's virtio-net device holds the other end. passt ends with
//! the VMM three ways: it quits when its socket closes (`-F` implies
//! one-off), it gets SIGKILL when the process that started it dies
//! (`PR_SET_PDEATHSIG`; so that this survives, passt starts as `nobody`
//! already — a credential change would clear the setting), and
//! [`Passt`]'s drop kills and reaps it.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::DefaultNetwork;

/// Overrides the passt binary (default: `passt` on PATH).
pub const BINARY_ENV: &str = "HULL_PASST";
/// The user passt runs as when hull is root (Debian's `nobody`).
const NOBODY: libc::uid_t = 65534;

/// Errors starting passt.
#[derive(Debug, thiserror::Error)]
pub enum PasstError {
    /// The binary is missing.
    #[error("passt is not installed (install the Debian package passt, or set {BINARY_ENV})")]
    NotInstalled,
    /// The socket pair cannot be made.
    #[error("Cannot create the socket pair for passt")]
    Socket(#[source] std::io::Error),
    /// Starting the process failed.
    #[error("Cannot start {0}")]
    Spawn(PathBuf, #[source] std::io::Error),
}

/// A running passt, killed and reaped when dropped.
#[derive(Debug)]
pub struct Passt {
    child: Child,
}

fn binary() -> PathBuf {
    std::env::var_os(BINARY_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("passt"))
}

/// passt's arguments for the default network, its socket being `fd`.
fn args(fd: RawFd) -> Vec<String> {
    let s = |v: &str| v.to_string();
    vec![
        s("--foreground"),
        s("--quiet"),
        s("--fd"),
        fd.to_string(),
        // IPv4 only: the guest kernel has no IPv6.
        s("--ipv4-only"),
        s("--address"),
        DefaultNetwork::ADDRESS.to_string(),
        s("--netmask"),
        DefaultNetwork::PREFIX_LEN.to_string(),
        s("--gateway"),
        DefaultNetwork::GATEWAY.to_string(),
        s("--dns-forward"),
        DefaultNetwork::DNS.to_string(),
        // passt's default maps the gateway address to the host's own
        // loopback: every service bound to 127.0.0.1 on the host would be
        // one connect away from any container.
        s("--no-map-gw"),
        // Nothing inbound: published ports stay on vsock.
        s("--tcp-ports"),
        s("none"),
        s("--udp-ports"),
        s("none"),
    ]
}

impl Passt {
    /// Starts passt for one VM; returns it and the VMM's end of its socket
    /// (close-on-exec, so no other child inherits it and keeps passt up).
    /// passt's messages go to `log` (appended) if given.
    pub fn spawn(log: Option<&Path>) -> Result<(Self, UnixStream), PasstError> {
        let (ours, theirs) = UnixStream::pair().map_err(PasstError::Socket)?;
        let fd = theirs.as_raw_fd();
        let stderr = match log.map(|p| {
            std::os::unix::fs::OpenOptionsExt::mode(
                std::fs::OpenOptions::new().create(true).append(true),
                0o600,
            )
            .open(p)
        }) {
            Some(Ok(f)) => Stdio::from(f),
            _ => Stdio::null(),
        };
        let parent = std::process::id() as libc::pid_t;
        let bin = binary();
        let mut cmd = Command::new(&bin);
        cmd.args(args(fd))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        // SAFETY: the closure runs between fork and exec and makes only
        // async-signal-safe system calls (fcntl, setgroups, setgid,
        // setuid, prctl, getppid) on values copied in before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let check = |rc: libc::c_int| {
                    if rc == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                };
                // passt's end must survive the exec.
                check(libc::fcntl(fd, libc::F_SETFD, 0))?;
                if libc::geteuid() == 0 {
                    check(libc::setgroups(0, std::ptr::null()))?;
                    check(libc::setgid(NOBODY))?;
                    check(libc::setuid(NOBODY))?;
                }
                check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
                // We may have died before the line above took effect.
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                PasstError::NotInstalled
            } else {
                PasstError::Spawn(bin.clone(), e)
            }
        })?;
        // Our copy of passt's end goes now: passt sees the VMM's end close.
        drop(theirs);
        tracing::debug!("passt started, pid {}", child.id());
        Ok((Self { child }, ours))
    }

    /// passt's process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn passt_installed() -> bool {
        Command::new(binary())
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    }

    #[test]
    fn args_name_the_socket_and_the_default_network() {
        let a = args(7).join(" ");
        assert!(a.contains("--fd 7"));
        assert!(a.contains("--address 10.0.2.15"));
        assert!(a.contains("--gateway 10.0.2.2"));
        assert!(a.contains("--dns-forward 10.0.2.3"));
        assert!(a.contains("--tcp-ports none"));
        assert!(a.contains("--no-map-gw"));
    }

    /// passt answers an ARP request for the gateway over the pair, and is
    /// gone (reaped) once dropped.
    #[test]
    fn passt_answers_arp_and_dies_with_its_handle() {
        assert!(
            passt_installed(),
            "passt is not installed: apt-get install passt (scripts/apt-packages)"
        );
        let (passt, mut sock) = Passt::spawn(None).unwrap();
        let pid = passt.pid() as libc::pid_t;
        let mac = [2u8, 0, 0, 0, 0, 9];
        let mut arp = vec![0xff; 6];
        arp.extend(mac);
        arp.extend([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        arp.extend(mac);
        arp.extend(DefaultNetwork::ADDRESS.octets());
        arp.extend([0; 6]);
        arp.extend(DefaultNetwork::GATEWAY.octets());
        sock.write_all(&(arp.len() as u32).to_be_bytes()).unwrap();
        sock.write_all(&arp).unwrap();
        sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut len = [0u8; 4];
        sock.read_exact(&mut len).unwrap();
        let mut reply = vec![0u8; u32::from_be_bytes(len) as usize];
        sock.read_exact(&mut reply).unwrap();
        assert_eq!(&reply[12..14], &[0x08, 0x06], "an ARP frame");
        assert_eq!(&reply[20..22], &[0, 2], "a reply");
        assert_eq!(&reply[28..32], &DefaultNetwork::GATEWAY.octets());
        drop(passt);
        // SAFETY: kill with signal 0 only checks that the PID exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "passt {pid} still exists after drop");
    }
}
