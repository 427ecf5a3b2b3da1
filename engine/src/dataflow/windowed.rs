//! A windowed view: the pre plan (scan, WHERE, window columns) runs per micro-batch, a
//! [`WindowOperator`] (window aggregate or window rows) holds the open windows, and the
//! post plan (HAVING, projection, top-N) runs once per window the watermark closes, and
//! per early emission (`EMIT EVERY`) on processing time. Rows too late for every window
//! that would take them are counted, and with `'late.policy' = 'dead-letter'` handed to
//! the runtime as an [`Effect`].

use super::keyed::{Keying, Windows};
use super::operator::{Context, Effect, LateRows, NodeState, Operator, StateFigures, meta_field};
use super::prepare::{Stage1Out, Stage1Step};
use crate::error::Result;
use crate::planner::slot::SlotPlan;
use crate::planner::{LatePolicy, mark_final};
use crate::window::{UpdateStats, WindowOperator, shifted_ms};
use async_trait::async_trait;
use datafusion::arrow::array::UInt32Array;
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use std::sync::Arc;

pub struct WindowedOp {
    pre: Arc<SlotPlan>,
    aggregate: Windows,
    post: Arc<SlotPlan>,
    /// The view's output schema (with `is_final` for `EMIT EVERY`).
    schema: SchemaRef,
    late_policy: LatePolicy,
    input_watermark: i64,
    watermark: i64,
    /// Checkpoints taken: the barrier number for stage-2 tasks.
    checkpoints: u64,
}

impl WindowedOp {
    pub fn new(
        pre: SlotPlan,
        aggregate: Box<dyn WindowOperator>,
        post: SlotPlan,
        schema: SchemaRef,
        late_policy: LatePolicy,
        keying: Keying,
        now_ms: i64,
    ) -> Result<Self> {
        let mut aggregate = Windows::new(aggregate, keying)?;
        // EMIT EVERY intervals count from the view's creation.
        aggregate.start_clock(now_ms)?;
        Ok(WindowedOp {
            pre: Arc::new(pre),
            aggregate,
            post: Arc::new(post),
            schema,
            late_policy,
            input_watermark: i64::MIN,
            watermark: i64::MIN,
            checkpoints: 0,
        })
    }

    /// Run `batch` through the pre plan and fold it into the windows, counting late rows;
    /// with the dead-letter policy, each late row is matched to the input row it came from.
    async fn fold(&mut self, batch: RecordBatch, cx: &mut Context<'_>) -> Result<()> {
        if self.late_policy == LatePolicy::Drop {
            for b in self.pre.run(batch).await? {
                let u = self.aggregate.update(&b, false).await?;
                count_late(cx, &u);
            }
            return Ok(());
        }
        // Only rows behind the watermark can be late. The pre plan keeps rows in order and
        // makes at most one row of each, so when it drops none, its rows are the input's;
        // otherwise the rows behind the watermark go through it one at a time, so a late
        // row is known for the input row it came from.
        let n = batch.num_rows();
        let closed = self.aggregate.closed_through()?;
        let behind: Vec<bool> = match batch
            .schema()
            .index_of(&self.aggregate.input_time_column()?)
        {
            Ok(i) => shifted_ms(batch.column(i), 0)?
                .iter()
                .map(|t| t.is_none_or(|t| t < closed))
                .collect(),
            Err(_) => vec![true; n],
        };
        let mut segments: Vec<(usize, usize)> = Vec::new();
        if behind.iter().any(|b| *b) {
            let out = self.pre.run(batch.clone()).await?;
            if out.iter().map(|b| b.num_rows()).sum::<usize>() == n {
                let mut offset = 0;
                for b in out {
                    let u = self.aggregate.update(&b, true).await?;
                    self.late_rows(cx, &batch, offset, &u)?;
                    offset += b.num_rows();
                }
                return Ok(());
            }
            let mut i = 0;
            while i < n {
                let mut j = i + 1;
                if !behind[i] {
                    while j < n && !behind[j] {
                        j += 1;
                    }
                }
                segments.push((i, j - i));
                i = j;
            }
        } else {
            segments.push((0, n));
        }
        for (offset, len) in segments {
            for b in self.pre.run(batch.slice(offset, len)).await? {
                let u = self.aggregate.update(&b, true).await?;
                if len == 1 {
                    self.late_rows(cx, &batch, offset, &u)?;
                } else {
                    // Rows at or after the watermark are never late.
                    count_late(cx, &u);
                }
            }
        }
        Ok(())
    }

    /// Count `u`'s late rows and hand them to the runtime for the dead-letter file; late
    /// row `r` of the update is input row `offset + r`.
    fn late_rows(
        &self,
        cx: &mut Context<'_>,
        input: &RecordBatch,
        offset: usize,
        u: &UpdateStats,
    ) -> Result<()> {
        count_late(cx, u);
        if u.late_rows.is_empty() {
            return Ok(());
        }
        let idx = UInt32Array::from(
            u.late_rows
                .iter()
                .map(|l| (offset + l.row) as u32)
                .collect::<Vec<_>>(),
        );
        let rows = take_record_batch(input, &idx)?;
        let late = u
            .late_rows
            .iter()
            .enumerate()
            .map(|(i, l)| crate::window::LateRow {
                row: i,
                ..l.clone()
            })
            .collect();
        let closed = self.aggregate.closed_through()?;
        cx.effects.push(Effect::LateRows(LateRows {
            view: cx.name.to_string(),
            rows,
            late,
            watermark: (closed != i64::MIN).then_some(closed),
        }));
        Ok(())
    }

