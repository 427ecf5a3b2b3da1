//! Window functions over unaggregated rows, for top-N per window:
//!
//! ```sql
//! SELECT * FROM (
//!   SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start ORDER BY price DESC) AS rn
//!   FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND)
//! ) WHERE rn <= 5
//! ```
//!
//! [`WindowRows`] holds the rows of each open pane (TUMBLE: its window; HOP: its
//! `slide`-wide slice). When a window closes, the rows of its panes become one batch with
//! the window's bounds, and the view's post plan (DataFusion's sort, window functions and the
//! filter above them) runs over it: the results are the batch results over that window's
//! rows by construction.
//!
//! When the plan ranks rows (ROW_NUMBER, RANK or DENSE_RANK) and keeps those ranked N or
//! better, each pane keeps only candidates ([`RankLimit`]): per partition, every row whose
//! ORDER BY value is among the N best values (ties included). Any row the filter keeps, and
//! every row ranked before it, is a candidate, so the ranks computed over candidates are the
//! ranks over all rows. A window's top N is within the union of its panes' top N, so HOP
//! prunes per pane too. State is then N rows per partition and pane, not every event.

use super::check_state_schema;
use super::{LATE_HOP, LATE_TUMBLE, UpdateStats, WindowOperator, split_by_pane};
use super::{bound_array, shifted_ms};
use crate::error::{Result, WeirError};
use crate::sql::WindowKind;
use datafusion::arrow::array::{Array, ArrayRef, Int64Array, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::physical_expr::{PhysicalExpr, PhysicalSortExpr};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Rows a pane takes before its candidates are recomputed, at the least.
const PRUNE_EVERY: usize = 1024;

/// A ranking filter over the window's rows: only rows ranked `n` or better are kept.
#[derive(Debug, Clone)]
pub struct RankLimit {
    pub n: usize,
    /// DENSE_RANK: ranks count distinct values, so N distinct values are kept.
    pub dense: bool,
    /// PARTITION BY expressions other than the window bounds, over the held rows.
    pub partition: Vec<Arc<dyn PhysicalExpr>>,
    /// ORDER BY of the ranking.
    pub order: Vec<PhysicalSortExpr>,
}

impl RankLimit {
    fn describe(&self) -> String {
        let order: Vec<String> = self.order.iter().map(|o| o.to_string()).collect();
        let mut s = format!(
            "keeps the {} best {}by [{}]",
            self.n,
            if self.dense { "distinct values " } else { "" },
            order.join(", ")
        );
        if !self.partition.is_empty() {
            let p: Vec<String> = self.partition.iter().map(|e| e.to_string()).collect();
            s.push_str(&format!(" per window and [{}]", p.join(", ")));
        } else {
            s.push_str(" per window");
        }
        s
    }

    /// The rows of `batch` that can still be ranked `n` or better, in their order.
    fn candidates(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let n = batch.num_rows();
        if n <= self.n {
            return Ok(batch.clone());
        }
        let order = self
            .order
            .iter()
            .map(|o| o.expr.evaluate(batch).and_then(|v| v.into_array(n)))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let converter = RowConverter::new(
            self.order
                .iter()
                .zip(&order)
                .map(|(o, a)| SortField::new_with_options(a.data_type().clone(), o.options))
                .collect(),
        )?;
        let values = converter.convert_columns(&order)?;
        let mut keep: Vec<u32> = Vec::new();
        if self.partition.is_empty() {
            self.best((0..n as u32).collect(), &values, &mut keep);
        } else {
            let keys = self
                .partition
                .iter()
                .map(|e| e.evaluate(batch).and_then(|v| v.into_array(n)))
                .collect::<datafusion::error::Result<Vec<_>>>()?;
            let key_converter = RowConverter::new(
                keys.iter()
                    .map(|a| SortField::new(a.data_type().clone()))
                    .collect(),
            )?;
            let key_rows = key_converter.convert_columns(&keys)?;
            let mut parts: HashMap<&[u8], Vec<u32>> = HashMap::new();
            for i in 0..n {
                parts
                    .entry(key_rows.row(i).data())
                    .or_default()
                    .push(i as u32);
            }
            for (_, rows) in parts {
                self.best(rows, &values, &mut keep);
            }
        }
        if keep.len() == n {
            return Ok(batch.clone());
        }
        keep.sort_unstable();
        Ok(take_record_batch(batch, &UInt32Array::from(keep))?)
    }

    /// Add to `keep` the rows of one partition whose value is among the `n` best.
    fn best(&self, mut rows: Vec<u32>, values: &Rows, keep: &mut Vec<u32>) {
        let n = self.n;
        if rows.len() <= n {
            keep.extend(rows);
            return;
        }
        let cmp = |a: &u32, b: &u32| values.row(*a as usize).cmp(&values.row(*b as usize));
        let threshold = if self.dense {
            // The n-th distinct value, in sorted order.
            rows.sort_unstable_by(cmp);
            let mut distinct = 0;
            let mut last: Option<u32> = None;
            let mut threshold = *rows.last().unwrap_or(&0);
            for &r in &rows {
                if last.is_none_or(|l| values.row(l as usize) != values.row(r as usize)) {
                    distinct += 1;
                    if distinct > n {
                        break;
                    }
                    last = Some(r);
                    threshold = r;
                }
            }
            threshold
        } else {
            // The n-th best row: every row ranked n or better is at most as far as it.
            let (_, nth, _) = rows.select_nth_unstable_by(n - 1, cmp);
            *nth
        };
        let t = values.row(threshold as usize);
        keep.extend(rows.into_iter().filter(|&r| values.row(r as usize) <= t));
    }
}

/// The rows held for one pane.
#[derive(Default)]
struct Pane {
    batches: Vec<RecordBatch>,
    rows: usize,
    /// Rows after the last time candidates were recomputed over all of them.
    pruned: usize,
}

impl Pane {
    fn take(&mut self, batch: RecordBatch) {
        self.rows += batch.num_rows();
        self.batches.push(batch);
    }

    fn bytes(&self) -> usize {
        self.batches
            .iter()
            .map(RecordBatch::get_array_memory_size)
            .sum()
    }
}

/// The rows of each open pane of a TUMBLE or HOP window (see the module docs).
pub struct WindowRows {
    kind: WindowKind,
    slide: i64,
    size: i64,
    input_time_column: String,
    /// The rows held: the pre plan's output.
    schema: SchemaRef,
    /// The column a row's pane is read from, and what to subtract from it (ms):
    /// `window_start` (0) or `window_end` (the size).
    time_column: usize,
    time_shift: i64,
    start_column: Option<usize>,
    end_column: Option<usize>,
    limit: Option<RankLimit>,
    panes: BTreeMap<i64, Pane>,
    closed_through: i64,
}

impl WindowRows {
    /// Hold rows of `schema` (the pre plan's output) per pane of `kind`; `limit` prunes them
    /// to top-N candidates.
    pub fn try_new(
        kind: WindowKind,
        input_time_column: String,
        schema: SchemaRef,
        limit: Option<RankLimit>,
    ) -> Result<Self> {
        let (slide, size) = match kind {
            WindowKind::Tumble { size_ms } => (size_ms, size_ms),
            WindowKind::Hop { slide_ms, size_ms } => (slide_ms, size_ms),
            WindowKind::Session { .. } => {
                return Err(WeirError::user(
                    "window functions over unaggregated rows (top-N per window) need a TUMBLE \
                     or HOP window; a SESSION's rows are known only when it closes: aggregate \
                     per session first, then rank the aggregated rows",
                ));
            }
        };
        let start_column = schema.index_of("window_start").ok();
        let end_column = schema.index_of("window_end").ok();
        let (time_column, time_shift) = match (start_column, end_column) {
            (Some(i), _) => (i, 0),
            (None, Some(i)) => (i, size),
            (None, None) => {
                return Err(WeirError::user(
                    "window functions over a stream must PARTITION BY window_start (or \
                     window_end), so that each window is ranked on its own",
                ));
            }
        };
        if !matches!(
            schema.field(time_column).data_type(),
            DataType::Timestamp(_, _)
        ) {
            return Err(WeirError::user(format!(
                "the window column must be a timestamp, it is {}",
                schema.field(time_column).data_type()
            )));
        }
        Ok(WindowRows {
            kind,
            slide,
            size,
            input_time_column,
            schema,
            time_column,
            time_shift,
            start_column,
            end_column,
            limit,
            panes: BTreeMap::new(),
            closed_through: i64::MIN,
        })
    }

    /// Each row's pane start (ms).
    fn panes_of(&self, batch: &RecordBatch) -> Result<Vec<Option<i64>>> {
        shifted_ms(batch.column(self.time_column), self.time_shift)
    }

    /// Add rows to pane `p`, recomputing its candidates when enough came in.
    fn add(&mut self, p: i64, batch: RecordBatch) -> Result<()> {
        let batch = match &self.limit {
            Some(l) if batch.num_rows() > l.n => l.candidates(&batch)?,
            _ => batch,
        };
        let pane = self.panes.entry(p).or_default();
        pane.take(batch);
        if let Some(l) = &self.limit
            && pane.batches.len() > 1
            && pane.rows >= pane.pruned.saturating_mul(2).max(PRUNE_EVERY)
        {
            let all = concat_batches(&self.schema, &pane.batches)?;
            let kept = l.candidates(&all)?;
            pane.rows = kept.num_rows();
            pane.pruned = pane.rows;
            pane.batches = vec![kept];
        }
        Ok(())
    }

    /// The window starting at `s`: the rows of its panes, with its bounds.
    fn window(&self, s: i64) -> Result<Option<RecordBatch>> {
        let parts: Vec<&RecordBatch> = (0..self.size / self.slide)
            .map(|j| s + j * self.slide)
            .filter_map(|p| self.panes.get(&p))
            .flat_map(|pane| pane.batches.iter())
            .collect();
        let rows: usize = parts.iter().map(|b| b.num_rows()).sum();
        if rows == 0 {
            return Ok(None);
        }
        let batch = concat_batches(&self.schema, parts)?;
        let mut cols = batch.columns().to_vec();
        if let Some(i) = self.start_column {
            cols[i] = bound_array(vec![s; rows], self.schema.field(i).data_type())?;
        }
        if let Some(i) = self.end_column {
            cols[i] = bound_array(
                vec![s.saturating_add(self.size); rows],
                self.schema.field(i).data_type(),
            )?;
        }
        Ok(Some(RecordBatch::try_new(self.schema.clone(), cols)?))
    }

    /// The starts of the windows containing pane `p` that end after `after`, oldest first.
    fn windows_of(&self, p: i64, after: i64) -> impl Iterator<Item = i64> + use<> {
        super::panes::windows_of(self.slide, self.size, p, after)
    }

    fn state_schema(&self) -> SchemaRef {
        let mut fields = vec![Field::new("__pane", DataType::Int64, false)];
        fields.extend(
            self.schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true)),
        );
        Arc::new(Schema::new(fields))
    }
}

