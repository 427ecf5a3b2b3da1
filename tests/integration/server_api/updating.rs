//! Updating views (aggregates without a window) over the API: their current rows by key,
//! the changes after a seq with deletes, a reader sent back to the current rows when the
//! changes it asks for are no longer kept, and WebSocket subscribers that apply what they
//! get by key. The input is a topic on an in-process Kafka-protocol broker the test
//! produces to one message at a time, so every change and its seq are known.

use super::{Server, Ws, call, get, next, rows_of, start_on_broker, subscribe, wait_for};
use crate::kafka::{producer, send};
use rdkafka::producer::FutureProducer;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// A site leaves `quiet` once it has three readings; `quiet_few` is the same view keeping
/// two keys' latest changes.
const SQL: &str = "\
CREATE SOURCE readings (site TEXT NOT NULL, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts) \
  WITH (connector = 'kafka', topic = 'readings', format = 'json');
CREATE MATERIALIZED VIEW quiet AS \
  SELECT site, count(*) AS n FROM readings GROUP BY site HAVING count(*) < 3;
CREATE MATERIALIZED VIEW quiet_few WITH ('retention.rows' = '2') AS \
  SELECT site, count(*) AS n FROM readings GROUP BY site HAVING count(*) < 3;
CREATE MATERIALIZED VIEW seen AS SELECT site FROM readings;
";

/// An updating view's rows as a reader keeps them: by `site`.
type Table = BTreeMap<String, Value>;

