//! `ADD <url>`: the file fetched by the builder on the host, as Docker's
//! builder fetches it (not from inside a RUN step's VM): mode 0600, the
//! mtime the server's `Last-Modified` gives (else the epoch), named after
//! the URL's last path segment, never extracted. `--checksum=sha256:...`
//! is verified before the layer is made.

use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// Errors fetching a URL.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{url}: {message}")]
    Fetch { url: String, message: String },
    #[error("{url}: checksum mismatch: expected {expected}, got sha256:{actual}")]
    Checksum {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("--checksum={0}: only sha256:<64 hex digits> is supported")]
    BadChecksum(String),
    #[error("{0}: a remote file larger than {1} bytes")]
    TooLarge(String, u64),
    #[error("writing the download: {0}")]
    Io(#[from] io::Error),
}

/// Largest remote file ADD takes (a build host's disk is not the place
/// for an unbounded download).
const MAX_BYTES: u64 = 8 << 30;

/// A fetched file.
#[derive(Debug)]
pub struct Fetched {
    /// Its content, in an unnamed temporary file.
    pub file: std::fs::File,
    /// The name ADD gives it in a destination directory.
    pub name: String,
    /// Seconds since the epoch.
    pub mtime: i64,
    pub len: u64,
}

/// True for a source ADD fetches.
pub fn is_url(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

/// Fetches `url` into a temporary file under `dir`.
pub fn fetch(url: &str, dir: &Path, checksum: Option<&str>) -> Result<Fetched, RemoteError> {
    let fail = |message: String| RemoteError::Fetch {
        url: url.to_string(),
        message,
    };
    let expected = checksum.map(parse_checksum).transpose()?;
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(15))
        .timeout_read(Duration::from_secs(120))
        .user_agent(concat!("hull/", env!("CARGO_PKG_VERSION")))
        .build();
    let response = agent.get(url).call().map_err(|e| fail(e.to_string()))?;
    let mtime = response
        .header("Last-Modified")
        .and_then(|d| httpdate::parse_http_date(d).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64);
    let mut file = tempfile::tempfile_in(dir)?;
    let mut hash = Sha256::new();
    let mut body = response.into_reader().take(MAX_BYTES + 1);
    let mut buf = vec![0u8; 256 << 10];
    let mut len = 0u64;
    loop {
        let n = body.read(&mut buf).map_err(|e| fail(e.to_string()))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        file.write_all(&buf[..n])?;
        len += n as u64;
    }
    if len > MAX_BYTES {
        return Err(RemoteError::TooLarge(url.to_string(), MAX_BYTES));
    }
    let actual = hex::encode(hash.finalize());
    if let Some(expected) = expected {
        if expected != actual {
            return Err(RemoteError::Checksum {
                url: url.to_string(),
                expected: format!("sha256:{expected}"),
                actual,
            });
        }
    }
    Ok(Fetched {
        file,
        name: file_name(url),
        mtime,
        len,
    })
}

fn parse_checksum(s: &str) -> Result<String, RemoteError> {
    match s.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(h.to_ascii_lowercase())
        }
        _ => Err(RemoteError::BadChecksum(s.to_string())),
    }
}

/// The URL's last path segment (query and fragment dropped), as Docker
/// names the file; `index.html`-less URLs ending in `/` get `download`.
fn file_name(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let after_host = path.splitn(4, '/').nth(3).unwrap_or("");
    match after_host.rsplit('/').next() {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => "download".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_last_segment() {
        assert_eq!(file_name("https://h/a/b/x.tar.gz?sig=1#f"), "x.tar.gz");
        assert_eq!(file_name("https://h/"), "download");
        assert_eq!(file_name("https://h"), "download");
    }

    #[test]
    fn checksums_are_sha256_only() {
        let h = "ab".repeat(32);
        assert_eq!(parse_checksum(&format!("sha256:{h}")).unwrap(), h);
        assert!(parse_checksum("md5:00").is_err());
        assert!(parse_checksum("sha256:zz").is_err());
    }

    /// A one-shot HTTP server on loopback.
    fn serve(body: &'static [u8]) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: Wed, 21 Oct 2015 07:28:00 GMT\r\nConnection: close\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(body).unwrap();
        });
        format!("http://{addr}/files/data.bin")
    }

    #[test]
    fn fetches_with_mtime_and_checks_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let url = serve(b"payload");
        let mut got = fetch(&url, dir.path(), None).unwrap();
        assert_eq!(
            (got.name.as_str(), got.mtime, got.len),
            ("data.bin", 1_445_412_480, 7)
        );
        use std::io::Seek;
        got.file.rewind().unwrap();
        let mut body = String::new();
        got.file.read_to_string(&mut body).unwrap();
        assert_eq!(body, "payload");
        let url = serve(b"payload");
        let wrong = format!("sha256:{}", "0".repeat(64));
        let err = fetch(&url, dir.path(), Some(&wrong)).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
    }
}
