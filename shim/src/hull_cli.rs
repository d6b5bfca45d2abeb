//! The `hull` commands the shim runs: a task's VM is `hull run --rm
//! --rootfs-disk`, an exec is `hull exec`, signals go through `hull kill`.
//! Driving the CLI keeps one engine (state, logs, `hull ps`) for VMs
//! whether containerd or a user started them.

use std::path::{Path, PathBuf};
use std::process::Command;

use oci_spec::runtime::{Process, Spec};

/// Errors finding or running `hull`.
#[derive(Debug, thiserror::Error)]
pub enum HullCliError {
    /// Neither beside the shim nor on PATH.
    #[error("hull not found beside {0} nor on PATH")]
    NotFound(PathBuf),
    /// A `hull` command could not be run.
    #[error("Running {what}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A `hull` command failed.
    #[error("{what} failed: {stderr}")]
    Failed { what: String, stderr: String },
}

/// The VM size and network a task asks for (annotations, resources).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmOptions {
    /// Guest memory, `hull run -m` syntax.
    pub memory: Option<String>,
    /// vCPUs.
    pub cpus: Option<u8>,
    /// `hull run --network`: `none` unless the annotation asks.
    pub network: String,
}

/// Annotation: guest memory (`512m`).
pub const ANNOTATION_MEMORY: &str = "io.hull.vm.memory";
/// Annotation: vCPUs.
pub const ANNOTATION_CPUS: &str = "io.hull.vm.cpus";
/// Annotation: `hull run --network` (default `none`, as `ctr run` gives
/// runc an empty network namespace).
pub const ANNOTATION_NETWORK: &str = "io.hull.network";

/// The `hull` binary: the one installed beside this shim (setup links
/// both), else the first on PATH.
pub fn hull_binary() -> Result<PathBuf, HullCliError> {
    let me = std::env::current_exe().unwrap_or_default();
    let beside = me.with_file_name("hull");
    if beside.is_file() {
        return Ok(beside);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("hull"))
        .find(|p| p.is_file())
        .ok_or(HullCliError::NotFound(me))
}

/// hull's container name for containerd's `namespace`/`id` (hull names
/// are `[a-zA-Z0-9][a-zA-Z0-9_.-]*` and unique per hull root).
pub fn container_name(namespace: &str, id: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    format!("ctrd.{}.{}", clean(namespace), clean(id))
}

/// The VM options of a bundle's spec: hull annotations first, else the
/// Linux memory limit and CPU quota.
pub fn vm_options(spec: &Spec) -> VmOptions {
    let annotations = spec.annotations().clone().unwrap_or_default();
    let resources = spec.linux().as_ref().and_then(|l| l.resources().clone());
    let memory_limit = resources
        .as_ref()
        .and_then(|r| r.memory().as_ref().and_then(|m| m.limit()))
        .filter(|l| *l > 0)
        // A VM below 64 MiB cannot boot; hull refuses it with a clear error.
        .map(|l| format!("{}m", (l as u64).div_ceil(1 << 20)));
    let quota_cpus = resources
        .as_ref()
        .and_then(|r| r.cpu().clone())
        .and_then(|c| {
            let (quota, period) = (c.quota()?, c.period()?);
            (quota > 0 && period > 0).then(|| (quota as u64).div_ceil(period).min(255) as u8)
        });
    VmOptions {
        memory: annotations.get(ANNOTATION_MEMORY).cloned().or(memory_limit),
        cpus: annotations
            .get(ANNOTATION_CPUS)
            .and_then(|c| c.parse().ok())
            .or(quota_cpus),
        network: annotations
            .get(ANNOTATION_NETWORK)
            .cloned()
            .unwrap_or_else(|| "none".into()),
    }
}

/// `-u`, `-w`, `-e` of an OCI process (shared by run and exec).
fn process_flags(cmd: &mut Command, process: &Process) {
    let user = process.user();
    cmd.arg("-u").arg(format!("{}:{}", user.uid(), user.gid()));
    cmd.arg("-w").arg(process.cwd());
    for e in process.env().clone().unwrap_or_default() {
        cmd.arg("-e").arg(e);
    }
}

/// What a task's or exec's stdio needs of hull: `-i` when there is a
/// stdin, `-t` for a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StdioFlags {
    pub stdin: bool,
    pub terminal: bool,
}

fn stdio_flags(cmd: &mut Command, stdio: StdioFlags) {
    if stdio.stdin {
        cmd.arg("-i");
    }
    if stdio.terminal {
        cmd.arg("-t");
    }
}

/// `hull run --rm` of the task: the bundle's process on `disk` in a VM
/// sized by `vm`, attached (its exit is the task's).
pub fn run_command(
    hull: &Path,
    name: &str,
    disk: &Path,
    spec: &Spec,
    vm: &VmOptions,
    stdio: StdioFlags,
) -> Command {
    let mut cmd = Command::new(hull);
    cmd.args([
        "run",
        "--rm",
        "--quiet",
        "--progress",
        "quiet",
        "--name",
        name,
    ]);
    cmd.arg("--rootfs-disk").arg(disk);
    cmd.args(["--network", &vm.network, "--entrypoint", ""]);
    if let Some(m) = &vm.memory {
        cmd.args(["-m", m]);
    }
    if let Some(c) = vm.cpus {
        cmd.args(["--cpus", &c.to_string()]);
    }
    if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        cmd.args(["--hostname", h]);
    }
    if spec
        .root()
        .as_ref()
        .is_some_and(|r| r.readonly() == Some(true))
    {
        cmd.arg("--read-only");
    }
    stdio_flags(&mut cmd, stdio);
    let default_process = Process::default();
    let process = spec.process().as_ref().unwrap_or(&default_process);
    process_flags(&mut cmd, process);
    cmd.arg(name);
    cmd.args(process.args().clone().unwrap_or_default());
    cmd
}

