//! `hull save` / `hull load` against real peers: skopeo (docker-archive and
//! oci-archive, both directions) and podman; plus broken archives.

mod common_images;

use std::fs;
use std::path::Path;
use std::process::Command;

use common_images::*;

/// A layout with the multi-layer test image tagged `v1`.
fn test_layout(dir: &Path) -> (std::path::PathBuf, serde_json::Value, Vec<BuiltLayer>) {
    let mut b = LayoutBuilder::new(&dir.join("layout"));
    let (m, layers) = multilayer(&b, "amd64");
    b.tag(m.clone(), "v1");
    (b.dir.clone(), m, layers)
}

#[test]
fn loads_skopeo_docker_archive_and_oci_archive() {
    need("skopeo");
    let t = tempfile::tempdir().unwrap();
    let (layout, m, layers) = test_layout(t.path());
    let src = format!("oci:{}:v1", layout.display());

    // docker-archive as skopeo writes it (uncompressed layers, classic form).
    let da = t.path().join("skopeo-docker.tar");
    run_ok(
        Command::new("skopeo")
            .args(["copy", &src])
            .arg(format!("docker-archive:{}:example.com/app:1", da.display())),
    );
    let root = t.path().join("root");
    let out = hull_ok(&root, &["load", "-i", da.to_str().unwrap()]);
    assert_eq!(out.trim(), "Loaded image: example.com/app:1");
    let i = inspect(&root, "example.com/app:1");
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
    assert_eq!(i["RootFS"]["Layers"], serde_json::json!(diff_ids));
    assert_eq!(
        i["Config"]["Cmd"],
        serde_json::json!(["/bin/busybox", "sh"])
    );

    // oci-archive keeps the manifest and its digest as they were.
    let oa = t.path().join("skopeo-oci.tar");
    run_ok(
        Command::new("skopeo")
            .args(["copy", &src])
            .arg(format!("oci-archive:{}:example.com/app:2", oa.display())),
    );
    let out = hull_ok(&root, &["load", "-i", oa.to_str().unwrap()]);
    assert_eq!(out.trim(), "Loaded image: example.com/app:2");
    let i = inspect(&root, "example.com/app:2");
    assert_eq!(i["Digest"], m["digest"]);
    let want: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(layer_digests(&i), want);
    // Both are the same image: same config, hence same ID.
    assert_eq!(i["Id"], inspect(&root, "example.com/app:1")["Id"]);
}

