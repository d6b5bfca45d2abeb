//! From a parsed [`Dockerfile`] and the build's options to what the
//! engine runs: `--build-arg` and ARG/ENV scoping applied, variables
//! substituted in the instructions Docker substitutes (ADD, COPY, ENV,
//! EXPOSE, FROM, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR and ARG
//! defaults; never RUN, CMD, ENTRYPOINT, SHELL, HEALTHCHECK or ONBUILD,
//! whose shell expands at run time), FROM and `COPY --from` resolved to
//! stages or images, and the stages the target needs in build order.
//!
//! Scoping, as Docker's reference describes it:
//! - ARGs before the first FROM ("meta args") are usable in FROM lines
//!   only; a stage sees one after `ARG NAME` (no default) inside it;
//! - inside a stage an ARG is usable from its declaration on; its value is
//!   the `--build-arg` if given, else its default (expanded), else the
//!   meta arg's value;
//! - "ENV always overrides ARG" as the reference's example shows it (ENV
//!   after ARG); in general whichever of the two set a name last wins,
//!   as in BuildKit, where both write the build environment (an ARG after
//!   an ENV of the same name, or after the base image's env, wins for the
//!   rest of the stage; only ENV reaches the image config);
//! - each stage starts from its base's env, never another stage's ARGs;
//! - the proxy args (HTTP_PROXY...) given as `--build-arg` reach RUN steps
//!   without an ARG; the platform args (TARGETARCH...) are meta args.

use std::collections::BTreeSet;

use serde::Serialize;

use super::dockerfile::{Add, ArgDecl, Copy, Dockerfile, Instruction, KeyValue, Stage};
use super::substitute::{self, Layers, Lookup, Vars};
use super::{Error, ErrorKind};

/// Build args Docker defines without an ARG instruction, passed to RUN
/// steps only, and left out of the image's history.
pub const PROXY_ARGS: [&str; 10] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// The PATH Docker gives a stage whose base image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a build was asked for.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// `--build-arg NAME=VALUE`, in order (a later one wins).
    pub build_args: Vec<(String, String)>,
    /// `--target STAGE`: a stage name; None builds the last stage.
    pub target: Option<String>,
    /// The platform built for and on (`linux/amd64`): the TARGET* and
    /// BUILD* args.
    pub platform: images::platform::Platform,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            build_args: Vec::new(),
            target: None,
            platform: images::platform::Platform::host(),
        }
    }
}

impl BuildOptions {
    fn build_arg(&self, name: &str) -> Option<&str> {
        self.build_args
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a stage starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Base {
    /// `FROM scratch`: an empty filesystem.
    Scratch,
    /// An image to pull or find in the store.
    Image { reference: String },
    /// The result of another stage of this Dockerfile.
    Stage { index: usize },
}

/// An instruction with its variables substituted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedStep {
    /// The line it starts on.
    pub line: usize,
    /// The instruction, substituted where Docker substitutes.
    #[serde(flatten)]
    pub instruction: Instruction,
    /// RUN only: the build args in scope that ENV does not shadow; the
    /// step's environment besides the config's env (not kept in the image).
    #[serde(skip_serializing_if = "Vars::is_empty")]
    pub build_args: Vars,
    /// COPY only: what `--from` names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_from: Option<Base>,
}

/// A stage ready to build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedStage {
    /// Its index in the Dockerfile.
    pub index: usize,
    /// `AS name`, lowercased.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The line of its FROM.
    pub line: usize,
    pub base: Base,
    /// `FROM --platform=`, substituted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    pub steps: Vec<ResolvedStep>,
    /// The config env at the end of the stage: the base's env, then ENV.
    pub env: Vars,
}

/// What the engine builds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Build {
    /// The stage whose result is the image.
    pub target: usize,
    /// The stages the target needs, each after the stages it reads; the
    /// target last. Stages not listed are not built.
    pub order: Vec<usize>,
    /// The needed stages, in `order`.
    pub stages: Vec<ResolvedStage>,
    /// The meta args' values (those set).
    pub meta_args: Vars,
    /// `--build-arg`s no ARG of a built stage declared (Docker warns).
    pub unused_build_args: Vec<String>,
}

