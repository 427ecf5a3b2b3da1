//! `weir-bench pg-upsert`: the Postgres sink's write path, without a pipeline in front.
//!
//! Pre-built Arrow batches shaped like a windowed view (window_start, window_end, region,
//! downloads, failures, avg_speed; key: window_start, window_end, region) go straight into
//! the sink (create, recover, write, precommit): once into an empty table (inserts), once
//! more over the same keys with new values (pure updates), and once more with the same
//! values (a replay). The same again with the sink's direct-COPY fast path off shows the
//! upsert statement alone. The baseline is a plain binary COPY of the same rows into a
//! table with the same primary key, in the same chunks.

use anyhow::{Context, Result};
use datafusion::arrow::array::TimestampMillisecondArray;
use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use sqlx::Connection;
use sqlx::postgres::PgConnection;
use std::sync::Arc;
use std::time::Instant;
use weir_connectors::postgres::PostgresSink;
use weir_engine::connector::{RowIds, Sink, SinkSpec};
use weir_engine::options::Options;
use weir_engine::stats::Stats;

const DEFAULT_URL: &str = "postgres://weir@127.0.0.1:15432/weir";
const REGIONS: usize = 1000;
/// Rows per batch handed to the sink, as a view's output batches would be.
const VIEW_BATCH: usize = 8192;
const START_MS: i64 = 1_704_067_200_000; // 2024-01-01T00:00:00Z

fn schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
    Arc::new(Schema::new(vec![
        Field::new("window_start", ts.clone(), false),
        Field::new("window_end", ts, false),
        Field::new("region", DataType::Utf8, true),
        Field::new("downloads", DataType::Int64, false),
        Field::new("failures", DataType::Int64, false),
        Field::new("avg_speed", DataType::Float64, true),
    ]))
}

