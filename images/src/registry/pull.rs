//! `hull pull`: manifest (and index) resolution, then config and layers,
//! each verified against its digest, layers fetched concurrently.

use std::collections::HashMap;
use std::io::{self, IsTerminal, Read};
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};

use super::client::{backoff, Body, Client, Options, RETRIES};
use super::Error;
use crate::digest::{self, Digest};
use crate::media::{self, ManifestKind};
use crate::platform::Platform;
use crate::reference::Reference;
use crate::store::{short, Store, REPO_DIGEST};

/// Manifests larger than this are refused (they are JSON documents).
const MAX_MANIFEST: u64 = 4 << 20;
/// Layers downloaded at once.
const PARALLEL: usize = 4;

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// What a pull did.
#[derive(Debug)]
pub struct PullReport {
    /// Digest the registry served for the reference (index or manifest).
    pub digest: Digest,
    /// Image ID (config digest).
    pub id: Digest,
    /// Layers downloaded (the others were present).
    pub downloaded: usize,
}

/// Fetches a manifest document; returns bytes, media type and digest.
fn get_manifest(
    client: &Client,
    r: &Reference,
    reference: &str,
) -> crate::Result<(Vec<u8>, String, Digest)> {
    let url = client.url(&format!("{}/manifests/{reference}", r.path()));
    let resp = client.send(
        "GET",
        &url,
        &[("Accept", ACCEPT)],
        Body::Empty,
        &format!("manifest {}", r.familiar()),
    )?;
    let ctype = resp
        .header("Content-Type")
        .map(|c| c.split(';').next().unwrap_or("").trim().to_owned());
    let mut bytes = Vec::new();
    resp.into_reader()
        .take(MAX_MANIFEST + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| Error::Body {
            url: url.clone(),
            source,
        })?;
    if bytes.len() as u64 > MAX_MANIFEST {
        return Err(Error::TooLarge(url).into());
    }
    let d = digest::of_bytes(&bytes);
    // A JSON content type says nothing: trust the document's own mediaType.
    let mt = match ctype {
        Some(c) if c != "application/json" && !c.is_empty() => c,
        _ => media::embedded_media_type(&bytes).unwrap_or_default(),
    };
    Ok((bytes, mt, d))
}

