//! The `http` source: events sent to the API, `POST /api/v1/sources/{name}/events`.
//!
//! ```sql
//! CREATE SOURCE clicks (user_id TEXT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts)
//!     WITH (connector = 'http', format = 'json');
//! ```
//!
//! Durability comes from Kafka: the endpoint checks each event with the source's JSON
//! decoder, appends the events to the source's topic (`weir.http.<source>` unless `topic`
//! says otherwise; created with `partitions` partitions) with an idempotent producer and
//! `acks=all`, and answers only once every event is written. The source itself is a Kafka
//! source on that topic, so an acknowledged event is read, checkpointed and replayed like
//! any Kafka message: a crash after the answer loses nothing and duplicates nothing.
//! With the embedded broker (no `[kafka] bootstrap.servers`) the topic lives in the `weir`
//! process and an acknowledgement only means the event is in it: a crash loses what the
//! pipeline had not yet checkpointed; point `[kafka] bootstrap.servers` at a cluster for
//! durable acknowledgements. That broker also keeps only about the newest 5 MB of each
//! partition, so there a request waits while the source is more than 4 MB behind (503
//! after 10 s): no acknowledged event is trimmed away unread.
//!
//! `bad.records` applies at the door: with `fail` a request holding a bad event is refused
//! whole (400, nothing written); with `skip` the bad events are dropped and counted; with
//! `dead-letter` (the default) they are written too, and the source sends them to its
//! dead-letter output (`<topic>.dlq`, or a file) with the decoder's reason, as a Kafka
//! source does. Either way the answer lists each bad event's index and reason.

use crate::format::{BadRecords, RecordChunk, RecordDecoder, decoder_for, parse_bad_records};
use crate::kafka::common::{Connection, KafkaSettings, kafka_error, take_connection};
use crate::kafka::{KafkaSourceFactory, cluster::ensure_topic};
use parking_lot::Mutex;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use weir_engine::connector::{Source, SourceFactory, SourceSpec};
use weir_engine::options::Options;
use weir_engine::{Result, WeirError};

/// Options of `CREATE SOURCE ... WITH (connector = 'http', ...)`.
pub const VALID_KEYS: &[&str] = &[
    "format",
    "topic",
    "partitions",
    "bad.records",
    "dead.letter",
    "dead.letter.topic",
    "bootstrap.servers",
    "group.id",
    "commit.interval",
    "properties.<librdkafka property>",
];

/// The options passed on to the Kafka source that reads the topic.
const KAFKA_KEYS: &[&str] = &[
    "bad.records",
    "dead.letter",
    "dead.letter.topic",
    "bootstrap.servers",
    "group.id",
    "commit.interval",
];

/// How long a request waits for Kafka to take its events.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// The `http` sources the server can take events for, by source name. The server keeps
/// one (it gives it to [`crate::registry_full`]) and looks endpoints up by name.
#[derive(Clone, Default)]
pub struct Endpoints {
    by_source: Arc<Mutex<HashMap<String, Arc<Endpoint>>>>,
    /// Create each topic and producer as soon as the source is created (`weir run`), not
    /// at the first request (`weir check` must not reach for a cluster).
    eager: bool,
    /// Create topics with the admin API; off for the embedded broker, which does not take
    /// it and creates a topic when a producer first asks for it.
    admin: bool,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.by_source.lock().keys().cloned().collect();
        f.debug_struct("Endpoints")
            .field("sources", &names)
            .finish()
    }
}

impl Endpoints {
    /// Endpoints that prepare their topic as soon as their source is created, with the
    /// admin API (`admin`) or by asking for it (the embedded broker).
    pub fn eager(admin: bool) -> Self {
        Endpoints {
            eager: true,
            admin,
            ..Default::default()
        }
    }

    /// The endpoint of source `name`, if it was created as an `http` source (the caller
    /// checks the source still exists).
    pub fn get(&self, name: &str) -> Option<Arc<Endpoint>> {
        self.by_source.lock().get(name).cloned()
    }
}

/// Where one `http` source's events go.
pub struct Endpoint {
    source: String,
    topic: String,
    partitions: i32,
    policy: BadRecords,
    decoder: Mutex<Box<dyn RecordDecoder>>,
    connection: Connection,
    admin: bool,
    producer: tokio::sync::OnceCell<FutureProducer>,
    /// The source's figures: `bytes` is what it has read of the topic.
    stats: Arc<weir_engine::stats::Stats>,
    /// Bytes of events written to the topic by this process.
    written: Mutex<u64>,
}

/// On the embedded broker, which keeps only about the newest 5 MB of each partition, the
/// events written but not yet read by the source stay under this, so none is trimmed
/// away unread: a request waits (at most [`ADMIT_WAIT`]) for the source to catch up.
const EMBEDDED_BEHIND_BYTES: u64 = 4 << 20;
/// How long a request waits for the source to catch up before it is answered 503.
const ADMIT_WAIT: Duration = Duration::from_secs(10);

