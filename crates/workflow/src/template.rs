//! The template language: `{{ path }}` in strings, and `if` conditions over the same paths
//! (grammar and meaning in the crate README).
//!
//! Why a hand-written parser: the language is a dozen productions, and what we need from it
//! is not what general engines give. `minijinja` and `tera` are general-purpose template
//! languages (loops, filters, macros: the scripting the issue rules out) and render to
//! strings, while a whole-string template here yields the JSON value itself; JSONPath crates
//! (`serde_json_path`, `jsonpath-rust`) speak `$.a.b` and have no conditions. Deploy-time
//! checks also need the parsed paths (which step does a template name?), which none of them
//! exposes. Every input is bounded ([`TEMPLATE_LEN_MAX`], [`EXPR_DEPTH_MAX`],
//! [`PATH_SEGMENTS_MAX`]) and every error is a value, never a panic.

use serde_json::Value;
use std::borrow::Cow;
use std::fmt;

use crate::error::{Code, Error};
use crate::scope::RunScope;
use crate::spec::TEMPLATE_LEN_MAX;

/// Nesting of `!`, `(` and operators in one condition at most.
pub const EXPR_DEPTH_MAX: usize = 32;
/// Segments of one path (`a.b[0]` has three) at most.
pub const PATH_SEGMENTS_MAX: usize = 32;

/// `root.key[0]["other key"]`: a root name and what follows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Path {
    pub root: String,
    pub segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// A parsed condition (or a template's single expression).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Expr {
    Path(Path),
    Literal(Value),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Compare(CompareOp, Box<Expr>, Box<Expr>),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A string with `{{ ... }}` expressions in it.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Text(String),
    Expr(Expr),
}

/// A parsed `if` condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    expr: Expr,
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.root)?;
        for segment in &self.segments {
            match segment {
                Segment::Key(k) if is_plain_key(k) => write!(f, ".{k}")?,
                Segment::Key(k) => write!(f, "[{}]", Value::String(k.clone()))?,
                Segment::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn is_plain_key(key: &str) -> bool {
    !key.is_empty() && key.chars().all(is_key_char)
}

/// Follows `segments` into `value`; `None` where a key or index is missing or the value has
/// no such part.
pub(crate) fn follow<'v>(mut value: &'v Value, segments: &[Segment]) -> Option<&'v Value> {
    for segment in segments {
        value = match (segment, value) {
            (Segment::Key(k), Value::Object(map)) => map.get(k)?,
            (Segment::Index(i), Value::Array(items)) => items.get(*i)?,
            _ => return None,
        };
    }
    Some(value)
}

impl Template {
    /// Parses a string; one without `{{` is plain text. Errors are `invalid_input`, or
    /// `too_large` over a limit.
    pub fn parse(text: &str) -> Result<Template, Error> {
        check_len(text)?;
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let Some(close) = after.find("}}") else {
                let at = text.len() - rest.len() + open;
                let message = format!("`{{{{` at byte {at} has no closing `}}}}`");
                return Err(Error::new(Code::InvalidInput, "", message));
            };
            let inner = &after[..close];
            let mut parser = Parser::new(inner);
            let expr = parser
                .whole_operand()
                .map_err(|e| parser.failure(format!("in `{{{{{inner}}}}}`: {e}")))?;
            parts.push(Part::Expr(expr));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// Whether the template has no expression at all.
    pub fn is_plain(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// Every path the template names, in order.
    pub fn paths(&self) -> Vec<&Path> {
        let mut out = Vec::new();
        for part in &self.parts {
            if let Part::Expr(e) = part {
                e.paths(&mut out);
            }
        }
        out
    }

    /// Renders the template. A template that is exactly one expression yields the value
    /// itself; otherwise values are written into the string (strings as they are, anything
    /// else as compact JSON). A path that names nothing in this run is an error.
    pub(crate) fn render(&self, scope: &RunScope<'_>) -> Result<Value, String> {
        if let [Part::Expr(e)] = self.parts.as_slice() {
            return e.value(scope, Missing::Error).map(Cow::into_owned);
        }
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Expr(e) => match e.value(scope, Missing::Error)?.as_ref() {
                    Value::String(s) => out.push_str(s),
                    other => out.push_str(&other.to_string()),
                },
            }
        }
        Ok(Value::String(out))
    }
}

impl Condition {
    /// Parses a condition, written bare (`steps.a.output.n > 3`) or inside `{{ }}`.
    pub fn parse(text: &str) -> Result<Condition, Error> {
        check_len(text)?;
        let trimmed = text.trim();
        let inner = trimmed
            .strip_prefix("{{")
            .and_then(|t| t.strip_suffix("}}"))
            .unwrap_or(trimmed);
        let mut parser = Parser::new(inner);
        let expr = parser
            .expr(0)
            .and_then(|expr| parser.end().map(|()| expr))
            .map_err(|e| parser.failure(e))?;
        Ok(Condition { expr })
    }

