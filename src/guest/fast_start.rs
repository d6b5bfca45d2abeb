//! Fast start: containers begin from a snapshot of a VM that booted once,
//! instead of booting a kernel each.
//!
//! The first container of a given VM shape (memory, vCPUs, kernel, agent,
//! command line, disk layout) boots a template VM with placeholder disks to
//! agent-ready and snapshots it under `<snapshots>/<key>/`. Every container
//! of that shape then restores the snapshot with its own disks and vsock
//! socket: guest memory is the snapshot file mapped private, so clean pages
//! are shared between containers. Right after the restore the guest gets a
//! fresh identity (wall clock, RNG reseeded from host entropy) and re-reads
//! its disks; hostname and the rest follow in the usual container set-up.
//!
//! The key covers everything that shaped the saved guest, so a new kernel
//! or agent makes a new snapshot; stale ones are deleted when it is made.
//!
//! A caller may also name a [`Warmup`]: disks that are the same file for
//! every VM (an image's read-only root disk) and requests that prepare the
//! guest with them (mount it, read its files into the page cache). The
//! first such start restores the base snapshot, does the warm-up and saves
//! a derived snapshot keyed by the base, those disks' identities and the
//! requests; later starts restore the derived one and skip that work (a
//! cold page cache cost more than the rest of a container's start here).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agent_protocol::protocol::Request;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::guest::agent_client::{AgentClient, AgentError};
use crate::guest::serial_watch::SeenStatus;
use crate::guest::snapshot_use;
use crate::guest::vm::{self as guest_vm, GuestOptions, RunningVm};
use crate::progress::{self, Stage};

/// Set to `0`/`off`/`false` to boot every container cold.
pub const ENABLE_ENV: &str = "HULL_FAST_START";
/// Where snapshots live (default `<root>/snapshots`).
pub const DIR_ENV: &str = "HULL_SNAPSHOT_DIR";
/// Size of the template's placeholder disks.
const PLACEHOLDER_BYTES: u64 = 1 << 20;
/// How long a snapshot of another kernel or agent is kept unused.
const STALE_AFTER: Duration = Duration::from_secs(15 * 60);
/// Random bytes given to each restored guest's RNG.
const ENTROPY_BYTES: usize = 64;

/// Errors of the fast-start path.
#[derive(Debug, thiserror::Error)]
pub enum FastStartError {
    /// A file of the snapshot store could not be read or written.
    #[error("snapshot store {0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    /// Snapshots of this shape are deleted as soon as they are made.
    #[error("snapshot {0} keeps being deleted by another hull sharing the store")]
    Vanishing(PathBuf),
    /// The template VM did not end in a snapshot.
    #[error("template VM ended without a snapshot ({0})")]
    NoSnapshot(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FastStartError + '_ {
    move |e| FastStartError::Io(path.to_path_buf(), e)
}

/// Whether containers start from snapshots (the default).
pub fn enabled() -> bool {
    !matches!(
        std::env::var(ENABLE_ENV).as_deref(),
        Ok("0" | "off" | "false" | "no")
    )
}

/// The snapshot store.
pub fn snapshots_dir(root: &Path) -> PathBuf {
    std::env::var_os(DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("snapshots"))
}

/// What a snapshot was made from (kept beside it, for `hull info` and to
/// find stale ones).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Kernel file identity.
    pub kernel: String,
    /// Initramfs (agent) file identity.
    pub initramfs: String,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// Seconds the template took to boot and save.
    pub make_seconds: f64,
    /// For a derived (warm) snapshot: its base snapshot's key.
    #[serde(default)]
    pub base: Option<String>,
    /// For a derived snapshot: the disks it was made with, which every VM
    /// restored from it must have (it is stale once one is gone).
    #[serde(default)]
    pub fixed_disks: Vec<PathBuf>,
}

