//! OCI archive: an OCI image layout in a tar. Also Docker 25's `docker save`,
//! which carries a layout next to its manifest.json.

use std::collections::{HashMap, HashSet};
use std::io::{self, BufReader, Write};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};

use super::tarindex::TarIndex;
use super::{append, append_dir, io_err, Error, Result};
use crate::digest::{self, Digest};
use crate::media::{self, ManifestKind};
use crate::platform::Platform;
use crate::reference::Reference;
use crate::store::{descriptor_media_type, Ingest, Store, REF_NAME, REPO_DIGEST};

/// Annotation containerd and Docker 25 use for the full image name.
const CONTAINERD_NAME: &str = "io.containerd.image.name";

fn blob_name(d: &Digest) -> Result<String> {
    Ok(format!("blobs/sha256/{}", digest::hex(d)?))
}

/// Copies one blob out of the archive, verifying digest and size.
fn copy_blob(idx: &TarIndex, ingest: &mut Ingest<'_>, d: &Descriptor) -> Result<()> {
    let name = blob_name(d.digest())?;
    if !idx.contains(&name) {
        return Err(Error::Missing(name).into());
    }
    ingest.copy(idx.member(&name)?, Some((d.digest(), d.size())))?;
    Ok(())
}

fn read_blob(idx: &TarIndex, d: &Descriptor) -> Result<Vec<u8>> {
    let name = blob_name(d.digest())?;
    let bytes = idx.read(&name)?;
    digest::verify(
        d.digest(),
        Some(d.size()),
        &digest::of_bytes(&bytes),
        bytes.len() as u64,
    )?;
    Ok(bytes)
}

/// Loads every image of the archive's index.json.
pub(super) fn load(store: &Store, idx: &TarIndex) -> Result<Vec<String>> {
    let index: ImageIndex = idx.json("index.json")?;
    let mut out = Vec::new();
    for top in index.manifests() {
        let names = names_of(top)?;
        let mut ingest = store.ingest()?;
        let bytes = read_blob(idx, top)?;
        let mut desc = top.clone();
        let mut mt = descriptor_media_type(top, &bytes);
        let mut doc = bytes;
        // A multi-platform index: keep only the host's manifest.
        while media::manifest_kind(&mt)? == ManifestKind::Index {
            let sub: ImageIndex = serde_json::from_slice(&doc)
                .map_err(|e| Error::Json(blob_name(desc.digest()).unwrap_or_default(), e))?;
            desc = Platform::host().select(sub.manifests())?.clone();
            doc = read_blob(idx, &desc)?;
            mt = descriptor_media_type(&desc, &doc);
        }
        let manifest: ImageManifest = serde_json::from_slice(&doc)
            .map_err(|e| Error::Json(blob_name(desc.digest()).unwrap_or_default(), e))?;
        media::check_config(manifest.config().media_type().as_ref())?;
        // The store reads configs whole: no bigger one than a document.
        let config = manifest.config();
        if config.size() > super::tarindex::MAX_JSON {
            return Err(Error::DocumentTooLarge {
                name: blob_name(config.digest())?,
                size: config.size(),
                max: super::tarindex::MAX_JSON,
            }
            .into());
        }
        for l in manifest.layers() {
            media::layer_compression(l.media_type().as_ref())?;
        }
        copy_blob(idx, &mut ingest, manifest.config())?;
        for l in manifest.layers() {
            copy_blob(idx, &mut ingest, l)?;
        }
        ingest.write(&doc, Some((desc.digest(), desc.size())))?;
        let mut entry = desc.clone();
        entry.set_media_type(mt.as_str().into());
        entry.set_platform(None);
        // Keep only what hull itself records: the digest of the index the
        // image was picked from.
        entry.set_annotations(
            (desc.digest() != top.digest())
                .then(|| HashMap::from([(REPO_DIGEST.to_owned(), top.digest().to_string())])),
        );
        ingest.commit(&entry, &names)?;
        if names.is_empty() {
            out.push(format!("Loaded image ID: {}", manifest.config().digest()));
        }
        out.extend(
            names
                .iter()
                .map(|n| format!("Loaded image: {}", n.familiar())),
        );
    }
    Ok(out)
}

/// The name an index.json entry gives its image. `ref.name` in a layout is
/// often just a tag ("latest"): only a value that looks like a repository
/// (has ':' or '/') names an image.
fn names_of(d: &Descriptor) -> Result<Vec<Reference>> {
    let Some(a) = d.annotations() else {
        return Ok(Vec::new());
    };
    if let Some(n) = a.get(CONTAINERD_NAME) {
        return Ok(vec![Reference::parse(n)?]);
    }
    match a.get(REF_NAME) {
        Some(n) if n.contains(':') || n.contains('/') => Ok(vec![Reference::parse(n)?]),
        _ => Ok(Vec::new()),
    }
}

/// Writes the images as an OCI archive.
pub(super) fn save<W: Write>(store: &Store, images: &[String], w: W) -> Result<W> {
    let mut b = tar::Builder::new(w);
    let tar_err = |e: io::Error| Error::Io {
        what: "cannot write archive",
        path: "".into(),
        source: e,
    };
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    append(&mut b, "oci-layout", layout.len() as u64, &layout[..]).map_err(tar_err)?;
    append_dir(&mut b, "blobs").map_err(tar_err)?;
    append_dir(&mut b, "blobs/sha256").map_err(tar_err)?;
    let mut written = HashSet::new();
    let mut entries = Vec::new();
    for arg in images {
        let image = store.image(arg)?;
        let mut blobs: Vec<(Digest, u64)> =
            vec![(image.config_digest.clone(), image.manifest.config().size())];
        blobs.extend(image.layers.iter().map(|l| (l.digest.clone(), l.size)));
        let manifest_bytes = store.layout().read_blob(&image.manifest_digest)?;
        blobs.push((image.manifest_digest.clone(), manifest_bytes.len() as u64));
        for (d, size) in blobs {
            let name = blob_name(&d)?;
            if written.insert(name.clone()) {
                let f = store.layout().open_blob(&d)?;
                append(&mut b, &name, size, BufReader::new(f)).map_err(tar_err)?;
            }
        }
        let mut desc = Descriptor::new(
            image.manifest_media_type.as_str().into(),
            manifest_bytes.len() as u64,
            image.manifest_digest.clone(),
        );
        if let Ok(r) = Reference::parse(arg) {
            if image.names.contains(&r) {
                desc.set_annotations(Some(HashMap::from([
                    (REF_NAME.to_owned(), r.to_string()),
                    (CONTAINERD_NAME.to_owned(), r.to_string()),
                ])));
            }
        }
        entries.push(desc);
    }
    let mut index = ImageIndex::default();
    index.set_manifests(entries);
    let bytes = serde_json::to_vec(&index).map_err(|e| Error::Json("index.json".into(), e))?;
    append(&mut b, "index.json", bytes.len() as u64, &bytes[..]).map_err(tar_err)?;
    let _ = io_err;
    b.into_inner().map_err(tar_err).map_err(Into::into)
}
