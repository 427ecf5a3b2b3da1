//! A source's WATERMARK column is NOT NULL: a record of the file source without its event
//! time (missing, or null) is a bad record. With `'bad.records' = 'dead-letter'` it goes to
//! the source's dead-letter file, and the rest of the file goes on.

use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use std::path::Path;
use std::sync::Arc;
use weir_engine::pipeline::{EngineConfig, Pipeline};
use weir_engine::runtime::{RunEnd, RunOptions, run};
use weir_tests::slt::format_batches;

const T0: i64 = 1_714_557_600_000; // 2024-05-01T10:00:00Z

/// Run `source_sql` (a file source named `ev` with columns id, ts, region) to its end with a
/// view counting rows per 10-second window into Parquet; the view's rows (window_start, n)
/// and the dead-letter records (parsed, `time` checked and removed).
async fn run_to_end(dir: &Path, source_sql: &str) -> (Vec<Vec<String>>, Vec<serde_json::Value>) {
    let lake = dir.join("lake");
    let sql = format!(
        "{source_sql}; \
         CREATE MATERIALIZED VIEW counts AS SELECT window_start, count(*) AS n \
           FROM TUMBLE(ev, ts, INTERVAL '10' SECOND) GROUP BY window_start; \
         CREATE SINK out FROM counts WITH (connector = 'parquet', path = '{}');",
        lake.display()
    );
    let data_dir = dir.join("data");
    let mut p = Pipeline::new(
        EngineConfig {
            data_dir: data_dir.clone(),
            ..EngineConfig::default()
        },
        weir_connectors::registry(),
    );
    p.execute(&sql).await.expect("ddl");
    let before = chrono::Utc::now();
    let end = run(
        p,
        RunOptions {
            until_done: true,
            ..RunOptions::default()
        },
        std::future::pending(),
    )
    .await
    .expect("run");
    assert_eq!(end, RunEnd::Done);
    let after = chrono::Utc::now();

    let ctx = SessionContext::new();
    ctx.register_parquet(
        "lake",
        lake.to_str().expect("utf8 path"),
        ParquetReadOptions::default(),
    )
    .await
    .expect("register parquet");
    let rows = ctx
        .sql("SELECT window_start, n FROM lake ORDER BY window_start")
        .await
        .expect("plan")
        .collect()
        .await
        .expect("read back");

    let text = std::fs::read_to_string(data_dir.join("dead-letter").join("ev.jsonl"))
        .expect("dead-letter file");
    let records = text
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            let time = v
                .as_object_mut()
                .and_then(|o| o.remove("time"))
                .and_then(|t| t.as_str().map(str::to_string))
                .expect("time");
            let time = chrono::DateTime::parse_from_rfc3339(&time).expect("RFC 3339 time");
            // Written during the run, in UTC with milliseconds.
            assert!(time >= before - chrono::TimeDelta::milliseconds(1) && time <= after);
            v
        })
        .collect();
    (format_batches(&rows).expect("format"), records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_without_event_time_go_to_the_dead_letter_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("ev.jsonl");
    std::fs::write(
        &input,
        format!(
            "{{\"id\": 1, \"ts\": {T0}, \"region\": \"EU\"}}\n\
             {{\"id\": 2, \"region\": \"US\"}}\n\
             {{\"id\": 3, \"ts\": null, \"region\": \"AP\"}}\n\
             {{\"id\": 4, \"ts\": \"2024-05-01T10:00:05Z\", \"region\": \"EU\"}}\n"
        ),
    )
    .expect("write input");
    let (rows, dead) = run_to_end(
        dir.path(),
        &format!(
            "CREATE SOURCE ev (id BIGINT, ts TIMESTAMP, region TEXT, \
               WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
             WITH (connector = 'file', path = '{}', format = 'json', \
               'bad.records' = 'dead-letter')",
            input.display()
        ),
    )
    .await;
    assert_eq!(rows, vec![vec!["2024-05-01T10:00:00", "2"]]);
    let position = |line: u32| format!("file {} line {line}", input.display());
    assert_eq!(
        dead,
        vec![
            serde_json::json!({
                "source": "ev",
                "raw": "{\"id\": 2, \"region\": \"US\"}",
                "reason": "missing or null value for NOT NULL column 'ts'",
                "position": position(2),
            }),
            serde_json::json!({
                "source": "ev",
                "raw": "{\"id\": 3, \"ts\": null, \"region\": \"AP\"}",
                "reason": "missing or null value for NOT NULL column 'ts'",
                "position": position(3),
            }),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_rows_without_event_time_go_to_the_dead_letter_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("ev.parquet");
    // The file's ts column is nullable; the source's watermark column is not.
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("region", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(vec![1, 2, 3, 4])) as ArrayRef,
            Arc::new(TimestampMillisecondArray::from(vec![
                Some(T0),
                None,
                Some(T0 + 12_000),
                None,
            ])),
            Arc::new(StringArray::from(vec![Some("EU"), Some("US"), None, None])),
        ],
    )
    .expect("batch");
    let mut w = ArrowWriter::try_new(std::fs::File::create(&input).expect("create"), schema, None)
        .expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");

    let (rows, dead) = run_to_end(
        dir.path(),
        &format!(
            "CREATE SOURCE ev (id BIGINT, ts TIMESTAMP, region TEXT, \
               WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
             WITH (connector = 'file', path = '{}', format = 'parquet', \
               'bad.records' = 'dead-letter')",
            input.display()
        ),
    )
    .await;
    assert_eq!(
        rows,
        vec![
            vec!["2024-05-01T10:00:00", "1"],
            vec!["2024-05-01T10:00:10", "1"]
        ]
    );
    let position = |row: u32| format!("file {} row {row}", input.display());
    assert_eq!(
        dead,
        vec![
            serde_json::json!({
                "source": "ev",
                "raw": "{\"id\":2,\"ts\":null,\"region\":\"US\"}",
                "reason": "missing or null value for NOT NULL column 'ts'",
                "position": position(2),
            }),
            serde_json::json!({
                "source": "ev",
                "raw": "{\"id\":4,\"ts\":null,\"region\":null}",
                "reason": "missing or null value for NOT NULL column 'ts'",
                "position": position(4),
            }),
        ]
    );
}
