//! The streaming sqllogictest runner (see the crate docs for its statements).

use async_trait::async_trait;
use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::SessionContext;
use sqllogictest::{DBOutput, DefaultColumnType};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use weir_connectors::dead_letter::DeadLetterWriter;
use weir_connectors::format::json::{BadRecords, JsonDecoder, parse_bad_records};
use weir_engine::checkpoint::CheckpointStore;
use weir_engine::clock::ManualClock;
use weir_engine::connector::{Source, SourceEvent, SourceFactory, SourceSpec};
use weir_engine::dataflow::Effect;
use weir_engine::dead_letter::LateRowFiles;
use weir_engine::object::ObjectKind;
use weir_engine::pipeline::{EngineConfig, Pipeline, StatementResult};
use weir_engine::{Result, WeirError};

/// How a file is replayed; the output must be the same in every mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    AsWritten,
    /// Every INSERT and PUSH split into one-row micro-batches.
    OneRowBatches,
    /// A CHECKPOINT and a RESTART after every statement; each restart re-splits the
    /// views' state into another number of key partitions (`[engine] repartition`).
    CheckpointRestart,
    /// As written, with four workers: batches go through stage 1 (partial aggregates)
    /// before the driver merges them.
    FourWorkers,
}

/// The key partitions each RESTART re-splits views' state into, in turn.
const RESTART_KEY_PARTITIONS: [u32; 4] = [16, 3, 1, 7];

impl Mode {
    fn workers(self) -> usize {
        match self {
            Mode::FourWorkers => 4,
            _ => 1,
        }
    }
}

/// What the runner did to the pipeline, kept so RESTART can replay what came after the
/// last checkpoint (as real sources replay from the checkpoint's positions).
#[derive(Debug, Clone)]
enum Event {
    Sql(String),
    Push {
        source: String,
        partition: usize,
        batch: RecordBatch,
        bad: u64,
    },
    Tick(i64),
    EndPartition(String, usize),
    EndSource(String),
}

#[derive(Debug, Clone)]
struct TestSourceConfig {
    schema: SchemaRef,
    policy: BadRecords,
}

type Configs = Arc<Mutex<HashMap<String, TestSourceConfig>>>;

/// `connector = 'test'`: a source the runner pushes into. Options: `partitions` (default
/// 1), `bad.records`.
struct TestSourceFactory {
    configs: Configs,
}

struct TestSource {
    partitions: usize,
}

#[async_trait]
impl Source for TestSource {
    fn partitions(&self) -> usize {
        self.partitions
    }

    async fn next(&mut self) -> Result<SourceEvent> {
        // The runner feeds the pipeline directly; polled, a test source just waits.
        futures::future::pending().await
    }

    /// The runner replays what came after a checkpoint itself.
    fn seek(&mut self, _positions: &[(usize, i64)]) -> Result<()> {
        Ok(())
    }
}

impl SourceFactory for TestSourceFactory {
    fn name(&self) -> &'static str {
        "test"
    }

    fn create(&self, spec: SourceSpec) -> Result<Box<dyn Source>> {
        let mut o = spec.options.clone();
        let partitions = o.take_parse::<usize>("partitions")?.unwrap_or(1);
        let policy = parse_bad_records(&mut o)?;
        o.finish("the test source", &["partitions", "bad.records"])?;
        if let Ok(mut c) = self.configs.lock() {
            c.insert(
                spec.name.clone(),
                TestSourceConfig {
                    schema: spec.schema.clone(),
                    policy,
                },
            );
        }
        Ok(Box::new(TestSource { partitions }))
    }
}

