//! A view that joins two streams (see `join/mod.rs` for the symmetric hash join): a batch
//! from either side runs through that side's stateless part, probes the other side's
//! stored rows, and the matches run through the part above the join and are emitted at
//! once. Its watermark is the least of its inputs'; either side's watermark may let the
//! other side's stored rows go (window joins). The state is split into key partitions
//! (`join/keyed.rs`).

use super::keyed::Keying;
use super::operator::{Context, NodeState, Operator, StateFigures, meta_field};
use crate::changelog::{self, DELETE, INSERT};
use crate::error::{Result, WeirError};
use crate::join::StreamJoin;
use crate::join::keyed::KeyedJoin;
use crate::planner::slot::SlotPlan;
use async_trait::async_trait;
use datafusion::arrow::record_batch::RecordBatch;

pub struct JoinOp {
    sides: Vec<SlotPlan>,
    join: KeyedJoin,
    post: SlotPlan,
    watermark: i64,
}

impl JoinOp {
    pub fn new(
        sides: Vec<SlotPlan>,
        join: Box<StreamJoin>,
        post: SlotPlan,
        keying: Keying,
    ) -> Result<Self> {
        Ok(JoinOp {
            sides,
            join: KeyedJoin::new(*join, keying)?,
            post,
            watermark: i64::MIN,
        })
    }
}

#[async_trait]
impl Operator for JoinOp {
    async fn on_batch(
        &mut self,
        port: usize,
        batch: RecordBatch,
        cx: &mut Context<'_>,
    ) -> Result<Vec<RecordBatch>> {
        let side = self
            .sides
            .get(port)
            .ok_or_else(|| WeirError::Internal(format!("a join has no input {port}")))?;
        let mut out = Vec::new();
        for b in side.run(batch).await? {
            let (inserts, deletes) = self.join.push_changes(port, &b).await?;
            if !self.join.retracts() {
                for rows in inserts {
                    out.extend(self.post.run(rows).await?);
                }
                continue;
            }
            // An updating join: its changes, the retractions first.
            for (parts, op) in [(deletes, DELETE), (inserts, INSERT)] {
                for rows in parts {
                    for r in self.post.run(rows).await? {
                        out.push(changelog::tag(r, op)?);
                    }
                }
            }
        }
        super::operator::count_late_rows(cx, self.join.take_late());
        Ok(out)
    }

    async fn on_watermark(
        &mut self,
        inputs: &[i64],
        _cx: &mut Context<'_>,
    ) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        if let [l, r] = inputs {
            // An outer join's rows that will never match, NULL-padded.
            for unmatched in self.join.advance([*l, *r]).await? {
                out.extend(self.post.run(unmatched).await?);
            }
            self.watermark = self.watermark.max(self.join.output_watermark([*l, *r]));
        } else {
            super::operator::follow_inputs(&mut self.watermark, inputs);
        }
        Ok(out)
    }

    fn watermark(&self) -> i64 {
        self.watermark
    }

    fn figures(&self) -> StateFigures {
        self.join.figures()
    }

    fn partitioning(&self) -> Option<String> {
        Some(self.join.describe_partitioning())
    }

    async fn snapshot(&mut self) -> Result<NodeState> {
        Ok(NodeState {
            meta: serde_json::json!({
                "watermark": self.watermark,
                "inputs": self.join.input_watermarks(),
                "key_partitions": self.join.key_partitions(),
            }),
            parts: self.join.snapshot()?,
        })
    }

    fn restore(&mut self, state: NodeState) -> Result<()> {
        self.watermark = meta_field(&state.meta, "watermark")?.unwrap_or(i64::MIN);
        let inputs = meta_field::<[i64; 2]>(&state.meta, "inputs")?;
        // Checkpoints from before key partitions hold one.
        let written: u32 = meta_field(&state.meta, "key_partitions")?.unwrap_or(1);
        let mut parts = state.parts;
        // A join that had stored nothing may have been written with no sides at all.
        parts.resize(2 * written.max(1) as usize, Vec::new());
        self.join.restore(parts, written, inputs)
    }
}
