//! The Event Grid authorization model (broker-spec §6.3): client groups defined by queries over
//! a client's attributes and authentication name, topic spaces made of topic templates, and
//! permission bindings that grant a group `Publisher` or `Subscriber` on a topic space.
//!
//! It is the second [`crate::auth::Authorizer`] next to the AIO rules of [`crate::authz`]; a
//! `BrokerAuthorization` whose spec holds `eventGrid` (instead of `authorizationPolicies`)
//! compiles to an [`EventGridPolicy`]. Like the AIO model it is compiled once at load, then
//! once per client at CONNECT into [`EventGridPermissions`] (a publish trie and a list of
//! subscribe filters with every template variable already substituted), so PUBLISH and
//! SUBSCRIBE are checked locally without evaluating a query.
//!
//! Semantics (allow-only, see `docs/authorization.md`):
//! - the client's authentication name is the principal's username, or the principal attribute
//!   named by `authenticationNameAttribute`; a client without one is refused;
//! - a client is in every group whose query holds, and always in `$all`;
//! - CONNECT is allowed when at least one of its groups has at least one binding;
//! - PUBLISH: the topic must match a template of a space bound `Publisher` to one of its
//!   groups; SUBSCRIBE: the filter (the inner filter of `$share/g/...`) must be covered by a
//!   template of a space bound `Subscriber`;
//! - `${client.authenticationName}` and `${client.attributes.NAME}` may be a whole segment or
//!   part of one; a template whose variable is missing, empty, array-valued or contains `/`,
//!   `+`, `#` does not apply to the client (a value must never widen what a template grants).
//!
//! What it is not: a client registry (authentication decides who exists and which attributes
//! it has), the resolution of the authentication name from certificate fields (the X509
//! method), nor the enforcement of `maxSessionsPerAuthenticationName` and of session ownership
//! (the router's job; this module only validates the setting and exposes it).

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use mqtt::topic;
use serde_json::Value;

use crate::auth::Principal;
use crate::authz::AuthzError;

/// The built-in group every client belongs to.
pub const ALL_GROUP: &str = "$all";
/// Event Grid's default for `maximumClientSessionsPerAuthenticationName`.
pub const DEFAULT_MAX_SESSIONS: u32 = 1;
/// Event Grid's upper bound for the same setting.
pub const MAX_SESSIONS_LIMIT: u32 = 100;
/// Parentheses and `not` nest at most this deep, so that a hostile query cannot exhaust the
/// stack of the parser or of the evaluator.
const MAX_QUERY_DEPTH: usize = 32;

// ------------------------------------------------------------------------------------------
// Attribute values

/// An attribute as a query sees it. Attributes reach the broker as strings; a value written
/// `[a,b]` or as a JSON array `["a","b"]` is a list (the form authentication methods use for
/// string-array claims), everything else a single value.
#[derive(Debug, PartialEq, Eq)]
enum AttrValue<'a> {
    Scalar(&'a str),
    List(Vec<String>),
}

fn attr_value(text: &str) -> AttrValue<'_> {
    let trimmed = text.trim();
    let Some(inner) = trimmed
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
    else {
        return AttrValue::Scalar(text);
    };
    if let Ok(items) = serde_json::from_str::<Vec<Value>>(trimmed) {
        return AttrValue::List(
            items
                .into_iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s),
                    Value::Number(n) => Some(n.to_string()),
                    // Event Grid attributes are strings, integers or string arrays; anything
                    // else cannot be compared to a literal.
                    _ => None,
                })
                .collect(),
        );
    }
    if inner.trim().is_empty() {
        return AttrValue::List(Vec::new());
    }
    AttrValue::List(
        inner
            .split(',')
            .map(|item| {
                let item = item.trim();
                let unquoted = ['"', '\'']
                    .iter()
                    .find_map(|q| item.strip_prefix(*q).and_then(|i| i.strip_suffix(*q)));
                unquoted.unwrap_or(item).to_string()
            })
            .collect(),
    )
}

/// What the policy needs to know about one client.
struct Client<'a> {
    authentication_name: &'a str,
    attributes: &'a BTreeMap<String, String>,
}

// ------------------------------------------------------------------------------------------
// Client group queries

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Operand {
    AuthenticationName,
    Attribute(String),
}

/// A literal with its integer reading, if it has one: comparisons are numeric when both sides
/// are integers, whichever way the literal was written (`5` or `"5"`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Literal {
    text: String,
    int: Option<i64>,
}

impl Literal {
    fn new(text: String) -> Literal {
        let int = text.parse().ok();
        Literal { text, int }
    }

    fn compare(&self, value: &str) -> Ordering {
        match (value.parse::<i64>().ok(), self.int) {
            (Some(a), Some(b)) => a.cmp(&b),
            _ => value.cmp(self.text.as_str()),
        }
    }

