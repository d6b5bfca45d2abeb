//! What kind of KVM this host offers, and what the guest must be told
//! about it.

use std::path::Path;

/// The hypervisor behind /dev/kvm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// Hardware virtualization (VT-x / AMD-V).
    HardwareKvm,
    /// KVM-PVM: a software hypervisor; a normal guest kernel runs in its
    /// "native" mode with guest kernel code emulated.
    Pvm,
}

/// Where the PVM module announces itself.
const PVM_MODULE: &str = "/sys/module/kvm_pvm";

/// Guest command-line additions a PVM host needs (see docs/guest-kernel.md):
/// hide CPU features its instruction emulator cannot execute, switch on
/// hull's guest-kernel workarounds (`hull_pvm`), and keep glibc off AVX:
/// guest user code sees the host's AVX, but the guest kernel (without
/// XSAVE) does not preserve AVX registers across context switches, so AVX
/// string functions corrupt each other's data between processes. The kernel
/// hands `GLIBC_TUNABLES` to the agent as an environment variable and the
/// agent passes it to every process it starts. `hull_fault_around=16K`
/// (guest-kernel patch 0007) maps 4 cached file pages per read fault
/// instead of 16: where the kernel's code is emulated, mapping (and at exit
/// unmapping) pages a process never touches cost more than the faults it
/// saved (a warm `run --rm busybox true`: the process's run 0.74 s with
/// 64 KiB, 0.48 s with 16 KiB; docs/guest-kernel.md).
/// `hull_vsock_rx_buf=64K` (guest patch 0011): 64 KiB vsock receive
/// buffers instead of 4 KiB, so a host-to-guest stream pays the emulated
/// receive path once per 64 KiB (stdin into a container: 0.92 -> 2.97
/// MiB/s; the buffers hold no more memory than before).
/// `clocksource=kvm-clock`: the kernel would otherwise move to the TSC,
/// which PVM cannot offset for a restored guest, so the guest's clock
/// jumped by the snapshot's age and its timekeeping caught up second by
/// second (~80 µs each: 0.65 s for a 2-hour-old snapshot); kvm-clock is
/// restored with the VM and nothing jumps (docs/fast-start.md).
pub const PVM_CMDLINE: &str = "noxsave clearcpuid=cx16,popcnt,xsave,smap,invpcid,fsgsbase,\
rdrand,rdseed,clflushopt,clwb,rdpid,xsaves,xsavec,xsaveopt,erms,fsrm,rep_good hull_pvm \
hull_fault_around=16K hull_vsock_rx_buf=64K clocksource=kvm-clock \
GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX2,-AVX,-AVX512F,-AVX512VL,-AVX512BW,-EVEX,-AVX_Fast_Unaligned_Load";

impl HostKind {
    /// Detects the host kind from sysfs.
    pub fn detect() -> Self {
        Self::detect_in(Path::new(PVM_MODULE))
    }

    fn detect_in(pvm_module: &Path) -> Self {
        if pvm_module.exists() {
            HostKind::Pvm
        } else {
            HostKind::HardwareKvm
        }
    }

    /// The kernel command-line additions this host needs (none on hardware KVM).
    pub fn cmdline_additions(self) -> &'static str {
        match self {
            HostKind::HardwareKvm => "",
            HostKind::Pvm => PVM_CMDLINE,
        }
    }

    /// A one-line description for `hull info`.
    pub fn describe(self) -> &'static str {
        match self {
            HostKind::HardwareKvm => "kvm (hardware virtualization)",
            HostKind::Pvm => "kvm-pvm (software, native mode)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_is_detected_from_its_module_directory() {
        let dir = std::env::temp_dir().join(format!("hull-pvm-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(HostKind::detect_in(&dir), HostKind::Pvm);
        assert_eq!(
            HostKind::detect_in(&dir.join("absent")),
            HostKind::HardwareKvm
        );
        std::fs::remove_dir(&dir).unwrap();
        assert!(HostKind::Pvm.cmdline_additions().contains("hull_pvm"));
        assert!(HostKind::HardwareKvm.cmdline_additions().is_empty());
    }
}
