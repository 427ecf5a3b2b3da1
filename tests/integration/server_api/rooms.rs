//! Filtered subscriptions: a subscriber following some symbols of a view gets exactly
//! the rows of those symbols, each with its seq; it resumes with `since_seq` and changes
//! its set with a `subscribe` message. Every answer is checked against the view's whole
//! output read over REST and filtered here (the batch answer). The input is a topic on an
//! in-process Kafka-protocol broker the test produces to, so every row is known.

use super::{Server, Ws, call, get, next, rows_of, start_on_broker, subscribe, wait_for};
use crate::kafka::{producer, send};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use tungstenite::Message;

const SQL: &str = "\
CREATE SOURCE ticks (symbol TEXT NOT NULL, price BIGINT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts) \
  WITH (connector = 'kafka', topic = 'ticks', format = 'json');
CREATE MATERIALIZED VIEW trades AS SELECT symbol, price FROM ticks;
CREATE MATERIALIZED VIEW highs AS SELECT symbol, max(price) AS high, count(*) AS n FROM ticks GROUP BY symbol;
";

const SYMBOLS: [&str; 6] = ["A", "B", "C", "D", "E", "F"];

/// `(seq, row)` of the rows of `trades` whose symbol is in `of`, from the REST answer.
fn expected(server: &Server, of: &[&str], after: u64) -> Vec<(u64, Value)> {
    let all = get(server, "/api/v1/views/trades/rows?limit=100000");
    let first = all["first_seq"].as_u64().expect("first_seq");
    rows_of(&all)
        .into_iter()
        .enumerate()
        .map(|(i, r)| (first + i as u64, r))
        .filter(|(seq, r)| *seq > after && of.contains(&r["symbol"].as_str().unwrap_or("")))
        .collect()
}

/// A message's rows with their seqs.
fn seqd(m: &Value) -> Vec<(u64, Value)> {
    let seqs: Vec<u64> = m["seqs"]
        .as_array()
        .unwrap_or_else(|| panic!("a filtered message has seqs: {m}"))
        .iter()
        .map(|s| s.as_u64().expect("seq"))
        .collect();
    let rows = rows_of(m);
    assert_eq!(seqs.len(), rows.len(), "{m}");
    seqs.into_iter().zip(rows).collect()
}

/// Read `rows` messages until the server closes (the view is dropped): their rows in
/// order, each message after the last one's seq.
fn rows_to_end(ws: &mut Ws, mut cursor: u64) -> Vec<(u64, Value)> {
    let mut out = Vec::new();
    let mut closed_with = None;
    while let Some(m) = next(ws) {
        match m["type"].as_str() {
            Some("rows") => {
                let first = m["first_seq"].as_u64().expect("first_seq");
                let last = m["last_seq"].as_u64().expect("last_seq");
                assert!(first > cursor, "no message twice: {m} after {cursor}");
                let rows = seqd(&m);
                assert!(!rows.is_empty(), "no empty message: {m}");
                assert!(rows.iter().all(|(s, _)| (first..=last).contains(s)), "{m}");
                out.extend(rows);
                cursor = last;
            }
            Some("error") => closed_with = m["message"].as_str().map(str::to_string),
            _ => panic!("unexpected message {m}"),
        }
    }
    let said = closed_with.expect("an error message before the close");
    assert!(said.contains("was dropped"), "{said}");
    out
}

fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.into())).expect("send");
}