    fn holds(&self, value: &str, op: CmpOp) -> bool {
        let ord = self.compare(value);
        match op {
            CmpOp::Eq => ord == Ordering::Equal,
            CmpOp::Ne => ord != Ordering::Equal,
            CmpOp::Lt => ord == Ordering::Less,
            CmpOp::Gt => ord == Ordering::Greater,
            CmpOp::Le => ord != Ordering::Greater,
            CmpOp::Ge => ord != Ordering::Less,
        }
    }
}

/// A compiled client group query.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Query {
    All,
    Compare(Operand, CmpOp, Literal),
    In(Operand, Vec<Literal>),
    Not(Box<Query>),
    And(Vec<Query>),
    Or(Vec<Query>),
}

impl Query {
    fn eval(&self, client: &Client<'_>) -> bool {
        match self {
            Query::All => true,
            Query::Compare(operand, op, lit) => match operand_value(operand, client) {
                // A missing attribute makes every comparison false, `<>` included.
                None => false,
                Some(AttrValue::Scalar(v)) => lit.holds(v, *op),
                // On a list, `<>` means "no element equals"; every other operator "some
                // element satisfies", which is what makes `attributes.tags = "a"` membership.
                Some(AttrValue::List(items)) if *op == CmpOp::Ne => {
                    !items.iter().any(|i| lit.holds(i, CmpOp::Eq))
                }
                Some(AttrValue::List(items)) => items.iter().any(|i| lit.holds(i, *op)),
            },
            Query::In(operand, lits) => {
                let member = |v: &str| lits.iter().any(|l| l.holds(v, CmpOp::Eq));
                match operand_value(operand, client) {
                    None => false,
                    Some(AttrValue::Scalar(v)) => member(v),
                    Some(AttrValue::List(items)) => items.iter().any(|i| member(i)),
                }
            }
            Query::Not(q) => !q.eval(client),
            Query::And(qs) => qs.iter().all(|q| q.eval(client)),
            Query::Or(qs) => qs.iter().any(|q| q.eval(client)),
        }
    }
}

fn operand_value<'a>(operand: &Operand, client: &Client<'a>) -> Option<AttrValue<'a>> {
    match operand {
        // An authentication name is always one value, whatever it looks like.
        Operand::AuthenticationName => Some(AttrValue::Scalar(client.authentication_name)),
        Operand::Attribute(name) => client.attributes.get(name).map(|v| attr_value(v)),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Op(CmpOp),
    Str(String),
    Int(String),
    Word(String),
    All,
    End,
}

#[derive(Debug)]
struct Token {
    tok: Tok,
    /// Byte offset in the query.
    at: usize,
}

/// A parse problem at a byte offset of the query.
#[derive(Debug)]
struct QueryError {
    at: usize,
    message: String,
}

impl QueryError {
    fn new(at: usize, message: impl Into<String>) -> QueryError {
        QueryError {
            at,
            message: message.into(),
        }
    }

