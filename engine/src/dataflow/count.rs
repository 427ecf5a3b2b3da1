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
use datafusion::arrow::row::{RowConverter, SortField};
use std::collections::HashMap;
use std::sync::Arc;

/// A key's count: windows emitted, and the placed rows of the one filling up.
#[derive(Default)]
struct KeyState {
    next_index: i64,
    rows: Vec<Box<[u8]>>,
}

/// A row waiting for the watermark to pass its time.
struct Pending {
    ms: i64,
    key: Box<[u8]>,
    row: Box<[u8]>,
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
    row_bytes: usize,
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
        let mut window_fields: Vec<Field> = input_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        window_fields.push(Field::new(
            crate::sql::count_window::WINDOW_INDEX,
            DataType::Int64,
            false,
        ));
        Ok(CountWindowOp {
            plan,
            window_schema: Arc::new(Schema::new(window_fields)),
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
            row_bytes: 0,
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
        let mut late = 0;
        for (i, t) in times.into_iter().enumerate() {
            match t {
                Some(ms) if ms >= self.input_watermark => {
                    let row: Box<[u8]> = rows.row(i).as_ref().into();
                    self.row_bytes += row.len();
                    self.pending.push(Pending {
                        ms,
                        key: keys.row(i).as_ref().into(),
                        row,
                    });
                }
                _ => late += 1,
            }
        }
        Ok(late)
    }

    /// Place the pending rows the watermark has passed, in order; the rows of the windows
    /// that filled up, with their index, in the window schema.
    fn place(&mut self) -> Result<Option<RecordBatch>> {
        let w = self.input_watermark;
        if !self.pending.iter().any(|p| p.ms < w) {
            return Ok(None);
        }
        let (mut ready, waiting): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.ms < w);
        self.pending = waiting;
        ready.sort_unstable_by(|a, b| (&a.key, &a.row).cmp(&(&b.key, &b.row)));
        let mut out_rows: Vec<Box<[u8]>> = Vec::new();
        let mut out_index: Vec<i64> = Vec::new();
        for p in ready {
            let state = self.keys.entry(p.key).or_default();
            state.rows.push(p.row);
            if state.rows.len() == self.rows_per_window {
                out_index.extend(std::iter::repeat_n(state.next_index, state.rows.len()));
                state.next_index += 1;
                for r in state.rows.drain(..) {
                    self.row_bytes -= r.len();
                    out_rows.push(r);
                }
            }
        }
        if out_rows.is_empty() {
            return Ok(None);
        }
        let mut cols = self.columns_of(&out_rows)?;
        cols.push(Arc::new(Int64Array::from(out_index)));
        Ok(Some(RecordBatch::try_new(
            self.window_schema.clone(),
            cols,
        )?))
    }

    /// The input columns of rows in the row format.
    fn columns_of(&self, rows: &[Box<[u8]>]) -> Result<Vec<ArrayRef>> {
        let parser = self.rows.parser();
        let mut cols = self
            .rows
            .convert_rows(rows.iter().map(|r| parser.parse(r)))?;
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
            open_windows: self.keys.values().filter(|k| !k.rows.is_empty()).count() as u64,
            open_groups: self.keys.len() as u64,
            bytes: (self.row_bytes
                + self.pending.len() * std::mem::size_of::<Pending>()
                + self
                    .keys
                    .keys()
                    .map(|k| k.len() + std::mem::size_of::<KeyState>() + 16)
                    .sum::<usize>()) as u64,
            ..StateFigures::default()
        }
    }

    /// Parts: the pending rows (input schema); the placed rows of unfinished windows, key
    /// by key in order (input schema); each key with its next window index.
    fn snapshot(&mut self) -> Result<NodeState> {
        let pending: Vec<Box<[u8]>> = self.pending.iter().map(|p| p.row.clone()).collect();
        let mut placed: Vec<Box<[u8]>> = Vec::new();
        let mut keys: Vec<&[u8]> = Vec::new();
        let mut next: Vec<i64> = Vec::new();
        for (k, s) in &self.keys {
            keys.push(k);
            next.push(s.next_index);
            placed.extend(s.rows.iter().cloned());
        }
        let rows_batch = |rows: &[Box<[u8]>]| -> Result<Vec<RecordBatch>> {
            if rows.is_empty() {
                return Ok(vec![]);
            }
            Ok(vec![RecordBatch::try_new(
                self.input_schema.clone(),
                self.columns_of(rows)?,
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
        self.row_bytes = 0;
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
                self.keys.entry(p.key).or_default().rows.push(p.row);
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
