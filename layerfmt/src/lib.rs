//! Decoding that hull's image store (`images`, on the host) and its guest
//! agent's layer unpacker both need: telling a layer's compression from
//! its first bytes, reading zstd streams of several frames, and cleaning
//! tar member paths. One home so the two sides cannot drift apart; small
//! and dependency-light because the agent binary is copied into every
//! guest's initramfs.

#![warn(missing_docs)]

use std::io::{self, BufRead, Read};

use ruzstd::decoding::{FrameDecoder, StreamingDecoder};

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip (`1f 8b`).
    Gzip,
    /// zstd (`28 b5 2f fd`).
    Zstd,
}

impl Compression {
    /// Detects compression from a blob's first bytes (four are enough).
    pub fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// A zstd stream of any number of concatenated frames (as parallel
/// compressors write them), decoded as one.
pub struct ZstdFrames<R: BufRead> {
    state: FrameState<R>,
}

enum FrameState<R: BufRead> {
    /// Between frames: the next byte starts one, or the stream ends.
    Between(Option<R>),
    InFrame(Box<StreamingDecoder<R, FrameDecoder>>),
}

impl<R: BufRead> std::fmt::Debug for ZstdFrames<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZstdFrames").finish_non_exhaustive()
    }
}

impl<R: BufRead> ZstdFrames<R> {
    /// Reads the first frame's header now: a stream that is not zstd fails
    /// here rather than at the first read.
    pub fn new(r: R) -> io::Result<Self> {
        Ok(Self {
            state: FrameState::InFrame(Box::new(StreamingDecoder::new(r).map_err(invalid)?)),
        })
    }

    /// Decodes nothing before the first read; an empty stream reads as
    /// empty.
    pub fn lazy(r: R) -> Self {
        Self {
            state: FrameState::Between(Some(r)),
        }
    }
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match &mut self.state {
                FrameState::InFrame(d) => {
                    let n = d.read(buf)?;
                    if n > 0 {
                        return Ok(n);
                    }
                    // This frame is done; another may follow.
                    let old = std::mem::replace(&mut self.state, FrameState::Between(None));
                    if let FrameState::InFrame(d) = old {
                        self.state = FrameState::Between(Some(d.into_inner()));
                    }
                }
                FrameState::Between(slot) => {
                    let Some(mut inner) = slot.take() else {
                        return Ok(0);
                    };
                    if inner.fill_buf()?.is_empty() {
                        return Ok(0);
                    }
                    let d = StreamingDecoder::new(inner).map_err(invalid)?;
                    self.state = FrameState::InFrame(Box::new(d));
                }
            }
        }
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Cleans a tar member path lexically: no leading `/`, no `.` or empty
/// components, `..` pops (never above the root). The result has no `..`.
pub fn clean_path(path: &[u8]) -> Vec<u8> {
    let mut comps: Vec<&[u8]> = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                comps.pop();
            }
            c => comps.push(c),
        }
    }
    comps.join(&b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    // A zstd frame holding `data` in a single raw block.
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
    fn decodes_concatenated_frames_eager_and_lazy() {
        let mut z = frame(b"hello ");
        z.extend(frame(b"world"));
        let mut out = String::new();
        ZstdFrames::new(&z[..])
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "hello world");
        out.clear();
        ZstdFrames::lazy(&z[..]).read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello world");
    }

    #[test]
    fn rejects_garbage() {
        assert!(ZstdFrames::new(&b"not zstd at all"[..]).is_err());
        let mut out = Vec::new();
        assert!(ZstdFrames::lazy(&b"not zstd at all"[..])
            .read_to_end(&mut out)
            .is_err());
        assert_eq!(ZstdFrames::lazy(&b""[..]).read_to_end(&mut out).unwrap(), 0);
    }

    #[test]
    fn detects_by_magic() {
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::detect(b"usr/"), Compression::None);
        assert_eq!(Compression::detect(&[0x1f]), Compression::None);
    }

    #[test]
    fn cleans_paths() {
        assert_eq!(clean_path(b"/a/./b//c/"), b"a/b/c");
        assert_eq!(clean_path(b"../../x"), b"x");
        assert_eq!(clean_path(b"a/../../b"), b"b");
        assert_eq!(clean_path(b"./"), b"");
        assert_eq!(clean_path(b".."), b"");
    }
}
