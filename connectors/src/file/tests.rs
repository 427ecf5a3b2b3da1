//! Tests of the file source: JSON lines, bad records, named pipes, decoding on several
//! threads, restores, keep-alive reports; Parquet in `tests/parquet.rs`.

#![allow(clippy::unwrap_used)]
use super::*;
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};
use std::sync::Arc;
use std::time::Duration;
use weir_engine::connector::BatchLimits;
use weir_engine::options::Options;

mod parquet;

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
