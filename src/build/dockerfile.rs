//! A Dockerfile as written: its instructions parsed and checked the way
//! Docker's parser and instruction parser check them, nothing substituted
//! yet (see [`super::resolve`]). Values keep their quotes and escapes,
//! because variable expansion removes them later.

use std::fmt;

use serde::Serialize;

use super::lexer::{self, Directives, Heredoc, LogicalLine};
use super::{Error, ErrorKind};

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dockerfile {
    /// The parser directives (escape character, syntax).
    pub directives: Directives,
    /// The ARG instructions before the first FROM: usable in FROM lines
    /// only, unless a stage declares them again.
    pub meta_args: Vec<Step>,
    /// The stages, in order; index 0 is the first FROM.
    pub stages: Vec<Stage>,
}

/// One stage: a FROM and the instructions after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stage {
    /// The line of its FROM.
    pub line: usize,
    /// `AS name`, lowercased (Docker's stage names are case-insensitive).
    pub name: Option<String>,
    /// The base as written: an image, `scratch`, a stage name, with
    /// variables still unexpanded.
    pub base: String,
    /// `--platform=`, unexpanded.
    pub platform: Option<String>,
    /// The instructions after FROM.
    pub steps: Vec<Step>,
}

/// An instruction and the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// The line (1-based) the instruction starts on.
    pub line: usize,
    /// The instruction.
    #[serde(flatten)]
    pub instruction: Instruction,
}

/// A command in exec form (`["prog", "arg"]`) or shell form (text run
/// by the stage's SHELL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    Exec(Vec<String>),
    Shell(String),
}

/// `KEY=value` of ENV and LABEL; the value as written (quotes kept)
/// until substitution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// One name of an ARG instruction and its default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArgDecl {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

/// COPY's arguments and flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Copy {
    /// Source paths (globs allowed), not counting heredocs.
    pub sources: Vec<String>,
    /// Inline files: `COPY <<EOF /dest`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub heredocs: Vec<Heredoc>,
    pub dest: String,
    /// `--from=`: a stage name, a stage index or an image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chown: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chmod: Option<String>,
    /// `--link`: accepted; the layer is independent of the one below.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub link: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub parents: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

/// ADD's arguments and flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Add {
    /// Source paths or URLs, not counting heredocs.
    pub sources: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub heredocs: Vec<Heredoc>,
    pub dest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chown: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chmod: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub link: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub keep_git_dir: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

/// HEALTHCHECK's two forms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// `HEALTHCHECK NONE`: disable the base image's check.
    None,
    /// `HEALTHCHECK [flags] CMD ...`; durations in nanoseconds as in the
    /// image config, None for Docker's default.
    Cmd {
        command: Command,
        #[serde(skip_serializing_if = "Option::is_none")]
        interval_ns: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        timeout_ns: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        start_period_ns: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        start_interval_ns: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retries: Option<u32>,
    },
}

/// An instruction after FROM (and ARG before it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Instruction {
    Run {
        command: Command,
        /// Bodies of `RUN <<EOF` (the command text keeps the markers).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        heredocs: Vec<Heredoc>,
        /// `--mount=` specs, recorded (the engine decides what it supports).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        mounts: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        network: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        security: Option<String>,
    },
    Cmd {
        command: Command,
    },
    Entrypoint {
        command: Command,
    },
    Env {
        pairs: Vec<KeyValue>,
        /// Written `ENV KEY value` (one pair, the rest of the line).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        legacy: bool,
    },
    Label {
        pairs: Vec<KeyValue>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        legacy: bool,
    },
    Arg {
        args: Vec<ArgDecl>,
    },
    Workdir {
        path: String,
    },
    User {
        user: String,
    },
    Stopsignal {
        signal: String,
    },
    Copy(Copy),
    Add(Add),
    Expose {
        ports: Vec<String>,
    },
    Volume {
        paths: Vec<String>,
    },
    Shell {
        shell: Vec<String>,
    },
    Healthcheck {
        check: Health,
    },
    /// A trigger for images built FROM this one, as written (BuildKit
    /// appends the heredoc bodies to the expression for the config;
    /// here they are kept apart).
    Onbuild {
        expression: String,
        /// Bodies of the trigger's heredocs (`ONBUILD RUN <<EOF`).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        heredocs: Vec<Heredoc>,
    },
    /// Deprecated; Docker sets the image config's `Author` from it.
    Maintainer {
        name: String,
    },
}

