//! Ad-hoc queries (`SELECT` statements, `POST /api/v1/query`) over views' retained rows:
//! each view is a table of the rows its serving buffer holds, and DataFusion runs the
//! query in batch over a snapshot of them.
//!
//! Every query is bounded ([`QueryLimits`]): by time (the query is dropped at the deadline;
//! DataFusion's operators yield to tokio regularly, so a running query stops within
//! moments), by memory (DataFusion's memory pool for its operators, no spilling, plus the
//! rows collected), by the rows it returns, and by the size of values functions build
//! ([`crate::sql::functions`]). Each bound reached is a [`WeirError::Limit`] that names
//! it and its value.
//!
//! The limits come with each call: the pipeline's SELECT statements use
//! `EngineConfig::query_limits`, the API's queries the server's copy of the same
//! `[engine]` settings.

use crate::error::{LimitKind, Result, WeirError};
use crate::serving::ViewBuffer;
use crate::sql::functions::{ValueTooLarge, register_bounded_functions};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{Query, Statement as SqlStatement};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// The bounds of one ad-hoc query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// Longest a query may run (`engine.query_timeout`).
    pub timeout: Duration,
    /// Most memory its operators may hold (sorts, aggregates, joins) and, separately, its
    /// result (`engine.max_query_bytes`).
    pub max_bytes: usize,
    /// Most rows it may return (`engine.max_query_rows`).
    pub max_rows: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            timeout: Duration::from_secs(10),
            max_bytes: 256 << 20,
            max_rows: 1_000_000,
        }
    }
}

/// Run an ad-hoc query over the retained rows of `views` (each a table named after the
/// view), within `limits`. The future owns snapshots of the rows, so it borrows nothing.
pub fn query_views(
    views: impl IntoIterator<Item = (String, Arc<ViewBuffer>)>,
    q: Query,
    limits: QueryLimits,
) -> impl std::future::Future<Output = Result<Vec<RecordBatch>>> + Send + 'static {
    let ctx = context(&limits);
    let registered: Result<SessionContext> = ctx.and_then(|ctx| {
        views.into_iter().try_for_each(|(name, buffer)| {
            let t = MemTable::try_new(buffer.schema.clone(), vec![buffer.snapshot()])?;
            ctx.register_table(name.as_str(), Arc::new(t))?;
            Ok::<(), WeirError>(())
        })?;
        Ok(ctx)
    });
    async move {
        let ctx = registered?;
        match tokio::time::timeout(limits.timeout, run_query(ctx, q, limits)).await {
            Ok(result) => result,
            Err(_) => Err(limit(
                LimitKind::QueryTime,
                format!(
                    "the query ran longer than {:?} and was stopped: the query time limit \
                     (engine.query_timeout) is {:?}",
                    limits.timeout, limits.timeout
                ),
            )),
        }
    }
}

fn limit(kind: LimitKind, message: String) -> WeirError {
    WeirError::Limit {
        kind,
        message,
        statement: None,
    }
}

/// A context whose operators share a memory pool of `max_bytes`, with no spilling to
/// disk, and Weir's bounded functions.
fn context(limits: &QueryLimits) -> Result<SessionContext> {
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(GreedyMemoryPool::new(limits.max_bytes)))
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
        )
        .build_arc()?;
    let ctx =
        SessionContext::new_with_config_rt(SessionConfig::new().with_target_partitions(1), runtime);
    register_bounded_functions(&ctx);
    Ok(ctx)
}

/// A DataFusion error of a query as Weir's: the limits it hit, or a user error.
fn query_error(e: DataFusionError, limits: &QueryLimits) -> WeirError {
    if let Some(v) = ValueTooLarge::find(&e) {
        return limit(LimitKind::ValueSize, v.to_string());
    }
    if matches!(e.find_root(), DataFusionError::ResourcesExhausted(_)) {
        return memory_limit(limits);
    }
    WeirError::planning(e)
}

fn memory_limit(limits: &QueryLimits) -> WeirError {
    limit(
        LimitKind::QueryMemory,
        format!(
            "the query needed more than {} bytes of memory: the query memory limit \
             (engine.max_query_bytes) is {} bytes",
            limits.max_bytes, limits.max_bytes
        ),
    )
}

