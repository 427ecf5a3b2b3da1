//! WebSocket subscriptions: a view's rows as they are emitted, and live figures.
//!
//! A view subscriber first subscribes to the view's fan-out channel, then reads the
//! retained rows, then forwards live batches, skipping any it already sent by seq: no gap,
//! no duplicate. An updating view's subscriber reads its current rows by key (or the
//! changes after `since_seq`) instead, and every message carries each row's op and seq. Each emitted batch is encoded to JSON once, by the first subscriber that
//! sends it, and shared by the rest through the server's [`EncodedBatches`] cache. The
//! fan-out channel holds
//! [`SUBSCRIBER_QUEUE_BATCHES`] batches: a subscriber further behind than that, or one
//! whose socket does not take a message within `server.ws_send_timeout`, is sent an error
//! message and closed (it may reconnect with `since_seq`), so slow clients cost bounded
//! memory and never slow the pipeline.

use super::json::rfc3339_ms;
use super::messages::{filtered_first, filtered_live, first_message, live_message, text};
use super::rooms::{Ended, Filter, Membership};
use super::types::{ErrorBody, Object, object};
use super::{ApiError, AppState, ClientAddr, Grant};
use axum::Extension;
use axum::extract::ConnectInfo;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, RawQuery, State};
use axum::response::Response;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use utoipa::{IntoParams, ToSchema};
use weir_engine::serving::{Emitted, SUBSCRIBER_QUEUE_BATCHES, ViewBuffer, ViewEvent};
use weir_engine::sql::ObjectKind;

#[derive(Debug, Deserialize, IntoParams)]
pub struct SubscribeParams {
    /// Resume: skip the snapshot and send every retained row with a greater seq first (an
    /// updating view: the latest change of each key changed after it, or its current rows
    /// as a snapshot when those changes are no longer all kept).
    pub since_seq: Option<u64>,
    /// The API token, for clients that cannot set an Authorization header (read by the
    /// auth layer; here for the OpenAPI document).
    #[allow(dead_code)]
    pub token: Option<String>,
    /// A filter on a key column, `key.<column>=<value>`, repeated for more values or
    /// columns: only rows whose column holds one of its values (every column filtered)
    /// come. Text, integer and boolean columns; an updating view's key columns only.
    #[serde(rename = "key.<column>")]
    #[allow(dead_code)]
    pub key: Option<String>,
}

/// The `key.<column>=<value>` pairs of a query string, by column in order of appearance.
pub fn key_params(query: Option<&str>) -> Result<Vec<(String, Vec<String>)>, ApiError> {
    let Some(query) = query else {
        return Ok(vec![]);
    };
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::bad_request(format!("the query string does not parse: {e}")))?;
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for (k, v) in pairs {
        let Some(col) = k.strip_prefix("key.") else {
            continue;
        };
        match out.iter_mut().find(|(c, _)| c == col) {
            Some((_, vs)) => vs.push(v),
            None => out.push((col.to_string(), vec![v])),
        }
    }
    Ok(out)
}

/// The filter of `wanted` over a view's `buffer`.
fn view_filter(buffer: &ViewBuffer, wanted: &[(String, Vec<String>)]) -> Result<Filter, String> {
    Filter::new(&buffer.schema, buffer.key_columns().as_deref(), wanted)
}

/// A message from a subscriber: change the filter (`keys` an object of column to values,
/// or `null` for every row).
#[derive(Debug, Deserialize, ToSchema)]
pub struct ClientMessage {
    /// subscribe
    #[serde(rename = "type")]
    pub kind: String,
    /// The new filter: `{"symbol": ["AAPL", "MSFT"]}`; `null` or absent for every row.
    #[serde(default)]
    pub keys: Option<std::collections::BTreeMap<String, Vec<serde_json::Value>>>,
}

