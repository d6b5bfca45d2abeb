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
//! - ENV (and the base image's env) always wins over an ARG of the same name;
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
    /// The stages it reads (base and `COPY --from`/`RUN --mount from=`),
    /// with the line that reads each.
    #[serde(skip)]
    deps: Vec<(usize, usize)>,
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

impl Vars {
    /// Whether no variable is set.
    pub fn is_empty(&self) -> bool {
        self.pairs().is_empty()
    }
}

impl Dockerfile {
    /// Resolves the build: `image_env` gives the env of a base image by
    /// reference (empty when it is not known yet, as in `hull debug
    /// dockerfile`). Only the stages the target needs are resolved, so a
    /// bad substitution in a stage that is not built is no error.
    pub fn resolve(
        &self,
        opts: &BuildOptions,
        image_env: &dyn Fn(&str) -> Vars,
    ) -> Result<Build, Error> {
        let mut resolver = Resolver {
            dockerfile: self,
            opts,
            image_env,
            meta: Vars::new(),
            meta_names: BTreeSet::new(),
            declared: BTreeSet::new(),
            resolved: vec![None; self.stages.len()],
            visiting: vec![false; self.stages.len()],
            order: Vec::new(),
        };
        resolver.meta_args()?;
        let target = match &opts.target {
            None => self.stages.len() - 1,
            Some(name) => self.stage_named(name).ok_or_else(|| {
                let line = self.stages.last().map_or(1, |s| s.line);
                Error::at(line, ErrorKind::UnknownTarget(name.clone()))
            })?,
        };
        resolver.visit(target, None)?;
        let order = resolver.order.clone();
        let declared = resolver.declared.clone();
        let mut unused: Vec<String> = opts
            .build_args
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| !declared.contains(k) && !PROXY_ARGS.contains(&k.as_str()))
            .collect();
        unused.sort();
        unused.dedup();
        let stages = order
            .iter()
            .filter_map(|&i| resolver.resolved[i].clone())
            .collect();
        Ok(Build {
            target,
            order,
            stages,
            meta_args: resolver.meta,
            unused_build_args: unused,
        })
    }
}

struct Resolver<'a> {
    dockerfile: &'a Dockerfile,
    opts: &'a BuildOptions,
    image_env: &'a dyn Fn(&str) -> Vars,
    /// Values of the meta args (and the platform args).
    meta: Vars,
    /// Names a stage may take from `meta` with a bare `ARG NAME`.
    meta_names: BTreeSet<String>,
    /// Every ARG name declared in the meta scope or a resolved stage.
    declared: BTreeSet<String>,
    resolved: Vec<Option<ResolvedStage>>,
    /// Stages on the current dependency path (cycle detection).
    visiting: Vec<bool>,
    order: Vec<usize>,
}

