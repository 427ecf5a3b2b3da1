//! A windowed view's state split into key partitions (`[engine] key_partitions`), and
//! stage 2 run on the workers.
//!
//! A window aggregate with group keys besides the window keeps one [`WindowAggregator`]
//! per key partition: a group's rows and state live in partition
//! `key_partitions(group key)` (`partition.rs`, a specified hash that never changes).
//! Each step of the view (fold a micro-batch, merge stage 1's partial states, close
//! windows, early results) gives every partition its share. A TUMBLE or HOP aggregate
//! with several partitions and workers hands its partitions to long-lived stage-2 tasks
//! fed by the exchange (`stage2.rs`): merges go to them without waiting, watermarks
//! follow in band, checkpoints are barriers. Otherwise (SESSION windows, one worker),
//! when a step has enough work the partitions' shares run as tasks on the workers at once
//! and the driver waits for all of them before the view's next step. The pieces of a
//! window that closes are put back together in partition order, so the view's output
//! (and the row ids sinks deduplicate by) depends on the number of key partitions, never
//! on the number of workers.
//!
//! A micro-batch is cut by key in one of two ways, whichever costs less: with few groups
//! per row (a dozen regions per minute), it is folded whole into an empty copy and only
//! the resulting partial states are cut (what stage 1 does on another worker, here
//! inline); with many (an auction per bid), its rows are cut, with the aggregate's inputs
//! evaluated once. Which one is measured on the batches themselves (`combine`); either
//! gives the same state.
//!
//! The number of partitions is part of the view's state: a checkpoint stores one state
//! file per partition and records the count, and a restored view keeps that count (a
//! changed `key_partitions` applies to views created afterwards) unless the run is told
//! to repartition (`[engine] repartition`), which re-splits the state by key.
//!
//! Window rows (top-N over unaggregated rows) and aggregates without group keys stay in
//! one partition.

use super::operator::StateFigures;
use super::stage2::{Part, Stage2};
use crate::error::{Result, WeirError};
use crate::window::{LateRow, Partial, UpdateStats, WindowAggregator, WindowOperator};
use crate::window::{split_indices, split_rows};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::record_batch::RecordBatch;
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// How a view's keyed state is split and worked on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keying {
    /// Key partitions of a new view (`[engine] key_partitions`).
    pub key_partitions: u32,
    /// Workers the partitions' work is spread over.
    pub workers: usize,
    /// Restore re-splits checkpointed state into `key_partitions` instead of keeping the
    /// checkpoint's count (`[engine] repartition`).
    pub repartition: bool,
}

/// How many key partitions an operator's state has: `configured` when it starts afresh,
/// and after a restore the count its checkpoint was written with, unless the run
/// repartitions. One rule for keyed windows, ranked rows and joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PartitionCount {
    configured: u32,
    repartition: bool,
}

impl PartitionCount {
    /// `splittable`: the operator has keys its state can be split by (else one partition).
    pub(crate) fn new(keying: Keying, splittable: bool) -> Self {
        PartitionCount {
            configured: if splittable {
                keying.key_partitions.max(1)
            } else {
                1
            },
            repartition: keying.repartition,
        }
    }

    /// The count of a view that starts afresh.
    pub(crate) fn configured(self) -> u32 {
        self.configured
    }

    /// The count after restoring a checkpoint written with `written` partitions.
    pub(crate) fn restored(self, written: u32) -> u32 {
        if self.repartition {
            self.configured
        } else {
            written.max(1)
        }
    }
}

/// `[engine] key_partitions` when not set.
pub const DEFAULT_KEY_PARTITIONS: u32 = 16;

/// Rows (or groups) below which one step's partitions run one after another on the driver:
/// handing them to other workers costs more than it saves.
const PARALLEL_WORK: usize = 4096;

/// A window operator's state: one aggregator per key partition, or window rows.
pub enum Windows {
    Keyed(Box<KeyedWindows>),
    Rows(KeyedRows),
}

/// Window rows (top-N over unaggregated rows): ranked on one worker, their state stored
/// per key partition of the ranking's PARTITION BY (besides the window) when there is
/// one, so a checkpoint is laid out as a keyed view's is.
pub struct KeyedRows {
    op: Box<dyn WindowOperator>,
    /// Key partitions of the checkpointed state (1: no PARTITION BY key).
    partitions: u32,
    count: PartitionCount,
}

