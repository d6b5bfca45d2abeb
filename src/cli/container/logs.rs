//! `hull logs`: a container's output from its log, optionally followed.

use super::CommandError;
use crate::container::logs;
use crate::container::state::Status;
use crate::container::store::ContainerStore;
use crate::container::State;

/// Runs `hull logs`; `tail` is a line count or "all".
pub fn logs(
    store: &ContainerStore,
    container: &str,
    tail: Option<&str>,
    timestamps: bool,
    follow: bool,
) -> anyhow::Result<u8> {
    let c = store.find(container)?;
    let tail = match tail {
        None | Some("all") => None,
        Some(n) => Some(
            n.parse::<usize>()
                .map_err(|_| CommandError::Invalid("--tail", n.into()))?,
        ),
    };
    let dir = c.dir.clone();
    logs::print(&c.dir, tail, timestamps, follow, || {
        State::load(&dir).is_ok_and(|s| s.status == Status::Running)
    })?;
    Ok(0)
}
