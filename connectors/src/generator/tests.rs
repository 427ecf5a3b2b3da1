//! Tests of the generator source: the same rows for the same seed and start, realistic
//! values, declared columns and types, options, rates and out-of-order rows.

#![allow(clippy::unwrap_used)]
use super::*;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{
    Field, Float32Type, Int32Type, Schema, TimeUnit, TimestampMillisecondType,
};
use std::collections::HashMap;
use std::sync::Arc;
use weir_engine::connector::BatchLimits;
use weir_engine::options::Options;

const START: &str = "2024-01-01T00:00:00Z";
const START_MS: i64 = 1_704_067_200_000;

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, None)
}

fn downloads_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("ts", ts_type(), false),
        Field::new("content_id", DataType::Utf8, true),
        Field::new("content_type", DataType::Utf8, true),
        Field::new("region", DataType::Utf8, true),
        Field::new("device_type", DataType::Utf8, true),
        Field::new("status", DataType::Utf8, true),
        Field::new("duration_seconds", DataType::Float64, true),
        Field::new("speed_mbps", DataType::Float64, true),
        Field::new("error_code", DataType::Utf8, true),
    ]))
}

fn spec(schema: SchemaRef, options: &[(&str, &str)], max_rows: usize) -> SourceSpec {
    SourceSpec {
        metadata: vec![],
        name: "gen".into(),
        schema,
        event_time: Some("ts".into()),
        options: Options::new(options.iter().map(|(k, v)| (k.to_string(), v.to_string()))),
        data_dir: std::env::temp_dir(),
        batch: BatchLimits {
            max_rows,
            max_delay: Duration::from_millis(20),
        },
        stats: Default::default(),
        workers: 1,
        idle_timeout: weir_engine::connector::DEFAULT_IDLE_TIMEOUT,
    }
}

async fn drain(source: &mut Box<dyn Source>) -> Vec<(usize, RecordBatch)> {
    let mut out = Vec::new();
    loop {
        match source.next().await.unwrap() {
            SourceEvent::Batch {
                partition,
                batch,
                bad_records,
                ..
            } => {
                assert_eq!(bad_records, 0);
                out.push((partition, batch));
            }
            SourceEvent::End => return out,
            other => panic!("generators end as a whole, got {other:?}"),
        }
    }
}

fn create(schema: SchemaRef, options: &[(&str, &str)], max_rows: usize) -> Result<Box<dyn Source>> {
    GeneratorSourceFactory.create(spec(schema, options, max_rows))
}

fn strings(batch: &RecordBatch, name: &str) -> Vec<Option<String>> {
    batch
        .column_by_name(name)
        .unwrap()
        .as_string::<i32>()
        .iter()
        .map(|s| s.map(str::to_string))
        .collect()
}

fn timestamps(batch: &RecordBatch) -> Vec<i64> {
    batch
        .column_by_name("ts")
        .unwrap()
        .as_primitive::<TimestampMillisecondType>()
        .values()
        .to_vec()
}

#[tokio::test]
async fn same_seed_and_start_give_same_batches() {
    let opts = [
        ("kind", "downloads"),
        ("rows.per.second", "0"),
        ("rows", "5000"),
        ("partitions", "2"),
        ("start", START),
    ];
    let a = drain(&mut create(downloads_schema(), &opts, 1000).unwrap()).await;
    let b = drain(&mut create(downloads_schema(), &opts, 1000).unwrap()).await;
    assert_eq!(a.len(), 6); // 5000 rows: 2 x 1000, 2 x 1000, 2 x 500
    assert_eq!(a, b);
    assert_eq!(a.iter().map(|(_, b)| b.num_rows()).sum::<usize>(), 5000);
    for (i, (partition, batch)) in a.iter().enumerate() {
        assert_eq!(*partition, i % 2);
        assert!(batch.num_rows() <= 1000);
        assert_eq!(batch.schema(), downloads_schema());
    }
    // Row n goes to partition n % 2, at START + n ms.
    let (p1, first_p1) = &a[1];
    assert_eq!(*p1, 1);
    assert_eq!(
        &strings(first_p1, "event_id")[..2],
        &[Some("dl-42-1".to_string()), Some("dl-42-3".to_string())]
    );
    assert_eq!(&timestamps(first_p1)[..2], &[START_MS + 1, START_MS + 3]);

    let mut other = opts.to_vec();
    other.push(("seed", "7"));
    let c = drain(&mut create(downloads_schema(), &other, 1000).unwrap()).await;
    assert_eq!(c.len(), a.len());
    assert_ne!(strings(&c[0].1, "region"), strings(&a[0].1, "region"));
    assert_eq!(strings(&c[0].1, "event_id")[0].as_deref(), Some("dl-7-0"));
}