pub struct KeyedWindows {
    /// One per key partition. With stage-2 tasks, each is worked on by its task and read
    /// here only once the tasks are idle (after a wait on them).
    parts: Vec<Part>,
    /// An empty copy of the view's aggregator that follows the partitions' watermark and
    /// `EMIT EVERY` clock: what the driver reads without touching the partitions.
    shape: WindowAggregator,
    /// TUMBLE or HOP (not SESSION): the view's watermark depends on the watermark alone.
    panes: bool,
    /// The long-lived tasks working on the partitions (`stage2.rs`), when there are
    /// several partitions and workers and stage 1 hands this view partial states.
    stage2: Option<Stage2>,
    count: PartitionCount,
    workers: usize,
    /// Whether the next batch is folded into an empty copy first and its partial states
    /// cut by key (few groups per batch), or its rows cut by key (many).
    combine: bool,
    /// Batches cut by rows until the next combined one measures again.
    probe_in: u32,
    /// Per partition, the rows cut to it and the partial states merged into it since the
    /// view started here (not checkpointed): where stage 2's work goes, for skew.
    work: Vec<u64>,
    /// Each partition's figures when last read (a partition its task is working on is
    /// not waited for: its last figures stand in).
    seen: Mutex<Vec<(u64, u64, u64)>>,
}

/// A batch whose partial states have more than this share of its rows (as 1 in N) is cut
/// by rows, as cutting the states saves little.
const COMBINE_MAX_GROUPS_PER_ROW: usize = 4;
/// Batches cut by rows between two that measure the groups per row again.
const PROBE_EVERY: u32 = 32;

impl Windows {
    pub fn new(op: Box<dyn WindowOperator>, keying: Keying) -> Result<Windows> {
        let agg = match op.into_aggregator() {
            Ok(agg) => agg,
            Err(op) => {
                let count = PartitionCount::new(keying, !op.partition_exprs().is_empty());
                return Ok(Windows::Rows(KeyedRows {
                    op,
                    partitions: count.configured(),
                    count,
                }));
            }
        };
        let count = PartitionCount::new(keying, agg.has_keys());
        let configured = count.configured();
        let shape = agg.empty_copy()?;
        let panes = agg.partial_copy().is_some();
        let mut parts = Vec::with_capacity(configured as usize);
        for _ in 1..configured {
            parts.push(Arc::new(Mutex::new(agg.empty_copy()?)));
        }
        parts.insert(0, Arc::new(Mutex::new(agg)));
        let mut k = KeyedWindows {
            parts,
            shape,
            panes,
            stage2: None,
            count,
            workers: keying.workers.max(1),
            combine: true,
            probe_in: 0,
            work: vec![0; configured as usize],
            seen: Mutex::new(vec![(0, 0, 0); configured as usize]),
        };
        k.start_tasks();
        Ok(Windows::Keyed(Box::new(k)))
    }

    /// For DESCRIBE: how the state is split and worked on.
    pub fn describe_partitioning(&self) -> String {
        match self {
            Windows::Keyed(k) if k.parts.len() > 1 => {
                let keys = k.shape.partition_key_names().join(", ");
                match &k.stage2 {
                    Some(t) => format!(
                        "state in {} key partitions by [{keys}], worked on by {} stage-2 \
                         tasks fed by the exchange",
                        k.parts.len(),
                        t.tasks()
                    ),
                    None => format!(
                        "state in {} key partitions by [{keys}], up to {} worked on at once",
                        k.parts.len(),
                        k.workers.min(k.parts.len())
                    ),
                }
            }
            Windows::Keyed(_) => "state in 1 key partition".to_string(),
            Windows::Rows(r) if r.partitions > 1 => format!(
                "state stored in {} key partitions by the ranking's PARTITION BY, ranked on one \
                 worker",
                r.partitions
            ),
            Windows::Rows(_) => {
                "state in 1 key partition (the rows of a window are ranked together)".to_string()
            }
        }
    }

    /// Key partitions of the view's state.
    pub fn key_partitions(&self) -> u32 {
        match self {
            Windows::Keyed(k) => k.parts.len() as u32,
            Windows::Rows(r) => r.partitions,
        }
    }

    pub fn start_clock(&mut self, now_ms: i64) -> Result<()> {
        match self {
            Windows::Keyed(k) => k.shape.start_clock(now_ms),
            Windows::Rows(r) => r.op.start_clock(now_ms),
        }
        Ok(())
    }

