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
//!
//! A user network (`hull network create`, [`store`]) is a bridge in a
//! network namespace of hull's ([`netns`]) with a DNS responder on its
//! gateway ([`dns`]); a container VM on it has two devices: `eth0`, a tap
//! on that bridge with an address from the network's subnet
//! ([`subnet`]), and `eth1`, its own passt as on the default network,
//! which carries the default route (outbound access). See
//! docs/networking.md.

pub mod dns;
pub mod dns_relay;
pub mod netns;
pub mod passt;
pub mod store;
pub mod subnet;

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
    #[error("network {0} not found (see hull network ls)")]
    Unknown(String),
}

/// The network a container is attached to.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Only the loopback interface: no network device, no passt.
    /// (Containers made before networking existed read as this.)
    #[default]
    None,
    /// Outbound access through the container's own passt.
    Default,
    /// A user network (`hull network create`), by name.
    User(String),
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

    /// Parses `--network` where user networks are allowed too: a name
    /// that is not built in must be a network of `root`'s store.
    pub fn resolve(root: &std::path::Path, s: &str) -> Result<Self, NetworkError> {
        match Self::parse(s) {
            Err(NetworkError::Unknown(name)) => store::NetworkStore::new(root)
                .get(&name)
                .map(|n| Self::User(n.name))
                .map_err(|_| NetworkError::Unknown(name)),
            other => other,
        }
    }

    /// The name `inspect` shows.
    pub fn name(&self) -> &str {
        match self {
            Self::None => "none",
            Self::Default => "default",
            Self::User(name) => name,
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

    /// The subnet of [`Self::ADDRESS`]: no user network may overlap it
    /// (a container on one has this subnet on its outbound interface).
    pub fn subnet() -> subnet::Subnet {
        subnet::Subnet {
            addr: Ipv4Addr::new(10, 0, 2, 0),
            prefix: Self::PREFIX_LEN,
        }
    }
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

/// The MAC of the outbound (passt) interface of a container on a user
/// network: [`mac_for`] with another locally administered first byte,
/// so its two interfaces never share an address.
pub fn uplink_mac_for(id: &str) -> [u8; 6] {
    let mut mac = mac_for(id);
    mac[0] = 0x06;
    mac
}

/// The MAC a snapshot template's first device has (restored guests are
/// given their own before the interface comes up).
pub const TEMPLATE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0];

/// The MAC of a snapshot template's `index`th network device: distinct
/// per device, as a real machine's are.
pub fn template_mac(index: usize) -> [u8; 6] {
    let mut mac = TEMPLATE_MAC;
    mac[5] = u8::try_from(index).unwrap_or(u8::MAX);
    mac
}

/// `NetworkSettings` of `hull inspect`, in Docker's field names.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkSettings {
    /// The network (`default`, `none` or a user network's name).
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
    /// The network the container is on, by name, as Docker lists them
    /// (present while it runs).
    pub networks: std::collections::BTreeMap<String, EndpointSettings>,
}

/// One entry of `NetworkSettings.Networks`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointSettings {
    /// The network's ID (empty for the default network).
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// `--network-alias` names.
    pub aliases: Vec<String>,
    /// The address.
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    /// Its prefix length.
    #[serde(rename = "IPPrefixLen")]
    pub ip_prefix_len: u8,
    /// The gateway.
    pub gateway: String,
    /// The MAC address.
    pub mac_address: String,
}

/// How the guest's interface is configured (the agent's
/// `ConfigureNetwork`) and which resolver its resolv.conf names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNetwork {
    /// The guest's interface (`eth0`, `eth1`: device order).
    pub interface: &'static str,
    /// MAC address.
    pub mac: [u8; 6],
    /// Address.
    pub address: Ipv4Addr,
    /// Prefix length.
    pub prefix_len: u8,
    /// The subnet's gateway.
    pub gateway: Ipv4Addr,
    /// Whether the default route goes through [`Self::gateway`]: only on
    /// the interface with outbound access.
    pub default_route: bool,
    /// The resolver.
    pub dns: Ipv4Addr,
}

