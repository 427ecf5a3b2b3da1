//! Weir's SQL front end: splits a script into statements and parses Weir's own statements
//! (CREATE SOURCE / MATERIALIZED VIEW / SINK, SHOW, DESCRIBE, DROP, EXPLAIN) with the
//! sqlparser that DataFusion re-exports. Query bodies stay sqlparser ASTs and are planned
//! by DataFusion (see `planner`).
//!
//! - this file: the statements, splitting a script and parsing each statement;
//! - [`source`]: `CREATE SOURCE` / `CREATE TABLE` column lists and types;
//! - [`depth`]: how deeply a statement nests, bounded before it is parsed;
//! - [`functions`]: bounded versions of functions one argument can make allocate without
//!   limit (`repeat`, `lpad`, ...);
//! - [`windows`]: window table functions (`TUMBLE`, `HOP`, `SESSION`) rewritten into a
//!   derived table that adds `window_start` and `window_end`;
//! - [`count_window`]: `COUNT_WINDOW`, rewritten to read the count-window operator's rows.

pub mod count_window;
pub mod depth;
pub mod functions;
mod source;
mod windows;

pub use count_window::CountWindowSpec;
pub use source::arrow_type;
use source::{parse_create_source, parse_create_table};
pub use windows::{WindowKind, WindowSpec, Windows, rewrite_windows};

use crate::error::{LimitKind, Location, Result, WeirError};
use crate::options::{Options, parse_duration};
use datafusion::arrow::datatypes::Schema;
use datafusion::sql::sqlparser::ast::{Expr, Query, SqlOption, Value};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};
use std::sync::Arc;
use std::time::Duration;

/// One parsed statement with where it starts in the submitted text.
#[derive(Debug, Clone)]
pub struct Located {
    pub index: usize,
    pub location: Location,
    pub text: String,
    pub statement: WeirStatement,
}

#[derive(Debug, Clone)]
pub enum WeirStatement {
    CreateSource(CreateSource),
    CreateView(CreateView),
    CreateSink(CreateSink),
    CreateTable(CreateTable),
    /// `REFRESH TABLE name`: reload a reference table now.
    RefreshTable(String),
    Show(ObjectKind),
    Describe(String),
    Drop {
        kind: ObjectKind,
        name: String,
        if_exists: bool,
    },
    Explain(CreateView),
    /// An ad-hoc SELECT over views' retained rows.
    Select(Box<Query>),
}

impl WeirStatement {
    /// The statement's kind as SQL words, for responses: `CREATE MATERIALIZED VIEW`, ...
    pub fn label(&self) -> &'static str {
        match self {
            WeirStatement::CreateSource(_) => "CREATE SOURCE",
            WeirStatement::CreateView(_) => "CREATE MATERIALIZED VIEW",
            WeirStatement::CreateSink(_) => "CREATE SINK",
            WeirStatement::CreateTable(_) => "CREATE TABLE",
            WeirStatement::RefreshTable(_) => "REFRESH TABLE",
            WeirStatement::Show(_) => "SHOW",
            WeirStatement::Describe(_) => "DESCRIBE",
            WeirStatement::Drop { kind, .. } => match kind {
                ObjectKind::Source => "DROP SOURCE",
                ObjectKind::View => "DROP MATERIALIZED VIEW",
                ObjectKind::Sink => "DROP SINK",
                ObjectKind::Table => "DROP TABLE",
            },
            WeirStatement::Explain(_) => "EXPLAIN",
            WeirStatement::Select(_) => "SELECT",
        }
    }
}

pub use crate::object::ObjectKind;

#[derive(Debug, Clone)]
pub struct CreateSource {
    pub name: String,
    pub if_not_exists: bool,
    pub schema: Arc<Schema>,
    pub watermark: Option<WatermarkSpec>,
    /// Columns filled by the connector from message metadata (`METADATA FROM 'key'`).
    pub metadata: Vec<MetadataColumn>,
    /// Where each metadata key is written, for errors.
    pub metadata_at: Vec<Location>,
    pub options: Options,
}

/// `name TYPE METADATA FROM 'key'`: a column the connector fills from the message's
/// metadata (Kafka: partition, offset, timestamp, key) rather than from its payload.
pub use crate::connector::MetadataColumn;

