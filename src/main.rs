//! `hull`: docker-style containers, each in its own KVM microVM.
//!
//! `cli` parses the command line and holds one handler per command;
//! `container` keeps containers' state and runs one (`container::engine`);
//! `guest` starts the microVM a container runs in and talks to its agent;
//! `ports` forwards published ports; `oci` runs the same images as plain
//! namespaced containers through crun/runc (`--isolation container`).

mod build;
mod cli;
mod container;
mod events;
mod file_lock;
mod guest;
mod network;
mod oci;
mod ports;
mod progress;
mod units;
mod volume;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

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
    // One malloc arena for every thread, set before any thread exists.
    // With more, glibc reads /sys/devices/system/cpu/online the first time
    // threads contend for an arena, and /proc/sys/vm/overcommit_memory the
    // first time a thread's arena shrinks: file opens a VMM thread under
    // its seccomp filter may not make (vmm::seccomp). It also keeps an
    // idle VMM's memory down.
    // SAFETY: mallopt only changes the allocator's parameters; nothing is
    // allocated yet.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    // `hull` alone: help on stdout and success, as `docker` alone.
    if std::env::args_os().len() == 1 {
        let _ = cli::Cli::command().print_help();
        return ExitCode::SUCCESS;
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    let root = cli.root.clone().unwrap_or_else(default_root);
    // netlink-packet-route warns about every link attribute of a newer
    // kernel than it knows (harmless: hull reads only names and indexes).
    // virtio_queue logs a guest's broken rings at error level, once per
    // notification: a guest could fill the host's disk with them. The
    // devices count and sample those themselves (vmm::virtio::misbehaviour).
    let filter = if cli.debug {
        "debug,netlink_packet_route=error,virtio_queue=off"
    } else {
        "warn,netlink_packet_route=error,virtio_queue=off"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    let failure_code = cli.failure_code();
    match cli.run(&root) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("hull: {e:#}");
            ExitCode::from(cli::exit::for_error(&e, failure_code))
        }
    }
}

/// A command line clap refused, or help or version it prints: on stdout
/// (exit 0) or as one `hull: ` line on stderr with Docker's exit code.
fn usage_error(e: &clap::Error) -> ExitCode {
    let hidden: Vec<String> = Cli::command()
        .get_subcommands()
        .filter(|s| s.is_hide_set())
        .map(|s| s.get_name().to_string())
        .collect();
    let (code, line) = cli::exit::for_usage_error(e, &hidden);
    match line {
        Some(line) => eprintln!("hull: {line}"),
        None => {
            let _ = e.print();
        }
    }
    ExitCode::from(code)
}
