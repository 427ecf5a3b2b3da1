//! Tests of the file source: JSON lines and Parquet, bad records, named pipes, decoding
//! on several threads, restores.

#![allow(clippy::unwrap_used)]
use super::*;
use datafusion::arrow::array::{
    ArrayRef, AsArray, Int32Array, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{
    DataType, Field, Int64Type, Schema, TimeUnit, TimestampMillisecondType,
};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use std::sync::Arc;
use std::time::Duration;
use weir_engine::connector::BatchLimits;
use weir_engine::options::Options;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("name", DataType::Utf8, true),
    ]))
}

fn spec(data_dir: &Path, options: &[(&str, &str)], max_rows: usize) -> SourceSpec {
    SourceSpec {
        metadata: vec![],
        name: "replay".into(),
        schema: schema(),
        event_time: Some("ts".into()),
        options: Options::new(options.iter().map(|(k, v)| (k.to_string(), v.to_string()))),
        data_dir: data_dir.to_path_buf(),
        batch: BatchLimits {
            max_rows,
            max_delay: Duration::from_millis(50),
        },
        stats: Default::default(),
        workers: 1,
        idle_timeout: weir_engine::connector::DEFAULT_IDLE_TIMEOUT,
    }
}

/// (partition, ids, bad) per batch, until End.
async fn drain(source: &mut Box<dyn Source>) -> Vec<(usize, Vec<i64>, u64)> {
    let mut out = Vec::new();
    loop {
        match source.next().await.unwrap() {
            SourceEvent::Batch {
                partition,
                batch,
                bad_records,
                ..
            } => {
                assert_eq!(batch.schema(), schema());
                let ids = batch
                    .column(0)
                    .as_primitive::<Int64Type>()
                    .values()
                    .to_vec();
                out.push((partition, ids, bad_records));
            }
            SourceEvent::PartitionEnd { .. }
            | SourceEvent::Active { .. }
            | SourceEvent::EarliestEventTime { .. } => {}
            SourceEvent::End => return out,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A file source over `path` (a file or a glob) with its data directory `d`, restored to
/// `positions`.
fn opened(
    d: &Path,
    path: &Path,
    max_rows: usize,
    workers: usize,
    positions: &[(usize, i64)],
) -> Box<dyn Source> {
    std::fs::create_dir_all(d).unwrap();
    let mut s = spec(d, &[("path", path.to_str().unwrap())], max_rows);
    s.workers = workers;
    let mut source = FileSourceFactory.create(s).unwrap();
    source.seek(positions).unwrap();
    source
}

/// The dead letters the source wrote under the data directory `d`.
fn dead_letters(d: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(d.join("dead-letter").join("replay.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn json_files_in_order_one_partition_each() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        &d.join("b.jsonl"),
        "{\"id\": 10, \"ts\": \"2024-01-01T00:00:00Z\"}\nnot json\n{\"id\": 11, \"ts\": 5}\n\n{\"id\": 12, \"ts\": 6}",
    );
    let mut a = String::new();
    for i in 0..5 {
        a.push_str(&format!(
            "{{\"id\": {i}, \"ts\": {i}, \"name\": \"n{i}\"}}\n"
        ));
    }
    write(&d.join("a.jsonl"), &a);
    write(&d.join(".hidden.jsonl"), "{\"id\": 99, \"ts\": 1}\n");
    write(&d.join("c.txt"), "ignored\n");
    let pattern = format!("{}/*.jsonl", d.display());

    let mut source = FileSourceFactory
        .create(spec(d, &[("path", &pattern)], 2))
        .unwrap();
    assert_eq!(source.partitions(), 2);
    let events = drain(&mut source).await;
    assert_eq!(
        events,
        vec![
            (0, vec![0, 1], 0),
            (0, vec![2, 3], 0),
            (0, vec![4], 0),
            (1, vec![10, 11], 1),
            (1, vec![12], 0),
        ]
    );
    // Ended sources stay ended.
    assert!(matches!(source.next().await.unwrap(), SourceEvent::End));

    let dead = std::fs::read_to_string(d.join("dead-letter").join("replay.jsonl")).unwrap();
    let record: serde_json::Value = serde_json::from_str(dead.trim()).unwrap();
    assert_eq!(record["raw"], "not json");
    assert_eq!(
        record["position"],
        format!("file {}/b.jsonl line 2", d.display())
    );
}

/// A file of several chunks with bad lines in the middle of some: decoding it on three
/// threads gives the batches, bad-record counts and dead letters (line numbers and
/// order) of decoding it on one, and so does a restore that skips the first rows.
#[tokio::test]
async fn json_decoded_on_several_threads_as_on_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.jsonl");
    let mut text = String::new();
    let mut id = 0;
    // About 3.5 chunks of lines; every 20,000th line is bad.
    while text.len() < CHUNK_BYTES * 7 / 2 {
        if id % 20_000 == 7_000 {
            text.push_str(&format!("{{\"id\": \"bad {id}\"}}\n"));
        } else {
            text.push_str(&format!(
                "{{\"id\": {id}, \"ts\": {id}, \"name\": \"name number {id}\"}}\n"
            ));
        }
        id += 1;
    }
    write(&path, &text);
    let run = |workers: usize, skip: i64| {
        let d = dir.path().join(format!("run-{workers}-{skip}"));
        let path = path.clone();
        async move {
            let mut source = opened(&d, &path, 5_000, workers, &[(0, skip)]);
            let events = drain(&mut source).await;
            let dead: Vec<(String, String)> = dead_letters(&d)
                .iter()
                .map(|v| (v["raw"].to_string(), v["position"].to_string()))
                .collect();
            (events, dead)
        }
    };
    let (one, dead_one) = run(1, 0).await;
    assert!(dead_one.len() >= 3, "bad lines in several chunks");
    assert!(dead_one[1].1.contains("line 27001"), "{:?}", dead_one[1]);
    let good: usize = one.iter().map(|(_, ids, _)| ids.len()).sum();
    assert_eq!(good + dead_one.len(), id as usize);
    assert_eq!(run(3, 0).await, (one, dead_one));
    assert_eq!(run(3, 12_345).await, run(1, 12_345).await);
}

/// One batch of a file: ids, bad records, position.
type FileBatch = (Vec<i64>, u64, Option<i64>);

/// A glob of several files on several workers: the files are read at once (one reader
/// thread per worker), so their batches interleave, but each file's batches, positions and
/// bad records are those of reading them in turn, every file ends its partition once, the
/// source ends once, and the dead letters of all the files are whole lines in one file;
/// after a restore too.
#[tokio::test]
async fn several_files_read_at_once_as_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let files = 5;
    for f in 0..files {
        let mut text = String::new();
        for i in 0..3_000 + f * 500 {
            let id = f * 100_000 + i;
            if i % 700 == 13 {
                text.push_str(&format!("{{\"id\": \"bad {id}\"}}\n"));
            } else {
                text.push_str(&format!(
                    "{{\"id\": {id}, \"ts\": {i}, \"name\": \"n{id}\"}}\n"
                ));
            }
        }
        write(&dir.path().join(format!("part-{f}.jsonl")), &text);
    }
    let glob = dir.path().join("part-*.jsonl");
    let run = |workers: usize, skip: i64| {
        let d = dir.path().join(format!("run-{workers}-{skip}"));
        let glob = glob.clone();
        async move {
            let mut source = opened(&d, &glob, 1_000, workers, &[(2, skip)]);
            // Per partition: (ids, bad, position) per batch; and the partitions ended.
            let mut per_file: Vec<Vec<FileBatch>> = vec![vec![]; files];
            let mut ended = Vec::new();
            let mut order = Vec::new();
            loop {
                match source.next().await.unwrap() {
                    SourceEvent::Batch {
                        partition,
                        batch,
                        bad_records,
                        position,
                    } => {
                        let ids = batch
                            .column(0)
                            .as_primitive::<Int64Type>()
                            .values()
                            .to_vec();
                        per_file[partition].push((ids, bad_records, position));
                        order.push(partition);
                    }
                    SourceEvent::PartitionEnd { partition } => ended.push(partition),
                    SourceEvent::Active { .. } | SourceEvent::EarliestEventTime { .. } => {}
                    SourceEvent::End => break,
                    other => panic!("unexpected {other:?}"),
                }
            }
            ended.sort();
            assert_eq!(ended, (0..files).collect::<Vec<_>>(), "workers {workers}");
            let mut dead: Vec<String> = dead_letters(&d)
                .iter()
                .map(|v| format!("{} {}", v["position"], v["raw"]))
                .collect();
            dead.sort();
            (per_file, dead, order)
        }
    };
    let (one, dead_one, order_one) = run(1, 0).await;
    assert!(
        order_one.windows(2).all(|w| w[0] <= w[1]),
        "one reader: in turn"
    );
    // Two readers interleave the files as the threads happen to run: only what each file
    // gives is fixed.
    let (two, dead_two, _) = run(2, 0).await;
    assert_eq!(two, one);
    assert_eq!(dead_two, dead_one);
    assert!(dead_one.len() >= files, "bad lines in every file");
    let restored = run(3, 1_234).await;
    let want = run(1, 1_234).await;
    assert_eq!((restored.0, restored.1), (want.0, want.1));
}

#[tokio::test]
async fn json_from_a_named_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("live.jsonl");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let mut source = FileSourceFactory
        .create(spec(dir.path(), &[("path", fifo.to_str().unwrap())], 8192))
        .unwrap();
    // Opening a pipe for writing waits for the reader (the source's thread), and
    // closing it ends the source.
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        w.write_all(b"{\"id\": 1, \"ts\": 1}\n{\"id\": 2, ")
            .unwrap();
        w.flush().unwrap();
        w.write_all(b"\"ts\": 2}\n{\"id\": 3, \"ts\": 3}\n")
            .unwrap();
    });
    let events = drain(&mut source).await;
    writer.join().unwrap();
    let ids: Vec<i64> = events.iter().flat_map(|(_, ids, _)| ids.clone()).collect();
    assert_eq!(ids, vec![1, 2, 3]);

    let e = FileSourceFactory
        .create(spec(
            dir.path(),
            &[
                ("path", dir.path().join("live.jsonl").to_str().unwrap()),
                ("format", "parquet"),
            ],
            8192,
        ))
        .err()
        .unwrap();
    assert!(e.to_string().contains("not a regular file"), "{e}");
}

