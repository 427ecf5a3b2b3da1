//! The webhook sink against a real HTTP server (axum, on a loopback port) that fails some
//! requests: every third answer is a 503, so deliveries are retried; rows of region `ZZ`
//! are refused with a 422, so they go to the dead-letter file. The pipeline reads a file
//! of events and runs to its end; what the receiver accepted (by idempotency key, each
//! body's signature checked) plus what went to the dead-letter file must be the view's
//! rows computed from the events, every row once.

#![allow(clippy::unwrap_used)]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SECRET: &str = "hook-secret";

#[derive(Default)]
struct Received {
    requests: u64,
    failed: u64,
    /// Accepted bodies by idempotency key.
    by_key: BTreeMap<String, Value>,
    repeats: u64,
    bad_signatures: u64,
}

async fn hook(
    State(r): State<Arc<Mutex<Received>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut r = r.lock().unwrap();
    r.requests += 1;
    if r.requests % 3 == 0 {
        r.failed += 1;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let sig = headers
        .get("x-weir-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if sig != weir_connectors::webhook::sign(SECRET.as_bytes(), &body) {
        r.bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let v: Value = serde_json::from_slice(&body).unwrap();
    if v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .any(|row| row["region"] == "ZZ")
    {
        return StatusCode::UNPROCESSABLE_ENTITY;
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if r.by_key.insert(key, v).is_some() {
        r.repeats += 1;
    }
    StatusCode::NO_CONTENT
}

/// (window start ms, region, n)
type Row = (i64, String, i64);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_delivers_every_row_retrying_and_dead_lettering_refusals() {
    let received = Arc::new(Mutex::new(Received::default()));
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Events: 40 windows of 10 s, in each one event per region for EU and US and, in
    // every fifth window, one for ZZ.
    let dir = tempfile::tempdir().unwrap();
    let mut lines = String::new();
    let mut want: Vec<Row> = Vec::new();
    let t0 = 1_714_521_600_000i64;
    for w in 0..40i64 {
        let start = t0 + w * 10_000;
        let regions: &[&str] = if w % 5 == 0 {
            &["EU", "US", "ZZ"]
        } else {
            &["EU", "US"]
        };
        for (i, r) in regions.iter().enumerate() {
            for k in 0..=i as i64 {
                lines.push_str(&format!(
                    "{{\"ts\": {}, \"region\": \"{r}\"}}\n",
                    start + 1_000 + k
                ));
            }
            want.push((start, r.to_string(), i as i64 + 1));
        }
    }
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, lines).unwrap();
    let sql = format!(
        "CREATE SOURCE ev (ts TIMESTAMP NOT NULL, region TEXT, \
         WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
         WITH (connector = 'file', path = '{}');\n\
         CREATE MATERIALIZED VIEW per_region AS SELECT window_start, region, count(*) AS n \
         FROM TUMBLE(ev, ts, INTERVAL '10' SECOND) GROUP BY window_start, window_end, region;\n\
         CREATE SINK hook FROM per_region WITH (connector = 'webhook', \
         url = 'http://{addr}/hook', 'batch.rows' = '2', 'hmac.secret' = '{SECRET}', \
         'retry.backoff.max' = '50ms');",
        input.display()
    );
    tokio::time::timeout(
        Duration::from_secs(120),
        weir_tests::run_until_done(&dir.path().join("data"), &sql),
    )
    .await
    .expect("the pipeline did not finish within 120 s");

    let r = received.lock().unwrap();
    assert!(
        r.failed > 0,
        "no request was failed, so no retry was tested"
    );
    assert_eq!(r.bad_signatures, 0);
    assert_eq!(r.repeats, 0, "a request delivered twice under one key");
    let row = |v: &Value| -> Row {
        let start = chrono::DateTime::parse_from_rfc3339(v["window_start"].as_str().unwrap())
            .unwrap()
            .timestamp_millis();
        (
            start,
            v["region"].as_str().unwrap().to_string(),
            v["n"].as_i64().unwrap(),
        )
    };
    let mut got: Vec<Row> = Vec::new();
    for (key, body) in &r.by_key {
        let rows = body["rows"].as_array().unwrap();
        assert!(rows.len() <= 2, "batch.rows is 2: {body}");
        assert_eq!(
            key,
            &format!("hook:{}:{}", body["first_row_id"], rows.len()),
            "the idempotency key names the sink, first row id and count"
        );
        assert_eq!(body["view"], "per_region");
        got.extend(rows.iter().map(row));
    }
    // Refused requests' rows, each with the reason.
    let dead = std::fs::read_to_string(dir.path().join("data/dead-letter/hook.jsonl")).unwrap();
    for line in dead.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert!(
            v["reason"].as_str().unwrap().contains("422"),
            "the reason names the answer: {v}"
        );
        assert_eq!(v["sink"], "hook");
        got.push(row(&v["row"]));
    }
    assert!(
        dead.lines().count() >= 8,
        "every ZZ row is dead-lettered:\n{dead}"
    );
    got.sort();
    want.sort();
    assert_eq!(got, want);
}
