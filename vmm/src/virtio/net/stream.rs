//! The backend link: a connected Unix stream socket speaking the "qemu"
//! stream protocol of passt (and QEMU's `-netdev stream`, libkrun): each
//! frame is a 4-byte big-endian length and the Ethernet frame, no virtio
//! header; or a tap device (user networks), where each `read` and `write`
//! is one whole frame. Frames from a tap are kept in the in buffer with
//! the same length prefix, so both kinds share the buffering below.
//!
//! Both directions are bounded: frames for the backend wait in at most
//! [`OUT_CAP`] bytes (the device stops taking guest tx chains beyond that,
//! so the guest's ring fills and its driver stops the queue), and bytes
//! from the backend are read only while [`IN_CAP`] has room (so a guest
//! that posts no rx buffers stops the reads, and the backend's socket
//! buffer fills and pushes back on it). The socket is non-blocking: the
//! event loop never waits on it.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use super::frame::{MAX_FRAME, MIN_FRAME};

/// Bytes of frames waiting for the backend.
pub const OUT_CAP: usize = 512 << 10;
/// Bytes read from the backend and not yet given to the guest.
pub const IN_CAP: usize = 256 << 10;
const LEN_BYTES: usize = 4;

/// Errors on the backend link.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The backend closed its end (passt exited).
    #[error("Network backend closed the connection")]
    Closed,
    /// Reading or writing failed.
    #[error("Network backend I/O failed")]
    Io(#[source] std::io::Error),
    /// A length prefix no frame can have: the stream is out of step.
    #[error("Network backend sent a frame length of {0}")]
    BadLength(usize),
}

/// What the device's frames travel on.
#[derive(Clone, Debug)]
pub enum Backend {
    /// A connected stream socket speaking the qemu protocol (passt).
    Stream(Arc<UnixStream>),
    /// A tap device opened with `IFF_TAP | IFF_NO_PI` (no virtio header):
    /// one frame per `read`/`write`.
    Tap(Arc<File>),
}

impl Backend {
    fn fd(&self) -> RawFd {
        match self {
            Self::Stream(s) => s.as_raw_fd(),
            Self::Tap(t) => t.as_raw_fd(),
        }
    }

    fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Stream(s) => (&**s).read(buf),
            Self::Tap(t) => (&**t).read(buf),
        }
    }

    fn write(&self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Stream(s) => (&**s).write(buf),
            Self::Tap(t) => (&**t).write(buf),
        }
    }
}

/// One end of a qemu-protocol stream (or a tap) with its bounded buffers.
#[derive(Debug)]
pub struct QemuStream {
    sock: Backend,
    out: Vec<u8>,
    out_head: usize,
    inb: Vec<u8>,
    in_head: usize,
}

impl QemuStream {
    /// Wraps a connected socket or a tap, making it non-blocking.
    pub fn new(sock: Backend) -> std::io::Result<Self> {
        set_nonblocking(sock.fd())?;
        Ok(Self {
            sock,
            out: Vec::new(),
            out_head: 0,
            inb: Vec::new(),
            in_head: 0,
        })
    }

    /// The socket, for epoll.
    pub fn fd(&self) -> RawFd {
        self.sock.fd()
    }

    fn is_tap(&self) -> bool {
        matches!(self.sock, Backend::Tap(_))
    }

    /// Bytes queued for the backend.
    pub fn out_pending(&self) -> usize {
        self.out.len() - self.out_head
    }

    /// Whether one more frame of any size fits in the out buffer.
    pub fn can_queue(&self) -> bool {
        self.out_pending() + LEN_BYTES + MAX_FRAME <= OUT_CAP
    }

    /// Queues `frame` for the backend (the caller checked [`can_queue`]).
    ///
    /// [`can_queue`]: Self::can_queue
    pub fn queue(&mut self, frame: &[u8]) {
        if self.out_head > 0 && self.out_head == self.out.len() {
            self.out.clear();
            self.out_head = 0;
        }
        self.out
            .extend_from_slice(&(frame.len() as u32).to_be_bytes());
        self.out.extend_from_slice(frame);
    }

    /// Writes what the socket takes now.
    pub fn flush(&mut self) -> Result<(), StreamError> {
        if self.is_tap() {
            self.flush_tap()?;
        }
        while !self.is_tap() && self.out_head < self.out.len() {
            match self.sock.write(&self.out[self.out_head..]) {
                Ok(0) => return Err(StreamError::Closed),
                Ok(n) => self.out_head += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::BrokenPipe => return Err(StreamError::Closed),
                Err(e) => return Err(StreamError::Io(e)),
            }
        }
        if self.out_head == self.out.len() {
            self.out.clear();
            self.out_head = 0;
        } else if self.out_head > OUT_CAP / 2 {
            self.out.drain(..self.out_head);
            self.out_head = 0;
        }
        Ok(())
    }

