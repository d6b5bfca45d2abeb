//! The image store: named images on top of the OCI [`Layout`].
//!
//! Each tag is one entry of `index.json` whose descriptor carries the
//! `org.opencontainers.image.ref.name` annotation with the fully normalized
//! name (`docker.io/library/busybox:latest`), so OCI tools can address it as
//! `oci:<root>/images:docker.io/library/busybox:latest`. An image that loses
//! its last tag to a newer one stays as an entry without annotation (Docker's
//! "dangling" `<none>` image) until `rmi` or `image prune`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};

use crate::digest::{self, short_id, Digest};
use crate::layout::{Layout, LockGuard};
use crate::media::{self, Compression, ManifestKind};
use crate::platform::Platform;
use crate::reference::Reference;

/// Annotation holding a tag in index.json.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation recording the digest a registry served for an image when it
/// differs from the stored manifest's (the index of a multi-platform image),
/// so that `name@<index digest>` still finds it.
pub const REPO_DIGEST: &str = "io.hull.repo-digest";

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing matches the name or ID.
    #[error("No such image: {0}")]
    NotFound(String),
    /// An ID prefix matches several images.
    #[error("image ID prefix {0:?} matches several images")]
    Ambiguous(String),
    /// `rmi ID` of an image with several names, without `-f`.
    #[error("image {id} is tagged as {names}: remove the tags or use -f")]
    MultipleNames {
        /// Short ID.
        id: String,
        /// Its names.
        names: String,
    },
    /// `rmi NAME` of the last name of an image a container was created
    /// from, without `-f` (Docker's words, so scripts matching them work).
    #[error(
        "conflict: unable to remove repository reference {reference:?} (must force) - \
         container {container} is using its referenced image {id}"
    )]
    ReferenceInUse {
        /// The name as given.
        reference: String,
        /// Short ID of a container using the image.
        container: String,
        /// Short image ID.
        id: String,
    },
    /// `rmi ID` of an image a container was created from: refused while
    /// the container runs, and without `-f` while it exists.
    #[error(
        "conflict: unable to delete {id} ({}) - image is being used by {} container {container}",
        if *running { "cannot be forced" } else { "must be forced" },
        if *running { "running" } else { "stopped" }
    )]
    ImageInUse {
        /// Short image ID.
        id: String,
        /// Short ID of a container using the image.
        container: String,
        /// Whether that container runs.
        running: bool,
    },
    /// A stored manifest, index or config does not parse.
    #[error("cannot parse {what} {digest}")]
    Json {
        /// What kind of document.
        what: &'static str,
        /// Its digest.
        digest: String,
        /// Parser error.
        #[source]
        source: serde_json::Error,
    },
}

type Result<T, E = crate::Error> = std::result::Result<T, E>;

/// One layer of a resolved image.
#[derive(Clone, Debug)]
pub struct Layer {
    /// Blob digest (of the stored, possibly compressed, bytes).
    pub digest: Digest,
    /// Media type as found in the manifest.
    pub media_type: String,
    /// Blob size.
    pub size: u64,
    /// Compression implied by the media type.
    pub compression: Compression,
    /// Path of the blob in the store.
    pub path: PathBuf,
}

/// A fully resolved single-platform image.
#[derive(Clone, Debug)]
pub struct Image {
    /// Names (tags) pointing at it.
    pub names: Vec<Reference>,
    /// Digest the image is known by: what the registry served (an index for
    /// multi-platform images), else the index.json entry's.
    pub digest: Digest,
    /// Digest of the platform manifest.
    pub manifest_digest: Digest,
    /// Media type of that manifest (OCI or Docker schema2, kept as received).
    pub manifest_media_type: String,
    /// The manifest.
    pub manifest: ImageManifest,
    /// Config blob digest: the image ID.
    pub config_digest: Digest,
    /// Config media type.
    pub config_media_type: String,
    /// The config, parsed.
    pub config: ImageConfiguration,
    /// Layers, base first.
    pub layers: Vec<Layer>,
}

impl Image {
    /// Image ID (the config digest), as Docker defines it.
    pub fn id(&self) -> &Digest {
        &self.config_digest
    }

    /// First 12 hex digits of the ID.
    pub fn short_id(&self) -> String {
        short(&self.config_digest)
    }

