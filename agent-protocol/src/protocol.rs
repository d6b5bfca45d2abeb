//! The host<->agent control protocol.
//!
//! The host opens a vsock stream to [`CONTROL_PORT`] (through the VMM's
//! hybrid vsock socket: `CONNECT 1024`), says [`Request::Hello`], and then
//! sends one request and reads one response at a time. Each message is a
//! little-endian u32 length followed by that many bytes of JSON. Several
//! control connections may be open at once (a `Wait` blocks only its own).
//!
//! A process's stdio travels on separate streams to [`STREAM_PORT`]: the
//! host writes `ATTACH <id> <stdin|stdout|stderr>\n`, the agent answers
//! `OK\n`, and from then on the stream *is* that file descriptor of the
//! process (the agent hands the socket to the child as fd 0/1/2, so bulk
//! data never passes through the agent or the control stream).
//!
//! To start a process in one round trip, the host instead opens its
//! streams first with `PREATTACH <key> <kind>\n` (a key of its choosing)
//! and sends [`Request::Run`] naming that key: the agent waits for the
//! streams to arrive, then creates and starts the process at once.
//!
//! A process created with [`ExecSpec::tty`] gets a pseudo-terminal instead:
//! its one stream attaches as `ATTACH <id> tty` and carries the terminal's
//! bytes both ways (stdout and stderr are one stream, as with Docker's
//! `-t`); the agent copies between it and the PTY master, and
//! [`Request::ResizeTty`] changes the terminal's size.
//!
//! Versions: [`VERSION`] is exchanged in `Hello`; peers must agree on
//! major.minor. 0.2 added PTYs (`ExecSpec::tty`, `ResizeTty`, `tty`
//! streams) and `ListProcesses`; 0.3 added `KillAll` (the container ends
//! with its main process); 0.4 added `ReadFiles` (per-image warm
//! snapshots); 0.5 added `StartFailed` (why a program could not be
//! executed, for Docker's exit codes 126 and 127); 0.6 moved image
//! preparation to memory windows (`UnpackRequest` names windows, the
//! agent writes an EROFS image); 0.7 added `WriteLayer` (a writable
//! layer written as a layer tar into a window, for `hull build`) and
//! `CopyOut` (`COPY --from`); 0.8 added `Freeze`/`Thaw` (a running
//! container's writable layer held still while a helper VM reads it),
//! `Diff` (`hull diff`), `ApplyTar` (`hull cp` into a container) and
//! `Populate` (a fresh volume filled with the image's content); 0.9 made
//! `ConfigureNetwork`'s gateway optional (a VM with several interfaces
//! has its default route on one of them); 0.10 added `Run` with streams
//! attached ahead (`PREATTACH <key> <kind>`: creation, attachment and
//! start in one round trip, which can close a `Batch`) and `WriteFile`'s
//! `in_place`.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// Version of the host<->agent protocol (independent of the crate version).
pub const VERSION: &str = "0.10.0";

/// vsock port of the control protocol.
pub const CONTROL_PORT: u32 = 1024;
/// vsock port where stdio streams attach.
pub const STREAM_PORT: u32 = 1025;
/// vsock port where the host asks the agent to build an image's root
/// filesystem from layer blobs in memory windows ([`UnpackRequest`]).
pub const UNPACK_PORT: u32 = 1026;
/// vsock port where the host opens connections to published container
/// ports: the host writes [`forward_header`], the agent dials that port on
/// the guest's loopback and answers `OK\n` or `ERR <reason>\n`; then the
/// stream carries the connection's bytes both ways (see the agent's `forward` module).
/// The host may send the connection's first bytes right after the header,
/// without waiting for the answer.
pub const FORWARD_PORT: u32 = 1027;
/// Largest control message either side accepts.
pub const MAX_MESSAGE: u32 = 1 << 20;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// Program and arguments; `argv[0]` is resolved against `PATH` in `env`
    /// when it has no slash.
    pub argv: Vec<String>,
    /// Environment as `KEY=VALUE`.
    pub env: Vec<String>,
    /// Working directory (inside `root`).
    pub cwd: String,
    /// Directory to chroot into before running, if any.
    pub root: Option<String>,
    /// `user[:group]` by name or number, resolved in `root`'s /etc/passwd
    /// and /etc/group; empty means root.
    #[serde(default)]
    pub user: String,
    /// Run on a new pseudo-terminal of this size (its controlling terminal,
    /// on fds 0/1/2) instead of separate stdio streams; `None`: no PTY.
    #[serde(default)]
    pub tty: Option<WindowSize>,
}

