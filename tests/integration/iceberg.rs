//! The Iceberg sink: the real `weir` binary killed with SIGKILL at random moments and
//! restarted, and the table read back at the end with pyiceberg (PyPI, in a venv that
//! scripts/pyiceberg.sh installs): its rows equal the batch answer over the input, there is
//! one snapshot per committed checkpoint epoch, and its schema and partition spec are the
//! ones docs/lake.md documents. Once with the filesystem catalog (the sink switched from
//! Parquet to Iceberg by the configuration's `[sinks.lake]`, as the demo is), once with the
//! SQL catalog in the real PostgreSQL of scripts/postgres.sh.

#![allow(clippy::unwrap_used)]

use crate::lake::{EVENTS, T0, expected, kill_three_times, pipeline, start};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The table as pyiceberg reads it (tests/lake/read_iceberg.py's JSON), or what it said
/// when it could not.
fn try_pyiceberg(args: &[String]) -> Result<serde_json::Value, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pyiceberg.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg("read")
        .args(args)
        .output()
        .expect("running scripts/pyiceberg.sh");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).to_string());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// The reader's arguments for table `<namespace>.per_second` in the SQL catalog `weir` in
/// the Postgres at `url` (SQLAlchemy's form of it), with its warehouse.
fn sql_catalog_args(url: &str, namespace: &str, warehouse: &str) -> Vec<String> {
    let sqlalchemy = url
        .replacen("postgres://", "postgresql+psycopg2://", 1)
        .replacen("postgresql://", "postgresql+psycopg2://", 1);
    vec![
        "--sql-uri".to_string(),
        sqlalchemy,
        "--catalog-name".to_string(),
        "weir".to_string(),
        "--table".to_string(),
        format!("{namespace}.per_second"),
        "--warehouse".to_string(),
        warehouse.to_string(),
    ]
}

/// The sum of the `n` column pyiceberg reads (0 while there is no table).
fn events_in(args: &[String]) -> i64 {
    try_pyiceberg(args).map_or(0, |t| {
        t["rows"]
            .as_array()
            .map_or(0, |rows| rows.iter().filter_map(|r| r[2].as_i64()).sum())
    })
}

/// Check what pyiceberg read: the rows are the batch answer over the first `events`
/// events, once each (plus the window the clean stop closes), every snapshot an append by
/// sink `lake` with a checkpoint epoch that completed (per the log), each epoch once and
/// in order, and the documented schema and partition spec.
fn check(table: &serde_json::Value, events: i64, log: &str) {
    let mut want = expected(events);
    want.insert((T0 + 3_600_000, "end".to_string()), 1);
    let mut got: BTreeMap<(i64, String), i64> = BTreeMap::new();
    for r in table["rows"].as_array().unwrap() {
        let key = (r[0].as_i64().unwrap(), r[1].as_str().unwrap().to_string());
        let old = got.insert(key.clone(), r[2].as_i64().unwrap());
        assert!(old.is_none(), "{key:?} twice");
    }
    assert_eq!(got.len(), want.len(), "rows");
    assert_eq!(got, want, "the batch answer, once");

    let completed: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("checkpoint complete"))
        .filter_map(|l| l.split("epoch=").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    let mut last = 0u64;
    let snapshots = table["snapshots"].as_array().unwrap();
    assert!(!snapshots.is_empty());
    for s in snapshots {
        assert_eq!(s["operation"], "append", "{s}");
        assert_eq!(s["summary"]["weir.sink"], "lake", "{s}");
        let epoch: u64 = s["summary"]["weir.epoch"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            epoch > last,
            "epoch {epoch} after {last}: committed twice or out of order"
        );
        assert!(
            completed.contains(&epoch),
            "snapshot of epoch {epoch}, which never completed (completed: {completed:?})"
        );
        last = epoch;
    }
    assert_eq!(
        table["schema"],
        serde_json::json!([
            [1, "window_start", "timestamp", true],
            [2, "region", "string", false],
            [3, "n", "long", true]
        ])
    );
    assert_eq!(
        table["partition_spec"],
        serde_json::json!([[1, "window_start_hour", "hour"], [2, "region", "identity"]])
    );
    eprintln!(
        "iceberg: {} rows in {} files, {} snapshots for {} checkpoints; restarts that \
         committed a staged epoch: {}, that removed uncommitted files: {}",
        got.len(),
        table["files"],
        snapshots.len(),
        completed.len(),
        log.matches("committing the iceberg files the checkpoint had staged")
            .count(),
        log.matches("removed iceberg data files").count()
    );
}

