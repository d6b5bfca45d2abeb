//! `hull run`: checks the flags, writes the container's configuration
//! from the image's and the user's, then runs it attached or detached.

use std::path::{Path, PathBuf};

use clap::Args;
use images::store::Image;

use super::{check_tty_input, exit_code, lifecycle, CommandError};
use crate::container::engine::{self, Attach};
use crate::container::spec::{self, ContainerConfig};
use crate::container::state::now_rfc3339;
use crate::container::store::{self, ContainerStore};
use crate::oci::Isolation;
use crate::{ports, units};

/// Options of `hull run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Run in the background and print the container ID.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Container name.
    #[arg(long)]
    pub name: Option<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to pass ours).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Read environment variables from a file.
    #[arg(long = "env-file")]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// User (name|uid[:group|gid]).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Override the image's entrypoint.
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Keep stdin open.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Container hostname (default: the short ID).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Guest memory (Docker units).
    #[arg(short = 'm', long, default_value = "256m")]
    pub memory: String,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u8,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Publish a container port on the host:
    /// [IP:][HOSTPORT:]CONTAINERPORT[/tcp] (IPv6 as [::1]:8080:80).
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    pub publish: Vec<String>,
    /// Publish every TCP port the image exposes on a free host port.
    #[arg(short = 'P', long = "publish-all")]
    pub publish_all: bool,
    /// Network: `default` (outbound through the container's own passt),
    /// `none` (loopback only) or a user network (`hull network create`).
    #[arg(long = "network", alias = "net", default_value = "default")]
    pub network: String,
    /// Another name of the container on its user network (repeatable).
    #[arg(long = "network-alias", alias = "net-alias", value_name = "NAME")]
    pub network_alias: Vec<String>,
    /// Pull the image: `missing` (when the store lacks it), `always`, `never`.
    #[arg(long, value_enum, default_value_t)]
    pub pull: super::auto_pull::PullPolicy,
    /// Print nothing about pulling the image or preparing it.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// How to show a first start's stages on stderr: `auto` (live on a
    /// terminal, else nothing), `tty`, `plain` (a line per stage), `quiet`.
    #[arg(long, value_enum, default_value_t)]
    pub progress: crate::cli::progress_view::ProgressMode,
    /// Set a label on the container (KEY=VALUE, or KEY for an empty value).
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// Isolation: `vm` (its own microVM) or `container` (namespaces on
    /// the host kernel, through an OCI runtime). Default: the hull root's
    /// `isolation` file, else vm.
    #[arg(long, env = "HULL_ISOLATION")]
    pub isolation: Option<String>,
    /// OCI runtime for `--isolation container`: crun, runc or a path to
    /// one (default: crun, else runc).
    #[arg(long)]
    pub runtime: Option<String>,
    /// Mount a volume: `NAME:/path[:ro]` (made if missing), or `/path`
    /// for a new anonymous one.
    #[arg(short = 'v', long = "volume", value_name = "NAME:PATH[:ro]")]
    pub volume: Vec<String>,
    /// Mount a volume: `type=volume,source=NAME,target=/path[,readonly]`.
    #[arg(long = "mount", value_name = "SPEC")]
    pub mount: Vec<String>,
    /// Mount the volumes of another container (`NAME[:ro]`).
    #[arg(long = "volumes-from", value_name = "CONTAINER")]
    pub volumes_from: Vec<String>,
    /// Run this prepared image disk (EROFS) instead of an image from the
    /// store; IMAGE is then only its name. For containerd's shim, whose
    /// snapshotter has already unpacked the layers on the host.
    #[arg(long, hide = true, value_name = "PATH")]
    pub rootfs_disk: Option<PathBuf>,
    /// Image to run.
    pub image: String,
    /// Command and arguments (replace the image's Cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Runs `hull run`; returns the container's exit code (0 when detached).