#[test]
fn saved_archives_are_read_by_skopeo_and_round_trip() {
    need("skopeo");
    let t = tempfile::tempdir().unwrap();
    let (layout, _, layers) = test_layout(t.path());
    let root = t.path().join("root");
    let oa = t.path().join("in.tar");
    run_ok(
        Command::new("skopeo")
            .args(["copy"])
            .arg(format!("oci:{}:v1", layout.display()))
            .arg(format!("oci-archive:{}:app:1", oa.display())),
    );
    hull_ok(&root, &["load", "-i", oa.to_str().unwrap()]);
    let id = inspect(&root, "app:1")["Id"].clone();

    // docker-archive: skopeo sees the uncompressed layers (= diff IDs).
    let da = t.path().join("saved-docker.tar");
    hull_ok(&root, &["save", "-o", da.to_str().unwrap(), "app:1"]);
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
    assert_eq!(
        skopeo_layers(&format!("docker-archive:{}", da.display())),
        diff_ids
    );
    let manifest = run_ok(
        Command::new("tar")
            .arg("-xOf")
            .arg(&da)
            .arg("manifest.json"),
    );
    assert!(manifest.contains(r#""RepoTags":["app:1"]"#), "{manifest}");

    // oci-archive: skopeo sees the stored (gzip) layers.
    let oa2 = t.path().join("saved-oci.tar");
    hull_ok(
        &root,
        &[
            "save",
            "--format",
            "oci-archive",
            "-o",
            oa2.to_str().unwrap(),
            "app:1",
        ],
    );
    let digests: Vec<String> = layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(
        skopeo_layers(&format!("oci-archive:{}", oa2.display())),
        digests
    );

    // Both load back into a fresh store as the same image.
    for (f, name) in [(&da, "app:1"), (&oa2, "app:1")] {
        let fresh = tempfile::tempdir().unwrap();
        let out = hull_ok(fresh.path(), &["load", "-i", f.to_str().unwrap()]);
        assert_eq!(out.trim(), format!("Loaded image: {name}"));
        assert_eq!(inspect(fresh.path(), name)["Id"], id);
    }

    // Streams: `hull save IMG | hull load`.
    let fresh = tempfile::tempdir().unwrap();
    let pipe = format!(
        "{hull} --root {a} save app:1 | {hull} --root {b} load",
        hull = env!("CARGO_BIN_EXE_hull"),
        a = root.display(),
        b = fresh.path().display()
    );
    let out = run_ok(Command::new("sh").args(["-c", &pipe]));
    assert_eq!(out.trim(), "Loaded image: app:1");
    assert_eq!(inspect(fresh.path(), "app:1")["Id"], id);

    // skopeo copies our docker-archive back into an OCI layout.
    run_ok(
        Command::new("skopeo")
            .arg("copy")
            .arg(format!("docker-archive:{}", da.display()))
            .arg(format!("oci:{}:back", t.path().join("back").display())),
    );
    assert_eq!(
        skopeo_layers(&format!("oci:{}:back", t.path().join("back").display())).len(),
        3
    );
}

#[test]
fn loads_docker25_layout_form() {
    // Docker 25+ `docker save`: an OCI layout (image name in the containerd
    // annotation, ref.name just the tag) plus a manifest.json.
    need("skopeo");
    let t = tempfile::tempdir().unwrap();
    let (layout, m, _) = test_layout(t.path());
    let idx = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": m["digest"], "size": m["size"],
        "annotations": {"io.containerd.image.name": "docker.io/library/app:7", "org.opencontainers.image.ref.name": "7"},
    }]});
    fs::write(layout.join("index.json"), idx.to_string()).unwrap();
    fs::write(layout.join("manifest.json"), "[]").unwrap();
    let f = t.path().join("d25.tar");
    tar_dir(&layout, &f);
    let root = t.path().join("root");
    let out = hull_ok(&root, &["load", "-i", f.to_str().unwrap()]);
    assert_eq!(out.trim(), "Loaded image: app:7");
    assert_eq!(inspect(&root, "app:7")["Digest"], m["digest"]);
    // gzip-compressed archives load too.
    run_ok(Command::new("gzip").arg(&f));
    let fresh = t.path().join("fresh");
    hull_ok(&fresh, &["load", "-i", &format!("{}.gz", f.display())]);
    assert_eq!(inspect(&fresh, "app:7")["Digest"], m["digest"]);
}

#[test]
fn podman_loads_our_save_and_we_load_podmans() {
    need("podman");
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    hull_ok(
        &root,
        &[
            "import",
            busybox_tar(t.path()).to_str().unwrap(),
            "localhost/bb:1",
        ],
    );
    let ours = inspect(&root, "localhost/bb:1");
    let id = ours["Id"].as_str().unwrap().to_owned();
    let da = t.path().join("bb.tar");
    hull_ok(
        &root,
        &["save", "-o", da.to_str().unwrap(), "localhost/bb:1"],
    );

    // A private podman store so the test touches nothing of the machine's.
    let pr = t.path().join("podman");
    let podman = |args: &[&str]| {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(pr.join("root"))
            .arg("--runroot")
            .arg(pr.join("run"));
        c.args(["--storage-driver", "vfs"]).args(args);
        c
    };
    let out = run_ok(&mut podman(&["load", "-i", da.to_str().unwrap()]));
    assert!(out.contains("localhost/bb:1"), "{out}");
    let listed = run_ok(&mut podman(&[
        "images",
        "--no-trunc",
        "--format",
        "{{.ID}}",
    ]));
    assert!(listed.contains(&id[7..]), "{listed} vs {id}");

    for format in ["docker-archive", "oci-archive"] {
        let f = t.path().join(format!("podman-{format}.tar"));
        run_ok(&mut podman(&[
            "save",
            "--format",
            format,
            "-o",
            f.to_str().unwrap(),
            "localhost/bb:1",
        ]));
        let fresh = tempfile::tempdir().unwrap();
        hull_ok(fresh.path(), &["load", "-i", f.to_str().unwrap()]);
        let rows = names(fresh.path());
        let (name, _) = rows.iter().next().unwrap();
        // podman may re-serialize the config (new bytes, new ID): compare content.
        let got = inspect(fresh.path(), name);
        assert_eq!(got["RootFS"], ours["RootFS"], "{format}");
        assert_eq!(got["Config"], ours["Config"], "{format}");
    }
}

