//! Differential test: random events in random micro-batch splits (with disorder and late
//! rows) through the streaming engine must give exactly what DataFusion computes in batch,
//! with the same SQL, over the rows the stream accepted.
//!
//! The window table functions are written out in batch SQL: TUMBLE as `date_bin`; HOP by
//! joining each row with the offsets of its `size / slide` windows (keeping the windows
//! that were still open when the row arrived); SESSION with `lag` gap detection and a
//! running sum numbering each key's sessions. Which rows the stream accepts is computed
//! here from the documented rules (docs/windows.md), independently of the engine.

use datafusion::arrow::array::{
    ArrayRef, Float64Array, Int64Array, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use std::collections::HashMap;
use std::sync::Arc;
use weir_engine::dataflow::keyed::DEFAULT_KEY_PARTITIONS;
use weir_engine::pipeline::EngineConfig;
use weir_engine::pipeline::StatementResult;
use weir_tests::slt::{format_batches, test_pipeline_config, test_pipeline_keyed};

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
    user: String,
    region: &'static str,
    status: &'static str,
    speed: Option<f64>,
    bytes: i64,
}

const REGIONS: [&str; 4] = ["EU", "US", "AP", "SA"];
const USERS: u64 = 40;
const WINDOW_MS: i64 = 10_000;
const SLIDE_MS: i64 = 2_000;
const GAP_MS: i64 = 3_000;
const DELAY_MS: i64 = 3_000;

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("user_id", DataType::Utf8, true),
        Field::new("region", DataType::Utf8, true),
        Field::new("status", DataType::Utf8, true),
        Field::new("speed", DataType::Float64, true),
        Field::new("bytes", DataType::Int64, true),
    ]))
}

/// The events table of the HOP batch query: the events and the watermark in force when
/// each arrived.
fn schema_with_arrival() -> Arc<Schema> {
    let mut fields: Vec<Field> = schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(
        "arrival_wm",
        DataType::Timestamp(TimeUnit::Millisecond, None),
        false,
    ));
    Arc::new(Schema::new(fields))
}

