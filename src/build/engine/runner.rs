//! RUN steps in a microVM: the build VM.
//!
//! One VM serves consecutive RUN steps of a stage (a VM start is the
//! largest fixed cost of a step). It starts, like a container, from the
//! fast-start snapshot with two disks: the prepared root filesystem of the
//! stage's layers so far (read-only EROFS) and a scratch ext4 disk. Step
//! `k` runs on an overlay whose upper directory is `scratch/k/upper` and
//! whose lower layers are the earlier steps' upper directories over the
//! image, so each step's changes stay apart. After the step the agent
//! writes that upper directory as a layer tar (whiteouts, opaque
//! directories, hardlinks) into a memory window backed by a host file:
//! the guest's user space writes it, no guest kernel copy, and the host
//! never mounts or parses the guest's disk — it digests and compresses
//! the bytes. Any step that changes files on the host side (COPY, ADD)
//! ends the VM; the next RUN starts one on a freshly prepared image.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_protocol::protocol::{CopySource, ExecSpec, Request, Response, WindowRange};

use crate::container::engine::{self, mount};
use crate::guest::agent_client::{AgentClient, ProcessRole};
use crate::guest::fast_start;
use crate::guest::rootfs::{self, RootfsCache};
use crate::guest::vm::{GuestOptions, RunningVm};
use crate::network::{self, passt::Passt, NetworkMode};

/// Errors of the build VM.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The agent refused a request or answered something else.
    #[error("build VM: {0}")]
    Agent(String),
    /// The layer does not fit what is left of the output window.
    #[error("the step's layer does not fit the build VM's {0} GiB output window")]
    WindowFull(u64),
}

const LOWER: &str = "/run/hull/lower";
const SCRATCH: &str = "/run/hull/scratch";
/// Guest memory of the build VM: the same shape as `hull run`'s default,
/// so both start from one snapshot.
const MEMORY: &str = "256m";
/// The scratch disk holding every step's upper directory (sparse).
const SCRATCH_BYTES: u64 = 16 << 30;
/// The window the layer tars are written into, one after another
/// (sparse: only what is written takes disk space).
const OUTPUT_BYTES: u64 = 16 << 30;

/// What a RUN step runs.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
}

/// A RUN step's outcome.
#[derive(Debug)]
pub enum StepResult {
    /// Exited 0: the layer tar is `len` bytes at `offset` of the output.
    Layer { offset: u64, len: u64 },
    /// Exited with this code (128+signal when killed).
    Failed(i32),
}

/// A running build VM.
pub struct BuildVm {
    // Dropped first: the VM ends before its files go.
    vm: Option<RunningVm>,
    client: Option<AgentClient>,
    _passt: Option<Passt>,
    dir: tempfile::TempDir,
    output: WindowRange,
    network: NetworkMode,
    steps: u32,
    /// Where the next layer tar goes in the window (page-aligned).
    next_offset: u64,
}

