//! Running one container-mode container, in this process (the monitor,
//! the counterpart of the VM engine's VMM process): the image's cached
//! lower directory under a per-container overlay, a network namespace,
//! the bundle, then `<runtime> run` with its stdio copied to the log (and
//! to our terminal when attached), the state recorded as the VM mode
//! records it. Mounts live in this process's private mount namespace, so
//! a monitor that dies leaves none behind on the host.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::bundle::{self, BundleInput};
use super::lower::LowerCache;
use super::runtime::Runtime;
use super::{netns, user, OciError};
use crate::container::engine::Attach;
use crate::container::logs::{self, LogWriter};
use crate::container::state::{now_rfc3339, State, Status};
use crate::container::ContainerConfig;
use crate::network::NetworkMode;
use crate::ports::PortForwarder;
use agent_protocol::protocol::WindowSize;

/// Signals an attached run passes on to the container's process.
const FORWARDED: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

fn update(dir: &Path, f: impl FnOnce(&mut State)) -> std::io::Result<()> {
    let mut s = State::load(dir).unwrap_or_else(|_| State::created());
    f(&mut s);
    s.save(dir)
}

/// Runs the container to completion; returns its exit code. Must be
/// called while this process has a single thread (it unshares its mount
/// namespace first).
pub fn run(
    root: &Path,
    dir: &Path,
    config: &ContainerConfig,
    attach: Attach,
) -> anyhow::Result<i32> {
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
    let mut parts = Parts::default();
    let result = run_inner(root, dir, config, attach, &mut parts);
    parts.clean_up(root, &config.id);
    let code = crate::container::engine::exit_code_of(&result);
    crate::container::engine::record_die(root, config, code);
    update(dir, |s| {
        s.status = Status::Exited;
        s.vmm_pid = None;
        s.vmm_start = None;
        s.process_id = None;
        s.ports.clear();
        s.finished_at = Some(now_rfc3339());
        s.exit_code = Some(code);
        if let Err(e) = &result {
            s.error = Some(format!("{e:#}"));
        }
    })?;
    result
}

/// What a run set up, undone in reverse whatever happened.
#[derive(Default)]
struct Parts {
    runtime: Option<Runtime>,
    rootfs: Option<PathBuf>,
    netns: Option<PathBuf>,
    userns: Option<PathBuf>,
    pasta: Option<Child>,
}

impl Parts {
    fn clean_up(&mut self, root: &Path, id: &str) {
        if let Some(rt) = &self.runtime {
            // Normally `run` deleted it already; after a failed start the
            // runtime may still hold a half-made container.
            rt.delete(root, id);
        }
        if let Some(mut p) = self.pasta.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        for n in [self.netns.take(), self.userns.take()]
            .into_iter()
            .flatten()
        {
            netns::remove(&n);
        }
        if let Some(r) = self.rootfs.take() {
            unmount(&r);
        }
    }
}

fn unmount(path: &Path) {
    if let Ok(p) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) {
        // SAFETY: umount2(2) of a path we mounted.
        unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
    }
}

