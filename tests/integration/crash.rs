//! Crash recovery end to end: a real Kafka topic with 300,000 events, `weir run` (the real
//! binary) killed with SIGKILL at random moments more than 20 times and restarted each
//! time with 2, 4 or 1 workers in turn (so checkpoints written with one worker count are
//! restored with another), checkpointing every 300 ms. The final Postgres tables (an upserted windowed view
//! and an append-only view written by row id, and an updating view's upserts and deletes), the Parquet files and the Kafka topic written
//! in transactions (read with `read_committed`) must equal the answer computed directly
//! from the events: every row once, none missing. And PostgreSQL stopped for 30 s under a
//! running pipeline, then started again: the sink retries, the pipeline waits, the final
//! table is exact.

#![allow(clippy::unwrap_used)]

use crate::kafka::{
    Ev, bootstrap, broker_lock, committed_payloads, create_topic, events, produce_all, producer,
    read_topic_to_end, sentinels, unique,
};
use crate::postgres::pg_url;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{Float64Type, Int64Type, TimestampMillisecondType};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sqlx::Row;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 3;
const WINDOWS: i64 = 500;
const PER_WINDOW: i64 = 200;
const KILLS: usize = 22;

/// The `weir` binary `cargo test --workspace` built next to this test binary.
pub(crate) fn weir_bin() -> PathBuf {
    if let Ok(p) = std::env::var("WEIR_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target directory");
    let bin = dir.join("weir");
    assert!(
        bin.exists(),
        "{} does not exist: build it (cargo build -p weir-server) or set WEIR_BIN",
        bin.display()
    );
    bin
}

/// The updating view `per_status` keeps a (region, status) group while it has fewer rows
/// than this: the success groups (about 80,000 rows each) pass it and are deleted, the
/// failed ones (about 20,000) and the sentinels stay.
const UPDATING_LIMIT: i64 = 50_000;

/// One row of `per_status`: (region, status, n, speed sum).
type StatusRow = (String, String, i64, f64);

fn expected_status(evs: &[Ev]) -> Vec<StatusRow> {
    let mut m: BTreeMap<(String, String), (i64, f64)> = BTreeMap::new();
    for e in evs {
        let g = m
            .entry((e.region.to_string(), e.status.to_string()))
            .or_default();
        g.0 += 1;
        g.1 += e.speed;
    }
    let all = m.len();
    let out: Vec<StatusRow> = m
        .into_iter()
        .filter(|(_, (n, _))| *n < UPDATING_LIMIT)
        .map(|((r, s), (n, speed))| (r, s, n, speed))
        .collect();
    assert!(
        out.len() > 1 && out.len() < all,
        "some groups must leave the view and some stay"
    );
    out
}

async fn read_status(db: &sqlx::PgPool, table: &str) -> Vec<StatusRow> {
    sqlx::query(&format!(
        "SELECT region, status, n, speed FROM {table} ORDER BY region, status"
    ))
    .fetch_all(db)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

/// One window row: (window_start ms, region, downloads, failures, speed sum).
pub(crate) type WindowRow = (i64, String, i64, i64, f64);
/// One failed download: (ts ms, region, speed).
type FailedRow = (i64, String, f64);

pub(crate) fn expected(evs: &[Ev]) -> (Vec<WindowRow>, Vec<FailedRow>) {
    let mut w: BTreeMap<(i64, String), (i64, i64, f64)> = BTreeMap::new();
    let mut failed = Vec::new();
    for e in evs {
        let start = e.ts - e.ts.rem_euclid(10_000);
        let g = w.entry((start, e.region.to_string())).or_default();
        g.0 += 1;
        if e.status == "failed" {
            g.1 += 1;
            failed.push((e.ts, e.region.to_string(), e.speed));
        }
        g.2 += e.speed;
    }
    let rows = w
        .into_iter()
        .map(|((s, r), (n, f, sum))| (s, r, n, f, sum))
        .collect();
    failed.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    (rows, failed)
}

/// Start `weir run` with `workers` workers (restarts change the count: a checkpoint written
/// with one count restores into another).
fn start_weir(dir: &Path, sql: &Path, config: &Path, log: &Path, workers: usize) -> Child {
    let workers = workers.to_string();
    spawn_weir(
        dir,
        sql,
        config,
        log,
        "127.0.0.1:0",
        &["--workers", &workers],
        "info",
    )
}

/// `weir run` of `sql` with `config`, its data under `<dir>/data`, serving on `listen`,
/// its output appended to `log` with `RUST_LOG=rust_log`; `extra` arguments go before the
/// SQL file.
pub(crate) fn spawn_weir(
    dir: &Path,
    sql: &Path,
    config: &Path,
    log: &Path,
    listen: &str,
    extra: &[&str],
    rust_log: &str,
) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(weir_bin())
        .arg("run")
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen", listen, "--progress-interval", "0s"])
        .args(extra)
        .arg(sql)
        .env("RUST_LOG", rust_log)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("starting weir")
}