pub fn run(args: RunArgs, root: &Path, store: &ContainerStore) -> anyhow::Result<u8> {
    let (config, dir) = create_container(&args, root, store, true)?;
    let id = config.id.clone();
    let view = crate::cli::progress_view::StageView::new(args.progress, args.quiet);
    if args.detach {
        let c = store.find(&id)?;
        lifecycle::start_detached(root, &c, &view)?;
        println!("{id}");
        return Ok(0);
    }
    let result = engine::run(
        root,
        &dir,
        &config,
        Attach::Terminal {
            stdin: args.interactive,
        },
        &view,
    );
    if args.rm {
        store.remove(&dir)?;
        super::volumes::remove_anonymous(root, &config);
    }
    Ok(exit_code(result?))
}

/// Runs `hull create`: the container as `run` would make it, not started;
/// prints its ID.
pub fn create(args: RunArgs, root: &Path, store: &ContainerStore) -> anyhow::Result<u8> {
    let (config, _) = create_container(&args, root, store, false)?;
    println!("{}", config.id);
    Ok(0)
}

/// Checks the flags, resolves the image and writes the container's
/// configuration. `starting` (`run`) checks now that the published ports
/// are free and that `-it` has a terminal; `create` leaves that to `start`.
fn create_container(
    args: &RunArgs,
    root: &Path,
    store: &ContainerStore,
    starting: bool,
) -> anyhow::Result<(ContainerConfig, PathBuf)> {
    let mem_mib = check_flags(args, starting)?;
    let isolation = isolation_of(args, root)?;
    let network = network_of(args, root, isolation)?;
    if isolation == Isolation::Container {
        super::super::exit::require_root("--isolation container")?;
        // A missing runtime is an error before anything is created.
        crate::oci::runtime::Runtime::find(args.runtime.as_deref())?;
    }
    let ports = args
        .publish
        .iter()
        .map(|p| ports::spec::parse(p))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(disk) = &args.rootfs_disk {
        return create_disk_container(args, store, disk, mem_mib, network, ports);
    }
    let images = images::Store::open(root)?;
    let image = super::auto_pull::image(&images, root, &args.image, args.pull, args.quiet)?;
    let ports = with_exposed_ports(args, &image, ports)?;
    if starting {
        // A port in use is an error before anything is created; the VMM
        // binds again (and would report a port taken in between).
        drop(ports::PortForwarder::bind(&ports)?);
    }
    let (mounts, binds) = super::volumes::requested(args, &image, store)?;
    if isolation == Isolation::Container && !mounts.is_empty() {
        return Err(CommandError::Invalid(
            "--volume",
            "volumes are not supported with --isolation container yet".into(),
        )
        .into());
    }
    let layers = image
        .layers
        .iter()
        .map(|l| (l.digest.to_string(), l.path.clone()))
        .collect();
    let image_config = image.config.config().clone().unwrap_or_default();
    let mut config = container_config(args, store, &image_config, mem_mib, ports)?;
    config.image_id = image.id().to_string();
    config.layers = layers;
    config.network = network;
    config.network_aliases = args.network_alias.clone();
    config.isolation = isolation;
    config.runtime = args
        .runtime
        .clone()
        .filter(|_| isolation == Isolation::Container);
    if isolation == Isolation::Container {
        config.userns = Some(user_namespace());
    }
    config.binds = binds;
    config.mounts = super::volumes::create(root, mounts)?;
    match store.create(&config) {
        Ok(dir) => Ok((config, dir)),
        Err(e) => {
            super::volumes::remove_anonymous(root, &config);
            Err(e.into())
        }
    }
}

