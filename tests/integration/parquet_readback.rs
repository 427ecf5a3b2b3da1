//! Parquet written by the sink, read back by an independent reader (DataFusion's
//! ListingTable with Hive partition discovery), equals the batch answer over the input.

use datafusion::arrow::array::{ArrayRef, Float64Array, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use std::io::Write;
use std::sync::Arc;
use weir_tests::slt::format_batches;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_sink_files_read_back_by_listing_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("events.jsonl");
    let mut f = std::fs::File::create(&input).expect("create");
    // Two days, several regions, one-minute windows; ts as epoch millis and RFC 3339.
    let day = 86_400_000i64;
    let base = 1_714_521_600_000i64; // 2024-05-01T00:00:00Z
    let regions = ["EU", "US", "AP"];
    let mut reference: (Vec<i64>, Vec<&str>, Vec<&str>, Vec<f64>) = Default::default();
    for i in 0..3000i64 {
        let ts = base + (i / 1500) * day + (i % 1500) * 997;
        let region = regions[(i % 3) as usize];
        let status = if i % 17 == 0 { "failed" } else { "success" };
        let speed = (i % 40) as f64 * 0.5;
        reference.0.push(ts);
        reference.1.push(region);
        reference.2.push(status);
        reference.3.push(speed);
        if i % 2 == 0 {
            writeln!(
                f,
                r#"{{"ts": {ts}, "region": "{region}", "status": "{status}", "speed": {speed}}}"#
            )
        } else {
            let t = chrono::DateTime::from_timestamp_millis(ts)
                .expect("ts")
                .to_rfc3339();
            writeln!(
                f,
                r#"{{"ts": "{t}", "region": "{region}", "status": "{status}", "speed": {speed}}}"#
            )
        }
        .expect("write");
    }
    drop(f);
    let lake = dir.path().join("lake");
    let view_sql = "SELECT window_start, window_end, region, count(*) AS downloads, \
        count(*) FILTER (WHERE status = 'failed') AS failures, avg(speed) AS avg_speed \
        FROM TUMBLE(events, ts, INTERVAL '1' MINUTE) GROUP BY window_start, window_end, region";
    let sql = format!(
        "CREATE SOURCE events (ts TIMESTAMP NOT NULL, region TEXT, status TEXT, speed DOUBLE, \
           WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) \
         WITH (connector = 'file', path = '{}', format = 'json'); \
         CREATE MATERIALIZED VIEW health AS {view_sql}; \
         CREATE SINK health_lake FROM health WITH (connector = 'parquet', path = '{}', \
           'partition.by' = 'day', 'rollover.rows' = '100');",
        input.display(),
        lake.display()
    );
    weir_tests::run_until_done(&dir.path().join("data"), &sql).await;

    // Hive-style day folders, no in-progress files left behind.
    let mut days: Vec<String> = std::fs::read_dir(&lake)
        .expect("lake dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
        .collect();
    days.sort();
    assert_eq!(days, vec!["dt=2024-05-01", "dt=2024-05-02"]);
    for d in &days {
        for e in std::fs::read_dir(lake.join(d)).expect("day dir") {
            let name = e.expect("entry").file_name().to_string_lossy().to_string();
            assert!(
                name.ends_with(".parquet") && !name.starts_with('.'),
                "unexpected file {name}"
            );
        }
    }

    let ctx = SessionContext::new();
    ctx.register_parquet(
        "lake",
        lake.to_str().expect("utf8 path"),
        ParquetReadOptions::default()
            .table_partition_cols(vec![("dt".to_string(), DataType::Utf8)]),
    )
    .await
    .expect("register parquet");
    let got = ctx
        .sql(
            "SELECT window_start, window_end, region, downloads, failures, avg_speed, dt FROM lake \
              ORDER BY window_start, region",
        )
        .await
        .expect("plan")
        .collect()
        .await
        .expect("read back");

    // The batch answer over the same events, held in memory.
    let batch = SessionContext::new();
    let input_batch = RecordBatch::try_from_iter(vec![
        (
            "ts",
            Arc::new(TimestampMillisecondArray::from(reference.0)) as ArrayRef,
        ),
        (
            "region",
            Arc::new(StringArray::from(reference.1)) as ArrayRef,
        ),
        (
            "status",
            Arc::new(StringArray::from(reference.2)) as ArrayRef,
        ),
        (
            "speed",
            Arc::new(Float64Array::from(reference.3)) as ArrayRef,
        ),
    ])
    .expect("reference batch");
    batch
        .register_batch("events", input_batch)
        .expect("register");
    let expected = batch
        .sql(&format!(
            "WITH agg AS ({}) \
             SELECT *, to_char(window_start, '%Y-%m-%d') AS dt FROM agg ORDER BY window_start, region",
            view_sql.replace(
                "TUMBLE(events, ts, INTERVAL '1' MINUTE)",
                "(SELECT *, date_bin(INTERVAL '1 minute', ts) AS window_start, \
                  date_bin(INTERVAL '1 minute', ts) + INTERVAL '1 minute' AS window_end FROM events) AS e"
            )
        ))
        .await
        .expect("batch plan")
        .collect()
        .await
        .expect("batch run");
    let (g, e) = (
        format_batches(&got).expect("fmt"),
        format_batches(&expected).expect("fmt"),
    );
    assert_eq!(
        e.len(),
        2 * 25 * 3,
        "expected 25 minutes x 3 regions on each of two days"
    );
    assert_eq!(g, e);
}