/// `WATERMARK FOR column AS column - INTERVAL ...`
#[derive(Debug, Clone, PartialEq)]
pub struct WatermarkSpec {
    pub column: String,
    pub delay: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Emit {
    OnWindowClose,
    Every(Duration),
}

#[derive(Debug, Clone)]
pub struct CreateView {
    pub name: String,
    pub if_not_exists: bool,
    pub options: Options,
    pub query: Box<Query>,
    pub emit: Option<Emit>,
    /// The query as the user wrote it.
    pub sql: String,
}

/// `CREATE TABLE name (columns) WITH (connector = ..., 'refresh.interval' = ...)`: a
/// reference table loaded whole, for lookup joins (see `lookup.rs`).
#[derive(Debug, Clone)]
pub struct CreateTable {
    pub name: String,
    pub if_not_exists: bool,
    pub schema: Arc<Schema>,
    pub options: Options,
}

#[derive(Debug, Clone)]
pub struct CreateSink {
    pub name: String,
    pub if_not_exists: bool,
    pub from: String,
    pub options: Options,
}

pub(super) fn loc(t: &TokenWithSpan) -> Location {
    Location {
        line: t.span.start.line,
        column: t.span.start.column,
    }
}

/// Turn a sqlparser error into a user error; sqlparser already puts "Line: x, Column: y" in
/// its messages, which we lift into the location.
pub(super) fn parse_err(e: ParserError, fallback: Location) -> WeirError {
    if e == ParserError::RecursionLimitExceeded {
        return WeirError::Limit {
            kind: LimitKind::ExpressionDepth,
            message: format!(
                "the statement nests too deeply: brackets, subqueries or function calls more \
                 than {} deep in the statement at line {}, column {}; the limit is {} \
                 (sqlparser's recursion limit)",
                depth::PARSER_RECURSION_LIMIT,
                fallback.line,
                fallback.column,
                depth::PARSER_RECURSION_LIMIT
            ),
            statement: None,
        };
    }
    let msg = e.to_string();
    let location = extract_location(&msg).unwrap_or(fallback);
    let clean = msg
        .trim_start_matches("sql parser error: ")
        .split(" at Line: ")
        .next()
        .unwrap_or(&msg)
        .to_string();
    WeirError::user_at(clean, location)
}

fn extract_location(msg: &str) -> Option<Location> {
    let l = msg.find("Line: ")?;
    let rest = &msg[l + 6..];
    let line: u64 = rest.split(',').next()?.trim().parse().ok()?;
    let c = rest.find("Column: ")?;
    let column: u64 = rest[c + 8..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .ok()?;
    Some(Location { line, column })
}

/// A parser over `tokens` with Weir's recursion limit.
pub(super) fn parser(dialect: &GenericDialect, tokens: Vec<TokenWithSpan>) -> Parser<'_> {
    Parser::new(dialect)
        .with_recursion_limit(depth::PARSER_RECURSION_LIMIT)
        .with_tokens_with_locations(tokens)
}

/// Parse a script of `;`-separated statements. A statement that nests deeper than
/// [`depth::MAX_DEPTH`] is refused before it is parsed (a `Limit` error).
pub fn parse_script(sql: &str) -> Result<Vec<Located>> {
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| {
            // The text could not be tokenized, so statements were never split: count the
            // semicolons before the error to name the statement.
            let err = parse_err(e.into(), Location { line: 1, column: 1 });
            let at = match &err {
                WeirError::User {
                    location: Some(l), ..
                } => *l,
                _ => Location { line: 1, column: 1 },
            };
            let index = sql[..offset_of(sql, at)].matches(';').count() + 1;
            err.in_statement(index, at)
        })?;
    let depths = depth::check_script(&tokens, depth::MAX_DEPTH);
    let mut parser = parser(&dialect, tokens);
    let mut out = Vec::new();
    loop {
        while parser.consume_token(&Token::SemiColon) {}
        let start = parser.peek_token();
        if start.token == Token::EOF {
            break;
        }
        let index = out.len() + 1;
        let location = loc(&start);
        if let Some(Err(too_deep)) = depths.get(out.len()) {
            return Err(WeirError::Limit {
                kind: LimitKind::ExpressionDepth,
                message: too_deep.message(),
                statement: Some(index),
            });
        }
        let statement = parse_statement(&mut parser, sql).map_err(|e| {
            let e = match e {
                WeirError::User { .. } => e,
                other => other,
            };
            e.in_statement(index, location)
        })?;
        let end = parser.peek_token();
        if !matches!(end.token, Token::SemiColon | Token::EOF) {
            return Err(WeirError::user_at(
                format!("expected ';' or end of input, found {}", end.token),
                loc(&end),
            )
            .in_statement(index, location));
        }
        let text = slice_text(sql, location, loc(&end)).trim().to_string();
        out.push(Located {
            index,
            location,
            text,
            statement,
        });
    }
    Ok(out)
}

