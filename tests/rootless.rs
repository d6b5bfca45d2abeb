//! Rootless hull (issue 16): a user who is not root, in the `kvm` group,
//! runs VM containers with a hull root of its own; each VMM is jailed in a
//! user namespace (root there, the user outside, no capability); what
//! truly needs root says so in one line.
//!
//! The test runs as root to set the machine up as Debian's udev does on a
//! desktop (`/dev/kvm` owned by group `kvm`, mode 0660) and to create the
//! user `hull-rootless-test` in that group; everything else runs as that
//! user.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{hull, import_busybox, require_kvm, text};

const USER: &str = "hull-rootless-test";

fn as_root(argv: &[&str]) {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    assert!(out.status.success(), "{argv:?}: {:?}", text(&out));
}

/// The test user's uid, creating the user and giving `/dev/kvm` to
/// group `kvm` if needed.
fn set_up_user() -> u32 {
    assert_eq!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() },
        0,
        "this test sets up a user: run it as root"
    );
    as_root(&["groupadd", "-f", "kvm"]);
    as_root(&["chgrp", "kvm", "/dev/kvm"]);
    as_root(&["chmod", "0660", "/dev/kvm"]);
    let id = Command::new("id").args(["-u", USER]).output().unwrap();
    if !id.status.success() {
        as_root(&["useradd", "--create-home", "--groups", "kvm", USER]);
    }
    let id = Command::new("id").args(["-u", USER]).output().unwrap();
    text(&id).0.trim().parse().unwrap()
}

/// `hull` as the test user, with its own root.
fn as_user(root: &Path) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", USER, "--", "env"])
        .arg(format!("HULL_ROOT={}", root.display()));
    for var in ["HULL_KERNEL", "HULL_AGENT"] {
        if let Ok(v) = std::env::var(var) {
            cmd.arg(format!("{var}={v}"));
        }
    }
    cmd.arg(env!("CARGO_BIN_EXE_hull"));
    cmd
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{:?}", text(out));
    text(out).0
}

fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or("?")
        .trim()
        .to_string()
}

#[test]
fn a_user_in_the_kvm_group_runs_jailed_vm_containers() {
    require_kvm();
    let uid = set_up_user();
    // An image made by root, handed over as an archive.
    let shared = tempfile::tempdir().unwrap();
    let root_hull = shared.path().join("root-hull");
    import_busybox(&root_hull);
    let archive = shared.path().join("busybox.tar");
    ok(&hull(&root_hull)
        .args(["save", "-o"])
        .arg(&archive)
        .arg("busybox:test")
        .output()
        .unwrap());
    let user_root = shared.path().join("user-hull");
    std::fs::create_dir(&user_root).unwrap();
    as_root(&["chown", USER, user_root.to_str().unwrap()]);
    as_root(&["chmod", "0755", shared.path().to_str().unwrap()]);
    as_root(&["chmod", "0644", archive.to_str().unwrap()]);
    ok(&as_user(&user_root)
        .arg("load")
        .arg("-i")
        .arg(&archive)
        .output()
        .unwrap());

    // 1. run --rm prints and exits as for root.
    let out = as_user(&user_root)
        .args(["run", "--rm", "busybox:test", "sh", "-c", "echo hi; exit 3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{:?}", text(&out));
    assert_eq!(text(&out).0, "hi\n");

    // 2. A detached one: exec works; its VMM is jailed in a user
    //    namespace, as the user, with no capability.
    ok(&as_user(&user_root)
        .args([
            "run",
            "-d",
            "--name",
            "r",
            "busybox:test",
            "sleep",
            "100000",
        ])
        .output()
        .unwrap());
    let exec = ok(&as_user(&user_root)
        .args(["exec", "r", "echo", "inside"])
        .output()
        .unwrap());
    let pid = ok(&as_user(&user_root)
        .args(["inspect", "-f", "{{.State.Pid}}", "r"])
        .output()
        .unwrap());
    let pid = pid.trim().to_string();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let root_entries = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .count();
    let user_ns = std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap();
    let our_user_ns = std::fs::read_link("/proc/self/ns/user").unwrap();
    ok(&as_user(&user_root)
        .args(["rm", "-f", "r"])
        .output()
        .unwrap());
    assert_eq!(exec, "inside\n");
    assert_eq!(
        status_field(&status, "Uid"),
        format!("{uid}\t{uid}\t{uid}\t{uid}")
    );
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(&status, caps), "0000000000000000", "{caps}");
    }
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    assert_eq!(status_field(&status, "Seccomp"), "2");
    assert_eq!(root_entries, 0, "the jail's root is empty");
    assert_ne!(user_ns, our_user_ns);
    common::wait_gone(pid.parse().unwrap(), "the VMM process after rm -f");

    // 3. A bind mount: virtiofsd runs as the user (no sandbox of its own,
    //    it could not make namespaces); files the container writes are
    //    the user's on the host, files the user has are readable inside.
    let share = shared.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("in"), "from host\n").unwrap();
    as_root(&["chown", "-R", USER, share.to_str().unwrap()]);
    let out = as_user(&user_root)
        .arg("run")
        .arg("--rm")
        .arg("-v")
        .arg(format!("{}:/b", share.display()))
        .args(["busybox:test", "sh", "-c", "cat /b/in; echo out > /b/out"])
        .output()
        .unwrap();
    assert_eq!(ok(&out), "from host\n");
    assert_eq!(std::fs::read_to_string(share.join("out")).unwrap(), "out\n");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(share.join("out")).unwrap().uid(), uid);

    // 4. What needs root says so in one line.
    let out = as_user(&user_root)
        .args(["network", "create", "n1"])
        .output()
        .unwrap();
    common::assert_one_line_error(&out, "user networks (hull network create) needs root");
}
