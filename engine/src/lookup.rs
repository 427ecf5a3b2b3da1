//! Reference tables for lookup joins: `CREATE TABLE` declares a small table loaded whole
//! from a file or a Postgres table by a connector's [`TableLoader`], and reloaded every
//! `refresh.interval`. Views join streams with it like with any table:
//!
//! ```sql
//! CREATE TABLE regions (region TEXT NOT NULL, country TEXT, tier INT)
//!     WITH (connector = 'file', path = 'ref/regions.csv', format = 'csv',
//!           'refresh.interval' = '5m');
//! CREATE MATERIALIZED VIEW enriched AS
//! SELECT d.*, r.country FROM downloads d LEFT JOIN regions r ON d.region = r.region;
//! ```
//!
//! The table's current contents sit behind a [`TableHandle`]; a view's plan reads them
//! through a [`LookupExec`] leaf each time it runs over a micro-batch, so a refresh (an
//! atomic swap of the whole table) takes effect from the next micro-batch on, and one
//! micro-batch always sees one version. The join itself is DataFusion's, inside the view's
//! stateless per-batch plan: a stream row is matched against the table as it is when the
//! row is processed (no retraction of earlier results when the table changes).

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Statistics, plan_err};
use datafusion::datasource::TableType;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::statistics::{ChildStats, StatisticsArgs};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use parking_lot::{Mutex, RwLock};
use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

/// A reference table's current contents, shared by the catalog, the refresh task and
/// every plan that reads the table.
#[derive(Debug)]
pub struct TableHandle {
    pub schema: SchemaRef,
    data: RwLock<Arc<Vec<RecordBatch>>>,
    info: Mutex<TableInfo>,
}

/// What DESCRIBE and the API report about a table's loads.
#[derive(Debug, Clone, Default)]
pub struct TableInfo {
    pub rows: usize,
    /// Successful loads so far (the first at CREATE TABLE).
    pub loads: u64,
    /// Wall-clock time of the last successful load, epoch ms.
    pub loaded_at_ms: i64,
    /// The error of the last load attempt, if it failed (the previous contents stay).
    pub last_error: Option<String>,
}

impl TableHandle {
    pub fn new(schema: SchemaRef) -> Self {
        TableHandle {
            schema,
            data: RwLock::new(Arc::new(Vec::new())),
            info: Mutex::new(TableInfo::default()),
        }
    }

    /// The table as it is now.
    pub fn current(&self) -> Arc<Vec<RecordBatch>> {
        self.data.read().clone()
    }

    /// Replace the whole table.
    pub fn replace(&self, batches: Vec<RecordBatch>, now_ms: i64) {
        let rows = batches.iter().map(|b| b.num_rows()).sum();
        let batches: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
        *self.data.write() = Arc::new(batches);
        let mut info = self.info.lock();
        info.rows = rows;
        info.loads += 1;
        info.loaded_at_ms = now_ms;
        info.last_error = None;
    }

    /// A load failed: the table keeps its contents, the error is reported.
    pub fn failed(&self, error: String) {
        self.info.lock().last_error = Some(error);
    }

    pub fn info(&self) -> TableInfo {
        self.info.lock().clone()
    }
}

/// A reference table as DataFusion sees it while planning a view. `used` collects the
/// names of the tables a view's plan reads (for DROP's dependency check).
#[derive(Debug)]
pub struct LookupTable {
    pub name: String,
    pub handle: Arc<TableHandle>,
    pub used: Arc<Mutex<BTreeSet<String>>>,
}

#[async_trait]
impl TableProvider for LookupTable {
    fn schema(&self) -> SchemaRef {
        self.handle.schema.clone()
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
        self.used.lock().insert(self.name.clone());
        Ok(Arc::new(LookupExec::new(
            self.name.clone(),
            self.handle.clone(),
            projection.cloned(),
        )?))
    }
}

/// A leaf that yields a reference table's contents as they are when the plan runs.
#[derive(Debug)]
pub struct LookupExec {
    pub table: String,
    handle: Arc<TableHandle>,
    projection: Option<Vec<usize>>,
    props: Arc<PlanProperties>,
}

impl LookupExec {
    fn new(
        table: String,
        handle: Arc<TableHandle>,
        projection: Option<Vec<usize>>,
    ) -> datafusion::error::Result<Self> {
        let schema = match &projection {
            Some(p) => Arc::new(handle.schema.project(p)?),
            None => handle.schema.clone(),
        };
        let props = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(LookupExec {
            table,
            handle,
            projection,
            props: Arc::new(props),
        })
    }
}

impl DisplayAs for LookupExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "LookupTable: {}", self.table)
    }
}

impl ExecutionPlan for LookupExec {
    fn name(&self) -> &str {
        "LookupTable"
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
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        if !children.is_empty() {
            return plan_err!("LookupTable has no children");
        }
        Ok(self)
    }

    /// The table's size, so that the join builds its hash table on the table rather than
    /// on the stream's micro-batch where DataFusion chooses by size.
    fn statistics_from_inputs(
        &self,
        _input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> datafusion::error::Result<Arc<Statistics>> {
        let rows = self.handle.info().rows;
        Ok(Arc::new(
            Statistics::new_unknown(&self.schema()).with_num_rows(Precision::Inexact(rows)),
        ))
    }

    fn child_stats_requests(&self, _partition: Option<usize>) -> Vec<ChildStats> {
        vec![]
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        let data = self.handle.current();
        // The stream reports the schema it is given: the projected one.
        Ok(Box::pin(MemoryStream::try_new(
            data.as_ref().clone(),
            self.schema(),
            self.projection.clone(),
        )?))
    }
}