/// Byte offset of a 1-based line/column position.
fn offset_of(sql: &str, l: Location) -> usize {
    let mut line = 1u64;
    let mut col = 1u64;
    for (i, ch) in sql.char_indices() {
        if line == l.line && col == l.column {
            return i;
        }
        if ch == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    sql.len()
}

fn slice_text(sql: &str, from: Location, to: Location) -> &str {
    let a = offset_of(sql, from);
    let b = if to.line == 0 {
        sql.len()
    } else {
        offset_of(sql, to)
    };
    sql.get(a..b.max(a)).unwrap_or("")
}

pub(super) fn word_is(t: &TokenWithSpan, w: &str) -> bool {
    matches!(&t.token, Token::Word(word) if word.value.eq_ignore_ascii_case(w) && word.quote_style.is_none())
}

fn parse_statement(p: &mut Parser, sql: &str) -> Result<WeirStatement> {
    let first = p.peek_token();
    let fl = loc(&first);
    let pe = |e| parse_err(e, fl);
    if p.parse_keyword(Keyword::CREATE) {
        if p.parse_keyword(Keyword::SOURCE) {
            return parse_create_source(p);
        }
        if p.parse_keywords(&[Keyword::MATERIALIZED, Keyword::VIEW]) {
            return parse_create_view(p, sql).map(WeirStatement::CreateView);
        }
        if word_is(&p.peek_token(), "SINK") {
            p.next_token();
            return parse_create_sink(p);
        }
        if p.parse_keyword(Keyword::TABLE) {
            return parse_create_table(p);
        }
        let t = p.peek_token();
        return Err(WeirError::user_at(
            format!(
                "expected SOURCE, MATERIALIZED VIEW, SINK or TABLE after CREATE, found {}",
                t.token
            ),
            loc(&t),
        ));
    }
    if p.parse_keyword(Keyword::SHOW) {
        let t = p.next_token();
        let kind = match &t.token {
            Token::Word(w) => match w.value.to_ascii_uppercase().as_str() {
                "SOURCES" => Some(ObjectKind::Source),
                "VIEWS" => Some(ObjectKind::View),
                "SINKS" => Some(ObjectKind::Sink),
                "TABLES" => Some(ObjectKind::Table),
                "MATERIALIZED" if p.parse_keyword(Keyword::VIEWS) => Some(ObjectKind::View),
                _ => None,
            },
            _ => None,
        };
        return kind.map(WeirStatement::Show).ok_or_else(|| {
            WeirError::user_at(
                format!(
                    "expected SOURCES, VIEWS, SINKS or TABLES after SHOW, found {}",
                    t.token
                ),
                loc(&t),
            )
        });
    }
    if p.parse_one_of_keywords(&[Keyword::DESCRIBE, Keyword::DESC])
        .is_some()
    {
        let name = p.parse_identifier().map_err(pe)?;
        return Ok(WeirStatement::Describe(name.value));
    }
    if p.parse_keyword(Keyword::DROP) {
        let kind = if p.parse_keyword(Keyword::SOURCE) {
            ObjectKind::Source
        } else if p.parse_keywords(&[Keyword::MATERIALIZED, Keyword::VIEW]) {
            ObjectKind::View
        } else if word_is(&p.peek_token(), "SINK") {
            p.next_token();
            ObjectKind::Sink
        } else if p.parse_keyword(Keyword::TABLE) {
            ObjectKind::Table
        } else {
            let t = p.peek_token();
            return Err(WeirError::user_at(
                format!(
                    "expected SOURCE, MATERIALIZED VIEW, SINK or TABLE after DROP, found {}",
                    t.token
                ),
                loc(&t),
            ));
        };
        let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        let name = p.parse_identifier().map_err(pe)?.value;
        return Ok(WeirStatement::Drop {
            kind,
            name,
            if_exists,
        });
    }
    if word_is(&first, "REFRESH") {
        p.next_token();
        p.expect_keyword(Keyword::TABLE).map_err(pe)?;
        let name = p.parse_identifier().map_err(pe)?.value;
        return Ok(WeirStatement::RefreshTable(name));
    }
    if p.parse_keyword(Keyword::EXPLAIN) {
        if p.parse_keyword(Keyword::CREATE)
            && p.parse_keywords(&[Keyword::MATERIALIZED, Keyword::VIEW])
        {
            return parse_create_view(p, sql).map(WeirStatement::Explain);
        }
        return Err(WeirError::user_at(
            "EXPLAIN takes a CREATE MATERIALIZED VIEW statement",
            fl,
        ));
    }
    if matches!(&first.token, Token::Word(w) if w.keyword == Keyword::SELECT || w.keyword == Keyword::WITH)
        || first.token == Token::LParen
    {
        let q = p.parse_query().map_err(pe)?;
        return Ok(WeirStatement::Select(q));
    }
    Err(WeirError::user_at(
        format!(
            "expected CREATE, DROP, SHOW, DESCRIBE, EXPLAIN, REFRESH or SELECT, found {}",
            first.token
        ),
        fl,
    ))
}

pub(super) fn parse_if_not_exists(p: &mut Parser) -> bool {
    p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS])
}

