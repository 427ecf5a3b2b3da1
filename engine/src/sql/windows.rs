//! The window table functions of a view's FROM clause (`TUMBLE`, `HOP`, `SESSION`),
//! rewritten into a derived table over their input that adds `window_start` and
//! `window_end`; and `COUNT_WINDOW` (`count_window.rs`), rewritten into a read of the
//! count-window operator's rows.

use super::count_window::{self, CountWindowSpec};
use super::interval_duration;
use crate::error::{Location, Result, WeirError};
use datafusion::sql::sqlparser::ast::{
    self, Expr, FunctionArg, FunctionArgExpr, ObjectName, Query, SetExpr, TableAlias, TableFactor,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;

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

/// The window table function a view's FROM clause uses, if any (at most one).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Windows {
    /// `TUMBLE`, `HOP` or `SESSION`.
    pub time: Option<WindowSpec>,
    /// `COUNT_WINDOW`.
    pub count: Option<CountWindowSpec>,
}

/// Rewrite the window table function in FROM into a derived table over its input that adds
/// `window_start` and `window_end` (`COUNT_WINDOW`: into a read of the count-window
/// operator's rows), returning the window found. At most one window per view.
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
) -> Result<Windows> {
    let mut found = Windows::default();
    rewrite_query(query, &mut found, columns)?;
    Ok(found)
}

type Columns<'a> = &'a dyn Fn(&str) -> Option<Vec<String>>;

/// A window found while rewriting, with where its function was written.
type Found = Option<(WindowSpec, Location)>;

fn rewrite_query(q: &mut Query, found: &mut Windows, cols: Columns) -> Result<()> {
    if let Some(with) = q.with.as_mut() {
        for cte in with.cte_tables.iter_mut() {
            rewrite_query(&mut cte.query, found, cols)?;
        }
    }
    rewrite_set_expr(&mut q.body, found, cols)
}

fn rewrite_set_expr(s: &mut SetExpr, found: &mut Windows, cols: Columns) -> Result<()> {
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

/// A table function's argument `i`, when it is a plain expression.
pub(super) fn unnamed_arg(args: &[FunctionArg], i: usize) -> Option<Expr> {
    match args.get(i)? {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
        _ => None,
    }
}

/// The name an identifier argument gives (the last part of a compound one).
pub(super) fn ident_of(e: Option<Expr>) -> Option<String> {
    match e? {
        Expr::Identifier(i) => Some(i.value),
        Expr::CompoundIdentifier(v) => v.last().map(|i| i.value.clone()),
        _ => None,
    }
}

/// The derived table `(sql) AS alias` that replaces a window table function over `input`
/// (aliased as the function was, or as its input).
fn derived(sql: &str, alias: &Option<TableAlias>, input: &str) -> Result<TableFactor> {
    let subquery = Parser::new(&GenericDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_query())
        .map_err(|e| WeirError::Internal(format!("window rewrite: {e}")))?;
    let alias = alias.clone().unwrap_or_else(|| TableAlias {
        explicit: true,
        name: ast::Ident::new(input),
        columns: vec![],
        at: None,
    });
    Ok(TableFactor::Derived {
        lateral: false,
        subquery,
        alias: Some(alias),
        sample: None,
    })
}

/// Where a function or table name was written.
fn written_at(name: &ObjectName) -> Location {
    name.0
        .first()
        .and_then(|p| p.as_ident())
        .map(|i| Location {
            line: i.span.start.line,
            column: i.span.start.column,
        })
        .unwrap_or_default()
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
    found: &mut Windows,
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
            let at = written_at(name);
            let (usage, arity) = match func.as_str() {
                "TUMBLE" => ("TUMBLE takes (source, time_column, INTERVAL '...')", 3),
                "HOP" => (
                    "HOP takes (source, time_column, INTERVAL 'slide', INTERVAL 'size')",
                    4,
                ),
                "SESSION" => ("SESSION takes (source, time_column, INTERVAL 'gap')", 3),
                "COUNT_WINDOW" => (count_window::USAGE, 4),
                _ => return Ok(()),
            };
            if found.time.is_some() || found.count.is_some() {
                return Err(WeirError::user_at(
                    "a view may use one window table function",
                    at,
                ));
            }
            if args.args.len() != arity {
                return Err(WeirError::user_at(usage, at));
            }
            if func == "COUNT_WINDOW" {
                let spec = count_window::parse(&args.args, at)?;
                *f = derived(&count_window::replacement_sql(), alias, &spec.input)?;
                found.count = Some(spec);
                return Ok(());
            }
            let arg = |i: usize| unnamed_arg(&args.args, i);
            let ident = ident_of;
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
            // The end adds a duration, not an interval: a timestamp plus a duration is one
            // integer addition per row, where an interval (which may hold months) goes
            // through calendar arithmetic per row, a quarter of a simple view's CPU.
            let plus = |v: i64| format!("arrow_cast({v}, 'Duration(Millisecond)')");
            let (start, end) = match kind {
                WindowKind::Tumble { size_ms } => {
                    let bin = format!("date_bin({}, {ts})", ms(size_ms));
                    (bin.clone(), format!("{bin} + {}", plus(size_ms)))
                }
                WindowKind::Hop { slide_ms, size_ms } => {
                    let bin = format!("date_bin({}, {ts})", ms(slide_ms));
                    (bin.clone(), format!("{bin} + {}", plus(size_ms)))
                }
                WindowKind::Session { gap_ms } => (ts.clone(), format!("{ts} + {}", plus(gap_ms))),
            };
            let sub_sql = format!(
                "SELECT {keep}, {start} AS window_start, {end} AS window_end FROM \"{}\"",
                input.replace('"', "\"\"")
            );
            *f = derived(&sub_sql, alias, &input)?;
            let spec = WindowSpec {
                input,
                time_column,
                kind,
            };
            *here = Some((spec.clone(), at));
            found.time = Some(spec);
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::sql::{Emit, WeirStatement, parse_script};

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
        let w = rewrite_windows(&mut v.query, &|_| None)
            .unwrap()
            .time
            .unwrap();
        assert_eq!(w.kind, WindowKind::Tumble { size_ms: 60_000 });
        assert_eq!(w.input, "d");
        assert!(v.query.to_string().contains("date_bin"));
    }
}
