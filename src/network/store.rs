//! User networks on disk, under `<root>/networks/<name>/`:
//!
//! - `network.json`: name, ID, subnet, gateway, creation time and the
//!   endpoints of the containers running on it (address, MAC, names);
//! - `netns`: the bind-mounted network namespace ([`super::netns`]);
//! - `dns/`: aardvark-dns's configuration ([`super::dns`]).
//!
//! Every change happens under one lock (`<root>/networks/.lock`) shared by
//! all hull processes, and `network.json` is written atomically. An
//! endpoint exists while its container runs: added when its VM starts,
//! removed when it exits (and by `rm`, for a VMM that was killed), so its
//! name resolves exactly while it runs, as with Docker's embedded DNS.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::events::Kind;

use super::subnet::{Subnet, SubnetError};
use super::{dns, netns};

/// Names that are not user networks.
const RESERVED: [&str; 4] = ["default", "bridge", "none", "host"];

/// Errors of the network store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such network.
    #[error("network {0} not found")]
    NotFound(String),
    /// The name is taken.
    #[error("network with name {0} already exists")]
    Exists(String),
    /// A built-in name, or characters Docker does not allow.
    #[error("invalid network name {0:?}: {1}")]
    BadName(String, &'static str),
    /// The subnet overlaps another network's.
    #[error("subnet {0} overlaps network {1} ({2})")]
    Overlap(String, String, String),
    /// Containers still use the network.
    #[error("network {0} is in use by container(s) {1}: remove them first")]
    InUse(String, String),
    /// A subnet or address problem.
    #[error(transparent)]
    Subnet(#[from] SubnetError),
    /// The namespace could not be made or removed.
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    /// The DNS responder failed.
    #[error(transparent)]
    Dns(#[from] dns::DnsError),
    /// A store file could not be read or written.
    #[error("network store {0}")]
    Io(PathBuf, #[source] std::io::Error),
    /// A store file is not what hull wrote.
    #[error("network store {0}: corrupt")]
    Corrupt(PathBuf, #[source] serde_json::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Io(path.to_path_buf(), e)
}

/// A running container's place on a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The container's name.
    pub name: String,
    /// `--network-alias` names.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its MAC address.
    pub mac: String,
}

/// One user network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNetwork {
    /// Its name.
    pub name: String,
    /// 64 hex digits.
    pub id: String,
    /// Its subnet.
    pub subnet: Subnet,
    /// The bridge's address (DNS is served there).
    pub gateway: Ipv4Addr,
    /// Creation time, RFC 3339.
    pub created: String,
    /// Running containers by ID.
    #[serde(default)]
    pub endpoints: BTreeMap<String, Endpoint>,
}

/// The networks under a hull root.
#[derive(Debug, Clone)]
pub struct NetworkStore {
    dir: PathBuf,
}

/// Docker's rule for names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn check_name(name: &str) -> Result<(), StoreError> {
    let bad = |why| Err(StoreError::BadName(name.to_string(), why));
    if RESERVED.contains(&name) {
        return bad("a built-in network has that name");
    }
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return bad("it must start with a letter or digit"),
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) || name.len() > 64 {
        return bad("allowed: [a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 64 characters");
    }
    Ok(())
}

impl NetworkStore {
    /// The store under `root`.
    pub fn new(root: &Path) -> Self {
        Self {
            dir: root.join("networks"),
        }
    }

