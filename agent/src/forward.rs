//! Serves [`FORWARD_PORT`](agent::protocol::FORWARD_PORT): each vsock
//! stream is one connection to a published container port. The agent dials
//! the port on the guest's loopback (containers share the guest's network
//! namespace, so a server listening only on 127.0.0.1 answers too), answers
//! `OK\n` or `ERR <reason>\n`, then relays bytes both ways until both sides
//! are done, passing each side's EOF on as a half-close.
//!
//! One thread runs every connection from an edge-triggered epoll loop with
//! non-blocking sockets. In a guest on an emulating hypervisor a thread
//! costs ~0.2 s to start and every system call ~0.5 ms, so no thread is
//! started per connection and each socket is registered once, for good.
//! Each direction has one fixed buffer, refilled only once its bytes are
//! written: a slow reader stops the reads from its writer (backpressure),
//! and no connection buffers more than two chunks.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use agent::protocol;

/// Bytes moved per read/write.
const CHUNK: usize = 32 * 1024;
/// Longest header line accepted (`TCP 65535\n` is 10 bytes).
const MAX_HEADER: usize = 32;
/// epoll token of the listening socket.
const LISTENER: u64 = u64::MAX;
/// Events fetched per `epoll_wait`.
const EVENTS: usize = 64;
/// Freed buffers kept for reuse: their pages are already mapped, and every
/// page the guest kernel maps costs milliseconds here.
const SPARE_BUFFERS: usize = 64;

/// What a syscall wrapper returns: `Ok(None)` for "would block".
type Nb<T> = io::Result<Option<T>>;

fn cvt(rc: isize) -> Nb<usize> {
    if rc >= 0 {
        return Ok(Some(rc as usize));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) => Ok(None),
        Some(libc::EINTR) => Ok(Some(usize::MAX)),
        _ => Err(e),
    }
}

/// Bytes read from one socket and not yet written to the other.
struct Buffer {
    data: Vec<u8>,
    start: usize,
}

impl Buffer {
    fn is_empty(&self) -> bool {
        self.start == self.data.len()
    }

    /// Reads once into an empty buffer. `Some(0)` is EOF.
    fn fill(&mut self, fd: RawFd) -> Nb<usize> {
        self.data.clear();
        self.start = 0;
        loop {
            let room = self.data.capacity();
            // SAFETY: reads at most `room` bytes into the Vec's own
            // allocation; only the bytes read are marked initialised below.
            let rc = unsafe { libc::read(fd, self.data.as_mut_ptr().cast(), room) };
            match cvt(rc)? {
                Some(usize::MAX) => continue,
                Some(n) => {
                    // SAFETY: the kernel initialised the first `n <= room` bytes.
                    unsafe { self.data.set_len(n) };
                    return Ok(Some(n));
                }
                None => return Ok(None),
            }
        }
    }

    /// Writes what it can of the buffered bytes.
    fn drain(&mut self, fd: RawFd) -> Nb<usize> {
        loop {
            let rest = &self.data[self.start..];
            // SAFETY: writes from a valid slice of `rest.len()` bytes.
            let rc = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
            match cvt(rc)? {
                Some(usize::MAX) => continue,
                Some(n) => {
                    self.start += n;
                    return Ok(Some(n));
                }
                None => return Ok(None),
            }
        }
    }
}

/// What epoll last told us about one socket: a read or write is tried
/// only while it may succeed (a call that would block costs ~0.5 ms here
/// for nothing); a short or blocked call clears the flag until the next
/// event sets it again.
#[derive(Clone, Copy)]
struct Ready {
    read: bool,
    write: bool,
    /// The peer hung up: its EOF stays readable after the last data
    /// without another event, so reads are never given up on.
    hup: bool,
}

impl Ready {
    /// A new socket: try both once.
    const UNKNOWN: Ready = Ready {
        read: true,
        write: true,
        hup: false,
    };
    /// A connecting socket: nothing until epoll reports the outcome.
    const NOTHING: Ready = Ready {
        read: false,
        write: false,
        hup: false,
    };

    fn update(&mut self, events: u32) {
        let hup = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
        if events & hup != 0 {
            self.hup = true;
        }
        if events & (libc::EPOLLIN as u32 | hup) != 0 {
            self.read = true;
        }
        if events & (libc::EPOLLOUT as u32 | libc::EPOLLHUP as u32 | libc::EPOLLERR as u32) != 0 {
            self.write = true;
        }
    }
}

/// One direction of a relayed connection.
struct Direction {
    buf: Buffer,
    /// The source reached EOF.
    eof: bool,
    /// The EOF was passed on (`shutdown(SHUT_WR)` of the destination).
    shut: bool,
}

