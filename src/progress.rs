//! Progress of the long work a first run does (preparing an image's root
//! filesystem, booting the template VM, saving snapshots): the code doing
//! it names each stage through a [`Progress`] it is handed; what the user
//! sees (a live line, plain lines, nothing) is the caller's choice
//! (`cli::progress_view`). `hull run` and `hull build` hand one down;
//! everything else passes none.

use std::time::{Duration, Instant};

/// A stage of starting a container's VM that can take a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Stage {
    /// The helper VM turns the image's layers into its root filesystem.
    PrepareRootfs,
    /// A template VM boots a kernel (once per VM shape).
    BootTemplate,
    /// The booted VM is saved as a snapshot later VMs start from.
    SaveSnapshot,
    /// A VM restored with the image mounted is saved as the image's warm
    /// snapshot.
    WarmSnapshot,
}

impl Stage {
    /// What the stage does, for the user.
    pub fn describe(self) -> &'static str {
        match self {
            Stage::PrepareRootfs => "Preparing the image's filesystem",
            Stage::BootTemplate => "Booting the template VM",
            Stage::SaveSnapshot => "Saving the VM snapshot",
            Stage::WarmSnapshot => "Saving the image's warm snapshot",
        }
    }
}

/// Receives stage starts and ends. Stages may nest (preparing a root
/// filesystem can boot the helper's template VM).
pub trait Progress: Sync {
    /// `stage` started.
    fn begin(&self, stage: Stage);
    /// `stage` ended after `took`; `detail` says what it did
    /// (`3 layers, 4.2 MB`), `ok` whether it succeeded.
    fn end(&self, stage: Stage, took: Duration, ok: bool, detail: Option<&str>);
    /// How far the running `stage` is (`12.3 MB written`), a few times a
    /// second at most. Views that show only ends ignore it.
    fn update(&self, _stage: Stage, _detail: &str) {}
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Progress for Silent {
    fn begin(&self, _: Stage) {}
    fn end(&self, _: Stage, _: Duration, _: bool, _: Option<&str>) {}
}

/// A started stage: ends as failed when dropped without [`Running::done`],
/// so an early `?` return still closes it.
pub struct Running<'a> {
    progress: &'a dyn Progress,
    stage: Stage,
    started: Instant,
    ended: bool,
}

/// Starts `stage` on `progress`.
pub fn begin(progress: &dyn Progress, stage: Stage) -> Running<'_> {
    progress.begin(stage);
    Running {
        progress,
        stage,
        started: Instant::now(),
        ended: false,
    }
}

impl Running<'_> {
    /// The stage succeeded.
    pub fn done(self) {
        self.done_with(None);
    }

    /// The stage succeeded; `detail` says what it did.
    pub fn done_with(mut self, detail: Option<&str>) {
        self.ended = true;
        self.progress
            .end(self.stage, self.started.elapsed(), true, detail);
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.progress
                .end(self.stage, self.started.elapsed(), false, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Record(Mutex<Vec<String>>);

    impl Progress for Record {
        fn begin(&self, s: Stage) {
            self.0.lock().unwrap().push(format!("begin {s:?}"));
        }
        fn end(&self, s: Stage, _: Duration, ok: bool, detail: Option<&str>) {
            self.0
                .lock()
                .unwrap()
                .push(format!("end {s:?} {ok} {}", detail.unwrap_or("-")));
        }
    }

    #[test]
    fn stages_end_once_and_failed_when_dropped() {
        let r = Record::default();
        begin(&r, Stage::BootTemplate).done();
        begin(&r, Stage::PrepareRootfs).done_with(Some("1 layer"));
        drop(begin(&r, Stage::SaveSnapshot));
        assert_eq!(
            *r.0.lock().unwrap(),
            [
                "begin BootTemplate",
                "end BootTemplate true -",
                "begin PrepareRootfs",
                "end PrepareRootfs true 1 layer",
                "begin SaveSnapshot",
                "end SaveSnapshot false -",
            ]
        );
    }
}
