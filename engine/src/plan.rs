//! Planning a view: DataFusion plans the (window-rewritten) query body, then the physical
//! plan is split at the aggregate into three parts that the executor drives:
//!
//! ```text
//!   post  (HAVING, projection, ORDER BY/LIMIT, top-N)   run once per closed window
//!   ----- aggregate ------------------------------------  WindowAggregator: DataFusion
//!                                                         accumulators per open window
//!   pre   (scan, WHERE, projection, window columns)      run once per micro-batch
//! ```
//!
//! Each streaming input is a [`StreamTable`] whose scan is a [`SlotExec`]: a leaf that yields
//! whatever batches were put into its [`BatchSlot`] since it last ran. Executing `pre` after
//! filling the slot runs DataFusion's own operators over that micro-batch. A view without an
//! aggregate is all `pre`.

use crate::error::{Result, WeirError};
use crate::sql::WindowSpec;
use crate::window::WindowAggregator;
use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::TableType;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType, reset_plan_states};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream, displayable,
};
use futures::TryStreamExt;
use std::fmt;
use std::sync::{Arc, Mutex};

/// Batches waiting to be read by the next execution of a plan.
#[derive(Debug, Default)]
pub struct BatchSlot {
    batches: Mutex<Vec<RecordBatch>>,
}

impl BatchSlot {
    pub fn put(&self, batch: RecordBatch) {
        if let Ok(mut b) = self.batches.lock() {
            b.push(batch);
        }
    }

    fn take(&self) -> Vec<RecordBatch> {
        self.batches
            .lock()
            .map(|mut b| std::mem::take(&mut *b))
            .unwrap_or_default()
    }
}

/// A streaming relation (a source or a view) as DataFusion sees it while planning a view.
#[derive(Debug)]
pub struct StreamTable {
    pub name: String,
    pub schema: SchemaRef,
    pub slot: Arc<BatchSlot>,
}

#[async_trait]
impl TableProvider for StreamTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(SlotExec::new(
            self.name.clone(),
            self.schema.clone(),
            projection.cloned(),
            self.slot.clone(),
        )?))
    }
}

/// A leaf that yields the batches in its slot, projected.
#[derive(Debug)]
pub struct SlotExec {
    pub input_name: String,
    full_schema: SchemaRef,
    projection: Option<Vec<usize>>,
    pub slot: Arc<BatchSlot>,
    props: Arc<PlanProperties>,
}

impl SlotExec {
    pub fn new(
        input_name: String,
        full_schema: SchemaRef,
        projection: Option<Vec<usize>>,
        slot: Arc<BatchSlot>,
    ) -> datafusion::error::Result<Self> {
        let schema = match &projection {
            Some(p) => Arc::new(full_schema.project(p)?),
            None => full_schema.clone(),
        };
        let props = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(SlotExec {
            input_name,
            full_schema,
            projection,
            slot,
            props: Arc::new(props),
        })
    }
}

impl DisplayAs for SlotExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "StreamInput: {}", self.input_name)
    }
}

impl ExecutionPlan for SlotExec {
    fn name(&self) -> &str {
        "StreamInput"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::error::Result<TreeNodeRecursion>,
    ) -> datafusion::error::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        Ok(Box::pin(MemoryStream::try_new(
            self.slot.take(),
            self.full_schema.clone(),
            self.projection.clone(),
        )?))
    }
}

/// A physical plan fed through one slot, run once per input.
pub struct SlotPlan {
    pub plan: Arc<dyn ExecutionPlan>,
    pub slot: Arc<BatchSlot>,
    task_ctx: Arc<TaskContext>,
    /// Whether some operator keeps state between executions (a TopK's threshold, say) that
    /// must be reset before each run.
    needs_reset: bool,
}

/// Operators that keep nothing from one execution to the next.
const STATELESS_OPERATORS: &[&str] = &[
    "StreamInput",
    "ProjectionExec",
    "FilterExec",
    "CooperativeExec",
    "CoalesceBatchesExec",
    "CoalescePartitionsExec",
    "RepartitionExec",
];

impl SlotPlan {
    pub fn new(
        plan: Arc<dyn ExecutionPlan>,
        slot: Arc<BatchSlot>,
        task_ctx: Arc<TaskContext>,
    ) -> Self {
        let mut needs_reset = false;
        let _ = plan.apply(|node| {
            if !STATELESS_OPERATORS.contains(&node.name()) {
                needs_reset = true;
            }
            Ok(TreeNodeRecursion::Continue)
        });
        SlotPlan {
            plan,
            slot,
            task_ctx,
            needs_reset,
        }
    }

    pub fn schema(&self) -> SchemaRef {
        self.plan.schema()
    }

    /// Run the plan over `batch`; returns the non-empty output batches.
    pub async fn run(&self, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        self.slot.put(batch);
        let plan = if self.needs_reset {
            reset_plan_states(self.plan.clone())?
        } else {
            self.plan.clone()
        };
        let stream = plan.execute(0, self.task_ctx.clone())?;
        let out: Vec<RecordBatch> = stream.try_collect().await?;
        Ok(out.into_iter().filter(|b| b.num_rows() > 0).collect())
    }

