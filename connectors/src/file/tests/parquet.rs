//! Tests of the file source over Parquet: projection and casts, decoding on several
//! threads, row groups as partitions, rows without their event time, missing columns.

use super::*;
use datafusion::arrow::array::{ArrayRef, Int32Array, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::TimestampMillisecondType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;

fn write_parquet(path: &Path, ids: &[i32]) {
    let file_schema = Arc::new(Schema::new(vec![
        Field::new("extra", DataType::Utf8, true),
        Field::new("name", DataType::Utf8, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("id", DataType::Int32, false),
    ]));
    let n = ids.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec!["x"; n])),
        Arc::new(StringArray::from(
            ids.iter().map(|i| format!("n{i}")).collect::<Vec<_>>(),
        )),
        Arc::new(
            TimestampMicrosecondArray::from(
                ids.iter().map(|i| i64::from(*i) * 1000).collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(Int32Array::from(ids.to_vec())),
    ];
    let batch = RecordBatch::try_new(file_schema.clone(), columns).unwrap();
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), file_schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[tokio::test]
async fn parquet_files_project_and_cast() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_parquet(&d.join("p1.parquet"), &[1, 2, 3]);
    write_parquet(&d.join("p2.parquet"), &[4, 5]);
    let pattern = format!("{}/p*.parquet", d.display());
    let mut source = FileSourceFactory
        .create(spec(d, &[("path", &pattern), ("format", "parquet")], 2))
        .unwrap();
    assert_eq!(source.partitions(), 2);
    let mut batches = Vec::new();
    let mut partition_ends = Vec::new();
    loop {
        match source.next().await.unwrap() {
            SourceEvent::Batch {
                partition, batch, ..
            } => batches.push((partition, batch)),
            SourceEvent::PartitionEnd { partition } => partition_ends.push(partition),
            SourceEvent::Active { .. } | SourceEvent::EarliestEventTime { .. } => {}
            SourceEvent::End => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(partition_ends, vec![0, 1]);
    let parts: Vec<usize> = batches.iter().map(|(p, _)| *p).collect();
    assert_eq!(parts, vec![0, 0, 1]);
    let all = datafusion::arrow::compute::concat_batches(
        &schema(),
        &batches.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>(),
    )
    .unwrap();
    assert_eq!(
        all.column(0).as_primitive::<Int64Type>().values().to_vec(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(
        all.column(1)
            .as_primitive::<TimestampMillisecondType>()
            .values()
            .to_vec(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(all.column(2).as_string::<i32>().value(4), "n5");
}

/// Rows `id` 0..n, `ts` as given (nullable, in its own unit) and `name` "n{id}".
fn ids_with_times(n: i64, ts: ArrayRef) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("ts", ts.data_type().clone(), true),
        Field::new("name", DataType::Utf8, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(datafusion::arrow::array::Int64Array::from_iter_values(0..n)),
            ts,
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| format!("n{i}")),
            )),
        ],
    )
    .unwrap()
}

/// Write `batch` to a new Parquet file at `path`, in row groups of at most `group_rows`.
fn write_parquet_groups(path: &Path, batch: &RecordBatch, group_rows: usize) {
    let props = datafusion::parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(group_rows))
        .build();
    let mut w = ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        batch.schema(),
        Some(props),
    )
    .unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

