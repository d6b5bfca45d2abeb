//! CLI handlers for container commands (`hull run`, `ps`, `logs`, `stop`,
//! `kill`, `rm`, `exec`, `start`, `wait`, `top`, `port`, `inspect`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};

use crate::container::engine::{self, Attach};
use crate::container::logs;
use crate::container::spec::{self, ContainerConfig};
use crate::container::state::{now_rfc3339, pid_alive, Status};
use crate::container::store::{self, Container, ContainerStore};
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
    /// Network: `default` (outbound through the container's own passt)
    /// or `none` (loopback only).
    #[arg(long = "network", alias = "net", default_value = "default")]
    pub network: String,
    /// Image to run.
    pub image: String,
    /// Command and arguments (replace the image's Cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Container subcommands, flattened into hull's top-level commands.
#[derive(Subcommand, Debug)]
pub enum ContainerCommand {
    /// Run a command in a new container, in its own microVM.
    Run(RunArgs),
    /// List containers.
    Ps {
        /// Show all containers (default: running only).
        #[arg(short = 'a', long)]
        all: bool,
        /// Only IDs.
        #[arg(short = 'q', long)]
        quiet: bool,
        /// Output format: table or json.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Show a container's output.
    Logs {
        /// Keep following new output.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<String>,
        /// Prefix each line with its timestamp.
        #[arg(short = 't', long)]
        timestamps: bool,
        /// Container.
        container: String,
    },
    /// Stop running containers (SIGTERM, then SIGKILL after the timeout).
    Stop {
        /// Seconds to wait before killing.
        #[arg(short = 't', long, default_value_t = 10)]
        time: u64,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Restart containers (stop, then start).
    Restart {
        /// Seconds to wait before killing.
        #[arg(short = 't', long, default_value_t = 10)]
        time: u64,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Send a signal to a container's process.
    Kill {
        /// Signal name or number.
        #[arg(short = 's', long, default_value = "KILL")]
        signal: String,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove containers.
    Rm {
        /// Stop running containers first.
        #[arg(short = 'f', long)]
        force: bool,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Start stopped containers.
    Start {
        /// Attach to its output and wait for it.
        #[arg(short = 'a', long)]
        attach: bool,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Wait for containers to stop and print their exit codes.
    Wait {
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Run a command in a running container.
    Exec {
        /// Keep stdin open.
        #[arg(short = 'i', long)]
        interactive: bool,
        /// Allocate a pseudo-TTY.
        #[arg(short = 't', long)]
        tty: bool,
        /// Environment variable KEY=VALUE.
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        /// Working directory.
        #[arg(short = 'w', long)]
        workdir: Option<String>,
        /// User.
        #[arg(short = 'u', long)]
        user: Option<String>,
        /// Container.
        container: String,
        /// Command and arguments.
        #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Show the processes running in a container.
    Top {
        /// Container.
        container: String,
    },
    /// List a container's published ports, or the host addresses of one.
    Port {
        /// Container.
        container: String,
        /// Container port (`80` or `80/tcp`).
        port: Option<String>,
    },
    /// Show containers' configuration and state as JSON.
    Inspect {
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// (internal) Run a detached container's VMM.
    #[command(name = "__container-vmm", hide = true)]
    Vmm {
        /// Container ID.
        id: String,
    },
}

/// Errors of container commands.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Bad flag value.
    #[error("Invalid {0}: {1}")]
    Invalid(&'static str, String),
    /// `-i -t` with a stdin that is not a terminal (Docker refuses it too:
    /// raw mode and window sizes need one).
    #[error("The input device is not a TTY")]
    NotATty,
    /// The container is not running.
    #[error("Container {0} is not running")]
    NotRunning(String),
    /// The container is running and -f was not given.
    #[error("Container {0} is running: stop it first or use rm -f")]
    Running(String),
    /// A detached container failed to start.
    #[error("Container {0} failed to start: {1}")]
    StartFailed(String, String),
    /// `hull port` for a port that is not published.
    #[error("No public port '{0}/tcp' published for {1}")]
    NoPublicPort(u16, String),
}

/// Runs a container command; returns the exit code.
pub fn run(cmd: ContainerCommand, root: &Path) -> anyhow::Result<u8> {
    let store = ContainerStore::new(root);
    match cmd {
        ContainerCommand::Run(args) => run_container(args, root, &store),
        ContainerCommand::Ps { all, quiet, format } => ps(&store, all, quiet, &format),
        ContainerCommand::Logs {
            follow,
            tail,
            timestamps,
            container,
        } => {
            let c = store.find(&container)?;
            let tail = match tail.as_deref() {
                None | Some("all") => None,
                Some(n) => Some(
                    n.parse::<usize>()
                        .map_err(|_| CommandError::Invalid("--tail", n.into()))?,
                ),
            };
            let dir = c.dir.clone();
            logs::print(&c.dir, tail, timestamps, follow, || {
                crate::container::State::load(&dir).is_ok_and(|s| s.status == Status::Running)
            })?;
            Ok(0)
        }
        ContainerCommand::Stop { time, containers } => {
            for name in containers {
                let c = store.find(&name)?;
                stop(root, &c, Duration::from_secs(time))?;
                println!("{name}");
            }
            Ok(0)
        }
        ContainerCommand::Restart { time, containers } => {
            for name in containers {
                let c = store.find(&name)?;
                stop(root, &c, Duration::from_secs(time))?;
                start_detached(root, &store.find(&name)?)?;
                println!("{name}");
            }
            Ok(0)
        }
        ContainerCommand::Kill { signal, containers } => {
            let sig = parse_signal(&signal)?;
            for name in containers {
                let c = store.find(&name)?;
                signal_main(root, &c, sig)?;
                println!("{name}");
            }
            Ok(0)
        }
        ContainerCommand::Rm { force, containers } => {
            for name in containers {
                let c = store.find(&name)?;
                if c.state.status == Status::Running {
                    if !force {
                        return Err(CommandError::Running(name).into());
                    }
                    kill_vmm(&c);
                }
                // A VMM killed with -9 could not remove its socket.
                let _ = std::fs::remove_file(engine::socket_path(root, &c.config.id));
                store.remove(&c.dir)?;
                println!("{name}");
            }
            Ok(0)
        }
        ContainerCommand::Start { attach, containers } => {
            for name in containers {
                let c = store.find(&name)?;
                if c.state.status == Status::Running {
                    continue;
                }
                if attach {
                    return Ok(exit_code(engine::run(
                        root,
                        &c.dir,
                        &c.config,
                        Attach::Terminal { stdin: false },
                    )?));
                }
                start_detached(root, &c)?;
                println!("{name}");
            }
            Ok(0)
        }
        ContainerCommand::Wait { containers } => {
            for name in containers {
                let c = store.find(&name)?;
                loop {
                    let s = crate::container::State::load(&c.dir)?;
                    if s.status != Status::Running {
                        println!("{}", s.exit_code.unwrap_or(0));
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            Ok(0)
        }
        ContainerCommand::Exec {
            interactive,
            tty,
            env,
            workdir,
            user,
            container,
            command,
        } => {
            let c = store.find(&container)?;
            if c.state.status != Status::Running || c.state.process_id.is_none() {
                return Err(CommandError::NotRunning(container).into());
            }
            check_tty_input(interactive, tty)?;
            let opts = engine::ExecOptions {
                argv: command,
                env,
                cwd: workdir,
                user,
                stdin: interactive,
                tty,
            };
            Ok(exit_code(engine::exec(root, &c.config, opts)?))
        }
        ContainerCommand::Top { container } => {
            let c = store.find(&container)?;
            if c.state.status != Status::Running {
                return Err(CommandError::NotRunning(container).into());
            }
            let procs = crate::agent_client::AgentClient::connect(&engine::socket_path(
                root,
                &c.config.id,
            ))?
            .processes()?;
            print!("{}", crate::container::top::table(&procs));
            Ok(0)
        }
        ContainerCommand::Port { container, port } => {
            let c = store.find(&container)?;
            print_ports(&c, port.as_deref())
        }
        ContainerCommand::Inspect { containers } => {
            let mut out = Vec::new();
            for name in containers {
                let c = store.find(&name)?;
                out.push(inspect_json(root, &c));
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(0)
        }
        ContainerCommand::Vmm { id } => {
            let c = store.find(&id)?;
            let code = engine::run(root, &c.dir, &c.config, Attach::Detached)?;
            if c.config.auto_remove {
                store.remove(&c.dir)?;
            }
            Ok(exit_code(code))
        }
    }
}

/// `-i -t` needs our stdin to be a terminal; `-t` alone does not (the
/// container still gets its PTY, only our side is not put in raw mode).
fn check_tty_input(interactive: bool, tty: bool) -> Result<(), CommandError> {
    use std::io::IsTerminal;
    if interactive && tty && !std::io::stdin().is_terminal() {
        return Err(CommandError::NotATty);
    }
    Ok(())
}

fn exit_code(code: i32) -> u8 {
    u8::try_from(code).unwrap_or(255)
}

fn run_container(args: RunArgs, root: &Path, store: &ContainerStore) -> anyhow::Result<u8> {
    if !args.detach {
        check_tty_input(args.interactive, args.tty)?;
    }
    let mem_mib = units::parse_mib(&args.memory)?;
    if mem_mib < 64 {
        return Err(
            CommandError::Invalid("--memory", format!("{} (minimum 64m)", args.memory)).into(),
        );
    }
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
    let network = crate::network::NetworkMode::parse(&args.network)?;
    let mut ports = args
        .publish
        .iter()
        .map(|p| ports::spec::parse(p))
        .collect::<Result<Vec<_>, _>>()?;
    let images = images::Store::open(root)?;
    let image = images.image(&args.image)?;
    let cfg = image.config.config().clone().unwrap_or_default();
    let exposed_ports = cfg.exposed_ports().clone().unwrap_or_default();
    if args.publish_all {
        for exposed in &exposed_ports {
            let Some(port) = ports::spec::parse_exposed(exposed)? else {
                eprintln!(
                    "hull: warning: not publishing {exposed}: only TCP ports can be published"
                );
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
    }
    // A port in use is an error before anything is created; the VMM binds
    // again (and would report a port taken in between).
    drop(ports::PortForwarder::bind(&ports)?);
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
    let config = ContainerConfig {
        id: id.clone(),
        name,
        image: args.image.clone(),
        image_id: image.id().to_string(),
        layers: image
            .layers
            .iter()
            .map(|l| (l.digest.to_string(), l.path.clone()))
            .collect(),
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
        exposed_ports,
        tty: args.tty,
        network,
        created: now_rfc3339(),
    };
    let dir = store.create(&config)?;
    if args.detach {
        let c = store.find(&id)?;
        start_detached(root, &c)?;
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
    );
    if args.rm {
        store.remove(&dir)?;
    }
    Ok(exit_code(result?))
}

/// Starts the container's VMM as a background hull process and waits until
/// the container's process runs (or failed).
fn start_detached(root: &Path, c: &Container) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--root")
        .arg(root)
        .args(["__container-vmm", &c.config.id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(c.dir.join("vmm.log"))?);
    // SAFETY: setsid is async-signal-safe; it detaches the VMM from our
    // session so it outlives this command and our terminal.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let start = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            // It ended already: finished quickly, or failed.
            let s = crate::container::State::load(&c.dir).ok();
            if let Some(err) = s.and_then(|s| s.error) {
                return Err(CommandError::StartFailed(store::short(&c.config.id), err).into());
            }
            return Ok(());
        }
        if let Ok(s) = crate::container::State::load(&c.dir) {
            if s.process_id.is_some() {
                return Ok(());
            }
        }
        if start.elapsed() > Duration::from_secs(900) {
            let _ = child.kill();
            return Err(
                CommandError::StartFailed(store::short(&c.config.id), "timed out".into()).into(),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn signal_main(root: &Path, c: &Container, sig: i32) -> anyhow::Result<()> {
    let Some(pid) = c
        .state
        .process_id
        .filter(|_| c.state.status == Status::Running)
    else {
        return Err(CommandError::NotRunning(c.config.name.clone()).into());
    };
    crate::agent_client::AgentClient::connect(&engine::socket_path(root, &c.config.id))?
        .signal(pid, sig)?;
    Ok(())
}

fn wait_exited(c: &Container, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        match crate::container::State::load(&c.dir) {
            Ok(s) if s.status != Status::Running => return true,
            Err(_) => return true,
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    false
}

/// SIGTERM, then SIGKILL after `grace`, then the VMM itself.
fn stop(root: &Path, c: &Container, grace: Duration) -> anyhow::Result<()> {
    if c.state.status != Status::Running {
        return Ok(());
    }
    if signal_main(root, c, libc::SIGTERM).is_ok() && wait_exited(c, grace) {
        return Ok(());
    }
    if signal_main(root, c, libc::SIGKILL).is_ok() && wait_exited(c, Duration::from_secs(30)) {
        return Ok(());
    }
    kill_vmm(c);
    Ok(())
}

/// Ends the VMM process at once and records the container as exited.
fn kill_vmm(c: &Container) {
    if let Some(pid) = c.state.vmm_pid.filter(|p| pid_alive(*p)) {
        // SAFETY: kill(2) of the VMM process recorded in the state.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let start = Instant::now();
        while pid_alive(pid) && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = crate::container::State::load(&c.dir).map(|mut s| {
        s.status = Status::Exited;
        s.exit_code = s.exit_code.or(Some(137));
        s.finished_at = Some(now_rfc3339());
        s.vmm_pid = None;
        s.save(&c.dir)
    });
}

/// Signal names as Docker accepts them (with or without SIG), or numbers.
pub fn parse_signal(s: &str) -> Result<i32, CommandError> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let sig = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        "WINCH" => libc::SIGWINCH,
        _ => return Err(CommandError::Invalid("signal", s.into())),
    };
    Ok(sig)
}

fn status_text(c: &Container) -> String {
    match c.state.status {
        Status::Created => "Created".into(),
        Status::Running => format!("Up since {}", c.state.started_at.as_deref().unwrap_or("?")),
        Status::Exited => match &c.state.error {
            Some(e) => format!(
                "Exited ({}) with error: {e}",
                c.state.exit_code.unwrap_or(255)
            ),
            None => format!("Exited ({})", c.state.exit_code.unwrap_or(0)),
        },
    }
}

fn ps(store: &ContainerStore, all: bool, quiet: bool, format: &str) -> anyhow::Result<u8> {
    let list: Vec<Container> = store
        .list()?
        .into_iter()
        .filter(|c| all || c.state.status == Status::Running)
        .collect();
    if quiet {
        for c in &list {
            println!("{}", store::short(&c.config.id));
        }
        return Ok(0);
    }
    match format {
        "json" => {
            for c in &list {
                let v = serde_json::json!({
                    "ID": store::short(&c.config.id),
                    "Ports": ports_text(c),
                    "Image": c.config.image,
                    "Command": c.config.argv.join(" "),
                    "CreatedAt": c.config.created,
                    "State": c.state.status,
                    "Status": status_text(c),
                    "Names": c.config.name,
                    "ExitCode": c.state.exit_code,
                });
                println!("{v}");
            }
        }
        "table" => {
            let ports_width = list
                .iter()
                .map(|c| ports_text(c).chars().count() + 3)
                .max()
                .unwrap_or(0)
                .max(8);
            println!(
                "{:<14}{:<24}{:<24}{:<40}{:<ports_width$}NAMES",
                "CONTAINER ID", "IMAGE", "COMMAND", "STATUS", "PORTS"
            );
            for c in &list {
                let mut cmd = format!("\"{}\"", c.config.argv.join(" "));
                if cmd.len() > 22 {
                    cmd = format!(
                        "{}…\"",
                        &cmd[..cmd.char_indices().nth(19).map_or(cmd.len(), |(i, _)| i)]
                    );
                }
                println!(
                    "{:<14}{:<24}{:<24}{:<40}{:<ports_width$}{}",
                    store::short(&c.config.id),
                    c.config.image,
                    cmd,
                    status_text(c),
                    ports_text(c),
                    c.config.name
                );
            }
        }
        other => return Err(CommandError::Invalid("--format", other.into()).into()),
    }
    Ok(0)
}

/// A running container's bindings as `docker ps` shows them.
fn ports_text(c: &Container) -> String {
    c.state
        .ports
        .iter()
        .map(ports::PortBinding::ps_text)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `hull port`: every binding as `80/tcp -> 0.0.0.0:8080`, or with a port
/// only its host addresses.
fn print_ports(c: &Container, query: Option<&str>) -> anyhow::Result<u8> {
    let mut bindings = c.state.ports.clone();
    bindings.sort_by_key(|b| b.container_port);
    match query {
        None => {
            for b in &bindings {
                println!("{}/tcp -> {}", b.container_port, b.host_addr());
            }
        }
        Some(q) => {
            let port = ports::spec::parse_query(q)?;
            let matching: Vec<_> = bindings
                .iter()
                .filter(|b| b.container_port == port)
                .collect();
            if matching.is_empty() {
                return Err(CommandError::NoPublicPort(port, c.config.name.clone()).into());
            }
            for b in matching {
                println!("{}", b.host_addr());
            }
        }
    }
    Ok(0)
}

/// Docker's `{"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}`.
fn port_map<'a>(
    entries: impl Iterator<Item = (u16, Option<std::net::IpAddr>, u16)> + 'a,
) -> serde_json::Map<String, serde_json::Value> {
    let mut map = serde_json::Map::new();
    for (container_port, ip, host_port) in entries {
        let list = map
            .entry(format!("{container_port}/tcp"))
            .or_insert_with(|| serde_json::json!([]));
        if let Some(list) = list.as_array_mut() {
            list.push(serde_json::json!({
                "HostIp": ip.map(|i| i.to_string()).unwrap_or_default(),
                "HostPort": if host_port == 0 { String::new() } else { host_port.to_string() },
            }));
        }
    }
    map
}

/// Docker's NetworkSettings: the published ports and the addresses.
fn network_settings(c: &Container, ports: serde_json::Value) -> serde_json::Value {
    let running = c.state.status == Status::Running;
    let settings = crate::network::settings(c.config.network, &c.config.id, running);
    let mut v = serde_json::to_value(&settings).unwrap_or_default();
    if let Some(map) = v.as_object_mut() {
        map.insert("Ports".into(), ports);
    }
    v
}

fn inspect_json(root: &Path, c: &Container) -> serde_json::Value {
    // Exposed ports without a binding show as null while running, as in Docker.
    let mut live = port_map(
        c.state
            .ports
            .iter()
            .map(|b| (b.container_port, Some(b.host_ip), b.host_port)),
    );
    if c.state.status == Status::Running {
        for e in &c.config.exposed_ports {
            if let Ok(Some(p)) = ports::spec::parse_exposed(e) {
                live.entry(format!("{p}/tcp"))
                    .or_insert(serde_json::Value::Null);
            }
        }
    }
    let requested = port_map(
        c.config
            .ports
            .iter()
            .map(|p| (p.container_port, p.host_ip, p.host_port)),
    );
    let exposed: serde_json::Map<String, serde_json::Value> = c
        .config
        .exposed_ports
        .iter()
        .map(|e| (e.clone(), serde_json::json!({})))
        .collect();
    serde_json::json!({
        "Id": c.config.id,
        "Name": format!("/{}", c.config.name),
        "Created": c.config.created,
        "Image": c.config.image_id,
        "Config": {
            "Image": c.config.image,
            "Cmd": c.config.argv,
            "Env": c.config.env,
            "WorkingDir": c.config.cwd,
            "User": c.config.user,
            "Hostname": c.config.hostname,
            "ExposedPorts": exposed,
        },
        "State": {
            "Status": c.state.status,
            "Running": c.state.status == Status::Running,
            "Pid": c.state.vmm_pid,
            "ExitCode": c.state.exit_code,
            "Error": c.state.error,
            "StartedAt": c.state.started_at,
            "FinishedAt": c.state.finished_at,
        },
        "HostConfig": {
            "AutoRemove": c.config.auto_remove,
            "ReadonlyRootfs": c.config.read_only,
            "PortBindings": requested,
            "PublishAllPorts": c.config.publish_all,
        },
        "NetworkSettings": network_settings(c, serde_json::Value::Object(live)),
        "VM": {
            "VCPUs": c.config.cpus,
            "MemoryMiB": c.config.mem_mib,
            "VmmPid": c.state.vmm_pid,
            "Kernel": crate::guest_files::kernel(root).ok(),
            "VsockSocket": engine::socket_path(root, &c.config.id),
            "Devices": {
                "vda": "image root filesystem (virtio-blk, read-only)",
                "vdb": if c.config.auto_remove { "none (writable layer on tmpfs)" } else { "writable layer (virtio-blk)" },
                "vsock": "virtio-vsock (hybrid, Unix socket)",
            },
        },
    })
}
