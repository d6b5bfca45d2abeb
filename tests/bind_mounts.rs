//! Bind mounts end to end (`run -v /host/dir:/path[:ro]`, `--mount
//! type=bind`): real microVMs, each host directory served by a real
//! virtiofsd over a virtio-fs device. One long-lived container serves most
//! checks through `exec` (a restore costs seconds on PVM hosts).

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::{assert_one_line_error, hull, require_kvm, text};

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {:?}", text(&out));
    text(&out).0
}

fn exec(root: &Path, name: &str, args: &[&str]) -> std::process::Output {
    hull(root).args(["exec", name]).args(args).output().unwrap()
}

/// PIDs of the virtiofsd processes sharing `dir`.
fn virtiofsd_for(dir: &Path) -> Vec<i32> {
    let needle = dir.to_str().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|&b| b == 0).collect();
                args.first().is_some_and(|a| a.ends_with(b"virtiofsd"))
                    && args.contains(&needle.as_bytes())
            })
        })
        .collect()
}

/// Removes containers even when the test fails.
struct Remove<'a>(&'a Path, &'a [&'a str]);

impl Drop for Remove<'_> {
    fn drop(&mut self) {
        let _ = hull(self.0).args(["rm", "-f"]).args(self.1).output();
    }
}

#[test]
fn host_directories_are_shared_live_both_ways() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    common::import_busybox(root);
    let host = tempfile::tempdir().unwrap();
    let (rw, ro) = (host.path().join("rw"), host.path().join("ro"));
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::set_permissions(&rw, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    std::fs::write(rw.join("before.txt"), "written before the start\n").unwrap();
    std::fs::write(ro.join("config.txt"), "read-only content\n").unwrap();
    std::os::unix::fs::symlink("/etc", rw.join("escape")).unwrap();
    let _cleanup = Remove(root, &["binder"]);

    let rw_flag = format!("{}:/data", rw.display());
    let ro_flag = format!("type=bind,source={},target=/cfg,readonly", ro.display());
    ok(hull(root).args([
        "run",
        "-d",
        "--name",
        "binder",
        "--hostname",
        "guest-host",
        "-v",
        &rw_flag,
        "--mount",
        &ro_flag,
        "busybox:test",
        "sleep",
        "600",
    ]));
    // (virtiofsd's namespace sandbox is a child process of its own.)
    assert!(!virtiofsd_for(&rw).is_empty(), "no virtiofsd shares {rw:?}");

    // What the host had at start, and what it writes while the container runs.
    let out = exec(
        root,
        "binder",
        &["cat", "/data/before.txt", "/cfg/config.txt"],
    );
    assert_eq!(
        text(&out).0,
        "written before the start\nread-only content\n",
        "{:?}",
        text(&out)
    );
    std::fs::write(rw.join("live.txt"), "written while it runs\n").unwrap();
    let out = exec(root, "binder", &["cat", "/data/live.txt"]);
    assert_eq!(text(&out).0, "written while it runs\n", "{:?}", text(&out));

    // The container's writes reach the host with the writer's owner.
    ok(hull(root).args([
        "exec",
        "binder",
        "sh",
        "-c",
        "echo from-root > /data/root.txt",
    ]));
    ok(hull(root).args([
        "exec",
        "-u",
        "1000:1000",
        "binder",
        "sh",
        "-c",
        "echo from-user > /data/user.txt",
    ]));
    assert_eq!(
        std::fs::read_to_string(rw.join("root.txt")).unwrap(),
        "from-root\n"
    );
    let user = std::fs::metadata(rw.join("user.txt")).unwrap();
    assert_eq!((user.uid(), user.gid()), (1000, 1000));
    assert_eq!(std::fs::metadata(rw.join("root.txt")).unwrap().uid(), 0);
    assert_eq!(
        std::fs::read_to_string(rw.join("user.txt")).unwrap(),
        "from-user\n"
    );
    // Renames and deletions too.
    ok(hull(root).args([
        "exec",
        "binder",
        "sh",
        "-c",
        "mv /data/root.txt /data/moved.txt && rm /data/before.txt",
    ]));
    assert!(!rw.join("root.txt").exists() && !rw.join("before.txt").exists());
    assert_eq!(
        std::fs::read_to_string(rw.join("moved.txt")).unwrap(),
        "from-root\n"
    );

    // A symlink in the shared directory resolves inside the guest, never
    // on the host: /data/escape -> /etc is the container's /etc.
    let out = exec(root, "binder", &["cat", "/data/escape/hostname"]);
    assert_eq!(text(&out).0, "guest-host\n", "{:?}", text(&out));

    // Read-only: the write fails in the container and the host is untouched.
    let out = exec(root, "binder", &["sh", "-c", "echo x > /cfg/new.txt"]);
    assert!(
        !out.status.success(),
        "a write to a :ro bind mount succeeded"
    );
    assert!(
        text(&out).1.contains("Read-only file system"),
        "{:?}",
        text(&out)
    );
    assert!(!ro.join("new.txt").exists());

    let inspect: serde_json::Value =
        serde_json::from_str(&ok(hull(root).args(["inspect", "binder"]))).unwrap();
    let mounts = inspect[0]["Mounts"].as_array().unwrap();
    let binds: Vec<(&str, &str, bool)> = mounts
        .iter()
        .filter(|m| m["Type"] == "bind")
        .map(|m| {
            (
                m["Source"].as_str().unwrap(),
                m["Destination"].as_str().unwrap(),
                m["RW"].as_bool().unwrap(),
            )
        })
        .collect();
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap().display().to_string();
    assert_eq!(
        binds,
        vec![
            (canonical(&rw).as_str(), "/data", true),
            (canonical(&ro).as_str(), "/cfg", false)
        ]
    );

    // Stopped and started again, it shares the directory again.
    let daemons = virtiofsd_for(&rw);
    ok(hull(root).args(["stop", "-t", "1", "binder"]));
    for pid in daemons {
        common::wait_gone(pid, "virtiofsd of a stopped container");
    }
    // Ended by its SIGTERM and recorded by its own VMM process (a stop
    // racing the clean shutdown used to kill the VMM process instead).
    let state: serde_json::Value =
        serde_json::from_str(&ok(hull(root).args(["inspect", "binder"]))).unwrap();
    assert_eq!(state[0]["State"]["Error"], "", "{}", state[0]["State"]);
    assert_eq!(state[0]["State"]["ExitCode"], 143, "{}", state[0]["State"]);
    ok(hull(root).args(["start", "binder"]));
    let out = exec(root, "binder", &["cat", "/data/moved.txt"]);
    assert_eq!(text(&out).0, "from-root\n", "{:?}", text(&out));

    common::assert_private_files(root);
    let daemons = virtiofsd_for(&rw);
    assert!(!daemons.is_empty());
    ok(hull(root).args(["rm", "-f", "binder"]));
    for pid in daemons {
        common::wait_gone(pid, "virtiofsd of a removed container");
    }
    assert_eq!(
        std::fs::read_to_string(rw.join("live.txt")).unwrap(),
        "written while it runs\n"
    );
}

