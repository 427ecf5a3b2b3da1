//! `COUNT_WINDOW(source, key_column, time_column, rows)` in a view's FROM clause: per key,
//! windows of `rows` consecutive rows in event-time order. The function is replaced by the
//! relation [`COUNT_WINDOW_INPUT`]: the input's columns and `window_index`, which the
//! count-window operator fills with each complete window's rows.

use super::windows::{object_last, written_at};
use crate::error::{Location, Result, WeirError};
use datafusion::sql::sqlparser::ast::{
    self, Expr, FunctionArg, FunctionArgExpr, Query, SetExpr, TableAlias, TableFactor, Value,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// The relation a count window's query reads in place of the function.
pub const COUNT_WINDOW_INPUT: &str = "__count_window";

/// The column numbering a key's windows: 0 for its first `rows` rows, 1 for the next ...
pub const WINDOW_INDEX: &str = "window_index";

const USAGE: &str = "COUNT_WINDOW takes (source, key_column, time_column, row_count), the row \
    count a whole number above 0";

/// A `COUNT_WINDOW` found in a view's FROM clause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountWindowSpec {
    /// The relation it reads.
    pub input: String,
    pub key_column: String,
    pub time_column: String,
    pub rows: usize,
    /// Where the function was written.
    pub at: Location,
}

/// Replace a `COUNT_WINDOW(...)` in FROM with [`COUNT_WINDOW_INPUT`] (aliased as the
/// function was, or as its input), returning what it asked for. At most one per view.
pub fn rewrite_count_window(query: &mut Query) -> Result<Option<CountWindowSpec>> {
    let mut found = None;
    in_query(query, &mut found)?;
    Ok(found)
}

fn in_query(q: &mut Query, found: &mut Option<CountWindowSpec>) -> Result<()> {
    if let Some(with) = q.with.as_mut() {
        for cte in with.cte_tables.iter_mut() {
            in_query(&mut cte.query, found)?;
        }
    }
    in_set_expr(&mut q.body, found)
}

fn in_set_expr(s: &mut SetExpr, found: &mut Option<CountWindowSpec>) -> Result<()> {
    match s {
        SetExpr::Select(sel) => {
            for twj in sel.from.iter_mut() {
                in_factor(&mut twj.relation, found)?;
                for j in twj.joins.iter_mut() {
                    in_factor(&mut j.relation, found)?;
                }
            }
            Ok(())
        }
        SetExpr::Query(q) => in_query(q, found),
        SetExpr::SetOperation { left, right, .. } => {
            in_set_expr(left, found)?;
            in_set_expr(right, found)
        }
        _ => Ok(()),
    }
}

fn in_factor(f: &mut TableFactor, found: &mut Option<CountWindowSpec>) -> Result<()> {
    match f {
        TableFactor::Derived { subquery, .. } => in_query(subquery, found),
        TableFactor::NestedJoin {
            table_with_joins, ..
        } => {
            in_factor(&mut table_with_joins.relation, found)?;
            for j in table_with_joins.joins.iter_mut() {
                in_factor(&mut j.relation, found)?;
            }
            Ok(())
        }
        TableFactor::Table {
            name,
            args: Some(args),
            alias,
            ..
        } => {
            if !object_last(name).eq_ignore_ascii_case("COUNT_WINDOW") {
                return Ok(());
            }
            let at = written_at(name);
            if found.is_some() {
                return Err(WeirError::user_at(
                    "a view may use one window table function",
                    at,
                ));
            }
            if args.args.len() != 4 {
                return Err(WeirError::user_at(USAGE, at));
            }
            let arg = |i: usize| match &args.args[i] {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
                _ => None,
            };
            let ident = |i: usize| match arg(i) {
                Some(Expr::Identifier(i)) => Ok(i.value),
                Some(Expr::CompoundIdentifier(v)) => v
                    .last()
                    .map(|i| i.value.clone())
                    .ok_or_else(|| WeirError::user_at(USAGE, at)),
                _ => Err(WeirError::user_at(USAGE, at)),
            };
            let rows = match arg(3) {
                Some(Expr::Value(v)) => match &v.value {
                    Value::Number(n, _) => n.parse::<usize>().ok().filter(|n| *n > 0),
                    _ => None,
                },
                _ => None,
            }
            .ok_or_else(|| WeirError::user_at(USAGE, at))?;
            let spec = CountWindowSpec {
                input: ident(0)?,
                key_column: ident(1)?,
                time_column: ident(2)?,
                rows,
                at,
            };
            let dialect = GenericDialect {};
            let subquery = Parser::new(&dialect)
                .try_with_sql(&format!("SELECT * FROM \"{COUNT_WINDOW_INPUT}\""))
                .and_then(|mut p| p.parse_query())
                .map_err(|e| WeirError::Internal(format!("count window rewrite: {e}")))?;
            let alias = alias.clone().unwrap_or_else(|| TableAlias {
                explicit: true,
                name: ast::Ident::new(spec.input.clone()),
                columns: vec![],
                at: None,
            });
            *f = TableFactor::Derived {
                lateral: false,
                subquery,
                alias: Some(alias),
                sample: None,
            };
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
    use crate::sql::{WeirStatement, parse_script};

    fn view(sql: &str) -> Query {
        let s = parse_script(sql).unwrap();
        let WeirStatement::CreateView(v) = s[0].statement.clone() else {
            panic!()
        };
        *v.query
    }

    #[test]
    fn rewrites_the_function() {
        let mut q = view(
            "CREATE MATERIALIZED VIEW v AS SELECT sensor, window_index, avg(temp) \
             FROM COUNT_WINDOW(readings, sensor, ts, 100) GROUP BY sensor, window_index",
        );
        let spec = rewrite_count_window(&mut q).unwrap().unwrap();
        assert_eq!(spec.input, "readings");
        assert_eq!(spec.key_column, "sensor");
        assert_eq!(spec.time_column, "ts");
        assert_eq!(spec.rows, 100);
        assert!(
            q.to_string()
                .contains("FROM (SELECT * FROM \"__count_window\") AS readings"),
            "{q}"
        );
    }

    #[test]
    fn refuses_bad_arguments() {
        for args in [
            "readings, sensor, ts",
            "readings, sensor, ts, 0",
            "readings, sensor, ts, 'x'",
        ] {
            let mut q = view(&format!(
                "CREATE MATERIALIZED VIEW v AS SELECT * FROM COUNT_WINDOW({args})"
            ));
            let e = rewrite_count_window(&mut q).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("line 1, column 45: {USAGE}"),
                "{args}"
            );
        }
    }
}
