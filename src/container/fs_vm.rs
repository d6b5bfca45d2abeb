//! A short-lived helper microVM on a container's disks: what `hull
//! commit`, `diff`, `export` and `cp` run in. The host never mounts or
//! parses a container's disk; this VM's agent does, and writes what the
//! host asked for (a layer tar, a rootfs tar, the diff lines) into a memory
//! window backed by a host file, or unpacks a tar the host put in one.
//!
//! It starts from the same fast-start snapshot as containers and build
//! VMs (the image's EROFS disk read-only, a writable ext4 disk), with the
//! container's writable-layer disk as the second disk:
//! - a stopped container: its disk-lock is taken (so it cannot start
//!   meanwhile), and its disk is mounted read-write (a VM killed mid-write
//!   leaves a journal to replay);
//! - a running container: its own agent freezes the writable layer
//!   (FIFREEZE writes dirty data and the journal out and blocks writers;
//!   Docker pauses a container to commit it, too), and this VM mounts the
//!   disk read-only without the journal. The freeze is undone when this
//!   ends, or by the container's agent when our connection closes (a
//!   `hull commit` killed mid-way never leaves a container frozen).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_protocol::protocol::{CopySource, Request, Response, WindowRange};

use super::engine::{self, mount, GUEST_LOWER, GUEST_ROOT, GUEST_SCRATCH};
use super::store::Container;
use crate::guest::agent_client::AgentClient;
use crate::guest::fast_start;
use crate::guest::rootfs::{self, RootfsCache};
use crate::guest::vm::{GuestOptions, RunningVm};

/// Errors of the helper VM.
#[derive(Debug, thiserror::Error)]
pub enum FsVmError {
    /// A running `--rm` container started before its mailbox was writable.
    #[error("container {0} was started with --rm by an older hull: its writable layer is in its VM's memory and its VM cannot hand it out")]
    InMemoryLayer(String),
    /// A container-mode container (its layer is a host directory).
    #[error("container {0} runs with --isolation container: not supported for it yet")]
    ContainerMode(String),
    /// Writing into a running container through a helper VM (its own
    /// agent does that: [`copy_into_running`]).
    #[error("container {0} is running: its own VM writes its disk")]
    RunningWrite(String),
    /// A running container started before containers had a mailbox.
    #[error("container {0} was started by an older hull: restart it to copy files into it")]
    NoMailbox(String),
    /// A tar larger than the mailbox.
    #[error("{0} bytes do not fit a running container's {1} MiB mailbox: copy less, or stop the container first")]
    TooLarge(u64, u64),
    /// The agent refused a request.
    #[error("{0}")]
    Agent(String),
    /// The output does not fit the window.
    #[error("the output does not fit the {0} MiB window it is written into")]
    WindowFull(u64),
}

/// Guest memory of the helper VM: `hull run`'s default shape, so it
/// starts from the same snapshot.
const MEMORY: &str = "256m";
/// The window the output is written into (sparse).
const OUTPUT_BYTES: u64 = 16 << 30;
/// Name of the lock a container's VMM holds while it runs.
pub const DISK_LOCK: &str = "disk.lock";

/// What the helper VM is for.
pub enum Access {
    /// Reading: diff, commit, export, cp out.
    Read,
    /// Writing the tar file into a directory of the container (cp in).
    Write(PathBuf),
}

/// A helper VM with the container's root mounted at [`GUEST_ROOT`]
/// (read-only unless opened for writing).
pub struct FsVm {
    // Dropped in this order: the VM ends, then the freeze of a running
    // container's layer is undone (its connection closes), then the lock.
    vm: Option<RunningVm>,
    client: Option<AgentClient>,
    frozen: Option<AgentClient>,
    _lock: Option<File>,
    /// What else must live as long as the VM (a volume's lock, a
    /// placeholder disk).
    _guards: Vec<Box<dyn std::any::Any>>,
    dir: tempfile::TempDir,
    output: WindowRange,
    /// The host file behind the output window.
    output_file: PathBuf,
    /// Served by a running container's own VM and mailbox.
    in_place: bool,
    input: Option<(WindowRange, u64)>,
}

