//! The changes of an updating view (an aggregate without a window: its rows change as
//! events arrive), in the one form they take through the engine: a batch of the view's
//! columns followed by [`OP_COLUMN`], `Int8`, [`INSERT`] (+1) or [`DELETE`] (-1) per row.
//! An update is the old row deleted and the new one inserted, in that order, in the same
//! batch: the retract form, which is what an aggregate downstream needs to take a value
//! back out. Append-only views never carry the column.
//!
//! Consumers that keep rows by the view's key (Postgres, Kafka's upsert topics, the
//! serving layer's current rows) want the last change per key, [`net_changes`].

use crate::error::{Result, WeirError};
use datafusion::arrow::array::{Array, ArrayRef, Int8Array, StringArray, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use std::sync::Arc;

/// The column an updating view's changes carry last.
pub const OP_COLUMN: &str = "__op";
pub const INSERT: i8 = 1;
pub const DELETE: i8 = -1;

/// `schema` with the op column appended: the schema of an updating view's changes.
pub fn with_op(schema: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(OP_COLUMN, DataType::Int8, false));
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// `batch` with every row marked `op`.
pub fn tag(batch: RecordBatch, op: i8) -> Result<RecordBatch> {
    let mut cols = batch.columns().to_vec();
    cols.push(Arc::new(Int8Array::from(vec![op; batch.num_rows()])));
    Ok(RecordBatch::try_new(with_op(&batch.schema()), cols)?)
}

/// Whether `batch` is a batch of changes (its last column is the op column).
pub fn is_changes(batch: &RecordBatch) -> bool {
    let schema = batch.schema();
    schema
        .fields()
        .last()
        .is_some_and(|f| f.name() == OP_COLUMN && f.data_type() == &DataType::Int8)
}

/// A batch of changes as the view's rows and each row's op.
pub fn split(batch: &RecordBatch) -> Result<(RecordBatch, Int8Array)> {
    if !is_changes(batch) {
        return Err(WeirError::Internal(format!(
            "a batch of changes without its {OP_COLUMN} column"
        )));
    }
    let last = batch.num_columns() - 1;
    let ops = batch
        .column(last)
        .as_any()
        .downcast_ref::<Int8Array>()
        .ok_or_else(|| WeirError::Internal(format!("{OP_COLUMN} is not Int8")))?
        .clone();
    let rows = batch.project(&(0..last).collect::<Vec<_>>())?;
    Ok((rows, ops))
}

/// A batch of changes with the op column written as a name (`insert`, `delete`) in a
/// column called `name`, for readers outside the engine (JSON, Parquet files).
pub fn with_op_names(batch: &RecordBatch, name: &str) -> Result<RecordBatch> {
    let (rows, ops) = split(batch)?;
    let names: StringArray = ops
        .iter()
        .map(|o| {
            Some(if o == Some(DELETE) {
                "delete"
            } else {
                "insert"
            })
        })
        .collect();
    let mut fields: Vec<Field> = rows
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(name, DataType::Utf8, false));
    let mut cols = rows.columns().to_vec();
    cols.push(Arc::new(names));
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

/// The effect of a batch of changes on a table keyed by `key` (column indices of the
/// view's rows): per key, its last change.
#[derive(Debug)]
pub struct Net {
    /// Rows to insert or replace (keys whose last change is an insert), in the order of
    /// those changes.
    pub upserts: RecordBatch,
    /// Rows whose key is gone (its last change is a delete), in order.
    pub deletes: RecordBatch,
}

/// The last change per key of a batch of changes. With no key columns, every row has the
/// same (empty) key: a global aggregate's one row.
pub fn net_changes(batch: &RecordBatch, key: &[usize]) -> Result<Net> {
    let (rows, ops) = split(batch)?;
    let last = last_per_key(&rows, key)?;
    let mut upserts = Vec::new();
    let mut deletes = Vec::new();
    for i in last {
        if ops.value(i as usize) == DELETE {
            deletes.push(i);
        } else {
            upserts.push(i);
        }
    }
    let pick = |idx: Vec<u32>| -> Result<RecordBatch> {
        let idx = UInt32Array::from(idx);
        let cols = rows
            .columns()
            .iter()
            .map(|c| Ok(take(c.as_ref(), &idx, None)?))
            .collect::<Result<Vec<ArrayRef>>>()?;
        Ok(RecordBatch::try_new(rows.schema(), cols)?)
    };
    Ok(Net {
        upserts: pick(upserts)?,
        deletes: pick(deletes)?,
    })
}

/// The index of each key's last row, in row order.
pub(crate) fn last_per_key(rows: &RecordBatch, key: &[usize]) -> Result<Vec<u32>> {
    let n = rows.num_rows();
    if n == 0 {
        return Ok(vec![]);
    }
    if key.is_empty() {
        return Ok(vec![n as u32 - 1]);
    }
    let converter = RowConverter::new(
        key.iter()
            .map(|&k| SortField::new(rows.column(k).data_type().clone()))
            .collect(),
    )?;
    let cols: Vec<ArrayRef> = key.iter().map(|&k| rows.column(k).clone()).collect();
    let keys = converter.convert_columns(&cols)?;
    let mut last: crate::FastMap<&[u8], u32> =
        crate::FastMap::with_capacity_and_hasher(n, Default::default());
    for (i, k) in keys.iter().enumerate() {
        last.insert(k.data(), i as u32);
    }
    let mut out: Vec<u32> = last.into_values().collect();
    out.sort_unstable();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;

    fn changes(rows: &[(&str, i64, i8)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
            Field::new(OP_COLUMN, DataType::Int8, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Int8Array::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .unwrap()
    }

    fn pairs(b: &RecordBatch) -> Vec<(String, i64)> {
        let k = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let n = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        (0..b.num_rows())
            .map(|i| (k.value(i).to_string(), n.value(i)))
            .collect()
    }

    #[test]
    fn the_last_change_per_key_wins() {
        let b = changes(&[
            ("a", 1, DELETE),
            ("a", 2, INSERT),
            ("b", 5, INSERT),
            ("c", 7, DELETE),
            ("b", 5, DELETE),
        ]);
        let net = net_changes(&b, &[0]).unwrap();
        assert_eq!(pairs(&net.upserts), vec![("a".into(), 2)]);
        assert_eq!(pairs(&net.deletes), vec![("c".into(), 7), ("b".into(), 5)]);
        // No key: one row.
        let net = net_changes(&b, &[]).unwrap();
        assert_eq!(net.upserts.num_rows(), 0);
        assert_eq!(pairs(&net.deletes), vec![("b".into(), 5)]);
    }

    #[test]
    fn ops_split_off_and_named() {
        let b = changes(&[("a", 1, DELETE), ("a", 2, INSERT)]);
        assert!(is_changes(&b));
        let (rows, ops) = split(&b).unwrap();
        assert_eq!(rows.num_columns(), 2);
        assert_eq!(ops.values().to_vec(), vec![DELETE, INSERT]);
        assert!(!is_changes(&rows));
        assert!(split(&rows).is_err());
        let named = with_op_names(&b, "op").unwrap();
        let names = named
            .column(2)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(
            names.iter().flatten().collect::<Vec<_>>(),
            ["delete", "insert"]
        );
        let tagged = tag(rows, INSERT).unwrap();
        assert_eq!(split(&tagged).unwrap().1.values().to_vec(), vec![INSERT; 2]);
    }
}
