//! Container logs: JSON lines like Docker's json-file driver
//! (`{"log":"...","stream":"stdout","time":"..."}`), one entry per line of
//! output (a trailing partial line is an entry too).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::state::now_rfc3339;

/// One log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The bytes written (lossy UTF-8), newline included.
    pub log: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// When it was written, RFC 3339.
    pub time: String,
}

/// Opens (appending) the log file of a container directory.
pub fn open(dir: &Path) -> std::io::Result<Arc<Mutex<File>>> {
    use std::os::unix::fs::OpenOptionsExt;
    // Its owner only: what the container prints may be secret.
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(dir.join("container.log"))?;
    Ok(Arc::new(Mutex::new(f)))
}

/// A `Write` that appends what a stream produces to the log, and also to
/// `echo` (the terminal of an attached `hull run`) when given.
pub struct LogWriter<W: Write> {
    file: Arc<Mutex<File>>,
    stream: &'static str,
    partial: Vec<u8>,
    echo: Option<W>,
}

impl<W: Write> LogWriter<W> {
    /// A writer for `stream` ("stdout"/"stderr").
    pub fn new(file: Arc<Mutex<File>>, stream: &'static str, echo: Option<W>) -> Self {
        Self {
            file,
            stream,
            partial: Vec::new(),
            echo,
        }
    }

    fn emit(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let entry = Entry {
            log: String::from_utf8_lossy(bytes).into_owned(),
            stream: self.stream.to_string(),
            time: now_rfc3339(),
        };
        let mut line = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(&line)
    }
}

impl<W: Write> Write for LogWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(echo) = self.echo.as_mut() {
            echo.write_all(buf)?;
            echo.flush()?;
        }
        self.partial.extend_from_slice(buf);
        while let Some(i) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            self.emit(&line)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            self.emit(&rest)?;
        }
        if let Some(echo) = self.echo.as_mut() {
            echo.flush()?;
        }
        Ok(())
    }
}

/// Prints the log of `dir`: the last `tail` entries (all if `None`), with
/// timestamps if asked; with `follow`, keeps printing new entries while
/// `running()` says the container runs.
pub fn print(
    dir: &Path,
    tail: Option<usize>,
    timestamps: bool,
    follow: bool,
    running: impl Fn() -> bool,
) -> std::io::Result<()> {
    let path = dir.join("container.log");
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::open("/dev/null")?,
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::new(file);
    let mut entries = Vec::new();
    let mut line = String::new();
    while reader.read_line(&mut line)? > 0 {
        if line.ends_with('\n') {
            if let Ok(e) = serde_json::from_str::<Entry>(&line) {
                entries.push(e);
            }
            line.clear();
        }
    }
    let skip = tail.map_or(0, |n| entries.len().saturating_sub(n));
    for e in &entries[skip..] {
        show(e, timestamps)?;
    }
    if !follow {
        return Ok(());
    }
    loop {
        let alive = running();
        let pos = reader.stream_position()?;
        let mut got = false;
        while reader.read_line(&mut line)? > 0 {
            if !line.ends_with('\n') {
                break;
            }
            if let Ok(e) = serde_json::from_str::<Entry>(&line) {
                show(&e, timestamps)?;
            }
            line.clear();
            got = true;
        }
        if !line.is_empty() {
            // A half-written entry: read it again next time.
            reader.seek(SeekFrom::Start(pos))?;
            line.clear();
        }
        if !alive && !got {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn show(e: &Entry, timestamps: bool) -> std::io::Result<()> {
    let text = if timestamps {
        format!("{} {}", e.time, e.log)
    } else {
        e.log.clone()
    };
    if e.stream == "stderr" {
        let mut err = std::io::stderr().lock();
        err.write_all(text.as_bytes())?;
        err.flush()
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_entries_and_partial_lines_flush() {
        let dir = tempfile::tempdir().unwrap();
        let file = open(dir.path()).unwrap();
        let mut out = LogWriter::<std::io::Sink>::new(file.clone(), "stdout", None);
        let mut err = LogWriter::<std::io::Sink>::new(file, "stderr", None);
        out.write_all(b"a\nb").unwrap();
        err.write_all(b"oops\n").unwrap();
        out.write_all(b"c\n").unwrap();
        out.write_all(b"tail").unwrap();
        out.flush().unwrap();
        let text = std::fs::read_to_string(dir.path().join("container.log")).unwrap();
        let entries: Vec<Entry> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let got: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| (e.stream.as_str(), e.log.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("stdout", "a\n"),
                ("stderr", "oops\n"),
                ("stdout", "bc\n"),
                ("stdout", "tail")
            ]
        );
    }
}
