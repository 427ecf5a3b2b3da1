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
use weir_tests::slt::format_batches;

const T0: i64 = 1_714_557_600_000; // 2024-05-01T10:00:00Z

/// The dead letter of source `ev`'s record `raw` at `position` without its event time
/// (`time` aside).
fn no_event_time(raw: &str, position: String) -> serde_json::Value {
    serde_json::json!({
        "source": "ev",
        "raw": raw,
        "reason": "missing or null value for NOT NULL column 'ts'",
        "position": position,
    })
}

/// Read `input` (`format`) with a file source `ev` (id, ts, region; watermark on ts; bad
/// records to the dead-letter file) to its end, with a view counting rows per 10-second
/// window into Parquet; the view's rows (window_start, n) and the dead-letter records
/// (parsed, `time` checked and removed).
async fn run_to_end(
    dir: &Path,
    input: &Path,
    format: &str,
) -> (Vec<Vec<String>>, Vec<serde_json::Value>) {
    let lake = dir.join("lake");
    let sql = format!(
        "CREATE SOURCE ev (id BIGINT, ts TIMESTAMP, region TEXT, \
           WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
         WITH (connector = 'file', path = '{}', format = '{format}', \
           'bad.records' = 'dead-letter'); \
         CREATE MATERIALIZED VIEW counts AS SELECT window_start, count(*) AS n \
           FROM TUMBLE(ev, ts, INTERVAL '10' SECOND) GROUP BY window_start; \
         CREATE SINK out FROM counts WITH (connector = 'parquet', path = '{}');",
        input.display(),
        lake.display()
    );
    let data_dir = dir.join("data");
    let before = chrono::Utc::now();
    weir_tests::run_until_done(&data_dir, &sql).await;
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
    let (rows, dead) = run_to_end(dir.path(), &input, "json").await;
    assert_eq!(rows, vec![vec!["2024-05-01T10:00:00", "2"]]);
    let position = |line: u32| format!("file {} line {line}", input.display());
    assert_eq!(
        dead,
        vec![
            no_event_time(r#"{"id": 2, "region": "US"}"#, position(2)),
            no_event_time(r#"{"id": 3, "ts": null, "region": "AP"}"#, position(3)),
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

    let (rows, dead) = run_to_end(dir.path(), &input, "parquet").await;
    assert_eq!(
        rows,
        vec![
            vec!["2024-05-01T10:00:00", "1"],
            vec!["2024-05-01T10:00:10", "1"]
        ]
    );
    let position = |row: u32| format!("file {} row {row}", input.display());
    // The row as JSON, in column order.
    assert_eq!(
        dead,
        vec![
            no_event_time(r#"{"id":2,"ts":null,"region":"US"}"#, position(2)),
            no_event_time(r#"{"id":4,"ts":null,"region":null}"#, position(4)),
        ]
    );
}
