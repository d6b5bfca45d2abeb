//! HTTP plumbing shared by pull, push and login: base URL and scheme choice,
//! the 401 → challenge → retry dance, and error mapping.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use super::auth::{Challenge, Credentials};
use super::Error;
use crate::platform::Platform;
use crate::reference::DOCKER_HUB;

/// Options for talking to registries.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Hosts (`host` or `host:port`) to reach over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Platform to pick out of an index (default: the host's).
    pub platform: Option<Platform>,
    /// Draw per-layer progress bars on stderr.
    pub progress: bool,
    /// Credentials for the registry, if the user logged in.
    pub credentials: Option<Credentials>,
}

/// What a request sends.
pub(super) enum Body<'a> {
    /// Nothing.
    Empty,
    /// A small in-memory document.
    Bytes(&'a [u8]),
    /// A blob file of the given length, streamed.
    File(&'a Path, u64),
}

/// Extra attempts for idempotent requests that hit a transient failure.
pub(super) const RETRIES: u32 = 2;

/// Sleeps before retry number `n` (1-based): 200 ms, 400 ms, ...
pub(super) fn backoff(n: u32) {
    std::thread::sleep(Duration::from_millis(200 << (n - 1).min(4)));
}

/// One registry, with the authorization it has earned so far.
pub(super) struct Client {
    agent: ureq::Agent,
    base: String,
    host: String,
    scope: Option<String>,
    creds: Option<Credentials>,
    authorization: Mutex<Option<String>>,
}

/// True for hosts reached over plain HTTP: loopback, or named by the user.
pub(super) fn is_insecure(host: &str, insecure: &[String]) -> bool {
    let bare = match host.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => h,
        _ => host,
    };
    matches!(bare, "localhost" | "[::1]")
        || bare
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
        || insecure.iter().any(|i| i == host || i == bare)
}

