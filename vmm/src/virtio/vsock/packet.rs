//! vsock packets: the 44-byte header, reading a guest's packet out of a tx
//! descriptor chain and writing one into an rx descriptor chain.
//!
//! Header and payload may share one descriptor (the 6.1 guest does that) or
//! be spread over several: both directions work on the chain as a stream of
//! bytes. Every address and length comes from the guest and is checked
//! before use.

use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError, Permissions};

/// Size of a vsock packet header (`struct virtio_vsock_hdr`).
pub const HDR_SIZE: usize = 44;
/// Largest payload accepted from or sent to the guest (the Linux driver's
/// own maximum packet buffer).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// The host's CID.
pub const HOST_CID: u64 = 2;
/// The only socket type supported: a stream.
pub const TYPE_STREAM: u16 = 1;

/// Packet operations (virtio spec 5.10.6).
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection reset (refused or aborted).
    pub const RST: u16 = 3;
    /// One or both directions are shut down.
    pub const SHUTDOWN: u16 = 4;
    /// Stream data.
    pub const RW: u16 = 5;
    /// Unsolicited credit information.
    pub const CREDIT_UPDATE: u16 = 6;
    /// The sender asks for a credit update.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Errors reading or writing a packet. Each one fails that packet only.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// The chain holds fewer bytes than a header.
    #[error("Descriptor chain holds {0} bytes, less than a vsock header")]
    ShortChain(usize),
    /// The header's length field exceeds what the chain holds.
    #[error("Packet length {len} exceeds the {avail} payload bytes in the chain")]
    LengthBeyondChain {
        /// Length claimed by the header.
        len: u32,
        /// Payload bytes the chain actually holds.
        avail: usize,
    },
    /// The header's length field exceeds [`MAX_PAYLOAD`].
    #[error("Packet length {0} exceeds the 64 KiB limit")]
    TooLong(u32),
    /// A tx chain had a device-writable descriptor, or an rx chain a
    /// device-readable one.
    #[error("Descriptor has the wrong direction for this queue")]
    WrongDirection,
    /// A descriptor points outside guest memory.
    #[error("Descriptor at {addr:#x} (+{len}) is outside guest memory")]
    OutOfRange {
        /// Guest address of the descriptor's buffer.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// The payload does not fit the rx buffer (a muxer bug, never the guest's).
    #[error("Packet of {need} bytes does not fit a {cap} byte rx buffer")]
    NoRoom {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        cap: usize,
    },
    /// Guest memory access failed after the range check.
    #[error("Guest memory access failed")]
    Memory(#[source] GuestMemoryError),
}

/// A vsock packet header, host byte order (little-endian on the wire).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type ([`TYPE_STREAM`]).
    pub type_: u16,
    /// Operation ([`op`]).
    pub op: u16,
    /// Operation flags ([`SHUTDOWN_RCV`], [`SHUTDOWN_SEND`]).
    pub flags: u32,
    /// Sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer.
    pub fwd_cnt: u32,
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from(le_u32(b, at)) | (u64::from(le_u32(b, at + 4)) << 32)
}

impl Header {
    /// Decodes a header from its wire form.
    pub fn from_bytes(b: &[u8; HDR_SIZE]) -> Self {
        Self {
            src_cid: le_u64(b, 0),
            dst_cid: le_u64(b, 8),
            src_port: le_u32(b, 16),
            dst_port: le_u32(b, 20),
            len: le_u32(b, 24),
            type_: le_u16(b, 28),
            op: le_u16(b, 30),
            flags: le_u32(b, 32),
            buf_alloc: le_u32(b, 36),
            fwd_cnt: le_u32(b, 40),
        }
    }

