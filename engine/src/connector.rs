//! The seam between the engine and the outside world.
//!
//! A connector is a [`SourceFactory`] or a [`SinkFactory`] registered by name in a
//! [`ConnectorRegistry`]. `CREATE SOURCE ... WITH (connector = 'x', ...)` looks `x` up and
//! calls [`SourceFactory::create`] with a [`SourceSpec`]; the factory checks every option
//! right then (so a typo is reported against the statement) and returns a [`Source`] that
//! does no I/O until the runtime first polls it. Sinks work the same way, and so do
//! reference tables (`CREATE TABLE`, a [`TableFactory`] returning a [`TableLoader`]).
//!
//! To add a connector: implement the factory (in its own module of the connectors crate),
//! and add one line to that crate's `registry()` list. The engine itself contains no
//! connector code.

use crate::error::{Result, WeirError};
use crate::options::Options;
use crate::stats::Stats;
use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How big a micro-batch may grow before a source hands it on, by rows and by time.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_rows: usize,
    pub max_delay: Duration,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_rows: 8192,
            max_delay: Duration::from_millis(50),
        }
    }
}

/// A column the connector fills from message metadata: `name TYPE METADATA FROM 'key'`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetadataColumn {
    pub column: String,
    /// The metadata key, as written (`partition`, `offset`, `timestamp`, `key`, ...).
    pub key: String,
    pub data_type: DataType,
}

/// Everything a source factory gets from `CREATE SOURCE`.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    pub name: String,
    /// The declared columns, in order; batches must have exactly this schema.
    pub schema: SchemaRef,
    /// The event-time column named in `WATERMARK FOR`, if any.
    pub event_time: Option<String>,
    /// Columns of `schema` the connector fills from metadata instead of the payload. The
    /// engine has checked every key against [`SourceFactory::metadata_keys`] (and
    /// normalised its case), so connectors without metadata always get an empty list.
    pub metadata: Vec<MetadataColumn>,
    /// Connector options, with the engine's own keys (`connector`, `idle.timeout`) removed.
    /// The factory must take every key it knows and call [`Options::finish`].
    pub options: Options,
    /// Where the connector may keep files (dead letters, offsets).
    pub data_dir: PathBuf,
    pub batch: BatchLimits,
    /// The source's live figures; connectors may fill [`Stats::lag`] and [`Stats::bytes`]
    /// (the engine counts rows).
    pub stats: Arc<Stats>,
    /// The engine's worker count (`[engine] workers`): how many threads a connector may
    /// decode on at once.
    pub workers: usize,
    /// The source's `idle.timeout`: a partition the connector knows has rows to come (not
    /// read yet) should be reported [`SourceEvent::Active`] more often than this.
    pub idle_timeout: Duration,
}

/// `[engine] idle_timeout` unless configured.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a source yields.
#[derive(Debug)]
pub enum SourceEvent {
    /// A micro-batch for one partition. `bad_records` counts malformed records the
    /// connector skipped or dead-lettered while building it.
    Batch {
        partition: usize,
        batch: RecordBatch,
        bad_records: u64,
        /// Where this partition resumes after this batch (the next Kafka offset, the rows a
        /// generator has produced, the records read from a file), if the source can seek
        /// (see [`Source::seek`]). Checkpoints record the last one the pipeline processed.
        position: Option<i64>,
    },
    /// One partition has no more data (a file read to its end): it stops holding the
    /// watermark back. The source itself may go on with other partitions.
    PartitionEnd { partition: usize },
    /// The source is bounded and has ended: its watermark moves to the end of time.
    End,
    /// A partition that delivered nothing lately is not idle: it has data the connector
    /// has not read yet, or its broker cannot be reached. Keeps the partition holding the
    /// watermark back, so that an outage does not let processing time close windows.
    Active { partition: usize },
    /// How many partitions the source has, once it knows (a Kafka topic's partition count
    /// comes from the broker). Partitions the pipeline has not heard of yet are added and
    /// hold the watermark back until they deliver data or go idle.
    Partitions { count: usize },
    /// The connector's own event time for a partition: the newest message timestamp it
    /// has handed over. Used as event time by sources declared without `WATERMARK`, for
    /// connectors whose [`Source::connector_event_time`] is true.
    Progress {
        partition: usize,
        event_time_ms: i64,
    },
    /// No row of `partition` still to come has an event time before `event_time_ms` (a
    /// Parquet file's row-group statistics say so). Until it delivers rows, the partition
    /// holds the watermark there (less the declared delay) instead of at the start of time.
    /// Only for sources whose event time is a column; sent before the partition's first
    /// batch.
    EarliestEventTime {
        partition: usize,
        event_time_ms: i64,
    },
}

