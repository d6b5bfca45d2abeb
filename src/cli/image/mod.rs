//! CLI handlers for image commands (`hull images`, `pull`, `load`, ...).
//! Argument parsing and printing only; the work is in the `images` crate.
//! `pull`, `push`, `login`, `logout` are in [`registry`]; `load`, `save`,
//! `import` in [`archive`]; `images`/`image ls` in [`list`]; `rmi` and
//! `image prune` in [`remove`]; `image inspect` and `history` in [`inspect`].

mod archive;
pub(crate) mod format;
mod inspect;
mod list;
mod registry;
mod remove;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use images::archive::Format;
use images::{Reference, Store};

use crate::events::Kind;

pub(crate) use inspect::image_json;
pub(crate) use remove::image_users;

/// Image subcommands, flattened into hull's top-level commands.
#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// List images.
    Images(ListArgs),
    /// pull, push, load, save, import, tag, history (also under `hull image`).
    #[command(flatten)]
    Verb(ImageVerb),
    /// Remove images.
    Rmi(RmiArgs),
    /// Log in to a registry (credentials stored 0600 under the hull root).
    Login {
        /// User name.
        #[arg(short, long)]
        username: Option<String>,
        /// Password.
        #[arg(short, long)]
        password: Option<String>,
        /// Read the password from stdin.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        registry: RegistryArgs,
        /// Registry host (`localhost:5000`).
        server: String,
    },
    /// Forget a registry's credentials.
    Logout {
        /// Registry host.
        server: String,
    },
    /// Manage images (`hull image ls|rm|inspect|prune|pull|tag|...`).
    Image {
        #[command(subcommand)]
        command: ImageSubcommand,
    },
}

/// The image commands Docker has both at the top level and under
/// `docker image` (`hull pull` is `hull image pull`).
#[derive(Subcommand, Debug)]
pub enum ImageVerb {
    /// Pull an image from a registry.
    Pull {
        /// Platform to pick from a multi-platform image (os/arch[/variant]).
        #[arg(long)]
        platform: Option<String>,
        #[command(flatten)]
        registry: RegistryArgs,
        /// Print only the image reference.
        #[arg(short, long)]
        quiet: bool,
        /// Image reference (`busybox`, `localhost:5000/app:1`, `x@sha256:...`).
        reference: String,
    },
    /// Push an image to a registry.
    Push {
        #[command(flatten)]
        registry: RegistryArgs,
        /// Image reference, as tagged locally.
        reference: String,
    },
    /// Load images from a docker-archive or OCI archive (tar, optionally gzip).
    Load {
        /// Archive to read (default: stdin).
        #[arg(short, long)]
        input: Option<PathBuf>,
        /// Print nothing.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Save images to an archive.
    Save {
        /// Archive to write (default: stdout, unless it is a terminal).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// docker-archive (default) or oci-archive.
        #[arg(long, default_value = "docker-archive")]
        format: Format,
        /// Images to save.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Create an image from a rootfs tarball (plain, gzip or zstd).
    Import {
        /// Dockerfile instruction to apply to the config (CMD, ENV, ...).
        #[arg(short, long = "change")]
        changes: Vec<String>,
        /// Rootfs tarball.
        file: PathBuf,
        /// Name for the image.
        reference: Option<String>,
    },
    /// Give an image another name.
    Tag {
        /// Existing image.
        source: String,
        /// New name.
        target: String,
    },
    /// Show the history of an image.
    History {
        /// Do not truncate output.
        #[arg(long)]
        no_trunc: bool,
        /// Image.
        image: String,
    },
}

/// `hull image ...`.
#[derive(Subcommand, Debug)]
pub enum ImageSubcommand {
    /// Show details of images as JSON.
    Inspect {
        /// Print each image through a Go template (`{{.Id}}`) or `json`.
        #[arg(short = 'f', long)]
        format: Option<String>,
        /// Images.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove dangling images and unreferenced blobs.
    Prune {
        /// Do not ask for confirmation (hull never asks).
        #[arg(short, long)]
        force: bool,
    },
    /// List images.
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Remove images.
    Rm(RmiArgs),
    /// pull, push, load, save, import, tag, history.
    #[command(flatten)]
    Verb(ImageVerb),
}

/// Arguments of `hull images`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Show all images (hull has no intermediate images: same as default).
    #[arg(short, long)]
    all: bool,
    /// Only show image IDs.
    #[arg(short, long)]
    quiet: bool,
    /// Show digests.
    #[arg(long)]
    digests: bool,
    /// `table`, `table TEMPLATE`, `json` or a Go template
    /// (`{{.Repository}}:{{.Tag}}`).
    #[arg(long)]
    format: Option<String>,
    /// Show full image IDs.
    #[arg(long)]
    no_trunc: bool,
    /// Only images of this repository (`busybox`, `busybox:1.36`).
    repository: Option<String>,
}

/// Arguments of `hull rmi`.
#[derive(Args, Debug)]
pub struct RmiArgs {
    /// Remove an image with several tags by ID.
    #[arg(short, long)]
    force: bool,
    /// Images (names or IDs).
    #[arg(required = true)]
    images: Vec<String>,
}

/// Registry connection flags.
#[derive(Args, Debug)]
pub struct RegistryArgs {
    /// Allow plain HTTP to this registry host (loopback needs no flag).
    #[arg(
        long = "insecure-registry",
        env = "HULL_INSECURE_REGISTRY",
        value_delimiter = ','
    )]
    insecure: Vec<String>,
}