pub(super) fn parse_with_options(p: &mut Parser) -> Result<Options> {
    let at = loc(&p.peek_token());
    let opts = p
        .parse_options(Keyword::WITH)
        .map_err(|e| parse_err(e, at))?;
    let mut pairs = Vec::new();
    for o in opts {
        match o {
            SqlOption::KeyValue { key, value } => {
                let v = match value {
                    Expr::Value(v) => match v.value {
                        Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s,
                        Value::Number(n, _) => n,
                        Value::Boolean(b) => b.to_string(),
                        other => other.to_string(),
                    },
                    Expr::Identifier(i) => i.value,
                    other => other.to_string(),
                };
                pairs.push((key.value, v));
            }
            other => {
                return Err(WeirError::user_at(
                    format!("expected key = 'value' in WITH (...), found {other}"),
                    at,
                ));
            }
        }
    }
    Ok(Options::new(pairs))
}

/// An `INTERVAL '5' SECOND` / `INTERVAL '1 minute'` expression as a duration.
pub fn interval_duration(e: &Expr) -> std::result::Result<Duration, String> {
    match e {
        Expr::Interval(iv) => {
            let value = match iv.value.as_ref() {
                Expr::Value(v) => match &v.value {
                    Value::SingleQuotedString(s) => s.clone(),
                    Value::Number(n, _) => n.clone(),
                    other => other.to_string(),
                },
                other => other.to_string(),
            };
            let text = match &iv.leading_field {
                Some(f) => format!("{value} {f}"),
                None => value,
            };
            let d = parse_duration(&text)?;
            if d.is_zero() {
                return Err(format!("interval {e} must be positive"));
            }
            Ok(d)
        }
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => parse_duration(s),
            other => Err(format!("expected an INTERVAL, found {other}")),
        },
        other => Err(format!("expected an INTERVAL, found {other}")),
    }
}

fn parse_create_view(p: &mut Parser, sql: &str) -> Result<CreateView> {
    let at = loc(&p.peek_token());
    let pe = |e| parse_err(e, at);
    let if_not_exists = parse_if_not_exists(p);
    let name = p.parse_identifier().map_err(pe)?.value;
    let options = if p.peek_keyword(Keyword::WITH) {
        parse_with_options(p)?
    } else {
        Options::default()
    };
    p.expect_keyword(Keyword::AS).map_err(pe)?;
    let q_start = loc(&p.peek_token());
    let query = parse_query_before_emit(p).map_err(pe)?;
    let q_end = loc(&p.peek_token());
    let text = slice_text(sql, q_start, q_end).trim().to_string();
    let emit = if word_is(&p.peek_token(), "EMIT") {
        p.next_token();
        if p.parse_keywords(&[Keyword::ON, Keyword::WINDOW, Keyword::CLOSE]) {
            Some(Emit::OnWindowClose)
        } else if word_is(&p.peek_token(), "EVERY") {
            p.next_token();
            let e_at = loc(&p.peek_token());
            let e = p.parse_expr().map_err(pe)?;
            Some(Emit::Every(
                interval_duration(&e).map_err(|m| WeirError::user_at(m, e_at))?,
            ))
        } else {
            let t = p.peek_token();
            return Err(WeirError::user_at(
                format!(
                    "expected ON WINDOW CLOSE or EVERY INTERVAL '...' after EMIT, found {}",
                    t.token
                ),
                loc(&t),
            ));
        }
    } else {
        None
    };
    Ok(CreateView {
        name,
        if_not_exists,
        options,
        query,
        emit,
        sql: text,
    })
}

