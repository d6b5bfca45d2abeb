//! Names on a user network: Debian's `aardvark-dns` (podman's responder)
//! running inside the network's namespace on the gateway address.
//!
//! Its configuration directory holds one file named after the network:
//! the listen address on the first line, then one line per running
//! container: `ID IPV4 IPV6 NAME,ALIAS,...`. hull rewrites that file when
//! a container joins or leaves and sends SIGHUP, on which aardvark-dns
//! reloads it. Names it does not hold it forwards to the resolver its
//! `/etc/resolv.conf` names: it runs in a mount namespace of its own
//! where that file names the relay on the network namespace's loopback
//! ([`super::dns_relay`]), which forwards to the host's resolver.
//! aardvark-dns forks into the background once it listens and writes its
//! PID beside its configuration.

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
    // Before aardvark-dns: its first forwarded query must find it. Without
    // it the network's own names still resolve: say so, and go on.
    if let Err(e) = ensure_relay(dir, netns) {
        tracing::warn!("{e}: names outside network {network} will not resolve on it");
    }
    // A responder started by a hull from before the relay sees the
    // host's resolv.conf (its own, naming the relay, is written before
    // every start): start it again so that it forwards.
    if !upstream_conf_path(dir).exists() {
        stop_process(|| running_pid(dir));
    }
    match running_pid(dir) {
        // SAFETY: kill sends a signal to a PID; no memory is involved.
        Some(pid) => unsafe {
            libc::kill(pid, libc::SIGHUP);
        },
        None => start(dir, netns)?,
    }
    Ok(())
}

/// The hull binary, which runs the relay as a hidden subcommand. Only
/// when this process is hull: another program (a test harness that
/// links this code) would take the subcommand for its own arguments.
fn relay_binary() -> Result<PathBuf, DnsError> {
    let exe = std::env::current_exe().map_err(|e| DnsError::Start(e.to_string()))?;
    if exe.file_name() != Some(std::ffi::OsStr::new("hull")) {
        return Err(DnsError::Start(format!(
            "DNS relay: {} is not hull",
            exe.display()
        )));
    }
    Ok(exe)
}

/// Starts the network's DNS relay (`hull network __dns-relay`) unless it
/// runs; returns once it listens (it writes its PID file then).
fn ensure_relay(dir: &Path, netns: &Path) -> Result<(), DnsError> {
    use super::dns_relay;
    if dns_relay::running_pid(dir).is_some() {
        return Ok(());
    }
    let pid_file = dns_relay::pid_file(dir);
    let _ = std::fs::remove_file(&pid_file);
    let exe = relay_binary()?;
    let mut cmd = Command::new(exe);
    cmd.args(["network", dns_relay::SUBCOMMAND])
        .arg(netns)
        .arg(&pid_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file(&dir.with_extension("relay.log")));
    // SAFETY: setsid and unblock_signals are async-signal-safe; the relay
    // outlives this process (the network's other containers use it) and
    // takes no terminal signal of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            unblock_signals();
            Ok(())
        });
    }
    // Not waited for: it runs until the network goes ([`stop`]).
    let mut child = cmd
        .spawn()
        .map_err(|e| DnsError::Start(format!("DNS relay: {e}")))?;
    for _ in 0..200 {
        if dns_relay::running_pid(dir).is_some() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(dir.with_extension("relay.log")).unwrap_or_default();
            return Err(DnsError::Start(format!(
                "DNS relay {status}: {}",
                log.lines().last().unwrap_or("")
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(DnsError::Start("DNS relay did not start".into()))
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
    let resolv = upstream_conf(dir)?;
    let mut cmd = Command::new(binary());
    cmd.arg("--config")
        .arg(dir)
        .args(["-p", "53", "run"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // A file, not a pipe: the daemon it forks may keep the descriptor.
        .stderr(log_file(&dir.with_extension("log")));
    // SAFETY: between fork and exec only async-signal-safe calls
    // (sigprocmask, setns, unshare, mount, setsid) on a descriptor and
    // strings made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            unblock_signals();
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Its own view of /etc/resolv.conf: the relay, not the
            // host's resolvers (unreachable from the namespace).
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                || libc::mount(
                    resolv.as_ptr(),
                    c"/etc/resolv.conf".as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
            {
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

/// Empties the signal mask of a child between fork and exec. A VMM
/// process (which starts these daemons when a container joins) blocks
/// SIGTERM and SIGHUP on its threads, and a mask survives exec: without
/// this, `network rm` could not stop them (seen with aardvark-dns).
///
/// # Safety
/// Only sigemptyset and sigprocmask, both async-signal-safe.
unsafe fn unblock_signals() {
    // SAFETY: sigset_t is plain old data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both calls get valid pointers to a local set.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

fn upstream_conf_path(dir: &Path) -> PathBuf {
    dir.with_extension("resolv.conf")
}

/// Writes the resolv.conf aardvark-dns sees (naming the relay) beside
/// `dir`; its path, for the bind mount.
fn upstream_conf(dir: &Path) -> Result<std::ffi::CString, DnsError> {
    let path = upstream_conf_path(dir);
    std::fs::write(
        &path,
        format!("nameserver {}\n", super::dns_relay::LISTEN.ip()),
    )
    .map_err(|e| DnsError::Config(path.clone(), e))?;
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| DnsError::Start(format!("bad path {}", path.display())))
}

fn log_file(path: &Path) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_or_else(|_| Stdio::null(), Stdio::from)
}

/// Stops the responder of the configuration directory `dir` and its
/// relay, if they run, and waits (up to 2 s each) until they are gone,
/// so new ones can take their place.
pub fn stop(dir: &Path) {
    stop_process(|| running_pid(dir));
    stop_process(|| super::dns_relay::running_pid(dir));
}

fn stop_process(running: impl Fn() -> Option<libc::pid_t>) {
    let Some(pid) = running() else {
        return;
    };
    // SAFETY: kill sends a signal to a PID; no memory is involved.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    for _ in 0..100 {
        if running().is_none() {
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
