//! [`WindowAggregator`]: a windowed view's aggregate over TUMBLE and HOP panes or
//! SESSION sessions, with DataFusion's own accumulators (see the module docs of `window`).

use super::check_state_schema;
use super::groups::{AggregateInputs, Layout, State};
use super::panes::{self, Panes};
use super::session::Sessions;
use super::{
    LATE_HOP, LATE_TUMBLE, UpdateStats, WindowOperator, batch_in, bound_array, split_by_pane,
};
use crate::error::{Result, WeirError};
use crate::sql::{WindowKind, WindowSpec};
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, UInt32Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_plan::aggregates::AggregateExec;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

mod evaluate;
mod partial;
pub use evaluate::Evaluated;
pub use partial::{Partial, split_indices, split_rows};

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
}

impl WindowOperator for WindowAggregator {
    fn configure(&mut self, every: Option<std::time::Duration>) -> Result<()> {
        WindowAggregator::configure(self, every);
        Ok(())
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
    fn into_aggregator(
        self: Box<Self>,
    ) -> std::result::Result<WindowAggregator, Box<dyn WindowOperator>> {
        Ok(*self)
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
        let AggregateInputs {
            aggregates,
            arguments,
            filters,
        } = AggregateInputs::of(raw)?;
        let group_by = raw.group_expr();
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
        })
    }

    /// Early results every `every` of processing time (`EMIT EVERY`).
    pub fn configure(&mut self, every: Option<std::time::Duration>) {
        self.emit_every = every.map(|d| (d.as_millis() as i64).max(1));
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

    /// Fold one batch (the output of the pre plan) into the open windows. Late rows are
    /// left out and listed.
    pub fn update(&mut self, batch: &RecordBatch) -> Result<UpdateStats> {
        self.fold(batch, None)
    }

    /// [`WindowAggregator::update`], adding the rows taken per pane to `pane_rows` (TUMBLE
    /// and HOP) when given.
    fn fold(
        &mut self,
        batch: &RecordBatch,
        pane_rows: Option<&mut BTreeMap<i64, u64>>,
    ) -> Result<UpdateStats> {
        let evaluated = self.evaluate(batch)?;
        self.fold_evaluated(evaluated, pane_rows)
    }

    /// [`WindowAggregator::update`] of rows already evaluated ([`WindowAggregator::evaluate`]).
    pub fn update_evaluated(&mut self, evaluated: Evaluated) -> Result<UpdateStats> {
        self.fold_evaluated(evaluated, None)
    }

    fn fold_evaluated(
        &mut self,
        evaluated: Evaluated,
        mut pane_rows: Option<&mut BTreeMap<i64, u64>>,
    ) -> Result<UpdateStats> {
        let Evaluated { times, inputs } = evaluated;
        let n = times.len();
        if n == 0 {
            return Ok(UpdateStats::default());
        }
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
                    if let Some(c) = pane_rows.as_mut() {
                        *c.entry(p).or_default() += n as u64;
                    }
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
                        if let Some(c) = pane_rows.as_mut() {
                            *c.entry(p).or_default() += m as u64;
                        }
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

    /// One batch per window (tagged with its start, see [`WindowAggregator::close_windows`]).
    fn pane_batches(&self, windows: Vec<panes::PaneWindow>) -> Result<Vec<(i64, RecordBatch)>> {
        let size = match self.kind {
            WindowKind::Tumble { size_ms } | WindowKind::Hop { size_ms, .. } => size_ms,
            WindowKind::Session { .. } => 0,
        };
        windows
            .into_iter()
            .map(|(s, keys, values, rows)| {
                let b = self.window_batch(
                    vec![s; rows],
                    vec![s.saturating_add(size); rows],
                    keys,
                    values,
                )?;
                Ok((s, b))
            })
            .collect()
    }

    /// Close every window whose end is at or before `watermark_ms`, oldest first; each
    /// closed window (SESSION: the sessions closing together) yields one batch in the
    /// output schema.
    pub fn close(&mut self, watermark_ms: i64) -> Result<Vec<RecordBatch>> {
        Ok(untag(self.close_windows(watermark_ms)?))
    }

    /// [`WindowAggregator::close`], each batch tagged with its window's start (SESSION:
    /// [`SESSIONS_TAG`] for the one batch of sessions): how the key partitions of a view
    /// put the pieces of one window back together (`dataflow/keyed.rs`).
    pub fn close_windows(&mut self, watermark_ms: i64) -> Result<Vec<(i64, RecordBatch)>> {
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
                Some((starts, ends, keys, values)) => Ok(vec![(
                    SESSIONS_TAG,
                    self.window_batch(starts, ends, keys, values)?,
                )]),
                None => Ok(vec![]),
            },
        }
    }

    /// Whether [`WindowAggregator::close_windows`] at `watermark_ms` would close a window
    /// (TUMBLE and HOP: one ends after the last watermark and at or before this one;
    /// SESSION: the watermark moves). It depends on the watermarks alone, never on the
    /// state, so the key partitions of a view and their driver agree on it.
    pub fn closes_any(&self, watermark_ms: i64) -> bool {
        if watermark_ms <= self.closed_through {
            return false;
        }
        match &self.store {
            Store::Panes(p) => {
                panes::first_open_window(p.slide, p.size, self.closed_through)
                    .saturating_add(p.size)
                    <= watermark_ms
            }
            Store::Sessions(_) => true,
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
        let starts = self.changed_windows().unwrap_or_default();
        Ok(untag(self.early_windows_at(&starts)?))
    }

    /// TUMBLE and HOP: the starts of the open windows with a pane that changed since the
    /// last early emission (the flags are cleared); `None` for SESSION windows, which
    /// keep a flag per session.
    pub fn changed_windows(&mut self) -> Option<BTreeSet<i64>> {
        match &mut self.store {
            Store::Panes(p) => Some(p.changed_windows(self.closed_through)),
            Store::Sessions(_) => None,
        }
    }

    /// Early results: TUMBLE and HOP, the windows starting at `starts` (every group of
    /// each, changed or not); SESSION, the sessions that changed.
    pub fn early_windows_at(&mut self, starts: &BTreeSet<i64>) -> Result<Vec<(i64, RecordBatch)>> {
        match &mut self.store {
            Store::Panes(p) => {
                let windows = p.windows_at(&self.layout, starts)?;
                self.pane_batches(windows)
            }
            Store::Sessions(s) => match s.early(&self.layout)? {
                Some((starts, ends, keys, values)) => Ok(vec![(
                    SESSIONS_TAG,
                    self.window_batch(starts, ends, keys, values)?,
                )]),
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
            check_state_schema("window state", batch, &schema)?;
            if matches!(self.store, Store::Panes(_)) {
                self.merge_panes(batch, |_| true)?;
                continue;
            }
            let ints =
                |i: usize| -> Result<Vec<i64>> { Ok(int_column(batch, i)?.values().to_vec()) };
            let bools = |i: usize| -> Result<Vec<bool>> {
                let a = batch
                    .column(i)
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .ok_or_else(|| WeirError::Internal("window state column".into()))?;
                Ok(a.iter().map(|v| v.unwrap_or(false)).collect())
            };
            if let Store::Sessions(s) = &mut self.store {
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
        Ok(())
    }

    /// Merge pane state rows (in [`WindowAggregator::state_schema`]) into the panes, for
    /// the panes `keep` accepts.
    fn merge_panes(&mut self, batch: &RecordBatch, keep: impl Fn(i64) -> bool) -> Result<()> {
        let Store::Panes(p) = &mut self.store else {
            return Err(WeirError::Internal(
                "pane state for a session window".into(),
            ));
        };
        let nkeys = self.layout.key_schema.fields().len();
        let panes = int_column(batch, 0)?;
        let dirty = batch
            .column(1)
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| WeirError::Internal("window state column".into()))?;
        let mut by_pane: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (i, pane) in panes.values().iter().enumerate() {
            if keep(*pane) {
                by_pane.entry(*pane).or_default().push(i as u32);
            }
        }
        let whole = by_pane.len() == 1 && by_pane.values().all(|r| r.len() == batch.num_rows());
        for (pane, rows) in by_pane {
            let changed = rows.iter().any(|&r| dirty.value(r as usize));
            let part = if whole {
                batch.clone()
            } else {
                datafusion::arrow::compute::take_record_batch(batch, &UInt32Array::from(rows))?
            };
            let state = State {
                keys: self
                    .layout
                    .cast_keys(part.columns()[2..2 + nkeys].to_vec())?,
                states: part.columns()[2 + nkeys..].to_vec(),
                rows: part.num_rows(),
            };
            p.restore(&self.layout, pane, changed, &state)?;
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

/// The tag of the batch of closing sessions (see [`WindowAggregator::close_windows`]).
pub const SESSIONS_TAG: i64 = i64::MIN;

fn untag(windows: Vec<(i64, RecordBatch)>) -> Vec<RecordBatch> {
    windows.into_iter().map(|(_, b)| b).collect()
}

fn int_column(batch: &RecordBatch, i: usize) -> Result<&Int64Array> {
    batch
        .column(i)
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or_else(|| WeirError::Internal("window state column".into()))
}
