//! `-p [IP:]HOSTPORT:CTRPORT[/tcp]` as Docker spells it, and the bindings a
//! running container holds.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// Errors in a `-p` value or an image's exposed port.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PortSpecError {
    /// Not a port mapping hull understands.
    #[error("Invalid port mapping {0:?}: {1}")]
    Invalid(String, &'static str),
    /// A protocol other than TCP.
    #[error(
        "Invalid port mapping {0:?}: only TCP ports can be published (UDP is not supported yet)"
    )]
    NotTcp(String),
}

/// One `-p` request, as recorded in the container's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    /// Host address to listen on; `None` is every interface (IPv4 and IPv6).
    pub host_ip: Option<IpAddr>,
    /// Host port; 0 picks a free one when the container starts.
    pub host_port: u16,
    /// Port inside the container.
    pub container_port: u16,
}

/// A host listener a running container holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBinding {
    /// Address listened on.
    pub host_ip: IpAddr,
    /// Port listened on (never 0).
    pub host_port: u16,
    /// Port inside the container.
    pub container_port: u16,
}

impl PortBinding {
    /// `0.0.0.0:8080` or `[::]:8080`, as `docker port` prints it.
    pub fn host_addr(&self) -> String {
        std::net::SocketAddr::new(self.host_ip, self.host_port).to_string()
    }

    /// `0.0.0.0:8080->80/tcp`, as `docker ps` shows it.
    pub fn ps_text(&self) -> String {
        format!("{}->{}/tcp", self.host_addr(), self.container_port)
    }
}

/// The addresses a spec listens on: its own, or IPv4 and IPv6 "any" like
/// Docker (IPv6 only where the host has it).
pub fn default_addresses() -> [IpAddr; 2] {
    [
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    ]
}

fn port(spec: &str, s: &str, what: &'static str) -> Result<u16, PortSpecError> {
    if s.contains('-') {
        return Err(PortSpecError::Invalid(
            spec.into(),
            "port ranges are not supported yet",
        ));
    }
    s.parse::<u16>()
        .map_err(|_| PortSpecError::Invalid(spec.into(), what))
}

/// Parses a `-p` value: `CTR`, `HOST:CTR`, `IP:HOST:CTR`, `IP::CTR`, with
/// IPv6 addresses in brackets (`[::1]:8080:80`) and an optional `/tcp`.
pub fn parse(spec: &str) -> Result<PortSpec, PortSpecError> {
    let (body, proto) = match spec.rsplit_once('/') {
        Some((b, p)) => (b, p),
        None => (spec, "tcp"),
    };
    match proto.to_ascii_lowercase().as_str() {
        "tcp" => {}
        "udp" | "sctp" => return Err(PortSpecError::NotTcp(spec.into())),
        _ => {
            return Err(PortSpecError::Invalid(
                spec.into(),
                "unknown protocol (use /tcp)",
            ))
        }
    }
    let (host_ip, rest) = if let Some(after) = body.strip_prefix('[') {
        let (ip, rest) = after.split_once(']').ok_or(PortSpecError::Invalid(
            spec.into(),
            "unclosed [ in the IPv6 address",
        ))?;
        let ip: Ipv6Addr = ip
            .parse()
            .map_err(|_| PortSpecError::Invalid(spec.into(), "bad IPv6 address"))?;
        let rest = rest.strip_prefix(':').ok_or(PortSpecError::Invalid(
            spec.into(),
            "expected [IP]:HOSTPORT:CONTAINERPORT",
        ))?;
        (Some(IpAddr::V6(ip)), rest)
    } else {
        match body.split(':').count() {
            1 | 2 => (None, body),
            3 => {
                let (ip, rest) = body.split_once(':').unwrap_or_default();
                let ip: Ipv4Addr = ip.parse().map_err(|_| {
                    PortSpecError::Invalid(
                        spec.into(),
                        "bad IPv4 address (write IPv6 addresses in brackets)",
                    )
                })?;
                (Some(IpAddr::V4(ip)), rest)
            }
            _ => {
                return Err(PortSpecError::Invalid(
                    spec.into(),
                    "too many colons (write IPv6 addresses in brackets: [::1]:8080:80)",
                ))
            }
        }
    };
    let (host, container) = match rest.split_once(':') {
        Some((h, c)) => (h, c),
        None if host_ip.is_none() => ("", rest),
        None => {
            return Err(PortSpecError::Invalid(
                spec.into(),
                "expected IP:HOSTPORT:CONTAINERPORT",
            ))
        }
    };
    if container.contains(':') {
        return Err(PortSpecError::Invalid(spec.into(), "too many colons"));
    }
    let host_port = if host.is_empty() {
        0
    } else {
        port(spec, host, "bad host port (0-65535)")?
    };
    let container_port = port(spec, container, "bad container port (1-65535)")?;
    if container_port == 0 {
        return Err(PortSpecError::Invalid(
            spec.into(),
            "bad container port (1-65535)",
        ));
    }
    Ok(PortSpec {
        host_ip,
        host_port,
        container_port,
    })
}

