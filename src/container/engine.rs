//! Running one container in its own microVM, in this process: prepare (or
//! reuse) the image's root filesystem, boot, build the container's root in
//! the guest (overlayfs over the read-only image disk), run the process with
//! its stdio streamed, record state and logs, shut the VM down.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent_protocol::protocol::{ExecSpec, Request};
use anyhow::Context;

use super::logs::{self, LogWriter};
use super::signals;
use super::state::{now_rfc3339, State, Status};
use super::ContainerConfig;
use crate::container::terminal;
use crate::guest::agent_client::{self, AgentClient, AgentError, ProcessRole};
use crate::guest::fast_start;
use crate::guest::rootfs::{self, RootfsCache};
use crate::guest::vm::{GuestOptions, RunningVm};
use crate::network::{self, GuestNetwork};
use crate::ports::PortForwarder;
use crate::volume::Volume;

/// Where the container's root is assembled inside the guest.
pub const GUEST_ROOT: &str = "/run/hull/root";
/// Where the image's disk is mounted in the guest.
pub const GUEST_LOWER: &str = "/run/hull/lower";
/// Where the writable layer's disk (or tmpfs) is mounted in the guest.
pub const GUEST_SCRATCH: &str = "/run/hull/scratch";
/// Where the container's own copies of [`PER_CONTAINER_FILES`] live in
/// the guest (tmpfs, outside the writable layer).
const GUEST_FILES: &str = "/run/hull/files";
/// Files every container has of its own, bind-mounted over the image's:
/// never part of its writable layer, so `diff`, `commit` and builds'
/// layers leave them out.
pub const PER_CONTAINER_FILES: [&str; 3] = ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"];
/// Size of a container's writable layer disk (sparse).
pub const UPPER_DISK_BYTES: u64 = 4 << 30;
/// Most of an image's file bytes read into a warm snapshot's page cache
/// (each such snapshot's memory file grows by what is read; the rest of a
/// larger image is read from disk as containers use it).
const WARM_BYTES: u64 = 64 << 20;
/// The mailbox file in a container's directory, its size (sparse: only
/// what a `cp` writes takes space) and the lock its writer holds.
pub const MAILBOX: &str = "mailbox";
pub const MAILBOX_BYTES: u64 = 1 << 30;
pub const MAILBOX_LOCK: &str = "mailbox.lock";
/// Mount options of a writable-layer ext4 disk (see `root_mounts`).
pub const SCRATCH_EXT4_OPTIONS: &str = "noinit_itable";
/// Size of the unused second disk of a `--rm` container.
pub const SCRATCH_DISK_BYTES: u64 = 1 << 20;

/// How the container's stdio is connected.
pub enum Attach {
    /// To this process's terminal/pipes (and the log); stdin if `-i`.
    Terminal {
        /// Forward our stdin.
        stdin: bool,
    },
    /// To the log only.
    Detached,
}

/// The container's hybrid vsock socket (short: Unix socket paths are
/// limited to 108 bytes and the VMM appends `_PORT` for guest connections).
pub fn socket_path(root: &Path, id: &str) -> PathBuf {
    root.join("run")
        .join(format!("{}.vsock", &id[..12.min(id.len())]))
}

fn update(dir: &Path, f: impl FnOnce(&mut State)) -> std::io::Result<()> {
    let mut s = State::load(dir).unwrap_or_else(|_| State::created());
    f(&mut s);
    s.save(dir)
}

