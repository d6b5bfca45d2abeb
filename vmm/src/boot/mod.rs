//! Loading the guest: ELF `vmlinux` entered through its PVH note, the
//! command line, the initramfs and the boot structures the kernel reads.

pub mod mptable;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::memory::{
    e820_map, CMDLINE_MAX, CMDLINE_START, HIMEM_START, PVH_INFO_START, PVH_MEMMAP_START,
    PVH_MODLIST_START,
};

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;
const PAGE_SIZE: u64 = 4096;

/// Errors loading the guest.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file cannot be opened.
    #[error("Cannot open kernel {0}")]
    KernelOpen(PathBuf, #[source] std::io::Error),
    /// The kernel is not an ELF file (a bzImage, say).
    #[error("Kernel {0} is not an ELF vmlinux (a bzImage cannot be booted; use the vmlinux)")]
    NotElf(PathBuf),
    /// linux-loader refused the ELF.
    #[error("Cannot load kernel {0}: {1:?}")]
    KernelLoad(PathBuf, linux_loader::loader::Error),
    /// The ELF has no PVH entry note (CONFIG_PVH off).
    #[error("Kernel {0} has no PVH entry note (build it with CONFIG_PVH=y)")]
    NoPvhEntry(PathBuf),
    /// The initramfs cannot be read.
    #[error("Cannot read initramfs {0}")]
    Initramfs(PathBuf, #[source] std::io::Error),
    /// The initramfs does not fit above the kernel.
    #[error("Initramfs of {size} bytes does not fit in guest memory")]
    InitramfsTooBig {
        /// Size of the initramfs.
        size: u64,
    },
    /// The command line is too long or has invalid characters.
    #[error("Invalid kernel command line: {0}")]
    Cmdline(String),
    /// Writing boot structures into guest memory failed.
    #[error("Cannot write boot data into guest memory: {0}")]
    Memory(String),
    /// The MP table could not be written.
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
}

/// What the vCPUs need to start the kernel.
#[derive(Debug, Clone, Copy)]
pub struct BootEntry {
    /// The PVH 32-bit entry point.
    pub entry: GuestAddress,
    /// Address of `hvm_start_info`, passed in EBX.
    pub start_info: GuestAddress,
}

/// Loads kernel, initramfs and command line; writes the PVH start info and
/// the MP table.
pub fn load(
    mem: &GuestMemoryMmap,
    kernel: &Path,
    initramfs: Option<&Path>,
    cmdline: &str,
    vcpus: u8,
) -> Result<BootEntry, BootError> {
    let mut file = File::open(kernel).map_err(|e| BootError::KernelOpen(kernel.into(), e))?;
    let mut magic = [0u8; 4];
    if file.read_exact(&mut magic).is_err() || &magic != b"\x7fELF" {
        return Err(BootError::NotElf(kernel.into()));
    }
    let loaded = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| BootError::KernelLoad(kernel.into(), e))?;
    let entry = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => addr,
        _ => return Err(BootError::NoPvhEntry(kernel.into())),
    };

    let mut cl = Cmdline::new(CMDLINE_MAX).map_err(|e| BootError::Cmdline(format!("{e:?}")))?;
    cl.insert_str(cmdline)
        .map_err(|e| BootError::Cmdline(format!("{e}")))?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cl)
        .map_err(|e| BootError::Cmdline(format!("{e:?}")))?;

    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        ..Default::default()
    };

    let mut modules = Vec::new();
    if let Some(path) = initramfs {
        let (addr, size) = load_initramfs(mem, path, loaded.kernel_end)?;
        modules.push(hvm_modlist_entry {
            paddr: addr.0,
            size,
            ..Default::default()
        });
        start_info.nr_modules = 1;
        start_info.modlist_paddr = PVH_MODLIST_START;
    }

    let memmap: Vec<hvm_memmap_table_entry> = e820_map(mem)
        .into_iter()
        .filter(|(_, _, ram)| *ram)
        .map(|(addr, size, _)| hvm_memmap_table_entry {
            addr,
            size,
            type_: E820_RAM,
            reserved: 0,
        })
        .collect();
    start_info.memmap_entries = memmap.len() as u32;

    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(|e| BootError::Memory(format!("{e}")))?;

    mptable::write(mem, vcpus)?;

    Ok(BootEntry {
        entry,
        start_info: GuestAddress(PVH_INFO_START),
    })
}

/// Places the initramfs at the top of the low RAM region, page aligned.
fn load_initramfs(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
) -> Result<(GuestAddress, u64), BootError> {
    let mut file = File::open(path).map_err(|e| BootError::Initramfs(path.into(), e))?;
    let size = file
        .metadata()
        .map_err(|e| BootError::Initramfs(path.into(), e))?
        .len();
    let low = mem
        .iter()
        .next()
        .ok_or(BootError::InitramfsTooBig { size })?;
    let top = low.start_addr().0 + low.len();
    let addr = top
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|a| *a >= kernel_end)
        .ok_or(BootError::InitramfsTooBig { size })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| BootError::Memory(format!("initramfs: {e}")))?;
    Ok((GuestAddress(addr), size))
}