    /// `at column N: ...`, N counted in characters from 1, as an editor shows it.
    fn reason(&self, query: &str) -> String {
        let column = query.get(..self.at).map_or(0, |s| s.chars().count()) + 1;
        format!("at column {column}: {}", self.message)
    }
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

fn lex(query: &str) -> Result<Vec<Token>, QueryError> {
    let mut tokens = Vec::new();
    let mut chars = query.char_indices().peekable();
    while let Some(&(at, c)) = chars.peek() {
        let single = |tok| Token { tok, at };
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' | '[' | ']' | ',' => {
                chars.next();
                tokens.push(single(match c {
                    '(' => Tok::LParen,
                    ')' => Tok::RParen,
                    '[' => Tok::LBracket,
                    ']' => Tok::RBracket,
                    _ => Tok::Comma,
                }));
            }
            '=' | '<' | '>' | '!' => {
                chars.next();
                let next = chars.peek().map(|&(_, n)| n);
                let (op, two) = match (c, next) {
                    ('=', _) => (CmpOp::Eq, false),
                    ('<', Some('>')) => (CmpOp::Ne, true),
                    ('<', Some('=')) => (CmpOp::Le, true),
                    ('<', _) => (CmpOp::Lt, false),
                    ('>', Some('=')) => (CmpOp::Ge, true),
                    ('>', _) => (CmpOp::Gt, false),
                    ('!', Some('=')) => (CmpOp::Ne, true),
                    _ => return Err(QueryError::new(at, "'!' must be followed by '='")),
                };
                if two {
                    chars.next();
                }
                tokens.push(single(Tok::Op(op)));
            }
            '"' | '\'' => {
                chars.next();
                let mut text = String::new();
                let mut closed = false;
                while let Some((_, ch)) = chars.next() {
                    match ch {
                        ch if ch == c => {
                            closed = true;
                            break;
                        }
                        // A backslash takes the next character literally, so a quote of
                        // either kind can be written inside a string.
                        '\\' => match chars.next() {
                            Some((_, escaped)) => text.push(escaped),
                            None => break,
                        },
                        ch => text.push(ch),
                    }
                }
                if !closed {
                    return Err(QueryError::new(at, "unterminated string"));
                }
                tokens.push(single(Tok::Str(text)));
            }
            c if c == '-' || c.is_ascii_digit() => {
                let mut end = at;
                let mut first = true;
                while let Some(&(i, ch)) = chars.peek() {
                    if ch.is_ascii_alphanumeric() || ch == '_' || (first && ch == '-') {
                        end = i + ch.len_utf8();
                        chars.next();
                        first = false;
                    } else {
                        break;
                    }
                }
                let text = &query[at..end];
                match text.parse::<i64>() {
                    Ok(_) => tokens.push(single(Tok::Int(text.to_string()))),
                    Err(_) if text.len() > 1 && text[1..].bytes().all(|b| b.is_ascii_digit()) => {
                        return Err(QueryError::new(
                            at,
                            format!("{text} is out of range for a 64-bit integer"),
                        ));
                    }
                    Err(_) => {
                        return Err(QueryError::new(at, format!("{text:?} is not a number")));
                    }
                }
            }
            '$' => {
                chars.next();
                let mut end = at + 1;
                while let Some(&(i, ch)) = chars.peek() {
                    if is_word_char(ch) {
                        end = i + ch.len_utf8();
                        chars.next();
                    } else {
                        break;
                    }
                }
                let word = &query[at..end];
                if word != ALL_GROUP {
                    return Err(QueryError::new(
                        at,
                        format!("unknown name {word:?}; the only '$' name is $all"),
                    ));
                }
                tokens.push(single(Tok::All));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut end = at;
                while let Some(&(i, ch)) = chars.peek() {
                    if is_word_char(ch) {
                        end = i + ch.len_utf8();
                        chars.next();
                    } else {
                        break;
                    }
                }
                tokens.push(single(Tok::Word(query[at..end].to_string())));
            }
            other => {
                return Err(QueryError::new(
                    at,
                    format!("unexpected character {other:?}"),
                ));
            }
        }
    }
    tokens.push(Token {
        tok: Tok::End,
        at: query.len(),
    });
    Ok(tokens)
}

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::LParen => "'('".into(),
        Tok::RParen => "')'".into(),
        Tok::LBracket => "'['".into(),
        Tok::RBracket => "']'".into(),
        Tok::Comma => "','".into(),
        Tok::Op(op) => format!(
            "'{}'",
            match op {
                CmpOp::Eq => "=",
                CmpOp::Ne => "<>",
                CmpOp::Lt => "<",
                CmpOp::Gt => ">",
                CmpOp::Le => "<=",
                CmpOp::Ge => ">=",
            }
        ),
        Tok::Str(s) => format!("string {s:?}"),
        Tok::Int(i) => format!("number {i}"),
        Tok::Word(w) => format!("'{w}'"),
        Tok::All => "$all".into(),
        Tok::End => "the end of the query".into(),
    }
}

