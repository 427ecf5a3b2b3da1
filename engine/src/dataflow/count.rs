//! Count windows (`COUNT_WINDOW(src, key, ts, n)`): per key, windows of `n` consecutive
//! rows in event-time order, each emitted once it is complete.
//!
//! Arrival order is not an order (it changes with partitions, micro-batches and restarts),
//! so rows are counted in the order of their time column, ties broken by the rows' other
//! columns in the input's column order (ascending, NULLs last). A row is placed once the
//! input's watermark has passed its time: every row still to come is at or after the
//! watermark, so nothing can come before it any more. Rows behind the watermark when they
//! arrive are late: dropped and counted. Until then rows wait in `pending`; placed rows of
//! a key's unfinished window wait in its [`KeyState`]. A complete window's rows, with
//! their `window_index`, run through the view's plan (its aggregate groups by key and
//! window index, so each run sees whole windows). A key's last, unfinished window is never
//! emitted, even when the input ends.
//!
//! Rows are kept in Arrow's row format: the time column first (so that sorting by the
//! bytes sorts by time, then by the row), then every input column.

use super::operator::{Context, NodeState, Operator, StateFigures, meta_field};
use crate::error::{Result, WeirError};
use crate::planner::slot::SlotPlan;
use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Int64Array};
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use std::collections::HashMap;
use std::sync::Arc;

/// A key's count: windows emitted, and the placed rows of the one filling up, end to end
/// in `bytes` (row `i` ends at `ends[i]`).
#[derive(Default)]
struct KeyState {
    next_index: i64,
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl KeyState {
    fn len(&self) -> usize {
        self.ends.len()
    }

    fn rows(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(a, b)| &self.bytes[a..b])
    }

    fn push(&mut self, row: &[u8]) {
        self.bytes.extend_from_slice(row);
        self.ends.push(self.bytes.len());
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }
}

/// A micro-batch's rows waiting for the watermark to pass their times.
struct Pending {
    rows: Rows,
    keys: Rows,
    /// Per row its time in ms; `None` once placed (or when late).
    times: Vec<Option<i64>>,
    /// The least time of the rows still waiting (`i64::MAX`: none).
    least: i64,
}

impl Pending {
    fn least_waiting(&self) -> i64 {
        self.times
            .iter()
            .flatten()
            .copied()
            .min()
            .unwrap_or(i64::MAX)
    }
}

pub struct CountWindowOp {
    /// The view's query over the complete windows' rows (`window_schema`).
    plan: SlotPlan,
    input_schema: SchemaRef,
    /// The input's columns and `window_index`.
    window_schema: SchemaRef,
    key: usize,
    time: usize,
    rows_per_window: usize,
    /// The time column, then every input column.
    rows: RowConverter,
    keys_conv: RowConverter,
    pending: Vec<Pending>,
    keys: HashMap<Box<[u8]>, KeyState>,
    /// The input's watermark.
    input_watermark: i64,
}

impl CountWindowOp {
    pub fn try_new(
        plan: SlotPlan,
        input_schema: SchemaRef,
        key: usize,
        time: usize,
        rows_per_window: usize,
    ) -> Result<Self> {
        let order = SortOptions {
            descending: false,
            nulls_first: false,
        };
        let mut fields = vec![SortField::new_with_options(
            input_schema.field(time).data_type().clone(),
            order,
        )];
        fields.extend(
            input_schema
                .fields()
                .iter()
                .map(|f| SortField::new_with_options(f.data_type().clone(), order)),
        );
        Ok(CountWindowOp {
            plan,
            window_schema: crate::sql::count_window::window_schema(&input_schema),
            keys_conv: RowConverter::new(vec![SortField::new(
                input_schema.field(key).data_type().clone(),
            )])?,
            input_schema,
            key,
            time,
            rows_per_window,
            rows: RowConverter::new(fields)?,
            pending: Vec::new(),
            keys: HashMap::new(),
            input_watermark: i64::MIN,
        })
    }

