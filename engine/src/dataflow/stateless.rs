//! A view without state (filters, projections, scalar functions, lookup joins, `UNION ALL`
//! of several streams): its whole plan runs on each batch and what comes out is emitted at
//! once. Its watermark is its input's, or the least of its inputs'.

use super::operator::{Context, NodeState, Operator, meta_field};
use super::prepare::{Stage1Out, Stage1Step};
use crate::error::Result;
use crate::planner::slot::{BatchSlot, SlotPlan};
use async_trait::async_trait;
use datafusion::arrow::record_batch::RecordBatch;
use std::sync::Arc;

pub struct StatelessOp {
    plan: Arc<SlotPlan>,
    /// A union's inputs: the slot its leaves reading input `port` read (empty: one input).
    inputs: Vec<Arc<BatchSlot>>,
    watermark: i64,
}

impl StatelessOp {
    pub fn new(plan: SlotPlan) -> Self {
        StatelessOp {
            plan: Arc::new(plan),
            inputs: vec![],
            watermark: i64::MIN,
        }
    }

    /// A `UNION ALL` of several inputs, `inputs[port]` the slot of port `port`'s leaves.
    pub fn union(plan: SlotPlan, inputs: Vec<Arc<BatchSlot>>) -> Self {
        StatelessOp {
            inputs,
            ..StatelessOp::new(plan)
        }
    }
}

#[async_trait]
impl Operator for StatelessOp {
    async fn on_batch(
        &mut self,
        port: usize,
        batch: RecordBatch,
        _cx: &mut Context<'_>,
    ) -> Result<Vec<RecordBatch>> {
        match self.inputs.get(port) {
            Some(input) => self.plan.run_input(input, batch).await,
            None if self.inputs.is_empty() => self.plan.run(batch).await,
            None => Err(crate::error::WeirError::Internal(format!(
                "a batch on port {port} of a union of {} inputs",
                self.inputs.len()
            ))),
        }
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

    async fn snapshot(&mut self) -> Result<NodeState> {
        Ok(NodeState {
            meta: serde_json::json!({ "watermark": self.watermark }),
            parts: vec![],
        })
    }

    fn restore(&mut self, state: NodeState) -> Result<()> {
        self.watermark = meta_field(&state.meta, "watermark")?.unwrap_or(i64::MIN);
        Ok(())
    }

    /// A union runs on the driver (stage 1 follows one source's batches through views
    /// with one input).
    fn stage1(&self) -> Option<Stage1Step> {
        self.inputs
            .is_empty()
            .then(|| Stage1Step::Stateless(self.plan.clone()))
    }

    async fn on_prepared(
        &mut self,
        prepared: Stage1Out,
        _cx: &mut Context<'_>,
    ) -> Result<Vec<RecordBatch>> {
        match prepared {
            Stage1Out::Rows(rows) => Ok(rows),
            Stage1Out::Partial(_) => Err(crate::error::WeirError::Internal(
                "a partial aggregate for a stateless view".into(),
            )),
        }
    }
}
