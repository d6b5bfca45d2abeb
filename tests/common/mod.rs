//! Helpers shared by hull's integration tests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A `hull` command with its state under `root`. Fast-start snapshots are
/// shared by all tests (one template boot per VM shape per machine instead
/// of one per test); a test may set its own `HULL_SNAPSHOT_DIR`.
pub fn hull(root: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hull"));
    cmd.env("HULL_ROOT", root);
    cmd.env(
        "HULL_SNAPSHOT_DIR",
        std::env::temp_dir().join("hull-test-snapshots"),
    );
    cmd
}

/// Fails loudly (never skips) when this machine cannot run microVMs.
pub fn require_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "this test boots microVMs and needs /dev/kvm, which this machine lacks"
    );
}

/// Output as text, for assertions with context.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts a failed command printed exactly one line on stderr containing `needle`.
pub fn assert_one_line_error(out: &Output, needle: &str) {
    let (stdout, stderr) = text(out);
    assert!(!out.status.success(), "expected failure; stdout: {stdout}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "expected one error line, got: {stderr:?}"
    );
    assert!(stderr.starts_with("hull: "), "{stderr:?}");
    assert!(stderr.contains(needle), "{stderr:?} lacks {needle:?}");
}

/// Builds an ext4 image at `img` holding a busybox userland (from Debian's
/// busybox-static), `/etc/greeting` and empty `/data`, `/proc`, `/dev`.
pub fn busybox_ext4(img: &Path, size_mib: u32) {
    let dir = tempfile::tempdir().unwrap();
    busybox_rootfs(dir.path());
    ext4_of_dir(dir.path(), img, size_mib);
}

/// Makes an ext4 image at `img` holding the tree `dir`.
pub fn ext4_of_dir(dir: &Path, img: &Path, size_mib: u32) {
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(dir)
        .arg(img)
        .arg(format!("{size_mib}M"))
        .output()
        .expect("missing mkfs.ext4: install e2fsprogs");
    assert!(
        out.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fills `rootfs` with a busybox userland, /etc/passwd (root, app=1000),
/// /etc/group and /etc/greeting.
pub fn busybox_rootfs(rootfs: &Path) {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "missing /bin/busybox: install Debian's busybox-static (scripts/apt-packages)"
    );
    for d in ["bin", "etc", "data", "proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    let list = Command::new(busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.contains('/') {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(rootfs.join("etc/greeting"), "hello from ext4\n").unwrap();
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\napp:x:1000:\n").unwrap();
}

/// A Debian python image made by `tests/support/make-python-image`.
pub struct PythonImage {
    /// The rootfs tarball (zstd), for `hull import`.
    pub tarball: PathBuf,
    /// The builder's summary: `entries`, `uncompressed_bytes`,
    /// `compressed_bytes`, `zip_modules`, `packages`.
    pub summary: serde_json::Value,
}

/// Builds the minimal Debian python image (python3-minimal; with `flask`,
/// python3-flask and what it imports), once per test process. Needs apt
/// and Debian's package mirror only; the builder caches the .debs and the
/// finished image (see the script).
pub fn python_image(flask: bool) -> &'static PythonImage {
    static MINIMAL: OnceLock<PythonImage> = OnceLock::new();
    static FLASK: OnceLock<PythonImage> = OnceLock::new();
    let cell = if flask { &FLASK } else { &MINIMAL };
    cell.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/make-python-image");
        let name = if flask { "python-flask" } else { "python" };
        let tarball = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.tar.zst"));
        let mut cmd = Command::new(&script);
        if flask {
            cmd.arg("--flask");
        }
        let out = cmd
            .arg(&tarball)
            .output()
            .expect("cannot run tests/support/make-python-image (needs python3)");
        assert!(
            out.status.success(),
            "make-python-image failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        let summary = std::fs::read(format!("{}.json", tarball.display())).unwrap();
        PythonImage {
            tarball,
            summary: serde_json::from_slice(&summary).unwrap(),
        }
    })
}

/// Imports the python image into the hull root `root` as `tag`, with
/// `CMD ["python3"]` as its config.
pub fn import_python_image(root: &Path, flask: bool, tag: &str) -> &'static PythonImage {
    let image = python_image(flask);
    let out = hull(root)
        .args(["import", "--change", "CMD [\"python3\"]"])
        .arg(&image.tarball)
        .arg(tag)
        .output()
        .unwrap();
    assert!(out.status.success(), "hull import: {:?}", text(&out));
    image
}

