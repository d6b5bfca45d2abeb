//! The hybrid-vsock muxer: routes packets between the guest and host Unix
//! sockets, the way Firecracker's hybrid vsock does, so the same tools work.
//!
//! - Host → guest: a host process connects to the VM's socket and writes
//!   `CONNECT <port>\n`; the muxer picks a local (host) port, sends the guest
//!   a REQUEST and, once the guest answers, writes `OK <local port>\n` back.
//! - Guest → host: a guest connection to CID 2 port P is forwarded to the
//!   Unix socket `<path>_P`; when nothing listens there the guest gets an RST.
//!
//! The muxer owns the listener, the connections and the sockets' epoll
//! registrations (applied by [`Muxer::sync_epoll`] with the caller's
//! [`EventOps`]); it never touches the virtqueues.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::io::{ErrorKind, Read};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use event_manager::{EventOps, Events};
use vmm_sys_util::epoll::EventSet;

use super::connection::Connection;
use super::packet::{op, Header, TxPacket, HOST_CID, TYPE_STREAM};
use crate::virtio::Misbehaviour;

/// Most connections (plus host clients still sending `CONNECT`) at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most RSTs for unknown connections waiting for rx buffers; more are
/// dropped (the guest's side then times out) so a guest cannot make us
/// queue without bound.
const MAX_PENDING_RST: usize = 1024;
/// Longest `CONNECT <port>\n` line accepted, newline included.
const MAX_CONNECT_LINE: usize = 32;
/// First local port handed to host-initiated connections (as Firecracker).
const LOCAL_PORT_BASE: u32 = 1 << 30;

/// Where this VMM starts handing out local ports: a random offset from
/// [`LOCAL_PORT_BASE`]. A guest restored from a snapshot may still hold a
/// socket of a connection made before the snapshot (closing, waiting for
/// our reset); a new connection from the same port would be taken for it.
fn first_local_port() -> u32 {
    let mut offset = [0u8; 4];
    // SAFETY: getrandom writes at most `offset.len()` bytes into it.
    let got = unsafe { libc::getrandom(offset.as_mut_ptr().cast(), offset.len(), 0) };
    if got != offset.len() as isize {
        return LOCAL_PORT_BASE;
    }
    LOCAL_PORT_BASE + (u32::from_ne_bytes(offset) & 0x00ff_ffff)
}

/// A connection's identity: its host-side port and its guest-side port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// The host side's port (allocated for host-initiated connections, the
    /// port the guest connected to for guest-initiated ones).
    pub local_port: u32,
    /// The guest side's port.
    pub peer_port: u32,
}

/// A host client that has not finished its `CONNECT <port>\n` line.
#[derive(Debug)]
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// Parses a `CONNECT <port>` line (without its newline), case-insensitive
/// like Firecracker's.
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_whitespace();
    let cmd = words.next()?;
    let port = words.next()?;
    if !cmd.eq_ignore_ascii_case("connect") || words.next().is_some() {
        return None;
    }
    port.parse().ok()
}

/// Connections and routing between the guest and host Unix sockets.
#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    conns: HashMap<ConnKey, Connection>,
    by_fd: HashMap<RawFd, ConnKey>,
    handshakes: HashMap<RawFd, Handshake>,
    /// Connections with packets for the guest, served round-robin.
    rxq: VecDeque<ConnKey>,
    queued: HashSet<ConnKey>,
    /// RSTs answering packets for connections that do not exist.
    rsts: VecDeque<Header>,
    /// fds whose epoll registration may need to change.
    dirty: HashSet<RawFd>,
    /// What each fd is registered for in epoll now.
    registered: HashMap<RawFd, EventSet>,
    /// Sockets to take out of epoll, then close.
    closing: Vec<UnixStream>,
    next_local_port: u32,
    misbehaviour: Arc<Misbehaviour>,
}

impl Muxer {
    /// A muxer for the guest `guest_cid` serving `listener`, bound at
    /// `uds_path` (non-blocking).
    pub fn new(
        guest_cid: u64,
        uds_path: &Path,
        listener: UnixListener,
        misbehaviour: Arc<Misbehaviour>,
    ) -> Self {
        Self {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            handshakes: HashMap::new(),
            rxq: VecDeque::new(),
            queued: HashSet::new(),
            rsts: VecDeque::new(),
            dirty: HashSet::new(),
            registered: HashMap::new(),
            closing: Vec::new(),
            next_local_port: first_local_port(),
            misbehaviour,
        }
    }

    /// The listener's fd, for the caller to watch.
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Host sockets not fully closed: live connections and host clients
    /// that have not finished their `CONNECT` line. A snapshot waits for
    /// these to be gone (the restored VMM would know none of them).
    pub fn open_count(&self) -> usize {
        self.conns.len() + self.handshakes.len()
    }

    /// Whether packets for the guest are waiting for rx buffers.
    pub fn has_pending_rx(&self) -> bool {
        !self.rsts.is_empty() || !self.rxq.is_empty()
    }

