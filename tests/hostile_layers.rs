//! Hostile images.
//!
//! In the VM (the first test): hostile layers go through a real helper VM
//! and can only affect that VM's own disk: `../` paths, absolute paths,
//! symlinks pointing out of the root (absolute and relative) with files
//! written through them, hard links to outside paths, a symlink to a host
//! path replaced by a file, device nodes, and a 1 GiB sparse-file bomb. A
//! canary directory on the host (named in every hostile entry) must come
//! out unchanged.
//!
//! On the host (the other tests, no VM): what `hull load`, `import`,
//! `save`, `pull` and the container mode's host unpack do with gzip and
//! zstd bombs, documents of hundreds of MB, digest mismatches at every
//! level and very many files. Each is refused with one line, in bounded
//! time, leaving the store as it was (docs/threat-model.md).

mod common;
mod common_images;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_one_line_error, busybox_rootfs, hull, require_kvm, text};

/// Writes a layer tar (Python's tarfile writes any name and link the tar
/// format can hold, unlike tar tools that clean them): the busybox userland
/// of `rootfs`, then entries that aim at `canary` and `escape` on the host.
const MAKE_LAYER: &str = r#"
import io, sys, tarfile
rootfs, canary, escape, out = sys.argv[1:5]
c = canary.strip("/")
up = "../" * 8
t = tarfile.open(out, "w", format=tarfile.GNU_FORMAT)
t.add(rootfs, arcname=".")
def entry(name, kind=tarfile.REGTYPE, data=b"", link="", dev=(0, 0)):
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.mode = kind, link, 0o644
    ti.devmajor, ti.devminor = dev
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    t.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
entry(up + c + "/dotdot", data=b"dotdot\n")
entry("/" + c + "/absolute", data=b"absolute\n")
entry("escape-abs", tarfile.SYMTYPE, link="/" + c)
entry("escape-abs/through-abs", data=b"through-abs\n")
entry("escape-rel", tarfile.SYMTYPE, link=up + c)
entry("escape-rel/through-rel", data=b"through-rel\n")
entry(c + "/host-file", data=b"in-image\n")
entry("hardlink-rel", tarfile.LNKTYPE, link=up + c + "/host-file")
entry("hardlink-abs", tarfile.LNKTYPE, link="/" + c + "/host-file")
entry("clobber", tarfile.SYMTYPE, link=escape)
entry("clobber", data=b"clobbered\n")
entry("devnull-copy", tarfile.CHRTYPE, dev=(1, 3))
entry("disk-node", tarfile.BLKTYPE, dev=(8, 0))
t.close()
"#;

/// Every file under `dir`: relative path, size, link count, content.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                todo.push(e.path());
            }
            let content = if m.is_file() {
                std::fs::read(e.path()).unwrap()
            } else {
                Vec::new()
            };
            let rel = e.path().strip_prefix(dir).unwrap().to_path_buf();
            out.push((rel, m.len(), m.nlink(), content));
        }
    }
    out.sort();
    out
}

/// Removes the canary directory however the test ends.
struct Canary(PathBuf);

impl Drop for Canary {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn import(root: &Path, tar: &Path, name: &str) {
    let out = hull(root)
        .arg("import")
        .arg(tar)
        .arg(name)
        .output()
        .unwrap();
    assert!(out.status.success(), "import {name}: {:?}", text(&out));
}

/// Names in `dir` (empty when it does not exist).
/// A failed preparation leaves no image in the cache (only lock files).
fn assert_no_image_cached(root: &Path) {
    let left: Vec<String> = names(&root.join("rootfs"))
        .into_iter()
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "a failed preparation left {left:?}");
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn hostile_layers_only_touch_the_helper_vm_disk() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let pid = std::process::id();
    let canary = Canary(PathBuf::from(format!("/tmp/hull-canary-{pid}")));
    let escape = PathBuf::from(format!("/tmp/hull-escape-{pid}"));
    std::fs::create_dir_all(&canary.0).unwrap();
    std::fs::write(canary.0.join("host-file"), "original\n").unwrap();
    assert!(!escape.exists());
    let before = snapshot(&canary.0);
    let work_before = snapshot(work);

