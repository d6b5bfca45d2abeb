//! `COPY --from`: files of an image mounted in the guest, written as a
//! layer tar under new names. Paths are resolved inside the image's root
//! (its symlinks, absolute ones too, never lead out of it), so what is
//! copied is what the image holds at that path.

use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use super::{walk, Error, LayerOptions, LayerStats, LayerWriter};

/// Symlinks followed while resolving one path, as the kernel's limit.
const MAX_LINKS: usize = 40;

/// One source of a `COPY --from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySource {
    /// Path in the image (absolute or relative to its root).
    pub path: String,
    /// Where it goes in the layer (no leading `/` needed): a directory's
    /// contents go under it; anything else to `dest/<its name>` if
    /// `dest_is_dir`, else to `dest`.
    pub dest: String,
    /// `dest` is a directory.
    pub dest_is_dir: bool,
}

impl CopySource {
    /// The layer name of a source that is not a directory.
    fn file_name(&self) -> Vec<u8> {
        use std::os::unix::ffi::OsStrExt;
        let dest = self.dest.trim_matches('/');
        if !self.dest_is_dir {
            return dest.as_bytes().to_vec();
        }
        let base = Path::new(&self.path).file_name().unwrap_or_default();
        let mut name = dest.as_bytes().to_vec();
        if !name.is_empty() {
            name.push(b'/');
        }
        name.extend_from_slice(base.as_bytes());
        name
    }
}

/// `path` resolved inside `root`: every symlink on the way (the last
/// component's too) is followed as if `root` were `/`; `..` stops at
/// `root`. Fails if a component does not exist.
pub fn resolve_in_root(root: &Path, path: &str) -> Result<PathBuf, Error> {
    let mut done: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    let not_found = |e: io::Error| Error::Io {
        path: path.to_string(),
        op: "resolve",
        source: e,
    };
    // Components still to walk, last first.
    let mut rest: Vec<std::ffi::OsString> = Vec::new();
    push_components(&mut rest, Path::new(path));
    while let Some(part) = rest.pop() {
        if part == ".." {
            done.pop();
            continue;
        }
        let candidate: PathBuf = root.join(done.iter().collect::<PathBuf>()).join(&part);
        let meta = std::fs::symlink_metadata(&candidate).map_err(not_found)?;
        if !meta.file_type().is_symlink() {
            done.push(part);
            continue;
        }
        links += 1;
        if links > MAX_LINKS {
            return Err(not_found(io::Error::from_raw_os_error(libc::ELOOP)));
        }
        let target = std::fs::read_link(&candidate).map_err(not_found)?;
        if target.is_absolute() {
            done.clear();
        }
        push_components(&mut rest, &target);
    }
    Ok(root.join(done.iter().collect::<PathBuf>()))
}

/// Pushes `path`'s normal and `..` components onto `rest` so that they
/// pop in order.
fn push_components(rest: &mut Vec<std::ffi::OsString>, path: &Path) {
    let parts: Vec<std::ffi::OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    rest.extend(parts.into_iter().rev());
}

/// Writes `sources` of the image at `root` as one layer tar to `out`:
/// a directory's contents under its name, anything else as one entry of
/// that name.
pub fn write_copy(
    root: &Path,
    sources: &[CopySource],
    out: impl Write,
    opts: &LayerOptions,
) -> Result<LayerStats, Error> {
    let mut w = LayerWriter::new(out, opts);
    for source in sources {
        let path = resolve_in_root(root, &source.path)?;
        let entry = walk::read_entry(&path, source.file_name())?;
        if matches!(entry.kind, walk::Kind::Dir { .. }) {
            let prefix = source.dest.trim_matches('/').as_bytes();
            let device = opts
                .one_file_system
                .then(|| {
                    use std::os::unix::fs::MetadataExt;
                    std::fs::symlink_metadata(&path).map(|m| m.dev())
                })
                .transpose()
                .map_err(|e| Error::Write(io::Error::other(format!("{}: {e}", path.display()))))?;
            walk::walk_dir_on(&path, prefix, &[], device, &mut |e, p| w.entry(e, p))?;
        } else {
            w.entry(&entry, &path)?;
        }
    }
    w.finish()
}

