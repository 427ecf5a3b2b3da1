//! The Kafka source.
//!
//! One thread per source runs a `BaseConsumer` assigned every partition of the topic. It
//! copies each message's payload into its partition's [`RecordChunk`] (no allocation per
//! message), and hands a partition's chunk on when it holds `batch_rows` messages or its
//! oldest message has waited `batch_delay`: the chunk is decoded at once by the format's
//! [`RecordDecoder`], metadata columns are added, bad records follow `bad.records`, and
//! the batch goes to the pipeline through a bounded channel (when the pipeline is busy the
//! thread blocks and the consumer stops fetching: backpressure).
//!
//! Positions are Weir's own: the consumer is assigned partitions rather than subscribed, so
//! no group rebalance ever moves them, and librdkafka reconnects to a broker that went away
//! and resumes from the next offset, so a broker restart neither loses nor repeats rows.
//! The offsets of rows handed to the pipeline are committed to `group.id` every
//! `commit.interval` as progress, so `kafka-consumer-groups --describe` shows the lag.
//! Each batch carries the next offset of its partition as its position; a checkpoint
//! records the positions the pipeline processed, and a restore assigns the partitions at
//! them (overriding `scan.startup.mode`), so the group offsets are never the source of truth.

use super::common::{Connection, KafkaSettings, kafka_error, take_connection};
use crate::dead_letter::DeadLetterWriter;
use crate::format::{BadRecords, RecordChunk, RecordDecoder, decoder_for, parse_bad_records};
use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, Int32Array, Int64Array, StringBuilder, TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use weir_engine::connector::{
    BatchLimits, MetadataColumn, Source, SourceEvent, SourceFactory, SourceSpec,
};
use weir_engine::stats::Stats;
use weir_engine::{Result, WeirError};

/// Options of `CREATE SOURCE ... WITH (connector = 'kafka', ...)`.
pub const VALID_KEYS: &[&str] = &[
    "topic",
    "bootstrap.servers",
    "format",
    "group.id",
    "scan.startup.mode",
    "scan.startup.timestamp",
    "scan.bounded.mode",
    "bad.records",
    "dead.letter",
    "dead.letter.topic",
    "commit.interval",
    "properties.<librdkafka property>",
    "csv.delimiter",
    "csv.quote",
    "csv.null",
    "schema.registry.url",
    "schema.registry.basic.auth",
];

/// The metadata a Kafka source can put in a column, with its SQL type.
pub const METADATA_KEYS: &[(&str, &str)] = &[
    ("partition", "INT"),
    ("offset", "BIGINT"),
    ("timestamp", "TIMESTAMP"),
    ("key", "TEXT or BYTEA"),
    ("topic", "TEXT"),
];

pub struct KafkaSourceFactory {
    settings: Arc<KafkaSettings>,
}

