//! A source's node: it keeps the source's partitions and watermark (see `watermark.rs`) and
//! passes its batches on unchanged. Batches reach it through [`SourceOp::observe`] (the
//! dataflow cuts them first, see `watermark::cut_points`) rather than
//! [`Operator::on_batch`], because they carry a partition.

use super::operator::{Context, NodeState, Operator, meta_field};
use crate::error::{Result, WeirError};
use crate::watermark::{EventTime, PartitionState, SourceWatermark};
use async_trait::async_trait;
use datafusion::arrow::array::{Array, TimestampMillisecondArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;

pub struct SourceOp {
    pub schema: SchemaRef,
    pub clock: SourceWatermark,
}

/// A timestamp column as epoch milliseconds.
pub fn ts_millis(array: &dyn Array) -> Result<TimestampMillisecondArray> {
    let target = DataType::Timestamp(TimeUnit::Millisecond, None);
    let a = cast(array, &target)?;
    a.as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .cloned()
        .ok_or_else(|| WeirError::Internal("timestamp cast".into()))
}

impl SourceOp {
    pub fn new(schema: SchemaRef, clock: SourceWatermark) -> Self {
        SourceOp { schema, clock }
    }

    /// The batch's event-time column as epoch milliseconds, if the source reads event time
    /// from a column.
    pub fn event_times(&self, batch: &RecordBatch) -> Result<Option<TimestampMillisecondArray>> {
        let EventTime::Column { index, .. } = self.clock.event_time else {
            return Ok(None);
        };
        Ok(Some(ts_millis(batch.column(index))?))
    }

    /// Rows of `partition` arrived at `now`, with these event times.
    pub fn observe(
        &mut self,
        partition: usize,
        times: Option<&TimestampMillisecondArray>,
        now: i64,
    ) {
        let newest = times.and_then(datafusion::arrow::compute::max);
        self.clock.observe(partition, newest, now);
    }
}

#[async_trait]
impl Operator for SourceOp {
    async fn on_batch(
        &mut self,
        _port: usize,
        batch: RecordBatch,
        _cx: &mut Context<'_>,
    ) -> Result<Vec<RecordBatch>> {
        Ok(vec![batch])
    }

    async fn on_watermark(
        &mut self,
        _inputs: &[i64],
        cx: &mut Context<'_>,
    ) -> Result<Vec<RecordBatch>> {
        self.clock.advance(cx.now_ms);
        Ok(vec![])
    }

    fn watermark(&self) -> i64 {
        self.clock.watermark()
    }

    async fn snapshot(&mut self) -> Result<NodeState> {
        Ok(NodeState {
            meta: serde_json::json!({
                "partitions": self.clock.partitions,
                "watermark": self.clock.watermark(),
            }),
            parts: vec![],
        })
    }

    fn restore(&mut self, state: NodeState) -> Result<()> {
        let saved: Vec<PartitionState> = meta_field(&state.meta, "partitions")?.unwrap_or_default();
        let now = self.clock.partitions.first().map_or(0, |p| p.last_active);
        while self.clock.partitions.len() < saved.len() {
            self.clock.partitions.push(PartitionState::new(now));
        }
        for (p, c) in self.clock.partitions.iter_mut().zip(saved) {
            // Idle timeouts run on from the checkpoint (the runtime's start moves them to
            // the restart time).
            *p = c;
        }
        if let Some(w) = meta_field(&state.meta, "watermark")? {
            self.clock.set_watermark(w);
        }
        Ok(())
    }
}
