//! A container's lifecycle state (`state.json`), written atomically.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Lifecycle phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Made, never started.
    Created,
    /// Its VMM process is running.
    Running,
    /// Ended.
    Exited,
    /// Its VMM was stopped by its seccomp filter (Docker's state for a
    /// container that could not be ended cleanly).
    Dead,
}

/// `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Phase.
    pub status: Status,
    /// PID of the hull process that runs the VMM, while running.
    pub vmm_pid: Option<i32>,
    /// That process's start time (clock ticks after boot, from
    /// `/proc/PID/stat`): a PID the kernel gave to another process since
    /// is not taken for the VMM (and never signalled as it).
    #[serde(default)]
    pub vmm_start: Option<u64>,
    /// PID of the confined VMM process that holds the guest (its RAM,
    /// vCPUs and devices; `guest::vmm_process`), while running.
    #[serde(default)]
    pub vm_pid: Option<i32>,
    /// That process's cgroup directories, removed when it ends (by hull
    /// after a kill -9 of the process supervising it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vm_cgroups: Vec<std::path::PathBuf>,
    /// Agent's id of the container's main process, while running.
    pub process_id: Option<u32>,
    /// When it last started (RFC 3339).
    pub started_at: Option<String>,
    /// When it last ended (RFC 3339).
    pub finished_at: Option<String>,
    /// Exit code of the main process (128+signal when killed).
    pub exit_code: Option<i32>,
    /// Why it ended abnormally, if it did.
    pub error: Option<String>,
    /// Host listeners of published ports, while running.
    #[serde(default)]
    pub ports: Vec<crate::ports::PortBinding>,
}

impl State {
    /// The state of a new container.
    pub fn created() -> Self {
        Self {
            status: Status::Created,
            vmm_pid: None,
            vmm_start: None,
            vm_pid: None,
            vm_cgroups: Vec::new(),
            process_id: None,
            started_at: None,
            finished_at: None,
            exit_code: None,
            error: None,
            ports: Vec::new(),
        }
    }

    /// Reads `dir/state.json`, and corrects a "running" state whose VMM
    /// process is gone (killed with -9, crashed): it is shown as exited with
    /// an error, never as running.
    pub fn load(dir: &Path) -> std::io::Result<Self> {
        let mut s: State = serde_json::from_slice(&std::fs::read(dir.join("state.json"))?)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        if s.status == Status::Running && s.vmm_process().is_none() {
            match seccomp_violation(dir) {
                Some(call) => {
                    s.status = Status::Dead;
                    s.exit_code = Some(vmm::seccomp::VIOLATION_EXIT);
                    s.error = Some(format!("seccomp violation: {call}"));
                }
                None => {
                    s.status = Status::Exited;
                    s.exit_code = s.exit_code.or(Some(255));
                    s.error = Some("VMM process died without recording an exit".into());
                }
            }
            s.vmm_pid = None;
            s.vmm_start = None;
            s.vm_pid = None;
            s.process_id = None;
            s.ports.clear();
        }
        Ok(s)
    }

    /// The recorded VMM process, if it still runs: the same PID with the
    /// same start time (a state written before start times were recorded
    /// is trusted on the PID alone).
    pub fn vmm_process(&self) -> Option<i32> {
        let pid = self.vmm_pid.filter(|p| pid_alive(*p))?;
        match self.vmm_start {
            Some(start) if process_start(pid) != Some(start) => None,
            _ => Some(pid),
        }
    }

    /// Records this process as the container's running VMM.
    pub fn set_vmm_self(&mut self) {
        let pid = std::process::id() as i32;
        self.vmm_pid = Some(pid);
        self.vmm_start = process_start(pid);
    }

    /// Writes `dir/state.json` atomically (temp file + rename).
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join(format!(".state.json.{}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::io::Write::write_all(&mut super::store::create_private(&tmp)?, &bytes)?;
        std::fs::rename(tmp, dir.join("state.json"))
    }
}

/// The file a container's VMM process writes the number of a call its
/// seccomp filter refused into (`vmm::seccomp`), just before it ends.
pub const SECCOMP_RECORD: &str = "seccomp-violation";

/// The name of the call recorded in `dir`'s [`SECCOMP_RECORD`], if any.
pub fn seccomp_violation(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(SECCOMP_RECORD)).ok()?;
    let nr: i64 = text.trim().parse().ok()?;
    Some(syscall_name(nr))
}

include!(concat!(env!("OUT_DIR"), "/syscall_names.rs"));

/// `ioctl`, or `syscall 999` for a number the build's headers lack.
pub fn syscall_name(nr: i64) -> String {
    SYSCALL_NAMES
        .iter()
        .find(|(n, _)| *n == nr)
        .map_or_else(|| format!("syscall {nr}"), |(_, name)| name.to_string())
}

/// Whether a process with this PID exists (and is not a zombie).
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3, after the parenthesised command name, is the state.
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|c| c != 'Z' && c != 'X'),
        Err(_) => false,
    }
}

/// When process `pid` started, in clock ticks after boot (field 22 of
/// `/proc/PID/stat`).
pub fn process_start(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the parenthesised command name, field 3 is the first.
    let rest = stat.rsplit_once(") ")?.1;
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Now, as RFC 3339 with nanoseconds in UTC.
pub fn now_rfc3339() -> String {
    images::time::now_rfc3339_nanos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_vmm_is_exited_with_an_error_never_running() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = State::created();
        s.status = Status::Running;
        s.vmm_pid = Some(std::process::id() as i32);
        s.save(dir.path()).unwrap();
        assert_eq!(State::load(dir.path()).unwrap().status, Status::Running);
        // A PID that cannot exist.
        s.vmm_pid = Some(i32::MAX);
        s.save(dir.path()).unwrap();
        let loaded = State::load(dir.path()).unwrap();
        assert_eq!(loaded.status, Status::Exited);
        assert!(loaded.error.unwrap().contains("died"));
    }

    #[test]
    fn a_reused_pid_is_not_the_vmm() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = State::created();
        s.status = Status::Running;
        s.set_vmm_self();
        assert!(s.vmm_start.is_some());
        assert_eq!(s.vmm_process(), Some(std::process::id() as i32));
        s.save(dir.path()).unwrap();
        assert_eq!(State::load(dir.path()).unwrap().status, Status::Running);
        // The same PID, started at another time: another process.
        s.vmm_start = s.vmm_start.map(|t| t + 1);
        assert_eq!(s.vmm_process(), None);
        s.save(dir.path()).unwrap();
        let loaded = State::load(dir.path()).unwrap();
        assert_eq!(loaded.status, Status::Exited);
        assert_eq!(loaded.vmm_pid, None);
    }
}
