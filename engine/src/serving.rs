//! The serving layer: what readers outside the dataflow see of a view's output. Each view
//! has a [`ViewBuffer`] holding its most recent rows (bounded by `retention.rows`), each
//! numbered with the seq its [`Sequencer`](crate::sequencer::Sequencer) gave it, and a
//! broadcast of every emission to live subscribers (WebSocket clients). The HTTP server
//! reads buffers through the catalog; it never reaches into operators.
//!
//! An updating view's buffer is keyed instead ([`ViewBuffer::keyed`]): it holds the view's
//! current rows by key (`keyed.rs`), and subscribers get each batch of changes with its
//! ops.
//!
//! Memory is bounded twice: the retained rows by `retention.rows`, and the broadcast by
//! [`SUBSCRIBER_QUEUE_BATCHES`] (a subscriber further behind is told it lagged and
//! resumes with `since_seq`).

use crate::error::Result;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use parking_lot::RwLock;
use std::collections::VecDeque;
use std::sync::Arc;

mod keyed;
pub use keyed::KeyedPage;

/// How many emitted batches the fan-out channel of a view holds for subscribers that are
/// behind; one that falls further behind is told so and dropped (bounded memory).
pub const SUBSCRIBER_QUEUE_BATCHES: usize = 128;

/// One batch a view emitted, as subscribers see it: its rows numbered
/// `first_seq..=last_seq()` in the view's sequence.
#[derive(Debug)]
pub struct Emitted {
    pub first_seq: u64,
    pub batch: RecordBatch,
    /// The view's watermark after this emission (epoch ms), if it has one.
    pub watermark: Option<i64>,
    /// Wall-clock time the pipeline emitted it, in epoch microseconds.
    pub emitted_at_us: i64,
}

impl Emitted {
    pub fn last_seq(&self) -> u64 {
        self.first_seq + self.batch.num_rows() as u64 - 1
    }
}

/// What a subscriber hears about a view.
#[derive(Debug, Clone)]
pub enum ViewEvent {
    Rows(Arc<Emitted>),
    /// The view was dropped; nothing more will come.
    Dropped,
}

/// A view's most recent output rows, bounded by rows, and the fan-out to live
/// subscribers.
#[derive(Debug)]
pub struct ViewBuffer {
    /// The view's columns (without the op column of an updating view's changes).
    pub schema: SchemaRef,
    max_rows: usize,
    inner: RwLock<Retained>,
    /// An updating view's current rows by key; `None` for append-only views.
    keyed: Option<RwLock<keyed::Table>>,
    tx: tokio::sync::broadcast::Sender<ViewEvent>,
}

#[derive(Debug, Default)]
struct Retained {
    /// `(first_seq, batch)`, oldest first.
    batches: VecDeque<(u64, RecordBatch)>,
    rows: usize,
    /// The seq of the last row emitted (0 before the first).
    last_seq: u64,
}

/// Retained rows with their numbering.
#[derive(Debug, Clone, Default)]
pub struct RetainedRows {
    /// `(first_seq, batch)`, oldest first, contiguous.
    pub batches: Vec<(u64, RecordBatch)>,
    /// The seq of the newest row the view has emitted (retained or not).
    pub last_seq: u64,
}

impl ViewBuffer {
    pub fn new(schema: SchemaRef, max_rows: usize) -> Self {
        ViewBuffer {
            schema,
            max_rows,
            inner: RwLock::new(Retained::default()),
            keyed: None,
            tx: tokio::sync::broadcast::channel(SUBSCRIBER_QUEUE_BATCHES).0,
        }
    }

    /// The buffer of an updating view, whose rows are identified by the columns `key` of
    /// `schema`: it keeps the current row of up to `max_rows` keys (and deleted keys, so
    /// readers hear of deletes), the most recently changed.
    pub fn keyed(schema: SchemaRef, key: Vec<usize>, max_rows: usize) -> Result<Self> {
        let table = keyed::Table::new(schema.clone(), key, max_rows)?;
        Ok(ViewBuffer {
            keyed: Some(RwLock::new(table)),
            ..ViewBuffer::new(schema, max_rows)
        })
    }

    /// Whether this is an updating view's buffer (current rows by key).
    pub fn is_keyed(&self) -> bool {
        self.keyed.is_some()
    }

