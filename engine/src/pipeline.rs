//! The pipeline: one running set of sources, views, sinks and reference tables. It ties
//! the parts together and is what drivers (the runtime, the test runner, benchmarks) hold:
//!
//! - the [`Catalog`] (names, SQL, schemas, dependencies, what the server reads),
//! - the [`Dataflow`] (the operator graph that moves batches and watermarks),
//! - one [`Sequencer`] per view (seq numbers and row ids) and the serving buffers,
//! - the connectors not yet started, and the reference tables.
//!
//! Statements (CREATE, DROP, SHOW, ...) are interpreted in `ddl.rs`. The data path is
//! here: [`Pipeline::push`] and the other steps run the dataflow, then number what views
//! emitted, hand it to the serving layer and return it for the sinks. The pipeline never
//! sleeps, spawns or does I/O; side effects come back as [`Effect`]s for the driver
//! ([`Pipeline::take_effects`]).

use crate::catalog::{Catalog, CatalogHandle, ObjectInfo};
use crate::checkpoint::{Figures, NodeKind, NodeSnapshot, Restored, Snapshot};
use crate::clock::{Clock, SystemClock};
use crate::connector::{BatchLimits, ConnectorRegistry, RowIds, Sink, SinkCheckpoint, Source};
use crate::dataflow::prepare::Prepared;
use crate::dataflow::{Dataflow, Effect, NodeState};
use crate::error::{Result, WeirError};
use crate::object::ObjectKind;
use crate::sequencer::Sequencer;
use crate::serving::ViewBuffer;
use crate::stats::Stats;
use crate::tables::{RefTable, TableRefresh};
use crate::watermark::PartitionState;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::sql::sqlparser::ast::Query;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
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
    /// The bounds of ad-hoc queries (`SELECT` statements).
    pub query_limits: crate::adhoc::QueryLimits,
    /// Worker threads the runtime computes on. Above one, micro-batches are prepared
    /// (decoded rows through stateless plans and partial aggregates, `dataflow/prepare.rs`)
    /// on all of them at once before the driver merges them in order.
    pub workers: usize,
    /// Key partitions a new windowed view's state is split into (`dataflow/keyed.rs`);
    /// a view restored from a checkpoint keeps its own count unless `repartition`.
    pub key_partitions: u32,
    /// Restore re-splits each view's state into `key_partitions`.
    pub repartition: bool,
    /// Sink options from the configuration (`[sinks.<name>]`), by sink name, applied over
    /// the statement's WITH options (see `ddl::sink_options`).
    pub sink_options:
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

impl EngineConfig {
    /// How views' keyed state is split and worked on.
    pub fn keying(&self) -> crate::dataflow::keyed::Keying {
        crate::dataflow::keyed::Keying {
            key_partitions: self.key_partitions,
            workers: self.workers,
            repartition: self.repartition,
        }
    }
}

/// The number of cores this process may use (one if it cannot tell).
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// [`EngineConfig::workers`] when not set: the worker threads of the Tokio runtime this is
/// called on (they are what computes), else the available cores.
pub fn default_workers() -> usize {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => h.metrics().num_workers(),
        Err(_) => available_cores(),
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            data_dir: PathBuf::from("data"),
            batch: BatchLimits::default(),
            idle_timeout: crate::connector::DEFAULT_IDLE_TIMEOUT,
            retention_rows: 100_000,
            checkpoints: false,
            query_limits: crate::adhoc::QueryLimits::default(),
            workers: default_workers(),
            key_partitions: crate::dataflow::keyed::DEFAULT_KEY_PARTITIONS,
            repartition: false,
            sink_options: Default::default(),
        }
    }
}

/// Where the runtime's task for a source finds the stage-1 work for its batches (swapped
/// when views over the source change; `None`: batches go to the driver as they are).
pub type Stage1Cell = parking_lot::RwLock<Option<Arc<crate::dataflow::prepare::Stage1Program>>>;

