//! `hull commit`, `diff`, `export` and `cp`: a container's file system,
//! read or written by a helper VM (`crate::container::fs_vm`).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use agent_protocol::protocol::CopySource;
use anyhow::Context;

use crate::container::commit::{self, CommitOptions};
use crate::container::fs_vm::{self, Access, FsVm};
use crate::container::store::ContainerStore;

/// Errors of the file-system commands that are the user's input.
#[derive(Debug, thiserror::Error)]
pub enum FsCommandError {
    /// Output to a terminal.
    #[error("cowardly refusing to save to a terminal. Use the -o flag or redirect")]
    Terminal,
    /// `hull cp` with no container side, or two.
    #[error("must specify exactly one container path: `hull cp CONTAINER:SRC DEST` or `hull cp SRC CONTAINER:DEST`")]
    CpSides,
    /// A container path that is not absolute.
    #[error("{0}: the path in the container must be absolute")]
    RelativePath(String),
    /// A host path that does not exist.
    #[error("could not find the file {0} on the host")]
    NoSuchHostPath(String),
    /// The destination's parent directory does not exist.
    #[error("{0}: no such directory")]
    NoParent(String),
}

/// `hull commit`; prints the new image's ID.
pub fn commit(
    root: &Path,
    store: &ContainerStore,
    container: &str,
    opts: &CommitOptions,
) -> anyhow::Result<u8> {
    let c = store.find(container)?;
    let id = commit::commit(root, &c, opts)?;
    crate::events::container(root, &c.config, "commit", &[]);
    println!("{id}");
    Ok(0)
}

/// `hull diff`: `A|C|D /path` lines, sorted by path.
pub fn diff(root: &Path, store: &ContainerStore, container: &str) -> anyhow::Result<u8> {
    let c = store.find(container)?;
    let mut vm = FsVm::open(root, &c, Access::Read)?;
    let lines = vm.diff()?;
    vm.finish()?;
    let mut out = std::io::stdout().lock();
    for line in lines {
        writeln!(out, "{line}")?;
    }
    Ok(0)
}

/// `hull export`: the container's merged root as a tar, made in the
/// helper VM.
pub fn export(
    root: &Path,
    store: &ContainerStore,
    container: &str,
    output: Option<&Path>,
) -> anyhow::Result<u8> {
    if output.is_none() && std::io::stdout().is_terminal() {
        return Err(FsCommandError::Terminal.into());
    }
    let c = store.find(container)?;
    let mut vm = FsVm::open(root, &c, Access::Read)?;
    let len = vm.export_root()?;
    write_output(vm.output(len)?, output)?;
    vm.finish()?;
    Ok(0)
}

/// Writes `tar` to `path` (whole or not at all) or to stdout.
pub fn write_output(mut tar: impl std::io::Read, path: Option<&Path>) -> anyhow::Result<()> {
    let Some(path) = path else {
        std::io::copy(&mut tar, &mut std::io::stdout().lock())?;
        return Ok(());
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::io::copy(&mut tar, &mut tmp)?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// One side of `hull cp`.
#[derive(Debug, PartialEq, Eq)]
enum CpPath {
    Host(String),
    Container(String, String),
}

/// Docker's rule: `NAME:PATH` is a container path unless the part before
/// the colon has a `/` (a host path with a colon in it).
fn cp_path(arg: &str) -> CpPath {
    match arg.split_once(':') {
        Some((name, path)) if !name.is_empty() && !name.contains('/') => {
            CpPath::Container(name.to_string(), path.to_string())
        }
        _ => CpPath::Host(arg.to_string()),
    }
}

/// `hull cp`.
pub fn cp(root: &Path, store: &ContainerStore, src: &str, dest: &str) -> anyhow::Result<u8> {
    match (cp_path(src), cp_path(dest)) {
        (CpPath::Container(name, path), CpPath::Host(host)) => {
            cp_out(root, store, &name, &path, &host)
        }
        (CpPath::Host(host), CpPath::Container(name, path)) => {
            cp_in(root, store, &host, &name, &path)
        }
        _ => Err(FsCommandError::CpSides.into()),
    }
}

fn absolute(path: &str) -> Result<(), FsCommandError> {
    if !path.starts_with('/') {
        return Err(FsCommandError::RelativePath(path.into()));
    }
    Ok(())
}

/// The last component of a container or host path (`/` for the root).
fn base_name(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        Some((_, b)) => b.to_string(),
        None if trimmed.is_empty() => "/".into(),
        None => trimmed.to_string(),
    }
}

/// Container → host (or a tar on stdout with `-`).
fn cp_out(
    root: &Path,
    store: &ContainerStore,
    name: &str,
    path: &str,
    host: &str,
) -> anyhow::Result<u8> {
    absolute(path)?;
    // Where it lands, decided before any VM starts.
    let target = (host != "-")
        .then(|| host_target(host, &base_name(path)))
        .transpose()?;
    let c = store.find(name)?;
    let mut vm = FsVm::open(root, &c, Access::Read)?;
    let entry = base_name(path);
    let len = vm.copy_out(vec![CopySource {
        path: path.to_string(),
        dest: entry.clone(),
        dest_is_dir: false,
    }])?;
    match target {
        None => {
            std::io::copy(&mut vm.output(len)?, &mut std::io::stdout().lock())?;
        }
        Some(target) => unpack_on_host(vm.output(len)?, &entry, &target)?,
    }
    vm.finish()?;
    Ok(0)
}

/// The host path a copied `name` becomes: inside `host` when it is a
/// directory, else `host` itself (whose parent must exist).
fn host_target(host: &str, name: &str) -> Result<PathBuf, FsCommandError> {
    let host = Path::new(host);
    if host.is_dir() {
        return Ok(host.join(name));
    }
    let parent = host
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(FsCommandError::NoParent(parent.display().to_string()));
    }
    Ok(host.to_path_buf())
}

