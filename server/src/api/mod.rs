//! The HTTP and WebSocket API (../shared/design/API.md) and the dashboard, served by
//! axum inside `weir run`.
//!
//! Reads (lists, rows, ad-hoc queries, subscriptions, metrics) go to the pipeline's
//! [`CatalogHandle`] and the views' buffers directly, never through the driver task, so serving
//! cannot slow the pipeline down. Changes (POST /api/v1/sql, DELETE) go to the driver
//! through a [`Controller`] and are applied between micro-batches, exactly as the SQL files
//! are at start-up, then journaled in the state directory so they survive a restart.

mod ingest;
pub mod json;
mod messages;
mod metrics;
mod rooms;
mod routes;
pub mod tls;
mod types;
mod ws;

use crate::state::StateDir;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use weir_engine::catalog::CatalogHandle;
use weir_engine::runtime::Controller;

/// A token's rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// GET, subscribe, and SELECT over retained rows (`POST /api/v1/query`).
    Read,
    /// Read, and send events to `http` sources.
    Write,
    /// Everything: statements, drops, the cluster and the metrics.
    Admin,
}

/// The objects a token may use: every one, or those whose name is one of the patterns
/// (a name, or a prefix ending in `*`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scope(Option<Vec<String>>);

impl Scope {
    /// Every object.
    pub fn all() -> Scope {
        Scope(None)
    }

    /// The objects `patterns` name (`*` alone: every object).
    pub fn of(patterns: &[String]) -> Scope {
        if patterns.is_empty() || patterns.iter().any(|p| p == "*") {
            return Scope(None);
        }
        Scope(Some(patterns.iter().map(|p| p.to_lowercase()).collect()))
    }

    pub fn is_all(&self) -> bool {
        self.0.is_none()
    }

    /// Whether the object `name` is in scope (names are matched case-insensitively, as SQL
    /// identifiers are).
    pub fn allows(&self, name: &str) -> bool {
        let Some(patterns) = &self.0 else {
            return true;
        };
        let name = name.to_lowercase();
        patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => *p == name,
        })
    }
}

/// A configured API token.
#[derive(Debug, Clone)]
pub struct ApiToken {
    pub secret: String,
    pub role: Role,
    pub scope: Scope,
}

/// What the request's token may do; in the request's extensions when tokens are
/// configured (without tokens, everything is allowed and there is none).
#[derive(Debug, Clone)]
pub struct Grant {
    pub role: Role,
    pub scope: Scope,
}

impl Grant {
    /// Whether the request may see object `name` (no grant: no tokens, every object).
    pub fn allows(grant: &Option<axum::Extension<Grant>>, name: &str) -> bool {
        grant.as_ref().is_none_or(|g| g.scope.allows(name))
    }
}