impl Build {
    /// The resolved stage with Dockerfile index `index`, if it is built.
    #[allow(dead_code)] // for the engine (issue 12)
    pub fn stage(&self, index: usize) -> Option<&ResolvedStage> {
        self.stages.iter().find(|s| s.index == index)
    }
}

impl Dockerfile {
    /// Resolves the build: `image_env` gives the env of a base image by
    /// reference (empty when it is not known yet, as in `hull debug
    /// dockerfile`).
    ///
    /// As in BuildKit, which stages read which is decided first, for all
    /// stages, from the FROM lines and the `--from` values (variables in
    /// them expanded with the meta args only): an unknown stage index or a
    /// cycle is an error even among stages the target does not need. Then
    /// only the stages the target needs are substituted, so a bad variable
    /// reference in a stage that is not built is no error.
    pub fn resolve(
        &self,
        opts: &BuildOptions,
        image_env: &dyn Fn(&str) -> Vars,
    ) -> Result<Build, Error> {
        let meta = MetaArgs::new(self, opts)?;
        let links = self
            .stages
            .iter()
            .enumerate()
            .map(|(i, stage)| StageLinks::new(self, i, stage, &meta.values))
            .collect::<Result<Vec<_>, _>>()?;
        check_cycles(self, &links)?;
        let target = match &opts.target {
            None => self.stages.len() - 1,
            Some(name) => self.stage_named(name).ok_or_else(|| {
                let line = self.stages.last().map_or(1, |s| s.line);
                Error::at(line, ErrorKind::UnknownTarget(name.clone()))
            })?,
        };
        let order = build_order(&links, target);
        let mut declared = meta.names.clone();
        let mut resolved: Vec<ResolvedStage> = Vec::new();
        for &index in &order {
            let links = &links[index];
            let env = match &links.base {
                Base::Scratch => Vars::new(),
                Base::Image { reference } => image_env(reference),
                // A base stage comes earlier in the order.
                Base::Stage { index: parent } => resolved
                    .iter()
                    .find(|s| s.index == *parent)
                    .map(|s| s.env.clone())
                    .unwrap_or_default(),
            };
            let stage = StageResolver {
                dockerfile: self,
                opts,
                meta: &meta,
                declared: &mut declared,
            }
            .resolve(index, links, env)?;
            resolved.push(stage);
        }
        let mut unused: Vec<String> = opts
            .build_args
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| !declared.contains(k) && !PROXY_ARGS.contains(&k.as_str()))
            .collect();
        unused.sort();
        unused.dedup();
        Ok(Build {
            target,
            order,
            stages: resolved,
            meta_args: meta.values,
            unused_build_args: unused,
        })
    }
}

/// The global scope: the platform args and the ARGs before the first FROM.
struct MetaArgs {
    /// Their values (those set).
    values: Vars,
    /// Names a stage may take from `values` with a bare `ARG NAME`.
    names: BTreeSet<String>,
}

impl MetaArgs {
    fn new(dockerfile: &Dockerfile, opts: &BuildOptions) -> Result<MetaArgs, Error> {
        let mut meta = MetaArgs {
            values: Vars::new(),
            names: BTreeSet::new(),
        };
        let p = &opts.platform;
        let platform = match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.arch),
            None => format!("{}/{}", p.os, p.arch),
        };
        let variant = p.variant.clone().unwrap_or_default();
        for side in ["TARGET", "BUILD"] {
            for (suffix, value) in [
                ("PLATFORM", &platform),
                ("OS", &p.os),
                ("ARCH", &p.arch),
                ("VARIANT", &variant),
            ] {
                let name = format!("{side}{suffix}");
                let value = opts.build_arg(&name).unwrap_or(value).to_string();
                meta.values.set(&name, &value);
                meta.names.insert(name);
            }
        }
        let escape = dockerfile.directives.escape;
        for step in &dockerfile.meta_args {
            let Instruction::Arg { args } = &step.instruction else {
                continue;
            };
            for decl in args {
                meta.names.insert(decl.name.clone());
                let value = match (opts.build_arg(&decl.name), &decl.default) {
                    (Some(v), _) => Some(v.to_string()),
                    (None, Some(default)) => {
                        Some(expand(default, &meta.values, escape, step.line)?)
                    }
                    (None, None) => None,
                };
                if let Some(v) = value {
                    meta.values.set(&decl.name, &v);
                }
            }
        }
        Ok(meta)
    }
}