/// Runs the container to completion; returns its exit code. State is
/// `running` from boot until the process exits, then `exited`. The slow
/// stages of a first start (preparing the image's filesystem, booting the
/// template VM, saving snapshots) are told to `progress`. A
/// container-mode container runs through `crate::oci::engine` instead.
pub fn run(
    root: &Path,
    dir: &Path,
    config: &ContainerConfig,
    attach: Attach,
    progress: &dyn crate::progress::Progress,
) -> anyhow::Result<i32> {
    if config.isolation == crate::oci::Isolation::Container {
        return crate::oci::engine::run(root, dir, config, attach);
    }
    // Held while this VM may write the container's disk: a helper VM
    // (`hull commit`, `cp`, ... of a stopped container) takes it too.
    let disk = super::fs_vm::lock_disk(dir)?;
    // Where the VM's threads record a call their seccomp filter refuses
    // (read back by `State::load` once this process is gone); empty
    // unless that happens.
    let record_path = dir.join(super::state::SECCOMP_RECORD);
    let record = super::store::create_private(&record_path)?;
    vmm::seccomp::install_violation_handler(Some(record))?;
    crate::guest::vmm_process::record_violations_in(&record_path);
    // Held for the VM's life: one writer or many readers per volume.
    let (volumes, attached) = attach_volumes(root, config)?;
    update(dir, |s| {
        s.status = Status::Running;
        s.set_vmm_self();
        s.process_id = None;
        s.started_at = Some(now_rfc3339());
        s.finished_at = None;
        s.exit_code = None;
        s.error = None;
    })?;
    crate::events::container(root, config, "start", &[]);
    let result = run_inner(root, dir, config, attach, progress, volumes)
        .map_err(|e| stopped_by_filter(dir).unwrap_or(e));
    // The VM is gone: its disks are free before the state says so.
    drop((attached, disk));
    // Off its user network: the address is free and the name stops
    // resolving once the container has stopped.
    if let Err(e) = network::detach(root, &config.network, &config.id) {
        tracing::warn!("{e:#}");
    }
    let code = exit_code_of(&result);
    // Before the state says exited: whoever waits for that (`stop`) then
    // records its own event after this one.
    record_die(root, config, code);
    update(dir, |s| {
        s.status = Status::Exited;
        s.vmm_pid = None;
        s.vmm_start = None;
        s.vm_pid = None;
        s.vm_cgroups.clear();
        s.process_id = None;
        s.ports.clear();
        s.finished_at = Some(now_rfc3339());
        s.exit_code = Some(code);
        if let Err(e) = &result {
            s.error = Some(format!("{e:#}"));
        }
        if super::state::seccomp_violation(dir).is_some() {
            s.status = Status::Dead;
            s.exit_code = Some(vmm::seccomp::VIOLATION_EXIT);
        }
    })?;
    result
}

/// The error of a run whose VMM process its seccomp filter stopped (what
/// the guest did is the cause, not the connection the VMM's end broke).
fn stopped_by_filter(dir: &Path) -> Option<anyhow::Error> {
    let call = super::state::seccomp_violation(dir)?;
    Some(anyhow::anyhow!("seccomp violation: {call}"))
}

/// The exit code recorded for a run's result. As Docker records it:
/// 127/126 for a program that could not be executed, 125 for any other
/// failure of hull's own.
pub fn exit_code_of(result: &anyhow::Result<i32>) -> i32 {
    match result {
        Ok(code) => *code,
        Err(e) => agent_client::exec_exit_code(e).map_or(125, i32::from),
    }
}

/// Records the `die` event of a container that ended with `code`.
pub fn record_die(root: &Path, config: &ContainerConfig, code: i32) {
    let code = code.to_string();
    crate::events::container(root, config, "die", &[("exitCode", &code)]);
}

