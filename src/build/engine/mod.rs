//! `hull build`'s engine: runs a resolved Dockerfile ([`super::Build`])
//! into an image in the store.
//!
//! Per stage of the build order it starts from the base (scratch, an
//! image of the store, or an earlier stage's result) and applies each
//! step: config instructions change the config, COPY/ADD make a layer on
//! the host from the build context ([`context`]), RUN runs in a build VM
//! ([`runner`]) whose writable layer comes back as a layer tar. Every
//! step's result is cached under a key that chains its inputs
//! ([`cache`]); an unchanged rebuild runs nothing. The target stage's
//! result becomes the image ([`blobs`]).

pub mod blobs;
pub mod cache;
pub mod context;
pub mod output;
pub mod remote;
pub mod runner;
pub mod state;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use images::Reference;

use super::dockerfile::{Command, Instruction};
use super::ignore::{self, ContextEntry, DockerIgnore};
use super::{Base, Build, BuildOptions, Dockerfile, ResolvedStage, ResolvedStep, Vars};
use crate::network::NetworkMode;
use cache::BuildCache;
use output::{Progress, Step};
use runner::{BuildVm, RunSpec, StepResult};
use state::ImageState;

/// A build that failed at a line of the Dockerfile.
#[derive(Debug, thiserror::Error)]
#[error("Dockerfile:{line}: {message}")]
pub struct StepError {
    pub line: usize,
    pub message: String,
}

fn at(line: usize, message: impl std::fmt::Display) -> anyhow::Error {
    StepError {
        line,
        message: message.to_string(),
    }
    .into()
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The build context directory.
    pub context: PathBuf,
    /// The Dockerfile's text.
    pub dockerfile: String,
    pub options: BuildOptions,
    /// `-t` names.
    pub tags: Vec<Reference>,
    /// `--no-cache`.
    pub no_cache: bool,
    /// The network RUN steps are on.
    pub network: NetworkMode,
    /// `-q`.
    pub quiet: bool,
}

/// A stage's result: its image and the cache key of its last step.
#[derive(Debug, Clone)]
struct StageResult {
    state: ImageState,
    key: String,
}

/// Runs the build; returns the image ID.
pub fn build(root: &Path, req: &BuildRequest) -> anyhow::Result<images::digest::Digest> {
    let dockerfile = Dockerfile::parse(&req.dockerfile).map_err(|e| anyhow::anyhow!(e.report()))?;
    let store = images::Store::open(root)?;
    let bases = base_images(&dockerfile, req, &store, root)?;
    let build = dockerfile
        .resolve(&req.options, &|r| {
            bases.get(r).map(|(_, env)| env.clone()).unwrap_or_default()
        })
        .map_err(|e| anyhow::anyhow!(e.report()))?;
    // No GC while the build adds blobs and reads its cache's.
    let _lock = store.ingest_lock()?;
    let entries = context_entries(&req.context, &build)?;
    let mut engine = Engine {
        root,
        req,
        store: &store,
        cache: BuildCache::new(root),
        bases: &bases,
        entries,
        progress: Progress::new(req.quiet),
        results: HashMap::new(),
    };
    for stage in &build.stages {
        let result = engine.stage(stage, &build)?;
        engine.results.insert(stage.index, result);
    }
    let mut last = engine
        .results
        .remove(&build.target)
        .context("the target stage was not built")?;
    // The image's time is its last step's: an unchanged rebuild gives
    // the same image ID.
    let created = last
        .state
        .config
        .pointer("/history")
        .and_then(|h| h.as_array())
        .and_then(|h| h.last())
        .and_then(|h| h.get("created"))
        .and_then(|c| c.as_str())
        .map(str::to_string)
        .unwrap_or_else(images::time::now_rfc3339);
    last.state.set_created(&created);
    let step = engine.progress.begin("exporting to image");
    let id = blobs::commit_image(&store, &last.state, &req.tags)?;
    step.note(&format!("writing image {id} done"));
    for t in &req.tags {
        step.note(&format!("naming to {t} done"));
    }
    step.done();
    Ok(id)
}