    /// Writes whole frames to a tap, one `write` each, without their
    /// length prefixes. A full tap queue (`WouldBlock`) keeps the rest.
    fn flush_tap(&mut self) -> Result<(), StreamError> {
        while let Some(len) = prefix_at(&self.out, self.out_head) {
            let frame = &self.out[self.out_head + LEN_BYTES..self.out_head + LEN_BYTES + len];
            match self.sock.write(frame) {
                Ok(_) => self.out_head += LEN_BYTES + len,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(StreamError::Io(e)),
            }
        }
        Ok(())
    }

    /// Reads frames from a tap into the in buffer, each behind the length
    /// prefix a stream would have sent, while a largest frame fits.
    fn fill_tap(&mut self) -> Result<(), StreamError> {
        while self.inb.len() + LEN_BYTES + MAX_FRAME <= IN_CAP {
            let start = self.inb.len();
            self.inb.resize(start + LEN_BYTES + MAX_FRAME, 0);
            let r = self.sock.read(&mut self.inb[start + LEN_BYTES..]);
            match r {
                Ok(n) if n >= MIN_FRAME => {
                    self.inb[start..start + LEN_BYTES].copy_from_slice(&(n as u32).to_be_bytes());
                    self.inb.truncate(start + LEN_BYTES + n);
                }
                // A runt cannot be an Ethernet frame: skip it.
                Ok(_) => self.inb.truncate(start),
                Err(e) => {
                    self.inb.truncate(start);
                    match e.kind() {
                        ErrorKind::WouldBlock => return Ok(()),
                        ErrorKind::Interrupted => continue,
                        _ => return Err(StreamError::Io(e)),
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether the in buffer has room to read into.
    pub fn wants_read(&self) -> bool {
        let room = if self.is_tap() {
            LEN_BYTES + MAX_FRAME
        } else {
            1
        };
        self.inb.len() - self.in_head + room <= IN_CAP
    }

    /// Reads what the socket has, up to the in buffer's room.
    pub fn fill(&mut self) -> Result<(), StreamError> {
        if self.in_head > 0 {
            self.inb.drain(..self.in_head);
            self.in_head = 0;
        }
        if self.is_tap() {
            return self.fill_tap();
        }
        while self.inb.len() < IN_CAP {
            let start = self.inb.len();
            self.inb.resize(IN_CAP, 0);
            let r = self.sock.read(&mut self.inb[start..]);
            let got = match r {
                Ok(n) => n,
                Err(e) => {
                    self.inb.truncate(start);
                    match e.kind() {
                        ErrorKind::WouldBlock => return Ok(()),
                        ErrorKind::Interrupted => continue,
                        _ => return Err(StreamError::Io(e)),
                    }
                }
            };
            self.inb.truncate(start + got);
            if got == 0 {
                return Err(StreamError::Closed);
            }
        }
        Ok(())
    }

    /// The next whole frame read, if any; it stays first until
    /// [`consume`](Self::consume) is called.
    pub fn peek_frame(&self) -> Result<Option<&[u8]>, StreamError> {
        let avail = &self.inb[self.in_head..];
        let Some(len_bytes) = avail.get(..LEN_BYTES) else {
            return Ok(None);
        };
        let len =
            u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
        if !(MIN_FRAME..=MAX_FRAME).contains(&len) {
            return Err(StreamError::BadLength(len));
        }
        Ok(avail.get(LEN_BYTES..LEN_BYTES + len))
    }

    /// Drops the frame [`peek_frame`](Self::peek_frame) returned.
    pub fn consume(&mut self) {
        let avail = &self.inb[self.in_head..];
        if avail.len() >= LEN_BYTES {
            let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
            self.in_head = (self.in_head + LEN_BYTES + len).min(self.inb.len());
        }
    }
}

/// The length in the prefix at `at` of `buf`, if a whole frame follows.
fn prefix_at(buf: &[u8], at: usize) -> Option<usize> {
    let b = buf.get(at..at + LEN_BYTES)?;
    let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    (buf.len() >= at + LEN_BYTES + len).then_some(len)
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller's Backend keeps open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above; only O_NONBLOCK is added.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (QemuStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (QemuStream::new(Backend::Stream(Arc::new(a))).unwrap(), b)
    }

    /// A tap behaves like a datagram socket: one frame per read and write.
    /// A SOCK_SEQPACKET pair stands in for it here.
    fn tap_pair() -> (QemuStream, UnixStream) {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two new descriptors into `fds`.
        let rc =
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, fds.as_mut_ptr()) };
        assert_eq!(rc, 0);
        use std::os::fd::FromRawFd;
        // SAFETY: both descriptors are new and owned by nothing else.
        let (a, b) = unsafe { (File::from_raw_fd(fds[0]), UnixStream::from_raw_fd(fds[1])) };
        (QemuStream::new(Backend::Tap(Arc::new(a))).unwrap(), b)
    }

    #[test]
    fn tap_frames_go_out_and_come_in_one_per_call() {
        let (mut s, mut peer) = tap_pair();
        s.queue(&[7u8; 20]);
        s.queue(&[8u8; 14]);
        s.flush().unwrap();
        assert_eq!(s.out_pending(), 0);
        let mut got = vec![0u8; 100];
        assert_eq!(peer.read(&mut got).unwrap(), 20);
        assert_eq!(&got[..20], &[7u8; 20]);
        assert_eq!(peer.read(&mut got).unwrap(), 14);
        peer.write_all(&[1u8; 16]).unwrap();
        peer.write_all(&[3u8; 5]).unwrap(); // a runt: skipped
        peer.write_all(&[2u8; 60]).unwrap();
        s.fill().unwrap();
        assert_eq!(s.peek_frame().unwrap(), Some(&[1u8; 16][..]));
        s.consume();
        assert_eq!(s.peek_frame().unwrap(), Some(&[2u8; 60][..]));
        s.consume();
        assert_eq!(s.peek_frame().unwrap(), None);
    }

    #[test]
    fn frames_go_out_length_prefixed() {
        let (mut s, mut peer) = pair();
        s.queue(&[7u8; 20]);
        s.queue(&[8u8; 14]);
        s.flush().unwrap();
        assert_eq!(s.out_pending(), 0);
        let mut got = vec![0u8; 4 + 20 + 4 + 14];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got[..4], &[0, 0, 0, 20]);
        assert_eq!(&got[4..24], &[7u8; 20]);
        assert_eq!(&got[24..28], &[0, 0, 0, 14]);
    }

    #[test]
    fn frames_come_in_whole_even_when_split() {
        let (mut s, mut peer) = pair();
        let mut bytes = vec![0, 0, 0, 16];
        bytes.extend([1u8; 16]);
        bytes.extend([0, 0, 0, 15]);
        bytes.extend([2u8; 10]); // second frame incomplete
        peer.write_all(&bytes).unwrap();
        s.fill().unwrap();
        assert_eq!(s.peek_frame().unwrap(), Some(&[1u8; 16][..]));
        s.consume();
        assert_eq!(s.peek_frame().unwrap(), None);
        peer.write_all(&[2u8; 5]).unwrap();
        s.fill().unwrap();
        assert_eq!(s.peek_frame().unwrap(), Some(&[2u8; 15][..]));
        s.consume();
        assert_eq!(s.peek_frame().unwrap(), None);
    }

    #[test]
    fn absurd_lengths_and_eof_are_errors() {
        let (mut s, mut peer) = pair();
        peer.write_all(&[0, 1, 0, 0]).unwrap(); // 65536 > MAX_FRAME
        s.fill().unwrap();
        assert!(matches!(s.peek_frame(), Err(StreamError::BadLength(65536))));
        let (mut s, mut peer) = pair();
        peer.write_all(&[0, 0, 0, 3]).unwrap(); // shorter than Ethernet
        s.fill().unwrap();
        assert!(matches!(s.peek_frame(), Err(StreamError::BadLength(3))));
        drop(peer);
        let (mut s, peer) = pair();
        drop(peer);
        assert!(matches!(s.fill(), Err(StreamError::Closed)));
    }

    #[test]
    fn reads_stop_when_the_in_buffer_is_full() {
        let (mut s, mut peer) = pair();
        peer.set_nonblocking(true).unwrap();
        let frame: Vec<u8> = [&(1000u32.to_be_bytes())[..], &[9u8; 1000]].concat();
        // The socket holds less than the buffer: write and read in turns.
        for _ in 0..1000 {
            while peer.write(&frame).is_ok() {}
            s.fill().unwrap();
            if !s.wants_read() {
                break;
            }
        }
        assert!(!s.wants_read());
        // A full buffer reads nothing more.
        s.fill().unwrap();
        assert!(s.inb.len() <= IN_CAP);
    }

    #[test]
    fn out_buffer_is_bounded() {
        let (mut s, _peer) = pair();
        let frame = vec![0u8; MAX_FRAME];
        let mut n = 0;
        while s.can_queue() {
            s.queue(&frame);
            n += 1;
        }
        assert!(n >= 1 && s.out_pending() <= OUT_CAP);
    }
}