fn to_batch(events: &[Event]) -> RecordBatch {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from(
            events.iter().map(|e| e.ts).collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            events
                .iter()
                .map(|e| Some(e.user.as_str()))
                .collect::<Vec<_>>(),
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
/// `skewed`: nine rows in ten have the first region and user (one group gets most rows).
fn events(rng: &mut Rng, n: usize, skewed: bool) -> Vec<Event> {
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
            let hot = skewed && rng.below(10) != 0;
            Event {
                ts: t - jitter,
                user: format!("u{}", if hot { 0 } else { rng.below(USERS) }),
                region: REGIONS[if hot { 0 } else { rng.below(4) as usize }],
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

const TUMBLE: &str = "TUMBLE(events, ts, INTERVAL '10' SECOND)";
/// The union view `halves` (two overlapping halves of events, by bytes) and a TUMBLE over it.
const HALVES: &str = "SELECT ts, region, bytes FROM events WHERE bytes < 600000 \
     UNION ALL SELECT ts, region, bytes + 1 AS bytes FROM events WHERE bytes >= 300000";
const HALVES_TUMBLE: &str = "TUMBLE(halves, ts, INTERVAL '10' SECOND)";
/// Deduplication: each user's first row by time (ties by bytes, region, status).
const DEDUP: &str = "SELECT user_id, ts, region, bytes FROM (SELECT *, ROW_NUMBER() OVER \
     (PARTITION BY user_id ORDER BY ts, bytes, region, status) AS rn FROM events) AS t \
     WHERE rn = 1";
/// An updating view (an aggregate without a window), and one over it.
const USER_TOTALS: &str = "SELECT user_id, count(*) AS n, sum(bytes) AS total_bytes, \
     max(speed) AS top_speed, count(DISTINCT region) AS regions FROM events GROUP BY user_id";
const HOP: &str = "HOP(events, ts, INTERVAL '2' SECOND, INTERVAL '10' SECOND)";
/// Count windows: each user's rows in fours, by time (ties by the other columns in order).
const COUNT: &str = "COUNT_WINDOW(events, user_id, ts, 4)";
const SESSION: &str = "SESSION(events, ts, INTERVAL '3' SECOND)";

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
    (
        "hop_health",
        "SELECT window_start, window_end, region, count(*) AS n, sum(bytes) AS total_bytes, \
         avg(speed) AS avg_speed, max(speed) AS max_speed, count(DISTINCT status) AS statuses \
         FROM HOP(events, ts, INTERVAL '2' SECOND, INTERVAL '10' SECOND) \
         GROUP BY window_start, window_end, region",
    ),
    (
        "hop_busy",
        "SELECT window_end, count(*) AS n, sum(speed) AS total_speed \
         FROM HOP(events, ts, INTERVAL '2' SECOND, INTERVAL '10' SECOND) WHERE bytes > 100000 \
         GROUP BY window_start, window_end HAVING count(*) > 10",
    ),
    (
        "sessions",
        "SELECT window_start, window_end, user_id, count(*) AS n, sum(bytes) AS total_bytes, \
         min(speed) AS min_speed, count(*) FILTER (WHERE status = 'failed') AS failures \
         FROM SESSION(events, ts, INTERVAL '3' SECOND) GROUP BY window_start, window_end, user_id",
    ),
    (
        "long_sessions",
        "SELECT user_id, window_start, window_end, count(*) AS n \
         FROM SESSION(events, ts, INTERVAL '3' SECOND) \
         GROUP BY user_id, window_start, window_end HAVING count(*) >= 3",
    ),
    (
        "top_bytes",
        "SELECT * FROM (SELECT window_start, region, user_id, bytes, ts, \
         ROW_NUMBER() OVER (PARTITION BY window_start ORDER BY bytes DESC, ts, user_id, region) AS rn \
         FROM TUMBLE(events, ts, INTERVAL '10' SECOND)) AS t WHERE rn <= 3",
    ),
    (
        "fastest_per_region",
        "SELECT window_start, region, speed, r FROM (SELECT window_start, region, speed, \
         RANK() OVER (PARTITION BY window_start, region ORDER BY speed DESC NULLS LAST) AS r \
         FROM TUMBLE(events, ts, INTERVAL '10' SECOND)) AS t WHERE r < 3",
    ),
    ("halves", HALVES),
    ("first_per_user", DEDUP),
    (
        "halves_per_region",
        "SELECT window_start, region, count(*) AS n, sum(bytes) AS total_bytes \
         FROM TUMBLE(halves, ts, INTERVAL '10' SECOND) GROUP BY window_start, window_end, region",
    ),
    // Updating views (aggregates without a window): their current rows, with every
    // change applied, equal batch SQL over every row so far (no row is late for them).
    ("user_totals", USER_TOTALS),
    // An aggregate over an updating view: users move between counts as theirs grow.
    (
        "users_per_count",
        "SELECT n, count(*) AS users, sum(total_bytes) AS bytes, avg(top_speed) AS speed \
         FROM user_totals GROUP BY n",
    ),
    (
        "light_users",
        "SELECT user_id AS who, count(*) AS n, min(speed) AS slowest FROM events \
         GROUP BY user_id HAVING count(*) < 20",
    ),
    (
        "all_totals",
        "SELECT count(*) AS n, sum(bytes) AS total_bytes, max(speed) AS top_speed FROM events",
    ),
    (
        "per_4_events",
        "SELECT user_id, window_index, count(*) AS n, sum(bytes) AS total_bytes, \
         min(ts) AS first_ts, max(speed) AS top_speed \
         FROM COUNT_WINDOW(events, user_id, ts, 4) GROUP BY user_id, window_index",
    ),
    (
        "hop_top_bytes",
        "SELECT window_start, window_end, bytes, dr FROM (SELECT window_start, window_end, bytes, \
         DENSE_RANK() OVER (PARTITION BY window_start ORDER BY bytes DESC) AS dr \
         FROM HOP(events, ts, INTERVAL '2' SECOND, INTERVAL '10' SECOND)) AS t WHERE dr <= 2",
    ),
];

/// The batch answer: the same SQL with the window function written out.
fn batch_sql(view_sql: &str) -> String {
    let tumble = "(SELECT *, date_bin(INTERVAL '10 seconds', ts) AS window_start, \
         date_bin(INTERVAL '10 seconds', ts) + INTERVAL '10 seconds' AS window_end FROM events) AS events";
    // Each row in the size / slide windows ending after its pane, those still open when it
    // arrived.
    let offsets = (0..WINDOW_MS / SLIDE_MS)
        .map(|k| format!("(INTERVAL '{} milliseconds')", k * SLIDE_MS))
        .collect::<Vec<_>>()
        .join(", ");
    let hop = format!(
        "(SELECT * FROM (SELECT e.*, date_bin(INTERVAL '2 seconds', e.ts) - o.off AS window_start, \
           date_bin(INTERVAL '2 seconds', e.ts) - o.off + INTERVAL '10 seconds' AS window_end \
           FROM events e CROSS JOIN (VALUES {offsets}) AS o(off)) AS x \
         WHERE window_end > arrival_wm) AS events"
    );
    // A session starts where a user's previous row is a gap or more before.
    let session = format!(
        "(SELECT *, min(ts) OVER (PARTITION BY user_id, sid) AS window_start, \
           max(ts) OVER (PARTITION BY user_id, sid) + INTERVAL '{GAP_MS} milliseconds' AS window_end \
         FROM (SELECT *, sum(CASE WHEN prev IS NULL OR CAST(ts AS BIGINT) - CAST(prev AS BIGINT) >= {GAP_MS} \
                 THEN 1 ELSE 0 END) OVER (PARTITION BY user_id ORDER BY ts ROWS UNBOUNDED PRECEDING) AS sid \
               FROM (SELECT *, lag(ts) OVER (PARTITION BY user_id ORDER BY ts) AS prev FROM events) AS a) AS b) AS events"
    );
    // The union view over the accepted rows: a union's rows are late or on time as its
    // source's rows are (its watermark is its one input's).
    let halves_tumble = format!(
        "(SELECT *, date_bin(INTERVAL '10 seconds', ts) AS window_start, \
         date_bin(INTERVAL '10 seconds', ts) + INTERVAL '10 seconds' AS window_end \
         FROM ({HALVES}) AS h) AS halves"
    );
    // A user's rows numbered by time and the other columns; only whole fours.
    let count = "(SELECT * FROM (SELECT *, (CAST(ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY \
         ts, user_id NULLS LAST, region NULLS LAST, status NULLS LAST, speed NULLS LAST, \
         bytes NULLS LAST) AS BIGINT) - 1) / 4 AS window_index, count(*) OVER (PARTITION BY \
         user_id) AS key_rows FROM events) AS c WHERE window_index < key_rows / 4) AS events";
    view_sql
        .replace(COUNT, count)
        .replace(TUMBLE, tumble)
        .replace(HOP, &hop)
        .replace(SESSION, &session)
        .replace(HALVES_TUMBLE, &halves_tumble)
        .replace(
            "FROM user_totals",
            &format!("FROM ({USER_TOTALS}) AS user_totals"),
        )
}

/// SESSION lateness as docs/windows.md states it, per key: a row is late when it is less
/// than a gap after the last row of the key's newest closed session, or when it joins no
/// open session and its own would end at or before the watermark. A key is forgotten when
/// it has no open session and the watermark is three gaps past its closed one.
#[derive(Default)]
struct SessionRule {
    /// Per user: open sessions, and the newest closed one's last event time.
    keys: HashMap<String, (Vec<Session>, Option<i64>)>,
}

/// A session's first and last event time.
type Session = (i64, i64);

impl SessionRule {
    fn offer(&mut self, user: &str, t: i64, watermark: i64) -> bool {
        let (open, closed) = self.keys.entry(user.to_string()).or_default();
        if closed.is_some_and(|cl| t < cl + GAP_MS) {
            return false;
        }
        let (joined, mut rest): (Vec<Session>, Vec<Session>) = open
            .iter()
            .partition(|(s, l)| s - GAP_MS < t && t < l + GAP_MS);
        if joined.is_empty() && t + GAP_MS <= watermark {
            return false;
        }
        let s = joined.iter().map(|x| x.0).chain([t]).min().unwrap_or(t);
        let l = joined.iter().map(|x| x.1).chain([t]).max().unwrap_or(t);
        rest.push((s, l));
        *open = rest;
        true
    }

    fn close(&mut self, watermark: i64) {
        self.keys.retain(|_, (open, closed)| {
            for (_, l) in open.iter().filter(|(_, l)| l + GAP_MS <= watermark) {
                *closed = Some(closed.map_or(*l, |c| c.max(*l)));
            }
            open.retain(|(_, l)| l + GAP_MS > watermark);
            !(open.is_empty() && closed.is_some_and(|cl| cl + 3 * GAP_MS <= watermark))
        });
    }
}

fn sorted(mut rows: Vec<Vec<String>>) -> Vec<Vec<String>> {
    rows.sort();
    rows
}

/// One random case with `workers` workers and windowed state in `key_partitions` key
/// partitions; returns every view's rows in the order the view emitted them, and the late
/// counts.
async fn run_case(
    seed: u64,
    workers: usize,
    key_partitions: u32,
) -> (Vec<Vec<Vec<String>>>, [u64; 3]) {
    let mut rng = Rng(seed);
    let n = 600 + rng.below(600) as usize;
    // The last seeds put most rows in one group.
    let skewed = seed > 9;
    let all = events(&mut rng, n, skewed);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut p = test_pipeline_keyed(dir.path(), workers, key_partitions);
    // One to three partitions; each batch comes from one of them, chosen at random.
    let parts = 1 + (seed % 3) as usize;
    let mut ddl = format!(
        "CREATE SOURCE events (ts TIMESTAMP NOT NULL, user_id TEXT, region TEXT, status TEXT, speed DOUBLE, bytes BIGINT, \
         WATERMARK FOR ts AS ts - INTERVAL '3' SECOND) WITH (connector = 'test', partitions = '{parts}');\n",
    );
    for (name, sql) in VIEWS {
        ddl.push_str(&format!("CREATE MATERIALIZED VIEW {name} AS {sql};\n"));
    }
    p.execute(&ddl).await.expect("ddl");

    // Feed random splits to random partitions, tracking which rows the stream should
    // accept. Lateness is decided per row in arrival order, whatever the batching: a row
    // sees the watermark implied by every row before it (in earlier batches or earlier in
    // its own): the least over the partitions of their newest event time minus the delay
    // (a partition with no rows yet holds it at the start of time). A row is late for a
    // TUMBLE window that ended at or before that watermark; a HOP row counts in its
    // windows still open then; SESSION rows follow the session rule.
    let mut newest: Vec<Option<i64>> = vec![None; parts];
    let mut accepted = Vec::new();
    let mut arrivals: Vec<(Event, i64)> = Vec::new();
    let mut in_sessions = Vec::new();
    // Rows on time for deduplication: not behind the watermark when they arrived.
    let mut on_time = Vec::new();
    let mut sessions = SessionRule::default();
    let mut watermark = i64::MIN;
    // Rows late by the rows before them in their own batch: what batch-at-a-time lateness
    // would have accepted. The test must include some, or it cannot tell the two apart.
    let mut late_within_batch = 0;
    let mut checked_midway = false;
    let mut i = 0;
    while i < all.len() {
        let len = 1 + rng.below(60) as usize;
        let chunk = &all[i..(i + len).min(all.len())];
        i += chunk.len();
        let partition = rng.below(parts as u64) as usize;
        let at_batch_start = watermark;
        for e in chunk {
            let start = e.ts - e.ts.rem_euclid(WINDOW_MS);
            if start + WINDOW_MS > watermark {
                accepted.push(e.clone());
            } else if start + WINDOW_MS > at_batch_start {
                late_within_batch += 1;
            }
            // Before any watermark, every window is open (the epoch is before them all).
            arrivals.push((e.clone(), watermark.max(0)));
            if e.ts >= watermark {
                on_time.push(e.clone());
            }
            if sessions.offer(&e.user, e.ts, watermark) {
                in_sessions.push(e.clone());
            }
            newest[partition] = Some(newest[partition].map_or(e.ts, |n| n.max(e.ts)));
            let least = newest
                .iter()
                .map(|n| n.map_or(i64::MIN, |n| n - DELAY_MS))
                .min()
                .unwrap_or(i64::MIN);
            watermark = watermark.max(least);
            sessions.close(watermark);
        }
        p.push("events", partition, to_batch(chunk), 0)
            .await
            .expect("push");
        // Midway, the updating views' current rows already equal batch SQL over the rows
        // so far.
        if !checked_midway && i >= all.len() / 2 {
            checked_midway = true;
            for name in UPDATING {
                let sql = VIEWS.iter().find(|(n, _)| n == &name).expect("view").1;
                let table = MemTable::try_new(schema(), vec![vec![to_batch(&all[..i])]]);
                let expected = batch_answer(sql, table.expect("memtable")).await;
                assert_eq!(
                    view_rows(&mut p, name).await,
                    expected,
                    "seed {seed} view {name}: midway, streaming differs from batch"
                );
            }
        }
    }
    assert!(
        parts > 1 || late_within_batch > 0,
        "seed {seed}: the data should include rows made late by earlier rows of their own batch"
    );
    p.end_source("events").await.expect("end");
    // (When one user has most rows, their one long session takes late rows in.)
    assert!(
        accepted.len() < all.len() && (skewed || in_sessions.len() < all.len()),
        "seed {seed}: the data should include late rows"
    );

    let mut emitted = Vec::new();
    for (name, sql) in VIEWS {
        // Lateness exists only for windows: a stateless view passes every row on.
        let table = if sql.contains(HOP) {
            let batch = to_batch(&arrivals.iter().map(|(e, _)| e.clone()).collect::<Vec<_>>());
            let mut cols = batch.columns().to_vec();
            cols.push(Arc::new(TimestampMillisecondArray::from(
                arrivals.iter().map(|(_, w)| *w).collect::<Vec<_>>(),
            )));
            let batch = RecordBatch::try_new(schema_with_arrival(), cols).expect("batch");
            MemTable::try_new(schema_with_arrival(), vec![vec![batch]])
        } else {
            let rows = if sql.contains(TUMBLE) || sql.contains(HALVES_TUMBLE) {
                &accepted
            } else if sql.contains(SESSION) {
                &in_sessions
            } else if *sql == DEDUP || sql.contains(COUNT) {
                // Behind the watermark when they arrived: late.
                &on_time
            } else {
                &all
            };
            MemTable::try_new(schema(), vec![vec![to_batch(rows)]])
        }
        .expect("memtable");
        let expected = batch_answer(sql, table).await;
        let got = match p
            .execute(&format!("SELECT * FROM {name}"))
            .await
            .expect("query")
            .pop()
        {
            Some(StatementResult::Rows(b)) => b,
            other => panic!("unexpected {other:?}"),
        };
        let got = format_batches(&got).expect("fmt");
        emitted.push(got.clone());
        let (e, g) = (expected, sorted(got));
        assert!(
            !e.is_empty(),
            "seed {seed} view {name}: the batch answer is empty"
        );
        assert_eq!(
            g, e,
            "seed {seed} view {name}: streaming differs from batch"
        );
    }
    // The views counted exactly the rows the rules call late (a HOP row when all of its
    // windows had closed).
    let late = |v: &str| p.catalog().get(v).expect("view").stats.snapshot().late_rows;
    let hop_late = arrivals
        .iter()
        .filter(|(e, w)| e.ts - e.ts.rem_euclid(SLIDE_MS) + WINDOW_MS <= *w)
        .count();
    let lates = [late("health"), late("hop_health"), late("sessions")];
    assert_eq!(
        late("first_per_user"),
        (all.len() - on_time.len()) as u64,
        "seed {seed} workers {workers}: rows late for deduplication"
    );
    let (prepared, stale) = p.prepared_batches();
    if workers > 1 {
        assert!(
            prepared > 0 && stale == 0,
            "seed {seed}: with {workers} workers every batch goes through stage 1, \
             {prepared} did ({stale} stale)"
        );
    } else {
        assert_eq!(prepared, 0, "seed {seed}: one worker has no stage 1");
    }
    assert_eq!(
        lates,
        [
            (all.len() - accepted.len()) as u64,
            hop_late as u64,
            (all.len() - in_sessions.len()) as u64
        ],
        "seed {seed} workers {workers}: late rows"
    );
    (emitted, lates)
}

/// Each case runs with one worker and with four (stage 1 preparing partial aggregates):
/// both must equal batch SQL, and each other row for row, in emission order. Seeds 10 to 12
/// are skewed: nine rows in ten in one region and one user's sessions. Each case also runs
/// with the views' state in one key partition instead of the default count: the same rows
/// (a window's rows come out in another order).
#[tokio::test(flavor = "current_thread")]
async fn streaming_equals_batch_over_accepted_rows() {
    for seed in 1..=12u64 {
        let one = run_case(seed, 1, DEFAULT_KEY_PARTITIONS).await;
        let four = run_case(seed, 4, DEFAULT_KEY_PARTITIONS).await;
        let unsplit = run_case(seed, 1, 1).await;
        for (v, (a, b)) in one.0.iter().zip(&unsplit.0).enumerate() {
            assert_eq!(
                sorted(a.clone()),
                sorted(b.clone()),
                "seed {seed}: view {} with {DEFAULT_KEY_PARTITIONS} key partitions and with one",
                VIEWS[v].0
            );
        }
        assert_eq!(
            one.1, unsplit.1,
            "seed {seed}: late rows, one key partition"
        );
        for (v, (a, b)) in one.0.iter().zip(&four.0).enumerate() {
            if a != b {
                let at = a.iter().zip(b).position(|(x, y)| x != y);
                panic!(
                    "seed {seed}: view {} emitted other rows with four workers than with one \
                     (first difference at row {at:?} of {} / {}): {:?} vs {:?}",
                    VIEWS[v].0,
                    a.len(),
                    b.len(),
                    at.and_then(|i| a.get(i)),
                    at.and_then(|i| b.get(i)),
                );
            }
        }
        assert_eq!(one.1, four.1, "seed {seed}: late rows");
    }
}

// --- Joins of two streams -------------------------------------------------------------

/// One row of either join input.
#[derive(Clone)]
struct JoinRow {
    id: i64,
    k: Option<i64>,
    g: &'static str,
    ts: i64,
    v: f64,
}

const JOIN_WINDOW_MS: i64 = 5_000;
/// Jitter stays below the watermark delay (3 s), so no row is late for the windowed views.
const JOIN_JITTER_MS: i64 = 2_500;

fn join_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("k", DataType::Int64, true),
        Field::new("g", DataType::Utf8, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("v", DataType::Float64, false),
    ]))
}

