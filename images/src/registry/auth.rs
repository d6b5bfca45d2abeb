//! Registry authentication: WWW-Authenticate challenges (Bearer token and
//! Basic) and the credentials `hull login` stores (`<root>/auth.json`, 0600,
//! in Docker's `config.json` "auths" shape).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::client::{Client, Options};
use super::Error;

/// A parsed `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Challenge {
    /// `Bearer realm=...,service=...,scope=...`.
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    /// `Basic realm=...`.
    Basic,
}

impl Challenge {
    /// Parses a challenge; None for schemes hull does not speak.
    pub(super) fn parse(header: &str) -> Option<Self> {
        let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => Some(Self::Basic),
            "bearer" => {
                let p = parse_params(params);
                Some(Self::Bearer {
                    realm: p.get("realm")?.clone(),
                    service: p.get("service").cloned(),
                    scope: p.get("scope").cloned(),
                })
            }
            _ => None,
        }
    }
}

// `k="v", k2=v2` with quoted values that may contain commas.
fn parse_params(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else {
            break;
        };
        let key = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (val, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (q[..end].to_owned(), &q[end + 1..]),
                None => (q.to_owned(), ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (after[..end].trim().to_owned(), &after[end..]),
                None => (after.trim().to_owned(), ""),
            }
        };
        out.insert(key, val);
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// A user name and password for one registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl Credentials {
    /// `Basic ...` header value.
    pub(super) fn basic_header(&self) -> String {
        format!(
            "Basic {}",
            B64.encode(format!("{}:{}", self.username, self.password))
        )
    }
}

#[derive(Default, Deserialize, Serialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize, Serialize)]
struct AuthEntry {
    auth: String,
}

fn auth_path(root: &Path) -> PathBuf {
    root.join("auth.json")
}

fn read_file(root: &Path) -> Result<AuthFile, Error> {
    let path = auth_path(root);
    match fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::Credentials {
            path,
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(AuthFile::default()),
        Err(source) => Err(Error::Credentials { path, source }),
    }
}

fn write_file(root: &Path, f: &AuthFile) -> Result<(), Error> {
    let path = auth_path(root);
    let bytes = serde_json::to_vec_pretty(f).unwrap_or_default();
    fs::create_dir_all(root).map_err(|source| Error::Credentials {
        path: path.clone(),
        source,
    })?;
    // write_atomic goes through a tempfile, created 0600: the secret is
    // never readable by others, not even briefly.
    crate::layout::write_atomic(&path, &bytes).map_err(|e| Error::Credentials {
        path: path.clone(),
        source: io::Error::other(e.to_string()),
    })
}

/// Stored credentials for a registry host, if any.
pub fn lookup(root: &Path, host: &str) -> Result<Option<Credentials>, Error> {
    let f = read_file(root)?;
    let Some(e) = f.auths.get(host) else {
        return Ok(None);
    };
    let decoded = B64
        .decode(&e.auth)
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    Ok(decoded.and_then(|s| {
        s.split_once(':').map(|(u, p)| Credentials {
            username: u.to_owned(),
            password: p.to_owned(),
        })
    }))
}

/// `hull login`: checks the credentials against the registry, then stores them.
pub fn login(root: &Path, host: &str, creds: Credentials, opts: &Options) -> crate::Result<()> {
    let client = Client::new(host, None, Some(creds.clone()), opts);
    client.ping()?;
    let mut f = read_file(root)?;
    f.auths.insert(
        host.to_owned(),
        AuthEntry {
            auth: B64.encode(format!("{}:{}", creds.username, creds.password)),
        },
    );
    write_file(root, &f)?;
    Ok(())
}

/// `hull logout`: forgets a registry's credentials; false if there were none.
pub fn logout(root: &Path, host: &str) -> crate::Result<bool> {
    let mut f = read_file(root)?;
    let had = f.auths.remove(host).is_some();
    if had {
        write_file(root, &f)?;
    }
    Ok(had)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            }
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Negotiate"), None);
        assert_eq!(Challenge::parse("Bearer service=x"), None);
    }

    #[test]
    fn stores_credentials_private() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let f = AuthFile {
            auths: BTreeMap::from([(
                "localhost:5000".to_owned(),
                AuthEntry {
                    auth: B64.encode("u:p:w"),
                },
            )]),
        };
        write_file(t.path(), &f).unwrap();
        let mode = fs::metadata(t.path().join("auth.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let c = lookup(t.path(), "localhost:5000").unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p:w"));
        assert!(lookup(t.path(), "other").unwrap().is_none());
        assert!(logout(t.path(), "localhost:5000").unwrap());
        assert!(lookup(t.path(), "localhost:5000").unwrap().is_none());
    }
}
