//! A cgroup per VMM process: its memory capped at the guest's RAM plus a
//! stated overhead, its CPU at the VM's vCPUs. A guest that drives its
//! VMM to allocate (device buffers, page tables, anything a bug lets it
//! grow) then meets the kernel's limit instead of the host's memory.
//!
//! cgroup v2 (one hierarchy): `/sys/fs/cgroup/hull/<name>`, with the
//! memory and cpu controllers enabled down to it. cgroup v1 (the hybrid
//! layout of these hosts): `<name>` under this process's own cgroup in
//! the memory and cpu hierarchies, so the VMM stays inside whatever limit
//! the host set for hull. Where neither is writable (not root, no cgroup
//! file system), VMMs run without one and hull says so in its debug log.

use std::path::{Path, PathBuf};

/// What the VMM process may use beyond guest RAM: its own heap and
/// stacks, page tables of guest memory, device queues, vsock buffers and
/// the page cache of its disks (reclaimed under the limit, never fatal).
pub const OVERHEAD_MIB: u64 = 64;

/// The scheduler period the CPU quota is set against (the kernel's
/// default).
const CPU_PERIOD_US: u64 = 100_000;

/// Age past which an empty `hull-*` cgroup is a killed hull's leftover: a
/// VMM joins its cgroup milliseconds after hull makes it.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// Errors making a VMM's cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup file could not be written.
    #[error("cgroup {0}: {1}")]
    Write(String, std::io::Error),
}

/// The limits of one VMM.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// CPUs (a quota of this many full CPUs).
    pub cpus: u8,
}

impl Limits {
    /// A VMM of `mem_mib` of guest RAM and `vcpus`.
    pub fn for_vm(mem_mib: u64, vcpus: u8) -> Self {
        let mib = std::env::var("HULL_TEST_VMM_MEMORY_LIMIT_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(mem_mib + OVERHEAD_MIB);
        Self {
            memory_bytes: mib << 20,
            cpus: vcpus.max(1),
        }
    }
}

/// A VMM's cgroup: one directory (v2) or one per hierarchy (v1).
#[derive(Debug)]
pub struct VmCgroup {
    pub(super) dirs: Vec<PathBuf>,
    /// What it was made with.
    pub limits: Limits,
}

impl VmCgroup {
    /// Makes the cgroup `name` with `limits`; `None` where this host
    /// offers no cgroup hull can write.
    pub fn create(name: &str, limits: Limits) -> Result<Option<Self>, CgroupError> {
        let made = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            create_v2(name, limits)
        } else {
            create_v1(name, limits)
        };
        if made.is_err() || matches!(made, Ok(None)) {
            tracing::debug!("VMM {name} runs without a cgroup: {made:?}");
        }
        made
    }

    /// How many times the kernel's OOM killer ended a process of it
    /// (`oom_kill` of v2's `memory.events` or v1's `memory.oom_control`).
    pub fn oom_kills(&self) -> u64 {
        ["memory.events", "memory.oom_control"]
            .iter()
            .flat_map(|f| self.dirs.iter().map(move |d| d.join(f)))
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|l| l.strip_prefix("oom_kill "))
                    .filter_map(|n| n.trim().parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum()
    }

    /// The `cgroup.procs` files the VMM process joins by writing `0`.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }
}

impl Drop for VmCgroup {
    /// Removes the directories; call once the VMM process is gone (a
    /// cgroup with a process in it cannot be removed).
    fn drop(&mut self) {
        remove_dirs(&self.dirs);
    }
}

/// Removes a VMM's cgroup directories once it is gone.
pub fn remove_dirs(dirs: &[PathBuf]) {
    for d in dirs {
        // The kernel may still be releasing the last task: retry briefly.
        for _ in 0..50 {
            if std::fs::remove_dir(d).is_ok() || !d.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// Removes the `hull-*` cgroups in `parent` that a hull killed with its
/// VMM left behind (its `Drop` never ran; containers record theirs, but
/// `--rm`, helper, build and template VMs do not): those made over
/// [`STALE_AFTER`] ago that hold no process, which is all `rmdir` of a
/// cgroup accepts anyway, so a running VMM's cgroup stays.
pub fn remove_stale_siblings(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry.file_name().to_string_lossy().starts_with("hull-")
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_AFTER);
        if stale && std::fs::remove_dir(entry.path()).is_ok() {
            tracing::debug!("removed stale cgroup {}", entry.path().display());
        }
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|e| CgroupError::Write(path.display().to_string(), e))
}

fn make_dir(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(CgroupError::Write(dir.display().to_string(), e)),
    }
}

