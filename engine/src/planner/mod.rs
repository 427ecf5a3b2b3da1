//! The planner: a `CREATE MATERIALIZED VIEW` statement to a [`ViewPlan`] the dataflow can
//! run. Window table functions are rewritten (`sql::rewrite_windows`), DataFusion plans
//! the query body over streaming tables (one per source and view, see [`slot`]), and the
//! physical plan is cut into its streaming parts ([`split`]). Everything later stages need
//! to know about a view is a typed property of its plan ([`ViewProps`]): nothing re-reads
//! the SQL text.

mod changes;
pub mod slot;
pub mod split;

use crate::error::{Result, WeirError};
use crate::join::{StreamJoin, TimeKey};
use crate::lookup::{LookupTable, TableHandle};
use crate::sql::{self, CreateView, Emit, WindowKind};
use crate::window::WindowOperator;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use parking_lot::Mutex;
use slot::{BatchSlot, SlotPlan, StreamTable};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// What happens to rows too late for every window that would take them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatePolicy {
    /// Counted and dropped.
    Drop,
    /// Counted and written to the view's dead-letter file.
    DeadLetter,
}

/// A view's typed properties.
#[derive(Debug, Clone)]
pub struct ViewProps {
    /// The window the view aggregates or ranks over, if any.
    pub window: Option<WindowKind>,
    /// The column of the view's input its window reads time from.
    pub window_time_column: Option<String>,
    /// `EMIT EVERY`: rows of open windows are emitted early and later replaced by rows
    /// with the same key, so the view's output updates earlier rows.
    pub emit_every: Option<Duration>,
    /// What identifies an output row (window bounds and group keys); empty when rows are
    /// only appended.
    pub key_columns: Vec<String>,
    pub late_policy: LatePolicy,
    /// How many result rows the serving layer keeps for queries and subscribers.
    pub retention_rows: usize,
    /// An updating view (an aggregate without a window): its output is a changelog
    /// (`changelog.rs`), rows identified by `key_columns`.
    pub changelog: bool,
}

impl ViewProps {
    /// Whether the view's rows may replace earlier rows (early results).
    pub fn emits_updates(&self) -> bool {
        self.emit_every.is_some()
    }
}

/// The streaming parts of a view.
pub enum ViewPlanKind {
    /// Runs its whole plan on each batch and emits at once.
    Stateless { plan: SlotPlan },
    /// `UNION ALL` of several streams, stateless: the whole plan runs on each batch of any
    /// input, the batch in the leaves reading that input (`slots[port]`) and nothing in
    /// the others.
    Union {
        plan: SlotPlan,
        slots: Vec<Arc<BatchSlot>>,
    },
    /// Pre plan per batch, window state, post plan per closed (or early) window.
    Windowed {
        pre: SlotPlan,
        aggregate: Box<dyn WindowOperator>,
        post: SlotPlan,
    },
    /// `SELECT DISTINCT` (a GROUP BY without aggregates) without a window: each distinct
    /// row once, when first seen.
    Distinct {
        /// Runs per micro-batch: the rows the keys are computed from.
        pre: SlotPlan,
        keys: Vec<Arc<dyn datafusion::physical_expr::PhysicalExpr>>,
        /// The distinct rows as `post` reads them.
        key_schema: SchemaRef,
        /// Runs over each batch of new distinct rows.
        post: SlotPlan,
    },
    /// An aggregate without a window (an updating view): pre plan per batch, the groups'
    /// state, post plan over the rows of the groups a batch changed (old and new).
    Updating {
        pre: SlotPlan,
        aggregate: Box<crate::window::UpdatingAggregator>,
        post: SlotPlan,
    },
    /// Count windows (`COUNT_WINDOW`): the input's rows are placed per key in time order
    /// (`dataflow/count.rs`), and `plan` (the view's query) runs over each batch of
    /// complete windows (the input's columns and `window_index`).
    CountWindow {
        plan: SlotPlan,
        input_schema: SchemaRef,
        key: usize,
        time: usize,
        rows: usize,
    },
    /// A join of two streams.
    Join {
        /// Each side's stateless part, fed from `inputs[side]`: left, right.
        sides: Vec<SlotPlan>,
        join: Box<StreamJoin>,
        /// What runs over the join's output (projection, filter above it).
        post: SlotPlan,
    },
}

