//! Image references, normalized the way Docker does (`busybox` →
//! `docker.io/library/busybox:latest`).

use std::fmt;

use crate::digest::{self, Digest};

/// Docker Hub's canonical domain.
pub const DOCKER_HUB: &str = "docker.io";

/// Reference errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The string is not a valid image reference.
    #[error("invalid reference format {input:?}: {why}")]
    Invalid {
        /// What the user typed.
        input: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A normalized image reference: `domain/path[:tag][@digest]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalizes a reference; a missing tag becomes `latest`
    /// unless a digest is given.
    pub fn parse(input: &str) -> Result<Self> {
        let bad = |why| Error::Invalid {
            input: input.to_owned(),
            why,
        };
        if input.is_empty() || input.len() > 512 {
            return Err(bad("empty or too long"));
        }
        let (name, digest) = match input.split_once('@') {
            Some((n, d)) => (n, Some(digest::parse(d).map_err(|_| bad("bad digest"))?)),
            None => (input, None),
        };
        // A tag is a ':' after the last '/', so that "host:5000/x" keeps its port.
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => {
                let t = &name[last_slash + i + 1..];
                (&name[..last_slash + i], Some(t.to_owned()))
            }
            None => (name, None),
        };
        if let Some(t) = &tag {
            if !valid_tag(t) {
                return Err(bad("bad tag"));
            }
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, rest)) if looks_like_host(first) => (first.to_owned(), rest.to_owned()),
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        if !valid_domain(&domain) {
            return Err(bad("bad registry host"));
        }
        let domain = if domain == "index.docker.io" {
            DOCKER_HUB.to_owned()
        } else {
            domain
        };
        let path = if domain == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if path.split('/').any(|c| !valid_component(c)) {
            return Err(bad(
                "repository names must be lowercase letters, digits and separators",
            ));
        }
        if domain.len() + 1 + path.len() > 255 {
            return Err(bad("repository name too long"));
        }
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_owned()),
            (t, _) => t,
        };
        Ok(Self {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// Registry host as written (`docker.io`, `localhost:5000`).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Repository path inside the registry (`library/busybox`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// Digest, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `domain/path` without tag or digest.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The same repository with another tag and no digest.
    pub fn with_tag(&self, tag: &str) -> Self {
        Self {
            tag: Some(tag.to_owned()),
            digest: None,
            ..self.clone()
        }
    }

    /// The same repository pinned to a digest, without tag.
    pub fn with_digest(&self, d: Digest) -> Self {
        Self {
            tag: None,
            digest: Some(d),
            ..self.clone()
        }
    }

    /// Docker's short form (`busybox:latest`, `localhost:5000/a/b:t`).
    pub fn familiar(&self) -> String {
        let repo = self.familiar_repository();
        let mut s = repo;
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d.as_ref());
        }
        s
    }

    /// Short repository name (`busybox`, `localhost:5000/a/b`): shortened
    /// only as far as it parses back to the same repository (found by the
    /// `image_reference` fuzz target: `docker.io/example.com/x` was shown
    /// as `example.com/x`, a repository on another registry).
    pub fn familiar_repository(&self) -> String {
        if self.domain != DOCKER_HUB {
            return self.repository();
        }
        // Docker's rule: `library/` goes only before a single component.
        let short = match self.path.strip_prefix("library/") {
            Some(rest) if !rest.contains('/') => rest,
            _ => &self.path,
        };
        match short.split_once('/') {
            Some((first, _)) if looks_like_host(first) => self.repository(),
            _ => short.to_owned(),
        }
    }

    /// What to ask the registry's manifest endpoint for: digest if pinned, else tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

/// Whether the first component of a name is a registry host rather than
/// part of a Docker Hub path (Docker's rule).
fn looks_like_host(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, Some(p)),
        _ => (d, None),
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|c| c.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'[' | b']' | b':'))
}

// Docker's path component grammar: lowercase alphanumerics separated by
// '.', '_', '__' or runs of '-'.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_lower_alnum(b[0]) || !is_lower_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_lower_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_lower_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

fn is_lower_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn normalizes_like_docker() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("user/app"), "docker.io/user/app:latest");
        assert_eq!(
            norm("index.docker.io/library/x"),
            "docker.io/library/x:latest"
        );
        assert_eq!(norm("localhost:5000/a/b:t"), "localhost:5000/a/b:t");
        assert_eq!(norm("localhost/a"), "localhost/a:latest");
        assert_eq!(norm("127.0.0.1:5000/x"), "127.0.0.1:5000/x:latest");
        assert_eq!(
            norm("quay.io/org/img-name_x.y:v1.0-rc"),
            "quay.io/org/img-name_x.y:v1.0-rc"
        );
    }

    #[test]
    fn keeps_digests() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let r = Reference::parse(&format!("busybox@{d}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.manifest_ref(), d);
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{d}"));
        let r = Reference::parse(&format!("localhost:5000/x:t@{d}")).unwrap();
        assert_eq!(r.tag(), Some("t"));
        assert_eq!(r.manifest_ref(), d);
    }

    #[test]
    fn familiar_names() {
        assert_eq!(
            Reference::parse("busybox").unwrap().familiar(),
            "busybox:latest"
        );
        assert_eq!(Reference::parse("a/b:1").unwrap().familiar(), "a/b:1");
        assert_eq!(
            Reference::parse("localhost:5000/a").unwrap().familiar(),
            "localhost:5000/a:latest"
        );
    }

    #[test]
    fn familiar_names_parse_back_to_the_same_image() {
        // Found by fuzzing: a Docker Hub path whose first component looks
        // like a host, or a nested path under `library/`, was shortened
        // into a name for another repository.
        for (input, familiar) in [
            ("docker.io/example.com/x", "docker.io/example.com/x:latest"),
            ("docker.io/localhost/x:1", "docker.io/localhost/x:1"),
            ("docker.io/library/a/b", "library/a/b:latest"),
            ("docker.io/library/a", "a:latest"),
            ("docker.io/user/a.b", "user/a.b:latest"),
        ] {
            let r = Reference::parse(input).unwrap();
            assert_eq!(r.familiar(), familiar, "{input}");
            assert_eq!(Reference::parse(&r.familiar()).unwrap(), r, "{input}");
        }
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:bad tag",
            "a//b",
            "-a",
            "a-",
            "busybox@sha256:1234",
            "busybox:.x",
            "host:port/x",
            "a/b/../c",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
