//! The runtime: drives a [`Pipeline`] from real sources into real sinks.
//!
//! Each source runs in its own task and sends micro-batches through one bounded channel
//! to the driver task that owns the pipeline; each sink runs in its own task behind a
//! bounded channel. A slow sink therefore blocks the driver, which stops reading the
//! source channel, which blocks the sources: backpressure end to end, bounded memory.
//! A timer ticks processing time into the pipeline so idle partitions release the
//! watermark, and asks sinks to flush. Side effects the dataflow asks for are carried out
//! here, off the driver: late rows go to a dead-letter task that writes their files on a
//! blocking thread; reference tables are reloaded by a task per table.
//!
//! Checkpoints: every `interval` the driver takes a checkpoint between two messages. The
//! driver owns every operator's state and handles one message at a time, so the point
//! between two messages is a consistent cut (the barrier is aligned by construction):
//! sources' positions are those of the last batch processed (batches still in the source
//! channel are after the cut and are read again after a restore), and views' state is
//! snapshotted in memory. The barrier then travels down each sink's channel behind the
//! batches already sent, as a pre-commit; when every sink has acknowledged, the state
//! files and the manifest are written (off the runtime, on a blocking thread) and the
//! sinks are told to commit. A graceful stop takes a final checkpoint.

use crate::checkpoint::{CheckpointStore, SinkState};
use crate::clock::wall_ms;
use crate::connector::{RowIds, SinkCheckpoint, Source, SourceEvent};
use crate::dataflow::Effect;
use crate::dataflow::prepare::Prepared;
use crate::dead_letter::LateRowFiles;
use crate::error::{Result, WeirError};
use crate::fsutil::run_blocking;
use crate::pipeline::{Output, Pipeline, ScriptOutcome, Stage1Cell};
use crate::stats::{CheckpointStats, Stats, Status};
use crate::watermark::TimeReport;
use datafusion::arrow::record_batch::RecordBatch;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Stop once every source has ended (all must be bounded), after flushing sinks.
    pub until_done: bool,
    /// How often processing time is ticked into the pipeline.
    pub tick: Duration,
    /// How often sinks are asked to flush.
    pub flush_interval: Duration,
    /// Micro-batches in flight between sources and the driver, and per sink.
    pub channel_capacity: usize,
    /// Take checkpoints (the pipeline should have been restored from the store's latest
    /// one before the run).
    pub checkpoint: Option<CheckpointOptions>,
}

/// How long a stop waits for the final checkpoint, and then for each sink to close.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct CheckpointOptions {
    pub store: CheckpointStore,
    pub interval: Duration,
    /// How long a checkpoint waits for every sink's pre-commit before it is abandoned (the
    /// next one covers what it would have).
    pub timeout: Duration,
    /// The first epoch to write (one after the newest on disk).
    pub first_epoch: u64,
    pub stats: Arc<CheckpointStats>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            until_done: false,
            tick: Duration::from_millis(100),
            flush_interval: Duration::from_secs(1),
            channel_capacity: 8,
            checkpoint: None,
        }
    }
}

/// Why the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Every source ended and everything was flushed (`until_done`).
    Done,
    /// The shutdown signal arrived.
    Stopped,
}

/// A request to the driver task, which owns the pipeline (the HTTP server sends these).
#[derive(Debug)]
pub enum Control {
    /// Apply a script, as SQL files at start-up are applied; new sources and sinks start.
    Execute {
        sql: String,
        reply: oneshot::Sender<ScriptOutcome>,
    },
}

/// Sends [`Control`] requests to a running pipeline.
#[derive(Debug, Clone)]
pub struct Controller(mpsc::Sender<Control>);

impl Controller {
    /// A controller and the receiver to hand to [`run_with`].
    pub fn new() -> (Self, mpsc::Receiver<Control>) {
        let (tx, rx) = mpsc::channel(64);
        (Controller(tx), rx)
    }

    /// Apply `sql` in the running pipeline; `None` when the pipeline has stopped.
    pub async fn execute(&self, sql: String) -> Option<ScriptOutcome> {
        let (reply, rx) = oneshot::channel();
        self.0.send(Control::Execute { sql, reply }).await.ok()?;
        rx.await.ok()
    }
}