#[async_trait]
pub trait Source: Send {
    /// The number of partitions; batches name one of `0..partitions()`.
    fn partitions(&self) -> usize;
    /// Whether the source ends by itself (files, generators with a row count).
    fn bounded(&self) -> bool {
        false
    }
    /// Whether the connector reports event time itself through
    /// [`SourceEvent::Progress`] (Kafka: the message timestamp), so a source declared
    /// without `WATERMARK` still has a watermark (with no delay).
    fn connector_event_time(&self) -> bool {
        false
    }
    /// The next event. Unbounded sources wait for data; cancellation-safe is not required:
    /// the runtime polls one source from one task until it ends.
    async fn next(&mut self) -> Result<SourceEvent>;
    /// For a cluster member (docs/cluster.md): the source taken apart so the member can
    /// read it through the cluster's consumer group, in a form its connector knows
    /// (`None`: it cannot be read by a cluster).
    fn cluster_input(self: Box<Self>) -> Option<Box<dyn std::any::Any + Send>> {
        None
    }
    /// Resume from a checkpoint: each listed partition continues at the position its last
    /// processed batch reported. Called once, before the first [`Source::next`]. Sources
    /// that cannot seek say so, and the engine refuses to restore views over them.
    fn seek(&mut self, positions: &[(usize, i64)]) -> Result<()> {
        let _ = positions;
        Err(WeirError::user(
            "this source cannot resume from a checkpoint",
        ))
    }
}

/// Deterministic ids for the rows of one batch of view output: row `i` of the batch has id
/// `origin << 40 | (first + i)`. `origin` is the source partition the rows came from
/// (stateless views) or [`RowIds::CLOSES`] for rows emitted when windows closed; `first`
/// counts the view's earlier rows from the same origin. A replay from a checkpoint
/// produces the same rows with the same ids, so a sink that writes by id (an append-only
/// view into Postgres) never duplicates a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RowIds {
    pub origin: u32,
    pub first: u64,
}

impl RowIds {
    /// The origin of rows that windows emitted as they closed.
    pub const CLOSES: u32 = (1 << 23) - 1;

    pub fn id(&self, i: usize) -> i64 {
        ((self.origin as i64) << 40) | ((self.first + i as u64) as i64 & ((1 << 40) - 1))
    }
}

/// Everything a sink factory gets from `CREATE SINK`.
#[derive(Debug, Clone)]
pub struct SinkSpec {
    pub name: String,
    pub view: String,
    pub schema: SchemaRef,
    /// The view's natural key: window bounds plus group keys for windowed views, the GROUP
    /// BY columns of an updating view, empty for stateless views.
    pub key_columns: Vec<String>,
    /// Columns never NULL whatever `schema` says: a windowed view's window bounds (the
    /// planner's schema marks them nullable). A sink may declare them NOT NULL.
    pub never_null: Vec<String>,
    /// The view is an updating view: every batch [`Sink::write`] gets is a batch of
    /// changes, `schema`'s columns followed by the op column (`crate::changelog`: +1
    /// insert, -1 delete; an update is a delete of the old row and an insert of the new).
    /// A sink that can only append must refuse it in `create` with a clear error (or write
    /// the ops as a column, when asked to).
    pub changelog: bool,
    pub options: Options,
    pub data_dir: PathBuf,
    /// The sink's live figures; connectors may fill [`Stats::bytes`] and [`Stats::errors`]
    /// (the engine counts rows).
    pub stats: Arc<Stats>,
    /// The pipeline takes checkpoints: transactional sinks publish only in
    /// [`Sink::commit`]. Without checkpoints they publish as they go (at least once).
    pub checkpointed: bool,
}

/// A sink's part in a checkpoint: what [`Sink::precommit`] returned for it, which
/// [`Sink::recover`] gets back after a restart.
pub type SinkCheckpoint = serde_json::Value;

