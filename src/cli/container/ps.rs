//! `hull ps`: the list of containers, as Docker prints it: the default
//! table, `--format` (Go template, `table ...`, `json`), IDs with `-q`,
//! narrowed by `-a`, `-n`, `-l` and `--filter`.

use clap::Args;
use serde_json::{json, Value};

use super::CommandError;
use crate::cli::output::{self, Format};
use crate::container::state::Status;
use crate::container::store::{self, Container, ContainerStore};
use crate::ports;

/// The columns of `hull ps` without `--format`, as Docker's.
const DEFAULT_TABLE: &str =
    "{{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t{{.Ports}}\t{{.Names}}";

/// The default columns when a listed container runs with `--isolation
/// container`: Docker's, and how each one is isolated.
const ISOLATION_TABLE: &str = "{{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t{{.Ports}}\t{{.Isolation}}\t{{.Names}}";

/// Options of `hull ps`.
#[derive(Args, Debug)]
pub struct PsArgs {
    /// Show all containers (default: running only).
    #[arg(short = 'a', long)]
    all: bool,
    /// Only IDs.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// `table`, `table TEMPLATE`, `json` or a Go template
    /// (`{{.Names}}\t{{.Status}}`).
    #[arg(long)]
    format: Option<String>,
    /// Do not truncate IDs, images and commands.
    #[arg(long)]
    no_trunc: bool,
    /// The N containers created last (any state).
    #[arg(short = 'n', long = "last", value_name = "N")]
    last: Option<usize>,
    /// The container created last (any state).
    #[arg(short = 'l', long)]
    latest: bool,
    /// Filter: status=, name=, label=KEY[=VALUE], ancestor=, id=, exited=.
    #[arg(short = 'f', long = "filter", value_name = "KEY=VALUE")]
    filter: Vec<String>,
}

/// One `--filter`.
#[derive(Debug, PartialEq)]
enum Filter {
    Status(Status),
    /// A state of Docker's that hull containers are never in (`paused`,
    /// `restarting`, `removing`, `dead`): matches nothing.
    NoSuchState,
    Name(String),
    Label(String, Option<String>),
    Ancestor(String),
    Id(String),
    Exited(i32),
}

impl Filter {
    fn parse(s: &str) -> Result<Self, CommandError> {
        let bad = || CommandError::Invalid("filter", s.to_string());
        let (key, value) = s.split_once('=').ok_or_else(bad)?;
        Ok(match key {
            "status" => Filter::Status(match value {
                "created" => Status::Created,
                "running" => Status::Running,
                "exited" => Status::Exited,
                "dead" => Status::Dead,
                "paused" | "restarting" | "removing" => return Ok(Filter::NoSuchState),
                _ => {
                    return Err(CommandError::Invalid(
                        "filter",
                        format!("{s} (status is created, running or exited)"),
                    ))
                }
            }),
            "name" => Filter::Name(value.trim_start_matches('/').to_string()),
            "label" => match value.split_once('=') {
                Some((k, v)) => Filter::Label(k.into(), Some(v.into())),
                None => Filter::Label(value.into(), None),
            },
            "ancestor" => Filter::Ancestor(value.into()),
            "id" => Filter::Id(value.into()),
            "exited" => Filter::Exited(value.parse().map_err(|_| bad())?),
            _ => return Err(bad()),
        })
    }

    fn matches(&self, c: &Container) -> bool {
        match self {
            Filter::Status(s) => c.state.status == *s,
            Filter::NoSuchState => false,
            // Docker matches a regular expression; a substring covers how
            // names are filtered in practice.
            Filter::Name(n) => c.config.name.contains(n.as_str()),
            Filter::Label(k, v) => c
                .config
                .labels
                .get(k)
                .is_some_and(|have| v.as_ref().is_none_or(|want| want == have)),
            Filter::Ancestor(a) => is_ancestor(a, c),
            Filter::Id(prefix) => c.config.id.starts_with(prefix.as_str()),
            Filter::Exited(code) => {
                c.state.status == Status::Exited && c.state.exit_code == Some(*code)
            }
        }
    }
}

