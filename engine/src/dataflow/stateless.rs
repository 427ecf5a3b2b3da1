//! A view without state (filters, projections, scalar functions, lookup joins): its whole
//! plan runs on each batch and what comes out is emitted at once. Its watermark is its
//! input's.

use super::operator::{Context, NodeState, Operator, meta_field};
use super::prepare::{Stage1Out, Stage1Step};
use crate::error::Result;
use crate::planner::slot::SlotPlan;
use async_trait::async_trait;
use datafusion::arrow::record_batch::RecordBatch;
use std::sync::Arc;

pub struct StatelessOp {
    plan: Arc<SlotPlan>,
    watermark: i64,
}

impl StatelessOp {
    pub fn new(plan: SlotPlan) -> Self {
        StatelessOp {
            plan: Arc::new(plan),
            watermark: i64::MIN,
        }
    }
}

#[async_trait]
impl Operator for StatelessOp {
    async fn on_batch(
        &mut self,
        _port: usize,
        batch: RecordBatch,
        _cx: &mut Context<'_>,
    ) -> Result<Vec<RecordBatch>> {
        self.plan.run(batch).await
    }

    async fn on_watermark(
        &mut self,
        inputs: &[i64],
        _cx: &mut Context<'_>,
    ) -> Result<Vec<RecordBatch>> {
        let input = inputs.iter().copied().min().unwrap_or(i64::MIN);
        self.watermark = self.watermark.max(input);
        Ok(vec![])
    }

    fn watermark(&self) -> i64 {
        self.watermark
    }

    fn snapshot(&mut self) -> Result<NodeState> {
        Ok(NodeState {
            meta: serde_json::json!({ "watermark": self.watermark }),
            parts: vec![],
        })
    }

    fn restore(&mut self, state: NodeState) -> Result<()> {
        self.watermark = meta_field(&state.meta, "watermark")?.unwrap_or(i64::MIN);
        Ok(())
    }

    fn stage1(&self) -> Option<Stage1Step> {
        Some(Stage1Step::Stateless(self.plan.clone()))
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
