//! [`UpdatingAggregator`]: an aggregate without a window (`SELECT k, count(*) FROM s GROUP
//! BY k`), whose groups never close. Each micro-batch changes some groups; for those it
//! gives the aggregate rows they had before (to be retracted) and the rows they have now,
//! so a view's output is a changelog (`changelog.rs`), one change per group and batch.
//!
//! State is one entry per group: its key and DataFusion's intermediate accumulator state,
//! both in Arrow's row format, and when it last changed. A batch touches only the groups it
//! has rows for: their states are merged into fresh accumulators (numbered 0..k), the rows
//! are folded in, and the new states taken back out; the old and new values come from
//! evaluating the states before and after. Work per batch is in the batch's groups, not in
//! every group the view has seen.
//!
//! `'state.ttl'` drops groups that have not changed for that long in processing time,
//! retracting their rows (so the result then differs from batch SQL over every row, as
//! documented).

use super::batch_in;
use super::groups::{AggregateInputs, Layout, cast_to, evaluate_arguments};
use crate::error::{Result, WeirError};
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::logical_expr::EmitTo;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::aggregates::AggregateExec;
use std::sync::Arc;

mod checkpoint;

/// One group: its intermediate state (row format) and when it last changed (epoch ms).
struct Group {
    state: Box<[u8]>,
    changed_ms: i64,
    /// Over an updating view: how many of the input's rows the group has now (inserts less
    /// deletes); at 0 the group is gone. Unused over append-only input.
    rows: i64,
}

/// A batch's groups and what the aggregates read of it, for [`UpdatingAggregator::update`].
struct Folded {
    /// Row-format keys, the groups seen before first (`0..known`).
    group_keys: Vec<Box<[u8]>>,
    known: usize,
    /// The key columns, one row per group.
    batch_keys: Vec<ArrayRef>,
    /// Each row's group.
    row_groups: Vec<usize>,
    args: Vec<Vec<ArrayRef>>,
    filters: Vec<Option<BooleanArray>>,
    /// The known groups' states.
    old_states: Vec<ArrayRef>,
}

/// Aggregates whose accumulators can take rows back out exactly, from their state alone.
const RETRACTABLE: [&str; 4] = ["count", "sum", "avg", "mean"];

/// What a batch (or an expiry) did to the aggregate's rows: the rows to retract and the rows
/// to add, both in the aggregate's output schema (group columns, then aggregate values).
pub struct Changes {
    pub old: RecordBatch,
    pub new: RecordBatch,
}

pub struct UpdatingAggregator {
    key_exprs: Vec<Arc<dyn PhysicalExpr>>,
    arguments: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    layout: Layout,
    group_names: Vec<String>,
    /// The view's output columns the GROUP BY columns became: its key.
    output_keys: Vec<String>,
    /// Group columns, then aggregate values: what the post plan reads.
    output_schema: SchemaRef,
    keys: RowConverter,
    states: RowConverter,
    /// Compares old and new values, so an unchanged group emits nothing; `None` when the
    /// values have a type the row format cannot hold.
    values: Option<RowConverter>,
    groups: crate::FastMap<Box<[u8]>, Group>,
    bytes: usize,
    ttl_ms: Option<i64>,
    /// When groups were last checked for expiry.
    swept_ms: i64,
    /// The stored state's columns and how many each aggregate has: DataFusion's partial
    /// state, or over an updating view its retracting accumulators' state.
    state_fields: Vec<Field>,
    widths: Vec<usize>,
    /// Over an updating view: rows are also taken out, with retracting accumulators.
    retracting: bool,
    /// `EMIT EVERY`: changes are held until [`UpdatingAggregator::flush`]; per group
    /// changed since the last flush, its state as last emitted (`None`: never emitted).
    pending: Option<Held>,
}

/// Per group changed since the last `EMIT EVERY` flush: its state as it last came out
/// (`None`: it has not come out).
type Held = crate::FastMap<Box<[u8]>, Option<Box<[u8]>>>;