/// What a stage reads, known before any stage is substituted.
struct StageLinks {
    base: Base,
    /// Per step: what its `COPY --from` names.
    copy_from: Vec<Option<Base>>,
    /// Stages read by `COPY --from` and `RUN --mount from=`, with the line.
    reads: Vec<(usize, usize)>,
}

impl StageLinks {
    fn new(
        dockerfile: &Dockerfile,
        index: usize,
        stage: &Stage,
        meta: &Vars,
    ) -> Result<StageLinks, Error> {
        let escape = dockerfile.directives.escape;
        let base = {
            let name = expand(&stage.base, meta, escape, stage.line)?;
            if name.is_empty() {
                return Err(Error::at(
                    stage.line,
                    ErrorKind::BlankBase(stage.base.clone()),
                ));
            }
            // Only an earlier stage can be a base; a later stage's name is
            // an image name here.
            match dockerfile.stage_named(&name).filter(|&p| p < index) {
                _ if name.eq_ignore_ascii_case("scratch") => Base::Scratch,
                Some(parent) => Base::Stage { index: parent },
                None => image_base(&name, stage.line)?,
            }
        };
        let mut copy_from = Vec::new();
        let mut reads = Vec::new();
        for step in &stage.steps {
            let mut from = None;
            match &step.instruction {
                Instruction::Copy(Copy { from: Some(f), .. }) => {
                    let f = expand(f, meta, escape, step.line)?;
                    let source = stage_or_image(dockerfile, &f, step.line)?;
                    if let Base::Stage { index } = source {
                        reads.push((index, step.line));
                    }
                    from = Some(source);
                }
                Instruction::Run { mounts, .. } => {
                    for mount in mounts {
                        let Some(f) = mount_from(mount) else { continue };
                        let f = expand(f, meta, escape, step.line)?;
                        if let Base::Stage { index } = stage_or_image(dockerfile, &f, step.line)? {
                            reads.push((index, step.line));
                        }
                    }
                }
                _ => {}
            }
            copy_from.push(from);
        }
        Ok(StageLinks {
            base,
            copy_from,
            reads,
        })
    }
}

/// `--from=`: a stage name, a stage index, or an image.
fn stage_or_image(dockerfile: &Dockerfile, from: &str, line: usize) -> Result<Base, Error> {
    if let Some(stage) = dockerfile.stage_named(from) {
        return Ok(Base::Stage { index: stage });
    }
    if let Ok(n) = from.parse::<usize>() {
        let count = dockerfile.stages.len();
        if n >= count {
            return Err(Error::at(
                line,
                ErrorKind::BadStageIndex { index: n, count },
            ));
        }
        return Ok(Base::Stage { index: n });
    }
    image_base(from, line)
}

/// The `from=` of a `RUN --mount` spec (`type=bind,from=build,target=/x`).
fn mount_from(mount: &str) -> Option<&str> {
    mount
        .split(',')
        .find_map(|kv| kv.trim().strip_prefix("from="))
        .filter(|f| !f.is_empty())
}

/// The name Docker gives a stage in messages: its own, or `stage-N`.
fn stage_label(dockerfile: &Dockerfile, index: usize) -> String {
    dockerfile.stages[index]
        .name
        .clone()
        .unwrap_or_else(|| format!("stage-{index}"))
}

