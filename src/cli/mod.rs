//! The command line: argument types and one handler per command.
//!
//! - [`container`]: `run`, `ps`, `logs`, `stop`, `kill`, `rm`, `start`,
//!   `wait`, `exec`, `top`, `port`, `inspect` (a module per command or
//!   per family of commands);
//! - [`image`]: `images`, `pull`, `push`, `load`, `save`, `import`, `tag`,
//!   `rmi`, ...;
//! - [`build`]: `hull build`;
//! - [`network`]: `hull network create|ls|inspect|rm|prune|connect|disconnect`;
//! - [`info`], [`version`], [`completion`], [`system`], [`stats`], [`events`],
//!   [`debug_boot`], [`debug_run`], [`debug_prepare`], [`debug_dockerfile`]:
//!   the rest;
//! - [`exit`]: Docker's exit codes; [`template`] and [`output`]: Docker's
//!   `--format` (Go templates, `table`, `json`); [`progress_view`]: how a
//!   first start's stages show on stderr.

pub mod build;
pub mod completion;
pub mod container;
pub mod debug_boot;
pub mod debug_dockerfile;
pub mod debug_prepare;
pub mod debug_run;
pub mod events;
pub mod exit;
pub mod image;
pub mod info;
pub mod network;
pub mod output;
pub mod progress_view;
pub mod stats;
pub mod system;
pub mod system_check;
pub mod template;
pub mod version;
pub mod volume;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

/// Command-line interface of hull.
#[derive(Parser, Debug)]
#[command(
    name = "hull",
    version,
    about = "Containers, each in its own KVM microVM"
)]
pub struct Cli {
    /// Root of hull's state (images, containers, kernel cache).
    #[arg(long, global = true, env = "HULL_ROOT")]
    pub root: Option<PathBuf>,

    /// Verbose logs (same as RUST_LOG=debug).
    #[arg(long, global = true)]
    pub debug: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build an image from a Dockerfile; RUN steps run in microVMs.
    Build(build::BuildArgs),
    /// Show the host's hypervisor, the guest kernel and agent hull uses.
    Info,
    /// Show the versions of hull, the guest kernel and agent, and the hypervisor.
    Version,
    /// Print a shell completion script: `source <(hull completion bash)`.
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Low-level tools for developing hull.
    Debug {
        #[command(subcommand)]
        command: DebugCommand,
    },
    /// Disk usage and housekeeping: `hull system df`, `hull system prune`,
    /// `hull system check`.
    System {
        #[command(subcommand)]
        command: SystemCommand,
    },
    /// Container commands: run, ps, logs, stop, kill, rm, start, wait, exec, top, port, inspect.
    #[command(flatten)]
    Container(container::ContainerCommand),
    /// Image commands: images, pull, push, load, save, import, tag, rmi, ...
    #[command(flatten)]
    Image(image::ImageCommand),
    /// Manage containers (`hull container ls|rm|inspect|prune|...`).
    #[command(name = "container")]
    ContainerManage {
        #[command(subcommand)]
        command: container::ContainerManageCommand,
    },
    /// Show resource usage of running containers' VMs (CPU, memory).
    Stats(stats::StatsArgs),
    /// Show what happens to containers, images, volumes and networks.
    Events(events::EventsArgs),
    /// User networks: create, ls, inspect, rm, prune, connect, disconnect.
    Network {
        #[command(subcommand)]
        command: network::NetworkCommand,
    },
    /// Manage volumes (`hull volume create|ls|inspect|rm|prune`).
    Volume {
        #[command(subcommand)]
        command: volume::VolumeCommand,
    },
}

#[derive(Subcommand, Debug)]
enum SystemCommand {
    /// Remove stopped containers, unused user networks, dangling images
    /// (with -a every image no container uses) and the fast-start VM
    /// snapshots (made again on the next run).
    Prune(system::PruneArgs),
    /// Show the disk space images, containers, snapshots and prepared
    /// root filesystems use.
    Df,
    /// Check the hull root after a crash: image blobs present and matching
    /// their digests, no half-written container, no leftover temporary
    /// file, no leaked VMM process, socket or mount. One problem per line;
    /// exit status 1 if any.
    Check,
}

#[derive(Subcommand, Debug)]
enum DebugCommand {
    /// Boot a VM with the agent, print what the guest printed, exit with its status.
    Boot(debug_boot::DebugBootArgs),
    /// Boot a VM with disks, run one command through the agent, exit with its status.
    Run(debug_run::DebugRunArgs),
    /// Prepare an image's root filesystem and print what it measured (JSON).
    Prepare(debug_prepare::DebugPrepareArgs),
    /// Parse and resolve a Dockerfile; print the stages a build would run (JSON).
    Dockerfile(debug_dockerfile::DebugDockerfileArgs),
}

impl Cli {
    /// Docker's exit code when this command fails in hull itself: 125 for
    /// `run` (so a script can tell it from the container's own codes), 1
    /// for every other command.
    pub fn failure_code(&self) -> u8 {
        match self.command {
            Command::Container(ref c) if container::is_run_or_create(c) => exit::HULL_FAILED,
            Command::ContainerManage {
                command: container::ContainerManageCommand::Command(ref c),
            } if container::is_run_or_create(c) => exit::HULL_FAILED,
            // A bad Dockerfile fails as `docker build` does.
            Command::Debug {
                command: DebugCommand::Dockerfile(_),
            } => exit::HULL_FAILED,
            _ => 1,
        }
    }

    /// Runs the command; returns the process exit code.
    pub fn run(self, root: &Path) -> anyhow::Result<u8> {
        match self.command {
            Command::Build(args) => build::run(args, root),
            Command::Info => info::run(root),
            Command::Version => version::run(root),
            Command::Completion { shell } => completion::run(shell),
            Command::Debug {
                command: DebugCommand::Boot(args),
            } => debug_boot::run(args, root),
            Command::Debug {
                command: DebugCommand::Run(args),
            } => debug_run::run(args, root),
            Command::Debug {
                command: DebugCommand::Prepare(args),
            } => debug_prepare::run(args, root),
            Command::Debug {
                command: DebugCommand::Dockerfile(args),
            } => debug_dockerfile::run(args),
            Command::System {
                command: SystemCommand::Prune(args),
            } => system::prune(root, &args),
            Command::System {
                command: SystemCommand::Df,
            } => system::df(root),
            Command::System {
                command: SystemCommand::Check,
            } => system_check::check(root),
            Command::Image(cmd) => image::run(cmd, root),
            Command::Container(cmd) => container::run(cmd, root),
            Command::ContainerManage { command } => container::manage(command, root),
            Command::Stats(args) => stats::run(&args, root),
            Command::Events(args) => events::run(&args, root),
            Command::Network { command } => network::run(command, root),
            Command::Volume { command } => volume::run(command, root),
        }
    }
}
