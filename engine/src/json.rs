//! Arrow rows as JSON: the one encoding of a row wherever users see JSON (REST rows and
//! query results, WebSocket messages, Kafka sink messages in the `json` format, dead
//! letters). `docs/json.md` documents it for users; keep the two in step.
//!
//! A row is an object keyed by column name, every column present (NULL as `null`):
//!
//! - booleans as `true`/`false`; integers as numbers; floats as numbers, NaN and
//!   infinities as `null`; decimals as numbers with their exact digits (`12.30`);
//! - strings as strings;
//! - timestamps as RFC 3339 strings in UTC with a `Z`: milliseconds for second and
//!   millisecond columns (`2024-05-01T10:00:00.000Z`), 6 digits for microseconds, 9 for
//!   nanoseconds; a column with a time zone is the same instant, written in UTC;
//! - dates as `YYYY-MM-DD`;
//! - lists as arrays, structs as objects, maps as objects keyed by the key's text;
//! - anything else (times of day, durations, intervals, binary, dictionaries) as arrow's
//!   display text, a string.
//!
//! Rows are written straight into a byte buffer: [`write_rows`] (comma-separated, for
//! callers that frame them), [`rows_array`], [`write_row_records`] (one buffer slice per
//! row, for message sinks) and [`row_objects`] (one `serde_json::Value` per row, for
//! records that embed a row).

use chrono::format::{Item, StrftimeItems};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float16Array, Float32Array, Float64Array, Int8Array,
    Int16Array, Int32Array, Int64Array, UInt8Array, UInt16Array, UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use std::io::Write;

/// How values that have no JSON form of their own are displayed.
const DISPLAY: FormatOptions<'static> = FormatOptions::new().with_null("null");

