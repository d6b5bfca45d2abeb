//! One vCPU's architectural state as KVM exposes it, read from a paused
//! vCPU and written into a fresh one.

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

use super::SnapshotError;

/// Everything KVM keeps for a vCPU that a restored guest needs.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    regs: kvm_regs,
    sregs: kvm_sregs,
    xsave: kvm_xsave,
    xcrs: kvm_xcrs,
    debugregs: kvm_debugregs,
    lapic: kvm_lapic_state,
    mp_state: kvm_mp_state,
    events: kvm_vcpu_events,
    msrs: Vec<(u32, u64)>,
}

/// MSRs are read in batches of this many (KVM's limit per call is larger,
/// but a refused MSR ends a batch early and is then skipped).
const MSR_BATCH: usize = 64;

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
    move |e| SnapshotError::Kvm(what, e)
}

impl VcpuState {
    /// Reads the state of a vCPU that is not running. `msr_indices` is the
    /// host's list of saveable MSRs (KVM_GET_MSR_INDEX_LIST).
    pub fn save(vcpu: &VcpuFd, msr_indices: &[u32]) -> Result<Self, SnapshotError> {
        // MP state first: reading it makes KVM settle pending APIC events
        // into the state read afterwards.
        let mp_state = vcpu.get_mp_state().map_err(kvm("get MP state"))?;
        Ok(Self {
            mp_state,
            regs: vcpu.get_regs().map_err(kvm("get registers"))?,
            sregs: vcpu.get_sregs().map_err(kvm("get segment registers"))?,
            xsave: vcpu.get_xsave().map_err(kvm("get XSAVE state"))?,
            xcrs: vcpu.get_xcrs().map_err(kvm("get XCRs"))?,
            debugregs: vcpu.get_debug_regs().map_err(kvm("get debug registers"))?,
            lapic: vcpu.get_lapic().map_err(kvm("get local APIC"))?,
            events: vcpu.get_vcpu_events().map_err(kvm("get vCPU events"))?,
            msrs: read_msrs(vcpu, msr_indices)?,
        })
    }

    /// Writes the state into a fresh vCPU (whose CPUID is already set).
    pub fn restore(&self, vcpu: &VcpuFd) -> Result<(), SnapshotError> {
        vcpu.set_sregs(&self.sregs)
            .map_err(kvm("set segment registers"))?;
        vcpu.set_regs(&self.regs).map_err(kvm("set registers"))?;
        // SAFETY: the buffer is a whole kvm_xsave read by KVM_GET_XSAVE on
        // this host; KVM validates its contents.
        unsafe { vcpu.set_xsave(&self.xsave) }.map_err(kvm("set XSAVE state"))?;
        vcpu.set_xcrs(&self.xcrs).map_err(kvm("set XCRs"))?;
        vcpu.set_debug_regs(&self.debugregs)
            .map_err(kvm("set debug registers"))?;
        vcpu.set_lapic(&self.lapic).map_err(kvm("set local APIC"))?;
        write_msrs(vcpu, &self.msrs)?;
        vcpu.set_mp_state(self.mp_state)
            .map_err(kvm("set MP state"))?;
        vcpu.set_vcpu_events(&self.events)
            .map_err(kvm("set vCPU events"))?;
        Ok(())
    }
}

fn entries(list: impl Iterator<Item = (u32, u64)>) -> Result<Msrs, SnapshotError> {
    let entries: Vec<kvm_msr_entry> = list
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries).map_err(|_| SnapshotError::Invalid("MSR list too long".into()))
}

/// Reads every MSR of `indices` the vCPU gives out; ones KVM lists but
/// refuses to read (features the guest CPUID hides) are left out.
fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<(u32, u64)>, SnapshotError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let batch = &rest[..rest.len().min(MSR_BATCH)];
        let mut msrs = entries(batch.iter().map(|&i| (i, 0)))?;
        let read = vcpu.get_msrs(&mut msrs).map_err(kvm("get MSRs"))?;
        out.extend(msrs.as_slice()[..read].iter().map(|e| (e.index, e.data)));
        // KVM stops at the first MSR it refuses: skip that one.
        rest = &rest[(read + 1).min(rest.len())..];
    }
    Ok(out)
}

fn write_msrs(vcpu: &VcpuFd, msrs: &[(u32, u64)]) -> Result<(), SnapshotError> {
    for chunk in msrs.chunks(MSR_BATCH) {
        let list = entries(chunk.iter().copied())?;
        let written = vcpu.set_msrs(&list).map_err(kvm("set MSRs"))?;
        if written != chunk.len() {
            return Err(SnapshotError::Invalid(format!(
                "KVM refused MSR {:#x} from the snapshot",
                chunk[written].0
            )));
        }
    }
    Ok(())
}