fn run_inner(
    root: &Path,
    dir: &Path,
    config: &ContainerConfig,
    attach: Attach,
    parts: &mut Parts,
) -> anyhow::Result<i32> {
    // First, while we have one thread.
    netns::private_mounts()?;
    let attached = matches!(attach, Attach::Terminal { .. });
    let container_pid = Arc::new(AtomicU32::new(0));
    let terminal = Arc::new(OnceLock::new());
    if attached {
        forward_signals(container_pid.clone(), config.tty.then(|| terminal.clone()))?;
    }
    let runtime = Runtime::find(config.runtime.as_deref())?;
    if runtime.name == "crun" {
        hide_hybrid_cgroup2();
    }
    let shift = config.userns.as_ref().and_then(|u| u.shift());
    let lower = LowerCache::new(root)
        .get_or_unpack(&config.layers, shift)
        .context("preparing the image's root filesystem on the host")?;
    let rootfs = mount_overlay(dir, &lower, shift)?;
    parts.rootfs = Some(rootfs.clone());
    let ns = dir.join("netns");
    parts.netns = Some(ns.clone());
    let userns_file = shift.map(|_| dir.join("userns"));
    parts.userns = userns_file.clone();
    match (shift, &userns_file) {
        (Some(s), Some(u)) => netns::create_in_userns(&ns, u, s)?,
        _ => netns::create(&ns)?,
    }
    if shift.is_some() {
        userns_access(root, dir)?;
    }
    if config.network == NetworkMode::Default {
        parts.pasta = Some(spawn_pasta(&ns, dir)?);
    }
    let ids = user::resolve(&rootfs, &config.user)?;
    if let Some(s) = shift {
        user::check_mapped(&ids, s.size)?;
    }
    let namespaces = Namespaces {
        net: &ns,
        user: userns_file.as_deref(),
    };
    let bundle_dir = write_bundle(dir, config, &rootfs, ids, namespaces)?;
    let mut ports = PortForwarder::bind(&config.ports)?;
    update(dir, |s| s.ports = ports.bindings())?;
    ports.start_in_netns(&ns)?;
    parts.runtime = Some(runtime.clone());
    let stdin = matches!(attach, Attach::Terminal { stdin: true });
    let (child, master) = spawn_runtime(root, &runtime, &bundle_dir, config, attach)?;
    if let Some(m) = &master {
        let _ = terminal.set(m.try_clone()?);
    }
    // Raw from the moment the process runs until we return (-i -t).
    let raw = master.as_ref().and_then(|_| raw_stdin(stdin));
    let code = supervise(
        child,
        master,
        stdin,
        dir,
        attached,
        &container_pid,
        &runtime,
    );
    drop(raw);
    let code = code?;
    drop(ports);
    Ok(code)
}

/// crun refuses a "hybrid" cgroup host (v1 controllers plus a cgroup2
/// mount that has controllers of its own, as this project's machines
/// are). Hiding the cgroup2 mount from our private mount namespace makes
/// it a plain v1 host for crun; the host's mounts are untouched.
fn hide_hybrid_cgroup2() {
    let unified = Path::new("/sys/fs/cgroup/unified");
    let controllers = std::fs::read_to_string(unified.join("cgroup.controllers"));
    if controllers.is_ok_and(|c| !c.trim().is_empty()) {
        unmount(unified);
    }
}

/// What a runtime working inside the container's user namespace needs
/// from the host: a path it may traverse to the bundle and the root (the
/// hull root and the container's directory gain o+x, as Docker's 0711
/// /var/lib/docker; a directory above the root without it is an error).
/// (Its sysfs the runtime mounts itself: the network namespace is the
/// user namespace's.)
fn userns_access(root: &Path, dir: &Path) -> Result<(), OciError> {
    use std::os::unix::fs::PermissionsExt;
    for d in dir.ancestors() {
        let meta =
            std::fs::metadata(d).map_err(OciError::io(format!("reading {}", d.display())))?;
        let mode = meta.permissions().mode();
        if mode & 0o001 != 0 {
            continue;
        }
        if !d.starts_with(root) {
            // Not hull's to change: say what to do instead of letting the
            // runtime fail with "permission denied" on some later path.
            return Err(OciError::NotSearchable(d.to_path_buf()));
        }
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode & 0o7777 | 0o001))
            .map_err(OciError::io(format!("chmod o+x {}", d.display())))?;
    }
    Ok(())
}