/// Preparation saved in a derived snapshot (see the module comment).
#[derive(Debug, Clone)]
pub struct Warmup {
    /// The first `fixed_disks` disks are the same file for every VM of
    /// the derived snapshot (read-only: the snapshot's page cache holds
    /// their blocks).
    pub fixed_disks: usize,
    /// The last `unused_disks` disks are ones the guest never reads (a
    /// `--rm` container's scratch disk, there so every container VM has
    /// one shape): a restored guest is not asked to refresh them (one
    /// request, ~35 ms of guest time, fewer).
    pub unused_disks: usize,
    /// Requests run once, after the disks are attached.
    pub requests: Vec<agent_protocol::protocol::Request>,
}

/// A file's identity: path, size, modification time and inode, so a
/// replaced kernel or agent gives a different key without hashing it.
fn file_identity(path: &Path) -> Result<String, FastStartError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(io(path))?;
    Ok(format!(
        "{}:{}:{}.{}:{}",
        path.display(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ino()
    ))
}

fn meta_for(config: &vmm::VmConfig) -> Result<SnapshotMeta, FastStartError> {
    Ok(SnapshotMeta {
        kernel: file_identity(&config.kernel)?,
        // The initramfs file is named by the agent's hash: its name and
        // size identify it, so hull roots sharing a snapshot store (and
        // an agent) share snapshots.
        initramfs: match &config.initramfs {
            Some(p) => {
                let len = std::fs::metadata(p).map_err(io(p))?.len();
                format!(
                    "{}:{len}",
                    p.file_name().unwrap_or_default().to_string_lossy()
                )
            }
            None => String::new(),
        },
        mem_mib: config.mem_mib,
        vcpus: config.vcpus,
        make_seconds: 0.0,
        base: None,
        fixed_disks: Vec::new(),
    })
}

/// The key of the snapshot a VM of `config` restores from.
fn key(config: &vmm::VmConfig, meta: &SnapshotMeta) -> String {
    let mut h = Sha256::new();
    let disks: Vec<bool> = config.disks.iter().map(|d| d.read_only).collect();
    h.update(format!(
        "format={}\nhull={}\nkernel={}\ninitramfs={}\nmem={}\ncpus={}\ncmdline={}\ndisks={disks:?}\nvsock={}\nnet={}\n",
        vmm::snapshot::FORMAT,
        env!("CARGO_PKG_VERSION"),
        meta.kernel,
        meta.initramfs,
        config.mem_mib,
        config.vcpus,
        config.full_cmdline(),
        config.vsock_uds.is_some(),
        !config.net.is_empty(),
    ));
    // Only shapes with more than one network device say how many: the
    // keys of the older shapes (none or one) stay what they were.
    if config.net.len() > 1 {
        h.update(format!("nics={}\n", config.net.len()));
    }
    // Likewise for shared directories (virtio-fs).
    if !config.fs.is_empty() {
        h.update(format!("shared_dirs={}\n", config.fs.len()));
    }
    hex::encode(h.finalize())[..16].to_string()
}

/// The key of the derived snapshot of `base_key` with `warmup` (an error
/// when a fixed disk cannot be read).
fn derived_key(
    base_key: &str,
    config: &vmm::VmConfig,
    warmup: &Warmup,
) -> Result<String, FastStartError> {
    let mut h = Sha256::new();
    h.update(format!("base={base_key}\n"));
    for d in config.disks.iter().take(warmup.fixed_disks) {
        h.update(format!("disk={}\n", file_identity(&d.path)?));
    }
    h.update(serde_json::to_vec(&warmup.requests).unwrap_or_default());
    Ok(format!("{base_key}-{}", &hex::encode(h.finalize())[..16]))
}

