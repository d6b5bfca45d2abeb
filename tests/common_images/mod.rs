//! Helpers for the image integration tests: running hull, real peers
//! (docker-registry, skopeo, umoci, podman), OCI layouts built from scratch
//! with system tar/gzip, and a scriptable mock registry for failure cases.
#![allow(dead_code)]

pub mod mock;

use std::collections::BTreeMap;
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// Panics unless `tool` is on PATH: a missing peer fails loudly.
pub fn need(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(found, "missing {tool}: install it (scripts/apt-packages)");
}

/// Runs hull with `--root root`.
pub fn hull(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hull"))
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run hull")
}

/// Runs hull and asserts success; returns stdout.
pub fn hull_ok(root: &Path, args: &[&str]) -> String {
    let o = hull(root, args);
    assert!(
        o.status.success(),
        "hull {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs hull, asserts it fails with exactly one `hull: ` error line on
/// stderr, and returns that line.
pub fn hull_err(root: &Path, args: &[&str]) -> String {
    let o = hull(root, args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success(),
        "hull {args:?} unexpectedly succeeded: {err}"
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    assert!(lines[0].starts_with("hull: "), "{err}");
    lines[0].to_owned()
}

/// Runs a peer tool and asserts success; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let o = cmd.stdin(Stdio::null()).output().expect("spawn");
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `sha256:<hex>` of bytes.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Everything in the store that matters for "unchanged": index.json and the
/// set of blob and temp file names.
pub fn snapshot(root: &Path) -> (String, Vec<String>) {
    let dir = root.join("images");
    let index = fs::read_to_string(dir.join("index.json")).unwrap_or_default();
    let mut names = Vec::new();
    for sub in ["blobs/sha256", ".tmp"] {
        if let Ok(rd) = fs::read_dir(dir.join(sub)) {
            for e in rd.flatten() {
                names.push(format!("{sub}/{}", e.file_name().to_string_lossy()));
            }
        }
    }
    names.sort();
    (index, names)
}

/// A busybox rootfs tarball from Debian's busybox-static.
pub fn busybox_tar(dir: &Path) -> PathBuf {
    let bb = Path::new("/bin/busybox");
    assert!(
        bb.is_file(),
        "missing busybox-static: install it (scripts/apt-packages)"
    );
    let rootfs = dir.join("bb-rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::create_dir_all(rootfs.join("etc")).unwrap();
    fs::copy(bb, rootfs.join("bin/busybox")).unwrap();
    for l in ["sh", "ls", "cat", "echo"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(l)).unwrap();
    }
    fs::write(rootfs.join("etc/hostname"), "busybox\n").unwrap();
    let out = dir.join("busybox-rootfs.tar");
    tar_dir(&rootfs, &out);
    out
}

/// Reproducible tar of a directory's contents.
pub fn tar_dir(dir: &Path, out: &Path) {
    need("tar");
    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(dir)
            .args([
                "--sort=name",
                "--mtime=@0",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "-cf",
            ])
            .arg(out)
            .arg("."),
    );
}

/// One file of a layer: path and content; `None` content makes a directory.
pub type Files<'a> = &'a [(&'a str, Option<&'a [u8]>)];

/// Builds OCI layouts from scratch: blobs written here, hashed with sha2.
pub struct LayoutBuilder {
    /// Layout directory.
    pub dir: PathBuf,
    work: PathBuf,
    manifests: Vec<serde_json::Value>,
}

/// A layer as written into a layout.
#[derive(Clone, Debug)]
pub struct BuiltLayer {
    /// Blob digest (gzip).
    pub digest: String,
    /// Uncompressed digest.
    pub diff_id: String,
    /// Blob size.
    pub size: u64,
}

impl LayoutBuilder {
    /// A new empty layout at `dir`.
    pub fn new(dir: &Path) -> Self {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let work = dir.with_extension("work");
        fs::create_dir_all(&work).unwrap();
        Self {
            dir: dir.to_owned(),
            work,
            manifests: Vec::new(),
        }
    }

    /// Writes a blob; returns (digest, size).
    pub fn blob(&self, bytes: &[u8]) -> (String, u64) {
        let d = sha256(bytes);
        fs::write(self.dir.join("blobs/sha256").join(&d[7..]), bytes).unwrap();
        (d, bytes.len() as u64)
    }

    /// A gzip layer holding `files`.
    pub fn layer(&self, files: Files<'_>) -> BuiltLayer {
        need("gzip");
        let n = fs::read_dir(&self.work).unwrap().count();
        let root = self.work.join(format!("layer{n}"));
        fs::create_dir_all(&root).unwrap();
        for (p, content) in files {
            let path = root.join(p);
            match content {
                None => fs::create_dir_all(&path).unwrap(),
                Some(c) => {
                    fs::create_dir_all(path.parent().unwrap()).unwrap();
                    fs::write(&path, c).unwrap();
                }
            }
        }
        let tar = root.with_extension("tar");
        tar_dir(&root, &tar);
        let plain = fs::read(&tar).unwrap();
        let gz = run_ok_bytes(Command::new("gzip").args(["-n", "-c"]).arg(&tar));
        let (digest, size) = self.blob(&gz);
        BuiltLayer {
            digest,
            diff_id: sha256(&plain),
            size,
        }
    }

    /// An image manifest for `layers` and the platform; returns its
    /// descriptor (with platform) as JSON.
    pub fn manifest(&self, layers: &[BuiltLayer], arch: &str, cmd: &[&str]) -> serde_json::Value {
        let config = serde_json::json!({
            "created": "2024-01-01T00:00:00Z",
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": cmd, "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>()},
            "history": layers.iter().map(|_| serde_json::json!({"created": "2024-01-01T00:00:00Z", "created_by": "test layer"})).collect::<Vec<_>>(),
        });
        let (cd, cs) = self.blob(config.to_string().as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
            "layers": layers.iter().map(|l| serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": l.digest, "size": l.size,
            })).collect::<Vec<_>>(),
        });
        let (md, ms) = self.blob(manifest.to_string().as_bytes());
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": ms,
            "platform": {"architecture": arch, "os": "linux"},
        })
    }

    /// An index over manifest descriptors; returns its descriptor.
    pub fn index(&self, manifests: Vec<serde_json::Value>) -> serde_json::Value {
        let idx = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        let (d, s) = self.blob(idx.to_string().as_bytes());
        serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": s})
    }

    /// Names a descriptor `tag` in index.json.
    pub fn tag(&mut self, mut desc: serde_json::Value, tag: &str) {
        desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
        self.manifests.push(desc);
        let idx = serde_json::json!({"schemaVersion": 2, "manifests": self.manifests});
        fs::write(self.dir.join("index.json"), idx.to_string()).unwrap();
    }
}

