//! Pull and push against a real registry (Debian's docker-registry, seeded
//! by skopeo), basic and bearer auth, and registry failures.

mod common_images;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common_images::mock::{Fault, Mock};
use common_images::*;

/// Layout with the multi-layer image tagged `v1`; returns (dir, manifest desc, layers).
fn layout(dir: &Path) -> (std::path::PathBuf, serde_json::Value, Vec<BuiltLayer>) {
    let mut b = LayoutBuilder::new(&dir.join("layout"));
    let (m, layers) = multilayer(&b, "amd64");
    b.tag(m.clone(), "v1");
    (b.dir.clone(), m, layers)
}

#[test]
fn pulls_multilayer_image_and_skips_present_blobs() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(None);
    let (l, m, layers) = layout(t.path());
    reg.seed(&l, "v1", "team/app:v1", None);
    let root = t.path().join("root");
    let r = format!("{}/team/app:v1", reg.addr);
    let out = hull_ok(&root, &["pull", &r]);
    assert!(out.contains("Downloaded newer image"), "{out}");
    assert!(
        out.contains(&format!("Digest: {}", m["digest"].as_str().unwrap())),
        "{out}"
    );
    let i = inspect(&root, &r);
    let want: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(
        layer_digests(&i),
        want,
        "layer blobs (with whiteouts) kept bit for bit"
    );
    assert_eq!(
        i["Config"]["Cmd"],
        serde_json::json!(["/bin/busybox", "sh"])
    );
    let before = snapshot(&root);
    let out = hull_ok(&root, &["pull", &r]);
    assert!(out.contains("Image is up to date"), "{out}");
    assert_eq!(snapshot(&root), before);
    // By digest: same image, recorded untagged only if not present already.
    let by_digest = format!("{}/team/app@{}", reg.addr, m["digest"].as_str().unwrap());
    hull_ok(&root, &["pull", &by_digest]);
    assert_eq!(inspect(&root, &by_digest)["Id"], i["Id"]);
}