impl WindowOperator for WindowRows {
    fn into_aggregator(
        self: Box<Self>,
    ) -> std::result::Result<crate::window::WindowAggregator, Box<dyn WindowOperator>> {
        Err(self)
    }
    fn configure(&mut self, every: Option<std::time::Duration>) -> Result<()> {
        if every.is_some() {
            return Err(WeirError::user(
                "EMIT EVERY is not supported yet on views that rank unaggregated rows (top-N \
                 per window): their results come when each window closes",
            ));
        }
        Ok(())
    }

    fn input_time_column(&self) -> &str {
        &self.input_time_column
    }

    fn partition_exprs(&self) -> Vec<Arc<dyn PhysicalExpr>> {
        self.limit
            .as_ref()
            .map(|l| l.partition.clone())
            .unwrap_or_default()
    }

    fn key_names(&self) -> Vec<String> {
        // Several rows per window, with nothing known to tell them apart: appended.
        vec![]
    }

    fn describe(&self) -> String {
        let window = match self.kind {
            WindowKind::Tumble { size_ms } => format!("tumble {size_ms} ms"),
            WindowKind::Hop { slide_ms, size_ms } => {
                format!("hop {size_ms} ms every {slide_ms} ms (panes of {slide_ms} ms)")
            }
            WindowKind::Session { gap_ms } => format!("session gap {gap_ms} ms"),
        };
        let held = match &self.limit {
            Some(l) => l.describe(),
            None => "keeps every row".to_string(),
        };
        format!("WindowRows: {window}, {held}")
    }