fn join_batch(rows: &[JoinRow]) -> RecordBatch {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(
            rows.iter().map(|r| r.id).collect::<Vec<_>>(),
        )),
        Arc::new(Int64Array::from(
            rows.iter().map(|r| r.k).collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            rows.iter().map(|r| r.g).collect::<Vec<_>>(),
        )),
        Arc::new(TimestampMillisecondArray::from(
            rows.iter().map(|r| r.ts).collect::<Vec<_>>(),
        )),
        Arc::new(Float64Array::from(
            rows.iter().map(|r| r.v).collect::<Vec<_>>(),
        )),
    ];
    RecordBatch::try_new(join_schema(), cols).expect("batch")
}

/// Rows moving forward in time with jitter (less than the watermark delay), keys from a
/// small domain with some nulls, so keys repeat on both sides.
fn join_rows(rng: &mut Rng, n: usize, first_id: i64) -> Vec<JoinRow> {
    let base = 1_700_000_000_000i64 - 1_700_000_000_000i64 % JOIN_WINDOW_MS;
    let mut t = base;
    (0..n)
        .map(|i| {
            t += rng.below(600) as i64;
            JoinRow {
                id: first_id + i as i64,
                k: (rng.below(12) != 0).then(|| rng.below(25) as i64),
                g: ["a", "b"][rng.below(2) as usize],
                ts: t - rng.below(JOIN_JITTER_MS as u64) as i64,
                v: rng.below(80) as f64 * 0.5,
            }
        })
        .collect()
}