    // A 1 GiB sparse file (a tar bomb: 10 KiB of tar for 1 GiB of file):
    // refused in the helper VM with one clear line; nothing is cached or
    // left half-written, and no container remains (--rm).
    let bomb_dir = tempfile::tempdir().unwrap();
    let bomb = std::fs::File::create(bomb_dir.path().join("bomb")).unwrap();
    bomb.set_len(1 << 30).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&bomb, b"tail\n", (1 << 30) - 5).unwrap();
    drop(bomb);
    let bomb_tar = work.join("bomb.tar");
    let out = Command::new("tar")
        .args(["--sparse", "--format=gnu", "-C"])
        .arg(bomb_dir.path())
        .arg("-cf")
        .arg(&bomb_tar)
        .arg("bomb")
        .output()
        .expect("missing GNU tar (scripts/apt-packages)");
    assert!(out.status.success(), "{:?}", text(&out));
    drop(bomb_dir);
    import(root, &bomb_tar, "bomb:test");
    let start = std::time::Instant::now();
    let out = hull(root)
        .args(["run", "--rm", "bomb:test", "/bin/sh"])
        .output()
        .unwrap();
    eprintln!("sparse bomb refused after {:?}", start.elapsed());
    assert_one_line_error(&out, "bomb: unsupported GNU sparse file");
    assert_no_image_cached(root);
    assert_eq!(names(&root.join("run")), Vec::<String>::new());
    assert_eq!(names(&root.join("containers")), vec![".lock".to_string()]);

    // A decompression bomb: 1 GiB of zeros in ~1 MiB of gzip. The image
    // may take 16x the compressed size + 256 MiB (sparse, the host's only
    // cost is what the guest writes): refused with one line, nothing kept.
    let zeros_dir = tempfile::tempdir().unwrap();
    let zeros = std::fs::File::create(zeros_dir.path().join("zeros")).unwrap();
    zeros.set_len(1 << 30).unwrap();
    drop(zeros);
    let zeros_tar = work.join("zeros.tar.gz");
    let out = Command::new("tar")
        .args(["--format=gnu", "-C"])
        .arg(zeros_dir.path())
        .arg("-czf")
        .arg(&zeros_tar)
        .arg("zeros")
        .output()
        .expect("missing GNU tar (scripts/apt-packages)");
    assert!(out.status.success(), "{:?}", text(&out));
    drop(zeros_dir);
    assert!(std::fs::metadata(&zeros_tar).unwrap().len() < 4 << 20);
    import(root, &zeros_tar, "zeros:test");
    let start = std::time::Instant::now();
    let out = hull(root)
        .args(["run", "--rm", "zeros:test", "/bin/sh"])
        .output()
        .unwrap();
    eprintln!("gzip bomb refused after {:?}", start.elapsed());
    assert_one_line_error(&out, "zeros: target filesystem is full");
    assert_no_image_cached(root);
    assert_eq!(names(&root.join("run")), Vec::<String>::new());

    // A stored blob cut in half after import (a damaged store): the helper
    // fails on it with one line, and no image is cached.
    let half_dir = tempfile::tempdir().unwrap();
    busybox_rootfs(&half_dir.path().join("rootfs"));
    let half_tar = work.join("half.tar.gz");
    let out = Command::new("tar")
        .arg("-C")
        .arg(half_dir.path().join("rootfs"))
        .arg("-czf")
        .arg(&half_tar)
        .arg(".")
        .output()
        .expect("missing GNU tar (scripts/apt-packages)");
    assert!(out.status.success(), "{:?}", text(&out));
    import(root, &half_tar, "half:test");
    let blob_len = std::fs::metadata(&half_tar).unwrap().len();
    let blob = std::fs::read_dir(root.join("images/blobs/sha256"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| std::fs::metadata(p).unwrap().len() == blob_len)
        .expect("the imported layer is stored as given");
    let f = std::fs::OpenOptions::new().write(true).open(&blob).unwrap();
    f.set_len(blob_len / 2).unwrap();
    drop(f);
    let out = hull(root)
        .args(["run", "--rm", "half:test", "/bin/sh"])
        .output()
        .unwrap();
    assert_one_line_error(
        &out,
        "Unpacking the image failed in the helper VM: layer 1: ",
    );
    assert_no_image_cached(root);
    std::fs::remove_file(&half_tar).unwrap();

    // A layer that aims everywhere outside its root: it unpacks, with every
    // entry confined to the image's disk, and the container sees them
    // there.
    let rootfs = work.join("rootfs");
    busybox_rootfs(&rootfs);
    let layer = work.join("hostile.tar");
    let out = Command::new("python3")
        .arg("-c")
        .arg(MAKE_LAYER)
        .arg(&rootfs)
        .arg(&canary.0)
        .arg(&escape)
        .arg(&layer)
        .output()
        .expect("missing python3 (scripts/apt-packages)");
    assert!(out.status.success(), "{:?}", text(&out));
    import(root, &layer, "hostile:test");
    let c = canary.0.display();
    let start = std::time::Instant::now();
    let out = hull(root)
        .args(["run", "--rm", "hostile:test", "/bin/sh", "-c"])
        .arg(format!(
            "cd / && cat {c}/dotdot {c}/absolute {c}/through-abs {c}/through-rel \
             hardlink-rel clobber && readlink escape-abs && readlink escape-rel && \
             stat -c '%h %F' {c}/host-file && stat -c '%F %t,%T' devnull-copy disk-node && \
             ls {c}"
        ))
        .output()
        .unwrap();
    eprintln!("hostile image prepared and run in {:?}", start.elapsed());
    let (stdout, stderr) = text(&out);
    assert_eq!(
        stdout,
        format!(
            "dotdot\nabsolute\nthrough-abs\nthrough-rel\nin-image\nclobbered\n\
             {c}\n{up}{rel}\n3 regular file\ncharacter special file 1,3\n\
             block special file 8,0\nabsolute\ndotdot\nhost-file\nthrough-abs\nthrough-rel\n",
            up = "../".repeat(8),
            rel = c.to_string().trim_start_matches('/'),
        ),
        "stderr: {stderr}"
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");

    // The host: the canary is exactly as it was (no new files, the host
    // file neither overwritten nor hard-linked), nothing appeared at the
    // escape path, and the test's own directory holds only what it wrote.
    assert_eq!(snapshot(&canary.0), before);
    assert!(
        !escape.exists(),
        "{} was created on the host",
        escape.display()
    );
    let mut work_after: Vec<PathBuf> = snapshot(work).into_iter().map(|e| e.0).collect();
    work_after.retain(|p| {
        !p.starts_with("rootfs")
            && p != Path::new("bomb.tar")
            && p != Path::new("zeros.tar.gz")
            && p != Path::new("hostile.tar")
    });
    assert_eq!(
        work_after,
        work_before.into_iter().map(|e| e.0).collect::<Vec<_>>()
    );
}

// ------------------------------------------------------------ host side

use std::io::Write as _;
use std::time::{Duration, Instant};

use common_images::{hull_ok, need, sha256, snapshot as store_snapshot, tar_dir, LayoutBuilder};

/// Runs hull with `env` added; returns its output and how long it took.
fn hull_with(root: &Path, env: &[(&str, &str)], args: &[&str]) -> (std::process::Output, Duration) {
    let start = Instant::now();
    let out = hull(root)
        .envs(env.iter().copied())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (out, start.elapsed())
}

/// Asserts `args` fails with one line containing `needle` within `limit`
/// and leaves the image store exactly as it was.
fn refused(root: &Path, env: &[(&str, &str)], args: &[&str], needle: &str, limit: Duration) {
    let before = store_snapshot(root);
    let (out, took) = hull_with(root, env, args);
    eprintln!(
        "hull {args:?}: refused in {took:?}: {}",
        text(&out).1.trim()
    );
    assert_one_line_error(&out, needle);
    assert!(took < limit, "hull {args:?} took {took:?}");
    assert_eq!(
        store_snapshot(root),
        before,
        "hull {args:?} changed the store"
    );
}

/// A GNU tar header for one file `name` of `size` bytes (data not included).
fn file_header(name: &str, size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_path(name).unwrap();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// A zstd frame holding `head` in a raw block, then `zeros` bytes of
/// zeros as RLE blocks of 128 KiB (4 bytes each: 1 TiB is 32 MiB).
/// Nothing inflated is ever written.
fn zstd_bomb(head: &[u8], zeros: u64) -> Vec<u8> {
    const BLOCK: u64 = 128 << 10;
    // Magic, frame header without content size, 128 KiB window.
    let mut z = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38];
    z.extend_from_slice(&((head.len() as u32) << 3).to_le_bytes()[..3]);
    z.extend_from_slice(head);
    let blocks = zeros / BLOCK;
    let rle = |last: u32| (last | (1 << 1) | ((BLOCK as u32) << 3)).to_le_bytes();
    let (more, end) = (rle(0), rle(1));
    z.reserve(blocks as usize * 4);
    for i in 0..blocks {
        z.extend_from_slice(&(if i + 1 == blocks { end } else { more })[..3]);
        z.push(0);
    }
    z
}

/// A gzip stream: `head` as one member, then members of 64 MiB of zeros
/// (one made by `gzip -9` from a pipe, repeated) up to `zeros` bytes.
fn gzip_bomb(head: &[u8], zeros: u64) -> Vec<u8> {
    let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    g.write_all(head).unwrap();
    let mut out = g.finish().unwrap();
    let member = Command::new("sh")
        .args(["-c", "head -c 67108864 /dev/zero | gzip -9 -n"])
        .output()
        .expect("sh and gzip");
    assert!(member.status.success());
    for _ in 0..zeros / (64 << 20) {
        out.extend_from_slice(&member.stdout);
    }
    out
}

/// A store with one small image in it, so "unchanged" means something.
fn store_with_busybox(t: &Path) -> PathBuf {
    let root = t.join("root");
    let tar = common_images::busybox_tar(t);
    hull_ok(&root, &["import", tar.to_str().unwrap(), "busybox"]);
    root
}

/// A one-layer OCI layout whose layer blob is `layer` (gzip) with diff ID
/// `diff_id`, named `name`.
fn layout_with_layer(dir: &Path, layer: &[u8], diff_id: &str, name: &str) -> LayoutBuilder {
    let mut b = LayoutBuilder::new(dir);
    let (digest, size) = b.blob(layer);
    let built = common_images::BuiltLayer {
        digest,
        diff_id: diff_id.to_owned(),
        size,
    };
    let m = b.manifest(&[built], "amd64", &["/bin/sh"]);
    b.tag(m, name);
    b
}

const SMALL_LIMIT: (&str, &str) = ("HULL_MAX_INFLATE", "64M");

#[test]
fn decompression_bombs_are_refused_on_the_host() {
    need("gzip");
    let t = tempfile::tempdir().unwrap();
    let root = store_with_busybox(t.path());
    let write = |name: &str, bytes: &[u8]| {
        let p = t.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        eprintln!("{name}: {} bytes", bytes.len());
        p.to_str().unwrap().to_owned()
    };
    let minute = Duration::from_secs(60);

    // `hull import` of a rootfs: 1 TiB of zeros in 32 MiB of zstd, 16 GiB
    // in 16 MiB of gzip; the tar header claims 1 TiB of file data.
    let zst = write(
        "tib.tar.zst",
        &zstd_bomb(&file_header("zeros", 1 << 40), 1 << 40),
    );
    let limit_msg = "inflates to more than 67108864 bytes";
    refused(
        &root,
        &[SMALL_LIMIT],
        &["import", &zst, "bomb:zst"],
        limit_msg,
        minute,
    );
    let gz = write(
        "16g.tar.gz",
        &gzip_bomb(&file_header("zeros", 1 << 40), 16 << 30),
    );
    refused(
        &root,
        &[SMALL_LIMIT],
        &["import", &gz, "bomb:gz"],
        limit_msg,
        minute,
    );

    // `hull load` of a gzip-compressed archive, with the default limit
    // (2 GiB here): its temporary copy stops there and is removed.
    let archive = write(
        "archive.tar.gz",
        &gzip_bomb(&file_header("manifest.json", 1 << 40), 3 << 30),
    );
    refused(
        &root,
        &[],
        &["load", "-i", &archive],
        "inflates to more than 2147483648 bytes (",
        minute,
    );

    // `hull load` of a docker-archive whose compressed layer is a bomb:
    // refused while computing its diff ID.
    let da = t.path().join("da");
    std::fs::create_dir_all(&da).unwrap();
    let layer = zstd_bomb(&file_header("zeros", 1 << 40), 64 << 30);
    std::fs::write(da.join("layer.tar.zst"), &layer).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha256(b"whatever")]},
    });
    std::fs::write(da.join("config.json"), config.to_string()).unwrap();
    let manifest = serde_json::json!([{
        "Config": "config.json", "RepoTags": ["bomb:da"], "Layers": ["layer.tar.zst"],
    }]);
    std::fs::write(da.join("manifest.json"), manifest.to_string()).unwrap();
    let da_tar = t.path().join("da.tar");
    tar_dir(&da, &da_tar);
    refused(
        &root,
        &[SMALL_LIMIT],
        &["load", "-i", da_tar.to_str().unwrap()],
        "layer layer.tar.zst inflates to more than 67108864 bytes",
        minute,
    );

    // An OCI archive with a bomb layer and right digests loads, as in
    // Docker (nothing is decompressed); what decompresses it on the host
    // refuses it: `save` as docker-archive (no output file is left) and
    // the container mode's unpack (no lower directory is left).
    let layout = layout_with_layer(
        &t.path().join("oci"),
        &gzip_bomb(&file_header("zeros", 1 << 40), 1 << 30),
        &sha256(b"unknown"),
        "bomb:oci",
    );
    let oci_tar = t.path().join("oci.tar");
    tar_dir(&layout.dir, &oci_tar);
    hull_ok(&root, &["load", "-i", oci_tar.to_str().unwrap()]);
    let out_dir = t.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let saved = out_dir.join("saved.tar");
    refused(
        &root,
        &[SMALL_LIMIT],
        &["save", "-o", saved.to_str().unwrap(), "bomb:oci"],
        limit_msg,
        minute,
    );
    assert_eq!(names(&out_dir), Vec::<String>::new());
    refused(
        &root,
        &[SMALL_LIMIT],
        &[
            "run",
            "--rm",
            "--isolation",
            "container",
            "bomb:oci",
            "/bin/sh",
        ],
        "inflates to more than 67108864 bytes of tar",
        minute,
    );
    let lower: Vec<String> = names(&root.join("oci/lower"))
        .into_iter()
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert_eq!(lower, Vec::<String>::new());
}

