//! The runtime: drives a [`Pipeline`] from real sources into real sinks.
//!
//! Each source runs in its own task and sends micro-batches through one bounded channel
//! to the driver task that owns the pipeline; each sink runs in its own task behind a
//! bounded channel. A slow sink therefore blocks the driver, which stops reading the
//! source channel, which blocks the sources: backpressure end to end, bounded memory.
//! A timer ticks processing time into the pipeline so idle partitions release the
//! watermark, and asks sinks to flush.

use crate::connector::{Sink, Source, SourceEvent};
use crate::error::{Result, WeirError};
use crate::pipeline::{Output, Pipeline, ScriptOutcome};
use crate::stats::{Stats, Status};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
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
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            until_done: false,
            tick: Duration::from_millis(100),
            flush_interval: Duration::from_secs(1),
            channel_capacity: 8,
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

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
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
    Failed(String, WeirError),
}

enum SinkMsg {
    Batch(datafusion::arrow::record_batch::RecordBatch),
    Flush,
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
    tx: mpsc::Sender<SourceMsg>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match source.next().await {
                Ok(ev) => {
                    let end = matches!(ev, SourceEvent::End);
                    if tx.send(SourceMsg::Event(name.clone(), ev)).await.is_err() || end {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(SourceMsg::Failed(name.clone(), e)).await;
                    return;
                }
            }
        }
    })
}

fn spawn_sink(
    name: String,
    stats: Arc<Stats>,
    mut sink: Box<dyn Sink>,
    capacity: usize,
) -> SinkTask {
    let (tx, mut rx) = mpsc::channel::<SinkMsg>(capacity);
    let task_name = name.clone();
    let handle = tokio::spawn(async move {
        let result: Result<()> = async {
            while let Some(msg) = rx.recv().await {
                match msg {
                    SinkMsg::Batch(b) => {
                        let n = b.num_rows() as u64;
                        sink.write(b).await?;
                        Stats::add(&stats.rows_in, n);
                        Stats::add(&stats.rows_out, n);
                    }
                    SinkMsg::Flush => sink.flush().await?,
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
    pipeline.start_clock(now_ms());
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
                        pipeline.set_processing_time(now_ms());
                        let outcome = pipeline.execute_script(&sql).await;
                        if let Some(tx) = &tx {
                            start_new(&mut pipeline, tx, &mut sources, &mut sinks, &options);
                        }
                        stop_dropped(&pipeline, &mut sources, &mut sinks);
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
                            SourceEvent::Batch { partition, batch, bad_records } => {
                                pipeline.set_processing_time(now_ms());
                                pipeline.push(&name, partition, batch, bad_records).await?
                            }
                            SourceEvent::PartitionEnd { partition } => {
                                pipeline.end_partition(&name, partition).await?
                            }
                            SourceEvent::Active { partition } => {
                                pipeline.set_processing_time(now_ms());
                                pipeline.keep_active(&name, partition)?;
                                vec![]
                            }
                            SourceEvent::Partitions { count } => {
                                pipeline.set_processing_time(now_ms());
                                pipeline.set_partitions(&name, count)?;
                                vec![]
                            }
                            SourceEvent::Progress { partition, event_time_ms } => {
                                pipeline.set_processing_time(now_ms());
                                pipeline.progress(&name, partition, event_time_ms).await?
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
                    Some(SourceMsg::Failed(name, _)) if !pipeline.has_source(&name) => vec![],
                    Some(SourceMsg::Failed(name, e)) if options.until_done => {
                        return Err(WeirError::External(format!("source '{name}' failed: {e}")));
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
                _ = ticker.tick() => pipeline.tick(now_ms()).await?,
                _ = flusher.tick() => {
                    for t in sinks.values().flatten() {
                        send(t, SinkMsg::Flush).await?;
                    }
                    vec![]
                }
            };
            for o in outputs {
                if let Some(tasks) = sinks.get(&o.view) {
                    for t in tasks {
                        send(t, SinkMsg::Batch(o.batch.clone())).await?;
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
    // Close every sink, even after an error, so what was written is flushed.
    let mut sink_error = None;
    for t in sinks.into_values().flatten() {
        if let Err(e) = close_sink(t).await {
            sink_error.get_or_insert(e);
        }
    }
    let end = result?;
    match sink_error {
        Some(e) => Err(e),
        None => Ok(end),
    }
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
        let handle = spawn_source(name.clone(), s, tx.clone());
        sources.insert(name, handle);
    }
    for s in pipeline.take_new_sinks() {
        sinks.entry(s.view).or_default().push(spawn_sink(
            s.name,
            s.stats,
            s.sink,
            options.channel_capacity,
        ));
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
        let keep = pipeline.has_source(name);
        if !keep {
            handle.abort();
            tracing::info!(source = %name, "source dropped");
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
    let _ = t.tx.send(SinkMsg::Close).await;
    match t.handle.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(WeirError::External(format!("sink '{}': {e}", t.name))),
        Err(e) => Err(WeirError::Internal(format!("sink '{}': {e}", t.name))),
    }
}

async fn send(t: &SinkTask, msg: SinkMsg) -> Result<()> {
    if t.tx.send(msg).await.is_err() {
        // The sink task stopped: it failed; its error is reported when it is joined.
        return Err(WeirError::External(format!("sink '{}' stopped", t.name)));
    }
    Ok(())
}