#[tokio::test]
async fn json_chunks_split_at_newlines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.jsonl");
    let mut text = String::new();
    let mut i = 0i64;
    while text.len() < CHUNK_BYTES * 2 + 1000 {
        text.push_str(&format!(
            "{{\"id\": {i}, \"ts\": {i}, \"name\": \"padding padding padding {i}\"}}\n"
        ));
        i += 1;
    }
    text.push_str("{\"id\": -1, \"ts\": \"bad\"}\n");
    write(&path, &text);
    let mut source = FileSourceFactory
        .create(spec(
            dir.path(),
            &[("path", path.to_str().unwrap()), ("bad.records", "skip")],
            8192,
        ))
        .unwrap();
    assert_eq!(source.partitions(), 1);
    let events = drain(&mut source).await;
    let ids: Vec<i64> = events.iter().flat_map(|(_, ids, _)| ids.clone()).collect();
    assert_eq!(ids, (0..i).collect::<Vec<_>>());
    assert!(
        events
            .iter()
            .all(|(p, ids, _)| *p == 0 && ids.len() <= 8192)
    );
    assert_eq!(events.iter().map(|(_, _, bad)| bad).sum::<u64>(), 1);
    // Skip writes no dead letters.
    assert!(!dir.path().join("dead-letter").exists());
}