pub struct WeirSlt {
    pipeline: Pipeline,
    configs: Configs,
    mode: Mode,
    data_dir: PathBuf,
    /// Processing time: ADVANCE TIME moves it.
    now_ms: i64,
    clock: ManualClock,
    /// Where the pipeline's late rows go (its effects are carried out here, as the
    /// runtime would).
    late_files: LateRowFiles,
    decoders: HashMap<String, JsonDecoder>,
    events: Vec<Event>,
    /// How many events the last checkpoint covers.
    checkpointed: Option<usize>,
    store: CheckpointStore,
    /// RESTARTs so far (each picks the next of [`RESTART_KEY_PARTITIONS`]).
    restarts: usize,
    epoch: u64,
}

/// A pipeline with every real connector plus the `test` source, on a manual clock at
/// processing time 0.
pub fn test_pipeline(data_dir: &Path) -> Pipeline {
    test_pipeline_with(data_dir, Arc::default(), ManualClock::new(0), workers(1))
}

/// [`test_pipeline`] with `workers` workers (above one, pushed batches go through stage 1,
/// `dataflow/prepare.rs`, as they do in the runtime) and windowed views' state in
/// `key_partitions` key partitions.
pub fn test_pipeline_keyed(data_dir: &Path, workers: usize, key_partitions: u32) -> Pipeline {
    test_pipeline_config(
        data_dir,
        EngineConfig {
            workers,
            key_partitions,
            ..EngineConfig::default()
        },
    )
}

/// [`test_pipeline`] with `config` (its data directory set to `data_dir`): checkpoints on,
/// for sinks that write transactions.
pub fn test_pipeline_config(data_dir: &Path, config: EngineConfig) -> Pipeline {
    test_pipeline_with(data_dir, Arc::default(), ManualClock::new(0), config)
}

/// [`test_pipeline`] and the clock it reads, to move processing time by hand.
pub fn test_pipeline_clocked(data_dir: &Path) -> (Pipeline, ManualClock) {
    let clock = ManualClock::new(0);
    (
        test_pipeline_with(data_dir, Arc::default(), clock.clone(), workers(1)),
        clock,
    )
}

fn workers(workers: usize) -> EngineConfig {
    EngineConfig {
        workers,
        ..EngineConfig::default()
    }
}

/// A pipeline with `config` (its data directory set to `data_dir`).
fn test_pipeline_with(
    data_dir: &Path,
    configs: Configs,
    clock: ManualClock,
    config: EngineConfig,
) -> Pipeline {
    let registry = weir_connectors::registry().with_source(TestSourceFactory { configs });
    let config = EngineConfig {
        data_dir: data_dir.to_path_buf(),
        ..config
    };
    Pipeline::new(config, registry).with_clock(Arc::new(clock))
}

impl WeirSlt {
    pub fn new(mode: Mode, data_dir: &Path) -> Self {
        let configs: Configs = Arc::default();
        let clock = ManualClock::new(0);
        let pipeline = test_pipeline_with(
            data_dir,
            configs.clone(),
            clock.clone(),
            workers(mode.workers()),
        );
        WeirSlt {
            pipeline,
            configs,
            mode,
            data_dir: data_dir.to_path_buf(),
            now_ms: 0,
            clock,
            late_files: LateRowFiles::new(data_dir),
            decoders: HashMap::new(),
            events: Vec::new(),
            checkpointed: None,
            store: CheckpointStore::new(data_dir.join("checkpoints"), 2),
            epoch: 0,
            restarts: 0,
        }
    }

    /// Apply one event to the pipeline, logging it.
    async fn apply(&mut self, ev: Event) -> Result<()> {
        Self::apply_to(&mut self.pipeline, &self.clock, &ev).await?;
        self.events.push(ev);
        for effect in self.pipeline.take_effects() {
            match effect {
                Effect::LateRows(late) => self.late_files.write(&late)?,
            }
        }
        Ok(())
    }

