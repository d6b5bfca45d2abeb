//! A hostile guest against the VMM: a VM whose PID 1 is not the agent but
//! `hull-hostile-guest` (hostile-guest/), which takes the virtio-blk
//! scratch disk, the network card and the vsock device from their kernel
//! drivers and attacks the VMM through them from user space (malformed
//! chains, lying lengths, floods, notify storms, registers rewritten under
//! a running queue), then floods the serial console with fake status
//! lines. The VMM must come through it: no crash or panic, its own memory
//! and CPU bounded, every device still working after a reset, another VM
//! served meanwhile, and the misbehaviour counted and logged within bounds.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{busybox_ext4, hull, require_kvm, text};

/// Guest RAM of the hostile VM, MiB (the mapping excluded from "the VMM's
/// own memory").
const GUEST_MIB: u64 = 128;
/// What the VMM process may hold besides guest RAM (docs/security.md).
const OWN_MEMORY_CAP_MIB: u64 = 64;

/// The hostile init, built static (or given by HULL_HOSTILE_GUEST).
fn hostile_binary() -> PathBuf {
    if let Ok(p) = std::env::var("HULL_HOSTILE_GUEST") {
        return p.into();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-hostile-guest");
    let out = Command::new(script)
        .output()
        .expect("run scripts/build-hostile-guest");
    assert!(
        out.status.success(),
        "scripts/build-hostile-guest failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().into()
}

/// An ext4 root holding only the hostile init and its mount points.
fn hostile_disk(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    for d in ["dev", "proc", "sys"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    std::fs::copy(hostile_binary(), tree.join("hull-hostile-guest")).unwrap();
    let img = dir.join("hostile.ext4");
    common::ext4_of_dir(&tree, &img, 16);
    img
}

/// Host port the hostile guest connects to (hostile-guest/src/vsock.rs).
const HOST_WRITER_PORT: u32 = 5000;
/// What the host writer offers the guest; far more than it may take.
const HOST_WRITER_BYTES: usize = 64 << 20;

/// Listens where the VMM of `hull` process `pid` connects the guest's
/// port HOST_WRITER_PORT, and writes to the one connection as fast as the
/// VMM takes the bytes, until it stops taking them for 5 s. Returns the
/// bytes written.
fn host_writer(root: &Path, pid: u32) -> std::thread::JoinHandle<usize> {
    use std::io::Write;
    let run = root.join("run");
    std::fs::create_dir_all(&run).unwrap();
    let path = run.join(format!("debug-boot-{pid}.vsock_{HOST_WRITER_PORT}"));
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut conn = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(_) if start.elapsed() < Duration::from_secs(900) => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("the guest never connected: {e}"),
            }
        };
        conn.set_nonblocking(true).unwrap();
        let chunk = vec![0x42u8; 64 << 10];
        let (mut written, mut stalled) = (0, Instant::now());
        while written < HOST_WRITER_BYTES && stalled.elapsed() < Duration::from_secs(5) {
            match conn.write(&chunk) {
                Ok(n) => {
                    written += n;
                    stalled = Instant::now();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => break,
            }
        }
        written
    })
}

/// CPU time (user + system) of thread `tid` of `pid`, in seconds.
fn thread_cpu_secs(pid: u32, tid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks as f64 / hz)
}

/// Resident memory of `pid` outside its guest RAM mapping (the one of
/// exactly GUEST_MIB), in KiB; None before the VM's memory exists and once
/// the process is gone.
fn own_rss_kib(pid: u32) -> Option<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let (mut total, mut guest, mut in_guest) = (0, 0, false);
    for line in smaps.lines() {
        let field = |name: &str| {
            line.strip_prefix(name)
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        };
        if let Some(size) = field("Size:") {
            in_guest = size == GUEST_MIB * 1024;
        } else if let Some(rss) = field("Rss:") {
            total += rss;
            if in_guest {
                guest += rss;
            }
        }
    }
    (guest > 0).then(|| total - guest)
}

