//! COPY and ADD from the build context: the layer tar made on the host
//! (the context is the user's own files: trusted input), deterministic —
//! entries in the context walk's order, each file's own mode and mtime,
//! owner root or `--chown`, no parent directories (they are created by
//! the unpacker where missing, and existing ones keep their metadata).
//!
//! Docker's rules: a directory source copies its contents; several
//! sources (or a wildcard) need a destination ending in `/`; a relative
//! destination is under WORKDIR; ADD extracts a local tar archive (plain
//! or gzip) into the destination.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::build::ignore::{ContextEntry, DockerIgnore, EntryKind};
use crate::build::Heredoc;

use super::state::join_workdir;

/// Why a COPY/ADD cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A source names nothing the context has.
    #[error("{0:?}: not found in the build context (or excluded by .dockerignore)")]
    NotFound(String),
    /// A source climbs out of the context.
    #[error("{0:?}: outside the build context")]
    Outside(String),
    /// Several sources into a file.
    #[error("When using COPY with more than one source file, the destination must be a directory and end with a /")]
    DestNotDir,
    /// `--chown` with a name (looking names up in the image is not built).
    #[error("--chown={0}: only numeric ids (or root) are supported")]
    ChownName(String),
    /// `--chmod` that is not octal.
    #[error("--chmod={0}: not an octal mode")]
    Chmod(String),
    /// An option hull does not implement yet.
    #[error("{0} is not supported yet")]
    Unsupported(&'static str),
    /// A bad source pattern.
    #[error("source pattern {0:?}: {1}")]
    Pattern(String, String),
    /// Reading the context or writing the tar failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One COPY or ADD, substituted.
#[derive(Debug)]
pub struct CopySpec<'a> {
    pub sources: &'a [String],
    /// `COPY <<EOF /file`: inline files named by their delimiter.
    pub heredocs: &'a [Heredoc],
    pub dest: &'a str,
    /// The stage's WORKDIR (relative destinations are under it).
    pub workdir: &'a str,
    pub chown: Option<&'a str>,
    pub chmod: Option<&'a str>,
    /// ADD: local tar archives are extracted.
    pub extract_archives: bool,
    /// ADD: files fetched from the URLs among the sources (which are
    /// not in `sources`).
    pub remote: &'a [super::remote::Fetched],
}

/// Ownership and mode forced on every entry.
#[derive(Debug, Clone, Copy, Default)]
struct Owner {
    ids: Option<(u64, u64)>,
    mode: Option<u32>,
}

/// Writes the layer tar of `spec` to `out`; `entries` is the context walk
/// (`.dockerignore` applied). Returns the number of entries written.
pub fn write_copy_layer(
    context: &Path,
    entries: &[ContextEntry],
    spec: &CopySpec<'_>,
    out: impl Write,
) -> Result<u64, CopyError> {
    let owner = Owner {
        ids: spec.chown.map(parse_chown).transpose()?,
        mode: spec.chmod.map(parse_chmod).transpose()?,
    };
    let dest_is_dir = spec.dest.ends_with('/')
        || spec.dest.ends_with("/.")
        || spec.dest == "."
        || spec.dest == "..";
    if spec.sources.iter().any(|s| super::remote::is_url(s)) {
        return Err(CopyError::Unsupported("a URL in COPY (ADD fetches URLs)"));
    }
    if spec
        .sources
        .iter()
        .any(|s| s.starts_with("git@") || s.ends_with(".git"))
    {
        return Err(CopyError::Unsupported("a git source"));
    }
    let dest = join_workdir(spec.workdir, spec.dest);
    let matches = select_sources(entries, spec.sources)?;
    let inline = spec.heredocs.len() + spec.remote.len();
    if matches.len() + inline > 1 && !dest_is_dir {
        let many_from_one = spec.sources.len() == 1 && inline == 0;
        // One wildcard that matched several: Docker's same rule.
        if !many_from_one || matches.len() > 1 {
            return Err(CopyError::DestNotDir);
        }
    }
    let mut w = TarOut {
        tar: tar::Builder::new(out),
        owner,
        count: 0,
    };
    for heredoc in spec.heredocs {
        let target = file_target(&dest, dest_is_dir, &heredoc.name);
        w.inline_file(&target, heredoc.content.as_bytes())?;
    }
    for fetched in spec.remote {
        let target = file_target(&dest, dest_is_dir, &fetched.name);
        w.fetched_file(&target, fetched)?;
    }
    for m in &matches {
        let kind = m.kind;
        let full = context.join(&m.path);
        match kind {
            EntryKind::Dir => w.dir_contents(context, entries, &m.path, &dest)?,
            EntryKind::File if spec.extract_archives && is_archive(&full) => {
                w.archive(&full, &dest)?
            }
            _ => {
                let name = m.path.file_name().map(|n| n.to_string_lossy().into_owned());
                let target = file_target(&dest, dest_is_dir, &name.unwrap_or_default());
                w.entry(&full, &target)?;
            }
        }
    }
    w.tar
        .into_inner()
        .and_then(|mut o| o.flush())
        .map_err(|source| CopyError::Io {
            path: PathBuf::from("(layer)"),
            source,
        })?;
    Ok(w.count)
}