/// The images the Dockerfile starts from or copies from, found in the
/// store or pulled when missing (as `docker build` does), by the
/// reference as written after meta-arg substitution, with their env
/// (which ENV and ARG resolution need).
fn base_images(
    dockerfile: &Dockerfile,
    req: &BuildRequest,
    store: &images::Store,
    root: &Path,
) -> anyhow::Result<HashMap<String, (images::Image, Vars)>> {
    use crate::cli::container::auto_pull::{self, PullPolicy};
    let first = dockerfile
        .resolve(&req.options, &|_| Vars::new())
        .map_err(|e| anyhow::anyhow!(e.report()))?;
    let mut out = HashMap::new();
    for stage in &first.stages {
        let mut wanted: Vec<(usize, &str)> = Vec::new();
        if let Base::Image { reference } = &stage.base {
            wanted.push((stage.line, reference));
        }
        for step in &stage.steps {
            if let Some(Base::Image { reference }) = &step.copy_from {
                wanted.push((step.line, reference));
            }
        }
        for (line, reference) in wanted {
            if out.contains_key(reference) {
                continue;
            }
            let image = auto_pull::image(store, root, reference, PullPolicy::Missing, req.quiet)
                .map_err(|e| at(line, format!("{reference}: {e}")))?;
            let env: Vars = image
                .config
                .config()
                .as_ref()
                .and_then(|c| c.env().clone())
                .unwrap_or_default()
                .iter()
                .filter_map(|e| {
                    e.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect();
            out.insert(reference.to_string(), (image, env));
        }
    }
    Ok(out)
}

/// The context's entries COPY and ADD may read (`.dockerignore`
/// applied), walked only if some step reads the context.
fn context_entries(context: &Path, build: &Build) -> anyhow::Result<Vec<ContextEntry>> {
    let reads_context = build.stages.iter().flat_map(|s| &s.steps).any(|s| {
        matches!(&s.instruction, Instruction::Add(_))
            || matches!(&s.instruction, Instruction::Copy(c) if c.from.is_none() && !c.sources.is_empty())
    });
    if !reads_context {
        return Ok(Vec::new());
    }
    let meta = std::fs::metadata(context)
        .with_context(|| format!("build context {}", context.display()))?;
    if !meta.is_dir() {
        anyhow::bail!("build context {} is not a directory", context.display());
    }
    let ignore = DockerIgnore::read(context)?;
    Ok(ignore::walk(context, &ignore)?)
}

struct Engine<'a> {
    root: &'a Path,
    req: &'a BuildRequest,
    store: &'a images::Store,
    cache: BuildCache,
    bases: &'a HashMap<String, (images::Image, Vars)>,
    entries: Vec<ContextEntry>,
    progress: Progress,
    results: HashMap<usize, StageResult>,
}

impl Engine<'_> {
    /// Builds one stage.
    fn stage(&mut self, stage: &ResolvedStage, build: &Build) -> anyhow::Result<StageResult> {
        let name = stage
            .name
            .clone()
            .unwrap_or_else(|| format!("stage-{}", stage.index));
        let mut current = self.stage_base(stage)?;
        let from = self.progress.begin(&format!(
            "[{name} 1/{}] FROM {}",
            stage.steps.len() + 1,
            base_name(&stage.base, build)
        ));
        from.done();
        let mut vm: Option<BuildVm> = None;
        let mut cmd_set = false;
        for (i, step) in stage.steps.iter().enumerate() {
            if matches!(step.instruction, Instruction::Arg { .. }) {
                continue;
            }
            let label = format!(
                "[{name} {}/{}] {}",
                i + 2,
                stage.steps.len() + 1,
                one_line(&step.instruction.to_string())
            );
            let shown = self.progress.begin(&label);
            current = self.step(step, current, &mut vm, &mut cmd_set, &shown)?;
            shown.done();
        }
        drop(vm);
        Ok(current)
    }

    fn stage_base(&self, stage: &ResolvedStage) -> anyhow::Result<StageResult> {
        Ok(match &stage.base {
            Base::Scratch => {
                let mut state = ImageState::scratch(&self.req.options.platform);
                let mut cmd_set = false;
                state.apply_config(
                    &Instruction::Env {
                        pairs: vec![super::dockerfile::KeyValue {
                            key: "PATH".into(),
                            value: super::resolve::DEFAULT_PATH.into(),
                        }],
                        legacy: false,
                    },
                    &mut cmd_set,
                );
                StageResult {
                    state,
                    key: "scratch".into(),
                }
            }
            Base::Image { reference } => {
                let (image, _) = self
                    .bases
                    .get(reference)
                    .ok_or_else(|| at(stage.line, format!("{reference}: No such image")))?;
                StageResult {
                    state: ImageState::from_image(self.store, image)
                        .map_err(|e| at(stage.line, e))?,
                    key: format!("image:{}", image.id()),
                }
            }
            Base::Stage { index } => self
                .results
                .get(index)
                .cloned()
                .ok_or_else(|| at(stage.line, format!("stage {index} was not built")))?,
        })
    }

    /// Applies one step to `current`.
    fn step(
        &mut self,
        step: &ResolvedStep,
        current: StageResult,
        vm: &mut Option<BuildVm>,
        cmd_set: &mut bool,
        shown: &Step,
    ) -> anyhow::Result<StageResult> {
        if let Some(what) = unsupported(&step.instruction, &self.req.network) {
            return Err(at(step.line, format!("{what} is not supported yet")));
        }
        let instruction = serde_json::to_string(&step.instruction).unwrap_or_default();
        match &step.instruction {
            Instruction::Run {
                command, heredocs, ..
            } => {
                let inputs = serde_json::to_string(&step.build_args).unwrap_or_default();
                let key = cache::key(&current.key, &instruction, &inputs);
                if let Some(hit) = self.cached(&key, shown) {
                    // The VM holds the files of another history now.
                    vm.take();
                    return Ok(hit);
                }
                let argv = run_argv(&current.state, command, heredocs);
                let state = self.run_step(step, &current.state, argv, vm, shown)?;
                self.finish(key, state)
            }
            Instruction::Copy(c) if c.from.is_some() => {
                vm.take();
                self.copy_from_step(step, c, current, shown)
            }
            Instruction::Copy(_) | Instruction::Add(_) => {
                vm.take();
                self.copy_step(step, current, shown)
            }
            other => {
                let key = cache::key(&current.key, &instruction, "");
                if let Some(hit) = self.cached(&key, shown) {
                    return Ok(hit);
                }
                let mut state = current.state;
                state.apply_config(other, cmd_set);
                state.add_history(&images::time::now_rfc3339(), other.to_string(), true);
                self.finish(key, state)
            }
        }
    }

    /// A cache hit for `key` whose layers are all still stored.
    fn cached(&self, key: &str, shown: &Step) -> Option<StageResult> {
        if self.req.no_cache {
            return None;
        }
        let state = self.cache.get(key)?;
        if !blobs::layers_present(self.store, &state) {
            return None;
        }
        shown.cached();
        Some(StageResult {
            state,
            key: key.to_string(),
        })
    }

    /// Records a step's result in the cache.
    fn finish(&self, key: String, state: ImageState) -> anyhow::Result<StageResult> {
        self.cache.put(&key, &state)?;
        Ok(StageResult { state, key })
    }

    /// RUN in the build VM (started if this is the first RUN since the
    /// VM's image changed).
    fn run_step(
        &mut self,
        step: &ResolvedStep,
        state: &ImageState,
        argv: Vec<String>,
        vm: &mut Option<BuildVm>,
        shown: &Step,
    ) -> anyhow::Result<ImageState> {
        if vm.is_none() {
            let layers = state.layer_paths(self.store)?;
            shown.note(&format!("starting a build VM on {} layers", layers.len()));
            *vm = Some(
                BuildVm::start(self.root, &layers, self.req.network.clone())
                    .map_err(|e| at(step.line, format!("starting the build VM: {e:#}")))?,
            );
        }
        let Some(running) = vm.as_mut() else {
            unreachable!("started above");
        };
        let spec = RunSpec {
            argv: argv.clone(),
            env: run_env(state, &step.build_args),
            cwd: state.workdir(),
            user: state.user(),
        };
        let (out, err, tail) = shown.output();
        let result = running
            .run(spec, out, err)
            .map_err(|e| at(step.line, format!("{e:#}")))?;
        let (offset, len) = match result {
            StepResult::Layer { offset, len } => (offset, len),
            StepResult::Failed(code) => {
                vm.take();
                let lines = tail.lines();
                if self.req.quiet {
                    for l in &lines {
                        eprintln!("{l}");
                    }
                }
                return Err(at(
                    step.line,
                    format!(
                        "process \"{}\" did not complete successfully: exit code: {code}{}",
                        argv.join(" "),
                        lines
                            .last()
                            .map(|l| format!(" (last output: {l})"))
                            .unwrap_or_default()
                    ),
                ));
            }
        };
        let (layer, diff_id) = blobs::store_layer(self.store, running.layer(offset, len)?)?;
        shown.note(&format!(
            "layer {} ({len} bytes of tar)",
            short(&layer.digest)
        ));
        let mut state = state.clone();
        state.add_layer(layer, diff_id.as_ref());
        state.add_history(
            &images::time::now_rfc3339(),
            format!("RUN {} # buildkit", argv.join(" ")),
            false,
        );
        Ok(state)
    }

    /// COPY or ADD from the context: the layer is made first (its digest is
    /// part of the key), stored only on a cache miss.
    fn copy_step(
        &mut self,
        step: &ResolvedStep,
        current: StageResult,
        shown: &Step,
    ) -> anyhow::Result<StageResult> {
        let workdir = current.state.workdir();
        let dir = self.root.join("build");
        std::fs::create_dir_all(&dir)?;
        let (sources, fetched) = fetch_remote(&step.instruction, &dir)
            .map_err(|e| at(step.line, format!("{}: {e}", keyword(&step.instruction))))?;
        let spec = copy_spec(&step.instruction, &workdir, &sources, &fetched);
        let Some(spec) = spec else {
            unreachable!("called for COPY and ADD only");
        };
        let mut tmp = tempfile::tempfile_in(&dir)?;
        let mut hashing = images::digest::HashingWriter::new(std::io::BufWriter::new(&mut tmp));
        context::write_copy_layer(&self.req.context, &self.entries, &spec, &mut hashing)
            .map_err(|e| at(step.line, format!("{}: {e}", keyword(&step.instruction))))?;
        let (buf, diff_id, _) = hashing.finish();
        buf.into_inner().map_err(|e| e.into_error())?;
        let instruction = serde_json::to_string(&step.instruction).unwrap_or_default();
        let key = cache::key(&current.key, &instruction, diff_id.as_ref());
        if let Some(hit) = self.cached(&key, shown) {
            return Ok(hit);
        }
        use std::io::Seek;
        tmp.rewind()?;
        let (layer, stored_diff) = blobs::store_layer(self.store, std::io::BufReader::new(tmp))?;
        debug_assert_eq!(stored_diff, diff_id);
        let mut state = current.state;
        state.add_layer(layer, diff_id.as_ref());
        state.add_history(
            &images::time::now_rfc3339(),
            format!("{} # buildkit", one_line(&step.instruction.to_string())),
            false,
        );
        self.finish(key, state)
    }
}

