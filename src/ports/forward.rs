//! The host side of published ports. The container's VMM process binds
//! every host listener before the VM boots (so a port in use fails the
//! start at once, before anything runs), starts accepting once the guest
//! agent is ready, and carries each accepted connection over the VM's
//! hybrid vsock socket to the agent's [`FORWARD_PORT`], which dials the
//! container port inside the guest. Dropping the forwarder closes the
//! listeners; open connections end when the VM does.

use std::io::{self, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use agent_protocol::protocol::{self, FORWARD_PORT};

use super::relay::{self, pump, StreamSocket};
use super::spec::{self, PortBinding, PortSpec};

/// Errors binding the host side of published ports.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Another process (or another `-p`) holds the address.
    #[error("Cannot publish port {0}: address already in use")]
    InUse(SocketAddr),
    /// Any other failure to listen.
    #[error("Cannot publish port {0}")]
    Listen(SocketAddr, #[source] io::Error),
    /// A free port could not be found for both IPv4 and IPv6.
    #[error("Cannot find a free host port for container port {0}")]
    NoFreePort(u16),
    /// The accept thread could not start.
    #[error("Cannot start the port forwarder")]
    Thread(#[source] io::Error),
}

/// Pending connections each host listener queues before we accept them.
const BACKLOG: i32 = 1024;
/// Tries at finding one free port number on both IPv4 and IPv6.
const FREE_PORT_TRIES: usize = 16;
/// Stack of a connection's relay thread: its copy buffer plus room.
const RELAY_STACK: usize = relay::CHUNK + 96 * 1024;

/// A bound host listener and what it forwards to.
struct Listener {
    binding: PortBinding,
    socket: Arc<TcpListener>,
}

/// The listeners of one container.
pub struct PortForwarder {
    listeners: Vec<Listener>,
    stopping: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// `addr` as the C socket address bind(2) takes, and its length.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, usize) {
    // SAFETY: sockaddr_in/sockaddr_in6 are plain data; zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any
            // socket address.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len)
}

/// Listens on `addr` (IPv6 addresses only for IPv6, as Docker binds IPv4
/// and IPv6 separately). `Ok(None)` when the host has no IPv6.
fn listen(addr: SocketAddr) -> Result<Option<TcpListener>, ForwardError> {
    let fail = |e: io::Error| match e.raw_os_error() {
        Some(libc::EADDRINUSE) => ForwardError::InUse(addr),
        _ => ForwardError::Listen(addr, e),
    };
    let domain = if addr.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain socket(2) call; the result is checked below.
    let raw = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        let e = io::Error::last_os_error();
        if addr.is_ipv6() && e.raw_os_error() == Some(libc::EAFNOSUPPORT) {
            return Ok(None);
        }
        return Err(fail(e));
    }
    // SAFETY: `raw` is a fresh descriptor we own exclusively.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let set = |level: i32, name: i32| -> io::Result<()> {
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads one c_int from a valid pointer.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // A restarted container gets its port back despite old connections
    // lingering in TIME_WAIT (as every server does).
    set(libc::SOL_SOCKET, libc::SO_REUSEADDR).map_err(fail)?;
    if addr.is_ipv6() {
        set(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY).map_err(fail)?;
    }
    let (storage, len) = sockaddr(addr);
    // SAFETY: `storage` holds a valid address of `len` bytes.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        // No IPv6 on this host (disabled, or no address at all).
        if addr.is_ipv6()
            && addr.ip().is_unspecified()
            && e.raw_os_error() == Some(libc::EADDRNOTAVAIL)
        {
            return Ok(None);
        }
        return Err(fail(e));
    }
    // SAFETY: listen on a bound socket we own.
    if unsafe { libc::listen(fd.as_raw_fd(), BACKLOG) } != 0 {
        return Err(fail(io::Error::last_os_error()));
    }
    Ok(Some(TcpListener::from(fd)))
}

