//! A virtio-mmio device's interrupt: the InterruptStatus register shared
//! with the transport, and the irqfd that raises the guest's IRQ line.

use std::sync::atomic::{AtomicU32, Ordering};

use vmm_sys_util::eventfd::EventFd;

/// InterruptStatus bit: a queue has new used buffers.
pub const INT_VRING: u32 = 1;
/// InterruptStatus bit: the configuration space changed.
pub const INT_CONFIG: u32 = 2;

/// One device's interrupt line.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
    /// The guest IRQ number (GSI) this device uses.
    pub gsi: u32,
}

impl Interrupt {
    /// An interrupt raising `gsi` through `irqfd` (registered with KVM by the caller).
    pub fn new(irqfd: EventFd, gsi: u32) -> Self {
        Self {
            status: AtomicU32::new(0),
            irqfd,
            gsi,
        }
    }

    fn raise(&self, bit: u32) -> std::io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irqfd.write(1)
    }

    /// Sets saved InterruptStatus bits again and raises the line (restore).
    pub fn raise_bits(&self, bits: u32) {
        let _ = self.raise(bits);
    }

    /// Tells the driver a queue has used buffers.
    pub fn signal_used_queue(&self) -> std::io::Result<()> {
        self.raise(INT_VRING)
    }

    /// Tells the driver the config space changed.
    pub fn signal_config_change(&self) -> std::io::Result<()> {
        self.raise(INT_CONFIG)
    }

    /// Current InterruptStatus register value.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The irqfd (tests read it to see whether the interrupt fired).
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_bits_set_on_signal_and_clear_on_ack() {
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap(), 5);
        irq.signal_used_queue().unwrap();
        irq.signal_config_change().unwrap();
        assert_eq!(irq.status(), INT_VRING | INT_CONFIG);
        assert_eq!(irq.irqfd().read().unwrap(), 2);
        irq.ack(INT_VRING);
        assert_eq!(irq.status(), INT_CONFIG);
    }
}
