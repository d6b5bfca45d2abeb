//! Emulated devices, one per module.

pub mod i8042;
pub mod memops;
pub mod serial;