/// Pulls `r` into the store and tags it.
pub fn pull(store: &Store, r: &Reference, opts: &Options) -> crate::Result<PullReport> {
    let scope = format!("repository:{}:pull", r.path());
    let client = Client::new(r.domain(), Some(scope), None, opts);
    let (bytes, mt, top, manifest_digest, manifest) = resolve_manifest(&client, r, opts)?;
    // Refuse unknown types before downloading anything.
    media::check_config(manifest.config().media_type().as_ref())?;
    for l in manifest.layers() {
        media::layer_compression(l.media_type().as_ref())?;
        digest::hex(l.digest())?;
    }

    let mut ingest = store.ingest()?;
    let cfg = manifest.config();
    if cfg.size() > MAX_MANIFEST {
        return Err(Error::ConfigTooLarge(cfg.digest().to_string(), cfg.size()).into());
    }
    if !ingest.has(cfg.digest(), cfg.size()) {
        let (url, resp) = get_blob(&client, r, cfg.digest(), "config")?;
        let mut b = Vec::new();
        resp.into_reader()
            .take(MAX_MANIFEST + 1)
            .read_to_end(&mut b)
            .map_err(|source| Error::Body { url, source })?;
        ingest.write(&b, Some((cfg.digest(), cfg.size())))?;
    }

    let todo: Vec<&Descriptor> = manifest
        .layers()
        .iter()
        .filter(|l| !ingest.has(l.digest(), l.size()))
        .collect();
    let bars = (opts.progress && io::stderr().is_terminal()).then(MultiProgress::new);
    let (fetched, first_error) = fetch_layers(store, &client, r, &todo, bars.as_ref());
    for d in fetched {
        if bars.is_some() {
            eprintln!("{}: Pull complete", short(&d));
        }
        ingest.note_added(&d);
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    ingest.write(&bytes, Some((&manifest_digest, bytes.len() as u64)))?;
    let mut desc = Descriptor::new(
        mt.as_str().into(),
        bytes.len() as u64,
        manifest_digest.clone(),
    );
    if top != manifest_digest {
        desc.set_annotations(Some(HashMap::from([(
            REPO_DIGEST.to_owned(),
            top.to_string(),
        )])));
    }
    let names: Vec<Reference> = match r.tag() {
        Some(t) => vec![r.with_tag(t)],
        None => Vec::new(),
    };
    ingest.commit(&desc, &names)?;
    Ok(PullReport {
        digest: top,
        id: cfg.digest().clone(),
        downloaded: todo.len(),
    })
}

/// The image manifest `r` names: through an index for the platform of
/// `opts` if needed. Returns its bytes, media type, the digest `r`
/// resolved to first (an index's, or the manifest's), the manifest's
/// digest, and the parsed manifest.
fn resolve_manifest(
    client: &Client,
    r: &Reference,
    opts: &Options,
) -> crate::Result<(Vec<u8>, String, Digest, Digest, ImageManifest)> {
    let (mut bytes, mut mt, top) = get_manifest(client, r, &r.manifest_ref())?;
    if let Some(want) = r.digest() {
        digest::verify(want, None, &top, bytes.len() as u64)?;
    }
    let mut manifest_digest = top.clone();
    if media::manifest_kind(&mt)? == ManifestKind::Index {
        let index: ImageIndex = crate::store::parse_json("index", &top, &bytes)?;
        let platform = opts.platform.clone().unwrap_or_else(Platform::host);
        let d = platform.select(index.manifests())?.clone();
        let (b, m, got) = get_manifest(client, r, d.digest().as_ref())?;
        digest::verify(d.digest(), Some(d.size()), &got, b.len() as u64)?;
        (bytes, mt, manifest_digest) = (b, m, got);
        if media::manifest_kind(&mt)? != ManifestKind::Manifest {
            return Err(media::Error::Unknown(mt).into());
        }
    }
    let manifest: ImageManifest = crate::store::parse_json("manifest", &manifest_digest, &bytes)?;
    Ok((bytes, mt, top, manifest_digest, manifest))
}

/// Downloads the layers of `todo`, `PARALLEL` at a time; returns the
/// digests fetched and the first error (which stops the others taking
/// more work).
fn fetch_layers(
    store: &Store,
    client: &Client,
    r: &Reference,
    todo: &[&Descriptor],
    bars: Option<&MultiProgress>,
) -> (Vec<Digest>, Option<crate::Error>) {
    let queue = Mutex::new(todo.iter().copied());
    let fetched: Mutex<Vec<Digest>> = Mutex::new(Vec::new());
    let first_error: Mutex<Option<crate::Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..PARALLEL.min(todo.len()) {
            s.spawn(|| loop {
                if first_error.lock().map(|e| e.is_some()).unwrap_or(true) {
                    return;
                }
                let Some(layer) = queue.lock().ok().and_then(|mut q| q.next()) else {
                    return;
                };
                match fetch_with_retry(store, client, r, layer, bars) {
                    Ok(d) => {
                        if let Ok(mut f) = fetched.lock() {
                            f.push(d);
                        }
                    }
                    Err(e) => {
                        if let Ok(mut slot) = first_error.lock() {
                            slot.get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    (
        fetched.into_inner().unwrap_or_default(),
        first_error.into_inner().ok().flatten(),
    )
}

/// GETs blob `digest` of `r`'s repository; `kind` names it in errors.
/// Returns the URL too, for errors reading the body.
fn get_blob(
    client: &Client,
    r: &Reference,
    digest: &Digest,
    kind: &str,
) -> crate::Result<(String, ureq::Response)> {
    let url = client.url(&format!("{}/blobs/{digest}", r.path()));
    let resp = client.send("GET", &url, &[], Body::Empty, &format!("{kind} {digest}"))?;
    Ok((url, resp))
}

/// [`fetch_blob`], again when the connection broke mid-body (the partial
/// data is dropped; a digest mismatch is not retried).
fn fetch_with_retry(
    store: &Store,
    client: &Client,
    r: &Reference,
    layer: &Descriptor,
    bars: Option<&MultiProgress>,
) -> crate::Result<Digest> {
    let mut attempt = 0;
    loop {
        match fetch_blob(store, client, r, layer, bars) {
            Err(crate::Error::Registry(Error::Body { .. })) if attempt < RETRIES => {
                attempt += 1;
                backoff(attempt);
            }
            other => return other,
        }
    }
}

/// Downloads one layer into the store, verified.
fn fetch_blob(
    store: &Store,
    client: &Client,
    r: &Reference,
    layer: &Descriptor,
    bars: Option<&MultiProgress>,
) -> crate::Result<Digest> {
    let (url, resp) = get_blob(client, r, layer.digest(), "blob")?;
    let mut w = store.layout().blob_writer()?;
    let reader = resp.into_reader().take(layer.size() + 1);
    let body_err = |source| Error::Body {
        url: url.clone(),
        source,
    };
    match bars {
        Some(m) => {
            let pb = m.add(ProgressBar::new(layer.size()));
            pb.set_style(
                ProgressStyle::with_template(
                    "{prefix}: [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            pb.set_prefix(short(layer.digest()));
            io::copy(&mut pb.wrap_read(reader), &mut w).map_err(body_err)?;
            pb.finish_and_clear();
        }
        None => {
            io::copy(&mut { reader }, &mut w).map_err(body_err)?;
        }
    }
    let (d, _) = w.commit(Some((layer.digest(), layer.size())))?;
    Ok(d)
}