#[test]
fn picks_the_platform_out_of_an_index() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(None);
    let mut b = LayoutBuilder::new(&t.path().join("layout"));
    let (amd, _) = multilayer(&b, "amd64");
    let (arm, _) = multilayer(&b, "arm64");
    let idx = b.index(vec![arm, amd]);
    b.tag(idx, "multi");
    reg.seed(&b.dir, "multi", "multi:1", None);
    let r = format!("{}/multi:1", reg.addr);
    let a = t.path().join("a");
    hull_ok(&a, &["pull", &r]);
    assert_eq!(inspect(&a, &r)["Architecture"], "amd64");
    let c = t.path().join("c");
    hull_ok(&c, &["pull", "--platform", "linux/arm64", &r]);
    assert_eq!(inspect(&c, &r)["Architecture"], "arm64");
    // The index digest finds the image too, and pulling by it works.
    let index_digest = inspect(&a, &r)["Digest"].as_str().unwrap().to_owned();
    let by_index = format!("{}/multi@{index_digest}", reg.addr);
    assert_eq!(inspect(&a, &by_index)["Architecture"], "amd64");
    let e2 = t.path().join("e");
    let out = hull_ok(&e2, &["pull", &by_index]);
    assert!(out.contains(&index_digest), "{out}");
    assert_eq!(inspect(&e2, &by_index)["Architecture"], "amd64");
    let e = hull_err(&c, &["pull", "--platform", "linux/s390x", &r]);
    assert!(e.contains("no image for platform linux/s390x"), "{e}");

    // The same index as a Docker manifest list of schema2 manifests.
    let reg2 = Registry::start(None);
    let list = format!("{}/list:1", reg2.addr);
    run_ok(
        Command::new("skopeo")
            .args([
                "copy",
                "-q",
                "--all",
                "--dest-tls-verify=false",
                "--format",
                "v2s2",
            ])
            .arg(format!("oci:{}:multi", b.dir.display()))
            .arg(format!("docker://{list}")),
    );
    let raw = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{list}")),
    );
    assert!(
        raw.contains("application/vnd.docker.distribution.manifest.list.v2+json"),
        "{raw}"
    );
    let d = t.path().join("d");
    let out = hull_ok(&d, &["pull", "--platform", "linux/arm64", &list]);
    assert!(
        out.contains(&sha256(raw.as_bytes())),
        "reports the list digest: {out}"
    );
    let i = inspect(&d, &list);
    assert_eq!(i["Architecture"], "arm64");
    assert_eq!(
        i["MediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
}

#[test]
fn pushes_and_skopeo_reads_it_back() {
    need("skopeo");
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(None);
    let root = t.path().join("root");
    hull_ok(
        &root,
        &["import", busybox_tar(t.path()).to_str().unwrap(), "busybox"],
    );
    let r = format!("{}/lib/busybox:1", reg.addr);
    hull_ok(&root, &["tag", "busybox", &r]);
    let out = hull_ok(&root, &["push", &r]);
    let local = inspect(&root, &r);
    assert!(out.contains(local["Digest"].as_str().unwrap()), "{out}");
    let sk = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("docker://{r}")),
    );
    let sk: serde_json::Value = serde_json::from_str(&sk).unwrap();
    assert_eq!(
        sk["Digest"], local["Digest"],
        "manifest pushed byte for byte"
    );
    // Second push: blobs exist, still fine.
    hull_ok(&root, &["push", &r]);
    // A fresh store pulls the same image.
    let fresh = t.path().join("fresh");
    hull_ok(&fresh, &["pull", &r]);
    assert_eq!(inspect(&fresh, &r)["Id"], local["Id"]);

    // Multi-layer image pulled from one repository, pushed to another.
    let (l, _, layers) = layout(t.path());
    reg.seed(&l, "v1", "src:v1", None);
    let src = format!("{}/src:v1", reg.addr);
    let dst = format!("{}/dst:v2", reg.addr);
    hull_ok(&root, &["pull", &src]);
    hull_ok(&root, &["tag", &src, &dst]);
    hull_ok(&root, &["push", &dst]);
    let want: Vec<String> = layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(skopeo_layers(&format!("docker://{dst}")), want);
}

