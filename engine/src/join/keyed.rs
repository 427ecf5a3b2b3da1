//! A join's state in key partitions (`[engine] key_partitions`), as a window aggregate's
//! is (`dataflow/keyed.rs`), worked on by the workers.
//!
//! A row belongs to key partition `hash(join key) % key_partitions`
//! (`dataflow/partition.rs`: the specified hash, equal for equal values of either side's
//! type, so a pair always meets in one partition). Checkpoints store both sides' rows per
//! key partition, so a checkpoint restores into any number of workers, and the partition
//! is the unit a cluster can move.
//!
//! At run time the partitions are grouped into one shard per worker (partition `kp` in
//! shard `kp % shards`), each a [`StreamJoin`] of its own: with one worker there is one
//! join and no per-batch cost for the partitions at all (they are worked out at a
//! checkpoint, from the stored rows' keys). With several, a micro-batch is cut by shard
//! and, when it is large enough, the shards probe and store at once on the workers.
//! Everything that decides a row's fate (its key, the watermarks, the time band) is the
//! same in every shard, so the rows out are those one join would give; their order within
//! a micro-batch is shard by shard (a join's order is not stable across a replay either:
//! docs/joins.md).
//!
//! A restore keeps the partition count the checkpoint was written with unless told to
//! repartition (`[engine] repartition`), which re-splits the stored rows by key. A key of
//! a type the hash does not take (lists, structs) keeps the join in one partition.

