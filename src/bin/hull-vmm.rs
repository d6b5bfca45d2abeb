//! `hull-vmm`: the slim VMM binary hull starts for every VM (see the
//! `hull-vmm` crate). It links the VMM, its launch spec and its jail only.

fn main() {
    std::process::exit(i32::from(hull_vmm::child::main()));
}
