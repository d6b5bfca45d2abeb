//! `hull system check`: is what hull keeps on disk sound, and did nothing
//! outlive the commands that made it? Meant for after a crash (a `kill
//! -9` of `hull` or of a VMM): every blob an image needs present and
//! matching its digest, no half-written or half-removed container, no
//! leftover temporary file or helper VM work directory, no VMM process,
//! vsock socket or mount that belongs to no running container. Locks are
//! `flock`s, released by the kernel with their holder: none can leak.
//!
//! Each problem is one line on stdout; the exit status is 1 if there is
//! any. It only reads: what it reports is left for the next command (or
//! `hull rm`, `hull image prune`) to clean.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::container::state::{pid_alive, Status};
use crate::container::store::{Container, ContainerStore};
use crate::guest::fast_start;

/// `hull system check`.
pub fn check(root: &Path) -> anyhow::Result<u8> {
    let problems = problems(root)?;
    for p in &problems {
        println!("{p}");
    }
    if problems.is_empty() {
        eprintln!("hull system check: no problem found in {}", root.display());
        Ok(0)
    } else {
        Ok(1)
    }
}

/// Every problem of the hull root `root`, one line each.
pub fn problems(root: &Path) -> anyhow::Result<Vec<String>> {
    let store = images::Store::open(root).context("cannot open the image store")?;
    let mut problems = store.check().context("cannot check the image store")?;
    let containers = ContainerStore::new(root).list_as_is()?;
    problems.extend(container_dir_problems(
        &root.join("containers"),
        &containers,
    ));
    problems.extend(rootfs_temporaries(&root.join("rootfs")));
    problems.extend(leaked_vmms(root, &containers));
    problems.extend(orphaned_vm_processes());
    problems.extend(leaked_sockets(&root.join("run"), &containers));
    problems.extend(interrupted_snapshot_saves(&fast_start::snapshots_dir(root)));
    problems.extend(leaked_mounts(root, &containers));
    for work in ["fs-vm", "build"] {
        problems.extend(helper_vm_leftovers(&root.join(work)));
    }
    Ok(problems)
}

/// `vm-PID-*` entries of the helper and build VMs' work directories whose
/// hull process is gone: a killed `commit`, `cp`, `diff`, `export` or
/// build leaves its output window (which may hold a container's files)
/// and its vsock socket there, removed by the next such VM.
fn helper_vm_leftovers(work: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(work) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let pid: i32 = n.strip_prefix("vm-")?.split('-').next()?.parse().ok()?;
            (!pid_alive(pid)).then(|| {
                format!(
                    "leftover files of a killed helper VM: {}",
                    e.path().display()
                )
            })
        })
        .collect()
}

/// Entries of `containers/` that are no container: a creation or removal
/// cut short (`.ID.tmp`, `.removing.ID`), a directory without a readable
/// `config.json` and `state.json`; and temporary state files left inside
/// a container's directory.
fn container_dir_problems(dir: &Path, containers: &[Container]) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let listed: Vec<&Path> = containers.iter().map(|c| c.dir.as_path()).collect();
    let mut problems = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name == ".lock" {
            continue;
        }
        if name.starts_with(".removing.") {
            problems.push(format!("half-removed container: {}", path.display()));
        } else if name.starts_with('.') {
            problems.push(format!("half-created container: {}", path.display()));
        } else if !listed.contains(&path.as_path()) {
            problems.push(format!(
                "half-written container (no readable config.json and state.json): {}",
                path.display()
            ));
        } else {
            problems.extend(dead_temporaries(&path, "state.json"));
        }
    }
    problems
}

