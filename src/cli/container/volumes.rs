//! The volumes of a new container: `-v`, `--mount`, `--volumes-from` and
//! the image's VOLUME entries, checked before anything is made, then
//! made (named ones if missing, anonymous ones new).

use std::path::Path;

use images::store::Image;

use super::run::RunArgs;
use super::CommandError;
use crate::container::store::ContainerStore;
use crate::container::ContainerConfig;
use crate::volume::bind::{self, BindMount};
use crate::volume::spec::{self, Requested, VolumeMount};
use crate::volume::{VolumeStore, DEFAULT_SIZE};

/// The mounts `args` ask for: volumes (anonymous ones still unnamed,
/// with the image's VOLUMEs that no flag covers) and bind mounts (sources
/// resolved); one error for any bad value.
pub fn requested(
    args: &RunArgs,
    image: &Image,
    store: &ContainerStore,
) -> anyhow::Result<(Vec<VolumeMount>, Vec<BindMount>)> {
    let mut mounts = Vec::new();
    let mut binds = Vec::new();
    let flags = (args.volume.iter().map(|v| spec::parse_volume_flag(v)))
        .chain(args.mount.iter().map(|m| spec::parse_mount_flag(m)));
    for flag in flags {
        match flag? {
            Requested::Volume(v) => mounts.push(v),
            Requested::Bind {
                source,
                target,
                read_only,
            } => binds.push(BindMount {
                source: bind::resolve_source(&source)?,
                target,
                read_only,
            }),
        }
    }
    for from in &args.volumes_from {
        let (name, mode) = from.split_once(':').unwrap_or((from, ""));
        let other = store.find(name)?;
        for m in other.config.mounts {
            mounts.push(VolumeMount {
                read_only: m.read_only || mode == "ro",
                anonymous: false,
                ..m
            });
        }
        for b in other.config.binds {
            binds.push(BindMount {
                read_only: b.read_only || mode == "ro",
                ..b
            });
        }
    }
    for m in &mounts {
        if !m.name.is_empty() && !crate::volume::valid_name(&m.name) {
            return Err(crate::volume::VolumeError::InvalidName(m.name.clone()).into());
        }
    }
    let taken = |target: &str, mounts: &[VolumeMount]| {
        mounts.iter().any(|m| m.target == target) || binds.iter().any(|b| b.target == target)
    };
    let cfg = image.config.config().clone().unwrap_or_default();
    let mut image_volumes: Vec<String> = cfg.volumes().clone().unwrap_or_default();
    image_volumes.sort();
    for path in image_volumes {
        let target = crate::build::engine::state::clean_absolute(&path);
        if target != "/" && !taken(&target, &mounts) {
            mounts.push(VolumeMount {
                name: String::new(),
                target,
                read_only: false,
                anonymous: true,
            });
        }
    }
    let mut targets: Vec<&str> = (mounts.iter().map(|m| m.target.as_str()))
        .chain(binds.iter().map(|b| b.target.as_str()))
        .collect();
    targets.sort();
    if let Some(w) = targets.windows(2).find(|w| w[0] == w[1]) {
        return Err(
            CommandError::Invalid("--volume", format!("duplicate mount point {}", w[0])).into(),
        );
    }
    Ok((mounts, binds))
}

/// Makes the volumes of `mounts` (named ones if missing, anonymous ones
/// new) and returns the mounts with every name set. A failure removes the
/// anonymous volumes made so far.
pub fn create(root: &Path, mounts: Vec<VolumeMount>) -> anyhow::Result<Vec<VolumeMount>> {
    let volumes = VolumeStore::new(root);
    let mut made = Vec::new();
    for mut m in mounts {
        let name = (!m.anonymous).then_some(m.name.as_str());
        match volumes.create(name, DEFAULT_SIZE) {
            Ok(v) => {
                m.name = v.meta.name;
                made.push(m);
            }
            Err(e) => {
                for m in made.iter().filter(|m| m.anonymous) {
                    let _ = volumes.remove(&m.name, &[]);
                }
                return Err(e.into());
            }
        }
    }
    Ok(made)
}

/// Removes the anonymous volumes of `config` (`--rm`, `rm -v`); named
/// ones stay, as in Docker. A volume another container still uses stays.
pub fn remove_anonymous(root: &Path, config: &ContainerConfig) {
    let volumes = VolumeStore::new(root);
    for m in config.mounts.iter().filter(|m| m.anonymous) {
        let users = users_of(root, &m.name)
            .into_iter()
            .filter(|u| *u != config.name)
            .collect::<Vec<_>>();
        if let Err(e) = volumes.remove(&m.name, &users) {
            tracing::debug!("keeping volume {}: {e}", m.name);
        }
    }
}

/// Names of the containers that mount volume `name`.
pub fn users_of(root: &Path, name: &str) -> Vec<String> {
    ContainerStore::new(root)
        .list()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.config.mounts.iter().any(|m| m.name == name))
        .map(|c| c.config.name)
        .collect()
}
