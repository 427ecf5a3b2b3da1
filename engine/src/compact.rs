//! Compacting batches that are kept for long.
//!
//! A batch out of DataFusion can hold buffers much larger than its rows need: a
//! `FilterExec` coalesces what it keeps into buffers sized for a whole batch
//! (`batch_size`, 8192 rows), so a filter keeping 3 rows returns 3 rows in 64 KiB per
//! 8-byte column; a slice shares all of its parent's buffers. That costs nothing while the
//! batch flows through, but a batch kept for hours (a view's retained rows, up to
//! `retention.rows` of them) must hold only its own rows: a view emitting a few filtered
//! rows per window otherwise keeps a full batch's buffers per window.

use datafusion::arrow::array::{Array, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::record_batch::RecordBatch;

/// Wasted bytes a batch may hold without being copied.
const SLACK_BYTES: usize = 16 * 1024;

/// `batch` itself when its buffers hold at most about twice what its rows need, else a
/// copy holding only its rows.
pub fn compact(batch: RecordBatch) -> RecordBatch {
    let (mut held, mut needed) = (0usize, 0usize);
    for column in batch.columns() {
        let size = column.get_buffer_memory_size();
        held += size;
        // Types whose slice size arrow cannot tell (views, nested) count as needed.
        needed += column.to_data().get_slice_memory_size().unwrap_or(size);
    }
    if held <= 2 * needed + SLACK_BYTES {
        return batch;
    }
    let rows = UInt32Array::from_iter_values(0..batch.num_rows() as u32);
    take_record_batch(&batch, &rows).unwrap_or(batch)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::connector::ConnectorRegistry;
    use crate::connector::testing::Pushed;
    use crate::pipeline::{EngineConfig, Pipeline};
    use datafusion::arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn batch(rows: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..rows)),
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| format!("row {i}")),
                )),
            ],
        )
        .unwrap()
    }

    #[test]
    fn small_slices_are_copied_and_full_batches_kept() {
        let big = batch(8192);
        let slice = big.slice(100, 3);
        assert!(slice.get_array_memory_size() > 64 * 1024);
        let small = compact(slice.clone());
        assert_eq!(small, slice);
        assert!(
            small.get_array_memory_size() < 4096,
            "{}",
            small.get_array_memory_size()
        );
        // Nothing to gain: the same buffers.
        let kept = compact(big.clone());
        assert!(Arc::ptr_eq(big.column(0), kept.column(0)));
    }

    /// A view keeping one row of each micro-batch retains that row, not the 8192-row
    /// buffers DataFusion's filter put it in.
    #[tokio::test]
    async fn retained_rows_hold_only_their_rows() {
        let mut p = Pipeline::new(
            EngineConfig::default(),
            ConnectorRegistry::new().with_source(Pushed),
        );
        p.execute(
            "CREATE SOURCE ev (ts TIMESTAMP NOT NULL, v BIGINT) WITH (connector = 'pushed');
             CREATE MATERIALIZED VIEW rare AS SELECT ts, v FROM ev WHERE v % 1000 = 7;",
        )
        .await
        .unwrap();
        let schema = p.source_schema("ev").unwrap();
        for b in 0..10i64 {
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(TimestampMillisecondArray::from_iter_values(
                        (0..1000).map(|i| b * 1000 + i),
                    )),
                    Arc::new(Int64Array::from_iter_values(0..1000)),
                ],
            )
            .unwrap();
            p.push("ev", 0, batch, 0).await.unwrap();
        }
        let retained = p.view_buffer("rare").unwrap().retained();
        let rows: usize = retained.batches.iter().map(|(_, b)| b.num_rows()).sum();
        assert_eq!(rows, 10);
        let bytes: usize = retained
            .batches
            .iter()
            .map(|(_, b)| b.get_array_memory_size())
            .sum();
        assert!(bytes < 10 * 4096, "10 retained rows hold {bytes} bytes");
    }
}