/// Starts a VM of `opts` with `disks` and the vsock socket `uds`, from a
/// snapshot when fast start is on (making the snapshot first if needed),
/// else by booting, and returns it with a connection to its agent.
/// With a `warmup` whose fixed disks lead `disks`, the VM starts from the
/// derived snapshot (made first if needed) or, booting cold, runs the
/// warm-up's requests itself. `setup` queues the caller's first requests:
/// they go in the same round trip as the restored guest's identity and
/// disks (each round trip costs the guest a wake-up, a thread switch and
/// vsock packets).
pub fn start(
    root: &Path,
    opts: &GuestOptions<'_>,
    disks: Vec<vmm::DiskConfig>,
    uds: PathBuf,
    timeout: Duration,
    warmup: Option<&Warmup>,
    setup: impl FnOnce(&mut AgentClient) -> Result<(), AgentError>,
) -> anyhow::Result<(RunningVm, AgentClient)> {
    let (mut config, seen) = guest_vm::config(root, opts)?;
    config.cmdline.push_str(" hull.serve");
    config.disks = disks;
    config.vsock_uds = Some(uds);
    if !enabled() {
        return boot_cold(config, &seen, timeout, warmup, setup);
    }
    let (dir, fixed, warm_requests, _in_use) =
        held_snapshot_for(root, opts, &config, warmup, timeout)?;
    let sizes: Vec<u64> = config
        .disks
        .iter()
        .map(|d| std::fs::metadata(&d.path).map(|m| m.len() / 512))
        .collect::<std::io::Result<_>>()?;
    let (vm, mut client) = RunningVm::restore(config, &dir, timeout)
        .with_context(|| format!("restoring VM snapshot {}", dir.display()))?;
    tracing::debug!("restored {}; agent answers", dir.display());
    // One round trip: identity first, then each disk the snapshot does
    // not have already and the guest will use, then the warm-up if the
    // snapshot lacks it, then the caller's.
    let used = sizes.len() - warmup.map_or(0, |w| w.unused_disks.min(sizes.len()));
    client.begin_batch();
    client.resumed(unix_nanos(), entropy()?)?;
    for (i, sectors) in sizes.into_iter().enumerate().take(used).skip(fixed) {
        client.refresh_disk(&disk_device(i), sectors)?;
    }
    replay_warmup(&mut client, warm_requests)?;
    setup(&mut client)?;
    client
        .end_batch()
        .map_err(|e| vm.explain(e.into()))
        .context("setting up the restored guest")?;
    tracing::debug!("guest identity set, disks attached, set-up done");
    Ok((vm, client))
}

/// Fast start off: boots, then runs the warm-up's and the caller's
/// requests in one round trip.
fn boot_cold(
    config: vmm::VmConfig,
    seen: &SeenStatus,
    timeout: Duration,
    warmup: Option<&Warmup>,
    setup: impl FnOnce(&mut AgentClient) -> Result<(), AgentError>,
) -> anyhow::Result<(RunningVm, AgentClient)> {
    let vm = RunningVm::start(config, seen, timeout)?;
    let mut client = AgentClient::connect(&vm.uds)?;
    client.begin_batch();
    replay_warmup(
        &mut client,
        warmup.map_or(&[][..], |w| w.requests.as_slice()),
    )?;
    setup(&mut client)?;
    client.end_batch().map_err(|e| vm.explain(e.into()))?;
    Ok((vm, client))
}

/// Queues a warm-up's requests on a VM that did not start from its warm
/// snapshot. Reading the files into memory is only worth it for a
/// snapshot, so `ReadFiles` is left out.
fn replay_warmup(client: &mut AgentClient, requests: &[Request]) -> Result<(), AgentError> {
    for req in requests {
        if !matches!(req, Request::ReadFiles { .. }) {
            client.call(req)?;
        }
    }
    Ok(())
}

/// [`snapshot_for`], held for the restore: another hull (another
/// version's, on the same store) may delete a snapshot between its choice
/// and the hold; then it is chosen (and made) again.
fn held_snapshot_for<'w>(
    root: &Path,
    opts: &GuestOptions<'_>,
    config: &vmm::VmConfig,
    warmup: Option<&'w Warmup>,
    timeout: Duration,
) -> anyhow::Result<(PathBuf, usize, &'w [Request], snapshot_use::InUse)> {
    let mut tries = 0;
    loop {
        let (dir, fixed, warm_requests) = snapshot_for(root, opts, config, warmup, timeout)?;
        if let Some(held) = snapshot_use::hold(&dir, vmm::snapshot::STATE_FILE).map_err(io(&dir))? {
            return Ok((dir, fixed, warm_requests, held));
        }
        tries += 1;
        if tries == 3 {
            return Err(FastStartError::Vanishing(dir).into());
        }
    }
}

