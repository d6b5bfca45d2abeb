//! Decompressing layer streams (gzip, zstd) for what needs the plain tar:
//! diff IDs, docker-archive output, rootfs import checks. (The zstd
//! reader is `layerfmt`'s, tested there.) Image content is hostile: it is
//! decompressed only through [`decompress_capped`].

use std::io::{BufReader, Read};

use flate2::read::MultiGzDecoder;
use layerfmt::ZstdFrames;

use crate::inflate::{self, Capped};
use crate::media::Compression;

/// A reader yielding the uncompressed bytes of `r`, `compressed` bytes of
/// `what`, that fails once they pass [`inflate::limit_for`] that size.
pub fn decompress_capped<'a>(
    c: Compression,
    r: impl Read + 'a,
    what: &str,
    compressed: u64,
) -> Result<Box<dyn Read + 'a>, inflate::Error> {
    Ok(Box::new(Capped::new(decompress(c, r), what, compressed)?))
}

/// A reader yielding the uncompressed bytes of `r` (trusted input only).
fn decompress<'a>(c: Compression, r: impl Read + 'a) -> Box<dyn Read + 'a> {
    match c {
        Compression::None => Box::new(r),
        // Multi-member gzip is valid and produced by parallel compressors.
        Compression::Gzip => Box::new(MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(ZstdFrames::lazy(BufReader::new(r))),
    }
}
