//! `run`/`create` of an image the store lacks: pulled from its registry
//! first, as Docker does (`--pull missing`), with Docker's lines on stderr
//! (stdout belongs to the container); `--pull always` pulls every time,
//! `--pull never` only looks in the store.

use std::io::IsTerminal;
use std::path::Path;

use images::registry::{self, Options};
use images::store::Image;
use images::{Reference, Store};

/// `--pull`: when `run`/`create` pull the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PullPolicy {
    /// Only when the store does not have it.
    #[default]
    Missing,
    /// Every time (the store's copy when the registry has the same).
    Always,
    /// Never: a missing image is an error.
    Never,
}

/// Errors getting the image of a new container.
#[derive(Debug, thiserror::Error)]
pub enum AutoPullError {
    /// The pull failed: the registry is unreachable, refused or lacks it.
    #[error(
        "Unable to pull {image} (no registry to pull from? 'hull load' an archive \
         or 'hull import' a rootfs, or 'hull pull' from a registry you can reach)"
    )]
    Pull {
        /// The reference as pulled (`busybox:latest`).
        image: String,
        /// Why.
        #[source]
        source: images::Error,
    },
    /// The store cannot be read, or the image is missing with `--pull never`.
    #[error(transparent)]
    Store(#[from] images::Error),
}

/// The image named `name`, pulled first as `policy` says; `quiet` drops
/// the pull's status lines.
pub fn image(
    store: &Store,
    root: &Path,
    name: &str,
    policy: PullPolicy,
    quiet: bool,
) -> Result<Image, AutoPullError> {
    let local = store.image(name);
    let pull = match (&local, policy) {
        (_, PullPolicy::Never) | (Ok(_), PullPolicy::Missing) => false,
        (Ok(_), PullPolicy::Always) => true,
        (Err(images::Error::Store(images::store::Error::NotFound(_))), _) => true,
        (Err(_), _) => false,
    };
    // A name that is no reference (an ID prefix such as `sha256:…`) is
    // only ever looked up locally.
    let reference = match Reference::parse(name) {
        Ok(r) if pull => r,
        _ => return Ok(local?),
    };
    if local.is_err() && !quiet {
        eprintln!("Unable to find image '{}' locally", reference.familiar());
    }
    pull_image(store, root, &reference, quiet)?;
    Ok(store.image(&reference.to_string())?)
}

/// Pulls `reference` with the registry settings `hull pull` would use.
fn pull_image(
    store: &Store,
    root: &Path,
    reference: &Reference,
    quiet: bool,
) -> Result<(), AutoPullError> {
    let failed = |source: images::Error| AutoPullError::Pull {
        image: reference.familiar(),
        source,
    };
    let opts = Options {
        insecure_registries: insecure_registries(),
        platform: None,
        progress: !quiet && std::io::stderr().is_terminal(),
        credentials: registry::lookup(root, reference.domain()).map_err(|e| failed(e.into()))?,
    };
    let report = registry::pull(store, reference, &opts).map_err(failed)?;
    if !quiet {
        eprintln!("Digest: {}", report.digest);
        let status = if report.downloaded == 0 {
            "Image is up to date for"
        } else {
            "Downloaded newer image for"
        };
        eprintln!("Status: {status} {}", reference.familiar());
    }
    Ok(())
}

/// `HULL_INSECURE_REGISTRY` as `hull pull` reads it (loopback registries
/// need none).
fn insecure_registries() -> Vec<String> {
    std::env::var("HULL_INSECURE_REGISTRY")
        .map(|v| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}
