//! CLI handlers for container commands, one module per command (or per
//! family of commands that share helpers): `hull run` is [`run`], `hull ps`
//! is [`ps`], `stop`/`kill`/`rm`/`start`/`restart`/`wait` are in
//! [`lifecycle`], `exec`/`top` in [`exec`], `port`/`inspect` in
//! [`inspect`], `logs` in [`logs`]. The containers themselves are in
//! `crate::container`.

pub mod auto_pull;
mod compare;
mod compare_plot;
mod exec;
mod fs;
pub use fs::{write_output, FsCommandError};
mod inspect;
mod lifecycle;
mod logs;
mod ps;
mod run;
pub mod volumes;

use std::path::Path;

use clap::Subcommand;

use crate::container::store::ContainerStore;

pub use run::RunArgs;

/// Container subcommands, flattened into hull's top-level commands.
#[derive(Subcommand, Debug)]
pub enum ContainerCommand {
    /// Run a command in a new container, in its own microVM.
    Run(Box<RunArgs>),
    /// Create a container without starting it (`hull start` runs it).
    Create(Box<RunArgs>),
    /// List containers.
    Ps(ps::PsArgs),
    /// Show a container's output.
    Logs {
        /// Keep following new output.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<String>,
        /// Prefix each line with its timestamp.
        #[arg(short = 't', long)]
        timestamps: bool,
        /// Container.
        container: String,
    },
    /// Stop running containers (SIGTERM, then SIGKILL after the timeout).
    Stop {
        /// Seconds to wait before killing.
        #[arg(short = 't', long, default_value_t = 10)]
        time: u64,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Restart containers (stop, then start).
    Restart {
        /// Seconds to wait before killing.
        #[arg(short = 't', long, default_value_t = 10)]
        time: u64,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Send a signal to a container's process.
    Kill {
        /// Signal name or number.
        #[arg(short = 's', long, default_value = "KILL")]
        signal: String,
        /// Signal this agent process of the VM (an exec's, from `exec
        /// --pid-file`) instead of the main process: containerd's shim.
        #[arg(long, hide = true, value_name = "ID")]
        process: Option<u32>,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove containers.
    Rm {
        /// Stop running containers first.
        #[arg(short = 'f', long)]
        force: bool,
        /// Remove their anonymous volumes too.
        #[arg(short = 'v', long = "volumes")]
        volumes: bool,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Start stopped containers.
    Start {
        /// Attach to its output and wait for it.
        #[arg(short = 'a', long)]
        attach: bool,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Wait for containers to stop and print their exit codes.
    Wait {
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Run a command in a running container.
    Exec {
        /// Keep stdin open.
        #[arg(short = 'i', long)]
        interactive: bool,
        /// Allocate a pseudo-TTY.
        #[arg(short = 't', long)]
        tty: bool,
        /// Environment variable KEY=VALUE.
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        /// Working directory.
        #[arg(short = 'w', long)]
        workdir: Option<String>,
        /// User.
        #[arg(short = 'u', long)]
        user: Option<String>,
        /// Write the process's agent id here once it runs (for `kill
        /// --process`): containerd's shim.
        #[arg(long, hide = true, value_name = "PATH")]
        pid_file: Option<std::path::PathBuf>,
        /// Container.
        container: String,
        /// Command and arguments.
        #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Show the processes running in a container.
    Top {
        /// Container.
        container: String,
    },
    /// List a container's published ports, or the host addresses of one.
    Port {
        /// Container.
        container: String,
        /// Container port (`80` or `80/tcp`).
        port: Option<String>,
    },
    /// Show containers' configuration and state (or images' details) as JSON.
    Inspect {
        /// Print each container through a Go template (`{{.State.Pid}}`)
        /// or `json`.
        #[arg(short = 'f', long)]
        format: Option<String>,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Run a workload as a microVM and as a namespaced container, and
    /// compare latency, memory, kernel and host visibility.
    Compare(compare::CompareArgs),
    /// Create a new image from a container's changes.
    Commit {
        /// Commit message (the history entry's comment).
        #[arg(short = 'm', long)]
        message: Option<String>,
        /// Author (`Name <email>`).
        #[arg(short = 'a', long)]
        author: Option<String>,
        /// Apply a Dockerfile instruction to the image's config
        /// (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, VOLUME, WORKDIR...).
        #[arg(short = 'c', long = "change")]
        changes: Vec<String>,
        /// Hold the container's writes while committing (always done: a
        /// running container's writable layer is frozen while it is read).
        #[arg(short = 'p', long, num_args = 0..=1, default_value_t = true, default_missing_value = "true", action = clap::ArgAction::Set)]
        pause: bool,
        /// Container.
        container: String,
        /// Image name (`NAME[:TAG]`).
        reference: Option<String>,
    },
    /// Show the files a container changed, added (A) or deleted (D).
    Diff {
        /// Container.
        container: String,
    },
    /// Export a container's file system as a tar archive.
    Export {
        /// Write to a file instead of stdout.
        #[arg(short = 'o', long)]
        output: Option<std::path::PathBuf>,
        /// Container.
        container: String,
    },
    /// Copy files between a container and the host
    /// (`hull cp CONTAINER:SRC DEST`, `hull cp SRC CONTAINER:DEST`; `-` is a tar on stdin/stdout).
    Cp {
        /// Source.
        src: String,
        /// Destination.
        dest: String,
    },
    /// (internal) Run a detached container's VMM.
    #[command(name = "__container-vmm", hide = true)]
    Vmm {
        /// Container ID.
        id: String,
    },
}

/// `hull container ...`: Docker's management form of the container
/// commands (`hull container ls` is `hull ps`), plus `prune`.
#[derive(Subcommand, Debug)]
pub enum ContainerManageCommand {
    /// List containers (same as `hull ps`).
    #[command(alias = "list")]
    Ls(ps::PsArgs),
    /// Remove all stopped containers.
    Prune {
        /// Do not ask for confirmation (hull never asks).
        #[arg(short, long)]
        force: bool,
    },
    /// The container commands under their own names (`hull container rm`).
    #[command(flatten)]
    Command(Box<ContainerCommand>),
}

/// Errors of container commands.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Bad flag value.
    #[error("Invalid {0}: {1}")]
    Invalid(&'static str, String),
    /// `-i -t` with a stdin that is not a terminal (Docker refuses it too:
    /// raw mode and window sizes need one).
    #[error("The input device is not a TTY")]
    NotATty,
    /// The container is not running.
    #[error("Container {0} is not running")]
    NotRunning(String),
    /// The container is running and -f was not given.
    #[error("Container {0} is running: stop it first or use rm -f")]
    Running(String),
    /// A stopped container whose disk a helper VM holds.
    #[error("Container {0} is busy: a commit, cp, diff or export is using its disk; try again when it ends")]
    Busy(String),
    /// A detached container failed to start.
    #[error("Container {0} failed to start: {1}")]
    StartFailed(String, String),
    /// `hull port` for a port that is not published.
    #[error("No public port '{0}/tcp' published for {1}")]
    NoPublicPort(u16, String),
}

/// Runs a container command; returns the exit code.
pub fn run(cmd: ContainerCommand, root: &Path) -> anyhow::Result<u8> {
    let store = ContainerStore::new(root);
    match cmd {
        ContainerCommand::Run(args) => run::run(*args, root, &store),
        ContainerCommand::Create(args) => run::create(*args, root, &store),
        ContainerCommand::Ps(args) => ps::ps(&store, &args),
        ContainerCommand::Logs {
            follow,
            tail,
            timestamps,
            container,
        } => logs::logs(&store, &container, tail.as_deref(), timestamps, follow),
        ContainerCommand::Stop { time, containers } => {
            lifecycle::stop_all(root, &store, time, &containers)
        }
        ContainerCommand::Restart { time, containers } => {
            lifecycle::restart(root, &store, time, &containers)
        }
        ContainerCommand::Kill {
            signal,
            process,
            containers,
        } => lifecycle::kill(root, &store, &signal, process, &containers),
        ContainerCommand::Rm {
            force,
            volumes,
            containers,
        } => lifecycle::rm(root, &store, force, volumes, &containers),
        ContainerCommand::Start { attach, containers } => {
            lifecycle::start(root, &store, attach, &containers)
        }
        ContainerCommand::Wait { containers } => lifecycle::wait(&store, &containers),
        ContainerCommand::Exec {
            interactive,
            tty,
            env,
            workdir,
            user,
            pid_file,
            container,
            command,
        } => exec::exec(
            root,
            &store,
            &container,
            crate::container::engine::ExecOptions {
                argv: command,
                env,
                cwd: workdir,
                user,
                stdin: interactive,
                tty,
                pid_file,
            },
        ),
        ContainerCommand::Top { container } => exec::top(root, &store, &container),
        ContainerCommand::Port { container, port } => {
            inspect::port(&store, &container, port.as_deref())
        }
        ContainerCommand::Inspect { format, containers } => {
            inspect::inspect(root, &store, &containers, format.as_deref())
        }
        ContainerCommand::Compare(args) => compare::compare(args, root),
        ContainerCommand::Commit {
            message,
            author,
            changes,
            pause: _,
            container,
            reference,
        } => fs::commit(
            root,
            &store,
            &container,
            &crate::container::commit::CommitOptions {
                message,
                author,
                changes,
                reference,
            },
        ),
        ContainerCommand::Diff { container } => fs::diff(root, &store, &container),
        ContainerCommand::Export { output, container } => {
            fs::export(root, &store, &container, output.as_deref())
        }
        ContainerCommand::Cp { src, dest } => fs::cp(root, &store, &src, &dest),
        ContainerCommand::Vmm { id } => lifecycle::vmm(root, &store, &id),
    }
}

/// Runs `hull container ...`; returns the exit code.
pub fn manage(cmd: ContainerManageCommand, root: &Path) -> anyhow::Result<u8> {
    match cmd {
        ContainerManageCommand::Ls(args) => ps::ps(&ContainerStore::new(root), &args),
        ContainerManageCommand::Prune { force: _ } => {
            let (ids, _) = prune(root)?;
            if !ids.is_empty() {
                println!("Deleted Containers:");
                for id in &ids {
                    println!("{id}");
                }
                println!();
            }
            println!("Total reclaimed space: 0B");
            Ok(0)
        }
        ContainerManageCommand::Command(cmd) => run(*cmd, root),
    }
}

/// Removes every container that is not running (`container prune`,
/// `system prune`); returns their IDs and the bytes their directories held.
pub fn prune(root: &Path) -> anyhow::Result<(Vec<String>, u64)> {
    use crate::container::state::Status;
    let store = ContainerStore::new(root);
    let mut ids = Vec::new();
    let mut bytes = 0;
    for c in store.list()? {
        if c.state.status == Status::Running {
            continue;
        }
        bytes += crate::guest::fast_start::disk_usage(&c.dir);
        store.remove(&c.dir)?;
        ids.push(c.config.id);
    }
    Ok((ids, bytes))
}

/// Whether `cmd` is `run` or `create` (Docker's 125 when hull fails).
pub fn is_run_or_create(cmd: &ContainerCommand) -> bool {
    matches!(cmd, ContainerCommand::Run(_) | ContainerCommand::Create(_))
}

/// `-i -t` needs our stdin to be a terminal; `-t` alone does not (the
/// container still gets its PTY, only our side is not put in raw mode).
fn check_tty_input(interactive: bool, tty: bool) -> Result<(), CommandError> {
    use std::io::IsTerminal;
    if interactive && tty && !std::io::stdin().is_terminal() {
        return Err(CommandError::NotATty);
    }
    Ok(())
}

fn exit_code(code: i32) -> u8 {
    u8::try_from(code).unwrap_or(255)
}
