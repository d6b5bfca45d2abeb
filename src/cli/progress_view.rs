//! How `hull run`/`start -a` show the slow stages of a first start on
//! stderr (stdout belongs to the container): on a terminal a live line per
//! stage with a spinner and its time, left as `✓ stage: detail (1.5s)`
//! when it ends; `--progress plain` one line per stage as it ends; nothing
//! when stderr is not a terminal (Docker's rule for pull output) or with
//! `-q`/`--progress quiet`.

use std::fs::File;
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::progress::{Progress, Stage};

/// `--progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ProgressMode {
    /// Live on a terminal, nothing otherwise.
    #[default]
    Auto,
    /// Live lines (stderr must be a terminal to see them).
    Tty,
    /// One line per stage with its duration, terminal or not.
    Plain,
    /// Nothing.
    Quiet,
}

/// Shows stages as the mode says.
pub struct StageView {
    live: Option<Live>,
    plain: bool,
}

/// The live lines: one spinner per running stage.
struct Live {
    multi: MultiProgress,
    bars: Mutex<Vec<(Stage, ProgressBar)>>,
}

impl StageView {
    /// A view for `mode`; `quiet` (`-q`) wins over it.
    pub fn new(mode: ProgressMode, quiet: bool) -> Self {
        let tty = std::io::stderr().is_terminal();
        let mode = match mode {
            _ if quiet => ProgressMode::Quiet,
            ProgressMode::Auto if tty => ProgressMode::Tty,
            ProgressMode::Auto => ProgressMode::Quiet,
            m => m,
        };
        Self {
            live: (mode == ProgressMode::Tty).then(|| Live {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                bars: Mutex::new(Vec::new()),
            }),
            plain: mode == ProgressMode::Plain,
        }
    }
}

/// `Preparing the image's filesystem: 1 layer, 2.0 MB (1.5s)`,
/// `Booting the template VM (14.2s)` or `...: failed (3.0s)`.
fn end_line(stage: Stage, took: Duration, ok: bool, detail: Option<&str>) -> String {
    let what = match (ok, detail) {
        (false, _) => ": failed".to_string(),
        (true, Some(d)) => format!(": {d}"),
        (true, None) => String::new(),
    };
    format!("{}{what} ({:.1}s)", stage.describe(), took.as_secs_f64())
}

impl Progress for StageView {
    fn begin(&self, stage: Stage) {
        let Some(live) = &self.live else { return };
        let style = ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bar = live.multi.add(ProgressBar::new_spinner().with_style(style));
        bar.set_message(stage.describe());
        bar.enable_steady_tick(Duration::from_millis(120));
        if let Ok(mut bars) = live.bars.lock() {
            bars.push((stage, bar));
        }
    }

    fn end(&self, stage: Stage, took: Duration, ok: bool, detail: Option<&str>) {
        let line = end_line(stage, took, ok, detail);
        if self.plain {
            eprintln!("{line}");
        }
        let Some(live) = &self.live else { return };
        let bar = live.bars.lock().ok().and_then(|mut bars| {
            let i = bars.iter().rposition(|(s, _)| *s == stage)?;
            Some(bars.remove(i).1)
        });
        if let Some(bar) = bar {
            bar.set_style(
                ProgressStyle::with_template("{msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.finish_with_message(format!("{} {line}", if ok { "✓" } else { "✗" }));
        }
    }

    fn update(&self, stage: Stage, detail: &str) {
        let Some(live) = &self.live else { return };
        let Ok(bars) = live.bars.lock() else { return };
        if let Some((_, bar)) = bars.iter().rev().find(|(s, _)| *s == stage) {
            bar.set_message(format!("{}: {detail}", stage.describe()));
        }
    }
}

/// One stage event as a detached container's VMM process records it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Event {
    stage: Stage,
    /// None: the stage began (or, with `update`, went on).
    end: Option<EndEvent>,
    /// How far the running stage is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    update: Option<String>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct EndEvent {
    secs: f64,
    ok: bool,
    detail: Option<String>,
}

/// Records stages as JSON lines in a file: a detached container's VMM
/// process has no terminal, so the `run -d`/`start` waiting for it reads
/// them back ([`StageFileReader`]) and shows them itself.
pub struct StageFile(Mutex<File>);

impl StageFile {
    /// Appends to `path` (the starter truncated it).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self(Mutex::new(f)))
    }

