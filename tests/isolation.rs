//! `--isolation container`: the same image through a real OCI runtime
//! (crun or runc) on the host kernel. The same commands give the same
//! stdout, stderr and exit code as in a microVM; what differs is what the
//! workload sees of the host (the kernel, processes) and who parses the
//! image (the host unpacker, which refuses or confines hostile layers).

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{assert_one_line_error, busybox_rootfs, hull, import_busybox, require_kvm, text};

/// Runs `hull run --rm` with `flags` and `cmd` in one isolation mode,
/// feeding `stdin` when given.
fn run(root: &Path, isolation: &str, flags: &[&str], cmd: &[&str], stdin: Option<&str>) -> Output {
    let mut c = hull(root);
    c.args(["run", "--rm", "--isolation", isolation])
        .args(flags)
        .arg("busybox:test")
        .args(cmd);
    output_with_stdin(c, stdin)
}

/// Runs `c` with `stdin` fed to it (none: /dev/null); its output.
fn output_with_stdin(mut c: Command, stdin: Option<&str>) -> Output {
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    if let Some(input) = stdin {
        let mut i = child.stdin.take().unwrap();
        i.write_all(input.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// The cases both modes must agree on: flags, command, stdin.
/// A case: name, flags, command, stdin.
type Case = (
    &'static str,
    Vec<&'static str>,
    Vec<&'static str>,
    Option<&'static str>,
);

fn cases() -> Vec<Case> {
    vec![
        ("true", vec![], vec!["true"], None),
        ("exit code", vec![], vec!["sh", "-c", "exit 7"], None),
        (
            "stdout and stderr",
            vec![],
            vec!["sh", "-c", "echo out; echo err >&2; exit 1"],
            None,
        ),
        (
            "image and -e env",
            vec!["-e", "FOO=bar"],
            vec!["sh", "-c", "echo $FOO $GREETING; echo $PATH"],
            None,
        ),
        ("image cmd and workdir", vec![], vec![], None),
        ("-w", vec!["-w", "/tmp"], vec!["pwd"], None),
        (
            "-u name",
            vec!["-u", "app"],
            vec!["sh", "-c", "id -u; id -g; id -un"],
            None,
        ),
        (
            "-u uid:gid",
            vec!["-u", "1234:55"],
            vec!["sh", "-c", "id -u; id -g"],
            None,
        ),
        (
            "stdin",
            vec!["-i"],
            vec!["sh", "-c", "cat; echo done"],
            Some("line 1\nline 2\n"),
        ),
        (
            "signal",
            vec![],
            vec!["sh", "-c", "sh -c 'kill -TERM $$'; echo $?"],
            None,
        ),
        (
            "hostname and /etc",
            vec!["--hostname", "box1"],
            vec!["sh", "-c", "hostname; cat /etc/hostname /etc/greeting"],
            None,
        ),
        ("missing program", vec![], vec!["nosuchcmd"], None),
        (
            "-t",
            vec!["-t"],
            vec!["sh", "-c", "tty; echo x; exit 4"],
            None,
        ),
    ]
}

#[test]
fn both_modes_give_the_same_output_and_exit_codes() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    import_busybox(root);
    for (name, flags, cmd, stdin) in cases() {
        let vm = run(root, "vm", &flags, &cmd, stdin);
        let ct = run(root, "container", &flags, &cmd, stdin);
        let (vm_out, vm_err) = text(&vm);
        let (ct_out, ct_err) = text(&ct);
        eprintln!(
            "{name}: vm {:?} container {:?}",
            vm.status.code(),
            ct.status.code()
        );
        assert_eq!(
            ct.status.code(),
            vm.status.code(),
            "{name}: exit codes\nvm: {vm_err}\ncontainer: {ct_err}"
        );
        assert_eq!(ct_out, vm_out, "{name}: stdout");
        if name == "missing program" {
            // Each mode words a program it cannot run its own way (the
            // container's line is the runtime's); the exit code (127) is
            // what scripts check, and each says it in one line.
            assert_eq!(ct_err.lines().count(), 1, "one error line: {ct_err:?}");
            assert!(ct_err.contains("nosuchcmd"), "{ct_err:?}");
        } else {
            assert_eq!(ct_err, vm_err, "{name}: stderr");
        }
    }
    // -p: a server listening only on the container's loopback answers
    // through the host proxy in both modes.
    for isolation in ["vm", "container"] {
        let port = free_port();
        let spec = format!("127.0.0.1:{port}:80");
        let out = hull(root)
            .args([
                "run",
                "-d",
                "--isolation",
                isolation,
                "-p",
                &spec,
                "busybox:test",
            ])
            .args([
                "sh",
                "-c",
                "echo hello-$(hostname) > /tmp/i; httpd -f -p 127.0.0.1:80 -h /tmp",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{isolation}: {:?}", text(&out));
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let body = http_get(port, "/i");
        assert!(
            body.ends_with(&format!("hello-{}\n", &id[..12])),
            "{isolation}: {body:?}"
        );
        let out = hull(root).args(["rm", "-f", &id]).output().unwrap();
        assert!(out.status.success(), "{:?}", text(&out));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` on 127.0.0.1:`port`, retrying while the server starts.
fn http_get(port: u16, path: &str) -> String {
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = write!(s, "GET {path} HTTP/1.0\r\n\r\n");
            let mut body = String::new();
            if s.read_to_string(&mut body).is_ok() && body.contains("200 OK") {
                return body;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("no answer on port {port}");
}

#[test]
fn only_the_container_mode_sees_the_host_kernel() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    import_busybox(root);
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let ct = run(root, "container", &[], &["uname", "-r"], None);
    assert_eq!(text(&ct).0, host);
    let vm = run(root, "vm", &[], &["uname", "-r"], None);
    let (vm_out, vm_err) = text(&vm);
    assert!(vm.status.success(), "{vm_err}");
    assert!(!vm_out.trim().is_empty());
    assert_ne!(vm_out, host, "the VM runs its own kernel");
}

#[test]
fn container_mode_cannot_see_host_processes_and_cleans_up() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    import_busybox(root);
    let me = std::process::id();
    let out = run(
        root,
        "container",
        &[],
        &["sh", "-c", &format!("ls /proc | grep -c '^[0-9]'; cat /proc/1/cmdline | tr '\\0' ' '; test -e /proc/{me} && echo host-pid-$((1)); true")],
        None,
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let mut lines = stdout.lines();
    let count: usize = lines.next().unwrap().parse().unwrap();
    // sh, ls, grep (and a cat at most): never the host's hundreds.
    assert!(count <= 4, "{stdout}");
    assert!(
        lines.next().unwrap().starts_with("sh -c"),
        "PID 1 is the container's: {stdout}"
    );
    assert!(!stdout.contains("host-pid-1"), "{stdout}");
    // --rm left nothing: no container, no runtime state, no mount.
    assert_eq!(names(&root.join("containers")), vec![".lock".to_string()]);
    assert_eq!(names(&root.join("oci/state")), Vec::<String>::new());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&root.display().to_string()), "{mounts}");
}

#[test]
fn a_missing_runtime_is_one_clear_error_and_nothing_is_created() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    import_busybox(root);
    let out = hull(root)
        .args([
            "run",
            "--rm",
            "--isolation",
            "container",
            "--runtime",
            "/nonexistent/crun",
            "busybox:test",
            "true",
        ])
        .output()
        .unwrap();
    assert_one_line_error(&out, "OCI runtime \"/nonexistent/crun\" not found");
    assert_eq!(out.status.code(), Some(125));
    let out = hull(root)
        .args([
            "run",
            "--rm",
            "--isolation",
            "container",
            "--runtime",
            "docker",
            "busybox:test",
            "true",
        ])
        .output()
        .unwrap();
    assert_one_line_error(&out, "Unsupported --runtime \"docker\"");
    let out = hull(root)
        .args([
            "run",
            "--rm",
            "--isolation",
            "chroot",
            "busybox:test",
            "true",
        ])
        .output()
        .unwrap();
    assert_one_line_error(&out, "Invalid --isolation \"chroot\"");
    assert_eq!(names(&root.join("containers")), Vec::<String>::new());
}

/// Both runtimes run the same container (each installed one is tested;
/// a machine without either fails here, never skips).
#[test]
fn crun_and_runc_both_work() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    import_busybox(root);
    for rt in ["crun", "runc"] {
        let out = hull(root)
            .args(["run", "--rm", "--isolation", "container", "--runtime", rt, "-m", "100m", "busybox:test"])
            .args(["sh", "-c", "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null; exit 5"])
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(5), "{rt}: {stderr}");
        assert_eq!(
            stdout.trim(),
            "104857600",
            "{rt}: -m 100m as a cgroup limit"
        );
        // -t: a container that ends at once still has all its output on
        // stdout. (crun copying the terminal itself once lost it to its
        // log when the container ended before its copy loop ran: a race,
        // hence several runs; hull now takes the terminal from crun.)
        for i in 0..8 {
            let out = hull(root)
                .args([
                    "run",
                    "--rm",
                    "--isolation",
                    "container",
                    "--runtime",
                    rt,
                    "-t",
                    "busybox:test",
                ])
                .args(["sh", "-c", &format!("echo run-{i}; exit 6")])
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            let (stdout, stderr) = text(&out);
            assert_eq!(out.status.code(), Some(6), "{rt} -t run {i}: {stderr}");
            assert_eq!(stdout, format!("run-{i}\r\n"), "{rt} -t run {i}");
            assert_eq!(stderr, "", "{rt} -t run {i}");
        }
    }
    assert_eq!(
        names(&root.join("run")),
        Vec::<String>::new(),
        "no socket left"
    );
}

/// Names in `dir` (empty when it does not exist).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The hostile layer of tests/hostile_layers.rs: every kind of entry that
/// aims outside the root, and device nodes.
const MAKE_LAYER: &str = r#"
import io, sys, tarfile
rootfs, canary, escape, out = sys.argv[1:5]
c = canary.strip("/")
up = "../" * 8
t = tarfile.open(out, "w", format=tarfile.GNU_FORMAT)
t.add(rootfs, arcname=".")
def entry(name, kind=tarfile.REGTYPE, data=b"", link="", dev=(0, 0)):
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.mode = kind, link, 0o644
    ti.devmajor, ti.devminor = dev
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    t.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
entry(up + c + "/dotdot", data=b"dotdot\n")
entry("/" + c + "/absolute", data=b"absolute\n")
entry("escape-abs", tarfile.SYMTYPE, link="/" + c)
entry("escape-abs/through-abs", data=b"through-abs\n")
entry("escape-rel", tarfile.SYMTYPE, link=up + c)
entry("escape-rel/through-rel", data=b"through-rel\n")
entry(c + "/host-file", data=b"in-image\n")
entry("hardlink-rel", tarfile.LNKTYPE, link=up + c + "/host-file")
entry("hardlink-abs", tarfile.LNKTYPE, link="/" + c + "/host-file")
entry("clobber", tarfile.SYMTYPE, link=escape)
entry("clobber", data=b"clobbered\n")
entry("disk-node", tarfile.BLKTYPE, dev=(8, 0))
t.close()
"#;

fn import(root: &Path, tar: &Path, name: &str) {
    let out = hull(root)
        .arg("import")
        .arg(tar)
        .arg(name)
        .output()
        .unwrap();
    assert!(out.status.success(), "import {name}: {:?}", text(&out));
}

/// Every file under `dir` with its content (for before/after equality).
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| (e.path(), std::fs::read(e.path()).unwrap_or_default()))
        .collect();
    out.sort();
    out
}

/// The host unpacker refuses what the guest's refuses (a GNU sparse bomb,
/// a truncated blob) with one line and caches nothing, and confines a
/// layer aimed outside its root to the container's own lower directory;
/// device nodes a layer carries open nothing in the container.
#[test]
fn hostile_layers_in_container_mode() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let pid = std::process::id();
    let canary = PathBuf::from(format!("/tmp/hull-iso-canary-{pid}"));
    let escape = PathBuf::from(format!("/tmp/hull-iso-escape-{pid}"));
    std::fs::create_dir_all(&canary).unwrap();
    std::fs::write(canary.join("host-file"), "original\n").unwrap();
    let before = snapshot(&canary);
    let lower_left = |root: &Path| -> Vec<String> {
        names(&root.join("oci/lower"))
            .into_iter()
            .filter(|n| !n.ends_with(".lock"))
            .collect()
    };

    // A 1 GiB GNU sparse file in 10 KiB of tar.
    let bomb_dir = work.join("bomb");
    std::fs::create_dir(&bomb_dir).unwrap();
    let f = std::fs::File::create(bomb_dir.join("bomb")).unwrap();
    f.set_len(1 << 30).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"tail\n", (1 << 30) - 5).unwrap();
    drop(f);
    let bomb_tar = work.join("bomb.tar");
    let st = Command::new("tar")
        .args(["--sparse", "--format=gnu", "-C"])
        .arg(&bomb_dir)
        .arg("-cf")
        .arg(&bomb_tar)
        .arg("bomb")
        .status()
        .unwrap();
    assert!(st.success());
    import(root, &bomb_tar, "bomb:test");
    let out = hull(root)
        .args([
            "run",
            "--rm",
            "--isolation",
            "container",
            "bomb:test",
            "/bin/sh",
        ])
        .output()
        .unwrap();
    assert_one_line_error(&out, "bomb: unsupported GNU sparse file");
    assert_eq!(lower_left(root), Vec::<String>::new());
    assert_eq!(names(&root.join("containers")), vec![".lock".to_string()]);

    // The hostile layer: unpacked, confined, and what the VM mode shows.
    let rootfs = work.join("rootfs");
    busybox_rootfs(&rootfs);
    let layer = work.join("hostile.tar");
    let out = Command::new("python3")
        .arg("-c")
        .arg(MAKE_LAYER)
        .arg(&rootfs)
        .arg(&canary)
        .arg(&escape)
        .arg(&layer)
        .output()
        .expect("missing python3 (scripts/apt-packages)");
    assert!(out.status.success(), "{:?}", text(&out));
    import(root, &layer, "hostile:test");
    let c = canary.display();
    let out = hull(root)
        .args(["run", "--rm", "--isolation", "container", "hostile:test", "/bin/sh", "-c"])
        .arg(format!(
            "cd / && cat {c}/dotdot {c}/absolute {c}/through-abs {c}/through-rel \
             hardlink-rel clobber && readlink escape-abs && \
             stat -c '%h %F' {c}/host-file && stat -c '%F %t,%T' disk-node && \
             ls {c} && if head -c1 disk-node >/dev/null 2>&1; then echo opened; else echo refused; fi"
        ))
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(
        stdout,
        format!(
            "dotdot\nabsolute\nthrough-abs\nthrough-rel\nin-image\nclobbered\n{c}\n\
             3 regular file\nblock special file 8,0\n\
             absolute\ndotdot\nhost-file\nthrough-abs\nthrough-rel\nrefused\n"
        ),
        "stderr: {stderr}"
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(snapshot(&canary), before, "the host canary is untouched");
    assert!(
        !escape.exists(),
        "{} was created on the host",
        escape.display()
    );
    let _ = std::fs::remove_dir_all(&canary);
}

/// `hull compare --format json`: every field, with plausible values.
#[test]
fn compare_json_has_every_field() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    import_busybox(root);
    let out = hull(root)
        .args([
            "compare",
            "busybox:test",
            "true",
            "-n",
            "2",
            "--format",
            "json",
        ])
        .arg("--plot")
        .arg(root.join("chart.svg"))
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["n"], 2);
    assert_eq!(r["command"][0], "true");
    assert!(r["machine"]["cpus"].as_u64().unwrap() >= 1);
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    for mode in ["vm", "container"] {
        let m = &r[mode];
        assert_eq!(m["isolation"], mode);
        let l = &m["latency_s"];
        let (min, med, max) = (
            l["min"].as_f64().unwrap(),
            l["median"].as_f64().unwrap(),
            l["max"].as_f64().unwrap(),
        );
        assert!(
            0.0 < min && min <= med && med <= max && max < 600.0,
            "{mode}: {l}"
        );
        assert!(m["first_start_s"].as_f64().unwrap() > 0.0);
        assert_eq!(m["prepared_before"], false, "{mode}: a fresh root");
        assert_eq!(m["exit_code"], 0);
        // An idle instance costs the host something, and less than 1 GiB.
        let pss = m["idle_pss_kib"].as_u64().unwrap();
        assert!(100 < pss && pss < 1 << 20, "{mode}: {pss} KiB");
        assert!(!m["uname_r"].as_str().unwrap().is_empty());
        let p = &m["probes"];
        assert!(p["visible_pids"].as_u64().unwrap() >= 1);
        assert!(p["mounts"].as_u64().unwrap() >= 1);
        for k in [
            "kernel_modules",
            "kallsyms_lines",
            "cpu_model",
            "host_paths_in_mounts",
            "seccomp",
        ] {
            assert!(!p[k].is_null(), "{mode}: probes.{k}");
        }
    }
    assert_eq!(r["container"]["uname_r"].as_str().unwrap(), host.trim());
    assert_ne!(r["vm"]["uname_r"].as_str().unwrap(), host.trim());
    // The container mode's overlay names the hull root; the VM's mounts
    // are the guest's own.
    assert!(
        r["container"]["probes"]["host_paths_in_mounts"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert_eq!(r["vm"]["probes"]["host_paths_in_mounts"], 0);
    let rows: Vec<&str> = r["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v[0].as_str().unwrap())
        .collect();
    let svg = std::fs::read_to_string(root.join("chart.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("container"),
        "--plot wrote a chart"
    );
    let surface = r["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v[0] == "attack surface")
        .and_then(|v| v[1].as_str())
        .unwrap();
    assert!(
        surface.contains("host syscalls allowed (seccomp mode 2: hull's allow list"),
        "{surface}"
    );
    for row in [
        "latency",
        "idle memory",
        "kernel",
        "host visibility",
        "attack surface",
        "first start",
    ] {
        assert!(rows.contains(&row), "{rows:?}");
    }
}

/// The container mode's seccomp allow list: a new user namespace (which
/// needs no capability) is refused, and so is `adjtimex` reading the
/// clock's state (no capability either; not on the list, where the old
/// deny list let it through), with EPERM; `clone` without namespace
/// flags and the usual personalities pass their argument filters, and
/// ordinary system calls work.
#[test]
fn container_mode_filters_system_calls() {
    // Without the filter (on the host) the same call works.
    let host = Command::new("busybox").arg("adjtimex").output().unwrap();
    assert!(host.status.success(), "{:?}", text(&host));
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    import_busybox(root);
    let out = run(
        root,
        "container",
        &[],
        &[
            "sh",
            "-c",
            "grep '^Seccomp:' /proc/self/status; unshare -U true 2>/dev/null || echo unshare refused; \
             adjtimex 2>&1 >/dev/null | grep -o 'Operation not permitted'; linux32 uname -m; (echo in a subshell); id -u",
        ],
        None,
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(
        stdout, "Seccomp:\t2\nunshare refused\nOperation not permitted\ni686\nin a subshell\n0\n",
        "stderr: {stderr}"
    );
}

/// `hull top` lists a container-mode container's processes as the VM
/// mode does: the container's own PIDs and IDs (its root is 0, not the
/// subordinate host ID), Docker-like columns.
#[test]
fn top_lists_the_containers_own_processes() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    import_busybox(root);
    let out = hull(root)
        .args(["run", "-d", "--isolation", "container", "busybox:test"])
        .args(["sh", "-c", "sleep 301 & sleep 300"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // The background sleep may take a moment to exec.
    let mut table = String::new();
    for _ in 0..50 {
        let out = hull(root).args(["top", &id]).output().unwrap();
        assert!(out.status.success(), "{:?}", text(&out));
        table = text(&out).0;
        if table.contains("sleep 301") && table.contains("sleep 300") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["UID", "PID", "PPID", "ELAPSED", "TIME", "CMD"],
        "{table}"
    );
    assert_eq!(rows.len(), 3, "{table}");
    let row = |cmd: &str| rows.iter().find(|r| r[5..].join(" ") == cmd).unwrap();
    assert_eq!(row("sleep 300")[..3], ["0", "1", "0"], "{table}");
    let bg = row("sleep 301");
    assert_eq!((bg[0], bg[2]), ("0", "1"), "{table}");
    let out = hull(root).args(["rm", "-f", &id]).output().unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
}

/// `hull exec` into a container-mode container: output, exit code, stdin,
/// and `-t` with stdio that is not a terminal (a pipe here): the output on
/// stdout with CRLF line ends, as the VM mode and Docker give it. Both
/// runtimes with the default user namespace (runc's `exec` joins the user
/// namespace first and could not then enter a network namespace of the
/// host's: hull makes it inside the container's user namespace), and runc
/// without one.
#[test]
fn exec_into_a_container_mode_container() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    import_busybox(root);
    for (rt, userns) in [("crun", "auto"), ("runc", "auto"), ("runc", "host")] {
        let name = format!("exec-{rt}-{userns}");
        let mut run = hull(root);
        run.env("HULL_USERNS", userns);
        let out = run
            .args([
                "run",
                "-d",
                "--name",
                &name,
                "--isolation",
                "container",
                "--runtime",
                rt,
            ])
            .args(["busybox:test", "sleep", "300"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{rt}: {:?}", text(&out));
        let exec = |flags: &[&str], cmd: &str, input: Option<&str>| {
            let mut c = hull(root);
            c.arg("exec").args(flags).args([&name, "sh", "-c", cmd]);
            output_with_stdin(c, input)
        };
        let out = exec(&[], "echo out; echo err >&2; exit 4", None);
        assert_eq!(out.status.code(), Some(4), "{rt}: {:?}", text(&out));
        assert_eq!(text(&out), ("out\n".into(), "err\n".into()), "{rt}");
        // In the container's user namespace (or the host's), root there.
        let out = exec(&[], "id -u; cat /proc/self/uid_map", None);
        let (stdout, _) = text(&out);
        let map: Vec<&str> = stdout
            .lines()
            .nth(1)
            .unwrap_or("")
            .split_whitespace()
            .collect();
        assert_eq!(stdout.lines().next(), Some("0"), "{rt} {userns}: {stdout}");
        assert_eq!(map[0], "0", "{rt} {userns}: {stdout}");
        assert_eq!(map[1] != "0", userns == "auto", "{rt} {userns}: {stdout}");
        let out = exec(&["-i"], "tr a-z A-Z", Some("piped in\n"));
        assert_eq!(text(&out).0, "PIPED IN\n", "{rt}: {:?}", text(&out));
        // runc relayed the terminal through a second one in the
        // foreground: now and then `\r\r\n` (1 run in a few dozen).
        for i in 0..8 {
            let out = exec(&["-t"], &format!("echo tty-{i}; exit 3"), None);
            assert_eq!(out.status.code(), Some(3), "{rt} -t {i}: {:?}", text(&out));
            assert_eq!(
                text(&out),
                (format!("tty-{i}\r\n"), String::new()),
                "{rt} -t {i}"
            );
        }
        // A command that does not start: the runtime's reason on stderr
        // (with -t, crun's child writes it to the terminal), and the VM
        // mode's exit codes: 127 not found, 126 cannot be executed.
        for flags in [&[][..], &["-t"]] {
            for (cmd, code, said) in [
                ("no-such-command", 127, "no-such-command"),
                ("/etc", 126, ""),
            ] {
                let mut c = hull(root);
                c.arg("exec").args(flags).args([&name, cmd]);
                let out = output_with_stdin(c, None);
                let (stdout, stderr) = text(&out);
                let what = format!("{rt} exec {flags:?} {cmd}: {stderr:?}");
                assert_eq!(out.status.code(), Some(code), "{what}");
                assert!(stdout.is_empty(), "{what}: {stdout:?}");
                assert!(!stderr.is_empty() && stderr.contains(said), "{what}");
            }
        }
        let out = hull(root).args(["rm", "-f", &name]).output().unwrap();
        assert!(out.status.success(), "{rt}: {:?}", text(&out));
    }
    assert_eq!(
        names(&root.join("run")),
        Vec::<String>::new(),
        "no socket left"
    );
    assert_eq!(
        names(&root.join("oci").join("tmp")),
        Vec::<String>::new(),
        "no process or PID file left"
    );
}

/// `hull system prune` keeps the unpacked root of an image still present
/// and removes it (and a crashed unpack's leftovers) once no image and no
/// container uses it.
#[test]
fn system_prune_removes_unused_lower_dirs() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    import_busybox(root);
    let out = run(root, "container", &[], &["true"], None);
    assert!(out.status.success(), "{:?}", text(&out));
    let lower = || -> Vec<String> {
        names(&root.join("oci/lower"))
            .into_iter()
            .filter(|n| !n.ends_with(".lock"))
            .collect()
    };
    assert_eq!(lower().len(), 1);
    std::fs::create_dir_all(root.join("oci/lower/.tmp-0123abcd-99999/bin")).unwrap();
    let prune = || {
        let out = hull(root).args(["system", "prune", "-f"]).output().unwrap();
        assert!(out.status.success(), "{:?}", text(&out));
        text(&out).0
    };
    let printed = prune();
    assert!(
        printed.contains("Deleted 1 container-mode root filesystem(s)"),
        "{printed}"
    );
    let kept = lower();
    assert_eq!(kept.len(), 1, "the image's own stays: {kept:?}");
    let out = hull(root).args(["rmi", "busybox:test"]).output().unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    let printed = prune();
    assert!(
        printed.contains("Deleted 1 container-mode root filesystem(s)"),
        "{printed}"
    );
    assert_eq!(names(&root.join("oci/lower")), Vec::<String>::new());
}

/// `inspect`'s `.Container.UserNamespace` of container `id`.
fn user_namespace(root: &Path, id: &str) -> serde_json::Value {
    let out = hull(root).args(["inspect", id]).output().unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["Container"]["UserNamespace"].clone()
}

/// The ID of the newest container.
fn last_container(root: &Path) -> String {
    let out = hull(root)
        .args(["ps", "-lq", "--no-trunc"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Container root is not host root: the container sees a uid_map from
/// its root to the hull root's subordinate range, image files are its
/// root's, and what container root writes belongs to that range's first
/// ID on the host's upper directory. `-u` beyond the range is one error
/// line. `HULL_USERNS=host` (as a host without user namespaces) runs with
/// host IDs and says so on `run` and in `inspect`.
#[test]
fn container_root_is_a_subordinate_id_on_the_host() {
    use std::os::unix::fs::MetadataExt;
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    import_busybox(root);
    let out = hull(root)
        .args(["run", "--isolation", "container", "busybox:test"])
        .args([
            "sh",
            "-c",
            "cat /proc/self/uid_map; echo x > /made-by-root; id -u; stat -c %u /bin/busybox /etc/hosts; \
             ls /sys/class/net; ping -c 1 -W 5 127.0.0.1 >/dev/null && echo raw-ping",
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr, "", "no warning with a user namespace");
    let id = last_container(root);
    let ns = user_namespace(root, &id);
    assert_eq!(ns["Mode"], "Mapped", "{ns}");
    let base = ns["HostUid"].as_u64().unwrap();
    assert!(base >= 100_000, "{ns}");
    let map: Vec<u64> = stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(map, vec![0, base, 65_536], "{stdout}");
    // Its network namespace is its user namespace's: its sysfs shows
    // that namespace's interfaces, and its root may open raw sockets
    // there (CAP_NET_RAW, as in Docker: busybox ping).
    assert_eq!(
        stdout.lines().skip(1).collect::<Vec<_>>(),
        ["0", "0", "0", "eth0", "lo", "raw-ping"]
    );
    let made = root.join("containers").join(&id).join("upper/made-by-root");
    let meta = std::fs::metadata(&made).unwrap();
    assert_eq!(
        (u64::from(meta.uid()), u64::from(meta.gid())),
        (base, ns["HostGid"].as_u64().unwrap())
    );
    let out = hull(root).args(["rm", &id]).output().unwrap();
    assert!(out.status.success(), "{:?}", text(&out));

    let out = run(root, "container", &["-u", "70000"], &["true"], None);
    assert_one_line_error(
        &out,
        "User 70000 is outside the container's user namespace (IDs 0-65535)",
    );

    let out = hull(root)
        .env("HULL_USERNS", "host")
        .args(["run", "--isolation", "container", "busybox:test"])
        .args(["sh", "-c", "cat /proc/self/uid_map; echo x > /made-by-root"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stderr,
        "WARNING: no user namespace (HULL_USERNS=host): container root is host root\n"
    );
    let map: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(map, ["0", "0", "4294967295"]);
    let id = last_container(root);
    assert_eq!(
        user_namespace(root, &id),
        serde_json::json!({"Mode": "Host", "Reason": "HULL_USERNS=host"})
    );
    let made = root.join("containers").join(&id).join("upper/made-by-root");
    assert_eq!(std::fs::metadata(&made).unwrap().uid(), 0);
    let out = hull(root).args(["rm", &id]).output().unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
}
