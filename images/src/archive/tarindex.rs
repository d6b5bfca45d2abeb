//! Random access to the members of a tar archive: one pass records where
//! each file's data lies, later reads seek straight to it. A gzip-compressed
//! archive is first decompressed into a temporary file.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use tempfile::NamedTempFile;

use super::{io_err, Error};
use crate::inflate::{self, Capped};
use crate::media::{self, Compression};
use crate::tarwalk;

/// Members bigger than this are not read into memory as JSON documents
/// (a manifest, config or index of hundreds of MB is refused by its size
/// in the tar header, before a byte of it is read).
pub(super) const MAX_JSON: u64 = 64 << 20;

/// An indexed tar archive.
pub(super) struct TarIndex {
    file: File,
    entries: HashMap<String, (u64, u64)>,
    _decompressed: Option<NamedTempFile>,
}

impl TarIndex {
    /// Indexes `path`; `tmpdir` receives the decompressed copy of a gzip
    /// archive (within the inflation limit, removed on any error).
    pub(super) fn open(path: &Path, tmpdir: &Path) -> Result<Self, Error> {
        let mut file = File::open(path).map_err(io_err("cannot open", path))?;
        let mut head = [0u8; 4];
        let n = file.read(&mut head).map_err(io_err("cannot read", path))?;
        file.rewind().map_err(io_err("cannot read", path))?;
        let mut decompressed = None;
        if media::Compression::detect(&head[..n]) == Compression::Gzip {
            let tmp = inflate_to_temp(path, &file, tmpdir)?;
            // Keep reading through this descriptor, not the path: GC may
            // clean `.tmp/` meanwhile.
            file = tmp
                .as_file()
                .try_clone()
                .map_err(io_err("cannot open", tmp.path()))?;
            decompressed = Some(tmp);
        }
        check_meta_records(path, &file)?;
        let entries = scan(path, &file)?;
        Ok(Self {
            file,
            entries,
            _decompressed: decompressed,
        })
    }

    /// True if the archive has a file of that name.
    pub(super) fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(&clean(name))
    }

    /// Size of a member.
    pub(super) fn size(&self, name: &str) -> Result<u64, Error> {
        self.entries
            .get(&clean(name))
            .map(|e| e.1)
            .ok_or_else(|| Error::Missing(name.to_owned()))
    }

    /// A reader over one member's data.
    pub(super) fn member(&self, name: &str) -> Result<impl Read + '_, Error> {
        let (off, size) = *self
            .entries
            .get(&clean(name))
            .ok_or_else(|| Error::Missing(name.to_owned()))?;
        let mut f = &self.file;
        f.seek(SeekFrom::Start(off))
            .map_err(io_err("cannot seek in", Path::new(name)))?;
        Ok(BufReader::with_capacity(1 << 20, f.take(size)))
    }

    /// A member read whole (JSON documents).
    pub(super) fn read(&self, name: &str) -> Result<Vec<u8>, Error> {
        let size = self.size(name)?;
        if size > MAX_JSON {
            return Err(Error::DocumentTooLarge {
                name: name.to_owned(),
                size,
                max: MAX_JSON,
            });
        }
        let mut buf = Vec::new();
        self.member(name)?
            .read_to_end(&mut buf)
            .map_err(io_err("cannot read", Path::new(name)))?;
        Ok(buf)
    }

    /// A member parsed as JSON.
    pub(super) fn json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T, Error> {
        serde_json::from_slice(&self.read(name)?).map_err(|e| Error::Json(name.to_owned(), e))
    }
}

