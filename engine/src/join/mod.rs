//! Incremental symmetric hash join of two append-only streams.
//!
//! A view that joins two streams keeps, for each side, every row that side has delivered
//! (after the side's own stateless part of the plan: its filters and projections) and a
//! hash index from the join key (Arrow's row format, so any key types work) to those rows.
//! A micro-batch arriving on one side first probes the other side's index and emits the
//! matching pairs, then is added to its own side. So a pair is emitted exactly once, by
//! whichever of its two rows arrived second (for a self-join, where one batch feeds both
//! sides, the left side takes it first: pairs within the batch come out when the right
//! side takes it). Probing costs O(rows in the batch + matches), never O(state).
//!
//! The residual join filter (non-equality conditions such as
//! `b.ts BETWEEN a.ts AND a.ts + INTERVAL '1' HOUR`) runs on the candidate pairs, and the
//! join's embedded projection, if DataFusion put one in, picks the output columns.
//!
//! State grows with the inputs, except for window joins: when a key pair is the window
//! column (`window_start` or `window_end`) of two windowed views, a stored row whose window
//! the other side's watermark has passed can never match again and is evicted (see
//! [`StreamJoin::set_time_key`] and [`StreamJoin::advance`]).
//!
//! Outer joins (`LEFT`, `RIGHT`, `FULL`) are window joins or time-bounded joins (a
//! [`band::Band`] such as `b.ts BETWEEN a.ts AND a.ts + INTERVAL '1' HOUR`): a stored row
//! of an outer side remembers whether it has matched, and when it is evicted (no row of the
//! other side can match it any more) an unmatched one is emitted with NULLs for the other
//! side. A row whose key is NULL never matches: on an outer side it comes out at once,
//! NULL-padded. The output stays append-only, except for an outer join with neither a
//! window nor a time band: nothing says when a match can no longer come, so an unmatched
//! row comes out at once, NULL-padded, and is retracted when its first match comes (the
//! view is an updating view, `StreamJoin::push_changes`). A time-bounded outer join evicts both sides
//! by the band, so rows behind their own input's watermark are late: they are dropped
//! (counted), as a window drops rows for windows that have closed.
//!
//! Checkpoints hold each side's stored rows ([`StreamJoin::snapshot`]); the index is rebuilt
//! from them on restore.

use crate::error::{Result, WeirError};
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, UInt32Array};
use datafusion::arrow::compute::kernels::boolean::{and, not};
use datafusion::arrow::compute::{
    cast, concat_batches, filter_record_batch, interleave, is_not_null, take,
};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::{HashMap, JoinSide, JoinType, NullEquality};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::joins::utils::JoinFilter;
use std::collections::BTreeMap;
use std::sync::Arc;

pub mod band;
mod checkpoint;
mod evict;
pub mod keyed;
pub use band::Band;
use evict::shift;

/// What probing found: the pairs, and which new rows and which stored rows matched.
#[derive(Default)]
struct Probed {
    pairs: Option<RecordBatch>,
    /// Rows of the probing batch in some pair.
    probe: Vec<u32>,
    /// Stored rows of the other side in some pair.
    stored: Vec<u32>,
}

/// The end of a chain in [`SideState::next`].
const NONE: u32 = u32::MAX;

/// A stored batch smaller than this is merged with its small neighbours.
const SMALL_BATCH_ROWS: usize = 4096;
/// How many small batches may pile up at the end of a side before they are merged.
const MAX_SMALL_BATCHES: usize = 16;

/// What a join key column is, for eviction: the window bound of a windowed input, whose
/// watermark is a lower bound on the `window_start` of the rows it will still emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeKey {
    WindowStart,
    WindowEnd,
}