    async fn apply_to(pipeline: &mut Pipeline, clock: &ManualClock, ev: &Event) -> Result<()> {
        match ev {
            Event::Sql(sql) => {
                pipeline.execute(sql).await?;
            }
            Event::Push {
                source,
                partition,
                batch,
                bad,
            } => {
                pipeline
                    .push(source, *partition, batch.clone(), *bad)
                    .await?;
            }
            Event::Tick(now) => {
                clock.set(*now);
                pipeline.tick().await?;
            }
            Event::EndPartition(source, p) => {
                pipeline.end_partition(source, *p).await?;
            }
            Event::EndSource(source) => {
                pipeline.end_source(source).await?;
            }
        }
        Ok(())
    }

    /// CHECKPOINT: write a checkpoint of the pipeline as it is.
    async fn checkpoint(&mut self) -> Result<()> {
        self.epoch += 1;
        let snapshot = self.pipeline.snapshot().await?;
        self.store
            .write(self.epoch, snapshot, Default::default(), self.now_ms)?;
        self.store.prune()?;
        self.checkpointed = Some(self.events.len());
        Ok(())
    }

    /// RESTART: a new pipeline, as after a crash: the statements before the last
    /// checkpoint, the checkpoint restored, then everything after it replayed.
    async fn restart(&mut self) -> Result<()> {
        // As after a crash: the replay runs at the time it is now.
        let clock = ManualClock::new(self.now_ms);
        self.restarts += 1;
        let config = EngineConfig {
            key_partitions: RESTART_KEY_PARTITIONS[self.restarts % RESTART_KEY_PARTITIONS.len()],
            repartition: true,
            ..workers(self.mode.workers())
        };
        let mut pipeline =
            test_pipeline_with(&self.data_dir, self.configs.clone(), clock.clone(), config);
        let upto = match self.store.latest()? {
            Some(r) => {
                let upto = self.checkpointed.unwrap_or(0);
                for ev in &self.events[..upto] {
                    if let Event::Sql(_) = ev {
                        Self::apply_to(&mut pipeline, &clock, ev).await?;
                    }
                }
                let report = pipeline.restore(&r)?;
                // Every source and view must come back from the checkpoint: one that
                // silently started afresh would pass only by luck.
                let mut missing = report.skipped.clone();
                for o in pipeline.objects() {
                    let restored = match o.kind {
                        ObjectKind::Source => report.sources.contains(&o.name),
                        ObjectKind::View => report.views.contains(&o.name),
                        _ => true,
                    };
                    if !restored {
                        missing.push(format!("{} {} was not restored", o.kind.noun(), o.name));
                    }
                }
                if !missing.is_empty() {
                    return Err(WeirError::Internal(format!(
                        "RESTART from checkpoint {}: {}",
                        r.manifest.epoch,
                        missing.join("; ")
                    )));
                }
                upto
            }
            None => 0,
        };
        for ev in &self.events[upto..] {
            Self::apply_to(&mut pipeline, &clock, ev).await?;
        }
        self.pipeline = pipeline;
        self.clock = clock;
        Ok(())
    }

    fn config(&self, source: &str) -> Result<TestSourceConfig> {
        self.configs
            .lock()
            .ok()
            .and_then(|c| c.get(source).cloned())
            .ok_or_else(|| WeirError::user(format!("there is no test source '{source}'")))
    }

    async fn push_batch(
        &mut self,
        source: &str,
        partition: usize,
        batch: RecordBatch,
        bad: u64,
    ) -> Result<()> {
        let batches = match self.mode {
            Mode::AsWritten | Mode::CheckpointRestart | Mode::FourWorkers => vec![batch],
            Mode::OneRowBatches => (0..batch.num_rows()).map(|i| batch.slice(i, 1)).collect(),
        };
        let n = batches.len();
        for (i, b) in batches.into_iter().enumerate() {
            // Bad records are counted with the last batch so totals match in every mode.
            let bad = if i + 1 == n { bad } else { 0 };
            self.apply(Event::Push {
                source: source.to_string(),
                partition,
                batch: b,
                bad,
            })
            .await?;
        }
        if n == 0 && bad > 0 {
            let empty = RecordBatch::new_empty(self.config(source)?.schema);
            self.apply(Event::Push {
                source: source.to_string(),
                partition,
                batch: empty,
                bad,
            })
            .await?;
        }
        Ok(())
    }

