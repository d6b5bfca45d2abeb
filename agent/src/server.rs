//! Serves the control protocol and stdio stream attachments.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use agent::protocol::{self, ExecSpec, PreAttached, Request, Response, StdioKind};

use crate::preattach::PreAttachments;
use crate::process::{self, ChildIo, Reaper, SpawnError};
use crate::pty::{self, Pty};
use crate::vsock::VsockListener;

/// A process from `Create` until it has been waited for.
struct Proc {
    spec: ExecSpec,
    /// Attached streams, by [`StdioKind`]: stdin, stdout, stderr, tty.
    stdio: [Option<OwnedFd>; 4],
    pid: Option<i32>,
    /// The PTY master of a process started with a terminal (for resizes).
    pty: Option<Arc<File>>,
}

/// State shared by all connections.
pub struct Agent {
    procs: Mutex<HashMap<u32, Proc>>,
    next_id: Mutex<u32>,
    reaper: Arc<Reaper>,
    /// Streams attached ahead of their `Run`.
    preattached: PreAttachments,
    /// Set by a `Shutdown` request; the main thread powers off.
    pub shutdown: Mutex<Option<std::sync::mpsc::Sender<()>>>,
}

impl Agent {
    /// An agent with no processes.
    pub fn new(reaper: Arc<Reaper>, shutdown: std::sync::mpsc::Sender<()>) -> Self {
        Self {
            procs: Mutex::new(HashMap::new()),
            next_id: Mutex::new(1),
            reaper,
            preattached: PreAttachments::default(),
            shutdown: Mutex::new(Some(shutdown)),
        }
    }