enum SourceMsg {
    Event(String, SourceEvent),
    /// A batch whose stage 1 runs in the task `prepared` (the driver waits for it when the
    /// batch's turn comes, so batches are prepared several at once but taken in order).
    Prepared {
        source: String,
        partition: usize,
        batch: RecordBatch,
        bad_records: u64,
        position: Option<i64>,
        prepared: JoinHandle<Result<Prepared>>,
    },
    Failed(String, WeirError),
}

enum SinkMsg {
    Batch(RecordBatch, RowIds),
    Flush,
    Precommit(u64, oneshot::Sender<Result<SinkCheckpoint>>),
    Commit(u64),
    Close,
}

struct SinkTask {
    name: String,
    tx: mpsc::Sender<SinkMsg>,
    handle: JoinHandle<Result<()>>,
}

fn spawn_source(
    name: String,
    mut source: Box<dyn Source>,
    stage1: Arc<Stage1Cell>,
    tx: mpsc::Sender<SourceMsg>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let event = source.next().await;
            // With a stage-1 program, a batch is prepared on any worker while the source
            // goes on reading (the program is read once per batch: views may change it).
            let program = match &event {
                Ok(SourceEvent::Batch { .. }) => stage1.read().clone(),
                _ => None,
            };
            match (event, program) {
                (
                    Ok(SourceEvent::Batch {
                        partition,
                        batch,
                        bad_records,
                        position,
                    }),
                    Some(program),
                ) => {
                    let input = batch.clone();
                    let prepared = tokio::spawn(async move { program.prepare(&input).await });
                    let msg = SourceMsg::Prepared {
                        source: name.clone(),
                        partition,
                        batch,
                        bad_records,
                        position,
                        prepared,
                    };
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
                (Ok(ev), _) => {
                    let end = matches!(ev, SourceEvent::End);
                    if tx.send(SourceMsg::Event(name.clone(), ev)).await.is_err() || end {
                        return;
                    }
                }
                (Err(e), _) => {
                    // The driver is gone (the run is over): nobody is left to tell.
                    let _ = tx.send(SourceMsg::Failed(name.clone(), e)).await;
                    return;
                }
            }
        }
    })
}

fn spawn_sink(new: crate::pipeline::NewSink, capacity: usize) -> SinkTask {
    let crate::pipeline::NewSink {
        name,
        stats,
        mut sink,
        restored,
        ..
    } = new;
    let (tx, mut rx) = mpsc::channel::<SinkMsg>(capacity);
    let task_name = name.clone();
    let handle = tokio::spawn(async move {
        let result: Result<()> = async {
            if let Some((epoch, _)) = &restored {
                tracing::info!(sink = %task_name, epoch, "sink recovering from the checkpoint");
            }
            sink.recover(restored).await?;
            while let Some(msg) = rx.recv().await {
                match msg {
                    SinkMsg::Batch(b, ids) => {
                        let n = b.num_rows() as u64;
                        sink.write(b, ids).await?;
                        Stats::add(&stats.rows_in, n);
                        Stats::add(&stats.rows_out, n);
                    }
                    SinkMsg::Flush => sink.flush().await?,
                    SinkMsg::Precommit(epoch, reply) => {
                        let r = sink.precommit(epoch).await;
                        let failed = r.as_ref().err().map(|e| e.to_string());
                        // A checkpoint that timed out stopped waiting for the answer; the
                        // next checkpoint covers what this one would have.
                        let _ = reply.send(r);
                        if let Some(e) = failed {
                            return Err(WeirError::external(format!(
                                "pre-commit of checkpoint {epoch}: {e}"
                            )));
                        }
                    }
                    SinkMsg::Commit(epoch) => sink.commit(epoch).await?,
                    SinkMsg::Close => break,
                }
            }
            sink.close().await
        }
        .await;
        if let Err(e) = &result {
            stats.fail(e.to_string());
            tracing::error!(sink = %task_name, error = %e, "sink failed");
        }
        result
    });
    SinkTask { name, tx, handle }
}

