//! `hull port` and `hull inspect`: a container's published ports, and its
//! configuration and state as Docker-shaped JSON.

use std::path::Path;

use super::CommandError;
use crate::container::engine;
use crate::container::state::Status;
use crate::container::store::{Container, ContainerStore, StoreError};
use crate::ports;

/// Runs `hull port`.
pub fn port(store: &ContainerStore, container: &str, query: Option<&str>) -> anyhow::Result<u8> {
    let c = store.find(container)?;
    print_ports(&c, query)
}

/// Runs `hull inspect`: one JSON array for all the containers, or each
/// through `--format`.
pub fn inspect(
    root: &Path,
    store: &ContainerStore,
    containers: &[String],
    format: Option<&str>,
) -> anyhow::Result<u8> {
    let mut out = Vec::new();
    for name in containers {
        match store.find(name) {
            Ok(c) => out.push(inspect_json(root, &c)),
            // As `docker inspect`: an image of that name, if there is one.
            Err(e @ StoreError::NotFound(_)) => match images::Store::open(root)?.image(name) {
                Ok(image) => out.push(crate::cli::image::image_json(&image)?),
                Err(_) => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        }
    }
    crate::cli::output::print_inspected(&out, format)?;
    Ok(0)
}

/// `hull port`: every binding as `80/tcp -> 0.0.0.0:8080`, or with a port
/// only its host addresses.
fn print_ports(c: &Container, query: Option<&str>) -> anyhow::Result<u8> {
    let mut bindings = c.state.ports.clone();
    bindings.sort_by_key(|b| b.container_port);
    match query {
        None => {
            for b in &bindings {
                println!("{}/tcp -> {}", b.container_port, b.host_addr());
            }
        }
        Some(q) => {
            let port = ports::spec::parse_query(q)?;
            let matching: Vec<_> = bindings
                .iter()
                .filter(|b| b.container_port == port)
                .collect();
            if matching.is_empty() {
                return Err(CommandError::NoPublicPort(port, c.config.name.clone()).into());
            }
            for b in matching {
                println!("{}", b.host_addr());
            }
        }
    }
    Ok(0)
}

/// Docker's `{"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}`.
fn port_map<'a>(
    entries: impl Iterator<Item = (u16, Option<std::net::IpAddr>, u16)> + 'a,
) -> serde_json::Map<String, serde_json::Value> {
    let mut map = serde_json::Map::new();
    for (container_port, ip, host_port) in entries {
        let list = map
            .entry(format!("{container_port}/tcp"))
            .or_insert_with(|| serde_json::json!([]));
        if let Some(list) = list.as_array_mut() {
            list.push(serde_json::json!({
                "HostIp": ip.map(|i| i.to_string()).unwrap_or_default(),
                "HostPort": if host_port == 0 { String::new() } else { host_port.to_string() },
            }));
        }
    }
    map
}

/// Docker's NetworkSettings: the published ports and the addresses.
fn network_settings(root: &Path, c: &Container, ports: serde_json::Value) -> serde_json::Value {
    let running = c.state.status == Status::Running;
    let settings = crate::network::settings(root, &c.config.network, &c.config.id, running);
    let mut v = serde_json::to_value(&settings).unwrap_or_default();
    if let Some(map) = v.as_object_mut() {
        map.insert("Ports".into(), ports);
    }
    v
}

/// Docker's State: zero values (0, "", year 1) where nothing happened yet,
/// never null, so scripts and templates read numbers and strings.
fn state_json(c: &Container) -> serde_json::Value {
    const NEVER: &str = "0001-01-01T00:00:00Z";
    let running = c.state.status == Status::Running;
    serde_json::json!({
        "Status": c.state.status,
        "Running": running,
        "Paused": false,
        "Dead": c.state.status == Status::Dead,
        // The process that holds the guest: the confined VMM process (the
        // hull process supervising it, `VM.VmmPid`, when the VM runs on
        // one of its threads).
        "Pid": if running { c.state.vm_pid.or(c.state.vmm_pid).unwrap_or(0) } else { 0 },
        "ExitCode": c.state.exit_code.unwrap_or(0),
        "Error": c.state.error.clone().unwrap_or_default(),
        "StartedAt": c.state.started_at.as_deref().unwrap_or(NEVER),
        "FinishedAt": c.state.finished_at.as_deref().unwrap_or(NEVER),
    })
}