pub(crate) async fn read_windows(db: &sqlx::PgPool, table: &str) -> Vec<WindowRow> {
    let rows = sqlx::query(&format!(
        "SELECT window_start, region, downloads, failures, speed FROM {table} \
         ORDER BY window_start, region"
    ))
    .fetch_all(db)
    .await
    .unwrap_or_default();
    rows.iter()
        .map(|r| {
            let ts: chrono::DateTime<chrono::Utc> = r.get(0);
            (
                ts.timestamp_millis(),
                r.get::<String, _>(1),
                r.get::<i64, _>(2),
                r.get::<i64, _>(3),
                r.get::<f64, _>(4),
            )
        })
        .collect()
}

async fn read_failed(db: &sqlx::PgPool, table: &str) -> Vec<FailedRow> {
    let rows = sqlx::query(&format!("SELECT ts, region, speed_mbps FROM {table}"))
        .fetch_all(db)
        .await
        .unwrap_or_default();
    let mut out: Vec<FailedRow> = rows
        .iter()
        .map(|r| {
            let ts: chrono::DateTime<chrono::Utc> = r.get(0);
            (
                ts.timestamp_millis(),
                r.get::<String, _>(1),
                r.get::<f64, _>(2),
            )
        })
        .collect();
    out.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    out
}

/// Every published Parquet file under `dir` (hidden staged files excluded), as window rows.
pub(crate) fn read_parquet(dir: &Path) -> Vec<WindowRow> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "parquet")
                && !e.file_name().to_string_lossy().starts_with('.')
            {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    let mut rows = Vec::new();
    for f in files {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            let ts = b.column(0).as_primitive::<TimestampMillisecondType>();
            let region = b.column(2).as_string::<i32>();
            let n = b.column(3).as_primitive::<Int64Type>();
            let failed = b.column(4).as_primitive::<Int64Type>();
            let speed = b.column(5).as_primitive::<Float64Type>();
            for i in 0..b.num_rows() {
                if region.is_null(i) {
                    continue;
                }
                rows.push((
                    ts.value(i),
                    region.value(i).to_string(),
                    n.value(i),
                    failed.value(i),
                    speed.value(i),
                ));
            }
        }
    }
    rows.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    rows
}

