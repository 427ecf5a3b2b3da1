//! A Weir cluster member's Kafka side (docs/cluster.md): for each view, a stage-1 thread
//! that reads the input partitions the member is assigned and writes partial states to
//! the view's exchange topic, and a stage-2 thread that owns the exchange partitions (key
//! partitions) it is assigned, closes their windows and writes their rows to the view's
//! sinks. The engine's halves are `weir_engine::cluster`.
//!
//! Exactly once, step by step:
//! - Stage 1 writes a step's exchange records in one Kafka transaction with the input
//!   positions it consumed (`send_offsets_to_transaction` with the group's metadata,
//!   KIP-447). A member that lost its partitions cannot commit (the group generation moved
//!   on), so what it sent is aborted and never read (`read_committed`).
//! - Stage 2's state is a function of the exchange partition's log. Every
//!   `snapshot_interval`, after the sinks flushed, each owned partition's state goes to
//!   `<state_dir>/<view>/kp-<n>/<offset>.arrow` and then `offset` is committed to the
//!   stage-2 group. A new owner starts at the committed offset from the snapshot written
//!   for it, so it writes again at most the rows written since; the sinks a cluster takes
//!   write by key or by deterministic row id, so those rows overwrite themselves.
//! - A partition revoked in a rebalance is snapshotted and committed before it goes.

use super::exchange::{envelope_of, record_of};
use super::source::{ClusterInput, Pending, dead_letter_headers};
use crate::format::BadRecords;
use datafusion::arrow::ipc::reader::{FileReader, StreamReader};
use datafusion::arrow::ipc::writer::{FileWriter, StreamWriter};
use datafusion::arrow::record_batch::RecordBatch;
use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, ClientContext, Message as _};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use weir_engine::cluster::{ClusterView, KeySnapshot, KeyTask, ResultsReader};
use weir_engine::connector::{RowIds, Sink};
use weir_engine::dataflow::exchange::Message;
use weir_engine::fsutil::io_error;
use weir_engine::serving::ViewBuffer;
use weir_engine::{Result, WeirError};

use super::common::kafka_error;

const TXN_TIMEOUT: Duration = Duration::from_secs(30);
const METADATA_TIMEOUT: Duration = Duration::from_secs(30);
const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// How a stage thread that failed waits before it starts again.
const RESTART: weir_engine::backoff::Backoff =
    weir_engine::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));

/// The `[cluster]` settings a member runs with.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// The cluster's name: every member with the same group shares the work.
    pub group: String,
    /// This member's id, unique in the group and stable across its restarts (static
    /// membership: a restart within the session timeout keeps its partitions).
    pub member: String,
    pub session_timeout: Duration,
    /// Where stage-2 snapshots go: a directory every member can read.
    pub state_dir: PathBuf,
    pub snapshot_interval: Duration,
    /// A stage-1 step (one Kafka transaction) takes up to this many input records...
    pub step_rows: usize,
    /// ...or what came within this long.
    pub step_delay: Duration,
}

/// The exchange topic of `view` in cluster `group`.
pub fn exchange_topic(group: &str, view: &str) -> String {
    format!("weir.{group}.{view}.exchange")
}

/// The results topic of `view` in cluster `group`: every row the view emits, read by
/// every member to serve the view.
pub fn results_topic(group: &str, view: &str) -> String {
    format!("weir.{group}.{view}.results")
}

/// The consumer group of a source's stage 1 (its input partitions).
pub fn stage1_group(group: &str, source: &str) -> String {
    format!("weir.{group}.{source}.stage1")
}

/// The consumer group of a view's stage 2 (its key partitions).
pub fn stage2_group(group: &str, view: &str) -> String {
    format!("weir.{group}.{view}.stage2")
}

/// What a member's threads for one view report (the cluster page and logs).
#[derive(Debug, Default)]
pub struct ViewStatus {
    pub inputs: Mutex<Vec<i32>>,
    pub keys: Mutex<Vec<i32>>,
    pub rebalances: AtomicU64,
    /// Stage-1 transactions committed and aborted.
    pub committed: AtomicU64,
    pub aborted: AtomicU64,
    /// Input records of committed stage-1 steps (read by this member).
    pub records_in: AtomicU64,
    /// Exchange bytes written by this member.
    pub exchange_bytes: AtomicU64,
    /// Windows' rows written to the sinks by this member.
    pub rows_out: AtomicU64,
    /// Snapshots written, and the last restore (partition, open groups, milliseconds).
    pub snapshots: AtomicU64,
    pub last_restore: Mutex<Option<(i32, usize, u64)>>,
}

/// Create one of a view's internal topics (`what`: "exchange", "results") with
/// `partitions` partitions, or check the one there has that many.
pub async fn ensure_topic(
    client: &ClientConfig,
    topic: &str,
    partitions: u32,
    what: &str,
) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client
        .create()
        .map_err(|e| kafka_error("creating the cluster's admin client", e))?;
    let new = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(-1))
        .set("cleanup.policy", "delete");
    let results = admin
        .create_topics(&[new], &AdminOptions::new())
        .await
        .map_err(|e| kafka_error(&format!("creating the {what} topic '{topic}'"), e))?;
    for r in results {
        match r {
            Ok(_) => tracing::info!(topic, partitions, "created the {what} topic"),
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(WeirError::external_source(
                    format!("creating the {what} topic '{topic}'"),
                    KafkaError::AdminOp(code),
                ));
            }
        }
    }
    let have = partition_ids(client, topic).await?.len();
    if have != partitions as usize {
        let why = if what == "exchange" {
            "every member must run with the same [engine] key_partitions"
        } else {
            "it was not created by Weir"
        };
        return Err(WeirError::user(format!(
            "the {what} topic '{topic}' has {have} partitions where {partitions} are \
             expected: {why}; or delete the topic (and the cluster's state directory) to \
             start the view afresh"
        )));
    }
    Ok(())
}