#[test]
fn filtered_subscriptions_get_exactly_their_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, broker) = start_on_broker(dir.path(), "ticks", SQL);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let p = producer(broker.bootstrap_servers());
    let mut n = 0i64;
    let mut produce = |count: i64| {
        for _ in 0..count {
            n += 1;
            let symbol = SYMBOLS[(n % 6) as usize];
            let payload = json!({"symbol": symbol, "price": n, "ts": 1_714_557_600_000i64 + n});
            rt.block_on(send(
                &p,
                "ticks",
                0,
                None,
                payload.to_string().as_bytes(),
                0,
            ));
        }
        n as u64
    };
    let limit = Duration::from_secs(60);
    let last_seq = |view: &str| {
        get(&server, &format!("/api/v1/views/{view}"))["last_seq"]
            .as_u64()
            .expect("last_seq")
    };

    let total = produce(30);
    wait_for("the first ticks", limit, || last_seq("trades") == total);

    // Filters on columns the view lacks, on a non-key column of an updating view, or
    // with values of the wrong type are refused before the upgrade.
    for (path, says) in [
        ("trades/subscribe?key.sym=A", "no column 'sym'"),
        ("highs/subscribe?key.high=3", "not a key column"),
        ("trades/subscribe?key.price=cheap", "not an integer"),
    ] {
        match tungstenite::connect(format!("ws://{}/api/v1/views/{path}", server.addr)) {
            Err(tungstenite::Error::Http(res)) => {
                assert_eq!(res.status(), 400, "{path}");
                let body =
                    String::from_utf8_lossy(res.body().as_deref().unwrap_or_default()).to_string();
                assert!(body.contains(says), "{path}: {body}");
            }
            other => panic!("{path}: {:?}", other.map(|(_, r)| r.status())),
        }
    }

    // A and B: the snapshot holds exactly their rows, each with its seq.
    let mut ab = subscribe(
        &server,
        "/api/v1/views/trades/subscribe?key.symbol=A&key.symbol=B",
    );
    let snap = next(&mut ab).expect("snapshot");
    assert_eq!(
        (&snap["type"], &snap["last_seq"]),
        (&json!("snapshot"), &json!(total))
    );
    assert_eq!(seqd(&snap), expected(&server, &["A", "B"], 0));
    // Two columns AND together: price 7 is symbol B's.
    let mut b7 = subscribe(
        &server,
        "/api/v1/views/trades/subscribe?key.symbol=B&key.price=7&key.price=8",
    );
    let snap7 = next(&mut b7).expect("snapshot");
    assert_eq!(seqd(&snap7), [(7, json!({"symbol": "B", "price": 7}))]);
    // An updating view by its key: C's current row.
    let mut c_high = subscribe(&server, "/api/v1/views/highs/subscribe?key.symbol=C");
    let c_snap = next(&mut c_high).expect("snapshot");
    assert_eq!(c_snap["type"], "snapshot");
    let c_rows = |m: &Value| -> BTreeMap<String, Value> {
        rows_of(m)
            .into_iter()
            .map(|r| (r["symbol"].as_str().unwrap_or("").to_string(), r))
            .collect()
    };
    let highs_of = |of: &str| -> BTreeMap<String, Value> {
        c_rows(&get(&server, "/api/v1/views/highs/rows"))
            .into_iter()
            .filter(|(s, _)| s == of)
            .collect()
    };
    assert_eq!(c_rows(&c_snap), highs_of("C"));
    assert_eq!(c_rows(&c_snap).len(), 1);

    // Resume from the middle: A's rows after seq 12 only.
    let mut a_resumed = subscribe(
        &server,
        "/api/v1/views/trades/subscribe?key.symbol=A&since_seq=12",
    );
    let resumed = next(&mut a_resumed).expect("rows after 12");
    assert_eq!(
        (
            &resumed["type"],
            &resumed["first_seq"],
            &resumed["last_seq"]
        ),
        (&json!("rows"), &json!(13), &json!(total))
    );
    assert_eq!(seqd(&resumed), expected(&server, &["A"], 12));

    // Thirty more: the live messages carry exactly the followed symbols' rows.
    let total = produce(30);
    wait_for("the second ticks", limit, || last_seq("trades") == total);
    let mut ab_rows = seqd(&snap);
    let want_ab = expected(&server, &["A", "B"], 0);
    wait_for("A's and B's rows", limit, || {
        let m = next(&mut ab).expect("rows");
        assert_eq!(m["type"], "rows", "{m}");
        ab_rows.extend(seqd(&m));
        ab_rows.len() >= want_ab.len()
    });
    assert_eq!(ab_rows, want_ab);
    // The updating view: C's row changed in place; nothing of another symbol came.
    let mut c_table = c_rows(&c_snap);
    wait_for("C's latest high", limit, || {
        let m = next(&mut c_high).expect("a change");
        let ops = m["ops"].as_array().cloned().unwrap_or_default();
        for ((_, row), op) in seqd(&m).into_iter().zip(ops) {
            let s = row["symbol"].as_str().unwrap_or("").to_string();
            assert_eq!(s, "C", "{m}");
            if op == "delete" {
                c_table.remove(&s);
            } else {
                c_table.insert(s, row);
            }
        }
        c_table == highs_of("C")
    });

    // Change the set without reconnecting: a snapshot of C and D, then their rows only.
    send_text(
        &mut ab,
        r#"{"type":"subscribe","keys":{"symbol":["D","C"]}}"#,
    );
    // Every A and B row came already: the next message is the new snapshot.
    let cd = next(&mut ab).expect("the new snapshot");
    assert_eq!(
        (&cd["type"], &cd["last_seq"]),
        (&json!("snapshot"), &json!(total))
    );
    assert_eq!(seqd(&cd), expected(&server, &["C", "D"], 0));
    // A refused change leaves the subscription as it was.
    for bad in [
        r#"{"type":"subscribe","keys":{"nope":["x"]}}"#,
        r#"{"type":"unsubscribe"}"#,
        "not json",
    ] {
        send_text(&mut ab, bad);
        let m = next(&mut ab).expect("rejected");
        assert_eq!(m["type"], "rejected", "{bad}: {m}");
    }
    let before_third = total;
    let total = produce(24);
    wait_for("the third ticks", limit, || last_seq("trades") == total);

    // Dropping the view ends every subscription: read each to its end.
    let (status, body) = call("DELETE", &server.url("/api/v1/views/trades"), None, None);
    assert_eq!(status, 200, "{body}");
    let after = rows_to_end(&mut ab, before_third);
    let of = |syms: &[&str], from: u64| -> Vec<(u64, i64)> {
        (from + 1..=total)
            .filter(|k| syms.contains(&SYMBOLS[(*k % 6) as usize]))
            .map(|k| (k, k as i64))
            .collect()
    };
    let prices = |rows: &[(u64, Value)]| -> Vec<(u64, i64)> {
        rows.iter()
            .map(|(s, r)| (*s, r["price"].as_i64().expect("price")))
            .collect()
    };
    assert_eq!(prices(&after), of(&["C", "D"], before_third));
    // Price n is tick n, so seq n: the resumed A subscriber got all of A's after 12.
    let mut a_all = seqd(&resumed);
    a_all.extend(rows_to_end(&mut a_resumed, 30));
    assert_eq!(prices(&a_all), of(&["A"], 12));
    assert!(rows_to_end(&mut b7, 30).is_empty());
    server.stop();
    rt.block_on(broker.stop());
}
