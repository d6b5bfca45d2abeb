//! Names on a user network: Debian's `aardvark-dns` (podman's responder)
//! running inside the network's namespace on the gateway address.
//!
//! Its configuration directory holds one file named after the network:
//! the listen address on the first line, then one line per running
//! container: `ID IPV4 IPV6 NAME,ALIAS,...`. hull rewrites that file when
//! a container joins or leaves and sends SIGHUP, on which aardvark-dns
//! reloads it; names it does not hold get NXDOMAIN (there is no upstream
//! resolver in the namespace). aardvark-dns forks into the background
//! once it listens and writes its PID beside its configuration.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::store::Endpoint;

/// Overrides the aardvark-dns binary.
pub const BINARY_ENV: &str = "HULL_AARDVARK_DNS";
/// Where Debian's package puts it (not on PATH).
const DEFAULT_BINARY: &str = "/usr/lib/podman/aardvark-dns";
/// The file aardvark-dns writes its PID to, in its configuration directory.
const PID_FILE: &str = "aardvark.pid";

/// Errors of a network's DNS responder.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The binary is missing.
    #[error("aardvark-dns is not installed (install the Debian package aardvark-dns, or set {BINARY_ENV})")]
    NotInstalled,
    /// Its configuration cannot be written.
    #[error("Cannot write the DNS configuration {0}")]
    Config(PathBuf, #[source] std::io::Error),
    /// It could not be started or did not come up.
    #[error("Cannot start aardvark-dns: {0}")]
    Start(String),
}

fn binary() -> PathBuf {
    std::env::var_os(BINARY_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BINARY))
}

/// The configuration file of network `name` with `gateway` and the
/// running containers' `endpoints`.
pub fn config_text<'a>(
    gateway: std::net::Ipv4Addr,
    endpoints: impl Iterator<Item = (&'a String, &'a Endpoint)>,
) -> String {
    let mut out = format!("{gateway}\n");
    for (id, ep) in endpoints {
        // As Docker: the name, the aliases and the short ID resolve.
        let names: Vec<&str> = std::iter::once(ep.name.as_str())
            .chain(ep.aliases.iter().map(String::as_str))
            .chain(id.get(..12))
            .collect();
        out.push_str(&format!("{id} {}  {}\n", ep.ip, names.join(",")));
    }
    out
}

/// Writes the configuration into `dir` (atomically; its messages go to
/// `dir` with the extension `.log`) and tells a running responder
/// to reload it; starts one in the namespace at `netns` if none runs.
pub fn update(dir: &Path, network: &str, text: &str, netns: &Path) -> Result<(), DnsError> {
    std::fs::create_dir_all(dir).map_err(|e| DnsError::Config(dir.to_path_buf(), e))?;
    let file = dir.join(network);
    // Beside the directory, not in it: aardvark-dns reads every file there.
    let tmp = dir.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &file))
        .map_err(|e| DnsError::Config(file.clone(), e))?;
    match running_pid(dir) {
        // SAFETY: kill sends a signal to a PID; no memory is involved.
        Some(pid) => unsafe {
            libc::kill(pid, libc::SIGHUP);
        },
        None => start(dir, netns)?,
    }
    Ok(())
}

/// The responder's PID, if it runs (its PID file names a live
/// aardvark-dns).
pub fn running_pid(dir: &Path) -> Option<libc::pid_t> {
    let pid: libc::pid_t = std::fs::read_to_string(dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // "PID (COMM) STATE ...": a zombie has exited already.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (comm, rest) = stat.rsplit_once(')')?;
    let alive = comm.contains("(aardvark") && !rest.trim_start().starts_with('Z');
    alive.then_some(pid)
}

/// Starts aardvark-dns in the namespace; returns once it listens (its
/// first process exits after the daemon reports ready).
fn start(dir: &Path, netns: &Path) -> Result<(), DnsError> {
    let ns = std::fs::File::open(netns).map_err(|e| DnsError::Start(e.to_string()))?;
    let ns_fd = ns.as_raw_fd();
    let mut cmd = Command::new(binary());
    cmd.arg("--config")
        .arg(dir)
        .args(["-p", "53", "run"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // A file, not a pipe: the daemon it forks may keep the descriptor.
        .stderr(log_file(dir));
    // SAFETY: between fork and exec only async-signal-safe calls (setns,
    // setsid) on a descriptor opened before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Its own session: no terminal signal of ours reaches it.
            libc::setsid();
            Ok(())
        });
    }
    let status = cmd.status().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DnsError::NotInstalled,
        _ => DnsError::Start(e.to_string()),
    })?;
    if !status.success() || running_pid(dir).is_none() {
        let log = std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default();
        return Err(DnsError::Start(format!(
            "{status}: {}",
            log.lines().last().unwrap_or("no PID file")
        )));
    }
    Ok(())
}

fn log_file(dir: &Path) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.with_extension("log"))
        .map_or_else(|_| Stdio::null(), Stdio::from)
}

/// Stops the responder of the configuration directory `dir`, if any, and
/// waits (up to 2 s) until it is gone, so a new one can take its place.
pub fn stop(dir: &Path) {
    let Some(pid) = running_pid(dir) else {
        return;
    };
    // SAFETY: kill sends a signal to a PID; no memory is involved.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    for _ in 0..100 {
        if running_pid(dir).is_none() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lists_each_container_with_its_aliases() {
        let mut eps = std::collections::BTreeMap::new();
        eps.insert(
            "0123456789abcdef".to_string(),
            Endpoint {
                name: "web".into(),
                aliases: vec!["www".into(), "site".into()],
                ip: "10.89.0.2".parse().unwrap(),
                mac: "02:ab:c0:00:00:00".into(),
            },
        );
        let text = config_text("10.89.0.1".parse().unwrap(), eps.iter());
        assert_eq!(
            text,
            "10.89.0.1\n0123456789abcdef 10.89.0.2  web,www,site,0123456789ab\n"
        );
    }
}
