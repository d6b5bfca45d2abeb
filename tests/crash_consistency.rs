//! Crash consistency: `hull system check` finds damage, and a campaign
//! that kills `hull` with SIGKILL at random points of `pull`, `load`,
//! `run` (attached, and `run -d` with its VMM killed too), `rm`,
//! `image prune`, `commit` (of a stopped and of a running container) and
//! `start` of a stopped container leaves nothing the next command does
//! not cope with.
//!
//! After each kill: `hull system check` (what the kill left, recorded),
//! then the same command again (it must succeed), then `system check`
//! again, which must pass: a kill point whose damage outlives the next
//! command, or that makes the next command fail, is counted as damage
//! (goal 0). The short form (CI) tries a bounded number of points;
//! `HULL_TEST_LONG=1` tries ten times as many. `HULL_TEST_SEED` replays a
//! campaign (its seed is printed).

mod common;
mod common_images;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::{hull, text};
use common_images::{mock::Mock, LayoutBuilder};

fn ok(root: &Path, args: &[&str]) -> String {
    let out = hull(root).args(args).stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{args:?}: {:?}", text(&out));
    text(&out).0
}

/// `hull system check`: its problem lines (its exit status must agree).
fn check(root: &Path) -> Vec<String> {
    let out = hull(root).args(["system", "check"]).output().unwrap();
    let lines: Vec<String> = text(&out).0.lines().map(String::from).collect();
    assert_eq!(
        out.status.success(),
        lines.is_empty(),
        "exit status and output disagree: {:?}",
        text(&out)
    );
    lines
}

#[test]
fn system_check_reports_damage_one_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    common::import_busybox(root);
    let c1 = ok(root, &["create", "--name", "c1", "busybox:test"]);
    let c3 = ok(root, &["create", "--name", "c3", "busybox:test"]);
    assert_eq!(check(root), Vec::<String>::new());

    let blobs = root.join("images/blobs/sha256");
    // The largest blob is the layer: change one byte of it.
    let mut all: Vec<PathBuf> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    all.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let layer = all.last().unwrap().clone();
    let mut bytes = std::fs::read(&layer).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&layer, bytes).unwrap();
    // A `hull rm` killed between its rename and its removal.
    let containers = root.join("containers");
    std::fs::rename(
        containers.join(c3.trim()),
        containers.join(format!(".removing.{}", c3.trim())),
    )
    .unwrap();
    assert_eq!(
        ok(root, &["ps", "-aq"]).lines().count(),
        1,
        "a half-removed container is listed"
    );
    // ... and `ps`, finding no other hull at work, finished the removal.
    assert!(!containers.join(format!(".removing.{}", c3.trim())).exists());
    // Ones it leaves (another hull holds the store's lock, and may be
    // creating or removing them): a creation and a removal cut short.
    let held = std::fs::File::create(containers.join(".lock")).unwrap();
    // SAFETY: flock on a descriptor we own; released when `held` closes.
    let locked = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&held), libc::LOCK_EX) };
    assert_eq!(locked, 0);
    std::fs::create_dir(containers.join(".0123456789ab.tmp")).unwrap();
    std::fs::rename(
        containers.join(c1.trim()),
        containers.join(format!(".removing.{}", c1.trim())),
    )
    .unwrap();
    assert_eq!(ok(root, &["ps", "-aq"]).lines().count(), 0);
    drop(held);
    std::fs::create_dir_all(root.join("run")).unwrap();
    std::fs::write(root.join("run/0123456789ef.vsock"), "").unwrap();
    // A container-mode console socket a killed `run -t` left.
    std::fs::write(root.join("run/0123456789ab.console"), "").unwrap();
    std::fs::write(root.join("images/.tmp/.tmpXYZ"), "half a blob").unwrap();

    let found = check(root);
    let has = |needle: &str| found.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(found.len(), 6, "{found:#?}");
    assert_eq!(has("hashes to sha256:"), 1, "{found:#?}");
    assert_eq!(has("half-created container"), 1, "{found:#?}");
    assert_eq!(has("half-removed container"), 1, "{found:#?}");
    assert_eq!(has("leaked socket of no container"), 2, "{found:#?}");
    assert_eq!(has("leftover temporary file"), 1, "{found:#?}");

    // A missing blob is named as such.
    std::fs::remove_file(&layer).unwrap();
    assert_eq!(
        check(root)
            .iter()
            .filter(|l| l.ends_with("is missing"))
            .count(),
        1
    );

    // The next commands that take the stores' locks clean the leftovers
    // of interrupted ones (the missing layer stays: it is real damage).
    ok(root, &["create", "--name", "c2", "busybox:test"]);
    let tar = common_images::busybox_tar(dir.path());
    ok(root, &["import", tar.to_str().unwrap(), "other:1"]);
    let left = check(root);
    assert_eq!(left.len(), 3, "{left:#?}");
    assert!(left[0].ends_with("is missing"), "{left:#?}");
    // Sockets of no container: nothing cleans them (`rm` removes a
    // container's own sockets, a start replaces them).
    for l in &left[1..] {
        assert!(l.starts_with("leaked socket of no container"), "{left:#?}");
    }
}