/// Whether `c`'s VM is running (its VMM holds the disk lock).
pub fn is_running(c: &Container) -> std::io::Result<bool> {
    Ok(crate::file_lock::try_lock_exclusive(&c.dir.join(DISK_LOCK))?.is_none())
}

/// `hull cp` into a running container: the tar goes into the container's
/// mailbox file (a memory window of its VM), and the
/// container's own agent unpacks it into its live root, so its processes
/// see the files at once. No bytes cross vsock.
pub fn copy_into_running(root: &Path, c: &Container, tar: &Path, dest: &str) -> anyhow::Result<()> {
    let id = c.config.id[..12].to_string();
    let mailbox = c.dir.join(engine::MAILBOX);
    if !mailbox.exists() {
        return Err(FsVmError::NoMailbox(id).into());
    }
    let len = std::fs::metadata(tar)?.len();
    if len > engine::MAILBOX_BYTES {
        return Err(FsVmError::TooLarge(len, engine::MAILBOX_BYTES >> 20).into());
    }
    let _writer = crate::file_lock::lock_exclusive(&c.dir.join(engine::MAILBOX_LOCK))?;
    {
        // Written in place, never truncated: the VMM maps this file.
        let mut out = std::fs::OpenOptions::new().write(true).open(&mailbox)?;
        std::io::copy(&mut File::open(tar)?, &mut out)?;
    }
    let mut client = AgentClient::connect(&engine::socket_path(root, &c.config.id))?;
    client.call(&Request::ApplyTar {
        root: GUEST_ROOT.into(),
        dest: dest.into(),
        input: engine::mailbox_window(&c.config),
        len,
    })?;
    engine::clear_mailbox(&mailbox);
    Ok(())
}

/// Takes the lock a container's VMM holds for its whole run (blocking
/// while a helper VM has the container's disk).
pub fn lock_disk(dir: &Path) -> std::io::Result<File> {
    crate::file_lock::lock_exclusive(&dir.join(DISK_LOCK))
}

impl FsVm {
    /// Starts a helper VM on `c`'s disks.
    pub fn open(root: &Path, c: &Container, access: Access) -> anyhow::Result<Self> {
        let id = c.config.id[..12].to_string();
        if c.config.isolation == crate::oci::Isolation::Container {
            return Err(FsVmError::ContainerMode(id).into());
        }
        let lock = crate::file_lock::try_lock_exclusive(&c.dir.join(DISK_LOCK))?;
        let running = lock.is_none();
        if running && matches!(access, Access::Write(_)) {
            return Err(FsVmError::RunningWrite(id).into());
        }
        if running && c.config.auto_remove {
            return Self::in_place(root, c);
        }
        let frozen = if running {
            Some(freeze_layer(root, &c.config.id)?)
        } else {
            None
        };
        let upper = c.dir.join("upper.ext4");
        if !upper.exists() {
            // Never started: an empty writable layer, as its first start
            // would make it.
            let tmp = c.dir.join(".upper.ext4.tmp");
            rootfs::mkfs(&tmp, engine::UPPER_DISK_BYTES, "hull-upper")?;
            std::fs::rename(&tmp, &upper)?;
        }
        let image_disk = match &c.config.rootfs_disk {
            // containerd's shim gave the container its disk (`--rootfs-disk`).
            Some(disk) => disk.clone(),
            None => {
                RootfsCache::new(root)
                    .get_or_prepare(root, &c.config.layers)
                    .map_err(|e| e.context("preparing the image's root filesystem"))?
                    .0
            }
        };
        let writable = matches!(access, Access::Write(_));
        let disks = [(image_disk, true), (upper, false)];
        let requests = root_requests(running, writable);
        Self::start(root, &disks, requests, access, (frozen, lock))
    }

