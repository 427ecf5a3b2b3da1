//! Incremental windowed aggregation with DataFusion's own accumulators: TUMBLE, HOP and
//! SESSION windows, early results (`EMIT EVERY`) and late rows.
//!
//! The pre plan gives every row the window columns the SQL rewrite added (see `sql.rs`):
//! for TUMBLE its window, for HOP its pane (`window_start` is the start of the
//! `slide`-wide slice holding the row), for SESSION its event time. The aggregator reads
//! the row's time from whichever of `window_start` / `window_end` the query groups by, and
//! keys the rest of the GROUP BY columns:
//!
//! - TUMBLE and HOP ([`panes`]): state per pane, each row folded into its pane once; a
//!   window's result merges its `size / slide` panes.
//! - SESSION ([`session`]): per key, the open sessions; rows extend and merge them.
//!
//! State is proportional to open panes or sessions times groups, never to events. When the
//! input watermark passes a window's end, its groups are evaluated into one batch in the
//! aggregate's output schema, with `window_start` and `window_end` set to the window's
//! bounds. With `EMIT EVERY`, [`WindowAggregator::early`] evaluates the open windows that
//! changed since the last call without consuming them. Rows too late for every window that
//! would take them are returned as [`LateRow`]s and left out.

mod aggregate;
mod dedup;
mod groups;
mod panes;
mod rows;
mod session;
#[cfg(test)]
pub(crate) mod tests;
mod updating;

use crate::error::{Result, WeirError};
use datafusion::arrow::array::{ArrayRef, BooleanArray, Int64Array, UInt32Array};
use datafusion::arrow::compute::{cast, filter};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
pub(crate) use groups::cast_to;
use std::collections::BTreeMap;

pub use aggregate::{Evaluated, Partial, WindowAggregator, split_indices, split_rows};
pub use dedup::Dedup;
pub use rows::{RankLimit, WindowRows};
pub use updating::{Changes, UpdatingAggregator};

const LATE_TUMBLE: &str = "late: its window had already closed";
const LATE_HOP: &str = "late: every window containing it had already closed";
const LATE_NO_TIME: &str = "late: no event time";

/// A row the window could not take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateRow {
    /// Its index in the batch given to [`WindowAggregator::update`].
    pub row: usize,
    /// The window it missed, `(start, end)` in epoch ms; `None` when it has no event time.
    /// HOP: the last window that would have contained it.
    pub window: Option<(i64, i64)>,
    pub reason: &'static str,
}

/// What one micro-batch did to the window state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UpdateStats {
    pub accepted: u64,
    pub late: u64,
    pub late_rows: Vec<LateRow>,
}

/// What a windowed view runs between its pre plan (per micro-batch) and its post plan (per
/// closed window): the window aggregate ([`WindowAggregator`]), or the rows of each window
/// for window functions over unaggregated rows ([`WindowRows`], top-N per window).
pub trait WindowOperator: Send {
    /// Early results every `every` of processing time (`EMIT EVERY`).
    fn configure(&mut self, every: Option<std::time::Duration>) -> Result<()>;
    /// The column of the view's input the window reads event time from.
    fn input_time_column(&self) -> &str;
    /// The output columns that identify a result row (empty: rows are only appended).
    fn key_names(&self) -> Vec<String>;
    fn describe(&self) -> String;
    /// Open windows.
    fn open_windows(&self) -> usize;
    /// Groups (or rows, for [`WindowRows`]) held.
    fn open_groups(&self) -> usize;
    /// Approximate bytes of state.
    fn state_bytes(&self) -> usize;
    /// Take one batch of the pre plan's output; late rows are left out and listed.
    fn update(&mut self, batch: &RecordBatch) -> Result<UpdateStats>;
    /// Close every window ending at or before `watermark_ms`, oldest first: one batch per
    /// window for the post plan.
    fn close(&mut self, watermark_ms: i64) -> Result<Vec<RecordBatch>>;
    /// Start the `EMIT EVERY` clock at processing time `now_ms` (a new view).
    fn start_clock(&mut self, _now_ms: i64) {}
    /// Whether early results are due at processing time `now_ms`.
    fn emit_due(&mut self, _now_ms: i64) -> bool {
        false
    }
    /// The `EMIT EVERY` clock, for checkpoints.
    fn emit_period(&self) -> Option<i64> {
        None
    }
    /// Early results of the open windows that changed.
    fn early(&mut self) -> Result<Vec<RecordBatch>> {
        Ok(vec![])
    }
    /// Windows ending at or before this (ms) have closed.
    fn closed_through(&self) -> i64;
    /// The open state as batches (the state stays).
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>>;
    /// Load state written by `snapshot` into an operator built from the same view.
    fn restore(
        &mut self,
        batches: &[RecordBatch],
        closed_through: i64,
        emit_period: Option<i64>,
    ) -> Result<()>;
    /// The watermark this operator can promise downstream.
    fn output_watermark(&self, input_watermark: i64) -> i64;
    /// Window rows: the ranking's PARTITION BY expressions besides the window bounds
    /// (over the held rows), by which their state is stored in key partitions; empty for
    /// everything else.
    fn partition_exprs(&self) -> Vec<std::sync::Arc<dyn datafusion::physical_expr::PhysicalExpr>> {
        vec![]
    }
    /// Whether `'state.ttl'` bounds this operator's state (deduplication's done keys).
    fn takes_state_ttl(&self) -> bool {
        false
    }
    /// The window aggregate itself, when this is one (its state can be split into key
    /// partitions, `dataflow/keyed.rs`); window rows (top-N over rows) give themselves back.
    fn into_aggregator(
        self: Box<Self>,
    ) -> std::result::Result<WindowAggregator, Box<dyn WindowOperator>>;
}

