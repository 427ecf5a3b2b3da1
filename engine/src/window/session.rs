//! SESSION state: per key, the open sessions (maximal runs of the key's rows whose event
//! times are less than `gap` apart), and their aggregates.
//!
//! All sessions share one set of DataFusion accumulators; each session owns one or more of
//! its groups ("slots"; more than one after two sessions merged, until they are compacted).
//! Rows are folded in vectorised, with the slot of their session as the group. A closing or
//! early-emitted session is read with `state(EmitTo::First(n))`: the first `n` slots are
//! taken out (the rest shift down, tracked by `base`), the sessions being emitted are
//! merged into fresh accumulators and evaluated, and the sessions still open among the `n`
//! are merged back into slots at the end (their slots collapse to one). Slots are handed
//! out in order of creation, so the oldest sessions, which close first, sit at the front.
//!
//! Why one file of over 800 lines: about 670 are code, the session list, the slot map and
//! the accumulators' `EmitTo::First` shifting, which keep one invariant (a slot index
//! means the same thing in all three); the rest are their unit tests.
//!
//! Keys are encoded with Arrow's row format and live in a table until they have no open
//! session and their last closed session can no longer matter (see [`Sessions::update`]).

use super::groups::{Accumulators, Layout};
use super::{LATE_NO_TIME, LateRow};
use crate::error::{Result, WeirError};
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::logical_expr::EmitTo;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};

pub(crate) const LATE_CLOSED: &str = "late: it belongs to a session that had already closed";
pub(crate) const LATE_OVER: &str = "late: it joins no open session, and a session of its own would have ended before the watermark";

struct Session {
    start: i64,
    last: i64,
    /// Virtual slot numbers (physical group = slot - base); the first one takes new rows.
    slots: Vec<u64>,
    /// Changed since the last early emission.
    dirty: bool,
}

struct KeyEntry {
    /// The key in Arrow's row format.
    row: Box<[u8]>,
    /// Open sessions, disjoint, by start.
    open: Vec<Session>,
    /// The newest closed session: `(start, last event time)`.
    closed: Option<(i64, i64)>,
    /// The time this key is due in the queue (the end of its first open session, or when
    /// its closed session stops mattering).
    queued: Option<i64>,
}

/// Keys to dense ids, with each key's sessions.
struct KeyTable {
    /// `None` when there are no key columns (one key, the empty row).
    converter: Option<RowConverter>,
    ids: HashMap<Box<[u8]>, usize>,
    entries: Vec<Option<KeyEntry>>,
    free: Vec<usize>,
    bytes: usize,
}

impl KeyTable {
    fn new(layout: &Layout) -> Result<Self> {
        let fields = layout.key_schema.fields();
        let converter = if fields.is_empty() {
            None
        } else {
            Some(RowConverter::new(
                fields
                    .iter()
                    .map(|f| SortField::new(f.data_type().clone()))
                    .collect(),
            )?)
        };
        Ok(KeyTable {
            converter,
            ids: HashMap::new(),
            entries: Vec::new(),
            free: Vec::new(),
            bytes: 0,
        })
    }

    /// The id of each row's key, adding new keys.
    fn lookup(&mut self, keys: &[ArrayRef], rows: usize) -> Result<Vec<usize>> {
        let encoded = match &self.converter {
            None => None,
            Some(c) => Some(c.convert_columns(keys)?),
        };
        Ok(match encoded {
            None => {
                let k = self.id_of(&[]);
                vec![k; rows]
            }
            Some(r) => (0..rows).map(|i| self.id_of(r.row(i).as_ref())).collect(),
        })
    }

    fn id_of(&mut self, row: &[u8]) -> usize {
        if let Some(&k) = self.ids.get(row) {
            return k;
        }
        let entry = KeyEntry {
            row: row.into(),
            open: Vec::new(),
            closed: None,
            queued: None,
        };
        self.bytes += row.len();
        let k = match self.free.pop() {
            Some(k) => {
                self.entries[k] = Some(entry);
                k
            }
            None => {
                self.entries.push(Some(entry));
                self.entries.len() - 1
            }
        };
        self.ids.insert(row.into(), k);
        k
    }