/// Where a single file goes: into the directory, or the destination itself.
pub fn file_target(dest: &str, dest_is_dir: bool, name: &str) -> String {
    if dest_is_dir {
        format!("{}/{name}", dest.trim_end_matches('/'))
    } else {
        dest.to_string()
    }
}

/// The context entries the sources name, in order (the context root is
/// the entry with an empty path).
fn select_sources(
    entries: &[ContextEntry],
    sources: &[String],
) -> Result<Vec<ContextEntry>, CopyError> {
    let by_path: HashMap<&Path, &ContextEntry> =
        entries.iter().map(|e| (e.path.as_path(), e)).collect();
    let mut out = Vec::new();
    for source in sources {
        let clean = clean_relative(source)?;
        if clean.is_empty() {
            out.push(ContextEntry {
                path: PathBuf::new(),
                kind: EntryKind::Dir,
            });
            continue;
        }
        if !clean.contains(['*', '?', '[']) {
            let e = by_path
                .get(Path::new(&clean))
                .ok_or_else(|| CopyError::NotFound(source.clone()))?;
            out.push((*e).clone());
            continue;
        }
        let pattern = DockerIgnore::parse(&clean)
            .map_err(|e| CopyError::Pattern(source.clone(), e.to_string()))?;
        let found: Vec<&ContextEntry> = entries
            .iter()
            .filter(|e| pattern.is_excluded(&e.path.to_string_lossy()))
            // A match inside a matched directory is copied with it.
            .filter(|e| {
                !e.path
                    .ancestors()
                    .skip(1)
                    .any(|a| !a.as_os_str().is_empty() && pattern.is_excluded(&a.to_string_lossy()))
            })
            .collect();
        if found.is_empty() {
            return Err(CopyError::NotFound(source.clone()));
        }
        out.extend(found.into_iter().cloned());
    }
    Ok(out)
}

/// A source path relative to the context, cleaned; an error if it climbs
/// out. `.` and `/` are the context itself (an empty path).
fn clean_relative(source: &str) -> Result<String, CopyError> {
    let mut parts: Vec<&str> = Vec::new();
    for part in source.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(CopyError::Outside(source.to_string()));
                }
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

pub fn parse_chown(s: &str) -> Result<(u64, u64), CopyError> {
    let id = |part: &str| match part {
        "root" => Some(0),
        p => p.parse::<u64>().ok(),
    };
    let (user, group) = match s.split_once(':') {
        Some((u, g)) => (id(u), id(g)),
        None => (id(s), id(s)),
    };
    match (user, group) {
        (Some(u), Some(g)) => Ok((u, g)),
        _ => Err(CopyError::ChownName(s.to_string())),
    }
}

pub fn parse_chmod(s: &str) -> Result<u32, CopyError> {
    match u32::from_str_radix(s, 8) {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => Err(CopyError::Chmod(s.to_string())),
    }
}

/// A local file ADD extracts: a tar, plain or gzip-compressed.
fn is_archive(path: &Path) -> bool {
    let mut head = [0u8; 512];
    let Ok(mut f) = File::open(path) else {
        return false;
    };
    let n = f.read(&mut head).unwrap_or(0);
    if head[..n].starts_with(&[0x1f, 0x8b]) {
        return true;
    }
    n >= 262 && &head[257..262] == b"ustar"
}

/// The tar being written.
struct TarOut<W: Write> {
    tar: tar::Builder<W>,
    owner: Owner,
    count: u64,
}

impl<W: Write> TarOut<W> {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> CopyError + '_ {
        move |source| CopyError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn header(&self, kind: tar::EntryType, mode: u32, mtime: i64, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        let (uid, gid) = self.owner.ids.unwrap_or((0, 0));
        h.set_uid(uid);
        h.set_gid(gid);
        let mode = match (self.owner.mode, kind) {
            (Some(m), tar::EntryType::Regular | tar::EntryType::Directory) => m,
            _ => mode & 0o7777,
        };
        h.set_mode(mode);
        h.set_mtime(mtime.max(0) as u64);
        h.set_size(size);
        h
    }

    /// One context entry (file, directory, symlink) at `target`.
    fn entry(&mut self, full: &Path, target: &str) -> Result<(), CopyError> {
        let meta = std::fs::symlink_metadata(full).map_err(Self::io(full))?;
        let name = target.trim_start_matches('/');
        let ft = meta.file_type();
        if ft.is_dir() {
            let mut h = self.header(tar::EntryType::Directory, meta.mode(), meta.mtime(), 0);
            self.tar
                .append_data(&mut h, format!("{name}/"), io::empty())
                .map_err(Self::io(full))?;
        } else if ft.is_symlink() {
            let link = std::fs::read_link(full).map_err(Self::io(full))?;
            let mut h = self.header(tar::EntryType::Symlink, 0o777, meta.mtime(), 0);
            self.tar
                .append_link(&mut h, name, &link)
                .map_err(Self::io(full))?;
        } else if ft.is_file() {
            let f = File::open(full).map_err(Self::io(full))?;
            let mut h = self.header(
                tar::EntryType::Regular,
                meta.mode(),
                meta.mtime(),
                meta.len(),
            );
            self.tar
                .append_data(&mut h, name, BufReader::new(f).take(meta.len()))
                .map_err(Self::io(full))?;
        } else {
            // Sockets, FIFOs and devices of the context are not copied,
            // as Docker skips what it cannot archive.
            return Ok(());
        }
        self.count += 1;
        Ok(())
    }

