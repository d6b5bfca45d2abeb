//! `--isolation container`: the same image run as a namespaced container
//! through a real OCI runtime (crun or runc) instead of a microVM, so the
//! two isolation models can be compared on one machine.
//!
//! The cost of this model shows in [`lower`]: the host itself parses the
//! image's layers (with the same hostile-input-safe unpacker the guest
//! uses) into a cached lower directory. [`bundle`] writes the runtime-spec
//! `config.json` with oci-spec's types; [`engine`] is the per-container
//! monitor (the counterpart of the VM engine): overlay, network namespace,
//! runtime process, stdio, logs, state.

pub mod bundle;
pub mod engine;
pub mod lower;
pub mod netns;
pub mod runtime;
pub mod seccomp;
pub mod tty;
pub mod user;
pub mod userns;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How a container is isolated from the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Its own KVM microVM (hull's model).
    #[default]
    Vm,
    /// Namespaces and cgroups on the host kernel, through an OCI runtime.
    Container,
}

/// Errors of the container model.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// `--isolation` value not known.
    #[error("Invalid --isolation {0:?}: use vm or container")]
    BadIsolation(String),
    /// The runtime named (or neither default) is not installed.
    #[error(
        "OCI runtime {0:?} not found in PATH (install crun or runc, or pick one with --runtime)"
    )]
    RuntimeNotFound(String),
    /// `--runtime` names something that is not an OCI runtime we drive.
    #[error("Unsupported --runtime {0:?}: use crun, runc or a path to one of them")]
    BadRuntime(String),
    /// Unpacking the image's layers on the host failed (hostile or damaged).
    #[error("Unpacking layer {0} on the host")]
    Unpack(String, #[source] agent::unpack::Error),
    /// The inflation limit cannot be worked out (a bad `HULL_MAX_INFLATE`).
    #[error(transparent)]
    Inflate(#[from] images::inflate::Error),
    /// The user named by `-u` or the image is not in the image.
    #[error("Unable to find user {0}: no matching entries in passwd file")]
    NoUser(String),
    /// `-u` names an ID the container's user namespace cannot map.
    #[error("User {0} is outside the container's user namespace (IDs 0-{1})")]
    Unmapped(u32, u32),
    /// A directory above the hull root that container root (an
    /// unprivileged host user) cannot pass through.
    #[error(
        "{0} is not searchable by others, so the container's root (a subordinate host ID) cannot reach the hull root: chmod o+x it, or run with HULL_USERNS=host"
    )]
    NotSearchable(PathBuf),
    /// The runtime refused the container.
    #[error("OCI runtime {0} failed: {1}")]
    Runtime(String, String),
    /// Building the runtime spec failed.
    #[error("Building the OCI runtime spec")]
    Spec(#[source] oci_spec::OciSpecError),
    /// A system call or file operation failed.
    #[error("{0}")]
    Io(String, #[source] std::io::Error),
}

impl OciError {
    /// An [`OciError::Io`] saying what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> OciError {
        let what = what.into();
        move |e| OciError::Io(what, e)
    }
}

impl Isolation {
    /// Parses `vm` or `container`.
    pub fn parse(s: &str) -> Result<Self, OciError> {
        match s {
            "vm" => Ok(Self::Vm),
            "container" => Ok(Self::Container),
            _ => Err(OciError::BadIsolation(s.into())),
        }
    }

    /// `vm` or `container`, as `ps` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vm => "vm",
            Self::Container => "container",
        }
    }
}
