//! The part of Go's `text/template` that Docker users write in `--format`
//! and `inspect -f`, evaluated over JSON values.
//!
//! Supported: text and `{{ }}` actions with `{{-`/`-}}` trimming and
//! `{{/* comments */}}`; fields (`.`, `.A.B`, `$`, `$x.A`, `(pipeline).A`);
//! string, number, `true`/`false`/`nil` literals; pipelines (`a | f`);
//! `if`/`else if`/`else`, `range` (with `$i, $v :=`), `with`, variables
//! (`$x := ...`); Go's functions `index len print println printf eq ne lt le
//! gt ge and or not` and Docker's `json join split upper lower title
//! truncate pad`. Not supported: `define`/`template`/`block`, methods with
//! arguments, assignment (`=`), `break`/`continue`.
//!
//! Values print as Go prints the decoded JSON Docker's templates see:
//! lists as `[a b]`, objects as `map[k:v]` with sorted keys, a missing value
//! as `<no value>`. gtmpl (crates.io) was evaluated first: it builds, but
//! prints lists and maps in Rust's debug form (`[String("A=1")]`) and
//! ranges over maps in hash order, so `{{.Config.Env}}` would not look like
//! Docker's.

use serde_json::Value;

/// Errors parsing or executing a template.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    /// The template text is malformed.
    #[error("template parsing error: {0}")]
    Parse(String),
    /// The template is well formed but cannot be applied to the data.
    #[error("template: executing: {0}")]
    Exec(String),
}

type Result<T> = std::result::Result<T, TemplateError>;

fn parse_err<T>(msg: impl Into<String>) -> Result<T> {
    Err(TemplateError::Parse(msg.into()))
}

fn exec_err<T>(msg: impl Into<String>) -> Result<T> {
    Err(TemplateError::Exec(msg.into()))
}

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    nodes: Vec<Node>,
    /// A field an object lacks is an error (Docker's typed contexts, such
    /// as `ps`), not `<no value>` (its raw JSON, such as `inspect`).
    strict: bool,
}

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Print(Pipeline),
    If(Pipeline, Vec<Node>, Vec<Node>),
    With(Pipeline, Vec<Node>, Vec<Node>),
    Range(Pipeline, Vec<Node>, Vec<Node>),
}

#[derive(Debug, Clone)]
struct Pipeline {
    /// `$x :=` or `$i, $v :=`.
    decl: Vec<String>,
    cmds: Vec<Vec<Operand>>,
}

#[derive(Debug, Clone)]
enum Operand {
    /// `.A.B` (empty path: `.`).
    Dot(Vec<String>),
    /// `$x.A` (`$` is the data the template was given).
    Var(String, Vec<String>),
    /// `(pipeline).A`.
    Sub(Box<Pipeline>, Vec<String>),
    Func(String),
    Lit(Value),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Pipe,
    Open,
    Close,
    Declare,
    Comma,
    Field(Vec<String>),
    Var(String, Vec<String>),
    Ident(String),
    Lit(Value),
    /// `.A` right after `)`.
    Chain(Vec<String>),
}

impl Template {
    /// Parses `text`; `strict` makes a field missing from an object an error.
    pub fn parse(text: &str, strict: bool) -> Result<Self> {
        let mut items = split_actions(text)?.into_iter();
        let (nodes, end) = parse_list(&mut items)?;
        match end {
            None => {}
            Some(ListEnd::End) => return parse_err("unexpected {{end}}"),
            Some(_) => return parse_err("unexpected {{else}}"),
        }
        Ok(Self { nodes, strict })
    }

    /// Applies the template to `data`.
    pub fn render(&self, data: &Value) -> Result<String> {
        self.apply(data, false)
    }

    /// A table's header row: the template applied to the columns' titles,
    /// with functions passing their argument through (`{{json .Labels}}`
    /// heads its column `LABELS`, as in Docker).
    pub fn render_header(&self, titles: &Value) -> Result<String> {
        self.apply(titles, true)
    }

    fn apply(&self, data: &Value, header: bool) -> Result<String> {
        let mut ex = Exec {
            vars: vec![("$".into(), data.clone())],
            strict: self.strict,
            header,
            out: String::new(),
        };
        ex.walk(&self.nodes, data)?;
        Ok(ex.out)
    }
}