#[test]
fn basic_auth_with_login() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(Some(("alice", "s3cret")));
    let (l, _, _) = layout(t.path());
    reg.seed(&l, "v1", "private:v1", Some("alice:s3cret"));
    let root = t.path().join("root");
    let r = format!("{}/private:v1", reg.addr);
    hull_ok(&root, &["images"]);
    let before = snapshot(&root);
    let e = hull_err(&root, &["pull", &r]);
    assert!(e.contains("401") && e.contains("hull login"), "{e}");
    assert_eq!(snapshot(&root), before);

    let e = hull_err(&root, &["login", "-u", "alice", "-p", "wrong", &reg.addr]);
    assert!(e.contains("401"), "{e}");
    assert!(!root.join("auth.json").exists());

    let mut login = Command::new(env!("CARGO_BIN_EXE_hull"))
        .arg("--root")
        .arg(&root)
        .args(["login", "-u", "alice", "--password-stdin", &reg.addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    login.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let o = login.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "Login Succeeded");
    let mode = fs::metadata(root.join("auth.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    hull_ok(&root, &["pull", &r]);
    let pushed = format!("{}/private:copy", reg.addr);
    hull_ok(&root, &["tag", &r, &pushed]);
    hull_ok(&root, &["push", &pushed]);
    assert!(hull_ok(&root, &["logout", &reg.addr]).contains("Removing"));
    let e = hull_err(&root, &["push", &pushed]);
    assert!(e.contains("401"), "{e}");
}

#[test]
fn bearer_token_challenge() {
    let t = tempfile::tempdir().unwrap();
    let mock = Mock::start();
    let (l, _, _) = layout(t.path());
    mock.serve_layout(&l, "v1", "app");
    mock.state.lock().unwrap().bearer = true;
    let root = t.path().join("root");
    let r = format!("{}/app:v1", mock.addr);
    hull_ok(&root, &["pull", &r]);
    assert_eq!(layer_digests(&inspect(&root, &r)).len(), 3);
    let log = mock.state.lock().unwrap().log.clone();
    assert!(
        log.iter()
            .any(|l| l.starts_with("GET /token?") && l.contains("scope=")),
        "{log:?}"
    );
}

#[test]
fn registry_failures_leave_store_unchanged() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(None);
    let mock = Mock::start();
    let (l, m, layers) = layout(t.path());
    mock.serve_layout(&l, "v1", "app");
    let root = t.path().join("root");
    hull_ok(
        &root,
        &["import", busybox_tar(t.path()).to_str().unwrap(), "busybox"],
    );
    let before = snapshot(&root);
    let r = format!("{}/app:v1", mock.addr);
    let fail = |args: &[&str], want: &str| {
        let e = hull_err(&root, args);
        assert!(e.contains(want), "{args:?}: {e}");
        assert_eq!(snapshot(&root), before, "{args:?} changed the store");
    };

    fail(
        &["pull", &format!("{}/nothing:here", reg.addr)],
        "not found (HTTP 404",
    );
    mock.fault("/manifests/", Fault::Status(500));
    fail(&["pull", &r], "HTTP 500: INJECTED injected failure");
    mock.clear_faults();
    let top = &layers[2].digest;
    mock.fault(top, Fault::Status(503));
    fail(&["pull", &r], "HTTP 503");
    mock.clear_faults();
    mock.fault(top, Fault::Truncate);
    fail(&["pull", &r], "");
    mock.clear_faults();
    mock.fault(top, Fault::Corrupt);
    fail(&["pull", &r], "digest mismatch");
    mock.clear_faults();
    // A registry serving another manifest than the pinned digest.
    {
        let mut s = mock.state.lock().unwrap();
        let good = s.manifests["app:v1"].clone();
        s.manifests
            .insert(format!("app@{}", layers[0].digest), good);
    }
    let wrong = format!("{}/app@{}", mock.addr, layers[0].digest);
    fail(&["pull", &wrong], "digest mismatch");
    // The manifest names a blob the registry lacks.
    let gone = mock
        .state
        .lock()
        .unwrap()
        .blobs
        .remove(&layers[1].digest)
        .unwrap();
    fail(
        &["pull", &r],
        &format!("blob {} not found (HTTP 404", layers[1].digest),
    );
    mock.state
        .lock()
        .unwrap()
        .blobs
        .insert(layers[1].digest.clone(), gone);
    // Unknown layer media type: refused before any download.
    {
        let b = LayoutBuilder::new(&t.path().join("odd"));
        let layer = b.layer(&[("x", Some(b"x"))]);
        let desc = b.manifest(&[layer], "amd64", &["x"]);
        let mp = b
            .dir
            .join("blobs/sha256")
            .join(&desc["digest"].as_str().unwrap()[7..]);
        let text = fs::read_to_string(mp)
            .unwrap()
            .replace("tar+gzip", "tar+lz4");
        let mut s = mock.state.lock().unwrap();
        s.manifests.insert(
            "odd:1".into(),
            (
                "application/vnd.oci.image.manifest.v1+json".into(),
                text.into_bytes(),
            ),
        );
        for e in fs::read_dir(b.dir.join("blobs/sha256")).unwrap().flatten() {
            s.blobs.insert(
                format!("sha256:{}", e.file_name().to_string_lossy()),
                fs::read(e.path()).unwrap(),
            );
        }
    }
    fail(
        &["pull", &format!("{}/odd:1", mock.addr)],
        "unknown media type \"application/vnd.oci.image.layer.v1.tar+lz4\"",
    );
    // Schema 1 manifests are refused by type.
    mock.state.lock().unwrap().manifests.insert(
        "old:1".into(),
        (
            "application/vnd.docker.distribution.manifest.v1+prettyjws".into(),
            br#"{"schemaVersion":1}"#.to_vec(),
        ),
    );
    fail(
        &["pull", &format!("{}/old:1", mock.addr)],
        "unknown media type",
    );
    // Nothing listening; and HTTPS by default for non-loopback hosts.
    fail(
        &["pull", &format!("127.0.0.1:{}/x", free_port())],
        "cannot reach http://127.0.0.1:",
    );
    fail(
        &["pull", "registry.invalid/x"],
        "cannot reach https://registry.invalid/v2/",
    );
    fail(
        &[
            "pull",
            "--insecure-registry",
            "registry.invalid",
            "registry.invalid/x",
        ],
        "cannot reach http://registry.invalid/v2/",
    );
    fail(&["pull", "bad@@ref"], "invalid reference format");
    let _ = m;
}

#[test]
fn interrupted_pull_leaves_nothing_visible_and_rerun_completes() {
    let t = tempfile::tempdir().unwrap();
    let mock = Mock::start();
    let (l, _, layers) = layout(t.path());
    mock.serve_layout(&l, "v1", "app");
    mock.fault(&layers[0].digest, Fault::Stall);
    let root = t.path().join("root");
    let r = format!("{}/app:v1", mock.addr);
    let mut child = Command::new(env!("CARGO_BIN_EXE_hull"))
        .arg("--root")
        .arg(&root)
        .args(["pull", &r])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the other layers are in and the stalled one is half-written.
    let start = Instant::now();
    loop {
        let blobs = fs::read_dir(root.join("images/blobs/sha256"))
            .map(|d| d.count())
            .unwrap_or(0);
        let tmp = fs::read_dir(root.join("images/.tmp"))
            .map(|d| d.count())
            .unwrap_or(0);
        if blobs >= 3 && tmp >= 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "pull did not progress"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        hull_ok(&root, &["images", "-q"]).trim().is_empty(),
        "no image visible"
    );
    // Every blob that is visible is complete and verified.
    for e in fs::read_dir(root.join("images/blobs/sha256"))
        .unwrap()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        assert_eq!(
            sha256(&fs::read(e.path()).unwrap()),
            format!("sha256:{name}")
        );
    }
    mock.clear_faults();
    let log_before = mock.state.lock().unwrap().log.len();
    hull_ok(&root, &["pull", &r]);
    assert_eq!(layer_digests(&inspect(&root, &r)).len(), 3);
    // The re-run fetched only the missing layer.
    let log = mock.state.lock().unwrap().log[log_before..].to_vec();
    let fetched: Vec<_> = log.iter().filter(|l| l.contains("/blobs/")).collect();
    assert_eq!(fetched.len(), 1, "{log:?}");
    // GC clears the stale temp file of the killed pull.
    hull_ok(&root, &["image", "prune"]);
    assert_eq!(fs::read_dir(root.join("images/.tmp")).unwrap().count(), 0);
}