/// What a request's events came to.
#[derive(Debug, Clone, PartialEq)]
pub struct Ingested {
    /// Events written that the source will read as rows.
    pub accepted: usize,
    /// Bad events: (index in the request, from 0; reason).
    pub rejected: Vec<(usize, String)>,
    /// Whether the bad ones went to the dead-letter output (else they were dropped).
    pub dead_lettered: bool,
}

/// Why a request's events were not taken.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The body is not JSON lines or a JSON array.
    #[error("{0}")]
    Body(String),
    /// `bad.records = 'fail'` and some events are bad: none was written.
    #[error("{} of the events are bad and the source's bad.records is 'fail': none was written", .0.len())]
    Refused(Vec<(usize, String)>),
    /// Kafka did not take the events (some may have been written: a retry may repeat them).
    #[error("the source's topic did not take the events: {0}")]
    Unavailable(#[source] WeirError),
    /// The source is too far behind (the embedded broker only): nothing was written.
    #[error(
        "the source is {0} bytes behind the events sent, and the embedded broker keeps only \
         about 5 MB per partition: nothing was written; retry in a moment (or point [kafka] \
         bootstrap.servers at a cluster)"
    )]
    Busy(u64),
}

/// The events of a body: a JSON array's elements, or its non-blank lines.
pub fn split_events(body: &[u8]) -> std::result::Result<Vec<Vec<u8>>, String> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        let values: Vec<serde_json::Value> = serde_json::from_slice(body)
            .map_err(|e| format!("the body starts with '[' but is not a JSON array: {e}"))?;
        return Ok(values
            .iter()
            .map(|v| serde_json::to_vec(v).unwrap_or_default())
            .collect());
    }
    Ok(body
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| l.iter().any(|b| !b.is_ascii_whitespace()))
        .map(<[u8]>::to_vec)
        .collect())
}

