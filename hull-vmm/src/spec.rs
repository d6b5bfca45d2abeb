//! What the host hands a VMM process: a VM configuration without the parts
//! that cannot cross `exec` (the serial sink, network back ends), which
//! travel as descriptors at fixed numbers instead.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vmm::virtio::net::{Backend, NetConfig};

/// The descriptor the VMM process writes the guest's serial output to.
pub const SERIAL_FD: RawFd = 3;
/// The descriptor of the snapshot's `state.json` when restoring.
pub const SNAPSHOT_STATE_FD: RawFd = 4;
/// The descriptor of the snapshot's memory file when restoring.
pub const SNAPSHOT_MEMORY_FD: RawFd = 5;
/// The descriptor of the first network back end; the next ones follow.
pub const FIRST_NET_FD: RawFd = 6;

/// A network device as the VMM process gets it.
#[derive(Debug, Serialize, Deserialize)]
pub struct NicSpec {
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// The back end's kind, its descriptor at the next free number from
    /// [`FIRST_NET_FD`]; `None` for a device without a link.
    pub backend: Option<BackendKind>,
}

/// Which network back end a descriptor is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum BackendKind {
    /// A connected stream socket (passt).
    Stream,
    /// A tap device.
    Tap,
}

/// The VM a VMM process runs, in JSON on its standard input.
#[derive(Debug, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// Guest kernel (unused when restoring).
    pub kernel: PathBuf,
    /// Initramfs (unused when restoring).
    pub initramfs: Option<PathBuf>,
    /// Kernel command line (unused when restoring).
    pub cmdline: String,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// The KVM device.
    pub kvm_device: PathBuf,
    /// `(path, read_only)` of each disk, in guest order.
    pub disks: Vec<(PathBuf, bool)>,
    /// The hybrid vsock socket.
    pub vsock_uds: Option<PathBuf>,
    /// The guest's vsock context ID.
    pub vsock_cid: u64,
    /// Network devices, in guest order.
    pub nics: Vec<NicSpec>,
    /// `(path, writable)` of each memory window.
    pub windows: Vec<(PathBuf, bool)>,
    /// The snapshot to restore (its files at [`SNAPSHOT_STATE_FD`] and
    /// [`SNAPSHOT_MEMORY_FD`]; the path is for messages); `None` boots the
    /// kernel.
    pub snapshot: Option<PathBuf>,
    /// Where a seccomp violation is recorded (`vmm::seccomp`).
    pub violation_record: Option<PathBuf>,
    /// Enter the jail (namespaces were made by the spawner).
    pub jail: bool,
    /// The jail is in a user namespace of a non-root user (who is root
    /// there, mapped to itself outside): no other user to switch to.
    #[serde(default)]
    pub rootless: bool,
    /// The `cgroup.procs` files to join before anything is allocated.
    #[serde(default)]
    pub cgroup_procs: Vec<PathBuf>,
    /// Shared directories: virtiofsd sockets the VMM connects to before
    /// it enters the jail.
    #[serde(default)]
    pub fs: Vec<vmm::virtio::fs::FsConfig>,
}

impl LaunchSpec {
    /// Splits `config` into the spec and the descriptors of its network
    /// back ends (in [`FIRST_NET_FD`] order). The serial sink stays with
    /// the caller.
    pub fn from_config(config: &vmm::VmConfig) -> (Self, Vec<RawFd>) {
        let mut fds = Vec::new();
        let nics = config
            .net
            .iter()
            .map(|nic| NicSpec {
                mac: nic.mac,
                backend: nic.backend.as_ref().map(|b| {
                    let (kind, fd) = match b {
                        Backend::Stream(s) => (BackendKind::Stream, s.as_raw_fd()),
                        Backend::Tap(t) => (BackendKind::Tap, t.as_raw_fd()),
                    };
                    fds.push(fd);
                    kind
                }),
            })
            .collect();
        let spec = Self {
            kernel: config.kernel.clone(),
            initramfs: config.initramfs.clone(),
            cmdline: config.cmdline.clone(),
            mem_mib: config.mem_mib,
            vcpus: config.vcpus,
            kvm_device: config.kvm_device.clone(),
            disks: (config.disks.iter())
                .map(|d| (d.path.clone(), d.read_only))
                .collect(),
            vsock_uds: config.vsock_uds.clone(),
            vsock_cid: config.vsock_cid,
            nics,
            windows: (config.windows.iter())
                .map(|w| (w.path.clone(), w.writable))
                .collect(),
            snapshot: None,
            violation_record: None,
            jail: false,
            rootless: false,
            cgroup_procs: Vec::new(),
            fs: config.fs.clone(),
        };
        (spec, fds)
    }

