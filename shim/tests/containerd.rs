//! containerd (Debian's 1.6) driving hull microVMs through
//! `containerd-shim-hull-v2`: a private containerd (root, state, socket
//! under the temp dir) is started once per test process with this build's
//! shim first on its PATH, a busybox image made the way hull's other tests
//! make it is `hull save`d as an OCI archive and `ctr image import`ed, and
//! each test runs tasks with `--runtime io.containerd.hull.v2`.
//!
//! Needs: containerd and ctr (scripts/apt-packages-test), mkfs.erofs,
//! /dev/kvm, HULL_KERNEL/HULL_AGENT (scripts/build-all), and the `hull`
//! binary of this build beside the shim (`cargo test --workspace` builds
//! it; alone: `cargo build --bin hull` first).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const RUNTIME: &str = "io.containerd.hull.v2";
const IMAGE: &str = "docker.io/library/busybox:hull-ctr";
const NAMESPACE: &str = "hulltest";

/// The test process's containerd: its socket and state directory.
struct Containerd {
    socket: PathBuf,
    state: PathBuf,
}

fn shim_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-hull-v2"))
}

fn hull_binary() -> PathBuf {
    let hull = shim_binary().with_file_name("hull");
    assert!(
        hull.is_file(),
        "{} is missing: the shim runs the hull of its own build (cargo build --bin hull)",
        hull.display()
    );
    hull
}

/// The hull root the shim's VMs use: kept across runs (like the shared
/// fast-start snapshots) so that the image's disk and warm snapshot are
/// made once per machine, not once per run.
fn hull_root() -> PathBuf {
    std::env::temp_dir().join("hull-containerd-test-root")
}

fn hull(args: &[&str]) -> Command {
    let mut cmd = Command::new(hull_binary());
    cmd.args(args)
        .env("HULL_ROOT", hull_root())
        .env("HULL_SNAPSHOT_DIR", snapshot_dir());
    cmd
}

fn snapshot_dir() -> PathBuf {
    std::env::temp_dir().join("hull-test-snapshots")
}

fn require_tools() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "this test boots microVMs and needs /dev/kvm"
    );
    for tool in ["containerd", "ctr", "mkfs.erofs"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{tool} is missing: install Debian's containerd and erofs-utils \
             (scripts/install-deps --tests)"
        );
    }
}

/// Starts the shared containerd once (from a thread that lives as long as
/// the test process: containerd gets SIGKILL when its parent thread ends,
/// so no run leaves a daemon behind) and imports the test image.
fn containerd() -> &'static Containerd {
    static DAEMON: OnceLock<Containerd> = OnceLock::new();
    DAEMON.get_or_init(|| {
        require_tools();
        remove_dead_runs();
        remove_leftover_containers();
        let base = std::env::temp_dir().join(format!("hull-containerd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let daemon = Containerd {
            socket: base.join("containerd.sock"),
            state: base.join("state"),
        };
        let config = base.join("config.toml");
        std::fs::write(&config, containerd_config(&base, &daemon)).unwrap();
        spawn_daemon(&config, &base.join("containerd.log"));
        wait_for_socket(&daemon.socket, &base.join("containerd.log"));
        import_image(&daemon, &base);
        daemon
    })
}

/// Removes the containers a killed earlier run left in the kept hull
/// root: this run's would collide with their names (`ctrd.NS.ID`). Called
/// before this process's daemon exists, so none of them is this run's.
fn remove_leftover_containers() {
    kill_shims_of_dead_runs();
    let Ok(out) = hull(&["ps", "-a", "--format", "{{.Names}}"]).output() else {
        return;
    };
    let ours = format!("ctrd.{NAMESPACE}.");
    for name in String::from_utf8_lossy(&out.stdout).lines() {
        if name.starts_with(&ours) {
            let _ = hull(&["rm", "-f", name]).output();
        }
    }
}

