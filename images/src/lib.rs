//! hull's image store: an OCI image layout on disk, plus everything that moves
//! images in and out of it (rootfs import, docker/OCI archives, registries).
//!
//! The crate knows nothing about VMs or containers: the engine asks it for an
//! [`store::Image`] (config and layer blobs on disk) and does the rest.

#![warn(missing_docs)]

pub mod archive;
mod check;
pub mod compression;
pub mod digest;
pub mod import;
pub mod inflate;
pub mod layout;
pub mod media;
pub mod platform;
pub mod reference;
pub mod registry;
pub mod store;
pub mod tarwalk;
pub mod time;

pub use reference::Reference;
pub use store::{Image, ImageSummary, Store};

/// Any error of this crate; each variant is one module's error enum.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad image reference.
    #[error(transparent)]
    Reference(#[from] reference::Error),
    /// Bad digest or content that does not match its digest.
    #[error(transparent)]
    Digest(#[from] digest::Error),
    /// On-disk layout problem.
    #[error(transparent)]
    Layout(#[from] layout::Error),
    /// Store-level problem (unknown image, ambiguous name, ...).
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Rootfs import problem.
    #[error(transparent)]
    Import(#[from] import::Error),
    /// Archive (save/load) problem.
    #[error(transparent)]
    Archive(#[from] archive::Error),
    /// Registry (pull/push/login) problem.
    #[error(transparent)]
    Registry(#[from] registry::Error),
    /// Unusable platform string.
    #[error(transparent)]
    Platform(#[from] platform::Error),
    /// A compressed stream inflates past its limit.
    #[error(transparent)]
    Inflate(#[from] inflate::Error),
    /// A tar stream refused by the walk that checks it.
    #[error(transparent)]
    TarWalk(#[from] tarwalk::Error),
    /// Unsupported media type.
    #[error(transparent)]
    Media(#[from] media::Error),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
