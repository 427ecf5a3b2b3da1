//! The REST routes, each documented for the OpenAPI document by `#[utoipa::path]`, so the
//! document is generated from the same list of handlers the router serves.

use super::json::{column_names, rows_array, write_changes, write_rows};
use super::types::{ErrorBody, Object, object};
use super::{ApiError, AppState, Grant, RawJson, json_bytes, metrics, ws};
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use datafusion::arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use weir_engine::WeirError;
use weir_engine::adhoc::query_views;
use weir_engine::catalog::ObjectInfo;
use weir_engine::error::LimitKind;
use weir_engine::pipeline::{Applied, StatementResult};
use weir_engine::serving::ViewBuffer;
use weir_engine::sql::{ObjectKind, WeirStatement};
use weir_engine::stats::Status;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Weir",
        description = "Streaming SQL over Kafka: sources, materialized views, sinks, \
                       their live figures, retained rows and subscriptions."
    ),
    tags(
        (name = "health", description = "Liveness, readiness and metrics"),
        (name = "sql", description = "Submitting SQL and ad-hoc queries"),
        (name = "objects", description = "Sources, views and sinks"),
        (name = "rows", description = "A view's retained rows and live subscriptions"),
    )
)]
struct ApiDoc;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(metrics_text))
        .routes(routes!(post_sql))
        .routes(routes!(post_query))
        .routes(routes!(list_sources))
        .routes(routes!(list_views))
        .routes(routes!(list_sinks))
        .routes(routes!(get_source, delete_source))
        .routes(routes!(super::ingest::post_events))
        .routes(routes!(get_view, delete_view))
        .routes(routes!(get_sink, delete_sink))
        .routes(routes!(list_tables))
        .routes(routes!(get_table, delete_table))
        .routes(routes!(view_rows))
        .routes(routes!(ws::subscribe_view))
        .routes(routes!(ws::subscribe_status))
        .routes(routes!(cluster))
}

/// `GET /api/v1/cluster` on a cluster member.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterStatus {
    /// Per source, its stage-1 consumer group (input partitions); per view, its stage-2
    /// group (key partitions): `{group, topic, state, members: [{member, host,
    /// partitions}], lag}` (docs/cluster.md, "Watching a cluster").
    #[schema(value_type = Object)]
    pub groups: serde_json::Value,
    /// This member's own figures: `{id, views: {<view>: {input_partitions,
    /// key_partitions, records_in, rows_out, exchange_bytes, steps_committed,
    /// steps_aborted, snapshots, rebalances, fenced, last_restore}}}`.
    #[schema(value_type = Object)]
    pub member: serde_json::Value,
}

/// GET /api/v1/cluster: the cluster's members, the partitions each owns and the lag, as
/// Kafka's consumer groups describe them; 404 when this process is not a cluster member.
#[utoipa::path(get, path = "/api/v1/cluster", tag = "objects",
    responses((status = 200, description = "The cluster", body = ClusterStatus),
              (status = 404, description = "Not a cluster member", body = ErrorBody),
              (status = 502, description = "Kafka did not answer", body = ErrorBody)))]
async fn cluster(State(state): State<AppState>) -> Result<axum::Json<ClusterStatus>, ApiError> {
    let Some(info) = state.cluster.clone() else {
        return Err(ApiError::not_found(
            "this process is not a cluster member ([cluster] group is not set)",
        ));
    };
    let mut groups = tokio::task::spawn_blocking(move || info())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "kafka", format!("{e:#}")))?;
    let member = groups
        .as_object_mut()
        .and_then(|g| g.remove("member"))
        .unwrap_or_default();
    Ok(axum::Json(ClusterStatus { groups, member }))
}

/// Every object of a kind that the request's token may see.
pub fn objects_of(
    state: &AppState,
    kind: ObjectKind,
    grant: &Option<Extension<Grant>>,
) -> Vec<Object> {
    state
        .catalog
        .objects()
        .iter()
        .filter(|o| o.kind == kind && Grant::allows(grant, &o.name))
        .map(object)
        .collect()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

/// GET /health: the process lives.
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "Alive", body = Health)))]
async fn health() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// ready or not_ready
    pub status: String,
    /// What is not ready: a source that has not connected, anything failed.
    pub reasons: Vec<String>,
}

