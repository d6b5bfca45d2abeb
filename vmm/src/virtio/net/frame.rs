//! Ethernet frames in and out of virtio-net descriptor chains.
//!
//! Every chain starts with the 12-byte `virtio_net_hdr` (VERSION_1 always
//! has `num_buffers`); the backend speaks plain Ethernet frames, so the
//! header is stripped on the way out (after finishing a checksum the guest
//! left to us) and added on the way in. Chains are guest input: direction,
//! bounds and lengths are checked before a byte is copied.

use virtio_bindings::virtio_net::{
    VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestMemory, Permissions};

/// Size of `struct virtio_net_hdr_mrg_rxbuf`, the header of every frame.
pub const HDR_SIZE: usize = 12;
/// Largest Ethernet frame either side may hand over (the qemu stream
/// protocol's and passt's limit; Linux's ETH_MAX_MTU plus the header).
pub const MAX_FRAME: usize = 65535;
/// Smallest frame worth forwarding: an Ethernet header.
pub const MIN_FRAME: usize = 14;

/// Why a chain carried no usable frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// A tx descriptor the device should write, or an rx one it should read.
    #[error("Descriptor has the wrong direction")]
    Direction,
    /// A descriptor outside guest memory.
    #[error("Descriptor outside guest memory")]
    OutOfMemory,
    /// The chain holds less than a header and an Ethernet header.
    #[error("Frame of {0} bytes is too short")]
    TooShort(usize),
    /// The chain holds more than the largest frame.
    #[error("Frame larger than {MAX_FRAME} bytes")]
    TooLong,
    /// The guest asked for segmentation, which is not offered.
    #[error("Unsupported GSO type {0}")]
    Gso(u8),
    /// The checksum position lies outside the frame.
    #[error("Checksum at {start}+{offset} outside a {len}-byte frame")]
    ChecksumRange {
        /// csum_start.
        start: usize,
        /// csum_offset.
        offset: usize,
        /// Frame length.
        len: usize,
    },
    /// An rx buffer too small for the frame.
    #[error("Receive buffer of {have} bytes for a {need}-byte frame")]
    BufferTooSmall {
        /// Bytes the buffer holds.
        have: usize,
        /// Bytes needed (header included).
        need: usize,
    },
}

/// Reads the frame of a tx chain, header stripped, into `out` (cleared
/// first), finishing its checksum if the guest asked for that.
pub fn read_tx<M, I>(mem: &M, descs: I, out: &mut Vec<u8>) -> Result<(), FrameError>
where
    M: GuestMemory,
    I: IntoIterator<Item = Descriptor>,
{
    out.clear();
    let mut raw = Vec::new();
    for desc in descs {
        if desc.is_write_only() {
            return Err(FrameError::Direction);
        }
        let len = desc.len() as usize;
        if raw.len() + len > HDR_SIZE + MAX_FRAME {
            return Err(FrameError::TooLong);
        }
        let start = raw.len();
        raw.resize(start + len, 0);
        mem.read_slice(&mut raw[start..], desc.addr())
            .map_err(|_| FrameError::OutOfMemory)?;
    }
    if raw.len() < HDR_SIZE + MIN_FRAME {
        return Err(FrameError::TooShort(raw.len()));
    }
    let flags = raw[0];
    let gso = raw[1];
    if u32::from(gso) != VIRTIO_NET_HDR_GSO_NONE {
        return Err(FrameError::Gso(gso));
    }
    let csum_start = usize::from(u16::from_le_bytes([raw[6], raw[7]]));
    let csum_offset = usize::from(u16::from_le_bytes([raw[8], raw[9]]));
    out.extend_from_slice(&raw[HDR_SIZE..]);
    if u32::from(flags) & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        finish_checksum(out, csum_start, csum_offset)?;
    }
    Ok(())
}

/// Completes a partial checksum as a NIC does: the Internet checksum of
/// `frame[start..]` (whose field at `start + offset` holds the
/// pseudo-header sum) stored at `start + offset`.
pub fn finish_checksum(frame: &mut [u8], start: usize, offset: usize) -> Result<(), FrameError> {
    let at = start.saturating_add(offset);
    if start > frame.len() || at.saturating_add(2) > frame.len() {
        return Err(FrameError::ChecksumRange {
            start,
            offset,
            len: frame.len(),
        });
    }
    let mut sum: u64 = 0;
    let mut words = frame[start..].chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // 0 and 0xffff are the same in ones' complement; UDP reserves 0 for
    // "no checksum", so write 0xffff as Linux does.
    let csum = match !(sum as u16) {
        0 => 0xffff,
        c => c,
    };
    frame[at..at + 2].copy_from_slice(&csum.to_be_bytes());
    Ok(())
}

/// Writes `frame` behind a header into an rx chain; returns the bytes
/// written (the used length). `data_valid` tells the guest the frame's
/// checksums need no check (the backend made them).
pub fn write_rx<M, I>(mem: &M, chain: I, frame: &[u8], data_valid: bool) -> Result<u32, FrameError>
where
    M: GuestMemory,
    I: IntoIterator<Item = Descriptor>,
{
    let mut descs = Vec::new();
    let mut have = 0usize;
    for desc in chain {
        if !desc.is_write_only() {
            return Err(FrameError::Direction);
        }
        if !mem.check_range(desc.addr(), desc.len() as usize, Permissions::Write) {
            return Err(FrameError::OutOfMemory);
        }
        have = have.saturating_add(desc.len() as usize);
        descs.push(desc);
    }
    let need = HDR_SIZE + frame.len();
    if have < need {
        return Err(FrameError::BufferTooSmall { have, need });
    }
    let mut hdr = [0u8; HDR_SIZE];
    if data_valid {
        hdr[0] = VIRTIO_NET_HDR_F_DATA_VALID as u8;
    }
    // num_buffers: one buffer per frame (no MRG_RXBUF).
    hdr[10] = 1;
    let mut pieces = [&hdr[..], frame];
    let mut written = 0usize;
    for desc in descs {
        let mut room = desc.len() as usize;
        let mut addr = desc.addr();
        for piece in pieces.iter_mut() {
            if room == 0 {
                break;
            }
            let n = piece.len().min(room);
            if n == 0 {
                continue;
            }
            mem.write_slice(&piece[..n], addr)
                .map_err(|_| FrameError::OutOfMemory)?;
            *piece = &piece[n..];
            room -= n;
            written += n;
            addr = addr.unchecked_add(n as u64);
        }
        if written == need {
            break;
        }
    }
    Ok(written as u32)
}