impl KafkaSourceFactory {
    pub fn new(settings: Arc<KafkaSettings>) -> Self {
        KafkaSourceFactory { settings }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum StartupMode {
    Earliest,
    Latest,
    GroupOffsets,
    Timestamp(i64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum DeadLetterTarget {
    Topic,
    File,
}

/// Everything the consumer thread needs.
struct Config {
    source: String,
    topic: String,
    connection: Connection,
    group_id: String,
    startup: StartupMode,
    bounded: bool,
    policy: BadRecords,
    dead_letter: DeadLetterTarget,
    dead_letter_topic: String,
    data_dir: std::path::PathBuf,
    commit_interval: Duration,
    batch: BatchLimits,
    /// The declared schema, in order.
    schema: SchemaRef,
    /// For each declared column: `None` from the payload, `Some(key)` from metadata.
    columns: Vec<Option<Meta>>,
    /// The kafka timestamp is the event time (no WATERMARK clause).
    report_event_time: bool,
    /// The source's live figures (lag, bytes).
    stats: Arc<Stats>,
    /// Checkpointed positions (Weir partition -> next offset) that override `startup`.
    resume: std::collections::HashMap<usize, i64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Meta {
    Partition,
    Offset,
    Timestamp,
    Key,
    Topic,
}

impl SourceFactory for KafkaSourceFactory {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn metadata_keys(&self) -> &'static [(&'static str, &'static str)] {
        METADATA_KEYS
    }

    fn create(&self, spec: SourceSpec) -> Result<Box<dyn Source>> {
        let what = format!("source '{}'", spec.name);
        let mut options = spec.options;
        let topic = options
            .take("topic")
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| WeirError::user(format!("{what}: option 'topic' is required")))?;
        let connection = take_connection(&mut options, &self.settings, &what)?;
        let format = options.take_choice("format", crate::format::MESSAGE_FORMATS, "json")?;
        let group_id = options
            .take("group.id")
            .unwrap_or_else(|| format!("weir-{}", spec.name));
        let mode = options.take_choice(
            "scan.startup.mode",
            &["earliest", "latest", "group-offsets", "timestamp"],
            "earliest",
        )?;
        let ts = options.take("scan.startup.timestamp");
        let startup = match mode.as_str() {
            "earliest" => StartupMode::Earliest,
            "latest" => StartupMode::Latest,
            "group-offsets" => StartupMode::GroupOffsets,
            _ => {
                let Some(ts) = ts.as_deref() else {
                    return Err(WeirError::user(format!(
                        "{what}: 'scan.startup.mode' = 'timestamp' needs \
                         'scan.startup.timestamp' (epoch milliseconds or RFC 3339)"
                    )));
                };
                StartupMode::Timestamp(parse_timestamp(ts).ok_or_else(|| {
                    WeirError::user(format!(
                        "{what}: 'scan.startup.timestamp' must be epoch milliseconds or \
                         RFC 3339, got '{ts}'"
                    ))
                })?)
            }
        };
        if ts.is_some() && mode != "timestamp" {
            return Err(WeirError::user(format!(
                "{what}: 'scan.startup.timestamp' only applies with 'scan.startup.mode' = \
                 'timestamp'"
            )));
        }
        let bounded = options.take_choice(
            "scan.bounded.mode",
            &["unbounded", "latest-offset"],
            "unbounded",
        )? == "latest-offset";
        let policy = parse_bad_records(&mut options)?;
        let dead_letter = match options
            .take_choice("dead.letter", &["topic", "file"], "topic")?
            .as_str()
        {
            "file" => DeadLetterTarget::File,
            _ => DeadLetterTarget::Topic,
        };
        let dead_letter_topic = options
            .take("dead.letter.topic")
            .unwrap_or_else(|| format!("{topic}.dlq"));
        let commit_interval = options
            .take_duration("commit.interval")?
            .unwrap_or(Duration::from_secs(5));

        // Columns: payload or metadata.
        let mut columns = Vec::with_capacity(spec.schema.fields().len());
        let mut payload_fields = Vec::new();
        for f in spec.schema.fields() {
            match spec.metadata.iter().find(|m| &m.column == f.name()) {
                Some(m) => columns.push(Some(meta_column(m, &what)?)),
                None => {
                    columns.push(None);
                    payload_fields.push(f.as_ref().clone());
                }
            }
        }
        let payload_schema = Arc::new(Schema::new(payload_fields));
        // What a cluster member needs to make more decoders (one per worker).
        let decoder_spec = (format.clone(), payload_schema.clone(), options.clone());
        let decoder = decoder_for(&format, payload_schema, &mut options)?;
        options.finish(&format!("the kafka source '{}'", spec.name), VALID_KEYS)?;
        connection.validate(&what)?;
        Ok(Box::new(KafkaSource {
            config: Some(Config {
                source: spec.name.clone(),
                topic,
                connection,
                group_id,
                startup,
                bounded,
                policy,
                dead_letter,
                dead_letter_topic,
                data_dir: spec.data_dir,
                commit_interval,
                batch: spec.batch,
                schema: spec.schema,
                columns,
                report_event_time: spec.event_time.is_none(),
                stats: spec.stats.clone(),
                resume: Default::default(),
            }),
            decoder: Some(decoder),
            decoder_spec,
            rx: None,
            bounded,
            report_event_time: spec.event_time.is_none(),
        }))
    }
}

fn meta_column(m: &MetadataColumn, what: &str) -> Result<Meta> {
    let (meta, ok) = match m.key.as_str() {
        "partition" => (Meta::Partition, m.data_type.is_integer()),
        "offset" => (Meta::Offset, m.data_type.is_integer()),
        "timestamp" => (
            Meta::Timestamp,
            matches!(m.data_type, DataType::Timestamp(_, _)),
        ),
        "key" => (
            Meta::Key,
            matches!(m.data_type, DataType::Utf8 | DataType::Binary),
        ),
        "topic" => (Meta::Topic, m.data_type == DataType::Utf8),
        other => {
            return Err(WeirError::Internal(format!(
                "unchecked metadata key {other}"
            )));
        }
    };
    if !ok {
        return Err(WeirError::user(format!(
            "{what}: column '{}' is {} but METADATA FROM '{}' needs {}",
            m.column,
            m.data_type,
            m.key,
            METADATA_KEYS
                .iter()
                .find(|(k, _)| *k == m.key)
                .map_or("", |(_, t)| t)
        )));
    }
    Ok(meta)
}

/// How often partitions that delivered nothing are checked (see `health_check`).
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
/// How often the source reports its lag (from librdkafka's statistics, see `report_lag`).
const LAG_INTERVAL: Duration = Duration::from_secs(2);
/// Messages taken without waiting between two reads of the clock (see `run`).
const CLOCK_EVERY: u32 = 64;
/// librdkafka's statistics interval: how fresh the high watermarks and broker states behind
/// the health checks and the lag are.
const STATISTICS_INTERVAL_MS: &str = "1000";
/// Statistics older than this tell nothing about the partitions any more (librdkafka sends
/// them every `STATISTICS_INTERVAL_MS`, delivered by `poll`).
const STATISTICS_STALE: Duration = Duration::from_secs(3);
/// librdkafka's default `fetch.wait.max.ms`: how long the broker holds a fetch of a
/// caught-up partition before it answers with nothing.
const FETCH_WAIT_MAX_MS: u64 = 500;
/// How much longer than the fetcher's long poll a broker may stay silent before the
/// partitions fetched from it count as unreachable.
const SILENCE_SLACK: Duration = Duration::from_secs(2);
/// The statistics' high watermark of a partition is only as fresh as the last fetch
/// response for it: it is trusted once the partition has been fetched from a connected
/// broker for this long beyond a long poll (a broker that has just come back, or a partition
/// still validating its position, has the watermark from before the outage).
const FRESH_AFTER: Duration = Duration::from_millis(500);

/// Catches errors librdkafka reports only to the client's error callback (a failed SASL
/// handshake among them), so the source can stop on those that retrying cannot fix; and
/// keeps what librdkafka's statistics say about the topic, so quiet partitions and the lag
/// are judged without asking the broker.
#[derive(Default)]
struct SourceContext {
    fatal: parking_lot::Mutex<Option<String>>,
    /// The source's topic (statistics cover every topic the client knows).
    topic: String,
    /// A broker that sent nothing for longer than this (µs) counts as unreachable.
    silence_limit_us: i64,
    /// How long a partition must have been fetched before its high watermark is trusted
    /// (the long poll plus `FRESH_AFTER`).
    fresh_after: Duration,
    observed: parking_lot::Mutex<Observed>,
}

/// The topic's partitions and the brokers as of librdkafka's latest statistics.
#[derive(Default)]
struct Observed {
    /// When these statistics arrived; `None` before the first.
    at: Option<Instant>,
    partitions: std::collections::HashMap<i32, ObservedPartition>,
}

#[derive(Debug, Clone, Copy)]
struct ObservedPartition {
    /// The high watermark, as of the last fetch response; -1 while unknown.
    high: i64,
    /// Since when (the arrival of the first statistics that said so) the partition has been
    /// fetched from a broker that is up, has been up for longer than `fresh_after`, and
    /// answers; `None` while it is not.
    fetched_since: Option<Instant>,
}

impl Observed {
    /// Whether partition `id`, read up to `pos` (its next offset; `None` before the start
    /// offset is resolved), is caught up with a broker that answers, as of statistics no
    /// older than `STATISTICS_STALE` at `now`, whose high watermark is fresh: the partition
    /// has been fetched from a broker that answers for at least `fresh_after` (so fetch
    /// responses, which carry it, have come since the broker came back). Only such a
    /// partition may go idle: one that is behind, whose broker cannot be reached, or about
    /// which nothing recent is known, may have rows that are merely delayed.
    fn caught_up(&self, id: i32, pos: Option<i64>, now: Instant, fresh_after: Duration) -> bool {
        if self
            .at
            .is_none_or(|at| now.saturating_duration_since(at) >= STATISTICS_STALE)
        {
            return false;
        }
        let Some(p) = self.partitions.get(&id) else {
            return false;
        };
        // The watermark is fresh only if fetch responses have been coming in for a while.
        let fresh = match (p.fetched_since, self.at) {
            (Some(since), Some(at)) => at.saturating_duration_since(since) >= fresh_after,
            _ => false,
        };
        if p.high < 0 || !fresh {
            return false;
        }
        match pos {
            Some(pos) => pos >= p.high,
            None => p.high == 0,
        }
    }
}

impl SourceContext {
    fn new(topic: &str, connection: &Connection) -> Self {
        let fetch_wait_ms = connection
            .properties
            .get("fetch.wait.max.ms")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(FETCH_WAIT_MAX_MS);
        let limit = Duration::from_millis(fetch_wait_ms) + SILENCE_SLACK;
        SourceContext {
            topic: topic.to_string(),
            silence_limit_us: i64::try_from(limit.as_micros()).unwrap_or(i64::MAX),
            fresh_after: Duration::from_millis(fetch_wait_ms) + FRESH_AFTER,
            ..SourceContext::default()
        }
    }

    /// Record a statistics report, arrived at `at`.
    fn observe(&self, statistics: &rdkafka::Statistics, at: Instant) {
        let mut o = self.observed.lock();
        o.at = Some(at);
        // Broker id -> up for longer than `fresh_after` (stateage: µs since its last state
        // change, so a reconnection between two reports shows) and heard from lately
        // (rxidle: µs since it last sent anything, -1 if never).
        let fresh_us = i64::try_from(self.fresh_after.as_micros()).unwrap_or(i64::MAX);
        let mut brokers = std::collections::HashMap::new();
        for b in statistics.brokers.values() {
            // Bootstrap and coordinator connections have no id of a partition's broker.
            if b.nodeid < 0 {
                continue;
            }
            let answers = b.state == "UP"
                && b.stateage >= fresh_us
                && (0..=self.silence_limit_us).contains(&b.rxidle);
            *brokers.entry(b.nodeid).or_insert(false) |= answers;
        }
        let mut partitions = std::collections::HashMap::new();
        if let Some(t) = statistics.topics.get(&self.topic) {
            for (id, p) in &t.partitions {
                // Partition -1 is librdkafka's internal "unassigned" queue.
                if *id < 0 {
                    continue;
                }
                let fetched =
                    p.fetch_state == "active" && brokers.get(&p.broker).copied().unwrap_or(false);
                let fetched_since = if fetched {
                    o.partitions
                        .get(id)
                        .and_then(|prev| prev.fetched_since)
                        .or(Some(at))
                } else {
                    None
                };
                partitions.insert(
                    *id,
                    ObservedPartition {
                        high: p.hi_offset,
                        fetched_since,
                    },
                );
            }
        }
        o.partitions = partitions;
    }
}

impl rdkafka::ClientContext for SourceContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.observe(&statistics, Instant::now());
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if is_fatal(&error) {
            self.fatal
                .lock()
                .get_or_insert_with(|| format!("{error}: {reason}"));
        } else {
            tracing::warn!(error = %error, reason, "kafka client error (librdkafka retries)");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for SourceContext {}

impl SourceContext {
    /// The fatal error the client reported, if any, named by `what` (formatted only then).
    fn check(&self, what: impl FnOnce() -> String) -> Result<()> {
        match self.fatal.lock().clone() {
            Some(e) => Err(WeirError::external(format!("{}: {e}", what()))),
            None => Ok(()),
        }
    }
}

/// Errors that retrying cannot fix: wrong credentials, no permission on the topic.
fn is_fatal(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::Authentication
                | C::SaslAuthenticationFailed
                | C::TopicAuthorizationFailed
                | C::GroupAuthorizationFailed
                | C::ClusterAuthorizationFailed
        )
    )
}

fn parse_timestamp(s: &str) -> Option<i64> {
    if let Ok(ms) = s.trim().parse::<i64>() {
        return Some(ms);
    }
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.timestamp_millis())
}

struct KafkaSource {
    config: Option<Config>,
    decoder: Option<Box<dyn RecordDecoder>>,
    /// The format, payload schema and options the decoder was made from.
    decoder_spec: (String, SchemaRef, weir_engine::options::Options),
    rx: Option<mpsc::Receiver<Result<SourceEvent>>>,
    bounded: bool,
    report_event_time: bool,
}

#[async_trait]
impl Source for KafkaSource {
    fn partitions(&self) -> usize {
        // Known once the consumer has the topic's metadata: it sends
        // SourceEvent::Partitions first.
        1
    }

