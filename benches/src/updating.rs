//! `weir-bench updating`: an updating view (`GROUP BY content_id` without a window) over N
//! keys, fed pre-built download batches straight into the pipeline (no source task, no
//! decoding): events/s through the view, the changes it emits, its state per key, and the
//! process's memory. The first pass touches every key once (inserts); the events after
//! fall on random keys (updates). See BENCHMARKS.md, "Updating views".

use crate::{DOWNLOADS_DDL, peak_rss_mib};
use anyhow::{Context, Result};
use datafusion::arrow::array::{ArrayRef, Float64Array, StringArray, TimestampMillisecondArray};
use datafusion::arrow::record_batch::RecordBatch;
use std::sync::Arc;
use std::time::Instant;
use weir_engine::connector::{Sink, SinkSpec};
use weir_engine::options::Options;
use weir_engine::pipeline::{EngineConfig, Pipeline};
use weir_engine::stats::Stats;

#[derive(clap::Args)]
pub struct UpdatingArgs {
    /// Distinct keys (content ids).
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Events in all; the first `keys` cover every key once.
    #[arg(long, default_value_t = 5_000_000)]
    events: u64,
    /// Rows per micro-batch.
    #[arg(long, default_value_t = 8192)]
    batch_rows: usize,
    /// The view's 'retention.rows': the current rows the serving layer keeps for REST
    /// and WebSocket readers (0: none, the view's own work alone).
    #[arg(long, default_value_t = 100_000)]
    retention_rows: usize,
    /// Also write the view's changes into a Postgres sink at this URL (table
    /// weir_bench_updating, dropped first) and time the sink's work apart: its upserts and
    /// deletes per second.
    #[arg(long)]
    postgres: Option<String>,
    /// With --postgres: the sink's `batch.rows` (rows per transaction).
    #[arg(long, default_value_t = 50_000)]
    pg_batch_rows: usize,
}

/// The Postgres sink of `--postgres`, as CREATE SINK would make it for the view.
async fn pg_sink(p: &Pipeline, url: &str, batch_rows: usize) -> Result<Box<dyn Sink>> {
    use sqlx::Connection;
    let mut conn = sqlx::postgres::PgConnection::connect(url)
        .await
        .with_context(|| format!("connecting to {url} (scripts/postgres.sh start)"))?;
    sqlx::raw_sql("DROP TABLE IF EXISTS weir_bench_updating")
        .execute(&mut conn)
        .await?;
    let view = p
        .objects()
        .into_iter()
        .find(|o| o.name == "per_content")
        .context("view")?;
    let spec = SinkSpec {
        name: "bench_updating".into(),
        view: "per_content".into(),
        schema: view.schema.clone(),
        key_columns: view.key.clone(),
        never_null: vec![],
        changelog: true,
        options: Options::new([
            ("url".to_string(), url.to_string()),
            ("table".to_string(), "weir_bench_updating".to_string()),
            ("batch.rows".to_string(), batch_rows.to_string()),
        ]),
        data_dir: std::env::temp_dir(),
        stats: Arc::new(Stats::default()),
        checkpointed: false,
    };
    let mut sink = weir_connectors::registry().sink("postgres")?.create(spec)?;
    sink.recover(None).await?;
    Ok(sink)
}

/// SplitMix64, fixed seed: the same keys every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

pub const VIEW: &str = "CREATE MATERIALIZED VIEW per_content WITH ('retention.rows' = '{retention}') \
    AS SELECT content_id, count(*) AS downloads, count(*) FILTER (WHERE status = 'failed') AS failures, \
    avg(speed_mbps) AS avg_speed, max(duration_seconds) AS max_duration \
    FROM downloads GROUP BY content_id";

/// A pipeline with the `downloads` source (pushed to directly) and the updating view.
pub async fn pipeline(retention_rows: usize) -> Result<Pipeline> {
    let mut p = Pipeline::new(EngineConfig::default(), weir_connectors::registry());
    let view = VIEW.replace("{retention}", &retention_rows.to_string());
    p.execute(&format!(
        "CREATE SOURCE downloads ({DOWNLOADS_DDL}, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) \
         WITH (connector = 'generator', kind = 'downloads'); {view};"
    ))
    .await?;
    Ok(p)
}