impl Engine<'_> {
    /// `COPY --from=stage|image`: the source image's files, copied out
    /// in a build VM on that image (the host never reads image content).
    fn copy_from_step(
        &mut self,
        step: &ResolvedStep,
        copy: &super::dockerfile::Copy,
        current: StageResult,
        shown: &Step,
    ) -> anyhow::Result<StageResult> {
        let source = match &step.copy_from {
            Some(Base::Stage { index }) => self.results.get(index).cloned(),
            Some(Base::Image { reference }) => match self.bases.get(reference) {
                Some((image, _)) => Some(StageResult {
                    state: ImageState::from_image(self.store, image)
                        .map_err(|e| at(step.line, e))?,
                    key: format!("image:{}", image.id()),
                }),
                None => None,
            },
            _ => None,
        }
        .ok_or_else(|| at(step.line, "COPY --from: the source was not built"))?;
        let instruction = serde_json::to_string(&step.instruction).unwrap_or_default();
        let key = cache::key(&current.key, &instruction, &source.key);
        if let Some(hit) = self.cached(&key, shown) {
            return Ok(hit);
        }
        let sources = from_sources(copy, &current.state.workdir())
            .map_err(|e| at(step.line, format!("COPY: {e}")))?;
        let owner = copy.chown.as_deref().map(context::parse_chown).transpose();
        let mode = copy.chmod.as_deref().map(context::parse_chmod).transpose();
        let (owner, mode) = match (owner, mode) {
            (Ok(o), Ok(m)) => (o, m),
            (Err(e), _) | (_, Err(e)) => return Err(at(step.line, format!("COPY: {e}"))),
        };
        let layers = source.state.layer_paths(self.store)?;
        shown.note(&format!(
            "starting a build VM on the source's {} layers",
            layers.len()
        ));
        let mut vm = BuildVm::start(self.root, &layers, NetworkMode::None)
            .map_err(|e| at(step.line, format!("starting the build VM: {e:#}")))?;
        let (offset, len) = vm
            .copy_out(sources, owner, mode)
            .map_err(|e| at(step.line, format!("COPY --from: {e:#}")))?;
        let (layer, diff_id) = blobs::store_layer(self.store, vm.layer(offset, len)?)?;
        drop(vm);
        let mut state = current.state;
        state.add_layer(layer, diff_id.as_ref());
        state.add_history(
            &images::time::now_rfc3339(),
            format!("{} # buildkit", one_line(&step.instruction.to_string())),
            false,
        );
        self.finish(key, state)
    }
}