/// Recursive descent over the token list:
///
/// ```text
/// query   := or
/// or      := and ("or" and)*
/// and     := unary ("and" unary)*
/// unary   := "not" unary | primary
/// primary := "(" or ")" | "$all" | operand cmp literal | operand ["not"] "in" list
/// operand := "authenticationName" | "attributes." NAME
/// list    := "[" literal ("," literal)* "]"
/// literal := string | integer
/// ```
///
/// Keywords are case-insensitive; `and` binds tighter than `or`, as in Event Grid.
struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        // `lex` always ends the list with `End`, and `bump` never moves past it.
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn bump(&mut self) -> &Token {
        let i = self.pos.min(self.tokens.len() - 1);
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        &self.tokens[i]
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(&self.peek().tok, Tok::Word(w) if w.eq_ignore_ascii_case(word))
    }

    fn keyword_at(&self, offset: usize, word: &str) -> bool {
        matches!(
            self.tokens.get(self.pos + offset).map(|t| &t.tok),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case(word)
        )
    }

    fn unexpected(&self, expected: &str) -> QueryError {
        let t = self.peek();
        QueryError::new(
            t.at,
            format!("expected {expected}, found {}", describe(&t.tok)),
        )
    }

    fn enter(&mut self) -> Result<(), QueryError> {
        self.depth += 1;
        if self.depth > MAX_QUERY_DEPTH {
            return Err(QueryError::new(
                self.peek().at,
                format!("nested more than {MAX_QUERY_DEPTH} levels deep"),
            ));
        }
        Ok(())
    }

    fn parse(mut self) -> Result<Query, QueryError> {
        let q = self.or()?;
        if self.peek().tok != Tok::End {
            return Err(self.unexpected("'and', 'or' or the end of the query"));
        }
        Ok(q)
    }

    fn or(&mut self) -> Result<Query, QueryError> {
        self.joined("or", Self::and, Query::Or)
    }

    fn and(&mut self) -> Result<Query, QueryError> {
        self.joined("and", Self::unary, Query::And)
    }

    /// `operand (word operand)*`; a single operand stands for itself.
    fn joined(
        &mut self,
        word: &str,
        operand: fn(&mut Self) -> Result<Query, QueryError>,
        join: fn(Vec<Query>) -> Query,
    ) -> Result<Query, QueryError> {
        let mut terms = vec![operand(self)?];
        while self.keyword(word) {
            self.bump();
            terms.push(operand(self)?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            join(terms)
        })
    }

    fn unary(&mut self) -> Result<Query, QueryError> {
        if self.keyword("not") {
            self.bump();
            self.enter()?;
            let q = self.unary()?;
            self.depth -= 1;
            return Ok(Query::Not(Box::new(q)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Query, QueryError> {
        const START: &str = "attributes.NAME, authenticationName, $all, 'not' or '('";
        let at = self.peek().at;
        match self.peek().tok.clone() {
            Tok::LParen => {
                self.bump();
                self.enter()?;
                let q = self.or()?;
                self.depth -= 1;
                if self.peek().tok != Tok::RParen {
                    return Err(self.unexpected("')'"));
                }
                self.bump();
                Ok(q)
            }
            Tok::All => {
                self.bump();
                Ok(Query::All)
            }
            Tok::Word(w) => {
                let operand = if w == "authenticationName" {
                    Operand::AuthenticationName
                } else if let Some(name) = w.strip_prefix("attributes.") {
                    if let Err(reason) = check_attribute_name(name) {
                        return Err(QueryError::new(at, reason));
                    }
                    Operand::Attribute(name.to_string())
                } else if ["and", "or", "in"]
                    .iter()
                    .any(|k| w.eq_ignore_ascii_case(k))
                {
                    return Err(self.unexpected(START));
                } else {
                    return Err(QueryError::new(
                        at,
                        format!(
                            "unknown operand {w:?}; expected attributes.NAME or authenticationName"
                        ),
                    ));
                };
                self.bump();
                self.condition(operand, &w)
            }
            _ => Err(self.unexpected(START)),
        }
    }

    fn condition(&mut self, operand: Operand, name: &str) -> Result<Query, QueryError> {
        if let Tok::Op(op) = self.peek().tok {
            self.bump();
            let lit = self.literal()?;
            return Ok(Query::Compare(operand, op, lit));
        }
        if self.keyword("in") {
            self.bump();
            return Ok(Query::In(operand, self.list()?));
        }
        if self.keyword("not") && self.keyword_at(1, "in") {
            self.bump();
            self.bump();
            return Ok(Query::Not(Box::new(Query::In(operand, self.list()?))));
        }
        Err(self.unexpected(&format!(
            "a comparison (=, <>, !=, <, >, <=, >=) or IN after {name}"
        )))
    }

    fn literal(&mut self) -> Result<Literal, QueryError> {
        match self.peek().tok.clone() {
            Tok::Str(s) => {
                self.bump();
                Ok(Literal::new(s))
            }
            Tok::Int(i) => {
                self.bump();
                Ok(Literal::new(i))
            }
            _ => Err(self.unexpected("a string or an integer")),
        }
    }

    fn list(&mut self) -> Result<Vec<Literal>, QueryError> {
        if self.peek().tok != Tok::LBracket {
            return Err(self.unexpected("'[' starting the list of values"));
        }
        self.bump();
        let mut items = vec![self.literal()?];
        loop {
            match self.peek().tok {
                Tok::Comma => {
                    self.bump();
                    items.push(self.literal()?);
                }
                Tok::RBracket => {
                    self.bump();
                    return Ok(items);
                }
                _ => return Err(self.unexpected("',' or ']'")),
            }
        }
    }
}

fn parse_query(query: &str) -> Result<Query, String> {
    let tokens = lex(query).map_err(|e| e.reason(query))?;
    if tokens.len() == 1 {
        return Err("empty query; use $all for every client".into());
    }
    Parser {
        tokens,
        pos: 0,
        depth: 0,
    }
    .parse()
    .map_err(|e| e.reason(query))
}

/// Attribute names in queries and templates: the characters Event Grid allows in attribute
/// keys, plus '-' which AIO authentication methods produce.
fn check_attribute_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an attribute name is missing after 'attributes.'".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "attribute name {name:?}: use letters, digits, '_' and '-'"
        ));
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Topic templates

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    AuthenticationName,
    Attribute(String),
}