/// A sink. The runtime calls, in order: [`Sink::recover`] once, then any number of
/// [`Sink::write`] and [`Sink::flush`], with a [`Sink::precommit`] at every checkpoint
/// barrier followed (once the checkpoint is durable) by [`Sink::commit`] for the same
/// epoch, and [`Sink::close`] at the end.
///
/// Exactly-once in effect comes from one of two patterns. Idempotent sinks (Postgres)
/// write as rows come and key every row (the view's key, or [`RowIds`]), so rows replayed
/// after a restart overwrite themselves. Transactional sinks (Parquet, Kafka) stage
/// what they write, make it durable in `precommit`, and publish it in `commit`; after a
/// crash, `recover` publishes what the last complete checkpoint staged (if `commit` did
/// not get to it) and discards anything staged after.
#[async_trait]
pub trait Sink: Send {
    /// Called once before anything else, with this sink's part of the checkpoint the
    /// pipeline restored from (`None` on a first start).
    async fn recover(&mut self, restored: Option<(u64, SinkCheckpoint)>) -> Result<()> {
        let _ = restored;
        Ok(())
    }
    /// Whether writing the same rows again (same view key, or same [`RowIds`]) leaves
    /// what was written unchanged: a cluster replays a key partition's rows after a
    /// failover (docs/cluster.md), so it takes only such sinks.
    fn idempotent(&self) -> bool {
        false
    }
    /// Cluster mode: this member now owns key partitions `kps` of the view (rows with
    /// [`RowIds::origin`] in `kps`). A sink that can reject a former owner's late writes
    /// (a paused member that has not yet learnt it lost them) claims them here under
    /// `scope` (cluster, view and sink), so such a write fails with
    /// [`WeirError::Fenced`](crate::WeirError::Fenced). The default claims nothing.
    async fn claim(&mut self, scope: &str, kps: &[u32]) -> Result<()> {
        let _ = (scope, kps);
        Ok(())
    }
    /// Cluster mode: key partitions `kps` went to another member (their rows were
    /// flushed first).
    fn release(&mut self, kps: &[u32]) {
        let _ = kps;
    }
    /// Cluster mode: forget rows written but not yet flushed; the key partitions they
    /// came from are replayed from their last snapshot.
    fn discard(&mut self) {}
    /// The sink as `Any`, for a runtime that handles a connector's own sink type itself
    /// (a cluster member puts a Kafka sink's messages in its own transactions).
    fn as_any_mut(&mut self) -> Option<&mut (dyn std::any::Any + Send)> {
        None
    }
    /// Write one batch of the view's output (in the view's schema).
    async fn write(&mut self, batch: RecordBatch, ids: RowIds) -> Result<()>;
    /// Called when no more output is expected for a while (after each watermark step that
    /// emitted rows and on a timer); make what was written durable and visible if cheap.
    async fn flush(&mut self) -> Result<()> {
        Ok(())
    }
    /// Checkpoint barrier `epoch`: everything written so far must be durable (or staged
    /// durably) before this returns. The value returned is stored in the checkpoint.
    async fn precommit(&mut self, epoch: u64) -> Result<SinkCheckpoint> {
        let _ = epoch;
        self.flush().await?;
        Ok(SinkCheckpoint::Null)
    }
    /// Checkpoint `epoch` is complete: publish what was staged for it.
    async fn commit(&mut self, epoch: u64) -> Result<()> {
        let _ = epoch;
        Ok(())
    }
    /// The pipeline is stopping: flush everything and release resources.
    async fn close(&mut self) -> Result<()>;
}

pub trait SourceFactory: Send + Sync {
    /// The `connector = '...'` name.
    fn name(&self) -> &'static str;
    /// The `METADATA FROM` keys this connector can fill, with the SQL types they take.
    /// The engine checks declared metadata columns against this list before `create`.
    fn metadata_keys(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }
    /// Check the options and build the source. Runs on Tokio's blocking pool, so it may do
    /// blocking I/O to check what it will read (list files, read a Parquet footer); reading
    /// the data itself belongs to [`Source::next`].
    fn create(&self, spec: SourceSpec) -> Result<Box<dyn Source>>;
}

/// Everything a table factory gets from `CREATE TABLE`: a reference table loaded whole
/// (and reloaded on an interval), for lookup joins with streams.
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub name: String,
    /// The declared columns; loaded batches must have exactly this schema.
    pub schema: SchemaRef,
    /// Connector options, with the engine's own keys (`connector`, `refresh.interval`)
    /// removed. The factory must take every key it knows and call [`Options::finish`].
    pub options: Options,
    pub data_dir: PathBuf,
}