    async fn insert(&mut self, source: &str, partition: usize, values_sql: &str) -> Result<()> {
        let cfg = self.config(source)?;
        let ctx = SessionContext::new();
        let batches = ctx.sql(values_sql).await?.collect().await?;
        let mut columns_out: Vec<RecordBatch> = Vec::new();
        for b in batches {
            if b.num_columns() != cfg.schema.fields().len() {
                return Err(WeirError::user(format!(
                    "INSERT gives {} values per row, source '{source}' has {} columns",
                    b.num_columns(),
                    cfg.schema.fields().len()
                )));
            }
            let cols = b
                .columns()
                .iter()
                .zip(cfg.schema.fields())
                .map(|(c, f)| cast(c, f.data_type()))
                .collect::<std::result::Result<Vec<ArrayRef>, _>>()?;
            columns_out.push(RecordBatch::try_new(cfg.schema.clone(), cols)?);
        }
        let batch = datafusion::arrow::compute::concat_batches(&cfg.schema, &columns_out)?;
        self.push_batch(source, partition, batch, 0).await
    }

    async fn push_json(&mut self, source: &str, partition: usize, lines: &str) -> Result<()> {
        let cfg = self.config(source)?;
        if !self.decoders.contains_key(source) {
            let dl = (cfg.policy == BadRecords::DeadLetter)
                .then(|| DeadLetterWriter::new(&self.data_dir, source));
            self.decoders.insert(
                source.to_string(),
                JsonDecoder::new(cfg.schema.clone(), cfg.policy, dl)?,
            );
        }
        let decoder = self
            .decoders
            .get_mut(source)
            .ok_or_else(|| WeirError::Internal("decoder".into()))?;
        let chunks: Vec<&str> = match self.mode {
            Mode::AsWritten | Mode::CheckpointRestart | Mode::FourWorkers => vec![lines],
            Mode::OneRowBatches => lines.lines().collect(),
        };
        let mut decoded = Vec::new();
        let mut line_base = 0usize;
        for chunk in chunks {
            let base = line_base;
            let (batch, bad) = decoder.decode(chunk.as_bytes(), |i| {
                format!("{source} line {}", base + i + 1)
            })?;
            line_base += chunk.lines().count().max(1);
            decoded.push((batch, bad));
        }
        for (batch, bad) in decoded {
            let mode = self.mode;
            self.mode = Mode::AsWritten;
            let r = self.push_batch(source, partition, batch, bad).await;
            self.mode = mode;
            r?;
        }
        Ok(())
    }

    /// The records of the dead-letter file of a source or view (none if it has none).
    fn dead_letter_file(&self, name: &str) -> Result<Vec<(String, serde_json::Value)>> {
        let path = self
            .data_dir
            .join("dead-letter")
            .join(format!("{name}.jsonl"));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        text.lines()
            .map(|line| {
                let v = serde_json::from_str(line)
                    .map_err(|e| WeirError::Internal(format!("dead letter line: {e}")))?;
                Ok((line.to_string(), v))
            })
            .collect()
    }

    fn dead_letters(&self, source: &str) -> Result<Vec<Vec<String>>> {
        let mut rows = Vec::new();
        for (_, v) in self.dead_letter_file(source)? {
            let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
            rows.push(vec![s("raw"), s("reason"), s("position")]);
        }
        Ok(rows)
    }