/// A tiny xorshift generator (the campaign's points are replayable from
/// the printed seed; no crate needed).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Runs `args` and SIGKILLs it after `delay` unless it ended first;
/// true when it was killed.
fn kill_after(root: &Path, args: &[String], delay: Duration) -> bool {
    let mut child = hull(root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while start.elapsed() < delay {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let killed = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    killed
}

/// SIGKILLs every `hull --root ROOT __container-vmm` process (the
/// detached VMMs of `root`); the test's `hull` passes the root by
/// `HULL_ROOT`, which the VMM gets as `--root`.
fn kill_vmms(root: &Path) {
    for pid in root_vmms(root) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        wait_dead(pid);
    }
}

/// The `hull --root ROOT __container-vmm` processes of `root` (zombies
/// included: their reaper may be slow).
fn root_vmms(root: &Path) -> Vec<i32> {
    let root = root.canonicalize().unwrap();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = raw.split(|&b| b == 0).collect();
        let vmm = args.iter().any(|a| *a == b"__container-vmm");
        let ours = args.windows(2).any(|w| {
            w[0] == b"--root"
                && Path::new(std::str::from_utf8(w[1]).unwrap_or(""))
                    .canonicalize()
                    .ok()
                    == Some(root.clone())
        });
        if vmm && ours {
            pids.push(pid);
        }
    }
    pids
}