/// Writes an OCI archive of `layout` after letting `edit` break it.
fn broken_archive(t: &Path, name: &str, edit: impl FnOnce(&Path)) -> String {
    let (layout, _, _) = test_layout(&t.join(name));
    edit(&layout);
    let out = t.join(format!("{name}.tar"));
    tar_dir(&layout, &out);
    out.to_str().unwrap().to_owned()
}

#[test]
fn broken_archives_fail_cleanly() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    hull_ok(
        &root,
        &["import", busybox_tar(t.path()).to_str().unwrap(), "busybox"],
    );
    let before = snapshot(&root);
    let check = |file: &str, want: &str| {
        let e = hull_err(&root, &["load", "-i", file]);
        assert!(e.contains(want), "{file}: {e}");
        assert_eq!(snapshot(&root), before, "{file} changed the store");
    };

    // Not an image: a rootfs tar, and not a tar at all.
    check(
        busybox_tar(&t.path().join("x")).to_str().unwrap(),
        "not an image archive",
    );
    let junk = t.path().join("junk");
    fs::write(&junk, vec![7u8; 4096]).unwrap();
    check(junk.to_str().unwrap(), "not a tar archive");

    // The manifest names a blob the archive lacks (the top layer).
    let layer_of = |l: &Path| -> std::path::PathBuf {
        let idx: serde_json::Value =
            serde_json::from_slice(&fs::read(l.join("index.json")).unwrap()).unwrap();
        let md = idx["manifests"][0]["digest"].as_str().unwrap()[7..].to_owned();
        let m: serde_json::Value =
            serde_json::from_slice(&fs::read(l.join("blobs/sha256").join(md)).unwrap()).unwrap();
        l.join("blobs/sha256")
            .join(&m["layers"][2]["digest"].as_str().unwrap()[7..])
    };
    let f = broken_archive(t.path(), "missing", |l| {
        fs::remove_file(layer_of(l)).unwrap()
    });
    check(&f, "archive has no blobs/sha256/");

    // A layer whose bytes do not match its digest (same size).
    let f = broken_archive(t.path(), "mismatch", |l| {
        let p = layer_of(l);
        let mut b = fs::read(&p).unwrap();
        let n = b.len();
        b[n - 1] ^= 0xff;
        fs::write(&p, b).unwrap();
    });
    check(&f, "digest mismatch");

    // An unknown layer media type.
    let f = broken_archive(t.path(), "mediatype", |l| {
        let idx_path = l.join("index.json");
        let mut idx: serde_json::Value =
            serde_json::from_slice(&fs::read(&idx_path).unwrap()).unwrap();
        let md = idx["manifests"][0]["digest"].as_str().unwrap()[7..].to_owned();
        let mp = l.join("blobs/sha256").join(&md);
        let text = fs::read_to_string(&mp)
            .unwrap()
            .replacen("tar+gzip", "tar+lz4", 1);
        let nd = sha256(text.as_bytes());
        fs::write(l.join("blobs/sha256").join(&nd[7..]), &text).unwrap();
        idx["manifests"][0]["digest"] = nd.into();
        idx["manifests"][0]["size"] = text.len().into();
        fs::write(&idx_path, idx.to_string()).unwrap();
    });
    check(&f, "unknown media type");

    // A truncated archive.
    let good = broken_archive(t.path(), "trunc", |_| {});
    let bytes = fs::read(&good).unwrap();
    fs::write(&good, &bytes[..bytes.len() / 2]).unwrap();
    check(&good, "");

    // A docker-archive whose layer does not match the config's diff ID.
    need("skopeo");
    let (layout, _, _) = test_layout(&t.path().join("da"));
    let da = t.path().join("da.tar");
    run_ok(
        Command::new("skopeo")
            .arg("copy")
            .arg(format!("oci:{}:v1", layout.display()))
            .arg(format!("docker-archive:{}:bad:1", da.display())),
    );
    let ex = t.path().join("da-x");
    fs::create_dir_all(&ex).unwrap();
    run_ok(Command::new("tar").arg("-C").arg(&ex).arg("-xf").arg(&da));
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(ex.join("manifest.json")).unwrap()).unwrap();
    let l0 = ex.join(m[0]["Layers"][0].as_str().unwrap());
    let mut b = fs::read(&l0).unwrap();
    b[600] ^= 1;
    fs::write(&l0, b).unwrap();
    let bad = t.path().join("da-bad.tar");
    tar_dir(&ex, &bad);
    check(bad.to_str().unwrap(), "does not match the image config");
}
