//! The way out for a user network's DNS responder.
//!
//! aardvark-dns runs in the network's namespace, which has no route out,
//! so on its own it leaves every name it does not hold unanswered (it
//! forwards them to the resolvers of its `/etc/resolv.conf` and, when
//! they cannot be reached, sends nothing back). The relay is a small
//! process of hull's (`hull network __dns-relay`) that listens on the
//! namespace's loopback ([`LISTEN`], which aardvark-dns's own
//! resolv.conf names) and forwards each query, over a UDP socket it
//! opened in the host's namespace before entering the network's, to the
//! host's first resolver: what passt's forwarder does for the default
//! network. Only processes inside the namespace reach its loopback, so
//! containers reach it only through aardvark-dns. Nothing changes in the
//! host's namespace.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the relay listens, inside the network's namespace.
pub const LISTEN: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 53);
/// The hidden subcommand of `hull network` that runs the relay.
pub const SUBCOMMAND: &str = "__dns-relay";
/// How long a forwarded query waits for its answer before its slot is
/// reused (resolvers retry long before).
const QUERY_LIFETIME: Duration = Duration::from_secs(10);
/// The largest DNS message over UDP (EDNS0 can ask for up to 64 KiB).
const MAX_MESSAGE: usize = 65535;

/// Errors of the relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The host lists no IPv4 resolver.
    #[error("no IPv4 nameserver in /etc/resolv.conf")]
    NoUpstream,
    /// A socket, namespace or file operation failed.
    #[error("DNS relay: {0}")]
    Io(&'static str, #[source] std::io::Error),
}

/// The host's first IPv4 resolver in resolv.conf text `conf`.
pub fn upstream_in(conf: &str) -> Option<SocketAddr> {
    conf.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<Ipv4Addr>().ok())
        .map(|ip| SocketAddr::V4(SocketAddrV4::new(ip, 53)))
        .next()
}

/// Queries in flight: the ID the relay gave each one upstream, mapped to
/// its client and the client's own ID. IDs are rewritten so that two
/// clients' queries with the same ID cannot take each other's answers.
#[derive(Debug, Default)]
pub struct QueryTable {
    next_id: u16,
    pending: HashMap<u16, (SocketAddr, u16, Instant)>,
}

impl QueryTable {
    /// Records `query` from `client` and gives it the relay's ID; `false`
    /// for a message too short to be DNS (not forwarded).
    pub fn forward(&mut self, client: SocketAddr, query: &mut [u8]) -> bool {
        if query.len() < 12 {
            return false;
        }
        let now = Instant::now();
        self.pending
            .retain(|_, (_, _, at)| now.duration_since(*at) < QUERY_LIFETIME);
        let theirs = u16::from_be_bytes([query[0], query[1]]);
        let ours = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.pending.insert(ours, (client, theirs, now));
        query[..2].copy_from_slice(&ours.to_be_bytes());
        true
    }

    /// The client of `reply`, with the client's ID put back; `None` for
    /// an answer to nothing pending (late, duplicated or forged).
    pub fn answer(&mut self, reply: &mut [u8]) -> Option<SocketAddr> {
        if reply.len() < 12 {
            return None;
        }
        let ours = u16::from_be_bytes([reply[0], reply[1]]);
        let (client, theirs, _) = self.pending.remove(&ours)?;
        reply[..2].copy_from_slice(&theirs.to_be_bytes());
        Some(client)
    }
}

/// Runs the relay for the namespace at `netns` (the body of `hull
/// network __dns-relay`): opens the upstream socket here, enters the
/// namespace, listens on [`LISTEN`], records its PID in `pid_file`, and
/// relays until killed.
pub fn run(netns: &Path, pid_file: &Path) -> Result<(), RelayError> {
    let conf = std::fs::read_to_string("/etc/resolv.conf")
        .map_err(|e| RelayError::Io("reading /etc/resolv.conf", e))?;
    let upstream_addr = upstream_in(&conf).ok_or(RelayError::NoUpstream)?;
    let upstream = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.connect(upstream_addr).map(|()| s))
        .map_err(|e| RelayError::Io("upstream socket", e))?;
    let ns = std::fs::File::open(netns).map_err(|e| RelayError::Io("opening the namespace", e))?;
    // SAFETY: setns on a descriptor we own; it moves only this thread,
    // which opens the listening socket next (the upstream one stays in
    // the host's namespace).
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(RelayError::Io(
            "entering the namespace",
            std::io::Error::last_os_error(),
        ));
    }
    let local = UdpSocket::bind(LISTEN).map_err(|e| RelayError::Io("listening", e))?;
    std::fs::write(pid_file, std::process::id().to_string())
        .map_err(|e| RelayError::Io("writing the PID file", e))?;
    relay(local, upstream)
}

