//! One vsock stream between a guest socket and a host Unix stream: its
//! state machine and its credit-based flow control.
//!
//! Guest → host: the guest may only send what we advertised
//! (`buf_alloc` minus what is still buffered here), so the bytes the host
//! socket cannot take yet stay in a buffer that is bounded by our own
//! advertisement; a guest that overruns it is reset. Host → guest: we read
//! the host socket only while the guest has credit, and never more than it.
//!
//! The connection never touches epoll or the queues: it says which packets
//! it wants to send ([`Connection::has_pending_rx`],
//! [`Connection::next_packet`]) and which socket events it wants
//! ([`Connection::interest`]); the muxer does the rest.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;

use super::packet::{op, Header, TxPacket, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};

/// Our receive buffer per connection (guest → host bytes not yet written
/// to the host socket), advertised to the guest as `buf_alloc`.
pub const CONN_BUF_SIZE: u32 = 256 * 1024;
/// Send the guest a credit update once this much buffer space has been
/// freed since it last heard from us, so a sender waiting for credit
/// always wakes up (a full buffer that drains frees far more than this).
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 4;
/// How long a guest may take to answer a host-initiated connection
/// request. Generous: guest kernels on emulated hosts are slow.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a connection the guest has fully shut down may take to flush
/// its buffered bytes to the host before it is reset anyway.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a connection is reset. The muxer logs it and sends the guest an RST.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The guest sent more than the credit we gave it.
    #[error("Guest sent {got} bytes with only {credit} bytes of credit")]
    CreditOverrun {
        /// Payload length of the offending packet.
        got: usize,
        /// Credit the guest had.
        credit: u32,
    },
    /// A packet that makes no sense in the connection's state.
    #[error("Unexpected operation {op} in state {state:?}")]
    UnexpectedOp {
        /// The packet's operation.
        op: u16,
        /// The connection's state.
        state: ConnState,
    },
    /// Data after the guest said it would send no more.
    #[error("Guest sent data after shutting down its send side")]
    DataAfterShutdown,
    /// Reading or writing the host socket failed.
    #[error("Host socket I/O failed")]
    Io(#[source] std::io::Error),
}

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: the guest has (or will get) our REQUEST and has not
    /// answered yet.
    LocalInit,
    /// Guest-initiated: the host socket is connected and the guest has not
    /// yet got our RESPONSE.
    PeerInit,
    /// Data flows (each direction may still be shut down on its own).
    Established,
    /// Reset or fully closed: only an RST to the guest remains.
    Closed,
}

// Packets waiting for an rx buffer, as bits; sent in this order.
const P_RST: u8 = 1;
const P_REQUEST: u8 = 1 << 1;
const P_RESPONSE: u8 = 1 << 2;
const P_RW: u8 = 1 << 3;
const P_SHUTDOWN: u8 = 1 << 4;
const P_CREDIT_REQUEST: u8 = 1 << 5;
const P_CREDIT_UPDATE: u8 = 1 << 6;

/// One connection.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    local_port: u32,
    peer_port: u32,
    guest_cid: u64,
    state: ConnState,
    pending: u8,
    deadline: Option<Instant>,
    // Host → guest.
    tx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    host_eof: bool,
    credit_requested: bool,
    // Guest → host.
    to_host: VecDeque<u8>,
    /// Leading bytes of `to_host` that are ours ("OK <port>\n"), not the
    /// guest's, so they are not counted in `fwd_cnt`.
    control_bytes: usize,
    rx_cnt: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    peer_shutdown: u32,
    host_write_shut: bool,
    done: bool,
}

impl Connection {
    fn new(stream: UnixStream, local_port: u32, peer_port: u32, guest_cid: u64) -> Self {
        Self {
            stream,
            local_port,
            peer_port,
            guest_cid,
            state: ConnState::LocalInit,
            pending: 0,
            deadline: None,
            tx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            host_eof: false,
            credit_requested: false,
            to_host: VecDeque::new(),
            control_bytes: 0,
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            peer_shutdown: 0,
            host_write_shut: false,
            done: false,
        }
    }

