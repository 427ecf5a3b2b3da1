//! Stage 1 and stage 2 of a TUMBLE or HOP aggregate on several workers
//! (`dataflow/prepare.rs`): a micro-batch folded into an empty copy of the view's
//! aggregator gives its partial states per pane, which the driver merges into the open
//! panes.

use super::{Store, WindowAggregator};
use crate::error::{Result, WeirError};
use crate::window::UpdateStats;
use crate::window::panes::Panes;
use datafusion::arrow::record_batch::RecordBatch;
use std::collections::BTreeMap;

/// One micro-batch piece folded by stage 1 ([`WindowAggregator::partial`]).
#[derive(Debug, Clone, Default)]
pub struct Partial {
    /// Its panes' states, in [`WindowAggregator::state_schema`].
    pub states: Vec<RecordBatch>,
    /// Rows per pane.
    pub rows: Vec<(i64, u64)>,
    /// Rows without an event time: late in any case.
    pub no_time: u64,
}

impl WindowAggregator {
    /// For stage 1 (`dataflow/prepare.rs`): an empty aggregator of the same view, to fold
    /// one micro-batch into a [`Partial`] with [`WindowAggregator::partial`]; `None` for
    /// SESSION windows (a session can bridge two micro-batches' rows, so their partial
    /// states are not independent: they are folded whole on the driver).
    pub fn partial_copy(&self) -> Option<WindowAggregator> {
        let Store::Panes(p) = &self.store else {
            return None;
        };
        Some(WindowAggregator {
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
            store: Store::Panes(Panes::new(p.slide, p.size)),
            closed_through: i64::MIN,
            emit_every: None,
            emit_period: None,
        })
    }

    /// Fold `batches` (the pre plan's output for one piece of a micro-batch) into this
    /// empty copy ([`WindowAggregator::partial_copy`]) and give the result as partial
    /// states per pane: what DataFusion's partial aggregate gives, keyed by pane.
    pub fn partial(mut self, batches: &[RecordBatch]) -> Result<Partial> {
        let mut rows: BTreeMap<i64, u64> = BTreeMap::new();
        let mut no_time = 0;
        for b in batches {
            // Nothing has closed in an empty copy: only rows without a time are late.
            no_time += self.fold(b, Some(&mut rows))?.late;
        }
        Ok(Partial {
            states: self.snapshot()?,
            rows: rows.into_iter().collect(),
            no_time,
        })
    }

    /// Stage 2: merge a [`Partial`] into the open panes. The panes whose every window has
    /// closed are late, as their rows would have been in [`WindowAggregator::update`].
    pub fn merge_partial(&mut self, partial: &Partial) -> Result<UpdateStats> {
        let Store::Panes(p) = &self.store else {
            return Err(WeirError::Internal(
                "a partial state for a session window".into(),
            ));
        };
        let (size, closed) = (p.size, self.closed_through);
        let on_time = |pane: i64| pane.saturating_add(size) > closed;
        let mut stats = UpdateStats {
            late: partial.no_time,
            ..UpdateStats::default()
        };
        for (pane, n) in &partial.rows {
            if on_time(*pane) {
                stats.accepted += n;
            } else {
                stats.late += n;
            }
        }
        for batch in &partial.states {
            self.merge_panes(batch, on_time)?;
        }
        Ok(stats)
    }
}
