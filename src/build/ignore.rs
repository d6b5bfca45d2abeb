//! `.dockerignore`: which files of the build context a build may read,
//! by Docker's rules (moby's `ignorefile` reader and `patternmatcher`):
//!
//! - one pattern a line; a line starting with `#` is a comment (only in
//!   the first column); blanks around a pattern are trimmed;
//! - a pattern is cleaned like Go's `filepath.Clean` (`./a` is `a`, `a/../b`
//!   is `b`) and a leading `/` dropped: patterns are relative to the context;
//! - `*` matches within one path component, `?` one character but `/`,
//!   `[a-z]`/`[^a]` a character class, `\` escapes, `**` any number of
//!   components (`**/x` also matches `x`);
//! - a pattern matching a directory excludes everything below it;
//! - `!pattern` re-includes; the last matching line decides;
//! - the Dockerfile and `.dockerignore` are matched like any file: Docker
//!   still reads the Dockerfile it builds from, but COPY does not see an
//!   excluded one.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// `.dockerignore` errors.
#[derive(Debug, thiserror::Error)]
pub enum IgnoreError {
    #[error("illegal exclusion pattern: \"!\"")]
    LoneExclamation,
    #[error("syntax error in pattern {0:?}")]
    BadPattern(String),
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The patterns of a `.dockerignore`, in order.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

/// One line: the whole path must match its tokens (Docker compiles each
/// pattern to an anchored regular expression; these tokens are its pieces).
#[derive(Debug, Clone)]
struct Pattern {
    /// `!pattern`: re-includes what earlier lines excluded.
    exception: bool,
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Literal(char),
    /// `*`: any characters but `/`.
    Star,
    /// `?`: one character but `/`.
    Question,
    /// `**/` (or `**` not at the end): nothing, or anything ending in `/`.
    AnyDirs,
    /// `**` at the end: anything.
    AnyTail,
    /// `[...]`: ranges of characters, negated by a leading `^`.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl DockerIgnore {
    /// Reads `CONTEXT/.dockerignore`; no file means no patterns.
    pub fn read(context: &Path) -> Result<DockerIgnore, IgnoreError> {
        let path = context.join(".dockerignore");
        match std::fs::read(&path) {
            Ok(bytes) => DockerIgnore::parse(&String::from_utf8_lossy(&bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DockerIgnore::default()),
            Err(source) => Err(IgnoreError::Io { path, source }),
        }
    }

    /// Parses `.dockerignore` text.
    pub fn parse(text: &str) -> Result<DockerIgnore, IgnoreError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for line in text.lines() {
            // A comment only when `#` is the very first character.
            if line.starts_with('#') {
                continue;
            }
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (exception, rest) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            if exception && rest.is_empty() {
                return Err(IgnoreError::LoneExclamation);
            }
            let mut cleaned = clean(rest);
            if cleaned.len() > 1 {
                if let Some(relative) = cleaned.strip_prefix('/') {
                    cleaned = relative.to_string();
                }
            }
            patterns.push(Pattern {
                exception,
                tokens: tokens(&cleaned)?,
            });
        }
        Ok(DockerIgnore { patterns })
    }

    /// Whether there are no patterns (everything is sent).
    #[allow(dead_code)] // for the engine (issue 12)
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `path` (relative to the context, `/`-separated) is left
    /// out: the last pattern matching it or one of its parent directories
    /// decides.
    pub fn is_excluded(&self, path: &str) -> bool {
        let path = clean(path);
        let parents: Vec<&str> = path.match_indices('/').map(|(i, _)| &path[..i]).collect();
        let mut excluded = false;
        for pattern in &self.patterns {
            // An exclusion that already holds, or an exception to
            // nothing, changes nothing.
            if pattern.exception != excluded {
                continue;
            }
            let matched = pattern.matches(&path) || parents.iter().any(|p| pattern.matches(p));
            if matched {
                excluded = !pattern.exception;
            }
        }
        excluded
    }

    /// Whether an exception could re-include something below the
    /// excluded directory `dir`, judged by the literal start of each
    /// exception pattern (so that `*` then `!src` does not walk all of
    /// `node_modules`). Errs on the side of walking.
    fn may_reinclude_below(&self, dir: &str) -> bool {
        let below = format!("{dir}/");
        self.patterns.iter().filter(|p| p.exception).any(|p| {
            let prefix: String = p
                .tokens
                .iter()
                .map_while(|t| match t {
                    Token::Literal(c) => Some(*c),
                    _ => None,
                })
                .collect();
            let literal = prefix.chars().count() == p.tokens.len();
            if literal {
                // Below the directory, or the directory or a parent of it
                // (what matches a parent applies to all below it).
                prefix.starts_with(&below) || below.starts_with(&format!("{prefix}/"))
            } else {
                prefix.starts_with(&below) || below.starts_with(&prefix)
            }
        })
    }
}

/// Go's `filepath.Clean` for `/`-separated paths.
pub fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ if rooted => {}
                _ => parts.push(".."),
            },
            _ => parts.push(part),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

