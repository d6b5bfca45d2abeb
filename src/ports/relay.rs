//! Copying one direction of a forwarded connection between two stream
//! sockets (the client's TCP connection and the VM's vsock socket), with
//! TCP's half-close semantics.
//!
//! A connection is relayed by two [`pump`]s, one per direction, each on its
//! own thread with a fixed buffer: a slow reader blocks its writer, so
//! backpressure reaches the sender and nothing buffers without bound.
//! Threads are cheap on the host; the guest side (the agent) uses one
//! epoll loop instead, where a thread costs far more.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;

/// Bytes moved per read/write.
pub const CHUNK: usize = 32 * 1024;

/// A connected stream socket that can be shut down one way or both.
pub trait StreamSocket {
    /// `shutdown(2)`; a socket that is already shut or gone is not an error
    /// worth reporting, so this returns nothing.
    fn shut(&self, how: Shutdown);
}

impl StreamSocket for TcpStream {
    fn shut(&self, how: Shutdown) {
        let _ = self.shutdown(how);
    }
}

impl StreamSocket for UnixStream {
    fn shut(&self, how: Shutdown) {
        let _ = self.shutdown(how);
    }
}

/// Copies `from` to `to` until `from` reaches EOF, then shuts down `to`'s
/// writing half (its peer reads EOF but may still answer). If either side
/// fails (reset, broken pipe), both sockets are shut down entirely so the
/// other direction's pump wakes up and ends too. Returns the bytes copied.
pub fn pump<F, T>(from: &F, to: &T) -> u64
where
    F: StreamSocket,
    T: StreamSocket,
    for<'a> &'a F: Read,
    for<'a> &'a T: Write,
{
    let mut buf = [0u8; CHUNK];
    let mut total = 0u64;
    let mut reader = from;
    let mut writer = to;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => {
                to.shut(Shutdown::Write);
                return total;
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if writer.write_all(&buf[..n]).is_err() {
            break;
        }
        total += n as u64;
    }
    from.shut(Shutdown::Both);
    to.shut(Shutdown::Both);
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A TCP connection on loopback: (client end, server end).
    fn tcp_pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    #[test]
    fn both_directions_are_byte_exact_and_half_close_passes_through() {
        // client <-tcp-> [relay] <-unix-> server
        let (mut client, relay_tcp) = tcp_pair();
        let (relay_unix, mut server) = UnixStream::pair().unwrap();
        let up: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let down: Vec<u8> = (0..2_000_000u32).map(|i| (i * 13 % 253) as u8).collect();
        std::thread::scope(|s| {
            s.spawn(|| pump(&relay_tcp, &relay_unix));
            s.spawn(|| pump(&relay_unix, &relay_tcp));
            let server = s.spawn(|| {
                // Reads the whole upload (EOF = the client's half-close came
                // through), then answers: the reply still flows back.
                let mut got = Vec::new();
                server.read_to_end(&mut got).unwrap();
                server.write_all(&down).unwrap();
                server.shutdown(Shutdown::Write).unwrap();
                got
            });
            let writer = s.spawn(|| {
                let mut c = &client;
                c.write_all(&up).unwrap();
                client.shutdown(Shutdown::Write).unwrap();
            });
            let mut reply = Vec::new();
            (&client).read_to_end(&mut reply).unwrap();
            writer.join().unwrap();
            assert_eq!(server.join().unwrap(), up);
            assert!(reply == down, "reply differs ({} bytes)", reply.len());
        });
        // Both halves closed: the client reads EOF again.
        assert_eq!(client.read(&mut [0u8; 1]).unwrap(), 0);
    }

    #[test]
    fn a_reset_peer_ends_both_directions() {
        let (client, relay_tcp) = tcp_pair();
        let (relay_unix, server) = UnixStream::pair().unwrap();
        std::thread::scope(|s| {
            let down = s.spawn(|| pump(&relay_unix, &relay_tcp));
            let up = s.spawn(|| pump(&relay_tcp, &relay_unix));
            // The server end vanishes while the client still sends.
            drop(server);
            let _ = (&client).write_all(&[1u8; 100_000]);
            // Neither pump may hang.
            up.join().unwrap();
            down.join().unwrap();
        });
        let mut rest = Vec::new();
        // The client sees EOF or a reset, not a hang.
        let _ = (&client).read_to_end(&mut rest);
        assert!(rest.is_empty());
    }
}
