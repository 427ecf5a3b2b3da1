//! The Nexmark queries on Weir: throughput, window-close latency, and a correctness check
//! against the same answers computed in batch by plain DataFusion.
//!
//! ```text
//! weir-bench nexmark --query q5 --events 10000000 --event-rate 100000       throughput
//! weir-bench nexmark --query q5 --source kafka --bootstrap 127.0.0.1:19092
//! weir-bench nexmark --query q5 --latency-rate 100000 --secs 60            latency
//! weir-bench nexmark --query q5 --check [--events 200000]                  vs batch
//! ```
//!
//! Each query is a file `benches/nexmark/qN.sql` (compiled in) whose header says which
//! tables it reads, which view is its result and where a result row's window ends:
//!
//! ```text
//! -- reads: person, auction
//! -- result: q8
//! -- window_end: stime + 10s          (or `window_end`, or `none` for unwindowed queries)
//! ```
//!
//! and `benches/nexmark/batch/qN.sql` computes the same rows in batch. A run declares the
//! sources the query reads (the Nexmark generator with one seed, event count and rate for
//! all three tables, or the Kafka topics `nexmark-<table>` bounded at their latest
//! offsets), the query's views, and a sink on the result view: `blackhole` for throughput,
//! or an in-process capture sink that keeps the rows and their arrival times (latency,
//! check). See docs/nexmark.md.

use anyhow::{Context, Result, anyhow, bail, ensure};
use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, StringArray, TimestampMillisecondArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir_connectors::generator::nexmark::{Table, columns_sql};
use weir_engine::connector::{
    BatchLimits, RowIds, Sink, SinkFactory, SinkSpec, Source, SourceEvent, SourceSpec,
};
use weir_engine::options::Options;
use weir_engine::pipeline::{EngineConfig, Pipeline};
use weir_engine::runtime::{RunOptions, run};

/// The queries, in order.
pub const QUERIES: [&str; 8] = ["q0", "q1", "q2", "q3", "q4", "q5", "q7", "q8"];

/// (name, Weir SQL, batch SQL) of every query.
const FILES: [(&str, &str, &str); 8] = [
    (
        "q0",
        include_str!("../nexmark/q0.sql"),
        include_str!("../nexmark/batch/q0.sql"),
    ),
    (
        "q1",
        include_str!("../nexmark/q1.sql"),
        include_str!("../nexmark/batch/q1.sql"),
    ),
    (
        "q2",
        include_str!("../nexmark/q2.sql"),
        include_str!("../nexmark/batch/q2.sql"),
    ),
    (
        "q3",
        include_str!("../nexmark/q3.sql"),
        include_str!("../nexmark/batch/q3.sql"),
    ),
    (
        "q4",
        include_str!("../nexmark/q4.sql"),
        include_str!("../nexmark/batch/q4.sql"),
    ),
    (
        "q5",
        include_str!("../nexmark/q5.sql"),
        include_str!("../nexmark/batch/q5.sql"),
    ),
    (
        "q7",
        include_str!("../nexmark/q7.sql"),
        include_str!("../nexmark/batch/q7.sql"),
    ),
    (
        "q8",
        include_str!("../nexmark/q8.sql"),
        include_str!("../nexmark/batch/q8.sql"),
    ),
];

/// The watermark delay the sources declare (`date_time - INTERVAL '4' SECOND`), as in the
/// Flink suite's DDL.
pub const WATERMARK_DELAY_MS: i64 = 4000;

/// The connector name of the capture sink this module registers.
const CAPTURE: &str = "nexmark-capture";

/// Where a result row's window ends: a timestamp column plus a constant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowEnd {
    pub column: String,
    pub plus_ms: i64,
}

/// One Nexmark query: its SQL files and what their header says.
#[derive(Debug, Clone)]
pub struct Query {
    pub name: &'static str,
    pub sql: String,
    pub batch_sql: String,
    /// The tables it reads, in the header's order.
    pub reads: Vec<Table>,
    /// The view holding the result.
    pub result: String,
    /// `None` for unwindowed queries.
    pub window_end: Option<WindowEnd>,
}