use super::{SideState, StreamJoin, eval_keys};
use crate::dataflow::keyed::{Keying, PartitionCount, fork_join};
use crate::dataflow::operator::StateFigures;
use crate::dataflow::partition::{can_partition, key_partitions};
use crate::error::{Result, WeirError};
use crate::window::split_rows;
use datafusion::arrow::array::{ArrayRef, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use parking_lot::Mutex;
use std::sync::Arc;

type Shard = Arc<Mutex<StreamJoin>>;

/// What one shard's share of a batch gives: `(inserts, deletes)`.
type Changes = (Vec<RecordBatch>, Vec<RecordBatch>);

pub struct KeyedJoin {
    shards: Vec<Shard>,
    /// Key partitions of the state (checkpoints store one set of files per partition).
    partitions: u32,
    count: PartitionCount,
    workers: usize,
    /// Rows each key partition has taken since the view started here (counted with
    /// several shards, where each row's partition is worked out; not checkpointed).
    work: Vec<u64>,
}

impl KeyedJoin {
    pub fn new(join: StreamJoin, keying: Keying) -> Result<KeyedJoin> {
        let count = PartitionCount::new(keying, join.key_types.iter().all(can_partition));
        let workers = keying.workers.max(1);
        let partitions = count.configured();
        Ok(KeyedJoin {
            shards: shards(&join, workers, partitions)?,
            partitions,
            count,
            workers,
            work: vec![0; partitions as usize],
        })
    }

    pub fn key_partitions(&self) -> u32 {
        self.partitions
    }

    fn first(&self) -> parking_lot::MutexGuard<'_, StreamJoin> {
        self.shards[0].lock()
    }

    /// Whether the output is a changelog (an updating outer join).
    pub fn retracts(&self) -> bool {
        self.first().retracts()
    }

    /// For DESCRIBE.
    pub fn describe_partitioning(&self) -> String {
        match self.partitions {
            1 => "state in 1 key partition".to_string(),
            n => format!(
                "state in {n} key partitions by [{}], worked on as {} shard{}",
                self.first().key_names().join(", "),
                self.shards.len(),
                if self.shards.len() == 1 { "" } else { "s" }
            ),
        }
    }

    /// A batch on `side`: each shard probes and stores its rows; the rows added to the
    /// output and (an updating join) taken back, each shard by shard.
    pub async fn push_changes(&mut self, side: usize, batch: &RecordBatch) -> Result<Changes> {
        let shards = self.shards.len();
        if shards == 1 {
            return self.first().push_changes(side, batch);
        }
        let keys = self.first().key_columns(side, batch)?;
        let kps = key_partitions(&keys, batch.num_rows(), self.partitions)?;
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); shards];
        for (row, kp) in kps.into_iter().enumerate() {
            if let Some(w) = self.work.get_mut(kp as usize) {
                *w += 1;
            }
            rows[kp as usize % shards].push(row as u32);
        }
        let mut inputs = Vec::with_capacity(shards);
        for (shard, idx) in rows.into_iter().enumerate() {
            if idx.is_empty() {
                continue;
            }
            let w = idx.len();
            let rows = take_record_batch(batch, &UInt32Array::from(idx))?;
            inputs.push((shard, (side, rows), w));
        }
        let done = fork_join(
            &self.shards,
            inputs,
            batch.num_rows(),
            self.workers,
            |j, (side, rows)| j.push_changes(side, &rows),
        )
        .await?;
        let (mut inserts, mut deletes) = (Vec::new(), Vec::new());
        for (_, (i, d)) in done {
            inserts.extend(i);
            deletes.extend(d);
        }
        Ok((inserts, deletes))
    }

    /// The inputs' watermarks moved: each shard evicts; an outer side's unmatched rows,
    /// NULL-padded, shard by shard.
    pub async fn advance(&mut self, watermarks: [i64; 2]) -> Result<Vec<RecordBatch>> {
        if self.shards.len() == 1 {
            return self.first().advance(watermarks);
        }
        let inputs = (0..self.shards.len())
            .map(|s| (s, watermarks, self.shards[s].lock().stored_rows()))
            .collect::<Vec<_>>();
        let work = inputs.iter().map(|i| i.2).sum();
        let done = fork_join(&self.shards, inputs, work, self.workers, |j, w| {
            j.advance(w)
        })
        .await?;
        Ok(done.into_iter().flat_map(|(_, out)| out).collect())
    }

    /// The join's watermark given its inputs' (the same in every shard: it depends on the
    /// inputs and the time band only).
    pub fn output_watermark(&self, inputs: [i64; 2]) -> i64 {
        self.first().output_watermark(inputs)
    }

    pub fn input_watermarks(&self) -> [i64; 2] {
        self.first().input_watermarks()
    }

    /// Rows dropped as late since the last call, over the shards.
    pub fn take_late(&mut self) -> u64 {
        self.shards.iter().map(|p| p.lock().take_late()).sum()
    }

    pub fn figures(&self) -> StateFigures {
        let mut f = StateFigures {
            key_partitions: u64::from(self.partitions),
            ..StateFigures::default()
        };
        for p in &self.shards {
            let p = p.lock();
            let rows = p.stored_rows() as u64;
            f.open_groups += rows;
            f.bytes += p.state_bytes() as u64;
            f.busiest_partition_groups = f.busiest_partition_groups.max(rows);
        }
        let total: u64 = self.work.iter().sum();
        let most = self.work.iter().copied().max().unwrap_or(0);
        f.busiest_partition_share = (most * 100).checked_div(total).unwrap_or(0);
        f
    }

    /// Both sides' stored rows per key partition: `[left 0, right 0, left 1, right 1,
    /// ...]`, each shard's rows cut by key.
    pub fn snapshot(&self) -> Result<Vec<Vec<RecordBatch>>> {
        let mut parts = empty_sides(self.partitions as usize);
        for shard in &self.shards {
            let shard = shard.lock();
            for (side, batches) in shard.snapshot()?.into_iter().enumerate() {
                shard.cut_by_key(side, batches, &mut parts)?;
            }
        }
        Ok(parts.into_iter().flatten().collect())
    }

    /// Put back [`KeyedJoin::snapshot`]'s state, written with `written` key partitions, at
    /// the inputs' checkpointed watermarks.
    pub fn restore(
        &mut self,
        states: Vec<Vec<RecordBatch>>,
        written: u32,
        watermarks: Option<[i64; 2]>,
    ) -> Result<()> {
        let written = written.max(1);
        if states.len() != 2 * written as usize {
            return Err(WeirError::Internal(format!(
                "a join checkpoint of {written} key partitions holds {} sides",
                states.len()
            )));
        }
        let count = self.count.restored(written);
        // Each side's rows per key partition of the new count.
        let parts: Vec<[Vec<RecordBatch>; 2]> = if count == written {
            let mut it = states.into_iter();
            (0..count)
                .map(|_| [it.next().unwrap_or_default(), it.next().unwrap_or_default()])
                .collect()
        } else {
            tracing::info!(
                from = written,
                to = count,
                "repartitioning the join's state into {count} key partitions"
            );
            let mut parts = empty_sides(count as usize);
            let first = self.first();
            for (i, batches) in states.into_iter().enumerate() {
                first.cut_by_key(i % 2, batches, &mut parts)?;
            }
            parts
        };
        self.partitions = count;
        self.work = vec![0; count as usize];
        let shards = shards(&self.first(), self.workers, count)?;
        let mut shares = empty_sides(shards.len());
        for (kp, [left, right]) in parts.into_iter().enumerate() {
            let share = &mut shares[kp % shards.len()];
            share[0].extend(left);
            share[1].extend(right);
        }
        for (shard, sides) in shards.iter().zip(shares) {
            let mut j = shard.lock();
            // What a time-bounded join counts as late, as before the restart.
            if let Some(w) = watermarks {
                j.advance(w)?;
            }
            j.restore(sides)?;
        }
        self.shards = shards;
        Ok(())
    }
}

