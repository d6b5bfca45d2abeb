//! `hull debug dockerfile`: parse a Dockerfile, resolve it for the given
//! build args and target, and print the stages the build would run, as
//! JSON (instructions after substitution, where Docker substitutes). With
//! a context directory, also the entries `.dockerignore` leaves in.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::json;

use crate::build::ignore::{self, DockerIgnore};
use crate::build::{BuildOptions, Dockerfile, Vars};

/// Options of `hull debug dockerfile`.
#[derive(Args, Debug)]
pub struct DebugDockerfileArgs {
    /// The Dockerfile (`-` reads standard input); default CONTEXT/Dockerfile.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// A build arg, `NAME=VALUE` (`NAME` alone takes the value from the
    /// environment, if set).
    #[arg(long = "build-arg", value_name = "NAME[=VALUE]")]
    pub build_args: Vec<String>,
    /// The stage to build (default: the last one).
    #[arg(long)]
    pub target: Option<String>,
    /// A build context: also list the entries `.dockerignore` leaves in.
    pub context: Option<PathBuf>,
}

/// Parses, resolves and prints; a bad Dockerfile is an error naming its line.
pub fn run(args: DebugDockerfileArgs) -> anyhow::Result<u8> {
    let file = match (&args.file, &args.context) {
        (Some(f), _) => f.clone(),
        (None, Some(c)) => c.join("Dockerfile"),
        (None, None) => PathBuf::from("Dockerfile"),
    };
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
            .context("cannot read the Dockerfile from stdin")?
    } else {
        std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let dockerfile = Dockerfile::parse(&text).map_err(|e| anyhow::anyhow!(e.report()))?;
    let opts = BuildOptions {
        build_args: build_args(&args.build_args),
        target: args.target.clone(),
        ..BuildOptions::default()
    };
    // Base images are not looked up: their env is unknown here.
    let build = dockerfile
        .resolve(&opts, &|_| Vars::new())
        .map_err(|e| anyhow::anyhow!(e.report()))?;
    let mut out = json!({
        "directives": dockerfile.directives,
        "meta_args": build.meta_args,
        "target": build.target,
        "order": build.order,
        "stages": build.stages,
        "unused_build_args": build.unused_build_args,
    });
    if let Some(context) = &args.context {
        let ignore = DockerIgnore::read(context)?;
        let entries: Vec<String> = ignore::walk(context, &ignore)?
            .into_iter()
            .map(|e| e.path.to_string_lossy().into_owned())
            .collect();
        out["context"] = json!(entries);
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(0)
}

/// `--build-arg` values as `(name, value)`; `NAME` alone takes the
/// environment's value and is dropped when it has none, as in Docker.
pub fn build_args(given: &[String]) -> Vec<(String, String)> {
    given
        .iter()
        .filter_map(|arg| match arg.split_once('=') {
            Some((k, v)) => Some((k.to_string(), v.to_string())),
            None => std::env::var(arg).ok().map(|v| (arg.clone(), v)),
        })
        .collect()
}