    /// Every path the condition names, in order.
    pub fn paths(&self) -> Vec<&Path> {
        let mut out = Vec::new();
        self.expr.paths(&mut out);
        out
    }

    /// Whether the condition holds. A path that names nothing in this run is `null`.
    pub(crate) fn holds(&self, scope: &RunScope<'_>) -> Result<bool, String> {
        self.expr.truth(scope)
    }
}

fn check_len(text: &str) -> Result<(), Error> {
    if text.len() > TEMPLATE_LEN_MAX {
        let message = format!(
            "{} bytes long, over the limit of {TEMPLATE_LEN_MAX}",
            text.len()
        );
        return Err(Error::new(Code::TooLarge, "", message));
    }
    Ok(())
}

/// What a path that names nothing in this run gives.
#[derive(Clone, Copy, PartialEq)]
enum Missing {
    Error,
    Null,
}

/// JSON truthiness: `null`, `false`, `0`, `""`, `[]` and `{}` are false.
pub fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// How a value's type reads in a sentence (`a list`, `null`).
pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

impl Expr {
    fn paths<'e>(&'e self, out: &mut Vec<&'e Path>) {
        match self {
            Expr::Path(p) => out.push(p),
            Expr::Literal(_) => {}
            Expr::Not(e) => e.paths(out),
            Expr::And(a, b) | Expr::Or(a, b) | Expr::Compare(_, a, b) => {
                a.paths(out);
                b.paths(out);
            }
        }
    }

    fn value<'s>(
        &'s self,
        scope: &'s RunScope<'s>,
        missing: Missing,
    ) -> Result<Cow<'s, Value>, String> {
        match self {
            Expr::Path(path) => match scope.lookup(path)? {
                Some(v) => Ok(v),
                None if missing == Missing::Null => Ok(Cow::Owned(Value::Null)),
                None => Err(format!("`{path}` names nothing in this run")),
            },
            Expr::Literal(v) => Ok(Cow::Borrowed(v)),
            other => other.truth(scope).map(|b| Cow::Owned(Value::Bool(b))),
        }
    }

    fn truth(&self, scope: &RunScope<'_>) -> Result<bool, String> {
        match self {
            Expr::Path(_) | Expr::Literal(_) => {
                Ok(truthy(self.value(scope, Missing::Null)?.as_ref()))
            }
            Expr::Not(e) => Ok(!e.truth(scope)?),
            Expr::And(a, b) => Ok(a.truth(scope)? && b.truth(scope)?),
            Expr::Or(a, b) => Ok(a.truth(scope)? || b.truth(scope)?),
            Expr::Compare(op, a, b) => {
                let a = a.value(scope, Missing::Null)?;
                let b = b.value(scope, Missing::Null)?;
                compare(*op, &a, &b)
            }
        }
    }
}

fn compare(op: CompareOp, a: &Value, b: &Value) -> Result<bool, String> {
    use std::cmp::Ordering;
    let ordering = match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            x.partial_cmp(&y)
        }
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    };
    match op {
        CompareOp::Eq => Ok(ordering.map_or(a == b, |o| o == Ordering::Equal)),
        CompareOp::Ne => Ok(ordering.map_or(a != b, |o| o != Ordering::Equal)),
        _ => {
            let Some(o) = ordering else {
                return Err(format!(
                    "cannot order {} and {} (only two numbers or two strings)",
                    type_name(a),
                    type_name(b)
                ));
            };
            Ok(match op {
                CompareOp::Lt => o == Ordering::Less,
                CompareOp::Le => o != Ordering::Greater,
                CompareOp::Gt => o == Ordering::Greater,
                _ => o != Ordering::Less,
            })
        }
    }
}

/// A recursive-descent parser over one expression's text.
struct Parser<'t> {
    text: &'t str,
    pos: usize,
    /// Set when the error is a limit (depth, path length) rather than bad syntax.
    over_limit: bool,
}

impl<'t> Parser<'t> {
    fn new(text: &'t str) -> Parser<'t> {
        Parser {
            text,
            pos: 0,
            over_limit: false,
        }
    }

    /// The error to give for `message`: `too_large` over a limit, else `invalid_input`.
    fn failure(&self, message: String) -> Error {
        let code = if self.over_limit {
            Code::TooLarge
        } else {
            Code::InvalidInput
        };
        Error::new(code, "", message)
    }

    fn too_deep(&mut self) -> String {
        self.over_limit = true;
        format!("nested deeper than {EXPR_DEPTH_MAX}")
    }

    fn rest(&self) -> &'t str {
        &self.text[self.pos..]
    }

