//! weir-bench: throughput and memory benchmarks for the streaming core.
//!
//! ```text
//! weir-bench gen --format json|parquet --rows N --out FILE     input from the downloads generator
//! weir-bench throughput --input FILE --format json|parquet --threads 1|2
//! weir-bench scale --input FILE --format json|parquet [--max-workers N]   the curve, 1..N
//! weir-bench memory --groups 1000000                           open-window state size
//! weir-bench restore --groups 1000000                          checkpoint + restore time
//! weir-bench kafka-load --bootstrap HOST:PORT --topic T --partitions 8 --input FILE.jsonl
//! weir-bench nexmark-gen --events N [--event-rate R] [--seed S] [--partitions P] [--out DIR]
//!                                                              Nexmark tables as JSON lines
//! weir-bench nexmark --query q5 --events N [--event-rate R] [--source generator|kafka]
//!                    [--threads 1] [--partitions P]                one Nexmark query, JSON line
//! weir-bench nexmark --query q5 --latency-rate R --secs S          window-close latency
//! weir-bench nexmark --query q5 --check [--events N]               vs batch DataFusion
//! weir-bench kafka-throughput --bootstrap HOST:PORT --topic T --threads 1|2
//! weir-bench kafka-sink --bootstrap HOST:PORT --input FILE.parquet --threads 1
//! weir-bench cluster --topic T --input FILE.jsonl --members 0|1|2|3 [--kill-after S] [--open-groups]
//!                                                              weir alone or as a cluster
//! weir-bench ws-latency --rate 100000 --secs 60               window close -> WebSocket client
//! weir-bench ws-fanout --subscribers 1000 --rows 30000000     many subscribers on one view
//! weir-bench pg-upsert --rows 2000000 --batch-rows 50000 [--url URL]   Postgres sink upserts
//! benches/rest-load.sh                                          GET .../rows under wrk
//! weir-bench soak [--minutes 10] [--pipeline generator|file] [--demo] [--max-growth-mib 5]
//!                                                              RSS of `weir run` over time
//! ```
//! Figures go to BENCHMARKS.md with the machine and the command.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use datafusion::arrow::array::{ArrayRef, Float64Array, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use weir_benches::nexmark::{self, peak_rss_mib};
use weir_engine::pipeline::{EngineConfig, Pipeline};
use weir_engine::runtime::{RunOptions, run};

/// mimalloc keeps freed pages for reuse, where glibc malloc hands each micro-batch's column
/// buffers back to the kernel and faults fresh pages in for the next (docs/nexmark.md,
/// "Generator figures"). Off without the `mimalloc` feature (`--no-default-features`), for
/// heap profilers that interpose malloc (BENCHMARKS.md, "Profiling memory").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cluster;
mod inputs;
mod lake;
mod nexmark_gen;
mod pg;
mod scale;
mod serve;
mod soak;
mod updating;

