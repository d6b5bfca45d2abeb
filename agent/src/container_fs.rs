//! Requests on a container's file system from the host's `hull commit`,
//! `diff`, `export` and `cp`: freezing a running container's writable
//! layer while another VM reads its disk, the `docker diff` of an upper
//! directory, and a tar unpacked into the container.

use std::os::fd::AsRawFd;
use std::path::Path;

use agent_protocol::protocol::WindowRange;

/// `FIFREEZE` and `FITHAW` (linux/fs.h: `_IOWR('X', 119|120, int)`).
const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;

/// Why a request on the container's file system failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The mount point could not be opened.
    #[error("{0}: {1}")]
    Open(String, #[source] std::io::Error),
    /// The freeze or thaw ioctl failed.
    #[error("{op} {path}: {source}")]
    Ioctl {
        op: &'static str,
        path: String,
        source: std::io::Error,
    },
    /// Walking the upper directory failed.
    #[error(transparent)]
    Layer(#[from] crate::layer_out::Error),
    /// The destination is not a directory in the container.
    #[error("{0}: not a directory in the container")]
    NotADirectory(String),
    /// The input window could not be mapped.
    #[error("input window: {0}")]
    Window(#[from] crate::window::WindowError),
    /// The tar could not be unpacked.
    #[error("unpacking into {0}: {1}")]
    Unpack(String, #[source] crate::unpack::Error),
}

fn ioctl(path: &str, op: &'static str, request: libc::c_ulong) -> Result<(), Error> {
    let dir = std::fs::File::open(path).map_err(|e| Error::Open(path.to_string(), e))?;
    // SAFETY: FIFREEZE/FITHAW take an int argument the kernel ignores;
    // `dir` is an open descriptor for the call's duration.
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), request as _, 0) };
    if rc != 0 {
        return Err(Error::Ioctl {
            op,
            path: path.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Freezes the file system mounted at `path`: its dirty data and journal
/// are written out (an ext4 disk is then clean for another kernel to
/// mount) and writers block until [`thaw`].
pub fn freeze(path: &str) -> Result<(), Error> {
    ioctl(path, "freeze", FIFREEZE)
}

/// Thaws what [`freeze`] froze.
pub fn thaw(path: &str) -> Result<(), Error> {
    ioctl(path, "thaw", FITHAW)
}

/// `docker diff` lines of `upper` over `lower`, sorted by path as Docker
/// prints them.
pub fn diff_lines(upper: &str, lower: &str, exclude: &[String]) -> Result<Vec<String>, Error> {
    let opts = crate::layer_out::LayerOptions {
        exclude: exclude.iter().map(Into::into).collect(),
        ..Default::default()
    };
    let lower = Path::new(lower);
    let lower_exists = |path: &Path| {
        let rel = path.strip_prefix("/").unwrap_or(path);
        std::fs::symlink_metadata(lower.join(rel)).is_ok()
    };
    let mut changes = crate::layer_out::diff_entries(Path::new(upper), &opts, &lower_exists)?;
    changes.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(changes.iter().map(ToString::to_string).collect())
}

/// Unpacks the tar of `len` bytes at the start of `input` into the
/// container root `root` as `docker cp` does: into `dest` when it is a
/// directory; otherwise the tar's one top-level entry becomes `dest`
/// (unpacked beside it first, then renamed). Paths are resolved inside
/// `root` (its symlinks never lead out), and the unpacker resolves every
/// entry inside its target, so nothing is written outside the container.
pub fn apply_tar(root: &str, dest: &str, input: WindowRange, len: u64) -> Result<(), Error> {
    let root = Path::new(root);
    let mapped = len.next_multiple_of(4096).clamp(4096, input.len);
    let window = crate::window::Window::map(input.guest_addr, mapped, false)?;
    let tar = &window.bytes()[..len.min(mapped) as usize];
    let result = match crate::layer_out::resolve_in_root(root, dest) {
        Ok(dir) if dir.is_dir() => unpack_into(&dir, tar, dest),
        Ok(_) => Err(Error::NotADirectory(dest.to_string())),
        Err(_) => unpack_as(root, dest, tar),
    };
    // Unmapping costs as much as mapping did; the window is small and
    // this helper VM ends after the request.
    window.keep_mapped();
    result
}

fn unpack_into(dir: &Path, tar: impl std::io::Read, dest: &str) -> Result<(), Error> {
    let mut unpacker = crate::unpack::Unpacker::new(dir, Default::default())
        .map_err(|e| Error::Unpack(dest.to_string(), e))?;
    unpacker
        .apply_layer(tar)
        .map_err(|e| Error::Unpack(dest.to_string(), e))?;
    Ok(())
}

/// `dest` does not exist: the tar's top-level entry is unpacked in a
/// fresh directory beside it, then renamed to it.
fn unpack_as(root: &Path, dest: &str, tar: &[u8]) -> Result<(), Error> {
    let clean = dest.trim_end_matches('/');
    let (parent, name) = clean.rsplit_once('/').unwrap_or(("", clean));
    if name.is_empty() || name == "." || name == ".." {
        return Err(Error::NotADirectory(dest.to_string()));
    }
    let parent_dir =
        crate::layer_out::resolve_in_root(root, if parent.is_empty() { "/" } else { parent })
            .map_err(|_| Error::NotADirectory(parent.to_string()))?;
    if !parent_dir.is_dir() {
        return Err(Error::NotADirectory(parent.to_string()));
    }
    let staging = parent_dir.join(format!(".hull-cp-{}", std::process::id()));
    std::fs::create_dir(&staging).map_err(|e| Error::Open(dest.to_string(), e))?;
    let result = unpack_into(&staging, tar, dest).and_then(|()| {
        let top = single_entry(&staging).ok_or_else(|| Error::NotADirectory(dest.to_string()))?;
        std::fs::rename(top, parent_dir.join(name)).map_err(|e| Error::Open(dest.to_string(), e))
    });
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// The only entry of `dir`, if it has exactly one.
fn single_entry(dir: &Path) -> Option<std::path::PathBuf> {
    let mut entries = std::fs::read_dir(dir).ok()?.flatten();
    let first = entries.next()?.path();
    entries.next().is_none().then_some(first)
}

/// Copies what the image at `root` has at `path` into the empty volume
/// mounted at `to` (see `Request::Populate`). The tree goes through the
/// layer writer and the unpacker over a pipe: owners, modes, times,
/// xattrs, hardlinks and symlinks kept, in bounded memory.
pub fn populate(root: &str, path: &str, to: &str) -> Result<(), Error> {
    let to = Path::new(to);
    let _ = std::fs::remove_dir(to.join("lost+found"));
    let has_files = std::fs::read_dir(to)
        .map_err(|e| Error::Open(to.display().to_string(), e))?
        .next()
        .is_some();
    let source = crate::layer_out::resolve_in_root(Path::new(root), path);
    let Ok(source) = source.map(|s| s.to_string_lossy().into_owned()) else {
        return Ok(());
    };
    if has_files || !Path::new(&source).is_dir() {
        return Ok(());
    }
    let (reader, writer) = std::io::pipe().map_err(|e| Error::Open("pipe".into(), e))?;
    let sources = [crate::layer_out::CopySource {
        path: source.clone(),
        dest: String::new(),
        dest_is_dir: true,
    }];
    let writing = std::thread::spawn(move || {
        crate::layer_out::write_copy(Path::new("/"), &sources, writer, &Default::default())
            .map(drop)
    });
    let unpacked = unpack_into(to, reader, path);
    let written = writing
        .join()
        .unwrap_or(Err(crate::layer_out::Error::Changed { path: source }));
    unpacked?;
    written?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, content: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    #[test]
    fn diff_lines_are_docker_s_sorted_by_path() {
        let lower = tempfile::tempdir().unwrap();
        let upper = tempfile::tempdir().unwrap();
        write(&lower.path().join("etc/motd"), "old");
        write(&lower.path().join("etc/gone"), "x");
        write(&upper.path().join("etc/motd"), "new");
        write(&upper.path().join("etc/hosts"), "per container");
        write(&upper.path().join("a/new"), "x");
        let gone =
            std::ffi::CString::new(upper.path().join("etc/gone").to_string_lossy().as_bytes())
                .unwrap();
        // SAFETY: a valid path; an overlay whiteout is a 0/0 char device.
        assert_eq!(unsafe { libc::mknod(gone.as_ptr(), libc::S_IFCHR, 0) }, 0);
        let lines = diff_lines(
            &upper.path().to_string_lossy(),
            &lower.path().to_string_lossy(),
            &["/etc/hosts".into()],
        )
        .unwrap();
        assert_eq!(
            lines,
            ["A /a", "A /a/new", "C /etc", "D /etc/gone", "C /etc/motd"]
        );
    }

    #[test]
    fn a_fresh_volume_is_filled_from_the_image_once() {
        let image = tempfile::tempdir().unwrap();
        let volume = tempfile::tempdir().unwrap();
        write(&image.path().join("srv/www/index.html"), "hello");
        std::os::unix::fs::symlink("index.html", image.path().join("srv/www/link")).unwrap();
        std::fs::create_dir(volume.path().join("lost+found")).unwrap();
        let (root, to) = (
            image.path().to_string_lossy(),
            volume.path().to_string_lossy(),
        );
        populate(&root, "/srv/www", &to).unwrap();
        assert_eq!(
            std::fs::read_to_string(volume.path().join("index.html")).unwrap(),
            "hello"
        );
        assert_eq!(
            std::fs::read_link(volume.path().join("link")).unwrap(),
            Path::new("index.html")
        );
        assert!(!volume.path().join("lost+found").exists());
        // Not again once it holds files; nothing for a path the image lacks.
        write(&image.path().join("srv/www/later"), "x");
        populate(&root, "/srv/www", &to).unwrap();
        assert!(!volume.path().join("later").exists());
        let empty = tempfile::tempdir().unwrap();
        populate(&root, "/nonexistent", &empty.path().to_string_lossy()).unwrap();
        assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
    }
}