    /// Retain `batch`, whose first row has seq `first_seq`, and hand it to subscribers. An
    /// updating view's batch is a batch of changes (`changelog.rs`), applied to its rows.
    pub fn push(
        &self,
        first_seq: u64,
        batch: RecordBatch,
        watermark: Option<i64>,
        at_us: i64,
    ) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        // Retained for hours: only its rows, not the buffers of a whole DataFusion batch.
        let batch = crate::compact::compact(batch);
        let mut g = self.inner.write();
        if let Some(table) = &self.keyed {
            // `retention.rows` 0: no rows kept for readers, only the numbering.
            if self.max_rows > 0 {
                table.write().apply(first_seq, &batch)?;
            }
            g.last_seq = first_seq + batch.num_rows() as u64 - 1;
            let _ = self.tx.send(ViewEvent::Rows(Arc::new(Emitted {
                first_seq,
                batch,
                watermark,
                emitted_at_us: at_us,
            })));
            return Ok(());
        }
        g.last_seq = first_seq + batch.num_rows() as u64 - 1;
        if self.max_rows > 0 {
            g.rows += batch.num_rows();
            g.batches.push_back((first_seq, batch.clone()));
            while g.rows > self.max_rows {
                let Some((seq, front)) = g.batches.front().cloned() else {
                    break;
                };
                let excess = g.rows - self.max_rows;
                if front.num_rows() <= excess {
                    g.rows -= front.num_rows();
                    g.batches.pop_front();
                } else {
                    let keep = front.slice(excess, front.num_rows() - excess);
                    g.rows -= excess;
                    g.batches[0] = (seq + excess as u64, keep);
                }
            }
        }
        // Sent under the lock, so a subscriber that subscribes and then reads the retained
        // rows sees every batch in one or the other (or both: it skips by seq). Sending
        // fails only when nobody subscribes, which loses nothing: the rows are retained.
        let _ = self.tx.send(ViewEvent::Rows(Arc::new(Emitted {
            first_seq,
            batch,
            watermark,
            emitted_at_us: at_us,
        })));
        Ok(())
    }

    /// An updating view's rows: its current rows (`since_seq` None, or older than the
    /// changes it keeps), or the latest change of each key changed after `since_seq`, at
    /// most `limit`, oldest change first. `None` for an append-only view.
    pub fn keyed_page(&self, since_seq: Option<u64>, limit: usize) -> Option<Result<KeyedPage>> {
        let table = self.keyed.as_ref()?;
        // The seq is read under the same lock push holds while applying.
        let g = self.inner.read();
        Some(table.read().page(since_seq, limit, g.last_seq))
    }

    /// An updating view's key columns (indices into [`ViewBuffer::schema`]); `None` for
    /// an append-only view.
    pub fn key_columns(&self) -> Option<Vec<usize>> {
        self.keyed.as_ref().map(|t| t.read().key().to_vec())
    }

    /// How many current rows an updating view has (`None` for an append-only view).
    pub fn current_rows(&self) -> Option<usize> {
        self.keyed.as_ref().map(|t| t.read().live())
    }

    /// The retained rows, oldest first (an updating view: its current rows).
    pub fn snapshot(&self) -> Vec<RecordBatch> {
        if let Some(table) = &self.keyed {
            return match table.read().current() {
                Ok(b) => vec![b],
                Err(e) => {
                    tracing::error!(error = %e, "reading an updating view's rows");
                    vec![]
                }
            };
        }
        self.inner
            .read()
            .batches
            .iter()
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// The retained rows with their seqs.
    pub fn retained(&self) -> RetainedRows {
        let g = self.inner.read();
        RetainedRows {
            batches: g.batches.iter().cloned().collect(),
            last_seq: g.last_seq,
        }
    }

    /// A page of retained rows without copying the rest: the `limit` rows after
    /// `since_seq`, or the newest `limit` rows. Returns the seq of the page's first row
    /// (`None` when it is empty), its rows, and the seq of the newest row emitted.
    pub fn page(
        &self,
        since_seq: Option<u64>,
        limit: usize,
    ) -> (Option<u64>, Vec<RecordBatch>, u64) {
        let g = self.inner.read();
        let Some(&(oldest, _)) = g.batches.front() else {
            return (None, vec![], g.last_seq);
        };
        let newest_kept = g.last_seq;
        let from = match since_seq {
            Some(since) => since.saturating_add(1).max(oldest),
            None => newest_kept
                .saturating_sub(limit as u64)
                .saturating_add(1)
                .max(oldest),
        };
        if from > newest_kept || limit == 0 {
            return (None, vec![], g.last_seq);
        }
        // The batch holding `from`: the last one starting at or before it.
        let start = g
            .batches
            .partition_point(|(seq, _)| *seq <= from)
            .saturating_sub(1);
        let mut out = Vec::new();
        let mut left = limit;
        for (seq, b) in g.batches.range(start..) {
            if left == 0 {
                break;
            }
            let skip = from.saturating_sub(*seq) as usize;
            if skip >= b.num_rows() {
                continue;
            }
            let n = (b.num_rows() - skip).min(left);
            out.push(b.slice(skip, n));
            left -= n;
        }
        (Some(from), out, g.last_seq)
    }

    /// The seq of the newest row emitted.
    pub fn last_seq(&self) -> u64 {
        self.inner.read().last_seq
    }

    /// What a checkpoint keeps: the seq of the first retained row and the retained rows
    /// (an updating view: its keys' latest changes, each with its seq).
    pub fn checkpoint_rows(&self) -> Result<(u64, Vec<RecordBatch>)> {
        if let Some(table) = &self.keyed {
            return Ok((0, vec![table.read().checkpoint()?]));
        }
        let retained = self.retained();
        let first = retained.batches.first().map_or(0, |(seq, _)| *seq);
        Ok((
            first,
            retained.batches.into_iter().map(|(_, b)| b).collect(),
        ))
    }

    /// Put back retained rows and numbering from a checkpoint (before any row): `rows`
    /// start at seq `first_seq`; the newest row emitted had seq `last_seq`.
    pub fn restore(&self, first_seq: u64, rows: Vec<RecordBatch>, last_seq: u64) -> Result<()> {
        if let Some(table) = &self.keyed {
            table.write().restore(&rows)?;
            let mut g = self.inner.write();
            g.last_seq = g.last_seq.max(last_seq);
            return Ok(());
        }
        let mut g = self.inner.write();
        g.batches.clear();
        g.rows = 0;
        let mut seq = first_seq;
        for b in rows {
            if b.num_rows() == 0 {
                continue;
            }
            let n = b.num_rows();
            g.rows += n;
            g.batches.push_back((seq, b));
            seq += n as u64;
        }
        g.last_seq = last_seq.max(seq.saturating_sub(1));
        Ok(())
    }

    /// Continue the numbering after `last_seq` with no rows retained (a view restored
    /// without its rows, or created again under a dropped view's name).
    pub fn resume(&self, last_seq: u64) {
        let mut g = self.inner.write();
        if g.batches.is_empty() {
            g.last_seq = g.last_seq.max(last_seq);
        }
    }

    /// Live emissions from now on. Subscribe first, then read [`ViewBuffer::retained`].
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<ViewEvent> {
        self.tx.subscribe()
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// The view was dropped: tell subscribers.
    pub fn close(&self) {
        // No subscribers is fine: nobody needs telling.
        let _ = self.tx.send(ViewEvent::Dropped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn batch(values: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values.to_vec()))]).unwrap()
    }

    #[test]
    fn retains_the_newest_rows_and_pages_by_seq() {
        let b = ViewBuffer::new(batch(&[]).schema(), 4);
        let mut rx = b.subscribe();
        b.push(1, batch(&[1, 2, 3]), None, 0).unwrap();
        b.push(4, batch(&[4, 5, 6]), Some(9), 0).unwrap();
        assert_eq!(b.last_seq(), 6);
        let r = b.retained();
        assert_eq!(r.batches.first().map(|(s, _)| *s), Some(3));
        assert_eq!(
            r.batches.iter().map(|(_, b)| b.num_rows()).sum::<usize>(),
            4
        );
        let (first, rows, last) = b.page(Some(3), 2);
        assert_eq!((first, last), (Some(4), 6));
        assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
        let (first, _, _) = b.page(None, 10);
        assert_eq!(first, Some(3));
        match rx.try_recv().unwrap() {
            ViewEvent::Rows(e) => assert_eq!((e.first_seq, e.last_seq()), (1, 3)),
            ViewEvent::Dropped => panic!("rows expected"),
        }
    }

    #[test]
    fn restore_and_resume_continue_the_numbering() {
        let b = ViewBuffer::new(batch(&[]).schema(), 10);
        b.restore(5, vec![batch(&[1, 2])], 9).unwrap();
        assert_eq!(b.last_seq(), 9);
        assert_eq!(b.retained().batches[0].0, 5);
        let c = ViewBuffer::new(batch(&[]).schema(), 10);
        c.resume(42);
        assert_eq!(c.last_seq(), 42);
        assert_eq!(c.page(None, 5), (None, vec![], 42));
    }
}
