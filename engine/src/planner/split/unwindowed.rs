//! The views without a window that [`split_plan`](super::split_plan) recognises besides
//! stateless ones: `UNION ALL` of several streams, `SELECT DISTINCT`, deduplication
//! (`ROW_NUMBER() ... = 1` ordered by event time) and aggregates (updating views).

use super::{
    Split, column_through, combining_nodes, find_aggregates, is_pass_through, rank_limit,
    raw_aggregate, reject_per_batch_limits, replace_node, window_exprs, window_function_nodes,
};
use crate::error::{Result, WeirError};
use crate::planner::ViewPlanKind;
use crate::planner::slot::{BatchSlot, SlotExec, SlotPlan};
use crate::window::{Dedup, UpdatingAggregator};
use datafusion::arrow::datatypes::DataType;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::expressions::Column;
use std::sync::Arc;

fn is_union(node: &Arc<dyn ExecutionPlan>) -> bool {
    matches!(node.name(), "UnionExec" | "InterleaveExec")
}

/// Whether the streams of a plan come together in unions only (no join of two streams).
pub(super) fn combines_by_union(physical: &Arc<dyn ExecutionPlan>) -> bool {
    let combining = combining_nodes(physical);
    !combining.is_empty() && combining.iter().all(is_union)
}

/// A view that puts several streams together with `UNION ALL`: stateless, each input's
/// batches run through the whole plan (the other inputs' leaves empty).
pub(super) fn split_union(
    physical: Arc<dyn ExecutionPlan>,
    leaves: Vec<(String, Arc<BatchSlot>)>,
    task_ctx: Arc<TaskContext>,
) -> Result<Split> {
    if !find_aggregates(&physical).is_empty() {
        return Err(WeirError::user(
            "a view cannot aggregate a union of streams, and UNION without ALL removes \
             duplicates, which needs state: create the UNION ALL as a view of its own and \
             aggregate (with a window) over that view",
        ));
    }
    if !window_function_nodes(&physical).is_empty() {
        return Err(WeirError::user(
            "window functions (OVER) over a union of streams are not supported: create the \
             UNION ALL as a view of its own and rank over that view",
        ));
    }
    reject_per_batch_limits(&physical)?;
    // One port per input, in the order of first appearance; the leaves of one input share
    // its slot (`SELECT ... FROM s UNION ALL SELECT ... FROM s` reads s once).
    let mut inputs: Vec<String> = Vec::new();
    let mut slots: Vec<Arc<BatchSlot>> = Vec::new();
    for (name, slot) in leaves {
        if !inputs.contains(&name) {
            inputs.push(name);
            slots.push(slot);
        }
    }
    Ok(Split {
        inputs,
        output_schema: physical.schema(),
        kind: ViewPlanKind::Union {
            plan: SlotPlan::new(physical, slots[0].clone(), task_ctx),
            slots,
        },
    })
}

/// `SELECT DISTINCT` (a GROUP BY without aggregate functions) over a stream without a
/// window: the plan below the aggregate runs per micro-batch, and the plan above it over
/// each batch of distinct rows seen for the first time. `None` for any other aggregate.
pub(super) fn split_distinct(
    physical: &Arc<dyn ExecutionPlan>,
    top: &Arc<dyn ExecutionPlan>,
    aggs: &[Arc<dyn ExecutionPlan>],
    input: String,
    inputs: &[(String, Arc<BatchSlot>)],
    task_ctx: &Arc<TaskContext>,
) -> Result<Option<Split>> {
    // Every aggregate of the plan (a final and its partial, or one single) groups only.
    let grouping_only = |a: &Arc<dyn ExecutionPlan>| {
        a.downcast_ref::<AggregateExec>().is_some_and(|e| {
            e.aggr_expr().is_empty()
                && e.group_expr().is_single()
                && !e.group_expr().expr().is_empty()
        })
    };
    if aggs.is_empty() || aggs.len() > 2 || !aggs.iter().all(grouping_only) {
        return Ok(None);
    }
    // The lowest aggregate sees the raw rows; its groups are the DISTINCT columns.
    let raw = aggs[aggs.len() - 1].clone();
    let Some(raw_exec) = raw.downcast_ref::<AggregateExec>() else {
        return Ok(None);
    };
    if aggs.len() == 2 && *raw_exec.mode() != AggregateMode::Partial {
        return Ok(None);
    }
    let pre = raw_exec.input().clone();
    if !window_function_nodes(physical).is_empty() {
        return Err(WeirError::user(
            "window functions (OVER) with DISTINCT over a stream are not supported: make the \
             DISTINCT a view of its own",
        ));
    }
    reject_per_batch_limits(physical)?;
    let keys: Vec<Arc<dyn PhysicalExpr>> = raw_exec
        .group_expr()
        .expr()
        .iter()
        .map(|(e, _)| e.clone())
        .collect();
    let key_schema = top.schema();
    let slot = Arc::new(BatchSlot::default());
    let leaf: Arc<dyn ExecutionPlan> = Arc::new(SlotExec::new(
        "distinct rows".into(),
        key_schema.clone(),
        None,
        slot.clone(),
    )?);
    let post = replace_node(physical.clone(), top, leaf)?;
    Ok(Some(Split {
        inputs: vec![input],
        output_schema: physical.schema(),
        kind: ViewPlanKind::Distinct {
            pre: SlotPlan::new(pre, inputs[0].1.clone(), task_ctx.clone()),
            keys,
            key_schema,
            post: SlotPlan::new(post, slot, task_ctx.clone()),
        },
    }))
}