impl UpdatingAggregator {
    /// Build from the aggregate that sees raw rows (`Single` or `Partial` mode);
    /// `output_schema` is the schema of the topmost aggregate.
    pub fn try_new(
        raw: &AggregateExec,
        output_schema: SchemaRef,
        output_keys: Vec<String>,
        ttl: Option<std::time::Duration>,
    ) -> Result<Self> {
        let AggregateInputs {
            aggregates,
            arguments,
            filters,
        } = AggregateInputs::of(raw)?;
        let input_schema = raw.input().schema();
        let mut key_exprs = Vec::new();
        let mut key_fields = Vec::new();
        let mut group_names = Vec::new();
        for (expr, name) in raw.group_expr().expr() {
            let t = expr.data_type(&input_schema)?;
            key_fields.push(Field::new(name, t, true));
            key_exprs.push(expr.clone());
            group_names.push(name.clone());
        }
        let layout = Layout::new(Arc::new(Schema::new(key_fields.clone())), aggregates)?;
        let sort_fields = |fields: Vec<DataType>| -> Result<RowConverter> {
            Ok(RowConverter::new(
                fields.into_iter().map(SortField::new).collect(),
            )?)
        };
        let keys = sort_fields(key_fields.iter().map(|f| f.data_type().clone()).collect())?;
        let layout_state_fields = layout.state_fields()?;
        let layout_widths = layout.state_widths.clone();
        let states = sort_fields(
            layout
                .state_fields()?
                .iter()
                .map(|f| f.data_type().clone())
                .collect(),
        )
        .map_err(|e| {
            WeirError::user(format!(
                "an aggregate without a window keeps its state in a form this aggregate's \
                 state does not fit ({e}); use it over a window instead"
            ))
        })?;
        let value_types: Vec<DataType> = output_schema
            .fields()
            .iter()
            .skip(key_fields.len())
            .map(|f| f.data_type().clone())
            .collect();
        let values = sort_fields(value_types).ok();
        Ok(UpdatingAggregator {
            key_exprs,
            arguments,
            filters,
            layout,
            group_names,
            output_keys,
            output_schema,
            keys,
            states,
            values,
            groups: crate::FastMap::default(),
            bytes: 0,
            ttl_ms: ttl.map(|d| (d.as_millis() as i64).max(1)),
            swept_ms: i64::MIN,
            pending: None,
            state_fields: layout_state_fields,
            widths: layout_widths,
            retracting: false,
        })
    }

    /// Hold changes until [`UpdatingAggregator::flush`] (`EMIT EVERY`): a group changed
    /// many times between two flushes then emits once, from the row it had at the last
    /// flush to the row it has now.
    pub fn hold(&mut self) {
        self.pending = Some(crate::FastMap::default());
    }

    /// The GROUP BY columns, as the aggregate's output names them.
    pub fn group_names(&self) -> &[String] {
        &self.group_names
    }

    /// The view's columns that identify its rows (the GROUP BY columns as selected).
    pub fn output_keys(&self) -> &[String] {
        &self.output_keys
    }

    pub fn describe(&self) -> String {
        let mut s = format!(
            "updating aggregate by ({}): {} aggregate(s), one change per group and micro-batch",
            self.group_names.join(", "),
            self.layout.aggregates.len()
        );
        if let Some(ttl) = self.ttl_ms {
            s.push_str(&format!(", groups unchanged for {ttl} ms expire"));
        }
        s
    }

    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// Approximate bytes of state: keys, states and the map's own entries.
    pub fn state_bytes(&self) -> usize {
        self.bytes + self.groups.capacity() * (std::mem::size_of::<Group>() + 24)
    }

