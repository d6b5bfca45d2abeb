//! What to do with each kind of vCPU exit: a plain function, so it can be
//! tested with hand-made exits instead of a running guest.

use kvm_ioctls::VcpuExit;

use crate::bus::Bus;

// KVM_SYSTEM_EVENT_* types (linux/kvm.h).
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;
const SYSTEM_EVENT_CRASH: u32 = 3;

/// The outcome of one exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitAction {
    /// Resume the vCPU.
    Continue,
    /// The guest asked for a reset or power-off: the VM ends normally.
    GuestStop,
    /// The guest crashed (triple fault or crash event): the VM ends with an error.
    GuestCrash(String),
    /// KVM could not run the guest: the VM ends with an error.
    Fatal(String),
    /// KVM gave up on the vCPU (`KVM_EXIT_INTERNAL_ERROR`); the vCPU thread,
    /// which can read KVM's detail, turns it into a crash or a failure.
    InternalError,
}

/// Handles one exit against the port-I/O and MMIO buses.
pub fn handle_exit(exit: VcpuExit<'_>, pio: &Bus, mmio: &Bus) -> ExitAction {
    match exit {
        VcpuExit::IoIn(port, data) => {
            pio.read(u64::from(port), data);
            ExitAction::Continue
        }
        VcpuExit::IoOut(port, data) => {
            pio.write(u64::from(port), data);
            ExitAction::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            if !mmio.read(addr, data) {
                tracing::debug!("MMIO read from unmapped {addr:#x}");
            }
            ExitAction::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !mmio.write(addr, data) {
                tracing::debug!("MMIO write to unmapped {addr:#x}");
            }
            ExitAction::Continue
        }
        // With the in-kernel irqchip HLT is handled by KVM; one reaching us
        // is spurious and resuming is right.
        VcpuExit::Hlt | VcpuExit::Intr | VcpuExit::IrqWindowOpen => ExitAction::Continue,
        VcpuExit::Shutdown => ExitAction::GuestCrash("triple fault".into()),
        VcpuExit::SystemEvent(SYSTEM_EVENT_SHUTDOWN | SYSTEM_EVENT_RESET, _) => {
            ExitAction::GuestStop
        }
        VcpuExit::SystemEvent(SYSTEM_EVENT_CRASH, _) => {
            ExitAction::GuestCrash("guest reported a crash".into())
        }
        VcpuExit::SystemEvent(kind, _) => {
            ExitAction::Fatal(format!("unexpected system event {kind}"))
        }
        VcpuExit::FailEntry(reason, cpu) => {
            ExitAction::Fatal(format!("KVM entry failed (reason {reason:#x}, cpu {cpu})"))
        }
        VcpuExit::InternalError => ExitAction::InternalError,
        other => ExitAction::Fatal(format!("unexpected vCPU exit {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;
    use std::sync::{Arc, Mutex};

    struct Reg(u8);
    impl BusDevice for Reg {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            data.fill(self.0);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    fn buses() -> (Bus, Bus, Arc<Mutex<Reg>>) {
        let mut pio = Bus::new();
        let mut mmio = Bus::new();
        let reg = Arc::new(Mutex::new(Reg(7)));
        pio.insert(reg.clone(), 0x80, 1).unwrap();
        mmio.insert(reg.clone(), 0xd000_0000, 0x1000).unwrap();
        (pio, mmio, reg)
    }

    #[test]
    fn port_io_reaches_the_device() {
        let (pio, mmio, reg) = buses();
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x80, &[42]), &pio, &mmio),
            ExitAction::Continue
        );
        assert_eq!(reg.lock().unwrap().0, 42);
        let mut data = [0u8; 1];
        assert_eq!(
            handle_exit(VcpuExit::IoIn(0x80, &mut data), &pio, &mmio),
            ExitAction::Continue
        );
        assert_eq!(data, [42]);
        let mut nothing = [0u8; 2];
        handle_exit(VcpuExit::IoIn(0x2f8, &mut nothing), &pio, &mmio);
        assert_eq!(nothing, [0xff, 0xff]);
    }

    #[test]
    fn mmio_reaches_the_device_and_unmapped_is_harmless() {
        let (pio, mmio, reg) = buses();
        handle_exit(VcpuExit::MmioWrite(0xd000_0010, &[9, 0, 0, 0]), &pio, &mmio);
        assert_eq!(reg.lock().unwrap().0, 9);
        let mut data = [0u8; 4];
        assert_eq!(
            handle_exit(VcpuExit::MmioRead(0xe000_0000, &mut data), &pio, &mmio),
            ExitAction::Continue
        );
        assert_eq!(data, [0xff; 4]);
    }

    #[test]
    fn stops_crashes_and_failures_are_told_apart() {
        let (pio, mmio, _) = buses();
        assert_eq!(
            handle_exit(VcpuExit::SystemEvent(2, &[]), &pio, &mmio),
            ExitAction::GuestStop
        );
        assert_eq!(
            handle_exit(VcpuExit::SystemEvent(1, &[]), &pio, &mmio),
            ExitAction::GuestStop
        );
        assert!(matches!(
            handle_exit(VcpuExit::Shutdown, &pio, &mmio),
            ExitAction::GuestCrash(_)
        ));
        assert!(matches!(
            handle_exit(VcpuExit::SystemEvent(3, &[]), &pio, &mmio),
            ExitAction::GuestCrash(_)
        ));
        assert!(matches!(
            handle_exit(VcpuExit::FailEntry(0x21, 0), &pio, &mmio),
            ExitAction::Fatal(_)
        ));
        assert!(matches!(
            handle_exit(VcpuExit::InternalError, &pio, &mmio),
            ExitAction::InternalError
        ));
        assert_eq!(
            handle_exit(VcpuExit::Hlt, &pio, &mmio),
            ExitAction::Continue
        );
    }
}