/// A piece of the template: text, or the tokens of one action.
enum Item {
    Text(String),
    Action(Vec<Token>),
}

/// Splits the text into text and actions, applying `{{-`/`-}}` trimming
/// and dropping comments.
fn split_actions(text: &str) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let mut before = &rest[..start];
        let mut inner = &rest[start + 2..];
        if inner.starts_with("- ") || inner.starts_with("-\t") || inner.starts_with("-\n") {
            before = before.trim_end();
            inner = &inner[1..];
        }
        items.push(Item::Text(before.to_string()));
        let close = find_close(inner)?;
        let mut action = &inner[..close];
        rest = &inner[close + 2..];
        if action.ends_with(" -") || action.ends_with("\t-") || action.ends_with("\n-") {
            action = &action[..action.len() - 1];
            rest = rest.trim_start();
        }
        let action = action.trim();
        if action.starts_with("/*") {
            if !action.ends_with("*/") {
                return parse_err("unclosed comment");
            }
            continue;
        }
        items.push(Item::Action(lex(action)?));
    }
    items.push(Item::Text(rest.to_string()));
    Ok(items)
}

/// Where the `}}` closing the action at the start of `s` is, skipping
/// string literals.
fn find_close(s: &str) -> Result<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' | b'`' => i = string_end(s, i)?,
            b'}' if b.get(i + 1) == Some(&b'}') => return Ok(i),
            _ => i += 1,
        }
    }
    parse_err("unclosed action")
}

/// The index after the string literal starting at `start`.
fn string_end(s: &str, start: usize) -> Result<usize> {
    let b = s.as_bytes();
    let quote = b[start];
    let mut i = start + 1;
    while i < b.len() {
        if quote == b'"' && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == quote {
            return Ok(i + 1);
        }
        i += 1;
    }
    parse_err("unterminated quoted string")
}

fn lex(action: &str) -> Result<Vec<Token>> {
    let mut tokens = Vec::new();
    let b = action.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let word_end = |from: usize| {
            action[from..]
                .find(|ch: char| !(ch.is_alphanumeric() || ch == '_' || ch == '.'))
                .map_or(action.len(), |n| from + n)
        };
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'|' => tokens.push(Token::Pipe),
            b'(' => tokens.push(Token::Open),
            b')' => tokens.push(Token::Close),
            b',' => tokens.push(Token::Comma),
            b':' if b.get(i + 1) == Some(&b'=') => {
                tokens.push(Token::Declare);
                i += 1;
            }
            b'"' | b'`' => {
                let end = string_end(action, i)?;
                tokens.push(Token::Lit(Value::String(unquote(&action[i..end])?)));
                i = end;
                continue;
            }
            b'.' => {
                let end = word_end(i + 1);
                let path = fields(&action[i..end])?;
                let after_close = tokens.last() == Some(&Token::Close) && i > 0 && b[i - 1] == b')';
                tokens.push(if after_close {
                    Token::Chain(path)
                } else {
                    Token::Field(path)
                });
                i = end;
                continue;
            }
            b'$' => {
                let (token, end) = lex_var(action, i)?;
                tokens.push(token);
                i = end;
                continue;
            }
            b'-' | b'0'..=b'9' => {
                let (token, end) = lex_number(action, i)?;
                tokens.push(token);
                i = end;
                continue;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let end = word_end(i);
                let word = &action[i..end];
                tokens.push(match word {
                    "true" => Token::Lit(Value::Bool(true)),
                    "false" => Token::Lit(Value::Bool(false)),
                    "nil" => Token::Lit(Value::Null),
                    _ => Token::Ident(word.to_string()),
                });
                i = end;
                continue;
            }
            _ => return parse_err(format!("unexpected {:?} in action", c as char)),
        }
        i += 1;
    }
    Ok(tokens)
}

