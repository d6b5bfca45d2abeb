//! `hull compare IMAGE [CMD…]`: runs one workload as a microVM and as a
//! namespaced container on this machine and reports the tradeoff in
//! numbers: start-to-exit latency, first-start (image preparation) cost,
//! host memory of an idle instance, the kernel the workload sees, what it
//! can see of the host, and a verdict per row.
//!
//! Every measurement drives the real CLI (`hull run`) in a child process,
//! so it is what a user gets, overheads included.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::CommandError;
use crate::oci::Isolation;

/// Options of `hull compare`.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Runs per mode for the latency figures.
    #[arg(short = 'n', default_value_t = 10)]
    pub n: u32,
    /// Output: table or json.
    #[arg(long, default_value = "table")]
    pub format: String,
    /// OCI runtime for the container mode (default: crun, else runc).
    #[arg(long)]
    pub runtime: Option<String>,
    /// Also draw the latency and memory rows as an SVG chart.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<std::path::PathBuf>,
    /// Image to run.
    pub image: String,
    /// Workload (default: the image's command). Options after the image
    /// are still compare's (`busybox true -n 20`): put a command that has
    /// options of its own after `--` (`busybox -- sh -c 'exit 0'`).
    pub command: Vec<String>,
}

/// Median, minimum and maximum, in seconds.
#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    /// Middle value (mean of the two middle ones for even counts).
    pub median: f64,
    /// Fastest.
    pub min: f64,
    /// Slowest.
    pub max: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Option<Self> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// What the workload can see of the host, from inside.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Probes {
    /// Processes listed in its /proc.
    pub visible_pids: u64,
    /// Lines of /proc/modules (the host's modules, or the guest's none).
    pub kernel_modules: u64,
    /// Lines of /proc/kallsyms it can read.
    pub kallsyms_lines: u64,
    /// The CPU model /proc/cpuinfo names.
    pub cpu_model: String,
    /// Entries of /proc/mounts.
    pub mounts: u64,
    /// Entries of /proc/mounts that name a path of the host's hull root.
    pub host_paths_in_mounts: u64,
    /// `Seccomp:` of its /proc/self/status (0: no filter).
    pub seccomp: u64,
}

/// One mode's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ModeReport {
    /// `vm` or `container`.
    pub isolation: &'static str,
    /// The first run: includes image preparation when it was not cached.
    pub first_start_s: f64,
    /// Whether the image's prepared root was cached before the first run.
    pub prepared_before: bool,
    /// Start-to-exit of `n` more runs.
    pub latency_s: Spread,
    /// Exit code of the workload (the last run).
    pub exit_code: i32,
    /// Proportional set size of an idle instance's whole process tree
    /// (monitor/VMM, runtime, container processes, passt/pasta), KiB.
    pub idle_pss_kib: u64,
    /// The part of it that is the network stack process (passt for the
    /// VM, pasta for the container), KiB.
    pub idle_pss_network_kib: u64,
    /// `uname -r` inside.
    pub uname_r: String,
    /// Host visibility.
    pub probes: Probes,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The host: kernel release, CPU model, KVM kind.
    pub machine: serde_json::Value,
    /// Image compared.
    pub image: String,
    /// Workload.
    pub command: Vec<String>,
    /// Runs per mode.
    pub n: u32,
    /// The microVM.
    pub vm: ModeReport,
    /// The namespaced container.
    pub container: ModeReport,
    /// One line per row: which model wins it and why.
    pub verdicts: Vec<(String, String)>,
}

