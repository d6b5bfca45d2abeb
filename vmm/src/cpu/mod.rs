//! vCPU creation and the architectural state the PVH entry expects.

pub mod exit;
pub mod profile;
pub mod vcpu;

use kvm_bindings::{
    kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::boot::BootEntry;
use crate::memory::{BOOT_GDT_START, BOOT_IDT_START};

/// Errors configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// A KVM vCPU ioctl failed.
    #[error("vCPU {id}: {what} failed")]
    Kvm {
        /// vCPU index.
        id: u8,
        /// Which setting.
        what: &'static str,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Writing the GDT/IDT into guest memory failed.
    #[error("Cannot write the boot GDT/IDT")]
    Tables(#[source] vm_memory::GuestMemoryError),
}

fn kvm_err(id: u8, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> CpuError {
    move |source| CpuError::Kvm { id, what, source }
}

/// The CPUID KVM supports on this host, read once per VM.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, kvm_ioctls::Error> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
}

/// Per-vCPU CPUID: topology and APIC IDs for this vCPU, and the
/// "running under a hypervisor" bit.
pub fn vcpu_cpuid(base: &CpuId, id: u8, count: u8) -> CpuId {
    let mut cpuid = base.clone();
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            1 => {
                entry.ebx =
                    (entry.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                entry.ecx |= 1 << 31; // hypervisor present
            }
            0xb => {
                entry.edx = u32::from(id);
            }
            _ => {}
        }
    }
    cpuid
}

// MSR numbers (Intel SDM vol. 4).
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// The MSRs a freshly reset microVM CPU gets. IA32_ARCH_CAPABILITIES is
/// deliberately absent: PVM hosts refuse non-zero writes to it.
pub fn boot_msrs() -> Vec<(u32, u64)> {
    vec![
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        // Fast string operations enabled, as firmware leaves them.
        (MSR_IA32_MISC_ENABLE, 1),
        // MTRRs enabled, default type write-back.
        (MSR_MTRR_DEF_TYPE, (1 << 11) | 6),
    ]
}

/// A flat GDT descriptor: flags (access byte + granularity nibble), base, limit.
fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (u64::from(flags), u64::from(base), u64::from(limit));
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The KVM view of GDT entry `index`.
fn segment(index: u16, entry: u64) -> kvm_segment {
    let flags = |shift: u32, bits: u64| ((entry >> shift) & bits) as u8;
    let g = flags(55, 1);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: flags(40, 0xf),
        present: flags(47, 1),
        dpl: flags(45, 3),
        db: flags(54, 1),
        s: flags(44, 1),
        l: flags(53, 1),
        g,
        avl: flags(52, 1),
        unusable: if flags(47, 1) == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// GDT of the PVH entry: null, flat 32-bit code, flat data, 32-bit TSS.
pub fn pvh_gdt() -> [u64; 4] {
    [
        0,
        gdt_entry(0xc09b, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x008b, 0, 0x67),
    ]
}

/// Writes the boot GDT and an empty IDT into guest memory (once per VM).
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), CpuError> {
    for (i, entry) in pvh_gdt().iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + i as u64 * 8))
            .map_err(CpuError::Tables)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(CpuError::Tables)
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Puts `vcpu` in the state the PVH ABI promises: 32-bit protected mode,
/// paging off, flat segments, EBX = start info.
pub fn setup_vcpu(vcpu: &VcpuFd, id: u8, cpuid: &CpuId, boot: &BootEntry) -> Result<(), CpuError> {
    vcpu.set_cpuid2(cpuid).map_err(kvm_err(id, "set CPUID"))?;

    let entries: Vec<kvm_msr_entry> = boot_msrs()
        .into_iter()
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| CpuError::Kvm {
        id,
        what: "build MSR list",
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm_err(id, "set MSRs"))?;
    if set != entries.len() {
        // Not fatal: the kernel programs what it needs itself; record which
        // MSR the host refused so a boot failure can be traced back to it.
        tracing::warn!(
            "vCPU {id}: host accepted {set} of {} boot MSRs (first refused: {:#x})",
            entries.len(),
            entries[set].index
        );
    }

    let regs = kvm_regs {
        rflags: 0x2,
        rip: boot.entry.0,
        rbx: boot.start_info.0,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm_err(id, "set registers"))?;

    let mut sregs = vcpu.get_sregs().map_err(kvm_err(id, "get sregs"))?;
    let gdt = pvh_gdt();
    let code = segment(1, gdt[1]);
    let data = segment(2, gdt[2]);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(3, gdt[3]);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs).map_err(kvm_err(id, "set sregs"))?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm_err(id, "set FPU"))?;

    // Local interrupt lines as the MP table describes them.
    let mut lapic = vcpu.get_lapic().map_err(kvm_err(id, "get LAPIC"))?;
    set_lvt_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(kvm_err(id, "set LAPIC"))?;
    Ok(())
}

fn set_lvt_mode(regs: &mut [std::os::raw::c_char; 1024], offset: usize, mode: u32) {
    let mut raw = [0u8; 4];
    for (i, b) in raw.iter_mut().enumerate() {
        *b = regs[offset + i] as u8;
    }
    let value = (u32::from_le_bytes(raw) & !0x700) | (mode << 8);
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *b as std::os::raw::c_char;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_code_segment_decodes_like_the_sdm_says() {
        let gdt = pvh_gdt();
        assert_eq!(gdt[1], 0x00cf_9b00_0000_ffff);
        let cs = segment(1, gdt[1]);
        assert_eq!((cs.base, cs.limit, cs.selector), (0, 0xffff_ffff, 8));
        assert_eq!(
            (cs.type_, cs.present, cs.db, cs.s, cs.l, cs.g),
            (0xb, 1, 1, 1, 0, 1)
        );
        let tr = segment(3, gdt[3]);
        assert_eq!(
            (tr.limit, tr.type_, tr.s, tr.g, tr.selector),
            (0x67, 0xb, 0, 0, 24)
        );
    }

    #[test]
    fn lvt_mode_bits_are_replaced_not_ored() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[APIC_LVT0 + 1] = 0x05; // some previous delivery mode bits
        set_lvt_mode(&mut regs, APIC_LVT0, APIC_MODE_EXTINT);
        assert_eq!(regs[APIC_LVT0 + 1] as u8 & 0x07, 0x07);
        set_lvt_mode(&mut regs, APIC_LVT0, APIC_MODE_NMI);
        assert_eq!(regs[APIC_LVT0 + 1] as u8 & 0x07, 0x04);
    }

    #[test]
    fn boot_msrs_never_touch_arch_capabilities() {
        assert!(boot_msrs().iter().all(|(i, _)| *i != 0x10a));
    }
}