/// Run the last time until pyiceberg (`args`) sees all `events` in the table, then stop
/// cleanly (which closes the last window and commits it), and read the table.
async fn finish(
    dir: &Path,
    sql: &Path,
    config: &Path,
    args: &[String],
    events: i64,
) -> serde_json::Value {
    let mut child = start(dir, 0, sql, config);
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let n = events_in(args);
        if n >= events {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} of {events} events in the table after 240 s"
        );
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success(), "a clean stop");
    try_pyiceberg(args).unwrap_or_else(|e| panic!("pyiceberg could not read the table: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_filesystem_catalog_survives_sigkill_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = dir.path().join("warehouse");
    // The statement says Parquet; one section of the configuration makes it Iceberg (the
    // demo's way, docs/lake.md).
    let sql = pipeline(
        dir.path(),
        EVENTS,
        "connector = 'parquet', path = 'data/lake/per_second'",
    );
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        format!(
            "[checkpoint]\ninterval = \"200ms\"\n[engine]\nbatch_rows = 2000\n\
             [sinks.lake]\nconnector = \"iceberg\"\nwarehouse = \"{}\"\n\
             table = \"lake.per_second\"\n'partition.by' = \"hour, region\"\n\
             'rollover.rows' = 500\n",
            warehouse.display()
        ),
    )
    .unwrap();
    kill_three_times(dir.path(), &sql, &config, |_| 0).await;
    let table_dir = warehouse.join("lake/per_second");
    let args = ["--table-dir".to_string(), table_dir.display().to_string()];
    let table = finish(dir.path(), &sql, &config, &args, EVENTS).await;
    let log = std::fs::read_to_string(dir.path().join("weir.log")).unwrap();
    check(&table, EVENTS, &log);

    // A filter on a partition column and on another column's bounds: pyiceberg skips
    // files by partition values and by the column bounds in the manifests, so wrong bounds
    // would lose rows here.
    let mut filtered = args.to_vec();
    filtered.push("--filter".into());
    filtered.push("region == 'us' and window_start >= '2024-05-01T10:10:00'".into());
    let some = try_pyiceberg(&filtered).unwrap();
    let from = T0 + 600_000;
    let want: BTreeMap<(i64, String), i64> = expected(EVENTS)
        .into_iter()
        .filter(|((ws, region), _)| region == "us" && *ws >= from)
        .collect();
    let got: BTreeMap<(i64, String), i64> = some["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                (r[0].as_i64().unwrap(), r[1].as_str().unwrap().to_string()),
                r[2].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, want, "the filtered rows");
    assert!(
        some["files"].as_i64() < table["files"].as_i64(),
        "the filter skipped files: {} of {}",
        some["files"],
        table["files"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_sql_catalog_on_postgres_survives_sigkill_exactly_once() {
    let Some(url) = crate::postgres::pg_url() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let warehouse = dir.path().join("warehouse");
    let namespace = crate::kafka::unique("lake").replace('-', "_");
    let events = EVENTS / 4;
    let sql = pipeline(
        dir.path(),
        events,
        &format!(
            "connector = 'iceberg', catalog = 'sql', 'catalog.uri' = '{url}', \
             warehouse = '{}', table = '{namespace}.per_second', \
             'partition.by' = 'hour, region', 'rollover.rows' = '500'",
            warehouse.display()
        ),
    );
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        "[checkpoint]\ninterval = \"200ms\"\n[engine]\nbatch_rows = 2000\n",
    )
    .unwrap();
    kill_three_times(dir.path(), &sql, &config, |_| 0).await;
    let args = sql_catalog_args(&url, &namespace, &warehouse.display().to_string());
    let table = finish(dir.path(), &sql, &config, &args, events).await;
    let log = std::fs::read_to_string(dir.path().join("weir.log")).unwrap();
    check(&table, events, &log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_on_s3_with_the_sql_catalog_survives_sigkill_exactly_once() {
    let Some(url) = crate::postgres::pg_url() else {
        return;
    };
    let Some((endpoint, bucket)) = crate::lake::s3() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let namespace = crate::kafka::unique("lake_s3").replace('-', "_");
    let warehouse = format!("s3://{bucket}/{namespace}-warehouse");
    let events = EVENTS / 4;
    let sql = pipeline(
        dir.path(),
        events,
        &format!(
            "connector = 'iceberg', catalog = 'sql', 'catalog.uri' = '{url}', \
             warehouse = '{warehouse}', table = '{namespace}.per_second', \
             'partition.by' = 'hour, region', 'rollover.rows' = '500'"
        ),
    );
    let config = dir.path().join("weir.toml");
    // Checkpoints in the same store, as a replacement machine would need them.
    std::fs::write(
        &config,
        format!(
            "[checkpoint]\ninterval = \"200ms\"\ndir = \"s3://{bucket}/{namespace}-checkpoints\"\n\
             [engine]\nbatch_rows = 2000\n"
        ),
    )
    .unwrap();
    kill_three_times(dir.path(), &sql, &config, |_| 0).await;
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let mut args = sql_catalog_args(&url, &namespace, &warehouse);
    args.extend([
        "--prop".to_string(),
        format!("s3.endpoint={endpoint}"),
        "--prop".to_string(),
        format!("s3.access-key-id={}", env("AWS_ACCESS_KEY_ID")),
        "--prop".to_string(),
        format!("s3.secret-access-key={}", env("AWS_SECRET_ACCESS_KEY")),
        "--prop".to_string(),
        format!("s3.region={}", env("AWS_REGION")),
    ]);
    let table = finish(dir.path(), &sql, &config, &args, events).await;
    let log = std::fs::read_to_string(dir.path().join("weir.log")).unwrap();
    check(&table, events, &log);
}