/// Parses an image's exposed port (`80/tcp`, `80`) for `-P`: `Ok(None)` for
/// a UDP or SCTP port, which hull cannot publish yet.
pub fn parse_exposed(exposed: &str) -> Result<Option<u16>, PortSpecError> {
    let (port_text, proto) = exposed.split_once('/').unwrap_or((exposed, "tcp"));
    if !proto.eq_ignore_ascii_case("tcp") {
        return Ok(None);
    }
    match port(exposed, port_text, "bad exposed port")? {
        0 => Err(PortSpecError::Invalid(exposed.into(), "bad exposed port")),
        p => Ok(Some(p)),
    }
}

/// The container port a `hull port CTR PORT` argument names (`80`,
/// `80/tcp`).
pub fn parse_query(q: &str) -> Result<u16, PortSpecError> {
    match parse_exposed(q)? {
        Some(p) => Ok(p),
        None => Err(PortSpecError::NotTcp(q.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ip: Option<&str>, host: u16, ctr: u16) -> PortSpec {
        PortSpec {
            host_ip: ip.map(|i| i.parse().unwrap()),
            host_port: host,
            container_port: ctr,
        }
    }

    #[test]
    fn docker_forms_parse() {
        let cases = [
            ("80", spec(None, 0, 80)),
            ("8080:80", spec(None, 8080, 80)),
            ("8080:80/tcp", spec(None, 8080, 80)),
            ("8080:80/TCP", spec(None, 8080, 80)),
            (":80", spec(None, 0, 80)),
            ("0:80", spec(None, 0, 80)),
            ("127.0.0.1:8080:80", spec(Some("127.0.0.1"), 8080, 80)),
            ("127.0.0.1::80", spec(Some("127.0.0.1"), 0, 80)),
            ("[::1]:8080:80", spec(Some("::1"), 8080, 80)),
            ("[::]::80/tcp", spec(Some("::"), 0, 80)),
            ("[fe80::1]:1:65535", spec(Some("fe80::1"), 1, 65535)),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn bad_specs_say_why() {
        assert!(matches!(parse("53:53/udp"), Err(PortSpecError::NotTcp(_))));
        assert!(matches!(parse("53/sctp"), Err(PortSpecError::NotTcp(_))));
        for bad in [
            "",
            "x",
            "80:x",
            "70000:80",
            "8080:0",
            "8080:80/http",
            "1.2.3:8080:80",
            "::1:8080:80",
            "[::1:8080:80",
            "[::1]8080:80",
            "[nope]:8080:80",
            "127.0.0.1:80",
            "1:2:3:4",
            "8000-8001:80-81",
            "a:b:c",
        ] {
            match parse(bad) {
                Err(PortSpecError::Invalid(s, why)) => {
                    assert_eq!(s, bad);
                    assert!(!why.is_empty());
                }
                other => panic!("{bad:?} -> {other:?}"),
            }
        }
        let e = parse("8000-8001:80").unwrap_err().to_string();
        assert!(e.contains("ranges"), "{e}");
        let e = parse("53:53/udp").unwrap_err().to_string();
        assert!(e.contains("UDP is not supported"), "{e}");
    }

    #[test]
    fn exposed_ports_and_queries() {
        assert_eq!(parse_exposed("80/tcp"), Ok(Some(80)));
        assert_eq!(parse_exposed("8080"), Ok(Some(8080)));
        assert_eq!(parse_exposed("53/udp"), Ok(None));
        assert!(parse_exposed("http/tcp").is_err());
        assert_eq!(parse_query("5000/tcp"), Ok(5000));
        assert!(parse_query("53/udp").is_err());
    }

    #[test]
    fn bindings_print_like_docker() {
        let b = PortBinding {
            host_ip: "0.0.0.0".parse().unwrap(),
            host_port: 5000,
            container_port: 5000,
        };
        assert_eq!(b.host_addr(), "0.0.0.0:5000");
        assert_eq!(b.ps_text(), "0.0.0.0:5000->5000/tcp");
        let b6 = PortBinding {
            host_ip: "::".parse().unwrap(),
            ..b
        };
        assert_eq!(b6.host_addr(), "[::]:5000");
    }
}
