//! `hull commit`, `diff`, `export` and `cp` end to end, on stopped and
//! running containers (real microVMs: each command starts a helper VM on
//! the container's disks). Restores are expensive on PVM hosts
//! (PLATFORM.md), so each container serves many checks.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_one_line_error, hull, require_kvm, run_limited, text};

/// A busybox image with files the tests change: /etc/motd, /opt/dir/{a,b},
/// /opt/keep/{gone,stay}, and the files hull bind-mounts per container
/// (so their mount points need no new entries in /etc).
fn import_image(root: &Path, tag: &str) {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    common::busybox_rootfs(&rootfs);
    for (path, content) in [
        ("etc/motd", "orig\n"),
        ("etc/hosts", ""),
        ("etc/hostname", ""),
        ("etc/resolv.conf", ""),
        ("opt/dir/a", "a\n"),
        ("opt/dir/b", "b\n"),
        ("opt/keep/gone", "gone\n"),
        ("opt/keep/stay", "stay\n"),
    ] {
        let p = rootfs.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    common::import_rootfs(root, &rootfs, tag, &[]);
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {:?}", text(&out));
    text(&out).0
}

fn images(root: &Path) -> String {
    ok(hull(root).args(["images", "--format", "{{.Repository}}:{{.Tag}}"]))
}

/// What the first container changes: a modified file, a deleted one
/// (whiteout), a directory removed and made again (opaque), new files
/// with a hardlink, and two symlinks that point at absolute paths.
const CHANGES: &str = "echo new > /etc/motd; rm /opt/keep/gone; \
    rm -rf /opt/dir; mkdir /opt/dir; echo c > /opt/dir/c; \
    mkdir -p /new/x; echo hi > /new/x/f; ln /new/x/f /new/x/hard; \
    ln -s /etc /evil; ln -s /etc/passwd /pw";

const DIFF: &str = "C /etc\nC /etc/motd\nA /evil\nA /new\nA /new/x\nA /new/x/f\nA /new/x/hard\n\
    C /opt\nC /opt/dir\nA /opt/dir/c\nC /opt/keep\nD /opt/keep/gone\nA /pw\n";

#[test]
fn commit_diff_export_and_cp_of_a_stopped_container() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let host = tempfile::tempdir().unwrap();
    let host = host.path();
    import_image(root, "fsimg:1");
    ok(hull(root).args(["run", "--name", "c1", "fsimg:1", "sh", "-c", CHANGES]));
    let _remove = Remove(root, "c1");

    assert_eq!(ok(hull(root).args(["diff", "c1"])), DIFF);

    // cp out: a directory to a new host path, a file through a symlink
    // (resolved inside the container: its passwd, not the host's), a tar
    // on stdout.
    ok(hull(root).args(["cp", "c1:/opt/dir"]).arg(host.join("dir")));
    assert_eq!(std::fs::read_to_string(host.join("dir/c")).unwrap(), "c\n");
    assert!(!host.join("dir/a").exists());
    ok(hull(root).args(["cp", "c1:/pw"]).arg(host.join("pw")));
    let pw = std::fs::read_to_string(host.join("pw")).unwrap();
    assert_eq!(
        pw,
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
    );
    let out = hull(root)
        .args(["cp", "c1:/new/x/f", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    let mut tar = tar::Archive::new(&out.stdout[..]);
    let names: Vec<String> = tar
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(names, ["f"]);

    // cp in: into a directory through a symlink (lands in the
    // container's /etc), and to a new name.
    std::fs::write(host.join("in.txt"), "from the host\n").unwrap();
    ok(hull(root)
        .arg("cp")
        .arg(host.join("in.txt"))
        .arg("c1:/evil/"));
    ok(hull(root)
        .arg("cp")
        .arg(host.join("in.txt"))
        .arg("c1:/renamed.txt"));

    // commit: the changes, the deletion and the opaque directory are in
    // the new image; -c sets its command, -m its history comment.
    let script = "cat /etc/motd /etc/in.txt /renamed.txt; ls /opt/dir /opt/keep; \
        [ $(stat -c %i /new/x/f) = $(stat -c %i /new/x/hard) ] && echo hardlinked";
    let id = ok(hull(root).args([
        "commit",
        "-m",
        "my change",
        "-a",
        "Tester <t@example.com>",
        "-c",
        &format!("CMD [\"sh\", \"-c\", \"{script}\"]"),
        "c1",
        "fsimg:2",
    ]));
    assert!(id.starts_with("sha256:"), "{id}");
    let out = ok(hull(root).args(["run", "--rm", "fsimg:2"]));
    assert_eq!(
        out,
        "new\nfrom the host\nfrom the host\n/opt/dir:\nc\n\n/opt/keep:\nstay\nhardlinked\n"
    );
    let history = ok(hull(root).args(["history", "fsimg:2"]));
    assert!(
        history.lines().nth(1).unwrap().contains("my change"),
        "{history}"
    );
    let author = ok(hull(root).args(["inspect", "--format", "{{.Author}}", "fsimg:2"]));
    assert_eq!(author.trim(), "Tester <t@example.com>");

    // export: the merged root, made in the guest.
    let export = host.join("c1.tar");
    ok(hull(root).args(["export", "c1", "-o"]).arg(&export));
    let list = ok(Command::new("tar").arg("-tf").arg(&export));
    for present in [
        "bin/busybox",
        "etc/motd",
        "opt/dir/c",
        "new/x/hard",
        "renamed.txt",
    ] {
        assert!(
            list.lines().any(|l| l == present),
            "{present} not in {list}"
        );
    }
    for absent in ["opt/dir/a", "opt/keep/gone"] {
        assert!(!list.lines().any(|l| l == absent), "{absent} in {list}");
    }

    // Bad input: one line, nothing made.
    let before = images(root);
    let out = hull(root)
        .args(["commit", "-c", "RUN rm -rf /", "c1", "fsimg:bad"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "RUN is not supported");
    let out = hull(root)
        .args(["commit", "nosuch", "fsimg:bad"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "No such container");
    assert_eq!(images(root), before);
    let out = hull(root)
        .args(["cp", "/etc/hostname", "/tmp/x"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "exactly one container path");
    let out = hull(root)
        .args(["cp", "/nonexistent/file", "c1:/tmp/"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "could not find the file");
    let out = hull(root)
        .args(["cp", "c1:relative", "/tmp/x"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "must be absolute");
}

/// The running container's counter, once it has written one (a read that
/// catches the file between truncation and write is retried).
fn counter(root: &Path) -> u64 {
    let start = Instant::now();
    loop {
        let mut exec = hull(root);
        exec.args(["exec", "r1", "cat", "/counter"]);
        let out = run_limited(exec, Duration::from_secs(120));
        // `echo $i > /counter` truncates before it writes: a read in
        // between finds the file empty, so read again.
        if let (true, Ok(n)) = (out.status.success(), text(&out).0.trim().parse()) {
            return n;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no counter: {:?}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Removes the container even when the test fails (a running one would
/// keep a VM busy).
struct Remove<'a>(&'a Path, &'a str);

impl Drop for Remove<'_> {
    fn drop(&mut self) {
        let _ = hull(self.0).args(["rm", "-f", self.1]).output();
    }
}

#[test]
fn a_running_container_is_frozen_only_while_it_is_read() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    import_image(root, "fsimg:1");
    ok(hull(root).args([
        "run",
        "-d",
        "--name",
        "r1",
        "fsimg:1",
        "sh",
        "-c",
        "echo live > /live; i=0; while true; do i=$((i+1)); echo $i > /counter; sleep 0.1; done",
    ]));
    let _remove = Remove(root, "r1");
    counter(root);
    let diff = ok(hull(root).args(["diff", "r1"]));
    assert_eq!(diff, "A /counter\nA /live\n");
    ok(hull(root).args(["commit", "r1", "fsimg:live"]));
    // Still writing after the commit: the freeze was undone.
    let first = counter(root);
    std::thread::sleep(Duration::from_secs(2));
    assert!(counter(root) > first, "the container stopped writing");
    let out = ok(hull(root).args(["run", "--rm", "fsimg:live", "cat", "/live"]));
    assert_eq!(out, "live\n");

    // Copying into a running container: its own agent unpacks the tar
    // from its mailbox window, and its processes see the file at once.
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("note"), "live copy\n").unwrap();
    ok(hull(root)
        .arg("cp")
        .arg(host.path().join("note"))
        .arg("r1:/tmp/"));
    let out = ok(hull(root).args(["exec", "r1", "cat", "/tmp/note"]));
    assert_eq!(out, "live copy\n");

    // A commit killed mid-way (after the freeze, during the helper VM's
    // start) leaves the container writing, no image, and no files that
    // the next helper VM does not remove.
    let mut commit = hull(root)
        .args(["commit", "r1", "fsimg:killed"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let killed_pid = commit.id();
    commit.kill().unwrap();
    commit.wait().unwrap();
    let first = counter(root);
    std::thread::sleep(Duration::from_secs(2));
    assert!(counter(root) > first, "the container stayed frozen");
    assert!(!images(root).contains("killed"));
    ok(hull(root).args(["diff", "r1"]));
    let leftovers: Vec<_> = std::fs::read_dir(root.join("fs-vm"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("vm-{killed_pid}-")))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A running `--rm` container's writable layer is tmpfs in its VM: its own
/// agent writes diff, commit, export and cp output into its mailbox.
#[test]
fn a_running_rm_container_hands_out_its_in_memory_layer() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let host = tempfile::tempdir().unwrap();
    let host = host.path();
    import_image(root, "fsimg:1");
    ok(hull(root).args([
        "run",
        "-d",
        "--rm",
        "--name",
        "mem1",
        "fsimg:1",
        "sh",
        "-c",
        &format!("{CHANGES}; sleep 600"),
    ]));
    let _remove = Remove(root, "mem1");
    // The changes are made by the time /pw exists (the last of them).
    let start = Instant::now();
    while !hull(root)
        .args(["exec", "mem1", "test", "-L", "/pw"])
        .status()
        .unwrap()
        .success()
    {
        assert!(start.elapsed() < Duration::from_secs(60), "no changes made");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(ok(hull(root).args(["diff", "mem1"])), DIFF);

    ok(hull(root).args(["cp", "mem1:/pw"]).arg(host.join("pw")));
    assert!(std::fs::read_to_string(host.join("pw"))
        .unwrap()
        .starts_with("root:x:0:0:root:/root:/bin/sh\n"));

    let export = host.join("mem1.tar");
    ok(hull(root).args(["export", "mem1", "-o"]).arg(&export));
    let list = ok(Command::new("tar").arg("-tf").arg(&export));
    assert!(list.lines().any(|l| l == "new/x/hard"), "{list}");
    assert!(!list.lines().any(|l| l == "opt/keep/gone"), "{list}");

    ok(hull(root).args(["commit", "mem1", "fsimg:from-memory"]));
    let out = ok(hull(root).args([
        "run",
        "--rm",
        "fsimg:from-memory",
        "sh",
        "-c",
        "cat /etc/motd; ls /opt/dir /opt/keep",
    ]));
    assert_eq!(out, "new\n/opt/dir:\nc\n\n/opt/keep:\nstay\n");

    // Still running, and the mailbox holds none of its data any more.
    assert_eq!(
        ok(hull(root).args(["exec", "mem1", "cat", "/new/x/f"])),
        "hi\n"
    );
    let dir = root.join("containers");
    let mailbox = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("mailbox"))
        .find(|p| p.exists())
        .unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&mailbox).unwrap().blocks(), 0);
}