#[derive(Parser)]
#[command(name = "weir-bench", about = "Weir benchmarks; see BENCHMARKS.md")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Memory over time: run the release `weir` binary as a child process for N minutes,
    /// print its RSS (from /proc) every --interval-secs, then RSS at start, after the
    /// warm-up and at the end and the growth after the warm-up (MiB, MiB/min); exit
    /// non-zero when that growth exceeds --max-growth-mib. Default pipeline: a generator
    /// at --rate rows/s into a 1-minute TUMBLE view (8 groups) into a blackhole sink.
    /// See BENCHMARKS.md, "Soak (memory over time)".
    Soak(soak::SoakArgs),
    /// Latency from a window closing to its rows reaching a WebSocket subscriber.
    WsLatency {
        /// Generator events per second (event time follows the wall clock).
        #[arg(long, default_value_t = 100_000)]
        rate: u64,
        /// Seconds measured (after 3 s of warm-up).
        #[arg(long, default_value_t = 60)]
        secs: u64,
        /// Tumbling window size, milliseconds.
        #[arg(long, default_value_t = 1000)]
        window_ms: u64,
        /// [engine] batch_delay: how long a source batch may wait to fill.
        #[arg(long, default_value_t = 50)]
        batch_delay_ms: u64,
    },
    /// Many WebSocket subscribers on one view while a fast bounded source runs.
    WsFanout {
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        #[arg(long, default_value_t = 30_000_000)]
        rows: u64,
        /// Tumbling window size in event-time seconds (1000 rows per second of event time).
        #[arg(long, default_value_t = 60)]
        window_secs: u64,
    },
    /// Many WebSocket subscribers each following a few of the ticks stream's 12 symbols,
    /// through filtered subscriptions (`--filtered`) or taking every row.
    WsRooms {
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        #[arg(long, default_value_t = 2)]
        follow: usize,
        #[arg(long)]
        filtered: bool,
        /// Ticks per second (event time follows the wall clock).
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
        #[arg(long, default_value_t = 20)]
        secs: u64,
    },
    /// Events posted to an `http` source by concurrent clients, each waiting for its
    /// durable acknowledgement.
    HttpIngest {
        #[arg(long, default_value_t = 8)]
        clients: usize,
        #[arg(long, default_value_t = 500)]
        batch: usize,
        #[arg(long, default_value_t = 20)]
        secs: u64,
        /// A Kafka cluster (default: the embedded broker).
        #[arg(long)]
        bootstrap: Option<String>,
    },
    /// The webhook sink to a local receiver: rows/s, then (with --down-secs) a receiver
    /// outage: memory and every row delivered once it is back.
    Webhook {
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        #[arg(long, default_value_t = 5_000)]
        rate: u64,
        #[arg(long, default_value_t = 30)]
        secs: u64,
        #[arg(long, default_value_t = 0)]
        down_secs: u64,
        #[arg(long, default_value_t = 12)]
        retry_max: u32,
    },
    /// Pre-built windowed-view batches straight into the Postgres sink: inserts into an
    /// empty table, then updates of the same keys, against a plain binary COPY baseline.
    PgUpsert {
        #[arg(long, default_value_t = 2_000_000)]
        rows: u64,
        /// The sink's `batch.rows`: rows per transaction.
        #[arg(long, default_value_t = 50_000)]
        batch_rows: usize,
        /// Default: $WEIR_POSTGRES_URL, else scripts/postgres.sh's
        /// postgres://weir@127.0.0.1:15432/weir.
        #[arg(long)]
        url: Option<String>,
    },
    /// Write N download events (from the built-in generator) as JSON lines or Parquet;
    /// `--format json-nested` writes the same events as nested JSON (`content`, `client`
    /// and `result` objects), for `throughput --format json-nested`.
    Gen {
        #[arg(long, default_value = "json")]
        format: String,
        #[arg(long, default_value_t = 5_000_000)]
        rows: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// File source -> per-minute region-health view -> blackhole, timed. `--format`:
    /// `json`, `parquet`, or `json-nested` (a file from `gen --format json-nested`, read as
    /// STRUCT columns by the same view over their fields). `--view count`: count windows
    /// of 100 downloads per content id instead (flat input only).
    Throughput {
        #[arg(long)]
        input: PathBuf,
        #[arg(long, default_value = "json")]
        format: String,
        /// `health` (a 1-minute TUMBLE per region) or `count` (COUNT_WINDOW per content).
        #[arg(long, default_value = "health")]
        view: String,
        /// Tokio worker threads (cores used).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value_t = 8192)]
        batch_rows: usize,
    },
    /// The throughput curve over 1..N workers: `throughput` (`--input`) or `nexmark`
    /// (`--query`) once per worker count, each run pinned to that many cores with taskset.
    Scale(scale::ScaleArgs),
    /// An updating view (GROUP BY without a window) over N keys: events/s, changes
    /// emitted, state bytes per key, memory. See BENCHMARKS.md, "Updating views".
    Updating(updating::UpdatingArgs),
    /// The data-lake sinks (Parquet on local disk, Parquet on S3, Iceberg): rows/s and
    /// the time of each checkpoint's pre-commit and commit. See BENCHMARKS.md, "The data
    /// lake".
    Lake(lake::LakeArgs),
    /// Fill open windows with N distinct groups and report the process's memory.
    Memory {
        #[arg(long, default_value_t = 1_000_000)]
        groups: u64,
    },
    /// Checkpoint N open groups and restore them into a new pipeline, timed.
    Restore {
        #[arg(long, default_value_t = 1_000_000)]
        groups: u64,
    },
    /// Create a topic and load it with the lines of a JSON-lines file (round robin over
    /// partitions), timed.
    KafkaLoad {
        #[arg(long, default_value = "127.0.0.1:19092")]
        bootstrap: String,
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 8)]
        partitions: i32,
        #[arg(long)]
        input: PathBuf,
    },
    /// The Nexmark generator's person, auction and bid tables as DIR/<table>.jsonl (one
    /// JSON object per row, timestamps as epoch milliseconds); without --out, time the
    /// generation of each table instead. See docs/nexmark.md.
    NexmarkGen {
        /// Nexmark events (all three tables) the files cover.
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
        /// Events per second of event time.
        #[arg(long, default_value_t = 10_000)]
        event_rate: u64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// The Kafka partitions the files will be loaded into (printed in the kafka-load
        /// commands); when timing, the generator's partitions.
        #[arg(long, default_value_t = 1)]
        partitions: usize,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// One Nexmark query (benches/nexmark/qN.sql) over the generator or the Kafka topics
    /// into a blackhole sink, timed: one JSON line. With --latency-rate, a paced run
    /// measuring window-close latency instead; with --check, a correctness check against
    /// benches/nexmark/batch/qN.sql. See docs/nexmark.md.
    Nexmark {
        /// q0, q1, q2, q3, q4, q5, q7 or q8.
        #[arg(long)]
        query: String,
        /// Nexmark events (all three tables) the generator produces; default 10,000,000
        /// (--check: 200,000).
        #[arg(long)]
        events: Option<u64>,
        /// Events per second of event time (the generator's nexmark.event.rate); default
        /// 100,000 (--check: 10,000, so that a short run spans several windows).
        #[arg(long)]
        event_rate: Option<u64>,
        /// generator (in this process) or kafka (topics nexmark-person/-auction/-bid, read
        /// up to the latest offsets at start).
        #[arg(long, default_value = "generator")]
        source: String,
        #[arg(long, default_value = "127.0.0.1:19092")]
        bootstrap: String,
        #[arg(long, default_value = "nexmark-")]
        topic_prefix: String,
        /// Tokio worker threads: the cores the whole run (sources and pipeline) uses.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// The generator's partitions.
        #[arg(long, default_value_t = 1)]
        partitions: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Latency run: the generator paced at this many events per second, event time
        /// following the wall clock (windowed queries: q4, q5, q7, q8).
        #[arg(long)]
        latency_rate: Option<u64>,
        /// Latency run: seconds measured, after --warmup seconds.
        #[arg(long, default_value_t = 60)]
        secs: u64,
        #[arg(long, default_value_t = 15)]
        warmup: u64,
        /// Compare the result rows with the batch SQL over the same generator rows; exits
        /// non-zero on a difference.
        #[arg(long)]
        check: bool,
        /// Run this file's SQL instead of the compiled-in benches/nexmark/QUERY.sql (same
        /// header lines), e.g. to try another formulation.
        #[arg(long)]
        sql_file: Option<PathBuf>,
    },
    /// The release `weir` binary alone (`--members 0`) or as a cluster of N members on
    /// this machine over a pre-loaded topic (the region-health view), timed until every
    /// window's row is served; `--input` is the file loaded (for the expected rows);
    /// `--kill-after S` SIGKILLs the last member S seconds in and reports the failover time.
    Cluster {
        #[arg(long, default_value = "127.0.0.1:19092")]
        bootstrap: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        input: PathBuf,
        #[arg(long, default_value_t = 0)]
        members: usize,
        /// The `weir` binary (default: next to this one).
        #[arg(long)]
        weir: Option<PathBuf>,
        #[arg(long)]
        kill_after: Option<f64>,
        /// Also run a view with one open group per event (a one-day window keyed by
        /// event_id), so a failover restores a large state; reports what the successors
        /// restored after the kill.
        #[arg(long)]
        open_groups: bool,
    },
    /// Pre-loaded topic -> per-minute region-health view -> blackhole, timed (the source is
    /// bounded at the offsets present when it starts).
    KafkaThroughput {
        #[arg(long, default_value = "127.0.0.1:19092")]
        bootstrap: String,
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value_t = 8192)]
        batch_rows: usize,
    },
    /// Parquet file -> stateless view -> Kafka sink (JSON), timed until every message is
    /// acknowledged.
    KafkaSink {
        #[arg(long, default_value = "127.0.0.1:19092")]
        bootstrap: String,
        #[arg(long)]
        input: PathBuf,
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

const DOWNLOADS_DDL: &str = "event_id TEXT NOT NULL, ts TIMESTAMP NOT NULL, content_id TEXT, \
    content_type TEXT, region TEXT, device_type TEXT, status TEXT, duration_seconds DOUBLE, \
    speed_mbps DOUBLE, error_code TEXT";

/// The download events as nested JSON: the same values in three objects.
const NESTED_DDL: &str = "event_id TEXT NOT NULL, ts TIMESTAMP NOT NULL, \
    content STRUCT<id TEXT, type TEXT>, client STRUCT<region TEXT, device_type TEXT>, \
    result STRUCT<status TEXT, duration_seconds DOUBLE, speed_mbps DOUBLE, error_code TEXT>";

/// [`HEALTH_VIEW`] over [`NESTED_DDL`]'s fields.
const NESTED_HEALTH_VIEW: &str = "CREATE MATERIALIZED VIEW region_health AS \
    SELECT window_start, window_end, client.region AS region, count(*) AS downloads, \
    count(*) FILTER (WHERE result.status = 'failed') AS failures, \
    avg(result.speed_mbps) AS avg_speed_mbps, max(result.duration_seconds) AS max_duration_s \
    FROM TUMBLE(downloads, ts, INTERVAL '1' MINUTE) \
    GROUP BY window_start, window_end, client.region; \
    CREATE SINK out FROM region_health WITH (connector = 'blackhole');";

const HEALTH_VIEW: &str = "CREATE MATERIALIZED VIEW region_health AS \
    SELECT window_start, window_end, region, count(*) AS downloads, \
    count(*) FILTER (WHERE status = 'failed') AS failures, avg(speed_mbps) AS avg_speed_mbps, \
    max(duration_seconds) AS max_duration_s \
    FROM TUMBLE(downloads, ts, INTERVAL '1' MINUTE) GROUP BY window_start, window_end, region; \
    CREATE SINK out FROM region_health WITH (connector = 'blackhole');";

/// Count windows: each content's downloads in hundreds, by time (the view keeps the name
/// the stats are read by).
const COUNT_VIEW: &str = "CREATE MATERIALIZED VIEW region_health AS \
    SELECT content_id, window_index, count(*) AS downloads, avg(speed_mbps) AS avg_speed_mbps, \
    max(duration_seconds) AS max_duration_s \
    FROM COUNT_WINDOW(downloads, content_id, ts, 100) GROUP BY content_id, window_index; \
    CREATE SINK out FROM region_health WITH (connector = 'blackhole');";

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

async fn throughput(
    input: PathBuf,
    format: &str,
    view: &str,
    batch_rows: usize,
    workers: usize,
) -> Result<()> {
    // `json-nested`: the same events and view, read from nested JSON.
    let (ddl, view, format) = match (format, view) {
        ("json-nested", "health") => (NESTED_DDL, NESTED_HEALTH_VIEW, "json"),
        (other, "health") => (DOWNLOADS_DDL, HEALTH_VIEW, other),
        (other, "count") if other != "json-nested" => (DOWNLOADS_DDL, COUNT_VIEW, other),
        _ => bail!("--view is health or count (count over flat input)"),
    };
    let sql = format!(
        "CREATE SOURCE downloads ({ddl}, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) \
         WITH (connector = 'file', path = '{}', format = '{format}'); {view}",
        input.display()
    );
    let mut p = Pipeline::new(
        EngineConfig {
            data_dir: std::env::temp_dir().join("weir-bench"),
            batch: weir_engine::connector::BatchLimits {
                max_rows: batch_rows,
                ..Default::default()
            },
            workers,
            ..EngineConfig::default()
        },
        weir_connectors::registry(),
    );
    p.execute(&sql).await?;
    let objects = p.objects();
    let start = Instant::now();
    run(
        p,
        RunOptions {
            until_done: true,
            ..RunOptions::default()
        },
        std::future::pending(),
    )
    .await?;
    let secs = start.elapsed().as_secs_f64();
    let source = objects
        .iter()
        .find(|o| o.name == "downloads")
        .context("source stats")?
        .stats
        .snapshot();
    let view = objects
        .iter()
        .find(|o| o.name == "region_health")
        .context("view stats")?
        .stats
        .snapshot();
    println!(
        "events={} secs={secs:.3} events_per_sec={:.0} result_rows={} late={} bad={} peak_rss_mib={:.0}",
        source.rows_in,
        source.rows_in as f64 / secs,
        view.rows_out,
        view.late_rows,
        source.bad_rows,
        peak_rss_mib()
    );
    Ok(())
}

/// The per-content view over the downloads generator, with nothing pushed yet.
async fn per_content_pipeline() -> Result<Pipeline> {
    let mut p = Pipeline::new(EngineConfig::default(), weir_connectors::registry());
    p.execute(&format!(
        "CREATE SOURCE downloads ({DOWNLOADS_DDL}, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) \
         WITH (connector = 'generator', kind = 'downloads'); \
         CREATE MATERIALIZED VIEW per_content AS SELECT window_start, window_end, content_id, \
         count(*) AS downloads, count(*) FILTER (WHERE status = 'failed') AS failures, \
         avg(speed_mbps) AS avg_speed, max(duration_seconds) AS max_duration \
         FROM TUMBLE(downloads, ts, INTERVAL '1' HOUR) GROUP BY window_start, window_end, content_id;"
    ))
    .await?;
    Ok(p)
}

async fn memory(groups: u64) -> Result<()> {
    let mut p = per_content_pipeline().await?;
    let before = rss_mib();
    fill_groups(&mut p, groups).await?;
    let obj = p
        .objects()
        .into_iter()
        .find(|o| o.name == "per_content")
        .context("view")?;
    let s = obj.stats.snapshot();
    println!(
        "groups={} open_windows={} state_bytes_estimate_mib={:.0} rss_before_mib={before:.0} rss_after_mib={:.0} peak_rss_mib={:.0}",
        s.open_groups,
        s.open_windows,
        s.state_bytes as f64 / 1048576.0,
        rss_mib(),
        peak_rss_mib()
    );
    Ok(())
}

/// Push `groups` rows with distinct content ids into one open one-hour window.
async fn fill_groups(p: &mut Pipeline, groups: u64) -> Result<()> {
    let schema = p.source_schema("downloads").context("schema")?;
    let chunk = 65_536u64;
    let mut i = 0u64;
    while i < groups {
        let n = chunk.min(groups - i);
        let ids: Vec<String> = (i..i + n).map(|k| format!("content-{k:08}")).collect();
        let cols: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| -> ArrayRef {
                match (f.name().as_str(), f.data_type()) {
                    ("ts", _) => Arc::new(TimestampMillisecondArray::from(vec![
                            1_714_521_600_000i64;
                            n as usize
                        ])),
                    ("content_id", _) => Arc::new(StringArray::from(ids.clone())),
                    ("event_id", _) => Arc::new(StringArray::from(ids.clone())),
                    ("status", _) => Arc::new(StringArray::from(vec!["success"; n as usize])),
                    (_, DataType::Float64) => Arc::new(Float64Array::from(vec![1.5; n as usize])),
                    _ => datafusion::arrow::array::new_null_array(f.data_type(), n as usize),
                }
            })
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), cols)?;
        p.push_at("downloads", 0, batch, 0, Some((i + n) as i64))
            .await?;
        i += n;
    }
    Ok(())
}