/// A topic filter with `${client.*}` variables, each inside one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TopicTemplate {
    pieces: Vec<Piece>,
}

impl TopicTemplate {
    fn parse(text: &str) -> Result<TopicTemplate, String> {
        if text.starts_with("$share/") {
            return Err("a topic template is a topic filter, not a shared subscription".into());
        }
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                pieces.push(Piece::Text(rest[..start].to_string()));
            }
            let column = text.len() - rest.len() + start;
            let column = text[..column].chars().count() + 1;
            let Some(len) = rest[start..].find('}') else {
                return Err(format!("at column {column}: unclosed '${{'"));
            };
            let var = &rest[start + 2..start + len];
            pieces.push(if var == "client.authenticationName" {
                Piece::AuthenticationName
            } else if let Some(name) = var.strip_prefix("client.attributes.") {
                check_attribute_name(name).map_err(|e| format!("at column {column}: {e}"))?;
                Piece::Attribute(name.to_string())
            } else {
                return Err(format!(
                    "at column {column}: unknown variable ${{{var}}}; expected \
                     ${{client.authenticationName}} or ${{client.attributes.NAME}}"
                ));
            });
            rest = &rest[start + len + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        // The shape is checked with a plain value in place of each variable: a variable is
        // then just part of a segment, and `+`/`#` glued to it are rejected like any other
        // wildcard that is not a whole segment.
        let probe: String = pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.as_str(),
                _ => "x",
            })
            .collect();
        topic::validate_topic_filter(&probe)
            .map_err(|e| format!("{text:?} is not a topic filter: {e}"))?;
        Ok(TopicTemplate { pieces })
    }

    /// The filter for one client; `None` when the template does not apply to it.
    fn render(&self, client: &Client<'_>) -> Option<String> {
        let mut out = String::new();
        for piece in &self.pieces {
            let value = match piece {
                Piece::Text(t) => {
                    out.push_str(t);
                    continue;
                }
                Piece::AuthenticationName => client.authentication_name,
                Piece::Attribute(name) => {
                    let v = client.attributes.get(name)?;
                    // A list has no single value to put into a topic.
                    if matches!(attr_value(v), AttrValue::List(_)) {
                        return None;
                    }
                    v.as_str()
                }
            };
            // A value must name something inside the segment the template reserves for it:
            // '/' would reach other levels, '+' and '#' other clients' topics, and an empty
            // value a topic nobody meant to grant.
            if value.is_empty() || value.contains(['/', '+', '#', '\0']) {
                return None;
            }
            out.push_str(value);
        }
        topic::validate_topic_filter(&out).ok()?;
        Some(out)
    }
}

// ------------------------------------------------------------------------------------------
// The policy

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Publisher,
    Subscriber,
}

#[derive(Debug)]
struct ClientGroup {
    name: String,
    query: Query,
}

#[derive(Debug)]
struct TopicSpace {
    name: String,
    templates: Vec<TopicTemplate>,
}

/// Which group a binding names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GroupRef {
    All,
    Defined(usize),
}

#[derive(Debug)]
struct Binding {
    group: GroupRef,
    space: usize,
    permission: Permission,
}

/// A compiled `BrokerAuthorization` of the Event Grid model.
#[derive(Debug)]
pub struct EventGridPolicy {
    pub name: String,
    authentication_name_attribute: Option<String>,
    max_sessions_per_authentication_name: u32,
    groups: Vec<ClientGroup>,
    spaces: Vec<TopicSpace>,
    bindings: Vec<Binding>,
}

/// Collects every problem of a spec, each with its field.
struct Errors<'a> {
    policy: &'a str,
    list: Vec<AuthzError>,
}

impl Errors<'_> {
    fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.list.push(AuthzError {
            policy: self.policy.to_string(),
            field: field.into(),
            reason: reason.into(),
        });
    }

    /// Unknown keys are errors: a misspelt `topicTemplate` would otherwise silently grant
    /// nothing.
    fn known_keys(&mut self, map: &serde_json::Map<String, Value>, at: &str, known: &[&str]) {
        for key in map.keys() {
            if !known.contains(&key.as_str()) {
                self.push(
                    format!("{at}.{key}"),
                    format!("unknown field; expected one of {}", known.join(", ")),
                );
            }
        }
    }

    /// The list at `v`, or empty (with an error unless it is absent).
    fn list<'v>(&mut self, v: Option<&'v Value>, at: &str) -> &'v [Value] {
        match v {
            None | Some(Value::Null) => &[],
            Some(Value::Array(items)) => items,
            Some(_) => {
                self.push(at, "must be a list");
                &[]
            }
        }
    }

    /// `items[i]` as a map, or an error.
    fn map<'v>(&mut self, v: &'v Value, at: &str) -> Option<&'v serde_json::Map<String, Value>> {
        let m = v.as_object();
        if m.is_none() {
            self.push(at, "must be a map");
        }
        m
    }

    fn string<'v>(
        &mut self,
        map: &'v serde_json::Map<String, Value>,
        key: &str,
        at: &str,
    ) -> Option<&'v str> {
        match map.get(key) {
            None | Some(Value::Null) => {
                self.push(format!("{at}.{key}"), "required");
                None
            }
            Some(Value::String(s)) => Some(s),
            Some(_) => {
                self.push(format!("{at}.{key}"), "must be a string");
                None
            }
        }
    }
}