    pub fn input_time_column(&self) -> Result<String> {
        Ok(match self {
            Windows::Keyed(k) => k.shape.input_time_column().to_string(),
            Windows::Rows(r) => r.op.input_time_column().to_string(),
        })
    }

    pub fn closed_through(&self) -> Result<i64> {
        Ok(match self {
            Windows::Keyed(k) => k.shape.closed_through(),
            Windows::Rows(r) => r.op.closed_through(),
        })
    }

    /// Whether early results are due (moves the clock on).
    pub fn emit_due(&mut self, now_ms: i64) -> Result<bool> {
        Ok(match self {
            Windows::Keyed(k) => k.shape.emit_due(now_ms),
            Windows::Rows(r) => r.op.emit_due(now_ms),
        })
    }

    pub fn emit_period(&self) -> Result<Option<i64>> {
        Ok(match self {
            Windows::Keyed(k) => k.shape.emit_period(),
            Windows::Rows(r) => r.op.emit_period(),
        })
    }

    /// The watermark the view can promise downstream (the least over its partitions).
    pub fn output_watermark(&self, input_watermark: i64) -> Result<i64> {
        match self {
            // TUMBLE and HOP: a function of the watermark alone (so stage-2 tasks, which
            // only SESSION-less views have, are never waited for here).
            Windows::Keyed(k) if k.panes => Ok(k.shape.output_watermark(input_watermark)),
            Windows::Keyed(k) => {
                let mut w = i64::MAX;
                for p in &k.parts {
                    w = w.min(p.lock().output_watermark(input_watermark));
                }
                Ok(w)
            }
            Windows::Rows(r) => Ok(r.op.output_watermark(input_watermark)),
        }
    }

    /// The state's size, summed over the partitions, and the largest partition's groups.
    /// A partition its stage-2 task is working on is not waited for: its figures from the
    /// last read stand in.
    pub fn figures(&self) -> StateFigures {
        match self {
            Windows::Keyed(k) => {
                let mut f = StateFigures::default();
                let mut busiest = 0;
                let mut seen = k.seen.lock();
                for (p, last) in k.parts.iter().zip(seen.iter_mut()) {
                    if let Some(p) = p.try_lock() {
                        *last = (
                            p.open_windows() as u64,
                            p.open_groups() as u64,
                            p.state_bytes() as u64,
                        );
                    }
                    let (windows, groups, bytes) = *last;
                    f.open_windows = f.open_windows.max(windows);
                    f.open_groups += groups;
                    f.bytes += bytes;
                    busiest = busiest.max(groups);
                }
                f.key_partitions = k.parts.len() as u64;
                f.busiest_partition_groups = busiest;
                let total: u64 = k.work.iter().sum();
                let most = k.work.iter().copied().max().unwrap_or(0);
                f.busiest_partition_share = (most * 100).checked_div(total).unwrap_or(0);
                f
            }
            Windows::Rows(r) => {
                let groups = r.op.open_groups() as u64;
                StateFigures {
                    open_windows: r.op.open_windows() as u64,
                    open_groups: groups,
                    bytes: r.op.state_bytes() as u64,
                    key_partitions: u64::from(r.partitions),
                    busiest_partition_groups: groups,
                    busiest_partition_share: 100,
                }
            }
        }
    }

    /// Fold one batch of the pre plan's output; with `list_late`, late rows are listed by
    /// their row in it (else only counted).
    pub async fn update(&mut self, batch: &RecordBatch, list_late: bool) -> Result<UpdateStats> {
        match self {
            Windows::Keyed(k) => k.update(batch, list_late).await,
            Windows::Rows(r) => r.op.update(batch),
        }
    }

    /// Close the windows the watermark passed: one batch per window, oldest first.
    pub async fn close(&mut self, watermark_ms: i64) -> Result<Vec<RecordBatch>> {
        match self {
            Windows::Keyed(k) => {
                let closes = k.shape.closes_any(watermark_ms);
                k.shape.close_windows(watermark_ms)?;
                let done = match &mut k.stage2 {
                    Some(t) => t.close(watermark_ms, closes).await?,
                    None => {
                        let work = k.groups();
                        k.each(k.all(|_| watermark_ms), work, |p, w| p.close_windows(w))
                            .await?
                    }
                };
                join_windows(done)
            }
            Windows::Rows(r) => r.op.close(watermark_ms),
        }
    }