impl Query {
    /// The query called `name` (`q0` ... `q8`), from the compiled-in files.
    pub fn get(name: &str) -> Result<Query> {
        let (name, sql, batch_sql) = FILES
            .iter()
            .find(|(n, ..)| *n == name)
            .copied()
            .ok_or_else(|| anyhow!("unknown query '{name}'; known: {}", QUERIES.join(", ")))?;
        Query::parse(name, sql.to_string(), batch_sql.to_string())
            .with_context(|| format!("benches/nexmark/{name}.sql"))
    }

    /// Query `name` with its Weir SQL replaced by the file at `path` (same header format).
    pub fn from_file(name: &str, path: &std::path::Path) -> Result<Query> {
        let q = Query::get(name)?;
        let sql =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Query::parse(q.name, sql, q.batch_sql).with_context(|| path.display().to_string())
    }

    /// A query from its SQL texts; the header is read from `sql`.
    pub fn parse(name: &'static str, sql: String, batch_sql: String) -> Result<Query> {
        let header = |key: &str| -> Result<String> {
            let prefix = format!("-- {key}:");
            sql.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .map(|v| v.trim().to_string())
                .with_context(|| format!("no '{prefix}' header line"))
        };
        let reads = header("reads")?
            .split(',')
            .map(|t| {
                Table::parse(t.trim())
                    .with_context(|| format!("reads unknown table '{}'", t.trim()))
            })
            .collect::<Result<Vec<_>>>()?;
        let window_end = parse_window_end(&header("window_end")?).context("the window_end line")?;
        let result = header("result")?;
        Ok(Query {
            name,
            sql,
            batch_sql,
            reads,
            result,
            window_end,
        })
    }

    /// Whether the result is emitted as windows close (so it has a close latency).
    pub fn windowed(&self) -> bool {
        self.window_end.is_some()
    }
}

/// `none`, `col` or `col + 10s` (the constant as a duration: `10s`, `500ms`, `1m`).
fn parse_window_end(s: &str) -> Result<Option<WindowEnd>> {
    if s == "none" {
        return Ok(None);
    }
    let (column, plus_ms) = match s.split_once('+') {
        None => (s.trim(), 0),
        Some((c, d)) => {
            let d = weir_engine::options::parse_duration(d.trim()).map_err(|e| anyhow!(e))?;
            (c.trim(), i64::try_from(d.as_millis())?)
        }
    };
    ensure!(
        !column.is_empty()
            && column
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "'{s}' is not `none`, a column or `column + duration`"
    );
    Ok(Some(WindowEnd {
        column: column.to_string(),
        plus_ms,
    }))
}

/// Where the query's input comes from.
#[derive(Debug, Clone)]
pub enum Input {
    /// The Nexmark generator (`kind = 'nexmark'`), in this process.
    Generator(Generator),
    /// Topics `<prefix>person`, `<prefix>auction`, `<prefix>bid`, read from the earliest
    /// offset up to the latest at start.
    Kafka {
        bootstrap: String,
        topic_prefix: String,
    },
}

impl Input {
    pub fn name(&self) -> &'static str {
        match self {
            Input::Generator(_) => "generator",
            Input::Kafka { .. } => "kafka",
        }
    }
}

/// The generator's options, the same for the three tables.
#[derive(Debug, Clone)]
pub struct Generator {
    /// Nexmark events (all tables) the stream covers; `None` = unbounded.
    pub events: Option<u64>,
    /// Events per second of event time (`nexmark.event.rate`).
    pub event_rate: u64,
    pub seed: u64,
    pub partitions: usize,
    /// Paced: emit in real time at `event_rate` events per second with event time starting
    /// at this instant (epoch ms), so event time follows the wall clock. `None`: as fast as
    /// possible from the default start.
    pub paced_from_ms: Option<i64>,
}