    /// The late rows a view with `'late.policy' = 'dead-letter'` wrote: the row (JSON),
    /// the window it missed, the watermark and the reason. Each record must name the view
    /// and carry its wall-clock time in RFC 3339.
    fn late_rows(&self, view: &str) -> Result<Vec<Vec<String>>> {
        let mut rows = Vec::new();
        for (line, v) in self.dead_letter_file(view)? {
            if v.get("view").and_then(|x| x.as_str()) != Some(view) {
                return Err(WeirError::Internal(format!(
                    "late row record does not name view '{view}': {line}"
                )));
            }
            let time = v.get("time").and_then(|x| x.as_str()).unwrap_or("");
            if chrono::DateTime::parse_from_rfc3339(time).is_err() {
                return Err(WeirError::Internal(format!(
                    "late row record without an RFC 3339 time: {line}"
                )));
            }
            let s = |k: &str| match v.get(k) {
                Some(serde_json::Value::String(x)) => x.clone(),
                Some(serde_json::Value::Null) | None => "NULL".to_string(),
                Some(other) => other.to_string(),
            };
            rows.push(vec![
                s("row"),
                s("window_start"),
                s("window_end"),
                s("watermark"),
                s("reason"),
            ]);
        }
        Ok(rows)
    }
}

/// Split `NAME [PARTITION n] rest` into its parts; the partition is `None` when not given.
fn target(rest: &str) -> Result<(String, Option<usize>, String)> {
    let rest = rest.trim_start();
    let end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
    let name = rest[..end].to_string();
    let mut tail = rest[end..].trim_start();
    let mut partition = None;
    if let Some(t) = strip_prefix_ci(tail, "PARTITION")
        && t.starts_with(|c: char| c.is_whitespace())
    {
        let t = t.trim_start();
        let e = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        partition = Some(
            t[..e]
                .parse()
                .map_err(|_| WeirError::user("PARTITION takes a number"))?,
        );
        tail = t[e..].trim_start();
    }
    Ok((name, partition, tail.to_string()))
}

/// The sqllogictest column type of each column: `I` integers, `R` floating point and
/// decimals, `T` everything else, so `query TTII` is checked.
fn column_types(schema: &SchemaRef) -> Vec<DefaultColumnType> {
    schema
        .fields()
        .iter()
        .map(|f| {
            let t = f.data_type();
            if t.is_integer() {
                DefaultColumnType::Integer
            } else if t.is_floating()
                || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..))
            {
                DefaultColumnType::FloatingPoint
            } else {
                DefaultColumnType::Text
            }
        })
        .collect()
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

pub fn format_batches(batches: &[RecordBatch]) -> Result<Vec<Vec<String>>> {
    let opts = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for b in batches {
        let fmts = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        for r in 0..b.num_rows() {
            rows.push(
                fmts.iter()
                    .map(|f| {
                        let s = f.value(r).to_string();
                        if s.is_empty() {
                            "(empty)".to_string()
                        } else {
                            s
                        }
                    })
                    .collect(),
            );
        }
    }
    Ok(rows)
}

#[async_trait]
impl sqllogictest::AsyncDB for WeirSlt {
    type Error = WeirError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>> {
        let out = self.run_statement(sql).await?;
        if self.mode == Mode::CheckpointRestart {
            self.checkpoint().await?;
            self.restart().await?;
        }
        Ok(out)
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "weir"
    }
}

