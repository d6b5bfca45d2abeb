//! `hull`: docker-style containers, each in its own KVM microVM.
//!
//! `cli` parses the command line and holds one handler per command;
//! `container` keeps containers' state and runs one (`container::engine`);
//! `guest` starts the microVM a container runs in and talks to its agent;
//! `ports` forwards published ports.

mod cli;
mod container;
mod file_lock;
mod guest;
mod network;
mod ports;
mod units;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use cli::Cli;

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
    let result = cli.run(&root);
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("hull: {e:#}");
            ExitCode::from(1)
        }
    }
}