/// The filter a client message asks for (`None`: every row), or why it is refused.
fn client_filter(buffer: &ViewBuffer, text: &str) -> Result<Option<Filter>, String> {
    let m: ClientMessage = serde_json::from_str(text).map_err(|e| {
        format!("a message must be {{\"type\":\"subscribe\",\"keys\":{{...}}}}: {e}")
    })?;
    if m.kind != "subscribe" {
        return Err(format!(
            "unknown message type '{}'; the one there is: subscribe",
            m.kind
        ));
    }
    let Some(keys) = m.keys else {
        return Ok(None);
    };
    let wanted = keys
        .into_iter()
        .map(|(c, vs)| {
            let vs = vs
                .into_iter()
                .map(|v| match v {
                    serde_json::Value::String(s) => Ok(s),
                    serde_json::Value::Number(n) => Ok(n.to_string()),
                    serde_json::Value::Bool(b) => Ok(b.to_string()),
                    other => Err(format!("{c}: {other} is not a key value")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((c, vs))
        })
        .collect::<Result<Vec<_>, String>>()?;
    if wanted.is_empty() {
        return Ok(None);
    }
    view_filter(buffer, &wanted).map(Some)
}

/// A message on a view subscription (one of the shapes, by `type`).
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionMessage {
    /// snapshot, rows or error
    #[serde(rename = "type")]
    pub kind: String,
    /// snapshot and rows: the rows, oldest first.
    pub rows: Option<Vec<serde_json::Value>>,
    /// Updating views: each row's op, insert or delete, to apply by the view's key.
    pub ops: Option<Vec<String>>,
    /// Updating views: each row's seq (ascending; a snapshot's and a resumed
    /// subscription's first message skip the seqs of superseded changes).
    pub seqs: Option<Vec<u64>>,
    /// rows: the seq of the first row.
    pub first_seq: Option<u64>,
    /// snapshot and rows: the seq of the last row (snapshot: of the newest row emitted).
    pub last_seq: Option<u64>,
    /// rows: the view's watermark after this batch.
    pub watermark: Option<String>,
    /// rows: when the pipeline emitted the batch (microsecond precision).
    pub emitted_at: Option<String>,
    /// error: why the subscription ends.
    pub message: Option<String>,
}

/// GET /api/v1/views/{name}/subscribe (WebSocket): the snapshot of retained rows, then
/// every emitted batch with its seqs and the watermark.
///
/// With `?since_seq=N` the snapshot is skipped and every retained row with seq > N comes
/// first (the first message has first_seq = N+1 when those rows are still retained). An
/// `error` message precedes every close by the server: the view was dropped, the client
/// fell too far behind, or the server is stopping.
///
/// An updating view's snapshot is its current rows; with `since_seq` the first message
/// is the latest change of each key changed after N (a snapshot instead when those
/// changes are no longer all kept). Its messages carry `ops` and `seqs` beside `rows`.
#[utoipa::path(get, path = "/api/v1/views/{name}/subscribe", tag = "rows",
    params(("name" = String, Path, description = "The view"), SubscribeParams),
    responses((status = 101, description = "WebSocket: snapshot, then rows messages", body = SubscriptionMessage),
              (status = 404, description = "No such view", body = ErrorBody)))]
pub async fn subscribe_view(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<SubscribeParams>,
    RawQuery(query): RawQuery,
    client: Option<Extension<ConnectInfo<ClientAddr>>>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let o = state
        .catalog
        .get(&name)
        .filter(|o| o.kind == ObjectKind::View)
        .ok_or_else(|| ApiError::not_found(format!("there is no materialized view '{name}'")))?;
    let buffer = o
        .buffer
        .clone()
        .ok_or_else(|| ApiError::internal(&state, "view without buffer"))?;
    let stats = o.stats.clone();
    let wanted = key_params(query.as_deref())?;
    let filter = if wanted.is_empty() {
        None
    } else {
        Some(view_filter(&buffer, &wanted).map_err(ApiError::bad_request)?)
    };
    let slot = take_slot(&state, &client)?;
    let limit = state.settings.ws_max_message_bytes;
    Ok(ws
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| async move {
            let _slot = slot;
            let mut sub = Subscriber {
                socket,
                state,
                name,
            };
            sub.run(buffer, stats, filter, params.since_seq).await;
        }))
}

/// Open WebSocket subscriptions (views and status), in all and per client address.
#[derive(Debug, Default)]
pub struct Subscribers {
    total: usize,
    per_client: HashMap<std::net::IpAddr, usize>,
}

/// One open subscription's place in [`Subscribers`], given back on drop.
pub struct Slot {
    subscribers: Arc<Mutex<Subscribers>>,
    client: Option<std::net::IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.subscribers.lock();
        s.total = s.total.saturating_sub(1);
        if let Some(c) = self.client
            && let Some(n) = s.per_client.get_mut(&c)
        {
            *n -= 1;
            if *n == 0 {
                s.per_client.remove(&c);
            }
        }
    }
}