impl ViewPlanKind {
    /// Input columns (besides a window's time column, in [`ViewProps`]) whose values decide
    /// whether a row is late: a source's micro-batches are cut where its own rows could
    /// make a later row late by them (`watermark::cut_points`).
    pub fn lateness_columns(&self) -> Vec<String> {
        match self {
            ViewPlanKind::CountWindow {
                input_schema, time, ..
            } => vec![input_schema.field(*time).name().clone()],
            ViewPlanKind::Join { join, .. } => join.band_columns(),
            _ => vec![],
        }
    }
}

/// A planned view, ready to become a dataflow node.
pub struct ViewPlan {
    /// The relations the view reads: one, or a join's left and right input (the same name
    /// twice for a self-join).
    pub inputs: Vec<String>,
    /// The reference tables its plan reads (lookup joins).
    pub tables: Vec<String>,
    pub output_schema: SchemaRef,
    pub props: ViewProps,
    pub kind: ViewPlanKind,
}

impl ViewPlan {
    /// The streaming plan, for EXPLAIN and DESCRIBE.
    pub fn explain(&self) -> String {
        match &self.kind {
            ViewPlanKind::Stateless { plan } => {
                format!(
                    "stateless view over {}:\n{}",
                    self.inputs[0],
                    plan.display()
                )
            }
            ViewPlanKind::Distinct { pre, post, .. } => format!(
                "per new distinct row:\n{}distinct over {}:\n{}",
                post.display(),
                self.inputs[0],
                pre.display()
            ),
            ViewPlanKind::Updating {
                pre,
                aggregate,
                post,
            } => format!(
                "per changed group (old and new rows):\n{}{}\nper micro-batch over {}:\n{}",
                post.display(),
                aggregate.describe(),
                self.inputs[0],
                pre.display()
            ),
            ViewPlanKind::Union { plan, .. } => {
                format!(
                    "stateless union of {}:\n{}",
                    self.inputs.join(", "),
                    plan.display()
                )
            }
            ViewPlanKind::Windowed {
                pre,
                aggregate,
                post,
            } => {
                let mut window = aggregate.describe();
                if self.props.late_policy == LatePolicy::DeadLetter {
                    window.push_str(", late rows to the dead-letter file");
                }
                format!(
                    "per window close:\n{}{window}\nper micro-batch over {}:\n{}",
                    post.display(),
                    self.inputs[0],
                    pre.display()
                )
            }
            ViewPlanKind::CountWindow {
                plan,
                input_schema,
                key,
                time,
                rows,
            } => format!(
                "per batch of complete windows:\n{}CountWindow: {rows} rows per {} in order of \
                 {}, then the other columns; late rows dropped\nover {}",
                plan.display(),
                input_schema.field(*key).name(),
                input_schema.field(*time).name(),
                self.inputs[0]
            ),
            ViewPlanKind::Join { sides, join, post } => {
                let mut s = format!("per join output:\n{}{}", post.display(), join.describe());
                for (input, side) in self.inputs.iter().zip(sides) {
                    let side = side.display();
                    s.push_str(&format!(
                        "\nper micro-batch over {input}:\n{}",
                        side.trim_end()
                    ));
                }
                s
            }
        }
    }
}

