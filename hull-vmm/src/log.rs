//! The VMM process's log: warnings and errors, one line each on stderr
//! (the container's `vmm.log`). A hand-written `tracing` subscriber rather
//! than `tracing-subscriber`: this binary is kept small (docs/measurements.md)
//! and needs nothing but a level filter and a line per event. Guest
//! misbehaviour reaches the log this way, sampled by the devices
//! (`vmm::virtio::misbehaviour`).

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

struct StderrWarnings;

/// The event's message, then its other fields as `name=value`.
struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl Subscriber for StderrWarnings {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= Level::WARN
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::WARN)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = Line(String::new());
        event.record(&mut line);
        let meta = event.metadata();
        eprintln!("hull-vmm: {} {}: {}", meta.level(), meta.target(), line.0);
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// Installs the subscriber for the whole process (once; later calls are
/// no-ops).
pub fn init() {
    let _ = tracing::subscriber::set_global_default(StderrWarnings);
}