/// Binds one spec: its address, or IPv4 and IPv6 "any" on one port number.
fn bind_spec(spec: &PortSpec) -> Result<Vec<Listener>, ForwardError> {
    let make = |ip: IpAddr, port: u16| -> Result<Option<Listener>, ForwardError> {
        let Some(socket) = listen(SocketAddr::new(ip, port))? else {
            return Ok(None);
        };
        let host_port = socket
            .local_addr()
            .map_err(|e| ForwardError::Listen(SocketAddr::new(ip, port), e))?
            .port();
        Ok(Some(Listener {
            binding: PortBinding {
                host_ip: ip,
                host_port,
                container_port: spec.container_port,
            },
            socket: Arc::new(socket),
        }))
    };
    if let Some(ip) = spec.host_ip {
        return match make(ip, spec.host_port)? {
            Some(l) => Ok(vec![l]),
            None => Err(ForwardError::Listen(
                SocketAddr::new(ip, spec.host_port),
                io::Error::from_raw_os_error(libc::EAFNOSUPPORT),
            )),
        };
    }
    let [v4, v6] = spec::default_addresses();
    for _ in 0..FREE_PORT_TRIES {
        let Some(first) = make(v4, spec.host_port)? else {
            return Err(ForwardError::Listen(
                SocketAddr::new(v4, spec.host_port),
                io::Error::from_raw_os_error(libc::EAFNOSUPPORT),
            ));
        };
        let port = first.binding.host_port;
        match make(v6, port) {
            Ok(Some(second)) => return Ok(vec![first, second]),
            Ok(None) => return Ok(vec![first]),
            // A free IPv4 port may be taken on IPv6: pick another.
            Err(ForwardError::InUse(_)) if spec.host_port == 0 => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ForwardError::NoFreePort(spec.container_port))
}

impl PortForwarder {
    /// Binds every host listener (nothing is accepted yet). Fails as a
    /// whole, holding nothing, if any address cannot be bound.
    pub fn bind(specs: &[PortSpec]) -> Result<Self, ForwardError> {
        let mut listeners = Vec::new();
        for spec in specs {
            listeners.extend(bind_spec(spec)?);
        }
        Ok(Self {
            listeners,
            stopping: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        })
    }

    /// What is bound, in the order of the specs.
    pub fn bindings(&self) -> Vec<PortBinding> {
        self.listeners.iter().map(|l| l.binding).collect()
    }

    /// Starts accepting: each connection is carried to the guest agent
    /// through the VM's hybrid vsock socket `uds`.
    pub fn start(&mut self, uds: &Path) -> Result<(), ForwardError> {
        let uds = uds.to_path_buf();
        let relay = Some(vmm::seccomp::ThreadKind::PortRelay);
        self.start_with(
            Arc::new(move |client, port| forward(client, &uds, port)),
            relay,
        )
    }

    /// Starts accepting for a container-mode container: each connection
    /// is dialled from inside the network namespace bound at `netns`, to
    /// the container port on loopback (so, as in the VM mode, a server
    /// listening only on 127.0.0.1 in the container answers too).
    pub fn start_in_netns(&mut self, netns: &Path) -> Result<(), ForwardError> {
        let netns = netns.to_path_buf();
        // Unfiltered: each connection thread enters the container's
        // network namespace (setns), and no guest is behind it.
        self.start_with(
            Arc::new(move |client, port| forward_in_netns(client, &netns, port)),
            None,
        )
    }

    /// Starts an accept thread per listener; with `filter`, each thread
    /// (and so every connection thread it starts) runs under that seccomp
    /// filter from its start.
    fn start_with(
        &mut self,
        dial: Arc<Dial>,
        filter: Option<vmm::seccomp::ThreadKind>,
    ) -> Result<(), ForwardError> {
        for l in &self.listeners {
            let socket = l.socket.clone();
            let stopping = self.stopping.clone();
            let dial = dial.clone();
            let port = l.binding.container_port;
            let t = std::thread::Builder::new()
                .name(format!("port-{}", l.binding.host_port))
                .spawn(move || {
                    if let Some(kind) = filter {
                        if let Err(e) = vmm::seccomp::install(kind, vmm::seccomp::mode()) {
                            // Refusing connections beats relaying unfiltered.
                            tracing::error!("ports: {e}");
                            return;
                        }
                    }
                    accept_loop(&socket, &stopping, &dial, port)
                })
                .map_err(ForwardError::Thread)?;
            self.threads.push(t);
        }
        Ok(())
    }
}

impl Drop for PortForwarder {
    /// Closes the listeners: new connections are refused from here on.
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        for l in &self.listeners {
            // SAFETY: shutdown(2) of a listening socket we own wakes the
            // thread blocked in accept() on it (Linux returns EINVAL).
            unsafe { libc::shutdown(l.socket.as_raw_fd(), libc::SHUT_RDWR) };
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // The last references to the sockets go here: they are closed.
        self.listeners.clear();
    }
}

/// Carries one accepted connection to container port `port`; runs on a
/// thread of its own.
type Dial = dyn Fn(TcpStream, u16) + Send + Sync;

fn accept_loop(listener: &TcpListener, stopping: &AtomicBool, dial: &Arc<Dial>, port: u16) {
    loop {
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(_) if stopping.load(Ordering::Acquire) => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Out of fds or memory: leave the rest in the backlog a while.
                tracing::warn!("ports: accept failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
        };
        let dial = dial.clone();
        let spawned = std::thread::Builder::new()
            .name("port-conn".into())
            .stack_size(RELAY_STACK)
            .spawn(move || dial(client, port));
        if let Err(e) = spawned {
            // The client is dropped (closed) with the closure.
            tracing::warn!("ports: cannot start a connection thread: {e}");
        }
    }
}

/// Carries one client connection to container port `port`.
/// One connection into a container-mode container's network namespace
/// (this thread enters it; the thread is the connection's own).
fn forward_in_netns(client: TcpStream, netns: &Path, port: u16) {
    let _ = client.set_nodelay(true);
    let inner = match crate::oci::netns::connect_in(netns, port) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("ports: container port {port}: {e}");
            client.shut(Shutdown::Both);
            return;
        }
    };
    let _ = inner.set_nodelay(true);
    std::thread::scope(|s| {
        let up = std::thread::Builder::new()
            .name("port-up".into())
            .stack_size(RELAY_STACK)
            .spawn_scoped(s, || pump(&client, &inner));
        if up.is_ok() {
            pump(&inner, &client);
        }
    });
}

