//! virtio-blk, virtio-vsock and the agent protocol, end to end: real
//! microVMs on /dev/kvm, commands run through the agent.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{busybox_ext4, hull, require_kvm, text};

fn empty_ext4(img: &Path, size_mib: u32) {
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(img)
        .arg(format!("{size_mib}M"))
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// `hull debug run` with the busybox disk as a read-only root.
fn run_in_busybox(
    root: &Path,
    rootfs: &Path,
    extra: &[&str],
    cmd: &[&str],
) -> std::process::Command {
    let mut c = hull(root);
    c.args(["debug", "run", "--disk"])
        .arg(format!("{}:ro", rootfs.display()))
        .args(["--mount", "/dev/vda:/mnt/root:ro"])
        .args(extra)
        .args(["--chroot", "/mnt/root", "--"])
        .args(cmd);
    c
}

/// Waits for the VM's hybrid vsock socket to appear under `root/run`.
fn wait_for_socket(root: &Path, timeout: Duration) -> PathBuf {
    let start = Instant::now();
    loop {
        if let Ok(entries) = std::fs::read_dir(root.join("run")) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "vsock") {
                    return p;
                }
            }
        }
        assert!(start.elapsed() < timeout, "no vsock socket appeared");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Speaks the hybrid vsock protocol by hand with socat, the way any
/// Firecracker-compatible tool would.
fn socat_exchange(uds: &Path, input: &str) -> String {
    let mut child = std::process::Command::new("socat")
        .args(["-t", "5", "-", &format!("UNIX-CONNECT:{}", uds.display())])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("missing socat: install it (scripts/apt-packages)");
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    // Keep stdin open until the reply came, then close it.
    let mut out = child.stdout.take().unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 256];
    let start = Instant::now();
    while reply.iter().filter(|b| **b == b'\n').count() < 2
        && start.elapsed() < Duration::from_secs(60)
    {
        match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
    }
    drop(child.stdin.take());
    let _ = child.wait();
    String::from_utf8_lossy(&reply).into_owned()
}

#[test]
fn commands_run_with_exact_stdio_and_exit_codes_and_disks_persist() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let rootfs = root.path().join("busybox.ext4");
    busybox_ext4(&rootfs, 16);
    let data = root.path().join("data.ext4");
    empty_ext4(&data, 8);

    // Boot 1: stdout and stderr kept apart, the exit code, a file read from
    // the read-only ext4 root, a file written to the second disk. While the
    // command sleeps, socat reaches the agent's vsock listener by hand.
    let mut child = run_in_busybox(
        root.path(),
        &rootfs,
        &[
            "--disk",
            data.to_str().unwrap(),
            "--mount",
            "/dev/vdb:/mnt/root/data",
        ],
        &[
            "/bin/sh",
            "-c",
            "echo out; echo err >&2; cat /etc/greeting; echo persisted > /data/f; sleep 20; exit 3",
        ],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            let _ = tx.send(());
        }
        all
    });
    // First output means the agent is serving: talk to it by hand.
    rx.recv_timeout(Duration::from_secs(300))
        .expect("no output from the guest command");
    let uds = wait_for_socket(root.path(), Duration::from_secs(5));
    let reply = socat_exchange(&uds, "connect 1025\nATTACH 999 stdout\n");
    let mut lines = reply.lines();
    let ok = lines.next().unwrap_or_default();
    assert!(
        ok.starts_with("OK "),
        "hybrid vsock handshake failed: {reply:?}"
    );
    assert!(ok[3..].trim().parse::<u32>().is_ok(), "{reply:?}");
    assert_eq!(lines.next(), Some("ERR no such process"), "{reply:?}");

    let status = child.wait().unwrap();
    let out = reader.join().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out), "out\nhello from ext4\n");
    assert_eq!(err, "err\n");
    assert_eq!(status.code(), Some(3));
    // Nothing is left behind: the VMM removed its socket.
    assert!(!uds.exists(), "vsock socket left behind");

    // Boot 2: the file written to the second disk is there.
    let out = run_in_busybox(
        root.path(),
        &rootfs,
        &[
            "--disk",
            data.to_str().unwrap(),
            "--mount",
            "/dev/vdb:/mnt/root/data:ro",
        ],
        &["/bin/cat", "/data/f"],
    )
    .output()
    .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout, "persisted\n");
}

#[test]
fn a_missing_program_and_a_killed_process_are_reported() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let rootfs = root.path().join("busybox.ext4");
    busybox_ext4(&rootfs, 16);
    // One boot: the shell reports 127 for a missing program; a process
    // killed by a signal reports 128+signal.
    let out = run_in_busybox(
        root.path(),
        &rootfs,
        &[],
        &["/bin/sh", "-c", "/bin/nonexistent; echo rc=$?; kill -9 $$"],
    )
    .output()
    .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(stdout, "rc=127\n", "{stderr}");
    assert!(stderr.contains("nonexistent"), "{stderr}");
    assert_eq!(out.status.code(), Some(137));
}

#[test]
fn bad_disk_arguments_are_one_clear_line() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let out = hull(root.path())
        .args(["debug", "run", "--disk", "/nonexistent.img", "--", "true"])
        .output()
        .unwrap();
    common::assert_one_line_error(&out, "Disk image /nonexistent.img does not exist");
    let odd = root.path().join("odd.img");
    std::fs::write(&odd, vec![0u8; 1000]).unwrap();
    let out = hull(root.path())
        .args(["debug", "run", "--disk"])
        .arg(&odd)
        .args(["--", "true"])
        .output()
        .unwrap();
    common::assert_one_line_error(&out, "not a multiple of 512");
    let out = hull(root.path())
        .args(["debug", "run", "--mount", "vda", "--", "true"])
        .output()
        .unwrap();
    common::assert_one_line_error(&out, "Invalid --mount value");
}
