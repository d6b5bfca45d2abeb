//! CLI handlers for image commands (`hull images`, `pull`, `load`, ...).
//! Argument parsing and printing only; the work is in the `images` crate.

mod format;

use std::collections::HashSet;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use images::archive::{self, Format};
use images::platform::Platform;
use images::registry::{self, Credentials, Options};
use images::store::{short, Image, ImageUser};
use images::{Reference, Store};

/// Image subcommands, flattened into hull's top-level commands.
#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// List images.
    Images(ListArgs),
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
    /// Remove images.
    Rmi(RmiArgs),
    /// Show the history of an image.
    History {
        /// Do not truncate output.
        #[arg(long)]
        no_trunc: bool,
        /// Image.
        image: String,
    },
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
    /// Manage images (`hull image inspect`, `hull image prune`, ...).
    Image {
        #[command(subcommand)]
        command: ImageSubcommand,
    },
}

/// `hull image ...`.
#[derive(Subcommand, Debug)]
pub enum ImageSubcommand {
    /// Show details of images as JSON.
    Inspect {
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
    /// Output format: `table` or `json` (one JSON object per line).
    #[arg(long, default_value = "table")]
    format: String,
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

/// Runs an image command against the hull root; returns the exit code.
pub fn run(cmd: ImageCommand, root: &Path) -> anyhow::Result<u8> {
    let store = || Store::open(root).context("cannot open the image store");
    match cmd {
        ImageCommand::Images(a) => list(&store()?, &a),
        ImageCommand::Pull {
            platform,
            registry,
            quiet,
            reference,
        } => {
            let r = Reference::parse(&reference)?;
            let platform = platform.as_deref().map(Platform::parse).transpose()?;
            let opts = options(root, &r, registry, platform, !quiet)?;
            let rep = registry::pull(&store()?, &r, &opts)?;
            if !quiet {
                println!("Digest: {}", rep.digest);
                if rep.downloaded == 0 {
                    println!("Status: Image is up to date for {}", r.familiar());
                } else {
                    println!("Status: Downloaded newer image for {}", r.familiar());
                }
            }
            println!("{r}");
            Ok(0)
        }
        ImageCommand::Push {
            registry,
            reference,
        } => {
            let r = Reference::parse(&reference)?;
            let opts = options(root, &r, registry, None, false)?;
            let (d, size, _) = registry::push(&store()?, &r, &opts)?;
            println!("{}: digest: {d} size: {size}", r.tag().unwrap_or("latest"));
            Ok(0)
        }
        ImageCommand::Load { input, quiet } => {
            let lines = match input {
                Some(path) => archive::load(&store()?, &path)?,
                None => {
                    if std::io::stdin().is_terminal() {
                        bail!("no archive given: use -i FILE or pipe one into stdin");
                    }
                    archive::load_reader(&store()?, std::io::stdin().lock())?
                }
            };
            if !quiet {
                for l in lines {
                    println!("{l}");
                }
            }
            Ok(0)
        }
        ImageCommand::Save {
            output,
            format,
            images,
        } => {
            match output {
                Some(path) => archive::save(&store()?, &images, &path, format)?,
                None => {
                    if std::io::stdout().is_terminal() {
                        bail!("refusing to write an archive to a terminal: use -o FILE or a pipe");
                    }
                    archive::write(&store()?, &images, std::io::stdout().lock(), format)?
                }
            }
            Ok(0)
        }
        ImageCommand::Import {
            changes,
            file,
            reference,
        } => {
            let r = reference.as_deref().map(Reference::parse).transpose()?;
            let id = images::import::import_rootfs(&store()?, &file, r.as_ref(), &changes)?;
            println!("{id}");
            Ok(0)
        }
        ImageCommand::Tag { source, target } => {
            let dst = Reference::parse(&target)?;
            if dst.digest().is_some() {
                bail!("cannot tag with a digest: {target}");
            }
            store()?.tag(&source, &dst)?;
            Ok(0)
        }
        ImageCommand::Rmi(a) => rmi(&store()?, &a, &image_users(root)?),
        ImageCommand::History { no_trunc, image } => history(&store()?.image(&image)?, no_trunc),
        ImageCommand::Login {
            username,
            password,
            password_stdin,
            registry,
            server,
        } => {
            let password = match (password, password_stdin) {
                (Some(_), true) => bail!("--password and --password-stdin are exclusive"),
                (Some(p), false) => p,
                (None, true) => {
                    let mut s = String::new();
                    std::io::stdin()
                        .read_to_string(&mut s)
                        .context("cannot read the password from stdin")?;
                    s.trim_end_matches(['\n', '\r']).to_owned()
                }
                (None, false) => bail!("login needs --username and --password or --password-stdin"),
            };
            let Some(username) = username else {
                bail!("login needs --username");
            };
            let opts = Options {
                insecure_registries: registry.insecure,
                ..Options::default()
            };
            registry::login(root, &server, Credentials { username, password }, &opts)?;
            println!("Login Succeeded");
            Ok(0)
        }
        ImageCommand::Logout { server } => {
            if registry::logout(root, &server)? {
                println!("Removing login credentials for {server}");
            } else {
                println!("Not logged in to {server}");
            }
            Ok(0)
        }
        ImageCommand::Image { command } => match command {
            ImageSubcommand::Inspect { images } => inspect(&store()?, &images),
            ImageSubcommand::Prune { force: _ } => {
                let (removed, freed) = store()?.prune(&image_users(root)?)?;
                if !removed.is_empty() {
                    println!("Deleted Images:");
                    for id in removed {
                        println!("deleted: {id}");
                    }
                    println!();
                }
                println!("Total reclaimed space: {}", format::size(freed));
                Ok(0)
            }
            ImageSubcommand::Ls(a) => list(&store()?, &a),
            ImageSubcommand::Rm(a) => rmi(&store()?, &a, &image_users(root)?),
        },
    }
}

fn options(
    root: &Path,
    r: &Reference,
    reg: RegistryArgs,
    platform: Option<Platform>,
    progress: bool,
) -> anyhow::Result<Options> {
    Ok(Options {
        insecure_registries: reg.insecure,
        platform,
        progress: progress && std::io::stderr().is_terminal(),
        credentials: registry::lookup(root, r.domain())?,
    })
}

fn list(store: &Store, a: &ListArgs) -> anyhow::Result<u8> {
    let _ = a.all;
    let mut rows = store.list()?;
    if let Some(filter) = &a.repository {
        // `REPO` matches every tag of it; `REPO:TAG` that tag only.
        let has_tag = filter
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'));
        let want = Reference::parse(filter)?;
        rows.retain(|row| {
            row.name.as_ref().is_some_and(|n| {
                n.repository() == want.repository() && (!has_tag || n.tag() == want.tag())
            })
        });
    }
    if a.quiet {
        let mut seen = HashSet::new();
        for row in &rows {
            let id = row.image.short_id();
            if seen.insert(id.clone()) {
                println!("{id}");
            }
        }
        return Ok(0);
    }
    let now = images::time::parse_unix(&images::time::now_rfc3339()).unwrap_or(0);
    let created = |i: &Image| {
        i.config
            .created()
            .as_deref()
            .and_then(images::time::parse_unix)
            .map(|t| format::ago(now.saturating_sub(t)))
            .unwrap_or_else(|| "N/A".into())
    };
    let name_of = |row: &images::ImageSummary| match &row.name {
        Some(n) => (
            n.familiar_repository(),
            n.tag().unwrap_or("<none>").to_owned(),
        ),
        None => ("<none>".to_owned(), "<none>".to_owned()),
    };
    match a.format.as_str() {
        "json" => {
            for row in &rows {
                let (repo, tag) = name_of(row);
                let v = serde_json::json!({
                    "Repository": repo,
                    "Tag": tag,
                    "ID": row.image.short_id(),
                    "Digest": row.image.digest.to_string(),
                    "CreatedAt": row.image.config.created(),
                    "CreatedSince": created(&row.image),
                    "Size": format::size(row.image.size()),
                    "VirtualSize": row.image.size(),
                });
                println!("{v}");
            }
        }
        "table" => {
            let mut table = vec![{
                let mut h = vec!["REPOSITORY", "TAG"];
                if a.digests {
                    h.push("DIGEST");
                }
                h.extend(["IMAGE ID", "CREATED", "SIZE"]);
                h.into_iter().map(String::from).collect::<Vec<_>>()
            }];
            for row in &rows {
                let (repo, tag) = name_of(row);
                let mut r = vec![repo, tag];
                if a.digests {
                    r.push(row.image.digest.to_string());
                }
                r.extend([
                    row.image.short_id(),
                    created(&row.image),
                    format::size(row.image.size()),
                ]);
                table.push(r);
            }
            format::print_table(&table);
        }
        other => bail!("unknown --format {other:?} (table, json)"),
    }
    Ok(0)
}

/// The containers of the hull root, as users of their images: running or
/// stopped, each keeps its image (and the blobs it may need to prepare
/// its root filesystem again) until it is removed.
fn image_users(root: &Path) -> anyhow::Result<Vec<ImageUser>> {
    use crate::container::{state::Status, store};
    Ok(store::ContainerStore::new(root)
        .list()?
        .into_iter()
        .map(|c| ImageUser {
            container: store::short(&c.config.id),
            running: c.state.status == Status::Running,
            image_id: c.config.image_id,
        })
        .collect())
}

fn rmi(store: &Store, a: &RmiArgs, users: &[ImageUser]) -> anyhow::Result<u8> {
    let mut code = 0;
    for img in &a.images {
        match store.remove(img, a.force, users) {
            Ok(rep) => {
                for u in rep.untagged {
                    println!("Untagged: {u}");
                }
                for d in rep.deleted {
                    println!("Deleted: {d}");
                }
            }
            Err(e) => {
                eprintln!("hull: {:#}", anyhow::Error::from(e));
                code = 1;
            }
        }
    }
    Ok(code)
}

fn inspect(store: &Store, names: &[String]) -> anyhow::Result<u8> {
    let mut out = Vec::new();
    for n in names {
        let i = store.image(n)?;
        let config: serde_json::Value = serde_json::to_value(&i.config)?;
        out.push(serde_json::json!({
            "Id": i.id().to_string(),
            "Digest": i.digest.to_string(),
            "ManifestDigest": i.manifest_digest.to_string(),
            "MediaType": i.manifest_media_type,
            "RepoTags": i.names.iter().map(|r| r.familiar()).collect::<Vec<_>>(),
            "Created": i.config.created(),
            "Architecture": i.config.architecture().to_string(),
            "Os": i.config.os().to_string(),
            "Size": i.size(),
            "Config": config.get("config").cloned().unwrap_or(serde_json::Value::Null),
            "RootFS": config.get("rootfs").cloned().unwrap_or(serde_json::Value::Null),
            "Layers": i.layers.iter().map(|l| serde_json::json!({
                "Digest": l.digest.to_string(),
                "MediaType": l.media_type,
                "Size": l.size,
            })).collect::<Vec<_>>(),
        }));
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(0)
}

fn history(image: &Image, no_trunc: bool) -> anyhow::Result<u8> {
    let now = images::time::parse_unix(&images::time::now_rfc3339()).unwrap_or(0);
    let mut rows = Vec::new();
    let mut layers = image.layers.iter();
    let entries = image.config.history().clone().unwrap_or_default();
    if entries.is_empty() {
        for l in image.layers.iter() {
            rows.push([
                "<missing>".into(),
                "N/A".into(),
                String::new(),
                format::size(l.size),
                String::new(),
            ]);
        }
    }
    for h in &entries {
        let size = if h.empty_layer().unwrap_or(false) {
            0
        } else {
            layers.next().map(|l| l.size).unwrap_or(0)
        };
        let created = h
            .created()
            .as_deref()
            .and_then(images::time::parse_unix)
            .map(|t| format::ago(now.saturating_sub(t)))
            .unwrap_or_else(|| "N/A".into());
        let mut by = h.created_by().clone().unwrap_or_default();
        if !no_trunc && by.chars().count() > 45 {
            by = by.chars().take(44).collect::<String>() + "…";
        }
        rows.push([
            "<missing>".into(),
            created,
            by,
            format::size(size),
            h.comment().clone().unwrap_or_default(),
        ]);
    }
    rows.reverse();
    if let Some(top) = rows.first_mut() {
        top[0] = if no_trunc {
            image.id().to_string()
        } else {
            short(image.id())
        };
    }
    let mut table = vec![["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]
        .map(String::from)
        .to_vec()];
    table.extend(rows.into_iter().map(|r| r.to_vec()));
    format::print_table(&table);
    Ok(0)
}
