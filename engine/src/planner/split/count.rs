//! A count-window view (`COUNT_WINDOW`): its whole query runs over each batch of complete
//! windows the count-window operator (`dataflow/count.rs`) emits.

use super::{Split, find_aggregates, reject_per_batch_limits, stream_inputs};
use crate::error::{Result, WeirError};
use crate::planner::ViewPlanKind;
use crate::planner::slot::SlotPlan;
use crate::sql::CountWindowSpec;
use crate::sql::count_window::{COUNT_WINDOW_INPUT, WINDOW_INDEX};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::expressions::Column;
use std::sync::Arc;

/// The view's plan over [`COUNT_WINDOW_INPUT`]. An aggregate must group by the window's
/// key and `window_index`: each run holds whole windows, but a window's rows and another
/// window's are in different runs.
pub fn split_count_window(
    physical: Arc<dyn ExecutionPlan>,
    spec: &CountWindowSpec,
    input_schema: SchemaRef,
    task_ctx: Arc<TaskContext>,
) -> Result<Split> {
    let output_schema = physical.schema();
    let inputs = stream_inputs(&physical);
    let slot = match inputs.as_slice() {
        [(name, slot)] if name == COUNT_WINDOW_INPUT => slot.clone(),
        _ => {
            return Err(WeirError::user(
                "a view with COUNT_WINDOW reads only its window: join or union the rows in \
                 a view of their own first, and count over that view",
            ));
        }
    };
    reject_per_batch_limits(&physical)?;
    for agg in find_aggregates(&physical) {
        let Some(agg) = agg.downcast_ref::<AggregateExec>() else {
            continue;
        };
        let grouped: Vec<&str> = agg
            .group_expr()
            .expr()
            .iter()
            .filter_map(|(e, _)| e.downcast_ref::<Column>().map(Column::name))
            .collect();
        if !grouped.contains(&WINDOW_INDEX) || !grouped.contains(&spec.key_column.as_str()) {
            return Err(WeirError::user(format!(
                "an aggregate over COUNT_WINDOW must GROUP BY its key column ({}) and \
                 {WINDOW_INDEX}, so that each window is aggregated once it is complete",
                spec.key_column
            )));
        }
    }
    let column = |name: &str| {
        input_schema.index_of(name).map_err(|_| {
            WeirError::user(format!(
                "COUNT_WINDOW over '{}': it has no column '{name}'",
                spec.input
            ))
        })
    };
    let key = column(&spec.key_column)?;
    let time = column(&spec.time_column)?;
    if !matches!(
        input_schema.field(time).data_type(),
        datafusion::arrow::datatypes::DataType::Timestamp(..)
    ) {
        return Err(WeirError::user(format!(
            "COUNT_WINDOW counts rows in order of their time: column '{}' of '{}' is {}, not \
             a TIMESTAMP",
            spec.time_column,
            spec.input,
            input_schema.field(time).data_type()
        )));
    }
    Ok(Split {
        inputs: vec![spec.input.clone()],
        output_schema,
        kind: ViewPlanKind::CountWindow {
            plan: SlotPlan::new(physical, slot, task_ctx),
            input_schema,
            key,
            time,
            rows: spec.rows,
        },
    })
}
