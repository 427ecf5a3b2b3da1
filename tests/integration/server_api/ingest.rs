//! Events in over HTTP: `http` sources take JSON lines or a JSON array at
//! `POST /api/v1/sources/{name}/events`, check them with the source's decoder, answer
//! with accepted and rejected counts and reasons, and the views read exactly the accepted
//! events. Here on the embedded broker, with tokens; the crash test
//! (`http_events_acknowledged_survive_sigkill`) runs the real binary on a real Kafka.

use super::{Server, call, rows_of, start_with_config, wait_for};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

const SQL: &str = "\
CREATE SOURCE clicks (id BIGINT NOT NULL, page TEXT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts) \
  WITH (connector = 'http', format = 'json');
CREATE SOURCE strict (id BIGINT NOT NULL, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts) \
  WITH (connector = 'http', 'bad.records' = 'fail');
CREATE SOURCE gen (event_id TEXT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts) \
  WITH (connector = 'generator', kind = 'downloads', 'rows.per.second' = '1');
CREATE MATERIALIZED VIEW seen AS SELECT id, page FROM clicks;
CREATE MATERIALIZED VIEW strict_seen AS SELECT id FROM strict;
";

const ADMIN: &str = "adm-secret";
const WRITER: &str = "clicks-writer";
const READER: &str = "reader";

fn post_events(s: &Server, source: &str, token: &str, body: &str) -> (u16, Value) {
    call(
        "POST",
        &s.url(&format!("/api/v1/sources/{source}/events")),
        Some(token),
        Some(body),
    )
}

fn ids(s: &Server, view: &str) -> Vec<i64> {
    let (status, v) = call(
        "GET",
        &s.url(&format!("/api/v1/views/{view}/rows?limit=100000")),
        Some(ADMIN),
        None,
    );
    assert_eq!(status, 200, "{v}");
    let mut ids: Vec<i64> = rows_of(&v)
        .iter()
        .map(|r| r["id"].as_i64().expect("id"))
        .collect();
    ids.sort_unstable();
    ids
}

#[test]
fn http_sources_take_events_and_answer_per_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sql = dir.path().join("ingest.sql");
    std::fs::write(&sql, SQL).expect("write sql");
    let server = start_with_config(
        dir.path(),
        &format!(
            "[server]\nadmin_tokens = ['{ADMIN}']\nread_tokens = ['{READER}']\n\
             [[server.tokens]]\ntoken = '{WRITER}'\nrole = 'write'\nobjects = ['clicks']\n"
        ),
        sql,
    );
    let t0 = 1_714_557_600_000i64;
    let ev = |id: i64| json!({"id": id, "page": format!("/p{id}"), "ts": t0 + id}).to_string();

    // JSON lines: the third is bad (its id is no number); it is listed and dead-lettered.
    let lines = [ev(1), ev(2), r#"{"id": "x", "ts": 1}"#.to_string(), ev(3)].join("\n");
    let (status, body) = post_events(&server, "clicks", WRITER, &lines);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["accepted"], &body["rejected"], &body["bad_records"]),
        (&json!(3), &json!(1), &json!("dead-letter"))
    );
    assert_eq!(body["errors"][0]["index"], 2, "{body}");
    assert!(
        body["errors"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("id")),
        "{body}"
    );
    // A JSON array.
    let array = format!("[{}, {}]", ev(4), ev(5));
    let (status, body) = post_events(&server, "clicks", WRITER, &array);
    assert_eq!((status, &body["accepted"]), (200, &json!(2)), "{body}");

    // bad.records = 'fail': a request with a bad event is refused whole.
    let mixed = [ev(10), r#"{"id": 11}"#.to_string()].join("\n");
    let (status, body) = post_events(&server, "strict", ADMIN, &mixed);
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        (&body["accepted"], &body["rejected"], &body["bad_records"]),
        (&json!(0), &json!(1), &json!("refused"))
    );
    assert_eq!(body["errors"][0]["index"], 1, "{body}");
    assert_eq!(body["error"]["code"], "bad_events", "{body}");
    let (status, body) = post_events(&server, "strict", ADMIN, &ev(12));
    assert_eq!((status, &body["accepted"]), (200, &json!(1)), "{body}");

    // A body that is no JSON, a source that is not http, one that does not exist.
    let (status, body) = post_events(&server, "clicks", ADMIN, "[{\"id\": 1},");
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("not a JSON array"), "{body}");
    let (status, body) = post_events(&server, "gen", ADMIN, &ev(1));
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("only an http source"), "{body}");
    assert_eq!(post_events(&server, "nope", ADMIN, &ev(1)).0, 404);

    // Roles: a read token may not send events; the writer only to its source, and it
    // learns nothing of others.
    assert_eq!(post_events(&server, "clicks", READER, &ev(99)).0, 403);
    assert_eq!(post_events(&server, "strict", WRITER, &ev(99)).0, 403);
    assert_eq!(post_events(&server, "nope", WRITER, &ev(99)).0, 403);
    let (status, _) = call(
        "POST",
        &server.url("/api/v1/sql"),
        Some(WRITER),
        Some("SELECT 1"),
    );
    assert_eq!(status, 403);

    // The views read exactly the accepted events.
    let limit = Duration::from_secs(60);
    wait_for("the accepted events", limit, || {
        ids(&server, "seen").len() >= 5 && !ids(&server, "strict_seen").is_empty()
    });
    assert_eq!(ids(&server, "seen"), vec![1, 2, 3, 4, 5]);
    assert_eq!(ids(&server, "strict_seen"), vec![12]);
    // The bad event went to the source's dead-letter output, counted.
    let (_, clicks) = call(
        "GET",
        &server.url("/api/v1/sources/clicks"),
        Some(ADMIN),
        None,
    );
    wait_for("the dead letter", limit, || {
        let (_, c) = call(
            "GET",
            &server.url("/api/v1/sources/clicks"),
            Some(ADMIN),
            None,
        );
        c["figures"]["bad_rows"] == 1
    });
    assert_eq!(clicks["connector"], "http");
    let pages: BTreeSet<String> = {
        let (_, v) = call(
            "GET",
            &server.url("/api/v1/views/seen/rows"),
            Some(ADMIN),
            None,
        );
        rows_of(&v)
            .iter()
            .map(|r| r["page"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(
        pages,
        ["/p1", "/p2", "/p3", "/p4", "/p5"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    server.stop();
}