/// `ROW_NUMBER() OVER (PARTITION BY key ORDER BY ts) = 1` (or `<= 1`, `< 2`) over a stream
/// without a window: deduplication, the first row per key by event time ([`Dedup`]). The
/// pre plan runs per micro-batch, and the post plan (the ranking, all 1s, the filter and
/// projection above) over the rows emitted when the watermark passes them. `None` when the
/// plan is not of that shape.
pub(super) fn split_dedup(
    physical: &Arc<dyn ExecutionPlan>,
    (input, input_slot): (String, Arc<BatchSlot>),
    nodes: &[Arc<dyn ExecutionPlan>],
    state_ttl: Option<std::time::Duration>,
    task_ctx: Arc<TaskContext>,
) -> Result<Option<Split>> {
    let [node] = nodes else {
        return Ok(None);
    };
    let Some((exprs, mut pre_top)) = window_exprs(node) else {
        return Ok(None);
    };
    let [e] = exprs.as_slice() else {
        return Ok(None);
    };
    if !e.name().to_ascii_lowercase().starts_with("row_number(") || e.partition_by().is_empty() {
        return Ok(None);
    }
    match rank_limit(physical, node) {
        Some(l) if l.n == 1 => {}
        _ => return Ok(None),
    }
    let Some((order, ties)) = e.order_by().split_first() else {
        return Ok(None);
    };
    while is_pass_through(&pre_top) {
        pre_top = pre_top.children()[0].clone();
    }
    let schema = pre_top.schema();
    // Ranked by something else than time: not deduplication (a top-N without a window,
    // refused with what to do instead).
    let Some(time) = order.expr.downcast_ref::<Column>().filter(|c| {
        c.index() < schema.fields().len()
            && matches!(
                schema.field(c.index()).data_type(),
                DataType::Timestamp(_, _)
            )
    }) else {
        return Ok(None);
    };
    if order.options.descending {
        return Err(WeirError::user(
            "deduplication keeps the first row per key: ORDER BY the event time ascending. \
             Keeping the last row (DESC) would change a row already emitted, which an \
             append-only view cannot do",
        ));
    }
    let dedup = Dedup::try_new(
        schema.clone(),
        schema.field(time.index()).name().clone(),
        e.partition_by().to_vec(),
        ties.to_vec(),
        state_ttl.map(|d| d.as_millis() as i64),
    )?;
    let slot = Arc::new(BatchSlot::default());
    let leaf: Arc<dyn ExecutionPlan> = Arc::new(SlotExec::new(
        "first rows".into(),
        schema,
        None,
        slot.clone(),
    )?);
    let post_plan = replace_node(physical.clone(), &pre_top, leaf)?;
    Ok(Some(Split {
        inputs: vec![input],
        output_schema: physical.schema(),
        kind: ViewPlanKind::Windowed {
            pre: SlotPlan::new(pre_top, input_slot, task_ctx.clone()),
            aggregate: Box::new(dedup),
            post: SlotPlan::new(post_plan, slot, task_ctx),
        },
    }))
}

/// An aggregate over a stream without a window: an updating view ([`UpdatingAggregator`]).
/// The pre plan runs per micro-batch, and the post plan (HAVING, projection) over the old
/// and the new aggregate rows of the groups each batch changed. The GROUP BY columns must
/// be selected (renamed or not): they identify the view's rows.
pub(super) fn split_updating(
    physical: &Arc<dyn ExecutionPlan>,
    top: &Arc<dyn ExecutionPlan>,
    aggs: &[Arc<dyn ExecutionPlan>],
    (input, input_slot): (String, Arc<BatchSlot>),
    state_ttl: Option<std::time::Duration>,
    task_ctx: &Arc<TaskContext>,
) -> Result<Split> {
    let raw = raw_aggregate(top, aggs)?;
    let Some(raw_exec) = raw.downcast_ref::<AggregateExec>() else {
        return Err(WeirError::Internal("aggregate downcast".into()));
    };
    let pre = raw_exec.input().clone();
    if !window_function_nodes(physical).is_empty() {
        return Err(WeirError::user(
            "window functions (OVER) over an aggregate without a window are not supported: \
             rank over a window (FROM TUMBLE(...)) instead",
        ));
    }
    reject_per_batch_limits(physical)?;
    let groups = raw_exec.group_expr().expr().len();
    let output = physical.schema();
    let mut keys = Vec::with_capacity(groups);
    for g in 0..groups {
        let found = (0..output.fields().len())
            .find(|&j| column_through(physical, j, top) == Some(g))
            .map(|j| output.field(j).name().clone());
        match found {
            Some(name) => keys.push(name),
            None => {
                return Err(WeirError::user(format!(
                    "an aggregate without a window is an updating view, whose rows are \
                     identified by its GROUP BY columns: select {} (as it is, or renamed)",
                    top.schema().field(g).name()
                )));
            }
        }
    }
    let aggregate = UpdatingAggregator::try_new(raw_exec, top.schema(), keys, state_ttl)?;
    let slot = Arc::new(BatchSlot::default());
    let leaf: Arc<dyn ExecutionPlan> = Arc::new(SlotExec::new(
        "changed groups".into(),
        top.schema(),
        None,
        slot.clone(),
    )?);
    let post = replace_node(physical.clone(), top, leaf)?;
    Ok(Split {
        inputs: vec![input],
        output_schema: output,
        kind: ViewPlanKind::Updating {
            pre: SlotPlan::new(pre, input_slot, task_ctx.clone()),
            aggregate: Box::new(aggregate),
            post: SlotPlan::new(post, slot, task_ctx.clone()),
        },
    })
}
