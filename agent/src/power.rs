//! Ending the VM.

use agent::Status;

use crate::console::Console;

/// Flushes filesystems, reports `code` and resets the machine. With no ACPI
/// a power-off would only halt the CPU; `reboot=k` makes the reset write
/// 0xfe to the i8042, which the VMM treats as the end of the VM.
pub fn shutdown(console: &mut Console, code: i32) -> ! {
    crate::mounts::unmount_container_mounts();
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    console.status(&Status::Shutdown { code });
    console.drain();
    // SAFETY: reboot with a valid command; as PID 1 we hold CAP_SYS_BOOT.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    // Only reached if reboot failed: nothing more PID 1 can do but wait.
    loop {
        // SAFETY: pause has no preconditions.
        unsafe { libc::pause() };
    }
}