/// Imports a busybox userland (see [`busybox_rootfs`]) as image
/// `busybox:test`, with `ENV GREETING=hi`, `WORKDIR /data` and a default
/// command.
pub fn import_busybox(root: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    busybox_rootfs(&rootfs);
    let tar = dir.path().join("rootfs.tar");
    let out = std::process::Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = hull(root)
        .args([
            "import",
            "--change",
            "ENV GREETING=hi",
            "--change",
            "WORKDIR /data",
            "--change",
            "CMD [\"/bin/sh\", \"-c\", \"echo default cmd\"]",
        ])
        .arg(&tar)
        .arg("busybox:test")
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
}

/// Tars `rootfs` and imports it as image `tag` (`changes`: `--change`
/// values of `hull import`).
pub fn import_rootfs(root: &Path, rootfs: &Path, tag: &str, changes: &[&str]) {
    let tar = rootfs.with_extension("tar");
    let out = Command::new("tar")
        .arg("-C")
        .arg(rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .output()
        .unwrap();
    assert!(out.status.success(), "tar: {:?}", text(&out));
    let mut import = hull(root);
    import.arg("import");
    for c in changes {
        import.args(["--change", c]);
    }
    let out = import.arg(&tar).arg(tag).output().unwrap();
    assert!(out.status.success(), "hull import: {:?}", text(&out));
}

/// Runs `cmd` with its output captured, killing it (and failing) after
/// `limit`: a hung VM fails its test instead of hanging the suite.
pub fn run_limited(mut cmd: Command, limit: std::time::Duration) -> Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{cmd:?} still running after {limit:?}: {:?}", text(&out));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Registry file fetched by the outbound tests (the index page of the
/// mirror this machine uses is empty; its Release file is not).
pub const REGISTRY_HOST: &str = "deb.debian.org";
/// Its path.
pub const REGISTRY_PATH: &str = "/debian/dists/bookworm/Release";

/// The host's own fetch of the registry file, or a clear failure: this
/// test needs outbound access, and must say so rather than hang.
pub fn host_fetch() -> Vec<u8> {
    let addr = (REGISTRY_HOST, 80)
        .to_socket_addrs()
        .unwrap_or_else(|e| {
            panic!("this test needs outbound access: the host cannot resolve {REGISTRY_HOST}: {e}")
        })
        .next()
        .unwrap_or_else(|| {
            panic!("this test needs outbound access: no address for {REGISTRY_HOST}")
        });
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(15)).unwrap_or_else(|e| {
        panic!("this test needs outbound access: the host cannot reach {REGISTRY_HOST}:80: {e}")
    });
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {REGISTRY_PATH} HTTP/1.1\r\nHost: {REGISTRY_HOST}\r\nUser-Agent: hull-test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap_or_else(|e| {
        panic!("this test needs outbound access: reading from {REGISTRY_HOST}: {e}")
    });
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response");
    assert!(
        resp.starts_with(b"HTTP/1.1 200") || resp.starts_with(b"HTTP/1.0 200"),
        "this test needs outbound access: {REGISTRY_HOST} answered {:?}",
        String::from_utf8_lossy(&resp[..split])
    );
    let head = String::from_utf8_lossy(&resp[..split]).to_ascii_lowercase();
    assert!(
        !head.contains("transfer-encoding: chunked"),
        "{REGISTRY_HOST} answered chunked; this test reads plain bodies"
    );
    resp[split + 4..].to_vec()
}

/// PIDs of `passt` (or `passt.avx2`) processes whose parent is `parent`.
pub fn passt_children(parent: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some((comm_part, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let ppid: i32 = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        // passt re-executes itself as passt.avx2 where the CPU has AVX2.
        if comm_part.contains("(passt") && ppid == parent {
            out.push(pid);
        }
    }
    out
}

/// Whether `pid` still exists (a zombie counts: it was not reaped).
pub fn exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

pub fn wait_gone(pid: i32, what: &str) {
    let start = Instant::now();
    while exists(pid) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what} {pid} still exists (orphaned or unreaped)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asserts that no file with content under the hull root is readable by
/// anyone but its owner (containers' config with `-e` values, logs,
/// disks, state and mailboxes; volumes; images and image disks; the event
/// log), except what must be: hull's own initramfs (`cache/`: the agent,
/// the same for everyone) and container mode's unpacked layers
/// (`oci/lower`: the container's own users, mapped to unprivileged host
/// IDs, read them). Empty lock files hold nothing.
pub fn assert_private_files(root: &Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut open = Vec::new();
    let shared = [root.join("cache"), root.join("oci").join("lower")];
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if shared.contains(&p) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
        } else if meta.is_file()
            && meta.blocks() + meta.len() > 0
            && meta.permissions().mode() & 0o077 != 0
        {
            open.push(format!("{} {:o}", p.display(), meta.permissions().mode()));
        }
    }
    assert!(open.is_empty(), "readable by others: {open:#?}");
}
