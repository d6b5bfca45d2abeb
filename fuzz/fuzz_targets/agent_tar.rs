//! Fuzzes the agent's layer reader as the helper VM uses it: the input is
//! a layer blob (plain tar, or gzip/zstd by its magic bytes) applied by
//! the EROFS image builder into an in-memory window, and walked by the
//! same tar reader with two buffer sizes and two read patterns. Nothing a
//! layer holds may panic the agent or write past its window, and the
//! reader's buffering must not change what it finds.

#![no_main]

use std::cell::RefCell;
use std::io::{self, Read};

use agent::unpack::{scan_layer, ImageBuilder, ImageOptions, Stats};
use libfuzzer_sys::fuzz_target;

/// The output window, reused (the builder does not care what it holds).
const WINDOW: usize = 1 << 20;
/// The smallest buffer the tar reader takes: the most refills.
const SMALL_BUFFER: usize = 8 << 10;
const LARGE_BUFFER: usize = 64 << 10;

thread_local! {
    static WINDOW_BYTES: RefCell<Vec<u8>> = RefCell::new(vec![0u8; WINDOW]);
}

/// Hands out the blob a few bytes at a time, as a slow stream would.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.step).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// What two walks must agree on (not the time they took).
fn summary(s: &Stats) -> (u64, u64, u64, u64) {
    (s.files, s.data_bytes, s.tar_bytes, s.compressed_bytes)
}

fuzz_target!(|data: &[u8]| {
    let whole = scan_layer(data, u64::MAX, LARGE_BUFFER);
    let trickle = Trickle {
        data,
        step: 1 + data.len() % 61,
    };
    let slow = scan_layer(trickle, u64::MAX, SMALL_BUFFER);
    match (&whole, &slow) {
        (Ok(a), Ok(b)) => assert_eq!(summary(a), summary(b), "buffering changed the walk"),
        (Err(_), Err(_)) => {}
        _ => panic!("buffering changed the outcome: {whole:?} vs {slow:?}"),
    }
    if let Ok(s) = &whole {
        assert_eq!(
            s.compressed_bytes,
            data.len() as u64,
            "blob not read to its end"
        );
    }

    WINDOW_BYTES.with(|w| {
        let mut w = w.borrow_mut();
        let opts = ImageOptions {
            buffer_size: SMALL_BUFFER,
            max_entries: 4096,
            build_time: Some((1_700_000_000, 0)),
            uuid: Some([7; 16]),
            ..ImageOptions::default()
        };
        let Ok(mut b) = ImageBuilder::new(&mut w[..], opts) else {
            panic!("a 1 MiB window is refused");
        };
        if b.apply_layer(data).is_err() {
            return;
        }
        assert!(whole.is_ok(), "the builder took a layer the reader refuses");
        if let Ok((len, _)) = b.finish() {
            assert!(
                len as usize <= WINDOW,
                "image of {len} bytes past its window"
            );
            assert_eq!(len % 4096, 0, "image length {len} is not whole blocks");
        }
    });
});