    fn procs(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Proc>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers one request (timed on the console by a traced agent).
    fn handle(&self, req: Request) -> Response {
        let name = option_env!("HULL_AGENT_TRACE").map(|_| request_name(&req));
        let t = std::time::Instant::now();
        let answer = self.answer(req);
        trace!("{} {:?}", name.unwrap_or_default(), t.elapsed());
        answer
    }

    /// Answers one request; each kind has its own method or function.
    // Over 80 lines on purpose: one dispatch arm per request kind, each a
    // call into its method or function; splitting the match would only
    // scatter the protocol's list of requests.
    fn answer(&self, req: Request) -> Response {
        match req {
            Request::Hello { .. } => error("hello sent twice"),
            Request::Mount {
                source,
                target,
                fstype,
                read_only,
                options,
                within,
            } => answer(
                mount(
                    &source,
                    &target,
                    within.as_deref(),
                    &fstype,
                    read_only,
                    &options,
                ),
                || format!("mount {source} on {target}"),
            ),
            Request::Mkdir { path, within } => {
                answer(mkdir(&path, within.as_deref()), || format!("mkdir {path}"))
            }
            Request::SetHostname { name } => {
                answer(set_hostname(&name), || format!("sethostname {name}"))
            }
            Request::WriteFile {
                path,
                content,
                mode,
                within,
                in_place,
            } => {
                let written = match (in_place, within) {
                    (true, None) => write_in_place(&path, &content, mode),
                    (true, Some(_)) => Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "in place only for the agent's own paths",
                    )),
                    (false, within) => write_file(&path, within.as_deref(), &content, mode),
                };
                answer(written, || format!("write {path}"))
            }
            Request::Create(spec) => self.create(spec),
            Request::Run { spec, streams } => self.run(spec, streams),
            Request::Start { id } => self.start(id),
            Request::ResizeTty { id, size } => self.resize_tty(id, size),
            Request::Wait { id } => self.wait(id),
            Request::Signal { id, signal } => self.signal(id, signal),
            Request::Batch(requests) => self.batch(requests),
            Request::Resumed {
                unix_nanos,
                entropy,
            } => answer(crate::resume::take_identity(unix_nanos, &entropy), || {
                "resume".into()
            }),
            Request::RefreshDisk { device, sectors } => {
                answer(crate::resume::refresh_disk(&device, sectors), || {
                    format!("refresh {device}")
                })
            }
            Request::ConfigureNetwork {
                interface,
                mac,
                address,
                prefix_len,
                gateway,
            } => configure_network(interface, &mac, address, prefix_len, gateway),
            Request::ListProcesses => Response::Processes {
                // Without the agent (PID 1): it is the VM, not the container.
                processes: agent::procs::list(
                    std::path::Path::new("/proc"),
                    crate::mounts::uptime().unwrap_or(0.0),
                    1,
                ),
            },
            Request::ReadFiles { root, max_bytes } => answer(
                crate::warm::read_tree(std::path::Path::new(&root), max_bytes).map(|_| ()),
                || format!("read files under {root}"),
            ),
            Request::KillAll => self.kill_all(),
            req @ (Request::WriteLayer { .. } | Request::CopyOut { .. }) => layer_request(req),
            req @ (Request::Diff { .. } | Request::ApplyTar { .. } | Request::Populate { .. }) => {
                container_fs_request(req)
            }
            // Only on a control connection, which tracks what it froze.
            Request::Freeze { .. } | Request::Thaw { .. } => {
                error("freeze and thaw are not allowed in a batch")
            }
            // Powering off waits for the answer to reach the host: see
            // `serve_control`.
            Request::Shutdown => Response::Ok,
        }
    }

    /// `Create`: registers a process to be started once its streams are
    /// attached.
    fn create(&self, spec: ExecSpec) -> Response {
        let mut next = self.next_id.lock().unwrap_or_else(|p| p.into_inner());
        let id = *next;
        *next += 1;
        self.procs().insert(
            id,
            Proc {
                spec,
                stdio: [None, None, None, None],
                pid: None,
                pty: None,
            },
        );
        Response::Created { id }
    }

    /// `Run`: `Create` with the streams attached ahead, then `Start`.
    fn run(&self, spec: ExecSpec, streams: PreAttached) -> Response {
        let terminal = spec.tty.is_some();
        let fits = if terminal {
            streams.kinds == [StdioKind::Tty]
        } else {
            !streams.kinds.contains(&StdioKind::Tty)
        };
        if !fits {
            return error("a process has a tty stream exactly when it has a terminal");
        }
        let stdio = match self
            .preattached
            .take(streams.key, &streams.kinds, ATTACH_LINE_TIMEOUT)
        {
            Ok(stdio) => stdio,
            Err(e) => return error(e),
        };
        let Response::Created { id } = self.create(spec) else {
            return error("process not created");
        };
        if let Some(p) = self.procs().get_mut(&id) {
            p.stdio = stdio;
        }
        match self.start(id) {
            Response::Started { pid } => Response::Running { id, pid },
            other => other,
        }
    }

    /// `Start`: spawns a created process on a PTY or on its streams; a
    /// process that fails to start is forgotten.
    fn start(&self, id: u32) -> Response {
        let mut procs = self.procs();
        let Some(p) = procs.get_mut(&id) else {
            return error(format!("no process {id}"));
        };
        if p.pid.is_some() {
            return error(format!("process {id} already started"));
        }
        let started = match p.spec.tty {
            Some(size) => self.start_on_terminal(p, size),
            None => self.start_on_streams(p),
        };
        match started {
            Ok(pid) => Response::Started { pid },
            Err(e) => {
                procs.remove(&id);
                match e.exec {
                    Some(failure) => Response::StartFailed {
                        failure,
                        message: e.error.to_string(),
                    },
                    None => error(e.error.to_string()),
                }
            }
        }
    }

    fn start_on_terminal(
        &self,
        p: &mut Proc,
        size: protocol::WindowSize,
    ) -> Result<i32, SpawnError> {
        let pty = Pty::open(p.spec.root.as_deref(), size)
            .map_err(|e| std::io::Error::new(e.kind(), format!("allocate a terminal: {e}")))?;
        let pid = process::spawn(&p.spec, ChildIo::Terminal(&pty.slave), &self.reaper)?;
        // Our slave copy is closed: the master reads EIO once the process
        // side is gone.
        let Pty { master, slave } = pty;
        drop(slave);
        let master = Arc::new(master);
        let stream = p.stdio[StdioKind::Tty as usize]
            .take()
            .map(UnixStream::from);
        pty::relay(master.clone(), stream);
        p.pty = Some(master);
        p.pid = Some(pid);
        Ok(pid)
    }

    fn start_on_streams(&self, p: &mut Proc) -> Result<i32, SpawnError> {
        let [a, b, c, _] = &p.stdio;
        let io = ChildIo::Streams([a.as_ref(), b.as_ref(), c.as_ref()]);
        let pid = process::spawn(&p.spec, io, &self.reaper)?;
        // The child holds the streams now; our copies would keep them open
        // after it exits.
        p.stdio = [None, None, None, None];
        p.pid = Some(pid);
        Ok(pid)
    }

    /// `ResizeTty`: `TIOCSWINSZ` on the process's PTY master.
    fn resize_tty(&self, id: u32, size: protocol::WindowSize) -> Response {
        let master = match self.procs().get(&id) {
            Some(Proc { pty: Some(m), .. }) => m.clone(),
            _ => return error(format!("no running process {id} with a terminal")),
        };
        answer(pty::set_size(master.as_raw_fd(), size), || {
            format!("resize terminal of process {id}")
        })
    }

    /// `Wait`: blocks until the process exits, then forgets it.
    fn wait(&self, id: u32) -> Response {
        let pid = match self.procs().get(&id) {
            Some(Proc { pid: Some(pid), .. }) => *pid,
            Some(_) => return error(format!("process {id} not started")),
            None => return error(format!("no process {id}")),
        };
        let (code, signal) = self.reaper.wait(pid);
        self.procs().remove(&id);
        Response::Exited { code, signal }
    }

    /// `Signal`: kill(2) of a started process.
    fn signal(&self, id: u32, signal: i32) -> Response {
        let pid = match self.procs().get(&id) {
            Some(Proc { pid: Some(pid), .. }) => *pid,
            _ => return error(format!("no running process {id}")),
        };
        // SAFETY: kill(2) with a pid we started and a caller-chosen signal.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return error(format!(
                "signal {signal}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Response::Ok
    }

    /// `Batch`: the requests in order, stopping at the first that is not
    /// answered `Ok`; the last one's answer is the batch's (a `Run` there
    /// answers `Running`).
    fn batch(&self, requests: Vec<Request>) -> Response {
        let count = requests.len();
        for (i, req) in requests.into_iter().enumerate() {
            if matches!(req, Request::Batch(_) | Request::Shutdown) {
                return error(format!("request {} cannot be batched", i + 1));
            }
            match self.handle(req) {
                Response::Ok => {}
                Response::Error { message } => return error(message),
                last if i + 1 == count => return last,
                other => {
                    return error(format!(
                        "batched request {} answered {other:?}, not Ok",
                        i + 1
                    ))
                }
            }
        }
        Response::Ok
    }

    /// `KillAll`: SIGKILL to every process but the agent.
    fn kill_all(&self) -> Response {
        // kill(-1) outside PID 1 would reach every process of the machine
        // the agent's user may signal.
        if std::process::id() != 1 {
            return error("KillAll is only done by the guest's PID 1");
        }
        // SIGKILL cannot be refused, so only a process stuck in the kernel
        // outlasts the patience; the host then stops waiting for its
        // streams on its own.
        self.reaper.kill_all(std::time::Duration::from_secs(5));
        Response::Ok
    }

    /// Tells the main thread to power off (once).
    fn power_off(&self) {
        if let Some(tx) = self
            .shutdown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = tx.send(());
        }
    }

    /// Serves one control connection until the host closes it.
    pub fn serve_control(&self, mut conn: UnixStream) {
        trace!("control connection served");
        match protocol::recv::<Request>(&mut conn) {
            Ok(Request::Hello { version }) if protocol::compatible(protocol::VERSION, &version) => {
                let hello = Response::Hello {
                    version: protocol::VERSION.to_string(),
                };
                if protocol::send(&mut conn, &hello).is_err() {
                    return;
                }
            }
            Ok(Request::Hello { version }) => {
                let msg = format!(
                    "protocol version mismatch: host speaks {version}, agent speaks {}",
                    protocol::VERSION
                );
                let _ = protocol::send(&mut conn, &error(msg));
                return;
            }
            _ => {
                let _ = protocol::send(&mut conn, &error("expected hello"));
                return;
            }
        }
        // What this connection froze: thawed when it closes, however it
        // ends (a host process killed mid-commit must not leave the
        // container's writes blocked).
        let mut frozen = Frozen::default();
        while let Ok(req) = protocol::recv::<Request>(&mut conn) {
            let shutdown = req == Request::Shutdown;
            let answer = match req {
                Request::Freeze { path } => frozen.freeze(path),
                Request::Thaw { path } => frozen.thaw(&path),
                req => self.handle(req),
            };
            let sent = protocol::send(&mut conn, &answer);
            if shutdown {
                // Written is not delivered: the guest's vsock driver sends
                // later, and a reset in between would leave the host with
                // a closed connection instead of its answer. The host
                // closes once it has the answer; wait for that (briefly:
                // a host that went away must not keep the VM up).
                if sent.is_ok() {
                    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                    let _ = std::io::Read::read(&mut conn, &mut [0u8; 1]);
                }
                self.power_off();
                return;
            }
            if sent.is_err() {
                return;
            }
        }
    }

    /// Handles one `ATTACH <id> <kind>` stream.
    pub fn serve_attach(&self, mut conn: UnixStream) {
        let Some(line) = protocol::read_line(&mut conn) else {
            return;
        };
        let mut words = line.split_whitespace();
        let (verb, id, kind) = (words.next(), words.next(), words.next());
        let kind = kind.and_then(StdioKind::from_word);
        // The process reads this socket as its stdin: no timeout there.
        if conn.set_read_timeout(None).is_err() {
            return;
        }
        let (id, kind) = match (verb, id, kind) {
            (Some("ATTACH"), Some(id), Some(kind)) => match id.parse::<u32>() {
                Ok(id) => (id, kind),
                Err(_) => return drop(conn.write_all(b"ERR bad attach line\n")),
            },
            (Some("PREATTACH"), Some(key), Some(kind)) => match key.parse::<u64>() {
                Ok(key) => return self.preattach(conn, key, kind),
                Err(_) => return drop(conn.write_all(b"ERR bad attach line\n")),
            },
            _ => return drop(conn.write_all(b"ERR bad attach line\n")),
        };
        // Answer before handing the socket over, so the "OK" is not the
        // first thing the process's peer reads as data.
        let attached = {
            let mut procs = self.procs();
            match procs.get_mut(&id) {
                // A terminal process has one `tty` stream, others the three
                // stdio streams.
                Some(p) if p.pid.is_none() && (kind == StdioKind::Tty) == p.spec.tty.is_some() => {
                    match conn.try_clone() {
                        Ok(c) => {
                            p.stdio[kind as usize] = Some(OwnedFd::from(c));
                            true
                        }
                        Err(_) => false,
                    }
                }
                _ => false,
            }
        };
        let _ = conn.write_all(if attached {
            b"OK\n"
        } else {
            b"ERR no such process\n"
        });
    }

    /// Holds a `PREATTACH` stream for its `Run`, answering `OK` first (the
    /// process may write to it as soon as it is held).
    fn preattach(&self, mut conn: UnixStream, key: u64, kind: StdioKind) {
        let Ok(fd) = conn.try_clone().map(OwnedFd::from) else {
            return;
        };
        let held = self
            .preattached
            .add(key, kind, fd, || conn.write_all(b"OK\n").is_ok());
        if !held {
            let _ = conn.write_all(b"ERR stream attached twice\n");
        }
    }
}

