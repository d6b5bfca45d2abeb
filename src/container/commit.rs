//! `hull commit`: a container's writable layer becomes a new image layer
//! on top of its image. The layer tar is made in a helper VM by the
//! agent (the same writer as a build's RUN steps: whiteouts, opaque
//! directories, hardlinks, xattrs), the host digests, compresses and
//! stores it, then writes the image's config and manifest. The image is
//! named only once all of it is stored: a commit killed mid-way leaves at
//! most unreferenced blobs, which the store's GC removes.

use std::path::Path;

use images::Reference;
use serde_json::{json, Value};

use super::fs_vm::{Access, FsVm};
use super::store::Container;
use crate::build::dockerfile::{Dockerfile, Instruction};
use crate::build::engine::blobs;
use crate::build::engine::state::ImageState;

/// Errors of `hull commit` that are the user's input.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// A `--change` that is not a Dockerfile instruction commit accepts.
    #[error("--change: {0} is not supported (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, ONBUILD, USER, VOLUME, WORKDIR, STOPSIGNAL are)")]
    Unsupported(String),
    /// A `--change` that does not parse.
    #[error("--change: {0}")]
    Parse(String),
    /// A bad image name.
    #[error("invalid reference format: {0}")]
    Reference(String),
}

/// What `hull commit` was asked for.
#[derive(Debug, Default, Clone)]
pub struct CommitOptions {
    /// `-m`: the history entry's comment.
    pub message: Option<String>,
    /// `-a`: the image's author.
    pub author: Option<String>,
    /// `-c`: Dockerfile instructions applied to the config.
    pub changes: Vec<String>,
    /// `NAME[:TAG]` to give the image.
    pub reference: Option<String>,
}

/// Commits `c`; returns the new image's ID (config digest).
pub fn commit(root: &Path, c: &Container, opts: &CommitOptions) -> anyhow::Result<String> {
    // Everything the user can get wrong is checked before a VM starts.
    let changes = parse_changes(&opts.changes)?;
    let names = match &opts.reference {
        Some(r) => vec![Reference::parse(r).map_err(|_| CommitError::Reference(r.clone()))?],
        None => Vec::new(),
    };
    let store = images::Store::open(root)?;
    let image = store.image(&c.config.image_id)?;
    let mut state = ImageState::from_image(&store, &image)?;
    apply_container_config(&mut state, c);
    let mut cmd_set = false;
    for change in &changes {
        state.apply_config(change, &mut cmd_set);
    }
    let mut vm = FsVm::open(root, c, Access::Read)?;
    let len = vm.write_layer()?;
    let _ingest = store.ingest_lock()?;
    let (layer, diff_id) = blobs::store_layer(&store, vm.output(len)?)?;
    vm.finish()?;
    let now = images::time::now_rfc3339();
    state.add_layer(layer, diff_id.as_ref());
    add_history(&mut state, &now, c, opts);
    state.set_created(&now);
    if let (Some(author), Some(top)) = (&opts.author, state.config.as_object_mut()) {
        top.insert("author".into(), json!(author));
    }
    let id = blobs::commit_image(&store, &state, &names)?;
    Ok(id.to_string())
}

/// Parses `--change` values as Dockerfile instructions (substituted as a
/// Dockerfile's would be), refusing those that are not config changes.
fn parse_changes(changes: &[String]) -> Result<Vec<Instruction>, CommitError> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let text = format!("FROM scratch\n{}\n", changes.join("\n"));
    let dockerfile = Dockerfile::parse(&text).map_err(|e| CommitError::Parse(e.to_string()))?;
    let build = dockerfile
        .resolve(&Default::default(), &|_| Default::default())
        .map_err(|e| CommitError::Parse(e.to_string()))?;
    let steps = build.stages.into_iter().flat_map(|s| s.steps);
    steps
        .map(|step| match step.instruction {
            i @ (Instruction::Cmd { .. }
            | Instruction::Entrypoint { .. }
            | Instruction::Env { .. }
            | Instruction::Expose { .. }
            | Instruction::Label { .. }
            | Instruction::Onbuild { .. }
            | Instruction::User { .. }
            | Instruction::Volume { .. }
            | Instruction::Workdir { .. }
            | Instruction::Stopsignal { .. }) => Ok(i),
            other => Err(CommitError::Unsupported(
                other
                    .to_string()
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .into(),
            )),
        })
        .collect()
}

/// The container's own settings onto the image's config, as Docker's
/// commit records them: env, working directory, user, labels, and its
/// command (as Cmd after the image's entrypoint when it starts with it).
fn apply_container_config(state: &mut ImageState, c: &Container) {
    let Some(config) = state
        .config
        .as_object_mut()
        .map(|top| top.entry("config").or_insert_with(|| json!({})))
    else {
        return;
    };
    let Some(config) = config.as_object_mut() else {
        return;
    };
    let entrypoint: Vec<String> = config
        .get("Entrypoint")
        .and_then(|e| serde_json::from_value(e.clone()).ok())
        .unwrap_or_default();
    let argv = &c.config.argv;
    if !entrypoint.is_empty() && argv.starts_with(&entrypoint) {
        config.insert("Cmd".into(), json!(argv[entrypoint.len()..]));
    } else {
        config.insert("Entrypoint".into(), Value::Null);
        config.insert("Cmd".into(), json!(argv));
    }
    config.insert("Env".into(), json!(c.config.env));
    config.insert("WorkingDir".into(), json!(c.config.cwd));
    config.insert("User".into(), json!(c.config.user));
    if !c.config.labels.is_empty() {
        config.insert("Labels".into(), json!(c.config.labels));
    }
}

fn add_history(state: &mut ImageState, now: &str, c: &Container, opts: &CommitOptions) {
    let mut entry = json!({
        "created": now,
        "created_by": c.config.argv.join(" "),
    });
    if let Some(m) = &opts.message {
        entry["comment"] = json!(m);
    }
    if let Some(a) = &opts.author {
        entry["author"] = json!(a);
    }
    if let Some(h) = state
        .config
        .as_object_mut()
        .map(|top| top.entry("history").or_insert_with(|| json!([])))
        .and_then(Value::as_array_mut)
    {
        h.push(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_parse_as_config_instructions_only() {
        let ok = parse_changes(&[
            "CMD [\"/bin/sh\", \"-c\", \"echo hi\"]".into(),
            "ENV A=\"b c\"".into(),
            "EXPOSE 80".into(),
        ])
        .unwrap();
        assert_eq!(ok.len(), 3);
        let mut state = ImageState {
            config: json!({"config": {}}),
            layers: Vec::new(),
        };
        let mut cmd_set = false;
        for i in &ok {
            state.apply_config(i, &mut cmd_set);
        }
        assert_eq!(state.config["config"]["Env"], json!(["A=b c"]));
        assert_eq!(
            state.config["config"]["Cmd"],
            json!(["/bin/sh", "-c", "echo hi"])
        );
        let err = parse_changes(&["RUN rm -rf /".into()]).unwrap_err();
        assert!(err.to_string().contains("RUN is not supported"), "{err}");
        assert!(parse_changes(&["NOSUCH x".into()]).is_err());
    }
}
