//! A streaming gzip (RFC 1952) reader over `miniz_oxide`'s inflate: the
//! member header and trailer by hand, several members in a row, CRC-32
//! and length checked. (flate2 does the same but brings a 16 KiB CRC
//! table and more code into the agent, which lives in every initramfs.)

use std::io::{self, BufRead, Read};

use miniz_oxide::inflate::stream::{inflate, InflateState};
use miniz_oxide::{DataFormat, MZError, MZFlush, MZStatus};

const FHCRC: u8 = 2;
const FEXTRA: u8 = 4;
const FNAME: u8 = 8;
const FCOMMENT: u8 = 16;

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("gzip: {msg}"))
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "gzip stream ends early")
}

/// CRC-32 (IEEE, reflected), slicing by 8. The 8 KiB of tables are
/// computed at run time (no size in the binary).
struct Crc {
    table: Box<[[u32; 256]; 8]>,
    value: u32,
}

impl Crc {
    fn new() -> Crc {
        let mut table = Box::new([[0u32; 256]; 8]);
        for i in 0..256 {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            table[0][i] = c;
        }
        for k in 1..8 {
            for i in 0..256 {
                let prev = table[k - 1][i];
                table[k][i] = (prev >> 8) ^ table[0][(prev & 0xff) as usize];
            }
        }
        Crc { table, value: 0 }
    }

    fn update(&mut self, data: &[u8]) {
        let t = &self.table;
        let mut c = !self.value;
        let mut chunks = data.chunks_exact(8);
        for ch in &mut chunks {
            let lo = u32::from_le_bytes([ch[0], ch[1], ch[2], ch[3]]) ^ c;
            let hi = u32::from_le_bytes([ch[4], ch[5], ch[6], ch[7]]);
            c = t[7][(lo & 0xff) as usize]
                ^ t[6][((lo >> 8) & 0xff) as usize]
                ^ t[5][((lo >> 16) & 0xff) as usize]
                ^ t[4][(lo >> 24) as usize]
                ^ t[3][(hi & 0xff) as usize]
                ^ t[2][((hi >> 8) & 0xff) as usize]
                ^ t[1][((hi >> 16) & 0xff) as usize]
                ^ t[0][(hi >> 24) as usize];
        }
        for &b in chunks.remainder() {
            c = t[0][((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
        self.value = !c;
    }
}

#[derive(PartialEq)]
enum Phase {
    /// Expecting a member header (or the end, after at least one member).
    Header,
    /// Inside a member's deflate data.
    Body,
    /// No more input.
    Done,
}

/// Decompresses a gzip stream of one or more members.
pub struct GzReader<R> {
    inner: R,
    state: Box<InflateState>,
    crc: Crc,
    size: u32,
    phase: Phase,
    members: u64,
}

impl<R: BufRead> GzReader<R> {
    /// A reader of the gzip stream `inner`.
    pub fn new(inner: R) -> Self {
        GzReader {
            inner,
            state: InflateState::new_boxed(DataFormat::Raw),
            crc: Crc::new(),
            size: 0,
            phase: Phase::Header,
            members: 0,
        }
    }

    fn byte(&mut self) -> io::Result<u8> {
        let mut b = [0u8; 1];
        self.exact(&mut b)?;
        Ok(b[0])
    }

    fn exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                eof()
            } else {
                e
            }
        })
    }

    /// Reads a member header; `false` at a clean end of stream.
    fn header(&mut self) -> io::Result<bool> {
        if self.members > 0 && self.inner.fill_buf()?.is_empty() {
            return Ok(false);
        }
        let mut h = [0u8; 10];
        self.exact(&mut h)?;
        if h[0] != 0x1f || h[1] != 0x8b {
            return Err(invalid("bad magic (data after the last member?)"));
        }
        if h[2] != 8 {
            return Err(invalid("unknown compression method"));
        }
        let flags = h[3];
        if flags & 0xe0 != 0 {
            return Err(invalid("reserved header flags set"));
        }
        if flags & FEXTRA != 0 {
            let mut n = [0u8; 2];
            self.exact(&mut n)?;
            let mut left = u16::from_le_bytes(n);
            while left > 0 {
                self.byte()?;
                left -= 1;
            }
        }
        for flag in [FNAME, FCOMMENT] {
            if flags & flag != 0 {
                while self.byte()? != 0 {}
            }
        }
        if flags & FHCRC != 0 {
            self.exact(&mut [0u8; 2])?;
        }
        self.state.reset(DataFormat::Raw);
        self.crc.value = 0;
        self.size = 0;
        Ok(true)
    }

