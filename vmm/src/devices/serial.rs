//! 8250 UART on COM1 (vm-superio), the guest's console and the agent's
//! early status channel.

use std::io::Write;

use serde::{Deserialize, Serialize};
use vm_superio::serial::SerialState;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// COM1's I/O ports.
pub const COM1_BASE: u64 = 0x3f8;
/// Number of registers of an 8250.
pub const COM1_LEN: u64 = 8;
/// COM1's legacy interrupt line.
pub const COM1_IRQ: u32 = 4;

/// Raises the UART's interrupt through an irqfd registered with KVM.
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The serial port as a bus device; what the guest transmits goes to `out`.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
}

impl SerialDevice {
    /// A UART that signals `irq` and writes the guest's output to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: Serial::new(IrqTrigger(irq), out),
        }
    }
}

/// The UART's registers, for a snapshot (vm-superio's [`SerialState`] in a
/// serialisable form). Without them a restored guest's driver, which caches
/// the interrupt-enable register, would wait for a transmit interrupt that
/// never comes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SerialSaved {
    regs: [u8; 9],
    in_buffer: Vec<u8>,
}

impl SerialDevice {
    /// The registers, for a snapshot.
    pub fn state(&self) -> SerialSaved {
        let s = self.uart.state();
        SerialSaved {
            regs: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer,
        }
    }

    /// A UART in a saved state; `None` if the state is invalid.
    pub fn from_state(
        saved: &SerialSaved,
        irq: EventFd,
        out: Box<dyn Write + Send>,
    ) -> Option<Self> {
        let [baud_divisor_low, baud_divisor_high, interrupt_enable, interrupt_identification, line_control, line_status, modem_control, modem_status, scratch] =
            saved.regs;
        let state = SerialState {
            baud_divisor_low,
            baud_divisor_high,
            interrupt_enable,
            interrupt_identification,
            line_control,
            line_status,
            modem_control,
            modem_status,
            scratch,
            in_buffer: saved.in_buffer.clone(),
        };
        let uart =
            Serial::from_state(&state, IrqTrigger(irq), vm_superio::serial::NoEvents, out).ok()?;
        Some(Self { uart })
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The 8250 has byte registers only; wider accesses read the first.
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = self.uart.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&value) = data.first() {
            // Failing to signal the interrupt or to write the sink loses
            // console output only; the guest must go on.
            if let Err(e) = self.uart.write(offset as u8, value) {
                tracing::debug!("serial write: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut sink = self.0.lock().map_err(|_| std::io::ErrorKind::Other)?;
            sink.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmitted_bytes_reach_the_sink_and_raise_thre_interrupt() {
        let sink = Shared::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), Box::new(sink.clone()));
        // Enable the "transmitter holding register empty" interrupt (IER bit 1).
        dev.write(1, &[0x02]);
        for b in b"ok\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"ok\n");
        assert!(irq.read().unwrap() >= 1);
        // Line status register: transmitter empty bits set.
        let mut lsr = [0u8; 1];
        dev.read(5, &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60);
    }

    #[test]
    fn saved_registers_come_back() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), Box::new(std::io::sink()));
        dev.write(1, &[0x02]); // IER: THRE interrupt
        dev.write(7, &[0x5a]); // scratch
        let saved: SerialSaved =
            serde_json::from_str(&serde_json::to_string(&dev.state()).unwrap()).unwrap();
        let mut back = SerialDevice::from_state(&saved, irq, Box::new(std::io::sink())).unwrap();
        let mut b = [0u8; 1];
        back.read(1, &mut b);
        assert_eq!(b[0], 0x02);
        back.read(7, &mut b);
        assert_eq!(b[0], 0x5a);
    }
}
