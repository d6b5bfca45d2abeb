//! The VMM's walls (issue 16): the VM runs in a process of its own,
//! jailed (empty root, no capabilities, unprivileged user, own
//! namespaces), whose threads run under seccomp from before the guest's
//! first instruction; a call outside their lists ends the VMM with the
//! call named in `ps` and `inspect`.

mod common;

use std::path::Path;

use common::{hull, import_busybox, require_kvm, text};

fn ok(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{:?}", text(out));
    text(out).0
}

/// `(thread name, seccomp mode)` of every thread of process `pid`.
fn thread_seccomp(pid: &str) -> Vec<(String, String)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
        let mode = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .unwrap_or("?")
            .trim()
            .to_string();
        threads.push((comm.trim().to_string(), mode));
    }
    threads
}

/// `GET /hostname` from `addr` (`127.0.0.1:PORT`), the whole reply.
fn http_get(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .ok()?;
    s.write_all(b"GET /hostname HTTP/1.0\r\n\r\n").ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    Some(reply)
}

/// What the host sees of a VMM process's jail, read while it runs.
#[derive(Debug)]
struct JailWalls {
    status: String,
    root_entries: Vec<String>,
    shadow_visible: bool,
    shared_namespaces: Vec<String>,
}

fn jail_walls(pid: &str) -> JailWalls {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let root = format!("/proc/{pid}/root");
    let root_entries = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let shadow_visible = Path::new(&root).join("etc/shadow").exists();
    let shared_namespaces = ["pid", "mnt", "net", "ipc", "uts"]
        .into_iter()
        .filter(|ns| {
            let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
            let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
            theirs == ours
        })
        .map(String::from)
        .collect();
    JailWalls {
        status,
        root_entries,
        shadow_visible,
        shared_namespaces,
    }
}

impl JailWalls {
    fn field(&self, name: &str) -> &str {
        self.status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .unwrap_or("?")
            .trim()
    }

    /// Jailed: an empty root (no host file), no capability in any set,
    /// an unprivileged user, no way back to privileges, own namespaces.
    fn assert_confined(&self) {
        assert!(self.root_entries.is_empty(), "{self:?}");
        assert!(!self.shadow_visible, "{self:?}");
        for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(self.field(caps), "0000000000000000", "{caps}: {self:?}");
        }
        assert_eq!(self.field("Uid"), "65534\t65534\t65534\t65534", "{self:?}");
        assert_eq!(self.field("Gid"), "65534\t65534\t65534\t65534", "{self:?}");
        assert_eq!(self.field("NoNewPrivs"), "1", "{self:?}");
        assert!(self.shared_namespaces.is_empty(), "{self:?}");
    }
}

fn remove(root: &Path, name: &str) {
    let _ = hull(root).args(["rm", "-f", name]).output();
}