/// A terminal's size in character cells; zero means unknown (the PTY
/// keeps the kernel's default of 0x0, as Docker's does without a terminal).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSize {
    /// Lines.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// Which stdio stream an attached connection becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StdioKind {
    /// fd 0.
    Stdin,
    /// fd 1.
    Stdout,
    /// fd 2.
    Stderr,
    /// The PTY of a process created with a `tty`: input and output both.
    Tty,
}

impl StdioKind {
    /// The word used in `ATTACH` lines.
    pub fn word(self) -> &'static str {
        match self {
            StdioKind::Stdin => "stdin",
            StdioKind::Stdout => "stdout",
            StdioKind::Stderr => "stderr",
            StdioKind::Tty => "tty",
        }
    }

    /// Parses an `ATTACH` word.
    pub fn from_word(w: &str) -> Option<Self> {
        match w {
            "stdin" => Some(StdioKind::Stdin),
            "stdout" => Some(StdioKind::Stdout),
            "stderr" => Some(StdioKind::Stderr),
            "tty" => Some(StdioKind::Tty),
            _ => None,
        }
    }
}

/// The streams of a [`Request::Run`], attached ahead of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreAttached {
    /// The key of their `PREATTACH` lines.
    pub key: u64,
    /// Which streams the process waits for (`tty` alone for a process
    /// with a terminal; stdout and stderr, and stdin if given, otherwise).
    pub kinds: Vec<StdioKind>,
}