/// The sources of a `COPY --from` for the agent: paths in the source
/// image, destinations under WORKDIR, Docker's rule for several sources.
fn from_sources(
    copy: &super::dockerfile::Copy,
    workdir: &str,
) -> Result<Vec<agent_protocol::protocol::CopySource>, context::CopyError> {
    if let Some(p) = copy.sources.iter().find(|s| s.contains(['*', '?', '['])) {
        let _ = p;
        return Err(context::CopyError::Unsupported("a wildcard in COPY --from"));
    }
    if !copy.heredocs.is_empty() {
        return Err(context::CopyError::Unsupported("a heredoc in COPY --from"));
    }
    let dest_is_dir = copy.dest.ends_with('/') || copy.dest.ends_with("/.") || copy.dest == ".";
    if copy.sources.len() > 1 && !dest_is_dir {
        return Err(context::CopyError::DestNotDir);
    }
    let dest = state::join_workdir(workdir, &copy.dest);
    Ok(copy
        .sources
        .iter()
        .map(|s| agent_protocol::protocol::CopySource {
            path: state::clean_absolute(s),
            dest: dest.trim_start_matches('/').to_string(),
            dest_is_dir,
        })
        .collect())
}

/// A flag the frontend records that the engine does not implement: an
/// error rather than a build that silently differs from Docker's.
/// (`--link` needs nothing: every layer here is made on its own.)
fn unsupported(i: &Instruction, network: &NetworkMode) -> Option<String> {
    match i {
        Instruction::Run {
            mounts,
            network: step_network,
            security,
            ..
        } => {
            if !mounts.is_empty() {
                return Some("RUN --mount".into());
            }
            if security.is_some() {
                return Some("RUN --security".into());
            }
            match step_network.as_deref() {
                Some(n) if NetworkMode::parse(n).ok().as_ref() != Some(network) => Some(format!(
                    "RUN --network={n} in a build on --network {}",
                    network.name()
                )),
                _ => None,
            }
        }
        Instruction::Copy(c) if c.parents => Some("COPY --parents".into()),
        Instruction::Copy(c) if !c.exclude.is_empty() => Some("COPY --exclude".into()),
        Instruction::Add(a) if !a.exclude.is_empty() => Some("ADD --exclude".into()),
        Instruction::Add(a) if a.keep_git_dir => Some("ADD --keep-git-dir".into()),
        _ => None,
    }
}