/// One batch a view emitted, for its sinks.
#[derive(Debug, Clone)]
pub struct Output {
    pub view: String,
    pub batch: RecordBatch,
    pub ids: RowIds,
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
    pub(crate) config: EngineConfig,
    pub(crate) registry: ConnectorRegistry,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) catalog: Catalog,
    pub(crate) dataflow: Dataflow,
    /// Each view's numbering; a dropped view's stays, so one created again under its name
    /// goes on numbering.
    pub(crate) sequencers: BTreeMap<String, Sequencer>,
    /// Sources the runtime has not started yet.
    pub(crate) new_sources: Vec<(String, Box<dyn Source>)>,
    /// Sinks the runtime has not started yet.
    pub(crate) new_sinks: Vec<NewSink>,
    pub(crate) tables: Vec<RefTable>,
    /// Side effects the driver has not taken yet.
    effects: Vec<Effect>,
    /// Per source, its stage-1 program (see [`Pipeline::refresh_stage1`]).
    stage1: BTreeMap<String, Arc<Stage1Cell>>,
}

impl Pipeline {
    /// A pipeline on the wall clock.
    pub fn new(config: EngineConfig, registry: ConnectorRegistry) -> Self {
        Pipeline {
            config,
            registry,
            clock: Arc::new(SystemClock),
            catalog: Catalog::default(),
            dataflow: Dataflow::default(),
            sequencers: BTreeMap::new(),
            new_sources: vec![],
            new_sinks: vec![],
            tables: vec![],
            effects: vec![],
            stage1: BTreeMap::new(),
        }
    }

    /// Read processing time from `clock` instead (tests: a `ManualClock`).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// A handle on the live list of objects, updated on every CREATE and DROP.
    pub fn catalog(&self) -> CatalogHandle {
        self.catalog.handle()
    }

    /// The objects, as the catalog publishes them.
    pub fn objects(&self) -> Vec<ObjectInfo> {
        self.catalog.handle().objects().to_vec()
    }

    /// The objects that read `name`.
    pub fn dependents(&self, name: &str) -> Vec<(ObjectKind, String)> {
        self.catalog.dependents(name)
    }

    /// The runtime starts now: idle timeouts run from here (not from when the sources were
    /// declared or checkpointed).
    pub fn start(&mut self) {
        let now = self.clock.now_ms();
        self.dataflow.start(now);
    }