/// The event batches: every key once in order, then random keys.
pub fn batches(
    p: &Pipeline,
    keys: u64,
    events: u64,
    batch_rows: usize,
) -> Result<Vec<RecordBatch>> {
    let schema = p.source_schema("downloads").context("schema")?;
    let mut rng = Rng(42);
    let mut out = Vec::new();
    let mut i = 0u64;
    while i < events {
        let n = (batch_rows as u64).min(events - i) as usize;
        let ids: Vec<String> = (i..i + n as u64)
            .map(|e| {
                let k = if e < keys { e } else { rng.below(keys) };
                format!("content-{k:08}")
            })
            .collect();
        let status: Vec<&str> = (0..n)
            .map(|j| {
                if (i as usize + j).is_multiple_of(7) {
                    "failed"
                } else {
                    "success"
                }
            })
            .collect();
        let values: Vec<f64> = (0..n)
            .map(|j| ((i as usize + j) % 97) as f64 * 0.5)
            .collect();
        let cols: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| -> ArrayRef {
                match f.name().as_str() {
                    "ts" => Arc::new(TimestampMillisecondArray::from_iter_values(
                        (i..i + n as u64).map(|e| 1_714_521_600_000 + e as i64),
                    )),
                    "content_id" | "event_id" => Arc::new(StringArray::from(ids.clone())),
                    "status" => Arc::new(StringArray::from(status.clone())),
                    "speed_mbps" | "duration_seconds" => {
                        Arc::new(Float64Array::from(values.clone()))
                    }
                    _ => datafusion::arrow::array::new_null_array(f.data_type(), n),
                }
            })
            .collect();
        out.push(RecordBatch::try_new(schema.clone(), cols)?);
        i += n as u64;
    }
    Ok(out)
}

pub async fn run(args: UpdatingArgs) -> Result<()> {
    let mut p = pipeline(args.retention_rows).await?;
    let input = batches(&p, args.keys, args.events, args.batch_rows)?;
    let (mut changes, mut deletes) = (0u64, 0u64);
    let mut sink = match &args.postgres {
        Some(url) => Some(pg_sink(&p, url, args.pg_batch_rows).await?),
        None => None,
    };
    let mut sink_secs = 0.0;
    let t = Instant::now();
    for (i, b) in input.into_iter().enumerate() {
        for out in p.push("downloads", 0, b, 0).await? {
            let (_, ops) = weir_engine::changelog::split(&out.batch)?;
            changes += ops.len() as u64;
            deletes += ops
                .values()
                .iter()
                .filter(|o| **o == weir_engine::changelog::DELETE)
                .count() as u64;
            if let Some(sink) = &mut sink {
                let s = Instant::now();
                sink.write(out.batch, out.ids).await?;
                sink_secs += s.elapsed().as_secs_f64();
            }
        }
        if i % 200 == 199 {
            eprintln!("{} events", (i + 1) * args.batch_rows);
        }
    }
    if let Some(sink) = &mut sink {
        let s = Instant::now();
        sink.precommit(1).await?;
        sink.commit(1).await?;
        sink.close().await?;
        sink_secs += s.elapsed().as_secs_f64();
    }
    let secs = t.elapsed().as_secs_f64() - sink_secs;
    // Change rows the sink took per second, and the rows it upserted (each insert of the
    // changelog; here every delete is the old half of an update, which the sink nets away).
    let pg = if args.postgres.is_some() {
        format!(
            ",\"pg_secs\":{sink_secs:.3},\"pg_changes_per_sec\":{:.0},\"pg_upserts_per_sec\":{:.0}",
            changes as f64 / sink_secs,
            (changes - deletes) as f64 / sink_secs
        )
    } else {
        String::new()
    };
    let view = p
        .objects()
        .into_iter()
        .find(|o| o.name == "per_content")
        .context("view")?;
    let s = view.stats.snapshot();
    println!(
        "{{\"keys\":{},\"events\":{},\"secs\":{secs:.3},\"events_per_sec\":{:.0},\"changes\":{changes},\"deletes\":{deletes},\"groups\":{},\"state_bytes_per_key\":{:.0},\"peak_rss_mib\":{:.0}{pg}}}",
        args.keys,
        args.events,
        args.events as f64 / secs,
        s.open_groups,
        s.state_bytes as f64 / s.open_groups.max(1) as f64,
        peak_rss_mib()
    );
    Ok(())
}
