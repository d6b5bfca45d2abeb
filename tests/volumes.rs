//! Volumes end to end (`hull volume`, `run -v`/`--mount`/`--volumes-from`,
//! `rm -v`): real microVMs, each volume a virtio-blk disk. Restores are
//! expensive on PVM hosts (PLATFORM.md), so each container serves several
//! checks; every container here has one volume, so they share one VM
//! shape (and snapshot).

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{assert_one_line_error, hull, require_kvm, text};

/// A busybox image whose `/srv/www` holds a file; with `volume`, its
/// config names `/cache` as a VOLUME. (Every volume is a disk, and every
/// disk layout a VM shape of its own: the tests keep to few layouts.)
fn import_image(root: &Path, tag: &str, volume: bool) {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    common::busybox_rootfs(&rootfs);
    std::fs::create_dir_all(rootfs.join("srv/www")).unwrap();
    std::fs::write(rootfs.join("srv/www/index.html"), "from the image\n").unwrap();
    let changes: &[&str] = if volume { &["VOLUME /cache"] } else { &[] };
    common::import_rootfs(root, &rootfs, tag, changes);
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {:?}", text(&out));
    text(&out).0
}

fn run(root: &Path, args: &[&str]) -> Output {
    hull(root).arg("run").args(args).output().unwrap()
}

fn volumes(root: &Path) -> Vec<String> {
    ok(hull(root).args(["volume", "ls", "-q"]))
        .lines()
        .map(String::from)
        .collect()
}

/// The regular files of a tar and their contents.
fn tar_files(path: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    let mut files = std::collections::BTreeMap::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type().is_file() {
            let name = e.path().unwrap().display().to_string();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
            files.insert(name, bytes);
        }
    }
    files
}

/// Removes containers even when the test fails.
struct Remove<'a>(&'a Path, &'a [&'a str]);

impl Drop for Remove<'_> {
    fn drop(&mut self) {
        let _ = hull(self.0).args(["rm", "-f"]).args(self.1).output();
    }
}

#[test]
fn volume_data_outlives_containers_and_has_one_writer() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    import_image(root, "volimg:1", false);
    let _cleanup = Remove(root, &["writer", "holder", "w2"]);

    // Made on first use and filled with the image's content at its path;
    // the container's writes stay in the volume after it is removed.
    ok(hull(root).args([
        "run",
        "--name",
        "writer",
        "-v",
        "site:/srv/www",
        "volimg:1",
        "sh",
        "-c",
        "cat /srv/www/index.html; echo written > /srv/www/new; ls -a /srv/www",
    ]));
    ok(hull(root).args(["rm", "writer"]));
    assert!(volumes(root).contains(&"site".to_string()));
    let out = ok(hull(root).args([
        "run",
        "--rm",
        "--mount",
        "type=volume,source=site,target=/data,readonly",
        "volimg:1",
        "sh",
        "-c",
        "cat /data/index.html /data/new; ls -a /data; echo x > /data/y || echo refused",
    ]));
    assert_eq!(
        out.lines().take(3).collect::<Vec<_>>(),
        ["from the image", "written", "."],
        "{out}"
    );
    assert!(!out.contains("lost+found"), "{out}");
    assert!(out.ends_with("refused\n"), "{out}");
    // A volume over /etc hides the files a --rm container's warm snapshot
    // mounted there: its own hostname and hosts are mounted again on top.
    let out = ok(hull(root).args([
        "run",
        "--rm",
        "--hostname",
        "gamma",
        "-v",
        "etcvol:/etc",
        "volimg:1",
        "sh",
        "-c",
        "cat /etc/hostname; grep -c gamma /etc/hosts",
    ]));
    assert_eq!(out, "gamma\n1\n");
    ok(hull(root).args(["volume", "rm", "etcvol"]));

    // One writer at a time: a second read-write user is refused with the
    // holder's name, and nothing of it is left.
    ok(hull(root).args([
        "run",
        "-d",
        "--name",
        "holder",
        "-v",
        "site:/data",
        "volimg:1",
        "sleep",
        "600",
    ]));
    let out = run(root, &["--rm", "-v", "site:/data", "volimg:1", "true"]);
    assert!(!out.status.success());
    let (_, err) = text(&out);
    assert!(
        err.contains("in use read-write by container holder"),
        "{err}"
    );
    // The volume a container uses is not removed.
    let out = hull(root).args(["volume", "rm", "site"]).output().unwrap();
    assert_one_line_error(&out, "in use by container(s) holder");
    ok(hull(root).args(["rm", "-f", "holder"]));

    // --volumes-from mounts the other container's volumes.
    ok(hull(root).args([
        "create",
        "--name",
        "w2",
        "-v",
        "site:/srv/www",
        "volimg:1",
        "true",
    ]));
    let out = ok(hull(root).args([
        "run",
        "--rm",
        "--volumes-from",
        "w2:ro",
        "volimg:1",
        "cat",
        "/srv/www/new",
    ]));
    assert_eq!(out, "written\n");
    ok(hull(root).args(["rm", "w2"]));

    // Backup and restore: export, import into a new volume, export again:
    // the same files, byte for byte.
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("site.tar");
    ok(hull(root)
        .args(["volume", "export", "site", "-o"])
        .arg(&backup));
    ok(hull(root)
        .args(["volume", "import", "restored"])
        .arg(&backup));
    let again = dir.path().join("restored.tar");
    ok(hull(root)
        .args(["volume", "export", "restored", "-o"])
        .arg(&again));
    let files = tar_files(&backup);
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        ["index.html", "new"],
        "{files:?}"
    );
    assert_eq!(tar_files(&again), files);
    let out = hull(root)
        .args(["volume", "import", "broken", "/nonexistent.tar"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "cannot read /nonexistent.tar");
    // Volume disks (made by run -v and by import), state and logs are root's only.
    common::assert_private_files(root);

    ok(hull(root).args(["volume", "rm", "site", "restored"]));
    assert!(volumes(root).is_empty());
}