    fn remove(&mut self, k: usize) {
        if let Some(e) = self.entries.get_mut(k).and_then(Option::take) {
            self.bytes -= e.row.len();
            self.ids.remove(&e.row);
            self.free.push(k);
        }
    }

    /// Key columns for encoded rows.
    fn arrays(&self, rows: &[&[u8]]) -> Result<Vec<ArrayRef>> {
        match &self.converter {
            None => Ok(vec![]),
            Some(c) => {
                let parser = c.parser();
                Ok(c.convert_rows(rows.iter().map(|r| parser.parse(r)))?)
            }
        }
    }
}

/// Why a row is late: the window it missed (`None` without an event time) and the reason.
type Missed = (Option<(i64, i64)>, &'static str);

/// Saved sessions, as [`Sessions::snapshot`] gives them: per row the start, last event time
/// and whether it changed since the last early emission; whether these are closed sessions
/// (without state); the key columns and the state columns (empty for closed sessions).
pub(crate) struct SavedSessions {
    pub starts: Vec<i64>,
    pub lasts: Vec<i64>,
    pub dirty: Vec<bool>,
    pub closed: bool,
    pub keys: Vec<ArrayRef>,
    pub states: Vec<ArrayRef>,
}

/// Sessions being emitted: key row, start, last event time, and slots.
type Emitting = Vec<(Box<[u8]>, i64, i64, Vec<u64>)>;

/// Emitted sessions: `(starts, ends, keys, values)` in the order of `starts`.
pub(crate) type SessionRows = (Vec<i64>, Vec<i64>, Vec<ArrayRef>, Vec<ArrayRef>);

pub(crate) struct Sessions {
    pub gap: i64,
    keys: KeyTable,
    accs: Accumulators,
    /// The virtual slot number of physical group 0.
    base: u64,
    /// The key owning each physical group.
    owners: VecDeque<usize>,
    /// `(time, key)`: when a key's first open session ends, or its closed one expires.
    queue: BinaryHeap<Reverse<(i64, usize)>>,
    /// Open sessions' starts (start -> count), for the output watermark.
    starts: BTreeMap<i64, usize>,
    open: usize,
}

fn add_start(starts: &mut BTreeMap<i64, usize>, s: i64) {
    *starts.entry(s).or_default() += 1;
}

fn remove_start(starts: &mut BTreeMap<i64, usize>, s: i64) {
    if let Some(c) = starts.get_mut(&s) {
        *c -= 1;
        if *c == 0 {
            starts.remove(&s);
        }
    }
}

/// When key `e` next needs attention: the end of its first open session; with none open,
/// when its closed session stops mattering. A row less than a gap after the closed
/// session's last is late; with no open session, a row is taken only if its session ends
/// after the watermark (it starts after watermark - gap), and a row joining that session is
/// less than a gap before it: once the watermark is three gaps past the closed session,
/// neither can be near it, and the key is forgotten (but see `docs/windows.md` on chains of
/// rows arriving ever earlier).
fn next_due(e: &KeyEntry, gap: i64) -> Option<i64> {
    match (e.open.first(), e.closed) {
        (Some(s), _) => Some(s.last.saturating_add(gap)),
        (None, Some((_, cl))) => Some(cl.saturating_add(gap.saturating_mul(3))),
        (None, None) => None,
    }
}

/// A new slot for key `k`, at the end.
fn new_slot(base: u64, owners: &mut VecDeque<usize>, k: usize) -> u64 {
    owners.push_back(k);
    base + owners.len() as u64 - 1
}

/// Put key `k` in the queue at `at` unless it is due earlier already.
fn schedule(queue: &mut BinaryHeap<Reverse<(i64, usize)>>, e: &mut KeyEntry, k: usize, at: i64) {
    if e.queued.is_none_or(|q| at < q) {
        e.queued = Some(at);
        queue.push(Reverse((at, k)));
    }
}

impl Sessions {
    pub fn new(layout: &Layout, gap: i64) -> Result<Self> {
        Ok(Sessions {
            gap,
            keys: KeyTable::new(layout)?,
            accs: layout.accumulators()?,
            base: 0,
            owners: VecDeque::new(),
            queue: BinaryHeap::new(),
            starts: BTreeMap::new(),
            open: 0,
        })
    }

    /// Fold rows in, in order. A row is late (left out, reported in `late` when given) when
    /// it has no event time, when it is less than `gap` after the last row of the key's
    /// newest closed session (it would have belonged to that session), or when it joins no
    /// open session and `time + gap` is at or before `closed_through` (a session of its own
    /// would already have ended). Returns how many rows were taken.
    pub fn update(
        &mut self,
        times: &[Option<i64>],
        keys: &[ArrayRef],
        args: &[Vec<ArrayRef>],
        filters: &[Option<BooleanArray>],
        closed_through: i64,
        late: &mut Vec<LateRow>,
    ) -> Result<usize> {
        let n = times.len();
        let ids = self.keys.lookup(keys, n)?;
        let mut groups = Vec::with_capacity(n);
        let mut keep = Vec::with_capacity(n);
        for (i, (&k, &t)) in ids.iter().zip(times).enumerate() {
            match self.place(k, t, closed_through) {
                Ok(g) => {
                    groups.push(g);
                    keep.push(true);
                }
                Err((window, reason)) => {
                    keep.push(false);
                    late.push(LateRow {
                        row: i,
                        window,
                        reason,
                    });
                }
            }
        }
        if groups.is_empty() {
            return Ok(0);
        }
        let total = self.owners.len();
        if groups.len() == n {
            self.accs.update(args, filters, &groups, total)?;
        } else {
            let mask = BooleanArray::from(keep);
            let args = args
                .iter()
                .map(|a| super::filter_arrays(a, &mask))
                .collect::<Result<Vec<_>>>()?;
            let filters = filters
                .iter()
                .map(|f| match f {
                    None => Ok(None),
                    Some(b) => Ok(Some(
                        datafusion::arrow::compute::filter(b, &mask)?
                            .as_any()
                            .downcast_ref::<BooleanArray>()
                            .cloned()
                            .ok_or_else(|| WeirError::Internal("FILTER mask".into()))?,
                    )),
                })
                .collect::<Result<Vec<_>>>()?;
            self.accs.update(&args, &filters, &groups, total)?;
        }
        Ok(groups.len())
    }

    /// The physical group for a row of key `k` at `t`, or why it is late (and the window it
    /// missed).
    fn place(
        &mut self,
        k: usize,
        t: Option<i64>,
        closed_through: i64,
    ) -> std::result::Result<usize, Missed> {
        let gap = self.gap;
        let Some(t) = t else {
            return Err((None, LATE_NO_TIME));
        };
        let Some(e) = self.keys.entries[k].as_mut() else {
            return Err((None, LATE_NO_TIME));
        };
        if let Some((cs, cl)) = e.closed
            && t < cl.saturating_add(gap)
        {
            return Err((Some((cs, cl.saturating_add(gap))), LATE_CLOSED));
        }
        let j = e.open.partition_point(|s| s.last.saturating_add(gap) <= t);
        let joins = j < e.open.len() && e.open[j].start.saturating_sub(gap) < t;
        if !joins {
            if t.saturating_add(gap) <= closed_through {
                return Err((Some((t, t.saturating_add(gap))), LATE_OVER));
            }
            let slot = new_slot(self.base, &mut self.owners, k);
            e.open.insert(
                j,
                Session {
                    start: t,
                    last: t,
                    slots: vec![slot],
                    dirty: true,
                },
            );
            add_start(&mut self.starts, t);
            self.open += 1;
            schedule(&mut self.queue, e, k, t.saturating_add(gap));
            return Ok((slot - self.base) as usize);
        }
        let s = &mut e.open[j];
        if t < s.start {
            remove_start(&mut self.starts, s.start);
            s.start = t;
            add_start(&mut self.starts, t);
        }
        s.last = s.last.max(t);
        s.dirty = true;
        // The row may bridge the gap to the next session: the two become one.
        if j + 1 < e.open.len() && e.open[j + 1].start.saturating_sub(gap) < t {
            let b = e.open.remove(j + 1);
            remove_start(&mut self.starts, b.start);
            self.open -= 1;
            let a = &mut e.open[j];
            a.last = a.last.max(b.last);
            a.slots.extend(b.slots);
        }
        Ok((e.open[j].slots[0] - self.base) as usize)
    }

    /// Close every session ending at or before `closed_through` (its last event time plus
    /// the gap); returns them, oldest end first per key.
    pub fn close(&mut self, layout: &Layout, closed_through: i64) -> Result<Option<SessionRows>> {
        let gap = self.gap;
        let mut closing: Emitting = Vec::new();
        while let Some(&Reverse((at, k))) = self.queue.peek() {
            if at > closed_through {
                break;
            }
            self.queue.pop();
            let Some(e) = self.keys.entries.get_mut(k).and_then(Option::as_mut) else {
                continue;
            };
            if e.queued != Some(at) {
                continue; // superseded
            }
            e.queued = None;
            let due = e
                .open
                .partition_point(|s| s.last.saturating_add(gap) <= closed_through);
            for s in e.open.drain(..due) {
                remove_start(&mut self.starts, s.start);
                self.open -= 1;
                e.closed = Some((s.start, s.last));
                closing.push((e.row.clone(), s.start, s.last, s.slots));
            }
            match next_due(e, gap) {
                Some(at) if at > closed_through => schedule(&mut self.queue, e, k, at),
                _ => self.keys.remove(k),
            }
        }
        if closing.is_empty() {
            return Ok(None);
        }
        self.emit(layout, closing).map(Some)
    }

    /// Every open session that changed since the last call, evaluated; the sessions stay.
    pub fn early(&mut self, layout: &Layout) -> Result<Option<SessionRows>> {
        let mut changed: Emitting = Vec::new();
        for e in self.keys.entries.iter_mut().flatten() {
            for s in e.open.iter_mut().filter(|s| s.dirty) {
                s.dirty = false;
                changed.push((e.row.clone(), s.start, s.last, s.slots.clone()));
            }
        }
        if changed.is_empty() {
            return Ok(None);
        }
        changed.sort_by_key(|c| (c.1, c.2));
        self.emit(layout, changed).map(Some)
    }

    /// Evaluate `sessions` (each the sum of its slots' state), and give the other sessions
    /// whose slots were read their state back.
    fn emit(&mut self, layout: &Layout, sessions: Emitting) -> Result<SessionRows> {
        let n = sessions
            .iter()
            .flat_map(|s| s.3.iter())
            .map(|v| (v - self.base) as usize + 1)
            .max()
            .unwrap_or(0);
        let (states, old_base, owners) = self.cut(n)?;
        let mut rows = Vec::new();
        let mut groups = Vec::new();
        for (g, s) in sessions.iter().enumerate() {
            for v in &s.3 {
                rows.push((v - old_base) as u32);
                groups.push(g);
            }
        }
        let mut out = layout.accumulators()?;
        let taken = take_rows(&states, rows)?;
        out.merge(&taken, &layout.state_widths, &groups, sessions.len())?;
        let values = out.evaluate(EmitTo::All)?;
        let key_rows: Vec<&[u8]> = sessions.iter().map(|s| s.0.as_ref()).collect();
        let keys = self.keys.arrays(&key_rows)?;
        let starts = sessions.iter().map(|s| s.1).collect();
        let ends = sessions
            .iter()
            .map(|s| s.2.saturating_add(self.gap))
            .collect();
        self.put_back(layout, &states, old_base, n, owners)?;
        Ok((starts, ends, keys, values))
    }

    /// Take the first `n` physical groups out: their state, the old base and their owners.
    fn cut(&mut self, n: usize) -> Result<(Vec<ArrayRef>, u64, Vec<usize>)> {
        if n == 0 {
            return Ok((vec![], self.base, vec![]));
        }
        let emit = if n == self.owners.len() {
            EmitTo::All
        } else {
            EmitTo::First(n)
        };
        let states = self.accs.state(emit)?;
        let old_base = self.base;
        self.base += n as u64;
        let owners = self.owners.drain(..n).collect();
        Ok((states, old_base, owners))
    }

    /// After [`Self::cut`]: merge the state of open sessions' slots that were cut back in,
    /// each session's into one slot (one it still has, or a new one).
    fn put_back(
        &mut self,
        layout: &Layout,
        states: &[ArrayRef],
        old_base: u64,
        n: usize,
        mut owners: Vec<usize>,
    ) -> Result<()> {
        let cut_end = old_base + n as u64;
        owners.sort_unstable();
        owners.dedup();
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for k in owners {
            let Some(e) = self.keys.entries.get_mut(k).and_then(Option::as_mut) else {
                continue;
            };
            for s in e.open.iter_mut() {
                let (cut, mut kept): (Vec<u64>, Vec<u64>) =
                    s.slots.iter().partition(|&&v| v < cut_end);
                if cut.is_empty() {
                    continue;
                }
                let target = match kept.first() {
                    Some(&v) => v,
                    None => {
                        let v = new_slot(self.base, &mut self.owners, k);
                        kept.push(v);
                        v
                    }
                };
                for v in cut {
                    rows.push((v - old_base) as u32);
                    targets.push((target - self.base) as usize);
                }
                s.slots = kept;
            }
        }
        self.merge_rows(layout, states, rows, &targets)
    }

    /// Every open session (one row per slot) and every key's closed session (without
    /// state); the state stays.
    pub fn snapshot(&mut self, layout: &Layout) -> Result<Vec<SavedSessions>> {
        let n = self.owners.len();
        let (states, old_base, owners) = self.cut(n)?;
        let mut out = Vec::new();
        // Open sessions, one row per slot.
        let (mut starts, mut lasts, mut dirty, mut rows, mut key_rows) =
            (vec![], vec![], vec![], vec![], vec![]);
        for (i, &k) in owners.iter().enumerate() {
            let v = old_base + i as u64;
            let Some(e) = self.keys.entries.get(k).and_then(Option::as_ref) else {
                continue;
            };
            if let Some(s) = e.open.iter().find(|s| s.slots.contains(&v)) {
                starts.push(s.start);
                lasts.push(s.last);
                dirty.push(s.dirty);
                rows.push(i as u32);
                key_rows.push(e.row.as_ref());
            }
        }
        if !rows.is_empty() {
            let keys = self.keys.arrays(&key_rows)?;
            let st = take_rows(&states, rows)?;
            out.push(SavedSessions {
                starts,
                lasts,
                dirty,
                closed: false,
                keys,
                states: st,
            });
        }
        // Closed sessions, for the late rule.
        let (mut starts, mut lasts, mut key_rows) = (vec![], vec![], vec![]);
        for e in self.keys.entries.iter().flatten() {
            if let Some((cs, cl)) = e.closed {
                starts.push(cs);
                lasts.push(cl);
                key_rows.push(e.row.as_ref());
            }
        }
        if !starts.is_empty() {
            let keys = self.keys.arrays(&key_rows)?;
            let dirty = vec![false; starts.len()];
            out.push(SavedSessions {
                starts,
                lasts,
                dirty,
                closed: true,
                keys,
                states: vec![],
            });
        }
        self.put_back(layout, &states, old_base, n, owners)?;
        Ok(out)
    }

    /// Merge saved sessions in (rows of [`Self::snapshot`]); `states` is empty for closed
    /// sessions.
    pub fn restore(
        &mut self,
        layout: &Layout,
        part: (&[i64], &[i64], &[bool], &[bool]),
        keys: &[ArrayRef],
        states: &[ArrayRef],
    ) -> Result<()> {
        let (starts, lasts, dirty, closed) = part;
        let ids = self.keys.lookup(keys, starts.len())?;
        let mut rows = Vec::new();
        let mut groups = Vec::new();
        for (i, &k) in ids.iter().enumerate() {
            let Some(e) = self.keys.entries[k].as_mut() else {
                continue;
            };
            let (start, last) = (starts[i], lasts[i]);
            if closed[i] {
                if e.closed.is_none_or(|(_, l)| l < last) {
                    e.closed = Some((start, last));
                }
                continue;
            }
            let j = e.open.partition_point(|s| s.start < start);
            let slot = match e.open.get_mut(j) {
                Some(s) if s.start == start => {
                    s.last = s.last.max(last);
                    s.dirty |= dirty[i];
                    s.slots[0]
                }
                _ => {
                    let v = new_slot(self.base, &mut self.owners, k);
                    e.open.insert(
                        j,
                        Session {
                            start,
                            last,
                            slots: vec![v],
                            dirty: dirty[i],
                        },
                    );
                    add_start(&mut self.starts, start);
                    self.open += 1;
                    v
                }
            };
            rows.push(i as u32);
            groups.push((slot - self.base) as usize);
        }
        for k in ids {
            if let Some(e) = self.keys.entries[k].as_mut()
                && let Some(at) = next_due(e, self.gap)
            {
                schedule(&mut self.queue, e, k, at);
            }
        }
        self.merge_rows(layout, states, rows, &groups)
    }

    /// Merge rows `rows` of saved state into physical groups `groups`.
    fn merge_rows(
        &mut self,
        layout: &Layout,
        states: &[ArrayRef],
        rows: Vec<u32>,
        groups: &[usize],
    ) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let taken = take_rows(states, rows)?;
        let total = self.owners.len();
        self.accs.merge(&taken, &layout.state_widths, groups, total)
    }

    pub fn open_sessions(&self) -> usize {
        self.open
    }

    pub fn size(&self) -> usize {
        self.accs.size()
            + self.keys.bytes
            + self.keys.entries.len() * std::mem::size_of::<Option<KeyEntry>>()
            + self.open * std::mem::size_of::<Session>()
    }

    /// The earliest start of an open session.
    pub fn first_start(&self) -> Option<i64> {
        self.starts.keys().next().copied()
    }
}

