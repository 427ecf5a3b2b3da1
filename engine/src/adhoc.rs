//! Ad-hoc queries (`SELECT` statements, `POST /api/v1/query`) over views' retained rows:
//! each view is a table of the rows its serving buffer holds, and DataFusion runs the
//! query in batch over a snapshot of them.

use crate::error::{Result, WeirError};
use crate::serving::ViewBuffer;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{Query, Statement as SqlStatement};
use std::sync::Arc;

/// Run an ad-hoc query over the retained rows of `views` (each a table named after the
/// view). The future owns snapshots of the rows, so it borrows nothing.
pub fn query_views(
    views: impl IntoIterator<Item = (String, Arc<ViewBuffer>)>,
    q: Query,
) -> impl std::future::Future<Output = Result<Vec<RecordBatch>>> + Send + 'static {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    let registered: Result<()> = views.into_iter().try_for_each(|(name, buffer)| {
        let t = MemTable::try_new(buffer.schema.clone(), vec![buffer.snapshot()])?;
        ctx.register_table(name.as_str(), Arc::new(t))?;
        Ok(())
    });
    async move {
        registered?;
        run_query(ctx, q).await
    }
}

async fn run_query(ctx: SessionContext, q: Query) -> Result<Vec<RecordBatch>> {
    let state = ctx.state();
    let plan = state
        .statement_to_plan(DfStatement::Statement(Box::new(SqlStatement::Query(
            Box::new(q),
        ))))
        .await
        .map_err(WeirError::planning)?;
    let df = ctx
        .execute_logical_plan(plan)
        .await
        .map_err(WeirError::planning)?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await?;
    // An empty answer still has columns.
    if batches.is_empty() {
        return Ok(vec![RecordBatch::new_empty(schema)]);
    }
    Ok(batches)
}
