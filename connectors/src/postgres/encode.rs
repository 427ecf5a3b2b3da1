//! Arrow arrays to PostgreSQL's binary `COPY` format (`COPY ... FROM STDIN (FORMAT binary)`).
//!
//! The stream is a header (`PGCOPY\n\xff\r\n\0`, a flags word and an empty extension area),
//! one tuple per row (an `i16` field count, then per field an `i32` length, -1 for NULL,
//! followed by that many bytes in the type's binary send format, big-endian), and an `i16`
//! -1 trailer. Each column's encoder is chosen once per batch from its Arrow type (see
//! [`super::schema::pg_type`] for the mapping), so the per-cell work is a match and a copy.

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryViewArray, BooleanArray, Date32Array,
    Decimal128Array, Float32Array, Float64Array, Int8Array, Int16Array, Int32Array, Int64Array,
    LargeBinaryArray, LargeStringArray, StringArray, StringViewArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::{
    DataType, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use datafusion::arrow::record_batch::RecordBatch;
use weir_engine::json::JsonValues;
use weir_engine::{Result, WeirError};

/// The 11-byte signature, then flags (0: no OIDs) and the header extension length (0).
pub const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
pub const TRAILER: &[u8] = &[0xff, 0xff];

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01T00:00:00Z).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days from 1970-01-01 to 2000-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;