fn inspect_json(root: &Path, c: &Container) -> serde_json::Value {
    // Exposed ports without a binding show as null while running, as in Docker.
    let mut live = port_map(
        c.state
            .ports
            .iter()
            .map(|b| (b.container_port, Some(b.host_ip), b.host_port)),
    );
    if c.state.status == Status::Running {
        for e in &c.config.exposed_ports {
            if let Ok(Some(p)) = ports::spec::parse_exposed(e) {
                live.entry(format!("{p}/tcp"))
                    .or_insert(serde_json::Value::Null);
            }
        }
    }
    let requested = port_map(
        c.config
            .ports
            .iter()
            .map(|p| (p.container_port, p.host_ip, p.host_port)),
    );
    let exposed: serde_json::Map<String, serde_json::Value> = c
        .config
        .exposed_ports
        .iter()
        .map(|e| (e.clone(), serde_json::json!({})))
        .collect();
    serde_json::json!({
        "Id": c.config.id,
        "Name": format!("/{}", c.config.name),
        "Created": c.config.created,
        "Image": c.config.image_id,
        "Config": {
            "Image": c.config.image,
            "Cmd": c.config.argv,
            "Env": c.config.env,
            "WorkingDir": c.config.cwd,
            "User": c.config.user,
            "Hostname": c.config.hostname,
            "ExposedPorts": exposed,
            "Labels": c.config.labels,
        },
        "State": state_json(c),
        "HostConfig": {
            "AutoRemove": c.config.auto_remove,
            "ReadonlyRootfs": c.config.read_only,
            "PortBindings": requested,
            "PublishAllPorts": c.config.publish_all,
            "Isolation": c.config.isolation.as_str(),
            "Runtime": c.config.runtime,
        },
        "NetworkSettings": network_settings(root, c, serde_json::Value::Object(live)),
        "Mounts": mounts(root, c),
        "Container": (c.config.isolation == crate::oci::Isolation::Container).then(|| serde_json::json!({
            "Pid": c.state.process_id,
            "Runtime": crate::oci::runtime::Runtime::find(c.config.runtime.as_deref()).ok().map(|r| r.path),
            "Bundle": c.dir.join("bundle"),
            "LowerDir": crate::oci::lower::LowerCache::new(root).path_of(&c.config.layers, userns_shift(c)),
            "UserNamespace": c.config.userns.clone().unwrap_or_else(|| crate::oci::userns::UserNamespace::Host {
                reason: "created before hull used user namespaces".into(),
            }),
        })),
        "VM": {
            "VCPUs": c.config.cpus,
            "MemoryMiB": c.config.mem_mib,
            "VmmPid": c.state.vmm_pid,
            "VmProcessPid": c.state.vm_pid,
            "Kernel": crate::guest::files::kernel_for(root, c.config.cpus).ok(),
            "VsockSocket": engine::socket_path(root, &c.config.id),
            "Devices": devices(root, c),
        },
    })
}

/// The container VM's devices: what each disk holds, with the host file
/// behind the container's own disks. A `--rm` container has a second
/// disk too (a scratch file the guest leaves unmounted): its writable
/// layer is tmpfs, but the VM still has the disk.
fn devices(root: &Path, c: &Container) -> serde_json::Value {
    let vdb = if c.config.auto_remove {
        format!(
            "scratch disk (virtio-blk, {} KiB, not mounted: the writable layer is tmpfs)",
            engine::SCRATCH_DISK_BYTES >> 10
        )
    } else {
        "writable layer (virtio-blk)".to_string()
    };
    let volumes = crate::volume::VolumeStore::new(root);
    let mut devices = serde_json::json!({
        "vda": "image root filesystem (virtio-blk, read-only)",
        "vdb": vdb,
        "vsock": "virtio-vsock (hybrid, Unix socket)",
        "Disks": {
            "vdb": engine::second_disk(&c.dir, c.config.auto_remove),
        },
    });
    for (i, m) in c.config.mounts.iter().enumerate() {
        let name = format!("vd{}", (b'c' + i as u8) as char);
        devices[&name] = format!("volume {} at {} (virtio-blk)", m.name, m.target).into();
        devices["Disks"][&name] = volumes
            .get(&m.name)
            .map(|v| v.disk().display().to_string())
            .unwrap_or_default()
            .into();
    }
    devices
}

/// The owner shift of a container-mode container's lower directory.
fn userns_shift(c: &Container) -> Option<agent::unpack::IdShift> {
    c.config.userns.as_ref().and_then(|u| u.shift())
}

/// Docker's `Mounts`: the container's volumes, with hull's disk files as
/// their sources, then its bind mounts.
fn mounts(root: &Path, c: &Container) -> serde_json::Value {
    let volumes = crate::volume::VolumeStore::new(root);
    let volume_mounts = c.config.mounts.iter().map(|m| {
        serde_json::json!({
            "Type": "volume",
            "Name": m.name,
            "Source": volumes.get(&m.name).map(|v| v.disk()).unwrap_or_default(),
            "Destination": m.target,
            "Driver": "local",
            "Mode": if m.read_only { "ro" } else { "" },
            "RW": !m.read_only,
        })
    });
    let bind_mounts = c.config.binds.iter().map(|b| {
        serde_json::json!({
            "Type": "bind",
            "Source": b.source,
            "Destination": b.target,
            "Mode": if b.read_only { "ro" } else { "" },
            "RW": !b.read_only,
            "Propagation": "rprivate",
        })
    });
    volume_mounts.chain(bind_mounts).collect()
}