/// `dir/rootfs`: the lower directory under this container's upper and
/// work directories (kept across restarts until `rm`), owned by the
/// container's root when it has a user namespace (the merged "/" is the
/// upper directory's). `nodev`: device nodes a layer carried open nothing.
fn mount_overlay(
    dir: &Path,
    lower: &Path,
    shift: Option<agent::unpack::IdShift>,
) -> Result<PathBuf, OciError> {
    let rootfs = dir.join("rootfs");
    for d in ["upper", "work", "rootfs"] {
        std::fs::create_dir_all(dir.join(d)).map_err(OciError::io(format!("creating {d}")))?;
    }
    if let Some(s) = shift {
        for d in ["upper", "work"] {
            std::os::unix::fs::chown(dir.join(d), Some(s.uid), Some(s.gid))
                .map_err(OciError::io(format!("chown {d}")))?;
        }
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        dir.join("upper").display(),
        dir.join("work").display()
    );
    let c = |s: &str| std::ffi::CString::new(s).map_err(std::io::Error::other);
    let mount = || -> std::io::Result<()> {
        let (src, target, fstype, data) = (
            c("overlay")?,
            c(&rootfs.to_string_lossy())?,
            c("overlay")?,
            c(&opts)?,
        );
        // SAFETY: mount(2) with valid NUL-terminated strings.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                libc::MS_NODEV,
                data.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    mount().map_err(OciError::io("mounting the container's overlay"))?;
    Ok(rootfs)
}

/// pasta attached to the container's namespace: outbound TCP/UDP/ICMP
/// through the host's stack, the host's addresses and routes copied in,
/// no inbound ports (published ports go through hull's proxy).
fn spawn_pasta(ns: &Path, dir: &Path) -> Result<Child, OciError> {
    use std::os::unix::process::CommandExt;
    let log = std::fs::File::create(dir.join("pasta.log")).map_err(OciError::io("pasta log"))?;
    let mut cmd = Command::new("pasta");
    // As root pasta would drop to nobody and then be unable to enter the
    // namespace (it belongs to the host's user namespace): it stays root,
    // unlike the VM mode's passt. See docs/vm-vs-container.md.
    cmd.args([
        "--config-net",
        "--foreground",
        "--quiet",
        "--runas",
        "0",
        "--netns",
    ])
    .arg(ns)
    .args(["-t", "none", "-u", "none", "-T", "none", "-U", "none"])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(log);
    // SAFETY: prctl is async-signal-safe; pasta dies with its monitor.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(OciError::io("starting pasta (Debian package passt)"))?;
    // pasta sets up the namespace's interface before it serves: wait for
    // a default route so the process never starts without its network.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) && !has_default_route(ns) {
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(child)
}

/// Whether the namespace bound at `ns` has an interface besides `lo`.
fn has_default_route(ns: &Path) -> bool {
    let ns = ns.to_path_buf();
    std::thread::spawn(move || {
        let Ok(f) = std::fs::File::open(&ns) else {
            return false;
        };
        // SAFETY: setns(2) of this short-lived thread only.
        if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) } != 0 {
            return false;
        }
        std::fs::read_to_string("/proc/thread-self/net/route").is_ok_and(|r| {
            r.lines()
                .skip(1)
                .any(|l| l.split('\t').nth(1) == Some("00000000"))
        })
    })
    .join()
    .unwrap_or(false)
}

/// The namespaces hull made for the container, bound on these files.
struct Namespaces<'a> {
    net: &'a Path,
    /// With a user namespace: the network namespace is its.
    user: Option<&'a Path>,
}

/// Writes `dir/bundle/config.json` and the container's /etc files.
fn write_bundle(
    dir: &Path,
    config: &ContainerConfig,
    rootfs: &Path,
    ids: user::Ids,
    ns: Namespaces<'_>,
) -> anyhow::Result<PathBuf> {
    let shift = config.userns.as_ref().and_then(|u| u.shift());
    let bundle_dir = dir.join("bundle");
    std::fs::create_dir_all(&bundle_dir)?;
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n",
        config.hostname
    );
    let files = [
        ("hosts", hosts, "/etc/hosts"),
        (
            "hostname",
            format!("{}\n", config.hostname),
            "/etc/hostname",
        ),
        (
            "resolv.conf",
            std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            "/etc/resolv.conf",
        ),
    ];
    let mut etc_files = Vec::new();
    for (name, text, target) in files {
        let p = bundle_dir.join(name);
        std::fs::write(&p, text)?;
        if let Some(s) = shift {
            // Container root's, as in Docker: it may edit its /etc/hosts.
            std::os::unix::fs::chown(&p, Some(s.uid), Some(s.gid))?;
        }
        etc_files.push((p, target));
    }
    let spec = bundle::spec(&BundleInput {
        config,
        rootfs,
        ids,
        netns: ns.net,
        etc_files,
        limits: limits_allowed(),
        userns: shift,
        userns_file: ns.user,
    })?;
    let tmp = bundle_dir.join(".config.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&spec)?)?;
    std::fs::rename(&tmp, bundle_dir.join("config.json"))?;
    Ok(bundle_dir)
}