/// Run the pipeline until every source ends (`until_done`) or `shutdown` resolves.
pub async fn run(
    pipeline: Pipeline,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<RunEnd> {
    run_with(pipeline, options, shutdown, None).await
}

/// [`run`], taking [`Control`] requests from `control` while it runs.
///
/// A source that fails stops the run under `until_done` (the backfill cannot be complete);
/// otherwise it is marked failed, with its error, and the other pipelines go on.
pub async fn run_with(
    mut pipeline: Pipeline,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
    mut control: Option<mpsc::Receiver<Control>>,
) -> Result<RunEnd> {
    if options.until_done {
        let unbounded = pipeline.unbounded_sources();
        if !unbounded.is_empty() {
            return Err(WeirError::user(format!(
                "--until-done needs every source to end, but {} never end(s); give generators a \
                 'rows' count",
                unbounded.join(", ")
            )));
        }
    }
    let (tx, mut rx) = mpsc::channel::<SourceMsg>(options.channel_capacity);
    let mut sources: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut sinks: HashMap<String, Vec<SinkTask>> = HashMap::new();
    start_new(&mut pipeline, &tx, &mut sources, &mut sinks, &options);
    // With no control channel, the source channel closes when every source task is gone.
    let tx = control.is_some().then_some(tx);
    pipeline.start();
    let workers = pipeline.config().workers;
    if workers > 1 {
        tracing::info!(
            workers,
            "computing on {workers} workers: batches are prepared on any of them, merged in order"
        );
    }
    let late_rows = spawn_late_row_writer(pipeline.config().data_dir.clone());
    let mut epoch = options.checkpoint.as_ref().map_or(1, |c| c.first_epoch);
    let mut checkpointer = tokio::time::interval(
        options
            .checkpoint
            .as_ref()
            .map_or(Duration::from_secs(3600), |c| c.interval),
    );
    checkpointer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick completes at once; checkpoints start one interval in.
    checkpointer.reset();
    let mut ticker = tokio::time::interval(options.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut flusher = tokio::time::interval(options.flush_interval);
    flusher.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);

    let result: Result<RunEnd> = async {
        if options.until_done && pipeline.all_sources_ended() {
            return Ok(RunEnd::Done);
        }
        loop {
            let outputs: Vec<Output> = tokio::select! {
                biased;
                _ = &mut shutdown => return Ok(RunEnd::Stopped),
                Some(cmd) = recv_control(&mut control) => match cmd {
                    Control::Execute { sql, reply } => {
                        let outcome = pipeline.execute_script(&sql).await;
                        if let Some(tx) = &tx {
                            start_new(&mut pipeline, tx, &mut sources, &mut sinks, &options);
                        }
                        stop_dropped(&pipeline, &mut sources, &mut sinks);
                        // The requester gave up waiting: the statements were applied anyway.
                        let _ = reply.send(outcome);
                        vec![]
                    }
                },
                msg = rx.recv() => match msg {
                    Some(SourceMsg::Event(name, _)) if !pipeline.has_source(&name) => {
                        // Dropped while this was in flight.
                        vec![]
                    }
                    Some(SourceMsg::Event(name, ev)) => {
                        if let Some(stats) = pipeline.source_stats(&name) {
                            stats.mark_running();
                        }
                        match ev {
                            SourceEvent::Batch { partition, batch, bad_records, position } => {
                                pipeline
                                    .push_at(&name, partition, batch, bad_records, position)
                                    .await?
                            }
                            SourceEvent::PartitionEnd { partition } => {
                                pipeline.end_partition(&name, partition).await?
                            }
                            SourceEvent::Active { partition } => {
                                pipeline.keep_active(&name, partition)?;
                                vec![]
                            }
                            SourceEvent::Partitions { count } => {
                                pipeline.set_partitions(&name, count)?;
                                vec![]
                            }
                            SourceEvent::Progress { partition, event_time_ms } => {
                                pipeline
                                    .report_time(&name, partition, TimeReport::Progress, event_time_ms)
                                    .await?
                            }
                            SourceEvent::EarliestEventTime { partition, event_time_ms } => {
                                pipeline
                                    .report_time(&name, partition, TimeReport::Earliest, event_time_ms)
                                    .await?
                            }
                            SourceEvent::End => {
                                tracing::info!(source = %name, "source ended");
                                if let Some(stats) = pipeline.source_stats(&name) {
                                    stats.set_status(Status::Finished);
                                }
                                pipeline.end_source(&name).await?
                            }
                        }
                    }
                    Some(SourceMsg::Prepared { source, .. }) if !pipeline.has_source(&source) => {
                        vec![]
                    }
                    Some(SourceMsg::Prepared {
                        source,
                        partition,
                        batch,
                        bad_records,
                        position,
                        prepared,
                    }) => {
                        if let Some(stats) = pipeline.source_stats(&source) {
                            stats.mark_running();
                        }
                        match prepared.await {
                            Ok(Ok(prepared)) => {
                                pipeline
                                    .push_prepared(
                                        &source, partition, batch, prepared, bad_records, position,
                                    )
                                    .await?
                            }
                            // Stage 1 failed (a plan error) or panicked: the driver runs the
                            // batch itself, which reports the error as it always has.
                            Ok(Err(e)) => {
                                tracing::debug!(source = %source, error = %e, "stage 1 failed");
                                pipeline
                                    .push_at(&source, partition, batch, bad_records, position)
                                    .await?
                            }
                            Err(e) => {
                                tracing::warn!(source = %source, error = %e, "stage 1 task failed");
                                pipeline
                                    .push_at(&source, partition, batch, bad_records, position)
                                    .await?
                            }
                        }
                    }
                    Some(SourceMsg::Failed(name, _)) if !pipeline.has_source(&name) => vec![],
                    Some(SourceMsg::Failed(name, e)) if options.until_done => {
                        return Err(WeirError::external(format!("source '{name}' failed: {e}")));
                    }
                    Some(SourceMsg::Failed(name, e)) => {
                        tracing::error!(
                            source = %name,
                            error = %e,
                            "source failed; the views over it stop advancing, the rest go on"
                        );
                        if let Some(stats) = pipeline.source_stats(&name) {
                            stats.fail(e.to_string());
                        }
                        vec![]
                    }
                    None => {
                        // Every source task is gone; wait for the shutdown signal.
                        if options.until_done {
                            return Ok(RunEnd::Done);
                        }
                        shutdown.as_mut().await;
                        return Ok(RunEnd::Stopped);
                    }
                },
                _ = ticker.tick() => pipeline.tick().await?,
                _ = checkpointer.tick(), if options.checkpoint.is_some() => {
                    if let Some(c) = &options.checkpoint
                        && let Err(e) =
                            checkpoint(&mut pipeline, &sinks, c, &mut epoch, Some(c.timeout)).await
                    {
                        Stats::add(&c.stats.failed, 1);
                        tracing::error!(error = %e, "checkpoint failed; the next one tries again");
                    }
                    vec![]
                }
                _ = flusher.tick() => {
                    for t in sinks.values().flatten() {
                        send(t, SinkMsg::Flush).await?;
                    }
                    vec![]
                }
            };
            for e in pipeline.take_effects() {
                if late_rows.tx.send(e).await.is_err() {
                    return Err(WeirError::Internal("the dead-letter writer stopped".into()));
                }
            }
            for o in outputs {
                if let Some(tasks) = sinks.get(&o.view) {
                    for t in tasks {
                        send(t, SinkMsg::Batch(o.batch.clone(), o.ids)).await?;
                    }
                }
            }
            if options.until_done && pipeline.all_sources_ended() {
                return Ok(RunEnd::Done);
            }
        }
    }
    .await;

    for s in sources.values() {
        s.abort();
    }
    // A stop or the end of the input: a final checkpoint, so a restart starts exactly here.
    // Bounded in time: a sink that cannot reach its destination must not keep the process
    // from stopping (what it had not made durable is recomputed from the last checkpoint).
    if result.is_ok()
        && let Some(c) = &options.checkpoint
        && let Err(e) = checkpoint(&mut pipeline, &sinks, c, &mut epoch, Some(STOP_TIMEOUT)).await
    {
        tracing::error!(error = %e, "the final checkpoint failed; the next start restores the previous one");
    }
    // Close every sink, even after an error, so what was written is flushed.
    let stopping = matches!(result, Ok(RunEnd::Stopped)) && options.checkpoint.is_some();
    let mut sink_error = None;
    for t in sinks.into_values().flatten() {
        let name = t.name.clone();
        let closed = if stopping {
            match tokio::time::timeout(STOP_TIMEOUT, close_sink(t)).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::error!(
                        sink = %name,
                        "the sink did not close within {STOP_TIMEOUT:?}; what it had not written \
                         is recomputed from the last checkpoint at the next start"
                    );
                    Ok(())
                }
            }
        } else {
            close_sink(t).await
        };
        if let Err(e) = closed {
            sink_error.get_or_insert(e);
        }
    }
    if let Err(e) = late_rows.close().await {
        sink_error.get_or_insert(e);
    }
    let end = result?;
    match sink_error {
        Some(e) => Err(e),
        None => Ok(end),
    }
}

