//! Docker's management forms (`hull container ls|rm|inspect|prune`,
//! `hull image ls|rm`), `hull system df`, `hull system prune [-a]` and
//! `hull stats --no-stream`, on containers made by `hull create` (no VM).

mod common;

use std::path::Path;
use std::process::Command;

use common::{import_busybox, text};

/// `hull` on `root` with a snapshot store of its own: `system prune`
/// must not delete the snapshots other tests share.
fn hull(root: &Path) -> Command {
    let mut cmd = common::hull(root);
    cmd.env("HULL_SNAPSHOT_DIR", root.join("snapshots"));
    cmd
}

fn ok(root: &Path, args: &[&str]) -> String {
    let out = hull(root).args(args).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{args:?}: {stderr}");
    stdout
}

#[test]
fn management_forms_df_prune_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    import_busybox(root);
    let web = ok(
        root,
        &["container", "create", "--name", "web", "busybox:test"],
    );
    assert_eq!(web.trim().len(), 64);
    // `create -it` needs no terminal (`start -a` will).
    let out = hull(root)
        .args(["create", "-it", "--name", "db", "busybox:test"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));

    // The management forms are the same commands.
    // (Not the whole table: its CREATED column may tick between the two.)
    let first_line = |args: &[&str]| ok(root, args).lines().next().unwrap().to_string();
    assert_eq!(
        first_line(&["container", "ls", "-a"]),
        first_line(&["ps", "-a"])
    );
    let names = ["-a", "--format", "{{.ID}} {{.Names}} {{.Status}}"];
    assert_eq!(
        ok(root, &[&["container", "ls"][..], &names].concat()),
        ok(root, &[&["ps"][..], &names].concat())
    );
    assert_eq!(ok(root, &["container", "list", "-aq"]).lines().count(), 2);
    assert_eq!(
        ok(root, &["container", "ps", "-aq"]),
        ok(root, &["ps", "-aq"])
    );
    assert_eq!(
        ok(root, &["container", "inspect", "-f", "{{.Name}}", "web"]),
        "/web\n"
    );
    assert_eq!(
        ok(root, &["image", "ls", "-q"]),
        ok(root, &["images", "-q"])
    );
    ok(root, &["image", "tag", "busybox:test", "bb:two"]);
    assert_eq!(
        ok(
            root,
            &["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"]
        ),
        "busybox:test\nbb:two\n"
    );
    assert_eq!(ok(root, &["image", "rm", "bb:two"]), "Untagged: bb:two\n");
    assert!(ok(root, &["image", "history", "busybox:test"]).starts_with("IMAGE "));
    let out = hull(root)
        .args(["container", "run", "--nope", "busybox:test"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{:?}", text(&out));

    // stats: nothing running, so a header; a named stopped container reads 0.
    assert_eq!(
        ok(root, &["stats", "--no-stream"]),
        "CONTAINER ID   NAME      CPU %     MEM USAGE / LIMIT   MEM %     PIDS\n"
    );
    assert_eq!(
        ok(
            root,
            &[
                "stats",
                "--no-stream",
                "--format",
                "{{.Name}} {{.CPUPerc}} {{.MemUsage}}",
                "web"
            ]
        ),
        "web 0.00% 0.0MiB / 256.0MiB\n"
    );

    // df: a row per kind.
    let df = ok(root, &["system", "df"]);
    let rows: Vec<Vec<&str>> = df.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        rows[0],
        ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"],
        "{df}"
    );
    assert_eq!(&rows[1][..3], ["Images", "1", "1"], "{df}");
    assert_eq!(&rows[2][..3], ["Containers", "2", "0"], "{df}");
    assert_eq!(&rows[3][..4], ["Local", "Volumes", "0", "0"], "{df}");
    assert_eq!(&rows[4][..4], ["VM", "Snapshots", "0", "0"], "{df}");
    assert_eq!(&rows[5][..3], ["Root", "filesystems", "0"], "{df}");

    // rm through the management form; prune takes the rest.
    assert_eq!(ok(root, &["container", "rm", "db"]), "db\n");
    let pruned = ok(root, &["container", "prune", "-f"]);
    assert!(pruned.starts_with("Deleted Containers:\n"), "{pruned}");
    assert!(pruned.contains(web.trim()), "{pruned}");
    assert_eq!(ok(root, &["ps", "-aq"]), "");

    // system prune keeps an image a container uses; -a removes unused ones.
    ok(root, &["create", "--name", "keep", "busybox:test"]);
    let pruned = ok(root, &["system", "prune", "-a", "-f"]);
    assert!(pruned.contains("Deleted Containers:"), "{pruned}");
    assert!(pruned.contains("Deleted Images:"), "{pruned}");
    assert!(pruned
        .trim_end()
        .lines()
        .last()
        .unwrap()
        .starts_with("Total reclaimed space: "));
    assert_eq!(ok(root, &["images", "-q"]), "");
}

/// `inspect` names every disk of the container's VM: a `--rm` container
/// has a scratch disk as `/dev/vdb` (its writable layer is tmpfs), which
/// `inspect` once reported as `none`; a plain one has its writable layer.
#[test]
fn inspect_names_the_scratch_disk_of_rm_containers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    import_busybox(root);
    let devices = |name: &str| -> serde_json::Value {
        let out = ok(root, &["inspect", "-f", "{{json .VM.Devices}}", name]);
        serde_json::from_str(&out).unwrap()
    };
    ok(root, &["create", "--rm", "--name", "gone", "busybox:test"]);
    ok(root, &["create", "--name", "kept", "busybox:test"]);
    let rm = devices("gone");
    let vdb = rm["vdb"].as_str().unwrap();
    assert!(
        vdb.starts_with("scratch disk (virtio-blk, 1024 KiB"),
        "{rm}"
    );
    assert!(!vdb.contains("none"), "{rm}");
    let path = rm["Disks"]["vdb"].as_str().unwrap();
    assert!(path.ends_with("/scratch.img"), "{rm}");
    assert!(path.starts_with(root.to_str().unwrap()), "{rm}");
    let kept = devices("kept");
    assert_eq!(kept["vdb"], "writable layer (virtio-blk)", "{kept}");
    assert!(kept["Disks"]["vdb"]
        .as_str()
        .unwrap()
        .ends_with("/upper.ext4"));
}
