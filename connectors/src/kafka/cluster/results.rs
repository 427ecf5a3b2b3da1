//! A view's results topic: what stage 2 writes to it, and every member's reader into
//! the view's buffer.

use super::*;
use crate::kafka::exchange::{ipc_batch, ipc_bytes};
use weir_engine::clock::{Clock, SystemClock};

pub(super) const RESULT_KP: &str = "weir.kp";
pub(super) const RESULT_FIRST: &str = "weir.first";
pub(super) const RESULT_WATERMARK: &str = "weir.watermark";

/// A batch of a key partition's rows as a results record: headers with the key partition,
/// the count of its rows before these and its watermark; the batch as an Arrow IPC stream.
pub(super) fn results_record(
    ids: RowIds,
    watermark: i64,
    batch: &RecordBatch,
) -> Result<(OwnedHeaders, Vec<u8>)> {
    let value = ipc_bytes(batch)?;
    let (kp, first, wm) = (
        ids.origin.to_le_bytes(),
        ids.first.to_le_bytes(),
        watermark.to_le_bytes(),
    );
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: RESULT_KP,
            value: Some(&kp),
        })
        .insert(Header {
            key: RESULT_FIRST,
            value: Some(&first),
        })
        .insert(Header {
            key: RESULT_WATERMARK,
            value: Some(&wm),
        });
    Ok((headers, value))
}

/// A results record back: (key partition, rows before, watermark, rows).
pub(super) fn from_results_record(
    m: &rdkafka::message::BorrowedMessage<'_>,
) -> Result<(u32, u64, i64, RecordBatch)> {
    let header = |key: &str| -> Option<[u8; 8]> {
        let h = m.headers()?;
        let v = h.iter().find(|x| x.key == key)?.value?;
        let mut out = [0u8; 8];
        (v.len() <= 8).then(|| {
            out[..v.len()].copy_from_slice(v);
            out
        })
    };
    let bad = |why: &str| {
        WeirError::Internal(format!(
            "results record at {}[{}]@{}: {why}",
            m.topic(),
            m.partition(),
            m.offset()
        ))
    };
    let (Some(kp), Some(first), Some(wm)) = (
        header(RESULT_KP),
        header(RESULT_FIRST),
        header(RESULT_WATERMARK),
    ) else {
        return Err(bad("headers missing"));
    };
    let batch = ipc_batch(m.payload().unwrap_or_default()).map_err(|why| bad(&why))?;
    let kp = u32::from_le_bytes([kp[0], kp[1], kp[2], kp[3]]);
    Ok((kp, u64::from_le_bytes(first), i64::from_le_bytes(wm), batch))
}

/// Reads a view's results topic from the beginning into this member's buffer for the
/// view (REST and WebSocket readers), every row once and in the topic's order.
pub(super) struct ResultsThread {
    pub(super) config: ClientConfig,
    pub(super) topic: String,
    pub(super) buffer: Arc<ViewBuffer>,
    pub(super) stop: Arc<AtomicBool>,
}

impl ResultsThread {
    pub(super) fn run(self) {
        let mut backoff = RESTART.start();
        while !self.stop.load(Ordering::Relaxed) {
            // Every session reads from the beginning: the numbering is rebuilt the same.
            match self.session() {
                Ok(()) => return,
                Err(e) => {
                    let wait = backoff.next_delay().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(topic = %self.topic, error = %e, ?wait,
                        "reading the results topic stopped; starting again");
                    std::thread::sleep(wait);
                }
            }
        }
    }

    fn session(&self) -> Result<()> {
        let consumer: BaseConsumer = self
            .config
            .create()
            .map_err(|e| kafka_error("creating the results reader", e))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, 0, Offset::Beginning)
            .map_err(|e| kafka_error("assigning the results topic", e))?;
        consumer
            .assign(&tpl)
            .map_err(|e| kafka_error("assigning the results topic", e))?;
        let mut reader = ResultsReader::default();
        let last = self.buffer.last_seq();
        while !self.stop.load(Ordering::Relaxed) {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let (kp, first, watermark, batch) = from_results_record(&m)?;
                    let Some((numbered, rows)) = reader.take(kp, first, batch) else {
                        continue;
                    };
                    // Rows this buffer holds from an earlier session are not pushed again.
                    if numbered.first_seq <= last {
                        continue;
                    }
                    let at_us = SystemClock.now_us();
                    self.buffer
                        .push(numbered.first_seq, rows, Some(watermark), at_us)?;
                }
                Some(Err(e)) => return Err(kafka_error("reading the results topic", e)),
                None => {}
            }
        }
        Ok(())
    }
}
