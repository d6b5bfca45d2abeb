//! From Dockerfile text to logical lines, as Docker's parser cuts it:
//! parser directives at the top, comments, line continuations with the
//! escape character (comment and empty lines inside one are skipped),
//! heredoc bodies after the line that opens them. Also the word splitting
//! the instruction parsers share (`parseWords`, builder flags).

use serde::Serialize;

use super::substitute;
use super::ErrorKind;

/// The parser directives of a Dockerfile (`# escape=`, `# syntax=`,
/// `# check=`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Directives {
    /// The escape character: `\` (default) or `` ` ``.
    pub escape: char,
    /// `# syntax=`: recorded, not acted on (hull has one frontend).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syntax: Option<String>,
    /// `# check=`: recorded, not acted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            escape: '\\',
            syntax: None,
            check: None,
        }
    }
}

/// A heredoc: `<<NAME` (or `<<-NAME`, `<<"NAME"`) and the lines after
/// the instruction up to the line holding just NAME.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Heredoc {
    /// The delimiter, quotes removed.
    pub name: String,
    /// The body, each line ending in `\n`; for `<<-` with leading tabs
    /// already removed.
    pub content: String,
    /// False when the delimiter was quoted: the body is taken literally.
    pub expand: bool,
    /// `<<-`: leading tabs stripped from the body and the delimiter line.
    pub chomp: bool,
    /// The file descriptor of `3<<EOF` (0 when not given).
    #[serde(skip_serializing_if = "is_zero")]
    pub fd: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One logical line: an instruction with its continuation lines joined
/// and its heredoc bodies collected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalLine {
    /// The line the instruction starts on (1-based).
    pub line: usize,
    /// The last line it spans (heredoc delimiters included).
    pub end_line: usize,
    /// The joined text, continuation characters removed.
    pub text: String,
    /// Heredocs opened on the line, in order.
    pub heredocs: Vec<Heredoc>,
}

/// Instructions whose line may open heredocs (in shell form only).
const HEREDOC_INSTRUCTIONS: [&str; 3] = ["run", "copy", "add"];

/// Cuts `source` into its directives and logical lines.
pub fn logical_lines(source: &str) -> Result<(Directives, Vec<LogicalLine>), (usize, ErrorKind)> {
    let source = source.strip_prefix('\u{feff}').unwrap_or(source);
    // Heredoc bodies keep a CRLF file's `\r`, as BuildKit keeps them.
    let raw_lines: Vec<&str> = source.split('\n').collect();
    let lines: Vec<&str> = raw_lines
        .iter()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    // A final newline does not start another line.
    let count = if source.ends_with('\n') {
        lines.len() - 1
    } else {
        lines.len()
    };
    let lines = &lines[..count];
    let mut directives = DirectiveParser::default();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let first = lines[i].trim_start();
        i += 1;
        let start = i;
        directives.observe(first).map_err(|e| (start, e))?;
        if is_comment(first) {
            continue;
        }
        let escape = directives.value.escape;
        let (text, mut ended) = trim_continuation(first, escape);
        let mut text = text.to_string();
        if ended && text.is_empty() {
            continue;
        }
        while !ended && i < lines.len() {
            let next = lines[i];
            i += 1;
            // Comment and empty lines inside a continuation are skipped
            // (Docker warns about the empty ones; they are deprecated).
            if is_comment(next) || next.trim().is_empty() {
                continue;
            }
            let (part, end) = trim_continuation(next, escape);
            text += part;
            ended = end;
        }
        let mut heredocs = Vec::new();
        if may_hold_heredocs(&text) {
            for mut heredoc in heredoc_markers(&text) {
                let (content, next) = heredoc_body(lines, &raw_lines, i, &heredoc)
                    .ok_or((start, ErrorKind::UnterminatedHeredoc(heredoc.name.clone())))?;
                heredoc.content = content;
                i = next;
                heredocs.push(heredoc);
            }
        }
        out.push(LogicalLine {
            line: start,
            end_line: i,
            text,
            heredocs,
        });
    }
    Ok((directives.value, out))
}

/// Docker's directive scanner: it looks at lines until the first one that
/// is not a known directive (an instruction, a comment, an unknown
/// directive or an empty line); each directive at most once.
#[derive(Default)]
struct DirectiveParser {
    value: Directives,
    done: bool,
    seen: Vec<String>,
}

