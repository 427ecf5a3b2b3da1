//! Column metrics of a data file (value and null counts, lower and upper bounds by field
//! id), gathered from the batches as they are written, for the manifest: readers skip
//! files whose bounds exclude a filter. Bounds are exact values; a column gets none where
//! Iceberg's rules would need more care than they are worth here (floats, for NaN;
//! decimals and binary; text longer than [`MAX_TEXT_BOUND`] bytes, which would bloat the
//! manifests).

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::{max, max_boolean, max_string, min, min_boolean, min_string};
use datafusion::arrow::datatypes::{
    ArrowPrimitiveType, DataType, Date32Type, Int32Type, Int64Type, TimeUnit,
    TimestampMicrosecondType,
};
use datafusion::arrow::record_batch::RecordBatch;
use iceberg::spec::Datum;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Text longer than this has no bounds.
pub const MAX_TEXT_BOUND: usize = 64;

/// A bound, typed as its column.
#[derive(Debug, Clone, PartialEq, PartialOrd, Serialize, Deserialize)]
pub enum Bound {
    Int(i32),
    Long(i64),
    Date(i32),
    Timestamp(i64),
    Timestamptz(i64),
    Text(String),
    Bool(bool),
}

impl Bound {
    fn datum(&self) -> Datum {
        match self {
            Bound::Int(v) => Datum::int(*v),
            Bound::Long(v) => Datum::long(*v),
            Bound::Date(v) => Datum::date(*v),
            Bound::Timestamp(v) => Datum::timestamp_micros(*v),
            Bound::Timestamptz(v) => Datum::timestamptz_micros(*v),
            Bound::Text(v) => Datum::string(v.clone()),
            Bound::Bool(v) => Datum::bool(*v),
        }
    }
}

/// One column's metrics so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ColumnStats {
    pub values: u64,
    pub nulls: u64,
    pub lower: Option<Bound>,
    pub upper: Option<Bound>,
    /// A value had no bound (text too long): the file gets none for the column.
    pub unbounded: bool,
}

/// A file's metrics, by field id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FileStats {
    pub columns: BTreeMap<i32, ColumnStats>,
}

/// The smallest and largest non-null value of `a`, as bounds; `None` for an all-null
/// column or a type without bounds (and then `unbounded` says whether that was a value's
/// fault rather than the type's).
fn min_max(a: &dyn Array) -> (Option<(Bound, Bound)>, bool) {
    match a.data_type() {
        DataType::Int32 => (primitive::<Int32Type>(a, Bound::Int), false),
        DataType::Int64 => (primitive::<Int64Type>(a, Bound::Long), false),
        DataType::Date32 => (primitive::<Date32Type>(a, Bound::Date), false),
        DataType::Timestamp(TimeUnit::Microsecond, None) => (
            primitive::<TimestampMicrosecondType>(a, Bound::Timestamp),
            false,
        ),
        DataType::Timestamp(TimeUnit::Microsecond, Some(_)) => (
            primitive::<TimestampMicrosecondType>(a, Bound::Timestamptz),
            false,
        ),
        DataType::Utf8 => {
            let s = a.as_string::<i32>();
            match min_string(s).zip(max_string(s)) {
                Some((l, u)) if l.len() <= MAX_TEXT_BOUND && u.len() <= MAX_TEXT_BOUND => (
                    Some((Bound::Text(l.to_string()), Bound::Text(u.to_string()))),
                    false,
                ),
                Some(_) => (None, true),
                None => (None, false),
            }
        }
        DataType::Boolean => {
            let b = a.as_boolean();
            (
                min_boolean(b)
                    .zip(max_boolean(b))
                    .map(|(l, u)| (Bound::Bool(l), Bound::Bool(u))),
                false,
            )
        }
        _ => (None, false),
    }
}

/// The bounds of a primitive array, each made a [`Bound`] by `wrap`.
fn primitive<T: ArrowPrimitiveType>(
    a: &dyn Array,
    wrap: fn(T::Native) -> Bound,
) -> Option<(Bound, Bound)> {
    let p = a.as_primitive::<T>();
    min(p).zip(max(p)).map(|(l, u)| (wrap(l), wrap(u)))
}

impl FileStats {
    /// Take in a batch written to the file; `ids`: each column's field id.
    pub fn add(&mut self, batch: &RecordBatch, ids: &[i32]) {
        for (column, id) in batch.columns().iter().zip(ids) {
            let c = self.columns.entry(*id).or_default();
            c.values += column.len() as u64;
            c.nulls += column.null_count() as u64;
            if c.unbounded {
                continue;
            }
            let (bounds, unbounded) = min_max(column.as_ref());
            if unbounded {
                c.unbounded = true;
                c.lower = None;
                c.upper = None;
                continue;
            }
            if let Some((l, u)) = bounds {
                if c.lower.as_ref().is_none_or(|old| l < *old) {
                    c.lower = Some(l);
                }
                if c.upper.as_ref().is_none_or(|old| u > *old) {
                    c.upper = Some(u);
                }
            }
        }
    }

    pub fn value_counts(&self) -> HashMap<i32, u64> {
        self.columns.iter().map(|(id, c)| (*id, c.values)).collect()
    }

    pub fn null_counts(&self) -> HashMap<i32, u64> {
        self.columns.iter().map(|(id, c)| (*id, c.nulls)).collect()
    }

    pub fn lower_bounds(&self) -> HashMap<i32, Datum> {
        self.columns
            .iter()
            .filter_map(|(id, c)| Some((*id, c.lower.as_ref()?.datum())))
            .collect()
    }

    pub fn upper_bounds(&self) -> HashMap<i32, Datum> {
        self.columns
            .iter()
            .filter_map(|(id, c)| Some((*id, c.upper.as_ref()?.datum())))
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    #[test]
    fn bounds_counts_and_columns_without_bounds() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("x", DataType::Float64, true),
        ]));
        let batch = |n: Vec<Option<i64>>, s: Vec<Option<&str>>| {
            let len = n.len();
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(n)),
                    Arc::new(StringArray::from(s)),
                    Arc::new(Float64Array::from(vec![1.0; len])),
                ],
            )
            .unwrap()
        };
        let mut st = FileStats::default();
        st.add(
            &batch(vec![Some(5), None], vec![Some("m"), Some("b")]),
            &[1, 2, 3],
        );
        st.add(
            &batch(vec![Some(-2), Some(9)], vec![None, Some("z")]),
            &[1, 2, 3],
        );
        assert_eq!(st.value_counts(), HashMap::from([(1, 4), (2, 4), (3, 4)]));
        assert_eq!(st.null_counts(), HashMap::from([(1, 1), (2, 1), (3, 0)]));
        assert_eq!(
            st.lower_bounds(),
            HashMap::from([(1, Datum::long(-2)), (2, Datum::string("b"))])
        );
        assert_eq!(
            st.upper_bounds(),
            HashMap::from([(1, Datum::long(9)), (2, Datum::string("z"))])
        );
        // A long text value: no bounds for the column in this file, ever after.
        st.add(
            &batch(vec![Some(1)], vec![Some(&"y".repeat(100))]),
            &[1, 2, 3],
        );
        st.add(&batch(vec![Some(1)], vec![Some("a")]), &[1, 2, 3]);
        assert!(!st.lower_bounds().contains_key(&2));
        assert!(!st.upper_bounds().contains_key(&2));
    }
}
