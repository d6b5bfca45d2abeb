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
}

/// `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Phase.
    pub status: Status,
    /// PID of the hull process that runs the VMM, while running.
    pub vmm_pid: Option<i32>,
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
}

impl State {
    /// The state of a new container.
    pub fn created() -> Self {
        Self {
            status: Status::Created,
            vmm_pid: None,
            process_id: None,
            started_at: None,
            finished_at: None,
            exit_code: None,
            error: None,
        }
    }

    /// Reads `dir/state.json`, and corrects a "running" state whose VMM
    /// process is gone (killed with -9, crashed): it is shown as exited with
    /// an error, never as running.
    pub fn load(dir: &Path) -> std::io::Result<Self> {
        let mut s: State = serde_json::from_slice(&std::fs::read(dir.join("state.json"))?)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        if s.status == Status::Running && !s.vmm_pid.is_some_and(pid_alive) {
            s.status = Status::Exited;
            s.exit_code = s.exit_code.or(Some(255));
            s.error = Some("VMM process died without recording an exit".into());
            s.vmm_pid = None;
        }
        Ok(s)
    }

    /// Writes `dir/state.json` atomically (temp file + rename).
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join(format!(".state.json.{}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(tmp, dir.join("state.json"))
    }
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

/// Now, as RFC 3339 with nanoseconds in UTC.
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_nanos())
}

/// Formats seconds since the epoch as RFC 3339 UTC.
pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm, public domain description).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(1_795_788_000, 5), "2026-11-27T14:00:00.000000005Z");
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00.000000000Z");
    }
}
