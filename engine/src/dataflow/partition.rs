//! The key-partition function: which of a view's key partitions a row's group key belongs
//! to (docs/design/workers.md, step 2).
//!
//! Keyed state will be stored per key partition, in checkpoints and across processes, so
//! this function is part of the on-disk format: it is specified here, independent of
//! DataFusion's and arrow's internal hashing (which may change with any upgrade), and it
//! must never change. For each row, starting from `h = 0`, for each key column in order:
//!
//! - a null: `h = xxh3_64(seed = h ^ NULL_TWEAK, bytes = [])`;
//! - a value: `h = xxh3_64(seed = h, bytes = canonical(value))`;
//!
//! and the row's key partition is `h % partitions`. `canonical` is:
//!
//! | type | bytes |
//! | --- | --- |
//! | BOOLEAN | one byte, 0 or 1 |
//! | signed integers (8 to 64 bits) | the value as `i64`, 8 bytes little-endian |
//! | unsigned integers (8 to 64 bits) | the value as `u64`, 8 bytes little-endian |
//! | FLOAT, DOUBLE | the value as `f64`, its bits little-endian; `-0.0` as `0.0`, every NaN as one NaN |
//! | DECIMAL(p, s) up to 38 digits | the unscaled `i128`, 16 bytes little-endian |
//! | DATE | days since the epoch as `i64` |
//! | TIMESTAMP, TIME, DURATION | the `i64` in the column's unit |
//! | TEXT, BINARY (every width and view) | the bytes |
//! | dictionary-encoded | the value the key points to |
//!
//! So equal values hash equally whatever their integer width or string layout (a join key
//! that is `INT` on one side and `BIGINT` on the other meets in one partition). XXH3-64 is
//! the published algorithm (xxHash 0.8); the tests pin values computed independently with
//! Python's `xxhash` package.

use crate::error::{Result, WeirError};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, new_empty_array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Date64Type, Decimal128Type, DurationMicrosecondType,
    DurationMillisecondType, DurationNanosecondType, DurationSecondType, Float32Type, Float64Type,
    Int8Type, Int16Type, Int32Type, Int64Type, Time32MillisecondType, Time32SecondType,
    Time64MicrosecondType, Time64NanosecondType, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use twox_hash::XxHash3_64;

/// Mixed into the seed for a null, so a null differs from every value (the empty string
/// included) and `(a, null)` from `(null, a)`.
pub const NULL_TWEAK: u64 = 0x9E37_79B9_7F4A_7C15;

/// Each row's key hash over `columns` (all of `rows` rows).
pub fn key_hashes(columns: &[ArrayRef], rows: usize) -> Result<Vec<u64>> {
    let mut hashes = vec![0u64; rows];
    for column in columns {
        if column.len() != rows {
            return Err(WeirError::Internal(format!(
                "key column of {} rows in a batch of {rows}",
                column.len()
            )));
        }
        fold_column(column, &mut hashes)?;
    }
    Ok(hashes)
}

/// Each row's key partition, in `0..partitions`.
pub fn key_partitions(columns: &[ArrayRef], rows: usize, partitions: u32) -> Result<Vec<u32>> {
    if partitions == 0 {
        return Err(WeirError::user("key_partitions must be at least 1"));
    }
    Ok(key_hashes(columns, rows)?
        .into_iter()
        .map(|h| (h % u64::from(partitions)) as u32)
        .collect())
}

/// Whether a key column of type `t` can be partitioned (scalar types; not lists, structs
/// or maps).
pub fn can_partition(t: &DataType) -> bool {
    key_hashes(&[new_empty_array(t)], 0).is_ok()
}

fn mix(h: u64, bytes: &[u8]) -> u64 {
    XxHash3_64::oneshot_with_seed(h, bytes)
}

fn mix_null(h: u64) -> u64 {
    XxHash3_64::oneshot_with_seed(h ^ NULL_TWEAK, &[])
}

/// Fold one column into the running hashes, `bytes(i)` giving row `i`'s canonical bytes.
fn fold<B: AsRef<[u8]>>(array: &dyn Array, hashes: &mut [u64], bytes: impl Fn(usize) -> B) {
    for (i, h) in hashes.iter_mut().enumerate() {
        *h = if array.is_null(i) {
            mix_null(*h)
        } else {
            mix(*h, bytes(i).as_ref())
        };
    }
}

fn canonical_f64(v: f64) -> [u8; 8] {
    let v = if v == 0.0 {
        0.0
    } else if v.is_nan() {
        f64::NAN
    } else {
        v
    };
    v.to_bits().to_le_bytes()
}