    /// Stored size: config plus layer blobs.
    pub fn size(&self) -> u64 {
        self.manifest.config().size() + self.layers.iter().map(|l| l.size).sum::<u64>()
    }
}

/// One row of `hull images`.
#[derive(Clone, Debug)]
pub struct ImageSummary {
    /// Name, or None for a dangling image.
    pub name: Option<Reference>,
    /// The resolved image.
    pub image: Image,
}

/// What `rmi` did.
#[derive(Debug, Default)]
pub struct Removal {
    /// Names removed.
    pub untagged: Vec<String>,
    /// Images (IDs) whose last reference went away.
    pub deleted: Vec<String>,
    /// Bytes freed by the GC.
    pub freed: u64,
}

/// A container made from an image. The store knows nothing of containers;
/// the caller lists them so that `rmi` refuses to pull an image from under
/// one (unless forced, as in Docker) and no GC deletes the blobs a
/// container may need again: an image in use that loses its last name
/// stays as a dangling image until its last container is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUser {
    /// The image ID (config digest, `sha256:...`) it was created from.
    pub image_id: String,
    /// The container's short ID, for messages.
    pub container: String,
    /// Whether the container runs.
    pub running: bool,
}

/// First 12 hex digits of a digest.
pub fn short(d: &Digest) -> String {
    short_id(d.as_ref())
}

/// The image store under `<root>/images`.
#[derive(Clone, Debug)]
pub struct Store {
    layout: Layout,
}

struct Found {
    digest: Digest,
    by_name: Option<String>,
}

/// Blobs being added by one pull/load/import. The shared ingest lock keeps
/// GC away meanwhile; if the operation fails (dropped without
/// [`Ingest::commit`]) the blobs it added and nothing references are deleted,
/// so a failed operation leaves the store as it was.
pub struct Ingest<'a> {
    store: &'a Store,
    guard: Option<LockGuard>,
    added: Vec<Digest>,
    committed: bool,
}

impl Ingest<'_> {
    /// True if the blob is already in the store.
    pub fn has(&self, d: &Digest, size: u64) -> bool {
        self.store.layout.has_blob(d, Some(size))
    }

    /// Writes a small blob, verified against `expected` when given.
    pub fn write(
        &mut self,
        bytes: &[u8],
        expected: Option<(&Digest, u64)>,
    ) -> Result<(Digest, u64)> {
        let d = digest::of_bytes(bytes);
        let fresh = !self.store.layout.has_blob(&d, None);
        let out = self.store.layout.write_blob(bytes, expected)?;
        if fresh {
            self.added.push(out.0.clone());
        }
        Ok(out)
    }

    /// Streams a blob in; skipped (the reader left unread) when `expected`
    /// names a blob already present.
    pub fn copy(
        &mut self,
        r: impl std::io::Read,
        expected: Option<(&Digest, u64)>,
    ) -> Result<(Digest, u64)> {
        if let Some((d, n)) = expected {
            if self.has(d, n) {
                return Ok((d.clone(), n));
            }
        }
        let out = self.store.layout.copy_blob(r, expected)?;
        self.note_added(&out.0);
        Ok(out)
    }

    /// Records a blob added by other means (a [`crate::layout::BlobWriter`]).
    pub fn note_added(&mut self, d: &Digest) {
        self.added.push(d.clone());
    }

    /// Makes the image visible under `names` and ends the ingest.
    pub fn commit(mut self, desc: &Descriptor, names: &[Reference]) -> Result<()> {
        self.store.add(desc, names)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Ingest<'_> {
    fn drop(&mut self) {
        self.guard.take();
        if !self.committed && !self.added.is_empty() {
            if let Err(e) = self.store.discard(&self.added) {
                tracing::warn!("cannot remove blobs of a failed operation: {e}");
            }
        }
    }
}

impl Store {
    /// Opens (creating if needed) the store of a hull root.
    pub fn open(root: &Path) -> Result<Self> {
        Ok(Self {
            layout: Layout::open(&root.join("images"))?,
        })
    }

    /// The underlying OCI layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Lock to hold while adding blobs (see [`Layout::ingest_lock`]).
    pub fn ingest_lock(&self) -> Result<LockGuard> {
        Ok(self.layout.ingest_lock()?)
    }