/// The partition ids of `topic`, waiting for it to exist.
pub async fn partition_ids(client: &ClientConfig, topic: &str) -> Result<Vec<i32>> {
    let client = client.clone();
    let topic = topic.to_string();
    weir_engine::fsutil::run_blocking("reading topic metadata", move || {
        let consumer: BaseConsumer = client
            .create()
            .map_err(|e| kafka_error("creating a metadata client", e))?;
        let started = Instant::now();
        loop {
            let md = consumer
                .fetch_metadata(Some(&topic), METADATA_TIMEOUT)
                .map_err(|e| kafka_error(&format!("reading the metadata of '{topic}'"), e))?;
            let ids: Vec<i32> = md
                .topics()
                .iter()
                .filter(|t| t.name() == topic && t.error().is_none())
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            if !ids.is_empty() {
                let mut ids = ids;
                ids.sort_unstable();
                return Ok(ids);
            }
            if started.elapsed() > METADATA_TIMEOUT {
                return Err(WeirError::user(format!(
                    "topic '{topic}' does not exist (waited {}s)",
                    METADATA_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    })
    .await?
}

/// One view of a source, with the sinks that read it.
pub struct ViewParts {
    pub view: Arc<ClusterView>,
    pub sinks: Vec<Box<dyn Sink>>,
    /// Where this member keeps the view's rows for readers (REST, WebSocket).
    pub buffer: Option<Arc<ViewBuffer>>,
}

/// What runs on this member for one source: a stage-1 thread for the source (one read of
/// the input feeds every view over it) and a stage-2 thread per view.
pub struct MemberSource {
    pub source: String,
    pub views: Vec<(String, Arc<ViewStatus>)>,
    stop: Arc<AtomicBool>,
    failure: Arc<Mutex<Option<WeirError>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl MemberSource {
    /// The error that stopped this source's work for good, if one did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().as_ref().map(|e| e.to_string())
    }

    /// Stop the threads: stage 2 snapshots and commits what it owns first, so a member
    /// stopped this way hands over without a replay.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!(source = %self.source, "a cluster thread panicked");
            }
        }
    }
}

/// Start a source's views on this member: their exchange topics are created first, then
/// the threads. Each thread starts itself again after an error (logged), from what was
/// committed.
pub async fn start_source(
    settings: &ClusterSettings,
    input: ClusterInput,
    views: Vec<ViewParts>,
    handle: tokio::runtime::Handle,
) -> Result<MemberSource> {
    if input.dead_letter_to_file() && input.policy() == BadRecords::DeadLetter {
        return Err(WeirError::user(format!(
            "source '{}': a cluster writes dead letters to a topic ('dead.letter' = \
             'topic'), not to a member's file",
            input.source()
        )));
    }
    let client = input.client_config(&[]);
    let inputs = partition_ids(&client, input.topic()).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let failure = Arc::new(Mutex::new(None));
    let source = input.source().to_string();
    let mut threads = Vec::new();
    let mut targets = Vec::new();
    let mut statuses = Vec::new();
    for parts in views {
        let view = parts.view;
        let topic = exchange_topic(&settings.group, &view.view);
        ensure_topic(&client, &topic, view.key_partitions, "exchange").await?;
        let results_topic = results_topic(&settings.group, &view.view);
        ensure_topic(&client, &results_topic, 1, "results").await?;
        let results = input
            .client_config(&[("enable.idempotence", "true"), ("linger.ms", "5")])
            .create()
            .map_err(|e| kafka_error("creating the results producer", e))?;
        let status = Arc::new(ViewStatus::default());
        let group = stage2_group(&settings.group, &view.view);
        let shared = Stage2Shared {
            view: view.clone(),
            topic: topic.clone(),
            inputs: inputs.len(),
            dir: settings.state_dir.join(&view.view),
            handle: handle.clone(),
            sinks: parts.sinks,
            results,
            results_topic: results_topic.clone(),
            owned: BTreeMap::new(),
            status: status.clone(),
        };
        let config = consumer_config(&input, settings, &group);
        let (interval, stop2) = (settings.snapshot_interval, stop.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("weir-stage2-{}", view.view))
                .spawn(move || run_stage2(config, shared, interval, stop2))
                .map_err(|e| WeirError::Internal(format!("starting a stage-2 thread: {e}")))?,
        );
        if let Some(buffer) = parts.buffer {
            let reader = ResultsThread {
                config: input.client_config(&[
                    (
                        "group.id",
                        &format!("{}.{}", results_topic, settings.member),
                    ),
                    ("enable.auto.commit", "false"),
                    ("enable.auto.offset.store", "false"),
                ]),
                topic: results_topic,
                buffer,
                stop: stop.clone(),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("weir-results-{}", view.view))
                    .spawn(move || reader.run())
                    .map_err(|e| WeirError::Internal(format!("starting a results thread: {e}")))?,
            );
        }
        statuses.push((view.view.clone(), status.clone()));
        targets.push((view, topic, status));
    }
    let group = stage1_group(&settings.group, &source);
    let mut input = input;
    let mut decoders: Vec<Box<dyn crate::format::RecordDecoder>> =
        input.take_decoder().into_iter().collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    while decoders.len() < cores {
        decoders.push(input.new_decoder()?);
    }
    let s1 = Stage1 {
        consumer: consumer_config(&input, settings, &group),
        producer: input.client_config(&[
            ("transactional.id", &format!("{group}.{}", settings.member)),
            ("enable.idempotence", "true"),
            ("linger.ms", "5"),
            // A member that dies mid-step leaves its transaction open, and read_committed
            // readers of the exchange wait behind it until the broker aborts it: after
            // this long (docs/cluster.md, "Failover").
            (
                "transaction.timeout.ms",
                &settings.session_timeout.as_millis().to_string(),
            ),
        ]),
        views: targets,
        input,
        handle,
        stop: stop.clone(),
        inputs_owned: Arc::new(Mutex::new(vec![])),
        failure: failure.clone(),
        step_rows: settings.step_rows,
        step_delay: settings.step_delay,
        decoders,
    };
    threads.push(
        std::thread::Builder::new()
            .name(format!("weir-stage1-{source}"))
            .spawn(move || s1.run())
            .map_err(|e| WeirError::Internal(format!("starting a stage-1 thread: {e}")))?,
    );
    Ok(MemberSource {
        source,
        views: statuses,
        stop,
        failure,
        threads,
    })
}