/// The server's settings (`[server]` in weir.toml).
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub tokens: Vec<ApiToken>,
    /// Origins allowed to call the API from a browser (`*` for any); empty: same origin only.
    pub cors_origins: Vec<String>,
    pub max_body_bytes: usize,
    pub max_sql_bytes: usize,
    /// Largest message a WebSocket client may send.
    pub ws_max_message_bytes: usize,
    /// A WebSocket client that does not take a message within this long is dropped.
    pub ws_send_timeout: Duration,
    /// A request that takes longer gets 408.
    pub request_timeout: Duration,
    /// A connection that has not sent a whole request head (request line and headers)
    /// within this long is closed: slow-header clients hold nothing for long.
    pub header_read_timeout: Duration,
    /// Most rows one GET .../rows or POST /api/v1/query returns.
    pub max_result_rows: usize,
    /// How often `/api/v1/status/subscribe` pushes figures.
    pub status_interval: Duration,
    /// Open WebSocket subscriptions at most, in all and from one client address.
    pub ws_max_subscribers: usize,
    pub ws_max_subscribers_per_client: usize,
    /// The bounds of `POST /api/v1/query` (the `[engine]` query limits).
    pub query_limits: weir_engine::adhoc::QueryLimits,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            tokens: vec![],
            cors_origins: vec![],
            max_body_bytes: 1 << 20,
            max_sql_bytes: 256 << 10,
            ws_max_message_bytes: 64 << 10,
            ws_send_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            max_result_rows: 10_000,
            status_interval: Duration::from_secs(1),
            ws_max_subscribers: 10_000,
            ws_max_subscribers_per_client: 256,
            query_limits: weir_engine::adhoc::QueryLimits::default(),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub catalog: CatalogHandle,
    pub controller: Controller,
    pub settings: Arc<ApiSettings>,
    pub state: Arc<StateDir>,
    /// Flips to true when the process is stopping: subscriptions close.
    pub stopping: watch::Receiver<bool>,
    /// JSON of emitted batches shared by a view's subscribers.
    pub encoded: ws::EncodedBatches,
    /// Filtered subscriptions, routed per view.
    pub rooms: rooms::Rooms,
    /// The `http` sources, which take events at `POST /api/v1/sources/{name}/events`.
    pub endpoints: weir_connectors::http::Endpoints,
    /// Subscribers dropped for being slow: `[fell behind the queue, did not take a message
    /// in time]`.
    pub dropped_subscribers: Arc<[AtomicU64; 2]>,
    errors: Arc<AtomicU64>,
    /// A cluster member's description of the cluster (`GET /api/v1/cluster`); blocking.
    pub cluster: Option<ClusterInfo>,
    /// Open WebSocket subscriptions, within the settings' limits.
    pub subscribers: Arc<parking_lot::Mutex<ws::Subscribers>>,
}

/// The address a connection comes from: axum's `ConnectInfo`, which [`serve`] puts into
/// every request's extensions, for plain and TLS listeners alike.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// What `GET /api/v1/cluster` answers with on a cluster member (blocking: it asks Kafka).
pub type ClusterInfo = Arc<dyn Fn() -> anyhow::Result<serde_json::Value> + Send + Sync>;

impl AppState {
    pub fn new(
        catalog: CatalogHandle,
        controller: Controller,
        settings: ApiSettings,
        state: Arc<StateDir>,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        AppState {
            catalog,
            controller,
            settings: Arc::new(settings),
            state,
            stopping,
            encoded: ws::EncodedBatches::default(),
            rooms: rooms::Rooms::default(),
            endpoints: Default::default(),
            dropped_subscribers: Arc::new([AtomicU64::new(0), AtomicU64::new(0)]),
            errors: Arc::new(AtomicU64::new(0)),
            cluster: None,
            subscribers: Default::default(),
        }
    }

    /// Where the pipeline's `http` sources take events.
    pub fn with_endpoints(mut self, endpoints: weir_connectors::http::Endpoints) -> Self {
        self.endpoints = endpoints;
        self
    }

    /// On a cluster member: how `GET /api/v1/cluster` describes the cluster.
    pub fn with_cluster(mut self, info: ClusterInfo) -> Self {
        self.cluster = Some(info);
        self
    }
}

/// An error response: `{"error": {"code", "message", ...}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: serde_json::Value,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: serde_json::json!({"error": {"code": code, "message": message.into()}}),
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// Add fields to the error object.
    pub fn with(mut self, key: &str, value: serde_json::Value) -> Self {
        if let Some(e) = self.body.get_mut("error").and_then(|e| e.as_object_mut()) {
            e.insert(key.to_string(), value);
        }
        self
    }

    /// Add a top-level field beside `error`.
    pub fn beside(mut self, key: &str, value: serde_json::Value) -> Self {
        if let Some(o) = self.body.as_object_mut() {
            o.insert(key.to_string(), value);
        }
        self
    }

    /// A failure of ours: the detail goes to the log under an id, the caller gets the id.
    pub fn internal(state: &AppState, detail: impl std::fmt::Display) -> Self {
        let id = state.errors.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::error!(error_id = id, "request failed: {detail}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error (id {id}); the detail is in the server log"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

/// A JSON body that is already serialized.
pub struct RawJson(pub Vec<u8>);

impl IntoResponse for RawJson {
    fn into_response(self) -> Response {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.0,
        )
            .into_response()
    }
}

fn json_bytes<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_else(|_| b"null".to_vec())
}

