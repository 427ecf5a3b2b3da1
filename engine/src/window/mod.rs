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

mod groups;
mod panes;
mod rows;
mod session;

use crate::dead_letter::DeadLetterWriter;
use crate::error::{Result, WeirError};
use crate::sql::{WindowKind, WindowSpec};
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, UInt32Array};
use datafusion::arrow::compute::{cast, filter, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_plan::aggregates::AggregateExec;
use groups::{Layout, State, cast_to};
use panes::Panes;
use session::Sessions;
use std::collections::BTreeMap;
use std::sync::Arc;

pub use rows::{RankLimit, WindowRows};

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

/// What a GROUP BY column is to the window.
#[derive(Debug, Clone, Copy)]
enum GroupColumn {
    Start,
    End,
    /// The i-th key column.
    Key(usize),
}

enum Store {
    Panes(Panes),
    Sessions(Box<Sessions>),
}

pub struct WindowAggregator {
    kind: WindowKind,
    /// The column of the view's input the window reads event time from.
    input_time_column: String,
    group_exprs: Vec<Arc<dyn PhysicalExpr>>,
    group_names: Vec<String>,
    /// Each GROUP BY column and its type.
    columns: Vec<(GroupColumn, DataType)>,
    /// The group column the row's time is read from, and what to subtract from it (ms).
    time_column: usize,
    time_shift: i64,
    key_exprs: Vec<Arc<dyn PhysicalExpr>>,
    layout: Layout,
    arguments: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    output_schema: SchemaRef,
    store: Store,
    /// Windows ending at or before this (ms) have closed.
    closed_through: i64,
    /// `EMIT EVERY` interval (ms) and the processing-time period of the last early emission.
    emit_every: Option<i64>,
    emit_period: Option<i64>,
    /// `'late.policy' = 'dead-letter'`: where late rows go.
    dead_letter: Option<DeadLetterWriter>,
}

/// What a windowed view runs between its pre plan (per micro-batch) and its post plan (per
/// closed window): the window aggregate ([`WindowAggregator`]), or the rows of each window
/// for window functions over unaggregated rows ([`WindowRows`], top-N per window).
pub trait WindowOperator: Send {
    /// Early results every `every` of processing time (`EMIT EVERY`), and where late rows
    /// go (`None`: dropped).
    fn configure(
        &mut self,
        every: Option<std::time::Duration>,
        dead_letter: Option<DeadLetterWriter>,
    ) -> Result<()>;
    /// The writer late rows go to, with `'late.policy' = 'dead-letter'`.
    fn dead_letter(&mut self) -> Option<&mut DeadLetterWriter>;
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
}

impl WindowOperator for WindowAggregator {
    fn configure(
        &mut self,
        every: Option<std::time::Duration>,
        dead_letter: Option<DeadLetterWriter>,
    ) -> Result<()> {
        WindowAggregator::configure(self, every, dead_letter);
        Ok(())
    }
    fn dead_letter(&mut self) -> Option<&mut DeadLetterWriter> {
        WindowAggregator::dead_letter(self)
    }
    fn input_time_column(&self) -> &str {
        WindowAggregator::input_time_column(self)
    }
    fn key_names(&self) -> Vec<String> {
        self.group_names()
    }
    fn describe(&self) -> String {
        WindowAggregator::describe(self)
    }
    fn open_windows(&self) -> usize {
        WindowAggregator::open_windows(self)
    }
    fn open_groups(&self) -> usize {
        WindowAggregator::open_groups(self)
    }
    fn state_bytes(&self) -> usize {
        WindowAggregator::state_bytes(self)
    }
    fn update(&mut self, batch: &RecordBatch) -> Result<UpdateStats> {
        WindowAggregator::update(self, batch)
    }
    fn close(&mut self, watermark_ms: i64) -> Result<Vec<RecordBatch>> {
        WindowAggregator::close(self, watermark_ms)
    }
    fn start_clock(&mut self, now_ms: i64) {
        WindowAggregator::start_clock(self, now_ms)
    }
    fn emit_due(&mut self, now_ms: i64) -> bool {
        WindowAggregator::emit_due(self, now_ms)
    }
    fn emit_period(&self) -> Option<i64> {
        WindowAggregator::emit_period(self)
    }
    fn early(&mut self) -> Result<Vec<RecordBatch>> {
        WindowAggregator::early(self)
    }
    fn closed_through(&self) -> i64 {
        WindowAggregator::closed_through(self)
    }
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        WindowAggregator::snapshot(self)
    }
    fn restore(
        &mut self,
        batches: &[RecordBatch],
        closed_through: i64,
        emit_period: Option<i64>,
    ) -> Result<()> {
        WindowAggregator::restore(self, batches, closed_through, emit_period)
    }
    fn output_watermark(&self, input_watermark: i64) -> i64 {
        WindowAggregator::output_watermark(self, input_watermark)
    }
}

/// Epoch ms from a timestamp column's raw values.
fn to_ms(v: i64, unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => v.saturating_mul(1000),
        TimeUnit::Millisecond => v,
        TimeUnit::Microsecond => v.div_euclid(1_000),
        TimeUnit::Nanosecond => v.div_euclid(1_000_000),
    }
}