    pub fn display(&self) -> String {
        displayable(self.plan.as_ref()).indent(true).to_string()
    }
}

/// A planned view, ready to execute.
pub struct ViewPlan {
    /// The relation the view reads.
    pub input: String,
    pub output_schema: SchemaRef,
    pub kind: ViewPlanKind,
}

pub enum ViewPlanKind {
    Stateless {
        plan: SlotPlan,
    },
    Windowed {
        pre: SlotPlan,
        aggregate: Box<WindowAggregator>,
        post: SlotPlan,
    },
}

impl ViewPlan {
    /// The streaming plan, for EXPLAIN and DESCRIBE.
    pub fn explain(&self) -> String {
        match &self.kind {
            ViewPlanKind::Stateless { plan } => {
                format!("stateless view over {}:\n{}", self.input, plan.display())
            }
            ViewPlanKind::Windowed {
                pre,
                aggregate,
                post,
            } => format!(
                "per window close:\n{}{}\nper micro-batch over {}:\n{}",
                post.display(),
                aggregate.describe(),
                self.input,
                pre.display()
            ),
        }
    }

    /// Window bounds and group keys: what identifies an output row.
    pub fn key_columns(&self) -> Vec<String> {
        match &self.kind {
            ViewPlanKind::Stateless { .. } => vec![],
            ViewPlanKind::Windowed { aggregate, .. } => {
                let names = aggregate.group_names();
                // Group columns as they appear in the output (they may be renamed by aliases,
                // so only keep those present).
                names
                    .into_iter()
                    .filter(|n| self.output_schema.field_with_name(n).is_ok())
                    .collect()
            }
        }
    }
}

/// Find every stream input leaf in a plan.
fn stream_inputs(plan: &Arc<dyn ExecutionPlan>) -> Vec<(String, Arc<BatchSlot>)> {
    let mut out: Vec<(String, Arc<BatchSlot>)> = Vec::new();
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
    task_ctx: Arc<TaskContext>,
) -> Result<ViewPlan> {
    let output_schema = physical.schema();
    let inputs = stream_inputs(&physical);
    let input = match inputs.as_slice() {
        [] => {
            return Err(WeirError::user(
                "a materialized view must read a source or another view",
            ));
        }
        [(name, _)] => name.clone(),
        _ => {
            return Err(WeirError::user(
                "a view may read one stream; joins and unions of streams are not supported yet",
            ));
        }
    };
    let aggs = find_aggregates(&physical);
    let Some(top) = aggs.first().cloned() else {
        let slot = inputs[0].1.clone();
        return Ok(ViewPlan {
            input,
            output_schema,
            kind: ViewPlanKind::Stateless {
                plan: SlotPlan::new(physical, slot, task_ctx),
            },
        });
    };
    let Some(window) = window else {
        return Err(WeirError::user(
            "aggregations over a stream need a window: read FROM TUMBLE(source, time_column, INTERVAL '...') \
             and GROUP BY window_start, window_end",
        ));
    };
    let top_exec = top
        .downcast_ref::<AggregateExec>()
        .ok_or_else(|| WeirError::Internal("aggregate downcast".into()))?;
    // The aggregate that sees raw rows: the top one in Single mode, else the partial one below.
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
    let raw_count = if Arc::ptr_eq(&raw, &top) { 1 } else { 2 };
    if aggs.len() > raw_count {
        return Err(WeirError::user(
            "a streaming view may aggregate once; nested aggregations (or DISTINCT rewritten into them) \
             are not supported yet",
        ));
    }
    let raw_exec = raw
        .downcast_ref::<AggregateExec>()
        .ok_or_else(|| WeirError::Internal("aggregate downcast".into()))?;
    let pre_plan = raw_exec.input().clone();
    let aggregate = Box::new(WindowAggregator::try_new(raw_exec, top.schema(), window)?);
    let slot = Arc::new(BatchSlot::default());
    let agg_out = top.schema();
    let leaf: Arc<dyn ExecutionPlan> = Arc::new(SlotExec::new(
        "window aggregate".into(),
        agg_out,
        None,
        slot.clone(),
    )?);
    let post_plan = physical
        .transform_down(|node| {
            if Arc::ptr_eq(&node, &top) {
                Ok(Transformed::new(
                    leaf.clone(),
                    true,
                    TreeNodeRecursion::Jump,
                ))
            } else {
                Ok(Transformed::no(node))
            }
        })?
        .data;
    Ok(ViewPlan {
        input,
        output_schema,
        kind: ViewPlanKind::Windowed {
            pre: SlotPlan::new(pre_plan, inputs[0].1.clone(), task_ctx.clone()),
            aggregate,
            post: SlotPlan::new(post_plan, slot, task_ctx),
        },
    })
}