/// GET /ready: every source connected and every pipeline running.
#[utoipa::path(get, path = "/ready", tag = "health",
    responses((status = 200, description = "Ready", body = Readiness),
              (status = 503, description = "Not ready, with reasons", body = Readiness)))]
async fn ready(State(state): State<AppState>) -> Response {
    let mut reasons = Vec::new();
    if *state.stopping.borrow() {
        reasons.push("the server is stopping".to_string());
    }
    for o in state.catalog.objects().iter() {
        match o.stats.status() {
            Status::Starting => reasons.push(format!(
                "{} {} has not connected yet",
                o.kind.noun(),
                o.name
            )),
            Status::Failed => reasons.push(format!(
                "{} {} failed: {}",
                o.kind.noun(),
                o.name,
                o.stats.last_error().unwrap_or_default()
            )),
            Status::Retrying => reasons.push(format!(
                "{} {} is retrying: {}",
                o.kind.noun(),
                o.name,
                o.stats.last_error().unwrap_or_default()
            )),
            Status::Running | Status::Finished => {}
        }
    }
    let code = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let status = if reasons.is_empty() {
        "ready"
    } else {
        "not_ready"
    };
    (
        code,
        axum::Json(Readiness {
            status: status.into(),
            reasons,
        }),
    )
        .into_response()
}

/// GET /metrics: Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text exposition format", body = String,
               content_type = "text/plain; version=0.0.4")))]
async fn metrics_text(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(&state.catalog, &state.dropped_subscribers),
    )
        .into_response()
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct SqlBody {
    /// One or more statements separated by semicolons.
    pub sql: String,
}

/// The SQL of a request body: plain text, or JSON `{"sql": "..."}`.
fn sql_of(state: &AppState, headers: &HeaderMap, body: &Bytes) -> Result<String, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let sql = if json {
        serde_json::from_slice::<SqlBody>(body)
            .map_err(|e| ApiError::bad_request(format!("expected {{\"sql\": \"...\"}}: {e}")))?
            .sql
    } else {
        String::from_utf8(body.to_vec())
            .map_err(|_| ApiError::bad_request("the SQL text is not UTF-8"))?
    };
    if sql.len() > state.settings.max_sql_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the SQL text has {} bytes; the limit is {} (server.max_sql_bytes)",
                sql.len(),
                state.settings.max_sql_bytes
            ),
        ));
    }
    if sql.trim().is_empty() {
        return Err(ApiError::bad_request("no SQL in the request body"));
    }
    Ok(sql)
}

/// What one statement did.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatementOut {
    /// CREATE SOURCE, CREATE MATERIALIZED VIEW, CREATE SINK, DROP ..., SHOW, DESCRIBE,
    /// EXPLAIN, SELECT
    pub statement: String,
    /// The object created or dropped.
    pub name: Option<String>,
    /// source, view or sink
    pub kind: Option<String>,
    /// created, dropped or unchanged (IF [NOT] EXISTS)
    pub outcome: Option<String>,
    /// For statements that return rows (SHOW, DESCRIBE, EXPLAIN, SELECT).
    pub columns: Option<Vec<String>>,
    pub rows: Option<Vec<serde_json::Value>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SqlResponse {
    pub results: Vec<StatementOut>,
}

fn statement_out(a: &Applied) -> StatementOut {
    let (name, kind, outcome) = match &a.result {
        StatementResult::Created { kind, name } => (Some(name), Some(kind), Some("created")),
        StatementResult::Dropped { kind, name } => (Some(name), Some(kind), Some("dropped")),
        StatementResult::Unchanged { kind, name } => (Some(name), Some(kind), Some("unchanged")),
        StatementResult::Rows(_) => (None, None, None),
    };
    let (columns, rows) = match &a.result {
        StatementResult::Rows(batches) => {
            let columns = column_names(batches);
            let rows = serde_json::from_slice(&rows_array(batches)).unwrap_or_default();
            (Some(columns), Some(rows))
        }
        _ => (None, None),
    };
    StatementOut {
        statement: a.statement.into(),
        name: name.cloned(),
        kind: kind.map(|k| k.word().into()),
        outcome: outcome.map(Into::into),
        columns,
        rows,
    }
}

