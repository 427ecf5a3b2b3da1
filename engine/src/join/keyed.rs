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

use super::StreamJoin;
use crate::dataflow::keyed::{Keying, fork_join};
use crate::dataflow::operator::StateFigures;
use crate::dataflow::partition::{key_hashes, key_partitions};
use crate::error::{Result, WeirError};
use crate::window::split_rows;
use datafusion::arrow::array::{UInt32Array, new_empty_array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::record_batch::RecordBatch;
use parking_lot::Mutex;
use std::sync::Arc;

type Shard = Arc<Mutex<StreamJoin>>;

/// What one shard's share of a batch gives: `(inserts, deletes)`.
type Changes = (Vec<RecordBatch>, Vec<RecordBatch>);

pub struct KeyedJoin {
    shards: Vec<Shard>,
    /// Key partitions of the state (checkpoints store one set of files per partition).
    partitions: u32,
    /// The count a view of this definition gets when it starts afresh.
    configured: u32,
    workers: usize,
    repartition: bool,
    /// Rows each key partition has taken since the view started here (counted with
    /// several shards, where each row's partition is worked out; not checkpointed).
    work: Vec<u64>,
}

impl KeyedJoin {
    pub fn new(join: StreamJoin, keying: Keying) -> Result<KeyedJoin> {
        let hashable = join
            .key_types()
            .iter()
            .all(|t| key_hashes(&[new_empty_array(t)], 0).is_ok());
        let configured = if hashable {
            keying.key_partitions.max(1)
        } else {
            1
        };
        let mut k = KeyedJoin {
            shards: vec![Arc::new(Mutex::new(join))],
            partitions: configured,
            configured,
            workers: keying.workers.max(1),
            repartition: keying.repartition,
            work: vec![0; configured as usize],
        };
        let template = k.first().empty_copy()?;
        k.shards = k.make_shards(&template)?;
        Ok(k)
    }

    /// One empty join per shard: as many as workers, at most one per partition.
    fn make_shards(&self, template: &StreamJoin) -> Result<Vec<Shard>> {
        let n = self.workers.min(self.partitions as usize).max(1);
        (0..n)
            .map(|_| Ok(Arc::new(Mutex::new(template.empty_copy()?))))
            .collect()
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
        let n = self.partitions as usize;
        let mut out: Vec<Vec<RecordBatch>> = vec![Vec::new(); 2 * n];
        for shard in &self.shards {
            let shard = shard.lock();
            for (side, batches) in shard.snapshot()?.into_iter().enumerate() {
                for b in batches {
                    if n == 1 {
                        out[side].push(b);
                        continue;
                    }
                    let keys = shard.key_columns(side, &b)?;
                    for (kp, rows) in split_rows(&b, &keys, self.partitions)? {
                        out[2 * kp + side].push(rows);
                    }
                }
            }
        }
        Ok(out)
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
        let count = if self.repartition {
            self.configured
        } else {
            written
        };
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
            let mut parts: Vec<[Vec<RecordBatch>; 2]> =
                (0..count).map(|_| [Vec::new(), Vec::new()]).collect();
            let first = self.first();
            for (i, batches) in states.into_iter().enumerate() {
                let side = i % 2;
                for b in batches {
                    let keys = first.key_columns(side, &b)?;
                    for (kp, rows) in split_rows(&b, &keys, count)? {
                        parts[kp][side].push(rows);
                    }
                }
            }
            parts
        };
        self.partitions = count;
        self.work = vec![0; count as usize];
        let template = self.first().empty_copy()?;
        let shards = self.make_shards(&template)?;
        let mut shares: Vec<[Vec<RecordBatch>; 2]> = (0..shards.len())
            .map(|_| [Vec::new(), Vec::new()])
            .collect();
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