impl Direction {
    fn new(buf: Buffer) -> Self {
        Self {
            buf,
            eof: false,
            shut: false,
        }
    }

    /// Moves bytes from `from` to `to` until a call would block (or the
    /// direction is finished). Errors end the whole connection.
    fn pump(
        &mut self,
        (from, from_ready): (RawFd, &mut Ready),
        (to, to_ready): (RawFd, &mut Ready),
    ) -> io::Result<()> {
        loop {
            if !self.buf.is_empty() {
                if !to_ready.write {
                    return Ok(());
                }
                let want = self.buf.data.len() - self.buf.start;
                match self.buf.drain(to)? {
                    Some(n) if n == want => {}
                    _ => to_ready.write = false,
                }
            } else if !self.eof {
                if !from_ready.read {
                    return Ok(());
                }
                match self.buf.fill(from)? {
                    Some(0) => self.eof = true,
                    None => from_ready.read = false,
                    // A short read emptied the socket: new bytes bring a
                    // new event (but a pending EOF does not).
                    Some(n) if n < CHUNK && !from_ready.hup => from_ready.read = false,
                    Some(_) => {}
                }
            } else {
                if !self.shut {
                    self.shut = true;
                    // SAFETY: shutdown(2) of a socket we own.
                    unsafe { libc::shutdown(to, libc::SHUT_WR) };
                }
                return Ok(());
            }
        }
    }
}

enum Phase {
    /// Reading `TCP <port>\n`; the host may send data right behind it,
    /// which stays in `up` for the container.
    Header,
    /// The non-blocking connect to the container port is under way.
    Connecting(u16),
    /// Bytes flow.
    Relaying,
}

struct Conn {
    vsock: OwnedFd,
    vsock_ready: Ready,
    tcp: Option<OwnedFd>,
    tcp_ready: Ready,
    phase: Phase,
    /// vsock -> container.
    up: Direction,
    /// container -> vsock (starts with our `OK\n`).
    down: Direction,
}

/// The connections, by slot; a slot's tokens are `2*slot` (vsock) and
/// `2*slot + 1` (TCP).
struct Forwarder {
    epoll: OwnedFd,
    listener: OwnedFd,
    conns: Vec<Option<Conn>>,
    free_slots: Vec<usize>,
    spare: Vec<Vec<u8>>,
}

/// Runs the forwarder on `listener` (a listening stream socket) forever.
/// Returns only if epoll itself fails.
pub fn run(listener: OwnedFd) -> io::Result<()> {
    let mut f = Forwarder::new(listener)?;
    f.serve()
}