/// Views over sources `l` and `r`. The windowed ones are the two sides of the q8-shaped
/// join `wjoin`; their TUMBLE is rewritten as date_bin for the batch answer.
const JOIN_VIEWS: &[(&str, &str)] = &[
    (
        "eq",
        "SELECT l.id AS lid, r.id AS rid, l.k, r.v FROM l JOIN r ON l.k = r.k",
    ),
    (
        "banded",
        "SELECT l.id AS lid, r.id AS rid, r.ts - l.ts AS lag FROM l JOIN r \
         ON l.k = r.k AND r.ts BETWEEN l.ts - INTERVAL '1' SECOND AND l.ts + INTERVAL '2' SECOND \
         WHERE l.v > 5 AND r.g = 'a'",
    ),
    (
        "two_keys",
        "SELECT l.id + r.id AS ids, l.v + r.v AS total FROM r, l \
         WHERE l.k = r.k AND l.g = r.g AND l.v < r.v",
    ),
    (
        "lw",
        "SELECT window_start, window_end, k, count(*) AS n, sum(v) AS total \
         FROM TUMBLE(l, ts, INTERVAL '5' SECOND) GROUP BY window_start, window_end, k",
    ),
    (
        "rw",
        "SELECT window_start, window_end, k, max(v) AS top \
         FROM TUMBLE(r, ts, INTERVAL '5' SECOND) GROUP BY window_start, window_end, k",
    ),
    (
        "wjoin",
        "SELECT lw.window_start, lw.k, lw.n, lw.total, rw.top FROM lw JOIN rw \
         ON lw.k = rw.k AND lw.window_start = rw.window_start",
    ),
    // Outer window joins: a window without a match comes out NULL-padded once the other
    // side's watermark has passed it (NULL keys never match).
    (
        "wjoin_left",
        "SELECT lw.window_start, lw.k, lw.n, rw.top FROM lw LEFT JOIN rw \
         ON lw.k = rw.k AND lw.window_start = rw.window_start",
    ),
    (
        "wjoin_full",
        "SELECT coalesce(lw.window_start, rw.window_start) AS ws, lw.k AS lk, rw.k AS rk, \
         lw.n, rw.top FROM lw FULL JOIN rw ON lw.k = rw.k AND lw.window_start = rw.window_start",
    ),
    // Outer joins on a time band: a row without a match comes out NULL-padded once the
    // other side's watermark has passed its band; both sides' state goes the same way.
    (
        "bjoin_left",
        "SELECT l.id AS lid, r.id AS rid, r.v FROM l LEFT JOIN r ON l.k = r.k \
         AND r.ts BETWEEN l.ts - INTERVAL '1' SECOND AND l.ts + INTERVAL '2' SECOND",
    ),
    (
        "bjoin_full",
        "SELECT l.id AS lid, r.id AS rid FROM l FULL JOIN r ON l.k = r.k \
         AND r.ts >= l.ts - INTERVAL '1' SECOND AND l.ts + INTERVAL '2' SECOND >= r.ts",
    ),
    // Outer joins without a bound: updating views, whose current rows (every change
    // applied) are the join in batch.
    (
        "ujoin_left",
        "SELECT l.id AS lid, r.id AS rid, r.v FROM l LEFT JOIN r ON l.k = r.k AND l.g = r.g",
    ),
    (
        "ujoin_full",
        "SELECT l.id AS lid, r.id AS rid FROM l FULL JOIN r ON l.k = r.k AND l.v < r.v",
    ),
];

