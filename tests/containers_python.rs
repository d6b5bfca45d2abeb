//! A minimal Debian python image (python3-minimal, made from Debian packages
//! by tests/support/make-python-image) runs in hull. Two boots: the first
//! prepares the image's root filesystem in a helper VM and runs the
//! issue's `python3 -c 'print(1+1)'`; the second runs the image's own CMD
//! (python3) on a script fed through stdin, on the cached root filesystem.
//! Both print the figures docs/measurements.md records.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use common::{hull, import_python_image, require_kvm, text};

/// The preparation record hull keeps beside each prepared disk.
fn prepared(root: &Path) -> Vec<serde_json::Value> {
    std::fs::read_dir(root.join("rootfs"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap())
        .collect()
}

// Runs inside the container: the interpreter's version, a child python's
// output, and how long the first (cold) and a second interpreter took to
// start, from the guest's clock: the first from its process start time in
// /proc, the second around a subprocess.
const STARTUP_SCRIPT: &str = r#"
import os, subprocess, sys, time
ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
first = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
print(sys.version_info[:2], sys.executable)
t = time.monotonic()
child = subprocess.run([sys.executable, "-c", "print(1+1)"], capture_output=True)
second = time.monotonic() - t
sys.stdout.write(child.stdout.decode())
print(f"python startup in the guest: first {first:.2f} s, second {second:.2f} s", file=sys.stderr)
"#;

#[test]
fn python_image_runs_python() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let image = import_python_image(root, false, "python:test");
    let entries = image.summary["entries"].as_u64().unwrap();
    let bytes = image.summary["uncompressed_bytes"].as_u64().unwrap();
    // Tens of MB at most and a few dozen files: the point of the builder.
    assert!(bytes < 20_000_000, "image too big: {bytes} bytes");
    assert!(entries < 60, "image has too many entries: {entries}");

    // 1. First run: the helper VM prepares the root filesystem, then the
    //    container runs the issue's command.
    let start = Instant::now();
    let out = hull(root)
        .args(["run", "--rm", "python:test", "python3", "-c", "print(1+1)"])
        .output()
        .unwrap();
    let first_run = start.elapsed();
    let (stdout, stderr) = text(&out);
    assert_eq!(stdout, "2\n", "stderr: {stderr}");
    assert_eq!(stderr, "");
    assert_eq!(out.status.code(), Some(0));
    let prep = prepared(root);
    assert_eq!(prep.len(), 1, "one image, one preparation: {prep:?}");
    let prep = &prep[0];
    // Every entry of the tarball was created in the guest, no more.
    assert_eq!(prep["entries"].as_u64(), Some(entries), "{prep}");
    assert!(prep["tar_bytes"].as_u64().unwrap() >= bytes, "{prep}");
    let unpack = prep["unpack_seconds"].as_f64().unwrap();
    let total = prep["total_seconds"].as_f64().unwrap();
    eprintln!(
        "python image: {entries} entries, {:.1} MB of files, {:.1} MB layer; \
         preparation {total:.1} s in all, unpacking {unpack:.1} s \
         ({:.2} MB/s, {:.1} entries/s); first `hull run` {:.1} s",
        bytes as f64 / 1e6,
        prep["compressed_bytes"].as_f64().unwrap() / 1e6,
        prep["tar_bytes"].as_f64().unwrap() / 1e6 / unpack,
        entries as f64 / unpack,
        first_run.as_secs_f64()
    );

    // 2. The image's CMD (python3) reads a script from stdin (-i); the
    //    root filesystem comes from the cache.
    let start = Instant::now();
    let mut child = hull(root)
        .args(["run", "--rm", "-i", "python:test"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(STARTUP_SCRIPT.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let second_run = start.elapsed();
    let (stdout, stderr) = text(&out);
    assert_eq!(stdout, "(3, 11) /usr/bin/python3\n2\n", "stderr: {stderr}");
    assert!(
        stderr.starts_with("python startup in the guest: first ") && stderr.lines().count() == 1,
        "{stderr:?}"
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(prepared(root).len(), 1, "the second run prepared again");
    eprintln!(
        "{}; second `hull run` {:.1} s",
        stderr.trim_end(),
        second_run.as_secs_f64()
    );
}