/// Runs a container to its end: host resources, the VM with the root and
/// the main process (one round trip), the output, the VM's end.
// Over 80 lines on purpose: the ports, disks, network and shared
// directories acquired here are dropped (released) in reverse order when
// it returns, whatever the outcome; one frame keeps that order visible.
fn run_inner(
    root: &Path,
    dir: &Path,
    config: &ContainerConfig,
    attach: Attach,
    progress: &dyn crate::progress::Progress,
    mut volumes: Vec<Volume>,
) -> anyhow::Result<i32> {
    let main_process = Arc::new(AtomicU32::new(0));
    let attached = matches!(attach, Attach::Terminal { .. });
    // The terminal the container's PTY follows (attached `-t` only).
    let our_terminal = terminal::size_source().filter(|_| attached && config.tty);
    if attached {
        // Before any VM thread exists, so none of them takes the signals.
        signals::forward(
            socket_path(root, &config.id),
            main_process.clone(),
            our_terminal,
        )?;
    }
    // Before the boot: a port in use fails the start at once. Dropped
    // (listeners closed) before `run` records the exit.
    let mut ports = PortForwarder::bind(&config.ports)?;
    update(dir, |s| s.ports = ports.bindings())?;
    let mut disks = container_disks(root, dir, config, progress)?;
    disks.extend(volume_disks(&volumes, config));
    // Dropped (passt killed and reaped, the tap closed) when the
    // container ends; passt also ends on its own if this process dies.
    let network = network::attach(
        root,
        &config.network,
        &config.id,
        (&config.name, &config.network_aliases),
        Some(&dir.join("passt.log")),
    )?;
    // Dropped (each virtiofsd killed and reaped) when the container ends.
    let shared_dirs =
        crate::volume::bind::SharedDirs::start(&socket_path(root, &config.id), dir, &config.binds)?;
    let spec = ExecSpec {
        argv: config.argv.clone(),
        env: config.env.clone(),
        cwd: config.cwd.clone(),
        root: Some(GUEST_ROOT.into()),
        user: config.user.clone(),
        tty: config.tty.then(|| {
            our_terminal
                .and_then(terminal::window_size)
                .unwrap_or_default()
        }),
    };
    let t0 = std::time::Instant::now();
    // The VM, the container's root and its main process started: all of
    // the guest's part in one round trip.
    let (mut vm, mut client) = start_vm(
        root,
        dir,
        config,
        disks,
        (&network, &shared_dirs),
        progress,
        (
            &volumes,
            spec,
            matches!(attach, Attach::Terminal { stdin: true }),
        ),
    )?;
    tracing::debug!(
        "container root ready, process started at {:?}",
        t0.elapsed()
    );
    update(dir, |s| {
        s.vm_pid = vm.vmm_pid();
        s.vm_cgroups = vm.vmm_cgroups();
    })?;
    mark_populated(&mut volumes, config)?;
    ports.start(&vm.uds)?;

    let record_pid = |id: u32| {
        main_process.store(id, Ordering::Release);
        let _ = update(dir, |s| s.process_id = Some(id));
    };
    let code = run_main(&mut client, attach, dir, config.tty, record_pid).map_err(|e| match vm
        .why_ended()
    {
        Some(why) => e.context(why),
        None => e,
    })?;
    // The container's process is gone: refuse new connections now.
    drop(ports);
    tracing::debug!("process exited at {:?}", t0.elapsed());
    end_vm(vm, config)?;
    Ok(code)
}

/// Ends a container's VM once its process has exited.
fn end_vm(vm: RunningVm, config: &ContainerConfig) -> anyhow::Result<()> {
    if config.auto_remove
        && config.mounts.iter().all(|m| m.read_only)
        && config.binds.iter().all(|b| b.read_only)
    {
        // Nothing of a --rm container's VM outlives it (its writable layer
        // is guest tmpfs, its image disk read-only): end it without the
        // guest's shutdown work. A volume or a bind mount it writes needs
        // that work: its file system unmounted clean (the guest's dirty
        // pages of a shared file written out through virtiofsd).
        drop(vm);
    } else {
        AgentClient::connect(&vm.uds)?.shutdown()?;
        vm.wait(Duration::from_secs(120))?;
    }
    Ok(())
}

/// The container VM's two disks: the image's root filesystem (prepared
/// on first use) and the writable layer, or a scratch file with `--rm`.
fn container_disks(
    root: &Path,
    dir: &Path,
    config: &ContainerConfig,
    progress: &dyn crate::progress::Progress,
) -> anyhow::Result<Vec<vmm::DiskConfig>> {
    let image_disk = match &config.rootfs_disk {
        Some(disk) => disk.clone(),
        None => {
            RootfsCache::new(root)
                .with_progress(progress)
                .get_or_prepare(root, &config.layers)
                .map_err(|e| e.context("preparing the image's root filesystem"))?
                .0
        }
    };
    let upper = second_disk(dir, false);
    if !config.auto_remove && !upper.exists() {
        let tmp = dir.join(".upper.ext4.tmp");
        rootfs::mkfs(&tmp, UPPER_DISK_BYTES, "hull-upper")?;
        std::fs::rename(&tmp, &upper)?;
    }
    // Every container VM has the same two disks, so all can start from one
    // snapshot; with --rm the writable layer is tmpfs and the second disk
    // a small unused file of this container's own (never a shared one: the
    // guest could write it).
    let second = if config.auto_remove {
        let scratch = second_disk(dir, true);
        super::store::create_private(&scratch)?.set_len(SCRATCH_DISK_BYTES)?;
        scratch
    } else {
        upper
    };
    Ok(vec![
        vmm::DiskConfig {
            path: image_disk,
            read_only: true,
        },
        vmm::DiskConfig {
            path: second,
            read_only: false,
        },
    ])
}

