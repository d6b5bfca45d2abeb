//! `hull import`: a rootfs tarball (plain, gzip or zstd) becomes a one-layer image,
//! with Dockerfile-style `--change` instructions applied to its config.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, MediaType};
use serde_json::{json, Map, Value};

use crate::compression::decompress_capped;
use crate::digest::{Digest, HashingReader};
use crate::inflate;
use crate::media;
use crate::platform::Platform;
use crate::reference::Reference;
use crate::store::Store;
use crate::tarwalk;

/// Import errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The source file cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The source is not a tar archive (after decompression).
    #[error("{} is not a tar archive", path.display())]
    NotTar {
        /// The file.
        path: PathBuf,
        /// Parser error.
        #[source]
        source: io::Error,
    },
    /// A `--change` value hull does not understand.
    #[error("invalid --change {0:?}: {1}")]
    Change(String, &'static str),
}

type Result<T, E = crate::Error> = std::result::Result<T, E>;

/// Imports `path` as image `name`; returns the new image ID (config digest).
pub fn import_rootfs(
    store: &Store,
    path: &Path,
    name: Option<&Reference>,
    changes: &[String],
) -> Result<Digest> {
    let read_err = |source| Error::Read {
        path: path.to_owned(),
        source,
    };
    let mut config = Map::new();
    for c in changes {
        apply_change(&mut config, c)?;
    }
    let mut head = [0u8; 4];
    let n = File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(read_err)?;
    let compression = media::Compression::detect(&head[..n]);
    // First pass: prove it is a tar and compute the diff ID, before the
    // store is touched.
    let file = File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let what = format!("rootfs {}", path.display());
    let tar = decompress_capped(compression, BufReader::new(file), &what, size)?;
    let diff_id = tar_diff_id(tar).map_err(|e| {
        inflate::or_else(e, |source| Error::NotTar {
            path: path.to_owned(),
            source,
        })
    })?;

    let mut ingest = store.ingest()?;
    let file = File::open(path).map_err(read_err)?;
    let (layer_digest, layer_size) = ingest.copy(BufReader::new(file), None)?;
    let created = crate::time::now_rfc3339();
    let platform = Platform::host();
    let config_doc = json!({
        "created": created,
        "architecture": platform.arch,
        "os": platform.os,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
        "history": [{
            "created": created,
            "created_by": "hull import",
            "comment": format!("Imported from {}", path.file_name().map(|f| f.to_string_lossy()).unwrap_or_default()),
        }],
    });
    let config_bytes = serde_json::to_vec(&config_doc).unwrap_or_default();
    let (config_digest, config_size) = ingest.write(&config_bytes, None)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": {"mediaType": media::OCI_CONFIG, "digest": config_digest.to_string(), "size": config_size},
        "layers": [{
            "mediaType": media::oci_layer_type(compression),
            "digest": layer_digest.to_string(),
            "size": layer_size,
        }],
    });
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap_or_default();
    let (md, ms) = ingest.write(&manifest_bytes, None)?;
    let names: Vec<Reference> = name.cloned().into_iter().collect();
    ingest.commit(&Descriptor::new(MediaType::ImageManifest, ms, md), &names)?;
    Ok(config_digest)
}

/// Walks a tar stream (already decompressed) to its end and returns the
/// digest of its bytes: the layer's diff ID. The walk keeps nothing: a
/// long-name or PAX record over 1 MiB is refused, never read whole.
pub fn tar_diff_id(tar: impl Read) -> io::Result<Digest> {
    let mut h = HashingReader::new(tar);
    let entries = match tarwalk::walk(&mut h, tarwalk::skip_by_reading) {
        Ok(n) => n,
        Err(tarwalk::Error::Read(e)) => return Err(e),
        Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
    };
    if entries == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "no entries"));
    }
    io::copy(&mut h, &mut io::sink())?;
    Ok(h.finish().0)
}

