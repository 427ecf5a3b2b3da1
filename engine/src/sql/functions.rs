//! Bounded versions of DataFusion's functions whose output one small argument can make
//! arbitrarily large: `repeat('a', 2000000000)` allocates 2 GB in one call, before any
//! memory pool or time limit can see it. Each is registered over the built-in function of
//! the same name (and its aliases) in every context Weir plans user SQL in (views and
//! ad-hoc queries), works exactly like it, and first computes from its arguments how many
//! bytes the call would build: past [`MAX_VALUE_BYTES`] it fails with [`ValueTooLarge`]
//! instead. With literal arguments the check runs when the query is planned, so a view
//! that would always fail is refused when it is created.
//!
//! | function | bytes counted, summed over the rows of a call |
//! | --- | --- |
//! | `repeat(s, n)` | `len(s) * n` |
//! | `lpad(s, n [, fill])`, `rpad` | `n`, times 4 unless `s` and `fill` are ASCII |
//! | `replace(s, from, to)` | `len(s) + (len(s) / len(from) + 1) * len(to)` |
//! | `regexp_replace(s, re, to [, flags])` | `len(s) + (2 * len(s) + 1) * len(to)` |
//! | `array_repeat(x, n)`, `list_repeat` | `n` times the size of `x` |
//! | `array_resize(a, n [, x])`, `list_resize` | `16 * n` |
//! | `range(...)`, `generate_series(...)` (the array functions) | 8 bytes per element |

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;
use std::fmt;
use std::sync::Arc;

/// The most bytes one call of a bounded function may build (over all rows of the batch it
/// is called on).
pub const MAX_VALUE_BYTES: usize = 64 << 20;

/// A call of a bounded function would have built more than [`MAX_VALUE_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueTooLarge {
    pub function: String,
    /// What the call would have built.
    pub bytes: u128,
    pub limit: usize,
}

impl fmt::Display for ValueTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}(...) would build {} bytes in one call; the value size limit is {} bytes \
             ({} MiB)",
            self.function,
            self.bytes,
            self.limit,
            self.limit >> 20
        )
    }
}

impl std::error::Error for ValueTooLarge {}

impl ValueTooLarge {
    /// A DataFusion error from planning or running a user's SQL as Weir's: a value too
    /// large is a [`WeirError::Limit`] of kind `ValueSize`; anything else a user error.
    pub fn or_planning(e: DataFusionError) -> crate::error::WeirError {
        match Self::find(&e) {
            Some(v) => crate::error::WeirError::Limit {
                kind: crate::error::LimitKind::ValueSize,
                message: v.to_string(),
                statement: None,
            },
            None => crate::error::WeirError::planning(e),
        }
    }

    /// The `ValueTooLarge` somewhere in the chain of `e`, if any.
    pub fn find(e: &DataFusionError) -> Option<&ValueTooLarge> {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cur {
            if let Some(v) = err.downcast_ref::<ValueTooLarge>() {
                return Some(v);
            }
            if let Some(DataFusionError::Context(_, inner)) = err.downcast_ref::<DataFusionError>()
            {
                cur = Some(inner.as_ref());
                continue;
            }
            cur = err.source();
        }
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Repeat,
    Pad,
    Replace,
    RegexpReplace,
    ArrayRepeat,
    ArrayResize,
    Series,
}

const BOUNDED: [(&str, Kind); 9] = [
    ("repeat", Kind::Repeat),
    ("lpad", Kind::Pad),
    ("rpad", Kind::Pad),
    ("replace", Kind::Replace),
    ("regexp_replace", Kind::RegexpReplace),
    ("array_repeat", Kind::ArrayRepeat),
    ("array_resize", Kind::ArrayResize),
    ("range", Kind::Series),
    ("generate_series", Kind::Series),
];

/// Replace the functions above in `ctx` by their bounded versions.
pub fn register_bounded_functions(ctx: &SessionContext) {
    // The JSON functions over text columns (json_get_str, json_as_text, `->`, `->>`, ...).
    {
        let state = ctx.state_ref();
        let mut state = state.write();
        if let Err(e) = datafusion_functions_json::register_all(&mut *state) {
            tracing::warn!(error = %e, "the JSON text functions could not be registered");
        }
    }
    for (name, kind) in BOUNDED {
        // A function DataFusion was built without is not there to bound.
        if let Ok(inner) = ctx.udf(name) {
            ctx.register_udf(ScalarUDF::new_from_impl(Bounded { inner, kind }));
        }
    }
}

/// The built-in function, checked first.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: Arc<ScalarUDF>,
    kind: Kind,
}