    /// Hold `batch`'s rows until the watermark passes them; returns how many were late
    /// (behind the watermark, or without a time).
    fn hold(&mut self, batch: &RecordBatch) -> Result<u64> {
        let times = crate::window::shifted_ms(batch.column(self.time), 0)?;
        let mut cols = vec![batch.column(self.time).clone()];
        cols.extend(batch.columns().iter().cloned());
        let rows = self.rows.convert_columns(&cols)?;
        let keys = self
            .keys_conv
            .convert_columns(&[batch.column(self.key).clone()])?;
        let w = self.input_watermark;
        let times: Vec<Option<i64>> = times.into_iter().map(|t| t.filter(|ms| *ms >= w)).collect();
        let late = times.iter().filter(|t| t.is_none()).count() as u64;
        let pending = Pending {
            rows,
            keys,
            times,
            least: i64::MAX,
        };
        let least = pending.least_waiting();
        if least != i64::MAX {
            self.pending.push(Pending { least, ..pending });
        }
        Ok(late)
    }

    /// Place the pending rows the watermark has passed, in order; the rows of the windows
    /// that filled up, with their index, in the window schema.
    fn place(&mut self) -> Result<Option<RecordBatch>> {
        let w = self.input_watermark;
        // (batch, row) of every waiting row the watermark has passed.
        let mut ready: Vec<(u32, u32)> = Vec::new();
        for (b, p) in self.pending.iter_mut().enumerate() {
            if p.least >= w {
                continue;
            }
            for (i, t) in p.times.iter_mut().enumerate() {
                if t.is_some_and(|ms| ms < w) {
                    *t = None;
                    ready.push((b as u32, i as u32));
                }
            }
            p.least = p.least_waiting();
        }
        if ready.is_empty() {
            return Ok(None);
        }
        let pending = &self.pending;
        let at = |(b, i): (u32, u32)| {
            let p = &pending[b as usize];
            (p.keys.row(i as usize), p.rows.row(i as usize))
        };
        ready.sort_unstable_by(|a, b| at(*a).cmp(&at(*b)));
        let mut out = KeyState::default();
        let mut out_index: Vec<i64> = Vec::new();
        for r in ready {
            let (key, row) = at(r);
            let state = match self.keys.get_mut(key.as_ref()) {
                Some(s) => s,
                None => self.keys.entry(key.as_ref().into()).or_default(),
            };
            state.push(row.as_ref());
            if state.len() == self.rows_per_window {
                out_index.extend(std::iter::repeat_n(state.next_index, state.len()));
                state.next_index += 1;
                for r in state.rows() {
                    out.push(r);
                }
                state.clear();
            }
        }
        self.pending.retain(|p| p.least != i64::MAX);
        if out.len() == 0 {
            return Ok(None);
        }
        let mut cols = self.columns_of(out.rows())?;
        cols.push(Arc::new(Int64Array::from(out_index)));
        Ok(Some(RecordBatch::try_new(
            self.window_schema.clone(),
            cols,
        )?))
    }

    /// The input columns of rows in the row format.
    fn columns_of<'a>(&self, rows: impl Iterator<Item = &'a [u8]>) -> Result<Vec<ArrayRef>> {
        let parser = self.rows.parser();
        let mut cols = self.rows.convert_rows(rows.map(|r| parser.parse(r)))?;
        // The leading copy of the time column is for ordering only.
        cols.remove(0);
        Ok(cols)
    }
}

#[async_trait]
impl Operator for CountWindowOp {
    async fn on_batch(
        &mut self,
        _port: usize,
        batch: RecordBatch,
        cx: &mut Context<'_>,
    ) -> Result<Vec<RecordBatch>> {
        let late = self.hold(&batch)?;
        super::operator::count_late_rows(cx, late);
        Ok(vec![])
    }

    async fn on_watermark(
        &mut self,
        inputs: &[i64],
        _cx: &mut Context<'_>,
    ) -> Result<Vec<RecordBatch>> {
        super::operator::follow_inputs(&mut self.input_watermark, inputs);
        match self.place()? {
            Some(windows) => self.plan.run(windows).await,
            None => Ok(vec![]),
        }
    }

    /// The input's: a window's rows come out once the watermark has passed them all, so
    /// they are behind it (see docs/windows.md, "Count windows").
    fn watermark(&self) -> i64 {
        self.input_watermark
    }

