//! Kafka tests against a real Apache Kafka broker (started by scripts/test.sh through
//! scripts/kafka.sh; its addresses come in WEIR_KAFKA_BOOTSTRAP and
//! WEIR_KAFKA_SASL_BOOTSTRAP). Events are produced with a real rdkafka producer, views run
//! in the real runtime, and results are compared row for row with the same SQL run in
//! batch by DataFusion over the produced events.
//!
//! The broker-restart test stops and starts the shared broker, so it takes the write side of
//! [`BROKER`]; every other test holds the read side.

#![allow(clippy::unwrap_used)]

mod exchange;

use crate::updating::{
    QUIET, Readings, SOURCE, SiteRow, TOTAL, TotalRow, changed, site, total_rows,
};
use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Float64Array, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::RwLock;
use weir_connectors::kafka::KafkaSettings;
use weir_engine::connector::{BatchLimits, Sink, SinkFactory, SinkSpec};
use weir_engine::pipeline::{EngineConfig, Pipeline};
use weir_engine::runtime::{RunEnd, RunOptions, run};
use weir_engine::stats::Stats;
use weir_tests::slt::format_batches;

static BROKER: OnceLock<RwLock<()>> = OnceLock::new();

pub(crate) fn broker_lock() -> &'static RwLock<()> {
    BROKER.get_or_init(|| RwLock::new(()))
}

/// The broker's address, or `None` (test skipped) outside CI when none is running.
pub(crate) fn bootstrap() -> Option<String> {
    match std::env::var("WEIR_KAFKA_BOOTSTRAP") {
        Ok(b) if !b.is_empty() => Some(b),
        _ if weir_tests::in_ci() => {
            panic!(
                "WEIR_KAFKA_BOOTSTRAP is not set: CI must run these tests against a real \
                 broker (scripts/test.sh starts one with scripts/kafka.sh)"
            )
        }
        _ => {
            eprintln!(
                "SKIPPED: no Kafka broker (WEIR_KAFKA_BOOTSTRAP unset); run scripts/test.sh, or \
                 scripts/kafka.sh start --sasl and export WEIR_KAFKA_BOOTSTRAP=127.0.0.1:19092"
            );
            None
        }
    }
}

pub(crate) fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros() % 1_000_000_000
    )
}

pub(crate) async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let r = admin
        .create_topics(
            // The tests' events are dated 2024: without this the broker's retention check
            // (every 5 minutes, by message timestamp) could delete them mid-test.
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))
                .set("retention.ms", "-1")],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    for t in r {
        t.unwrap();
    }
}

pub(crate) fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

/// Produce one message; returns its offset.
pub(crate) async fn send(
    p: &FutureProducer,
    topic: &str,
    partition: i32,
    key: Option<&str>,
    payload: &[u8],
    ts: i64,
) -> i64 {
    let mut r: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic)
        .partition(partition)
        .payload(payload)
        .timestamp(ts);
    if let Some(k) = key {
        r = r.key(k);
    }
    let d = p.send(r, Duration::from_secs(60)).await.unwrap();
    d.offset
}

/// A sink that keeps every batch, for the test to read.
#[derive(Clone, Default)]
struct Collected(Arc<Mutex<Vec<(String, RecordBatch)>>>);

impl Collected {
    fn rows(&self, sink: &str) -> Vec<RecordBatch> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| s == sink)
            .map(|(_, b)| b.clone())
            .collect()
    }
    fn count(&self, sink: &str) -> usize {
        self.rows(sink).iter().map(|b| b.num_rows()).sum()
    }
}

struct CollectFactory(Collected);
struct CollectSink(String, Collected);

impl SinkFactory for CollectFactory {
    fn name(&self) -> &'static str {
        "collect"
    }
    fn create(&self, spec: SinkSpec) -> weir_engine::Result<Box<dyn Sink>> {
        Ok(Box::new(CollectSink(spec.name, self.0.clone())))
    }
}

#[async_trait]
impl Sink for CollectSink {
    async fn write(
        &mut self,
        batch: RecordBatch,
        _ids: weir_engine::connector::RowIds,
    ) -> weir_engine::Result<()> {
        self.1.0.lock().unwrap().push((self.0.clone(), batch));
        Ok(())
    }
    async fn close(&mut self) -> weir_engine::Result<()> {
        Ok(())
    }
}

struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    catalog: weir_engine::catalog::CatalogHandle,
    handle: tokio::task::JoinHandle<weir_engine::Result<RunEnd>>,
    out: Collected,
    _dir: tempfile::TempDir,
}

