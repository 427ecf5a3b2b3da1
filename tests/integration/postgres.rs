//! The Postgres sink against a real PostgreSQL (started by scripts/test.sh through
//! scripts/postgres.sh; its URL comes in WEIR_POSTGRES_URL). Pipelines run in the real
//! runtime over the bounded `generator` source, tables are read back with sqlx, and
//! results are compared row for row with the same SQL run in batch by DataFusion over the
//! same generated rows. Each test writes its own table.

#![allow(clippy::unwrap_used)]

mod nulls;

use crate::updating::{
    QUIET, Readings, SOURCE, SiteRow, TOTAL, TotalRow, changed, site, total_rows,
};
use chrono::{DateTime, NaiveDate, Utc};
use datafusion::arrow::array::{
    ArrayRef, AsArray, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array,
    Float64Array, Int8Array, Int16Array, Int32Array, Int64Array, LargeStringArray, StringArray,
    TimestampMicrosecondArray, TimestampMillisecondArray, TimestampNanosecondArray,
    TimestampSecondArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::{
    DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, TimeUnit, TimestampMillisecondType,
};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use weir_engine::connector::{RowIds, Sink, SinkFactory, SinkSpec, SourceEvent, SourceSpec};
use weir_engine::options::Options;
use weir_engine::pipeline::{EngineConfig, Output, Pipeline};
use weir_engine::runtime::{RunEnd, RunOptions, run};
use weir_engine::stats::{Stats, Status};

/// The database's URL, or `None` (test skipped) outside CI when none is running.
pub(crate) fn pg_url() -> Option<String> {
    match std::env::var("WEIR_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ if weir_tests::in_ci() => {
            panic!(
                "WEIR_POSTGRES_URL is not set: CI must run these tests against a real PostgreSQL \
                 (scripts/test.sh starts one with scripts/postgres.sh)"
            )
        }
        _ => {
            eprintln!(
                "\n********************************************************************\n\
                 SKIPPED: no PostgreSQL (WEIR_POSTGRES_URL unset); run scripts/test.sh, or\n\
                 bash scripts/postgres.sh start && eval \"$(bash scripts/postgres.sh env)\"\n\
                 ********************************************************************\n"
            );
            None
        }
    }
}

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .unwrap()
}

/// A table name no other test (or earlier run) uses.
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros() % 1_000_000_000
    )
}

const ROWS: u64 = 200_000;

fn source_ddl() -> String {
    format!(
        "CREATE SOURCE dl (event_id TEXT NOT NULL, ts TIMESTAMP NOT NULL, region TEXT, status TEXT, \
           speed_mbps DOUBLE, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
         WITH (connector = 'generator', kind = 'downloads', 'rows.per.second' = '0', \
           rows = '{ROWS}', start = '2024-01-01T00:00:00Z');"
    )
}

/// Windowed: per 10 s and region, counts and float extremes (exact in any order).
const HEALTH: &str = "SELECT window_start, window_end, region, count(*) AS downloads, \
    count(*) FILTER (WHERE status = 'failed') AS failures, min(speed_mbps) AS min_speed, \
    max(speed_mbps) AS max_speed \
    FROM TUMBLE(dl, ts, INTERVAL '10' SECOND) GROUP BY window_start, window_end, region";

/// Stateless: the failed downloads.
const FAILED: &str = "SELECT event_id, ts, region, speed_mbps FROM dl WHERE status = 'failed'";

/// The same SQL in batch: TUMBLE written out as date_bin.
fn batch_sql(view_sql: &str) -> String {
    view_sql.replace(
        "TUMBLE(dl, ts, INTERVAL '10' SECOND)",
        "(SELECT *, date_bin(INTERVAL '10 seconds', ts) AS window_start, \
         date_bin(INTERVAL '10 seconds', ts) + INTERVAL '10 seconds' AS window_end FROM dl) AS dl",
    )
}

/// Run `view_sql` from the generator into a Postgres table, until the source ends.
async fn run_pipeline(url: &str, view_sql: &str, sink_options: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Pipeline::new(
        EngineConfig {
            data_dir: dir.path().to_path_buf(),
            ..EngineConfig::default()
        },
        weir_connectors::registry(),
    );
    let sql = format!(
        "{}\nCREATE MATERIALIZED VIEW v AS {view_sql};\n\
         CREATE SINK pg FROM v WITH (connector = 'postgres', url = '{url}', {sink_options});",
        source_ddl()
    );
    p.execute(&sql).await.unwrap();
    let end = tokio::time::timeout(
        Duration::from_secs(300),
        run(
            p,
            RunOptions {
                until_done: true,
                ..RunOptions::default()
            },
            std::future::pending(),
        ),
    )
    .await
    .expect("the pipeline did not finish within 300 s")
    .unwrap();
    assert_eq!(end, RunEnd::Done);
}

/// Every row the generator source produces, and its schema (read from a pipeline with the
/// same CREATE SOURCE, so types match exactly).
async fn generated_rows() -> (SchemaRef, Vec<RecordBatch>) {
    let mut p = Pipeline::new(EngineConfig::default(), weir_connectors::registry());
    p.execute(&source_ddl()).await.unwrap();
    let schema = p.source_schema("dl").unwrap();
    let mut source = weir_connectors::registry()
        .source("generator")
        .unwrap()
        .create(SourceSpec {
            name: "dl".into(),
            schema: schema.clone(),
            event_time: Some("ts".into()),
            metadata: vec![],
            options: Options::new(
                [
                    ("kind", "downloads"),
                    ("rows.per.second", "0"),
                    ("rows", &ROWS.to_string()),
                    ("start", "2024-01-01T00:00:00Z"),
                ]
                .map(|(k, v)| (k.to_string(), v.to_string())),
            ),
            data_dir: std::env::temp_dir(),
            batch: Default::default(),
            stats: Default::default(),
            workers: 1,
            idle_timeout: weir_engine::connector::DEFAULT_IDLE_TIMEOUT,
        })
        .unwrap();
    let mut batches = Vec::new();
    loop {
        match source.next().await.unwrap() {
            SourceEvent::Batch { batch, .. } => batches.push(batch),
            SourceEvent::End => break,
            _ => {}
        }
    }
    assert_eq!(
        batches.iter().map(|b| b.num_rows() as u64).sum::<u64>(),
        ROWS
    );
    (schema, batches)
}

