//! The command line's contract with scripts: Docker's exit codes (125
//! hull failed, 126 cannot invoke, 127 not found, else the program's own),
//! one `hull: ` line per error, help, version and completions. Cases that
//! need no VM are many and cheap; those that do share one image and as
//! few VM starts as possible.

mod common;

use std::path::Path;
use std::process::Output;

use common::{hull, import_busybox, require_kvm, text};

/// Asserts the exact exit code and, for a failure, exactly one stderr
/// line `hull: …` containing `needle`.
fn assert_fails(out: &Output, code: i32, needle: &str) {
    let (stdout, stderr) = text(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one error line: {stderr:?}");
    assert!(stderr.starts_with("hull: "), "{stderr:?}");
    assert!(stderr.contains(needle), "{stderr:?} lacks {needle:?}");
}

fn run(root: &Path, args: &[&str]) -> Output {
    hull(root).args(args).output().unwrap()
}

#[test]
fn usage_errors_exit_125_in_one_line_and_unknown_commands_1() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let out = run(root, &["run", "--nope", "busybox:test"]);
    assert_fails(&out, 125, "unexpected argument '--nope'");
    assert_fails(&out, 125, "see 'hull run --help'");
    assert_fails(&run(root, &["run"]), 125, "<IMAGE>");
    assert_fails(&run(root, &["ps", "--nope"]), 125, "'--nope'");
    assert_fails(&run(root, &["exec", "--nope", "c", "ls"]), 125, "'--nope'");
    assert_fails(&run(root, &["run", "--cpus", "x", "i"]), 125, "--cpus");
    assert_fails(&run(root, &["nosuchcmd"]), 1, "unrecognized subcommand");
}

