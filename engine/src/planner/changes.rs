//! Views over an updating view: the input's changes (its columns plus the op column,
//! `changelog.rs`) pass through filters and projections with their op, so a filter over a
//! changelog is a changelog of the filtered rows (a row that stops matching is deleted by
//! the old row's delete; the retract form makes that work without state). The planner
//! registers an updating view's table with the op column, and [`carry_ops`] makes every
//! projection keep it and puts it last.

use super::{PlannerEnv, RelationKind};
use crate::changelog::OP_COLUMN;
use crate::error::{Result, WeirError};
use datafusion::common::Column;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Expr, LogicalPlan, Projection};
use std::sync::Arc;

/// The updating views (changelog relations) `plan` scans, by name.
pub(super) fn changelog_inputs(plan: &LogicalPlan, env: &PlannerEnv) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    // The visitor never fails: `apply` returns Ok.
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(t) = node {
            let name = t.table_name.table().to_string();
            let changes = env.relation(&name).is_some_and(|r| {
                matches!(
                    r.kind,
                    RelationKind::View {
                        changelog: true,
                        ..
                    }
                )
            });
            if changes && !out.contains(&name) {
                out.push(name);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

/// Whether `plan` aggregates (GROUP BY or a global aggregate).
pub(super) fn aggregates(plan: &LogicalPlan) -> bool {
    let mut found = false;
    // The visitor never fails: `apply` returns Ok.
    let _ = plan.apply(|node| {
        found |= matches!(node, LogicalPlan::Aggregate(_));
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

fn op_column(plan: &LogicalPlan) -> Option<Expr> {
    let (qualifier, _) = plan
        .schema()
        .qualified_field_with_unqualified_name(OP_COLUMN)
        .ok()?;
    Some(Expr::Column(Column::new(qualifier.cloned(), OP_COLUMN)))
}

/// `plan` with every projection keeping the op column of its input, and the op column
/// moved last. Fails when an operator other than a filter or projection would drop it
/// (an aggregate, a window function, a join): those are not supported over changes yet.
pub(super) fn carry_ops(plan: LogicalPlan, input: &str) -> Result<LogicalPlan> {
    let carried = plan
        .transform_up(|node| {
            let LogicalPlan::Projection(p) = &node else {
                return Ok(Transformed::no(node));
            };
            if p.schema.has_column_with_unqualified_name(OP_COLUMN) {
                return Ok(Transformed::no(node));
            }
            let Some(op) = op_column(&p.input) else {
                return Ok(Transformed::no(node));
            };
            let mut expr = p.expr.clone();
            expr.push(op);
            Ok(Transformed::yes(LogicalPlan::Projection(
                Projection::try_new(expr, p.input.clone())?,
            )))
        })?
        .data;
    let schema = carried.schema().clone();
    let Some(op) = op_column(&carried) else {
        return Err(not_supported(input));
    };
    let mut expr: Vec<Expr> = schema
        .iter()
        .filter(|(_, f)| f.name() != OP_COLUMN)
        .map(|(q, f)| Expr::Column(Column::new(q.cloned(), f.name())))
        .collect();
    expr.push(op);
    Ok(LogicalPlan::Projection(Projection::try_new(
        expr,
        Arc::new(carried),
    )?))
}

pub(super) fn not_supported(input: &str) -> WeirError {
    WeirError::user(format!(
        "view '{input}' is an updating view (an aggregate without a window): a view over it \
         may filter, project and aggregate its rows; windowing, joining or unioning them is \
         not supported yet"
    ))
}

/// The name the column `name` of `plan`'s output has in the scanned input, when it is an
/// input column passed through filters and projections (renamed at most).
fn input_column(plan: &LogicalPlan, name: &str) -> Option<String> {
    match plan {
        LogicalPlan::Projection(p) => {
            let i = p.schema.index_of_column_by_name(None, name)?;
            let mut e = &p.expr[i];
            if let Expr::Alias(a) = e {
                e = &a.expr;
            }
            match e {
                Expr::Column(c) => input_column(&p.input, &c.name),
                _ => None,
            }
        }
        LogicalPlan::Filter(f) => input_column(&f.input, name),
        LogicalPlan::SubqueryAlias(s) => input_column(&s.input, name),
        LogicalPlan::Sort(s) => input_column(&s.input, name),
        LogicalPlan::TableScan(_) => Some(name.to_string()),
        _ => None,
    }
}

/// The view's key: the output columns the input's key columns became. Each must be
/// selected, or the view's rows could not be told apart.
pub(super) fn key_through(
    plan: &LogicalPlan,
    input: &str,
    input_key: &[String],
) -> Result<Vec<String>> {
    let outputs: Vec<(String, Option<String>)> = plan
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), input_column(plan, f.name())))
        .collect();
    input_key
        .iter()
        .map(|k| {
            outputs
                .iter()
                .find(|(_, from)| from.as_deref() == Some(k.as_str()))
                .map(|(name, _)| name.clone())
                .ok_or_else(|| {
                    WeirError::user(format!(
                        "a view over the updating view '{input}' must select its key column \
                         {k} (as it is, or renamed): it identifies the rows that change"
                    ))
                })
        })
        .collect()
}
