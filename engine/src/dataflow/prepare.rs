//! Stage 1: the work on a micro-batch that needs no state, done before the batch reaches
//! the driver and on whichever worker is free, so several batches are prepared at once.
//!
//! For each source the dataflow builds a [`Stage1Program`]: the views that read the source
//! directly or through stateless views, when each of them can be prepared. A stateless
//! view's whole plan runs in stage 1; a TUMBLE or HOP aggregate (with the default
//! `'late.policy' = 'drop'`) runs its pre plan and folds the rows into partial states per
//! pane and group ([`Partial`]), which the driver merges (stage 2) as it would have
//! folded the rows. Everything else (SESSION windows, top-N over rows, joins, views over
//! views with state, views that dead-letter late rows) runs on the driver as before.
//!
//! The driver still takes the batches of a source in order and decides what is late: a
//! batch is cut where its own rows could make a later row late (`watermark::cut_points`,
//! which needs nothing but the batch, so stage 1 cuts exactly where the driver does with
//! one worker), and the driver advances the watermark at each cut before it merges the
//! next piece. Whatever the number of workers, every row is judged by the same watermark
//! and windows close at the same points, so the results are the same rows in the same
//! order.
//!
//! A program is tied to the dataflow's generation: a batch prepared before a view was
//! created or dropped is not used (the driver runs it the ordinary way).

use super::NodeId;
use super::min_times;
use super::source::ts_millis;
use crate::error::Result;
use crate::planner::slot::SlotPlan;
use crate::watermark::cut_points;
use crate::window::{Partial, WindowAggregator};
use datafusion::arrow::array::{Array, TimestampMillisecondArray};
use datafusion::arrow::record_batch::RecordBatch;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What stage 1 does for one view.
pub enum Stage1Step {
    /// Run the view's whole plan.
    Stateless(Arc<SlotPlan>),
    /// Run the pre plan and fold its rows into partial states.
    Aggregate {
        pre: Arc<SlotPlan>,
        /// An empty aggregator of the view, copied for each piece (the lock is held only
        /// to copy it: accumulators are not `Sync`).
        empty: Box<Mutex<WindowAggregator>>,
        /// The view's key partitions: the partial states are cut into these.
        key_partitions: u32,
    },
}

/// What stage 1 produced for one view from one piece of a batch.
#[derive(Debug)]
pub enum Stage1Out {
    Rows(Vec<RecordBatch>),
    Partial(Partial),
}

/// The stage-1 work for one source's batches.
pub struct Stage1Program {
    pub(super) generation: u64,
    /// The event-time column and the WATERMARK delay (ms).
    pub(super) event: Option<(usize, i64)>,
    /// The columns that decide lateness (see `Dataflow::probe_columns`).
    pub(super) probes: Vec<usize>,
    /// In delivery order: the view's node, the node it reads, what to do.
    pub(super) steps: Vec<(NodeId, NodeId, Stage1Step)>,
    pub(super) source: NodeId,
}

/// A batch after stage 1.
#[derive(Debug)]
pub struct Prepared {
    pub(super) generation: u64,
    /// The event times (epoch ms), when the source has an event-time column.
    pub(super) times: Option<TimestampMillisecondArray>,
    /// Where the batch is cut (row indexes, increasing, never 0).
    pub(super) cuts: Vec<usize>,
    /// Per piece, per view: the prepared output.
    pub(super) pieces: Vec<BTreeMap<NodeId, Stage1Out>>,
}

/// Where `batch` is cut ([`cut_points`] over its event times `times`; `event` is the
/// event-time column, `probes` the columns lateness is judged by): the same cuts on the
/// driver and in stage 1.
pub(super) fn batch_cuts(
    batch: &RecordBatch,
    times: &TimestampMillisecondArray,
    event: usize,
    delay_ms: i64,
    probes: &[usize],
) -> Result<Vec<usize>> {
    if probes.is_empty() || batch.num_rows() < 2 {
        return Ok(vec![]);
    }
    let probe = if probes == [event] {
        None
    } else {
        Some(min_times(batch, probes)?)
    };
    // A null event time holds nothing back (such rows are bad records at the source).
    let values: Vec<i64>;
    let event_values = if times.null_count() == 0 {
        times.values().as_ref()
    } else {
        values = times.iter().map(|v| v.unwrap_or(i64::MIN)).collect();
        &values
    };
    Ok(cut_points(event_values, probe.as_deref(), delay_ms))
}

impl Stage1Program {
    /// The views this program prepares.
    pub fn views(&self) -> usize {
        self.steps.len()
    }

    /// Stage 1 for one batch. Pure: it may run on any worker, several batches at once.
    pub async fn prepare(&self, batch: &RecordBatch) -> Result<Prepared> {
        let times = match self.event {
            Some((i, _)) => Some(ts_millis(batch.column(i))?),
            None => None,
        };
        let cuts = match (&times, self.event) {
            (Some(t), Some((event, delay))) => batch_cuts(batch, t, event, delay, &self.probes)?,
            _ => vec![],
        };
        let mut pieces = Vec::with_capacity(cuts.len() + 1);
        let mut start = 0;
        for end in cuts.iter().copied().chain([batch.num_rows()]) {
            pieces.push(self.prepare_piece(batch.slice(start, end - start)).await?);
            start = end;
        }
        Ok(Prepared {
            generation: self.generation,
            times,
            cuts,
            pieces,
        })
    }

    async fn prepare_piece(&self, piece: RecordBatch) -> Result<BTreeMap<NodeId, Stage1Out>> {
        let mut out: BTreeMap<NodeId, Stage1Out> = BTreeMap::new();
        if piece.num_rows() == 0 {
            return Ok(out);
        }
        for (node, input, step) in &self.steps {
            // The batches the view would be given (its input's output is never empty
            // batches: `SlotPlan::run` drops them).
            let input_rows: Vec<RecordBatch> = if *input == self.source {
                vec![piece.clone()]
            } else {
                match out.get(input) {
                    Some(Stage1Out::Rows(r)) => r.clone(),
                    _ => vec![],
                }
            };
            if input_rows.is_empty() {
                // Nothing reaches the view in this piece: the driver does not call it.
                continue;
            }
            let plan = match step {
                Stage1Step::Stateless(plan) => plan,
                Stage1Step::Aggregate { pre, .. } => pre,
            };
            let mut rows = Vec::new();
            for r in input_rows {
                rows.extend(plan.run(r).await?);
            }
            let result = match step {
                Stage1Step::Stateless(_) => Stage1Out::Rows(rows),
                Stage1Step::Aggregate {
                    empty,
                    key_partitions,
                    ..
                } => {
                    let copy = empty.lock().partial_copy();
                    match copy {
                        Some(agg) => Stage1Out::Partial(agg.partial(&rows, *key_partitions)?),
                        None => continue,
                    }
                }
            };
            out.insert(*node, result);
        }
        Ok(out)
    }
}