    fn skip_space(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_space();
        self.rest().chars().next()
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_space();
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn error(&self, what: &str) -> String {
        match self.rest().chars().next() {
            Some(c) => format!("{what} at byte {}, found `{c}`", self.pos),
            None => format!("{what} at the end"),
        }
    }

    fn end(&mut self) -> Result<(), String> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.error("unexpected text")),
        }
    }

    /// A template's expression: one operand, the whole of the text.
    fn whole_operand(&mut self) -> Result<Expr, String> {
        if self.peek().is_none() {
            return Err("an empty expression".into());
        }
        let expr = self.operand(0)?;
        self.end()?;
        Ok(expr)
    }

    fn expr(&mut self, depth: usize) -> Result<Expr, String> {
        if depth > EXPR_DEPTH_MAX {
            return Err(self.too_deep());
        }
        let mut left = self.and(depth + 1)?;
        while self.eat("||") {
            let right = self.and(depth + 1)?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<Expr, String> {
        let mut left = self.unary(depth + 1)?;
        while self.eat("&&") {
            let right = self.unary(depth + 1)?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, String> {
        if depth > EXPR_DEPTH_MAX {
            return Err(self.too_deep());
        }
        self.skip_space();
        if self.rest().starts_with('!') && !self.rest().starts_with("!=") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.unary(depth + 1)?)));
        }
        let left = self.operand(depth)?;
        let op = if self.eat("==") {
            CompareOp::Eq
        } else if self.eat("!=") {
            CompareOp::Ne
        } else if self.eat("<=") {
            CompareOp::Le
        } else if self.eat(">=") {
            CompareOp::Ge
        } else if self.eat("<") {
            CompareOp::Lt
        } else if self.eat(">") {
            CompareOp::Gt
        } else {
            return Ok(left);
        };
        let right = self.operand(depth)?;
        Ok(Expr::Compare(op, Box::new(left), Box::new(right)))
    }

    fn operand(&mut self, depth: usize) -> Result<Expr, String> {
        match self.peek() {
            Some('(') => {
                self.pos += 1;
                let inner = self.expr(depth + 1)?;
                if !self.eat(")") {
                    return Err(self.error("expected `)`"));
                }
                Ok(inner)
            }
            Some(q @ ('\'' | '"')) => {
                self.pos += 1;
                Ok(Expr::Literal(Value::String(self.string(q)?)))
            }
            Some(c) if c.is_ascii_digit() || c == '-' => self.number(),
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                let word = self.word();
                match word {
                    "true" => Ok(Expr::Literal(Value::Bool(true))),
                    "false" => Ok(Expr::Literal(Value::Bool(false))),
                    "null" => Ok(Expr::Literal(Value::Null)),
                    root => {
                        let root = root.to_string();
                        self.path(root).map(Expr::Path)
                    }
                }
            }
            _ => Err(self.error("expected a path, a string, a number, true, false or null")),
        }
    }

    fn word(&mut self) -> &'t str {
        let rest = self.rest();
        let len = rest.find(|c: char| !is_key_char(c)).unwrap_or(rest.len());
        self.pos += len;
        &rest[..len]
    }

    fn path(&mut self, root: String) -> Result<Path, String> {
        let mut segments = Vec::new();
        loop {
            // No spaces inside a path: `a . b` is not one.
            if self.rest().starts_with('.') {
                self.pos += 1;
                let key = self.word();
                if key.is_empty() {
                    return Err(self.error("expected a key after `.`"));
                }
                segments.push(Segment::Key(key.to_string()));
            } else if self.rest().starts_with('[') {
                self.pos += 1;
                let segment = match self.peek() {
                    Some(q @ ('\'' | '"')) => {
                        self.pos += 1;
                        Segment::Key(self.string(q)?)
                    }
                    Some(c) if c.is_ascii_digit() => {
                        let digits = self.word();
                        let index = digits
                            .parse::<usize>()
                            .map_err(|_| format!("`{digits}` is not a list index"))?;
                        Segment::Index(index)
                    }
                    _ => return Err(self.error("expected an index or a quoted key after `[`")),
                };
                if !self.eat("]") {
                    return Err(self.error("expected `]`"));
                }
                segments.push(segment);
            } else {
                break;
            }
            if segments.len() > PATH_SEGMENTS_MAX {
                self.over_limit = true;
                return Err(format!("a path longer than {PATH_SEGMENTS_MAX} segments"));
            }
        }
        Ok(Path { root, segments })
    }

    /// A quoted string after its opening quote `q`; `\` escapes the next character.
    fn string(&mut self, q: char) -> Result<String, String> {
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            if c == q {
                self.pos += i + c.len_utf8();
                return Ok(out);
            }
            if c == '\\' {
                match chars.next() {
                    Some((_, escaped)) => out.push(escaped),
                    None => break,
                }
            } else {
                out.push(c);
            }
        }
        Err(format!(
            "a string opened at byte {} is not closed",
            self.pos - 1
        ))
    }

    fn number(&mut self) -> Result<Expr, String> {
        let rest = self.rest();
        let len = rest
            .char_indices()
            .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || (i == 0 && c == '-')))
            .map_or(rest.len(), |(i, _)| i);
        let text = &rest[..len];
        let value: Value = serde_json::from_str(text)
            .ok()
            .filter(Value::is_number)
            .ok_or_else(|| format!("`{text}` is not a number"))?;
        self.pos += len;
        Ok(Expr::Literal(value))
    }
}