fn join_ddl() -> String {
    let mut ddl = String::new();
    for s in ["l", "r"] {
        ddl.push_str(&format!(
            "CREATE SOURCE {s} (id BIGINT NOT NULL, k BIGINT, g TEXT NOT NULL, ts TIMESTAMP NOT NULL, \
             v DOUBLE NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '3' SECOND) WITH (connector = 'test');\n"
        ));
    }
    for (name, sql) in JOIN_VIEWS {
        ddl.push_str(&format!("CREATE MATERIALIZED VIEW {name} AS {sql};\n"));
    }
    ddl
}

/// The batch answer for view `name` over all rows of `l` and `r`.
async fn join_batch_answer(name: &str, l: &[JoinRow], r: &[JoinRow]) -> Vec<Vec<String>> {
    let ctx = SessionContext::new();
    for (t, rows) in [("l", l), ("r", r)] {
        let table = MemTable::try_new(join_schema(), vec![vec![join_batch(rows)]]).expect("mem");
        ctx.register_table(t, Arc::new(table)).expect("register");
    }
    let tumble = |s: &str| {
        format!(
            "(SELECT *, date_bin(INTERVAL '5 seconds', ts) AS window_start, \
             date_bin(INTERVAL '5 seconds', ts) + INTERVAL '5 seconds' AS window_end FROM {s}) AS {s}"
        )
    };
    for (view, sql) in JOIN_VIEWS {
        let sql = sql
            .replace("TUMBLE(l, ts, INTERVAL '5' SECOND)", &tumble("l"))
            .replace("TUMBLE(r, ts, INTERVAL '5' SECOND)", &tumble("r"));
        let df = ctx.sql(&sql).await.expect("batch plan");
        if *view == name {
            let batches = df.collect().await.expect("batch run");
            return sorted(format_batches(&batches).expect("fmt"));
        }
        // Later views read earlier ones.
        ctx.register_table(*view, df.into_view()).expect("view");
    }
    panic!("no view {name}")
}

