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
//! Checkpoints hold each side's stored rows ([`StreamJoin::snapshot`]); the index is rebuilt
//! from them on restore.

use crate::error::{Result, WeirError};
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, UInt32Array};
use datafusion::arrow::compute::kernels::boolean::and;
use datafusion::arrow::compute::{
    cast, concat_batches, filter_record_batch, interleave, is_not_null, take,
};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::{HashMap, JoinSide, NullEquality};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::joins::utils::JoinFilter;
use std::collections::BTreeMap;
use std::sync::Arc;

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
            + self.key_bytes
            + self.index.capacity() * (std::mem::size_of::<(Box<[u8]>, u32)>() + 1)
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
    /// Each input's watermark as last seen by [`StreamJoin::advance`].
    watermarks: [i64; 2],
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
            watermarks: [i64::MIN, i64::MIN],
            inputs,
            key_origins,
        })
    }

    pub fn output_schema(&self) -> SchemaRef {
        self.output_schema.clone()
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
        let keys: Vec<String> = self.keys[0]
            .iter()
            .zip(&self.keys[1])
            .map(|(l, r)| format!("{l} = {r}"))
            .collect();
        let mut s = format!(
            "StreamJoin: inner join of {} and {} on [{}]",
            self.inputs[0],
            self.inputs[1],
            keys.join(", ")
        );
        if let Some(f) = &self.filter {
            s.push_str(&format!(", filter {f}"));
        }
        match self.time_key {
            Some((k, _)) => s.push_str(&format!(
                ", state evicted by watermark on key {}",
                keys.get(k).map(String::as_str).unwrap_or("?")
            )),
            None => s.push_str(", state kept"),
        }
        s
    }

    /// A batch arrives on `side` (0 left, 1 right; in that side's schema): returns the
    /// pairs it completes (in the join's output schema), then stores it.
    pub fn push(&mut self, side: usize, batch: &RecordBatch) -> Result<Option<RecordBatch>> {
        if side > 1 {
            return Err(WeirError::Internal(format!("join side {side}")));
        }
        if batch.num_rows() == 0 {
            return Ok(None);
        }
        let keys = eval_keys(&self.keys[side], &self.key_types, batch)?;
        let (batch, keys) = match (self.nulls_equal, non_null_keys(&keys)?) {
            (false, Some(mask)) => {
                let b = filter_record_batch(batch, &mask)?;
                let k = crate::window::filter_arrays(&keys, &mask)?;
                (b, k)
            }
            _ => (batch.clone(), keys),
        };
        if batch.num_rows() == 0 {
            return Ok(None);
        }
        let rows = self.converter.convert_columns(&keys)?;
        let out = self.probe(side, &batch, &rows)?;
        self.insert(side, batch, &rows, &keys)?;
        Ok(out)
    }

    /// The pairs of the new rows `batch` (keys `rows`) on `side` with the other side.
    fn probe(
        &self,
        side: usize,
        batch: &RecordBatch,
        rows: &datafusion::arrow::row::Rows,
    ) -> Result<Option<RecordBatch>> {
        let stored = &self.sides[other(side)];
        if stored.rows() == 0 {
            return Ok(None);
        }
        let mut probe_idx: Vec<u32> = Vec::new();
        let mut stored_loc: Vec<(usize, usize)> = Vec::new();
        for i in 0..rows.num_rows() {
            let Some(&head) = stored.index.get(rows.row(i).as_ref()) else {
                continue;
            };
            let mut g = head;
            while g != NONE {
                let (b, r) = stored.locs[g as usize];
                probe_idx.push(i as u32);
                stored_loc.push((b as usize, r as usize));
                g = stored.next[g as usize];
            }
        }
        if probe_idx.is_empty() {
            return Ok(None);
        }
        let left_width = self.sides[0].schema.fields().len();
        // Column `c` of left ++ right for the candidate pairs.
        let column = |c: usize, probe_idx: &UInt32Array, stored_loc: &[(usize, usize)]| {
            let (col_side, i) = if c < left_width {
                (0, c)
            } else {
                (1, c - left_width)
            };
            let a: Result<ArrayRef> = if col_side == side {
                Ok(take(batch.column(i).as_ref(), probe_idx, None)?)
            } else {
                let arrays: Vec<&dyn Array> = stored
                    .batches
                    .iter()
                    .map(|b| b.column(i).as_ref())
                    .collect();
                Ok(interleave(&arrays, stored_loc)?)
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
                return Ok(None);
            }
            if keep.len() < mask.len() {
                probe_idx = keep.iter().map(|&i| probe_idx.value(i)).collect();
                stored_loc = keep.iter().map(|&i| stored_loc[i]).collect();
            }
        }
        let cols = self
            .projection
            .iter()
            .map(|&c| column(c, &probe_idx, &stored_loc))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(RecordBatch::try_new_with_options(
            self.output_schema.clone(),
            cols,
            &RecordBatchOptions::new().with_row_count(Some(probe_idx.len())),
        )?))
    }

    /// Store `batch` (its non-matchable rows already removed) on `side`.
    fn insert(
        &mut self,
        side: usize,
        batch: RecordBatch,
        rows: &datafusion::arrow::row::Rows,
        keys: &[ArrayRef],
    ) -> Result<()> {
        let times = match self.time_key {
            Some((k, _)) => Some(time_ms(&keys[k])?),
            None => None,
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
        s.batch_bytes += batch.get_array_memory_size();
        s.batches.push(batch);
        s.merge_small_tail()
    }

    /// The inputs' watermarks moved: with a time key, evict the rows no future row of the
    /// other side can match. The state is rebuilt once a quarter of a side is evictable,
    /// so the cost is amortised over the evicted rows.
    pub fn advance(&mut self, watermarks: [i64; 2]) -> Result<()> {
        for (w, n) in self.watermarks.iter_mut().zip(watermarks) {
            *w = (*w).max(n);
        }
        let Some((_, kinds)) = self.time_key else {
            return Ok(());
        };
        for side in 0..2 {
            let bound = self.evict_bound(side, kinds);
            let s = &self.sides[side];
            let evictable: usize = s.time_counts.range(..bound).map(|(_, n)| n).sum();
            if evictable > 0 && evictable * 4 >= s.rows() {
                self.evict(side, bound)?;
            }
        }
        Ok(())
    }

    /// Rows of `side` whose time key is below this can never match again.
    fn evict_bound(&self, side: usize, kinds: [TimeKey; 2]) -> i64 {
        let w = self.watermarks[other(side)];
        match kinds[other(side)] {
            // The other side's future rows have window_start >= w.
            TimeKey::WindowStart => w,
            // ... and window_end > window_start >= w.
            TimeKey::WindowEnd => w.saturating_add(1),
        }
    }

    /// Drop the rows of `side` whose time key is below `bound`; rebuild its index.
    fn evict(&mut self, side: usize, bound: i64) -> Result<()> {
        let s = &mut self.sides[side];
        let mut kept = Vec::with_capacity(s.batches.len());
        let mut g = 0usize;
        for b in &s.batches {
            let keep: BooleanArray = s.times[g..g + b.num_rows()]
                .iter()
                .map(|t| Some(*t >= bound))
                .collect();
            g += b.num_rows();
            let f = filter_record_batch(b, &keep)?;
            if f.num_rows() > 0 {
                kept.push(f);
            }
        }
        let schema = s.schema.clone();
        let kept = if kept.len() > 1 {
            vec![concat_batches(&schema, &kept)?]
        } else {
            kept
        };
        self.reload(side, kept)
    }

    /// Replace the rows of `side` with `batches` (no probing).
    fn reload(&mut self, side: usize, batches: Vec<RecordBatch>) -> Result<()> {
        let schema = self.sides[side].schema.clone();
        self.sides[side] = SideState::new(schema);
        for b in batches {
            if b.num_rows() == 0 {
                continue;
            }
            let keys = eval_keys(&self.keys[side], &self.key_types, &b)?;
            let rows = self.converter.convert_columns(&keys)?;
            self.insert(side, b, &rows, &keys)?;
        }
        Ok(())
    }

    /// Each side's stored rows, for a checkpoint: `[left, right]`.
    pub fn snapshot(&self) -> Result<[Vec<RecordBatch>; 2]> {
        let side = |s: &SideState| -> Result<Vec<RecordBatch>> {
            if s.batches.is_empty() {
                return Ok(vec![]);
            }
            Ok(vec![concat_batches(&s.schema, &s.batches)?])
        };
        Ok([side(&self.sides[0])?, side(&self.sides[1])?])
    }

    /// Load each side's rows saved by [`StreamJoin::snapshot`] (into a join built from
    /// the same view definition).
    pub fn restore(&mut self, sides: [Vec<RecordBatch>; 2]) -> Result<()> {
        for (side, batches) in sides.into_iter().enumerate() {
            let schema = self.sides[side].schema.clone();
            let mut cast_batches = Vec::with_capacity(batches.len());
            for b in batches {
                if b.schema().fields().len() != schema.fields().len() {
                    return Err(WeirError::Internal(format!(
                        "join state of side {side} does not match the view: expected {schema:?}, found {:?}",
                        b.schema()
                    )));
                }
                let cols = b
                    .columns()
                    .iter()
                    .zip(schema.fields())
                    .map(|(c, f)| {
                        Ok(if c.data_type() == f.data_type() {
                            c.clone()
                        } else {
                            cast(c, f.data_type())?
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                cast_batches.push(RecordBatch::try_new(schema.clone(), cols)?);
            }
            self.reload(side, cast_batches)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::slot::{BatchSlot, StreamTable};
    use datafusion::arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    use datafusion::prelude::SessionContext;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("k", DataType::Utf8, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
        ]))
    }

    fn batch(rows: &[(i64, Option<&str>, i64)]) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    rows.iter().map(|r| r.2),
                )),
            ],
        )
        .unwrap()
    }

    /// The join DataFusion plans for `sql` over streams `a` and `b` (both [`schema`]).
    async fn join_for(sql: &str) -> StreamJoin {
        let ctx = SessionContext::new_with_config(crate::planner::df_config());
        for name in ["a", "b"] {
            let t = StreamTable {
                name: name.into(),
                schema: schema(),
                slot: Arc::new(BatchSlot::default()),
            };
            ctx.register_table(name, Arc::new(t)).unwrap();
        }
        let plan = ctx
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let hj = plan
            .downcast_ref::<HashJoinExec>()
            .unwrap_or_else(|| panic!("not a bare hash join: {sql}"));
        StreamJoin::try_new(hj, ["a".into(), "b".into()]).unwrap()
    }

    fn rows(batches: &[RecordBatch]) -> Vec<String> {
        let opts = FormatOptions::default().with_null("NULL");
        let mut out = Vec::new();
        for b in batches {
            let f: Vec<_> = b
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).unwrap())
                .collect();
            for r in 0..b.num_rows() {
                out.push(
                    f.iter()
                        .map(|f| f.value(r).to_string())
                        .collect::<Vec<_>>()
                        .join(" "),
                );
            }
        }
        out.sort();
        out
    }

    /// Push `(side, batch)` in order; everything the join emitted.
    fn run(join: &mut StreamJoin, pushes: &[(usize, RecordBatch)]) -> Vec<String> {
        let out: Vec<RecordBatch> = pushes
            .iter()
            .filter_map(|(side, b)| join.push(*side, b).unwrap())
            .collect();
        rows(&out)
    }

    const EQ: &str = "SELECT a.id, b.id FROM a JOIN b ON a.k = b.k";

    #[tokio::test]
    async fn each_match_once_in_any_order() {
        let left = [(1, Some("x"), 0), (2, Some("y"), 0), (3, Some("x"), 0)];
        let right = [(10, Some("x"), 0), (11, Some("z"), 0), (12, Some("x"), 0)];
        let expected = ["1 10", "1 12", "3 10", "3 12"];
        // All left first, all right first, and row by row alternating.
        let orders: Vec<Vec<(usize, RecordBatch)>> = vec![
            vec![(0, batch(&left)), (1, batch(&right))],
            vec![(1, batch(&right)), (0, batch(&left))],
            (0..3)
                .flat_map(|i| [(1, batch(&right[i..=i])), (0, batch(&left[i..=i]))])
                .collect(),
        ];
        for pushes in orders {
            let mut j = join_for(EQ).await;
            assert_eq!(run(&mut j, &pushes), expected);
            assert_eq!(j.stored_rows(), 6);
        }
    }

    #[tokio::test]
    async fn null_keys_never_match_unless_not_distinct() {
        let left = batch(&[(1, None, 0), (2, Some("x"), 0)]);
        let right = batch(&[(10, None, 0), (11, Some("x"), 0)]);
        let mut j = join_for(EQ).await;
        let got = run(&mut j, &[(0, left.clone()), (1, right.clone())]);
        assert_eq!(got, ["2 11"]);
        // Rows that can never match are not kept.
        assert_eq!(j.stored_rows(), 2);
        let mut j =
            join_for("SELECT a.id, b.id FROM a JOIN b ON a.k IS NOT DISTINCT FROM b.k").await;
        let got = run(&mut j, &[(0, left), (1, right)]);
        assert_eq!(got, ["1 10", "2 11"]);
    }

    #[tokio::test]
    async fn residual_filter_and_projection() {
        let sql = "SELECT b.id, a.id FROM a JOIN b ON a.k = b.k \
                   AND b.ts BETWEEN a.ts AND a.ts + INTERVAL '10' SECOND";
        let mut j = join_for(sql).await;
        assert_eq!(j.output_schema().fields().len(), 2);
        let got = run(
            &mut j,
            &[
                (1, batch(&[(10, Some("x"), 5_000), (11, Some("x"), 25_000)])),
                (0, batch(&[(1, Some("x"), 0), (2, Some("x"), 20_000)])),
                (
                    1,
                    batch(&[(12, Some("x"), 30_000), (13, Some("y"), 20_000)]),
                ),
            ],
        );
        assert_eq!(got, ["10 1", "11 2", "12 2"]);
    }

    #[tokio::test]
    async fn self_join_pairs_within_one_batch_once() {
        // One batch fed to both sides, left first (as the pipeline does for a self-join).
        let mut j = join_for(EQ).await;
        let b = batch(&[(1, Some("x"), 0), (2, Some("x"), 0), (3, Some("y"), 0)]);
        let got = run(&mut j, &[(0, b.clone()), (1, b)]);
        assert_eq!(got, ["1 1", "1 2", "2 1", "2 2", "3 3"]);
    }

    #[tokio::test]
    async fn small_batches_are_merged_and_still_found() {
        let mut j = join_for(EQ).await;
        let mut pushes = Vec::new();
        for i in 0..100 {
            pushes.push((
                0,
                batch(&[(i, Some(if i % 2 == 0 { "e" } else { "o" }), 0)]),
            ));
        }
        pushes.push((1, batch(&[(1000, Some("e"), 0), (1001, Some("o"), 0)])));
        let got = run(&mut j, &pushes);
        assert_eq!(got.len(), 100);
        assert!(j.sides[0].batches.len() <= MAX_SMALL_BATCHES + 1);
        let expected: Vec<String> = {
            let mut v: Vec<String> = (0..100)
                .map(|i| format!("{i} {}", if i % 2 == 0 { 1000 } else { 1001 }))
                .collect();
            v.sort();
            v
        };
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn window_keys_evict_what_cannot_match() {
        let sql = "SELECT a.id, b.id FROM a JOIN b ON a.k = b.k AND a.ts = b.ts";
        let mut j = join_for(sql).await;
        j.set_time_key(1, [TimeKey::WindowStart, TimeKey::WindowStart]);
        let w = |m: i64| m * 60_000;
        run(
            &mut j,
            &[
                (0, batch(&[(1, Some("x"), w(0)), (2, Some("x"), w(1))])),
                (1, batch(&[(10, Some("x"), w(0))])),
            ],
        );
        assert_eq!(j.stored_rows(), 3);
        // Right's watermark reaches minute 1: left's minute-0 row can go; left's watermark
        // is still at minute 0, so right's minute-0 row stays.
        j.advance([w(0), w(1)]).unwrap();
        assert_eq!(j.sides[0].rows(), 1);
        assert_eq!(j.sides[1].rows(), 1);
        j.advance([w(1), w(1)]).unwrap();
        assert_eq!(j.sides[1].rows(), 0);
        // Rows at or after the watermarks still match what was kept.
        let got = run(&mut j, &[(1, batch(&[(11, Some("x"), w(1))]))]);
        assert_eq!(got, ["2 11"]);
        // window_end keys: a stored row whose window_end the other side's watermark has
        // reached can go (the other side's future rows end after it).
        let mut j = join_for(sql).await;
        j.set_time_key(1, [TimeKey::WindowEnd, TimeKey::WindowEnd]);
        run(&mut j, &[(0, batch(&[(1, Some("x"), w(1))]))]);
        j.advance([i64::MIN, w(1) - 1]).unwrap();
        assert_eq!(j.stored_rows(), 1);
        j.advance([i64::MIN, w(1)]).unwrap();
        assert_eq!(j.stored_rows(), 0);
    }

    #[tokio::test]
    async fn eviction_waits_for_a_quarter_of_the_state() {
        let sql = "SELECT a.id, b.id FROM a JOIN b ON a.k = b.k AND a.ts = b.ts";
        let mut j = join_for(sql).await;
        j.set_time_key(1, [TimeKey::WindowStart, TimeKey::WindowStart]);
        let left: Vec<(i64, Option<&str>, i64)> =
            (0..100).map(|i| (i, Some("x"), (i / 10) * 1000)).collect();
        run(&mut j, &[(0, batch(&left))]);
        // 10 of 100 rows evictable: kept for now (amortised rebuilds).
        j.advance([i64::MIN, 1000]).unwrap();
        assert_eq!(j.stored_rows(), 100);
        // 30 of 100: rebuilt without them.
        j.advance([i64::MIN, 3000]).unwrap();
        assert_eq!(j.stored_rows(), 70);
        let got = run(&mut j, &[(1, batch(&[(500, Some("x"), 3000)]))]);
        assert_eq!(got.len(), 10);
    }

    #[tokio::test]
    async fn snapshot_restore_continues_the_same() {
        let sql = "SELECT a.id, b.id FROM a JOIN b ON a.k = b.k";
        let first = [
            (0, batch(&[(1, Some("x"), 0), (2, Some("y"), 0)])),
            (1, batch(&[(10, Some("y"), 0)])),
        ];
        let then = [
            (1, batch(&[(11, Some("x"), 0)])),
            (0, batch(&[(3, Some("y"), 0)])),
        ];
        let mut straight = join_for(sql).await;
        run(&mut straight, &first);
        let mut restored = join_for(sql).await;
        restored.restore(straight.snapshot().unwrap()).unwrap();
        assert_eq!(restored.stored_rows(), 3);
        assert_eq!(run(&mut restored, &then), run(&mut straight, &then));
        assert_eq!(run(&mut restored, &[]), Vec::<String>::new());
    }

    /// Probing costs O(batch + matches), not O(state): 1M probe rows against 100k stored
    /// rows. `cargo test --release -p weir-engine --lib join_throughput -- --ignored --nocapture`
    #[tokio::test]
    #[ignore]
    async fn join_throughput() {
        let mut j = join_for(EQ).await;
        let keys: Vec<String> = (0..100_000).map(|i| format!("key-{i}")).collect();
        let stored: Vec<(i64, Option<&str>, i64)> = (0..100_000)
            .map(|i| (i as i64, Some(keys[i].as_str()), 0))
            .collect();
        let t = std::time::Instant::now();
        for chunk in stored.chunks(8192) {
            j.push(1, &batch(chunk)).unwrap();
        }
        let build = t.elapsed();
        let t = std::time::Instant::now();
        let mut matched = 0usize;
        let mut n = 0u64;
        while n < 1_000_000 {
            let chunk: Vec<(i64, Option<&str>, i64)> = (0..8192)
                .map(|i| {
                    let x = n + i;
                    // Half the probe rows find a match.
                    let k = (x * 7919 % 200_000) as usize;
                    (
                        x as i64,
                        keys.get(k).map(String::as_str).or(Some("none")),
                        0,
                    )
                })
                .collect();
            // Probe only: keep the state at 100k rows.
            let b = batch(&chunk);
            let k = eval_keys(&j.keys[0], &j.key_types, &b).unwrap();
            let r = j.converter.convert_columns(&k).unwrap();
            if let Some(out) = j.probe(0, &b, &r).unwrap() {
                matched += out.num_rows();
            }
            n += 8192;
        }
        let probe = t.elapsed();
        println!(
            "build 100k rows: {:?} ({:.0} rows/s); probe {n} rows: {:?} ({:.0} rows/s), {matched} matches",
            build,
            100_000.0 / build.as_secs_f64(),
            probe,
            n as f64 / probe.as_secs_f64()
        );
        assert!(matched > 400_000 && matched < 600_000);
    }
}
