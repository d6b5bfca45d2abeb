//! Bind mounts (`-v /host/dir:/path[:ro]`, `--mount type=bind`): a host
//! directory shown to the container through virtio-fs. For each one, the
//! container's hull process starts a virtiofsd (the maintained Rust
//! daemon, in its own namespace sandbox with its own seccomp filter) on a
//! listening socket in the container's directory; the VMM connects to it
//! before jailing itself (`vmm::virtio::fs`), and the agent mounts the
//! tag at the path in the container. virtiofsd ends when the VM does
//! (its connection closes), when the guard here drops, or when this
//! process dies (parent-death signal).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde::{Deserialize, Serialize};

/// Where the guest stages shared directory `i` before binding it.
pub fn guest_staging(i: usize) -> String {
    format!("/run/hull/binds/{i}")
}

/// The virtio-fs tag of shared directory `i`.
pub fn tag(i: usize) -> String {
    format!("hull-bind{i}")
}

/// Set to virtiofsd's path to use that one (default: found on `PATH`,
/// then the places distributions install it).
pub const VIRTIOFSD_ENV: &str = "HULL_VIRTIOFSD";

/// Errors of bind mounts.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The host path does not exist.
    #[error("bind source path does not exist: {0}")]
    Missing(PathBuf),
    /// The host path is not a directory.
    #[error("bind source path {0} is not a directory: a microVM shares host directories only (bind the directory that holds it)")]
    NotADirectory(PathBuf),
    /// The host path could not be resolved.
    #[error("bind source path {0}: {1}")]
    Resolve(PathBuf, #[source] std::io::Error),
    /// virtiofsd is not installed.
    #[error("bind mounts need virtiofsd, which is not installed (./scripts/setup installs it; or set {VIRTIOFSD_ENV})")]
    NoVirtiofsd,
    /// virtiofsd could not be started.
    #[error("cannot start virtiofsd for {0}")]
    Spawn(PathBuf, #[source] std::io::Error),
}

/// A host directory mounted in a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    /// The host directory, absolute with symlinks resolved (when the
    /// container was created).
    pub source: PathBuf,
    /// Absolute path in the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Resolves a `-v`/`--mount` source (absolute, or relative to the
/// current directory as Docker takes `./dir`) to an existing directory.
pub fn resolve_source(source: &str) -> Result<PathBuf, BindError> {
    let given = PathBuf::from(source);
    let path = if given.is_absolute() {
        given
    } else {
        std::env::current_dir()
            .map_err(|e| BindError::Resolve(given.clone(), e))?
            .join(given)
    };
    let real = match std::fs::canonicalize(&path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(BindError::Missing(path)),
        Err(e) => return Err(BindError::Resolve(path, e)),
    };
    if !real.is_dir() {
        return Err(BindError::NotADirectory(real));
    }
    Ok(real)
}

/// Checks, when a container starts, that each source still is a directory.
pub fn check_sources(binds: &[BindMount]) -> Result<(), BindError> {
    for b in binds {
        match std::fs::metadata(&b.source) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(BindError::NotADirectory(b.source.clone())),
            Err(_) => return Err(BindError::Missing(b.source.clone())),
        }
    }
    Ok(())
}