    /// A host-initiated connection (after `CONNECT <peer_port>`): a REQUEST
    /// to the guest is pending. `stream` must be non-blocking.
    pub fn new_local(stream: UnixStream, local_port: u32, peer_port: u32, guest_cid: u64) -> Self {
        let mut c = Self::new(stream, local_port, peer_port, guest_cid);
        c.pending = P_REQUEST;
        c
    }

    /// A guest-initiated connection whose REQUEST was `req` and whose host
    /// socket is connected: a RESPONSE to the guest is pending. `stream`
    /// must be non-blocking.
    pub fn new_peer(stream: UnixStream, req: &Header) -> Self {
        let mut c = Self::new(stream, req.dst_port, req.src_port, req.src_cid);
        c.state = ConnState::PeerInit;
        c.peer_buf_alloc = req.buf_alloc;
        c.peer_fwd_cnt = Wrapping(req.fwd_cnt);
        c.pending = P_RESPONSE;
        c
    }

    /// The host socket's fd.
    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Gives up the host socket (the caller closes it once it is out of epoll).
    pub fn into_stream(self) -> UnixStream {
        self.stream
    }

    /// The connection's state.
    pub fn state(&self) -> ConnState {
        self.state
    }

    /// Whether the connection has packets for the guest.
    pub fn has_pending_rx(&self) -> bool {
        self.pending != 0
    }

    /// Whether the connection is over (its RST went out) and can be dropped.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Bytes we may still send the guest: its buffer minus what it has not
    /// consumed yet. A guest claiming to have consumed more than we sent
    /// gets no credit rather than a huge one.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Guest → host bytes buffered here, waiting for the host socket.
    pub fn buffered_to_host(&self) -> usize {
        self.to_host.len()
    }

    fn own_free_space(&self) -> u32 {
        CONN_BUF_SIZE.saturating_sub((self.rx_cnt - self.fwd_cnt).0)
    }

    fn wants_read(&self) -> bool {
        self.state == ConnState::Established
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    /// The host-socket events the connection wants now (empty: take the
    /// socket out of epoll, so a hung-up socket cannot spin the loop).
    pub fn interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.state == ConnState::Closed {
            return set;
        }
        if self.wants_read() && self.pending & P_RW == 0 {
            set |= EventSet::IN;
        }
        if !self.to_host.is_empty() {
            set |= EventSet::OUT;
        }
        set
    }

    /// When the connection should be reset if nothing happens before.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Resets the connection: drops buffered data, shuts the host socket
    /// (the host sees EOF) and leaves only an RST for the guest.
    pub fn kill(&mut self) {
        if self.state == ConnState::Closed && self.pending & P_RST != 0 {
            return;
        }
        self.state = ConnState::Closed;
        self.pending = P_RST;
        self.deadline = None;
        self.to_host.clear();
        self.control_bytes = 0;
        // The socket may already be shut or the peer gone: nothing to do then.
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Resets the connection if its deadline has passed.
    pub fn check_deadline(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| d <= now) {
            tracing::debug!(
                "vsock: connection {}<->{} timed out in {:?}",
                self.local_port,
                self.peer_port,
                self.state
            );
            self.kill();
        }
    }

    /// Handles a packet from the guest for this connection (never RST or a
    /// REQUEST for a new connection: the muxer handles those).
    pub fn handle_guest_packet(&mut self, pkt: &TxPacket, now: Instant) -> Result<(), ConnError> {
        let hdr = &pkt.hdr;
        if self.state == ConnState::Closed {
            // An RST is on its way; whatever the guest says no longer matters.
            return Ok(());
        }
        // Every packet carries the guest's latest credit information.
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
        match (hdr.op, self.state) {
            (op::RESPONSE, ConnState::LocalInit) => {
                self.state = ConnState::Established;
                self.deadline = None;
                let line = format!("OK {}\n", self.local_port);
                self.control_bytes += line.len();
                self.to_host.extend(line.as_bytes());
                self.flush_to_host()
            }
            (op::RW, ConnState::Established) => {
                if self.peer_shutdown & SHUTDOWN_SEND != 0 {
                    return Err(ConnError::DataAfterShutdown);
                }
                let credit = self.own_free_space();
                if pkt.payload.len() > credit as usize {
                    return Err(ConnError::CreditOverrun {
                        got: pkt.payload.len(),
                        credit,
                    });
                }
                self.to_host.extend(&pkt.payload);
                // Cannot truncate: bounded by our credit above.
                self.rx_cnt += pkt.payload.len() as u32;
                self.flush_to_host()
            }
            (op::SHUTDOWN, ConnState::Established) => {
                self.peer_shutdown |= hdr.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                if self.peer_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND && self.deadline.is_none() {
                    self.deadline = Some(now + CLOSE_TIMEOUT);
                }
                self.flush_to_host()
            }
            (op::CREDIT_UPDATE, ConnState::Established) => Ok(()),
            (op::CREDIT_REQUEST, ConnState::Established) => {
                self.pending |= P_CREDIT_UPDATE;
                Ok(())
            }
            (op, state) => Err(ConnError::UnexpectedOp { op, state }),
        }
    }

