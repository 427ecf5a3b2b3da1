//! The Kafka sink: a view's rows as messages; exactly once with checkpoints, at least once
//! without.
//!
//! Each batch is encoded at once by the format's [`RecordEncoder`] (one message per row)
//! and handed to librdkafka's queue; a background thread delivers.
//!
//! The message key, with `key = 'col, col'`, is those columns encoded in the same format
//! (a JSON object for `json`); without `key` messages have no key.
//!
//! # Updating views: an upsert topic
//!
//! An updating view (an aggregate without a window: its rows change and go away) is written
//! the way a compacted topic keeps a table: every message is keyed by the view's key (its
//! GROUP BY columns; `key`, if given, must name exactly those), an insert or update is the
//! new row as the value, and a delete is a tombstone (the key with a null value). Each
//! batch of changes is netted first ([`changelog::net_changes`]), so an update (the old row
//! deleted, the new one inserted) is one message. A global aggregate (no key columns) has
//! one row: its messages all carry the key of no columns (`{}` in JSON, an empty record in
//! Avro, an empty key in CSV) and go to partition 0, so compaction keeps its last value.
//!
//! # Without checkpoints: at least once
//!
//! `flush` (after every emitting watermark step, on a timer, and at close) waits until
//! everything is delivered. A message whose delivery fails after librdkafka's own retries
//! comes back through the delivery callback and is sent again with backoff, with a warning
//! in the log, so nothing is dropped; meanwhile the pipeline waits (backpressure).
//!
//! # With checkpoints: one transaction per checkpoint epoch
//!
//! The producer is transactional (`transactional.id`, by default `weir-<sink name>`).
//! `recover` calls `init_transactions`, which fences any earlier incarnation and aborts its
//! open transaction, then begins a transaction; every row goes into the open transaction.
//!
//! The checkpoint's manifest is written after [`Sink::precommit`] and before
//! [`Sink::commit`], and a crash can fall between the two: the restart restores checkpoint
//! E, so E's rows are not computed again and must not be lost, while a crash just after
//! Kafka committed E must not write them twice. So:
//!
//! 1. Every message of the open transaction is also appended to a local spool file,
//!    `<data_dir>/kafka-sink/<sink>/open.spool` (the [`spool`] format), which pre-commit
//!    E syncs and renames to `epoch-<E>.spool` (the engine's
//!    [`StagedFiles`](weir_engine::fsutil::StagedFiles), whose files are deleted rather
//!    than renamed when they are published: their rows are published by Kafka).
//! 2. Each transaction also writes one record to the progress topic (`progress.topic`,
//!    default `weir-sink-progress`, one partition, compacted; created when missing) with
//!    key = the transactional id and value = the epoch, so it becomes visible exactly when
//!    the rows do.
//! 3. `precommit(E)`: produce the progress record for E, wait until every message of the
//!    transaction is delivered, sync the spool; the checkpoint records
//!    `{"epoch", "spool", "files", "transactional_id"}` (`files`: every spool not
//!    committed yet, E's and those of earlier pre-commits whose checkpoint failed; `spool`:
//!    E's, null when E wrote no message).
//! 4. `commit(E)`: `commit_transaction` (retriable errors are retried with backoff), delete
//!    the spools of E and older, begin the next transaction.
//! 5. `recover(Some((E, _)))`: after `init_transactions`, if a spool the checkpoint lists
//!    is still there (commit(E) had not finished), read the progress topic with
//!    `read_committed`; unless its last record for this transactional id is E, produce
//!    those spools again in a new transaction with the progress record for E, and commit
//!    it. Then every spool file is deleted. Rows written after the last pre-commit were in
//!    the transaction the fencing aborted; the engine's replay computes them again.
//!
//! Encoding (the Avro encoder may call the schema registry) and the spool's file I/O run
//! on a blocking thread, one task per batch, never on an async worker.
//!
//! A fenced producer (another producer took the transactional id) is fatal. An abortable
//! error aborts the transaction and fails the sink: the pipeline stops and a restart
//! recovers from the last checkpoint.

use super::common::{Connection, KafkaSettings, is_fenced, kafka_error, take_connection};
use crate::format::{RecordChunk, RecordEncoder, encoder_for};
use crate::util::io_error;
use async_trait::async_trait;
use datafusion::arrow::record_batch::RecordBatch;
use parking_lot::Mutex;
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_engine::backoff::{Backoff, retry};
use weir_engine::changelog;
use weir_engine::connector::{RowIds, Sink, SinkCheckpoint, SinkFactory, SinkSpec};
use weir_engine::fsutil::{Staged, StagedFiles, blocking, run_blocking};
use weir_engine::{Result, WeirError};

pub const VALID_KEYS: &[&str] = &[
    "topic",
    "bootstrap.servers",
    "format",
    "key",
    "transactional.id",
    "progress.topic",
    "properties.<librdkafka property>",
    "csv.delimiter",
    "csv.quote",
    "csv.null",
    "schema.registry.url",
    "schema.registry.basic.auth",
];

/// Where transactional sinks record the epoch each transaction commits.
pub const DEFAULT_PROGRESS_TOPIC: &str = "weir-sink-progress";

/// The producer's `transaction.timeout.ms` unless `properties.transaction.timeout.ms` sets
/// it: a transaction stays open for a whole checkpoint interval, which must be shorter.
pub const DEFAULT_TRANSACTION_TIMEOUT_MS: u64 = 300_000;

/// How long one blocking transactional call (init, commit, abort) may take.
const TXN_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long retriable commit errors are retried before the sink fails.
const COMMIT_RETRY_FOR: Duration = Duration::from_secs(300);

/// Retrying `commit_transaction`.
const COMMIT_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    .give_up_after(COMMIT_RETRY_FOR);

/// Retrying `init_transactions` (the coordinator is loading): once a second.
const INIT_BACKOFF: Backoff =
    Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).give_up_after(COMMIT_RETRY_FOR);

/// Sending again messages whose delivery failed (at least once): forever.
const REDELIVERY_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(100), Duration::from_secs(10));

/// The spool of the open transaction's messages since the last pre-commit.
const OPEN_SPOOL: &str = "open.spool";

pub struct KafkaSinkFactory {
    settings: Arc<KafkaSettings>,
}

