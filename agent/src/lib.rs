//! hull's guest agent as a library: the layer unpacker (host-testable,
//! used by the agent in the rootfs-preparation helper VM) and, for the
//! agent's own modules, the protocol types from `agent-protocol`.

pub use agent_protocol::{protocol, Status, STATUS_PREFIX, VERSION};

/// Applying OCI image layers onto a directory (used by the agent in the
/// rootfs-preparation helper VM; host-testable).
pub mod unpack;

/// A container's writable layer (overlayfs upper dir) to an OCI layer
/// tar, and its `docker diff` (in the guest; host-testable).
pub mod layer_out;

/// Freezing a container's writable layer, its `docker diff`, and tars
/// unpacked into it (`hull commit`, `diff`, `cp`).
pub mod container_fs;

/// The processes of a /proc, for `hull top` (the agent's guest, and
/// container-mode containers on the host).
pub mod procs;

/// Set-up paths (mount points, written files) resolved inside a
/// container root the image made (host-testable).
pub mod in_root;

/// Host files mapped into the agent as memory windows (`/dev/mem`).
pub mod window;
