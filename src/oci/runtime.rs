//! Finding the OCI runtime binary and running its commands with hull's own
//! state directory (never the system's `/run/crun` or `/run/runc`).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::OciError;

/// The runtimes hull drives, in order of preference (crun starts faster).
pub const KNOWN: [&str; 2] = ["crun", "runc"];

/// An installed OCI runtime.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// `crun` or `runc`.
    pub name: String,
    /// Its executable.
    pub path: PathBuf,
}

/// `name` in `$PATH` (and the sbin directories, which a non-login root
/// shell may lack: Debian installs runc in /usr/sbin).
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl Runtime {
    /// The runtime `wanted` (a name or a path), or the first of [`KNOWN`]
    /// that is installed.
    pub fn find(wanted: Option<&str>) -> Result<Self, OciError> {
        let Some(w) = wanted.filter(|w| !w.is_empty()) else {
            return KNOWN
                .iter()
                .find_map(|n| Self::named(n).ok())
                .ok_or_else(|| OciError::RuntimeNotFound(KNOWN.join(" or ")));
        };
        Self::named(w)
    }

    fn named(w: &str) -> Result<Self, OciError> {
        let base = Path::new(w)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        // The CLIs of crun and runc agree on what hull uses; others may not.
        let Some(name) = KNOWN.iter().find(|k| base == **k) else {
            return Err(OciError::BadRuntime(w.into()));
        };
        let path = if w.contains('/') {
            Some(PathBuf::from(w)).filter(|p| is_executable(p))
        } else {
            which(w)
        };
        match path {
            Some(path) => Ok(Self {
                name: (*name).to_string(),
                path,
            }),
            None => Err(OciError::RuntimeNotFound(w.into())),
        }
    }

    /// `<runtime> --root <hull root>/oci/state`: the runtime's state stays
    /// in hull's root, so `exec`/`kill`/`delete` find the container and
    /// nothing is left in the system's runtime directories.
    pub fn command(&self, root: &Path) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.arg("--root").arg(state_dir(root));
        cmd
    }

    /// `delete --force <id>`: ends whatever the runtime still knows of the
    /// container (its processes, cgroup and state), ignoring "not found".
    pub fn delete(&self, root: &Path, id: &str) {
        let _ = self
            .command(root)
            .args(["delete", "--force", id])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The runtimes' state directory under a hull root.
pub fn state_dir(root: &Path) -> PathBuf {
    root.join("oci").join("state")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_missing_runtimes_are_errors() {
        assert!(matches!(
            Runtime::find(Some("docker")),
            Err(OciError::BadRuntime(_))
        ));
        let err = Runtime::find(Some("/nonexistent/crun")).unwrap_err();
        assert!(matches!(err, OciError::RuntimeNotFound(_)), "{err}");
    }
}
