//! The guest microVM: everything between "run this container" and a VM
//! whose agent answers.
//!
//! - [`vm`]: a VM configuration for hull's guest (kernel, agent initramfs,
//!   size, console) and starting it until the agent reports ready;
//! - [`fast_start`]: starting from a snapshot of a VM that booted once
//!   (base and warm snapshots) instead of booting a kernel;
//! - [`initramfs`]: the cpio that holds the agent as `/init`;
//! - [`files`]: finding the guest kernel and the agent binary;
//! - [`serial_watch`]: the agent's status lines on the serial console;
//! - [`agent_client`]: the host side of the agent protocol over vsock;
//! - [`rootfs`]: image root filesystems, unpacked inside a helper VM;
//! - [`vmm_process`]: the VMM in a confined process of its own.

pub mod agent_client;
pub mod fast_start;
pub mod files;
pub mod initramfs;
pub mod rootfs;
pub mod serial_watch;
pub mod snapshot_use;
pub mod vm;
pub mod vmm_process;