/// One side's stored rows and index.
struct SideState {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    /// Memory of `batches`.
    batch_bytes: usize,
    /// Stored row number -> (batch, row within the batch).
    locs: Vec<(u32, u32)>,
    /// Stored row number -> the previous stored row with the same key, or [`NONE`].
    next: Vec<u32>,
    /// Key (row format) -> the newest stored row with that key.
    index: HashMap<Box<[u8]>, u32>,
    key_bytes: usize,
    /// Stored row number -> the time key in ms (only when eviction is on).
    times: Vec<i64>,
    /// Stored row number -> whether it has matched a row of the other side (only for an
    /// outer side).
    matched: Vec<bool>,
    /// How many stored rows have each time key value (only when eviction is on).
    time_counts: BTreeMap<i64, usize>,
}

impl SideState {
    fn new(schema: SchemaRef) -> Self {
        SideState {
            schema,
            batches: vec![],
            batch_bytes: 0,
            locs: vec![],
            next: vec![],
            index: HashMap::default(),
            key_bytes: 0,
            times: vec![],
            matched: vec![],
            time_counts: BTreeMap::new(),
        }
    }

    fn rows(&self) -> usize {
        self.locs.len()
    }

    fn bytes(&self) -> usize {
        self.batch_bytes
            + self.locs.capacity() * 8
            + self.next.capacity() * 4
            + self.times.capacity() * 8
            + self.matched.capacity()
            + self.key_bytes
            + self.index.capacity() * (std::mem::size_of::<(Box<[u8]>, u32)>() + 1)
    }

    /// Column `i` of the stored rows at `locs` ((batch, row) each), in that order.
    fn column_at(&self, i: usize, locs: &[(usize, usize)]) -> Result<ArrayRef> {
        let arrays: Vec<&dyn Array> = self.batches.iter().map(|b| b.column(i).as_ref()).collect();
        Ok(interleave(&arrays, locs)?)
    }

    /// Merge the small batches at the end into one, so one-row micro-batches do not pile
    /// up (each row is merged O(1) times: batches that grew large stay as they are).
    fn merge_small_tail(&mut self) -> Result<()> {
        let first_small = self
            .batches
            .iter()
            .rposition(|b| b.num_rows() >= SMALL_BATCH_ROWS)
            .map_or(0, |i| i + 1);
        if self.batches.len() - first_small <= MAX_SMALL_BATCHES {
            return Ok(());
        }
        let tail: Vec<RecordBatch> = self.batches.drain(first_small..).collect();
        let merged = concat_batches(&self.schema, &tail)?;
        let tail_bytes: usize = tail.iter().map(|b| b.get_array_memory_size()).sum();
        self.batch_bytes =
            (self.batch_bytes + merged.get_array_memory_size()).saturating_sub(tail_bytes);
        let n = merged.num_rows();
        self.batches.push(merged);
        let batch = (self.batches.len() - 1) as u32;
        let start = self.locs.len() - n;
        for (i, loc) in self.locs[start..].iter_mut().enumerate() {
            *loc = (batch, i as u32);
        }
        Ok(())
    }
}

/// The state of a join of two streams and how to compute its output.
pub struct StreamJoin {
    /// Key expressions of each side, over that side's rows.
    keys: [Vec<Arc<dyn PhysicalExpr>>; 2],
    /// The type both sides' keys are compared as.
    key_types: Vec<DataType>,
    converter: RowConverter,
    nulls_equal: bool,
    filter: Option<JoinFilter>,
    /// Output column -> column of left ++ right.
    projection: Vec<usize>,
    output_schema: SchemaRef,
    sides: [SideState; 2],
    /// Which key is a window bound on both sides, and what each side's column is.
    time_key: Option<(usize, [TimeKey; 2])>,
    /// The time band that evicts both sides (a time-bounded outer join), when there is no
    /// time key.
    band: Option<Band>,
    /// Rows dropped as late since [`StreamJoin::take_late`] (time-bounded joins).
    late: u64,
    /// An outer join with nothing to evict by: its output is a changelog (an updating
    /// view), unmatched rows come out at once and are retracted at their first match.
    retracts: bool,
    /// Each input's watermark as last seen by [`StreamJoin::advance`].
    watermarks: [i64; 2],
    /// Whether each side's unmatched rows are emitted (NULL-padded): LEFT, RIGHT, FULL.
    outer: [bool; 2],
    /// The names of each side's input, for display.
    inputs: [String; 2],
    /// Where each key column of each side comes from: `(input, column)` when it is a
    /// column of the input read unchanged (see `plan::column_origin`).
    pub key_origins: Vec<[Option<String>; 2]>,
}

