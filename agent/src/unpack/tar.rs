//! A small streaming tar reader: ustar, GNU long names/links (`L`/`K`),
//! PAX extended headers (`x`/`g`).
//!
//! Built for hostile input and for a guest where every system call is
//! expensive: the stream is read in large chunks into one buffer, headers
//! are parsed in place, and file data is handed to the caller as slices of
//! that buffer (one `write` per buffered chunk, no per-byte work). Every
//! size a header claims is bounded by what the stream really supplies; the
//! metadata records (long names, PAX) are capped in size.

use std::io::{self, Read};

use super::Error;

/// Size of a tar block.
pub const BLOCK: usize = 512;
/// Largest long name / long link / PAX record block we accept.
pub const MAX_META: u64 = 1 << 20;

/// The kinds of entries the unpacker creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Regular file (`0`, `\0`, `7`).
    File,
    /// Hard link to an earlier entry (`1`).
    HardLink,
    /// Symbolic link (`2`).
    Symlink,
    /// Character device (`3`).
    Char,
    /// Block device (`4`).
    Block,
    /// Directory (`5`).
    Dir,
    /// Named pipe (`6`).
    Fifo,
}

/// One entry of the archive, with every extension header already applied.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    /// Entry path as stored (not yet cleaned).
    pub path: Vec<u8>,
    /// Link target (symlinks and hard links).
    pub link: Vec<u8>,
    /// What the entry is; `None` only in `Default`.
    pub kind: Option<Kind>,
    /// Bytes of data that follow the header.
    pub size: u64,
    /// Permission bits incl. setuid/setgid/sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds of the modification time (from PAX).
    pub mtime_nsec: u32,
    /// Device major number.
    pub dev_major: u32,
    /// Device minor number.
    pub dev_minor: u32,
    /// Extended attributes (`SCHILY.xattr.*`).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    /// The path for messages.
    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

/// PAX attributes (local `x` or global `g`).
#[derive(Debug, Clone, Default)]
struct Pax {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u32>,
    gid: Option<u32>,
    mtime: Option<(i64, u32)>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse: bool,
}

/// Streaming tar reader over any byte stream.
pub struct TarReader<R> {
    inner: R,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    eof: bool,
    /// Bytes of the tar stream consumed so far.
    offset: u64,
    global: Pax,
}

impl<R: Read> TarReader<R> {
    /// A reader using `buf` (at least a few blocks long) as its buffer.
    pub fn new(inner: R, buf: Box<[u8]>) -> Self {
        let buf = if buf.len() < 16 * BLOCK {
            vec![0u8; 16 * BLOCK].into_boxed_slice()
        } else {
            buf
        };
        TarReader {
            inner,
            buf,
            start: 0,
            end: 0,
            eof: false,
            offset: 0,
            global: Pax::default(),
        }
    }

    /// Gives the buffer back (to reuse it for the next layer: in the guest
    /// every fresh page costs milliseconds).
    pub fn into_buffer(self) -> Box<[u8]> {
        self.buf
    }