fn tokens(pattern: &str) -> Result<Vec<Token>, IgnoreError> {
    let bad = || IgnoreError::BadPattern(pattern.to_string());
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                out.push(if i == chars.len() {
                    Token::AnyTail
                } else {
                    Token::AnyDirs
                });
                continue;
            }
            '*' => out.push(Token::Star),
            '?' => out.push(Token::Question),
            '\\' => {
                i += 1;
                // A trailing backslash is malformed for Go's filepath.Match.
                let c = *chars.get(i).ok_or_else(bad)?;
                out.push(Token::Literal(c));
            }
            '[' => {
                let (token, next) = class(&chars, i + 1).ok_or_else(bad)?;
                out.push(token);
                i = next;
                continue;
            }
            c => out.push(Token::Literal(c)),
        }
        i += 1;
    }
    Ok(out)
}

/// A character class starting after its `[`: the token and the index
/// after its `]`, or None when it is malformed.
fn class(chars: &[char], mut i: usize) -> Option<(Token, usize)> {
    let negated = chars.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let take = |i: &mut usize| -> Option<char> {
        let mut c = *chars.get(*i)?;
        if c == '\\' {
            *i += 1;
            c = *chars.get(*i)?;
        }
        *i += 1;
        Some(c)
    };
    loop {
        match chars.get(i)? {
            ']' if !ranges.is_empty() => return Some((Token::Class { negated, ranges }, i + 1)),
            '-' | ']' => return None,
            _ => {
                let low = take(&mut i)?;
                let high = if chars.get(i) == Some(&'-') && chars.get(i + 1) != Some(&']') {
                    i += 1;
                    take(&mut i)?
                } else {
                    low
                };
                if high < low {
                    return None;
                }
                ranges.push((low, high));
            }
        }
    }
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        let chars: Vec<char> = path.chars().collect();
        match_tokens(&self.tokens, &chars)
    }
}

fn match_tokens(tokens: &[Token], path: &[char]) -> bool {
    let Some((token, rest)) = tokens.split_first() else {
        return path.is_empty();
    };
    match token {
        Token::Literal(c) => path.first() == Some(c) && match_tokens(rest, &path[1..]),
        Token::Question => {
            path.first().is_some_and(|&c| c != '/') && match_tokens(rest, &path[1..])
        }
        Token::Class { negated, ranges } => path.first().is_some_and(|&c| {
            let inside = ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
            inside != *negated && match_tokens(rest, &path[1..])
        }),
        Token::Star => {
            let run = path.iter().take_while(|&&c| c != '/').count();
            (0..=run).any(|n| match_tokens(rest, &path[n..]))
        }
        Token::AnyTail => true,
        Token::AnyDirs => {
            match_tokens(rest, path)
                || (0..path.len())
                    .filter(|&i| path[i] == '/')
                    .any(|i| match_tokens(rest, &path[i + 1..]))
        }
    }
}

/// What a context entry is; symlinks are never followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    /// A socket, FIFO or device node.
    Other,
}

/// One entry of the build context a build may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextEntry {
    /// Relative to the context directory.
    pub path: PathBuf,
    pub kind: EntryKind,
}

/// The entries of `context` that `ignore` leaves in, depth first, each
/// directory's entries sorted by name (bytes) as Go's `filepath.Walk`
/// does. A directory is listed when it is included or holds something
/// an exception re-includes. Symlinks are listed, not followed, so the
/// walk never leaves the context.
pub fn walk(context: &Path, ignore: &DockerIgnore) -> Result<Vec<ContextEntry>, IgnoreError> {
    let mut out = Vec::new();
    walk_dir(context, Path::new(""), ignore, &mut out)?;
    Ok(out)
}

fn walk_dir(
    context: &Path,
    relative: &Path,
    ignore: &DockerIgnore,
    out: &mut Vec<ContextEntry>,
) -> Result<(), IgnoreError> {
    let dir = context.join(relative);
    let io = |source| IgnoreError::Io {
        path: dir.clone(),
        source,
    };
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(&dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let path = relative.join(&name);
        let full = context.join(&path);
        let meta = std::fs::symlink_metadata(&full).map_err(|source| IgnoreError::Io {
            path: full.clone(),
            source,
        })?;
        let excluded = ignore.is_excluded(&path.to_string_lossy());
        let file_type = meta.file_type();
        if file_type.is_dir() {
            // Below an excluded directory only an exception can bring
            // something back.
            if excluded && !ignore.may_reinclude_below(&path.to_string_lossy()) {
                continue;
            }
            let mut below = Vec::new();
            walk_dir(context, &path, ignore, &mut below)?;
            if !excluded || !below.is_empty() {
                out.push(ContextEntry {
                    path,
                    kind: EntryKind::Dir,
                });
                out.append(&mut below);
            }
            continue;
        }
        if excluded {
            continue;
        }
        let kind = if file_type.is_symlink() {
            EntryKind::Symlink
        } else if file_type.is_file() {
            EntryKind::File
        } else {
            EntryKind::Other
        };
        out.push(ContextEntry { path, kind });
    }
    Ok(())
}

#[cfg(test)]
#[path = "ignore_tests.rs"]
mod tests;