/// An engine error as a response: the caller's mistakes are 4xx with their position, by
/// the error's kind (never by its text).
fn engine_error(state: &AppState, e: WeirError) -> ApiError {
    match e {
        WeirError::User {
            message,
            statement,
            location,
        } => {
            let mut err = ApiError::new(StatusCode::BAD_REQUEST, "sql_error", message);
            if let Some(l) = location {
                err = err
                    .with("line", l.line.into())
                    .with("column", l.column.into());
            }
            if let Some(s) = statement {
                err = err.with("statement", s.into());
            }
            err
        }
        ref conflict @ WeirError::Conflict {
            ref dependents,
            statement,
            ..
        } => {
            let dependents: Vec<serde_json::Value> = dependents
                .iter()
                .map(|(k, n)| serde_json::json!({"kind": k.word(), "name": n}))
                .collect();
            let mut err = ApiError::new(StatusCode::CONFLICT, "conflict", conflict.to_string())
                .with("dependents", dependents.into());
            if let Some(s) = statement {
                err = err.with("statement", s.into());
            }
            err
        }
        ref limit @ WeirError::Limit {
            kind, statement, ..
        } => {
            let status = match kind {
                LimitKind::QueryTime => StatusCode::REQUEST_TIMEOUT,
                LimitKind::QueryMemory | LimitKind::QueryRows | LimitKind::ValueSize => {
                    StatusCode::PAYLOAD_TOO_LARGE
                }
                LimitKind::ExpressionDepth => StatusCode::BAD_REQUEST,
            };
            let mut err = ApiError::new(status, "limit", limit.to_string())
                .with("limit", kind.as_str().into());
            if let Some(s) = statement {
                err = err.with("statement", s.into());
            }
            err
        }
        WeirError::BadRecord(m) => ApiError::new(StatusCode::BAD_REQUEST, "bad_record", m),
        e @ WeirError::External { .. } => {
            ApiError::new(StatusCode::BAD_REQUEST, "external", e.to_string())
        }
        other => ApiError::internal(state, other),
    }
}

/// Apply a script in the running pipeline and journal what changed.
async fn apply(state: &AppState, sql: String) -> Result<Vec<StatementOut>, ApiError> {
    let outcome = state.controller.execute(sql).await.ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the pipeline is not running (stopping or stopped)",
        )
    })?;
    let changed: Vec<String> = outcome
        .applied
        .iter()
        .filter(|a| {
            matches!(
                a.result,
                StatementResult::Created { .. } | StatementResult::Dropped { .. }
            )
        })
        .map(|a| a.text.clone())
        .collect();
    if let Err(e) = state.state.record(&changed).await {
        return Err(ApiError::internal(
            state,
            format!("applied but not journaled (lost at restart): {e:#}"),
        ));
    }
    let results: Vec<StatementOut> = outcome.applied.iter().map(statement_out).collect();
    match outcome.error {
        None => Ok(results),
        Some(e) => Err(engine_error(state, e).beside(
            "applied",
            serde_json::to_value(&results).unwrap_or_default(),
        )),
    }
}

/// POST /api/v1/sql: apply statements exactly as SQL files at start-up are applied.
///
/// Statements apply in order; the first error stops the script with 400 (message, line,
/// column, statement) and `applied` lists the statements before it, which stay applied.
/// CREATE and DROP statements are journaled in the state directory and survive a restart.
#[utoipa::path(post, path = "/api/v1/sql", tag = "sql",
    request_body(content = String, content_type = "text/plain",
                 description = "SQL text; or JSON {\"sql\": \"...\"} with Content-Type: application/json"),
    responses((status = 200, description = "Every statement applied", body = SqlResponse),
              (status = 400, description = "A statement failed, or nests too deeply (code limit, limit expression_depth)", body = ErrorBody),
              (status = 408, description = "A SELECT ran past engine.query_timeout (code limit, limit query_time)", body = ErrorBody),
              (status = 409, description = "A DROP of an object others read", body = ErrorBody),
              (status = 413, description = "The SQL text is too large (too_large), or a SELECT went past a bound (code limit, limit query_memory, query_rows or value_size)", body = ErrorBody)))]
