//! Encoding one tar entry's headers: a ustar header, preceded by a PAX
//! `x` header when a value does not fit the ustar fields.

/// Tar block size.
pub(super) const BLOCK: usize = 512;

/// One entry's metadata, as it goes into the headers.
#[derive(Debug, Clone, Copy)]
pub(super) struct Header<'a> {
    /// Path relative to the layer root, `/` appended for directories.
    pub name: &'a [u8],
    /// ustar type flag (`b'0'`, `b'5'`, ...).
    pub typeflag: u8,
    /// Permission bits with setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Data size (0 for everything but regular files).
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Symlink target or hard-link target path.
    pub link: &'a [u8],
    /// Device major and minor.
    pub dev: (u64, u64),
    /// Extended attributes, in the order they are written.
    pub xattrs: &'a [(Vec<u8>, Vec<u8>)],
}

/// Largest value an octal field of `width` bytes holds (NUL-terminated).
fn octal_max(width: usize) -> u64 {
    (1u64 << (3 * (width - 1))) - 1
}

/// Appends the entry's headers to `out`: a PAX `x` header with its
/// records (only when needed), then the ustar header.
pub(super) fn encode(h: &Header<'_>, out: &mut Vec<u8>) {
    let pax = pax_records(h);
    if !pax.is_empty() {
        let pax_name = pax_header_name(h.name);
        let pax_mtime = h.mtime.clamp(0, octal_max(12) as i64);
        let mut block = ustar_block(&pax_name, b'x', 0o644, 0, 0, pax.len() as u64, pax_mtime);
        finish_block(&mut block);
        out.extend_from_slice(&block);
        out.extend_from_slice(&pax);
        pad(out);
    }
    let name = if h.name.len() <= 100 {
        h.name
    } else {
        &h.name[..100]
    };
    let fits = |v: u64, width: usize| if v <= octal_max(width) { v } else { 0 };
    let mtime = if (0..=octal_max(12) as i64).contains(&h.mtime) {
        h.mtime
    } else {
        0
    };
    let mut block = ustar_block(
        name,
        h.typeflag,
        h.mode & 0o7777,
        fits(h.uid, 8),
        fits(h.gid, 8),
        fits(h.size, 12),
        mtime,
    );
    let link = if h.link.len() <= 100 {
        h.link
    } else {
        &h.link[..100]
    };
    block[157..157 + link.len()].copy_from_slice(link);
    if matches!(h.typeflag, b'3' | b'4') {
        number(&mut block[329..337], h.dev.0);
        number(&mut block[337..345], h.dev.1);
    }
    finish_block(&mut block);
    out.extend_from_slice(&block);
}

/// A ustar block with the common fields filled (checksum not yet).
fn ustar_block(
    name: &[u8],
    typeflag: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: i64,
) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    b[..name.len()].copy_from_slice(name);
    octal(&mut b[100..108], u64::from(mode));
    octal(&mut b[108..116], uid);
    octal(&mut b[116..124], gid);
    octal(&mut b[124..136], size);
    octal(&mut b[136..148], mtime as u64);
    b[156] = typeflag;
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    b
}

/// Writes the checksum (six octal digits, NUL, space: what GNU tar writes).
fn finish_block(b: &mut [u8; BLOCK]) {
    b[148..156].fill(b' ');
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    b[148..154].copy_from_slice(format!("{sum:06o}").as_bytes());
    b[154] = 0;
}

/// Zero-padded octal digits and a NUL; the caller checked the value fits.
fn octal(field: &mut [u8], v: u64) {
    let digits = format!("{v:0width$o}", width = field.len() - 1);
    field[..digits.len()].copy_from_slice(digits.as_bytes());
}

/// Octal when it fits, else GNU base-256 (device numbers have no PAX key).
fn number(field: &mut [u8], v: u64) {
    if v <= octal_max(field.len()) {
        octal(field, v);
    } else {
        field.fill(0);
        let bytes = v.to_be_bytes();
        let n = field.len() - 1;
        field[1..].copy_from_slice(&bytes[8 - n..]);
        field[0] = 0x80;
    }
}

/// Pads `out` with zeros to a block boundary.
pub(super) fn pad(out: &mut Vec<u8>) {
    let rem = out.len() % BLOCK;
    if rem != 0 {
        out.resize(out.len() + BLOCK - rem, 0);
    }
}

/// The name of the PAX header itself (readers ignore it; GNU tar's form).
fn pax_header_name(name: &[u8]) -> Vec<u8> {
    let trimmed = name.strip_suffix(b"/").unwrap_or(name);
    let base = trimmed.rsplit(|&b| b == b'/').next().unwrap_or(trimmed);
    let mut n = b"PaxHeaders/".to_vec();
    n.extend_from_slice(base);
    n.truncate(100);
    n
}

