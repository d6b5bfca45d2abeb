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

/// Set to `off` to boot one-vCPU VMs with the SMP kernel too (to compare).
pub const UP_KERNEL_ENV: &str = "HULL_KERNEL_UP";

/// The kernel for a VM of `vcpus` vCPUs: the uniprocessor variant the
/// build script puts beside the kernel (`vmlinux-up` beside `vmlinux`)
/// when there is one vCPU, else the kernel itself.
pub fn kernel_for(root: &Path, vcpus: u8) -> Result<PathBuf, GuestFilesError> {
    let smp = kernel(root)?;
    let up_wanted = !matches!(
        std::env::var(UP_KERNEL_ENV).as_deref(),
        Ok("0" | "off" | "false" | "no")
    );
    Ok(variant_for(&smp, vcpus, up_wanted))
}

/// `kernel`'s uniprocessor variant when one vCPU is all the VM has, one
/// is wanted and the file is there; else `kernel`.
fn variant_for(kernel: &Path, vcpus: u8, up_wanted: bool) -> PathBuf {
    if vcpus == 1 && up_wanted {
        if let Some(up) = uniprocessor_variant(kernel).filter(|p| p.is_file()) {
            return up;
        }
    }
    kernel.to_path_buf()
}

/// Where the uniprocessor variant of `kernel` would be: `<name>-up`
/// beside it.
pub fn uniprocessor_variant(kernel: &Path) -> Option<PathBuf> {
    let mut name = kernel.file_name()?.to_os_string();
    name.push("-up");
    Some(kernel.with_file_name(name))
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
    // A dynamically linked build (cargo's target/debug/hull-agent) cannot
    // run in the initramfs, which has no loader or libc.
    candidates.retain(|p| !p.is_file() || is_static_elf(p));
    first_existing(&candidates).map_err(GuestFilesError::NoAgent)
}

/// Whether `path` is an ELF executable without a program interpreter.
pub fn is_static_elf(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    // 64-bit little-endian ELF only (what the guest runs).
    if bytes.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    const PT_INTERP: u32 = 3;
    (0..usize::from(phnum)).all(|i| {
        let at = phoff as usize + i * usize::from(phentsize);
        u32_at(at).is_some_and(|t| t != PT_INTERP)
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_binaries_are_not_agents() {
        // Our own test binary is dynamically linked.
        let me = std::env::current_exe().unwrap();
        assert!(!is_static_elf(&me));
        assert!(!is_static_elf(Path::new("/nonexistent")));
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"\x7fELF\x02\x01 truncated").unwrap();
        assert!(!is_static_elf(&junk));
        if Path::new("/bin/busybox").exists() {
            // Debian's busybox-static: an ELF with no interpreter.
            assert!(is_static_elf(Path::new("/bin/busybox")));
        }
    }

    #[test]
    fn one_vcpu_boots_the_uniprocessor_kernel_beside_the_smp_one() {
        let dir = tempfile::tempdir().unwrap();
        let smp = dir.path().join("vmlinux");
        let up = dir.path().join("vmlinux-up");
        std::fs::write(&smp, b"smp").unwrap();
        // No variant on disk: the kernel itself, whatever the vCPU count.
        assert_eq!(variant_for(&smp, 1, true), smp);
        std::fs::write(&up, b"up").unwrap();
        assert_eq!(variant_for(&smp, 1, true), up);
        assert_eq!(variant_for(&smp, 2, true), smp);
        assert_eq!(variant_for(&smp, 1, false), smp);
        // A kernel named otherwise (a test's copy) has its own variant name.
        let copy = dir.path().join("vmlinux-copy");
        assert_eq!(
            uniprocessor_variant(&copy).unwrap(),
            dir.path().join("vmlinux-copy-up")
        );
        assert_eq!(variant_for(&copy, 1, true), copy);
    }
}
