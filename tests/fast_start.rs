//! Fast start (containers restored from a VM snapshot instead of booting):
//! same results as a cold boot, a fresh identity per container, nothing
//! shared between containers of one snapshot, stale snapshots replaced.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{hull, import_busybox, require_kvm, text};

/// `hull` with its own snapshot store.
fn hull_s(root: &Path, snapshots: &Path) -> Command {
    let mut c = hull(root);
    c.env("HULL_SNAPSHOT_DIR", snapshots);
    c
}

fn ok(out: &Output) -> String {
    let (stdout, stderr) = text(out);
    assert!(out.status.success(), "stdout {stdout:?} stderr {stderr:?}");
    stdout
}

fn snapshot_dirs(store: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(store)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether guest memory holds `page` as one of its 4 KiB pages (a page
/// cache page of a file holds one page of it).
fn has_page(memory: &[u8], page: &[u8]) -> bool {
    memory.chunks_exact(4096).any(|p| p == page)
}

#[test]
fn fast_start_matches_cold_boot_and_isolates_containers() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let root = root.path();
    let store = store.path();
    import_busybox(root);
    let script = "echo out $GREETING; echo err >&2; exit 3";

    // Cold boot (also prepares the image's rootfs).
    let cold = hull_s(root, store)
        .env("HULL_FAST_START", "0")
        .args([
            "run",
            "--rm",
            "-e",
            "GREETING=hi",
            "busybox:test",
            "sh",
            "-c",
            script,
        ])
        .output()
        .unwrap();
    assert_eq!(text(&cold), ("out hi\n".into(), "err\n".into()));
    assert_eq!(cold.status.code(), Some(3));
    assert!(snapshot_dirs(store).is_empty(), "cold path made a snapshot");

    // Fast path: first run makes the snapshot, then restores it; same bytes.
    let fast = hull_s(root, store)
        .args([
            "run",
            "--rm",
            "-e",
            "GREETING=hi",
            "busybox:test",
            "sh",
            "-c",
            script,
        ])
        .output()
        .unwrap();
    assert_eq!(text(&fast), text(&cold));
    assert_eq!(fast.status.code(), Some(3));
    // The VM shape's base snapshot and the image's warm one derived from it,
    // made with the image's disk, whose file pages it holds in memory.
    let made = snapshot_dirs(store);
    assert_eq!(made.len(), 2, "{made:?}");
    assert!(made[1].starts_with(&format!("{}-", made[0])), "{made:?}");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join(&made[1]).join("meta.json")).unwrap())
            .unwrap();
    let image_disk = meta["fixed_disks"][0].as_str().unwrap().to_string();
    assert!(image_disk.starts_with(root.to_str().unwrap()), "{meta}");
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let page = &busybox[1 << 20..(1 << 20) + 4096];
    let base_memory = std::fs::read(store.join(&made[0]).join("memory")).unwrap();
    let warm_memory = std::fs::read(store.join(&made[1]).join("memory")).unwrap();
    assert!(!has_page(&base_memory, page), "the base knows no image");
    assert!(
        has_page(&warm_memory, page),
        "image files not in the warm snapshot"
    );
    drop((base_memory, warm_memory));
    let info = ok(&hull_s(root, store).arg("info").output().unwrap());
    assert!(info.contains("Fast start: on"), "{info}");
    assert!(info.contains("Snapshots: 2 in"), "{info}");
    // A one-vCPU container runs the uniprocessor kernel (no SMP flag in
    // its build string), restored from the same snapshots.
    let build = ok(&hull_s(root, store)
        .args(["run", "--rm", "busybox:test", "uname", "-v"])
        .output()
        .unwrap());
    assert!(build.starts_with('#') && !build.contains("SMP"), "{build}");
    assert_eq!(snapshot_dirs(store), made);

    // Two containers from the same snapshot: A keeps a secret in a file and
    // in its memory; B must see neither, and each has its own identity.
    let secret = format!("hull-secret-{}", std::process::id());
    ok(&hull_s(root, store)
        .args([
            "run",
            "-d",
            "--name",
            "a",
            "--hostname",
            "alpha",
            "busybox:test",
        ])
        .args(["sleep", "600"])
        .output()
        .unwrap());
    // The secret reaches A through `exec`, so it is nowhere in B's command.
    let put = hull_s(root, store)
        .args(["exec", "a", "sh", "-c"])
        .arg(format!("echo {secret} > /tmp/secret; cat /tmp/secret"))
        .output()
        .unwrap();
    assert_eq!(ok(&put), format!("{secret}\n"));
    let ident = "cat /proc/sys/kernel/random/boot_id; head -c 16 /dev/urandom | od -An -tx1; hostname; date +%s";
    let a_asked = unix_now();
    let a_ident = ok(&hull_s(root, store)
        .args(["exec", "a", "sh", "-c", ident])
        .output()
        .unwrap());
    let a_lines: Vec<&str> = a_ident.lines().collect();
    assert_eq!(a_lines.len(), 4, "{a_ident}");
    // B: a container with its own writable disk, restored from the same
    // warm snapshot as A; B2: a `--rm` one (its warm snapshot has the whole
    // root mounted, on an empty tmpfs).
    // Its own files and MAC too, though a --rm container's warm snapshot
    // has them mounted and the interface configured already.
    let own = "echo hostname-file $(cat /etc/hostname) hosts $(grep -c beta /etc/hosts); \
               echo mac $(cat /sys/class/net/eth0/address)";
    let look = format!(
        "ls /tmp; cat /tmp/secret 2>&1; grep -rl hull-secret- /tmp /etc /data 2>/dev/null; \
         {own}; {ident}"
    );
    let b_asked = unix_now();
    let b = hull_s(root, store)
        .args(["run", "--name", "b", "--hostname", "beta", "busybox:test"])
        .args(["sh", "-c", &look])
        .output()
        .unwrap();
    let b2 = hull_s(root, store)
        .args(["run", "--rm", "--hostname", "beta", "busybox:test"])
        .args(["sh", "-c", &look])
        .output()
        .unwrap();
    let b_done = unix_now();
    for b in [&b, &b2] {
        let b_out = ok(b);
        assert!(!b_out.contains(&secret), "B saw A's secret: {b_out}");
        assert!(b_out.contains("No such file"), "{b_out}");
        let b_lines: Vec<&str> = b_out.lines().rev().take(4).collect::<Vec<_>>();
        let b_lines: Vec<&str> = b_lines.into_iter().rev().collect();
        assert_ne!(a_lines[0], b_lines[0], "same boot_id");
        assert_ne!(a_lines[1], b_lines[1], "same random bytes");
        assert_eq!((a_lines[2], b_lines[2]), ("alpha", "beta"));
        // Each guest's wall clock is the host's (to the second), read
        // between the host's times around the commands.
        for (l, from, to) in [
            (a_lines[3], a_asked, b_asked),
            (b_lines[3], b_asked, b_done),
        ] {
            let t: i64 = l.parse().unwrap();
            assert!(
                from - 1 <= t && t <= to + 1,
                "guest clock {t} outside host's {from}..{to}"
            );
        }
    }
    // The guest's monotonic clock stands still while its snapshot is on
    // disk: one restored later does not start by catching up on the time
    // in between (with the TSC as clocksource on PVM it did, ~80 µs of
    // emulated timekeeping per second of the snapshot's age).
    let uptime = || -> f64 {
        let out = hull_s(root, store)
            .args(["run", "--rm", "busybox:test", "cat", "/proc/uptime"])
            .output()
            .unwrap();
        let out = ok(&out);
        out.split_whitespace().next().unwrap().parse().unwrap()
    };
    let first = uptime();
    std::thread::sleep(std::time::Duration::from_secs(10));
    let later = uptime();
    assert!(
        (later - first).abs() < 5.0,
        "guest uptime {first} s, then {later} s from the same snapshot 10 s later"
    );
    assert_ne!(ok(&b), ok(&b2), "B and B2 share a boot_id or random bytes");
    let macs: Vec<String> = [&b, &b2]
        .iter()
        .map(|out| {
            let out = ok(out);
            assert!(out.contains("hostname-file beta hosts 1\n"), "{out}");
            let mac = out.lines().find(|l| l.starts_with("mac ")).unwrap_or("");
            mac.to_string()
        })
        .collect();
    assert!(macs[0].starts_with("mac 02:"), "{macs:?}");
    assert_ne!(macs[0], macs[1], "two containers with one MAC");
    assert!(
        !macs.contains(&"mac 02:00:00:00:00:00".to_string()),
        "{macs:?}"
    );
    // Base, warm for `--rm`, warm with a writable disk.
    let made = snapshot_dirs(store);
    assert_eq!(made.len(), 3, "{made:?}");
    // A's writes stayed in A: the shared snapshot memory never got them.
    for snapshot in &made {
        let memory = std::fs::read(store.join(snapshot).join("memory")).unwrap();
        assert!(!contains(&memory, secret.as_bytes()), "{snapshot}");
    }
    ok(&hull_s(root, store).args(["rm", "b"]).output().unwrap());
    ok(&hull_s(root, store)
        .args(["rm", "-f", "a"])
        .output()
        .unwrap());

    // A new kernel file makes new snapshots; the old kernel's stay while
    // recently used (another hull version may share the store: deleting
    // them at once would make each re-make its own after every save).
    let kernel_copy = root.join("vmlinux-copy");
    let kernel = std::env::var("HULL_KERNEL").expect("HULL_KERNEL must point at the guest kernel");
    std::fs::copy(&kernel, &kernel_copy).unwrap();
    let with_new_kernel = |args: &[&str]| {
        let out = hull_s(root, store)
            .env("HULL_KERNEL", &kernel_copy)
            .args(args)
            .output()
            .unwrap();
        ok(&out)
    };
    let again = with_new_kernel(&["run", "--rm", "busybox:test", "echo", "new kernel"]);
    assert_eq!(again, "new kernel\n");
    let now_made = snapshot_dirs(store);
    assert_eq!(now_made.len(), 5, "2 new, 3 old kept: {now_made:?}");
    // Unused for an hour, they go at the next save (here: the new
    // kernel's warm snapshot for a container with a writable disk).
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for old in &made {
        for file in [".in-use", "meta.json"] {
            if let Ok(f) = std::fs::File::options()
                .write(true)
                .open(store.join(old).join(file))
            {
                f.set_modified(hour_ago).unwrap();
            }
        }
    }
    assert_eq!(
        with_new_kernel(&["run", "--name", "k", "busybox:test", "true"]),
        ""
    );
    with_new_kernel(&["rm", "k"]);
    let now_made = snapshot_dirs(store);
    assert_eq!(now_made.len(), 3, "{now_made:?}");
    assert!(
        now_made.iter().all(|n| !made.contains(n)),
        "stale snapshot kept: {now_made:?} {made:?}"
    );

    let pruned = ok(&hull_s(root, store)
        .args(["system", "prune"])
        .output()
        .unwrap());
    assert!(pruned.starts_with("Deleted 3 VM snapshot(s)"), "{pruned}");
    assert!(snapshot_dirs(store).is_empty());
}
