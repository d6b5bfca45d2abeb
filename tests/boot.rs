//! Booting the real guest kernel in hull's VMM, on this machine's /dev/kvm.

mod common;

use common::{assert_one_line_error, hull, require_kvm, text};

#[test]
fn boots_to_agent_ready_and_exits_cleanly() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let out = hull(root.path())
        .args(["debug", "boot", "--console"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("Linux version 6.1."),
        "no kernel banner:\n{stdout}"
    );
    // One vCPU: the uniprocessor kernel (its banner lacks the SMP flag).
    let banner = kernel_banner(&stdout);
    assert!(!banner.contains(" SMP "), "{banner}");
    // No memory cgroup (vmm::BASE_CMDLINE): its charging slowed every page.
    assert!(
        stdout.contains("cgroup: Disabling memory control group subsystem"),
        "{stdout}"
    );
    let ready = format!("hull-agent: ready version={}", env!("CARGO_PKG_VERSION"));
    assert!(stdout.contains(&ready), "no agent ready line:\n{stdout}");
    assert!(stdout.contains("hull-agent: shutdown status=0"), "{stdout}");
    // The ready line comes before the shutdown line.
    assert!(stdout.find(&ready) < stdout.find("hull-agent: shutdown"));
    assert!(stderr.contains("hull: agent ready"), "{stderr}");
    assert!(stderr.contains("agent shutdown, status 0"), "{stderr}");
    // The initramfs was built once, into the root's cache.
    let cached: Vec<_> = std::fs::read_dir(root.path().join("cache"))
        .unwrap()
        .collect();
    assert_eq!(cached.len(), 1);
}

#[test]
fn boots_with_two_vcpus() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    // With the guest profiler on (on a thread of hull: the jailed VMM has
    // nowhere to write), which this boot also checks.
    let prefix = root.path().join("profile");
    let out = hull(root.path())
        .env("HULL_JAIL", "off")
        .env("HULL_GUEST_PROFILE", &prefix)
        .args([
            "debug",
            "boot",
            "--console",
            "--cpus",
            "2",
            "--memory",
            "192m",
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // Both CPUs came up (the MP table describes them, the AP started)
    // in the SMP kernel.
    assert!(stdout.contains("Brought up 1 node, 2 CPUs"), "{stdout}");
    let banner = kernel_banner(&stdout);
    assert!(banner.contains(" SMP "), "{banner}");
    assert!(stdout.contains("hull-agent: shutdown status=0"), "{stdout}");
    assert_profiled_both_vcpus(root.path());
}

/// The kernel's "Linux version" line on the console.
fn kernel_banner(console: &str) -> &str {
    console
        .lines()
        .find(|l| l.contains("Linux version 6.1."))
        .unwrap_or_else(|| panic!("no kernel banner:\n{console}"))
}

/// Each vCPU left a profile: samples in time order, over a thousand of
/// them in the guest kernel (a boot is kernel work: nearly all of the
/// boot vCPU's).
fn assert_profiled_both_vcpus(dir: &std::path::Path) {
    for vcpu in ["vcpu0", "vcpu1"] {
        let file = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with(&format!(".{vcpu}")))
            .unwrap_or_else(|| panic!("no profile of {vcpu} in {}", dir.display()));
        let samples: Vec<(u64, u64)> = std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .map(|l| {
                let (at, rip) = l.split_once(' ').unwrap();
                let rip = u64::from_str_radix(rip.trim_start_matches("0x"), 16).unwrap();
                (at.parse().unwrap(), rip)
            })
            .collect();
        assert!(samples.len() > 1000, "{vcpu}: {} samples", samples.len());
        assert!(samples.windows(2).all(|w| w[0].0 <= w[1].0), "{vcpu}");
        let kernel = samples
            .iter()
            .filter(|(_, rip)| *rip >= 0xffff_ffff_8000_0000)
            .count();
        // The second vCPU waits for its start-up IPI outside the kernel.
        assert!(kernel > 1000, "{vcpu}: {kernel} of {}", samples.len());
        if vcpu == "vcpu0" {
            assert!(
                kernel * 10 > samples.len() * 9,
                "{kernel} of {}",
                samples.len()
            );
        }
    }
}

#[test]
fn missing_kvm_device_is_one_clear_line() {
    let root = tempfile::tempdir().unwrap();
    let out = hull(root.path())
        .args(["debug", "boot"])
        .env("HULL_KVM_DEVICE", "/nonexistent/kvm")
        .output()
        .unwrap();
    assert_one_line_error(
        &out,
        "KVM is not available: /nonexistent/kvm does not exist",
    );
}

#[test]
fn bad_kernels_and_sizes_are_one_clear_line() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let out = hull(root.path())
        .args(["debug", "boot", "--kernel", "/nonexistent/vmlinux"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "Cannot open kernel /nonexistent/vmlinux");

    let not_elf = root.path().join("bzImage");
    std::fs::write(&not_elf, b"MZ this is not an ELF file").unwrap();
    let out = hull(root.path())
        .args(["debug", "boot", "--kernel"])
        .arg(&not_elf)
        .output()
        .unwrap();
    assert_one_line_error(&out, "is not an ELF vmlinux");

    let out = hull(root.path())
        .args(["debug", "boot", "--memory", "16m"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "Guest memory of 16 MiB is too small");

    let out = hull(root.path())
        .args(["debug", "boot", "--memory", "lots"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "Invalid size \"lots\"");

    let out = hull(root.path())
        .args(["debug", "boot", "--cpus", "0"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "Invalid vCPU count 0");
}

#[test]
fn info_reports_hypervisor_kernel_and_agent() {
    let root = tempfile::tempdir().unwrap();
    let out = hull(root.path()).arg("info").output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let hypervisor = stdout.lines().next().unwrap();
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert_eq!(hypervisor, "Hypervisor: kvm-pvm (software, native mode)");
        assert!(stdout.contains("hull_pvm"));
    } else {
        assert!(
            hypervisor.starts_with("Hypervisor: kvm (hardware"),
            "{hypervisor}"
        );
    }
    assert!(stdout.contains("Kernel version: 6.1."), "{stdout}");
    assert!(stdout.contains("hull_pvm workarounds"), "{stdout}");
    // The build script makes the uniprocessor variant beside the kernel.
    assert!(
        stdout.contains("Kernel for one vCPU: /") && stdout.contains("-up (uniprocessor)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("version {}", env!("CARGO_PKG_VERSION"))),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("Data dir: {}", root.path().display())),
        "{stdout}"
    );
}