    fn trailer(&mut self) -> io::Result<()> {
        let mut t = [0u8; 8];
        self.exact(&mut t)?;
        let crc = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
        let size = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
        if crc != self.crc.value {
            return Err(invalid("CRC mismatch"));
        }
        if size != self.size {
            return Err(invalid("length mismatch"));
        }
        self.members += 1;
        Ok(())
    }
}

impl<R: BufRead> Read for GzReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.phase {
                Phase::Done => return Ok(0),
                Phase::Header => {
                    self.phase = if self.header()? {
                        Phase::Body
                    } else {
                        Phase::Done
                    };
                }
                Phase::Body => {
                    let input = self.inner.fill_buf()?;
                    let at_eof = input.is_empty();
                    let r = inflate(&mut self.state, input, buf, MZFlush::None);
                    self.inner.consume(r.bytes_consumed);
                    let out = &buf[..r.bytes_written];
                    self.crc.update(out);
                    self.size = self.size.wrapping_add(out.len() as u32);
                    match r.status {
                        Ok(MZStatus::StreamEnd) => {
                            self.trailer()?;
                            self.phase = Phase::Header;
                        }
                        Ok(MZStatus::Ok) => {}
                        Ok(MZStatus::NeedDict) => return Err(invalid("needs a dictionary")),
                        Err(MZError::Buf) if at_eof => return Err(eof()),
                        Err(MZError::Buf) if r.bytes_consumed == 0 && r.bytes_written == 0 => {
                            return Err(invalid("inflate cannot make progress"))
                        }
                        Err(MZError::Buf) => {}
                        Err(_) => return Err(invalid("corrupt deflate data")),
                    }
                    if r.bytes_written > 0 {
                        return Ok(r.bytes_written);
                    }
                    if at_eof && r.bytes_consumed == 0 && self.phase == Phase::Body {
                        return Err(eof());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn unzip(data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        GzReader::new(io::BufReader::with_capacity(7, data)).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn crc_known_values() {
        let mut c = Crc::new();
        c.update(b"123456789");
        assert_eq!(c.value, 0xcbf4_3926);
        let mut c = Crc::new();
        for part in [&b"12"[..], b"3456", b"789"] {
            c.update(part);
        }
        assert_eq!(c.value, 0xcbf4_3926);
    }

    #[test]
    fn round_trips() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 253) as u8).collect();
        assert_eq!(unzip(&gz(&data)).unwrap(), data);
        assert_eq!(unzip(&gz(b"")).unwrap(), b"");
        let mut two = gz(b"hello ");
        two.extend(gz(b"world"));
        assert_eq!(unzip(&two).unwrap(), b"hello world");
        // Name, comment, extra field and header CRC.
        let mut b = flate2::GzBuilder::new()
            .filename("layer.tar")
            .comment("c")
            .extra(vec![1, 2, 3])
            .write(Vec::new(), flate2::Compression::fast());
        b.write_all(b"named").unwrap();
        assert_eq!(unzip(&b.finish().unwrap()).unwrap(), b"named");
    }

    #[test]
    fn the_gzip_tool() {
        let Ok(out) = std::process::Command::new("sh")
            .args(["-c", "printf 'abc%.0s' $(seq 1000) > /tmp/.hull-gz-test && gzip -c /tmp/.hull-gz-test; rm -f /tmp/.hull-gz-test"])
            .output()
        else {
            return;
        };
        assert_eq!(unzip(&out.stdout).unwrap(), b"abc".repeat(1000));
    }

    #[test]
    fn errors() {
        let data = gz(&[5u8; 10_000]);
        let mut bad_crc = data.clone();
        let n = bad_crc.len();
        bad_crc[n - 8] ^= 1;
        assert!(unzip(&bad_crc).unwrap_err().to_string().contains("CRC"));
        for cut in [5, 12, data.len() / 2, data.len() - 3] {
            let e = unzip(&data[..cut]).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "cut {cut}: {e}");
        }
        let mut garbage = data.clone();
        garbage.extend_from_slice(b"junk");
        assert!(unzip(&garbage).is_err());
        let mut corrupt = data;
        corrupt[12] ^= 0xff;
        corrupt[13] ^= 0xff;
        assert!(unzip(&corrupt).is_err());
    }
}