/// A request from the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// First message on every control connection.
    Hello {
        /// The host's protocol version.
        version: String,
    },
    /// Mount a filesystem in the guest (creating the target directory).
    Mount {
        /// Device or source (`/dev/vda`, `proc`, a directory for bind mounts).
        source: String,
        /// Mount point.
        target: String,
        /// Filesystem type (`ext4`, `tmpfs`, `overlay`; `bind` for a
        /// recursive bind mount; `remount` to change an existing mount's
        /// flags, e.g. to read-only).
        fstype: String,
        /// Mount read-only.
        read_only: bool,
        /// Filesystem options (`mode=0755`, ...).
        options: String,
        /// The container root `target` lies in, when the image made the
        /// directories on the way: the agent then resolves `target` inside
        /// it (its symlinks and `..` cannot lead out), as a chroot would.
        /// `None`: a path of the agent's own (staging, scratch).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        within: Option<String>,
    },
    /// Create a directory and its parents.
    Mkdir {
        /// Absolute guest path.
        path: String,
        /// The container root `path` lies in, when the image made the
        /// directories on the way: the agent then resolves `path` inside
        /// it (its symlinks and `..` cannot lead out), as a chroot would.
        /// `None`: a path of the agent's own (staging, scratch).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        within: Option<String>,
    },
    /// Set the guest's hostname.
    SetHostname {
        /// The new hostname.
        name: String,
    },
    /// Write a file (creating parent directories), e.g. /etc/hosts.
    WriteFile {
        /// Absolute guest path.
        path: String,
        /// Content.
        content: String,
        /// Permission bits.
        mode: u32,
        /// The container root `path` lies in, when the image made the
        /// directories on the way: the agent then resolves `path` inside
        /// it (its symlinks and `..` cannot lead out), as a chroot would.
        /// `None`: a path of the agent's own (staging, scratch).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        within: Option<String>,
        /// Write into the existing file (truncated; a symlink is refused)
        /// instead of replacing it, so that bind mounts of it, made once
        /// in a warm snapshot, show the new content. Only for a path of the
        /// agent's own (`within` is `None`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        in_place: bool,
    },
    /// Prepare a process; its streams attach before `Start`.
    Create(ExecSpec),
    /// Create and start a process whose streams were attached ahead
    /// (`PREATTACH <key> <kind>` on the stream port): answered `Running`,
    /// or as `Start` fails. The last request of a `Batch` may be a `Run`.
    Run {
        /// The process.
        spec: ExecSpec,
        /// The streams it gets.
        streams: PreAttached,
    },
    /// Start a created process.
    Start {
        /// Process id from `Created`.
        id: u32,
    },
    /// Wait for a process to exit.
    Wait {
        /// Process id from `Created`.
        id: u32,
    },
    /// Send a signal to a process.
    Signal {
        /// Process id from `Created`.
        id: u32,
        /// Signal number.
        signal: i32,
    },
    /// Change the size of a process's PTY (the kernel then sends SIGWINCH
    /// to its foreground process group).
    ResizeTty {
        /// Process id from `Created`.
        id: u32,
        /// The new size.
        size: WindowSize,
    },
    /// List the guest's processes (`hull top`).
    ListProcesses,
    /// Kill (SIGKILL) every process of the guest except the agent: sent
    /// once the container's main process has exited, so that what it left
    /// running (background children, `exec` processes) ends with it, as
    /// when a container's PID namespace dies. Answered `Ok` once none of
    /// them is alive (their streams are closed then).
    KillAll,
    /// Reads every regular file under `root` (not crossing into other
    /// file systems), at most `max_bytes` in all, so their pages are in the
    /// guest's page cache: done before a per-image snapshot is taken, so
    /// containers restored from it find their image's files in memory.
    ReadFiles {
        /// Directory to read under.
        root: String,
        /// Most bytes to read in all.
        max_bytes: u64,
    },
    /// Flush filesystems and end the VM.
    Shutdown,
    /// Sent first after a VM was restored from a snapshot: the guest takes
    /// a fresh identity (wall clock and random state) so no two VMs of one
    /// snapshot share them.
    Resumed {
        /// The host's wall clock, nanoseconds since the Unix epoch.
        unix_nanos: u64,
        /// Random bytes from the host, mixed into the guest's RNG and
        /// credited, then the RNG is reseeded at once.
        entropy: Vec<u8>,
    },
    /// Several requests answered by `Ok`, handled in order in one round
    /// trip (container set-up: a dozen mounts and files); the answer is
    /// `Ok` or the first `Error`, after which the rest are not run.
    Batch(Vec<Request>),
    /// A disk's backing file changed under the guest (snapshot restore):
    /// wait until the guest sees its new size, then drop cached blocks.
    RefreshDisk {
        /// Block device (`/dev/vda`).
        device: String,
        /// Its new size in 512-byte sectors.
        sectors: u64,
    },
    /// Gives a network interface its MAC (a restored VM still has its
    /// template's), an IPv4 address and, with a gateway, the default
    /// route, and brings it up.
    ConfigureNetwork {
        /// Interface (`eth0`).
        interface: String,
        /// MAC address, `02:48:...`.
        mac: String,
        /// IPv4 address.
        address: std::net::Ipv4Addr,
        /// Subnet prefix length.
        prefix_len: u8,
        /// Default gateway; `None`: the interface reaches its subnet
        /// only (the default route is another interface's).
        gateway: Option<std::net::Ipv4Addr>,
    },
    /// Writes an overlayfs upper directory as an uncompressed OCI layer
    /// tar (whiteouts, opaque directories, hardlinks kept) into a writable
    /// memory window from `offset` on: the guest's user space writes it,
    /// the host reads the file behind the window. Answered `Written`.
    WriteLayer {
        /// The upper directory.
        upper: String,
        /// Paths (as in the container: `/etc/hosts`) left out.
        exclude: Vec<String>,
        /// The window.
        output: WindowRange,
        /// Where in the window the tar starts.
        offset: u64,
    },
    /// `COPY --from`: paths of the image mounted at `root` (resolved
    /// inside it) written as a layer tar under new names into a writable
    /// memory window from `offset` on. Answered `Written`.
    CopyOut {
        /// The image's root in the guest.
        root: String,
        /// What to copy, in order.
        sources: Vec<CopySource>,
        /// Owner (uid, gid) of every entry, if forced.
        owner: Option<(u64, u64)>,
        /// Permission bits of every file and directory, if forced.
        mode: Option<u32>,
        /// The window.
        output: WindowRange,
        /// Where in the window the tar starts.
        offset: u64,
        /// Leave out the contents of mount points under a source (a live
        /// container root's /proc, /dev, /sys), as `tar --one-file-system`.
        #[serde(default)]
        one_file_system: bool,
    },
    /// Freezes the file system mounted at `path` (FIFREEZE: dirty data
    /// and the journal written out, writers blocked) so that another VM
    /// can read its disk consistently. Thawed by `Thaw`, or when the
    /// control connection that froze it closes (a host process killed
    /// mid-way never leaves a container frozen).
    Freeze {
        /// Mount point.
        path: String,
    },
    /// Thaws what `Freeze` froze on this connection.
    Thaw {
        /// Mount point.
        path: String,
    },
    /// `docker diff` of an overlay upper directory against the lower
    /// layers mounted at `lower`. Answered `Changes`.
    Diff {
        /// The upper directory.
        upper: String,
        /// The merged lower layers (an image root).
        lower: String,
        /// Paths (as in the container) left out.
        exclude: Vec<String>,
    },
    /// Unpacks a tar (`len` bytes at the start of the read-only window
    /// `input`) into the directory `dest` of the root `root` (`dest`
    /// resolved inside `root`; entries never written outside it).
    ApplyTar {
        /// The container's root in the guest.
        root: String,
        /// Directory in the container.
        dest: String,
        /// The window holding the tar.
        input: WindowRange,
        /// Its length.
        len: u64,
    },
    /// Fills a freshly made volume mounted at `to` with what the image
    /// mounted at `root` has at `path` (resolved inside it), as Docker
    /// does on a volume's first use: nothing when the image has nothing
    /// there or the volume holds files already. The volume's empty
    /// `lost+found` goes (mkfs made it; Docker volumes have none).
    Populate {
        /// The image's root in the guest.
        root: String,
        /// The volume's path in the container.
        path: String,
        /// Where the volume is mounted in the guest.
        to: String,
    },
}