impl Running {
    /// Every object's status, last error and watermark, for failure messages.
    fn objects(&self) -> String {
        self.catalog
            .objects()
            .iter()
            .map(|o| {
                format!(
                    "{} {}: {:?}, watermark {}, error {:?}",
                    o.kind.noun(),
                    o.name,
                    o.stats.status(),
                    o.stats.watermark.load(std::sync::atomic::Ordering::Relaxed),
                    o.stats.last_error()
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Wait until `sink` has `rows` rows (or fail after `secs`).
    async fn wait_rows(&self, sink: &str, rows: usize, secs: u64) {
        let start = Instant::now();
        while self.out.count(sink) < rows {
            if self.handle.is_finished() {
                panic!(
                    "the pipeline stopped early with {} rows",
                    self.out.count(sink)
                );
            }
            if start.elapsed() > Duration::from_secs(secs) {
                panic!(
                    "{sink}: {} rows after {secs}s, expected {rows} ({})",
                    self.out.count(sink),
                    self.objects()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until `view` has closed every window ending at or before `end` (its watermark,
    /// the start of its first open window, is at `end` or later) and `sink` has written every
    /// row the view emitted (or fail after `secs`). Rows emitted by then, duplicates
    /// included, are all in `out`; only windows after `end` are still open.
    async fn settled(&self, view: &str, sink: &str, end: i64, secs: u64) {
        let stats = |name: &str| {
            self.catalog
                .get(name)
                .unwrap_or_else(|| panic!("{name} is not in the catalog"))
                .stats
        };
        let (v, s) = (stats(view), stats(sink));
        let start = Instant::now();
        loop {
            let watermark = v.watermark.load(std::sync::atomic::Ordering::Relaxed);
            let emitted = Stats::get(&v.rows_out);
            let written = Stats::get(&s.rows_in);
            if watermark >= end && written == emitted {
                break;
            }
            assert!(
                !self.handle.is_finished(),
                "the pipeline stopped early (view watermark {watermark}, {emitted} rows \
                 emitted, {written} written)"
            );
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "{view}: watermark {watermark} after {secs}s, expected {end} or later; {emitted} \
                 rows emitted, {written} written by {sink}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(self.out.count(sink) as u64, Stats::get(&s.rows_in));
    }

    /// Wait until `source` has taken its positions: it reports its lag, which it does once
    /// librdkafka has fetched from every partition (so `latest` is resolved to an offset),
    /// and the lag is 0 (or fail after `secs`).
    async fn wait_caught_up(&self, source: &str, secs: u64) {
        let start = Instant::now();
        loop {
            // The source is in the catalog once the pipeline has applied the script.
            let lag = self.catalog.get(source).and_then(|o| o.stats.lag());
            if lag == Some(0) {
                break;
            }
            assert!(!self.handle.is_finished(), "the pipeline stopped early");
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "{source}: lag {lag:?} after {secs}s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) -> weir_engine::Result<RunEnd> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.handle.await.unwrap()
    }
}

fn start(sql: &str, settings: KafkaSettings, until_done: bool) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let out = Collected::default();
    let registry = weir_connectors::registry_with(settings).with_sink(CollectFactory(out.clone()));
    let mut p = Pipeline::new(
        EngineConfig {
            data_dir: dir.path().to_path_buf(),
            batch: BatchLimits {
                max_rows: 500,
                max_delay: Duration::from_millis(20),
            },
            idle_timeout: Duration::from_secs(2),
            ..EngineConfig::default()
        },
        registry,
    );
    let sql = sql.to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let catalog = p.catalog();
    let handle = tokio::spawn(async move {
        p.execute(&sql).await?;
        run(
            p,
            RunOptions {
                until_done,
                tick: Duration::from_millis(50),
                ..RunOptions::default()
            },
            async {
                let _ = rx.await;
            },
        )
        .await
    });
    Running {
        stop: Some(tx),
        catalog,
        handle,
        out,
        _dir: dir,
    }
}

fn settings(bootstrap: &str) -> KafkaSettings {
    KafkaSettings {
        bootstrap_servers: Some(bootstrap.to_string()),
        ..KafkaSettings::default()
    }
}

/// Header `name` of a message, as text (`None` when the message does not have it).
fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    m.headers()?
        .iter()
        .find(|x| x.key == name)
        .and_then(|x| x.value)
        .map(|v| String::from_utf8_lossy(v).to_string())
}

/// A message's payload, as text.
fn payload_text(m: &OwnedMessage) -> String {
    String::from_utf8_lossy(m.payload().unwrap_or(&[])).to_string()
}

/// Every committed message of `topic` (`read_committed`), partition by partition in offset
/// order, from the beginning to the end offsets (high watermarks) taken first, for a topic
/// whose writers have finished: the end of each partition is reached (not a count of
/// messages), and the end offsets must not have moved by then, so extra messages cannot go
/// unseen.
pub(crate) fn read_topic_to_end(b: &str, topic: &str) -> Vec<OwnedMessage> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", b)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .unwrap();
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none())
        .unwrap_or_else(|| panic!("topic {topic} does not exist"));
    let ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    assert!(!ids.is_empty(), "topic {topic} has no partitions");
    let ends = |c: &BaseConsumer| -> Vec<(i32, i64)> {
        ids.iter()
            .map(|&p| {
                let (_, high) = c
                    .fetch_watermarks(topic, p, Duration::from_secs(30))
                    .unwrap();
                (p, high)
            })
            .collect()
    };
    let end = ends(&c);
    let mut tpl = TopicPartitionList::new();
    for &p in &ids {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out: Vec<OwnedMessage> = Vec::new();
    let mut at_end = std::collections::BTreeSet::new();
    let t = Instant::now();
    while at_end.len() < ids.len() {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(m.detach()),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{topic}: partitions {at_end:?} of {ids:?} read to their end after 60 s"
        );
    }
    assert_eq!(
        ends(&c),
        end,
        "{topic}: messages were added while it was read"
    );
    for m in &out {
        let high = end.iter().find(|(p, _)| *p == m.partition()).unwrap().1;
        assert!(
            m.offset() < high,
            "{topic}: offset {} past the end",
            m.offset()
        );
    }
    out.sort_by_key(|m| (m.partition(), m.offset()));
    out
}

/// A download event as produced to Kafka.
#[derive(Clone)]
pub(crate) struct Ev {
    pub(crate) partition: i32,
    pub(crate) ts: i64,
    pub(crate) region: &'static str,
    pub(crate) status: &'static str,
    pub(crate) speed: f64,
}

impl Ev {
    fn json(&self) -> Vec<u8> {
        serde_json::json!({"ts": self.ts, "region": self.region, "status": self.status,
            "speed_mbps": self.speed})
        .to_string()
        .into_bytes()
    }
}

const DDL: &str = "ts TIMESTAMP NOT NULL, region TEXT, status TEXT, speed_mbps DOUBLE";
const WINDOW_SQL: &str = "SELECT window_start, window_end, region, count(*) AS downloads, \
    count(*) FILTER (WHERE status = 'failed') AS failures, sum(speed_mbps) AS speed \
    FROM TUMBLE(downloads, ts, INTERVAL '10' SECOND) \
    GROUP BY window_start, window_end, region";

/// The same aggregate computed in batch by DataFusion over `events`, formatted and sorted.
async fn batch_reference(events: &[Ev]) -> Vec<Vec<String>> {
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("region", DataType::Utf8, true),
        Field::new("status", DataType::Utf8, true),
        Field::new("speed_mbps", DataType::Float64, true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from(
            events.iter().map(|e| e.ts).collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            events.iter().map(|e| e.region).collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            events.iter().map(|e| e.status).collect::<Vec<_>>(),
        )),
        Arc::new(Float64Array::from(
            events.iter().map(|e| e.speed).collect::<Vec<_>>(),
        )),
    ];
    let batch = RecordBatch::try_new(schema.clone(), cols).unwrap();
    let ctx = SessionContext::new();
    ctx.register_table(
        "downloads",
        Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap()),
    )
    .unwrap();
    let df = ctx
        .sql(
            "SELECT date_bin(INTERVAL '10 seconds', ts) AS window_start, \
             date_bin(INTERVAL '10 seconds', ts) + INTERVAL '10 seconds' AS window_end, region, \
             count(*) AS downloads, count(*) FILTER (WHERE status = 'failed') AS failures, \
             sum(speed_mbps) AS speed FROM downloads GROUP BY 1, 2, 3",
        )
        .await
        .unwrap();
    let mut rows = format_batches(&df.collect().await.unwrap()).unwrap();
    rows.sort();
    rows
}

fn sorted(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let mut rows = format_batches(batches).unwrap();
    rows.sort();
    rows
}

pub(crate) const T0: i64 = 1_714_521_600_000; // 2024-05-01T00:00:00Z
const REGIONS: [&str; 3] = ["EU", "US", "AP"];

/// Events over `windows` 10-second windows on partitions `0..partitions`, each partition
/// out of order within 3 s.
pub(crate) fn events(partitions: i32, windows: i64, per_window: i64, seed: u64) -> Vec<Ev> {
    let mut x = seed;
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x >> 33
    };
    let mut out = Vec::new();
    for p in 0..partitions {
        let mut evs: Vec<Ev> = (0..windows * per_window)
            .map(|i| {
                let base = T0 + i * 10_000 / per_window;
                let jitter = (next() % 3000) as i64;
                Ev {
                    partition: p,
                    ts: (base - jitter).max(T0),
                    region: REGIONS[(next() % 3) as usize],
                    status: if next() % 5 == 0 { "failed" } else { "success" },
                    speed: (next() % 1000) as f64 / 8.0,
                }
            })
            .collect();
        // Disorder within the watermark delay (5 s): shuffle neighbours.
        for i in 1..evs.len() {
            if next() % 2 == 0 {
                evs.swap(i - 1, i);
            }
        }
        out.extend(evs);
    }
    out
}

pub(crate) async fn produce_all(p: &FutureProducer, topic: &str, evs: &[Ev]) {
    let futs: Vec<_> = evs
        .iter()
        .map(|e| {
            let payload = e.json();
            let rec: FutureRecord<'_, str, Vec<u8>> = FutureRecord::to(topic)
                .partition(e.partition)
                .payload(&payload)
                .timestamp(e.ts);
            let f = p.send_result(rec).map_err(|(e, _)| e).unwrap();
            async move { f.await.unwrap().unwrap() }
        })
        .collect();
    futures::future::join_all(futs).await;
}

/// The far-future events that move every partition's watermark past the test's windows.
pub(crate) fn sentinels(partitions: i32, ts: i64) -> Vec<Ev> {
    (0..partitions)
        .map(|p| Ev {
            partition: p,
            ts,
            region: "ZZ",
            status: "success",
            speed: 0.0,
        })
        .collect()
}

/// Several partitions with disorder, one partition that never receives anything (idle),
/// metadata columns unused by the view: windowed results equal the batch answer exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_windows_multi_partition_disorder_idle() {
    let Some(b) = bootstrap() else { return };
    let _g = broker_lock().read().await;
    let topic = unique("downloads");
    create_topic(&b, &topic, 4).await;
    let evs = events(3, 6, 40, 7);
    let p = producer(&b);
    produce_all(&p, &topic, &evs).await;
    let run = start(
        &format!(
            "CREATE SOURCE downloads ({DDL}, kp INT METADATA FROM 'partition', \
             WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) \
             WITH (connector = 'kafka', topic = '{topic}', 'idle.timeout' = '5s'); \
             CREATE MATERIALIZED VIEW health AS {WINDOW_SQL}; \
             CREATE SINK out FROM health WITH (connector = 'collect');"
        ),
        settings(&b),
        false,
    );
    let expected = batch_reference(&evs).await;
    // Partition 3 is silent: only after the idle timeout do windows close.
    produce_all(&p, &topic, &sentinels(3, T0 + 3_600_000)).await;
    run.wait_rows("out", expected.len(), 60).await;
    run.settled("health", "out", T0 + 60_000, 60).await;
    let got = sorted(&run.out.rows("out"));
    assert_eq!(got, expected);
    // Live figures: every message read, the payload bytes counted, and no lag once caught
    // up (the lag is reported, not unknown).
    let source = run.catalog.get("downloads").expect("source in the catalog");
    let total = (evs.len() + sentinels(3, 0).len()) as u64;
    let start = Instant::now();
    while source.stats.lag() != Some(0) || Stats::get(&source.stats.rows_in) < total {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "lag {:?}, rows {}",
            source.stats.lag(),
            Stats::get(&source.stats.rows_in)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(Stats::get(&source.stats.rows_in), total);
    assert!(Stats::get(&source.stats.bytes) > total * 20);
    assert_eq!(source.stats.status(), weir_engine::stats::Status::Running);
    run.stop().await.unwrap();
}

/// Metadata columns carry each message's partition, offset, timestamp and key, and every
/// startup mode starts where it should; committed group offsets show the consumer's lag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_metadata_and_startup_modes() {
    let Some(b) = bootstrap() else { return };
    let _g = broker_lock().read().await;
    let topic = unique("meta");
    create_topic(&b, &topic, 2).await;
    let p = producer(&b);
    let mut produced = Vec::new();
    for i in 0..10i64 {
        let part = (i % 2) as i32;
        let key = format!("k{i}");
        let ts = T0 + i * 1000;
        let payload = format!(r#"{{"id": {i}}}"#);
        let off = send(&p, &topic, part, Some(&key), payload.as_bytes(), ts).await;
        produced.push((i, part, off, ts, key));
    }
    let sql = |mode: &str, extra: &str, group: &str| {
        format!(
            "CREATE SOURCE m (id BIGINT NOT NULL, p INT METADATA FROM 'partition', \
             o BIGINT METADATA FROM 'offset', t TIMESTAMP METADATA FROM 'timestamp', \
             k TEXT METADATA FROM 'key', tp TEXT METADATA FROM 'topic') \
             WITH (connector = 'kafka', topic = '{topic}', 'scan.startup.mode' = '{mode}', \
             'scan.bounded.mode' = 'latest-offset', 'group.id' = '{group}', \
             'commit.interval' = '100ms' {extra}); \
             CREATE MATERIALIZED VIEW v AS SELECT id, p, o, t, k, tp = '{topic}' AS same_topic \
             FROM m; CREATE SINK out FROM v WITH (connector = 'collect');"
        )
    };
    let expect = |rows: &[(i64, i32, i64, i64, String)]| {
        let mut e: Vec<Vec<String>> = rows
            .iter()
            .map(|(i, p, o, t, k)| {
                vec![
                    i.to_string(),
                    p.to_string(),
                    o.to_string(),
                    chrono::DateTime::from_timestamp_millis(*t)
                        .unwrap()
                        .naive_utc()
                        .format("%Y-%m-%dT%H:%M:%S")
                        .to_string(),
                    k.clone(),
                    "true".to_string(),
                ]
            })
            .collect();
        e.sort();
        e
    };
    let group = unique("g");
    // earliest: everything, with exact metadata.
    let r = start(&sql("earliest", "", &group), settings(&b), true);
    assert!(matches!(r.handle.await.unwrap().unwrap(), RunEnd::Done));
    let got = sorted(&r.out.rows("out"));
    assert_eq!(got, expect(&produced));

    // The group's committed offsets are at the end of each partition: lag 0.
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("group.id", &group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&topic, 0);
    tpl.add_partition(&topic, 1);
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    for e in committed.elements() {
        assert_eq!(e.offset(), Offset::Offset(5), "partition {}", e.partition());
    }

    // group-offsets: only what came after the commit.
    let mut more = Vec::new();
    for i in 10..14i64 {
        let part = (i % 2) as i32;
        let key = format!("k{i}");
        let ts = T0 + i * 1000;
        let off = send(
            &p,
            &topic,
            part,
            Some(&key),
            format!(r#"{{"id": {i}}}"#).as_bytes(),
            ts,
        )
        .await;
        more.push((i, part, off, ts, key));
    }
    // The standard tool shows the lag: two new messages per partition.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/kafka.sh");
    // A JVM tool taking seconds: off the runtime's workers, which run the pipeline.
    let args = [
        script.to_string(),
        "groups".into(),
        "--bootstrap-server".into(),
        b.clone(),
        "--describe".into(),
        "--group".into(),
        group.clone(),
    ];
    let out =
        tokio::task::spawn_blocking(move || std::process::Command::new("bash").args(args).output())
            .await
            .unwrap()
            .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lags: Vec<(String, String, String)> = text
        .lines()
        .filter(|l| l.contains(&topic))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[2].to_string(), f[3].to_string(), f[5].to_string())
        })
        .collect();
    lags.sort();
    assert_eq!(
        lags,
        vec![
            ("0".to_string(), "5".to_string(), "2".to_string()),
            ("1".to_string(), "5".to_string(), "2".to_string())
        ],
        "kafka-consumer-groups output:\n{text}"
    );
    let r = start(&sql("group-offsets", "", &group), settings(&b), true);
    r.handle.await.unwrap().unwrap();
    assert_eq!(sorted(&r.out.rows("out")), expect(&more));

    // timestamp: messages at or after the instant.
    let from = T0 + 7000;
    let r = start(
        &sql(
            "timestamp",
            &format!(", 'scan.startup.timestamp' = '{from}'"),
            &unique("g"),
        ),
        settings(&b),
        true,
    );
    r.handle.await.unwrap().unwrap();
    let all: Vec<_> = produced.iter().chain(&more).cloned().collect();
    let after: Vec<_> = all.iter().filter(|x| x.3 >= from).cloned().collect();
    assert_eq!(sorted(&r.out.rows("out")), expect(&after));

    // latest: nothing that was already there.
    let r = start(&sql("latest", "", &unique("g")), settings(&b), true);
    r.handle.await.unwrap().unwrap();
    assert_eq!(r.out.count("out"), 0);
}

/// Bad records of every kind go to `<topic>.dlq` with the raw bytes and headers naming the
/// reason and position; the good rows are exact; `bad.records = 'fail'` stops with the
/// offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_bad_records_dead_letter_topic() {
    let Some(b) = bootstrap() else { return };
    let _g = broker_lock().read().await;
    let topic = unique("bad");
    create_topic(&b, &topic, 1).await;
    let p = producer(&b);
    let records: Vec<(&str, Option<&str>)> = vec![
        (
            r#"{"ts": 1714521600000, "region": "EU", "status": "success", "speed_mbps": 1.5}"#,
            None,
        ),
        ("this is not json", Some("missing brace")),
        (
            r#"{"ts": 1714521601000, "region": "EU", "speed_mbps": "fast"}"#,
            None,
        ),
        (r#"{"region": "US"}"#, None),
        ("", None),
        (r#"{"ts": "yesterday", "region": "US"}"#, None),
        (
            r#"{"ts": "2024-05-01T00:00:02Z", "region": "US", "status": "failed", "speed_mbps": 2.5}"#,
            None,
        ),
    ];
    for (payload, key) in &records {
        send(&p, &topic, 0, *key, payload.as_bytes(), T0).await;
    }
    let ddl = format!(
        "CREATE SOURCE downloads ({DDL}, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) \
         WITH (connector = 'kafka', topic = '{topic}', 'scan.bounded.mode' = 'latest-offset'"
    );
    let r = start(
        &format!(
            "{ddl}); CREATE MATERIALIZED VIEW v AS SELECT ts, region, status, speed_mbps \
             FROM downloads; CREATE SINK out FROM v WITH (connector = 'collect');"
        ),
        settings(&b),
        true,
    );
    r.handle.await.unwrap().unwrap();
    assert_eq!(
        sorted(&r.out.rows("out")),
        vec![
            vec!["2024-05-01T00:00:00", "EU", "success", "1.5"],
            vec!["2024-05-01T00:00:02", "US", "failed", "2.5"],
        ]
    );

    // The dead letters, in order, with their headers.
    let mut dead = Vec::new();
    for m in read_topic_to_end(&b, &format!("{topic}.dlq")) {
        assert!(m.headers().is_some(), "a dead letter without headers");
        let header = |name: &str| header(&m, name).unwrap_or_default();
        dead.push((
            payload_text(&m),
            m.key().map(|k| String::from_utf8_lossy(k).to_string()),
            header("weir.topic"),
            header("weir.partition"),
            header("weir.offset"),
            header("weir.reason"),
        ));
    }
    assert_eq!(dead.len(), 5, "dead letters: {dead:?}");
    let expected_offsets = ["1", "2", "3", "4", "5"];
    for (d, off) in dead.iter().zip(expected_offsets) {
        assert_eq!(d.0, records[off.parse::<usize>().unwrap()].0);
        assert_eq!(d.2, topic);
        assert_eq!(d.3, "0");
        assert_eq!(d.4, off);
        assert!(!d.5.is_empty());
    }
    assert_eq!(dead[0].1.as_deref(), Some("missing brace"));
    assert_eq!(dead[3].5, "empty message");
    assert_eq!(dead[2].5, "missing or null value for NOT NULL column 'ts'");

    // fail: the run stops and names the first bad record's offset.
    let r = start(
        &format!(
            "{ddl}, 'bad.records' = 'fail'); CREATE MATERIALIZED VIEW v AS SELECT * FROM downloads; \
             CREATE SINK out FROM v WITH (connector = 'collect');"
        ),
        settings(&b),
        true,
    );
    let e = r.handle.await.unwrap().unwrap_err().to_string();
    assert!(
        e.contains(&format!("topic {topic} partition 0 offset 1")),
        "{e}"
    );
}

/// A record without its event time is a bad record: the WATERMARK column is NOT NULL even
/// when the DDL does not say so, so a message that lacks it (or has it null) goes to
/// `<topic>.dlq` with the reason, and no view counts it as late. (Before, such records were
/// accepted and every view called them late rows.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_record_without_event_time_goes_to_the_dead_letter_topic() {
    let Some(b) = bootstrap() else { return };
    let _g = broker_lock().read().await;
    let topic = unique("no-ts");
    create_topic(&b, &topic, 1).await;
    let p = producer(&b);
    let records = [
        r#"{"ts": 1714521600000, "region": "EU", "status": "success", "speed_mbps": 1.5}"#,
        r#"{"region": "EU", "status": "success", "speed_mbps": 2.5}"#,
        r#"{"ts": null, "region": "US", "status": "failed", "speed_mbps": 3.5}"#,
        r#"{"ts": 1714521611000, "region": "US", "status": "failed", "speed_mbps": 4.5}"#,
    ];
    for r in &records {
        send(&p, &topic, 0, None, r.as_bytes(), T0).await;
    }
    let run = start(
        &format!(
            "CREATE SOURCE downloads (ts TIMESTAMP, region TEXT, status TEXT, speed_mbps DOUBLE, \
               WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) \
             WITH (connector = 'kafka', topic = '{topic}', 'scan.bounded.mode' = 'latest-offset'); \
             CREATE MATERIALIZED VIEW per_10s AS SELECT window_start, count(*) AS n \
               FROM TUMBLE(downloads, ts, INTERVAL '10' SECOND) GROUP BY window_start, window_end; \
             CREATE SINK out FROM per_10s WITH (connector = 'collect');"
        ),
        settings(&b),
        true,
    );
    let catalog = run.catalog.clone();
    run.handle.await.unwrap().unwrap();
    assert_eq!(
        sorted(&run.out.rows("out")),
        vec![
            vec!["2024-05-01T00:00:00", "1"],
            vec!["2024-05-01T00:00:10", "1"]
        ]
    );
    let view = catalog.get("per_10s").expect("view").stats.snapshot();
    assert_eq!(
        view.late_rows, 0,
        "no row is late: the bad ones never got this far"
    );
    let source = catalog.get("downloads").expect("source").stats.snapshot();
    assert_eq!(source.bad_rows, 2);
    let dead: Vec<(String, String, String)> = read_topic_to_end(&b, &format!("{topic}.dlq"))
        .iter()
        .map(|m| {
            assert!(m.headers().is_some(), "a dead letter without headers");
            let header = |name: &str| header(m, name).unwrap_or_default();
            (
                payload_text(m),
                header("weir.offset"),
                header("weir.reason"),
            )
        })
        .collect();
    let reason = "missing or null value for NOT NULL column 'ts'".to_string();
    assert_eq!(
        dead,
        vec![
            (records[1].to_string(), "1".to_string(), reason.clone()),
            (records[2].to_string(), "2".to_string(), reason),
        ]
    );
}

/// The broker is stopped and started mid-stream: the view's rows are still exact (nothing
/// lost, nothing twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_broker_restart_mid_stream() {
    let Some(b) = bootstrap() else { return };
    let _g = broker_lock().write().await;
    let topic = unique("restart");
    create_topic(&b, &topic, 3).await;
    let evs = events(3, 8, 30, 11);
    let (first, second): (Vec<Ev>, Vec<Ev>) = evs.iter().cloned().partition(|e| e.ts < T0 + 40_000);
    let p = producer(&b);
    produce_all(&p, &topic, &first).await;
    let run = start(
        &format!(
            "CREATE SOURCE downloads ({DDL}, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) \
             WITH (connector = 'kafka', topic = '{topic}'); \
             CREATE MATERIALIZED VIEW health AS {WINDOW_SQL}; \
             CREATE SINK out FROM health WITH (connector = 'collect');"
        ),
        settings(&b),
        false,
    );
    // Let the first part be consumed (some windows close), then restart the broker.
    run.wait_rows("out", 3, 60).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/kafka.sh");
    // Seconds of stopping and starting a JVM: off the runtime's workers, which run the
    // pipeline (a blocked worker can hold a task no other worker steals).
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new("bash")
            .arg(script)
            .arg("restart")
            .status()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(status.success(), "kafka.sh restart failed");
    produce_all(&p, &topic, &second).await;
    produce_all(&p, &topic, &sentinels(3, T0 + 3_600_000)).await;
    let expected = batch_reference(&evs).await;
    run.wait_rows("out", expected.len(), 120).await;
    run.settled("health", "out", T0 + 80_000, 60).await;
    assert_eq!(sorted(&run.out.rows("out")), expected);
    run.stop().await.unwrap();
}

/// SASL/PLAIN: with the right credentials rows arrive; with a wrong password the source
/// fails with an authentication error instead of retrying forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sasl_plain() {
    let Some(b) = bootstrap() else { return };
    let sasl = std::env::var("WEIR_KAFKA_SASL_BOOTSTRAP").unwrap_or_else(|_| {
        panic!("WEIR_KAFKA_SASL_BOOTSTRAP is not set (scripts/kafka.sh start --sasl)")
    });
    let _g = broker_lock().read().await;
    let topic = unique("sasl");
    create_topic(&b, &topic, 1).await;
    let p = producer(&b);
    let e = Ev {
        partition: 0,
        ts: T0,
        region: "EU",
        status: "success",
        speed: 4.0,
    };
    produce_all(&p, &topic, &[e]).await;
    let sql = |password: &str| {
        format!(
            "CREATE SOURCE downloads ({DDL}) WITH (connector = 'kafka', topic = '{topic}', \
             'bootstrap.servers' = '{sasl}', 'scan.bounded.mode' = 'latest-offset', \
             'properties.security.protocol' = 'SASL_PLAINTEXT', \
             'properties.sasl.mechanism' = 'PLAIN', 'properties.sasl.username' = 'weir', \
             'properties.sasl.password' = '{password}'); \
             CREATE MATERIALIZED VIEW v AS SELECT region, speed_mbps FROM downloads; \
             CREATE SINK out FROM v WITH (connector = 'collect');"
        )
    };
    let r = start(&sql("weir-secret"), KafkaSettings::default(), true);
    r.handle.await.unwrap().unwrap();
    assert_eq!(sorted(&r.out.rows("out")), vec![vec!["EU", "4.0"]]);

