//! What happened to containers, images, volumes and networks, for
//! `hull events`. Docker's daemon keeps these in memory; hull has no
//! daemon, so every hull process that changes an object appends one JSON
//! line to `<root>/events.jsonl`. One `write` with `O_APPEND` per event
//! keeps concurrent writers' lines whole. The log is rotated at
//! [`MAX_LOG`] (one older generation is kept, as `events.jsonl.1`).
//!
//! Recording is a courtesy: a failure to record costs a line of history,
//! never the operation that caused it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Errors reading the event log.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The log exists but cannot be read.
    #[error("cannot read the event log {0}")]
    Read(PathBuf, #[source] std::io::Error),
}

/// The log grows to this size before it is rotated.
const MAX_LOG: u64 = 1 << 20;
const LOG: &str = "events.jsonl";
const OLD_LOG: &str = "events.jsonl.1";

/// What an event is about (Docker's `Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A container.
    Container,
    /// An image.
    Image,
    /// A volume.
    Volume,
    /// A user network.
    Network,
}

impl Kind {
    /// Docker's name of the type (`container`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Container => "container",
            Kind::Image => "image",
            Kind::Volume => "volume",
            Kind::Network => "network",
        }
    }
}

/// The object an event is about (Docker's `Actor`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// Container ID, image reference or ID, volume or network name.
    #[serde(rename = "ID")]
    pub id: String,
    /// `name`, `image`, `exitCode`, `signal`, ...
    #[serde(rename = "Attributes")]
    pub attributes: BTreeMap<String, String>,
}

/// One event, in Docker's JSON shape (`hull events --format json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// What it is about.
    #[serde(rename = "Type")]
    pub kind: Kind,
    /// What happened: `create`, `start`, `die`, `destroy`, `pull`, ...
    #[serde(rename = "Action")]
    pub action: String,
    /// The object.
    #[serde(rename = "Actor")]
    pub actor: Actor,
    /// Always `local` (Docker's swarm scope does not exist here).
    pub scope: String,
    /// Seconds since the epoch.
    pub time: u64,
    /// Nanoseconds since the epoch.
    #[serde(rename = "timeNano")]
    pub time_nano: u128,
}

impl Event {
    /// An event happening now.
    pub fn now(kind: Kind, action: &str, id: &str, attributes: &[(&str, &str)]) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        Self {
            kind,
            action: action.to_string(),
            actor: Actor {
                id: id.to_string(),
                attributes: attributes
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
            scope: "local".into(),
            time: (nanos / 1_000_000_000) as u64,
            time_nano: nanos,
        }
    }

    /// Docker's line: `2026-12-06T19:05:42.123456789Z container start ID
    /// (image=busybox, name=web)`.
    pub fn line(&self) -> String {
        let secs = (self.time_nano / 1_000_000_000) as u64;
        let base = images::time::format_unix(secs);
        let when = format!(
            "{}.{:09}Z",
            base.trim_end_matches('Z'),
            self.time_nano % 1_000_000_000
        );
        let attrs: Vec<String> = self
            .actor
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut line = format!(
            "{when} {} {} {}",
            self.kind.name(),
            self.action,
            self.actor.id
        );
        if !attrs.is_empty() {
            line += &format!(" ({})", attrs.join(", "));
        }
        line
    }
}

/// Appends `event` to the log of hull root `root`.
pub fn record(root: &Path, event: &Event) {
    if let Err(e) = append(root, event) {
        tracing::debug!(
            "events: cannot record {} {}: {e}",
            event.kind.name(),
            event.action
        );
    }
}

/// Records an event about a container, with Docker's `name` and `image`
/// attributes and any `extra` ones (`exitCode`, `signal`).
pub fn container(
    root: &Path,
    config: &crate::container::spec::ContainerConfig,
    action: &str,
    extra: &[(&str, &str)],
) {
    let mut attrs = vec![
        ("image", config.image.as_str()),
        ("name", config.name.as_str()),
    ];
    attrs.extend_from_slice(extra);
    record(
        root,
        &Event::now(Kind::Container, action, &config.id, &attrs),
    );
}

fn append(root: &Path, event: &Event) -> std::io::Result<()> {
    let path = root.join(LOG);
    let mut line = serde_json::to_vec(event).map_err(std::io::Error::other)?;
    line.push(b'\n');
    if std::fs::metadata(&path).is_ok_and(|m| m.len() >= MAX_LOG) {
        rotate(root)?;
    }
    // What ran on this host, and when: root's business only.
    let mut f = std::os::unix::fs::OpenOptionsExt::mode(
        OpenOptions::new().create(true).append(true),
        0o600,
    )
    .open(&path)?;
    f.write_all(&line)
}