/// The virtiofsd binary to run.
fn virtiofsd() -> Result<PathBuf, BindError> {
    if let Some(p) = std::env::var_os(VIRTIOFSD_ENV) {
        return Ok(p.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("virtiofsd"))
        .chain(["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"].map(PathBuf::from))
        .find(|p| p.is_file())
        .ok_or(BindError::NoVirtiofsd)
}

/// The running virtiofsd daemons of one container, killed and reaped on drop.
pub struct SharedDirs {
    daemons: Vec<Child>,
    /// One per bind mount, in order, for the VM's configuration.
    pub devices: Vec<vmm::virtio::fs::FsConfig>,
}

impl SharedDirs {
    /// Starts one virtiofsd per bind mount, each on a socket
    /// `<sockets>-fs<i>` and logging to `fs-<i>.log` in `logs`.
    ///
    /// `sockets` is the VM's vsock socket path (`run/ID12.vsock`): Unix
    /// socket paths are limited to 108 bytes, which a container's
    /// directory under a longer hull root already exceeds, and whatever
    /// removes or checks a VM's sockets in `run/` (`hull rm`, `system
    /// check`) goes by that prefix.
    pub fn start(sockets: &Path, logs: &Path, binds: &[BindMount]) -> Result<Self, BindError> {
        let mut shared = Self {
            daemons: Vec::new(),
            devices: Vec::new(),
        };
        if binds.is_empty() {
            return Ok(shared);
        }
        check_sources(binds)?;
        let bin = virtiofsd()?;
        for (i, b) in binds.iter().enumerate() {
            let mut socket = sockets.as_os_str().to_owned();
            socket.push(format!("-fs{i}"));
            let socket = PathBuf::from(socket);
            let spawn = |e| BindError::Spawn(b.source.clone(), e);
            let _ = std::fs::remove_file(&socket);
            let listener = UnixListener::bind(&socket).map_err(spawn)?;
            let log = crate::container::store::create_private(&logs.join(format!("fs-{i}.log")))
                .map_err(spawn)?;
            let child = spawn_daemon(&bin, b, listener.into(), log).map_err(spawn)?;
            shared.daemons.push(child);
            shared.devices.push(vmm::virtio::fs::FsConfig {
                socket,
                tag: tag(i),
            });
        }
        Ok(shared)
    }
}

impl Drop for SharedDirs {
    fn drop(&mut self) {
        for child in &mut self.daemons {
            let _ = child.kill();
            let _ = child.wait();
        }
        for d in &self.devices {
            let _ = std::fs::remove_file(&d.socket);
        }
    }
}

/// Descriptor number virtiofsd finds its listening socket at.
const LISTEN_FD: i32 = 3;

/// Starts virtiofsd for `bind` on `listener` (already bound, so the VMM
/// can connect at once: the connection waits in the backlog until
/// virtiofsd accepts it).
fn spawn_daemon(
    bin: &Path,
    bind: &BindMount,
    listener: OwnedFd,
    log: std::fs::File,
) -> std::io::Result<Child> {
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--fd={LISTEN_FD}"))
        .arg("--shared-dir")
        .arg(&bind.source)
        .args(["--log-level", "error", "--cache", "auto"])
        // Its namespace sandbox needs root; a rootless hull's daemon runs
        // as the user, who can reach no more than that user could.
        .arg(if rootless() {
            "--sandbox=none"
        } else {
            "--sandbox=namespace"
        })
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    if bind.read_only {
        cmd.arg("--readonly");
    }
    let parent = std::process::id() as libc::pid_t;
    let fd = listener.as_raw_fd();
    // SAFETY: the closure runs between fork and exec and makes only
    // async-signal-safe calls (dup2, fcntl, prctl, getppid) on values copied in.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 clears close-on-exec on the copy; a descriptor that
            // already is LISTEN_FD needs it cleared by hand.
            let placed = if fd == LISTEN_FD {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, LISTEN_FD)
            };
            if placed < 0 || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // We may have died before the line above took effect.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(listener);
    Ok(child)
}

fn rootless() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() != 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_resolve_to_existing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("d");
        std::fs::create_dir(&sub).unwrap();
        std::os::unix::fs::symlink(&sub, dir.path().join("link")).unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let real = std::fs::canonicalize(&sub).unwrap();
        assert_eq!(
            resolve_source(dir.path().join("link").to_str().unwrap()).unwrap(),
            real
        );
        assert!(matches!(
            resolve_source(dir.path().join("none").to_str().unwrap()),
            Err(BindError::Missing(_))
        ));
        assert!(matches!(
            resolve_source(dir.path().join("f").to_str().unwrap()),
            Err(BindError::NotADirectory(_))
        ));
    }

    #[test]
    fn a_source_removed_before_start_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bind = BindMount {
            source: dir.path().join("gone"),
            target: "/x".into(),
            read_only: false,
        };
        let err = check_sources(&[bind]).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
