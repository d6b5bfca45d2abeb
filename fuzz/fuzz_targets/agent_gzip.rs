//! Fuzzes the agent's own gzip reader (member header and trailer by hand
//! over miniz_oxide's inflate): any bytes, read through a small input
//! buffer, must decode or fail cleanly, agree with flate2 whenever both
//! accept the stream, and, as a layer, stop at the inflation cap.

#![no_main]

use std::io::{BufReader, Read};

use agent::unpack::gzip::GzReader;
use agent::unpack::{scan_layer, Error};
use flate2::read::MultiGzDecoder;
use libfuzzer_sys::fuzz_target;

/// Output read at most (a bomb is the cap's business, not this loop's).
const MAX_OUT: u64 = 4 << 20;

/// Decodes up to `MAX_OUT` bytes; `None` on an error or past the limit.
fn decode(r: impl Read) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let n = r.take(MAX_OUT + 1).read_to_end(&mut out).ok()?;
    (n as u64 <= MAX_OUT).then_some(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    // Input buffers of 1..=64 bytes: headers, trailers and deflate blocks
    // split anywhere.
    let input = BufReader::with_capacity(1 + usize::from(control & 63), stream);
    let ours = decode(GzReader::new(input));
    if let Some(out) = &ours {
        if let Some(theirs) = decode(MultiGzDecoder::new(stream)) {
            assert_eq!(
                out, &theirs,
                "the agent's gzip reader disagrees with flate2"
            );
        }
        // Decoding twice gives the same bytes, whatever the buffer.
        let again = decode(GzReader::new(BufReader::new(stream)));
        assert_eq!(again.as_ref(), Some(out), "buffer size changed the output");
    }

    // The same stream as a layer blob, under a cap from the control byte:
    // never more tar than the cap lets through.
    let cap = u64::from(control) * 512;
    match scan_layer(stream, cap, 8 << 10) {
        Ok(s) => assert!(
            s.tar_bytes <= cap,
            "{} tar bytes past a cap of {cap}",
            s.tar_bytes
        ),
        Err(Error::Limit { .. }) => {
            if let Some(out) = &ours {
                // Only a stream that really inflates past the cap hits it.
                if stream.starts_with(&[0x1f, 0x8b]) {
                    assert!(out.len() as u64 > cap, "cap hit at {} bytes", out.len());
                }
            }
        }
        Err(_) => {}
    }
});
