//! `hull system check` for the image store: every blob an image needs is
//! present, has the size its descriptor says and hashes to its digest,
//! and no temporary file of an interrupted pull or load is left over.

use std::collections::HashSet;
use std::io::Read;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};

use crate::digest::{self, Digest};
use crate::media::{self, ManifestKind};
use crate::store::{descriptor_media_type, parse_json, Store};
use crate::Result;

/// Where a blob is needed from, for the problem's line.
struct Need<'a> {
    /// `manifest`, `config`, `layer`, `index`.
    role: &'a str,
    /// The image (its name, or its digest when it has none).
    image: &'a str,
}

impl Store {
    /// Problems of the store, one line each (empty when it is sound).
    /// Holds the GC lock for the check, so it waits for running pulls
    /// and loads to finish: blobs they are adding are not judged.
    pub fn check(&self) -> Result<Vec<String>> {
        let _g = self.layout().gc_lock()?;
        let _i = self.layout().index_lock()?;
        let mut problems = Vec::new();
        let mut seen = HashSet::new();
        for e in self.layout().read_index()?.manifests() {
            let image = crate::store::ref_name(e)
                .cloned()
                .unwrap_or_else(|| e.digest().to_string());
            let need = Need {
                role: "manifest",
                image: &image,
            };
            self.check_tree(e, &need, &mut seen, &mut problems, 0)?;
        }
        problems.extend(self.leftover_temporaries());
        Ok(problems)
    }

    /// Checks a manifest or index blob and everything it needs.
    fn check_tree(
        &self,
        d: &Descriptor,
        need: &Need<'_>,
        seen: &mut HashSet<Digest>,
        problems: &mut Vec<String>,
        depth: u32,
    ) -> Result<()> {
        if depth > 4 || !seen.insert(d.digest().clone()) {
            return Ok(());
        }
        if let Some(p) = self.blob_problem(d.digest(), d.size(), need) {
            problems.push(p);
            return Ok(());
        }
        let bytes = self.layout().read_blob(d.digest())?;
        match media::manifest_kind(&descriptor_media_type(d, &bytes)) {
            Ok(ManifestKind::Index) => {
                let idx: ImageIndex = parse_json("index", d.digest(), &bytes)?;
                for c in idx.manifests() {
                    // A multi-platform index is stored with the platform
                    // pulled only: an absent child is not a problem.
                    if self.layout().has_blob(c.digest(), None) {
                        self.check_tree(c, need, seen, problems, depth + 1)?;
                    }
                }
            }
            Ok(ManifestKind::Manifest) => {
                let m: ImageManifest = parse_json("manifest", d.digest(), &bytes)?;
                let config = Need {
                    role: "config",
                    ..*need
                };
                let layer = Need {
                    role: "layer",
                    ..*need
                };
                let c = m.config();
                problems.extend(self.blob_problem(c.digest(), c.size(), &config));
                for l in m.layers() {
                    if seen.insert(l.digest().clone()) {
                        problems.extend(self.blob_problem(l.digest(), l.size(), &layer));
                    }
                }
            }
            Err(_) => problems.push(format!(
                "image {}: {} {} is neither a manifest nor an index",
                need.image,
                need.role,
                d.digest()
            )),
        }
        Ok(())
    }

    /// What is wrong with the blob `d` (absent, wrong size, wrong digest).
    fn blob_problem(&self, d: &Digest, size: u64, need: &Need<'_>) -> Option<String> {
        let what = format!("image {}: {} {d}", need.image, need.role);
        let path = match self.layout().blob_path(d) {
            Ok(p) => p,
            Err(e) => return Some(format!("{what}: {e}")),
        };
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Some(format!("{what} is missing"))
            }
            Err(e) => return Some(format!("{what}: cannot open: {e}")),
        };
        match hash_file(file) {
            Ok((_, len)) if len != size => Some(format!(
                "{what} has {len} bytes, its descriptor says {size}"
            )),
            Ok((actual, _)) if &actual != d => Some(format!("{what} hashes to {actual}")),
            Ok(_) => None,
            Err(e) => Some(format!("{what}: cannot read: {e}")),
        }
    }

    /// Files in the layout's `.tmp/` (checked with the GC lock held, so
    /// no pull or load is writing them): an interrupted operation's.
    fn leftover_temporaries(&self) -> Vec<String> {
        let dir = self.layout().dir().join(".tmp");
        std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| {
                        format!(
                            "image store: leftover temporary file {}",
                            e.path().display()
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
            .into_iter()
            .chain(
                self.layout()
                    .index_temporaries()
                    .into_iter()
                    .map(|p| format!("image store: leftover temporary file {}", p.display())),
            )
            .collect()
    }
}

/// The sha256 digest and length of a file, read in large blocks.
fn hash_file(mut f: std::fs::File) -> std::io::Result<(Digest, u64)> {
    let mut w = digest::HashingWriter::new(std::io::sink());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        std::io::Write::write_all(&mut w, &buf[..n])?;
    }
    let (_, d, len) = w.finish();
    Ok((d, len))
}