/// One source of a [`Request::CopyOut`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopySource {
    /// Path in the image.
    pub path: String,
    /// Where it goes (no leading `/`): a directory's contents go under
    /// it; anything else goes to `dest/<its name>` if `dest_is_dir`, else
    /// to `dest`.
    pub dest: String,
    /// `dest` names a directory (it ended in `/`, or several sources).
    pub dest_is_dir: bool,
}

/// One guest process, as `hull top` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Guest PID.
    pub pid: i32,
    /// Parent's guest PID.
    pub ppid: i32,
    /// Real user ID.
    pub uid: u32,
    /// CPU time used (user + system), in milliseconds.
    pub cpu_ms: u64,
    /// Milliseconds since it started (by the guest's uptime clock, so the
    /// guest's wall clock does not matter).
    pub running_ms: u64,
    /// Its command line (`[name]` when it has none).
    pub command: Vec<String>,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Handshake accepted; the agent's version.
    Hello {
        /// The agent's protocol version.
        version: String,
    },
    /// The changes of a `Diff`, one `A|C|D /path` line each.
    Changes {
        /// The lines, sorted by path.
        lines: Vec<String>,
    },
    /// A process was prepared.
    Created {
        /// Id for later requests and `ATTACH` lines.
        id: u32,
    },
    /// A process started.
    Started {
        /// Its guest PID.
        pid: i32,
    },
    /// A `Run` process was created and started.
    Running {
        /// Id for later requests (`Wait`, `Signal`, ...).
        id: u32,
        /// Its guest PID.
        pid: i32,
    },
    /// A process ended: `code` is its exit code, or 128+signal.
    Exited {
        /// Exit code as a shell reports it.
        code: i32,
        /// The signal that killed it, if any.
        signal: Option<i32>,
    },
    /// The guest's processes, except the agent and kernel threads.
    Processes {
        /// In PID order.
        processes: Vec<ProcessInfo>,
    },
    /// Done.
    Ok,
    /// `WriteLayer` done: the tar's length in the window.
    Written {
        /// Bytes of tar, end-of-archive blocks included.
        bytes: u64,
    },
    /// `Start` failed because the program could not be executed; the
    /// host tells the cases apart by `failure`, never by the message.
    StartFailed {
        /// Why.
        failure: ExecFailure,
        /// One line saying why, in Docker's words
        /// (`exec: "x": executable file not found in $PATH`).
        message: String,
    },
    /// The request failed.
    Error {
        /// One line saying why.
        message: String,
    },
}