/// Group, topic space and binding names, as Event Grid has them: 3–50 letters, digits, '-'.
fn check_name(name: &str) -> Result<(), String> {
    let ok = (3..=50).contains(&name.chars().count())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?}: a name is 3 to 50 letters, digits or '-'"
        ))
    }
}

/// Reads `name` of an entry and checks it is valid and not taken.
fn entry_name(
    errors: &mut Errors<'_>,
    map: &serde_json::Map<String, Value>,
    at: &str,
    taken: &mut HashMap<String, usize>,
    index: usize,
) -> Option<String> {
    let name = errors.string(map, "name", at)?;
    if let Err(reason) = check_name(name) {
        errors.push(format!("{at}.name"), reason);
        return None;
    }
    if let Some(first) = taken.insert(name.to_string(), index) {
        errors.push(
            format!("{at}.name"),
            format!("{name:?} is already the name of entry [{first}]"),
        );
        return None;
    }
    Some(name.to_string())
}

impl EventGridPolicy {
    /// Compiles `spec` (with its `eventGrid` map) of a `BrokerAuthorization` named `name`. All
    /// problems are reported, each naming its field.
    pub fn compile(name: &str, spec: &Value) -> Result<EventGridPolicy, Vec<AuthzError>> {
        let mut errors = Errors {
            policy: name,
            list: Vec::new(),
        };
        const ROOT: &str = "spec.eventGrid";
        let Some(eg) = spec.get("eventGrid").and_then(Value::as_object) else {
            errors.push(ROOT, "required, a map");
            return Err(errors.list);
        };
        errors.known_keys(
            eg,
            ROOT,
            &[
                "authenticationNameAttribute",
                "clientGroups",
                "topicSpaces",
                "permissionBindings",
                "maxSessionsPerAuthenticationName",
            ],
        );

        let authentication_name_attribute = match eg.get("authenticationNameAttribute") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(_) => {
                errors.push(
                    format!("{ROOT}.authenticationNameAttribute"),
                    "must be a non-empty attribute name",
                );
                None
            }
        };