    let r = start(&sql("wrong"), KafkaSettings::default(), true);
    let err = tokio::time::timeout(Duration::from_secs(60), r.handle)
        .await
        .expect("a wrong password must fail the source, not hang")
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(err.to_lowercase().contains("authentication"), "{err}");
}

/// A view routed back to Kafka: one JSON message per row, keyed by the key columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_round_trip() {
    let Some(b) = bootstrap() else { return };
    let _g = broker_lock().read().await;
    let input = unique("sink-in");
    let output = unique("sink-out");
    create_topic(&b, &input, 2).await;
    create_topic(&b, &output, 1).await;
    let evs = events(2, 3, 20, 3);
    let p = producer(&b);
    produce_all(&p, &input, &evs).await;
    let r = start(
        &format!(
            "CREATE SOURCE downloads ({DDL}, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) \
             WITH (connector = 'kafka', topic = '{input}', 'scan.bounded.mode' = 'latest-offset'); \
             CREATE MATERIALIZED VIEW health AS {WINDOW_SQL}; \
             CREATE SINK out FROM health WITH (connector = 'kafka', topic = '{output}', \
             key = 'region');"
        ),
        settings(&b),
        true,
    );
    r.handle.await.unwrap().unwrap();
    let expected = batch_reference(&evs).await;
    // Read the output topic back.
    let mut got = Vec::new();
    for m in read_topic_to_end(&b, &output) {
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let key: serde_json::Value = serde_json::from_slice(m.key().unwrap()).unwrap();
        assert_eq!(key["region"], v["region"]);
        got.push(v);
    }
    assert_eq!(got.len(), expected.len());
    // Compare through the same formatting: rebuild rows in the expected column order.
    let mut rows: Vec<Vec<String>> = got
        .iter()
        .map(|v| {
            vec![
                arrow_display(v["window_start"].as_str().unwrap()),
                arrow_display(v["window_end"].as_str().unwrap()),
                v["region"].as_str().unwrap().to_string(),
                v["downloads"].to_string(),
                v["failures"].to_string(),
                format!("{:?}", v["speed"].as_f64().unwrap()),
            ]
        })
        .collect();
    rows.sort();
    assert_eq!(rows, expected);
}