    fn bounded(&self) -> bool {
        self.bounded
    }

    fn connector_event_time(&self) -> bool {
        self.report_event_time
    }

    fn cluster_input(self: Box<Self>) -> Option<Box<dyn std::any::Any + Send>> {
        let (config, decoder) = (self.config?, self.decoder?);
        Some(Box::new(ClusterInput {
            config,
            decoder: parking_lot::Mutex::new(Some(decoder)),
            decoder_spec: self.decoder_spec,
        }))
    }

    fn seek(&mut self, positions: &[(usize, i64)]) -> Result<()> {
        match self.config.as_mut() {
            Some(c) => {
                c.resume.extend(positions.iter().copied());
                Ok(())
            }
            None => Err(WeirError::Internal(
                "kafka source seeked after it started".into(),
            )),
        }
    }

    async fn next(&mut self) -> Result<SourceEvent> {
        if self.rx.is_none() {
            let (config, decoder) = match (self.config.take(), self.decoder.take()) {
                (Some(c), Some(d)) => (c, d),
                _ => return Err(WeirError::Internal("kafka source restarted".into())),
            };
            let (tx, rx) = mpsc::channel(4);
            let name = format!("weir-kafka-{}", config.source);
            std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    let source = config.source.clone();
                    let mut c = Consumer_::new(config, decoder, tx.clone());
                    if let Err(e) = c.run() {
                        tracing::error!(source = %source, error = %e, "kafka source stopped");
                        let _ = tx.blocking_send(Err(e));
                    }
                })
                .map_err(|e| WeirError::external(format!("starting the kafka consumer: {e}")))?;
            self.rx = Some(rx);
        }
        match self.rx.as_mut() {
            Some(rx) => match rx.recv().await {
                Some(ev) => ev,
                None => Err(WeirError::external("the kafka consumer thread stopped")),
            },
            None => Err(WeirError::Internal("kafka source has no channel".into())),
        }
    }
}

/// One partition's messages waiting to be decoded.
#[derive(Default)]
pub(super) struct Pending {
    payloads: RecordChunk,
    keys: RecordChunk,
    key_null: Vec<bool>,
    offsets: Vec<i64>,
    timestamps: Vec<Option<i64>>,
    first_at: Option<Instant>,
    /// The next offset to read, once anything was read.
    next_offset: Option<i64>,
    /// Where reading started (resolved at assignment).
    start_offset: Option<i64>,
    /// `latest-offset` bound: the partition ends at this offset.
    end_offset: Option<i64>,
    ended: bool,
}

/// The headers of a dead letter on a topic: why, and where the record came from.
pub(super) fn dead_letter_headers(
    reason: &str,
    source: &str,
    topic: &str,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
) -> OwnedHeaders {
    let text = [
        ("weir.reason", reason.to_string()),
        ("weir.source", source.to_string()),
        ("weir.topic", topic.to_string()),
        ("weir.partition", partition.to_string()),
        ("weir.offset", offset.to_string()),
        (
            "weir.timestamp",
            timestamp.map(|t| t.to_string()).unwrap_or_default(),
        ),
    ];
    text.iter().fold(OwnedHeaders::new(), |h, (key, value)| {
        h.insert(Header {
            key,
            value: Some(value.as_str()),
        })
    })
}

impl Pending {
    /// Take one message.
    pub(super) fn push(&mut self, m: &rdkafka::message::BorrowedMessage<'_>, stats: &Stats) {
        let payload = m.payload().unwrap_or(&[]);
        Stats::add(&stats.bytes, payload.len() as u64);
        self.payloads.push(payload);
        match m.key() {
            Some(k) => {
                self.keys.push(k);
                self.key_null.push(false);
            }
            None => {
                self.keys.push(&[]);
                self.key_null.push(true);
            }
        }
        self.offsets.push(m.offset());
        self.timestamps.push(m.timestamp().to_millis());
    }

    /// The offset of message `j`, its timestamp and its payload.
    pub(super) fn message(&self, j: usize) -> (i64, Option<i64>, &[u8]) {
        (self.offsets[j], self.timestamps[j], self.payloads.get(j))
    }

    /// Forget the messages taken (after they were handed on).
    pub(super) fn clear(&mut self) {
        self.payloads.clear();
        self.keys.clear();
        self.key_null.clear();
        self.offsets.clear();
        self.timestamps.clear();
        self.first_at = None;
    }