/// Apply a message or response of changes to `table`: `rows`, `ops` and `seqs` side by
/// side, seqs ascending. Returns the ops.
fn apply(table: &mut Table, m: &Value) -> Vec<String> {
    let rows = rows_of(m);
    let ops: Vec<String> = m["ops"]
        .as_array()
        .unwrap_or_else(|| panic!("no ops: {m}"))
        .iter()
        .map(|o| o.as_str().unwrap_or_default().to_string())
        .collect();
    let seqs: Vec<u64> = m["seqs"]
        .as_array()
        .unwrap_or_else(|| panic!("no seqs: {m}"))
        .iter()
        .map(|s| s.as_u64().expect("a seq"))
        .collect();
    assert_eq!((rows.len(), seqs.len()), (ops.len(), ops.len()), "{m}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "ascending: {m}");
    for (row, op) in rows.iter().zip(&ops) {
        let site = row["site"].as_str().expect("a site").to_string();
        match op.as_str() {
            "insert" => table.insert(site, row.clone()),
            "delete" => table.remove(&site),
            other => panic!("op {other}: {m}"),
        };
    }
    ops
}

fn table(rows: &[(&str, i64)]) -> Table {
    rows.iter()
        .map(|(s, n)| (s.to_string(), json!({"site": s, "n": n})))
        .collect()
}

fn last_seq(s: &Server, view: &str) -> u64 {
    get(s, &format!("/api/v1/views/{view}"))["last_seq"]
        .as_u64()
        .expect("last_seq")
}

/// Read a subscription to its end (the view is dropped): every `rows` message goes on
/// from `cursor` without a gap and is applied to `table`. Returns the last seq and every
/// op.
fn read_to_end(ws: &mut Ws, table: &mut Table, mut cursor: u64) -> (u64, Vec<String>) {
    let mut ops = Vec::new();
    let mut closed_with = None;
    while let Some(m) = next(ws) {
        match m["type"].as_str() {
            Some("rows") => {
                assert_eq!(m["first_seq"], cursor + 1, "no gap, no duplicate: {m}");
                let last = m["last_seq"].as_u64().expect("last_seq");
                let want: Vec<u64> = (cursor + 1..=last).collect();
                assert_eq!(
                    m["seqs"],
                    json!(want),
                    "a live batch numbers every row: {m}"
                );
                ops.extend(apply(table, &m));
                cursor = last;
            }
            Some("error") => closed_with = m["message"].as_str().map(str::to_string),
            _ => panic!("unexpected message {m}"),
        }
    }
    let said = closed_with.expect("an error message before the close");
    assert!(said.contains("was dropped"), "{said}");
    (cursor, ops)
}

struct Input {
    rt: tokio::runtime::Runtime,
    producer: FutureProducer,
    ts: i64,
}

impl Input {
    /// Produce one reading of `site`.
    fn reading(&mut self, site: &str) {
        self.ts += 1000;
        let payload = json!({"site": site, "ts": self.ts}).to_string();
        self.rt.block_on(send(
            &self.producer,
            "readings",
            0,
            None,
            payload.as_bytes(),
            self.ts,
        ));
    }
}

#[test]
fn updating_views_serve_current_rows_changes_and_subscriptions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, broker) = start_on_broker(dir.path(), "readings", SQL);
    let mut input = Input {
        rt: tokio::runtime::Runtime::new().expect("runtime"),
        producer: producer(broker.bootstrap_servers()),
        ts: 1_714_557_600_000,
    };
    let limit = Duration::from_secs(60);

    // The view objects say which views are updating and what their key is.
    let quiet = get(&server, "/api/v1/views/quiet");
    assert_eq!(
        (&quiet["updating"], &quiet["key"]),
        (&json!(true), &json!(["site"]))
    );
    let seen = get(&server, "/api/v1/views/seen");
    assert_eq!(
        (&seen["updating"], &seen["key"]),
        (&json!(false), &json!([]))
    );
    let listed: Vec<(Value, Value)> = get(&server, "/api/v1/views")["views"]
        .as_array()
        .expect("views")
        .iter()
        .map(|v| (v["name"].clone(), v["updating"].clone()))
        .collect();
    assert_eq!(
        listed,
        [
            (json!("quiet"), json!(true)),
            (json!("quiet_few"), json!(true)),
            (json!("seen"), json!(false))
        ]
    );

    // Three readings: the current rows by key.
    for site in ["a", "a", "b"] {
        input.reading(site);
    }
    let current_of = |view: &str| {
        let mut t = Table::new();
        apply(&mut t, &get(&server, &format!("/api/v1/views/{view}/rows")));
        t
    };
    wait_for("the three readings", limit, || {
        current_of("quiet") == table(&[("a", 2), ("b", 1)])
            && current_of("quiet_few") == table(&[("a", 2), ("b", 1)])
            && last_seq(&server, "seen") == 3
    });
    let l1 = last_seq(&server, "quiet");
    let f1 = last_seq(&server, "quiet_few");
    let current = get(&server, "/api/v1/views/quiet/rows");
    assert_eq!(current["columns"], json!(["site", "n"]));
    assert_eq!(current["key"], json!(["site"]));
    assert_eq!(current["reset"], true);
    assert_eq!(current["ops"], json!(["insert", "insert"]));
    assert_eq!(current["last_seq"], l1);
    assert!(current.get("first_seq").is_none(), "{current}");
    // An append-only view's rows keep their shape.
    let appended = get(&server, "/api/v1/views/seen/rows");
    assert_eq!(
        (&appended["first_seq"], &appended["last_seq"]),
        (&json!(1), &json!(3))
    );
    assert!(appended.get("ops").is_none(), "{appended}");

    // A subscriber from here: the snapshot of the current rows.
    let mut sub = subscribe(&server, "/api/v1/views/quiet/subscribe");
    let snapshot = next(&mut sub).expect("snapshot");
    assert_eq!(
        (&snapshot["type"], &snapshot["last_seq"]),
        (&json!("snapshot"), &json!(l1))
    );
    let mut subscribed = Table::new();
    assert_eq!(apply(&mut subscribed, &snapshot), ["insert", "insert"]);
    assert_eq!(subscribed, table(&[("a", 2), ("b", 1)]));

    // One reading at a time, each a known change: a third for a (HAVING drops a: one
    // delete), a first for c (an insert), a second for b (an update: delete and insert).
    for (site, rows) in [("a", 1), ("c", 1), ("b", 2)] {
        let (q, f) = (last_seq(&server, "quiet"), last_seq(&server, "quiet_few"));
        input.reading(site);
        wait_for(&format!("the change of {site}"), limit, || {
            last_seq(&server, "quiet") == q + rows && last_seq(&server, "quiet_few") == f + rows
        });
    }
    let expected = table(&[("b", 2), ("c", 1)]);

    // The changes since the snapshot, deletes included, each key's latest change once.
    let changes = get(&server, &format!("/api/v1/views/quiet/rows?since_seq={l1}"));
    let want_changes = json!({
        "columns": ["site", "n"],
        "key": ["site"],
        "reset": false,
        "rows": [{"site": "a", "n": null}, {"site": "c", "n": 1}, {"site": "b", "n": 2}],
        "ops": ["delete", "insert", "insert"],
        "seqs": [l1 + 1, l1 + 2, l1 + 4],
        "last_seq": l1 + 4,
    });
    assert_eq!(changes, want_changes);
    let mut paged = Table::new();
    apply(&mut paged, &current);
    apply(&mut paged, &changes);
    assert_eq!(paged, expected);
    // The same a row at a time: each page's last_seq is where the next one starts.
    let mut since = l1;
    let mut pages = Vec::new();
    loop {
        let page = get(
            &server,
            &format!("/api/v1/views/quiet/rows?since_seq={since}&limit=1"),
        );
        assert_eq!(page["reset"], false, "{page}");
        since = page["last_seq"].as_u64().expect("last_seq");
        if rows_of(&page).is_empty() {
            break;
        }
        pages.push((page["rows"][0].clone(), page["ops"][0].clone(), since));
    }
    assert_eq!(since, l1 + 4);
    assert_eq!(
        pages,
        [
            (want_changes["rows"][0].clone(), json!("delete"), l1 + 1),
            (want_changes["rows"][1].clone(), json!("insert"), l1 + 2),
            (want_changes["rows"][2].clone(), json!("insert"), l1 + 4),
        ]
    );

    // quiet_few keeps two keys: a's delete was pushed out when b changed, so a reader
    // from before it starts over from the current rows (reset); one from its seq on gets
    // the changes.
    let reset = get(
        &server,
        &format!("/api/v1/views/quiet_few/rows?since_seq={f1}"),
    );
    assert_eq!(
        reset,
        json!({
            "columns": ["site", "n"],
            "key": ["site"],
            "reset": true,
            "rows": [{"site": "c", "n": 1}, {"site": "b", "n": 2}],
            "ops": ["insert", "insert"],
            "seqs": [f1 + 2, f1 + 4],
            "last_seq": f1 + 4,
        })
    );
    let kept = get(
        &server,
        &format!("/api/v1/views/quiet_few/rows?since_seq={}", f1 + 1),
    );
    assert_eq!(
        (&kept["reset"], &kept["seqs"]),
        (&json!(false), &json!([f1 + 2, f1 + 4]))
    );

    // Subscriptions that resume: quiet's gets the changes after l1 as one rows message;
    // quiet_few's starts over with a snapshot.
    let mut resumed = subscribe(
        &server,
        &format!("/api/v1/views/quiet/subscribe?since_seq={l1}"),
    );
    let m = next(&mut resumed).expect("the changes since l1");
    assert_eq!(
        (&m["type"], &m["first_seq"], &m["last_seq"]),
        (&json!("rows"), &json!(l1 + 1), &json!(l1 + 4))
    );
    assert_eq!(
        (&m["rows"], &m["ops"], &m["seqs"]),
        (
            &want_changes["rows"],
            &want_changes["ops"],
            &want_changes["seqs"]
        )
    );
    let mut few = subscribe(
        &server,
        &format!("/api/v1/views/quiet_few/subscribe?since_seq={f1}"),
    );
    let m = next(&mut few).expect("a snapshot");
    assert_eq!(
        (&m["type"], &m["last_seq"], &m["seqs"]),
        (&json!("snapshot"), &json!(f1 + 4), &json!([f1 + 2, f1 + 4]))
    );
    let mut restarted = Table::new();
    apply(&mut restarted, &m);
    assert_eq!(restarted, expected);

    // Dropping the view ends the subscriptions: the first subscriber, read to its end,
    // got every change after its snapshot, a's delete among them, and holds exactly the
    // view's current rows.
    let (status, body) = call("DELETE", &server.url("/api/v1/views/quiet"), None, None);
    assert_eq!(status, 200, "{body}");
    let (end, ops) = read_to_end(&mut sub, &mut subscribed, l1);
    assert_eq!(end, l1 + 4);
    assert_eq!(ops, ["delete", "insert", "delete", "insert"]);
    assert_eq!(subscribed, expected);
    let mut resumed_table = table(&[("a", 2), ("b", 1)]);
    apply(&mut resumed_table, &want_changes);
    assert_eq!(
        read_to_end(&mut resumed, &mut resumed_table, l1 + 4).0,
        l1 + 4
    );
    assert_eq!(resumed_table, expected);
    server.stop();
    input.rt.block_on(broker.stop());
}