impl Bounded {
    fn check(&self, args: &[ColumnarValue], rows: usize) -> Result<()> {
        let rows = if args.iter().any(|a| matches!(a, ColumnarValue::Array(_))) {
            rows
        } else {
            1
        };
        let args: Vec<Arg> = args.iter().map(Arg::new).collect::<Result<_>>()?;
        let bytes = (0..rows).fold(0u128, |sum, i| {
            sum.saturating_add(row_bytes(self.kind, &args, i))
        });
        if bytes > MAX_VALUE_BYTES as u128 {
            return Err(DataFusionError::External(Box::new(ValueTooLarge {
                function: self.inner.name().to_string(),
                bytes,
                limit: MAX_VALUE_BYTES,
            })));
        }
        Ok(())
    }
}

/// An argument of one call, with integer arguments cast once.
enum Arg {
    Scalar(ScalarValue),
    Array(ArrayRef),
    Ints(ArrayRef),
}

impl Arg {
    fn new(v: &ColumnarValue) -> Result<Arg> {
        Ok(match v {
            ColumnarValue::Scalar(s) => Arg::Scalar(s.clone()),
            ColumnarValue::Array(a) if a.data_type().is_integer() => {
                Arg::Ints(datafusion::arrow::compute::cast(a, &DataType::Int64)?)
            }
            ColumnarValue::Array(a) => Arg::Array(a.clone()),
        })
    }

    fn scalar(&self, i: usize) -> Option<ScalarValue> {
        match self {
            Arg::Scalar(s) => Some(s.clone()),
            Arg::Array(a) | Arg::Ints(a) => ScalarValue::try_from_array(a, i).ok(),
        }
    }

    /// An integer argument (0 when null or not an integer).
    fn int(&self, i: usize) -> i128 {
        match self {
            Arg::Ints(a) => {
                let a = a.as_primitive::<Int64Type>();
                if a.is_valid(i) { a.value(i) as i128 } else { 0 }
            }
            Arg::Scalar(s) => scalar_int(s).unwrap_or(0),
            Arg::Array(_) => 0,
        }
    }

    /// A string argument: its length in bytes and whether it is ASCII (0 and true when null
    /// or not a string).
    fn text(&self, i: usize) -> (u128, bool) {
        let of = |s: &str| (s.len() as u128, s.is_ascii());
        match self {
            Arg::Scalar(
                ScalarValue::Utf8(Some(s))
                | ScalarValue::LargeUtf8(Some(s))
                | ScalarValue::Utf8View(Some(s)),
            ) => of(s),
            Arg::Array(a) if a.is_valid(i) => match a.data_type() {
                DataType::Utf8 => of(a.as_string::<i32>().value(i)),
                DataType::LargeUtf8 => of(a.as_string::<i64>().value(i)),
                DataType::Utf8View => of(a.as_string_view().value(i)),
                _ => (0, true),
            },
            _ => (0, true),
        }
    }

    /// Bytes one element made of this argument takes.
    fn element_bytes(&self, i: usize) -> u128 {
        match self {
            Arg::Scalar(s) => s.size() as u128,
            Arg::Ints(_) => 8,
            Arg::Array(a) => match a.data_type() {
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => self.text(i).0 + 16,
                _ => (a.get_array_memory_size() / a.len().max(1)) as u128 + 8,
            },
        }
    }
}

fn scalar_int(s: &ScalarValue) -> Option<i128> {
    Some(match s {
        ScalarValue::Int8(Some(v)) => *v as i128,
        ScalarValue::Int16(Some(v)) => *v as i128,
        ScalarValue::Int32(Some(v)) => *v as i128,
        ScalarValue::Int64(Some(v)) => *v as i128,
        ScalarValue::UInt8(Some(v)) => *v as i128,
        ScalarValue::UInt16(Some(v)) => *v as i128,
        ScalarValue::UInt32(Some(v)) => *v as i128,
        ScalarValue::UInt64(Some(v)) => *v as i128,
        _ => return None,
    })
}