/// Paths anyone may GET: liveness, the dashboard and API docs pages and their static
/// files (they hold no data; the pages ask for a token when the API answers 401). The
/// OpenAPI document the docs page shows is an API route like the others: with tokens
/// configured it needs one (any role).
fn is_public(path: &str) -> bool {
    path == "/health" || path == "/" || path == "/docs" || path.starts_with("/assets/")
}

/// Where the OpenAPI document is served (the docs page at `/docs` loads it).
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of a request: `Authorization: Bearer <token>`, or `?token=` (for WebSocket
/// clients and the dashboard, which cannot always set headers).
fn request_token(req: &Request) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION)
        && let Ok(v) = v.to_str()
        && let Some(t) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
    {
        return Some(t.trim().to_string());
    }
    let query = req.uri().query()?;
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v)
}

async fn auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.settings.tokens.is_empty() || is_public(req.uri().path()) {
        return next.run(req).await;
    }
    let path = req.uri().path().to_string();
    let needed = needed_role(req.method(), &path);
    let Some(token) = request_token(&req) else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this server needs a token: send Authorization: Bearer <token> (or ?token=)",
        )
        .into_response();
    };
    // Every token is compared (in constant time), so the time taken does not tell which
    // matched; the first match counts.
    let mut found = None;
    for t in &state.settings.tokens {
        if constant_time_eq(t.secret.as_bytes(), token.as_bytes()) && found.is_none() {
            found = Some(t);
        }
    }
    let Some(t) = found else {
        return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown token")
            .into_response();
    };
    let forbidden =
        |m: String| ApiError::new(StatusCode::FORBIDDEN, "forbidden", m).into_response();
    if t.role < needed {
        return forbidden(match t.role {
            Role::Read => "this token may only read (GET, subscribe and POST /api/v1/query); \
                           changes need an admin token"
                .into(),
            _ => "this needs an admin token".into(),
        });
    }
    // An object out of scope gets the same answer whether it exists or not.
    if let Some(name) = object_in_path(&path)
        && !t.scope.allows(&name)
    {
        return forbidden(format!("this token may not use '{name}'"));
    }
    if !t.scope.is_all() && whole_server(&path) {
        return forbidden(format!(
            "{path} concerns every object; this token is limited to some (its objects)"
        ));
    }
    let mut req = req;
    req.extensions_mut().insert(Grant {
        role: t.role,
        scope: t.scope.clone(),
    });
    next.run(req).await
}

/// The role a request needs: reads (and SELECTs over retained rows) need read, events sent
/// to a source need write, anything else admin.
fn needed_role(method: &Method, path: &str) -> Role {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) || path == "/api/v1/query" {
        Role::Read
    } else if method == Method::POST
        && path.starts_with("/api/v1/sources/")
        && path.ends_with("/events")
    {
        Role::Write
    } else {
        Role::Admin
    }
}

/// The object a path names: `/api/v1/{views,sources,sinks,tables}/{name}[/...]`.
fn object_in_path(path: &str) -> Option<String> {
    let mut parts = path.strip_prefix("/api/v1/")?.split('/');
    let kind = parts.next()?;
    let name = parts.next().filter(|n| !n.is_empty())?;
    matches!(kind, "views" | "sources" | "sinks" | "tables").then(|| {
        percent_encoding::percent_decode_str(name)
            .decode_utf8_lossy()
            .to_string()
    })
}

/// Routes about every object at once, which a token limited to some may not use:
/// statements, the cluster, the metrics.
fn whole_server(path: &str) -> bool {
    path == "/api/v1/sql" || path == "/api/v1/cluster" || path == "/metrics"
}

/// The `code` of an error response produced below the handlers, by its status.
fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::CONFLICT => "conflict",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    }
}