#[test]
fn bad_bind_sources_are_one_line_errors_that_leave_nothing() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    common::import_busybox(root);
    let host = tempfile::tempdir().unwrap();
    let file = host.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let missing = format!("{}/none:/x", host.path().display());
    let out = hull(root)
        .args(["run", "--rm", "-v", &missing, "busybox:test", "true"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "bind source path does not exist");
    let not_dir = format!("type=bind,source={},target=/x", file.display());
    let out = hull(root)
        .args(["run", "--mount", &not_dir, "busybox:test", "true"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "is not a directory");
    let out = hull(root)
        .args([
            "run",
            "--mount",
            "type=bind,target=/x",
            "busybox:test",
            "true",
        ])
        .output()
        .unwrap();
    assert_one_line_error(&out, "has no source");
    assert_eq!(
        ok(hull(root).args(["ps", "-aq"])),
        "",
        "a container was left"
    );
}

#[test]
fn container_isolation_binds_the_same_host_directory() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    common::import_busybox(root);
    let host = tempfile::tempdir().unwrap();
    let dir = host.path().join("shared");
    std::fs::create_dir(&dir).unwrap();
    // Writable by the container's root, which a user namespace maps to an
    // unprivileged host ID.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    std::fs::write(dir.join("in.txt"), "from the host\n").unwrap();
    let flag = format!("{}:/data", dir.display());
    let out = ok(hull(root).args([
        "run",
        "--rm",
        "--isolation",
        "container",
        "-v",
        &flag,
        "busybox:test",
        "sh",
        "-c",
        "cat /data/in.txt; echo from-the-container > /data/out.txt",
    ]));
    assert_eq!(out, "from the host\n");
    assert_eq!(
        std::fs::read_to_string(dir.join("out.txt")).unwrap(),
        "from-the-container\n"
    );
    let ro = format!("{}:/data:ro", dir.display());
    let out = hull(root)
        .args([
            "run",
            "--rm",
            "--isolation",
            "container",
            "-v",
            &ro,
            "busybox:test",
            "sh",
            "-c",
            "echo x > /data/ro.txt",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a :ro bind mount was writable");
    assert!(!dir.join("ro.txt").exists());
}
