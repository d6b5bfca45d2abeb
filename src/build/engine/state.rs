//! The image a build step starts from and the one it produces: the image
//! config document (kept as JSON, so that what a base image sets and hull
//! does not know survives the build) and the layers so far.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::build::dockerfile::{Command, Health, Instruction};

/// Errors reading a base image into a build.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The base image's config blob cannot be read.
    #[error("reading the config of {image}: {source}")]
    Config {
        image: String,
        #[source]
        source: images::layout::Error,
    },
    /// The base image's config is not a JSON object.
    #[error("the config of {0} is not a JSON object")]
    NotObject(String),
}

/// One layer of the image being built, as its manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    /// Blob digest.
    pub digest: String,
    /// Blob size.
    pub size: u64,
    /// Media type of the blob.
    pub media_type: String,
}

/// An image in the making.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageState {
    /// The OCI image config document.
    pub config: Value,
    /// The layers, base first (the config's `rootfs.diff_ids` match).
    pub layers: Vec<LayerRef>,
}

/// The shell of shell-form RUN, CMD and ENTRYPOINT when SHELL set none.
const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];

impl ImageState {
    /// `FROM scratch`: no layers, an empty config for `platform`.
    pub fn scratch(platform: &images::platform::Platform) -> Self {
        ImageState {
            config: json!({
                "architecture": platform.arch,
                "os": platform.os,
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": []},
                "history": [],
            }),
            layers: Vec::new(),
        }
    }

    /// The image `image` of `store`, as a stage's starting point.
    pub fn from_image(store: &images::Store, image: &images::Image) -> Result<Self, StateError> {
        let name = image.short_id();
        let bytes = store
            .layout()
            .read_blob(&image.config_digest)
            .map_err(|source| StateError::Config {
                image: name.clone(),
                source,
            })?;
        let config: Value =
            serde_json::from_slice(&bytes).map_err(|_| StateError::NotObject(name.clone()))?;
        if !config.is_object() {
            return Err(StateError::NotObject(name));
        }
        let layers = image
            .layers
            .iter()
            .map(|l| LayerRef {
                digest: l.digest.to_string(),
                size: l.size,
                media_type: l.media_type.clone(),
            })
            .collect();
        Ok(ImageState { config, layers })
    }

    /// The layers' digests and blob paths in `store` (for preparing the
    /// root filesystem a RUN step starts from).
    pub fn layer_paths(&self, store: &images::Store) -> anyhow::Result<Vec<(String, PathBuf)>> {
        self.layers
            .iter()
            .map(|l| {
                let d = images::digest::parse(&l.digest)?;
                Ok((l.digest.clone(), store.layout().blob_path(&d)?))
            })
            .collect()
    }

    /// The config's `config` object (the runtime part), created if absent.
    fn runtime(&mut self) -> &mut Map<String, Value> {
        let top = self.config.as_object_mut().expect("checked in from_image");
        let entry = top.entry("config").or_insert_with(|| json!({}));
        if !entry.is_object() {
            *entry = json!({});
        }
        entry.as_object_mut().expect("just made an object")
    }

    fn runtime_get(&self, key: &str) -> Option<&Value> {
        self.config.get("config").and_then(|c| c.get(key))
    }