    fn record(&self, event: &Event) {
        // Progress is a courtesy: a write that fails costs the user a
        // line, never the container.
        if let (Ok(mut f), Ok(line)) = (self.0.lock(), serde_json::to_string(event)) {
            let _ = writeln!(f, "{line}");
        }
    }
}

impl Progress for StageFile {
    fn begin(&self, stage: Stage) {
        self.record(&Event {
            stage,
            end: None,
            update: None,
        });
    }

    fn update(&self, stage: Stage, detail: &str) {
        self.record(&Event {
            stage,
            end: None,
            update: Some(detail.to_string()),
        });
    }

    fn end(&self, stage: Stage, took: Duration, ok: bool, detail: Option<&str>) {
        self.record(&Event {
            stage,
            end: Some(EndEvent {
                secs: took.as_secs_f64(),
                ok,
                detail: detail.map(String::from),
            }),
            update: None,
        });
    }
}

/// Reads what a [`StageFile`] gained since the last call.
pub struct StageFileReader {
    path: PathBuf,
    offset: u64,
}

impl StageFileReader {
    /// Truncates `path` (no stale stages of an earlier start) and reads it
    /// from the start.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        // In the container's directory, where every file is root's only.
        crate::container::store::create_private(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            offset: 0,
        })
    }

    /// Passes the complete new events to `to`.
    pub fn replay(&mut self, to: &dyn Progress) {
        let mut text = String::new();
        let read = File::open(&self.path).and_then(|mut f| {
            f.seek(SeekFrom::Start(self.offset))?;
            f.read_to_string(&mut text)
        });
        if read.is_err() {
            return;
        }
        // A line still being written waits for the next call.
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        for line in text[..complete].lines() {
            match serde_json::from_str::<Event>(line) {
                Ok(Event {
                    stage,
                    end: None,
                    update: None,
                }) => to.begin(stage),
                Ok(Event {
                    stage,
                    end: None,
                    update: Some(d),
                }) => to.update(stage, &d),
                Ok(Event {
                    stage,
                    end: Some(e),
                    ..
                }) => to.end(
                    stage,
                    Duration::from_secs_f64(e.secs.max(0.0)),
                    e.ok,
                    e.detail.as_deref(),
                ),
                Err(_) => {}
            }
        }
        self.offset += complete as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_lines_name_the_stage_and_its_time() {
        assert_eq!(
            end_line(
                Stage::PrepareRootfs,
                Duration::from_millis(1500),
                true,
                Some("1 layer, 2.0 MB")
            ),
            "Preparing the image's filesystem: 1 layer, 2.0 MB (1.5s)"
        );
        assert_eq!(
            end_line(Stage::BootTemplate, Duration::from_secs(14), false, None),
            "Booting the template VM: failed (14.0s)"
        );
        assert_eq!(
            end_line(Stage::SaveSnapshot, Duration::from_millis(260), true, None),
            "Saving the VM snapshot (0.3s)"
        );
        let quiet = StageView::new(ProgressMode::Plain, true);
        assert!(!quiet.plain && quiet.live.is_none());
    }

    #[test]
    fn a_stage_file_replays_complete_events_once() {
        struct Lines(Mutex<Vec<String>>);
        impl Progress for Lines {
            fn begin(&self, s: Stage) {
                self.0.lock().unwrap().push(format!("begin {s:?}"));
            }
            fn end(&self, s: Stage, t: Duration, ok: bool, d: Option<&str>) {
                self.0.lock().unwrap().push(end_line(s, t, ok, d));
            }
            fn update(&self, s: Stage, d: &str) {
                self.0.lock().unwrap().push(format!("{s:?}: {d}"));
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("progress");
        std::fs::write(&path, "stale\n").unwrap();
        let mut reader = StageFileReader::create(&path).unwrap();
        let file = StageFile::open(&path).unwrap();
        let seen = Lines(Mutex::new(Vec::new()));
        file.begin(Stage::PrepareRootfs);
        reader.replay(&seen);
        file.update(Stage::PrepareRootfs, "1.5 MB written");
        file.end(
            Stage::PrepareRootfs,
            Duration::from_secs(2),
            true,
            Some("1 layer"),
        );
        // Half a line: not yet.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"stage\":\"BootTe")
            .unwrap();
        reader.replay(&seen);
        reader.replay(&seen);
        assert_eq!(
            *seen.0.lock().unwrap(),
            [
                "begin PrepareRootfs",
                "PrepareRootfs: 1.5 MB written",
                "Preparing the image's filesystem: 1 layer (2.0s)"
            ]
        );
    }
}