    /// Writes buffered guest bytes to the host socket until it would block,
    /// then carries out the guest's shutdowns once nothing is left.
    pub fn flush_to_host(&mut self) -> Result<(), ConnError> {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Err(ConnError::Io(ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.to_host.drain(..n);
                    let ours = n.min(self.control_bytes);
                    self.control_bytes -= ours;
                    // Cannot truncate: at most CONN_BUF_SIZE is buffered.
                    self.fwd_cnt += (n - ours) as u32;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(ConnError::Io(e)),
            }
        }
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.pending |= P_CREDIT_UPDATE;
        }
        if self.to_host.is_empty() {
            if self.peer_shutdown & SHUTDOWN_SEND != 0 && !self.host_write_shut {
                self.host_write_shut = true;
                // Half-close: the host reads EOF but may still write to us.
                // A peer that is already gone makes this fail harmlessly.
                let _ = self.stream.shutdown(Shutdown::Write);
            }
            self.close_if_finished();
        }
        Ok(())
    }

    /// Once neither side will send anything more (the guest shut down both
    /// ways, or each side shut down its sending half), end with an RST.
    fn close_if_finished(&mut self) {
        if !self.to_host.is_empty() || self.state != ConnState::Established {
            return;
        }
        let guest_done = self.peer_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND;
        let both_sent = self.peer_shutdown & SHUTDOWN_SEND != 0 && self.host_eof;
        if guest_done || (both_sent && self.pending & P_SHUTDOWN == 0) {
            self.state = ConnState::Closed;
            self.pending = P_RST;
            self.deadline = None;
        }
    }

    /// The host socket is readable (or hung up): data for the guest may be
    /// waiting.
    pub fn notify_readable(&mut self) {
        if self.wants_read() {
            self.pending |= P_RW;
        }
    }

    fn header(&mut self, op: u16) -> Header {
        // Every packet tells the guest how much room we have.
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.pending &= !P_CREDIT_UPDATE;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// The next packet for the guest, with at most `max_payload` bytes of
    /// data (the room in the guest's rx buffer). `None` when nothing is
    /// ready after all (e.g. the host socket had no data).
    pub fn next_packet(&mut self, max_payload: usize, now: Instant) -> Option<(Header, Vec<u8>)> {
        if self.pending & P_RST != 0 {
            self.pending = 0;
            self.done = true;
            return Some((self.header(op::RST), Vec::new()));
        }
        if self.pending & P_REQUEST != 0 {
            self.pending &= !P_REQUEST;
            self.deadline = Some(now + CONNECT_TIMEOUT);
            return Some((self.header(op::REQUEST), Vec::new()));
        }
        if self.pending & P_RESPONSE != 0 {
            self.pending &= !P_RESPONSE;
            self.state = ConnState::Established;
            return Some((self.header(op::RESPONSE), Vec::new()));
        }
        if self.pending & P_RW != 0 {
            self.pending &= !P_RW;
            if let Some(pkt) = self.read_host(max_payload) {
                return Some(pkt);
            }
        }
        if self.pending & P_SHUTDOWN != 0 {
            self.pending &= !P_SHUTDOWN;
            let mut hdr = self.header(op::SHUTDOWN);
            hdr.flags = SHUTDOWN_SEND;
            self.close_if_finished();
            return Some((hdr, Vec::new()));
        }
        if self.pending & P_CREDIT_REQUEST != 0 {
            self.pending &= !P_CREDIT_REQUEST;
            return Some((self.header(op::CREDIT_REQUEST), Vec::new()));
        }
        if self.pending & P_CREDIT_UPDATE != 0 {
            return Some((self.header(op::CREDIT_UPDATE), Vec::new()));
        }
        None
    }

    /// Reads host data for one RW packet; on EOF queues a SHUTDOWN, on an
    /// error resets the connection (and returns its RST).
    fn read_host(&mut self, max_payload: usize) -> Option<(Header, Vec<u8>)> {
        if !self.wants_read() {
            return None;
        }
        let n = max_payload.min(self.peer_credit() as usize);
        if n == 0 {
            // No room in this rx buffer; try again with the next one.
            self.pending |= P_RW;
            return None;
        }
        let mut buf = vec![0u8; n];
        match self.stream.read(&mut buf) {
            Ok(0) => {
                self.host_eof = true;
                self.pending |= P_SHUTDOWN;
                None
            }
            Ok(got) => {
                buf.truncate(got);
                // Cannot truncate: at most 64 KiB.
                self.tx_cnt += got as u32;
                // More may be waiting: read again until it would block.
                self.pending |= P_RW;
                if self.peer_credit() == 0 && !self.credit_requested {
                    self.credit_requested = true;
                    self.pending |= P_CREDIT_REQUEST;
                }
                let mut hdr = self.header(op::RW);
                hdr.len = got as u32;
                Some((hdr, buf))
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => None,
            Err(e) if e.kind() == ErrorKind::Interrupted => {
                self.pending |= P_RW;
                None
            }
            Err(e) => {
                tracing::debug!("vsock: host socket read failed: {e}");
                self.kill();
                self.next_packet(0, Instant::now())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: u64 = 3;

    fn guest_pkt(op: u16, payload: &[u8], buf_alloc: u32, fwd_cnt: u32) -> TxPacket {
        TxPacket {
            hdr: Header {
                src_cid: CID,
                dst_cid: HOST_CID,
                src_port: 1234,
                dst_port: 1 << 30,
                len: payload.len() as u32,
                type_: TYPE_STREAM,
                op,
                flags: 0,
                buf_alloc,
                fwd_cnt,
            },
            payload: payload.to_vec(),
        }
    }

    fn shutdown_pkt(flags: u32) -> TxPacket {
        let mut p = guest_pkt(op::SHUTDOWN, b"", 4096, 0);
        p.hdr.flags = flags;
        p
    }

    /// A host-initiated connection taken to Established, and the host's end.
    fn established() -> (Connection, UnixStream) {
        let (ours, host) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        host.set_nonblocking(true).unwrap();
        let now = Instant::now();
        let mut c = Connection::new_local(ours, 1 << 30, 1234, CID);
        assert_eq!(c.state(), ConnState::LocalInit);
        let (req, _) = c.next_packet(4096, now).unwrap();
        assert_eq!(req.op, op::REQUEST);
        assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, CID));
        assert_eq!((req.src_port, req.dst_port), (1 << 30, 1234));
        assert!(c.deadline().is_some());
        c.handle_guest_packet(&guest_pkt(op::RESPONSE, b"", 4096, 0), now)
            .unwrap();
        assert_eq!(c.state(), ConnState::Established);
        assert!(c.deadline().is_none());
        let mut line = [0u8; 64];
        let n = (&host).read(&mut line).unwrap();
        assert_eq!(&line[..n], format!("OK {}\n", 1u32 << 30).as_bytes());
        (c, host)
    }

    fn read_all(mut s: &UnixStream) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        out
    }

    #[test]
    fn guest_initiated_connection_sends_response_then_established() {
        let (ours, _host) = UnixStream::pair().unwrap();
        let req = guest_pkt(op::REQUEST, b"", 8192, 0).hdr;
        let mut c = Connection::new_peer(ours, &req);
        assert_eq!(c.state(), ConnState::PeerInit);
        assert_eq!(c.peer_credit(), 8192);
        // Data before the RESPONSE went out is a protocol error.
        assert!(matches!(
            c.handle_guest_packet(&guest_pkt(op::RW, b"x", 8192, 0), Instant::now()),
            Err(ConnError::UnexpectedOp { .. })
        ));
        let (resp, _) = c.next_packet(4096, Instant::now()).unwrap();
        assert_eq!(resp.op, op::RESPONSE);
        assert_eq!((resp.src_port, resp.dst_port), (req.dst_port, req.src_port));
        assert_eq!(resp.buf_alloc, CONN_BUF_SIZE);
        assert_eq!(c.state(), ConnState::Established);
        assert!(!c.has_pending_rx());
    }

    #[test]
    fn guest_data_reaches_host_and_half_close_shuts_write() {
        let (mut c, host) = established();
        c.handle_guest_packet(&guest_pkt(op::RW, b"hello", 4096, 0), Instant::now())
            .unwrap();
        c.handle_guest_packet(&shutdown_pkt(SHUTDOWN_SEND), Instant::now())
            .unwrap();
        // The host reads the bytes, then EOF: the write half is shut.
        let mut got = Vec::new();
        host.set_nonblocking(false).unwrap();
        (&host).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hello");
        // The host may still send to the guest.
        (&host).write_all(b"reply").unwrap();
        c.notify_readable();
        let (rw, data) = c.next_packet(4096, Instant::now()).unwrap();
        assert_eq!((rw.op, data.as_slice()), (op::RW, &b"reply"[..]));
        assert_eq!(rw.fwd_cnt, 5, "fwd_cnt counts guest bytes, not the OK line");
        assert_ne!(c.state(), ConnState::Closed);
    }

    #[test]
    fn host_eof_sends_shutdown_then_guest_close_ends_with_rst() {
        let (mut c, host) = established();
        host.shutdown(Shutdown::Write).unwrap();
        c.notify_readable();
        let (sd, _) = c.next_packet(4096, Instant::now()).unwrap();
        assert_eq!((sd.op, sd.flags), (op::SHUTDOWN, SHUTDOWN_SEND));
        assert_eq!(c.interest(), EventSet::empty());
        // The guest can still send after the host's EOF.
        c.handle_guest_packet(&guest_pkt(op::RW, b"late", 4096, 0), Instant::now())
            .unwrap();
        assert_eq!(read_all(&host), b"late");
        // The guest closes: both directions done, RST and the end.
        c.handle_guest_packet(&shutdown_pkt(SHUTDOWN_RCV | SHUTDOWN_SEND), Instant::now())
            .unwrap();
        let (rst, _) = c.next_packet(4096, Instant::now()).unwrap();
        assert_eq!(rst.op, op::RST);
        assert!(c.is_done());
    }

    #[test]
    fn never_sends_more_than_guest_credit() {
        let (mut c, host) = established();
        // The guest has a 100-byte buffer and has consumed nothing.
        c.handle_guest_packet(&guest_pkt(op::CREDIT_UPDATE, b"", 100, 0), Instant::now())
            .unwrap();
        (&host).write_all(&[7u8; 1000]).unwrap();
        c.notify_readable();
        let mut sent = 0;
        let mut saw_credit_request = false;
        while let Some((h, data)) = c.next_packet(4096, Instant::now()) {
            match h.op {
                op::RW => sent += data.len(),
                op::CREDIT_REQUEST => saw_credit_request = true,
                other => panic!("unexpected op {other}"),
            }
        }
        assert_eq!(sent, 100);
        assert!(saw_credit_request);
        assert_eq!(c.peer_credit(), 0);
        assert!(
            !c.interest().contains(EventSet::IN),
            "no credit: stop reading"
        );
        // The guest consumes 60 bytes: exactly 60 more may flow.
        c.handle_guest_packet(&guest_pkt(op::CREDIT_UPDATE, b"", 100, 60), Instant::now())
            .unwrap();
        assert!(c.interest().contains(EventSet::IN));
        c.notify_readable();
        let (h, data) = c.next_packet(4096, Instant::now()).unwrap();
        assert_eq!((h.op, data.len()), (op::RW, 60));
        // Also bounded by the rx buffer's room.
        c.handle_guest_packet(&guest_pkt(op::CREDIT_UPDATE, b"", 100, 160), Instant::now())
            .unwrap();
        c.notify_readable();
        let (_, data) = c.next_packet(30, Instant::now()).unwrap();
        assert_eq!(data.len(), 30);
    }

    #[test]
    fn lying_guest_fwd_cnt_gives_no_credit() {
        let (mut c, _host) = established();
        c.handle_guest_packet(&guest_pkt(op::CREDIT_UPDATE, b"", 100, 50), Instant::now())
            .unwrap();
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn credit_overrun_by_guest_is_an_error() {
        let (mut c, host) = established();
        // Fill our whole buffer while the host reads nothing.
        let chunk = vec![1u8; 64 * 1024];
        let mut sent = 0usize;
        while sent + chunk.len() <= CONN_BUF_SIZE as usize {
            c.handle_guest_packet(&guest_pkt(op::RW, &chunk, 4096, 0), Instant::now())
                .unwrap();
            sent += chunk.len();
        }
        // Some went into the socket buffer; the rest is ours, bounded.
        assert!(c.buffered_to_host() <= CONN_BUF_SIZE as usize);
        let free = c.own_free_space() as usize;
        let too_much = vec![1u8; free + 1];
        assert!(matches!(
            c.handle_guest_packet(&guest_pkt(op::RW, &too_much, 4096, 0), Instant::now()),
            Err(ConnError::CreditOverrun { .. })
        ));
        drop(host);
    }

    #[test]
    fn draining_sends_credit_update() {
        let (mut c, host) = established();
        let chunk = vec![1u8; 64 * 1024];
        for _ in 0..4 {
            c.handle_guest_packet(&guest_pkt(op::RW, &chunk, 4096, 0), Instant::now())
                .unwrap();
        }
        // Drain what the host socket holds, let the connection write the rest.
        let mut total = 0;
        while total < 4 * chunk.len() {
            total += read_all(&host).len();
            c.flush_to_host().unwrap();
        }
        let (h, _) = c.next_packet(4096, Instant::now()).unwrap();
        assert_eq!(h.op, op::CREDIT_UPDATE);
        assert_eq!(h.fwd_cnt, 4 * 64 * 1024);
        assert_eq!(h.buf_alloc, CONN_BUF_SIZE);
        assert!(c.next_packet(4096, Instant::now()).is_none());
    }

    #[test]
    fn credit_request_is_answered() {
        let (mut c, _host) = established();
        c.handle_guest_packet(&guest_pkt(op::CREDIT_REQUEST, b"", 4096, 0), Instant::now())
            .unwrap();
        let (h, _) = c.next_packet(4096, Instant::now()).unwrap();
        assert_eq!(h.op, op::CREDIT_UPDATE);
    }

    #[test]
    fn protocol_errors_and_kill() {
        let (mut c, host) = established();
        assert!(c
            .handle_guest_packet(&guest_pkt(op::REQUEST, b"", 4096, 0), Instant::now())
            .is_err());
        assert!(c
            .handle_guest_packet(&guest_pkt(99, b"", 4096, 0), Instant::now())
            .is_err());
        c.handle_guest_packet(&shutdown_pkt(SHUTDOWN_SEND), Instant::now())
            .unwrap();
        assert!(matches!(
            c.handle_guest_packet(&guest_pkt(op::RW, b"x", 4096, 0), Instant::now()),
            Err(ConnError::DataAfterShutdown)
        ));
        c.kill();
        assert_eq!(c.state(), ConnState::Closed);
        assert_eq!(c.interest(), EventSet::empty());
        let (rst, _) = c.next_packet(4096, Instant::now()).unwrap();
        assert_eq!(rst.op, op::RST);
        assert!(c.is_done());
        // The host sees EOF.
        assert_eq!(read_all(&host), b"");
    }

    #[test]
    fn unanswered_request_times_out() {
        let (ours, _host) = UnixStream::pair().unwrap();
        let t0 = Instant::now();
        let mut c = Connection::new_local(ours, 1 << 30, 1234, CID);
        c.next_packet(4096, t0).unwrap();
        c.check_deadline(t0 + CONNECT_TIMEOUT / 2);
        assert_eq!(c.state(), ConnState::LocalInit);
        c.check_deadline(t0 + CONNECT_TIMEOUT);
        assert_eq!(c.state(), ConnState::Closed);
        assert_eq!(c.next_packet(4096, t0).unwrap().0.op, op::RST);
    }
}
