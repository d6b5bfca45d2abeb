//! What `hull build` prints, like BuildKit's plain progress on stderr:
//! `#N [stage i/n] INSTRUCTION`, each line a step prints as `#N <secs>
//! line`, then `#N CACHED` or `#N DONE 1.2s`. With `-q` nothing but the
//! image ID (on stdout); the last lines of a failing step's output are
//! kept for its error either way.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Lines of a step's output kept for the error of a failing step.
const TAIL_LINES: usize = 10;

/// The build's progress display.
#[derive(Debug)]
pub struct Progress {
    quiet: bool,
    next: u32,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        Progress { quiet, next: 1 }
    }

    fn say(&self, text: &str) {
        if !self.quiet {
            eprintln!("{text}");
        }
    }

    /// Starts a numbered entry; returns its number.
    pub fn begin(&mut self, label: &str) -> Step {
        let n = self.next;
        self.next += 1;
        self.say(&format!("#{n} {label}"));
        Step {
            n,
            start: Instant::now(),
            quiet: self.quiet,
        }
    }
}

/// One numbered entry of the display.
#[derive(Debug)]
pub struct Step {
    n: u32,
    start: Instant,
    quiet: bool,
}

impl Step {
    fn say(&self, text: &str) {
        if !self.quiet {
            eprintln!("#{} {text}", self.n);
        }
    }

    /// The step's result came from the cache.
    pub fn cached(&self) {
        self.say("CACHED");
    }

    /// The step finished.
    pub fn done(&self) {
        self.say(&format!("DONE {:.1}s", self.start.elapsed().as_secs_f64()));
    }

    /// A line about the step.
    pub fn note(&self, text: &str) {
        self.say(text);
    }

    /// Writers for the step's stdout and stderr (same display, one tail).
    pub fn output(&self) -> (StepOutput, StepOutput, Tail) {
        let shared = Arc::new(Mutex::new(Shared {
            tail: VecDeque::new(),
            partial: [Vec::new(), Vec::new()],
        }));
        let out = |stream| StepOutput {
            n: self.n,
            start: self.start,
            quiet: self.quiet,
            stream,
            shared: shared.clone(),
        };
        (out(0), out(1), Tail(shared.clone()))
    }
}

#[derive(Debug)]
struct Shared {
    tail: VecDeque<String>,
    /// A line not ended yet, per stream.
    partial: [Vec<u8>; 2],
}

/// The last lines a step printed.
#[derive(Debug)]
pub struct Tail(Arc<Mutex<Shared>>);

impl Tail {
    pub fn lines(&self) -> Vec<String> {
        let s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut lines: Vec<String> = s.tail.iter().cloned().collect();
        for p in &s.partial {
            if !p.is_empty() {
                lines.push(String::from_utf8_lossy(p).into_owned());
            }
        }
        lines
    }
}

/// One of a step's output streams, shown line by line.
#[derive(Debug)]
pub struct StepOutput {
    n: u32,
    start: Instant,
    quiet: bool,
    stream: usize,
    shared: Arc<Mutex<Shared>>,
}

impl Write for StepOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        for &b in buf {
            if b != b'\n' {
                s.partial[self.stream].push(b);
                continue;
            }
            let line = String::from_utf8_lossy(&s.partial[self.stream]).into_owned();
            s.partial[self.stream].clear();
            if !self.quiet {
                let secs = self.start.elapsed().as_secs_f64();
                eprintln!("#{} {secs:.3} {line}", self.n);
            }
            if s.tail.len() == TAIL_LINES {
                s.tail.pop_front();
            }
            s.tail.push_back(line);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_last_lines_of_both_streams() {
        let step = Progress::new(true).begin("x");
        let (mut out, mut err, tail) = step.output();
        for i in 0..15 {
            writeln!(out, "out {i}").unwrap();
        }
        err.write_all(b"err line\npartial").unwrap();
        let lines = tail.lines();
        assert_eq!(lines.len(), TAIL_LINES + 1);
        assert_eq!(lines[0], "out 6");
        assert_eq!(lines[TAIL_LINES - 1], "err line");
        assert_eq!(lines[TAIL_LINES], "partial");
    }
}