/// Checkpoint a pipeline holding `groups` open groups, then restore it into a new one:
/// snapshot, write and restore times, and the bytes on disk. The restored pipeline must
/// hold the same groups and, when its window closes, emit one row per group.
async fn restore(groups: u64) -> Result<()> {
    use weir_engine::checkpoint::CheckpointStore;
    let dir = tempfile_dir("restore")?;
    let store = CheckpointStore::new(&dir, 1);
    let mut p = per_content_pipeline().await?;
    fill_groups(&mut p, groups).await?;
    let t = Instant::now();
    let snapshot = p.snapshot().await?;
    let snap_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    let bytes = store.write(1, snapshot, Default::default(), 0)?;
    let write_ms = t.elapsed().as_secs_f64() * 1000.0;
    drop(p);

    let mut q = per_content_pipeline().await?;
    let t = Instant::now();
    let r = store.latest()?.context("no checkpoint written")?;
    let report = q.restore(&r)?;
    let restore_ms = t.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(
        report.open_groups == groups,
        "restored {} groups, expected {groups}",
        report.open_groups
    );
    let out = q.end_source("downloads").await?;
    let rows: usize = out
        .iter()
        .filter(|o| o.view == "per_content")
        .map(|o| o.batch.num_rows())
        .sum();
    anyhow::ensure!(
        rows as u64 == groups,
        "emitted {rows} rows after the restore, expected {groups}"
    );
    println!(
        "groups={groups} snapshot_ms={snap_ms:.0} write_ms={write_ms:.0} checkpoint_mib={:.1} restore_ms={restore_ms:.0} (read + merge into new accumulators) rows_after_restore={rows} peak_rss_mib={:.0}",
        bytes as f64 / 1048576.0,
        peak_rss_mib()
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir(name: &str) -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("weir-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

async fn kafka_load(bootstrap: &str, topic: &str, partitions: i32, input: &Path) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    // Streamed line by line: the Nexmark bid file of a long run is gigabytes.
    let file =
        std::fs::File::open(input).with_context(|| format!("reading {}", input.display()))?;
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    for r in admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
    }
    let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            // Without idempotence a retried produce request can land after later ones:
            // a partition's events would then be out of event-time order (seen: 25 s
            // back on 3 of 8 partitions under load), and readers would see late rows.
            .set("enable.idempotence", "true")
            .set("linger.ms", "20")
            .set("batch.size", "1000000")
            .set("compression.type", "lz4")
            .set("queue.buffering.max.messages", "1000000")
            .create()?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::with_capacity(4096);
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        line.clear();
        if std::io::BufRead::read_until(&mut reader, b'\n', &mut line)
            .with_context(|| format!("reading {}", input.display()))?
            == 0
        {
            break;
        }
        let payload = line.strip_suffix(b"\n").unwrap_or(&line);
        if payload.is_empty() {
            continue;
        }
        let mut rec: BaseRecord<'_, (), [u8]> = BaseRecord::to(topic)
            .partition((n % partitions as u64) as i32)
            .payload(payload);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
        n += 1;
    }
    producer.flush(std::time::Duration::from_secs(300))?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "loaded={n} topic={topic} partitions={partitions} secs={secs:.3} msgs_per_sec={:.0}",
        n as f64 / secs
    );
    Ok(())
}