#[test]
fn a_hostile_guest_cannot_crash_stall_or_bloat_the_vmm() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let disk = hostile_disk(dir.path());
    let scratch = dir.path().join("scratch.img");
    std::fs::write(&scratch, vec![0u8; 4 << 20]).unwrap();
    let stdout_path = dir.path().join("hostile.out");
    let stderr_path = dir.path().join("hostile.err");
    let root = dir.path().join("root");

    let mut hostile = hull(&root)
        .args([
            "debug",
            "boot",
            "--console",
            "--memory",
            &format!("{GUEST_MIB}m"),
        ])
        .arg("--disk")
        .arg(format!("{}:ro", disk.display()))
        .arg("--disk")
        .arg(&scratch)
        .args(["--init", "/hull-hostile-guest"])
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let writer = host_writer(&root, hostile.id());

    // Another VM on the same host while the attacks run.
    let other_dir = tempfile::tempdir().unwrap();
    let busybox = other_dir.path().join("busybox.ext4");
    busybox_ext4(&busybox, 16);
    let other = hull(&other_dir.path().join("root"))
        .args(["debug", "run", "--disk"])
        .arg(format!("{}:ro", busybox.display()))
        .args([
            "--mount",
            "/dev/vda:/mnt/root:ro",
            "--chroot",
            "/mnt/root",
            "--",
        ])
        .args(["/bin/busybox", "echo", "still served"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let (mut at_start, mut peak) = (None, 0u64);
    // `hull debug boot` runs the VM's event loop (every device's queue
    // handling) on its main thread.
    let mut event_loop_cpu = 0.0;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = hostile.try_wait().unwrap() {
            break status;
        }
        if let Some(cpu) = thread_cpu_secs(hostile.id(), hostile.id()) {
            event_loop_cpu = cpu;
        }
        if let Some(own) = own_rss_kib(hostile.id()) {
            peak = peak.max(own);
            if at_start.is_none()
                && std::fs::read_to_string(&stdout_path)
                    .unwrap_or_default()
                    .contains("hostile: start")
            {
                at_start = Some(own);
            }
        }
        if started.elapsed() > Duration::from_secs(900) {
            let _ = hostile.kill();
            panic!(
                "the hostile VM did not end in 900 s: {}",
                std::fs::read_to_string(&stdout_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = std::fs::read_to_string(&stdout_path).unwrap();
    let err = std::fs::read_to_string(&stderr_path).unwrap();
    let report: Vec<&str> = out.lines().filter(|l| l.contains("hostile: ")).collect();
    eprintln!("{}", report.join("\n"));
    eprintln!("VMM's own memory: {at_start:?} KiB when the attacks began, peak {peak} KiB");

    // The VMM survived and saw the guest end by itself.
    assert!(
        status.success(),
        "hull debug boot failed: {status:?}\n{err}"
    );
    assert!(err.contains("the guest stopped"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // Every attack ran, and every check the guest made (devices still
    // work after a reset, requests refused, answers still coming) held.
    let done = report
        .iter()
        .find_map(|l| l.split("hostile: done ").nth(1))
        .unwrap_or_else(|| panic!("the hostile guest did not finish:\n{out}"));
    let attacks: u64 = done
        .split_whitespace()
        .find_map(|w| w.strip_prefix("attacks="))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(attacks >= 30, "only {attacks} attacks ran: {done}");
    assert!(done.ends_with("failed=0"), "{}", report.join("\n"));
    assert!(!out.contains(" FAILED"), "{out}");

    // Misbehaviour recorded: totals at the VM's end, a bounded sample as it
    // happened (first 8 per device, then powers of two).
    let summary = err
        .lines()
        .find(|l| l.contains("guest misbehaviour over the VM's life:"))
        .unwrap_or_else(|| panic!("no misbehaviour summary:\n{err}"));
    // Each device's count: above what the malformed chains alone make,
    // so the lying available index (notified 1000 times, which rust-vmm's
    // queue refuses silently) was seen too; vsock: the RSTs it dropped.
    let count = |device: &str| -> u64 {
        let totals = summary.split("life: ").nth(1).unwrap_or_default();
        totals
            .split(", ")
            .find(|part| part.starts_with(device))
            .and_then(|part| part.rsplit(' ').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no count for {device}: {summary}"))
    };
    assert!(count("virtio-blk") > 50, "{summary}");
    assert!(count("virtio-net") > 50, "{summary}");
    assert!(count("vsock") > 1000, "{summary}");
    let sampled = err.matches(": guest misbehaviour #").count();
    eprintln!("{} ({sampled} lines logged as it happened)", summary.trim());
    assert!(
        sampled <= 4 * (8 + 32),
        "{sampled} misbehaviour lines logged"
    );
    // Nothing else logs per fault either (the guest notified a broken ring
    // 1000 times; rust-vmm's virtio_queue logs each such notification).
    let lines = err.lines().count();
    assert!(lines < 300, "{lines} lines on stderr:\n{err}");

    // The fake status lines were dropped beyond the host's bound.
    assert!(err.contains("status lines too many"), "{err}");

    // The VMM took from the host writer only what the guest took from it
    // (its rx buffers, a few MiB), not everything the credit allowed.
    let written = writer.join().unwrap();
    eprintln!("the host writer got {written} bytes into the VMM");
    assert!(
        written > 0,
        "the guest's connection to the host writer carried nothing"
    );
    assert!(
        written < 16 << 20,
        "the VMM took {written} bytes the guest did not take"
    );

    // Bounded CPU: floods and notify storms do not make the event loop
    // spin (it would take the whole wall time).
    let wall = started.elapsed().as_secs_f64();
    eprintln!("event loop CPU {event_loop_cpu:.1} s over {wall:.1} s");
    assert!(
        event_loop_cpu < 0.5 * wall,
        "the event loop used {event_loop_cpu:.1} s of CPU in {wall:.1} s"
    );

    // Bounded memory outside guest RAM.
    let at_start = at_start.expect("the VMM's memory was never seen while the attacks ran");
    assert!(at_start > 0);
    assert!(
        peak <= OWN_MEMORY_CAP_MIB * 1024,
        "the VMM process held {peak} KiB besides guest RAM"
    );

    let other = other.wait_with_output().unwrap();
    let (o, e) = text(&other);
    assert!(other.status.success(), "the other VM failed: {e}");
    assert_eq!(o.trim(), "still served");
}

/// An instruction KVM's emulator cannot run on MMIO (an SSE `movd` store
/// to a device register) ends the VM as a guest crash, said in one line,
/// and hull exits with an error of its own, not a signal.
#[test]
fn an_instruction_kvm_cannot_emulate_ends_the_vm_not_the_vmm() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let disk = hostile_disk(dir.path());
    let scratch = dir.path().join("scratch.img");
    std::fs::write(&scratch, vec![0u8; 1 << 20]).unwrap();
    let out = hull(&dir.path().join("root"))
        .args(["debug", "boot", "--console", "--disk"])
        .arg(format!("{}:ro", disk.display()))
        .arg("--disk")
        .arg(&scratch)
        .args([
            "--init",
            "/hull-hostile-guest",
            "--append",
            "hostile_only=sse",
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(
        stdout.contains("hostile: sse: storing to a register with movd"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("sse-store-ended-the-vm"),
        "the store did not end the VM"
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the guest ran an instruction KVM cannot emulate"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