/// A point of a series in nanoseconds (integers as they are).
fn series_point(s: &ScalarValue) -> Option<i128> {
    const DAY: i128 = 86_400_000_000_000;
    Some(match s {
        ScalarValue::Date32(Some(d)) => *d as i128 * DAY,
        ScalarValue::Date64(Some(ms)) => *ms as i128 * 1_000_000,
        ScalarValue::TimestampSecond(Some(v), _) => *v as i128 * 1_000_000_000,
        ScalarValue::TimestampMillisecond(Some(v), _) => *v as i128 * 1_000_000,
        ScalarValue::TimestampMicrosecond(Some(v), _) => *v as i128 * 1_000,
        ScalarValue::TimestampNanosecond(Some(v), _) => *v as i128,
        other => scalar_int(other)?,
    })
}

/// The smallest step an interval can be, in nanoseconds (a month is at least 28 days).
fn series_step(s: &ScalarValue) -> Option<i128> {
    const DAY: i128 = 86_400_000_000_000;
    Some(match s {
        ScalarValue::IntervalMonthDayNano(Some(v)) => {
            v.months as i128 * 28 * DAY + v.days as i128 * DAY + v.nanoseconds as i128
        }
        ScalarValue::IntervalDayTime(Some(v)) => {
            v.days as i128 * DAY + v.milliseconds as i128 * 1_000_000
        }
        ScalarValue::IntervalYearMonth(Some(m)) => *m as i128 * 28 * DAY,
        other => scalar_int(other)?,
    })
}

