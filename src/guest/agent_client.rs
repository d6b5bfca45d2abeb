//! The host side of the agent protocol, over the VM's hybrid vsock socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_protocol::protocol::{
    self, ExecFailure, ExecSpec, PreAttached, ProcessInfo, Request, Response, StdioKind,
    WindowSize, CONTROL_PORT, STREAM_PORT,
};

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The VM's vsock socket refused or failed.
    #[error("Cannot reach the guest agent through {0}")]
    Connect(PathBuf, #[source] std::io::Error),
    /// The hybrid vsock handshake (`CONNECT`/`OK`) failed.
    #[error("Guest agent did not accept a connection to vsock port {0}")]
    Handshake(u32),
    /// The wire protocol failed.
    #[error(transparent)]
    Wire(#[from] protocol::WireError),
    /// The agent speaks another protocol version.
    #[error("Guest agent refused the handshake: {0}")]
    Version(String),
    /// The agent answered with an error.
    #[error("Guest agent: {0}")]
    Remote(String),
    /// The container's program could not be executed (Docker's exit
    /// codes 127 and 126 tell the two kinds apart).
    #[error("{1}")]
    Exec(ExecFailure, String),
    /// The agent answered something unexpected.
    #[error("Unexpected reply from the guest agent: {0:?}")]
    Unexpected(Box<Response>),
}

/// Docker's exit code when `e` is or wraps a program that could not be
/// executed: 127 when it does not exist, 126 when it cannot be invoked.
pub fn exec_exit_code(e: &anyhow::Error) -> Option<u8> {
    e.chain()
        .find_map(|e| match e.downcast_ref::<AgentError>() {
            Some(AgentError::Exec(ExecFailure::NotFound, _)) => Some(127),
            Some(AgentError::Exec(ExecFailure::CannotInvoke, _)) => Some(126),
            _ => None,
        })
}

/// Connects to guest vsock `port` through the VMM's Unix socket.
pub fn connect_port(uds: &Path, port: u32) -> Result<UnixStream, AgentError> {
    let mut s = UnixStream::connect(uds).map_err(|e| AgentError::Connect(uds.into(), e))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| AgentError::Connect(uds.into(), e))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| AgentError::Connect(uds.into(), e))?;
    let line = protocol::read_line(&mut s).ok_or(AgentError::Handshake(port))?;
    if !line.to_ascii_uppercase().starts_with("OK ") {
        return Err(AgentError::Handshake(port));
    }
    s.set_read_timeout(None)
        .map_err(|e| AgentError::Connect(uds.into(), e))?;
    Ok(s)
}

/// A stream opened with `PREATTACH`, once the agent said `OK` (it does
/// before handing the stream to the process, so nothing of the process
/// comes first).
fn attached(mut s: UnixStream) -> Result<UnixStream, AgentError> {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let line = protocol::read_line(&mut s);
    let _ = s.set_read_timeout(None);
    match line.as_deref() {
        Some("OK") => Ok(s),
        other => Err(AgentError::Remote(format!(
            "cannot attach a stream: {}",
            other.unwrap_or("connection closed")
        ))),
    }
}

/// Copies until EOF (or an error on either side), flushing each chunk: a
/// prompt without a newline must show at once, not when stdout's line
/// buffer decides.
fn copy_flushing(from: &mut impl Read, to: &mut impl Write) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
            return;
        }
    }
}

