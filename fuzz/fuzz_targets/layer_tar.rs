//! Fuzzes the host side's layer handling: `tarwalk` (the bounded walk
//! behind diff IDs, `import` and the archive index's meta-record check),
//! through the same capped decompression `images` applies to layer
//! streams (gzip by flate2, zstd by layerfmt's multi-frame reader), and
//! layerfmt's path cleaning. Nothing may panic; a cleaned path may never
//! climb out of its root.

#![no_main]

use std::io::{self, Cursor, Seek, SeekFrom};

use images::compression::decompress_capped;
use images::media::Compression;
use images::{import, tarwalk};
use layerfmt::clean_path;
use libfuzzer_sys::fuzz_target;

/// Skips by seeking, as the archive index does on a file (a seek past
/// the end succeeds there too).
fn skip_by_seeking(r: &mut Cursor<&[u8]>, n: u64) -> io::Result<u64> {
    let by = i64::try_from(n).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    r.seek(SeekFrom::Current(by)).map(|_| n)
}

fn check_clean(path: &[u8]) {
    let c = clean_path(path);
    assert!(!c.starts_with(b"/") && !c.ends_with(b"/"), "{c:?}");
    if !c.is_empty() {
        for comp in c.split(|&b| b == b'/') {
            assert!(!matches!(comp, b"" | b"." | b".."), "{path:?} -> {c:?}");
        }
    }
    assert_eq!(clean_path(&c), c, "cleaning is not idempotent");
}

fuzz_target!(|data: &[u8]| {
    let walked = tarwalk::walk(&mut &data[..], tarwalk::skip_by_reading);
    let seeked = tarwalk::walk(&mut Cursor::new(data), skip_by_seeking);
    if let Ok(n) = walked {
        // Reading where the seek may run past the end: a reading walk
        // that succeeds implies a seeking one does, with the same count.
        assert_eq!(seeked.ok(), Some(n));
    }

    let compression = Compression::detect(data);
    if let Ok(tar) = decompress_capped(compression, data, "layer", data.len() as u64) {
        let _ = import::tar_diff_id(tar);
    }

    // Entry names as a tar header would hold them.
    for name in data.split(|&b| b == 0).take(8) {
        if !name.is_empty() {
            check_clean(name);
        }
    }
});