/// Fails on a cycle of `COPY --from`/`RUN --mount` reads among all stages
/// (FROM cannot make one: it only names earlier stages), at the line that
/// closes it.
fn check_cycles(dockerfile: &Dockerfile, links: &[StageLinks]) -> Result<(), Error> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit(
        dockerfile: &Dockerfile,
        links: &[StageLinks],
        marks: &mut [Mark],
        index: usize,
    ) -> Result<(), Error> {
        marks[index] = Mark::OnPath;
        for &(dep, line) in &links[index].reads {
            match marks[dep] {
                Mark::OnPath => {
                    return Err(Error::at(
                        line,
                        ErrorKind::Cycle(stage_label(dockerfile, dep)),
                    ))
                }
                Mark::New => visit(dockerfile, links, marks, dep)?,
                Mark::Done => {}
            }
        }
        marks[index] = Mark::Done;
        Ok(())
    }
    let mut marks = vec![Mark::New; links.len()];
    for index in 0..links.len() {
        if marks[index] == Mark::New {
            visit(dockerfile, links, &mut marks, index)?;
        }
    }
    Ok(())
}

/// The stages `target` needs, each after the ones it reads (no cycles).
fn build_order(links: &[StageLinks], target: usize) -> Vec<usize> {
    fn visit(links: &[StageLinks], index: usize, order: &mut Vec<usize>) {
        if order.contains(&index) {
            return;
        }
        if let Base::Stage { index: parent } = links[index].base {
            visit(links, parent, order);
        }
        for &(dep, _) in &links[index].reads {
            visit(links, dep, order);
        }
        order.push(index);
    }
    let mut order = Vec::new();
    visit(links, target, &mut order);
    order
}

/// Substitutes one stage's instructions in its scope.
struct StageResolver<'a> {
    dockerfile: &'a Dockerfile,
    opts: &'a BuildOptions,
    meta: &'a MetaArgs,
    /// ARG names declared so far (a build arg they name is consumed).
    declared: &'a mut BTreeSet<String>,
}