#[test]
fn run_failures_before_a_vm_exit_125() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    import_busybox(root);
    // (A missing image is pulled first: see tests/cli_auto_pull.rs.)
    assert_fails(
        &run(root, &["run", "--pull", "never", "nosuch:1"]),
        125,
        "No such image: nosuch:1",
    );
    let minimum = "the minimum is 64m (Docker's is 6MB";
    assert_fails(
        &run(root, &["run", "-m", "1", "busybox:test"]),
        125,
        minimum,
    );
    assert_fails(
        &run(root, &["run", "-m", "32m", "busybox:test"]),
        125,
        minimum,
    );
    assert_fails(
        &run(root, &["run", "-m", "x", "busybox:test"]),
        125,
        "Invalid size",
    );
    assert_fails(
        &run(root, &["run", "--name", "a/b", "busybox:test"]),
        125,
        "name",
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let publish = format!("127.0.0.1:{port}:80");
    let out = run(
        root,
        &["run", "--rm", "-p", &publish, "busybox:test", "true"],
    );
    assert_fails(&out, 125, "already in use");
    // Other commands' failures are plain errors, as Docker's.
    assert_fails(
        &run(root, &["exec", "nosuch", "ls"]),
        1,
        "No such container: nosuch",
    );
    assert_fails(
        &run(root, &["rm", "nosuch"]),
        1,
        "No such container: nosuch",
    );
    assert_fails(
        &run(root, &["rmi", "nosuch:1"]),
        1,
        "No such image: nosuch:1",
    );
    // A reader that leaves early (`| head -c0`) ends `save` quietly.
    let mut save = hull(root)
        .args(["save", "busybox:test"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(save.stdout.take());
    let out = save.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(141), "{:?}", text(&out));
    assert!(out.stderr.is_empty(), "{:?}", text(&out));
    // Nothing was left behind by the refused runs.
    let ps = run(root, &["ps", "-aq"]);
    assert!(
        ps.status.success() && ps.stdout.is_empty(),
        "{:?}",
        text(&ps)
    );
}

#[test]
fn run_and_exec_exit_126_127_or_the_program_s_code() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    import_busybox(root);

    // run: the first start also prepares the image's disk.
    let out = run(root, &["run", "--rm", "busybox:test", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{:?}", text(&out));
    let out = run(root, &["run", "--rm", "busybox:test", "nosuchcmd"]);
    assert_fails(
        &out,
        127,
        r#"exec: "nosuchcmd": executable file not found in $PATH"#,
    );
    let out = run(root, &["run", "--rm", "busybox:test", "/etc"]);
    assert_fails(&out, 126, r#"exec: "/etc": permission denied"#);
    let out = run(root, &["run", "-d", "--rm", "busybox:test", "nosuchcmd"]);
    assert_fails(&out, 127, "executable file not found");

    // A name in use is hull's failure; the first container stays.
    let out = run(
        root,
        &["run", "-d", "--name", "svc", "busybox:test", "sleep", "600"],
    );
    assert!(out.status.success(), "{:?}", text(&out));
    let out = run(root, &["run", "--name", "svc", "busybox:test", "true"]);
    assert_fails(&out, 125, "already in use");

    // exec: the same codes, in a running container.
    let out = run(root, &["exec", "svc", "sh", "-c", "exit 4"]);
    assert_eq!(out.status.code(), Some(4), "{:?}", text(&out));
    let out = run(root, &["exec", "svc", "nosuchcmd"]);
    assert_fails(&out, 127, r#"exec: "nosuchcmd": executable file not found"#);
    let out = run(root, &["exec", "svc", "/etc"]);
    assert_fails(&out, 126, "permission denied");
    let out = run(root, &["exec", "svc", "/no/such"]);
    assert_fails(&out, 127, "no such file or directory");

    let out = run(root, &["rm", "-f", "svc"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let out = run(root, &["exec", "svc", "true"]);
    assert_fails(&out, 1, "No such container");
}

#[test]
fn help_version_and_completions_succeed_and_hide_internal_commands() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    // `hull` alone prints help and succeeds, as `docker` alone does.
    for args in [&[][..], &["--help"][..]] {
        let out = run(root, args);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert!(stdout.contains("Usage: hull"), "{stdout}");
        assert!(stdout.contains("completion"), "{stdout}");
        assert!(!stdout.contains("__container-vmm"), "{stdout}");
    }
    // No tip points at the internal command.
    let out = run(root, &["__contai"]);
    assert_fails(&out, 1, "unrecognized subcommand '__contai'");
    assert!(!text(&out).1.contains("__container-vmm"));

    let out = run(root, &["version"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let version = format!(" Version:     {}", env!("CARGO_PKG_VERSION"));
    for want in [&version[..], " Kernel:", " Agent:", "(protocol ", " Kind:"] {
        assert!(stdout.contains(want), "{want:?} missing from {stdout}");
    }

    for (shell, marker) in [
        ("bash", "complete -F _hull"),
        ("zsh", "#compdef hull"),
        ("fish", "complete -c hull"),
    ] {
        let out = run(root, &["completion", shell]);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{shell}: {stderr}");
        assert!(stdout.contains(marker), "{shell}: {marker:?}");
        assert!(stdout.contains("inspect"), "{shell}");
        assert!(!stdout.contains("__container-vmm"), "{shell}");
    }
    assert_fails(&run(root, &["completion", "tcsh"]), 125, "tcsh");
}

/// `--rootfs-disk` (containerd's shim runs a container on a disk made
/// from containerd's snapshot, docs/kubernetes.md) is hidden from help,
/// refuses what it cannot honour, and fails in one line on a missing disk.
#[test]
fn shim_flags_are_hidden_and_rootfs_disk_checked_before_a_vm() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    // The shim's other hidden flags too (exec --pid-file, kill --process).
    for (command, flag) in [
        ("run", "rootfs-disk"),
        ("exec", "pid-file"),
        ("kill", "--process"),
    ] {
        let help = run(root, &[command, "--help"]);
        assert!(!text(&help).0.contains(flag), "{}", text(&help).0);
    }
    assert_fails(
        &run(
            root,
            &["run", "--rootfs-disk", "/nonexistent.erofs", "x", "true"],
        ),
        125,
        "/nonexistent.erofs",
    );
    let disk = root.join("d.erofs");
    std::fs::write(&disk, b"").unwrap();
    let disk = disk.to_str().unwrap();
    assert_fails(
        &run(
            root,
            &["run", "--rootfs-disk", disk, "-v", "v:/v", "x", "true"],
        ),
        125,
        "not supported with --rootfs-disk",
    );
    // Nothing was created by the refusals.
    let ps = run(root, &["ps", "-aq"]);
    assert_eq!(text(&ps).0, "", "{}", text(&ps).1);
}