    fn open_windows(&self) -> usize {
        let starts: BTreeSet<i64> = self
            .panes
            .keys()
            .flat_map(|&p| self.windows_of(p, self.closed_through))
            .collect();
        starts.len()
    }

    fn open_groups(&self) -> usize {
        self.panes.values().map(|p| p.rows).sum()
    }

    fn state_bytes(&self) -> usize {
        self.panes.values().map(Pane::bytes).sum()
    }

    fn update(&mut self, batch: &RecordBatch) -> Result<UpdateStats> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(UpdateStats::default());
        }
        let panes = self.panes_of(batch)?;
        let (size, closed) = (self.size, self.closed_through);
        let reason = match self.kind {
            WindowKind::Tumble { .. } => LATE_TUMBLE,
            _ => LATE_HOP,
        };
        let on_time = |t: &Option<i64>| matches!(t, Some(p) if p.saturating_add(size) > closed);
        let first = panes[0];
        if on_time(&first) && panes.iter().all(|t| *t == first) {
            self.add(first.unwrap_or_default(), batch.clone())?;
            return Ok(UpdateStats {
                accepted: n as u64,
                ..Default::default()
            });
        }
        let (by_pane, late) = split_by_pane(&panes, size, closed, reason);
        let accepted = n - late.len();
        for (p, rows) in by_pane {
            let part = take_record_batch(batch, &UInt32Array::from(rows))?;
            self.add(p, part)?;
        }
        Ok(UpdateStats {
            accepted: accepted as u64,
            late: late.len() as u64,
            late_rows: late,
        })
    }

    fn close(&mut self, watermark_ms: i64) -> Result<Vec<RecordBatch>> {
        let before = self.closed_through;
        if watermark_ms <= before {
            return Ok(vec![]);
        }
        self.closed_through = watermark_ms;
        let mut starts = BTreeSet::new();
        for &p in self.panes.range(..watermark_ms).map(|(p, _)| p) {
            for s in self.windows_of(p, before) {
                if s.saturating_add(self.size) <= watermark_ms {
                    starts.insert(s);
                }
            }
        }
        let mut out = Vec::with_capacity(starts.len());
        for s in starts {
            out.extend(self.window(s)?);
        }
        // A pane's last window starts at the pane.
        let size = self.size;
        self.panes
            .retain(|p, _| p.saturating_add(size) > watermark_ms);
        Ok(out)
    }

    fn closed_through(&self) -> i64 {
        self.closed_through
    }

    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let schema = self.state_schema();
        let mut out = Vec::new();
        for (&p, pane) in &self.panes {
            for b in &pane.batches {
                if b.num_rows() == 0 {
                    continue;
                }
                let n = b.num_rows();
                let mut cols: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(vec![p; n]))];
                cols.extend(b.columns().iter().cloned());
                out.push(RecordBatch::try_new(schema.clone(), cols)?);
            }
        }
        Ok(out)
    }

    fn restore(
        &mut self,
        batches: &[RecordBatch],
        closed_through: i64,
        _emit_period: Option<i64>,
    ) -> Result<()> {
        self.closed_through = closed_through;
        self.panes.clear();
        let schema = self.state_schema();
        for batch in batches {
            check_state_schema("window rows", batch, &schema)?;
            let panes = batch
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| WeirError::Internal("window rows pane column".into()))?;
            let mut by_pane: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
            for (i, p) in panes.values().iter().enumerate() {
                by_pane.entry(*p).or_default().push(i as u32);
            }
            let rows = RecordBatch::try_new(self.schema.clone(), batch.columns()[1..].to_vec())?;
            for (p, idx) in by_pane {
                let part = take_record_batch(&rows, &UInt32Array::from(idx))?;
                let pane = self.panes.entry(p).or_default();
                pane.take(part);
                pane.pruned = pane.rows;
            }
        }
        Ok(())
    }

    fn output_watermark(&self, input_watermark: i64) -> i64 {
        if input_watermark == i64::MIN || input_watermark == i64::MAX {
            return input_watermark;
        }
        super::panes::first_open_window(self.slide, self.size, input_watermark)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::TimestampMillisecondArray;
    use datafusion::arrow::compute::SortOptions;
    use datafusion::arrow::datatypes::TimeUnit;
    use datafusion::physical_expr::expressions::Column;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Int64, true),
            Field::new("id", DataType::Int64, false),
            Field::new(
                "window_start",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
        ]))
    }

    /// Rank of each row (RANK or DENSE_RANK) in its partition, by `v` descending, nulls last.
    fn ranks(rows: &[(i64, Option<i64>, i64)], dense: bool) -> HashMap<i64, usize> {
        let key = |v: Option<i64>| std::cmp::Reverse(v.map_or(i64::MIN, |v| v));
        rows.iter()
            .map(|&(k, v, id)| {
                let better: BTreeSet<_> = rows
                    .iter()
                    .filter(|r| r.0 == k && key(r.1) < key(v))
                    .map(|r| if dense { r.1 } else { Some(r.2) })
                    .collect();
                (id, better.len() + 1)
            })
            .collect()
    }

    /// A top-N partitioned by a key stores its rows per key partition of that key in a
    /// checkpoint (each row in its key's partition, none lost), and a restore into another
    /// count closes the same windows.
    #[tokio::test]
    async fn ranked_rows_are_checkpointed_per_key_partition() {
        use crate::dataflow::keyed::{Keying, Windows};
        use crate::dataflow::partition::key_partitions;
        let limit = || RankLimit {
            n: 2,
            dense: false,
            partition: vec![Arc::new(Column::new("k", 0))],
            order: vec![PhysicalSortExpr::new(
                Arc::new(Column::new("v", 1)),
                SortOptions {
                    descending: true,
                    nulls_first: false,
                },
            )],
        };
        let rows = |keying| {
            let w = WindowRows::try_new(
                WindowKind::Tumble { size_ms: 10_000 },
                "ts".into(),
                schema(),
                Some(limit()),
            )
            .unwrap();
            Windows::new(Box::new(w), keying).unwrap()
        };
        let keying = |key_partitions, repartition| Keying {
            key_partitions,
            workers: 1,
            repartition,
        };
        let n = 600i64;
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from_iter_values((0..n).map(|i| i % 40))),
                Arc::new(Int64Array::from_iter_values((0..n).map(|i| (i * 7) % 23))),
                Arc::new(Int64Array::from_iter_values(0..n)),
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    (0..n).map(|i| (i % 3) * 10_000),
                )),
            ],
        )
        .unwrap();
        let mut a = rows(keying(8, false));
        assert_eq!(a.key_partitions(), 8);
        a.update(&batch, false).await.unwrap();
        a.close(10_000).await.unwrap();
        let held = a.figures().open_groups as usize;
        let state = a.snapshot(1).await.unwrap();
        assert_eq!(state.len(), 8);
        let mut stored = 0;
        for (kp, batches) in state.iter().enumerate() {
            for b in batches {
                // The state's first column is the pane, then the rows: `k` is column 1.
                let parts = key_partitions(&[b.column(1).clone()], b.num_rows(), 8).unwrap();
                assert!(parts.iter().all(|p| *p as usize == kp), "{parts:?} in {kp}");
                stored += b.num_rows();
            }
        }
        assert_eq!(stored, held);
        assert!(state.iter().filter(|s| !s.is_empty()).count() > 4);
        let closed = a.closed_through().unwrap();
        let mut b = rows(keying(3, true));
        b.restore(state, 8, closed, None).unwrap();
        assert_eq!(b.key_partitions(), 3);
        let sorted = |batches: Vec<RecordBatch>| {
            let mut out: Vec<(i64, i64)> = Vec::new();
            for b in &batches {
                let col = |i: usize| b.column(i).as_any().downcast_ref::<Int64Array>().unwrap();
                out.extend((0..b.num_rows()).map(|r| (col(0).value(r), col(2).value(r))));
            }
            out.sort_unstable();
            out
        };
        let (want, got) = (
            sorted(a.close(i64::MAX).await.unwrap()),
            sorted(b.close(i64::MAX).await.unwrap()),
        );
        assert!(want.len() > 100, "{}", want.len());
        assert_eq!(got, want);
    }

    #[test]
    fn candidates_keep_every_row_ranked_n_or_better_with_its_rank() {
        let mut seed = 7u64;
        let mut next = |m: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % m
        };
        for dense in [false, true] {
            for partitions in [1, 5] {
                let rows: Vec<(i64, Option<i64>, i64)> = (0..5000)
                    .map(|id| {
                        let v = (next(10) > 0).then(|| next(60) as i64);
                        (next(partitions) as i64, v, id)
                    })
                    .collect();
                let limit = RankLimit {
                    n: 3,
                    dense,
                    partition: if partitions > 1 {
                        vec![Arc::new(Column::new("k", 0))]
                    } else {
                        vec![]
                    },
                    order: vec![PhysicalSortExpr::new(
                        Arc::new(Column::new("v", 1)),
                        SortOptions {
                            descending: true,
                            nulls_first: false,
                        },
                    )],
                };
                let mut w = WindowRows::try_new(
                    WindowKind::Tumble { size_ms: 10_000 },
                    "ts".into(),
                    schema(),
                    Some(limit),
                )
                .unwrap();
                let mut i = 0;
                while i < rows.len() {
                    let len = (1 + next(700) as usize).min(rows.len() - i);
                    let part = &rows[i..i + len];
                    let batch = RecordBatch::try_new(
                        schema(),
                        vec![
                            Arc::new(Int64Array::from_iter_values(part.iter().map(|r| r.0))),
                            Arc::new(Int64Array::from_iter(part.iter().map(|r| r.1))),
                            Arc::new(Int64Array::from_iter_values(part.iter().map(|r| r.2))),
                            Arc::new(TimestampMillisecondArray::from(vec![0; len])),
                        ],
                    )
                    .unwrap();
                    assert_eq!(w.update(&batch).unwrap().accepted, len as u64);
                    i += len;
                }
                assert!(w.open_groups() < 2000, "pruned: {}", w.open_groups());
                let closed = w.close(10_000).unwrap();
                assert_eq!(closed.len(), 1);
                let b = &closed[0];
                let col = |i: usize| b.column(i).as_any().downcast_ref::<Int64Array>().unwrap();
                let kept: Vec<(i64, Option<i64>, i64)> = (0..b.num_rows())
                    .map(|r| {
                        (
                            col(0).value(r),
                            col(1).is_valid(r).then(|| col(1).value(r)),
                            col(2).value(r),
                        )
                    })
                    .collect();
                let (all, within) = (ranks(&rows, dense), ranks(&kept, dense));
                let top: BTreeSet<i64> = all
                    .iter()
                    .filter(|(_, r)| **r <= 3)
                    .map(|(id, _)| *id)
                    .collect();
                let kept_top: BTreeSet<i64> = within
                    .iter()
                    .filter(|(_, r)| **r <= 3)
                    .map(|(id, _)| *id)
                    .collect();
                assert_eq!(kept_top, top, "dense {dense}, partitions {partitions}");
                for id in &top {
                    assert_eq!(within[id], all[id]);
                }
                assert!(w.panes.is_empty());
            }
        }
    }
}