#[tokio::test]
async fn downloads_look_realistic() {
    let opts = [
        ("kind", "downloads"),
        ("rows.per.second", "0"),
        ("rows", "200000"),
        ("start", START),
    ];
    let batches = drain(&mut create(downloads_schema(), &opts, 8192).unwrap()).await;
    let mut failed = 0usize;
    let mut total = 0usize;
    let mut content: HashMap<String, usize> = HashMap::new();
    for (_, b) in &batches {
        let status = strings(b, "status");
        let errors = strings(b, "error_code");
        for (s, e) in status.iter().zip(&errors) {
            total += 1;
            match s.as_deref() {
                Some("failed") => {
                    failed += 1;
                    assert!(e.is_some());
                }
                Some("success") => assert!(e.is_none()),
                other => panic!("status {other:?}"),
            }
        }
        for c in strings(b, "content_id").into_iter().flatten() {
            *content.entry(c).or_default() += 1;
        }
        let ts = timestamps(b);
        assert!(ts.windows(2).all(|w| w[0] < w[1]));
    }
    assert_eq!(total, 200_000);
    let rate = failed as f64 / total as f64;
    assert!((0.02..0.045).contains(&rate), "failure rate {rate}");
    let mut counts: Vec<usize> = content.values().copied().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    assert!(counts.len() > 400, "{} items", counts.len());
    assert!(counts[0] > 20 * counts[counts.len() / 2], "{counts:?}");
}

#[tokio::test]
async fn ticks_cast_to_declared_types() {
    let schema = Arc::new(Schema::new(vec![
        Field::new("ts", ts_type(), false),
        Field::new("symbol", DataType::Utf8, false),
        Field::new("volume", DataType::Int32, false),
        Field::new("price", DataType::Float32, false),
    ]));
    let opts = [
        ("kind", "ticks"),
        ("rows.per.second", "0"),
        ("rows", "1000"),
        ("seed", "1"),
        ("start", "1700000000000"),
    ];
    let batches = drain(&mut create(schema.clone(), &opts, 4096).unwrap()).await;
    assert_eq!(batches.len(), 1);
    let b = &batches[0].1;
    assert_eq!(b.schema(), schema);
    assert_eq!(b.num_rows(), 1000);
    assert_eq!(timestamps(b)[999], 1_700_000_000_999);
    let volumes = b.column(2).as_primitive::<Int32Type>();
    assert!(volumes.values().iter().all(|v| *v >= 1));
    let prices = b.column(3).as_primitive::<Float32Type>();
    let symbols = strings(b, "symbol");
    for (s, p) in symbols.iter().zip(prices.values()) {
        let s = s.as_deref().unwrap();
        let start = ticks_start_price(s);
        assert!((start * 0.8..start * 1.2).contains(&(*p as f64)), "{s} {p}");
    }
}

fn ticks_start_price(symbol: &str) -> f64 {
    match symbol {
        "AAPL" => 190.0,
        "GOOGL" => 140.0,
        "AMZN" => 180.0,
        "TSLA" => 250.0,
        "MSFT" => 420.0,
        "NVDA" => 120.0,
        "META" => 500.0,
        "NFLX" => 650.0,
        "AMD" => 160.0,
        "INTC" => 35.0,
        "ORCL" => 130.0,
        "CRM" => 270.0,
        other => panic!("unexpected symbol {other}"),
    }
}

#[test]
fn unknown_columns_are_named_with_the_available_ones() {
    let schema = Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("bid", DataType::Float64, true),
        Field::new("ask", DataType::Float64, true),
    ]));
    let e = create(schema, &[("kind", "ticks")], 100).err().unwrap();
    assert!(e.is_user());
    assert_eq!(
        e.to_string(),
        "the 'ticks' generator cannot produce columns 'bid', 'ask'; it produces: symbol, \
         price, volume, ts"
    );
}