/// Take a place for a new subscription from `client`, or answer 503 when the server or
/// that client has as many open as `server.ws_max_subscribers` or
/// `server.ws_max_subscribers_per_client` allow.
pub fn take_slot(
    state: &AppState,
    client: &Option<Extension<ConnectInfo<ClientAddr>>>,
) -> Result<Slot, ApiError> {
    let client = client.as_ref().map(|c| c.0.0.0.ip());
    let mut s = state.subscribers.lock();
    let limits = &state.settings;
    let busy = |m: String| {
        Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "too_many_subscribers",
            m,
        ))
    };
    if s.total >= limits.ws_max_subscribers {
        return busy(format!(
            "the server has {} subscriptions open, its limit (server.ws_max_subscribers); try again later",
            s.total
        ));
    }
    if let Some(c) = client {
        let n = s.per_client.get(&c).copied().unwrap_or(0);
        if n >= limits.ws_max_subscribers_per_client {
            return busy(format!(
                "{c} has {n} subscriptions open, the limit per client \
                 (server.ws_max_subscribers_per_client); close one first"
            ));
        }
        *s.per_client.entry(c).or_default() += 1;
    }
    s.total += 1;
    Ok(Slot {
        subscribers: state.subscribers.clone(),
        client,
    })
}

struct Subscriber {
    socket: WebSocket,
    state: AppState,
    name: String,
}

/// The close code for a subscriber that did not take a message within the send timeout
/// (policy violation).
const CLOSE_SEND_TIMEOUT: u16 = 1008;
/// The close code for a subscriber that fell further behind than the queue holds (try
/// again later).
const CLOSE_LAGGED: u16 = 1013;

/// Why a subscription ended on our side.
enum End {
    /// The client went away or the send failed: nothing more to say.
    Gone,
    /// Tell the client why, then close.
    Close(u16, String),
}

/// How many encoded batches the cache keeps per view: subscribers near the head of the
/// stream share them; one further behind encodes its own.
const ENCODED_PER_VIEW: usize = 32;

/// The JSON `rows` messages of recently emitted batches, per view and first seq, so a
/// batch sent to many subscribers is encoded once. Bounded: [`ENCODED_PER_VIEW`] per view.
#[derive(Debug, Default, Clone)]
pub struct EncodedBatches(Arc<Mutex<HashMap<String, Recent>>>);

/// A view's recently encoded batches: `(first_seq, message)`, oldest first.
type Recent = VecDeque<(u64, Utf8Bytes)>;

impl EncodedBatches {
    /// The message for `e`, a batch of view `view` (an updating view's if `keyed`), encoded
    /// now if no one has yet.
    fn get(&self, view: &str, e: &Emitted, keyed: bool) -> weir_engine::Result<Utf8Bytes> {
        let cached = self
            .0
            .lock()
            .get(view)
            .and_then(|q| q.iter().find(|(seq, _)| *seq == e.first_seq).cloned());
        if let Some((_, msg)) = cached {
            return Ok(msg);
        }
        // Encoded outside the lock; two subscribers racing here encode the same bytes.
        let msg = live_message(e, e.first_seq, keyed)?;
        let mut g = self.0.lock();
        let q = g.entry(view.to_string()).or_default();
        if !q.iter().any(|(seq, _)| *seq == e.first_seq) {
            q.push_back((e.first_seq, msg.clone()));
            while q.len() > ENCODED_PER_VIEW {
                q.pop_front();
            }
        }
        Ok(msg)
    }

    /// Forget a view's batches (it was dropped).
    pub fn forget(&self, view: &str) {
        self.0.lock().remove(view);
    }
}

/// The close code for a subscription ended by a failure of ours.
const CLOSE_INTERNAL: u16 = 1011;

impl Subscriber {
    /// End the subscription for a failure of ours: the detail goes to the log.
    fn internal(&self, e: impl std::fmt::Display) -> End {
        tracing::error!(view = %self.name, "a subscription failed: {e}");
        End::Close(
            CLOSE_INTERNAL,
            "internal error; the detail is in the server log".into(),
        )
    }

    async fn send(&mut self, msg: Utf8Bytes) -> Result<(), End> {
        match tokio::time::timeout(
            self.state.settings.ws_send_timeout,
            self.socket.send(Message::Text(msg)),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => Err(End::Close(
                CLOSE_SEND_TIMEOUT,
                format!(
                    "the client did not take a message within {:?} (server.ws_send_timeout)",
                    self.state.settings.ws_send_timeout
                ),
            )),
        }
    }