/// The container VM's second disk (`/dev/vdb`) in the container's
/// directory: its writable layer, or with `--rm` a scratch disk of
/// [`SCRATCH_DISK_BYTES`] that the guest leaves unmounted (the writable
/// layer is tmpfs; the disk is there so all containers share one VM
/// shape, and one snapshot).
pub fn second_disk(dir: &Path, auto_remove: bool) -> PathBuf {
    dir.join(if auto_remove {
        "scratch.img"
    } else {
        "upper.ext4"
    })
}

/// Starts the container's VM (from a snapshot when it can), assembles
/// its root filesystem through the agent and starts its main process
/// (`spec`, with our stdin forwarded if `stdin`), which the returned
/// client then has ([`AgentClient::take_started`]).
fn start_vm(
    root: &Path,
    dir: &Path,
    config: &ContainerConfig,
    disks: Vec<vmm::DiskConfig>,
    (network, shared_dirs): (&network::Attachment, &crate::volume::bind::SharedDirs),
    progress: &dyn crate::progress::Progress,
    (volumes, spec, stdin): (&[Volume], ExecSpec, bool),
) -> anyhow::Result<(RunningVm, AgentClient)> {
    let memory = format!("{}m", config.mem_mib);
    let opts = GuestOptions {
        memory: &memory,
        cpus: config.cpus,
        console: false,
        echo: false,
        kernel: None,
        net: network.devices.clone(),
        windows: vec![vmm::window::WindowConfig {
            path: mailbox(dir)?,
            writable: mailbox_is_writable(config),
        }],
        extra_cmdline: "",
        fs: shared_dirs.devices.clone(),
        progress: Some(progress),
    };
    std::fs::create_dir_all(root.join("run"))?;
    fast_start::start(
        root,
        &opts,
        disks,
        socket_path(root, &config.id),
        Duration::from_secs(600),
        Some(&image_warmup(config.auto_remove, &network.guest)),
        |client| {
            setup_root(client, config, &network.guest, volumes)?;
            client.queue_run(spec, stdin)
        },
    )
    .context("starting the container's VM and root filesystem")
    .map_err(crate::guest::agent_client::bare_exec_failure)
}

/// Runs the container's main process with its output to the log, and to
/// our stdout/stderr when attached; returns its exit code.
fn run_main(
    client: &mut AgentClient,
    attach: Attach,
    dir: &Path,
    tty: bool,
    record_pid: impl FnOnce(u32),
) -> anyhow::Result<i32> {
    let process = client
        .take_started()
        .context("the container's process did not start")?;
    let log = logs::open(dir)?;
    let code = match attach {
        Attach::Terminal { stdin } => {
            // Raw from the moment the process runs until we return.
            let mut raw = None;
            let code = client.run_started(
                process,
                ProcessRole::Main,
                our_stdin(stdin),
                LogWriter::new(log.clone(), "stdout", Some(std::io::stdout())),
                LogWriter::new(log, "stderr", Some(std::io::stderr())),
                |id| {
                    record_pid(id);
                    raw = raw_stdin(tty && stdin);
                },
            );
            drop(raw);
            code?
        }
        Attach::Detached => client.run_started(
            process,
            ProcessRole::Main,
            None,
            LogWriter::<std::io::Sink>::new(log.clone(), "stdout", None),
            LogWriter::<std::io::Sink>::new(log, "stderr", None),
            record_pid,
        )?,
    };
    Ok(code)
}

/// Our stdin as the process's input, if forwarded (`-i`).
fn our_stdin(forward: bool) -> Option<Box<dyn std::io::Read + Send>> {
    forward.then(|| Box::new(std::io::stdin()) as Box<dyn std::io::Read + Send>)
}

/// Raw mode for our stdin when it is a terminal the container's PTY takes
/// over (`-t` with `-i`, as Docker: without `-i`, ^C stays a signal for
/// hull to forward).
fn raw_stdin(wanted: bool) -> Option<terminal::RawMode> {
    use std::io::IsTerminal;
    let stdin = std::io::stdin();
    if !wanted || !stdin.is_terminal() {
        return None;
    }
    terminal::RawMode::enable(std::os::fd::AsRawFd::as_raw_fd(&stdin)).ok()
}