    /// Encodes the header in its wire form.
    pub fn to_bytes(&self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// One descriptor of a chain: a checked guest buffer.
#[derive(Clone, Copy, Debug)]
struct Segment {
    addr: GuestAddress,
    len: usize,
}

/// The buffers of a chain, all in one direction and all inside guest memory.
#[derive(Debug, Default)]
struct Segments {
    segs: Vec<Segment>,
    total: usize,
}

impl Segments {
    fn collect<M, I>(mem: &M, descs: I, writable: bool) -> Result<Self, PacketError>
    where
        M: GuestMemory,
        I: IntoIterator<Item = virtio_queue::desc::split::Descriptor>,
    {
        let access = if writable {
            Permissions::Write
        } else {
            Permissions::Read
        };
        let mut out = Segments::default();
        // The descriptor chain iterator already stops after queue-size
        // descriptors and at 4 GiB in total, so this loop is bounded.
        for desc in descs {
            if desc.is_write_only() != writable {
                return Err(PacketError::WrongDirection);
            }
            if desc.len() == 0 {
                continue;
            }
            let len = desc.len() as usize;
            if !mem.check_range(desc.addr(), len, access) {
                return Err(PacketError::OutOfRange {
                    addr: desc.addr().0,
                    len: desc.len(),
                });
            }
            out.total = out.total.saturating_add(len);
            out.segs.push(Segment {
                addr: desc.addr(),
                len,
            });
        }
        Ok(out)
    }

    /// Calls `f(guest address, offset in the data, length)` for each piece
    /// of `[start, start + len)` of the chain's byte stream.
    fn for_range<F>(&self, start: usize, len: usize, mut f: F) -> Result<(), PacketError>
    where
        F: FnMut(GuestAddress, usize, usize) -> Result<(), PacketError>,
    {
        let mut skip = start;
        let mut done = 0;
        for seg in &self.segs {
            if done == len {
                break;
            }
            if skip >= seg.len {
                skip -= seg.len;
                continue;
            }
            let n = (seg.len - skip).min(len - done);
            // Cannot overflow: the range was checked to lie inside guest memory.
            let addr = GuestAddress(seg.addr.0 + skip as u64);
            f(addr, done, n)?;
            done += n;
            skip = 0;
        }
        if done < len {
            return Err(PacketError::NoRoom {
                need: start + len,
                cap: self.total,
            });
        }
        Ok(())
    }

    fn read<M: GuestMemory>(
        &self,
        mem: &M,
        start: usize,
        buf: &mut [u8],
    ) -> Result<(), PacketError> {
        self.for_range(start, buf.len(), |addr, off, n| {
            mem.read_slice(&mut buf[off..off + n], addr)
                .map_err(PacketError::Memory)
        })
    }

    fn write<M: GuestMemory>(&self, mem: &M, start: usize, buf: &[u8]) -> Result<(), PacketError> {
        self.for_range(start, buf.len(), |addr, off, n| {
            mem.write_slice(&buf[off..off + n], addr)
                .map_err(PacketError::Memory)
        })
    }
}

/// A packet the guest sent: its header and its payload (`hdr.len` bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxPacket {
    /// The header as the guest wrote it.
    pub hdr: Header,
    /// The payload, exactly `hdr.len` bytes.
    pub payload: Vec<u8>,
}

impl TxPacket {
    /// Reads a packet from the descriptors of a tx chain.
    ///
    /// Fails if any descriptor is device-writable or outside guest memory,
    /// if the chain is shorter than a header, or if the header's length is
    /// above [`MAX_PAYLOAD`] or beyond the bytes the chain holds. Anything
    /// after `hdr.len` payload bytes is ignored.
    pub fn from_descriptors<M, I>(mem: &M, descs: I) -> Result<Self, PacketError>
    where
        M: GuestMemory,
        I: IntoIterator<Item = virtio_queue::desc::split::Descriptor>,
    {
        let segs = Segments::collect(mem, descs, false)?;
        if segs.total < HDR_SIZE {
            return Err(PacketError::ShortChain(segs.total));
        }
        let mut raw = [0u8; HDR_SIZE];
        segs.read(mem, 0, &mut raw)?;
        let hdr = Header::from_bytes(&raw);
        let len = hdr.len as usize;
        if len > MAX_PAYLOAD {
            return Err(PacketError::TooLong(hdr.len));
        }
        let avail = segs.total - HDR_SIZE;
        if len > avail {
            return Err(PacketError::LengthBeyondChain {
                len: hdr.len,
                avail,
            });
        }
        let mut payload = vec![0u8; len];
        segs.read(mem, HDR_SIZE, &mut payload)?;
        Ok(Self { hdr, payload })
    }
}

/// The guest-writable buffers of an rx chain, checked and ready to take
/// one packet.
#[derive(Debug)]
pub struct RxBuffer {
    segs: Segments,
}

impl RxBuffer {
    /// Checks the descriptors of an rx chain: all device-writable, inside
    /// guest memory, and room for at least a header.
    pub fn from_descriptors<M, I>(mem: &M, descs: I) -> Result<Self, PacketError>
    where
        M: GuestMemory,
        I: IntoIterator<Item = virtio_queue::desc::split::Descriptor>,
    {
        let segs = Segments::collect(mem, descs, true)?;
        if segs.total < HDR_SIZE {
            return Err(PacketError::ShortChain(segs.total));
        }
        Ok(Self { segs })
    }

