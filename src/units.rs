//! Parsing of Docker-style sizes (`256m`, `1g`, `512` bytes... ).

/// A size that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("Invalid size {0:?}: use a number with an optional unit b, k, m or g (e.g. 256m)")]
pub struct SizeError(pub String);

/// Parses a Docker-style memory size into MiB. A bare number is bytes, as
/// with `docker run --memory`; the result must be a whole number of MiB.
pub fn parse_mib(s: &str) -> Result<u64, SizeError> {
    let err = || SizeError(s.to_string());
    let t = s.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix('b')
        .filter(|r| !r.is_empty() && r.ends_with(|c: char| c.is_ascii_alphabetic()))
        .unwrap_or(&t);
    let (num, mult): (&str, u64) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('b') => (&t[..t.len() - 1], 1),
        _ => (t, 1),
    };
    let n: u64 = num.parse().map_err(|_| err())?;
    let bytes = n.checked_mul(mult).ok_or_else(err)?;
    if bytes == 0 || bytes % (1 << 20) != 0 {
        return Err(err());
    }
    Ok(bytes >> 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_units() {
        assert_eq!(parse_mib("128m"), Ok(128));
        assert_eq!(parse_mib("128M"), Ok(128));
        assert_eq!(parse_mib("128mb"), Ok(128));
        assert_eq!(parse_mib("1g"), Ok(1024));
        assert_eq!(parse_mib("2097152"), Ok(2));
        assert_eq!(parse_mib("131072k"), Ok(128));
        for bad in [
            "",
            "m",
            "12x",
            "-1m",
            "0",
            "1000",
            "1.5g",
            "99999999999999999g",
        ] {
            assert!(parse_mib(bad).is_err(), "{bad}");
        }
    }
}