/// The PAX records the entry needs, in a fixed key order; empty if the
/// ustar header says it all.
fn pax_records(h: &Header<'_>) -> Vec<u8> {
    let mut recs = Vec::new();
    if h.name.len() > 100 {
        record(&mut recs, b"path", h.name);
    }
    if h.link.len() > 100 {
        record(&mut recs, b"linkpath", h.link);
    }
    if h.size > octal_max(12) {
        record(&mut recs, b"size", h.size.to_string().as_bytes());
    }
    if h.uid > octal_max(8) {
        record(&mut recs, b"uid", h.uid.to_string().as_bytes());
    }
    if h.gid > octal_max(8) {
        record(&mut recs, b"gid", h.gid.to_string().as_bytes());
    }
    if h.mtime_nsec != 0 || !(0..=octal_max(12) as i64).contains(&h.mtime) {
        record(
            &mut recs,
            b"mtime",
            pax_time(h.mtime, h.mtime_nsec).as_bytes(),
        );
    }
    for (name, value) in h.xattrs {
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(name);
        record(&mut recs, &key, value);
    }
    recs
}

/// A PAX time: seconds and a fraction without trailing zeros. Negative
/// times are one decimal number (-1.5 is 1.5 s before the epoch).
pub(super) fn pax_time(secs: i64, nsec: u32) -> String {
    let (sign, whole, frac) = if secs < 0 && nsec > 0 {
        ("-", -(secs + 1), 1_000_000_000 - nsec)
    } else if secs < 0 {
        ("-", -secs, 0)
    } else {
        ("", secs, nsec)
    };
    if frac == 0 {
        return format!("{sign}{whole}");
    }
    let digits = format!("{frac:09}");
    format!("{sign}{whole}.{}", digits.trim_end_matches('0'))
}

/// Appends one `"<len> <key>=<value>\n"` record; `len` counts itself.
fn record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let rest = 1 + key.len() + 1 + value.len() + 1;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, value: &str) -> Vec<u8> {
        let mut v = Vec::new();
        record(&mut v, key.as_bytes(), value.as_bytes());
        v
    }

    #[test]
    fn pax_record_length_counts_itself() {
        assert_eq!(rec("path", "a"), b"9 path=a\n");
        // 2 + " path=" + 90 + "\n" = 99; one more byte and the length
        // needs a third digit: 101, not 100.
        let v = "x".repeat(90);
        assert_eq!(rec("path", &v), format!("99 path={v}\n").into_bytes());
        let v = "x".repeat(91);
        assert_eq!(rec("path", &v), format!("101 path={v}\n").into_bytes());
    }

    #[test]
    fn pax_times() {
        assert_eq!(pax_time(5, 250_000_000), "5.25");
        assert_eq!(pax_time(5, 1), "5.000000001");
        assert_eq!(pax_time(5, 0), "5");
        assert_eq!(pax_time(-2, 500_000_000), "-1.5");
        assert_eq!(pax_time(-3, 0), "-3");
    }

    #[test]
    fn big_numbers_go_to_pax_and_zero_in_ustar() {
        let h = Header {
            name: b"f",
            typeflag: b'0',
            mode: 0o4755,
            uid: 2_097_152,
            gid: 2_097_151,
            size: 1 << 33,
            mtime: -1,
            mtime_nsec: 0,
            link: b"",
            dev: (0, 0),
            xattrs: &[],
        };
        let mut out = Vec::new();
        encode(&h, &mut out);
        let recs = [
            rec("size", "8589934592"),
            rec("uid", "2097152"),
            rec("mtime", "-1"),
        ]
        .concat();
        assert_eq!(&out[..12], b"PaxHeaders/f");
        assert!(out[12..100].iter().all(|&b| b == 0));
        assert_eq!(out[156], b'x');
        assert_eq!(&out[BLOCK..BLOCK + recs.len()], &recs[..]);
        let ustar = &out[out.len() - BLOCK..];
        assert_eq!(&ustar[100..108], b"0004755\0");
        assert_eq!(&ustar[108..116], b"0000000\0", "uid overridden by PAX");
        assert_eq!(&ustar[116..124], b"7777777\0", "gid fits");
        assert_eq!(&ustar[124..136], b"00000000000\0");
        assert_eq!(&ustar[136..148], b"00000000000\0");
        assert_eq!(out.len(), 3 * BLOCK);
    }

    #[test]
    fn big_device_numbers_are_base_256() {
        let mut f = [0u8; 8];
        number(&mut f, 0o7777777 + 1);
        assert_eq!(f, [0x80, 0, 0, 0, 0, 0x20, 0, 0]);
        number(&mut f, 7);
        assert_eq!(&f, b"0000007\0");
    }

    #[test]
    fn checksum_matches_the_definition() {
        let h = Header {
            name: b"etc/",
            typeflag: b'5',
            mode: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 1_700_000_000,
            mtime_nsec: 0,
            link: b"",
            dev: (0, 0),
            xattrs: &[],
        };
        let mut out = Vec::new();
        encode(&h, &mut out);
        assert_eq!(out.len(), BLOCK);
        let mut copy = out.clone();
        copy[148..156].fill(b' ');
        let sum: u32 = copy.iter().map(|&x| u32::from(x)).sum();
        let field = std::str::from_utf8(&out[148..154]).unwrap();
        assert_eq!(u32::from_str_radix(field, 8).unwrap(), sum);
        assert_eq!(&out[154..156], b"\0 ");
    }
}