/// `.NAME.PID` files (a temporary copy `State::save` renames into place)
/// whose writer is gone.
fn dead_temporaries(dir: &Path, name: &str) -> Vec<String> {
    let prefix = format!(".{name}.");
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    let pid: i32 = n.strip_prefix(&prefix)?.parse().ok()?;
                    (!pid_alive(pid))
                        .then(|| format!("leftover temporary file: {}", e.path().display()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Prepared-rootfs temporaries (`.KEY.PID.tmp`) whose preparing hull
/// process is gone.
fn rootfs_temporaries(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let pid = rootfs_temporary_pid(&n)?;
            (!pid_alive(pid)).then(|| {
                format!(
                    "leftover root filesystem preparation: {}",
                    e.path().display()
                )
            })
        })
        .collect()
}

/// The PID in a prepared-rootfs temporary's name `.KEY.PID.tmp`.
pub fn rootfs_temporary_pid(name: &str) -> Option<i32> {
    let inner = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    inner.rsplit_once('.')?.1.parse().ok()
}

/// `hull --root ROOT __container-vmm ID` processes of this root that are
/// not the recorded VMM of a running container.
fn leaked_vmms(root: &Path, containers: &[Container]) -> Vec<String> {
    let root = canonical(root);
    let running: HashMap<&str, Option<i32>> = containers
        .iter()
        .map(|c| (c.config.id.as_str(), c.state.vmm_process()))
        .collect();
    let mut problems = Vec::new();
    for (pid, args) in processes() {
        let Some(i) = args.iter().position(|a| a == "__container-vmm") else {
            continue;
        };
        let of_root = args
            .windows(2)
            .any(|w| w[0] == "--root" && canonical(Path::new(&w[1])) == root);
        if !of_root {
            continue;
        }
        let id = args.get(i + 1).map(String::as_str).unwrap_or("");
        if running.get(id).copied().flatten() != Some(pid) {
            problems.push(format!(
                "leaked VMM process {pid} (container {})",
                crate::container::store::short(id)
            ));
        }
    }
    problems
}

/// `hull-vmm` processes (a VM's confined VMM process) whose hull process
/// is gone: they die with it (parent-death signal), so one still there
/// was missed. Their root is not on their command line: this is checked
/// whatever the root.
fn orphaned_vm_processes() -> Vec<String> {
    let exe = |p: i32| std::fs::read_link(format!("/proc/{p}/exe")).ok();
    let named = |p: i32, name: &str| exe(p).is_some_and(|e| e.file_name() == Some(name.as_ref()));
    processes()
        .into_iter()
        .filter(|(pid, args)| {
            named(*pid, "hull-vmm")
                || args
                    .first()
                    .is_some_and(|a| a.rsplit('/').next() == Some("hull-vmm"))
        })
        .filter(|(pid, _)| {
            parent_of(*pid).is_none_or(|parent| parent <= 1 || !named(parent, "hull"))
        })
        .map(|(pid, _)| format!("VMM process {pid} outlived the hull process that started it"))
        .collect()
}

/// The parent PID of `pid` (field 4 of `/proc/PID/stat`).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

/// Every process's PID and command line.
fn processes() -> Vec<(i32, Vec<String>)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let raw = std::fs::read(e.path().join("cmdline")).ok()?;
            let args = raw
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            Some((pid, args))
        })
        .collect()
}

/// Sockets in `run/` (`ID12.vsock`, `ID12.vsock_PORT`, `ID12.console`)
/// of no container. (A stopped container's socket is replaced at its next
/// start and removed with it.)
fn leaked_sockets(run: &Path, containers: &[Container]) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(run) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = fast_start::snapshot_socket_pid(&n) {
                return (!pid_alive(pid)).then(|| {
                    format!(
                        "leaked vsock socket of a killed snapshot save: {}",
                        e.path().display()
                    )
                });
            }
            if let Some(pid) = crate::guest::rootfs::prepare_socket_pid(&n) {
                return (!pid_alive(pid)).then(|| {
                    format!(
                        "leaked vsock socket of a killed root filesystem preparation: {}",
                        e.path().display()
                    )
                });
            }
            // `ID12.vsock`, `ID12.vsock_PORT`, `ID12.console`.
            let (short, _) = n.split_once('.')?;
            let owned = containers.iter().any(|c| c.config.id.starts_with(short));
            (!owned).then(|| format!("leaked socket of no container: {}", e.path().display()))
        })
        .collect()
}

