//! Image archives: `hull save` / `hull load`.
//!
//! Input: docker-archive (classic `manifest.json` form, and Docker 25's form
//! that also carries an OCI layout) and OCI archive (an OCI layout in a tar),
//! optionally gzip-compressed as a whole. Output: docker-archive (classic form,
//! uncompressed layers, as `docker load` and skopeo expect) or OCI archive.

mod docker;
mod oci;
mod tarindex;

use std::io;
use std::path::{Path, PathBuf};

use crate::store::Store;
use tarindex::TarIndex;

/// Archive errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file is not a tar archive at all.
    #[error("{} is not a tar archive", .0.display())]
    NotTar(PathBuf, #[source] io::Error),
    /// A tar without manifest.json or index.json.
    #[error("{} is not an image archive (no manifest.json or index.json)", .0.display())]
    NotImage(PathBuf),
    /// A file named by the archive's manifest is absent.
    #[error("archive has no {0} (named by its manifest)")]
    Missing(String),
    /// A JSON document in the archive does not parse.
    #[error("cannot parse {0} in the archive")]
    Json(String, #[source] serde_json::Error),
    /// A layer does not hash to the config's diff ID.
    #[error(
        "layer {layer} does not match the image config: diff ID {actual}, config says {expected}"
    )]
    DiffId {
        /// Layer path in the archive.
        layer: String,
        /// What the config lists.
        expected: String,
        /// What the layer hashes to.
        actual: String,
    },
    /// A compressed archive inflates past its limit.
    #[error(transparent)]
    Inflate(#[from] crate::inflate::Error),
    /// A JSON document (index, manifest, config) over the size limit,
    /// refused by the size its tar header or descriptor gives.
    #[error(
        "{name} in the archive is {size} bytes, larger than the {max} bytes a document may have"
    )]
    DocumentTooLarge {
        /// Member name.
        name: String,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A long-name or PAX record larger than any real archive needs.
    #[error("{} has a tar metadata record of {size} bytes (at most {max})", path.display())]
    MetaTooLarge {
        /// The archive.
        path: PathBuf,
        /// The record's size.
        size: u64,
        /// The largest accepted.
        max: u64,
    },
    /// The config lists another number of layers than the manifest.
    #[error("manifest lists {layers} layers but the config has {diff_ids} diff IDs")]
    LayerCount {
        /// Layers in the manifest.
        layers: usize,
        /// diff_ids in the config.
        diff_ids: usize,
    },
}

/// Archive formats hull writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `docker save` format.
    DockerArchive,
    /// OCI image layout in a tar.
    OciArchive,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "docker-archive" | "docker" => Ok(Self::DockerArchive),
            "oci-archive" | "oci" => Ok(Self::OciArchive),
            _ => Err(format!(
                "unknown archive format {s:?} (docker-archive, oci-archive)"
            )),
        }
    }
}

type Result<T, E = crate::Error> = std::result::Result<T, E>;

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// `hull load -i FILE`: returns one line per image loaded, as Docker prints.
pub fn load(store: &Store, path: &Path) -> Result<Vec<String>> {
    let idx = TarIndex::open(path, &store.layout().dir().join(".tmp"))?;
    if idx.contains("oci-layout") && idx.contains("index.json") {
        oci::load(store, &idx)
    } else if idx.contains("manifest.json") {
        docker::load(store, &idx)
    } else {
        Err(Error::NotImage(path.to_owned()).into())
    }
}

/// `hull save -o FILE IMG...`: writes the images to `out` atomically.
pub fn save(store: &Store, images: &[String], out: &Path, format: Format) -> Result<()> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let tmp =
        tempfile::NamedTempFile::new_in(&dir).map_err(io_err("cannot create a file in", &dir))?;
    let file = tmp.reopen().map_err(io_err("cannot open", tmp.path()))?;
    let w = io::BufWriter::with_capacity(1 << 20, file);
    let w = match format {
        Format::DockerArchive => docker::save(store, images, w)?,
        Format::OciArchive => oci::save(store, images, w)?,
    };
    let file = w
        .into_inner()
        .map_err(|e| io_err("cannot write", out)(e.into_error()))?;
    file.sync_all().map_err(io_err("cannot sync", out))?;
    tmp.persist(out)
        .map_err(|e| io_err("cannot write", out)(e.error))?;
    Ok(())
}

/// `hull save` to a stream (stdout): the archive is written as it is made.
pub fn write(store: &Store, images: &[String], w: impl io::Write, format: Format) -> Result<()> {
    let w = io::BufWriter::with_capacity(1 << 20, w);
    let mut w = match format {
        Format::DockerArchive => docker::save(store, images, w)?,
        Format::OciArchive => oci::save(store, images, w)?,
    };
    io::Write::flush(&mut w).map_err(io_err("cannot write", Path::new("output")))?;
    Ok(())
}

/// `hull load` from a stream (stdin): spooled to a temporary file in the
/// store first, since archives are read out of order.
pub fn load_reader(store: &Store, mut r: impl io::Read) -> Result<Vec<String>> {
    let dir = store.layout().dir().join(".tmp");
    let mut tmp =
        tempfile::NamedTempFile::new_in(&dir).map_err(io_err("cannot create a file in", &dir))?;
    io::copy(&mut r, &mut tmp).map_err(io_err("cannot spool input to", &dir))?;
    load(store, tmp.path())
}

/// Appends a regular file entry to a tar being written.
fn append(
    b: &mut tar::Builder<impl io::Write>,
    name: &str,
    size: u64,
    data: impl io::Read,
) -> io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, data)
}

/// Appends a directory entry.
fn append_dir(b: &mut tar::Builder<impl io::Write>, name: &str) -> io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(0);
    h.set_mode(0o755);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Directory);
    b.append_data(&mut h, name, io::empty())
}