    async fn run(
        &mut self,
        buffer: Arc<ViewBuffer>,
        stats: Arc<weir_engine::stats::Stats>,
        filter: Option<Filter>,
        since: Option<u64>,
    ) {
        let end = self.stream(buffer, stats, filter, since).await;
        if let End::Close(code, reason) = end {
            let slow = match code {
                CLOSE_LAGGED => Some(0),
                CLOSE_SEND_TIMEOUT => Some(1),
                _ => None,
            };
            if let Some(i) = slow {
                self.state.dropped_subscribers[i]
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let msg = serde_json::json!({"type": "error", "message": reason}).to_string();
            tracing::debug!(view = %self.name, "closing a subscription: {reason}");
            let _ = tokio::time::timeout(
                self.state.settings.ws_send_timeout,
                self.socket.send(Message::Text(msg.into())),
            )
            .await;
            let mut reason = reason;
            reason.truncate(120);
            let _ = tokio::time::timeout(
                self.state.settings.ws_send_timeout,
                self.socket.send(Message::Close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                }))),
            )
            .await;
        }
    }

    /// Start feeding the subscriber: join the feed (every row, or the filtered rows),
    /// then send its first message; returns the feed and the seq it covers.
    async fn start(
        &mut self,
        buffer: &Arc<ViewBuffer>,
        stats: &weir_engine::stats::Stats,
        filter: Option<Filter>,
        since: Option<u64>,
    ) -> Result<(Feed, u64), End> {
        // Join before reading the retained rows: no batch falls between the two.
        let (feed, first) = match filter {
            None => {
                let rx = buffer.subscribe();
                (
                    Feed::All(rx),
                    first_message(buffer, since, stats.watermark()),
                )
            }
            Some(f) => {
                let first = filtered_first(buffer, |b| f.select(b), since, stats.watermark());
                let member = self.state.rooms.join(&self.name, buffer, f);
                (Feed::Keys(member), first)
            }
        };
        let (first, mut cursor) = first.map_err(|e| self.internal(e))?;
        if let Some(msg) = first {
            self.send(text(msg)).await?;
        }
        // A reader ahead of the view (it had rows numbered further) skips up to its seq.
        if let Some(since) = since {
            cursor = cursor.max(since);
        }
        Ok((feed, cursor))
    }

    async fn stream(
        &mut self,
        buffer: Arc<ViewBuffer>,
        stats: Arc<weir_engine::stats::Stats>,
        filter: Option<Filter>,
        since: Option<u64>,
    ) -> End {
        let keyed = buffer.is_keyed();
        let (mut feed, mut cursor) = match self.start(&buffer, &stats, filter, since).await {
            Ok(f) => f,
            Err(end) => return end,
        };
        let mut stopping = self.state.stopping.clone();
        loop {
            tokio::select! {
                ev = feed.next() => {
                    let msg = match ev {
                        Fed::Rows(e) => {
                            if e.last_seq() <= cursor {
                                continue;
                            }
                            let msg = if e.first_seq > cursor {
                                self.state.encoded.get(&self.name, &e, keyed)
                            } else {
                                live_message(&e, cursor + 1, keyed)
                            };
                            cursor = e.last_seq();
                            msg
                        }
                        Fed::Routed(r) => {
                            let e = &r.emitted;
                            if e.last_seq() <= cursor {
                                continue;
                            }
                            let msg = if e.first_seq > cursor {
                                Ok(r.msg.clone())
                            } else {
                                let later: Vec<u32> = r
                                    .rows
                                    .iter()
                                    .copied()
                                    .filter(|i| e.first_seq + u64::from(*i) > cursor)
                                    .collect();
                                filtered_live(e, &later, keyed, cursor + 1)
                            };
                            cursor = e.last_seq();
                            msg
                        }
                        Fed::Dropped => {
                            self.state.encoded.forget(&self.name);
                            return End::Close(1000, format!("materialized view '{}' was dropped", self.name));
                        }
                        Fed::Lagged(what) => {
                            return End::Close(CLOSE_LAGGED, format!(
                                "{what} (the queue holds {SUBSCRIBER_QUEUE_BATCHES} batches); \
                                 reconnect with since_seq={cursor} to resume"
                            ));
                        }
                        Fed::Failed => return self.internal("routing filtered rows failed"),
                    };
                    let msg = match msg {
                        Ok(m) => m,
                        Err(err) => return self.internal(err),
                    };
                    if let Err(end) = self.send(msg).await {
                        return end;
                    }
                }
                msg = self.socket.recv() => match msg {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return End::Gone,
                    Some(Ok(Message::Text(t))) => match client_filter(&buffer, t.as_str()) {
                        Ok(filter) => {
                            // The old feed goes first; the new one starts with a snapshot.
                            drop(std::mem::replace(&mut feed, Feed::None));
                            match self.start(&buffer, &stats, filter, None).await {
                                Ok((f, c)) => (feed, cursor) = (f, c),
                                Err(end) => return end,
                            }
                        }
                        Err(why) => {
                            let msg = serde_json::json!({"type": "rejected", "message": why}).to_string();
                            if let Err(end) = self.send(msg.into()).await {
                                return end;
                            }
                        }
                    },
                    // Pings are answered by the WebSocket layer; binary frames are ignored.
                    Some(Ok(_)) => {}
                },
                _ = stopped(&mut stopping) => {
                    return End::Close(1001, "the server is stopping; reconnect with since_seq to resume".into());
                }
            }
        }
    }
}