/// `2024-05-01T10:00:00.000Z` for epoch milliseconds (`None` out of chrono's range).
pub fn rfc3339_ms(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// `2024-05-01T10:00:00.000000Z` for epoch microseconds (`None` out of chrono's range).
pub fn rfc3339_us(us: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

/// One column, ready to write value by value.
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
    F16(&'a Float16Array),
    F32(&'a Float32Array),
    F64(&'a Float64Array),
    /// Epoch values as Int64, their units per second, and the format for that precision.
    Ts(ArrayRef, i64, Vec<Item<'static>>),
    /// Date32.
    Date(ArrayRef),
    /// Utf8.
    Str(ArrayRef),
    /// Printed as a bare JSON number (decimals).
    Number(&'a dyn Array, ArrayFormatter<'a>),
    /// Printed as a JSON string.
    Text(&'a dyn Array, ArrayFormatter<'a>),
    /// A list column: its offsets (`offsets[i]..offsets[i + 1]` are row `i`'s elements).
    List(&'a dyn Array, Vec<usize>, Box<Col<'a>>),
    Struct(&'a dyn Array, ObjectFields<'a>),
    /// Map entries per row as offsets, keys and values.
    Map(&'a dyn Array, Vec<usize>, Box<Col<'a>>, Box<Col<'a>>),
}

/// Object keys (escaped, with the colon) and their columns.
struct ObjectFields<'a> {
    keys: Vec<Vec<u8>>,
    cols: Vec<Col<'a>>,
}

impl<'a> ObjectFields<'a> {
    fn new<'n>(names: impl Iterator<Item = &'n str>, arrays: &'a [ArrayRef]) -> Self {
        let keys = names
            .map(|n| {
                let mut k = Vec::with_capacity(n.len() + 3);
                write_str(&mut k, n);
                k.push(b':');
                k
            })
            .collect();
        ObjectFields {
            keys,
            cols: arrays.iter().map(|a| col(a.as_ref())).collect(),
        }
    }

    fn write(&self, out: &mut Vec<u8>, i: usize) {
        out.push(b'{');
        for (c, (key, column)) in self.keys.iter().zip(&self.cols).enumerate() {
            if c > 0 {
                out.push(b',');
            }
            out.extend_from_slice(key);
            column.write(out, i);
        }
        out.push(b'}');
    }
}

/// The values of one array as JSON, one at a time (what the JSON rows hold for that column:
/// nested lists, structs and maps as JSON arrays and objects). Sinks that store nested
/// values as JSON text (the Postgres sink's `jsonb` columns) write them with this.
pub struct JsonValues<'a>(Col<'a>);

impl<'a> JsonValues<'a> {
    pub fn new(array: &'a dyn Array) -> Self {
        JsonValues(col(array))
    }

    pub fn is_null(&self, i: usize) -> bool {
        self.0.is_null(i)
    }

    /// Value `i` as JSON (`null` when null).
    pub fn write(&self, out: &mut Vec<u8>, i: usize) {
        self.0.write(out, i)
    }
}

fn ts_format(per_sec: i64) -> Vec<Item<'static>> {
    let f = match per_sec {
        1 | 1_000 => "%Y-%m-%dT%H:%M:%S%.3fZ",
        1_000_000 => "%Y-%m-%dT%H:%M:%S%.6fZ",
        _ => "%Y-%m-%dT%H:%M:%S%.9fZ",
    };
    StrftimeItems::new(f).parse().unwrap_or_default()
}

fn col(a: &dyn Array) -> Col<'_> {
    use datafusion::arrow::compute::cast;
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
        DataType::Float16 => Col::F16(a.as_primitive::<Float16Type>()),
        DataType::Float32 => Col::F32(a.as_primitive::<Float32Type>()),
        DataType::Float64 => Col::F64(a.as_primitive::<Float64Type>()),
        DataType::Timestamp(unit, _) => {
            let per_sec = match unit {
                TimeUnit::Second => 1,
                TimeUnit::Millisecond => 1_000,
                TimeUnit::Microsecond => 1_000_000,
                TimeUnit::Nanosecond => 1_000_000_000,
            };
            match cast(a, &DataType::Int64) {
                Ok(v) => Col::Ts(v, per_sec, ts_format(per_sec)),
                Err(_) => text(a),
            }
        }
        DataType::Date32 | DataType::Date64 => match cast(a, &DataType::Date32) {
            Ok(v) => Col::Date(v),
            Err(_) => text(a),
        },
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            match cast(a, &DataType::Utf8) {
                Ok(v) => Col::Str(v),
                Err(_) => text(a),
            }
        }
        DataType::Decimal32(_, _)
        | DataType::Decimal64(_, _)
        | DataType::Decimal128(_, _)
        | DataType::Decimal256(_, _) => match ArrayFormatter::try_new(a, &DISPLAY) {
            Ok(f) => Col::Number(a, f),
            Err(_) => Col::Null,
        },
        DataType::List(_) => {
            let l = a.as_list::<i32>();
            let offsets = l.value_offsets().iter().map(|o| *o as usize).collect();
            Col::List(a, offsets, Box::new(col(l.values().as_ref())))
        }
        DataType::LargeList(_) => {
            let l = a.as_list::<i64>();
            let offsets = l.value_offsets().iter().map(|o| *o as usize).collect();
            Col::List(a, offsets, Box::new(col(l.values().as_ref())))
        }
        DataType::FixedSizeList(_, n) => {
            let l = a.as_fixed_size_list();
            let n = (*n).max(0) as usize;
            let offsets = (0..=l.len()).map(|i| (l.offset() + i) * n).collect();
            Col::List(a, offsets, Box::new(col(l.values().as_ref())))
        }
        DataType::Struct(fields) => {
            let s = a.as_struct();
            Col::Struct(
                a,
                ObjectFields::new(fields.iter().map(|f| f.name().as_str()), s.columns()),
            )
        }
        DataType::Map(_, _) => {
            let m = a.as_map();
            let offsets = m.value_offsets().iter().map(|o| *o as usize).collect();
            Col::Map(
                a,
                offsets,
                Box::new(text(m.keys().as_ref())),
                Box::new(col(m.values().as_ref())),
            )
        }
        _ => text(a),
    }
}

fn text(a: &dyn Array) -> Col<'_> {
    match ArrayFormatter::try_new(a, &DISPLAY) {
        Ok(f) => Col::Text(a, f),
        Err(_) => Col::Null,
    }
}