/// A group consumer of the cluster: cooperative-sticky, static membership, offsets
/// committed by Weir, transactions' records only once committed.
fn consumer_config(input: &ClusterInput, settings: &ClusterSettings, group: &str) -> ClientConfig {
    input.client_config(&[
        ("group.id", group),
        ("group.instance.id", &settings.member),
        ("client.id", &format!("{group}.{}", settings.member)),
        ("enable.auto.commit", "false"),
        ("auto.offset.reset", "earliest"),
        ("isolation.level", "read_committed"),
        ("partition.assignment.strategy", "cooperative-sticky"),
        (
            "session.timeout.ms",
            &settings.session_timeout.as_millis().to_string(),
        ),
    ])
}

/// Rebalance events, taken by the thread that polls.
#[derive(Default)]
struct Events {
    list: Mutex<Vec<(bool, Vec<i32>)>>,
    /// Set while `list` holds any: the polling loop looks at the flag for each message,
    /// not at the lock.
    any: AtomicBool,
}

impl Events {
    fn push(&self, assigned: bool, ids: Vec<i32>) {
        self.list.lock().push((assigned, ids));
        self.any.store(true, Ordering::Release);
    }

    fn take(&self) -> Vec<(bool, Vec<i32>)> {
        if !self.any.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        std::mem::take(&mut *self.list.lock())
    }
}

/// Messages the stage-1 loop takes between two looks at the clock.
const CLOCK_EVERY: u32 = 256;

struct Stage1Context {
    events: Events,
}

impl ClientContext for Stage1Context {}

impl ConsumerContext for Stage1Context {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let ids = tpl.elements().iter().map(|e| e.partition()).collect();
            self.events.push(false, ids);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let ids = tpl.elements().iter().map(|e| e.partition()).collect();
            self.events.push(true, ids);
        }
    }
}

struct Stage1 {
    consumer: ClientConfig,
    producer: ClientConfig,
    /// Each view over the source: its exchange topic and figures.
    views: Vec<(Arc<ClusterView>, String, Arc<ViewStatus>)>,
    input: ClusterInput,
    handle: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
    inputs_owned: Arc<Mutex<Vec<i32>>>,
    failure: Arc<Mutex<Option<WeirError>>>,
    step_rows: usize,
    step_delay: Duration,
    /// One decoder per thread that folds partitions (the machine's cores).
    decoders: Vec<Box<dyn crate::format::RecordDecoder>>,
}

impl Stage1 {
    fn run(mut self) {
        let mut backoff = RESTART.start();
        while !self.stop.load(Ordering::Relaxed) {
            match self.session() {
                Ok(()) => return,
                // A bad record under 'bad.records' = 'fail' stops the member, as it
                // stops a single process.
                Err(e @ WeirError::BadRecord(_)) => {
                    *self.failure.lock() = Some(e);
                    return;
                }
                Err(e) => {
                    let wait = backoff.next_delay().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(source = %self.input.source(), error = %e, ?wait,
                        "stage 1 stopped; starting again from the committed input positions");
                    std::thread::sleep(wait);
                }
            }
        }
    }