/// `--rootfs-disk`: a VM container of a prepared image disk, with no
/// image defaults (the caller, containerd's shim, passes the whole
/// process), no volumes and no `-P`.
fn create_disk_container(
    args: &RunArgs,
    store: &ContainerStore,
    disk: &Path,
    mem_mib: u64,
    network: crate::network::NetworkMode,
    ports: Vec<ports::PortSpec>,
) -> anyhow::Result<(ContainerConfig, PathBuf)> {
    let unsupported = [
        (
            "--volume",
            !args.volume.is_empty() || !args.mount.is_empty(),
        ),
        ("--publish-all", args.publish_all),
        (
            "--isolation",
            args.isolation.as_deref().is_some_and(|i| i != "vm"),
        ),
    ];
    if let Some((flag, _)) = unsupported.iter().find(|(_, given)| *given) {
        let why = "not supported with --rootfs-disk".to_string();
        return Err(CommandError::Invalid(flag, why).into());
    }
    let disk = std::fs::canonicalize(disk)
        .map_err(|e| CommandError::Invalid("--rootfs-disk", format!("{}: {e}", disk.display())))?;
    let no_defaults = oci_spec::image::Config::default();
    let mut config = container_config(args, store, &no_defaults, mem_mib, ports)?;
    config.network = network;
    config.rootfs_disk = Some(disk);
    let dir = store.create(&config)?;
    Ok((config, dir))
}

/// `--network` (a user network must exist) and `--network-alias` (only
/// on a user network, as in Docker).
fn network_of(
    args: &RunArgs,
    root: &Path,
    isolation: Isolation,
) -> anyhow::Result<crate::network::NetworkMode> {
    use crate::network::NetworkMode;
    let mode = NetworkMode::resolve(root, &args.network)?;
    let user = matches!(mode, NetworkMode::User(_));
    if !args.network_alias.is_empty() && !user {
        return Err(CommandError::Invalid(
            "--network-alias",
            "network-scoped aliases are only supported on user networks".into(),
        )
        .into());
    }
    if let Some(bad) = args.network_alias.iter().find(|a| !spec::valid_name(a)) {
        return Err(CommandError::Invalid(
            "--network-alias",
            format!("{bad:?} (allowed: [a-zA-Z0-9][a-zA-Z0-9_.-]*)"),
        )
        .into());
    }
    if user && isolation == Isolation::Container {
        return Err(CommandError::Invalid(
            "--network",
            format!(
                "{}: user networks are not supported with --isolation container yet",
                args.network
            ),
        )
        .into());
    }
    Ok(mode)
}

/// The user namespace of a new container-mode container; a container
/// that must run with host IDs is never silent about it.
fn user_namespace() -> crate::oci::userns::UserNamespace {
    let ns = crate::oci::userns::choose(Path::new("/etc"));
    if let crate::oci::userns::UserNamespace::Host { reason } = &ns {
        eprintln!("WARNING: no user namespace ({reason}): container root is host root");
    }
    ns
}

/// `--isolation`, else the root's default (`<root>/isolation` holding
/// `vm` or `container`), else vm.
fn isolation_of(args: &RunArgs, root: &Path) -> anyhow::Result<Isolation> {
    let from_root = || std::fs::read_to_string(root.join("isolation")).ok();
    match args.isolation.clone().or_else(from_root) {
        Some(s) => Ok(Isolation::parse(s.trim())?),
        None => Ok(Isolation::Vm),
    }
}

/// Checks the flags that need no image; returns the memory size in MiB.
fn check_flags(args: &RunArgs, starting: bool) -> anyhow::Result<u64> {
    // `create -it` needs no terminal until `start -a`.
    if starting && !args.detach {
        check_tty_input(args.interactive, args.tty)?;
    }
    // Docker's minimum is 6MB; a microVM's kernel needs more.
    let too_small = || {
        CommandError::Invalid(
            "--memory",
            format!(
                "{:?}: the minimum is 64m (Docker's is 6MB; a microVM needs more)",
                args.memory
            ),
        )
    };
    let mem_mib = match units::parse_mib(&args.memory) {
        Ok(m) if m >= 64 => m,
        Ok(_) => return Err(too_small().into()),
        // A plain number is bytes, as in Docker: `-m 1` is too small, not malformed.
        Err(_) if args.memory.trim().parse::<u64>().is_ok() => return Err(too_small().into()),
        Err(e) => return Err(e.into()),
    };
    if args.cpus == 0 {
        return Err(CommandError::Invalid("--cpus", "0".into()).into());
    }
    if let Some(n) = &args.name {
        if !spec::valid_name(n) {
            return Err(CommandError::Invalid(
                "container name",
                format!("{n:?} (allowed: [a-zA-Z0-9][a-zA-Z0-9_.-]*)"),
            )
            .into());
        }
    }
    Ok(mem_mib)
}