/// A timestamp column's values in epoch ms, minus `shift`.
fn shifted_ms(col: &ArrayRef, shift: i64) -> Result<Vec<Option<i64>>> {
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
fn bound_array(values: Vec<i64>, t: &DataType) -> Result<ArrayRef> {
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

/// Evaluated inputs of a batch: key columns, aggregate arguments and FILTERs.
struct Inputs {
    keys: Vec<ArrayRef>,
    args: Vec<Vec<ArrayRef>>,
    filters: Vec<Option<BooleanArray>>,
}

impl Inputs {
    fn take(&self, idx: &UInt32Array) -> Result<Inputs> {
        let t = |a: &ArrayRef| take(a.as_ref(), idx, None);
        Ok(Inputs {
            keys: self.keys.iter().map(t).collect::<Result<_, _>>()?,
            args: self
                .args
                .iter()
                .map(|v| v.iter().map(t).collect::<Result<Vec<_>, _>>())
                .collect::<Result<_, _>>()?,
            filters: self
                .filters
                .iter()
                .map(|f| match f {
                    None => Ok(None),
                    Some(b) => Ok(take(b, idx, None)?
                        .as_any()
                        .downcast_ref::<BooleanArray>()
                        .cloned()),
                })
                .collect::<Result<_, datafusion::arrow::error::ArrowError>>()?,
        })
    }
}

impl WindowAggregator {
    /// Build from the aggregate that sees raw rows (`Single` or `Partial` mode);
    /// `output_schema` is the schema of the topmost aggregate, which the post plan reads.
    pub fn try_new(
        raw: &AggregateExec,
        output_schema: SchemaRef,
        window: &WindowSpec,
    ) -> Result<Self> {
        let group_by = raw.group_expr();
        if group_by.has_grouping_set() {
            return Err(WeirError::user(
                "GROUPING SETS, CUBE and ROLLUP are not supported in streaming views",
            ));
        }
        let input_schema = raw.input().schema();
        let mut group_exprs = Vec::new();
        let mut group_names = Vec::new();
        let mut columns = Vec::new();
        let mut key_exprs = Vec::new();
        let mut key_fields = Vec::new();
        for (expr, name) in group_by.expr() {
            let t = expr.data_type(&input_schema)?;
            let column = match name.as_str() {
                "window_start" => GroupColumn::Start,
                "window_end" => GroupColumn::End,
                _ => {
                    key_fields.push(Field::new(name, t.clone(), expr.nullable(&input_schema)?));
                    key_exprs.push(expr.clone());
                    GroupColumn::Key(key_exprs.len() - 1)
                }
            };
            columns.push((column, t));
            group_exprs.push(expr.clone());
            group_names.push(name.clone());
        }
        let position = |c: fn(&GroupColumn) -> bool| columns.iter().position(|(g, _)| c(g));
        let (time_column, from_end) = match (
            position(|g| matches!(g, GroupColumn::Start)),
            position(|g| matches!(g, GroupColumn::End)),
        ) {
            (Some(i), _) => (i, false),
            (None, Some(i)) => (i, true),
            (None, None) => {
                return Err(WeirError::user(
                    "a windowed view must GROUP BY window_start (and window_end)",
                ));
            }
        };
        for (g, t) in &columns {
            if matches!(g, GroupColumn::Start | GroupColumn::End)
                && !matches!(t, DataType::Timestamp(_, _))
            {
                return Err(WeirError::user(format!(
                    "the window column must be a timestamp, it is {t}"
                )));
            }
        }
        let time_shift = if from_end {
            match window.kind {
                WindowKind::Tumble { size_ms } | WindowKind::Hop { size_ms, .. } => size_ms,
                WindowKind::Session { gap_ms } => gap_ms,
            }
        } else {
            0
        };
        let aggregates: Vec<Arc<AggregateFunctionExpr>> = raw.aggr_expr().to_vec();
        let arguments: Vec<Vec<Arc<dyn PhysicalExpr>>> = aggregates
            .iter()
            .map(|a| {
                let mut args = a.expressions();
                args.extend(a.order_bys().iter().map(|s| s.expr.clone()));
                args
            })
            .collect();
        let filters = raw.filter_expr().to_vec();
        if !matches!(window.kind, WindowKind::Tumble { .. }) {
            // The pre plan's window columns hold a pane or an event time, not the window.
            let uses_bounds = arguments
                .iter()
                .flatten()
                .chain(filters.iter().flatten())
                .flat_map(collect_columns)
                .any(|c| {
                    let name = input_schema.field(c.index()).name();
                    name == "window_start" || name == "window_end"
                });
            if uses_bounds {
                return Err(WeirError::user(format!(
                    "window_start and window_end of a {} window can be grouped by, selected and \
                     used in HAVING, not used inside an aggregate",
                    window.kind.name()
                )));
            }
        }
        let layout = Layout::new(Arc::new(Schema::new(key_fields)), aggregates)?;
        let store = match window.kind {
            WindowKind::Tumble { size_ms } => Store::Panes(Panes::new(size_ms, size_ms)),
            WindowKind::Hop { slide_ms, size_ms } => Store::Panes(Panes::new(slide_ms, size_ms)),
            WindowKind::Session { gap_ms } => {
                Store::Sessions(Box::new(Sessions::new(&layout, gap_ms)?))
            }
        };
        Ok(WindowAggregator {
            kind: window.kind,
            input_time_column: window.time_column.clone(),
            group_exprs,
            group_names,
            columns,
            time_column,
            time_shift,
            key_exprs,
            layout,
            arguments,
            filters,
            output_schema,
            store,
            closed_through: i64::MIN,
            emit_every: None,
            emit_period: None,
            dead_letter: None,
        })
    }

    /// Early results every `every` of processing time (`EMIT EVERY`), and where late rows
    /// go (`None`: dropped).
    pub fn configure(
        &mut self,
        every: Option<std::time::Duration>,
        dead_letter: Option<DeadLetterWriter>,
    ) {
        self.emit_every = every.map(|d| (d.as_millis() as i64).max(1));
        self.dead_letter = dead_letter;
    }

    /// The writer late rows go to, with `'late.policy' = 'dead-letter'`.
    pub fn dead_letter(&mut self) -> Option<&mut DeadLetterWriter> {
        self.dead_letter.as_mut()
    }

    /// The column of the view's input the window reads event time from.
    pub fn input_time_column(&self) -> &str {
        &self.input_time_column
    }

    pub fn group_names(&self) -> Vec<String> {
        self.group_names.clone()
    }

    pub fn describe(&self) -> String {
        let aggs: Vec<String> = self
            .layout
            .aggregates
            .iter()
            .map(|a| a.name().to_string())
            .collect();
        let window = match self.kind {
            WindowKind::Tumble { size_ms } => format!("tumble {size_ms} ms"),
            WindowKind::Hop { slide_ms, size_ms } => {
                format!("hop {size_ms} ms every {slide_ms} ms (panes of {slide_ms} ms)")
            }
            WindowKind::Session { gap_ms } => format!("session gap {gap_ms} ms"),
        };
        let mut s = format!(
            "WindowAggregate: {window}, group by [{}], aggregates [{}]",
            self.group_names.join(", "),
            aggs.join(", ")
        );
        if let Some(ms) = self.emit_every {
            s.push_str(&format!(", early results every {ms} ms"));
        }
        if self.dead_letter.is_some() {
            s.push_str(", late rows to the dead-letter file");
        }
        s
    }

    /// Open windows (HOP: windows with at least one row; SESSION: open sessions).
    pub fn open_windows(&self) -> usize {
        match &self.store {
            Store::Panes(p) => p.open_windows(self.closed_through),
            Store::Sessions(s) => s.open_sessions(),
        }
    }

    /// Groups held (per pane for TUMBLE and HOP, per session for SESSION).
    pub fn open_groups(&self) -> usize {
        match &self.store {
            Store::Panes(p) => p.groups(),
            Store::Sessions(s) => s.open_sessions(),
        }
    }

    /// Approximate bytes of state.
    pub fn state_bytes(&self) -> usize {
        match &self.store {
            Store::Panes(p) => p.size(),
            Store::Sessions(s) => s.size(),
        }
    }

    /// Each row's time in ms (TUMBLE: window start, HOP: pane start, SESSION: event time).
    fn times(&self, batch: &RecordBatch, n: usize) -> Result<Vec<Option<i64>>> {
        let col = self.group_exprs[self.time_column]
            .evaluate(batch)?
            .into_array(n)?;
        shifted_ms(&col, self.time_shift)
    }

    fn inputs(&self, batch: &RecordBatch, n: usize) -> Result<Inputs> {
        let keys = self
            .key_exprs
            .iter()
            .map(|e| e.evaluate(batch).and_then(|v| v.into_array(n)))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let args = self
            .arguments
            .iter()
            .map(|exprs| {
                exprs
                    .iter()
                    .map(|e| e.evaluate(batch).and_then(|v| v.into_array(n)))
                    .collect::<datafusion::error::Result<Vec<_>>>()
            })
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let filters = self
            .filters
            .iter()
            .map(|f| match f {
                None => Ok(None),
                Some(e) => {
                    let a = e.evaluate(batch)?.into_array(n)?;
                    let b = a
                        .as_any()
                        .downcast_ref::<BooleanArray>()
                        .cloned()
                        .ok_or_else(|| WeirError::Internal("FILTER is not boolean".into()))?;
                    Ok(Some(b))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Inputs {
            keys,
            args,
            filters,
        })
    }

    /// Fold one batch (the output of the pre plan) into the open windows. Late rows are
    /// left out and listed.
    pub fn update(&mut self, batch: &RecordBatch) -> Result<UpdateStats> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(UpdateStats::default());
        }
        let times = self.times(batch, n)?;
        let inputs = self.inputs(batch, n)?;
        let closed = self.closed_through;
        let mut late = Vec::new();
        let accepted = match &mut self.store {
            Store::Panes(panes) => {
                let size = panes.size;
                let reason = match self.kind {
                    WindowKind::Tumble { .. } => LATE_TUMBLE,
                    _ => LATE_HOP,
                };
                let on_time =
                    |t: &Option<i64>| matches!(t, Some(p) if p.saturating_add(size) > closed);
                let first = times[0];
                if on_time(&first) && times.iter().all(|t| *t == first) {
                    // The common case: the whole batch in one pane.
                    let p = first.unwrap_or_default();
                    panes.update(
                        &self.layout,
                        p,
                        &inputs.keys,
                        &inputs.args,
                        &inputs.filters,
                        n,
                    )?;
                    n
                } else {
                    let (by_pane, mut missed) = split_by_pane(&times, size, closed, reason);
                    late.append(&mut missed);
                    let mut accepted = 0;
                    for (p, rows) in by_pane {
                        let m = rows.len();
                        accepted += m;
                        let part = inputs.take(&UInt32Array::from(rows))?;
                        panes.update(&self.layout, p, &part.keys, &part.args, &part.filters, m)?;
                    }
                    accepted
                }
            }
            Store::Sessions(sessions) => sessions.update(
                &times,
                &inputs.keys,
                &inputs.args,
                &inputs.filters,
                closed,
                &mut late,
            )?,
        };
        Ok(UpdateStats {
            accepted: accepted as u64,
            late: late.len() as u64,
            late_rows: late,
        })
    }

    /// A batch in the output schema: window bounds per row, keys and values.
    fn window_batch(
        &self,
        starts: Vec<i64>,
        ends: Vec<i64>,
        keys: Vec<ArrayRef>,
        values: Vec<ArrayRef>,
    ) -> Result<RecordBatch> {
        let mut cols = Vec::with_capacity(self.columns.len() + values.len());
        for (g, t) in &self.columns {
            cols.push(match g {
                GroupColumn::Start => bound_array(starts.clone(), t)?,
                GroupColumn::End => bound_array(ends.clone(), t)?,
                GroupColumn::Key(i) => keys[*i].clone(),
            });
        }
        cols.extend(values);
        batch_in(&self.output_schema, cols)
    }

    fn pane_batches(&self, windows: Vec<panes::PaneWindow>) -> Result<Vec<RecordBatch>> {
        let size = match self.kind {
            WindowKind::Tumble { size_ms } | WindowKind::Hop { size_ms, .. } => size_ms,
            WindowKind::Session { .. } => 0,
        };
        windows
            .into_iter()
            .map(|(s, keys, values, rows)| {
                self.window_batch(
                    vec![s; rows],
                    vec![s.saturating_add(size); rows],
                    keys,
                    values,
                )
            })
            .collect()
    }

    /// Close every window whose end is at or before `watermark_ms`, oldest first; each
    /// closed window (SESSION: the sessions closing together) yields one batch in the
    /// output schema.
    pub fn close(&mut self, watermark_ms: i64) -> Result<Vec<RecordBatch>> {
        let before = self.closed_through;
        if watermark_ms <= before {
            return Ok(vec![]);
        }
        self.closed_through = watermark_ms;
        match &mut self.store {
            Store::Panes(p) => {
                let windows = p.close(&self.layout, before, watermark_ms)?;
                self.pane_batches(windows)
            }
            Store::Sessions(s) => match s.close(&self.layout, watermark_ms)? {
                Some((starts, ends, keys, values)) => {
                    Ok(vec![self.window_batch(starts, ends, keys, values)?])
                }
                None => Ok(vec![]),
            },
        }
    }

    /// Start the `EMIT EVERY` clock at processing time `now_ms` (a new view).
    pub fn start_clock(&mut self, now_ms: i64) {
        if let Some(every) = self.emit_every
            && self.emit_period.is_none()
        {
            self.emit_period = Some(now_ms.div_euclid(every));
        }
    }

    /// Whether early results are due at processing time `now_ms`: a new interval (aligned
    /// to the epoch) has begun since the last time. Moves the clock on.
    pub fn emit_due(&mut self, now_ms: i64) -> bool {
        let Some(every) = self.emit_every else {
            return false;
        };
        let period = now_ms.div_euclid(every);
        match self.emit_period {
            Some(p) if period <= p => false,
            Some(_) => {
                self.emit_period = Some(period);
                true
            }
            None => {
                self.emit_period = Some(period);
                false
            }
        }
    }

    /// The `EMIT EVERY` clock, for checkpoints.
    pub fn emit_period(&self) -> Option<i64> {
        self.emit_period
    }

    /// Early results: every open window (SESSION: open session) whose state changed since
    /// the last call, evaluated without consuming it; one batch per window (SESSION: one
    /// for all).
    pub fn early(&mut self) -> Result<Vec<RecordBatch>> {
        match &mut self.store {
            Store::Panes(p) => {
                let windows = p.early(&self.layout, self.closed_through)?;
                self.pane_batches(windows)
            }
            Store::Sessions(s) => match s.early(&self.layout)? {
                Some((starts, ends, keys, values)) => {
                    Ok(vec![self.window_batch(starts, ends, keys, values)?])
                }
                None => Ok(vec![]),
            },
        }
    }

    /// The schema of [`WindowAggregator::snapshot`]. TUMBLE and HOP: the pane start (ms),
    /// whether it changed since the last early emission, the key columns, then each
    /// aggregate's intermediate state columns. SESSION: the session's start and last event
    /// time (ms), changed, closed (a key's newest closed session, without state), keys,
    /// states.
    pub fn state_schema(&self) -> Result<SchemaRef> {
        let mut fields = match self.store {
            Store::Panes(_) => vec![
                Field::new("__pane", DataType::Int64, false),
                Field::new("__dirty", DataType::Boolean, false),
            ],
            Store::Sessions(_) => vec![
                Field::new("__start", DataType::Int64, false),
                Field::new("__last", DataType::Int64, false),
                Field::new("__dirty", DataType::Boolean, false),
                Field::new("__closed", DataType::Boolean, false),
            ],
        };
        fields.extend(
            self.layout
                .key_schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true)),
        );
        fields.extend(self.layout.state_fields()?);
        Ok(Arc::new(Schema::new(fields)))
    }

    /// Windows ending at or before this (ms) have closed.
    pub fn closed_through(&self) -> i64 {
        self.closed_through
    }

    /// The open state as batches in [`WindowAggregator::state_schema`] (the state stays).
    pub fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let schema = self.state_schema()?;
        let mut out = Vec::new();
        match &mut self.store {
            Store::Panes(p) => {
                for (pane, dirty, state) in p.snapshot(&self.layout)? {
                    let mut cols: Vec<ArrayRef> = vec![
                        Arc::new(Int64Array::from(vec![pane; state.rows])),
                        Arc::new(BooleanArray::from(vec![dirty; state.rows])),
                    ];
                    cols.extend(state.keys);
                    cols.extend(state.states);
                    out.push(batch_in(&schema, cols)?);
                }
            }
            Store::Sessions(s) => {
                for saved in s.snapshot(&self.layout)? {
                    let n = saved.starts.len();
                    let mut cols: Vec<ArrayRef> = vec![
                        Arc::new(Int64Array::from(saved.starts)),
                        Arc::new(Int64Array::from(saved.lasts)),
                        Arc::new(BooleanArray::from(saved.dirty)),
                        Arc::new(BooleanArray::from(vec![saved.closed; n])),
                    ];
                    cols.extend(saved.keys);
                    let states = saved.states;
                    if states.is_empty() {
                        let first = cols.len();
                        cols.extend(
                            schema.fields()[first..].iter().map(|f| {
                                datafusion::arrow::array::new_null_array(f.data_type(), n)
                            }),
                        );
                    } else {
                        cols.extend(states);
                    }
                    out.push(batch_in(&schema, cols)?);
                }
            }
        }
        Ok(out)
    }

    /// Load state written by [`WindowAggregator::snapshot`] (into an aggregator built from
    /// the same view definition), the close point and the `EMIT EVERY` clock.
    pub fn restore(
        &mut self,
        batches: &[RecordBatch],
        closed_through: i64,
        emit_period: Option<i64>,
    ) -> Result<()> {
        self.closed_through = closed_through;
        if emit_period.is_some() {
            self.emit_period = emit_period;
        }
        self.store = match self.kind {
            WindowKind::Tumble { size_ms } => Store::Panes(Panes::new(size_ms, size_ms)),
            WindowKind::Hop { slide_ms, size_ms } => Store::Panes(Panes::new(slide_ms, size_ms)),
            WindowKind::Session { gap_ms } => {
                Store::Sessions(Box::new(Sessions::new(&self.layout, gap_ms)?))
            }
        };
        let schema = self.state_schema()?;
        let nkeys = self.layout.key_schema.fields().len();
        for batch in batches {
            if batch.schema().fields() != schema.fields() {
                return Err(WeirError::Internal(format!(
                    "window state does not match the view: expected {schema:?}, found {:?}",
                    batch.schema()
                )));
            }
            let ints = |i: usize| -> Result<Vec<i64>> {
                let a = batch
                    .column(i)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .ok_or_else(|| WeirError::Internal("window state column".into()))?;
                Ok(a.values().to_vec())
            };
            let bools = |i: usize| -> Result<Vec<bool>> {
                let a = batch
                    .column(i)
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .ok_or_else(|| WeirError::Internal("window state column".into()))?;
                Ok(a.iter().map(|v| v.unwrap_or(false)).collect())
            };
            match &mut self.store {
                Store::Panes(p) => {
                    let (panes, dirty) = (ints(0)?, bools(1)?);
                    let mut by_pane: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
                    for (i, pane) in panes.iter().enumerate() {
                        by_pane.entry(*pane).or_default().push(i as u32);
                    }
                    for (pane, rows) in by_pane {
                        let changed = rows.iter().any(|&r| dirty[r as usize]);
                        let part = datafusion::arrow::compute::take_record_batch(
                            batch,
                            &UInt32Array::from(rows),
                        )?;
                        let state = State {
                            keys: self
                                .layout
                                .cast_keys(part.columns()[2..2 + nkeys].to_vec())?,
                            states: part.columns()[2 + nkeys..].to_vec(),
                            rows: part.num_rows(),
                        };
                        p.restore(&self.layout, pane, changed, &state)?;
                    }
                }
                Store::Sessions(s) => {
                    let keys = self
                        .layout
                        .cast_keys(batch.columns()[4..4 + nkeys].to_vec())?;
                    s.restore(
                        &self.layout,
                        (&ints(0)?, &ints(1)?, &bools(2)?, &bools(3)?),
                        &keys,
                        &batch.columns()[4 + nkeys..],
                    )?;
                }
            }
        }
        Ok(())
    }

    /// The watermark this operator can promise downstream: every row it emits from now on
    /// has a window start at or after it.
    pub fn output_watermark(&self, input_watermark: i64) -> i64 {
        if input_watermark == i64::MIN || input_watermark == i64::MAX {
            return input_watermark;
        }
        match &self.store {
            // The first window still open: the smallest aligned start with an end after
            // the watermark.
            Store::Panes(p) => panes::first_open_window(p.slide, p.size, input_watermark),
            // New sessions start after the watermark minus the gap; an open session can
            // grow backwards by less than a gap.
            Store::Sessions(s) => {
                let new = input_watermark.saturating_sub(s.gap);
                s.first_start()
                    .map_or(new, |f| f.saturating_sub(s.gap).min(new))
            }
        }
    }
}

