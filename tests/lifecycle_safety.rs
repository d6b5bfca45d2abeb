//! Two lifecycle defects of issue 17, each shown without a VM: a VMM PID
//! the kernel has given to another process is never signalled, and `hull
//! wait` on a created container waits as Docker's does.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{hull, import_busybox, text};

fn ok(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{:?}", text(out));
    text(out).0
}

fn create(root: &Path, name: &str) -> String {
    ok(&hull(root)
        .args(["create", "--name", name, "busybox:test", "true"])
        .output()
        .unwrap());
    ok(&hull(root)
        .args(["inspect", "-f", "{{.Id}}", name])
        .output()
        .unwrap())
    .trim()
    .to_string()
}

/// Field 22 of /proc/PID/stat.
fn start_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(") ").unwrap().1;
    rest.split_whitespace().nth(19).unwrap().parse().unwrap()
}

#[test]
fn a_reused_vmm_pid_is_never_killed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    import_busybox(root);
    let id = create(root, "reused");
    // An unrelated process holds the PID the state records, as when the
    // VMM died unrecorded and the kernel reused its PID.
    let mut bystander = Command::new("sleep").arg("1000").spawn().unwrap();
    let pid = bystander.id();
    let state_path = root.join("containers").join(&id).join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    state["status"] = "running".into();
    state["vmm_pid"] = pid.into();
    state["vmm_start"] = (start_ticks(pid) + 1).into();
    std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();

    let ps = ok(&hull(root)
        .args(["ps", "-a", "--format", "{{.Names}} {{.Status}}"])
        .output()
        .unwrap());
    assert!(ps.starts_with("reused Exited (255)"), "{ps}");
    ok(&hull(root).args(["rm", "-f", "reused"]).output().unwrap());
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "hull rm -f killed a process that was not its VMM"
    );
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}

#[test]
fn wait_on_a_created_container_waits() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    import_busybox(root);
    create(root, "later");
    let mut waiter = hull(root)
        .args(["wait", "later"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "wait returned before the container ever ran"
    );
    // Removed while waited for: one error line, as Docker's.
    ok(&hull(root).args(["rm", "later"]).output().unwrap());
    let start = Instant::now();
    let out = waiter.wait_with_output().unwrap();
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(!out.status.success());
    let (stdout, stderr) = text(&out);
    assert_eq!(stdout, "");
    assert_eq!(stderr, "hull: No such container: later\n");
}
