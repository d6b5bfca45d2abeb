//! A tiny scriptable registry for what a real one will not do on demand:
//! bearer-token challenges, 5xx, truncated or corrupted bodies, odd media
//! types, and a blob that stalls mid-download.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What to do instead of serving a path normally.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status.
    Status(u16),
    /// Announce the full length but send half, then close.
    Truncate,
    /// Serve the right length with one byte flipped.
    Corrupt,
    /// Send half, then stall for a long time.
    Stall,
    /// `Status(code)` for the next N requests, then normal service.
    Flaky(u16, u32),
    /// `Truncate` for the next N requests, then normal service.
    TruncateTimes(u32),
}

/// Shared, mutable mock state.
#[derive(Default)]
pub struct State {
    /// `name:tag` or `name@digest` → (content type, body).
    pub manifests: HashMap<String, (String, Vec<u8>)>,
    /// Digest → blob.
    pub blobs: HashMap<String, Vec<u8>>,
    /// Require `Bearer good-token` (obtained from /token).
    pub bearer: bool,
    /// Path substring → fault.
    pub faults: Vec<(String, Fault)>,
    /// Request lines seen (with the query string).
    pub log: Vec<String>,
}

/// A running mock registry.
pub struct Mock {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Its state, changeable while it runs.
    pub state: Arc<Mutex<State>>,
}

impl Mock {
    /// Starts serving on a free loopback port (the thread lives as long as
    /// the test process).
    pub fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let a = addr.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let st = st.clone();
                let a = a.clone();
                std::thread::spawn(move || {
                    let _ = handle(c, &st, &a);
                });
            }
        });
        Self { addr, state }
    }

    /// Serves the image tagged `tag` in an OCI layout as `name:tag`, plus
    /// every blob of the layout (manifests are also served by digest).
    pub fn serve_layout(&self, layout: &Path, tag: &str, name: &str) {
        let mut s = self.state.lock().unwrap();
        for e in fs::read_dir(layout.join("blobs/sha256")).unwrap().flatten() {
            let d = format!("sha256:{}", e.file_name().to_string_lossy());
            let bytes = fs::read(e.path()).unwrap();
            if let Some(mt) = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["mediaType"].as_str().map(String::from))
            {
                s.manifests
                    .insert(format!("{name}@{d}"), (mt, bytes.clone()));
            }
            s.blobs.insert(d, bytes);
        }
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
        for m in index["manifests"].as_array().unwrap() {
            if m["annotations"]["org.opencontainers.image.ref.name"] == tag {
                let d = m["digest"].as_str().unwrap();
                let v = s.manifests[&format!("{name}@{d}")].clone();
                s.manifests.insert(format!("{name}:{tag}"), v);
            }
        }
    }

    /// Adds a fault for paths containing `pattern`.
    pub fn fault(&self, pattern: &str, f: Fault) {
        self.state
            .lock()
            .unwrap()
            .faults
            .push((pattern.to_owned(), f));
    }

    /// Removes all faults.
    pub fn clear_faults(&self) {
        self.state.lock().unwrap().faults.clear();
    }
}

fn handle(c: TcpStream, st: &Mutex<State>, addr: &str) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut r = BufReader::new(c.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut auth = String::new();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.to_ascii_lowercase().as_str() {
                "authorization" => auth = v.trim().to_owned(),
                "content-length" => len = v.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let target = parts.next().unwrap_or("").to_owned();
    let path = target.split('?').next().unwrap_or("").to_owned();
    let mut w = c;
    let (bearer, fault, found) = {
        let mut s = st.lock().map_err(|_| std::io::Error::other("poisoned"))?;
        s.log.push(format!("{method} {target}"));
        let fault = s
            .faults
            .iter_mut()
            .find(|(p, _)| path.contains(p.as_str()))
            .and_then(|f| match &mut f.1 {
                Fault::Flaky(code, n) if *n > 0 => {
                    *n -= 1;
                    Some(Fault::Status(*code))
                }
                Fault::TruncateTimes(n) if *n > 0 => {
                    *n -= 1;
                    Some(Fault::Truncate)
                }
                Fault::Flaky(..) | Fault::TruncateTimes(_) => None,
                other => Some(other.clone()),
            });
        let found = lookup(&s, &path);
        (s.bearer, fault, found)
    };
    if path == "/token" {
        return respond(
            &mut w,
            200,
            "application/json",
            br#"{"token":"good-token"}"#,
            None,
        );
    }
    if bearer && auth != "Bearer good-token" {
        let challenge = format!(
            "WWW-Authenticate: Bearer realm=\"http://{addr}/token\",service=\"mock\",scope=\"repository:any:pull\"\r\n"
        );
        return respond_h(&mut w, 401, "application/json", b"{}", &challenge, None);
    }
    if let Some(Fault::Status(code)) = fault {
        let body = br#"{"errors":[{"code":"INJECTED","message":"injected failure"}]}"#;
        return respond(&mut w, code, "application/json", body, None);
    }
    if path == "/v2/" {
        return respond(&mut w, 200, "application/json", b"{}", None);
    }
    match found {
        None => respond(
            &mut w,
            404,
            "application/json",
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}"#,
            None,
        ),
        Some((ctype, mut bytes)) => {
            if method == "HEAD" {
                return respond(&mut w, 200, &ctype, &[], Some(bytes.len()));
            }
            match fault {
                Some(Fault::Corrupt) => {
                    let last = bytes.len() - 1;
                    bytes[last] ^= 0xff;
                    respond(&mut w, 200, &ctype, &bytes, None)
                }
                Some(Fault::Truncate) => respond(
                    &mut w,
                    200,
                    &ctype,
                    &bytes[..bytes.len() / 2],
                    Some(bytes.len()),
                ),
                Some(Fault::Stall) => {
                    let _ = respond(
                        &mut w,
                        200,
                        &ctype,
                        &bytes[..bytes.len() / 2],
                        Some(bytes.len()),
                    );
                    std::thread::sleep(Duration::from_secs(60));
                    Ok(())
                }
                _ => respond(&mut w, 200, &ctype, &bytes, None),
            }
        }
    }
}

fn lookup(s: &State, path: &str) -> Option<(String, Vec<u8>)> {
    let rest = path.strip_prefix("/v2/")?;
    if let Some(i) = rest.rfind("/manifests/") {
        let (name, r) = (&rest[..i], &rest[i + 11..]);
        let key = if r.starts_with("sha256:") {
            format!("{name}@{r}")
        } else {
            format!("{name}:{r}")
        };
        return s.manifests.get(&key).cloned();
    }
    if let Some(i) = rest.rfind("/blobs/") {
        return s
            .blobs
            .get(&rest[i + 7..])
            .map(|b| ("application/octet-stream".to_owned(), b.clone()));
    }
    None
}

fn respond(
    w: &mut TcpStream,
    code: u16,
    ctype: &str,
    body: &[u8],
    len: Option<usize>,
) -> std::io::Result<()> {
    respond_h(w, code, ctype, body, "", len)
}

fn respond_h(
    w: &mut TcpStream,
    code: u16,
    ctype: &str,
    body: &[u8],
    extra: &str,
    len: Option<usize>,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {code} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
        len.unwrap_or(body.len())
    );
    w.write_all(head.as_bytes())?;
    w.write_all(body)?;
    w.flush()
}