/// Why a program could not be executed: Docker exits 127 for the first,
/// 126 for the second, and scripts depend on the difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecFailure {
    /// No such program (not in `PATH`, or no such file).
    NotFound,
    /// It exists but cannot be executed (permission denied, a
    /// directory, not an executable format).
    CannotInvoke,
}

/// A guest-physical range backed by a host file: a memory window (the
/// VMM's `window` module). Page-aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowRange {
    /// Guest-physical start.
    pub guest_addr: u64,
    /// Length in bytes.
    pub len: u64,
}

/// One layer blob in a read-only window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerWindow {
    /// The window holding the blob from its first byte.
    pub window: WindowRange,
    /// The blob's exact length (the window is rounded up to a page).
    pub size: u64,
}

/// The only message on an [`UNPACK_PORT`] stream: build an image's root
/// filesystem (EROFS) from its layer blobs. Every byte moves through
/// memory windows; the stream carries only this request and the reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnpackRequest {
    /// The layer blobs (plain, gzip or zstd tar), applied in order.
    pub layers: Vec<LayerWindow>,
    /// The writable window the filesystem image is written into from its
    /// first byte.
    pub output: WindowRange,
}

/// The agent's answer once every layer is applied (or one failed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UnpackReply {
    /// All layers applied and the image written.
    Done {
        /// Layer bytes read.
        compressed_bytes: u64,
        /// Tar bytes after decompression.
        tar_bytes: u64,
        /// Entries created (files, dirs, links, nodes).
        entries: u64,
        /// Whiteouts and opaque directories applied.
        whiteouts: u64,
        /// Length of the image at the start of the output window.
        image_bytes: u64,
        /// Seconds spent, as the guest measured them.
        seconds: f64,
    },
    /// Unpacking failed; the output window holds garbage.
    Error {
        /// Why, naming the layer and entry.
        message: String,
    },
}

/// Errors of the wire format.
#[derive(Debug)]
pub enum WireError {
    /// The stream failed or closed.
    Io(std::io::Error),
    /// A message over [`MAX_MESSAGE`].
    TooLarge(u32),
    /// Bytes that are not a message.
    Malformed(serde_json::Error),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Io(e) => write!(f, "agent connection: {e}"),
            WireError::TooLarge(n) => write!(f, "agent message of {n} bytes is too large"),
            WireError::Malformed(e) => write!(f, "malformed agent message: {e}"),
        }
    }
}

impl std::error::Error for WireError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WireError::Io(e) => Some(e),
            WireError::TooLarge(_) => None,
            WireError::Malformed(e) => Some(e),
        }
    }
}