impl Client {
    /// A client for registry `domain` (as in a reference) asking for `scope`
    /// (`repository:x/y:pull`) when a token server wants one.
    pub(super) fn new(
        domain: &str,
        scope: Option<String>,
        creds: Option<Credentials>,
        opts: &Options,
    ) -> Self {
        let host = if domain == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            domain
        };
        let scheme = if is_insecure(host, &opts.insecure_registries) {
            "http"
        } else {
            "https"
        };
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(15))
            .timeout_read(Duration::from_secs(120))
            .timeout_write(Duration::from_secs(120))
            .user_agent(concat!("hull/", env!("CARGO_PKG_VERSION")))
            .max_idle_connections_per_host(8)
            .build();
        Self {
            agent,
            base: format!("{scheme}://{host}"),
            host: domain.to_owned(),
            scope,
            creds: creds.or(opts.credentials.clone()),
            authorization: Mutex::new(None),
        }
    }

    /// `https://host/v2/<path>`.
    pub(super) fn url(&self, path: &str) -> String {
        format!("{}/v2/{path}", self.base)
    }

    /// Resolves a Location header (absolute or host-relative).
    pub(super) fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else {
            format!("{}/{}", self.base, location.trim_start_matches('/'))
        }
    }

    /// `GET /v2/`: proves the registry answers and the credentials work.
    pub(super) fn ping(&self) -> Result<(), Error> {
        let url = self.url("");
        self.send("GET", &url, &[], Body::Empty, "registry API")?;
        Ok(())
    }

    /// Sends a request, authenticating on a 401 challenge and retrying once.
    /// Statuses >= 400 become errors (404 names `what`).
    pub(super) fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Body<'_>,
        what: &str,
    ) -> Result<ureq::Response, Error> {
        let idempotent = matches!(method, "GET" | "HEAD");
        let mut authenticated = false;
        let mut retries = 0;
        loop {
            let mut req = self.agent.request(method, url);
            for (k, v) in headers {
                req = req.set(k, v);
            }
            if let Some(a) = self.authorization.lock().ok().and_then(|g| g.clone()) {
                req = req.set("Authorization", &a);
            }
            let res = match &body {
                Body::Empty => req.call(),
                Body::Bytes(b) => req.send_bytes(b),
                Body::File(p, len) => {
                    let f = File::open(p).map_err(|source| Error::Body {
                        url: url.to_owned(),
                        source,
                    })?;
                    req.set("Content-Length", &len.to_string())
                        .send(BufReader::with_capacity(1 << 20, f))
                }
            };
            match res {
                Ok(r) => return Ok(r),
                Err(ureq::Error::Status(401, r)) if !authenticated => {
                    authenticated = true;
                    let challenge = r.header("WWW-Authenticate").unwrap_or("").to_owned();
                    self.authenticate(&challenge, url)?;
                }
                Err(ureq::Error::Status(401, _)) => {
                    return Err(Error::Unauthorized {
                        url: url.to_owned(),
                        hint: self.login_hint(),
                    })
                }
                Err(ureq::Error::Status(404, _)) => {
                    return Err(Error::NotFound {
                        what: what.to_owned(),
                        url: url.to_owned(),
                    })
                }
                // Overload and gateway errors pass: retry reads a little.
                Err(ureq::Error::Status(429 | 502 | 503 | 504, _))
                    if idempotent && retries < RETRIES =>
                {
                    retries += 1;
                    backoff(retries);
                }
                Err(ureq::Error::Status(status, r)) => {
                    return Err(Error::Status {
                        url: url.to_owned(),
                        status,
                        detail: error_detail(r),
                    })
                }
                // A connection cut mid-request, not a refused one or a DNS failure.
                Err(ureq::Error::Transport(t))
                    if idempotent && retries < RETRIES && t.kind() == ureq::ErrorKind::Io =>
                {
                    retries += 1;
                    backoff(retries);
                }
                Err(ureq::Error::Transport(t)) => {
                    return Err(Error::Transport {
                        url: url.to_owned(),
                        detail: super::transport_detail(&t),
                    })
                }
            }
        }
    }

    fn login_hint(&self) -> String {
        match &self.creds {
            Some(_) => ": the stored credentials were refused".to_owned(),
            None => format!(": log in with `hull login {}`", self.host),
        }
    }

    fn authenticate(&self, challenge: &str, url: &str) -> Result<(), Error> {
        let value = match Challenge::parse(challenge) {
            Some(Challenge::Basic) => match &self.creds {
                Some(c) => c.basic_header(),
                None => {
                    return Err(Error::Unauthorized {
                        url: url.to_owned(),
                        hint: self.login_hint(),
                    })
                }
            },
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let scope = scope.or_else(|| self.scope.clone());
                format!(
                    "Bearer {}",
                    self.token(&realm, service.as_deref(), scope.as_deref())?
                )
            }
            None => {
                return Err(Error::Challenge {
                    url: url.to_owned(),
                    challenge: challenge.to_owned(),
                })
            }
        };
        if let Ok(mut g) = self.authorization.lock() {
            *g = Some(value);
        }
        Ok(())
    }

    fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
    ) -> Result<String, Error> {
        let mut req = self.agent.get(realm);
        if let Some(s) = service {
            req = req.query("service", s);
        }
        if let Some(s) = scope {
            req = req.query("scope", s);
        }
        if let Some(c) = &self.creds {
            req = req.set("Authorization", &c.basic_header());
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(401 | 403, _)) => {
                return Err(Error::Unauthorized {
                    url: realm.to_owned(),
                    hint: self.login_hint(),
                })
            }
            Err(ureq::Error::Status(status, r)) => {
                return Err(Error::Status {
                    url: realm.to_owned(),
                    status,
                    detail: error_detail(r),
                })
            }
            Err(ureq::Error::Transport(t)) => {
                return Err(Error::Transport {
                    url: realm.to_owned(),
                    detail: super::transport_detail(&t),
                })
            }
        };
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let mut body = Vec::new();
        resp.into_reader()
            .take(1 << 20)
            .read_to_end(&mut body)
            .map_err(|source| Error::Body {
                url: realm.to_owned(),
                source,
            })?;
        let t: Token = serde_json::from_slice(&body).map_err(|_| Error::Token(realm.to_owned()))?;
        t.token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::Token(realm.to_owned()))
    }
}

// The registry's `{"errors":[{"code":..,"message":..}]}`, shortened.
fn error_detail(r: ureq::Response) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        code: Option<String>,
        message: Option<String>,
    }
    let mut body = Vec::new();
    let _ = r.into_reader().take(8192).read_to_end(&mut body);
    match serde_json::from_slice::<Errors>(&body) {
        Ok(e) if !e.errors.is_empty() => {
            let i = &e.errors[0];
            format!(
                ": {} {}",
                i.code.as_deref().unwrap_or(""),
                i.message.as_deref().unwrap_or("")
            )
            .trim_end()
            .to_owned()
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_or_named_hosts() {
        assert!(is_insecure("localhost:5000", &[]));
        assert!(is_insecure("127.0.0.1:1234", &[]));
        assert!(is_insecure("[::1]:5000", &[]));
        assert!(!is_insecure("registry.example:5000", &[]));
        assert!(is_insecure(
            "registry.example:5000",
            &["registry.example:5000".into()]
        ));
        assert!(!is_insecure("localhost.evil.example", &[]));
        assert!(!is_insecure("127.evil.example", &[]));
    }
}