/// Rows `rows` of every array.
fn take_rows(arrays: &[ArrayRef], rows: Vec<u32>) -> Result<Vec<ArrayRef>> {
    let idx = UInt32Array::from(rows);
    Ok(arrays
        .iter()
        .map(|a| take(a.as_ref(), &idx, None))
        .collect::<std::result::Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::groups::{test_layout, test_rows, test_sums};

    /// Sessions as `(start, end, [(key, sum)])`, one entry per session.
    type Out = Vec<(i64, i64, Vec<(String, i64)>)>;

    fn out(rows: Option<SessionRows>) -> Out {
        let Some((starts, ends, keys, values)) = rows else {
            return vec![];
        };
        let mut v: Out = (0..starts.len())
            .map(|i| {
                let k: Vec<ArrayRef> = keys.iter().map(|a| a.slice(i, 1)).collect();
                let x: Vec<ArrayRef> = values.iter().map(|a| a.slice(i, 1)).collect();
                (starts[i], ends[i], test_sums(&k, &x))
            })
            .collect();
        v.sort();
        v
    }

    /// Fold `rows` of `(key, time, value)`; returns the late ones' reasons by row.
    fn add(
        s: &mut Sessions,
        rows: &[(&str, i64, i64)],
        closed_through: i64,
    ) -> Vec<(usize, &'static str)> {
        let (keys, args) = test_rows(&rows.iter().map(|r| (r.0, r.2)).collect::<Vec<_>>());
        let times: Vec<Option<i64>> = rows.iter().map(|r| Some(r.1)).collect();
        let mut late = vec![];
        s.update(&times, &keys, &args, &[None], closed_through, &mut late)
            .expect("update");
        late.iter().map(|l| (l.row, l.reason)).collect()
    }

    fn kv(k: &str, v: i64) -> Vec<(String, i64)> {
        vec![(k.to_string(), v)]
    }

    #[test]
    fn rows_make_sessions_per_key_and_close_after_the_gap() {
        let layout = test_layout();
        let mut s = Sessions::new(&layout, 10).expect("sessions");
        assert!(
            add(
                &mut s,
                &[("a", 0, 1), ("b", 3, 2), ("a", 5, 4), ("a", 30, 8)],
                i64::MIN
            )
            .is_empty()
        );
        assert_eq!(s.open_sessions(), 3);
        assert_eq!(s.first_start(), Some(0));
        // Sessions end at their last row plus the gap: a [0, 15), b [3, 13) close by 20.
        assert_eq!(
            out(s.close(&layout, 20).expect("close")),
            vec![(0, 15, kv("a", 5)), (3, 13, kv("b", 2))]
        );
        assert_eq!(s.open_sessions(), 1);
        assert_eq!(
            out(s.close(&layout, 40).expect("close")),
            vec![(30, 40, kv("a", 8))]
        );
        assert_eq!(s.open_sessions(), 0);
    }

    #[test]
    fn an_out_of_order_row_bridges_two_sessions_into_one() {
        let layout = test_layout();
        let mut s = Sessions::new(&layout, 10).expect("sessions");
        add(&mut s, &[("a", 0, 1), ("a", 25, 2)], i64::MIN);
        assert_eq!(s.open_sessions(), 2);
        // 8 extends [0]; 17 is within the gap of both [0, 8] and [25]: they merge.
        add(&mut s, &[("a", 8, 4), ("a", 17, 8)], i64::MIN);
        assert_eq!(s.open_sessions(), 1);
        assert_eq!(
            out(s.close(&layout, 100).expect("close")),
            vec![(0, 35, kv("a", 15))]
        );
    }

    #[test]
    fn late_rows_name_why() {
        let layout = test_layout();
        let mut s = Sessions::new(&layout, 10).expect("sessions");
        add(&mut s, &[("a", 0, 1), ("a", 5, 2)], i64::MIN);
        assert_eq!(out(s.close(&layout, 20).expect("close")).len(), 1);
        // 12 is less than a gap after a's closed session (last row 5); c at 2 would be a
        // session of its own ending at 12, before 20; d at 15 is on time.
        let late = add(&mut s, &[("a", 12, 4), ("c", 2, 8), ("d", 15, 16)], 20);
        assert_eq!(late, vec![(0, LATE_CLOSED), (1, LATE_OVER)]);
        assert_eq!(
            out(s.close(&layout, 30).expect("close")),
            vec![(15, 25, kv("d", 16))]
        );
    }

    #[test]
    fn early_results_and_a_restored_snapshot_give_the_same_sessions() {
        let layout = test_layout();
        let mut s = Sessions::new(&layout, 10).expect("sessions");
        add(&mut s, &[("a", 0, 1), ("b", 2, 2)], i64::MIN);
        assert_eq!(
            out(s.early(&layout).expect("early")),
            vec![(0, 10, kv("a", 1)), (2, 12, kv("b", 2))]
        );
        assert!(
            out(s.early(&layout).expect("early")).is_empty(),
            "nothing changed"
        );
        add(&mut s, &[("a", 4, 4)], i64::MIN);
        assert_eq!(
            out(s.early(&layout).expect("early")),
            vec![(0, 14, kv("a", 5))]
        );
        // Close b, so the snapshot holds an open session and a closed one.
        assert_eq!(
            out(s.close(&layout, 12).expect("close")),
            vec![(2, 12, kv("b", 2))]
        );
        let saved = s.snapshot(&layout).expect("snapshot");
        let mut r = Sessions::new(&layout, 10).expect("sessions");
        let state_fields = layout.state_fields().expect("fields");
        for part in &saved {
            let n = part.starts.len();
            let closed = vec![part.closed; n];
            let states: Vec<ArrayRef> = if part.states.is_empty() {
                state_fields
                    .iter()
                    .map(|f| datafusion::arrow::array::new_null_array(f.data_type(), n))
                    .collect()
            } else {
                part.states.clone()
            };
            r.restore(
                &layout,
                (&part.starts, &part.lasts, &part.dirty, &closed),
                &part.keys,
                &states,
            )
            .expect("restore");
        }
        // b's closed session still makes a row less than a gap after it late.
        assert_eq!(add(&mut r, &[("b", 10, 8)], 12), vec![(0, LATE_CLOSED)]);
        assert_eq!(add(&mut s, &[("b", 10, 8)], 12), vec![(0, LATE_CLOSED)]);
        let restored = out(r.close(&layout, 100).expect("close"));
        assert_eq!(restored, out(s.close(&layout, 100).expect("close")));
        assert_eq!(restored, vec![(0, 14, kv("a", 5))]);
    }
}
