//! sha256 digests: strict parsing (a digest becomes a file name, so nothing but
//! 64 lowercase hex digits may pass) and hashing readers/writers.

use std::io::{self, Read, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

pub use oci_spec::image::Digest;

/// Digest errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not `sha256:` followed by 64 lowercase hex digits.
    #[error("invalid digest {0:?} (only sha256 is supported)")]
    Invalid(String),
    /// Content hashed to something else than announced.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    Mismatch {
        /// Announced digest.
        expected: String,
        /// Digest of the bytes received.
        actual: String,
    },
    /// Content has another length than announced.
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    Size {
        /// Announced digest.
        digest: String,
        /// Announced size.
        expected: u64,
        /// Bytes received.
        actual: u64,
    },
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Parses `sha256:<64 hex>`.
pub fn parse(s: &str) -> Result<Digest> {
    match s.strip_prefix("sha256:") {
        Some(hex) if is_sha256_hex(hex) => {
            Digest::from_str(s).map_err(|_| Error::Invalid(s.to_owned()))
        }
        _ => Err(Error::Invalid(s.to_owned())),
    }
}

/// The hex part of a sha256 digest, checked to be safe as a file name.
pub fn hex(d: &Digest) -> Result<&str> {
    match d.as_ref().strip_prefix("sha256:") {
        Some(h) if is_sha256_hex(h) => Ok(h),
        _ => Err(Error::Invalid(d.to_string())),
    }
}

/// The short form of an ID shown to users: its first 12 hex digits,
/// without a `sha256:` prefix. Image and container IDs both use it.
pub fn short_id(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

/// True for exactly 64 lowercase hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Digest of a byte slice.
pub fn of_bytes(bytes: &[u8]) -> Digest {
    from_hasher(Sha256::new_with_prefix(bytes))
}

fn from_hasher(h: Sha256) -> Digest {
    let s = format!("sha256:{}", hex::encode(h.finalize()));
    // A freshly formatted sha256 always parses.
    Digest::from_str(&s).unwrap_or_else(|_| unreachable!("sha256 digest {s} rejected"))
}

/// Checks a digest and size against what was announced.
pub fn verify(
    expected: &Digest,
    expected_size: Option<u64>,
    actual: &Digest,
    size: u64,
) -> Result<()> {
    if let Some(want) = expected_size {
        if want != size {
            return Err(Error::Size {
                digest: expected.to_string(),
                expected: want,
                actual: size,
            });
        }
    }
    if expected != actual {
        return Err(Error::Mismatch {
            expected: expected.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}

/// A writer that hashes and counts what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The inner writer, digest and length.
    pub fn finish(self) -> (W, Digest, u64) {
        (self.inner, from_hasher(self.hasher), self.len)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts what is read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Digest and length of everything read.
    pub fn finish(self) -> (Digest, u64) {
        (from_hasher(self.hasher), self.len)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// Digest and length of everything `r` yields.
pub fn of_reader(r: impl Read) -> io::Result<(Digest, u64)> {
    let mut h = HashingReader::new(r);
    io::copy(&mut h, &mut io::sink())?;
    Ok(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn hashes_empty_input() {
        assert_eq!(of_bytes(b"").to_string(), EMPTY);
        let w = HashingWriter::new(Vec::new());
        assert_eq!(w.finish().1.to_string(), EMPTY);
    }

    #[test]
    fn rejects_unsafe_or_foreign_digests() {
        assert!(parse(EMPTY).is_ok());
        for bad in [
            "sha256:../../etc/passwd",
            "sha512:abcd",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn verify_reports_size_then_digest() {
        let d = of_bytes(b"abc");
        assert!(verify(&d, Some(3), &d, 3).is_ok());
        assert!(matches!(
            verify(&d, Some(4), &d, 3),
            Err(Error::Size { .. })
        ));
        let other = of_bytes(b"abd");
        assert!(matches!(
            verify(&d, Some(3), &other, 3),
            Err(Error::Mismatch { .. })
        ));
    }

    #[test]
    fn reader_and_writer_agree() {
        let data = vec![7u8; 100_000];
        let (d, n) = of_reader(&data[..]).unwrap();
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(&data).unwrap();
        let (_, d2, n2) = w.finish();
        assert_eq!((d.clone(), n), (d2, n2));
        assert_eq!(d, of_bytes(&data));
    }
}
