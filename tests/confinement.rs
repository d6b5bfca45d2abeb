//! The VMM's syscall filters (issue 16's first layer): the threads a guest
//! reaches — vCPUs and the device event loop — run under seccomp from
//! before the guest's first instruction, and a call outside their lists
//! ends the VMM with the call named in `ps` and `inspect`.

mod common;

use std::path::Path;

use common::{hull, import_busybox, require_kvm, text};

fn ok(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{:?}", text(out));
    text(out).0
}

/// `(thread name, seccomp mode)` of every thread of process `pid`.
fn thread_seccomp(pid: &str) -> Vec<(String, String)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
        let mode = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .unwrap_or("?")
            .trim()
            .to_string();
        threads.push((comm.trim().to_string(), mode));
    }
    threads
}

/// `GET /hostname` from `addr` (`127.0.0.1:PORT`), the whole reply.
fn http_get(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .ok()?;
    s.write_all(b"GET /hostname HTTP/1.0\r\n\r\n").ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    Some(reply)
}

fn remove(root: &Path, name: &str) {
    let _ = hull(root).args(["rm", "-f", name]).output();
}

#[test]
fn guest_facing_threads_are_filtered_and_a_violation_is_recorded() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    import_busybox(root);

    // 1. A running container: its vCPU, event-loop and port relay threads
    //    are in seccomp filter mode (2), and the relay still relays.
    ok(&hull(root)
        .args(["run", "-d", "--name", "calm", "-p", "127.0.0.1::80"])
        .args(["busybox:test", "httpd", "-f", "-p", "80", "-h", "/etc"])
        .output()
        .unwrap());
    let port = ok(&hull(root).args(["port", "calm", "80"]).output().unwrap());
    let addr = port.trim().to_string();
    let page = (0..60)
        .find_map(|_| {
            let got = http_get(&addr).filter(|p| p.contains("200 OK"));
            if got.is_none() {
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            got
        })
        .expect("the published port never answered");
    assert!(page.ends_with("\n"), "{page}");
    let pid = ok(&hull(root)
        .args(["inspect", "-f", "{{.State.Pid}}", "calm"])
        .output()
        .unwrap());
    let threads = thread_seccomp(pid.trim());
    remove(root, "calm");
    let filtered: Vec<&str> = threads
        .iter()
        .filter(|(_, mode)| mode == "2")
        .map(|(name, _)| name.as_str())
        .collect();
    assert!(filtered.contains(&"vcpu0"), "{threads:?}");
    assert!(filtered.contains(&"vm"), "{threads:?}");
    let relay = format!("port-{}", addr.rsplit(':').next().unwrap());
    assert!(filtered.contains(&relay.as_str()), "{threads:?}");

    // 2. A VMM that makes a call outside its list (the test hook makes the
    //    event loop call getppid): the start fails in one line naming the
    //    call, and the container is Dead with the reason.
    let out = hull(root)
        .env("HULL_TEST_SECCOMP_VIOLATION", "1")
        .args([
            "run",
            "-d",
            "--name",
            "bad",
            "busybox:test",
            "sleep",
            "100000",
        ])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("seccomp violation: getppid"), "{stderr}");
    let ps = ok(&hull(root)
        .args([
            "ps",
            "-a",
            "--filter",
            "status=dead",
            "--format",
            "{{.Names}} {{.Status}}",
        ])
        .output()
        .unwrap());
    assert_eq!(ps, "bad Dead\n");
    let state = ok(&hull(root)
        .args([
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.Dead}} {{.State.ExitCode}} {{.State.Error}}",
            "bad",
        ])
        .output()
        .unwrap());
    assert_eq!(state, "dead true 159 seccomp violation: getppid\n");
    let log = std::fs::read_dir(root.join("containers"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("vmm.log")).ok())
        .collect::<String>();
    assert!(
        log.contains("hull: seccomp violation: syscall 110"),
        "{log}"
    );
    // A dead container is removed like an exited one.
    ok(&hull(root).args(["rm", "bad"]).output().unwrap());

    // 3. Attached, the VMM is the hull process itself: it ends with
    //    128 + SIGSYS and says why.
    let out = hull(root)
        .env("HULL_TEST_SECCOMP_VIOLATION", "1")
        .args(["run", "--name", "bad2", "busybox:test", "true"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(159), "{stderr}");
    assert!(
        stderr.contains("hull: seccomp violation: syscall 110"),
        "{stderr}"
    );
    let state = ok(&hull(root)
        .args([
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.Error}}",
            "bad2",
        ])
        .output()
        .unwrap());
    assert_eq!(state, "dead seccomp violation: getppid\n");
    remove(root, "bad2");
}