async fn batch_answer(sql: &str) -> Vec<RecordBatch> {
    let (schema, batches) = generated_rows().await;
    let ctx = SessionContext::new();
    ctx.register_table(
        "dl",
        Arc::new(MemTable::try_new(schema, vec![batches]).unwrap()),
    )
    .unwrap();
    ctx.sql(&batch_sql(sql))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap()
}

/// (window_start ms, window_end ms, region, downloads, failures, min_speed, max_speed)
type HealthRow = (i64, i64, String, i64, i64, f64, f64);

fn health_rows(batches: &[RecordBatch]) -> Vec<HealthRow> {
    let mut out = Vec::new();
    for b in batches {
        let ws = b.column(0).as_primitive::<TimestampMillisecondType>();
        let we = b.column(1).as_primitive::<TimestampMillisecondType>();
        let region = b.column(2).as_string::<i32>();
        let n = b.column(3).as_primitive::<Int64Type>();
        let failed = b.column(4).as_primitive::<Int64Type>();
        let min = b.column(5).as_primitive::<Float64Type>();
        let max = b.column(6).as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            out.push((
                ws.value(i),
                we.value(i),
                region.value(i).to_string(),
                n.value(i),
                failed.value(i),
                min.value(i),
                max.value(i),
            ));
        }
    }
    sort_health(out)
}

/// A [`HealthRow`] as sqlx decodes it.
type PgHealthRow = (DateTime<Utc>, DateTime<Utc>, String, i64, i64, f64, f64);

fn sort_health(mut rows: Vec<HealthRow>) -> Vec<HealthRow> {
    rows.sort_by(|a, b| (a.0, &a.2).cmp(&(b.0, &b.2)));
    rows
}

async fn read_health(db: &PgPool, table: &str) -> Vec<HealthRow> {
    let rows: Vec<PgHealthRow> = sqlx::query_as(&format!(
        "SELECT window_start, window_end, region, downloads, failures, min_speed, max_speed \
             FROM {table}"
    ))
    .fetch_all(db)
    .await
    .unwrap();
    sort_health(
        rows.into_iter()
            .map(|r| {
                (
                    r.0.timestamp_millis(),
                    r.1.timestamp_millis(),
                    r.2,
                    r.3,
                    r.4,
                    r.5,
                    r.6,
                )
            })
            .collect(),
    )
}

/// The key columns of `public.<table>`, in column order: its primary key, or, when a key
/// column can be NULL, its `UNIQUE NULLS NOT DISTINCT` index.
async fn table_key(db: &PgPool, table: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a \
         ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
         WHERE i.indrelid = to_regclass($1) AND (i.indisprimary OR i.indnullsnotdistinct) \
         ORDER BY a.attnum",
    )
    .bind(format!("public.{table}"))
    .fetch_all(db)
    .await
    .unwrap()
}

/// (a) A windowed view upserted by its key equals the batch answer, row for row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windowed_view_upserted_equals_batch_answer() {
    let Some(url) = pg_url() else { return };
    // The crash tests stop the shared server; not while this runs.
    let _pg = crate::crash::pg_lock().read().await;
    let db = pool(&url).await;
    let table = unique("pg_health");
    run_pipeline(&url, HEALTH, &format!("table = 'public.{table}'")).await;

    let expected = health_rows(&batch_answer(HEALTH).await);
    // 200,000 rows at 1 ms apart: 20 windows of 10 s, every region in each.
    assert!(expected.len() >= 20 * 4, "{} rows", expected.len());
    let got = read_health(&db, &table).await;
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected);

    // Created keyed by the view's key, NOT NULL where the view says so and on the window
    // bounds; region can be NULL, so the key is UNIQUE NULLS NOT DISTINCT.
    assert_eq!(
        table_key(&db, &table).await,
        vec!["window_start", "window_end", "region"]
    );
    let types: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull \
         FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 ORDER BY a.attnum",
    )
    .bind(format!("public.{table}"))
    .fetch_all(&db)
    .await
    .unwrap();
    let types: Vec<(&str, &str, bool)> = types
        .iter()
        .map(|(n, t, nn)| (n.as_str(), t.as_str(), *nn))
        .collect();
    assert_eq!(
        types,
        vec![
            ("window_start", "timestamp with time zone", true),
            ("window_end", "timestamp with time zone", true),
            ("region", "text", false),
            ("downloads", "bigint", true),
            ("failures", "bigint", true),
            ("min_speed", "double precision", false),
            ("max_speed", "double precision", false),
        ]
    );
}

/// (b) The same pipeline run twice into the same table leaves it unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_a_windowed_view_changes_nothing() {
    let Some(url) = pg_url() else { return };
    // The crash tests stop the shared server; not while this runs.
    let _pg = crate::crash::pg_lock().read().await;
    let db = pool(&url).await;
    let table = unique("pg_replay");
    // Small batches: many transactions, each key written once per run.
    let options = format!("table = '{table}', 'batch.rows' = '7'");
    run_pipeline(&url, HEALTH, &options).await;
    let first = read_health(&db, &table).await;
    assert!(!first.is_empty());
    run_pipeline(&url, HEALTH, &options).await;
    let second = read_health(&db, &table).await;
    assert_eq!(second, first);
    let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(count as usize, first.len());
}