/// `ancestor=`: the image as named at `run` (`busybox` is `busybox:latest`)
/// or a prefix of its ID.
fn is_ancestor(want: &str, c: &Container) -> bool {
    let full = |s: &str| match images::Reference::parse(s) {
        Ok(r) => r.to_string(),
        Err(_) => s.to_string(),
    };
    let id = c.config.image_id.trim_start_matches("sha256:");
    full(want) == full(&c.config.image)
        || (want.len() >= 4 && id.starts_with(want.trim_start_matches("sha256:")))
}

/// Runs `hull ps`.
pub fn ps(store: &ContainerStore, a: &PsArgs) -> anyhow::Result<u8> {
    let filters = a
        .filter
        .iter()
        .map(|f| Filter::parse(f))
        .collect::<Result<Vec<_>, _>>()?;
    // Checked before listing; parsed again below with the default that
    // fits the list.
    if let Some(f) = a.format.as_ref().filter(|_| !a.quiet) {
        Format::parse(f, DEFAULT_TABLE)?;
    }
    let limit = if a.latest { Some(1) } else { a.last };
    // A status filter, -n and -l look at every container, as in Docker.
    let all = a.all
        || limit.is_some()
        || filters
            .iter()
            .any(|f| matches!(f, Filter::Status(_) | Filter::NoSuchState));
    let list: Vec<Container> = store
        .list()?
        .into_iter()
        .filter(|c| all || c.state.status == Status::Running)
        .filter(|c| filters.iter().all(|f| f.matches(c)))
        .take(limit.unwrap_or(usize::MAX))
        .collect();
    if a.quiet {
        for c in &list {
            println!("{}", id_text(&c.config.id, a.no_trunc));
        }
        return Ok(0);
    }
    let default = if list
        .iter()
        .any(|c| c.config.isolation == crate::oci::Isolation::Container)
    {
        ISOLATION_TABLE
    } else {
        DEFAULT_TABLE
    };
    let format = match &a.format {
        Some(f) => Format::parse(f, default)?,
        None => Format::parse("table", default)?,
    };
    let rows: Vec<Value> = list.iter().map(|c| row(c, a.no_trunc)).collect();
    format.print(&headers(), &rows)?;
    Ok(0)
}

fn id_text(id: &str, no_trunc: bool) -> String {
    if no_trunc {
        id.to_string()
    } else {
        store::short(id)
    }
}

/// The column titles of every field a row has.
fn headers() -> Value {
    json!({
        "ID": "CONTAINER ID",
        "Image": "IMAGE",
        "Command": "COMMAND",
        "CreatedAt": "CREATED AT",
        "RunningFor": "CREATED",
        "Ports": "PORTS",
        "State": "STATE",
        "Status": "STATUS",
        "Size": "SIZE",
        "Names": "NAMES",
        "Labels": "LABELS",
        "Mounts": "MOUNTS",
        "Networks": "NETWORKS",
        "ExitCode": "EXIT CODE",
        "Isolation": "ISOLATION",
    })
}

/// One container as Docker's `ps` template context: every field a string
/// (but ExitCode, which hull adds).
fn row(c: &Container, no_trunc: bool) -> Value {
    let labels: Vec<String> = c
        .config
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    json!({
        "ID": id_text(&c.config.id, no_trunc),
        "Image": image_text(&c.config.image, no_trunc),
        "Command": command_text(&c.config.argv, no_trunc),
        "CreatedAt": docker_time(&c.config.created),
        "RunningFor": format!("{} ago", output::human_duration(output::secs_since(&c.config.created))),
        "Ports": ports_text(c),
        "State": c.state.status,
        "Status": status_text(c),
        "Size": "0B",
        "Names": c.config.name,
        "Labels": labels.join(","),
        "Mounts": "",
        "Networks": c.config.network.name(),
        "ExitCode": c.state.exit_code.unwrap_or(0),
        "Isolation": c.config.isolation.as_str(),
    })
}

