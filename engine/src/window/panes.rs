//! TUMBLE and HOP state: panes.
//!
//! A pane is a `slide`-wide slice of event time (`[p, p + slide)`, aligned to the epoch);
//! a window of `size` is `size / slide` consecutive panes (one for TUMBLE, where slide =
//! size). Each row is folded into its pane only, once, whatever the number of windows that
//! contain it. When a window closes (or is emitted early), its panes' intermediate states
//! are merged into fresh accumulators and evaluated; a pane lives until the last window
//! containing it, `[p, p + size)`, closes, and that window takes the pane's accumulators
//! over instead of copying them.
//!
//! A pane that a window has read is frozen: its accumulators' state is kept as arrays
//! ([`State`]), so the next windows merge it without recomputing. Rows that arrive for a
//! frozen pane (out of order, still on time for one of its windows) go into fresh live
//! accumulators, merged into the frozen state the next time it is read.

use super::groups::{Groups, Layout, State};
use crate::error::Result;
use datafusion::arrow::array::{ArrayRef, BooleanArray};
use std::collections::{BTreeMap, BTreeSet};

/// One closed or early window: its start, then its groups' keys, values and count.
pub(crate) type PaneWindow = (i64, Vec<ArrayRef>, Vec<ArrayRef>, usize);

#[derive(Default)]
struct Pane {
    live: Option<Groups>,
    frozen: Option<State>,
    /// Changed since the last early emission.
    dirty: bool,
}

impl Pane {
    /// The pane's whole state as arrays (live rows merged into the frozen state).
    fn freeze(&mut self, layout: &Layout) -> Result<Option<&State>> {
        if let Some(mut live) = self.live.take()
            && live.len() > 0
        {
            if let Some(f) = self.frozen.take() {
                live.merge(&f, layout)?;
            }
            self.frozen = Some(live.take_state()?);
        }
        Ok(self.frozen.as_ref())
    }

    /// The pane's accumulators, for its last window.
    fn into_groups(mut self, layout: &Layout) -> Result<Groups> {
        let mut g = match self.live.take() {
            Some(g) => g,
            None => Groups::new(layout)?,
        };
        if let Some(f) = &self.frozen {
            g.merge(f, layout)?;
        }
        Ok(g)
    }

    fn groups(&self) -> usize {
        self.live.as_ref().map_or(0, |g| g.len()) + self.frozen.as_ref().map_or(0, |f| f.rows)
    }

    fn size(&self) -> usize {
        let frozen = self.frozen.as_ref().map_or(0, |f| {
            f.keys
                .iter()
                .chain(&f.states)
                .map(|a| a.get_array_memory_size())
                .sum()
        });
        self.live.as_ref().map_or(0, |g| g.size()) + frozen
    }
}

/// The starts of the `size`-long windows every `slide` containing pane `p` that end after
/// `after`, oldest first.
pub(crate) fn windows_of(slide: i64, size: i64, p: i64, after: i64) -> impl Iterator<Item = i64> {
    (0..size / slide)
        .rev()
        .map(move |j| p - j * slide)
        .filter(move |s| s.saturating_add(size) > after)
}

/// The start of the first window (`size` long, every `slide`) still open at `watermark`:
/// the smallest aligned start with an end after it.
pub(crate) fn first_open_window(slide: i64, size: i64, watermark: i64) -> i64 {
    watermark
        .saturating_sub(size)
        .div_euclid(slide)
        .saturating_mul(slide)
        .saturating_add(slide)
}

pub(crate) struct Panes {
    pub slide: i64,
    pub size: i64,
    panes: BTreeMap<i64, Pane>,
}

impl Panes {
    pub fn new(slide: i64, size: i64) -> Self {
        Panes {
            slide,
            size,
            panes: BTreeMap::new(),
        }
    }

    /// Windows per pane.
    fn per_pane(&self) -> i64 {
        self.size / self.slide
    }

    /// The starts of the windows containing pane `p` that end after `after`, oldest first.
    fn windows_of(&self, p: i64, after: i64) -> impl Iterator<Item = i64> + use<> {
        windows_of(self.slide, self.size, p, after)
    }

    /// Fold rows of pane `p` in.
    pub fn update(
        &mut self,
        layout: &Layout,
        p: i64,
        keys: &[ArrayRef],
        args: &[Vec<ArrayRef>],
        filters: &[Option<BooleanArray>],
        rows: usize,
    ) -> Result<()> {
        let pane = self.panes.entry(p).or_default();
        let live = match &mut pane.live {
            Some(g) => g,
            None => pane.live.insert(Groups::new(layout)?),
        };
        live.update(keys, args, filters, rows)?;
        pane.dirty = true;
        Ok(())
    }