#[test]
fn anonymous_volumes_and_bad_input() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    import_image(root, "volimg:1", false);
    import_image(root, "volimg:vol", true);

    // The image's VOLUME gets an anonymous volume; --rm removes it.
    let out = ok(hull(root).args([
        "run",
        "--rm",
        "volimg:vol",
        "sh",
        "-c",
        "grep -c ' /cache ' /proc/mounts",
    ]));
    assert_eq!(out, "1\n");
    assert!(volumes(root).is_empty(), "{:?}", volumes(root));
    // rm -v removes a stopped container's anonymous ones, not named ones.
    ok(hull(root).args(["volume", "create", "--opt", "size=64m", "keep"]));
    ok(hull(root).args([
        "run",
        "--name",
        "c",
        "-v",
        "keep:/keep",
        "-v",
        "/scratch",
        "volimg:1",
        "true",
    ]));
    assert_eq!(volumes(root).len(), 2, "{:?}", volumes(root));
    let inspect = ok(hull(root).args([
        "inspect",
        "--format",
        "{{range .Mounts}}{{.Destination}} {{end}}",
        "c",
    ]));
    assert_eq!(inspect.trim(), "/keep /scratch");
    ok(hull(root).args(["rm", "-v", "c"]));
    assert_eq!(volumes(root), ["keep"]);

    // Bad input: one line, nothing made.
    let before = ok(hull(root).args(["ps", "-aq"]));
    for (args, needle) in [
        (
            vec!["-v", "/nonexistent-hull-source:/x"],
            "bind source path does not exist",
        ),
        (vec!["-v", "keep:relative"], "must be absolute"),
        (vec!["-v", "keep:/x:rx"], "must be ro or rw"),
        (vec!["--volume=-bad:/x"], "invalid volume name"),
        (
            vec!["--mount", "type=tmpfs,target=/x"],
            "type must be volume or bind",
        ),
        (
            vec!["-v", "keep:/x", "-v", "other:/x"],
            "duplicate mount point /x",
        ),
    ] {
        let mut all = vec!["--rm"];
        all.extend(args);
        all.extend(["volimg:1", "true"]);
        assert_one_line_error(&run(root, &all), needle);
    }
    let out = hull(root)
        .args(["volume", "create", "--opt", "size=8m", "tiny"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "minimum is 16m");
    assert_eq!(ok(hull(root).args(["ps", "-aq"])), before);
    assert_eq!(volumes(root), ["keep"]);
    let df = ok(hull(root).args(["system", "df"]));
    assert!(
        df.lines()
            .any(|l| l.starts_with("Local Volumes") && l.contains(" 1 ")),
        "{df}"
    );
}
