//! `hull debug run`: boot a VM with disks and vsock, run one command through
//! the agent with its stdio streamed, and exit with its status. The building
//! block `hull run` grows from, and how the devices are tested end to end.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_protocol::protocol::ExecSpec;
use clap::Args;

use crate::guest::agent_client::AgentClient;
use crate::guest::vm::{self as guest_vm, GuestOptions, RunningVm, VmArgs};

/// Options of `hull debug run`.
#[derive(Args, Debug)]
pub struct DebugRunArgs {
    /// VM size and console.
    #[command(flatten)]
    pub vm: VmArgs,
    /// Attach a disk image as virtio-blk (FILE or FILE:ro); /dev/vda, vdb, ... in order.
    #[arg(long = "disk", value_name = "FILE[:ro]")]
    pub disks: Vec<String>,
    /// Mount in the guest before running: DEVICE:TARGET[:ro] (ext4; or proc,
    /// sysfs, tmpfs by name).
    #[arg(long = "mount", value_name = "DEV:TARGET[:ro]")]
    pub mounts: Vec<String>,
    /// Run the command chrooted in this guest directory.
    #[arg(long)]
    pub chroot: Option<String>,
    /// Environment variable KEY=VALUE.
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Working directory.
    #[arg(short = 'w', long, default_value = "/")]
    pub workdir: String,
    /// Forward our stdin to the command.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, required = true)]
    pub command: Vec<String>,
}

/// Errors of `hull debug run`.
#[derive(Debug, thiserror::Error)]
pub enum DebugRunError {
    /// A `--disk` or `--mount` value does not parse.
    #[error("Invalid {0} value {1:?}")]
    BadValue(&'static str, String),
    /// A disk file is missing.
    #[error("Disk image {0} does not exist")]
    NoDisk(PathBuf),
}

/// A `--disk FILE[:ro]` value.
pub(crate) fn parse_disk(s: &str) -> Result<vmm::DiskConfig, DebugRunError> {
    let (path, read_only) = match s.strip_suffix(":ro") {
        Some(p) => (p, true),
        None => (s, false),
    };
    if path.is_empty() {
        return Err(DebugRunError::BadValue("--disk", s.into()));
    }
    let path = PathBuf::from(path);
    if !path.is_file() {
        return Err(DebugRunError::NoDisk(path));
    }
    Ok(vmm::DiskConfig { path, read_only })
}

fn parse_mount(s: &str) -> Result<(String, String, bool), DebugRunError> {
    let parts: Vec<&str> = s.split(':').collect();
    match parts.as_slice() {
        [dev, target] if !dev.is_empty() && target.starts_with('/') => {
            Ok((dev.to_string(), target.to_string(), false))
        }
        [dev, target, "ro"] if !dev.is_empty() && target.starts_with('/') => {
            Ok((dev.to_string(), target.to_string(), true))
        }
        _ => Err(DebugRunError::BadValue("--mount", s.into())),
    }
}

/// Boots, runs the command, shuts the VM down; returns the command's code.
pub fn run(args: DebugRunArgs, root: &Path) -> anyhow::Result<u8> {
    let disks = args
        .disks
        .iter()
        .map(|d| parse_disk(d))
        .collect::<Result<Vec<_>, _>>()?;
    let mounts = args
        .mounts
        .iter()
        .map(|m| parse_mount(m))
        .collect::<Result<Vec<_>, _>>()?;
    let opts = GuestOptions {
        memory: &args.vm.memory,
        cpus: args.vm.cpus,
        console: args.vm.console,
        echo: args.vm.console,
        kernel: None,
        net: Vec::new(),
        windows: Vec::new(),
        extra_cmdline: "",
        fs: Vec::new(),
        progress: None,
    };
    let (mut config, seen) = guest_vm::config(root, &opts)?;
    let run_dir = root.join("run");
    std::fs::create_dir_all(&run_dir)?;
    let uds = run_dir.join(format!("debug-{}.vsock", std::process::id()));
    config.disks = disks;
    config.vsock_uds = Some(uds.clone());
    config.cmdline.push_str(" hull.serve");

    let vm = RunningVm::start(config, &seen, Duration::from_secs(600))?;
    let mut client = AgentClient::connect(&vm.uds)?;
    for (dev, target, ro) in &mounts {
        // Pseudo filesystems by name; anything else is an ext4 device.
        let fstype = match dev.as_str() {
            "proc" | "tmpfs" | "sysfs" => dev.as_str(),
            _ => "ext4",
        };
        client.mount(dev, target, fstype, *ro, "")?;
    }
    let mut env =
        vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()];
    env.extend(args.env.iter().cloned());
    let spec = ExecSpec {
        argv: args.command.clone(),
        env,
        cwd: args.workdir.clone(),
        root: args.chroot.clone(),
        user: String::new(),
        tty: None,
    };
    let stdin: Option<Box<dyn std::io::Read + Send>> = if args.interactive {
        Some(Box::new(std::io::stdin()))
    } else {
        None
    };
    let code = client.run(spec, stdin, std::io::stdout(), std::io::stderr())?;
    AgentClient::connect(&vm.uds)?.shutdown()?;
    let exit = vm.wait(Duration::from_secs(120))?;
    if exit != vmm::VmExit::GuestShutdown {
        anyhow::bail!("VM ended abnormally: {exit:?}");
    }
    Ok(u8::try_from(code).unwrap_or(255))
}