impl Dockerfile {
    /// Parses Dockerfile text; the error names the line.
    pub fn parse(source: &str) -> Result<Dockerfile, Error> {
        let (directives, lines) =
            lexer::logical_lines(source).map_err(|(line, kind)| Error::at(line, kind))?;
        let escape = directives.escape;
        let mut dockerfile = Dockerfile {
            directives,
            meta_args: Vec::new(),
            stages: Vec::new(),
        };
        if lines.is_empty() {
            return Err(Error::at(1, ErrorKind::Empty));
        }
        for line in &lines {
            let parsed = parse_line(line, escape).map_err(|kind| Error::at(line.line, kind))?;
            match (parsed, dockerfile.stages.last_mut()) {
                (Parsed::From(stage), _) => {
                    if let Some(name) = &stage.name {
                        if dockerfile
                            .stages
                            .iter()
                            .any(|s| s.name.as_ref() == Some(name))
                        {
                            return Err(Error::at(
                                line.line,
                                ErrorKind::DuplicateStageName(name.clone()),
                            ));
                        }
                    }
                    dockerfile.stages.push(stage);
                }
                (Parsed::Step(step), Some(stage)) => stage.steps.push(step),
                (
                    Parsed::Step(
                        step @ Step {
                            instruction: Instruction::Arg { .. },
                            ..
                        },
                    ),
                    None,
                ) => dockerfile.meta_args.push(step),
                (Parsed::Step(_), None) => return Err(Error::at(line.line, ErrorKind::NoStage)),
            }
        }
        if dockerfile.stages.is_empty() {
            let last = lines.last().map_or(1, |l| l.line);
            return Err(Error::at(last, ErrorKind::NoStage));
        }
        Ok(dockerfile)
    }

    /// The index of the stage named `name` (case-insensitive).
    pub fn stage_named(&self, name: &str) -> Option<usize> {
        let name = name.to_ascii_lowercase();
        self.stages
            .iter()
            .position(|s| s.name.as_deref() == Some(name.as_str()))
    }
}

enum Parsed {
    From(Stage),
    Step(Step),
}

/// One logical line as a FROM or another instruction.
// Over 80 lines: one match from keyword to instruction, each arm a flag
// check and a call to the parser of that instruction's arguments. One
// table of every keyword reads better than the same dispatch split in two.
fn parse_line(line: &LogicalLine, escape: char) -> Result<Parsed, ErrorKind> {
    let text = line.text.trim();
    let (keyword, rest) = match text.find(char::is_whitespace) {
        Some(at) => (&text[..at], text[at..].trim_start()),
        None => (text, ""),
    };
    let (flags, args) = lexer::split_flags(rest);
    let args = args.trim();
    let lower = keyword.to_ascii_lowercase();
    if lower == "from" {
        return parse_from(&flags, args, line.line).map(Parsed::From);
    }
    let instruction = match lower.as_str() {
        "run" => parse_run(&flags, args, &line.heredocs)?,
        "cmd" => {
            no_flags(&flags)?;
            Instruction::Cmd {
                command: maybe_json(args)?.unwrap_or(Command::Shell(String::new())),
            }
        }
        "entrypoint" => {
            no_flags(&flags)?;
            Instruction::Entrypoint {
                command: maybe_json(args)?.unwrap_or(Command::Shell(String::new())),
            }
        }
        "env" => {
            no_flags(&flags)?;
            let (pairs, legacy) = name_values(args, "ENV", escape)?;
            Instruction::Env { pairs, legacy }
        }
        "label" => {
            no_flags(&flags)?;
            let (pairs, legacy) = name_values(args, "LABEL", escape)?;
            Instruction::Label { pairs, legacy }
        }
        "arg" => {
            no_flags(&flags)?;
            parse_arg(args, escape)?
        }
        "workdir" => Instruction::Workdir {
            path: one_string(&flags, args, "WORKDIR")?,
        },
        "user" => Instruction::User {
            user: one_string(&flags, args, "USER")?,
        },
        "stopsignal" => Instruction::Stopsignal {
            signal: one_string(&flags, args, "STOPSIGNAL")?,
        },
        "maintainer" => Instruction::Maintainer {
            name: one_string(&flags, args, "MAINTAINER")?,
        },
        "copy" => parse_copy(&flags, args, &line.heredocs)?,
        "add" => parse_add(&flags, args, &line.heredocs)?,
        "expose" => {
            no_flags(&flags)?;
            let ports: Vec<String> = args.split_whitespace().map(String::from).collect();
            if ports.is_empty() {
                return Err(ErrorKind::AtLeastOneArgument("EXPOSE"));
            }
            Instruction::Expose { ports }
        }
        "volume" => {
            no_flags(&flags)?;
            let paths = json_or_words(args)?;
            if paths.is_empty() {
                return Err(ErrorKind::AtLeastOneArgument("VOLUME"));
            }
            if paths.iter().any(|p| p.trim().is_empty()) {
                return Err(ErrorKind::EmptyVolume);
            }
            Instruction::Volume { paths }
        }
        "shell" => {
            no_flags(&flags)?;
            match maybe_json(args)? {
                None => return Err(ErrorKind::AtLeastOneArgument("SHELL")),
                Some(Command::Shell(_)) => return Err(ErrorKind::NotJson("SHELL")),
                Some(Command::Exec(v)) if v.is_empty() => {
                    return Err(ErrorKind::AtLeastOneArgument("SHELL"))
                }
                Some(Command::Exec(shell)) => Instruction::Shell { shell },
            }
        }
        "healthcheck" => parse_healthcheck(&flags, args)?,
        "onbuild" => parse_onbuild(&flags, text, &line.heredocs)?,
        // Named as written, as BuildKit does.
        _ => return Err(ErrorKind::UnknownInstruction(keyword.to_string())),
    };
    Ok(Parsed::Step(Step {
        line: line.line,
        instruction,
    }))
}