/// Parse the view's query, which ends at a top-level `EMIT` if there is one. sqlparser would
/// read `FROM src EMIT` as a table alias, so the query is parsed from the tokens before it.
fn parse_query_before_emit(p: &mut Parser) -> std::result::Result<Box<Query>, ParserError> {
    let mut depth = 0i32;
    let mut n = 0usize;
    let emit_at = loop {
        let t = p.peek_nth_token(n);
        match &t.token {
            Token::EOF | Token::SemiColon if depth == 0 => break None,
            Token::EOF => break None,
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ if depth == 0 && word_is(&t, "EMIT") => break Some(n),
            _ => {}
        }
        n += 1;
    };
    let Some(k) = emit_at else {
        return p.parse_query();
    };
    let mut tokens: Vec<TokenWithSpan> = (0..k).map(|i| p.peek_nth_token(i)).collect();
    let end = p.peek_nth_token(k);
    tokens.push(TokenWithSpan::new(Token::EOF, end.span));
    let dialect = GenericDialect {};
    let mut sub = parser(&dialect, tokens);
    let q = sub.parse_query()?;
    let rest = sub.peek_token();
    if rest.token != Token::EOF {
        return sub.expected("EMIT or the end of the statement", rest);
    }
    for _ in 0..k {
        p.next_token();
    }
    Ok(q)
}

