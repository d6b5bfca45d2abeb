//! Walking a tar stream header by header, keeping nothing, for hostile
//! archives: the `tar` crate reads GNU long-name and PAX records whole into
//! memory whatever their size, so archives and layers are first walked
//! here, where long-name and PAX records over [`MAX_META`] are refused and
//! a PAX record's `size` is honoured.

use std::io::{self, Read};

const BLOCK: u64 = 512;
/// Largest long-name or PAX record (real ones hold a path, at most 4 KiB,
/// or a few attributes).
pub const MAX_META: u64 = 1 << 20;

/// Why a walk stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the stream failed (or a decompressor refused it).
    #[error("reading the tar stream")]
    Read(#[source] io::Error),
    /// The stream ends inside an entry.
    #[error("the tar stream is truncated")]
    Truncated,
    /// A header is not a tar header.
    #[error("bad tar header at offset {0}")]
    BadHeader(u64),
    /// A long-name or PAX record too large to be real.
    #[error("a long-name or PAX record of {0} bytes (at most {MAX_META})")]
    MetaTooLarge(u64),
}

/// Reads the tar stream `r` up to its end-of-archive, handing every
/// entry's data length to `skip` (which must consume that many bytes);
/// returns the number of entries (metadata records not counted).
pub fn walk<R: Read>(
    r: &mut R,
    mut skip: impl FnMut(&mut R, u64) -> io::Result<u64>,
) -> Result<u64, Error> {
    let mut offset = 0u64;
    let mut entries = 0u64;
    let mut pax_size = None;
    let mut h = [0u8; BLOCK as usize];
    while read_block(r, &mut h)? {
        if h.iter().all(|&b| b == 0) {
            return Ok(entries);
        }
        check_header(&h, offset)?;
        offset += BLOCK;
        let kind = h[156];
        let meta = matches!(kind, b'x' | b'g' | b'L' | b'K');
        let own = header_size(&h).ok_or(Error::BadHeader(offset - BLOCK))?;
        let size = if meta {
            if own > MAX_META {
                return Err(Error::MetaTooLarge(own));
            }
            own
        } else {
            pax_size.take().unwrap_or(own)
        };
        if kind == b'S' {
            offset += skip_sparse_extensions(r, &h)?;
        }
        // A size of up to 2^64 - 1 (base-256 or PAX) must not wrap the
        // padded length to a small one (found by review while writing the
        // `layer_tar` fuzz target).
        let padded = size
            .checked_next_multiple_of(BLOCK)
            .ok_or(Error::BadHeader(offset - BLOCK))?;
        if kind == b'x' {
            pax_size = pax_record_size(r, size)?;
            skip_exact(r, padded - size, &mut skip)?;
        } else {
            skip_exact(r, padded, &mut skip)?;
        }
        offset = offset
            .checked_add(padded)
            .ok_or(Error::BadHeader(offset - BLOCK))?;
        entries += u64::from(!meta);
    }
    // No end-of-archive blocks: accepted, as GNU tar does.
    Ok(entries)
}

/// Reads one block; false at a clean end of stream.
fn read_block(r: &mut impl Read, b: &mut [u8; BLOCK as usize]) -> Result<bool, Error> {
    let mut have = 0;
    while have < b.len() {
        match r.read(&mut b[have..]) {
            Ok(0) if have == 0 => return Ok(false),
            Ok(0) => return Err(Error::Truncated),
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Read(e)),
        }
    }
    Ok(true)
}

fn skip_exact<R>(
    r: &mut R,
    n: u64,
    skip: &mut impl FnMut(&mut R, u64) -> io::Result<u64>,
) -> Result<(), Error> {
    match skip(r, n).map_err(Error::Read)? {
        got if got == n => Ok(()),
        _ => Err(Error::Truncated),
    }
}

/// The checksum (bytes 148..156 counted as spaces) must match.
fn check_header(h: &[u8; BLOCK as usize], offset: u64) -> Result<(), Error> {
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(b)
            }
        })
        .sum();
    match octal(&h[148..156]) {
        Some(want) if want == sum => Ok(()),
        _ => Err(Error::BadHeader(offset)),
    }
}