/// Writes one message.
pub fn send<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), WireError> {
    let body = serde_json::to_vec(msg).map_err(WireError::Malformed)?;
    let len = u32::try_from(body.len()).map_err(|_| WireError::TooLarge(u32::MAX))?;
    if len > MAX_MESSAGE {
        return Err(WireError::TooLarge(len));
    }
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&body);
    // One write per message: on PVM every syscall costs ~0.5 ms.
    w.write_all(&frame).map_err(WireError::Io)?;
    w.flush().map_err(WireError::Io)
}

/// Reads one message.
pub fn recv<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> Result<T, WireError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(WireError::Io)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_MESSAGE {
        return Err(WireError::TooLarge(len));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).map_err(WireError::Io)?;
    serde_json::from_slice(&body).map_err(WireError::Malformed)
}

/// Reads one `\n`-terminated line of at most 128 bytes, one byte at a time
/// so that nothing after the newline is consumed (the stream goes on as
/// raw data). `None` on EOF, error, overlong line or invalid UTF-8.
pub fn read_line(r: &mut impl Read) -> Option<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 128 {
        if r.read(&mut byte).ok()? == 0 {
            return None;
        }
        if byte[0] == b'\n' {
            return String::from_utf8(line).ok();
        }
        line.push(byte[0]);
    }
    None
}

/// The first line on a [`FORWARD_PORT`] stream: which TCP port to dial.
pub fn forward_header(port: u16) -> String {
    format!("TCP {port}\n")
}

/// Parses a [`forward_header`] line (without its newline).
pub fn parse_forward_header(line: &str) -> Option<u16> {
    let mut words = line.split(' ');
    match (words.next(), words.next(), words.next()) {
        (Some("TCP"), Some(port), None) => port.parse().ok().filter(|p| *p != 0),
        _ => None,
    }
}