/// Append `v` as serde_json writes it: strings escaped, integers exactly, floats as the
/// shortest text that reads back as the same value.
fn put_json(out: &mut Vec<u8>, v: &(impl serde::Serialize + ?Sized)) {
    // Serializing a string or a number into a Vec cannot fail: the only errors would be
    // the writer's, and writes to a Vec do not fail.
    let _ = serde_json::to_writer(&mut *out, v);
}

/// Append `v`'s display text.
fn put_display(out: &mut Vec<u8>, v: impl std::fmt::Display) {
    // As in put_json: writes to a Vec do not fail.
    let _ = write!(out, "{v}");
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    put_json(out, s);
}

/// A finite float as a number, else `null`.
fn write_float(out: &mut Vec<u8>, v: &impl serde::Serialize, finite: bool) {
    if finite {
        put_json(out, v);
    } else {
        out.extend_from_slice(b"null");
    }
}

fn write_ts(out: &mut Vec<u8>, v: i64, per_sec: i64, format: &[Item<'static>]) {
    let secs = v.div_euclid(per_sec);
    let frac = v.rem_euclid(per_sec);
    let nanos = (frac as i128 * 1_000_000_000 / per_sec as i128) as u32;
    match chrono::DateTime::from_timestamp(secs, nanos) {
        Some(d) => {
            out.push(b'"');
            put_display(out, d.format_with_items(format.iter()));
            out.push(b'"');
        }
        // Out of chrono's range (beyond year 262143): the epoch value itself.
        None => put_json(out, &v),
    }
}

impl Col<'_> {
    fn is_null(&self, i: usize) -> bool {
        match self {
            Col::Null => true,
            Col::Bool(a) => a.is_null(i),
            Col::I8(a) => a.is_null(i),
            Col::I16(a) => a.is_null(i),
            Col::I32(a) => a.is_null(i),
            Col::I64(a) => a.is_null(i),
            Col::U8(a) => a.is_null(i),
            Col::U16(a) => a.is_null(i),
            Col::U32(a) => a.is_null(i),
            Col::U64(a) => a.is_null(i),
            Col::F16(a) => a.is_null(i),
            Col::F32(a) => a.is_null(i),
            Col::F64(a) => a.is_null(i),
            Col::Ts(a, _, _) | Col::Date(a) | Col::Str(a) => a.is_null(i),
            Col::Number(a, _) | Col::Text(a, _) => a.is_null(i),
            Col::List(a, _, _) | Col::Struct(a, _) | Col::Map(a, _, _, _) => a.is_null(i),
        }
    }

    fn write(&self, out: &mut Vec<u8>, i: usize) {
        if self.is_null(i) {
            out.extend_from_slice(b"null");
            return;
        }
        match self {
            Col::Null => out.extend_from_slice(b"null"),
            Col::Bool(a) => out.extend_from_slice(if a.value(i) { b"true" } else { b"false" }),
            Col::I8(a) => put_json(out, &a.value(i)),
            Col::I16(a) => put_json(out, &a.value(i)),
            Col::I32(a) => put_json(out, &a.value(i)),
            Col::I64(a) => put_json(out, &a.value(i)),
            Col::U8(a) => put_json(out, &a.value(i)),
            Col::U16(a) => put_json(out, &a.value(i)),
            Col::U32(a) => put_json(out, &a.value(i)),
            Col::U64(a) => put_json(out, &a.value(i)),
            Col::F16(a) => {
                let v = a.value(i).to_f32();
                write_float(out, &v, v.is_finite())
            }
            Col::F32(a) => write_float(out, &a.value(i), a.value(i).is_finite()),
            Col::F64(a) => write_float(out, &a.value(i), a.value(i).is_finite()),
            Col::Ts(a, per_sec, format) => write_ts(
                out,
                a.as_primitive::<Int64Type>().value(i),
                *per_sec,
                format,
            ),
            Col::Date(a) => {
                let days = a
                    .as_primitive::<datafusion::arrow::datatypes::Date32Type>()
                    .value(i);
                // 719,163 days from 0001-01-01 to 1970-01-01.
                match chrono::NaiveDate::from_num_days_from_ce_opt(days.saturating_add(719_163)) {
                    Some(d) => {
                        out.push(b'"');
                        put_display(out, d.format("%Y-%m-%d"));
                        out.push(b'"');
                    }
                    None => out.extend_from_slice(b"null"),
                }
            }
            Col::Str(a) => write_str(out, a.as_string::<i32>().value(i)),
            Col::Number(_, f) => put_display(out, f.value(i)),
            Col::Text(_, f) => write_str(out, &f.value(i).to_string()),
            Col::List(_, offsets, values) => {
                out.push(b'[');
                for (n, j) in (offsets[i]..offsets[i + 1]).enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    values.write(out, j);
                }
                out.push(b']');
            }
            Col::Struct(_, fields) => fields.write(out, i),
            Col::Map(_, offsets, keys, values) => {
                out.push(b'{');
                for (n, j) in (offsets[i]..offsets[i + 1]).enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    match keys.as_ref() {
                        Col::Text(_, f) => write_str(out, &f.value(j).to_string()),
                        _ => write_str(out, "null"),
                    }
                    out.push(b':');
                    values.write(out, j);
                }
                out.push(b'}');
            }
        }
    }
}