#[test]
fn guest_facing_threads_are_filtered_and_a_violation_is_recorded() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    import_busybox(root);

    // 1. A running container: its vCPU, event-loop and port relay threads
    //    are in seccomp filter mode (2), and the relay still relays.
    ok(&hull(root)
        .args(["run", "-d", "--name", "calm", "-p", "127.0.0.1::80"])
        .args(["busybox:test", "httpd", "-f", "-p", "80", "-h", "/etc"])
        .output()
        .unwrap());
    let port = ok(&hull(root).args(["port", "calm", "80"]).output().unwrap());
    let addr = port.trim().to_string();
    let page = (0..60)
        .find_map(|_| {
            let got = http_get(&addr).filter(|p| p.contains("200 OK"));
            if got.is_none() {
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            got
        })
        .expect("the published port never answered");
    assert!(page.ends_with("\n"), "{page}");
    let pids = ok(&hull(root)
        .args(["inspect", "-f", "{{.State.Pid}} {{.VM.VmmPid}}", "calm"])
        .output()
        .unwrap());
    let (vm, supervisor) = pids.trim().split_once(' ').unwrap();
    assert_ne!(vm, supervisor, "the VM runs in a process of its own");
    // ... the slim VMM binary, not the hull CLI.
    let cmdline = std::fs::read(format!("/proc/{vm}/cmdline")).unwrap();
    let argv0 = cmdline.split(|&b| b == 0).next().unwrap();
    assert!(
        argv0.ends_with(b"/hull-vmm"),
        "{:?}",
        String::from_utf8_lossy(argv0)
    );
    let vm_threads = thread_seccomp(vm);
    let supervisor_threads = thread_seccomp(supervisor);
    let walls = jail_walls(vm);
    remove(root, "calm");
    // Every thread of the VMM process is filtered, from its vCPUs and
    // event loop to whatever else it runs.
    assert!(
        vm_threads.iter().any(|(name, _)| name == "vcpu0"),
        "{vm_threads:?}"
    );
    assert!(
        vm_threads.iter().all(|(_, mode)| mode == "2"),
        "{vm_threads:?}"
    );
    // The published port's relay runs in the supervising hull process,
    // filtered too.
    let relay = format!("port-{}", addr.rsplit(':').next().unwrap());
    assert!(
        supervisor_threads.contains(&(relay.clone(), "2".into())),
        "{supervisor_threads:?}"
    );
    walls.assert_confined();

    // 2. A VMM that makes a call outside its list (the test hook makes the
    //    event loop call getppid): the start fails in one line naming the
    //    call, and the container is Dead with the reason.
    let out = hull(root)
        .env("HULL_TEST_SECCOMP_VIOLATION", "1")
        .args([
            "run",
            "-d",
            "--name",
            "bad",
            "busybox:test",
            "sleep",
            "100000",
        ])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("seccomp violation: getppid"), "{stderr}");
    let ps = ok(&hull(root)
        .args([
            "ps",
            "-a",
            "--filter",
            "status=dead",
            "--format",
            "{{.Names}} {{.Status}}",
        ])
        .output()
        .unwrap());
    assert_eq!(ps, "bad Dead\n");
    let state = ok(&hull(root)
        .args([
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.Dead}} {{.State.ExitCode}} {{.State.Error}}",
            "bad",
        ])
        .output()
        .unwrap());
    assert_eq!(state, "dead true 159 seccomp violation: getppid\n");
    let log = std::fs::read_dir(root.join("containers"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("vmm.log")).ok())
        .collect::<String>();
    assert!(
        log.contains("hull: seccomp violation: syscall 110"),
        "{log}"
    );
    // A dead container is removed like an exited one.
    ok(&hull(root).args(["rm", "bad"]).output().unwrap());

    // 3. Attached: hull says why in one line and fails as `run` does
    //    when hull itself fails; the VMM process's own line is there too.
    let out = hull(root)
        .env("HULL_TEST_SECCOMP_VIOLATION", "1")
        .args(["run", "--name", "bad2", "busybox:test", "true"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("hull: seccomp violation: getppid"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hull: seccomp violation: syscall 110"),
        "{stderr}"
    );
    let state = ok(&hull(root)
        .args([
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.Error}}",
            "bad2",
        ])
        .output()
        .unwrap());
    assert_eq!(state, "dead seccomp violation: getppid\n");
    remove(root, "bad2");
}

/// The cgroup directory of process `pid` in the hierarchy of
/// `controller` (cgroup v1), or its one cgroup (v2).
fn cgroup_dir(pid: &str, controller: &str) -> std::path::PathBuf {
    let table = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in table.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        if controllers.split(',').any(|c| c == controller) {
            let base = Path::new("/sys/fs/cgroup").join(controller);
            return base.join(path.trim_start_matches('/'));
        }
    }
    let v2 = table.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    Path::new("/sys/fs/cgroup").join(v2.trim_start_matches('/'))
}

fn read_first(dir: &Path, names: &[&str]) -> String {
    names
        .iter()
        .find_map(|n| std::fs::read_to_string(dir.join(n)).ok())
        .unwrap_or_else(|| panic!("none of {names:?} in {}", dir.display()))
        .trim()
        .to_string()
}

