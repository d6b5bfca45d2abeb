//! `hull volume create|ls|inspect|rm|prune`.

use std::path::Path;

use clap::Subcommand;
use serde_json::json;

use super::container::volumes::users_of;
use crate::container::fs_vm::{Access, FsVm};
use crate::volume::{Volume, VolumeError, VolumeStore, DEFAULT_SIZE};

/// Volume subcommands.
#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Create a volume (a sparse ext4 disk attached to containers that
    /// mount it); prints its name.
    Create {
        /// Driver options: `size=SIZE` (default 8g, sparse).
        #[arg(short = 'o', long = "opt")]
        opts: Vec<String>,
        /// Accepted for Docker's scripts: the only driver is `local`.
        #[arg(short = 'd', long, default_value = "local")]
        driver: String,
        /// Name (default: a random one).
        name: Option<String>,
    },
    /// List volumes.
    #[command(alias = "list")]
    Ls {
        /// Only names.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show volumes' details as JSON.
    Inspect {
        /// Go template.
        #[arg(short = 'f', long)]
        format: Option<String>,
        /// Volumes.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove volumes (never one a container uses).
    #[command(alias = "remove")]
    Rm {
        /// Accepted for Docker's scripts (a used volume is never removed).
        #[arg(short, long)]
        force: bool,
        /// Volumes.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Write a volume's files as a tar archive (made in a helper microVM).
    Export {
        /// Write to a file instead of stdout.
        #[arg(short = 'o', long)]
        output: Option<std::path::PathBuf>,
        /// Volume.
        name: String,
    },
    /// Unpack a tar archive (`-` for stdin) into a volume (made if missing),
    /// in a helper microVM.
    Import {
        /// Volume.
        name: String,
        /// The tar archive.
        file: String,
    },
    /// Remove anonymous volumes no container uses (`-a`: every unused one).
    Prune {
        /// Named volumes too.
        #[arg(short, long)]
        all: bool,
        /// Do not ask (hull never asks).
        #[arg(short, long)]
        force: bool,
    },
}

/// Runs `hull volume ...`.
pub fn run(cmd: VolumeCommand, root: &Path) -> anyhow::Result<u8> {
    let store = VolumeStore::new(root);
    match cmd {
        VolumeCommand::Create { opts, driver, name } => {
            if driver != "local" {
                anyhow::bail!("volume driver {driver:?} is not supported (only local)");
            }
            let size = size_option(&opts)?;
            let v = store.create(name.as_deref(), size)?;
            println!("{}", v.meta.name);
            Ok(0)
        }
        VolumeCommand::Ls { quiet } => ls(&store, quiet),
        VolumeCommand::Inspect { format, names } => {
            let values = names
                .iter()
                .map(|n| store.get(n).map(|v| inspect_json(root, &v)))
                .collect::<Result<Vec<_>, _>>()?;
            super::output::print_inspected(&values, format.as_deref())?;
            Ok(0)
        }
        VolumeCommand::Rm { force: _, names } => {
            for n in &names {
                store.remove(n, &users_of(root, n))?;
                println!("{n}");
            }
            Ok(0)
        }
        VolumeCommand::Prune { all, force: _ } => prune(root, &store, all),
        VolumeCommand::Export { output, name } => export(root, &store, &name, output.as_deref()),
        VolumeCommand::Import { name, file } => import(root, &store, &name, &file),
    }
}

/// `volume export`: the volume's files as a tar, made by a helper VM
/// that mounts it read-only (a running container may read it meanwhile,
/// none may write it).
fn export(
    root: &Path,
    store: &VolumeStore,
    name: &str,
    output: Option<&Path>,
) -> anyhow::Result<u8> {
    use std::io::IsTerminal;
    if output.is_none() && std::io::stdout().is_terminal() {
        return Err(super::container::FsCommandError::Terminal.into());
    }
    let v = store.get(name)?;
    let mut vm = FsVm::open_volume(root, &v, Access::Read)?;
    let len = vm.export_root()?;
    super::container::write_output(vm.output(len)?, output)?;
    vm.finish()?;
    Ok(0)
}

/// `volume import`: a tar unpacked into the volume by a helper VM that is
/// its only writer.
fn import(root: &Path, store: &VolumeStore, name: &str, file: &str) -> anyhow::Result<u8> {
    let mut tar = FsVm::input_file(root)?;
    if file == "-" {
        std::io::copy(&mut std::io::stdin().lock(), &mut tar)?;
    } else {
        let mut f =
            std::fs::File::open(file).map_err(|e| anyhow::anyhow!("cannot read {file}: {e}"))?;
        std::io::copy(&mut f, &mut tar)?;
    }
    let existed = store.get(name).is_ok();
    let mut v = store.create(Some(name), DEFAULT_SIZE)?;
    let unpacked =
        FsVm::open_volume(root, &v, Access::Write(tar.path().to_path_buf())).and_then(|mut vm| {
            vm.apply_tar("/")?;
            vm.finish()
        });
    if let Err(e) = unpacked {
        if !existed {
            // A failed import leaves no volume it made.
            let _ = store.remove(name, &[]);
        }
        return Err(e);
    }
    // Its content is the archive's: never filled from an image.
    v.mark_populated()?;
    Ok(0)
}

/// `--opt size=SIZE` (Docker units); the default otherwise.
fn size_option(opts: &[String]) -> anyhow::Result<u64> {
    let mut size = DEFAULT_SIZE;
    for o in opts {
        match o.split_once('=') {
            Some(("size", v)) => {
                let mib =
                    crate::units::parse_mib(v).map_err(|_| VolumeError::BadOption(o.clone()))?;
                if mib < 16 {
                    return Err(VolumeError::BadOption(format!("{o} (the minimum is 16m)")).into());
                }
                size = mib << 20;
            }
            _ => return Err(VolumeError::BadOption(o.clone()).into()),
        }
    }
    Ok(size)
}

fn ls(store: &VolumeStore, quiet: bool) -> anyhow::Result<u8> {
    let volumes = store.list()?;
    if quiet {
        for v in &volumes {
            println!("{}", v.meta.name);
        }
        return Ok(0);
    }
    let mut table = vec![vec!["DRIVER".to_string(), "VOLUME NAME".to_string()]];
    for v in &volumes {
        table.push(vec!["local".into(), v.meta.name.clone()]);
    }
    super::image::format::print_table(&table);
    Ok(0)
}

/// A volume as Docker's `volume inspect` shows it, with hull's disk.
fn inspect_json(root: &Path, v: &Volume) -> serde_json::Value {
    json!({
        "CreatedAt": v.meta.created,
        "Driver": "local",
        "Labels": {},
        "Mountpoint": v.disk(),
        "Name": v.meta.name,
        "Options": {"size": v.meta.size.to_string()},
        "Scope": "local",
        "UsageData": {
            "Size": v.disk_usage(),
            "RefCount": users_of(root, &v.meta.name).len(),
        },
        "Anonymous": v.meta.anonymous,
    })
}

/// Removes the unused volumes (anonymous ones only unless `all`);
/// returns their names and the bytes their disks held.
fn remove_unused(
    root: &Path,
    store: &VolumeStore,
    all: bool,
) -> anyhow::Result<(Vec<String>, u64)> {
    let mut freed = 0;
    let mut removed = Vec::new();
    for v in store.list()? {
        if (v.meta.anonymous || all) && users_of(root, &v.meta.name).is_empty() {
            freed += v.disk_usage();
            store.remove(&v.meta.name, &[])?;
            removed.push(v.meta.name);
        }
    }
    Ok((removed, freed))
}

/// `system prune --volumes`: the unused anonymous volumes; returns the
/// bytes freed.
pub fn prune_anonymous(root: &Path) -> anyhow::Result<u64> {
    let (removed, freed) = remove_unused(root, &VolumeStore::new(root), false)?;
    if !removed.is_empty() {
        println!("Deleted Volumes:");
        for n in &removed {
            println!("{n}");
        }
        println!();
    }
    Ok(freed)
}

fn prune(root: &Path, store: &VolumeStore, all: bool) -> anyhow::Result<u8> {
    let (removed, freed) = remove_unused(root, store, all)?;
    if !removed.is_empty() {
        println!("Deleted Volumes:");
        for n in &removed {
            println!("{n}");
        }
        println!();
    }
    println!(
        "Total reclaimed space: {}",
        super::image::format::size(freed)
    );
    Ok(0)
}

/// The `Local Volumes` row of `system df`: total, in use, size, what
/// unused ones hold.
pub fn df_counts(root: &Path) -> (usize, usize, u64, u64) {
    let volumes = VolumeStore::new(root).list().unwrap_or_default();
    let (mut active, mut size, mut unused) = (0, 0, 0);
    for v in &volumes {
        let bytes = v.disk_usage();
        size += bytes;
        if users_of(root, &v.meta.name).is_empty() {
            unused += bytes;
        } else {
            active += 1;
        }
    }
    (volumes.len(), active, size, unused)
}
