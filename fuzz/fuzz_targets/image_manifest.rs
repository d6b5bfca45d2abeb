//! Fuzzes the documents a registry or an image archive hands hull before
//! any blob is trusted: the input is a descriptor media type (picked by
//! the first byte, or none, as in index.json entries without one) and a
//! JSON document, taken through the checks `pull`, `load` and the store
//! apply to manifests, indexes and image configs. Nothing may panic, and
//! whatever passes may only name blobs by safe sha256 file names.

#![no_main]

use images::media::{self, ManifestKind};
use images::platform::Platform;
use images::store::{descriptor_media_type, parse_json};
use libfuzzer_sys::fuzz_target;
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};

const TYPES: [&str; 6] = [
    "",
    media::OCI_MANIFEST,
    media::OCI_INDEX,
    media::DOCKER_MANIFEST,
    media::DOCKER_LIST,
    media::OCI_CONFIG,
];

/// The checks `pull` makes on a manifest before downloading its blobs.
fn check_manifest(m: &ImageManifest) -> bool {
    if media::check_config(m.config().media_type().as_ref()).is_err() {
        return false;
    }
    for l in m.layers() {
        if media::layer_compression(l.media_type().as_ref()).is_err() {
            return false;
        }
        match images::digest::hex(l.digest()) {
            Ok(hex) => assert!(images::digest::is_sha256_hex(hex)),
            Err(_) => return false,
        }
    }
    true
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, doc)) = data.split_first() else {
        return;
    };
    let zero = images::digest::of_bytes(b"");
    let media_type = TYPES[usize::from(pick) % TYPES.len()];
    let desc = Descriptor::new(MediaType::from(media_type), doc.len() as u64, zero.clone());
    let mt = descriptor_media_type(&desc, doc);
    let _ = media::embedded_media_type(doc);

    match media::manifest_kind(&mt) {
        Ok(ManifestKind::Index) => {
            if let Ok(idx) = parse_json::<ImageIndex>("index", &zero, doc) {
                for p in [Platform::host(), Platform::parse("linux/arm64/v8").unwrap()] {
                    if let Ok(d) = p.select(idx.manifests()) {
                        assert!(p.matches(d));
                        let _ = images::digest::hex(d.digest());
                        let _ = media::manifest_kind(d.media_type().as_ref());
                    }
                }
            }
        }
        Ok(ManifestKind::Manifest) => {
            if let Ok(m) = parse_json::<ImageManifest>("manifest", &zero, doc) {
                if check_manifest(&m) {
                    let _ = images::digest::hex(m.config().digest());
                }
            }
        }
        Err(_) => {}
    }
    // The config is parsed whatever the manifest said about it.
    if let Ok(c) = parse_json::<ImageConfiguration>("config", &zero, doc) {
        for d in c.rootfs().diff_ids() {
            let _ = images::digest::parse(d);
        }
    }
});