    /// Starts adding blobs for one image operation. When no other one
    /// runs, first removes what an interrupted one (a killed `hull pull`)
    /// left in the layout's `.tmp/`.
    pub fn ingest(&self) -> Result<Ingest<'_>> {
        if let Some(_g) = self.layout.try_gc_lock()? {
            self.layout.remove_temporaries()?;
        }
        Ok(Ingest {
            store: self,
            guard: Some(self.layout.ingest_lock()?),
            added: Vec::new(),
            committed: false,
        })
    }

    /// Deletes the given blobs unless index.json references them. Skipped
    /// while other pulls or loads run (never wait for them on an error
    /// path): the next GC collects the blobs then.
    fn discard(&self, blobs: &[Digest]) -> Result<()> {
        let Some(_g) = self.layout.try_gc_lock()? else {
            return Ok(());
        };
        let index = self.layout.read_index()?;
        let mut keep = HashSet::new();
        for e in index.manifests() {
            self.mark(e, &mut keep, 0)?;
        }
        for d in blobs {
            if !keep.contains(digest::hex(d)?) {
                let _ = std::fs::remove_file(self.layout.blob_path(d)?);
            }
        }
        Ok(())
    }

    /// All images, one row per name plus one per dangling image.
    pub fn list(&self) -> Result<Vec<ImageSummary>> {
        let index = self.layout.read_index()?;
        let mut cache: HashMap<String, Image> = HashMap::new();
        let mut out = Vec::new();
        for d in index.manifests() {
            let key = d.digest().to_string();
            let image = match cache.get(&key) {
                Some(i) => i.clone(),
                None => match self.load(d, names_of(&index, d.digest())) {
                    Ok(i) => {
                        cache.insert(key, i.clone());
                        i
                    }
                    // One damaged image must not hide the others; it can
                    // still be removed by name.
                    Err(e) => {
                        tracing::warn!("skipping image {key}: {e}");
                        continue;
                    }
                },
            };
            out.push(ImageSummary {
                name: ref_name(d).and_then(|n| Reference::parse(n).ok()),
                image,
            });
        }
        Ok(out)
    }

    /// Resolves a name, `name@digest`, digest or ID prefix to an image.
    pub fn image(&self, s: &str) -> Result<Image> {
        let index = self.layout.read_index()?;
        let found = self.find(&index, s)?;
        let d = entry_of(&index, &found.digest).ok_or_else(|| Error::NotFound(s.into()))?;
        self.load(d, names_of(&index, &found.digest))
    }

    fn find(&self, index: &ImageIndex, s: &str) -> Result<Found> {
        if let Ok(r) = Reference::parse(s) {
            if let Some(d) = r.digest() {
                let by_repo_digest = index
                    .manifests()
                    .iter()
                    .find(|e| annotation(e, REPO_DIGEST) == Some(d.as_ref()));
                if let Some(e) = entry_of(index, d).or(by_repo_digest) {
                    return Ok(Found {
                        digest: e.digest().clone(),
                        by_name: None,
                    });
                }
            } else {
                let name = r.to_string();
                if let Some(e) = index
                    .manifests()
                    .iter()
                    .find(|e| ref_name(e) == Some(&name))
                {
                    return Ok(Found {
                        digest: e.digest().clone(),
                        by_name: Some(name),
                    });
                }
            }
        }
        let prefix = s.strip_prefix("sha256:").unwrap_or(s);
        if !prefix.is_empty() && prefix.len() <= 64 && prefix.bytes().all(|b| b.is_ascii_hexdigit())
        {
            let mut hits: Vec<Digest> = Vec::new();
            for e in index.manifests() {
                if hits.contains(e.digest()) {
                    continue;
                }
                let manifest_hex = digest::hex(e.digest()).unwrap_or("");
                let id_hit = self
                    .load(e, Vec::new())
                    .map(|i| {
                        digest::hex(&i.config_digest)
                            .unwrap_or("")
                            .starts_with(prefix)
                    })
                    .unwrap_or(false);
                if id_hit || (prefix.len() == 64 && manifest_hex == prefix) {
                    hits.push(e.digest().clone());
                }
            }
            match hits.len() {
                1 => {
                    return Ok(Found {
                        digest: hits.remove(0),
                        by_name: None,
                    })
                }
                0 => {}
                _ => return Err(Error::Ambiguous(s.into()).into()),
            }
        }
        Err(Error::NotFound(s.into()).into())
    }

    /// Resolves an index.json entry to a single-platform image.
    fn load(&self, entry: &Descriptor, names: Vec<Reference>) -> Result<Image> {
        let mut desc = entry.clone();
        // An entry may be an index (multi-platform); follow it to the host's manifest.
        for _ in 0..4 {
            let bytes = self.layout.read_blob(desc.digest())?;
            let mt = descriptor_media_type(&desc, &bytes);
            match media::manifest_kind(&mt)? {
                ManifestKind::Index => {
                    let idx: ImageIndex = parse_json("index", desc.digest(), &bytes)?;
                    desc = Platform::host().select(idx.manifests())?.clone();
                }
                ManifestKind::Manifest => {
                    let top = annotation(entry, REPO_DIGEST)
                        .and_then(|d| digest::parse(d).ok())
                        .unwrap_or_else(|| entry.digest().clone());
                    return self.load_manifest(top, &desc, &mt, &bytes, names);
                }
            }
        }
        Err(Error::NotFound(entry.digest().to_string()).into())
    }

    fn load_manifest(
        &self,
        top: Digest,
        desc: &Descriptor,
        mt: &str,
        bytes: &[u8],
        names: Vec<Reference>,
    ) -> Result<Image> {
        let manifest: ImageManifest = parse_json("manifest", desc.digest(), bytes)?;
        let cfg = manifest.config();
        let config_bytes = self.layout.read_blob(cfg.digest())?;
        let config: ImageConfiguration = parse_json("config", cfg.digest(), &config_bytes)?;
        let mut layers = Vec::new();
        for l in manifest.layers() {
            let media_type = l.media_type().to_string();
            layers.push(Layer {
                digest: l.digest().clone(),
                compression: media::layer_compression(&media_type)?,
                media_type,
                size: l.size(),
                path: self.layout.blob_path(l.digest())?,
            });
        }
        Ok(Image {
            names,
            digest: top,
            manifest_digest: desc.digest().clone(),
            manifest_media_type: mt.to_owned(),
            config_digest: cfg.digest().clone(),
            config_media_type: cfg.media_type().to_string(),
            manifest,
            config,
            layers,
        })
    }

    /// Points `names` at the manifest or index `desc` (whose blobs must all be
    /// in the store). With no names the image is recorded untagged unless it
    /// is already present. A name taken from another image leaves that image
    /// dangling.
    pub fn add(&self, desc: &Descriptor, names: &[Reference]) -> Result<()> {
        let mut base = desc.clone();
        base.set_annotations(without_name(&base));
        self.layout.update_index(|index| -> Result<()> {
            let mut entries = index.manifests().clone();
            for name in names {
                let name = name.to_string();
                let mut displaced = Vec::new();
                entries.retain(|e| {
                    if ref_name(e) == Some(&name) {
                        displaced.push(e.clone());
                        false
                    } else {
                        true
                    }
                });
                for mut old in displaced {
                    let still_there = old.digest() == base.digest()
                        || entries.iter().any(|e| e.digest() == old.digest());
                    if !still_there {
                        old.set_annotations(without_name(&old));
                        entries.push(old);
                    }
                }
                // A named entry replaces any dangling entry of the same image.
                entries.retain(|e| !(e.digest() == base.digest() && ref_name(e).is_none()));
                let mut tagged = base.clone();
                let mut a = base.annotations().clone().unwrap_or_default();
                a.insert(REF_NAME.to_owned(), name);
                tagged.set_annotations(Some(a));
                entries.push(tagged);
            }
            if names.is_empty() && !entries.iter().any(|e| e.digest() == base.digest()) {
                entries.push(base.clone());
            }
            index.set_manifests(entries);
            Ok(())
        })
    }

    /// `hull tag SRC DST`.
    pub fn tag(&self, src: &str, dst: &Reference) -> Result<()> {
        let _g = self.ingest_lock()?;
        let index = self.layout.read_index()?;
        let found = self.find(&index, src)?;
        let desc = entry_of(&index, &found.digest).ok_or_else(|| Error::NotFound(src.into()))?;
        self.add(
            desc,
            std::slice::from_ref(&dst.with_tag(dst.tag().unwrap_or("latest"))),
        )
    }

    /// `hull rmi [-f] IMG`: removes a name, or with an ID every entry of the
    /// image (several names need `force`), then collects garbage. An image
    /// one of `users` was created from is kept, untagged, with its blobs;
    /// removing its last name needs `force`, removing it by ID needs
    /// `force` and no running user.
    pub fn remove(&self, s: &str, force: bool, users: &[ImageUser]) -> Result<Removal> {
        let mut report = Removal::default();
        self.layout.update_index(|index| -> Result<()> {
            let found = self.find(index, s)?;
            let mut entries = index.manifests().clone();
            let entry = entry_of(index, &found.digest)
                .ok_or_else(|| Error::NotFound(s.into()))?
                .clone();
            let id = self
                .load(&entry, Vec::new())
                .map(|i| i.config_digest.to_string())
                .unwrap_or_else(|_| found.digest.to_string());
            let using: Vec<&ImageUser> = users.iter().filter(|u| u.image_id == id).collect();
            let names: Vec<String> = entries
                .iter()
                .filter(|e| e.digest() == &found.digest)
                .filter_map(|e| ref_name(e).map(|n| familiar(n.as_str())))
                .collect();
            match &found.by_name {
                Some(name) => {
                    if let (false, [_], Some(user)) = (force, names.as_slice(), using.first()) {
                        return Err(Error::ReferenceInUse {
                            reference: s.into(),
                            container: user.container.clone(),
                            id: short_id(&id),
                        }
                        .into());
                    }
                    entries.retain(|e| ref_name(e) != Some(name));
                    report.untagged.push(familiar(name));
                }
                None => {
                    let in_use = |user: &ImageUser| Error::ImageInUse {
                        id: short_id(&id),
                        container: user.container.clone(),
                        running: user.running,
                    };
                    // Docker's order: a running user, which even a force
                    // cannot overrule; several names; a stopped user.
                    if let Some(user) = using.iter().find(|u| u.running) {
                        return Err(in_use(user).into());
                    }
                    if names.len() > 1 && !force {
                        return Err(Error::MultipleNames {
                            id: short(&found.digest),
                            names: names.join(", "),
                        }
                        .into());
                    }
                    if let (false, Some(user)) = (force, using.first()) {
                        return Err(in_use(user).into());
                    }
                    entries.retain(|e| e.digest() != &found.digest);
                    report.untagged.extend(names);
                }
            }
            if !entries.iter().any(|e| e.digest() == &found.digest) {
                if using.is_empty() {
                    report.deleted.push(id);
                } else {
                    // Dangling, so that neither this GC nor a prune takes
                    // the blobs of a container's image.
                    let mut kept = entry;
                    kept.set_annotations(without_name(&kept));
                    entries.push(kept);
                }
            }
            index.set_manifests(entries);
            Ok(())
        })?;
        if !report.deleted.is_empty() {
            report.freed = self.gc()?.1;
        }
        Ok(report)
    }

    /// `hull image prune`: drops dangling images none of `users` was
    /// created from, then collects garbage. Returns the IDs removed and
    /// the bytes freed.
    pub fn prune(&self, users: &[ImageUser]) -> Result<(Vec<String>, u64)> {
        let mut removed = Vec::new();
        self.layout.update_index(|index| -> Result<()> {
            let mut keep = Vec::new();
            for e in index.manifests() {
                if ref_name(e).is_none() {
                    let id = self
                        .load(e, Vec::new())
                        .map(|i| i.config_digest.to_string())
                        .unwrap_or_else(|_| e.digest().to_string());
                    if users.iter().any(|u| u.image_id == id) {
                        keep.push(e.clone());
                    } else {
                        removed.push(id);
                    }
                } else {
                    keep.push(e.clone());
                }
            }
            index.set_manifests(keep);
            Ok(())
        })?;
        let (_, freed) = self.gc()?;
        Ok((removed, freed))
    }

    /// Deletes every blob not reachable from index.json (and stale temp
    /// files). Waits for running pulls/loads to finish first.
    pub fn gc(&self) -> Result<(usize, u64)> {
        let _g = self.layout.gc_lock()?;
        let index = self.layout.read_index()?;
        let mut keep = HashSet::new();
        for e in index.manifests() {
            self.mark(e, &mut keep, 0)?;
        }
        Ok(self.layout.remove_blobs_except(&keep)?)
    }

    fn mark(&self, d: &Descriptor, keep: &mut HashSet<String>, depth: u32) -> Result<()> {
        let hex = digest::hex(d.digest())?.to_owned();
        if depth > 4 || !keep.insert(hex) {
            return Ok(());
        }
        let Ok(bytes) = self.layout.read_blob(d.digest()) else {
            // Absent children of a partially stored index are fine.
            return Ok(());
        };
        let mt = descriptor_media_type(d, &bytes);
        match media::manifest_kind(&mt) {
            Ok(ManifestKind::Index) => {
                let idx: ImageIndex = parse_json("index", d.digest(), &bytes)?;
                for c in idx.manifests() {
                    self.mark(c, keep, depth + 1)?;
                }
            }
            Ok(ManifestKind::Manifest) => {
                let m: ImageManifest = parse_json("manifest", d.digest(), &bytes)?;
                keep.insert(digest::hex(m.config().digest())?.to_owned());
                for l in m.layers() {
                    keep.insert(digest::hex(l.digest())?.to_owned());
                }
            }
            Err(_) => {}
        }
        Ok(())
    }
}

