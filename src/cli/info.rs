//! `hull info`: what this host offers and which guest files hull uses.

use std::path::Path;

use kvm_ioctls::Cap;
use vmm::HostKind;

use crate::guest::files as guest_files;

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Prints the report; never fails (missing pieces are reported as such).
pub fn run(root: &Path) -> anyhow::Result<u8> {
    let host = HostKind::detect();
    print_hypervisor(host);
    print_guest_files(root);
    print_fast_start(root);
    Ok(0)
}

/// The hypervisor, KVM's limits and capabilities, the command line it needs.
fn print_hypervisor(host: HostKind) {
    match vmm::open_kvm(Path::new("/dev/kvm")) {
        Ok(kvm) => {
            println!("Hypervisor: {}", host.describe());
            println!(
                "KVM: API {}, vCPUs max {} (recommended {}), memory slots {}",
                kvm.get_api_version(),
                kvm.get_max_vcpus(),
                kvm.get_nr_vcpus(),
                kvm.get_nr_memslots()
            );
            let caps = [
                ("irqchip", Cap::Irqchip),
                ("irqfd", Cap::Irqfd),
                ("ioeventfd", Cap::Ioeventfd),
                ("pit2", Cap::Pit2),
                ("immediate-exit", Cap::ImmediateExit),
                ("tsc-deadline", Cap::TscDeadlineTimer),
                ("split-irqchip", Cap::SplitIrqchip),
                ("readonly-mem", Cap::ReadonlyMem),
            ];
            let list: Vec<String> = caps
                .iter()
                .map(|(name, cap)| format!("{name} {}", yes(kvm.check_extension(*cap))))
                .collect();
            println!("KVM capabilities: {}", list.join(", "));
        }
        Err(e) => println!("Hypervisor: unavailable ({e})"),
    }
    let extra = host.cmdline_additions();
    println!(
        "Guest command-line additions: {}",
        if extra.is_empty() { "none" } else { extra }
    );
}

/// Which kernel a one-vCPU VM boots, and why when it is not the
/// uniprocessor variant.
fn one_vcpu_kernel(root: &Path, smp: &Path) -> String {
    match guest_files::kernel_for(root, 1) {
        Ok(k) if k != smp => format!("{} (uniprocessor)", k.display()),
        Ok(_) if guest_files::uniprocessor_variant(smp).is_some_and(|p| p.is_file()) => {
            format!("the SMP kernel ({}=off)", guest_files::UP_KERNEL_ENV)
        }
        Ok(_) => "the SMP kernel (no uniprocessor variant beside it)".into(),
        Err(e) => format!("missing ({e})"),
    }
}

/// The guest kernel and agent hull boots.
fn print_guest_files(root: &Path) {
    match guest_files::kernel(root) {
        Ok(k) => {
            println!("Kernel: {}", k.display());
            println!(
                "Kernel version: {}",
                guest_files::kernel_version(&k).unwrap_or_else(|| "unknown".into())
            );
            println!(
                "Kernel flavour: {}",
                if guest_files::kernel_has_pvm_switch(&k) {
                    "hull guest (ELF vmlinux, PVH entry, hull_pvm workarounds)"
                } else {
                    "foreign (no hull_pvm workarounds: will not boot on PVM hosts)"
                }
            );
            println!("Kernel for one vCPU: {}", one_vcpu_kernel(root, &k));
        }
        Err(e) => println!("Kernel: missing ({e})"),
    }
    match guest_files::agent() {
        Ok(a) => {
            let size = std::fs::metadata(&a).map(|m| m.len()).unwrap_or(0);
            println!(
                "Agent: {} (version {}, protocol {}, {} KiB)",
                a.display(),
                agent_protocol::VERSION,
                agent_protocol::protocol::VERSION,
                size / 1024
            );
        }
        Err(e) => println!("Agent: missing ({e})"),
    }
    println!("Data dir: {}", root.display());
}

/// Whether fast start is on, and the snapshots it keeps.
fn print_fast_start(root: &Path) {
    let store = crate::guest::fast_start::snapshots_dir(root);
    println!(
        "Fast start: {} (set {}=0 to boot every container cold)",
        if crate::guest::fast_start::enabled() {
            "on, containers start from a VM snapshot"
        } else {
            "off"
        },
        crate::guest::fast_start::ENABLE_ENV
    );
    let snapshots = crate::guest::fast_start::list(&store);
    let bytes: u64 = snapshots
        .iter()
        .map(|(p, _)| crate::guest::fast_start::disk_usage(p))
        .sum();
    println!(
        "Snapshots: {} in {} ({:.1} MiB on disk; {} moves them)",
        snapshots.len(),
        store.display(),
        bytes as f64 / (1 << 20) as f64,
        crate::guest::fast_start::DIR_ENV
    );
    for (path, meta) in &snapshots {
        if let Some(m) = meta {
            // A warm snapshot says which image disk it holds.
            let warm = m
                .fixed_disks
                .first()
                .map(|d| format!(", warm with {}", d.display()))
                .unwrap_or_default();
            println!(
                "  {}: {} MiB, {} vCPU(s), made in {:.1} s{warm}",
                path.file_name().unwrap_or_default().to_string_lossy(),
                m.mem_mib,
                m.vcpus,
                m.make_seconds
            );
        }
    }
}
