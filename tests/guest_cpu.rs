//! What guest user space sees of the CPU, in a real microVM.
//!
//! On PVM hosts guest user code runs natively and sees the host's CPUID
//! (AVX, AVX2, AVX-512), while the guest kernel runs without XSAVE and saves
//! only SSE state between processes: programs that chose AVX from CPUID
//! corrupted each other's vector registers. Our guest kernel (patch 0006,
//! docs/guest-kernel.md) answers user-mode CPUID itself with AVX hidden.
//! The test program (tests/support/avx-check.c, static, C) picks AVX2 or SSE
//! from CPUID and XGETBV by itself, as Go's runtime or a numeric library
//! does, and runs that path in two processes interleaved on one CPU.

mod common;

use std::path::Path;
use std::process::Command;

use common::{busybox_rootfs, hull, require_kvm, text};

/// The host's /dev/kvm is PVM (see docs/guest-kernel.md).
fn host_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// A busybox ext4 image with the static avx-check program at /avx-check.
fn avx_check_ext4(img: &Path) {
    let dir = tempfile::tempdir().unwrap();
    busybox_rootfs(dir.path());
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/avx-check.c");
    let out = Command::new("gcc")
        .args(["-static", "-O2", "-s", "-Wall", "-o"])
        .arg(dir.path().join("avx-check"))
        .arg(&src)
        .output()
        .expect("missing gcc: install build-essential (scripts/apt-packages)");
    assert!(
        out.status.success(),
        "gcc -static avx-check.c (static libc from libc6-dev needed): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::ext4_of_dir(dir.path(), img, 16);
}

/// The `key=value` pairs of the output line starting with `tag `.
fn fields<'a>(stdout: &'a str, tag: &str) -> Vec<(&'a str, &'a str)> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{tag} ")))
        .unwrap_or_else(|| panic!("no {tag:?} line in {stdout:?}"));
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .collect()
}

fn field<'a>(stdout: &'a str, tag: &str, key: &str) -> &'a str {
    fields(stdout, tag)
        .into_iter()
        .find(|(k, _)| *k == key)
        .unwrap_or_else(|| panic!("no {key} in the {tag:?} line of {stdout:?}"))
        .1
}

/// The output of one avx-check run: the lines after `== name` up to the
/// next `== ` marker.
fn section<'a>(stdout: &'a str, name: &str) -> &'a str {
    let marker = format!("== {name}\n");
    let start = stdout
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker:?} in {stdout:?}"))
        + marker.len();
    let rest = &stdout[start..];
    &rest[..rest.find("== ").unwrap_or(rest.len())]
}

/// Both processes of a run finished their iterations with right results.
fn assert_both_ok(run: &str, iterations: u32, stdout: &str) {
    assert!(run.contains("\nresult ok\n"), "{stdout}");
    for id in [1, 2] {
        let ok = run.lines().any(|l| {
            l.starts_with(&format!("child id={id} path="))
                && l.ends_with(&format!(" ok iterations={iterations}"))
        });
        assert!(ok, "process {id} saw a wrong result: {stdout}");
    }
}

#[test]
fn cpuid_checking_vector_code_keeps_its_registers_in_concurrent_processes() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let img = root.path().join("avx.ext4");
    avx_check_ext4(&img);

    // One boot, three runs of the program: "strict" checks CPUID the way
    // Go's runtime and glibc do (OSXSAVE, XCR0, AVX, AVX2); "lax" skips the
    // OSXSAVE check, as some hand-written detection does, and used to pick
    // AVX2 on PVM (XGETBV returns the host's XCR0 there) and get wrong
    // results; "forced" uses AVX2 whatever CPUID says and is printed for the
    // record only: no kernel without XSAVE can protect a program that does
    // not ask.
    let script = "echo faulting $(grep -c -w cpuid_fault /proc/cpuinfo); \
                  echo '== strict'; /avx-check 1000; a=$?; \
                  echo '== lax'; /avx-check --lax 1000; b=$?; \
                  echo '== forced'; /avx-check --force-avx2 200; \
                  exit $((a | b))";
    let out = hull(root.path())
        .args(["debug", "run", "--disk"])
        .arg(format!("{}:ro", img.display()))
        .args(["--mount", "/dev/vda:/mnt/root:ro", "--chroot", "/mnt/root"])
        .args(["--", "/bin/sh", "-c", script])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    eprintln!("guest output:\n{stdout}");
    let strict = section(&stdout, "strict");
    let lax = section(&stdout, "lax");
    // Detection that checks OSXSAVE (glibc's, Go's) is right on every host:
    // this XSAVE-less kernel never sets it.
    assert_both_ok(strict, 1000, &stdout);
    let faulting = stdout
        .lines()
        .any(|l| l.starts_with("faulting ") && l != "faulting 0");
    if host_is_pvm() && !faulting {
        // This PVM host (seen on AMD EPYC) offers the guest no CPUID
        // faulting, so patch 0006 cannot answer user CPUID: the host's AVX
        // bits show, and only OSXSAVE=0 protects detection (a documented
        // limit, docs/guest-kernel.md). What the kernel does see holds.
        eprintln!("this PVM host offers no CPUID faulting: AVX is not hidden from user CPUID");
        assert_eq!(field(strict, "cpuid", "osxsave"), "0", "{stdout}");
        assert!(strict.contains("child id=1 path=sse ok"), "{stdout}");
        assert!(strict.contains("nocpuid unsupported\n"), "{stdout}");
        return;
    }
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_both_ok(lax, 1000, &stdout);

    if host_is_pvm() {
        // The guest kernel hides every feature whose state it does not
        // save, so both checks choose SSE...
        for key in ["xsave", "osxsave", "avx", "fma", "avx2", "avx512f"] {
            assert_eq!(field(strict, "cpuid", key), "0", "{key}: {stdout}");
        }
        assert_eq!(field(strict, "cpuid", "leafd_eax"), "00000000");
        for run in [strict, lax] {
            assert!(run.contains("child id=1 path=sse ok"), "{stdout}");
        }
        // ...and a task that asked for CPUID faulting still gets SIGSEGV.
        assert_eq!(field(strict, "nocpuid", "signal"), "11", "{stdout}");
    }
}
