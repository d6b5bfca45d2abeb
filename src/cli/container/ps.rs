//! `hull ps`: the list of containers, as a table, JSON lines or IDs.

use super::CommandError;
use crate::container::state::Status;
use crate::container::store::{self, Container, ContainerStore};
use crate::ports;

/// Runs `hull ps`.
pub fn ps(store: &ContainerStore, all: bool, quiet: bool, format: &str) -> anyhow::Result<u8> {
    let list: Vec<Container> = store
        .list()?
        .into_iter()
        .filter(|c| all || c.state.status == Status::Running)
        .collect();
    if quiet {
        for c in &list {
            println!("{}", store::short(&c.config.id));
        }
        return Ok(0);
    }
    match format {
        "json" => {
            for c in &list {
                let v = serde_json::json!({
                    "ID": store::short(&c.config.id),
                    "Ports": ports_text(c),
                    "Image": c.config.image,
                    "Command": c.config.argv.join(" "),
                    "CreatedAt": c.config.created,
                    "State": c.state.status,
                    "Status": status_text(c),
                    "Names": c.config.name,
                    "ExitCode": c.state.exit_code,
                    "Isolation": c.config.isolation.as_str(),
                });
                println!("{v}");
            }
        }
        "table" => {
            let ports_width = list
                .iter()
                .map(|c| ports_text(c).chars().count() + 3)
                .max()
                .unwrap_or(0)
                .max(8);
            println!(
                "{:<14}{:<24}{:<24}{:<40}{:<ports_width$}{:<11}NAMES",
                "CONTAINER ID", "IMAGE", "COMMAND", "STATUS", "PORTS", "ISOLATION"
            );
            for c in &list {
                let mut cmd = format!("\"{}\"", c.config.argv.join(" "));
                if cmd.len() > 22 {
                    cmd = format!(
                        "{}…\"",
                        &cmd[..cmd.char_indices().nth(19).map_or(cmd.len(), |(i, _)| i)]
                    );
                }
                println!(
                    "{:<14}{:<24}{:<24}{:<40}{:<ports_width$}{:<11}{}",
                    store::short(&c.config.id),
                    c.config.image,
                    cmd,
                    status_text(c),
                    ports_text(c),
                    c.config.isolation.as_str(),
                    c.config.name
                );
            }
        }
        other => return Err(CommandError::Invalid("--format", other.into()).into()),
    }
    Ok(0)
}

fn status_text(c: &Container) -> String {
    match c.state.status {
        Status::Created => "Created".into(),
        Status::Running => format!("Up since {}", c.state.started_at.as_deref().unwrap_or("?")),
        Status::Exited => match &c.state.error {
            Some(e) => format!(
                "Exited ({}) with error: {e}",
                c.state.exit_code.unwrap_or(255)
            ),
            None => format!("Exited ({})", c.state.exit_code.unwrap_or(0)),
        },
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