/// `.tmp-PID` directories of the snapshot store whose saving process is
/// gone (a save in progress has a live PID).
fn interrupted_snapshot_saves(store: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(store) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            // `.tmp-PID` of a save, `.tmp-PID-removing-NAME` of a deletion.
            let rest = n.strip_prefix(".tmp-")?;
            let pid: i32 = rest.split('-').next()?.parse().ok()?;
            (!pid_alive(pid)).then(|| {
                format!(
                    "leftover snapshot of a killed save or deletion: {}",
                    e.path().display()
                )
            })
        })
        .collect()
}

/// Mounts under the hull root that no running container holds.
fn leaked_mounts(root: &Path, containers: &[Container]) -> Vec<String> {
    let root = canonical(root);
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(&root) && *p != root)
        .filter(|p| {
            !containers
                .iter()
                .any(|c| c.state.status == Status::Running && p.starts_with(canonical(&c.dir)))
        })
        .map(|p| format!("leaked mount: {}", p.display()))
        .collect()
}

/// A mount point as mountinfo writes it (space, tab, newline and
/// backslash as `\ooo`).
fn unescape_mount_path(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|o| {
            let t = std::str::from_utf8(o).ok()?;
            u8::from_str_radix(t, 8).ok()
        });
        match (b[i], octal) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from(
        String::from_utf8_lossy(&out).into_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_saves_and_deletions_of_dead_processes_are_reported() {
        let store = tempfile::tempdir().unwrap();
        let dead = 999_999_999;
        let me = std::process::id();
        for name in [
            format!(".tmp-{dead}"),
            format!(".tmp-{dead}-removing-abc"),
            format!(".tmp-{me}"),
            format!(".tmp-{me}-removing-abc"),
            "abc".to_string(),
        ] {
            std::fs::create_dir(store.path().join(name)).unwrap();
        }
        let mut found = interrupted_snapshot_saves(store.path());
        found.sort();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].ends_with(&format!(".tmp-{dead}")), "{found:?}");
        assert!(found[1].ends_with("-removing-abc"), "{found:?}");
    }

    #[test]
    fn mountinfo_escapes_and_rootfs_temporary_names_are_read() {
        assert_eq!(
            unescape_mount_path("/a\\040b\\011c"),
            PathBuf::from("/a b\tc")
        );
        assert_eq!(rootfs_temporary_pid(".abc123.4567.tmp"), Some(4567));
        assert_eq!(rootfs_temporary_pid("abc123.erofs"), None);
        assert_eq!(rootfs_temporary_pid(".abc.tmp"), None);
        assert_eq!(
            fast_start::snapshot_socket_pid("snapshot-42.vsock"),
            Some(42)
        );
        assert_eq!(
            fast_start::snapshot_socket_pid("snapshot-42.vsock_1024"),
            Some(42)
        );
        assert_eq!(fast_start::snapshot_socket_pid("0123456789ab.vsock"), None);
        let prepare = crate::guest::rootfs::prepare_socket_pid;
        assert_eq!(prepare("prepare-42.vsock"), Some(42));
        assert_eq!(prepare("prepare-42.vsock_1024"), Some(42));
        assert_eq!(prepare("snapshot-42.vsock"), None);
    }

    #[test]
    fn half_made_and_half_removed_containers_are_problems() {
        let dir = tempfile::tempdir().unwrap();
        for d in [".abc.tmp", ".removing.def", "ghi"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join(".lock"), "").unwrap();
        let mut found = container_dir_problems(dir.path(), &[]);
        found.sort();
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].starts_with("half-created container"), "{found:?}");
        assert!(found[1].starts_with("half-removed container"), "{found:?}");
        assert!(found[2].starts_with("half-written container"), "{found:?}");
    }

    #[test]
    fn work_directories_of_dead_helper_vms_are_problems() {
        let dir = tempfile::tempdir().unwrap();
        let live = format!("vm-{}-abc", std::process::id());
        // PIDs stop well below 2^31 - 2 (pid_max is at most 2^22).
        let dead = "vm-2147483646-def";
        for d in [live.as_str(), dead, "other"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        let found = helper_vm_leftovers(dir.path());
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("leftover files of a killed helper VM"));
        assert!(found[0].ends_with(dead), "{found:?}");
    }
}