/// Whether a peer speaking `theirs` can talk to us: same major.minor.
pub fn compatible(ours: &str, theirs: &str) -> bool {
    fn key(v: &str) -> Vec<&str> {
        v.split('.').take(2).collect()
    }
    key(ours) == key(theirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_frames() {
        let msgs = vec![
            Request::Hello {
                version: "0.1.0".into(),
            },
            Request::Create(ExecSpec {
                argv: vec!["/bin/sh".into(), "-c".into(), "echo ü".into()],
                env: vec!["PATH=/bin".into()],
                cwd: "/".into(),
                root: Some("/mnt/root".into()),
                user: "nobody".into(),
                tty: None,
            }),
            Request::Create(ExecSpec {
                argv: vec!["sh".into()],
                env: vec![],
                cwd: "/".into(),
                root: None,
                user: String::new(),
                tty: Some(WindowSize { rows: 33, cols: 97 }),
            }),
            Request::Signal { id: 3, signal: 15 },
            Request::KillAll,
            Request::ReadFiles {
                root: "/run/hull/lower".into(),
                max_bytes: 1 << 26,
            },
            Request::ResizeTty {
                id: 3,
                size: WindowSize {
                    rows: u16::MAX,
                    cols: 0,
                },
            },
        ];
        let mut buf = Vec::new();
        for m in &msgs {
            send(&mut buf, m).unwrap();
        }
        let mut r = &buf[..];
        for m in &msgs {
            assert_eq!(&recv::<Request>(&mut r).unwrap(), m);
        }
        assert!(matches!(recv::<Request>(&mut r), Err(WireError::Io(_))));
    }

    #[test]
    fn start_failures_keep_their_kind() {
        for failure in [ExecFailure::NotFound, ExecFailure::CannotInvoke] {
            let msg = Response::StartFailed {
                failure,
                message: "exec: \"x\": permission denied".into(),
            };
            let mut buf = Vec::new();
            send(&mut buf, &msg).unwrap();
            assert_eq!(recv::<Response>(&mut &buf[..]).unwrap(), msg);
        }
    }

    #[test]
    fn hostile_frames_are_refused() {
        let mut huge = Vec::new();
        huge.extend_from_slice(&(MAX_MESSAGE + 1).to_le_bytes());
        assert!(matches!(
            recv::<Request>(&mut &huge[..]),
            Err(WireError::TooLarge(_))
        ));
        let mut junk = Vec::new();
        junk.extend_from_slice(&3u32.to_le_bytes());
        junk.extend_from_slice(b"{{{");
        assert!(matches!(
            recv::<Request>(&mut &junk[..]),
            Err(WireError::Malformed(_))
        ));
        let truncated = [10u8, 0, 0, 0, b'{'];
        assert!(matches!(
            recv::<Request>(&mut &truncated[..]),
            Err(WireError::Io(_))
        ));
    }

    #[test]
    fn forward_headers_round_trip_and_junk_is_refused() {
        let h = forward_header(5000);
        assert_eq!(h, "TCP 5000\n");
        assert_eq!(parse_forward_header(h.trim_end()), Some(5000));
        for bad in [
            "",
            "TCP",
            "TCP 0",
            "TCP 65536",
            "TCP 80 81",
            "UDP 53",
            "tcp 80",
            "TCP x",
        ] {
            assert_eq!(parse_forward_header(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn versions_match_on_major_minor() {
        assert!(compatible("0.1.0", "0.1.7"));
        assert!(!compatible("0.1.0", "0.2.0"));
        assert!(!compatible("1.0.0", "garbage"));
        // A host or agent from before PTYs, `KillAll` or `ReadFiles` is
        // told apart in the handshake.
        assert!(!compatible(VERSION, "0.1.0"));
        assert!(!compatible(VERSION, "0.2.0"));
        assert!(!compatible(VERSION, "0.3.0"));
        assert!(!compatible(VERSION, "0.4.0"));
        assert!(!compatible(VERSION, "0.5.0"));
        assert!(!compatible(VERSION, "0.6.0"));
        assert!(!compatible(VERSION, "0.7.0"));
        assert!(!compatible(VERSION, "0.8.0"));
    }

    #[test]
    fn tty_frames_have_a_fixed_wire_form() {
        // The exact JSON is the contract with agents built from other
        // commits: pin it.
        let mut buf = Vec::new();
        send(
            &mut buf,
            &Request::ResizeTty {
                id: 7,
                size: WindowSize {
                    rows: 40,
                    cols: 120,
                },
            },
        )
        .unwrap();
        let body = br#"{"ResizeTty":{"id":7,"size":{"rows":40,"cols":120}}}"#;
        assert_eq!(&buf[..4], &(body.len() as u32).to_le_bytes());
        assert_eq!(&buf[4..], body);

        // A spec without the field (a 0.1 peer's) means no PTY.
        let old = br#"{"Create":{"argv":["true"],"env":[],"cwd":"/","root":null}}"#;
        let mut frame = (old.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(old);
        match recv::<Request>(&mut &frame[..]).unwrap() {
            Request::Create(spec) => {
                assert_eq!(spec.tty, None);
                assert_eq!(spec.user, "");
            }
            other => panic!("{other:?}"),
        }

        // Sizes are u16: a hostile or buggy peer's out-of-range value is
        // refused, not truncated.
        let bad = br#"{"ResizeTty":{"id":1,"size":{"rows":70000,"cols":1}}}"#;
        let mut frame = (bad.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(bad);
        assert!(matches!(
            recv::<Request>(&mut &frame[..]),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn attach_words_round_trip() {
        for kind in [
            StdioKind::Stdin,
            StdioKind::Stdout,
            StdioKind::Stderr,
            StdioKind::Tty,
        ] {
            assert_eq!(StdioKind::from_word(kind.word()), Some(kind));
        }
        assert_eq!(StdioKind::from_word("TTY"), None);
        assert_eq!(StdioKind::from_word("pty"), None);
    }
}