#[test]
fn docker_schema2_and_zstd_images_keep_their_media_types() {
    need("skopeo");
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(None);
    let (l, _, layers) = layout(t.path());
    let src = format!("oci:{}:v1", l.display());
    let root = t.path().join("root");

    // Docker schema2, as skopeo converts it.
    let d2 = format!("{}/d2:1", reg.addr);
    run_ok(
        Command::new("skopeo")
            .args([
                "copy",
                "-q",
                "--dest-tls-verify=false",
                "--format",
                "v2s2",
                &src,
            ])
            .arg(format!("docker://{d2}")),
    );
    hull_ok(&root, &["pull", &d2]);
    let i = inspect(&root, &d2);
    assert_eq!(
        i["MediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        i["Layers"][0]["MediaType"],
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    let raw = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{d2}")),
    );
    assert_eq!(sha256(raw.as_bytes()), i["Digest"].as_str().unwrap());
    // Pushed back unchanged, and saved as a docker-archive skopeo reads.
    let copy = format!("{}/d2:copy", reg.addr);
    hull_ok(&root, &["tag", &d2, &copy]);
    hull_ok(&root, &["push", &copy]);
    let raw2 = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{copy}")),
    );
    assert_eq!(raw2, raw);
    let da = t.path().join("d2.tar");
    hull_ok(&root, &["save", "-o", da.to_str().unwrap(), &d2]);
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
    assert_eq!(
        skopeo_layers(&format!("docker-archive:{}", da.display())),
        diff_ids
    );

    // zstd layers (another registry: skopeo would reuse the gzip blobs).
    let reg2 = Registry::start(None);
    let z = format!("{}/z:1", reg2.addr);
    run_ok(
        Command::new("skopeo")
            .args([
                "copy",
                "-q",
                "--dest-tls-verify=false",
                "--dest-compress-format",
                "zstd",
                &src,
            ])
            .arg(format!("docker://{z}")),
    );
    hull_ok(&root, &["pull", &z]);
    let i = inspect(&root, &z);
    assert_eq!(
        i["Layers"][0]["MediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    let oa = t.path().join("z.tar");
    hull_ok(
        &root,
        &[
            "save",
            "--format",
            "oci-archive",
            "-o",
            oa.to_str().unwrap(),
            &z,
        ],
    );
    assert_eq!(
        skopeo_layers(&format!("oci-archive:{}", oa.display())),
        layer_digests(&i)
    );
    // docker-archive needs plain tars: hull decompresses the zstd layers.
    let zd = t.path().join("z-docker.tar");
    hull_ok(&root, &["save", "-o", zd.to_str().unwrap(), &z]);
    assert_eq!(
        skopeo_layers(&format!("docker-archive:{}", zd.display())),
        diff_ids
    );
}

#[test]
fn transient_failures_are_retried() {
    let t = tempfile::tempdir().unwrap();
    let mock = Mock::start();
    let (l, _, layers) = layout(t.path());
    mock.serve_layout(&l, "v1", "app");
    mock.fault("/manifests/", Fault::Flaky(503, 1));
    mock.fault(&layers[1].digest, Fault::TruncateTimes(2));
    let root = t.path().join("root");
    let r = format!("{}/app:v1", mock.addr);
    hull_ok(&root, &["pull", &r]);
    assert_eq!(layer_digests(&inspect(&root, &r)).len(), 3);
    let log = mock.state.lock().unwrap().log.clone();
    let count = |pat: &str| log.iter().filter(|l| l.contains(pat)).count();
    assert_eq!(count("/manifests/v1"), 2, "{log:?}");
    assert_eq!(count(&layers[1].digest), 3, "{log:?}");
}

#[test]
fn gc_waits_for_a_running_pull() {
    let t = tempfile::tempdir().unwrap();
    let mock = Mock::start();
    let (l, _, layers) = layout(t.path());
    mock.serve_layout(&l, "v1", "app");
    mock.fault(&layers[0].digest, Fault::Stall);
    let root = t.path().join("root");
    hull_ok(&root, &["images"]);
    let r = format!("{}/app:v1", mock.addr);
    let hull_cmd = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_hull"))
            .arg("--root")
            .arg(&root)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut pull = hull_cmd(&["pull", &r]);
    let start = Instant::now();
    while fs::read_dir(root.join("images/blobs/sha256"))
        .unwrap()
        .count()
        < 3
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "pull did not progress"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The fetched (unreferenced) blobs belong to the running pull: prune
    // must wait instead of deleting them.
    let mut prune = hull_cmd(&["image", "prune"]);
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        prune.try_wait().unwrap().is_none(),
        "prune did not wait for the pull"
    );
    assert!(
        fs::read_dir(root.join("images/blobs/sha256"))
            .unwrap()
            .count()
            >= 3
    );
    pull.kill().unwrap();
    pull.wait().unwrap();
    assert!(prune.wait().unwrap().success());
    // Once the pull is gone, its orphans are collected.
    assert_eq!(
        fs::read_dir(root.join("images/blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(fs::read_dir(root.join("images/.tmp")).unwrap().count(), 0);
}