/// Evaluate `exprs` over `batch`, each as an array of `types[i]`.
fn eval_keys(
    exprs: &[Arc<dyn PhysicalExpr>],
    types: &[DataType],
    batch: &RecordBatch,
) -> Result<Vec<ArrayRef>> {
    exprs
        .iter()
        .zip(types)
        .map(|(e, t)| {
            let a = e.evaluate(batch)?.into_array(batch.num_rows())?;
            Ok(if a.data_type() == t { a } else { cast(&a, t)? })
        })
        .collect()
}

/// Rows whose keys are all non-null (`None`: every row).
fn non_null_keys(keys: &[ArrayRef]) -> Result<Option<BooleanArray>> {
    let mut mask: Option<BooleanArray> = None;
    for k in keys.iter().filter(|k| k.null_count() > 0) {
        let m = is_not_null(k.as_ref())?;
        mask = Some(match mask {
            Some(prev) => and(&prev, &m)?,
            None => m,
        });
    }
    Ok(mask)
}

/// A window bound as epoch ms.
fn time_ms(a: &ArrayRef) -> Result<Vec<i64>> {
    let ms = cast(a, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
    let ms = cast(&ms, &DataType::Int64)?;
    let ms = ms
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or_else(|| WeirError::Internal("time key cast".into()))?;
    Ok(ms.iter().map(|v| v.unwrap_or(i64::MIN)).collect())
}

fn other(side: usize) -> usize {
    1 - side
}

impl StreamJoin {
    /// Build from the hash join DataFusion planned; `inputs` names each side's stream.
    pub fn try_new(join: &HashJoinExec, inputs: [String; 2]) -> Result<Self> {
        let left_schema = join.left().schema();
        let right_schema = join.right().schema();
        let mut keys: [Vec<Arc<dyn PhysicalExpr>>; 2] = [vec![], vec![]];
        let mut key_types = Vec::new();
        for (l, r) in join.on() {
            let lt = l.data_type(&left_schema)?;
            let rt = r.data_type(&right_schema)?;
            if lt != rt {
                return Err(WeirError::user(format!(
                    "join keys {l} and {r} have different types ({lt} and {rt}); cast one of them"
                )));
            }
            keys[0].push(l.clone());
            keys[1].push(r.clone());
            key_types.push(lt);
        }
        if key_types.is_empty() {
            return Err(WeirError::Internal("hash join without keys".into()));
        }
        let converter = RowConverter::new(
            key_types
                .iter()
                .map(|t| SortField::new(t.clone()))
                .collect(),
        )?;
        let width = left_schema.fields().len() + right_schema.fields().len();
        let projection = match &join.projection {
            Some(p) => p.to_vec(),
            None => (0..width).collect(),
        };
        let key_origins = vec![[None, None]; key_types.len()];
        let outer = match join.join_type() {
            JoinType::Inner => [false, false],
            JoinType::Left => [true, false],
            JoinType::Right => [false, true],
            JoinType::Full => [true, true],
            other => {
                return Err(WeirError::user(format!(
                    "inner and outer joins of two streams are supported, not a {other} join \
                     (IN, EXISTS and their negations over a second stream plan as semi and \
                     anti joins)"
                )));
            }
        };
        Ok(StreamJoin {
            keys,
            key_types,
            converter,
            nulls_equal: join.null_equality() == NullEquality::NullEqualsNull,
            filter: join.filter().cloned(),
            projection,
            output_schema: join.schema(),
            sides: [SideState::new(left_schema), SideState::new(right_schema)],
            time_key: None,
            band: None,
            late: 0,
            retracts: false,
            watermarks: [i64::MIN, i64::MIN],
            outer,
            inputs,
            key_origins,
        })
    }

    pub fn output_schema(&self) -> SchemaRef {
        self.output_schema.clone()
    }

    /// The join keys as written (`left = right` each), for display.
    pub fn key_names(&self) -> Vec<String> {
        self.keys[0]
            .iter()
            .zip(&self.keys[1])
            .map(|(l, r)| format!("{l} = {r}"))
            .collect()
    }

    /// The schema of the rows stored for `side` (0 left, 1 right).
    pub fn side_schema(&self, side: usize) -> SchemaRef {
        self.sides[side].schema.clone()
    }

    /// Turn on eviction: key `key` is a window bound on both sides, of the given kinds.
    /// Must be called before any row arrives.
    pub fn set_time_key(&mut self, key: usize, kinds: [TimeKey; 2]) {
        self.time_key = Some((key, kinds));
    }

    pub fn time_key(&self) -> Option<(usize, [TimeKey; 2])> {
        self.time_key
    }

    /// The time band of the join's conditions, if they bound both ends.
    pub fn band_of_filter(&self) -> Option<Band> {
        self.filter.as_ref().and_then(band::band_of)
    }

    /// The band's time columns (left, right), when it evicts.
    pub fn band_columns(&self) -> Vec<String> {
        self.band
            .map(|b| {
                (0..2)
                    .map(|s| self.sides[s].schema.field(b.columns[s]).name().clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Make an outer join without a window or time band an updating join (see
    /// [`StreamJoin::push_changes`]). Must be called before any row arrives.
    pub fn set_retracting(&mut self) {
        self.retracts = true;
    }

    /// Whether the output is a changelog ([`StreamJoin::set_retracting`]).
    pub fn retracts(&self) -> bool {
        self.retracts
    }

    /// Turn on eviction by `band` (and the dropping of late rows). Must be called before
    /// any row arrives.
    pub fn set_band(&mut self, band: Band) {
        self.band = Some(band);
    }

    /// Each input's watermark as last seen (for a checkpoint: restored with
    /// [`StreamJoin::advance`]).
    pub fn input_watermarks(&self) -> [i64; 2] {
        self.watermarks
    }

    /// Rows dropped as late since the last call.
    pub fn take_late(&mut self) -> u64 {
        std::mem::take(&mut self.late)
    }

    /// The join's watermark given its inputs': the least of them, and for a time band
    /// also the least time a row of either side still to come out (a new row, or a stored
    /// row that may match or come out NULL-padded) can have, so that nothing the join
    /// emits is behind its watermark.
    pub fn output_watermark(&self, inputs: [i64; 2]) -> i64 {
        let [l, r] = inputs;
        let least = l.min(r);
        match self.band {
            Some(b) => least
                .min(shift(r, b.hi.saturating_neg()))
                .min(shift(l, b.lo)),
            None => least,
        }
    }

    /// Whether unmatched rows of some side are emitted (an outer join).
    pub fn is_outer(&self) -> bool {
        self.outer.iter().any(|o| *o)
    }

    fn kind_name(&self) -> &'static str {
        match self.outer {
            [false, false] => "inner",
            [true, false] => "left outer",
            [false, true] => "right outer",
            [true, true] => "full outer",
        }
    }

    /// Rows held, both sides.
    pub fn stored_rows(&self) -> usize {
        self.sides.iter().map(SideState::rows).sum()
    }

    /// Distinct keys held, both sides.
    pub fn stored_keys(&self) -> usize {
        self.sides.iter().map(|s| s.index.len()).sum()
    }

    /// Approximate bytes of state.
    pub fn state_bytes(&self) -> usize {
        self.sides.iter().map(SideState::bytes).sum()
    }

    pub fn describe(&self) -> String {
        let keys = self.key_names();
        let mut s = format!(
            "StreamJoin: {} join of {} and {} on [{}]",
            self.kind_name(),
            self.inputs[0],
            self.inputs[1],
            keys.join(", ")
        );
        if let Some(f) = &self.filter {
            s.push_str(&format!(", filter {f}"));
        }
        match (self.time_key, self.band) {
            (Some((k, _)), _) => s.push_str(&format!(
                ", state evicted by watermark on key {}",
                keys.get(k).map(String::as_str).unwrap_or("?")
            )),
            (None, Some(b)) => s.push_str(&format!(
                ", state evicted by watermark on the time band {}.{} - {}.{} in [{} ms, {} ms], \
                 late rows dropped",
                self.inputs[1],
                self.sides[1].schema.field(b.columns[1]).name(),
                self.inputs[0],
                self.sides[0].schema.field(b.columns[0]).name(),
                b.lo,
                b.hi
            )),
            (None, None) if self.retracts => s.push_str(
                ", state kept; an unmatched row comes out at once NULL-padded and is \
                 retracted at its first match (an updating view)",
            ),
            (None, None) => s.push_str(", state kept"),
        }
        s
    }

    /// A batch arrives on `side` (0 left, 1 right; in that side's schema): returns the
    /// pairs it completes (in the join's output schema), then stores it.
    pub fn push(&mut self, side: usize, batch: &RecordBatch) -> Result<Option<RecordBatch>> {
        let (mut out, deletes) = self.push_changes(side, batch)?;
        if !deletes.is_empty() {
            return Err(WeirError::Internal(
                "an updating join's retractions read as appended rows".into(),
            ));
        }
        match out.len() {
            0 => Ok(None),
            1 => Ok(out.pop()),
            _ => Ok(Some(concat_batches(&self.output_schema, &out)?)),
        }
    }

    /// A batch arrives on `side`: the rows it adds to the output and, for an updating
    /// outer join ([`StreamJoin::set_retracting`]), the NULL-padded rows it takes back
    /// (stored rows of an outer side that had no match until now); then it is stored.
    pub fn push_changes(
        &mut self,
        side: usize,
        batch: &RecordBatch,
    ) -> Result<(Vec<RecordBatch>, Vec<RecordBatch>)> {
        if side > 1 {
            return Err(WeirError::Internal(format!("join side {side}")));
        }
        let mut deletes = Vec::new();
        if batch.num_rows() == 0 {
            return Ok((vec![], deletes));
        }
        let on_time;
        let batch = match self.band {
            Some(b) => {
                on_time = self.drop_late(side, batch, b.columns[side])?;
                &on_time
            }
            None => batch,
        };
        if batch.num_rows() == 0 {
            return Ok((vec![], deletes));
        }
        let keys = eval_keys(&self.keys[side], &self.key_types, batch)?;
        let mut out = Vec::new();
        let (batch, keys) = match (self.nulls_equal, non_null_keys(&keys)?) {
            (false, Some(mask)) => {
                // A NULL key never matches: on an outer side the row comes out at once.
                if self.outer[side] {
                    let never = filter_record_batch(batch, &not(&mask)?)?;
                    if never.num_rows() > 0 {
                        out.push(self.padded(side, &never)?);
                    }
                }
                let b = filter_record_batch(batch, &mask)?;
                let k = crate::window::filter_arrays(&keys, &mask)?;
                (b, k)
            }
            _ => (batch.clone(), keys),
        };
        if batch.num_rows() > 0 {
            let rows = self.converter.convert_columns(&keys)?;
            let probed = self.probe(side, &batch, &rows)?;
            if self.outer[other(side)] {
                let stored = &mut self.sides[other(side)].matched;
                let mut first_match = Vec::new();
                for &g in &probed.stored {
                    if !stored[g as usize] {
                        stored[g as usize] = true;
                        first_match.push(g);
                    }
                }
                // Their NULL-padded rows came out when they arrived: take them back.
                if self.retracts && !first_match.is_empty() {
                    let rows = self.rows_at(other(side), &first_match)?;
                    deletes.push(self.padded(other(side), &rows)?);
                }
            }
            let mut matched = Vec::new();
            if self.outer[side] {
                matched = vec![false; batch.num_rows()];
                for i in &probed.probe {
                    matched[*i as usize] = true;
                }
                // Nothing bounds when a match may come: an updating join emits the
                // unmatched rows now, and retracts them at their first match.
                if self.retracts {
                    let alone: BooleanArray = matched.iter().map(|m| Some(!m)).collect();
                    let alone = filter_record_batch(&batch, &alone)?;
                    if alone.num_rows() > 0 {
                        out.push(self.padded(side, &alone)?);
                    }
                }
            }
            out.extend(probed.pairs);
            self.insert(side, batch, &rows, &keys, &matched)?;
        }
        Ok((out, deletes))
    }

    /// Stored rows `rows` (stored row numbers) of `side`, in that order.
    fn rows_at(&self, side: usize, rows: &[u32]) -> Result<RecordBatch> {
        let s = &self.sides[side];
        let locs: Vec<(usize, usize)> = rows
            .iter()
            .map(|&g| {
                let (b, r) = s.locs[g as usize];
                (b as usize, r as usize)
            })
            .collect();
        let cols = (0..s.schema.fields().len())
            .map(|i| s.column_at(i, &locs))
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new_with_options(
            s.schema.clone(),
            cols,
            &RecordBatchOptions::new().with_row_count(Some(locs.len())),
        )?)
    }

    /// `batch` without its rows behind `side`'s watermark on column `column` (counted in
    /// [`StreamJoin::take_late`]). A row without a time is kept: it never matches, and
    /// comes out NULL-padded on an outer side.
    fn drop_late(
        &mut self,
        side: usize,
        batch: &RecordBatch,
        column: usize,
    ) -> Result<RecordBatch> {
        let w = self.watermarks[side];
        let times = batch.column(column);
        let ms = time_ms(times)?;
        let keep: BooleanArray = ms
            .iter()
            .enumerate()
            .map(|(i, t)| Some(times.is_null(i) || *t >= w))
            .collect();
        let late = keep.false_count();
        if late == 0 {
            return Ok(batch.clone());
        }
        self.late += late as u64;
        Ok(filter_record_batch(batch, &keep)?)
    }

    /// Column `c` of left ++ right as (side, column of that side).
    fn side_column(&self, c: usize) -> (usize, usize) {
        let left_width = self.sides[0].schema.fields().len();
        if c < left_width {
            (0, c)
        } else {
            (1, c - left_width)
        }
    }

    /// Rows of `side` without a match: the output with the other side's columns NULL.
    fn padded(&self, side: usize, rows: &RecordBatch) -> Result<RecordBatch> {
        let cols = self
            .projection
            .iter()
            .enumerate()
            .map(|(j, &c)| {
                let (col_side, i) = self.side_column(c);
                if col_side == side {
                    rows.column(i).clone()
                } else {
                    datafusion::arrow::array::new_null_array(
                        self.output_schema.field(j).data_type(),
                        rows.num_rows(),
                    )
                }
            })
            .collect();
        Ok(RecordBatch::try_new_with_options(
            self.output_schema.clone(),
            cols,
            &RecordBatchOptions::new().with_row_count(Some(rows.num_rows())),
        )?)
    }

    /// The pairs of the new rows `batch` (keys `rows`) on `side` with the other side.
    fn probe(
        &self,
        side: usize,
        batch: &RecordBatch,
        rows: &datafusion::arrow::row::Rows,
    ) -> Result<Probed> {
        let stored = &self.sides[other(side)];
        if stored.rows() == 0 {
            return Ok(Probed::default());
        }
        let mut probe_idx: Vec<u32> = Vec::new();
        let mut stored_loc: Vec<(usize, usize)> = Vec::new();
        let mut stored_g: Vec<u32> = Vec::new();
        for i in 0..rows.num_rows() {
            let Some(&head) = stored.index.get(rows.row(i).as_ref()) else {
                continue;
            };
            let mut g = head;
            while g != NONE {
                let (b, r) = stored.locs[g as usize];
                probe_idx.push(i as u32);
                stored_loc.push((b as usize, r as usize));
                stored_g.push(g);
                g = stored.next[g as usize];
            }
        }
        if probe_idx.is_empty() {
            return Ok(Probed::default());
        }
        let left_width = self.sides[0].schema.fields().len();
        // Column `c` of left ++ right for the candidate pairs.
        let column = |c: usize, probe_idx: &UInt32Array, stored_loc: &[(usize, usize)]| {
            let (col_side, i) = self.side_column(c);
            let a: Result<ArrayRef> = if col_side == side {
                Ok(take(batch.column(i).as_ref(), probe_idx, None)?)
            } else {
                stored.column_at(i, stored_loc)
            };
            a
        };
        let mut probe_idx = UInt32Array::from(probe_idx);
        if let Some(f) = &self.filter {
            let cols = f
                .column_indices()
                .iter()
                .map(|ci| {
                    let c = match ci.side {
                        JoinSide::Left => ci.index,
                        _ => left_width + ci.index,
                    };
                    column(c, &probe_idx, &stored_loc)
                })
                .collect::<Result<Vec<_>>>()?;
            let candidates = RecordBatch::try_new_with_options(
                f.schema().clone(),
                cols,
                &RecordBatchOptions::new().with_row_count(Some(probe_idx.len())),
            )?;
            let mask = f
                .expression()
                .evaluate(&candidates)?
                .into_array(candidates.num_rows())?;
            let mask = mask
                .as_any()
                .downcast_ref::<BooleanArray>()
                .ok_or_else(|| WeirError::Internal("join filter is not boolean".into()))?;
            let keep: Vec<usize> = (0..mask.len())
                .filter(|&i| mask.is_valid(i) && mask.value(i))
                .collect();
            if keep.is_empty() {
                return Ok(Probed::default());
            }
            if keep.len() < mask.len() {
                probe_idx = keep.iter().map(|&i| probe_idx.value(i)).collect();
                stored_loc = keep.iter().map(|&i| stored_loc[i]).collect();
                stored_g = keep.iter().map(|&i| stored_g[i]).collect();
            }
        }
        let cols = self
            .projection
            .iter()
            .map(|&c| column(c, &probe_idx, &stored_loc))
            .collect::<Result<Vec<_>>>()?;
        let pairs = RecordBatch::try_new_with_options(
            self.output_schema.clone(),
            cols,
            &RecordBatchOptions::new().with_row_count(Some(probe_idx.len())),
        )?;
        Ok(Probed {
            pairs: Some(pairs),
            probe: probe_idx.values().to_vec(),
            stored: stored_g,
        })
    }

    /// Store `batch` (its non-matchable rows already removed) on `side`; `matched`: on an
    /// outer side, whether each row has matched already.
    fn insert(
        &mut self,
        side: usize,
        batch: RecordBatch,
        rows: &datafusion::arrow::row::Rows,
        keys: &[ArrayRef],
        matched: &[bool],
    ) -> Result<()> {
        let outer = self.outer[side];
        let times = match (self.time_key, self.band) {
            (Some((k, _)), _) => Some(time_ms(&keys[k])?),
            (None, Some(b)) => Some(time_ms(batch.column(b.columns[side]))?),
            (None, None) => None,
        };
        let s = &mut self.sides[side];
        let b = s.batches.len() as u32;
        let first = s.locs.len();
        if first + batch.num_rows() >= NONE as usize {
            return Err(WeirError::user(format!(
                "join state of {} is full ({} rows on one side); window the inputs so it can be evicted",
                self.inputs[side], first
            )));
        }
        for i in 0..rows.num_rows() {
            let g = (first + i) as u32;
            s.locs.push((b, i as u32));
            let key = rows.row(i);
            match s.index.get_mut(key.as_ref()) {
                Some(head) => {
                    s.next.push(*head);
                    *head = g;
                }
                None => {
                    s.next.push(NONE);
                    s.key_bytes += key.as_ref().len();
                    s.index.insert(key.as_ref().into(), g);
                }
            }
        }
        if let Some(times) = times {
            for t in &times {
                *s.time_counts.entry(*t).or_default() += 1;
            }
            s.times.extend(times);
        }
        if outer {
            s.matched.extend_from_slice(matched);
            s.matched.resize(s.locs.len(), false);
        }
        s.batch_bytes += batch.get_array_memory_size();
        s.batches.push(batch);
        s.merge_small_tail()
    }
}

#[cfg(test)]
mod tests;