/// A timestamp the JSON format wrote (RFC 3339 in UTC, `2024-05-01T00:00:10.000Z`) as
/// Arrow displays a millisecond timestamp (`2024-05-01T00:00:10`), to compare with batch
/// answers.
fn arrow_display(rfc3339: &str) -> String {
    let t = chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap_or_else(|e| panic!("not RFC 3339: {rfc3339}: {e}"))
        .naive_utc();
    if t.and_utc().timestamp_subsec_millis() == 0 {
        t.format("%Y-%m-%dT%H:%M:%S").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%S%.3f").to_string()
    }
}

/// `latest` on partitions that already hold data: only new rows count, and a partition that
/// is caught up and silent goes idle (it does not hold the windows open forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_latest_with_a_caught_up_quiet_partition() {
    let Some(b) = bootstrap() else { return };
    let _g = broker_lock().read().await;
    let topic = unique("latest");
    create_topic(&b, &topic, 2).await;
    let p = producer(&b);
    // Old data on both partitions, before the source starts.
    produce_all(&p, &topic, &events(2, 2, 10, 5)).await;
    let run = start(
        &format!(
            "CREATE SOURCE downloads ({DDL}, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) \
             WITH (connector = 'kafka', topic = '{topic}', 'scan.startup.mode' = 'latest', \
             'idle.timeout' = '1s'); \
             CREATE MATERIALIZED VIEW health AS {WINDOW_SQL}; \
             CREATE SINK out FROM health WITH (connector = 'collect');"
        ),
        settings(&b),
        false,
    );
    // The consumer has taken its positions at the end of both partitions before anything
    // new is produced.
    run.wait_caught_up("downloads", 60).await;
    let new: Vec<Ev> = events(1, 3, 10, 9);
    produce_all(&p, &topic, &new).await;
    produce_all(&p, &topic, &sentinels(1, T0 + 3_600_000)).await;
    let expected = batch_reference(&new).await;
    run.wait_rows("out", expected.len(), 60).await;
    run.settled("health", "out", T0 + 30_000, 60).await;
    assert_eq!(sorted(&run.out.rows("out")), expected);
    run.stop().await.unwrap();
}

/// CSV both ways: CSV messages in (one bad line skipped), a view, CSV messages out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_csv_in_and_out() {
    let Some(b) = bootstrap() else { return };
    let _g = broker_lock().read().await;
    let input = unique("csv-in");
    let output = unique("csv-out");
    create_topic(&b, &input, 1).await;
    create_topic(&b, &output, 1).await;
    let p = producer(&b);
    for line in [
        "1714521600000|EU|success|1.5",
        "2024-05-01T00:00:01Z|US|failed|",
        "not a time|US|failed|1.0",
        "1714521602000|\"A|P\"|success|2.25",
    ] {
        send(&p, &input, 0, None, line.as_bytes(), T0).await;
    }
    let r = start(
        &format!(
            "CREATE SOURCE downloads ({DDL}) WITH (connector = 'kafka', topic = '{input}', \
             format = 'csv', 'csv.delimiter' = '|', 'bad.records' = 'skip', \
             'scan.bounded.mode' = 'latest-offset'); \
             CREATE MATERIALIZED VIEW v AS SELECT ts, region, speed_mbps * 2 AS double_speed \
             FROM downloads WHERE status IS NOT NULL; \
             CREATE SINK out FROM v WITH (connector = 'kafka', topic = '{output}', \
             format = 'csv');"
        ),
        settings(&b),
        true,
    );
    r.handle.await.unwrap().unwrap();
    let got: Vec<String> = read_topic_to_end(&b, &output)
        .iter()
        .map(|m| String::from_utf8(m.payload().unwrap().to_vec()).unwrap())
        .collect();
    assert_eq!(
        got,
        vec![
            "2024-05-01T00:00:00.000Z,EU,3.0",
            "2024-05-01T00:00:01.000Z,US,",
            "2024-05-01T00:00:02.000Z,A|P,4.5",
        ]
    );
}