    fn update_watermark(&mut self) -> Result<()> {
        self.watermark = self
            .watermark
            .max(self.aggregate.output_watermark(self.input_watermark)?);
        Ok(())
    }
}

fn count_late(cx: &Context<'_>, u: &UpdateStats) {
    super::operator::count_late_rows(cx, u.late);
}

#[async_trait]
impl Operator for WindowedOp {
    async fn on_batch(
        &mut self,
        _port: usize,
        batch: RecordBatch,
        cx: &mut Context<'_>,
    ) -> Result<Vec<RecordBatch>> {
        self.fold(batch, cx).await?;
        Ok(vec![])
    }

    async fn on_watermark(
        &mut self,
        inputs: &[i64],
        _cx: &mut Context<'_>,
    ) -> Result<Vec<RecordBatch>> {
        let input = inputs.iter().copied().min().unwrap_or(i64::MIN);
        if input <= self.input_watermark {
            return Ok(vec![]);
        }
        self.input_watermark = input;
        let mut out = Vec::new();
        for closed in self.aggregate.close(input).await? {
            for b in self.post.run(closed).await? {
                out.push(mark_final(&self.schema, b, true)?);
            }
        }
        self.update_watermark()?;
        Ok(out)
    }

    async fn on_tick(&mut self, cx: &mut Context<'_>) -> Result<Vec<RecordBatch>> {
        if !self.aggregate.emit_due(cx.now_ms)? {
            return Ok(vec![]);
        }
        let mut out = Vec::new();
        for open in self.aggregate.early().await? {
            for b in self.post.run(open).await? {
                out.push(mark_final(&self.schema, b, false)?);
            }
        }
        self.update_watermark()?;
        Ok(out)
    }

    fn watermark(&self) -> i64 {
        self.watermark
    }

    fn figures(&self) -> StateFigures {
        self.aggregate.figures()
    }

    fn partitioning(&self) -> Option<String> {
        Some(self.aggregate.describe_partitioning())
    }

    async fn snapshot(&mut self) -> Result<NodeState> {
        self.checkpoints += 1;
        let parts = self.aggregate.snapshot(self.checkpoints).await?;
        Ok(NodeState {
            meta: serde_json::json!({
                "input_watermark": self.input_watermark,
                "watermark": self.watermark,
                "closed_through": self.aggregate.closed_through()?,
                "emit_period": self.aggregate.emit_period()?,
                "key_partitions": self.aggregate.key_partitions(),
            }),
            parts,
        })
    }

    fn restore(&mut self, state: NodeState) -> Result<()> {
        let m = &state.meta;
        self.input_watermark = meta_field(m, "input_watermark")?.unwrap_or(i64::MIN);
        self.watermark = meta_field(m, "watermark")?.unwrap_or(i64::MIN);
        let closed = meta_field(m, "closed_through")?.unwrap_or(i64::MIN);
        let emit_period = meta_field(m, "emit_period")?;
        // Checkpoints from before key partitions hold one.
        let written: u32 = meta_field(m, "key_partitions")?.unwrap_or(1);
        self.aggregate
            .restore(state.parts, written, closed, emit_period)
    }

    fn cluster(&self) -> std::result::Result<crate::cluster::ClusterParts, String> {
        if self.late_policy != LatePolicy::Drop {
            return Err("'late.policy' = 'dead-letter' cannot run in a cluster yet".into());
        }
        if self.aggregate.emit_period().ok().flatten().is_some() {
            return Err("EMIT EVERY cannot run in a cluster yet".into());
        }
        let Some((aggregate, _)) = self.aggregate.partial_copy() else {
            return Err(
                "only a TUMBLE or HOP aggregate over a source can run in a cluster yet \
                 (SESSION windows and window rows cannot)"
                    .into(),
            );
        };
        Ok(crate::cluster::ClusterParts {
            pre: self.pre.clone(),
            aggregate,
            post: self.post.clone(),
            schema: self.schema.clone(),
        })
    }

    fn stage1(&self) -> Option<Stage1Step> {
        // Late rows for a dead-letter file must be matched to input rows: the driver
        // folds those views' rows itself.
        if self.late_policy != LatePolicy::Drop {
            return None;
        }
        let (empty, key_partitions) = self.aggregate.partial_copy()?;
        Some(Stage1Step::Aggregate {
            pre: self.pre.clone(),
            empty: Box::new(parking_lot::Mutex::new(empty)),
            key_partitions,
        })
    }

    async fn on_prepared(
        &mut self,
        prepared: Stage1Out,
        cx: &mut Context<'_>,
    ) -> Result<Vec<RecordBatch>> {
        match prepared {
            Stage1Out::Partial(p) => {
                let u = self.aggregate.merge_partial(p).await?;
                count_late(cx, &u);
                Ok(vec![])
            }
            Stage1Out::Rows(_) => Err(crate::error::WeirError::Internal(
                "prepared rows for a windowed view".into(),
            )),
        }
    }
}
