//! Incremental tumbling-window aggregation with DataFusion's own accumulators.
//!
//! Each open window holds a `GroupValues` (DataFusion's group-key interner) and one
//! `GroupsAccumulator` per aggregate, so state is proportional to open windows x groups,
//! never to events. A micro-batch is split by window; each part updates its window's
//! accumulators. When the watermark passes a window's end, the window's groups are
//! evaluated into one batch in the aggregate's output schema and the window is dropped.
//! Rows for windows that already closed are late: counted and dropped.

use crate::error::{Result, WeirError};
use crate::sql::WindowSpec;
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, UInt32Array};
use datafusion::arrow::compute::{cast, filter, filter_record_batch, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::GroupsAccumulatorAdapter;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use std::collections::BTreeMap;
use std::sync::Arc;

struct OpenWindow {
    groups: Box<dyn GroupValues>,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    group_ids: Vec<usize>,
}

/// Which group column carries the window, and how to get its start.
#[derive(Debug, Clone, Copy)]
enum WindowColumn {
    Start(usize),
    End(usize),
}

pub struct WindowAggregator {
    group_exprs: Vec<Arc<dyn PhysicalExpr>>,
    group_names: Vec<String>,
    group_schema: SchemaRef,
    window_column: WindowColumn,
    /// Milliseconds per unit of the window column's timestamp type.
    unit_per_ms: i64,
    size_ms: i64,
    aggregates: Vec<Arc<AggregateFunctionExpr>>,
    arguments: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    output_schema: SchemaRef,
    windows: BTreeMap<i64, OpenWindow>,
    /// Windows ending at or before this (ms) have closed.
    closed_through: i64,
}

/// What one micro-batch did to the window state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UpdateStats {
    pub accepted: u64,
    pub late: u64,
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
        let mut fields = Vec::new();
        for (expr, name) in group_by.expr() {
            fields.push(Field::new(
                name,
                expr.data_type(&input_schema)?,
                expr.nullable(&input_schema)?,
            ));
            group_exprs.push(expr.clone());
            group_names.push(name.clone());
        }
        let window_column = if let Some(i) = group_names.iter().position(|n| n == "window_start") {
            WindowColumn::Start(i)
        } else if let Some(i) = group_names.iter().position(|n| n == "window_end") {
            WindowColumn::End(i)
        } else {
            return Err(WeirError::user(
                "a windowed view must GROUP BY window_start (and window_end)",
            ));
        };
        let idx = match window_column {
            WindowColumn::Start(i) | WindowColumn::End(i) => i,
        };
        let unit_per_ms = match fields[idx].data_type() {
            DataType::Timestamp(TimeUnit::Second, _) => 0,
            DataType::Timestamp(TimeUnit::Millisecond, _) => 1,
            DataType::Timestamp(TimeUnit::Microsecond, _) => 1_000,
            DataType::Timestamp(TimeUnit::Nanosecond, _) => 1_000_000,
            other => {
                return Err(WeirError::user(format!(
                    "the window column must be a timestamp, it is {other}"
                )));
            }
        };
        let aggregates = raw.aggr_expr().to_vec();
        let arguments = aggregates
            .iter()
            .map(|a| {
                let mut args = a.expressions();
                args.extend(a.order_bys().iter().map(|s| s.expr.clone()));
                args
            })
            .collect();
        let filters = raw.filter_expr().to_vec();
        Ok(WindowAggregator {
            group_exprs,
            group_names,
            group_schema: Arc::new(Schema::new(fields)),
            window_column,
            unit_per_ms,
            size_ms: window.size.as_millis() as i64,
            aggregates,
            arguments,
            filters,
            output_schema,
            windows: BTreeMap::new(),
            closed_through: i64::MIN,
        })
    }

    pub fn group_names(&self) -> Vec<String> {
        self.group_names.clone()
    }

    pub fn describe(&self) -> String {
        let aggs: Vec<String> = self
            .aggregates
            .iter()
            .map(|a| a.name().to_string())
            .collect();
        format!(
            "WindowAggregate: tumble {} ms, group by [{}], aggregates [{}]",
            self.size_ms,
            self.group_names.join(", "),
            aggs.join(", ")
        )
    }

    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }

    /// Groups held across open windows.
    pub fn open_groups(&self) -> usize {
        self.windows.values().map(|w| w.groups.len()).sum()
    }

    /// Approximate bytes of state.
    pub fn state_bytes(&self) -> usize {
        self.windows
            .values()
            .map(|w| w.groups.size() + w.accumulators.iter().map(|a| a.size()).sum::<usize>())
            .sum()
    }

    /// The window start (ms) of each row, from the evaluated window column.
    fn window_starts(&self, col: &ArrayRef) -> Result<Vec<Option<i64>>> {
        let raw = cast(col, &DataType::Int64)?;
        let raw = raw
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .ok_or_else(|| WeirError::Internal("window column cast".into()))?;
        let to_ms = |v: i64| {
            if self.unit_per_ms == 0 {
                v * 1000
            } else {
                v.div_euclid(self.unit_per_ms)
            }
        };
        let shift = match self.window_column {
            WindowColumn::Start(_) => 0,
            WindowColumn::End(_) => self.size_ms,
        };
        Ok(raw.iter().map(|v| v.map(|v| to_ms(v) - shift)).collect())
    }

    fn new_window(&self) -> Result<OpenWindow> {
        let groups = new_group_values(self.group_schema.clone(), &GroupOrdering::None)?;
        let mut accumulators = Vec::with_capacity(self.aggregates.len());
        for a in &self.aggregates {
            let acc: Box<dyn GroupsAccumulator> = if a.groups_accumulator_supported() {
                a.create_groups_accumulator()?
            } else {
                let a = a.clone();
                Box::new(GroupsAccumulatorAdapter::new(move || {
                    a.create_accumulator()
                }))
            };
            accumulators.push(acc);
        }
        Ok(OpenWindow {
            groups,
            accumulators,
            group_ids: Vec::new(),
        })
    }

    /// Fold one batch (the output of the pre plan) into the open windows.
    pub fn update(&mut self, batch: &RecordBatch) -> Result<UpdateStats> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(UpdateStats::default());
        }
        let wcol_idx = match self.window_column {
            WindowColumn::Start(i) | WindowColumn::End(i) => i,
        };
        let wcol = self.group_exprs[wcol_idx].evaluate(batch)?.into_array(n)?;
        let starts = self.window_starts(&wcol)?;
        // Late: the window already closed (or the row has no event time).
        let closed = self.closed_through;
        let size = self.size_ms;
        let keep: BooleanArray = starts
            .iter()
            .map(|s| Some(matches!(s, Some(s) if s.saturating_add(size) > closed)))
            .collect();
        let late = keep.false_count() as u64;
        let (batch, starts) = if late > 0 {
            let b = filter_record_batch(batch, &keep)?;
            let s: Vec<Option<i64>> = starts
                .into_iter()
                .zip(keep.iter())
                .filter(|(_, k)| *k == Some(true))
                .map(|(s, _)| s)
                .collect();
            (b, s)
        } else {
            (batch.clone(), starts)
        };
        let n = batch.num_rows();
        if n == 0 {
            return Ok(UpdateStats { accepted: 0, late });
        }
        let group_cols = self
            .group_exprs
            .iter()
            .map(|e| e.evaluate(&batch).and_then(|v| v.into_array(n)))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let args = self
            .arguments
            .iter()
            .map(|exprs| {
                exprs
                    .iter()
                    .map(|e| e.evaluate(&batch).and_then(|v| v.into_array(n)))
                    .collect::<datafusion::error::Result<Vec<_>>>()
            })
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let filters = self
            .filters
            .iter()
            .map(|f| match f {
                None => Ok(None),
                Some(e) => {
                    let a = e.evaluate(&batch)?.into_array(n)?;
                    let b = a
                        .as_any()
                        .downcast_ref::<BooleanArray>()
                        .cloned()
                        .ok_or_else(|| WeirError::Internal("FILTER is not boolean".into()))?;
                    Ok(Some(b))
                }
            })
            .collect::<Result<Vec<_>>>()?;

        // Split rows by window; the common case is one window per batch.
        let first = starts[0].unwrap_or_default();
        if starts.iter().all(|s| *s == Some(first)) {
            self.update_window(first, &group_cols, &args, &filters)?;
        } else {
            let mut by_window: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
            for (i, s) in starts.iter().enumerate() {
                if let Some(s) = s {
                    by_window.entry(*s).or_default().push(i as u32);
                }
            }
            for (start, rows) in by_window {
                let idx = UInt32Array::from(rows);
                let t = |a: &ArrayRef| take(a.as_ref(), &idx, None);
                let g = group_cols.iter().map(t).collect::<Result<Vec<_>, _>>()?;
                let a = args
                    .iter()
                    .map(|v| v.iter().map(t).collect::<Result<Vec<_>, _>>())
                    .collect::<Result<Vec<_>, _>>()?;
                let f = filters
                    .iter()
                    .map(|f| match f {
                        None => Ok(None),
                        Some(b) => {
                            let arr = take(b, &idx, None)?;
                            Ok(arr.as_any().downcast_ref::<BooleanArray>().cloned())
                        }
                    })
                    .collect::<Result<Vec<_>, datafusion::arrow::error::ArrowError>>()?;
                self.update_window(start, &g, &a, &f)?;
            }
        }
        Ok(UpdateStats {
            accepted: n as u64,
            late,
        })
    }

    fn update_window(
        &mut self,
        start: i64,
        group_cols: &[ArrayRef],
        args: &[Vec<ArrayRef>],
        filters: &[Option<BooleanArray>],
    ) -> Result<()> {
        if !self.windows.contains_key(&start) {
            let w = self.new_window()?;
            self.windows.insert(start, w);
        }
        let w = self
            .windows
            .get_mut(&start)
            .ok_or_else(|| WeirError::Internal("window vanished".into()))?;
        w.groups.intern(group_cols, &mut w.group_ids)?;
        let total = w.groups.len();
        for (i, acc) in w.accumulators.iter_mut().enumerate() {
            acc.update_batch(&args[i], &w.group_ids, filters[i].as_ref(), total)?;
        }
        Ok(())
    }

    /// Close every window whose end is at or before `watermark_ms`, oldest first; each
    /// closed window yields one batch in the output schema.
    pub fn close(&mut self, watermark_ms: i64) -> Result<Vec<RecordBatch>> {
        if watermark_ms > self.closed_through {
            self.closed_through = watermark_ms;
        }
        let mut out = Vec::new();
        while let Some((&start, _)) = self.windows.iter().next() {
            if start.saturating_add(self.size_ms) > self.closed_through {
                break;
            }
            let Some(mut w) = self.windows.remove(&start) else {
                break;
            };
            let mut cols = w.groups.emit(EmitTo::All)?;
            for acc in w.accumulators.iter_mut() {
                cols.push(acc.evaluate(EmitTo::All)?);
            }
            out.push(batch_in(&self.output_schema, cols)?);
        }
        Ok(out)
    }

    /// The schema of [`WindowAggregator::snapshot`]: the window start (ms), the group
    /// columns, then each aggregate's intermediate state columns.
    pub fn state_schema(&self) -> Result<SchemaRef> {
        let mut fields = vec![Field::new("__window_start", DataType::Int64, false)];
        fields.extend(
            self.group_schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone()),
        );
        for (i, a) in self.aggregates.iter().enumerate() {
            for (j, f) in a.state_fields()?.iter().enumerate() {
                fields.push(
                    f.as_ref()
                        .clone()
                        .with_name(format!("__agg{i}_{j}"))
                        .with_nullable(true),
                );
            }
        }
        Ok(Arc::new(Schema::new(fields)))
    }

    /// Windows ending at or before this (ms) have closed.
    pub fn closed_through(&self) -> i64 {
        self.closed_through
    }

    /// Every open window's groups and intermediate aggregate state, one batch per window
    /// in [`WindowAggregator::state_schema`]. DataFusion's accumulators can only hand
    /// their state out by giving it up, so each window is rebuilt from the batch at once
    /// (the same path a restore takes).
    pub fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let schema = self.state_schema()?;
        let widths = self.state_widths()?;
        let starts: Vec<i64> = self.windows.keys().copied().collect();
        let mut out = Vec::with_capacity(starts.len());
        for start in starts {
            let Some(mut w) = self.windows.remove(&start) else {
                continue;
            };
            let groups = w.groups.emit(EmitTo::All)?;
            let n = groups.first().map_or(0, |g| g.len());
            let mut cols: Vec<ArrayRef> = vec![Arc::new(
                datafusion::arrow::array::Int64Array::from(vec![start; n]),
            )];
            cols.extend(groups);
            for acc in w.accumulators.iter_mut() {
                cols.extend(acc.state(EmitTo::All)?);
            }
            let batch = batch_in(&schema, cols)?;
            self.restore_window(start, &batch, &widths)?;
            out.push(batch);
        }
        Ok(out)
    }

    /// Load state written by [`WindowAggregator::snapshot`] (into an aggregator built from
    /// the same view definition), and the close point.
    pub fn restore(&mut self, batches: &[RecordBatch], closed_through: i64) -> Result<()> {
        self.windows.clear();
        self.closed_through = closed_through;
        let schema = self.state_schema()?;
        let widths = self.state_widths()?;
        for batch in batches {
            if batch.schema().fields() != schema.fields() {
                return Err(WeirError::Internal(format!(
                    "window state does not match the view: expected {schema:?}, found {:?}",
                    batch.schema()
                )));
            }
            let starts = batch
                .column(0)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                .ok_or_else(|| WeirError::Internal("window state start column".into()))?;
            let mut by_window: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
            for (i, s) in starts.iter().enumerate() {
                by_window
                    .entry(s.unwrap_or_default())
                    .or_default()
                    .push(i as u32);
            }
            for (start, rows) in by_window {
                let part = if rows.len() == batch.num_rows() {
                    batch.clone()
                } else {
                    datafusion::arrow::compute::take_record_batch(batch, &UInt32Array::from(rows))?
                };
                self.restore_window(start, &part, &widths)?;
            }
        }
        Ok(())
    }

    /// How many state columns each aggregate has.
    fn state_widths(&self) -> Result<Vec<usize>> {
        self.aggregates
            .iter()
            .map(|a| Ok(a.state_fields()?.len()))
            .collect()
    }

    /// Merge one window's saved groups and state into its (new or open) window;
    /// `widths` is [`WindowAggregator::state_widths`].
    fn restore_window(&mut self, start: i64, batch: &RecordBatch, widths: &[usize]) -> Result<()> {
        let ngroups = self.group_schema.fields().len();
        let mut w = match self.windows.remove(&start) {
            Some(w) => w,
            None => self.new_window()?,
        };
        let group_cols: Vec<ArrayRef> = (0..ngroups)
            .map(|i| {
                cast_to(
                    batch.column(1 + i).clone(),
                    self.group_schema.field(i).data_type(),
                )
            })
            .collect::<Result<_>>()?;
        w.groups.intern(&group_cols, &mut w.group_ids)?;
        let total = w.groups.len();
        let mut col = 1 + ngroups;
        for (acc, &nstate) in w.accumulators.iter_mut().zip(widths) {
            let state: Vec<ArrayRef> = batch.columns()[col..col + nstate].to_vec();
            col += nstate;
            acc.merge_batch(&state, &w.group_ids, total)?;
        }
        self.windows.insert(start, w);
        Ok(())
    }

    /// The watermark this operator can promise downstream: every row it emits from now on
    /// has a window start at or after it.
    pub fn output_watermark(&self, input_watermark: i64) -> i64 {
        let floor = if input_watermark == i64::MIN || input_watermark == i64::MAX {
            input_watermark
        } else {
            input_watermark - input_watermark.rem_euclid(self.size_ms)
        };
        match self.windows.keys().next() {
            Some(&first) => first.min(floor),
            None => floor,
        }
    }
}

/// `c` as type `t` (cast only when it differs).
fn cast_to(c: ArrayRef, t: &DataType) -> Result<ArrayRef> {
    if c.data_type() == t {
        Ok(c)
    } else {
        Ok(cast(&c, t)?)
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

/// Keep only rows where `mask` is true in every array (helper for callers).
pub fn filter_arrays(arrays: &[ArrayRef], mask: &BooleanArray) -> Result<Vec<ArrayRef>> {
    Ok(arrays
        .iter()
        .map(|a| filter(a.as_ref(), mask))
        .collect::<Result<Vec<_>, _>>()?)
}