/// `$x.A.B` at `i`: the token and where it ends.
fn lex_var(action: &str, i: usize) -> Result<(Token, usize)> {
    let name_end = action[i + 1..]
        .find(|ch: char| !(ch.is_alphanumeric() || ch == '_'))
        .map_or(action.len(), |n| i + 1 + n);
    let end = action[name_end..]
        .find(|ch: char| !(ch.is_alphanumeric() || ch == '_' || ch == '.'))
        .map_or(action.len(), |n| name_end + n);
    let path = if end > name_end {
        fields(&action[name_end..end])?
    } else {
        Vec::new()
    };
    Ok((Token::Var(action[i..name_end].to_string(), path), end))
}

/// A number at `i`: the token and where it ends.
fn lex_number(action: &str, i: usize) -> Result<(Token, usize)> {
    let end = action[i + 1..]
        .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '.'))
        .map_or(action.len(), |n| i + 1 + n);
    let n: Value = serde_json::from_str(&action[i..end])
        .map_err(|_| TemplateError::Parse(format!("bad number {:?}", &action[i..end])))?;
    Ok((Token::Lit(n), end))
}

/// `.A.B` as `["A", "B"]`; `.` as `[]`.
fn fields(s: &str) -> Result<Vec<String>> {
    if s == "." {
        return Ok(Vec::new());
    }
    let parts: Vec<String> = s[1..].split('.').map(str::to_string).collect();
    if parts.iter().any(String::is_empty) {
        return parse_err(format!("bad field {s:?}"));
    }
    Ok(parts)
}

/// A Go string literal's value: `"..."` with escapes, or a raw `` `...` ``.
fn unquote(lit: &str) -> Result<String> {
    if let Some(raw) = lit.strip_prefix('`') {
        return Ok(raw.trim_end_matches('`').to_string());
    }
    // Go's escapes are JSON's plus a few; JSON covers what formats use.
    serde_json::from_str(lit).map_err(|_| TemplateError::Parse(format!("bad string {lit}")))
}

/// How a list of nodes ended.
enum ListEnd {
    /// `{{end}}`.
    End,
    /// `{{else}}`.
    Else,
    /// `{{else if X}}`, with X's tokens.
    ElseIf(Vec<Token>),
}

/// Parses nodes until `{{end}}` or `{{else ...}}` (returned) or the end
/// of the template (None).
fn parse_list(items: &mut impl Iterator<Item = Item>) -> Result<(Vec<Node>, Option<ListEnd>)> {
    let mut nodes = Vec::new();
    while let Some(item) = items.next() {
        let tokens = match item {
            Item::Text(t) => {
                if !t.is_empty() {
                    nodes.push(Node::Text(t));
                }
                continue;
            }
            Item::Action(tokens) => tokens,
        };
        let keyword = match tokens.first() {
            Some(Token::Ident(k)) => k.as_str(),
            None => return parse_err("missing value for command"),
            _ => "",
        };
        match keyword {
            "end" => return Ok((nodes, Some(ListEnd::End))),
            "else" => return Ok((nodes, Some(else_kind(&tokens[1..])?))),
            "if" | "range" | "with" => nodes.push(parse_block(keyword, &tokens[1..], items)?),
            "define" | "template" | "block" | "break" | "continue" => {
                return parse_err(format!(
                    "{{{{{keyword}}}}} is not supported by hull's templates"
                ));
            }
            _ => nodes.push(Node::Print(parse_pipeline(&tokens)?)),
        }
    }
    Ok((nodes, None))
}

/// `{{else}}` or `{{else if X}}`.
fn else_kind(tokens: &[Token]) -> Result<ListEnd> {
    match tokens.first() {
        None => Ok(ListEnd::Else),
        Some(Token::Ident(k)) if k == "if" => Ok(ListEnd::ElseIf(tokens[1..].to_vec())),
        _ => parse_err("only {{else}} and {{else if ...}} are supported"),
    }
}