/// A request's kind and the start of its fields, for a trace line.
fn request_name(req: &Request) -> String {
    format!("{req:?}").chars().take(48).collect()
}

/// `Ok`, or an error naming what failed (`what`) and why.
/// `ConfigureNetwork`: the interface's MAC, address and default route
/// (when it has the gateway).
fn configure_network(
    interface: String,
    mac: &str,
    address: std::net::Ipv4Addr,
    prefix_len: u8,
    gateway: Option<std::net::Ipv4Addr>,
) -> Response {
    let Some(mac) = crate::net::parse_mac(mac) else {
        return error(format!("bad MAC address {mac:?}"));
    };
    let link = crate::net::LinkConfig {
        interface,
        mac,
        address,
        prefix_len,
        gateway,
    };
    match crate::net::configure(&link) {
        Ok(()) => Response::Ok,
        Err(e) => error(format!("network: {e}: {}", source_of(&e))),
    }
}

/// `Diff`, `ApplyTar` and `Populate`: a container's file system read or
/// written for `hull diff`, `cp` and a fresh volume.
fn container_fs_request(req: Request) -> Response {
    use agent::container_fs::{apply_tar, diff_lines, populate};
    match req {
        Request::Diff {
            upper,
            lower,
            exclude,
        } => match diff_lines(&upper, &lower, &exclude) {
            Ok(lines) => Response::Changes { lines },
            Err(e) => error(format!("diff of {upper}: {e}")),
        },
        Request::ApplyTar {
            root,
            dest,
            input,
            len,
        } => answer(apply_tar(&root, &dest, input, len), || {
            format!("copying into {dest}")
        }),
        Request::Populate { root, path, to } => answer(populate(&root, &path, &to), || {
            format!("filling the volume at {path}")
        }),
        _ => error("not a container file system request"),
    }
}