async fn post_sql(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<axum::Json<SqlResponse>, ApiError> {
    let sql = sql_of(&state, &headers, &body)?;
    let results = apply(&state, sql).await?;
    Ok(axum::Json(SqlResponse { results }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueryResponse {
    pub columns: Vec<String>,
    pub rows: Vec<serde_json::Value>,
    /// True when the result had more rows than server.max_result_rows.
    pub truncated: bool,
}

/// POST /api/v1/query: a SELECT over the views' retained rows (each view is a table),
/// bounded by the engine's query limits (depth, time, memory, rows, value size), which
/// `weir` sets for the runtime this handler runs on.
#[utoipa::path(post, path = "/api/v1/query", tag = "sql",
    request_body(content = String, content_type = "text/plain",
                 description = "One SELECT; or JSON {\"sql\": \"...\"}"),
    responses((status = 200, description = "The result", body = QueryResponse),
              (status = 400, description = "Not a SELECT, it failed, or it nests too deeply (code limit, limit expression_depth)", body = ErrorBody),
              (status = 408, description = "It ran past engine.query_timeout (code limit, limit query_time)", body = ErrorBody),
              (status = 413, description = "The SQL text is too large (too_large), or the query went past a bound (code limit, limit query_memory, query_rows or value_size)", body = ErrorBody)))]
async fn post_query(
    State(state): State<AppState>,
    grant: Option<Extension<Grant>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let sql = sql_of(&state, &headers, &body)?;
    let mut statements =
        weir_engine::sql::parse_script(&sql).map_err(|e| engine_error(&state, e))?;
    if statements.len() != 1 {
        return Err(ApiError::bad_request(format!(
            "send one SELECT statement, not {}",
            statements.len()
        )));
    }
    let WeirStatement::Select(q) = statements.remove(0).statement else {
        return Err(ApiError::bad_request(
            "only a SELECT can be queried here; use POST /api/v1/sql for other statements",
        ));
    };
    let objects = state.catalog.objects();
    // A token limited to some views queries only those: the others are not tables here,
    // exactly as if they did not exist.
    let views = objects
        .iter()
        .filter(|o| Grant::allows(&grant, &o.name))
        .filter_map(|o| o.buffer.clone().map(|b| (o.name.clone(), b)));
    let batches = query_views(views, *q, state.settings.query_limits)
        .await
        .map_err(|e| engine_error(&state, e))?;
    let limit = state.settings.max_result_rows;
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let kept = take_rows(&batches, 0, limit);
    let columns = column_names(&batches);
    let mut out = b"{\"columns\":".to_vec();
    out.extend(json_bytes(&columns));
    out.extend_from_slice(b",\"rows\":[");
    write_rows(&kept, &mut out, true);
    out.extend_from_slice(format!("],\"truncated\":{}}}", total > limit).as_bytes());
    Ok(RawJson(out).into_response())
}

/// Rows `skip..skip+limit` of `batches`, as slices.
fn take_rows(
    batches: &[datafusion::arrow::record_batch::RecordBatch],
    mut skip: usize,
    mut limit: usize,
) -> Vec<datafusion::arrow::record_batch::RecordBatch> {
    let mut out = Vec::new();
    for b in batches {
        if limit == 0 {
            break;
        }
        if skip >= b.num_rows() {
            skip -= b.num_rows();
            continue;
        }
        let n = (b.num_rows() - skip).min(limit);
        out.push(b.slice(skip, n));
        limit -= n;
        skip = 0;
    }
    out
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SourceList {
    pub sources: Vec<Object>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ViewList {
    pub views: Vec<Object>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SinkList {
    pub sinks: Vec<Object>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TableList {
    pub tables: Vec<Object>,
}

/// GET /api/v1/tables
#[utoipa::path(get, path = "/api/v1/tables", tag = "objects",
    responses((status = 200, description = "Every reference table (CREATE TABLE) with its figures: rows_in is the rows loaded last", body = TableList)))]
async fn list_tables(
    State(state): State<AppState>,
    grant: Option<Extension<Grant>>,
) -> axum::Json<TableList> {
    axum::Json(TableList {
        tables: objects_of(&state, ObjectKind::Table, &grant),
    })
}

/// GET /api/v1/sources
#[utoipa::path(get, path = "/api/v1/sources", tag = "objects",
    responses((status = 200, description = "Every source with its figures", body = SourceList)))]
async fn list_sources(
    State(state): State<AppState>,
    grant: Option<Extension<Grant>>,
) -> axum::Json<SourceList> {
    axum::Json(SourceList {
        sources: objects_of(&state, ObjectKind::Source, &grant),
    })
}

/// GET /api/v1/views
#[utoipa::path(get, path = "/api/v1/views", tag = "objects",
    responses((status = 200, description = "Every materialized view with its figures", body = ViewList)))]