/// `v` as a Confluent wire-format Avro message: magic byte 0, the schema id, the datum.
fn avro_wire(
    schema_id: u32,
    schema: &apache_avro::Schema,
    v: apache_avro::types::Value,
) -> Vec<u8> {
    #[allow(deprecated)]
    let datum = apache_avro::to_avro_datum(schema, v).unwrap();
    let mut out = vec![0u8];
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(&datum);
    out
}

/// Every message of `topic` to its end, in the Confluent wire format with the one schema
/// Weir registered for it (checked: magic byte 0, that schema's id), decoded with it.
fn read_avro_topic(
    b: &str,
    registry: &weir_tests::schema_registry::TestRegistry,
    topic: &str,
) -> Vec<apache_avro::types::Value> {
    let ids = registry.versions(&format!("{topic}-value"));
    assert_eq!(ids.len(), 1);
    let reader = apache_avro::Schema::parse_str(&registry.schema(ids[0]).unwrap()).unwrap();
    read_topic_to_end(b, topic)
        .iter()
        .map(|m| {
            let bytes = m.payload().unwrap_or(&[]);
            assert_eq!(bytes[0], 0);
            assert_eq!(u32::from_be_bytes(bytes[1..5].try_into().unwrap()), ids[0]);
            #[allow(deprecated)]
            apache_avro::from_avro_datum(&reader, &mut &bytes[5..], None).unwrap()
        })
        .collect()
}

/// Avro in the Confluent wire format: records written by apache-avro with a registered
/// schema are decoded; a foreign payload, an unknown schema id and a truncated datum go to
/// the dead-letter topic; the view goes back out as Avro with a schema Weir registers.
/// The schema registry is an in-process stand-in (see weir_tests::schema_registry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_avro_with_schema_registry() {
    use apache_avro::types::Value;
    let Some(b) = bootstrap() else { return };
    let _g = broker_lock().read().await;
    let registry = weir_tests::schema_registry::TestRegistry::start().unwrap();
    let input = unique("avro-in");
    let output = unique("avro-out");
    create_topic(&b, &input, 1).await;
    create_topic(&b, &output, 1).await;
    let writer_text = r#"{"type": "record", "name": "Download", "fields": [
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "region", "type": ["null", "string"], "default": null},
        {"name": "status", "type": "string"},
        {"name": "speed_mbps", "type": ["null", "float"], "default": null},
        {"name": "extra", "type": "int"}]}"#;
    let id = registry.register(&format!("{input}-value"), writer_text);
    let writer = apache_avro::Schema::parse_str(writer_text).unwrap();
    let encode = |ts: i64, region: Option<&str>, status: &str, speed: Option<f32>| {
        let v = Value::Record(vec![
            ("ts".into(), Value::TimestampMillis(ts)),
            (
                "region".into(),
                match region {
                    Some(r) => Value::Union(1, Box::new(Value::String(r.into()))),
                    None => Value::Union(0, Box::new(Value::Null)),
                },
            ),
            ("status".into(), Value::String(status.into())),
            (
                "speed_mbps".into(),
                match speed {
                    Some(s) => Value::Union(1, Box::new(Value::Float(s))),
                    None => Value::Union(0, Box::new(Value::Null)),
                },
            ),
            ("extra".into(), Value::Int(7)),
        ]);
        avro_wire(id, &writer, v)
    };
    let good1 = encode(T0, Some("EU"), "success", Some(1.5));
    let good2 = encode(T0 + 1000, None, "failed", None);
    let mut unknown_id = good1.clone();
    unknown_id[1..5].copy_from_slice(&999u32.to_be_bytes());
    let truncated = good1[..7].to_vec();
    let p = producer(&b);
    for payload in [
        good1,
        br#"{"ts": 1}"#.to_vec(),
        unknown_id,
        truncated,
        good2,
    ] {
        send(&p, &input, 0, None, &payload, T0).await;
    }
    let r = start(
        &format!(
            "CREATE SOURCE downloads ({DDL}) WITH (connector = 'kafka', topic = '{input}', \
             format = 'avro', 'schema.registry.url' = '{url}', \
             'scan.bounded.mode' = 'latest-offset'); \
             CREATE MATERIALIZED VIEW v AS SELECT ts, region, status, speed_mbps FROM downloads; \
             CREATE SINK out FROM v WITH (connector = 'kafka', topic = '{output}', \
             format = 'avro', 'schema.registry.url' = '{url}');",
            url = registry.url
        ),
        settings(&b),
        true,
    );
    r.handle.await.unwrap().unwrap();

    // What came out, decoded with the schema Weir registered.
    let rows = read_avro_topic(&b, &registry, &output);
    let read_topic = |topic: String| -> Vec<(Vec<u8>, Option<String>)> {
        read_topic_to_end(&b, &topic)
            .iter()
            .map(|m| {
                (
                    m.payload().unwrap_or(&[]).to_vec(),
                    header(m, "weir.reason"),
                )
            })
            .collect()
    };
    let field = |v: &Value, name: &str| match v {
        Value::Record(f) => f.iter().find(|(n, _)| n == name).unwrap().1.clone(),
        _ => panic!("not a record"),
    };
    assert_eq!(rows.len(), 2);
    assert_eq!(field(&rows[0], "ts"), Value::TimestampMillis(T0));
    assert_eq!(
        field(&rows[0], "region"),
        Value::Union(1, Box::new(Value::String("EU".into())))
    );
    assert_eq!(
        field(&rows[0], "speed_mbps"),
        Value::Union(1, Box::new(Value::Double(1.5)))
    );
    assert_eq!(field(&rows[1], "ts"), Value::TimestampMillis(T0 + 1000));
    assert_eq!(
        field(&rows[1], "region"),
        Value::Union(0, Box::new(Value::Null))
    );
    assert_eq!(
        field(&rows[1], "status"),
        Value::Union(1, Box::new(Value::String("failed".into())))
    );

    // The three bad records, with their reasons.
    let dead = read_topic(format!("{input}.dlq"));
    let reasons: Vec<String> = dead.iter().map(|(_, r)| r.clone().unwrap()).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons[0].contains("Confluent Avro wire format"),
        "{}",
        reasons[0]
    );
    assert!(
        reasons[1].contains("schema id 999 is not in the schema registry"),
        "{}",
        reasons[1]
    );
    assert!(
        reasons[2].contains("undecodable Avro datum"),
        "{}",
        reasons[2]
    );
}

/// Nested Avro: records inside records, an array of records and a map, declared as STRUCT,
/// ARRAY and MAP columns, decoded, and written back out as Avro with nested types in the
/// schema Weir registers; a record whose nested value has the wrong type goes to the
/// dead-letter topic with the path to it in the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_avro_nested_records() {
    use apache_avro::types::Value;
    let Some(b) = bootstrap() else { return };
    let _g = broker_lock().read().await;
    let registry = weir_tests::schema_registry::TestRegistry::start().unwrap();
    let input = unique("avro-nested-in");
    let output = unique("avro-nested-out");
    create_topic(&b, &input, 1).await;
    create_topic(&b, &output, 1).await;
    let writer_text = r#"{"type": "record", "name": "Order", "fields": [
        {"name": "id", "type": "string"},
        {"name": "customer", "type": {"type": "record", "name": "Customer", "fields": [
            {"name": "name", "type": "string"},
            {"name": "address", "type": ["null", {"type": "record", "name": "Address", "fields": [
                {"name": "city", "type": "string"}]}], "default": null}]}},
        {"name": "items", "type": {"type": "array", "items": {"type": "record", "name": "Item",
            "fields": [{"name": "sku", "type": "string"}, {"name": "qty", "type": "int"}]}}},
        {"name": "attrs", "type": {"type": "map", "values": "string"}}]}"#;
    let id = registry.register(&format!("{input}-value"), writer_text);
    let writer = apache_avro::Schema::parse_str(writer_text).unwrap();
    let record = |id_: &str, city: Option<&str>, items: &[(&str, i32)], attrs: &[(&str, &str)]| {
        let address = match city {
            Some(c) => Value::Union(
                1,
                Box::new(Value::Record(vec![(
                    "city".into(),
                    Value::String(c.into()),
                )])),
            ),
            None => Value::Union(0, Box::new(Value::Null)),
        };
        Value::Record(vec![
            ("id".into(), Value::String(id_.into())),
            (
                "customer".into(),
                Value::Record(vec![
                    ("name".into(), Value::String(format!("n-{id_}"))),
                    ("address".into(), address),
                ]),
            ),
            (
                "items".into(),
                Value::Array(
                    items
                        .iter()
                        .map(|(s, q)| {
                            Value::Record(vec![
                                ("sku".into(), Value::String((*s).into())),
                                ("qty".into(), Value::Int(*q)),
                            ])
                        })
                        .collect(),
                ),
            ),
            (
                "attrs".into(),
                Value::Map(
                    attrs
                        .iter()
                        .map(|(k, v)| (k.to_string(), Value::String((*v).into())))
                        .collect(),
                ),
            ),
        ])
    };
    // The second writer's qty is a string: declared INT, two levels down.
    let bad_text = writer_text.replace(
        r#"{"name": "qty", "type": "int"}"#,
        r#"{"name": "qty", "type": "string"}"#,
    );
    let bad_id = registry.register(&format!("{input}-value"), &bad_text);
    let bad_writer = apache_avro::Schema::parse_str(&bad_text).unwrap();
    let bad = Value::Record(vec![
        ("id".into(), Value::String("o3".into())),
        (
            "customer".into(),
            Value::Record(vec![
                ("name".into(), Value::String("x".into())),
                ("address".into(), Value::Union(0, Box::new(Value::Null))),
            ]),
        ),
        (
            "items".into(),
            Value::Array(vec![Value::Record(vec![
                ("sku".into(), Value::String("Z".into())),
                ("qty".into(), Value::String("many".into())),
            ])]),
        ),
        ("attrs".into(), Value::Map(Default::default())),
    ]);
    let p = producer(&b);
    for payload in [
        avro_wire(
            id,
            &writer,
            record(
                "o1",
                Some("Paris"),
                &[("A", 1), ("B", 2)],
                &[("k", "v"), ("c", "web")],
            ),
        ),
        avro_wire(bad_id, &bad_writer, bad),
        avro_wire(id, &writer, record("o2", None, &[], &[])),
    ] {
        send(&p, &input, 0, None, &payload, T0).await;
    }
    let r = start(
        &format!(
            "CREATE SOURCE orders (id TEXT NOT NULL, \
               customer STRUCT<name TEXT, address STRUCT<city TEXT>>, \
               items ARRAY<STRUCT<sku TEXT, qty INT>>, attrs MAP<TEXT, TEXT>) \
             WITH (connector = 'kafka', topic = '{input}', format = 'avro', \
               'schema.registry.url' = '{url}', 'scan.bounded.mode' = 'latest-offset'); \
             CREATE MATERIALIZED VIEW v AS SELECT id, customer, items, attrs, \
               customer.address.city AS city FROM orders; \
             CREATE SINK out FROM v WITH (connector = 'kafka', topic = '{output}', \
               format = 'avro', 'schema.registry.url' = '{url}');",
            url = registry.url
        ),
        settings(&b),
        true,
    );
    r.handle.await.unwrap().unwrap();

    let out: Vec<serde_json::Value> = read_avro_topic(&b, &registry, &output)
        .into_iter()
        .map(|v| serde_json::Value::try_from(v).unwrap())
        .collect();
    assert_eq!(
        out,
        vec![
            serde_json::json!({
                "id": "o1",
                "customer": {"name": "n-o1", "address": {"city": "Paris"}},
                "items": [{"sku": "A", "qty": 1}, {"sku": "B", "qty": 2}],
                "attrs": {"c": "web", "k": "v"},
                "city": "Paris"
            }),
            serde_json::json!({
                "id": "o2",
                "customer": {"name": "n-o2", "address": null},
                "items": [],
                "attrs": {},
                "city": null
            }),
        ]
    );
    let reasons: Vec<String> = read_topic_to_end(&b, &format!("{input}.dlq"))
        .iter()
        .map(|m| header(m, "weir.reason").unwrap())
        .collect();
    assert_eq!(
        reasons,
        vec!["column 'items': item 1: field 'qty': cannot convert Utf8 to Int32".to_string()]
    );
}

