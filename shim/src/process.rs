//! One process of a task (the init process: `hull run`; an exec: `hull
//! exec`) as containerd sees it: created, running with a host PID, then
//! stopped with an exit status that Wait hands out.

use std::os::fd::OwnedFd;
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::SystemTime;

use crate::stdio::{self, StdinSlot, StdioError, StdioPaths};

/// Errors of a process's life.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Started twice.
    #[error("process {0:?} already started")]
    AlreadyStarted(String),
    /// Its stdio could not be wired or hull not started.
    #[error("Starting process {0:?}")]
    Start(String, #[source] StdioError),
    /// Not a terminal process (ResizePty).
    #[error("process {0:?} has no terminal")]
    NoTerminal(String),
}

/// Where a process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Stopped,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: u32,
    pub at: SystemTime,
}

struct ProcState {
    status: Status,
    pid: u32,
    exit: Option<Exit>,
    stdin: Option<StdinSlot>,
    pty: Option<Arc<OwnedFd>>,
}

/// A task's process: what containerd asked for and what became of it.
pub struct Process {
    /// Empty for the init process.
    pub exec_id: String,
    pub stdio: StdioPaths,
    state: Mutex<ProcState>,
    exited: Condvar,
}

impl Process {
    pub fn new(exec_id: &str, stdio: StdioPaths) -> Arc<Self> {
        Arc::new(Process {
            exec_id: exec_id.into(),
            stdio,
            state: Mutex::new(ProcState {
                status: Status::Created,
                pid: 0,
                exit: None,
                stdin: None,
                pty: None,
            }),
            exited: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ProcState> {
        // A panic elsewhere must not take the task down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (status, host PID, exit).
    pub fn snapshot(&self) -> (Status, u32, Option<Exit>) {
        let s = self.lock();
        (s.status, s.pid, s.exit)
    }

    /// Runs `cmd` on our stdio; `on_exit` is called (from a waiter
    /// thread) once it ended and its output was delivered. Returns its PID.
    pub fn start(
        self: &Arc<Self>,
        cmd: Command,
        on_exit: impl FnOnce(u32, Exit) + Send + 'static,
    ) -> Result<u32, ProcessError> {
        let mut state = self.lock();
        if state.status != Status::Created {
            return Err(ProcessError::AlreadyStarted(self.exec_id.clone()));
        }
        let (mut child, attached) = stdio::spawn(cmd, &self.stdio)
            .map_err(|e| ProcessError::Start(self.exec_id.clone(), e))?;
        let pid = child.id();
        state.status = Status::Running;
        state.pid = pid;
        state.stdin = Some(attached.stdin);
        state.pty = attached.pty;
        drop(state);
        let me = self.clone();
        let output = attached.output;
        std::thread::spawn(move || {
            let code = match child.wait() {
                Ok(s) => exit_code(s),
                Err(_) => 255,
            };
            if let Some(relay) = output {
                let _ = relay.join();
            }
            let exit = me.finish(code);
            on_exit(pid, exit);
        });
        Ok(pid)
    }

    /// Records the exit and wakes the waiters.
    fn finish(&self, code: u32) -> Exit {
        let exit = Exit {
            code,
            at: SystemTime::now(),
        };
        let mut state = self.lock();
        state.status = Status::Stopped;
        state.exit = Some(exit);
        // Its relay thread ends once the FIFO is drained.
        if let Some(relay) = state.stdin.take() {
            relay.close();
        }
        state.pty = None;
        self.exited.notify_all();
        exit
    }

    /// Blocks until the process has exited (a never-started one: until it
    /// is started and exits, as containerd expects).
    pub fn wait(&self) -> Exit {
        let mut state = self.lock();
        loop {
            if let Some(exit) = state.exit {
                return exit;
            }
            state = self.exited.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Marks a process that never ran as stopped (task deleted unstarted).
    pub fn abandon(&self) {
        if self.lock().status == Status::Created {
            self.finish(0);
        }
    }

    /// CloseIO: ends the process's stdin.
    pub fn close_stdin(&self) {
        let relay = self.lock().stdin.clone();
        if let Some(relay) = relay {
            relay.close();
        }
    }

    /// ResizePty.
    pub fn resize(&self, width: u32, height: u32) -> Result<(), ProcessError> {
        let pty = self.lock().pty.clone();
        let pty = pty.ok_or_else(|| ProcessError::NoTerminal(self.exec_id.clone()))?;
        let clamp = |v: u32| v.min(u16::MAX as u32) as u16;
        stdio::resize(&pty, clamp(width), clamp(height))
            .map_err(|e| ProcessError::Start(self.exec_id.clone(), e))
    }

    /// Sends `signal` to the hull process itself (hull forwards INT, TERM,
    /// HUP and QUIT to the process in the VM; KILL ends hull and so it).
    pub fn signal_host(&self, signal: u32) -> std::io::Result<()> {
        let (status, pid, _) = self.snapshot();
        if status != Status::Running || pid == 0 {
            return Err(std::io::ErrorKind::NotFound.into());
        }
        // SAFETY: kill(2) on a PID we spawned and have not yet reaped (the
        // waiter thread reaps it only after it exits), so it is ours.
        if unsafe { libc::kill(pid as libc::pid_t, signal as libc::c_int) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A shell-style exit code: the status, or 128 + the signal.
fn exit_code(status: std::process::ExitStatus) -> u32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c as u32,
        (None, Some(s)) => 128 + s as u32,
        (None, None) => 255,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_returns_the_exit_code_of_the_command() {
        let p = Process::new("e", StdioPaths::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exit 7"]);
        let pid = p
            .start(cmd, move |pid, exit| tx.send((pid, exit.code)).unwrap())
            .unwrap();
        assert_eq!(p.wait().code, 7);
        assert_eq!(rx.recv().unwrap(), (pid, 7));
        assert_eq!(p.snapshot().0, Status::Stopped);
    }

    #[test]
    fn a_signal_shows_as_128_plus_it() {
        let p = Process::new("", StdioPaths::default());
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        p.start(cmd, |_, _| {}).unwrap();
        p.signal_host(9).unwrap();
        assert_eq!(p.wait().code, 137);
    }
}
