//! OCI distribution client: `hull pull`, `hull push`, `hull login`.
//!
//! A blocking HTTP client (ureq) with threads for concurrent layer downloads.
//! HTTPS everywhere except loopback registries and hosts the user names with
//! `--insecure-registry`.

mod auth;
mod client;
mod pull;
mod push;

use std::io;
use std::path::PathBuf;

pub use auth::{login, logout, lookup, Credentials};
pub use client::Options;
pub use pull::{pull, PullReport};
pub use push::push;

/// One line describing a transport failure, without repeating the URL.
fn transport_detail(t: &ureq::Transport) -> String {
    let mut s = t.kind().to_string();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(t);
    let mut last = None;
    while let Some(e) = src {
        last = Some(e.to_string());
        src = e.source();
    }
    if let Some(m) = last.or_else(|| t.message().map(String::from)) {
        s.push_str(": ");
        s.push_str(&m);
    }
    s
}

/// Registry errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Connection, TLS or protocol failure.
    #[error("cannot reach {url}: {detail}")]
    Transport {
        /// The request.
        url: String,
        /// What went wrong (connection refused, TLS, ...).
        detail: String,
    },
    /// 401 even after authenticating (or with no credentials to offer).
    #[error("{url}: unauthorized (HTTP 401){hint}")]
    Unauthorized {
        /// The request.
        url: String,
        /// What to do about it.
        hint: String,
    },
    /// 404 on a manifest or blob.
    #[error("{what} not found (HTTP 404 from {url})")]
    NotFound {
        /// Manifest or blob and its name.
        what: String,
        /// The request.
        url: String,
    },
    /// Any other unexpected status.
    #[error("{url}: registry answered HTTP {status}{detail}")]
    Status {
        /// The request.
        url: String,
        /// Status code.
        status: u16,
        /// The registry's error message, if any.
        detail: String,
    },
    /// Reading a response body failed (connection cut, truncated body).
    #[error("download from {url} failed")]
    Body {
        /// The request.
        url: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A WWW-Authenticate challenge hull cannot answer.
    #[error("unsupported authentication challenge from {url}: {challenge:?}")]
    Challenge {
        /// The request.
        url: String,
        /// The header.
        challenge: String,
    },
    /// A token endpoint answered something unusable.
    #[error("no token in the answer of {0}")]
    Token(String),
    /// The credentials file cannot be read or written.
    #[error("credentials file {}", path.display())]
    Credentials {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// An upload session without a Location header.
    #[error("{0}: upload started without a Location header")]
    NoLocation(String),
    /// A manifest over the size limit.
    #[error("manifest from {0} is larger than 4 MiB")]
    TooLarge(String),
    /// An image config over the size limit, refused before download.
    #[error("image config {0} is {1} bytes, larger than 4 MiB")]
    ConfigTooLarge(String, u64),
    /// Pushing an image by digest only.
    #[error("push needs a tagged reference, not {0}")]
    NeedTag(String),
}