impl DirectiveParser {
    fn observe(&mut self, line: &str) -> Result<(), ErrorKind> {
        if self.done {
            return Ok(());
        }
        let Some((name, value)) = directive(line) else {
            self.done = true;
            return Ok(());
        };
        if !matches!(name.as_str(), "escape" | "syntax" | "check") {
            self.done = true;
            return Ok(());
        }
        if self.seen.contains(&name) {
            return Err(ErrorKind::DuplicateDirective(name));
        }
        self.seen.push(name.clone());
        match name.as_str() {
            "escape" => {
                self.value.escape = match value {
                    "\\" => '\\',
                    "`" => '`',
                    other => return Err(ErrorKind::BadEscape(other.to_string())),
                }
            }
            "syntax" => self.value.syntax = Some(value.to_string()),
            _ => self.value.check = Some(value.to_string()),
        }
        Ok(())
    }
}

/// `#[ \t]*name[ \t]*=[ \t]*value[ \t]*` with a name of a letter then
/// letters and digits: the lowercased name and the value.
fn directive(line: &str) -> Option<(String, &str)> {
    let blank = |c: char| c == ' ' || c == '\t';
    let rest = line.strip_prefix('#')?.trim_start_matches(blank);
    let name_len = rest
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
        .map_or(rest.len(), |(i, _)| i);
    if name_len == 0 {
        return None;
    }
    let (name, rest) = rest.split_at(name_len);
    let value = rest
        .trim_start_matches(blank)
        .strip_prefix('=')?
        .trim_matches(blank);
    if value.is_empty() {
        return None;
    }
    Some((name.to_ascii_lowercase(), value))
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// Removes a trailing escape character (and the blanks after it): the
/// text and whether the logical line ends here. As in BuildKit, an escape
/// character after another one is not a continuation (`c:\\` ends the
/// line), unless it is alone on the line.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    match trimmed.strip_suffix(escape) {
        Some(text) if text.is_empty() || !text.ends_with(escape) => (text, false),
        _ => (line, true),
    }
}

/// Whether a joined line is an instruction that may open heredocs.
fn may_hold_heredocs(text: &str) -> bool {
    let keyword = text.split_whitespace().next().unwrap_or("");
    // ONBUILD's trigger may hold them too.
    if keyword.eq_ignore_ascii_case("onbuild") {
        return may_hold_heredocs(text[keyword.len()..].trim_start());
    }
    if !HEREDOC_INSTRUCTIONS.contains(&keyword.to_ascii_lowercase().as_str())
        || !text.contains("<<")
    {
        return false;
    }
    // Exec form (a valid JSON array) never holds heredocs.
    let (_, args) = split_flags(text[keyword.len()..].trim());
    serde_json::from_str::<Vec<String>>(&args).is_err()
}

/// The heredoc markers among the words of `text`, bodies still empty.
pub fn heredoc_markers(text: &str) -> Vec<Heredoc> {
    substitute::raw_words(text)
        .iter()
        .filter_map(|w| heredoc_marker(w))
        .collect()
}

/// `[fd]<<[-]NAME` as one word (`NAME` possibly quoted), like Docker's
/// `^(\d*)<<(-?)([^<]*)$`.
pub fn heredoc_marker(word: &str) -> Option<Heredoc> {
    let at = word.find("<<")?;
    let (fd, rest) = (&word[..at], &word[at + 2..]);
    if !fd.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    if rest.is_empty() || rest.contains('<') {
        return None;
    }
    let unquoted = substitute::unquoted_words(rest, false)?;
    let raw = substitute::unquoted_words(rest, true)?;
    let [name] = unquoted.as_slice() else {
        return None;
    };
    let quotes = |s: &str| s.chars().filter(|&c| c == '"' || c == '\'').count();
    // A quote the lexer removed means part of the delimiter was quoted.
    let expand = raw.len() == 1 && quotes(name) == quotes(&raw[0]);
    Some(Heredoc {
        name: name.clone(),
        content: String::new(),
        expand,
        chomp,
        fd: fd.parse().unwrap_or(0),
    })
}

/// The body of `heredoc` starting at `lines[from]`: its text and the
/// index after the delimiter line, or None when no line ends it.
fn heredoc_body(
    lines: &[&str],
    raw_lines: &[&str],
    from: usize,
    heredoc: &Heredoc,
) -> Option<(String, usize)> {
    let strip = |l: &'_ str| -> String {
        if heredoc.chomp {
            l.trim_start_matches('\t').to_string()
        } else {
            l.to_string()
        }
    };
    let mut content = String::new();
    for (i, line) in lines.iter().enumerate().skip(from) {
        if strip(line) == heredoc.name {
            return Some((content, i + 1));
        }
        content += &strip(raw_lines[i]);
        content.push('\n');
    }
    None
}