/// A batch of `schema` from `cols`, each cast to its field's type where it differs.
fn batch_in(schema: &SchemaRef, cols: Vec<ArrayRef>) -> Result<RecordBatch> {
    let cols = cols
        .into_iter()
        .zip(schema.fields())
        .map(|(c, f)| cast_to(c, f.data_type()))
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

/// Rows by pane (`times`: each row's pane start), and the late ones: a row is late when the
/// last window holding it, `[pane, pane + size)`, ended at or before `closed`.
fn split_by_pane(
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use datafusion::arrow::array::{AsArray, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{Int64Type, TimestampMillisecondType};
    use datafusion::common::tree_node::TreeNode;
    use datafusion::datasource::MemTable;
    use datafusion::physical_plan::aggregates::AggregateMode;
    use datafusion::physical_plan::{ExecutionPlan, collect};
    use datafusion::prelude::{SessionConfig, SessionContext};
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    use std::collections::BTreeMap;

    /// (window start, window end, key, count, sum)
    type Row = (i64, i64, String, i64, i64);

    /// Rows `(ts ms, key, value)` in the given (arrival) order.
    fn table(rows: &[(i64, &str, i64)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampMillisecondArray::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    /// The aggregator for `FROM {window} GROUP BY window_start, window_end, k` counting and
    /// summing `v`, and the rows as its pre plan makes them (in arrival order).
    async fn plan(window: &str, rows: &[(i64, &str, i64)]) -> (WindowAggregator, RecordBatch) {
        let sql = format!(
            "SELECT window_start, window_end, k, count(*) AS n, sum(v) AS total FROM {window} \
             GROUP BY window_start, window_end, k"
        );
        let mut q = Parser::new(&GenericDialect {})
            .try_with_sql(&sql)
            .unwrap()
            .parse_query()
            .unwrap();
        let spec = crate::sql::rewrite_windows(&mut q, &|_| None)
            .unwrap()
            .unwrap();
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
        let data = table(rows);
        ctx.register_table(
            "t",
            Arc::new(MemTable::try_new(data.schema(), vec![vec![data]]).unwrap()),
        )
        .unwrap();
        let df = ctx.sql(&q.to_string()).await.unwrap();
        let physical = df.create_physical_plan().await.unwrap();
        let mut aggs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        let _ = physical.apply(|n| {
            if n.downcast_ref::<AggregateExec>().is_some() {
                aggs.push(n.clone());
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        });
        let top = aggs[0].clone();
        let raw = aggs
            .iter()
            .find(|a| {
                matches!(
                    a.downcast_ref::<AggregateExec>().unwrap().mode(),
                    AggregateMode::Single
                        | AggregateMode::SinglePartitioned
                        | AggregateMode::Partial
                )
            })
            .unwrap()
            .clone();
        let raw = raw.downcast_ref::<AggregateExec>().unwrap();
        let agg = WindowAggregator::try_new(raw, top.schema(), &spec).unwrap();
        let pre = collect(raw.input().clone(), ctx.task_ctx()).await.unwrap();
        let pre = datafusion::arrow::compute::concat_batches(&raw.input().schema(), &pre).unwrap();
        (agg, pre)
    }

    fn rows_of(batches: &[RecordBatch]) -> Vec<Row> {
        let mut out = Vec::new();
        for b in batches {
            let ws = b.column(0).as_primitive::<TimestampMillisecondType>();
            let we = b.column(1).as_primitive::<TimestampMillisecondType>();
            let k = b.column(2).as_string::<i32>();
            let n = b.column(3).as_primitive::<Int64Type>();
            let t = b.column(4).as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                out.push((
                    ws.value(i),
                    we.value(i),
                    k.value(i).to_string(),
                    n.value(i),
                    t.value(i),
                ));
            }
        }
        out.sort();
        out
    }

    /// HOP by brute force: every row in each of its windows.
    fn hop_expected(rows: &[(i64, &str, i64)], slide: i64, size: i64) -> Vec<Row> {
        let mut m: BTreeMap<(i64, String), (i64, i64)> = BTreeMap::new();
        for &(ts, k, v) in rows {
            let last = ts.div_euclid(slide) * slide;
            let mut s = last;
            while s > ts - size {
                let e = m.entry((s, k.to_string())).or_default();
                e.0 += 1;
                e.1 += v;
                s -= slide;
            }
        }
        m.into_iter()
            .map(|((s, k), (n, t))| (s, s + size, k, n, t))
            .collect()
    }

    /// SESSION by brute force: per key, sorted times split where the gap is reached.
    fn session_expected(rows: &[(i64, &str, i64)], gap: i64) -> Vec<Row> {
        let mut by_key: BTreeMap<&str, Vec<(i64, i64)>> = BTreeMap::new();
        for &(ts, k, v) in rows {
            by_key.entry(k).or_default().push((ts, v));
        }
        let mut out = Vec::new();
        for (k, mut r) in by_key {
            r.sort();
            let mut cur: Option<(i64, i64, i64, i64)> = None; // start, last, n, sum
            for (ts, v) in r {
                cur = match cur {
                    Some((s, l, n, t)) if ts - l < gap => Some((s, ts, n + 1, t + v)),
                    Some((s, l, n, t)) => {
                        out.push((s, l + gap, k.to_string(), n, t));
                        Some((ts, ts, 1, v))
                    }
                    None => Some((ts, ts, 1, v)),
                };
            }
            if let Some((s, l, n, t)) = cur {
                out.push((s, l + gap, k.to_string(), n, t));
            }
        }
        out.sort();
        out
    }

    /// Feed `pre` in chunks of `chunk` rows; after chunk `i` close at `watermarks[i]` (if
    /// any), emit early results, and snapshot and restore the state; then close everything.
    async fn run(
        mut agg: WindowAggregator,
        pre: &RecordBatch,
        chunk: usize,
        watermarks: &[i64],
    ) -> (Vec<Row>, Vec<Row>) {
        let mut closed = Vec::new();
        let mut early = Vec::new();
        let mut i = 0;
        let mut step = 0;
        while i < pre.num_rows() {
            let len = chunk.min(pre.num_rows() - i);
            let u = agg.update(&pre.slice(i, len)).unwrap();
            assert_eq!(u.late, 0, "no row is late in this input");
            i += len;
            if let Some(&w) = watermarks.get(step) {
                closed.extend(agg.close(w).unwrap());
            }
            early.extend(agg.early().unwrap());
            let state = agg.snapshot().unwrap();
            let ct = agg.closed_through();
            agg.restore(&state, ct, None).unwrap();
            step += 1;
        }
        closed.extend(agg.close(i64::MAX).unwrap());
        (rows_of(&closed), rows_of(&early))
    }

    // Out of order by up to 7 s, two keys; watermark = newest - 8 s, so nothing is late.
    const ROWS: &[(i64, &str, i64)] = &[
        (10_500, "a", 1),
        (13_000, "b", 2),
        (11_900, "a", 4),
        (17_000, "a", 8),
        (10_000, "b", 16),
        (21_000, "a", 32),
        (15_999, "b", 64),
        (14_000, "a", 128),
        (26_000, "b", 256),
        (19_000, "a", 512),
        (33_000, "a", 1024),
        (27_500, "b", 2048),
    ];

    fn watermarks(rows: &[(i64, &str, i64)], chunk: usize, delay: i64) -> Vec<i64> {
        rows.chunks(chunk)
            .scan(i64::MIN, |max, c| {
                *max = (*max).max(c.iter().map(|r| r.0).max().unwrap_or(i64::MIN));
                Some(*max - delay)
            })
            .collect()
    }

    #[tokio::test]
    async fn hop_panes_merge_into_every_window() {
        let expected = hop_expected(ROWS, 2_000, 6_000);
        for chunk in [1, 3, 12] {
            let (agg, pre) =
                plan("HOP(t, ts, INTERVAL '2' SECOND, INTERVAL '6' SECOND)", ROWS).await;
            let (closed, early) = run(agg, &pre, chunk, &watermarks(ROWS, chunk, 8_000)).await;
            assert_eq!(closed, expected, "chunk {chunk}");
            // Every early row is a window as it stood at some point: a subset of its rows.
            for e in &early {
                let fin = expected
                    .iter()
                    .find(|x| (x.0, &x.2) == (e.0, &e.2))
                    .unwrap();
                assert!(
                    e.3 <= fin.3 && e.4 & !fin.4 == 0,
                    "early {e:?} final {fin:?}"
                );
            }
        }
        // One row makes size / slide windows.
        assert_eq!(hop_expected(&[(10_500, "a", 1)], 2_000, 6_000).len(), 3);
    }

    #[tokio::test]
    async fn tumble_is_one_pane_per_window() {
        let mut m: BTreeMap<(i64, String), (i64, i64)> = BTreeMap::new();
        for &(ts, k, v) in ROWS {
            let e = m
                .entry((ts.div_euclid(5_000) * 5_000, k.into()))
                .or_default();
            e.0 += 1;
            e.1 += v;
        }
        let expected: Vec<Row> = m
            .into_iter()
            .map(|((s, k), (n, t))| (s, s + 5_000, k, n, t))
            .collect();
        for chunk in [1, 5] {
            let (agg, pre) = plan("TUMBLE(t, ts, INTERVAL '5' SECOND)", ROWS).await;
            let (closed, _) = run(agg, &pre, chunk, &watermarks(ROWS, chunk, 8_000)).await;
            assert_eq!(closed, expected, "chunk {chunk}");
        }
    }

    #[tokio::test]
    async fn sessions_extend_and_merge_out_of_order() {
        // Gap 3 s. Key a: 10.5, 11.9, 14 | 17, 19, 21 (17 - 14 = 3: a new session) | 33.
        // 14.0 arrives after 17 and 21 and bridges nothing; 19 arrives last and joins
        // 17 and 21, which were two sessions until then.
        let rows: &[(i64, &str, i64)] = &[
            (10_500, "a", 1),
            (17_000, "a", 2),
            (11_900, "a", 4),
            (21_000, "a", 8),
            (14_000, "a", 16),
            (10_000, "b", 32),
            (12_900, "b", 64),
            (19_000, "a", 128),
            (33_000, "a", 256),
            (30_000, "b", 512),
        ];
        let expected = session_expected(rows, 3_000);
        assert_eq!(
            expected,
            vec![
                (10_000, 15_900, "b".into(), 2, 96),
                (10_500, 17_000, "a".into(), 3, 21),
                (17_000, 24_000, "a".into(), 3, 138),
                (30_000, 33_000, "b".into(), 1, 512),
                (33_000, 36_000, "a".into(), 1, 256),
            ]
        );
        for chunk in [1, 2, 10] {
            let (agg, pre) = plan("SESSION(t, ts, INTERVAL '3' SECOND)", rows).await;
            // Watermarks far behind: sessions close only at the end.
            let wms = vec![5_000; rows.len()];
            let (closed, early) = run(agg, &pre, chunk, &wms).await;
            assert_eq!(closed, expected, "chunk {chunk}");
            assert!(!early.is_empty());
        }
        // Closing as the watermark moves: the first sessions close before the last rows.
        let (agg, pre) = plan("SESSION(t, ts, INTERVAL '3' SECOND)", rows).await;
        let wms: Vec<i64> = (0..rows.len())
            .map(|i| if i < 8 { 5_000 } else { 29_000 })
            .collect();
        let (closed, _) = run(agg, &pre, 1, &wms).await;
        assert_eq!(closed, expected);
    }

    #[tokio::test]
    async fn late_rows_name_the_window_they_missed() {
        let rows: &[(i64, &str, i64)] = &[(10_000, "a", 1), (3_000, "a", 2), (9_000, "a", 4)];
        // HOP 2 s / 6 s: at watermark 9 s the pane [2, 4) has no open window ([2, 8) closed).
        let (mut agg, pre) =
            plan("HOP(t, ts, INTERVAL '2' SECOND, INTERVAL '6' SECOND)", rows).await;
        agg.close(9_000).unwrap();
        let u = agg.update(&pre).unwrap();
        assert_eq!((u.accepted, u.late), (2, 1));
        assert_eq!(
            u.late_rows,
            vec![LateRow {
                row: 1,
                window: Some((2_000, 8_000)),
                reason: LATE_HOP
            }]
        );
        // SESSION gap 3 s: at watermark 9 s, 3 s makes a session ending at 6 s: late; 9 s
        // and 10 s are on time.
        let (mut agg, pre) = plan("SESSION(t, ts, INTERVAL '3' SECOND)", rows).await;
        agg.close(9_000).unwrap();
        let u = agg.update(&pre).unwrap();
        assert_eq!(u.late_rows.len(), 1);
        assert_eq!(u.late_rows[0].window, Some((3_000, 6_000)));
        let out = rows_of(&agg.close(i64::MAX).unwrap());
        assert_eq!(out, vec![(9_000, 13_000, "a".into(), 2, 5)]);
        // A row less than a gap after a closed session's last row is late too.
        let (mut agg, pre) = plan(
            "SESSION(t, ts, INTERVAL '3' SECOND)",
            &[(10_000, "a", 1), (12_000, "a", 2)],
        )
        .await;
        agg.update(&pre.slice(0, 1)).unwrap();
        assert_eq!(rows_of(&agg.close(13_000).unwrap()).len(), 1);
        let u = agg.update(&pre.slice(1, 1)).unwrap();
        assert_eq!(u.late_rows[0].window, Some((10_000, 13_000)));
        assert_eq!(u.late_rows[0].reason, session::LATE_CLOSED);
    }

    #[test]
    fn window_bounds_in_every_timestamp_unit() {
        use datafusion::arrow::datatypes::{
            TimestampMicrosecondType, TimestampNanosecondType, TimestampSecondType,
        };
        let tz: Option<Arc<str>> = Some("+01:00".into());
        let t = |u| DataType::Timestamp(u, tz.clone());
        let a = bound_array(vec![-1_500, 2_000], &t(TimeUnit::Second)).unwrap();
        assert_eq!(a.data_type(), &t(TimeUnit::Second));
        assert_eq!(a.as_primitive::<TimestampSecondType>().values(), &[-2, 2]);
        let a = bound_array(vec![1_500], &t(TimeUnit::Microsecond)).unwrap();
        assert_eq!(
            a.as_primitive::<TimestampMicrosecondType>().values(),
            &[1_500_000]
        );
        let a = bound_array(vec![1_500], &t(TimeUnit::Nanosecond)).unwrap();
        assert_eq!(
            a.as_primitive::<TimestampNanosecondType>().values(),
            &[1_500_000_000]
        );
        assert_eq!(to_ms(-2, TimeUnit::Second), -2_000);
        assert_eq!(to_ms(-1, TimeUnit::Microsecond), -1);
    }

    #[tokio::test]
    async fn output_watermark_is_the_first_open_window() {
        let (agg, _) = plan("HOP(t, ts, INTERVAL '2' SECOND, INTERVAL '6' SECOND)", ROWS).await;
        // Watermark 9 s: [2, 8) closed, [4, 10) open.
        assert_eq!(agg.output_watermark(9_000), 4_000);
        assert_eq!(agg.output_watermark(10_000), 6_000);
        let (agg, _) = plan("TUMBLE(t, ts, INTERVAL '5' SECOND)", ROWS).await;
        assert_eq!(agg.output_watermark(9_000), 5_000);
    }
}

/// Throughput of the window operators through a pipeline (pre plan, windows, post plan):
/// `cargo test --release -p weir-engine --lib window::bench -- --ignored --nocapture`.
#[cfg(test)]
mod bench {
    #![allow(clippy::unwrap_used)]
    use crate::connector::{ConnectorRegistry, Source, SourceEvent, SourceFactory, SourceSpec};
    use crate::pipeline::{EngineConfig, Pipeline};
    use datafusion::arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::record_batch::RecordBatch;
    use std::sync::Arc;

    struct Pushed;
    struct PushedSource;

    #[async_trait::async_trait]
    impl Source for PushedSource {
        fn partitions(&self) -> usize {
            1
        }
        async fn next(&mut self) -> crate::Result<SourceEvent> {
            futures::future::pending().await
        }
    }

    impl SourceFactory for Pushed {
        fn name(&self) -> &'static str {
            "pushed"
        }
        fn create(&self, _spec: SourceSpec) -> crate::Result<Box<dyn Source>> {
            Ok(Box::new(PushedSource))
        }
    }

    async fn rows_per_second(window: &str, rows: i64) -> f64 {
        let mut p = Pipeline::new(
            EngineConfig::default(),
            ConnectorRegistry::new().with_source(Pushed),
        );
        p.execute(&format!(
            "CREATE SOURCE ev (ts TIMESTAMP NOT NULL, k TEXT, v BIGINT, \
               WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (connector = 'pushed');
             CREATE MATERIALIZED VIEW w AS SELECT window_start, window_end, k, count(*) AS n, \
               sum(v) AS total, max(v) AS top FROM {window} GROUP BY window_start, window_end, k;"
        ))
        .await
        .unwrap();
        let schema = p.source_schema("ev").unwrap();
        let keys: Vec<String> = (0..100).map(|i| format!("key{i}")).collect();
        // One row per millisecond, 100 keys, 8192-row micro-batches.
        let batches: Vec<RecordBatch> = (0..rows)
            .step_by(8192)
            .map(|from| {
                let to = (from + 8192).min(rows);
                RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(TimestampMillisecondArray::from(
                            (from..to)
                                .map(|i| 1_700_000_000_000 + i)
                                .collect::<Vec<_>>(),
                        )),
                        Arc::new(StringArray::from(
                            (from..to)
                                .map(|i| keys[(i * 7 % 100) as usize].as_str())
                                .collect::<Vec<_>>(),
                        )),
                        Arc::new(Int64Array::from((from..to).collect::<Vec<_>>())),
                    ],
                )
                .unwrap()
            })
            .collect();
        let started = std::time::Instant::now();
        let mut out = 0;
        for b in batches {
            out += p.push("ev", 0, b, 0).await.unwrap().len();
        }
        out += p.end_source("ev").await.unwrap().len();
        assert!(out > 0);
        rows as f64 / started.elapsed().as_secs_f64()
    }

    #[tokio::test(flavor = "current_thread")]
    #[ignore = "a measurement, not a test"]
    async fn tumble_hop_session_throughput() {
        let rows = 1_000_000;
        for (name, window) in [
            ("TUMBLE 10s", "TUMBLE(ev, ts, INTERVAL '10' SECOND)"),
            (
                "HOP 10s/2s",
                "HOP(ev, ts, INTERVAL '2' SECOND, INTERVAL '10' SECOND)",
            ),
            (
                "HOP 60s/1s",
                "HOP(ev, ts, INTERVAL '1' SECOND, INTERVAL '60' SECOND)",
            ),
            ("SESSION 50ms", "SESSION(ev, ts, INTERVAL '50' MILLISECOND)"),
            ("SESSION 5s", "SESSION(ev, ts, INTERVAL '5' SECOND)"),
        ] {
            let r = rows_per_second(window, rows).await;
            println!("{name:>14}: {:>10.0} rows/s over {rows} rows", r);
        }
    }
}
