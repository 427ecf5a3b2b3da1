#![allow(clippy::unwrap_used)]

use super::*;
use datafusion::arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use futures::TryStreamExt;
use iceberg::TableIdent;
use std::fs::File;
use std::path::Path;
use weir_engine::connector::RowIds;
use weir_engine::options::Options;

const DAY_MS: i64 = 86_400_000;

/// A windowed view's columns: `window_start`, `region`, `n` (also the layout tests').
pub(super) fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "window_start",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
        Field::new("region", DataType::Utf8, true),
        Field::new("n", DataType::Int64, false),
    ]))
}

fn sink(warehouse: &Path, checkpointed: bool) -> Box<dyn Sink> {
    sink_with(warehouse, checkpointed, &[])
}

fn sink_with(warehouse: &Path, checkpointed: bool, extra: &[(&str, &str)]) -> Box<dyn Sink> {
    let mut options = vec![
        ("warehouse".to_string(), warehouse.display().to_string()),
        ("table".to_string(), "lake.per_day".to_string()),
        ("partition.by".to_string(), "day, region".to_string()),
    ];
    options.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let spec = SinkSpec {
        name: "lake".into(),
        view: "per_day".into(),
        schema: schema(),
        key_columns: vec!["window_start".into(), "region".into()],
        never_null: vec!["window_start".into()],
        changelog: false,
        options: Options::new(options),
        data_dir: warehouse.to_path_buf(),
        stats: Arc::new(weir_engine::stats::Stats::default()),
        checkpointed,
    };
    IcebergSinkFactory.create(spec).unwrap()
}