/// Unpacks the tar (whose top entry is `entry`) so that `entry` becomes
/// `target`: in a staging directory beside it first, then renamed (a
/// failed copy leaves nothing). Owners are not kept (the files belong to
/// the user running hull, as with `docker cp`); the tar crate refuses
/// entries that would land outside the staging directory.
fn unpack_on_host(tar: impl std::io::Read, entry: &str, target: &Path) -> anyhow::Result<()> {
    let parent = target.parent().unwrap_or(Path::new("."));
    let staging = tempfile::Builder::new()
        .prefix(".hull-cp-")
        .tempdir_in(parent)?;
    let mut archive = tar::Archive::new(tar);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    archive.unpack(staging.path())?;
    let top = staging.path().join(entry);
    if target.is_dir() && top.is_dir() {
        // Into an existing directory: its contents merge, as Docker's do.
        merge_dir(&top, target)?;
    } else {
        std::fs::rename(&top, target)
            .with_context(|| format!("cannot write {}", target.display()))?;
    }
    Ok(())
}

/// Moves the entries of `from` into `to`, merging directories.
fn merge_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dest = to.join(e.file_name());
        if e.file_type()?.is_dir() && dest.is_dir() {
            merge_dir(&e.path(), &dest)?;
        } else {
            std::fs::rename(e.path(), &dest)?;
        }
    }
    Ok(())
}

/// Host → container: the host path as a tar, unpacked by the helper
/// VM's agent.
fn cp_in(
    root: &Path,
    store: &ContainerStore,
    host: &str,
    name: &str,
    path: &str,
) -> anyhow::Result<u8> {
    absolute(path)?;
    let c = store.find(name)?;
    let mut tar_file = FsVm::input_file(root)?;
    if host == "-" {
        std::io::copy(&mut std::io::stdin().lock(), &mut tar_file)?;
    } else {
        let src = Path::new(host.trim_end_matches("/."));
        if std::fs::symlink_metadata(src).is_err() {
            return Err(FsCommandError::NoSuchHostPath(host.into()).into());
        }
        host_tar(src, &base_name(host), &mut tar_file)?;
    }
    tar_file.flush()?;
    if c.config.isolation == crate::oci::Isolation::Vm && fs_vm::is_running(&c)? {
        fs_vm::copy_into_running(root, &c, tar_file.path(), path)?;
        return Ok(0);
    }
    let mut vm = FsVm::open(root, &c, Access::Write(tar_file.path().to_path_buf()))?;
    vm.apply_tar(path)?;
    vm.finish()?;
    Ok(0)
}

/// `src` (a file, or a directory and everything under it) as a tar whose
/// top entry is `name`, owned by root as `docker cp` makes them.
fn host_tar(src: &Path, name: &str, out: impl Write) -> anyhow::Result<()> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    let mut stack = vec![(src.to_path_buf(), PathBuf::from(name))];
    while let Some((path, entry)) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        header.set_uid(0);
        header.set_gid(0);
        if meta.file_type().is_symlink() {
            let link = std::fs::read_link(&path)?;
            b.append_link(&mut header, &entry, link)?;
        } else if meta.is_file() {
            b.append_data(&mut header, &entry, std::fs::File::open(&path)?)?;
        } else {
            b.append_data(&mut header, &entry, std::io::empty())?;
            if meta.is_dir() {
                for e in std::fs::read_dir(&path)? {
                    let e = e?;
                    stack.push((e.path(), entry.join(e.file_name())));
                }
            }
        }
    }
    b.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cp_paths_follow_dockers_rule() {
        assert_eq!(
            cp_path("web:/etc/hosts"),
            CpPath::Container("web".into(), "/etc/hosts".into())
        );
        assert_eq!(cp_path("./a:b"), CpPath::Host("./a:b".into()));
        assert_eq!(cp_path("/tmp/x"), CpPath::Host("/tmp/x".into()));
        assert_eq!(cp_path("-"), CpPath::Host("-".into()));
        assert_eq!(base_name("/etc/"), "etc");
        assert_eq!(base_name("/"), "/");
        assert_eq!(base_name("file"), "file");
    }

    #[test]
    fn host_trees_become_tars_owned_by_root() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("data");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("f"), b"hello").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("l")).unwrap();
        let mut tar = Vec::new();
        host_tar(&src, "data", &mut tar).unwrap();
        let mut names = Vec::new();
        for e in tar::Archive::new(&tar[..]).entries().unwrap() {
            let e = e.unwrap();
            assert_eq!(e.header().uid().unwrap(), 0);
            names.push(e.path().unwrap().display().to_string());
        }
        names.sort();
        assert_eq!(names, ["data", "data/f", "data/l"]);
        let target = dir.path().join("copy");
        unpack_on_host(&tar[..], "data", &target).unwrap();
        assert_eq!(std::fs::read(target.join("f")).unwrap(), b"hello");
        assert_eq!(
            std::fs::read_link(target.join("l")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert!(host_target("/nonexistent/dir/x", "f").is_err());
    }
}
