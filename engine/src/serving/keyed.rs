//! The serving side of an updating view: its current rows by key, each with the seq of the
//! change that made it. A deleted key stays as a tombstone, so a reader asking for the
//! changes since a seq hears about the delete. Bounded by `retention.rows` entries, the
//! oldest changes dropped first; a reader asking from before what was dropped starts over
//! from the current rows.

use crate::changelog::{self, DELETE, INSERT};
use crate::error::{Result, WeirError};
use datafusion::arrow::array::{ArrayRef, Int8Array, UInt32Array, UInt64Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use std::collections::VecDeque;
use std::sync::Arc;

/// The column checkpoints keep each entry's seq in.
const SEQ_COLUMN: &str = "__seq";

/// One key's latest change.
struct Entry {
    seq: u64,
    /// The row (row format), or `None` when the change was a delete.
    row: Option<Box<[u8]>>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("entries", &self.entries.len())
            .field("live", &self.live)
            .finish()
    }
}

pub(super) struct Table {
    schema: SchemaRef,
    key: Vec<usize>,
    keys: RowConverter,
    rows: RowConverter,
    entries: crate::FastMap<Arc<[u8]>, Entry>,
    /// `(seq, key)` in seq order, one per change applied; an element whose key has
    /// changed since (its entry has a newer seq) is stale and skipped. Compacted when
    /// stale elements outnumber the entries.
    by_seq: VecDeque<(u64, Arc<[u8]>)>,
    live: usize,
    max_entries: usize,
    /// Changes up to this seq may have been dropped (0: none was).
    dropped_through: u64,
}

/// Rows of an updating view as a reader gets them.
#[derive(Debug, Clone)]
pub struct KeyedPage {
    /// Each row's seq (the change that made it), ascending.
    pub seqs: Vec<u64>,
    /// The rows: the view's columns (all nullable), then the op column (`changelog.rs`).
    /// Current rows are inserts; a key deleted after the reader's seq is a delete, with
    /// its key columns set and the others null.
    pub rows: RecordBatch,
    /// True when these are the view's current rows from scratch (no `since_seq`, or one
    /// older than the changes kept): the reader replaces what it has.
    pub reset: bool,
    /// The seq of the newest change the view has made.
    pub last_seq: u64,
}

impl Table {
    pub fn new(schema: SchemaRef, key: Vec<usize>, max_entries: usize) -> Result<Self> {
        let field = |i: &usize| SortField::new(schema.field(*i).data_type().clone());
        let keys = RowConverter::new(key.iter().map(field).collect())?;
        let all: Vec<usize> = (0..schema.fields().len()).collect();
        let rows = RowConverter::new(all.iter().map(field).collect())?;
        Ok(Table {
            schema,
            key,
            keys,
            rows,
            entries: crate::FastMap::default(),
            by_seq: VecDeque::new(),
            live: 0,
            max_entries: max_entries.max(1),
            dropped_through: 0,
        })
    }

    /// The key columns' indices in the view's schema.
    pub fn key(&self) -> &[usize] {
        &self.key
    }

    /// How many keys have a row now.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Apply a batch of changes whose first row has seq `first_seq`.
    pub fn apply(&mut self, first_seq: u64, changes: &RecordBatch) -> Result<()> {
        let (rows, ops) = changelog::split(changes)?;
        self.put(&rows, &ops, |i| first_seq + i as u64)?;
        while self.entries.len() > self.max_entries {
            let Some((seq, key)) = self.by_seq.pop_front() else {
                break;
            };
            if self.entries.get(&key).is_some_and(|e| e.seq == seq) {
                if let Some(e) = self.entries.remove(&key)
                    && e.row.is_some()
                {
                    self.live -= 1;
                }
                self.dropped_through = self.dropped_through.max(seq);
            }
        }
        if self.by_seq.len() > 2 * self.entries.len() + 1024 {
            let entries = &self.entries;
            self.by_seq
                .retain(|(seq, key)| entries.get(key).is_some_and(|e| e.seq == *seq));
        }
        Ok(())
    }

    /// Apply changes: per key only its last change in `rows` counts (the earlier ones are
    /// superseded), so only those are converted and stored.
    fn put(
        &mut self,
        rows: &RecordBatch,
        ops: &Int8Array,
        seq: impl Fn(usize) -> u64,
    ) -> Result<()> {
        let last = changelog::last_per_key(rows, &self.key)?;
        let idx = UInt32Array::from(last.clone());
        let key_cols: Vec<ArrayRef> = self
            .key
            .iter()
            .map(|&k| Ok(take(rows.column(k).as_ref(), &idx, None)?))
            .collect::<Result<_>>()?;
        let key_rows = (!key_cols.is_empty())
            .then(|| self.keys.convert_columns(&key_cols))
            .transpose()?;
        // Full rows only for the keys whose last change is an insert.
        let live: Vec<u32> = last
            .iter()
            .copied()
            .filter(|&i| ops.value(i as usize) != DELETE)
            .collect();
        let live_idx = UInt32Array::from(live);
        let live_cols: Vec<ArrayRef> = rows
            .columns()
            .iter()
            .map(|c| Ok(take(c.as_ref(), &live_idx, None)?))
            .collect::<Result<_>>()?;
        let full = self.rows.convert_columns(&live_cols)?;
        let mut next_live = 0;
        for (j, &i) in last.iter().enumerate() {
            let key: &[u8] = match &key_rows {
                Some(k) => k.row(j).data(),
                None => &[],
            };
            let row = (ops.value(i as usize) != DELETE).then(|| {
                next_live += 1;
                full.row(next_live - 1).data().into()
            });
            self.set(key, seq(i as usize), row);
        }
        Ok(())
    }