fn batch(rows: &[(i64, &str, i64)]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(TimestampMillisecondArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

/// The table's snapshots (epoch summaries, oldest first) and the rows of the current one,
/// read from its data files with Weir's own Parquet reader.
async fn read(warehouse: &Path) -> (Vec<Option<String>>, Vec<(i64, String, i64)>) {
    let catalog = fs_catalog::FsCatalog::new(warehouse);
    let table = catalog
        .load_table(&TableIdent::from_strs(["lake", "per_day"]).unwrap())
        .await
        .unwrap();
    let mut snapshots: Vec<_> = table.metadata().snapshots().collect();
    snapshots.sort_by_key(|s| s.sequence_number());
    let epochs = snapshots
        .iter()
        .map(|s| s.summary().additional_properties.get(EPOCH_KEY).cloned())
        .collect();
    let mut rows = Vec::new();
    if table.metadata().current_snapshot().is_some() {
        let tasks: Vec<_> = table
            .scan()
            .build()
            .unwrap()
            .plan_files()
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        for t in tasks {
            let f = File::open(&t.data_file_path).unwrap();
            let reader =
                datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                    f,
                )
                .unwrap()
                .build()
                .unwrap();
            for b in reader {
                let b = b.unwrap();
                let ts = datafusion::arrow::compute::cast(
                    b.column(0),
                    &DataType::Timestamp(TimeUnit::Millisecond, None),
                )
                .unwrap();
                let ts = ts
                    .as_any()
                    .downcast_ref::<TimestampMillisecondArray>()
                    .unwrap();
                let region = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
                let n = b.column(2).as_any().downcast_ref::<Int64Array>().unwrap();
                for i in 0..b.num_rows() {
                    rows.push((ts.value(i), region.value(i).to_string(), n.value(i)));
                }
            }
        }
    }
    rows.sort();
    (epochs, rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_snapshot_per_epoch_and_partitioned_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = sink(dir.path(), true);
    s.recover(None).await.unwrap();
    s.write(
        batch(&[(0, "eu", 1), (DAY_MS, "eu", 2), (5, "us", 3)]),
        RowIds::default(),
    )
    .await
    .unwrap();
    s.precommit(1).await.unwrap();
    s.commit(1).await.unwrap();
    // An epoch with no rows adds no snapshot.
    s.precommit(2).await.unwrap();
    s.commit(2).await.unwrap();
    s.write(batch(&[(7, "us", 4)]), RowIds::default())
        .await
        .unwrap();
    s.precommit(3).await.unwrap();
    s.commit(3).await.unwrap();
    s.close().await.unwrap();
    let (epochs, rows) = read(dir.path()).await;
    assert_eq!(epochs, vec![Some("1".into()), Some("3".into())]);
    assert_eq!(
        rows,
        vec![
            (0, "eu".into(), 1),
            (5, "us".into(), 3),
            (7, "us".into(), 4),
            (DAY_MS, "eu".into(), 2)
        ]
    );
    let data = dir.path().join("lake/per_day/data");
    assert!(data.join("window_start_day=1970-01-02/region=eu").is_dir());
    assert!(data.join("window_start_day=1970-01-01/region=us").is_dir());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_commits_a_staged_epoch_once_and_removes_later_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = sink(dir.path(), true);
    s.recover(None).await.unwrap();
    s.write(batch(&[(0, "eu", 1)]), RowIds::default())
        .await
        .unwrap();
    let cp = s.precommit(1).await.unwrap();
    // The process dies before commit(1), after writing rows of epoch 2.
    s.write(batch(&[(9, "eu", 9)]), RowIds::default())
        .await
        .unwrap();
    drop(s);
    for _ in 0..2 {
        // Restored from checkpoint 1 (twice: a crash during the first recovery).
        let mut s = sink(dir.path(), true);
        s.recover(Some((1, cp.clone()))).await.unwrap();
        let (epochs, rows) = read(dir.path()).await;
        assert_eq!(epochs, vec![Some("1".into())]);
        assert_eq!(rows, vec![(0, "eu".into(), 1)]);
    }
    let files = weir_engine::fsutil::files_below(&dir.path().join("lake/per_day/data")).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    // A checkpoint older than the table: refused.
    let mut s = sink(dir.path(), true);
    let e = s.recover(None).await.unwrap_err();
    assert!(e.is_user(), "{e}");
}

#[tokio::test]
async fn options_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let create = |opts: &[(&str, &str)]| {
        IcebergSinkFactory
            .create(SinkSpec {
                name: "lake".into(),
                view: "v".into(),
                schema: schema(),
                key_columns: vec![],
                never_null: vec![],
                changelog: false,
                options: Options::new(opts.iter().map(|(k, v)| (k.to_string(), v.to_string()))),
                data_dir: dir.path().to_path_buf(),
                stats: Arc::new(weir_engine::stats::Stats::default()),
                checkpointed: true,
            })
            .err()
            .map(|e| e.to_string())
    };
    assert!(create(&[]).unwrap().contains("'table'"));
    assert!(
        create(&[("table", "nons")])
            .unwrap()
            .contains("namespace.table")
    );
    assert!(
        create(&[("table", "a.b"), ("catalog", "sql")])
            .unwrap()
            .contains("catalog.uri")
    );
    assert!(
        create(&[("table", "a.b"), ("warehouse", "s3://b/w")])
            .unwrap()
            .contains("catalog = 'sql'")
    );
    assert!(
        create(&[("table", "a.b"), ("storage.aws_region", "x")])
            .unwrap()
            .contains("object store")
    );
    assert!(
        create(&[("table", "a.b"), ("partition.by", "month(window_start)")])
            .unwrap()
            .contains("unknown transform")
    );
    assert!(
        create(&[("table", "a.b"), ("nope", "1")])
            .unwrap()
            .contains("nope")
    );
    assert_eq!(
        create(&[("table", "a.b"), ("partition.by", "hour, region")]),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_snapshots_expire_and_the_epoch_survives_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = sink_with(dir.path(), true, &[("snapshots.retain", "2")]);
    s.recover(None).await.unwrap();
    let mut cp = serde_json::Value::Null;
    for epoch in 1..=6u64 {
        s.write(
            batch(&[(epoch as i64, "eu", epoch as i64)]),
            RowIds::default(),
        )
        .await
        .unwrap();
        cp = s.precommit(epoch).await.unwrap();
        s.commit(epoch).await.unwrap();
    }
    let (epochs, rows) = read(dir.path()).await;
    assert!(epochs.len() <= 3, "{epochs:?}");
    assert_eq!(epochs.last(), Some(&Some("6".to_string())));
    assert_eq!(rows.len(), 6, "expiry keeps every row: {rows:?}");
    let meta = dir.path().join("lake/per_day/metadata");
    let lists = std::fs::read_dir(&meta)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("snap-")
        })
        .count();
    assert_eq!(lists, epochs.len(), "one manifest list per snapshot kept");
    // Restored from the last checkpoint: committed already (the table property says so
    // even with its snapshot's ancestors gone), so not again.
    let mut s = sink_with(dir.path(), true, &[("snapshots.retain", "2")]);
    s.recover(Some((6, cp))).await.unwrap();
    assert_eq!(read(dir.path()).await.1.len(), 6);
}
