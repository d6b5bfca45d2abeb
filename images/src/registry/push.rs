//! `hull push`: blobs the registry lacks (monolithic uploads), then the
//! manifest exactly as stored, so its digest is preserved.

use std::io::Read;

use super::client::{Body, Client, Options};
use super::Error;
use crate::digest::Digest;
use crate::reference::Reference;
use crate::store::Store;

/// Pushes the local image named `r` to its registry; returns the manifest
/// digest and size, and how many blobs were uploaded.
pub fn push(store: &Store, r: &Reference, opts: &Options) -> crate::Result<(Digest, u64, usize)> {
    let tag = r
        .tag()
        .filter(|_| r.digest().is_none())
        .ok_or_else(|| Error::NeedTag(r.to_string()))?
        .to_owned();
    let image = store.image(&r.to_string())?;
    let scope = format!("repository:{}:pull,push", r.path());
    let client = Client::new(r.domain(), Some(scope), None, opts);
    let mut blobs: Vec<(Digest, u64, std::path::PathBuf)> = image
        .layers
        .iter()
        .map(|l| (l.digest.clone(), l.size, l.path.clone()))
        .collect();
    blobs.push((
        image.config_digest.clone(),
        image.manifest.config().size(),
        store.layout().blob_path(&image.config_digest)?,
    ));
    let mut uploaded = 0;
    for (d, size, path) in &blobs {
        let url = client.url(&format!("{}/blobs/{d}", r.path()));
        match client.send("HEAD", &url, &[], Body::Empty, "blob") {
            Ok(_) => continue,
            Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let start = client.url(&format!("{}/blobs/uploads/", r.path()));
        let resp = client.send(
            "POST",
            &start,
            &[("Content-Length", "0")],
            Body::Empty,
            "upload",
        )?;
        let location = resp
            .header("Location")
            .ok_or_else(|| Error::NoLocation(start.clone()))?;
        let mut put = client.absolute(location);
        put.push(if put.contains('?') { '&' } else { '?' });
        put.push_str(&format!("digest={d}"));
        client.send(
            "PUT",
            &put,
            &[("Content-Type", "application/octet-stream")],
            Body::File(path, *size),
            "upload",
        )?;
        uploaded += 1;
    }
    let manifest = store.layout().read_blob(&image.manifest_digest)?;
    let url = client.url(&format!("{}/manifests/{tag}", r.path()));
    let resp = client.send(
        "PUT",
        &url,
        &[("Content-Type", &image.manifest_media_type)],
        Body::Bytes(&manifest),
        "manifest",
    )?;
    let mut sink = Vec::new();
    let _ = resp.into_reader().take(4096).read_to_end(&mut sink);
    Ok((
        image.manifest_digest.clone(),
        manifest.len() as u64,
        uploaded,
    ))
}