fn fold_column(column: &ArrayRef, hashes: &mut [u64]) -> Result<()> {
    let a = column.as_ref();
    macro_rules! signed {
        ($t:ty) => {{
            let p = a.as_primitive::<$t>();
            fold(a, hashes, |i| (p.value(i) as i64).to_le_bytes())
        }};
    }
    macro_rules! unsigned {
        ($t:ty) => {{
            let p = a.as_primitive::<$t>();
            fold(a, hashes, |i| (p.value(i) as u64).to_le_bytes())
        }};
    }
    match a.data_type() {
        DataType::Boolean => {
            let b = a.as_boolean();
            fold(a, hashes, |i| [u8::from(b.value(i))]);
        }
        DataType::Int8 => signed!(Int8Type),
        DataType::Int16 => signed!(Int16Type),
        DataType::Int32 => signed!(Int32Type),
        DataType::Int64 => signed!(Int64Type),
        DataType::UInt8 => unsigned!(UInt8Type),
        DataType::UInt16 => unsigned!(UInt16Type),
        DataType::UInt32 => unsigned!(UInt32Type),
        DataType::UInt64 => unsigned!(UInt64Type),
        DataType::Float32 => {
            let p = a.as_primitive::<Float32Type>();
            fold(a, hashes, |i| canonical_f64(f64::from(p.value(i))));
        }
        DataType::Float64 => {
            let p = a.as_primitive::<Float64Type>();
            fold(a, hashes, |i| canonical_f64(p.value(i)));
        }
        DataType::Decimal128(_, _) => {
            let p = a.as_primitive::<Decimal128Type>();
            fold(a, hashes, |i| p.value(i).to_le_bytes());
        }
        DataType::Date32 => signed!(Date32Type),
        DataType::Date64 => signed!(Date64Type),
        DataType::Timestamp(unit, _) => match unit {
            TimeUnit::Second => signed!(TimestampSecondType),
            TimeUnit::Millisecond => signed!(TimestampMillisecondType),
            TimeUnit::Microsecond => signed!(TimestampMicrosecondType),
            TimeUnit::Nanosecond => signed!(TimestampNanosecondType),
        },
        DataType::Time32(TimeUnit::Second) => signed!(Time32SecondType),
        DataType::Time32(TimeUnit::Millisecond) => signed!(Time32MillisecondType),
        DataType::Time64(TimeUnit::Microsecond) => signed!(Time64MicrosecondType),
        DataType::Time64(TimeUnit::Nanosecond) => signed!(Time64NanosecondType),
        DataType::Duration(unit) => match unit {
            TimeUnit::Second => signed!(DurationSecondType),
            TimeUnit::Millisecond => signed!(DurationMillisecondType),
            TimeUnit::Microsecond => signed!(DurationMicrosecondType),
            TimeUnit::Nanosecond => signed!(DurationNanosecondType),
        },
        DataType::Utf8 => {
            let s = a.as_string::<i32>();
            fold(a, hashes, |i| s.value(i).as_bytes());
        }
        DataType::LargeUtf8 => {
            let s = a.as_string::<i64>();
            fold(a, hashes, |i| s.value(i).as_bytes());
        }
        DataType::Utf8View => {
            let s = a.as_string_view();
            fold(a, hashes, |i| s.value(i).as_bytes());
        }
        DataType::Binary => {
            let b = a.as_binary::<i32>();
            fold(a, hashes, |i| b.value(i));
        }
        DataType::LargeBinary => {
            let b = a.as_binary::<i64>();
            fold(a, hashes, |i| b.value(i));
        }
        DataType::BinaryView => {
            let b = a.as_binary_view();
            fold(a, hashes, |i| b.value(i));
        }
        DataType::Dictionary(_, value) => {
            let plain = cast(a, value).map_err(|e| {
                WeirError::Internal(format!("decoding a dictionary key column: {e}"))
            })?;
            fold_column(&plain, hashes)?;
        }
        other => {
            return Err(WeirError::user(format!(
                "a key of type {other} cannot be partitioned; group or join by a column of a \
                 scalar type (numbers, text, binary, dates and times)"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{
        BooleanArray, DictionaryArray, Float64Array, Int32Array, Int64Array, LargeStringArray,
        ListArray, StringArray, StringViewArray, TimestampMillisecondArray, UInt8Array,
    };
    use datafusion::arrow::datatypes::Int32Type as Keys;
    use std::sync::Arc;

    fn hashes(columns: Vec<ArrayRef>) -> Vec<u64> {
        let rows = columns[0].len();
        key_hashes(&columns, rows).unwrap()
    }

    /// Values computed independently of this code, with Python's `xxhash` package (4.1, xxHash 0.8.4),
    /// following the specification in the module's docs:
    ///
    /// ```python
    /// import struct, xxhash
    /// h = lambda seed, b: xxhash.xxh3_64_intdigest(b, seed)
    /// NULL = 0x9E3779B97F4A7C15
    /// h(0, b"")                                    # XXH3 of nothing, seed 0
    /// h(0, struct.pack("<q", 42))                  # BIGINT 42
    /// h(h(0, b"eu-west"), struct.pack("<q", 7))    # ('eu-west', 7)
    /// h(0 ^ NULL, b"")                             # NULL
    /// h(h(0, b"a") ^ NULL, b"")                    # ('a', NULL)
    /// ```
    #[test]
    fn hashes_follow_the_specification() {
        assert_eq!(mix(0, &[]), 0x2D06_8005_38D3_94C2);
        assert_eq!(
            hashes(vec![Arc::new(Int64Array::from(vec![42]))]),
            vec![PY_BIGINT_42]
        );
        assert_eq!(
            hashes(vec![
                Arc::new(StringArray::from(vec!["eu-west"])),
                Arc::new(Int64Array::from(vec![7])),
            ]),
            vec![PY_EU_WEST_7]
        );
        assert_eq!(
            hashes(vec![Arc::new(Int64Array::from(vec![None::<i64>]))]),
            vec![PY_NULL]
        );
        assert_eq!(
            hashes(vec![
                Arc::new(StringArray::from(vec!["a"])),
                Arc::new(StringArray::from(vec![None::<&str>])),
            ]),
            vec![PY_A_NULL]
        );
    }

    const PY_BIGINT_42: u64 = 0xD5A6_F8C8_38DF_27C8;
    const PY_EU_WEST_7: u64 = 0x1923_6D7F_403D_5BBB;
    const PY_NULL: u64 = 0x602B_0E2C_D666_2C8B;
    const PY_A_NULL: u64 = 0x45F8_827A_A80F_57B4;

    #[test]
    fn equal_values_hash_equally_whatever_their_layout() {
        let ints = hashes(vec![Arc::new(Int64Array::from(vec![1, -5, 300]))]);
        assert_eq!(
            hashes(vec![Arc::new(Int32Array::from(vec![1, -5, 300]))]),
            ints
        );
        let text = hashes(vec![Arc::new(StringArray::from(vec!["a", "", "eu"]))]);
        assert_eq!(
            hashes(vec![Arc::new(LargeStringArray::from(vec!["a", "", "eu"]))]),
            text
        );
        assert_eq!(
            hashes(vec![Arc::new(StringViewArray::from(vec!["a", "", "eu"]))]),
            text
        );
        let dict: DictionaryArray<Keys> = vec!["a", "", "eu"].into_iter().collect();
        assert_eq!(hashes(vec![Arc::new(dict)]), text);
        // -0.0 and 0.0 are equal, and NaNs group together.
        let f = hashes(vec![Arc::new(Float64Array::from(vec![
            0.0,
            -0.0,
            f64::NAN,
            -f64::NAN,
        ]))]);
        assert_eq!(f[0], f[1]);
        assert_eq!(f[2], f[3]);
        // The same in any batch: a row's hash depends on its own values only.
        let all = hashes(vec![Arc::new(UInt8Array::from(vec![1, 2, 3]))]);
        let one = hashes(vec![Arc::new(UInt8Array::from(vec![3]))]);
        assert_eq!(all[2], one[0]);
        assert_eq!(all[0], ints[0]);
    }

    #[test]
    fn nulls_differ_from_values_and_positions_matter() {
        let t = hashes(vec![Arc::new(StringArray::from(vec![Some(""), None]))]);
        assert_ne!(t[0], t[1]);
        let ab = hashes(vec![
            Arc::new(StringArray::from(vec![Some("a"), None])),
            Arc::new(StringArray::from(vec![None, Some("a")])),
        ]);
        assert_ne!(ab[0], ab[1]);
        let b = hashes(vec![Arc::new(BooleanArray::from(vec![
            Some(false),
            Some(true),
            None,
        ]))]);
        assert_ne!(b[0], b[1]);
        assert_ne!(b[0], b[2]);
    }

    #[test]
    fn partitions_are_in_range_and_even() {
        let n = 100_000;
        let keys: Vec<String> = (0..n).map(|i| format!("user-{i}")).collect();
        let ts: Vec<i64> = (0..n as i64).map(|i| i * 1000).collect();
        let parts = key_partitions(
            &[
                Arc::new(StringArray::from(keys)),
                Arc::new(TimestampMillisecondArray::from(ts)),
            ],
            n,
            32,
        )
        .unwrap();
        let mut counts = [0usize; 32];
        for p in parts {
            counts[p as usize] += 1;
        }
        let mean = n / 32;
        for c in counts {
            assert!(c.abs_diff(mean) < mean / 10, "{counts:?}");
        }
        assert!(key_partitions(&[], 0, 0).is_err());
    }

    #[test]
    fn nested_keys_are_refused_with_the_type() {
        let list = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![Some(vec![Some(1)])]);
        let e = key_hashes(&[Arc::new(list)], 1).unwrap_err();
        assert!(matches!(e, WeirError::User { .. }), "{e:?}");
    }
}