async fn kafka_throughput(bootstrap: &str, topic: &str, batch_rows: usize) -> Result<()> {
    let sql = format!(
        "CREATE SOURCE downloads ({DOWNLOADS_DDL}, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) \
         WITH (connector = 'kafka', topic = '{topic}', format = 'json', \
         'bootstrap.servers' = '{bootstrap}', 'scan.bounded.mode' = 'latest-offset', \
         'group.id' = 'weir-bench-{}'); {HEALTH_VIEW}",
        std::process::id()
    );
    let (events, secs, view_rows, late, bad) = timed_run(&sql, batch_rows, "downloads").await?;
    println!(
        "events={events} secs={secs:.3} events_per_sec={:.0} result_rows={view_rows} late={late} bad={bad} peak_rss_mib={:.0}",
        events as f64 / secs,
        peak_rss_mib()
    );
    Ok(())
}

async fn kafka_sink(bootstrap: &str, input: &Path) -> Result<()> {
    let topic = format!("weir-bench-sink-{}", std::process::id());
    let sql = format!(
        "CREATE SOURCE downloads ({DOWNLOADS_DDL}) \
         WITH (connector = 'file', path = '{}', format = 'parquet'); \
         CREATE MATERIALIZED VIEW passthrough AS SELECT * FROM downloads; \
         CREATE SINK out FROM passthrough WITH (connector = 'kafka', topic = '{topic}', \
         'bootstrap.servers' = '{bootstrap}', format = 'json');",
        input.display()
    );
    let (rows, secs, ..) = timed_run(&sql, 8192, "downloads").await?;
    println!(
        "rows={rows} topic={topic} secs={secs:.3} rows_per_sec={:.0} peak_rss_mib={:.0}",
        rows as f64 / secs,
        peak_rss_mib()
    );
    Ok(())
}