/// An `if`/`range`/`with` block: its pipeline, body and else part.
fn parse_block(
    keyword: &str,
    tokens: &[Token],
    items: &mut impl Iterator<Item = Item>,
) -> Result<Node> {
    let unclosed = || {
        parse_err(format!(
            "unexpected EOF: {{{{{keyword}}}}} without {{{{end}}}}"
        ))
    };
    let pipe = parse_pipeline(tokens)?;
    let (body, end) = parse_list(items)?;
    let otherwise = match end {
        Some(ListEnd::End) => Vec::new(),
        Some(ListEnd::Else) => match parse_list(items)? {
            (nodes, Some(ListEnd::End)) => nodes,
            _ => return unclosed(),
        },
        // `{{else if b}}...{{end}}` is `{{else}}{{if b}}...{{end}}{{end}}`:
        // the nested block takes the shared `{{end}}`.
        Some(ListEnd::ElseIf(cond)) => vec![parse_block("if", &cond, items)?],
        None => return unclosed(),
    };
    Ok(match keyword {
        "if" => Node::If(pipe, body, otherwise),
        "with" => Node::With(pipe, body, otherwise),
        _ => Node::Range(pipe, body, otherwise),
    })
}

fn parse_pipeline(tokens: &[Token]) -> Result<Pipeline> {
    let mut decl = Vec::new();
    let mut body = tokens;
    if let Some(pos) = tokens.iter().position(|t| *t == Token::Declare) {
        for t in &tokens[..pos] {
            match t {
                Token::Var(name, path) if path.is_empty() => decl.push(name.clone()),
                Token::Comma => {}
                _ => return parse_err("bad variable declaration"),
            }
        }
        body = &tokens[pos + 1..];
    }
    let mut cmds = Vec::new();
    let mut pos = 0;
    loop {
        let (cmd, next) = parse_command(body, pos)?;
        cmds.push(cmd);
        match body.get(next) {
            Some(Token::Pipe) => pos = next + 1,
            None => break,
            Some(t) => return parse_err(format!("unexpected {t:?} in pipeline")),
        }
    }
    Ok(Pipeline { decl, cmds })
}

/// One command of a pipeline from `tokens[pos..]`: its operands and where
/// it ended (a `|`, a `)` or the end).
fn parse_command(tokens: &[Token], mut pos: usize) -> Result<(Vec<Operand>, usize)> {
    let mut ops = Vec::new();
    while let Some(t) = tokens.get(pos) {
        let op = match t {
            Token::Pipe | Token::Close => break,
            Token::Field(p) => Operand::Dot(p.clone()),
            Token::Var(n, p) => Operand::Var(n.clone(), p.clone()),
            Token::Ident(f) => Operand::Func(f.clone()),
            Token::Lit(v) => Operand::Lit(v.clone()),
            Token::Open => {
                let close = matching_close(tokens, pos)?;
                let inner = parse_pipeline(&tokens[pos + 1..close])?;
                pos = close;
                let chain = match tokens.get(close + 1) {
                    Some(Token::Chain(p)) => {
                        pos += 1;
                        p.clone()
                    }
                    _ => Vec::new(),
                };
                Operand::Sub(Box::new(inner), chain)
            }
            t => return parse_err(format!("unexpected {t:?}")),
        };
        ops.push(op);
        pos += 1;
    }
    if ops.is_empty() {
        return parse_err("missing value for command");
    }
    Ok((ops, pos))
}

fn matching_close(tokens: &[Token], open: usize) -> Result<usize> {
    let mut depth = 0;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        match t {
            Token::Open => depth += 1,
            Token::Close => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i);
                }
            }
            _ => {}
        }
    }
    parse_err("unclosed left paren")
}

/// The functions Docker adds to Go's.
const DOCKER_FUNCS: [&str; 8] = [
    "json", "join", "split", "upper", "lower", "title", "truncate", "pad",
];

/// The state of one rendering.
struct Exec {
    /// Variables in scope, innermost last.
    vars: Vec<(String, Value)>,
    strict: bool,
    /// Rendering a header row: functions return their argument.
    header: bool,
    out: String,
}

