//! The exchange between stage 1 and stage 2 over a Kafka topic (docs/design/cluster.md,
//! step 2): the second implementation of `weir_engine::dataflow::exchange`'s traits,
//! beside the in-memory one. Not yet used by the dataflow: the cluster (issue 16) will
//! build on it.
//!
//! The topic has one partition per key partition; a receiver reads the partitions it owns.
//! Each record is one [`Message`]:
//!
//! | header `weir.kind` | value | headers |
//! | --- | --- | --- |
//! | `data` | the batch as an Arrow IPC stream | `weir.partition`: the key partition |
//! | `watermark` | epoch ms, 8 bytes little-endian | |
//! | `idle`, `end` | empty | |
//! | `barrier`, `mark` | the epoch or mark, 8 bytes little-endian | |
//!
//! and every record has `weir.from`, the sending stage-1 input (4 bytes little-endian),
//! which is the `from` of the [`Envelope`] a receiver hands its `Aligner`. A sender's
//! records to one partition keep their order (one producer, idempotent), so the aligner
//! sees each input's messages in the order they were sent. The receiver reads
//! `read_committed`: a transactional sender's records ([`KafkaSender::transactional`],
//! what stage 1 will write each step in, with its input offsets) are seen only once their
//! transaction commits, and a sender fenced by a successor with the same transactional id
//! can never commit again.

use super::common::{is_fenced, kafka_error};
use async_trait::async_trait;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::record_batch::RecordBatch;
use rdkafka::consumer::{Consumer, ConsumerGroupMetadata, StreamConsumer};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, TopicPartitionList};
use std::time::Duration;
use weir_engine::dataflow::exchange::{Envelope, ExchangeReceiver, ExchangeSender, Message};
use weir_engine::fsutil::run_blocking;
use weir_engine::{Result, WeirError};

const KIND: &str = "weir.kind";
const FROM: &str = "weir.from";
const PARTITION: &str = "weir.partition";

/// How long a send may wait for the broker to take a record.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one transactional call (init, commit, abort) may take.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// Stage-1 input `from`'s side of an exchange topic of `partitions` partitions.
pub struct KafkaSender {
    producer: FutureProducer,
    topic: String,
    from: u32,
    partitions: usize,
}

impl KafkaSender {
    /// `config` holds the connection (`bootstrap.servers` and any client properties).
    pub fn new(config: &ClientConfig, topic: &str, from: u32, partitions: usize) -> Result<Self> {
        let producer = config
            .clone()
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .map_err(|e| kafka_error("creating the exchange producer", e))?;
        Ok(KafkaSender {
            producer,
            topic: topic.to_string(),
            from,
            partitions,
        })
    }
}

impl KafkaSender {
    /// A sender whose records become visible only when a transaction commits
    /// ([`KafkaSender::begin`], [`KafkaSender::commit`]). Starting it fences every earlier
    /// sender with the same `transactional_id` and aborts its open transaction.
    pub async fn transactional(
        config: &ClientConfig,
        topic: &str,
        from: u32,
        partitions: usize,
        transactional_id: &str,
    ) -> Result<Self> {
        let mut config = config.clone();
        config.set("transactional.id", transactional_id);
        let sender = KafkaSender::new(&config, topic, from, partitions)?;
        sender
            .blocking("starting exchange transactions", |p| {
                p.init_transactions(TXN_TIMEOUT)
            })
            .await?;
        Ok(sender)
    }

    pub async fn begin(&self) -> Result<()> {
        self.blocking("beginning an exchange transaction", |p| {
            p.begin_transaction()
        })
        .await
    }

    /// Make the records sent since [`KafkaSender::begin`] visible, at once and together.
    pub async fn commit(&self) -> Result<()> {
        self.blocking("committing an exchange transaction", |p| {
            p.commit_transaction(TXN_TIMEOUT)
        })
        .await
    }

    /// Add the input positions `offsets` of consumer group `group` (the next record to
    /// read in each input partition) to the open transaction: they are committed with the
    /// records sent in it, or dropped with them (KIP-447, so a fenced consumer's
    /// positions are refused too).
    pub async fn send_offsets(
        &self,
        offsets: TopicPartitionList,
        group: ConsumerGroupMetadata,
    ) -> Result<()> {
        self.blocking(
            "adding input positions to an exchange transaction",
            move |p| p.send_offsets_to_transaction(&offsets, &group, TXN_TIMEOUT),
        )
        .await
    }

