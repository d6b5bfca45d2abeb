//! Watches the guest's serial output for the agent's status lines, and
//! optionally echoes everything to our stdout.
//!
//! The serial port is guest-controlled for the VM's whole life (a
//! container's root process can write to the console), so what is kept
//! is bounded: lines are cut at [`MAX_LINE`] bytes and only the first
//! [`KEPT_STATUS`] status lines plus the latest one are stored; the rest
//! are counted and reported once as guest misbehaviour.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_protocol::Status;

/// Longest console line kept; the rest of a longer line is dropped.
pub const MAX_LINE: usize = 4096;
/// Status lines kept from the start of the VM. The agent prints two or
/// three (ready, maybe an error, shutdown); more is a guest flooding us.
pub const KEPT_STATUS: usize = 16;

/// The status lines of one VM, bounded: the first [`KEPT_STATUS`] (the
/// first one decides readiness) and the latest, with counts of what was
/// dropped.
#[derive(Debug, Default, Clone)]
pub struct StatusLog {
    /// The first status lines, with when (since the watcher was made) they came.
    first: Vec<(Duration, Status)>,
    /// The latest status line once `first` is full.
    latest: Option<(Duration, Status)>,
    /// Status lines neither in `first` nor the latest.
    dropped: u64,
    /// Console lines longer than [`MAX_LINE`] (cut).
    overlong: u64,
}

impl StatusLog {
    /// The first status line the guest printed.
    pub fn first(&self) -> Option<&Status> {
        self.first.first().map(|(_, s)| s)
    }

    /// The status lines kept, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &(Duration, Status)> {
        self.first.iter().chain(self.latest.as_ref())
    }

    /// Status lines the guest printed beyond what is kept.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Console lines that were longer than [`MAX_LINE`].
    pub fn overlong(&self) -> u64 {
        self.overlong
    }

    /// Records a status line; true when this is the first one dropped.
    fn push(&mut self, at: Duration, status: Status) -> bool {
        if self.first.len() < KEPT_STATUS {
            self.first.push((at, status));
            return false;
        }
        if self.latest.replace((at, status)).is_some() {
            self.dropped += 1;
            return self.dropped == 1;
        }
        false
    }
}

/// The status lines of the VM a watcher watches.
pub type SeenStatus = Arc<Mutex<StatusLog>>;

/// The last lines of guest console output that were not status lines (a
/// kernel panic, an agent error), for error messages; one per process is
/// enough since a process watches one VM at a time.
static CONSOLE_TAIL: Mutex<std::collections::VecDeque<String>> =
    Mutex::new(std::collections::VecDeque::new());
const CONSOLE_TAIL_LINES: usize = 8;

/// The last console lines of the guest this process ran, oldest first.
pub fn console_tail() -> Vec<String> {
    CONSOLE_TAIL
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect()
}

/// A `Write` for the VMM's serial port.
pub struct SerialWatcher {
    echo: bool,
    line: Vec<u8>,
    /// The current line is longer than [`MAX_LINE`].
    line_cut: bool,
    start: Instant,
    seen: SeenStatus,
}

impl SerialWatcher {
    /// A watcher; `echo` copies the guest's output to stdout.
    pub fn new(echo: bool) -> (Self, SeenStatus) {
        let seen = SeenStatus::default();
        (
            Self {
                echo,
                line: Vec::new(),
                line_cut: false,
                start: Instant::now(),
                seen: seen.clone(),
            },
            seen,
        )
    }