    /// Over an updating view: rows are taken out too. Checks that every aggregate can, and
    /// keeps its retracting accumulators' state from now on (before any row).
    pub fn retract_from(&mut self, input: &str) -> Result<()> {
        for a in &self.layout.aggregates {
            let name = a.fun().name().to_ascii_lowercase();
            if !RETRACTABLE.contains(&name.as_str()) || a.is_distinct() || !a.order_bys().is_empty()
            {
                return Err(WeirError::user(format!(
                    "an aggregate over the updating view '{input}' takes rows back out as they \
                     change, which count, sum and avg (without DISTINCT) can do and {} cannot \
                     yet",
                    a.name()
                )));
            }
        }
        let mut fields = Vec::new();
        let mut widths = Vec::new();
        for (i, a) in self.layout.aggregates.iter().enumerate() {
            let state = a.create_sliding_accumulator()?.state()?;
            widths.push(state.len());
            for (j, v) in state.iter().enumerate() {
                fields.push(Field::new(format!("__agg{i}_{j}"), v.data_type(), true));
            }
        }
        self.states = RowConverter::new(
            fields
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        self.state_fields = fields;
        self.widths = widths;
        self.retracting = true;
        Ok(())
    }

    /// Fold the pre plan's rows in at processing time `now_ms`. `signs`: over an updating
    /// view, each row's op (+1 inserted, -1 deleted in the input).
    pub fn update(
        &mut self,
        batch: &RecordBatch,
        signs: Option<&[i8]>,
        now_ms: i64,
    ) -> Result<Changes> {
        let n = batch.num_rows();
        let eval = |e: &Arc<dyn PhysicalExpr>| -> Result<ArrayRef> {
            Ok(e.evaluate(batch)?.into_array(n)?)
        };
        let key_cols = self
            .key_exprs
            .iter()
            .zip(self.layout.key_schema.fields())
            .map(|(e, f)| cast_to(eval(e)?, f.data_type()))
            .collect::<Result<Vec<_>>>()?;
        let (args, filters) = evaluate_arguments(&self.arguments, &self.filters, batch)?;
        // The batch's groups, numbered by first appearance, and each row's.
        let key_rows = if key_cols.is_empty() {
            None
        } else {
            Some(self.keys.convert_columns(&key_cols)?)
        };
        let mut local: crate::FastMap<&[u8], usize> = crate::FastMap::default();
        let mut firsts: Vec<u32> = Vec::new();
        let mut row_groups: Vec<usize> = Vec::with_capacity(n);
        for i in 0..n {
            let key: &[u8] = match &key_rows {
                Some(r) => r.row(i).data(),
                None => &[],
            };
            let next = firsts.len();
            let g = *local.entry(key).or_insert(next);
            if g == next {
                firsts.push(i as u32);
            }
            row_groups.push(g);
        }
        let k = firsts.len();
        if k == 0 {
            return self.no_changes();
        }
        let mut group_keys: Vec<Box<[u8]>> = firsts
            .iter()
            .map(|&i| match &key_rows {
                Some(r) => r.row(i as usize).data().into(),
                None => Box::default(),
            })
            .collect();
        // Groups seen before are numbered first (0..e), new ones after: DataFusion's
        // accumulators take every group below the total they are given to have received a
        // value in that call, so the merge of the old states must cover 0..e exactly.
        let (mut order, fresh): (Vec<usize>, Vec<usize>) =
            (0..k).partition(|&g| self.groups.contains_key(&group_keys[g]));
        let e = order.len();
        order.extend(fresh);
        let mut renumber = vec![0; k];
        for (new, &old) in order.iter().enumerate() {
            renumber[old] = new;
        }
        for g in &mut row_groups {
            *g = renumber[*g];
        }
        let firsts: Vec<u32> = order.iter().map(|&g| firsts[g]).collect();
        group_keys = order
            .iter()
            .map(|&g| std::mem::take(&mut group_keys[g]))
            .collect();
        let batch_keys = take_all(&key_cols, &UInt32Array::from(firsts))?;
        let known: Vec<usize> = (0..e).collect();
        let old_states = self.parse_states(group_keys[..e].iter())?;
        if let Some(signs) = signs {
            let folded = Folded {
                group_keys,
                known: e,
                batch_keys,
                row_groups,
                args,
                filters,
                old_states,
            };
            return self.update_signed(folded, signs, now_ms);
        }
        let mut accs = self.layout.accumulators()?;
        accs.merge(&old_states, &self.layout.state_widths, &known, e)?;
        accs.update(&args, &filters, &row_groups, k)?;
        let new_states = accs.state(EmitTo::All)?;
        if let Some(pending) = self.pending.as_mut() {
            // Held: remember what each group had when it last came out, store, emit nothing.
            for (g, key) in group_keys.iter().enumerate() {
                if !pending.contains_key(key) {
                    let emitted = (g < e).then(|| self.groups[key].state.clone());
                    pending.insert(key.clone(), emitted);
                }
            }
            self.store(group_keys, &new_states, None, now_ms)?;
            return self.no_changes();
        }
        let new_values = self.evaluate(&new_states, k)?;
        let old_values = self.evaluate(&old_states, known.len())?;
        let old_keys: Vec<ArrayRef> = batch_keys.iter().map(|c| c.slice(0, e)).collect();
        self.store(group_keys, &new_states, None, now_ms)?;
        self.emit(&known, &old_keys, &old_values, &batch_keys, &new_values, k)
    }

    /// Fold rows in and take rows out (`signs`), with DataFusion's retracting accumulators,
    /// one set per changed group: a group's state is merged in, its inserted rows added,
    /// its deleted rows retracted, and the state taken back out. A group left with no rows
    /// is gone: its row is deleted and nothing inserted.
    fn update_signed(&mut self, f: Folded, signs: &[i8], now_ms: i64) -> Result<Changes> {
        use datafusion::common::ScalarValue;
        let k = f.group_keys.len();
        let e = f.known;
        let mut members: Vec<(Vec<u32>, Vec<u32>)> = vec![(vec![], vec![]); k];
        for (i, &g) in f.row_groups.iter().enumerate() {
            if signs[i] < 0 {
                members[g].1.push(i as u32);
            } else {
                members[g].0.push(i as u32);
            }
        }
        let aggregates = self.layout.aggregates.clone();
        let widths = self.widths.clone();
        let value_fields: Vec<Field> = self
            .output_schema
            .fields()
            .iter()
            .skip(self.group_names.len())
            .map(|f| f.as_ref().clone())
            .collect();
        let state_fields = self.state_fields.clone();
        let mut state_scalars: Vec<Vec<ScalarValue>> = vec![vec![]; state_fields.len()];
        let mut value_scalars: Vec<Vec<ScalarValue>> = vec![vec![]; aggregates.len()];
        let mut rows_now = vec![0i64; k];
        for g in 0..k {
            let (plus, minus) = &members[g];
            let before = if g < e {
                self.groups[&f.group_keys[g]].rows
            } else {
                0
            };
            rows_now[g] = before + plus.len() as i64 - minus.len() as i64;
            let mut col = 0;
            for (a, agg) in aggregates.iter().enumerate() {
                let w = widths[a];
                let mut acc = agg.create_sliding_accumulator()?;
                if g < e {
                    let state: Vec<ArrayRef> = f.old_states[col..col + w]
                        .iter()
                        .map(|c| c.slice(g, 1))
                        .collect();
                    acc.merge_batch(&state)?;
                }
                for (idx, add) in [(plus, true), (minus, false)] {
                    let idx: Vec<u32> = match &f.filters[a] {
                        Some(keep) => idx
                            .iter()
                            .copied()
                            .filter(|&i| keep.is_valid(i as usize) && keep.value(i as usize))
                            .collect(),
                        None => idx.clone(),
                    };
                    if idx.is_empty() {
                        continue;
                    }
                    let values = take_all(&f.args[a], &UInt32Array::from(idx))?;
                    if add {
                        acc.update_batch(&values)?;
                    } else {
                        acc.retract_batch(&values)?;
                    }
                }
                value_scalars[a].push(acc.evaluate()?);
                for (j, v) in acc.state()?.into_iter().enumerate() {
                    state_scalars[col + j].push(v);
                }
                col += w;
            }
        }
        let to_array = |scalars: Vec<ScalarValue>, t: &DataType| -> Result<ArrayRef> {
            cast_to(ScalarValue::iter_to_array(scalars)?, t)
        };
        let new_values = value_scalars
            .into_iter()
            .zip(&value_fields)
            .map(|(v, f)| to_array(v, f.data_type()))
            .collect::<Result<Vec<_>>>()?;
        let new_states = state_scalars
            .into_iter()
            .zip(&state_fields)
            .map(|(v, f)| to_array(v, f.data_type()))
            .collect::<Result<Vec<_>>>()?;
        let old_values = self.evaluate(&f.old_states, e)?;
        let old_keys: Vec<ArrayRef> = f.batch_keys.iter().map(|c| c.slice(0, e)).collect();
        let known: Vec<usize> = (0..e).collect();
        let (mut old_keep, new_keep) = self.changed(&known, &old_values, &new_values, k)?;
        // A group with no rows left is gone: its old row out (whatever its values), no
        // new row.
        for (g, &rows) in rows_now.iter().enumerate().take(e) {
            if self.is_gone(rows) && !old_keep.contains(&(g as u32)) {
                old_keep.push(g as u32);
            }
        }
        old_keep.sort_unstable();
        let new_keep: Vec<u32> = new_keep
            .into_iter()
            .filter(|&g| !self.is_gone(rows_now[g as usize]))
            .collect();
        self.store(f.group_keys, &new_states, Some(&rows_now), now_ms)?;
        let old = self.rows(&old_keys, &old_values, &old_keep)?;
        let new = self.rows(&f.batch_keys, &new_values, &new_keep)?;
        Ok(Changes { old, new })
    }

    /// The changes from `old` values (of the first `known.len()` groups) to `new` ones (of
    /// all `k`): groups whose value did not change (a max that stayed) emit nothing.
    fn emit(
        &self,
        known: &[usize],
        old_keys: &[ArrayRef],
        old_values: &[ArrayRef],
        keys: &[ArrayRef],
        new_values: &[ArrayRef],
        k: usize,
    ) -> Result<Changes> {
        let (old_keep, new_keep) = self.changed(known, old_values, new_values, k)?;
        let old = self.rows(old_keys, old_values, &old_keep)?;
        let new = self.rows(keys, new_values, &new_keep)?;
        Ok(Changes { old, new })
    }

    /// Store `states` (one row per group of `keys`) as the groups' states, changed now.
    /// `counts`: over an updating view, each group's input rows now; a group left with
    /// none is removed instead.
    fn store(
        &mut self,
        keys: Vec<Box<[u8]>>,
        states: &[ArrayRef],
        counts: Option<&[i64]>,
        now_ms: i64,
    ) -> Result<()> {
        let rows = self.states.convert_columns(states)?;
        for (g, key) in keys.into_iter().enumerate() {
            let count = counts.map_or(0, |c| c[g]);
            if counts.is_some() && self.is_gone(count) {
                self.remove_group(&key);
                continue;
            }
            let group = Group {
                state: rows.row(g).data().into(),
                changed_ms: now_ms,
                rows: count,
            };
            self.put_group(key, group);
        }
        Ok(())
    }

    /// Over an updating view, whether a group with `rows` input rows is gone: a group of
    /// a GROUP BY goes with its last row, a global aggregate keeps its one row (SQL gives
    /// one row over no rows).
    fn is_gone(&self, rows: i64) -> bool {
        rows <= 0 && !self.group_names.is_empty()
    }

    /// Put a group's entry, keeping the byte count.
    fn put_group(&mut self, key: Box<[u8]>, group: Group) {
        let (key_len, state_len) = (key.len(), group.state.len());
        match self.groups.insert(key, group) {
            Some(old) => self.bytes = self.bytes + state_len - old.state.len(),
            None => self.bytes += key_len + state_len,
        }
    }

    /// Remove a group's entry, keeping the byte count.
    fn remove_group(&mut self, key: &[u8]) -> Option<Group> {
        let g = self.groups.remove(key)?;
        self.bytes = self.bytes.saturating_sub(key.len() + g.state.len());
        Some(g)
    }

    /// `EMIT EVERY`: the changes held since the last flush, one per group changed since:
    /// the row it had when it last came out (if it did) retracted, the row it has now
    /// inserted.
    pub fn flush(&mut self) -> Result<Changes> {
        let Some(pending) = self.pending.as_mut() else {
            return self.no_changes();
        };
        if pending.is_empty() {
            return self.no_changes();
        }
        // Groups that came out before first (their old states), then the new ones.
        let (mut before, fresh): (Vec<_>, Vec<_>) =
            pending.drain().partition(|(_, emitted)| emitted.is_some());
        let e = before.len();
        before.extend(fresh);
        let keys: Vec<Box<[u8]>> = before.iter().map(|(k, _)| k.clone()).collect();
        let old_states = self.states_of(before.iter().filter_map(|(_, s)| s.as_deref()))?;
        let new_states = self.parse_states(keys.iter())?;
        let k = keys.len();
        let new_values = self.evaluate(&new_states, k)?;
        let old_values = self.evaluate(&old_states, e)?;
        let key_cols = self.parse_keys(&keys)?;
        let old_keys: Vec<ArrayRef> = key_cols.iter().map(|c| c.slice(0, e)).collect();
        let known: Vec<usize> = (0..e).collect();
        self.emit(&known, &old_keys, &old_values, &key_cols, &new_values, k)
    }

    /// States in the row format, as arrays.
    fn states_of<'a>(&self, states: impl Iterator<Item = &'a [u8]>) -> Result<Vec<ArrayRef>> {
        let parser = self.states.parser();
        let rows: Vec<_> = states.map(|s| parser.parse(s)).collect();
        if rows.is_empty() {
            return Ok(self
                .state_fields
                .iter()
                .map(|f| datafusion::arrow::array::new_empty_array(f.data_type()))
                .collect());
        }
        Ok(self.states.convert_rows(rows)?)
    }