/// Whether the runtime can put the container in a memory and cpu cgroup
/// of its own: a writable memory controller, v2 or v1.
fn limits_allowed() -> bool {
    let writable = |p: &str| {
        let c = std::ffi::CString::new(p).unwrap_or_default();
        // SAFETY: access(2) reads a valid path.
        unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
    };
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"));
    (v2 && writable("/sys/fs/cgroup"))
        || (writable("/sys/fs/cgroup/memory") && writable("/sys/fs/cgroup/cpu"))
}

fn spawn_runtime(
    root: &Path,
    runtime: &Runtime,
    bundle_dir: &Path,
    config: &ContainerConfig,
    attach: Attach,
) -> anyhow::Result<(Child, Option<std::fs::File>)> {
    let stdin = match attach {
        Attach::Terminal { stdin: true } => Stdio::piped(),
        _ => Stdio::null(),
    };
    let attached = matches!(attach, Attach::Terminal { .. });
    let _ = std::fs::remove_file(bundle_dir.join("container.pid"));
    let mut cmd = runtime.command(root);
    // The runtime's own errors to a file, apart from the container's
    // stderr: reported as hull's one error line, never mixed with output.
    cmd.arg("--log").arg(bundle_dir.join("runtime.log"));
    let _ = std::fs::remove_file(bundle_dir.join("runtime.log"));
    cmd.arg("run")
        .arg("--bundle")
        .arg(bundle_dir)
        .arg("--pid-file")
        .arg(bundle_dir.join("container.pid"))
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let size = crate::container::terminal::size_source()
        .filter(|_| attached)
        .and_then(crate::container::terminal::window_size);
    let terminal = match config.tty {
        true => Some(Terminal::prepare(
            &mut cmd, runtime, root, &config.id, size,
        )?),
        false => None,
    };
    cmd.arg(&config.id);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", runtime.path.display()))?;
    let master = match terminal {
        Some(t) => t.master(&mut child, size)?,
        None => None,
    };
    Ok((child, master))
}

/// Where a container's terminal comes from with `-t` (src/oci/tty.rs says
/// why it differs between the runtimes).
enum Terminal {
    /// The runtime sends the container's PTY master on this socket.
    Handed(super::tty::ConsoleSocket),
    /// The runtime runs on this PTY of hull's and copies to it.
    Relayed(super::tty::Pty),
}

impl Terminal {
    /// Sets up `cmd` (a `run` of `runtime` for container `id`,
    /// before its ID argument) to give the terminal to hull.
    fn prepare(
        cmd: &mut Command,
        runtime: &Runtime,
        root: &Path,
        id: &str,
        size: Option<WindowSize>,
    ) -> anyhow::Result<Self> {
        Ok(if runtime.name == "crun" {
            let socket = super::tty::ConsoleSocket::bind(console_socket_path(root, id))?;
            cmd.arg("--console-socket").arg(socket.path());
            // -i goes to the terminal: hull copies its stdin there.
            cmd.stdin(Stdio::null());
            Terminal::Handed(socket)
        } else {
            let pty = super::tty::open(size)?;
            pty.attach(cmd)?;
            Terminal::Relayed(pty)
        })
    }

    /// The master side, once `runtime` (spawned) has it; `None` if the
    /// runtime ended before handing it over (its log says why).
    fn master(
        self,
        runtime: &mut Child,
        size: Option<WindowSize>,
    ) -> anyhow::Result<Option<std::fs::File>> {
        match self {
            // Our copy of the slave goes now: reads of the master end
            // (EIO) once the runtime and the container have closed theirs.
            Terminal::Relayed(pty) => Ok(Some(pty.close_slave())),
            Terminal::Handed(socket) => {
                let ended = || runtime.try_wait().map_or(true, |s| s.is_some());
                let master = socket
                    .receive(ended)
                    .context("receiving the container's terminal from the runtime")?;
                if let (Some(m), Some(size)) = (&master, size) {
                    let _ = super::tty::set_size(m, size);
                }
                Ok(master)
            }
        }
    }
}