    /// Bytes of the (uncompressed) tar stream consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn available(&self) -> usize {
        self.end - self.start
    }

    /// Makes at least `min(want, capacity)` bytes available unless the
    /// stream ends first; reads as much as fits in each call. Returns the
    /// number of bytes available.
    fn ensure(&mut self, want: usize) -> Result<usize, Error> {
        let want = want.min(self.buf.len());
        if self.available() >= want || self.eof {
            return Ok(self.available());
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while self.end < want {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A compressed stream cut short.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(Error::Truncated {
                        path: format!("compressed stream ({e})"),
                    })
                }
                Err(e) => return Err(Error::Read(e)),
            }
        }
        Ok(self.available())
    }

    fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.available());
        self.start += n;
        self.offset += n as u64;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Hands the next `len` bytes of data to `sink` in chunks as large as
    /// the buffer allows, then skips the padding to the next block. A
    /// stream that ends early is `Error::Truncated`.
    pub fn data(
        &mut self,
        len: u64,
        path: &[u8],
        mut sink: impl FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut left = len;
        while left > 0 {
            let want = usize::try_from(left).unwrap_or(usize::MAX);
            let have = self.ensure(want)?;
            if have == 0 {
                return Err(truncated(path));
            }
            let n = have.min(want);
            sink(&self.buf[self.start..self.start + n])?;
            self.consume(n);
            left -= n as u64;
        }
        self.skip_padding(len, path)
    }

    /// Skips `len` bytes of data and the padding after them.
    pub fn skip(&mut self, len: u64, path: &[u8]) -> Result<(), Error> {
        self.data(len, path, |_| Ok(()))
    }

    fn skip_padding(&mut self, len: u64, path: &[u8]) -> Result<(), Error> {
        let pad = (BLOCK - (len % BLOCK as u64) as usize) % BLOCK;
        if pad > 0 {
            if self.ensure(pad)? < pad {
                return Err(truncated(path));
            }
            self.consume(pad);
        }
        Ok(())
    }

    /// Reads a metadata record's data (long name, PAX) into memory.
    fn meta(&mut self, size: u64, what: &str) -> Result<Vec<u8>, Error> {
        if size > MAX_META {
            return Err(Error::BadHeader {
                offset: self.offset,
                reason: format!("{what} record of {size} bytes is too large"),
            });
        }
        let mut v = Vec::with_capacity(size as usize);
        self.data(size, what.as_bytes(), |c| {
            v.extend_from_slice(c);
            Ok(())
        })?;
        Ok(v)
    }

    /// Reads the next 512-byte header block; `None` at end of archive.
    fn block(&mut self) -> Result<Option<[u8; BLOCK]>, Error> {
        let have = self.ensure(BLOCK)?;
        if have == 0 {
            // No end-of-archive blocks: accept, as GNU tar does.
            return Ok(None);
        }
        if have < BLOCK {
            return Err(Error::Truncated {
                path: format!("header at offset {}", self.offset),
            });
        }
        let mut b = [0u8; BLOCK];
        b.copy_from_slice(&self.buf[self.start..self.start + BLOCK]);
        self.consume(BLOCK);
        if b.iter().all(|&x| x == 0) {
            return Ok(None);
        }
        Ok(Some(b))
    }

    /// Reads headers up to the next real entry. Its data must then be
    /// consumed with [`TarReader::data`] or [`TarReader::skip`] (`size`
    /// bytes) before the next call.
    // Over 80 lines on purpose: one loop in which GNU long-name/long-link
    // and PAX extension headers accumulate into the entry that follows;
    // split up, that state would be threaded through every helper of the
    // unpacker's hottest path.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, Error> {
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: Option<Pax> = None;
        loop {
            let hdr_offset = self.offset;
            let Some(h) = self.block()? else {
                if long_name.is_some() || long_link.is_some() || pax.is_some() {
                    return Err(Error::Truncated {
                        path: "extension header without its entry".into(),
                    });
                }
                return Ok(None);
            };
            check_checksum(&h, hdr_offset)?;
            let size = num(&h[124..136], "size", hdr_offset)?;
            let typeflag = h[156];
            match typeflag {
                b'L' => {
                    long_name = Some(cstr(&self.meta(size, "GNU long name")?).to_vec());
                    continue;
                }
                b'K' => {
                    long_link = Some(cstr(&self.meta(size, "GNU long link")?).to_vec());
                    continue;
                }
                b'x' | b'X' => {
                    let data = self.meta(size, "PAX header")?;
                    let mut p = pax.take().unwrap_or_default();
                    parse_pax(&data, &mut p, hdr_offset)?;
                    pax = Some(p);
                    continue;
                }
                b'g' => {
                    let data = self.meta(size, "PAX global header")?;
                    let mut g = std::mem::take(&mut self.global);
                    parse_pax(&data, &mut g, hdr_offset)?;
                    // Only attributes that make sense for every entry.
                    g.path = None;
                    g.link = None;
                    g.size = None;
                    self.global = g;
                    continue;
                }
                b'V' => {
                    // Volume label: no file.
                    self.skip(size, b"volume label")?;
                    continue;
                }
                _ => {}
            }
            let mut e = Entry {
                path: header_path(&h),
                link: cstr(&h[157..257]).to_vec(),
                size,
                mode: (num(&h[100..108], "mode", hdr_offset)? & 0o7777) as u32,
                uid: id(num(&h[108..116], "uid", hdr_offset)?, "uid", hdr_offset)?,
                gid: id(num(&h[116..124], "gid", hdr_offset)?, "gid", hdr_offset)?,
                mtime: signed_num(&h[136..148], "mtime", hdr_offset)?,
                ..Entry::default()
            };
            if is_ustar(&h) {
                e.dev_major = id(
                    num(&h[329..337], "devmajor", hdr_offset)?,
                    "devmajor",
                    hdr_offset,
                )?;
                e.dev_minor = id(
                    num(&h[337..345], "devminor", hdr_offset)?,
                    "devminor",
                    hdr_offset,
                )?;
            }
            if let Some(n) = long_name {
                e.path = n;
            }
            if let Some(l) = long_link {
                e.link = l;
            }
            let g = &self.global;
            let local = pax.unwrap_or_default();
            for p in [g, &local] {
                if let Some(v) = &p.path {
                    e.path = v.clone();
                }
                if let Some(v) = &p.link {
                    e.link = v.clone();
                }
                if let Some(v) = p.size {
                    e.size = v;
                }
                if let Some(v) = p.uid {
                    e.uid = v;
                }
                if let Some(v) = p.gid {
                    e.gid = v;
                }
                if let Some((s, ns)) = p.mtime {
                    e.mtime = s;
                    e.mtime_nsec = ns;
                }
            }
            e.xattrs = g.xattrs.clone();
            for (k, v) in local.xattrs {
                e.xattrs.retain(|(k2, _)| *k2 != k);
                e.xattrs.push((k, v));
            }
            if local.sparse || typeflag == b'S' {
                // Consume it so the caller may choose to go on.
                self.skip(e.size, &e.path)?;
                return Err(Error::Unsupported {
                    path: e.display(),
                    what: "GNU sparse file".into(),
                });
            }
            e.kind = Some(match typeflag {
                b'0' | 0 | b'7' => Kind::File,
                b'1' => Kind::HardLink,
                b'2' => Kind::Symlink,
                b'3' => Kind::Char,
                b'4' => Kind::Block,
                b'5' => Kind::Dir,
                b'6' => Kind::Fifo,
                t => {
                    self.skip(e.size, &e.path)?;
                    return Err(Error::Unsupported {
                        path: e.display(),
                        what: format!("entry type {:?}", t as char),
                    });
                }
            });
            // Old tars mark directories with a trailing slash on a file.
            if e.kind == Some(Kind::File) && e.path.ends_with(b"/") {
                e.kind = Some(Kind::Dir);
            }
            return Ok(Some(e));
        }
    }

    /// Reads what is left of the stream (padding after the end-of-archive
    /// blocks), so that the byte counts and compressed-stream checksums
    /// cover the whole layer.
    pub fn drain(&mut self) -> Result<(), Error> {
        loop {
            let n = self.available();
            self.consume(n);
            if self.ensure(self.buf.len())? == 0 {
                return Ok(());
            }
        }
    }
}