    /// Read, fold and send until stopped or a step fails (the caller starts again).
    fn session(&mut self) -> Result<()> {
        let consumer: BaseConsumer<Stage1Context> = self
            .consumer
            .create_with_context(Stage1Context {
                events: Events::default(),
            })
            .map_err(|e| kafka_error("creating the stage-1 consumer", e))?;
        consumer
            .subscribe(&[self.input.topic()])
            .map_err(|e| kafka_error("subscribing to the input topic", e))?;
        let producer: ThreadedProducer<DefaultProducerContext> = self
            .producer
            .create()
            .map_err(|e| kafka_error("creating the exchange producer", e))?;
        producer
            .init_transactions(TXN_TIMEOUT)
            .map_err(|e| kafka_error("starting exchange transactions", e))?;
        self.inputs_owned.lock().clear();
        let mut pending: BTreeMap<i32, Pending> = BTreeMap::new();
        // The latest event time of each owned input partition.
        let mut latest: BTreeMap<i32, i64> = BTreeMap::new();
        let (max_rows, max_delay) = (
            self.step_rows.max(1),
            self.step_delay.max(Duration::from_millis(10)),
        );
        while !self.stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let mut taken = 0;
            let mut unclocked = 0u32;
            while taken < max_rows {
                // Messages already fetched are taken without a wait; the clock is read
                // when none is, and once every CLOCK_EVERY messages (reading it for each
                // took 7 % of the stage-1 thread).
                let polled = match consumer.poll(Duration::ZERO) {
                    Some(m) => {
                        unclocked += 1;
                        if unclocked >= CLOCK_EVERY {
                            unclocked = 0;
                            if started.elapsed() >= max_delay {
                                taken = max_rows;
                            }
                        }
                        Some(m)
                    }
                    None => {
                        let left = max_delay.saturating_sub(started.elapsed());
                        if left.is_zero() {
                            break;
                        }
                        consumer.poll(left.min(Duration::from_millis(100)))
                    }
                };
                // What a rebalance took away is dropped: its new owner reads it again from
                // the committed position.
                let events = consumer.context().events.take();
                for (assigned, ids) in events {
                    let mut owned = self.inputs_owned.lock();
                    for id in ids {
                        if assigned {
                            if !owned.contains(&id) {
                                owned.push(id);
                            }
                        } else {
                            owned.retain(|p| *p != id);
                            pending.remove(&id);
                            latest.remove(&id);
                        }
                    }
                    owned.sort_unstable();
                    for (_, _, status) in &self.views {
                        status.rebalances.fetch_add(1, Ordering::Relaxed);
                        *status.inputs.lock() = owned.clone();
                    }
                    tracing::info!(source = %self.input.source(), inputs = ?*owned,
                        "stage 1: input partitions owned");
                }
                match polled {
                    Some(Ok(m)) => {
                        pending
                            .entry(m.partition())
                            .or_default()
                            .push(&m, self.input.stats());
                        taken += 1;
                    }
                    Some(Err(e)) => return Err(kafka_error("reading the input topic", e)),
                    None => {
                        if self.stop.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                    }
                }
            }
            if pending.values().all(|p| p.is_empty()) {
                continue;
            }
            let records: u64 = pending.values().map(|p| p.len() as u64).sum();
            if let Err(e) = self.step(&consumer, &producer, &mut pending, &mut latest) {
                for (_, _, status) in &self.views {
                    status.aborted.fetch_add(1, Ordering::Relaxed);
                }
                // What the step read is read again: after a rebalance (the usual cause:
                // the group moved on while the step ran) from the positions committed
                // for the partitions this member still owns. A producer that cannot abort
                // (fenced) starts the stage again.
                pending.clear();
                if matches!(e, WeirError::BadRecord(_)) {
                    return Err(e);
                }
                tracing::info!(source = %self.input.source(), error = %e,
                    "stage 1: a step was aborted; reading it again");
                producer
                    .abort_transaction(TXN_TIMEOUT)
                    .map_err(|a| kafka_error("aborting a stage-1 transaction", a))?;
                rewind(&consumer)?;
                continue;
            }
            for (_, _, status) in &self.views {
                status.committed.fetch_add(1, Ordering::Relaxed);
                status.records_in.fetch_add(records, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// One transaction: every pending partition's partial states and watermark, its dead
    /// letters, and the input positions after it.
    fn step(
        &mut self,
        consumer: &BaseConsumer<Stage1Context>,
        producer: &ThreadedProducer<DefaultProducerContext>,
        pending: &mut BTreeMap<i32, Pending>,
        latest: &mut BTreeMap<i32, i64>,
    ) -> Result<()> {
        producer
            .begin_transaction()
            .map_err(|e| kafka_error("beginning a stage-1 transaction", e))?;
        let mut offsets = TopicPartitionList::new();
        let topic = self.input.topic().to_string();
        for (partition, p, folded) in self.fold(pending)? {
            let Some(next) = p.next_offset() else {
                continue;
            };
            if !folded.bad.is_empty() {
                match self.input.policy() {
                    BadRecords::Fail => {
                        let (j, reason) = &folded.bad[0];
                        return Err(WeirError::BadRecord(format!(
                            "source '{}': topic {topic} partition {partition} offset {}: {reason}",
                            self.input.source(),
                            p.message(*j).0
                        )));
                    }
                    BadRecords::Skip => {}
                    BadRecords::DeadLetter => {
                        self.dead_letters(producer, partition, p, &folded.bad)?
                    }
                }
            }
            let from = partition as u32;
            let mut max_event = None;
            for ((_, exchange, status), out) in self.views.iter().zip(folded.views) {
                max_event = max_event.max(out.max_event_ms);
                for (kp, states) in out.states.into_iter().enumerate() {
                    for batch in states {
                        let data = Message::Data {
                            partition: kp as u32,
                            batch,
                        };
                        send(producer, exchange, status, kp, from, &data)?;
                    }
                }
            }
            if let Some(m) = max_event {
                let l = latest.entry(partition).or_insert(m);
                *l = (*l).max(m);
            }
            if let Some(l) = latest.get(&partition) {
                for (view, exchange, status) in &self.views {
                    let w = Message::Watermark(view.watermark_after(*l));
                    for kp in 0..view.key_partitions as usize {
                        send(producer, exchange, status, kp, from, &w)?;
                    }
                }
            }
            offsets
                .add_partition_offset(&topic, partition, Offset::Offset(next))
                .map_err(|e| kafka_error("recording input positions", e))?;
            p.clear();
        }
        let group = consumer
            .group_metadata()
            .ok_or_else(|| WeirError::Internal("the stage-1 consumer has no group".into()))?;
        producer
            .send_offsets_to_transaction(&offsets, &group, TXN_TIMEOUT)
            .map_err(|e| kafka_error("adding input positions to the stage-1 transaction", e))?;
        producer
            .commit_transaction(TXN_TIMEOUT)
            .map_err(|e| kafka_error("committing a stage-1 transaction", e))?;
        Ok(())
    }

    /// Decode each pending partition's messages and run every view's stage 1 over them,
    /// the partitions shared out over one thread per decoder; in partition order.
    fn fold<'a>(
        &mut self,
        pending: &'a mut BTreeMap<i32, Pending>,
    ) -> Result<Vec<(i32, &'a mut Pending, Folded)>> {
        let work: Vec<(i32, &'a mut Pending)> = pending
            .iter_mut()
            .filter(|(_, p)| !p.is_empty())
            .map(|(k, p)| (*k, p))
            .collect();
        let threads = self.decoders.len().min(work.len()).max(1);
        let (input, views, handle) = (&self.input, &self.views, &self.handle);
        let fold_one = |decoder: &mut dyn crate::format::RecordDecoder,
                        partition: i32,
                        p: &Pending|
         -> Result<Folded> {
            let decoded = input.decode(decoder, partition, p)?;
            let mut out = Vec::with_capacity(views.len());
            for (view, _, _) in views {
                out.push(handle.block_on(view.stage1(&decoded.batch))?);
            }
            Ok(Folded {
                bad: decoded.bad,
                views: out,
            })
        };
        let mut results: Vec<FoldSlot> = (0..work.len()).map(|_| None).collect();
        std::thread::scope(|scope| {
            let mut slots: Vec<Vec<(usize, &mut FoldSlot)>> =
                (0..threads).map(|_| Vec::new()).collect();
            for (i, slot) in results.iter_mut().enumerate() {
                slots[i % threads].push((i, slot));
            }
            for (decoder, mine) in self.decoders.iter_mut().zip(slots) {
                let work = &work;
                let fold_one = &fold_one;
                scope.spawn(move || {
                    for (i, slot) in mine {
                        let (partition, p) = &work[i];
                        *slot = Some(fold_one(decoder.as_mut(), *partition, p));
                    }
                });
            }
        });
        let mut out = Vec::with_capacity(work.len());
        for ((partition, p), r) in work.into_iter().zip(results) {
            let folded =
                r.ok_or_else(|| WeirError::Internal("a partition was not folded".into()))??;
            out.push((partition, p, folded));
        }
        Ok(out)
    }

    fn dead_letters(
        &self,
        producer: &ThreadedProducer<DefaultProducerContext>,
        partition: i32,
        p: &Pending,
        bad: &[(usize, String)],
    ) -> Result<()> {
        let topic = self.input.dead_letter_topic().to_string();
        for (j, reason) in bad {
            let (offset, ts, payload) = p.message(*j);
            let headers = dead_letter_headers(
                reason,
                self.input.source(),
                self.input.topic(),
                partition,
                offset,
                ts,
            );
            let record: BaseRecord<'_, (), [u8]> =
                BaseRecord::to(&topic).payload(payload).headers(headers);
            produce(producer, record, "sending a dead letter")?;
        }
        Ok(())
    }
}

/// Where a folding thread leaves one partition's result.
type FoldSlot = Option<Result<Folded>>;

/// One input partition's step after stage 1: its bad records and each view's partial
/// states.
struct Folded {
    bad: Vec<(usize, String)>,
    views: Vec<weir_engine::cluster::Stage1Batch>,
}

/// Move the consumer back to the committed positions of the partitions it owns.
fn rewind<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Result<()> {
    let assigned = consumer
        .assignment()
        .map_err(|e| kafka_error("reading the stage-1 assignment", e))?;
    if assigned.count() == 0 {
        return Ok(());
    }
    let committed = consumer
        .committed_offsets(assigned, METADATA_TIMEOUT)
        .map_err(|e| kafka_error("reading the committed input positions", e))?;
    let mut to = TopicPartitionList::new();
    for e in committed.elements() {
        let at = match e.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        to.add_partition_offset(e.topic(), e.partition(), at)
            .map_err(|e| kafka_error("rewinding stage 1", e))?;
    }
    consumer
        .seek_partitions(to, METADATA_TIMEOUT)
        .map_err(|e| kafka_error("rewinding stage 1", e))?;
    Ok(())
}

/// Send one exchange record to partition `kp` of `exchange`, waiting while the
/// producer's queue is full.
fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    exchange: &str,
    status: &ViewStatus,
    kp: usize,
    from: u32,
    message: &Message,
) -> Result<()> {
    let (headers, value) = record_of(from, message)?;
    status
        .exchange_bytes
        .fetch_add(value.len() as u64, Ordering::Relaxed);
    let record: BaseRecord<'_, (), [u8]> = BaseRecord::to(exchange)
        .partition(kp as i32)
        .payload(value.as_slice())
        .headers(headers);
    produce(producer, record, "sending to the exchange")
}

/// Produce `record`, waiting while the producer's queue is full.
fn produce(
    producer: &ThreadedProducer<DefaultProducerContext>,
    mut record: BaseRecord<'_, (), [u8]>,
    doing: &str,
) -> Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((
                KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                r,
            )) => {
                std::thread::sleep(Duration::from_millis(5));
                record = r;
            }
            Err((e, _)) => return Err(kafka_error(doing, e)),
        }
    }
}