impl Exec {
    fn walk(&mut self, nodes: &[Node], dot: &Value) -> Result<()> {
        for node in nodes {
            let scope = self.vars.len();
            match node {
                Node::Text(t) => self.out.push_str(t),
                Node::Print(p) => {
                    let v = self.pipeline(p, dot)?;
                    if p.decl.is_empty() {
                        self.out.push_str(&print_top(&v));
                    }
                    // A declaration lives to the end of the enclosing block.
                    continue;
                }
                Node::If(p, body, otherwise) => {
                    let v = self.pipeline(p, dot)?;
                    self.walk(if truth(&v) { body } else { otherwise }, dot)?;
                }
                Node::With(p, body, otherwise) => {
                    let v = self.pipeline(p, dot)?;
                    if truth(&v) {
                        self.walk(body, &v)?;
                    } else {
                        self.walk(otherwise, dot)?;
                    }
                }
                Node::Range(p, body, otherwise) => self.range(p, body, otherwise, dot)?,
            }
            self.vars.truncate(scope);
        }
        Ok(())
    }

    fn range(
        &mut self,
        p: &Pipeline,
        body: &[Node],
        otherwise: &[Node],
        dot: &Value,
    ) -> Result<()> {
        let bare = Pipeline {
            decl: Vec::new(),
            cmds: p.cmds.clone(),
        };
        let v = self.pipeline(&bare, dot)?;
        let entries: Vec<(Value, Value)> = match &v {
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, e)| (Value::from(i), e.clone()))
                .collect(),
            // serde_json's maps are sorted, as Go ranges over maps.
            Value::Object(m) => m
                .iter()
                .map(|(k, e)| (Value::String(k.clone()), e.clone()))
                .collect(),
            Value::Null => Vec::new(),
            other => return exec_err(format!("range can't iterate over {}", print_top(other))),
        };
        if entries.is_empty() {
            return self.walk(otherwise, dot);
        }
        for (key, elem) in entries {
            let scope = self.vars.len();
            match p.decl.as_slice() {
                [] => {}
                [v] => self.vars.push((v.clone(), elem.clone())),
                [k, v, ..] => {
                    self.vars.push((k.clone(), key));
                    self.vars.push((v.clone(), elem.clone()));
                }
            }
            self.walk(body, &elem)?;
            self.vars.truncate(scope);
        }
        Ok(())
    }

    fn pipeline(&mut self, p: &Pipeline, dot: &Value) -> Result<Value> {
        let mut piped: Option<Value> = None;
        for cmd in &p.cmds {
            piped = Some(self.command(cmd, dot, piped)?);
        }
        let v = piped.unwrap_or(Value::Null);
        for name in &p.decl {
            self.vars.push((name.clone(), v.clone()));
        }
        Ok(v)
    }

    fn command(&mut self, cmd: &[Operand], dot: &Value, piped: Option<Value>) -> Result<Value> {
        if let Operand::Func(name) = &cmd[0] {
            let mut args = cmd[1..]
                .iter()
                .map(|o| self.operand(o, dot))
                .collect::<Result<Vec<_>>>()?;
            args.extend(piped);
            // Docker's own functions give a header its title unchanged;
            // Go's (`printf`, `index`, ...) work on it as on a row.
            if self.header && DOCKER_FUNCS.contains(&name.as_str()) {
                return Ok(args.into_iter().next().unwrap_or(Value::Null));
            }
            return call(name, &args);
        }
        if cmd.len() > 1 || piped.is_some() {
            return exec_err("can't give argument to non-function");
        }
        self.operand(&cmd[0], dot)
    }

    fn operand(&mut self, op: &Operand, dot: &Value) -> Result<Value> {
        match op {
            Operand::Dot(path) => self.field(dot, path),
            Operand::Var(name, path) => {
                let Some((_, v)) = self.vars.iter().rev().find(|(n, _)| n == name) else {
                    return exec_err(format!("undefined variable: {name}"));
                };
                let v = v.clone();
                self.field(&v, path)
            }
            Operand::Sub(p, path) => {
                let v = self.pipeline(p, dot)?;
                self.field(&v, path)
            }
            Operand::Func(name) => call(name, &[]),
            Operand::Lit(v) => Ok(v.clone()),
        }
    }

    fn field(&self, v: &Value, path: &[String]) -> Result<Value> {
        let mut cur = v.clone();
        for name in path {
            cur = match cur {
                Value::Object(mut m) => match m.remove(name) {
                    Some(v) => v,
                    None if self.strict => return exec_err(format!("can't evaluate field {name}")),
                    None => Value::Null,
                },
                Value::Null => Value::Null,
                other => {
                    return exec_err(format!(
                        "can't evaluate field {name} in {}",
                        print_top(&other)
                    ))
                }
            };
        }
        Ok(cur)
    }
}