impl BuildVm {
    /// Starts a build VM on the image made of `layers` (digest and blob
    /// path, base first).
    pub fn start(
        root: &Path,
        layers: &[(String, PathBuf)],
        network: NetworkMode,
    ) -> anyhow::Result<Self> {
        let (image_disk, _) = RootfsCache::new(root)
            .get_or_prepare(root, layers)
            .map_err(|e| e.context("preparing the root filesystem of the step"))?;
        let work = root.join("build");
        std::fs::create_dir_all(&work)?;
        remove_stale(&work);
        let dir = tempfile::Builder::new()
            .prefix(&format!("vm-{}-", std::process::id()))
            .tempdir_in(&work)?;
        let (disks, output) = build_vm_files(dir.path(), image_disk)?;
        let id = crate::container::store::new_id();
        // Builds run on the built-in networks only (`--network` of
        // `hull build` is parsed without user networks).
        let attachment = network::attach(root, &network, &id, ("", &[]), None)?;
        let guest_net = attachment.guest.clone();
        let mem_mib = crate::units::parse_mib(MEMORY)?;
        let place = vmm::window::places(mem_mib, &[OUTPUT_BYTES])[0];
        let opts = GuestOptions {
            memory: MEMORY,
            cpus: 1,
            console: false,
            echo: false,
            kernel: None,
            net: attachment.devices,
            windows: vec![vmm::window::WindowConfig {
                path: output,
                writable: true,
            }],
            extra_cmdline: "",
            fs: Vec::new(),
            progress: None,
        };
        // In the VM's own directory, not `run/`: a `hull build` killed
        // mid-way cannot remove the socket, and the next build VM removes
        // the directories of dead processes whole (`remove_stale`).
        let uds = dir.path().join(format!("{}.vsock", &id[..12]));
        let (vm, client) = fast_start::start(
            root,
            &opts,
            disks,
            uds,
            Duration::from_secs(600),
            None,
            |c| {
                c.call(&mount("/dev/vda", LOWER, "erofs", true, ""))?;
                c.call(&mount(
                    "/dev/vdb",
                    SCRATCH,
                    "ext4",
                    false,
                    engine::SCRATCH_EXT4_OPTIONS,
                ))?;
                c.set_hostname(&id[..12])?;
                for link in &guest_net {
                    c.call(&link.configure_request())?;
                }
                Ok(())
            },
        )?;
        Ok(BuildVm {
            vm: Some(vm),
            client: Some(client),
            _passt: attachment.passt,
            dir,
            output: WindowRange {
                guest_addr: place.guest_addr,
                len: place.len,
            },
            network,
            steps: 0,
            next_offset: 0,
        })
    }

    fn client(&mut self) -> anyhow::Result<&mut AgentClient> {
        self.client
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("build VM already ended"))
    }

    fn ok(&mut self, req: Request) -> anyhow::Result<()> {
        match self.client()?.call(&req)? {
            Response::Ok => Ok(()),
            Response::Error { message } => Err(RunnerError::Agent(message).into()),
            other => Err(RunnerError::Agent(format!("unexpected answer {other:?}")).into()),
        }
    }

    /// Runs one step on top of the earlier ones, its output to `stdout`
    /// and `stderr`; on success its layer is in the output window.
    pub fn run(
        &mut self,
        spec: RunSpec,
        stdout: impl Write + Send,
        stderr: impl Write + Send,
    ) -> anyhow::Result<StepResult> {
        self.steps += 1;
        let k = self.steps;
        let step_root = self.mount_step(k, &spec.cwd)?;
        let exec = ExecSpec {
            argv: spec.argv,
            env: spec.env,
            cwd: spec.cwd,
            root: Some(step_root),
            user: spec.user,
            tty: None,
        };
        let code =
            self.client()?
                .run_with(exec, ProcessRole::Main, None, stdout, stderr, |_| {})?;
        if code != 0 {
            return Ok(StepResult::Failed(code));
        }
        let offset = self.next_offset;
        let request = Request::WriteLayer {
            upper: format!("{SCRATCH}/{k}/upper"),
            exclude: engine::PER_CONTAINER_FILES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            output: self.output,
            offset,
        };
        let len = self.written(&request)?;
        self.next_offset = (offset + len).next_multiple_of(4096);
        Ok(StepResult::Layer { offset, len })
    }

    /// `COPY --from` out of this VM's image (not its steps' changes):
    /// `sources` as a layer tar in the output window; returns its offset
    /// and length.
    pub fn copy_out(
        &mut self,
        sources: Vec<CopySource>,
        owner: Option<(u64, u64)>,
        mode: Option<u32>,
    ) -> anyhow::Result<(u64, u64)> {
        let offset = self.next_offset;
        let request = Request::CopyOut {
            root: LOWER.into(),
            sources,
            owner,
            mode,
            output: self.output,
            offset,
            one_file_system: false,
        };
        let len = self.written(&request)?;
        self.next_offset = (offset + len).next_multiple_of(4096);
        Ok((offset, len))
    }

    /// The length of the tar a `WriteLayer` or `CopyOut` wrote.
    fn written(&mut self, request: &Request) -> anyhow::Result<u64> {
        match self.client()?.call(request)? {
            Response::Written { bytes } => Ok(bytes),
            Response::Error { message }
                if message.contains("window") && message.contains("full") =>
            {
                Err(RunnerError::WindowFull(OUTPUT_BYTES >> 30).into())
            }
            Response::Error { message } => Err(RunnerError::Agent(message).into()),
            other => Err(RunnerError::Agent(format!("unexpected answer {other:?}")).into()),
        }
    }

    /// Mounts step `k`'s root (an overlay over the earlier steps' upper
    /// directories and the image) and what a container root has in it;
    /// returns its path. The working directory is made if missing (a
    /// WORKDIR nothing created: it becomes part of the step's layer).
    fn mount_step(&mut self, k: u32, cwd: &str) -> anyhow::Result<String> {
        let step_root = format!("/run/hull/step{k}");
        let upper = format!("{SCRATCH}/{k}/upper");
        let work = format!("{SCRATCH}/{k}/work");
        let lowers: Vec<String> = (1..k)
            .rev()
            .map(|i| format!("{SCRATCH}/{i}/upper"))
            .chain([LOWER.to_string()])
            .collect();
        let options = format!(
            "lowerdir={},upperdir={upper},workdir={work}",
            lowers.join(":")
        );
        let mut batch = vec![
            Request::Mkdir {
                path: upper.clone(),
                within: None,
            },
            Request::Mkdir {
                path: work,
                within: None,
            },
            mount("overlay", &step_root, "overlay", false, &options),
        ];
        batch.extend(engine::pseudo_mounts(&step_root));
        let resolv = match self.network {
            NetworkMode::Default => network::resolv_conf(&[network::GuestNetwork::default_for("")]),
            NetworkMode::None | NetworkMode::User(_) => engine::resolv_conf(),
        };
        let hostname = "buildkitsandbox";
        for (path, content) in [
            (
                "/etc/hosts",
                format!(
                    "127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                ),
            ),
            ("/etc/hostname", format!("{hostname}\n")),
            ("/etc/resolv.conf", resolv),
        ] {
            batch.push(Request::WriteFile {
                path: format!("{step_root}{path}"),
                content,
                mode: 0o644,
                within: Some(step_root.clone()),
                in_place: false,
            });
        }
        batch.push(Request::Mkdir {
            path: format!("{step_root}{cwd}"),
            within: Some(step_root.clone()),
        });
        self.ok(Request::Batch(batch))?;
        Ok(step_root)
    }

    /// A reader of `len` bytes at `offset` of the output window's file.
    pub fn layer(&self, offset: u64, len: u64) -> anyhow::Result<impl Read> {
        let mut f = std::fs::File::open(self.dir.path().join("layers.out"))?;
        f.seek(SeekFrom::Start(offset))?;
        Ok(std::io::BufReader::with_capacity(1 << 20, f.take(len)))
    }
}