/// (c) A stateless view appends each row once, keyed by weir_row_id; a second run adds
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_only_view_writes_each_row_once() {
    let Some(url) = pg_url() else { return };
    // The crash tests stop the shared server; not while this runs.
    let _pg = crate::crash::pg_lock().read().await;
    let db = pool(&url).await;
    let table = unique("pg_failed");
    let expected = batch_answer(FAILED).await;
    let mut expected_ids: Vec<String> = expected
        .iter()
        .flat_map(|b| {
            let ids = b.column(0).as_string::<i32>();
            (0..b.num_rows())
                .map(|i| ids.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    expected_ids.sort();
    assert!(expected_ids.len() > 1000, "{} failed", expected_ids.len());

    let options = format!("table = '{table}'");
    for run_no in 1..=2 {
        run_pipeline(&url, FAILED, &options).await;
        let (count, distinct_ids, distinct_rows): (i64, i64, i64) = sqlx::query_as(&format!(
            "SELECT count(*), count(DISTINCT event_id), count(DISTINCT weir_row_id) FROM {table}"
        ))
        .fetch_one(&db)
        .await
        .unwrap();
        assert_eq!(
            (
                count as usize,
                distinct_ids as usize,
                distinct_rows as usize
            ),
            (expected_ids.len(), expected_ids.len(), expected_ids.len()),
            "after run {run_no}"
        );
    }
    let mut ids: Vec<String> =
        sqlx::query_scalar(&format!("SELECT event_id FROM {table} ORDER BY event_id"))
            .fetch_all(&db)
            .await
            .unwrap();
    ids.sort();
    assert_eq!(ids, expected_ids);
    // The row ids are the engine's: partition 0, rows counted from 0.
    let (min, max): (i64, i64) = sqlx::query_as(&format!(
        "SELECT min(weir_row_id), max(weir_row_id) FROM {table}"
    ))
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!((min, max), (0, expected_ids.len() as i64 - 1));
}

fn health_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "window_start",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new(
            "window_end",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("region", DataType::Utf8, true),
        Field::new("downloads", DataType::Int64, false),
        Field::new("failures", DataType::Int64, false),
        Field::new("avg_speed", DataType::Float64, true),
    ]))
}

fn sink_spec(
    name: &str,
    schema: SchemaRef,
    key: &[&str],
    options: &[(&str, &str)],
    stats: Arc<Stats>,
) -> SinkSpec {
    SinkSpec {
        name: name.into(),
        view: "health".into(),
        schema,
        key_columns: key.iter().map(|k| k.to_string()).collect(),
        never_null: vec![],
        changelog: false,
        options: Options::new(options.iter().map(|(k, v)| (k.to_string(), v.to_string()))),
        data_dir: std::env::temp_dir(),
        stats,
        checkpointed: false,
    }
}

/// (d) An existing table that does not fit: every problem, in one message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatched_table_lists_every_problem() {
    let Some(url) = pg_url() else { return };
    // The crash tests stop the shared server; not while this runs.
    let _pg = crate::crash::pg_lock().read().await;
    let db = pool(&url).await;
    let table = unique("pg_mismatch");
    sqlx::raw_sql(&format!(
        "CREATE TABLE public.{table} (window_start timestamptz, window_end timestamptz, \
         region text, downloads integer, avg_speed text, note text NOT NULL)"
    ))
    .execute(&db)
    .await
    .unwrap();
    let mut sink = weir_connectors::postgres::PostgresSinkFactory
        .create(sink_spec(
            "pg_mismatch",
            health_schema(),
            &["window_start", "window_end", "region"],
            &[("url", &url), ("table", &table)],
            Default::default(),
        ))
        .unwrap();
    let e = sink.recover(None).await.unwrap_err();
    assert!(e.is_user(), "{e}");
    assert_eq!(
        e.to_string(),
        format!(
            "postgres sink 'pg_mismatch': table public.{table} does not fit view 'health': \
             column downloads is integer in table public.{table} but the view has bigint (Int64); \
             missing column failures (bigint); \
             column avg_speed is text in table public.{table} but the view has double precision (Float64); \
             column note in table public.{table} is NOT NULL without a default, and the view has no such column; \
             no primary key or unique index on (window_start, window_end, region)"
        )
    );
}

fn ts(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap()
}