/// Reads a reference table in full. Called at `CREATE TABLE`, on `REFRESH TABLE` and every
/// `refresh.interval`; each call returns the whole table as it is now.
#[async_trait]
pub trait TableLoader: Send + Sync {
    async fn load(&self) -> Result<Vec<RecordBatch>>;
    /// Where the table comes from, for DESCRIBE and logs (`file data/regions.csv`).
    fn describe(&self) -> String;
}

pub trait TableFactory: Send + Sync {
    fn name(&self) -> &'static str;
    /// Check the options (no I/O) and return the loader.
    fn create(&self, spec: TableSpec) -> Result<Arc<dyn TableLoader>>;
}

pub trait SinkFactory: Send + Sync {
    fn name(&self) -> &'static str;
    /// Check the options and build the sink. Runs on Tokio's blocking pool, like
    /// [`SourceFactory::create`].
    fn create(&self, spec: SinkSpec) -> Result<Box<dyn Sink>>;
}

/// The list of connectors a pipeline can use. Built once, explicitly, by the connectors
/// crate's `registry()`.
#[derive(Clone, Default)]
pub struct ConnectorRegistry {
    sources: Vec<Arc<dyn SourceFactory>>,
    sinks: Vec<Arc<dyn SinkFactory>>,
    tables: Vec<Arc<dyn TableFactory>>,
}

impl ConnectorRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_source(mut self, f: impl SourceFactory + 'static) -> Self {
        self.sources.push(Arc::new(f));
        self
    }

    pub fn with_sink(mut self, f: impl SinkFactory + 'static) -> Self {
        self.sinks.push(Arc::new(f));
        self
    }

    pub fn with_table(mut self, f: impl TableFactory + 'static) -> Self {
        self.tables.push(Arc::new(f));
        self
    }

    pub fn source(&self, name: &str) -> Result<Arc<dyn SourceFactory>> {
        let name = name.to_ascii_lowercase();
        self.sources
            .iter()
            .find(|f| f.name() == name)
            .cloned()
            .ok_or_else(|| {
                WeirError::user(format!(
                    "unknown source connector '{name}'; available: {}",
                    self.source_names().join(", ")
                ))
            })
    }

    pub fn sink(&self, name: &str) -> Result<Arc<dyn SinkFactory>> {
        let name = name.to_ascii_lowercase();
        self.sinks
            .iter()
            .find(|f| f.name() == name)
            .cloned()
            .ok_or_else(|| {
                WeirError::user(format!(
                    "unknown sink connector '{name}'; available: {}",
                    self.sink_names().join(", ")
                ))
            })
    }

    pub fn table(&self, name: &str) -> Result<Arc<dyn TableFactory>> {
        let name = name.to_ascii_lowercase();
        self.tables
            .iter()
            .find(|f| f.name() == name)
            .cloned()
            .ok_or_else(|| {
                WeirError::user(format!(
                    "unknown table connector '{name}'; available: {}",
                    self.table_names().join(", ")
                ))
            })
    }

    pub fn table_names(&self) -> Vec<&'static str> {
        self.tables.iter().map(|f| f.name()).collect()
    }

    pub fn source_names(&self) -> Vec<&'static str> {
        self.sources.iter().map(|f| f.name()).collect()
    }

    pub fn sink_names(&self) -> Vec<&'static str> {
        self.sinks.iter().map(|f| f.name()).collect()
    }
}

/// Connectors for the engine's own unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Source, SourceEvent, SourceFactory, SourceSpec};
    use crate::error::Result;

    /// `connector = 'pushed'`: a source that never yields, for tests that push batches
    /// into the pipeline themselves (`Pipeline::push`).
    pub struct Pushed;

    pub struct PushedSource;

    #[async_trait::async_trait]
    impl Source for PushedSource {
        fn partitions(&self) -> usize {
            1
        }
        async fn next(&mut self) -> Result<SourceEvent> {
            futures::future::pending().await
        }
    }

    impl SourceFactory for Pushed {
        fn name(&self) -> &'static str {
            "pushed"
        }
        fn create(&self, _spec: SourceSpec) -> Result<Box<dyn Source>> {
            Ok(Box::new(PushedSource))
        }
    }
}