/// The media type of a descriptor, or of the document when the descriptor
/// has none usable.
pub fn descriptor_media_type(d: &Descriptor, bytes: &[u8]) -> String {
    let mt = d.media_type().to_string();
    if mt.is_empty() {
        media::embedded_media_type(bytes).unwrap_or_default()
    } else {
        mt
    }
}

/// Parses a stored JSON document.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    d: &Digest,
    bytes: &[u8],
) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| {
        Error::Json {
            what,
            digest: d.to_string(),
            source,
        }
        .into()
    })
}

fn annotation<'a>(d: &'a Descriptor, key: &str) -> Option<&'a str> {
    d.annotations()
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// A descriptor's annotations without the tag (None when nothing is left).
fn without_name(d: &Descriptor) -> Option<HashMap<String, String>> {
    let mut a = d.annotations().clone()?;
    a.remove(REF_NAME);
    (!a.is_empty()).then_some(a)
}

pub(crate) fn ref_name(d: &Descriptor) -> Option<&String> {
    d.annotations().as_ref().and_then(|a| a.get(REF_NAME))
}

fn entry_of<'a>(index: &'a ImageIndex, d: &Digest) -> Option<&'a Descriptor> {
    index.manifests().iter().find(|e| e.digest() == d)
}

fn names_of(index: &ImageIndex, d: &Digest) -> Vec<Reference> {
    index
        .manifests()
        .iter()
        .filter(|e| e.digest() == d)
        .filter_map(|e| ref_name(e).and_then(|n| Reference::parse(n).ok()))
        .collect()
}

