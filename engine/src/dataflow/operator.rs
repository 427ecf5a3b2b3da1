//! The [`Operator`] trait every dataflow node implements, and what operators hand back
//! besides rows: [`Effect`]s for the runtime to carry out (the dataflow itself does no
//! I/O) and their checkpointed state ([`NodeState`]).

use super::prepare::{Stage1Out, Stage1Step};
use crate::error::Result;
use crate::stats::Stats;
use crate::window::LateRow;
use async_trait::async_trait;
use datafusion::arrow::record_batch::RecordBatch;

/// What an operator may use while it handles one call.
pub struct Context<'a> {
    /// The node's name (its view or source).
    pub name: &'a str,
    /// Processing time, epoch ms.
    pub now_ms: i64,
    /// The node's live figures (rows in and out are counted by the dataflow).
    pub stats: &'a Stats,
    /// Side effects for the runtime.
    pub effects: &'a mut Vec<Effect>,
}

/// A side effect an operator asks for: the dataflow collects them and whoever drives it
/// (the runtime, the test runner) carries them out.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Late rows of a view with `'late.policy' = 'dead-letter'`, for its dead-letter file.
    LateRows(LateRows),
}

/// Rows a windowed view could not take, with why.
#[derive(Debug, Clone)]
pub struct LateRows {
    pub view: String,
    /// The input rows (the view's input schema); `late[i].row` indexes into them.
    pub rows: RecordBatch,
    pub late: Vec<LateRow>,
    /// Where the view's windows had closed through (epoch ms), if anywhere.
    pub watermark: Option<i64>,
}

/// An operator's state in a checkpoint: small fields as JSON, and Arrow batches (one list
/// per part, each written as one Arrow IPC file).
#[derive(Debug, Clone, Default)]
pub struct NodeState {
    pub meta: serde_json::Value,
    pub parts: Vec<Vec<RecordBatch>>,
}

/// How much state an operator holds, for DESCRIBE, the API and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateFigures {
    pub open_windows: u64,
    /// Groups (windowed views), rows held (top-N, joins).
    pub open_groups: u64,
    pub bytes: u64,
    /// Key partitions the state is split into (0: the operator has no keyed state).
    pub key_partitions: u64,
    /// Groups in the largest key partition: against `open_groups / key_partitions`, how
    /// skewed the keys are.
    pub busiest_partition_groups: u64,
    /// The share (percent) of stage 2's work (rows cut to a partition, partial states
    /// merged into it) the busiest key partition has done: a hot key shows here.
    pub busiest_partition_share: u64,
}

/// One node of the dataflow: a source's watermark keeper or a view's operator.
///
/// The dataflow calls, for every micro-batch of an input, [`Operator::on_batch`]; after
/// each step (a batch, a tick of processing time, a partition's end) it calls
/// [`Operator::on_watermark`] with its inputs' watermarks, then [`Operator::on_tick`] with
/// processing time. What they return is the node's output, in order. A node's inputs are
/// always earlier nodes, so one pass in node order delivers every row before the
/// watermark that follows it.
#[async_trait]
pub trait Operator: Send {
    /// One micro-batch on input `port` (0; a join's right side is 1).
    async fn on_batch(
        &mut self,
        port: usize,
        batch: RecordBatch,
        cx: &mut Context<'_>,
    ) -> Result<Vec<RecordBatch>>;

    /// The inputs' watermarks (one per port) as they are now: close what they allow.
    async fn on_watermark(
        &mut self,
        inputs: &[i64],
        cx: &mut Context<'_>,
    ) -> Result<Vec<RecordBatch>>;

    /// Processing time is `cx.now_ms`: emit what is due on processing time (`EMIT
    /// EVERY`).
    async fn on_tick(&mut self, cx: &mut Context<'_>) -> Result<Vec<RecordBatch>> {
        let _ = cx;
        Ok(vec![])
    }

    /// The watermark this node promises downstream (`i64::MIN` before the first).
    fn watermark(&self) -> i64;

    fn figures(&self) -> StateFigures {
        StateFigures::default()
    }

    /// How the operator's state is split (for DESCRIBE); `None`: it is not keyed.
    fn partitioning(&self) -> Option<String> {
        None
    }

    /// The state a checkpoint keeps (the operator keeps it too).
    async fn snapshot(&mut self) -> Result<NodeState>;

    /// Put back state from [`Operator::snapshot`] of a node built from the same definition.
    fn restore(&mut self, state: NodeState) -> Result<()>;

    /// What a Weir cluster runs of this view (`cluster.rs`), or why it cannot yet.
    fn cluster(&self) -> std::result::Result<crate::cluster::ClusterParts, String> {
        Err("only a TUMBLE or HOP aggregate over a source can run in a cluster yet".into())
    }

    /// What stage 1 may do for this node ahead of the driver (`prepare.rs`), if anything.
    fn stage1(&self) -> Option<Stage1Step> {
        None
    }

    /// Instead of [`Operator::on_batch`]: what stage 1 made of the batches this node would
    /// have been given for one piece of a source batch.
    async fn on_prepared(
        &mut self,
        prepared: Stage1Out,
        cx: &mut Context<'_>,
    ) -> Result<Vec<RecordBatch>> {
        let _ = (prepared, cx);
        Err(crate::error::WeirError::Internal(
            "a prepared batch for an operator without stage 1".into(),
        ))
    }
}

/// A watermark that follows the least of its inputs' and never goes back (views that hold
/// nothing back by time: stateless views, unions, joins, DISTINCT).
pub fn follow_inputs(watermark: &mut i64, inputs: &[i64]) {
    let input = inputs.iter().copied().min().unwrap_or(i64::MIN);
    *watermark = (*watermark).max(input);
}

/// Count `late` rows the node dropped in its figures (`late_rows`).
pub fn count_late_rows(cx: &Context<'_>, late: u64) {
    Stats::add(&cx.stats.late_rows, late);
    if late > 0 {
        tracing::debug!(view = %cx.name, late, "late rows");
    }
}

/// A field of a node's checkpointed JSON (`None` when absent or null).
pub fn meta_field<T: serde::de::DeserializeOwned>(
    meta: &serde_json::Value,
    key: &str,
) -> Result<Option<T>> {
    match meta.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|e| {
            crate::error::WeirError::Internal(format!("checkpointed field '{key}': {e}"))
        }),
    }
}
