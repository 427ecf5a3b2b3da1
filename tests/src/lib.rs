//! Test support for Weir: the streaming sqllogictest runner and its `test` connector.
//!
//! A `.slt` file declares sources with `connector = 'test'`, feeds them with runner
//! statements, and asserts what views emitted with ordinary SELECTs over retained rows:
//!
//! - `INSERT INTO src [PARTITION n] VALUES (...), (...)` — one micro-batch (or one batch
//!   per row in the one-row mode); values are cast to the source's column types.
//! - `PUSH src [PARTITION n]` followed by raw JSON lines — decoded by the real JSON decoder
//!   with the source's `bad.records` policy.
//! - `ADVANCE TIME '10s'` — move processing time (idle partitions, `EMIT EVERY`).
//! - `END src` — the source ends (bounded sources closing their windows); `END src PARTITION n`
//!   — one partition has no more data (a file read to its end).
//! - `DEAD LETTERS src` — the dead-letter records written for a source: raw, reason, position.
//! - `LATE ROWS view` — the late rows a view with `'late.policy' = 'dead-letter'` wrote to
//!   its dead-letter file: the row as JSON, window_start, window_end, watermark, reason.
//! - `CHECKPOINT` — write a checkpoint (to the file's data directory).
//! - `RESTART` — throw the pipeline away and start a new one as after a crash: the
//!   statements before the last checkpoint, the checkpoint restored, then everything after
//!   it replayed (what a real source's replay from the checkpoint's positions does).
//!
//! Every file runs in three modes whose output must be the same: as written, with every
//! batch split into one-row micro-batches, and with a CHECKPOINT and a RESTART after
//! every statement.
//!
//! The runner steps the engine synchronously: no sleeps, no retries.
//!
//! [`schema_registry`] is an in-process stand-in for a Confluent-compatible schema registry,
//! for the Avro tests.

pub mod schema_registry;
pub mod slt;

/// Whether the tests run in CI (`CI` set to anything but empty, `false` or `0`). In CI a
/// missing service (Kafka broker, PostgreSQL) fails the tests that need it; elsewhere they
/// are skipped with a loud message. Every service helper asks this one function.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Run `sql` in a pipeline over every connector, with `data_dir`, until every source has
/// ended (`weir run --until-done`); panics on an error or another ending.
pub async fn run_until_done(data_dir: &std::path::Path, sql: &str) {
    run_until_done_on(data_dir, sql, None).await
}

/// [`run_until_done`] on `workers` engine workers (`None`: the default, every core).
pub async fn run_until_done_on(data_dir: &std::path::Path, sql: &str, workers: Option<usize>) {
    use weir_engine::pipeline::{EngineConfig, Pipeline};
    use weir_engine::runtime::{RunEnd, RunOptions, run};
    let defaults = EngineConfig::default();
    let mut p = Pipeline::new(
        EngineConfig {
            data_dir: data_dir.to_path_buf(),
            workers: workers.unwrap_or(defaults.workers),
            ..defaults
        },
        weir_connectors::registry(),
    );
    p.execute(sql).await.expect("ddl");
    let options = RunOptions {
        until_done: true,
        ..RunOptions::default()
    };
    let end = run(p, options, std::future::pending()).await.expect("run");
    assert_eq!(end, RunEnd::Done);
}