/// A source without WATERMARK: the Kafka message timestamp is event time, per partition, so
/// windows over a `timestamp` metadata column close as later messages arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_timestamp_is_event_time_without_watermark() {
    let Some(b) = bootstrap() else { return };
    let _g = broker_lock().read().await;
    let topic = unique("kts");
    create_topic(&b, &topic, 2).await;
    let p = producer(&b);
    // Payload timestamps are deliberately wrong: the message timestamp is what counts.
    let mut evs = Vec::new();
    for i in 0..40i64 {
        let e = Ev {
            partition: (i % 2) as i32,
            ts: T0 + i * 500,
            region: REGIONS[(i % 3) as usize],
            status: if i % 4 == 0 { "failed" } else { "success" },
            speed: i as f64,
        };
        let payload = serde_json::json!({"ts": 0, "region": e.region, "status": e.status,
            "speed_mbps": e.speed})
        .to_string();
        send(&p, &topic, e.partition, None, payload.as_bytes(), e.ts).await;
        evs.push(e);
    }
    let run = start(
        &format!(
            "CREATE SOURCE downloads (region TEXT, status TEXT, speed_mbps DOUBLE, \
             ts TIMESTAMP METADATA FROM 'timestamp') \
             WITH (connector = 'kafka', topic = '{topic}'); \
             CREATE MATERIALIZED VIEW health AS {WINDOW_SQL}; \
             CREATE SINK out FROM health WITH (connector = 'collect');"
        ),
        settings(&b),
        false,
    );
    for part in 0..2 {
        send(
            &p,
            &topic,
            part,
            None,
            br#"{"region": "ZZ"}"#,
            T0 + 3_600_000,
        )
        .await;
    }
    let expected = batch_reference(&evs).await;
    run.wait_rows("out", expected.len(), 60).await;
    run.settled("health", "out", T0 + 20_000, 60).await;
    assert_eq!(sorted(&run.out.rows("out")), expected);
    run.stop().await.unwrap();
}

// ---- The transactional sink (checkpoints on): exactly once across the commit gap ----

/// The payloads of `topic` (partition 0) that a `read_committed` consumer sees, in order.
/// Waits (up to 60 s) until no transaction holds the last stable offset back from the high
/// watermark, then reads to the end.
pub(crate) fn committed_payloads(b: &str, topic: &str) -> Vec<String> {
    let consumer = |isolation: &str| -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", b)
            .set("group.id", unique("eos-reader"))
            .set("isolation.level", isolation)
            .set("enable.partition.eof", "true")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap()
    };
    let committed = consumer("read_committed");
    let (_, high) = consumer("read_uncommitted")
        .fetch_watermarks(topic, 0, Duration::from_secs(30))
        .unwrap();
    let t = Instant::now();
    loop {
        let (_, stable) = committed
            .fetch_watermarks(topic, 0, Duration::from_secs(30))
            .unwrap();
        if stable >= high {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{topic}: a transaction stays open (stable offset {stable}, high watermark {high})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    committed.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let t = Instant::now();
    loop {
        match committed.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                out.push(String::from_utf8(m.payload().unwrap_or(&[]).to_vec()).unwrap())
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return out,
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => assert!(
                t.elapsed() < Duration::from_secs(60),
                "{topic}: no end of partition after 60 s"
            ),
        }
    }
}

/// A checkpointed pipeline's Kafka sink, built through the registry as `CREATE SINK` does.
struct EosCase {
    b: String,
    topic: String,
    progress: String,
    txn_id: String,
    dir: tempfile::TempDir,
}

impl EosCase {
    async fn new(b: &str, prefix: &str) -> Self {
        let topic = unique(&format!("{prefix}-out"));
        create_topic(b, &topic, 1).await;
        EosCase {
            b: b.to_string(),
            topic,
            progress: unique(&format!("{prefix}-progress")),
            txn_id: unique(&format!("{prefix}-txn")),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn sink(&self) -> Box<dyn Sink> {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        self.sink_of(schema, &[], false)
    }

    /// The sink of a view with `schema` and `key`, an updating view when `changelog`.
    fn sink_of(&self, schema: SchemaRef, key: &[&str], changelog: bool) -> Box<dyn Sink> {
        let options = weir_engine::options::Options::new([
            ("topic".to_string(), self.topic.clone()),
            ("format".to_string(), "json".to_string()),
            ("transactional.id".to_string(), self.txn_id.clone()),
            ("progress.topic".to_string(), self.progress.clone()),
        ]);
        weir_connectors::registry_with(settings(&self.b))
            .sink("kafka")
            .unwrap()
            .create(SinkSpec {
                name: "eos".to_string(),
                view: "v".to_string(),
                schema,
                key_columns: key.iter().map(|k| k.to_string()).collect(),
                never_null: vec![],
                changelog,
                options,
                data_dir: self.dir.path().to_path_buf(),
                stats: Arc::new(Stats::default()),
                checkpointed: true,
            })
            .unwrap()
    }

    fn spool_dir(&self) -> std::path::PathBuf {
        weir_connectors::kafka::sink::spool_dir(self.dir.path(), "eos")
    }

    fn spools(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.spool_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.ends_with(".spool"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    async fn committed(&self) -> Vec<String> {
        let (b, topic) = (self.b.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || committed_payloads(&b, &topic))
            .await
            .unwrap()
    }
}

/// Rows `n` for each number in `ns`, as the view would emit them.
fn n_rows(ns: std::ops::RangeInclusive<i64>) -> RecordBatch {
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)])),
        vec![Arc::new(datafusion::arrow::array::Int64Array::from(
            ns.collect::<Vec<_>>(),
        ))],
    )
    .unwrap()
}