/// [`write_copy`] into the memory window `output` from `offset`;
/// returns the tar's length.
pub fn copy_to_window(
    root: &str,
    sources: &[CopySource],
    opts: &LayerOptions,
    output: agent_protocol::protocol::WindowRange,
    offset: u64,
) -> Result<u64, Error> {
    let window = crate::window::ChunkedWindow::new(output.guest_addr, output.len)
        .map_err(|e| Error::Write(io::Error::other(e)))?;
    let mut out = crate::window::WindowWriter::new(window, offset);
    write_copy(Path::new(root), sources, &mut out, opts)?;
    Ok(out.offset() - offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// An image root: /app/bin/tool, /app/data/x, /usr/lib -> /lib64 (absolute),
    /// /lib64/libc.so, /loop -> /loop, /up -> ../../../app.
    fn image() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("app/bin")).unwrap();
        std::fs::create_dir_all(r.join("app/data")).unwrap();
        std::fs::create_dir_all(r.join("lib64")).unwrap();
        std::fs::create_dir_all(r.join("usr")).unwrap();
        std::fs::write(r.join("app/bin/tool"), "TOOL").unwrap();
        std::fs::write(r.join("app/data/x"), "X").unwrap();
        std::fs::write(r.join("lib64/libc.so"), "C").unwrap();
        symlink("/lib64", r.join("usr/lib")).unwrap();
        symlink("/loop", r.join("loop")).unwrap();
        symlink("../../../app", r.join("up")).unwrap();
        d
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let img = image();
        let r = img.path();
        assert_eq!(
            resolve_in_root(r, "/usr/lib/libc.so").unwrap(),
            r.join("lib64/libc.so")
        );
        assert_eq!(resolve_in_root(r, "up/bin").unwrap(), r.join("app/bin"));
        assert_eq!(resolve_in_root(r, "/../../app").unwrap(), r.join("app"));
        assert!(resolve_in_root(r, "/loop").is_err());
        assert!(resolve_in_root(r, "/nope").is_err());
    }

    fn names(tar: &[u8]) -> Vec<(String, u64, u32)> {
        let mut ar = tar::Archive::new(tar);
        ar.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.uid().unwrap(),
                    h.mode().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn one_file_system_keeps_mount_points_but_not_what_is_mounted() {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test mounts a tmpfs");
        let img = image();
        let mnt = img.path().join("app/data");
        let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        let (src, target, fs) = (c(Path::new("tmpfs")), c(&mnt), c(Path::new("tmpfs")));
        // SAFETY: valid NUL-terminated strings; no data argument.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fs.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        std::fs::write(mnt.join("mounted"), "M").unwrap();
        let sources = [CopySource {
            path: "/".into(),
            dest: String::new(),
            dest_is_dir: true,
        }];
        let list = |one_file_system| {
            let opts = LayerOptions {
                one_file_system,
                ..LayerOptions::default()
            };
            let mut tar = Vec::new();
            write_copy(img.path(), &sources, &mut tar, &opts).unwrap();
            names(&tar)
                .into_iter()
                .map(|(n, _, _)| n)
                .collect::<Vec<_>>()
        };
        let (one, all) = (list(true), list(false));
        // SAFETY: unmounting what this test mounted.
        unsafe { libc::umount(target.as_ptr()) };
        assert!(one.contains(&"app/data/".to_string()), "{one:?}");
        assert!(!one.iter().any(|n| n.starts_with("app/data/m")), "{one:?}");
        assert!(all.contains(&"app/data/mounted".to_string()), "{all:?}");
    }

    #[test]
    fn directories_copy_their_contents_and_files_take_their_name() {
        let img = image();
        let sources = [
            CopySource {
                path: "/app".into(),
                dest: "dest".into(),
                dest_is_dir: true,
            },
            CopySource {
                path: "/usr/lib/libc.so".into(),
                dest: "/opt/".into(),
                dest_is_dir: true,
            },
            CopySource {
                path: "/app/data/x".into(),
                dest: "/renamed".into(),
                dest_is_dir: false,
            },
        ];
        let opts = LayerOptions {
            owner: Some((7, 8)),
            mode: Some(0o700),
            ..LayerOptions::default()
        };
        let mut tar = Vec::new();
        write_copy(img.path(), &sources, &mut tar, &opts).unwrap();
        let got = names(&tar);
        let just: Vec<&str> = got.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(
            just,
            [
                "dest/bin/",
                "dest/bin/tool",
                "dest/data/",
                "dest/data/x",
                "opt/libc.so",
                "renamed"
            ]
        );
        assert!(
            got.iter().all(|(_, uid, mode)| *uid == 7 && *mode == 0o700),
            "{got:?}"
        );
        let missing = [CopySource {
            path: "/nope".into(),
            dest: "x".into(),
            dest_is_dir: false,
        }];
        let err = write_copy(img.path(), &missing, &mut Vec::new(), &opts).unwrap_err();
        assert!(err.to_string().contains("/nope"), "{err}");
    }
}
