//! Variable substitution as Docker's builder does it (BuildKit's shell
//! lexer), not as a shell does: `$VAR`, `${VAR}`, `${VAR:-word}`,
//! `${VAR-word}`, `${VAR:+word}`, `${VAR+word}`, `${VAR:?msg}`,
//! `${VAR?msg}`, `${VAR#pat}`, `${VAR##pat}`, `${VAR%pat}`,
//! `${VAR%%pat}`, `${VAR/pat/rep}`, `${VAR//pat/rep}`; single quotes keep
//! everything literal, double quotes
//! keep spaces but expand, the escape character (`\` or the `# escape=`
//! one) makes the next character literal. Quotes are removed from the
//! result. An unset variable expands to nothing.

use serde::Serialize;

/// What went wrong expanding one word; the caller adds the word and the
/// Dockerfile line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubstError {
    #[error("syntax error: missing '}}'")]
    MissingBrace,
    #[error("syntax error: missing '/' in ${{}}")]
    MissingSlash,
    #[error("syntax error: bad substitution")]
    BadSubstitution,
    #[error("unsupported modifier ({0}) in substitution")]
    UnsupportedModifier(String),
    #[error("unexpected end of statement while looking for matching {0}")]
    Unterminated(&'static str),
    #[error("{name}: {message}")]
    Required { name: String, message: String },
}

/// Variables in the order they were set; setting one again replaces its
/// value in place (Docker's env lists behave so). Serializes as a JSON
/// object in that order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vars(Vec<(String, String)>);

impl Serialize for Vars {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl Vars {
    /// No variables.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `name`, if set (case-sensitive, as on Linux).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `name`, keeping its place if it was set before.
    pub fn set(&mut self, name: &str, value: &str) {
        match self.0.iter_mut().find(|(k, _)| k == name) {
            Some(entry) => entry.1 = value.to_string(),
            None => self.0.push((name.to_string(), value.to_string())),
        }
    }

    /// Whether no variable is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Unsets `name`.
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(k, _)| k != name);
    }

    /// Whether `name` is set.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The variables as `(name, value)` pairs in the order first set.
    #[allow(dead_code)] // for the engine (issue 12)
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    /// `NAME=value` strings, the form of an OCI image config's `Env`.
    #[allow(dead_code)] // for the engine (issue 12)
    pub fn to_env_strings(&self) -> Vec<String> {
        self.0.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
}

impl FromIterator<(String, String)> for Vars {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        let mut vars = Vars::new();
        for (k, v) in iter {
            vars.set(&k, &v);
        }
        vars
    }
}

/// Where variable values come from: one layer of [`Vars`] or a stack of
/// them (ENV shadowing ARG).
pub trait Lookup {
    /// The value of `name`, if set.
    fn lookup(&self, name: &str) -> Option<&str>;
}

impl Lookup for Vars {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name)
    }
}

/// Layers of variables: the first layer that has a variable wins (a
/// stage's ENV over its ARGs).
#[derive(Debug, Clone, Copy)]
pub struct Layers<'a>(pub &'a [&'a Vars]);

impl Lookup for Layers<'_> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.0.iter().find_map(|v| v.get(name))
    }
}

/// Expands `word` to one string (quotes removed, whitespace kept): what
/// Docker does for WORKDIR, USER, ENV, LABEL, COPY/ADD paths and the like.
pub fn expand_word(word: &str, vars: &dyn Lookup, escape: char) -> Result<String, SubstError> {
    let mut lexer = Lexer::new(word, vars, escape);
    lexer.process_all().map(|(s, _)| s)
}

/// Expands `word` and splits the result at unquoted whitespace, including
/// whitespace that came from a variable's value (EXPOSE).
pub fn expand_words(
    word: &str,
    vars: &dyn Lookup,
    escape: char,
) -> Result<Vec<String>, SubstError> {
    let mut lexer = Lexer::new(word, vars, escape);
    lexer.process_all().map(|(_, w)| w)
}

