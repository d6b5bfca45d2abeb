//! The guest's network set-up: the loopback interface, which the kernel
//! creates down. Containers (and the agent, which dials published ports on
//! 127.0.0.1) expect it up, as in any container runtime.

use std::io;

/// Brings `lo` up (the kernel then gives it 127.0.0.1/8).
pub fn loopback_up() -> io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain socket(2) call; the result is checked below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor we own exclusively.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills the flags of the interface named in `req`,
    // a valid ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the flags member of the union was just written by the kernel.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the name and flags from a valid ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs one TCP connection over loopback, and one refused connect, in the
/// template VM before its snapshot is taken. The guest kernel's first TCP
/// connect costs ~4 s of emulated kernel work on PVM hosts (measured: a
/// published port's first connection took 4.3 s, later ones 0.07 s), which
/// a container's first client would otherwise wait for.
pub fn warm_loopback_tcp() -> io::Result<()> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut client = std::net::TcpStream::connect(addr)?;
    let (mut server, _) = listener.accept()?;
    client.write_all(b"w")?;
    let mut byte = [0u8; 1];
    server.read_exact(&mut byte)?;
    drop((client, server, listener));
    // The port is closed now: the kernel answers with a reset.
    match std::net::TcpStream::connect(addr) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(()),
        Err(e) => Err(e),
        Ok(_) => Ok(()),
    }
}

/// What the host asks of the guest's network interface (`ConfigureNetwork`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    /// Interface name (`eth0`).
    pub interface: String,
    /// MAC address to give it (a restored VM still has its template's).
    pub mac: [u8; 6],
    /// IPv4 address.
    pub address: std::net::Ipv4Addr,
    /// Prefix length of its subnet.
    pub prefix_len: u8,
    /// Default gateway; `None` for an interface that reaches its subnet
    /// only (another interface has the default route).
    pub gateway: Option<std::net::Ipv4Addr>,
}

/// Errors configuring an interface.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The interface name does not fit `ifreq` or holds a NUL.
    #[error("Bad interface name {0:?}")]
    BadName(String),
    /// A prefix length over 32.
    #[error("Bad prefix length {0}")]
    BadPrefix(u8),
    /// An ioctl failed.
    #[error("{what} on {iface}")]
    Ioctl {
        /// What was being done.
        what: &'static str,
        /// The interface.
        iface: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Linux's `struct rtentry` (SIOCADDRT), laid out as on 64-bit x86; the
/// libc crate defines it for musl only.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn sockaddr_v4(ip: std::net::Ipv4Addr) -> libc::sockaddr {
    // SAFETY: sockaddr is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr = unsafe { std::mem::zeroed() };
    sa.sa_family = libc::AF_INET as libc::sa_family_t;
    // sockaddr_in: port (2 bytes, 0), then the address.
    for (dst, src) in sa.sa_data[2..6].iter_mut().zip(ip.octets()) {
        *dst = src as libc::c_char;
    }
    sa
}