    /// A running `--rm` container's own VM serves the reads: its writable
    /// layer is tmpfs in that VM's memory, where no helper VM can reach
    /// it. Its agent writes the output into the container's mailbox (a
    /// memory window over a host file that only `--rm` containers may
    /// write, bounded by its size; the layer it holds is bounded by guest
    /// RAM). Nothing is paused, as `docker commit --pause=false`: hull
    /// has no pause yet.
    fn in_place(root: &Path, c: &Container) -> anyhow::Result<Self> {
        let id = c.config.id[..12].to_string();
        let mailbox = c.dir.join(engine::MAILBOX);
        if !mailbox.exists() || !engine::mailbox_is_writable(&c.config) {
            return Err(FsVmError::InMemoryLayer(id).into());
        }
        let lock = crate::file_lock::lock_exclusive(&c.dir.join(engine::MAILBOX_LOCK))?;
        let client = AgentClient::connect(&engine::socket_path(root, &c.config.id))?;
        Ok(FsVm {
            vm: None,
            client: Some(client),
            frozen: None,
            _lock: Some(lock),
            _guards: Vec::new(),
            dir: tempfile::Builder::new()
                .prefix(&format!("vm-{}-", std::process::id()))
                .tempdir_in(Self::work_dir(root)?)?,
            output: engine::mailbox_window(&c.config),
            output_file: mailbox,
            in_place: true,
            input: None,
        })
    }

    /// Starts a helper VM on volume `v`, mounted at [`GUEST_ROOT`]:
    /// read-only (as the second reader it may be) to read it, read-write
    /// (as its only writer) to write into it. The VM has the shape of the
    /// container helper (a read-only disk, then a writable one), so both
    /// start from one snapshot: the volume takes the slot its access needs
    /// and an empty placeholder the other.
    pub fn open_volume(
        root: &Path,
        v: &crate::volume::Volume,
        access: Access,
    ) -> anyhow::Result<Self> {
        let writable = matches!(access, Access::Write(_));
        let lock = crate::volume::attach(v, "(hull volume)", !writable)?;
        let placeholder = tempfile::Builder::new()
            .prefix(&format!("vm-{}-", std::process::id()))
            .tempfile_in(Self::work_dir(root)?)?;
        placeholder.as_file().set_len(1 << 20)?;
        let (disks, device) = if writable {
            (
                [(placeholder.path().to_path_buf(), true), (v.disk(), false)],
                "/dev/vdb",
            )
        } else {
            (
                [(v.disk(), true), (placeholder.path().to_path_buf(), false)],
                "/dev/vda",
            )
        };
        let options = if writable { "" } else { "noload" };
        let requests = vec![mount(device, GUEST_ROOT, "ext4", !writable, options)];
        let mut vm = Self::start(root, &disks, requests, access, (None, None))?;
        vm._guards.push(Box::new(lock));
        vm._guards.push(Box::new(placeholder));
        Ok(vm)
    }

    /// A new file for a helper VM's input (a tar for `cp` or `volume
    /// import`), named so that a later helper removes it if this process
    /// is killed.
    pub fn input_file(root: &Path) -> anyhow::Result<tempfile::NamedTempFile> {
        Ok(tempfile::Builder::new()
            .prefix(&format!("vm-{}-", std::process::id()))
            .tempfile_in(Self::work_dir(root)?)?)
    }

    /// The helper VMs' directory, its leftovers of killed hull processes
    /// removed.
    fn work_dir(root: &Path) -> anyhow::Result<PathBuf> {
        let work = root.join("fs-vm");
        std::fs::create_dir_all(&work)?;
        crate::build::engine::runner::remove_stale(&work);
        Ok(work)
    }

