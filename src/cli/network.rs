//! `hull network create|ls|inspect|rm|prune|connect|disconnect`: user
//! networks (see `crate::network::store` and docs/networking.md).

use std::path::Path;

use clap::Subcommand;

use crate::container::store::ContainerStore;
use crate::network::store::{NetworkStore, UserNetwork};
use crate::network::subnet::Subnet;
use crate::network::NetworkMode;

/// Network commands.
#[derive(Subcommand, Debug)]
pub enum NetworkCommand {
    /// Create a network: a bridge in a network namespace of hull's, with
    /// names served on its gateway address (containers on it reach the
    /// outside through a second interface of their own).
    ///
    /// The subnet may not overlap another network's, nor 10.0.2.0/24
    /// (the default network's, which every container's outbound
    /// interface has).
    Create {
        /// IPv4 subnet in CIDR form (default: the next free 10.89.N.0/24).
        #[arg(long)]
        subnet: Option<String>,
        /// Only `bridge` (Docker's default driver) is supported.
        #[arg(short = 'd', long, default_value = "bridge")]
        driver: String,
        /// The network's name.
        name: String,
    },
    /// List networks (the built-in `default` and `none` too).
    #[command(alias = "list")]
    Ls {
        /// Only the IDs of user networks.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show networks as JSON, with the containers running on them.
    Inspect {
        /// Names or IDs.
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove networks no container uses.
    #[command(alias = "remove")]
    Rm {
        /// Names or IDs.
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove every user network no container uses.
    Prune {
        /// Do not ask (hull never asks; accepted for Docker's scripts).
        #[arg(short, long)]
        force: bool,
    },
    /// Put a stopped container on a network for its next start (a
    /// container is on one network: this replaces `default` or `none`;
    /// a running VM's interfaces cannot change).
    Connect {
        /// More names of the container on the network.
        #[arg(long = "alias", value_name = "NAME")]
        aliases: Vec<String>,
        /// The network.
        network: String,
        /// The container.
        container: String,
    },
    /// Take a stopped container off a network (it is on `none` after).
    Disconnect {
        /// Accepted for Docker's scripts (the container must be stopped).
        #[arg(short, long)]
        force: bool,
        /// The network.
        network: String,
        /// The container.
        container: String,
    },
    /// The DNS relay of a network (started with its DNS responder).
    #[command(name = "__dns-relay", hide = true)]
    DnsRelay {
        /// The network's namespace file.
        netns: std::path::PathBuf,
        /// Where to write its PID once it listens.
        pid_file: std::path::PathBuf,
    },
}

/// Errors of the network commands that are not the store's.
#[derive(Debug, thiserror::Error)]
pub enum NetworkCommandError {
    /// A driver other than bridge.
    #[error("network driver {0:?} is not supported (only bridge)")]
    Driver(String),
    /// connect/disconnect of a running container.
    #[error("container {0} is running: a VM's network interfaces cannot change while it runs (no hot-plug yet); stop it first")]
    Running(String),
    /// connect of a container already on a user network.
    #[error("container {0} is already on network {1}: a container is on one network at a time (disconnect it first)")]
    OneInterface(String, String),
    /// disconnect of a container not on the network.
    #[error("container {0} is not connected to network {1}")]
    NotConnected(String, String),
    /// An alias no DNS name can be.
    #[error("invalid --alias {0:?} (allowed: [a-zA-Z0-9][a-zA-Z0-9_.-]*)")]
    BadAlias(String),
    /// A container-mode container.
    #[error("container {0}: user networks are not supported with --isolation container yet")]
    Isolation(String),
}

/// Runs a network command.
pub fn run(cmd: NetworkCommand, root: &Path) -> anyhow::Result<u8> {
    let store = NetworkStore::new(root);
    match cmd {
        NetworkCommand::Create {
            subnet,
            driver,
            name,
        } => {
            super::exit::require_root("user networks (hull network create)")?;
            if driver != "bridge" {
                return Err(NetworkCommandError::Driver(driver).into());
            }
            let subnet = subnet.as_deref().map(Subnet::parse).transpose()?;
            let net = store.create(&name, subnet)?;
            println!("{}", net.id);
        }
        NetworkCommand::Ls { quiet } => list(&store, quiet)?,
        NetworkCommand::DnsRelay { netns, pid_file } => {
            crate::network::dns_relay::run(&netns, &pid_file)?;
        }
        NetworkCommand::Inspect { networks } => inspect(&store, &networks)?,
        NetworkCommand::Rm { networks } => {
            for key in &networks {
                let net = store.get(key)?;
                let users = users_of(root, &net.name)?;
                store.remove(&net.name, &users)?;
                println!("{key}");
            }
        }
        NetworkCommand::Prune { force: _ } => {
            let removed = prune(root)?;
            if !removed.is_empty() {
                println!("Deleted Networks:\n{}", removed.join("\n"));
            }
        }
        NetworkCommand::Connect {
            aliases,
            network,
            container,
        } => connect(root, &network, &container, &aliases)?,
        NetworkCommand::Disconnect {
            force: _,
            network,
            container,
        } => disconnect(root, &network, &container)?,
    }
    Ok(0)
}

/// A stopped VM container named `key`, or why it cannot change network.
fn stopped_container(
    store: &ContainerStore,
    key: &str,
) -> anyhow::Result<crate::container::store::Container> {
    let c = store.find(key)?;
    if c.state.status == crate::container::state::Status::Running {
        return Err(NetworkCommandError::Running(key.to_string()).into());
    }
    if c.config.isolation == crate::oci::Isolation::Container {
        return Err(NetworkCommandError::Isolation(key.to_string()).into());
    }
    Ok(c)
}

/// `network connect`: the stopped container starts on `network` next time.
fn connect(root: &Path, network: &str, key: &str, aliases: &[String]) -> anyhow::Result<()> {
    let net = NetworkStore::new(root).get(network)?;
    if let Some(bad) = aliases
        .iter()
        .find(|a| !crate::container::spec::valid_name(a))
    {
        return Err(NetworkCommandError::BadAlias(bad.clone()).into());
    }
    let store = ContainerStore::new(root);
    let c = stopped_container(&store, key)?;
    if let NetworkMode::User(current) = &c.config.network {
        return Err(NetworkCommandError::OneInterface(key.to_string(), current.clone()).into());
    }
    let mut config = c.config.clone();
    config.network = NetworkMode::User(net.name);
    config.network_aliases = aliases.to_vec();
    store.save_config(&c.dir, &config)?;
    Ok(())
}

/// `network disconnect`: the stopped container has no network after.
fn disconnect(root: &Path, network: &str, key: &str) -> anyhow::Result<()> {
    let net = NetworkStore::new(root).get(network)?;
    let store = ContainerStore::new(root);
    let c = store.find(key)?;
    if c.config.network != NetworkMode::User(net.name.clone()) {
        return Err(NetworkCommandError::NotConnected(key.to_string(), net.name).into());
    }
    let c = stopped_container(&store, key)?;
    let mut config = c.config.clone();
    config.network = NetworkMode::None;
    config.network_aliases.clear();
    store.save_config(&c.dir, &config)?;
    Ok(())
}

/// Removes every user network no container is configured on (`network
/// prune`, `system prune`); returns their names.
pub fn prune(root: &Path) -> anyhow::Result<Vec<String>> {
    let store = NetworkStore::new(root);
    let mut removed = Vec::new();
    for net in store.list()? {
        if users_of(root, &net.name)?.is_empty() {
            removed.push(store.remove(&net.name, &[])?);
        }
    }
    Ok(removed)
}

/// The containers (any state) configured on network `name`, by name.
fn users_of(root: &Path, name: &str) -> anyhow::Result<Vec<String>> {
    let mode = NetworkMode::User(name.to_string());
    Ok(ContainerStore::new(root)
        .list()?
        .into_iter()
        .filter(|c| c.config.network == mode)
        .map(|c| c.config.name)
        .collect())
}

/// Docker's `network ls` table, the built-in networks first.
fn list(store: &NetworkStore, quiet: bool) -> anyhow::Result<()> {
    let nets = store.list()?;
    if quiet {
        for n in &nets {
            println!("{}", &n.id[..12]);
        }
        return Ok(());
    }
    println!(
        "{:<14}{:<20}{:<10}{:<20}SCOPE",
        "NETWORK ID", "NAME", "DRIVER", "SUBNET"
    );
    for (name, driver) in [("default", "passt"), ("none", "null")] {
        println!("{:<14}{name:<20}{driver:<10}{:<20}local", "-", "-");
    }
    for n in &nets {
        println!(
            "{:<14}{:<20}{:<10}{:<20}local",
            &n.id[..12],
            n.name,
            "bridge",
            n.subnet.to_string()
        );
    }
    Ok(())
}

/// Docker's shape of `network inspect`.
fn inspect_json(net: &UserNetwork) -> serde_json::Value {
    let containers: serde_json::Map<String, serde_json::Value> = net
        .endpoints
        .iter()
        .map(|(id, ep)| {
            (
                id.clone(),
                serde_json::json!({
                    "Name": ep.name,
                    "Aliases": ep.aliases,
                    "MacAddress": ep.mac,
                    "IPv4Address": format!("{}/{}", ep.ip, net.subnet.prefix),
                }),
            )
        })
        .collect();
    serde_json::json!({
        "Name": net.name,
        "Id": net.id,
        "Created": net.created,
        "Scope": "local",
        "Driver": "bridge",
        "IPAM": {
            "Driver": "default",
            "Config": [{"Subnet": net.subnet.to_string(), "Gateway": net.gateway.to_string()}],
        },
        "Internal": true,
        "Containers": containers,
    })
}

fn inspect(store: &NetworkStore, keys: &[String]) -> anyhow::Result<()> {
    let out = keys
        .iter()
        .map(|k| store.get(k).map(|n| inspect_json(&n)))
        .collect::<Result<Vec<_>, _>>()?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