/// File systems frozen by one control connection.
#[derive(Default)]
struct Frozen(Vec<String>);

impl Frozen {
    fn freeze(&mut self, path: String) -> Response {
        if self.0.contains(&path) {
            return Response::Ok;
        }
        match agent::container_fs::freeze(&path) {
            Ok(()) => {
                self.0.push(path);
                Response::Ok
            }
            Err(e) => error(e.to_string()),
        }
    }

    fn thaw(&mut self, path: &str) -> Response {
        let Some(i) = self.0.iter().position(|p| p == path) else {
            return error(format!("{path} is not frozen by this connection"));
        };
        self.0.remove(i);
        answer(agent::container_fs::thaw(path), || format!("thaw {path}"))
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for path in self.0.drain(..) {
            if let Err(e) = agent::container_fs::thaw(&path) {
                eprintln!("hull-agent: {e}");
            }
        }
    }
}

/// `WriteLayer` and `CopyOut` (`hull build`): a layer tar into a memory
/// window, answered with its length.
fn layer_request(req: Request) -> Response {
    let written = match req {
        Request::WriteLayer {
            upper,
            exclude,
            output,
            offset,
        } => agent::layer_out::write_to_window(&upper, &exclude, output, offset)
            .map_err(|e| format!("writing the layer of {upper}: {e}")),
        Request::CopyOut {
            root,
            sources,
            owner,
            mode,
            output,
            offset,
            one_file_system,
        } => {
            let sources: Vec<agent::layer_out::CopySource> = sources
                .into_iter()
                .map(|s| agent::layer_out::CopySource {
                    path: s.path,
                    dest: s.dest,
                    dest_is_dir: s.dest_is_dir,
                })
                .collect();
            let opts = agent::layer_out::LayerOptions {
                owner,
                mode,
                one_file_system,
                ..Default::default()
            };
            agent::layer_out::copy_to_window(&root, &sources, &opts, output, offset)
                .map_err(|e| e.to_string())
        }
        _ => Err("not a layer request".to_string()),
    };
    match written {
        Ok(bytes) => Response::Written { bytes },
        Err(message) => error(message),
    }
}