/// Every error is `{"error": {"code", "message"}}`, also those produced below the
/// handlers: axum's rejections of a path, query string or body (400, and 413 past
/// `max_body_bytes`), 405 for a method a route does not take, the request timeout's 408.
/// A 4xx keeps its text as the message (it is about the request) and its other headers
/// (405's `Allow`); a 5xx (a panic, a layer) carries no detail.
async fn json_errors(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v == "application/json");
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let message = if status.is_server_error() {
        "internal error".to_string()
    } else {
        // These bodies are short texts; one past the bound is not shown.
        let text = axum::body::to_bytes(body, 4096)
            .await
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .unwrap_or_default();
        match text.is_empty() {
            true => status.canonical_reason().unwrap_or("error").to_lowercase(),
            false => text,
        }
    };
    let (json, body) = ApiError::new(status, code_for(status), message)
        .into_response()
        .into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    if let Some(t) = json.headers.get(header::CONTENT_TYPE) {
        parts.headers.insert(header::CONTENT_TYPE, t.clone());
    }
    Response::from_parts(parts, body)
}

/// The whole application: API routes with their OpenAPI document, the dashboard, auth,
/// limits and CORS.
pub fn app(state: AppState) -> Router {
    let (api, openapi) = routes::router().split_for_parts();
    let openapi = Arc::new(openapi);
    let settings = state.settings.clone();
    let mut router = api
        .route(
            OPENAPI_PATH,
            axum::routing::get(move || {
                let doc = openapi.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .merge(crate::dashboard::router())
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .layer(axum::extract::DefaultBodyLimit::max(
            settings.max_body_bytes,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            settings.request_timeout,
        ))
        .layer(axum::middleware::from_fn(json_errors))
        .with_state(state);
    if !settings.cors_origins.is_empty() {
        use tower_http::cors::{AllowOrigin, Any, CorsLayer};
        let cors = if settings.cors_origins.iter().any(|o| o == "*") {
            CorsLayer::new().allow_origin(Any)
        } else {
            CorsLayer::new().allow_origin(AllowOrigin::list(
                settings
                    .cors_origins
                    .iter()
                    .filter_map(|o| HeaderValue::from_str(o).ok()),
            ))
        };
        router = router.layer(
            cors.allow_methods([Method::GET, Method::POST, Method::DELETE])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]),
        );
    }
    router
}

/// The OpenAPI document of the API routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes::router().split_for_parts().1
}