/// Relays between the clients of `local` and the `upstream` resolver
/// (a connected socket: only its answers are read); returns on an error.
pub fn relay(local: UdpSocket, upstream: UdpSocket) -> Result<(), RelayError> {
    let table = Arc::new(Mutex::new(QueryTable::default()));
    let answers = {
        let (local, upstream, table) = (
            local.try_clone().map_err(|e| RelayError::Io("socket", e))?,
            upstream
                .try_clone()
                .map_err(|e| RelayError::Io("socket", e))?,
            table.clone(),
        );
        std::thread::spawn(move || relay_answers(&local, &upstream, &table))
    };
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        if answers.is_finished() {
            return Err(RelayError::Io(
                "answers",
                std::io::Error::other("relay thread ended"),
            ));
        }
        let (n, client) = local
            .recv_from(&mut buf)
            .map_err(|e| RelayError::Io("receiving a query", e))?;
        let query = &mut buf[..n];
        let forward = table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .forward(client, query);
        // A resolver that cannot be reached this moment is the client's
        // to retry, as with any lost datagram.
        if forward {
            let _ = upstream.send(query);
        }
    }
}

fn relay_answers(local: &UdpSocket, upstream: &UdpSocket, table: &Mutex<QueryTable>) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let n = match upstream.recv(&mut buf) {
            Ok(n) => n,
            // ICMP unreachable from the resolver: keep serving.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(e) => {
                tracing::error!("DNS relay: receiving an answer: {e}");
                return;
            }
        };
        let reply = &mut buf[..n];
        let client = table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .answer(reply);
        if let Some(client) = client {
            let _ = local.send_to(reply, client);
        }
    }
}

/// The relay's PID file of the DNS configuration directory `dir`
/// (beside it: aardvark-dns reads every file in it).
pub fn pid_file(dir: &Path) -> PathBuf {
    dir.with_extension("relay.pid")
}

/// The relay's PID, if it runs.
pub fn running_pid(dir: &Path) -> Option<libc::pid_t> {
    let pid: libc::pid_t = std::fs::read_to_string(pid_file(dir))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let zombie = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    let ours = String::from_utf8_lossy(&cmdline).contains(SUBCOMMAND);
    (ours && !zombie).then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_is_the_first_ipv4_nameserver() {
        let conf = "# x\nsearch example\nnameserver fe80::1\nnameserver 10.255.255.53\nnameserver 9.9.9.9\n";
        assert_eq!(upstream_in(conf), Some("10.255.255.53:53".parse().unwrap()));
        assert_eq!(upstream_in("search x\n"), None);
    }

    #[test]
    fn answers_go_back_to_their_client_with_its_id() {
        let mut t = QueryTable::default();
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        // Both clients use ID 7: upstream sees two different IDs.
        let mut qa = [0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 9];
        let mut qb = qa;
        assert!(t.forward(a, &mut qa) && t.forward(b, &mut qb));
        assert_ne!(qa[..2], qb[..2]);
        let mut rb = qb;
        assert_eq!(t.answer(&mut rb), Some(b));
        assert_eq!(rb[..2], [0, 7]);
        let mut ra = qa;
        assert_eq!(t.answer(&mut ra), Some(a));
        // Answered once only; short messages are not DNS.
        assert_eq!(t.answer(&mut qa.clone()), None);
        assert!(!t.forward(a, &mut [0u8; 11]));
        assert_eq!(t.answer(&mut [0u8; 3]), None);
    }

    #[test]
    fn relays_queries_to_the_upstream_and_answers_back() {
        let upstream_server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let local = UdpSocket::bind("127.0.0.1:0").unwrap();
        let local_addr = local.local_addr().unwrap();
        let upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
        upstream
            .connect(upstream_server.local_addr().unwrap())
            .unwrap();
        std::thread::spawn(move || relay(local, upstream));
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        upstream_server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let query = [0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, b'q'];
        client.send_to(&query, local_addr).unwrap();
        let mut buf = [0u8; 64];
        let (n, relay_addr) = upstream_server.recv_from(&mut buf).unwrap();
        assert_eq!(buf[2..n], query[2..], "the query, under the relay's ID");
        // The server answers (QR bit set) under the ID it got.
        buf[2] |= 0x80;
        upstream_server.send_to(&buf[..n], relay_addr).unwrap();
        let mut got = [0u8; 64];
        let m = client.recv(&mut got).unwrap();
        assert_eq!(got[..2], [0x12, 0x34]);
        assert_eq!(got[2], 0x81);
        assert_eq!(got[3..m], query[3..]);
    }
}