/// A relation a view may read, as the planner sees it.
#[derive(Debug, Clone)]
pub struct Relation {
    pub name: String,
    pub schema: SchemaRef,
    pub kind: RelationKind,
    /// What identifies its rows (a view's key columns; empty for sources and views whose
    /// rows are only appended).
    pub key: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelationKind {
    /// A source; `event_time`: it has a watermark (WATERMARK, or connector time).
    Source { event_time: bool },
    /// A view; `windowed`: it aggregates or ranks over windows; `emits_updates`: its rows
    /// may replace earlier ones (`EMIT EVERY`); `changelog`: it is an updating view, its
    /// rows change and go away.
    View {
        windowed: bool,
        emits_updates: bool,
        changelog: bool,
    },
}

/// What planning a view needs from the catalog.
#[derive(Debug, Clone, Default)]
pub struct PlannerEnv {
    pub relations: Vec<Relation>,
    /// Reference tables (lookup joins).
    pub tables: Vec<(String, Arc<TableHandle>)>,
    /// Result rows a view keeps unless it says otherwise.
    pub retention_rows: usize,
}

impl PlannerEnv {
    fn relation(&self, name: &str) -> Option<&Relation> {
        self.relations.iter().find(|r| r.name == name)
    }
}

/// DataFusion's settings for streaming plans.
pub fn df_config() -> SessionConfig {
    let mut c = SessionConfig::new()
        .with_target_partitions(1)
        .with_coalesce_batches(false)
        .with_repartition_aggregations(false)
        .with_information_schema(false);
    c.options_mut().execution.time_zone = Some("+00:00".into());
    // Plans run once per micro-batch or closed window; dynamic filters (TopK thresholds)
    // would carry state from one run to the next.
    c.options_mut().optimizer.enable_dynamic_filter_pushdown = false;
    // Errors in view bodies point at the column or table the user wrote.
    c.options_mut().sql_parser.collect_spans = true;
    c
}

/// The column an `EMIT EVERY` view adds: false on early rows, true on a window's final row.
pub const IS_FINAL: &str = "is_final";

/// `batch` (the post plan's output) with the `is_final` column of `schema` appended when
/// the view has one.
pub fn mark_final(schema: &SchemaRef, batch: RecordBatch, is_final: bool) -> Result<RecordBatch> {
    if schema.fields().len() == batch.num_columns() {
        return Ok(batch);
    }
    let mut cols = batch.columns().to_vec();
    cols.push(Arc::new(datafusion::arrow::array::BooleanArray::from(
        vec![is_final; batch.num_rows()],
    )));
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

/// A DataFusion context in which every source and view of `env` is a streaming table and
/// every reference table a lookup table; the second value fills with the reference tables
/// the plan reads.
fn planning_context(env: &PlannerEnv) -> Result<(SessionContext, Arc<Mutex<BTreeSet<String>>>)> {
    let ctx = SessionContext::new_with_config(df_config());
    sql::functions::register_bounded_functions(&ctx);
    let used = Arc::new(Mutex::new(BTreeSet::new()));
    for (name, handle) in &env.tables {
        let table = LookupTable {
            name: name.clone(),
            handle: handle.clone(),
            used: used.clone(),
        };
        ctx.register_table(name.as_str(), Arc::new(table))?;
    }
    // DISTINCT aggregates must stay single aggregates so they can be windowed.
    ctx.remove_optimizer_rule("single_distinct_aggregation_to_group_by");
    for r in &env.relations {
        // An updating view's batches are its changes: its columns and the op.
        let schema = match r.kind {
            RelationKind::View {
                changelog: true, ..
            } => crate::changelog::with_op(&r.schema),
            _ => r.schema.clone(),
        };
        let t = StreamTable {
            name: r.name.clone(),
            schema,
            slot: Arc::new(BatchSlot::default()),
        };
        ctx.register_table(r.name.as_str(), Arc::new(t))?;
    }
    Ok((ctx, used))
}

/// A planning context that leaves filters where the query puts them. Below the aggregate,
/// a HOP row's `window_start` and `window_end` are its pane's and a SESSION row's are its
/// own event time, so a filter on them (HAVING, or a query over the aggregate) must not be
/// pushed below it, as DataFusion does with filters on grouping columns.
fn without_filter_pushdown(ctx: SessionContext) -> SessionContext {
    ctx.remove_optimizer_rule("push_down_filter");
    let state = ctx.state();
    let rules = state
        .physical_optimizers()
        .iter()
        .filter(|r| !r.name().starts_with("FilterPushdown"))
        .cloned()
        .collect();
    SessionContext::new_with_state(
        datafusion::execution::SessionStateBuilder::new_from_existing(state)
            .with_physical_optimizer_rules(rules)
            .build(),
    )
}

/// Plan a view. Checks its options, window and inputs; the error names what is wrong.
pub async fn plan_view(v: &CreateView, env: &PlannerEnv) -> Result<ViewPlan> {
    let mut options = v.options.clone();
    let retention_rows = match options.take("retention.rows") {
        Some(r) => r.parse::<usize>().map_err(|_| {
            WeirError::user(format!(
                "option 'retention.rows' must be a row count, got '{r}'"
            ))
        })?,
        None => env.retention_rows,
    };
    let late_policy = match options
        .take_choice("late.policy", &["drop", "dead-letter"], "drop")?
        .as_str()
    {
        "dead-letter" => LatePolicy::DeadLetter,
        _ => LatePolicy::Drop,
    };
    let state_ttl = options.take_duration("state.ttl")?;
    options.finish(
        "a materialized view",
        &["late.policy", "retention.rows", "state.ttl"],
    )?;
    let mut query = v.query.clone();
    let columns = |name: &str| {
        env.relation(name)
            .map(|r| r.schema.fields().iter().map(|f| f.name().clone()).collect())
    };
    let sql::Windows {
        time: window,
        count,
    } = sql::rewrite_windows(&mut query, &columns)?;
    let count_input = count
        .as_ref()
        .map(|spec| count_window_input(spec, v, late_policy, state_ttl, env))
        .transpose()?;
    let emit_every = match (&v.emit, &window) {
        (Some(Emit::Every(d)), Some(_)) => Some(*d),
        // Without a window, only an aggregate (an updating view) takes it: checked below.
        (Some(Emit::Every(d)), None) => Some(*d),
        (Some(Emit::OnWindowClose), None) if count.is_none() => {
            return Err(WeirError::user(
                "EMIT ON WINDOW CLOSE needs a windowed view (FROM TUMBLE(...))",
            ));
        }
        _ => None,
    };
    if late_policy != LatePolicy::Drop && window.is_none() {
        return Err(WeirError::user(
            "option 'late.policy' is for windowed views (FROM TUMBLE(...), HOP(...) or \
             SESSION(...)); rows are never late for a view without a window",
        ));
    }
    let (mut ctx, tables_used) = planning_context(env)?;
    if let Some(schema) = &count_input {
        ctx.register_table(
            sql::count_window::COUNT_WINDOW_INPUT,
            Arc::new(StreamTable {
                name: sql::count_window::COUNT_WINDOW_INPUT.into(),
                schema: sql::count_window::window_schema(schema),
                slot: Arc::new(BatchSlot::default()),
            }),
        )?;
    }
    if window
        .as_ref()
        .is_some_and(|w| !matches!(w.kind, WindowKind::Tumble { .. }))
    {
        ctx = without_filter_pushdown(ctx);
    }
    let state = ctx.state();
    let logical = state
        .statement_to_plan(DfStatement::Statement(Box::new(SqlStatement::Query(query))))
        .await
        .map_err(crate::sql::functions::ValueTooLarge::or_planning)?;
    // Over an updating view, its changes' op column goes through filters and projections.
    let over_changes = changes::changelog_inputs(&logical, env).into_iter().next();
    // An aggregate over an updating view reads the op itself (`dataflow/updating.rs`):
    // only filters and projections carry it.
    let logical = match &over_changes {
        Some(input) if !changes::aggregates(&logical) => changes::carry_ops(logical, input)?,
        _ => logical,
    };
    let physical = state
        .create_physical_plan(&logical)
        .await
        .map_err(crate::sql::functions::ValueTooLarge::or_planning)?;
    let split::Split {
        inputs,
        mut output_schema,
        mut kind,
    } = match (&count, count_input) {
        (Some(spec), Some(input_schema)) => {
            split::split_count_window(physical, spec, input_schema, state.task_ctx())?
        }
        _ => split::split_plan(physical, window.as_ref(), state_ttl, state.task_ctx())?,
    };
    if state_ttl.is_some()
        && !matches!(&kind, ViewPlanKind::Windowed { aggregate, .. } if aggregate.takes_state_ttl())
        && !matches!(&kind, ViewPlanKind::Updating { .. })
    {
        return Err(WeirError::user(
            "option 'state.ttl' bounds the keys a view without a window remembers: a \
             deduplication view (ROW_NUMBER() OVER (PARTITION BY key ORDER BY ts) = 1) or an \
             aggregate without a window (an updating view); this view keeps no such state",
        ));
    }
    // A view over an updating view is one too. An aggregate takes the input's deleted rows
    // back out; filters and projections pass its changes on, keyed by the input's key as
    // they select it.
    let mut over_changes_key = None;
    if let Some(input) = &over_changes {
        match &mut kind {
            ViewPlanKind::Updating { aggregate, .. } => {
                aggregate.retract_from(input)?;
                if emit_every.is_some() {
                    return Err(WeirError::user(format!(
                        "EMIT EVERY on an aggregate over the updating view '{input}' is not \
                         supported yet"
                    )));
                }
            }
            ViewPlanKind::Stateless { .. } if inputs.len() == 1 => {
                let input_key = env
                    .relation(input)
                    .map(|r| r.key.clone())
                    .unwrap_or_default();
                over_changes_key = Some(changes::key_through(&logical, input, &input_key)?);
                let n = output_schema.fields().len() - 1;
                output_schema = Arc::new(output_schema.project(&(0..n).collect::<Vec<_>>())?);
            }
            _ => return Err(changes::not_supported(input)),
        }
    }
    match &mut kind {
        ViewPlanKind::Windowed { aggregate, .. } => {
            aggregate.configure(emit_every)?;
            if emit_every.is_some() {
                if output_schema.field_with_name(IS_FINAL).is_ok() {
                    return Err(WeirError::user(format!(
                        "EMIT EVERY adds a column named {IS_FINAL}, and the query already has \
                         one: rename it"
                    )));
                }
                // Early and final rows of a window are told apart by a trailing column.
                let mut fields: Vec<Field> = output_schema
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone())
                    .collect();
                fields.push(Field::new(IS_FINAL, DataType::Boolean, false));
                output_schema = Arc::new(Schema::new(fields));
            }
        }
        // An updating view holds its changes and emits them once per interval.
        ViewPlanKind::Updating { .. } => {}
        _ if emit_every.is_some() && window.is_none() => {
            return Err(WeirError::user(
                "EMIT EVERY needs a windowed view (FROM TUMBLE(...), HOP(...) or SESSION(...)) \
                 or an aggregate without a window",
            ));
        }
        _ if emit_every.is_some() => {
            return Err(WeirError::user(
                "EMIT EVERY needs an aggregation over the window (GROUP BY window_start, \
                 window_end, ...)",
            ));
        }
        _ => {}
    }
    prepare_join(&mut kind, &inputs, env)?;
    let key_columns = match &kind {
        ViewPlanKind::Windowed { aggregate, .. } => aggregate
            .key_names()
            .into_iter()
            // Group columns as they appear in the output (they may be renamed by aliases,
            // so only keep those present).
            .filter(|n| output_schema.field_with_name(n).is_ok())
            .collect(),
        ViewPlanKind::Updating { aggregate, .. } => aggregate.output_keys().to_vec(),
        // An updating outer join's rows are told apart by all their columns.
        ViewPlanKind::Join { join, .. } if join.retracts() => output_schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect(),
        // A window's row, when the view aggregates per window: its key and index.
        ViewPlanKind::CountWindow { .. } => count
            .as_ref()
            .map(|c| {
                vec![
                    c.key_column.clone(),
                    sql::count_window::WINDOW_INDEX.to_string(),
                ]
            })
            .filter(|k| k.iter().all(|n| output_schema.field_with_name(n).is_ok()))
            .unwrap_or_default(),
        _ => over_changes_key.clone().unwrap_or_default(),
    };
    let window_time_column = match &kind {
        ViewPlanKind::Windowed { aggregate, .. } => Some(aggregate.input_time_column().into()),
        _ => None,
    };
    if let Some(r) = inputs.first().and_then(|i| env.relation(i))
        && r.kind == (RelationKind::Source { event_time: false })
        && matches!(kind, ViewPlanKind::Windowed { .. })
    {
        tracing::warn!(
            view = %v.name,
            source = %r.name,
            "source has no WATERMARK clause: windows close only when the source ends"
        );
    }
    let tables = tables_used.lock().iter().cloned().collect();
    Ok(ViewPlan {
        inputs,
        tables,
        output_schema,
        props: ViewProps {
            window: window.map(|w| w.kind),
            window_time_column,
            emit_every,
            key_columns,
            late_policy,
            retention_rows,
            changelog: matches!(kind, ViewPlanKind::Updating { .. })
                || matches!(&kind, ViewPlanKind::Join { join, .. } if join.retracts())
                || over_changes.is_some(),
        },
        kind,
    })
}

/// The schema of the relation a `COUNT_WINDOW` reads, after checking what the view asks
/// of it: an append-only input, no early emission, no dead-letter file, no state TTL.
fn count_window_input(
    spec: &sql::CountWindowSpec,
    v: &CreateView,
    late_policy: LatePolicy,
    state_ttl: Option<Duration>,
    env: &PlannerEnv,
) -> Result<SchemaRef> {
    let refuse = |m: String| Err(WeirError::user_at(m, spec.at));
    if matches!(v.emit, Some(Emit::Every(_))) {
        return refuse(
            "EMIT EVERY is for time windows; a count window comes out once it has all its rows"
                .into(),
        );
    }
    if late_policy != LatePolicy::Drop {
        return refuse(
            "option 'late.policy' = 'dead-letter' is not supported for COUNT_WINDOW: its late \
             rows are dropped and counted in late_rows"
                .into(),
        );
    }
    if state_ttl.is_some() {
        return refuse(
            "option 'state.ttl' is not supported for COUNT_WINDOW: a key's unfinished window \
             is kept until it fills"
                .into(),
        );
    }
    let Some(r) = env.relation(&spec.input) else {
        return refuse(format!(
            "COUNT_WINDOW reads '{}', which is not a source or view",
            spec.input
        ));
    };
    if let RelationKind::View {
        emits_updates,
        changelog,
        ..
    } = r.kind
        && (emits_updates || changelog)
    {
        return refuse(format!(
            "COUNT_WINDOW counts rows that are only appended, and the rows of view '{}' \
             change (an updating view, or EMIT EVERY)",
            spec.input
        ));
    }
    Ok(r.schema.clone())
}

/// Check a join view's inputs (append-only), and turn on eviction when a join key is the
/// window bound (`window_start` or `window_end`) of two windowed views.
fn prepare_join(kind: &mut ViewPlanKind, inputs: &[String], env: &PlannerEnv) -> Result<()> {
    let ViewPlanKind::Join { join, .. } = kind else {
        return Ok(());
    };
    let view = |name: &str| match env.relation(name).map(|r| r.kind) {
        Some(RelationKind::View {
            windowed,
            emits_updates,
            ..
        }) => Some((windowed, emits_updates)),
        _ => None,
    };
    if let Some(input) = inputs.iter().find(|i| view(i).is_some_and(|(_, u)| u)) {
        return Err(WeirError::user(format!(
            "view '{input}' emits early results (EMIT EVERY), which update earlier rows; \
             a join takes append-only inputs: join a view that emits on window close"
        )));
    }
    let time_key = |side: usize, column: &Option<String>| -> Option<TimeKey> {
        let (windowed, _) = view(&inputs[side])?;
        if !windowed {
            return None;
        }
        match column.as_deref()? {
            "window_start" => Some(TimeKey::WindowStart),
            "window_end" => Some(TimeKey::WindowEnd),
            _ => None,
        }
    };
    let origins = join.key_origins.clone();
    if let Some((k, kinds)) = origins
        .iter()
        .enumerate()
        .find_map(|(k, [l, r])| Some((k, [time_key(0, l)?, time_key(1, r)?])))
    {
        join.set_time_key(k, kinds);
    }
    if join.time_key().is_none() {
        match join.band_of_filter() {
            // Rows whose band the other side's watermark has passed go (and come out
            // NULL-padded on an outer side).
            Some(band) => join.set_band(band),
            // Nothing says when a match can no longer come: an outer join is an updating
            // view, an inner one keeps every row.
            None if join.is_outer() => join.set_retracting(),
            None => {}
        }
    }
    Ok(())
}