/// Runs `hull compare`.
pub fn compare(args: CompareArgs, root: &Path) -> anyhow::Result<u8> {
    if !matches!(args.format.as_str(), "table" | "json") {
        return Err(CommandError::Invalid("--format", args.format.clone()).into());
    }
    if args.n == 0 {
        return Err(CommandError::Invalid("-n", "0 (at least one run)".into()).into());
    }
    crate::oci::runtime::Runtime::find(args.runtime.as_deref())?;
    // The image must exist before minutes of runs start.
    images::Store::open(root)?.image(&args.image)?;
    let vm = measure(root, &args, Isolation::Vm)?;
    let container = measure(root, &args, Isolation::Container)?;
    let verdicts = verdicts(&vm, &container);
    let report = Report {
        machine: machine(),
        image: args.image.clone(),
        command: args.command.clone(),
        n: args.n,
        vm,
        container,
        verdicts,
    };
    if let Some(path) = &args.plot {
        super::compare_plot::plot(&report, path)?;
    }
    if args.format == "json" {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(0)
}

/// A `hull` child process on `root`.
fn hull(root: &Path) -> anyhow::Result<Command> {
    let mut c = Command::new(std::env::current_exe()?);
    c.arg("--root").arg(root);
    Ok(c)
}

/// `hull run --rm` of the workload in one mode: (seconds, exit code,
/// stdout). A failure of hull itself (125) ends the comparison.
fn run_once(
    root: &Path,
    args: &CompareArgs,
    iso: Isolation,
    cmd: &[String],
) -> anyhow::Result<(f64, i32, String)> {
    let mut c = hull(root)?;
    c.args(["run", "--rm", "--isolation", iso.as_str()]);
    if let (Isolation::Container, Some(rt)) = (iso, &args.runtime) {
        c.args(["--runtime", rt]);
    }
    c.arg(&args.image).args(cmd).stdin(Stdio::null());
    let t = Instant::now();
    let out = c.output()?;
    let secs = t.elapsed().as_secs_f64();
    let code = out.status.code().unwrap_or(255);
    if code == 125 {
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err
            .lines()
            .last()
            .unwrap_or("failed")
            .trim_start_matches("hull: ");
        return Err(CommandError::StartFailed(iso.as_str().into(), line.to_string()).into());
    }
    Ok((
        secs,
        code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// All the figures of one mode.
fn measure(root: &Path, args: &CompareArgs, iso: Isolation) -> anyhow::Result<ModeReport> {
    let prepared_before = prepared(root, &args.image, iso)?;
    eprintln!("hull compare: {}: first run…", iso.as_str());
    let (first_start_s, _, _) = run_once(root, args, iso, &args.command)?;
    let mut times = Vec::new();
    let mut exit_code = 0;
    for i in 0..args.n {
        eprint!("\rhull compare: {}: run {}/{}", iso.as_str(), i + 1, args.n);
        let (t, code, _) = run_once(root, args, iso, &args.command)?;
        times.push(t);
        exit_code = code;
    }
    eprintln!();
    let uname_r = run_once(root, args, iso, &sh("uname -r"))?
        .2
        .trim()
        .to_string();
    let probes = parse_probes(&run_once(root, args, iso, &sh(&probe_script(root)))?.2);
    let (idle_pss_kib, idle_pss_network_kib) = idle_pss(root, args, iso)?;
    Ok(ModeReport {
        isolation: iso.as_str(),
        first_start_s,
        prepared_before,
        latency_s: Spread::of(times).unwrap_or(Spread {
            median: 0.0,
            min: 0.0,
            max: 0.0,
        }),
        exit_code,
        idle_pss_kib,
        idle_pss_network_kib,
        uname_r,
        probes,
    })
}

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

/// Whether the image's root is already prepared for `iso` (so the first
/// run shows a warm start, not the preparation).
fn prepared(root: &Path, image: &str, iso: Isolation) -> anyhow::Result<bool> {
    let img = images::Store::open(root)?.image(image)?;
    let layers: Vec<(String, std::path::PathBuf)> = img
        .layers
        .iter()
        .map(|l| (l.digest.to_string(), l.path.clone()))
        .collect();
    Ok(match iso {
        Isolation::Container => {
            let userns = crate::oci::userns::choose(Path::new("/etc"));
            crate::oci::lower::LowerCache::new(root)
                .path_of(&layers, userns.shift())
                .is_dir()
        }
        Isolation::Vm => {
            let digests: Vec<String> = layers.iter().map(|(d, _)| d.clone()).collect();
            crate::guest::rootfs::RootfsCache::new(root)
                .path(&crate::guest::rootfs::chain_key(&digests))
                .exists()
        }
    })
}

/// The probes, as `key=value` lines (busybox or coreutils sh).
fn probe_script(root: &Path) -> String {
    format!(
        "echo pids=$(ls /proc | grep -c '^[0-9]'); \
         echo modules=$(cat /proc/modules 2>/dev/null | wc -l); \
         echo kallsyms=$(cat /proc/kallsyms 2>/dev/null | wc -l); \
         echo cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); \
         echo mounts=$(wc -l < /proc/mounts); \
         echo hostpaths=$(grep -c '{}' /proc/mounts); \
         echo seccomp=$(grep '^Seccomp:' /proc/self/status | cut -f2)",
        root.display()
    )
}

fn parse_probes(out: &str) -> Probes {
    let mut p = Probes::default();
    for line in out.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let n = v.trim().parse().unwrap_or(0);
        match k {
            "pids" => p.visible_pids = n,
            "modules" => p.kernel_modules = n,
            "kallsyms" => p.kallsyms_lines = n,
            "cpu" => p.cpu_model = v.trim().to_string(),
            "mounts" => p.mounts = n,
            "hostpaths" => p.host_paths_in_mounts = n,
            "seccomp" => p.seccomp = n,
            _ => {}
        }
    }
    p
}

/// Starts one detached idle instance (`sleep`), lets it settle, sums the
/// PSS of its whole process tree on the host (and of its passt/pasta
/// part), and removes it.
fn idle_pss(root: &Path, args: &CompareArgs, iso: Isolation) -> anyhow::Result<(u64, u64)> {
    let mut c = hull(root)?;
    c.args(["run", "-d", "--isolation", iso.as_str()]);
    if let (Isolation::Container, Some(rt)) = (iso, &args.runtime) {
        c.args(["--runtime", rt]);
    }
    let out = c
        .arg(&args.image)
        .args(["sleep", "3600"])
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(CommandError::StartFailed(iso.as_str().into(), err).into());
    }
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    std::thread::sleep(Duration::from_secs(3));
    let store = crate::container::store::ContainerStore::new(root);
    let pss = store
        .find(&id)
        .ok()
        .and_then(|c| c.state.vmm_pid)
        .map_or((0, 0), |pid| tree_pss_kib(pid as u32));
    let _ = hull(root)?
        .args(["rm", "-f", &id])
        .stdout(Stdio::null())
        .status();
    Ok(pss)
}

/// PSS (KiB) of `pid` and all its descendants, and of those of them that
/// are passt or pasta.
pub fn tree_pss_kib(pid: u32) -> (u64, u64) {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok());
        if let Some(pp) = ppid {
            parents.push((p, pp));
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    let is_net = |p: u32| {
        std::fs::read_to_string(format!("/proc/{p}/comm"))
            .is_ok_and(|c| c.starts_with("passt") || c.starts_with("pasta"))
    };
    let total = tree.iter().map(|p| pss_kib(*p)).sum();
    let net = tree
        .iter()
        .filter(|p| is_net(**p))
        .map(|p| pss_kib(*p))
        .sum();
    (total, net)
}

fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The host as the report names it.
fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let kvm = if Path::new("/sys/module/kvm_pvm").exists() {
        "PVM (software-assisted KVM: guest kernel code is emulated)"
    } else if Path::new("/sys/module/kvm_intel").exists()
        || Path::new("/sys/module/kvm_amd").exists()
    {
        "hardware KVM"
    } else {
        "unknown"
    };
    serde_json::json!({
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "kvm": kvm,
    })
}

/// A verdict per row: which model wins it, and by how much.
fn verdicts(vm: &ModeReport, ct: &ModeReport) -> Vec<(String, String)> {
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::INFINITY };
    let mut v = vec![
        (
            "latency".to_string(),
            format!(
                "container {:.0}x faster to start and exit (median {:.3} s vs {:.3} s)",
                ratio(vm.latency_s.median, ct.latency_s.median),
                ct.latency_s.median,
                vm.latency_s.median
            ),
        ),
        ("idle memory".to_string(), memory_verdict(vm, ct)),
        (
            "kernel".to_string(),
            if vm.uname_r != ct.uname_r {
                format!("VM runs its own kernel ({}); container shares the host's ({})", vm.uname_r, ct.uname_r)
            } else {
                "both see the same kernel release".to_string()
            },
        ),
        (
            "host visibility".to_string(),
            format!(
                "VM: {} PIDs, all the guest's, {} mounts naming host paths, kallsyms of the guest kernel. Container: {} PIDs (its own), {} mounts naming host paths, the host kernel's {} kallsyms lines and {} modules readable",
                vm.probes.visible_pids, vm.probes.host_paths_in_mounts, ct.probes.visible_pids, ct.probes.host_paths_in_mounts, ct.probes.kallsyms_lines, ct.probes.kernel_modules
            ),
        ),
    ];
    v.push((
        "attack surface".to_string(),
        format!(
            "container: {} host syscalls allowed (seccomp mode {}: hull's allow list, EPERM for the rest); VM: guest syscalls reach only the guest kernel, the host sees KVM exits handled by VMM threads allowed {} (vCPU, ioctl KVM_RUN only), {} (event loop) and {} (port relay) host syscalls",
            crate::oci::seccomp::allowed_count(),
            ct.probes.seccomp,
            vmm::seccomp::allowed_count(vmm::seccomp::ThreadKind::Vcpu),
            vmm::seccomp::allowed_count(vmm::seccomp::ThreadKind::EventLoop),
            vmm::seccomp::allowed_count(vmm::seccomp::ThreadKind::PortRelay),
        ),
    ));
    v.push((
        "first start".to_string(),
        format!(
            "VM {:.1} s{}, container {:.1} s{} (the host parses the image)",
            vm.first_start_s,
            if vm.prepared_before { " (cached)" } else { "" },
            ct.first_start_s,
            if ct.prepared_before { " (cached)" } else { "" }
        ),
    ));
    v
}

