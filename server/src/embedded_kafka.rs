//! The embedded Kafka-protocol broker: with no `[kafka] bootstrap.servers` configured,
//! `weir run` starts librdkafka's mock cluster in process and fills topics from the built-in
//! generators through a real producer, so Kafka sources and sinks run the real Kafka path
//! (librdkafka clients speaking the Kafka protocol over TCP) with nothing to install.
//!
//! Each feed (`[[kafka.embedded.feed]]`) is a task that builds a generator source through
//! the connector registry, encodes every row as one JSON message with the `json` format's
//! encoder (the one the Kafka sink uses) and produces it with a `ThreadedProducer`. The
//! message key is the row's `region` (downloads) or `symbol` (ticks); each key is pinned to
//! a partition the first time it appears, round robin, so every partition gets data and a
//! key's rows stay in order in one partition. The message timestamp is the row's event
//! time.
//!
//! The mock broker keeps everything in memory and trims each partition to about its newest
//! 5 MB, so it runs indefinitely; it forgets everything when the process stops.

use crate::config::EmbeddedSection;
use anyhow::{Context, Result, bail};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::TimestampMillisecondType;
use parking_lot::Mutex;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, DeliveryResult, ProducerContext, ThreadedProducer,
};
use rdkafka::types::RDKafkaErrorCode;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use weir_connectors::format::{RecordChunk, encoder_for};
use weir_engine::connector::{BatchLimits, Source, SourceEvent, SourceSpec};
use weir_engine::options::Options;
use weir_engine::sql::WeirStatement;

/// The columns each generator kind produces, as declared in `queries/01_sources.sql`; a
/// feed writes all of them, so a source may declare any subset.
const DOWNLOADS_COLUMNS: &str = "event_id TEXT NOT NULL, ts TIMESTAMP NOT NULL, \
    content_id TEXT, content_type TEXT, region TEXT, device_type TEXT, status TEXT, \
    duration_seconds DOUBLE, speed_mbps DOUBLE, error_code TEXT";
const TICKS_COLUMNS: &str =
    "symbol TEXT NOT NULL, price DOUBLE, volume BIGINT, ts TIMESTAMP NOT NULL";

/// The generator columns of a kind, and the column its messages are keyed by.
fn kind_columns(kind: &str) -> Option<(&'static str, &'static str)> {
    match kind {
        "downloads" => Some((DOWNLOADS_COLUMNS, "region")),
        "ticks" => Some((TICKS_COLUMNS, "symbol")),
        _ => None,
    }
}

/// How the SQL files use Kafka, read before the pipeline is built (files that do not parse
/// are skipped here; loading them reports the error).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct KafkaUsage {
    /// Some Kafka source or sink has no `bootstrap.servers` of its own, so it needs the
    /// configured cluster or the embedded broker.
    pub default_cluster: bool,
    /// Topics of those Kafka sinks (created up front on the embedded broker).
    pub sink_topics: BTreeSet<String>,
}

pub fn kafka_usage(files: &[PathBuf]) -> KafkaUsage {
    let mut usage = KafkaUsage::default();
    for f in files {
        let Ok(sql) = std::fs::read_to_string(f) else {
            continue;
        };
        let Ok(statements) = weir_engine::sql::parse_script(&sql) else {
            continue;
        };
        for s in statements {
            let (options, sink) = match &s.statement {
                WeirStatement::CreateSource(c) => (&c.options, false),
                WeirStatement::CreateSink(c) => (&c.options, true),
                _ => continue,
            };
            // An http source keeps its events in a Kafka topic (it creates it).
            let is_kafka = options.get("connector").is_some_and(|c| {
                c.trim().eq_ignore_ascii_case("kafka")
                    || (!sink && c.trim().eq_ignore_ascii_case("http"))
            });
            if !is_kafka || options.get("bootstrap.servers").is_some() {
                continue;
            }
            usage.default_cluster = true;
            if sink
                && let Some(t) = options.get("topic").map(str::trim)
                && !t.is_empty()
            {
                usage.sink_topics.insert(t.to_string());
            }
        }
    }
    usage
}

/// The running broker and its feeds. Keep it until the pipeline has stopped (sinks flush
/// to it at shutdown), then [`EmbeddedKafka::stop`].
pub struct EmbeddedKafka {
    bootstrap: String,
    summary: String,
    feeds: Vec<JoinHandle<()>>,
    mock: MockCluster<'static, DefaultProducerContext>,
}

/// A feed ready to run: its generator source and settings.
struct Feed {
    topic: String,
    source: Box<dyn Source>,
    schema: datafusion::arrow::datatypes::SchemaRef,
    key_column: &'static str,
}

