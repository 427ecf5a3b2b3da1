//! The aggregate side of window state: DataFusion's `GroupsAccumulator`s (one per aggregate,
//! sharing group numbers), and for panes the interner that numbers group keys.
//!
//! DataFusion's accumulators give their intermediate state out only by giving it up
//! (`state()` resets them). [`State`] is that state kept as arrays (keys plus state columns,
//! one row per group): a pane freezes into one once its windows need to read it, and a
//! window's result is built by merging frozen states into fresh accumulators.

use crate::error::{Result, WeirError};
use datafusion::arrow::array::{ArrayRef, BooleanArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::GroupsAccumulatorAdapter;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use std::sync::Arc;

/// What every window's state is made of: its key columns (the GROUP BY columns other than
/// the window bounds) and its aggregates.
#[derive(Clone)]
pub(crate) struct Layout {
    pub key_schema: SchemaRef,
    pub aggregates: Vec<Arc<AggregateFunctionExpr>>,
    /// How many state columns each aggregate has.
    pub state_widths: Vec<usize>,
}

impl Layout {
    pub fn new(key_schema: SchemaRef, aggregates: Vec<Arc<AggregateFunctionExpr>>) -> Result<Self> {
        let state_widths = aggregates
            .iter()
            .map(|a| Ok(a.state_fields()?.len()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Layout {
            key_schema,
            aggregates,
            state_widths,
        })
    }

    pub fn accumulators(&self) -> Result<Accumulators> {
        let mut out = Vec::with_capacity(self.aggregates.len());
        for a in &self.aggregates {
            let acc: Box<dyn GroupsAccumulator> = if a.groups_accumulator_supported() {
                a.create_groups_accumulator()?
            } else {
                let a = a.clone();
                Box::new(GroupsAccumulatorAdapter::new(move || {
                    a.create_accumulator()
                }))
            };
            out.push(acc);
        }
        Ok(Accumulators(out))
    }

    /// The intermediate state columns of every aggregate, in order, named `__agg{i}_{j}`
    /// (nullable: checkpoints also hold rows without state).
    pub fn state_fields(&self) -> Result<Vec<Field>> {
        let mut fields = Vec::new();
        for (i, a) in self.aggregates.iter().enumerate() {
            for (j, f) in a.state_fields()?.iter().enumerate() {
                fields.push(
                    f.as_ref()
                        .clone()
                        .with_name(format!("__agg{i}_{j}"))
                        .with_nullable(true),
                );
            }
        }
        Ok(fields)
    }

    /// Key columns as the key schema types (state read back from a checkpoint).
    pub fn cast_keys(&self, keys: Vec<ArrayRef>) -> Result<Vec<ArrayRef>> {
        keys.into_iter()
            .zip(self.key_schema.fields())
            .map(|(k, f)| cast_to(k, f.data_type()))
            .collect()
    }
}

/// What an aggregate that sees raw rows evaluates per row: each aggregate's arguments
/// (ORDER BY expressions after them) and FILTER.
pub(crate) struct AggregateInputs {
    pub aggregates: Vec<Arc<AggregateFunctionExpr>>,
    pub arguments: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    pub filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
}

impl AggregateInputs {
    /// Those of `raw` (a `Single` or `Partial` aggregate); grouping sets are refused.
    pub fn of(raw: &AggregateExec) -> Result<Self> {
        if raw.group_expr().has_grouping_set() {
            return Err(WeirError::user(
                "GROUPING SETS, CUBE and ROLLUP are not supported in streaming views",
            ));
        }
        let aggregates = raw.aggr_expr().to_vec();
        let arguments = aggregates
            .iter()
            .map(|a| {
                let mut args = a.expressions();
                args.extend(a.order_bys().iter().map(|s| s.expr.clone()));
                args
            })
            .collect();
        Ok(AggregateInputs {
            aggregates,
            arguments,
            filters: raw.filter_expr().to_vec(),
        })
    }
}

/// Each aggregate's argument arrays.
pub(crate) type Arguments = Vec<Vec<ArrayRef>>;
/// Each aggregate's FILTER, evaluated.
pub(crate) type Filters = Vec<Option<BooleanArray>>;

/// The aggregates' arguments and FILTERs evaluated over `batch` (a pre plan's rows).
pub(crate) fn evaluate_arguments(
    arguments: &[Vec<Arc<dyn PhysicalExpr>>],
    filters: &[Option<Arc<dyn PhysicalExpr>>],
    batch: &datafusion::arrow::record_batch::RecordBatch,
) -> Result<(Arguments, Filters)> {
    let n = batch.num_rows();
    let eval =
        |e: &Arc<dyn PhysicalExpr>| -> Result<ArrayRef> { Ok(e.evaluate(batch)?.into_array(n)?) };
    let args = arguments
        .iter()
        .map(|exprs| exprs.iter().map(eval).collect::<Result<Vec<_>>>())
        .collect::<Result<Vec<_>>>()?;
    let filters = filters
        .iter()
        .map(|f| match f {
            None => Ok(None),
            Some(e) => eval(e)?
                .as_any()
                .downcast_ref::<BooleanArray>()
                .cloned()
                .map(Some)
                .ok_or_else(|| WeirError::Internal("FILTER is not boolean".into())),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((args, filters))
}

/// One accumulator per aggregate, sharing group numbers.
pub(crate) struct Accumulators(Vec<Box<dyn GroupsAccumulator>>);

impl Accumulators {
    /// Fold rows in: `args[i]` are aggregate `i`'s arguments, `groups` each row's group.
    pub fn update(
        &mut self,
        args: &[Vec<ArrayRef>],
        filters: &[Option<BooleanArray>],
        groups: &[usize],
        total: usize,
    ) -> Result<()> {
        for (i, acc) in self.0.iter_mut().enumerate() {
            acc.update_batch(&args[i], groups, filters[i].as_ref(), total)?;
        }
        Ok(())
    }

    /// Merge intermediate state (all aggregates' state columns side by side, `widths` each).
    pub fn merge(
        &mut self,
        states: &[ArrayRef],
        widths: &[usize],
        groups: &[usize],
        total: usize,
    ) -> Result<()> {
        if groups.is_empty() {
            return Ok(());
        }
        let mut col = 0;
        for (acc, &w) in self.0.iter_mut().zip(widths) {
            acc.merge_batch(&states[col..col + w], groups, total)?;
            col += w;
        }
        Ok(())
    }

    /// Intermediate state of the groups `emit` names, all aggregates side by side; those
    /// groups are removed.
    pub fn state(&mut self, emit: EmitTo) -> Result<Vec<ArrayRef>> {
        let mut out = Vec::new();
        for acc in self.0.iter_mut() {
            out.extend(acc.state(emit)?);
        }
        Ok(out)
    }

    /// Final values of the groups `emit` names, one array per aggregate; those groups are
    /// removed.
    pub fn evaluate(&mut self, emit: EmitTo) -> Result<Vec<ArrayRef>> {
        self.0.iter_mut().map(|a| Ok(a.evaluate(emit)?)).collect()
    }

    pub fn size(&self) -> usize {
        self.0.iter().map(|a| a.size()).sum()
    }
}

/// Group keys to dense group numbers.
enum Keys {
    /// No key columns: every row is in group 0. Holds how many groups exist (0 or 1).
    Unit(usize),
    Values(Box<dyn GroupValues>),
}

/// Intermediate state of some groups, as arrays: key columns, then every aggregate's state
/// columns (one row per group).
#[derive(Clone)]
pub(crate) struct State {
    pub keys: Vec<ArrayRef>,
    pub states: Vec<ArrayRef>,
    pub rows: usize,
}

/// The groups of one pane, or of one window being evaluated: keys numbered by their first
/// appearance, and their accumulators.
pub(crate) struct Groups {
    keys: Keys,
    accs: Accumulators,
    ids: Vec<usize>,
}

impl Groups {
    pub fn new(layout: &Layout) -> Result<Self> {
        let keys = if layout.key_schema.fields().is_empty() {
            Keys::Unit(0)
        } else {
            Keys::Values(new_group_values(
                layout.key_schema.clone(),
                &GroupOrdering::None,
            )?)
        };
        Ok(Groups {
            keys,
            accs: layout.accumulators()?,
            ids: Vec::new(),
        })
    }

    pub fn len(&self) -> usize {
        match &self.keys {
            Keys::Unit(n) => *n,
            Keys::Values(v) => v.len(),
        }
    }

    /// Approximate bytes held.
    pub fn size(&self) -> usize {
        let keys = match &self.keys {
            Keys::Unit(_) => 0,
            Keys::Values(v) => v.size(),
        };
        keys + self.accs.size() + self.ids.capacity() * std::mem::size_of::<usize>()
    }

    fn intern(&mut self, keys: &[ArrayRef], rows: usize) -> Result<()> {
        match &mut self.keys {
            Keys::Unit(n) => {
                self.ids.clear();
                self.ids.resize(rows, 0);
                if rows > 0 {
                    *n = 1;
                }
            }
            Keys::Values(v) => v.intern(keys, &mut self.ids)?,
        }
        Ok(())
    }

    /// Fold `rows` rows in.
    pub fn update(
        &mut self,
        keys: &[ArrayRef],
        args: &[Vec<ArrayRef>],
        filters: &[Option<BooleanArray>],
        rows: usize,
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        self.intern(keys, rows)?;
        let total = self.len();
        self.accs.update(args, filters, &self.ids, total)
    }

    /// Merge another set of groups' intermediate state in.
    pub fn merge(&mut self, state: &State, layout: &Layout) -> Result<()> {
        if state.rows == 0 {
            return Ok(());
        }
        self.intern(&state.keys, state.rows)?;
        let total = self.len();
        self.accs
            .merge(&state.states, &layout.state_widths, &self.ids, total)
    }

    /// Give the keys and intermediate state up (the groups are then empty).
    pub fn take_state(&mut self) -> Result<State> {
        let rows = self.len();
        let keys = self.emit_keys()?;
        let states = self.accs.state(EmitTo::All)?;
        Ok(State { keys, states, rows })
    }

    /// Give the keys and final values up: `(keys, values, rows)`.
    pub fn evaluate(&mut self) -> Result<(Vec<ArrayRef>, Vec<ArrayRef>, usize)> {
        let rows = self.len();
        if rows == 0 {
            // Some accumulators cannot evaluate no groups at all.
            return Ok((vec![], vec![], 0));
        }
        let keys = self.emit_keys()?;
        let values = self.accs.evaluate(EmitTo::All)?;
        Ok((keys, values, rows))
    }

    fn emit_keys(&mut self) -> Result<Vec<ArrayRef>> {
        match &mut self.keys {
            Keys::Unit(n) => {
                *n = 0;
                Ok(vec![])
            }
            Keys::Values(v) => Ok(v.emit(EmitTo::All)?),
        }
    }
}

/// `c` as type `t` (cast only when it differs).
pub(crate) fn cast_to(c: ArrayRef, t: &DataType) -> Result<ArrayRef> {
    if c.data_type() == t {
        Ok(c)
    } else {
        cast(&c, t).map_err(|e| WeirError::Internal(format!("window state cast: {e}")))
    }
}

/// A layout for unit tests: one key column `k` (text), one aggregate `sum(v)`.
#[cfg(test)]
pub(crate) fn test_layout() -> Layout {
    use datafusion::arrow::datatypes::Schema;
    use datafusion::functions_aggregate::sum::sum_udaf;
    use datafusion::physical_expr::aggregate::AggregateExprBuilder;
    use datafusion::physical_expr::expressions::col;
    let input = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
    let sum = AggregateExprBuilder::new(sum_udaf(), vec![col("v", &input).expect("v")])
        .schema(input)
        .alias("s")
        .build()
        .expect("sum");
    let keys = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, true)]));
    Layout::new(keys, vec![Arc::new(sum)]).expect("layout")
}

/// Key and argument arrays for unit tests: rows `(k, v)`.
#[cfg(test)]
pub(crate) fn test_rows(rows: &[(&str, i64)]) -> (Vec<ArrayRef>, Vec<Vec<ArrayRef>>) {
    use datafusion::arrow::array::{Int64Array, StringArray};
    let k: ArrayRef = Arc::new(StringArray::from(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
    ));
    let v: ArrayRef = Arc::new(Int64Array::from(
        rows.iter().map(|r| r.1).collect::<Vec<_>>(),
    ));
    (vec![k], vec![vec![v]])
}

/// `(key, sum)` pairs of evaluated groups, sorted, for unit tests.
#[cfg(test)]
pub(crate) fn test_sums(keys: &[ArrayRef], values: &[ArrayRef]) -> Vec<(String, i64)> {
    use datafusion::arrow::array::{Array, AsArray, Int64Array};
    let k = keys[0].as_string::<i32>();
    let v = values[0]
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("sum is Int64");
    let mut out: Vec<(String, i64)> = (0..k.len())
        .map(|i| (k.value(i).to_string(), v.value(i)))
        .collect();
    out.sort();
    out
}
