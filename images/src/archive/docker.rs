//! docker-archive: `manifest.json` listing, per image, a config file, its
//! tags and its layer tarballs.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, Write};

use oci_spec::image::{Descriptor, ImageConfiguration, MediaType};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::tarindex::TarIndex;
use super::{append, append_dir, io_err, Error, Result};
use crate::compression::decompress_capped;
use crate::digest::{self, Digest};
use crate::inflate;
use crate::media::{self, Compression};
use crate::reference::Reference;
use crate::store::Store;

#[derive(Deserialize, Serialize)]
struct Entry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Loads every image listed in manifest.json.
pub(super) fn load(store: &Store, idx: &TarIndex) -> Result<Vec<String>> {
    let entries: Vec<Entry> = idx.json("manifest.json")?;
    let mut out = Vec::new();
    for e in entries {
        let names = e
            .repo_tags
            .iter()
            .flatten()
            .map(|t| Reference::parse(t))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ingest = store.ingest()?;
        let config_bytes = idx.read(&e.config)?;
        let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
            .map_err(|err| Error::Json(e.config.clone(), err))?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != e.layers.len() {
            return Err(Error::LayerCount {
                layers: e.layers.len(),
                diff_ids: diff_ids.len(),
            }
            .into());
        }
        let mut layers = Vec::new();
        for (path, want) in e.layers.iter().zip(diff_ids) {
            let mut head = [0u8; 4];
            let n = idx
                .member(path)?
                .read(&mut head)
                .map_err(io_err("cannot read", std::path::Path::new(path)))?;
            let compression = media::Compression::detect(&head[..n]);
            let diff_id = match compression {
                Compression::None => None,
                c => Some(inflated_digest(idx, path, c)?),
            };
            let (d, size) = ingest.copy(idx.member(path)?, None)?;
            let actual = diff_id.unwrap_or_else(|| d.clone());
            if actual.as_ref() != want {
                return Err(Error::DiffId {
                    layer: path.clone(),
                    expected: want.clone(),
                    actual: actual.to_string(),
                }
                .into());
            }
            layers.push(json!({
                "mediaType": media::oci_layer_type(compression),
                "digest": d.to_string(),
                "size": size,
            }));
        }
        let (cd, cs) = ingest.write(&config_bytes, None)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": {"mediaType": media::OCI_CONFIG, "digest": cd.to_string(), "size": cs},
            "layers": layers,
        });
        let (md, ms) = ingest.write(&serde_json::to_vec(&manifest).unwrap_or_default(), None)?;
        ingest.commit(&Descriptor::new(MediaType::ImageManifest, ms, md), &names)?;
        if names.is_empty() {
            out.push(format!("Loaded image ID: {cd}"));
        }
        out.extend(
            names
                .iter()
                .map(|n| format!("Loaded image: {}", n.familiar())),
        );
    }
    Ok(out)
}

/// The digest of a compressed layer's tar (its diff ID), decompressed
/// within the inflation limit.
fn inflated_digest(idx: &TarIndex, path: &str, c: Compression) -> Result<Digest> {
    let what = format!("layer {path}");
    let tar = decompress_capped(c, idx.member(path)?, &what, idx.size(path)?)?;
    let (d, _) = digest::of_reader(tar).map_err(|e| {
        inflate::or_else(e, io_err("cannot decompress", std::path::Path::new(path)))
    })?;
    Ok(d)
}

/// Writes the images in classic docker-archive form.
pub(super) fn save<W: Write>(store: &Store, images: &[String], w: W) -> Result<W> {
    let mut b = tar::Builder::new(w);
    let tar_err = |e: io::Error| Error::Io {
        what: "cannot write archive",
        path: "".into(),
        source: e,
    };
    let mut manifest = Vec::new();
    let mut written = HashSet::new();
    for arg in images {
        let image = store.image(arg)?;
        let repo_tags: Vec<String> = match Reference::parse(arg) {
            Ok(r) if image.names.contains(&r) => vec![r.familiar()],
            _ => Vec::new(),
        };
        let config_bytes = store.layout().read_blob(&image.config_digest)?;
        let config_name = format!("{}.json", digest::hex(&image.config_digest)?);
        if written.insert(config_name.clone()) {
            append(
                &mut b,
                &config_name,
                config_bytes.len() as u64,
                &config_bytes[..],
            )
            .map_err(tar_err)?;
        }
        let diff_ids = image.config.rootfs().diff_ids();
        if diff_ids.len() != image.layers.len() {
            return Err(Error::LayerCount {
                layers: image.layers.len(),
                diff_ids: diff_ids.len(),
            }
            .into());
        }
        let mut layer_paths = Vec::new();
        for (layer, diff_id) in image.layers.iter().zip(diff_ids) {
            let diff: Digest = digest::parse(diff_id)?;
            let dir = digest::hex(&diff)?.to_owned();
            let path = format!("{dir}/layer.tar");
            layer_paths.push(path.clone());
            if !written.insert(path.clone()) {
                continue;
            }
            append_dir(&mut b, &dir).map_err(tar_err)?;
            append(&mut b, &format!("{dir}/VERSION"), 3, &b"1.0"[..]).map_err(tar_err)?;
            let blob = store.layout().open_blob(&layer.digest)?;
            match layer.compression {
                Compression::None => {
                    append(&mut b, &path, layer.size, BufReader::new(blob)).map_err(tar_err)?;
                }
                c => {
                    // The tar header needs the size up front: decompress to a temp file.
                    let tmpdir = store.layout().dir().join(".tmp");
                    let mut tmp: File = tempfile::tempfile_in(&tmpdir)
                        .map_err(io_err("cannot create a file in", &tmpdir))?;
                    let what = format!("layer {}", layer.digest);
                    let mut tar = decompress_capped(c, BufReader::new(blob), &what, layer.size)?;
                    let n = io::copy(&mut tar, &mut tmp).map_err(|e| {
                        inflate::or_else(e, io_err("cannot decompress", &layer.path))
                    })?;
                    tmp.rewind().map_err(io_err("cannot read", &tmpdir))?;
                    append(&mut b, &path, n, BufReader::new(tmp)).map_err(tar_err)?;
                }
            }
        }
        manifest.push(Entry {
            config: config_name,
            repo_tags: Some(repo_tags),
            layers: layer_paths,
        });
    }
    let m = serde_json::to_vec(&manifest).unwrap_or_default();
    append(&mut b, "manifest.json", m.len() as u64, &m[..]).map_err(tar_err)?;
    b.into_inner().map_err(tar_err).map_err(Into::into)
}