fn truncated(path: &[u8]) -> Error {
    Error::Truncated {
        path: String::from_utf8_lossy(path).into_owned(),
    }
}

fn is_ustar(h: &[u8; BLOCK]) -> bool {
    &h[257..262] == b"ustar"
}

/// Name from the header, with the ustar prefix (not for GNU headers, which
/// keep other data there).
fn header_path(h: &[u8; BLOCK]) -> Vec<u8> {
    let name = cstr(&h[0..100]);
    if &h[257..263] == b"ustar\0" {
        let prefix = cstr(&h[345..500]);
        if !prefix.is_empty() {
            let mut p = prefix.to_vec();
            p.push(b'/');
            p.extend_from_slice(name);
            return p;
        }
    }
    name.to_vec()
}

/// Bytes up to the first NUL.
fn cstr(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(i) => &b[..i],
        None => b,
    }
}

fn check_checksum(h: &[u8; BLOCK], offset: u64) -> Result<(), Error> {
    let stored = num(&h[148..156], "checksum", offset)?;
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if stored == unsigned || stored as i64 == signed {
        Ok(())
    } else {
        Err(Error::BadHeader {
            offset,
            reason: "header checksum mismatch (not a tar stream, or corrupted)".into(),
        })
    }
}

fn bad(offset: u64, what: &str) -> Error {
    Error::BadHeader {
        offset,
        reason: format!("bad {what} field"),
    }
}

/// A numeric field: octal (space/NUL padded) or GNU base-256.
fn num(f: &[u8], what: &str, offset: u64) -> Result<u64, Error> {
    let v = signed_num(f, what, offset)?;
    u64::try_from(v).map_err(|_| bad(offset, what))
}

fn signed_num(f: &[u8], what: &str, offset: u64) -> Result<i64, Error> {
    if let Some(&first) = f.first() {
        if first & 0x80 != 0 {
            // Base-256, two's complement, big-endian; 0x80 marks a
            // positive number, 0xff a negative one.
            let neg = first & 0x40 != 0;
            let mut v: i128 = if neg { -1 } else { 0 };
            for (i, &b) in f.iter().enumerate() {
                let b = if i == 0 && !neg { b & 0x7f } else { b };
                v = (v << 8) | i128::from(b);
            }
            return i64::try_from(v).map_err(|_| bad(offset, what));
        }
    }
    let mut v: i64 = 0;
    let mut seen = false;
    for &c in f {
        match c {
            b'0'..=b'7' => {
                seen = true;
                v = v
                    .checked_mul(8)
                    .and_then(|v| v.checked_add(i64::from(c - b'0')))
                    .ok_or_else(|| bad(offset, what))?;
            }
            b' ' if !seen => {}
            b' ' | 0 => break,
            _ => return Err(bad(offset, what)),
        }
    }
    Ok(v)
}