/// The size field: octal, or base-256 when its top bit is set.
fn header_size(h: &[u8; BLOCK as usize]) -> Option<u64> {
    let f = &h[124..136];
    if f[0] & 0x80 != 0 {
        if f[0] != 0x80 || f[1..4].iter().any(|&b| b != 0) {
            return None;
        }
        return Some(f[4..].iter().fold(0u64, |a, &b| (a << 8) | u64::from(b)));
    }
    octal(f)
}

fn octal(f: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(f).ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

/// Old GNU sparse headers may be followed by extension blocks.
fn skip_sparse_extensions(r: &mut impl Read, h: &[u8; BLOCK as usize]) -> Result<u64, Error> {
    let mut more = h[482] != 0;
    let mut read = 0;
    let mut ext = [0u8; BLOCK as usize];
    while more {
        if !read_block(r, &mut ext)? {
            return Err(Error::Truncated);
        }
        read += BLOCK;
        more = ext[504] != 0;
    }
    Ok(read)
}

/// Reads a PAX record of `size` bytes; returns its `size` value if any.
fn pax_record_size(r: &mut impl Read, size: u64) -> Result<Option<u64>, Error> {
    let mut data = Vec::with_capacity(size as usize);
    let got = r.take(size).read_to_end(&mut data).map_err(Error::Read)?;
    if got as u64 != size {
        return Err(Error::Truncated);
    }
    // Records are "LEN key=value\n".
    // The last `size` record wins, as in GNU tar.
    Ok(data.split(|&b| b == b'\n').rev().find_map(|rec| {
        let rec = std::str::from_utf8(rec).ok()?;
        let (_, kv) = rec.split_once(' ')?;
        kv.strip_prefix("size=")?.parse().ok()
    }))
}

/// Skips by reading (for streams that cannot seek).
pub fn skip_by_reading<R: Read>(r: &mut R, n: u64) -> io::Result<u64> {
    io::copy(&mut r.take(n), &mut io::sink())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, kind: u8, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(size);
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    fn walk_bytes(b: &[u8]) -> Result<u64, Error> {
        walk(&mut &b[..], skip_by_reading)
    }

    #[test]
    fn walks_entries_and_pax_sizes() {
        let mut t = header("a", b'0', 3);
        t.extend(b"abc");
        t.resize(1024, 0);
        // A PAX record giving the next entry 600 bytes (its header says 0).
        let rec = b"12 size=600\n";
        t.extend(header("pax", b'x', rec.len() as u64));
        t.extend(rec);
        t.resize(t.len().div_ceil(512) * 512, 0);
        t.extend(header("big", b'0', 0));
        t.extend(vec![7u8; 1024]);
        t.extend(vec![0u8; 1024]);
        assert_eq!(walk_bytes(&t).unwrap(), 2);
        // Cut inside the last entry's data.
        assert!(matches!(walk_bytes(&t[..2660]), Err(Error::Truncated)));
    }

    /// A header with its checksum recomputed after `edit`.
    fn edited(name: &str, kind: u8, edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
        let mut h = header(name, kind, 0);
        edit(&mut h);
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    #[test]
    fn sizes_near_the_u64_limit_are_bad_headers_not_overflows() {
        // A base-256 size of 2^64 - 1: its padded length does not fit.
        let mut t = edited("big", b'0', |h| {
            h[124] = 0x80;
            h[125..128].fill(0);
            h[128..136].fill(0xff);
        });
        t.extend(vec![0u8; 1024]);
        assert!(matches!(walk_bytes(&t), Err(Error::BadHeader(0))));
        // The same size from a PAX record.
        let rec = b"30 size=18446744073709551615\n";
        let mut t = header("pax", b'x', rec.len() as u64);
        t.extend(rec);
        t.resize(1024, 0);
        t.extend(header("big", b'0', 0));
        t.extend(vec![0u8; 1024]);
        assert!(matches!(walk_bytes(&t), Err(Error::BadHeader(1024))));
    }

    #[test]
    fn huge_long_names_and_pax_records_are_refused_unread() {
        // A GNU long name announcing 1 TiB: refused from its header.
        let t = header("././@LongLink", b'L', 1 << 40);
        assert!(matches!(walk_bytes(&t), Err(Error::MetaTooLarge(_))));
        let t = header("pax", b'x', 1 << 30);
        assert!(matches!(walk_bytes(&t), Err(Error::MetaTooLarge(_))));
        let mut bad = header("a", b'0', 0);
        bad[0] ^= 1;
        assert!(matches!(walk_bytes(&bad), Err(Error::BadHeader(0))));
    }
}