    fn set(&mut self, key: &[u8], seq: u64, row: Option<Box<[u8]>>) {
        let live = row.is_some();
        let stored = self
            .entries
            .get_key_value(key)
            .map(|(k, e)| (k.clone(), e.row.is_some()));
        let key: Arc<[u8]> = match stored {
            Some((k, was_live)) => {
                if was_live {
                    self.live -= 1;
                }
                k
            }
            None => key.into(),
        };
        // Replaces the entry of an existing key (keeping the stored key).
        self.entries.insert(key.clone(), Entry { seq, row });
        if live {
            self.live += 1;
        }
        self.by_seq.push_back((seq, key));
    }

    /// `(seq, key)` of every entry, oldest change first, from seq `from` on.
    fn ordered(&self, from: u64) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        let start = self.by_seq.partition_point(|(s, _)| *s < from);
        self.by_seq
            .range(start..)
            .filter(|(seq, key)| self.entries.get(key).is_some_and(|e| e.seq == *seq))
            .map(|(seq, key)| (*seq, key.as_ref()))
    }

    /// The current rows (`since_seq` None or older than the changes kept), or the latest
    /// change of every key changed after `since_seq`; at most `limit`, oldest change first.
    pub fn page(&self, since_seq: Option<u64>, limit: usize, last_seq: u64) -> Result<KeyedPage> {
        let (from, reset) = match since_seq {
            Some(s) if s >= self.dropped_through => (s.saturating_add(1), false),
            _ => (0, true),
        };
        let picked: Vec<(u64, &[u8])> = self
            .ordered(from)
            // A reader starting over does not need to hear of deleted keys.
            .filter(|(_, key)| !reset || self.entries[*key].row.is_some())
            .take(limit)
            .collect();
        let seqs = picked.iter().map(|(s, _)| *s).collect();
        let keys: Vec<&[u8]> = picked.iter().map(|(_, k)| *k).collect();
        Ok(KeyedPage {
            seqs,
            rows: self.changes_of(&keys)?,
            reset,
            last_seq,
        })
    }

    /// The entries of `keys` as changes: a live row is an insert, a tombstone a delete
    /// with its key columns set and the others null.
    fn changes_of(&self, keys: &[&[u8]]) -> Result<RecordBatch> {
        let schema = changelog::with_op(&nullable(&self.schema));
        if keys.is_empty() {
            return Ok(RecordBatch::new_empty(schema));
        }
        let entries: Vec<&Entry> = keys.iter().map(|k| &self.entries[*k]).collect();
        let parser = self.rows.parser();
        let live: Vec<_> = entries
            .iter()
            .filter_map(|e| e.row.as_deref())
            .map(|r| parser.parse(r))
            .collect();
        let positions = crate::window::positions_of(entries.iter().map(|e| e.row.is_some()));
        let mut cols: Vec<ArrayRef> = if live.is_empty() {
            self.schema
                .fields()
                .iter()
                .map(|f| datafusion::arrow::array::new_null_array(f.data_type(), keys.len()))
                .collect()
        } else {
            self.rows
                .convert_rows(live)?
                .iter()
                .map(|c| Ok(take(c.as_ref(), &positions, None)?))
                .collect::<Result<_>>()?
        };
        if !self.key.is_empty() {
            let parser = self.keys.parser();
            let key_cols = self
                .keys
                .convert_rows(keys.iter().map(|k| parser.parse(k)))?;
            for (j, &k) in self.key.iter().enumerate() {
                cols[k] = key_cols[j].clone();
            }
        }
        cols.push(Arc::new(Int8Array::from_iter_values(
            entries
                .iter()
                .map(|e| if e.row.is_some() { INSERT } else { DELETE }),
        )));
        Ok(RecordBatch::try_new(schema, cols)?)
    }

    /// The current rows, oldest change first.
    pub fn current(&self) -> Result<RecordBatch> {
        let parser = self.rows.parser();
        let rows: Vec<_> = self
            .ordered(0)
            .filter_map(|(_, k)| self.entries[k].row.as_deref())
            .map(|r| parser.parse(r))
            .collect();
        if rows.is_empty() {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        }
        let cols = self.rows.convert_rows(rows)?;
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }

    /// Every entry for a checkpoint: current rows and tombstones as changes, with seqs.
    pub fn checkpoint(&self) -> Result<RecordBatch> {
        let (seqs, keys): (Vec<u64>, Vec<&[u8]>) = self.ordered(0).unzip();
        let batch = self.changes_of(&keys)?;
        let mut fields: Vec<Field> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(SEQ_COLUMN, DataType::UInt64, false));
        let mut cols = batch.columns().to_vec();
        cols.push(Arc::new(UInt64Array::from(seqs)));
        Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
    }

    /// Put back entries from [`Table::checkpoint`].
    pub fn restore(&mut self, batches: &[RecordBatch]) -> Result<()> {
        self.entries.clear();
        self.by_seq.clear();
        self.live = 0;
        for b in batches {
            let last = b.num_columns().saturating_sub(1);
            let seqs = (b.num_columns() >= 2 && b.schema().field(last).name() == SEQ_COLUMN)
                .then(|| {
                    b.column(last)
                        .as_any()
                        .downcast_ref::<UInt64Array>()
                        .cloned()
                })
                .flatten()
                .ok_or_else(|| {
                    WeirError::Internal(
                        "checkpointed rows of an updating view without their seqs".into(),
                    )
                })?;
            let (rows, ops) = changelog::split(&b.project(&(0..last).collect::<Vec<_>>())?)?;
            let rows = crate::window::batch_in(&nullable(&self.schema), rows.columns().to_vec())?;
            self.put(&rows, &ops, |i| seqs.value(i))?;
        }
        Ok(())
    }
}