fn id(v: u64, what: &str, offset: u64) -> Result<u32, Error> {
    u32::try_from(v).map_err(|_| bad(offset, what))
}

/// Parses PAX records `"<len> <key>=<value>\n"` into `p`.
fn parse_pax(mut data: &[u8], p: &mut Pax, offset: u64) -> Result<(), Error> {
    let err = |r: &str| Error::BadHeader {
        offset,
        reason: format!("PAX header: {r}"),
    };
    while !data.is_empty() {
        if data.iter().all(|&b| b == 0) {
            break;
        }
        let sp = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| err("record without length"))?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| err("bad record length"))?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(err("bad record length"));
        }
        let rec = &data[sp + 1..len - 1];
        data = &data[len..];
        let eq = rec
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| err("record without '='"))?;
        let (key, value) = (&rec[..eq], &rec[eq + 1..]);
        let text = || std::str::from_utf8(value).map_err(|_| err("non-text value"));
        let int = |name: &str| -> Result<u64, Error> {
            text()?
                .parse::<u64>()
                .map_err(|_| err(&format!("bad {name}")))
        };
        match key {
            b"path" => p.path = Some(value.to_vec()),
            b"linkpath" => p.link = Some(value.to_vec()),
            b"size" => p.size = Some(int("size")?),
            b"uid" => p.uid = Some(u32::try_from(int("uid")?).map_err(|_| err("bad uid"))?),
            b"gid" => p.gid = Some(u32::try_from(int("gid")?).map_err(|_| err("bad gid"))?),
            b"mtime" => p.mtime = Some(parse_time(text()?).ok_or_else(|| err("bad mtime"))?),
            _ => {
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    p.xattrs.retain(|(k, _)| k != name);
                    p.xattrs.push((name.to_vec(), value.to_vec()));
                } else if key.starts_with(b"GNU.sparse.") {
                    p.sparse = true;
                }
                // Others (atime, ctime, uname, gname, comment, ...) are
                // not needed for a rootfs.
            }
        }
    }
    Ok(())
}

/// `"[-]secs[.frac]"` into seconds and nanoseconds (floor semantics for
/// negative times are not needed; the fraction is dropped for them).
fn parse_time(s: &str) -> Option<(i64, u32)> {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    let secs: i64 = int.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut ns: u32 = 0;
    for i in 0..9 {
        let d = frac.as_bytes().get(i).map_or(0, |b| u32::from(b - b'0'));
        ns = ns * 10 + d;
    }
    if secs < 0 || int.starts_with('-') {
        return Some((secs, 0));
    }
    Some((secs, ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(num(b"0000644\0", "m", 0).unwrap(), 0o644);
        assert_eq!(num(b"   644 \0", "m", 0).unwrap(), 0o644);
        assert_eq!(num(b"\0\0\0\0\0\0\0\0", "m", 0).unwrap(), 0);
        let mut b = [0u8; 12];
        b[0] = 0x80;
        b[11] = 0x10;
        b[10] = 0x01;
        assert_eq!(num(&b, "s", 0).unwrap(), 0x110);
        let neg = [0xffu8; 12];
        assert_eq!(signed_num(&neg, "t", 0).unwrap(), -1);
        assert!(num(&neg, "s", 0).is_err());
        assert!(num(b"12x", "m", 0).is_err());
        // Base-256 too large for 63 bits.
        let mut huge = [0xffu8; 12];
        huge[0] = 0x80;
        assert!(num(&huge, "s", 0).is_err());
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("12.5"), Some((12, 500_000_000)));
        assert_eq!(parse_time("12.000000001"), Some((12, 1)));
        assert_eq!(parse_time("7"), Some((7, 0)));
        assert_eq!(parse_time("-3.5"), Some((-3, 0)));
        assert_eq!(parse_time("x"), None);
    }

    #[test]
    fn pax_records() {
        let mut p = Pax::default();
        let rec = |k: &str, v: &str| {
            let body = format!(" {k}={v}\n");
            let mut len = body.len() + 1;
            while len != body.len() + len.to_string().len() {
                len = body.len() + len.to_string().len();
            }
            format!("{len}{body}")
        };
        let data = format!(
            "{}{}{}",
            rec("path", "a/b"),
            rec("SCHILY.xattr.user.x", "1"),
            rec("mtime", "5.25")
        );
        parse_pax(data.as_bytes(), &mut p, 0).unwrap();
        assert_eq!(p.path.as_deref(), Some(&b"a/b"[..]));
        assert_eq!(p.xattrs, vec![(b"user.x".to_vec(), b"1".to_vec())]);
        assert_eq!(p.mtime, Some((5, 250_000_000)));
        assert!(parse_pax(b"99 path=x\n", &mut p, 0).is_err());
        assert!(parse_pax(b"garbage", &mut p, 0).is_err());
    }
}