    fn no_changes(&self) -> Result<Changes> {
        let empty = RecordBatch::new_empty(self.output_schema.clone());
        Ok(Changes {
            old: empty.clone(),
            new: empty,
        })
    }

    /// The states stored for `keys` (all present), as arrays.
    fn parse_states<'a>(&self, keys: impl Iterator<Item = &'a Box<[u8]>>) -> Result<Vec<ArrayRef>> {
        self.states_of(keys.map(|k| self.groups[k].state.as_ref()))
    }

    /// Final values of `rows` groups' intermediate states.
    fn evaluate(&self, states: &[ArrayRef], rows: usize) -> Result<Vec<ArrayRef>> {
        if rows == 0 {
            return Ok(self
                .output_schema
                .fields()
                .iter()
                .skip(self.group_names.len())
                .map(|f| datafusion::arrow::array::new_empty_array(f.data_type()))
                .collect());
        }
        if self.retracting {
            return self.evaluate_retracting(states, rows);
        }
        let mut accs = self.layout.accumulators()?;
        let ids: Vec<usize> = (0..rows).collect();
        accs.merge(states, &self.layout.state_widths, &ids, rows)?;
        accs.evaluate(EmitTo::All)
    }

    /// [`UpdatingAggregator::evaluate`] of retracting accumulators' states, row by row.
    fn evaluate_retracting(&self, states: &[ArrayRef], rows: usize) -> Result<Vec<ArrayRef>> {
        let value_types: Vec<DataType> = self
            .output_schema
            .fields()
            .iter()
            .skip(self.group_names.len())
            .map(|f| f.data_type().clone())
            .collect();
        let mut out = Vec::with_capacity(self.layout.aggregates.len());
        let mut col = 0;
        for (a, agg) in self.layout.aggregates.iter().enumerate() {
            let w = self.widths[a];
            let mut values = Vec::with_capacity(rows);
            for r in 0..rows {
                let mut acc = agg.create_sliding_accumulator()?;
                let state: Vec<ArrayRef> =
                    states[col..col + w].iter().map(|c| c.slice(r, 1)).collect();
                acc.merge_batch(&state)?;
                values.push(acc.evaluate()?);
            }
            out.push(cast_to(
                datafusion::common::ScalarValue::iter_to_array(values)?,
                &value_types[a],
            )?);
            col += w;
        }
        Ok(out)
    }

    /// Which old rows (by position among `known`) and which new rows (by group) to emit:
    /// all but those of known groups whose value is what it was.
    fn changed(
        &self,
        known: &[usize],
        old_values: &[ArrayRef],
        new_values: &[ArrayRef],
        k: usize,
    ) -> Result<(Vec<u32>, Vec<u32>)> {
        let mut same = vec![false; k];
        let mut old_keep = Vec::with_capacity(known.len());
        if let Some(conv) = &self.values {
            let old_rows = conv.convert_columns(old_values)?;
            let new_rows = conv.convert_columns(new_values)?;
            for (j, &g) in known.iter().enumerate() {
                if old_rows.row(j) == new_rows.row(g) {
                    same[g] = true;
                } else {
                    old_keep.push(j as u32);
                }
            }
        } else {
            old_keep.extend(0..known.len() as u32);
        }
        let new_keep = (0..k as u32).filter(|&g| !same[g as usize]).collect();
        Ok((old_keep, new_keep))
    }

    /// Aggregate rows: the keys and values at `keep`.
    fn rows(&self, keys: &[ArrayRef], values: &[ArrayRef], keep: &[u32]) -> Result<RecordBatch> {
        let idx = UInt32Array::from(keep.to_vec());
        let mut cols = take_all(keys, &idx)?;
        cols.extend(take_all(values, &idx)?);
        if cols.is_empty() {
            // A global aggregate with no aggregate columns cannot happen (that is DISTINCT).
            return Ok(RecordBatch::new_empty(self.output_schema.clone()));
        }
        batch_in(&self.output_schema, cols)
    }

    /// Groups unchanged for the TTL at `now_ms` expire: their rows, to be retracted. Checked
    /// every eighth of the TTL, so a group goes between one and 1.125 TTLs after its last
    /// change.
    pub fn expire(&mut self, now_ms: i64) -> Result<Option<RecordBatch>> {
        let Some(ttl) = self.ttl_ms else {
            return Ok(None);
        };
        if self.swept_ms != i64::MIN && now_ms < self.swept_ms.saturating_add(ttl / 8) {
            return Ok(None);
        }
        self.swept_ms = now_ms;
        let cutoff = now_ms.saturating_sub(ttl);
        let gone: Vec<Box<[u8]>> = self
            .groups
            .iter()
            .filter(|(_, g)| g.changed_ms <= cutoff)
            .map(|(k, _)| k.clone())
            .collect();
        if gone.is_empty() {
            return Ok(None);
        }
        // The row to retract is the one that came out: with EMIT EVERY, a group changed
        // since the last flush retracts the row of its state then (or nothing, if it has
        // not come out yet).
        let mut out_keys = Vec::new();
        let mut out_states: Vec<Box<[u8]>> = Vec::new();
        for k in &gone {
            let Some(g) = self.remove_group(k) else {
                continue;
            };
            let emitted = match self.pending.as_mut().and_then(|p| p.remove(k)) {
                Some(held) => held,
                None => Some(g.state),
            };
            if let Some(state) = emitted {
                out_keys.push(k.clone());
                out_states.push(state);
            }
        }
        let states = self.states_of(out_states.iter().map(|s| s.as_ref()))?;
        let values = self.evaluate(&states, out_keys.len())?;
        let keys = self.parse_keys(&out_keys)?;
        let all: Vec<u32> = (0..out_keys.len() as u32).collect();
        Ok(Some(self.rows(&keys, &values, &all)?))
    }

    fn parse_keys(&self, keys: &[Box<[u8]>]) -> Result<Vec<ArrayRef>> {
        if self.group_names.is_empty() {
            return Ok(vec![]);
        }
        let parser = self.keys.parser();
        Ok(self
            .keys
            .convert_rows(keys.iter().map(|k| parser.parse(k)))?)
    }
}

fn take_all(cols: &[ArrayRef], idx: &UInt32Array) -> Result<Vec<ArrayRef>> {
    cols.iter()
        .map(|c| Ok(take(c.as_ref(), idx, None)?))
        .collect()
}