/// A member of [`sparse_tar`]: bytes, or that many zeros left as a hole.
enum Member<'a> {
    Bytes(&'a [u8]),
    Zeros(u64),
}

/// Writes a tar of `members` at `path`; zero members are holes in a
/// sparse file, so a 300 MB document costs no disk.
fn sparse_tar(path: &Path, members: &[(&str, Member<'_>)]) {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::create(path).unwrap();
    for (name, m) in members {
        let size = match m {
            Member::Bytes(b) => b.len() as u64,
            Member::Zeros(n) => *n,
        };
        f.write_all(&file_header(name, size)).unwrap();
        match m {
            Member::Bytes(b) => f.write_all(b).unwrap(),
            Member::Zeros(n) => {
                f.seek(SeekFrom::Current(*n as i64)).unwrap();
            }
        }
        f.seek(SeekFrom::Current(((512 - size % 512) % 512) as i64))
            .unwrap();
    }
    f.write_all(&[0u8; 1024]).unwrap();
}

const HUGE: u64 = 300 << 20;
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

#[test]
fn documents_of_hundreds_of_mb_are_refused_before_parsing() {
    let t = tempfile::tempdir().unwrap();
    let root = store_with_busybox(t.path());
    let second = Duration::from_secs(10);
    let load = |name: &str, members: &[(&str, Member<'_>)], needle: &str| {
        let p = t.path().join(name);
        sparse_tar(&p, members);
        refused(
            &root,
            &[],
            &["load", "-i", p.to_str().unwrap()],
            needle,
            second,
        );
    };
    let big = format!("is {HUGE} bytes, larger than the 67108864 bytes a document may have");
    // index.json and manifest.json themselves.
    load(
        "index.tar",
        &[
            ("oci-layout", Member::Bytes(OCI_LAYOUT)),
            ("index.json", Member::Zeros(HUGE)),
        ],
        &format!("index.json in the archive {big}"),
    );
    load(
        "docker.tar",
        &[("manifest.json", Member::Zeros(HUGE))],
        &format!("manifest.json in the archive {big}"),
    );
    // A manifest blob named by index.json.
    let fake = format!("sha256:{}", "ab".repeat(32));
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": fake, "size": HUGE,
    }]})
    .to_string();
    let blob = format!("blobs/sha256/{}", &fake[7..]);
    load(
        "manifest.tar",
        &[
            ("oci-layout", Member::Bytes(OCI_LAYOUT)),
            ("index.json", Member::Bytes(index.as_bytes())),
            (&blob, Member::Zeros(HUGE)),
        ],
        &format!("{blob} in the archive {big}"),
    );
    // A config announced at 300 MB by its manifest: refused from the
    // descriptor, before a byte is copied.
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": fake, "size": HUGE},
        "layers": [],
    })
    .to_string();
    let md = sha256(manifest.as_bytes());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": md, "size": manifest.len(),
    }]})
    .to_string();
    let mblob = format!("blobs/sha256/{}", &md[7..]);
    load(
        "config.tar",
        &[
            ("oci-layout", Member::Bytes(OCI_LAYOUT)),
            ("index.json", Member::Bytes(index.as_bytes())),
            (&mblob, Member::Bytes(manifest.as_bytes())),
            (&blob, Member::Zeros(HUGE)),
        ],
        &format!("{blob} in the archive {big}"),
    );

    // Pull: a registry serving a 200 MB manifest (hull reads 4 MiB + 1
    // byte of it), and a manifest announcing a 300 MB config (refused
    // before it is requested).
    let mock = common_images::mock::Mock::start();
    {
        let mut s = mock.state.lock().unwrap();
        let mt = "application/vnd.oci.image.manifest.v1+json".to_string();
        s.manifests
            .insert("huge:v1".into(), (mt.clone(), vec![b' '; 200 << 20]));
        s.manifests
            .insert("config:v1".into(), (mt, manifest.clone().into_bytes()));
    }
    let pull = |r: &str, needle: &str| {
        refused(
            &root,
            &[],
            &["pull", &format!("{}/{r}", mock.addr)],
            needle,
            second,
        );
    };
    pull("huge:v1", "is larger than 4 MiB");
    pull(
        "config:v1",
        &format!("image config {fake} is {HUGE} bytes, larger than 4 MiB"),
    );
    let asked: Vec<String> = mock.state.lock().unwrap().log.clone();
    assert!(!asked.iter().any(|l| l.contains(&fake)), "{asked:?}");
}