/// What every container of an image with this writable-layer kind shares,
/// done once into a warm snapshot (fast start): the image disk (/dev/vda)
/// mounted as the overlay's lower layer and its files read into the page
/// cache; for `--rm`, whose writable layer starts as an empty tmpfs, the
/// whole root's mounts too, with the per-container files bind-mounted
/// (empty until a container writes them). The interface whose addresses
/// every container shares is configured (with the template's MAC). What
/// differs per container is in [`setup_root`].
fn image_warmup(auto_remove: bool, network: &[GuestNetwork]) -> fast_start::Warmup {
    let mut requests = vec![
        mount("/dev/vda", GUEST_LOWER, "erofs", true, ""),
        Request::ReadFiles {
            root: GUEST_LOWER.into(),
            max_bytes: WARM_BYTES,
        },
    ];
    if auto_remove {
        requests.extend(root_mounts(true));
        for path in PER_CONTAINER_FILES {
            requests.push(write_own_file(path, ""));
            requests.push(mount_own_file(path));
        }
    }
    requests.extend(
        network
            .iter()
            .filter(|l| l.same_in_every_container())
            .map(GuestNetwork::warm_configure_request),
    );
    fast_start::Warmup {
        fixed_disks: 1,
        // With --rm the second disk is the unused scratch file.
        unused_disks: usize::from(auto_remove),
        requests,
    }
}

pub fn mount(source: &str, target: &str, fstype: &str, read_only: bool, options: &str) -> Request {
    Request::Mount {
        source: source.into(),
        target: target.into(),
        fstype: fstype.into(),
        read_only,
        options: options.into(),
        within: None,
    }
}

/// A mount on `path` of the container root `root`: the agent resolves
/// `path` inside the root, so the image's symlinks cannot lead the
/// mount out of it.
pub fn mount_in(
    root: &str,
    path: &str,
    source: &str,
    fstype: &str,
    read_only: bool,
    options: &str,
) -> Request {
    let mut req = mount(source, &format!("{root}{path}"), fstype, read_only, options);
    if let Request::Mount { within, .. } = &mut req {
        *within = Some(root.into());
    }
    req
}

/// The container's root on the mounted image disk: the writable layer on
/// its own disk (or tmpfs for `--rm`), the overlay, /proc, /sys, /dev.
fn root_mounts(auto_remove: bool) -> Vec<Request> {
    let scratch = if auto_remove {
        mount("tmpfs", GUEST_SCRATCH, "tmpfs", false, "mode=0755")
    } else {
        // No background zeroing of inode tables (ext4lazyinit): in a guest
        // whose kernel code is emulated it takes the vCPU from the
        // container for minutes; tables of a fresh mkfs are marked unused.
        mount(
            "/dev/vdb",
            GUEST_SCRATCH,
            "ext4",
            false,
            SCRATCH_EXT4_OPTIONS,
        )
    };
    let options = format!(
        "lowerdir={GUEST_LOWER},upperdir={GUEST_SCRATCH}/upper,workdir={GUEST_SCRATCH}/work"
    );
    [
        scratch,
        Request::Mkdir {
            path: format!("{GUEST_SCRATCH}/upper"),
            within: None,
        },
        Request::Mkdir {
            path: format!("{GUEST_SCRATCH}/work"),
            within: None,
        },
        mount("overlay", GUEST_ROOT, "overlay", false, &options),
    ]
    .into_iter()
    .chain(pseudo_mounts(GUEST_ROOT))
    .collect()
}

/// What every container root has mounted in it: /proc, /sys (read-only),
/// the guest's /dev, its own /dev/shm and terminals.
pub fn pseudo_mounts(root: &str) -> Vec<Request> {
    vec![
        mount_in(root, "/proc", "proc", "proc", false, ""),
        mount_in(root, "/sys", "sysfs", "sysfs", true, ""),
        mount_in(root, "/dev", "/dev", "bind", false, ""),
        mount_in(root, "/dev/shm", "shm", "tmpfs", false, "mode=1777"),
        // The container's own terminals, as Docker mounts them (gid 5:
        // tty); its /dev/ptmx allocates from this instance, so `-t`
        // terminals are /dev/pts/N inside.
        mount_in(
            root,
            "/dev/pts",
            "devpts",
            "devpts",
            false,
            "newinstance,ptmxmode=0666,mode=0620,gid=5",
        ),
    ]
}