impl KafkaSinkFactory {
    pub fn new(settings: Arc<KafkaSettings>) -> Self {
        KafkaSinkFactory { settings }
    }
}

impl SinkFactory for KafkaSinkFactory {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn create(&self, spec: SinkSpec) -> Result<Box<dyn Sink>> {
        let what = format!("sink '{}'", spec.name);
        let mut options = spec.options.clone();
        let topic = options
            .take("topic")
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| WeirError::user(format!("{what}: option 'topic' is required")))?;
        let connection = take_connection(&mut options, &self.settings, &what)?;
        let format = options.take_choice("format", crate::format::MESSAGE_FORMATS, "json")?;
        let transactional_id = transactional_id(options.take("transactional.id"), &spec.name)?;
        let progress_topic = match options.take("progress.topic") {
            None => DEFAULT_PROGRESS_TOPIC.to_string(),
            Some(t) if t.trim().is_empty() => {
                return Err(WeirError::user(format!(
                    "{what}: option 'progress.topic' is empty"
                )));
            }
            Some(t) => t.trim().to_string(),
        };
        let key_names: Option<Vec<String>> = options.take("key").map(|k| {
            k.split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        });
        let key_names = if spec.changelog {
            upsert_key(&what, &spec, key_names)?
        } else {
            key_names.unwrap_or_default()
        };
        let key_columns: Vec<usize> = key_names
            .iter()
            .map(|c| {
                spec.schema.index_of(c).map_err(|_| {
                    WeirError::user(format!(
                        "{what}: key column '{c}' is not a column of view '{}'; its columns: {}",
                        spec.view,
                        spec.schema
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
            })
            .collect::<Result<_>>()?;
        // An updating view's messages always have a key, of no columns for a global
        // aggregate.
        let key_encoder = if key_columns.is_empty() && !spec.changelog {
            None
        } else {
            let key_schema = Arc::new(spec.schema.project(&key_columns)?);
            let mut key_options = options.clone();
            Some(encoder_for(
                &format,
                key_schema,
                &mut key_options,
                &format!("{topic}-key"),
            )?)
        };
        let encoder = encoder_for(
            &format,
            spec.schema.clone(),
            &mut options,
            &format!("{topic}-value"),
        )?;
        options.finish(&format!("the kafka sink '{}'", spec.name), VALID_KEYS)?;
        connection.validate(&what)?;
        let txn = spec.checkpointed.then(|| Txn {
            id: transactional_id,
            progress_topic,
            open: false,
            precommitted: Vec::new(),
        });
        let spool = spec
            .checkpointed
            .then(|| Spool::new(spool_dir(&spec.data_dir, &spec.name)));
        // A global aggregate's messages all have the same key: one partition keeps them in
        // order.
        let partition = (spec.changelog && key_columns.is_empty()).then_some(0);
        Ok(Box::new(KafkaSink {
            name: spec.name,
            topic,
            partition,
            connection,
            producer: None,
            work: Some(Work {
                encoder,
                key_encoder,
                key_columns,
                changelog: spec.changelog,
                out: Messages::default(),
                spool,
            }),
            txn,
        }))
    }
}

/// The key of an updating view's messages: the view's key columns. `key`, if given, must
/// name the same columns (its order is the key's).
fn upsert_key(what: &str, spec: &SinkSpec, key: Option<Vec<String>>) -> Result<Vec<String>> {
    let Some(key) = key else {
        return Ok(spec.key_columns.clone());
    };
    let sorted = |k: &[String]| {
        let mut k = k.to_vec();
        k.sort();
        k
    };
    if sorted(&key) == sorted(&spec.key_columns) {
        return Ok(key);
    }
    let view = &spec.view;
    let why = if spec.key_columns.is_empty() {
        "it is a global aggregate (no key columns), whose messages all carry the same key; \
         leave 'key' out"
            .to_string()
    } else {
        format!(
            "its messages are keyed by the view's key ({}), so that a compacted topic keeps each \
             row's last value; leave 'key' out or name exactly those columns",
            spec.key_columns.join(", ")
        )
    };
    Err(WeirError::user(format!(
        "{what}: option 'key' = '{}' does not match updating view '{view}': {why}",
        key.join(", ")
    )))
}

/// The `transactional.id` option, or `weir-<sink name>`.
fn transactional_id(option: Option<String>, sink: &str) -> Result<String> {
    match option {
        None => Ok(format!("weir-{sink}")),
        Some(id) if id.trim().is_empty() => Err(WeirError::user(format!(
            "sink '{sink}': option 'transactional.id' is empty"
        ))),
        Some(id) => Ok(id.trim().to_string()),
    }
}

/// `<data_dir>/kafka-sink/<sink>`: the sink's spool files.
pub fn spool_dir(data_dir: &Path, sink: &str) -> PathBuf {
    data_dir.join("kafka-sink").join(sink)
}

/// The spool of a pre-committed epoch.
pub fn spool_path(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("epoch-{epoch}.spool"))
}

/// The epoch of an `epoch-<E>.spool` file name.
fn spool_epoch(file_name: &str) -> Option<u64> {
    file_name
        .strip_prefix("epoch-")?
        .strip_suffix(".spool")?
        .parse()
        .ok()
}

/// The pre-committed spools in `dir`, by epoch.
fn list_spools(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_error("listing", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io_error("listing", dir, e))?;
        if let Some(epoch) = spool_epoch(&entry.file_name().to_string_lossy()) {
            out.push((epoch, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The sink's files in its spool directory: `open.spool` and `epoch-<E>.spool`.
fn is_spool_name(name: &str) -> bool {
    name == OPEN_SPOOL || spool_epoch(name).is_some()
}

/// The spools a checkpoint of `epoch` lists. A checkpoint written before checkpoints
/// listed them (`files`) names only its own spool; the spools of earlier epochs it covered
/// are those with a lower epoch in `dir`.
fn listed_spools(state: &SinkCheckpoint, dir: &Path, epoch: u64) -> Result<Vec<Staged>> {
    if let Some(listed) = state.get("files").and_then(Staged::list_from_json) {
        return Ok(listed);
    }
    Ok(list_spools(dir)?
        .into_iter()
        .filter(|(e, _)| *e <= epoch)
        .map(|(_, path)| Staged {
            path,
            publish_to: None,
        })
        .collect())
}

/// Collects messages whose delivery failed, to send again (at least once) or to fail the
/// transaction (exactly once).
#[derive(Default)]
struct Deliveries {
    failed: Mutex<Vec<(OwnedMessage, String)>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            self.failed.lock().push((m.detach(), e.to_string()));
        }
    }
}

impl Deliveries {
    fn take_failed(&self) -> Vec<(OwnedMessage, String)> {
        std::mem::take(&mut *self.failed.lock())
    }
}

type KafkaProducer = ThreadedProducer<Deliveries>;

/// The transactional side of a sink in a checkpointed pipeline.
struct Txn {
    id: String,
    progress_topic: String,
    /// `init_transactions` is done and a transaction is open.
    open: bool,
    /// Epochs pre-committed into the open transaction and not committed yet (more than one
    /// when a checkpoint could not be written after its pre-commit: the next one covers
    /// both).
    precommitted: Vec<u64>,
}

/// The spool of a checkpointed sink: the open transaction's messages on disk.
struct Spool {
    /// `<data_dir>/kafka-sink/<sink>`.
    dir: PathBuf,
    /// `open.spool`: the messages written since the last pre-commit, opened at the first.
    open: Option<BufWriter<File>>,
    /// The sealed spools (`epoch-<E>.spool`) not committed yet.
    files: StagedFiles,
}

impl Spool {
    fn new(dir: PathBuf) -> Self {
        Spool {
            files: StagedFiles::new(&dir, is_spool_name),
            dir,
            open: None,
        }
    }

    /// Append one message to the open spool, creating it at the first.
    fn append(&mut self, key: Option<&[u8]>, value: Option<&[u8]>) -> Result<()> {
        let path = self.dir.join(OPEN_SPOOL);
        let w = match &mut self.open {
            Some(w) => w,
            None => {
                std::fs::create_dir_all(&self.dir)
                    .map_err(|e| io_error("creating", &self.dir, e))?;
                let mut w = BufWriter::with_capacity(
                    1 << 20,
                    File::create(&path).map_err(|e| io_error("creating", &path, e))?,
                );
                spool::write_header(&mut w).map_err(|e| io_error("writing", &path, e))?;
                self.open.insert(w)
            }
        };
        spool::write_record(w, key, value).map_err(|e| io_error("writing", &path, e))
    }

    /// Seal the open spool as the spool of `epoch` (if `epoch` wrote anything) and
    /// pre-commit: returns every spool not committed yet.
    fn precommit(&mut self, epoch: u64) -> Result<Vec<Staged>> {
        if let Some(w) = self.open.take() {
            let open = self.dir.join(OPEN_SPOOL);
            let file = w
                .into_inner()
                .map_err(|e| io_error("writing", &open, e.into_error()))?;
            let sealed = Staged {
                path: spool_path(&self.dir, epoch),
                publish_to: None,
            };
            self.files.stage(file, &open, sealed)?;
        }
        self.files.precommit(epoch)
    }

    /// Forget the open spool without writing out what is buffered: its messages belong to
    /// no checkpoint, and the recovery deletes the file.
    fn discard_open(&mut self) {
        if let Some(w) = self.open.take() {
            drop(w.into_parts());
        }
    }

    /// After a restart: delete every spool (after the ones `listed` by the restored
    /// checkpoint were published again, or found committed).
    fn recover(&mut self, listed: &[Staged]) -> Result<usize> {
        self.discard_open();
        std::fs::create_dir_all(&self.dir).map_err(|e| io_error("creating", &self.dir, e))?;
        let r = self.files.recover(listed)?;
        Ok(r.published.len() + r.removed)
    }
}

/// Encoded messages: first `tombstones` keys without a value (an updating view's
/// deletes), then one message per value; keyed by `keys` in the same order when there are
/// keys.
#[derive(Default)]
struct Messages {
    keys: RecordChunk,
    values: RecordChunk,
    tombstones: usize,
}

impl Messages {
    fn clear(&mut self) {
        self.keys.clear();
        self.values.clear();
        self.tombstones = 0;
    }

    fn len(&self) -> usize {
        self.tombstones + self.values.len()
    }

    /// Message `i`'s key and value (`None`: a tombstone).
    fn get(&self, i: usize) -> (Option<&[u8]>, Option<&[u8]>) {
        let key = (!self.keys.is_empty()).then(|| self.keys.get(i));
        let value = i.checked_sub(self.tombstones).map(|v| self.values.get(v));
        (key, value)
    }
}

/// Encoders, their output and the spool: moved to a blocking thread for each batch.
struct Work {
    encoder: Box<dyn RecordEncoder>,
    key_encoder: Option<Box<dyn RecordEncoder>>,
    key_columns: Vec<usize>,
    /// Batches are an updating view's changes: written as upserts and tombstones.
    changelog: bool,
    out: Messages,
    /// Checkpoints on only.
    spool: Option<Spool>,
}

impl Work {
    /// Encode `batch` into `out`, and append the messages to the spool.
    fn encode(&mut self, batch: &RecordBatch) -> Result<()> {
        self.out.clear();
        if self.changelog {
            self.encode_changes(batch)?;
        } else {
            self.encoder.encode(batch, &mut self.out.values)?;
            if let Some(k) = &mut self.key_encoder {
                k.encode(&batch.project(&self.key_columns)?, &mut self.out.keys)?;
            }
        }
        if let Some(spool) = &mut self.spool {
            for i in 0..self.out.len() {
                let (key, value) = self.out.get(i);
                spool.append(key, value)?;
            }
        }
        Ok(())
    }

    /// An updating view's changes: per key its last change in the batch, deletes as
    /// tombstones, inserts as the row.
    fn encode_changes(&mut self, batch: &RecordBatch) -> Result<()> {
        let net = changelog::net_changes(batch, &self.key_columns)?;
        let keys = self
            .key_encoder
            .as_mut()
            .ok_or_else(|| WeirError::Internal("kafka upsert sink without a key".into()))?;
        keys.encode(&net.deletes.project(&self.key_columns)?, &mut self.out.keys)?;
        keys.encode(&net.upserts.project(&self.key_columns)?, &mut self.out.keys)?;
        self.encoder.encode(&net.upserts, &mut self.out.values)?;
        self.out.tombstones = net.deletes.num_rows();
        Ok(())
    }

    fn spool(&mut self) -> Result<&mut Spool> {
        self.spool
            .as_mut()
            .ok_or_else(|| WeirError::Internal("kafka sink without a spool".into()))
    }
}

pub(crate) struct KafkaSink {
    name: String,
    topic: String,
    /// Where every message goes (a global aggregate's, all with one key); `None`: the
    /// producer's partitioner picks.
    partition: Option<i32>,
    connection: Connection,
    producer: Option<Arc<KafkaProducer>>,
    /// `None` only while a blocking task has it.
    work: Option<Work>,
    /// Set when the pipeline takes checkpoints.
    txn: Option<Txn>,
}

/// Describe a failed transactional operation; a fenced producer gets a message of its own.
fn txn_error(
    sink: &str,
    id: &str,
    producer: &KafkaProducer,
    doing: &str,
    e: KafkaError,
) -> WeirError {
    let fatal = producer.client().fatal_error();
    let code = fatal
        .as_ref()
        .map(|(c, _)| *c)
        .or_else(|| e.rdkafka_error_code());
    if code.is_some_and(is_fenced) {
        return WeirError::external_source(
            format!(
                "sink '{sink}': {doing}: the Kafka producer with transactional.id '{id}' was \
                 fenced: another producer with the same transactional.id took over (a second \
                 Weir running this sink, or another sink with the same 'transactional.id'), \
                 or the transaction stayed open longer than transaction.timeout.ms. This \
                 instance stops; give every sink its own 'transactional.id' and keep \
                 properties.transaction.timeout.ms above the checkpoint interval"
            ),
            e,
        );
    }
    match fatal {
        Some((c, reason)) => WeirError::external_source(
            format!("sink '{sink}': {doing}: fatal Kafka producer error ({c:?}): {reason}"),
            e,
        ),
        None => WeirError::external_source(format!("sink '{sink}': {doing}"), e),
    }
}

/// Hand one message to librdkafka's queue: `Ok(false)` when the queue is full.
fn enqueue(
    producer: &KafkaProducer,
    topic: &str,
    partition: Option<i32>,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) -> std::result::Result<bool, KafkaError> {
    let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
    if let Some(p) = payload {
        record = record.payload(p);
    }
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(p) = partition {
        record = record.partition(p);
    }
    match producer.send(record) {
        Ok(()) => Ok(true),
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Ok(false),
        Err((e, _)) => Err(e),
    }
}

/// What the transactional operations need: the producer and names for messages. `Sync`
/// (the sink itself is not, its encoders are not), so it can be held across awaits.
#[derive(Clone)]
struct Ctl {
    sink: String,
    id: String,
    producer: Arc<KafkaProducer>,
}

impl Ctl {
    fn error(&self, doing: &str, e: KafkaError) -> WeirError {
        txn_error(&self.sink, &self.id, &self.producer, doing, e)
    }

    /// Run a blocking producer call on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&KafkaProducer) -> T + Send + 'static,
    ) -> Result<T> {
        let p = self.producer.clone();
        run_blocking("kafka producer task", move || f(&p)).await
    }

    /// Produce in the open transaction, waiting while the local queue is full. A `None`
    /// payload is a tombstone.
    async fn produce(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> Result<()> {
        loop {
            match enqueue(&self.producer, topic, partition, key, payload) {
                Ok(true) => return Ok(()),
                Ok(false) => tokio::time::sleep(Duration::from_millis(1)).await,
                Err(e) => return Err(self.error("producing", e)),
            }
        }
    }

    /// The progress record of `epoch`, always to partition 0 of the progress topic.
    async fn produce_progress(&self, topic: &str, epoch: u64) -> Result<()> {
        self.produce(
            topic,
            Some(0),
            Some(self.id.as_bytes()),
            Some(epoch.to_string().as_bytes()),
        )
        .await
    }

    /// Wait until librdkafka has no message in flight and every delivery report has been
    /// served (the producer's thread serves them; `in_flight_count` counts both).
    /// `Producer::flush` would do, but rdkafka polls it in 100 ms slices, which would add
    /// 100 ms to every checkpoint.
    async fn drain(&self) -> Result<()> {
        // Asks librdkafka to send what lingers now and returns at once: its error is the
        // expected timeout while messages are in flight, which the loop below waits for.
        let _ = self.producer.flush(Duration::ZERO);
        let mut waiting = Instant::now();
        while self.producer.in_flight_count() > 0 {
            if let Some((code, _)) = self.producer.client().fatal_error() {
                return Err(self.error("flushing", KafkaError::MessageProduction(code)));
            }
            if waiting.elapsed() > Duration::from_secs(30) {
                tracing::warn!(sink = %self.sink, pending = self.producer.in_flight_count(),
                    "kafka deliveries still pending after 30s");
                waiting = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// A transaction that cannot complete: abort it (its rows are published again by the
    /// recovery or recomputed by the replay after a restart) and fail the sink.
    async fn abort(&self, why: String) -> WeirError {
        if self.producer.client().fatal_error().is_none() {
            match self
                .blocking(|p| p.abort_transaction(TXN_CALL_TIMEOUT))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(sink = %self.sink, error = %e,
                    "aborting the kafka transaction failed"),
                Err(e) => tracing::warn!(sink = %self.sink, error = %e,
                    "aborting the kafka transaction failed"),
            }
        }
        WeirError::external(format!(
            "sink '{}': {why}; the Kafka transaction was aborted and the pipeline stops (a \
             restart recovers from the last checkpoint)",
            self.sink
        ))
    }

    /// Fail the transaction if a delivery failed or the producer hit a fatal error.
    async fn check_deliveries(&self) -> Result<()> {
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            tracing::error!(sink = %self.sink, error = ?code, reason, "fatal kafka producer error");
            return Err(self.error("producing", KafkaError::MessageProduction(code)));
        }
        let failed = self.producer.context().take_failed();
        if let Some((_, e)) = failed.first() {
            return Err(self
                .abort(format!(
                    "{} message(s) could not be delivered: {e}",
                    failed.len()
                ))
                .await);
        }
        Ok(())
    }

    /// `commit_transaction`, retrying retriable errors; an abortable error aborts.
    async fn commit(&self, epoch: u64) -> Result<()> {
        retry(
            &COMMIT_BACKOFF,
            || self.try_commit(epoch),
            |e, _, _| {
                tracing::warn!(sink = %self.sink, epoch, error = %e,
                    "committing the kafka transaction failed; retrying");
            },
        )
        .await
    }

    /// One `commit_transaction`; a retriable failure is a retryable error.
    async fn try_commit(&self, epoch: u64) -> Result<()> {
        let e = match self
            .blocking(|p| p.commit_transaction(TXN_CALL_TIMEOUT))
            .await?
        {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let doing = format!("committing the transaction of checkpoint {epoch}");
        match &e {
            KafkaError::Transaction(t) if t.is_fatal() => Err(self.error(&doing, e)),
            KafkaError::Transaction(t) if t.txn_requires_abort() => {
                Err(self.abort(format!("{doing}: {e}")).await)
            }
            KafkaError::Transaction(t) if t.is_retriable() => {
                Err(self.error(&doing, e).retryable())
            }
            _ => Err(self.error(&doing, e)),
        }
    }

    fn begin(&self) -> Result<()> {
        self.producer
            .begin_transaction()
            .map_err(|e| self.error("beginning a transaction", e))
    }

    /// `init_transactions`: fences earlier producers with this id and aborts their open
    /// transaction. Retriable errors (the coordinator is loading, a timeout) are retried.
    async fn init(&self) -> Result<()> {
        let attempt = || async {
            match self
                .blocking(|p| p.init_transactions(TXN_CALL_TIMEOUT))
                .await?
            {
                Ok(()) => Ok(()),
                Err(KafkaError::Transaction(t)) if t.is_retriable() && !t.is_fatal() => Err(self
                    .error("initialising transactions", KafkaError::Transaction(t))
                    .retryable()),
                Err(e) => Err(self.error("initialising transactions", e)),
            }
        };
        retry(&INIT_BACKOFF, attempt, |e, _, _| {
            tracing::warn!(sink = %self.sink, error = %e,
                "initialising kafka transactions failed; retrying");
        })
        .await
    }

    /// Produce the messages of the spool `files` again (to `partition`, if set), with the
    /// progress record of `epoch`, in one transaction, and commit it.
    async fn republish(
        &self,
        topic: &str,
        partition: Option<i32>,
        progress_topic: &str,
        files: Vec<PathBuf>,
        epoch: u64,
    ) -> Result<()> {
        self.begin()?;
        let (ctl, topic_owned) = (self.clone(), topic.to_string());
        let sent = self
            .blocking(move |p| -> Result<u64> {
                let mut sent = 0u64;
                for f in &files {
                    let file = File::open(f).map_err(|e| io_error("opening", f, e))?;
                    let mut reader = spool::Reader::new(BufReader::with_capacity(1 << 20, file))
                        .map_err(|e| io_error("reading", f, e))?;
                    while let Some((key, value)) = reader
                        .next_record()
                        .map_err(|e| io_error("reading", f, e))?
                    {
                        while !enqueue(p, &topic_owned, partition, key.as_deref(), value.as_deref())
                            .map_err(|e| ctl.error("publishing the spool again", e))?
                        {
                            // A blocking thread (not an async worker): wait for the
                            // local queue to drain.
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        sent += 1;
                    }
                }
                Ok(sent)
            })
            .await??;
        self.produce_progress(progress_topic, epoch).await?;
        self.drain().await?;
        self.check_deliveries().await?;
        self.commit(epoch).await?;
        tracing::info!(sink = %self.sink, epoch, messages = sent,
            "published again the messages of the checkpoint's transaction, which kafka had not \
             committed before the restart");
        Ok(())
    }
}

impl KafkaSink {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn bootstrap_servers(&self) -> &str {
        &self.connection.bootstrap_servers
    }

    /// Cluster mode: encode `batch` as this sink's messages and hand each to `send`
    /// (topic, partition, key, value) for the member's own transaction; the sink's
    /// producer is not used.
    pub(crate) fn cluster_messages(
        &mut self,
        batch: &RecordBatch,
        mut send: impl FnMut(&str, Option<i32>, Option<&[u8]>, Option<&[u8]>) -> Result<()>,
    ) -> Result<()> {
        let w = self
            .work
            .as_mut()
            .ok_or_else(|| WeirError::Internal("kafka sink without its encoders".into()))?;
        w.encode(batch)?;
        for i in 0..w.out.len() {
            let (key, value) = w.out.get(i);
            send(&self.topic, self.partition, key, value)?;
        }
        Ok(())
    }

    fn producer(&mut self) -> Result<Arc<KafkaProducer>> {
        if let Some(p) = &self.producer {
            return Ok(p.clone());
        }
        let client_id = format!("weir-{}", self.name);
        let timeout = DEFAULT_TRANSACTION_TIMEOUT_MS.to_string();
        let mut defaults: Vec<(&str, &str)> = vec![
            ("client.id", &client_id),
            ("enable.idempotence", "true"),
            ("linger.ms", "5"),
            ("compression.type", "lz4"),
        ];
        if self.txn.is_some() {
            defaults.push(("transaction.timeout.ms", &timeout));
        }
        let mut config = self.connection.client_config(&defaults);
        if let Some(t) = &self.txn {
            // The id is the sink's identity across restarts: the option, not a property.
            config.set("transactional.id", &t.id);
        }
        let p: KafkaProducer = config
            .create_with_context(Deliveries::default())
            .map_err(|e| kafka_error(&format!("sink '{}'", self.name), e))?;
        let p = Arc::new(p);
        self.producer = Some(p.clone());
        Ok(p)
    }

    /// The transactional handle (checkpoints on only).
    fn ctl(&mut self) -> Result<Ctl> {
        let producer = self.producer()?;
        let id = self.txn.as_ref().map(|t| t.id.clone()).unwrap_or_default();
        Ok(Ctl {
            sink: self.name.clone(),
            id,
            producer,
        })
    }

    /// The producer's `transaction.timeout.ms`.
    fn transaction_timeout(&self) -> Duration {
        let ms = self
            .connection
            .properties
            .get("transaction.timeout.ms")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_TRANSACTION_TIMEOUT_MS);
        Duration::from_millis(ms)
    }

    /// At least once: send, retrying whatever the error (delivery failures come back
    /// through [`Deliveries`] and are sent again by `flush`). A `None` payload is a
    /// tombstone.
    async fn send(
        producer: &KafkaProducer,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
        if let Some(p) = payload {
            record = record.payload(p);
        }
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        loop {
            match producer.send(record) {
                Ok(()) => return,
                Err((_, r)) => {
                    // The local queue is full: let deliveries catch up.
                    record = r;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }

    /// Fence earlier incarnations, publish what the restored checkpoint staged if Kafka did
    /// not commit it, discard every spool, and open a transaction.
    async fn recover_txn(&mut self, restored: Option<(u64, SinkCheckpoint)>) -> Result<()> {
        let Some(t) = &self.txn else {
            return Ok(());
        };
        let (id, progress_topic) = (t.id.clone(), t.progress_topic.clone());
        // The progress topic is created in the background: it is needed from the first
        // pre-commit on (producing to it creates it where the cluster allows, uncompacted,
        // if this has not finished by then), and a recovery that finds it missing knows
        // nothing was committed. Some clusters make CreateTopics wait for its timeout
        // (librdkafka's mock cluster has none), which must not stall the start.
        let (connection, topic, sink) = (
            self.connection.clone(),
            progress_topic.clone(),
            self.name.clone(),
        );
        tokio::spawn(async move { ensure_progress_topic(&connection, &topic, &sink).await });
        let ctl = self.ctl()?;
        ctl.init().await?;
        let mut listed = Vec::new();
        if let Some((epoch, state)) = restored {
            if let Some(was) = state.get("transactional_id").and_then(|v| v.as_str())
                && was != id
            {
                tracing::warn!(sink = %self.name, was, now = %id,
                    "the checkpoint was taken with another transactional.id");
            }
            // What the checkpoint staged and is still there: commit(E) had not finished
            // (it deletes the spools after Kafka committed).
            let (listed_now, pending) = blocking(&mut self.work, "kafka sink", move |w| {
                let listed = listed_spools(&state, &w.spool()?.dir, epoch)?;
                let pending = StagedFiles::still_staged(&listed);
                Ok((listed, pending))
            })
            .await?;
            listed = listed_now;
            if !pending.is_empty() {
                let wait = self.transaction_timeout() + Duration::from_secs(60);
                let (connection, topic, key) =
                    (self.connection.clone(), progress_topic.clone(), id.clone());
                let last = run_blocking("kafka progress reader", move || {
                    last_committed_epoch(&connection, &topic, &key, wait)
                })
                .await?
                .map_err(|e| e.context(format!("sink '{}'", self.name)))?;
                if last == Some(epoch) {
                    tracing::info!(sink = %self.name, epoch,
                        "kafka had committed the checkpoint's transaction before the restart");
                } else {
                    let files = pending.into_iter().map(|s| s.path).collect();
                    ctl.republish(&self.topic, self.partition, &progress_topic, files, epoch)
                        .await?;
                }
            }
        }
        let removed = blocking(&mut self.work, "kafka sink", move |w| {
            w.spool()?.recover(&listed)
        })
        .await?;
        if removed > 0 {
            tracing::debug!(sink = %self.name, removed, "removed kafka sink spools");
        }
        ctl.begin()?;
        if let Some(t) = &mut self.txn {
            t.open = true;
            t.precommitted.clear();
        }
        Ok(())
    }

    /// Open the transaction if `recover` was not called.
    async fn ensure_open(&mut self) -> Result<()> {
        if self.txn.as_ref().is_some_and(|t| !t.open) {
            self.recover_txn(None).await?;
        }
        Ok(())
    }

    async fn precommit_txn(&mut self, epoch: u64) -> Result<SinkCheckpoint> {
        self.ensure_open().await?;
        let ctl = self.ctl()?;
        let Some(t) = &mut self.txn else {
            return Ok(SinkCheckpoint::Null);
        };
        // The spool is synced on a blocking thread while the messages are delivered.
        let sealing = blocking(&mut self.work, "kafka sink", move |w| {
            let spool = w.spool()?;
            let listed = spool.precommit(epoch)?;
            let own = spool_path(&spool.dir, epoch);
            Ok((listed, own))
        });
        let delivered = async {
            ctl.produce_progress(&t.progress_topic, epoch).await?;
            ctl.drain().await?;
            ctl.check_deliveries().await
        };
        let (sealed, delivered) = tokio::join!(sealing, delivered);
        delivered?;
        let (listed, own) = sealed?;
        t.precommitted.push(epoch);
        let own = listed
            .iter()
            .any(|s| s.path == own)
            .then(|| own.display().to_string());
        Ok(serde_json::json!({
            "epoch": epoch,
            "spool": own,
            "files": Staged::list_to_json(&listed),
            "transactional_id": t.id,
        }))
    }

    async fn commit_txn(&mut self, epoch: u64) -> Result<()> {
        if !self
            .txn
            .as_ref()
            .is_some_and(|t| t.precommitted.contains(&epoch))
        {
            if self.txn.is_some() {
                tracing::warn!(sink = %self.name, epoch, "commit of an epoch that was not pre-committed");
            }
            return Ok(());
        }
        let ctl = self.ctl()?;
        ctl.commit(epoch).await?;
        // The runtime commits an epoch before it pre-commits the next, so the committed
        // transaction held exactly the pre-committed epochs: their spools go.
        blocking(&mut self.work, "kafka sink", move |w| {
            w.spool()?.files.commit(epoch).map(drop)
        })
        .await?;
        if let Some(t) = &mut self.txn {
            t.precommitted.clear();
        }
        ctl.begin()
    }
}

/// Create the progress topic (one partition, compacted) if it does not exist. A cluster
/// that refuses (no permission) gets a warning unless the topic exists anyway.
async fn ensure_progress_topic(connection: &Connection, topic: &str, sink: &str) {
    let admin: AdminClient<DefaultClientContext> = match connection
        .client_config(&[("client.id", &format!("weir-{sink}-admin"))])
        .create()
    {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(sink, topic, error = %e, "kafka admin client for the progress topic");
            return;
        }
    };
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
    let options = AdminOptions::new()
        .request_timeout(Some(Duration::from_secs(30)))
        .operation_timeout(Some(Duration::from_secs(30)));
    let error = match admin.create_topics([&new], &options).await {
        Ok(results) => match results.into_iter().next() {
            Some(Ok(_)) => {
                tracing::info!(sink, topic, "created the kafka sink progress topic");
                return;
            }
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) | None => return,
            Some(Err((_, code))) => code.to_string(),
        },
        Err(e) => e.to_string(),
    };
    let name = topic.to_string();
    let exists = tokio::task::spawn_blocking(move || {
        admin
            .inner()
            .fetch_metadata(Some(&name), Duration::from_secs(10))
            .is_ok_and(|m| {
                m.topics()
                    .iter()
                    .any(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
            })
    })
    .await
    .unwrap_or(false);
    if exists {
        tracing::debug!(
            sink,
            topic,
            error,
            "the progress topic exists; creating it failed"
        );
    } else {
        tracing::warn!(
            sink,
            topic,
            error,
            "could not create the kafka sink progress topic (1 partition, \
             cleanup.policy=compact); create it, or it is created on first use where the \
             cluster creates topics automatically"
        );
    }
}

/// The progress reader's client context: the end of the partition is how the reader knows
/// it is done, not an error to log.
struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::warn!(error = %error, reason, "kafka progress topic reader");
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// The epoch of the last committed progress record for `id` (partition 0 of `topic`, read
/// with `read_committed`), `None` if there is none.
///
/// A read_committed consumer stops at the last stable offset, which an open transaction of
/// another producer holds back; records committed after that transaction began would be
/// missed. So first wait until the stable offset reaches the high watermark as it was when
/// the search started, then read to the end.
fn last_committed_epoch(
    connection: &Connection,
    topic: &str,
    id: &str,
    wait: Duration,
) -> Result<Option<u64>> {
    let consumer = |isolation: &str| -> Result<BaseConsumer<ReaderContext>> {
        connection
            .client_config(&[
                ("group.id", "weir-sink-progress-reader"),
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "true"),
                ("auto.offset.reset", "earliest"),
                // The end of the partition is found by an empty fetch: do not let the
                // broker hold it for the default 500 ms.
                ("fetch.wait.max.ms", "10"),
                ("isolation.level", isolation),
            ])
            .create_with_context(ReaderContext)
            .map_err(|e| WeirError::external_source("progress topic reader", e))
    };
    let committed = consumer("read_committed")?;
    let timeout = Duration::from_secs(30);
    let meta = committed
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| {
            WeirError::external_source(format!("metadata of the progress topic '{topic}'"), e)
        })?;
    let exists = meta
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
    if !exists {
        return Ok(None);
    }
    let uncommitted = consumer("read_uncommitted")?;
    let (_, high) = uncommitted
        .fetch_watermarks(topic, 0, timeout)
        .map_err(|e| {
            WeirError::external_source(format!("high watermark of the progress topic '{topic}'"), e)
        })?;
    let deadline = Instant::now() + wait;
    let mut logged = Instant::now();
    loop {
        let (_, stable) = committed.fetch_watermarks(topic, 0, timeout).map_err(|e| {
            WeirError::external_source(
                format!("last stable offset of the progress topic '{topic}'"),
                e,
            )
        })?;
        if stable >= high {
            break;
        }
        if Instant::now() > deadline {
            return Err(WeirError::external(format!(
                "the progress topic '{topic}' has had an open transaction for {wait:?} (at \
                 offset {stable}, before {high})"
            )));
        }
        if logged.elapsed() > Duration::from_secs(10) {
            tracing::info!(
                topic,
                stable,
                high,
                "waiting for another producer's transaction on the progress topic to end"
            );
            logged = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .map_err(|e| WeirError::external_source(format!("progress topic '{topic}'"), e))?;
    committed
        .assign(&tpl)
        .map_err(|e| WeirError::external_source(format!("progress topic '{topic}'"), e))?;
    let mut last = None;
    loop {
        match committed.poll(Duration::from_millis(500)) {
            Some(Ok(m)) if m.key() == Some(id.as_bytes()) => {
                last = m
                    .payload()
                    .and_then(|p| std::str::from_utf8(p).ok())
                    .and_then(|s| s.trim().parse::<u64>().ok());
            }
            Some(Ok(_)) => {}
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(last),
            Some(Err(e)) => {
                return Err(WeirError::external_source(
                    format!("reading the progress topic '{topic}'"),
                    e,
                ));
            }
            None if Instant::now() > deadline => {
                return Err(WeirError::external(format!(
                    "reading the progress topic '{topic}' timed out"
                )));
            }
            None => {}
        }
    }
}

#[async_trait]
impl Sink for KafkaSink {
    fn as_any_mut(&mut self) -> Option<&mut (dyn std::any::Any + Send)> {
        Some(self)
    }

    async fn recover(&mut self, restored: Option<(u64, SinkCheckpoint)>) -> Result<()> {
        self.recover_txn(restored).await
    }

    async fn write(&mut self, batch: RecordBatch, _ids: RowIds) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.ensure_open().await?;
        let producer = self.producer()?;
        let ctl = match self.txn {
            Some(_) => Some(self.ctl()?),
            None => None,
        };
        // Encoded (and spooled) on a blocking thread; the buffers come back to be reused.
        let out = blocking(&mut self.work, "kafka sink", move |w| {
            w.encode(&batch)?;
            Ok(std::mem::take(&mut w.out))
        })
        .await?;
        let mut sent = Ok(());
        for i in 0..out.len() {
            let (key, value) = out.get(i);
            match &ctl {
                Some(ctl) => {
                    sent = ctl.produce(&self.topic, self.partition, key, value).await;
                    if sent.is_err() {
                        break;
                    }
                }
                None => Self::send(&producer, &self.topic, self.partition, key, value).await,
            }
        }
        if let Some(w) = &mut self.work {
            w.out = out;
        }
        sent
    }

    async fn flush(&mut self) -> Result<()> {
        let Some(producer) = self.producer.clone() else {
            return Ok(());
        };
        if self.txn.is_some() {
            // Rows become visible at commit; here only fail early on a broken transaction.
            return self.ctl()?.check_deliveries().await;
        }
        let mut redelivery = REDELIVERY_BACKOFF.start();
        loop {
            let p = producer.clone();
            tokio::task::spawn_blocking(move || p.flush(Duration::from_secs(30)))
                .await
                .map_err(|e| WeirError::Internal(format!("kafka flush task: {e}")))?
                .or_else(|e| match e {
                    KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut) => {
                        tracing::warn!(sink = %self.name, "kafka deliveries still pending after 30s");
                        Ok(())
                    }
                    other => Err(kafka_error(&format!("sink '{}'", self.name), other)),
                })?;
            let failed = producer.context().take_failed();
            if failed.is_empty() && producer.in_flight_count() == 0 {
                return Ok(());
            }
            if !failed.is_empty() {
                // At least once: failed deliveries are sent again, for as long as it takes
                // (the pipeline waits meanwhile).
                let wait = redelivery.next_delay().unwrap_or(Duration::from_secs(10));
                tracing::warn!(sink = %self.name, topic = %self.topic, failed = failed.len(),
                    error = %failed[0].1, retry_in_ms = wait.as_millis() as u64,
                    "kafka deliveries failed; sending them again");
                tokio::time::sleep(wait).await;
                for (m, _) in &failed {
                    Self::send(&producer, &self.topic, self.partition, m.key(), m.payload()).await;
                }
            }
        }
    }

    async fn precommit(&mut self, epoch: u64) -> Result<SinkCheckpoint> {
        if self.txn.is_some() {
            return self.precommit_txn(epoch).await;
        }
        self.flush().await?;
        Ok(SinkCheckpoint::Null)
    }

    async fn commit(&mut self, epoch: u64) -> Result<()> {
        self.commit_txn(epoch).await
    }

    async fn close(&mut self) -> Result<()> {
        let Some(t) = &self.txn else {
            return self.flush().await;
        };
        // After a final checkpoint the open transaction is empty; otherwise it holds rows
        // after the last complete checkpoint, which a restart recomputes. Either way it is
        // aborted; spools stay for the recovery.
        if t.open && self.producer.is_some() {
            let ctl = self.ctl()?;
            if ctl.producer.client().fatal_error().is_none() {
                match ctl
                    .blocking(|p| p.abort_transaction(TXN_CALL_TIMEOUT))
                    .await?
                {
                    Ok(()) => {}
                    Err(e) => tracing::warn!(sink = %self.name, error = %e,
                        "aborting the open kafka transaction at close failed"),
                }
            }
        }
        if let Some(t) = &mut self.txn {
            t.open = false;
        }
        if let Some(spool) = self.work.as_mut().and_then(|w| w.spool.as_mut()) {
            spool.discard_open();
        }
        self.producer = None;
        Ok(())
    }
}

/// The spool file format: the 8-byte magic `WEIRSPL1`, then one record per message:
/// the key's length as a little-endian u32 (`u32::MAX` for no key), the key, the value's
/// length as a little-endian u32 (`u32::MAX` for no value: a tombstone), the value.
pub mod spool {
    use std::io::{self, Read, Write};

    pub const MAGIC: &[u8; 8] = b"WEIRSPL1";
    /// The length word of a missing key or value.
    const NONE: u32 = u32::MAX;

    pub fn write_header(w: &mut impl Write) -> io::Result<()> {
        w.write_all(MAGIC)
    }

    fn len(b: &[u8]) -> io::Result<u32> {
        u32::try_from(b.len())
            .ok()
            .filter(|n| *n != NONE)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "message too large"))
    }

    /// A key or a value: its length and bytes, or [`NONE`].
    fn write_part(w: &mut impl Write, part: Option<&[u8]>) -> io::Result<()> {
        match part {
            None => w.write_all(&NONE.to_le_bytes()),
            Some(b) => {
                w.write_all(&len(b)?.to_le_bytes())?;
                w.write_all(b)
            }
        }
    }

    pub fn write_record(
        w: &mut impl Write,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> io::Result<()> {
        write_part(w, key)?;
        write_part(w, value)
    }

    /// A record: the key and the value (each `None` when the message has none).
    pub type Record = (Option<Vec<u8>>, Option<Vec<u8>>);

    pub struct Reader<R> {
        inner: R,
    }

    fn invalid(what: &str) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, what.to_string())
    }

    impl<R: Read> Reader<R> {
        /// Check the magic.
        pub fn new(mut inner: R) -> io::Result<Self> {
            let mut magic = [0u8; 8];
            inner
                .read_exact(&mut magic)
                .map_err(|_| invalid("not a Weir spool file (no header)"))?;
            if &magic != MAGIC {
                return Err(invalid("not a Weir spool file (bad magic)"));
            }
            Ok(Reader { inner })
        }

        /// Up to `buf.len()` bytes; fewer only at the end of the file.
        fn read_full(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let mut n = 0;
            while n < buf.len() {
                match self.inner.read(&mut buf[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(n)
        }

        fn read_u32(&mut self) -> io::Result<u32> {
            let mut b = [0u8; 4];
            if self.read_full(&mut b)? != 4 {
                return Err(invalid("truncated spool record"));
            }
            Ok(u32::from_le_bytes(b))
        }

        fn read_bytes(&mut self, n: u32) -> io::Result<Vec<u8>> {
            let mut out = Vec::new();
            (&mut self.inner).take(n as u64).read_to_end(&mut out)?;
            if out.len() != n as usize {
                return Err(invalid("truncated spool record"));
            }
            Ok(out)
        }

        /// A key or a value after its length word `n`.
        fn read_part(&mut self, n: u32) -> io::Result<Option<Vec<u8>>> {
            match n {
                NONE => Ok(None),
                n => self.read_bytes(n).map(Some),
            }
        }

        /// The next record; `None` at the end of the file.
        pub fn next_record(&mut self) -> io::Result<Option<Record>> {
            let mut b = [0u8; 4];
            match self.read_full(&mut b)? {
                0 => return Ok(None),
                4 => {}
                _ => return Err(invalid("truncated spool record")),
            }
            let key = self.read_part(u32::from_le_bytes(b))?;
            let n = self.read_u32()?;
            let value = self.read_part(n)?;
            Ok(Some((key, value)))
        }
    }
}

#[cfg(test)]
#[path = "sink_tests.rs"]
mod tests;