impl GuestNetwork {
    /// The default network's, for container `id`.
    pub fn default_for(id: &str) -> Self {
        Self {
            interface: DefaultNetwork::INTERFACE,
            mac: mac_for(id),
            address: DefaultNetwork::ADDRESS,
            prefix_len: DefaultNetwork::PREFIX_LEN,
            gateway: DefaultNetwork::GATEWAY,
            default_route: true,
            dns: DefaultNetwork::DNS,
        }
    }

    /// The outbound interface (`eth1`, through passt) of container `id`
    /// on a user network: the default network's addresses and route.
    pub fn uplink_for(id: &str) -> Self {
        Self {
            interface: "eth1",
            mac: uplink_mac_for(id),
            ..Self::default_for(id)
        }
    }

    /// Whether every container configures this interface the same way
    /// but for its MAC: the interface with outbound access (through the
    /// container's own passt) has the default network's fixed address,
    /// gateway and route. A warm snapshot configures it once
    /// ([`Self::warm_configure_request`]); a container then changes only
    /// its MAC.
    pub fn same_in_every_container(&self) -> bool {
        self.default_route
    }

    /// [`Self::configure_request`] with the snapshot template's MAC for
    /// this interface, for a warm snapshot (the container's own MAC comes
    /// after the restore).
    pub fn warm_configure_request(&self) -> agent_protocol::protocol::Request {
        let index = self
            .interface
            .trim_start_matches("eth")
            .parse()
            .unwrap_or(0);
        Self {
            mac: template_mac(index),
            ..self.clone()
        }
        .configure_request()
    }

    /// The agent request that gives the guest this address.
    pub fn configure_request(&self) -> agent_protocol::protocol::Request {
        agent_protocol::protocol::Request::ConfigureNetwork {
            interface: self.interface.into(),
            mac: vmm::virtio::net::format_mac(&self.mac),
            address: self.address,
            prefix_len: self.prefix_len,
            gateway: self.default_route.then_some(self.gateway),
        }
    }

    fn settings(
        &self,
        mode: &NetworkMode,
        network_id: &str,
        aliases: &[String],
    ) -> NetworkSettings {
        let endpoint = EndpointSettings {
            network_id: network_id.to_string(),
            aliases: aliases.to_vec(),
            ip_address: self.address.to_string(),
            ip_prefix_len: self.prefix_len,
            gateway: self.gateway.to_string(),
            mac_address: vmm::virtio::net::format_mac(&self.mac),
        };
        NetworkSettings {
            network_mode: mode.name().to_string(),
            ip_address: endpoint.ip_address.clone(),
            ip_prefix_len: self.prefix_len,
            gateway: endpoint.gateway.clone(),
            mac_address: endpoint.mac_address.clone(),
            dns: self.dns.to_string(),
            networks: [(mode.name().to_string(), endpoint)].into(),
        }
    }
}

/// What `inspect` shows for a container on `mode`; addresses only while
/// it runs, as Docker does (a user network's from its endpoint).
pub fn settings(
    root: &std::path::Path,
    mode: &NetworkMode,
    id: &str,
    running: bool,
) -> NetworkSettings {
    let none = NetworkSettings {
        network_mode: mode.name().to_string(),
        ..NetworkSettings::default()
    };
    if !running {
        return none;
    }
    match mode {
        NetworkMode::None => none,
        NetworkMode::Default => GuestNetwork::default_for(id).settings(mode, "", &[]),
        NetworkMode::User(name) => match store::NetworkStore::new(root).get(name) {
            Ok(net) => match net.endpoints.get(id) {
                Some(ep) => user_guest(&net, ep, id).settings(mode, &net.id, &ep.aliases),
                None => none,
            },
            Err(_) => none,
        },
    }
}

/// The user network interface (`eth0`, the tap) of container `id`: the
/// network's subnet only, no default route (that is passt's, on `eth1`).
fn user_guest(net: &store::UserNetwork, ep: &store::Endpoint, id: &str) -> GuestNetwork {
    GuestNetwork {
        interface: DefaultNetwork::INTERFACE,
        mac: mac_for(id),
        address: ep.ip,
        prefix_len: net.subnet.prefix,
        gateway: net.gateway,
        default_route: false,
        dns: net.gateway,
    }
}