/// A hull killed with its VMM leaves the VMM's cgroup (its `--rm`,
/// helper, build and template VMs are recorded nowhere): the next VM's
/// start removes `hull-*` cgroups beside its own that are empty and over
/// 30 s old, never a fresh one (its VMM may not have joined yet) nor one
/// with a running VMM (`live`, the dirs of a running container's VMM).
fn the_next_vm_sweeps_stale_cgroups_beside(live: &[&Path], root: &Path) {
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let set_old = |d: &Path| {
        let f = std::fs::File::open(d).unwrap();
        f.set_modified(hour_ago).unwrap();
    };
    // The running VMM's own cgroups look as old as a stale one.
    for dir in live {
        set_old(dir);
    }
    let mut parents: Vec<&Path> = live.iter().map(|d| d.parent().unwrap()).collect();
    // cgroup v2: one directory for both controllers.
    parents.dedup();
    let mut planted = Vec::new();
    for parent in parents {
        let (stale, fresh) = (
            parent.join("hull-test-stale"),
            parent.join("hull-test-fresh"),
        );
        std::fs::create_dir(&stale).unwrap();
        set_old(&stale);
        std::fs::create_dir(&fresh).unwrap();
        planted.push((stale, fresh));
    }
    let out = hull(root)
        .args(["run", "--rm", "busybox:test", "true"])
        .output()
        .unwrap();
    let swept: Vec<bool> = planted.iter().map(|(stale, _)| !stale.exists()).collect();
    let kept: Vec<bool> = planted.iter().map(|(_, fresh)| fresh.exists()).collect();
    for (stale, fresh) in &planted {
        let _ = std::fs::remove_dir(stale);
        let _ = std::fs::remove_dir(fresh);
    }
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(swept.iter().all(|s| *s), "stale cgroups kept: {planted:?}");
    assert!(
        kept.iter().all(|k| *k),
        "fresh cgroups removed: {planted:?}"
    );
    for dir in live {
        assert!(
            dir.exists(),
            "a running VMM's cgroup {} was removed",
            dir.display()
        );
    }
}

#[test]
fn the_vmm_process_is_capped_by_its_own_cgroup() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    import_busybox(root);

    // 1. Its cgroup caps memory at guest RAM + the stated 64 MiB and CPU
    //    at its vCPUs, and goes with the container (even after rm -f
    //    killed the hull process supervising it). The default VM shape
    //    (256 MiB, 1 vCPU): its fast-start snapshot is the suite's.
    ok(&hull(root)
        .args(["run", "-d", "--name", "capped"])
        .args(["-e", "TOKEN=s3cret", "busybox:test", "sleep", "100000"])
        .output()
        .unwrap());
    // What holds its secrets and data is its owner's alone.
    let id = ok(&hull(root)
        .args(["inspect", "-f", "{{.Id}}", "capped"])
        .output()
        .unwrap());
    let cdir = root.join("containers").join(id.trim());
    for f in ["config.json", "container.log", "vmm.log", "upper.ext4"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(cdir.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}: {mode:o}");
    }
    let pid = ok(&hull(root)
        .args(["inspect", "-f", "{{.State.Pid}}", "capped"])
        .output()
        .unwrap());
    let memory = cgroup_dir(pid.trim(), "memory");
    let cpu = cgroup_dir(pid.trim(), "cpu");
    let limit = read_first(&memory, &["memory.limit_in_bytes", "memory.max"]);
    let quota = read_first(&cpu, &["cpu.cfs_quota_us", "cpu.max"]);
    the_next_vm_sweeps_stale_cgroups_beside(&[&memory, &cpu], root);
    ok(&hull(root).args(["rm", "-f", "capped"]).output().unwrap());
    assert_eq!(limit, ((256u64 + 64) << 20).to_string());
    assert!(quota == "100000" || quota == "100000 100000", "{quota}");
    assert!(!memory.exists(), "{} left behind", memory.display());
    assert!(!cpu.exists(), "{} left behind", cpu.display());
    let sockets: Vec<_> = std::fs::read_dir(root.join("run"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".vsock"))
        .collect();
    assert!(sockets.is_empty(), "{sockets:?}");

    // 2. Enforced: with a limit below what the guest makes it use (a
    //    test-only override), the kernel kills the VMM, not the host's
    //    other processes, and the container says why.
    ok(&hull(root)
        .env("HULL_TEST_VMM_MEMORY_LIMIT_MIB", "8")
        .args([
            "run",
            "-d",
            "--name",
            "hog",
            "busybox:test",
            "sleep",
            "100000",
        ])
        .output()
        .unwrap());
    let fill = hull(root)
        .args(["exec", "hog", "dd", "if=/dev/zero", "of=/dev/shm/fill"])
        .args(["bs=1M", "count=16"])
        .output()
        .unwrap();
    assert!(!fill.status.success(), "{:?}", text(&fill));
    let mut state = String::new();
    for _ in 0..100 {
        state = ok(&hull(root)
            .args(["inspect", "-f", "{{.State.Status}} {{.State.Error}}", "hog"])
            .output()
            .unwrap());
        if !state.starts_with("running") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    remove(root, "hog");
    assert!(state.starts_with("exited "), "{state}");
    assert!(
        state.contains("the VMM went over its memory limit (8 MiB"),
        "{state}"
    );
}
