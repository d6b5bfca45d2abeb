//! `hull system prune` and `hull system df`: housekeeping of what hull
//! keeps on disk, with Docker's meaning (stopped containers, dangling or
//! unused images) plus hull's own caches (VM snapshots, prepared root
//! filesystems).

use std::path::Path;

use anyhow::Context;
use clap::Args;
use images::Store;

use super::image::format;
use crate::container::state::Status;
use crate::container::store::ContainerStore;
use crate::guest::fast_start;

/// Options of `hull system prune`.
#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Remove every image no container uses, not only dangling ones.
    #[arg(short, long)]
    all: bool,
    /// Do not ask for confirmation (hull never asks).
    #[arg(short, long)]
    force: bool,
    /// Remove anonymous volumes no container uses, too.
    #[arg(long)]
    volumes: bool,
}

/// `hull system prune`: the VM snapshots, then stopped containers, then
/// user networks no container uses, then dangling images (all unused
/// ones with `-a`).
pub fn prune(root: &Path, args: &PruneArgs) -> anyhow::Result<u8> {
    let _ = args.force;
    let snapshots = fast_start::snapshots_dir(root);
    let (count, snapshot_bytes) = fast_start::prune(&snapshots)
        .map_err(|e| anyhow::anyhow!("cannot prune {}: {e}", snapshots.display()))?;
    println!(
        "Deleted {count} VM snapshot(s), {:.1} MiB reclaimed",
        snapshot_bytes as f64 / (1 << 20) as f64
    );
    let (containers, container_bytes) = super::container::prune(root)?;
    if !containers.is_empty() {
        println!("Deleted Containers:");
        for id in &containers {
            println!("{id}");
        }
        println!();
    }
    let networks = super::network::prune(root)?;
    if !networks.is_empty() {
        println!("Deleted Networks:\n{}\n", networks.join("\n"));
    }
    let store = Store::open(root).context("cannot open the image store")?;
    let users = super::image::image_users(root)?;
    let (mut removed, mut image_bytes) = store.prune(&users)?;
    if args.all {
        let (more, bytes) = remove_unused(&store, &users)?;
        removed.extend(more);
        image_bytes += bytes;
    }
    if !removed.is_empty() {
        println!("Deleted Images:");
        for id in &removed {
            println!("deleted: {id}");
        }
        println!();
    }
    let lower_bytes = prune_lower_dirs(root, &store)?;
    let volume_bytes = if args.volumes {
        super::volume::prune_anonymous(root)?
    } else {
        0
    };
    println!(
        "Total reclaimed space: {}",
        format::size(snapshot_bytes + container_bytes + image_bytes + lower_bytes + volume_bytes)
    );
    Ok(0)
}

/// Removes the container mode's unpacked root filesystems (`oci/lower`)
/// that neither a container left nor an image left would use; returns the
/// bytes freed. An image's is kept for the user namespace new containers
/// get now, a container's for the one it was created with.
fn prune_lower_dirs(root: &Path, store: &Store) -> anyhow::Result<u64> {
    use crate::oci::lower::{chain_key, LowerCache};
    let layers_of = |image: &images::store::Image| -> Vec<(String, std::path::PathBuf)> {
        image
            .layers
            .iter()
            .map(|l| (l.digest.to_string(), l.path.clone()))
            .collect()
    };
    let shift = crate::oci::userns::choose(Path::new("/etc")).shift();
    let mut keep: std::collections::HashSet<String> = store
        .list()?
        .iter()
        .map(|row| chain_key(&layers_of(&row.image), shift))
        .collect();
    for c in ContainerStore::new(root).list()? {
        let shift = c.config.userns.as_ref().and_then(|u| u.shift());
        keep.insert(chain_key(&c.config.layers, shift));
    }
    let (count, bytes) = LowerCache::new(root).prune(&keep)?;
    if count > 0 {
        println!(
            "Deleted {count} container-mode root filesystem(s), {:.1} MiB reclaimed",
            bytes as f64 / (1 << 20) as f64
        );
    }
    Ok(bytes)
}