impl Resolver<'_> {
    fn escape(&self) -> char {
        self.dockerfile.directives.escape
    }

    /// The platform args, then the ARGs before the first FROM.
    fn meta_args(&mut self) -> Result<(), Error> {
        let p = &self.opts.platform;
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
                let value = self.opts.build_arg(&name).unwrap_or(value).to_string();
                self.meta.set(&name, &value);
                self.meta_names.insert(name);
            }
        }
        for step in &self.dockerfile.meta_args {
            let Instruction::Arg { args } = &step.instruction else {
                continue;
            };
            for decl in args {
                self.declared.insert(decl.name.clone());
                self.meta_names.insert(decl.name.clone());
                let value = match (self.opts.build_arg(&decl.name), &decl.default) {
                    (Some(v), _) => Some(v.to_string()),
                    (None, Some(default)) => {
                        Some(expand(default, &self.meta, self.escape(), step.line)?)
                    }
                    (None, None) => None,
                };
                if let Some(v) = value {
                    self.meta.set(&decl.name, &v);
                }
            }
        }
        Ok(())
    }

    /// Depth-first over the stages `index` needs, appending each to the
    /// order after its dependencies. `via` is the line that reads it.
    fn visit(&mut self, index: usize, via: Option<usize>) -> Result<(), Error> {
        if self.visiting[index] {
            let dockerfile = self.dockerfile;
            let stage = &dockerfile.stages[index];
            let name = stage.name.clone().unwrap_or_else(|| index.to_string());
            return Err(Error::at(via.unwrap_or(stage.line), ErrorKind::Cycle(name)));
        }
        if self.order.contains(&index) {
            return Ok(());
        }
        self.visiting[index] = true;
        let deps = self.stage(index)?.deps.clone();
        for (dep, line) in deps {
            self.visit(dep, Some(line))?;
        }
        self.visiting[index] = false;
        self.order.push(index);
        Ok(())
    }

    /// Resolves stage `index` once (its base stage first, for its env).
    fn stage(&mut self, index: usize) -> Result<&ResolvedStage, Error> {
        let resolved = match self.resolved[index].take() {
            Some(done) => done,
            None => {
                let dockerfile = self.dockerfile;
                let stage = &dockerfile.stages[index];
                let base = self.base(index, stage)?;
                let env = match &base {
                    Base::Scratch => Vars::new(),
                    Base::Image { reference } => (self.image_env)(reference),
                    Base::Stage { index: parent } => self.stage(*parent)?.env.clone(),
                };
                self.stage_steps(index, stage, base, env)?
            }
        };
        Ok(self.resolved[index].insert(resolved))
    }

    /// FROM: the base name and platform expanded with the meta args only.
    fn base(&self, index: usize, stage: &Stage) -> Result<Base, Error> {
        let name = expand(&stage.base, &self.meta, self.escape(), stage.line)?;
        if name.is_empty() {
            return Err(Error::at(stage.line, ErrorKind::BlankBase(stage.base.clone())));
        }
        if name.eq_ignore_ascii_case("scratch") {
            return Ok(Base::Scratch);
        }
        // Only an earlier stage can be a base; a later stage's name is
        // an image name here.
        if let Some(parent) = self.dockerfile.stage_named(&name).filter(|&p| p < index) {
            return Ok(Base::Stage { index: parent });
        }
        image_base(&name, stage.line)
    }

    fn stage_steps(
        &mut self,
        index: usize,
        stage: &Stage,
        base: Base,
        mut env: Vars,
    ) -> Result<ResolvedStage, Error> {
        let escape = self.escape();
        if !env.contains("PATH") {
            env.set("PATH", DEFAULT_PATH);
        }
        let platform = match &stage.platform {
            Some(p) => Some(expand(p, &self.meta, escape, stage.line)?),
            None => None,
        };
        let mut deps = Vec::new();
        if let Base::Stage { index: parent } = base {
            deps.push((parent, stage.line));
        }
        let mut args = Vars::new();
        let mut steps = Vec::new();
        for step in &stage.steps {
            let line = step.line;
            let layers: [&Vars; 2] = [&env, &args];
            let scope = &Layers(&layers);
            let mut copy_from = None;
            let mut build_args = Vars::new();
            let instruction = match &step.instruction {
                Instruction::Arg { args: decls } => {
                    // Each name sees the ones declared before it.
                    for decl in decls {
                        let layers: [&Vars; 2] = [&env, &args];
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
                    let copy = expand_copy(copy, scope, escape, line)?;
                    if let Some(from) = &copy.from {
                        let source = self.copy_source(from, line)?;
                        if let Base::Stage { index: dep } = source {
                            deps.push((dep, line));
                        }
                        copy_from = Some(source);
                    }
                    Instruction::Copy(copy)
                }
                Instruction::Add(add) => Instruction::Add(expand_add(add, scope, escape, line)?),
                Instruction::Run { mounts, .. } => {
                    for (name, value) in args.pairs() {
                        if !env.contains(name) {
                            build_args.set(name, value);
                        }
                    }
                    for proxy in PROXY_ARGS {
                        if let (Some(v), false) = (self.opts.build_arg(proxy), env.contains(proxy))
                        {
                            build_args.set(proxy, v);
                        }
                    }
                    for mount in mounts {
                        if let Some(dep) = self.mount_source(mount, line)? {
                            deps.push((dep, line));
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
                copy_from,
            });
        }
        Ok(ResolvedStage {
            index,
            name: stage.name.clone(),
            line: stage.line,
            base,
            platform,
            steps,
            env,
            deps,
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
            return expand(default, scope, self.escape(), line).map(Some);
        }
        if self.meta_names.contains(&decl.name) {
            return Ok(self.meta.get(&decl.name).map(str::to_string));
        }
        Ok(None)
    }

    /// `COPY --from=`: a stage name, a stage index, or an image.
    fn copy_source(&self, from: &str, line: usize) -> Result<Base, Error> {
        if let Some(stage) = self.dockerfile.stage_named(from) {
            return Ok(Base::Stage { index: stage });
        }
        if let Ok(n) = from.parse::<usize>() {
            let count = self.dockerfile.stages.len();
            if n >= count {
                return Err(Error::at(line, ErrorKind::BadStageIndex { index: n, count }));
            }
            return Ok(Base::Stage { index: n });
        }
        image_base(from, line)
    }

    /// `RUN --mount=...,from=STAGE,...`: the stage it reads, if a stage.
    fn mount_source(&self, mount: &str, line: usize) -> Result<Option<usize>, Error> {
        let from = mount
            .split(',')
            .find_map(|kv| kv.strip_prefix("from="))
            .map(str::trim);
        match from {
            None | Some("") => Ok(None),
            Some(from) => match self.copy_source(from, line)? {
                Base::Stage { index } => Ok(Some(index)),
                _ => Ok(None),
            },
        }
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
    words.iter().map(|w| expand(w, scope, escape, line)).collect()
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