/// The snapshot to restore (made first if needed): the warm one derived
/// for `warmup` when there is or can be one, else the base. Returns its
/// directory, how many leading disks it has fixed, and the warm-up
/// requests still to run (those of a warm-up it lacks).
fn snapshot_for<'w>(
    root: &Path,
    opts: &GuestOptions<'_>,
    config: &vmm::VmConfig,
    warmup: Option<&'w Warmup>,
    timeout: Duration,
) -> anyhow::Result<(PathBuf, usize, &'w [Request])> {
    let meta = meta_for(config)?;
    let base_key = key(config, &meta);
    let store = snapshots_dir(root);
    let base = store.join(&base_key);
    if !base.join(vmm::snapshot::STATE_FILE).exists() {
        make(root, opts, config, &meta, &base, timeout)
            .context("making the fast-start VM snapshot")?;
    }
    // The derived snapshot, when there is (or can be made) one.
    let derived = match warmup {
        Some(w) => {
            let dir = store.join(derived_key(&base_key, config, w)?);
            if !dir.join(vmm::snapshot::STATE_FILE).exists() {
                let stage = progress::begin(opts.progress(), Stage::WarmSnapshot);
                match make_derived(
                    root, opts, &base, &base_key, &meta, config, w, &dir, timeout,
                ) {
                    Ok(()) => stage.done(),
                    // The base snapshot still works: start from it.
                    Err(e) => tracing::warn!("no warm snapshot for this image: {e:#}"),
                }
            }
            dir.join(vmm::snapshot::STATE_FILE)
                .exists()
                .then_some((dir, w))
        }
        None => None,
    };
    Ok(match derived {
        Some((dir, w)) => (dir, w.fixed_disks, &[][..]),
        None => (base, 0, warmup.map_or(&[][..], |w| w.requests.as_slice())),
    })
}