/// Splits an instruction's arguments into its leading `--flags` (quotes
/// removed, `\` escaping) and the rest, as Docker's `extractBuilderFlags`.
pub fn split_flags(args: &str) -> (Vec<String>, String) {
    let chars: Vec<char> = args.chars().collect();
    let mut flags = Vec::new();
    let mut pos = 0;
    loop {
        while pos < chars.len() && chars[pos].is_whitespace() {
            pos += 1;
        }
        if pos >= chars.len() {
            return (flags, String::new());
        }
        if !(chars[pos] == '-' && chars.get(pos + 1) == Some(&'-')) {
            return (flags, chars[pos..].iter().collect());
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        while pos < chars.len() {
            let ch = chars[pos];
            match quote {
                None if ch.is_whitespace() => break,
                None if ch == '\'' || ch == '"' => quote = Some(ch),
                Some(q) if ch == q => quote = None,
                _ if ch == '\\' => {
                    pos += 1;
                    if let Some(&c) = chars.get(pos) {
                        word.push(c);
                    }
                }
                _ => word.push(ch),
            }
            pos += 1;
        }
        // `--` alone ends the flags.
        if word == "--" {
            return (flags, chars[pos..].iter().collect::<String>().trim().into());
        }
        flags.push(word);
    }
}

/// Docker's `parseWords`: whitespace-separated words, quotes and escapes
/// kept (the lexer removes them when it expands the word), an escape
/// character ending the text dropped.
pub fn parse_words(text: &str, escape: char) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut blank_ok = false;
    let mut pos = 0;
    while pos < chars.len() {
        let ch = chars[pos];
        if let Some(q) = quote {
            if ch == q {
                quote = None;
            }
            if ch == escape && q != '\'' {
                if pos + 1 == chars.len() {
                    quote = None;
                    pos += 1;
                    continue;
                }
                word.push(ch);
                pos += 1;
                word.push(chars[pos]);
            } else {
                word.push(ch);
            }
            pos += 1;
            continue;
        }
        if !in_word {
            if ch.is_whitespace() {
                pos += 1;
                continue;
            }
            in_word = true;
        }
        if ch.is_whitespace() {
            if blank_ok || !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            in_word = false;
            blank_ok = false;
            pos += 1;
            continue;
        }
        if ch == '\'' || ch == '"' {
            quote = Some(ch);
            blank_ok = true;
        }
        if ch == escape {
            if pos + 1 == chars.len() {
                pos += 1;
                continue;
            }
            word.push(ch);
            pos += 1;
            word.push(chars[pos]);
        } else {
            word.push(ch);
        }
        pos += 1;
    }
    if in_word && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(src: &str) -> Vec<(usize, String)> {
        logical_lines(src)
            .unwrap()
            .1
            .into_iter()
            .map(|l| (l.line, l.text))
            .collect()
    }

    #[test]
    fn continuations_join_lines_and_skip_comments_and_blank_lines() {
        let cases: &[(&str, &[(usize, &str)])] = &[
            ("FROM a\nRUN x\n", &[(1, "FROM a"), (2, "RUN x")]),
            ("RUN a \\\n  b\n", &[(1, "RUN a   b")]),
            ("RUN a \\  \n b\n", &[(1, "RUN a  b")]),
            ("RUN a \\\n# c\n b\n", &[(1, "RUN a  b")]),
            ("RUN a \\\n   # c\n b\n", &[(1, "RUN a  b")]),
            ("RUN a \\\n\n b\n", &[(1, "RUN a  b")]),
            ("RUN a \\\n  \t\n b\n", &[(1, "RUN a  b")]),
            ("  RUN a\n", &[(1, "RUN a")]),
            ("# c\n\nRUN a\n", &[(3, "RUN a")]),
            ("RUN a \\\n", &[(1, "RUN a ")]),
            ("RUN a\r\nRUN b\r\n", &[(1, "RUN a"), (2, "RUN b")]),
            ("\u{feff}FROM a", &[(1, "FROM a")]),
            // An escaped escape character does not continue the line.
            ("RUN a \\\\\nb\n", &[(1, "RUN a \\\\"), (2, "b")]),
            ("RUN a \\\n\\\nb\n", &[(1, "RUN a b")]),
            ("RUN echo '#x'\n", &[(1, "RUN echo '#x'")]),
        ];
        for (src, want) in cases {
            let want: Vec<(usize, String)> =
                want.iter().map(|(l, t)| (*l, t.to_string())).collect();
            assert_eq!(texts(src), want, "{src:?}");
        }
    }

    #[test]
    fn directives_only_at_the_top() {
        let cases: &[(&str, char, Option<&str>)] = &[
            ("# escape=`\nFROM a", '`', None),
            ("# escape=\\\nFROM a", '\\', None),
            ("#escape=`\nFROM a", '`', None),
            ("# escape =`\nFROM a", '`', None),
            ("#\tescape= `\t\nFROM a", '`', None),
            ("# EsCaPe=`\nFROM a", '`', None),
            (
                "# syntax=docker/dockerfile:1\n# escape=`\nFROM a",
                '`',
                Some("docker/dockerfile:1"),
            ),
            // After an instruction, a comment, an empty line or an
            // unknown directive, directives are comments.
            ("FROM a\n# escape=`\n", '\\', None),
            ("# comment\n# escape=`\nFROM a", '\\', None),
            ("\n# escape=`\nFROM a", '\\', None),
            ("# unknown=x\n# escape=`\nFROM a", '\\', None),
            // A line continuation is not part of a directive.
            ("# escape=\\\\\nFROM a", '\\', None),
        ];
        for (src, escape, syntax) in cases {
            match logical_lines(src) {
                Ok((d, _)) => {
                    assert_eq!(d.escape, *escape, "{src:?}");
                    assert_eq!(d.syntax.as_deref(), *syntax, "{src:?}");
                }
                Err(e) => {
                    assert_eq!(*src, "# escape=\\\\\nFROM a", "{src:?}: {e:?}");
                    assert_eq!(e.1, ErrorKind::BadEscape("\\\\".into()));
                }
            }
        }
    }

    #[test]
    fn directive_errors() {
        assert_eq!(
            logical_lines("# escape=\\\n# escape=`\nFROM a").unwrap_err(),
            (2, ErrorKind::DuplicateDirective("escape".into()))
        );
        assert_eq!(
            logical_lines("# escape=x\nFROM a").unwrap_err(),
            (1, ErrorKind::BadEscape("x".into()))
        );
    }

    #[test]
    fn backtick_escape_continues_lines_and_keeps_backslashes() {
        let src = "# escape=`\nFROM microsoft/nanoserver\nCOPY testfile.txt c:\\\nRUN dir c:\\\n";
        assert_eq!(
            texts(src),
            [
                (2, "FROM microsoft/nanoserver".to_string()),
                (3, "COPY testfile.txt c:\\".to_string()),
                (4, "RUN dir c:\\".to_string())
            ]
        );
        // Docker's reference says that without the directive the
        // backslash of `c:\\` continues the COPY line; current BuildKit
        // takes an escaped escape character as no continuation, and only
        // `c:\` at the end of the file continues (into nothing).
        let src = "FROM microsoft/nanoserver\nCOPY testfile.txt c:\\\\\nRUN dir c:\\\n";
        assert_eq!(
            texts(src),
            [
                (1, "FROM microsoft/nanoserver".to_string()),
                (2, "COPY testfile.txt c:\\\\".to_string()),
                (3, "RUN dir c:".to_string())
            ]
        );
        let src = "# escape=`\nRUN a `\n  b\n";
        assert_eq!(texts(src), [(2, "RUN a   b".to_string())]);
    }

    #[test]
    fn heredocs_collect_their_bodies() {
        let src = "RUN <<EOF\necho a\n  echo b\nEOF\nRUN x\n";
        let (_, lines) = logical_lines(src).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].heredocs[0].content, "echo a\n  echo b\n");
        assert_eq!(lines[0].end_line, 4);
        assert_eq!(lines[1].line, 5);

        let src = "RUN <<-EOF\n\techo a\n\t\techo b\n\tEOF\n";
        let (_, lines) = logical_lines(src).unwrap();
        assert_eq!(lines[0].heredocs[0].content, "echo a\necho b\n");
        assert!(lines[0].heredocs[0].chomp);

        // Several on one line, bodies in order.
        let src = "COPY <<A <<B /dst/\na\nA\nb\nB\n";
        let (_, lines) = logical_lines(src).unwrap();
        let bodies: Vec<_> = lines[0]
            .heredocs
            .iter()
            .map(|h| (&h.name[..], &h.content[..]))
            .collect();
        assert_eq!(bodies, [("A", "a\n"), ("B", "b\n")]);

        // Comments inside a body are content.
        let src = "RUN <<EOF\n# not a comment\nEOF\n";
        let (_, lines) = logical_lines(src).unwrap();
        assert_eq!(lines[0].heredocs[0].content, "# not a comment\n");

        // An ONBUILD trigger's heredocs.
        let src = "ONBUILD RUN <<EOF\nx\nEOF\n";
        let (_, lines) = logical_lines(src).unwrap();
        assert_eq!(lines[0].heredocs[0].content, "x\n");

        // CRLF: bodies keep their `\r`; the delimiter line matches without.
        let src = "RUN <<EOF\r\nx\r\nEOF\r\nRUN y\r\n";
        let (_, lines) = logical_lines(src).unwrap();
        assert_eq!(lines[0].heredocs[0].content, "x\r\n");
        assert_eq!(lines[1].text, "RUN y");

        // Not a heredoc instruction / exec form: no bodies.
        let (_, lines) = logical_lines("CMD <<EOF\nRUN x\n").unwrap();
        assert_eq!(lines.len(), 2);
        let (_, lines) = logical_lines("RUN [\"cat\", \"<<EOF\"]\nRUN x\n").unwrap();
        assert_eq!(lines.len(), 2);

        assert_eq!(
            logical_lines("RUN <<EOF\necho\n").unwrap_err(),
            (1, ErrorKind::UnterminatedHeredoc("EOF".into()))
        );
    }

    #[test]
    fn heredoc_markers_parse_like_docker() {
        type Marker<'a> = Option<(&'a str, bool, bool, u32)>;
        let cases: &[(&str, Marker)] = &[
            ("<<EOF", Some(("EOF", true, false, 0))),
            ("<<-EOF", Some(("EOF", true, true, 0))),
            ("<<\"EOF\"", Some(("EOF", false, false, 0))),
            ("<<'EOF'", Some(("EOF", false, false, 0))),
            ("<<-'EOF'", Some(("EOF", false, true, 0))),
            ("<<E\"O\"F", Some(("EOF", false, false, 0))),
            ("3<<EOF", Some(("EOF", true, false, 3))),
            ("<<", None),
            ("<<<EOF", None),
            ("a<<EOF", None),
            ("file", None),
        ];
        for (word, want) in cases {
            let got = heredoc_marker(word).map(|h| (h.name, h.expand, h.chomp, h.fd));
            let want = want.map(|(n, e, c, f)| (n.to_string(), e, c, f));
            assert_eq!(got, want, "{word:?}");
        }
        let names: Vec<_> = heredoc_markers("RUN python3 <<EOF > out && cat <<-'X'")
            .into_iter()
            .map(|h| h.name)
            .collect();
        assert_eq!(names, ["EOF", "X"]);
    }

    #[test]
    fn flags_split_off_the_arguments() {
        let cases: &[(&str, &[&str], &str)] = &[
            ("--from=a b c", &["--from=a"], "b c"),
            (
                "--from=a --chown=1:1 b c",
                &["--from=a", "--chown=1:1"],
                "b c",
            ),
            ("  --link  x", &["--link"], "x"),
            ("--from=\"a b\" x", &["--from=a b"], "x"),
            ("--x='q' y", &["--x=q"], "y"),
            ("--x=a\\ b y", &["--x=a b"], "y"),
            ("-- --notaflag", &[], "--notaflag"),
            ("a --from=x", &[], "a --from=x"),
            ("-x y", &[], "-x y"),
            ("--only", &["--only"], ""),
            ("", &[], ""),
        ];
        for (text, flags, rest) in cases {
            let (f, r) = split_flags(text);
            assert_eq!(
                (f.as_slice(), r.as_str()),
                (
                    &flags.iter().map(|s| s.to_string()).collect::<Vec<_>>()[..],
                    *rest
                ),
                "{text:?}"
            );
        }
    }

    #[test]
    fn parse_words_keeps_quotes_for_the_lexer() {
        let cases: &[(&str, &[&str])] = &[
            ("a b", &["a", "b"]),
            ("  a   b  ", &["a", "b"]),
            ("a=\"x y\" b=z", &["a=\"x y\"", "b=z"]),
            ("a='x y'", &["a='x y'"]),
            ("a=x\\ y", &["a=x\\ y"]),
            ("\"\"", &["\"\""]),
            ("a=\"x\\\"y\"", &["a=\"x\\\"y\""]),
            ("a\\", &["a"]),
            ("", &[]),
        ];
        for (text, want) in cases {
            assert_eq!(parse_words(text, '\\'), *want, "{text:?}");
        }
    }
}