/// A checkpointed batch of an operator's state (`what`) must have the columns the view
/// now keeps its state in.
pub fn check_state_schema(what: &str, batch: &RecordBatch, expected: &SchemaRef) -> Result<()> {
    if batch.schema().fields() != expected.fields() {
        return Err(WeirError::Internal(format!(
            "checkpointed {what} does not match the view: expected {expected:?}, found {:?}",
            batch.schema()
        )));
    }
    Ok(())
}

/// Epoch ms from a timestamp column's raw values.
pub(crate) fn to_ms(v: i64, unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => v.saturating_mul(1000),
        TimeUnit::Millisecond => v,
        TimeUnit::Microsecond => v.div_euclid(1_000),
        TimeUnit::Nanosecond => v.div_euclid(1_000_000),
    }
}

/// A timestamp column's values in epoch ms, minus `shift`.
pub(crate) fn shifted_ms(col: &ArrayRef, shift: i64) -> Result<Vec<Option<i64>>> {
    let DataType::Timestamp(unit, _) = col.data_type().clone() else {
        return Err(WeirError::Internal(
            "window column is not a timestamp".into(),
        ));
    };
    let raw = cast(col, &DataType::Int64)?;
    let raw = raw
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or_else(|| WeirError::Internal("window column cast".into()))?;
    Ok(raw
        .iter()
        .map(|v| v.map(|v| to_ms(v, unit).saturating_sub(shift)))
        .collect())
}

/// A column of type `t` (a timestamp) holding epoch ms `values`.
pub(crate) fn bound_array(values: Vec<i64>, t: &DataType) -> Result<ArrayRef> {
    let DataType::Timestamp(unit, _) = t else {
        return Err(WeirError::Internal(format!("window bound of type {t}")));
    };
    let raw: Int64Array = values
        .into_iter()
        .map(|v| match unit {
            TimeUnit::Second => v.div_euclid(1000),
            TimeUnit::Millisecond => v,
            TimeUnit::Microsecond => v.saturating_mul(1_000),
            TimeUnit::Nanosecond => v.saturating_mul(1_000_000),
        })
        .map(Some)
        .collect();
    Ok(cast(&raw, t)?)
}

/// Indices for `take` that spread the rows of a shorter array over a longer one: for each
/// position, the index of the next present row, or null where `present` is false.
pub(crate) fn positions_of(present: impl IntoIterator<Item = bool>) -> UInt32Array {
    let mut next = 0u32;
    present
        .into_iter()
        .map(|p| {
            p.then(|| {
                next += 1;
                next - 1
            })
        })
        .collect()
}

/// A batch of `schema` from `cols`, each cast to its field's type where it differs.
pub(crate) fn batch_in(schema: &SchemaRef, cols: Vec<ArrayRef>) -> Result<RecordBatch> {
    let cols = cols
        .into_iter()
        .zip(schema.fields())
        .map(|(c, f)| cast_to(c, f.data_type()))
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

/// Rows by pane (`times`: each row's pane start), and the late ones: a row is late when the
/// last window holding it, `[pane, pane + size)`, ended at or before `closed`.
pub(crate) fn split_by_pane(
    times: &[Option<i64>],
    size: i64,
    closed: i64,
    reason: &'static str,
) -> (BTreeMap<i64, Vec<u32>>, Vec<LateRow>) {
    let mut by_pane: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
    let mut late = Vec::new();
    for (i, t) in times.iter().enumerate() {
        match t {
            Some(p) if p.saturating_add(size) > closed => {
                by_pane.entry(*p).or_default().push(i as u32)
            }
            Some(p) => late.push(LateRow {
                row: i,
                window: Some((*p, p.saturating_add(size))),
                reason,
            }),
            None => late.push(LateRow {
                row: i,
                window: None,
                reason: LATE_NO_TIME,
            }),
        }
    }
    (by_pane, late)
}

/// Keep only rows where `mask` is true in every array (helper for callers).
pub fn filter_arrays(arrays: &[ArrayRef], mask: &BooleanArray) -> Result<Vec<ArrayRef>> {
    Ok(arrays
        .iter()
        .map(|a| filter(a.as_ref(), mask))
        .collect::<Result<Vec<_>, _>>()?)
}