/// Run `sql` until every source ends; returns (source rows, seconds, rows out of the
/// first view, late rows, bad rows).
async fn timed_run(
    sql: &str,
    batch_rows: usize,
    source: &str,
) -> Result<(u64, f64, u64, u64, u64)> {
    let mut p = Pipeline::new(
        EngineConfig {
            data_dir: std::env::temp_dir().join("weir-bench"),
            batch: weir_engine::connector::BatchLimits {
                max_rows: batch_rows,
                ..Default::default()
            },
            ..EngineConfig::default()
        },
        weir_connectors::registry(),
    );
    p.execute(sql).await?;
    let objects = p.objects();
    let start = Instant::now();
    run(
        p,
        RunOptions {
            until_done: true,
            ..RunOptions::default()
        },
        std::future::pending(),
    )
    .await?;
    let secs = start.elapsed().as_secs_f64();
    let src = objects
        .iter()
        .find(|o| o.name == source)
        .context("source stats")?
        .stats
        .snapshot();
    let view = objects
        .iter()
        .find(|o| o.name != source)
        .map(|o| o.stats.snapshot());
    Ok((
        src.rows_in,
        secs,
        view.as_ref().map_or(0, |v| v.rows_out),
        view.as_ref().map_or(0, |v| v.late_rows),
        src.bad_rows,
    ))
}