    pub(super) fn len(&self) -> usize {
        self.payloads.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.payloads.is_empty()
    }

    /// The offset after the last message taken.
    pub(super) fn next_offset(&self) -> Option<i64> {
        self.offsets.last().map(|o| o + 1)
    }
}

/// A Kafka source taken apart for a cluster member (`cluster.rs`), which reads the topic
/// through the cluster's consumer group instead of the source's own consumer.
pub struct ClusterInput {
    config: Config,
    /// In a lock only so that the input may be shared by the threads that decode (each
    /// with a decoder of its own); it is never locked.
    decoder: parking_lot::Mutex<Option<Box<dyn RecordDecoder>>>,
    decoder_spec: (String, SchemaRef, weir_engine::options::Options),
}

/// What one partition's messages decode to: the rows in the source's schema, and the
/// messages that do not decode (index among the messages, reason).
pub(super) struct DecodedInput {
    pub batch: RecordBatch,
    pub bad: Vec<(usize, String)>,
}

impl ClusterInput {
    pub fn source(&self) -> &str {
        &self.config.source
    }

    pub fn topic(&self) -> &str {
        &self.config.topic
    }

    pub fn dead_letter_topic(&self) -> &str {
        &self.config.dead_letter_topic
    }

    pub(super) fn policy(&self) -> BadRecords {
        self.config.policy
    }

    pub(super) fn dead_letter_to_file(&self) -> bool {
        self.config.dead_letter == DeadLetterTarget::File
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.config.stats
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.config.connection.bootstrap_servers
    }

    /// A client config for the source's Kafka with `defaults` under its own properties.
    pub fn client_config(&self, defaults: &[(&str, &str)]) -> rdkafka::ClientConfig {
        self.config.connection.client_config(defaults)
    }

    /// Another decoder like the source's own, for decoding on another thread.
    pub(super) fn new_decoder(&self) -> Result<Box<dyn RecordDecoder>> {
        let (format, schema, options) = &self.decoder_spec;
        decoder_for(format, schema.clone(), &mut options.clone())
    }

    /// The source's own decoder (once).
    pub(super) fn take_decoder(&mut self) -> Option<Box<dyn RecordDecoder>> {
        self.decoder.get_mut().take()
    }

    /// Decode partition `partition`'s messages in `p` with `decoder`.
    pub(super) fn decode(
        &self,
        decoder: &mut dyn RecordDecoder,
        partition: i32,
        p: &Pending,
    ) -> Result<DecodedInput> {
        let decoded = decoder.decode(&p.payloads)?;
        let mut good = vec![true; p.payloads.len()];
        for (j, _) in &decoded.bad {
            good[*j] = false;
        }
        let batch = assemble(&self.config, partition, p, &good, decoded.batch)?;
        Ok(DecodedInput {
            batch,
            bad: decoded.bad,
        })
    }
}

#[allow(non_camel_case_types)]
struct Consumer_ {
    config: Config,
    decoder: Box<dyn RecordDecoder>,
    tx: mpsc::Sender<Result<SourceEvent>>,
    dlq: Option<ThreadedProducer<DefaultProducerContext>>,
    dead_file: Option<DeadLetterWriter>,
    /// The topic's partition ids, indexed by Weir's partition number.
    partition_ids: Vec<i32>,
    /// The next offset per partition of the rows handed to the pipeline, to commit.
    handed: Vec<Option<i64>>,
    committed: Vec<Option<i64>>,
}

impl Consumer_ {
    fn new(
        config: Config,
        decoder: Box<dyn RecordDecoder>,
        tx: mpsc::Sender<Result<SourceEvent>>,
    ) -> Self {
        Consumer_ {
            config,
            decoder,
            tx,
            dlq: None,
            dead_file: None,
            partition_ids: vec![],
            handed: vec![],
            committed: vec![],
        }
    }

    fn what(&self) -> String {
        format!(
            "source '{}' (topic '{}')",
            self.config.source, self.config.topic
        )
    }

    fn send(&self, ev: SourceEvent) -> Result<bool> {
        Ok(self.tx.blocking_send(Ok(ev)).is_ok())
    }

    fn run(&mut self) -> Result<()> {
        let cfg = &self.config;
        let consumer: BaseConsumer<SourceContext> = cfg
            .connection
            .client_config(&[
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
                // librdkafka pauses a partition's fetching for this long once its local
                // queue is full (default 1 s): with a consumer that drains the queue in
                // large batches that pause, not the broker, limited throughput.
                ("fetch.queue.backoff.ms", "10"),
                ("client.id", &format!("weir-{}", cfg.source)),
            ])
            .set("group.id", &cfg.group_id)
            // High watermarks and broker states for the health checks and the lag (see
            // `health_check`), whatever the properties say: without them no quiet
            // partition could ever go idle.
            .set("statistics.interval.ms", STATISTICS_INTERVAL_MS)
            .create_with_context(SourceContext::new(&cfg.topic, &cfg.connection))
            .map_err(|e| kafka_error(&self.what(), e))?;
        let partitions = self.wait_for_topic(&consumer)?;
        let n = partitions.len();
        tracing::info!(
            source = %cfg.source, topic = %cfg.topic, partitions = n,
            startup = ?cfg.startup, "kafka source assigned every partition"
        );
        if !self.send(SourceEvent::Partitions { count: n })? {
            return Ok(());
        }
        let mut pending: Vec<Pending> = (0..n).map(|_| Pending::default()).collect();
        self.handed = vec![None; n];
        self.partition_ids = partitions.clone();
        self.committed = vec![None; n];

        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            let offset = match &self.config.startup {
                StartupMode::Earliest => Offset::Beginning,
                StartupMode::Latest => Offset::End,
                StartupMode::GroupOffsets => Offset::Stored,
                StartupMode::Timestamp(ts) => Offset::Offset(*ts),
            };
            tpl.add_partition_offset(&self.config.topic, *p, offset)
                .map_err(|e| kafka_error(&self.what(), e))?;
        }
        if let StartupMode::Timestamp(_) = self.config.startup {
            tpl = consumer
                .offsets_for_times(tpl, Duration::from_secs(30))
                .map_err(|e| kafka_error(&format!("{}: offsets for times", self.what()), e))?;
            // A timestamp after the last message leaves the offset at the end.
            for e in tpl.elements() {
                tracing::debug!(partition = e.partition(), offset = ?e.offset(), "startup offset");
            }
        }
        // Partitions restored from a checkpoint continue where the pipeline left off.
        for (i, p) in partitions.iter().enumerate() {
            if let Some(next) = self.config.resume.get(&i) {
                tpl.set_partition_offset(&self.config.topic, *p, Offset::Offset(*next))
                    .map_err(|e| kafka_error(&self.what(), e))?;
                tracing::info!(
                    source = %self.config.source, partition = *p, offset = *next,
                    "resuming from the checkpoint"
                );
            }
        }
        if self.config.bounded {
            for (i, p) in partitions.iter().enumerate() {
                let (low, high) = consumer
                    .fetch_watermarks(&self.config.topic, *p, Duration::from_secs(30))
                    .map_err(|e| kafka_error(&self.what(), e))?;
                pending[i].end_offset = Some(high);
                if high <= low {
                    pending[i].ended = true;
                }
            }
        }
        consumer
            .assign(&tpl)
            .map_err(|e| kafka_error(&format!("{}: assigning partitions", self.what()), e))?;

