//! Decompressing layer streams (gzip, zstd) for what needs the plain tar:
//! diff IDs, docker-archive output, rootfs import checks.

use std::io::{BufReader, Read};

use flate2::read::MultiGzDecoder;
use layerfmt::ZstdFrames;

use crate::media::Compression;

/// A reader yielding the uncompressed bytes of `r`.
pub fn decompress<'a>(c: Compression, r: impl Read + 'a) -> Box<dyn Read + 'a> {
    match c {
        Compression::None => Box::new(r),
        // Multi-member gzip is valid and produced by parallel compressors.
        Compression::Gzip => Box::new(MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(ZstdFrames::lazy(BufReader::new(r))),
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