/// `nexmark --check`: OK, or the differences and a non-zero exit.
async fn nexmark_check(query: &nexmark::Query, events: u64, event_rate: u64) -> Result<()> {
    let r = nexmark::check(query, events, event_rate).await?;
    if r.ok() {
        println!(
            "OK {}: {} result rows over {events} events equal the batch answer",
            r.query, r.streaming_rows
        );
        return Ok(());
    }
    println!(
        "DIFFERENT {}: {} rows streamed, {} expected; first differences (- expected only, + streamed only):",
        r.query, r.streaming_rows, r.batch_rows
    );
    for d in &r.differences {
        println!("  {d}");
    }
    bail!("{} does not match its batch answer", r.query)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // The serving benchmarks run `weir run` on a runtime of their own.
    match cli.cmd {
        Cmd::WsLatency {
            rate,
            secs,
            window_ms,
            batch_delay_ms,
        } => return serve::ws_latency(rate, secs, window_ms, batch_delay_ms),
        Cmd::WsFanout {
            subscribers,
            rows,
            window_secs,
        } => return serve::ws_fanout(subscribers, rows, window_secs),
        Cmd::WsRooms {
            subscribers,
            follow,
            filtered,
            rate,
            secs,
        } => return serve::ws_rooms(subscribers, follow, filtered, rate, secs),
        Cmd::HttpIngest {
            clients,
            batch,
            secs,
            bootstrap,
        } => return serve::http_ingest(clients, batch, secs, bootstrap),
        Cmd::Webhook {
            rows,
            rate,
            secs,
            down_secs,
            retry_max,
        } => return serve::webhook(rows, rate, secs, down_secs, retry_max),
        Cmd::Scale(args) => return scale::scale(args),
        Cmd::Soak(args) => {
            let passed = soak::soak(args)?;
            if !passed {
                std::process::exit(1);
            }
            return Ok(());
        }
        _ => {}
    }
    let threads = match &cli.cmd {
        Cmd::Throughput { threads, .. }
        | Cmd::KafkaThroughput { threads, .. }
        | Cmd::KafkaSink { threads, .. }
        | Cmd::Nexmark { threads, .. } => (*threads).max(1),
        _ => 2,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .max_blocking_threads(threads)
        // As weir's own runtime: statements up to the depth limit plan on these threads.
        .thread_stack_size(weir_engine::sql::depth::STACK_SIZE)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Gen { format, rows, out } => inputs::generate(&format, rows, out).await,
            Cmd::Throughput {
                input,
                format,
                view,
                batch_rows,
                ..
            } => throughput(input, &format, &view, batch_rows, threads).await,
            Cmd::Memory { groups } => memory(groups).await,
            Cmd::Updating(args) => updating::run(args).await,
            Cmd::Lake(args) => lake::run(args).await,
            Cmd::Restore { groups } => restore(groups).await,
            Cmd::KafkaLoad {
                bootstrap,
                topic,
                partitions,
                input,
            } => kafka_load(&bootstrap, &topic, partitions, &input).await,
            Cmd::KafkaThroughput {
                bootstrap,
                topic,
                batch_rows,
                ..
            } => kafka_throughput(&bootstrap, &topic, batch_rows).await,
            Cmd::Cluster {
                bootstrap,
                topic,
                input,
                members,
                weir,
                kill_after,
                open_groups,
            } => {
                let weir = match weir {
                    Some(w) => w,
                    None => std::env::current_exe()?.with_file_name("weir"),
                };
                let o = cluster::Options {
                    bootstrap,
                    topic,
                    input,
                    members,
                    weir,
                    kill_after,
                    open_groups,
                };
                tokio::task::spawn_blocking(move || cluster::run(o)).await?
            }
            Cmd::NexmarkGen {
                events,
                event_rate,
                seed,
                partitions,
                out,
            } => {
                nexmark_gen::nexmark_gen(nexmark_gen::NexmarkGenArgs {
                    events,
                    event_rate,
                    seed,
                    partitions: partitions.max(1),
                    out,
                })
                .await
            }
            Cmd::Nexmark {
                query,
                events,
                event_rate,
                source,
                bootstrap,
                topic_prefix,
                threads,
                partitions,
                seed,
                latency_rate,
                secs,
                warmup,
                check,
                sql_file,
            } => {
                let query = match sql_file {
                    Some(f) => nexmark::Query::from_file(&query, &f)?,
                    None => nexmark::Query::get(&query)?,
                };
                if check {
                    let rate = event_rate.unwrap_or(10_000);
                    return nexmark_check(&query, events.unwrap_or(200_000), rate).await;
                }
                let event_rate = event_rate.unwrap_or(100_000);
                if let Some(rate) = latency_rate {
                    let out = nexmark::latency(&query, rate, secs, warmup).await?;
                    println!("{out}");
                    return Ok(());
                }
                let input = match source.as_str() {
                    "generator" => nexmark::Input::Generator(nexmark::Generator {
                        events: Some(events.unwrap_or(10_000_000)),
                        event_rate,
                        seed,
                        partitions: partitions.max(1),
                        paced_from_ms: None,
                    }),
                    "kafka" => nexmark::Input::Kafka {
                        bootstrap,
                        topic_prefix,
                    },
                    other => bail!("--source must be generator or kafka, got '{other}'"),
                };
                println!("{}", nexmark::throughput(&query, &input, threads).await?);
                Ok(())
            }
            Cmd::KafkaSink {
                bootstrap, input, ..
            } => kafka_sink(&bootstrap, &input).await,
            Cmd::PgUpsert {
                rows,
                batch_rows,
                url,
            } => pg::pg_upsert(rows, batch_rows, url).await,
            Cmd::WsLatency { .. }
            | Cmd::WsFanout { .. }
            | Cmd::WsRooms { .. }
            | Cmd::HttpIngest { .. }
            | Cmd::Webhook { .. }
            | Cmd::Soak(_)
            | Cmd::Scale(_) => Ok(()),
        }
    })
}