/// The views that update their rows (aggregates without a window).
const UPDATING: [&str; 4] = [
    "user_totals",
    "users_per_count",
    "light_users",
    "all_totals",
];

/// A view's SQL run in batch over `table` as `events`, rows formatted and sorted.
async fn batch_answer(sql: &str, table: MemTable) -> Vec<Vec<String>> {
    let ctx = SessionContext::new();
    ctx.register_table("events", Arc::new(table))
        .expect("register");
    let batches = ctx
        .sql(&batch_sql(sql))
        .await
        .expect("batch plan")
        .collect()
        .await
        .expect("batch run");
    sorted(format_batches(&batches).expect("fmt"))
}

async fn view_rows(p: &mut weir_engine::pipeline::Pipeline, name: &str) -> Vec<Vec<String>> {
    match p
        .execute(&format!("SELECT * FROM {name}"))
        .await
        .expect("query")
        .pop()
    {
        Some(StatementResult::Rows(b)) => sorted(format_batches(&b).expect("fmt")),
        other => panic!("unexpected {other:?}"),
    }
}

async fn run_join_case(seed: u64) {
    let mut rng = Rng(seed);
    let (nl, nr) = (300 + rng.below(300) as usize, 300 + rng.below(300) as usize);
    let l = join_rows(&mut rng, nl, 0);
    let r = join_rows(&mut rng, nr, 100_000);
    let dir = tempfile::tempdir().expect("tempdir");
    // The joins' state in key partitions, worked on by one worker or four; the restart
    // re-splits it into another count (or keeps it).
    let workers = if seed.is_multiple_of(2) { 4 } else { 1 };
    let mut p = test_pipeline_keyed(dir.path(), workers, DEFAULT_KEY_PARTITIONS);
    p.execute(&join_ddl()).await.expect("ddl");
    let store = weir_engine::checkpoint::CheckpointStore::new(dir.path().join("checkpoints"), 2);
    // One checkpoint and restart at a random point.
    let restart_at = rng.below((l.len() + r.len()) as u64) as usize;
    let (mut li, mut ri, mut fed, mut restarted) = (0, 0, 0, false);
    let (mut max_state, mut max_band_state) = (0u64, 0u64);
    while li < l.len() || ri < r.len() {
        // Random interleaving: either side may run up to 15 s (of event time) ahead.
        let left = match (l.get(li), r.get(ri)) {
            (None, _) => false,
            (_, None) => true,
            (Some(a), Some(b)) if a.ts > b.ts + 15_000 => false,
            (Some(a), Some(b)) if b.ts > a.ts + 15_000 => true,
            _ => rng.below(2) == 0,
        };
        let len = 1 + rng.below(40) as usize;
        let (name, rows, i) = if left {
            ("l", &l, &mut li)
        } else {
            ("r", &r, &mut ri)
        };
        let chunk = &rows[*i..(*i + len).min(rows.len())];
        *i += chunk.len();
        fed += chunk.len();
        p.push(name, 0, join_batch(chunk), 0).await.expect("push");
        let state = p.catalog().get("wjoin").map_or(0, |o| {
            o.stats
                .open_groups
                .load(std::sync::atomic::Ordering::Relaxed)
        });
        max_state = max_state.max(state);
        let band_state = p.catalog().get("bjoin_full").map_or(0, |o| {
            o.stats
                .open_groups
                .load(std::sync::atomic::Ordering::Relaxed)
        });
        max_band_state = max_band_state.max(band_state);
        if !restarted && fed >= restart_at {
            restarted = true;
            store
                .write(
                    1,
                    p.snapshot().await.expect("snapshot"),
                    Default::default(),
                    0,
                )
                .expect("checkpoint");
            let key_partitions = [DEFAULT_KEY_PARTITIONS, 3, 1, 7][(seed % 4) as usize];
            p = test_pipeline_config(
                dir.path(),
                EngineConfig {
                    workers,
                    key_partitions,
                    repartition: true,
                    ..EngineConfig::default()
                },
            );
            p.execute(&join_ddl()).await.expect("ddl again");
            let r = store.latest().expect("read").expect("a checkpoint");
            let report = p.restore(&r).expect("restore");
            assert!(
                report.skipped.is_empty(),
                "seed {seed}: {:?}",
                report.skipped
            );
            let held = p.catalog().get("eq").map_or(0, |o| {
                o.stats
                    .key_partitions
                    .load(std::sync::atomic::Ordering::Relaxed)
            });
            assert_eq!(held, u64::from(key_partitions), "seed {seed}: re-split");
        }
    }
    p.end_source("l").await.expect("end l");
    p.end_source("r").await.expect("end r");

    for (name, _) in JOIN_VIEWS {
        let expected = join_batch_answer(name, &l, &r).await;
        assert!(
            !expected.is_empty(),
            "seed {seed} view {name}: the batch answer is empty"
        );
        // The outer joins must have windows without a match, or they test nothing more
        // than the inner one.
        assert!(
            !(name.starts_with("wjoin_")
                || name.starts_with("bjoin_")
                || name.starts_with("ujoin_"))
                || expected.iter().any(|r| r.iter().any(|v| v == "NULL")),
            "seed {seed} view {name}: no NULL-padded row in the batch answer"
        );
        assert_eq!(
            view_rows(&mut p, name).await,
            expected,
            "seed {seed} view {name}: streaming differs from batch"
        );
    }
    let stats = |v: &str| p.catalog().get(v).expect("view").stats.snapshot();
    assert_eq!(
        stats("lw").late_rows + stats("rw").late_rows,
        0,
        "seed {seed}"
    );
    // The window join keeps only windows the other side can still match: far fewer rows
    // than its inputs emitted, and none once both inputs have ended.
    let emitted = stats("lw").rows_out + stats("rw").rows_out;
    assert!(
        max_state * 3 < emitted,
        "seed {seed}: the window join held {max_state} of {emitted} rows"
    );
    assert_eq!(stats("wjoin").open_groups, 0, "seed {seed}");
    // The time-bounded joins: no row is late (the jitter is within the watermark
    // delay, so the batch answer is over every row), the state holds the rows whose band
    // is open, and nothing once both inputs have ended.
    for v in ["banded", "bjoin_left", "bjoin_full"] {
        assert_eq!(stats(v).late_rows, 0, "seed {seed} view {v}");
        assert_eq!(stats(v).open_groups, 0, "seed {seed} view {v}");
    }
    let fed = (l.len() + r.len()) as u64;
    assert!(
        max_band_state * 3 < fed,
        "seed {seed}: the time-bounded join held {max_band_state} of {fed} rows"
    );
    // The plain joins keep every row with a key.
    let keyed = l.iter().chain(&r).filter(|x| x.k.is_some()).count() as u64;
    assert_eq!(stats("eq").open_groups, keyed, "seed {seed}");
}

#[tokio::test(flavor = "current_thread")]
async fn stream_joins_equal_batch_joins() {
    for seed in 1..=8u64 {
        run_join_case(seed).await;
    }
}
