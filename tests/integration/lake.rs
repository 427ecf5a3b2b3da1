//! The Parquet sink and checkpoints on object storage: a real S3-compatible server
//! (scripts/s3.sh), the real `weir` binary killed with SIGKILL at random moments and
//! restarted, the last times on a "replacement machine" (an empty data directory) that has
//! only the checkpoints in the store to go on, and at the end every object under the
//! sink's prefix read back with an independent S3 client: the rows equal the batch answer
//! over the input, none twice, and no staged file is visible.

#![allow(clippy::unwrap_used)]

use crate::crash::spawn_weir;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{Int64Type, TimestampMillisecondType};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use std::collections::BTreeMap;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The S3 server's settings from scripts/s3.sh's environment, or `None` (skipped) outside
/// CI when it is not running.
pub(crate) fn s3() -> Option<(String, String)> {
    match (
        std::env::var("WEIR_S3_ENDPOINT"),
        std::env::var("WEIR_S3_BUCKET"),
    ) {
        (Ok(e), Ok(b)) if !e.is_empty() && !b.is_empty() => Some((e, b)),
        _ if weir_tests::in_ci() => panic!(
            "WEIR_S3_ENDPOINT is not set: CI must run these tests against a real S3 server \
             (scripts/test.sh starts one with scripts/s3.sh)"
        ),
        _ => {
            eprintln!(
                "SKIPPED: no S3 server (WEIR_S3_ENDPOINT unset); run scripts/test.sh, or \
                 scripts/s3.sh start and eval \"$(scripts/s3.sh env)\""
            );
            None
        }
    }
}

const REGIONS: [&str; 5] = ["eu", "us", "ap", "sa", "af"];
pub(crate) const EVENTS: i64 = 2_000_000;
pub(crate) const T0: i64 = 1_714_557_600_000;

/// Event `i`: 1,000 per second of event time, regions in turn.
fn event(i: i64) -> (i64, &'static str) {
    (T0 + i, REGIONS[(i % 5) as usize])
}

/// Run weir on "machine" `machine`: its own data directory under `dir`, one log for all.
pub(crate) fn start(
    dir: &std::path::Path,
    machine: usize,
    sql: &std::path::Path,
    config: &std::path::Path,
) -> Child {
    // The runtime's debug lines say when each checkpoint completes.
    let log = dir.join("weir.log");
    spawn_weir(
        &dir.join(format!("machine-{machine}")),
        sql,
        config,
        &log,
        "127.0.0.1:0",
        &[],
        "info,weir_engine::runtime=debug",
    )
}

