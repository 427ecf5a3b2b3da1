//! Updating views (aggregates without a window, whose rows change and go away) into sinks:
//! the readings and the view the Postgres and Kafka tests share, the expected rows (the
//! same SQL in batch by DataFusion over every reading pushed so far) and what each step
//! changed; and the Parquet sink's changelog files, read back with the parquet crate.

#![allow(clippy::unwrap_used)]

use datafusion::arrow::array::TimestampMillisecondArray;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, StringArray};
use datafusion::arrow::datatypes::{Float64Type, Int64Type, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::prelude::SessionContext;
use std::sync::Arc;
use weir_engine::pipeline::{Output, Pipeline};

/// The source the tests push readings into.
pub(crate) const SOURCE: &str = "CREATE SOURCE s (site TEXT NOT NULL, temp DOUBLE, \
    ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts) WITH (connector = 'test');";

/// Sites with fewer than three readings: a site's row changes with its second reading and
/// goes away with its third.
pub(crate) const QUIET: &str = "SELECT site, count(*) AS n, max(temp) AS hottest FROM s \
    GROUP BY site HAVING count(*) < 3";

/// A global aggregate: one row, which goes at 40 readings.
pub(crate) const TOTAL: &str =
    "SELECT count(*) AS n, max(temp) AS hottest FROM s HAVING count(*) < 40";

/// Readings pushed per step.
const PER_STEP: u64 = 12;

/// A row of [`QUIET`]: (site, readings, hottest).
pub(crate) type SiteRow = (String, i64, Option<f64>);

/// Event `i`'s pseudo-random number (splitmix64).
fn mix(i: u64) -> u64 {
    let mut x = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The readings pushed into source `s` of a pipeline, step by step.
pub(crate) struct Readings {
    pub(crate) schema: SchemaRef,
    pub(crate) pushed: Vec<RecordBatch>,
}

impl Readings {
    pub(crate) fn new(p: &Pipeline) -> Self {
        Readings {
            schema: p.source_schema("s").unwrap(),
            pushed: Vec::new(),
        }
    }

    /// The next step's readings: 12 events spread over 30 sites by a fixed pseudo-random
    /// sequence, every seventh temperature missing.
    fn next_batch(&self) -> RecordBatch {
        let from = self.pushed.len() as u64 * PER_STEP;
        let (mut sites, mut temps, mut ts) = (Vec::new(), Vec::new(), Vec::new());
        for i in from..from + PER_STEP {
            let r = mix(i);
            sites.push(format!("site{:02}", r % 30));
            temps.push((i % 7 != 3).then(|| (r % 400) as f64 / 10.0 - 5.0));
            ts.push(1_714_521_600_000 + i as i64 * 1000);
        }
        RecordBatch::try_new(
            self.schema.clone(),
            vec![
                Arc::new(StringArray::from(sites)) as ArrayRef,
                Arc::new(Float64Array::from(temps)),
                Arc::new(TimestampMillisecondArray::from(ts)),
            ],
        )
        .unwrap()
    }

    /// Push the next step's readings; what the views emitted.
    pub(crate) async fn push(&mut self, p: &mut Pipeline) -> Vec<Output> {
        let batch = self.next_batch();
        self.pushed.push(batch.clone());
        p.push("s", 0, batch, 0).await.unwrap()
    }

    /// `sql` in batch over every reading pushed so far.
    pub(crate) async fn batch_answer(&self, sql: &str) -> Vec<RecordBatch> {
        let ctx = SessionContext::new();
        ctx.register_table(
            "s",
            Arc::new(MemTable::try_new(self.schema.clone(), vec![self.pushed.clone()]).unwrap()),
        )
        .unwrap();
        ctx.sql(sql).await.unwrap().collect().await.unwrap()
    }

    /// [`QUIET`]'s rows now, by site.
    pub(crate) async fn quiet(&self) -> Vec<SiteRow> {
        let mut rows = site_rows(&self.batch_answer(QUIET).await);
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }
}

/// (site, n, hottest) rows, from the first three columns.
pub(crate) fn site_rows(batches: &[RecordBatch]) -> Vec<SiteRow> {
    let mut out = Vec::new();
    for b in batches {
        let site = b.column(0).as_string::<i32>();
        let n = b.column(1).as_primitive::<Int64Type>();
        let hot = b.column(2).as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            let h = (!hot.is_null(i)).then(|| hot.value(i));
            out.push((site.value(i).to_string(), n.value(i), h));
        }
    }
    out
}

/// A row of [`TOTAL`]: (readings, hottest).
pub(crate) type TotalRow = (i64, Option<f64>);

pub(crate) fn total_rows(batches: &[RecordBatch]) -> Vec<TotalRow> {
    let mut out = Vec::new();
    for b in batches {
        let n = b.column(0).as_primitive::<Int64Type>();
        let hot = b.column(1).as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            out.push((n.value(i), (!hot.is_null(i)).then(|| hot.value(i))));
        }
    }
    out
}