fn create_v2(name: &str, limits: Limits) -> Result<Option<VmCgroup>, CgroupError> {
    let top = Path::new("/sys/fs/cgroup");
    let hull = top.join("hull");
    // The root cgroup may hold processes and enable controllers for its
    // children; `hull` holds none, so it may enable them for ours.
    write(&top.join("cgroup.subtree_control"), "+memory +cpu")?;
    make_dir(&hull)?;
    remove_stale_siblings(&hull);
    write(&hull.join("cgroup.subtree_control"), "+memory +cpu")?;
    let dir = hull.join(name);
    make_dir(&dir)?;
    let cg = VmCgroup {
        dirs: vec![dir],
        limits,
    };
    let dir = &cg.dirs[0];
    write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
    write(&dir.join("memory.swap.max"), "0").ok();
    let quota = CPU_PERIOD_US * u64::from(limits.cpus);
    write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
    Ok(Some(cg))
}

/// This process's cgroup in the v1 hierarchy of `controller`, as a path
/// under its mount point, from `/proc/self/cgroup`.
fn own_v1_dir(controller: &str) -> Option<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let (mount, path) = table.lines().find_map(|line| {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then(|| (controllers.to_string(), path.to_string()))
    })?;
    // Debian mounts each hierarchy at its controller list's name and
    // links the single names to it (cpu -> cpu,cpuacct).
    let base = [controller, mount.as_str()]
        .into_iter()
        .map(|m| Path::new("/sys/fs/cgroup").join(m))
        .find(|b| b.join("cgroup.procs").exists())?;
    Some(base.join(path.trim_start_matches('/')))
}

fn create_v1(name: &str, limits: Limits) -> Result<Option<VmCgroup>, CgroupError> {
    let (Some(memory), Some(cpu)) = (own_v1_dir("memory"), own_v1_dir("cpu")) else {
        return Ok(None);
    };
    remove_stale_siblings(&memory);
    remove_stale_siblings(&cpu);
    let (memory, cpu) = (memory.join(name), cpu.join(name));
    make_dir(&memory)?;
    let mut cg = VmCgroup {
        dirs: vec![memory.clone()],
        limits,
    };
    write(
        &memory.join("memory.limit_in_bytes"),
        &limits.memory_bytes.to_string(),
    )?;
    make_dir(&cpu)?;
    cg.dirs.push(cpu.clone());
    write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
    let quota = CPU_PERIOD_US * u64::from(limits.cpus);
    write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
    Ok(Some(cg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_old_empty_hull_cgroups_are_swept() {
        let parent = tempfile::tempdir().unwrap();
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let make = |name: &str, old: bool| {
            let d = parent.path().join(name);
            std::fs::create_dir(&d).unwrap();
            if old {
                std::fs::File::open(&d)
                    .unwrap()
                    .set_modified(hour_ago)
                    .unwrap();
            }
            d
        };
        let stale = make("hull-stale", true);
        // Just made: its VMM may not have joined it yet.
        let fresh = make("hull-fresh", false);
        // Not empty, as a cgroup with a running VMM (rmdir refuses both).
        let busy = make("hull-busy", true);
        std::fs::write(busy.join("cgroup.procs"), "42").unwrap();
        std::fs::File::open(&busy)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
        let other = make("system.slice", true);
        remove_stale_siblings(parent.path());
        assert!(!stale.exists());
        assert!(fresh.exists() && busy.exists() && other.exists());
    }

    #[test]
    fn the_memory_limit_is_guest_ram_plus_the_stated_overhead() {
        let l = Limits::for_vm(128, 2);
        assert_eq!(l.memory_bytes, (128 + OVERHEAD_MIB) << 20);
        assert_eq!(l.cpus, 2);
        assert_eq!(Limits::for_vm(128, 0).cpus, 1);
    }
}