/// The bytes a call builds for row `i`.
fn row_bytes(kind: Kind, args: &[Arg], i: usize) -> u128 {
    let arg = |k: usize| args.get(k);
    let count = |k: usize| arg(k).map_or(0, |a| a.int(i).max(0) as u128);
    let text = |k: usize| arg(k).map_or((0, true), |a| a.text(i));
    match kind {
        Kind::Repeat => text(0).0.saturating_mul(count(1)),
        Kind::Pad => {
            let ascii = text(0).1 && text(2).1;
            count(1).saturating_mul(if ascii { 1 } else { 4 })
        }
        Kind::Replace => {
            let (s, _) = text(0);
            let (from, _) = text(1);
            let (to, _) = text(2);
            s + (s / from.max(1) + 1).saturating_mul(to)
        }
        Kind::RegexpReplace => {
            let (s, _) = text(0);
            let (to, _) = text(2);
            s + (2 * s + 1).saturating_mul(to)
        }
        Kind::ArrayRepeat => {
            let element = arg(0).map_or(8, |a| a.element_bytes(i));
            count(1).saturating_mul(element)
        }
        Kind::ArrayResize => count(1).saturating_mul(16),
        Kind::Series => {
            let values: Vec<Option<ScalarValue>> = args.iter().map(|a| a.scalar(i)).collect();
            let point = |k: usize| values.get(k)?.as_ref().and_then(series_point);
            let (start, stop, step) = match values.len() {
                1 => (Some(0), point(0), Some(1)),
                2 => (point(0), point(1), Some(1)),
                _ => (point(0), point(1), values[2].as_ref().and_then(series_step)),
            };
            match (start, stop, step) {
                (Some(a), Some(b), Some(s)) if s != 0 => ((b - a) / s).max(0) as u128 * 8 + 8,
                // A zero step is an error of the function itself.
                _ => 0,
            }
        }
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.inner().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.inner().return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.inner().return_field_from_args(args)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        self.check(&args.args, args.number_rows)?;
        self.inner.invoke_with_args(args)
    }

    /// With literal arguments, the check runs at planning.
    fn simplify(&self, args: Vec<Expr>, _info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        let literals: Option<Vec<ColumnarValue>> = args
            .iter()
            .map(|a| match a {
                Expr::Literal(v, _) => Some(ColumnarValue::Scalar(v.clone())),
                _ => None,
            })
            .collect();
        if let Some(values) = literals {
            self.check(&values, 1)?;
        }
        Ok(ExprSimplifyResult::Original(args))
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::datasource::MemTable;

    fn ctx() -> SessionContext {
        let ctx = SessionContext::new();
        register_bounded_functions(&ctx);
        let schema = Arc::new(Schema::new(vec![
            Field::new("s", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some("ab"), None, Some("é")])),
                Arc::new(Int64Array::from(vec![Some(3), Some(5), None])),
            ],
        )
        .unwrap();
        let t = MemTable::try_new(schema, vec![vec![batch]]).unwrap();
        ctx.register_table("t", Arc::new(t)).unwrap();
        ctx
    }

    async fn run(sql: &str) -> Result<Vec<String>> {
        let batches = ctx().sql(sql).await?.collect().await?;
        let mut out = Vec::new();
        for b in batches {
            let col = datafusion::arrow::compute::cast(b.column(0), &DataType::Utf8)?;
            let col = col.as_string::<i32>();
            for i in 0..col.len() {
                out.push(if col.is_valid(i) {
                    col.value(i).to_string()
                } else {
                    "NULL".into()
                });
            }
        }
        Ok(out)
    }

    async fn too_large(sql: &str) -> ValueTooLarge {
        let e = run(sql).await.unwrap_err();
        ValueTooLarge::find(&e)
            .cloned()
            .unwrap_or_else(|| panic!("{sql}: {e}"))
    }

    #[tokio::test]
    async fn bounded_functions_work_like_the_built_ins() {
        assert_eq!(
            run("SELECT repeat(s, n) FROM t").await.unwrap(),
            ["ababab", "NULL", "NULL"]
        );
        assert_eq!(
            run("SELECT lpad(s, 4, '*') FROM t").await.unwrap(),
            ["**ab", "NULL", "***é"]
        );
        assert_eq!(run("SELECT rpad('x', 3)").await.unwrap(), ["x  "]);
        assert_eq!(
            run("SELECT replace('banana', 'a', 'oo')").await.unwrap(),
            ["boonoonoo"]
        );
        assert_eq!(
            run("SELECT regexp_replace('banana', 'a', 'o', 'g')")
                .await
                .unwrap(),
            ["bonono"]
        );
        assert_eq!(
            run("SELECT array_repeat('x', 3)").await.unwrap(),
            ["[x, x, x]"]
        );
        assert_eq!(
            run("SELECT list_resize([1, 2], 3, 0)").await.unwrap(),
            ["[1, 2, 0]"]
        );
        assert_eq!(run("SELECT range(1, 4)").await.unwrap(), ["[1, 2, 3]"]);
        assert_eq!(
            run("SELECT generate_series(DATE '2024-01-01', DATE '2024-03-01', INTERVAL '1 month')")
                .await
                .unwrap(),
            ["[2024-01-01, 2024-02-01, 2024-03-01]"]
        );
    }

    #[tokio::test]
    async fn calls_past_the_limit_fail_before_allocating() {
        let e = too_large("SELECT repeat('a', 2000000000)").await;
        assert_eq!(
            e,
            ValueTooLarge {
                function: "repeat".into(),
                bytes: 2_000_000_000,
                limit: MAX_VALUE_BYTES
            }
        );
        assert!(e.to_string().contains("limit is 67108864 bytes"), "{e}");
        // From a column: the rows of the batch add up.
        let e = too_large("SELECT repeat(s, 20000000) FROM t").await;
        assert_eq!(e.bytes, 2 * 20_000_000 + 2 * 20_000_000);
        assert_eq!(
            too_large("SELECT lpad('x', 100000000)").await.bytes,
            100_000_000
        );
        // Not ASCII: up to 4 bytes a character.
        assert_eq!(
            too_large("SELECT rpad(s, 20000000) FROM t").await.bytes,
            20_000_000 * 6
        );
        let big = "a".repeat(10_000);
        let e = too_large(&format!("SELECT replace('{big}', 'a', '{big}')")).await;
        assert_eq!(e.function, "replace");
        let e = too_large(&format!("SELECT regexp_replace('{big}', '', '{big}', 'g')")).await;
        assert_eq!(e.function, "regexp_replace");
        assert_eq!(
            too_large("SELECT list_repeat(1, 100000000)").await.function,
            "array_repeat"
        );
        assert_eq!(
            too_large("SELECT array_resize([1], 100000000)")
                .await
                .function,
            "array_resize"
        );
        assert_eq!(
            too_large("SELECT range(1, 10000000000)").await.function,
            "range"
        );
        assert_eq!(
            too_large("SELECT generate_series(TIMESTAMP '2000-01-01', TIMESTAMP '2030-01-01', INTERVAL '1 second')")
                .await
                .function,
            "generate_series"
        );
        // Just under the limit is fine.
        let n = MAX_VALUE_BYTES;
        assert_eq!(
            run(&format!("SELECT length(repeat('a', {n}))"))
                .await
                .unwrap(),
            [n.to_string()]
        );
    }
}