impl StageResolver<'_> {
    // Over 80 lines: one pass over the stage's steps carrying the ARG and
    // ENV scopes that every arm reads and updates in order (the order is
    // the semantics: whichever of ARG and ENV set a name last wins);
    // splitting the match would pass both scopes to every piece.
    fn resolve(
        &mut self,
        index: usize,
        links: &StageLinks,
        mut env: Vars,
    ) -> Result<ResolvedStage, Error> {
        let stage = &self.dockerfile.stages[index];
        let escape = self.dockerfile.directives.escape;
        if !env.contains("PATH") {
            env.set("PATH", DEFAULT_PATH);
        }
        let platform = match &stage.platform {
            Some(p) => Some(expand(p, &self.meta.values, escape, stage.line)?),
            None => None,
        };
        // ARG values that no later ENV replaced. Whichever of ARG and ENV
        // set a name last wins, as in BuildKit, where both write the same
        // build environment (only ENV reaches the image config).
        let mut args = Vars::new();
        let mut steps = Vec::new();
        for (step, copy_from) in stage.steps.iter().zip(&links.copy_from) {
            let line = step.line;
            let layers: [&Vars; 2] = [&args, &env];
            let scope = &Layers(&layers);
            let mut build_args = Vars::new();
            let instruction = match &step.instruction {
                Instruction::Arg { args: decls } => {
                    // Each name sees the ones declared before it.
                    for decl in decls {
                        let layers: [&Vars; 2] = [&args, &env];
                        let value = self.stage_arg(decl, &Layers(&layers), line)?;
                        self.declared.insert(decl.name.clone());
                        if let Some(v) = value {
                            args.set(&decl.name, &v);
                        }
                    }
                    step.instruction.clone()
                }
                Instruction::Env { pairs, legacy } => {
                    // Every pair sees the env from before the instruction.
                    let pairs = expand_pairs(pairs, scope, escape, line)?;
                    for p in &pairs {
                        env.set(&p.key, &p.value);
                        args.remove(&p.key);
                    }
                    Instruction::Env {
                        pairs,
                        legacy: *legacy,
                    }
                }
                Instruction::Label { pairs, legacy } => Instruction::Label {
                    pairs: expand_pairs(pairs, scope, escape, line)?,
                    legacy: *legacy,
                },
                Instruction::Workdir { path } => Instruction::Workdir {
                    path: expand(path, scope, escape, line)?,
                },
                Instruction::User { user } => Instruction::User {
                    user: expand(user, scope, escape, line)?,
                },
                Instruction::Stopsignal { signal } => Instruction::Stopsignal {
                    signal: expand(signal, scope, escape, line)?,
                },
                Instruction::Expose { ports } => {
                    let mut expanded = Vec::new();
                    for port in ports {
                        let words = substitute::expand_words(port, scope, escape)
                            .map_err(|source| substitution(port, source, line))?;
                        expanded.extend(words);
                    }
                    for port in &expanded {
                        check_port(port).map_err(|k| Error::at(line, k))?;
                    }
                    Instruction::Expose { ports: expanded }
                }
                Instruction::Volume { paths } => {
                    let paths = expand_all(paths, scope, escape, line)?;
                    if paths.iter().any(|p| p.trim().is_empty()) {
                        return Err(Error::at(line, ErrorKind::EmptyVolume));
                    }
                    Instruction::Volume { paths }
                }
                Instruction::Copy(copy) => {
                    let written_from = copy.from.clone();
                    let mut copy = expand_copy(copy, scope, escape, line)?;
                    // `--from` as the links read it (meta args only).
                    copy.from = expand_opt(&written_from, &self.meta.values, escape, line)?;
                    Instruction::Copy(copy)
                }
                Instruction::Add(add) => Instruction::Add(expand_add(add, scope, escape, line)?),
                Instruction::Run { .. } => {
                    build_args = args.clone();
                    for proxy in PROXY_ARGS {
                        if let Some(v) = self.opts.build_arg(proxy) {
                            if !env.contains(proxy) && !args.contains(proxy) {
                                build_args.set(proxy, v);
                            }
                        }
                    }
                    step.instruction.clone()
                }
                Instruction::Cmd { .. }
                | Instruction::Entrypoint { .. }
                | Instruction::Shell { .. }
                | Instruction::Healthcheck { .. }
                | Instruction::Onbuild { .. }
                | Instruction::Maintainer { .. } => step.instruction.clone(),
            };
            steps.push(ResolvedStep {
                line,
                instruction,
                build_args,
                copy_from: copy_from.clone(),
            });
        }
        Ok(ResolvedStage {
            index,
            name: stage.name.clone(),
            line: stage.line,
            base: links.base.clone(),
            platform,
            steps,
            env,
        })
    }

    /// An ARG inside a stage: the build arg, else the default expanded in
    /// the stage's scope, else the meta arg of that name.
    fn stage_arg(
        &self,
        decl: &ArgDecl,
        scope: &dyn Lookup,
        line: usize,
    ) -> Result<Option<String>, Error> {
        if let Some(v) = self.opts.build_arg(&decl.name) {
            return Ok(Some(v.to_string()));
        }
        if let Some(default) = &decl.default {
            return expand(default, scope, self.dockerfile.directives.escape, line).map(Some);
        }
        if self.meta.names.contains(&decl.name) {
            return Ok(self.meta.values.get(&decl.name).map(str::to_string));
        }
        Ok(None)
    }
}

fn substitution(word: &str, source: substitute::SubstError, line: usize) -> Error {
    Error::at(
        line,
        ErrorKind::Substitution {
            word: word.to_string(),
            source,
        },
    )
}

fn expand(word: &str, scope: &dyn Lookup, escape: char, line: usize) -> Result<String, Error> {
    substitute::expand_word(word, scope, escape).map_err(|source| substitution(word, source, line))
}