/// The standard multi-layer test image: busybox base, a layer adding files,
/// and a layer with a whiteout (`/etc/.wh.gone`) and an opaque directory
/// (`/data/.wh..wh..opq`). Returns the manifest descriptor and layers.
pub fn multilayer(b: &LayoutBuilder, arch: &str) -> (serde_json::Value, Vec<BuiltLayer>) {
    let bb = fs::read("/bin/busybox")
        .expect("missing busybox-static: install it (scripts/apt-packages)");
    let base = b.layer(&[
        ("bin/busybox", Some(&bb)),
        ("etc/gone", Some(b"x")),
        ("data/old", Some(b"old")),
    ]);
    let mid = b.layer(&[
        ("data/a", Some(b"a")),
        ("srv", None),
        ("srv/app.txt", Some(arch.as_bytes())),
    ]);
    let top = b.layer(&[
        ("etc/.wh.gone", Some(b"")),
        ("data/.wh..wh..opq", Some(b"")),
        ("data/new", Some(b"new")),
    ]);
    let layers = vec![base, mid, top];
    (b.manifest(&layers, arch, &["/bin/busybox", "sh"]), layers)
}

fn run_ok_bytes(cmd: &mut Command) -> Vec<u8> {
    let o = cmd.output().expect("spawn");
    assert!(o.status.success(), "{cmd:?} failed");
    o.stdout
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something listens on addr.
pub fn wait_listening(addr: &str) {
    let t = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "nothing listens on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A real `docker-registry` (Debian's distribution 2.x) on 127.0.0.1.
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry; with `htpasswd` it requires basic auth for that user.
    pub fn start(htpasswd: Option<(&str, &str)>) -> Self {
        need("docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if let Some((u, p)) = htpasswd {
            need("htpasswd");
            let line = run_ok(Command::new("htpasswd").args(["-Bbn", u, p]));
            let f = dir.path().join("htpasswd");
            fs::write(&f, line.trim()).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: hull-test\n    path: {}\n",
                f.display()
            ));
        }
        let cfg = dir.path().join("config.yml");
        fs::write(&cfg, config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        wait_listening(&addr);
        Self {
            addr,
            child,
            _dir: dir,
        }
    }

    /// Where the registry keeps a blob (its filesystem storage), for
    /// tests that damage what it serves.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = &digest["sha256:".len()..];
        self._dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Copies `oci:layout:tag` into this registry as `name` with skopeo.
    pub fn seed(&self, layout: &Path, tag: &str, name: &str, creds: Option<&str>) {
        need("skopeo");
        let mut c = Command::new("skopeo");
        c.args(["copy", "--all", "--dest-tls-verify=false"]);
        if let Some(cr) = creds {
            c.args(["--dest-creds", cr]);
        }
        c.arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{name}", self.addr));
        run_ok(&mut c);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The parsed `hull image inspect` of one image.
pub fn inspect(root: &Path, image: &str) -> serde_json::Value {
    let out = hull_ok(root, &["image", "inspect", image]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("inspect prints JSON");
    v[0].clone()
}

/// Layer digests of an inspected image.
pub fn layer_digests(inspected: &serde_json::Value) -> Vec<String> {
    inspected["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["Digest"].as_str().unwrap().to_owned())
        .collect()
}

/// skopeo's view of an image: its layer digests.
pub fn skopeo_layers(transport_ref: &str) -> Vec<String> {
    need("skopeo");
    let out = run_ok(Command::new("skopeo").args(["inspect", "--tls-verify=false", transport_ref]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_owned())
        .collect()
}

/// Counts of tags and untagged entries, for readable assertions.
pub fn names(root: &Path) -> BTreeMap<String, String> {
    let out = hull_ok(root, &["images", "--format", "json"]);
    out.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                format!(
                    "{}:{}",
                    v["Repository"].as_str().unwrap(),
                    v["Tag"].as_str().unwrap()
                ),
                v["ID"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}
