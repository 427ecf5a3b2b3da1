//! The pipeline: the catalog of sources, views and sinks, and the synchronous dataflow that
//! moves micro-batches and watermarks through the views.
//!
//! How a row travels: a connector's [`Source`] decodes records into an Arrow batch for one
//! partition. [`Pipeline::push`] updates that partition's maximum event time, then hands the
//! batch to every view that reads the source. A stateless view runs its DataFusion plan on
//! the batch and emits the result at once. A windowed view runs the part of its plan below
//! the aggregate (WHERE, window columns), then folds the rows into the accumulators of
//! their open windows (late rows, whose window has closed, are counted and dropped). Then
//! the source's watermark is recomputed (minimum over its active partitions of max event
//! time minus the declared delay); when it passes a window's end, the window's groups are
//! finalised, the part of the plan above the aggregate (HAVING, projection, ORDER BY) runs
//! once over them, and the rows are emitted. A join view (`join.rs`) has two inputs: a
//! batch from either runs through that side's stateless part, probes the other side's
//! stored rows, and the matches run through the part above the join and are emitted at
//! once; its watermark is the least of its inputs'. Every emitted batch is retained for ad-hoc
//! queries, handed to downstream views (in creation order, so views over views see batches
//! before watermarks), and returned to the caller, which writes it to the view's sinks.
//!
//! The pipeline itself never sleeps or spawns: the runtime (`runtime.rs`) feeds it from
//! source tasks, and the test runner steps it by hand.

use crate::checkpoint::{Figures, PartitionCheckpoint, Restored, Snapshot, SourceState, ViewState};
use crate::connector::{
    BatchLimits, ConnectorRegistry, RowIds, Sink, SinkCheckpoint, SinkSpec, Source, SourceSpec,
    TableLoader, TableSpec,
};
use crate::error::{Result, WeirError};
use crate::join::{StreamJoin, TimeKey};
use crate::lookup::{LookupTable, TableHandle};
use crate::options::Options;
use crate::plan::{BatchSlot, StreamTable, ViewPlan, ViewPlanKind, split_plan};
use crate::sql::{
    self, CreateSink, CreateSource, CreateTable, CreateView, Emit, Located, ObjectKind,
    WeirStatement,
};
use crate::stats::{Stats, Status};
use datafusion::arrow::array::{Array, ArrayRef, StringArray, TimestampMillisecondArray};
use datafusion::arrow::compute::{cast, max};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{Query, Statement as SqlStatement};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    pub batch: BatchLimits,
    /// How long a partition may be silent before it stops holding the watermark back.
    pub idle_timeout: Duration,
    /// How many result rows each view keeps for queries, unless the view says otherwise.
    pub retention_rows: usize,
    /// Whether the runtime takes checkpoints (sinks are told, see `SinkSpec::checkpointed`).
    pub checkpoints: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            data_dir: PathBuf::from("data"),
            batch: BatchLimits::default(),
            idle_timeout: Duration::from_secs(10),
            retention_rows: 100_000,
            checkpoints: false,
        }
    }
}

/// One batch a view emitted, as subscribers see it: its rows numbered
/// `first_seq..=last_seq()` in the view's sequence.
#[derive(Debug)]
pub struct Emitted {
    pub first_seq: u64,
    pub batch: RecordBatch,
    /// The view's watermark after this emission (epoch ms), if it has one.
    pub watermark: Option<i64>,
    /// Wall-clock time the pipeline emitted it, in epoch microseconds.
    pub emitted_at_us: i64,
    /// A serialized form, made by the first subscriber that needs it and shared by the rest
    /// (so fan-out encodes each batch once); its type is the server's business.
    pub encoded: std::sync::OnceLock<Box<dyn std::any::Any + Send + Sync>>,
}

impl Emitted {
    pub fn last_seq(&self) -> u64 {
        self.first_seq + self.batch.num_rows() as u64 - 1
    }
}

/// What a subscriber hears about a view.
#[derive(Debug, Clone)]
pub enum ViewEvent {
    Rows(Arc<Emitted>),
    /// The view was dropped; nothing more will come.
    Dropped,
}

/// How many emitted batches the fan-out channel of a view holds for subscribers that are
/// behind; one that falls further behind is told so and dropped (bounded memory).
pub const SUBSCRIBER_QUEUE_BATCHES: usize = 128;

/// A view's most recent output rows, bounded by rows, each numbered with the view's
/// sequence (1, 2, 3, ... with no gaps), and the fan-out to live subscribers.
#[derive(Debug)]
pub struct ViewBuffer {
    pub schema: SchemaRef,
    max_rows: usize,
    inner: RwLock<Retained>,
    tx: tokio::sync::broadcast::Sender<ViewEvent>,
}

#[derive(Debug, Default)]
struct Retained {
    /// `(first_seq, batch)`, oldest first.
    batches: VecDeque<(u64, RecordBatch)>,
    rows: usize,
    /// The seq of the last row emitted (0 before the first).
    last_seq: u64,
}

/// Retained rows with their numbering.
#[derive(Debug, Clone, Default)]
pub struct RetainedRows {
    /// `(first_seq, batch)`, oldest first, contiguous.
    pub batches: Vec<(u64, RecordBatch)>,
    /// The seq of the newest row the view has emitted (retained or not).
    pub last_seq: u64,
}

impl ViewBuffer {
    fn new(schema: SchemaRef, max_rows: usize) -> Self {
        ViewBuffer {
            schema,
            max_rows,
            inner: RwLock::new(Retained::default()),
            tx: tokio::sync::broadcast::channel(SUBSCRIBER_QUEUE_BATCHES).0,
        }
    }

    /// Number and retain `batch`, and hand it to subscribers.
    fn push(&self, batch: RecordBatch, watermark: Option<i64>, emitted_at_us: i64) {
        if batch.num_rows() == 0 {
            return;
        }
        let Ok(mut g) = self.inner.write() else {
            return;
        };
        let first_seq = g.last_seq + 1;
        g.last_seq += batch.num_rows() as u64;
        if self.max_rows > 0 {
            g.rows += batch.num_rows();
            g.batches.push_back((first_seq, batch.clone()));
            while g.rows > self.max_rows {
                let Some((seq, front)) = g.batches.front().cloned() else {
                    break;
                };
                let excess = g.rows - self.max_rows;
                if front.num_rows() <= excess {
                    g.rows -= front.num_rows();
                    g.batches.pop_front();
                } else {
                    let keep = front.slice(excess, front.num_rows() - excess);
                    g.rows -= excess;
                    g.batches[0] = (seq + excess as u64, keep);
                }
            }
        }
        // Sent under the lock, so a subscriber that subscribes and then reads the retained
        // rows sees every batch in one or the other (or both: it skips by seq).
        let _ = self.tx.send(ViewEvent::Rows(Arc::new(Emitted {
            first_seq,
            batch,
            watermark,
            emitted_at_us,
            encoded: std::sync::OnceLock::new(),
        })));
    }

    /// The retained rows, oldest first.
    pub fn snapshot(&self) -> Vec<RecordBatch> {
        self.inner
            .read()
            .map(|g| g.batches.iter().map(|(_, b)| b.clone()).collect())
            .unwrap_or_default()
    }

    /// The retained rows with their seqs.
    pub fn retained(&self) -> RetainedRows {
        self.inner
            .read()
            .map(|g| RetainedRows {
                batches: g.batches.iter().cloned().collect(),
                last_seq: g.last_seq,
            })
            .unwrap_or_default()
    }

    /// A page of retained rows without copying the rest: the `limit` rows after
    /// `since_seq`, or the newest `limit` rows. Returns the seq of the page's first row
    /// (`None` when it is empty), its rows, and the seq of the newest row emitted.
    pub fn page(
        &self,
        since_seq: Option<u64>,
        limit: usize,
    ) -> (Option<u64>, Vec<RecordBatch>, u64) {
        let Ok(g) = self.inner.read() else {
            return (None, vec![], 0);
        };
        let Some(&(oldest, _)) = g.batches.front() else {
            return (None, vec![], g.last_seq);
        };
        let newest_kept = g.last_seq;
        let from = match since_seq {
            Some(since) => since.saturating_add(1).max(oldest),
            None => newest_kept
                .saturating_sub(limit as u64)
                .saturating_add(1)
                .max(oldest),
        };
        if from > newest_kept || limit == 0 {
            return (None, vec![], g.last_seq);
        }
        // The batch holding `from`: the last one starting at or before it.
        let start = g
            .batches
            .partition_point(|(seq, _)| *seq <= from)
            .saturating_sub(1);
        let mut out = Vec::new();
        let mut left = limit;
        for (seq, b) in g.batches.range(start..) {
            if left == 0 {
                break;
            }
            let skip = from.saturating_sub(*seq) as usize;
            if skip >= b.num_rows() {
                continue;
            }
            let n = (b.num_rows() - skip).min(left);
            out.push(b.slice(skip, n));
            left -= n;
        }
        (Some(from), out, g.last_seq)
    }

    /// The seq of the newest row emitted.
    pub fn last_seq(&self) -> u64 {
        self.inner.read().map(|g| g.last_seq).unwrap_or(0)
    }

    /// Continue the numbering after `last_seq` (restored at start-up, before any row).
    pub fn resume_seq(&self, last_seq: u64) {
        if let Ok(mut g) = self.inner.write()
            && g.batches.is_empty()
        {
            g.last_seq = g.last_seq.max(last_seq);
        }
    }

    /// Put back the retained rows and numbering a checkpoint recorded (before any row).
    fn restore(&self, first_seq: u64, rows: Vec<RecordBatch>, last_seq: u64) {
        if let Ok(mut g) = self.inner.write()
            && g.batches.is_empty()
        {
            let mut seq = first_seq;
            for b in rows {
                if b.num_rows() == 0 {
                    continue;
                }
                let n = b.num_rows();
                g.rows += n;
                g.batches.push_back((seq, b));
                seq += n as u64;
            }
            g.last_seq = last_seq.max(seq.saturating_sub(1));
        }
    }