async fn list_views(
    State(state): State<AppState>,
    grant: Option<Extension<Grant>>,
) -> axum::Json<ViewList> {
    axum::Json(ViewList {
        views: objects_of(&state, ObjectKind::View, &grant),
    })
}

/// GET /api/v1/sinks
#[utoipa::path(get, path = "/api/v1/sinks", tag = "objects",
    responses((status = 200, description = "Every sink with its figures", body = SinkList)))]
async fn list_sinks(
    State(state): State<AppState>,
    grant: Option<Extension<Grant>>,
) -> axum::Json<SinkList> {
    axum::Json(SinkList {
        sinks: objects_of(&state, ObjectKind::Sink, &grant),
    })
}

fn find(state: &AppState, kind: ObjectKind, name: &str) -> Result<ObjectInfo, ApiError> {
    state
        .catalog
        .get(name)
        .filter(|o| o.kind == kind)
        .ok_or_else(|| ApiError::not_found(format!("there is no {} '{name}'", kind.noun())))
}

fn get_one(state: &AppState, kind: ObjectKind, name: &str) -> Result<axum::Json<Object>, ApiError> {
    find(state, kind, name).map(|o| axum::Json(object(&o)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Dropped {
    pub dropped: StatementOut,
}

async fn drop_one(
    state: &AppState,
    kind: ObjectKind,
    name: &str,
) -> Result<axum::Json<Dropped>, ApiError> {
    find(state, kind, name)?;
    let keyword = match kind {
        ObjectKind::Source => "SOURCE",
        ObjectKind::View => "MATERIALIZED VIEW",
        ObjectKind::Sink => "SINK",
        ObjectKind::Table => "TABLE",
    };
    let sql = format!("DROP {keyword} \"{}\"", name.replace('"', "\"\""));
    let mut results = apply(state, sql).await?;
    let dropped = results
        .pop()
        .ok_or_else(|| ApiError::internal(state, "DROP returned no result"))?;
    Ok(axum::Json(Dropped { dropped }))
}

macro_rules! object_routes {
    ($get:ident, $delete:ident, $kind:expr, $path:literal, $noun:literal) => {
        #[doc = concat!("GET ", $path, ": one ", $noun, " with its figures.")]
        #[utoipa::path(get, path = $path, tag = "objects",
            params(("name" = String, Path, description = "The object's name")),
            responses((status = 200, description = "Found", body = Object),
                      (status = 404, description = "No such object", body = ErrorBody)))]
        async fn $get(
            State(state): State<AppState>,
            Path(name): Path<String>,
        ) -> Result<axum::Json<Object>, ApiError> {
            get_one(&state, $kind, &name)
        }

        #[doc = concat!("DELETE ", $path, ": drop the ", $noun, "; 409 naming the dependents if others read it.")]
        #[utoipa::path(delete, path = $path, tag = "objects",
            params(("name" = String, Path, description = "The object's name")),
            responses((status = 200, description = "Dropped", body = Dropped),
                      (status = 404, description = "No such object", body = ErrorBody),
                      (status = 409, description = "Others depend on it", body = ErrorBody)))]
        async fn $delete(
            State(state): State<AppState>,
            Path(name): Path<String>,
        ) -> Result<axum::Json<Dropped>, ApiError> {
            drop_one(&state, $kind, &name).await
        }
    };
}