/// Queues (into the caller's batch) what is the container's own, after
/// [`image_warmup`]: the root's mounts unless the warm-up did them, then
/// hostname, /etc/hosts, /etc/hostname, /etc/resolv.conf, a read-only root.
fn setup_root(
    client: &mut AgentClient,
    config: &ContainerConfig,
    network: &[GuestNetwork],
    volumes: &[Volume],
) -> Result<(), AgentError> {
    if !config.auto_remove {
        for req in root_mounts(false) {
            client.call(&req)?;
        }
    }
    for req in volume_mounts(config, volumes) {
        client.call(&req)?;
    }
    for req in bind_mounts(config) {
        client.call(&req)?;
    }
    client.set_hostname(&config.hostname)?;
    for link in network {
        client.call(&link.configure_request())?;
    }
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n",
        config.hostname
    );
    let resolv = if network.is_empty() {
        resolv_conf()
    } else {
        crate::network::resolv_conf(network)
    };
    let files = [hosts, format!("{}\n", config.hostname), resolv];
    // A --rm container's warm snapshot has them mounted already, unless a
    // volume or bind mount made since covers them.
    let targets = config.mounts.iter().map(|m| m.target.as_str());
    let targets = targets.chain(config.binds.iter().map(|b| b.target.as_str()));
    let mounted = config.auto_remove && !mounts_cover_own_files(targets);
    for (path, content) in PER_CONTAINER_FILES.iter().zip(files) {
        client.call(&write_own_file(path, &content))?;
        if !mounted {
            client.call(&mount_own_file(path))?;
        }
    }
    if config.read_only {
        client.remount_read_only(GUEST_ROOT)?;
    }
    Ok(())
}

/// Writes the container's own copy of `path` (one of
/// [`PER_CONTAINER_FILES`]) in place, so that a bind mount of it made
/// earlier shows `content`.
fn write_own_file(path: &str, content: &str) -> Request {
    Request::WriteFile {
        path: format!("{GUEST_FILES}{path}"),
        content: content.into(),
        mode: 0o644,
        within: None,
        in_place: true,
    }
}

/// Bind-mounts the container's own copy of `path` over the image's: kept
/// outside the writable layer, as Docker does, they never show in `diff`
/// or `commit`.
fn mount_own_file(path: &str) -> Request {
    let own = format!("{GUEST_FILES}{path}");
    mount_in(GUEST_ROOT, path, &own, "bind", false, "")
}

/// Whether a volume or bind mount lands on or above one of
/// [`PER_CONTAINER_FILES`] (`-v data:/etc`), hiding what the warm
/// snapshot mounted there: those files are then mounted again on top.
fn mounts_cover_own_files<'a>(targets: impl IntoIterator<Item = &'a str>) -> bool {
    targets
        .into_iter()
        .map(|t| t.trim_end_matches('/'))
        .any(|t| {
            PER_CONTAINER_FILES
                .iter()
                .any(|f| t.is_empty() || *f == t || f.starts_with(&format!("{t}/")))
        })
}

/// The container's mailbox: a sparse host file every container VM has
/// as a memory window (read-only but for `--rm` containers), through which `hull cp` hands a running
/// container's agent a tar (the guest reads it in place, no copy over
/// vsock). Hull writes it only while holding [`MAILBOX_LOCK`]; a `--rm`
/// container's agent writes what hull asks of it there too
/// ([`mailbox_is_writable`]).
fn mailbox(dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join(MAILBOX);
    // It carries files copied into and out of the container.
    let f = std::os::unix::fs::OpenOptionsExt::mode(
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true),
        0o600,
    )
    .open(&path)?;
    if f.metadata()?.len() != MAILBOX_BYTES {
        f.set_len(MAILBOX_BYTES)?;
    }
    Ok(path)
}