/// Go's truth: false, 0, nil and empty strings, lists and maps are false.
fn truth(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
    }
}

/// How an action prints its value: Go's `%v`, with `<no value>` for none.
fn print_top(v: &Value) -> String {
    match v {
        Value::Null => "<no value>".into(),
        other => print_go(other),
    }
}

/// Go's `%v` of a decoded JSON value.
fn print_go(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Array(a) => format!("[{}]", a.iter().map(print_go).collect::<Vec<_>>().join(" ")),
        Value::Object(m) => format!(
            "map[{}]",
            m.iter()
                .map(|(k, v)| format!("{k}:{}", print_go(v)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    }
}

fn call(name: &str, args: &[Value]) -> Result<Value> {
    let arity = |n: usize| {
        if args.len() == n {
            Ok(())
        } else {
            exec_err(format!(
                "wrong number of args for {name}: want {n} got {}",
                args.len()
            ))
        }
    };
    Ok(match name {
        "json" => {
            arity(1)?;
            Value::String(serde_json::to_string(&args[0]).unwrap_or_default())
        }
        "index" => return index(args),
        "len" => {
            arity(1)?;
            Value::from(match &args[0] {
                Value::String(s) => s.len(),
                Value::Array(a) => a.len(),
                Value::Object(m) => m.len(),
                Value::Null => 0,
                other => return exec_err(format!("len of {}", print_go(other))),
            })
        }
        "join" | "split" | "upper" | "lower" | "title" | "truncate" | "pad" => {
            return call_text(name, args)
        }
        "print" => Value::String(go_print(args)),
        "println" => Value::String(args.iter().map(print_go).collect::<Vec<_>>().join(" ") + "\n"),
        "printf" => return printf(args),
        "not" => {
            arity(1)?;
            Value::Bool(!truth(&args[0]))
        }
        "and" => args
            .iter()
            .find(|a| !truth(a))
            .or(args.last())
            .cloned()
            .unwrap_or(Value::Null),
        "or" => args
            .iter()
            .find(|a| truth(a))
            .or(args.last())
            .cloned()
            .unwrap_or(Value::Null),
        "eq" | "ne" | "lt" | "le" | "gt" | "ge" => return compare(name, args),
        other => return exec_err(format!("function {other:?} not defined")),
    })
}

/// Docker's string functions.
fn call_text(name: &str, args: &[Value]) -> Result<Value> {
    let arity = |n: usize| {
        if args.len() == n {
            Ok(())
        } else {
            exec_err(format!(
                "wrong number of args for {name}: want {n} got {}",
                args.len()
            ))
        }
    };
    let text = |i: usize| args.get(i).map(print_go).unwrap_or_default();
    Ok(match name {
        "join" => {
            arity(2)?;
            let parts: Vec<String> = match &args[0] {
                Value::Array(a) => a.iter().map(print_go).collect(),
                Value::Null => Vec::new(),
                other => vec![print_go(other)],
            };
            Value::String(parts.join(&text(1)))
        }
        "split" => {
            arity(2)?;
            Value::Array(text(0).split(&text(1)).map(Value::from).collect())
        }
        "upper" => {
            arity(1)?;
            Value::String(text(0).to_uppercase())
        }
        "lower" => {
            arity(1)?;
            Value::String(text(0).to_lowercase())
        }
        "title" => {
            arity(1)?;
            Value::String(title(&text(0)))
        }
        "truncate" => {
            arity(2)?;
            let n = args[1].as_u64().unwrap_or(0) as usize;
            Value::String(text(0).chars().take(n).collect())
        }
        "pad" => {
            arity(3)?;
            let (l, r) = (args[1].as_u64().unwrap_or(0), args[2].as_u64().unwrap_or(0));
            Value::String(format!(
                "{}{}{}",
                " ".repeat(l as usize),
                text(0),
                " ".repeat(r as usize)
            ))
        }
        other => return exec_err(format!("function {other:?} not defined")),
    })
}

/// Go's `print`: spaces only between operands when neither is a string.
fn go_print(args: &[Value]) -> String {
    let mut out = String::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 && !a.is_string() && !args[i - 1].is_string() {
            out.push(' ');
        }
        out.push_str(&print_go(a));
    }
    out
}

/// `index X k1 k2...`: a list element or a map value; a key a map lacks
/// gives "", as Docker's string maps (labels) do.
fn index(args: &[Value]) -> Result<Value> {
    let Some((first, keys)) = args.split_first() else {
        return exec_err("wrong number of args for index: want at least 1 got 0");
    };
    let mut cur = first.clone();
    for k in keys {
        cur = match (&cur, k) {
            (Value::Array(a), Value::Number(n)) => match n.as_u64().and_then(|i| a.get(i as usize))
            {
                Some(v) => v.clone(),
                None => return exec_err(format!("index out of range: {n}")),
            },
            (Value::Object(m), Value::String(s)) => m
                .get(s)
                .cloned()
                .unwrap_or_else(|| Value::String(String::new())),
            (Value::Null, _) => Value::String(String::new()),
            (c, k) => return exec_err(format!("can't index {} with {}", print_go(c), print_go(k))),
        };
    }
    Ok(cur)
}

fn compare(op: &str, args: &[Value]) -> Result<Value> {
    let [a, rest @ ..] = args else {
        return exec_err(format!("missing argument for {op}"));
    };
    if rest.is_empty() {
        return exec_err(format!("missing argument for {op}"));
    }
    if op == "eq" {
        return Ok(Value::Bool(rest.iter().any(|b| same(a, b))));
    }
    let b = &rest[0];
    if op == "ne" {
        return Ok(Value::Bool(!same(a, b)));
    }
    let ord = match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64().partial_cmp(&y.as_f64()),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    };
    let Some(ord) = ord else {
        return exec_err(format!("incompatible types for comparison: {op}"));
    };
    use std::cmp::Ordering::*;
    Ok(Value::Bool(match op {
        "lt" => ord == Less,
        "le" => ord != Greater,
        "gt" => ord == Greater,
        _ => ord != Less,
    }))
}