    fn start(
        root: &Path,
        disks: &[(PathBuf, bool)],
        requests: Vec<Request>,
        access: Access,
        (frozen, lock): (Option<AgentClient>, Option<File>),
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("vm-{}-", std::process::id()))
            .tempdir_in(Self::work_dir(root)?)?;
        let mut vm = FsVm {
            vm: None,
            client: None,
            frozen,
            _lock: lock,
            _guards: Vec::new(),
            dir,
            output: WindowRange {
                guest_addr: 0,
                len: 0,
            },
            output_file: PathBuf::new(),
            in_place: false,
            input: None,
        };
        let disks = disks
            .iter()
            .map(|(path, read_only)| vmm::DiskConfig {
                path: path.clone(),
                read_only: *read_only,
            })
            .collect();
        vm.boot(root, disks, requests, access)?;
        Ok(vm)
    }

    /// Starts the VM with `disks` and its windows, and sends `requests`
    /// (the mounts).
    fn boot(
        &mut self,
        root: &Path,
        disks: Vec<vmm::DiskConfig>,
        requests: Vec<Request>,
        access: Access,
    ) -> anyhow::Result<()> {
        let output = self.dir.path().join("out");
        File::create(&output)?.set_len(OUTPUT_BYTES)?;
        self.output_file = output.clone();
        let mut windows = vec![vmm::window::WindowConfig {
            path: output,
            writable: true,
        }];
        let mut lens = vec![OUTPUT_BYTES];
        if let Access::Write(tar) = access {
            let len = std::fs::metadata(&tar)?.len();
            lens.push(len.max(1));
            windows.push(vmm::window::WindowConfig {
                path: tar,
                writable: false,
            });
        }
        let mem_mib = crate::units::parse_mib(MEMORY)?;
        let places = vmm::window::places(mem_mib, &lens);
        self.output = WindowRange {
            guest_addr: places[0].guest_addr,
            len: places[0].len,
        };
        self.input = places.get(1).map(|p| {
            let range = WindowRange {
                guest_addr: p.guest_addr,
                len: p.len,
            };
            (range, lens[1])
        });
        let opts = GuestOptions {
            memory: MEMORY,
            cpus: 1,
            console: false,
            echo: false,
            kernel: None,
            net: Vec::new(),
            windows,
            extra_cmdline: "",
            fs: Vec::new(),
            progress: None,
        };
        // In the VM's own directory, not `run/`: a `hull` killed mid-way
        // cannot remove the socket, and the next helper VM removes the
        // directories of dead processes whole (`work_dir`). Named by a new
        // ID, which also names the VMM's cgroup.
        let id = crate::container::store::new_id();
        let uds = self.dir.path().join(format!("{}.vsock", &id[..12]));
        let (vm, client) = fast_start::start(
            root,
            &opts,
            disks,
            uds,
            Duration::from_secs(600),
            None,
            |c| {
                for req in &requests {
                    c.call(req)?;
                }
                Ok(())
            },
        )?;
        self.vm = Some(vm);
        self.client = Some(client);
        Ok(())
    }

    fn client(&mut self) -> anyhow::Result<&mut AgentClient> {
        self.client
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("helper VM already ended"))
    }

    /// The container's writable layer as a layer tar (whiteouts, opaque
    /// directories, hardlinks), without its per-container files; returns
    /// the tar's length (read it with [`FsVm::output`]).
    pub fn write_layer(&mut self) -> anyhow::Result<u64> {
        let request = Request::WriteLayer {
            upper: format!("{GUEST_SCRATCH}/upper"),
            exclude: not_the_containers(),
            output: self.output,
            offset: 0,
        };
        self.written(&request)
    }

    /// The whole root as a tar (`export`, `volume export`); returns the
    /// tar's length.
    pub fn export_root(&mut self) -> anyhow::Result<u64> {
        let root = vec![CopySource {
            path: "/".into(),
            dest: String::new(),
            dest_is_dir: true,
        }];
        // A running container's own root has /proc, /dev, /sys and its
        // volumes mounted in it: the export is its file system only.
        self.copy_out_of(root, self.in_place)
    }

    /// `paths` of the container's root (resolved inside it) as a tar,
    /// each under its `dest` name; returns the tar's length.
    pub fn copy_out(&mut self, sources: Vec<CopySource>) -> anyhow::Result<u64> {
        self.copy_out_of(sources, false)
    }

    fn copy_out_of(
        &mut self,
        sources: Vec<CopySource>,
        one_file_system: bool,
    ) -> anyhow::Result<u64> {
        let request = Request::CopyOut {
            root: GUEST_ROOT.into(),
            sources,
            owner: None,
            mode: None,
            output: self.output,
            offset: 0,
            one_file_system,
        };
        self.written(&request)
    }

    /// `docker diff` lines, sorted by path.
    pub fn diff(&mut self) -> anyhow::Result<Vec<String>> {
        let request = Request::Diff {
            upper: format!("{GUEST_SCRATCH}/upper"),
            lower: GUEST_LOWER.into(),
            exclude: not_the_containers(),
        };
        match self.client()?.call(&request)? {
            Response::Changes { lines } => Ok(lines),
            other => Err(FsVmError::Agent(format!("unexpected answer {other:?}")).into()),
        }
    }

    /// Unpacks the input tar into directory `dest` of the container.
    pub fn apply_tar(&mut self, dest: &str) -> anyhow::Result<()> {
        let (input, len) = self
            .input
            .ok_or_else(|| anyhow::anyhow!("helper VM has no input"))?;
        let request = Request::ApplyTar {
            root: GUEST_ROOT.into(),
            dest: dest.into(),
            input,
            len,
        };
        self.client()?.call(&request)?;
        Ok(())
    }

    /// Ends the VM cleanly (its file systems written out), then undoes the
    /// freeze of a running container's layer.
    pub fn finish(mut self) -> anyhow::Result<()> {
        if let (Some(vm), Some(client)) = (self.vm.take(), self.client.take()) {
            client.shutdown()?;
            vm.wait(Duration::from_secs(120))?;
        }
        if let Some(mut frozen) = self.frozen.take() {
            frozen.call(&Request::Thaw {
                path: GUEST_SCRATCH.into(),
            })?;
        }
        Ok(())
    }

    fn written(&mut self, request: &Request) -> anyhow::Result<u64> {
        match self.client()?.call(request) {
            Ok(Response::Written { bytes }) => Ok(bytes),
            Ok(other) => Err(FsVmError::Agent(format!("unexpected answer {other:?}")).into()),
            Err(crate::guest::agent_client::AgentError::Remote(m))
                if m.contains("window") && m.contains("full") =>
            {
                Err(FsVmError::WindowFull(self.output.len >> 20).into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A reader of the first `len` bytes of the output window's file.
    pub fn output(&self, len: u64) -> anyhow::Result<impl Read> {
        let mut f = File::open(&self.output_file)?;
        f.seek(SeekFrom::Start(0))?;
        Ok(std::io::BufReader::with_capacity(1 << 20, f.take(len)))
    }
}

impl Drop for FsVm {
    fn drop(&mut self) {
        self.client.take();
        self.vm.take();
        self.frozen.take();
        if self.in_place {
            // The container's data left in its mailbox goes (the file
            // stays: its VM maps it).
            engine::clear_mailbox(&self.output_file);
        }
    }
}

/// What a container's writable layer holds that is not the container's
/// changes: its own files (from older containers, which wrote them into
/// the layer) and the mount points of /dev, /proc and /sys (whatever is
/// under them is the guest's, never the layer's).
fn not_the_containers() -> Vec<String> {
    engine::PER_CONTAINER_FILES
        .iter()
        .chain(&["/dev", "/proc", "/sys"])
        .map(|s| s.to_string())
        .collect()
}

/// Asks a running container's agent to freeze its writable layer; the
/// connection returned keeps it frozen until it thaws or closes.
fn freeze_layer(root: &Path, id: &str) -> anyhow::Result<AgentClient> {
    let mut client = AgentClient::connect(&engine::socket_path(root, id))?;
    client.call(&Request::Freeze {
        path: GUEST_SCRATCH.into(),
    })?;
    Ok(client)
}

/// The container's root in the helper VM: the image disk, the writable
/// layer's disk (read-only without its journal when a running container
/// froze it), and an overlay of both at [`GUEST_ROOT`] — read-only (the
/// upper directory as one more lower layer) unless `writable`.
fn root_requests(frozen: bool, writable: bool) -> Vec<Request> {
    let upper = format!("{GUEST_SCRATCH}/upper");
    let work = format!("{GUEST_SCRATCH}/work");
    let mut requests = vec![mount("/dev/vda", GUEST_LOWER, "erofs", true, "")];
    if frozen {
        requests.push(mount("/dev/vdb", GUEST_SCRATCH, "ext4", true, "noload"));
    } else {
        requests.push(mount(
            "/dev/vdb",
            GUEST_SCRATCH,
            "ext4",
            false,
            engine::SCRATCH_EXT4_OPTIONS,
        ));
        requests.push(Request::Mkdir {
            path: upper.clone(),
            within: None,
        });
        requests.push(Request::Mkdir {
            path: work.clone(),
            within: None,
        });
    }
    let options = if writable {
        format!("lowerdir={GUEST_LOWER},upperdir={upper},workdir={work}")
    } else {
        format!("lowerdir={upper}:{GUEST_LOWER}")
    };
    requests.push(mount("overlay", GUEST_ROOT, "overlay", !writable, &options));
    requests
}