/// The checkpoints the log says committed, for the wait below.
pub(crate) fn committed(dir: &std::path::Path) -> usize {
    std::fs::read_to_string(dir.join("weir.log"))
        .unwrap_or_default()
        .matches("checkpoint complete")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_on_s3_survives_sigkill_exactly_once() {
    let Some((endpoint, bucket)) = s3() else {
        return;
    };
    let prefix = crate::kafka::unique("lake");
    let dir = tempfile::tempdir().unwrap();
    let sql = pipeline(
        dir.path(),
        EVENTS,
        &format!(
            "connector = 'parquet', path = 's3://{bucket}/{prefix}', 'partition.by' = 'hour', \
             'rollover.rows' = '100'"
        ),
    );
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        format!(
            "[checkpoint]\ninterval = \"200ms\"\ndir = \"s3://{bucket}/{prefix}-checkpoints\"\n\
             [engine]\nbatch_rows = 2000\n"
        ),
    )
    .unwrap();
    // Twice on the first machine, then on a second one, which also finishes the job.
    kill_three_times(dir.path(), &sql, &config, |round| round / 2).await;
    // The last run goes to the end, then stops cleanly (a final checkpoint, uploaded).
    let mut child = start(dir.path(), 1, &sql, &config);
    let want = expected(EVENTS);
    let store = reader(&endpoint, &bucket);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        // Everything uploaded so far (objects appear only as checkpoints commit).
        let got = read_back(&store, &prefix).await;
        if got.values().sum::<i64>() >= EVENTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {EVENTS} events in the lake after 180 s",
            got.values().sum::<i64>()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success(), "a clean stop");
    let names = list(&store, &prefix).await;
    assert!(
        names.iter().all(|n| {
            let file = n.rsplit('/').next().unwrap_or("");
            file.starts_with("part-") && file.ends_with(".parquet")
        }),
        "only published files: {names:?}"
    );
    let mut got = read_back(&store, &prefix).await;
    // A clean stop closes the windows still open: the last event's comes out too.
    assert_eq!(got.remove(&(T0 + 3_600_000, "end".to_string())), Some(1));
    assert_eq!(got, want, "the batch answer, once");
    // The checkpoints in the store: the newest two (retain = 2), each with its manifest;
    // nothing of older or unfinished ones.
    let checkpoints = list(&store, &format!("{prefix}-checkpoints")).await;
    let manifests: Vec<&String> = checkpoints
        .iter()
        .filter(|n| n.contains("/manifest-"))
        .collect();
    assert_eq!(manifests.len(), 2, "{checkpoints:?}");
    for n in &checkpoints {
        if let Some(epoch) = n.split("/epoch-").nth(1).and_then(|e| e.split('/').next()) {
            assert!(
                manifests
                    .iter()
                    .any(|m| m.ends_with(&format!("manifest-{epoch}.json"))),
                "state of a checkpoint without its manifest: {n}"
            );
        }
    }
    let log = std::fs::read_to_string(dir.path().join("weir.log")).unwrap_or_default();
    assert!(
        log.contains("downloaded checkpoint"),
        "the second machine resumed from the checkpoints in the store"
    );
    eprintln!(
        "lake test: {} objects; checkpoints downloaded by the second machine: {}; restarts \
         that completed staged uploads: {}, that abandoned uploads of unfinished checkpoints: \
         {}, that published staged files: {}, that removed unfinished ones: {}",
        names.len(),
        log.matches("downloaded checkpoint").count(),
        log.matches("completed parquet uploads the checkpoint had staged")
            .count(),
        log.matches("abandoned parquet uploads staged").count(),
        log.matches("published parquet files the checkpoint had staged")
            .count(),
        log.matches("removed parquet files written after the last checkpoint")
            .count()
    );
}

/// Write `events` events (and a last one an hour later that closes every window before
/// it) to `dir/events.jsonl`, and the pipeline counting them per second and region into
/// `sink` (a WITH clause) to `dir/lake.sql`; returns the SQL file's path.
pub(crate) fn pipeline(dir: &std::path::Path, events: i64, sink: &str) -> std::path::PathBuf {
    let input = dir.join("events.jsonl");
    let mut lines = String::new();
    for i in 0..events {
        let (ts, region) = event(i);
        lines.push_str(&format!("{{\"ts\":{ts},\"region\":\"{region}\"}}\n"));
    }
    lines.push_str(&format!(
        "{{\"ts\":{},\"region\":\"end\"}}\n",
        T0 + 3_600_000
    ));
    std::fs::write(&input, lines).unwrap();
    let sql = dir.join("lake.sql");
    std::fs::write(
        &sql,
        format!(
            "CREATE SOURCE ev (ts TIMESTAMP NOT NULL, region TEXT, WATERMARK FOR ts AS ts) \
               WITH (connector = 'file', path = '{}');\n\
             CREATE MATERIALIZED VIEW per_second AS \
               SELECT window_start, region, count(*) AS n FROM TUMBLE(ev, ts, INTERVAL '1' SECOND) \
               GROUP BY window_start, window_end, region;\n\
             CREATE SINK lake FROM per_second WITH ({sink});\n",
            input.display()
        ),
    )
    .unwrap();
    sql
}