    fn strings(&self, key: &str) -> Vec<String> {
        self.runtime_get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `Env`, `KEY=VALUE` each.
    pub fn env(&self) -> Vec<String> {
        self.strings("Env")
    }

    /// `WorkingDir`, `/` when unset.
    pub fn workdir(&self) -> String {
        match self.runtime_get("WorkingDir").and_then(Value::as_str) {
            Some(w) if !w.is_empty() => w.to_string(),
            _ => "/".to_string(),
        }
    }

    /// `User` (empty: root).
    pub fn user(&self) -> String {
        self.runtime_get("User")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }

    /// The shell shell-form commands run through.
    pub fn shell(&self) -> Vec<String> {
        let s = self.strings("Shell");
        if s.is_empty() {
            DEFAULT_SHELL.iter().map(|s| s.to_string()).collect()
        } else {
            s
        }
    }

    /// A command as the image runs it: exec form as is, shell form
    /// through the shell.
    pub fn argv(&self, command: &Command) -> Vec<String> {
        match command {
            Command::Exec(v) => v.clone(),
            Command::Shell(s) => {
                let mut argv = self.shell();
                argv.push(s.clone());
                argv
            }
        }
    }

    fn set_env(&mut self, key: &str, value: &str) {
        let mut env = self.env();
        let prefix = format!("{key}=");
        let entry = format!("{key}={value}");
        match env.iter_mut().find(|e| e.starts_with(&prefix)) {
            Some(e) => *e = entry,
            None => env.push(entry),
        }
        self.runtime().insert("Env".into(), json!(env));
    }

    fn insert_into(&mut self, key: &str, name: &str, value: Value) {
        let rt = self.runtime();
        let map = rt.entry(key).or_insert_with(|| json!({}));
        if !map.is_object() {
            *map = json!({});
        }
        if let Some(m) = map.as_object_mut() {
            m.insert(name.to_string(), value);
        }
    }

    /// Applies an instruction that changes only the config (not RUN,
    /// COPY, ADD, ARG). `cmd_set` tells whether this stage set CMD
    /// already: ENTRYPOINT clears an inherited CMD, as in Docker.
    pub fn apply_config(&mut self, instruction: &Instruction, cmd_set: &mut bool) {
        match instruction {
            Instruction::Cmd { command } => {
                let argv = self.argv(command);
                self.runtime().insert("Cmd".into(), json!(argv));
                *cmd_set = true;
            }
            Instruction::Entrypoint { command } => {
                let argv = self.argv(command);
                self.runtime().insert("Entrypoint".into(), json!(argv));
                if !*cmd_set {
                    self.runtime().remove("Cmd");
                }
            }
            Instruction::Env { pairs, .. } => {
                for kv in pairs {
                    self.set_env(&kv.key, &kv.value);
                }
            }
            Instruction::Label { pairs, .. } => {
                for kv in pairs {
                    self.insert_into("Labels", &kv.key, json!(kv.value));
                }
            }
            Instruction::Workdir { path } => {
                let path = join_workdir(&self.workdir(), path);
                self.runtime().insert("WorkingDir".into(), json!(path));
            }
            Instruction::User { user } => {
                self.runtime().insert("User".into(), json!(user));
            }
            Instruction::Stopsignal { signal } => {
                self.runtime().insert("StopSignal".into(), json!(signal));
            }
            Instruction::Expose { ports } => {
                for p in ports {
                    let p = if p.contains('/') {
                        p.to_lowercase()
                    } else {
                        format!("{p}/tcp")
                    };
                    self.insert_into("ExposedPorts", &p, json!({}));
                }
            }
            Instruction::Volume { paths } => {
                for p in paths {
                    self.insert_into("Volumes", p, json!({}));
                }
            }
            Instruction::Shell { shell } => {
                self.runtime().insert("Shell".into(), json!(shell));
            }
            Instruction::Healthcheck { check } => {
                let value = healthcheck(check);
                self.runtime().insert("Healthcheck".into(), value);
            }
            Instruction::Onbuild { expression, .. } => {
                let mut triggers = self.strings("OnBuild");
                triggers.push(expression.clone());
                self.runtime().insert("OnBuild".into(), json!(triggers));
            }
            Instruction::Maintainer { name } => {
                if let Some(top) = self.config.as_object_mut() {
                    top.insert("author".into(), json!(name));
                }
            }
            Instruction::Run { .. }
            | Instruction::Copy(_)
            | Instruction::Add(_)
            | Instruction::Arg { .. } => {}
        }
    }

    /// Appends a layer made by a step (`diff_id`: digest of its tar).
    pub fn add_layer(&mut self, layer: LayerRef, diff_id: &str) {
        if let Some(ids) = self
            .config
            .pointer_mut("/rootfs/diff_ids")
            .and_then(Value::as_array_mut)
        {
            ids.push(json!(diff_id));
        } else if let Some(top) = self.config.as_object_mut() {
            top.insert(
                "rootfs".into(),
                json!({"type": "layers", "diff_ids": [diff_id]}),
            );
        }
        self.layers.push(layer);
    }

    /// Appends the config's history entry for a step, as BuildKit writes it.
    pub fn add_history(&mut self, created: &str, created_by: String, empty_layer: bool) {
        let mut entry = json!({
            "created": created,
            "created_by": created_by,
            "comment": "buildkit.dockerfile.v0",
        });
        if empty_layer {
            entry["empty_layer"] = json!(true);
        }
        let Some(top) = self.config.as_object_mut() else {
            return;
        };
        let history = top.entry("history").or_insert_with(|| json!([]));
        if let Some(h) = history.as_array_mut() {
            h.push(entry);
        }
    }

    /// Sets the image's creation time.
    pub fn set_created(&mut self, created: &str) {
        if let Some(top) = self.config.as_object_mut() {
            top.insert("created".into(), json!(created));
        }
    }
}

/// WORKDIR `path` seen from `current`: relative paths join it.
pub fn join_workdir(current: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{path}", current.trim_end_matches('/'))
    };
    clean_absolute(&joined)
}

