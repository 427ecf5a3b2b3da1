//! `COUNT_WINDOW(source, key_column, time_column, rows)` in a view's FROM clause: per key,
//! windows of `rows` consecutive rows in event-time order. `windows::rewrite_windows`
//! replaces the function by the relation [`COUNT_WINDOW_INPUT`]: the input's columns and
//! `window_index`, which the count-window operator fills with each complete window's rows.

use super::windows::{ident_of, unnamed_arg};
use crate::error::{Location, Result, WeirError};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::sql::sqlparser::ast::{Expr, FunctionArg, Value};
use std::sync::Arc;

/// The relation a count window's query reads in place of the function.
pub const COUNT_WINDOW_INPUT: &str = "__count_window";

/// The column numbering a key's windows: 0 for its first `rows` rows, 1 for the next ...
pub const WINDOW_INDEX: &str = "window_index";

pub(super) const USAGE: &str = "COUNT_WINDOW takes (source, key_column, time_column, row_count), the row \
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

/// The `COUNT_WINDOW` written at `at` with arguments `args` (four of them: the caller,
/// `windows::rewrite_windows`, checks the count).
pub(super) fn parse(args: &[FunctionArg], at: Location) -> Result<CountWindowSpec> {
    let ident =
        |i: usize| ident_of(unnamed_arg(args, i)).ok_or_else(|| WeirError::user_at(USAGE, at));
    let rows = match unnamed_arg(args, 3) {
        Some(Expr::Value(v)) => match &v.value {
            Value::Number(n, _) => n.parse::<usize>().ok().filter(|n| *n > 0),
            _ => None,
        },
        _ => None,
    }
    .ok_or_else(|| WeirError::user_at(USAGE, at))?;
    Ok(CountWindowSpec {
        input: ident(0)?,
        key_column: ident(1)?,
        time_column: ident(2)?,
        rows,
        at,
    })
}

/// What a count window's query reads (the count-window operator's rows): the input's
/// columns and [`WINDOW_INDEX`].
pub fn window_schema(input: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(WINDOW_INDEX, DataType::Int64, false));
    Arc::new(Schema::new(fields))
}

/// What the function is replaced by: the rows the count-window operator emits.
pub(super) fn replacement_sql() -> String {
    format!("SELECT * FROM \"{COUNT_WINDOW_INPUT}\"")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::sql::{WeirStatement, parse_script, rewrite_windows};
    use datafusion::sql::sqlparser::ast::Query;

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
        let spec = rewrite_windows(&mut q, &|_| None).unwrap().count.unwrap();
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
            let e = rewrite_windows(&mut q, &|_| None).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("line 1, column 45: {USAGE}"),
                "{args}"
            );
        }
    }
}