impl Generator {
    /// The `WITH` options of `table`'s source.
    fn options(&self, table: Table) -> Vec<(String, String)> {
        let mut o = vec![
            ("kind", "nexmark".to_string()),
            ("nexmark.table", table.name().to_string()),
            ("nexmark.event.rate", self.event_rate.to_string()),
            ("seed", self.seed.to_string()),
            ("partitions", self.partitions.to_string()),
        ];
        if let Some(n) = self.events {
            o.push(("nexmark.events", n.to_string()));
        }
        match self.paced_from_ms {
            // The table's share of the events (1 : 3 : 46 of every 50), so the three
            // tables move through event time together, in step with the wall clock.
            Some(start) => {
                let share = match table {
                    Table::Person => 1,
                    Table::Auction => 3,
                    Table::Bid => 46,
                };
                let rate = (self.event_rate * share).div_ceil(50).max(1);
                o.push(("rows.per.second", rate.to_string()));
                o.push(("start", start.to_string()));
            }
            None => o.push(("rows.per.second", "0".to_string())),
        }
        o.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

/// The table's columns and watermark, as the generator contract declares them.
fn columns_with_watermark(table: Table) -> String {
    format!(
        "{}, WATERMARK FOR date_time AS date_time - INTERVAL '{}' SECOND",
        columns_sql(table),
        WATERMARK_DELAY_MS / 1000
    )
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `CREATE SOURCE` statements for the tables the query reads.
pub fn sources_sql(reads: &[Table], input: &Input) -> String {
    let run = std::process::id();
    reads
        .iter()
        .map(|&t| {
            let options: Vec<(String, String)> = match input {
                Input::Generator(g) => g.options(t),
                Input::Kafka {
                    bootstrap,
                    topic_prefix,
                } => vec![
                    ("topic".into(), format!("{topic_prefix}{}", t.name())),
                    ("format".into(), "json".into()),
                    ("bootstrap.servers".into(), bootstrap.clone()),
                    ("scan.bounded.mode".into(), "latest-offset".into()),
                    ("group.id".into(), format!("weir-bench-nexmark-{run}")),
                ],
            };
            let connector = match input {
                Input::Generator(_) => "generator",
                Input::Kafka { .. } => "kafka",
            };
            let with: Vec<String> = std::iter::once(format!("connector = '{connector}'"))
                .chain(
                    options
                        .iter()
                        .map(|(k, v)| format!("{} = {}", quote(k), quote(v))),
                )
                .collect();
            format!(
                "CREATE SOURCE {} ({}) WITH ({});\n",
                t.name(),
                columns_with_watermark(t),
                with.join(", ")
            )
        })
        .collect()
}

/// Result batches with their arrival times (epoch microseconds), as the capture sink got
/// them.
pub type Captured = Arc<Mutex<Vec<(i64, RecordBatch)>>>;

fn now_us() -> i64 {
    use weir_engine::clock::Clock;
    weir_engine::clock::SystemClock.now_us()
}

/// A sink that keeps every batch it is given, with the time it arrived.
struct CaptureFactory(Captured);

impl SinkFactory for CaptureFactory {
    fn name(&self) -> &'static str {
        CAPTURE
    }

    fn create(&self, spec: SinkSpec) -> weir_engine::Result<Box<dyn Sink>> {
        spec.options.finish("the capture sink", &[])?;
        Ok(Box::new(CaptureSink(self.0.clone())))
    }
}

struct CaptureSink(Captured);

#[async_trait]
impl Sink for CaptureSink {
    async fn write(&mut self, batch: RecordBatch, _ids: RowIds) -> weir_engine::Result<()> {
        let at = now_us();
        if let Ok(mut rows) = self.0.lock() {
            rows.push((at, batch));
        }
        Ok(())
    }

    async fn close(&mut self) -> weir_engine::Result<()> {
        Ok(())
    }
}

/// CPU time (user + system) this process has used so far, in seconds: /proc/self/stat's
/// utime and stime, which count every thread, live or finished (what getrusage's
/// RUSAGE_SELF reports), in the kernel's fixed 100 Hz USER_HZ ticks.
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the command name (which may hold spaces) start at field 3 (`state`);
    // utime and stime are fields 14 and 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return f64::NAN;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) => (u + s) / 100.0,
        _ => f64::NAN,
    }
}