/// Whether the container's VM may write its mailbox: only a `--rm`
/// container's, whose writable layer is in its VM's memory, so that
/// `commit`, `diff`, `export` and `cp` out of it are written there by its
/// own agent (the guest can then fill at most [`MAILBOX_BYTES`] of host
/// disk, as it can its own disks).
pub fn mailbox_is_writable(config: &ContainerConfig) -> bool {
    config.auto_remove
}

/// Frees what a container's VM wrote into its mailbox (the file keeps
/// its size: the VM maps it).
pub fn clear_mailbox(path: &Path) {
    use std::os::fd::AsRawFd;
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) {
        // SAFETY: fallocate on a descriptor we own; no memory is passed.
        unsafe {
            libc::fallocate(
                f.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                MAILBOX_BYTES as libc::off_t,
            )
        };
    }
}

/// Where a running container's mailbox window is in its guest's memory.
pub fn mailbox_window(config: &ContainerConfig) -> agent_protocol::protocol::WindowRange {
    let place = vmm::window::places(config.mem_mib, &[MAILBOX_BYTES])[0];
    agent_protocol::protocol::WindowRange {
        guest_addr: place.guest_addr,
        len: place.len,
    }
}

/// The container's volumes with their locks (one writer or many
/// readers), in the order of `config.mounts`.
fn attach_volumes(
    root: &Path,
    config: &ContainerConfig,
) -> anyhow::Result<(Vec<Volume>, Vec<crate::volume::Attached>)> {
    let store = crate::volume::VolumeStore::new(root);
    let mut volumes = Vec::new();
    let mut attached = Vec::new();
    for m in &config.mounts {
        let v = store.get(&m.name)?;
        attached.push(crate::volume::attach(&v, &config.name, m.read_only)?);
        volumes.push(v);
    }
    Ok((volumes, attached))
}

/// The volumes' disks, after the image's and the writable layer's.
fn volume_disks(volumes: &[Volume], config: &ContainerConfig) -> Vec<vmm::DiskConfig> {
    volumes
        .iter()
        .zip(&config.mounts)
        .map(|(v, m)| vmm::DiskConfig {
            path: v.disk(),
            read_only: m.read_only,
        })
        .collect()
}

/// Records that the fresh volumes mounted read-write were filled from the
/// image (by `setup_root`, which has run).
fn mark_populated(volumes: &mut [Volume], config: &ContainerConfig) -> anyhow::Result<()> {
    for (v, _) in volumes
        .iter_mut()
        .zip(&config.mounts)
        .filter(|(v, m)| !v.meta.populated && !m.read_only)
    {
        v.mark_populated()?;
    }
    Ok(())
}

/// Mounts each volume (disks /dev/vdc on, after the image and the
/// writable layer) in the guest, fills a fresh one from the image, and
/// binds it at its path in the container.
fn volume_mounts(config: &ContainerConfig, volumes: &[Volume]) -> Vec<Request> {
    let mut requests = Vec::new();
    for (i, (m, v)) in config.mounts.iter().zip(volumes).enumerate() {
        let device = format!("/dev/vd{}", (b'c' + i as u8) as char);
        let staging = format!("/run/hull/volumes/{i}");
        // Read-only: the disk is attached read-only too, so a journal
        // left by a writer that was killed cannot be replayed; it is
        // skipped (`noload`) instead of failing the mount.
        let options = if m.read_only {
            "noload,noinit_itable"
        } else {
            SCRATCH_EXT4_OPTIONS
        };
        requests.push(mount(&device, &staging, "ext4", m.read_only, options));
        if !v.meta.populated && !m.read_only {
            requests.push(Request::Populate {
                root: GUEST_LOWER.into(),
                path: m.target.clone(),
                to: staging.clone(),
            });
        }
        requests.push(mount_in(GUEST_ROOT, &m.target, &staging, "bind", false, ""));
    }
    requests
}

/// Mounts each shared host directory (virtio-fs tag `hull-bind<i>`) in
/// the guest and binds it at its path in the container. Read-only twice
/// over: virtiofsd refuses writes, and so does the guest's mount.
fn bind_mounts(config: &ContainerConfig) -> Vec<Request> {
    let mut requests = Vec::new();
    for (i, b) in config.binds.iter().enumerate() {
        let staging = crate::volume::bind::guest_staging(i);
        let tag = crate::volume::bind::tag(i);
        requests.push(mount(&tag, &staging, "virtiofs", b.read_only, ""));
        requests.push(mount_in(GUEST_ROOT, &b.target, &staging, "bind", false, ""));
    }
    requests
}

