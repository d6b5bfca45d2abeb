//! `hull version`: hull's version and those of the pieces it runs
//! containers with, as `docker version` shows client and server. Never
//! fails: a missing piece is reported as such.

use std::path::Path;

use crate::guest::files as guest_files;

/// Prints the versions; exit code 0.
pub fn run(root: &Path) -> anyhow::Result<u8> {
    println!("Client:");
    println!(" Version:     {}", env!("CARGO_PKG_VERSION"));
    println!(
        " OS/Arch:     {}/{}",
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    println!("Guest:");
    println!(" Kernel:      {}", kernel_release(root));
    println!(
        " Agent:       {} (protocol {})",
        agent_version(),
        agent_protocol::protocol::VERSION
    );
    println!("Hypervisor:");
    println!(" Kind:        {}", hypervisor());
    Ok(0)
}

/// The guest kernel's release, `unknown` when its file does not say, or
/// why there is none.
fn kernel_release(root: &Path) -> String {
    match guest_files::kernel(root) {
        Ok(k) => guest_files::kernel_version(&k).unwrap_or_else(|| "unknown".into()),
        Err(e) => format!("missing ({e})"),
    }
}

/// The agent is built from this tree, so its version is ours; whether
/// its binary is there is what can differ.
fn agent_version() -> String {
    match guest_files::agent() {
        Ok(_) => agent_protocol::VERSION.to_string(),
        Err(e) => format!("missing ({e})"),
    }
}

fn hypervisor() -> String {
    let host = vmm::HostKind::detect();
    match vmm::open_kvm(Path::new("/dev/kvm")) {
        Ok(_) => host.describe().to_string(),
        Err(e) => format!("unavailable ({e})"),
    }
}