    /// Everything under context directory `dir` (not `dir` itself) into
    /// `dest`.
    fn dir_contents(
        &mut self,
        context: &Path,
        entries: &[ContextEntry],
        dir: &Path,
        dest: &str,
    ) -> Result<(), CopyError> {
        for e in entries {
            let Ok(rel) = e.path.strip_prefix(dir) else {
                continue;
            };
            if rel.as_os_str().is_empty() {
                continue;
            }
            let target = format!("{}/{}", dest.trim_end_matches('/'), rel.to_string_lossy());
            self.entry(&context.join(&e.path), &target)?;
        }
        Ok(())
    }

    fn inline_file(&mut self, target: &str, content: &[u8]) -> Result<(), CopyError> {
        // BuildKit's inline files: mode 0644 and the epoch as mtime.
        let mut h = self.header(tar::EntryType::Regular, 0o644, 0, content.len() as u64);
        let name = target.trim_start_matches('/');
        self.tar
            .append_data(&mut h, name, content)
            .map_err(Self::io(Path::new(target)))?;
        self.count += 1;
        Ok(())
    }

    /// An `ADD <url>` file: mode 0600, the server's mtime.
    fn fetched_file(
        &mut self,
        target: &str,
        fetched: &super::remote::Fetched,
    ) -> Result<(), CopyError> {
        use std::io::Seek;
        let io = Self::io(Path::new(target));
        let mut f = fetched
            .file
            .try_clone()
            .map_err(Self::io(Path::new(target)))?;
        f.rewind().map_err(io)?;
        let mut h = self.header(tar::EntryType::Regular, 0o600, fetched.mtime, fetched.len);
        let name = target.trim_start_matches('/');
        self.tar
            .append_data(&mut h, name, BufReader::new(f).take(fetched.len))
            .map_err(Self::io(Path::new(target)))?;
        self.count += 1;
        Ok(())
    }

    /// ADD of a local archive: its entries under `dest`, their own owners
    /// and modes kept (as Docker does), paths kept inside `dest`.
    fn archive(&mut self, path: &Path, dest: &str) -> Result<(), CopyError> {
        let f = BufReader::new(File::open(path).map_err(Self::io(path))?);
        let mut head = f;
        let gz = head.fill_buf_is_gzip().map_err(Self::io(path))?;
        let reader: Box<dyn Read> = if gz {
            Box::new(flate2::bufread::MultiGzDecoder::new(head))
        } else {
            Box::new(head)
        };
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(Self::io(path))? {
            let mut entry = entry.map_err(Self::io(path))?;
            let inner = entry
                .path()
                .map_err(Self::io(path))?
                .to_string_lossy()
                .into_owned();
            let Ok(rel) = clean_relative(&inner) else {
                return Err(CopyError::Outside(format!("{}:{inner}", path.display())));
            };
            if rel.is_empty() {
                continue;
            }
            let name = format!("{}/{rel}", dest.trim_matches('/'));
            let name = name.trim_start_matches('/').to_string();
            let mut h = entry.header().clone();
            let link = entry.link_name().map_err(Self::io(path))?;
            match link {
                Some(target) => {
                    let target = if h.entry_type() == tar::EntryType::Link {
                        let t = clean_relative(&target.to_string_lossy())
                            .map_err(|_| CopyError::Outside(inner.clone()))?;
                        PathBuf::from(format!("{}/{t}", dest.trim_matches('/')))
                    } else {
                        target.into_owned()
                    };
                    self.tar
                        .append_link(&mut h, &name, &target)
                        .map_err(Self::io(path))?;
                }
                None => {
                    self.tar
                        .append_data(&mut h, &name, &mut entry)
                        .map_err(Self::io(path))?;
                }
            }
            self.count += 1;
        }
        Ok(())
    }
}

/// Peeks at a buffered reader's first bytes for the gzip magic.
trait GzipPeek {
    fn fill_buf_is_gzip(&mut self) -> io::Result<bool>;
}

impl<R: Read> GzipPeek for BufReader<R> {
    fn fill_buf_is_gzip(&mut self) -> io::Result<bool> {
        use std::io::BufRead;
        Ok(self.fill_buf()?.starts_with(&[0x1f, 0x8b]))
    }
}

#[cfg(test)]
#[path = "context_tests.rs"]
mod tests;
