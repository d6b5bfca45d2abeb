//! The smallest i8042 keyboard controller a Linux guest needs: it answers
//! the status port as "idle" and turns the CPU-reset command (0xfe written to
//! port 0x64, what `reboot=k` does) into the end of the VM.

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// First port of the controller (data port 0x60, status/command 0x64).
pub const I8042_BASE: u64 = 0x60;
/// Ports 0x60..=0x64.
pub const I8042_LEN: u64 = 5;

const COMMAND_OFFSET: u64 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

/// The controller; `reset` is signalled when the guest resets the CPU.
#[derive(Debug)]
pub struct I8042 {
    reset: EventFd,
}

impl I8042 {
    /// A controller that writes to `reset` on the reset command.
    pub fn new(reset: EventFd) -> Self {
        Self { reset }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty, so the guest's
        // `kb_wait()` before the reset command returns at once. The data port
        // (and port 0x61 in this range) read 0 as well.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            if let Err(e) = self.reset.write(1) {
                tracing::error!("i8042: cannot signal reset: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_signals_and_other_writes_do_not() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(evt.try_clone().unwrap());
        dev.write(0, &[0xfe]); // data port: not a command
        dev.write(4, &[0xad]); // disable keyboard: ignored
        assert!(evt.read().is_err(), "no reset yet");
        let mut status = [0xffu8];
        dev.read(4, &mut status);
        assert_eq!(status, [0]);
        dev.write(4, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }
}