/// `rows` rows, one per (minute, region), `REGIONS` regions per minute; `round` changes the
/// values, not the keys.
fn batches(rows: u64, round: i64) -> Result<Vec<RecordBatch>> {
    let names: Vec<String> = (0..REGIONS).map(|r| format!("region-{r:04}")).collect();
    let mut out = Vec::new();
    let mut n = 0u64;
    while n < rows {
        let len = (rows - n).min(VIEW_BATCH as u64) as usize;
        let idx: Vec<u64> = (n..n + len as u64).collect();
        let starts: Vec<i64> = idx
            .iter()
            .map(|i| START_MS + (i / REGIONS as u64) as i64 * 60_000)
            .collect();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(TimestampMillisecondArray::from(starts.clone())),
            Arc::new(TimestampMillisecondArray::from(
                starts.iter().map(|s| s + 60_000).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from_iter_values(
                idx.iter()
                    .map(|i| names[(i % REGIONS as u64) as usize].as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(
                idx.iter().map(|i| (i % 97) as i64 + round),
            )),
            Arc::new(Int64Array::from_iter_values(
                idx.iter().map(|i| (i % 7) as i64 + round),
            )),
            Arc::new(Float64Array::from_iter_values(
                idx.iter().map(|i| (i % 400) as f64 * 0.25 + round as f64),
            )),
        ];
        out.push(RecordBatch::try_new(schema(), cols)?);
        n += len as u64;
    }
    Ok(out)
}

/// Write `batches` through a new sink; returns (seconds, COPY bytes). `direct`: let the
/// sink try its direct-COPY fast path (as it does by default).
async fn through_sink(
    url: &str,
    table: &str,
    batch_rows: usize,
    batches: &[RecordBatch],
    direct: bool,
) -> Result<(f64, u64)> {
    let stats = Arc::new(Stats::default());
    let spec = SinkSpec {
        name: format!("bench_{table}"),
        view: "region_health".into(),
        schema: schema(),
        key_columns: vec!["window_start".into(), "window_end".into(), "region".into()],
        never_null: vec!["window_start".into(), "window_end".into()],
        changelog: false,
        options: Options::new([
            ("url".to_string(), url.to_string()),
            ("table".to_string(), table.to_string()),
            ("batch.rows".to_string(), batch_rows.to_string()),
        ]),
        data_dir: std::env::temp_dir(),
        stats: stats.clone(),
        checkpointed: false,
    };
    let mut sink: Box<dyn Sink> = if direct {
        // As a pipeline makes it.
        weir_connectors::registry().sink("postgres")?.create(spec)?
    } else {
        let mut s = PostgresSink::new(spec)?;
        s.set_direct_copy(false);
        Box::new(s)
    };
    sink.recover(None).await?;
    let start = Instant::now();
    let mut first = 0u64;
    for b in batches {
        let n = b.num_rows() as u64;
        sink.write(b.clone(), RowIds { origin: 0, first }).await?;
        first += n;
    }
    sink.precommit(1).await?;
    let secs = start.elapsed().as_secs_f64();
    sink.commit(1).await?;
    sink.close().await?;
    Ok((secs, Stats::get(&stats.bytes)))
}

/// Plain binary COPY of the same rows into a keyed table, `batch_rows` rows per
/// transaction, encoding included.
async fn plain_copy(
    conn: &mut PgConnection,
    table: &str,
    batch_rows: usize,
    batches: &[RecordBatch],
) -> Result<f64> {
    let start = Instant::now();
    let mut chunk: Vec<RecordBatch> = Vec::new();
    let mut rows = 0;
    for b in batches {
        rows += b.num_rows();
        chunk.push(b.clone());
        if rows >= batch_rows {
            copy_chunk(conn, table, &chunk).await?;
            chunk.clear();
            rows = 0;
        }
    }
    if !chunk.is_empty() {
        copy_chunk(conn, table, &chunk).await?;
    }
    Ok(start.elapsed().as_secs_f64())
}

async fn copy_chunk(conn: &mut PgConnection, table: &str, chunk: &[RecordBatch]) -> Result<()> {
    let bytes = weir_connectors::postgres::encode::encode(chunk)?;
    let mut copy = conn
        .copy_in_raw(&format!("COPY {table} FROM STDIN (FORMAT binary)"))
        .await?;
    copy.send(bytes.as_slice()).await?;
    copy.finish().await?;
    Ok(())
}

pub async fn pg_upsert(rows: u64, batch_rows: usize, url: Option<String>) -> Result<()> {
    let url = url
        .or_else(|| std::env::var("WEIR_POSTGRES_URL").ok())
        .unwrap_or_else(|| DEFAULT_URL.to_string());
    let mut conn = PgConnection::connect(&url)
        .await
        .with_context(|| format!("connecting to {url} (scripts/postgres.sh start)"))?;
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&mut conn)
        .await?;
    let table = "weir_bench_upsert";
    let baseline = "weir_bench_copy";
    sqlx::raw_sql(&format!(
        "DROP TABLE IF EXISTS {table}; DROP TABLE IF EXISTS {baseline}; \
         CREATE TABLE {baseline} (window_start timestamptz NOT NULL, \
           window_end timestamptz NOT NULL, region text NOT NULL, downloads bigint NOT NULL, \
           failures bigint NOT NULL, avg_speed double precision, \
           PRIMARY KEY (window_start, window_end, region))"
    ))
    .execute(&mut conn)
    .await?;

    let t = Instant::now();
    let inserts = batches(rows, 0)?;
    let updates = batches(rows, 1)?;
    println!(
        "pg-upsert: {rows} rows ({REGIONS} regions x {} minutes) in batches of {VIEW_BATCH}, \
         batch.rows = {batch_rows}, PostgreSQL {version}; built in {:.1}s",
        rows.div_ceil(REGIONS as u64),
        t.elapsed().as_secs_f64()
    );

    let report = |what: &str, secs: f64, bytes: Option<u64>| {
        let extra = bytes.map_or(String::new(), |b| {
            format!(", {:.0} MiB COPY payload", b as f64 / (1 << 20) as f64)
        });
        println!(
            "  {what:<46} {:>9.0} rows/s  ({secs:.2}s{extra})",
            rows as f64 / secs
        );
    };
    let secs = plain_copy(&mut conn, baseline, batch_rows, &inserts).await?;
    report("baseline: binary COPY into a keyed table", secs, None);
    let (secs, bytes) = through_sink(&url, table, batch_rows, &inserts, true).await?;
    report("sink into an empty table (inserts)", secs, Some(bytes));
    let (secs, bytes) = through_sink(&url, table, batch_rows, &updates, true).await?;
    report("sink over the same keys (updates)", secs, Some(bytes));
    let (secs, _) = through_sink(&url, table, batch_rows, &updates, true).await?;
    report("sink over the same keys, same values (replay)", secs, None);
    sqlx::raw_sql(&format!("TRUNCATE {table}"))
        .execute(&mut conn)
        .await?;
    let (secs, _) = through_sink(&url, table, batch_rows, &inserts, false).await?;
    report("inserts, upsert path only (no direct COPY)", secs, None);
    let (secs, _) = through_sink(&url, table, batch_rows, &updates, false).await?;
    report("updates, upsert path only", secs, None);

    let (count, sum): (i64, i64) = sqlx::query_as(&format!(
        "SELECT count(*), sum(failures)::bigint FROM {table}"
    ))
    .fetch_one(&mut conn)
    .await?;
    let expected_sum: i64 = (0..rows).map(|i| (i % 7) as i64 + 1).sum();
    anyhow::ensure!(
        count as u64 == rows && sum == expected_sum,
        "{table} has {count} rows with sum(failures) {sum}; expected {rows} and {expected_sum}"
    );
    sqlx::raw_sql(&format!(
        "DROP TABLE {table}; DROP TABLE {baseline}; DELETE FROM weir.sink_progress WHERE sink = 'bench_{table}'"
    ))
    .execute(&mut conn)
    .await?;
    conn.close().await?;
    Ok(())
}
