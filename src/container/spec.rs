//! What a container runs, fixed at `hull run`/`create` time.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A container's configuration (`config.json` in its directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// 64 hex digits.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// The image as the user named it.
    pub image: String,
    /// The image's ID (config digest).
    pub image_id: String,
    /// Layer digests and blob paths, in order (for rootfs preparation).
    pub layers: Vec<(String, PathBuf)>,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Environment, `KEY=VALUE`.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// `user[:group]`.
    pub user: String,
    /// Hostname.
    pub hostname: String,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// vCPUs.
    pub cpus: u8,
    /// Remove when it exits (`--rm`): no persistent upper layer.
    pub auto_remove: bool,
    /// Read-only root filesystem.
    pub read_only: bool,
    /// Keep stdin open (`-i`).
    pub interactive: bool,
    /// Run on a pseudo-terminal (`-t`).
    #[serde(default)]
    pub tty: bool,
    /// Published ports (`-p`, and with `-P` the image's exposed TCP ports
    /// on free host ports).
    #[serde(default)]
    pub ports: Vec<crate::ports::PortSpec>,
    /// `-P` was given.
    #[serde(default)]
    pub publish_all: bool,
    /// The image's exposed ports as it lists them (`80/tcp`).
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    /// The network (`--network`); containers made before networking
    /// existed read as `none`.
    #[serde(default)]
    pub network: crate::network::NetworkMode,
    /// `--network-alias`: more names for it on a user network.
    #[serde(default)]
    pub network_aliases: Vec<String>,
    /// Creation time, RFC 3339.
    pub created: String,
    /// Labels: the image's, then `--label` (later wins), as in Docker.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Its own microVM, or a namespaced container on the host kernel
    /// (`--isolation`); containers made before it existed are VMs.
    #[serde(default)]
    pub isolation: crate::oci::Isolation,
    /// The OCI runtime of a container-mode container (`--runtime`; none:
    /// crun, else runc).
    #[serde(default)]
    pub runtime: Option<String>,
    /// The user namespace of a container-mode container, chosen when it
    /// was created (containers made before user namespaces, and VMs:
    /// none, i.e. host IDs).
    #[serde(default)]
    pub userns: Option<crate::oci::userns::UserNamespace>,
    /// Volumes mounted in it (`-v`, `--mount`, the image's VOLUMEs), in
    /// the order of their disks.
    #[serde(default)]
    pub mounts: Vec<crate::volume::spec::VolumeMount>,
    /// Host directories mounted in it (`-v /dir:/path`, `--mount
    /// type=bind`), shared through virtio-fs.
    #[serde(default)]
    pub binds: Vec<crate::volume::bind::BindMount>,
    /// A prepared image disk given instead of an image (`--rootfs-disk`,
    /// containerd's shim): used as it is, never prepared nor removed here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_disk: Option<PathBuf>,
}

/// Docker's default PATH for images whose config sets none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Errors turning image config and flags into a process.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// Neither the image nor the command line says what to run.
    #[error("No command specified")]
    NoCommand,
    /// An `-e` value that is not `KEY=VALUE` or `KEY`.
    #[error("Invalid environment variable {0:?}")]
    BadEnv(String),
}

/// The process of a container: Docker's rules for Entrypoint/Cmd and Env.
pub fn process(
    image_entrypoint: &[String],
    image_cmd: &[String],
    image_env: &[String],
    entrypoint_flag: Option<&str>,
    cmd_args: &[String],
    env_flags: &[String],
) -> Result<(Vec<String>, Vec<String>), SpecError> {
    // --entrypoint replaces the image's entrypoint and drops its Cmd;
    // arguments after the image replace Cmd.
    let (entry, cmd): (Vec<String>, Vec<String>) = match entrypoint_flag {
        Some("") => (vec![], cmd_args.to_vec()),
        Some(e) => (vec![e.to_string()], cmd_args.to_vec()),
        None if !cmd_args.is_empty() => (image_entrypoint.to_vec(), cmd_args.to_vec()),
        None => (image_entrypoint.to_vec(), image_cmd.to_vec()),
    };
    let argv: Vec<String> = entry.into_iter().chain(cmd).collect();
    if argv.is_empty() {
        return Err(SpecError::NoCommand);
    }
    let mut env: Vec<String> = image_env.to_vec();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    for flag in env_flags {
        let entry = match flag.split_once('=') {
            Some((k, _)) if !k.is_empty() => flag.clone(),
            None if !flag.is_empty() => match std::env::var(flag) {
                // `-e KEY` passes the caller's value, or nothing if unset.
                Ok(v) => format!("{flag}={v}"),
                Err(_) => continue,
            },
            _ => return Err(SpecError::BadEnv(flag.clone())),
        };
        let key = entry.split('=').next().unwrap_or_default().to_string();
        env.retain(|e| e.split('=').next() != Some(key.as_str()));
        env.push(entry);
    }
    Ok((argv, env))
}

/// Reads a Docker `--env-file`: `KEY=VALUE` or `KEY` lines, `#` comments.
pub fn read_env_file(path: &std::path::Path) -> std::io::Result<Vec<String>> {
    Ok(std::fs::read_to_string(path)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// Whether `name` is a valid container name (Docker's rule).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn entrypoint_and_cmd_follow_docker() {
        let ep = v(&["/entry"]);
        let cmd = v(&["default"]);
        let p = |flag, args: &[&str]| process(&ep, &cmd, &[], flag, &v(args), &[]).unwrap().0;
        assert_eq!(p(None, &[]), v(&["/entry", "default"]));
        assert_eq!(p(None, &["x", "y"]), v(&["/entry", "x", "y"]));
        assert_eq!(p(Some("/other"), &[]), v(&["/other"]));
        assert_eq!(p(Some("/other"), &["a"]), v(&["/other", "a"]));
        assert_eq!(p(Some(""), &["sh"]), v(&["sh"]));
        assert_eq!(
            process(&[], &[], &[], None, &[], &[]),
            Err(SpecError::NoCommand)
        );
    }

    #[test]
    fn env_flags_override_image_env_and_path_defaults() {
        let (_, env) = process(
            &[],
            &v(&["sh"]),
            &v(&["A=1", "B=2"]),
            None,
            &[],
            &v(&["B=3", "C=x=y"]),
        )
        .unwrap();
        assert_eq!(env, v(&[DEFAULT_PATH, "A=1", "B=3", "C=x=y"]));
        let (_, env) = process(&[], &v(&["sh"]), &v(&["PATH=/bin"]), None, &[], &[]).unwrap();
        assert_eq!(env, v(&["PATH=/bin"]));
        assert_eq!(
            process(&[], &v(&["sh"]), &[], None, &[], &v(&["=x"])),
            Err(SpecError::BadEnv("=x".into()))
        );
    }

    #[test]
    fn names() {
        assert!(valid_name("web-1.a_b"));
        assert!(!valid_name("-web"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name("a/b"));
    }
}