/// A Parquet file of several row groups and units, with rows missing their event time
/// here and there: with three workers (two decoder threads) the batches, bad-row counts
/// and dead letters (positions, order) are those of reading it in turn, and so are a
/// restore's, which skips the first rows.
#[tokio::test]
async fn parquet_decoded_on_several_threads_as_on_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.parquet");
    let n: i64 = 300_000;
    let batch = ids_with_times(
        n,
        Arc::new(
            datafusion::arrow::array::TimestampMillisecondArray::from_iter(
                (0..n).map(|i| (i % 50_000 != 123).then_some(i)),
            ),
        ),
    );
    write_parquet_groups(&path, &batch, 100_000);
    // The decoder threads need the offset index (files without one are read in turn).
    let options = datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions::new()
        .with_offset_index_policy(datafusion::parquet::file::metadata::PageIndexPolicy::Optional);
    let meta = datafusion::parquet::arrow::arrow_reader::ArrowReaderMetadata::load(
        &std::fs::File::open(&path).unwrap(),
        options,
    )
    .unwrap();
    assert!(meta.metadata().offset_index().is_some());
    assert_eq!(meta.metadata().num_row_groups(), 3);
    let run = |workers: usize, skip: i64| {
        let d = dir.path().join(format!("run-{workers}-{skip}"));
        let path = path.clone();
        async move {
            std::fs::create_dir_all(&d).unwrap();
            let mut s = spec(
                &d,
                &[("path", path.to_str().unwrap()), ("format", "parquet")],
                7_000,
            );
            s.workers = workers;
            let mut source = FileSourceFactory.create(s).unwrap();
            source.seek(&[(0, skip)]).unwrap();
            // Per batch: its first and last id, rows and bad-row count.
            let events: Vec<(usize, i64, i64, usize, u64)> = drain(&mut source)
                .await
                .into_iter()
                .map(|(p, ids, bad)| {
                    let first = ids.first().copied().unwrap_or(-1);
                    let last = ids.last().copied().unwrap_or(-1);
                    (p, first, last, ids.len(), bad)
                })
                .collect();
            let dead = std::fs::read_to_string(d.join("dead-letter").join("replay.jsonl")).unwrap();
            // Without the wall-clock time each letter carries.
            let dead: Vec<String> = dead
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    format!("{} {} {}", v["position"], v["raw"], v["reason"])
                })
                .collect();
            (events, dead)
        }
    };
    let (one, dead_one) = run(1, 0).await;
    assert_eq!(dead_one.len(), 6, "one row in 50,000 has no time");
    assert!(dead_one[1].contains("row 50124"), "{dead_one:?}");
    let good: usize = one.iter().map(|e| e.3).sum();
    assert_eq!(good, n as usize - 6);
    assert!(one.len() > 40, "batches of at most 7,000 rows");
    assert_eq!(run(3, 0).await, (one, dead_one));
    assert_eq!(run(3, 123_456).await, run(1, 123_456).await);
}

/// Parquet rows with a null event time (a nullable column in the file, NOT NULL as the
/// watermark column) follow `bad.records` like bad JSON lines.
/// Everything a source yields until it ends, keep-alive reports left out.
async fn events_until_end(source: &mut Box<dyn Source>) -> Vec<SourceEvent> {
    let mut out = Vec::new();
    loop {
        match source.next().await.unwrap() {
            SourceEvent::Active { .. } => {}
            SourceEvent::End => return out,
            e => out.push(e),
        }
    }
}

/// One batch of a partition: its first id, rows, bad records and position.
type PartBatch = (i64, usize, u64, Option<i64>);

/// A Parquet file of ten row groups with `'parquet.partition.rows'` = 2,500 is four
/// partitions (3, 3, 3 and 1 groups), each announced with the least event time of its
/// groups' statistics before any batch. Read on one thread and on three, each partition
/// gets the same batches and positions, bad rows are numbered in the file, and a restore
/// skips per partition.
#[tokio::test]
async fn parquet_row_groups_are_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("groups.parquet");
    let n: i64 = 10_000;
    // Event time 10 ms per row, in microseconds; row 4,000 (the first of partition 1's
    // second group) and row 6,000 (partition 2's first) have none.
    let ts = |i: i64| (i != 4_000 && i != 6_000).then_some(i * 10_000 + 7);
    let batch = ids_with_times(
        n,
        Arc::new(TimestampMicrosecondArray::from_iter((0..n).map(ts))),
    );
    write_parquet_groups(&path, &batch, 1_000);

    let run = |workers: usize, positions: Vec<(usize, i64)>| {
        let d = dir.path().join(format!("run-{workers}-{positions:?}"));
        let path = path.clone();
        async move {
            std::fs::create_dir_all(&d).unwrap();
            let mut s = spec(
                &d,
                &[
                    ("path", path.to_str().unwrap()),
                    ("format", "parquet"),
                    ("parquet.partition.rows", "2500"),
                ],
                700,
            );
            s.workers = workers;
            let mut source = FileSourceFactory.create(s).unwrap();
            assert_eq!(source.partitions(), 4);
            source.seek(&positions).unwrap();
            let mut earliest = Vec::new();
            let mut batches: Vec<Vec<PartBatch>> = vec![vec![]; 4];
            let mut ended = Vec::new();
            for e in events_until_end(&mut source).await {
                match e {
                    SourceEvent::EarliestEventTime {
                        partition,
                        event_time_ms,
                    } => {
                        assert!(
                            batches[partition].is_empty(),
                            "announced before its batches"
                        );
                        earliest.push((partition, event_time_ms));
                    }
                    SourceEvent::Batch {
                        partition,
                        batch,
                        bad_records,
                        position,
                    } => {
                        let ids = batch.column(0).as_primitive::<Int64Type>();
                        let first = if ids.is_empty() { -1 } else { ids.value(0) };
                        batches[partition].push((first, ids.len(), bad_records, position));
                    }
                    SourceEvent::PartitionEnd { partition } => ended.push(partition),
                    other => panic!("unexpected {other:?}"),
                }
            }
            ended.sort_unstable();
            assert_eq!(ended, vec![0, 1, 2, 3]);
            earliest.sort_unstable();
            // Partitions read at once write their dead letters in any order.
            let mut dead: Vec<String> = dead_letters(&d)
                .iter()
                .map(|v| v["position"].as_str().unwrap().to_string())
                .collect();
            dead.sort();
            (earliest, batches, dead)
        }
    };
    let (earliest, batches, dead) = run(1, vec![]).await;
    // Microseconds to milliseconds; partition 2's least time is its second row's.
    assert_eq!(
        earliest,
        vec![(0, 0), (1, 30_000), (2, 60_010), (3, 90_000)]
    );
    let rows: Vec<usize> = batches
        .iter()
        .map(|b| b.iter().map(|x| x.1).sum())
        .collect();
    assert_eq!(rows, vec![3_000, 2_999, 2_999, 1_000]);
    assert_eq!(batches[1][0], (3_000, 700, 0, Some(700)));
    assert_eq!(
        batches[1].last(),
        Some(&(5_800, 200, 0, Some(2_999))),
        "positions count the partition's good rows"
    );
    let shown = path.display();
    assert_eq!(
        dead,
        vec![
            format!("file {shown} row 4001"),
            format!("file {shown} row 6001")
        ]
    );
    assert_eq!(
        run(3, vec![]).await,
        (earliest.clone(), batches.clone(), dead)
    );
    // A restore: partition 1 from its 500th row, partition 2 wholly covered.
    let (_, restored, dead) = run(3, vec![(1, 500), (2, 3_000)]).await;
    assert_eq!(restored[0], batches[0]);
    assert_eq!(restored[3], batches[3]);
    assert!(restored[2].is_empty(), "{:?}", restored[2]);
    assert_eq!(restored[1][0], (3_500, 200, 0, Some(700)));
    assert_eq!(
        dead.len(),
        2,
        "bad rows in skipped parts are reported again"
    );
}

