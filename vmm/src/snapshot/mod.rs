//! Snapshots of a paused VM: its vCPUs, in-kernel irqchip, PIT and clock,
//! the serial port and virtio transports, and guest memory.
//!
//! A snapshot is a directory with `state.json` (everything but memory) and
//! `memory` (guest RAM, sparse). A restored VM maps `memory` private, so VMs
//! restored from one snapshot share the pages none of them wrote.
//!
//! Devices are saved at the transport level only: hull snapshots a VM when
//! its guest is idle (no request in flight, no vsock connection: the VMM
//! waits up to [`QUIESCE_TIMEOUT`] for open ones to close and otherwise
//! refuses, see [`Quiescence`]), so a device's queues (positions and addresses) are all its state. Disks and
//! the vsock socket are given anew on restore; the guest re-reads a disk's
//! size on the config-change interrupt raised then.

mod vcpu_state;

use std::path::Path;

use kvm_bindings::{kvm_clock_data, kvm_irqchip, kvm_pit_state2};
use serde::{Deserialize, Serialize};

pub use vcpu_state::VcpuState;

use crate::devices::serial::SerialSaved;
use crate::virtio::mmio::TransportState;

/// Bumped whenever the saved format or what a snapshot assumes changes.
pub const FORMAT: u32 = 1;

/// File names inside a snapshot directory.
pub const STATE_FILE: &str = "state.json";
/// Guest memory file inside a snapshot directory.
pub const MEMORY_FILE: &str = "memory";

/// Errors saving or restoring a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A KVM call failed.
    #[error("KVM: {0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// Reading or writing the snapshot's files failed.
    #[error("snapshot {0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// The snapshot does not fit the VM asked for, or is damaged.
    #[error("snapshot unusable: {0}")]
    Invalid(String),
    /// vsock connections were still open when the wait for them ended.
    #[error("snapshot refused: {0} vsock connection(s) still open")]
    ConnectionsOpen(usize),
}

/// How long a requested snapshot waits for open vsock connections to
/// close. A host client that just closed needs one round trip through the
/// guest (its SHUTDOWN, the guest's RST), which takes tens of
/// milliseconds in an emulated guest kernel; a connection still open after
/// this is in use, and saving would cut it.
pub const QUIESCE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A snapshot request waiting for the vsock connection table to empty.
#[derive(Debug, Clone, Copy)]
pub struct Quiescence {
    deadline: std::time::Instant,
}

/// What a waiting snapshot does next.
#[derive(Debug, PartialEq, Eq)]
pub enum QuiesceStep {
    /// No connection is open: pause the VM and save it.
    Save,
    /// Connections are open and there is time left: keep serving them.
    Wait,
}

impl Quiescence {
    /// A wait that started at `now`.
    pub fn new(now: std::time::Instant) -> Self {
        Self {
            deadline: now + QUIESCE_TIMEOUT,
        }
    }

    /// How long the wait has lasted at `now`.
    pub fn waited(&self, now: std::time::Instant) -> std::time::Duration {
        now.saturating_duration_since(self.deadline - QUIESCE_TIMEOUT)
    }

    /// The next step with `open` connections at `now`, or the refusal once
    /// the deadline has passed with connections still open.
    pub fn step(&self, open: usize, now: std::time::Instant) -> Result<QuiesceStep, SnapshotError> {
        match open {
            0 => Ok(QuiesceStep::Save),
            _ if now < self.deadline => Ok(QuiesceStep::Wait),
            n => Err(SnapshotError::ConnectionsOpen(n)),
        }
    }
}