    /// Early results of the open windows that changed.
    pub async fn early(&mut self) -> Result<Vec<RecordBatch>> {
        match self {
            Windows::Keyed(k) => {
                k.sync().await?;
                // A window's early result is all of its groups when any of them changed,
                // whichever partitions they are in.
                let mut starts = BTreeSet::new();
                for p in &k.parts {
                    if let Some(s) = p.lock().changed_windows() {
                        starts.extend(s);
                    }
                }
                let starts = Arc::new(starts);
                let work = k.groups();
                let done = k
                    .each(k.all(|_| starts.clone()), work, |p, s| {
                        p.early_windows_at(&s)
                    })
                    .await?;
                join_windows(done)
            }
            Windows::Rows(r) => r.op.early(),
        }
    }

    /// An empty copy for stage 1 to fold micro-batches into, and the key partitions to cut
    /// its partial states into; `None`: no stage 1 for this view.
    pub fn partial_copy(&self) -> Option<(WindowAggregator, u32)> {
        match self {
            Windows::Keyed(k) => Some((k.shape.partial_copy()?, k.parts.len() as u32)),
            Windows::Rows(_) => None,
        }
    }

    /// Stage 2: merge what stage 1 folded, each partition its share.
    pub async fn merge_partial(&mut self, partial: Partial) -> Result<UpdateStats> {
        let Windows::Keyed(k) = self else {
            return Err(WeirError::Internal(
                "a partial state for window rows".into(),
            ));
        };
        k.merge(partial).await
    }

    /// The state, one list of batches per key partition; `epoch` is the checkpoint's, for
    /// the stage-2 tasks' barrier.
    pub async fn snapshot(&mut self, epoch: u64) -> Result<Vec<Vec<RecordBatch>>> {
        match self {
            Windows::Keyed(k) => match &mut k.stage2 {
                Some(t) => Ok(t
                    .checkpoint(epoch)
                    .await?
                    .into_iter()
                    .map(|(_, s)| s)
                    .collect()),
                None => k.parts.iter().map(|p| p.lock().snapshot()).collect(),
            },
            Windows::Rows(r) => r.snapshot(),
        }
    }

    /// Put back [`Windows::snapshot`]'s state, written with `written` key partitions.
    pub fn restore(
        &mut self,
        states: Vec<Vec<RecordBatch>>,
        written: u32,
        closed_through: i64,
        emit_period: Option<i64>,
    ) -> Result<()> {
        let k = match self {
            Windows::Rows(r) => {
                // Ranked together: every partition's rows go back into the one operator.
                r.partitions = r.count.restored(written);
                let batches = states.concat();
                return r.op.restore(&batches, closed_through, emit_period);
            }
            Windows::Keyed(k) => k,
        };
        let count = k.count.restored(written);
        let shares = if count == written && states.len() == count as usize {
            states
        } else {
            if count != written {
                tracing::info!(
                    from = written,
                    to = count,
                    "repartitioning the view's state into {count} key partitions"
                );
            }
            k.shape.split_states(&states.concat(), count)?
        };
        // The tasks own the old partitions: they stop (their input closes) and new ones
        // start over the restored state.
        k.stage2 = None;
        let mut parts = Vec::with_capacity(shares.len());
        for share in shares {
            let mut p = k.shape.empty_copy()?;
            p.restore(&share, closed_through, emit_period)?;
            parts.push(Arc::new(Mutex::new(p)));
        }
        k.shape.restore(&[], closed_through, emit_period)?;
        k.work = vec![0; parts.len()];
        *k.seen.lock() = vec![(0, 0, 0); parts.len()];
        k.parts = parts;
        k.start_tasks();
        Ok(())
    }
}

impl KeyedRows {
    /// The held rows, cut by the ranking's PARTITION BY into the key partitions.
    fn snapshot(&mut self) -> Result<Vec<Vec<RecordBatch>>> {
        let state = self.op.snapshot()?;
        if self.partitions == 1 {
            return Ok(vec![state]);
        }
        let exprs = self.op.partition_exprs();
        let mut out = vec![Vec::new(); self.partitions as usize];
        for b in state {
            // The state's first column is the pane; the expressions read the rows after it.
            let rows = b.project(&(1..b.num_columns()).collect::<Vec<_>>())?;
            let n = rows.num_rows();
            let keys = exprs
                .iter()
                .map(|e| e.evaluate(&rows).and_then(|v| v.into_array(n)))
                .collect::<datafusion::error::Result<Vec<_>>>()?;
            for (kp, part) in split_rows(&b, &keys, self.partitions)? {
                out[kp].push(part);
            }
        }
        Ok(out)
    }
}