fn n_payloads(ns: std::ops::RangeInclusive<i64>) -> Vec<String> {
    ns.map(|n| format!(r#"{{"n":{n}}}"#)).collect()
}

async fn write(sink: &mut Box<dyn Sink>, ns: std::ops::RangeInclusive<i64>) {
    sink.write(n_rows(ns), weir_engine::connector::RowIds::default())
        .await
        .unwrap();
}

/// Epoch 1 committed, epoch 2 pre-committed (its checkpoint is durable) but the process
/// dies before Kafka commits it: the restart restores checkpoint 2, so epoch 2's rows are
/// not recomputed, and the sink must publish them from its spool, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_crash_between_precommit_and_commit_loses_nothing() {
    let Some(b) = bootstrap() else { return };
    let _g = broker_lock().read().await;
    let case = EosCase::new(&b, "eos-gap").await;
    let mut a = case.sink();
    a.recover(None).await.unwrap();
    write(&mut a, 1..=3).await;
    a.precommit(1).await.unwrap();
    a.commit(1).await.unwrap();
    assert!(case.spools().is_empty(), "commit(1) deletes its spool");
    write(&mut a, 4..=5).await;
    write(&mut a, 6..=6).await;
    let v2 = a.precommit(2).await.unwrap();
    assert_eq!(v2["epoch"], 2);
    assert_eq!(v2["transactional_id"], case.txn_id.as_str());
    let spool = case.spool_dir().join("epoch-2.spool");
    assert_eq!(v2["spool"], spool.display().to_string().as_str());
    assert!(spool.exists());
    drop(a); // the crash: no commit, no close

    let mut b2 = case.sink();
    b2.recover(Some((2, v2))).await.unwrap();
    assert!(case.spools().is_empty(), "{:?}", case.spools());
    assert_eq!(case.committed().await, n_payloads(1..=6));
    // The new incarnation goes on with the next epoch.
    write(&mut b2, 7..=8).await;
    b2.precommit(3).await.unwrap();
    b2.commit(3).await.unwrap();
    b2.close().await.unwrap();
    assert_eq!(case.committed().await, n_payloads(1..=8));
}

/// An updating view's changes pre-committed but not committed when the process dies: the
/// restart publishes them from the spool, deletes as tombstones (no value, not an empty
/// one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_upsert_sink_publishes_tombstones_again_after_a_crash() {
    use weir_engine::changelog::{DELETE, INSERT, with_op};
    let Some(b) = bootstrap() else { return };
    let _g = broker_lock().read().await;
    let case = EosCase::new(&b, "eos-upsert").await;
    let schema = Arc::new(Schema::new(vec![
        Field::new("site", DataType::Utf8, false),
        Field::new("n", DataType::Int64, false),
    ]));
    let changes = |rows: &[(&str, i64, i8)]| {
        RecordBatch::try_new(
            with_op(&schema),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))) as ArrayRef,
                Arc::new(datafusion::arrow::array::Int64Array::from_iter_values(
                    rows.iter().map(|r| r.1),
                )),
                Arc::new(datafusion::arrow::array::Int8Array::from_iter_values(
                    rows.iter().map(|r| r.2),
                )),
            ],
        )
        .unwrap()
    };
    let mut a = case.sink_of(schema.clone(), &["site"], true);
    a.recover(None).await.unwrap();
    a.write(
        changes(&[("oslo", 1, INSERT), ("rome", 1, INSERT)]),
        Default::default(),
    )
    .await
    .unwrap();
    a.precommit(1).await.unwrap();
    a.commit(1).await.unwrap();
    a.write(
        changes(&[
            ("oslo", 1, DELETE),
            ("rome", 1, DELETE),
            ("rome", 2, INSERT),
        ]),
        Default::default(),
    )
    .await
    .unwrap();
    let cp = a.precommit(2).await.unwrap();
    drop(a); // the crash: no commit, no close

    let mut again = case.sink_of(schema, &["site"], true);
    again.recover(Some((2, cp))).await.unwrap();
    again.close().await.unwrap();
    let (b2, topic) = (b.clone(), case.topic.clone());
    let got: Vec<(String, Option<String>)> =
        tokio::task::spawn_blocking(move || read_topic_to_end(&b2, &topic))
            .await
            .unwrap()
            .iter()
            .map(|m| {
                let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
                (text(m.key().unwrap()), m.payload().map(text))
            })
            .collect();
    let msg = |site: &str, n: Option<i64>| {
        (
            format!(r#"{{"site":"{site}"}}"#),
            n.map(|n| format!(r#"{{"site":"{site}","n":{n}}}"#)),
        )
    };
    assert_eq!(
        got,
        vec![
            msg("oslo", Some(1)),
            msg("rome", Some(1)),
            msg("oslo", None),
            msg("rome", Some(2)),
        ]
    );
}

/// Kafka committed epoch 2 but the process died before it deleted the spool: the recovery
/// finds epoch 2 in the progress topic and must not publish the spool again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_crash_after_kafka_committed_writes_nothing_twice() {
    let Some(b) = bootstrap() else { return };
    let _g = broker_lock().read().await;
    let case = EosCase::new(&b, "eos-done").await;
    let mut a = case.sink();
    a.recover(None).await.unwrap();
    write(&mut a, 1..=3).await;
    a.precommit(1).await.unwrap();
    a.commit(1).await.unwrap();
    write(&mut a, 4..=6).await;
    let v2 = a.precommit(2).await.unwrap();
    let spool = case.spool_dir().join("epoch-2.spool");
    let kept = case.dir.path().join("kept.spool");
    std::fs::copy(&spool, &kept).unwrap();
    a.commit(2).await.unwrap();
    drop(a);
    // As if the crash came between Kafka's commit and the spool's deletion.
    std::fs::rename(&kept, &spool).unwrap();

    let mut b2 = case.sink();
    b2.recover(Some((2, v2))).await.unwrap();
    assert!(case.spools().is_empty(), "{:?}", case.spools());
    b2.close().await.unwrap();
    assert_eq!(case.committed().await, n_payloads(1..=6));
}

/// Rows written after the last pre-commit belong to no checkpoint: the crash's fencing
/// aborts them, and only the engine's replay (here: writing them again) publishes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_rows_after_the_last_precommit_are_discarded() {
    let Some(b) = bootstrap() else { return };
    let _g = broker_lock().read().await;
    let case = EosCase::new(&b, "eos-after").await;
    let mut a = case.sink();
    a.recover(None).await.unwrap();
    write(&mut a, 1..=3).await;
    a.precommit(1).await.unwrap();
    a.commit(1).await.unwrap();
    write(&mut a, 4..=6).await;
    let v2 = a.precommit(2).await.unwrap();
    write(&mut a, 100..=102).await; // never pre-committed
    a.flush().await.unwrap();
    drop(a);

    let mut b2 = case.sink();
    b2.recover(Some((2, v2))).await.unwrap();
    assert_eq!(case.committed().await, n_payloads(1..=6));
    // The replay from checkpoint 2 computes those rows again.
    write(&mut b2, 100..=102).await;
    b2.precommit(3).await.unwrap();
    b2.commit(3).await.unwrap();
    b2.close().await.unwrap();
    let mut want = n_payloads(1..=6);
    want.extend(n_payloads(100..=102));
    assert_eq!(case.committed().await, want);
}

/// A checkpoint whose manifest could not be written gets no commit: the next pre-commit
/// covers both epochs in one transaction, and recovering the later checkpoint publishes
/// both spools; recovering the earlier complete checkpoint instead publishes neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_uncommitted_epochs_accumulate_in_one_transaction() {
    let Some(b) = bootstrap() else { return };
    let _g = broker_lock().read().await;
    let case = EosCase::new(&b, "eos-two").await;
    let mut a = case.sink();
    a.recover(None).await.unwrap();
    write(&mut a, 1..=2).await;
    a.precommit(1).await.unwrap(); // its checkpoint fails: no commit(1)
    write(&mut a, 3..=4).await;
    let v2 = a.precommit(2).await.unwrap();
    assert_eq!(case.spools(), vec!["epoch-1.spool", "epoch-2.spool"]);
    drop(a);
    let mut b2 = case.sink();
    b2.recover(Some((2, v2))).await.unwrap();
    b2.close().await.unwrap();
    assert_eq!(case.committed().await, n_payloads(1..=4));

    let case = EosCase::new(&b, "eos-older").await;
    let mut a = case.sink();
    a.recover(None).await.unwrap();
    write(&mut a, 1..=2).await;
    let v1 = a.precommit(1).await.unwrap();
    a.commit(1).await.unwrap();
    write(&mut a, 3..=4).await;
    a.precommit(2).await.unwrap(); // its manifest never lands
    write(&mut a, 5..=6).await;
    drop(a);
    let mut b2 = case.sink();
    b2.recover(Some((1, v1))).await.unwrap();
    assert!(case.spools().is_empty(), "{:?}", case.spools());
    b2.close().await.unwrap();
    assert_eq!(case.committed().await, n_payloads(1..=2));
}

/// A second instance with the same transactional id fences the first, whose next
/// checkpoint fails with an error that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_fenced_instance_fails_clearly() {
    let Some(b) = bootstrap() else { return };
    let _g = broker_lock().read().await;
    let case = EosCase::new(&b, "eos-fenced").await;
    let mut a = case.sink();
    a.recover(None).await.unwrap();
    write(&mut a, 1..=2).await;
    let mut b2 = case.sink();
    b2.recover(None).await.unwrap();
    // The fencing shows at the next write or, if librdkafka has not heard yet, at the
    // pre-commit; either way with a clear error.
    let err = match a
        .write(n_rows(3..=3), weir_engine::connector::RowIds::default())
        .await
    {
        Err(e) => e.to_string(),
        Ok(()) => tokio::time::timeout(Duration::from_secs(60), a.precommit(1))
            .await
            .expect("a fenced producer must fail, not hang")
            .unwrap_err()
            .to_string(),
    };
    assert!(err.contains("fenced"), "{err}");
    assert!(err.contains(&case.txn_id), "{err}");
    drop(a);
    write(&mut b2, 10..=11).await;
    b2.precommit(1).await.unwrap();
    b2.commit(1).await.unwrap();
    b2.close().await.unwrap();
    assert_eq!(case.committed().await, n_payloads(10..=11));
}

// ---- Nexmark: the generator's tables through Kafka ----

