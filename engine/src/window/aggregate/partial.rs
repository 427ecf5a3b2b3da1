//! A window aggregate split over workers and key partitions: stage 1 folds a micro-batch
//! into an empty copy of the view's aggregator and cuts the resulting partial states by key
//! partition (`dataflow/prepare.rs`); stage 2 merges each key partition's share into that
//! partition's aggregator (`dataflow/keyed.rs`).

use super::{Store, WindowAggregator};
use crate::dataflow::partition::key_partitions;
use crate::error::{Result, WeirError};
use crate::window::UpdateStats;
use crate::window::panes::Panes;
use crate::window::session::Sessions;
use datafusion::arrow::array::{ArrayRef, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::record_batch::RecordBatch;
use std::collections::BTreeMap;

/// One micro-batch piece folded by stage 1 ([`WindowAggregator::partial`]).
#[derive(Debug, Clone, Default)]
pub struct Partial {
    /// Its panes' states, in [`WindowAggregator::state_schema`], by key partition.
    pub states: Vec<Vec<RecordBatch>>,
    /// Rows per pane.
    pub rows: Vec<(i64, u64)>,
    /// Rows without an event time: late in any case.
    pub no_time: u64,
}

impl WindowAggregator {
    /// An aggregator of the same view with no state: a key partition's share of the view
    /// (`dataflow/keyed.rs`) starts as one. The `EMIT EVERY` setting and clock are copied.
    pub fn empty_copy(&self) -> Result<WindowAggregator> {
        let store = match &self.store {
            Store::Panes(p) => Store::Panes(Panes::new(p.slide, p.size)),
            Store::Sessions(s) => Store::Sessions(Box::new(Sessions::new(&self.layout, s.gap)?)),
        };
        Ok(WindowAggregator {
            kind: self.kind,
            input_time_column: self.input_time_column.clone(),
            group_exprs: self.group_exprs.clone(),
            group_names: self.group_names.clone(),
            columns: self.columns.clone(),
            time_column: self.time_column,
            time_shift: self.time_shift,
            key_exprs: self.key_exprs.clone(),
            layout: self.layout.clone(),
            arguments: self.arguments.clone(),
            filters: self.filters.clone(),
            output_schema: self.output_schema.clone(),
            store,
            closed_through: self.closed_through,
            emit_every: self.emit_every,
            emit_period: self.emit_period,
        })
    }

    /// For stage 1 (`dataflow/prepare.rs`): an empty aggregator of the same view, to fold
    /// one micro-batch into a [`Partial`] with [`WindowAggregator::partial`]; `None` for
    /// SESSION windows (a session can bridge two micro-batches' rows, so their partial
    /// states are not independent: they are folded whole in stage 2).
    pub fn partial_copy(&self) -> Option<WindowAggregator> {
        let Store::Panes(_) = &self.store else {
            return None;
        };
        let mut copy = self.empty_copy().ok()?;
        copy.closed_through = i64::MIN;
        copy.emit_every = None;
        copy.emit_period = None;
        Some(copy)
    }

    /// Whether the view groups by anything besides the window: only then can its state be
    /// split by key.
    pub fn has_keys(&self) -> bool {
        !self.key_exprs.is_empty()
    }

    /// The GROUP BY columns besides the window: what the key partition is a hash of.
    pub fn partition_key_names(&self) -> Vec<String> {
        self.layout
            .key_schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    /// The group key columns of a state batch (in [`WindowAggregator::state_schema`]).
    fn state_key_columns(&self, state: &RecordBatch) -> Vec<ArrayRef> {
        let first = match self.store {
            Store::Panes(_) => 2,
            Store::Sessions(_) => 4,
        };
        let n = self.layout.key_schema.fields().len();
        state.columns()[first..first + n].to_vec()
    }

    /// Cut state batches into `parts` key partitions (`dataflow/partition.rs`).
    pub fn split_states(
        &self,
        states: &[RecordBatch],
        parts: u32,
    ) -> Result<Vec<Vec<RecordBatch>>> {
        let mut out: Vec<Vec<RecordBatch>> = vec![Vec::new(); parts as usize];
        for state in states {
            if parts == 1 {
                out[0].push(state.clone());
                continue;
            }
            let keys = self.state_key_columns(state);
            for (kp, rows) in split_rows(state, &keys, parts)? {
                out[kp].push(rows);
            }
        }
        Ok(out)
    }

    /// Fold `batches` (the pre plan's output for one piece of a micro-batch) into this
    /// empty copy ([`WindowAggregator::partial_copy`]) and give the result as partial
    /// states per pane (what DataFusion's partial aggregate gives, keyed by pane), cut
    /// into the view's `parts` key partitions.
    pub fn partial(mut self, batches: &[RecordBatch], parts: u32) -> Result<Partial> {
        let mut rows: BTreeMap<i64, u64> = BTreeMap::new();
        let mut no_time = 0;
        for b in batches {
            // Nothing has closed in an empty copy: only rows without a time are late.
            no_time += self.fold(b, Some(&mut rows))?.late;
        }
        let states = self.snapshot()?;
        Ok(Partial {
            states: self.split_states(&states, parts)?,
            rows: rows.into_iter().collect(),
            no_time,
        })
    }

    /// What merging `partial` does to the rows' counts: the rows of panes whose every
    /// window has closed are late, as they would have been in [`WindowAggregator::update`].
    pub fn partial_stats(&self, partial: &Partial) -> UpdateStats {
        let mut stats = UpdateStats {
            late: partial.no_time,
            ..UpdateStats::default()
        };
        for (pane, n) in &partial.rows {
            if self.pane_open(*pane) {
                stats.accepted += n;
            } else {
                stats.late += n;
            }
        }
        stats
    }

    fn pane_open(&self, pane: i64) -> bool {
        match &self.store {
            Store::Panes(p) => pane.saturating_add(p.size) > self.closed_through,
            Store::Sessions(_) => false,
        }
    }

    /// Stage 2: merge partial states (in [`WindowAggregator::state_schema`]) into the open
    /// panes, leaving out the panes whose every window has closed.
    pub fn merge_states(&mut self, states: &[RecordBatch]) -> Result<()> {
        let Store::Panes(p) = &self.store else {
            return Err(WeirError::Internal(
                "a partial state for a session window".into(),
            ));
        };
        let (size, closed) = (p.size, self.closed_through);
        for batch in states {
            self.merge_panes(batch, |pane| pane.saturating_add(size) > closed)?;
        }
        Ok(())
    }

    /// Stage 2 on one aggregator: [`WindowAggregator::merge_states`] of every key
    /// partition's share.
    pub fn merge_partial(&mut self, partial: &Partial) -> Result<UpdateStats> {
        let stats = self.partial_stats(partial);
        for states in &partial.states {
            self.merge_states(states)?;
        }
        Ok(stats)
    }
}

/// The rows of `batch` by key partition of `keys` (its key columns), each partition's rows
/// in their order in `batch`; partitions without rows are left out.
pub fn split_rows(
    batch: &RecordBatch,
    keys: &[ArrayRef],
    parts: u32,
) -> Result<Vec<(usize, RecordBatch)>> {
    split_indices(keys, batch.num_rows(), parts)?
        .into_iter()
        .map(|(kp, idx)| Ok((kp, take_record_batch(batch, &idx)?)))
        .collect()
}

/// The row indices of each key partition of `keys` (`rows` rows), partitions without rows
/// left out.
pub fn split_indices(
    keys: &[ArrayRef],
    rows: usize,
    parts: u32,
) -> Result<Vec<(usize, UInt32Array)>> {
    let kps = key_partitions(keys, rows, parts)?;
    let mut idx: Vec<Vec<u32>> = vec![Vec::new(); parts as usize];
    for (row, kp) in kps.into_iter().enumerate() {
        idx[kp as usize].push(row as u32);
    }
    Ok(idx
        .into_iter()
        .enumerate()
        .filter(|(_, rows)| !rows.is_empty())
        .map(|(kp, rows)| (kp, UInt32Array::from(rows)))
        .collect())
}