/// The window rows of the Kafka sink's topic, as a `read_committed` consumer sees them:
/// read until there are `want` rows or 60 s have passed.
async fn read_kafka(b: &str, topic: &str, want: usize) -> Vec<WindowRow> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (b2, t2) = (b.to_string(), topic.to_string());
        let payloads = tokio::task::spawn_blocking(move || committed_payloads(&b2, &t2))
            .await
            .expect("reader task");
        if payloads.len() >= want || Instant::now() > deadline {
            let mut rows: Vec<WindowRow> = payloads.iter().map(|p| json_window_row(p)).collect();
            rows.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A window row as the Kafka sink writes it in JSON.
pub(crate) fn json_window_row(p: &str) -> WindowRow {
    let v: serde_json::Value = serde_json::from_str(p).expect("a JSON message");
    let field = |k: &str| v[k].clone();
    // The json format writes timestamps as RFC 3339 in UTC (docs/json.md).
    let start =
        chrono::DateTime::parse_from_rfc3339(field("window_start").as_str().expect("window_start"))
            .expect("an RFC 3339 window_start");
    (
        start.timestamp_millis(),
        field("region").as_str().expect("region").to_string(),
        field("downloads").as_i64().expect("downloads"),
        field("failures").as_i64().expect("failures"),
        field("speed").as_f64().expect("speed"),
    )
}

/// A tiny deterministic random source for the kill times.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_changes_no_result() {
    let Some(b) = bootstrap() else { return };
    let Some(url) = pg_url() else { return };
    let _g = broker_lock().read().await;
    let _pg = pg_lock().read().await;
    let topic = unique("crash");
    create_topic(&b, &topic, PARTITIONS).await;
    // The Kafka sink's topic; its transactional id and progress topic are unique too, so
    // that other runs of this test on the same broker do not fence it.
    let ktopic = unique("crash-out");
    create_topic(&b, &ktopic, 1).await;
    let (ktxn, kprogress) = (unique("crash-txn"), unique("crash-progress"));
    let mut evs = events(PARTITIONS, WINDOWS, PER_WINDOW, 7);
    let (want_windows, want_failed) = expected(&evs);
    // Far-future events on every partition close every window of the test.
    evs.extend(sentinels(
        PARTITIONS,
        super::kafka::T0 + (WINDOWS + 60) * 10_000,
    ));
    let p = producer(&b);
    for chunk in evs.chunks(20_000) {
        produce_all(&p, &topic, chunk).await;
    }

    let dir = tempfile::tempdir().unwrap();
    let suffix = topic.replace('-', "_");
    let (wtable, ftable) = (format!("crash_w_{suffix}"), format!("crash_f_{suffix}"));
    let stable = format!("crash_s_{suffix}");
    let lake = dir.path().join("lake");
    let sql = dir.path().join("pipeline.sql");
    std::fs::write(
        &sql,
        format!(
            "CREATE SOURCE downloads (ts TIMESTAMP NOT NULL, region TEXT, status TEXT, \
             speed_mbps DOUBLE, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) \
             WITH (connector = 'kafka', topic = '{topic}', format = 'json', \
             'scan.startup.mode' = 'earliest');\n\
             CREATE MATERIALIZED VIEW per_window AS SELECT window_start, window_end, region, \
             count(*) AS downloads, count(*) FILTER (WHERE status = 'failed') AS failures, \
             sum(speed_mbps) AS speed FROM TUMBLE(downloads, ts, INTERVAL '10' SECOND) \
             GROUP BY window_start, window_end, region;\n\
             CREATE MATERIALIZED VIEW failed AS SELECT ts, region, speed_mbps FROM downloads \
             WHERE status = 'failed';\n\
             CREATE MATERIALIZED VIEW per_status AS SELECT region, status, count(*) AS n, \
             sum(speed_mbps) AS speed FROM downloads GROUP BY region, status \
             HAVING count(*) < {UPDATING_LIMIT};\n\
             CREATE SINK pg_windows FROM per_window WITH (connector = 'postgres', url = '{url}', \
             table = '{wtable}');\n\
             CREATE SINK pg_failed FROM failed WITH (connector = 'postgres', url = '{url}', \
             table = '{ftable}', mode = 'append');\n\
             CREATE SINK pg_status FROM per_status WITH (connector = 'postgres', url = '{url}', \
             table = '{stable}');\n\
             CREATE SINK lake FROM per_window WITH (connector = 'parquet', path = '{}', \
             'rollover.rows' = '200');\n\
             CREATE SINK k FROM per_window WITH (connector = 'kafka', topic = '{ktopic}', \
             format = 'json', 'transactional.id' = '{ktxn}', 'progress.topic' = '{kprogress}');\n",
            lake.display()
        ),
    )
    .unwrap();
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbootstrap_servers = \"{b}\"\n[kafka.embedded]\nenabled = false\n\
             [checkpoint]\ninterval = \"300ms\"\n[engine]\nbatch_rows = 500\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("weir.log");
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap();

    // Kill at random moments: some during start-up and restore, most mid-stream (during
    // checkpoints and sink writes, which happen all the time at this interval).
    let mut rng = Lcg(0x5eed);
    let mut progress = Vec::new();
    for kill in 0..KILLS {
        let workers = [2, 4, 2, 1][kill % 4];
        let mut child = start_weir(dir.path(), &sql, &config, &log, workers);
        tokio::time::sleep(Duration::from_millis(150 + rng.below(1100))).await;
        child.kill().unwrap();
        child.wait().unwrap();
        progress.push(read_windows(&db, &wtable).await.len());
    }
    eprintln!("window rows in Postgres after each kill: {progress:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    let restores = text.matches("restored from checkpoint").count();
    assert!(
        restores >= KILLS / 2,
        "only {restores} of {KILLS} restarts restored a checkpoint; log:\n{text}"
    );

    // The last run goes to the end.
    let mut child = start_weir(dir.path(), &sql, &config, &log, 2);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let got = read_windows(&db, &wtable).await;
        let failed = read_failed(&db, &ftable).await;
        if got.len() >= want_windows.len() && failed.len() >= want_failed.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not finished after 300 s: {} of {} window rows, {} of {} failed rows",
            got.len(),
            want_windows.len(),
            failed.len(),
            want_failed.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A graceful stop takes a final checkpoint, which commits the last Parquet files.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "weir exited with {status}");

    assert_eq!(read_windows(&db, &wtable).await, want_windows);
    assert_eq!(read_failed(&db, &ftable).await, want_failed);
    // The updating view's table: upserts and deletes (groups pass the HAVING limit and
    // leave) replayed across the kills leave exactly its current rows.
    assert_eq!(read_status(&db, &stable).await, expected_status(&evs));
    assert_eq!(read_parquet(&lake), want_windows);
    // Exactly once through Kafka transactions: no window row missing, none twice.
    assert_eq!(
        read_kafka(&b, &ktopic, want_windows.len()).await,
        want_windows
    );
}

