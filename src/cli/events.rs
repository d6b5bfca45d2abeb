//! `hull events`: the event log of a hull root (`crate::events`), printed
//! as Docker prints its daemon's events — the history since `--since`,
//! then new events as they happen, until `--until` or ^C.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;

use super::template::Template;
use crate::events::{Event, Follower, Kind};

/// Options of `hull events`.
#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Show events since this time: a Unix timestamp, an RFC 3339 date
    /// (`2026-12-06T19:00:00Z`, `2026-12-06`) or a duration before now
    /// (`10m`, `1h30m`). Default: only new events.
    #[arg(long)]
    since: Option<String>,
    /// Stop at this time (same forms; a duration is before now). Default:
    /// follow until interrupted.
    #[arg(long)]
    until: Option<String>,
    /// `type=container|image|volume|network`, `event=ACTION`,
    /// `container=NAME|ID`, `image=REF`, `volume=NAME`, `network=NAME|ID`;
    /// values of one key are alternatives, different keys must all match.
    #[arg(short, long = "filter")]
    filter: Vec<String>,
    /// `json` or a Go template (`{{.Action}} {{.Actor.Attributes.name}}`).
    #[arg(long)]
    format: Option<String>,
}

/// Errors in the options of `hull events`.
#[derive(Debug, thiserror::Error)]
pub enum EventsArgError {
    /// A time that is none of the accepted forms.
    #[error("invalid time {0:?}: use a Unix timestamp, an RFC 3339 date or a duration like 10m")]
    Time(String),
    /// A filter without `=`, or with a key hull does not know.
    #[error("invalid filter {0:?}: use type=, event=, container=, image=, volume= or network=")]
    Filter(String),
}

/// How often the log is read again while following.
const POLL: Duration = Duration::from_millis(200);

/// Runs `hull events`.
pub fn run(args: &EventsArgs, root: &Path) -> anyhow::Result<u8> {
    let now = now_nanos();
    let since = match &args.since {
        Some(s) => parse_time(s, now)?,
        None => now,
    };
    let until = args
        .until
        .as_deref()
        .map(|u| parse_time(u, now))
        .transpose()?;
    let filters = Filters::parse(&args.filter)?;
    let print = Printer::new(args.format.as_deref())?;
    let mut follower = Follower::from_start(root);
    loop {
        for event in follower.poll()? {
            if event.time_nano < since || until.is_some_and(|u| event.time_nano > u) {
                continue;
            }
            if filters.matches(&event) && !print.event(&event)? {
                // The reader went away (`| head -1`): done, quietly.
                return Ok(0);
            }
        }
        if until.is_some_and(|u| now_nanos() > u) {
            return Ok(0);
        }
        std::thread::sleep(POLL);
    }
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

/// `--since`/`--until`: nanoseconds since the epoch.
fn parse_time(s: &str, now: u128) -> Result<u128, EventsArgError> {
    let bad = || EventsArgError::Time(s.to_string());
    if let Some(secs) = parse_unix_timestamp(s) {
        return Ok(secs);
    }
    if let Some(ago) = parse_duration(s) {
        return Ok(now.saturating_sub(ago.as_nanos()));
    }
    let full = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_string()
    };
    images::time::parse_unix(&full)
        .filter(|_| full.as_bytes().get(10) == Some(&b'T'))
        .map(|secs| u128::from(secs) * 1_000_000_000)
        .ok_or_else(bad)
}

/// `1733511600` or `1733511600.5`.
fn parse_unix_timestamp(s: &str) -> Option<u128> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos: u128 = format!("{frac:0<9}").parse().ok()?;
    Some(whole.parse::<u128>().ok()? * 1_000_000_000 + nanos)
}

/// Go's durations: `90s`, `10m`, `1h30m`, `1.5h`, `250ms`.
fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .filter(|&i| i > 0)?;
        let value: f64 = rest[..digits].parse().ok()?;
        let unit_len = rest[digits..]
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len() - digits);
        let seconds = match &rest[digits..digits + unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        total += value * seconds;
        rest = &rest[digits + unit_len..];
    }
    Some(Duration::from_secs_f64(total))
}

/// `--filter`s by key.
#[derive(Debug, Default)]
struct Filters(Vec<(String, Vec<String>)>);

const FILTER_KEYS: [&str; 6] = ["type", "event", "container", "image", "volume", "network"];

impl Filters {
    fn parse(specs: &[String]) -> Result<Self, EventsArgError> {
        let mut by_key: Vec<(String, Vec<String>)> = Vec::new();
        for spec in specs {
            let (k, v) = spec
                .split_once('=')
                .filter(|(k, _)| FILTER_KEYS.contains(k))
                .ok_or_else(|| EventsArgError::Filter(spec.clone()))?;
            match by_key.iter_mut().find(|(key, _)| key == k) {
                Some((_, values)) => values.push(v.to_string()),
                None => by_key.push((k.to_string(), vec![v.to_string()])),
            }
        }
        Ok(Self(by_key))
    }

    fn matches(&self, e: &Event) -> bool {
        self.0
            .iter()
            .all(|(key, values)| values.iter().any(|v| matches_one(e, key, v)))
    }
}