/// The task that writes late rows to views' dead-letter files, behind a bounded channel
/// (a slow disk slows the driver rather than growing memory).
struct LateRowWriter {
    tx: mpsc::Sender<Effect>,
    handle: JoinHandle<Result<()>>,
}

impl LateRowWriter {
    /// Write what is queued and stop; the first write error, if any.
    async fn close(self) -> Result<()> {
        drop(self.tx);
        self.handle
            .await
            .map_err(|e| WeirError::Internal(format!("dead-letter writer: {e}")))?
    }
}

fn spawn_late_row_writer(data_dir: std::path::PathBuf) -> LateRowWriter {
    let (tx, mut rx) = mpsc::channel::<Effect>(64);
    let handle = tokio::spawn(async move {
        let mut files = LateRowFiles::new(&data_dir);
        while let Some(Effect::LateRows(late)) = rx.recv().await {
            // File I/O on a blocking thread, one write at a time, in order.
            files = run_blocking("dead-letter writer", move || -> Result<LateRowFiles> {
                files.write(&late)?;
                Ok(files)
            })
            .await??;
        }
        Ok(())
    });
    LateRowWriter { tx, handle }
}

async fn recv_control(control: &mut Option<mpsc::Receiver<Control>>) -> Option<Control> {
    match control {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Start the sources and sinks the pipeline has not started yet.
fn start_new(
    pipeline: &mut Pipeline,
    tx: &mpsc::Sender<SourceMsg>,
    sources: &mut HashMap<String, JoinHandle<()>>,
    sinks: &mut HashMap<String, Vec<SinkTask>>,
    options: &RunOptions,
) {
    for (name, s) in pipeline.take_new_sources() {
        let stage1 = pipeline.stage1_cell(&name);
        let handle = spawn_source(name.clone(), s, stage1, tx.clone());
        sources.insert(name, handle);
    }
    // Views may have changed: sources' stage-1 programs follow.
    pipeline.refresh_stage1();
    // A table's refresh task lives with the source tasks (names are unique across kinds)
    // and is cancelled like them when the table is dropped.
    for r in pipeline.take_new_table_refreshes() {
        let name = r.name.clone();
        sources.insert(name, tokio::spawn(r.run()));
    }
    for s in pipeline.take_new_sinks() {
        let view = s.view.clone();
        sinks
            .entry(view)
            .or_default()
            .push(spawn_sink(s, options.channel_capacity));
    }
}

/// Stop the tasks of sources and sinks that were dropped: sources are cancelled, sinks
/// flushed and closed in the background.
fn stop_dropped(
    pipeline: &Pipeline,
    sources: &mut HashMap<String, JoinHandle<()>>,
    sinks: &mut HashMap<String, Vec<SinkTask>>,
) {
    sources.retain(|name, handle| {
        let keep = pipeline.has_source(name) || pipeline.has_table(name);
        if !keep {
            handle.abort();
            tracing::info!(object = %name, "source or table dropped");
        }
        keep
    });
    for tasks in sinks.values_mut() {
        let (keep, gone): (Vec<SinkTask>, Vec<SinkTask>) =
            tasks.drain(..).partition(|t| pipeline.has_sink(&t.name));
        *tasks = keep;
        for t in gone {
            tokio::spawn(async move {
                let name = t.name.clone();
                match close_sink(t).await {
                    Ok(()) => tracing::info!(sink = %name, "sink dropped and closed"),
                    Err(e) => {
                        tracing::error!(sink = %name, error = %e, "dropped sink failed to close")
                    }
                }
            });
        }
    }
    sinks.retain(|_, tasks| !tasks.is_empty());
}

async fn close_sink(t: SinkTask) -> Result<()> {
    // A sink task that already stopped has its error in its join result, read next.
    let _ = t.tx.send(SinkMsg::Close).await;
    match t.handle.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(WeirError::external(format!("sink '{}': {e}", t.name))),
        Err(e) => Err(WeirError::Internal(format!("sink '{}': {e}", t.name))),
    }
}

async fn send(t: &SinkTask, msg: SinkMsg) -> Result<()> {
    if t.tx.send(msg).await.is_err() {
        // The sink task stopped: it failed; its error is reported when it is joined.
        return Err(WeirError::external(format!("sink '{}' stopped", t.name)));
    }
    Ok(())
}

/// Take checkpoint `epoch` (see the module docs). An error means no checkpoint was
/// published (files not written, or a sink did not pre-commit in time); the caller logs
/// it and the run goes on. A sink that failed its pre-commit has stopped, and the next
/// batch sent to it ends the run as any sink failure does.
async fn checkpoint(
    pipeline: &mut Pipeline,
    sinks: &HashMap<String, Vec<SinkTask>>,
    c: &CheckpointOptions,
    epoch: &mut u64,
    deadline: Option<Duration>,
) -> Result<()> {
    let started = std::time::Instant::now();
    let this = *epoch;
    *epoch += 1;
    let snapshot = pipeline.snapshot().await?;
    let barrier = async {
        let mut acks = Vec::new();
        for t in sinks.values().flatten() {
            let (reply, rx) = oneshot::channel();
            send(t, SinkMsg::Precommit(this, reply)).await?;
            acks.push((t, rx));
        }
        let mut states = BTreeMap::new();
        for (t, rx) in acks {
            let precommit = match rx.await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    return Err(WeirError::external(format!(
                        "sink '{}' failed checkpoint {this}: {e}",
                        t.name
                    )));
                }
                Err(_) => {
                    return Err(WeirError::external(format!("sink '{}' stopped", t.name)));
                }
            };
            states.insert(t.name.clone(), precommit);
        }
        Ok(states)
    };
    let precommits = match deadline {
        None => barrier.await?,
        Some(d) => tokio::time::timeout(d, barrier).await.map_err(|_| {
            WeirError::external(format!(
                "not every sink answered checkpoint {this} within {d:?} (a sink is retrying or \
                 cannot reach its destination)"
            ))
        })??,
    };
    let mut sink_states = BTreeMap::new();
    for (name, precommit) in precommits {
        if let Some((sql, view)) = pipeline.sink_definition(&name) {
            sink_states.insert(
                name,
                SinkState {
                    sql,
                    view,
                    precommit,
                },
            );
        }
    }
    let store = c.store.clone();
    let taken_at = wall_ms();
    let written = run_blocking("checkpoint writer", move || {
        let r = store.write(this, snapshot, sink_states, taken_at);
        if r.is_ok()
            && let Err(e) = store.prune()
        {
            tracing::warn!(error = %e, "pruning old checkpoints failed");
        }
        r
    })
    .await?;
    let bytes = written?;
    for t in sinks.values().flatten() {
        send(t, SinkMsg::Commit(this)).await?;
    }
    let ms = started.elapsed().as_millis() as u64;
    c.stats.epoch.store(this, Ordering::Relaxed);
    Stats::add(&c.stats.completed, 1);
    c.stats.last_duration_ms.store(ms, Ordering::Relaxed);
    c.stats.last_bytes.store(bytes, Ordering::Relaxed);
    c.stats.last_at_ms.store(taken_at, Ordering::Relaxed);
    tracing::debug!(epoch = this, ms, bytes, "checkpoint complete");
    Ok(())
}