/// Peak resident memory of this process (VmHWM), in MiB.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// What one run of a query measured.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Rows read from the query's sources: its Nexmark events.
    pub events: u64,
    /// Wall time of the run (the runtime's start to its end).
    pub seconds: f64,
    pub cpu_seconds: f64,
    /// Rows the result view emitted.
    pub result_rows: u64,
    /// Late rows of all the query's views, and bad records of its sources.
    pub late_rows: u64,
    pub bad_rows: u64,
}

/// Run `query` over `input` with its result going to a blackhole sink, or, with `capture`,
/// to the capture sink. Bounded inputs run until they end; with `stop_after`, the run is
/// stopped then.
pub async fn run_query(
    query: &Query,
    input: &Input,
    capture: Option<Captured>,
    stop_after: Option<Duration>,
) -> Result<RunReport> {
    // One directory per run: the tests run queries side by side in one process.
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let data_dir = std::env::temp_dir().join(format!(
        "weir-bench-nexmark-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    ));
    let mut registry = weir_connectors::registry();
    let sink = match capture {
        Some(c) => {
            registry = registry.with_sink(CaptureFactory(c));
            CAPTURE
        }
        None => "blackhole",
    };
    let mut p = Pipeline::new(
        EngineConfig {
            data_dir: data_dir.clone(),
            batch: BatchLimits::default(),
            ..EngineConfig::default()
        },
        registry,
    );
    let sources = sources_sql(&query.reads, input);
    p.execute(&sources)
        .await
        .with_context(|| format!("creating the sources:\n{sources}"))?;
    p.execute(&query.sql)
        .await
        .with_context(|| format!("benches/nexmark/{}.sql", query.name))?;
    p.execute(&format!(
        "CREATE SINK nexmark_out FROM {} WITH (connector = '{sink}')",
        query.result
    ))
    .await?;
    let objects = p.objects();
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let options = RunOptions {
        until_done: stop_after.is_none(),
        ..RunOptions::default()
    };
    let stop = async move {
        match stop_after {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    run(p, options, stop).await?;
    let seconds = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let _ = std::fs::remove_dir_all(&data_dir);
    let stats = |name: &str| {
        objects
            .iter()
            .find(|o| o.name == name)
            .map(|o| o.stats.snapshot())
    };
    let mut events = 0;
    let mut bad_rows = 0;
    for t in &query.reads {
        let s = stats(t.name()).context("source stats")?;
        events += s.rows_in;
        bad_rows += s.bad_rows;
    }
    let late_rows = objects
        .iter()
        .filter(|o| o.kind == weir_engine::sql::ObjectKind::View)
        .map(|o| o.stats.snapshot().late_rows)
        .sum();
    Ok(RunReport {
        events,
        seconds,
        cpu_seconds: cpu,
        result_rows: stats(&query.result).context("result view stats")?.rows_out,
        late_rows,
        bad_rows,
    })
}

/// A throughput run: the query over a bounded input into a blackhole sink, as one JSON
/// object.
pub async fn throughput(query: &Query, input: &Input, threads: usize) -> Result<Value> {
    let r = run_query(query, input, None, None).await?;
    ensure!(
        r.bad_rows == 0,
        "{} bad records in the input (see the dead-letter output)",
        r.bad_rows
    );
    let eps = r.events as f64 / r.seconds;
    let mut out = json!({
        "engine": "weir",
        "query": query.name,
        "source": input.name(),
        "events": r.events,
        "seconds": round3(r.seconds),
        "events_per_sec": eps.round(),
        "cpu_seconds": round3(r.cpu_seconds),
        "events_per_cpu_sec": (r.events as f64 / r.cpu_seconds).round(),
        "peak_rss_mib": round3(peak_rss_mib()),
        "result_rows": r.result_rows,
        "late_rows": r.late_rows,
        "threads": threads,
    });
    if let Input::Generator(g) = input {
        out["event_rate"] = json!(g.event_rate);
        out["partitions"] = json!(g.partitions);
    }
    Ok(out)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Each result row's window end (epoch ms), by the query's `window_end` rule.
fn window_ends(batch: &RecordBatch, rule: &WindowEnd) -> Result<Vec<i64>> {
    let col = batch
        .column_by_name(&rule.column)
        .with_context(|| format!("the result has no column '{}'", rule.column))?;
    let ms = cast(col, &DataType::Timestamp(TimeUnit::Millisecond, None))
        .with_context(|| format!("column '{}' is not a timestamp", rule.column))?;
    let ms = ms
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .context("timestamp cast")?;
    Ok((0..ms.len())
        .filter(|&i| ms.is_valid(i))
        .map(|i| ms.value(i) + rule.plus_ms)
        .collect())
}

/// A paced run: the generator at `rate` events per second with event time following the
/// wall clock, for `warmup + secs` seconds. For every window that closed after the
/// warm-up, the latency of its last result row: arrival - (window end + watermark delay),
/// the time from the moment the window could close at the earliest to its rows reaching
/// the sink.
pub async fn latency(query: &Query, rate: u64, secs: u64, warmup: u64) -> Result<Value> {
    let rule = query.window_end.clone().with_context(|| {
        format!(
            "{} is not windowed: latency from window close applies to q4, q5, q7 and q8",
            query.name
        )
    })?;
    let started_ms = chrono::Utc::now().timestamp_millis();
    let input = Input::Generator(Generator {
        events: None,
        event_rate: rate,
        seed: 42,
        partitions: 1,
        paced_from_ms: Some(started_ms),
    });
    let captured: Captured = Arc::default();
    let r = run_query(
        query,
        &input,
        Some(captured.clone()),
        Some(Duration::from_secs(warmup + secs)),
    )
    .await?;
    let measure_from = started_ms + i64::try_from(warmup)? * 1000;
    // Window end -> arrival of its last row (epoch us).
    let mut windows: BTreeMap<i64, i64> = BTreeMap::new();
    let batches = captured.lock().map_err(|_| anyhow!("capture lock"))?;
    for (at_us, batch) in batches.iter() {
        for end in window_ends(batch, &rule)? {
            let e = windows.entry(end).or_insert(*at_us);
            *e = (*e).max(*at_us);
        }
    }
    let mut lat: Vec<f64> = windows
        .iter()
        .filter(|(end, _)| **end >= measure_from)
        .map(|(end, at)| (*at as f64 / 1000.0) - (end + WATERMARK_DELAY_MS) as f64)
        .collect();
    ensure!(
        !lat.is_empty(),
        "no window closed during the {secs} s measured (after {warmup} s of warm-up)"
    );
    lat.sort_by(f64::total_cmp);
    let pct = |q: f64| round3(lat[((lat.len() - 1) as f64 * q).round() as usize]);
    Ok(json!({
        "engine": "weir",
        "query": query.name,
        "mode": "latency",
        "event_rate": rate,
        "seconds": secs,
        "warmup_seconds": warmup,
        "events": r.events,
        "events_per_sec": (r.events as f64 / r.seconds).round(),
        "cpu_seconds": round3(r.cpu_seconds),
        "windows": lat.len(),
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "peak_rss_mib": round3(peak_rss_mib()),
        "late_rows": r.late_rows,
    }))
}

/// A generator source for `table` with the run's options, outside any pipeline.
pub fn generator_source(table: Table, g: &Generator) -> Result<Box<dyn Source>> {
    let parsed = weir_engine::sql::parse_script(&format!(
        "CREATE SOURCE {} ({}) WITH (connector = 'generator')",
        table.name(),
        columns_sql(table)
    ))?;
    let Some(weir_engine::sql::WeirStatement::CreateSource(c)) =
        parsed.first().map(|s| &s.statement)
    else {
        bail!("the {} columns did not parse", table.name());
    };
    Ok(weir_connectors::registry()
        .source("generator")?
        .create(SourceSpec {
            metadata: vec![],
            name: table.name().into(),
            schema: c.schema.clone(),
            event_time: Some("date_time".into()),
            options: Options::new(g.options(table)),
            data_dir: std::env::temp_dir(),
            batch: BatchLimits::default(),
            stats: Default::default(),
            workers: 1,
            idle_timeout: weir_engine::connector::DEFAULT_IDLE_TIMEOUT,
        })?)
}

/// Every row of a bounded source.
async fn drain(mut source: Box<dyn Source>) -> Result<Vec<RecordBatch>> {
    let mut out = vec![];
    loop {
        match source.next().await? {
            SourceEvent::Batch { batch, .. } => out.push(batch),
            SourceEvent::End => return Ok(out),
            _ => {}
        }
    }
}

/// The batch SQL's answer over the generator's rows of the query's tables.
pub async fn batch_answer(query: &Query, g: &Generator) -> Result<Vec<RecordBatch>> {
    let ctx = SessionContext::new();
    for &t in &query.reads {
        let source = generator_source(t, g)?;
        let batches = drain(source).await?;
        let schema = batches
            .first()
            .map(|b| b.schema())
            .with_context(|| format!("the generator gave no {} rows", t.name()))?;
        ctx.register_table(
            t.name(),
            Arc::new(MemTable::try_new(schema, vec![batches])?),
        )?;
    }
    let df = ctx
        .sql(&query.batch_sql)
        .await
        .with_context(|| format!("benches/nexmark/batch/{}.sql", query.name))?;
    Ok(df.collect().await?)
}

/// Rows as text (`col=value` joined by `, `), sorted, with the column names.
fn rows_text(batches: &[RecordBatch]) -> Result<(Vec<String>, Vec<String>)> {
    let Some(first) = batches.first() else {
        return Ok((vec![], vec![]));
    };
    let names: Vec<String> = first
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mut rows = vec![];
    for b in batches {
        let text = b
            .columns()
            .iter()
            .map(|c| cast(c, &DataType::Utf8))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let text: Vec<&StringArray> = text.iter().map(|a| a.as_string::<i32>()).collect();
        for i in 0..b.num_rows() {
            let cells: Vec<String> = names
                .iter()
                .zip(&text)
                .map(|(n, c)| match c.is_valid(i) {
                    true => format!("{n}={}", c.value(i)),
                    false => format!("{n}=NULL"),
                })
                .collect();
            rows.push(cells.join(", "));
        }
    }
    rows.sort_unstable();
    Ok((names, rows))
}

/// The outcome of a check: the rows on each side and the differences found.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub query: &'static str,
    pub streaming_rows: usize,
    pub batch_rows: usize,
    /// Empty when the two agree; else the first differences, as text.
    pub differences: Vec<String>,
    pub late_rows: u64,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.differences.is_empty()
    }
}

/// Up to this many differing rows are listed.
const MAX_DIFFERENCES: usize = 10;

/// Compare two sorted lists of rows; the rows only in one of them, tagged `-` (expected,
/// missing from the stream) or `+` (streamed, not expected).
fn diff_sorted(expected: &[String], got: &[String]) -> Vec<String> {
    let (mut i, mut j, mut out) = (0, 0, vec![]);
    while (i < expected.len() || j < got.len()) && out.len() < MAX_DIFFERENCES {
        match (expected.get(i), got.get(j)) {
            (Some(e), Some(g)) if e == g => {
                i += 1;
                j += 1;
            }
            (Some(e), Some(g)) if e < g => {
                out.push(format!("- {e}"));
                i += 1;
            }
            (Some(e), None) => {
                out.push(format!("- {e}"));
                i += 1;
            }
            (_, Some(g)) => {
                out.push(format!("+ {g}"));
                j += 1;
            }
            (None, None) => break,
        }
    }
    out
}

/// Run `query` on a bounded generator input of `events` events, capture its result rows,
/// and compare them (sorted, as text, exactly) with the batch SQL's answer over the same
/// rows. Late rows in any view are a difference too (none are expected: the generator is
/// in order).
pub async fn check(query: &Query, events: u64, event_rate: u64) -> Result<CheckReport> {
    let g = Generator {
        events: Some(events),
        event_rate,
        seed: 42,
        partitions: 1,
        paced_from_ms: None,
    };
    let captured: Captured = Arc::default();
    let r = run_query(
        query,
        &Input::Generator(g.clone()),
        Some(captured.clone()),
        None,
    )
    .await?;
    let streamed: Vec<RecordBatch> = captured
        .lock()
        .map_err(|_| anyhow!("capture lock"))?
        .iter()
        .map(|(_, b)| b.clone())
        .collect();
    let expected = batch_answer(query, &g).await?;
    let (got_names, got) = rows_text(&streamed)?;
    let (want_names, want) = rows_text(&expected)?;
    let mut differences = vec![];
    if !got.is_empty() && !want.is_empty() && got_names != want_names {
        differences.push(format!(
            "columns differ: streaming {got_names:?}, batch {want_names:?}"
        ));
    }
    if r.late_rows > 0 {
        differences.push(format!("{} late rows", r.late_rows));
    }
    if got.len() != want.len() {
        differences.push(format!(
            "{} rows streamed, {} expected",
            got.len(),
            want.len()
        ));
    }
    differences.extend(diff_sorted(&want, &got));
    Ok(CheckReport {
        query: query.name,
        streaming_rows: got.len(),
        batch_rows: want.len(),
        differences,
        late_rows: r.late_rows,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_query_file_has_a_valid_header() {
        for name in QUERIES {
            let q = Query::get(name).unwrap();
            assert_eq!(
                q.result, name,
                "{name}: the result view is named after the query"
            );
            assert!(!q.reads.is_empty());
        }
        let q8 = Query::get("q8").unwrap();
        assert_eq!(q8.reads, vec![Table::Person, Table::Auction]);
        assert_eq!(
            q8.window_end,
            Some(WindowEnd {
                column: "stime".into(),
                plus_ms: 10_000
            })
        );
        assert_eq!(Query::get("q0").unwrap().window_end, None);
        assert!(Query::get("q6").is_err());
    }

    #[test]
    fn window_end_rules() {
        assert_eq!(parse_window_end("none").unwrap(), None);
        assert_eq!(
            parse_window_end("window_end").unwrap(),
            Some(WindowEnd {
                column: "window_end".into(),
                plus_ms: 0
            })
        );
        assert_eq!(
            parse_window_end("stime + 500ms").unwrap().unwrap().plus_ms,
            500
        );
        assert!(parse_window_end("a b").is_err());
        assert!(parse_window_end("stime + soon").is_err());
    }

    #[test]
    fn diff_lists_missing_and_extra_rows() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(diff_sorted(&s(&["a", "b"]), &s(&["a", "b"])).is_empty());
        assert_eq!(
            diff_sorted(&s(&["a", "b", "d"]), &s(&["a", "c", "d", "e"])),
            s(&["- b", "+ c", "+ e"])
        );
    }

    #[test]
    fn paced_generator_splits_the_rate_by_table() {
        let g = Generator {
            events: None,
            event_rate: 100_000,
            seed: 1,
            partitions: 2,
            paced_from_ms: Some(5),
        };
        let get = |t, k: &str| {
            g.options(t)
                .into_iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v)
        };
        assert_eq!(get(Table::Bid, "rows.per.second").as_deref(), Some("92000"));
        assert_eq!(
            get(Table::Person, "rows.per.second").as_deref(),
            Some("2000")
        );
        assert_eq!(get(Table::Auction, "start").as_deref(), Some("5"));
        assert_eq!(get(Table::Bid, "nexmark.events"), None);
    }
}