/// One column of a batch, typed for encoding.
enum Col<'a> {
    Text(&'a StringArray),
    LargeText(&'a LargeStringArray),
    TextView(&'a StringViewArray),
    I8(&'a Int8Array),
    I16(&'a Int16Array),
    I32(&'a Int32Array),
    I64(&'a Int64Array),
    U32(&'a UInt32Array),
    U64(&'a UInt64Array),
    F32(&'a Float32Array),
    F64(&'a Float64Array),
    Bool(&'a BooleanArray),
    Decimal(&'a Decimal128Array, u32),
    /// Timestamps as i64 in the given unit.
    Ts(&'a [i64], &'a dyn Array, TimeUnit),
    Date(&'a Date32Array),
    Bytes(&'a BinaryArray),
    LargeBytes(&'a LargeBinaryArray),
    BytesView(&'a BinaryViewArray),
    /// Lists, structs and maps, as `jsonb`.
    Json(JsonValues<'a>),
}

impl<'a> Col<'a> {
    fn new(name: &str, a: &'a ArrayRef) -> Result<Col<'a>> {
        Ok(match a.data_type() {
            DataType::Utf8 => Col::Text(a.as_string::<i32>()),
            DataType::LargeUtf8 => Col::LargeText(a.as_string::<i64>()),
            DataType::Utf8View => Col::TextView(a.as_string_view()),
            DataType::Int8 => Col::I8(a.as_primitive()),
            DataType::Int16 => Col::I16(a.as_primitive()),
            DataType::Int32 => Col::I32(a.as_primitive()),
            DataType::Int64 => Col::I64(a.as_primitive()),
            DataType::UInt32 => Col::U32(a.as_primitive()),
            DataType::UInt64 => Col::U64(a.as_primitive()),
            DataType::Float32 => Col::F32(a.as_primitive()),
            DataType::Float64 => Col::F64(a.as_primitive()),
            DataType::Boolean => Col::Bool(a.as_boolean()),
            DataType::Decimal128(_, s) if *s >= 0 => Col::Decimal(a.as_primitive(), *s as u32),
            DataType::Timestamp(unit, _) => {
                let values: &[i64] = match unit {
                    TimeUnit::Second => a.as_primitive::<TimestampSecondType>().values(),
                    TimeUnit::Millisecond => a.as_primitive::<TimestampMillisecondType>().values(),
                    TimeUnit::Microsecond => a.as_primitive::<TimestampMicrosecondType>().values(),
                    TimeUnit::Nanosecond => a.as_primitive::<TimestampNanosecondType>().values(),
                };
                Col::Ts(values, a.as_ref(), *unit)
            }
            DataType::Date32 => Col::Date(a.as_primitive()),
            DataType::Binary => Col::Bytes(a.as_binary::<i32>()),
            DataType::LargeBinary => Col::LargeBytes(a.as_binary::<i64>()),
            DataType::BinaryView => Col::BytesView(a.as_binary_view()),
            t if super::schema::is_nested(t) => Col::Json(JsonValues::new(a.as_ref())),
            other => {
                return Err(WeirError::Internal(format!(
                    "column '{name}': no COPY encoding for {other}"
                )));
            }
        })
    }

    fn is_null(&self, i: usize) -> bool {
        match self {
            Col::Text(a) => a.is_null(i),
            Col::LargeText(a) => a.is_null(i),
            Col::TextView(a) => a.is_null(i),
            Col::I8(a) => a.is_null(i),
            Col::I16(a) => a.is_null(i),
            Col::I32(a) => a.is_null(i),
            Col::I64(a) => a.is_null(i),
            Col::U32(a) => a.is_null(i),
            Col::U64(a) => a.is_null(i),
            Col::F32(a) => a.is_null(i),
            Col::F64(a) => a.is_null(i),
            Col::Bool(a) => a.is_null(i),
            Col::Decimal(a, _) => a.is_null(i),
            Col::Ts(_, a, _) => a.is_null(i),
            Col::Date(a) => a.is_null(i),
            Col::Bytes(a) => a.is_null(i),
            Col::LargeBytes(a) => a.is_null(i),
            Col::BytesView(a) => a.is_null(i),
            Col::Json(a) => a.is_null(i),
        }
    }

    /// Append field `i` (length word and value) to `out`.
    fn put(&self, i: usize, out: &mut Vec<u8>) {
        if self.is_null(i) {
            out.extend_from_slice(&(-1i32).to_be_bytes());
            return;
        }
        match self {
            Col::Text(a) => put_bytes(out, a.value(i).as_bytes()),
            Col::LargeText(a) => put_bytes(out, a.value(i).as_bytes()),
            Col::TextView(a) => put_bytes(out, a.value(i).as_bytes()),
            Col::I8(a) => put_fixed(out, &(a.value(i) as i16).to_be_bytes()),
            Col::I16(a) => put_fixed(out, &a.value(i).to_be_bytes()),
            Col::I32(a) => put_fixed(out, &a.value(i).to_be_bytes()),
            Col::I64(a) => put_fixed(out, &a.value(i).to_be_bytes()),
            Col::U32(a) => put_fixed(out, &(a.value(i) as i64).to_be_bytes()),
            Col::U64(a) => put_numeric(out, false, a.value(i) as u128, 0),
            Col::F32(a) => put_fixed(out, &a.value(i).to_bits().to_be_bytes()),
            Col::F64(a) => put_fixed(out, &a.value(i).to_bits().to_be_bytes()),
            Col::Bool(a) => put_fixed(out, &[a.value(i) as u8]),
            Col::Decimal(a, scale) => {
                let v = a.value(i);
                put_numeric(out, v < 0, v.unsigned_abs(), *scale)
            }
            Col::Ts(values, _, unit) => {
                put_fixed(out, &(to_pg_micros(values[i], *unit)).to_be_bytes())
            }
            Col::Date(a) => put_fixed(out, &(a.value(i) - PG_EPOCH_DAYS).to_be_bytes()),
            Col::Bytes(a) => put_bytes(out, a.value(i)),
            Col::LargeBytes(a) => put_bytes(out, a.value(i)),
            Col::BytesView(a) => put_bytes(out, a.value(i)),
            Col::Json(a) => {
                // jsonb's send format: a version byte (1), then the JSON text.
                let start = out.len();
                out.extend_from_slice(&[0, 0, 0, 0, 1]);
                a.write(out, i);
                let len = (out.len() - start - 4) as i32;
                out[start..start + 4].copy_from_slice(&len.to_be_bytes());
            }
        }
    }
}

fn put_fixed(out: &mut Vec<u8>, v: &[u8]) {
    out.extend_from_slice(&(v.len() as i32).to_be_bytes());
    out.extend_from_slice(v);
}

fn put_bytes(out: &mut Vec<u8>, v: &[u8]) {
    out.extend_from_slice(&(v.len() as i32).to_be_bytes());
    out.extend_from_slice(v);
}

/// A timestamp in `unit` since the Unix epoch as microseconds since 2000-01-01 (what
/// `timestamptz` and `timestamp` send), rounding nanoseconds down.
fn to_pg_micros(v: i64, unit: TimeUnit) -> i64 {
    let micros = match unit {
        TimeUnit::Second => v.saturating_mul(1_000_000),
        TimeUnit::Millisecond => v.saturating_mul(1_000),
        TimeUnit::Microsecond => v,
        TimeUnit::Nanosecond => v.div_euclid(1_000),
    };
    micros.saturating_sub(PG_EPOCH_MICROS)
}

/// `numeric` in its binary send format: ndigits, weight, sign, dscale (all i16/u16), then
/// ndigits base-10000 digits, most significant first; `weight` is the power of 10000 of
/// the first digit. The value is `mag / 10^scale`, negated if `neg`.
pub(crate) fn put_numeric(out: &mut Vec<u8>, neg: bool, mag: u128, scale: u32) {
    let pow = 10u128.pow(scale);
    let mut int = mag / pow;
    let mut frac = mag % pow;
    // Digits after the point, grouped by four from the point: the last group is padded with
    // zeros on the right.
    let mut frac_groups: Vec<u16> = Vec::new();
    let mut left = scale;
    if !left.is_multiple_of(4) {
        let r = left % 4;
        let p = 10u128.pow(r);
        frac_groups.push(((frac % p) * 10u128.pow(4 - r)) as u16);
        frac /= p;
        left -= r;
    }
    while left > 0 {
        frac_groups.push((frac % 10_000) as u16);
        frac /= 10_000;
        left -= 4;
    }
    frac_groups.reverse();
    let mut digits: Vec<u16> = Vec::new();
    while int > 0 {
        digits.push((int % 10_000) as u16);
        int /= 10_000;
    }
    digits.reverse();
    let mut weight = digits.len() as i16 - 1;
    digits.extend(frac_groups);
    let lead = digits.iter().take_while(|d| **d == 0).count();
    digits.drain(..lead);
    weight -= lead as i16;
    while digits.last() == Some(&0) {
        digits.pop();
    }
    let sign = if neg && !digits.is_empty() {
        NUMERIC_NEG
    } else {
        NUMERIC_POS
    };
    if digits.is_empty() {
        weight = 0;
    }
    out.extend_from_slice(&(8 + 2 * digits.len() as i32).to_be_bytes());
    out.extend_from_slice(&(digits.len() as i16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&(scale as i16).to_be_bytes());
    for d in digits {
        out.extend_from_slice(&d.to_be_bytes());
    }
}

/// Append the tuples of `batch` to `out`, optionally only the rows in `rows` (in that
/// order). The header and trailer are the caller's.
pub fn encode_rows(batch: &RecordBatch, rows: Option<&[u32]>, out: &mut Vec<u8>) -> Result<()> {
    let schema = batch.schema();
    let cols: Vec<Col<'_>> = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(a, f)| Col::new(f.name(), a))
        .collect::<Result<_>>()?;
    let nfields = (cols.len() as i16).to_be_bytes();
    let row = |i: usize, out: &mut Vec<u8>| {
        out.extend_from_slice(&nfields);
        for c in &cols {
            c.put(i, out);
        }
    };
    match rows {
        None => (0..batch.num_rows()).for_each(|i| row(i, out)),
        Some(rows) => rows.iter().for_each(|&i| row(i as usize, out)),
    }
    Ok(())
}

/// A whole COPY payload for `batches`.
pub fn encode(batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut out = Vec::with_capacity(HEADER.len() + TRAILER.len() + rows * 64);
    out.extend_from_slice(HEADER);
    for b in batches {
        encode_rows(b, None, &mut out)?;
    }
    out.extend_from_slice(TRAILER);
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use datafusion::arrow::array::TimestampMillisecondArray;
    use datafusion::arrow::array::TimestampNanosecondArray;
    use datafusion::arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    /// The field bytes (length word included) of one single-column, single-row batch.
    fn field(a: ArrayRef) -> Vec<u8> {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "c",
            a.data_type().clone(),
            true,
        )]));
        let b = RecordBatch::try_new(schema, vec![a]).unwrap();
        let mut out = Vec::new();
        encode_rows(&b, None, &mut out).unwrap();
        assert_eq!(&out[..2], &[0, 1], "field count");
        out[2..].to_vec()
    }

    fn with_len(v: &[u8]) -> Vec<u8> {
        let mut out = (v.len() as i32).to_be_bytes().to_vec();
        out.extend_from_slice(v);
        out
    }

    const NULL: [u8; 4] = [0xff, 0xff, 0xff, 0xff];

    #[test]
    fn header_and_trailer() {
        assert_eq!(HEADER.len(), 19);
        assert_eq!(&HEADER[..11], b"PGCOPY\n\xff\r\n\0");
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int32, true),
            Field::new("b", DataType::Utf8, true),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int32Array::from(vec![Some(7), None])),
                Arc::new(StringArray::from(vec![None, Some("hé")])),
            ],
        )
        .unwrap();
        let out = encode(&[b]).unwrap();
        let mut expected = HEADER.to_vec();
        expected.extend_from_slice(&[0, 2, 0, 0, 0, 4, 0, 0, 0, 7]);
        expected.extend_from_slice(&NULL);
        expected.extend_from_slice(&[0, 2]);
        expected.extend_from_slice(&NULL);
        expected.extend_from_slice(&[0, 0, 0, 3, b'h', 0xc3, 0xa9]);
        expected.extend_from_slice(TRAILER);
        assert_eq!(out, expected);
    }

    #[test]
    fn selected_rows_in_order() {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int16, false)]));
        let b =
            RecordBatch::try_new(schema, vec![Arc::new(Int16Array::from(vec![1, 2, 3]))]).unwrap();
        let mut out = Vec::new();
        encode_rows(&b, Some(&[2, 0]), &mut out).unwrap();
        assert_eq!(out, vec![0, 1, 0, 0, 0, 2, 0, 3, 0, 1, 0, 0, 0, 2, 0, 1]);
    }

    #[test]
    fn text_types() {
        let expected = with_len(b"EU-West");
        assert_eq!(
            field(Arc::new(StringArray::from(vec!["EU-West"]))),
            expected
        );
        assert_eq!(
            field(Arc::new(LargeStringArray::from(vec!["EU-West"]))),
            expected
        );
        assert_eq!(
            field(Arc::new(StringViewArray::from(vec!["EU-West"]))),
            expected
        );
        assert_eq!(field(Arc::new(StringArray::from(vec![""]))), with_len(b""));
        assert_eq!(field(Arc::new(StringArray::from(vec![None::<&str>]))), NULL);
    }

    #[test]
    fn integer_types() {
        assert_eq!(
            field(Arc::new(Int8Array::from(vec![-2]))),
            with_len(&(-2i16).to_be_bytes())
        );
        assert_eq!(
            field(Arc::new(Int16Array::from(vec![-300]))),
            with_len(&(-300i16).to_be_bytes())
        );
        assert_eq!(
            field(Arc::new(Int32Array::from(vec![i32::MIN]))),
            with_len(&[0x80, 0, 0, 0])
        );
        assert_eq!(
            field(Arc::new(Int64Array::from(vec![1]))),
            with_len(&[0, 0, 0, 0, 0, 0, 0, 1])
        );
        assert_eq!(
            field(Arc::new(UInt32Array::from(vec![u32::MAX]))),
            with_len(&(u32::MAX as i64).to_be_bytes())
        );
        for a in [
            Arc::new(Int8Array::from(vec![None])) as ArrayRef,
            Arc::new(Int16Array::from(vec![None])),
            Arc::new(Int32Array::from(vec![None])),
            Arc::new(Int64Array::from(vec![None])),
            Arc::new(UInt32Array::from(vec![None])),
            Arc::new(UInt64Array::from(vec![None])),
        ] {
            assert_eq!(field(a), NULL);
        }
    }

    /// Numeric fields as (ndigits, weight, sign, dscale, digits).
    fn numeric(a: ArrayRef) -> (i16, i16, u16, i16, Vec<u16>) {
        let f = field(a);
        let len = i32::from_be_bytes(f[..4].try_into().unwrap()) as usize;
        assert_eq!(len, f.len() - 4);
        let w = |i: usize| [f[4 + 2 * i], f[5 + 2 * i]];
        let nd = i16::from_be_bytes(w(0));
        let digits = (0..nd as usize)
            .map(|i| u16::from_be_bytes(w(4 + i)))
            .collect();
        (
            nd,
            i16::from_be_bytes(w(1)),
            u16::from_be_bytes(w(2)),
            i16::from_be_bytes(w(3)),
            digits,
        )
    }

    fn dec(v: i128, p: u8, s: i8) -> ArrayRef {
        Arc::new(
            Decimal128Array::from(vec![v])
                .with_precision_and_scale(p, s)
                .unwrap(),
        )
    }

    #[test]
    fn numeric_encoding() {
        // u64::MAX = 1844 6744 0737 0955 1615
        assert_eq!(
            numeric(Arc::new(UInt64Array::from(vec![u64::MAX]))),
            (5, 4, 0, 0, vec![1844, 6744, 737, 955, 1615])
        );
        assert_eq!(
            numeric(Arc::new(UInt64Array::from(vec![0]))),
            (0, 0, 0, 0, vec![])
        );
        assert_eq!(
            numeric(Arc::new(UInt64Array::from(vec![10_000]))),
            (1, 1, 0, 0, vec![1])
        );
        // 12345.678 (scale 3): 1 | 2345 . 6780
        assert_eq!(
            numeric(dec(12_345_678, 10, 3)),
            (3, 1, 0, 3, vec![1, 2345, 6780])
        );
        // -0.05 (scale 2): weight -1, digit 0500
        assert_eq!(numeric(dec(-5, 5, 2)), (1, -1, 0x4000, 2, vec![500]));
        // 0.00000001 (scale 8): the first group after the point is zero, so weight -2.
        assert_eq!(numeric(dec(1, 10, 8)), (1, -2, 0, 8, vec![1]));
        // 0.000001 (scale 6): 0000 01|00, the last group padded on the right.
        assert_eq!(numeric(dec(1, 10, 6)), (1, -2, 0, 6, vec![100]));
        // 100.00 (scale 2): trailing zero groups dropped, dscale kept.
        assert_eq!(numeric(dec(10_000, 5, 2)), (1, 0, 0, 2, vec![100]));
        // -0 is 0.
        assert_eq!(numeric(dec(0, 5, 2)), (0, 0, 0, 2, vec![]));
        // The largest Decimal128(38, 38).
        let max = 10i128.pow(38) - 1;
        let (nd, weight, sign, dscale, digits) = numeric(dec(-max, 38, 38));
        assert_eq!((nd, weight, sign, dscale), (10, -1, 0x4000, 38));
        assert_eq!(digits[..9], [9999; 9]);
        assert_eq!(digits[9], 9900);
        let (nd, weight, _, dscale, digits) = numeric(dec(max, 38, 0));
        assert_eq!((nd, weight, dscale), (10, 9, 0));
        assert_eq!(digits[0], 99);
        assert_eq!(
            field(Arc::new(
                Decimal128Array::from(vec![None])
                    .with_precision_and_scale(5, 2)
                    .unwrap()
            )),
            NULL
        );
    }

    #[test]
    fn float_and_bool() {
        assert_eq!(
            field(Arc::new(Float32Array::from(vec![1.5f32]))),
            with_len(&1.5f32.to_bits().to_be_bytes())
        );
        assert_eq!(
            field(Arc::new(Float64Array::from(vec![-0.25]))),
            with_len(&(-0.25f64).to_bits().to_be_bytes())
        );
        assert_eq!(
            field(Arc::new(Float64Array::from(vec![f64::NAN]))),
            with_len(&f64::NAN.to_bits().to_be_bytes())
        );
        assert_eq!(
            field(Arc::new(BooleanArray::from(vec![true]))),
            with_len(&[1])
        );
        assert_eq!(
            field(Arc::new(BooleanArray::from(vec![false]))),
            with_len(&[0])
        );
        assert_eq!(field(Arc::new(BooleanArray::from(vec![None]))), NULL);
        assert_eq!(field(Arc::new(Float64Array::from(vec![None]))), NULL);
        assert_eq!(field(Arc::new(Float32Array::from(vec![None]))), NULL);
    }

    #[test]
    fn timestamps_and_dates() {
        // 2024-01-01T00:00:00Z is 757382400 s after 2000-01-01.
        let micros = 757_382_400_000_000i64;
        let ms = 1_704_067_200_000i64;
        let expected = with_len(&micros.to_be_bytes());
        assert_eq!(
            field(Arc::new(TimestampMillisecondArray::from(vec![ms]))),
            expected
        );
        assert_eq!(
            field(Arc::new(
                TimestampMillisecondArray::from(vec![ms]).with_timezone("+02:00")
            )),
            expected
        );
        assert_eq!(
            field(Arc::new(
                datafusion::arrow::array::TimestampSecondArray::from(vec![ms / 1000])
            )),
            expected
        );
        assert_eq!(
            field(Arc::new(
                datafusion::arrow::array::TimestampMicrosecondArray::from(vec![ms * 1000 + 7])
            )),
            with_len(&(micros + 7).to_be_bytes())
        );
        // Nanoseconds round down, also before 1970.
        assert_eq!(
            field(Arc::new(TimestampNanosecondArray::from(vec![
                ms * 1_000_000 + 1_999
            ]))),
            with_len(&(micros + 1).to_be_bytes())
        );
        assert_eq!(
            field(Arc::new(TimestampNanosecondArray::from(vec![-1]))),
            with_len(&(-PG_EPOCH_MICROS - 1).to_be_bytes())
        );
        assert_eq!(
            field(Arc::new(TimestampMillisecondArray::from(vec![None]))),
            NULL
        );
        // 2024-01-01 is day 8766 after 2000-01-01 (19723 after 1970-01-01).
        assert_eq!(
            field(Arc::new(Date32Array::from(vec![19_723]))),
            with_len(&8766i32.to_be_bytes())
        );
        assert_eq!(
            field(Arc::new(Date32Array::from(vec![0]))),
            with_len(&(-10_957i32).to_be_bytes())
        );
        assert_eq!(field(Arc::new(Date32Array::from(vec![None]))), NULL);
    }

    #[test]
    fn binary_types() {
        let v: &[u8] = &[0, 1, 0xff];
        assert_eq!(field(Arc::new(BinaryArray::from(vec![v]))), with_len(v));
        assert_eq!(
            field(Arc::new(LargeBinaryArray::from(vec![v]))),
            with_len(v)
        );
        assert_eq!(field(Arc::new(BinaryViewArray::from(vec![v]))), with_len(v));
        assert_eq!(
            field(Arc::new(BinaryArray::from(vec![None::<&[u8]>]))),
            NULL
        );
    }

    #[test]
    fn unmapped_type_is_an_internal_error() {
        let e = field_err(Arc::new(datafusion::arrow::array::UInt8Array::from(vec![
            1u8,
        ])));
        assert_eq!(e, "internal error: column 'c': no COPY encoding for UInt8");
    }

    fn field_err(a: ArrayRef) -> String {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "c",
            a.data_type().clone(),
            true,
        )]));
        let b = RecordBatch::try_new(schema, vec![a]).unwrap();
        encode_rows(&b, None, &mut Vec::new())
            .unwrap_err()
            .to_string()
    }
}
