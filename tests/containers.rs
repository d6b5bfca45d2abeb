//! `hull run` and the container lifecycle, each container in its own
//! microVM, with a busybox image the test builds from Debian's
//! busybox-static. Boots are expensive on PVM hosts (~40 s), so one test
//! walks the whole lifecycle in order, sharing boots where that is honest.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{assert_one_line_error, hull, import_busybox, require_kvm, text};

fn ok(out: &Output) -> String {
    let (stdout, stderr) = text(out);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    stdout
}

fn ps_a(root: &Path) -> Vec<serde_json::Value> {
    let out = hull(root)
        .args(["ps", "-a", "--format", "json"])
        .output()
        .unwrap();
    ok(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// VMM processes of containers under `root` (other hull roots on the
/// machine, e.g. a benchmark running alongside, do not count).
fn hull_processes(root: &Path) -> usize {
    let root = root.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("cmdline"))
                .is_ok_and(|c| c.contains("__container-vmm") && c.contains(&root))
        })
        .count()
}

#[test]
fn container_lifecycle_end_to_end() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    import_busybox(root);
    let vmm_before = hull_processes(root);

    // 1. Attached --rm: exact stdout/stderr/exit code; env, cwd and user
    //    from the image config and from flags; hostname. This first run
    //    also prepares the image's root filesystem in a helper VM.
    let out = hull(root)
        .args(["run", "--rm", "-e", "FOO=bar", "-u", "app", "--hostname", "box1", "busybox:test"])
        .args(["/bin/sh", "-c", "echo out; echo err >&2; cat /etc/greeting; echo $FOO $GREETING; pwd; id -u; hostname; exit 3"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(
        stdout, "out\nhello from ext4\nbar hi\n/data\n1000\nbox1\n",
        "stderr: {stderr}"
    );
    assert_eq!(stderr, "err\n");
    assert_eq!(out.status.code(), Some(3));
    // --rm leaves nothing: no container, no socket.
    assert_eq!(
        count_files(&root.join("containers")),
        1,
        "only the store lock remains"
    );
    assert_eq!(count_files(&root.join("run")), 0);
    // The root filesystem was prepared once and is cached.
    let cached = |root: &Path| {
        std::fs::read_dir(root.join("rootfs"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "erofs"))
            .count()
    };
    assert_eq!(cached(root), 1);

    // 1b. The container ends with its main process, as Docker's with its
    //     PID namespace: a background child holding stdout is killed
    //     once the shell has exited, which must not hang the run.
    let t0 = Instant::now();
    let out = hull(root)
        .args([
            "run",
            "--rm",
            "busybox:test",
            "sh",
            "-c",
            "sleep 1000 & echo hi",
        ])
        .output()
        .unwrap();
    let took = t0.elapsed();
    assert_eq!(text(&out), ("hi\n".to_string(), String::new()));
    assert_eq!(out.status.code(), Some(0));
    eprintln!("run with a background child took {took:?}");
    assert!(took < Duration::from_secs(60), "{took:?}");

    // 2. Detached, named, with a persistent writable layer.
    let out = hull(root)
        .args([
            "run",
            "-d",
            "--name",
            "web",
            "busybox:test",
            "/bin/sh",
            "-c",
        ])
        // A background child shares the streams and outlives SIGTERM.
        .arg("echo started; echo persist > /data/file; (echo oops >&2; exec sleep 1000) & exec sleep 2000")
        .output()
        .unwrap();
    let id = ok(&out).trim().to_string();
    assert_eq!(id.len(), 64, "{id}");
    assert_eq!(
        cached(root),
        1,
        "the second container reuses the cached root filesystem"
    );
    let ps = ps_a(root);
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0]["Names"], "web");
    assert_eq!(ps[0]["State"], "running");
    let running = hull(root).args(["ps", "-q"]).output().unwrap();
    assert_eq!(ok(&running), format!("{}\n", &id[..12]));

    // A name in use is refused before anything boots.
    let out = hull(root)
        .args(["run", "--name", "web", "busybox:test", "true"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "The container name \"web\" is already in use");

    // logs (the loop keeps running, so wait for its first lines).
    let start = Instant::now();
    loop {
        let out = hull(root).args(["logs", "web"]).output().unwrap();
        let (o, e) = text(&out);
        if o == "started\n" && e == "oops\n" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "logs: {o:?} {e:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // exec: a new process in the running container sees its files.
    let out = hull(root)
        .args(["exec", "web", "cat", "/data/file"])
        .output()
        .unwrap();
    assert_eq!(ok(&out), "persist\n");
    let out = hull(root)
        .args([
            "exec",
            "-e",
            "X=1",
            "web",
            "/bin/sh",
            "-c",
            "echo $X; exit 7",
        ])
        .output()
        .unwrap();
    assert_eq!(text(&out).0, "1\n");
    assert_eq!(out.status.code(), Some(7));

    // An exec'd process still running when the container ends is killed.
    let mut exec = hull(root)
        .args([
            "exec",
            "web",
            "sh",
            "-c",
            "echo exec-running; exec sleep 1000",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut exec_out = exec.stdout.take().unwrap();
    let mut line = [0u8; 13];
    std::io::Read::read_exact(&mut exec_out, &mut line).unwrap();
    assert_eq!(&line, b"exec-running\n");

    // stop: the main process is not PID 1 in the guest (the agent is), so
    // SIGTERM ends it as it would outside a container: exit code 128+15;
    // the rest of the container goes with it, well before the timeout.
    let t0 = Instant::now();
    let out = hull(root)
        .args(["stop", "-t", "20", "web"])
        .output()
        .unwrap();
    assert_eq!(ok(&out), "web\n");
    eprintln!("stop with a background child took {:?}", t0.elapsed());
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    let ps = ps_a(root);
    assert_eq!(ps[0]["State"], "exited");
    assert_eq!(ps[0]["ExitCode"], 143);
    let status = ps[0]["Status"].as_str().unwrap();
    assert!(
        status.starts_with("Exited (143) ") && status.ends_with(" ago"),
        "recorded cleanly: {status}"
    );
    let status = exec.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 9));
    let out = hull(root).args(["logs", "web"]).output().unwrap();
    assert_eq!(text(&out), ("started\n".to_string(), "oops\n".to_string()));

    // rmi of the image a (stopped) container uses: refused, naming the
    // container, as Docker refuses it; -f untags, and the image stays
    // (dangling, with its blobs, also through a prune) while the
    // container exists. The container starts again below.
    let out = hull(root).args(["rmi", "busybox:test"]).output().unwrap();
    assert_one_line_error(
        &out,
        &format!(
            "conflict: unable to remove repository reference \"busybox:test\" (must force) - container {} is using its referenced image",
            &id[..12]
        ),
    );
    let out = hull(root)
        .args(["rmi", "-f", "busybox:test"])
        .output()
        .unwrap();
    assert_eq!(ok(&out), "Untagged: busybox:test\n");
    let out = hull(root).args(["image", "prune"]).output().unwrap();
    assert!(!ok(&out).contains("deleted:"));
    let inspect = ok(&hull(root).args(["inspect", "web"]).output().unwrap());
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let image_id = v[0]["Image"].as_str().unwrap().to_string();
    let out = hull(root)
        .args(["image", "inspect", &image_id])
        .output()
        .unwrap();
    let image: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(image[0]["RepoTags"], serde_json::json!([]));
    // (Without --pull never, run would try to pull busybox:test.)
    let out = hull(root)
        .args(["run", "--rm", "--pull", "never", "busybox:test", "true"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "busybox:test");
    assert!(hull(root)
        .args(["ps", "-q"])
        .output()
        .unwrap()
        .stdout
        .is_empty());

    // start again (through restart, which stops nothing here): the
    // writable layer survived the stop.
    let out = hull(root).args(["restart", "web"]).output().unwrap();
    assert_eq!(ok(&out), "web\n");
    let out = hull(root)
        .args(["exec", "web", "cat", "/data/file"])
        .output()
        .unwrap();
    assert_eq!(ok(&out), "persist\n");
    // The log keeps both runs' output; --tail shows the last lines.
    let start = Instant::now();
    while text(&hull(root).args(["logs", "web"]).output().unwrap()).0 != "started\nstarted\n" {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "second run never logged"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = hull(root)
        .args(["logs", "--tail", "2", "web"])
        .output()
        .unwrap();
    assert_eq!(text(&out), ("started\n".to_string(), "oops\n".to_string()));

    // A VMM killed with -9 shows as exited with an error, never running.
    let inspect = ok(&hull(root).args(["inspect", "web"]).output().unwrap());
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let vmm_pid = v[0]["VM"]["VmmPid"].as_i64().expect("running VMM pid") as i32;
    assert_eq!(v[0]["VM"]["VCPUs"], 1);
    // SAFETY: killing the VMM process this test started.
    unsafe { libc::kill(vmm_pid, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(500));
    let ps = ps_a(root);
    assert_eq!(ps[0]["State"], "exited");
    assert!(
        ps[0]["Status"].as_str().unwrap().contains("with error"),
        "{}",
        ps[0]
    );

    // rm removes disks, logs, sockets, state; no VMM process is left.
    let out = hull(root).args(["rm", "web"]).output().unwrap();
    assert_eq!(ok(&out), "web\n");
    assert!(ps_a(root).is_empty());
    assert_eq!(count_files(&root.join("containers")), 1);
    assert_eq!(count_files(&root.join("run")), 0);
    assert_eq!(hull_processes(root), vmm_before);
    // With its last container gone, the untagged image is pruned.
    let out = hull(root).args(["image", "prune"]).output().unwrap();
    assert!(
        ok(&out).contains(&format!("deleted: {image_id}\n")),
        "{:?}",
        text(&out)
    );
}

#[test]
fn read_only_root_refuses_writes_but_tmp_mounts_work() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    import_busybox(root);
    let out = hull(root)
        .args(["run", "--rm", "--read-only", "busybox:test", "/bin/sh", "-c"])
        .arg("echo x > /data/f || echo refused; cat /proc/self/comm; echo ok > /dev/shm/f && cat /dev/shm/f")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(stdout, "refused\ncat\nok\n", "stderr: {stderr}");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn container_errors_are_one_clear_line() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let out = hull(root)
        .args(["run", "--rm", "--pull", "never", "nosuchimage:1", "true"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "nosuchimage");
    let out = hull(root)
        .args(["run", "--memory", "lots", "busybox", "true"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "Invalid size \"lots\"");
    let out = hull(root)
        .args(["run", "--name", "bad name", "busybox", "true"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "Invalid container name");
    for verb in [
        vec!["stop", "ghost"],
        vec!["rm", "ghost"],
        vec!["logs", "ghost"],
        vec!["exec", "ghost", "true"],
        vec!["inspect", "ghost"],
    ] {
        let out = hull(root).args(&verb).output().unwrap();
        assert_one_line_error(&out, "No such container: ghost");
    }
    let out = hull(root)
        .args(["kill", "-s", "NOPE", "ghost"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "Invalid signal: NOPE");
    // Nothing was left behind by the failed commands.
    assert_eq!(count_files(&root.join("run")), 0);
    assert!(ps_a(root).is_empty());
}

#[test]
fn sigterm_to_an_attached_run_reaches_the_container_process() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    import_busybox(root);
    let mut child = hull(root)
        .args(["run", "--rm", "busybox:test", "/bin/sh", "-c"])
        .arg("trap 'echo got TERM; exit 5' TERM; echo ready; while true; do sleep 1; done")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    use std::io::Read;
    while !String::from_utf8_lossy(&seen).contains("ready\n") {
        let n = stdout.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "container ended early: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    // SAFETY: signalling the hull process this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    stdout.read_to_end(&mut seen).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(String::from_utf8_lossy(&seen), "ready\ngot TERM\n");
    assert_eq!(status.code(), Some(5));
}
