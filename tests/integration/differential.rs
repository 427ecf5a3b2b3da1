//! Differential test: random events in random micro-batch splits (with disorder and late
//! rows) through the streaming engine must give exactly what DataFusion computes in batch,
//! with the same SQL, over the rows the stream accepted.

use datafusion::arrow::array::{
    ArrayRef, Float64Array, Int64Array, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use std::sync::Arc;
use weir_engine::pipeline::StatementResult;
use weir_tests::slt::{format_batches, test_pipeline};

/// SplitMix64: a small fixed-seed generator, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone)]
struct Event {
    ts: i64,
    region: &'static str,
    status: &'static str,
    speed: Option<f64>,
    bytes: i64,
}

const REGIONS: [&str; 4] = ["EU", "US", "AP", "SA"];
const WINDOW_MS: i64 = 10_000;
const DELAY_MS: i64 = 3_000;

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("region", DataType::Utf8, true),
        Field::new("status", DataType::Utf8, true),
        Field::new("speed", DataType::Float64, true),
        Field::new("bytes", DataType::Int64, true),
    ]))
}

fn to_batch(events: &[Event]) -> RecordBatch {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from(
            events.iter().map(|e| e.ts).collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            events.iter().map(|e| Some(e.region)).collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            events.iter().map(|e| Some(e.status)).collect::<Vec<_>>(),
        )),
        Arc::new(Float64Array::from(
            events.iter().map(|e| e.speed).collect::<Vec<_>>(),
        )),
        Arc::new(Int64Array::from(
            events.iter().map(|e| e.bytes).collect::<Vec<_>>(),
        )),
    ];
    RecordBatch::try_new(schema(), cols).expect("batch")
}

/// Events moving forward in time with jitter; some jitter exceeds the watermark delay, so
/// some rows are late. Speeds are multiples of 0.25 so sums are exact in any order.
fn events(rng: &mut Rng, n: usize) -> Vec<Event> {
    let base = 1_700_000_000_000i64 - 1_700_000_000_000i64 % WINDOW_MS;
    let mut t = base;
    (0..n)
        .map(|_| {
            t += rng.below(400) as i64;
            let jitter = if rng.below(20) == 0 {
                15_000
            } else {
                rng.below(2_500) as i64
            };
            Event {
                ts: t - jitter,
                region: REGIONS[rng.below(4) as usize],
                status: if rng.below(10) == 0 {
                    "failed"
                } else {
                    "success"
                },
                speed: (rng.below(15) != 0).then(|| rng.below(400) as f64 * 0.25),
                bytes: rng.below(1_000_000) as i64,
            }
        })
        .collect()
}

const VIEWS: &[(&str, &str)] = &[
    (
        "health",
        "SELECT window_start, window_end, region, count(*) AS n, \
         count(*) FILTER (WHERE status = 'failed') AS failures, count(speed) AS with_speed, \
         sum(speed) AS total_speed, avg(speed) AS avg_speed, min(speed) AS min_speed, \
         max(bytes) AS max_bytes, sum(bytes) AS total_bytes, count(DISTINCT status) AS statuses \
         FROM TUMBLE(events, ts, INTERVAL '10' SECOND) GROUP BY window_start, window_end, region",
    ),
    (
        "busy",
        "SELECT window_start, count(*) AS n, max(speed) - min(speed) AS spread \
         FROM TUMBLE(events, ts, INTERVAL '10' SECOND) WHERE bytes > 100000 \
         GROUP BY window_start, window_end HAVING count(*) > 3",
    ),
    (
        "failed_only",
        "SELECT ts, region, bytes * 2 AS double_bytes FROM events WHERE status = 'failed'",
    ),
];

/// The batch answer: the same SQL with TUMBLE written out as date_bin.
fn batch_sql(view_sql: &str) -> String {
    view_sql.replace(
        "TUMBLE(events, ts, INTERVAL '10' SECOND)",
        "(SELECT *, date_bin(INTERVAL '10 seconds', ts) AS window_start, \
         date_bin(INTERVAL '10 seconds', ts) + INTERVAL '10 seconds' AS window_end FROM events) AS events",
    )
}

fn sorted(mut rows: Vec<Vec<String>>) -> Vec<Vec<String>> {
    rows.sort();
    rows
}

async fn run_case(seed: u64) {
    let mut rng = Rng(seed);
    let n = 600 + rng.below(600) as usize;
    let all = events(&mut rng, n);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut p = test_pipeline(dir.path());
    let mut ddl = String::from(
        "CREATE SOURCE events (ts TIMESTAMP NOT NULL, region TEXT, status TEXT, speed DOUBLE, bytes BIGINT, \
         WATERMARK FOR ts AS ts - INTERVAL '3' SECOND) WITH (connector = 'test');\n",
    );
    for (name, sql) in VIEWS {
        ddl.push_str(&format!("CREATE MATERIALIZED VIEW {name} AS {sql};\n"));
    }
    p.execute(&ddl).await.expect("ddl");

    // Feed random splits, tracking which rows the stream should accept: a row is late when
    // its window ended at or before the watermark in force when its batch arrived.
    let mut accepted = Vec::new();
    let mut watermark = i64::MIN;
    let mut i = 0;
    while i < all.len() {
        let len = 1 + rng.below(60) as usize;
        let chunk = &all[i..(i + len).min(all.len())];
        i += chunk.len();
        for e in chunk {
            let start = e.ts - e.ts.rem_euclid(WINDOW_MS);
            if start + WINDOW_MS > watermark {
                accepted.push(e.clone());
            }
        }
        p.push("events", 0, to_batch(chunk), 0).await.expect("push");
        let max_ts = chunk.iter().map(|e| e.ts).max().unwrap_or(i64::MIN);
        watermark = watermark.max(max_ts - DELAY_MS);
    }
    p.end_source("events").await.expect("end");
    assert!(
        accepted.len() < all.len(),
        "seed {seed}: the data should include late rows"
    );

    for (name, sql) in VIEWS {
        // Lateness exists only for windows: a stateless view passes every row on.
        let rows = if sql.contains("TUMBLE") {
            &accepted
        } else {
            &all
        };
        let ctx = SessionContext::new();
        let table = MemTable::try_new(schema(), vec![vec![to_batch(rows)]]).expect("memtable");
        ctx.register_table("events", Arc::new(table))
            .expect("register");
        let expected = ctx
            .sql(&batch_sql(sql))
            .await
            .expect("batch plan")
            .collect()
            .await
            .expect("batch run");
        let got = match p
            .execute(&format!("SELECT * FROM {name}"))
            .await
            .expect("query")
            .pop()
        {
            Some(StatementResult::Rows(b)) => b,
            other => panic!("unexpected {other:?}"),
        };
        let (e, g) = (
            sorted(format_batches(&expected).expect("fmt")),
            sorted(format_batches(&got).expect("fmt")),
        );
        assert!(
            !e.is_empty(),
            "seed {seed} view {name}: the batch answer is empty"
        );
        assert_eq!(
            g, e,
            "seed {seed} view {name}: streaming differs from batch"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn streaming_equals_batch_over_accepted_rows() {
    for seed in 1..=12u64 {
        run_case(seed).await;
    }
}