object_routes!(
    get_source,
    delete_source,
    ObjectKind::Source,
    "/api/v1/sources/{name}",
    "source"
);
object_routes!(
    get_view,
    delete_view,
    ObjectKind::View,
    "/api/v1/views/{name}",
    "materialized view"
);
object_routes!(
    get_sink,
    delete_sink,
    ObjectKind::Sink,
    "/api/v1/sinks/{name}",
    "sink"
);
object_routes!(
    get_table,
    delete_table,
    ObjectKind::Table,
    "/api/v1/tables/{name}",
    "table"
);

#[derive(Debug, Deserialize, IntoParams)]
pub struct RowsParams {
    /// At most this many rows (default 100, at most server.max_result_rows; an updating
    /// view returns at least 1).
    pub limit: Option<usize>,
    /// Only rows with a greater seq: the oldest of them first, for paging forward.
    /// Without it, the newest rows (an updating view: its current rows).
    pub since_seq: Option<u64>,
    /// Only rows whose time (`window_start`, else the first timestamp column) is at or
    /// after this RFC 3339 time.
    pub since: Option<String>,
    /// `latest`: only the rows of the latest window retained (the greatest `window_start`).
    pub window: Option<String>,
    /// Order by this column, descending with a leading `-` (`-n`); ties by seq. With it,
    /// `limit` keeps the first rows in this order ("the top 5").
    pub order: Option<String>,
}

/// The rows of an append-only view.
#[derive(Debug, Serialize, ToSchema)]
pub struct RowsResponse {
    pub columns: Vec<String>,
    /// Oldest first; row i has seq first_seq + i.
    pub rows: Vec<serde_json::Value>,
    /// The seq of the first row returned; null when none is.
    pub first_seq: Option<u64>,
    /// The seq of the last row returned, or, when none is, of the newest row the view
    /// has emitted.
    pub last_seq: u64,
}

/// The rows of an updating view: its current rows (`reset` true), or the changes after
/// `since_seq`, to apply by `key` in order: an `insert` puts the row in place of the
/// key's row, a `delete` removes the key's row.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChangesResponse {
    pub columns: Vec<String>,
    /// The columns that identify a row (none: a global aggregate's one row).
    pub key: Vec<String>,
    /// True when the rows are the view's current rows, to replace what the reader has:
    /// without `since_seq`, or when the changes after it are no longer all kept.
    pub reset: bool,
    /// Oldest change first. A deleted row has its key columns set and may have the
    /// others null.
    pub rows: Vec<serde_json::Value>,
    /// Each row's op, `insert` or `delete`.
    pub ops: Vec<String>,
    /// Each row's seq, ascending: the change that made it (seqs of changes superseded by
    /// a later change of the same key are skipped).
    pub seqs: Vec<u64>,
    /// Where to page on from (`since_seq`): the seq of the last row when `limit` cut the
    /// page, else of the newest change the view has made.
    pub last_seq: u64,
}

/// What `GET .../rows` returns, by the view's kind (for the OpenAPI document: the handler
/// writes the JSON itself).
#[allow(dead_code)]
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ViewRows {
    Appended(RowsResponse),
    Updating(ChangesResponse),
}

/// GET /api/v1/views/{name}/rows: the view's retained rows with their seqs; an updating
/// view's current rows by key, or its changes after `since_seq`.
#[utoipa::path(get, path = "/api/v1/views/{name}/rows", tag = "rows",
    params(("name" = String, Path, description = "The view"), RowsParams),
    responses((status = 200, description = "Rows, oldest first: RowsResponse for an append-only view, ChangesResponse for an updating view", body = ViewRows),
              (status = 404, description = "No such view", body = ErrorBody)))]
