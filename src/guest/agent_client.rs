//! The host side of the agent protocol, over the VM's hybrid vsock socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_protocol::protocol::{
    self, ExecFailure, ExecSpec, ProcessInfo, Request, Response, StdioKind, WindowSize,
    CONTROL_PORT, STREAM_PORT,
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
    /// Requests held for one `Batch` round trip (see `begin_batch`).
    batch: Option<Vec<Request>>,
}

impl AgentClient {
    /// Connects and performs the version handshake.
    pub fn connect(uds: &Path) -> Result<Self, AgentError> {
        let mut conn = connect_port(uds, CONTROL_PORT)?;
        protocol::send(
            &mut conn,
            &Request::Hello {
                version: protocol::VERSION.to_string(),
            },
        )?;
        match protocol::recv::<Response>(&mut conn)? {
            Response::Hello { .. } => Ok(Self {
                uds: uds.into(),
                conn,
                batch: None,
            }),
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

    /// Sends the held requests; the first failure is the error.
    pub fn end_batch(&mut self) -> Result<(), AgentError> {
        match self.batch.take() {
            Some(reqs) if !reqs.is_empty() => self.call(&Request::Batch(reqs)).map(drop),
            _ => Ok(()),
        }
    }

    /// Sends one request and reads its response; agent errors become `Err`.
    pub fn call(&mut self, req: &Request) -> Result<Response, AgentError> {
        if let Some(batch) = &mut self.batch {
            batch.push(req.clone());
            return Ok(Response::Ok);
        }
        protocol::send(&mut self.conn, req)?;
        match protocol::recv::<Response>(&mut self.conn)? {
            Response::Error { message } => Err(AgentError::Remote(message)),
            Response::StartFailed { failure, message } => Err(AgentError::Exec(failure, message)),
            r => Ok(r),
        }
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

    /// Writes a file in the guest.
    pub fn write_file(&mut self, path: &str, content: &str, mode: u32) -> Result<(), AgentError> {
        self.call(&Request::WriteFile {
            path: path.into(),
            content: content.into(),
            mode,
            within: None,
        })
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

    /// Attaches a stdio stream of process `id`.
    fn attach(&self, id: u32, kind: StdioKind) -> Result<UnixStream, AgentError> {
        let mut s = connect_port(&self.uds, STREAM_PORT)?;
        s.write_all(format!("ATTACH {id} {}\n", kind.word()).as_bytes())
            .map_err(|e| AgentError::Connect(self.uds.clone(), e))?;
        match protocol::read_line(&mut s).as_deref() {
            Some("OK") => Ok(s),
            other => Err(AgentError::Remote(format!(
                "cannot attach {}: {}",
                kind.word(),
                other.unwrap_or("connection closed")
            ))),
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
        mut stdout: impl Write + Send,
        mut stderr: impl Write + Send,
        started: impl FnOnce(u32),
    ) -> Result<i32, AgentError> {
        let tty = spec.tty.is_some();
        let id = match self.call(&Request::Create(spec))? {
            Response::Created { id } => id,
            other => return Err(AgentError::Unexpected(Box::new(other))),
        };
        if tty {
            return self.run_terminal(id, role, stdin, stdout, started);
        }
        let input = match stdin {
            Some(r) => Some((self.attach(id, StdioKind::Stdin)?, r)),
            None => None,
        };
        let mut out = self.attach(id, StdioKind::Stdout)?;
        let mut err = self.attach(id, StdioKind::Stderr)?;
        let streams = [self.handle(&out)?, self.handle(&err)?];
        tracing::debug!("process {id} created and attached");
        self.start(id, input, started)?;
        std::thread::scope(|scope| {
            let copies = [
                scope.spawn(move || copy_flushing(&mut out, &mut stdout)),
                scope.spawn(move || copy_flushing(&mut err, &mut stderr)),
            ];
            let code = self.wait_exit(id, role);
            finish_copies(copies, &streams, code.is_ok());
            tracing::debug!("process {id} output closed");
            code
        })
    }

    /// Starts created process `id`, tells `started`, then feeds `input`
    /// (the stream and what to copy into it) on a thread of its own, which
    /// closes the stream's sending side at the end. Detached: a process
    /// that exits without reading its stdin must not keep us waiting on
    /// our own stdin.
    fn start(
        &mut self,
        id: u32,
        input: Option<(UnixStream, Box<dyn Read + Send>)>,
        started: impl FnOnce(u32),
    ) -> Result<(), AgentError> {
        match self.call(&Request::Start { id })? {
            Response::Started { .. } => {
                tracing::debug!("process {id} started");
                started(id)
            }
            other => return Err(AgentError::Unexpected(Box::new(other))),
        }
        if let Some((mut sock, mut reader)) = input {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut reader, &mut sock);
                let _ = sock.shutdown(std::net::Shutdown::Write);
            });
        }
        Ok(())
    }

    /// The rest of [`AgentClient::run_with`] for a process with a terminal.
    fn run_terminal(
        &mut self,
        id: u32,
        role: ProcessRole,
        stdin: Option<Box<dyn Read + Send>>,
        mut stdout: impl Write + Send,
        started: impl FnOnce(u32),
    ) -> Result<i32, AgentError> {
        let mut term = self.attach(id, StdioKind::Tty)?;
        let stream = self.handle(&term)?;
        let input = match stdin {
            Some(r) => Some((self.handle(&term)?, r)),
            None => None,
        };
        self.start(id, input, started)?;
        std::thread::scope(|scope| {
            // The agent ends the stream when the terminal closes: when no
            // process holds it any more.
            let copy = scope.spawn(move || copy_flushing(&mut term, &mut stdout));
            let code = self.wait_exit(id, role);
            finish_copies([copy], &[stream], code.is_ok());
            code
        })
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
        let code = match self.call(&Request::Wait { id })? {
            Response::Exited { code, .. } => code,
            other => return Err(AgentError::Unexpected(Box::new(other))),
        };
        tracing::debug!("process {id} exited with {code}");
        if role == ProcessRole::Main {
            self.call(&Request::KillAll)?;
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