    fn end_line(&mut self) {
        let line = String::from_utf8_lossy(&self.line).trim_end().to_string();
        let cut = std::mem::take(&mut self.line_cut);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if cut {
            seen.overlong += 1;
            if seen.overlong == 1 {
                tracing::warn!("guest misbehaves: console line over {MAX_LINE} bytes (cut)");
            }
        }
        if let Some(status) = Status::parse(&line) {
            if seen.push(self.start.elapsed(), status) {
                tracing::warn!(
                    "guest misbehaves: more than {KEPT_STATUS} status lines on the console \
                     (keeping the first {KEPT_STATUS} and the latest)"
                );
            }
        } else if !line.is_empty() {
            tracing::debug!("console: {line}");
            let mut tail = CONSOLE_TAIL.lock().unwrap_or_else(|p| p.into_inner());
            if tail.len() == CONSOLE_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        self.line.clear();
    }
}

impl Write for SerialWatcher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.echo {
            let mut out = std::io::stdout().lock();
            out.write_all(buf)?;
            if buf.contains(&b'\n') {
                out.flush()?;
            }
        }
        for &b in buf {
            if b == b'\n' {
                self.end_line();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            } else {
                // A guest that never ends its line cannot make us grow.
                self.line_cut = true;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.echo {
            std::io::stdout().flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_collected_across_writes() {
        let (mut w, seen) = SerialWatcher::new(false);
        w.write_all(b"[ 1.0] Linux version 6.1\nhull-agent: rea")
            .unwrap();
        w.write_all(b"dy version=0.1.0 uptime=3.50\r\nhull-agent: shutdown status=0\n")
            .unwrap();
        let seen = seen.lock().unwrap();
        let statuses: Vec<_> = seen.iter().map(|(_, s)| s.clone()).collect();
        assert_eq!(seen.dropped(), 0);
        assert_eq!(
            statuses,
            vec![
                Status::Ready {
                    version: "0.1.0".into(),
                    uptime: 3.5
                },
                Status::Shutdown { code: 0 }
            ]
        );
    }

    /// Heap bytes a status log holds (the strings of error lines).
    fn held_bytes(log: &StatusLog) -> usize {
        log.iter()
            .map(|(_, s)| match s {
                Status::Error(e) => e.capacity(),
                Status::Ready { version, .. } => version.capacity(),
                Status::Shutdown { .. } => 0,
            })
            .sum()
    }

    #[test]
    fn a_flood_of_status_lines_is_bounded_and_counted() {
        let (mut w, seen) = SerialWatcher::new(false);
        w.write_all(b"hull-agent: ready version=0.1.0 uptime=1.00\n")
            .unwrap();
        // A container's root process writing fake status lines to the
        // console for as long as it likes: 100k lines of 1 KiB.
        let fake = format!("hull-agent: error {}\n", "x".repeat(1000));
        for _ in 0..100_000 {
            w.write_all(fake.as_bytes()).unwrap();
        }
        w.write_all(b"hull-agent: shutdown status=3\n").unwrap();
        let seen = seen.lock().unwrap();
        // The first line still decides, the latest is the real shutdown.
        assert!(matches!(seen.first(), Some(Status::Ready { .. })));
        assert_eq!(seen.iter().count(), KEPT_STATUS + 1);
        assert_eq!(
            seen.iter().last().map(|(_, s)| s.clone()),
            Some(Status::Shutdown { code: 3 })
        );
        assert_eq!(seen.dropped(), 100_001 - KEPT_STATUS as u64);
        // Bounded: at most KEPT_STATUS + 1 lines of at most MAX_LINE.
        assert!(held_bytes(&seen) <= (KEPT_STATUS + 1) * MAX_LINE);
    }

    #[test]
    fn an_endless_line_is_cut_and_counted() {
        let (mut w, seen) = SerialWatcher::new(false);
        let chunk = vec![b'y'; 1 << 20];
        for _ in 0..64 {
            w.write_all(&chunk).unwrap();
        }
        assert!(w.line.len() <= MAX_LINE);
        w.write_all(b"\nhull-agent: error ").unwrap();
        w.write_all(&chunk).unwrap();
        w.write_all(b"\n").unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.overlong(), 2);
        let Some(Status::Error(e)) = seen.first() else {
            panic!("no error line: {seen:?}");
        };
        assert!(e.len() <= MAX_LINE, "{}", e.len());
        assert!(console_tail().iter().all(|l| l.len() <= MAX_LINE));
    }
}
