//! The guest kernel's memory-op doorbell (docs/guest-kernel.md): user
//! copies through the VMM must behave exactly like the kernel's own copy
//! loops. A static C program (tests/support/memops-check.c) checks every byte
//! of reads and writes across page boundaries, partially unmapped buffers
//! (EFAULT, partial counts), copy-on-write after fork, pipes and shared
//! file mappings, in a container with the doorbell on and again with it
//! off: both runs must pass and print the same counts.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{busybox_rootfs, hull, require_kvm, text};

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
    let tar = dir.path().join("rootfs.tar");
    let out = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = hull(root)
        .arg("import")
        .arg(&tar)
        .arg("memops:test")
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
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
fn user_copies_are_exact_with_and_without_the_doorbell() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    import_image(root);

    // The default: every hook on.
    let (on, on_log) = run_check(root, None);
    let (off, off_log) = run_check(root, Some("0"));
    assert_eq!(on, off, "the doorbell changed what user space sees");
    assert!(on.contains("ok partial read 8092\n"), "{on}");
    if vmm::host::HostKind::detect() == vmm::host::HostKind::Pvm {
        // Every hook on by default, so the run above really went through
        // the VMM.
        assert!(
            on_log.contains("hull_memops: doorbell at port 0xe10: hooks 0x7"),
            "{on_log}"
        );
    }
    assert!(!off_log.contains("doorbell at port"), "{off_log}");
}