/// Docker's `"sh -c 'while…"`: the command quoted, cut to 20 characters.
fn command_text(argv: &[String], no_trunc: bool) -> String {
    let cmd = argv.join(" ");
    let cmd = if !no_trunc && cmd.chars().count() > 20 {
        cmd.chars().take(19).collect::<String>() + "…"
    } else {
        cmd
    };
    serde_json::to_string(&cmd).unwrap_or(cmd)
}

/// An image given by ID shows as the short ID, and a digest reference
/// without its digest, unless `--no-trunc`.
fn image_text(image: &str, no_trunc: bool) -> String {
    if no_trunc {
        return image.to_string();
    }
    if let Some(hex) = image.strip_prefix("sha256:") {
        return hex.chars().take(12).collect();
    }
    match image.split_once('@') {
        Some((name, _)) => name.to_string(),
        None => image.to_string(),
    }
}

/// RFC 3339 as Docker's CreatedAt: `2026-12-06 12:40:00 +0000 UTC`.
fn docker_time(rfc3339: &str) -> String {
    match (rfc3339.get(0..10), rfc3339.get(11..19)) {
        (Some(d), Some(t)) => format!("{d} {t} +0000 UTC"),
        _ => rfc3339.to_string(),
    }
}

/// `Created`, `Up 5 seconds`, `Exited (0) 3 minutes ago`.
fn status_text(c: &Container) -> String {
    let since =
        |t: &Option<String>| output::human_duration(t.as_deref().map_or(0, output::secs_since));
    match c.state.status {
        Status::Created => "Created".into(),
        Status::Running => format!("Up {}", since(&c.state.started_at)),
        Status::Exited => {
            let ago = format!("{} ago", since(&c.state.finished_at));
            match &c.state.error {
                Some(e) => format!(
                    "Exited ({}) {ago} with error: {e}",
                    c.state.exit_code.unwrap_or(255)
                ),
                None => format!("Exited ({}) {ago}", c.state.exit_code.unwrap_or(0)),
            }
        }
        Status::Dead => "Dead".into(),
    }
}

/// A running container's bindings as `docker ps` shows them.
fn ports_text(c: &Container) -> String {
    c.state
        .ports
        .iter()
        .map(ports::PortBinding::ps_text)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_or_fail_clearly() {
        assert_eq!(
            Filter::parse("status=exited").unwrap(),
            Filter::Status(Status::Exited)
        );
        assert_eq!(
            Filter::parse("label=a=b").unwrap(),
            Filter::Label("a".into(), Some("b".into()))
        );
        assert_eq!(
            Filter::parse("label=a").unwrap(),
            Filter::Label("a".into(), None)
        );
        assert!(Filter::parse("status=sleeping").is_err());
        assert_eq!(
            Filter::parse("status=dead").unwrap(),
            Filter::Status(Status::Dead)
        );
        assert_eq!(Filter::parse("status=paused").unwrap(), Filter::NoSuchState);
        assert!(Filter::parse("colour=red").is_err());
        assert!(Filter::parse("name").is_err());
    }

    #[test]
    fn columns_are_cut_as_docker_s() {
        let argv = ["sh", "-c", "while true; do date; done"].map(String::from);
        assert_eq!(command_text(&argv, false), "\"sh -c while true; d…\"");
        assert_eq!(command_text(&argv[..1], false), "\"sh\"");
        assert_eq!(
            command_text(&argv, true),
            "\"sh -c while true; do date; done\""
        );
        assert_eq!(
            image_text("sha256:0123456789abcdef00", false),
            "0123456789ab"
        );
        assert_eq!(image_text("bb@sha256:0123", false), "bb");
        assert_eq!(
            docker_time("2026-12-06T12:40:01.5Z"),
            "2026-12-06 12:40:01 +0000 UTC"
        );
    }
}