async fn run_query(ctx: SessionContext, q: Query, limits: QueryLimits) -> Result<Vec<RecordBatch>> {
    let error = |e| query_error(e, &limits);
    let state = ctx.state();
    let plan = state
        .statement_to_plan(DfStatement::Statement(Box::new(SqlStatement::Query(
            Box::new(q),
        ))))
        .await
        .map_err(error)?;
    let df = ctx.execute_logical_plan(plan).await.map_err(error)?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let mut stream = df.execute_stream().await.map_err(error)?;
    let (mut rows, mut bytes) = (0usize, 0usize);
    let mut out = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(error)?;
        rows += batch.num_rows();
        if rows > limits.max_rows {
            return Err(limit(
                LimitKind::QueryRows,
                format!(
                    "the query returned more than {} rows: the query row limit \
                     (engine.max_query_rows) is {}",
                    limits.max_rows, limits.max_rows
                ),
            ));
        }
        bytes += batch.get_array_memory_size();
        if bytes > limits.max_bytes {
            return Err(memory_limit(&limits));
        }
        out.push(batch);
    }
    // An empty answer still has columns.
    if out.is_empty() {
        out.push(RecordBatch::new_empty(schema));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::sql::{WeirStatement, parse_script};
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::time::Instant;

    fn query(sql: &str) -> Query {
        match parse_script(sql).unwrap().remove(0).statement {
            WeirStatement::Select(q) => *q,
            other => panic!("{other:?}"),
        }
    }

    /// A view `v` holding `n` rows of one column `a` (0..n).
    fn view(n: i64) -> (String, Arc<ViewBuffer>) {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let buffer = Arc::new(ViewBuffer::new(schema.clone(), n as usize));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(0..n))])
                .unwrap();
        buffer.push(1, batch, None, 0).unwrap();
        ("v".to_string(), buffer)
    }

    async fn run(sql: &str, limits: QueryLimits) -> Result<Vec<RecordBatch>> {
        query_views([view(1000)], query(sql), limits).await
    }

    fn kind(r: Result<Vec<RecordBatch>>) -> (LimitKind, String) {
        match r {
            Err(WeirError::Limit { kind, message, .. }) => (kind, message),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_query_within_its_limits_runs() {
        let b = run(
            "SELECT count(*) AS n, sum(a) AS s FROM v",
            QueryLimits::default(),
        )
        .await
        .unwrap();
        assert_eq!(b[0].num_rows(), 1);
    }

    #[tokio::test]
    async fn a_query_past_its_time_is_stopped_at_the_deadline() {
        let limits = QueryLimits {
            timeout: Duration::from_millis(500),
            ..QueryLimits::default()
        };
        let started = Instant::now();
        let (k, message) = kind(
            run(
                "SELECT count(*) FROM generate_series(1, 1000000000000)",
                limits,
            )
            .await,
        );
        assert_eq!(k, LimitKind::QueryTime);
        assert!(message.contains("500ms"), "{message}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_query_past_its_rows_or_memory_is_stopped() {
        let limits = QueryLimits {
            max_rows: 100,
            ..QueryLimits::default()
        };
        let (k, message) = kind(run("SELECT a FROM v", limits).await);
        assert_eq!(k, LimitKind::QueryRows);
        assert!(
            message.contains("limit (engine.max_query_rows) is 100"),
            "{message}"
        );
        assert_eq!(
            run("SELECT a FROM v LIMIT 100", limits).await.unwrap()[0].num_rows(),
            100
        );

        let limits = QueryLimits {
            max_bytes: 1 << 20,
            ..QueryLimits::default()
        };
        // A sort that must hold everything in memory.
        let (k, message) = kind(
            run(
                "SELECT value FROM generate_series(1, 10000000) ORDER BY value DESC LIMIT 5 OFFSET 1000000",
                limits,
            )
            .await,
        );
        assert_eq!(k, LimitKind::QueryMemory);
        assert!(message.contains("is 1048576 bytes"), "{message}");
        // The collected result counts too.
        let (k, _) = kind(run("SELECT value FROM generate_series(1, 1000000)", limits).await);
        assert_eq!(k, LimitKind::QueryMemory);
    }

    #[tokio::test]
    async fn functions_are_bounded_in_queries() {
        let (k, message) =
            kind(run("SELECT repeat('a', 2000000000)", QueryLimits::default()).await);
        assert_eq!(k, LimitKind::ValueSize);
        assert!(message.contains("repeat(...)"), "{message}");
    }

    #[tokio::test]
    async fn a_pipelines_select_statements_use_its_configured_limits() {
        let config = crate::pipeline::EngineConfig {
            query_limits: QueryLimits {
                max_rows: 7,
                ..QueryLimits::default()
            },
            ..Default::default()
        };
        let mut p =
            crate::pipeline::Pipeline::new(config, crate::connector::ConnectorRegistry::new());
        let e = p
            .execute("SELECT * FROM generate_series(1, 100)")
            .await
            .unwrap_err();
        match e {
            WeirError::Limit {
                kind,
                message,
                statement,
            } => {
                assert_eq!((kind, statement), (LimitKind::QueryRows, Some(1)));
                assert!(message.contains("is 7"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            p.execute("SELECT * FROM generate_series(1, 7)")
                .await
                .is_ok()
        );
    }

    /// Measures what the README states: planning and running the deepest accepted
    /// statements, and refusing deeper ones. Run with
    /// `cargo test --release -p weir-engine --lib -- --ignored --nocapture planning_time`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn planning_time_at_the_depth_limit() {
        use crate::sql::depth::{MAX_DEPTH, STACK_SIZE};
        let measure = || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let chain = |n: usize| vec!["1"; n].join(" + ");
            let ors = |n: usize| {
                (0..n)
                    .map(|i| format!("a = {i}"))
                    .collect::<Vec<_>>()
                    .join(" OR ")
            };
            let accepted = [
                format!("SELECT {} AS n", chain(MAX_DEPTH - 2)),
                format!("SELECT a FROM v WHERE {}", ors(MAX_DEPTH - 5)),
            ];
            for sql in accepted {
                let started = Instant::now();
                let r = rt.block_on(query_views(
                    [view(1000)],
                    query(&sql),
                    QueryLimits::default(),
                ));
                assert!(r.is_ok(), "{r:?}");
                eprintln!("{:.40}...: planned and ran in {:?}", sql, started.elapsed());
            }
            let refused = [
                format!("SELECT {}", chain(2000)),
                format!("SELECT a FROM v WHERE {}", ors(2000)),
                format!("SELECT a FROM v WHERE {}", ors(20_000)),
            ];
            for sql in refused {
                let started = Instant::now();
                let r = parse_script(&sql);
                assert!(matches!(r, Err(WeirError::Limit { .. })));
                eprintln!(
                    "{:.40}... ({} bytes): refused in {:?}",
                    sql,
                    sql.len(),
                    started.elapsed()
                );
            }
        };
        std::thread::Builder::new()
            .stack_size(STACK_SIZE)
            .spawn(measure)
            .unwrap()
            .join()
            .unwrap();
    }
}
