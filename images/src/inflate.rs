//! Caps on what a compressed stream may inflate to on the host.
//!
//! gzip inflates at most ~1032:1 and zstd far more (an RLE block turns 4
//! bytes into 128 KiB), so a small archive or layer could otherwise make
//! `hull load` fill the disk with its temporary copy, or keep `hull
//! import`/`hull load`/`hull save` decompressing for hours. Every host-side
//! decompression of image content reads through a [`Capped`] reader whose
//! limit is [`limit_for`] the compressed size: [`RATIO`] times it, at
//! least [`FLOOR`]. Real layers inflate 2–8x, a layer of only empty files
//! ~300x (zstd -19) but stays under the floor up to the 2^21 entries an
//! image may have; an image that needs more sets `HULL_MAX_INFLATE`
//! (docs/threat-model.md).

use std::io::{self, Read};

/// Environment variable that replaces the computed limit with a fixed one
/// (a size in bytes, with an optional K, M, G or T binary suffix).
pub const LIMIT_ENV: &str = "HULL_MAX_INFLATE";
/// Inflation every stream may reach, however small it is: twice the tar
/// headers of the 2^21 empty files an image may hold, so the entry limit,
/// not this one, is what such a layer meets.
pub const FLOOR: u64 = 2 << 30;
/// Inflation ratio allowed above the floor.
pub const RATIO: u64 = 100;

/// A stream that inflates past its limit.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The limit was reached.
    #[error(
        "{what} inflates to more than {limit} bytes ({compressed} bytes compressed; {})",
        rule_text(*from_env)
    )]
    TooLarge {
        /// What was being decompressed.
        what: String,
        /// The limit in bytes.
        limit: u64,
        /// The compressed size in bytes.
        compressed: u64,
        /// The limit came from `HULL_MAX_INFLATE`.
        from_env: bool,
    },
    /// `HULL_MAX_INFLATE` is not a size.
    #[error("invalid {LIMIT_ENV} value {0:?} (a size in bytes, optionally with K, M, G or T)")]
    BadEnv(String),
}

fn rule_text(from_env: bool) -> String {
    if from_env {
        format!("the limit is {LIMIT_ENV}")
    } else {
        format!("the limit is {RATIO}x that, at least 2 GiB; {LIMIT_ENV}=SIZE raises it")
    }
}

/// The inflated size allowed for a stream of `compressed` bytes: the
/// value of `HULL_MAX_INFLATE` when set, else `max(FLOOR, RATIO x compressed)`.
pub fn limit_for(compressed: u64) -> Result<u64, Error> {
    Ok(limit_and_source(compressed)?.0)
}

/// [`limit_for`], and whether it came from the environment.
fn limit_and_source(compressed: u64) -> Result<(u64, bool), Error> {
    match std::env::var(LIMIT_ENV) {
        Ok(v) if !v.trim().is_empty() => Ok((parse_size(&v).ok_or(Error::BadEnv(v))?, true)),
        _ => Ok((FLOOR.max(compressed.saturating_mul(RATIO)), false)),
    }
}

/// `123`, `64K`, `10G`, ... (binary units).
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 10),
        (i, 'm' | 'M') => (&s[..i], 20),
        (i, 'g' | 'G') => (&s[..i], 30),
        (i, 't' | 'T') => (&s[..i], 40),
        _ => (s, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// The limit error an I/O error carries, if a [`Capped`] reader made it.
pub fn limit_error(e: &io::Error) -> Option<Error> {
    e.get_ref()?.downcast_ref::<Error>().cloned()
}

/// `e` as this crate's error: the limit error a [`Capped`] reader made,
/// else `other(e)`.
pub fn or_else<E: Into<crate::Error>>(
    e: io::Error,
    other: impl FnOnce(io::Error) -> E,
) -> crate::Error {
    match limit_error(&e) {
        Some(limit) => limit.into(),
        None => other(e).into(),
    }
}

/// A reader of decompressed bytes that fails once more than its limit
/// came through (the error carries an [`Error::TooLarge`]).
pub struct Capped<R> {
    inner: R,
    left: u64,
    what: String,
    limit: u64,
    compressed: u64,
    from_env: bool,
}

impl<R: Read> Capped<R> {
    /// Caps `inner`, the decompressed view of `compressed` bytes of `what`,
    /// at [`limit_for`] that size.
    pub fn new(inner: R, what: impl Into<String>, compressed: u64) -> Result<Self, Error> {
        let (limit, from_env) = limit_and_source(compressed)?;
        Ok(Self {
            inner,
            left: limit,
            what: what.into(),
            limit,
            compressed,
            from_env,
        })
    }

    fn too_large(&self) -> io::Error {
        io::Error::other(Error::TooLarge {
            what: self.what.clone(),
            limit: self.limit,
            compressed: self.compressed,
            from_env: self.from_env,
        })
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            // One byte more tells "exactly at the limit" from "past it".
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(self.too_large()),
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_is_a_ratio_with_a_floor() {
        // The test process's environment is shared: only read it here.
        if std::env::var_os(LIMIT_ENV).is_none() {
            assert_eq!(limit_for(0).unwrap(), FLOOR);
            assert_eq!(limit_for(1 << 20).unwrap(), FLOOR);
            assert_eq!(limit_for(20 << 20).unwrap(), FLOOR);
            assert_eq!(limit_for(100 << 20).unwrap(), 10_000 << 20);
            assert_eq!(limit_for(u64::MAX).unwrap(), u64::MAX);
        }
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size(" 10g "), Some(10 << 30));
        assert_eq!(parse_size("2T"), Some(2 << 40));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("99999999999T"), None);
    }

    #[test]
    fn capped_reader_passes_up_to_the_limit_and_fails_past_it() {
        let data = vec![1u8; 5000];
        let mut exact = Capped {
            inner: &data[..],
            left: 5000,
            what: "x".into(),
            limit: 5000,
            compressed: 10,
            from_env: false,
        };
        let mut out = Vec::new();
        assert_eq!(exact.read_to_end(&mut out).unwrap(), 5000);
        let mut over = Capped {
            inner: &data[..],
            left: 4999,
            what: "layer x".into(),
            limit: 4999,
            compressed: 10,
            from_env: false,
        };
        let e = over.read_to_end(&mut Vec::new()).unwrap_err();
        let limit = limit_error(&e).expect("a limit error");
        assert!(
            limit
                .to_string()
                .starts_with("layer x inflates to more than 4999 bytes (10 bytes compressed"),
            "{limit}"
        );
        assert!(limit_error(&io::Error::other("other")).is_none());
    }
}