    /// The VM configuration in the VMM process, taking ownership of the
    /// descriptors the spawner placed.
    ///
    /// # Safety
    /// Call once, in the VMM process, where [`SERIAL_FD`] and the network
    /// descriptors are the ones the spawner placed and nothing else owns.
    pub unsafe fn into_config(self) -> vmm::VmConfig {
        let mut config = vmm::VmConfig::new(self.kernel);
        config.initramfs = self.initramfs;
        config.cmdline = self.cmdline;
        config.mem_mib = self.mem_mib;
        config.vcpus = self.vcpus;
        config.kvm_device = self.kvm_device;
        config.disks = (self.disks.into_iter())
            .map(|(path, read_only)| vmm::DiskConfig { path, read_only })
            .collect();
        config.vsock_uds = self.vsock_uds;
        config.vsock_cid = self.vsock_cid;
        config.windows = (self.windows.into_iter())
            .map(|(path, writable)| vmm::window::WindowConfig { path, writable })
            .collect();
        config.fs = self.fs;
        // SAFETY: the caller guarantees the serial descriptor is ours.
        let serial = unsafe { OwnedFd::from_raw_fd(SERIAL_FD) };
        config.serial_out = Box::new(std::fs::File::from(serial));
        let mut next = FIRST_NET_FD;
        config.net = (self.nics.into_iter())
            .map(|nic| NetConfig {
                mac: nic.mac,
                backend: nic.backend.map(|kind| {
                    // SAFETY: the caller guarantees the network descriptors
                    // are ours, one per device with a back end, in order.
                    let fd = unsafe { OwnedFd::from_raw_fd(next) };
                    next += 1;
                    match kind {
                        BackendKind::Stream => Backend::Stream(Arc::new(fd.into())),
                        BackendKind::Tap => Backend::Tap(Arc::new(fd.into())),
                    }
                }),
            })
            .collect();
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_back_ends_become_descriptors_in_device_order() {
        let (a, _a2) = std::os::unix::net::UnixStream::pair().unwrap();
        let tap = std::fs::File::open("/dev/null").unwrap();
        let mut config = vmm::VmConfig::new("/k".into());
        config.net = vec![
            NetConfig {
                mac: [2, 0, 0, 0, 0, 1],
                backend: Some(Backend::Tap(Arc::new(tap))),
            },
            NetConfig {
                mac: [2, 0, 0, 0, 0, 2],
                backend: None,
            },
            NetConfig {
                mac: [2, 0, 0, 0, 0, 3],
                backend: Some(Backend::Stream(Arc::new(a))),
            },
        ];
        config.disks = vec![vmm::DiskConfig {
            path: "/d".into(),
            read_only: true,
        }];
        let (spec, fds) = LaunchSpec::from_config(&config);
        assert_eq!(fds.len(), 2);
        let json = serde_json::to_string(&spec).unwrap();
        let back: LaunchSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back.nics.len(), 3);
        assert!(matches!(back.nics[0].backend, Some(BackendKind::Tap)));
        assert!(back.nics[1].backend.is_none());
        assert!(matches!(back.nics[2].backend, Some(BackendKind::Stream)));
        assert_eq!(back.disks, vec![(PathBuf::from("/d"), true)]);
    }
}
