//! Image root filesystems, prepared inside a helper microVM and cached.
//!
//! The host never extracts a layer: it starts a helper VM whose memory
//! windows are the layer blobs (read-only, unopened) and a sparse output
//! file, and the agent decompresses and applies the layers in user space,
//! writing an EROFS image straight into the output window (docs/unpack.md).
//! No byte crosses the guest kernel, whose code is emulated on PVM hosts.
//! The finished image is cut to its length, cached by the chain of layer
//! digests and attached read-only to every container of the image.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agent_protocol::protocol::{self, UnpackReply, UnpackRequest, UNPACK_PORT};
use sha2::{Digest, Sha256};

use crate::guest::agent_client::{self, AgentClient};
use crate::guest::vm::{GuestOptions, RunningVm};
use crate::progress::{self, Progress, Silent, Stage};

/// Errors preparing a root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// Creating or formatting the disk file failed.
    #[error("Cannot create the root filesystem disk {0}")]
    Disk(PathBuf, #[source] std::io::Error),
    /// mkfs.ext4 failed.
    #[error("mkfs.ext4 failed for {0}: {1}")]
    Mkfs(PathBuf, String),
    /// A layer blob cannot be read.
    #[error("Cannot read layer {0}")]
    Layer(PathBuf, #[source] std::io::Error),
    /// The guest could not unpack a layer.
    #[error("Unpacking the image failed in the helper VM: {0}")]
    Unpack(String),
    /// The connection to the helper VM's agent broke (rather than the
    /// preparation failing on bad input).
    #[error(transparent)]
    ConnectionLost(anyhow::Error),
}

impl RootfsError {
    /// Wraps an agent error as [`RootfsError::ConnectionLost`] when it is
    /// the connection that failed.
    fn from_agent(e: agent_client::AgentError) -> anyhow::Error {
        match e {
            agent_client::AgentError::Wire(protocol::WireError::Io(_)) => {
                RootfsError::ConnectionLost(e.into()).into()
            }
            e => e.into(),
        }
    }

    /// The same for a protocol error on the unpack stream, with `context`
    /// if given.
    fn from_wire(e: protocol::WireError, context: Option<String>) -> anyhow::Error {
        let lost = matches!(e, protocol::WireError::Io(_));
        let e = match context {
            Some(c) => anyhow::Error::from(e).context(c),
            None => e.into(),
        };
        if lost {
            RootfsError::ConnectionLost(e).into()
        } else {
            e
        }
    }
}

/// What a preparation measured.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PrepareStats {
    /// Layer bytes streamed.
    pub compressed_bytes: u64,
    /// Tar bytes after decompression.
    pub tar_bytes: u64,
    /// Entries created.
    pub entries: u64,
    /// Seconds the guest spent unpacking.
    pub unpack_seconds: f64,
    /// Seconds for the whole preparation (boot included).
    pub total_seconds: f64,
}

/// The cache of prepared root filesystems under `<root>/rootfs`.
pub struct RootfsCache<'p> {
    dir: PathBuf,
    /// Told when a preparation starts and ends.
    progress: &'p dyn Progress,
}