/// The console socket of container `id`: in `run/` beside its other
/// sockets (a short path: socket paths are limited to 107 bytes), named by
/// its short ID, so that `hull rm` and `hull system check` know it.
fn console_socket_path(root: &Path, id: &str) -> PathBuf {
    root.join("run")
        .join(format!("{}.console", &id[..12.min(id.len())]))
}

/// Copies the runtime's stdio, records the container's PID once the
/// runtime wrote it, and waits; returns the container's exit code.
fn supervise(
    mut child: Child,
    master: Option<std::fs::File>,
    stdin: bool,
    dir: &Path,
    attached: bool,
    container_pid: &AtomicU32,
    runtime: &Runtime,
) -> anyhow::Result<i32> {
    let log = logs::open(dir)?;
    let out = child.stdout.take().map(|o| {
        let w = LogWriter::new(log.clone(), "stdout", attached.then(std::io::stdout));
        copy_thread(o, w)
    });
    let err = child.stderr.take().map(|e| {
        let w = LogWriter::new(log.clone(), "stderr", attached.then(std::io::stderr));
        copy_thread(e, w)
    });
    if let Some(mut i) = child.stdin.take() {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin(), &mut i);
        });
    }
    // -t attached: the container's terminal gets our size once it runs.
    let sized = master
        .as_ref()
        .filter(|_| attached)
        .map(|m| m.try_clone())
        .transpose()?;
    // -t: everything comes through the terminal, as one stream (stdout).
    let pty_out = match master {
        Some(m) => {
            if stdin {
                let mut to = m.try_clone()?;
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut std::io::stdin(), &mut to);
                });
            }
            let w = LogWriter::new(log.clone(), "stdout", attached.then(std::io::stdout));
            Some(copy_thread(m, w))
        }
        None => None,
    };
    let pid_file = dir.join("bundle").join("container.pid");
    let status = loop {
        if container_pid.load(Ordering::Acquire) == 0 {
            if let Some(pid) = read_pid(&pid_file) {
                container_pid.store(pid, Ordering::Release);
                let _ = update(dir, |s| s.process_id = Some(pid));
                if let Some(m) = &sized {
                    resize(m, pid);
                }
            }
        }
        if let Some(st) = child.try_wait()? {
            break st;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    for t in [out, err, pty_out].into_iter().flatten() {
        let _ = t.join();
    }
    let code = exit_code(status);
    if code != 0 {
        if let Some(e) = runtime_error(&dir.join("bundle").join("runtime.log"), runtime) {
            if !attached {
                return Err(e);
            }
            // The runtime printed its message on the container's stderr,
            // which is ours: one line is enough. The state records it, and
            // the exit code says what kind of failure it was (127/126/125).
            let code = crate::guest::agent_client::exec_exit_code(&e).map_or(125, i32::from);
            let _ = update(dir, |s| s.error = Some(format!("{e:#}")));
            return Ok(code);
        }
    }
    Ok(code)
}

/// The runtime's own failure, from its log: a program that could not be
/// executed is reported as the VM mode reports it (exit 127 or 126),
/// anything else as the runtime's error (125).
fn runtime_error(log: &Path, runtime: &Runtime) -> Option<anyhow::Error> {
    use crate::guest::agent_client::AgentError;
    use agent_protocol::protocol::ExecFailure;
    let text = std::fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .rev()
        .find(|l| runtime.name != "runc" || l.contains("level=error"))?;
    // runc's logfmt: the message is in msg="...".
    let msg = line
        .split_once("msg=\"")
        .map_or(line, |(_, m)| m.trim_end_matches('"'))
        .trim()
        .to_string();
    let lower = msg.to_ascii_lowercase();
    let failure = if lower.contains("executable file") || lower.contains("no such file") {
        Some(ExecFailure::NotFound)
    } else if lower.contains("permission denied")
        || lower.contains("exec format")
        // crun, for a directory or a file it may not open.
        || lower.contains("open executable")
    {
        Some(ExecFailure::CannotInvoke)
    } else {
        None
    };
    Some(match failure {
        Some(f) => AgentError::Exec(f, msg).into(),
        None => OciError::Runtime(runtime.name.clone(), msg).into(),
    })
}

/// The runtime's exit status as Docker reports the container's: its code,
/// or 128+signal.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

/// Raw mode for our stdin when it is a terminal the container's PTY
/// takes over (`-i -t`, as in the VM mode).
fn raw_stdin(wanted: bool) -> Option<crate::container::terminal::RawMode> {
    use std::io::IsTerminal;
    let stdin = std::io::stdin();
    if !wanted || !stdin.is_terminal() {
        return None;
    }
    crate::container::terminal::RawMode::enable(std::os::fd::AsRawFd::as_raw_fd(&stdin)).ok()
}

fn read_pid(p: &Path) -> Option<u32> {
    std::fs::read_to_string(p)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
}

fn copy_thread<R: Read + Send + 'static, W: Write + Send + 'static>(
    mut r: R,
    mut w: W,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut r, &mut w);
        let _ = w.flush();
    })
}

