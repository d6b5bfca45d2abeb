//! The backend link: a connected Unix stream socket speaking the "qemu"
//! stream protocol of passt (and QEMU's `-netdev stream`, libkrun): each
//! frame is a 4-byte big-endian length and the Ethernet frame, no virtio
//! header.
//!
//! Both directions are bounded: frames for the backend wait in at most
//! [`OUT_CAP`] bytes (the device stops taking guest tx chains beyond that,
//! so the guest's ring fills and its driver stops the queue), and bytes
//! from the backend are read only while [`IN_CAP`] has room (so a guest
//! that posts no rx buffers stops the reads, and the backend's socket
//! buffer fills and pushes back on it). The socket is non-blocking: the
//! event loop never waits on it.

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

/// One end of a qemu-protocol stream with its bounded buffers.
#[derive(Debug)]
pub struct QemuStream {
    sock: Arc<UnixStream>,
    out: Vec<u8>,
    out_head: usize,
    inb: Vec<u8>,
    in_head: usize,
}

impl QemuStream {
    /// Wraps a connected socket, making it non-blocking.
    pub fn new(sock: Arc<UnixStream>) -> std::io::Result<Self> {
        sock.set_nonblocking(true)?;
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
        self.sock.as_raw_fd()
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
        while self.out_head < self.out.len() {
            match (&*self.sock).write(&self.out[self.out_head..]) {
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

    /// Whether the in buffer has room to read into.
    pub fn wants_read(&self) -> bool {
        self.inb.len() - self.in_head < IN_CAP
    }

    /// Reads what the socket has, up to the in buffer's room.
    pub fn fill(&mut self) -> Result<(), StreamError> {
        if self.in_head > 0 {
            self.inb.drain(..self.in_head);
            self.in_head = 0;
        }
        while self.inb.len() < IN_CAP {
            let start = self.inb.len();
            self.inb.resize(IN_CAP, 0);
            let r = (&*self.sock).read(&mut self.inb[start..]);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (QemuStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (QemuStream::new(Arc::new(a)).unwrap(), b)
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
