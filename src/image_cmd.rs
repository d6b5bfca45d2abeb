//! CLI handlers for image commands (`hull images`, `pull`, `load`, ...).

use std::path::Path;

use clap::Subcommand;

/// Image subcommands, flattened into hull's top-level commands.
#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// List images.
    Images,
}

/// Runs an image command against the hull root; returns the exit code.
pub fn run(cmd: ImageCommand, _root: &Path) -> anyhow::Result<u8> {
    match cmd {
        ImageCommand::Images => Ok(0),
    }
}