/// Blocks the forwarded signals in this (single) thread, so every thread
/// made later inherits the mask, and sends each one that arrives to the
/// container's process once its PID is known. With `terminal` (`-t`),
/// SIGWINCH too: our terminal's new size is set on the runtime's PTY
/// (the master hull holds), whose kernel signals the runtime, which
/// resizes the container's own PTY as it does for a shell.
fn forward_signals(
    pid: Arc<AtomicU32>,
    terminal: Option<Arc<OnceLock<std::fs::File>>>,
) -> std::io::Result<()> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t for these calls.
    unsafe { libc::sigemptyset(&mut set) };
    let winch = terminal.as_ref().map(|_| libc::SIGWINCH);
    for sig in FORWARDED.into_iter().chain(winch) {
        // SAFETY: as above, with valid signal numbers.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    // SAFETY: blocking signals in the calling thread with a valid set.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig = 0;
            // SAFETY: sigwait on the set blocked above.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                return;
            }
            if sig == libc::SIGWINCH {
                if let Some(master) = terminal.as_ref().and_then(|t| t.get()) {
                    resize(master, pid.load(Ordering::Acquire));
                }
                continue;
            }
            let p = pid.load(Ordering::Acquire);
            if p != 0 {
                // SAFETY: kill(2) of the container's init, a host PID.
                unsafe { libc::kill(p as i32, sig) };
            }
        })?;
    Ok(())
}

/// Gives the container's terminal our terminal's size: the runtime's PTY
/// (`master`, hull's; runc passes a change on to the container's PTY)
/// and the container's own PTY through its process `pid`'s stdin (crun
/// passes nothing on, and neither runtime sizes it at start).
fn resize(master: &std::fs::File, pid: u32) {
    let size =
        crate::container::terminal::size_source().and_then(crate::container::terminal::window_size);
    let Some(size) = size else {
        return;
    };
    let _ = super::tty::set_size(master, size);
    if pid != 0 {
        if let Ok(tty) = super::tty::open_terminal_of(pid) {
            let _ = super::tty::set_size(&tty, size);
        }
    }
}

/// The container's processes as it sees them (its PIDs and IDs), for
/// `hull top`: its own /proc, which the runtime mounted in its mount
/// namespace, reached through its init process's root. The container
/// cannot swap that mount (no CAP_SYS_ADMIN, and seccomp refuses mount),
/// and what it writes into its processes' names is only text here.
pub fn processes(
    init: u32,
    userns: Option<&super::userns::UserNamespace>,
) -> Result<Vec<agent_protocol::protocol::ProcessInfo>, OciError> {
    let uptime =
        std::fs::read_to_string("/proc/uptime").map_err(OciError::io("reading /proc/uptime"))?;
    let uptime: f64 = uptime
        .split_whitespace()
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or(0.0);
    let proc = PathBuf::from(format!("/proc/{init}/root/proc"));
    let mut procs = agent::procs::list(&proc, uptime, -1);
    // /proc shows IDs as its reader's (host) user namespace maps them.
    if let Some(s) = userns.and_then(|u| u.shift()) {
        for p in &mut procs {
            if (s.uid..s.uid.saturating_add(s.size)).contains(&p.uid) {
                p.uid -= s.uid;
            }
        }
    }
    Ok(procs)
}