/// Tests that stop the shared PostgreSQL take this for writing; every other test that
/// uses it takes it for reading.
pub(crate) fn pg_lock() -> &'static tokio::sync::RwLock<()> {
    static LOCK: std::sync::OnceLock<tokio::sync::RwLock<()>> = std::sync::OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::RwLock::new(()))
}

pub(crate) fn postgres_script(action: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(action)
        .output()
        .expect("running scripts/postgres.sh");
    assert!(
        out.status.success(),
        "scripts/postgres.sh {action} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// PostgreSQL stopped for 30 s while a pipeline writes to it, then started again: the sink
/// says it is retrying, the pipeline waits (backpressure), and the final table is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_for_30_seconds_mid_stream() {
    use weir_engine::pipeline::{EngineConfig, Pipeline};
    use weir_engine::runtime::{RunEnd, RunOptions, run};
    use weir_engine::stats::{Stats, Status};
    let Some(url) = pg_url() else { return };
    let _g = pg_lock().write().await;
    const ROWS: u64 = 2_000_000;
    let table = unique("pg_outage").replace('-', "_");
    let source = format!(
        "CREATE SOURCE dl (ts TIMESTAMP NOT NULL, region TEXT, status TEXT, \
         WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (connector = 'generator', \
         kind = 'downloads', 'rows.per.second' = '0', rows = '{ROWS}', \
         start = '2024-01-01T00:00:00Z');"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut p = Pipeline::new(
        EngineConfig {
            data_dir: dir.path().to_path_buf(),
            ..EngineConfig::default()
        },
        weir_connectors::registry(),
    );
    p.execute(&format!(
        "{source}\nCREATE MATERIALIZED VIEW v AS SELECT window_start, window_end, region, \
         count(*) AS downloads, count(*) FILTER (WHERE status = 'failed') AS failures \
         FROM TUMBLE(dl, ts, INTERVAL '1' SECOND) GROUP BY window_start, window_end, region;\n\
         CREATE SINK pg FROM v WITH (connector = 'postgres', url = '{url}', table = '{table}', \
         'batch.rows' = '2000');"
    ))
    .await
    .unwrap();
    let stats = p.catalog().get("pg").expect("sink").stats;

    // The expected rows, straight from the generator's events.
    let mut want: BTreeMap<(i64, String), (i64, i64)> = BTreeMap::new();
    {
        let mut q = Pipeline::new(EngineConfig::default(), weir_connectors::registry());
        q.execute(&source).await.unwrap();
        let mut src = q.take_new_sources().pop().expect("source").1;
        loop {
            match src.next().await.unwrap() {
                weir_engine::connector::SourceEvent::Batch { batch, .. } => {
                    let ts = batch.column(0).as_primitive::<TimestampMillisecondType>();
                    let region = batch.column(1).as_string::<i32>();
                    let status = batch.column(2).as_string::<i32>();
                    for i in 0..batch.num_rows() {
                        let t = ts.value(i);
                        let g = want
                            .entry((t - t.rem_euclid(1000), region.value(i).to_string()))
                            .or_default();
                        g.0 += 1;
                        g.1 += i64::from(status.value(i) == "failed");
                    }
                }
                weir_engine::connector::SourceEvent::End => break,
                _ => {}
            }
        }
    }
    let want: Vec<(i64, String, i64, i64)> = want
        .into_iter()
        .map(|((w, r), (n, f))| (w, r, n, f))
        .collect();

    let running = tokio::spawn(run(
        p,
        RunOptions {
            until_done: true,
            ..RunOptions::default()
        },
        std::future::pending(),
    ));
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let count = |db: sqlx::PgPool, table: String| async move {
        sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&db)
            .await
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(db.clone(), table.clone()).await == 0 {
        assert!(
            Instant::now() < deadline,
            "no rows reached Postgres in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    db.close().await;
    let before = Stats::get(&stats.rows_out);
    postgres_script("stop");
    let stopped = Instant::now();
    let mut saw_retrying = false;
    while stopped.elapsed() < Duration::from_secs(30) {
        saw_retrying |= stats.status() == Status::Retrying;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let during = Stats::get(&stats.rows_out);
    postgres_script("start");
    let end = tokio::time::timeout(Duration::from_secs(300), running)
        .await
        .expect("the pipeline did not finish within 300 s of PostgreSQL coming back")
        .unwrap()
        .unwrap();
    assert_eq!(end, RunEnd::Done);
    assert!(saw_retrying, "the sink never said it was retrying");
    assert!(
        Stats::get(&stats.errors) > 0,
        "retried failures are counted"
    );
    assert!(
        before < want.len() as u64,
        "the outage started mid-stream: {before} of {} rows were written before it",
        want.len()
    );
    assert!(
        during <= before + 4000,
        "nothing is written while PostgreSQL is down ({before} before, {during} after 30 s)"
    );
    assert_ne!(stats.status(), Status::Retrying, "running again");

    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let rows = sqlx::query(&format!(
        "SELECT window_start, region, downloads, failures FROM {table} ORDER BY window_start, region"
    ))
    .fetch_all(&db)
    .await
    .unwrap();
    let got: Vec<(i64, String, i64, i64)> = rows
        .iter()
        .map(|r| {
            let ts: chrono::DateTime<chrono::Utc> = r.get(0);
            (ts.timestamp_millis(), r.get(1), r.get(2), r.get(3))
        })
        .collect();
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want);
}

/// Events posted to an `http` source while `weir` (on a real Kafka) is killed with SIGKILL
/// and restarted: every acknowledged event reaches the view exactly once, and the view
/// holds exactly the events the source's topic holds (an unacknowledged request may or
/// may not have been written, never twice). `WEIR_HTTP_CRASH_KILLS` sets the number of
/// kills (3 by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_events_acknowledged_survive_sigkill() {
    let Some(b) = bootstrap() else { return };
    let _g = broker_lock().read().await;
    let topic = unique("http-crash");
    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("http.sql");
    std::fs::write(
        &sql,
        format!(
            "CREATE SOURCE ev (id BIGINT NOT NULL, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts) \
             WITH (connector = 'http', topic = '{topic}', partitions = '2', 'group.id' = '{topic}');\n\
             CREATE MATERIALIZED VIEW got WITH ('retention.rows' = '1000000') AS SELECT id FROM ev;\n"
        ),
    )
    .unwrap();
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbootstrap_servers = \"{b}\"\n[kafka.embedded]\nenabled = false\n\
             [checkpoint]\ninterval = \"300ms\"\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("weir.log");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let base = format!("http://127.0.0.1:{port}");
    let listen = format!("127.0.0.1:{port}");
    let start = || spawn_weir(dir.path(), &sql, &config, &log, &listen, &[], "info");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let healthy = |agent: &ureq::Agent| {
        agent
            .get(format!("{base}/health"))
            .call()
            .is_ok_and(|r| r.status() == 200)
    };
    // Posts batches of 40 events with ids counting up, until told to stop; returns the
    // ids acknowledged and the last id tried.
    let poster = |agent: ureq::Agent, stop: Arc<AtomicBool>, from: i64| {
        let base = base.clone();
        std::thread::spawn(move || {
            let (mut acked, mut next) = (Vec::new(), from);
            while !stop.load(Ordering::Relaxed) {
                let ids: Vec<i64> = (next..next + 40).collect();
                next += 40;
                let body: String = ids
                    .iter()
                    .map(|i| format!("{{\"id\":{i},\"ts\":{}}}\n", 1_714_557_600_000i64 + i))
                    .collect();
                match agent
                    .post(format!("{base}/api/v1/sources/ev/events"))
                    .send(body.as_str())
                {
                    Ok(r) if r.status() == 200 => acked.extend(ids),
                    // Refused (the server is starting or dying) or no answer: not acked.
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            (acked, next)
        })
    };
    let kills: usize = std::env::var("WEIR_HTTP_CRASH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(3);
    let mut rng = Lcg(11);
    let (mut acked, mut next) = (Vec::new(), 1i64);
    let mut child = start();
    for round in 0..=kills {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !healthy(&agent) {
            assert!(
                Instant::now() < deadline,
                "weir did not come up (round {round})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let posting = poster(agent.clone(), stop.clone(), next);
        tokio::time::sleep(Duration::from_millis(500 + rng.below(1500))).await;
        if round < kills {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let (a, n) = posting.join().unwrap();
        acked.extend(a);
        next = n;
        if round < kills {
            child = start();
        }
    }
    assert!(acked.len() >= 40, "some requests were acknowledged");
    // The batch answer: the events the topic holds.
    let mut held: Vec<i64> = read_topic_to_end(&b, &topic)
        .iter()
        .map(|m| {
            let v: serde_json::Value =
                serde_json::from_slice(rdkafka::Message::payload(m).unwrap()).unwrap();
            v["id"].as_i64().unwrap()
        })
        .collect();
    held.sort_unstable();
    // Every row of the view, a page at a time.
    let view = |agent: &ureq::Agent| -> Vec<i64> {
        let (mut ids, mut since) = (Vec::new(), 0u64);
        loop {
            let v: serde_json::Value = agent
                .get(format!(
                    "{base}/api/v1/views/got/rows?since_seq={since}&limit=10000"
                ))
                .call()
                .unwrap()
                .body_mut()
                .read_to_string()
                .map(|t| serde_json::from_str(&t).unwrap())
                .unwrap();
            let rows = v["rows"].as_array().unwrap();
            if rows.is_empty() {
                break;
            }
            ids.extend(rows.iter().map(|r| r["id"].as_i64().unwrap()));
            since = v["first_seq"].as_u64().unwrap() + rows.len() as u64 - 1;
        }
        ids.sort_unstable();
        ids
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while view(&agent).len() < held.len() {
        assert!(
            Instant::now() < deadline,
            "the view has {} of the {} events in the topic",
            view(&agent).len(),
            held.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = view(&agent);
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    assert!(child.wait().unwrap().success());
    let mut dedup = held.clone();
    dedup.dedup();
    assert_eq!(dedup.len(), held.len(), "no event was written twice");
    assert_eq!(got, held, "the view holds exactly the events in the topic");
    let held: std::collections::HashSet<i64> = held.into_iter().collect();
    let lost: Vec<&i64> = acked.iter().filter(|i| !held.contains(i)).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    eprintln!(
        "http crash test: {kills} kills, {} events acknowledged, {} in the topic",
        acked.len(),
        held.len()
    );
}