/// Everything about a paused VM but its memory.
#[derive(Serialize, Deserialize)]
pub struct VmState {
    /// [`FORMAT`] of the writer.
    pub format: u32,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// Read-only flag of each disk, in guest order.
    pub disks_read_only: Vec<bool>,
    /// The vsock device's guest CID, if the VM has one.
    pub vsock_cid: Option<u64>,
    /// How many network devices the VM has (their transports come last).
    #[serde(default)]
    pub nics: usize,
    /// Written by hull before multi-NIC VMs: whether the VM has one
    /// network device. Read so those snapshots still restore; always
    /// written `false` now ([`VmState::nic_count`] reads both).
    #[serde(default)]
    pub net: bool,
    /// How many virtio-fs devices the VM has (their transports follow the
    /// network devices'). Saved only before the guest mounted any: the
    /// state of a FUSE session lives in virtiofsd, not here.
    #[serde(default)]
    pub shared_dirs: usize,
    /// kvmclock.
    pub clock: kvm_clock_data,
    /// The PIT.
    pub pit: kvm_pit_state2,
    /// PIC master, PIC slave, IOAPIC.
    pub irqchips: Vec<kvm_irqchip>,
    /// COM1.
    pub serial: SerialSaved,
    /// The virtio transports, in attach order (disks, vsock, network, virtio-fs).
    pub transports: Vec<TransportState>,
    /// The vCPUs, in id order.
    pub vcpus: Vec<VcpuState>,
}

/// A new file only its owner can read: a snapshot holds a guest's memory
/// and registers.
pub fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

impl VmState {
    /// The snapshot's network devices: [`VmState::nics`], or one for a
    /// snapshot written with only the older `net` flag.
    pub fn nic_count(&self) -> usize {
        nic_count(self.nics, self.net)
    }

    /// Writes `state.json` into `dir` (the memory file is written apart).
    pub fn save(&self, dir: &Path) -> Result<(), SnapshotError> {
        let path = dir.join(STATE_FILE);
        let json = serde_json::to_vec(self)
            .map_err(|e| SnapshotError::Invalid(format!("cannot encode state: {e}")))?;
        let io = |e| SnapshotError::Io(path.display().to_string(), e);
        std::io::Write::write_all(&mut private_file(&path).map_err(io)?, &json).map_err(io)
    }

    /// Reads `state.json` from `dir` and checks its format.
    pub fn load(dir: &Path) -> Result<Self, SnapshotError> {
        let path = dir.join(STATE_FILE);
        let file = std::fs::File::open(&path)
            .map_err(|e| SnapshotError::Io(path.display().to_string(), e))?;
        Self::read(file, &path.display().to_string())
    }

    /// Reads a `state.json` already open (`name` for messages) and checks
    /// its format.
    pub fn read(mut file: std::fs::File, name: &str) -> Result<Self, SnapshotError> {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut bytes)
            .map_err(|e| SnapshotError::Io(name.to_string(), e))?;
        let state: Self = serde_json::from_slice(&bytes)
            .map_err(|e| SnapshotError::Invalid(format!("{name}: {e}")))?;
        if state.format != FORMAT {
            return Err(SnapshotError::Invalid(format!(
                "format {} (this hull writes {FORMAT})",
                state.format
            )));
        }
        if state.irqchips.len() != 3 || state.vcpus.is_empty() {
            return Err(SnapshotError::Invalid("incomplete state".into()));
        }
        Ok(state)
    }
}

/// The network device count of a snapshot with `nics` and the older
/// one-device flag `net`.
fn nic_count(nics: usize, net: bool) -> usize {
    if nics == 0 && net {
        1
    } else {
        nics
    }
}

/// The irqchip ids KVM_GET_IRQCHIP takes: PIC master, PIC slave, IOAPIC.
pub const IRQCHIP_IDS: [u32; 3] = [
    kvm_bindings::KVM_IRQCHIP_PIC_MASTER,
    kvm_bindings::KVM_IRQCHIP_PIC_SLAVE,
    kvm_bindings::KVM_IRQCHIP_IOAPIC,
];

#[cfg(test)]
mod tests {
    use super::nic_count;

    #[test]
    fn snapshot_files_are_their_owners_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        drop(super::private_file(&path).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "truncated");
        let fresh = dir.path().join("state.json");
        drop(super::private_file(&fresh).unwrap());
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }

    #[test]
    fn snapshots_from_before_multi_nic_keep_their_one_device() {
        // Written with only `net`: none or one device.
        assert_eq!(nic_count(0, false), 0);
        assert_eq!(nic_count(0, true), 1);
        // Written with `nics` (and `net` false).
        assert_eq!(nic_count(1, false), 1);
        assert_eq!(nic_count(2, false), 2);
    }
}
