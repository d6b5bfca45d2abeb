//! Containers: their configuration and state on disk, and the engine that
//! runs one in its own microVM.

pub mod commit;
pub mod engine;
pub mod fs_vm;
pub mod logs;
pub mod signals;
pub mod spec;
pub mod state;
pub mod store;
pub mod terminal;
pub mod top;

pub use spec::ContainerConfig;
pub use state::State;