/// Waits until no `hull --root ROOT __container-vmm` process of `root`
/// runs (a `hull start` killed after spawning its VMM leaves the container
/// starting; its `true` ends at once).
fn wait_vmms_gone(root: &Path) {
    let start = Instant::now();
    while !root_vmms(root).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(120), "VMMs still run");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes sure container `name` exists and is stopped (created and run
/// once with `cmd` if it is not there: an earlier operation removed it).
fn stopped_container(root: &Path, name: &str, cmd: &[&str]) {
    wait_vmms_gone(root);
    let exists = hull(root)
        .args(["inspect", name])
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .status
        .success();
    if !exists {
        ok(
            root,
            &[&["run", "--name", name, "busybox:test"][..], cmd].concat(),
        );
    }
}

/// Waits until `pid` is gone or a zombie (its reaper may be slow).
fn wait_dead(pid: i32) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
            .unwrap_or(false);
        if !alive {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("killed VMM {pid} still runs");
}

fn run_to_end(root: &Path, args: &[String]) -> Output {
    let mut cmd = hull(root);
    cmd.args(args).stdin(Stdio::null());
    common::run_limited(cmd, Duration::from_secs(600))
}

/// One operation of the campaign: how to reset the root before a point,
/// the command killed, and the next command (the same one again, unless
/// that cannot succeed twice, as `rm` of a container that is gone).
struct Op {
    name: &'static str,
    reset: Box<dyn Fn(&Path)>,
    args: Vec<String>,
    next: Option<Vec<String>>,
    vm: bool,
    /// Kill the root's detached VMM processes too, right after `hull`.
    kill_vmm: bool,
    /// Wait for the root's detached VMMs to end before the last check
    /// (a killed `start` may have left one starting; its `true` ends).
    settle: bool,
    /// Points per campaign point budget: 1 = all, 2 = half (costly ones).
    share: u32,
}

/// What the campaign saw.
#[derive(Default)]
struct Tally {
    points: u32,
    killed: u32,
    left_after_kill: Vec<String>,
    damage: Vec<String>,
}

fn try_point(root: &Path, op: &Op, delay: Duration, tally: &mut Tally) {
    (op.reset)(root);
    tally.points += 1;
    if kill_after(root, &op.args, delay) {
        tally.killed += 1;
    }
    if op.kill_vmm {
        kill_vmms(root);
    }
    for p in check(root) {
        tally
            .left_after_kill
            .push(format!("{} at {delay:?}: {p}", op.name));
    }
    let again = run_to_end(root, op.next.as_ref().unwrap_or(&op.args));
    if !again.status.success() {
        tally.damage.push(format!(
            "{} at {delay:?}: the next command failed: {:?}",
            op.name,
            text(&again).1
        ));
    }
    if op.settle {
        wait_vmms_gone(root);
    }
    for p in check(root) {
        tally.damage.push(format!(
            "{} at {delay:?}, after the next command: {p}",
            op.name
        ));
    }
}

/// A pullable image with a 4 MiB incompressible layer (so a pull lasts
/// long enough to be cut in its middle), served by a mock registry.
fn registry_image(dir: &Path) -> (Mock, String) {
    let mut b = LayoutBuilder::new(&dir.join("layout"));
    let noise = {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        (0..4 << 20)
            .map(|_| r.below(256) as u8)
            .collect::<Vec<u8>>()
    };
    let bb = std::fs::read("/bin/busybox").unwrap();
    let base = b.layer(&[("bin/busybox", Some(&bb))]);
    let big = b.layer(&[("noise", Some(&noise))]);
    let m = b.manifest(&[base, big], "amd64", &["/bin/busybox", "true"]);
    b.tag(m, "v1");
    let mock = Mock::start();
    mock.serve_layout(&b.dir, "v1", "crash/app");
    let r = format!("{}/crash/app:v1", mock.addr);
    (mock, r)
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn remove_all_containers(root: &Path) {
    let ids = ok(root, &["ps", "-aq"]);
    let ids: Vec<&str> = ids.lines().collect();
    if !ids.is_empty() {
        ok(root, &[&["rm", "-f"][..], &ids].concat());
    }
}

/// Imports, as `fresh:latest`, a busybox image whose layer no image
/// had before (a file named after a counter kept in `base`): its first
/// run prepares its disk in the helper VM and saves its warm snapshot.
fn fresh_image(root: &Path, base: &Path) {
    let rootfs = base.join("rootfs");
    if !rootfs.exists() {
        std::fs::create_dir_all(&rootfs).unwrap();
        common::busybox_rootfs(&rootfs);
    }
    let counter = base.join("counter");
    let n: u64 = std::fs::read_to_string(&counter)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
        + 1;
    std::fs::write(&counter, n.to_string()).unwrap();
    let _ = std::fs::remove_file(rootfs.join(format!("etc/fresh-{}", n - 1)));
    std::fs::write(rootfs.join(format!("etc/fresh-{n}")), format!("{n}\n")).unwrap();
    common::import_rootfs(root, &rootfs, "fresh:latest", &[]);
}

fn operations(dir: &Path, reference: &str, archive: &Path) -> Vec<Op> {
    let pulled = reference.to_string();
    let loaded = "localhost/crash/loaded:1";
    let spare = common_images::busybox_tar(dir);
    let fresh_base = dir.join("fresh");
    vec![
        Op {
            name: "pull",
            reset: Box::new(move |root| {
                let _ = hull(root).args(["rmi", "-f", &pulled]).output();
            }),
            args: strings(&["pull", reference]),
            next: None,
            vm: false,
            kill_vmm: false,
            settle: false,
            share: 1,
        },
        Op {
            name: "load",
            reset: Box::new(move |root| {
                let _ = hull(root).args(["rmi", "-f", loaded]).output();
            }),
            args: strings(&["load", "-i", archive.to_str().unwrap()]),
            next: None,
            vm: false,
            kill_vmm: false,
            settle: false,
            share: 1,
        },
        Op {
            name: "rm",
            reset: Box::new(|root| {
                remove_all_containers(root);
                ok(root, &["create", "--name", "victim", "busybox:test"]);
            }),
            args: strings(&["rm", "-f", "victim"]),
            // The container may be gone (the kill came after its removal).
            next: Some(strings(&["ps", "-a"])),
            vm: false,
            kill_vmm: false,
            settle: false,
            share: 1,
        },
        Op {
            name: "image prune",
            reset: Box::new(move |root| {
                // Two dangling images (the same layer, other configs).
                for env in ["ENV V=1", "ENV V=2", "ENV V=3"] {
                    ok(
                        root,
                        &[
                            "import",
                            "--change",
                            env,
                            spare.to_str().unwrap(),
                            "spare:1",
                        ],
                    );
                }
            }),
            args: strings(&["image", "prune", "-f"]),
            next: None,
            vm: false,
            kill_vmm: false,
            settle: false,
            share: 1,
        },
        Op {
            name: "run",
            reset: Box::new(|root| {
                remove_all_containers(root);
            }),
            args: strings(&["run", "--rm", "busybox:test", "true"]),
            next: None,
            vm: true,
            kill_vmm: false,
            settle: false,
            share: 1,
        },
        Op {
            name: "run -d, hull and VMM killed",
            reset: Box::new(|root| {
                remove_all_containers(root);
            }),
            args: strings(&["run", "-d", "--name", "bg", "busybox:test", "sleep", "1000"]),
            // A container named bg may exist (killed after its creation).
            next: Some(strings(&["run", "--rm", "busybox:test", "true"])),
            vm: true,
            kill_vmm: true,
            settle: false,
            share: 1,
        },
        Op {
            name: "first run of a new image",
            reset: Box::new(move |root| {
                remove_all_containers(root);
                fresh_image(root, &fresh_base);
            }),
            args: strings(&["run", "--rm", "fresh:latest", "true"]),
            next: None,
            vm: true,
            kill_vmm: false,
            settle: false,
            // Each point prepares an image in the helper VM and saves
            // its warm snapshot.
            share: 2,
        },
        Op {
            name: "commit of a stopped container",
            reset: Box::new(|root| {
                stopped_container(root, "cm", &["sh", "-c", "echo 1 > /committed"]);
            }),
            args: strings(&["commit", "cm", "crash/committed:1"]),
            next: None,
            vm: true,
            kill_vmm: false,
            settle: false,
            // Each point boots a helper VM (from its snapshot).
            share: 2,
        },
        Op {
            name: "start of a stopped container",
            reset: Box::new(|root| {
                stopped_container(root, "st", &["true"]);
            }),
            args: strings(&["start", "st"]),
            // Attached: it ends with the container, whose VMM is this
            // `hull` (unless the killed start's VMM still runs it).
            next: Some(strings(&["start", "-a", "st"])),
            vm: true,
            kill_vmm: false,
            settle: true,
            share: 2,
        },
        Op {
            name: "commit of a running container",
            reset: Box::new(|root| {
                // `start` of a running container does nothing.
                if hull(root)
                    .args(["start", "live"])
                    .output()
                    .unwrap()
                    .status
                    .success()
                {
                    return;
                }
                ok(
                    root,
                    &[
                        "run",
                        "-d",
                        "--name",
                        "live",
                        "busybox:test",
                        "sleep",
                        "1000",
                    ],
                );
            }),
            args: strings(&["commit", "live", "crash/live:1"]),
            next: None,
            vm: true,
            kill_vmm: false,
            settle: false,
            // Last: the other operations wait for the root's VMMs to end.
            share: 2,
        },
    ]
}

/// How long `args` takes when left alone (the range kill points are
/// drawn from).
fn duration_of(root: &Path, op: &Op) -> Duration {
    (op.reset)(root);
    let t = Instant::now();
    // Not `run_to_end`: it polls every 100 ms.
    let out = hull(root)
        .args(&op.args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}: {:?}", op.name, text(&out));
    t.elapsed()
}

#[test]
fn killed_commands_leave_no_damage_the_next_command_keeps() {
    common::require_kvm();
    let long = std::env::var("HULL_TEST_LONG").is_ok_and(|v| v == "1");
    let per_op: u32 = if long { 40 } else { 4 };
    let seed = std::env::var("HULL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash campaign: seed {seed} (HULL_TEST_SEED), {per_op} points per operation");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    common::import_busybox(&root);
    let (_mock, reference) = registry_image(dir.path());
    let archive = dir.path().join("loaded.tar");
    ok(&root, &["tag", "busybox:test", "localhost/crash/loaded:1"]);
    ok(
        &root,
        &[
            "save",
            "-o",
            archive.to_str().unwrap(),
            "localhost/crash/loaded:1",
        ],
    );
    let mut tally = Tally::default();
    for op in operations(dir.path(), &reference, &archive) {
        let mut full = duration_of(&root, &op);
        if op.vm {
            // The first run prepared the image's disk (and maybe booted
            // the template VM): draw points from a warm run's time.
            full = duration_of(&root, &op);
        }
        eprintln!("{}: {full:?} uninterrupted (vm: {})", op.name, op.vm);
        let started = Instant::now();
        for _ in 0..per_op / op.share {
            // Mostly inside the command's run, some just after its start.
            let span = full.as_micros() as u64 * 11 / 10;
            let delay = Duration::from_micros(rng.below(span.max(1)));
            try_point(&root, &op, delay, &mut tally);
        }
        eprintln!("{}: points took {:?}", op.name, started.elapsed());
    }
    remove_all_containers(&root);
    eprintln!(
        "crash campaign: {} kill points, {} killed before the end; {} problem lines right after a kill (cleaned by the next command):",
        tally.points,
        tally.killed,
        tally.left_after_kill.len()
    );
    for l in &tally.left_after_kill {
        eprintln!("  {l}");
    }
    eprintln!("damage after the next command: {}", tally.damage.len());
    assert!(tally.damage.is_empty(), "{:#?}", tally.damage);
}