fn matches_one(e: &Event, key: &str, value: &str) -> bool {
    let attr = |name: &str| e.actor.attributes.get(name).map(String::as_str);
    let id_or_name = |kind: Kind| {
        e.kind == kind && (e.actor.id.starts_with(value) || attr("name") == Some(value))
    };
    match key {
        "type" => e.kind.name() == value,
        "event" => e.action == value,
        "container" => {
            id_or_name(Kind::Container)
                || (e.kind == Kind::Network
                    && attr("container").is_some_and(|c| c.starts_with(value)))
        }
        "image" => {
            (e.kind == Kind::Image && (e.actor.id == value || attr("name") == Some(value)))
                || (e.kind == Kind::Container && attr("image") == Some(value))
        }
        "volume" => e.kind == Kind::Volume && e.actor.id == value,
        "network" => id_or_name(Kind::Network),
        _ => false,
    }
}

/// How each event is printed.
enum Printer {
    /// Docker's default line.
    Line,
    /// One JSON object per line.
    Json,
    /// A Go template per event.
    Template(Template),
}

impl Printer {
    fn new(format: Option<&str>) -> anyhow::Result<Self> {
        let Some(format) = format else {
            return Ok(Self::Line);
        };
        let format = format.replace("\\t", "\t").replace("\\n", "\n");
        Ok(match format.trim() {
            "json" | "{{json .}}" => Self::Json,
            text => Self::Template(Template::parse(text, false)?),
        })
    }

    /// Prints one event; false when stdout is closed.
    fn event(&self, e: &Event) -> anyhow::Result<bool> {
        let text = match self {
            Self::Line => e.line(),
            Self::Json => serde_json::to_string(e)?,
            Self::Template(t) => t.render(&serde_json::to_value(e)?)?,
        };
        let mut out = std::io::stdout().lock();
        Ok(writeln!(out, "{text}").and_then(|()| out.flush()).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_docker_forms() {
        let now = 1_800_000_000 * 1_000_000_000u128;
        assert_eq!(
            parse_time("1700000000", now).unwrap(),
            1_700_000_000_000_000_000
        );
        assert_eq!(
            parse_time("1700000000.5", now).unwrap(),
            1_700_000_000_500_000_000
        );
        assert_eq!(parse_time("10m", now).unwrap(), now - 600_000_000_000);
        assert_eq!(parse_time("1h30m", now).unwrap(), now - 5_400_000_000_000);
        assert_eq!(parse_time("1.5h", now).unwrap(), now - 5_400_000_000_000);
        assert_eq!(parse_time("0s", now).unwrap(), now);
        assert_eq!(
            parse_time("1970-01-02T00:00:01Z", now).unwrap(),
            86_401_000_000_000
        );
        assert_eq!(parse_time("1970-01-02", now).unwrap(), 86_400_000_000_000);
        for bad in ["", "yesterday", "10x", "1970-01-02 00:00:00", "m", "1.2.3"] {
            assert!(parse_time(bad, now).is_err(), "{bad}");
        }
    }

    fn event(kind: Kind, action: &str, id: &str, attrs: &[(&str, &str)]) -> Event {
        Event::now(kind, action, id, attrs)
    }

    #[test]
    fn filters_match_as_docker_documents_them() {
        let web = event(
            Kind::Container,
            "start",
            "abc123",
            &[("name", "web"), ("image", "busybox")],
        );
        let pull = event(Kind::Image, "pull", "busybox", &[]);
        let vol = event(Kind::Volume, "create", "data", &[]);
        let f = |specs: &[&str]| {
            Filters::parse(&specs.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
        };
        assert!(f(&[]).matches(&web));
        assert!(f(&["container=web"]).matches(&web));
        assert!(f(&["container=abc"]).matches(&web));
        assert!(!f(&["container=db"]).matches(&web));
        assert!(f(&["image=busybox"]).matches(&web));
        assert!(f(&["image=busybox"]).matches(&pull));
        assert!(f(&["type=volume", "type=image"]).matches(&vol));
        assert!(f(&["type=volume", "type=image"]).matches(&pull));
        assert!(!f(&["type=volume", "type=image"]).matches(&web));
        assert!(!f(&["type=container", "event=die"]).matches(&web));
        assert!(f(&["type=container", "event=die", "event=start"]).matches(&web));
        assert!(f(&["volume=data"]).matches(&vol));
        for bad in ["label=x", "nokey", "=v"] {
            assert!(Filters::parse(&[bad.to_string()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn templates_see_docker_field_names() {
        let e = event(
            Kind::Container,
            "die",
            "abc",
            &[("exitCode", "3"), ("name", "web")],
        );
        let Printer::Template(t) = Printer::new(Some(
            "{{.Type}} {{.Action}} {{.Actor.Attributes.name}} {{.Actor.Attributes.exitCode}}",
        ))
        .unwrap() else {
            panic!("not a template")
        };
        assert_eq!(
            t.render(&serde_json::to_value(&e).unwrap()).unwrap(),
            "container die web 3"
        );
        assert!(matches!(Printer::new(Some("json")).unwrap(), Printer::Json));
        assert!(Printer::new(Some("{{.Action")).is_err());
    }
}