#[tokio::test]
async fn only_bad_lines_still_report_the_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    write(&path, "nope\n{\"id\": 1}\n");
    let mut source = FileSourceFactory
        .create(spec(
            dir.path(),
            &[("path", path.to_str().unwrap()), ("bad.records", "skip")],
            10,
        ))
        .unwrap();
    assert_eq!(drain(&mut source).await, vec![(0, vec![], 2)]);
}

#[tokio::test]
async fn bad_records_fail_stops_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.jsonl");
    write(&path, "{\"id\": 1, \"ts\": 1}\n{\"id\": 2}\n");
    let mut source = FileSourceFactory
        .create(spec(
            dir.path(),
            &[("path", path.to_str().unwrap()), ("bad.records", "fail")],
            10,
        ))
        .unwrap();
    let e = source.next().await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "bad record: file {} line 2: missing or null value for NOT NULL column 'ts'",
            path.display()
        )
    );
}

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

/// A partition waiting for its reader is reported active (four times per idle timeout),
/// so processing time cannot release the watermark past rows not read yet; a named pipe
/// is not (it may stay quiet as long as its writer likes).
#[tokio::test]
async fn waiting_partitions_are_reported_active() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("a-live.jsonl");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    write(&dir.path().join("b.jsonl"), "{\"id\": 7, \"ts\": 1}\n");
    let pattern = format!("{}/*.jsonl", dir.path().display());
    let mut s = spec(dir.path(), &[("path", &pattern)], 100);
    s.idle_timeout = Duration::from_millis(40);
    let mut source = FileSourceFactory.create(s).unwrap();
    // The only reader waits for the pipe's writer, so file b waits for the reader.
    for _ in 0..3 {
        match tokio::time::timeout(Duration::from_secs(5), source.next())
            .await
            .expect("a keep-alive report within the idle timeout")
            .unwrap()
        {
            SourceEvent::Active { partition } => assert_eq!(partition, 1),
            other => panic!("unexpected {other:?}"),
        }
    }
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        w.write_all(b"{\"id\": 1, \"ts\": 2}\n").unwrap();
    });
    let events = drain(&mut source).await;
    writer.join().unwrap();
    assert_eq!(events, vec![(0, vec![1], 0), (1, vec![7], 0)]);
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

#[test]
fn option_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let e = FileSourceFactory.create(spec(d, &[], 10)).err().unwrap();
    assert_eq!(e.to_string(), "the file source needs option 'path'");
    let pattern = format!("{}/*.jsonl", d.display());
    let e = FileSourceFactory
        .create(spec(d, &[("path", &pattern)], 10))
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        format!("option 'path' = '{pattern}' matches no files")
    );
    let e = FileSourceFactory
        .create(spec(d, &[("path", &pattern), ("topic", "x")], 10))
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        "unknown option 'topic' for the file source; valid options: bad.records, format, parquet.partition.rows, path"
    );
    let e = FileSourceFactory
        .create(spec(d, &[("path", &pattern), ("format", "csv")], 10))
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        "option 'format' must be one of json | parquet, got 'csv'"
    );
}
