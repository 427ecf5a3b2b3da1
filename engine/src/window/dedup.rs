//! Deduplication: `ROW_NUMBER() OVER (PARTITION BY key ORDER BY ts) = 1` over a stream
//! without a window keeps the first row of each key by event time, append-only.
//!
//! Each key has a candidate (its earliest on-time row so far by time, then by the ORDER BY's
//! further terms, if any; on a full tie, the one that came first) until the watermark
//! passes the candidate's time: then no on-time row can
//! come before it, so it is emitted and the key is remembered as done. Later rows of a done
//! key are duplicates and dropped; a row behind the watermark is late (as for windows). So
//! the output is, for each key, its first row among the accepted rows: what the same query
//! gives in batch over them.
//!
//! State: the candidates, and the done keys with the time of their first row. With
//! `'state.ttl'` a done key is forgotten once the watermark is the TTL past its first row
//! (a later duplicate would then come out again: that changes the result, and bounds the
//! state); without it, done keys are kept for good.

use super::{
    LateRow, UpdateStats, WindowAggregator, WindowOperator, check_state_schema, shifted_ms,
};
use crate::error::{Result, WeirError};
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, UInt32Array};
use datafusion::arrow::compute::{interleave, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::physical_expr::{PhysicalExpr, PhysicalSortExpr};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

const LATE: &str =
    "late: behind the watermark (an earlier first row of its key may already be out)";

/// A key's earliest on-time row so far: its time, its tie-break values (row format), and
/// where it is held.
#[derive(Clone)]
struct Candidate {
    ts: i64,
    tie: Vec<u8>,
    batch: usize,
    row: usize,
}

pub struct Dedup {
    /// The pre plan's output: the rows held and emitted.
    schema: SchemaRef,
    time_column: String,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    key_names: Vec<String>,
    converter: RowConverter,
    /// ORDER BY terms after the time, breaking ties between rows of one key and time.
    ties: Vec<PhysicalSortExpr>,
    tie_converter: RowConverter,
    ttl_ms: Option<i64>,
    candidates: HashMap<Vec<u8>, Candidate>,
    /// Candidates in emission order: time, tie-break, key.
    order: BTreeSet<(i64, Vec<u8>, Vec<u8>)>,
    /// Rows the candidates point into (some replaced since; compacted on close).
    held: Vec<RecordBatch>,
    /// Keys whose first row was emitted, with that row's time.
    done: HashMap<Vec<u8>, i64>,
    closed_through: i64,
}

impl Dedup {
    pub fn try_new(
        schema: SchemaRef,
        time_column: String,
        keys: Vec<Arc<dyn PhysicalExpr>>,
        ties: Vec<PhysicalSortExpr>,
        ttl_ms: Option<i64>,
    ) -> Result<Self> {
        let tie_fields = ties
            .iter()
            .map(|t| {
                Ok(SortField::new_with_options(
                    t.expr.data_type(&schema)?,
                    t.options,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let fields = keys
            .iter()
            .map(|k| Ok(SortField::new(k.data_type(&schema)?)))
            .collect::<Result<Vec<_>>>()?;
        let key_names = keys
            .iter()
            .filter_map(|k| {
                k.downcast_ref::<datafusion::physical_expr::expressions::Column>()
                    .map(|c| c.name().to_string())
            })
            .collect();
        Ok(Dedup {
            schema,
            time_column,
            key_names,
            converter: RowConverter::new(fields)?,
            keys,
            tie_converter: RowConverter::new(tie_fields)?,
            ties,
            ttl_ms,
            candidates: HashMap::new(),
            order: BTreeSet::new(),
            held: Vec::new(),
            done: HashMap::new(),
            closed_through: i64::MIN,
        })
    }

    /// The keys of `batch`'s rows, in the row format (comparable bytes).
    fn key_rows(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        let exprs: Vec<&Arc<dyn PhysicalExpr>> = self.keys.iter().collect();
        row_bytes(&self.converter, &exprs, batch)
    }

    /// The tie-break values of `batch`'s rows (empty without tie-breaks).
    fn tie_rows(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        if self.ties.is_empty() {
            return Ok(vec![Vec::new(); batch.num_rows()]);
        }
        let exprs: Vec<&Arc<dyn PhysicalExpr>> = self.ties.iter().map(|t| &t.expr).collect();
        row_bytes(&self.tie_converter, &exprs, batch)
    }

    /// The held rows of `picks` (batch, row), in that order.
    fn gather(&self, picks: &[(usize, usize)]) -> Result<RecordBatch> {
        if picks.is_empty() {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        }
        let mut cols = Vec::with_capacity(self.schema.fields().len());
        for c in 0..self.schema.fields().len() {
            let arrays: Vec<&dyn Array> = self.held.iter().map(|b| b.column(c).as_ref()).collect();
            cols.push(interleave(&arrays, picks)?);
        }
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }

    /// Keep only the rows candidates point to, in one batch.
    fn compact(&mut self) -> Result<()> {
        let held: usize = self.held.iter().map(|b| b.num_rows()).sum();
        if held <= 2 * self.candidates.len() + 1024 {
            return Ok(());
        }
        let keys: Vec<Vec<u8>> = self.order.iter().map(|(_, _, k)| k.clone()).collect();
        let picks: Vec<(usize, usize)> = keys
            .iter()
            .filter_map(|k| self.candidates.get(k).map(|c| (c.batch, c.row)))
            .collect();
        let batch = self.gather(&picks)?;
        for (row, k) in keys.iter().enumerate() {
            if let Some(c) = self.candidates.get_mut(k) {
                (c.batch, c.row) = (0, row);
            }
        }
        self.held = vec![batch];
        Ok(())
    }

    /// The schema of [`Dedup::snapshot`]: the held row's columns (nullable), the key
    /// columns, the time, and whether the key is done (then only key and time are set).
    fn state_schema(&self) -> Result<SchemaRef> {
        let mut fields: Vec<Field> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        for (i, k) in self.keys.iter().enumerate() {
            fields.push(Field::new(
                format!("__key{i}"),
                k.data_type(&self.schema)?,
                true,
            ));
        }
        fields.push(Field::new("__ts", DataType::Int64, false));
        fields.push(Field::new("__done", DataType::Boolean, false));
        Ok(Arc::new(Schema::new(fields)))
    }
}

/// `exprs` over `batch`, each row in the row format of `converter` (comparable bytes).
fn row_bytes(
    converter: &RowConverter,
    exprs: &[&Arc<dyn PhysicalExpr>],
    batch: &RecordBatch,
) -> Result<Vec<Vec<u8>>> {
    let cols = exprs
        .iter()
        .map(|e| Ok(e.evaluate(batch)?.into_array(batch.num_rows())?))
        .collect::<Result<Vec<ArrayRef>>>()?;
    let rows = converter.convert_columns(&cols)?;
    Ok(rows.iter().map(|r| r.as_ref().to_vec()).collect())
}

impl WindowOperator for Dedup {
    fn into_aggregator(
        self: Box<Self>,
    ) -> std::result::Result<WindowAggregator, Box<dyn WindowOperator>> {
        Err(self)
    }

    fn configure(&mut self, every: Option<std::time::Duration>) -> Result<()> {
        if every.is_some() {
            return Err(WeirError::user(
                "EMIT EVERY does not apply to deduplication: each key's first row comes out \
                 once, when the watermark passes it",
            ));
        }
        Ok(())
    }

    fn input_time_column(&self) -> &str {
        &self.time_column
    }

    fn key_names(&self) -> Vec<String> {
        self.key_names.clone()
    }

    fn describe(&self) -> String {
        let keys: Vec<String> = self.keys.iter().map(|k| k.to_string()).collect();
        let ttl = match self.ttl_ms {
            Some(t) => format!("done keys kept {t} ms of event time"),
            None => "done keys kept for good".to_string(),
        };
        let mut by = self.time_column.clone();
        for t in &self.ties {
            by.push_str(&format!(", {t}"));
        }
        format!(
            "Deduplicate: first row per [{}] by {by}, emitted when the watermark passes it; {ttl}",
            keys.join(", ")
        )
    }

    fn open_windows(&self) -> usize {
        0
    }

    fn open_groups(&self) -> usize {
        self.candidates.len() + self.done.len()
    }

    fn state_bytes(&self) -> usize {
        let held: usize = self.held.iter().map(|b| b.get_array_memory_size()).sum();
        let keys: usize = self
            .candidates
            .keys()
            .chain(self.done.keys())
            .map(|k| k.len() + 48)
            .sum();
        held + keys + self.order.len() * 48
    }

    fn update(&mut self, batch: &RecordBatch) -> Result<UpdateStats> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(UpdateStats::default());
        }
        let times = shifted_ms(batch.column(self.schema.index_of(&self.time_column)?), 0)?;
        let keys = self.key_rows(batch)?;
        let ties = self.tie_rows(batch)?;
        let mut late = Vec::new();
        let mut keep: Vec<u32> = Vec::new();
        let next_batch = self.held.len();
        for (i, ((t, key), tie)) in times.into_iter().zip(keys).zip(ties).enumerate() {
            let Some(t) = t.filter(|t| *t >= self.closed_through) else {
                late.push(LateRow {
                    row: i,
                    window: None,
                    reason: LATE,
                });
                continue;
            };
            // A done key's rows, and rows no earlier than the key's candidate, are
            // duplicates.
            if self.done.contains_key(&key) {
                continue;
            }
            // Earlier in (time, tie-break) replaces; equal keeps the first to arrive.
            let candidate = Candidate {
                ts: t,
                tie,
                batch: next_batch,
                row: keep.len(),
            };
            match self.candidates.get_mut(&key) {
                Some(c) if (c.ts, &c.tie) <= (t, &candidate.tie) => {}
                Some(c) => {
                    self.order.remove(&(c.ts, c.tie.clone(), key.clone()));
                    self.order.insert((t, candidate.tie.clone(), key));
                    *c = candidate;
                    keep.push(i as u32);
                }
                None => {
                    self.order.insert((t, candidate.tie.clone(), key.clone()));
                    self.candidates.insert(key, candidate);
                    keep.push(i as u32);
                }
            }
        }
        if !keep.is_empty() {
            let idx = UInt32Array::from(keep);
            let cols = batch
                .columns()
                .iter()
                .map(|c| Ok(take(c.as_ref(), &idx, None)?))
                .collect::<Result<Vec<_>>>()?;
            self.held
                .push(RecordBatch::try_new(self.schema.clone(), cols)?);
        }
        Ok(UpdateStats {
            accepted: (n - late.len()) as u64,
            late: late.len() as u64,
            late_rows: late,
        })
    }

    fn close(&mut self, watermark_ms: i64) -> Result<Vec<RecordBatch>> {
        if watermark_ms <= self.closed_through {
            return Ok(vec![]);
        }
        self.closed_through = watermark_ms;
        // Candidates earlier than the watermark: nothing on time can come before them.
        let due: Vec<(i64, Vec<u8>, Vec<u8>)> = self
            .order
            .range(..(watermark_ms, Vec::new(), Vec::new()))
            .cloned()
            .collect();
        let mut picks = Vec::with_capacity(due.len());
        for entry in due {
            self.order.remove(&entry);
            let (ts, _, key) = entry;
            if let Some(c) = self.candidates.remove(&key) {
                picks.push((c.batch, c.row));
            }
            self.done.insert(key, ts);
        }
        let out = self.gather(&picks)?;
        if let Some(ttl) = self.ttl_ms {
            self.done
                .retain(|_, first| first.saturating_add(ttl) >= watermark_ms);
        }
        if self.candidates.is_empty() {
            self.held.clear();
        } else {
            self.compact()?;
        }
        Ok(if out.num_rows() > 0 {
            vec![out]
        } else {
            vec![]
        })
    }

    fn closed_through(&self) -> i64 {
        self.closed_through
    }

    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        self.compact()?;
        let schema = self.state_schema()?;
        let width = self.schema.fields().len();
        let mut out = Vec::new();
        // Held candidates: their rows, keys and times.
        let keys: Vec<&Vec<u8>> = self.order.iter().map(|(_, _, k)| k).collect();
        if !keys.is_empty() {
            let picks: Vec<(usize, usize)> = keys
                .iter()
                .filter_map(|k| self.candidates.get(*k).map(|c| (c.batch, c.row)))
                .collect();
            let rows = self.gather(&picks)?;
            let mut cols = rows.columns().to_vec();
            let key_cols = self
                .keys
                .iter()
                .map(|k| Ok(k.evaluate(&rows)?.into_array(rows.num_rows())?))
                .collect::<Result<Vec<ArrayRef>>>()?;
            cols.extend(key_cols);
            let ts: Vec<i64> = self.order.iter().map(|(t, _, _)| *t).collect();
            cols.push(Arc::new(Int64Array::from(ts)));
            cols.push(Arc::new(BooleanArray::from(vec![false; rows.num_rows()])));
            out.push(RecordBatch::try_new(schema.clone(), cols)?);
        }
        // Done keys: key columns and the first row's time.
        if !self.done.is_empty() {
            let parser = self.converter.parser();
            let (keys, ts): (Vec<&Vec<u8>>, Vec<i64>) =
                self.done.iter().map(|(k, t)| (k, *t)).unzip();
            let rows = keys.iter().map(|k| parser.parse(k));
            let key_cols = self.converter.convert_rows(rows)?;
            let n = ts.len();
            let mut cols: Vec<ArrayRef> = schema
                .fields()
                .iter()
                .take(width)
                .map(|f| datafusion::arrow::array::new_null_array(f.data_type(), n))
                .collect();
            cols.extend(key_cols);
            cols.push(Arc::new(Int64Array::from(ts)));
            cols.push(Arc::new(BooleanArray::from(vec![true; n])));
            out.push(RecordBatch::try_new(schema, cols)?);
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
        self.candidates.clear();
        self.order.clear();
        self.held.clear();
        self.done.clear();
        let schema = self.state_schema()?;
        let width = self.schema.fields().len();
        let nkeys = self.keys.len();
        for batch in batches {
            check_state_schema("deduplication state", batch, &schema)?;
            let keys = self
                .converter
                .convert_columns(&batch.columns()[width..width + nkeys])?;
            let ts = batch
                .column(width + nkeys)
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| WeirError::Internal("deduplication time column".into()))?;
            let done = batch
                .column(width + nkeys + 1)
                .as_any()
                .downcast_ref::<BooleanArray>()
                .ok_or_else(|| WeirError::Internal("deduplication done column".into()))?;
            let mut rows: Vec<u32> = Vec::new();
            let mut candidates = Vec::new();
            for i in 0..batch.num_rows() {
                let key = keys.row(i).as_ref().to_vec();
                if done.value(i) {
                    self.done.insert(key, ts.value(i));
                    continue;
                }
                candidates.push((key, ts.value(i), rows.len()));
                rows.push(i as u32);
            }
            if !rows.is_empty() {
                let idx = UInt32Array::from(rows);
                let cols = self
                    .schema
                    .fields()
                    .iter()
                    .enumerate()
                    .map(|(c, f)| {
                        let a = take(batch.column(c).as_ref(), &idx, None)?;
                        super::groups::cast_to(a, f.data_type())
                    })
                    .collect::<Result<Vec<_>>>()?;
                let held = RecordBatch::try_new(self.schema.clone(), cols)?;
                // Tie-breaks are recomputed from the rows.
                let ties = self.tie_rows(&held)?;
                for ((key, ts, row), tie) in candidates.into_iter().zip(ties) {
                    self.order.insert((ts, tie.clone(), key.clone()));
                    self.candidates.insert(
                        key,
                        Candidate {
                            ts,
                            tie,
                            batch: self.held.len(),
                            row,
                        },
                    );
                }
                self.held.push(held);
            }
        }
        Ok(())
    }

    fn takes_state_ttl(&self) -> bool {
        true
    }

    /// Rows not yet emitted hold the view's watermark at their time, so a view reading
    /// this one never finds them late.
    fn output_watermark(&self, input_watermark: i64) -> i64 {
        match self.order.first() {
            Some((t, _, _)) => input_watermark.min(*t),
            None => input_watermark,
        }
    }
}