/// One owned key partition.
struct Owned {
    task: KeyTask,
    /// The next exchange offset to take.
    next: i64,
    /// The offset of the last snapshot committed (or restored).
    committed: i64,
    /// Rows of closed windows this partition has emitted (row ids for append sinks).
    emitted: u64,
}

/// Stage 2's state, shared by its polling loop and its rebalance callbacks (both run on
/// the stage-2 thread, inside or after `poll`).
struct Stage2Shared {
    view: Arc<ClusterView>,
    topic: String,
    inputs: usize,
    dir: PathBuf,
    handle: tokio::runtime::Handle,
    sinks: Vec<Box<dyn Sink>>,
    /// Every row the view emits goes to its results topic too, for every member to serve.
    results: ThreadedProducer<DefaultProducerContext>,
    results_topic: String,
    owned: BTreeMap<i32, Owned>,
    status: Arc<ViewStatus>,
}

struct Stage2Context {
    shared: Arc<Mutex<Stage2Shared>>,
    /// An error a callback met: the loop stops with it.
    failed: Mutex<Option<WeirError>>,
}

impl ClientContext for Stage2Context {}

impl ConsumerContext for Stage2Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let ids: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        let mut shared = self.shared.lock();
        shared.status.rebalances.fetch_add(1, Ordering::Relaxed);
        // A lost assignment (this member was thrown out) cannot commit: drop the state,
        // the new owner replays from the last committed snapshot.
        let lost = consumer.assignment_lost();
        let result = if lost {
            Ok(())
        } else {
            shared.checkpoint(consumer, Some(&ids))
        };
        for id in &ids {
            shared.owned.remove(id);
        }
        shared.publish_keys();
        tracing::info!(view = %shared.view.view, revoked = ?ids, lost, "stage 2: key partitions revoked");
        if let Err(e) = result {
            *self.failed.lock() = Some(e);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else {
            return;
        };
        let ids: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        if ids.is_empty() {
            return;
        }
        let mut shared = self.shared.lock();
        shared.status.rebalances.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = shared.take_over(consumer, &ids) {
            *self.failed.lock() = Some(e);
        }
    }
}

impl Stage2Shared {
    fn publish_keys(&self) {
        *self.status.keys.lock() = self.owned.keys().copied().collect();
    }

    fn part_dir(&self, kp: i32) -> PathBuf {
        self.dir.join(format!("kp-{kp}"))
    }