/// Flips the last byte of `path` (same size, another digest).
fn flip_last_byte(path: &Path) {
    let mut b = std::fs::read(path).unwrap();
    let n = b.len();
    b[n - 1] ^= 0x01;
    std::fs::write(path, b).unwrap();
}

#[test]
fn digest_mismatches_are_refused_at_every_level() {
    let t = tempfile::tempdir().unwrap();
    let root = store_with_busybox(t.path());
    let minute = Duration::from_secs(60);
    // index.json -> index blob -> manifest -> config and layer.
    let base = t.path().join("base");
    let mut b = LayoutBuilder::new(&base);
    let layer = b.layer(&[("hello", Some(b"hi\n".as_slice()))]);
    let m = b.manifest(std::slice::from_ref(&layer), "amd64", &["/bin/sh"]);
    let md = m["digest"].as_str().unwrap().to_owned();
    let i = b.index(vec![m]);
    let id = i["digest"].as_str().unwrap().to_owned();
    b.tag(i, "v1");
    let blob = |dir: &Path, d: &str| dir.join("blobs/sha256").join(&d[7..]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(&base, &md)).unwrap()).unwrap();
    let cd = manifest["config"]["digest"].as_str().unwrap().to_owned();
    let levels = [
        ("index", &id),
        ("manifest", &md),
        ("config", &cd),
        ("layer", &layer.digest),
    ];

    // `hull load`: the archive with one blob changed, for each level.
    for (level, d) in levels {
        let dir = t.path().join(level);
        common_images::run_ok(Command::new("cp").arg("-a").arg(&base).arg(&dir));
        flip_last_byte(&blob(&dir, d));
        let tar = t.path().join(format!("{level}.tar"));
        tar_dir(&dir, &tar);
        refused(
            &root,
            &[],
            &["load", "-i", tar.to_str().unwrap()],
            "digest mismatch",
            minute,
        );
    }

    // `hull pull` from a registry serving one changed document or blob
    // (the index by digest, since a tag names whatever the registry
    // serves).
    let mock = common_images::mock::Mock::start();
    mock.serve_layout(&base, "v1", "app");
    let original = mock.state.lock().unwrap().blobs.clone();
    for (_level, d) in levels {
        {
            let mut s = mock.state.lock().unwrap();
            s.blobs = original.clone();
            let mut changed = original[d.as_str()].clone();
            let n = changed.len();
            changed[n - 1] ^= 0x01;
            for v in s.manifests.values_mut() {
                if v.1 == original[d.as_str()] {
                    v.1 = changed.clone();
                }
            }
            s.blobs.insert(d.clone(), changed);
        }
        let r = format!("{}/app@{id}", mock.addr);
        refused(&root, &[], &["pull", &r], "digest mismatch", minute);
        // Put the documents back for the next level.
        mock.serve_layout(&base, "v1", "app");
    }

    // The same from a real registry (Debian's docker-registry, seeded by
    // skopeo) whose stored blobs are damaged after the push: it checks
    // manifests it serves by digest itself (HTTP 500), and serves config
    // and layer blobs as they are, which hull refuses.
    need("skopeo");
    let reg = common_images::Registry::start(None);
    reg.seed(&base, "v1", "app", None);
    for (level, d) in levels {
        let stored = reg.blob_path(d);
        flip_last_byte(&stored);
        let r = format!("{}/app@{id}", reg.addr);
        let needle = match level {
            "index" | "manifest" => "registry answered HTTP 500",
            _ => "digest mismatch",
        };
        refused(&root, &[], &["pull", &r], needle, minute);
        flip_last_byte(&stored);
    }
    // Untouched, the same pulls work: the refusals were the changes'.
    hull_ok(&root, &["pull", &format!("{}/app@{id}", mock.addr)]);
    hull_ok(&root, &["pull", &format!("{}/app@{id}", reg.addr)]);
}