    /// Live emissions from now on. Subscribe first, then read [`ViewBuffer::retained`].
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<ViewEvent> {
        self.tx.subscribe()
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    fn close(&self) {
        let _ = self.tx.send(ViewEvent::Dropped);
    }
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// A windowed view's state figures: open windows, groups, bytes.
fn state_figures(s: &Stats, aggregate: &dyn crate::window::WindowOperator) {
    use std::sync::atomic::Ordering::Relaxed;
    s.open_windows
        .store(aggregate.open_windows() as u64, Relaxed);
    s.open_groups.store(aggregate.open_groups() as u64, Relaxed);
    s.state_bytes.store(aggregate.state_bytes() as u64, Relaxed);
}

/// A join view's state figures: rows held on both sides (as `open_groups`) and bytes.
fn join_figures(s: &Stats, join: &StreamJoin) {
    use std::sync::atomic::Ordering::Relaxed;
    s.open_groups.store(join.stored_rows() as u64, Relaxed);
    s.state_bytes.store(join.state_bytes() as u64, Relaxed);
}

fn figures(s: &Stats) -> Figures {
    Figures {
        rows_in: Stats::get(&s.rows_in),
        rows_out: Stats::get(&s.rows_out),
        late_rows: Stats::get(&s.late_rows),
        bad_rows: Stats::get(&s.bad_rows),
    }
}

fn set_figures(s: &Stats, f: &Figures) {
    use std::sync::atomic::Ordering::Relaxed;
    s.rows_in.store(f.rows_in, Relaxed);
    s.rows_out.store(f.rows_out, Relaxed);
    s.late_rows.store(f.late_rows, Relaxed);
    s.bad_rows.store(f.bad_rows, Relaxed);
}

fn opt_watermark(w: i64) -> Option<i64> {
    (w != i64::MIN).then_some(w)
}

#[derive(Debug, Clone, Copy)]
struct PartitionState {
    max_event: Option<i64>,
    last_active: i64,
    ended: bool,
    /// The position the last processed batch reported (see `SourceEvent::Batch`).
    position: Option<i64>,
}

impl PartitionState {
    fn new(now: i64) -> Self {
        PartitionState {
            max_event: None,
            last_active: now,
            ended: false,
            position: None,
        }
    }
}

struct SourceNode {
    name: String,
    sql: String,
    connector: String,
    schema: SchemaRef,
    /// Where event time comes from and the watermark delay: a column of the batches
    /// (`WATERMARK FOR col`), or the connector's [`SourceEvent::Progress`] reports
    /// (column `None`, for sources without WATERMARK whose connector knows event time).
    watermark_col: Option<(Option<usize>, i64)>,
    idle_timeout_ms: i64,
    partitions: Vec<PartitionState>,
    watermark: i64,
    stats: Arc<Stats>,
    source: Option<Box<dyn Source>>,
}

struct ViewNode {
    name: String,
    sql: String,
    plan: ViewPlan,
    input_watermark: i64,
    watermark: i64,
    stats: Arc<Stats>,
    buffer: Arc<ViewBuffer>,
    /// Rows emitted per row-id origin (see [`RowIds`]).
    row_counters: BTreeMap<u32, u64>,
    /// The reference tables its plan reads (lookup joins).
    tables: Vec<String>,
}

impl ViewNode {
    /// Number `rows` more rows from `origin`.
    fn row_ids(&mut self, origin: u32, rows: usize) -> RowIds {
        let c = self.row_counters.entry(origin).or_default();
        let ids = RowIds { origin, first: *c };
        *c += rows as u64;
        ids
    }
}

/// A reference table (`CREATE TABLE`), see `lookup.rs`.
struct TableNode {
    name: String,
    sql: String,
    connector: String,
    loader: Arc<dyn TableLoader>,
    handle: Arc<TableHandle>,
    refresh: Option<Duration>,
    stats: Arc<Stats>,
    /// Whether the runtime has been handed its refresh task.
    started: bool,
}

/// A reference table to reload every `interval`, for the runtime.
pub struct TableRefresh {
    pub name: String,
    pub loader: Arc<dyn TableLoader>,
    pub handle: Arc<TableHandle>,
    pub interval: Duration,
    pub stats: Arc<Stats>,
}

impl TableRefresh {
    /// Load the table once and swap it in; a failure keeps the old contents.
    pub async fn reload(&self) -> Result<usize> {
        reload_table(&self.name, self.loader.as_ref(), &self.handle, &self.stats).await
    }

    /// Reload the table every `interval`, forever (the runtime aborts the task when the
    /// table is dropped). A failed load is logged and shown in the table's status; the
    /// table keeps its previous contents and is tried again at the next interval.
    pub async fn run(self) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate, and CREATE TABLE has just loaded the table.
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let _ = self.reload().await;
        }
    }
}

/// Load a reference table and swap it in (the previous contents stay if the load fails).
async fn reload_table(
    name: &str,
    loader: &dyn TableLoader,
    handle: &TableHandle,
    stats: &Stats,
) -> Result<usize> {
    let started = std::time::Instant::now();
    match loader
        .load()
        .await
        .and_then(|b| check_table_batches(name, &handle.schema, b))
    {
        Ok(batches) => {
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            handle.replace(batches, crate::runtime::now_ms());
            stats
                .rows_in
                .store(rows as u64, std::sync::atomic::Ordering::Relaxed);
            Stats::add(&stats.batches, 1);
            stats.set_status(Status::Running);
            tracing::info!(table = %name, rows, ms = started.elapsed().as_millis() as u64, "table loaded");
            Ok(rows)
        }
        Err(e) => {
            let msg = e.to_string();
            handle.failed(msg.clone());
            stats.set_error(msg.clone());
            stats.set_status(Status::Retrying);
            tracing::error!(table = %name, error = %msg, "table load failed; keeping the previous contents");
            Err(e)
        }
    }
}