impl KeyedWindows {
    /// Start stage-2 tasks when they pay: several partitions and workers, partial states
    /// from stage 1 (TUMBLE and HOP), and a runtime to run them on.
    fn start_tasks(&mut self) {
        if self.parts.len() > 1
            && self.workers > 1
            && self.panes
            && tokio::runtime::Handle::try_current().is_ok()
        {
            self.stage2 = Some(Stage2::spawn(&self.parts, self.workers));
        }
    }

    /// Wait until the stage-2 tasks have handled everything sent to them, so the
    /// partitions can be read here.
    async fn sync(&mut self) -> Result<()> {
        match &mut self.stage2 {
            Some(t) => t.sync().await,
            None => Ok(()),
        }
    }

    /// Add each partition's share of a step (`(partition, input, weight)`) to its work.
    fn count_work<I>(&mut self, inputs: &[(usize, I, usize)]) {
        for (kp, _, w) in inputs {
            if let Some(n) = self.work.get_mut(*kp) {
                *n += *w as u64;
            }
        }
    }

    fn groups(&self) -> usize {
        self.parts.iter().map(|p| p.lock().open_groups()).sum()
    }

    /// Every partition with the same input, weighted by its groups.
    fn all<I>(&self, input: impl Fn(usize) -> I) -> Vec<(usize, I, usize)> {
        (0..self.parts.len())
            .map(|kp| (kp, input(kp), self.parts[kp].lock().open_groups()))
            .collect()
    }

    /// Merge partial states, each partition its share.
    async fn merge(&mut self, partial: Partial) -> Result<UpdateStats> {
        let stats = self.shape.partial_stats(&partial);
        let n = self.parts.len();
        // A program prepared before the view's partitions changed (a restore) cut into
        // another count.
        let shares = if partial.states.len() == n {
            partial.states
        } else {
            self.shape
                .split_states(&partial.states.concat(), n as u32)?
        };
        let rows = |s: &[RecordBatch]| s.iter().map(|b| b.num_rows()).sum::<usize>();
        let work = shares.iter().map(|s| rows(s)).sum();
        let inputs = shares
            .into_iter()
            .enumerate()
            .filter(|(_, s)| !s.is_empty())
            .map(|(kp, s)| {
                let w = rows(&s);
                (kp, s, w)
            })
            .collect::<Vec<_>>();
        self.count_work(&inputs);
        if let Some(t) = &mut self.stage2 {
            for (kp, s, _) in inputs {
                t.send(kp, s).await?;
            }
        } else {
            self.each(inputs, work, |p, s| p.merge_states(&s)).await?;
        }
        Ok(stats)
    }

    async fn update(&mut self, batch: &RecordBatch, list_late: bool) -> Result<UpdateStats> {
        let n = batch.num_rows();
        if self.parts.len() == 1 {
            return self.parts[0].lock().update(batch);
        }
        // A batch with few groups (a handful of regions per window) costs least folded
        // whole into an empty copy, whose partial states are then cut by key: what stage 1
        // does on another worker, here inline. Late rows are then only counted.
        if !list_late
            && (self.combine || self.probe_in == 0)
            && let Some(scratch) = self.shape.partial_copy()
        {
            let parts = self.parts.len() as u32;
            let partial = scratch.partial(std::slice::from_ref(batch), parts)?;
            let groups: usize = partial.states.iter().flatten().map(|b| b.num_rows()).sum();
            self.combine = groups.saturating_mul(COMBINE_MAX_GROUPS_PER_ROW) <= n;
            self.probe_in = PROBE_EVERY;
            return self.merge(partial).await;
        }
        self.probe_in = self.probe_in.saturating_sub(1);
        self.sync().await?;
        // Evaluated once; each partition gets its rows of the columns the aggregate reads.
        let evaluated = self.shape.evaluate(batch)?;
        let mut inputs = Vec::new();
        for (kp, idx) in split_indices(evaluated.keys(), n, self.parts.len() as u32)? {
            let rows = evaluated.take(&idx)?;
            let w = idx.len();
            inputs.push((kp, (rows, idx), w));
        }
        self.count_work(&inputs);
        let done = self
            .each(inputs, n, |p, (rows, idx)| {
                Ok((p.update_evaluated(rows)?, idx))
            })
            .await?;
        let mut stats = UpdateStats::default();
        for (_, (u, idx)) in done {
            stats.accepted += u.accepted;
            stats.late += u.late;
            stats
                .late_rows
                .extend(u.late_rows.into_iter().map(|l| LateRow {
                    row: idx.value(l.row) as usize,
                    ..l
                }));
        }
        stats.late_rows.sort_by_key(|l| l.row);
        Ok(stats)
    }

