//! A first run's stages on stderr: live lines when stderr is a terminal
//! (each stage named, each ending with ✓ and its time), nothing on a pipe
//! (Docker's rule), one plain line per stage with `--progress plain`, and
//! never anything on stdout, which is the container's; `run -d` shows
//! what its detached VMM process does, `start -a` of a created container
//! what its first start does. Each case uses a
//! fresh hull root so the image's filesystem and warm snapshot are made
//! again (the template snapshots are shared with the other tests).

mod common;

use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{hull, import_busybox, require_kvm, text};

const PREPARE: &str = "Preparing the image's filesystem";
const WARM: &str = "Saving the image's warm snapshot";

fn fresh_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    import_busybox(dir.path());
    dir
}

fn run_cmd(root: &Path, extra: &[&str]) -> Command {
    let mut cmd = hull(root);
    cmd.arg("run").arg("--rm").args(extra);
    cmd.args(["busybox:test", "echo", "container output"]);
    cmd
}

/// Runs `cmd` with stderr on a pseudo-terminal; returns (exit code,
/// stdout, what the terminal showed).
fn with_stderr_on_pty(mut cmd: Command) -> (Option<i32>, String, String) {
    let (mut m, mut s) = (0, 0);
    // SAFETY: openpty writes two descriptors; the other pointers may be null.
    let rc = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: fresh descriptors from openpty, owned here.
    let (mut master, slave) = unsafe { (File::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(slave);
    let child = cmd.spawn().unwrap();
    // `cmd` holds the slave open: drop it so the terminal closes with hull.
    drop(cmd);
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        // Ends with EIO once the child, the slave's last holder, is gone.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    let out = child.wait_with_output().unwrap();
    let seen = reader.join().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        seen,
    )
}

#[test]
fn first_run_stages_live_on_a_terminal_plain_on_request_none_on_a_pipe() {
    require_kvm();
    // A terminal: live lines, each stage finished with ✓ and its time.
    let root = fresh_root();
    let (code, stdout, tty) = with_stderr_on_pty(run_cmd(root.path(), &[]));
    assert_eq!(code, Some(0), "terminal showed: {tty}");
    assert_eq!(stdout, "container output\n", "progress stays off stdout");
    for done in [format!("✓ {PREPARE}: 1 layer, "), format!("✓ {WARM} (")] {
        assert!(tty.contains(&done), "{done:?} missing from {tty:?}");
    }
    assert!(!tty.contains('✗'), "{tty:?}");

    // A pipe: nothing but the container's output.
    let root = fresh_root();
    let out = run_cmd(root.path(), &[]).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, "container output\n");
    assert_eq!(stderr, "", "quiet on a pipe");

    // `--progress plain` on a pipe: a line per stage with its time.
    let root = fresh_root();
    let out = run_cmd(root.path(), &["--progress", "plain"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, "container output\n");
    let prepare = stderr
        .lines()
        .find(|l| l.starts_with(PREPARE))
        .unwrap_or_else(|| panic!("no {PREPARE:?} line in {stderr:?}"));
    assert!(
        prepare.contains(": 1 layer, ") && prepare.ends_with("s)"),
        "{prepare}"
    );
    assert!(stderr.lines().any(|l| l.starts_with(WARM)), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "no terminal codes: {stderr:?}");

    // A second run of the same image has nothing slow left to show.
    let out = run_cmd(root.path(), &["--progress", "plain"])
        .output()
        .unwrap();
    assert_eq!(text(&out).1, "");

    // `run -d`: the detached VMM does the work; the command waiting for
    // it shows the stages, then prints the ID.
    let root = fresh_root();
    let mut cmd = hull(root.path());
    cmd.args(["run", "-d", "--name", "bg", "busybox:test", "sleep", "60"]);
    let (code, stdout, tty) = with_stderr_on_pty(cmd);
    assert_eq!(code, Some(0), "terminal showed: {tty}");
    assert_eq!(stdout.trim().len(), 64, "{stdout}");
    for done in [format!("✓ {PREPARE}: 1 layer, "), format!("✓ {WARM} (")] {
        assert!(tty.contains(&done), "{done:?} missing from {tty:?}");
    }
    let out = hull(root.path()).args(["rm", "-f", "bg"]).output().unwrap();
    assert!(out.status.success(), "{:?}", text(&out));

    // `create` then `start -a`: the first start shows its stages and runs
    // the created container's command.
    let root = fresh_root();
    let out = hull(root.path())
        .args([
            "create",
            "--name",
            "later",
            "busybox:test",
            "echo",
            "started later",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    let mut cmd = hull(root.path());
    cmd.args(["start", "-a", "later"]);
    let (code, stdout, tty) = with_stderr_on_pty(cmd);
    assert_eq!(code, Some(0), "terminal showed: {tty}");
    assert_eq!(stdout, "started later\n");
    assert!(tty.contains(&format!("✓ {PREPARE}: 1 layer, ")), "{tty:?}");
    let status = hull(root.path())
        .args(["ps", "-a", "--format", "{{.Status}}"])
        .output()
        .unwrap();
    assert!(
        text(&status).0.starts_with("Exited (0) "),
        "{:?}",
        text(&status)
    );
}
