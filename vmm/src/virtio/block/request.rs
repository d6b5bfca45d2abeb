//! One virtio-blk request: parsed out of a descriptor chain, then run
//! against the disk (virtio spec 1.x §5.2.6).
//!
//! A chain is a 16-byte header (type, reserved, sector) in device-readable
//! memory, the data buffer, and one status byte: the last byte of the chain,
//! device-writable. The header may share a descriptor with the data (and the
//! data with the status), so the chain is parsed by bytes, not by descriptor
//! count. Everything in it comes from the guest and is checked before use.

use std::io;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::disk::{DiskFile, Segment, SECTOR_SIZE};
use crate::virtio::Misbehaviour;

/// Size of the request header (`struct virtio_blk_outhdr`).
pub const HEADER_SIZE: usize = 16;
/// Bytes of the GET_ID answer.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Longest chain accepted: a split queue's chain never holds more
/// descriptors than the queue has entries.
pub const MAX_DESCRIPTORS: usize = super::QUEUE_SIZE as usize;

/// Why a request failed. Logged at debug level: they are the guest's doing.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// More descriptors than a chain may hold.
    #[error("Descriptor chain is longer than {MAX_DESCRIPTORS} descriptors")]
    ChainTooLong,
    /// The chain does not end in a device-writable byte.
    #[error("Descriptor chain has no writable status byte")]
    NoStatus,
    /// A descriptor points outside guest memory.
    #[error("Descriptor {addr:#x}+{len} is outside guest memory")]
    BadAddress {
        /// Guest-physical start.
        addr: u64,
        /// Length in bytes.
        len: u32,
    },
    /// Device-readable buffers must all precede device-writable ones.
    #[error("Readable descriptor after a writable one")]
    ReadableAfterWritable,
    /// Fewer than 16 device-readable bytes.
    #[error("Request header is {0} bytes, need {HEADER_SIZE}")]
    ShortHeader(u64),
    /// Reading the header out of guest memory failed.
    #[error("Cannot read the request header")]
    Header(#[source] vm_memory::GuestMemoryError),
    /// A request that only writes guest memory carries device-readable data.
    #[error("Request type {kind} carries {len} device-readable data bytes")]
    ReadableData {
        /// The request type.
        kind: u32,
        /// Unexpected readable bytes.
        len: u64,
    },
    /// A write request carries device-writable data.
    #[error("Write request carries {0} device-writable data bytes")]
    WritableData(u64),
    /// Data that is not a whole number of sectors.
    #[error("Data length {0} is not a multiple of {SECTOR_SIZE}")]
    PartialSector(u64),
    /// The request reaches past the end of the disk.
    #[error("Request of {len} bytes at sector {sector} is beyond the disk's {capacity} sectors")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Data length in bytes.
        len: u64,
        /// Disk size in sectors.
        capacity: u64,
    },
    /// A write to a read-only disk.
    #[error("Write to a read-only disk")]
    ReadOnly,
    /// An unknown request type.
    #[error("Unsupported request type {0}")]
    Unsupported(u32),
    /// The host file failed.
    #[error("Disk I/O failed")]
    Io(#[source] io::Error),
}