        // With a bound, partitions whose start is already at the bound end now.
        for (i, p) in partitions.iter().enumerate() {
            pending[i].start_offset = Some(match self.config.resume.get(&i) {
                Some(next) => *next,
                None => self.start_offset(&consumer, &tpl, *p)?,
            });
        }
        if self.config.bounded {
            for p in pending.iter_mut() {
                if !p.ended
                    && let (Some(end), Some(start)) = (p.end_offset, p.start_offset)
                    && start >= end
                {
                    p.ended = true;
                }
            }
            for (i, p) in pending.iter().enumerate() {
                if p.ended && !self.send(SourceEvent::PartitionEnd { partition: i })? {
                    return Ok(());
                }
            }
            if pending.iter().all(|p| p.ended) {
                self.commit(&consumer, true);
                self.send(SourceEvent::End)?;
                return Ok(());
            }
        }

        let mut last_commit = Instant::now();
        let mut last_health = Instant::now();
        let mut last_lag = Instant::now() - LAG_INTERVAL;
        let mut heard = vec![false; n];
        let mut last_error_log: Option<Instant> = None;
        let max_rows = self.config.batch.max_rows.max(1);
        let max_delay = self.config.batch.max_delay;
        // The clock is read before and after each poll that may wait, and once every
        // CLOCK_EVERY messages taken without waiting: reading it for every message (and for
        // every partition's batch deadline) took a quarter of the CPU at 700,000 messages/s.
        let mut now = Instant::now();
        let mut unclocked = 0u32;
        loop {
            if self.tx.is_closed() {
                self.commit(&consumer, true);
                return Ok(());
            }
            let polled = match consumer.poll(Duration::ZERO) {
                Some(r) => {
                    unclocked += 1;
                    if unclocked >= CLOCK_EVERY {
                        now = Instant::now();
                        unclocked = 0;
                    }
                    Some(r)
                }
                None => {
                    now = Instant::now();
                    let wait = pending
                        .iter()
                        .filter_map(|p| p.first_at)
                        .map(|t| max_delay.saturating_sub(now.saturating_duration_since(t)))
                        .min()
                        .unwrap_or(Duration::from_millis(100))
                        .min(Duration::from_millis(100));
                    let r = if wait.is_zero() {
                        None
                    } else {
                        consumer.poll(wait)
                    };
                    now = Instant::now();
                    unclocked = 0;
                    r
                }
            };
            let mut full = None;
            match polled {
                Some(Ok(m)) => {
                    let Some(i) = partitions.iter().position(|p| *p == m.partition()) else {
                        continue;
                    };
                    heard[i] = true;
                    let p = &mut pending[i];
                    if p.ended {
                        continue;
                    }
                    p.push(&m, &self.config.stats);
                    p.next_offset = Some(m.offset() + 1);
                    if p.first_at.is_none() {
                        p.first_at = Some(now);
                    }
                    let at_end = p.end_offset.is_some_and(|e| m.offset() + 1 >= e);
                    if p.payloads.len() >= max_rows || at_end {
                        full = Some(i);
                    }
                }
                Some(Err(e)) if is_fatal(&e) => {
                    return Err(kafka_error(&self.what(), e));
                }
                // Transport errors are transient: librdkafka reconnects by itself.
                Some(Err(e))
                    if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) =>
                {
                    tracing::warn!(source = %self.config.source, error = %e,
                        "kafka consumer error (retrying)");
                    last_error_log = Some(Instant::now());
                }
                Some(Err(_)) | None => {}
            }
            if let Some(i) = full
                && !self.hand_on(&partitions, &mut pending, i)?
            {
                return Ok(());
            }
            for i in 0..n {
                if pending[i]
                    .first_at
                    .is_some_and(|t| now.saturating_duration_since(t) >= max_delay)
                    && !self.hand_on(&partitions, &mut pending, i)?
                {
                    return Ok(());
                }
            }
            if self.config.bounded && pending.iter().all(|p| p.ended) {
                self.commit(&consumer, true);
                self.send(SourceEvent::End)?;
                return Ok(());
            }
            consumer.context().check(|| self.what())?;
            if now.saturating_duration_since(last_health) >= HEALTH_INTERVAL {
                if !self.health_check(&consumer, &partitions, &pending, &heard)? {
                    return Ok(());
                }
                heard.iter_mut().for_each(|h| *h = false);
                last_health = now;
            }
            if now.saturating_duration_since(last_lag) >= LAG_INTERVAL {
                self.report_lag(&consumer, &partitions, &pending);
                last_lag = now;
            }
            if now.saturating_duration_since(last_commit) >= self.config.commit_interval {
                self.commit(&consumer, false);
                last_commit = now;
            }
        }
    }

    /// Messages not read yet, summed over the partitions, into the source's lag figure.
    /// The partitions' high watermarks come from librdkafka's statistics (refreshed by
    /// every fetch response, delivered through `poll`), so this costs no broker round trip.
    fn report_lag(
        &self,
        consumer: &BaseConsumer<SourceContext>,
        partitions: &[i32],
        pending: &[Pending],
    ) {
        let observed = consumer.context().observed.lock();
        let mut lag = 0i64;
        for (i, p) in pending.iter().enumerate() {
            if p.ended {
                continue;
            }
            // Not heard of yet: unknown, keep the last figure.
            let Some(high) = observed
                .partitions
                .get(&partitions[i])
                .map(|o| o.high)
                .filter(|h| *h >= 0)
            else {
                return;
            };
            let pos = p.next_offset.or(p.start_offset).unwrap_or(high);
            lag += (high - pos).max(0);
        }
        self.config.stats.lag.store(lag, Ordering::Relaxed);
    }

    /// A partition that delivered nothing lately is idle only if it is caught up with the
    /// broker. One that is behind, or whose broker cannot be reached (an outage, a restart),
    /// is reported active, so that the pipeline does not let processing time close its
    /// windows while its rows are merely delayed.
    ///
    /// Judged from librdkafka's latest statistics (see [`Observed::caught_up`]), never by
    /// asking the broker: this thread alone polls the messages, and a request per quiet
    /// partition (ListOffsets) waits behind the fetcher's long poll on the same connection
    /// (`fetch.wait.max.ms`, 500 ms) or, with the broker down, for its timeout. Checks that
    /// took longer than their interval ran back to back and starved the partitions that had
    /// rows (the broker-restart test's windows stopped closing).
    fn health_check(
        &self,
        consumer: &BaseConsumer<SourceContext>,
        partitions: &[i32],
        pending: &[Pending],
        heard: &[bool],
    ) -> Result<bool> {
        let now = Instant::now();
        let ctx = consumer.context();
        let active: Vec<usize> = {
            let observed = ctx.observed.lock();
            (0..pending.len())
                .filter(|&i| !heard[i] && !pending[i].ended)
                .filter(|&i| {
                    let pos = pending[i].next_offset.or(pending[i].start_offset);
                    !observed.caught_up(partitions[i], pos, now, ctx.fresh_after)
                })
                .collect()
        };
        for i in active {
            if !self.send(SourceEvent::Active { partition: i })? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The offset the consumer starts partition `p` at, resolved the way librdkafka
    /// resolves the assignment `assigned`.
    fn start_offset(
        &self,
        consumer: &BaseConsumer<SourceContext>,
        assigned: &TopicPartitionList,
        p: i32,
    ) -> Result<i64> {
        let (low, high) = consumer
            .fetch_watermarks(&self.config.topic, p, Duration::from_secs(30))
            .map_err(|e| kafka_error(&self.what(), e))?;
        let reset_latest = self
            .config
            .connection
            .properties
            .get("auto.offset.reset")
            .is_some_and(|v| matches!(v.as_str(), "latest" | "largest" | "end"));
        let fallback = if reset_latest { high } else { low };
        Ok(match &self.config.startup {
            StartupMode::Earliest => low,
            StartupMode::Latest => high,
            StartupMode::GroupOffsets => {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&self.config.topic, p);
                let c = consumer
                    .committed_offsets(tpl, Duration::from_secs(30))
                    .map_err(|e| kafka_error(&self.what(), e))?;
                match c.find_partition(&self.config.topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) if (low..=high).contains(&o) => o,
                    _ => fallback,
                }
            }
            StartupMode::Timestamp(_) => {
                match assigned
                    .find_partition(&self.config.topic, p)
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(o)) => o.clamp(low, high),
                    _ => high,
                }
            }
        })
    }

    /// Wait until the topic exists and has partitions; log while waiting.
    fn wait_for_topic(&self, consumer: &BaseConsumer<SourceContext>) -> Result<Vec<i32>> {
        let started = Instant::now();
        let mut logged = false;
        loop {
            // Serve the client's callbacks (errors such as a failed SASL handshake). A poll
            // with no timeout serves a single event, and statistics events arrive every
            // second, so poll for a while to drain the queue.
            if let Some(Err(e)) = consumer.poll(Duration::from_millis(100))
                && is_fatal(&e)
            {
                return Err(kafka_error(&self.what(), e));
            }
            consumer.context().check(|| self.what())?;
            match consumer.fetch_metadata(Some(&self.config.topic), Duration::from_secs(5)) {
                Ok(md) => {
                    if let Some(t) = md.topics().iter().find(|t| t.name() == self.config.topic)
                        && t.error().is_none()
                        && !t.partitions().is_empty()
                    {
                        let mut ps: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
                        ps.sort_unstable();
                        return Ok(ps);
                    }
                    if !logged {
                        tracing::warn!(source = %self.config.source, topic = %self.config.topic,
                            "topic does not exist yet; waiting for it");
                        logged = true;
                    }
                }
                Err(e) if is_fatal(&e) => {
                    return Err(kafka_error(&self.what(), e));
                }
                Err(e) => {
                    if !logged || started.elapsed() > Duration::from_secs(60) {
                        tracing::warn!(source = %self.config.source, error = %e,
                            "cannot reach the kafka cluster yet; retrying");
                        logged = true;
                    }
                }
            }
            if self.tx.is_closed() {
                return Err(WeirError::external("stopped"));
            }
            consumer.context().check(|| self.what())?;
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Decode partition `i`'s pending messages and send the batch on. Returns false when
    /// the pipeline has gone away.
    fn hand_on(&mut self, partitions: &[i32], pending: &mut [Pending], i: usize) -> Result<bool> {
        let p = &mut pending[i];
        if p.payloads.is_empty() {
            p.first_at = None;
            return Ok(true);
        }
        let decoded = self.decoder.decode(&p.payloads)?;
        let bad_count = decoded.bad.len() as u64;
        if !decoded.bad.is_empty() {
            self.handle_bad(partitions[i], p, &decoded.bad)?;
        }
        let mut good = vec![true; p.payloads.len()];
        for (j, _) in &decoded.bad {
            good[*j] = false;
        }
        let batch = assemble(&self.config, partitions[i], p, &good, decoded.batch)?;
        let max_ts = p
            .timestamps
            .iter()
            .zip(&good)
            .filter(|(_, g)| **g)
            .filter_map(|(t, _)| *t)
            .max();
        self.handed[i] = p.next_offset;
        let reached_end = p
            .end_offset
            .is_some_and(|e| p.next_offset.is_some_and(|n| n >= e));
        p.clear();
        if !self.send(SourceEvent::Batch {
            partition: i,
            batch,
            bad_records: bad_count,
            position: self.handed[i],
        })? {
            return Ok(false);
        }
        if self.config.report_event_time
            && let Some(ts) = max_ts
            && !self.send(SourceEvent::Progress {
                partition: i,
                event_time_ms: ts,
            })?
        {
            return Ok(false);
        }
        if reached_end {
            pending[i].ended = true;
            return self.send(SourceEvent::PartitionEnd { partition: i });
        }
        Ok(true)
    }

    fn handle_bad(&mut self, partition: i32, p: &Pending, bad: &[(usize, String)]) -> Result<()> {
        let topic = self.config.topic.clone();
        match self.config.policy {
            BadRecords::Fail => {
                let (j, reason) = &bad[0];
                Err(WeirError::BadRecord(format!(
                    "{}: topic {topic} partition {partition} offset {}: {reason}",
                    self.what(),
                    p.offsets[*j]
                )))
            }
            BadRecords::Skip => Ok(()),
            BadRecords::DeadLetter => match self.config.dead_letter {
                DeadLetterTarget::File => {
                    let w = self.dead_file.get_or_insert_with(|| {
                        DeadLetterWriter::new(&self.config.data_dir, &self.config.source)
                    });
                    for (j, reason) in bad {
                        w.write(
                            p.payloads.get(*j),
                            reason,
                            &format!(
                                "topic {topic} partition {partition} offset {}",
                                p.offsets[*j]
                            ),
                        )?;
                    }
                    w.flush()
                }
                DeadLetterTarget::Topic => self.dead_letter_to_topic(partition, p, bad),
            },
        }
    }

    fn dead_letter_to_topic(
        &mut self,
        partition: i32,
        p: &Pending,
        bad: &[(usize, String)],
    ) -> Result<()> {
        if self.dlq.is_none() {
            let producer: ThreadedProducer<DefaultProducerContext> = self
                .config
                .connection
                .client_config(&[
                    ("client.id", &format!("weir-{}-dlq", self.config.source)),
                    ("enable.idempotence", "true"),
                ])
                .create()
                .map_err(|e| kafka_error(&format!("{}: dead-letter producer", self.what()), e))?;
            self.dlq = Some(producer);
        }
        let Some(producer) = self.dlq.as_ref() else {
            return Ok(());
        };
        for (j, reason) in bad {
            let headers = dead_letter_headers(
                reason,
                &self.config.source,
                &self.config.topic,
                partition,
                p.offsets[*j],
                p.timestamps[*j],
            );
            let mut record: BaseRecord<'_, [u8], [u8]> =
                BaseRecord::to(&self.config.dead_letter_topic)
                    .payload(p.payloads.get(*j))
                    .headers(headers);
            if !p.key_null[*j] {
                record = record.key(p.keys.get(*j));
            }
            let mut record = record;
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((e, r)) => {
                        // Queue full: wait for deliveries.
                        tracing::debug!(error = %e, "dead-letter queue full");
                        std::thread::sleep(Duration::from_millis(10));
                        record = r;
                    }
                }
            }
        }
        // A dead letter must be durable before the rows around it move on.
        producer.flush(Duration::from_secs(60)).map_err(|e| {
            kafka_error(
                &format!(
                    "{}: writing dead letters to topic '{}'",
                    self.what(),
                    self.config.dead_letter_topic
                ),
                e,
            )
        })?;
        Ok(())
    }

    /// Commit the offsets of rows handed to the pipeline (as progress, for lag).
    fn commit(&mut self, consumer: &BaseConsumer<SourceContext>, sync: bool) {
        let mut tpl = TopicPartitionList::new();
        for (i, next) in self.handed.iter().enumerate() {
            if let Some(next) = next
                && self.committed[i] != Some(*next)
                && let Some(id) = self.partition_ids.get(i)
            {
                let _ = tpl.add_partition_offset(&self.config.topic, *id, Offset::Offset(*next));
            }
        }
        if tpl.count() == 0 {
            return;
        }
        let mode = if sync {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        match consumer.commit(&tpl, mode) {
            Ok(()) => {
                self.committed = self.handed.clone();
            }
            Err(e) => {
                tracing::debug!(source = %self.config.source, error = %e, "offset commit failed");
            }
        }
    }
}

