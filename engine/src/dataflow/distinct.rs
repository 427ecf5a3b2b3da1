//! `SELECT DISTINCT` (or a `GROUP BY` without aggregates) over a stream without a window:
//! each distinct row comes out once, the first time it is seen, and never changes or goes
//! away, so the view is append-only (an insert-only changelog). The pre plan (scan, WHERE,
//! the grouped expressions' inputs) runs per micro-batch, the seen keys are kept in the
//! row format, and the post plan (projection, filters above the DISTINCT) runs over each
//! batch of new rows. The result is `SELECT DISTINCT` in batch over every row so far; no
//! row is ever late. State grows with the distinct rows (shown as `open_groups`).

use super::operator::{Context, NodeState, Operator, StateFigures, meta_field};
use crate::error::Result;
use crate::planner::slot::SlotPlan;
use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::physical_expr::PhysicalExpr;
use std::collections::HashSet;
use std::sync::Arc;

pub struct DistinctOp {
    pre: SlotPlan,
    /// The DISTINCT (GROUP BY) expressions over the pre plan's rows.
    keys: Vec<Arc<dyn PhysicalExpr>>,
    /// The distinct rows as the post plan reads them (the key columns).
    key_schema: SchemaRef,
    post: SlotPlan,
    converter: RowConverter,
    seen: HashSet<Vec<u8>>,
    watermark: i64,
}

impl DistinctOp {
    pub fn try_new(
        pre: SlotPlan,
        keys: Vec<Arc<dyn PhysicalExpr>>,
        key_schema: SchemaRef,
        post: SlotPlan,
    ) -> Result<Self> {
        let fields = key_schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect();
        Ok(DistinctOp {
            pre,
            keys,
            key_schema,
            post,
            converter: RowConverter::new(fields)?,
            seen: HashSet::new(),
            watermark: i64::MIN,
        })
    }

    /// The key columns of `batch`, in the key schema's types.
    fn key_columns(&self, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
        self.keys
            .iter()
            .zip(self.key_schema.fields())
            .map(|(k, f)| {
                let a = k.evaluate(batch)?.into_array(batch.num_rows())?;
                crate::window::cast_to(a, f.data_type())
            })
            .collect()
    }
}

#[async_trait]
impl Operator for DistinctOp {
    async fn on_batch(
        &mut self,
        _port: usize,
        batch: RecordBatch,
        _cx: &mut Context<'_>,
    ) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for b in self.pre.run(batch).await? {
            let cols = self.key_columns(&b)?;
            let rows = self.converter.convert_columns(&cols)?;
            let mut new: Vec<u32> = Vec::new();
            for (i, row) in rows.iter().enumerate() {
                if self.seen.insert(row.as_ref().to_vec()) {
                    new.push(i as u32);
                }
            }
            if new.is_empty() {
                continue;
            }
            let idx = UInt32Array::from(new);
            let cols = cols
                .iter()
                .map(|c| Ok(take(c.as_ref(), &idx, None)?))
                .collect::<Result<Vec<_>>>()?;
            let fresh = RecordBatch::try_new(self.key_schema.clone(), cols)?;
            out.extend(self.post.run(fresh).await?);
        }
        Ok(out)
    }

    async fn on_watermark(
        &mut self,
        inputs: &[i64],
        _cx: &mut Context<'_>,
    ) -> Result<Vec<RecordBatch>> {
        super::operator::follow_inputs(&mut self.watermark, inputs);
        Ok(vec![])
    }

    fn watermark(&self) -> i64 {
        self.watermark
    }

    fn figures(&self) -> StateFigures {
        StateFigures {
            open_groups: self.seen.len() as u64,
            bytes: self.seen.iter().map(|k| k.len() as u64 + 48).sum(),
            ..StateFigures::default()
        }
    }

    async fn snapshot(&mut self) -> Result<NodeState> {
        let mut parts = Vec::new();
        if !self.seen.is_empty() {
            let parser = self.converter.parser();
            let cols = self
                .converter
                .convert_rows(self.seen.iter().map(|k| parser.parse(k)))?;
            parts.push(vec![RecordBatch::try_new(self.key_schema.clone(), cols)?]);
        }
        Ok(NodeState {
            meta: serde_json::json!({ "watermark": self.watermark }),
            parts,
        })
    }

    fn restore(&mut self, state: NodeState) -> Result<()> {
        self.watermark = meta_field(&state.meta, "watermark")?.unwrap_or(i64::MIN);
        self.seen.clear();
        for batch in state.parts.iter().flatten() {
            crate::window::check_state_schema("distinct rows", batch, &self.key_schema)?;
            let rows = self.converter.convert_columns(batch.columns())?;
            self.seen.extend(rows.iter().map(|r| r.as_ref().to_vec()));
        }
        Ok(())
    }
}