async fn view_rows(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<RowsParams>,
) -> Result<Response, ApiError> {
    let o = find(&state, ObjectKind::View, &name)?;
    let buffer = o
        .buffer
        .as_ref()
        .ok_or_else(|| ApiError::internal(&state, "view without buffer"))?;
    let limit = params
        .limit
        .unwrap_or(100)
        .min(state.settings.max_result_rows);
    let columns: Vec<String> = buffer
        .schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mut out = b"{\"columns\":".to_vec();
    out.extend(json_bytes(&columns));
    if buffer.is_keyed() {
        if params.since.is_some() || params.window.is_some() || params.order.is_some() {
            return Err(ApiError::bad_request(format!(
                "view '{name}' is an updating view: its rows are read by key and seq \
                 (since_seq, limit); since, window and order are for append-only views"
            )));
        }
        changes_page(&state, &o, buffer, params.since_seq, limit.max(1), &mut out)?;
        return Ok(RawJson(out).into_response());
    }
    if params.since.is_some() || params.window.is_some() || params.order.is_some() {
        let (rows, seqs, newest) = selected_rows(buffer, &params, limit)?;
        out.extend_from_slice(b",\"rows\":[");
        write_rows(std::slice::from_ref(&rows), &mut out, true);
        out.extend_from_slice(b"],\"seqs\":");
        out.extend(json_bytes(&seqs));
        let first = seqs.iter().min().copied();
        let last = seqs.iter().max().copied().unwrap_or(newest);
        out.extend_from_slice(b",\"first_seq\":");
        out.extend(json_bytes(&first));
        out.extend_from_slice(format!(",\"last_seq\":{last}}}").as_bytes());
        return Ok(RawJson(out).into_response());
    }
    // Only the page is copied out of the view's buffer, not every retained batch.
    let (first_seq, rows, newest) = buffer.page(params.since_seq, limit);
    let n: usize = rows.iter().map(|b| b.num_rows()).sum();
    let (first_seq, last_seq) = match first_seq {
        Some(f) if n > 0 => (Some(f), f + n as u64 - 1),
        _ => (None, newest),
    };
    out.extend_from_slice(b",\"rows\":[");
    write_rows(&rows, &mut out, true);
    out.extend_from_slice(b"],\"first_seq\":");
    out.extend(json_bytes(&first_seq));
    out.extend_from_slice(format!(",\"last_seq\":{last_seq}}}").as_bytes());
    Ok(RawJson(out).into_response())
}

