//! How `hull run`/`start -a` show the slow stages of a first start on
//! stderr (stdout belongs to the container): on a terminal a live line per
//! stage with a spinner and its time, left as `✓ stage: detail (1.5s)`
//! when it ends; `--progress plain` one line per stage as it ends; nothing
//! when stderr is not a terminal (Docker's rule for pull output) or with
//! `-q`/`--progress quiet`.

use std::io::IsTerminal;
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
}