/// Start weir three times, each time killing it with SIGKILL at a random moment after its
/// next checkpoint; round `r` runs on machine `machine(r)`.
pub(crate) async fn kill_three_times(
    dir: &std::path::Path,
    sql: &std::path::Path,
    config: &std::path::Path,
    machine: impl Fn(usize) -> usize,
) {
    let mut rng = 0x5eed_u64;
    for round in 0..3 {
        let before = committed(dir);
        let mut child = start(dir, machine(round), sql, config);
        let deadline = Instant::now() + Duration::from_secs(60);
        while committed(dir) < before + 1 {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join("weir.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                panic!(
                    "no checkpoint in round {round}; the log ends:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        tokio::time::sleep(Duration::from_millis(50 + (rng >> 33) % 700)).await;
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// An S3 client of the test's own, independent of Weir's.
fn reader(endpoint: &str, bucket: &str) -> impl ObjectStore {
    AmazonS3Builder::from_env()
        .with_url(format!("s3://{bucket}"))
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .build()
        .unwrap()
}

/// `(window start, region)` to count, from the first `events` events.
pub(crate) fn expected(events: i64) -> BTreeMap<(i64, String), i64> {
    let mut want = BTreeMap::new();
    for i in 0..events {
        let (ts, region) = event(i);
        *want
            .entry((ts - ts % 1000, region.to_string()))
            .or_insert(0) += 1;
    }
    want
}

async fn list(store: &impl ObjectStore, prefix: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let mut names: Vec<String> = store
        .list(Some(&ObjectPath::from(prefix)))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    names.sort();
    names
}

/// Every row of every object under `prefix`, as `(window start, region)` to count; a key
/// seen twice fails the test.
async fn read_back(store: &impl ObjectStore, prefix: &str) -> BTreeMap<(i64, String), i64> {
    let mut rows = BTreeMap::new();
    for name in list(store, prefix).await {
        let bytes = store
            .get(&ObjectPath::from(name.as_str()))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let b = batch.unwrap();
            let ws = b
                .column_by_name("window_start")
                .unwrap()
                .as_primitive::<TimestampMillisecondType>();
            let region = b.column_by_name("region").unwrap().as_string::<i32>();
            let n = b.column_by_name("n").unwrap().as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                let key = (ws.value(i), region.value(i).to_string());
                assert!(!region.is_null(i));
                let old = rows.insert(key.clone(), n.value(i));
                assert!(old.is_none(), "{key:?} twice (in {name})");
            }
        }
    }
    rows
}

/// Dead-letter records uploaded to the object store (`[dead_letter] upload`): what the
/// bucket holds is exactly the local dead-letter file, line for line, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_uploaded_to_the_object_store() {
    let Some((endpoint, bucket)) = s3() else {
        return;
    };
    let prefix = crate::kafka::unique("dead");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let mut lines = String::new();
    for i in 0..1000 {
        if i % 100 == 7 {
            lines.push_str(&format!("{{\"ts\": \"not a time {i}\"}}\n"));
        } else {
            lines.push_str(&format!("{{\"ts\":{},\"region\":\"eu\"}}\n", T0 + i));
        }
    }
    std::fs::write(&input, lines).unwrap();
    let sql = dir.path().join("dead.sql");
    std::fs::write(
        &sql,
        format!(
            "CREATE SOURCE ev (ts TIMESTAMP NOT NULL, region TEXT, WATERMARK FOR ts AS ts) \
               WITH (connector = 'file', path = '{}', 'bad.records' = 'dead-letter');\n\
             CREATE MATERIALIZED VIEW n AS SELECT window_start, count(*) AS n \
               FROM TUMBLE(ev, ts, INTERVAL '1' SECOND) GROUP BY window_start, window_end;\n",
            input.display()
        ),
    )
    .unwrap();
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        format!("[dead_letter]\nupload = \"s3://{bucket}/{prefix}\"\ninterval = \"200ms\"\n"),
    )
    .unwrap();
    let log = dir.path().join("weir.log");
    let mut child = spawn_weir(
        dir.path(),
        &sql,
        &config,
        &log,
        "127.0.0.1:0",
        &["--until-done"],
        "info",
    );
    assert!(child.wait().unwrap().success(), "ran to the end");
    let local = std::fs::read_to_string(dir.path().join("data/dead-letter/ev.jsonl")).unwrap();
    assert_eq!(local.lines().count(), 10, "{local}");
    let store = reader(&endpoint, &bucket);
    let mut uploaded = String::new();
    for name in list(&store, &prefix).await {
        assert!(name.starts_with(&format!("{prefix}/ev/")), "{name}");
        let bytes = store
            .get(&ObjectPath::from(name.as_str()))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        uploaded.push_str(std::str::from_utf8(&bytes).unwrap());
    }
    assert_eq!(uploaded, local, "the bucket holds the local records, once");
}