impl EmbeddedKafka {
    /// Start the broker, create the feed topics and `extra_topics` with
    /// `config.partitions` partitions each, and start every feed.
    pub fn start(
        config: &EmbeddedSection,
        extra_topics: &BTreeSet<String>,
        data_dir: &Path,
    ) -> Result<Self> {
        if config.partitions < 1 {
            bail!("kafka.embedded.partitions must be at least 1");
        }
        let feeds = config
            .feeds
            .iter()
            .map(|f| build_feed(f, data_dir))
            .collect::<Result<Vec<_>>>()?;
        let mut seen = BTreeSet::new();
        for f in &feeds {
            if !seen.insert(f.topic.clone()) {
                bail!(
                    "[[kafka.embedded.feed]]: topic '{}' is fed twice; give each feed its own \
                     topic",
                    f.topic
                );
            }
        }
        let summary = config
            .feeds
            .iter()
            .map(|f| format!("{} ({} rows/s)", f.topic.trim(), f.rows_per_second))
            .collect::<Vec<_>>()
            .join(", ");

        let mock = MockCluster::new(1).context("starting the embedded Kafka broker")?;
        let bootstrap = mock.bootstrap_servers();
        for topic in seen.iter().chain(extra_topics) {
            mock.create_topic(topic, config.partitions, 1)
                .with_context(|| format!("creating topic '{topic}' on the embedded broker"))?;
        }
        let mut handles = Vec::with_capacity(feeds.len());
        for feed in feeds {
            let producer: ThreadedProducer<FeedContext> = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("client.id", format!("weir-embedded-feed-{}", feed.topic))
                .set("linger.ms", "20")
                .create_with_context(FeedContext::new(&feed.topic))
                .with_context(|| format!("creating the producer of feed '{}'", feed.topic))?;
            let topic = feed.topic.clone();
            let partitions = config.partitions;
            handles.push(tokio::spawn(async move {
                if let Err(e) = run_feed(feed, producer, partitions).await {
                    tracing::error!(topic = %topic, "embedded Kafka feed stopped: {e:#}");
                }
            }));
        }
        Ok(EmbeddedKafka {
            bootstrap,
            summary,
            feeds: handles,
            mock,
        })
    }

    /// The broker's `host:port`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// `downloads (2000 rows/s), ticks (500 rows/s)`.
    pub fn feeds_summary(&self) -> &str {
        &self.summary
    }

    /// Stop the feeds. The broker itself is left running until the process exits: Kafka
    /// source threads may still be committing their last offsets, and a broker that
    /// vanished under them would fill the log with connection errors.
    pub async fn stop(self) {
        for h in &self.feeds {
            h.abort();
        }
        let EmbeddedKafka { feeds, mock, .. } = self;
        for h in feeds {
            // Aborted: the result is the cancellation (or the error the feed already
            // logged); only the wait for the task to finish matters.
            let _ = h.await;
        }
        std::mem::forget(mock);
    }
}

fn build_feed(f: &crate::config::FeedConfig, data_dir: &Path) -> Result<Feed> {
    let topic = f.topic.trim().to_string();
    let what = format!("[[kafka.embedded.feed]] topic '{topic}'");
    if topic.is_empty() {
        bail!("[[kafka.embedded.feed]]: topic must not be empty");
    }
    let kind = f.kind.trim().to_ascii_lowercase();
    let Some((columns, key_column)) = kind_columns(&kind) else {
        bail!(
            "{what}: kind must be one of {}, got '{}'",
            weir_connectors::generator::KINDS.join(" | "),
            f.kind
        );
    };
    if f.rows_per_second == 0 {
        bail!("{what}: rows_per_second must be at least 1");
    }
    let parsed = weir_engine::sql::parse_script(&format!(
        "CREATE SOURCE feed ({columns}) WITH (connector = 'generator')"
    ))?;
    let Some(WeirStatement::CreateSource(c)) = parsed.first().map(|s| &s.statement) else {
        bail!("{what}: the generator columns did not parse");
    };
    let schema = c.schema.clone();
    let source = weir_connectors::registry()
        .source("generator")?
        .create(SourceSpec {
            name: format!("feed-{topic}"),
            schema: schema.clone(),
            event_time: Some("ts".into()),
            metadata: vec![],
            options: Options::new([
                ("kind".to_string(), kind.clone()),
                ("rows.per.second".to_string(), f.rows_per_second.to_string()),
                ("seed".to_string(), f.seed.to_string()),
                (
                    "max.out.of.orderness".to_string(),
                    f.max_out_of_orderness.clone(),
                ),
            ]),
            data_dir: data_dir.to_path_buf(),
            batch: BatchLimits {
                max_rows: 4096,
                max_delay: Duration::from_millis(50),
            },
            stats: Default::default(),
            workers: 1,
            idle_timeout: weir_engine::connector::DEFAULT_IDLE_TIMEOUT,
        })
        .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    Ok(Feed {
        topic,
        source,
        schema,
        key_column,
    })
}