/// `hull exec` of an exec process in the task's VM; hull writes the
/// process's agent id to `pid_file` once it runs (for [`kill_process`]).
pub fn exec_command(
    hull: &Path,
    name: &str,
    process: &Process,
    stdio: StdioFlags,
    pid_file: &Path,
) -> Command {
    let mut cmd = Command::new(hull);
    cmd.arg("exec").arg("--pid-file").arg(pid_file);
    stdio_flags(&mut cmd, stdio);
    process_flags(&mut cmd, process);
    cmd.arg(name);
    cmd.args(process.args().clone().unwrap_or_default());
    cmd
}

/// Runs a short `hull` command to its end; its stderr is the error.
pub fn run_to_end(mut cmd: Command, what: &str) -> Result<(), HullCliError> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| HullCliError::Spawn {
            what: what.into(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(HullCliError::Failed {
        what: what.into(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// `hull kill -s SIGNAL NAME`: the signal reaches the container's main
/// process in its VM.
pub fn kill(hull: &Path, name: &str, signal: u32) -> Result<(), HullCliError> {
    let mut cmd = Command::new(hull);
    cmd.args(["kill", "-s", &signal.to_string(), name]);
    run_to_end(cmd, "hull kill")
}

/// `hull kill -s SIGNAL --process ID NAME`: the signal reaches an exec's
/// process in the VM (signalling its `hull exec` would not: SIGKILL ends
/// hull and leaves the process running).
pub fn kill_process(hull: &Path, name: &str, id: u32, signal: u32) -> Result<(), HullCliError> {
    let mut cmd = Command::new(hull);
    cmd.args([
        "kill",
        "-s",
        &signal.to_string(),
        "--process",
        &id.to_string(),
        name,
    ]);
    run_to_end(cmd, "hull kill")
}

/// `hull rm -f NAME`: the container's state (and VM, if any is left).
pub fn remove(hull: &Path, name: &str) -> Result<(), HullCliError> {
    let mut cmd = Command::new(hull);
    cmd.args(["rm", "-f", name]);
    run_to_end(cmd, "hull rm")
}

/// The directory of hull container `name` under `root`.
fn container_dir(root: &Path, name: &str) -> Option<PathBuf> {
    std::fs::read_dir(root.join("containers"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|dir| {
            std::fs::read(dir.join("config.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .is_some_and(|c| c["name"] == name)
        })
}

/// Waits until container `name`'s main process runs in its VM (hull
/// records the agent's process id in its state.json then, which is also
/// what `hull run -d` waits for), or `gone` says the hull process ended.
/// Returns whether it started.
pub fn wait_main_started(root: &Path, name: &str, gone: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(900);
    let mut dir = None;
    while std::time::Instant::now() < deadline && !gone() {
        if dir.is_none() {
            dir = container_dir(root, name);
        }
        let started = dir.as_ref().is_some_and(|d| {
            std::fs::read(d.join("state.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .is_some_and(|s| s["process_id"].is_u64())
        });
        if started {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn names_are_valid_hull_names_per_namespace() {
        assert_eq!(container_name("default", "web 1/x"), "ctrd.default.web-1-x");
        assert_ne!(container_name("a", "x"), container_name("b", "x"));
    }

    #[test]
    fn vm_options_prefer_annotations_over_resources() {
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {"io.hull.vm.cpus": "2"},
            "linux": {"resources": {"memory": {"limit": 300_000_000i64},
                                    "cpu": {"quota": 150_000i64, "period": 100_000u64}}}
        }));
        let vm = vm_options(&s);
        assert_eq!(vm.memory.as_deref(), Some("287m"));
        assert_eq!(vm.cpus, Some(2));
        assert_eq!(vm.network, "none");
    }

    #[test]
    fn run_command_carries_the_process() {
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2", "hostname": "h",
            "process": {"args": ["echo", "-n", "hi"], "cwd": "/tmp",
                        "env": ["A=1"], "user": {"uid": 5, "gid": 6}}
        }));
        let stdio = StdioFlags {
            stdin: false,
            terminal: true,
        };
        let cmd = run_command(
            Path::new("/h"),
            "n",
            Path::new("/d"),
            &s,
            &vm_options(&s),
            stdio,
        );
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into()).collect();
        let tail = [
            "-t", "-u", "5:6", "-w", "/tmp", "-e", "A=1", "n", "echo", "-n", "hi",
        ];
        assert!(args.ends_with(&tail.map(String::from)), "{args:?}");
        assert!(args.windows(2).any(|w| w == ["--hostname", "h"]));
    }
}