fn parse_create_sink(p: &mut Parser) -> Result<WeirStatement> {
    let at = loc(&p.peek_token());
    let pe = |e| parse_err(e, at);
    let if_not_exists = parse_if_not_exists(p);
    let name = p.parse_identifier().map_err(pe)?.value;
    p.expect_keyword(Keyword::FROM).map_err(pe)?;
    let from = p.parse_identifier().map_err(pe)?.value;
    let options = parse_with_options(p)?;
    Ok(WeirStatement::CreateSink(CreateSink {
        name,
        if_not_exists,
        from,
        options,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_source_with_watermark_and_options() {
        let s = parse_script(
            "CREATE SOURCE d (id TEXT NOT NULL, ts TIMESTAMP NOT NULL, v DOUBLE,\n  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)\nWITH (connector = 'generator', 'rows.per.second' = '10');",
        )
        .unwrap();
        let WeirStatement::CreateSource(c) = &s[0].statement else {
            panic!()
        };
        assert_eq!(c.name, "d");
        assert_eq!(c.schema.fields().len(), 3);
        assert!(!c.schema.field(1).is_nullable());
        assert_eq!(
            c.watermark,
            Some(WatermarkSpec {
                column: "ts".into(),
                delay: Duration::from_secs(5)
            })
        );
        assert_eq!(c.options.get("rows.per.second"), Some("10"));
    }

    #[test]
    fn error_has_statement_line_and_column() {
        let e =
            parse_script("SHOW VIEWS;\nCREATE SOURCE x (a TEXT,\n   b NOSUCHTYPE);").unwrap_err();
        match e {
            WeirError::User {
                statement,
                location,
                ..
            } => {
                assert_eq!(statement, Some(2));
                assert_eq!(location.unwrap().line, 3);
            }
            other => panic!("{other}"),
        }
    }

    /// Run `f` on a thread with the stack Weir gives threads that handle statements (a test
    /// thread has 2 MiB; displaying or planning the deepest statements needs more).
    fn with_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(depth::STACK_SIZE)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    /// `1 + 1 + ...` with `n` terms.
    fn chain(n: usize) -> String {
        vec!["1"; n].join(" + ")
    }

    /// The longest chain `statement` (with `{}` where the chain goes) may hold, and that
    /// it parses with it and is refused with one more term, naming the limit and the place.
    fn just_under_and_over(statement: &'static str) {
        with_stack(move || just_under_and_over_here(statement))
    }

    fn just_under_and_over_here(statement: &str) {
        let sql = |n: usize| format!("SHOW VIEWS;\n{}", statement.replace("{}", &chain(n)));
        let tokens = Tokenizer::new(&GenericDialect {}, &sql(1))
            .tokenize_with_location()
            .unwrap();
        let base = depth::check_script(&tokens, usize::MAX)[1].clone().unwrap();
        // Each term after the first adds one level.
        let longest = depth::MAX_DEPTH - base + 1;
        assert!(longest > depth::MAX_DEPTH - 12, "{statement}: {base}");
        let ok = parse_script(&sql(longest));
        assert!(
            matches!(&ok, Ok(s) if s.len() == 2) || matches!(&ok, Err(WeirError::User { .. })),
            "{statement}: {ok:?}"
        );
        match parse_script(&sql(longest + 1)) {
            Err(WeirError::Limit {
                kind: LimitKind::ExpressionDepth,
                message,
                statement: Some(2),
            }) => {
                assert!(
                    message.contains("500 levels at line 2, column "),
                    "{message}"
                );
            }
            other => panic!("{statement}: {other:?}"),
        }
    }

    #[test]
    fn every_statement_kind_is_bounded_in_depth() {
        just_under_and_over("SELECT {}");
        just_under_and_over("SELECT region FROM v WHERE {} > 3");
        just_under_and_over("CREATE MATERIALIZED VIEW v AS SELECT {} AS n FROM src");
        just_under_and_over(
            "CREATE MATERIALIZED VIEW v AS SELECT window_start, count(*) FROM \
             TUMBLE(src, ts, INTERVAL '1' MINUTE) GROUP BY window_start, window_end \
             HAVING count(*) > {} EMIT ON WINDOW CLOSE",
        );
        just_under_and_over("EXPLAIN CREATE MATERIALIZED VIEW v AS SELECT * FROM src WHERE a = {}");
        just_under_and_over("EXPLAIN CREATE MATERIALIZED VIEW v AS SELECT ({}) AS n FROM src");
        // WATERMARK takes only `column - INTERVAL ...`: under the limit a deep expression is
        // the user's error, over it the limit's.
        just_under_and_over(
            "CREATE SOURCE s (ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND - {}) \
             WITH (connector = 'generator')",
        );
    }

    #[test]
    fn the_longest_accepted_chain_parses_whole() {
        with_stack(|| {
            let sql = format!("SELECT {}", chain(depth::MAX_DEPTH - 1));
            let s = parse_script(&sql).unwrap();
            let WeirStatement::Select(q) = &s[0].statement else {
                panic!()
            };
            assert_eq!(q.to_string(), sql);
        })
    }

    #[test]
    fn brackets_deeper_than_the_parser_allows_are_a_depth_limit() {
        let n = depth::PARSER_RECURSION_LIMIT + 5;
        let sql = format!("SHOW VIEWS; SELECT {}1{}", "(".repeat(n), ")".repeat(n));
        match parse_script(&sql) {
            Err(WeirError::Limit {
                kind: LimitKind::ExpressionDepth,
                message,
                statement: Some(2),
            }) => assert!(message.contains("more than 50 deep"), "{message}"),
            other => panic!("{other:?}"),
        }
        let n = depth::PARSER_RECURSION_LIMIT / 2 - 1;
        let sql = format!("SELECT {}1{}", "(".repeat(n), ")".repeat(n));
        assert!(parse_script(&sql).is_ok());
    }

    #[test]
    fn twenty_thousand_ors_are_refused_at_once() {
        let ors: Vec<String> = (0..20_000).map(|i| format!("a = {i}")).collect();
        let sql = format!(
            "CREATE MATERIALIZED VIEW v AS SELECT * FROM src WHERE {}",
            ors.join(" OR ")
        );
        let started = std::time::Instant::now();
        let e = parse_script(&sql).unwrap_err();
        assert!(
            matches!(
                e,
                WeirError::Limit {
                    kind: LimitKind::ExpressionDepth,
                    ..
                }
            ),
            "{e}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
}