fn answer<E: std::fmt::Display>(result: Result<(), E>, what: impl FnOnce() -> String) -> Response {
    match result {
        Ok(()) => Response::Ok,
        Err(e) => error(format!("{}: {e}", what())),
    }
}

fn set_hostname(name: &str) -> std::io::Result<()> {
    // SAFETY: sethostname reads `name.len()` bytes from a valid buffer.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn error(message: impl Into<String>) -> Response {
    Response::Error {
        message: message.into(),
    }
}

fn mkdir(path: &str, within: Option<&str>) -> std::io::Result<()> {
    match within {
        Some(root) => agent::in_root::mkdir(root, path).map(drop),
        None => std::fs::create_dir_all(path),
    }
}

fn write_file(path: &str, within: Option<&str>, content: &str, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(root) = within {
        return agent::in_root::write_file(root, path, content.as_bytes(), mode);
    }
    let path = std::path::Path::new(path);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // Replace, never write through: the path may be a symlink an image put
    // there (Debian's /etc/resolv.conf often is).
    let _ = std::fs::remove_file(path);
    std::fs::write(path, content)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Writes `content` into the file at `path` (made if missing, truncated
/// if not): its inode stays, so a bind mount of it shows the new content.
fn write_in_place(path: &str, content: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(parent) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.write_all(content.as_bytes())?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}

/// Mounts `source` on `target`, made first if missing. Inside a
/// container root (`within`) the mount point is resolved there and held
/// open, so the image's symlinks cannot move it out of the root.
fn mount(
    source: &str,
    target: &str,
    within: Option<&str>,
    fstype: &str,
    read_only: bool,
    options: &str,
) -> std::io::Result<()> {
    let file_bind = fstype == "bind" && std::path::Path::new(source).is_file();
    let held = match within {
        Some(root) if file_bind => Some(agent::in_root::mount_file(root, target)?),
        Some(root) if fstype != "remount" => Some(agent::in_root::mkdir(root, target)?),
        _ => None,
    };
    match &held {
        Some(fd) => mount_at(
            source,
            &agent::in_root::fd_path(fd),
            fstype,
            read_only,
            options,
        ),
        None => {
            make_mount_point(target, file_bind, fstype)?;
            mount_at(source, target, fstype, read_only, options)
        }
    }
}

/// A mount point of the agent's own (not in a container root).
fn make_mount_point(target: &str, file_bind: bool, fstype: &str) -> std::io::Result<()> {
    if file_bind {
        // A file mounted over a file: the mount point must be a regular
        // file; a symlink is replaced (mount would follow it).
        match std::fs::symlink_metadata(target) {
            Ok(m) if m.is_file() => {}
            Ok(m) if m.file_type().is_symlink() => {
                std::fs::remove_file(target)?;
                std::fs::File::create(target)?;
            }
            Ok(_) => return Err(std::io::Error::other("mount point is not a file")),
            Err(_) => {
                if let Some(parent) = std::path::Path::new(target).parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::File::create(target)?;
            }
        }
    } else if fstype != "remount" {
        std::fs::create_dir_all(target)?;
    }
    Ok(())
}

/// `mount(2)` of `source` on an existing `target`.
fn mount_at(
    source: &str,
    target: &str,
    fstype: &str,
    read_only: bool,
    options: &str,
) -> std::io::Result<()> {
    let c = |s: &str| {
        CString::new(s)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL byte"))
    };
    let (src, tgt, opts) = (c(source)?, c(target)?, c(options)?);
    let mut flags = if read_only { libc::MS_RDONLY } else { 0 };
    let fs = match fstype {
        "bind" => {
            flags |= libc::MS_BIND | libc::MS_REC;
            c("none")?
        }
        "remount" => {
            flags |= libc::MS_REMOUNT;
            c("none")?
        }
        other => c(other)?,
    };
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fs.as_ptr(),
            flags,
            opts.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Which service a listener offers.
#[derive(Debug, Clone, Copy)]
pub enum Port {
    /// The control protocol.
    Control,
    /// stdio stream attachments.
    Streams,
    /// Layer unpacking.
    Unpack,
}

/// How long an attachment's `ATTACH` line may take to arrive.
const ATTACH_LINE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepts connections on `listener` forever, each served on a thread of
/// its own, except stream attachments: those are one short line and are
/// handled here, as a new thread costs the guest more than the whole
/// attachment. A thread that has served its connection waits for the next
/// one (see [`Idle`]).
pub fn accept_loop(agent: Arc<Agent>, listener: VsockListener, port: Port) {
    let idle = Arc::new(Idle::default());
    loop {
        let accepted = listener.accept();
        trace!("accepted on {port:?}");
        match accepted {
            Ok(conn) if matches!(port, Port::Streams) => {
                // A host that never sends its line must not stop the others.
                if conn.set_read_timeout(Some(ATTACH_LINE_TIMEOUT)).is_ok() {
                    agent.serve_attach(conn);
                }
            }
            Ok(conn) => {
                let Some(conn) = idle.hand_over(conn) else {
                    continue;
                };
                let (agent, idle) = (agent.clone(), idle.clone());
                let spawned = std::thread::Builder::new().spawn(move || {
                    let mut next = Some(conn);
                    while let Some(conn) = next {
                        match port {
                            Port::Control => agent.serve_control(conn),
                            Port::Streams => agent.serve_attach(conn),
                            Port::Unpack => crate::unpack_server::serve(conn),
                        }
                        next = idle.wait_for_next();
                    }
                });
                if spawned.is_err() {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
}

/// Threads of one listener that have served their connection and wait for
/// another. Where guest-kernel code is emulated a new thread (its stack's
/// mapping and first pages) costs tens of milliseconds; a container's
/// warm snapshot keeps the thread of its warm-up connection, so the
/// restored guest serves the host's first connection without making one.
#[derive(Default)]
struct Idle {
    waiting: Mutex<Vec<std::sync::mpsc::Sender<UnixStream>>>,
}

impl Idle {
    /// Gives `conn` to a waiting thread; back if none takes it.
    fn hand_over(&self, mut conn: UnixStream) -> Option<UnixStream> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(thread) = waiting.pop() {
            match thread.send(conn) {
                Ok(()) => return None,
                Err(std::sync::mpsc::SendError(back)) => conn = back,
            }
        }
        Some(conn)
    }

    /// Waits (as a thread done with its connection) for the next one.
    fn wait_for_next(&self) -> Option<UnixStream> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        rx.recv().ok()
    }
}

/// The cause under an error, for a one-line message.
fn source_of(e: &dyn std::error::Error) -> String {
    e.source().map(|s| s.to_string()).unwrap_or_default()
}

#[cfg(test)]
#[path = "server_run_tests.rs"]
mod run_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Agents for tests share one running reaper: a reaper waits for any
    /// child (`waitpid(-1)`), so two in one process would steal each
    /// other's exit statuses.
    #[test]
    fn a_batch_runs_in_order_and_stops_at_the_first_error() {
        let a = agent();
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
        let batch = Request::Batch(vec![
            Request::Mkdir {
                path: p("one"),
                within: None,
            },
            Request::WriteFile {
                path: p("one/f"),
                content: "x".into(),
                mode: 0o600,
                within: None,
                in_place: false,
            },
            Request::Mkdir {
                path: p("one/f/under-a-file"),
                within: None,
            },
            Request::Mkdir {
                path: p("never"),
                within: None,
            },
        ]);
        match a.handle(batch) {
            Response::Error { message } => assert!(message.contains("under-a-file"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read_to_string(p("one/f")).unwrap(), "x");
        assert!(!std::path::Path::new(&p("never")).exists());
        assert_eq!(
            a.handle(Request::Batch(vec![Request::Mkdir {
                path: p("two"),
                within: None,
            }])),
            Response::Ok
        );
        assert!(matches!(
            a.handle(Request::Batch(vec![Request::Shutdown])),
            Response::Error { .. }
        ));
    }

    pub(super) fn agent() -> Arc<Agent> {
        static REAPER: std::sync::OnceLock<Arc<Reaper>> = std::sync::OnceLock::new();
        let reaper = REAPER.get_or_init(|| {
            let r = Arc::new(Reaper::default());
            let run = r.clone();
            std::thread::spawn(move || run.run());
            r
        });
        let (tx, _rx) = std::sync::mpsc::channel();
        Arc::new(Agent::new(reaper.clone(), tx))
    }

    #[test]
    fn version_mismatch_is_a_clear_error_not_a_hang() {
        let a = agent();
        let (mut host, guest) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || a.serve_control(guest));
        protocol::send(
            &mut host,
            &Request::Hello {
                version: "9.9.0".into(),
            },
        )
        .unwrap();
        match protocol::recv::<Response>(&mut host).unwrap() {
            Response::Error { message } => {
                assert!(message.contains("version mismatch"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        t.join().unwrap();
        // The agent closed the connection.
        assert!(protocol::recv::<Response>(&mut host).is_err());
    }

    #[test]
    fn requests_before_hello_and_unknown_ids_are_refused() {
        let a = agent();
        let (mut host, guest) = UnixStream::pair().unwrap();
        let a2 = a.clone();
        let t = std::thread::spawn(move || a2.serve_control(guest));
        protocol::send(&mut host, &Request::Wait { id: 1 }).unwrap();
        assert!(matches!(
            protocol::recv::<Response>(&mut host).unwrap(),
            Response::Error { .. }
        ));
        t.join().unwrap();

        let (mut host, guest) = UnixStream::pair().unwrap();
        let a2 = a.clone();
        let t = std::thread::spawn(move || a2.serve_control(guest));
        protocol::send(
            &mut host,
            &Request::Hello {
                version: protocol::VERSION.into(),
            },
        )
        .unwrap();
        assert!(matches!(
            protocol::recv::<Response>(&mut host).unwrap(),
            Response::Hello { .. }
        ));
        for req in [
            Request::Start { id: 42 },
            Request::Wait { id: 42 },
            Request::Signal { id: 42, signal: 9 },
        ] {
            protocol::send(&mut host, &req).unwrap();
            match protocol::recv::<Response>(&mut host).unwrap() {
                Response::Error { message } => assert!(message.contains("42"), "{message}"),
                other => panic!("{other:?}"),
            }
        }
        drop(host);
        t.join().unwrap();
    }

    #[test]
    fn attach_registers_a_stream_only_for_a_created_process() {
        let a = agent();
        let id = match a.handle(Request::Create(ExecSpec {
            argv: vec!["/bin/true".into()],
            env: vec![],
            cwd: "/".into(),
            root: None,
            user: String::new(),
            tty: None,
        })) {
            Response::Created { id } => id,
            other => panic!("{other:?}"),
        };
        let (mut host, guest) = UnixStream::pair().unwrap();
        host.write_all(format!("ATTACH {id} stderr\n").as_bytes())
            .unwrap();
        a.serve_attach(guest);
        let mut reply = [0u8; 3];
        host.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"OK\n");
        assert!(a.procs()[&id].stdio[2].is_some());

        for line in [
            "ATTACH 77 stdout\n",
            "ATTACH x stdout\n",
            "ATTACH 1 stdsomething\n",
            "HELLO\n",
        ] {
            let (mut host, guest) = UnixStream::pair().unwrap();
            host.write_all(line.as_bytes()).unwrap();
            a.serve_attach(guest);
            let mut reply = String::new();
            host.read_to_string(&mut reply).unwrap();
            assert!(reply.starts_with("ERR"), "{line:?} -> {reply:?}");
        }
    }

    /// Creates, starts and waits for `sh -c script` as `user`; its exit code.
    fn run_to_exit(a: &Agent, script: &str, user: &str) -> i32 {
        let id = match a.handle(Request::Create(ExecSpec {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env: vec!["PATH=/usr/bin:/bin".into()],
            cwd: "/".into(),
            root: None,
            user: user.into(),
            tty: None,
        })) {
            Response::Created { id } => id,
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            a.handle(Request::Start { id }),
            Response::Started { .. }
        ));
        match a.handle(Request::Wait { id }) {
            Response::Exited { code, signal: None } => code,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_started_process_is_waited_for_with_its_exit_code() {
        // Outside a VM the test process is not PID 1, but fork/exec and
        // the reaper work the same for our own children.
        let a = agent();
        assert_eq!(run_to_exit(&a, "exit 7", ""), 7);
        let id = match a.handle(Request::Create(ExecSpec {
            argv: vec!["/nonexistent/prog".into()],
            env: vec![],
            cwd: "/".into(),
            root: None,
            user: String::new(),
            tty: None,
        })) {
            Response::Created { id } => id,
            other => panic!("{other:?}"),
        };
        match a.handle(Request::Start { id }) {
            Response::StartFailed { failure, message } => {
                assert_eq!(failure, protocol::ExecFailure::NotFound);
                assert!(
                    message.contains(r#"exec: "/nonexistent/prog""#),
                    "{message}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_process_runs_as_its_user_and_the_agent_stays_root() {
        // SAFETY: geteuid has no preconditions.
        let euid = || unsafe { libc::geteuid() };
        assert_eq!(euid(), 0, "this test switches users and needs root");
        let a = agent();
        let check = r#"test "$(id -u):$(id -g):$(id -G)" = 65534:65533:65533"#;
        assert_eq!(run_to_exit(&a, check, "65534:65533"), 0);
        // The child shared our memory until its exec: its user switch must
        // not have reached any thread of ours.
        assert_eq!(euid(), 0);
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        for line in status.lines().filter(|l| l.starts_with("Uid:")) {
            assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
        }
        let other_thread = std::thread::spawn(euid).join().unwrap();
        assert_eq!(other_thread, 0);
    }

    #[test]
    fn shutdown_answers_first_and_powers_off_when_the_host_closes() {
        let (tx, rx) = std::sync::mpsc::channel();
        let a = Arc::new(Agent::new(Arc::new(Reaper::default()), tx));
        let (mut host, guest) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || a.serve_control(guest));
        protocol::send(
            &mut host,
            &Request::Hello {
                version: protocol::VERSION.into(),
            },
        )
        .unwrap();
        protocol::recv::<Response>(&mut host).unwrap();
        protocol::send(&mut host, &Request::Shutdown).unwrap();
        assert_eq!(protocol::recv::<Response>(&mut host).unwrap(), Response::Ok);
        // Not before the host has its answer and closes.
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(300))
            .is_err());
        drop(host);
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("power-off requested");
        t.join().unwrap();
    }

    #[test]
    fn a_terminal_process_gets_a_pty_stream_and_resizes() {
        let a = agent();
        let id = match a.handle(Request::Create(ExecSpec {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "tty; stty size; read x; stty size; echo got $x >&2; exit 4".into(),
            ],
            env: vec!["PATH=/usr/bin:/bin".into()],
            cwd: "/".into(),
            root: None,
            user: String::new(),
            tty: Some(protocol::WindowSize { rows: 33, cols: 97 }),
        })) {
            Response::Created { id } => id,
            other => panic!("{other:?}"),
        };
        // One `tty` stream; stdio streams are refused for it.
        let (mut refused, guest) = UnixStream::pair().unwrap();
        refused
            .write_all(format!("ATTACH {id} stdout\n").as_bytes())
            .unwrap();
        a.serve_attach(guest);
        let mut reply = String::new();
        refused.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("ERR"), "{reply:?}");
        let (mut host, guest) = UnixStream::pair().unwrap();
        host.write_all(format!("ATTACH {id} tty\n").as_bytes())
            .unwrap();
        a.serve_attach(guest);
        let mut ok = [0u8; 3];
        host.read_exact(&mut ok).unwrap();
        assert_eq!(&ok, b"OK\n");
        assert!(matches!(
            a.handle(Request::Start { id }),
            Response::Started { .. }
        ));

        // Wait for the first size, resize, then let the shell go on.
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("33 97\r\n") {
            let n = host.read(&mut buf).unwrap();
            assert!(n > 0, "{:?}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
        let resize = Request::ResizeTty {
            id,
            size: protocol::WindowSize {
                rows: 40,
                cols: 120,
            },
        };
        assert_eq!(a.handle(resize), Response::Ok);
        host.write_all(b"hi\n").unwrap();
        host.read_to_end(&mut seen).unwrap();
        let out = String::from_utf8_lossy(&seen);
        // stdout and stderr are one stream; the terminal echoes input and
        // turns \n into \r\n.
        assert!(out.starts_with("/dev/pts/"), "{out:?}");
        assert!(
            out.ends_with("33 97\r\nhi\r\n40 120\r\ngot hi\r\n"),
            "{out:?}"
        );
        assert_eq!(
            a.handle(Request::Wait { id }),
            Response::Exited {
                code: 4,
                signal: None
            }
        );
        // Gone after the wait.
        match a.handle(Request::ResizeTty {
            id,
            size: protocol::WindowSize::default(),
        }) {
            Response::Error { message } => assert!(message.contains("terminal"), "{message}"),
            other => panic!("{other:?}"),
        }
    }
}