/// (e) Every mapped type, nulls included, reads back as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mapped_type_round_trips() {
    let Some(url) = pg_url() else { return };
    // The crash tests stop the shared server; not while this runs.
    let _pg = crate::crash::pg_lock().read().await;
    let db = pool(&url).await;
    let table = unique("pg_types");
    let utc = Some(Arc::<str>::from("UTC"));
    let fields = vec![
        Field::new("id", DataType::Int32, false),
        Field::new("s", DataType::Utf8, true),
        Field::new("ls", DataType::LargeUtf8, true),
        Field::new("i8", DataType::Int8, true),
        Field::new("i16", DataType::Int16, true),
        Field::new("i64", DataType::Int64, true),
        Field::new("u32", DataType::UInt32, true),
        Field::new("u64", DataType::UInt64, true),
        Field::new("f32", DataType::Float32, true),
        Field::new("f64", DataType::Float64, true),
        Field::new("b", DataType::Boolean, true),
        Field::new("dec", DataType::Decimal128(12, 3), true),
        Field::new("ts_s", DataType::Timestamp(TimeUnit::Second, None), true),
        Field::new(
            "ts_ms",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
        Field::new(
            "ts_us",
            DataType::Timestamp(TimeUnit::Microsecond, utc.clone()),
            true,
        ),
        Field::new(
            "ts_ns",
            DataType::Timestamp(TimeUnit::Nanosecond, utc),
            true,
        ),
        Field::new("d", DataType::Date32, true),
        Field::new("bin", DataType::Binary, true),
    ];
    let schema = Arc::new(Schema::new(fields));
    let base_ms = 1_704_067_200_123i64; // 2024-01-01T00:00:00.123Z
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from(vec![1, 2, 3])),
        Arc::new(StringArray::from(vec![
            Some("EU-West"),
            Some("ünï 'q' \"d\""),
            None,
        ])),
        Arc::new(LargeStringArray::from(vec![Some(""), Some("x"), None])),
        Arc::new(Int8Array::from(vec![Some(-128), Some(127), None])),
        Arc::new(Int16Array::from(vec![Some(i16::MIN), Some(i16::MAX), None])),
        Arc::new(Int64Array::from(vec![Some(i64::MIN), Some(i64::MAX), None])),
        Arc::new(UInt32Array::from(vec![Some(0), Some(u32::MAX), None])),
        Arc::new(UInt64Array::from(vec![Some(0), Some(u64::MAX), None])),
        Arc::new(Float32Array::from(vec![Some(1.5f32), Some(-0.1f32), None])),
        Arc::new(Float64Array::from(vec![
            Some(f64::MAX),
            Some(-1e-300),
            None,
        ])),
        Arc::new(BooleanArray::from(vec![Some(true), Some(false), None])),
        Arc::new(
            Decimal128Array::from(vec![Some(123_456_789_012), Some(-5), None])
                .with_precision_and_scale(12, 3)
                .unwrap(),
        ),
        Arc::new(TimestampSecondArray::from(vec![
            Some(base_ms / 1000),
            Some(-1),
            None,
        ])),
        Arc::new(TimestampMillisecondArray::from(vec![
            Some(base_ms),
            Some(0),
            None,
        ])),
        Arc::new(
            TimestampMicrosecondArray::from(vec![Some(base_ms * 1000 + 456), Some(1), None])
                .with_timezone("UTC"),
        ),
        Arc::new(
            TimestampNanosecondArray::from(vec![
                Some(base_ms * 1_000_000 + 456_789),
                Some(-1_000),
                None,
            ])
            .with_timezone("UTC"),
        ),
        Arc::new(Date32Array::from(vec![Some(19_723), Some(-1), None])),
        Arc::new(BinaryArray::from(vec![
            Some(&[0u8, 1, 255][..]),
            Some(&b""[..]),
            None,
        ])),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let stats = Arc::new(Stats::default());
    let mut sink = weir_connectors::postgres::PostgresSinkFactory
        .create(sink_spec(
            &table,
            schema,
            &[],
            &[("url", &url), ("table", &table), ("primary.key", "id")],
            stats.clone(),
        ))
        .unwrap();
    sink.recover(None).await.unwrap();
    sink.write(batch, RowIds::default()).await.unwrap();
    let cp = sink.precommit(7).await.unwrap();
    assert_eq!(cp, serde_json::json!({"epoch": 7, "rows": 3}));
    sink.commit(7).await.unwrap();
    sink.close().await.unwrap();
    assert!(Stats::get(&stats.bytes) > 100);
    assert_eq!(Stats::get(&stats.errors), 0);

    // The table's types are the documented mapping.
    let types: Vec<String> = sqlx::query_scalar(
        "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
         WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 ORDER BY a.attnum",
    )
    .bind(&table)
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(
        types,
        vec![
            "integer",
            "text",
            "text",
            "smallint",
            "smallint",
            "bigint",
            "bigint",
            "numeric(20,0)",
            "real",
            "double precision",
            "boolean",
            "numeric(12,3)",
            "timestamp with time zone",
            "timestamp with time zone",
            "timestamp with time zone",
            "timestamp with time zone",
            "date",
            "bytea",
        ]
    );

    type Scalars = (
        i32,
        Option<String>,
        Option<String>,
        Option<i16>,
        Option<i16>,
        Option<i64>,
        Option<i64>,
        Option<String>,
        Option<f32>,
        Option<f64>,
        Option<bool>,
        Option<String>,
    );
    let scalars: Vec<Scalars> = sqlx::query_as(&format!(
        "SELECT id, s, ls, i8, i16, i64, u32, u64::text, f32, f64, b, dec::text FROM {table} \
         ORDER BY id"
    ))
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(
        scalars,
        vec![
            (
                1,
                Some("EU-West".into()),
                Some("".into()),
                Some(-128),
                Some(i16::MIN),
                Some(i64::MIN),
                Some(0),
                Some("0".into()),
                Some(1.5),
                Some(f64::MAX),
                Some(true),
                Some("123456789.012".into()),
            ),
            (
                2,
                Some("ünï 'q' \"d\"".into()),
                Some("x".into()),
                Some(127),
                Some(i16::MAX),
                Some(i64::MAX),
                Some(u32::MAX as i64),
                Some("18446744073709551615".into()),
                Some(-0.1),
                Some(-1e-300),
                Some(false),
                Some("-0.005".into()),
            ),
            (
                3, None, None, None, None, None, None, None, None, None, None, None
            ),
        ]
    );
    type Times = (
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<NaiveDate>,
        Option<Vec<u8>>,
    );
    let times: Vec<Times> = sqlx::query_as(&format!(
        "SELECT ts_s, ts_ms, ts_us, ts_ns, d, bin FROM {table} ORDER BY id"
    ))
    .fetch_all(&db)
    .await
    .unwrap();
    let us = |v: i64| DateTime::from_timestamp_micros(v).unwrap();
    assert_eq!(
        times,
        vec![
            (
                Some(ts(base_ms / 1000 * 1000)),
                Some(ts(base_ms)),
                Some(us(base_ms * 1000 + 456)),
                Some(us(base_ms * 1000 + 456)),
                NaiveDate::from_ymd_opt(2024, 1, 1),
                Some(vec![0, 1, 255]),
            ),
            (
                Some(ts(-1000)),
                Some(ts(0)),
                Some(us(1)),
                Some(us(-1)),
                NaiveDate::from_ymd_opt(1969, 12, 31),
                Some(vec![]),
            ),
            (None, None, None, None, None, None),
        ]
    );

    // The checkpoint's progress row, written in the same transaction as the rows.
    let progress: (i64, i64) =
        sqlx::query_as("SELECT epoch, rows FROM weir.sink_progress WHERE sink = $1")
            .bind(&table)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(progress, (7, 3));
}

/// A TCP forwarder to the real server that can be taken away and brought back, to stand
/// for a database that goes down and comes back on the same address.
struct Proxy {
    port: u16,
    upstream: String,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// A free port, with nothing listening on it yet.
    fn new(upstream: String) -> Proxy {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        Proxy {
            port,
            upstream,
            task: None,
        }
    }

