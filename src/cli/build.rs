//! `hull build`: a Dockerfile and a context directory to an image in the
//! store (the engine is `crate::build::engine`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use images::Reference;

use crate::build::engine::{self, BuildRequest};
use crate::build::BuildOptions;
use crate::network::NetworkMode;

/// Options of `hull build`.
#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Name the image `NAME[:TAG]` (repeatable).
    #[arg(short = 't', long = "tag", value_name = "NAME[:TAG]")]
    pub tags: Vec<String>,
    /// The Dockerfile (`-` reads standard input); default CONTEXT/Dockerfile.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// A build arg, `NAME=VALUE` (`NAME` alone takes the environment's value).
    #[arg(long = "build-arg", value_name = "NAME[=VALUE]")]
    pub build_args: Vec<String>,
    /// The stage to build (default: the last one).
    #[arg(long)]
    pub target: Option<String>,
    /// Run every step, ignoring the build cache.
    #[arg(long = "no-cache")]
    pub no_cache: bool,
    /// The network of RUN steps: `default` (outbound through passt) or `none`.
    #[arg(long, default_value = "default")]
    pub network: String,
    /// Print only the image ID (on stdout).
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Progress output: `plain` (the only kind so far; `auto` and `tty`
    /// print the same).
    #[arg(long, default_value = "auto", value_parser = ["auto", "plain", "tty"])]
    pub progress: String,
    /// The build context directory.
    pub context: PathBuf,
}

/// Runs `hull build`.
pub fn run(args: BuildArgs, root: &Path) -> anyhow::Result<u8> {
    let tags = args
        .tags
        .iter()
        .map(|t| Reference::parse(t).with_context(|| format!("invalid tag {t:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let network = NetworkMode::parse(&args.network)?;
    let file = args
        .file
        .clone()
        .unwrap_or_else(|| args.context.join("Dockerfile"));
    let dockerfile = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
            .context("cannot read the Dockerfile from stdin")?
    } else {
        std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read Dockerfile {}", file.display()))?
    };
    let request = BuildRequest {
        context: args.context.clone(),
        dockerfile,
        options: BuildOptions {
            build_args: super::debug_dockerfile::build_args(&args.build_args),
            target: args.target.clone(),
            ..BuildOptions::default()
        },
        tags,
        no_cache: args.no_cache,
        network,
        quiet: args.quiet,
    };
    let id = engine::build(root, &request)?;
    if args.quiet {
        println!("{id}");
    }
    Ok(0)
}