/// The cache key of an image's root filesystem: its layer chain.
pub fn chain_key(layer_digests: &[String]) -> String {
    let mut h = Sha256::new();
    for d in layer_digests {
        h.update(d.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())[..32].to_string()
}

/// Largest image a preparation may write.
const MAX_IMAGE: u64 = 32 << 30;

/// Room for the image of layers of `compressed` bytes: 16x (zstd and gzip
/// layers of real images inflate 2-6x) plus 256 MiB of metadata and slack,
/// at most [`MAX_IMAGE`]. The output file is sparse and the guest maps
/// only what it writes, so unused room costs nothing; it also bounds what a
/// decompression bomb can make the host store.
pub fn disk_size(compressed: u64) -> u64 {
    let mib = compressed.div_ceil(1 << 20).saturating_mul(16) + 256;
    mib.saturating_mul(1 << 20).min(MAX_IMAGE)
}

/// Makes an empty ext4 filesystem in a new sparse file of `size` bytes.
pub fn mkfs(path: &Path, size: u64, label: &str) -> Result<(), RootfsError> {
    // Only root (and the VMM that opens it as root) reads a disk: it holds
    // a container's or a volume's data.
    let f = crate::container::store::create_private(path)
        .map_err(|e| RootfsError::Disk(path.into(), e))?;
    f.set_len(size)
        .map_err(|e| RootfsError::Disk(path.into(), e))?;
    drop(f);
    // No journal: the disk is written once by one guest, or is a
    // container's scratch layer; -m 0: no blocks reserved for root.
    let out = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-O",
            "^has_journal",
            "-m",
            "0",
            "-i",
            "8192",
            "-L",
            label,
        ])
        .arg(path)
        .output()
        .map_err(|e| RootfsError::Disk(path.into(), e))?;
    if !out.status.success() {
        return Err(RootfsError::Mkfs(
            path.into(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

impl RootfsCache<'static> {
    /// The cache of hull root `root`.
    pub fn new(root: &Path) -> Self {
        Self {
            dir: root.join("rootfs"),
            progress: &Silent,
        }
    }
}

impl<'p> RootfsCache<'p> {
    /// The same cache, reporting preparations (and the helper VM's first
    /// boot) to `progress`.
    pub fn with_progress(self, progress: &dyn Progress) -> RootfsCache<'_> {
        RootfsCache {
            dir: self.dir,
            progress,
        }
    }

    /// Where the disk of `key` lives once prepared.
    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.erofs"))
    }

    /// Removes the prepared disk of these layers, if any (under the same
    /// lock as a preparation).
    pub fn remove(&self, layers: &[(String, PathBuf)]) -> anyhow::Result<()> {
        let digests: Vec<String> = layers.iter().map(|(d, _)| d.clone()).collect();
        let key = chain_key(&digests);
        std::fs::create_dir_all(&self.dir)?;
        let _lock = crate::file_lock::lock_exclusive(&self.dir.join(format!("{key}.lock")))?;
        for path in [self.path(&key), self.dir.join(format!("{key}.json"))] {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }

    /// Disks of this key a killed preparation left half-written (`.KEY.PID.tmp`
    /// of a PID that is gone). Call under the key's lock.
    fn remove_dead_temporaries(&self, key: &str) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix(&format!(".{key}."))
                .and_then(|_| crate::cli::system_check::rootfs_temporary_pid(&name));
            if pid.is_some_and(|p| !crate::container::state::pid_alive(p)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// The prepared disk for these layers, preparing it first if needed.
    /// Returns the path and, when it was prepared now, the measurements.
    pub fn get_or_prepare(
        &self,
        root: &Path,
        layers: &[(String, PathBuf)],
    ) -> anyhow::Result<(PathBuf, Option<PrepareStats>)> {
        let digests: Vec<String> = layers.iter().map(|(d, _)| d.clone()).collect();
        let key = chain_key(&digests);
        let path = self.path(&key);
        if path.exists() {
            return Ok((path, None));
        }
        std::fs::create_dir_all(&self.dir)?;
        // One preparation per image at a time, across hull processes.
        let _lock = crate::file_lock::lock_exclusive(&self.dir.join(format!("{key}.lock")))?;
        if path.exists() {
            return Ok((path, None));
        }
        self.remove_dead_temporaries(&key);
        remove_dead_sockets(&root.join("run"));
        let tmp = self.dir.join(format!(".{key}.{}.tmp", std::process::id()));
        // A cache of an older hull held ext4 disks under the same key.
        let _ = std::fs::remove_file(self.dir.join(format!("{key}.ext4")));
        let stage = progress::begin(self.progress, Stage::PrepareRootfs);
        let result = prepare(root, layers, &tmp, self.progress);
        match result {
            Ok(stats) => {
                stage.done_with(Some(&stats_line(layers.len(), &stats)));
                std::fs::rename(&tmp, &path)?;
                let mut meta =
                    crate::container::store::create_private(&self.dir.join(format!("{key}.json")))?;
                meta.write_all(&serde_json::to_vec_pretty(&stats)?)?;
                Ok((path, Some(stats)))
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }
}

/// Helper VM sockets (`prepare-PID.vsock`) of killed preparations: the
/// VMM (jailed) cannot remove its socket and a killed hull did not, and
/// the socket's name is only ever used by its own PID. Any key's
/// preparation may remove them.
fn remove_dead_sockets(run: &Path) {
    let Ok(entries) = std::fs::read_dir(run) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if prepare_socket_pid(&name).is_some_and(|p| !crate::container::state::pid_alive(p)) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The PID in a preparation helper VM's socket name (`prepare-PID.vsock`,
/// and its per-port `prepare-PID.vsock_PORT`).
pub fn prepare_socket_pid(name: &str) -> Option<i32> {
    name.strip_prefix("prepare-")?
        .split_once(".vsock")?
        .0
        .parse()
        .ok()
}

/// `1 layer, 2.1 MB`: what a preparation applied.
fn stats_line(layers: usize, stats: &PrepareStats) -> String {
    let s = if layers == 1 { "" } else { "s" };
    format!(
        "{layers} layer{s}, {:.1} MB",
        stats.tar_bytes as f64 / 1_000_000.0
    )
}

/// Guest memory of the helper VM. The image builder keeps only metadata in
/// guest memory: every byte of layers and image is in a window.
const HELPER_MEMORY: &str = "256m";

/// Starts the helper VM (from its snapshot when fast start is on) with
/// the layer blobs as read-only windows and `output` as a writable one.
fn start_helper(
    root: &Path,
    layers: &[(String, PathBuf)],
    output: &Path,
    progress: &dyn Progress,
) -> anyhow::Result<(RunningVm, AgentClient)> {
    let mut windows: Vec<vmm::window::WindowConfig> = layers
        .iter()
        .map(|(_, path)| vmm::window::WindowConfig {
            path: path.clone(),
            writable: false,
        })
        .collect();
    windows.push(vmm::window::WindowConfig {
        path: output.to_path_buf(),
        writable: true,
    });
    let opts = GuestOptions {
        memory: HELPER_MEMORY,
        cpus: 1,
        console: false,
        echo: false,
        kernel: None,
        net: Vec::new(),
        windows,
        // Its own snapshot, whose agent has a warm heap (the agent's
        // `warm_heap`).
        extra_cmdline: "hull.prepare",
        fs: Vec::new(),
        progress: Some(progress),
    };
    let run_dir = root.join("run");
    std::fs::create_dir_all(&run_dir)?;
    let uds = run_dir.join(format!("prepare-{}.vsock", std::process::id()));
    crate::guest::fast_start::start(
        root,
        &opts,
        Vec::new(),
        uds,
        Duration::from_secs(600),
        None,
        |_| Ok(()),
    )
}

/// The request naming each blob's window and the output's, in the order
/// the helper VM's config lists them (layers, then the output).
fn unpack_request(sizes: &[u64], output_len: u64) -> anyhow::Result<UnpackRequest> {
    let mem_mib = crate::units::parse_mib(HELPER_MEMORY)?;
    let mut lens = sizes.to_vec();
    lens.push(output_len);
    let places = vmm::window::places(mem_mib, &lens);
    let range = |p: &vmm::window::WindowPlace| protocol::WindowRange {
        guest_addr: p.guest_addr,
        len: p.len,
    };
    Ok(UnpackRequest {
        layers: sizes
            .iter()
            .zip(&places)
            .map(|(size, place)| protocol::LayerWindow {
                window: range(place),
                size: *size,
            })
            .collect(),
        output: range(&places[sizes.len()]),
    })
}

/// Has a helper VM build the EROFS image of `layers` into `disk`.
fn prepare(
    root: &Path,
    layers: &[(String, PathBuf)],
    disk: &Path,
    progress: &dyn Progress,
) -> anyhow::Result<PrepareStats> {
    let start = Instant::now();
    let mut sizes = Vec::new();
    for (_, p) in layers {
        let len = std::fs::metadata(p)
            .map_err(|e| RootfsError::Layer(p.clone(), e))?
            .len();
        if len == 0 {
            return Err(RootfsError::Layer(p.clone(), std::io::Error::other("empty blob")).into());
        }
        sizes.push(len);
    }
    let output_len = disk_size(sizes.iter().sum());
    // An image's files, for root (and the VMMs it opens them for) only.
    let f = crate::container::store::create_private(disk)
        .map_err(|e| RootfsError::Disk(disk.into(), e))?;
    f.set_len(output_len)
        .map_err(|e| RootfsError::Disk(disk.into(), e))?;
    let request = unpack_request(&sizes, output_len)?;
    let (vm, client) = start_helper(root, layers, disk, progress)?;
    let mut stream =
        agent_client::connect_port(&vm.uds, UNPACK_PORT).map_err(RootfsError::from_agent)?;
    protocol::send(&mut stream, &request).map_err(|e| RootfsError::from_wire(e, None))?;
    let reply: UnpackReply = while_watching_written(disk, progress, || protocol::recv(&mut stream))
        .map_err(|e| {
            RootfsError::from_wire(
                e,
                Some(format!(
                    "waiting for the unpack result ({})",
                    helper_state(&vm)
                )),
            )
        })?;
    let (stats, image_bytes) = match reply {
        UnpackReply::Done {
            compressed_bytes,
            tar_bytes,
            entries,
            image_bytes,
            seconds,
            ..
        } => (
            PrepareStats {
                compressed_bytes,
                tar_bytes,
                entries,
                unpack_seconds: seconds,
                total_seconds: 0.0,
            },
            image_bytes,
        ),
        UnpackReply::Error { message } => return Err(RootfsError::Unpack(message).into()),
    };
    client.shutdown().map_err(RootfsError::from_agent)?;
    vm.wait(Duration::from_secs(300))?;
    // The guest wrote the image through a shared mapping of the file: the
    // bytes are in the host's page cache; cut the unused room and make it
    // durable before the cache entry appears.
    if image_bytes == 0 || image_bytes > output_len {
        return Err(RootfsError::Unpack(format!(
            "helper reported an image of {image_bytes} bytes"
        ))
        .into());
    }
    f.set_len(image_bytes)
        .map_err(|e| RootfsError::Disk(disk.into(), e))?;
    f.sync_all()
        .map_err(|e| RootfsError::Disk(disk.into(), e))?;
    Ok(PrepareStats {
        total_seconds: start.elapsed().as_secs_f64(),
        ..stats
    })
}

/// How often the bytes the helper has written are reported.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// Runs `wait` while reporting, every [`WATCH_EVERY`], how many bytes of
/// `disk` the helper has written. The guest writes through a shared
/// mapping of the file, so its allocated blocks are the bytes written so
/// far: the host learns the progress without a word from the guest.
fn while_watching_written<T>(disk: &Path, progress: &dyn Progress, wait: impl FnOnce() -> T) -> T {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        s.spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(WATCH_EVERY)
            {
                if let Some(bytes) = allocated_bytes(disk) {
                    let mb = bytes as f64 / 1_000_000.0;
                    progress.update(Stage::PrepareRootfs, &format!("{mb:.1} MB written"));
                }
            }
        });
        let result = wait();
        drop(stop);
        result
    })
}

/// Bytes of `path` backed by disk blocks (a sparse file's written part).
fn allocated_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.blocks() * 512)
}