    async fn up(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        let upstream = self.upstream.clone();
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let upstream = upstream.clone();
                conns.spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        }));
    }

    /// Stop listening and cut every open connection.
    async fn down(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

/// While the database cannot be reached, a write waits and retries (status retrying,
/// errors counted); once it is back the rows are written exactly once, also after the
/// connection breaks between writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_until_the_database_is_back() {
    let Some(url) = pg_url() else { return };
    // The crash tests stop the shared server; not while this runs.
    let _pg = crate::crash::pg_lock().read().await;
    let db = pool(&url).await;
    let table = unique("pg_outage");
    let real: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let mut proxy = Proxy::new(format!("{}:{}", real.get_host(), real.get_port()));
    let via_proxy = format!(
        "postgres://{}@127.0.0.1:{}/{}",
        real.get_username(),
        proxy.port,
        real.get_database().unwrap_or("weir")
    );
    let stats = Arc::new(Stats::default());
    let mut sink = weir_connectors::postgres::PostgresSinkFactory
        .create(sink_spec(
            "pg_outage",
            health_schema(),
            &["window_start", "window_end", "region"],
            &[
                ("url", &via_proxy),
                ("table", &table),
                ("batch.rows", "1"),
                ("retry.backoff.max", "200ms"),
            ],
            stats.clone(),
        ))
        .unwrap();
    let rows = |from: i64, n: i64, downloads: i64| {
        let starts: Vec<i64> = (from..from + n).map(|i| i * 10_000).collect();
        RecordBatch::try_new(
            health_schema(),
            vec![
                Arc::new(TimestampMillisecondArray::from(starts.clone())),
                Arc::new(TimestampMillisecondArray::from(
                    starts.iter().map(|s| s + 10_000).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(vec!["EU"; n as usize])),
                Arc::new(Int64Array::from(vec![downloads; n as usize])),
                Arc::new(Int64Array::from(vec![0; n as usize])),
                Arc::new(Float64Array::from(vec![Some(1.0); n as usize])),
            ],
        )
        .unwrap()
    };

    // Down from the start: recover waits.
    let stats2 = stats.clone();
    let recover = tokio::spawn(async move {
        sink.recover(None).await.unwrap();
        sink
    });
    let waited = tokio::time::Instant::now();
    while Stats::get(&stats2.errors) < 3 {
        assert!(
            waited.elapsed() < Duration::from_secs(20),
            "no retries seen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stats.status(), Status::Retrying);
    assert!(
        stats.last_error().unwrap().starts_with(&format!(
            "postgres sink 'pg_outage' (table {table}): connecting: "
        )),
        "{:?}",
        stats.last_error()
    );
    assert!(!recover.is_finished());
    proxy.up().await;
    let mut sink = tokio::time::timeout(Duration::from_secs(20), recover)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stats.status(), Status::Running);
    sink.write(rows(0, 100, 1), RowIds::default())
        .await
        .unwrap();

    // Cut the connection between writes, and keep it down for a while.
    proxy.down().await;
    let errors_before = Stats::get(&stats.errors);
    let write = tokio::spawn(async move {
        sink.write(rows(50, 100, 2), RowIds::default())
            .await
            .unwrap();
        sink
    });
    let waited = tokio::time::Instant::now();
    while Stats::get(&stats.errors) < errors_before + 2 {
        assert!(
            waited.elapsed() < Duration::from_secs(20),
            "no retries seen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stats.status(), Status::Retrying);
    assert!(!write.is_finished(), "the write must wait for the database");
    proxy.up().await;
    let mut sink = tokio::time::timeout(Duration::from_secs(20), write)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stats.status(), Status::Running);
    sink.close().await.unwrap();
    proxy.down().await;

    // 150 windows: the first 50 from the first write, the overlap updated by the second.
    let got: Vec<(i64, i64)> = sqlx::query_as(&format!(
        "SELECT downloads, count(*) FROM {table} GROUP BY downloads ORDER BY downloads"
    ))
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(got, vec![(1, 50), (2, 100)]);
}

/// Several rows for one key in one transaction: the last one wins (ON CONFLICT DO UPDATE
/// may not touch a row twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_keys_in_one_write_keep_the_last_row() {
    let Some(url) = pg_url() else { return };
    // The crash tests stop the shared server; not while this runs.
    let _pg = crate::crash::pg_lock().read().await;
    let db = pool(&url).await;
    let table = unique("pg_dups");
    let schema = Arc::new(Schema::new(vec![
        Field::new("region", DataType::Utf8, false),
        Field::new("n", DataType::Int64, false),
    ]));
    let mut sink = weir_connectors::postgres::PostgresSinkFactory
        .create(sink_spec(
            "pg_dups",
            schema.clone(),
            &["region"],
            &[("url", &url), ("table", &table)],
            Default::default(),
        ))
        .unwrap();
    sink.recover(None).await.unwrap();
    let b = |regions: Vec<&str>, n: Vec<i64>| {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(regions)),
                Arc::new(Int64Array::from(n)),
            ],
        )
        .unwrap()
    };
    sink.write(b(vec!["EU", "US", "EU"], vec![1, 2, 3]), RowIds::default())
        .await
        .unwrap();
    sink.write(b(vec!["US", "AP"], vec![4, 5]), RowIds::default())
        .await
        .unwrap();
    sink.flush().await.unwrap();
    sink.write(b(vec!["AP"], vec![6]), RowIds::default())
        .await
        .unwrap();
    sink.close().await.unwrap();
    let got: Vec<(String, i64)> =
        sqlx::query_as(&format!("SELECT region, n FROM {table} ORDER BY region"))
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(
        got,
        vec![("AP".into(), 6), ("EU".into(), 3), ("US".into(), 4)]
    );
}

