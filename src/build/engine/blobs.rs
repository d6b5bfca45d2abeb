//! Layers and the finished image into the image store: a layer tar is
//! digested (its diff ID), gzip-compressed and stored as a blob; the image
//! is its config and an OCI manifest, named by the tags given.
//!
//! Blobs are written while the build holds the store's ingest lock (no GC
//! meanwhile) but outside an `Ingest`: a build that fails keeps the layers
//! of the steps that succeeded, which its cache entries name, so the next
//! attempt starts where this one failed. A later GC removes what no image
//! references (the cache checks its blobs still exist before a hit).

use std::io::{self, Read, Write};

use images::digest::{Digest, HashingReader};
use images::media;
use images::Reference;
use oci_spec::image::{Descriptor, MediaType};
use serde_json::json;

use super::state::{ImageState, LayerRef};

/// Errors storing layers and images.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// Reading the layer tar failed.
    #[error("reading the layer: {0}")]
    Read(#[source] io::Error),
    /// The store refused the image.
    #[error(transparent)]
    Store(#[from] images::Error),
    /// The store refused a blob.
    #[error(transparent)]
    Blob(#[from] images::layout::Error),
}

/// Compression of the layers a build makes: fast, since a build's layers
/// are compressed once per step on the build host.
const LEVEL: u32 = 3;

/// Stores the layer tar `tar` (uncompressed) as a gzip blob; returns the
/// layer and its diff ID.
pub fn store_layer(store: &images::Store, tar: impl Read) -> Result<(LayerRef, Digest), BlobError> {
    let mut tar = HashingReader::new(tar);
    let mut blob = store.layout().blob_writer()?;
    {
        let mut gz = flate2::write::GzEncoder::new(&mut blob, flate2::Compression::new(LEVEL));
        io::copy(&mut tar, &mut gz).map_err(BlobError::Read)?;
        gz.finish().map_err(BlobError::Read)?;
    }
    blob.flush().map_err(BlobError::Read)?;
    let (diff_id, _) = tar.finish();
    let (digest, size) = blob.commit(None)?;
    Ok((
        LayerRef {
            digest: digest.to_string(),
            size,
            media_type: media::OCI_LAYER_GZIP.to_string(),
        },
        diff_id,
    ))
}

/// Whether every layer blob of `state` is still in the store.
pub fn layers_present(store: &images::Store, state: &ImageState) -> bool {
    state.layers.iter().all(|l| {
        images::digest::parse(&l.digest)
            .map(|d| store.layout().has_blob(&d, Some(l.size)))
            .unwrap_or(false)
    })
}

/// Writes `state` as an image (config and manifest) and points `names`
/// at it; returns the image ID (config digest).
pub fn commit_image(
    store: &images::Store,
    state: &ImageState,
    names: &[Reference],
) -> Result<Digest, BlobError> {
    let config = serde_json::to_vec(&state.config).unwrap_or_default();
    let (config_digest, config_size) = store.layout().write_blob(&config, None)?;
    let layers: Vec<_> = state
        .layers
        .iter()
        .map(|l| json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size}))
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": {
            "mediaType": media::OCI_CONFIG,
            "digest": config_digest.to_string(),
            "size": config_size,
        },
        "layers": layers,
    });
    let bytes = serde_json::to_vec(&manifest).unwrap_or_default();
    let (md, ms) = store.layout().write_blob(&bytes, None)?;
    store.add(&Descriptor::new(MediaType::ImageManifest, ms, md), names)?;
    Ok(config_digest)
}
