//! Decompressing layer streams (gzip, zstd) for what needs the plain tar:
//! diff IDs, docker-archive output, rootfs import checks. (The zstd
//! reader is `layerfmt`'s, tested there.)

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
