//! `hull exec` and `hull top`: a running container's processes, through
//! its agent.

use std::path::Path;

use super::{check_tty_input, exit_code, CommandError};
use crate::container::engine::{self, ExecOptions};
use crate::container::state::Status;
use crate::container::store::ContainerStore;
use crate::guest::agent_client::AgentClient;

/// Runs `hull exec`; returns the process's exit code.
pub fn exec(
    root: &Path,
    store: &ContainerStore,
    container: &str,
    opts: ExecOptions,
) -> anyhow::Result<u8> {
    let c = store.find(container)?;
    if c.state.status != Status::Running || c.state.process_id.is_none() {
        return Err(CommandError::NotRunning(container.to_string()).into());
    }
    check_tty_input(opts.stdin, opts.tty)?;
    if let (crate::oci::Isolation::Container, Some(pid)) = (c.config.isolation, c.state.process_id)
    {
        return Ok(exit_code(crate::oci::engine::exec(
            root, &c.config, pid, opts,
        )?));
    }
    Ok(exit_code(engine::exec(root, &c.config, opts)?))
}

/// Runs `hull top`: the container's processes as a table.
pub fn top(root: &Path, store: &ContainerStore, container: &str) -> anyhow::Result<u8> {
    let c = store.find(container)?;
    if c.state.status != Status::Running {
        return Err(CommandError::NotRunning(container.to_string()).into());
    }
    if c.config.isolation == crate::oci::Isolation::Container {
        let pid = c
            .state
            .process_id
            .ok_or_else(|| CommandError::NotRunning(container.to_string()))?;
        let procs = crate::oci::engine::processes(pid, c.config.userns.as_ref())?;
        print!("{}", crate::container::top::table(&procs));
        return Ok(0);
    }
    let procs = AgentClient::connect(&engine::socket_path(root, &c.config.id))?.processes()?;
    print!("{}", crate::container::top::table(&procs));
    Ok(0)
}