    /// The largest payload this buffer can take.
    pub fn max_payload(&self) -> usize {
        (self.segs.total - HDR_SIZE).min(MAX_PAYLOAD)
    }

    /// Writes `hdr` (with its length set to the payload's) and `payload`;
    /// returns the number of bytes written, for the used ring.
    pub fn write_packet<M: GuestMemory>(
        &self,
        mem: &M,
        hdr: &Header,
        payload: &[u8],
    ) -> Result<u32, PacketError> {
        if payload.len() > self.max_payload() {
            return Err(PacketError::NoRoom {
                need: HDR_SIZE + payload.len(),
                cap: self.segs.total,
            });
        }
        let mut hdr = *hdr;
        // Cannot truncate: bounded by MAX_PAYLOAD above.
        hdr.len = payload.len() as u32;
        self.segs.write(mem, 0, &hdr.to_bytes())?;
        self.segs.write(mem, HDR_SIZE, payload)?;
        Ok((HDR_SIZE + payload.len()) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::split::Descriptor;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn rd(addr: u64, len: u32) -> Descriptor {
        Descriptor::new(addr, len, 0, 0)
    }

    fn wr(addr: u64, len: u32) -> Descriptor {
        Descriptor::new(addr, len, VRING_DESC_F_WRITE as u16, 0)
    }

    fn sample(len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1025,
            dst_port: 80,
            len,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 7,
        }
    }

    #[test]
    fn header_round_trips_and_is_little_endian() {
        let h = Header {
            src_cid: 0x0102_0304_0506_0708,
            ..sample(5)
        };
        let b = h.to_bytes();
        assert_eq!(&b[0..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[24..28], &[5, 0, 0, 0]);
        assert_eq!(&b[30..32], &[op::RW as u8, 0]);
        assert_eq!(Header::from_bytes(&b), h);
    }

    #[test]
    fn parses_header_and_payload_in_one_descriptor() {
        let m = mem();
        let h = sample(5);
        m.write_slice(&h.to_bytes(), GuestAddress(0x1000)).unwrap();
        m.write_slice(b"hello", GuestAddress(0x1000 + 44)).unwrap();
        let p = TxPacket::from_descriptors(&m, [rd(0x1000, 49)]).unwrap();
        assert_eq!(p.hdr, h);
        assert_eq!(p.payload, b"hello");
    }

    #[test]
    fn parses_header_and_payload_split_anywhere() {
        let m = mem();
        let h = sample(5);
        m.write_slice(&h.to_bytes(), GuestAddress(0x1000)).unwrap();
        m.write_slice(b"hello", GuestAddress(0x2000)).unwrap();
        let p = TxPacket::from_descriptors(&m, [rd(0x1000, 44), rd(0x2000, 5)]).unwrap();
        assert_eq!(p.payload, b"hello");
        // The header itself split over three descriptors, payload over two.
        let b = h.to_bytes();
        m.write_slice(&b[..10], GuestAddress(0x3000)).unwrap();
        m.write_slice(&b[10..40], GuestAddress(0x4000)).unwrap();
        m.write_slice(&b[40..], GuestAddress(0x5000)).unwrap();
        m.write_slice(b"he", GuestAddress(0x5004)).unwrap();
        m.write_slice(b"llo", GuestAddress(0x6000)).unwrap();
        let descs = [rd(0x3000, 10), rd(0x4000, 30), rd(0x5000, 6), rd(0x6000, 3)];
        let p = TxPacket::from_descriptors(&m, descs).unwrap();
        assert_eq!(p.hdr, h);
        assert_eq!(p.payload, b"hello");
    }

    #[test]
    fn ignores_bytes_beyond_len() {
        let m = mem();
        m.write_slice(&sample(2).to_bytes(), GuestAddress(0x1000))
            .unwrap();
        m.write_slice(b"hi-trailing", GuestAddress(0x1000 + 44))
            .unwrap();
        let p = TxPacket::from_descriptors(&m, [rd(0x1000, 44 + 11)]).unwrap();
        assert_eq!(p.payload, b"hi");
    }

    #[test]
    fn rejects_malformed_tx_chains() {
        let m = mem();
        m.write_slice(&sample(100).to_bytes(), GuestAddress(0x1000))
            .unwrap();
        // len beyond the chain
        assert!(matches!(
            TxPacket::from_descriptors(&m, [rd(0x1000, 44 + 99)]),
            Err(PacketError::LengthBeyondChain {
                len: 100,
                avail: 99
            })
        ));
        // len above 64 KiB, even with a chain that long
        m.write_slice(&sample(70_000).to_bytes(), GuestAddress(0x1000))
            .unwrap();
        assert!(matches!(
            TxPacket::from_descriptors(&m, [rd(0x1000, 80_000)]),
            Err(PacketError::TooLong(70_000))
        ));
        // too short for a header, empty chain
        assert!(matches!(
            TxPacket::from_descriptors(&m, [rd(0x1000, 43)]),
            Err(PacketError::ShortChain(43))
        ));
        assert!(matches!(
            TxPacket::from_descriptors(&m, []),
            Err(PacketError::ShortChain(0))
        ));
        // out of guest memory, and an address that would wrap around
        assert!(matches!(
            TxPacket::from_descriptors(&m, [rd(0xf_fff0, 44)]),
            Err(PacketError::OutOfRange { .. })
        ));
        assert!(matches!(
            TxPacket::from_descriptors(&m, [rd(u64::MAX - 10, 44)]),
            Err(PacketError::OutOfRange { .. })
        ));
        // a device-writable descriptor on the tx queue
        assert!(matches!(
            TxPacket::from_descriptors(&m, [wr(0x1000, 44)]),
            Err(PacketError::WrongDirection)
        ));
    }

    #[test]
    fn writes_rx_packets_into_one_or_many_descriptors() {
        let m = mem();
        let h = sample(0);
        let one = RxBuffer::from_descriptors(&m, [wr(0x1000, 4096)]).unwrap();
        assert_eq!(one.max_payload(), 4096 - 44);
        assert_eq!(one.write_packet(&m, &h, b"abc").unwrap(), 47);
        let mut raw = [0u8; 47];
        m.read_slice(&mut raw, GuestAddress(0x1000)).unwrap();
        let got = Header::from_bytes(raw[..44].try_into().unwrap());
        assert_eq!(got, Header { len: 3, ..h });
        assert_eq!(&raw[44..], b"abc");

        let split =
            RxBuffer::from_descriptors(&m, [wr(0x3000, 20), wr(0x4000, 26), wr(0x5000, 10)])
                .unwrap();
        assert_eq!(split.max_payload(), 12);
        assert_eq!(split.write_packet(&m, &h, b"0123456789").unwrap(), 54);
        let mut hb = [0u8; 44];
        m.read_slice(&mut hb[..20], GuestAddress(0x3000)).unwrap();
        m.read_slice(&mut hb[20..], GuestAddress(0x4000)).unwrap();
        assert_eq!(Header::from_bytes(&hb).len, 10);
        let mut tail = [0u8; 10];
        m.read_slice(&mut tail[..2], GuestAddress(0x4000 + 24))
            .unwrap();
        m.read_slice(&mut tail[2..], GuestAddress(0x5000)).unwrap();
        assert_eq!(&tail, b"0123456789");
        assert!(matches!(
            split.write_packet(&m, &h, &[0; 13]),
            Err(PacketError::NoRoom { .. })
        ));
    }

    #[test]
    fn rejects_malformed_rx_chains() {
        let m = mem();
        assert!(matches!(
            RxBuffer::from_descriptors(&m, [wr(0x1000, 43)]),
            Err(PacketError::ShortChain(43))
        ));
        assert!(matches!(
            RxBuffer::from_descriptors(&m, [rd(0x1000, 4096)]),
            Err(PacketError::WrongDirection)
        ));
        assert!(matches!(
            RxBuffer::from_descriptors(&m, [wr(0x10_0000, 4096)]),
            Err(PacketError::OutOfRange { .. })
        ));
    }
}