    /// Run an ad-hoc query over the views' retained rows.
    pub fn query(
        &self,
        q: Query,
    ) -> impl std::future::Future<Output = Result<Vec<RecordBatch>>> + Send + 'static {
        let buffers: Vec<(String, Arc<ViewBuffer>)> = self
            .catalog
            .of_kind(ObjectKind::View)
            .filter_map(|e| Some((e.info.name.clone(), e.info.buffer.clone()?)))
            .collect();
        crate::adhoc::query_views(buffers, q, self.config.query_limits)
    }

    /// Sources that have not been started yet; the runtime takes them to poll.
    pub fn take_new_sources(&mut self) -> Vec<(String, Box<dyn Source>)> {
        std::mem::take(&mut self.new_sources)
    }

    /// Sinks that have not been started yet, with the view each one reads.
    pub fn take_new_sinks(&mut self) -> Vec<NewSink> {
        std::mem::take(&mut self.new_sinks)
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

    /// Side effects asked for since the last call (late rows for dead-letter files).
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    pub fn has_source(&self, name: &str) -> bool {
        self.catalog.get_kind(ObjectKind::Source, name).is_some()
    }

    pub fn has_sink(&self, name: &str) -> bool {
        self.catalog.get_kind(ObjectKind::Sink, name).is_some()
    }

    pub fn has_table(&self, name: &str) -> bool {
        self.catalog.get_kind(ObjectKind::Table, name).is_some()
    }

    /// Names of sources that never end (for `--until-done`, which needs them all bounded).
    pub fn unbounded_sources(&self) -> Vec<String> {
        self.new_sources
            .iter()
            .filter(|(_, s)| !s.bounded())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// A source's live figures.
    pub fn source_stats(&self, name: &str) -> Option<Arc<Stats>> {
        self.catalog
            .get_kind(ObjectKind::Source, name)
            .map(|e| e.info.stats.clone())
    }

    /// The retained rows of a view.
    pub fn view_buffer(&self, name: &str) -> Option<Arc<ViewBuffer>> {
        self.catalog
            .get_kind(ObjectKind::View, name)
            .and_then(|e| e.info.buffer.clone())
    }

    pub fn source_schema(&self, name: &str) -> Option<SchemaRef> {
        self.catalog
            .get_kind(ObjectKind::Source, name)
            .map(|e| e.info.schema.clone())
    }

    /// True when every source has ended.
    pub fn all_sources_ended(&self) -> bool {
        self.dataflow.all_sources_ended()
    }

    /// The SQL and view of a sink, for its entry in a checkpoint.
    pub fn sink_definition(&self, name: &str) -> Option<(String, String)> {
        self.catalog.get_kind(ObjectKind::Sink, name).map(|e| {
            let view = e.info.inputs.first().cloned().unwrap_or_default();
            (e.info.sql.clone(), view)
        })
    }

    /// Feed one micro-batch from a source partition; returns what the views emitted. With
    /// several workers the batch goes through stage 1 first, here and now, as the runtime
    /// would have on another worker (tests run both ways and compare).
    pub async fn push(
        &mut self,
        source: &str,
        partition: usize,
        batch: RecordBatch,
        bad_records: u64,
    ) -> Result<Vec<Output>> {
        if self.config.workers > 1
            && let Some(program) = self.dataflow.stage1_program(source)
        {
            let prepared = program.prepare(&batch).await?;
            return self
                .push_prepared(source, partition, batch, prepared, bad_records, None)
                .await;
        }
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
        self.push_batch(source, partition, batch, None, bad_records, position)
            .await
    }

    /// [`Pipeline::push_at`] for a batch that stage 1 prepared from a source's
    /// [`Stage1Cell`] program.
    pub async fn push_prepared(
        &mut self,
        source: &str,
        partition: usize,
        batch: RecordBatch,
        prepared: Prepared,
        bad_records: u64,
        position: Option<i64>,
    ) -> Result<Vec<Output>> {
        self.push_batch(
            source,
            partition,
            batch,
            Some(prepared),
            bad_records,
            position,
        )
        .await
    }

    async fn push_batch(
        &mut self,
        source: &str,
        partition: usize,
        batch: RecordBatch,
        prepared: Option<Prepared>,
        bad_records: u64,
        position: Option<i64>,
    ) -> Result<Vec<Output>> {
        let stats = self
            .source_stats(source)
            .ok_or_else(|| WeirError::user(format!("there is no source '{source}'")))?;
        Stats::add(&stats.rows_in, batch.num_rows() as u64);
        Stats::add(&stats.batches, 1);
        Stats::add(&stats.bad_rows, bad_records);
        let now = self.clock.now_ms();
        let step = self
            .dataflow
            .push(source, partition, batch, prepared, position, now)
            .await;
        self.finish_step(step)
    }

    /// The source now knows it has `count` partitions; new ones hold the watermark back
    /// until they deliver data or go idle.
    pub fn set_partitions(&mut self, source: &str, count: usize) -> Result<()> {
        let now = self.clock.now_ms();
        self.dataflow.set_partitions(source, count, now)
    }

    /// A partition is alive though quiet (see `SourceEvent::Active`).
    pub fn keep_active(&mut self, source: &str, partition: usize) -> Result<()> {
        let now = self.clock.now_ms();
        self.dataflow.keep_active(source, partition, now)
    }

    /// A connector's word on a partition's event time (`SourceEvent::Progress`,
    /// `SourceEvent::EarliestEventTime`); the watermark may move.
    pub async fn report_time(
        &mut self,
        source: &str,
        partition: usize,
        report: crate::watermark::TimeReport,
        event_time_ms: i64,
    ) -> Result<Vec<Output>> {
        let now = self.clock.now_ms();
        let step = self
            .dataflow
            .report_time(source, partition, report, event_time_ms, now)
            .await;
        self.finish_step(step)
    }

    /// A bounded source has ended: its watermark goes to the end of time and every window
    /// over it closes.
    pub async fn end_source(&mut self, source: &str) -> Result<Vec<Output>> {
        let now = self.clock.now_ms();
        let step = self.dataflow.end_source(source, now).await;
        self.finish_step(step)
    }

    /// Batches merged as stage 1 prepared them, and prepared ones that views changing made
    /// stale (run the ordinary way).
    pub fn prepared_batches(&self) -> (u64, u64) {
        self.dataflow.prepared_batches()
    }

    /// The cell a source's task reads its stage-1 program from.
    /// `view` as a Weir cluster runs it (docs/cluster.md), its state cut into the
    /// configured `key_partitions`.
    pub fn cluster_view(&self, view: &str) -> Result<crate::cluster::ClusterView> {
        self.dataflow.cluster_view(view, self.config.key_partitions)
    }

    pub fn stage1_cell(&mut self, source: &str) -> Arc<Stage1Cell> {
        self.stage1.entry(source.to_string()).or_default().clone()
    }

    /// Rebuild every source's stage-1 program after views changed (the runtime calls this
    /// after applying statements). With one worker there is no stage 1: the driver does
    /// everything, as preparing ahead would only add work on the same core.
    pub fn refresh_stage1(&mut self) {
        self.stage1.retain(|name, _| self.dataflow.contains(name));
        for (name, cell) in &self.stage1 {
            let program = if self.config.workers > 1 {
                self.dataflow.stage1_program(name).map(Arc::new)
            } else {
                None
            };
            if let Some(p) = &program {
                tracing::debug!(source = %name, views = p.views(), "stage 1 prepares its batches");
            }
            *cell.write() = program;
        }
    }

    /// One partition of a source has no more data.
    pub async fn end_partition(&mut self, source: &str, partition: usize) -> Result<Vec<Output>> {
        let now = self.clock.now_ms();
        let step = self.dataflow.end_partition(source, partition, now).await;
        self.finish_step(step)
    }

    /// Processing time moved on: partitions may have gone idle, early results be due.
    pub async fn tick(&mut self) -> Result<Vec<Output>> {
        let now = self.clock.now_ms();
        let step = self.dataflow.tick(now).await;
        self.finish_step(step)
    }

    /// Number what the dataflow emitted in this step, retain it for readers and return it
    /// for the sinks; keep its effects for the driver. Emissions of a failed step are
    /// numbered too, so seqs never skip rows that were retained.
    fn finish_step(&mut self, step: Result<()>) -> Result<Vec<Output>> {
        self.effects.extend(self.dataflow.take_effects());
        let at_us = self.clock.now_us();
        let mut out = Vec::new();
        let mut failed = None;
        for e in self.dataflow.take_emissions() {
            let numbered = self
                .sequencers
                .entry(e.view.clone())
                .or_default()
                .next(e.origin, e.batch.num_rows());
            if let Some(buffer) = self.view_buffer(&e.view)
                && let Err(err) =
                    buffer.push(numbered.first_seq, e.batch.clone(), e.watermark, at_us)
            {
                failed.get_or_insert(err);
            }
            out.push(Output {
                view: e.view,
                batch: e.batch,
                ids: numbered.ids,
            });
        }
        if let Some(err) = failed {
            return Err(err);
        }
        step.map(|()| out)
    }

    /// Everything a checkpoint holds, taken between two steps: every node's state, every
    /// view's numbering and retained rows. Sinks add their part (the runtime asks them).
    pub async fn snapshot(&mut self) -> Result<Snapshot> {
        let mut snap = Snapshot {
            sequencers: self.sequencers.clone(),
            ..Default::default()
        };
        for (name, kind, state) in self.dataflow.snapshot().await? {
            let entry = self.catalog.get(&name).ok_or_else(|| {
                WeirError::Internal(format!("node '{name}' has no catalog entry"))
            })?;
            snap.nodes.push(NodeSnapshot {
                name: name.clone(),
                kind: kind.into(),
                sql: entry.info.sql.clone(),
                state: state.meta,
                figures: Figures::of(&entry.info.stats),
                parts: state.parts,
            });
            if let Some(buffer) = &entry.info.buffer {
                snap.rows.insert(name, buffer.checkpoint_rows()?);
            }
        }
        Ok(snap)
    }

    /// Continue from a checkpoint: call after the statements that define the pipeline have
    /// been applied, before the runtime starts. Each node whose definition (its SQL text)
    /// is the same as at the checkpoint, and whose inputs were restored, gets its state
    /// back; a source seeks to its positions. Nodes that changed, and views over them,
    /// start afresh (listed in the report). Every view goes on numbering where the
    /// checkpoint left it. Sinks get their part through `Sink::recover`.
    pub fn restore(&mut self, restored: &Restored) -> Result<RestoreReport> {
        let m = &restored.manifest;
        let mut report = RestoreReport {
            epoch: m.epoch,
            ..Default::default()
        };
        for name in self.dataflow.names() {
            let Some(cp) = m.nodes.get(&name) else {
                continue;
            };
            let Some(entry) = self.catalog.get(&name) else {
                continue;
            };
            let noun = match cp.kind {
                NodeKind::Source => "source",
                NodeKind::View => "view",
            };
            if cp.sql != entry.info.sql {
                report.skipped.push(format!(
                    "{noun} {name}: its definition changed since the checkpoint"
                ));
                continue;
            }
            if let Some(input) = entry
                .info
                .inputs
                .iter()
                .find(|i| !report.sources.contains(i) && !report.views.contains(i))
            {
                report
                    .skipped
                    .push(format!("{noun} {name}: its input {input} was not restored"));
                continue;
            }
            let stats = entry.info.stats.clone();
            if cp.kind == NodeKind::Source {
                self.seek_source(&name, cp, m.epoch)?;
            }
            let parts = restored.node_parts(&name)?;
            self.dataflow
                .restore_node(
                    &name,
                    NodeState {
                        meta: cp.state.clone(),
                        parts,
                    },
                )
                .map_err(|e| e.context(format!("restoring {noun} {name}")))?;
            cp.figures.apply(&stats);
            match cp.kind {
                NodeKind::Source => report.sources.push(name),
                NodeKind::View => {
                    report.open_groups += self.dataflow.figures(&name).open_groups;
                    if let Some(buffer) = self.view_buffer(&name) {
                        let rows = restored.view_rows(&name)?;
                        let first = m.rows.get(&name).map_or(0, |r| r.first_seq);
                        let last = m.sequencers.get(&name).map_or(0, Sequencer::last_seq);
                        buffer.restore(first, rows, last)?;
                    }
                    report.views.push(name);
                }
            }
        }
        self.restore_sequencers(restored);
        for s in &mut self.new_sinks {
            let Some(cs) = m.sinks.get(&s.name) else {
                continue;
            };
            let sql = self
                .catalog
                .get_kind(ObjectKind::Sink, &s.name)
                .map(|e| e.info.sql.as_str());
            if sql != Some(cs.sql.as_str()) {
                report.skipped.push(format!(
                    "sink {}: its definition changed since the checkpoint",
                    s.name
                ));
                continue;
            }
            s.restored = Some((m.epoch, cs.precommit.clone()));
            report.sinks.push(s.name.clone());
        }
        self.refresh_stage1();
        Ok(report)
    }

    /// Take only the views' numbering from a checkpoint (the state itself cannot be used,
    /// as when the embedded broker forgot the offsets it refers to): seqs go on from where
    /// they were, so subscribers resuming with `since_seq` are not confused.
    pub fn restore_sequencers(&mut self, restored: &Restored) {
        for (name, seq) in &restored.manifest.sequencers {
            self.sequencers.insert(name.clone(), seq.clone());
            if let Some(buffer) = self.view_buffer(name) {
                buffer.resume(seq.last_seq());
            }
        }
    }

    /// Seek a not yet started source to the positions its checkpoint recorded.
    fn seek_source(
        &mut self,
        name: &str,
        cp: &crate::checkpoint::NodeCheckpoint,
        epoch: u64,
    ) -> Result<()> {
        let partitions: Vec<PartitionState> =
            crate::dataflow::operator::meta_field(&cp.state, "partitions")?.unwrap_or_default();
        let positions: Vec<(usize, i64)> = partitions
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.position.map(|pos| (i, pos)))
            .collect();
        let Some((_, source)) = self.new_sources.iter_mut().find(|(n, _)| n == name) else {
            return Err(WeirError::Internal(format!(
                "source '{name}' started before the restore"
            )));
        };
        if !positions.is_empty() {
            source.seek(&positions).map_err(|e| {
                WeirError::user(format!(
                    "source '{name}' cannot resume from checkpoint {epoch}: {e}"
                ))
            })?;
        }
        Ok(())
    }
}