/// The host's resolv.conf without loopback nameservers (unreachable from
/// the guest), falling back to public resolvers as Docker does.
pub fn resolv_conf() -> String {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let kept: Vec<&str> = host
        .lines()
        .filter(|l| {
            let mut w = l.split_whitespace();
            !(w.next() == Some("nameserver")
                && w.next()
                    .is_some_and(|ip| ip.starts_with("127.") || ip == "::1"))
        })
        .collect();
    let mut out = kept.join("\n");
    if !kept.iter().any(|l| l.starts_with("nameserver")) {
        out.push_str("\nnameserver 8.8.8.8\nnameserver 8.8.4.4");
    }
    out.trim_start().to_string() + "\n"
}

/// What `hull exec` runs, and how.
pub struct ExecOptions {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// `KEY=VALUE` added to (or replacing in) the container's environment.
    pub env: Vec<String>,
    /// Working directory (default: the container's).
    pub cwd: Option<String>,
    /// User (default: the container's).
    pub user: Option<String>,
    /// Forward our stdin (`-i`).
    pub stdin: bool,
    /// Run on a pseudo-terminal (`-t`).
    pub tty: bool,
    /// Where to write the process's agent id once it runs (VMs only).
    pub pid_file: Option<PathBuf>,
}

/// Runs another process in a running container (`hull exec`).
pub fn exec(root: &Path, config: &ContainerConfig, opts: ExecOptions) -> anyhow::Result<i32> {
    let ExecOptions {
        argv,
        env,
        cwd,
        user,
        stdin,
        tty,
        pid_file,
    } = opts;
    let uds = socket_path(root, &config.id);
    let process = Arc::new(AtomicU32::new(0));
    let our_terminal = terminal::size_source().filter(|_| tty);
    signals::forward(uds.clone(), process.clone(), our_terminal)?;
    let mut client = AgentClient::connect(&uds)?;
    let mut full_env = config.env.clone();
    for e in env {
        let key = e.split('=').next().unwrap_or_default().to_string();
        full_env.retain(|x| x.split('=').next() != Some(key.as_str()));
        full_env.push(e);
    }
    let spec = ExecSpec {
        argv,
        env: full_env,
        cwd: cwd.unwrap_or_else(|| config.cwd.clone()),
        root: Some(GUEST_ROOT.into()),
        user: user.unwrap_or_else(|| config.user.clone()),
        tty: tty.then(|| {
            our_terminal
                .and_then(terminal::window_size)
                .unwrap_or_default()
        }),
    };
    let mut raw = None;
    let code = client.run_with(
        spec,
        ProcessRole::Exec,
        our_stdin(stdin),
        std::io::stdout(),
        std::io::stderr(),
        |id| {
            process.store(id, Ordering::Release);
            raw = raw_stdin(tty && stdin);
            if let Some(f) = &pid_file {
                write_pid_file(f, id);
            }
        },
    );
    drop(raw);
    Ok(code?)
}

/// `exec --pid-file`: the id, written whole (temp + rename) so that a
/// reader never sees a part of it.
fn write_pid_file(path: &Path, id: u32) {
    let tmp = path.with_extension("tmp");
    let written = std::fs::write(&tmp, id.to_string()).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        tracing::warn!("writing {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_files_are_mounted_again_only_under_a_mount_that_covers_them() {
        let with = |targets: &[&str]| mounts_cover_own_files(targets.iter().copied());
        assert!(!with(&[]));
        assert!(!with(&["/data", "/etcetera", "/etc/hosts.d", "/var/etc"]));
        for covering in ["/", "/etc", "/etc/", "/etc/hosts", "/etc/resolv.conf"] {
            assert!(with(&["/data", covering]), "{covering}");
        }
    }

    use super::*;

    #[test]
    fn sockets_stay_short() {
        let id = "a".repeat(64);
        let p = socket_path(Path::new("/tmp/.tmpABCDEF"), &id);
        assert_eq!(p, Path::new("/tmp/.tmpABCDEF/run/aaaaaaaaaaaa.vsock"));
    }
}