    /// Close the windows ending in `(before, through]`, oldest first.
    pub fn close(&mut self, layout: &Layout, before: i64, through: i64) -> Result<Vec<PaneWindow>> {
        let mut starts = BTreeSet::new();
        for &p in self.panes.range(..through).map(|(p, _)| p) {
            for s in self.windows_of(p, before) {
                if s.saturating_add(self.size) <= through {
                    starts.insert(s);
                }
            }
        }
        let mut out = Vec::with_capacity(starts.len());
        for s in starts {
            // The window's first pane has no later window: its accumulators are the base.
            let base = match self.panes.remove(&s) {
                Some(pane) => pane.into_groups(layout)?,
                None => Groups::new(layout)?,
            };
            out.extend(self.window(layout, s, base, 1)?);
        }
        Ok(out)
    }

    /// Window `s` evaluated: `base` with the state of its panes from the `first`-th on
    /// merged in (the panes stay).
    fn window(
        &mut self,
        layout: &Layout,
        s: i64,
        mut base: Groups,
        first: i64,
    ) -> Result<Option<PaneWindow>> {
        for p in (first..self.per_pane()).map(|j| s + j * self.slide) {
            if let Some(pane) = self.panes.get_mut(&p)
                && let Some(state) = pane.freeze(layout)?
            {
                base.merge(state, layout)?;
            }
        }
        let (keys, values, rows) = base.evaluate()?;
        Ok((rows > 0).then_some((s, keys, values, rows)))
    }

    /// Every window still open (ending after `closed_through`) with a pane that changed
    /// since the last call, evaluated without consuming anything, oldest first.
    #[cfg(test)]
    pub fn early(&mut self, layout: &Layout, closed_through: i64) -> Result<Vec<PaneWindow>> {
        let starts = self.changed_windows(closed_through);
        self.windows_at(layout, &starts)
    }

    /// The starts of the windows still open (ending after `closed_through`) with a pane
    /// that changed since the last call; clears the panes' flags.
    pub fn changed_windows(&mut self, closed_through: i64) -> BTreeSet<i64> {
        let mut starts = BTreeSet::new();
        for (&p, pane) in self.panes.iter_mut() {
            if std::mem::take(&mut pane.dirty) {
                starts.extend(
                    (0..self.size / self.slide)
                        .map(|j| p - j * self.slide)
                        .filter(|s| s.saturating_add(self.size) > closed_through),
                );
            }
        }
        starts
    }

    /// The windows starting at `starts` with at least one row, evaluated without consuming
    /// anything, oldest first.
    pub fn windows_at(
        &mut self,
        layout: &Layout,
        starts: &BTreeSet<i64>,
    ) -> Result<Vec<PaneWindow>> {
        let mut out = Vec::with_capacity(starts.len());
        for &s in starts {
            out.extend(self.window(layout, s, Groups::new(layout)?, 0)?);
        }
        Ok(out)
    }

    /// Every pane's state: `(pane start, changed since the last early emission, state)`.
    pub fn snapshot(&mut self, layout: &Layout) -> Result<Vec<(i64, bool, State)>> {
        let mut out = Vec::with_capacity(self.panes.len());
        for (&p, pane) in self.panes.iter_mut() {
            let dirty = pane.dirty;
            if let Some(state) = pane.freeze(layout)? {
                out.push((p, dirty, state.clone()));
            }
        }
        Ok(out)
    }

    /// Merge saved state into pane `p`.
    pub fn restore(&mut self, layout: &Layout, p: i64, dirty: bool, state: &State) -> Result<()> {
        let pane = self.panes.entry(p).or_default();
        let live = match &mut pane.live {
            Some(g) => g,
            None => pane.live.insert(Groups::new(layout)?),
        };
        live.merge(state, layout)?;
        pane.dirty |= dirty;
        Ok(())
    }

    /// Windows with at least one row that have not closed (end after `closed_through`).
    pub fn open_windows(&self, closed_through: i64) -> usize {
        // The union of each pane's open window starts: runs of consecutive slide steps.
        let mut count = 0i64;
        let mut covered_to = i64::MIN;
        for &p in self.panes.keys() {
            let Some(first) = self.windows_of(p, closed_through).next() else {
                continue;
            };
            let from = first.max(covered_to.saturating_add(self.slide));
            if from <= p {
                count += (p - from) / self.slide + 1;
            }
            covered_to = covered_to.max(p);
        }
        count as usize
    }

    /// Groups held over all panes (a group can be counted twice in a pane that has both
    /// frozen state and rows since).
    pub fn groups(&self) -> usize {
        self.panes.values().map(Pane::groups).sum()
    }