    fn figures(&self) -> StateFigures {
        StateFigures {
            open_windows: self.keys.values().filter(|k| k.len() > 0).count() as u64,
            open_groups: self.keys.len() as u64,
            bytes: (self
                .pending
                .iter()
                .map(|p| p.rows.size() + p.keys.size() + p.times.capacity() * 16)
                .sum::<usize>()
                + self
                    .keys
                    .iter()
                    .map(|(k, s)| {
                        k.len()
                            + s.bytes.capacity()
                            + s.ends.capacity() * 8
                            + std::mem::size_of::<KeyState>()
                            + 16
                    })
                    .sum::<usize>()) as u64,
            ..StateFigures::default()
        }
    }

    /// Parts: the pending rows (input schema); the placed rows of unfinished windows, key
    /// by key in order (input schema); each key with its next window index.
    async fn snapshot(&mut self) -> Result<NodeState> {
        let mut pending = KeyState::default();
        for p in &self.pending {
            for (i, t) in p.times.iter().enumerate() {
                if t.is_some() {
                    pending.push(p.rows.row(i).as_ref());
                }
            }
        }
        let mut placed = KeyState::default();
        let mut keys: Vec<&[u8]> = Vec::new();
        let mut next: Vec<i64> = Vec::new();
        for (k, s) in &self.keys {
            keys.push(k);
            next.push(s.next_index);
            for r in s.rows() {
                placed.push(r);
            }
        }
        let rows_batch = |rows: &KeyState| -> Result<Vec<RecordBatch>> {
            if rows.len() == 0 {
                return Ok(vec![]);
            }
            Ok(vec![RecordBatch::try_new(
                self.input_schema.clone(),
                self.columns_of(rows.rows())?,
            )?])
        };
        let mut parts = vec![rows_batch(&pending)?, rows_batch(&placed)?];
        if !keys.is_empty() {
            let parser = self.keys_conv.parser();
            let mut cols = self
                .keys_conv
                .convert_rows(keys.iter().map(|k| parser.parse(k)))?;
            cols.push(Arc::new(Int64Array::from(next)));
            parts.push(vec![RecordBatch::try_new(self.key_schema(), cols)?]);
        }
        Ok(NodeState {
            meta: serde_json::json!({ "watermark": self.input_watermark }),
            parts,
        })
    }

    fn restore(&mut self, state: NodeState) -> Result<()> {
        self.input_watermark = meta_field(&state.meta, "watermark")?.unwrap_or(i64::MIN);
        self.pending.clear();
        self.keys.clear();
        let mut parts = state.parts.into_iter();
        let pending = parts.next().unwrap_or_default();
        let placed = parts.next().unwrap_or_default();
        let keys = parts.next().unwrap_or_default();
        for b in &keys {
            crate::window::check_state_schema("count window keys", b, &self.key_schema())?;
            let rows = self.keys_conv.convert_columns(&[b.column(0).clone()])?;
            let next = b
                .column(1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| WeirError::Internal("count window index type".into()))?;
            for (i, r) in rows.iter().enumerate() {
                self.keys.entry(r.as_ref().into()).or_default().next_index = next.value(i);
            }
        }
        // Placed rows, in order: each goes back to its key.
        let watermark = self.input_watermark;
        for b in &placed {
            crate::window::check_state_schema("count window rows", b, &self.input_schema)?;
            self.input_watermark = i64::MIN;
            self.hold(b)?;
            for p in std::mem::take(&mut self.pending) {
                for (i, t) in p.times.iter().enumerate() {
                    if t.is_some() {
                        let key = p.keys.row(i);
                        self.keys
                            .entry(key.as_ref().into())
                            .or_default()
                            .push(p.rows.row(i).as_ref());
                    }
                }
            }
        }
        self.input_watermark = i64::MIN;
        for b in &pending {
            crate::window::check_state_schema("count window pending rows", b, &self.input_schema)?;
            self.hold(b)?;
        }
        self.input_watermark = watermark;
        Ok(())
    }
}

impl CountWindowOp {
    /// A checkpoint's keys: the key column and the next window index.
    fn key_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(vec![
            self.input_schema.field(self.key).clone(),
            Field::new("__next_index", DataType::Int64, false),
        ]))
    }
}
