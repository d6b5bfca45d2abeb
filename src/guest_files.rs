//! Finding the guest kernel and the agent binary hull boots.

use std::path::{Path, PathBuf};

/// Errors locating guest files.
#[derive(Debug, thiserror::Error)]
pub enum GuestFilesError {
    /// No kernel at any of the places we look.
    #[error("No guest kernel found (looked in {0}); run ./scripts/setup or set HULL_KERNEL")]
    NoKernel(String),
    /// No agent binary at any of the places we look.
    #[error("No guest agent found (looked in {0}); run ./scripts/setup or set HULL_AGENT")]
    NoAgent(String),
}

fn first_existing(candidates: &[PathBuf]) -> Result<PathBuf, String> {
    let mut unique: Vec<&PathBuf> = Vec::new();
    for c in candidates {
        if !unique.contains(&c) {
            unique.push(c);
        }
    }
    unique
        .iter()
        .find(|p| p.is_file())
        .map(|p| (*p).clone())
        .ok_or_else(|| {
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        })
}

/// The guest kernel: `HULL_KERNEL`, else the build cache under the hull
/// root, else the system-wide cache the set-up script fills.
pub fn kernel(root: &Path) -> Result<PathBuf, GuestFilesError> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("HULL_KERNEL") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("HULL_KERNEL_CACHE") {
        candidates.push(PathBuf::from(p).join("current/vmlinux"));
    }
    candidates.push(root.join("kernel/current/vmlinux"));
    candidates.push(PathBuf::from("/var/lib/hull/kernel/current/vmlinux"));
    first_existing(&candidates).map_err(GuestFilesError::NoKernel)
}

/// The agent binary: `HULL_AGENT`, else next to the hull binary, else where
/// `scripts/build-agent` puts it in the cargo target directory.
pub fn agent() -> Result<PathBuf, GuestFilesError> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("HULL_AGENT") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join("hull-agent"));
        // target/{debug,release}/hull → target/x86_64-unknown-linux-gnu/agent/hull-agent;
        // tests run from target/debug/deps.
        for up in [dir.parent(), dir.parent().and_then(Path::parent)]
            .into_iter()
            .flatten()
        {
            candidates.push(up.join("x86_64-unknown-linux-gnu/agent/hull-agent"));
        }
    }
    first_existing(&candidates).map_err(GuestFilesError::NoAgent)
}

/// The kernel's release string: the `version` file the build script writes
/// beside vmlinux, else the "Linux version" banner inside the image.
pub fn kernel_version(kernel: &Path) -> Option<String> {
    if let Some(v) = kernel
        .parent()
        .and_then(|d| std::fs::read_to_string(d.join("version")).ok())
    {
        return Some(v.trim().to_string());
    }
    let bytes = std::fs::read(kernel).ok()?;
    let needle = b"Linux version ";
    let at = bytes.windows(needle.len()).position(|w| w == needle)?;
    let rest = &bytes[at + needle.len()..];
    let end = rest.iter().position(|b| *b == b' ' || *b == 0)?;
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// Whether the kernel carries hull's PVM workarounds (its `hull_pvm` switch).
pub fn kernel_has_pvm_switch(kernel: &Path) -> bool {
    std::fs::read(kernel)
        .map(|b| b.windows(8).any(|w| w == b"hull_pvm"))
        .unwrap_or(false)
}