impl RequestError {
    /// The status byte the driver gets for this failure.
    pub fn status(&self) -> u8 {
        match self {
            Self::Unsupported(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// A chain that could not be parsed into a request.
#[derive(Debug)]
pub struct Rejected {
    /// What was wrong.
    pub error: RequestError,
    /// Where to report it, if the chain has a usable status byte.
    pub status: Option<GuestAddress>,
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestType {
    /// Read sectors into guest memory.
    In,
    /// Write guest memory to sectors.
    Out,
    /// Make previous writes durable.
    Flush,
    /// Return the device ID string.
    GetId,
    /// Anything else: answered with VIRTIO_BLK_S_UNSUPP.
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(value: u32) -> Self {
        match value {
            VIRTIO_BLK_T_IN => Self::In,
            VIRTIO_BLK_T_OUT => Self::Out,
            VIRTIO_BLK_T_FLUSH => Self::Flush,
            VIRTIO_BLK_T_GET_ID => Self::GetId,
            other => Self::Unsupported(other),
        }
    }
}

/// A parsed request; every address in it has been checked against guest
/// memory.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// The request type.
    pub kind: RequestType,
    /// First sector (IN and OUT).
    pub sector: u64,
    /// The data buffer, in order (empty for FLUSH and unsupported types).
    pub data: Vec<Segment>,
    /// The status byte.
    pub status: GuestAddress,
}

impl Request {
    /// Parses a descriptor chain (any iterator of descriptors, so tests and
    /// fuzzing can feed one directly).
    pub fn parse<I>(mem: &GuestMemoryMmap, chain: I) -> Result<Self, Rejected>
    where
        I: IntoIterator<Item = Descriptor>,
    {
        let descs: Vec<Descriptor> = chain.into_iter().take(MAX_DESCRIPTORS + 1).collect();
        if descs.len() > MAX_DESCRIPTORS {
            return Err(Rejected {
                error: RequestError::ChainTooLong,
                status: None,
            });
        }
        let status = descs
            .last()
            .filter(|d| d.is_write_only() && d.len() > 0)
            .and_then(|d| d.addr().checked_add(u64::from(d.len()) - 1))
            .filter(|&addr| mem.check_range(addr, 1))
            .ok_or(Rejected {
                error: RequestError::NoStatus,
                status: None,
            })?;
        // From here on the status byte is usable: failures are reported there.
        Self::parse_with_status(mem, &descs, status).map_err(|error| Rejected {
            error,
            status: Some(status),
        })
    }

    fn parse_with_status(
        mem: &GuestMemoryMmap,
        descs: &[Descriptor],
        status: GuestAddress,
    ) -> Result<Self, RequestError> {
        let mut readable = Vec::new();
        let mut writable = Vec::new();
        for d in descs {
            if !mem.check_range(d.addr(), d.len() as usize) {
                return Err(RequestError::BadAddress {
                    addr: d.addr().0,
                    len: d.len(),
                });
            }
            let seg = Segment {
                addr: d.addr(),
                len: d.len(),
            };
            if d.is_write_only() {
                writable.push(seg);
            } else if !writable.is_empty() {
                return Err(RequestError::ReadableAfterWritable);
            } else {
                readable.push(seg);
            }
        }
        // The last writable byte is the status, not data.
        if let Some(last) = writable.last_mut() {
            last.len -= 1;
        }
        writable.retain(|s| s.len > 0);
        readable.retain(|s| s.len > 0);

        let mut header = [0u8; HEADER_SIZE];
        let rest = read_prefix(mem, &readable, &mut header)?;
        let kind_raw = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut sector_bytes = [0u8; 8];
        sector_bytes.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(sector_bytes);
        let kind = RequestType::from(kind_raw);

        let rest_len = total_len(&rest);
        let writable_len = total_len(&writable);
        let data = match kind {
            RequestType::In | RequestType::GetId => {
                if rest_len > 0 {
                    return Err(RequestError::ReadableData {
                        kind: kind_raw,
                        len: rest_len,
                    });
                }
                writable
            }
            RequestType::Out => {
                if writable_len > 0 {
                    return Err(RequestError::WritableData(writable_len));
                }
                rest
            }
            // FLUSH has no data; an unknown type's buffers are not ours to read.
            RequestType::Flush | RequestType::Unsupported(_) => Vec::new(),
        };
        if matches!(kind, RequestType::In | RequestType::Out)
            && !total_len(&data).is_multiple_of(SECTOR_SIZE)
        {
            return Err(RequestError::PartialSector(total_len(&data)));
        }
        Ok(Self {
            kind,
            sector,
            data,
            status,
        })
    }

    /// Total length of the data buffer.
    pub fn data_len(&self) -> u64 {
        total_len(&self.data)
    }

    /// Runs the request. Returns how many bytes were written to the data
    /// buffer (which counts in the used length even if the request then
    /// failed) and the outcome.
    pub fn execute(
        &self,
        mem: &GuestMemoryMmap,
        disk: &mut DiskFile,
        id: &[u8; ID_BYTES],
    ) -> (u64, Result<(), RequestError>) {
        match self.kind {
            RequestType::In => match self.disk_offset(disk) {
                Ok(offset) => {
                    let (written, result) = disk.read_into(mem, offset, &self.data);
                    (written, result.map_err(RequestError::Io))
                }
                Err(e) => (0, Err(e)),
            },
            RequestType::Out => {
                // Checked before the range so a read-only disk is never touched.
                if disk.read_only() {
                    return (0, Err(RequestError::ReadOnly));
                }
                let result = self.disk_offset(disk).and_then(|offset| {
                    disk.write_from(mem, offset, &self.data)
                        .map_err(RequestError::Io)
                });
                (0, result)
            }
            RequestType::Flush => (0, disk.flush().map_err(RequestError::Io)),
            RequestType::GetId => {
                let mut written = 0u64;
                let mut left = &id[..];
                for seg in &self.data {
                    if left.is_empty() {
                        break;
                    }
                    let n = left.len().min(seg.len as usize);
                    if let Err(e) = mem.write_slice(&left[..n], seg.addr) {
                        return (written, Err(RequestError::Io(io::Error::other(e))));
                    }
                    written += n as u64;
                    left = &left[n..];
                }
                (written, Ok(()))
            }
            RequestType::Unsupported(t) => (0, Err(RequestError::Unsupported(t))),
        }
    }

    /// The byte offset of the request on disk, after checking the whole
    /// data buffer fits in the disk.
    fn disk_offset(&self, disk: &DiskFile) -> Result<u64, RequestError> {
        let len = self.data_len();
        let out_of_range = || RequestError::OutOfRange {
            sector: self.sector,
            len,
            capacity: disk.sectors(),
        };
        let offset = self
            .sector
            .checked_mul(SECTOR_SIZE)
            .ok_or_else(out_of_range)?;
        match offset.checked_add(len) {
            Some(end) if end <= disk.size() => Ok(offset),
            _ => Err(out_of_range()),
        }
    }
}

/// Copies the first `out.len()` bytes of `segs` into `out` and returns the
/// segments that remain after them.
fn read_prefix(
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    out: &mut [u8],
) -> Result<Vec<Segment>, RequestError> {
    let mut filled = 0usize;
    let mut rest = Vec::new();
    for seg in segs {
        let need = out.len() - filled;
        if need == 0 {
            rest.push(*seg);
            continue;
        }
        let take = need.min(seg.len as usize);
        mem.read_slice(&mut out[filled..filled + take], seg.addr)
            .map_err(RequestError::Header)?;
        filled += take;
        if take < seg.len as usize {
            // `take` < seg.len <= u32::MAX and the range was checked, so
            // neither the cast nor the address can overflow.
            rest.push(Segment {
                addr: GuestAddress(seg.addr.0 + take as u64),
                len: seg.len - take as u32,
            });
        }
    }
    if filled < out.len() {
        return Err(RequestError::ShortHeader(filled as u64));
    }
    Ok(rest)
}

fn total_len(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// Parses and runs one chain; returns the used length (data bytes written
/// plus the status byte, or 0 when the chain has no status byte).
pub fn handle_chain<I>(
    mem: &GuestMemoryMmap,
    chain: I,
    disk: &mut DiskFile,
    id: &[u8; ID_BYTES],
    misbehaviour: &Misbehaviour,
) -> u32
where
    I: IntoIterator<Item = Descriptor>,
{
    let (written, status_addr, status) = match Request::parse(mem, chain) {
        Ok(request) => {
            let (written, result) = request.execute(mem, disk, id);
            let status = match result {
                Ok(()) => VIRTIO_BLK_S_OK as u8,
                Err(e) => {
                    tracing::debug!("virtio-blk: {:?} request failed: {e}", request.kind);
                    e.status()
                }
            };
            (written, request.status, status)
        }
        Err(Rejected {
            error,
            status: Some(addr),
        }) => {
            misbehaviour.record(format_args!("bad request: {error}"));
            (0, addr, error.status())
        }
        Err(Rejected {
            error,
            status: None,
        }) => {
            misbehaviour.record(format_args!("bad request, no status byte: {error}"));
            return 0;
        }
    };
    if mem.write_obj(status, status_addr).is_err() {
        // Checked at parse time; only reachable if memory changed under us.
        return 0;
    }
    // A chain holds at most u32::MAX bytes, status included.
    u32::try_from(written.saturating_add(1)).unwrap_or(u32::MAX)
}

/// Serves every available chain of `queue`. Returns whether the driver must
/// be interrupted (something was used and, with EVENT_IDX, the driver asked
/// to hear about it).
pub fn process_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    disk: &mut DiskFile,
    id: &[u8; ID_BYTES],
    misbehaviour: &Misbehaviour,
) -> Result<bool, virtio_queue::Error> {
    let event_idx = queue.event_idx_enabled();
    let mut used_any = false;
    loop {
        if event_idx {
            queue.disable_notification(mem)?;
        }
        let mut popped = 0usize;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            popped += 1;
            let head = chain.head_index();
            let len = handle_chain(mem, chain, disk, id, misbehaviour);
            match queue.add_used(mem, head, len) {
                Ok(()) => used_any = true,
                // A bad head index in the avail ring: drop that entry only.
                Err(e) => misbehaviour.record(format_args!("cannot return chain {head}: {e}")),
            }
        }
        if popped == 0 {
            crate::virtio::misbehaviour::check_avail_index(queue, mem, misbehaviour);
        }
        if !event_idx {
            break;
        }
        // Re-enable notifications, then look again for chains that raced
        // with it. An avail index the iterator refuses yields nothing: stop
        // rather than spin on it.
        if !queue.enable_notification(mem)? || popped == 0 {
            break;
        }
    }
    Ok(used_any && queue.needs_notification(mem)?)
}