impl Endpoint {
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The topic (created if missing) and the producer, made once.
    async fn producer(&self) -> Result<&FutureProducer> {
        self.producer
            .get_or_try_init(|| async {
                if self.admin {
                    let admin = self.connection.client_config(&[]);
                    ensure_topic(&admin, &self.topic, self.partitions as u32, "http source")
                        .await?;
                }
                let producer: FutureProducer = self
                    .connection
                    .client_config(&[
                        ("client.id", &format!("weir-http-{}", self.source)),
                        ("enable.idempotence", "true"),
                        ("acks", "all"),
                        ("linger.ms", "2"),
                        ("allow.auto.create.topics", "true"),
                    ])
                    .create()
                    .map_err(|e| kafka_error("creating the http source's producer", e))?;
                // Asking for the topic creates it where the broker creates topics on
                // demand (the embedded one), and checks it is there.
                let p = producer.clone();
                let topic = self.topic.clone();
                weir_engine::fsutil::run_blocking("asking for the http source's topic", move || {
                    let deadline = std::time::Instant::now() + DELIVERY_TIMEOUT;
                    loop {
                        let md = rdkafka::producer::Producer::client(&p)
                            .fetch_metadata(Some(&topic), Duration::from_secs(5));
                        let found = md.as_ref().is_ok_and(|m| {
                            m.topics().iter().any(|t| {
                                t.name() == topic && t.error().is_none() && !t.partitions().is_empty()
                            })
                        });
                        if found {
                            return Ok(());
                        }
                        if std::time::Instant::now() > deadline {
                            return Err(match md {
                                Err(e) => kafka_error(&format!("reading topic '{topic}'"), e),
                                Ok(_) => WeirError::external(format!(
                                    "topic '{topic}' does not exist and the cluster did not create it"
                                )),
                            });
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                })
                .await??;
                Ok(producer)
            })
            .await
    }

    /// Wait until `bytes` more can be written without the source falling further behind
    /// than the embedded broker keeps; count them written. No wait on a real cluster.
    async fn admit(&self, bytes: u64) -> std::result::Result<(), IngestError> {
        if self.admin {
            return Ok(());
        }
        let deadline = std::time::Instant::now() + ADMIT_WAIT;
        loop {
            let read = self.stats.bytes.load(std::sync::atomic::Ordering::Relaxed);
            let behind = {
                let mut written = self.written.lock();
                let behind = written.saturating_sub(read);
                // A request bigger than the bound goes alone.
                if behind == 0 || behind + bytes <= EMBEDDED_BEHIND_BYTES {
                    *written += bytes;
                    return Ok(());
                }
                behind
            };
            if std::time::Instant::now() > deadline {
                return Err(IngestError::Busy(behind));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Check `body`'s events and write them to the topic; returns once Kafka has every
    /// one (`acks=all`).
    pub async fn ingest(&self, body: &[u8]) -> std::result::Result<Ingested, IngestError> {
        let events = split_events(body).map_err(IngestError::Body)?;
        let mut chunk = RecordChunk::default();
        for e in &events {
            chunk.push(e);
        }
        let decoded = self
            .decoder
            .lock()
            .decode(&chunk)
            .map_err(|e| IngestError::Body(e.to_string()))?;
        let bad = decoded.bad;
        if !bad.is_empty() && self.policy == BadRecords::Fail {
            return Err(IngestError::Refused(bad));
        }
        let skip = self.policy == BadRecords::Skip;
        let mut is_bad = vec![false; events.len()];
        for (i, _) in &bad {
            is_bad[*i] = true;
        }
        let written = |i: usize| !(skip && is_bad[i]);
        let producer = self.producer().await.map_err(IngestError::Unavailable)?;
        let bytes: u64 = (0..events.len())
            .filter(|i| written(*i))
            .map(|i| events[i].len() as u64)
            .sum();
        self.admit(bytes).await?;
        let mut pending = Vec::with_capacity(events.len());
        for (i, e) in events.iter().enumerate() {
            if !written(i) {
                continue;
            }
            let record: FutureRecord<'_, (), [u8]> = FutureRecord::to(&self.topic).payload(e);
            pending.push(producer.send(record, DELIVERY_TIMEOUT));
        }
        for r in futures::future::join_all(pending).await {
            if let Err((e, _)) = r {
                return Err(IngestError::Unavailable(kafka_error(
                    &format!("writing to the http source's topic '{}'", self.topic),
                    e,
                )));
            }
        }
        Ok(Ingested {
            accepted: events.len() - bad.len(),
            rejected: bad,
            dead_lettered: !skip,
        })
    }
}

/// Builds `http` sources: a Kafka source on the source's topic, and its [`Endpoint`].
pub struct HttpSourceFactory {
    kafka: Arc<KafkaSettings>,
    endpoints: Endpoints,
}

impl HttpSourceFactory {
    pub fn new(kafka: Arc<KafkaSettings>, endpoints: Endpoints) -> Self {
        HttpSourceFactory { kafka, endpoints }
    }
}

impl SourceFactory for HttpSourceFactory {
    fn name(&self) -> &'static str {
        "http"
    }

    fn create(&self, spec: SourceSpec) -> Result<Box<dyn Source>> {
        let what = format!("source '{}'", spec.name);
        let mut options = spec.options.clone();
        options.take_choice("format", &["json"], "json")?;
        let topic = options
            .take("topic")
            .filter(|t| !t.trim().is_empty())
            .unwrap_or_else(|| format!("weir.http.{}", spec.name));
        let partitions: i32 = options.take_parse("partitions")?.unwrap_or(1);
        if partitions < 1 {
            return Err(WeirError::user(format!(
                "{what}: 'partitions' must be at least 1"
            )));
        }
        // What the Kafka source reading the topic gets.
        let mut kafka: Vec<(String, String)> = vec![
            ("topic".into(), topic.clone()),
            ("format".into(), "json".into()),
        ];
        for k in KAFKA_KEYS {
            if let Some(v) = options.take(k) {
                kafka.push((k.to_string(), v));
            }
        }
        kafka.extend(
            options
                .take_prefixed("properties.")
                .into_iter()
                .map(|(k, v)| (format!("properties.{k}"), v)),
        );
        options.finish(&format!("the http source '{}'", spec.name), VALID_KEYS)?;

        let mut checked = Options::new(kafka.clone());
        let policy = parse_bad_records(&mut checked)?;
        let connection = take_connection(&mut checked, &self.kafka, &what)?;
        let decoder = decoder_for("json", spec.schema.clone(), &mut Options::new([]))?;
        let name = spec.name.clone();
        let stats = spec.stats.clone();
        let source = KafkaSourceFactory::new(self.kafka.clone()).create(SourceSpec {
            options: Options::new(kafka),
            ..spec
        })?;
        let endpoint = Arc::new(Endpoint {
            source: name.clone(),
            topic,
            partitions,
            policy,
            decoder: Mutex::new(decoder),
            connection,
            admin: self.endpoints.admin,
            producer: tokio::sync::OnceCell::new(),
            stats,
            written: Mutex::new(0),
        });
        if self.endpoints.eager
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let e = endpoint.clone();
            rt.spawn(async move {
                if let Err(err) = e.producer().await {
                    tracing::warn!(source = %e.source, topic = %e.topic,
                        "preparing the http source's topic (retried at the first request): {err}");
                }
            });
        }
        self.endpoints.by_source.lock().insert(name, endpoint);
        Ok(source)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_json_lines_or_a_json_array() {
        let lines = split_events(b"{\"a\":1}\r\n\n  \n{\"a\":2}").unwrap();
        assert_eq!(lines, vec![b"{\"a\":1}".to_vec(), b"{\"a\":2}".to_vec()]);
        let array = split_events(b" [{\"a\": 1}, {\"b\": [2]}, 3]").unwrap();
        assert_eq!(
            array,
            vec![
                b"{\"a\":1}".to_vec(),
                b"{\"b\":[2]}".to_vec(),
                b"3".to_vec()
            ]
        );
        assert!(
            split_events(b"[{\"a\":1}")
                .unwrap_err()
                .contains("not a JSON array")
        );
        assert!(split_events(b"").unwrap().is_empty());
    }
}
