//! `hull`: docker-style containers, each in its own KVM microVM.

mod agent_client;
mod container;
mod container_cmd;
mod debug_boot;
mod debug_run;
mod fast_start;
mod file_lock;
mod guest_files;
mod guest_vm;
mod image_cmd;
mod info;
mod initramfs;
mod network;
mod ports;
mod rootfs;
mod serial_watch;
mod terminal;
mod units;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Command-line interface of hull.
#[derive(Parser, Debug)]
#[command(
    name = "hull",
    version,
    about = "Containers, each in its own KVM microVM"
)]
struct Cli {
    /// Root of hull's state (images, containers, kernel cache).
    #[arg(long, global = true, env = "HULL_ROOT")]
    root: Option<PathBuf>,

    /// Verbose logs (same as RUST_LOG=debug).
    #[arg(long, global = true)]
    debug: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show the host's hypervisor, the guest kernel and agent hull uses.
    Info,
    /// Low-level tools for developing hull.
    Debug {
        #[command(subcommand)]
        command: DebugCommand,
    },
    /// Housekeeping of hull's caches.
    System {
        #[command(subcommand)]
        command: SystemCommand,
    },
    /// Container commands: run, ps, logs, stop, kill, rm, start, wait, exec, top, port, inspect.
    #[command(flatten)]
    Container(container_cmd::ContainerCommand),
    /// Image commands: images, pull, push, load, save, import, tag, rmi, ...
    #[command(flatten)]
    Image(image_cmd::ImageCommand),
}

#[derive(Subcommand, Debug)]
enum SystemCommand {
    /// Remove the fast-start VM snapshots (made again on the next run).
    Prune,
}

#[derive(Subcommand, Debug)]
enum DebugCommand {
    /// Boot a VM with the agent, print what the guest printed, exit with its status.
    Boot(debug_boot::DebugBootArgs),
    /// Boot a VM with disks, run one command through the agent, exit with its status.
    Run(debug_run::DebugRunArgs),
}

/// `hull system prune`: deletes the fast-start snapshots.
fn system_prune(root: &std::path::Path) -> anyhow::Result<u8> {
    let store = fast_start::snapshots_dir(root);
    let (count, bytes) = fast_start::prune(&store)
        .map_err(|e| anyhow::anyhow!("cannot prune {}: {e}", store.display()))?;
    println!(
        "Deleted {count} VM snapshot(s), {:.1} MiB reclaimed",
        bytes as f64 / (1 << 20) as f64
    );
    Ok(0)
}

fn default_root() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/hull");
    }
    match std::env::var_os("XDG_DATA_HOME") {
        Some(d) => PathBuf::from(d).join("hull"),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".local/share/hull")
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = cli.root.clone().unwrap_or_else(default_root);
    let filter = if cli.debug { "debug" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Info => info::run(&root),
        Command::Debug {
            command: DebugCommand::Boot(args),
        } => debug_boot::run(args, &root),
        Command::Debug {
            command: DebugCommand::Run(args),
        } => debug_run::run(args, &root),
        Command::System {
            command: SystemCommand::Prune,
        } => system_prune(&root),
        Command::Image(cmd) => image_cmd::run(cmd, &root),
        Command::Container(cmd) => container_cmd::run(cmd, &root),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("hull: {e:#}");
            ExitCode::from(1)
        }
    }
}