    fn lock(&self) -> Result<std::fs::File, StoreError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let path = self.dir.join(".lock");
        crate::file_lock::lock_exclusive(&path).map_err(io(&path))
    }

    fn net_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The namespace file of network `name`.
    pub fn netns_path(&self, name: &str) -> PathBuf {
        self.net_dir(name).join("netns")
    }

    fn dns_dir(&self, name: &str) -> PathBuf {
        self.net_dir(name).join("dns")
    }

    /// Every network, by name.
    pub fn list(&self) -> Result<Vec<UserNetwork>, StoreError> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !name.starts_with('.') && e.path().join("network.json").exists() {
                out.push(self.get(&name)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Network `name` (by name, or by a unique ID prefix).
    pub fn get(&self, key: &str) -> Result<UserNetwork, StoreError> {
        let path = self.net_dir(key).join("network.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt(path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !key.contains('/') => {
                self.by_id_prefix(key)
            }
            Err(e) => Err(StoreError::Io(path, e)),
        }
    }

    fn by_id_prefix(&self, key: &str) -> Result<UserNetwork, StoreError> {
        let not_found = || StoreError::NotFound(key.to_string());
        if key.len() < 3 || !key.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(not_found());
        }
        let found: Vec<_> = self
            .list()?
            .into_iter()
            .filter(|n| n.id.starts_with(key))
            .collect();
        match <[UserNetwork; 1]>::try_from(found) {
            Ok([n]) => Ok(n),
            Err(_) => Err(not_found()),
        }
    }

    fn save(&self, net: &UserNetwork) -> Result<(), StoreError> {
        let dir = self.net_dir(&net.name);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let tmp = dir.join(".network.json.tmp");
        let path = dir.join("network.json");
        let bytes =
            serde_json::to_vec_pretty(net).map_err(|e| StoreError::Corrupt(path.clone(), e))?;
        std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// Creates network `name` on `subnet` (default: the next free
    /// 10.89.N.0/24) with its namespace and bridge.
    pub fn create(&self, name: &str, subnet: Option<Subnet>) -> Result<UserNetwork, StoreError> {
        check_name(name)?;
        let _lock = self.lock()?;
        let existing = self.list()?;
        if existing.iter().any(|n| n.name == name) {
            return Err(StoreError::Exists(name.to_string()));
        }
        let subnet = match subnet {
            Some(s) => s,
            None => Subnet::next_default(&existing.iter().map(|n| n.subnet).collect::<Vec<_>>())?,
        };
        if let Some(other) = existing.iter().find(|n| n.subnet.overlaps(&subnet)) {
            return Err(StoreError::Overlap(
                subnet.to_string(),
                other.name.clone(),
                other.subnet.to_string(),
            ));
        }
        // A container on a user network has the default network's subnet
        // too, on its outbound interface (docs/networking.md).
        let default = super::DefaultNetwork::subnet();
        if default.overlaps(&subnet) {
            return Err(StoreError::Overlap(
                subnet.to_string(),
                "default".into(),
                default.to_string(),
            ));
        }
        let net = UserNetwork {
            name: name.to_string(),
            id: crate::container::store::new_id(),
            subnet,
            gateway: subnet.gateway(),
            created: crate::container::state::now_rfc3339(),
            endpoints: BTreeMap::new(),
        };
        let dir = self.net_dir(name);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let made = netns::ensure(&self.netns_path(name), subnet)
            .map_err(StoreError::from)
            .and_then(|_| self.write_dns(&net))
            .and_then(|()| self.save(&net));
        if let Err(e) = made {
            self.destroy(name);
            return Err(e);
        }
        self.event(&net, "create", &[]);
        Ok(net)
    }

    /// Rewrites the DNS configuration (starting the responder if needed).
    fn write_dns(&self, net: &UserNetwork) -> Result<(), StoreError> {
        let text = dns::config_text(net.gateway, net.endpoints.iter());
        dns::update(
            &self.dns_dir(&net.name),
            &net.name,
            &text,
            &self.netns_path(&net.name),
        )?;
        Ok(())
    }

    /// Stops the responder, removes the namespace and the directory.
    fn destroy(&self, name: &str) {
        dns::stop(&self.dns_dir(name));
        if let Err(e) = netns::remove(&self.netns_path(name)) {
            tracing::warn!("{e}");
        }
        let _ = std::fs::remove_dir_all(self.net_dir(name));
    }

    /// Removes network `name`; `users` are the containers configured on
    /// it (any state): with one, nothing changes.
    pub fn remove(&self, key: &str, users: &[String]) -> Result<String, StoreError> {
        let _lock = self.lock()?;
        let net = self.get(key)?;
        if !users.is_empty() {
            return Err(StoreError::InUse(net.name, users.join(", ")));
        }
        self.destroy(&net.name);
        self.event(&net, "destroy", &[]);
        Ok(net.name)
    }

    /// Records an event about `net` (Docker's attributes: name, type).
    fn event(&self, net: &UserNetwork, action: &str, extra: &[(&str, &str)]) {
        let mut attributes = vec![("name", net.name.as_str()), ("type", "bridge")];
        attributes.extend_from_slice(extra);
        let root = self.dir.parent().unwrap_or(&self.dir);
        let event = crate::events::Event::now(Kind::Network, action, &net.id, &attributes);
        crate::events::record(root, &event);
    }

    /// Adds a running container's endpoint to network `name` (an address,
    /// its names in DNS); makes the namespace and responder again if a
    /// reboot took them.
    pub fn join(
        &self,
        name: &str,
        id: &str,
        container: &str,
        aliases: &[String],
        mac: &str,
    ) -> Result<(UserNetwork, Endpoint), StoreError> {
        let _lock = self.lock()?;
        let mut net = self.get(name)?;
        if netns::ensure(&self.netns_path(name), net.subnet)? {
            // A new namespace (the old one went with a reboot or an
            // unmount): a responder left in the old one answers nobody.
            dns::stop(&self.dns_dir(name));
        }
        net.endpoints.remove(id);
        let taken: Vec<Ipv4Addr> = net.endpoints.values().map(|e| e.ip).collect();
        let ep = Endpoint {
            name: container.to_string(),
            aliases: aliases.to_vec(),
            ip: net.subnet.allocate(&taken)?,
            mac: mac.to_string(),
        };
        net.endpoints.insert(id.to_string(), ep.clone());
        self.save(&net)?;
        self.write_dns(&net)?;
        self.event(&net, "connect", &[("container", id)]);
        Ok((net, ep))
    }

    /// Removes container `id`'s endpoint from network `name`: its address
    /// is free again and its names stop resolving. Nothing if it has none.
    pub fn leave(&self, name: &str, id: &str) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        let mut net = match self.get(name) {
            Ok(n) => n,
            Err(StoreError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if net.endpoints.remove(id).is_some() {
            self.save(&net)?;
            self.write_dns(&net)?;
            self.event(&net, "disconnect", &[("container", id)]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A network whose namespace and responder are gone (as after a
    /// reboot) gets both again when a container joins; addresses are
    /// handed out in order and freed on leave; rm takes it all away.
    /// Needs root and aardvark-dns.
    #[test]
    fn join_remakes_a_lost_namespace_and_addresses_come_and_go() {
        let root = tempfile::tempdir().unwrap();
        let store = NetworkStore::new(root.path());
        let net = store
            .create("lost", Some(Subnet::parse("10.78.0.0/24").unwrap()))
            .unwrap();
        assert_eq!(net.gateway, Ipv4Addr::new(10, 78, 0, 1));
        let ns = store.netns_path("lost");
        let dns_dir = store.dns_dir("lost");
        assert!(netns::is_mounted(&ns) && dns::running_pid(&dns_dir).is_some());
        // What a reboot leaves: the files, no mount, no process.
        dns::stop(&dns_dir);
        netns::remove(&ns).unwrap();
        std::fs::write(&ns, b"").unwrap();
        let (_, a) = store
            .join("lost", "c1", "one", &[], "02:00:00:00:00:01")
            .unwrap();
        assert!(netns::is_mounted(&ns) && dns::running_pid(&dns_dir).is_some());
        let (_, b) = store
            .join("lost", "c2", "two", &["alias".into()], "02:00:00:00:00:02")
            .unwrap();
        assert_eq!(
            (a.ip, b.ip),
            (Ipv4Addr::new(10, 78, 0, 2), Ipv4Addr::new(10, 78, 0, 3))
        );
        let conf = std::fs::read_to_string(dns_dir.join("lost")).unwrap();
        assert_eq!(
            conf,
            "10.78.0.1\nc1 10.78.0.2  one\nc2 10.78.0.3  two,alias\n"
        );
        store.leave("lost", "c1").unwrap();
        let (_, c) = store
            .join("lost", "c3", "three", &[], "02:00:00:00:00:03")
            .unwrap();
        assert_eq!(
            c.ip,
            Ipv4Addr::new(10, 78, 0, 2),
            "c1's address is free again"
        );
        assert_eq!(store.remove("lost", &[]).unwrap(), "lost");
        assert!(!netns::is_mounted(&ns) && dns::running_pid(&dns_dir).is_none());
        assert!(matches!(store.get("lost"), Err(StoreError::NotFound(_))));
    }

    #[test]
    fn names_follow_docker_rules_and_builtins_are_reserved() {
        assert!(check_name("my-net_1.a").is_ok());
        for bad in ["default", "host", "none", "bridge", "", "-x", "a/b", "a b"] {
            assert!(
                matches!(check_name(bad), Err(StoreError::BadName(..))),
                "{bad}"
            );
        }
    }

    #[test]
    fn network_records_round_trip_and_unknown_names_are_not_found() {
        let root = tempfile::tempdir().unwrap();
        let store = NetworkStore::new(root.path());
        assert!(store.list().unwrap().is_empty());
        let mut net = UserNetwork {
            name: "n1".into(),
            id: "ab".repeat(32),
            subnet: Subnet::parse("10.89.0.0/24").unwrap(),
            gateway: "10.89.0.1".parse().unwrap(),
            created: "2026-01-01T00:00:00Z".into(),
            endpoints: BTreeMap::new(),
        };
        net.endpoints.insert(
            "c1".into(),
            Endpoint {
                name: "web".into(),
                aliases: vec!["www".into()],
                ip: "10.89.0.2".parse().unwrap(),
                mac: "02:00:00:00:00:01".into(),
            },
        );
        store.save(&net).unwrap();
        assert_eq!(store.get("n1").unwrap(), net);
        assert_eq!(store.get("ababab").unwrap().name, "n1", "by ID prefix");
        assert_eq!(store.list().unwrap(), vec![net]);
        assert!(matches!(store.get("n2"), Err(StoreError::NotFound(_))));
        assert!(matches!(
            store.remove("n1", &["web".into()]),
            Err(StoreError::InUse(..))
        ));
        assert!(store.get("n1").is_ok(), "a refused rm changes nothing");
    }
}
