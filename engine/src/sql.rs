//! Weir's SQL front end: splits a script into statements and parses Weir's own statements
//! (CREATE SOURCE / MATERIALIZED VIEW / SINK, SHOW, DESCRIBE, DROP, EXPLAIN) with the
//! sqlparser that DataFusion re-exports. Query bodies stay sqlparser ASTs and are planned
//! by DataFusion (see `plan.rs`); window table functions are rewritten here (`TUMBLE`) into
//! a derived table that adds `window_start` and `window_end`.

use crate::error::{Location, Result, WeirError};
use crate::options::{Options, parse_duration};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::sql::sqlparser::ast::{
    self, ColumnOption, DataType as SqlType, Expr, FunctionArg, FunctionArgExpr, ObjectName, Query,
    SetExpr, SqlOption, TableAlias, TableFactor, Value,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};
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

fn loc(t: &TokenWithSpan) -> Location {
    Location {
        line: t.span.start.line,
        column: t.span.start.column,
    }
}

/// Turn a sqlparser error into a user error; sqlparser already puts "Line: x, Column: y" in
/// its messages, which we lift into the location.
fn parse_err(e: ParserError, fallback: Location) -> WeirError {
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

/// Parse a script of `;`-separated statements.
pub fn parse_script(sql: &str) -> Result<Vec<Located>> {
    let dialect = GenericDialect {};
    let mut parser = Parser::new(&dialect).try_with_sql(sql).map_err(|e| {
        // The text could not be tokenized, so statements were never split: count the
        // semicolons before the error to name the statement.
        let err = parse_err(e, Location { line: 1, column: 1 });
        let at = match &err {
            WeirError::User {
                location: Some(l), ..
            } => *l,
            _ => Location { line: 1, column: 1 },
        };
        let index = sql[..offset_of(sql, at)].matches(';').count() + 1;
        err.in_statement(index, at)
    })?;
    let mut out = Vec::new();
    loop {
        while parser.consume_token(&Token::SemiColon) {}
        let start = parser.peek_token();
        if start.token == Token::EOF {
            break;
        }
        let index = out.len() + 1;
        let location = loc(&start);
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

fn word_is(t: &TokenWithSpan, w: &str) -> bool {
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

fn parse_if_not_exists(p: &mut Parser) -> bool {
    p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS])
}

fn parse_with_options(p: &mut Parser) -> Result<Options> {
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

fn parse_create_source(p: &mut Parser) -> Result<WeirStatement> {
    let at = loc(&p.peek_token());
    let pe = |e| parse_err(e, at);
    let if_not_exists = parse_if_not_exists(p);
    let name = p.parse_identifier().map_err(pe)?.value;
    p.expect_token(&Token::LParen).map_err(pe)?;
    let mut fields = Vec::new();
    let mut watermark = None;
    let mut metadata = Vec::new();
    let mut metadata_at = Vec::new();
    loop {
        let t = p.peek_token();
        if word_is(&p.peek_token(), "WATERMARK") {
            p.next_token();
            p.expect_keyword(Keyword::FOR).map_err(pe)?;
            let column = p.parse_identifier().map_err(pe)?.value;
            p.expect_keyword(Keyword::AS).map_err(pe)?;
            let e_at = loc(&p.peek_token());
            let expr = p.parse_expr().map_err(pe)?;
            watermark = Some(watermark_spec(&column, &expr, e_at)?);
        } else {
            let col = p.parse_column_def().map_err(pe)?;
            let dt = arrow_type(&col.data_type).map_err(|m| WeirError::user_at(m, loc(&t)))?;
            if word_is(&p.peek_token(), "METADATA") {
                p.next_token();
                p.expect_keyword(Keyword::FROM).map_err(pe)?;
                let k_at = loc(&p.peek_token());
                let key = p.parse_literal_string().map_err(pe)?;
                metadata.push(MetadataColumn {
                    column: col.name.value.clone(),
                    key,
                    data_type: dt.clone(),
                });
                metadata_at.push(k_at);
            }
            let not_null = col.options.iter().any(|o| {
                matches!(
                    o.option,
                    ColumnOption::NotNull | ColumnOption::PrimaryKey(_)
                )
            });
            fields.push(Field::new(col.name.value, dt, !not_null));
        }
        if !p.consume_token(&Token::Comma) {
            break;
        }
    }
    p.expect_token(&Token::RParen).map_err(pe)?;
    let options = if p.peek_keyword(Keyword::WITH) {
        parse_with_options(p)?
    } else {
        Options::default()
    };
    // The event-time column of a source with a WATERMARK is implicitly NOT NULL: a record
    // without its event time cannot be placed in time, so it is a bad record (it follows
    // 'bad.records' with the reason) rather than a row every window would call late.
    if let Some(w) = &watermark {
        for f in fields.iter_mut().filter(|f| f.name() == &w.column) {
            *f = f.clone().with_nullable(false);
        }
    }
    let schema = Arc::new(Schema::new(fields));
    if let Some(w) = &watermark {
        match schema.field_with_name(&w.column) {
            Ok(f) if matches!(f.data_type(), DataType::Timestamp(_, _)) => {}
            Ok(f) => {
                return Err(WeirError::user_at(
                    format!(
                        "WATERMARK column '{}' must be a TIMESTAMP, it is {}",
                        w.column,
                        f.data_type()
                    ),
                    at,
                ));
            }
            Err(_) => {
                return Err(WeirError::user_at(
                    format!(
                        "WATERMARK names column '{}', which is not declared",
                        w.column
                    ),
                    at,
                ));
            }
        }
    }
    Ok(WeirStatement::CreateSource(CreateSource {
        name,
        if_not_exists,
        schema,
        watermark,
        metadata,
        metadata_at,
        options,
    }))
}

/// `CREATE TABLE`: the column list of `CREATE SOURCE` without WATERMARK or METADATA.
fn parse_create_table(p: &mut Parser) -> Result<WeirStatement> {
    let at = loc(&p.peek_token());
    let WeirStatement::CreateSource(s) = parse_create_source(p)? else {
        return Err(WeirError::Internal("CREATE TABLE parse".into()));
    };
    if s.watermark.is_some() {
        return Err(WeirError::user_at(
            "a table has no event time: WATERMARK is for CREATE SOURCE",
            at,
        ));
    }
    if let Some(l) = s.metadata_at.first() {
        return Err(WeirError::user_at(
            "METADATA columns are for CREATE SOURCE, not tables",
            *l,
        ));
    }
    Ok(WeirStatement::CreateTable(CreateTable {
        name: s.name,
        if_not_exists: s.if_not_exists,
        schema: s.schema,
        options: s.options,
    }))
}

fn watermark_spec(column: &str, expr: &Expr, at: Location) -> Result<WatermarkSpec> {
    let is_col = |e: &Expr| matches!(e, Expr::Identifier(i) if i.value == column);
    let bad = || {
        WeirError::user_at(
            format!("WATERMARK must be `{column}` or `{column} - INTERVAL '...'`, found {expr}"),
            at,
        )
    };
    match expr {
        e if is_col(e) => Ok(WatermarkSpec {
            column: column.to_string(),
            delay: Duration::ZERO,
        }),
        Expr::BinaryOp {
            left,
            op: ast::BinaryOperator::Minus,
            right,
        } if is_col(left) => Ok(WatermarkSpec {
            column: column.to_string(),
            delay: interval_duration(right).map_err(|m| WeirError::user_at(m, at))?,
        }),
        _ => Err(bad()),
    }
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

/// SQL column types a source may declare, mapped to Arrow. TIMESTAMP is millisecond
/// precision, UTC, which is what JSON epoch-millis carry.
pub fn arrow_type(t: &SqlType) -> std::result::Result<DataType, String> {
    use SqlType::*;
    Ok(match t {
        Text | Varchar(_) | String(_) | Char(_) | CharVarying(_) | Character(_) => DataType::Utf8,
        Timestamp(_, _) | Datetime(_) => DataType::Timestamp(TimeUnit::Millisecond, None),
        Date => DataType::Date32,
        Boolean | Bool => DataType::Boolean,
        SmallInt(_) | Int16 => DataType::Int16,
        Int(_) | Integer(_) | Int4(_) | Int32 => DataType::Int32,
        BigInt(_) | Int8(_) | Int64 => DataType::Int64,
        Real | Float4 | Float32 => DataType::Float32,
        Double(_) | DoublePrecision | Float8 | Float64 | Float(_) => DataType::Float64,
        Decimal(info) | Numeric(info) => {
            use ast::ExactNumberInfo::*;
            let (p, s) = match info {
                None => (38, 10),
                Precision(p) => (*p as u8, 0),
                PrecisionAndScale(p, s) => (*p as u8, *s as i8),
            };
            DataType::Decimal128(p.min(38), s)
        }
        other => {
            return Err(format!(
                "column type {other} is not supported; use TEXT, TIMESTAMP, DATE, BOOLEAN, \
                 SMALLINT, INT, BIGINT, REAL, DOUBLE or DECIMAL(p, s)"
            ));
        }
    })
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
    let mut sub = Parser::new(&dialect).with_tokens_with_locations(tokens);
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

/// The kind of window a view reads through, with its sizes in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// `TUMBLE(src, ts, size)`: back-to-back windows of `size`.
    Tumble { size_ms: i64 },
    /// `HOP(src, ts, slide, size)`: windows of `size` starting every `slide` (`size` a
    /// multiple of `slide`), so each row is in `size / slide` windows.
    Hop { slide_ms: i64, size_ms: i64 },
    /// `SESSION(src, ts, gap)`: per GROUP BY key, runs of rows less than `gap` apart.
    Session { gap_ms: i64 },
}

impl WindowKind {
    /// The table function's name, as SQL writes it.
    pub fn name(&self) -> &'static str {
        match self {
            WindowKind::Tumble { .. } => "TUMBLE",
            WindowKind::Hop { .. } => "HOP",
            WindowKind::Session { .. } => "SESSION",
        }
    }
}

/// A window table function found in a view's FROM clause.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSpec {
    /// The relation the window reads.
    pub input: String,
    pub time_column: String,
    pub kind: WindowKind,
}

/// Rewrite the window table function in FROM into a derived table over its input that adds
/// `window_start` and `window_end`, returning the window found. At most one window per view.
///
/// - `TUMBLE(src, ts, size)`: `date_bin(size, ts)` and that plus `size`: the row's window.
/// - `HOP(src, ts, slide, size)`: `date_bin(slide, ts)` and that plus `size`: the first
///   window of the row's pane; the aggregator expands panes into windows.
/// - `SESSION(src, ts, gap)`: `ts` and `ts + gap`: the row's own extent; the aggregator
///   merges rows into sessions.
///
/// Because HOP and SESSION rows do not carry their final window, their `window_start` and
/// `window_end` may not be used in the WHERE clause of the query that reads the window.
/// `columns(name)` gives a relation's column names, so that window columns it already has
/// (a view over a windowed view) are replaced rather than duplicated.
pub fn rewrite_windows(
    query: &mut Query,
    columns: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Result<Option<WindowSpec>> {
    let mut found = None;
    rewrite_query(query, &mut found, columns)?;
    Ok(found)
}

type Columns<'a> = &'a dyn Fn(&str) -> Option<Vec<String>>;

/// A window found while rewriting, with where its function was written.
type Found = Option<(WindowSpec, Location)>;

fn rewrite_query(q: &mut Query, found: &mut Option<WindowSpec>, cols: Columns) -> Result<()> {
    if let Some(with) = q.with.as_mut() {
        for cte in with.cte_tables.iter_mut() {
            rewrite_query(&mut cte.query, found, cols)?;
        }
    }
    rewrite_set_expr(&mut q.body, found, cols)
}

fn rewrite_set_expr(s: &mut SetExpr, found: &mut Option<WindowSpec>, cols: Columns) -> Result<()> {
    match s {
        SetExpr::Select(sel) => {
            let mut here: Found = None;
            for twj in sel.from.iter_mut() {
                rewrite_factor(&mut twj.relation, found, &mut here, cols)?;
                for j in twj.joins.iter_mut() {
                    rewrite_factor(&mut j.relation, found, &mut here, cols)?;
                }
            }
            if let Some((w, at)) = here
                && !matches!(w.kind, WindowKind::Tumble { .. })
                && let Some(selection) = &sel.selection
                && mentions_window_bounds(selection)
            {
                return Err(WeirError::user_at(
                    format!(
                        "window_start and window_end of a {} window are known only after \
                         aggregation: use them in GROUP BY, SELECT or HAVING, not in WHERE",
                        w.kind.name()
                    ),
                    at,
                ));
            }
            Ok(())
        }
        SetExpr::Query(q) => rewrite_query(q, found, cols),
        SetExpr::SetOperation { left, right, .. } => {
            rewrite_set_expr(left, found, cols)?;
            rewrite_set_expr(right, found, cols)
        }
        _ => Ok(()),
    }
}

/// Whether an expression names `window_start` or `window_end` (as an identifier, not in a
/// string).
fn mentions_window_bounds(e: &Expr) -> bool {
    let dialect = GenericDialect {};
    datafusion::sql::sqlparser::tokenizer::Tokenizer::new(&dialect, &e.to_string())
        .tokenize()
        .is_ok_and(|tokens| {
            tokens.iter().any(|t| {
                matches!(t, Token::Word(w)
                    if w.value.eq_ignore_ascii_case("window_start")
                        || w.value.eq_ignore_ascii_case("window_end"))
            })
        })
}

fn object_last(n: &ObjectName) -> String {
    n.0.last()
        .and_then(|p| p.as_ident())
        .map(|i| i.value.clone())
        .unwrap_or_default()
}

/// An interval argument of a window function, in milliseconds; `what` names it in errors
/// when the function takes several.
fn interval_ms(e: Option<Expr>, usage: &str, what: Option<&str>, at: Location) -> Result<i64> {
    let e = e.ok_or_else(|| WeirError::user_at(usage, at))?;
    let d = interval_duration(&e).map_err(|m| {
        let m = match what {
            Some(w) => format!("{usage}: {w}: {m}"),
            None => format!("{usage}: {m}"),
        };
        WeirError::user_at(m, at)
    })?;
    Ok(d.as_millis() as i64)
}

fn rewrite_factor(
    f: &mut TableFactor,
    found: &mut Option<WindowSpec>,
    here: &mut Found,
    cols: Columns,
) -> Result<()> {
    match f {
        TableFactor::Derived { subquery, .. } => rewrite_query(subquery, found, cols),
        TableFactor::NestedJoin {
            table_with_joins, ..
        } => {
            rewrite_factor(&mut table_with_joins.relation, found, here, cols)?;
            for j in table_with_joins.joins.iter_mut() {
                rewrite_factor(&mut j.relation, found, here, cols)?;
            }
            Ok(())
        }
        TableFactor::Table {
            name,
            args: Some(args),
            alias,
            ..
        } => {
            let func = object_last(name).to_ascii_uppercase();
            let at = name
                .0
                .first()
                .and_then(|p| p.as_ident())
                .map(|i| Location {
                    line: i.span.start.line,
                    column: i.span.start.column,
                })
                .unwrap_or_default();
            let (usage, arity) = match func.as_str() {
                "TUMBLE" => ("TUMBLE takes (source, time_column, INTERVAL '...')", 3),
                "HOP" => (
                    "HOP takes (source, time_column, INTERVAL 'slide', INTERVAL 'size')",
                    4,
                ),
                "SESSION" => ("SESSION takes (source, time_column, INTERVAL 'gap')", 3),
                _ => return Ok(()),
            };
            if found.is_some() {
                return Err(WeirError::user_at(
                    "a view may use one window table function",
                    at,
                ));
            }
            if args.args.len() != arity {
                return Err(WeirError::user_at(usage, at));
            }
            let arg = |i: usize| match &args.args[i] {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
                _ => None,
            };
            let ident = |e: Option<Expr>| match e {
                Some(Expr::Identifier(i)) => Some(i.value),
                Some(Expr::CompoundIdentifier(v)) => v.last().map(|i| i.value.clone()),
                _ => None,
            };
            let input = ident(arg(0)).ok_or_else(|| WeirError::user_at(usage, at))?;
            let time_column = ident(arg(1)).ok_or_else(|| WeirError::user_at(usage, at))?;
            let kind = match func.as_str() {
                "TUMBLE" => WindowKind::Tumble {
                    size_ms: interval_ms(arg(2), usage, None, at)?,
                },
                "HOP" => {
                    let slide_ms = interval_ms(arg(2), usage, Some("slide"), at)?;
                    let size_ms = interval_ms(arg(3), usage, Some("size"), at)?;
                    if size_ms % slide_ms != 0 {
                        return Err(WeirError::user_at(
                            format!(
                                "HOP size ({size_ms} ms) must be a whole multiple of its slide \
                                 ({slide_ms} ms)"
                            ),
                            at,
                        ));
                    }
                    WindowKind::Hop { slide_ms, size_ms }
                }
                _ => WindowKind::Session {
                    gap_ms: interval_ms(arg(2), usage, None, at)?,
                },
            };
            // Keep the input's columns, except window columns it already has (a window over
            // a windowed view): those are replaced by this window's.
            let keep = match cols(&input) {
                Some(c) if c.iter().any(|n| n == "window_start" || n == "window_end") => c
                    .iter()
                    .filter(|n| *n != "window_start" && *n != "window_end")
                    .map(|n| format!("\"{}\"", n.replace('"', "\"\"")))
                    .collect::<Vec<_>>()
                    .join(", "),
                _ => "*".to_string(),
            };
            let ts = format!("\"{}\"", time_column.replace('"', "\"\""));
            let ms = |v: i64| format!("INTERVAL '{v} milliseconds'");
            let (start, end) = match kind {
                WindowKind::Tumble { size_ms } => {
                    let bin = format!("date_bin({}, {ts})", ms(size_ms));
                    (bin.clone(), format!("{bin} + {}", ms(size_ms)))
                }
                WindowKind::Hop { slide_ms, size_ms } => {
                    let bin = format!("date_bin({}, {ts})", ms(slide_ms));
                    (bin.clone(), format!("{bin} + {}", ms(size_ms)))
                }
                WindowKind::Session { gap_ms } => (ts.clone(), format!("{ts} + {}", ms(gap_ms))),
            };
            let sub_sql = format!(
                "SELECT {keep}, {start} AS window_start, {end} AS window_end FROM \"{}\"",
                input.replace('"', "\"\"")
            );
            let dialect = GenericDialect {};
            let subquery = Parser::new(&dialect)
                .try_with_sql(&sub_sql)
                .and_then(|mut p| p.parse_query())
                .map_err(|e| WeirError::Internal(format!("window rewrite: {e}")))?;
            let alias = alias.clone().unwrap_or_else(|| TableAlias {
                explicit: true,
                name: ast::Ident::new(input.clone()),
                columns: vec![],
                at: None,
            });
            *f = TableFactor::Derived {
                lateral: false,
                subquery,
                alias: Some(alias),
                sample: None,
            };
            let spec = WindowSpec {
                input,
                time_column,
                kind,
            };
            *here = Some((spec.clone(), at));
            *found = Some(spec);
            Ok(())
        }
        _ => Ok(()),
    }
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

    #[test]
    fn tumble_rewrite() {
        let s = parse_script(
            "CREATE MATERIALIZED VIEW v AS SELECT window_start, count(*) FROM TUMBLE(d, ts, INTERVAL '1' MINUTE) GROUP BY window_start, window_end EMIT ON WINDOW CLOSE",
        )
        .unwrap();
        let WeirStatement::CreateView(mut v) = s[0].statement.clone() else {
            panic!()
        };
        assert_eq!(v.emit, Some(Emit::OnWindowClose));
        let w = rewrite_windows(&mut v.query, &|_| None).unwrap().unwrap();
        assert_eq!(w.kind, WindowKind::Tumble { size_ms: 60_000 });
        assert_eq!(w.input, "d");
        assert!(v.query.to_string().contains("date_bin"));
    }
}