/// The guest's name for disk `i` (virtio-blk devices in order).
fn disk_device(i: usize) -> String {
    format!("/dev/vd{}", (b'a' + i as u8) as char)
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn entropy() -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = vec![0u8; ENTROPY_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}

/// Restores the base snapshot with `config`'s fixed disks (placeholders
/// for the others), runs the warm-up and saves the result as `dir`.
#[allow(clippy::too_many_arguments)]
fn make_derived(
    root: &Path,
    opts: &GuestOptions<'_>,
    base: &Path,
    base_key: &str,
    base_meta: &SnapshotMeta,
    config: &vmm::VmConfig,
    warmup: &Warmup,
    dir: &Path,
    timeout: Duration,
) -> anyhow::Result<()> {
    let meta = SnapshotMeta {
        base: Some(base_key.to_string()),
        fixed_disks: config.disks[..warmup.fixed_disks.min(config.disks.len())]
            .iter()
            .map(|d| d.path.clone())
            .collect(),
        ..base_meta.clone()
    };
    save(
        root,
        opts,
        config,
        warmup.fixed_disks,
        dir,
        meta,
        |vm, _, uds| {
            let vm = vmm::Vm::restore(vm, base)?;
            let snapshot = vm.snapshot_handle();
            let (running, mut client) = RunningVm::start_restored(vm, uds, timeout)?;
            client.begin_batch();
            for (i, disk) in config.disks.iter().take(warmup.fixed_disks).enumerate() {
                let sectors = std::fs::metadata(&disk.path).map_err(io(&disk.path))?.len() / 512;
                client.refresh_disk(&disk_device(i), sectors)?;
            }
            for req in &warmup.requests {
                client.call(req)?;
            }
            client.end_batch().map_err(|e| running.explain(e.into()))?;
            // Closed before saving: the VMM waits for the guest's side of
            // it to close too before it saves (and refuses to save while
            // a connection is open), so no pause is needed here.
            drop(client);
            Ok((running, snapshot))
        },
    )?;
    tracing::debug!("warm snapshot {} made", dir.display());
    Ok(())
}

/// Boots a template VM like `config` but with placeholder disks, waits for
/// its agent and snapshots it into `dir`.
fn make(
    root: &Path,
    opts: &GuestOptions<'_>,
    config: &vmm::VmConfig,
    meta: &SnapshotMeta,
    dir: &Path,
    timeout: Duration,
) -> anyhow::Result<()> {
    save(root, opts, config, 0, dir, meta.clone(), |vm, seen, uds| {
        let stage = progress::begin(opts.progress(), Stage::BootTemplate);
        let vm = vmm::Vm::new(vm)?;
        let snapshot = vm.snapshot_handle();
        let running = RunningVm::spawn(vm, uds)?;
        guest_vm::wait_ready(seen, || running.is_done(), timeout)?;
        stage.done();
        Ok((running, snapshot))
    })
}

/// What saves killed half-way left: `.tmp-PID` directories in the
/// snapshot store (any: one save at a time holds the store's lock, and
/// the caller does) and `snapshot-PID.vsock*` sockets of dead PIDs.
fn remove_interrupted_saves(store: &Path, run: &Path) {
    if let Ok(entries) = std::fs::read_dir(store) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(run) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if snapshot_socket_pid(&name).is_some_and(|p| !crate::container::state::pid_alive(p)) {
                // A socket, or the directory of a template's virtiofsd
                // sockets (`snapshot-PID.vsock-fs`).
                let _ = std::fs::remove_file(e.path());
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// The PID in a template VM's socket name (`snapshot-PID.vsock`, and its
/// per-port `snapshot-PID.vsock_PORT`).
pub fn snapshot_socket_pid(name: &str) -> Option<i32> {
    name.strip_prefix("snapshot-")?
        .split_once(".vsock")?
        .0
        .parse()
        .ok()
}

/// Makes snapshot `dir` of the store (under its lock; nothing if another
/// hull made it meanwhile): a VM of `opts` with `config`'s first `fixed`
/// disks and 1 MiB placeholders for the others is brought up by `bring_up`
/// (given its config, its serial status and its vsock socket; it returns
/// the VM ready to be saved), saved into a temporary directory with `meta`
/// and renamed into place; then stale snapshots are deleted. A failure
/// leaves nothing behind.
fn save(
    root: &Path,
    opts: &GuestOptions<'_>,
    config: &vmm::VmConfig,
    fixed: usize,
    dir: &Path,
    meta: SnapshotMeta,
    bring_up: impl FnOnce(
        vmm::VmConfig,
        &crate::guest::serial_watch::SeenStatus,
        PathBuf,
    ) -> anyhow::Result<(RunningVm, vmm::SnapshotHandle)>,
) -> anyhow::Result<()> {
    let store = dir.parent().unwrap_or(dir);
    std::fs::create_dir_all(store).map_err(io(store))?;
    let _lock = crate::file_lock::lock_exclusive(&store.join(".lock")).map_err(io(store))?;
    if dir.join(vmm::snapshot::STATE_FILE).exists() {
        // Another hull made it while we waited for the lock.
        return Ok(());
    }
    let started = Instant::now();
    let run = root.join("run");
    remove_interrupted_saves(store, &run);
    let tmp = store.join(format!(".tmp-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let uds = run.join(format!("snapshot-{}.vsock", std::process::id()));
    let fs_dir = run.join(format!("snapshot-{}.vsock-fs", std::process::id()));
    let result = (|| -> anyhow::Result<()> {
        let (mut vm, seen) = guest_vm::config(root, opts)?;
        // Served until the snapshot is saved.
        let _placeholders = template_devices(&mut vm, config, fixed, &tmp, &fs_dir)?;
        std::fs::create_dir_all(&run).map_err(io(&run))?;
        vm.vsock_uds = Some(uds.clone());
        let (running, snapshot) = bring_up(vm, &seen, uds.clone())?;
        // A warm snapshot's save is part of its own stage.
        let stage = (fixed == 0).then(|| progress::begin(opts.progress(), Stage::SaveSnapshot));
        snapshot.snapshot(&tmp);
        match running.wait(Duration::from_secs(120))? {
            vmm::VmExit::Snapshotted => {}
            other => return Err(FastStartError::NoSnapshot(format!("{other:?}")).into()),
        }
        if let Some(stage) = stage {
            stage.done();
        }
        for i in fixed..config.disks.len() {
            let _ = std::fs::remove_file(tmp.join(format!("placeholder{i}")));
        }
        let meta = SnapshotMeta {
            make_seconds: started.elapsed().as_secs_f64(),
            ..meta.clone()
        };
        let path = tmp.join("meta.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&meta)?).map_err(io(&path))?;
        std::fs::rename(&tmp, dir).map_err(io(dir))?;
        Ok(())
    })();
    let _ = std::fs::remove_file(&uds);
    let _ = std::fs::remove_dir_all(&fs_dir);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        return result;
    }
    remove_stale(store, &current_kernels(root, &meta), &meta.initramfs);
    Ok(())
}

/// The identities of the kernels this hull boots: `meta`'s and both
/// variants of the kernel it finds (a one-vCPU VM boots the uniprocessor
/// one, others the SMP one), so that neither's snapshots look stale to
/// the other's save.
fn current_kernels(root: &Path, meta: &SnapshotMeta) -> Vec<String> {
    let mut kernels = vec![meta.kernel.clone()];
    for vcpus in [1, 2] {
        let kernel = crate::guest::files::kernel_for(root, vcpus).ok();
        if let Some(id) = kernel.and_then(|k| file_identity(&k).ok()) {
            kernels.push(id);
        }
    }
    kernels
}

/// Turns `vm` into the template of a snapshot of `config`: the agent
/// serving, `config`'s first `fixed` disks and 1 MiB placeholders (in
/// `tmp`) for the others, placeholder shared directories (their daemons'
/// files in `fs_dir`; returned, to be kept running while the template
/// is) and network devices without a link.
fn template_devices(
    vm: &mut vmm::VmConfig,
    config: &vmm::VmConfig,
    fixed: usize,
    tmp: &Path,
    fs_dir: &Path,
) -> anyhow::Result<crate::volume::bind::SharedDirs> {
    vm.cmdline.push_str(" hull.serve");
    // The template's virtio-fs devices are served by daemons of its
    // own (an empty directory): the guest sets the devices up but
    // mounts nothing, and each restored VM connects to its own.
    let placeholders = placeholder_shared_dirs(fs_dir, vm.fs.len())?;
    vm.fs = placeholders.devices.clone();
    // The template has the network devices but no link: its guest
    // keeps the interfaces down, and each restored VM gets its own
    // backends and MACs.
    for (i, net) in vm.net.iter_mut().enumerate() {
        net.backend = None;
        net.mac = crate::network::template_mac(i);
    }
    for (i, disk) in config.disks.iter().enumerate() {
        if i < fixed {
            anyhow::ensure!(disk.read_only, "a snapshot's fixed disk must be read-only");
            vm.disks.push(disk.clone());
            continue;
        }
        let path = tmp.join(format!("placeholder{i}"));
        let f = std::fs::File::create(&path).map_err(io(&path))?;
        f.set_len(PLACEHOLDER_BYTES).map_err(io(&path))?;
        vm.disks.push(vmm::DiskConfig {
            path,
            read_only: disk.read_only,
        });
    }
    Ok(placeholders)
}

/// `count` virtiofsd daemons sharing an empty directory, read-only, with
/// their sockets and logs in `dir` (made here; under `run/`, short).
fn placeholder_shared_dirs(
    dir: &Path,
    count: usize,
) -> anyhow::Result<crate::volume::bind::SharedDirs> {
    let empty = dir.join("empty");
    if count > 0 {
        std::fs::create_dir_all(&empty).map_err(io(&empty))?;
    }
    let binds: Vec<_> = (0..count)
        .map(|_| crate::volume::bind::BindMount {
            source: empty.clone(),
            target: "/".into(),
            read_only: true,
        })
        .collect();
    Ok(crate::volume::bind::SharedDirs::start(
        &dir.join("vm"),
        dir,
        &binds,
    )?)
}

/// Deletes snapshots that cannot be used again (an image disk they were
/// warmed with is gone, or their description is unreadable) and those
/// made from another kernel (not one of `kernels`) or agent (not
/// `initramfs`) once unused for [`STALE_AFTER`]:
/// another hull version sharing the store may still be using them, and
/// deleting them at once would make each version re-make its snapshots
/// after the other's every save. Snapshots being restored are never
/// deleted (their restore holds them); VMs already restored keep running:
/// their memory mapping outlives the files.
fn remove_stale(store: &Path, kernels: &[String], initramfs: &str) {
    let now = SystemTime::now();
    let all = list(store);
    for (path, meta) in &all {
        let unused_long = || {
            last_used_with_derived(path, &all)
                .is_none_or(|t| now.duration_since(t).unwrap_or_default() > STALE_AFTER)
        };
        let stale = match meta {
            Some(m) if m.fixed_disks.iter().any(|d| !d.exists()) => true,
            Some(m) => (!kernels.contains(&m.kernel) || m.initramfs != initramfs) && unused_long(),
            None => true,
        };
        if stale {
            match snapshot_use::remove_unless_in_use(path) {
                Ok(true) => tracing::debug!("removed stale snapshot {}", path.display()),
                Ok(false) => tracing::debug!("stale snapshot {} in use: kept", path.display()),
                Err(e) => tracing::warn!("removing stale snapshot {}: {e}", path.display()),
            }
        }
    }
}

/// When snapshot `path` was last used, or a snapshot derived from it:
/// a warm start restores (and stamps) the derived snapshot only, but it
/// needs its base.
fn last_used_with_derived(
    path: &Path,
    all: &[(PathBuf, Option<SnapshotMeta>)],
) -> Option<SystemTime> {
    let name = path.file_name()?.to_string_lossy();
    let derived = all
        .iter()
        .filter(|(_, m)| m.as_ref().and_then(|m| m.base.as_deref()) == Some(&*name))
        .map(|(p, _)| p.as_path());
    std::iter::once(path)
        .chain(derived)
        .filter_map(snapshot_use::last_used)
        .max()
}

/// The snapshots in `store` with what they were made from (`None` if
/// unreadable). Temporary directories of snapshots being made are skipped.
pub fn list(store: &Path) -> Vec<(PathBuf, Option<SnapshotMeta>)> {
    let Ok(entries) = std::fs::read_dir(store) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter(|e| e.path().is_dir())
        .map(|e| {
            let meta = std::fs::read(e.path().join("meta.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            (e.path(), meta)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Removes every snapshot not being restored (`hull system prune`);
/// returns how many and the bytes freed on disk. They are made again on
/// the next `hull run`.
pub fn prune(store: &Path) -> std::io::Result<(usize, u64)> {
    if !store.exists() {
        return Ok((0, 0));
    }
    let _lock = crate::file_lock::lock_exclusive(&store.join(".lock"))?;
    let mut count = 0;
    let mut bytes = 0;
    for (path, _) in list(store) {
        let size = disk_usage(&path);
        if snapshot_use::remove_unless_in_use(&path)? {
            bytes += size;
            count += 1;
        }
    }
    Ok((count, bytes))
}

/// Bytes a directory's files occupy on disk (sparse files count what they use).
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with(kernel: &Path, mem: u64) -> vmm::VmConfig {
        let mut c = vmm::VmConfig::new(kernel.to_path_buf());
        c.mem_mib = mem;
        c.disks = vec![vmm::DiskConfig {
            path: "/x".into(),
            read_only: true,
        }];
        c
    }

    #[test]
    fn key_changes_with_kernel_file_and_vm_shape() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"one").unwrap();
        let c = config_with(&kernel, 128);
        let k1 = key(&c, &meta_for(&c).unwrap());
        assert_eq!(k1, key(&c, &meta_for(&c).unwrap()), "stable");
        let c256 = config_with(&kernel, 256);
        assert_ne!(k1, key(&c256, &meta_for(&c256).unwrap()));
        // A rebuilt kernel (new file in place) is a new snapshot.
        std::fs::remove_file(&kernel).unwrap();
        std::fs::write(&kernel, b"two!").unwrap();
        assert_ne!(k1, key(&c, &meta_for(&c).unwrap()));
    }

    fn nic() -> vmm::virtio::net::NetConfig {
        vmm::virtio::net::NetConfig {
            mac: crate::network::TEMPLATE_MAC,
            backend: None,
        }
    }

    #[test]
    fn key_changes_with_the_network_device_count_only() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"one").unwrap();
        let mut c = config_with(&kernel, 128);
        let meta = meta_for(&c).unwrap();
        let none = key(&c, &meta);
        c.net = vec![nic()];
        let one = key(&c, &meta);
        c.net = vec![nic(), nic()];
        let two = key(&c, &meta);
        assert!(none != one && one != two && none != two);
        // The one-device key is the one hull wrote before it had several
        // devices, so existing snapshots of that shape are still found.
        c.net = vec![nic()];
        let mut h = Sha256::new();
        h.update(format!(
            "format={}\nhull={}\nkernel={}\ninitramfs={}\nmem=128\ncpus=1\ncmdline={}\ndisks=[true]\nvsock=false\nnet=true\n",
            vmm::snapshot::FORMAT,
            env!("CARGO_PKG_VERSION"),
            meta.kernel,
            meta.initramfs,
            c.full_cmdline(),
        ));
        assert_eq!(one, hex::encode(h.finalize())[..16]);
        // A device's backend and MAC are given at restore: not the key.
        c.net[0].mac = [2, 1, 2, 3, 4, 5];
        assert_eq!(key(&c, &meta), one);
    }

    #[test]
    fn stale_snapshots_go_and_current_ones_stay() {
        let store = tempfile::tempdir().unwrap();
        let current = SnapshotMeta {
            kernel: "k2".into(),
            initramfs: "a".into(),
            mem_mib: 128,
            vcpus: 1,
            make_seconds: 1.0,
            base: None,
            fixed_disks: Vec::new(),
        };
        let image = store.path().join("image.ext4");
        std::fs::write(&image, b"disk").unwrap();
        let gone = store.path().join("gone.ext4");
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        // (name, kernel, fixed disks, made an hour ago)
        for (name, kernel, fixed, old) in [
            ("old", "k1", vec![], true),
            ("old-but-recent", "k1", vec![], false),
            ("new", "k2", vec![], true),
            ("new-warm", "k2", vec![image.clone()], true),
            ("new-gone", "k2", vec![gone], false),
            ("old-warm", "k1", vec![image.clone()], true),
            ("old-base", "k1", vec![], true),
            // The other variant of the current kernel: current too.
            ("new-up", "k2-up", vec![], true),
        ] {
            let d = store.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            let m = SnapshotMeta {
                kernel: kernel.into(),
                fixed_disks: fixed,
                // Kept: what it was warmed into was used recently.
                base: (name == "old-but-recent").then(|| "old-base".into()),
                ..current.clone()
            };
            let path = d.join("meta.json");
            std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
            if old {
                let f = std::fs::File::options().write(true).open(&path).unwrap();
                f.set_modified(hour_ago).unwrap();
            }
        }
        // One old snapshot of the other kernel is being restored.
        std::fs::write(store.path().join("old-warm/state.json"), b"{}").unwrap();
        let held = snapshot_use::hold(&store.path().join("old-warm"), "state.json").unwrap();
        remove_stale(store.path(), &["k2".into(), "k2-up".into()], "a");
        let left: Vec<_> = list(store.path()).into_iter().map(|(p, _)| p).collect();
        let names = [
            "new",
            "new-up",
            "new-warm",
            "old-base",
            "old-but-recent",
            "old-warm",
        ];
        assert_eq!(left, names.map(|n| store.path().join(n)));
        assert_eq!(prune(store.path()).unwrap().0, 5, "all but the one held");
        drop(held);
        assert_eq!(prune(store.path()).unwrap().0, 1);
        assert!(list(store.path()).is_empty());
        assert_eq!(
            std::fs::read_dir(store.path()).unwrap().count(),
            2,
            "image.ext4, .lock"
        );
    }
}