/// `path` made absolute and lexically clean (`.`, `..`, `//` resolved;
/// `..` never climbs above `/`).
pub fn clean_absolute(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The config's `Healthcheck` object.
fn healthcheck(check: &Health) -> Value {
    match check {
        Health::None => json!({"Test": ["NONE"]}),
        Health::Cmd {
            command,
            interval_ns,
            timeout_ns,
            start_period_ns,
            start_interval_ns,
            retries,
        } => {
            let test = match command {
                Command::Exec(v) => std::iter::once("CMD".to_string())
                    .chain(v.iter().cloned())
                    .collect::<Vec<_>>(),
                Command::Shell(s) => vec!["CMD-SHELL".to_string(), s.clone()],
            };
            let mut h = json!({ "Test": test });
            for (key, value) in [
                ("Interval", interval_ns),
                ("Timeout", timeout_ns),
                ("StartPeriod", start_period_ns),
                ("StartInterval", start_interval_ns),
            ] {
                if let Some(v) = value {
                    h[key] = json!(v);
                }
            }
            if let Some(r) = retries {
                h["Retries"] = json!(r);
            }
            h
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::dockerfile::KeyValue;

    fn state() -> ImageState {
        ImageState::scratch(&images::platform::Platform::host())
    }

    #[test]
    fn workdirs_join_and_clean() {
        assert_eq!(join_workdir("/", "app"), "/app");
        assert_eq!(join_workdir("/app", "src/../lib"), "/app/lib");
        assert_eq!(join_workdir("/app", "/x//y/"), "/x/y");
        assert_eq!(join_workdir("/a", "../../.."), "/");
    }

    #[test]
    fn env_replaces_and_appends_in_order() {
        let mut s = state();
        let mut cmd = false;
        let env = |pairs: &[(&str, &str)]| Instruction::Env {
            pairs: pairs
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            legacy: false,
        };
        s.apply_config(&env(&[("A", "1"), ("B", "2")]), &mut cmd);
        s.apply_config(&env(&[("A", "3")]), &mut cmd);
        assert_eq!(s.env(), ["A=3", "B=2"]);
    }

    #[test]
    fn entrypoint_clears_an_inherited_cmd_only() {
        let mut s = state();
        let mut cmd = false;
        s.runtime().insert("Cmd".into(), json!(["inherited"]));
        s.apply_config(
            &Instruction::Entrypoint {
                command: Command::Exec(vec!["/e".into()]),
            },
            &mut cmd,
        );
        assert!(s.runtime_get("Cmd").is_none());
        s.apply_config(
            &Instruction::Cmd {
                command: Command::Shell("run it".into()),
            },
            &mut cmd,
        );
        s.apply_config(
            &Instruction::Entrypoint {
                command: Command::Exec(vec!["/f".into()]),
            },
            &mut cmd,
        );
        assert_eq!(
            s.runtime_get("Cmd").unwrap(),
            &json!(["/bin/sh", "-c", "run it"])
        );
    }

    #[test]
    fn shell_form_uses_the_shell_instruction() {
        let mut s = state();
        let mut cmd = false;
        s.apply_config(
            &Instruction::Shell {
                shell: vec!["/bin/bash".into(), "-ec".into()],
            },
            &mut cmd,
        );
        assert_eq!(
            s.argv(&Command::Shell("echo hi".into())),
            ["/bin/bash", "-ec", "echo hi"]
        );
    }

    #[test]
    fn ports_get_a_protocol_and_layers_a_diff_id() {
        let mut s = state();
        let mut cmd = false;
        s.apply_config(
            &Instruction::Expose {
                ports: vec!["80".into(), "53/UDP".into()],
            },
            &mut cmd,
        );
        assert_eq!(
            s.runtime_get("ExposedPorts").unwrap(),
            &json!({"80/tcp": {}, "53/udp": {}})
        );
        s.add_layer(
            LayerRef {
                digest: "sha256:aa".into(),
                size: 1,
                media_type: "m".into(),
            },
            "sha256:bb",
        );
        assert_eq!(s.config["rootfs"]["diff_ids"], json!(["sha256:bb"]));
    }
}