    /// Own `ids`: each starts from its committed offset, with the snapshot written for it.
    fn take_over(&mut self, consumer: &BaseConsumer<Stage2Context>, ids: &[i32]) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        for id in ids {
            tpl.add_partition(&self.topic, *id);
        }
        let committed = consumer
            .committed_offsets(tpl, METADATA_TIMEOUT)
            .map_err(|e| kafka_error("reading stage 2's committed offsets", e))?;
        for e in committed.elements() {
            let kp = e.partition();
            let started = Instant::now();
            let mut task = self.view.task(self.inputs)?;
            let (at, emitted) = match e.offset() {
                Offset::Offset(o) => {
                    let path = self.part_dir(kp).join(format!("{o:020}.arrow"));
                    let (snapshot, emitted) = read_snapshot(&path)?;
                    task.restore(&snapshot)?;
                    (o, emitted)
                }
                _ => (0, 0),
            };
            let groups = task.open_groups();
            let ms = started.elapsed().as_millis() as u64;
            *self.status.last_restore.lock() = Some((kp, groups, ms));
            tracing::info!(view = %self.view.view, kp, offset = at, open_groups = groups, ms,
                "stage 2: key partition taken over");
            self.owned.insert(
                kp,
                Owned {
                    task,
                    next: at,
                    committed: at,
                    emitted,
                },
            );
        }
        self.publish_keys();
        Ok(())
    }

    /// Take one exchange record of an owned partition.
    fn take(&mut self, m: &rdkafka::message::BorrowedMessage<'_>) -> Result<()> {
        let kp = m.partition();
        let Some(owned) = self.owned.get_mut(&kp) else {
            return Ok(());
        };
        if m.offset() < owned.next {
            return Ok(());
        }
        let envelope = envelope_of(m)?;
        let rows = self.handle.block_on(owned.task.push(envelope))?;
        owned.next = m.offset() + 1;
        let watermark = owned.task.watermark();
        for batch in rows {
            let ids = RowIds {
                origin: kp as u32,
                first: owned.emitted,
            };
            let (headers, value) = results_record(ids, watermark, &batch)?;
            let record: BaseRecord<'_, (), [u8]> = BaseRecord::to(&self.results_topic)
                .partition(0)
                .payload(value.as_slice())
                .headers(headers);
            produce(&self.results, record, "sending to the results topic")?;
            owned.emitted += batch.num_rows() as u64;
            self.status
                .rows_out
                .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
            for sink in &mut self.sinks {
                self.handle.block_on(sink.write(batch.clone(), ids))?;
            }
        }
        Ok(())
    }

    /// Flush the sinks, snapshot the owned partitions (`only` these, if given) that moved
    /// since their last snapshot, and commit their offsets.
    fn checkpoint(
        &mut self,
        consumer: &BaseConsumer<Stage2Context>,
        only: Option<&[i32]>,
    ) -> Result<()> {
        for sink in &mut self.sinks {
            self.handle.block_on(sink.flush())?;
        }
        self.results
            .flush(SEND_TIMEOUT)
            .map_err(|e| kafka_error("writing to the results topic", e))?;
        let mut tpl = TopicPartitionList::new();
        let mut written = Vec::new();
        let dir = self.dir.clone();
        for (kp, owned) in self.owned.iter_mut() {
            if only.is_some_and(|o| !o.contains(kp)) || owned.next == owned.committed {
                continue;
            }
            let part = dir.join(format!("kp-{kp}"));
            let snapshot = owned.task.snapshot()?;
            write_snapshot(&part, owned.next, &snapshot, owned.emitted)?;
            tpl.add_partition_offset(&self.topic, *kp, Offset::Offset(owned.next))
                .map_err(|e| kafka_error("recording stage-2 offsets", e))?;
            written.push((*kp, owned.next));
        }
        if written.is_empty() {
            return Ok(());
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
            // The group moved on (a rebalance under way): the snapshots stay unused, the
            // partitions still owned are committed at the next interval.
            tracing::info!(view = %self.view.view, error = %e,
                "stage 2: offsets not committed this time");
            return Ok(());
        }
        for (kp, at) in written {
            if let Some(o) = self.owned.get_mut(&kp) {
                o.committed = at;
            }
            self.status.snapshots.fetch_add(1, Ordering::Relaxed);
            prune(&self.part_dir(kp), at);
        }
        Ok(())
    }
}

fn run_stage2(
    config: ClientConfig,
    shared: Stage2Shared,
    interval: Duration,
    stop: Arc<AtomicBool>,
) {
    let shared = Arc::new(Mutex::new(shared));
    let mut backoff = RESTART.start();
    {
        let mut s = shared.lock();
        let s = &mut *s;
        for sink in &mut s.sinks {
            while let Err(e) = s.handle.block_on(sink.recover(None)) {
                let wait = backoff.next_delay().unwrap_or(Duration::from_secs(10));
                tracing::warn!(view = %s.view.view, error = %e, ?wait, "a sink did not start; trying again");
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(wait);
            }
        }
    }
    while !stop.load(Ordering::Relaxed) {
        match stage2_session(&config, &shared, interval, &stop) {
            Ok(()) => break,
            Err(e) => {
                let wait = backoff.next_delay().unwrap_or(Duration::from_secs(10));
                tracing::warn!(error = %e, ?wait,
                    "stage 2 stopped; starting again from the committed snapshots");
                std::thread::sleep(wait);
            }
        }
    }
    let mut s = shared.lock();
    let s = &mut *s;
    for sink in &mut s.sinks {
        if let Err(e) = s.handle.block_on(sink.close()) {
            tracing::warn!(error = %e, "closing a sink");
        }
    }
}

/// Poll the exchange until stopped or an error. The partitions owned are dropped at the
/// start: after an error they are taken over again from their committed snapshots.
fn stage2_session(
    config: &ClientConfig,
    shared: &Arc<Mutex<Stage2Shared>>,
    interval: Duration,
    stop: &AtomicBool,
) -> Result<()> {
    let topic = {
        let mut s = shared.lock();
        s.owned.clear();
        s.publish_keys();
        s.topic.clone()
    };
    let consumer: BaseConsumer<Stage2Context> = config
        .create_with_context(Stage2Context {
            shared: shared.clone(),
            failed: Mutex::new(None),
        })
        .map_err(|e| kafka_error("creating the stage-2 consumer", e))?;
    consumer
        .subscribe(&[&topic])
        .map_err(|e| kafka_error("subscribing to the exchange", e))?;
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let polled = consumer.poll(Duration::from_millis(100));
        if let Some(e) = consumer.context().failed.lock().take() {
            return Err(e);
        }
        match polled {
            Some(Ok(m)) => shared.lock().take(&m)?,
            Some(Err(e)) => return Err(kafka_error("reading the exchange", e)),
            None => {}
        }
        if last.elapsed() >= interval {
            shared.lock().checkpoint(&consumer, None)?;
            last = Instant::now();
        }
    }
    // Stopping: hand over without a replay.
    shared.lock().checkpoint(&consumer, None)?;
    Ok(())
}