/// One empty join per shard (as many as workers, at most one per partition), each an empty
/// copy of `template`.
fn shards(template: &StreamJoin, workers: usize, partitions: u32) -> Result<Vec<Shard>> {
    let n = workers.min(partitions as usize).max(1);
    (0..n)
        .map(|_| Ok(Arc::new(Mutex::new(template.empty_copy()?))))
        .collect()
}

/// Both sides' rows of `n` partitions (or shards), none yet.
fn empty_sides(n: usize) -> Vec<[Vec<RecordBatch>; 2]> {
    (0..n).map(|_| [Vec::new(), Vec::new()]).collect()
}

/// What key partitions need of one join.
impl StreamJoin {
    /// A join of the same definition and settings with no rows: a shard of a
    /// [`KeyedJoin`].
    fn empty_copy(&self) -> Result<StreamJoin> {
        Ok(StreamJoin {
            keys: self.keys.clone(),
            key_types: self.key_types.clone(),
            converter: RowConverter::new(
                self.key_types
                    .iter()
                    .map(|t| SortField::new(t.clone()))
                    .collect(),
            )?,
            nulls_equal: self.nulls_equal,
            filter: self.filter.clone(),
            projection: self.projection.clone(),
            output_schema: self.output_schema.clone(),
            sides: [
                SideState::new(self.sides[0].schema.clone()),
                SideState::new(self.sides[1].schema.clone()),
            ],
            time_key: self.time_key,
            band: self.band,
            late: 0,
            retracts: self.retracts,
            watermarks: self.watermarks,
            outer: self.outer,
            inputs: self.inputs.clone(),
            key_origins: self.key_origins.clone(),
        })
    }

    /// The join key of each row of `batch` (in side `side`'s schema, or a checkpoint of
    /// that side's rows), as the types both sides are compared as.
    fn key_columns(&self, side: usize, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
        let exprs = self
            .keys
            .get(side)
            .ok_or_else(|| WeirError::Internal(format!("join side {side}")))?;
        eval_keys(exprs, &self.key_types, batch)
    }

    /// Add `side`'s rows in `batches` to `parts`, each row to its key partition (of
    /// `parts.len()`).
    fn cut_by_key(
        &self,
        side: usize,
        batches: Vec<RecordBatch>,
        parts: &mut [[Vec<RecordBatch>; 2]],
    ) -> Result<()> {
        let count = parts.len() as u32;
        for b in batches {
            if count == 1 {
                parts[0][side].push(b);
                continue;
            }
            let keys = self.key_columns(side, &b)?;
            for (kp, rows) in split_rows(&b, &keys, count)? {
                parts[kp][side].push(rows);
            }
        }
        Ok(())
    }
}