fn forward(client: TcpStream, uds: &Path, port: u16) {
    // Bytes are passed on as they come (see the agent's side).
    let _ = client.set_nodelay(true);
    let Ok(vsock) = UnixStream::connect(uds) else {
        return;
    };
    // The VMM's `CONNECT` and the agent's header in one write; the client's
    // first bytes may follow at once: both sides keep what follows a line.
    let hello = format!("CONNECT {FORWARD_PORT}\n{}", protocol::forward_header(port));
    if (&vsock).write_all(hello.as_bytes()).is_err() {
        return;
    }
    std::thread::scope(|s| {
        let up = std::thread::Builder::new()
            .name("port-up".into())
            .stack_size(RELAY_STACK)
            .spawn_scoped(s, || pump(&client, &vsock));
        if up.is_err() {
            return;
        }
        // The VMM's `OK <port>` (the agent accepted the vsock connection),
        // then the agent's `OK` (it reached the container port) or `ERR`.
        let vmm_ok = protocol::read_line(&mut &vsock).is_some_and(|l| l.starts_with("OK "));
        let agent = if vmm_ok {
            protocol::read_line(&mut &vsock)
        } else {
            None
        };
        if agent.as_deref() != Some("OK") {
            tracing::debug!(
                "ports: container port {port}: {}",
                agent
                    .as_deref()
                    .unwrap_or("the guest agent did not accept the connection")
            );
            // Nothing listens there: the client sees its connection end at
            // once, as with a closed port, and the upward pump wakes up.
            client.shut(Shutdown::Both);
            vsock.shut(Shutdown::Both);
            return;
        }
        pump(&vsock, &client);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;

    fn spec(ip: Option<&str>, host_port: u16, container_port: u16) -> PortSpec {
        PortSpec {
            host_ip: ip.map(|i| i.parse().unwrap()),
            host_port,
            container_port,
        }
    }

    #[test]
    fn a_taken_port_fails_the_whole_bind_and_frees_the_rest() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let free = TcpListener::bind("127.0.0.1:0").unwrap();
        let free_port = free.local_addr().unwrap().port();
        drop(free);
        let err = PortForwarder::bind(&[
            spec(Some("127.0.0.1"), free_port, 80),
            spec(Some("127.0.0.1"), port, 81),
        ])
        .err()
        .unwrap();
        assert_eq!(
            err.to_string(),
            format!("Cannot publish port 127.0.0.1:{port}: address already in use")
        );
        // The first listener was released with the error.
        TcpListener::bind(("127.0.0.1", free_port)).unwrap();
    }

    #[test]
    fn free_ports_are_picked_on_both_families_and_closed_on_drop() {
        let f = PortForwarder::bind(&[spec(None, 0, 80)]).unwrap();
        let b = f.bindings();
        assert!(!b.is_empty() && b.len() <= 2, "{b:?}");
        assert!(b[0].host_ip.is_ipv4() && b[0].host_port != 0);
        if let Some(v6) = b.get(1) {
            assert!(v6.host_ip.is_ipv6());
            assert_eq!(v6.host_port, b[0].host_port);
        }
        let port = b[0].host_port;
        TcpStream::connect(("127.0.0.1", port)).unwrap();
        drop(f);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }

    /// A stand-in for the VMM's hybrid vsock socket and the agent behind
    /// it, speaking the same lines, so the host side can be tested without
    /// a VM: answers `OK <n>` to `CONNECT 1027`, then `OK` to `TCP <port>`
    /// for `open_port` (echoing the bytes back upper-cased after the
    /// client's EOF) and `ERR` for any other port.
    fn fake_vm(dir: &Path, open_port: u16) -> PathBuf {
        let path = dir.join("vm.vsock");
        let l = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let mut c = conn.unwrap();
                std::thread::spawn(move || {
                    assert_eq!(protocol::read_line(&mut c).as_deref(), Some("CONNECT 1027"));
                    c.write_all(b"OK 1073741824\n").unwrap();
                    let line = protocol::read_line(&mut c).unwrap();
                    if protocol::parse_forward_header(&line) != Some(open_port) {
                        c.write_all(b"ERR connect: Connection refused\n").unwrap();
                        return;
                    }
                    c.write_all(b"OK\n").unwrap();
                    let mut got = Vec::new();
                    c.read_to_end(&mut got).unwrap();
                    c.write_all(&got.to_ascii_uppercase()).unwrap();
                });
            }
        });
        path
    }

    #[test]
    fn connections_reach_the_agent_with_half_close_and_refusals_end_fast() {
        let dir = tempfile::tempdir().unwrap();
        let uds = fake_vm(dir.path(), 80);
        let mut f = PortForwarder::bind(&[
            spec(Some("127.0.0.1"), 0, 80),
            spec(Some("127.0.0.1"), 0, 81),
        ])
        .unwrap();
        f.start(&uds).unwrap();
        let b = f.bindings();
        let threads: Vec<_> = (0..50)
            .map(|i| {
                let port = b[0].host_port;
                std::thread::spawn(move || {
                    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
                    let msg = format!("hello {i} ").repeat(1000);
                    c.write_all(msg.as_bytes()).unwrap();
                    c.shutdown(Shutdown::Write).unwrap();
                    let mut reply = String::new();
                    c.read_to_string(&mut reply).unwrap();
                    assert_eq!(reply, msg.to_uppercase());
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Nothing listens on container port 81: EOF (or reset) at once.
        let mut c = TcpStream::connect(("127.0.0.1", b[1].host_port)).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut rest = Vec::new();
        match c.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty(), "{rest:?}"),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
        }
    }
}
