//! Published ports (`-p`, `-P`): what the user asked for and what was
//! bound ([`spec`]), and the host side that accepts TCP connections and
//! carries each one to the guest agent over vsock ([`forward`]).

pub mod forward;
pub mod relay;
pub mod spec;

pub use forward::PortForwarder;
pub use spec::{PortBinding, PortSpec};
