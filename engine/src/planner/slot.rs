//! How DataFusion runs over micro-batches: each streaming input of a view is a
//! [`StreamTable`] whose scan is a [`SlotExec`], a leaf that yields whatever batches were
//! put into its [`BatchSlot`] since it last ran. A [`SlotPlan`] is a physical plan fed
//! through one slot: filling the slot and executing the plan runs DataFusion's own
//! operators over that micro-batch (or over a closed window's rows).

use crate::error::Result;
use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::TableType;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType, reset_plan_states};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream, displayable,
};
use futures::TryStreamExt;
use parking_lot::Mutex;
use std::fmt;
use std::sync::Arc;

/// Batches waiting to be read by the next execution of a plan.
#[derive(Debug, Default)]
pub struct BatchSlot {
    batches: Mutex<Vec<RecordBatch>>,
}

impl BatchSlot {
    pub fn put(&self, batch: RecordBatch) {
        self.batches.lock().push(batch);
    }

    fn take(&self) -> Vec<RecordBatch> {
        std::mem::take(&mut *self.batches.lock())
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

impl SlotExec {
    /// The name, in the input's own schema, of output column `i`.
    pub(crate) fn input_column(&self, i: usize) -> Option<String> {
        let i = match &self.projection {
            Some(p) => *p.get(i)?,
            None => i,
        };
        (i < self.full_schema.fields().len()).then(|| self.full_schema.field(i).name().clone())
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
        // MemoryStream reports the schema it is given, so it must be the projected one
        // (a hash join collecting this side concatenates with the stream's schema).
        Ok(Box::pin(MemoryStream::try_new(
            self.slot.take(),
            self.schema(),
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
        // The visitor never fails: `apply` returns Ok.
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