/// Expands the variables of a heredoc's content (COPY/ADD) as BuildKit
/// does: quotes are ordinary characters, but `\` still escapes the next
/// character and is removed (`\$V` gives `$V`; so does `\\` give `\`).
pub fn expand_heredoc(content: &str, vars: &dyn Lookup) -> Result<String, SubstError> {
    let mut lexer = Lexer::new(content, vars, '\\');
    lexer.quotes_literal = true;
    lexer.process_all().map(|(s, _)| s)
}

/// Splits a line into words as Docker does to find heredoc markers:
/// quotes and escapes kept, nothing expanded.
pub(crate) fn raw_words(line: &str) -> Vec<String> {
    let empty = Vars::new();
    let mut lexer = Lexer::new(line, &empty, '\\');
    lexer.raw_quotes = true;
    lexer.raw_escapes = true;
    lexer.skip_unset = true;
    lexer.process_all().map(|(_, w)| w).unwrap_or_default()
}

/// The words of `text` with quotes removed and nothing expanded (a
/// heredoc marker's name), or None when it does not lex.
pub(crate) fn unquoted_words(text: &str, raw_quotes: bool) -> Option<Vec<String>> {
    let empty = Vars::new();
    let mut lexer = Lexer::new(text, &empty, '\\');
    lexer.raw_quotes = raw_quotes;
    lexer.skip_unset = true;
    lexer.process_all().ok().map(|(_, w)| w)
}

/// Word splitting as the lexer goes: characters from unquoted text or
/// variable values split at whitespace, quoted ones never do.
#[derive(Default)]
struct Words {
    words: Vec<String>,
    word: String,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if self.in_word && !self.word.is_empty() {
                self.words.push(std::mem::take(&mut self.word));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }

    fn add_raw_char(&mut self, ch: char) {
        self.word.push(ch);
        self.in_word = true;
    }

    fn add_string(&mut self, s: &str) {
        s.chars().for_each(|c| self.add_char(c));
    }

    fn add_raw_string(&mut self, s: &str) {
        s.chars().for_each(|c| self.add_raw_char(c));
    }

    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(self.word);
        }
        self.words
    }
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    vars: &'a dyn Lookup,
    /// Keep quote characters in the result (heredoc detection and bodies).
    raw_quotes: bool,
    /// Keep escape characters in the result.
    raw_escapes: bool,
    /// Leave references to unset variables as written.
    skip_unset: bool,
    /// Quotes are ordinary characters (heredoc bodies).
    quotes_literal: bool,
}

impl<'a> Lexer<'a> {
    fn new(text: &str, vars: &'a dyn Lookup, escape: char) -> Self {
        Lexer {
            chars: text.chars().collect(),
            pos: 0,
            escape,
            vars,
            raw_quotes: false,
            raw_escapes: false,
            skip_unset: false,
            quotes_literal: false,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn process_all(&mut self) -> Result<(String, Vec<String>), SubstError> {
        self.process_until(None, false)
    }

    /// Processes text up to `stop` (consumed) or the end; returns the
    /// expanded text and its words. `raw_escape_here`: keep escapes (the
    /// pattern of `${VAR#pattern}`).
    fn process_until(
        &mut self,
        stop: Option<char>,
        raw_escape_here: bool,
    ) -> Result<(String, Vec<String>), SubstError> {
        let mut result = String::new();
        let mut words = Words::default();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.next();
                return Ok((result, words.finish()));
            }
            match ch {
                '\'' | '"' if self.quotes_literal => {
                    self.next();
                    words.add_raw_char(ch);
                    result.push(ch);
                }
                '\'' => {
                    let s = self.single_quoted()?;
                    words.add_raw_string(&s);
                    result += &s;
                }
                '"' => {
                    let s = self.double_quoted()?;
                    words.add_raw_string(&s);
                    result += &s;
                }
                '$' => {
                    let s = self.dollar()?;
                    words.add_string(&s);
                    result += &s;
                }
                _ => {
                    self.next();
                    if ch == self.escape {
                        if self.raw_escapes || raw_escape_here {
                            words.add_raw_char(ch);
                            result.push(ch);
                        }
                        // A trailing escape character is dropped.
                        let Some(escaped) = self.next() else { break };
                        words.add_raw_char(escaped);
                        result.push(escaped);
                    } else {
                        words.add_char(ch);
                        result.push(ch);
                    }
                }
            }
        }
        if stop.is_some() {
            return Err(SubstError::MissingBrace);
        }
        Ok((result, words.finish()))
    }