/// `schema` with every field nullable (a deleted key's other columns are null).
fn nullable(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Int64Array, StringArray};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]))
    }

    fn changes(rows: &[(&str, i64, i8)]) -> RecordBatch {
        RecordBatch::try_new(
            changelog::with_op(&schema()),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Int8Array::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .unwrap()
    }

    fn listed(b: &RecordBatch) -> Vec<(String, Option<i64>, i8)> {
        let k = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let n = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        let op = b.column(2).as_any().downcast_ref::<Int8Array>().unwrap();
        (0..b.num_rows())
            .map(|i| {
                (
                    k.value(i).to_string(),
                    n.is_valid(i).then(|| n.value(i)),
                    op.value(i),
                )
            })
            .collect()
    }

    #[test]
    fn keeps_current_rows_and_tells_deletes_since_a_seq() {
        let mut t = Table::new(schema(), vec![0], 10).unwrap();
        t.apply(1, &changes(&[("a", 1, INSERT), ("b", 1, INSERT)]))
            .unwrap();
        t.apply(
            3,
            &changes(&[("a", 1, DELETE), ("a", 2, INSERT), ("b", 1, DELETE)]),
        )
        .unwrap();
        assert_eq!(t.live(), 1);
        assert_eq!(t.current().unwrap().num_rows(), 1);
        let p = t.page(None, 10, 5).unwrap();
        assert!(p.reset);
        assert_eq!(p.seqs, vec![4]);
        assert_eq!(listed(&p.rows), vec![("a".into(), Some(2), INSERT)]);
        let p = t.page(Some(2), 10, 5).unwrap();
        assert!(!p.reset);
        assert_eq!(p.seqs, vec![4, 5]);
        assert_eq!(
            listed(&p.rows),
            vec![("a".into(), Some(2), INSERT), ("b".into(), None, DELETE)]
        );
        assert_eq!(t.page(Some(2), 1, 5).unwrap().seqs, vec![4]);
        // Checkpoint and back: the tombstone keeps its key.
        let mut back = Table::new(schema(), vec![0], 10).unwrap();
        back.restore(&[t.checkpoint().unwrap()]).unwrap();
        assert_eq!(back.live(), 1);
        let p = back.page(Some(2), 10, 5).unwrap();
        assert_eq!(p.seqs, vec![4, 5]);
        assert_eq!(listed(&p.rows)[1], ("b".into(), None, DELETE));
    }

    #[test]
    fn a_key_changed_many_times_is_one_entry() {
        let mut t = Table::new(schema(), vec![0], 10).unwrap();
        for i in 0..5000u64 {
            t.apply(i + 1, &changes(&[("a", i as i64, INSERT)]))
                .unwrap();
        }
        assert!(
            t.by_seq.len() <= 2 * t.entries.len() + 1025,
            "{}",
            t.by_seq.len()
        );
        let p = t.page(Some(10), 10, 5000).unwrap();
        assert_eq!(p.seqs, vec![5000]);
        assert_eq!(listed(&p.rows), vec![("a".into(), Some(4999), INSERT)]);
    }

    #[test]
    fn drops_the_oldest_changes_beyond_its_bound() {
        let mut t = Table::new(schema(), vec![0], 2).unwrap();
        t.apply(
            1,
            &changes(&[("a", 1, INSERT), ("b", 1, INSERT), ("c", 1, INSERT)]),
        )
        .unwrap();
        assert_eq!(t.live(), 2);
        // A reader from before the dropped change starts over.
        assert!(t.page(Some(0), 10, 3).unwrap().reset);
        assert!(!t.page(Some(1), 10, 3).unwrap().reset);
    }
}