/// What a step did to a view's rows: for every key (`key` of a row) whose row changed, in
/// key order, its old row (`None`: it had none) and its new one (`None`: it has none now).
pub(crate) fn changed<R: Clone + PartialEq, K: Ord>(
    before: &[R],
    after: &[R],
    key: impl Fn(&R) -> K,
) -> Vec<(Option<R>, Option<R>)> {
    let mut keys: Vec<K> = before.iter().chain(after).map(&key).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|k| {
            let find = |rows: &[R]| rows.iter().find(|r| key(r) == k).cloned();
            (find(before), find(after))
        })
        .filter(|(old, new)| old != new)
        .collect()
}

/// A [`QUIET`] row's key.
pub(crate) fn site(r: &SiteRow) -> String {
    r.0.clone()
}

/// `rows` cut into consecutive runs of `lens` rows (what each step wrote), each run sorted
/// by `key` (stable: a key's rows keep their order).
pub(crate) fn runs<T: Clone, K: Ord>(
    rows: &[T],
    lens: &[usize],
    key: impl Fn(&T) -> K,
) -> Vec<Vec<T>> {
    assert_eq!(
        rows.len(),
        lens.iter().sum::<usize>(),
        "the rows are not the steps' changes"
    );
    let mut at = 0;
    lens.iter()
        .map(|&n| {
            let mut run = rows[at..at + n].to_vec();
            at += n;
            run.sort_by_key(|r| key(r));
            run
        })
        .collect()
}

/// Files under `dir` named `part-<millis>-<seq>.parquet`, in the order of those numbers.
fn part_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<((u64, u64), std::path::PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            let (ms, seq) = name
                .strip_prefix("part-")?
                .strip_suffix(".parquet")?
                .split_once('-')?;
            Some(((ms.parse().ok()?, seq.parse().ok()?), p))
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, p)| p).collect()
}

/// Without `'changelog' = 'true'` the Parquet sink refuses an updating view; with it, every
/// change is a row with its op, in order: read back with the parquet crate, file by file in
/// name order, each step's rows are exactly the deletes and inserts that step made to the
/// view's rows (an update both), and the last row per site, where it is an insert, is the
/// view's rows at the end. A blackhole sink takes the same changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_sink_writes_an_updating_views_changelog() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("quiet");
    let mut p = weir_tests::slt::test_pipeline(dir.path());
    p.execute(&format!(
        "{SOURCE}\nCREATE MATERIALIZED VIEW quiet AS {QUIET};"
    ))
    .await
    .unwrap();
    let e = p
        .execute(&format!(
            "CREATE SINK lake FROM quiet WITH (connector = 'parquet', path = '{}');",
            out.display()
        ))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "statement 1 (line 1, column 1): view 'quiet' is an updating view (an aggregate \
         without a window): its rows change and go away, which Parquet files, only ever \
         appended to, cannot show; set 'changelog' = 'true' to write every change as a row \
         with a column 'op' ('insert' or 'delete')"
    );
    // 'rollover.rows' = '7': the changes span several files.
    p.execute(&format!(
        "CREATE SINK lake FROM quiet WITH (connector = 'parquet', path = '{}', \
           changelog = 'true', 'rollover.rows' = '7');
         CREATE SINK counted FROM quiet WITH (connector = 'blackhole');",
        out.display()
    ))
    .await
    .unwrap();
    let mut sinks = p.take_new_sinks();
    let mut readings = Readings::new(&p);
    let mut before = Vec::new();
    let mut expected: Vec<Vec<(String, SiteRow)>> = Vec::new();
    for _ in 0..6 {
        for o in readings.push(&mut p).await {
            for s in &mut sinks {
                s.sink.write(o.batch.clone(), o.ids).await.unwrap();
            }
        }
        let after = readings.quiet().await;
        let mut step = Vec::new();
        for (old, new) in changed(&before, &after, site) {
            step.extend(old.map(|r| ("delete".to_string(), r)));
            step.extend(new.map(|r| ("insert".to_string(), r)));
        }
        expected.push(step);
        before = after;
    }
    for s in &mut sinks {
        s.sink.close().await.unwrap();
    }
    let deletes = expected
        .iter()
        .flatten()
        .filter(|c| c.0 == "delete")
        .count();
    assert!(deletes > 10, "{deletes} deletes");

    let files = part_files(&out);
    assert!(files.len() > 3, "{files:?}");
    let mut changes: Vec<(String, SiteRow)> = Vec::new();
    for f in &files {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            let names: Vec<&str> = b
                .schema_ref()
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect();
            assert_eq!(names, ["site", "n", "hottest", "op"]);
            let ops = b.column(3).as_string::<i32>();
            for (i, row) in site_rows(std::slice::from_ref(&b)).into_iter().enumerate() {
                changes.push((ops.value(i).to_string(), row));
            }
        }
    }
    let lens: Vec<usize> = expected.iter().map(Vec::len).collect();
    assert_eq!(runs(&changes, &lens, |c| c.1.0.clone()), expected);

    // The current rows: the last change per site, where it is an insert.
    let mut last = std::collections::BTreeMap::new();
    for (op, row) in changes {
        last.insert(row.0.clone(), (op, row));
    }
    let current: Vec<SiteRow> = last
        .into_values()
        .filter(|(op, _)| op == "insert")
        .map(|(_, r)| r)
        .collect();
    assert_eq!(current, readings.quiet().await);
}