/// Removes every image no container was created from; returns their IDs
/// and the bytes freed.
fn remove_unused(
    store: &Store,
    users: &[images::store::ImageUser],
) -> anyhow::Result<(Vec<String>, u64)> {
    let mut removed = Vec::new();
    let mut freed = 0;
    for row in store.list()? {
        let id = row.image.id().to_string();
        if removed.contains(&id) || users.iter().any(|u| u.image_id == id) {
            continue;
        }
        let report = store.remove(&id, true, users)?;
        freed += report.freed;
        removed.push(id);
    }
    Ok((removed, freed))
}

/// `hull system df`: Docker's table, with hull's caches as rows of their
/// own.
pub fn df(root: &Path) -> anyhow::Result<u8> {
    let networks = super::network::prune(root)?;
    if !networks.is_empty() {
        println!("Deleted Networks:\n{}\n", networks.join("\n"));
    }
    let store = Store::open(root).context("cannot open the image store")?;
    let containers = ContainerStore::new(root).list()?;
    let mut table = vec![["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
        .map(String::from)
        .to_vec()];
    table.push(images_row(&store, &containers)?);

    let running = containers
        .iter()
        .filter(|c| c.state.status == Status::Running)
        .count();
    let sizes: Vec<(bool, u64)> = containers
        .iter()
        .map(|c| {
            (
                c.state.status == Status::Running,
                fast_start::disk_usage(&c.dir),
            )
        })
        .collect();
    table.push(row(
        "Containers",
        containers.len(),
        running,
        sizes.iter().map(|s| s.1).sum(),
        sizes.iter().filter(|s| !s.0).map(|s| s.1).sum(),
    ));

    // Docker's order: images, containers, volumes; then hull's caches.
    let (volumes, used, size, unused) = super::volume::df_counts(root);
    table.push(row("Local Volumes", volumes, used, size, unused));
    // Snapshots are caches: all of them can go (made again when needed).
    let snapshots = fast_start::list(&fast_start::snapshots_dir(root));
    let snapshot_bytes = snapshots
        .iter()
        .map(|(p, _)| fast_start::disk_usage(p))
        .sum();
    table.push(row(
        "VM Snapshots",
        snapshots.len(),
        0,
        snapshot_bytes,
        snapshot_bytes,
    ));
    let rootfs_dir = root.join("rootfs");
    let prepared = std::fs::read_dir(&rootfs_dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".erofs"))
                .count()
        })
        .unwrap_or(0);
    table.push(row(
        "Root filesystems",
        prepared,
        0,
        fast_start::disk_usage(&rootfs_dir),
        0,
    ));
    format::print_table(&table);
    Ok(0)
}

/// Images: total, used by a container, their size and what unused ones
/// hold.
fn images_row(
    store: &Store,
    containers: &[crate::container::store::Container],
) -> anyhow::Result<Vec<String>> {
    let mut seen = std::collections::HashSet::new();
    let (mut total, mut active, mut size, mut unused) = (0, 0, 0, 0);
    for r in store.list()? {
        let id = r.image.id().to_string();
        if !seen.insert(id.clone()) {
            continue;
        }
        total += 1;
        size += r.image.size();
        if containers.iter().any(|c| c.config.image_id == id) {
            active += 1;
        } else {
            unused += r.image.size();
        }
    }
    Ok(row("Images", total, active, size, unused))
}

fn row(kind: &str, total: usize, active: usize, size: u64, reclaimable: u64) -> Vec<String> {
    let percent = (reclaimable * 100).checked_div(size).unwrap_or(0);
    vec![
        kind.to_string(),
        total.to_string(),
        active.to_string(),
        format::size(size),
        format!("{} ({percent}%)", format::size(reclaimable)),
    ]
}
