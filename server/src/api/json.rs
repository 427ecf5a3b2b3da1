//! Arrow rows to the API's JSON: one object per row keyed by column name; numbers as
//! numbers (NaN and infinities as null), timestamps as RFC 3339 strings in UTC, dates as
//! `YYYY-MM-DD`, anything else as its display string. Written straight into a byte buffer,
//! once per batch however many subscribers receive it.

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float32Array, Float64Array, Int8Array, Int16Array,
    Int32Array, Int64Array, UInt8Array, UInt16Array, UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use std::io::Write;

/// The lower-case SQL name of a column type, as the API reports schemas.
pub fn type_name(t: &DataType) -> String {
    match t {
        DataType::Boolean => "boolean".into(),
        DataType::Int8 => "tinyint".into(),
        DataType::Int16 => "smallint".into(),
        DataType::Int32 => "int".into(),
        DataType::Int64 => "bigint".into(),
        DataType::UInt8 => "tinyint unsigned".into(),
        DataType::UInt16 => "smallint unsigned".into(),
        DataType::UInt32 => "int unsigned".into(),
        DataType::UInt64 => "bigint unsigned".into(),
        DataType::Float16 | DataType::Float32 => "float".into(),
        DataType::Float64 => "double".into(),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("decimal({p},{s})"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "varchar".into(),
        DataType::Timestamp(_, _) => "timestamp".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytea".into(),
        other => other.to_string().to_ascii_lowercase(),
    }
}

/// The schema as `[{"name", "type", "nullable"}]`.
pub fn schema_json(schema: &SchemaRef) -> serde_json::Value {
    serde_json::Value::Array(
        schema
            .fields()
            .iter()
            .map(|f| {
                serde_json::json!({
                    "name": f.name(),
                    "type": type_name(f.data_type()),
                    "nullable": f.is_nullable(),
                })
            })
            .collect(),
    )
}

/// The column names of a result (empty when there are no batches).
pub fn column_names(batches: &[RecordBatch]) -> Vec<String> {
    batches
        .first()
        .map(|b| {
            b.schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect()
        })
        .unwrap_or_default()
}

/// An RFC 3339 UTC string for epoch milliseconds.
pub fn rfc3339_ms(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
}

/// An RFC 3339 UTC string for epoch microseconds.
pub fn rfc3339_us(us: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
}

enum Col<'a> {
    Null,
    Bool(&'a BooleanArray),
    I8(&'a Int8Array),
    I16(&'a Int16Array),
    I32(&'a Int32Array),
    I64(&'a Int64Array),
    U8(&'a UInt8Array),
    U16(&'a UInt16Array),
    U32(&'a UInt32Array),
    U64(&'a UInt64Array),
    F32(&'a Float32Array),
    F64(&'a Float64Array),
    /// Epoch value and the number of its units per second.
    Ts(ArrayRef, i64),
    Date(ArrayRef),
    Str(ArrayRef),
    /// Printed as a bare JSON number (decimals).
    Number(ArrayFormatter<'a>),
    Text(ArrayFormatter<'a>),
}

fn col<'a>(a: &'a ArrayRef, opts: &'a FormatOptions<'a>) -> Col<'a> {
    use datafusion::arrow::datatypes::*;
    match a.data_type() {
        DataType::Null => Col::Null,
        DataType::Boolean => Col::Bool(a.as_boolean()),
        DataType::Int8 => Col::I8(a.as_primitive::<Int8Type>()),
        DataType::Int16 => Col::I16(a.as_primitive::<Int16Type>()),
        DataType::Int32 => Col::I32(a.as_primitive::<Int32Type>()),
        DataType::Int64 => Col::I64(a.as_primitive::<Int64Type>()),
        DataType::UInt8 => Col::U8(a.as_primitive::<UInt8Type>()),
        DataType::UInt16 => Col::U16(a.as_primitive::<UInt16Type>()),
        DataType::UInt32 => Col::U32(a.as_primitive::<UInt32Type>()),
        DataType::UInt64 => Col::U64(a.as_primitive::<UInt64Type>()),
        DataType::Float32 => Col::F32(a.as_primitive::<Float32Type>()),
        DataType::Float64 => Col::F64(a.as_primitive::<Float64Type>()),
        DataType::Timestamp(unit, _) => {
            let per_sec = match unit {
                TimeUnit::Second => 1,
                TimeUnit::Millisecond => 1_000,
                TimeUnit::Microsecond => 1_000_000,
                TimeUnit::Nanosecond => 1_000_000_000,
            };
            match datafusion::arrow::compute::cast(a, &DataType::Int64) {
                Ok(v) => Col::Ts(v, per_sec),
                Err(_) => text(a, opts),
            }
        }
        DataType::Date32 | DataType::Date64 => Col::Date(a.clone()),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            match datafusion::arrow::compute::cast(a, &DataType::Utf8) {
                Ok(v) => Col::Str(v),
                Err(_) => text(a, opts),
            }
        }
        DataType::Decimal128(_, _) | DataType::Decimal256(_, _) => {
            match ArrayFormatter::try_new(a.as_ref(), opts) {
                Ok(f) => Col::Number(f),
                Err(_) => Col::Null,
            }
        }
        _ => text(a, opts),
    }
}

fn text<'a>(a: &'a ArrayRef, opts: &'a FormatOptions<'a>) -> Col<'a> {
    match ArrayFormatter::try_new(a.as_ref(), opts) {
        Ok(f) => Col::Text(f),
        Err(_) => Col::Null,
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn write_f64(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        let _ = serde_json::to_writer(&mut *out, &v);
    } else {
        out.extend_from_slice(b"null");
    }
}

fn write_ts(out: &mut Vec<u8>, v: i64, per_sec: i64) {
    let secs = v.div_euclid(per_sec);
    let frac = v.rem_euclid(per_sec);
    let nanos = (frac as i128 * 1_000_000_000 / per_sec as i128) as u32;
    match chrono::DateTime::from_timestamp(secs, nanos) {
        Some(d) => {
            let f = match per_sec {
                1 | 1_000 => "%Y-%m-%dT%H:%M:%S%.3fZ",
                1_000_000 => "%Y-%m-%dT%H:%M:%S%.6fZ",
                _ => "%Y-%m-%dT%H:%M:%S%.9fZ",
            };
            let _ = write!(out, "\"{}\"", d.format(f));
        }
        None => {
            let _ = write!(out, "{v}");
        }
    }
}

impl Col<'_> {
    fn write(&self, out: &mut Vec<u8>, i: usize) {
        macro_rules! num {
            ($a:expr) => {{
                if $a.is_null(i) {
                    out.extend_from_slice(b"null");
                } else {
                    let _ = write!(out, "{}", $a.value(i));
                }
            }};
        }
        match self {
            Col::Null => out.extend_from_slice(b"null"),
            Col::Bool(a) => {
                if a.is_null(i) {
                    out.extend_from_slice(b"null")
                } else {
                    out.extend_from_slice(if a.value(i) { b"true" } else { b"false" })
                }
            }
            Col::I8(a) => num!(a),
            Col::I16(a) => num!(a),
            Col::I32(a) => num!(a),
            Col::I64(a) => num!(a),
            Col::U8(a) => num!(a),
            Col::U16(a) => num!(a),
            Col::U32(a) => num!(a),
            Col::U64(a) => num!(a),
            Col::F32(a) => {
                if a.is_null(i) {
                    out.extend_from_slice(b"null")
                } else {
                    write_f64(out, a.value(i) as f64)
                }
            }
            Col::F64(a) => {
                if a.is_null(i) {
                    out.extend_from_slice(b"null")
                } else {
                    write_f64(out, a.value(i))
                }
            }
            Col::Ts(a, per_sec) => {
                let a = a.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
                if a.is_null(i) {
                    out.extend_from_slice(b"null")
                } else {
                    write_ts(out, a.value(i), *per_sec)
                }
            }
            Col::Date(a) => {
                if a.is_null(i) {
                    out.extend_from_slice(b"null")
                } else {
                    match datafusion::arrow::util::display::array_value_to_string(a, i) {
                        Ok(s) => write_str(out, &s),
                        Err(_) => out.extend_from_slice(b"null"),
                    }
                }
            }
            Col::Str(a) => {
                let a = a.as_string::<i32>();
                if a.is_null(i) {
                    out.extend_from_slice(b"null")
                } else {
                    write_str(out, a.value(i))
                }
            }
            Col::Number(f) => {
                let _ = write!(out, "{}", f.value(i));
            }
            Col::Text(f) => write_str(out, &f.value(i).to_string()),
        }
    }
}

/// Append the rows of `batches` to `out` as JSON objects separated by commas (no
/// brackets), so callers can frame them; `first` says whether a row was written before.
pub fn write_rows<'a>(
    batches: impl IntoIterator<Item = &'a RecordBatch>,
    out: &mut Vec<u8>,
    mut first: bool,
) -> bool {
    let opts = FormatOptions::default().with_null("null");
    for b in batches {
        let schema = b.schema();
        let keys: Vec<Vec<u8>> = schema
            .fields()
            .iter()
            .map(|f| {
                let mut k = Vec::new();
                write_str(&mut k, f.name());
                k.push(b':');
                k
            })
            .collect();
        let cols: Vec<Col> = b.columns().iter().map(|a| col(a, &opts)).collect();
        for i in 0..b.num_rows() {
            if !first {
                out.push(b',');
            }
            first = false;
            out.push(b'{');
            for (c, (key, column)) in keys.iter().zip(&cols).enumerate() {
                if c > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(key);
                column.write(out, i);
            }
            out.push(b'}');
        }
    }
    first
}

/// The rows of `batches` as a JSON array.
pub fn rows_array<'a>(batches: impl IntoIterator<Item = &'a RecordBatch>) -> Vec<u8> {
    let mut out = vec![b'['];
    write_rows(batches, &mut out, true);
    out.push(b']');
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{
        Decimal128Array, StringArray, TimestampMillisecondArray, TimestampNanosecondArray,
    };
    use datafusion::arrow::datatypes::{Field, Schema, TimeUnit};
    use std::sync::Arc;

    #[test]
    fn rows_are_objects_with_rfc3339_timestamps() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("name", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
            Field::new("x", DataType::Float64, true),
            Field::new("d", DataType::Decimal128(10, 2), true),
            Field::new(
                "tz",
                DataType::Timestamp(TimeUnit::Nanosecond, Some("+02:00".into())),
                true,
            ),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampMillisecondArray::from(vec![
                    Some(1_700_000_000_123),
                    None,
                ])),
                Arc::new(StringArray::from(vec![Some("a\"b\n"), None])),
                Arc::new(Int64Array::from(vec![Some(-5), None])),
                Arc::new(Float64Array::from(vec![Some(1.5), Some(f64::NAN)])),
                Arc::new(
                    Decimal128Array::from(vec![Some(1234), None])
                        .with_precision_and_scale(10, 2)
                        .unwrap(),
                ),
                Arc::new(
                    TimestampNanosecondArray::from(vec![Some(1), None]).with_timezone("+02:00"),
                ),
            ],
        )
        .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&rows_array([&b])).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"ts": "2023-11-14T22:13:20.123Z", "name": "a\"b\n", "n": -5, "x": 1.5,
                 "d": 12.34, "tz": "1970-01-01T00:00:00.000000001Z"},
                {"ts": null, "name": null, "n": null, "x": null, "d": null, "tz": null}
            ])
        );
    }

    #[test]
    fn type_names_are_sql_words() {
        assert_eq!(type_name(&DataType::Int64), "bigint");
        assert_eq!(
            type_name(&DataType::Timestamp(TimeUnit::Millisecond, None)),
            "timestamp"
        );
        assert_eq!(type_name(&DataType::Utf8View), "varchar");
    }
}