/// `-P`: adds every TCP port the image exposes that `-p` did not publish.
fn with_exposed_ports(
    args: &RunArgs,
    image: &Image,
    mut ports: Vec<ports::PortSpec>,
) -> anyhow::Result<Vec<ports::PortSpec>> {
    if !args.publish_all {
        return Ok(ports);
    }
    let cfg = image.config.config().clone().unwrap_or_default();
    for exposed in &cfg.exposed_ports().clone().unwrap_or_default() {
        let Some(port) = ports::spec::parse_exposed(exposed)? else {
            eprintln!("hull: warning: not publishing {exposed}: only TCP ports can be published");
            continue;
        };
        // An explicit -p for the same port wins, as in Docker.
        if !ports.iter().any(|p| p.container_port == port) {
            ports.push(ports::PortSpec {
                host_ip: None,
                host_port: 0,
                container_port: port,
            });
        }
    }
    Ok(ports)
}

/// The container's configuration: the image's defaults overridden by the
/// flags, with a new ID and a name.
fn container_config(
    args: &RunArgs,
    store: &ContainerStore,
    cfg: &oci_spec::image::Config,
    mem_mib: u64,
    ports: Vec<ports::PortSpec>,
) -> anyhow::Result<ContainerConfig> {
    let mut env_flags = Vec::new();
    for f in &args.env_file {
        env_flags.extend(
            spec::read_env_file(f).map_err(|e| {
                CommandError::Invalid("--env-file", format!("{}: {e}", f.display()))
            })?,
        );
    }
    env_flags.extend(args.env.iter().cloned());
    let (argv, env) = spec::process(
        cfg.entrypoint().as_deref().unwrap_or_default(),
        cfg.cmd().as_deref().unwrap_or_default(),
        cfg.env().as_deref().unwrap_or_default(),
        args.entrypoint.as_deref(),
        &args.command,
        &env_flags,
    )?;
    let id = store::new_id();
    let taken: Vec<String> = store.list()?.into_iter().map(|c| c.config.name).collect();
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| store::generate_name(&taken));
    Ok(ContainerConfig {
        id: id.clone(),
        name,
        image: args.image.clone(),
        image_id: String::new(),
        layers: Vec::new(),
        argv,
        env,
        cwd: args
            .workdir
            .clone()
            .or_else(|| cfg.working_dir().clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into()),
        user: args
            .user
            .clone()
            .or_else(|| cfg.user().clone())
            .unwrap_or_default(),
        hostname: args.hostname.clone().unwrap_or_else(|| store::short(&id)),
        mem_mib,
        cpus: args.cpus,
        auto_remove: args.rm,
        read_only: args.read_only,
        interactive: args.interactive,
        ports,
        publish_all: args.publish_all,
        exposed_ports: cfg.exposed_ports().clone().unwrap_or_default(),
        tty: args.tty,
        network: crate::network::NetworkMode::None,
        network_aliases: Vec::new(),
        created: now_rfc3339(),
        labels: labels(cfg.labels().clone().unwrap_or_default(), &args.label),
        isolation: Isolation::Vm,
        runtime: None,
        userns: None,
        mounts: Vec::new(),
        binds: Vec::new(),
        rootfs_disk: None,
    })
}

/// The image's labels with `--label KEY=VALUE` (or `KEY`: empty) over them.
fn labels(
    image: std::collections::HashMap<String, String>,
    flags: &[String],
) -> std::collections::BTreeMap<String, String> {
    let mut labels: std::collections::BTreeMap<String, String> = image.into_iter().collect();
    for f in flags {
        let (k, v) = f.split_once('=').unwrap_or((f, ""));
        labels.insert(k.to_string(), v.to_string());
    }
    labels
}