/// Writes the rows of one batch.
struct Rows<'a> {
    fields: ObjectFields<'a>,
    len: usize,
}

impl<'a> Rows<'a> {
    fn new(batch: &'a RecordBatch) -> Self {
        let schema = batch.schema_ref();
        Rows {
            fields: ObjectFields::new(
                schema.fields().iter().map(|f| f.name().as_str()),
                batch.columns(),
            ),
            len: batch.num_rows(),
        }
    }
}

/// Append the rows of `batches` to `out` as JSON objects separated by commas (no
/// brackets), so callers can frame them; `first` says whether no row was written before.
/// Returns the new `first`.
pub fn write_rows<'a>(
    batches: impl IntoIterator<Item = &'a RecordBatch>,
    out: &mut Vec<u8>,
    mut first: bool,
) -> bool {
    for b in batches {
        let rows = Rows::new(b);
        for i in 0..rows.len {
            if !first {
                out.push(b',');
            }
            first = false;
            rows.fields.write(out, i);
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

/// Write each row of `batch` to `out` as one JSON object and call `row_end(out)` after
/// each (a message sink records where each record ends).
pub fn write_row_records(
    batch: &RecordBatch,
    out: &mut Vec<u8>,
    mut row_end: impl FnMut(&mut Vec<u8>),
) {
    let rows = Rows::new(batch);
    for i in 0..rows.len {
        rows.fields.write(out, i);
        row_end(out);
    }
}

/// Each row of `batch` as a JSON object value, for records that embed rows (dead
/// letters).
pub fn row_objects(batch: &RecordBatch) -> Vec<serde_json::Value> {
    let rows = Rows::new(batch);
    let mut buf = Vec::new();
    (0..rows.len)
        .map(|i| {
            buf.clear();
            rows.fields.write(&mut buf, i);
            // The writer emits valid JSON: parsing it back cannot fail.
            serde_json::from_slice(&buf).unwrap_or(serde_json::Value::Null)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use datafusion::arrow::array::{
        Date32Array, Date64Array, Decimal128Array, ListArray, StringArray, StringViewArray,
        StructArray, TimestampMicrosecondArray, TimestampMillisecondArray,
        TimestampNanosecondArray, TimestampSecondArray,
    };
    use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Schema};
    use std::sync::Arc;

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(columns).unwrap()
    }

    fn json(b: &RecordBatch) -> serde_json::Value {
        serde_json::from_slice(&rows_array([b])).unwrap()
    }

    #[test]
    fn rows_are_objects_with_rfc3339_utc_timestamps() {
        let b = batch(vec![
            (
                "ts",
                Arc::new(TimestampMillisecondArray::from(vec![
                    Some(1_700_000_000_123),
                    None,
                ])),
            ),
            (
                "name",
                Arc::new(StringArray::from(vec![Some("a\"b\n"), None])),
            ),
            ("n", Arc::new(Int64Array::from(vec![Some(-5), None]))),
            (
                "x",
                Arc::new(Float64Array::from(vec![Some(1.5), Some(f64::NAN)])),
            ),
            (
                "d",
                Arc::new(
                    Decimal128Array::from(vec![Some(1230), None])
                        .with_precision_and_scale(10, 2)
                        .unwrap(),
                ),
            ),
            (
                "tz",
                Arc::new(
                    TimestampNanosecondArray::from(vec![Some(1), None]).with_timezone("+02:00"),
                ),
            ),
        ]);
        assert_eq!(
            std::str::from_utf8(&rows_array([&b])).unwrap(),
            r#"[{"ts":"2023-11-14T22:13:20.123Z","name":"a\"b\n","n":-5,"x":1.5,"d":12.30,"tz":"1970-01-01T00:00:00.000000001Z"},{"ts":null,"name":null,"n":null,"x":null,"d":null,"tz":null}]"#
        );
    }

    #[test]
    fn every_timestamp_unit_and_dates() {
        let b = batch(vec![
            (
                "s",
                Arc::new(TimestampSecondArray::from(vec![1_714_557_600])),
            ),
            (
                "ms",
                Arc::new(TimestampMillisecondArray::from(vec![-1]).with_timezone("UTC")),
            ),
            (
                "us",
                Arc::new(TimestampMicrosecondArray::from(vec![1_714_557_600_000_001])),
            ),
            ("d32", Arc::new(Date32Array::from(vec![19_844]))),
            ("d64", Arc::new(Date64Array::from(vec![1_714_521_600_000]))),
        ]);
        assert_eq!(
            json(&b),
            serde_json::json!([{
                "s": "2024-05-01T10:00:00.000Z",
                "ms": "1969-12-31T23:59:59.999Z",
                "us": "2024-05-01T10:00:00.000001Z",
                "d32": "2024-05-01",
                "d64": "2024-05-01",
            }])
        );
        assert_eq!(
            rfc3339_ms(1_714_557_600_000).unwrap(),
            "2024-05-01T10:00:00.000Z"
        );
        assert_eq!(rfc3339_us(1).unwrap(), "1970-01-01T00:00:00.000001Z");
    }

    #[test]
    fn floats_strings_and_nested_values() {
        let list = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(1), None]),
            None,
        ]);
        let inner: ArrayRef = Arc::new(StringArray::from(vec![Some("x"), None]));
        let s = StructArray::from(vec![(
            Arc::new(Field::new("k", DataType::Utf8, true)),
            inner,
        )]);
        let b = batch(vec![
            (
                "f32",
                Arc::new(Float32Array::from(vec![1.1f32, f32::INFINITY])),
            ),
            ("view", Arc::new(StringViewArray::from(vec!["v", "w"]))),
            ("l", Arc::new(list)),
            ("s", Arc::new(s)),
            ("b", Arc::new(BooleanArray::from(vec![true, false]))),
        ]);
        assert_eq!(
            std::str::from_utf8(&rows_array([&b])).unwrap(),
            r#"[{"f32":1.1,"view":"v","l":[1,null],"s":{"k":"x"},"b":true},{"f32":null,"view":"w","l":null,"s":{"k":null},"b":false}]"#
        );
    }

    #[test]
    fn framing_records_and_values() {
        let b = batch(vec![("n", Arc::new(Int64Array::from(vec![1, 2])))]);
        let mut out = Vec::new();
        assert!(!write_rows([&b], &mut out, true));
        assert!(!write_rows([&b], &mut out, false));
        assert_eq!(out, br#"{"n":1},{"n":2},{"n":1},{"n":2}"#);
        let mut out = Vec::new();
        let mut ends = Vec::new();
        write_row_records(&b, &mut out, |o| ends.push(o.len()));
        assert_eq!(
            (out.as_slice(), ends),
            (&br#"{"n":1}{"n":2}"#[..], vec![7, 14])
        );
        assert_eq!(
            row_objects(&b),
            vec![serde_json::json!({"n": 1}), serde_json::json!({"n": 2})]
        );
        let empty = RecordBatch::new_empty(Arc::new(Schema::new(vec![Field::new(
            "n",
            DataType::Int64,
            true,
        )])));
        assert_eq!(rows_array([&empty]), b"[]");
    }
}
