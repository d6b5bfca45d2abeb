//! The image store through the CLI: import, images, tag, rmi, inspect,
//! history, prune; the layout read by skopeo and umoci; bad input.

mod common_images;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common_images::*;

#[test]
fn import_busybox_then_list_inspect_history() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let tar = busybox_tar(t.path());
    let id = hull_ok(
        &root,
        &[
            "import",
            "--change",
            r#"CMD ["/bin/sh", "-c", "echo hi"]"#,
            "-c",
            "ENV GREETING=hello",
            "-c",
            "WORKDIR /tmp",
            tar.to_str().unwrap(),
            "busybox",
        ],
    );
    let id = id.trim();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");

    let table = hull_ok(&root, &["images"]);
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("REPOSITORY"));
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..3], ["busybox", "latest", &id[7..19]]);
    assert_eq!(hull_ok(&root, &["images", "-q"]).trim(), &id[7..19]);
    assert!(hull_ok(&root, &["images", "--digests"]).contains("sha256:"));

    let i = inspect(&root, "busybox");
    assert_eq!(i["Id"], id);
    assert_eq!(i["RepoTags"], serde_json::json!(["busybox:latest"]));
    assert_eq!(
        i["Config"]["Cmd"],
        serde_json::json!(["/bin/sh", "-c", "echo hi"])
    );
    assert_eq!(i["Config"]["Env"], serde_json::json!(["GREETING=hello"]));
    assert_eq!(i["Config"]["WorkingDir"], "/tmp");
    assert_eq!(i["Os"], "linux");
    let layer = &i["Layers"][0];
    // A plain tar is stored as given: its digest is the diff ID, and the
    // bytes on disk are the input file.
    assert_eq!(layer["Digest"], i["RootFS"]["Layers"][0]);
    assert_eq!(
        layer["Digest"].as_str().unwrap(),
        sha256(&fs::read(&tar).unwrap())
    );
    assert!(i["Size"].as_u64().unwrap() > layer["Size"].as_u64().unwrap());
    // By ID prefix and by full digest reference too.
    assert_eq!(inspect(&root, &id[7..15])["Id"], id);
    let by_digest = format!("busybox@{}", i["Digest"].as_str().unwrap());
    assert_eq!(inspect(&root, &by_digest)["Id"], id);

    let hist = hull_ok(&root, &["history", "busybox"]);
    assert!(
        hist.contains("hull import") && hist.contains(&id[7..19]),
        "{hist}"
    );
}

