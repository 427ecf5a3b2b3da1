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
//!   `snapshot_interval`, after the Postgres sinks flushed, each owned partition's state
//!   goes to `<state_dir>/<view>/kp-<n>/<offset>.<writer>.<session>.arrow`, and one Kafka
//!   transaction commits what stage 2 sent since (results topic, Kafka sinks) with the
//!   offsets, each naming its snapshot in the commit metadata; the Parquet files staged
//!   for it are published after. A new owner starts at the committed offset from the
//!   snapshot named for it, so it writes again at most the rows written since; Postgres
//!   sinks write by key or by deterministic row id, so those rows overwrite themselves,
//!   and a fencing token rejects a paused former owner's late writes.
//! - A partition revoked in a rebalance is snapshotted and committed before it goes.

use crate::format::BadRecords;
use crate::kafka::exchange::{envelope_of, record_of};
use crate::kafka::sink::KafkaSink;
use crate::kafka::source::{ClusterInput, Pending, dead_letter_headers};
use crate::parquet::ParquetSink;
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::record_batch::RecordBatch;
use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
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

use crate::kafka::common::kafka_error;

mod describe;
mod results;
mod stage1;
mod stage2;

pub use describe::describe;
use results::*;
use stage1::*;
use stage2::*;

const TXN_TIMEOUT: Duration = Duration::from_secs(30);
const METADATA_TIMEOUT: Duration = Duration::from_secs(30);
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
    pub group_protocol: GroupProtocol,
    /// The classic protocol's assignor (`partition.assignment.strategy`): `roundrobin`
    /// (eager) by default. With `cooperative-sticky` and static membership, a member
    /// replaced while a cooperative rebalance was between its two phases left partitions
    /// assigned to nobody until the next membership change (seen in the rebalance-storm
    /// test); docs/cluster.md.
    pub assignor: String,
}

/// The consumer-group protocol the cluster's groups use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupProtocol {
    /// The classic protocol: the members assign, with [`ClusterSettings::assignor`].
    #[default]
    Classic,
    /// KIP-848 (`group.protocol=consumer`): the broker assigns.
    Consumer,
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
    /// Times stage 2 found it had been fenced (a sink write rejected, or its assignment
    /// lost) and started again.
    pub fenced: AtomicU64,
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

/// How long [`MemberSource::stop`] waits for the threads.
const STOP_WAIT: Duration = Duration::from_secs(60);

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
    /// stopped this way hands over without a replay. A thread still running after
    /// [`STOP_WAIT`] (seen once: stage 1's consumer stuck inside librdkafka's rebalance
    /// handling while the member left the group) is left behind, so the process can exit:
    /// its partitions then move as after a crash, from what was committed.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + STOP_WAIT;
        for t in self.threads {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !t.is_finished() {
                tracing::error!(
                    source = %self.source,
                    thread = t.thread().name().unwrap_or("?"),
                    "a cluster thread did not stop within {STOP_WAIT:?} (stuck in a Kafka \
                     client call); leaving it behind: its partitions move as after a crash"
                );
                continue;
            }
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
        let group = stage2_group(&settings.group, &view.view);
        let ClusterSinks {
            kafka,
            parquet,
            rest: sinks,
        } = cluster_sinks(&input, &view.view, parts.sinks)?;
        // A dead member's open transaction holds up the read_committed readers of the
        // results topic and the Kafka sinks until the broker aborts it: after the session
        // timeout, or a little more than a snapshot interval, which a transaction spans.
        let txn_timeout = settings
            .session_timeout
            .max(settings.snapshot_interval + Duration::from_secs(5));
        let producer_config = input.client_config(&[
            ("transactional.id", &format!("{group}.{}", settings.member)),
            ("enable.idempotence", "true"),
            ("linger.ms", "5"),
            (
                "transaction.timeout.ms",
                &txn_timeout.as_millis().to_string(),
            ),
        ]);
        let status = Arc::new(ViewStatus::default());
        let shared = Stage2Shared {
            view: view.clone(),
            topic: topic.clone(),
            inputs: inputs.len(),
            dir: settings.state_dir.join(&view.view),
            handle: handle.clone(),
            sinks,
            kafka,
            parquet,
            writer: format!(
                "{}-{}",
                settings.member.replace(
                    |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_',
                    "_"
                ),
                std::process::id()
            ),
            session: 0,
            producer_config,
            producer: None,
            in_txn: false,
            results_topic: results_topic.clone(),
            owned: BTreeMap::new(),
            status: status.clone(),
            fence_scope: format!("weir.{}.{}", settings.group, view.view),
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

/// Whether a cluster member can run `sink`: one that writes by key (replayed rows
/// overwrite themselves), a Kafka sink (its messages go in the member's transactions) or
/// a Parquet sink (files per key partition, published when the member commits).
pub fn runs_in_cluster(sink: &mut Box<dyn Sink>) -> bool {
    sink.idempotent() || kafka_sink(sink).is_ok() || parquet_sink(sink).is_ok()
}

/// A view's sinks by how a cluster runs them.
struct ClusterSinks {
    kafka: Vec<Box<dyn Sink>>,
    parquet: Vec<Box<dyn Sink>>,
    rest: Vec<Box<dyn Sink>>,
}

/// Split a view's sinks: Kafka sinks, which must write to the cluster's own Kafka (one
/// transaction spans them and the exchange offsets), Parquet sinks, and the rest.
fn cluster_sinks(
    input: &ClusterInput,
    view: &str,
    all: Vec<Box<dyn Sink>>,
) -> Result<ClusterSinks> {
    let (mut kafka, mut parquet, mut rest) = (Vec::new(), Vec::new(), Vec::new());
    for mut sink in all {
        if parquet_sink(&mut sink).is_ok() {
            parquet.push(sink);
            continue;
        }
        match kafka_sink(&mut sink) {
            Ok(k) => {
                if k.bootstrap_servers() != input.bootstrap_servers() {
                    return Err(WeirError::user(format!(
                        "kafka sink '{}' of view '{view}' writes to {}, but the cluster runs \
                         on {}: in a cluster a Kafka sink's messages are committed in one \
                         transaction with the exchange offsets, so they must go to the same \
                         Kafka cluster",
                        k.name(),
                        k.bootstrap_servers(),
                        input.bootstrap_servers()
                    )));
                }
                kafka.push(sink);
            }
            Err(_) => rest.push(sink),
        }
    }
    Ok(ClusterSinks {
        kafka,
        parquet,
        rest,
    })
}

/// A group consumer of the cluster: the configured assignor, static membership, offsets
/// committed by Weir, transactions' records only once committed.
fn consumer_config(input: &ClusterInput, settings: &ClusterSettings, group: &str) -> ClientConfig {
    let session = settings.session_timeout.as_millis().to_string();
    let client_id = format!("{group}.{}", settings.member);
    let mut keys: Vec<(&str, &str)> = vec![
        ("group.id", group),
        ("group.instance.id", &settings.member),
        ("client.id", &client_id),
        ("enable.auto.commit", "false"),
        ("auto.offset.reset", "earliest"),
        ("isolation.level", "read_committed"),
    ];
    match settings.group_protocol {
        GroupProtocol::Classic => keys.extend([
            ("partition.assignment.strategy", settings.assignor.as_str()),
            ("session.timeout.ms", session.as_str()),
        ]),
        // KIP-848: the broker assigns (incrementally) and owns the session timeout
        // (`group.consumer.session.timeout.ms` on the broker).
        GroupProtocol::Consumer => keys.push(("group.protocol", "consumer")),
    }
    input.client_config(&keys)
}