/// Where a subscriber's batches come from: the view's fan-out (every row), or its
/// filtered subscriptions' router.
enum Feed {
    All(tokio::sync::broadcast::Receiver<ViewEvent>),
    Keys(Membership),
    /// Between two feeds.
    None,
}

/// What a feed yields.
enum Fed {
    Rows(Arc<Emitted>),
    Routed(Arc<super::rooms::Routed>),
    Dropped,
    /// Fell behind: why.
    Lagged(String),
    Failed,
}

impl Feed {
    async fn next(&mut self) -> Fed {
        match self {
            Feed::All(rx) => match rx.recv().await {
                Ok(ViewEvent::Rows(e)) => Fed::Rows(e),
                Ok(ViewEvent::Dropped) | Err(RecvError::Closed) => Fed::Dropped,
                Err(RecvError::Lagged(n)) => {
                    Fed::Lagged(format!("this subscriber fell {n} batches behind"))
                }
            },
            Feed::Keys(m) => match m.rx.recv().await {
                Some(r) => Fed::Routed(r),
                None => match m.ended() {
                    Ended::Dropped => Fed::Dropped,
                    Ended::Lagged => Fed::Lagged("this subscriber fell behind".into()),
                    Ended::RouterLagged => {
                        Fed::Lagged("the server's filtered-subscription router fell behind".into())
                    }
                    Ended::Failed => Fed::Failed,
                },
            },
            Feed::None => std::future::pending().await,
        }
    }
}

/// Resolves once the server is stopping.
async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// A status message: every object with its figures.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusMessage {
    /// status
    #[serde(rename = "type")]
    pub kind: String,
    pub sources: Vec<Object>,
    pub views: Vec<Object>,
    pub sinks: Vec<Object>,
    /// The server's clock, RFC 3339.
    pub time: String,
}

fn status_message(state: &AppState, grant: &Option<Extension<Grant>>) -> StatusMessage {
    let objects = state.catalog.objects();
    let of = |k: ObjectKind| {
        objects
            .iter()
            .filter(|o| o.kind == k && Grant::allows(grant, &o.name))
            .map(object)
            .collect::<Vec<_>>()
    };
    StatusMessage {
        kind: "status".into(),
        sources: of(ObjectKind::Source),
        views: of(ObjectKind::View),
        sinks: of(ObjectKind::Sink),
        time: rfc3339_ms(weir_engine::clock::wall_ms()).unwrap_or_default(),
    }
}

/// GET /api/v1/status/subscribe (WebSocket): every source, view and sink with its figures,
/// pushed every `server.status_interval` (default 1 s); the dashboard's health panel.
#[utoipa::path(get, path = "/api/v1/status/subscribe", tag = "objects",
    params(("token" = Option<String>, Query, description = "The API token, if not in a header")),
    responses((status = 101, description = "WebSocket of status messages", body = StatusMessage)))]
pub async fn subscribe_status(
    State(state): State<AppState>,
    grant: Option<Extension<Grant>>,
    client: Option<Extension<ConnectInfo<ClientAddr>>>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let slot = take_slot(&state, &client)?;
    let limit = state.settings.ws_max_message_bytes;
    Ok(ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |mut socket| async move {
            let _slot = slot;
            let mut ticker = tokio::time::interval(state.settings.status_interval);
            let mut stopping = state.stopping.clone();
            loop {
                tokio::select! {
                    _ = ticker.tick() => {
                        let msg = serde_json::to_string(&status_message(&state, &grant)).unwrap_or_default();
                        let sent = tokio::time::timeout(
                            state.settings.ws_send_timeout,
                            socket.send(Message::Text(msg.into())),
                        ).await;
                        if !matches!(sent, Ok(Ok(()))) {
                            return;
                        }
                    }
                    msg = socket.recv() => match msg {
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                        Some(Ok(_)) => {}
                    },
                    _ = stopped(&mut stopping) => {
                        let _ = socket.send(Message::Close(Some(CloseFrame {
                            code: 1001,
                            reason: "the server is stopping".into(),
                        }))).await;
                        return;
                    }
                }
            }
        }))
}