impl Forwarder {
    fn new(listener: OwnedFd) -> io::Result<Self> {
        // SAFETY: plain epoll_create1 call; the result is checked below.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor we own exclusively.
        let epoll = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: fcntl on a descriptor we own.
        let flags = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_GETFL) };
        // O_NONBLOCK, so accepting stops at an empty queue.
        let rc = if flags < 0 {
            -1
        } else {
            // SAFETY: as above.
            unsafe {
                libc::fcntl(
                    listener.as_raw_fd(),
                    libc::F_SETFL,
                    flags | libc::O_NONBLOCK,
                )
            }
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let f = Self {
            epoll,
            listener,
            conns: Vec::new(),
            free_slots: Vec::new(),
            spare: Vec::new(),
        };
        f.watch(f.listener.as_raw_fd(), LISTENER)?;
        Ok(f)
    }

    /// Registers `fd` once, edge-triggered, for everything: the loop always
    /// works until a call would block, so it never needs to change this.
    fn watch(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: token,
        };
        // SAFETY: epoll_ctl with a valid event for a descriptor we own.
        let rc =
            unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn buffer(&mut self) -> Buffer {
        Buffer {
            data: self
                .spare
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(CHUNK)),
            start: 0,
        }
    }

    fn serve(&mut self) -> io::Result<()> {
        // SAFETY: epoll_event is plain data; all-zero is a valid value.
        let mut events: [libc::epoll_event; EVENTS] = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: epoll_wait fills at most EVENTS entries of `events`.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    EVENTS as i32,
                    -1,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in &events[..n as usize] {
                let (token, flags) = (ev.u64, ev.events);
                if token == LISTENER {
                    self.accept_all();
                    continue;
                }
                let slot = (token / 2) as usize;
                if let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) {
                    if token % 2 == 0 {
                        conn.vsock_ready.update(flags);
                    } else {
                        conn.tcp_ready.update(flags);
                    }
                }
                self.drive(slot);
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            // SAFETY: accept4 on our listening socket; no address is asked for.
            let raw = unsafe {
                libc::accept4(
                    self.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                )
            };
            if raw < 0 {
                match io::Error::last_os_error().raw_os_error() {
                    Some(libc::EINTR) | Some(libc::ECONNABORTED) => continue,
                    // EAGAIN: done. EMFILE and the like: the rest waits
                    // in the backlog until connections close.
                    _ => return,
                }
            }
            // SAFETY: `raw` is a fresh connected socket we now own.
            let vsock = unsafe { OwnedFd::from_raw_fd(raw) };
            let slot = self.free_slots.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            if self.watch(vsock.as_raw_fd(), 2 * slot as u64).is_err() {
                self.free_slots.push(slot);
                continue;
            }
            let (up, down) = (self.buffer(), self.buffer());
            self.conns[slot] = Some(Conn {
                vsock,
                vsock_ready: Ready::UNKNOWN,
                tcp: None,
                tcp_ready: Ready::NOTHING,
                phase: Phase::Header,
                up: Direction::new(up),
                down: Direction::new(down),
            });
            // The header is usually there already.
            self.drive(slot);
        }
    }

    /// Makes all the progress connection `slot` can make now.
    fn drive(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        match step(conn) {
            Ok(Step::Wait) => {}
            Ok(Step::Dial(port)) => match dial(port) {
                Ok(tcp) => {
                    let fd = tcp.as_raw_fd();
                    conn.tcp = Some(tcp);
                    conn.tcp_ready = Ready::NOTHING;
                    conn.phase = Phase::Connecting(port);
                    // Registering reports the connect's outcome, even one
                    // that is complete already.
                    if self.watch(fd, 2 * slot as u64 + 1).is_err() {
                        self.close(slot);
                    }
                }
                Err(e) => {
                    refuse(conn, &format!("connect 127.0.0.1:{port}: {e}"));
                    self.close(slot);
                }
            },
            Ok(Step::Done) | Err(_) => self.close(slot),
        }
    }

    fn close(&mut self, slot: usize) {
        if let Some(conn) = self.conns.get_mut(slot).and_then(Option::take) {
            // Dropping the fds closes them, which also takes them out of epoll.
            for d in [conn.up, conn.down] {
                if self.spare.len() < SPARE_BUFFERS {
                    let mut data = d.buf.data;
                    data.clear();
                    self.spare.push(data);
                }
            }
            self.free_slots.push(slot);
        }
    }
}

enum Step {
    /// Nothing more to do until the next event.
    Wait,
    /// The header asked for this port: dial it.
    Dial(u16),
    /// The connection is over: close it.
    Done,
}

