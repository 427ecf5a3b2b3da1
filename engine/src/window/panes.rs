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
    pub fn early(&mut self, layout: &Layout, closed_through: i64) -> Result<Vec<PaneWindow>> {
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
        let mut out = Vec::with_capacity(starts.len());
        for s in starts {
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