/// Gives the interface its MAC, address and netmask, brings it up and,
/// with a gateway, routes everything through it. Idempotent: on an
/// interface a warm snapshot configured already with the same address,
/// netmask and route, the kernel keeps those (no work) and only the MAC
/// changes (virtio-net allows that while the interface is up).
// Four ioctls in sequence on one socket (MAC, address, netmask, flags),
// each with its request struct built inline; the route is its own
// function ([`add_default_route`]).
pub fn configure(c: &LinkConfig) -> Result<(), NetError> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    if c.prefix_len > 32 {
        return Err(NetError::BadPrefix(c.prefix_len));
    }
    let name = c.interface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return Err(NetError::BadName(c.interface.clone()));
    }
    let fail = |what: &'static str| NetError::Ioctl {
        what,
        iface: c.interface.clone(),
        source: io::Error::last_os_error(),
    };
    // SAFETY: plain socket(2) call; the result is checked below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(fail("socket"));
    }
    // SAFETY: `raw` is a fresh descriptor we own exclusively.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let fd = sock.as_raw_fd();
    let new_req = || {
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name) {
            *dst = *src as libc::c_char;
        }
        req
    };

    let mut req = new_req();
    // SAFETY: writing the hwaddr member of a zeroed union.
    unsafe {
        req.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
        for (dst, src) in req.ifr_ifru.ifru_hwaddr.sa_data.iter_mut().zip(c.mac) {
            *dst = src as libc::c_char;
        }
    }
    // SAFETY: SIOCSIFHWADDR reads the name and hwaddr of a valid ifreq.
    if unsafe { libc::ioctl(fd, libc::SIOCSIFHWADDR, &req) } != 0 {
        return Err(fail("setting the MAC address"));
    }
    let mut req = new_req();
    req.ifr_ifru.ifru_addr = sockaddr_v4(c.address);
    // SAFETY: SIOCSIFADDR reads the name and address of a valid ifreq.
    if unsafe { libc::ioctl(fd, libc::SIOCSIFADDR, &req) } != 0 {
        return Err(fail("setting the address"));
    }
    let mask = u32::MAX
        .checked_shl(32 - u32::from(c.prefix_len))
        .unwrap_or(0);
    let mut req = new_req();
    req.ifr_ifru.ifru_netmask = sockaddr_v4(mask.into());
    // SAFETY: SIOCSIFNETMASK reads the name and netmask of a valid ifreq.
    if unsafe { libc::ioctl(fd, libc::SIOCSIFNETMASK, &req) } != 0 {
        return Err(fail("setting the netmask"));
    }
    let mut req = new_req();
    // SAFETY: SIOCGIFFLAGS fills the flags of the named interface.
    if unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) } != 0 {
        return Err(fail("reading the flags"));
    }
    // SAFETY: the flags member was just written by the kernel.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the name and flags of a valid ifreq.
    if unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) } != 0 {
        return Err(fail("bringing it up"));
    }
    match c.gateway {
        Some(gateway) => add_default_route(fd, name, gateway).map_err(|source| NetError::Ioctl {
            what: "adding the default route",
            iface: c.interface.clone(),
            source,
        }),
        None => Ok(()),
    }
}

/// Routes everything through `gateway` on interface `name` (the socket
/// `fd` is any AF_INET socket).
fn add_default_route(
    fd: std::os::fd::RawFd,
    name: &[u8],
    gateway: std::net::Ipv4Addr,
) -> io::Result<()> {
    let mut dev: Vec<libc::c_char> = name.iter().map(|&b| b as libc::c_char).collect();
    dev.push(0);
    let route = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_v4(std::net::Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr_v4(gateway),
        rt_genmask: sockaddr_v4(std::net::Ipv4Addr::UNSPECIFIED),
        rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: dev.as_mut_ptr(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // SAFETY: SIOCADDRT reads a valid rtentry whose rt_dev points to a
    // NUL-terminated name that outlives the call.
    if unsafe { libc::ioctl(fd, libc::SIOCADDRT, &route) } != 0 {
        let e = io::Error::last_os_error();
        // The kernel refuses only an identical route with EEXIST (another
        // default route would be added beside it): the route is there, as
        // when a warm snapshot configured this interface already.
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    Ok(())
}

/// Parses `02:48:...` into six bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(
            parse_mac("02:48:0a:ff:00:01"),
            Some([2, 0x48, 10, 255, 0, 1])
        );
        for bad in [
            "",
            "02:48:0a:ff:00",
            "02:48:0a:ff:00:01:02",
            "2:48:0a:ff:00:01",
            "zz:48:0a:ff:00:01",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_names_and_prefixes_are_refused_before_any_syscall() {
        let mut c = LinkConfig {
            interface: "eth0".into(),
            mac: [2, 0, 0, 0, 0, 1],
            address: [10, 0, 2, 15].into(),
            prefix_len: 33,
            gateway: Some([10, 0, 2, 2].into()),
        };
        assert!(matches!(configure(&c), Err(NetError::BadPrefix(33))));
        c.prefix_len = 24;
        c.interface = "a-very-long-interface-name".into();
        assert!(matches!(configure(&c), Err(NetError::BadName(_))));
    }
}