/// Whether the helper VM still runs, with the guest's last console line
/// if it ended (a kernel panic says more than a closed connection).
fn helper_state(vm: &RunningVm) -> String {
    if vm.is_done() {
        std::thread::sleep(Duration::from_millis(200));
        let tail = crate::guest::serial_watch::console_tail();
        format!(
            "helper VM ended; guest console: {}",
            tail.last().map_or("(nothing)", String::as_str)
        )
    } else {
        "helper VM still running".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the updates of the preparation stage.
    #[derive(Default)]
    struct Updates(std::sync::Mutex<Vec<String>>);

    impl Progress for Updates {
        fn begin(&self, _: Stage) {}
        fn end(&self, _: Stage, _: Duration, _: bool, _: Option<&str>) {}
        fn update(&self, stage: Stage, detail: &str) {
            assert_eq!(stage, Stage::PrepareRootfs);
            self.0.lock().unwrap().push(detail.to_string());
        }
    }

    #[test]
    fn bytes_written_into_a_sparse_disk_are_reported_while_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("image");
        let f = std::fs::File::create(&disk).unwrap();
        f.set_len(64 << 20).unwrap();
        let updates = Updates::default();
        let answer = while_watching_written(&disk, &updates, || {
            std::thread::sleep(WATCH_EVERY * 2);
            (&f).write_all(&[1u8; 3_000_000]).unwrap();
            f.sync_all().unwrap();
            std::thread::sleep(WATCH_EVERY * 3);
            42
        });
        assert_eq!(answer, 42);
        let seen = updates.0.into_inner().unwrap();
        assert_eq!(seen.first().map(String::as_str), Some("0.0 MB written"));
        assert!(
            seen.iter()
                .any(|l| l.starts_with("3.") && l.ends_with(" MB written")),
            "{seen:?}"
        );
    }

    #[test]
    fn key_depends_on_the_whole_chain_in_order() {
        let a = chain_key(&["sha256:a".into(), "sha256:b".into()]);
        assert_eq!(a.len(), 32);
        assert_ne!(a, chain_key(&["sha256:b".into(), "sha256:a".into()]));
        assert_ne!(a, chain_key(&["sha256:a".into()]));
        assert_eq!(a, chain_key(&["sha256:a".into(), "sha256:b".into()]));
    }

    #[test]
    fn disks_leave_room_and_are_sparse() {
        assert_eq!(disk_size(0), 256 << 20);
        assert_eq!(disk_size(10 << 20), (160 + 256) << 20);
        assert_eq!(disk_size(u64::MAX / 2), MAX_IMAGE);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.ext4");
        mkfs(&p, 64 << 20, "t").unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 < 16 << 20,
            "not sparse: {} blocks",
            meta.blocks()
        );
    }
}