const RESULT_KP: &str = "weir.kp";
const RESULT_FIRST: &str = "weir.first";
const RESULT_WATERMARK: &str = "weir.watermark";

/// A batch of a key partition's rows as a results record: headers with the key partition,
/// the count of its rows before these and its watermark; the batch as an Arrow IPC stream.
fn results_record(
    ids: RowIds,
    watermark: i64,
    batch: &RecordBatch,
) -> Result<(OwnedHeaders, Vec<u8>)> {
    let mut value = Vec::new();
    {
        let mut w = StreamWriter::try_new(&mut value, &batch.schema())?;
        w.write(batch)?;
        w.finish()?;
    }
    let (kp, first, wm) = (
        ids.origin.to_le_bytes(),
        ids.first.to_le_bytes(),
        watermark.to_le_bytes(),
    );
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: RESULT_KP,
            value: Some(&kp),
        })
        .insert(Header {
            key: RESULT_FIRST,
            value: Some(&first),
        })
        .insert(Header {
            key: RESULT_WATERMARK,
            value: Some(&wm),
        });
    Ok((headers, value))
}

/// A results record back: (key partition, rows before, watermark, rows).
fn from_results_record(
    m: &rdkafka::message::BorrowedMessage<'_>,
) -> Result<(u32, u64, i64, RecordBatch)> {
    let header = |key: &str| -> Option<[u8; 8]> {
        let h = m.headers()?;
        let v = h.iter().find(|x| x.key == key)?.value?;
        let mut out = [0u8; 8];
        (v.len() <= 8).then(|| {
            out[..v.len()].copy_from_slice(v);
            out
        })
    };
    let bad = |why: &str| {
        WeirError::Internal(format!(
            "results record at {}[{}]@{}: {why}",
            m.topic(),
            m.partition(),
            m.offset()
        ))
    };
    let (Some(kp), Some(first), Some(wm)) = (
        header(RESULT_KP),
        header(RESULT_FIRST),
        header(RESULT_WATERMARK),
    ) else {
        return Err(bad("headers missing"));
    };
    let mut reader = StreamReader::try_new(m.payload().unwrap_or_default(), None)?;
    let batch = reader.next().ok_or_else(|| bad("no batch"))??;
    let kp = u32::from_le_bytes([kp[0], kp[1], kp[2], kp[3]]);
    Ok((kp, u64::from_le_bytes(first), i64::from_le_bytes(wm), batch))
}

/// Reads a view's results topic from the beginning into this member's buffer for the
/// view (REST and WebSocket readers), every row once and in the topic's order.
struct ResultsThread {
    config: ClientConfig,
    topic: String,
    buffer: Arc<ViewBuffer>,
    stop: Arc<AtomicBool>,
}

impl ResultsThread {
    fn run(self) {
        let mut backoff = RESTART.start();
        while !self.stop.load(Ordering::Relaxed) {
            // Every session reads from the beginning: the numbering is rebuilt the same.
            match self.session() {
                Ok(()) => return,
                Err(e) => {
                    let wait = backoff.next_delay().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(topic = %self.topic, error = %e, ?wait,
                        "reading the results topic stopped; starting again");
                    std::thread::sleep(wait);
                }
            }
        }
    }

    fn session(&self) -> Result<()> {
        let consumer: BaseConsumer = self
            .config
            .create()
            .map_err(|e| kafka_error("creating the results reader", e))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, 0, Offset::Beginning)
            .map_err(|e| kafka_error("assigning the results topic", e))?;
        consumer
            .assign(&tpl)
            .map_err(|e| kafka_error("assigning the results topic", e))?;
        let mut reader = ResultsReader::default();
        let last = self.buffer.last_seq();
        while !self.stop.load(Ordering::Relaxed) {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let (kp, first, watermark, batch) = from_results_record(&m)?;
                    let Some((numbered, rows)) = reader.take(kp, first, batch) else {
                        continue;
                    };
                    // Rows this buffer holds from an earlier session are not pushed again.
                    if numbered.first_seq <= last {
                        continue;
                    }
                    let at_us = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_micros() as i64)
                        .unwrap_or(0);
                    self.buffer
                        .push(numbered.first_seq, rows, Some(watermark), at_us)?;
                }
                Some(Err(e)) => return Err(kafka_error("reading the results topic", e)),
                None => {}
            }
        }
        Ok(())
    }
}

/// Write `snapshot` of a key partition at exchange offset `at` (write, sync, rename).
fn write_snapshot(dir: &Path, at: i64, snapshot: &KeySnapshot, emitted: u64) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io_error("creating", dir, e))?;
    let path = dir.join(format!("{at:020}.arrow"));
    let tmp = dir.join(format!(".{at:020}.arrow.tmp"));
    let mut meta = snapshot.meta.clone();
    meta["emitted"] = serde_json::json!(emitted);
    let schema = datafusion::arrow::datatypes::Schema::new_with_metadata(
        snapshot.schema.fields().clone(),
        [("weir.state".to_string(), meta.to_string())].into(),
    );
    let file = std::fs::File::create(&tmp).map_err(|e| io_error("creating", &tmp, e))?;
    let mut w = FileWriter::try_new(file, &schema)?;
    for b in &snapshot.batches {
        let b = datafusion::arrow::record_batch::RecordBatch::try_new(
            Arc::new(schema.clone()),
            b.columns().to_vec(),
        )?;
        w.write(&b)?;
    }
    w.finish()?;
    let file = w.into_inner()?;
    file.sync_all().map_err(|e| io_error("syncing", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io_error("renaming", &tmp, e))?;
    weir_engine::fsutil::sync_dir(dir)
}