/// TLS: the sink connects as `weir_tls`, a role the test server (scripts/postgres.sh)
/// admits over TLS only, with `sslmode=verify-full` against the CA the script made, and
/// writes its rows; with `sslmode=disable` the same role is refused, and the sink says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_writes_over_tls() {
    let Some(url) = pg_url() else { return };
    let _pg = crate::crash::pg_lock().read().await;
    let ca = match std::env::var("WEIR_POSTGRES_CA") {
        Ok(c) if !c.is_empty() => c,
        _ if weir_tests::in_ci() => panic!(
            "WEIR_POSTGRES_CA is not set: scripts/test.sh exports it from scripts/postgres.sh env"
        ),
        _ => {
            eprintln!("SKIPPED: WEIR_POSTGRES_CA unset (eval \"$(bash scripts/postgres.sh env)\")");
            return;
        }
    };
    let db = pool(&url).await;
    let table = unique("pg_tls");
    let tls_url = |mode: &str| {
        let base = url.replacen("postgres://weir@", "postgres://weir_tls@", 1);
        format!("{base}?sslmode={mode}&sslrootcert={ca}")
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("region", DataType::Utf8, false),
        Field::new("n", DataType::Int64, false),
    ]));
    let sink = |u: String| {
        weir_connectors::postgres::PostgresSinkFactory
            .create(sink_spec(
                "pg_tls",
                schema.clone(),
                &["region"],
                &[("url", &u), ("table", &table)],
                Default::default(),
            ))
            .unwrap()
    };
    let mut s = sink(tls_url("verify-full"));
    s.recover(None).await.unwrap();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["EU", "US"])),
            Arc::new(Int64Array::from(vec![1, 2])),
        ],
    )
    .unwrap();
    s.write(batch, RowIds::default()).await.unwrap();
    s.close().await.unwrap();
    let got: Vec<(String, i64)> =
        sqlx::query_as(&format!("SELECT region, n FROM {table} ORDER BY region"))
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(got, vec![("EU".into(), 1), ("US".into(), 2)]);
    let e = sink(tls_url("disable")).recover(None).await.unwrap_err();
    assert!(
        e.to_string().contains("no encryption"),
        "the refusal says why: {e}"
    );
}

/// Cluster fencing: two sinks stand for two members writing the same view. When the
/// second takes key partition 1 over, the first's later write of a row from it is rolled
/// back whole (also the row of partition 0, which it still owns, in the same
/// transaction) with a `Fenced` error, and its rows of partition 0 alone still go in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_members_late_write_is_rejected() {
    let Some(url) = pg_url() else { return };
    let _pg = crate::crash::pg_lock().read().await;
    let db = pool(&url).await;
    let table = unique("pg_fence");
    let scope = format!("weir.test.{table}");
    let schema = Arc::new(Schema::new(vec![
        Field::new("region", DataType::Utf8, false),
        Field::new("n", DataType::Int64, false),
    ]));
    let b = |region: &str, n: i64| {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![region])),
                Arc::new(Int64Array::from(vec![n])),
            ],
        )
        .unwrap()
    };
    let kp = |origin: u32| RowIds { origin, first: 0 };
    let member = || {
        weir_connectors::postgres::PostgresSinkFactory
            .create(sink_spec(
                "pg_fence",
                schema.clone(),
                &["region"],
                &[("url", &url), ("table", &table)],
                Default::default(),
            ))
            .unwrap()
    };
    let (mut old, mut new) = (member(), member());
    old.recover(None).await.unwrap();
    new.recover(None).await.unwrap();
    old.claim(&scope, &[0, 1]).await.unwrap();
    old.write(b("EU", 1), kp(1)).await.unwrap();
    old.flush().await.unwrap();
    // The new owner of partition 1 claims it; the old one has not heard yet.
    new.claim(&scope, &[1]).await.unwrap();
    old.write(b("US", 2), kp(0)).await.unwrap();
    old.write(b("EU", 99), kp(1)).await.unwrap();
    let e = old.flush().await.unwrap_err();
    assert!(matches!(e, weir_engine::WeirError::Fenced(_)), "{e:?}");
    new.write(b("EU", 3), kp(1)).await.unwrap();
    new.flush().await.unwrap();
    // Told, the old member drops what it held and writes partition 0 again.
    old.discard();
    old.release(&[1]);
    old.write(b("US", 2), kp(0)).await.unwrap();
    old.flush().await.unwrap();
    // A row of a partition it released is refused before it reaches the database.
    old.write(b("AP", 7), kp(1)).await.unwrap();
    let e = old.flush().await.unwrap_err();
    assert!(matches!(e, weir_engine::WeirError::Fenced(_)), "{e:?}");
    old.discard();
    old.close().await.unwrap();
    new.close().await.unwrap();
    let got: Vec<(String, i64)> =
        sqlx::query_as(&format!("SELECT region, n FROM {table} ORDER BY region"))
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(got, vec![("EU".into(), 3), ("US".into(), 2)]);
    let epochs: Vec<(i32, i64)> =
        sqlx::query_as("SELECT kp, epoch FROM weir.cluster_fence WHERE scope = $1 ORDER BY kp")
            .bind(format!("{scope}/pg_fence"))
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(epochs, vec![(0, 1), (1, 2)]);
}