fn familiar(name: &str) -> String {
    Reference::parse(name)
        .map(|r| r.familiar())
        .unwrap_or_else(|_| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::MediaType;

    /// Stores a one-layer image and returns its manifest descriptor.
    fn put_image(store: &Store, layer: &[u8]) -> Descriptor {
        let l = store.layout();
        let (ld, ls) = l.write_blob(layer, None).unwrap();
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{ld}"]}}}}"#
        );
        let (cd, cs) = l.write_blob(config.as_bytes(), None).unwrap();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{cd}","size":{cs}}},"layers":[{{"mediaType":"{}","digest":"{ld}","size":{ls}}}]}}"#,
            media::OCI_MANIFEST,
            media::OCI_CONFIG,
            media::OCI_LAYER
        );
        let (md, ms) = l.write_blob(manifest.as_bytes(), None).unwrap();
        Descriptor::new(MediaType::ImageManifest, ms, md)
    }

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn tags_resolve_and_dangle() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let a = put_image(&s, b"layer a");
        s.add(&a, &[r("busybox")]).unwrap();
        let img = s.image("busybox").unwrap();
        assert_eq!(img.manifest_digest, *a.digest());
        assert_eq!(
            s.image("docker.io/library/busybox:latest").unwrap().id(),
            img.id()
        );
        assert_eq!(
            s.image(&img.short_id()).unwrap().manifest_digest,
            *a.digest()
        );
        assert_eq!(
            s.image(&format!("busybox@{}", a.digest()))
                .unwrap()
                .manifest_digest,
            *a.digest()
        );
        // Moving the tag leaves the old image dangling.
        let b = put_image(&s, b"layer b");
        s.add(&b, &[r("busybox")]).unwrap();
        let rows = s.list().unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows
            .iter()
            .any(|x| x.name.is_none() && x.image.manifest_digest == *a.digest()));
        let (removed, freed) = s.prune(&[]).unwrap();
        assert_eq!(removed.len(), 1);
        assert!(freed > 0);
        assert!(!s.layout().has_blob(a.digest(), None));
        assert!(s.layout().has_blob(b.digest(), None));
    }

    #[test]
    fn rmi_by_id_needs_force_for_several_names() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let a = put_image(&s, b"x");
        s.add(&a, &[r("one"), r("two:1")]).unwrap();
        let id = s.image("one").unwrap().short_id();
        assert!(s.remove(&id, false, &[]).is_err());
        let rep = s.remove("one", false, &[]).unwrap();
        assert_eq!(rep.untagged, ["one:latest"]);
        assert!(rep.deleted.is_empty());
        let rep = s.remove(&id, true, &[]).unwrap();
        assert_eq!(rep.deleted.len(), 1);
        assert!(s.list().unwrap().is_empty());
        assert_eq!(
            std::fs::read_dir(s.layout().dir().join("blobs/sha256"))
                .unwrap()
                .count(),
            0
        );
        assert!(s.image("two:1").is_err());
    }

    #[test]
    fn an_image_a_container_uses_is_kept_with_its_blobs() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let a = put_image(&s, b"in use");
        s.add(&a, &[r("app:1")]).unwrap();
        let img = s.image("app:1").unwrap();
        let blobs = || {
            std::fs::read_dir(s.layout().dir().join("blobs/sha256"))
                .unwrap()
                .count()
        };
        let stored = blobs();
        let mut users = vec![ImageUser {
            image_id: img.id().to_string(),
            container: "0123456789ab".into(),
            running: false,
        }];
        let msg = |e: crate::Error| e.to_string();

        // Its last name: refused without -f, naming the container.
        let e = msg(s.remove("app:1", false, &users).unwrap_err());
        assert_eq!(
            e,
            format!(
                "conflict: unable to remove repository reference \"app:1\" (must force) - \
                 container 0123456789ab is using its referenced image {}",
                img.short_id()
            )
        );
        // A second name may go: the image keeps one.
        s.tag("app:1", &r("app:2")).unwrap();
        let rep = s.remove("app:2", false, &users).unwrap();
        assert_eq!(rep.untagged, ["app:2"]);
        // By ID: a stopped user needs -f, a running one refuses even that.
        let e = msg(s.remove(&img.short_id(), false, &users).unwrap_err());
        assert!(
            e.contains("(must be forced) - image is being used by stopped container 0123456789ab"),
            "{e}"
        );
        users[0].running = true;
        let e = msg(s.remove(&img.short_id(), true, &users).unwrap_err());
        assert!(
            e.contains("(cannot be forced) - image is being used by running container"),
            "{e}"
        );

        // -f untags; the image stays, dangling, with every blob, also
        // through a prune.
        let rep = s.remove("app:1", true, &users).unwrap();
        assert_eq!(rep.untagged, ["app:1"]);
        assert!(rep.deleted.is_empty());
        assert_eq!(s.prune(&users).unwrap(), (vec![], 0));
        assert_eq!(blobs(), stored);
        let rows = s.list().unwrap();
        assert_eq!(rows.len(), 1);
        assert!(rows[0].name.is_none());
        assert!(img.layers.iter().all(|l| l.path.exists()));

        // Once the container is gone, a prune takes it all.
        let (removed, freed) = s.prune(&[]).unwrap();
        assert_eq!(removed, [img.id().to_string()]);
        assert!(freed > 0);
        assert_eq!(blobs(), 0);
    }
}