/// Writes a plain tar layer of `entries` (name, is a directory; empty
/// files otherwise) at `path`, with GNU long names where needed.
fn entries_layer(path: &Path, entries: impl IntoIterator<Item = (String, bool)>) {
    let f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut t = tar::Builder::new(f);
    for (name, dir) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(if dir { 0o755 } else { 0o644 });
        h.set_entry_type(if dir {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        t.append_data(&mut h, &name, std::io::empty()).unwrap();
    }
    t.into_inner().unwrap().flush().unwrap();
}

/// `n` empty files in directories of 1000 (`d0/f0` ...).
fn empty_files(n: u64) -> impl Iterator<Item = (String, bool)> {
    (0..n).flat_map(|i| {
        let dir = (i % 1000 == 0).then(|| (format!("d{}", i / 1000), true));
        dir.into_iter()
            .chain(std::iter::once((format!("d{}/f{i}", i / 1000), false)))
    })
}

/// Long names (255 bytes), deep nesting (1500 levels, a 3000-byte path)
/// and 100k empty files: what Docker accepts.
fn odd_but_valid_entries() -> impl Iterator<Item = (String, bool)> {
    empty_files(100_000).chain([
        ("n".repeat(255), false),
        ("d/".repeat(1500) + "leaf", false),
    ])
}

#[test]
fn many_files_long_names_and_deep_nesting_import_on_the_host() {
    let t = tempfile::tempdir().unwrap();
    let root = store_with_busybox(t.path());
    let minute = Duration::from_secs(60);
    // Accepted, as Docker accepts them (the guest or the container-mode
    // unpack decides what a filesystem can hold).
    let odd = t.path().join("odd.tar");
    entries_layer(&odd, odd_but_valid_entries());
    let (out, took) = hull_with(&root, &[], &["import", odd.to_str().unwrap(), "odd:1"]);
    eprintln!("100k empty files imported in {took:?}");
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(took < 2 * minute, "{took:?}");

    // A PAX record of 2 MiB, and a GNU long name claiming 1 TiB inside
    // a zstd stream: refused from their headers, never read into memory.
    let mut pax = tar::Header::new_ustar();
    pax.set_path("pax").unwrap();
    pax.set_size(2 << 20);
    pax.set_entry_type(tar::EntryType::XHeader);
    pax.set_cksum();
    let mut bytes = pax.as_bytes().to_vec();
    bytes.resize(512 + (2 << 20), b'a');
    let pax_tar = t.path().join("pax.tar");
    std::fs::write(&pax_tar, &bytes).unwrap();
    let meta = "long-name or PAX record of";
    refused(
        &root,
        &[],
        &["import", pax_tar.to_str().unwrap(), "pax:1"],
        meta,
        minute,
    );
    let mut long = tar::Header::new_gnu();
    long.set_path("././@LongLink").unwrap();
    long.set_size(1 << 40);
    long.set_entry_type(tar::EntryType::GNULongName);
    long.set_cksum();
    let long_zst = t.path().join("longname.tar.zst");
    std::fs::write(&long_zst, zstd_bomb(long.as_bytes(), 16 << 30)).unwrap();
    refused(
        &root,
        &[],
        &["import", long_zst.to_str().unwrap(), "long:1"],
        meta,
        minute,
    );
}

/// A one-layer image: the busybox userland plus `extra` entries.
fn busybox_plus(
    work: &Path,
    name: &str,
    extra: impl IntoIterator<Item = (String, bool)>,
) -> PathBuf {
    let rootfs = work.join(format!("{name}-rootfs"));
    busybox_rootfs(&rootfs);
    let path = work.join(format!("{name}.tar"));
    let f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut t = tar::Builder::new(f);
    t.follow_symlinks(false);
    t.append_dir_all(".", &rootfs).unwrap();
    for (entry, dir) in extra {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(if dir { 0o755 } else { 0o644 });
        h.set_entry_type(if dir {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        t.append_data(&mut h, &entry, std::io::empty()).unwrap();
    }
    t.into_inner().unwrap().flush().unwrap();
    path
}

/// Long form: on the PVM development host (guest kernel emulated) this
/// run took over 30 minutes under load and was not seen to finish; the
/// image was prepared by the helper VM in ~2 min and a manual run printed
/// the 1000 files of `/d0` (docs/threat-model.md).
#[test]
#[ignore = "long: a 100k-file, 1500-level image run in a VM, tens of minutes on PVM (HULL_TEST_LONG=1)"]
fn many_files_long_names_and_deep_nesting_run_in_the_vm() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let work = tempfile::tempdir().unwrap();
    let layer = busybox_plus(work.path(), "odd", odd_but_valid_entries());
    import(root, &layer, "odd:vm");
    let deep = "/".to_string() + &"d/".repeat(1500) + "leaf";
    let start = Instant::now();
    let out = hull(root)
        .args(["run", "--rm", "odd:vm", "/bin/sh", "-c"])
        .arg(format!(
            "ls /d0 | wc -l; ls /d99 | wc -l; ls -d /{} | wc -c; test -f {deep} && echo deep",
            "n".repeat(255)
        ))
        .output()
        .unwrap();
    eprintln!("100k-file image prepared and run in {:?}", start.elapsed());
    let (stdout, stderr) = text(&out);
    let lines: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(lines, ["1000", "1000", "257", "deep"], "stderr: {stderr}");
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
}

/// Long form (HULL_TEST_LONG=1): 3 million empty files, past the 2^21
/// entries an image may have: the helper VM refuses the image with one
/// line and nothing is cached.
#[test]
#[ignore = "long: a 1.5 GB tar of 3 million entries through a helper VM (HULL_TEST_LONG=1)"]
fn millions_of_empty_files_are_refused_in_the_vm() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let work = tempfile::tempdir().unwrap();
    let layer = busybox_plus(work.path(), "millions", empty_files(3_000_000));
    let zst = work.path().join("millions.tar.zst");
    let out = Command::new("zstd")
        .args(["-q", "--rm", "-o"])
        .arg(&zst)
        .arg(&layer)
        .output()
        .expect("zstd (scripts/apt-packages)");
    assert!(out.status.success(), "{:?}", text(&out));
    import(root, &zst, "millions:vm");
    let start = Instant::now();
    let out = hull(root)
        .args(["run", "--rm", "millions:vm", "/bin/true"])
        .output()
        .unwrap();
    eprintln!("3M-file image refused after {:?}", start.elapsed());
    assert_one_line_error(&out, "more than 2097152 entries in the image");
    assert_no_image_cached(root);
}

/// A busybox image whose set-up paths are symlinks out of the root: the
/// volume target `/data -> /run/hull/volumes` (a directory of the guest's
/// own, where the agent stages volume disks), `/etc/hostname` and
/// `/etc/resolv.conf` to paths above the root. The agent must resolve
/// them inside the root (as a chroot would): the volume lands at the
/// root's own `/run/hull/volumes` (so the container sees it at `/data`),
/// the files are replaced by hull's, and the guest's own tree (seen from
/// the container through `/proc/1/root`, the agent's root) is untouched.
#[test]
fn setup_mounts_and_files_stay_inside_the_container_root() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    busybox_rootfs(&rootfs);
    let link = |target: &str, at: &str| {
        let at = rootfs.join(at);
        let _ = std::fs::remove_dir(&at);
        let _ = std::fs::remove_file(&at);
        std::os::unix::fs::symlink(target, at).unwrap();
    };
    link("/run/hull/volumes", "data");
    link("/../../../../escaped-hostname", "etc/hostname");
    link("../../../../../escaped-resolv", "etc/resolv.conf");
    common::import_rootfs(root, &rootfs, "symlinked:1", &[]);
    let script = "echo in-vol > /data/mark && cat /data/mark; \
                  echo guest-volumes: $(ls /proc/1/root/run/hull/volumes); \
                  ls /proc/1/root/escaped-hostname /proc/1/root/escaped-resolv >/dev/null 2>&1 \
                  || echo guest-root-clean; \
                  cat /etc/hostname; grep -c nameserver /etc/resolv.conf";
    let mut cmd = hull(root);
    cmd.args([
        "run",
        "--rm",
        "--hostname",
        "inside",
        "-v",
        "symvol:/data",
        "symlinked:1",
        "sh",
        "-c",
        script,
    ]);
    let out = common::run_limited(cmd, Duration::from_secs(600));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "in-vol", "{stdout}");
    // The guest's staging directory holds only its staging mount point
    // (`0`), not the volume's files.
    assert_eq!(lines[1], "guest-volumes: 0", "{stdout}");
    assert_eq!(lines[2], "guest-root-clean", "{stdout}");
    assert_eq!(lines[3], "inside", "{stdout}");
    assert_ne!(lines[4], "0", "no nameserver: {stdout}");
    // The volume itself got the write (it was mounted at the root's path).
    let mut cmd = hull(root);
    cmd.args([
        "run",
        "--rm",
        "-v",
        "symvol:/v",
        "symlinked:1",
        "cat",
        "/v/mark",
    ]);
    let out = common::run_limited(cmd, Duration::from_secs(600));
    assert_eq!(text(&out).0, "in-vol\n", "{:?}", text(&out));
}
