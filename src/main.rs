//! `hull`: docker-style containers, each in its own KVM microVM.

mod image_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Command-line interface of hull.
#[derive(Parser, Debug)]
#[command(name = "hull", version, about = "Containers, each in its own KVM microVM")]
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
    /// Image commands: images, pull, push, load, save, import, tag, rmi, ...
    #[command(flatten)]
    Image(image_cmd::ImageCommand),
}

fn default_root() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/hull");
    }
    match std::env::var_os("XDG_DATA_HOME") {
        Some(d) => PathBuf::from(d).join("hull"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".local/share/hull"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = cli.root.clone().unwrap_or_else(default_root);
    let result = match cli.command {
        Command::Image(cmd) => image_cmd::run(cmd, &root),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("hull: {e:#}");
            ExitCode::from(1)
        }
    }
}