/// What `hull exec` runs in a container-mode container.
pub fn exec(
    root: &Path,
    config: &ContainerConfig,
    pid: u32,
    opts: crate::container::engine::ExecOptions,
) -> anyhow::Result<i32> {
    let runtime = Runtime::find(config.runtime.as_deref())?;
    // The container's root as the host sees it through its init process.
    let ids = user::resolve(
        Path::new(&format!("/proc/{pid}/root")),
        opts.user.as_deref().unwrap_or(&config.user),
    )?;
    if let Some(s) = config.userns.as_ref().and_then(|u| u.shift()) {
        user::check_mapped(&ids, s.size)?;
    }
    let mut env = config.env.clone();
    for e in opts.env {
        let key = e.split('=').next().unwrap_or_default().to_string();
        env.retain(|x| x.split('=').next() != Some(key.as_str()));
        env.push(e);
    }
    let process = oci_spec::runtime::ProcessBuilder::default()
        .terminal(opts.tty)
        .args(opts.argv)
        .env(env)
        .cwd(opts.cwd.unwrap_or_else(|| config.cwd.clone()))
        .capabilities(bundle::capabilities()?)
        .user(
            oci_spec::runtime::UserBuilder::default()
                .uid(ids.uid)
                .gid(ids.gid)
                .additional_gids(ids.additional)
                .build()
                .map_err(OciError::Spec)?,
        )
        .build()
        .map_err(OciError::Spec)?;
    let file = tempfile_in(root)?;
    std::fs::write(&file, serde_json::to_vec(&process)?)?;
    let log = file.with_extension("log");
    let mut cmd = runtime.command(root);
    cmd.arg("--log").arg(&log);
    cmd.args(["exec", "--process"]).arg(&file);
    if opts.tty {
        cmd.arg("--tty");
    }
    if !opts.stdin {
        cmd.stdin(Stdio::null());
    }
    let code = if opts.tty && !on_a_terminal() {
        exec_on_our_terminal(cmd, &runtime, root, &config.id, opts.stdin)
    } else {
        // Our terminal (or no -t): the runtime uses our stdio as it is,
        // and passes window size changes on itself.
        cmd.arg(&config.id);
        cmd.status().map(ExecOutcome::from).map_err(Into::into)
    }
    .map(|outcome| match outcome {
        ExecOutcome::Runtime(status) => exec_exit_code(status, &log, &runtime),
        ExecOutcome::Process(code) => code,
    });
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&log);
    code
}

/// How a container-mode `exec` ended: with the runtime's exit (in the
/// foreground, the process's code, or the runtime's if it failed) or
/// with the process's own code (waited for by hull).
enum ExecOutcome {
    Runtime(std::process::ExitStatus),
    Process(i32),
}

impl From<std::process::ExitStatus> for ExecOutcome {
    fn from(status: std::process::ExitStatus) -> Self {
        ExecOutcome::Runtime(status)
    }
}

/// The exit code of an `exec` whose runtime ended with `status`: a
/// program that could not be executed gives 127 or 126, as in the VM mode
/// (the runtime said why on stderr, and in `log`); anything else, the
/// runtime's code (the process's when it ran).
fn exec_exit_code(status: std::process::ExitStatus, log: &Path, runtime: &Runtime) -> i32 {
    let code = exit_code(status);
    if code == 0 {
        return 0;
    }
    runtime_error(log, runtime)
        .and_then(|e| crate::guest::agent_client::exec_exit_code(&e))
        .map_or(code, i32::from)
}

/// Whether our stdin and stdout are both a terminal.
fn on_a_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