    pub fn size(&self) -> usize {
        self.panes.values().map(Pane::size).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::groups::{test_layout, test_rows, test_sums};

    /// Windows as `(start, [(key, sum)])`.
    fn sums(windows: Vec<PaneWindow>) -> Vec<(i64, Vec<(String, i64)>)> {
        windows
            .into_iter()
            .map(|(s, k, v, _)| (s, test_sums(&k, &v)))
            .collect()
    }

    fn add(p: &mut Panes, layout: &Layout, pane: i64, rows: &[(&str, i64)]) {
        let (keys, args) = test_rows(rows);
        p.update(layout, pane, &keys, &args, &[None], rows.len())
            .expect("update");
    }

    fn kv(k: &str, v: i64) -> (String, i64) {
        (k.to_string(), v)
    }

    #[test]
    fn pane_arithmetic() {
        // Windows of 30 every 10: pane 20 is in the windows starting at 0, 10 and 20.
        assert_eq!(
            windows_of(10, 30, 20, i64::MIN).collect::<Vec<_>>(),
            [0, 10, 20]
        );
        // Those ending after 35 only.
        assert_eq!(windows_of(10, 30, 20, 35).collect::<Vec<_>>(), [10, 20]);
        // Tumbling: one window per pane.
        assert_eq!(windows_of(10, 10, 20, i64::MIN).collect::<Vec<_>>(), [20]);
        assert_eq!(first_open_window(10, 30, 35), 10);
        assert_eq!(first_open_window(10, 30, 40), 20);
        assert_eq!(first_open_window(10, 10, 40), 40);
    }

    #[test]
    fn hop_windows_merge_their_panes_and_each_row_counts_once_per_window() {
        let layout = test_layout();
        let mut p = Panes::new(10, 30);
        add(&mut p, &layout, 0, &[("a", 1)]);
        add(&mut p, &layout, 10, &[("a", 2), ("b", 8)]);
        add(&mut p, &layout, 20, &[("b", 4)]);
        assert_eq!(p.open_windows(i64::MIN), 5, "windows -20, -10, 0, 10, 20");
        // Close the windows ending by 30: [-20, 10), [-10, 20), [0, 30).
        assert_eq!(
            sums(p.close(&layout, i64::MIN, 30).expect("close")),
            vec![
                (-20, vec![kv("a", 1)]),
                (-10, vec![kv("a", 3), kv("b", 8)]),
                (0, vec![kv("a", 3), kv("b", 12)]),
            ]
        );
        // A row for pane 10 after it was frozen by a window: on time for [10, 40).
        add(&mut p, &layout, 10, &[("a", 16)]);
        assert_eq!(
            sums(p.close(&layout, 30, 50).expect("close")),
            vec![(10, vec![kv("a", 18), kv("b", 12)]), (20, vec![kv("b", 4)]),]
        );
        assert_eq!(p.groups(), 0, "every pane's last window has closed");
        assert_eq!(p.open_windows(50), 0);
    }

    #[test]
    fn early_results_cover_the_open_windows_of_changed_panes_only() {
        let layout = test_layout();
        let mut p = Panes::new(10, 20);
        add(&mut p, &layout, 0, &[("a", 1)]);
        add(&mut p, &layout, 10, &[("a", 2)]);
        // Pane 0 is in windows -10 and 0; pane 10 in 0 and 10; window -10 has closed.
        assert_eq!(
            sums(p.early(&layout, 10).expect("early")),
            vec![(0, vec![kv("a", 3)]), (10, vec![kv("a", 2)])]
        );
        assert!(
            p.early(&layout, 10).expect("early").is_empty(),
            "nothing changed"
        );
        add(&mut p, &layout, 10, &[("b", 4)]);
        assert_eq!(
            sums(p.early(&layout, 10).expect("early")),
            vec![
                (0, vec![kv("a", 3), kv("b", 4)]),
                (10, vec![kv("a", 2), kv("b", 4)])
            ]
        );
    }

    #[test]
    fn a_restored_snapshot_closes_to_the_same_windows() {
        let layout = test_layout();
        let mut p = Panes::new(10, 20);
        add(&mut p, &layout, 0, &[("a", 1), ("b", 2)]);
        add(&mut p, &layout, 10, &[("a", 4)]);
        // Freeze pane 10 by reading it early, then add to it: frozen and live state both.
        p.early(&layout, i64::MIN).expect("early");
        add(&mut p, &layout, 10, &[("b", 8)]);
        let saved = p.snapshot(&layout).expect("snapshot");
        let mut q = Panes::new(10, 20);
        for (pane, dirty, state) in &saved {
            q.restore(&layout, *pane, *dirty, state).expect("restore");
        }
        let expected = sums(p.close(&layout, i64::MIN, 30).expect("close"));
        assert_eq!(
            sums(q.close(&layout, i64::MIN, 30).expect("close")),
            expected
        );
        assert_eq!(
            expected,
            vec![
                (-10, vec![kv("a", 1), kv("b", 2)]),
                (0, vec![kv("a", 5), kv("b", 10)]),
                (10, vec![kv("a", 4), kv("b", 8)]),
            ]
        );
    }
}