/// Waits for the threads copying a process's output. After a failed
/// `Wait` nothing says its streams will ever end (the agent may be stuck
/// while the VM lives on): they are cut, and what was not copied is lost
/// with the error.
fn finish_copies<const N: usize>(
    copies: [std::thread::ScopedJoinHandle<'_, ()>; N],
    streams: &[UnixStream],
    exited: bool,
) {
    if !exited {
        for s in streams {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
    for c in copies {
        let _ = c.join();
    }
}

/// `e` itself, or, when it is or wraps a program that could not be
/// executed, that failure alone: it is the whole story, as Docker tells
/// it (`exec: "x": executable file not found in $PATH`), even when the
/// process was started along with the VM's set-up.
pub fn bare_exec_failure(e: anyhow::Error) -> anyhow::Error {
    let exec = e
        .chain()
        .find_map(|c| match c.downcast_ref::<AgentError>() {
            Some(AgentError::Exec(failure, message)) => {
                Some(AgentError::Exec(*failure, message.clone()))
            }
            _ => None,
        });
    match exec {
        Some(exec) => exec.into(),
        None => e,
    }
}

/// What the end of a process means for the rest of the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessRole {
    /// The container's main process: once it has exited, every other
    /// process of the guest is killed, as Docker's container ends with
    /// its PID namespace when PID 1 of the container exits. Its streams
    /// then end, even when background children shared them.
    Main,
    /// A process started in a running container (`hull exec`): it ends
    /// alone, and its output is copied until every holder of its streams
    /// has closed them.
    Exec,
}

/// One control connection.
pub struct AgentClient {
    uds: PathBuf,
    conn: UnixStream,
    /// The agent's answer to our `Hello` is still to be read.
    hello_pending: bool,
    /// Requests held for one `Batch` round trip (see `begin_batch`).
    batch: Option<Vec<Request>>,
    /// The streams of a `Run` queued or sent, attached once the request
    /// that carries it is on its way (see [`AgentClient::queue_run`]).
    run_streams: Option<PreAttached>,
    /// The process the last round trip started, with its streams.
    started: Option<StartedProcess>,
}

/// A process a `Run` started, with its attached streams (in the order of
/// [`stream_kinds`]) whose agent's `OK` line is still to be read.
pub struct StartedProcess {
    /// The agent's id for it.
    pub id: u32,
    streams: Vec<UnixStream>,
}

/// The streams a process gets: its terminal, or stdout and stderr and
/// stdin when the host has input for it.
fn stream_kinds(tty: bool, stdin: bool) -> Vec<StdioKind> {
    match (tty, stdin) {
        (true, _) => vec![StdioKind::Tty],
        (false, true) => vec![StdioKind::Stdout, StdioKind::Stderr, StdioKind::Stdin],
        (false, false) => vec![StdioKind::Stdout, StdioKind::Stderr],
    }
}

/// A key for `PREATTACH` lines: only the host reaches the guest's stream
/// port, so it needs to be unique, not secret; random per call.
fn preattach_key() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

impl AgentClient {
    /// Connects and performs the version handshake.
    pub fn connect(uds: &Path) -> Result<Self, AgentError> {
        let mut client = Self::connect_unanswered(uds)?;
        client.hello_answer()?;
        Ok(client)
    }

    /// Connects and says `Hello` without waiting for the answer, which the
    /// first round trip reads before its own: a restored guest's agent
    /// then reads both at one wake-up.
    pub fn connect_unanswered(uds: &Path) -> Result<Self, AgentError> {
        let mut conn = connect_port(uds, CONTROL_PORT)?;
        protocol::send(
            &mut conn,
            &Request::Hello {
                version: protocol::VERSION.to_string(),
            },
        )?;
        Ok(Self {
            uds: uds.into(),
            conn,
            hello_pending: true,
            batch: None,
            run_streams: None,
            started: None,
        })
    }

    /// Reads the answer to our `Hello` if it is still due.
    fn hello_answer(&mut self) -> Result<(), AgentError> {
        if !std::mem::take(&mut self.hello_pending) {
            return Ok(());
        }
        match protocol::recv::<Response>(&mut self.conn)? {
            Response::Hello { .. } => Ok(()),
            Response::Error { message } => Err(AgentError::Version(message)),
            other => Err(AgentError::Unexpected(Box::new(other))),
        }
    }

    /// From now until [`AgentClient::end_batch`], requests are held and
    /// answered `Ok` at once, then sent in one round trip: each round trip
    /// costs the guest an interrupt, wake-ups and socket calls, which are
    /// slow on emulating hosts. Only for requests the agent answers `Ok`.
    pub fn begin_batch(&mut self) {
        self.batch = Some(Vec::new());
    }

    /// Sends the held requests; the first failure is the error. A `Run`
    /// queued last has started its process ([`Self::take_started`]).
    pub fn end_batch(&mut self) -> Result<(), AgentError> {
        match self.batch.take() {
            Some(reqs) if !reqs.is_empty() => self.round_trip(&Request::Batch(reqs)).map(drop),
            _ => Ok(()),
        }
    }

    /// Sends one request and reads its response; agent errors become `Err`.
    pub fn call(&mut self, req: &Request) -> Result<Response, AgentError> {
        if let Some(batch) = &mut self.batch {
            batch.push(req.clone());
            return Ok(Response::Ok);
        }
        self.round_trip(req)
    }

    /// Sends `req`, attaches the streams of a `Run` it carries while the
    /// agent works through it, and reads the answer.
    fn round_trip(&mut self, req: &Request) -> Result<Response, AgentError> {
        protocol::send(&mut self.conn, req)?;
        let streams = match self.run_streams.take() {
            Some(run) => Some(self.preattach(&run)?),
            None => None,
        };
        self.hello_answer()?;
        let response = self.answer()?;
        if let (Response::Running { id, .. }, Some(streams)) = (&response, streams) {
            self.started = Some(StartedProcess { id: *id, streams });
        }
        Ok(response)
    }

    /// Reads one answer; agent errors become `Err`.
    fn answer(&mut self) -> Result<Response, AgentError> {
        match protocol::recv::<Response>(&mut self.conn)? {
            Response::Error { message } => Err(AgentError::Remote(message)),
            Response::StartFailed { failure, message } => Err(AgentError::Exec(failure, message)),
            r => Ok(r),
        }
    }

    /// Opens the streams of `run` (`PREATTACH` lines); their `OK` is read
    /// when the process's output is (see [`Self::run_started`]).
    fn preattach(&self, run: &PreAttached) -> Result<Vec<UnixStream>, AgentError> {
        run.kinds
            .iter()
            .map(|kind| {
                let mut s = connect_port(&self.uds, STREAM_PORT)?;
                s.write_all(format!("PREATTACH {} {}\n", run.key, kind.word()).as_bytes())
                    .map_err(|e| AgentError::Connect(self.uds.clone(), e))?;
                Ok(s)
            })
            .collect()
    }

    /// Queues (in a batch, as its last request) or sends a `Run` of
    /// `spec`, whose streams are attached while the agent works through
    /// the round trip: creation, attachment and start cost one round trip
    /// instead of four. Afterwards [`Self::take_started`] has the process.
    pub fn queue_run(&mut self, spec: ExecSpec, stdin: bool) -> Result<(), AgentError> {
        let streams = PreAttached {
            key: preattach_key(),
            kinds: stream_kinds(spec.tty.is_some(), stdin),
        };
        self.run_streams = Some(streams.clone());
        self.call(&Request::Run { spec, streams }).map(drop)
    }

    /// The process the last `Run` started, if any.
    pub fn take_started(&mut self) -> Option<StartedProcess> {
        self.started.take()
    }

    /// Mounts a filesystem in the guest.
    pub fn mount(
        &mut self,
        source: &str,
        target: &str,
        fstype: &str,
        read_only: bool,
        options: &str,
    ) -> Result<(), AgentError> {
        self.call(&Request::Mount {
            source: source.into(),
            target: target.into(),
            fstype: fstype.into(),
            read_only,
            options: options.into(),
            within: None,
        })
        .map(|_| ())
    }

    /// Gives a guest restored from a snapshot its own wall clock and
    /// random state.
    pub fn resumed(&mut self, unix_nanos: u64, entropy: Vec<u8>) -> Result<(), AgentError> {
        self.call(&Request::Resumed {
            unix_nanos,
            entropy,
        })
        .map(drop)
    }

    /// Has the guest see a disk's new backing (after a snapshot restore).
    pub fn refresh_disk(&mut self, device: &str, sectors: u64) -> Result<(), AgentError> {
        self.call(&Request::RefreshDisk {
            device: device.into(),
            sectors,
        })
        .map(drop)
    }

    /// Sets the guest's hostname.
    pub fn set_hostname(&mut self, name: &str) -> Result<(), AgentError> {
        self.call(&Request::SetHostname { name: name.into() })
            .map(|_| ())
    }

    /// Makes an existing guest mount read-only.
    pub fn remount_read_only(&mut self, target: &str) -> Result<(), AgentError> {
        self.mount("none", target, "remount", true, "")
    }

    /// Sends `signal` to agent process `id`.
    pub fn signal(&mut self, id: u32, signal: i32) -> Result<(), AgentError> {
        self.call(&Request::Signal { id, signal }).map(|_| ())
    }

    /// Sets the size of agent process `id`'s terminal.
    pub fn resize_tty(&mut self, id: u32, size: WindowSize) -> Result<(), AgentError> {
        self.call(&Request::ResizeTty { id, size }).map(|_| ())
    }

    /// The guest's processes (without the agent and kernel threads).
    pub fn processes(&mut self) -> Result<Vec<ProcessInfo>, AgentError> {
        match self.call(&Request::ListProcesses)? {
            Response::Processes { processes } => Ok(processes),
            other => Err(AgentError::Unexpected(Box::new(other))),
        }
    }

    /// Runs `spec` to completion as the guest's main process (see
    /// [`ProcessRole::Main`]): `stdin` (if any) is sent and closed, stdout
    /// and stderr are copied as they come. Returns the exit code
    /// (128+signal when killed).
    pub fn run(
        &mut self,
        spec: ExecSpec,
        stdin: Option<Box<dyn Read + Send>>,
        stdout: impl Write + Send,
        stderr: impl Write + Send,
    ) -> Result<i32, AgentError> {
        self.run_with(spec, ProcessRole::Main, stdin, stdout, stderr, |_| {})
    }

    /// Like [`AgentClient::run`] for a process of either `role`, calling
    /// `started` with the agent's process id once the process runs (so it
    /// can be signalled from elsewhere). A process with a terminal
    /// (`spec.tty`) has one stream: `stdin` goes into its terminal and
    /// everything it writes comes out on `stdout`.
    pub fn run_with(
        &mut self,
        spec: ExecSpec,
        role: ProcessRole,
        stdin: Option<Box<dyn Read + Send>>,
        stdout: impl Write + Send,
        stderr: impl Write + Send,
        started: impl FnOnce(u32),
    ) -> Result<i32, AgentError> {
        self.queue_run(spec, stdin.is_some())?;
        let process = self
            .take_started()
            .ok_or_else(|| AgentError::Remote("the process did not start".into()))?;
        self.run_started(process, role, stdin, stdout, stderr, started)
    }

    /// The rest of [`AgentClient::run_with`] for a process a `Run` started
    /// (possibly at the end of a batch): tells `started`, feeds `stdin`,
    /// copies the output until the process has exited.
    pub fn run_started(
        &mut self,
        process: StartedProcess,
        role: ProcessRole,
        stdin: Option<Box<dyn Read + Send>>,
        mut stdout: impl Write + Send,
        mut stderr: impl Write + Send,
        started: impl FnOnce(u32),
    ) -> Result<i32, AgentError> {
        let StartedProcess { id, streams } = process;
        let mut streams = streams
            .into_iter()
            .map(attached)
            .collect::<Result<Vec<_>, _>>()?
            .into_iter();
        let (Some(mut out), err) = (streams.next(), streams.next()) else {
            return Err(AgentError::Remote("no stream attached".into()));
        };
        let Some(mut err) = err else {
            // A terminal: one stream, both ways. The agent ends it when the
            // terminal closes: when no process holds it any more.
            let handles = [self.handle(&out)?];
            let input = match stdin {
                Some(r) => Some((self.handle(&out)?, r)),
                None => None,
            };
            Self::begin(id, input, started);
            return std::thread::scope(|scope| {
                let copy = scope.spawn(move || copy_flushing(&mut out, &mut stdout));
                let code = self.wait_exit(id, role);
                finish_copies([copy], &handles, code.is_ok());
                code
            });
        };
        let input = streams.next().zip(stdin);
        let handles = [self.handle(&out)?, self.handle(&err)?];
        Self::begin(id, input, started);
        std::thread::scope(|scope| {
            let copies = [
                scope.spawn(move || copy_flushing(&mut out, &mut stdout)),
                scope.spawn(move || copy_flushing(&mut err, &mut stderr)),
            ];
            let code = self.wait_exit(id, role);
            finish_copies(copies, &handles, code.is_ok());
            tracing::debug!("process {id} output closed");
            code
        })
    }

    /// Tells `started` that process `id` runs, then feeds `input` (the
    /// stream and what to copy into it) on a thread of its own, which
    /// closes the stream's sending side at the end. Detached: a process
    /// that exits without reading its stdin must not keep us waiting on
    /// our own stdin.
    fn begin(
        id: u32,
        input: Option<(UnixStream, Box<dyn Read + Send>)>,
        started: impl FnOnce(u32),
    ) {
        tracing::debug!("process {id} started");
        started(id);
        if let Some((mut sock, mut reader)) = input {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut reader, &mut sock);
                let _ = sock.shutdown(std::net::Shutdown::Write);
            });
        }
    }

    /// Another handle on a stream, to end it from another thread.
    fn handle(&self, stream: &UnixStream) -> Result<UnixStream, AgentError> {
        stream
            .try_clone()
            .map_err(|e| AgentError::Connect(self.uds.clone(), e))
    }

    /// Waits for process `id` to exit; when it is the main process, has the
    /// agent kill every other process of the guest, whose streams (and the
    /// main process's, which children share) then end once their last
    /// bytes are delivered.
    fn wait_exit(&mut self, id: u32, role: ProcessRole) -> Result<i32, AgentError> {
        self.hello_answer()?;
        protocol::send(&mut self.conn, &Request::Wait { id })?;
        if role == ProcessRole::Main {
            // Queued behind the `Wait`: the agent reads it as soon as it
            // has answered, without waiting for us.
            protocol::send(&mut self.conn, &Request::KillAll)?;
        }
        let code = match self.answer()? {
            Response::Exited { code, .. } => code,
            other => return Err(AgentError::Unexpected(Box::new(other))),
        };
        tracing::debug!("process {id} exited with {code}");
        if role == ProcessRole::Main {
            self.answer()?;
        }
        Ok(code)
    }

    /// Asks the agent to sync and end the VM.
    /// The agent powers off once we close the connection (dropping `self`)
    /// after its answer; a connection that closes instead of answering
    /// means the VM is already going down, which is what was asked.
    pub fn shutdown(mut self) -> Result<(), AgentError> {
        match self.call(&Request::Shutdown) {
            Ok(_) => Ok(()),
            Err(AgentError::Wire(protocol::WireError::Io(e)))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}