/// Moves a full log aside, under a lock so that two writers rotating at
/// once do not drop the older generation.
fn rotate(root: &Path) -> std::io::Result<()> {
    let _lock = crate::file_lock::lock_exclusive(&root.join(".events.lock"))?;
    let path = root.join(LOG);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() >= MAX_LOG) {
        std::fs::rename(&path, root.join(OLD_LOG))?;
    }
    Ok(())
}

/// Reads the log from where it was left, across rotations.
pub struct Follower {
    root: PathBuf,
    /// Inode of the log being read and how far it was read.
    inode: Option<u64>,
    offset: u64,
}

impl Follower {
    /// A follower at the start of the history (the older generation
    /// first, then the current log).
    pub fn from_start(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            inode: None,
            offset: 0,
        }
    }

    /// The events written since the last call (or the whole history on
    /// the first call), oldest first.
    pub fn poll(&mut self) -> Result<Vec<Event>, EventsError> {
        let current = self.root.join(LOG);
        let inode = match std::fs::metadata(&current) {
            Ok(m) => Some(m.ino()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(EventsError::Read(current, e)),
        };
        let mut events = Vec::new();
        if self.inode != inode {
            // First call, or the log was rotated since: the rest of the
            // log we were reading is the older generation now.
            let old = self.root.join(OLD_LOG);
            let from = if self.inode.is_some() { self.offset } else { 0 };
            let same_file = std::fs::metadata(&old).is_ok_and(|m| Some(m.ino()) == self.inode);
            if self.inode.is_none() || same_file {
                read_lines(&old, from, &mut events)?;
            }
            self.inode = inode;
            self.offset = 0;
        }
        if inode.is_some() {
            self.offset += read_lines(&current, self.offset, &mut events)?;
        }
        Ok(events)
    }
}

/// Parses the complete lines of `path` from `offset` into `out`; returns
/// the bytes consumed (a line still being written waits for the next
/// read). A missing file has no events; a line that is not an event
/// (a torn write of a crashed writer) is skipped.
fn read_lines(path: &Path, offset: u64, out: &mut Vec<Event>) -> Result<u64, EventsError> {
    let mut text = Vec::new();
    let read = File::open(path).and_then(|mut f| {
        f.seek(SeekFrom::Start(offset))?;
        f.read_to_end(&mut text)
    });
    match read {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(EventsError::Read(path.to_path_buf(), e)),
    }
    let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    for line in text[..complete].split(|&b| b == b'\n') {
        if let Ok(event) = serde_json::from_slice::<Event>(line) {
            out.push(event);
        }
    }
    Ok(complete as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_back_in_order_across_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut follower = Follower::from_start(root);
        assert!(follower.poll().unwrap().is_empty());
        record(root, &Event::now(Kind::Volume, "create", "data", &[]));
        let first = follower.poll().unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].action, "create");
        // Fill the log to its cap: the next event rotates it.
        let filler = Event::now(Kind::Image, "tag", &"x".repeat(1000), &[]);
        let mut n = 0;
        while std::fs::metadata(root.join(LOG)).unwrap().len() < MAX_LOG {
            record(root, &filler);
            n += 1;
        }
        record(root, &Event::now(Kind::Network, "destroy", "net", &[]));
        assert!(root.join(OLD_LOG).exists());
        let rest = follower.poll().unwrap();
        assert_eq!(
            rest.len(),
            n + 1,
            "no event lost or repeated over the rotation"
        );
        assert_eq!(rest.last().unwrap().kind, Kind::Network);
        // A new reader sees both generations.
        let all = Follower::from_start(root).poll().unwrap();
        assert_eq!(all.len(), n + 2);
    }

    #[test]
    fn a_half_written_line_waits_and_junk_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join(LOG), "not json\n{\"Type\":\"cont").unwrap();
        let mut follower = Follower::from_start(root);
        assert!(follower.poll().unwrap().is_empty());
        let mut f = OpenOptions::new()
            .append(true)
            .open(root.join(LOG))
            .unwrap();
        let rest = r#"ainer","Action":"start","Actor":{"ID":"abc","Attributes":{"name":"web"}},"scope":"local","time":1,"timeNano":1000000001}"#;
        writeln!(f, "{rest}").unwrap();
        let got = follower.poll().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].line(),
            "1970-01-01T00:00:01.000000001Z container start abc (name=web)"
        );
    }
}