/// The container's /etc/resolv.conf for its interfaces `links`: the
/// first interface's resolver only. On a user network that is
/// aardvark-dns, which answers the network's names and forwards the
/// rest through the network's relay ([`dns_relay`]) to the host's
/// resolver; a second server (passt's forwarder) would answer the
/// network's names NXDOMAIN to resolvers that ask every server at once.
pub fn resolv_conf(links: &[GuestNetwork]) -> String {
    links
        .first()
        .map(|l| format!("nameserver {}\n", l.dns))
        .unwrap_or_default()
}

/// A container VM's network: its device, what keeps the backend alive
/// (passt on the default network), and the guest's settings.
#[derive(Debug, Default)]
pub struct Attachment {
    /// The container's passt (killed and reaped when dropped).
    pub passt: Option<passt::Passt>,
    /// The network devices in guest order; none for `none`.
    pub devices: Vec<vmm::virtio::net::NetConfig>,
    /// How the guest configures each of them (same order).
    pub guest: Vec<GuestNetwork>,
}

/// Container `id`'s network devices and backends on `mode`: its own
/// passt on the default network; on a user network a tap on its bridge
/// (where it joins as `name` and `aliases`: an address and its names in
/// DNS, until [`detach`]) and its own passt for outbound access. passt
/// also ends on its own if this process dies.
pub fn attach(
    root: &std::path::Path,
    mode: &NetworkMode,
    id: &str,
    names: (&str, &[String]),
    log: Option<&std::path::Path>,
) -> anyhow::Result<Attachment> {
    match mode {
        NetworkMode::None => Ok(Attachment::default()),
        NetworkMode::Default => {
            let (passt, sock) = passt::Passt::spawn(log)?;
            tracing::debug!("network through passt {}", passt.pid());
            let device = vmm::virtio::net::NetConfig {
                mac: mac_for(id),
                backend: Some(vmm::virtio::net::Backend::Stream(std::sync::Arc::new(sock))),
            };
            Ok(Attachment {
                passt: Some(passt),
                devices: vec![device],
                guest: vec![GuestNetwork::default_for(id)],
            })
        }
        NetworkMode::User(name) => attach_user(root, name, id, names, log),
    }
}

fn attach_user(
    root: &std::path::Path,
    network: &str,
    id: &str,
    (name, aliases): (&str, &[String]),
    log: Option<&std::path::Path>,
) -> anyhow::Result<Attachment> {
    // Before joining: a passt that cannot start leaves the network as it was.
    let (passt, sock) = passt::Passt::spawn(log)?;
    let uplink = vmm::virtio::net::NetConfig {
        mac: uplink_mac_for(id),
        backend: Some(vmm::virtio::net::Backend::Stream(std::sync::Arc::new(sock))),
    };
    let store = store::NetworkStore::new(root);
    let mac = mac_for(id);
    let (net, ep) = store.join(
        network,
        id,
        name,
        aliases,
        &vmm::virtio::net::format_mac(&mac),
    )?;
    let tap = netns::open_tap(&store.netns_path(network), &tap_name(id));
    let tap = match tap {
        Ok(t) => t,
        Err(e) => {
            let _ = store.leave(network, id);
            return Err(e.into());
        }
    };
    tracing::debug!(
        "on network {network} as {} through a tap, outbound through passt {}",
        ep.ip,
        passt.pid()
    );
    let tap = vmm::virtio::net::NetConfig {
        mac,
        backend: Some(vmm::virtio::net::Backend::Tap(std::sync::Arc::new(tap))),
    };
    Ok(Attachment {
        passt: Some(passt),
        devices: vec![tap, uplink],
        guest: vec![user_guest(&net, &ep, id), GuestNetwork::uplink_for(id)],
    })
}

/// Takes container `id` off `mode`'s user network (its address freed, its
/// names out of DNS); nothing for the built-in networks.
pub fn detach(root: &std::path::Path, mode: &NetworkMode, id: &str) -> anyhow::Result<()> {
    if let NetworkMode::User(name) = mode {
        store::NetworkStore::new(root).leave(name, id)?;
    }
    Ok(())
}