fn keyword(i: &Instruction) -> &'static str {
    match i {
        Instruction::Add(_) => "ADD",
        _ => "COPY",
    }
}

/// The context-copy part of a COPY or ADD instruction.
fn copy_spec<'a>(
    i: &'a Instruction,
    workdir: &'a str,
    sources: &'a [String],
    remote: &'a [remote::Fetched],
) -> Option<context::CopySpec<'a>> {
    match i {
        Instruction::Copy(c) => Some(context::CopySpec {
            sources,
            heredocs: &c.heredocs,
            dest: &c.dest,
            workdir,
            chown: c.chown.as_deref(),
            chmod: c.chmod.as_deref(),
            extract_archives: false,
            remote,
        }),
        Instruction::Add(a) => Some(context::CopySpec {
            sources,
            heredocs: &a.heredocs,
            dest: &a.dest,
            workdir,
            chown: a.chown.as_deref(),
            chmod: a.chmod.as_deref(),
            extract_archives: true,
            remote,
        }),
        _ => None,
    }
}

/// ADD's URL sources fetched (the rest of the sources returned), COPY's
/// sources as they are.
fn fetch_remote(
    i: &Instruction,
    dir: &Path,
) -> Result<(Vec<String>, Vec<remote::Fetched>), String> {
    match i {
        Instruction::Add(a) => {
            let (urls, local): (Vec<String>, Vec<String>) =
                a.sources.iter().cloned().partition(|s| remote::is_url(s));
            if a.checksum.is_some() && (urls.len() != 1 || !local.is_empty()) {
                return Err("--checksum needs exactly one URL source".into());
            }
            let fetched = urls
                .iter()
                .map(|u| remote::fetch(u, dir, a.checksum.as_deref()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            Ok((local, fetched))
        }
        Instruction::Copy(c) => Ok((c.sources.clone(), Vec::new())),
        _ => Ok((Vec::new(), Vec::new())),
    }
}

/// What RUN executes: exec form as is; shell form through the image's
/// shell, with heredoc bodies after the command as the shell reads them
/// (`RUN <<EOF` alone runs the body as the script, as BuildKit does).
fn run_argv(state: &ImageState, command: &Command, heredocs: &[super::Heredoc]) -> Vec<String> {
    let Command::Shell(text) = command else {
        return state.argv(command);
    };
    if heredocs.is_empty() {
        return state.argv(command);
    }
    let opener = text.trim();
    let only_heredoc = heredocs.len() == 1
        && opener.starts_with("<<")
        && opener
            .trim_start_matches("<<")
            .trim_start_matches('-')
            .trim_matches(['"', '\''])
            == heredocs[0].name;
    let script = if only_heredoc {
        heredocs[0].content.clone()
    } else {
        let mut s = format!("{text}\n");
        for h in heredocs {
            s.push_str(&h.content);
            s.push_str(&h.name);
            s.push('\n');
        }
        s
    };
    state.argv(&Command::Shell(script))
}

/// A RUN step's environment: the config's env, the build args ENV does
/// not shadow, and a PATH if the image sets none.
fn run_env(state: &ImageState, build_args: &Vars) -> Vec<String> {
    let mut env = state.env();
    env.extend(build_args.to_env_strings());
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={}", super::resolve::DEFAULT_PATH));
    }
    env
}

fn base_name(base: &Base, build: &Build) -> String {
    match base {
        Base::Scratch => "scratch".into(),
        Base::Image { reference } => reference.clone(),
        Base::Stage { index } => build
            .stages
            .iter()
            .find(|s| s.index == *index)
            .and_then(|s| s.name.clone())
            .unwrap_or_else(|| format!("stage-{index}")),
    }
}

/// An instruction on one display line (heredoc bodies and continuations
/// shown as `\n`).
fn one_line(s: &str) -> String {
    s.trim_end().replace('\n', "\\n")
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..12.min(hex.len())]
}
