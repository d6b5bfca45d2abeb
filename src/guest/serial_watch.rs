//! Watches the guest's serial output for the agent's status lines, and
//! optionally echoes everything to our stdout.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_protocol::Status;

/// Status lines seen so far, with when (since the watcher was made) they came.
pub type SeenStatus = Arc<Mutex<Vec<(Duration, Status)>>>;

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
                start: Instant::now(),
                seen: seen.clone(),
            },
            seen,
        )
    }

    fn end_line(&mut self) {
        let line = String::from_utf8_lossy(&self.line).trim_end().to_string();
        if let Some(status) = Status::parse(&line) {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.push((self.start.elapsed(), status));
        } else if !line.is_empty() {
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
            } else if self.line.len() < 4096 {
                // A guest that never ends its line cannot make us grow.
                self.line.push(b);
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
}