/// Which instance costs the host less memory, with and without its
/// user-mode network stack (passt/pasta: the same kind of process either
/// way, and the largest part of a small container).
fn memory_verdict(vm: &ModeReport, ct: &ModeReport) -> String {
    let (v, c) = (vm.idle_pss_kib as f64, ct.idle_pss_kib as f64);
    let (vn, cn) = (
        vm.idle_pss_kib.saturating_sub(vm.idle_pss_network_kib) as f64,
        ct.idle_pss_kib.saturating_sub(ct.idle_pss_network_kib) as f64,
    );
    let cmp = |a: f64, b: f64| {
        if a > b * 1.1 {
            format!("container {:.1}x smaller", a / b.max(1.0))
        } else if b > a * 1.1 {
            format!("VM {:.1}x smaller", b / a.max(1.0))
        } else {
            "about equal".to_string()
        }
    };
    format!(
        "{} in all ({} vs {} KiB PSS); without passt/pasta {} ({} vs {} KiB)",
        cmp(v, c),
        ct.idle_pss_kib,
        vm.idle_pss_kib,
        cmp(vn, cn),
        cn,
        vn
    )
}

/// The report as an aligned table.
fn table(r: &Report) -> String {
    let row = |name: &str, vm: String, ct: String| format!("{name:<30}{vm:<30}{ct}\n");
    let spread = |s: &Spread| format!("{:.3} ({:.3}–{:.3})", s.median, s.min, s.max);
    let (vm, ct) = (&r.vm, &r.container);
    let mut out = format!(
        "machine: {} · {} CPUs · kernel {} · {}\nworkload: {} {} · n={}\n\n",
        r.machine["cpu"].as_str().unwrap_or(""),
        r.machine["cpus"],
        r.machine["kernel"].as_str().unwrap_or(""),
        r.machine["kvm"].as_str().unwrap_or(""),
        r.image,
        r.command.join(" "),
        r.n
    );
    out += &row("", "vm".into(), "container".into());
    out += &row(
        "latency s, median (min–max)",
        spread(&vm.latency_s),
        spread(&ct.latency_s),
    );
    out += &row(
        "first start s",
        format!("{:.2}", vm.first_start_s),
        format!("{:.2}", ct.first_start_s),
    );
    out += &row(
        "idle PSS KiB (passt/pasta)",
        format!("{} ({})", vm.idle_pss_kib, vm.idle_pss_network_kib),
        format!("{} ({})", ct.idle_pss_kib, ct.idle_pss_network_kib),
    );
    out += &row(
        "exit code",
        vm.exit_code.to_string(),
        ct.exit_code.to_string(),
    );
    out += &row("uname -r", vm.uname_r.clone(), ct.uname_r.clone());
    out += &row(
        "visible PIDs",
        vm.probes.visible_pids.to_string(),
        ct.probes.visible_pids.to_string(),
    );
    out += &row(
        "kernel modules",
        vm.probes.kernel_modules.to_string(),
        ct.probes.kernel_modules.to_string(),
    );
    out += &row(
        "/proc/kallsyms lines",
        vm.probes.kallsyms_lines.to_string(),
        ct.probes.kallsyms_lines.to_string(),
    );
    out += &row(
        "mounts (host paths)",
        format!("{} ({})", vm.probes.mounts, vm.probes.host_paths_in_mounts),
        format!("{} ({})", ct.probes.mounts, ct.probes.host_paths_in_mounts),
    );
    out += &row(
        "seccomp mode",
        vm.probes.seccomp.to_string(),
        ct.probes.seccomp.to_string(),
    );
    out += &row(
        "CPU model seen",
        vm.probes.cpu_model.clone(),
        ct.probes.cpu_model.clone(),
    );
    out += "\n";
    for (k, v) in &r.verdicts {
        out += &format!("verdict {k}: {v}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_and_probes() {
        let s = Spread::of(vec![3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
        assert!(Spread::of(vec![]).is_none());
        let p = parse_probes("pids=3\nmodules=0\ncpu= Xeon\nseccomp=2\nnoise\n");
        assert_eq!((p.visible_pids, p.kernel_modules, p.seccomp), (3, 0, 2));
        assert_eq!(p.cpu_model, "Xeon");
    }

    #[test]
    fn our_own_process_tree_has_a_pss() {
        let (total, net) = tree_pss_kib(std::process::id());
        assert!(total > 0 && net <= total);
    }
}