/// The tap of container `id` in its network's namespace (IFNAMSIZ: 15).
fn tap_name(id: &str) -> String {
    format!("h{}", &id[..12.min(id.len())])
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_outbound_interface_is_configured_ahead_with_the_template_mac() {
        let id = "0123456789abcdef";
        let default = GuestNetwork::default_for(id);
        let uplink = GuestNetwork::uplink_for(id);
        let mut user = GuestNetwork::default_for(id);
        user.default_route = false;
        assert!(default.same_in_every_container() && uplink.same_in_every_container());
        assert!(!user.same_in_every_container());
        let ahead = |l: &GuestNetwork| match l.warm_configure_request() {
            agent_protocol::protocol::Request::ConfigureNetwork { mac, address, .. } => {
                (mac, address)
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(
            ahead(&default),
            ("02:00:00:00:00:00".to_string(), DefaultNetwork::ADDRESS)
        );
        assert_eq!(ahead(&uplink).0, "02:00:00:00:00:01");
        // The container's own request differs only in the MAC.
        match default.configure_request() {
            agent_protocol::protocol::Request::ConfigureNetwork { mac, address, .. } => {
                assert_eq!(
                    (mac.as_str(), address),
                    ("02:01:23:45:67:89", DefaultNetwork::ADDRESS)
                )
            }
            other => panic!("{other:?}"),
        }
    }

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
    fn on_a_user_network_only_the_passt_interface_routes_outside() {
        let id = "0123456789abcdef";
        let net = store::UserNetwork {
            name: "front".into(),
            id: "n".into(),
            subnet: subnet::Subnet::parse("10.89.0.0/24").unwrap(),
            gateway: Ipv4Addr::new(10, 89, 0, 1),
            created: String::new(),
            endpoints: Default::default(),
        };
        let ep = store::Endpoint {
            name: "web".into(),
            aliases: vec![],
            ip: Ipv4Addr::new(10, 89, 0, 2),
            mac: String::new(),
        };
        let links = [user_guest(&net, &ep, id), GuestNetwork::uplink_for(id)];
        let gateways: Vec<_> = links
            .iter()
            .map(|l| match l.configure_request() {
                agent_protocol::protocol::Request::ConfigureNetwork {
                    interface, gateway, ..
                } => (interface, gateway),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            gateways,
            [
                ("eth0".to_string(), None),
                ("eth1".to_string(), Some(DefaultNetwork::GATEWAY))
            ]
        );
        assert_ne!(links[0].mac, links[1].mac);
        assert_eq!(links[1].mac[0] & 3, 2, "unicast, locally administered");
        // The network's responder only (it forwards the other names).
        assert_eq!(resolv_conf(&links), "nameserver 10.89.0.1\n");
        assert_eq!(
            resolv_conf(&[GuestNetwork::default_for(id)]),
            "nameserver 10.0.2.3\n"
        );
        assert_ne!(template_mac(0), template_mac(1));
        assert_eq!(template_mac(0), TEMPLATE_MAC);
    }

    #[test]
    fn settings_show_addresses_only_while_running_on_a_network() {
        let id = "0123456789abcdef";
        let root = std::path::Path::new("/nonexistent");
        let s = settings(root, &NetworkMode::Default, id, true);
        assert_eq!(s.ip_address, "10.0.2.15");
        assert_eq!(s.mac_address, "02:01:23:45:67:89");
        assert_eq!(s.gateway, "10.0.2.2");
        assert_eq!(
            settings(root, &NetworkMode::Default, id, false).ip_address,
            ""
        );
        assert_eq!(settings(root, &NetworkMode::None, id, true).ip_address, "");
        let unknown = NetworkMode::User("gone".into());
        assert_eq!(settings(root, &unknown, id, true).network_mode, "gone");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["IPAddress"], "10.0.2.15");
        assert_eq!(json["MacAddress"], "02:01:23:45:67:89");
        assert_eq!(json["Networks"]["default"]["IPAddress"], "10.0.2.15");
    }
}