/// Runs an image command; returns the exit code.
pub fn run(cmd: ImageCommand, root: &Path) -> anyhow::Result<u8> {
    let store = || Store::open(root).context("cannot open the image store");
    match cmd {
        ImageCommand::Images(a) => list::list(&store()?, &a),
        ImageCommand::Verb(v) => run_verb(v, root),
        ImageCommand::Rmi(a) => remove::rmi(&store()?, root, &a, &remove::image_users(root)?),
        ImageCommand::Login {
            username,
            password,
            password_stdin,
            registry,
            server,
        } => registry::login(root, &server, username, password, password_stdin, registry),
        ImageCommand::Logout { server } => registry::logout(root, &server),
        ImageCommand::Image { command } => match command {
            ImageSubcommand::Inspect { format, images } => {
                inspect::inspect(&store()?, &images, format.as_deref())
            }
            ImageSubcommand::Prune { force: _ } => {
                remove::prune(&store()?, &remove::image_users(root)?)
            }
            ImageSubcommand::Ls(a) => list::list(&store()?, &a),
            ImageSubcommand::Rm(a) => remove::rmi(&store()?, root, &a, &remove::image_users(root)?),
            ImageSubcommand::Verb(v) => run_verb(v, root),
        },
    }
}

/// Runs an image verb, from the top level or under `hull image`, and
/// records its events when it succeeds.
fn run_verb(cmd: ImageVerb, root: &Path) -> anyhow::Result<u8> {
    let events = verb_events(&cmd);
    let code = run_verb_only(cmd, root)?;
    if code == 0 {
        for (action, id, attributes) in events {
            let attributes: Vec<(&str, &str)> =
                attributes.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let event = crate::events::Event::now(Kind::Image, action, &id, &attributes);
            crate::events::record(root, &event);
        }
    }
    Ok(code)
}

/// An image event: action, ID (the reference as the user gave it) and
/// attributes.
type ImageEvent = (&'static str, String, Vec<(&'static str, String)>);

/// The events a verb causes when it succeeds (`load` and `import` record
/// their own: only they know the images they made).
fn verb_events(cmd: &ImageVerb) -> Vec<ImageEvent> {
    match cmd {
        ImageVerb::Pull { reference, .. } => vec![("pull", reference.clone(), Vec::new())],
        ImageVerb::Push { reference, .. } => vec![("push", reference.clone(), Vec::new())],
        ImageVerb::Save { images, .. } => images
            .iter()
            .map(|i| ("save", i.clone(), Vec::new()))
            .collect(),
        ImageVerb::Tag { source, target } => {
            vec![("tag", source.clone(), vec![("name", target.clone())])]
        }
        _ => Vec::new(),
    }
}

fn run_verb_only(cmd: ImageVerb, root: &Path) -> anyhow::Result<u8> {
    let store = || Store::open(root).context("cannot open the image store");
    match cmd {
        ImageVerb::Pull {
            platform,
            registry,
            quiet,
            reference,
        } => registry::pull(
            &store()?,
            root,
            &reference,
            platform.as_deref(),
            registry,
            quiet,
        ),
        ImageVerb::Push {
            registry,
            reference,
        } => registry::push(&store()?, root, &reference, registry),
        ImageVerb::Load { input, quiet } => archive::load(&store()?, root, input.as_deref(), quiet),
        ImageVerb::Save {
            output,
            format,
            images,
        } => archive::save(&store()?, &images, output.as_deref(), format),
        ImageVerb::Import {
            changes,
            file,
            reference,
        } => archive::import(&store()?, root, &file, reference.as_deref(), &changes),
        ImageVerb::Tag { source, target } => tag(&store()?, &source, &target),
        ImageVerb::History { no_trunc, image } => {
            inspect::history(&store()?.image(&image)?, no_trunc)
        }
    }
}

/// `hull tag`.
fn tag(store: &Store, source: &str, target: &str) -> anyhow::Result<u8> {
    let dst = Reference::parse(target)?;
    if dst.digest().is_some() {
        bail!("cannot tag with a digest: {target}");
    }
    store.tag(source, &dst)?;
    Ok(0)
}
