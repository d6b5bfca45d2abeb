//! Decompressing layer streams (gzip, zstd) for what needs the plain tar:
//! diff IDs, docker-archive output, rootfs import checks.

use std::io::{self, Read};

use flate2::read::MultiGzDecoder;
use ruzstd::decoding::{FrameDecoder, StreamingDecoder};

use crate::media::Compression;

/// A reader yielding the uncompressed bytes of `r`.
pub fn decompress<'a>(c: Compression, r: impl Read + 'a) -> Box<dyn Read + 'a> {
    match c {
        Compression::None => Box::new(r),
        // Multi-member gzip is valid and produced by parallel compressors.
        Compression::Gzip => Box::new(MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(ZstdReader::Between(Some(Peekable {
            peeked: None,
            inner: r,
        }))),
    }
}

/// A reader that can look one byte ahead (to tell "end of stream" from
/// "another zstd frame follows").
struct Peekable<R> {
    peeked: Option<u8>,
    inner: R,
}

impl<R: Read> Peekable<R> {
    fn at_end(&mut self) -> io::Result<bool> {
        if self.peeked.is_some() {
            return Ok(false);
        }
        let mut b = [0u8; 1];
        loop {
            match self.inner.read(&mut b) {
                Ok(0) => return Ok(true),
                Ok(_) => {
                    self.peeked = Some(b[0]);
                    return Ok(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl<R: Read> Read for Peekable<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.peeked.take() {
            Some(b) if !buf.is_empty() => {
                buf[0] = b;
                Ok(1)
            }
            p => {
                self.peeked = p;
                self.inner.read(buf)
            }
        }
    }
}

/// zstd over any number of concatenated frames.
enum ZstdReader<R: Read> {
    Between(Option<Peekable<R>>),
    InFrame(Box<StreamingDecoder<Peekable<R>, FrameDecoder>>),
}

impl<R: Read> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self {
                ZstdReader::InFrame(d) => {
                    let n = d.read(buf)?;
                    if n > 0 {
                        return Ok(n);
                    }
                    // This frame is done; another may follow.
                    let old = std::mem::replace(self, ZstdReader::Between(None));
                    if let ZstdReader::InFrame(d) = old {
                        *self = ZstdReader::Between(Some(d.into_inner()));
                    }
                }
                ZstdReader::Between(slot) => {
                    let Some(mut inner) = slot.take() else {
                        return Ok(0);
                    };
                    if inner.at_end()? {
                        return Ok(0);
                    }
                    let d = StreamingDecoder::new(inner)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                    *self = ZstdReader::InFrame(Box::new(d));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two zstd frames, each a single raw block: "hello " then "world".
    fn frame(data: &[u8]) -> Vec<u8> {
        let mut f = vec![0x28, 0xb5, 0x2f, 0xfd];
        // Frame header: single segment, 1-byte content size.
        f.push(0x20);
        f.push(data.len() as u8);
        // Last raw block: header = last(1) | type raw(0) | size << 3.
        let h = 1u32 | ((data.len() as u32) << 3);
        f.extend_from_slice(&h.to_le_bytes()[..3]);
        f.extend_from_slice(data);
        f
    }

    #[test]
    fn decodes_concatenated_zstd_frames() {
        let mut z = frame(b"hello ");
        z.extend(frame(b"world"));
        let mut out = String::new();
        decompress(Compression::Zstd, &z[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "hello world");
    }

    #[test]
    fn rejects_garbage_zstd() {
        let mut out = Vec::new();
        assert!(decompress(Compression::Zstd, &b"not zstd at all"[..])
            .read_to_end(&mut out)
            .is_err());
    }
}
