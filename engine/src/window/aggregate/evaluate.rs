//! What a window aggregate reads of a batch of its pre plan's output ([`Evaluated`]): each
//! row's time and the group keys, aggregate arguments and FILTERs, evaluated once and cut
//! by row (by pane, or by key partition in `dataflow/keyed.rs`).

use super::WindowAggregator;
use crate::error::Result;
use crate::window::shifted_ms;
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::record_batch::RecordBatch;

/// What the aggregate reads of a batch ([`WindowAggregator::evaluate`]).
pub struct Evaluated {
    /// Each row's time in ms (TUMBLE: window start, HOP: pane start, SESSION: event time).
    pub(super) times: Vec<Option<i64>>,
    pub(super) inputs: Inputs,
}

impl Evaluated {
    /// The group key columns.
    pub fn keys(&self) -> &[ArrayRef] {
        &self.inputs.keys
    }

    /// The rows at `idx`, in that order.
    pub fn take(&self, idx: &UInt32Array) -> Result<Evaluated> {
        Ok(Evaluated {
            times: idx
                .values()
                .iter()
                .map(|&i| self.times[i as usize])
                .collect(),
            inputs: self.inputs.take(idx)?,
        })
    }
}

/// Evaluated inputs of a batch: key columns, aggregate arguments and FILTERs.
pub(super) struct Inputs {
    pub(super) keys: Vec<ArrayRef>,
    pub(super) args: Vec<Vec<ArrayRef>>,
    pub(super) filters: Vec<Option<BooleanArray>>,
}

impl Inputs {
    pub(super) fn take(&self, idx: &UInt32Array) -> Result<Inputs> {
        let t = |a: &ArrayRef| take(a.as_ref(), idx, None);
        Ok(Inputs {
            keys: self.keys.iter().map(t).collect::<Result<_, _>>()?,
            args: self
                .args
                .iter()
                .map(|v| v.iter().map(t).collect::<Result<Vec<_>, _>>())
                .collect::<Result<_, _>>()?,
            filters: self
                .filters
                .iter()
                .map(|f| match f {
                    None => Ok(None),
                    Some(b) => Ok(take(b, idx, None)?
                        .as_any()
                        .downcast_ref::<BooleanArray>()
                        .cloned()),
                })
                .collect::<Result<_, datafusion::arrow::error::ArrowError>>()?,
        })
    }
}

impl WindowAggregator {
    /// What the aggregate reads of `batch` (the pre plan's output): each row's time, group
    /// keys, aggregate arguments and FILTERs.
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<Evaluated> {
        let n = batch.num_rows();
        Ok(Evaluated {
            times: self.times(batch, n)?,
            inputs: self.inputs(batch, n)?,
        })
    }

    /// Each row's time in ms (TUMBLE: window start, HOP: pane start, SESSION: event time).
    fn times(&self, batch: &RecordBatch, n: usize) -> Result<Vec<Option<i64>>> {
        let col = self.group_exprs[self.time_column]
            .evaluate(batch)?
            .into_array(n)?;
        shifted_ms(&col, self.time_shift)
    }

    fn inputs(&self, batch: &RecordBatch, n: usize) -> Result<Inputs> {
        let keys = self
            .key_exprs
            .iter()
            .map(|e| e.evaluate(batch).and_then(|v| v.into_array(n)))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let (args, filters) =
            super::super::groups::evaluate_arguments(&self.arguments, &self.filters, batch)?;
        Ok(Inputs {
            keys,
            args,
            filters,
        })
    }
}