fn read_snapshot(path: &Path) -> Result<(KeySnapshot, u64)> {
    let file = std::fs::File::open(path).map_err(|e| {
        WeirError::user(format!(
            "the snapshot a key partition was committed with is missing: {} ({e}); \
             is [cluster] state_dir the same directory on every member?",
            path.display()
        ))
    })?;
    let reader = FileReader::try_new(file, None)?;
    let schema = reader.schema();
    let meta: serde_json::Value = schema
        .metadata()
        .get("weir.state")
        .and_then(|m| serde_json::from_str(m).ok())
        .ok_or_else(|| {
            WeirError::Internal(format!("snapshot {} has no state meta", path.display()))
        })?;
    let emitted = meta.get("emitted").and_then(|e| e.as_u64()).unwrap_or(0);
    let plain = Arc::new(datafusion::arrow::datatypes::Schema::new(
        schema.fields().clone(),
    ));
    let mut batches = Vec::new();
    for b in reader {
        let b = b?;
        batches.push(datafusion::arrow::record_batch::RecordBatch::try_new(
            plain.clone(),
            b.columns().to_vec(),
        )?);
    }
    Ok((
        KeySnapshot {
            meta,
            batches,
            schema: plain,
        },
        emitted,
    ))
}

/// Remove a partition's snapshots older than the one before `kept` (the one before stays
/// for a member that read the committed offset just before this commit).
fn prune(dir: &Path, kept: i64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut offsets: Vec<i64> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_suffix(".arrow")?.parse().ok()
        })
        .filter(|o| *o < kept)
        .collect();
    offsets.sort_unstable();
    offsets.pop();
    for o in offsets {
        let _ = std::fs::remove_file(dir.join(format!("{o:020}.arrow")));
    }
}

/// The partitions of one topic in a consumer-protocol member assignment (the bytes a
/// group description carries: version, then per topic its name and partitions).
fn assigned_partitions(bytes: &[u8], topic: &str) -> Vec<i32> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (b.get(..n)?, b.get(n..)?);
        *b = rest;
        Some(head)
    }
    let mut b = bytes;
    let mut out = Vec::new();
    let parsed = (|| -> Option<()> {
        take(&mut b, 2)?; // version
        let topics = i32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?);
        for _ in 0..topics.max(0) {
            let len = i16::from_be_bytes(take(&mut b, 2)?.try_into().ok()?);
            let name = take(&mut b, len.max(0) as usize)?;
            let n = i32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?);
            for _ in 0..n.max(0) {
                let p = i32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?);
                if name == topic.as_bytes() {
                    out.push(p);
                }
            }
        }
        Some(())
    })();
    if parsed.is_none() {
        tracing::debug!(topic, "a member assignment that does not parse");
    }
    out.sort_unstable();
    out
}

/// One consumer group of the cluster as the broker describes it: its members (by member
/// id, from the client id Weir gives them) with the partitions of `topic` each owns, and
/// the group's lag on `topic` (records not yet committed).
fn describe_group(client: &ClientConfig, group: &str, topic: &str) -> Result<serde_json::Value> {
    let consumer: BaseConsumer = client
        .clone()
        .set("group.id", group)
        .create()
        .map_err(|e| kafka_error("creating a group reader", e))?;
    let list = consumer
        .fetch_group_list(Some(group), METADATA_TIMEOUT)
        .map_err(|e| kafka_error(&format!("describing group '{group}'"), e))?;
    let mut members = Vec::new();
    let mut state = String::new();
    for g in list.groups() {
        state = g.state().to_string();
        for m in g.members() {
            let member = m
                .client_id()
                .strip_prefix(&format!("{group}."))
                .unwrap_or(m.client_id())
                .to_string();
            let partitions = m
                .assignment()
                .map(|a| assigned_partitions(a, topic))
                .unwrap_or_default();
            members.push(serde_json::json!({
                "member": member,
                "host": m.client_host(),
                "partitions": partitions,
            }));
        }
    }
    let md = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|e| kafka_error(&format!("reading the metadata of '{topic}'"), e))?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition(topic, p.id());
        }
    }
    let committed = consumer
        .committed_offsets(tpl, METADATA_TIMEOUT)
        .map_err(|e| kafka_error(&format!("reading group '{group}' offsets"), e))?;
    let mut lag = 0i64;
    for e in committed.elements() {
        let (low, high) = consumer
            .fetch_watermarks(topic, e.partition(), METADATA_TIMEOUT)
            .map_err(|e| kafka_error(&format!("reading the offsets of '{topic}'"), e))?;
        let at = match e.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        lag += (high - at).max(0);
    }
    Ok(serde_json::json!({
        "group": group,
        "topic": topic,
        "state": state,
        "members": members,
        "lag": lag,
    }))
}

/// The whole cluster as Kafka sees it (`GET /api/v1/cluster`): for each source its
/// stage-1 group over its topic, for each view its stage-2 group over its exchange topic,
/// with members, partitions and lag. Blocking: call off the async workers.
pub fn describe(
    client: &ClientConfig,
    group: &str,
    sources: &[(String, String)],
    views: &[String],
) -> Result<serde_json::Value> {
    let mut stage1 = Vec::new();
    for (source, topic) in sources {
        let mut g = describe_group(client, &stage1_group(group, source), topic)?;
        g["source"] = serde_json::json!(source);
        stage1.push(g);
    }
    let mut stage2 = Vec::new();
    for view in views {
        let mut g = describe_group(
            client,
            &stage2_group(group, view),
            &exchange_topic(group, view),
        )?;
        g["view"] = serde_json::json!(view);
        stage2.push(g);
    }
    Ok(serde_json::json!({ "stage1": stage1, "stage2": stage2 }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_assignments_are_read_for_one_topic() {
        let mut b = vec![0u8, 1];
        b.extend(2i32.to_be_bytes());
        for (name, parts) in [("in", &[3, 1][..]), ("other", &[0][..])] {
            b.extend((name.len() as i16).to_be_bytes());
            b.extend(name.as_bytes());
            b.extend((parts.len() as i32).to_be_bytes());
            for p in parts {
                b.extend(i32::to_be_bytes(*p));
            }
        }
        b.extend((-1i32).to_be_bytes()); // no user data
        assert_eq!(assigned_partitions(&b, "in"), vec![1, 3]);
        assert_eq!(assigned_partitions(&b, "other"), vec![0]);
        assert!(assigned_partitions(&b[..5], "in").is_empty());
    }
}
