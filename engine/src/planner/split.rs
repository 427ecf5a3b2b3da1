//! Splitting a view's DataFusion physical plan into the parts the dataflow drives:
//!
//! ```text
//!   post  (HAVING, projection, ORDER BY/LIMIT, top-N)   run once per closed window
//!   ----- aggregate ------------------------------------  WindowAggregator: DataFusion
//!                                                         accumulators per open window
//!   pre   (scan, WHERE, projection, window columns)      run once per micro-batch
//! ```
//!
//! A view without an aggregate is all `pre` (stateless). A view whose window functions
//! rank a window's raw rows (top-N) is split at its lowest window-function operator
//! ([`WindowRows`] holds each window's rows). A view that joins two streams is split at
//! the join instead (see `join.rs`):
//!
//! ```text
//!   post  (projection, filter above the join)            run once per join output batch
//!   ----- join ------------------------------------------  StreamJoin: both sides' rows
//!   left side | right side (scan, WHERE, projection)     run once per micro-batch of a side
//! ```
//!
//! A join whose one side reads no stream (a lookup join with a reference table) is not
//! split: it stays inside DataFusion's per-batch plan.

use super::ViewPlanKind;
use super::slot::{BatchSlot, SlotExec, SlotPlan};
use crate::error::{Result, WeirError};
use crate::join::StreamJoin;
use crate::sql::WindowSpec;
use crate::window::{RankLimit, WindowAggregator, WindowRows};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::JoinType;
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{BinaryExpr, Literal};
use datafusion::physical_expr::split_conjunction;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::WindowExpr;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::expressions::Column;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};
use std::sync::Arc;
use unwindowed::{combines_by_union, split_dedup, split_distinct, split_union, split_updating};

mod count;
mod unwindowed;

pub use count::split_count_window;

/// A view's plan cut into its streaming parts.
pub struct Split {
    /// The relations the view reads: one, or a join's left and right input (the same name
    /// twice for a self-join).
    pub inputs: Vec<String>,
    pub output_schema: SchemaRef,
    pub kind: ViewPlanKind,
}

