//! hull's VMM process (`hull-vmm`): one microVM and nothing else — the
//! `vmm` crate, the launch spec it reads, and its jail. No registry, no
//! image store, no CLI: hull starts it per VM (`src/guest/vmm_process/`
//! in hull spawns it, in its own namespaces), hands it the VM's
//! configuration as JSON on stdin and its back ends as descriptors, and
//! reads how it ended from its exit status.

pub mod child;
pub mod jail;
pub mod log;
pub mod spec;