/// The retained rows `since`, `window` and `order` select (after `since_seq`), at most
/// `limit`: with `order` the first in that order, else the newest in seq order. The rows,
/// their seqs, and the newest seq the view has emitted.
fn selected_rows(
    buffer: &ViewBuffer,
    params: &RowsParams,
    limit: usize,
) -> Result<(RecordBatch, Vec<u64>, u64), ApiError> {
    use datafusion::arrow::array::{AsArray, BooleanArray, UInt32Array, UInt64Array};
    use datafusion::arrow::compute::kernels::cmp::{eq, gt_eq};
    use datafusion::arrow::compute::{
        SortColumn, SortOptions, cast, concat_batches, filter_record_batch, lexsort_to_indices,
        take_record_batch,
    };
    use datafusion::arrow::datatypes::{DataType, TimeUnit, TimestampMillisecondType};
    let schema = buffer.schema.clone();
    let (first, batches, newest) = buffer.page(Some(params.since_seq.unwrap_or(0)), usize::MAX);
    let mut rows =
        concat_batches(&schema, &batches).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let first = first.unwrap_or(0);
    let mut seqs = UInt64Array::from_iter_values((0..rows.num_rows() as u64).map(|i| first + i));
    let arrow = |e: datafusion::arrow::error::ArrowError| ApiError::bad_request(e.to_string());
    let time_col = schema.index_of("window_start").ok().or_else(|| {
        schema
            .fields()
            .iter()
            .position(|f| matches!(f.data_type(), DataType::Timestamp(..)))
    });
    let keep = |mask: BooleanArray, rows: &mut RecordBatch, seqs: &mut UInt64Array| {
        *rows = filter_record_batch(rows, &mask).map_err(arrow)?;
        *seqs = datafusion::arrow::compute::filter(seqs, &mask)
            .map_err(arrow)?
            .as_primitive()
            .clone();
        Ok::<(), ApiError>(())
    };
    let millis = |rows: &RecordBatch, i: usize| -> Result<_, ApiError> {
        let c = cast(
            rows.column(i),
            &DataType::Timestamp(TimeUnit::Millisecond, None),
        )
        .map_err(arrow)?;
        Ok(c.as_primitive::<TimestampMillisecondType>().clone())
    };
    if let Some(since) = &params.since {
        let Some(i) = time_col else {
            return Err(ApiError::bad_request(
                "since: the view has no timestamp column",
            ));
        };
        let at = chrono::DateTime::parse_from_rfc3339(since)
            .map_err(|e| {
                ApiError::bad_request(format!("since '{since}': not an RFC 3339 time ({e})"))
            })?
            .timestamp_millis();
        let t = millis(&rows, i)?;
        let bound = datafusion::arrow::array::TimestampMillisecondArray::new_scalar(at);
        keep(gt_eq(&t, &bound).map_err(arrow)?, &mut rows, &mut seqs)?;
    }
    match params.window.as_deref() {
        None => {}
        Some("latest") => {
            let i = schema.index_of("window_start").map_err(|_| {
                ApiError::bad_request("window=latest: the view has no window_start column")
            })?;
            let t = millis(&rows, i)?;
            if let Some(max) = datafusion::arrow::compute::max(&t) {
                let bound = datafusion::arrow::array::TimestampMillisecondArray::new_scalar(max);
                keep(eq(&t, &bound).map_err(arrow)?, &mut rows, &mut seqs)?;
            }
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "window '{other}': the one choice is 'latest'"
            )));
        }
    }
    let n = rows.num_rows();
    let picked: Vec<u32> = match &params.order {
        Some(order) => {
            let (descending, col) = match order.strip_prefix('-') {
                Some(c) => (true, c),
                None => (false, order.as_str()),
            };
            let i = schema.index_of(col).map_err(|_| {
                ApiError::bad_request(format!("order: '{col}' is not a column of the view"))
            })?;
            let sorted = lexsort_to_indices(
                &[
                    SortColumn {
                        values: rows.column(i).clone(),
                        options: Some(SortOptions {
                            descending,
                            nulls_first: false,
                        }),
                    },
                    SortColumn {
                        values: std::sync::Arc::new(seqs.clone()),
                        options: None,
                    },
                ],
                Some(limit),
            )
            .map_err(arrow)?;
            sorted.values().to_vec()
        }
        None => (n.saturating_sub(limit) as u32..n as u32).collect(),
    };
    let indices = UInt32Array::from(picked);
    let rows = take_record_batch(&rows, &indices).map_err(arrow)?;
    let seqs: Vec<u64> = indices
        .values()
        .iter()
        .map(|&i| seqs.value(i as usize))
        .collect();
    Ok((rows, seqs, newest))
}

/// The rest of a [`ChangesResponse`] after `columns`: at most `limit` (at least 1) rows.
fn changes_page(
    state: &AppState,
    o: &ObjectInfo,
    buffer: &ViewBuffer,
    since_seq: Option<u64>,
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), ApiError> {
    // One row more than asked says whether the page was cut.
    let mut page = buffer
        .keyed_page(since_seq, limit.saturating_add(1))
        .ok_or_else(|| ApiError::internal(state, "an updating view without its rows by key"))?
        .map_err(|e| ApiError::internal(state, e))?;
    let mut last_seq = page.last_seq;
    if page.seqs.len() > limit {
        page.seqs.truncate(limit);
        page.rows = page.rows.slice(0, limit);
        last_seq = page.seqs.last().copied().unwrap_or(last_seq);
    }
    out.extend_from_slice(b",\"key\":");
    out.extend(json_bytes(&o.key));
    out.extend_from_slice(format!(",\"reset\":{},", page.reset).as_bytes());
    write_changes(&page.rows, &page.seqs, out).map_err(|e| ApiError::internal(state, e))?;
    out.extend_from_slice(format!(",\"last_seq\":{last_seq}}}").as_bytes());
    Ok(())
}
