//! Media types hull understands, OCI and Docker schema2, and what each one is.

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer.
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker schema2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker uncompressed layer (rare, but valid).
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Docker "foreign" layer (Windows base layers).
pub const DOCKER_FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// Media type errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A media type hull cannot handle in that position.
    #[error("unknown media type {0:?}")]
    Unknown(String),
}

/// What a manifest-level media type is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestKind {
    /// A single-platform image manifest.
    Manifest,
    /// An index / manifest list pointing at per-platform manifests.
    Index,
}

/// Classifies a manifest media type.
pub fn manifest_kind(media_type: &str) -> Result<ManifestKind, Error> {
    match media_type {
        OCI_MANIFEST | DOCKER_MANIFEST => Ok(ManifestKind::Manifest),
        OCI_INDEX | DOCKER_LIST => Ok(ManifestKind::Index),
        other => Err(Error::Unknown(other.to_owned())),
    }
}

pub use layerfmt::Compression;

/// Compression of a layer media type; unknown layer types are an error.
pub fn layer_compression(media_type: &str) -> Result<Compression, Error> {
    match media_type {
        OCI_LAYER | DOCKER_LAYER | "application/vnd.oci.image.layer.nondistributable.v1.tar" => {
            Ok(Compression::None)
        }
        OCI_LAYER_GZIP
        | DOCKER_LAYER_GZIP
        | DOCKER_FOREIGN_LAYER
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => Ok(Compression::Gzip),
        OCI_LAYER_ZSTD | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
            Ok(Compression::Zstd)
        }
        other => Err(Error::Unknown(other.to_owned())),
    }
}

/// Checks a config media type.
pub fn check_config(media_type: &str) -> Result<(), Error> {
    match media_type {
        OCI_CONFIG | DOCKER_CONFIG => Ok(()),
        other => Err(Error::Unknown(other.to_owned())),
    }
}

/// The OCI layer media type for a compression.
pub fn oci_layer_type(c: Compression) -> &'static str {
    match c {
        Compression::None => OCI_LAYER,
        Compression::Gzip => OCI_LAYER_GZIP,
        Compression::Zstd => OCI_LAYER_ZSTD,
    }
}

/// The manifest media type announced inside a manifest document, used when a
/// descriptor does not say (archives) or to cross-check a registry's header.
pub fn embedded_media_type(doc: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
    }
    let p: Probe = serde_json::from_slice(doc).ok()?;
    match (p.media_type, p.manifests, p.config) {
        (Some(m), _, _) => Some(m),
        (None, Some(_), _) => Some(OCI_INDEX.to_owned()),
        (None, None, Some(_)) => Some(OCI_MANIFEST.to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_types() {
        assert_eq!(manifest_kind(DOCKER_LIST).unwrap(), ManifestKind::Index);
        assert_eq!(manifest_kind(OCI_MANIFEST).unwrap(), ManifestKind::Manifest);
        assert!(
            manifest_kind("application/vnd.docker.distribution.manifest.v1+prettyjws").is_err()
        );
        assert_eq!(
            layer_compression(DOCKER_LAYER_GZIP).unwrap(),
            Compression::Gzip
        );
        assert!(layer_compression("application/x-bogus").is_err());
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(Compression::detect(b"usr/"), Compression::None);
    }

    #[test]
    fn embedded_type_falls_back_on_shape() {
        assert_eq!(
            embedded_media_type(br#"{"manifests":[]}"#).unwrap(),
            OCI_INDEX
        );
        assert_eq!(
            embedded_media_type(br#"{"mediaType":"x","config":{}}"#).unwrap(),
            "x"
        );
        assert!(embedded_media_type(b"nope").is_none());
    }
}
