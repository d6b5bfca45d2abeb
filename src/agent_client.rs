//! The host side of the agent protocol, over the VM's hybrid vsock socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent::protocol::{self, ExecSpec, Request, Response, StdioKind, CONTROL_PORT, STREAM_PORT};

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
    /// The agent answered something unexpected.
    #[error("Unexpected reply from the guest agent: {0:?}")]
    Unexpected(Box<Response>),
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

/// One control connection.
pub struct AgentClient {
    uds: PathBuf,
    conn: UnixStream,
}

impl AgentClient {
    /// Connects and performs the version handshake.
    pub fn connect(uds: &Path) -> Result<Self, AgentError> {
        let mut conn = connect_port(uds, CONTROL_PORT)?;
        protocol::send(
            &mut conn,
            &Request::Hello {
                version: agent::VERSION.to_string(),
            },
        )?;
        match protocol::recv::<Response>(&mut conn)? {
            Response::Hello { .. } => Ok(Self {
                uds: uds.into(),
                conn,
            }),
            Response::Error { message } => Err(AgentError::Version(message)),
            other => Err(AgentError::Unexpected(Box::new(other))),
        }
    }

    /// Sends one request and reads its response; agent errors become `Err`.
    pub fn call(&mut self, req: &Request) -> Result<Response, AgentError> {
        protocol::send(&mut self.conn, req)?;
        match protocol::recv::<Response>(&mut self.conn)? {
            Response::Error { message } => Err(AgentError::Remote(message)),
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

    /// Creates a directory (and parents) in the guest.
    pub fn mkdir(&mut self, path: &str) -> Result<(), AgentError> {
        self.call(&Request::Mkdir { path: path.into() }).map(|_| ())
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

    /// Runs `spec` to completion: `stdin` (if any) is sent and closed, stdout
    /// and stderr are copied as they come. Returns the exit code (128+signal
    /// when killed).
    pub fn run(
        &mut self,
        spec: ExecSpec,
        stdin: Option<Box<dyn Read + Send>>,
        stdout: impl Write + Send,
        stderr: impl Write + Send,
    ) -> Result<i32, AgentError> {
        self.run_with(spec, stdin, stdout, stderr, |_| {})
    }

    /// Like [`AgentClient::run`], calling `started` with the agent's process
    /// id once the process runs (so it can be signalled from elsewhere).
    pub fn run_with(
        &mut self,
        spec: ExecSpec,
        stdin: Option<Box<dyn Read + Send>>,
        mut stdout: impl Write + Send,
        mut stderr: impl Write + Send,
        started: impl FnOnce(u32),
    ) -> Result<i32, AgentError> {
        let id = match self.call(&Request::Create(spec))? {
            Response::Created { id } => id,
            other => return Err(AgentError::Unexpected(Box::new(other))),
        };
        let input = match stdin {
            Some(r) => Some((self.attach(id, StdioKind::Stdin)?, r)),
            None => None,
        };
        let mut out = self.attach(id, StdioKind::Stdout)?;
        let mut err = self.attach(id, StdioKind::Stderr)?;
        tracing::debug!("process {id} created and attached");
        match self.call(&Request::Start { id })? {
            Response::Started { .. } => {
                tracing::debug!("process {id} started");
                started(id)
            }
            other => return Err(AgentError::Unexpected(Box::new(other))),
        }
        if let Some((mut sock, mut reader)) = input {
            // Detached: a process that exits without reading its stdin must
            // not keep us waiting on our own stdin.
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut reader, &mut sock);
                let _ = sock.shutdown(std::net::Shutdown::Write);
            });
        }
        let code = std::thread::scope(|scope| -> Result<i32, AgentError> {
            let err_copy = scope.spawn(move || {
                let _ = std::io::copy(&mut err, &mut stderr);
                let _ = stderr.flush();
            });
            let _ = std::io::copy(&mut out, &mut stdout);
            let _ = stdout.flush();
            let _ = err_copy.join();
            tracing::debug!("process {id} output closed");
            match self.call(&Request::Wait { id })? {
                Response::Exited { code, .. } => Ok(code),
                other => Err(AgentError::Unexpected(Box::new(other))),
            }
        })?;
        Ok(code)
    }

    /// Asks the agent to sync and end the VM.
    pub fn shutdown(mut self) -> Result<(), AgentError> {
        self.call(&Request::Shutdown).map(|_| ())
    }
}