impl WeirSlt {
    async fn run_statement(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>> {
        let s = sql.trim().trim_end_matches(';').trim();
        if s.eq_ignore_ascii_case("CHECKPOINT") {
            self.checkpoint().await?;
            return Ok(DBOutput::StatementComplete(0));
        }
        if s.eq_ignore_ascii_case("RESTART") {
            self.restart().await?;
            return Ok(DBOutput::StatementComplete(0));
        }
        if let Some(rest) = strip_prefix_ci(s, "INSERT INTO ") {
            let (name, partition, tail) = target(rest)?;
            let partition = partition.unwrap_or(0);
            if strip_prefix_ci(&tail, "VALUES").is_none() {
                return Err(WeirError::user(
                    "INSERT INTO src [PARTITION n] VALUES (...)",
                ));
            }
            self.insert(&name, partition, &tail).await?;
            return Ok(DBOutput::StatementComplete(0));
        }
        if let Some(rest) = strip_prefix_ci(s, "PUSH ") {
            let (header, body) = rest.split_once('\n').unwrap_or((rest, ""));
            let (name, partition, tail) = target(header)?;
            if !tail.is_empty() {
                return Err(WeirError::user(format!(
                    "PUSH src [PARTITION n], then JSON lines; unexpected '{tail}'"
                )));
            }
            self.push_json(&name, partition.unwrap_or(0), body).await?;
            return Ok(DBOutput::StatementComplete(0));
        }
        if let Some(rest) = strip_prefix_ci(s, "ADVANCE TIME ") {
            let d = weir_engine::options::parse_duration(rest.trim().trim_matches('\''))
                .map_err(WeirError::user)?;
            self.now_ms += d.as_millis() as i64;
            self.apply(Event::Tick(self.now_ms)).await?;
            return Ok(DBOutput::StatementComplete(0));
        }
        if let Some(rest) = strip_prefix_ci(s, "END ") {
            let (name, partition, tail) = target(rest)?;
            if !tail.is_empty() {
                return Err(WeirError::user(format!(
                    "END src [PARTITION n]; unexpected '{tail}'"
                )));
            }
            match partition {
                Some(p) => self.apply(Event::EndPartition(name, p)).await?,
                None => self.apply(Event::EndSource(name)).await?,
            }
            return Ok(DBOutput::StatementComplete(0));
        }
        if let Some(rest) = strip_prefix_ci(s, "LATE ROWS ") {
            let rows = self.late_rows(rest.trim())?;
            return Ok(DBOutput::Rows {
                types: vec![DefaultColumnType::Text; 5],
                rows,
            });
        }
        if let Some(rest) = strip_prefix_ci(s, "DEAD LETTERS ") {
            let rows = self.dead_letters(rest.trim())?;
            return Ok(DBOutput::Rows {
                types: vec![DefaultColumnType::Text; 3],
                rows,
            });
        }
        let outcome = self.pipeline.execute_script(sql).await;
        // What changed the catalog is replayed by RESTART (statements applied before an
        // error included).
        for a in &outcome.applied {
            if matches!(
                a.result,
                StatementResult::Created { .. } | StatementResult::Dropped { .. }
            ) {
                self.events.push(Event::Sql(a.text.clone()));
            }
        }
        if let Some(e) = outcome.error {
            return Err(e);
        }
        let results: Vec<StatementResult> = outcome.applied.into_iter().map(|a| a.result).collect();
        match results.into_iter().last() {
            Some(StatementResult::Rows(batches)) => Ok(DBOutput::Rows {
                types: batches
                    .first()
                    .map(|b| column_types(&b.schema()))
                    .unwrap_or_default(),
                rows: format_batches(&batches)?,
            }),
            _ => Ok(DBOutput::StatementComplete(0)),
        }
    }
}

/// Run one `.slt` file in one mode, in a fresh data directory.
pub async fn run_file(path: &Path, mode: Mode) -> std::result::Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data = dir.path().to_path_buf();
    let mut runner = sqllogictest::Runner::new(move || {
        let data = data.clone();
        async move { Ok::<_, WeirError>(WeirSlt::new(mode, &data)) }
    });
    runner.with_column_validator(sqllogictest::strict_column_validator);
    runner
        .run_file_async(path)
        .await
        .map_err(|e| format!("{}", e.display(true)))
}

/// Rewrite a file's expected output from what the engine produces (`--complete`).
pub async fn complete_file(path: &Path) -> std::result::Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data = dir.path().to_path_buf();
    let mut runner = sqllogictest::Runner::new(move || {
        let data = data.clone();
        async move { Ok::<_, WeirError>(WeirSlt::new(Mode::AsWritten, &data)) }
    });
    runner
        .update_test_file(
            path,
            " ",
            sqllogictest::default_validator,
            sqllogictest::default_normalizer,
            sqllogictest::strict_column_validator,
        )
        .await
        .map_err(|e| e.to_string())
}
