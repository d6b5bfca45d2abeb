//! The guest kernel's memory-op doorbell (docs/guest-kernel.md): user
//! copies through the VMM must behave exactly like the kernel's own copy
//! loops. A static C program (tests/support/memops-check.c) checks every byte
//! of reads and writes across page boundaries, partially unmapped buffers
//! (EFAULT, partial counts), copy-on-write after fork, pipes and shared
//! file mappings, in a container with the doorbell on (and, in the long
//! form, again with it off: both runs must print the same). Then 2 MiB go
//! through a container's stdin and back out of its stdout, byte for byte,
//! with hull's default guest settings (doorbell on; on PVM, 64 KiB vsock
//! receive buffers).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{busybox_rootfs, hull, import_rootfs, require_kvm, text};

/// Builds a tests/support C program with `gcc -static` into `dir`.
fn build_guest_program(name: &str, dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/support/{name}.c"));
    let out = dir.join(name);
    let status = Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("gcc is needed to build the guest test programs (Debian: build-essential)");
    assert!(status.success(), "gcc failed on {}", src.display());
    out
}

/// Imports a busybox image with `/memops_check` as `memops:test`.
fn import_image(root: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    busybox_rootfs(&rootfs);
    let prog = build_guest_program("memops-check", dir.path());
    std::fs::copy(prog, rootfs.join("memops_check")).unwrap();
    import_rootfs(root, &rootfs, "memops:test", &[]);
}

/// Runs the check in a container with HULL_PVM_MEMOPS=`memops` (None: as
/// hull starts VMs by default) and returns its stdout and the guest
/// kernel's doorbell lines.
fn run_check(root: &Path, memops: Option<&str>) -> (String, String) {
    let mut cmd = hull(root);
    match memops {
        Some(m) => cmd.env("HULL_PVM_MEMOPS", m),
        None => cmd.env_remove("HULL_PVM_MEMOPS"),
    };
    let out = cmd
        .args(["run", "--rm", "memops:test", "/bin/sh", "-c"])
        .arg("dmesg | grep hull_memops: >&2; /memops_check /tmp")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "HULL_PVM_MEMOPS={memops:?}\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stdout.ends_with("memops_check: all ok\n"),
        "stdout: {stdout}"
    );
    (stdout, stderr)
}

#[test]
fn user_copies_and_streams_are_exact_with_the_doorbell() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    import_image(root);

    // The default: every hook on. The program checks every byte and the
    // exact partial counts and errors the kernel's own copy loops give.
    let (on, on_log) = run_check(root, None);
    assert!(on.contains("ok partial read 8092\n"), "{on}");
    assert!(on.contains("ok partial write 8092\n"), "{on}");
    if vmm::host::HostKind::detect() == vmm::host::HostKind::Pvm {
        // Every hook on by default, so the run above really went through
        // the VMM.
        assert!(
            on_log.contains("hull_memops: doorbell at port 0xe10: hooks 0x7"),
            "{on_log}"
        );
    }

    // Streams both ways as hull starts VMs by default (doorbell on, and on
    // PVM the bigger vsock receive buffers of guest patch 0011): 2 MiB of
    // a pattern no two pages of which are alike go in on stdin and come
    // back on stdout byte for byte, and the guest sees the same checksum.
    streams_are_exact(root);
}

/// The same program with the doorbell off prints the same lines. A long
/// form: the other guest command line costs a template boot of its own
/// (~1 min on PVM) and the program's own checks already hold the kernel's
/// answers.
#[test]
#[ignore = "long form (HULL_TEST_LONG=1): a template boot of its own with the doorbell off"]
fn user_copies_are_the_same_with_the_doorbell_off() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    import_image(root);
    let (on, _) = run_check(root, None);
    let (off, off_log) = run_check(root, Some("0"));
    assert_eq!(on, off, "the doorbell changed what user space sees");
    assert!(!off_log.contains("doorbell at port"), "{off_log}");
}

fn streams_are_exact(root: &Path) {
    use std::io::Write;
    let data: Vec<u8> = (0..2u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut child = hull(root)
        .env_remove("HULL_PVM_MEMOPS")
        .args(["run", "--rm", "-i", "memops:test", "/bin/sh", "-c"])
        .arg("tee /tmp/in | cat; md5sum /tmp/in >&2")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feed = {
        let data = data.clone();
        std::thread::spawn(move || stdin.write_all(&data))
    };
    let out = child.wait_with_output().unwrap();
    feed.join().unwrap().unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        out.stdout.len() == data.len(),
        "got {} bytes back",
        out.stdout.len()
    );
    let first_diff = out.stdout.iter().zip(&data).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "stdout differs from stdin");
    let host = Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(&data)?;
            c.wait_with_output()
        })
        .unwrap();
    let host_sum = String::from_utf8_lossy(&host.stdout);
    let host_sum = host_sum.split_whitespace().next().unwrap();
    assert!(stderr.contains(host_sum), "guest md5 differs: {stderr}");
}