        let max_sessions_per_authentication_name = match eg.get("maxSessionsPerAuthenticationName")
        {
            None | Some(Value::Null) => DEFAULT_MAX_SESSIONS,
            Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) if (1..=MAX_SESSIONS_LIMIT).contains(&n) => n,
                _ => {
                    errors.push(
                        format!("{ROOT}.maxSessionsPerAuthenticationName"),
                        format!("{v}: must be an integer from 1 to {MAX_SESSIONS_LIMIT}"),
                    );
                    DEFAULT_MAX_SESSIONS
                }
            },
        };

        let mut groups = Vec::new();
        let mut group_names = HashMap::new();
        let items = errors.list(eg.get("clientGroups"), &format!("{ROOT}.clientGroups"));
        for (i, item) in items.iter().enumerate() {
            let at = format!("{ROOT}.clientGroups[{i}]");
            let Some(map) = errors.map(item, &at) else {
                continue;
            };
            errors.known_keys(map, &at, &["name", "query", "description"]);
            if map.get("name").and_then(Value::as_str) == Some(ALL_GROUP) {
                errors.push(
                    format!("{at}.name"),
                    format!(
                        "{ALL_GROUP} is the built-in group of every client; it cannot be defined"
                    ),
                );
                continue;
            }
            let name = entry_name(&mut errors, map, &at, &mut group_names, i);
            let query = errors.string(map, "query", &at).and_then(|q| {
                parse_query(q)
                    .map_err(|reason| errors.push(format!("{at}.query"), reason))
                    .ok()
            });
            if let (Some(name), Some(query)) = (name, query) {
                groups.push(ClientGroup { name, query });
            }
        }

        let mut spaces = Vec::new();
        let mut space_names = HashMap::new();
        let items = errors.list(eg.get("topicSpaces"), &format!("{ROOT}.topicSpaces"));
        for (i, item) in items.iter().enumerate() {
            let at = format!("{ROOT}.topicSpaces[{i}]");
            let Some(map) = errors.map(item, &at) else {
                continue;
            };
            errors.known_keys(map, &at, &["name", "topicTemplates", "description"]);
            let name = entry_name(&mut errors, map, &at, &mut space_names, i);
            let tat = format!("{at}.topicTemplates");
            match map.get("topicTemplates") {
                None | Some(Value::Null) => errors.push(&tat, "required"),
                Some(Value::Array(a)) if a.is_empty() => {
                    errors.push(&tat, "needs at least one topic template")
                }
                _ => {}
            }
            let raw = errors.list(map.get("topicTemplates"), &tat);
            let mut templates = Vec::new();
            for (j, t) in raw.iter().enumerate() {
                match t.as_str() {
                    Some(text) => match TopicTemplate::parse(text) {
                        Ok(t) => templates.push(t),
                        Err(reason) => errors.push(format!("{tat}[{j}]"), reason),
                    },
                    None => errors.push(format!("{tat}[{j}]"), "must be a string"),
                }
            }
            if let Some(name) = name {
                spaces.push(TopicSpace { name, templates });
            }
        }

        let mut bindings = Vec::new();
        let mut binding_names = HashMap::new();
        let items = errors.list(
            eg.get("permissionBindings"),
            &format!("{ROOT}.permissionBindings"),
        );
        for (i, item) in items.iter().enumerate() {
            let at = format!("{ROOT}.permissionBindings[{i}]");
            let Some(map) = errors.map(item, &at) else {
                continue;
            };
            errors.known_keys(
                map,
                &at,
                &[
                    "name",
                    "clientGroupName",
                    "topicSpaceName",
                    "permission",
                    "description",
                ],
            );
            entry_name(&mut errors, map, &at, &mut binding_names, i);
            let group = errors.string(map, "clientGroupName", &at).and_then(|g| {
                if g == ALL_GROUP {
                    return Some(GroupRef::All);
                }
                let found = groups.iter().position(|x| x.name == g);
                if found.is_none() && !group_names.contains_key(g) {
                    errors.push(
                        format!("{at}.clientGroupName"),
                        format!("{g:?}: no such client group (nor {ALL_GROUP})"),
                    );
                }
                found.map(GroupRef::Defined)
            });
            let space = errors.string(map, "topicSpaceName", &at).and_then(|s| {
                let found = spaces.iter().position(|x| x.name == s);
                if found.is_none() && !space_names.contains_key(s) {
                    errors.push(
                        format!("{at}.topicSpaceName"),
                        format!("{s:?}: no such topic space"),
                    );
                }
                found
            });
            let permission = errors.string(map, "permission", &at).and_then(|p| match p {
                "Publisher" => Some(Permission::Publisher),
                "Subscriber" => Some(Permission::Subscriber),
                other => {
                    errors.push(
                        format!("{at}.permission"),
                        format!("{other:?}: expected Publisher or Subscriber"),
                    );
                    None
                }
            });
            if let (Some(group), Some(space), Some(permission)) = (group, space, permission) {
                bindings.push(Binding {
                    group,
                    space,
                    permission,
                });
            }
        }

        if errors.list.is_empty() {
            Ok(EventGridPolicy {
                name: name.to_string(),
                authentication_name_attribute,
                max_sessions_per_authentication_name,
                groups,
                spaces,
                bindings,
            })
        } else {
            Err(errors.list)
        }
    }

    /// How many sessions (online and offline) one authentication name may hold at once; the
    /// router enforces it.
    pub fn max_sessions_per_authentication_name(&self) -> u32 {
        self.max_sessions_per_authentication_name
    }

    /// The principal attribute holding the authentication name; `None`: the username.
    pub fn authentication_name_attribute(&self) -> Option<&str> {
        self.authentication_name_attribute.as_deref()
    }

    /// The client's authentication name, the identity that owns its sessions. `None` (or
    /// empty) means the client has none and is refused.
    pub fn authentication_name<'a>(&self, principal: &'a Principal) -> Option<&'a str> {
        match &self.authentication_name_attribute {
            Some(attr) => principal.attributes.get(attr).map(String::as_str),
            None => principal.username.as_deref(),
        }
        .filter(|name| !name.is_empty())
    }

    /// The names of the groups the client belongs to, `$all` first.
    pub fn groups_of(&self, principal: &Principal) -> Vec<&str> {
        let Some(authentication_name) = self.authentication_name(principal) else {
            return Vec::new();
        };
        let client = Client {
            authentication_name,
            attributes: &principal.attributes,
        };
        std::iter::once(ALL_GROUP)
            .chain(
                self.groups
                    .iter()
                    .filter(|g| g.query.eval(&client))
                    .map(|g| g.name.as_str()),
            )
            .collect()
    }

    /// Authorizes a CONNECT and renders the client's permissions. `Err` carries the reason for
    /// the log (the client gets 0x87, 3.1.1: 0x05).
    pub fn connect(
        &self,
        _client_id: &str,
        principal: &Principal,
    ) -> Result<EventGridPermissions, String> {
        let Some(authentication_name) = self.authentication_name(principal) else {
            return Err(match &self.authentication_name_attribute {
                Some(attr) => {
                    format!("no authentication name: the principal has no {attr:?} attribute")
                }
                None => "no authentication name: the principal has no username".to_string(),
            });
        };
        let client = Client {
            authentication_name,
            attributes: &principal.attributes,
        };
        let member: Vec<bool> = self.groups.iter().map(|g| g.query.eval(&client)).collect();
        let applies = |b: &&Binding| match b.group {
            GroupRef::All => true,
            GroupRef::Defined(i) => member[i],
        };
        let groups: Vec<String> = std::iter::once(ALL_GROUP.to_string())
            .chain(
                self.groups
                    .iter()
                    .zip(&member)
                    .filter(|(_, m)| **m)
                    .map(|(g, _)| g.name.clone()),
            )
            .collect();
        if !self.bindings.iter().any(|b| applies(&b)) {
            return Err(format!(
                "{authentication_name:?} is in no client group with a permission binding \
                 (groups: {})",
                groups.join(", ")
            ));
        }
        // A space bound both ways, or to several of the client's groups, is rendered once.
        let mut rendered: Vec<Option<Vec<String>>> = vec![None; self.spaces.len()];
        let mut grants = crate::authz::TopicGrants::default();
        for b in self.bindings.iter().filter(applies) {
            let filters = rendered[b.space].get_or_insert_with(|| {
                self.spaces[b.space]
                    .templates
                    .iter()
                    .filter_map(|t| t.render(&client))
                    .collect()
            });
            for f in filters.iter() {
                match b.permission {
                    Permission::Publisher => grants.grant_publish(f.clone()),
                    Permission::Subscriber => grants.grant_subscribe(f.clone()),
                }
            }
        }
        Ok(EventGridPermissions {
            authentication_name: authentication_name.to_string(),
            groups,
            grants,
            max_sessions: self.max_sessions_per_authentication_name,
        })
    }
}