/// Kills the shims of killed earlier runs: a shim outlives its containerd
/// (`-address TMP/hull-containerd-PID/containerd.sock`, PID gone) and
/// would hold that run's container and its VM.
fn kill_shims_of_dead_runs() {
    let prefix = std::env::temp_dir().join("hull-containerd-");
    let prefix = prefix.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args
            .first()
            .is_some_and(|a| a.ends_with("containerd-shim-hull-v2"))
        {
            continue;
        }
        let run_pid = args
            .windows(2)
            .find(|w| w[0] == "-address")
            .and_then(|w| w[1].strip_prefix(&prefix))
            .and_then(|rest| rest.split('/').next())
            .and_then(|p| p.parse::<u32>().ok());
        if run_pid.is_some_and(|p| !Path::new("/proc").join(p.to_string()).exists()) {
            // SAFETY: kill(2) of a leftover shim process found just above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Removes the containerd directories of earlier test processes that
/// are gone (their daemons died with them).
fn remove_dead_runs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("hull-containerd-") else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn containerd_config(base: &Path, d: &Containerd) -> String {
    format!(
        "version = 2\nroot = \"{}\"\nstate = \"{}\"\n\
         disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
         [grpc]\n  address = \"{}\"\n",
        base.join("root").display(),
        d.state.display(),
        d.socket.display()
    )
}

/// containerd, with this build's shim first on its PATH and the test's
/// hull root and guest files in its environment (shims inherit it).
fn spawn_daemon(config: &Path, log: &Path) {
    let path = format!(
        "{}:{}",
        shim_binary().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("containerd");
    cmd.arg("--config")
        .arg(config)
        .env("PATH", path)
        .env("HULL_ROOT", hull_root())
        .env("HULL_SNAPSHOT_DIR", snapshot_dir())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap());
    // SAFETY: prctl(PR_SET_PDEATHSIG) between fork and exec is
    // async-signal-safe and touches no memory of ours.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let child = cmd.spawn();
        let started = child.is_ok();
        tx.send(child.map(|c| c.id()).map_err(|e| e.to_string()))
            .unwrap();
        // This thread is containerd's parent: it must outlive every test.
        if started {
            loop {
                std::thread::park();
            }
        }
    });
    rx.recv().unwrap().expect("starting containerd");
}

