//! Tests of the stream join: exact matches for batches pushed on either side, eviction,
//! snapshot and restore, and an ignored throughput measurement.

use super::*;
use crate::planner::slot::{BatchSlot, StreamTable};
use datafusion::arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::SessionContext;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("k", DataType::Utf8, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]))
}

fn batch(rows: &[(i64, Option<&str>, i64)]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                rows.iter().map(|r| r.2),
            )),
        ],
    )
    .unwrap()
}

/// The join DataFusion plans for `sql` over streams `a` and `b` (both [`schema`]).
async fn join_for(sql: &str) -> StreamJoin {
    let ctx = SessionContext::new_with_config(crate::planner::df_config());
    for name in ["a", "b"] {
        let t = StreamTable {
            name: name.into(),
            schema: schema(),
            slot: Arc::new(BatchSlot::default()),
        };
        ctx.register_table(name, Arc::new(t)).unwrap();
    }
    let plan = ctx
        .sql(sql)
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    let hj = plan
        .downcast_ref::<HashJoinExec>()
        .unwrap_or_else(|| panic!("not a bare hash join: {sql}"));
    StreamJoin::try_new(hj, ["a".into(), "b".into()]).unwrap()
}

fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let opts = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in batches {
        let f: Vec<_> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).unwrap())
            .collect();
        for r in 0..b.num_rows() {
            out.push(
                f.iter()
                    .map(|f| f.value(r).to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
    }
    out.sort();
    out
}

/// Push `(side, batch)` in order; everything the join emitted.
fn run(join: &mut StreamJoin, pushes: &[(usize, RecordBatch)]) -> Vec<String> {
    let out: Vec<RecordBatch> = pushes
        .iter()
        .filter_map(|(side, b)| join.push(*side, b).unwrap())
        .collect();
    rows(&out)
}

const EQ: &str = "SELECT a.id, b.id FROM a JOIN b ON a.k = b.k";

#[tokio::test]
async fn each_match_once_in_any_order() {
    let left = [(1, Some("x"), 0), (2, Some("y"), 0), (3, Some("x"), 0)];
    let right = [(10, Some("x"), 0), (11, Some("z"), 0), (12, Some("x"), 0)];
    let expected = ["1 10", "1 12", "3 10", "3 12"];
    // All left first, all right first, and row by row alternating.
    let orders: Vec<Vec<(usize, RecordBatch)>> = vec![
        vec![(0, batch(&left)), (1, batch(&right))],
        vec![(1, batch(&right)), (0, batch(&left))],
        (0..3)
            .flat_map(|i| [(1, batch(&right[i..=i])), (0, batch(&left[i..=i]))])
            .collect(),
    ];
    for pushes in orders {
        let mut j = join_for(EQ).await;
        assert_eq!(run(&mut j, &pushes), expected);
        assert_eq!(j.stored_rows(), 6);
    }
}

#[tokio::test]
async fn null_keys_never_match_unless_not_distinct() {
    let left = batch(&[(1, None, 0), (2, Some("x"), 0)]);
    let right = batch(&[(10, None, 0), (11, Some("x"), 0)]);
    let mut j = join_for(EQ).await;
    let got = run(&mut j, &[(0, left.clone()), (1, right.clone())]);
    assert_eq!(got, ["2 11"]);
    // Rows that can never match are not kept.
    assert_eq!(j.stored_rows(), 2);
    let mut j = join_for("SELECT a.id, b.id FROM a JOIN b ON a.k IS NOT DISTINCT FROM b.k").await;
    let got = run(&mut j, &[(0, left), (1, right)]);
    assert_eq!(got, ["1 10", "2 11"]);
}

#[tokio::test]
async fn residual_filter_and_projection() {
    let sql = "SELECT b.id, a.id FROM a JOIN b ON a.k = b.k \
               AND b.ts BETWEEN a.ts AND a.ts + INTERVAL '10' SECOND";
    let mut j = join_for(sql).await;
    assert_eq!(j.output_schema().fields().len(), 2);
    let got = run(
        &mut j,
        &[
            (1, batch(&[(10, Some("x"), 5_000), (11, Some("x"), 25_000)])),
            (0, batch(&[(1, Some("x"), 0), (2, Some("x"), 20_000)])),
            (
                1,
                batch(&[(12, Some("x"), 30_000), (13, Some("y"), 20_000)]),
            ),
        ],
    );
    assert_eq!(got, ["10 1", "11 2", "12 2"]);
}

#[tokio::test]
async fn self_join_pairs_within_one_batch_once() {
    // One batch fed to both sides, left first (as the pipeline does for a self-join).
    let mut j = join_for(EQ).await;
    let b = batch(&[(1, Some("x"), 0), (2, Some("x"), 0), (3, Some("y"), 0)]);
    let got = run(&mut j, &[(0, b.clone()), (1, b)]);
    assert_eq!(got, ["1 1", "1 2", "2 1", "2 2", "3 3"]);
}

#[tokio::test]
async fn small_batches_are_merged_and_still_found() {
    let mut j = join_for(EQ).await;
    let mut pushes = Vec::new();
    for i in 0..100 {
        pushes.push((
            0,
            batch(&[(i, Some(if i % 2 == 0 { "e" } else { "o" }), 0)]),
        ));
    }
    pushes.push((1, batch(&[(1000, Some("e"), 0), (1001, Some("o"), 0)])));
    let got = run(&mut j, &pushes);
    assert_eq!(got.len(), 100);
    assert!(j.sides[0].batches.len() <= MAX_SMALL_BATCHES + 1);
    let expected: Vec<String> = {
        let mut v: Vec<String> = (0..100)
            .map(|i| format!("{i} {}", if i % 2 == 0 { 1000 } else { 1001 }))
            .collect();
        v.sort();
        v
    };
    assert_eq!(got, expected);
}

#[tokio::test]
async fn window_keys_evict_what_cannot_match() {
    let sql = "SELECT a.id, b.id FROM a JOIN b ON a.k = b.k AND a.ts = b.ts";
    let mut j = join_for(sql).await;
    j.set_time_key(1, [TimeKey::WindowStart, TimeKey::WindowStart]);
    let w = |m: i64| m * 60_000;
    run(
        &mut j,
        &[
            (0, batch(&[(1, Some("x"), w(0)), (2, Some("x"), w(1))])),
            (1, batch(&[(10, Some("x"), w(0))])),
        ],
    );
    assert_eq!(j.stored_rows(), 3);
    // Right's watermark reaches minute 1: left's minute-0 row can go; left's watermark
    // is still at minute 0, so right's minute-0 row stays.
    j.advance([w(0), w(1)]).unwrap();
    assert_eq!(j.sides[0].rows(), 1);
    assert_eq!(j.sides[1].rows(), 1);
    j.advance([w(1), w(1)]).unwrap();
    assert_eq!(j.sides[1].rows(), 0);
    // Rows at or after the watermarks still match what was kept.
    let got = run(&mut j, &[(1, batch(&[(11, Some("x"), w(1))]))]);
    assert_eq!(got, ["2 11"]);
    // window_end keys: a stored row whose window_end the other side's watermark has
    // reached can go (the other side's future rows end after it).
    let mut j = join_for(sql).await;
    j.set_time_key(1, [TimeKey::WindowEnd, TimeKey::WindowEnd]);
    run(&mut j, &[(0, batch(&[(1, Some("x"), w(1))]))]);
    j.advance([i64::MIN, w(1) - 1]).unwrap();
    assert_eq!(j.stored_rows(), 1);
    j.advance([i64::MIN, w(1)]).unwrap();
    assert_eq!(j.stored_rows(), 0);
}

#[tokio::test]
async fn eviction_waits_for_a_quarter_of_the_state() {
    let sql = "SELECT a.id, b.id FROM a JOIN b ON a.k = b.k AND a.ts = b.ts";
    let mut j = join_for(sql).await;
    j.set_time_key(1, [TimeKey::WindowStart, TimeKey::WindowStart]);
    let left: Vec<(i64, Option<&str>, i64)> =
        (0..100).map(|i| (i, Some("x"), (i / 10) * 1000)).collect();
    run(&mut j, &[(0, batch(&left))]);
    // 10 of 100 rows evictable: kept for now (amortised rebuilds).
    j.advance([i64::MIN, 1000]).unwrap();
    assert_eq!(j.stored_rows(), 100);
    // 30 of 100: rebuilt without them.
    j.advance([i64::MIN, 3000]).unwrap();
    assert_eq!(j.stored_rows(), 70);
    let got = run(&mut j, &[(1, batch(&[(500, Some("x"), 3000)]))]);
    assert_eq!(got.len(), 10);
}

#[tokio::test]
async fn snapshot_restore_continues_the_same() {
    let sql = "SELECT a.id, b.id FROM a JOIN b ON a.k = b.k";
    let first = [
        (0, batch(&[(1, Some("x"), 0), (2, Some("y"), 0)])),
        (1, batch(&[(10, Some("y"), 0)])),
    ];
    let then = [
        (1, batch(&[(11, Some("x"), 0)])),
        (0, batch(&[(3, Some("y"), 0)])),
    ];
    let mut straight = join_for(sql).await;
    run(&mut straight, &first);
    let mut restored = join_for(sql).await;
    restored.restore(straight.snapshot().unwrap()).unwrap();
    assert_eq!(restored.stored_rows(), 3);
    assert_eq!(run(&mut restored, &then), run(&mut straight, &then));
    assert_eq!(run(&mut restored, &[]), Vec::<String>::new());
}

/// Probing costs O(batch + matches), not O(state): 1M probe rows against 100k stored
/// rows. `cargo test --release -p weir-engine --lib join_throughput -- --ignored --nocapture`
#[tokio::test]
#[ignore]
async fn join_throughput() {
    let mut j = join_for(EQ).await;
    let keys: Vec<String> = (0..100_000).map(|i| format!("key-{i}")).collect();
    let stored: Vec<(i64, Option<&str>, i64)> = (0..100_000)
        .map(|i| (i as i64, Some(keys[i].as_str()), 0))
        .collect();
    let t = std::time::Instant::now();
    for chunk in stored.chunks(8192) {
        j.push(1, &batch(chunk)).unwrap();
    }
    let build = t.elapsed();
    let t = std::time::Instant::now();
    let mut matched = 0usize;
    let mut n = 0u64;
    while n < 1_000_000 {
        let chunk: Vec<(i64, Option<&str>, i64)> = (0..8192)
            .map(|i| {
                let x = n + i;
                // Half the probe rows find a match.
                let k = (x * 7919 % 200_000) as usize;
                (
                    x as i64,
                    keys.get(k).map(String::as_str).or(Some("none")),
                    0,
                )
            })
            .collect();
        // Probe only: keep the state at 100k rows.
        let b = batch(&chunk);
        let k = eval_keys(&j.keys[0], &j.key_types, &b).unwrap();
        let r = j.converter.convert_columns(&k).unwrap();
        if let Some(out) = j.probe(0, &b, &r).unwrap().pairs {
            matched += out.num_rows();
        }
        n += 8192;
    }
    let probe = t.elapsed();
    println!(
        "build 100k rows: {:?} ({:.0} rows/s); probe {n} rows: {:?} ({:.0} rows/s), {matched} matches",
        build,
        100_000.0 / build.as_secs_f64(),
        probe,
        n as f64 / probe.as_secs_f64()
    );
    assert!(matched > 400_000 && matched < 600_000);
}
