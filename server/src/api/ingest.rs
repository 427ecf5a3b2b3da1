//! `POST /api/v1/sources/{name}/events`: events in over HTTP, for `http` sources
//! (`weir_connectors::http`). The answer comes once Kafka holds every accepted event.

use super::types::ErrorBody;
use super::{ApiError, AppState};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use weir_connectors::http::IngestError;
use weir_engine::sql::ObjectKind;

/// A bad event of a request.
#[derive(Debug, Serialize, ToSchema)]
pub struct RejectedEvent {
    /// Its place in the request, from 0 (the line among the non-blank lines, or the
    /// array element).
    pub index: usize,
    pub reason: String,
}

/// What became of a request's events.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ingested {
    /// Events written; the source reads each as a row.
    pub accepted: usize,
    /// Bad events (the decoder's reason each).
    pub rejected: usize,
    /// The bad events, in order.
    pub errors: Vec<RejectedEvent>,
    /// Where the bad events went: `dead-letter` (the source's dead-letter output),
    /// `dropped` (bad.records = 'skip'), or `refused` (bad.records = 'fail': nothing was
    /// written).
    pub bad_records: String,
}

fn rejected(bad: Vec<(usize, String)>) -> Vec<RejectedEvent> {
    bad.into_iter()
        .map(|(index, reason)| RejectedEvent { index, reason })
        .collect()
}

/// POST /api/v1/sources/{name}/events: send events to an `http` source, as JSON lines or
/// one JSON array. Each event is checked by the source's decoder; the good ones (and,
/// with `bad.records = 'dead-letter'`, the bad ones, for the dead-letter output) are
/// written to the source's Kafka topic, and the answer comes once every one is written.
/// Needs a write (or admin) token.
#[utoipa::path(post, path = "/api/v1/sources/{name}/events", tag = "objects",
    params(("name" = String, Path, description = "The http source")),
    request_body(content = String, description = "JSON lines, or a JSON array of events", content_type = "application/json"),
    responses((status = 200, description = "Written (bad events listed)", body = Ingested),
              (status = 400, description = "The body does not parse, the source is not an http source, or bad.records = 'fail' and some events are bad (code bad_events: nothing written; the counts and errors beside the error object)", body = ErrorBody),
              (status = 404, description = "No such source", body = ErrorBody),
              (status = 503, description = "Kafka did not take the events, code unavailable: retry (some may have been written); or, on the embedded broker, the source is too far behind, code busy: nothing written, retry", body = ErrorBody)))]
pub async fn post_events(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let o = state
        .catalog
        .get(&name)
        .filter(|o| o.kind == ObjectKind::Source)
        .ok_or_else(|| ApiError::not_found(format!("there is no source '{name}'")))?;
    let endpoint = state
        .endpoints
        .get(&name)
        .filter(|_| o.detail == "http")
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "source '{name}' reads connector '{}'; only an http source \
                 (connector = 'http') takes events over the API",
                o.detail
            ))
        })?;
    match endpoint.ingest(&body).await {
        Ok(i) => Ok(axum::Json(Ingested {
            accepted: i.accepted,
            rejected: i.rejected.len(),
            errors: rejected(i.rejected),
            bad_records: if i.dead_lettered {
                "dead-letter"
            } else {
                "dropped"
            }
            .into(),
        })
        .into_response()),
        Err(e @ IngestError::Refused(_)) => {
            let message = e.to_string();
            let IngestError::Refused(bad) = e else {
                return Err(ApiError::internal(&state, "refused without its events"));
            };
            // An error object, and beside it the counts of a taken request.
            let body = Ingested {
                accepted: 0,
                rejected: bad.len(),
                errors: rejected(bad),
                bad_records: "refused".into(),
            };
            let mut err = ApiError::new(StatusCode::BAD_REQUEST, "bad_events", message);
            if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(&body) {
                for (k, v) in fields {
                    err = err.beside(&k, v);
                }
            }
            Err(err)
        }
        Err(e @ IngestError::Body(_)) => Err(ApiError::bad_request(e.to_string())),
        Err(e @ IngestError::Busy(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            e.to_string(),
        )),
        Err(e @ IngestError::Unavailable(_)) => {
            tracing::warn!(source = %name, error = %e, "events not taken");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ))
        }
    }
}