/// What one connected client may do, rendered at CONNECT. Checked per packet, locally.
pub struct EventGridPermissions {
    authentication_name: String,
    /// `maxSessionsPerAuthenticationName`, enforced by the router (scenarios 54, 55).
    max_sessions: u32,
    groups: Vec<String>,
    /// Rendered templates of its `Publisher` and `Subscriber` spaces.
    grants: crate::authz::TopicGrants,
}

impl EventGridPermissions {
    pub fn authentication_name(&self) -> &str {
        &self.authentication_name
    }

    /// The groups the client was in at CONNECT, `$all` first.
    pub fn groups(&self) -> &[String] {
        &self.groups
    }

    pub fn may_publish(&self, topic: &str) -> bool {
        self.grants.may_publish(topic)
    }

    pub fn may_subscribe(&self, filter: &str) -> bool {
        self.grants.may_subscribe(filter)
    }
}

impl crate::auth::Permissions for EventGridPermissions {
    fn may_publish(&self, topic: &str) -> bool {
        EventGridPermissions::may_publish(self, topic)
    }
    fn session_owner(&self) -> Option<crate::auth::SessionOwner> {
        Some(crate::auth::SessionOwner {
            identity: self.authentication_name.as_str().into(),
            max_sessions: self.max_sessions,
        })
    }
    fn may_subscribe(&self, filter: &str) -> bool {
        EventGridPermissions::may_subscribe(self, filter)
    }
}

/// A port's Event Grid `BrokerAuthorization`. The policy can be swapped at runtime;
/// connections keep the permissions rendered at their CONNECT (or re-authentication).
pub struct EventGridAuthorizer {
    policy: parking_lot::RwLock<Arc<EventGridPolicy>>,
}

impl EventGridAuthorizer {
    pub fn new(policy: Arc<EventGridPolicy>) -> EventGridAuthorizer {
        EventGridAuthorizer {
            policy: parking_lot::RwLock::new(policy),
        }
    }

    pub fn replace(&self, policy: Arc<EventGridPolicy>) {
        *self.policy.write() = policy;
    }

    /// The current policy, for the router's session quota and identity checks.
    pub fn policy(&self) -> Arc<EventGridPolicy> {
        self.policy.read().clone()
    }
}

impl crate::auth::Authorizer for EventGridAuthorizer {
    fn connect(
        &self,
        client_id: &str,
        principal: &Principal,
    ) -> Result<Arc<dyn crate::auth::Permissions>, String> {
        let policy = self.policy();
        policy
            .connect(client_id, principal)
            .map(|p| Arc::new(p) as Arc<dyn crate::auth::Permissions>)
    }
}

#[cfg(test)]
#[path = "eventgrid_tests.rs"]
mod tests;