/// Counts failed deliveries and logs them now and then.
struct FeedContext {
    topic: String,
    failed: AtomicU64,
    last_log: Mutex<Option<Instant>>,
}

impl FeedContext {
    fn new(topic: &str) -> Self {
        FeedContext {
            topic: topic.to_string(),
            failed: AtomicU64::new(0),
            last_log: Mutex::new(None),
        }
    }
}

impl ClientContext for FeedContext {}

impl ProducerContext for FeedContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            let failed = self.failed.fetch_add(1, Ordering::Relaxed) + 1;
            let mut last = self.last_log.lock();
            if last.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                *last = Some(Instant::now());
                tracing::warn!(topic = %self.topic, failed, error = %e,
                    "embedded Kafka feed: messages could not be delivered");
            }
        }
    }
}

/// Produce every generated row to the feed's topic, forever.
async fn run_feed(
    mut feed: Feed,
    producer: ThreadedProducer<FeedContext>,
    partitions: i32,
) -> Result<()> {
    let mut encoder = encoder_for(
        "json",
        feed.schema.clone(),
        &mut Options::default(),
        &feed.topic,
    )?;
    let key_index = feed.schema.index_of(feed.key_column)?;
    let ts_index = feed.schema.index_of("ts")?;
    let mut key_partition: HashMap<String, i32> = HashMap::new();
    let mut chunk = RecordChunk::default();
    loop {
        let batch = match feed.source.next().await? {
            SourceEvent::Batch { batch, .. } => batch,
            SourceEvent::End => return Ok(()),
            _ => continue,
        };
        chunk.clear();
        encoder.encode(&batch, &mut chunk)?;
        let keys = batch.column(key_index).as_string::<i32>();
        let times = batch
            .column(ts_index)
            .as_primitive::<TimestampMillisecondType>();
        for i in 0..chunk.len() {
            let key = keys.is_valid(i).then(|| keys.value(i));
            let partition = key.map(|k| {
                let next = key_partition.len() as i32 % partitions;
                *key_partition.entry(k.to_string()).or_insert(next)
            });
            loop {
                let mut record: BaseRecord<'_, str, [u8]> =
                    BaseRecord::to(&feed.topic).payload(chunk.get(i));
                if let Some(k) = key {
                    record = record.key(k);
                }
                if let Some(p) = partition {
                    record = record.partition(p);
                }
                if times.is_valid(i) {
                    record = record.timestamp(times.value(i));
                }
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {}
                    Err((e, _)) => return Err(e).context("producing to the embedded broker"),
                }
                // The local queue is full: let deliveries catch up.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn finds_kafka_objects_that_need_the_default_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.sql");
        std::fs::write(
            &a,
            "CREATE SOURCE s (x TEXT) WITH (connector = 'generator', kind = 'ticks');\n\
             CREATE SOURCE k (x TEXT) WITH (connector = 'Kafka', topic = 't', \
             'bootstrap.servers' = 'h:9092');\n\
             CREATE MATERIALIZED VIEW v AS SELECT x FROM s;\n\
             CREATE SINK o FROM v WITH (connector = 'kafka', topic = 'out');\n",
        )
        .unwrap();
        let b = dir.path().join("b.sql");
        std::fs::write(&b, "CREATE SOURCE (broken").unwrap();
        let u = kafka_usage(&[a.clone(), b.clone()]);
        assert!(u.default_cluster);
        assert_eq!(u.sink_topics, BTreeSet::from(["out".to_string()]));

        std::fs::write(
            &a,
            "CREATE SOURCE k (x TEXT) WITH (connector = 'kafka', topic = 't', \
             'bootstrap.servers' = 'h:9092');",
        )
        .unwrap();
        assert_eq!(kafka_usage(&[a, b]), KafkaUsage::default());
    }

    #[test]
    fn feed_errors_name_the_feed() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = crate::config::EmbeddedSection::default().feeds[0].clone();
        f.kind = "clicks".into();
        let e = build_feed(&f, dir.path()).err().unwrap();
        assert_eq!(
            e.to_string(),
            "[[kafka.embedded.feed]] topic 'downloads': kind must be one of downloads | \
             ticks, got 'clicks'"
        );
        f.kind = "ticks".into();
        f.max_out_of_orderness = "soon".into();
        let e = build_feed(&f, dir.path()).err().unwrap();
        assert!(e.to_string().contains("max.out.of.orderness"), "{e}");
    }
}