#[test]
fn nullable_and_type_mismatches_are_errors() {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "error_code",
        DataType::Utf8,
        false,
    )]));
    let e = create(schema, &[("kind", "downloads")], 100).err().unwrap();
    assert_eq!(
        e.to_string(),
        "column 'error_code' is declared NOT NULL but the 'downloads' generator produces \
         nulls in it"
    );
    let schema = Arc::new(Schema::new(vec![Field::new(
        "ts",
        DataType::Interval(datafusion::arrow::datatypes::IntervalUnit::MonthDayNano),
        false,
    )]));
    let e = create(schema, &[("kind", "ticks")], 100).err().unwrap();
    assert!(e.is_user());
    assert!(
        e.to_string()
            .starts_with("column 'ts' is declared as Interval"),
        "{e}"
    );
}

#[test]
fn option_errors() {
    let e = create(
        downloads_schema(),
        &[("kind", "downloads"), ("colour", "red")],
        100,
    )
    .err()
    .unwrap();
    assert_eq!(
        e.to_string(),
        "unknown option 'colour' for the generator source; valid options: kind, \
         max.out.of.orderness, partitions, rows, rows.per.second, seed, start"
    );
    let e = create(downloads_schema(), &[], 100).err().unwrap();
    assert_eq!(
        e.to_string(),
        "the generator source needs option 'kind' (downloads | ticks | nexmark)"
    );
    let e = create(downloads_schema(), &[("kind", "clicks")], 100)
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        "option 'kind' must be one of downloads | ticks | nexmark, got 'clicks'"
    );
    let e = create(
        downloads_schema(),
        &[("kind", "downloads"), ("start", "yesterday")],
        100,
    )
    .err()
    .unwrap();
    assert!(
        e.to_string()
            .starts_with("option 'start' must be an RFC 3339"),
        "{e}"
    );
    let e = create(
        downloads_schema(),
        &[("kind", "downloads"), ("rows.per.second", "fast")],
        100,
    )
    .err()
    .unwrap();
    assert_eq!(
        e.to_string(),
        "option 'rows.per.second' has an invalid value 'fast'"
    );
}

#[tokio::test]
async fn rate_limited_and_out_of_order() {
    let schema = Arc::new(Schema::new(vec![Field::new("ts", ts_type(), false)]));
    let opts = [
        ("kind", "ticks"),
        ("rows.per.second", "1000"),
        ("rows", "120"),
        ("start", START),
        ("max.out.of.orderness", "5s"),
    ];
    let began = std::time::Instant::now();
    let batches = drain(&mut create(schema, &opts, 1000).unwrap()).await;
    let elapsed = began.elapsed();
    // 120 rows at 1000/s take about 120 ms, emitted about every 20 ms.
    assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
    assert!(batches.len() >= 2, "{} batches", batches.len());
    let ts: Vec<i64> = batches.iter().flat_map(|(_, b)| timestamps(b)).collect();
    assert_eq!(ts.len(), 120);
    let mut out_of_order = 0;
    for (n, t) in ts.iter().enumerate() {
        let base = START_MS + n as i64;
        assert!((base - 5000..=base).contains(t), "row {n}: {t}");
        if n > 0 && *t < ts[n - 1] {
            out_of_order += 1;
        }
    }
    assert!(out_of_order > 10);
}

#[tokio::test]
async fn unbounded_without_start_uses_wall_clock() {
    let schema = Arc::new(Schema::new(vec![
        Field::new("ts", ts_type(), false),
        Field::new("symbol", DataType::Utf8, false),
    ]));
    let mut source = create(schema, &[("kind", "ticks"), ("rows.per.second", "0")], 500).unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    for _ in 0..3 {
        match source.next().await.unwrap() {
            SourceEvent::Batch { batch, .. } => {
                assert_eq!(batch.num_rows(), 500);
                let ts = timestamps(&batch);
                assert!((now - 1000..now + 5000).contains(&ts[0]));
                assert!(batch.column(1).null_count() == 0);
            }
            other => panic!("unbounded source sent {other:?}"),
        }
    }
}