    fn single_quoted(&mut self) -> Result<String, SubstError> {
        let mut result = String::new();
        let open = self.next();
        if self.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.next() {
                None => return Err(SubstError::Unterminated("single-quote")),
                Some('\'') => {
                    if self.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(c) => result.push(c),
            }
        }
    }

    fn double_quoted(&mut self) -> Result<String, SubstError> {
        let mut result = String::new();
        let open = self.next();
        if self.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.peek() {
                None => return Err(SubstError::Unterminated("double-quote")),
                Some('"') => {
                    self.next();
                    if self.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => result += &self.dollar()?,
                Some(_) => {
                    let mut ch = self.next().unwrap_or_default();
                    if ch == self.escape {
                        if self.raw_escapes {
                            result.push(ch);
                        }
                        match self.peek() {
                            // An escape character ending the word is dropped.
                            None => continue,
                            // Only these can be escaped inside double
                            // quotes; other escapes stay as written.
                            Some(c) if c == '"' || c == '$' || c == self.escape => {
                                ch = c;
                                self.next();
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    fn env(&self, name: &str) -> Option<String> {
        self.vars.lookup(name).map(str::to_string)
    }

    /// `$NAME`, `${NAME}` or `${NAME<modifier>word}`; the `$` is next.
    fn dollar(&mut self) -> Result<String, SubstError> {
        self.next();
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(match self.env(&name) {
                Some(v) => v,
                None if self.skip_unset => format!("${name}"),
                None => String::new(),
            });
        }
        self.next();
        match self.peek() {
            None => return Err(SubstError::MissingBrace),
            Some('{' | '}' | ':') => return Err(SubstError::BadSubstitution),
            Some(_) => {}
        }
        let name = self.name();
        let Some(mut modifier) = self.next() else {
            return Err(SubstError::MissingBrace);
        };
        let mut written = modifier.to_string();
        if modifier == '}' {
            return Ok(match self.env(&name) {
                Some(v) => v,
                None if self.skip_unset => format!("${{{name}}}"),
                None => String::new(),
            });
        }
        let null_is_unset = modifier == ':';
        if null_is_unset {
            match self.next() {
                Some(c) => {
                    modifier = c;
                    written.push(c);
                }
                None => return Err(SubstError::MissingBrace),
            }
        }
        if modifier == '/' && !null_is_unset {
            return self.replace(&name);
        }
        if !null_is_unset && !matches!(modifier, '-' | '+' | '?' | '#' | '%') {
            return Err(SubstError::UnsupportedModifier(written));
        }
        let (word, _) = self.process_until(Some('}'), matches!(modifier, '#' | '%'))?;
        let value = self.env(&name);
        if value.is_none() && self.skip_unset {
            return Ok(format!("${{{name}{written}{word}}}"));
        }
        let is_unset = match &value {
            None => true,
            Some(v) => null_is_unset && v.is_empty(),
        };
        match modifier {
            '-' => Ok(if is_unset {
                word
            } else {
                value.unwrap_or_default()
            }),
            '+' => Ok(if is_unset { String::new() } else { word }),
            '?' => match value {
                Some(v) if !is_unset => Ok(v),
                _ => {
                    let default = if value.is_none() {
                        "is not allowed to be unset"
                    } else {
                        "is not allowed to be empty"
                    };
                    Err(SubstError::Required {
                        name,
                        message: if word.is_empty() {
                            default.into()
                        } else {
                            word
                        },
                    })
                }
            },
            '#' | '%' => {
                let value = value.unwrap_or_default();
                let (greedy, pattern) = match word.strip_prefix(modifier) {
                    Some(rest) => (true, rest.to_string()),
                    None => (false, word),
                };
                Ok(if modifier == '#' {
                    trim_prefix(&value, &pattern, greedy)
                } else {
                    trim_suffix(&value, &pattern, greedy)
                })
            }
            _ => Err(SubstError::UnsupportedModifier(written)),
        }
    }

    /// `${NAME/pattern/replacement}` (first match) or `${NAME//...}`
    /// (every match); the first `/` is consumed. Pattern and replacement
    /// keep their escapes.
    fn replace(&mut self, name: &str) -> Result<String, SubstError> {
        let all = self.peek() == Some('/');
        if all {
            self.next();
        }
        let (pattern, _) = self.process_until(Some('/'), true).map_err(|e| match e {
            SubstError::MissingBrace if self.peek().is_none() => SubstError::MissingSlash,
            e => e,
        })?;
        let (replacement, _) = self.process_until(Some('}'), true)?;
        let value = self.env(name);
        if value.is_none() && self.skip_unset {
            let slashes = if all { "//" } else { "/" };
            return Ok(format!("${{{name}{slashes}{pattern}/{replacement}}}"));
        }
        Ok(replace_matches(
            &value.unwrap_or_default(),
            &pattern,
            &replacement,
            all,
        ))
    }

    /// A variable name: letters, digits and `_`; a run of digits or one
    /// special parameter (`$@`, `$#`...) when it starts with one.
    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && ch.is_ascii_digit() {
                while let Some(d) = self.peek().filter(char::is_ascii_digit) {
                    name.push(d);
                    self.next();
                }
                return name;
            }
            if name.is_empty() && matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.next();
                return ch.to_string();
            }
            if !ch.is_alphanumeric() && ch != '_' {
                break;
            }
            name.push(ch);
            self.next();
        }
        name
    }
}

/// `${VAR#pat}` / `${VAR##pat}`: drop the shortest (longest) prefix of
/// `value` matching the shell pattern.
fn trim_prefix(value: &str, pattern: &str, greedy: bool) -> String {
    let ends: Vec<usize> = char_boundaries(value);
    let mut candidates: Box<dyn Iterator<Item = &usize>> = if greedy {
        Box::new(ends.iter().rev())
    } else {
        Box::new(ends.iter())
    };
    match candidates.find(|&&end| shell_match(pattern, &value[..end])) {
        Some(&end) => value[end..].to_string(),
        None => value.to_string(),
    }
}

/// `${VAR%pat}` / `${VAR%%pat}`: drop the shortest (longest) suffix.
fn trim_suffix(value: &str, pattern: &str, greedy: bool) -> String {
    let starts: Vec<usize> = char_boundaries(value);
    let mut candidates: Box<dyn Iterator<Item = &usize>> = if greedy {
        Box::new(starts.iter())
    } else {
        Box::new(starts.iter().rev())
    };
    match candidates.find(|&&start| shell_match(pattern, &value[start..])) {
        Some(&start) => value[..start].to_string(),
        None => value.to_string(),
    }
}

/// Replaces the leftmost (then, with `all`, each following) longest match
/// of the shell pattern in `value`.
fn replace_matches(value: &str, pattern: &str, replacement: &str, all: bool) -> String {
    let bounds = char_boundaries(value);
    let mut out = String::new();
    let mut from = 0;
    let mut i = 0;
    while i < bounds.len() {
        let start = bounds[i];
        let end = bounds[i..]
            .iter()
            .rev()
            .find(|&&end| shell_match(pattern, &value[start..end]));
        match end {
            Some(&end) => {
                out += &value[from..start];
                out += replacement;
                from = end;
                if !all {
                    break;
                }
                // An empty match moves on by one character.
                i = bounds
                    .iter()
                    .position(|&b| b == end)
                    .unwrap_or(bounds.len());
                if end == start {
                    i += 1;
                    if let Some(&next) = bounds.get(i) {
                        out += &value[from..next];
                        from = next;
                    }
                }
            }
            None => i += 1,
        }
    }
    out += &value[from.min(value.len())..];
    out
}

fn char_boundaries(s: &str) -> Vec<usize> {
    s.char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(s.len()))
        .collect()
}

/// A shell pattern: `*` any text, `?` one character, `\x` a literal x.
fn shell_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    fn go(p: &[char], t: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('*') => (0..=t.len()).any(|i| go(&p[1..], &t[i..])),
            Some('?') => !t.is_empty() && go(&p[1..], &t[1..]),
            Some('\\') if p.len() > 1 => t.first() == Some(&p[1]) && go(&p[2..], &t[1..]),
            Some(c) => t.first() == Some(c) && go(&p[1..], &t[1..]),
        }
    }
    go(&p, &t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        [
            ("HOME", "/root"),
            ("EMPTY", ""),
            ("SPACED", "a b  c"),
            ("FILE", "archive.tar.gz"),
            ("V", "v1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn words_expand_like_dockers_lexer() {
        let cases: &[(&str, &str)] = &[
            ("plain", "plain"),
            ("$HOME", "/root"),
            ("${HOME}", "/root"),
            ("$HOME/bin", "/root/bin"),
            ("${HOME}bin", "/rootbin"),
            ("$HOMEbin", ""),
            ("$UNSET", ""),
            ("${UNSET}", ""),
            ("a$", "a$"),
            ("$ x", "$ x"),
            ("\\$HOME", "$HOME"),
            ("\\${HOME}", "${HOME}"),
            ("'$HOME'", "$HOME"),
            ("\"$HOME\"", "/root"),
            ("\"a  b\"", "a  b"),
            ("'a\\b'", "a\\b"),
            ("\"a\\b\"", "a\\b"),
            ("\"a\\\"b\"", "a\"b"),
            ("\"a\\$b\"", "a$b"),
            ("\"a\\\\b\"", "a\\b"),
            ("a\\ b", "a b"),
            ("a\\", "a"),
            ("${UNSET:-default}", "default"),
            ("${EMPTY:-default}", "default"),
            ("${EMPTY-default}", ""),
            ("${UNSET-default}", "default"),
            ("${HOME:-default}", "/root"),
            ("${UNSET:+alt}", ""),
            ("${EMPTY:+alt}", ""),
            ("${EMPTY+alt}", "alt"),
            ("${HOME:+alt}", "alt"),
            ("${HOME+alt}", "alt"),
            ("${UNSET:-$HOME}", "/root"),
            ("${UNSET:-${V:+x$V}}", "xv1"),
            ("${UNSET:-'a b'}", "a b"),
            ("${UNSET:-a b}", "a b"),
            ("${HOME?}", "/root"),
            ("${FILE#*.}", "tar.gz"),
            ("${FILE##*.}", "gz"),
            ("${FILE%.*}", "archive.tar"),
            ("${FILE%%.*}", "archive"),
            ("${FILE#nomatch}", "archive.tar.gz"),
            ("${FILE%.t?r.gz}", "archive"),
            ("${FILE:#*.}", "tar.gz"),
            ("${FILE/.tar/}", "archive.gz"),
            ("${FILE/a/A}", "Archive.tar.gz"),
            ("${FILE//a/A}", "Archive.tAr.gz"),
            ("${FILE/*./X}", "Xgz"),
            ("${FILE//[/x}", "archive.tar.gz"),
            ("${HOME/\\//-}", "-root"),
            ("${UNSET/a/b}", ""),
            ("$1", ""),
            ("$@x", "x"),
            ("ä$V", "äv1"),
            ("", ""),
        ];
        let vars = vars();
        for (word, want) in cases {
            assert_eq!(
                expand_word(word, &vars, '\\').as_deref(),
                Ok(*want),
                "expanding {word:?}"
            );
        }
    }

    #[test]
    fn backtick_escape_leaves_backslashes_alone() {
        let vars = vars();
        let cases: &[(&str, &str)] = &[
            ("c:\\dir\\$V", "c:\\dir\\v1"),
            ("`$V", "$V"),
            ("\"a`\"b\"", "a\"b"),
            ("a` b", "a b"),
        ];
        for (word, want) in cases {
            assert_eq!(
                expand_word(word, &vars, '`').as_deref(),
                Ok(*want),
                "{word:?}"
            );
        }
    }

    #[test]
    fn bad_substitutions_are_errors() {
        let vars = vars();
        let cases: &[(&str, SubstError)] = &[
            ("${HOME", SubstError::MissingBrace),
            ("${", SubstError::MissingBrace),
            ("${}", SubstError::BadSubstitution),
            ("${:-x}", SubstError::BadSubstitution),
            ("${{x}}", SubstError::BadSubstitution),
            ("${UNSET:-x", SubstError::MissingBrace),
            ("${HOME:1}", SubstError::UnsupportedModifier(":1".into())),
            ("${HOME/a}", SubstError::MissingSlash),
            ("${HOME/a/b", SubstError::MissingBrace),
            ("${HOME:/a/b}", SubstError::UnsupportedModifier(":/".into())),
            ("${HOME!}", SubstError::UnsupportedModifier("!".into())),
            ("'open", SubstError::Unterminated("single-quote")),
            ("\"open", SubstError::Unterminated("double-quote")),
            (
                "${UNSET?}",
                SubstError::Required {
                    name: "UNSET".into(),
                    message: "is not allowed to be unset".into(),
                },
            ),
            (
                "${EMPTY:?must be set}",
                SubstError::Required {
                    name: "EMPTY".into(),
                    message: "must be set".into(),
                },
            ),
        ];
        for (word, want) in cases {
            assert_eq!(
                expand_word(word, &vars, '\\').as_ref(),
                Err(want),
                "{word:?}"
            );
        }
    }

    #[test]
    fn words_split_at_unquoted_whitespace_including_values() {
        let vars = vars();
        let cases: &[(&str, &[&str])] = &[
            ("a b", &["a", "b"]),
            ("$SPACED", &["a", "b", "c"]),
            ("\"$SPACED\"", &["a b  c"]),
            ("'x y' z", &["x y", "z"]),
            ("80/tcp", &["80/tcp"]),
            ("", &[]),
            ("\"\"", &[]),
            ("$EMPTY", &[]),
        ];
        for (word, want) in cases {
            assert_eq!(
                expand_words(word, &vars, '\\').unwrap(),
                want.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "{word:?}"
            );
        }
    }

    #[test]
    fn layered_lookup_prefers_the_first_layer() {
        let mut env = Vars::new();
        env.set("X", "env");
        let mut args = Vars::new();
        args.set("X", "arg");
        args.set("Y", "arg-y");
        let layers: [&Vars; 2] = [&env, &args];
        assert_eq!(
            expand_word("$X $Y", &Layers(&layers), '\\').unwrap(),
            "env arg-y"
        );
    }

    #[test]
    fn vars_set_again_keep_their_place() {
        let mut v = Vars::new();
        v.set("A", "1");
        v.set("B", "2");
        v.set("A", "3");
        assert_eq!(v.to_env_strings(), ["A=3", "B=2"]);
    }

    #[test]
    fn heredoc_bodies_keep_quotes_and_lose_escapes() {
        let vars = vars();
        assert_eq!(
            expand_heredoc("echo \"$V\" '$V' \\$V a\\\\b\n", &vars).unwrap(),
            "echo \"v1\" 'v1' $V a\\b\n"
        );
    }

    #[test]
    fn raw_words_keep_quotes() {
        assert_eq!(
            raw_words("cat <<\"EOF\" > x"),
            ["cat", "<<\"EOF\"", ">", "x"]
        );
    }
}