/// The declared columns from the decoded payload columns and the metadata of the good
/// records.
fn assemble(
    config: &Config,
    partition: i32,
    p: &Pending,
    good: &[bool],
    payload: RecordBatch,
) -> Result<RecordBatch> {
    let rows = payload.num_rows();
    let mut out: Vec<ArrayRef> = Vec::with_capacity(config.columns.len());
    let mut next_payload = 0;
    let keep = |i: usize| good[i];
    for (field, col) in config.schema.fields().iter().zip(&config.columns) {
        let array: ArrayRef = match col {
            None => {
                let a = payload.column(next_payload).clone();
                next_payload += 1;
                a
            }
            Some(Meta::Partition) => Arc::new(Int32Array::from(vec![partition; rows])),
            Some(Meta::Offset) => Arc::new(Int64Array::from(
                p.offsets
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| keep(*i))
                    .map(|(_, o)| *o)
                    .collect::<Vec<_>>(),
            )),
            Some(Meta::Timestamp) => Arc::new(TimestampMillisecondArray::from(
                p.timestamps
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| keep(*i))
                    .map(|(_, t)| *t)
                    .collect::<Vec<_>>(),
            )),
            Some(Meta::Key) => {
                if field.data_type() == &DataType::Binary {
                    let mut b = BinaryBuilder::with_capacity(rows, p.keys.data.len());
                    for i in (0..p.keys.len()).filter(|i| keep(*i)) {
                        if p.key_null[i] {
                            b.append_null();
                        } else {
                            b.append_value(p.keys.get(i));
                        }
                    }
                    Arc::new(b.finish())
                } else {
                    let mut b = StringBuilder::with_capacity(rows, p.keys.data.len());
                    for i in (0..p.keys.len()).filter(|i| keep(*i)) {
                        if p.key_null[i] {
                            b.append_null();
                        } else {
                            b.append_value(String::from_utf8_lossy(p.keys.get(i)));
                        }
                    }
                    Arc::new(b.finish())
                }
            }
            Some(Meta::Topic) => {
                let mut b = StringBuilder::with_capacity(rows, rows * config.topic.len());
                for _ in 0..rows {
                    b.append_value(&config.topic);
                }
                Arc::new(b.finish())
            }
        };
        let array = if array.data_type() != field.data_type() {
            datafusion::arrow::compute::cast(&array, field.data_type())?
        } else {
            array
        };
        out.push(array);
    }
    Ok(RecordBatch::try_new(config.schema.clone(), out)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use rdkafka::ClientConfig;
    use std::io::Read;
    use std::net::TcpListener;
    use std::sync::atomic::AtomicBool;

    /// A consumer thread's state for `topic` with `n` partitions, all at offset 0 and quiet,
    /// and the receiver of the events it sends.
    fn quiet_consumer(
        bootstrap: &str,
        n: usize,
    ) -> (Consumer_, Vec<Pending>, mpsc::Receiver<Result<SourceEvent>>) {
        let schema = Arc::new(Schema::new(vec![datafusion::arrow::datatypes::Field::new(
            "v",
            DataType::Int64,
            true,
        )]));
        let decoder = decoder_for(
            "json",
            schema.clone(),
            &mut weir_engine::options::Options::new([]),
        )
        .unwrap();
        let config = Config {
            source: "s".into(),
            topic: "t".into(),
            connection: Connection {
                bootstrap_servers: bootstrap.into(),
                properties: Default::default(),
            },
            group_id: "g".into(),
            startup: StartupMode::Earliest,
            bounded: false,
            policy: BadRecords::Skip,
            dead_letter: DeadLetterTarget::File,
            dead_letter_topic: "t.dlq".into(),
            data_dir: std::env::temp_dir(),
            commit_interval: Duration::from_secs(5),
            batch: BatchLimits::default(),
            schema,
            columns: vec![None],
            report_event_time: false,
            stats: Arc::new(Stats::default()),
            resume: Default::default(),
        };
        let (tx, rx) = mpsc::channel(64);
        let mut c = Consumer_::new(config, decoder, tx);
        c.partition_ids = (0..n as i32).collect();
        let pending = (0..n)
            .map(|_| Pending {
                start_offset: Some(0),
                ..Pending::default()
            })
            .collect();
        (c, pending, rx)
    }

    /// The partitions reported active, in order.
    fn active(rx: &mut mpsc::Receiver<Result<SourceEvent>>) -> Vec<usize> {
        let mut out = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            match ev.unwrap() {
                SourceEvent::Active { partition } => out.push(partition),
                other => panic!("unexpected event {other:?}"),
            }
        }
        out
    }

    /// A "broker" that accepts connections and never answers: every request to it waits
    /// for its timeout, as one queued behind the fetcher's long poll waits for that.
    struct SilentBroker {
        addr: String,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl SilentBroker {
        fn start() -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let thread = std::thread::spawn(move || {
                let mut held = Vec::new();
                while !flag.load(Ordering::Relaxed) {
                    if let Ok((s, _)) = listener.accept() {
                        s.set_nonblocking(true).unwrap();
                        held.push(s);
                    }
                    let mut buf = [0u8; 4096];
                    for s in &mut held {
                        let _ = s.read(&mut buf);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            });
            SilentBroker {
                addr,
                stop,
                thread: Some(thread),
            }
        }
    }

    impl Drop for SilentBroker {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// The restart test's partition whose windows stopped closing: the health check asked the
    /// broker about each quiet partition in turn on the thread that polls the messages, each
    /// request waiting behind the fetcher's 500 ms long poll (1 s when the broker was down),
    /// so checks ran back to back and the source took one message per round.
    #[test]
    fn health_check_of_quiet_partitions_does_not_wait_on_the_broker() {
        let broker = SilentBroker::start();
        let consumer: BaseConsumer<SourceContext> = ClientConfig::new()
            .set("bootstrap.servers", &broker.addr)
            .set("group.id", "g")
            .create_with_context(SourceContext::default())
            .unwrap();
        let (c, pending, mut rx) = quiet_consumer(&broker.addr, 3);
        let started = Instant::now();
        assert!(
            c.health_check(&consumer, &[0, 1, 2], &pending, &[false; 3])
                .unwrap()
        );
        let took = started.elapsed();
        // Nothing is known about the partitions (no statistics from a broker that does not
        // answer): each is reported active, so an outage does not let them go idle ...
        assert_eq!(active(&mut rx), vec![0, 1, 2]);
        // ... and the check costs the polling thread far less than its own interval (the
        // old check waited out a 1 s timeout per partition here).
        assert!(
            took < HEALTH_INTERVAL / 2,
            "the health check of 3 quiet partitions took {took:?}"
        );
    }

    /// librdkafka's statistics with broker 1 in `state` for `up_ms`, silent for
    /// `rxidle_ms`, and topic `t`'s partitions `(id, high watermark)` fetched from it, all
    /// fetching except those `validating` their position.
    fn statistics(
        state: &str,
        up_ms: i64,
        rxidle_ms: i64,
        partitions: &[(i32, i64)],
        validating: &[i32],
    ) -> rdkafka::Statistics {
        use rdkafka::statistics::{Broker, Partition, Topic};
        let broker = |name: &str, nodeid: i32, state: &str, rxidle: i64| Broker {
            name: name.into(),
            nodeid,
            state: state.into(),
            stateage: up_ms * 1000,
            rxidle,
            ..Broker::default()
        };
        let topic = |name: &str, partitions: &[(i32, i64)]| Topic {
            topic: name.into(),
            partitions: partitions
                .iter()
                .map(|&(id, high)| {
                    let fetch_state = if validating.contains(&id) {
                        "validate-epoch-wait"
                    } else {
                        "active"
                    };
                    let p = Partition {
                        partition: id,
                        broker: 1,
                        leader: 1,
                        fetch_state: fetch_state.into(),
                        hi_offset: high,
                        ..Partition::default()
                    };
                    (id, p)
                })
                .collect(),
            ..Topic::default()
        };
        rdkafka::Statistics {
            brokers: [
                // The bootstrap connection answers, but it leads no partition.
                broker("127.0.0.1:9092/bootstrap", -1, "UP", 0),
                broker("127.0.0.1:9092/1", 1, state, rxidle_ms * 1000),
            ]
            .into_iter()
            .map(|b| (b.name.clone(), b))
            .collect(),
            topics: [
                topic("t", partitions),
                // Another topic's partition 4 says nothing about topic t's.
                topic("other", &[(4, 0)]),
            ]
            .into_iter()
            .map(|t| (t.topic.clone(), t))
            .collect(),
            ..rdkafka::Statistics::default()
        }
    }

    /// The second regression: with the check judged from statistics, the high watermarks
    /// right after the broker came back were those from before the restart, so partitions
    /// with new rows looked caught up, went idle, and the one partition fetched first moved
    /// the watermark past the others' rows (two thirds of three windows dropped as late).
    #[test]
    fn quiet_partition_is_idle_only_when_caught_up_with_a_broker_that_answers() {
        let (mut c, mut pending, mut rx) = quiet_consumer("127.0.0.1:1", 5);
        c.partition_ids = vec![0, 1, 2, 3, 4];
        let consumer: BaseConsumer<SourceContext> = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("group.id", "g")
            .create_with_context(SourceContext::new("t", &c.config.connection))
            .unwrap();
        // 0 read to its end; 1 behind; 2's end unknown yet; 3 empty, nothing read; 4 not in
        // the statistics of topic t.
        pending[0].next_offset = Some(5);
        pending[1].next_offset = Some(3);
        let topic = [(0, 5), (1, 7), (2, -1), (3, 0)];
        let ctx = consumer.context();
        let check = |pending: &[Pending], heard: &[bool], rx: &mut mpsc::Receiver<_>| {
            assert!(
                c.health_check(&consumer, &[0, 1, 2, 3, 4], pending, heard)
                    .unwrap()
            );
            active(rx)
        };
        // Two reports more than a long poll apart, the second now: fetch responses (which
        // carry the high watermarks) came in between.
        let fetched_a_while = |stats: &rdkafka::Statistics| {
            ctx.observe(
                stats,
                Instant::now() - ctx.fresh_after - Duration::from_millis(100),
            );
            ctx.observe(stats, Instant::now());
        };
        let none = [false; 5];
        let all = vec![0, 1, 2, 3, 4];
        let up = statistics("UP", 60_000, 100, &topic, &[]);

        // No statistics yet: nothing is known, every quiet partition stays active.
        assert_eq!(check(&pending, &none, &mut rx), all);
        // One report cannot tell how old its watermarks are.
        ctx.observe(
            &up,
            Instant::now() - ctx.fresh_after - Duration::from_millis(100),
        );
        assert_eq!(check(&pending, &none, &mut rx), all);
        fetched_a_while(&up);
        assert_eq!(check(&pending, &none, &mut rx), vec![1, 2, 4]);
        // A partition that delivered rows since the last check is not checked; nor is one
        // that ended.
        let mut heard = none;
        heard[1] = true;
        pending[2].ended = true;
        assert_eq!(check(&pending, &heard, &mut rx), vec![4]);
        pending[2].ended = false;

        // The broker is down (a restart) ...
        ctx.observe(&statistics("DOWN", 100, 100, &topic, &[]), Instant::now());
        assert_eq!(check(&pending, &none, &mut rx), all);
        // ... or back for less than a long poll: the watermarks are from before the outage.
        fetched_a_while(&statistics("UP", 200, 100, &topic, &[]));
        assert_eq!(check(&pending, &none, &mut rx), all);
        // A partition still validating its position after the restart is not fetched.
        fetched_a_while(&statistics("UP", 60_000, 100, &topic, &[0]));
        assert_eq!(check(&pending, &none, &mut rx), vec![0, 1, 2, 4]);
        // A broker silent for longer than the fetcher's long poll allows (a network
        // partition): its partitions' rows may be merely delayed.
        let silent = ctx.silence_limit_us / 1000;
        fetched_a_while(&statistics("UP", 60_000, silent + 1, &topic, &[]));
        assert_eq!(check(&pending, &none, &mut rx), all);
        fetched_a_while(&statistics("UP", 60_000, silent, &topic, &[]));
        assert_eq!(check(&pending, &none, &mut rx), vec![1, 2, 4]);

        // Statistics that stopped coming say nothing any more.
        ctx.observe(&up, Instant::now() - STATISTICS_STALE);
        assert_eq!(check(&pending, &none, &mut rx), all);

        // The lag comes from the same statistics: 7 - 3 on partition 1, once every
        // partition's end is known.
        ctx.observe(&up, Instant::now());
        c.config.stats.lag.store(-1, Ordering::Relaxed);
        c.report_lag(&consumer, &[0, 1, 2, 3, 4], &pending);
        assert_eq!(c.config.stats.lag.load(Ordering::Relaxed), -1);
        let topic = [(0, 5), (1, 7), (2, 0), (3, 0), (4, 2)];
        ctx.observe(&statistics("UP", 60_000, 100, &topic, &[]), Instant::now());
        c.report_lag(&consumer, &[0, 1, 2, 3, 4], &pending);
        assert_eq!(c.config.stats.lag.load(Ordering::Relaxed), 4 + 2);
    }
}
