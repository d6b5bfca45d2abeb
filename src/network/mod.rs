//! Container networking: which network a container is on (`--network`),
//! the addresses it gets there, and the user-mode stack behind it
//! ([`passt`]).
//!
//! The default network gives each container VM a virtio-net device whose
//! frames the VMM relays to a `passt` process of its own: outbound TCP,
//! UDP and ICMP through host sockets, DNS through passt's forwarder, no
//! host routes or privileges. Every container sees the same small subnet
//! (each VM has its own passt, so nothing is shared between them, as with
//! QEMU's user networking); the agent configures the interface statically
//! from [`DefaultNetwork`], which is fast and needs no DHCP client.
//! See docs/networking.md.

pub mod passt;

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Errors choosing a network.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetworkError {
    /// `--network host`: a microVM has its own kernel, so it cannot use
    /// the host's network stack.
    #[error("--network host is not supported: each container runs its own kernel in a microVM, so it cannot share the host's network stack (use -p to publish ports, or the default network for outbound access)")]
    HostUnsupported,
    /// A network name hull does not know.
    #[error("network {0} not found (known: default, none)")]
    Unknown(String),
}

/// The network a container is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Only the loopback interface: no network device, no passt.
    /// (Containers made before networking existed read as this.)
    #[default]
    None,
    /// Outbound access through the container's own passt.
    Default,
}

impl NetworkMode {
    /// Parses `--network` (`bridge` is Docker's name for the default).
    pub fn parse(s: &str) -> Result<Self, NetworkError> {
        match s {
            "default" | "bridge" => Ok(Self::Default),
            "none" => Ok(Self::None),
            "host" => Err(NetworkError::HostUnsupported),
            other => Err(NetworkError::Unknown(other.to_string())),
        }
    }

    /// The name `inspect` shows.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Default => "default",
        }
    }
}

/// The addresses of the default network, the same in every container VM
/// (each has a network of its own behind its own passt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultNetwork;

impl DefaultNetwork {
    /// The guest's interface.
    pub const INTERFACE: &'static str = "eth0";
    /// The container's address.
    pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
    /// Prefix length of the subnet.
    pub const PREFIX_LEN: u8 = 24;
    /// The gateway: passt answers for it, and connections to it reach the
    /// host's loopback.
    pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    /// passt's DNS forwarder (to the host's first resolver).
    pub const DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
}

/// The MAC address of a container: locally administered, unicast, from
/// the first bytes of its id (hex), so it is stable across restarts.
pub fn mac_for(id: &str) -> [u8; 6] {
    let mut mac = [0x02, 0, 0, 0, 0, 0];
    for (i, b) in mac.iter_mut().skip(1).enumerate() {
        *b = id
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0);
    }
    mac
}

/// The MAC a snapshot template's device has (restored guests are given
/// their own before the interface comes up).
pub const TEMPLATE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0];

/// `NetworkSettings` of `hull inspect`, in Docker's field names.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkSettings {
    /// The network (`default` or `none`).
    pub network_mode: String,
    /// The container's IPv4 address (empty unless running on a network).
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    /// Its prefix length (0 without an address).
    #[serde(rename = "IPPrefixLen")]
    pub ip_prefix_len: u8,
    /// The default gateway.
    pub gateway: String,
    /// The interface's MAC address.
    pub mac_address: String,
    /// The DNS server the container's resolv.conf names.
    #[serde(rename = "DNS")]
    pub dns: String,
}

/// What `inspect` shows for a container on `mode`; addresses only while
/// it runs, as Docker does.
pub fn settings(mode: NetworkMode, id: &str, running: bool) -> NetworkSettings {
    let mut s = NetworkSettings {
        network_mode: mode.name().to_string(),
        ..NetworkSettings::default()
    };
    if mode == NetworkMode::Default && running {
        s.ip_address = DefaultNetwork::ADDRESS.to_string();
        s.ip_prefix_len = DefaultNetwork::PREFIX_LEN;
        s.gateway = DefaultNetwork::GATEWAY.to_string();
        s.mac_address = vmm::virtio::net::format_mac(&mac_for(id));
        s.dns = DefaultNetwork::DNS.to_string();
    }
    s
}

/// The agent request that gives the guest its address on the default
/// network.
pub fn configure_request(id: &str) -> agent_protocol::protocol::Request {
    agent_protocol::protocol::Request::ConfigureNetwork {
        interface: DefaultNetwork::INTERFACE.into(),
        mac: vmm::virtio::net::format_mac(&mac_for(id)),
        address: DefaultNetwork::ADDRESS,
        prefix_len: DefaultNetwork::PREFIX_LEN,
        gateway: DefaultNetwork::GATEWAY,
    }
}

/// The network device of a VM on `mode` (whose container id gives the
/// MAC) and the passt behind it, none for `none`. Dropping the passt
/// kills and reaps it; passt also ends on its own if this process dies.
pub fn attach(
    mode: NetworkMode,
    id: &str,
    log: Option<&std::path::Path>,
) -> anyhow::Result<(Option<passt::Passt>, Option<vmm::virtio::net::NetConfig>)> {
    match mode {
        NetworkMode::None => Ok((None, None)),
        NetworkMode::Default => {
            let (passt, sock) = passt::Passt::spawn(log)?;
            tracing::debug!("network through passt {}", passt.pid());
            let net = vmm::virtio::net::NetConfig {
                mac: mac_for(id),
                backend: Some(std::sync::Arc::new(sock)),
            };
            Ok((Some(passt), Some(net)))
        }
    }
}

/// The container's /etc/resolv.conf on the default network.
pub fn resolv_conf() -> String {
    format!("nameserver {}\n", DefaultNetwork::DNS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_flag_values() {
        assert_eq!(NetworkMode::parse("default"), Ok(NetworkMode::Default));
        assert_eq!(NetworkMode::parse("bridge"), Ok(NetworkMode::Default));
        assert_eq!(NetworkMode::parse("none"), Ok(NetworkMode::None));
        assert_eq!(
            NetworkMode::parse("host"),
            Err(NetworkError::HostUnsupported)
        );
        assert!(NetworkError::HostUnsupported
            .to_string()
            .contains("own kernel"));
        assert_eq!(
            NetworkMode::parse("mynet"),
            Err(NetworkError::Unknown("mynet".into()))
        );
    }

    #[test]
    fn macs_come_from_the_id_and_are_unicast_local() {
        let mac = mac_for("0a1b2c3d4e5f6789");
        assert_eq!(mac, [0x02, 0x0a, 0x1b, 0x2c, 0x3d, 0x4e]);
        assert_eq!(mac[0] & 1, 0, "unicast");
        assert_eq!(mac[0] & 2, 2, "locally administered");
        assert_eq!(mac_for("zz"), [2, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn settings_show_addresses_only_while_running_on_a_network() {
        let id = "0123456789abcdef";
        let s = settings(NetworkMode::Default, id, true);
        assert_eq!(s.ip_address, "10.0.2.15");
        assert_eq!(s.mac_address, "02:01:23:45:67:89");
        assert_eq!(s.gateway, "10.0.2.2");
        assert_eq!(settings(NetworkMode::Default, id, false).ip_address, "");
        assert_eq!(settings(NetworkMode::None, id, true).ip_address, "");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["IPAddress"], "10.0.2.15");
        assert_eq!(json["MacAddress"], "02:01:23:45:67:89");
    }
}