    /// Drop the records sent since [`KafkaSender::begin`]: no receiver sees them.
    pub async fn abort(&self) -> Result<()> {
        self.blocking("aborting an exchange transaction", |p| {
            p.abort_transaction(TXN_TIMEOUT)
        })
        .await
    }

    async fn blocking(
        &self,
        doing: &'static str,
        f: impl FnOnce(&FutureProducer) -> rdkafka::error::KafkaResult<()> + Send + 'static,
    ) -> Result<()> {
        let producer = self.producer.clone();
        run_blocking(doing, move || f(&producer))
            .await?
            .map_err(|e| txn_error(doing, e))
    }
}

/// A failed transactional call; a fenced sender says so.
fn txn_error(doing: &str, e: rdkafka::error::KafkaError) -> WeirError {
    if e.rdkafka_error_code().is_some_and(is_fenced) {
        return WeirError::external_source(
            format!(
                "{doing}: this exchange sender was fenced: another sender with its \
                 transactional id took over, and nothing it sends can become visible"
            ),
            e,
        );
    }
    kafka_error(doing, e)
}

/// A message as a record's kind, value and key-partition header.
fn encode(message: &Message) -> Result<(&'static str, Vec<u8>, Option<u32>)> {
    Ok(match message {
        Message::Data { partition, batch } => ("data", ipc_bytes(batch)?, Some(*partition)),
        Message::Watermark(ms) => ("watermark", ms.to_le_bytes().to_vec(), None),
        Message::Idle => ("idle", vec![], None),
        Message::Barrier(epoch) => ("barrier", epoch.to_le_bytes().to_vec(), None),
        Message::End => ("end", vec![], None),
        Message::Mark(id) => ("mark", id.to_le_bytes().to_vec(), None),
    })
}

/// A message from sender `from` as an exchange record: its headers and value.
pub(super) fn record_of(from: u32, message: &Message) -> Result<(OwnedHeaders, Vec<u8>)> {
    let (kind, value, partition) = encode(message)?;
    let from = from.to_le_bytes();
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: KIND,
            value: Some(kind),
        })
        .insert(Header {
            key: FROM,
            value: Some(&from),
        });
    if let Some(p) = partition {
        let kp = p.to_le_bytes();
        headers = headers.insert(Header {
            key: PARTITION,
            value: Some(&kp),
        });
    }
    Ok((headers, value))
}

/// An exchange record back as the message and its sender.
pub(super) fn envelope_of(m: &rdkafka::message::BorrowedMessage<'_>) -> Result<Envelope> {
    let header = |key: &str| {
        m.headers()
            .and_then(|h| h.iter().find(|x| x.key == key).and_then(|x| x.value))
    };
    let from = header(FROM)
        .and_then(|f| <[u8; 4]>::try_from(f).ok())
        .map(u32::from_le_bytes);
    let message = decode(
        header(KIND),
        m.payload().unwrap_or_default(),
        header(PARTITION),
    );
    match (from, message) {
        (Some(from), Ok(message)) => Ok(Envelope {
            from: from as usize,
            message,
        }),
        (None, _) => Err(bad_record(m, "it has no sender")),
        (_, Err(why)) => Err(bad_record(m, &why)),
    }
}

/// `batch` as an Arrow IPC stream: a record's value (exchange data, cluster results).
pub(super) fn ipc_bytes(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut w = StreamWriter::try_new(&mut out, &batch.schema())?;
        w.write(batch)?;
        w.finish()?;
    }
    Ok(out)
}

/// The batch of an [`ipc_bytes`] value; `Err` names what is wrong with it.
pub(super) fn ipc_batch(value: &[u8]) -> std::result::Result<RecordBatch, String> {
    let mut reader = StreamReader::try_new(value, None).map_err(|e| e.to_string())?;
    reader
        .next()
        .ok_or("a record without a batch")?
        .map_err(|e| e.to_string())
}

