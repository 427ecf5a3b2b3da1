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
    run_to_end_with(dir, input, format, "", None).await
}

/// [`run_to_end`] with more source options (`, 'key' = 'value'...`) on `workers`.
async fn run_to_end_with(
    dir: &Path,
    input: &Path,
    format: &str,
    options: &str,
    workers: Option<usize>,
) -> (Vec<Vec<String>>, Vec<serde_json::Value>) {
    let lake = dir.join("lake");
    let sql = format!(
        "CREATE SOURCE ev (id BIGINT, ts TIMESTAMP, region TEXT, \
           WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
         WITH (connector = 'file', path = '{}', format = '{format}', \
           'bad.records' = 'dead-letter'{options}); \
         CREATE MATERIALIZED VIEW counts AS SELECT window_start, count(*) AS n \
           FROM TUMBLE(ev, ts, INTERVAL '10' SECOND) GROUP BY window_start; \
         CREATE SINK out FROM counts WITH (connector = 'parquet', path = '{}');",
        input.display(),
        lake.display()
    );
    let data_dir = dir.join("data");
    let before = chrono::Utc::now();
    weir_tests::run_until_done_on(&data_dir, &sql, workers).await;
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

    // No bad record, no file.
    let text =
        std::fs::read_to_string(data_dir.join("dead-letter").join("ev.jsonl")).unwrap_or_default();
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

/// Write `batch` to a new Parquet file, in row groups of at most `group_rows` if given.
fn write_parquet(path: &Path, batch: &RecordBatch, group_rows: Option<usize>) {
    let props = group_rows.map(|rows| {
        datafusion::parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_row_count(Some(rows))
            .build()
    });
    let file = std::fs::File::create(path).expect("create");
    let mut w = ArrowWriter::try_new(file, batch.schema(), props).expect("writer");
    w.write(batch).expect("write");
    w.close().expect("close");
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
        schema,
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
    write_parquet(&input, &batch, None);

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

/// One Parquet file of 12 row groups read as 6 partitions (`'parquet.partition.rows'`),
/// whose event times overlap (each partition spans the same two minutes, in order within
/// itself): on 1 and 3 workers, every row counts in its window (none is late: a partition
/// not yet read holds the watermark at its statistics' least time), as in batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_row_groups_read_in_parallel_give_the_batch_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("ev.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("region", DataType::Utf8, true),
    ]));
    let (partitions, per_partition) = (6i64, 1_000i64);
    let mut ts = Vec::new();
    for p in 0..partitions {
        // Sorted within the partition, spread over two minutes differently in each.
        let mut times: Vec<i64> = (0..per_partition)
            .map(|i| T0 + (i * 7_919 + p * 104_729) % 120_000)
            .collect();
        times.sort_unstable();
        ts.extend(times);
    }
    let n = ts.len() as i64;
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(0..n)) as ArrayRef,
            Arc::new(TimestampMillisecondArray::from(ts.clone())),
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| ["EU", "US"][i as usize % 2]),
            )),
        ],
    )
    .expect("batch");
    write_parquet(&input, &batch, Some(500));

    let mut want: std::collections::BTreeMap<i64, u64> = Default::default();
    for t in &ts {
        *want.entry(t - t.rem_euclid(10_000)).or_default() += 1;
    }
    let want: Vec<Vec<String>> = want
        .into_iter()
        .map(|(start, count)| {
            let start = chrono::DateTime::from_timestamp_millis(start).expect("time");
            vec![
                start.naive_utc().format("%Y-%m-%dT%H:%M:%S").to_string(),
                count.to_string(),
            ]
        })
        .collect();
    for workers in [1, 3] {
        let run = dir.path().join(format!("run-{workers}"));
        std::fs::create_dir_all(&run).expect("run dir");
        let (rows, dead) = run_to_end_with(
            &run,
            &input,
            "parquet",
            ", 'parquet.partition.rows' = '1000'",
            Some(workers),
        )
        .await;
        assert!(dead.is_empty(), "{dead:?}");
        assert_eq!(rows, want, "{workers} workers");
    }
}
