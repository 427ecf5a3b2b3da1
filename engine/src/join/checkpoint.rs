//! A join's state in a checkpoint: each side's stored rows (an outer side's with whether
//! each has matched); the index is rebuilt on restore.

use super::StreamJoin;
use crate::error::{Result, WeirError};
use datafusion::arrow::array::{Array, BooleanArray};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use std::sync::Arc;

/// The column a checkpoint of an outer side's rows adds: whether each has matched.
const MATCHED_COLUMN: &str = "__matched";

impl StreamJoin {
    /// Each side's stored rows, for a checkpoint: `[left, right]`; an outer side's rows
    /// with a last column [`MATCHED_COLUMN`].
    pub fn snapshot(&self) -> Result<[Vec<RecordBatch>; 2]> {
        let side = |i: usize| -> Result<Vec<RecordBatch>> {
            let s = &self.sides[i];
            if s.batches.is_empty() {
                return Ok(vec![]);
            }
            let rows = concat_batches(&s.schema, &s.batches)?;
            if !self.outer[i] {
                return Ok(vec![rows]);
            }
            let mut fields: Vec<_> = s.schema.fields().iter().cloned().collect();
            fields.push(Arc::new(datafusion::arrow::datatypes::Field::new(
                MATCHED_COLUMN,
                DataType::Boolean,
                false,
            )));
            let mut cols = rows.columns().to_vec();
            cols.push(Arc::new(BooleanArray::from(s.matched.clone())));
            Ok(vec![RecordBatch::try_new(
                Arc::new(datafusion::arrow::datatypes::Schema::new(fields)),
                cols,
            )?])
        };
        Ok([side(0)?, side(1)?])
    }

    /// Load each side's rows saved by [`StreamJoin::snapshot`] (into a join built from
    /// the same view definition).
    pub fn restore(&mut self, sides: [Vec<RecordBatch>; 2]) -> Result<()> {
        for (side, batches) in sides.into_iter().enumerate() {
            let schema = self.sides[side].schema.clone();
            let mut cast_batches = Vec::with_capacity(batches.len());
            let mut matched = Vec::new();
            for mut b in batches {
                let n = b.num_columns();
                if self.outer[side] && n > 0 && b.schema().field(n - 1).name() == MATCHED_COLUMN {
                    let flags = b
                        .column(n - 1)
                        .as_any()
                        .downcast_ref::<BooleanArray>()
                        .ok_or_else(|| WeirError::Internal("matched flags type".into()))?;
                    matched.extend(flags.iter().map(|f| f.unwrap_or(false)));
                    b = b.project(&(0..n - 1).collect::<Vec<_>>())?;
                }
                if b.schema().fields().len() != schema.fields().len() {
                    return Err(WeirError::Internal(format!(
                        "join state of side {side} does not match the view: expected {schema:?}, found {:?}",
                        b.schema()
                    )));
                }
                let cols = b
                    .columns()
                    .iter()
                    .zip(schema.fields())
                    .map(|(c, f)| {
                        Ok(if c.data_type() == f.data_type() {
                            c.clone()
                        } else {
                            cast(c, f.data_type())?
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                cast_batches.push(RecordBatch::try_new(schema.clone(), cols)?);
            }
            self.reload(side, cast_batches, &matched)?;
        }
        Ok(())
    }
}