/// A loader's batches, checked against (and cast to) the table's declared schema.
fn check_table_batches(
    name: &str,
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<Vec<RecordBatch>> {
    batches
        .into_iter()
        .map(|b| {
            if b.schema().fields() == schema.fields() {
                return Ok(RecordBatch::try_new(schema.clone(), b.columns().to_vec())?);
            }
            if b.num_columns() != schema.fields().len() {
                return Err(WeirError::Internal(format!(
                    "table '{name}': the loader returned {} columns, {} declared",
                    b.num_columns(),
                    schema.fields().len()
                )));
            }
            let cols = b
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(c, f)| {
                    if c.data_type() == f.data_type() {
                        Ok(c.clone())
                    } else {
                        let strict = datafusion::arrow::compute::CastOptions {
                            safe: false,
                            ..Default::default()
                        };
                        datafusion::arrow::compute::cast_with_options(c, f.data_type(), &strict)
                    }
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            RecordBatch::try_new(schema.clone(), cols).map_err(|e| {
                WeirError::user(format!(
                    "table '{name}' does not fit its declared columns: {e}"
                ))
            })
        })
        .collect()
}

struct SinkNode {
    name: String,
    sql: String,
    view: String,
    connector: String,
    stats: Arc<Stats>,
    sink: Option<Box<dyn Sink>>,
    /// This sink's part of the checkpoint the pipeline was restored from.
    restored: Option<(u64, SinkCheckpoint)>,
}

/// A sink ready to be started by the runtime.
pub struct NewSink {
    pub name: String,
    /// The view it reads.
    pub view: String,
    pub stats: Arc<Stats>,
    pub sink: Box<dyn Sink>,
    /// What to hand [`Sink::recover`].
    pub restored: Option<(u64, SinkCheckpoint)>,
}

/// One batch a view emitted.
#[derive(Debug, Clone)]
pub struct Output {
    pub view: String,
    pub batch: RecordBatch,
    pub ids: RowIds,
}

/// What [`Pipeline::restore`] did.
#[derive(Debug, Default, Clone)]
pub struct RestoreReport {
    pub epoch: u64,
    pub sources: Vec<String>,
    pub views: Vec<String>,
    pub sinks: Vec<String>,
    /// Objects in the checkpoint that were not restored, with the reason.
    pub skipped: Vec<String>,
    pub open_groups: u64,
}

/// What a statement did.
#[derive(Debug, Clone)]
pub enum StatementResult {
    Created {
        kind: ObjectKind,
        name: String,
    },
    Dropped {
        kind: ObjectKind,
        name: String,
    },
    /// Nothing happened (`IF NOT EXISTS` / `IF EXISTS`).
    Unchanged {
        kind: ObjectKind,
        name: String,
    },
    Rows(Vec<RecordBatch>),
}

/// A live object for display.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub kind: ObjectKind,
    pub name: String,
    /// The connector (sources, sinks) or the input (views).
    pub detail: String,
    pub stats: Arc<Stats>,
    /// The statement that created it, as written.
    pub sql: String,
    /// Its columns (a sink's are its view's).
    pub schema: SchemaRef,
    /// What it reads: a view's source or view (a join view's left input), a sink's view.
    pub input: Option<String>,
    /// Everything it reads: a view's inputs (two for a join view), a sink's view.
    pub inputs: Vec<String>,
    /// A view's retained rows and subscribers.
    pub buffer: Option<Arc<ViewBuffer>>,
    /// What identifies a view's output row (window bounds and group keys; empty for
    /// stateless views): rows with the same key replace each other (early results).
    pub key: Vec<String>,
}

/// The objects of a running pipeline, readable from other tasks (the HTTP server) without
/// going through the driver. Replaced as a whole on every CREATE and DROP.
#[derive(Debug, Clone, Default)]
pub struct Catalog(
    Arc<RwLock<Arc<Vec<ObjectInfo>>>>,
    Arc<crate::stats::CheckpointStats>,
);

impl Catalog {
    pub fn objects(&self) -> Arc<Vec<ObjectInfo>> {
        self.0.read().map(|g| g.clone()).unwrap_or_default()
    }

    /// The pipeline's checkpoint figures (the runtime's coordinator fills them).
    pub fn checkpoint_stats(&self) -> Arc<crate::stats::CheckpointStats> {
        self.1.clone()
    }

    pub fn get(&self, name: &str) -> Option<ObjectInfo> {
        self.objects().iter().find(|o| o.name == name).cloned()
    }

    fn set(&self, objects: Vec<ObjectInfo>) {
        if let Ok(mut g) = self.0.write() {
            *g = Arc::new(objects);
        }
    }
}

/// One statement of a script that was applied.
#[derive(Debug, Clone)]
pub struct Applied {
    /// What kind of statement it was: `CREATE SOURCE`, `DROP MATERIALIZED VIEW`, `SELECT`...
    pub statement: &'static str,
    /// Its text as written.
    pub text: String,
    pub result: StatementResult,
}

/// What a script did: the statements applied, in order, and the error that stopped it.
#[derive(Debug, Default)]
pub struct ScriptOutcome {
    pub applied: Vec<Applied>,
    pub error: Option<WeirError>,
}

pub struct Pipeline {
    config: EngineConfig,
    registry: ConnectorRegistry,
    sources: Vec<SourceNode>,
    views: Vec<ViewNode>,
    sinks: Vec<SinkNode>,
    tables: Vec<TableNode>,
    /// Processing time (epoch ms), set by the caller: wall clock in the runtime, virtual in tests.
    now_ms: i64,
    catalog: Catalog,
    /// Where each view's row numbering continues (restored from the last run).
    seq_floor: std::collections::HashMap<String, u64>,
}

pub(crate) fn df_config() -> SessionConfig {
    let mut c = SessionConfig::new()
        .with_target_partitions(1)
        .with_coalesce_batches(false)
        .with_repartition_aggregations(false)
        .with_information_schema(false);
    c.options_mut().execution.time_zone = Some("+00:00".into());
    // Plans run once per micro-batch or closed window; dynamic filters (TopK thresholds)
    // would carry state from one run to the next.
    c.options_mut().optimizer.enable_dynamic_filter_pushdown = false;
    // Errors in view bodies point at the column or table the user wrote.
    c.options_mut().sql_parser.collect_spans = true;
    c
}

fn ts_millis(array: &ArrayRef) -> Result<TimestampMillisecondArray> {
    let a = if array.data_type() == &DataType::Timestamp(TimeUnit::Millisecond, None) {
        array.clone()
    } else {
        cast(array, &DataType::Timestamp(TimeUnit::Millisecond, None))?
    };
    a.as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .cloned()
        .ok_or_else(|| WeirError::Internal("timestamp cast".into()))
}

impl Pipeline {
    pub fn new(config: EngineConfig, registry: ConnectorRegistry) -> Self {
        Pipeline {
            config,
            registry,
            sources: vec![],
            views: vec![],
            sinks: vec![],
            tables: vec![],
            now_ms: 0,
            catalog: Catalog::default(),
            seq_floor: Default::default(),
        }
    }

    /// Continue views' row numbering after these seqs (a restart): applies to the views
    /// that exist and to views created later under these names.
    pub fn resume_seqs(&mut self, seqs: impl IntoIterator<Item = (String, u64)>) {
        for (name, seq) in seqs {
            if let Some(v) = self.views.iter().find(|v| v.name == name) {
                v.buffer.resume_seq(seq);
            }
            self.seq_floor.insert(name, seq);
        }
    }

    /// A handle on the live list of objects, updated on every CREATE and DROP.
    pub fn catalog(&self) -> Catalog {
        self.catalog.clone()
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Set processing time (epoch ms); used for idle partitions.
    pub fn set_processing_time(&mut self, now_ms: i64) {
        self.now_ms = now_ms;
    }

    pub fn processing_time(&self) -> i64 {
        self.now_ms
    }

    /// The runtime starts: processing time is `now_ms`, and every partition counts as
    /// active from now (idle timeouts run from the start, not from when the source was
    /// declared).
    pub fn start_clock(&mut self, now_ms: i64) {
        self.now_ms = now_ms;
        for s in &mut self.sources {
            for p in &mut s.partitions {
                p.last_active = p.last_active.max(now_ms);
            }
        }
    }

    /// Parse and apply a script. Statements apply in order; the first error stops it and
    /// names the statement, line and column.
    pub async fn execute(&mut self, sql: &str) -> Result<Vec<StatementResult>> {
        let outcome = self.execute_script(sql).await;
        match outcome.error {
            Some(e) => Err(e),
            None => Ok(outcome.applied.into_iter().map(|a| a.result).collect()),
        }
    }

    /// Like [`Pipeline::execute`], but says which statements were applied before an error
    /// stopped the script, with their texts.
    pub async fn execute_script(&mut self, sql: &str) -> ScriptOutcome {
        let mut outcome = ScriptOutcome::default();
        let statements = match sql::parse_script(sql) {
            Ok(s) => s,
            Err(e) => {
                outcome.error = Some(e);
                return outcome;
            }
        };
        for st in statements {
            let (index, location) = (st.index, st.location);
            let statement = st.statement.label();
            let text = st.text.clone();
            match self.apply(st).await {
                Ok(result) => {
                    let changed = matches!(
                        result,
                        StatementResult::Created { .. } | StatementResult::Dropped { .. }
                    );
                    outcome.applied.push(Applied {
                        statement,
                        text,
                        result,
                    });
                    if changed {
                        self.publish_catalog();
                    }
                }
                Err(e) => {
                    outcome.error = Some(e.in_statement(index, location));
                    break;
                }
            }
        }
        outcome
    }

    fn publish_catalog(&self) {
        self.catalog.set(self.objects());
    }

    async fn apply(&mut self, st: Located) -> Result<StatementResult> {
        match st.statement {
            WeirStatement::CreateSource(c) => self.create_source(c, st.text),
            WeirStatement::CreateView(v) => self.create_view(v, st.text).await,
            WeirStatement::CreateSink(s) => self.create_sink(s, st.text),
            WeirStatement::CreateTable(t) => self.create_table(t, st.text).await,
            WeirStatement::RefreshTable(name) => self.refresh_table(&name).await,
            WeirStatement::Show(kind) => self.show(kind),
            WeirStatement::Describe(name) => self.describe(&name),
            WeirStatement::Drop {
                kind,
                name,
                if_exists,
            } => self.drop_object(kind, &name, if_exists),
            WeirStatement::Explain(v) => {
                let plan = plan_query(self.prepare_view(&v)?).await?;
                Ok(StatementResult::Rows(vec![text_batch(
                    "plan",
                    plan.explain().lines().map(str::to_string).collect(),
                )?]))
            }
            WeirStatement::Select(q) => Ok(StatementResult::Rows(self.query(*q).await?)),
        }
    }

    fn exists(&self, name: &str) -> Option<ObjectKind> {
        if self.sources.iter().any(|s| s.name == name) {
            Some(ObjectKind::Source)
        } else if self.views.iter().any(|v| v.name == name) {
            Some(ObjectKind::View)
        } else if self.sinks.iter().any(|s| s.name == name) {
            Some(ObjectKind::Sink)
        } else if self.tables.iter().any(|t| t.name == name) {
            Some(ObjectKind::Table)
        } else {
            None
        }
    }

    fn check_new_name(&self, name: &str) -> Result<()> {
        match self.exists(name) {
            Some(kind) => Err(WeirError::user(format!(
                "a {} named '{name}' already exists",
                kind.noun()
            ))),
            None => Ok(()),
        }
    }

    fn create_source(&mut self, c: CreateSource, text: String) -> Result<StatementResult> {
        if c.if_not_exists && self.exists(&c.name).is_some() {
            return Ok(StatementResult::Unchanged {
                kind: ObjectKind::Source,
                name: c.name,
            });
        }
        self.check_new_name(&c.name)?;
        let mut options = c.options.clone();
        let connector = options.take("connector").ok_or_else(|| {
            WeirError::user(format!(
                "CREATE SOURCE needs WITH (connector = '...'); available: {}",
                self.registry.source_names().join(", ")
            ))
        })?;
        let idle = options
            .take_duration("idle.timeout")?
            .unwrap_or(self.config.idle_timeout);
        let factory = self.registry.source(&connector)?;
        let valid_keys = factory.metadata_keys();
        let mut metadata = c.metadata.clone();
        for (i, m) in metadata.iter_mut().enumerate() {
            let Some((key, _)) = valid_keys
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(&m.key))
            else {
                let at = c.metadata_at.get(i).copied().unwrap_or_default();
                return Err(WeirError::user_at(
                    if valid_keys.is_empty() {
                        format!(
                            "column '{}': the {connector} connector has no message metadata, \
                         so METADATA FROM cannot be used",
                            m.column
                        )
                    } else {
                        format!(
                            "column '{}': unknown METADATA key '{}'; valid keys: {}",
                            m.column,
                            m.key,
                            valid_keys
                                .iter()
                                .map(|(k, t)| format!("{k} ({t})"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    },
                    at,
                ));
            };
            m.key = key.to_string();
        }
        let stats = Arc::new(Stats::with_status(Status::Starting));
        let source = factory.create(SourceSpec {
            name: c.name.clone(),
            schema: c.schema.clone(),
            event_time: c.watermark.as_ref().map(|w| w.column.clone()),
            metadata,
            options: options.also_takes("every source", &["connector", "idle.timeout"]),
            data_dir: self.config.data_dir.clone(),
            batch: self.config.batch,
            stats: stats.clone(),
        })?;
        let watermark_col = match &c.watermark {
            Some(w) => Some((
                Some(c.schema.index_of(&w.column)?),
                w.delay.as_millis() as i64,
            )),
            None if source.connector_event_time() => Some((None, 0)),
            None => None,
        };
        let partitions = source.partitions().max(1);
        self.sources.push(SourceNode {
            name: c.name.clone(),
            sql: text,
            connector: connector.to_ascii_lowercase(),
            schema: c.schema,
            watermark_col,
            idle_timeout_ms: idle.as_millis() as i64,
            partitions: vec![PartitionState::new(self.now_ms); partitions],
            watermark: i64::MIN,
            stats,
            source: Some(source),
        });
        Ok(StatementResult::Created {
            kind: ObjectKind::Source,
            name: c.name,
        })
    }

    /// A DataFusion context in which every source and view is a streaming table.
    fn planning_context(&self) -> (SessionContext, Arc<std::sync::Mutex<BTreeSet<String>>>) {
        let ctx = SessionContext::new_with_config(df_config());
        let used = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
        for t in &self.tables {
            let table = LookupTable {
                name: t.name.clone(),
                handle: t.handle.clone(),
                used: used.clone(),
            };
            let _ = ctx.register_table(t.name.as_str(), Arc::new(table));
        }
        // DISTINCT aggregates must stay single aggregates so they can be windowed.
        ctx.remove_optimizer_rule("single_distinct_aggregation_to_group_by");
        let tables = self
            .sources
            .iter()
            .map(|s| (s.name.clone(), s.schema.clone()))
            .chain(
                self.views
                    .iter()
                    .map(|v| (v.name.clone(), v.plan.output_schema.clone())),
            );
        for (name, schema) in tables {
            let t = StreamTable {
                name: name.clone(),
                schema,
                slot: Arc::new(BatchSlot::default()),
            };
            // Names are unique in the catalog, so registration cannot collide.
            let _ = ctx.register_table(name.as_str(), Arc::new(t));
        }
        (ctx, used)
    }

    /// Check a view's options and window and build its planning context; the planning
    /// itself ([`plan_query`]) owns everything so the future does not borrow the pipeline.
    fn prepare_view(&self, v: &CreateView) -> Result<PreparedView> {
        let mut options = v.options.clone();
        let retention = match options.take("retention.rows") {
            Some(r) => r.parse::<usize>().map_err(|_| {
                WeirError::user(format!(
                    "option 'retention.rows' must be a row count, got '{r}'"
                ))
            })?,
            None => self.config.retention_rows,
        };
        let late_policy = options.take_choice("late.policy", &["drop", "dead-letter"], "drop")?;
        options.finish("a materialized view", &["late.policy", "retention.rows"])?;
        let mut query = v.query.clone();
        let columns = |name: &str| {
            self.sources
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.schema.clone())
                .or_else(|| {
                    self.views
                        .iter()
                        .find(|v| v.name == name)
                        .map(|v| v.plan.output_schema.clone())
                })
                .map(|s| s.fields().iter().map(|f| f.name().clone()).collect())
        };
        let window = sql::rewrite_windows(&mut query, &columns)?;
        let emit_every = match (&v.emit, &window) {
            (Some(Emit::Every(d)), Some(_)) => Some(*d),
            (Some(Emit::Every(_)), None) => {
                return Err(WeirError::user(
                    "EMIT EVERY needs a windowed view (FROM TUMBLE(...), HOP(...) or SESSION(...))",
                ));
            }
            (Some(Emit::OnWindowClose), None) => {
                return Err(WeirError::user(
                    "EMIT ON WINDOW CLOSE needs a windowed view (FROM TUMBLE(...))",
                ));
            }
            _ => None,
        };
        if late_policy != "drop" && window.is_none() {
            return Err(WeirError::user(
                "option 'late.policy' is for windowed views (FROM TUMBLE(...), HOP(...) or \
                 SESSION(...)); rows are never late for a view without a window",
            ));
        }
        let dead_letter = (late_policy == "dead-letter")
            .then(|| crate::dead_letter::DeadLetterWriter::new(&self.config.data_dir, &v.name));
        let (mut ctx, tables_used) = self.planning_context();
        if window
            .as_ref()
            .is_some_and(|w| !matches!(w.kind, sql::WindowKind::Tumble { .. }))
        {
            ctx = without_filter_pushdown(ctx);
        }
        Ok(PreparedView {
            ctx,
            tables_used,
            query,
            window,
            retention,
            emit_every,
            dead_letter,
        })
    }

    async fn create_view(&mut self, v: CreateView, text: String) -> Result<StatementResult> {
        if v.if_not_exists && self.exists(&v.name).is_some() {
            return Ok(StatementResult::Unchanged {
                kind: ObjectKind::View,
                name: v.name,
            });
        }
        self.check_new_name(&v.name)?;
        let prepared = self.prepare_view(&v)?;
        let retention = prepared.retention;
        let tables_used = prepared.tables_used.clone();
        let mut plan = plan_query(prepared).await?;
        self.prepare_join(&mut plan)?;
        let tables: Vec<String> = tables_used
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default();
        if let Some(src) = self.sources.iter().find(|s| s.name == plan.inputs[0])
            && src.watermark_col.is_none()
            && matches!(plan.kind, ViewPlanKind::Windowed { .. })
        {
            tracing::warn!(
                view = %v.name,
                source = %src.name,
                "source has no WATERMARK clause: windows close only when the source ends"
            );
        }
        let input_watermark = self.inputs_watermark(&plan.inputs);
        let buffer = Arc::new(ViewBuffer::new(plan.output_schema.clone(), retention));
        if let Some(seq) = self.seq_floor.get(&v.name) {
            buffer.resume_seq(*seq);
        }
        if let ViewPlanKind::Windowed { aggregate, .. } = &mut plan.kind {
            // EMIT EVERY intervals count from now.
            aggregate.start_clock(self.now_ms);
        }
        self.views.push(ViewNode {
            name: v.name.clone(),
            sql: text,
            plan,
            input_watermark: i64::MIN,
            watermark: i64::MIN,
            stats: Arc::new(Stats::default()),
            buffer,
            row_counters: BTreeMap::new(),
            tables,
        });
        let _ = input_watermark;
        Ok(StatementResult::Created {
            kind: ObjectKind::View,
            name: v.name,
        })
    }

    async fn create_table(&mut self, t: CreateTable, text: String) -> Result<StatementResult> {
        if t.if_not_exists && self.exists(&t.name).is_some() {
            return Ok(StatementResult::Unchanged {
                kind: ObjectKind::Table,
                name: t.name,
            });
        }
        self.check_new_name(&t.name)?;
        let mut options = t.options.clone();
        let connector = options.take("connector").ok_or_else(|| {
            WeirError::user(format!(
                "CREATE TABLE needs WITH (connector = '...'); available: {}",
                self.registry.table_names().join(", ")
            ))
        })?;
        let refresh = match options.take_duration("refresh.interval")? {
            None => None,
            Some(d) => {
                if d.is_zero() {
                    return Err(WeirError::user(
                        "option 'refresh.interval' must be longer than zero (leave it out to load the table once)",
                    ));
                }
                Some(d)
            }
        };
        let loader = self.registry.table(&connector)?.create(TableSpec {
            name: t.name.clone(),
            schema: t.schema.clone(),
            options,
            data_dir: self.config.data_dir.clone(),
        })?;
        let handle = Arc::new(TableHandle::new(t.schema.clone()));
        let stats = Arc::new(Stats::default());
        // Loaded now, so views created next see the table and a bad table is an error of
        // this statement.
        reload_table(&t.name, loader.as_ref(), &handle, &stats)
            .await
            .map_err(|e| match e {
                WeirError::User { .. } => e,
                other => WeirError::user(format!("loading table '{}': {other}", t.name)),
            })?;
        self.tables.push(TableNode {
            name: t.name.clone(),
            sql: text,
            connector: connector.to_ascii_lowercase(),
            loader,
            handle,
            refresh,
            stats,
            started: false,
        });
        Ok(StatementResult::Created {
            kind: ObjectKind::Table,
            name: t.name,
        })
    }

    async fn refresh_table(&mut self, name: &str) -> Result<StatementResult> {
        let t = self
            .tables
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| WeirError::user(format!("there is no table '{name}'")))?;
        let rows = reload_table(&t.name, t.loader.as_ref(), &t.handle, &t.stats).await?;
        Ok(StatementResult::Rows(vec![text_batch(
            "refreshed",
            vec![format!("table {name}: {rows} rows")],
        )?]))
    }

    /// Tables with a `refresh.interval` whose refresh the runtime has not started yet.
    pub fn take_new_table_refreshes(&mut self) -> Vec<TableRefresh> {
        self.tables
            .iter_mut()
            .filter(|t| !t.started)
            .filter_map(|t| {
                t.started = true;
                Some(TableRefresh {
                    name: t.name.clone(),
                    loader: t.loader.clone(),
                    handle: t.handle.clone(),
                    interval: t.refresh?,
                    stats: t.stats.clone(),
                })
            })
            .collect()
    }

    /// Whether a table of this name exists.
    pub fn has_table(&self, name: &str) -> bool {
        self.tables.iter().any(|t| t.name == name)
    }

    /// Whether view `name` emits early results (`EMIT EVERY`): rows that update earlier
    /// rows of the same window.
    fn emits_updates(&self, name: &str) -> bool {
        let Some(v) = self.views.iter().find(|v| v.name == name) else {
            return false;
        };
        sql::parse_script(&v.sql).is_ok_and(|st| {
            st.iter().any(|l| {
                matches!(&l.statement, WeirStatement::CreateView(c) if matches!(c.emit, Some(Emit::Every(..))))
            })
        })
    }

    /// Check a join view's inputs (append-only), and turn on eviction when a join key is
    /// the window bound (`window_start` or `window_end`) of two windowed views.
    fn prepare_join(&self, plan: &mut ViewPlan) -> Result<()> {
        let inputs = plan.inputs.clone();
        let ViewPlanKind::Join { join, .. } = &mut plan.kind else {
            return Ok(());
        };
        if let Some(input) = inputs.iter().find(|i| self.emits_updates(i)) {
            return Err(WeirError::user(format!(
                "view '{input}' emits early results (EMIT EVERY), which update earlier rows; \
                 a join takes append-only inputs: join a view that emits on window close"
            )));
        }
        let time_key = |side: usize, column: &Option<String>| -> Option<TimeKey> {
            let v = self.views.iter().find(|v| v.name == inputs[side])?;
            if !matches!(v.plan.kind, ViewPlanKind::Windowed { .. }) {
                return None;
            }
            match column.as_deref()? {
                "window_start" => Some(TimeKey::WindowStart),
                "window_end" => Some(TimeKey::WindowEnd),
                _ => None,
            }
        };
        let origins = join.key_origins.clone();
        if let Some((k, kinds)) = origins
            .iter()
            .enumerate()
            .find_map(|(k, [l, r])| Some((k, [time_key(0, l)?, time_key(1, r)?])))
        {
            join.set_time_key(k, kinds);
        }
        Ok(())
    }

    /// The watermark of a view's inputs: the least of theirs.
    fn inputs_watermark(&self, inputs: &[String]) -> i64 {
        inputs
            .iter()
            .map(|i| self.watermark_of(i))
            .min()
            .unwrap_or(i64::MIN)
    }

    fn create_sink(&mut self, s: CreateSink, text: String) -> Result<StatementResult> {
        if s.if_not_exists && self.exists(&s.name).is_some() {
            return Ok(StatementResult::Unchanged {
                kind: ObjectKind::Sink,
                name: s.name,
            });
        }
        self.check_new_name(&s.name)?;
        let view = self
            .views
            .iter()
            .find(|v| v.name == s.from)
            .ok_or_else(|| {
                WeirError::user(format!(
                    "CREATE SINK reads FROM a materialized view; there is no view '{}'",
                    s.from
                ))
            })?;
        let mut options: Options = s.options.clone();
        let connector = options.take("connector").ok_or_else(|| {
            WeirError::user(format!(
                "CREATE SINK needs WITH (connector = '...'); available: {}",
                self.registry.sink_names().join(", ")
            ))
        })?;
        let stats = Arc::new(Stats::default());
        let sink = self.registry.sink(&connector)?.create(SinkSpec {
            name: s.name.clone(),
            view: view.name.clone(),
            schema: view.plan.output_schema.clone(),
            key_columns: view.plan.key_columns(),
            options,
            data_dir: self.config.data_dir.clone(),
            stats: stats.clone(),
            checkpointed: self.config.checkpoints,
        })?;
        self.sinks.push(SinkNode {
            name: s.name.clone(),
            sql: text,
            view: s.from,
            connector: connector.to_ascii_lowercase(),
            stats,
            sink: Some(sink),
            restored: None,
        });
        Ok(StatementResult::Created {
            kind: ObjectKind::Sink,
            name: s.name,
        })
    }

    fn drop_object(
        &mut self,
        kind: ObjectKind,
        name: &str,
        if_exists: bool,
    ) -> Result<StatementResult> {
        if self.exists(name) != Some(kind) {
            if if_exists {
                return Ok(StatementResult::Unchanged {
                    kind,
                    name: name.to_string(),
                });
            }
            return Err(WeirError::user(format!(
                "there is no {} '{name}'",
                kind.noun()
            )));
        }
        let dependents = self.dependents(name);
        if !dependents.is_empty() {
            return Err(WeirError::Conflict {
                object: (kind, name.to_string()),
                dependents,
                statement: None,
                location: None,
            });
        }
        match kind {
            ObjectKind::Source => self.sources.retain(|s| s.name != name),
            ObjectKind::View => {
                if let Some(v) = self.views.iter().find(|v| v.name == name) {
                    v.buffer.close();
                    // A view created again under this name goes on numbering.
                    self.seq_floor.insert(name.to_string(), v.buffer.last_seq());
                }
                self.views.retain(|v| v.name != name)
            }
            ObjectKind::Sink => self.sinks.retain(|s| s.name != name),
            ObjectKind::Table => self.tables.retain(|t| t.name != name),
        }
        Ok(StatementResult::Dropped {
            kind,
            name: name.to_string(),
        })
    }

    fn show(&self, kind: ObjectKind) -> Result<StatementResult> {
        let (names, details): (Vec<String>, Vec<String>) = match kind {
            ObjectKind::Source => self
                .sources
                .iter()
                .map(|s| (s.name.clone(), s.connector.clone()))
                .unzip(),
            ObjectKind::View => self
                .views
                .iter()
                .map(|v| (v.name.clone(), v.plan.inputs.join(", ")))
                .unzip(),
            ObjectKind::Sink => self
                .sinks
                .iter()
                .map(|s| (s.name.clone(), format!("{} <- {}", s.connector, s.view)))
                .unzip(),
            ObjectKind::Table => self
                .tables
                .iter()
                .map(|t| (t.name.clone(), t.loader.describe()))
                .unzip(),
        };
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new(
                match kind {
                    ObjectKind::View => "input",
                    _ => "connector",
                },
                DataType::Utf8,
                false,
            ),
        ]));
        Ok(StatementResult::Rows(vec![RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(names)),
                Arc::new(StringArray::from(details)),
            ],
        )?]))
    }

    fn describe(&self, name: &str) -> Result<StatementResult> {
        let (schema, sql, stats, plan) =
            if let Some(s) = self.sources.iter().find(|s| s.name == name) {
                (s.schema.clone(), s.sql.clone(), s.stats.clone(), None)
            } else if let Some(v) = self.views.iter().find(|v| v.name == name) {
                (
                    v.plan.output_schema.clone(),
                    v.sql.clone(),
                    v.stats.clone(),
                    Some(v.plan.explain()),
                )
            } else if let Some(t) = self.tables.iter().find(|t| t.name == name) {
                (
                    t.handle.schema.clone(),
                    t.sql.clone(),
                    t.stats.clone(),
                    Some(table_description(t)),
                )
            } else {
                return Err(WeirError::user(format!(
                    "there is no source, materialized view or table '{name}'"
                )));
            };
        let mut lines: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| {
                format!(
                    "column {} {}{}",
                    f.name(),
                    f.data_type(),
                    if f.is_nullable() { "" } else { " NOT NULL" }
                )
            })
            .collect();
        lines.push(format!("sql {sql}"));
        let s = stats.snapshot();
        lines.push(format!(
            "status rows_in={} rows_out={} late_rows={} bad_rows={} watermark={}",
            s.rows_in,
            s.rows_out,
            s.late_rows,
            s.bad_rows,
            crate::stats::fmt_watermark(s.watermark)
        ));
        if let Some(p) = plan {
            lines.extend(p.lines().map(|l| format!("plan {l}")));
        }
        Ok(StatementResult::Rows(vec![text_batch("describe", lines)?]))
    }

    /// Run an ad-hoc query over the views' retained rows.
    pub fn query(
        &self,
        q: Query,
    ) -> impl std::future::Future<Output = Result<Vec<RecordBatch>>> + Send + 'static {
        query_views(
            self.views
                .iter()
                .map(|v| (v.name.as_str(), v.buffer.as_ref())),
            q,
        )
    }

    /// Sources that have not been started yet; the runtime takes them to poll.
    pub fn take_new_sources(&mut self) -> Vec<(String, Box<dyn Source>)> {
        self.sources
            .iter_mut()
            .filter_map(|s| s.source.take().map(|src| (s.name.clone(), src)))
            .collect()
    }

    /// Sinks that have not been started yet, with the view each one reads.
    pub fn take_new_sinks(&mut self) -> Vec<NewSink> {
        self.sinks
            .iter_mut()
            .filter_map(|s| {
                s.sink.take().map(|sink| NewSink {
                    name: s.name.clone(),
                    view: s.view.clone(),
                    stats: s.stats.clone(),
                    sink,
                    restored: s.restored.take(),
                })
            })
            .collect()
    }

    /// Everything a checkpoint holds, taken between two micro-batches: sources'
    /// positions and watermarks, views' open windows, watermarks and numbering. Sinks add
    /// their part (the runtime asks them).
    pub fn snapshot(&mut self) -> Result<Snapshot> {
        let mut snap = Snapshot::default();
        for s in &self.sources {
            snap.sources.insert(
                s.name.clone(),
                SourceState {
                    sql: s.sql.clone(),
                    partitions: s
                        .partitions
                        .iter()
                        .map(|p| PartitionCheckpoint {
                            position: p.position,
                            max_event: p.max_event,
                            ended: p.ended,
                            last_active: p.last_active,
                        })
                        .collect(),
                    watermark: s.watermark,
                    figures: figures(&s.stats),
                },
            );
        }
        for v in &mut self.views {
            let (closed_through, open_groups, state) = match &mut v.plan.kind {
                ViewPlanKind::Stateless { .. } => (None, 0, vec![]),
                ViewPlanKind::Join { join, .. } => {
                    snap.joins.insert(v.name.clone(), join.snapshot()?);
                    (None, join.stored_rows() as u64, vec![])
                }
                ViewPlanKind::Windowed { aggregate, .. } => (
                    Some(aggregate.closed_through()),
                    aggregate.open_groups() as u64,
                    aggregate.snapshot()?,
                ),
            };
            let emit_period = match &v.plan.kind {
                ViewPlanKind::Windowed { aggregate, .. } => aggregate.emit_period(),
                _ => None,
            };
            let retained = v.buffer.retained();
            snap.views.insert(
                v.name.clone(),
                ViewState {
                    sql: v.sql.clone(),
                    input_watermark: v.input_watermark,
                    watermark: v.watermark,
                    last_seq: retained.last_seq,
                    row_counters: v.row_counters.clone(),
                    closed_through,
                    state_file: None,
                    open_groups,
                    rows_file: None,
                    rows_first_seq: retained.batches.first().map_or(0, |(seq, _)| *seq),
                    figures: figures(&v.stats),
                    join_files: vec![],
                    emit_period,
                },
            );
            if !state.is_empty() {
                snap.state.insert(v.name.clone(), state);
            }
            if !retained.batches.is_empty() {
                snap.rows.insert(
                    v.name.clone(),
                    retained.batches.into_iter().map(|(_, b)| b).collect(),
                );
            }
        }
        Ok(snap)
    }

    /// The SQL and view of a sink, for its entry in a checkpoint.
    pub fn sink_definition(&self, name: &str) -> Option<(String, String)> {
        self.sinks
            .iter()
            .find(|s| s.name == name)
            .map(|s| (s.sql.clone(), s.view.clone()))
    }

    /// Continue from a checkpoint: call after the statements that define the pipeline have
    /// been applied, before the runtime starts. Each object whose definition (its SQL
    /// text) is the same as at the checkpoint gets its state back; a source seeks to its
    /// positions. Objects that changed, and views over them, start afresh (listed in the
    /// report). Sinks get their part of the checkpoint through [`Sink::recover`].
    pub fn restore(&mut self, restored: &Restored) -> Result<RestoreReport> {
        let m = &restored.manifest;
        let mut report = RestoreReport {
            epoch: m.epoch,
            ..Default::default()
        };
        let now = self.now_ms;
        for s in &mut self.sources {
            let Some(cs) = m.sources.get(&s.name) else {
                continue;
            };
            if cs.sql != s.sql {
                report.skipped.push(format!(
                    "source {}: its definition changed since the checkpoint",
                    s.name
                ));
                continue;
            }
            let positions: Vec<(usize, i64)> = cs
                .partitions
                .iter()
                .enumerate()
                .filter_map(|(i, p)| p.position.map(|pos| (i, pos)))
                .collect();
            let Some(source) = s.source.as_mut() else {
                return Err(WeirError::Internal(format!(
                    "source '{}' started before the restore",
                    s.name
                )));
            };
            if !positions.is_empty() {
                source.seek(&positions).map_err(|e| {
                    WeirError::user(format!(
                        "source '{}' cannot resume from checkpoint {}: {e}",
                        s.name, m.epoch
                    ))
                })?;
            }
            while s.partitions.len() < cs.partitions.len() {
                s.partitions.push(PartitionState::new(now));
            }
            for (p, c) in s.partitions.iter_mut().zip(&cs.partitions) {
                p.position = c.position;
                p.max_event = c.max_event;
                p.ended = c.ended;
                // Idle timeouts run on from the checkpoint (the runtime's start_clock
                // moves them to the restart time).
                p.last_active = c.last_active;
            }
            s.watermark = cs.watermark;
            set_figures(&s.stats, &cs.figures);
            s.stats
                .watermark
                .store(cs.watermark, std::sync::atomic::Ordering::Relaxed);
            report.sources.push(s.name.clone());
        }
        for vi in 0..self.views.len() {
            let name = self.views[vi].name.clone();
            let Some(cv) = m.views.get(&name) else {
                continue;
            };
            let inputs = self.views[vi].plan.inputs.clone();
            if cv.sql != self.views[vi].sql {
                report.skipped.push(format!(
                    "view {name}: its definition changed since the checkpoint"
                ));
                continue;
            }
            if let Some(input) = inputs
                .iter()
                .find(|i| !report.sources.contains(i) && !report.views.contains(i))
            {
                report
                    .skipped
                    .push(format!("view {name}: its input {input} was not restored"));
                continue;
            }
            let state = restored.view_state(&name)?;
            let v = &mut self.views[vi];
            if let ViewPlanKind::Windowed { aggregate, .. } = &mut v.plan.kind {
                aggregate.restore(
                    &state,
                    cv.closed_through.unwrap_or(i64::MIN),
                    cv.emit_period,
                )?;
                report.open_groups += aggregate.open_groups() as u64;
                state_figures(&v.stats, aggregate.as_ref());
            }
            if let ViewPlanKind::Join { join, .. } = &mut v.plan.kind {
                join.restore(restored.join_state(&name)?)?;
                report.open_groups += join.stored_rows() as u64;
                join_figures(&v.stats, join);
            }
            v.input_watermark = cv.input_watermark;
            v.watermark = cv.watermark;
            v.stats
                .watermark
                .store(cv.watermark, std::sync::atomic::Ordering::Relaxed);
            v.row_counters = cv.row_counters.clone();
            set_figures(&v.stats, &cv.figures);
            let rows = restored.view_rows(&name)?;
            v.buffer.restore(cv.rows_first_seq, rows, cv.last_seq);
            self.seq_floor.insert(name.clone(), cv.last_seq);
            report.views.push(name);
        }
        for s in &mut self.sinks {
            let Some(cs) = m.sinks.get(&s.name) else {
                continue;
            };
            if cs.sql != s.sql {
                report.skipped.push(format!(
                    "sink {}: its definition changed since the checkpoint",
                    s.name
                ));
                continue;
            }
            s.restored = Some((m.epoch, cs.precommit.clone()));
            report.sinks.push(s.name.clone());
        }
        Ok(report)
    }

    /// Names of sources that never end (for `--until-done`, which needs them all bounded).
    pub fn unbounded_sources(&self) -> Vec<String> {
        self.sources
            .iter()
            .filter(|s| s.source.as_ref().is_some_and(|src| !src.bounded()))
            .map(|s| s.name.clone())
            .collect()
    }

    pub fn objects(&self) -> Vec<ObjectInfo> {
        let view_schema = |name: &str| {
            self.views
                .iter()
                .find(|v| v.name == name)
                .map(|v| v.plan.output_schema.clone())
                .unwrap_or_else(|| Arc::new(Schema::empty()))
        };
        let mut out: Vec<ObjectInfo> = self
            .sources
            .iter()
            .map(|s| ObjectInfo {
                kind: ObjectKind::Source,
                name: s.name.clone(),
                detail: s.connector.clone(),
                stats: s.stats.clone(),
                sql: s.sql.clone(),
                schema: s.schema.clone(),
                input: None,
                inputs: vec![],
                buffer: None,
                key: vec![],
            })
            .collect();
        out.extend(self.views.iter().map(|v| ObjectInfo {
            kind: ObjectKind::View,
            name: v.name.clone(),
            detail: v.plan.inputs.join(", "),
            stats: v.stats.clone(),
            sql: v.sql.clone(),
            schema: v.plan.output_schema.clone(),
            input: v.plan.inputs.first().cloned(),
            inputs: v.plan.inputs.clone(),
            buffer: Some(v.buffer.clone()),
            key: v.plan.key_columns(),
        }));
        out.extend(self.tables.iter().map(|t| ObjectInfo {
            kind: ObjectKind::Table,
            name: t.name.clone(),
            detail: t.connector.clone(),
            stats: t.stats.clone(),
            sql: t.sql.clone(),
            schema: t.handle.schema.clone(),
            input: None,
            inputs: vec![],
            buffer: None,
            key: vec![],
        }));
        out.extend(self.sinks.iter().map(|s| ObjectInfo {
            kind: ObjectKind::Sink,
            name: s.name.clone(),
            detail: s.connector.clone(),
            stats: s.stats.clone(),
            sql: s.sql.clone(),
            schema: view_schema(&s.view),
            input: Some(s.view.clone()),
            inputs: vec![s.view.clone()],
            buffer: None,
            key: vec![],
        }));
        out
    }

    /// The names of the sources, views and sinks that read `name`.
    pub fn dependents(&self, name: &str) -> Vec<(ObjectKind, String)> {
        let mut out: Vec<(ObjectKind, String)> = self
            .views
            .iter()
            .filter(|v| {
                v.plan.inputs.iter().any(|i| i == name) || v.tables.iter().any(|t| t == name)
            })
            .map(|v| (ObjectKind::View, v.name.clone()))
            .collect();
        out.extend(
            self.sinks
                .iter()
                .filter(|s| s.view == name)
                .map(|s| (ObjectKind::Sink, s.name.clone())),
        );
        out
    }

    /// A source's live figures.
    pub fn source_stats(&self, name: &str) -> Option<&Arc<Stats>> {
        self.sources
            .iter()
            .find(|s| s.name == name)
            .map(|s| &s.stats)
    }

    /// Whether a source of this name exists (a dropped source's last batches are ignored).
    pub fn has_source(&self, name: &str) -> bool {
        self.sources.iter().any(|s| s.name == name)
    }

    /// Whether a sink of this name exists.
    pub fn has_sink(&self, name: &str) -> bool {
        self.sinks.iter().any(|s| s.name == name)
    }

    /// The retained rows of a view.
    pub fn view_buffer(&self, name: &str) -> Option<Arc<ViewBuffer>> {
        self.views
            .iter()
            .find(|v| v.name == name)
            .map(|v| v.buffer.clone())
    }

    pub fn source_schema(&self, name: &str) -> Option<SchemaRef> {
        self.sources
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.schema.clone())
    }

    /// True when every source has ended.
    pub fn all_sources_ended(&self) -> bool {
        self.sources.iter().all(|s| s.watermark == i64::MAX)
    }

    fn watermark_of(&self, name: &str) -> i64 {
        if let Some(s) = self.sources.iter().find(|s| s.name == name) {
            s.watermark
        } else if let Some(v) = self.views.iter().find(|v| v.name == name) {
            v.watermark
        } else {
            i64::MIN
        }
    }

    fn source_index(&self, name: &str) -> Result<usize> {
        self.sources
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| WeirError::user(format!("there is no source '{name}'")))
    }

    /// Feed one micro-batch from a source partition; returns what the views emitted.
    pub async fn push(
        &mut self,
        source: &str,
        partition: usize,
        batch: RecordBatch,
        bad_records: u64,
    ) -> Result<Vec<Output>> {
        self.push_at(source, partition, batch, bad_records, None)
            .await
    }

    /// [`Pipeline::push`], recording where the partition resumes after this batch.
    pub async fn push_at(
        &mut self,
        source: &str,
        partition: usize,
        batch: RecordBatch,
        bad_records: u64,
        position: Option<i64>,
    ) -> Result<Vec<Output>> {
        let si = self.source_index(source)?;
        let now = self.now_ms;
        {
            let s = &mut self.sources[si];
            if partition >= s.partitions.len() {
                return Err(WeirError::Internal(format!(
                    "source '{source}' sent partition {partition} of {}",
                    s.partitions.len()
                )));
            }
            Stats::add(&s.stats.rows_in, batch.num_rows() as u64);
            Stats::add(&s.stats.batches, 1);
            Stats::add(&s.stats.bad_rows, bad_records);
            let p = &mut s.partitions[partition];
            p.last_active = now;
            if position.is_some() {
                p.position = position;
            }
            if let Some((Some(col), _)) = s.watermark_col
                && batch.num_rows() > 0
            {
                let ts = ts_millis(batch.column(col))?;
                if let Some(m) = max(&ts) {
                    p.max_event = Some(p.max_event.map_or(m, |x| x.max(m)));
                }
            }
        }
        let mut out = Vec::new();
        if batch.num_rows() > 0 {
            let origin = (partition as u32).min(RowIds::CLOSES - 1);
            self.deliver(source, batch, origin, &mut out).await?;
        }
        self.advance_watermarks(&mut out).await?;
        Ok(out)
    }

    /// The source now knows it has `count` partitions; new ones hold the watermark back
    /// until they deliver data or go idle.
    pub fn set_partitions(&mut self, source: &str, count: usize) -> Result<()> {
        let si = self.source_index(source)?;
        let now = self.now_ms;
        let s = &mut self.sources[si];
        // The source is alive and knows its partitions: ones without data yet count as
        // active from now.
        for p in s.partitions.iter_mut().filter(|p| p.max_event.is_none()) {
            p.last_active = p.last_active.max(now);
        }
        while s.partitions.len() < count {
            s.partitions.push(PartitionState::new(now));
        }
        Ok(())
    }

    /// A partition is alive though quiet (see [`SourceEvent::Active`]).
    pub fn keep_active(&mut self, source: &str, partition: usize) -> Result<()> {
        let si = self.source_index(source)?;
        let now = self.now_ms;
        if let Some(p) = self.sources[si].partitions.get_mut(partition) {
            p.last_active = p.last_active.max(now);
        }
        Ok(())
    }

    /// The connector's event time for a partition (sources without WATERMARK whose
    /// connector reports event time); the watermark may move.
    pub async fn progress(
        &mut self,
        source: &str,
        partition: usize,
        event_time_ms: i64,
    ) -> Result<Vec<Output>> {
        let si = self.source_index(source)?;
        let now = self.now_ms;
        let s = &mut self.sources[si];
        if let Some((None, _)) = s.watermark_col {
            if partition >= s.partitions.len() {
                self.set_partitions(source, partition + 1)?;
            }
            let p = &mut self.sources[si].partitions[partition];
            p.last_active = now;
            p.max_event = Some(p.max_event.map_or(event_time_ms, |x| x.max(event_time_ms)));
        }
        let mut out = Vec::new();
        self.advance_watermarks(&mut out).await?;
        Ok(out)
    }

    /// A bounded source has ended: its watermark goes to the end of time and every window
    /// over it closes.
    pub async fn end_source(&mut self, source: &str) -> Result<Vec<Output>> {
        let si = self.source_index(source)?;
        for p in self.sources[si].partitions.iter_mut() {
            p.ended = true;
        }
        let mut out = Vec::new();
        self.advance_watermarks(&mut out).await?;
        Ok(out)
    }

    /// One partition of a source has no more data.
    pub async fn end_partition(&mut self, source: &str, partition: usize) -> Result<Vec<Output>> {
        let si = self.source_index(source)?;
        if let Some(p) = self.sources[si].partitions.get_mut(partition) {
            p.ended = true;
        }
        let mut out = Vec::new();
        self.advance_watermarks(&mut out).await?;
        Ok(out)
    }

    /// Processing time moved on: partitions may have gone idle.
    pub async fn tick(&mut self, now_ms: i64) -> Result<Vec<Output>> {
        self.now_ms = self.now_ms.max(now_ms);
        let mut out = Vec::new();
        self.advance_watermarks(&mut out).await?;
        Ok(out)
    }

    /// Hand a batch from `input` (a source or view) to every view reading it, and onward.
    /// `origin` is where its rows came from, for row ids: a source partition, or
    /// [`RowIds::CLOSES`].
    async fn deliver(
        &mut self,
        input: &str,
        batch: RecordBatch,
        origin: u32,
        out: &mut Vec<Output>,
    ) -> Result<()> {
        let mut queue: VecDeque<(String, RecordBatch)> = VecDeque::new();
        queue.push_back((input.to_string(), batch));
        while let Some((from, batch)) = queue.pop_front() {
            for vi in 0..self.views.len() {
                // A self-join reads `from` on both sides: left first, then right.
                let sides: Vec<usize> = (self.views[vi].plan.inputs.iter().enumerate())
                    .filter(|(_, i)| **i == from)
                    .map(|(side, _)| side)
                    .collect();
                for side in sides {
                    let emitted = self.view_batch(vi, side, batch.clone()).await?;
                    for b in emitted {
                        queue.push_back((self.views[vi].name.clone(), b.clone()));
                        let ids = self.views[vi].row_ids(origin, b.num_rows());
                        out.push(Output {
                            view: self.views[vi].name.clone(),
                            batch: b,
                            ids,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Run one input batch through a view (`side`: which of its inputs it came from);
    /// returns what it emits now.
    async fn view_batch(
        &mut self,
        vi: usize,
        side: usize,
        batch: RecordBatch,
    ) -> Result<Vec<RecordBatch>> {
        let v = &mut self.views[vi];
        Stats::add(&v.stats.rows_in, batch.num_rows() as u64);
        let emitted = match &mut v.plan.kind {
            ViewPlanKind::Stateless { plan } => plan.run(batch).await?,
            ViewPlanKind::Windowed { pre, aggregate, .. } => {
                fold_window_batch(&v.name, &v.stats, pre, aggregate.as_mut(), batch).await?;
                state_figures(&v.stats, aggregate.as_ref());
                vec![]
            }
            ViewPlanKind::Join { sides, join, post } => {
                let mut out = Vec::new();
                for b in sides[side].run(batch).await? {
                    if let Some(pairs) = join.push(side, &b)? {
                        out.extend(post.run(pairs).await?);
                    }
                }
                join_figures(&v.stats, join);
                out
            }
        };
        let at = now_us();
        for b in &emitted {
            Stats::add(&v.stats.rows_out, b.num_rows() as u64);
            v.buffer.push(b.clone(), opt_watermark(v.watermark), at);
        }
        Ok(emitted)
    }

    fn source_watermark(s: &SourceNode, now: i64) -> i64 {
        if s.partitions.iter().all(|p| p.ended) {
            return i64::MAX;
        }
        let Some((_, delay)) = s.watermark_col else {
            return s.watermark;
        };
        let idle = |p: &PartitionState| now - p.last_active >= s.idle_timeout_ms;
        let active: Vec<&PartitionState> = s
            .partitions
            .iter()
            .filter(|p| !p.ended && !idle(p))
            .collect();
        let candidate = if active.is_empty() {
            // Every live partition is idle: event time follows processing time from the
            // newest event seen, so the last windows still close.
            let newest = s.partitions.iter().filter_map(|p| p.max_event).max();
            let last = s
                .partitions
                .iter()
                .map(|p| p.last_active)
                .max()
                .unwrap_or(now);
            match newest {
                Some(m) => m
                    .saturating_sub(delay)
                    .saturating_add(now - last - s.idle_timeout_ms),
                None => i64::MIN,
            }
        } else {
            active
                .iter()
                .map(|p| p.max_event.map_or(i64::MIN, |m| m.saturating_sub(delay)))
                .min()
                .unwrap_or(i64::MIN)
        };
        s.watermark.max(candidate)
    }

    async fn advance_watermarks(&mut self, out: &mut Vec<Output>) -> Result<()> {
        let now = self.now_ms;
        for s in self.sources.iter_mut() {
            let w = Self::source_watermark(s, now);
            if w != s.watermark {
                s.watermark = w;
                s.stats
                    .watermark
                    .store(w, std::sync::atomic::Ordering::Relaxed);
            }
        }
        for vi in 0..self.views.len() {
            let input_wms: Vec<i64> = (self.views[vi].plan.inputs.iter())
                .map(|i| self.watermark_of(i))
                .collect();
            let input_wm = input_wms.iter().copied().min().unwrap_or(i64::MIN);
            let v = &mut self.views[vi];
            if let ViewPlanKind::Join { join, .. } = &mut v.plan.kind
                && let [l, r] = input_wms[..]
            {
                // Either side's watermark may let the other side's rows go.
                join.advance([l, r])?;
                join_figures(&v.stats, join);
            }
            // Windows close when the watermark moves; EMIT EVERY views also emit their
            // changed open windows when a new interval of processing time has begun.
            let closing = input_wm > self.views[vi].input_watermark;
            let early = match &mut self.views[vi].plan.kind {
                ViewPlanKind::Windowed { aggregate, .. } => aggregate.emit_due(now),
                _ => false,
            };
            if !closing && !early {
                continue;
            }
            if closing {
                self.views[vi].input_watermark = input_wm;
            }
            let name = self.views[vi].name.clone();
            let mut emitted = Vec::new();
            let closed_at = now_us();
            let new_wm = {
                let v = &mut self.views[vi];
                let schema = v.plan.output_schema.clone();
                match &mut v.plan.kind {
                    ViewPlanKind::Stateless { .. } | ViewPlanKind::Join { .. } => input_wm,
                    ViewPlanKind::Windowed {
                        aggregate, post, ..
                    } => {
                        if closing {
                            for closed in aggregate.close(input_wm)? {
                                for b in post.run(closed).await? {
                                    emitted.push(mark_final(&schema, b, true)?);
                                }
                            }
                        }
                        if early {
                            for open in aggregate.early()? {
                                for b in post.run(open).await? {
                                    emitted.push(mark_final(&schema, b, false)?);
                                }
                            }
                        }
                        state_figures(&v.stats, aggregate.as_ref());
                        aggregate.output_watermark(v.input_watermark)
                    }
                }
            };
            self.views[vi].watermark = self.views[vi].watermark.max(new_wm);
            for b in &emitted {
                let v = &self.views[vi];
                Stats::add(&v.stats.rows_out, b.num_rows() as u64);
                v.buffer
                    .push(b.clone(), opt_watermark(v.watermark), closed_at);
            }
            self.views[vi].stats.watermark.store(
                self.views[vi].watermark,
                std::sync::atomic::Ordering::Relaxed,
            );
            for b in emitted {
                let ids = self.views[vi].row_ids(RowIds::CLOSES, b.num_rows());
                out.push(Output {
                    view: name.clone(),
                    batch: b.clone(),
                    ids,
                });
                self.deliver(&name, b, RowIds::CLOSES, out).await?;
            }
        }
        Ok(())
    }
}

struct PreparedView {
    ctx: SessionContext,
    /// The reference tables the plan reads, filled while planning.
    tables_used: Arc<std::sync::Mutex<BTreeSet<String>>>,
    query: Box<Query>,
    window: Option<sql::WindowSpec>,
    retention: usize,
    /// `EMIT EVERY` interval.
    emit_every: Option<Duration>,
    /// `'late.policy' = 'dead-letter'`: where late rows go.
    dead_letter: Option<crate::dead_letter::DeadLetterWriter>,
}

async fn plan_query(p: PreparedView) -> Result<ViewPlan> {
    let state = p.ctx.state();
    let logical = state
        .statement_to_plan(DfStatement::Statement(Box::new(SqlStatement::Query(
            p.query,
        ))))
        .await
        .map_err(df_user_error)?;
    let physical = state
        .create_physical_plan(&logical)
        .await
        .map_err(df_user_error)?;
    let mut plan = split_plan(physical, p.window.as_ref(), state.task_ctx())?;
    match &mut plan.kind {
        ViewPlanKind::Windowed { aggregate, .. } => {
            aggregate.configure(p.emit_every, p.dead_letter)?;
            if p.emit_every.is_some() {
                if plan.output_schema.field_with_name(IS_FINAL).is_ok() {
                    return Err(WeirError::user(format!(
                        "EMIT EVERY adds a column named {IS_FINAL}, and the query already has \
                         one: rename it"
                    )));
                }
                // Early and final rows of a window are told apart by a trailing column.
                let mut fields: Vec<Field> = plan
                    .output_schema
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone())
                    .collect();
                fields.push(Field::new(IS_FINAL, DataType::Boolean, false));
                plan.output_schema = Arc::new(Schema::new(fields));
            }
        }
        _ if p.emit_every.is_some() => {
            return Err(WeirError::user(
                "EMIT EVERY needs an aggregation over the window (GROUP BY window_start, \
                 window_end, ...)",
            ));
        }
        _ => {}
    }
    Ok(plan)
}

/// A planning context that leaves filters where the query puts them. Below the aggregate,
/// a HOP row's `window_start` and `window_end` are its pane's and a SESSION row's are its
/// own event time, so a filter on them (HAVING, or a query over the aggregate) must not be
/// pushed below it, as DataFusion does with filters on grouping columns.
fn without_filter_pushdown(ctx: SessionContext) -> SessionContext {
    ctx.remove_optimizer_rule("push_down_filter");
    let state = ctx.state();
    let rules = state
        .physical_optimizers()
        .iter()
        .filter(|r| !r.name().starts_with("FilterPushdown"))
        .cloned()
        .collect();
    SessionContext::new_with_state(
        datafusion::execution::SessionStateBuilder::new_from_existing(state)
            .with_physical_optimizer_rules(rules)
            .build(),
    )
}

/// The column an `EMIT EVERY` view adds: false on early rows, true on a window's final row.
pub const IS_FINAL: &str = "is_final";

/// `batch` (the post plan's output) with the `is_final` column of `schema` appended when
/// the view has one.
fn mark_final(schema: &SchemaRef, batch: RecordBatch, is_final: bool) -> Result<RecordBatch> {
    if schema.fields().len() == batch.num_columns() {
        return Ok(batch);
    }
    let mut cols = batch.columns().to_vec();
    cols.push(Arc::new(datafusion::arrow::array::BooleanArray::from(
        vec![is_final; batch.num_rows()],
    )));
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

/// Fold a batch from a windowed view's input into its windows: run the pre plan, update the
/// aggregate, count late rows and, with `'late.policy' = 'dead-letter'`, write each late
/// input row to the view's dead-letter file.
async fn fold_window_batch(
    view: &str,
    stats: &Stats,
    pre: &crate::plan::SlotPlan,
    aggregate: &mut dyn crate::window::WindowOperator,
    batch: RecordBatch,
) -> Result<()> {
    if aggregate.dead_letter().is_none() {
        for b in pre.run(batch).await? {
            let u = aggregate.update(&b)?;
            Stats::add(&stats.late_rows, u.late);
            if u.late > 0 {
                tracing::debug!(view = %view, late = u.late, "dropped late rows");
            }
        }
        return Ok(());
    }
    // Only rows behind the watermark can be late. The pre plan keeps rows in order and
    // makes at most one row of each, so when it drops none, its rows are the input's;
    // otherwise the rows behind the watermark go through it one at a time, so a late row
    // is known for the input row it came from.
    let n = batch.num_rows();
    let closed = aggregate.closed_through();
    let behind: Vec<bool> = match batch.schema().index_of(aggregate.input_time_column()) {
        Ok(i) => ts_millis(batch.column(i))?
            .iter()
            .map(|t| t.is_none_or(|t| t < closed))
            .collect(),
        Err(_) => vec![true; n],
    };
    let mut segments: Vec<(usize, usize)> = Vec::new();
    if behind.iter().any(|b| *b) {
        let out = pre.run(batch.clone()).await?;
        if out.iter().map(|b| b.num_rows()).sum::<usize>() == n {
            let mut offset = 0;
            for b in out {
                let u = aggregate.update(&b)?;
                dead_letter_rows(view, stats, aggregate, &batch, offset, &u)?;
                offset += b.num_rows();
            }
            return Ok(());
        }
        let mut i = 0;
        while i < n {
            let mut j = i + 1;
            if !behind[i] {
                while j < n && !behind[j] {
                    j += 1;
                }
            }
            segments.push((i, j - i));
            i = j;
        }
    } else {
        segments.push((0, n));
    }
    for (offset, len) in segments {
        for b in pre.run(batch.slice(offset, len)).await? {
            let u = aggregate.update(&b)?;
            if len == 1 {
                dead_letter_rows(view, stats, aggregate, &batch, offset, &u)?;
            } else {
                // Rows at or after the watermark are never late.
                Stats::add(&stats.late_rows, u.late);
            }
        }
    }
    Ok(())
}

/// Count `u`'s late rows and write them to the view's dead-letter file; late row `r` of
/// the update is input row `offset + r`.
fn dead_letter_rows(
    view: &str,
    stats: &Stats,
    aggregate: &mut dyn crate::window::WindowOperator,
    input: &RecordBatch,
    offset: usize,
    u: &crate::window::UpdateStats,
) -> Result<()> {
    Stats::add(&stats.late_rows, u.late);
    if u.late_rows.is_empty() {
        return Ok(());
    }
    let idx = datafusion::arrow::array::UInt32Array::from(
        u.late_rows
            .iter()
            .map(|l| (offset + l.row) as u32)
            .collect::<Vec<_>>(),
    );
    let rows = datafusion::arrow::compute::take_record_batch(input, &idx)?;
    let mut buf = Vec::new();
    {
        let mut w = datafusion::arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, datafusion::arrow::json::writer::LineDelimited>(&mut buf);
        w.write(&rows)?;
        w.finish()?;
    }
    let text = String::from_utf8_lossy(&buf);
    let watermark = opt_watermark(aggregate.closed_through()).map(crate::dead_letter::rfc3339_ms);
    let Some(writer) = aggregate.dead_letter() else {
        return Ok(());
    };
    for (line, late) in text.lines().zip(&u.late_rows) {
        let row: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| WeirError::Internal(format!("late row as JSON: {e}")))?;
        let (start, end) = match late.window {
            Some((s, e)) => (
                Some(crate::dead_letter::rfc3339_ms(s)),
                Some(crate::dead_letter::rfc3339_ms(e)),
            ),
            None => (None, None),
        };
        writer.append(&serde_json::json!({
            "view": view,
            "row": row,
            "window_start": start,
            "window_end": end,
            "watermark": watermark,
            "reason": late.reason,
            "time": crate::dead_letter::now_rfc3339(),
        }))?;
    }
    writer.flush()?;
    tracing::debug!(view = %view, late = u.late, "late rows written to the dead-letter file");
    Ok(())
}

/// Run an ad-hoc query over the retained rows of `views` (each a table named after the
/// view). The future owns snapshots of the rows, so it borrows nothing.
pub fn query_views<'a>(
    views: impl IntoIterator<Item = (&'a str, &'a ViewBuffer)>,
    q: Query,
) -> impl std::future::Future<Output = Result<Vec<RecordBatch>>> + Send + 'static {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    let mut err = None;
    for (name, buffer) in views {
        match MemTable::try_new(buffer.schema.clone(), vec![buffer.snapshot()]) {
            Ok(t) => {
                let _ = ctx.register_table(name, Arc::new(t));
            }
            Err(e) => err = Some(e),
        }
    }
    async move {
        if let Some(e) = err {
            return Err(e.into());
        }
        run_query(ctx, q).await
    }
}

async fn run_query(ctx: SessionContext, q: Query) -> Result<Vec<RecordBatch>> {
    let state = ctx.state();
    let plan = state
        .statement_to_plan(DfStatement::Statement(Box::new(SqlStatement::Query(
            Box::new(q),
        ))))
        .await
        .map_err(df_user_error)?;
    let df = ctx
        .execute_logical_plan(plan)
        .await
        .map_err(df_user_error)?;
    Ok(df.collect().await?)
}

fn df_user_error(e: datafusion::error::DataFusionError) -> WeirError {
    let location = e
        .diagnostic()
        .and_then(|d| d.span)
        .map(|s| crate::Location {
            line: s.start.line,
            column: s.start.column,
        });
    let message = e.strip_backtrace().to_string();
    WeirError::User {
        message,
        statement: None,
        location,
    }
}

/// DESCRIBE's lines about a table's loads.
fn table_description(t: &TableNode) -> String {
    let info = t.handle.info();
    let mut lines = vec![
        format!("reads {}", t.loader.describe()),
        format!(
            "refresh {}",
            t.refresh
                .map(|d| format!("every {d:?}"))
                .unwrap_or_else(|| "never (REFRESH TABLE reloads it)".into())
        ),
        format!(
            "loaded rows={} loads={} at={}",
            info.rows,
            info.loads,
            crate::stats::fmt_watermark(Some(info.loaded_at_ms))
        ),
    ];
    if let Some(e) = info.last_error {
        lines.push(format!("last_error {e}"));
    }
    lines.join("\n")
}

fn text_batch(column: &str, lines: Vec<String>) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![Field::new(column, DataType::Utf8, false)]));
    Ok(RecordBatch::try_new(
        schema,
        vec![Arc::new(StringArray::from(lines)) as ArrayRef],
    )?)
}
