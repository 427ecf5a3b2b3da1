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
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::datasource::TableType;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
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
    /// The same leaf reading `slot`.
    fn with_slot(&self, slot: Arc<BatchSlot>) -> Self {
        SlotExec {
            input_name: self.input_name.clone(),
            full_schema: self.full_schema.clone(),
            projection: self.projection.clone(),
            slot,
            props: self.props.clone(),
        }
    }

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
}

impl SlotPlan {
    pub fn new(
        plan: Arc<dyn ExecutionPlan>,
        slot: Arc<BatchSlot>,
        task_ctx: Arc<TaskContext>,
    ) -> Self {
        SlotPlan {
            plan,
            slot,
            task_ctx,
        }
    }

    pub fn schema(&self) -> SchemaRef {
        self.plan.schema()
    }

    /// Run the plan over `batch`; returns the non-empty output batches.
    pub async fn run(&self, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        self.run_input(&self.slot, batch).await
    }

    /// Run the plan over `batch` from the input whose leaves read `input` (a union's
    /// inputs each have a slot); every such leaf yields the batch, every other leaf
    /// nothing.
    pub async fn run_input(
        &self,
        input: &Arc<BatchSlot>,
        batch: RecordBatch,
    ) -> Result<Vec<RecordBatch>> {
        // Every run executes fresh copies of the plan's nodes, never `self.plan` itself:
        // besides the state some operators keep between executions (a TopK's threshold),
        // each DataFusion operator registers new metrics (BaselineMetrics and its own) into
        // its node's metrics set on every `execute` and nothing removes them, so a node
        // executed once per micro-batch grew without bound (a few KiB per run). Each node is
        // rebuilt with `reset_state` (an empty metrics set, the computed plan properties
        // kept: no re-planning), and each input leaf with a slot of this run's own, so runs
        // may overlap (stage 1 runs a view's pre plan over several micro-batches at once on
        // different workers, `dataflow/prepare.rs`) and two leaves of one input each get
        // the batch.
        let plan = self
            .plan
            .clone()
            .transform_up(|node| {
                if let Some(leaf) = node.downcast_ref::<SlotExec>() {
                    let slot = Arc::new(BatchSlot::default());
                    if Arc::ptr_eq(&leaf.slot, input) {
                        slot.put(batch.clone());
                    }
                    return Ok(Transformed::yes(
                        Arc::new(leaf.with_slot(slot)) as Arc<dyn ExecutionPlan>
                    ));
                }
                Ok(Transformed::yes(node.reset_state()?))
            })
            .data()?;
        // A union has a partition per branch: each runs in turn, so the rows come out in
        // branch order, the same every run.
        let mut out = Vec::new();
        for partition in 0..plan.properties().partitioning.partition_count() {
            let stream = plan.execute(partition, self.task_ctx.clone())?;
            let batches: Vec<RecordBatch> = stream.try_collect().await?;
            out.extend(batches.into_iter().filter(|b| b.num_rows() > 0));
        }
        Ok(out)
    }

    pub fn display(&self) -> String {
        displayable(self.plan.as_ref()).indent(true).to_string()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::common::tree_node::TreeNode;
    use datafusion::prelude::SessionContext;

    /// Metrics registered anywhere in `plan`'s nodes.
    fn metrics_in(plan: &Arc<dyn ExecutionPlan>) -> usize {
        let mut n = 0;
        plan.apply(|node| {
            n += node.metrics().map_or(0, |m| m.iter().count());
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        n
    }

    /// A plan run once per micro-batch for months must keep nothing per run: DataFusion
    /// operators register new metrics on every `execute`, so the long-lived plan's nodes
    /// must never be the ones executed, stateless plans (projection, filter) included.
    #[tokio::test]
    async fn runs_leave_nothing_in_the_plan() {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let slot = Arc::new(BatchSlot::default());
        let ctx = SessionContext::new_with_config(crate::planner::df_config());
        ctx.register_table(
            "s",
            Arc::new(StreamTable {
                name: "s".into(),
                schema: schema.clone(),
                slot: slot.clone(),
            }),
        )
        .unwrap();
        for sql in [
            "SELECT a + 1 AS b FROM s WHERE a % 2 = 0",
            "SELECT a FROM s ORDER BY a DESC LIMIT 2",
        ] {
            let physical = ctx
                .sql(sql)
                .await
                .unwrap()
                .create_physical_plan()
                .await
                .unwrap();
            let plan = SlotPlan::new(physical, slot.clone(), ctx.task_ctx());
            let before = metrics_in(&plan.plan);
            for i in 0..5 {
                let batch = RecordBatch::try_new(
                    schema.clone(),
                    vec![Arc::new(Int64Array::from(vec![
                        2 * i,
                        2 * i + 1,
                        2 * i + 2,
                    ]))],
                )
                .unwrap();
                let out = plan.run(batch).await.unwrap();
                assert_eq!(out.iter().map(|b| b.num_rows()).sum::<usize>(), 2, "{sql}");
            }
            assert_eq!(metrics_in(&plan.plan), before, "{sql}\n{}", plan.display());
        }
    }
}