/// (e) `EMIT EVERY`: early rows reach the table keyed by window and region, and each
/// window's final row replaces them; the finished table equals the batch answer, every row
/// final. The pipeline is stepped by hand (one micro-batch, then one second of processing
/// time) so the early rows are known exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_results_are_replaced_by_final_rows() {
    let Some(url) = pg_url() else { return };
    // The crash tests stop the shared server; not while this runs.
    let _pg = crate::crash::pg_lock().read().await;
    let db = pool(&url).await;
    let table = unique("pg_early");
    let dir = tempfile::tempdir().unwrap();
    let (mut p, clock) = weir_tests::slt::test_pipeline_clocked(dir.path());
    let view = "SELECT window_start, window_end, region, count(*) AS n, sum(v) AS total \
        FROM TUMBLE(ev, ts, INTERVAL '10' SECOND) GROUP BY window_start, window_end, region";
    p.execute(&format!(
        "CREATE SOURCE ev (ts TIMESTAMP NOT NULL, region TEXT NOT NULL, v BIGINT NOT NULL, \
           WATERMARK FOR ts AS ts) WITH (connector = 'test');
         CREATE MATERIALIZED VIEW v AS {view} EMIT EVERY INTERVAL '1' SECOND;
         CREATE SINK pg FROM v WITH (connector = 'postgres', url = '{url}', table = '{table}');"
    ))
    .await
    .unwrap();
    let mut sink = p.take_new_sinks().pop().unwrap().sink;
    sink.recover(None).await.unwrap();

    // 60 events 500 ms apart from 2024-01-01T00:00:00Z: three 10-second windows, regions in
    // turn, v = the event's number.
    let base = 1_704_067_200_000i64;
    let schema = p.source_schema("ev").unwrap();
    let regions = ["EU", "US", "AP"];
    let batch = |from: i64, to: i64| {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(TimestampMillisecondArray::from(
                    (from..to).map(|i| base + i * 500).collect::<Vec<_>>(),
                )) as ArrayRef,
                Arc::new(StringArray::from(
                    (from..to)
                        .map(|i| regions[i as usize % 3])
                        .collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from((from..to).collect::<Vec<_>>())),
            ],
        )
        .unwrap()
    };
    let read = |db: PgPool, table: String| async move {
        let rows: Vec<(DateTime<Utc>, String, i64, i64, bool)> = sqlx::query_as(&format!(
            "SELECT window_start, region, n, total, is_final FROM {table} ORDER BY window_start, region"
        ))
        .fetch_all(&db)
        .await
        .unwrap();
        rows.into_iter()
            .map(|r| ((r.0.timestamp_millis() - base) / 1000, r.1, r.2, r.3, r.4))
            .collect::<Vec<_>>()
    };
    // Five seconds of events per step, then a second of processing time.
    for step in 0..6i64 {
        let mut out = p
            .push("ev", 0, batch(step * 10, step * 10 + 10), 0)
            .await
            .unwrap();
        clock.set((step + 1) * 1000);
        out.extend(p.tick().await.unwrap());
        for o in out {
            sink.write(o.batch, o.ids).await.unwrap();
        }
        sink.flush().await.unwrap();
        match step {
            // Events 0..20 (window 0, still open: the watermark is 9.5 s): early rows.
            1 => assert_eq!(
                read(db.clone(), table.clone()).await,
                vec![
                    (0, "AP".into(), 6, 57, false),
                    (0, "EU".into(), 7, 63, false),
                    (0, "US".into(), 7, 70, false),
                ]
            ),
            // Window 0 closed (final rows replaced the early ones); window 1 early.
            2 => assert_eq!(
                read(db.clone(), table.clone()).await,
                vec![
                    (0, "AP".into(), 6, 57, true),
                    (0, "EU".into(), 7, 63, true),
                    (0, "US".into(), 7, 70, true),
                    (10, "AP".into(), 4, 98, false),
                    (10, "EU".into(), 3, 72, false),
                    (10, "US".into(), 3, 75, false),
                ]
            ),
            _ => {}
        }
    }
    for o in p.end_source("ev").await.unwrap() {
        sink.write(o.batch, o.ids).await.unwrap();
    }
    sink.close().await.unwrap();

    // The batch answer over the same events.
    let ctx = SessionContext::new();
    ctx.register_table(
        "ev",
        Arc::new(MemTable::try_new(schema.clone(), vec![vec![batch(0, 60)]]).unwrap()),
    )
    .unwrap();
    let expected = ctx
        .sql(&view.replace(
            "TUMBLE(ev, ts, INTERVAL '10' SECOND)",
            "(SELECT *, date_bin(INTERVAL '10 seconds', ts) AS window_start, \
             date_bin(INTERVAL '10 seconds', ts) + INTERVAL '10 seconds' AS window_end FROM ev) AS ev",
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut expected: Vec<(i64, String, i64, i64, bool)> = expected
        .iter()
        .flat_map(|b| {
            let ws = b.column(0).as_primitive::<TimestampMillisecondType>();
            let region = b.column(2).as_string::<i32>();
            let n = b.column(3).as_primitive::<Int64Type>();
            let total = b.column(4).as_primitive::<Int64Type>();
            (0..b.num_rows())
                .map(|i| {
                    (
                        (ws.value(i) - base) / 1000,
                        region.value(i).to_string(),
                        n.value(i),
                        total.value(i),
                        true,
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    expected.sort();
    assert_eq!(expected.len(), 9);
    assert_eq!(read(db.clone(), table.clone()).await, expected);
    // Keyed by the window and the region, is_final a NOT NULL column.
    assert_eq!(
        table_key(&db, &table).await,
        vec!["window_start", "window_end", "region"]
    );
    let is_final: (String, bool) = sqlx::query_as(
        "SELECT format_type(a.atttypid, a.atttypmod), a.attnotnull FROM pg_attribute a \
         WHERE a.attrelid = to_regclass($1) AND a.attname = 'is_final'",
    )
    .bind(format!("public.{table}"))
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(is_final, ("boolean".to_string(), true));
}

async fn read_quiet(db: &PgPool, table: &str) -> Vec<SiteRow> {
    sqlx::query_as(&format!(
        "SELECT site, n, hottest FROM {table} ORDER BY site"
    ))
    .fetch_all(db)
    .await
    .unwrap()
}

async fn read_total(db: &PgPool, table: &str) -> Vec<TotalRow> {
    sqlx::query_as(&format!("SELECT n, hottest FROM {table}"))
        .fetch_all(db)
        .await
        .unwrap()
}

/// The sinks of a pipeline, by the view each reads.
type SinksByView = HashMap<String, Box<dyn Sink>>;

/// A pipeline with the updating views `quiet` ([`QUIET`]) and `total` ([`TOTAL`]), each
/// with a Postgres sink.
async fn updating_pipeline(
    dir: &std::path::Path,
    url: &str,
    tables: (&str, &str),
    batch_rows: usize,
) -> (Pipeline, SinksByView) {
    let mut p = weir_tests::slt::test_pipeline(dir);
    p.execute(&format!(
        "{SOURCE}
         CREATE MATERIALIZED VIEW quiet AS {QUIET};
         CREATE MATERIALIZED VIEW total AS {TOTAL};
         CREATE SINK quiet_pg FROM quiet WITH (connector = 'postgres', url = '{url}', \
           table = '{}', 'batch.rows' = '{batch_rows}');
         CREATE SINK total_pg FROM total WITH (connector = 'postgres', url = '{url}', \
           table = '{}', 'batch.rows' = '{batch_rows}');",
        tables.0, tables.1
    ))
    .await
    .unwrap();
    let sinks = sinks_by_view(&mut p);
    (p, sinks)
}

/// The pipeline's new sinks, by the view each reads.
fn sinks_by_view(p: &mut Pipeline) -> SinksByView {
    p.take_new_sinks()
        .into_iter()
        .map(|s| (s.view, s.sink))
        .collect()
}

/// Each output to the sink of its view.
async fn write_outputs<'a>(sinks: &mut SinksByView, outputs: impl IntoIterator<Item = &'a Output>) {
    for o in outputs {
        let sink = sinks.get_mut(&o.view).unwrap();
        sink.write(o.batch.clone(), o.ids).await.unwrap();
    }
}

/// An updating view into Postgres: after every step the tables equal the same SQL in batch
/// over every reading so far (rows updated, rows deleted by HAVING, a global aggregate's
/// one row replaced and then deleted). Then the changes are written again by new sinks, as
/// after a restart from a checkpoint and from the start: the tables do not change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updating_view_upserts_and_deletes_by_key() {
    let Some(url) = pg_url() else { return };
    // The crash tests stop the shared server; not while this runs.
    let _pg = crate::crash::pg_lock().read().await;
    let db = pool(&url).await;
    let (quiet, total) = (unique("pg_quiet"), unique("pg_total"));
    let tables = (quiet.as_str(), total.as_str());
    let dir = tempfile::tempdir().unwrap();
    // 'batch.rows' = 5: a step's changes span several transactions.
    let (mut p, mut sinks) = updating_pipeline(dir.path(), &url, tables, 5).await;
    for s in sinks.values_mut() {
        s.recover(None).await.unwrap();
    }
    let mut readings = Readings::new(&p);
    // Every step's view outputs and checkpoints, for the replays.
    let mut outputs: Vec<Vec<Output>> = Vec::new();
    let mut checkpoints: Vec<HashMap<String, serde_json::Value>> = Vec::new();
    let mut before: Vec<SiteRow> = Vec::new();
    let (mut deleted, mut updated) = (0, 0);
    for step in 1..=6u64 {
        let out = readings.push(&mut p).await;
        write_outputs(&mut sinks, &out).await;
        outputs.push(out);
        let mut cps = HashMap::new();
        for (view, s) in sinks.iter_mut() {
            cps.insert(view.clone(), s.precommit(step).await.unwrap());
            s.commit(step).await.unwrap();
        }
        checkpoints.push(cps);

        let want = readings.quiet().await;
        assert_eq!(
            read_quiet(&db, &quiet).await,
            want,
            "quiet after step {step}"
        );
        let want_total = total_rows(&readings.batch_answer(TOTAL).await);
        assert_eq!(
            read_total(&db, &total).await,
            want_total,
            "total after step {step}"
        );
        // The view's rows do change and go away: the test sees updates and deletes.
        for (old, new) in changed(&before, &want, site) {
            match (old, new) {
                (Some(_), None) => deleted += 1,
                (Some(_), Some(_)) => updated += 1,
                _ => {}
            }
        }
        before = want;
    }
    assert!(
        deleted > 5 && updated > 5,
        "deleted {deleted}, updated {updated}"
    );
    assert!(!before.is_empty());
    // 72 readings: the global row went at 40.
    assert_eq!(read_total(&db, &total).await, vec![]);
    for s in sinks.values_mut() {
        s.close().await.unwrap();
    }
    // Keyed by the view's key; the global aggregate's table has no key.
    assert_eq!(table_key(&db, &quiet).await, vec!["site"]);
    assert_eq!(table_key(&db, &total).await, Vec::<String>::new());

    // A restart from checkpoint 2 writes the changes of steps 3.. again, in other
    // transactions (one per checkpoint: 'batch.rows' is large).
    let replay_dir = tempfile::tempdir().unwrap();
    let (_p2, mut sinks2) = updating_pipeline(replay_dir.path(), &url, tables, 1000).await;
    for (view, s) in sinks2.iter_mut() {
        s.recover(Some((2, checkpoints[1][view].clone())))
            .await
            .unwrap();
    }
    for (step, out) in outputs.iter().enumerate().skip(2) {
        write_outputs(&mut sinks2, out).await;
        for s in sinks2.values_mut() {
            s.precommit(step as u64 + 1).await.unwrap();
        }
    }
    for s in sinks2.values_mut() {
        s.close().await.unwrap();
    }
    assert_eq!(read_quiet(&db, &quiet).await, before);
    assert_eq!(read_total(&db, &total).await, vec![]);
    let (epoch, rows): (i64, i64) =
        sqlx::query_as("SELECT epoch, rows FROM weir.sink_progress WHERE sink = 'quiet_pg'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(epoch, 6);
    assert!(rows > 0);

    // Everything again from the start, one change per transaction.
    let again_dir = tempfile::tempdir().unwrap();
    let (_p3, mut sinks3) = updating_pipeline(again_dir.path(), &url, tables, 1).await;
    for s in sinks3.values_mut() {
        s.recover(None).await.unwrap();
    }
    write_outputs(&mut sinks3, outputs.iter().flatten()).await;
    for s in sinks3.values_mut() {
        s.close().await.unwrap();
    }
    assert_eq!(read_quiet(&db, &quiet).await, before);
    assert_eq!(read_total(&db, &total).await, vec![]);
}