fn expand_all(
    words: &[String],
    scope: &dyn Lookup,
    escape: char,
    line: usize,
) -> Result<Vec<String>, Error> {
    words
        .iter()
        .map(|w| expand(w, scope, escape, line))
        .collect()
}

fn expand_opt(
    word: &Option<String>,
    scope: &dyn Lookup,
    escape: char,
    line: usize,
) -> Result<Option<String>, Error> {
    word.as_ref()
        .map(|w| expand(w, scope, escape, line))
        .transpose()
}

fn expand_pairs(
    pairs: &[KeyValue],
    scope: &dyn Lookup,
    escape: char,
    line: usize,
) -> Result<Vec<KeyValue>, Error> {
    pairs
        .iter()
        .map(|p| {
            Ok(KeyValue {
                key: expand(&p.key, scope, escape, line)?,
                value: expand(&p.value, scope, escape, line)?,
            })
        })
        .collect()
}

fn expand_heredocs(
    heredocs: &[super::Heredoc],
    scope: &dyn Lookup,
    line: usize,
) -> Result<Vec<super::Heredoc>, Error> {
    heredocs
        .iter()
        .map(|h| {
            let mut h = h.clone();
            if h.expand {
                h.content = substitute::expand_heredoc(&h.content, scope)
                    .map_err(|source| substitution(&h.name, source, line))?;
            }
            Ok(h)
        })
        .collect()
}

fn expand_copy(copy: &Copy, scope: &dyn Lookup, escape: char, line: usize) -> Result<Copy, Error> {
    Ok(Copy {
        sources: expand_all(&copy.sources, scope, escape, line)?,
        heredocs: expand_heredocs(&copy.heredocs, scope, line)?,
        dest: expand(&copy.dest, scope, escape, line)?,
        from: expand_opt(&copy.from, scope, escape, line)?,
        chown: expand_opt(&copy.chown, scope, escape, line)?,
        chmod: expand_opt(&copy.chmod, scope, escape, line)?,
        link: copy.link,
        parents: copy.parents,
        exclude: expand_all(&copy.exclude, scope, escape, line)?,
    })
}

fn expand_add(add: &Add, scope: &dyn Lookup, escape: char, line: usize) -> Result<Add, Error> {
    Ok(Add {
        sources: expand_all(&add.sources, scope, escape, line)?,
        heredocs: expand_heredocs(&add.heredocs, scope, line)?,
        dest: expand(&add.dest, scope, escape, line)?,
        chown: expand_opt(&add.chown, scope, escape, line)?,
        chmod: expand_opt(&add.chmod, scope, escape, line)?,
        link: add.link,
        checksum: expand_opt(&add.checksum, scope, escape, line)?,
        keep_git_dir: add.keep_git_dir,
        exclude: expand_all(&add.exclude, scope, escape, line)?,
    })
}

/// An image reference, checked as Docker checks a FROM or `--from` name.
fn image_base(name: &str, line: usize) -> Result<Base, Error> {
    images::Reference::parse(name)
        .map_err(|e| Error::at(line, ErrorKind::BadReference(e.to_string())))?;
    Ok(Base::Image {
        reference: name.to_string(),
    })
}

/// `PORT`, `PORT/PROTO` or `FIRST-LAST[/PROTO]`, as EXPOSE takes them.
fn check_port(spec: &str) -> Result<(), ErrorKind> {
    let bad = || ErrorKind::BadPort(spec.to_string());
    let (range, proto) = match spec.split_once('/') {
        Some((r, p)) => (r, p),
        None => (spec, "tcp"),
    };
    if !matches!(proto.to_ascii_lowercase().as_str(), "tcp" | "udp" | "sctp") {
        return Err(bad());
    }
    let port = |p: &str| p.parse::<u16>().map_err(|_| bad());
    match range.split_once('-') {
        Some((first, last)) if port(first)? <= port(last)? => Ok(()),
        Some(_) => Err(bad()),
        None => port(range).map(|_| ()),
    }
}

#[cfg(test)]
#[path = "resolve_tests.rs"]
mod tests;