    /// [`fork_join`] over the partitions. Not while stage-2 tasks may be working
    /// (callers wait for them first).
    async fn each<I, O>(
        &mut self,
        inputs: Vec<(usize, I, usize)>,
        work: usize,
        f: fn(&mut WindowAggregator, I) -> Result<O>,
    ) -> Result<Vec<(usize, O)>>
    where
        I: Send + 'static,
        O: Send + 'static,
    {
        fork_join(&self.parts, inputs, work, self.workers, f).await
    }
}

/// Run `f` on each listed partition of `parts` with its input (`(partition, input,
/// weight)`), as tasks on up to `workers` workers when `work` is large enough, else one
/// after another here. The results come back in partition order.
pub(crate) async fn fork_join<T, I, O>(
    parts: &[Arc<Mutex<T>>],
    inputs: Vec<(usize, I, usize)>,
    work: usize,
    workers: usize,
    f: fn(&mut T, I) -> Result<O>,
) -> Result<Vec<(usize, O)>>
where
    T: Send + 'static,
    I: Send + 'static,
    O: Send + 'static,
{
    let tasks = if work >= PARALLEL_WORK && tokio::runtime::Handle::try_current().is_ok() {
        workers.min(inputs.len())
    } else {
        1
    };
    let part = |kp: usize| {
        parts
            .get(kp)
            .ok_or_else(|| WeirError::Internal(format!("no key partition {kp}")))
    };
    let mut results = Vec::with_capacity(inputs.len());
    if tasks <= 1 {
        for (kp, input, _) in inputs {
            results.push((kp, f(&mut part(kp)?.lock(), input)?));
        }
        return Ok(results);
    }
    // Deal the partitions to the tasks, heaviest first, each to the lightest task.
    let mut jobs = inputs;
    jobs.sort_by_key(|j| std::cmp::Reverse(j.2));
    type Share<T, I> = Vec<(usize, Arc<Mutex<T>>, I)>;
    let mut shares: Vec<(usize, Share<T, I>)> = (0..tasks).map(|_| (0, Vec::new())).collect();
    for (kp, input, w) in jobs {
        let lightest = shares
            .iter_mut()
            .min_by_key(|s| s.0)
            .ok_or_else(|| WeirError::Internal("no task to deal key partitions to".into()))?;
        lightest.0 += w;
        lightest.1.push((kp, part(kp)?.clone(), input));
    }
    let handles: Vec<_> = shares
        .into_iter()
        .map(|(_, share)| {
            tokio::spawn(async move {
                share
                    .into_iter()
                    .map(|(kp, p, input)| (kp, f(&mut p.lock(), input)))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut failed = None;
    let mut outcomes = Vec::new();
    for h in handles {
        match h.await {
            Ok(done) => outcomes.extend(done),
            Err(e) => failed = Some(e),
        }
    }
    if let Some(e) = failed {
        return Err(WeirError::Internal(format!(
            "a task working on key partitions failed ({e}); their state may be half updated \
             and the view stops: restart from the last checkpoint"
        )));
    }
    outcomes.sort_by_key(|(kp, _)| *kp);
    for (kp, r) in outcomes {
        results.push((kp, r?));
    }
    Ok(results)
}

/// The pieces of each window from every partition, in partition order, as one batch per
/// window, oldest first.
fn join_windows(done: Vec<(usize, Vec<(i64, RecordBatch)>)>) -> Result<Vec<RecordBatch>> {
    let mut windows: BTreeMap<i64, Vec<RecordBatch>> = BTreeMap::new();
    for (_, pieces) in done {
        for (tag, b) in pieces {
            windows.entry(tag).or_default().push(b);
        }
    }
    windows
        .into_values()
        .map(|mut pieces| match pieces.len() {
            1 => Ok(pieces.swap_remove(0)),
            _ => Ok(concat_batches(&pieces[0].schema(), &pieces)?),
        })
        .collect()
}