    /// Whether `fd` is one of the muxer's host sockets.
    pub fn owns_fd(&self, fd: RawFd) -> bool {
        self.by_fd.contains_key(&fd) || self.handshakes.contains_key(&fd)
    }

    /// Accepts every waiting host client.
    pub fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // E.g. out of fds: leave the rest in the backlog for now.
                    tracing::warn!("vsock: accept on {} failed: {e}", self.uds_path.display());
                    return;
                }
            };
            if self.conns.len() + self.handshakes.len() >= MAX_CONNECTIONS {
                tracing::warn!("vsock: too many connections, refusing a host client");
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                tracing::warn!("vsock: cannot make a host socket non-blocking: {e}");
                continue;
            }
            let fd = stream.as_raw_fd();
            self.handshakes.insert(
                fd,
                Handshake {
                    stream,
                    line: Vec::new(),
                },
            );
            self.dirty.insert(fd);
        }
    }

    /// Handles an epoll event on one of the muxer's host sockets.
    pub fn handle_fd_event(&mut self, fd: RawFd, evset: EventSet) {
        if self.handshakes.contains_key(&fd) {
            self.read_connect_line(fd);
            return;
        }
        let Some(&key) = self.by_fd.get(&fd) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let hup = evset.intersects(EventSet::HANG_UP | EventSet::ERROR);
        if evset.contains(EventSet::OUT) || hup {
            if let Err(e) = conn.flush_to_host() {
                tracing::debug!("vsock: connection {key:?} reset: {e}");
                conn.kill();
            }
        }
        if evset.contains(EventSet::IN) || hup {
            conn.notify_readable();
        }
        self.touch(key);
    }

    /// Reads a host client's `CONNECT` line a byte at a time, so that none
    /// of the data it may send right after is swallowed.
    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(hs) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let port = loop {
            let mut byte = [0u8; 1];
            match hs.stream.read(&mut byte) {
                Ok(0) => break None,
                Ok(_) if byte[0] == b'\n' => break parse_connect(&hs.line),
                Ok(_) => {
                    hs.line.push(byte[0]);
                    if hs.line.len() >= MAX_CONNECT_LINE {
                        break None;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break None,
            }
        };
        let Some(hs) = self.handshakes.remove(&fd) else {
            return;
        };
        self.dirty.insert(fd);
        let Some(peer_port) = port else {
            tracing::debug!(
                "vsock: bad connect command {:?}",
                String::from_utf8_lossy(&hs.line)
            );
            self.closing.push(hs.stream);
            return;
        };
        let Some(local_port) = self.alloc_local_port() else {
            self.closing.push(hs.stream);
            return;
        };
        let key = ConnKey {
            local_port,
            peer_port,
        };
        let conn = Connection::new_local(hs.stream, local_port, peer_port, self.guest_cid);
        tracing::debug!("vsock: host connects to guest port {peer_port} from {local_port}");
        self.insert(key, conn);
    }

    fn alloc_local_port(&mut self) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_local_port;
            self.next_local_port = port.checked_add(1).unwrap_or(LOCAL_PORT_BASE);
            if !self.conns.keys().any(|k| k.local_port == port) {
                return Some(port);
            }
        }
        None
    }

    fn insert(&mut self, key: ConnKey, conn: Connection) {
        self.by_fd.insert(conn.fd(), key);
        self.conns.insert(key, conn);
        self.touch(key);
    }

    /// Records that `key` changed: queue its packets, recheck its epoll set.
    fn touch(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get(&key) else {
            return;
        };
        self.dirty.insert(conn.fd());
        if conn.has_pending_rx() && self.queued.insert(key) {
            self.rxq.push_back(key);
        }
    }

    fn remove(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            self.by_fd.remove(&conn.fd());
            self.queued.remove(&key);
            self.closing.push(conn.into_stream());
        }
    }

    fn push_rst(&mut self, to: &Header) {
        if to.op == op::RST {
            // Never answer an RST with an RST.
            return;
        }
        if self.rsts.len() >= MAX_PENDING_RST {
            self.misbehaviour
                .record("too many pending RSTs (the guest takes none), dropping one");
            return;
        }
        self.rsts.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: to.dst_port,
            dst_port: to.src_port,
            type_: TYPE_STREAM,
            op: op::RST,
            ..Header::default()
        });
    }

    /// Routes a packet the guest sent.
    pub fn handle_guest_packet(&mut self, pkt: &TxPacket, now: Instant) {
        let hdr = &pkt.hdr;
        if hdr.src_cid != self.guest_cid {
            // A forged source: there is nobody sensible to answer.
            self.misbehaviour.record(format_args!(
                "dropped a packet from CID {} (the guest is {})",
                hdr.src_cid, self.guest_cid
            ));
            return;
        }
        if hdr.dst_cid != HOST_CID || hdr.type_ != TYPE_STREAM {
            self.push_rst(hdr);
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if let Some(conn) = self.conns.get_mut(&key) {
            if hdr.op == op::RST {
                tracing::debug!("vsock: guest reset connection {key:?}");
                self.remove(key);
                return;
            }
            if let Err(e) = conn.handle_guest_packet(pkt, now) {
                tracing::debug!("vsock: connection {key:?} reset: {e}");
                conn.kill();
            }
            self.touch(key);
            return;
        }
        match hdr.op {
            op::REQUEST => self.connect_to_host(hdr),
            op::RST => {}
            _ => self.push_rst(hdr),
        }
    }

    /// A guest connection to host port P: connect to `<uds_path>_P`.
    fn connect_to_host(&mut self, req: &Header) {
        if self.conns.len() + self.handshakes.len() >= MAX_CONNECTIONS {
            self.misbehaviour
                .record("too many connections, refusing the guest");
            self.push_rst(req);
            return;
        }
        let mut path: OsString = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", req.dst_port));
        // A Unix connect completes at once unless the listener's backlog is
        // full; host listeners are ours, so a blocking connect is fine.
        let stream = match UnixStream::connect(&path) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(
                    "vsock: guest port {} -> {}: {e}",
                    req.src_port,
                    Path::new(&path).display()
                );
                self.push_rst(req);
                return;
            }
        };
        if let Err(e) = stream.set_nonblocking(true) {
            tracing::warn!("vsock: cannot make a host socket non-blocking: {e}");
            self.push_rst(req);
            return;
        }
        let key = ConnKey {
            local_port: req.dst_port,
            peer_port: req.src_port,
        };
        self.insert(key, Connection::new_peer(stream, req));
    }

    /// The next packet for the guest, with at most `max_payload` bytes of
    /// data; `None` when nothing is ready after all.
    pub fn next_rx_packet(
        &mut self,
        max_payload: usize,
        now: Instant,
    ) -> Option<(Header, Vec<u8>)> {
        if let Some(hdr) = self.rsts.pop_front() {
            return Some((hdr, Vec::new()));
        }
        while let Some(key) = self.rxq.pop_front() {
            self.queued.remove(&key);
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            let pkt = conn.next_packet(max_payload, now);
            if conn.is_done() {
                self.remove(key);
            } else {
                self.touch(key);
            }
            if pkt.is_some() {
                return pkt;
            }
        }
        None
    }

    /// Resets connections whose deadline has passed.
    pub fn sweep(&mut self, now: Instant) {
        let expired: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline().is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.check_deadline(now);
            }
            self.touch(key);
        }
    }

    /// Drops every connection and pending packet (device reset). Host
    /// clients see EOF.
    pub fn reset(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key);
        }
        for (_, hs) in self.handshakes.drain() {
            self.closing.push(hs.stream);
        }
        self.rxq.clear();
        self.queued.clear();
        self.rsts.clear();
    }

    /// Brings epoll in line with what the sockets want, and closes the
    /// sockets that are done (after taking them out of epoll, so a reused
    /// fd number never meets a stale registration).
    pub fn sync_epoll(&mut self, ops: &mut EventOps) {
        for stream in self.closing.drain(..) {
            let fd = stream.as_raw_fd();
            if let Some(set) = self.registered.remove(&fd) {
                if let Err(e) = ops.remove(Events::new_raw(fd, set)) {
                    tracing::warn!("vsock: cannot unwatch a host socket: {e:?}");
                }
            }
            self.dirty.remove(&fd);
        }
        for fd in std::mem::take(&mut self.dirty) {
            let want = if let Some(key) = self.by_fd.get(&fd) {
                self.conns
                    .get(key)
                    .map_or(EventSet::empty(), Connection::interest)
            } else if self.handshakes.contains_key(&fd) {
                EventSet::IN
            } else {
                EventSet::empty()
            };
            let have = self.registered.get(&fd).copied();
            let result = match have {
                None if want.is_empty() => Ok(()),
                None => ops.add(Events::new_raw(fd, want)),
                Some(_) if want.is_empty() => ops.remove(Events::new_raw(fd, want)),
                Some(h) if h == want => Ok(()),
                Some(_) => ops.modify(Events::new_raw(fd, want)),
            };
            match result {
                Ok(()) if want.is_empty() => {
                    self.registered.remove(&fd);
                }
                Ok(()) => {
                    self.registered.insert(fd, want);
                }
                Err(e) => tracing::warn!("vsock: cannot update epoll for a host socket: {e:?}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_command_parsing() {
        assert_eq!(parse_connect(b"CONNECT 1234"), Some(1234));
        assert_eq!(parse_connect(b"connect 52"), Some(52));
        assert_eq!(parse_connect(b"CoNnEcT   7 "), Some(7));
        assert_eq!(parse_connect(b"CONNECT 1234\r"), Some(1234));
        assert_eq!(parse_connect(b"CONNECT"), None);
        assert_eq!(parse_connect(b"CONNECT x"), None);
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"CONNECT 4294967296"), None);
        assert_eq!(parse_connect(b"CONNECT 1 2"), None);
        assert_eq!(parse_connect(b"LISTEN 1"), None);
        assert_eq!(parse_connect(b"\xff\xfe 1"), None);
        assert_eq!(parse_connect(b""), None);
    }
}