/// The Nexmark generator's bids (20,000 events) written as JSON lines, the way `weir-bench
/// nexmark-gen` writes them and `kafka-load` loads them (line `j` to partition `j % 3`),
/// then read back by a Kafka source declared with the contract's columns: exactly the
/// generator's rows, value for value, `extra` and `url` included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_nexmark_bids_round_trip() {
    use weir_connectors::generator::nexmark::{Table, columns_sql, write_json_lines};
    let Some(b) = bootstrap() else { return };
    let _g = broker_lock().read().await;
    // q0 over a bid source declared with the contract's columns and `with` options.
    let q0 = |with: String| {
        let b = b.clone();
        async move {
            let sql = format!(
                "CREATE SOURCE bid ({}, WATERMARK FOR date_time AS date_time - INTERVAL '4' \
                 SECOND) WITH ({with}); CREATE MATERIALIZED VIEW q0 AS SELECT * FROM bid; \
                 CREATE SINK out FROM q0 WITH (connector = 'collect');",
                columns_sql(Table::Bid)
            );
            let run = start(&sql, settings(&b), true);
            let out = run.out.clone();
            run.handle.await.unwrap().unwrap();
            out.rows("out")
        }
    };
    let expected_batches = q0("connector = 'generator', kind = 'nexmark', \
         'nexmark.table' = 'bid', 'nexmark.events' = '20000', \
         'nexmark.event.rate' = '100000', seed = '3'"
        .to_string())
    .await;
    let expected = sorted(&expected_batches);
    assert_eq!(expected.len(), 18_400);

    let topic = unique("nexmark-bid");
    create_topic(&b, &topic, 3).await;
    let p = producer(&b);
    let mut lines = Vec::new();
    for batch in &expected_batches {
        write_json_lines(batch, &mut lines).unwrap();
    }
    let futs: Vec<_> = lines
        .split(|c| *c == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(j, line)| {
            let rec: FutureRecord<'_, str, [u8]> = FutureRecord::to(&topic)
                .partition((j % 3) as i32)
                .payload(line);
            let f = p.send_result(rec).map_err(|(e, _)| e).unwrap();
            async move { f.await.unwrap().unwrap() }
        })
        .collect();
    assert_eq!(futs.len(), 18_400);
    futures::future::join_all(futs).await;

    let got = q0(format!(
        "connector = 'kafka', topic = '{topic}', 'scan.bounded.mode' = 'latest-offset', \
         'bad.records' = 'fail'"
    ))
    .await;
    assert_eq!(sorted(&got), expected);
}

/// A message of an upsert topic: its key and its value (`None`: a tombstone), as JSON.
type Upsert = (serde_json::Value, Option<serde_json::Value>);

/// What a step changed, as the messages an upsert topic gets for it: per changed key, the
/// new row, or a tombstone when the row went.
fn upserts<R: Clone>(
    changed: Vec<(Option<R>, Option<R>)>,
    key: impl Fn(&R) -> serde_json::Value,
    value: impl Fn(&R) -> serde_json::Value,
) -> Vec<Upsert> {
    changed
        .into_iter()
        .map(|(old, new)| {
            let row = new.as_ref().or(old.as_ref()).unwrap();
            (key(row), new.as_ref().map(&value))
        })
        .collect()
}

/// JSON text with a float written the shortest way that reads back as it (as the sink
/// writes it), parsed. Both sides go through the same parser, whose float parsing is not
/// exact to the last bit.
fn json_with_float(text: &str, x: Option<f64>) -> serde_json::Value {
    let x = x.map_or("null".to_string(), |x| format!("{x:?}"));
    serde_json::from_str(&text.replace("{x}", &x)).unwrap()
}

fn site_json(r: &SiteRow) -> serde_json::Value {
    let text = format!(r#"{{"site":"{}","n":{},"hottest":{{x}}}}"#, r.0, r.1);
    json_with_float(&text, r.2)
}

fn total_json(r: &TotalRow) -> serde_json::Value {
    json_with_float(&format!(r#"{{"n":{},"hottest":{{x}}}}"#, r.0), r.1)
}

/// Each committed message of `topic` as JSON, with its partition.
fn upsert_messages(b: &str, topic: &str) -> Vec<(i32, Upsert)> {
    let json = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap();
    read_topic_to_end(b, topic)
        .iter()
        .map(|m| {
            (
                m.partition(),
                (json(m.key().unwrap()), m.payload().map(json)),
            )
        })
        .collect()
}

/// An updating view into Kafka, in transactions: each row's messages (the topic has three
/// partitions: a key's messages are all in one, in order) are exactly its changes step by
/// step, an update one message with the new row and a delete a tombstone; compacting the
/// topic (the last message per key, tombstones removing the key) gives the view's rows. A
/// global aggregate's messages carry the key `{}` and all go to partition 0. Changes after
/// the last checkpoint, aborted at close, are not read. A key other than the view's is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_upsert_topic_from_an_updating_view() {
    let Some(b) = bootstrap() else { return };
    let _g = broker_lock().read().await;
    let (quiet_topic, total_topic) = (unique("upsert-quiet"), unique("upsert-total"));
    create_topic(&b, &quiet_topic, 3).await;
    create_topic(&b, &total_topic, 3).await;
    let progress = unique("upsert-progress");
    let dir = tempfile::tempdir().unwrap();
    let mut p = weir_tests::slt::test_pipeline_config(
        dir.path(),
        EngineConfig {
            checkpoints: true,
            ..EngineConfig::default()
        },
    );
    p.execute(&format!(
        "{SOURCE}
         CREATE MATERIALIZED VIEW quiet AS {QUIET};
         CREATE MATERIALIZED VIEW total AS {TOTAL};"
    ))
    .await
    .unwrap();
    let e = p
        .execute(&format!(
            "CREATE SINK bad FROM quiet WITH (connector = 'kafka', topic = '{quiet_topic}', \
               'bootstrap.servers' = '{b}', key = 'site, n');"
        ))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "statement 1 (line 1, column 1): sink 'bad': option 'key' = 'site, n' does not match \
         updating view 'quiet': its messages are keyed by the view's key (site), so that a \
         compacted topic keeps each row's last value; leave 'key' out or name exactly those \
         columns"
    );
    let sink = |name: &str, view: &str, topic: &str| {
        format!(
            "CREATE SINK {name} FROM {view} WITH (connector = 'kafka', topic = '{topic}', \
               'bootstrap.servers' = '{b}', 'progress.topic' = '{progress}', \
               'transactional.id' = '{}');",
            unique(name)
        )
    };
    p.execute(&format!(
        "{}\n{}",
        sink("quiet_k", "quiet", &quiet_topic),
        sink("total_k", "total", &total_topic)
    ))
    .await
    .unwrap();
    let mut sinks: HashMap<String, Box<dyn Sink>> = p
        .take_new_sinks()
        .into_iter()
        .map(|s| (s.view, s.sink))
        .collect();
    for s in sinks.values_mut() {
        s.recover(None).await.unwrap();
    }

    let mut readings = Readings::new(&p);
    let (mut quiet_before, mut total_before) = (Vec::new(), Vec::new());
    let (mut quiet_expected, mut total_expected) = (Vec::new(), Vec::new());
    for epoch in 1..=6u64 {
        for o in readings.push(&mut p).await {
            let sink = sinks.get_mut(&o.view).unwrap();
            sink.write(o.batch, o.ids).await.unwrap();
        }
        for s in sinks.values_mut() {
            s.precommit(epoch).await.unwrap();
            s.commit(epoch).await.unwrap();
        }
        let quiet = readings.quiet().await;
        quiet_expected.extend(upserts(
            changed(&quiet_before, &quiet, site),
            |r| serde_json::json!({"site": r.0}),
            site_json,
        ));
        quiet_before = quiet;
        let total = total_rows(&readings.batch_answer(TOTAL).await);
        total_expected.extend(upserts(
            changed(&total_before, &total, |_| ()),
            |_| serde_json::json!({}),
            total_json,
        ));
        total_before = total;
    }
    // One more step, never checkpointed: its transaction is aborted at close.
    for o in readings.push(&mut p).await {
        let sink = sinks.get_mut(&o.view).unwrap();
        sink.write(o.batch, o.ids).await.unwrap();
    }
    for s in sinks.values_mut() {
        s.close().await.unwrap();
    }

    let (b2, topic) = (b.clone(), quiet_topic.clone());
    let got = tokio::task::spawn_blocking(move || upsert_messages(&b2, &topic))
        .await
        .unwrap();
    // Per key: its messages, all in one partition, in order.
    let mut by_key: BTreeMap<String, (i32, Vec<Upsert>)> = BTreeMap::new();
    for (partition, m) in got {
        let e = by_key
            .entry(m.0.to_string())
            .or_insert_with(|| (partition, Vec::new()));
        assert_eq!(e.0, partition, "key {} in two partitions", m.0);
        e.1.push(m);
    }
    let mut want: BTreeMap<String, Vec<Upsert>> = BTreeMap::new();
    for m in &quiet_expected {
        want.entry(m.0.to_string()).or_default().push(m.clone());
    }
    let got_keys: BTreeMap<String, Vec<Upsert>> = by_key
        .iter()
        .map(|(k, (_, ms))| (k.clone(), ms.clone()))
        .collect();
    assert_eq!(got_keys, want);
    let tombstones = quiet_expected.iter().filter(|m| m.1.is_none()).count();
    assert!(tombstones > 5, "{tombstones} tombstones");
    assert!(
        by_key
            .values()
            .map(|(p, _)| p)
            .collect::<BTreeSet<_>>()
            .len()
            > 1
    );
    // Compacted: the view's rows.
    let compacted: Vec<serde_json::Value> = got_keys
        .values()
        .filter_map(|ms| ms.last().and_then(|m| m.1.clone()))
        .collect();
    let rows: Vec<serde_json::Value> = quiet_before.iter().map(site_json).collect();
    assert_eq!(compacted, rows);

    let (b2, topic) = (b.clone(), total_topic.clone());
    let got = tokio::task::spawn_blocking(move || upsert_messages(&b2, &topic))
        .await
        .unwrap();
    assert!(got.iter().all(|(partition, _)| *partition == 0), "{got:?}");
    let got: Vec<Upsert> = got.into_iter().map(|(_, m)| m).collect();
    // Three values (12, 24, 36 readings), then the tombstone at 48.
    assert_eq!(got.len(), 4);
    assert_eq!(got, total_expected);
    assert_eq!(got.last().unwrap().1, None);
}