/// Equality as Go compares basic values: numbers by value.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Docker's `title`: the first letter of each word in upper case.
fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut start = true;
    for c in s.chars() {
        if start {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        start = c.is_whitespace();
    }
    out
}

/// `printf` with the verbs formats use: `%s %v %d %q %%` and a width
/// (`%-20s`, `%5d`).
fn printf(args: &[Value]) -> Result<Value> {
    let Some((Value::String(fmt), rest)) = args.split_first() else {
        return exec_err("printf needs a format string");
    };
    let mut rest = rest.iter();
    let mut out = String::new();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = String::new();
        while let Some(&d) = chars.peek() {
            if d == '-' || d.is_ascii_digit() {
                spec.push(d);
                chars.next();
            } else {
                break;
            }
        }
        let verb = chars.next().unwrap_or('%');
        if verb == '%' {
            out.push('%');
            continue;
        }
        let arg = rest.next().cloned().unwrap_or(Value::Null);
        let s = match verb {
            'q' => serde_json::to_string(&print_go(&arg)).unwrap_or_default(),
            's' | 'v' | 'd' => print_go(&arg),
            other => return exec_err(format!("printf verb %{other} is not supported")),
        };
        let width: usize = spec.trim_start_matches('-').parse().unwrap_or(0);
        let pad = " ".repeat(width.saturating_sub(s.chars().count()));
        if spec.starts_with('-') {
            out.push_str(&s);
            out.push_str(&pad);
        } else {
            out.push_str(&pad);
            out.push_str(&s);
        }
    }
    Ok(Value::String(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(t: &str, data: &Value) -> String {
        Template::parse(t, false).unwrap().render(data).unwrap()
    }

    fn inspected() -> Value {
        json!({
            "Id": "abc123",
            "Name": "/web",
            "State": {"Pid": 4242, "Running": true, "ExitCode": 0, "Status": "running"},
            "Config": {
                "Env": ["PATH=/bin", "GREETING=hi"],
                "Labels": {"app": "web", "tier": "front"},
                "Cmd": ["sh", "-c", "echo hi"],
            },
            "NetworkSettings": {"Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}},
        })
    }

    #[test]
    fn fields_and_go_printing() {
        let d = inspected();
        assert_eq!(render("{{.State.Pid}}", &d), "4242");
        assert_eq!(render("{{.Name}} {{.State.Running}}", &d), "/web true");
        assert_eq!(render("{{.Config.Env}}", &d), "[PATH=/bin GREETING=hi]");
        assert_eq!(render("{{.Config.Labels}}", &d), "map[app:web tier:front]");
        assert_eq!(render("{{.Nope}}", &d), "<no value>");
        assert_eq!(render("{{.}}", &json!("x")), "x");
    }

    #[test]
    fn range_index_and_variables() {
        let d = inspected();
        assert_eq!(
            render("{{range .Config.Env}}{{.}} {{end}}", &d),
            "PATH=/bin GREETING=hi "
        );
        assert_eq!(render(r#"{{index .Config.Labels "app"}}"#, &d), "web");
        assert_eq!(render(r#"{{index .Config.Labels "none"}}"#, &d), "");
        assert_eq!(render("{{index .Config.Cmd 2}}", &d), "echo hi");
        assert_eq!(
            render(
                "{{range $k, $v := .Config.Labels}}{{$k}}={{$v}};{{end}}",
                &d
            ),
            "app=web;tier=front;"
        );
        assert_eq!(
            render(
                r#"{{range $p, $b := .NetworkSettings.Ports}}{{$p}} -> {{(index $b 0).HostPort}}{{end}}"#,
                &d
            ),
            "80/tcp -> 8080"
        );
        assert_eq!(render("{{$n := .Name}}{{$n}}{{$.Id}}", &d), "/webabc123");
        assert_eq!(render("{{range .Missing}}x{{else}}none{{end}}", &d), "none");
    }

    #[test]
    fn functions_and_pipelines() {
        let d = inspected();
        assert_eq!(
            render("{{json .State}}", &d),
            r#"{"ExitCode":0,"Pid":4242,"Running":true,"Status":"running"}"#
        );
        assert_eq!(render(r#"{{join .Config.Cmd ","}}"#, &d), "sh,-c,echo hi");
        assert_eq!(render("{{.Name | upper}}", &d), "/WEB");
        assert_eq!(render("{{len .Config.Env}}", &d), "2");
        assert_eq!(render(r#"{{printf "%-6s|%3d" .Id 7}}"#, &d), "abc123|  7");
        assert_eq!(render("{{title \"hello world\"}}", &d), "Hello World");
        assert_eq!(render("{{truncate .Id 3}}", &d), "abc");
        assert_eq!(render(r#"{{split "a:b" ":"}}"#, &d), "[a b]");
    }

    #[test]
    fn conditions_and_trimming() {
        let d = inspected();
        assert_eq!(
            render("{{if .State.Running}}up{{else}}down{{end}}", &d),
            "up"
        );
        assert_eq!(
            render(
                r#"{{if eq .State.ExitCode 1}}one{{else if eq .State.ExitCode 0}}zero{{else}}other{{end}}"#,
                &d
            ),
            "zero"
        );
        assert_eq!(render("{{with .State}}{{.Pid}}{{end}}", &d), "4242");
        assert_eq!(render("a  {{- .Id -}}  b", &d), "aabc123b");
        assert_eq!(render("{{/* a comment */}}x", &d), "x");
        assert_eq!(
            render("{{if and .State.Running (not .Nope)}}y{{end}}", &d),
            "y"
        );
    }

    #[test]
    fn errors_are_one_line() {
        let d = inspected();
        for bad in [
            "{{.Id",
            "{{if .Id}}x",
            "{{end}}",
            "{{nosuch .Id}}",
            "{{template \"x\"}}",
        ] {
            let r = Template::parse(bad, false).and_then(|t| t.render(&d));
            let e = r.unwrap_err().to_string();
            assert!(!e.contains('\n'), "{bad}: {e}");
        }
        let strict = Template::parse("{{.Nmes}}", true).unwrap();
        assert_eq!(
            strict.render(&d).unwrap_err(),
            TemplateError::Exec("can't evaluate field Nmes".into())
        );
    }
}
