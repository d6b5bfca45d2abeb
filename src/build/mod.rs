//! `hull build`'s frontend: the Dockerfile language and the build context,
//! on the host, with no VM involved.
//!
//! - [`dockerfile`]: parse a Dockerfile into a [`Dockerfile`] (directives,
//!   the ARGs before the first FROM, stages of instructions with their
//!   line numbers), as written; [`Dockerfile`]'s `Display` prints it back
//!   in a form that parses to the same value;
//! - [`resolve`]: apply `--build-arg` and `--target`, expand variables
//!   where Docker's builder expands them (ARG/ENV scoping per stage),
//!   resolve FROM and `COPY --from` to stages or images, and say which
//!   stages the target needs, in build order ([`Build`]);
//! - [`substitute`]: the variable expansion itself;
//! - [`ignore`]: `.dockerignore` patterns and the walk of a context
//!   directory that yields the files a build may read.
//!
//! The execution engine takes a [`Build`]: for each stage of
//! [`Build::order`] it starts from [`ResolvedStage::base`] and applies
//! [`ResolvedStage::steps`], whose instructions are already substituted.
//! Every error is an [`Error`] naming the line; docs/build.md has the
//! support matrix.
//!
//! ```ignore
//! let dockerfile = Dockerfile::parse(&text)?;
//! let build = dockerfile.resolve(&BuildOptions::default(), &|_image| Vars::new())?;
//! for &stage in &build.order { /* run build.stages[stage].steps */ }
//! ```

pub mod dockerfile;
pub mod engine;
pub mod ignore;
pub mod lexer;
pub mod resolve;
pub mod substitute;

// The engine's vocabulary; until it lands only `hull debug dockerfile`
// uses part of it.
#[allow(unused_imports)]
pub use dockerfile::{Command, Dockerfile, Instruction, Stage, Step};
#[allow(unused_imports)]
pub use lexer::{Directives, Heredoc};
#[allow(unused_imports)]
pub use resolve::{Base, Build, BuildOptions, ResolvedStage, ResolvedStep};
pub use substitute::Vars;

/// A Dockerfile error: the line it is on, and what is wrong as its
/// source, so that a report of the chain (`{:#}` of anyhow) reads
/// `Dockerfile:LINE: message`, the place named as Docker names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Dockerfile:{line}")]
pub struct Error {
    /// The line (1-based) of the instruction at fault.
    pub line: usize,
    /// What is wrong.
    #[source]
    pub kind: ErrorKind,
}

impl Error {
    pub(crate) fn at(line: usize, kind: ErrorKind) -> Self {
        Error { line, kind }
    }

    /// The whole report on one line: `Dockerfile:LINE: message: cause`.
    pub fn report(&self) -> String {
        let mut line = self.to_string();
        let mut source: Option<&dyn std::error::Error> = Some(&self.kind);
        while let Some(s) = source {
            line += &format!(": {s}");
            source = s.source();
        }
        line
    }
}

/// What is wrong in a Dockerfile; messages are Docker's where it has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    #[error("only one {0} parser directive can be used")]
    DuplicateDirective(String),
    #[error("invalid escape token '{0}' does not match ` or \\")]
    BadEscape(String),
    /// The delimiter is kept for the caller; Docker's message omits it.
    #[error("unterminated heredoc")]
    UnterminatedHeredoc(String),
    #[error("unknown instruction: {0}")]
    UnknownInstruction(String),
    #[error("{0} requires at least one argument")]
    AtLeastOneArgument(&'static str),
    #[error("{0} requires exactly one argument")]
    ExactlyOneArgument(&'static str),
    #[error("{0} requires at least two arguments, but only one was provided. Destination could not be determined.")]
    AtLeastTwoArguments(&'static str),
    #[error("{0} must have two arguments")]
    TwoArguments(&'static str),
    #[error("FROM requires either one or three arguments")]
    FromArguments,
    #[error(
        "invalid name for build stage: {0:?}, name can't start with a number or contain symbols"
    )]
    BadStageName(String),
    #[error("duplicate name {0:?} for build stage")]
    DuplicateStageName(String),
    #[error("Syntax error - can't find = in {0:?}. Must be of the form: name=value")]
    MissingEquals(String),
    #[error("{0} names can not be blank")]
    BlankName(&'static str),
    #[error("when using JSON array syntax, arrays must be comprised of strings only")]
    JsonNotStrings,
    #[error("{0} requires the arguments to be in JSON form")]
    NotJson(&'static str),
    #[error("unknown flag: {0}")]
    UnknownFlag(String),
    #[error("duplicate flag specified: {0}")]
    DuplicateFlag(String),
    #[error("missing a value on flag: {0}")]
    MissingFlagValue(String),
    #[error("expecting boolean value for flag {0}, not: {1}")]
    BadBoolFlag(String, String),
    #[error("{0}")]
    Healthcheck(String),
    #[error("{0}")]
    Onbuild(String),
    #[error("{0} cannot accept a heredoc as a destination")]
    HeredocDestination(&'static str),
    #[error("VOLUME specified can not be an empty string")]
    EmptyVolume,
    #[error("no build stage in current context")]
    NoStage,
    #[error("file with no instructions")]
    Empty,
    #[error("failed to process {word:?}")]
    Substitution {
        word: String,
        #[source]
        source: substitute::SubstError,
    },
    #[error("base name ({0}) should not be blank")]
    BlankBase(String),
    /// The image reference parser's own message.
    #[error("{0}")]
    BadReference(String),
    #[error("invalid containerPort: {0}")]
    BadPort(String),
    #[error("target stage {0:?} could not be found")]
    UnknownTarget(String),
    #[error("invalid stage index {index}: the Dockerfile has {count} stages")]
    BadStageIndex { index: usize, count: usize },
    #[error("circular dependency detected on stage: {0}")]
    Cycle(String),
}