/// A build VM's files in its directory `dir`: its disks (the image's
/// prepared root filesystem, read-only, and a fresh scratch ext4) and the
/// window file the guest writes the steps' layers into.
fn build_vm_files(
    dir: &Path,
    image_disk: PathBuf,
) -> anyhow::Result<(Vec<vmm::DiskConfig>, PathBuf)> {
    let scratch = dir.join("scratch.ext4");
    rootfs::mkfs(&scratch, SCRATCH_BYTES, "hull-build")?;
    let output = dir.join("layers.out");
    std::fs::File::create(&output)?.set_len(OUTPUT_BYTES)?;
    let disks = vec![
        vmm::DiskConfig {
            path: image_disk,
            read_only: true,
        },
        vmm::DiskConfig {
            path: scratch,
            read_only: false,
        },
    ];
    Ok((disks, output))
}

/// Removes the `vm-<pid>-*` directories under `work` whose hull process
/// is gone (a build or helper VM killed by a signal cannot clean up after
/// itself).
pub fn remove_stale(work: &Path) {
    let Ok(dir) = std::fs::read_dir(work) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("vm-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        let Some(pid) = pid else {
            continue;
        };
        // A zombie is dead too: a killed hull stays one until its parent
        // reaps it, and its directory must not wait for that.
        if !crate::container::state::pid_alive(pid as i32) {
            tracing::debug!("removing {} of a build that ended", entry.path().display());
            let _ = match entry.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(entry.path()),
                _ => std::fs::remove_file(entry.path()),
            };
        }
    }
}

impl Drop for BuildVm {
    fn drop(&mut self) {
        self.client.take();
        self.vm.take();
    }
}