/// Find every stream input leaf in a plan.
fn stream_inputs(plan: &Arc<dyn ExecutionPlan>) -> Vec<(String, Arc<BatchSlot>)> {
    let mut out: Vec<(String, Arc<BatchSlot>)> = Vec::new();
    // The visitor never fails: `apply` returns Ok.
    let _ = plan.apply(|node| {
        if let Some(s) = node.downcast_ref::<SlotExec>() {
            out.push((s.input_name.clone(), s.slot.clone()));
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

fn find_aggregates(plan: &Arc<dyn ExecutionPlan>) -> Vec<Arc<dyn ExecutionPlan>> {
    let mut out = Vec::new();
    // The visitor never fails: `apply` returns Ok.
    let _ = plan.apply(|node| {
        if node.downcast_ref::<AggregateExec>().is_some() {
            out.push(node.clone());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

/// Split a physical plan for a view. `window` is the window table function the query used.
pub fn split_plan(
    physical: Arc<dyn ExecutionPlan>,
    window: Option<&WindowSpec>,
    state_ttl: Option<std::time::Duration>,
    task_ctx: Arc<TaskContext>,
) -> Result<Split> {
    let output_schema = physical.schema();
    let inputs = stream_inputs(&physical);
    let input = match inputs.as_slice() {
        [] => {
            return Err(WeirError::user(
                "a materialized view must read a source or another view",
            ));
        }
        [(name, _)] => name.clone(),
        _ if combines_by_union(&physical) => return split_union(physical, inputs, task_ctx),
        _ => return split_join(physical, task_ctx),
    };
    let aggs = find_aggregates(&physical);
    let ranked = window_function_nodes(&physical);
    let Some(top) = aggs.first().cloned() else {
        if !ranked.is_empty() {
            if window.is_none()
                && let Some(split) = split_dedup(
                    &physical,
                    inputs[0].clone(),
                    &ranked,
                    state_ttl,
                    task_ctx.clone(),
                )?
            {
                return Ok(split);
            }
            return split_window_rows(physical, window, inputs[0].clone(), &ranked, task_ctx);
        }
        reject_per_batch_limits(&physical)?;
        let slot = inputs[0].1.clone();
        return Ok(Split {
            inputs: vec![input],
            output_schema,
            kind: ViewPlanKind::Stateless {
                plan: SlotPlan::new(physical, slot, task_ctx),
            },
        });
    };
    let Some(window) = window else {
        if let Some(split) =
            split_distinct(&physical, &top, &aggs, input.clone(), &inputs, &task_ctx)?
        {
            return Ok(split);
        }
        return split_updating(
            &physical,
            &top,
            &aggs,
            inputs[0].clone(),
            state_ttl,
            &task_ctx,
        );
    };
    let raw = raw_aggregate(&top, &aggs)?;
    let raw_exec = raw
        .downcast_ref::<AggregateExec>()
        .ok_or_else(|| WeirError::Internal("aggregate downcast".into()))?;
    let pre_plan = raw_exec.input().clone();
    if !window_function_nodes(&pre_plan).is_empty() {
        return Err(WeirError::user(
            "window functions (OVER) below a streaming aggregation are not supported: rank in \
             a view of its own (PARTITION BY window_start) and aggregate over that view",
        ));
    }
    let aggregate = Box::new(WindowAggregator::try_new(raw_exec, top.schema(), window)?);
    let slot = Arc::new(BatchSlot::default());
    let agg_out = top.schema();
    let leaf: Arc<dyn ExecutionPlan> = Arc::new(SlotExec::new(
        "window aggregate".into(),
        agg_out,
        None,
        slot.clone(),
    )?);
    let post_plan = replace_node(physical, &top, leaf)?;
    Ok(Split {
        inputs: vec![input],
        output_schema,
        kind: ViewPlanKind::Windowed {
            pre: SlotPlan::new(pre_plan, inputs[0].1.clone(), task_ctx.clone()),
            aggregate,
            post: SlotPlan::new(post_plan, slot, task_ctx),
        },
    })
}

/// The aggregate that sees a view's raw rows: the top one in Single mode, else the partial
/// one below it. Any other aggregate in the plan is a nested aggregation, refused.
fn raw_aggregate(
    top: &Arc<dyn ExecutionPlan>,
    aggs: &[Arc<dyn ExecutionPlan>],
) -> Result<Arc<dyn ExecutionPlan>> {
    let top_exec = top
        .downcast_ref::<AggregateExec>()
        .ok_or_else(|| WeirError::Internal("aggregate downcast".into()))?;
    let raw = match top_exec.mode() {
        AggregateMode::Single | AggregateMode::SinglePartitioned => top.clone(),
        _ => aggs
            .iter()
            .skip(1)
            .find(|a| {
                a.downcast_ref::<AggregateExec>()
                    .is_some_and(|e| *e.mode() == AggregateMode::Partial)
            })
            .cloned()
            .ok_or_else(|| WeirError::Internal("no partial aggregate below final".into()))?,
    };
    let raw_count = if Arc::ptr_eq(&raw, top) { 1 } else { 2 };
    if aggs.len() > raw_count {
        return Err(WeirError::user(
            "a streaming view may aggregate once; nested aggregations (or DISTINCT rewritten into them) \
             are not supported yet",
        ));
    }
    Ok(raw)
}

/// The window-function operators of a plan, outermost first.
fn window_function_nodes(plan: &Arc<dyn ExecutionPlan>) -> Vec<Arc<dyn ExecutionPlan>> {
    let mut out = Vec::new();
    // The visitor never fails: `apply` returns Ok.
    let _ = plan.apply(|node| {
        if window_exprs(node).is_some() {
            out.push(node.clone());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

/// A window-function operator's expressions and its input.
type WindowOperatorParts = (Vec<Arc<dyn WindowExpr>>, Arc<dyn ExecutionPlan>);

fn window_exprs(node: &Arc<dyn ExecutionPlan>) -> Option<WindowOperatorParts> {
    if let Some(w) = node.downcast_ref::<BoundedWindowAggExec>() {
        return Some((w.window_expr().to_vec(), w.input().clone()));
    }
    if let Some(w) = node.downcast_ref::<WindowAggExec>() {
        return Some((w.window_expr().to_vec(), w.input().clone()));
    }
    None
}

/// Operators that pass rows through in the same schema.
fn is_pass_through(node: &Arc<dyn ExecutionPlan>) -> bool {
    matches!(
        node.name(),
        "SortExec"
            | "CooperativeExec"
            | "CoalesceBatchesExec"
            | "CoalescePartitionsExec"
            | "RepartitionExec"
            | "SortPreservingMergeExec"
    ) && node.children().len() == 1
}

/// Whether `column` of `schema` is a window bound.
fn is_window_bound(e: &Arc<dyn PhysicalExpr>, schema: &SchemaRef) -> bool {
    e.downcast_ref::<Column>().is_some_and(|c| {
        c.index() < schema.fields().len()
            && matches!(
                schema.field(c.index()).name().as_str(),
                "window_start" | "window_end"
            )
    })
}

/// A LIMIT over unwindowed rows would apply to each micro-batch.
fn reject_per_batch_limits(plan: &Arc<dyn ExecutionPlan>) -> Result<()> {
    let mut found = false;
    // The visitor never fails: `apply` returns Ok.
    let _ = plan.apply(|node| {
        let limited = match node.name() {
            "GlobalLimitExec" | "LocalLimitExec" => true,
            "SortExec" | "SortExec(TopK)" => node.fetch().is_some(),
            _ => false,
        };
        found |= limited;
        Ok(TreeNodeRecursion::Continue)
    });
    if found {
        return Err(WeirError::user(
            "LIMIT over a stream is not supported: a stream has no end to count from. For the \
             first N rows of each window, rank them: SELECT * FROM (SELECT *, ROW_NUMBER() OVER \
             (PARTITION BY window_start ORDER BY ...) AS rn FROM TUMBLE(...)) WHERE rn <= N",
        ));
    }
    Ok(())
}

/// Split a view whose window functions read unaggregated rows of a window (top-N per
/// window) at the lowest window-function operator: the pre plan (scan, WHERE, window
/// columns) runs per micro-batch, [`WindowRows`] holds each window's rows (or its top-N
/// candidates), and the post plan (sort, window functions, the filter and projection above)
/// runs over each closed window.
fn split_window_rows(
    physical: Arc<dyn ExecutionPlan>,
    window: Option<&WindowSpec>,
    (input, input_slot): (String, Arc<BatchSlot>),
    nodes: &[Arc<dyn ExecutionPlan>],
    task_ctx: Arc<TaskContext>,
) -> Result<Split> {
    const NEEDS_WINDOW: &str = "window functions (OVER) over a stream need a window to rank \
        in: read FROM TUMBLE(source, time_column, INTERVAL '...') (over a windowed view: \
        TUMBLE(view, window_start, INTERVAL 'its window size')) and PARTITION BY window_start";
    let Some(window) = window else {
        return Err(WeirError::user(NEEDS_WINDOW));
    };
    for node in nodes {
        let Some((exprs, node_input)) = window_exprs(node) else {
            continue;
        };
        let schema = node_input.schema();
        for e in &exprs {
            if !e.partition_by().iter().any(|p| is_window_bound(p, &schema)) {
                return Err(WeirError::user(format!(
                    "{NEEDS_WINDOW}; {} is not partitioned by window_start",
                    e.name().split(" PARTITION BY").next().unwrap_or(e.name())
                )));
            }
        }
    }
    let lowest = nodes[nodes.len() - 1].clone();
    let Some((_, mut pre_top)) = window_exprs(&lowest) else {
        return Err(WeirError::Internal("window operator downcast".into()));
    };
    while is_pass_through(&pre_top) {
        pre_top = pre_top.children()[0].clone();
    }
    let limit = rank_limit(&physical, &lowest);
    let schema = pre_top.schema();
    let rows = WindowRows::try_new(
        window.kind,
        window.time_column.clone(),
        schema.clone(),
        limit,
    )?;
    let output_schema = physical.schema();
    let slot = Arc::new(BatchSlot::default());
    let leaf: Arc<dyn ExecutionPlan> = Arc::new(SlotExec::new(
        "window rows".into(),
        schema,
        None,
        slot.clone(),
    )?);
    let post_plan = replace_node(physical, &pre_top, leaf)?;
    Ok(Split {
        inputs: vec![input],
        output_schema,
        kind: ViewPlanKind::Windowed {
            pre: SlotPlan::new(pre_top, input_slot, task_ctx.clone()),
            aggregate: Box::new(rows),
            post: SlotPlan::new(post_plan, slot, task_ctx),
        },
    })
}

/// The top-N a view keeps, when only ranking functions (ROW_NUMBER, RANK, DENSE_RANK, all
/// over the same partitions and order) run in `lowest` and a filter right above it keeps
/// ranks up to N: then only each partition's N best rows (ties included) need keeping.
fn rank_limit(
    physical: &Arc<dyn ExecutionPlan>,
    lowest: &Arc<dyn ExecutionPlan>,
) -> Option<RankLimit> {
    let (exprs, input) = window_exprs(lowest)?;
    let first = exprs.first()?;
    let same = |e: &Arc<dyn WindowExpr>| {
        let p = |e: &Arc<dyn WindowExpr>| {
            e.partition_by()
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
        };
        let o = |e: &Arc<dyn WindowExpr>| {
            e.order_by()
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
        };
        p(e) == p(first) && o(e) == o(first)
    };
    let mut dense = false;
    for e in &exprs {
        let name = e.name().to_ascii_lowercase();
        if name.starts_with("dense_rank(") {
            dense = true;
        } else if !(name.starts_with("row_number(") || name.starts_with("rank(")) {
            return None;
        }
        if !same(e) {
            return None;
        }
    }
    if first.order_by().is_empty() {
        return None;
    }
    let schema = input.schema();
    let width = schema.fields().len();
    let is_rank = |i: usize| i >= width && i < width + exprs.len();
    // Filters above the window operator (through projections and other filters), and the
    // smallest rank bound in them.
    let mut n: Option<i64> = None;
    // The visitor never fails: `apply` returns Ok.
    let _ = physical.apply(|node| {
        if let Some(f) = node.downcast_ref::<FilterExec>() {
            for c in split_conjunction(f.predicate()) {
                let column_of_rank =
                    |i: usize| column_through(f.input(), i, lowest).is_some_and(is_rank);
                if let Some(bound) = rank_bound(c, &column_of_rank) {
                    n = Some(n.map_or(bound, |m| m.min(bound)));
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    Some(RankLimit {
        n: n?.max(1) as usize,
        dense,
        partition: first
            .partition_by()
            .iter()
            .filter(|p| !is_window_bound(p, &schema))
            .cloned()
            .collect(),
        order: first.order_by().to_vec(),
    })
}

/// One step down: the child of a projection, filter or pass-through operator and the index
/// there of `plan`'s output column `i`, when that column is a child column passed through
/// unchanged (renamed at most).
fn column_below(
    plan: &Arc<dyn ExecutionPlan>,
    i: usize,
) -> Option<(Arc<dyn ExecutionPlan>, usize)> {
    if let Some(p) = plan.downcast_ref::<ProjectionExec>() {
        let c = p.expr().get(i)?.expr.downcast_ref::<Column>()?;
        return Some((p.input().clone(), c.index()));
    }
    if let Some(f) = plan.downcast_ref::<FilterExec>() {
        let i = match f.projection() {
            Some(p) => *p.get(i)?,
            None => i,
        };
        return Some((f.input().clone(), i));
    }
    is_pass_through(plan).then(|| (plan.children()[0].clone(), i))
}

/// Column `i` of `plan`'s output as a column of `target`'s output, following projections,
/// filters and pass-through operators down to `target`.
fn column_through(
    plan: &Arc<dyn ExecutionPlan>,
    i: usize,
    target: &Arc<dyn ExecutionPlan>,
) -> Option<usize> {
    let (mut plan, mut i) = (plan.clone(), i);
    while !Arc::ptr_eq(&plan, target) {
        (plan, i) = column_below(&plan, i)?;
    }
    Some(i)
}

/// N from `rank <= N`, `rank < N + 1` or `rank = N` (either way round), where `rank(i)`
/// tells whether column `i` is a rank.
fn rank_bound(e: &Arc<dyn PhysicalExpr>, rank_column: &dyn Fn(usize) -> bool) -> Option<i64> {
    let b = e.downcast_ref::<BinaryExpr>()?;
    let rank = |x: &Arc<dyn PhysicalExpr>| {
        x.downcast_ref::<Column>()
            .is_some_and(|c| rank_column(c.index()))
    };
    let value = |x: &Arc<dyn PhysicalExpr>| match x
        .downcast_ref::<Literal>()?
        .value()
        .cast_to(&DataType::Int64)
    {
        Ok(ScalarValue::Int64(Some(v))) => Some(v),
        _ => None,
    };
    let (op, v) = if rank(b.left()) {
        (*b.op(), value(b.right())?)
    } else if rank(b.right()) {
        let flipped = match b.op() {
            Operator::Gt => Operator::Lt,
            Operator::GtEq => Operator::LtEq,
            Operator::Eq => Operator::Eq,
            _ => return None,
        };
        (flipped, value(b.left())?)
    } else {
        return None;
    };
    match op {
        Operator::LtEq | Operator::Eq => Some(v),
        Operator::Lt => Some(v - 1),
        _ => None,
    }
}

/// `plan` with the node `target` replaced by `leaf`.
fn replace_node(
    plan: Arc<dyn ExecutionPlan>,
    target: &Arc<dyn ExecutionPlan>,
    leaf: Arc<dyn ExecutionPlan>,
) -> Result<Arc<dyn ExecutionPlan>> {
    Ok(plan
        .transform_down(|node| {
            if Arc::ptr_eq(&node, target) {
                Ok(Transformed::new(
                    leaf.clone(),
                    true,
                    TreeNodeRecursion::Jump,
                ))
            } else {
                Ok(Transformed::no(node))
            }
        })?
        .data)
}

/// Where output column `i` of `plan` comes from, if it is a column of the stream input
/// passed through unchanged (renamed at most): that column's name in the input.
fn column_origin(plan: &Arc<dyn ExecutionPlan>, i: usize) -> Option<String> {
    let (mut plan, mut i) = (plan.clone(), i);
    loop {
        if let Some(s) = plan.downcast_ref::<SlotExec>() {
            return s.input_column(i);
        }
        (plan, i) = column_below(&plan, i)?;
    }
}

/// Operators with two or more children that each read a stream, top first.
fn combining_nodes(physical: &Arc<dyn ExecutionPlan>) -> Vec<Arc<dyn ExecutionPlan>> {
    let mut combining: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
    // The visitor never fails: `apply` returns Ok.
    let _ = physical.apply(|node| {
        let children = node.children();
        if children.len() >= 2
            && children
                .iter()
                .filter(|c| !stream_inputs(c).is_empty())
                .count()
                >= 2
        {
            combining.push(node.clone());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    combining
}

/// Split the plan of a view that reads two streams at the join of the two.
fn split_join(physical: Arc<dyn ExecutionPlan>, task_ctx: Arc<TaskContext>) -> Result<Split> {
    let output_schema = physical.schema();
    let combining = combining_nodes(&physical);
    let Some(top) = combining.first().cloned() else {
        return Err(WeirError::Internal(
            "a plan with two stream inputs that combines neither".into(),
        ));
    };
    if let Some(u) = combining
        .iter()
        .find(|n| n.downcast_ref::<HashJoinExec>().is_none())
    {
        return Err(WeirError::user(match u.name() {
            "NestedLoopJoinExec" | "CrossJoinExec" => {
                "a join of two streams needs an equality between them (ON a.key = b.key); \
                 cross joins and joins on inequalities alone are not supported"
                    .to_string()
            }
            "UnionExec" | "InterleaveExec" => {
                "a view may join two streams or UNION ALL several, not both: create the union \
                 as a view of its own and join that view"
                    .to_string()
            }
            other => format!(
                "{other} over two streams is not supported; a view may read one stream or join two"
            ),
        }));
    }
    if combining.len() > 1 {
        return Err(WeirError::user(
            "a view may join two streams; to join more, join two in one view and join that \
             view with the next stream in another view",
        ));
    }
    if !window_function_nodes(&physical).is_empty() {
        return Err(WeirError::user(
            "window functions (OVER) in a view that joins two streams are not supported: \
             create the join as its own view and rank over that view",
        ));
    }
    let hj = top
        .downcast_ref::<HashJoinExec>()
        .ok_or_else(|| WeirError::Internal("join downcast".into()))?;
    if hj.fetch().is_some() {
        return Err(WeirError::user(
            "LIMIT over a join of two streams is not supported",
        ));
    }
    match hj.join_type() {
        JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full => {}
        other => {
            return Err(WeirError::user(format!(
                "inner and outer joins of two streams are supported, not a {other} join \
                 (IN, EXISTS and their negations over a second stream plan as semi and anti joins)"
            )));
        }
    }
    // Aggregates above the join, or inside a side.
    let side_plans = [hj.left().clone(), hj.right().clone()];
    let mut below = 0;
    for side in &side_plans {
        below += find_aggregates(side).len();
    }
    if find_aggregates(&physical).len() > below {
        return Err(WeirError::user(
            "a view cannot aggregate the result of a join of two streams; create the join as \
             its own materialized view and aggregate over that view in another",
        ));
    }
    if below > 0 {
        return Err(WeirError::user(
            "each side of a join of two streams must be stateless (filters, projections); \
             aggregate (or window) in a view of its own and join that view",
        ));
    }
    let mut sides = Vec::with_capacity(2);
    let mut names = Vec::with_capacity(2);
    for side in &side_plans {
        let leaves = stream_inputs(side);
        let [(name, slot)] = leaves.as_slice() else {
            return Err(WeirError::Internal(
                "a join side with several streams".into(),
            ));
        };
        names.push(name.clone());
        sides.push(SlotPlan::new(side.clone(), slot.clone(), task_ctx.clone()));
    }
    let mut join = Box::new(StreamJoin::try_new(
        hj,
        [names[0].clone(), names[1].clone()],
    )?);
    join.key_origins = hj
        .on()
        .iter()
        .map(|(l, r)| {
            let origin = |side: &Arc<dyn ExecutionPlan>, e: &Arc<dyn PhysicalExpr>| {
                e.downcast_ref::<Column>()
                    .and_then(|c| column_origin(side, c.index()))
            };
            [origin(&side_plans[0], l), origin(&side_plans[1], r)]
        })
        .collect();
    let slot = Arc::new(BatchSlot::default());
    let leaf: Arc<dyn ExecutionPlan> = Arc::new(SlotExec::new(
        "join output".into(),
        join.output_schema(),
        None,
        slot.clone(),
    )?);
    let post = replace_node(physical, &top, leaf)?;
    Ok(Split {
        inputs: names,
        output_schema,
        kind: ViewPlanKind::Join {
            sides,
            join,
            post: SlotPlan::new(post, slot, task_ctx),
        },
    })
}