/// A record's message; `Err` names what is wrong with it.
fn decode(
    kind: Option<&[u8]>,
    value: &[u8],
    partition: Option<&[u8]>,
) -> std::result::Result<Message, String> {
    let eight = || -> std::result::Result<[u8; 8], String> {
        value
            .try_into()
            .map_err(|_| format!("a value of {} bytes where 8 were expected", value.len()))
    };
    Ok(match kind {
        Some(b"data") => {
            let partition = partition
                .and_then(|p| <[u8; 4]>::try_from(p).ok())
                .map(u32::from_le_bytes)
                .ok_or("a data record without its key partition")?;
            Message::Data {
                partition,
                batch: ipc_batch(value)?,
            }
        }
        Some(b"watermark") => Message::Watermark(i64::from_le_bytes(eight()?)),
        Some(b"idle") => Message::Idle,
        Some(b"barrier") => Message::Barrier(u64::from_le_bytes(eight()?)),
        Some(b"end") => Message::End,
        Some(b"mark") => Message::Mark(u64::from_le_bytes(eight()?)),
        Some(other) => return Err(format!("unknown kind {}", String::from_utf8_lossy(other))),
        None => return Err("a record without a kind".to_string()),
    })
}

#[async_trait]
impl ExchangeSender for KafkaSender {
    async fn send(&mut self, to: usize, message: Message) -> Result<()> {
        if to >= self.partitions {
            return Err(WeirError::Internal(format!(
                "exchange: no key partition {to} of {}",
                self.partitions
            )));
        }
        let (headers, value) = record_of(self.from, &message)?;
        let record = FutureRecord::<(), _>::to(&self.topic)
            .partition(to as i32)
            .payload(&value)
            .headers(headers);
        self.producer
            .send(record, SEND_TIMEOUT)
            .await
            .map_err(|(e, _)| kafka_error("sending to the exchange", e))?;
        Ok(())
    }

    fn receivers(&self) -> usize {
        self.partitions
    }
}

/// A stage-2 side of an exchange topic: the messages of the partitions it owns.
pub struct KafkaReceiver {
    consumer: StreamConsumer,
}

impl KafkaReceiver {
    /// Read `partitions` of `topic` from their start, `read_committed`.
    pub fn new(config: &ClientConfig, topic: &str, partitions: &[i32]) -> Result<Self> {
        let consumer: StreamConsumer = config
            .clone()
            .set("group.id", format!("weir-exchange-{topic}"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(|e| kafka_error("creating the exchange consumer", e))?;
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition_offset(topic, *p, rdkafka::Offset::Beginning)
                .map_err(|e| kafka_error("assigning exchange partitions", e))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| kafka_error("assigning exchange partitions", e))?;
        Ok(KafkaReceiver { consumer })
    }

    /// The next message, or the reason the exchange cannot go on (a broker error, or a
    /// record that is not an exchange message).
    pub async fn next(&mut self) -> Result<Envelope> {
        let m = self
            .consumer
            .recv()
            .await
            .map_err(|e| kafka_error("reading the exchange", e))?;
        envelope_of(&m)
    }
}

fn bad_record(m: &rdkafka::message::BorrowedMessage<'_>, why: &str) -> WeirError {
    WeirError::Internal(format!(
        "exchange record at {}[{}]@{} is not an exchange message: {why}",
        m.topic(),
        m.partition(),
        m.offset()
    ))
}

#[async_trait]
impl ExchangeReceiver for KafkaReceiver {
    /// The next message; `None` when the exchange cannot go on (the error is logged).
    async fn recv(&mut self) -> Option<Envelope> {
        match self.next().await {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::error!(error = %e, "the Kafka exchange stopped");
                None
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn every_message_round_trips_through_its_record_form() {
        let batch = RecordBatch::try_from_iter([
            ("k", Arc::new(StringArray::from(vec!["eu", "us"])) as _),
            ("n", Arc::new(Int64Array::from(vec![3, 4])) as _),
        ])
        .unwrap();
        for m in [
            Message::Data {
                partition: 7,
                batch: batch.clone(),
            },
            Message::Watermark(-5),
            Message::Idle,
            Message::Barrier(42),
            Message::End,
            Message::Mark(9),
        ] {
            let (kind, value, kp) = encode(&m).unwrap();
            let kp = kp.map(u32::to_le_bytes);
            let back = decode(Some(kind.as_bytes()), &value, kp.as_ref().map(|p| &p[..])).unwrap();
            assert_eq!(format!("{back:?}"), format!("{m:?}"));
        }
        assert!(decode(Some(b"watermark"), &[1, 2], None).is_err());
        assert!(decode(Some(b"data"), &[], None).is_err());
        assert!(decode(Some(b"nonsense"), &[], None).is_err());
        assert!(decode(None, &[], None).is_err());
    }
}