fn wait_for_socket(socket: &Path, log: &Path) {
    let start = Instant::now();
    while !socket.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "containerd did not start: {}",
            std::fs::read_to_string(log.with_extension("err")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A busybox userland (Debian's busybox-static, as hull's other tests
/// build theirs) with fixed mtimes, so that every run makes the same
/// image (and the shim's disk cache and warm snapshot stay valid).
fn busybox_tar(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "etc", "tmp", "proc", "dev", "sys"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static");
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\n").unwrap();
    let tar = dir.join("rootfs.tar");
    let out = Command::new("tar")
        .args(["--sort=name", "--mtime=@0", "--owner=0", "--group=0", "-C"])
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tar
}

fn import_image(d: &Containerd, base: &Path) {
    let tar = busybox_tar(base);
    let out = hull(&["import"])
        .arg(&tar)
        .arg("busybox:hull-ctr")
        .output()
        .unwrap();
    assert!(out.status.success(), "hull import: {}", text(&out));
    let oci = base.join("busybox-oci.tar");
    let out = hull(&["save", "--format", "oci-archive", "-o"])
        .arg(&oci)
        .arg("busybox:hull-ctr")
        .output()
        .unwrap();
    assert!(out.status.success(), "hull save: {}", text(&out));
    let out = ctr(d, &["image", "import", "--all-platforms"])
        .arg(&oci)
        .output()
        .unwrap();
    assert!(out.status.success(), "ctr image import: {}", text(&out));
    let out = ctr(d, &["image", "ls", "-q"]).output().unwrap();
    assert!(
        text(&out).contains(IMAGE),
        "imported images: {}",
        text(&out)
    );
}

fn ctr(d: &Containerd, args: &[&str]) -> Command {
    let mut cmd = Command::new("ctr");
    cmd.arg("--address")
        .arg(&d.socket)
        .args(["--namespace", NAMESPACE])
        .args(args)
        .stdin(Stdio::null());
    cmd
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}, stdout {:?}, stderr {:?}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` to its end, failing the test after `limit`.
fn run_limited(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

/// A first run may boot the fast-start template and make the image's
/// warm snapshot (about a minute on PVM hosts); later ones take seconds.
const RUN_LIMIT: Duration = Duration::from_secs(600);

fn ctr_run(d: &Containerd, id: &str, command: &[&str]) -> Output {
    let mut cmd = ctr(d, &["run", "--rm", "--runtime", RUNTIME, IMAGE, id]);
    cmd.args(command);
    run_limited(cmd, RUN_LIMIT)
}

/// Everything of task `id` that must be gone after its delete: its shim
/// and hull processes (by command line) and the shim's socket.
fn leftovers(id: &str, socket: Option<&Path>) -> Vec<String> {
    let name = format!("ctrd.{NAMESPACE}.{id}");
    let mut left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| {
            let shim = c.contains("containerd-shim-hull-v2") && c.contains(&format!("-id {id} "));
            shim || c.split(' ').any(|w| w == name)
        })
        .collect();
    if let Some(s) = socket.filter(|s| s.exists()) {
        left.push(format!("socket {}", s.display()));
    }
    left
}

/// Waits up to 10 s for `id`'s leftovers to go (a shim exits just after
/// containerd's last request); returns those that stayed.
fn wait_no_leftovers(id: &str, socket: Option<&Path>) -> Vec<String> {
    let start = Instant::now();
    loop {
        let left = leftovers(id, socket);
        if left.is_empty() || start.elapsed() > Duration::from_secs(10) {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The shim's ttrpc socket of a live task (its bundle's `address` file).
/// `ctr run -d` of a task that sleeps; its shim's socket.
fn run_detached_sleep(d: &Containerd, id: &str) -> PathBuf {
    let mut run = ctr(
        d,
        &["run", "-d", "--runtime", RUNTIME, IMAGE, id, "sleep", "600"],
    );
    run.stdout(Stdio::null());
    let out = run_limited(run, RUN_LIMIT);
    assert!(out.status.success(), "{}", text(&out));
    shim_socket(d, id)
}

fn shim_socket(d: &Containerd, id: &str) -> PathBuf {
    let address = d
        .state
        .join("io.containerd.runtime.v2.task")
        .join(NAMESPACE)
        .join(id)
        .join("address");
    let a = std::fs::read_to_string(&address).expect("the shim's address file");
    PathBuf::from(a.trim().trim_start_matches("unix://"))
}

#[test]
fn ctr_run_prints_the_output_and_exits_zero() {
    let d = containerd();
    let out = ctr_run(d, "echo-hi", &["echo", "hi"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hi\n",
        "{}",
        text(&out)
    );
    assert_eq!(wait_no_leftovers("echo-hi", None), Vec::<String>::new());
}

#[test]
fn exit_codes_and_stderr_pass_through() {
    let d = containerd();
    let out = ctr_run(d, "exit-3", &["sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("err\n"),
        "{}",
        text(&out)
    );
}

/// A detached task: exec into it (output and exit code), list its
/// processes, kill it (SIGTERM reaches the VM's process: 143), delete it;
/// then nothing of it is left.
#[test]
fn exec_kill_and_delete_a_detached_task() {
    let d = containerd();
    let id = "detached";
    let socket = run_detached_sleep(d, id);
    assert!(socket.exists(), "no shim socket at {}", socket.display());
    let exec = ctr(
        d,
        &[
            "task",
            "exec",
            "--exec-id",
            "e1",
            id,
            "sh",
            "-c",
            "echo in-vm; exit 5",
        ],
    );
    let out = run_limited(exec, Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in-vm\n");
    let out = run_limited(ctr(d, &["task", "ls"]), Duration::from_secs(30));
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with(id))
        .map(String::from);
    assert!(
        line.as_deref().is_some_and(|l| l.contains("RUNNING")),
        "{}",
        text(&out)
    );
    // An exec killed with SIGKILL is gone from the VM (not only its
    // host-side `hull exec`).
    let exec = ctr(
        d,
        &["task", "exec", "-d", "--exec-id", "e2", id, "sleep", "777"],
    );
    let out = run_limited(exec, Duration::from_secs(120));
    assert!(out.status.success(), "{}", text(&out));
    assert!(guest_ps(d, id, "ps1").contains("sleep 777"));
    let kill = ctr(d, &["task", "kill", "--exec-id", "e2", "-s", "KILL", id]);
    let out = run_limited(kill, Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out));
    let start = Instant::now();
    while guest_ps(d, id, "ps2").contains("sleep 777") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "exec e2 outlived its SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Stats: the VM's host memory (the hull process's RSS holds the VMM
    // and the guest pages it touched) and CPU time.
    let out = run_limited(ctr(d, &["task", "metrics", id]), Duration::from_secs(30));
    let usage = String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        l.strip_prefix("memory.usage_in_bytes")?
            .trim()
            .parse::<u64>()
            .ok()
    });
    assert!(usage.is_some_and(|u| u > 1 << 20), "{}", text(&out));
    let out = run_limited(ctr(d, &["task", "kill", id]), Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out));
    wait_stopped(d, id);
    let out = run_limited(ctr(d, &["task", "delete", id]), Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out));
    // ctr warns of the non-zero exit status that the delete returned.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exit code 143"),
        "{}",
        text(&out)
    );
    let out = run_limited(ctr(d, &["container", "rm", id]), Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(wait_no_leftovers(id, Some(&socket)), Vec::<String>::new());
}

/// The guest's processes (`ps` in the VM, through an exec `exec_id`).
fn guest_ps(d: &Containerd, id: &str, exec_id: &str) -> String {
    let exec = ctr(d, &["task", "exec", "--exec-id", exec_id, id, "ps"]);
    let out = run_limited(exec, Duration::from_secs(120));
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_stopped(d: &Containerd, id: &str) {
    let start = Instant::now();
    loop {
        let out = run_limited(ctr(d, &["task", "ls"]), Duration::from_secs(30));
        let ls = String::from_utf8_lossy(&out.stdout).into_owned();
        if ls
            .lines()
            .any(|l| l.starts_with(id) && l.contains("STOPPED"))
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not stopped: {ls}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `ctr run -t` (under `script`, which gives ctr a terminal): the process
/// has a TTY of the terminal's size, and its exit code passes through.
#[test]
fn ctr_run_with_a_tty() {
    let d = containerd();
    let ctr_cmd = format!(
        "ctr --address {} --namespace {NAMESPACE} run -t --rm --runtime {RUNTIME} {IMAGE} tty-1 \
         sh -c 'tty; stty size; exit 4'",
        d.socket.display()
    );
    let mut cmd = Command::new("script");
    cmd.args([
        "-qec",
        &format!("stty cols 100 rows 30; {ctr_cmd}"),
        "/dev/null",
    ]);
    cmd.stdin(Stdio::piped());
    let out = run_limited(cmd, RUN_LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(stdout.contains("/dev/pts/"), "no tty in: {stdout:?}");
    assert!(
        stdout.contains("30 100"),
        "terminal size not passed on: {stdout:?}"
    );
    assert_eq!(wait_no_leftovers("tty-1", None), Vec::<String>::new());
}

/// The hull process holding a task's VM killed with SIGKILL (a crashing
/// VMM): containerd sees the task stopped with a non-zero status, and
/// its delete still cleans up everything.
#[test]
fn a_killed_vmm_shows_as_an_exited_task() {
    let d = containerd();
    let id = "crash";
    let socket = run_detached_sleep(d, id);
    let out = run_limited(ctr(d, &["task", "ls"]), Duration::from_secs(30));
    let ls = String::from_utf8_lossy(&out.stdout).into_owned();
    let pid: i32 = ls
        .lines()
        .find(|l| l.starts_with(id))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {ls}"));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("hull"),
        "task pid {pid} is not the hull process"
    );
    // SAFETY: kill(2) of the task's host process, found just above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    wait_stopped(d, id);
    let out = run_limited(ctr(d, &["task", "delete", id]), Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exit code 137"),
        "{}",
        text(&out)
    );
    let out = run_limited(ctr(d, &["container", "rm", id]), Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(wait_no_leftovers(id, Some(&socket)), Vec::<String>::new());
    let ps = hull(&["ps", "-a", "--format", "{{.Names}}"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&ps.stdout).contains("ctrd.hulltest.crash"),
        "hull still lists the container: {}",
        text(&ps)
    );
}

/// The shim publishes the task's create, start, exit and delete events,
/// which containerd forwards to `ctr events`.
#[test]
fn task_events_are_published() {
    let d = containerd();
    let mut events = ctr(d, &["events"]);
    let mut events = events.stdout(Stdio::piped()).spawn().unwrap();
    let mut stream = events.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stream.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    });
    // `ctr events` subscribes asynchronously: give it a moment.
    std::thread::sleep(Duration::from_millis(500));
    let out = ctr_run(d, "evented", &["true"]);
    assert!(out.status.success(), "{}", text(&out));
    std::thread::sleep(Duration::from_millis(500));
    let _ = events.kill();
    let _ = events.wait();
    let log = reader.join().unwrap();
    for topic in [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(topic) && l.contains("\"evented\"")),
            "no {topic} event of the task in: {log}"
        );
    }
}

/// The task's stdin is ctr's: piped data reaches the process in the VM
/// and its end (CloseIO) ends the process's input.
#[test]
fn stdin_reaches_the_process_and_its_end_closes_it() {
    let d = containerd();
    let mut cmd = ctr(
        d,
        &[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            IMAGE,
            "stdin-1",
            "sh",
            "-c",
        ],
    );
    cmd.arg("wc -c; echo done");
    cmd.stdin(Stdio::piped());
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, b"hello from the host\n").unwrap();
    drop(stdin);
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            panic!("ctr run with stdin did not finish");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "20\ndone\n",
        "{}",
        text(&out)
    );
}

/// The spec's memory limit (what Kubernetes sets from a pod's limits)
/// sizes the VM: the guest sees 192 MiB, not hull's default 256 MiB. (A
/// VM size of its own: the first run on a machine boots its fast-start
/// template.)
#[test]
fn the_memory_limit_sizes_the_vm() {
    let d = containerd();
    let limit = (192u64 << 20).to_string();
    let mut cmd = ctr(
        d,
        &[
            "run",
            "--rm",
            "--memory-limit",
            &limit,
            "--runtime",
            RUNTIME,
        ],
    );
    cmd.args([IMAGE, "mem-192", "grep", "MemTotal", "/proc/meminfo"]);
    let out = run_limited(cmd, RUN_LIMIT);
    assert!(out.status.success(), "{}", text(&out));
    let kib: u64 = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {}", text(&out)));
    assert!(
        (150 << 10..=192 << 10).contains(&kib),
        "MemTotal {kib} KiB for a 192 MiB VM"
    );
}