/// `exec -t` with stdio that is not a terminal (a pipe, a file): both
/// runtimes refuse to make a terminal then in the foreground (runc opens
/// /dev/tty, crun reads the attributes of its stdin), so hull asks for the
/// container's terminal on a console socket and copies it to stdout (as
/// the VM mode does: `exec -t` output on stdout with CRLF line ends,
/// Docker's). The runtime runs detached, which is what makes runc use the
/// socket: in the foreground runc relays the terminal itself and clears
/// its CRLF translation only after the process may already have written
/// (`\r\r\n` through a second terminal, seen in CI). Detached, the
/// process is left to hull, the reaper of the runtime's orphans, which
/// waits for its exit code.
fn exec_on_our_terminal(
    mut cmd: Command,
    runtime: &Runtime,
    root: &Path,
    id: &str,
    stdin: bool,
) -> anyhow::Result<ExecOutcome> {
    become_subreaper()?;
    let socket = super::tty::ConsoleSocket::bind(console_socket_path(root, id))?;
    let pid_file = tempfile_in(root)?.with_extension("pid");
    cmd.args(["--detach", "--pid-file"]).arg(&pid_file);
    cmd.arg("--console-socket").arg(socket.path()).arg(id);
    // The runtime's own messages to our stderr; -i goes to the terminal.
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", runtime.path.display()))?;
    let ended = || child.try_wait().map_or(true, |s| s.is_some());
    let master = socket
        .receive(ended)
        .context("receiving the container's terminal from the runtime");
    let status = child.wait()?;
    let pid = read_pid(&pid_file);
    let _ = std::fs::remove_file(&pid_file);
    let master = master?;
    if !status.success() {
        // The runtime said why on our stderr, or its child on the
        // terminal (crun: a command not found).
        if let Some(m) = master {
            drain_terminal(m, std::io::stderr());
        }
        return Ok(status.into());
    }
    let (Some(master), Some(pid)) = (master, pid) else {
        anyhow::bail!("{} started no process with a terminal", runtime.name);
    };
    if stdin {
        let mut to = master.try_clone()?;
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin(), &mut to);
        });
    }
    let out = copy_thread(master, std::io::stdout());
    let code = wait_for_orphan(pid)?;
    let _ = out.join();
    Ok(ExecOutcome::Process(code))
}

/// Copies what is already written to the terminal whose master is
/// `master` to `to`, without waiting for more.
fn drain_terminal(master: std::fs::File, mut to: impl Write) {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor we own; no memory is passed.
    unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let mut master = master;
    let mut buf = [0u8; 4096];
    // Ends at EAGAIN (nothing more yet) or EIO (no writer left).
    while let Ok(n @ 1..) = master.read(&mut buf) {
        let _ = to.write_all(&buf[..n]);
    }
}

/// Makes the processes our children leave behind (a detached runtime's
/// container process) ours to wait for, rather than the host init's.
fn become_subreaper() -> std::io::Result<()> {
    // SAFETY: prctl with an integer argument; no memory is passed.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The exit code of `pid`, a process reparented to us (see
/// [`become_subreaper`]).
fn wait_for_orphan(pid: u32) -> anyhow::Result<i32> {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status into a valid integer.
        let rc = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
        if rc == pid as i32 {
            return Ok(exit_code(std::process::ExitStatus::from_raw(status)));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).with_context(|| format!("waiting for process {pid}"));
        }
    }
}

fn tempfile_in(root: &Path) -> std::io::Result<PathBuf> {
    let d = root.join("oci").join("tmp");
    std::fs::create_dir_all(&d)?;
    Ok(d.join(format!("process-{}.json", std::process::id())))
}

/// Ends a container-mode container whose monitor is being killed: its
/// process first (it is not the monitor's to take down with it), then
/// whatever the runtime still holds.
pub fn force_end(root: &Path, config: &ContainerConfig, pid: Option<u32>) {
    if let Some(p) = pid {
        // SAFETY: kill(2) of the container's recorded init PID.
        unsafe { libc::kill(p as i32, libc::SIGKILL) };
    }
    if let Ok(rt) = Runtime::find(config.runtime.as_deref()) {
        rt.delete(root, &config.id);
    }
}