#[test]
fn gzip_rootfs_is_imported_as_gzip_layer() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let tar = busybox_tar(t.path());
    run_ok(Command::new("gzip").arg("-k").arg(&tar));
    let gz = format!("{}.gz", tar.display());
    hull_ok(&root, &["import", &gz, "bb:gz"]);
    let i = inspect(&root, "bb:gz");
    assert_eq!(
        i["Layers"][0]["MediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    // The diff ID is the digest of the uncompressed tar.
    assert_eq!(
        i["RootFS"]["Layers"][0].as_str().unwrap(),
        sha256(&fs::read(&tar).unwrap())
    );
}

#[test]
fn zstd_rootfs_is_imported_as_zstd_layer() {
    need("zstd");
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let tar = busybox_tar(t.path());
    let zst = t.path().join("rootfs.tar.zst");
    run_ok(Command::new("zstd").arg("-q").arg(&tar).arg("-o").arg(&zst));
    hull_ok(&root, &["import", zst.to_str().unwrap(), "bb:zst"]);
    let i = inspect(&root, "bb:zst");
    assert_eq!(
        i["Layers"][0]["MediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    assert_eq!(
        i["RootFS"]["Layers"][0].as_str().unwrap(),
        sha256(&fs::read(&tar).unwrap())
    );
}

#[test]
fn tag_rmi_and_prune() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let tar = busybox_tar(t.path());
    hull_ok(&root, &["import", tar.to_str().unwrap(), "busybox"]);
    hull_ok(&root, &["tag", "busybox", "localhost:5000/team/bb:v1"]);
    let n = names(&root);
    assert_eq!(n.len(), 2);
    assert_eq!(n["busybox:latest"], n["localhost:5000/team/bb:v1"]);
    let id = n["busybox:latest"].clone();

    // Filtering by repository, and by repository and tag.
    let only = hull_ok(
        &root,
        &["images", "--format", "json", "localhost:5000/team/bb"],
    );
    assert_eq!(only.lines().count(), 1);
    assert!(only.contains("localhost:5000/team/bb"), "{only}");
    assert_eq!(hull_ok(&root, &["images", "-q", "busybox:nope"]).trim(), "");
    assert_eq!(
        hull_ok(&root, &["images", "-q", "busybox:latest"]).trim(),
        id[..12].to_owned()
    );

    // By ID with two names: refused without -f, store unchanged.
    let before = snapshot(&root);
    let e = hull_err(&root, &["rmi", &id]);
    assert!(e.contains("-f"), "{e}");
    assert_eq!(snapshot(&root), before);

    // By name: only untags.
    let out = hull_ok(&root, &["rmi", "localhost:5000/team/bb:v1"]);
    assert_eq!(out.trim(), "Untagged: localhost:5000/team/bb:v1");
    assert_eq!(names(&root).len(), 1);

    // Re-importing under the same name leaves the first image dangling.
    run_ok(Command::new("sh").arg("-c").arg(format!(
        "mkdir -p {d}/x && echo 2 > {d}/x/two && tar -C {d}/x -cf {d}/two.tar .",
        d = t.path().display()
    )));
    hull_ok(
        &root,
        &[
            "import",
            t.path().join("two.tar").to_str().unwrap(),
            "busybox",
        ],
    );
    let n = names(&root);
    assert!(n.contains_key("<none>:<none>"), "{n:?}");
    assert_eq!(n["<none>:<none>"], id);

    let out = hull_ok(&root, &["image", "prune", "-f"]);
    assert!(
        out.contains("deleted: sha256:") && out.contains("Total reclaimed space"),
        "{out}"
    );
    let n = names(&root);
    assert_eq!(n.len(), 1);
    assert_ne!(n["busybox:latest"], id);
    // The busybox layer blob went with it: only the new image's 3 blobs remain.
    assert_eq!(
        fs::read_dir(root.join("images/blobs/sha256"))
            .unwrap()
            .count(),
        3
    );

    let out = hull_ok(&root, &["rmi", "busybox"]);
    assert!(
        out.contains("Untagged: busybox:latest") && out.contains("Deleted: sha256:"),
        "{out}"
    );
    assert_eq!(
        fs::read_dir(root.join("images/blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    assert!(hull_ok(&root, &["images", "-q"]).trim().is_empty());
}

#[test]
fn store_is_an_oci_layout_for_skopeo_and_umoci() {
    need("skopeo");
    need("umoci");
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let tar = busybox_tar(t.path());
    hull_ok(&root, &["import", tar.to_str().unwrap(), "busybox:1"]);
    let layout = root.join("images");
    let layers = skopeo_layers(&format!(
        "oci:{}:docker.io/library/busybox:1",
        layout.display()
    ));
    assert_eq!(layers, layer_digests(&inspect(&root, "busybox:1")));
    let ls = run_ok(Command::new("umoci").args(["ls", "--layout"]).arg(&layout));
    assert_eq!(ls.trim(), "docker.io/library/busybox:1");
    // umoci can unpack it: the rootfs holds busybox.
    let bundle = t.path().join("bundle");
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--rootless", "--image"])
            .arg(format!("{}:docker.io/library/busybox:1", layout.display()))
            .arg(&bundle),
    );
    assert!(bundle.join("rootfs/bin/busybox").is_file());
}

#[test]
fn bad_input_is_one_line_and_leaves_store_unchanged() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let tar = busybox_tar(t.path());
    hull_ok(&root, &["import", tar.to_str().unwrap(), "busybox"]);
    let before = snapshot(&root);

    let junk = t.path().join("junk.tar");
    fs::write(&junk, vec![b'z'; 10_000]).unwrap();
    let e = hull_err(&root, &["import", junk.to_str().unwrap(), "junk"]);
    assert!(e.contains("not a tar archive"), "{e}");
    let e = hull_err(&root, &["import", tar.to_str().unwrap(), "Bad:Name"]);
    assert!(e.contains("invalid reference format"), "{e}");
    let e = hull_err(
        &root,
        &[
            "import",
            "--change",
            "RUN rm -rf /",
            tar.to_str().unwrap(),
            "x",
        ],
    );
    assert!(e.contains("invalid --change"), "{e}");
    let e = hull_err(&root, &["image", "inspect", "nosuchimage"]);
    assert!(e.contains("No such image"), "{e}");
    let e = hull_err(&root, &["tag", "nosuchimage", "x"]);
    assert!(e.contains("No such image"), "{e}");
    let e = hull_err(&root, &["pull", "UPPER/case"]);
    assert!(e.contains("invalid reference format"), "{e}");
    let e = hull_err(&root, &["rmi", "nosuchimage"]);
    assert!(e.contains("No such image"), "{e}");
    assert_eq!(snapshot(&root), before);

    // A corrupted blob in the store is detected, not used.
    let i = inspect(&root, "busybox");
    let cfg = i["Id"].as_str().unwrap();
    let p = root.join("images/blobs/sha256").join(&cfg[7..]);
    let mut perm = fs::metadata(&p).unwrap().permissions();
    perm.set_mode(0o644);
    fs::set_permissions(&p, perm).unwrap();
    fs::write(&p, b"{}").unwrap();
    let e = hull_err(&root, &["image", "inspect", "busybox"]);
    assert!(e.contains("digest mismatch"), "{e}");
}

#[test]
fn concurrent_imports_all_land() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let tar = busybox_tar(t.path());
    let children: Vec<_> = (0..6)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_hull"))
                .arg("--root")
                .arg(&root)
                .args([
                    "import",
                    "-c",
                    &format!("ENV N={i}"),
                    tar.to_str().unwrap(),
                    &format!("bb:{i}"),
                ])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let n = names(&root);
    assert_eq!(n.len(), 6, "{n:?}");
    // Six configs, six manifests, one shared layer.
    assert_eq!(
        fs::read_dir(root.join("images/blobs/sha256"))
            .unwrap()
            .count(),
        13
    );
}