fn step(conn: &mut Conn) -> io::Result<Step> {
    let vsock = conn.vsock.as_raw_fd();
    match conn.phase {
        Phase::Header => return read_header(conn),
        Phase::Connecting(port) => {
            let Some(tcp) = conn.tcp.as_ref().map(AsRawFd::as_raw_fd) else {
                return Ok(Step::Done);
            };
            if !conn.tcp_ready.write {
                return Ok(Step::Wait);
            }
            // Writable: the connect is over; SO_ERROR says how it ended.
            let mut err: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: SO_ERROR writes one c_int into valid storage.
            let rc = unsafe {
                libc::getsockopt(
                    tcp,
                    libc::SOL_SOCKET,
                    libc::SO_ERROR,
                    (&mut err as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            if err != 0 {
                let why = io::Error::from_raw_os_error(err);
                refuse(conn, &format!("connect 127.0.0.1:{port}: {why}"));
                return Ok(Step::Done);
            }
            conn.phase = Phase::Relaying;
            conn.down.buf.data.clear();
            conn.down.buf.data.extend_from_slice(b"OK\n");
            conn.down.buf.start = 0;
        }
        Phase::Relaying => {}
    }
    let Some(tcp) = conn.tcp.as_ref().map(AsRawFd::as_raw_fd) else {
        return Ok(Step::Done);
    };
    conn.up
        .pump((vsock, &mut conn.vsock_ready), (tcp, &mut conn.tcp_ready))?;
    conn.down
        .pump((tcp, &mut conn.tcp_ready), (vsock, &mut conn.vsock_ready))?;
    Ok(if conn.up.shut && conn.down.shut {
        Step::Done
    } else {
        Step::Wait
    })
}

/// Reads the header line into `up`'s buffer, keeping what follows it.
fn read_header(conn: &mut Conn) -> io::Result<Step> {
    let buf = &mut conn.up.buf;
    if conn.vsock_ready.read {
        let have = buf.data.len();
        // SAFETY: reads into the Vec's spare capacity (CHUNK > MAX_HEADER).
        let rc = unsafe {
            libc::read(
                conn.vsock.as_raw_fd(),
                buf.data.as_mut_ptr().add(have).cast(),
                buf.data.capacity() - have,
            )
        };
        match cvt(rc)? {
            None => conn.vsock_ready.read = false,
            Some(usize::MAX) => {}
            Some(0) => return Ok(Step::Done),
            // SAFETY: the kernel initialised `n` more bytes.
            Some(n) => unsafe { buf.data.set_len(have + n) },
        }
    }
    let Some(newline) = buf.data.iter().position(|b| *b == b'\n') else {
        if buf.data.len() >= MAX_HEADER {
            refuse(conn, "header too long");
            return Ok(Step::Done);
        }
        return Ok(Step::Wait);
    };
    if newline >= MAX_HEADER {
        refuse(conn, "header too long");
        return Ok(Step::Done);
    }
    let port = std::str::from_utf8(&buf.data[..newline])
        .ok()
        .and_then(protocol::parse_forward_header);
    // The client's first bytes, if any, stay for the container.
    buf.start = newline + 1;
    match port {
        Some(p) => Ok(Step::Dial(p)),
        None => {
            refuse(conn, "bad header");
            Ok(Step::Done)
        }
    }
}

/// Answers `ERR <why>` (best effort: the host only needs the line or EOF).
fn refuse(conn: &Conn, why: &str) {
    let line = format!("ERR {why}\n");
    // SAFETY: writes from a valid buffer of `line.len()` bytes.
    unsafe { libc::write(conn.vsock.as_raw_fd(), line.as_ptr().cast(), line.len()) };
}

/// Starts a non-blocking connect to 127.0.0.1:`port`, with Nagle off (bytes
/// are passed on as they come; Nagle would hold back the second small write
/// of a request until the first is acknowledged).
fn dial(port: u16) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked below.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor we own exclusively.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads one c_int from a valid pointer.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_port = port.to_be();
    addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
    // SAFETY: `addr` is a valid sockaddr_in of the given size.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener};
    use std::os::unix::net::{UnixListener, UnixStream};

    /// A forwarder on a Unix listener (the loop does not care which kind of
    /// stream socket it accepts from), dialling this host's loopback.
    fn forwarder(dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("fwd.sock");
        let l = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || run(OwnedFd::from(l)));
        path
    }

    fn line(s: &mut UnixStream) -> String {
        protocol::read_line(s).unwrap_or_default()
    }

    #[test]
    fn relays_both_ways_with_half_close_and_early_data() {
        let dir = tempfile::tempdir().unwrap();
        let fwd = forwarder(dir.path());
        // A server that reads to EOF, then answers with the sum of the
        // bytes and the bytes reversed.
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for c in server.incoming() {
                let mut c = c.unwrap();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    c.read_to_end(&mut got).unwrap();
                    got.reverse();
                    c.write_all(&got).unwrap();
                });
            }
        });
        let data: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
        let clients: Vec<_> = (0..20)
            .map(|_| {
                let fwd = fwd.clone();
                let data = data.clone();
                std::thread::spawn(move || {
                    let mut s = UnixStream::connect(&fwd).unwrap();
                    // Header and the first bytes in one write, as the host does.
                    let mut first = protocol::forward_header(port).into_bytes();
                    first.extend_from_slice(&data[..1000]);
                    s.write_all(&first).unwrap();
                    let w = s.try_clone().unwrap();
                    let d2 = data.clone();
                    let writer = std::thread::spawn(move || {
                        (&w).write_all(&d2[1000..]).unwrap();
                        w.shutdown(Shutdown::Write).unwrap();
                    });
                    assert_eq!(line(&mut s), "OK");
                    let mut back = Vec::new();
                    s.read_to_end(&mut back).unwrap();
                    writer.join().unwrap();
                    let mut want = data.clone();
                    want.reverse();
                    assert!(back == want, "{} bytes back", back.len());
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
    }

    #[test]
    fn refused_ports_and_bad_headers_get_an_error_line() {
        let dir = tempfile::tempdir().unwrap();
        let fwd = forwarder(dir.path());
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        for (header, want) in [
            (protocol::forward_header(port), "ERR connect 127.0.0.1:"),
            ("UDP 53\n".to_string(), "ERR bad header"),
            ("x".repeat(100), "ERR header too long"),
        ] {
            let mut s = UnixStream::connect(&fwd).unwrap();
            s.write_all(header.as_bytes()).unwrap();
            let l = line(&mut s);
            assert!(l.starts_with(want), "{header:?} -> {l:?}");
            // Then EOF: the connection is closed.
            assert_eq!(s.read(&mut [0u8; 1]).unwrap(), 0);
        }
    }
}