/// The gzip archive `file` (at `path`) decompressed into a temporary file
/// in `tmpdir`, refused past the inflation limit.
fn inflate_to_temp(path: &Path, file: &File, tmpdir: &Path) -> Result<NamedTempFile, Error> {
    let compressed = file.metadata().map_err(io_err("cannot read", path))?.len();
    let what = format!("archive {}", path.display());
    let gz = MultiGzDecoder::new(BufReader::new(file));
    let mut capped = Capped::new(gz, what, compressed)?;
    let mut tmp =
        NamedTempFile::new_in(tmpdir).map_err(io_err("cannot create a file in", tmpdir))?;
    if let Err(e) = io::copy(&mut capped, &mut tmp) {
        return Err(match inflate::limit_error(&e) {
            Some(limit) => limit.into(),
            None => Error::NotTar(path.to_owned(), e),
        });
    }
    tmp.rewind().map_err(io_err("cannot read", tmp.path()))?;
    Ok(tmp)
}

/// Refuses long-name and PAX records over [`tarwalk::MAX_META`] before
/// the tar crate reads them whole into memory (it has no limit of its
/// own). Only headers are read: data is skipped by seeking.
fn check_meta_records(path: &Path, mut file: &File) -> Result<(), Error> {
    file.rewind().map_err(io_err("cannot read", path))?;
    let mut r = BufReader::new(file);
    let seek = |r: &mut BufReader<&File>, n: u64| {
        let by = i64::try_from(n).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        r.seek_relative(by).map(|()| n)
    };
    match tarwalk::walk(&mut r, seek) {
        Ok(_) => Ok(()),
        Err(tarwalk::Error::MetaTooLarge(size)) => Err(Error::MetaTooLarge {
            path: path.to_owned(),
            size,
            max: tarwalk::MAX_META,
        }),
        Err(e) => Err(Error::NotTar(path.to_owned(), io::Error::other(e))),
    }
}

/// Where each member's data lies: name -> (offset, size), links resolved.
fn scan(path: &Path, mut file: &File) -> Result<HashMap<String, (u64, u64)>, Error> {
    file.rewind().map_err(io_err("cannot read", path))?;
    let mut entries = HashMap::new();
    let mut links = Vec::new();
    let mut ar = tar::Archive::new(BufReader::new(file));
    let not_tar = |e| Error::NotTar(path.to_owned(), e);
    for e in ar.entries_with_seek().map_err(not_tar)? {
        let e = e.map_err(not_tar)?;
        let name = clean(&String::from_utf8_lossy(&e.path_bytes()));
        match e.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                entries.insert(name, (e.raw_file_position(), e.size()));
            }
            // Old `docker save` links duplicate layers to the first copy.
            tar::EntryType::Symlink | tar::EntryType::Link => {
                if let Some(target) = link_target(&e, &name) {
                    links.push((name, target));
                }
            }
            _ => {}
        }
    }
    if entries.is_empty() {
        return Err(Error::NotTar(
            path.to_owned(),
            io::Error::new(io::ErrorKind::InvalidData, "no files in it"),
        ));
    }
    for (name, target) in links {
        if let Some(v) = entries.get(&target).copied() {
            entries.insert(name, v);
        }
    }
    Ok(entries)
}

/// The member a link entry named `name` points to.
fn link_target<R: Read>(e: &tar::Entry<'_, R>, name: &str) -> Option<String> {
    let t = e.link_name().ok()??.to_string_lossy().into_owned();
    Some(if e.header().entry_type() == tar::EntryType::Symlink {
        let base = name.rsplit_once('/').map(|p| p.0).unwrap_or("");
        resolve(base, &t)
    } else {
        clean(&t)
    })
}

/// Normalizes a member name: no leading `./` or `/`, no empty or `.` parts.
fn clean(name: &str) -> String {
    String::from_utf8_lossy(&layerfmt::clean_path(name.as_bytes())).into_owned()
}

fn resolve(base: &str, rel: &str) -> String {
    let mut parts: Vec<&str> = if rel.starts_with('/') {
        Vec::new()
    } else {
        base.split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .collect()
    };
    for p in rel.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_names() {
        assert_eq!(clean("./manifest.json"), "manifest.json");
        assert_eq!(resolve("abc", "../def/layer.tar"), "def/layer.tar");
        assert_eq!(clean("blobs//sha256/x"), "blobs/sha256/x");
    }
}