/// How a builder flag takes its value.
#[derive(Clone, Copy, PartialEq)]
enum FlagKind {
    /// `--link`, `--link=true|false`.
    Bool,
    /// `--from=x`; given twice, the last wins.
    Text,
    /// `--mount=a --mount=b`: every value kept.
    List,
}

/// The flags an instruction was given, checked against what it accepts.
struct Flags {
    values: Vec<(&'static str, String)>,
}

impl Flags {
    fn parse(given: &[String], accepted: &[(&'static str, FlagKind)]) -> Result<Flags, ErrorKind> {
        let mut values: Vec<(&'static str, String)> = Vec::new();
        for flag in given {
            let flag = flag.strip_prefix("--").unwrap_or(flag);
            let (name, value) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (flag, None),
            };
            let Some(&(name, kind)) = accepted.iter().find(|(n, _)| *n == name) else {
                return Err(ErrorKind::UnknownFlag(name.to_string()));
            };
            if kind != FlagKind::List && values.iter().any(|(n, _)| *n == name) {
                return Err(ErrorKind::DuplicateFlag(name.to_string()));
            }
            let value = match (kind, value) {
                (FlagKind::Bool, None) => "true".to_string(),
                (FlagKind::Bool, Some("")) | (_, None) => {
                    return Err(ErrorKind::MissingFlagValue(name.to_string()))
                }
                (FlagKind::Bool, Some(v)) => match v.to_ascii_lowercase().as_str() {
                    b @ ("true" | "false") => b.to_string(),
                    _ => return Err(ErrorKind::BadBoolFlag(name.to_string(), v.to_string())),
                },
                (_, Some(v)) => v.to_string(),
            };
            values.push((name, value));
        }
        Ok(Flags { values })
    }

    fn text(&self, name: &str) -> Option<String> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    }

    fn bool(&self, name: &str) -> bool {
        self.text(name).as_deref() == Some("true")
    }

    fn list(&self, name: &str) -> Vec<String> {
        self.values
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

fn no_flags(flags: &[String]) -> Result<(), ErrorKind> {
    Flags::parse(flags, &[]).map(|_| ())
}

fn parse_from(flags: &[String], args: &str, line: usize) -> Result<Stage, ErrorKind> {
    let flags = Flags::parse(flags, &[("platform", FlagKind::Text)])?;
    let words: Vec<&str> = args.split_whitespace().collect();
    let name = match words.as_slice() {
        [_] => None,
        [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(stage_name(name)?),
        _ => return Err(ErrorKind::FromArguments),
    };
    Ok(Stage {
        line,
        name,
        base: words[0].to_string(),
        platform: flags.text("platform"),
        steps: Vec::new(),
    })
}

/// `^[a-z][a-z0-9-_.]*$` after lowercasing, as Docker requires.
fn stage_name(written: &str) -> Result<String, ErrorKind> {
    let name = written.to_ascii_lowercase();
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    if valid {
        Ok(name)
    } else {
        Err(ErrorKind::BadStageName(written.to_string()))
    }
}

fn parse_run(flags: &[String], args: &str, heredocs: &[Heredoc]) -> Result<Instruction, ErrorKind> {
    let flags = Flags::parse(
        flags,
        &[
            ("mount", FlagKind::List),
            ("network", FlagKind::Text),
            ("security", FlagKind::Text),
        ],
    )?;
    let command = match maybe_json(args)? {
        None => return Err(ErrorKind::AtLeastOneArgument("RUN")),
        Some(Command::Exec(v)) if v.is_empty() => return Err(ErrorKind::AtLeastOneArgument("RUN")),
        Some(c) => c,
    };
    Ok(Instruction::Run {
        heredocs: match command {
            Command::Shell(_) => heredocs.to_vec(),
            Command::Exec(_) => Vec::new(),
        },
        command,
        mounts: flags.list("mount"),
        network: flags.text("network"),
        security: flags.text("security"),
    })
}

/// Sources (paths and heredocs) and destination of COPY and ADD.
fn sources_and_dest(
    args: &str,
    heredocs: &[Heredoc],
    instruction: &'static str,
) -> Result<(Vec<String>, Vec<Heredoc>, String), ErrorKind> {
    let is_json = args.starts_with('[') && json_strings(args)?.is_some();
    let mut words = json_or_words(args)?;
    if words.len() < 2 {
        return Err(ErrorKind::AtLeastTwoArguments(instruction));
    }
    let dest = words.pop().unwrap_or_default();
    if !is_json && lexer::heredoc_marker(&dest).is_some() {
        return Err(ErrorKind::HeredocDestination(instruction));
    }
    let mut paths = Vec::new();
    let mut docs = Vec::new();
    for word in words {
        match lexer::heredoc_marker(&word).filter(|_| !is_json) {
            Some(marker) => {
                let body = heredocs.iter().find(|h| h.name == marker.name);
                docs.push(Heredoc {
                    content: body.map(|h| h.content.clone()).unwrap_or_default(),
                    ..marker
                });
            }
            None => paths.push(word),
        }
    }
    Ok((paths, docs, dest))
}

fn parse_copy(
    flags: &[String],
    args: &str,
    heredocs: &[Heredoc],
) -> Result<Instruction, ErrorKind> {
    let flags = Flags::parse(
        flags,
        &[
            ("from", FlagKind::Text),
            ("chown", FlagKind::Text),
            ("chmod", FlagKind::Text),
            ("link", FlagKind::Bool),
            ("parents", FlagKind::Bool),
            ("exclude", FlagKind::List),
        ],
    )?;
    let (sources, heredocs, dest) = sources_and_dest(args, heredocs, "COPY")?;
    Ok(Instruction::Copy(Copy {
        sources,
        heredocs,
        dest,
        from: flags.text("from"),
        chown: flags.text("chown"),
        chmod: flags.text("chmod"),
        link: flags.bool("link"),
        parents: flags.bool("parents"),
        exclude: flags.list("exclude"),
    }))
}

fn parse_add(flags: &[String], args: &str, heredocs: &[Heredoc]) -> Result<Instruction, ErrorKind> {
    let flags = Flags::parse(
        flags,
        &[
            ("chown", FlagKind::Text),
            ("chmod", FlagKind::Text),
            ("link", FlagKind::Bool),
            ("checksum", FlagKind::Text),
            ("keep-git-dir", FlagKind::Bool),
            ("exclude", FlagKind::List),
        ],
    )?;
    let (sources, heredocs, dest) = sources_and_dest(args, heredocs, "ADD")?;
    Ok(Instruction::Add(Add {
        sources,
        heredocs,
        dest,
        chown: flags.text("chown"),
        chmod: flags.text("chmod"),
        link: flags.bool("link"),
        checksum: flags.text("checksum"),
        keep_git_dir: flags.bool("keep-git-dir"),
        exclude: flags.list("exclude"),
    }))
}

/// `ENV`/`LABEL`: `K=V K2="v 2"`, or the legacy `K the rest of the line`.
fn name_values(
    args: &str,
    instruction: &'static str,
    escape: char,
) -> Result<(Vec<KeyValue>, bool), ErrorKind> {
    let words = lexer::parse_words(args, escape);
    let Some(first) = words.first() else {
        return Err(ErrorKind::AtLeastOneArgument(instruction));
    };
    let pairs = if !first.contains('=') {
        let Some((key, value)) = args.split_once(char::is_whitespace) else {
            return Err(ErrorKind::TwoArguments(instruction));
        };
        vec![KeyValue {
            key: key.to_string(),
            value: value.trim_start().to_string(),
        }]
    } else {
        let mut pairs = Vec::new();
        for word in &words {
            let Some((key, value)) = word.split_once('=') else {
                return Err(ErrorKind::MissingEquals(word.clone()));
            };
            pairs.push(KeyValue {
                key: key.to_string(),
                value: value.to_string(),
            });
        }
        pairs
    };
    if pairs.iter().any(|p| p.key.is_empty()) {
        return Err(ErrorKind::BlankName(instruction));
    }
    Ok((pairs, !first.contains('=')))
}

fn parse_arg(args: &str, escape: char) -> Result<Instruction, ErrorKind> {
    let words = lexer::parse_words(args, escape);
    if words.is_empty() {
        return Err(ErrorKind::AtLeastOneArgument("ARG"));
    }
    let args = words
        .into_iter()
        .map(|word| match word.split_once('=') {
            Some((name, default)) => ArgDecl {
                name: name.to_string(),
                default: Some(default.to_string()),
            },
            None => ArgDecl {
                name: word,
                default: None,
            },
        })
        .collect::<Vec<_>>();
    if args.iter().any(|a| a.name.is_empty()) {
        return Err(ErrorKind::BlankName("ARG"));
    }
    Ok(Instruction::Arg { args })
}

/// WORKDIR, USER, STOPSIGNAL, MAINTAINER: the rest of the line.
fn one_string(
    flags: &[String],
    args: &str,
    instruction: &'static str,
) -> Result<String, ErrorKind> {
    no_flags(flags)?;
    if args.is_empty() {
        return Err(ErrorKind::ExactlyOneArgument(instruction));
    }
    Ok(args.to_string())
}

fn parse_healthcheck(flags: &[String], args: &str) -> Result<Instruction, ErrorKind> {
    let (kind, rest) = match args.find(char::is_whitespace) {
        Some(at) => (&args[..at], args[at..].trim_start()),
        None => (args, ""),
    };
    if kind.is_empty() {
        return Err(ErrorKind::AtLeastOneArgument("HEALTHCHECK"));
    }
    let kind = kind.to_ascii_uppercase();
    if kind == "NONE" {
        if !rest.is_empty() {
            return Err(ErrorKind::Healthcheck(
                "HEALTHCHECK NONE takes no arguments".into(),
            ));
        }
        return Ok(Instruction::Healthcheck {
            check: Health::None,
        });
    }
    let flags = Flags::parse(
        flags,
        &[
            ("interval", FlagKind::Text),
            ("timeout", FlagKind::Text),
            ("start-period", FlagKind::Text),
            ("start-interval", FlagKind::Text),
            ("retries", FlagKind::Text),
        ],
    )?;
    if kind != "CMD" {
        return Err(ErrorKind::Healthcheck(format!(
            "Unknown type {kind:?} in HEALTHCHECK (try CMD)"
        )));
    }
    let command = match maybe_json(rest)? {
        Some(Command::Exec(v)) if !v.is_empty() => Command::Exec(v),
        Some(Command::Shell(s)) if !s.is_empty() => Command::Shell(s),
        _ => {
            return Err(ErrorKind::Healthcheck(
                "Missing command after HEALTHCHECK CMD".into(),
            ))
        }
    };
    let duration = |name: &str| -> Result<Option<u64>, ErrorKind> {
        let Some(text) = flags.text(name) else {
            return Ok(None);
        };
        let ns = go_duration_ns(&text).ok_or_else(|| {
            ErrorKind::Healthcheck(format!("time: invalid duration {text:?} for --{name}"))
        })?;
        match ns {
            0 => Ok(None),
            ns if ns < 1_000_000 => Err(ErrorKind::Healthcheck(format!(
                "Interval {name:?} cannot be less than 1ms"
            ))),
            ns => Ok(Some(ns)),
        }
    };
    let retries = match flags.text("retries") {
        None => None,
        Some(text) => match text.parse::<i32>() {
            Ok(n) if n < 0 => {
                return Err(ErrorKind::Healthcheck(format!(
                    "--retries cannot be negative ({n})"
                )))
            }
            Ok(n) => Some(n.unsigned_abs()),
            Err(_) => {
                return Err(ErrorKind::Healthcheck(format!(
                    "invalid --retries value {text:?}"
                )))
            }
        },
    };
    Ok(Instruction::Healthcheck {
        check: Health::Cmd {
            command,
            interval_ns: duration("interval")?,
            timeout_ns: duration("timeout")?,
            start_period_ns: duration("start-period")?,
            start_interval_ns: duration("start-interval")?,
            retries,
        },
    })
}

/// A Go `time.ParseDuration` string (`1m30s`, `1.5h`, `300ms`, `10us`) in
/// nanoseconds; negative durations are refused (HEALTHCHECK has no use
/// for them).
pub fn go_duration_ns(text: &str) -> Option<u64> {
    if text == "0" {
        return Some(0);
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    (total < u64::MAX as f64).then_some(total.round() as u64)
}

/// ONBUILD: the trigger as written, checked the way Docker checks it.
fn parse_onbuild(
    flags: &[String],
    text: &str,
    heredocs: &[Heredoc],
) -> Result<Instruction, ErrorKind> {
    no_flags(flags)?;
    // The expression is the original text after the keyword, flags and
    // all: they belong to the trigger.
    let expression = text
        .get("ONBUILD".len()..)
        .unwrap_or_default()
        .trim()
        .to_string();
    let trigger = expression
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    match trigger.as_str() {
        "" => Err(ErrorKind::AtLeastOneArgument("ONBUILD")),
        "ONBUILD" => Err(ErrorKind::Onbuild(
            "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into(),
        )),
        "FROM" | "MAINTAINER" => Err(ErrorKind::Onbuild(format!(
            "{trigger} isn't allowed as an ONBUILD trigger"
        ))),
        _ => Ok(Instruction::Onbuild {
            expression,
            heredocs: heredocs.to_vec(),
        }),
    }
}

/// A JSON array of strings, None when `text` is not JSON at all (shell
/// form), an error when it is an array holding something else.
fn json_strings(text: &str) -> Result<Option<Vec<String>>, ErrorKind> {
    if !text.starts_with('[') {
        return Ok(None);
    }
    match serde_json::from_str::<Vec<serde_json::Value>>(text) {
        Err(_) => Ok(None),
        Ok(values) => values
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => Ok(s),
                _ => Err(ErrorKind::JsonNotStrings),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
    }
}

/// Exec form when the text is a JSON array of strings, shell form
/// otherwise (invalid JSON falls back to shell form, as in Docker).
fn maybe_json(text: &str) -> Result<Option<Command>, ErrorKind> {
    if text.is_empty() {
        return Ok(None);
    }
    Ok(Some(match json_strings(text)? {
        Some(v) => Command::Exec(v),
        None => Command::Shell(text.to_string()),
    }))
}

/// A JSON array, or whitespace-separated words (COPY, ADD, VOLUME).
fn json_or_words(text: &str) -> Result<Vec<String>, ErrorKind> {
    Ok(match json_strings(text)? {
        Some(v) => v,
        None => text.split_whitespace().map(String::from).collect(),
    })
}

/// Prints the Dockerfile in a canonical form that parses to the same
/// value (line numbers aside): one line per instruction, flags first,
/// exec forms and lists as JSON.
impl fmt::Display for Dockerfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(syntax) = &self.directives.syntax {
            writeln!(f, "# syntax={syntax}")?;
        }
        if self.directives.escape != '\\' {
            writeln!(f, "# escape={}", self.directives.escape)?;
        }
        if let Some(check) = &self.directives.check {
            writeln!(f, "# check={check}")?;
        }
        let mut lines: Vec<String> = self
            .meta_args
            .iter()
            .map(|s| s.instruction.to_string())
            .collect();
        for stage in &self.stages {
            let mut from = "FROM ".to_string();
            if let Some(p) = &stage.platform {
                from += &format!("{} ", flag("platform", p));
            }
            from += &stage.base;
            if let Some(name) = &stage.name {
                from += &format!(" AS {name}");
            }
            lines.push(from);
            lines.extend(stage.steps.iter().map(|s| s.instruction.to_string()));
        }
        // Only a continuation cut off by the end of the file leaves a
        // lone escape character at the end of an instruction: print one
        // more continuation so that it stays.
        let escape = self.directives.escape;
        if let Some(last) = lines.last_mut() {
            let lone = last
                .strip_suffix(escape)
                .is_some_and(|rest| !rest.ends_with(escape));
            if lone {
                last.push(' ');
                last.push(escape);
            }
        }
        for line in lines {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// `--name=value`, quoted when the value needs it to survive flag parsing.
fn flag(name: &str, value: &str) -> String {
    if value.is_empty() || value.contains(|c: char| c.is_whitespace() || "\"'\\".contains(c)) {
        let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
        format!("--{name}=\"{escaped}\"")
    } else {
        format!("--{name}={value}")
    }
}

fn json(values: &[String]) -> String {
    serde_json::to_string(values).unwrap_or_default()
}

fn command_text(command: &Command) -> String {
    match command {
        Command::Exec(v) => json(v),
        Command::Shell(s) => s.clone(),
    }
}

/// `<<[-]NAME`, quoted when the body is literal.
fn heredoc_marker_text(h: &Heredoc) -> String {
    let dash = if h.chomp { "-" } else { "" };
    if h.expand {
        format!("<<{dash}{}", h.name)
    } else {
        format!("<<{dash}\"{}\"", h.name)
    }
}

fn heredoc_bodies(f: &mut fmt::Formatter<'_>, heredocs: &[Heredoc]) -> fmt::Result {
    for h in heredocs {
        write!(f, "\n{}{}", h.content, h.name)?;
    }
    Ok(())
}

/// The destination and sources of COPY/ADD: JSON unless heredocs need the
/// shell form.
fn copy_args(sources: &[String], heredocs: &[Heredoc], dest: &str) -> String {
    let mut all: Vec<String> = sources.to_vec();
    all.push(dest.to_string());
    if heredocs.is_empty() {
        return json(&all);
    }
    let mut words: Vec<String> = heredocs.iter().map(heredoc_marker_text).collect();
    words.extend(all);
    words.join(" ")
}

/// An instruction cut into what Display writes: keyword, flags,
/// arguments, heredoc bodies.
struct Printed<'a> {
    keyword: &'static str,
    flags: Vec<String>,
    args: String,
    heredocs: &'a [Heredoc],
}

impl Instruction {
    // Over 80 lines: one match with an arm per instruction, each a few
    // lines of flags and arguments, next to the two small formatters they
    // share; the round-trip property test (5000 files) checks it whole.
    fn printed(&self) -> Printed<'_> {
        let mut flags = Vec::new();
        let mut heredocs: &[Heredoc] = &[];
        let pairs = |p: &[KeyValue], legacy: bool| -> String {
            if legacy {
                // A key ending in an escape character would escape a
                // single space after it.
                let gap = if p[0].key.ends_with(['\\', '`']) {
                    "  "
                } else {
                    " "
                };
                format!("{}{gap}{}", p[0].key, p[0].value)
            } else {
                p.iter()
                    .map(|kv| format!("{}={}", kv.key, kv.value))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        };
        let text_flags = |flags: &mut Vec<String>, given: &[(&str, &Option<String>)]| {
            for (name, value) in given {
                if let Some(v) = value {
                    flags.push(flag(name, v));
                }
            }
        };
        let (keyword, args) = match self {
            Instruction::Run {
                command,
                heredocs: docs,
                mounts,
                network,
                security,
            } => {
                flags.extend(mounts.iter().map(|m| flag("mount", m)));
                text_flags(&mut flags, &[("network", network), ("security", security)]);
                heredocs = docs;
                ("RUN", command_text(command))
            }
            Instruction::Cmd { command } => ("CMD", command_text(command)),
            Instruction::Entrypoint { command } => ("ENTRYPOINT", command_text(command)),
            Instruction::Env { pairs: p, legacy } => ("ENV", pairs(p, *legacy)),
            Instruction::Label { pairs: p, legacy } => ("LABEL", pairs(p, *legacy)),
            Instruction::Arg { args } => {
                let words: Vec<String> = args
                    .iter()
                    .map(|a| match &a.default {
                        Some(d) => format!("{}={d}", a.name),
                        None => a.name.clone(),
                    })
                    .collect();
                ("ARG", words.join(" "))
            }
            Instruction::Workdir { path } => ("WORKDIR", path.clone()),
            Instruction::User { user } => ("USER", user.clone()),
            Instruction::Stopsignal { signal } => ("STOPSIGNAL", signal.clone()),
            Instruction::Maintainer { name } => ("MAINTAINER", name.clone()),
            Instruction::Copy(c) => {
                text_flags(
                    &mut flags,
                    &[("from", &c.from), ("chown", &c.chown), ("chmod", &c.chmod)],
                );
                if c.link {
                    flags.push("--link".into());
                }
                if c.parents {
                    flags.push("--parents".into());
                }
                flags.extend(c.exclude.iter().map(|e| flag("exclude", e)));
                heredocs = &c.heredocs;
                ("COPY", copy_args(&c.sources, &c.heredocs, &c.dest))
            }
            Instruction::Add(a) => {
                text_flags(
                    &mut flags,
                    &[
                        ("chown", &a.chown),
                        ("chmod", &a.chmod),
                        ("checksum", &a.checksum),
                    ],
                );
                if a.link {
                    flags.push("--link".into());
                }
                if a.keep_git_dir {
                    flags.push("--keep-git-dir".into());
                }
                flags.extend(a.exclude.iter().map(|e| flag("exclude", e)));
                heredocs = &a.heredocs;
                ("ADD", copy_args(&a.sources, &a.heredocs, &a.dest))
            }
            Instruction::Expose { ports } => ("EXPOSE", ports.join(" ")),
            Instruction::Volume { paths } => ("VOLUME", json(paths)),
            Instruction::Shell { shell } => ("SHELL", json(shell)),
            Instruction::Healthcheck {
                check: Health::None,
            } => ("HEALTHCHECK", "NONE".into()),
            Instruction::Healthcheck {
                check:
                    Health::Cmd {
                        command,
                        interval_ns,
                        timeout_ns,
                        start_period_ns,
                        start_interval_ns,
                        retries,
                    },
            } => {
                let durations = [
                    ("interval", interval_ns),
                    ("timeout", timeout_ns),
                    ("start-period", start_period_ns),
                    ("start-interval", start_interval_ns),
                ];
                for (name, ns) in durations {
                    if let Some(ns) = ns {
                        flags.push(format!("--{name}={ns}ns"));
                    }
                }
                if let Some(r) = retries {
                    flags.push(format!("--retries={r}"));
                }
                ("HEALTHCHECK", format!("CMD {}", command_text(command)))
            }
            Instruction::Onbuild {
                expression,
                heredocs: docs,
            } => {
                heredocs = docs;
                ("ONBUILD", expression.clone())
            }
        };
        Printed {
            keyword,
            flags,
            args,
            heredocs,
        }
    }
}

impl fmt::Display for Instruction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.printed();
        write!(f, "{}", p.keyword)?;
        for flag in &p.flags {
            write!(f, " {flag}")?;
        }
        // Arguments that look like a flag need `--` before them, which
        // ends the flags as in Docker (ONBUILD keeps its text as written).
        if p.args.starts_with("--") && p.keyword != "ONBUILD" {
            write!(f, " --")?;
        }
        if !p.args.is_empty() {
            write!(f, " {}", p.args)?;
        }
        heredoc_bodies(f, p.heredocs)
    }
}

#[cfg(test)]
#[path = "dockerfile_tests.rs"]
mod tests;