/// Applies one Dockerfile-style instruction to a config's `config` object.
pub fn apply_change(config: &mut Map<String, Value>, change: &str) -> Result<(), Error> {
    let bad = |why| Error::Change(change.to_owned(), why);
    let change = change.trim();
    let (instr, rest) = change
        .split_once(char::is_whitespace)
        .map(|(a, b)| (a, b.trim()))
        .unwrap_or((change, ""));
    if rest.is_empty() {
        return Err(bad("missing argument"));
    }
    match instr.to_ascii_uppercase().as_str() {
        "CMD" | "ENTRYPOINT" => {
            let argv = if rest.starts_with('[') {
                serde_json::from_str::<Vec<String>>(rest).map_err(|_| bad("expected a JSON array of strings"))?
            } else {
                vec!["/bin/sh".into(), "-c".into(), rest.into()]
            };
            let key = if instr.eq_ignore_ascii_case("CMD") { "Cmd" } else { "Entrypoint" };
            config.insert(key.into(), json!(argv));
        }
        "ENV" => {
            let pairs = key_values(rest).ok_or_else(|| bad("expected KEY=VALUE"))?;
            let env = config.entry("Env").or_insert_with(|| json!([]));
            if let Value::Array(list) = env {
                for (k, v) in pairs {
                    list.retain(|e| e.as_str().and_then(|s| s.split_once('=')).map(|p| p.0) != Some(&k));
                    list.push(json!(format!("{k}={v}")));
                }
            }
        }
        "LABEL" => {
            let pairs = key_values(rest).ok_or_else(|| bad("expected KEY=VALUE"))?;
            let labels = config.entry("Labels").or_insert_with(|| json!({}));
            if let Value::Object(m) = labels {
                for (k, v) in pairs {
                    m.insert(k, json!(v));
                }
            }
        }
        "EXPOSE" => {
            let ports = config.entry("ExposedPorts").or_insert_with(|| json!({}));
            for p in rest.split_whitespace() {
                let (num, proto) = p.split_once('/').unwrap_or((p, "tcp"));
                if num.parse::<u16>().is_err() || !matches!(proto, "tcp" | "udp" | "sctp") {
                    return Err(bad("expected PORT[/tcp|udp]"));
                }
                if let Value::Object(m) = ports {
                    m.insert(format!("{num}/{proto}"), json!({}));
                }
            }
        }
        "VOLUME" => {
            let vols: Vec<String> = if rest.starts_with('[') {
                serde_json::from_str(rest).map_err(|_| bad("expected a JSON array of strings"))?
            } else {
                rest.split_whitespace().map(String::from).collect()
            };
            let v = config.entry("Volumes").or_insert_with(|| json!({}));
            if let Value::Object(m) = v {
                for p in vols {
                    m.insert(p, json!({}));
                }
            }
        }
        "USER" => {
            config.insert("User".into(), json!(rest));
        }
        "WORKDIR" => {
            if !rest.starts_with('/') {
                return Err(bad("WORKDIR must be absolute"));
            }
            config.insert("WorkingDir".into(), json!(rest));
        }
        "STOPSIGNAL" => {
            config.insert("StopSignal".into(), json!(rest));
        }
        _ => return Err(bad("unsupported instruction (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, VOLUME, WORKDIR, STOPSIGNAL)")),
    }
    Ok(())
}

// `K=V K2="v 2"` or the legacy `K V` form.
fn key_values(s: &str) -> Option<Vec<(String, String)>> {
    let first = s.split_whitespace().next()?;
    if !first.contains('=') {
        let (k, v) = s.split_once(char::is_whitespace)?;
        return Some(vec![(k.to_owned(), v.trim().to_owned())]);
    }
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            for c in chars.by_ref() {
                if c == '"' {
                    break;
                }
                val.push(c);
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                val.push(c);
                chars.next();
            }
        }
        if key.is_empty() || key.contains(char::is_whitespace) {
            return None;
        }
        out.push((key, val));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest;
    use crate::media::Compression;

    #[test]
    fn applies_changes() {
        let mut c = Map::new();
        apply_change(&mut c, r#"CMD ["/bin/sh", "-c", "echo hi"]"#).unwrap();
        apply_change(&mut c, "entrypoint /bin/run").unwrap();
        apply_change(&mut c, r#"ENV A=1 B="two words""#).unwrap();
        apply_change(&mut c, "ENV A 3").unwrap();
        apply_change(&mut c, "EXPOSE 80 53/udp").unwrap();
        apply_change(&mut c, "WORKDIR /srv").unwrap();
        apply_change(&mut c, "LABEL k=v").unwrap();
        let v = Value::Object(c);
        assert_eq!(v["Cmd"], json!(["/bin/sh", "-c", "echo hi"]));
        assert_eq!(v["Entrypoint"], json!(["/bin/sh", "-c", "/bin/run"]));
        assert_eq!(v["Env"], json!(["B=two words", "A=3"]));
        assert_eq!(v["ExposedPorts"], json!({"80/tcp": {}, "53/udp": {}}));
        assert_eq!(v["WorkingDir"], json!("/srv"));
        assert_eq!(v["Labels"], json!({"k": "v"}));
    }

    #[test]
    fn rejects_bad_changes() {
        let mut c = Map::new();
        for bad in ["CMD", "RUN echo", "CMD [1,2]", "EXPOSE http", "WORKDIR rel"] {
            assert!(apply_change(&mut c, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn diff_id_of_plain_and_gzip_tar_agree() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "etc/x", &b"abc"[..]).unwrap();
        let plain = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &plain).unwrap();
        let gz = gz.finish().unwrap();
        let a = tar_diff_id(&plain[..]).unwrap();
        assert_eq!(a, digest::of_bytes(&plain));
        let tar = decompress_capped(Compression::Gzip, &gz[..], "gz", 10).unwrap();
        assert_eq!(tar_diff_id(tar).unwrap(), a);
        assert!(tar_diff_id(&b"this is not a tar file at all"[..]).is_err());
    }
}
