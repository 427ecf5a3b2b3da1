//! Eviction: as the inputs' watermarks move, the stored rows no row of the other side can
//! match any more (by window, or by time band) go, an outer side's unmatched ones
//! NULL-padded.

use super::{SideState, StreamJoin, TimeKey, eval_keys, other};
use crate::error::Result;
use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::record_batch::RecordBatch;

/// Watermark `w` moved by `by` ms; the end of input (`i64::MAX`) stays the end.
pub(super) fn shift(w: i64, by: i64) -> i64 {
    if w == i64::MAX {
        w
    } else {
        w.saturating_add(by)
    }
}

impl StreamJoin {
    /// The inputs' watermarks moved: with a time key, evict the rows no future row of the
    /// other side can match, and return the unmatched ones of an outer side, NULL-padded.
    /// The state is rebuilt once a quarter of a side is evictable, so the cost is amortised
    /// over the evicted rows; an outer side evicts as soon as it can, so its unmatched rows
    /// are not held back.
    pub fn advance(&mut self, watermarks: [i64; 2]) -> Result<Vec<RecordBatch>> {
        for (w, n) in self.watermarks.iter_mut().zip(watermarks) {
            *w = (*w).max(n);
        }
        if self.time_key.is_none() && self.band.is_none() {
            return Ok(vec![]);
        }
        let mut out = Vec::new();
        for side in 0..2 {
            let bound = self.evict_bound(side);
            let s = &self.sides[side];
            let evictable: usize = s.time_counts.range(..bound).map(|(_, n)| n).sum();
            if evictable > 0 && (self.outer[side] || evictable * 4 >= s.rows()) {
                out.extend(self.evict(side, bound)?);
            }
        }
        Ok(out)
    }

    /// Rows of `side` whose time (key) is below this can never match again.
    fn evict_bound(&self, side: usize) -> i64 {
        let w = self.watermarks[other(side)];
        match (self.time_key, self.band) {
            (Some((_, kinds)), _) => match kinds[other(side)] {
                // The other side's future rows have window_start >= w.
                TimeKey::WindowStart => w,
                // ... and window_end > window_start >= w.
                TimeKey::WindowEnd => w.saturating_add(1),
            },
            // The right side's future rows have t >= w, and match a left row only while
            // t - left.t <= hi: left rows with left.t < w - hi cannot match any more.
            (None, Some(b)) if side == 0 => shift(w, b.hi.saturating_neg()),
            // Left rows to come have t >= w and match a right row only while right.t - t
            // >= lo: right rows with right.t < w + lo cannot.
            (None, Some(b)) => shift(w, b.lo),
            (None, None) => i64::MIN,
        }
    }

    /// Drop the rows of `side` whose time key is below `bound`; rebuild its index. Returns
    /// the dropped rows that never matched, NULL-padded, when `side` is an outer side.
    fn evict(&mut self, side: usize, bound: i64) -> Result<Vec<RecordBatch>> {
        let outer = self.outer[side];
        let s = &self.sides[side];
        let mut kept = Vec::with_capacity(s.batches.len());
        let mut unmatched = Vec::new();
        let mut matched = Vec::new();
        let mut g = 0usize;
        for b in &s.batches {
            let range = g..g + b.num_rows();
            let keep: BooleanArray = s.times[range.clone()]
                .iter()
                .map(|t| Some(*t >= bound))
                .collect();
            if outer {
                let gone: BooleanArray = s.times[range.clone()]
                    .iter()
                    .zip(&s.matched[range.clone()])
                    .map(|(t, m)| Some(*t < bound && !*m))
                    .collect();
                let u = filter_record_batch(b, &gone)?;
                if u.num_rows() > 0 {
                    unmatched.push(u);
                }
                matched.extend(
                    range
                        .clone()
                        .filter(|&i| s.times[i] >= bound)
                        .map(|i| s.matched[i]),
                );
            }
            g += b.num_rows();
            let f = filter_record_batch(b, &keep)?;
            if f.num_rows() > 0 {
                kept.push(f);
            }
        }
        let schema = s.schema.clone();
        let kept = if kept.len() > 1 {
            vec![concat_batches(&schema, &kept)?]
        } else {
            kept
        };
        self.reload(side, kept, &matched)?;
        unmatched.iter().map(|u| self.padded(side, u)).collect()
    }

    /// Replace the rows of `side` with `batches` (no probing); `matched`: an outer side's
    /// flags for those rows, in order.
    pub(super) fn reload(
        &mut self,
        side: usize,
        batches: Vec<RecordBatch>,
        matched: &[bool],
    ) -> Result<()> {
        let schema = self.sides[side].schema.clone();
        self.sides[side] = SideState::new(schema);
        let mut at = 0;
        for b in batches {
            if b.num_rows() == 0 {
                continue;
            }
            let keys = eval_keys(&self.keys[side], &self.key_types, &b)?;
            let rows = self.converter.convert_columns(&keys)?;
            let end = (at + b.num_rows()).min(matched.len());
            let flags = &matched[at.min(end)..end];
            at += b.num_rows();
            self.insert(side, b, &rows, &keys, flags)?;
        }
        Ok(())
    }
}