/// Bind the listener. With no tokens configured the server only listens on loopback.
pub async fn bind(listen: &str, settings: &ApiSettings) -> anyhow::Result<tokio::net::TcpListener> {
    let mut addr: SocketAddr = tokio::net::lookup_host(listen)
        .await
        .map_err(|e| anyhow::anyhow!("server.listen '{listen}': {e}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("server.listen '{listen}' resolves to no address"))?;
    if settings.tokens.is_empty() && !addr.ip().is_loopback() {
        tracing::warn!(
            "no API tokens are configured, so the server listens on 127.0.0.1 only instead of \
             {addr}; configure [server] admin_tokens / read_tokens to serve other hosts"
        );
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

/// Serve until `stopping` flips, then stop accepting and close subscriptions; the caller
/// bounds how long open requests may take to finish. With `tls`, over HTTPS and WSS.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    state: AppState,
) -> anyhow::Result<()> {
    let mut stopping = state.stopping.clone();
    let header_read_timeout = state.settings.header_read_timeout;
    let sampler = tokio::spawn(metrics::sample_rates(state.catalog.clone()));
    let app = app(state);
    let stop = async move {
        let _ = stopping.wait_for(|s| *s).await;
    };
    match tls {
        Some(config) => {
            let listener = tls::TlsListener::new(listener, config)?;
            serve_connections(listener, app, header_read_timeout, stop).await
        }
        None => serve_connections(listener, app, header_read_timeout, stop).await,
    }
    sampler.abort();
    Ok(())
}

/// Serve `app` over HTTP/1.1 (with upgrades, for WebSockets) on every connection
/// `listener` accepts, each on a task of its own, until `stop` resolves; then stop
/// accepting, ask every connection to finish the request it is serving and close, and
/// wait for them all.
///
/// This is `axum::serve` with hyper's connection builder set up by hand, for what
/// `axum::serve` does not expose: a client that has not sent a whole request head within
/// `header_read_timeout` (slowloris; an idle keep-alive connection too) is closed.
async fn serve_connections<L>(
    mut listener: L,
    app: Router,
    header_read_timeout: Duration,
    stop: impl Future<Output = ()>,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    // Flips to true to tell connections to finish; each holds a receiver of `open` while it
    // lives, so `open_tx.closed()` resolves when the last one is gone.
    let (finish_tx, finish_rx) = watch::channel(false);
    let (open_tx, open_rx) = watch::channel(());
    let mut stop = std::pin::pin!(stop);
    loop {
        let (io, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        let app = app.clone();
        // The client's address, as axum's ConnectInfo (per-client subscriber limits).
        let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(ClientAddr(addr)));
            tower::ServiceExt::oneshot(app.clone(), req.map(axum::body::Body::new))
        });
        let (mut finish, open) = (finish_rx.clone(), open_rx.clone());
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_read_timeout);
            let conn = http
                .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%addr, error = %e, "connection ended");
                    }
                }
                // Told to finish, or the server is gone: end after the current request.
                () = async {
                    let _ = finish.wait_for(|f| *f).await;
                } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(open);
        });
    }
    drop(listener);
    let _ = finish_tx.send(true);
    drop(open_rx);
    open_tx.closed().await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    async fn body_text(res: Response) -> String {
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn server_errors_carry_no_detail() {
        // A 5xx produced outside our error type (a layer, a panic handler) is replaced.
        let app = Router::new()
            .route(
                "/boom",
                axum::routing::get(|| async {
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "secret detail: /etc/weir/password",
                    )
                }),
            )
            .layer(axum::middleware::from_fn(json_errors));
        let res = app
            .oneshot(Request::builder().uri("/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let text = body_text(res).await;
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("\"code\":\"internal\""), "{text}");
    }

    /// axum's own rejections (a bad path, query string or body, a method the route does
    /// not take, a body past the limit) are `{"error": ...}` like the handlers' errors.
    #[tokio::test]
    async fn rejections_below_the_handlers_are_json_errors() {
        #[derive(serde::Deserialize)]
        struct Limit {
            #[allow(dead_code)]
            limit: Option<usize>,
        }
        let app = Router::new()
            .route(
                "/items/{id}",
                axum::routing::get(
                    |axum::extract::Path(_id): axum::extract::Path<u32>,
                     axum::extract::Query(_q): axum::extract::Query<Limit>| async {
                        "ok"
                    },
                )
                .post(|_body: String| async { "ok" }),
            )
            .layer(axum::extract::DefaultBodyLimit::max(10))
            .layer(axum::middleware::from_fn(json_errors));
        let call = |method: &str, uri: &str, body: &'static str| {
            let req = Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::from(body))
                .unwrap();
            app.clone().oneshot(req)
        };
        for (method, uri, body, status, code) in [
            ("PUT", "/items/1", "", 405, "method_not_allowed"),
            ("GET", "/items/abc", "", 400, "bad_request"),
            ("GET", "/items/%FF", "", 400, "bad_request"),
            ("GET", "/items/1?limit=x", "", 400, "bad_request"),
            (
                "POST",
                "/items/1",
                "far more than ten bytes",
                413,
                "too_large",
            ),
        ] {
            let res = call(method, uri, body).await.unwrap();
            assert_eq!(res.status().as_u16(), status, "{method} {uri}");
            assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
            if status == 405 {
                assert!(res.headers().contains_key(header::ALLOW), "405 keeps Allow");
            }
            let v: serde_json::Value = serde_json::from_str(&body_text(res).await).unwrap();
            assert_eq!(v["error"]["code"], code, "{method} {uri}: {v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{v}"
            );
        }
        let res = call("GET", "/items/1?limit=2", "").await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(body_text(res).await, "ok");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(is_public("/health") && is_public("/assets/app.js") && !is_public("/metrics"));
        assert!(is_public("/docs") && !is_public(OPENAPI_PATH) && !is_public("/docs/x"));
    }
}
