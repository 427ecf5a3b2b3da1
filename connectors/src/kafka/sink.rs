//! The Kafka sink: a view's rows as messages, at least once.
//!
//! Each batch is encoded at once by the format's [`RecordEncoder`] (one message per row)
//! and handed to librdkafka's queue; a background thread delivers. `flush` (after every
//! emitting watermark step, on a timer, and at close) waits until everything is delivered.
//! A message whose delivery fails after librdkafka's own retries comes back through the
//! delivery callback and is sent again with backoff, with a warning in the log and the
//! error in the sink's status, so nothing is dropped; meanwhile the pipeline waits
//! (backpressure). Exactly once, with transactions per checkpoint, comes with checkpoints.
//!
//! The message key, with `key = 'col, col'`, is those columns encoded in the same format
//! (a JSON object for `json`); without `key` messages have no key.

use super::common::{Connection, KafkaSettings, kafka_error, take_connection};
use crate::format::{RecordChunk, RecordEncoder, encoder_for};
use async_trait::async_trait;
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::record_batch::RecordBatch;
use rdkafka::ClientContext;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weir_engine::connector::{Sink, SinkFactory, SinkSpec};
use weir_engine::{Result, WeirError};

pub const VALID_KEYS: &[&str] = &[
    "topic",
    "bootstrap.servers",
    "format",
    "key",
    "properties.<librdkafka property>",
    "csv.delimiter",
    "csv.quote",
    "csv.null",
    "schema.registry.url",
    "schema.registry.basic.auth",
];

pub struct KafkaSinkFactory {
    settings: Arc<KafkaSettings>,
}

impl KafkaSinkFactory {
    pub fn new(settings: Arc<KafkaSettings>) -> Self {
        KafkaSinkFactory { settings }
    }
}

impl SinkFactory for KafkaSinkFactory {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn create(&self, spec: SinkSpec) -> Result<Box<dyn Sink>> {
        let what = format!("sink '{}'", spec.name);
        let mut options = spec.options;
        let topic = options
            .take("topic")
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| WeirError::user(format!("{what}: option 'topic' is required")))?;
        let connection = take_connection(&mut options, &self.settings, &what)?;
        let format = options.take_choice("format", crate::format::MESSAGE_FORMATS, "json")?;
        let key_columns: Vec<usize> = match options.take("key") {
            None => vec![],
            Some(k) => k
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(|c| {
                    spec.schema.index_of(c).map_err(|_| {
                        WeirError::user(format!(
                            "{what}: key column '{c}' is not a column of view '{}'; its \
                             columns: {}",
                            spec.view,
                            spec.schema
                                .fields()
                                .iter()
                                .map(|f| f.name().as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })
                })
                .collect::<Result<_>>()?,
        };
        let key_encoder = if key_columns.is_empty() {
            None
        } else {
            let key_schema = Arc::new(spec.schema.project(&key_columns)?);
            let mut key_options = options.clone();
            Some(encoder_for(
                &format,
                key_schema,
                &mut key_options,
                &format!("{topic}-key"),
            )?)
        };
        let encoder = encoder_for(
            &format,
            spec.schema.clone(),
            &mut options,
            &format!("{topic}-value"),
        )?;
        options.finish(&format!("the kafka sink '{}'", spec.name), VALID_KEYS)?;
        connection.validate(&what)?;
        let _: &Schema = &spec.schema;
        Ok(Box::new(KafkaSink {
            name: spec.name,
            topic,
            connection,
            encoder,
            key_encoder,
            key_columns,
            producer: None,
            values: RecordChunk::default(),
            keys: RecordChunk::default(),
        }))
    }
}

/// Collects messages whose delivery failed, to send again.
#[derive(Default)]
struct Deliveries {
    failed: Mutex<Vec<(OwnedMessage, String)>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result
            && let Ok(mut f) = self.failed.lock()
        {
            f.push((m.detach(), e.to_string()));
        }
    }
}

struct KafkaSink {
    name: String,
    topic: String,
    connection: Connection,
    encoder: Box<dyn RecordEncoder>,
    key_encoder: Option<Box<dyn RecordEncoder>>,
    key_columns: Vec<usize>,
    producer: Option<Arc<ThreadedProducer<Deliveries>>>,
    values: RecordChunk,
    keys: RecordChunk,
}

impl KafkaSink {
    fn producer(&mut self) -> Result<Arc<ThreadedProducer<Deliveries>>> {
        if let Some(p) = &self.producer {
            return Ok(p.clone());
        }
        let p: ThreadedProducer<Deliveries> = self
            .connection
            .client_config(&[
                ("client.id", &format!("weir-{}", self.name)),
                ("enable.idempotence", "true"),
                ("linger.ms", "5"),
                ("compression.type", "lz4"),
            ])
            .create_with_context(Deliveries::default())
            .map_err(|e| kafka_error(&format!("sink '{}'", self.name), e))?;
        let p = Arc::new(p);
        self.producer = Some(p.clone());
        Ok(p)
    }

    async fn send(
        producer: &ThreadedProducer<Deliveries>,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
    ) {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        }
        loop {
            match producer.send(record) {
                Ok(()) => return,
                Err((_, r)) => {
                    // The local queue is full: let deliveries catch up.
                    record = r;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let producer = self.producer()?;
        self.values.clear();
        self.encoder.encode(&batch, &mut self.values)?;
        self.keys.clear();
        if let Some(k) = &mut self.key_encoder {
            k.encode(&batch.project(&self.key_columns)?, &mut self.keys)?;
        }
        for i in 0..self.values.len() {
            let key = (!self.keys.is_empty()).then(|| self.keys.get(i));
            Self::send(&producer, &self.topic, key, self.values.get(i)).await;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        let Some(producer) = self.producer.clone() else {
            return Ok(());
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            let p = producer.clone();
            tokio::task::spawn_blocking(move || p.flush(Duration::from_secs(30)))
                .await
                .map_err(|e| WeirError::Internal(format!("kafka flush task: {e}")))?
                .or_else(|e| match e {
                    rdkafka::error::KafkaError::Flush(rdkafka::types::RDKafkaErrorCode::OperationTimedOut) => {
                        tracing::warn!(sink = %self.name, "kafka deliveries still pending after 30s");
                        Ok(())
                    }
                    other => Err(kafka_error(&format!("sink '{}'", self.name), other)),
                })?;
            let failed = producer
                .context()
                .failed
                .lock()
                .map(|mut f| std::mem::take(&mut *f))
                .unwrap_or_default();
            if failed.is_empty() && producer.in_flight_count() == 0 {
                return Ok(());
            }
            if !failed.is_empty() {
                tracing::warn!(sink = %self.name, topic = %self.topic, failed = failed.len(),
                    error = %failed[0].1, "kafka deliveries failed; sending them again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                for (m, _) in &failed {
                    Self::send(&producer, &self.topic, m.key(), m.payload().unwrap_or(&[])).await;
                }
            }
        }
    }

    async fn close(&mut self) -> Result<()> {
        self.flush().await
    }
}