#[tokio::test]
async fn parquet_rows_without_their_event_time_are_bad_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.parquet");
    let file_schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("name", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        file_schema.clone(),
        vec![
            Arc::new(datafusion::arrow::array::Int64Array::from(vec![1, 2, 3, 4])),
            Arc::new(datafusion::arrow::array::TimestampMillisecondArray::from(
                vec![Some(10), None, Some(30), None],
            )),
            Arc::new(StringArray::from(vec![Some("a"), Some("b"), None, None])),
        ],
    )
    .unwrap();
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), file_schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let p = path.to_str().unwrap();

    let mut source = FileSourceFactory
        .create(spec(dir.path(), &[("path", p), ("format", "parquet")], 10))
        .unwrap();
    assert_eq!(drain(&mut source).await, vec![(0, vec![1, 3], 2)]);
    let dead = std::fs::read_to_string(dir.path().join("dead-letter/replay.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["raw"].as_str().unwrap(),
                r["reason"].as_str().unwrap(),
                r["position"].as_str().unwrap(),
            )
        })
        .collect();
    let reason = "missing or null value for NOT NULL column 'ts'";
    assert_eq!(
        got,
        vec![
            (
                r#"{"id":2,"ts":null,"name":"b"}"#,
                reason,
                format!("file {p} row 2").as_str()
            ),
            (
                r#"{"id":4,"ts":null,"name":null}"#,
                reason,
                format!("file {p} row 4").as_str()
            ),
        ]
    );

    let mut source = FileSourceFactory
        .create(spec(
            dir.path(),
            &[("path", p), ("format", "parquet"), ("bad.records", "fail")],
            10,
        ))
        .unwrap();
    let e = loop {
        match source.next().await {
            Ok(SourceEvent::End) => panic!("the bad row must fail the source"),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert_eq!(
        e.to_string(),
        format!("bad record: file {p} row 2: {reason}")
    );
}

#[test]
fn parquet_missing_column_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.parquet");
    write_parquet(&path, &[1]);
    let mut s = spec(
        dir.path(),
        &[("path", path.to_str().unwrap()), ("format", "parquet")],
        10,
    );
    s.schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("price", DataType::Float64, true),
    ]));
    let e = FileSourceFactory.create(s).err().unwrap();
    assert!(e.is_user());
    assert_eq!(
        e.to_string(),
        format!(
            "Parquet file {} has no column 'price'; its columns are: extra, name, ts, id",
            path.display()
        )
    );
}
