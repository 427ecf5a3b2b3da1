//! Numbering of a view's output rows. Each view has one [`Sequencer`], the only owner of
//! its two numberings:
//!
//! - **seq**: 1, 2, 3, ... over every row the view emits, with no gaps. Subscribers and
//!   REST readers resume with `since_seq`.
//! - **row ids** ([`RowIds`]): per origin (a source partition for stateless and join views,
//!   [`RowIds::CLOSES`] for rows emitted when windows close), a counter of the rows from
//!   that origin. A replay after a restore produces the same rows from the same origins in
//!   the same order, so they get the same ids and sinks that write by id never duplicate.
//!
//! A sequencer is persisted in exactly one place: the checkpoint (see `checkpoint.rs`).
//! When a view is dropped its sequencer stays with the pipeline, so a view created again
//! under the same name goes on numbering instead of reusing seqs.

use crate::connector::RowIds;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sequencer {
    /// The seq of the last row emitted (0 before the first).
    last_seq: u64,
    /// Rows emitted so far per row-id origin.
    row_counters: BTreeMap<u32, u64>,
}

/// Where one emitted batch sits in its view's numberings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Numbered {
    /// The seq of the batch's first row.
    pub first_seq: u64,
    pub ids: RowIds,
}

impl Sequencer {
    /// Number `rows` more rows from `origin`.
    pub fn next(&mut self, origin: u32, rows: usize) -> Numbered {
        let first_seq = self.last_seq + 1;
        self.last_seq += rows as u64;
        let c = self.row_counters.entry(origin).or_default();
        let ids = RowIds { origin, first: *c };
        *c += rows as u64;
        Numbered { first_seq, ids }
    }

    /// Rows numbered so far from `origin`.
    pub fn rows_from(&self, origin: u32) -> u64 {
        self.row_counters.get(&origin).copied().unwrap_or(0)
    }

    /// The seq of the last row emitted.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_are_gap_free_and_row_ids_count_per_origin() {
        let mut s = Sequencer::default();
        let a = s.next(0, 3);
        let b = s.next(RowIds::CLOSES, 2);
        let c = s.next(0, 1);
        assert_eq!((a.first_seq, b.first_seq, c.first_seq), (1, 4, 6));
        assert_eq!(s.last_seq(), 6);
        assert_eq!(
            a.ids,
            RowIds {
                origin: 0,
                first: 0
            }
        );
        assert_eq!(
            b.ids,
            RowIds {
                origin: RowIds::CLOSES,
                first: 0
            }
        );
        assert_eq!(
            c.ids,
            RowIds {
                origin: 0,
                first: 3
            }
        );
    }

    #[test]
    fn a_restored_sequencer_numbers_a_replay_the_same_way() {
        let mut s = Sequencer::default();
        s.next(1, 5);
        let saved: Sequencer = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        let mut replay = saved.clone();
        assert_eq!(replay.next(1, 2), s.next(1, 2));
        assert_eq!(replay, s);
    }
}
