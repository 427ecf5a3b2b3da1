//! Malformed requests against a running `weir` (the real binary, tokens on) for a bounded
//! time: random methods, bodies, content types, query strings and names on every route of
//! the OpenAPI document; bad JSON; good, bad and huge batches of events to `http` sources;
//! deeply nested, huge and broken SQL to POST /api/v1/sql and /api/v1/query; invalid
//! UTF-8 in bodies, paths and query strings; broken HTTP (bad headers and lengths,
//! truncated requests); oversized and broken WebSocket frames on the subscription routes.
//! No request may get a 5xx or no answer at all, every error the service makes must be a
//! JSON error, the server log must hold no panic, and the server must still answer
//! /health at the end.
//!
//! 20 s by default; `WEIR_FUZZ_SECS=600` runs longer. The seed is printed;
//! `WEIR_FUZZ_SEED=<seed>` replays a run's requests in the same order.

use crate::crash::weir_bin;
use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A bounded generator with two views over it, and two `http` sources (events in over
/// the API, on the embedded Kafka broker) with a view each.
const SQL: &str = "\
CREATE SOURCE dl (event_id VARCHAR, ts TIMESTAMP, region VARCHAR, status VARCHAR, \
  speed_mbps DOUBLE, WATERMARK FOR ts AS ts - INTERVAL '200' MILLISECOND) \
  WITH (connector = 'generator', kind = 'downloads', seed = '7', rows = '4000', \
  'rows.per.second' = '2000', partitions = '2', start = '2024-01-01T00:00:00Z');
CREATE MATERIALIZED VIEW health AS SELECT window_start, window_end, region, \
  count(*) AS downloads FROM TUMBLE(dl, ts, INTERVAL '250' MILLISECOND) \
  GROUP BY window_start, window_end, region;
CREATE MATERIALIZED VIEW raw AS SELECT event_id, ts, region, status, speed_mbps FROM dl;
CREATE SOURCE clicks (id BIGINT NOT NULL, page TEXT, ts TIMESTAMP NOT NULL, \
  WATERMARK FOR ts AS ts) WITH (connector = 'http', format = 'json');
CREATE SOURCE strict (id BIGINT NOT NULL, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts) \
  WITH (connector = 'http', 'bad.records' = 'fail');
CREATE MATERIALIZED VIEW seen AS SELECT id, page FROM clicks;
";

const ADMIN: &str = "fuzz-admin";
const READ: &str = "fuzz-read";

/// splitmix64: small, seedable, good enough to pick cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// Up to `max` random bytes.
    fn some_bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        self.bytes(n)
    }

    /// Up to `max` printable ASCII characters.
    fn some_text(&mut self, max: usize) -> String {
        let n = self.below(max);
        self.text(n)
    }

    /// Printable ASCII.
    fn text(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b' ' + self.below(95) as u8))
            .collect()
    }
}

/// One request to send, as raw bytes.
struct Case {
    what: String,
    bytes: Vec<u8>,
    /// Close our sending side after the bytes (a truncated request).
    truncated: bool,
    /// Whether the server must answer: broken HTTP may get a 400 or just a close.
    must_answer: bool,
    /// Whether a 4xx must be a JSON error: any the service makes is; hyper answers broken
    /// HTTP (and HEAD gets no body) without one.
    json_errors: bool,
}

#[derive(Debug)]
enum Outcome {
    /// The status, and whether the body is a JSON error (`{"error": {"code": ...}}`).
    Status(u16, bool),
    /// The server closed the connection without a status line.
    NoAnswer,
    /// Nothing within the read timeout.
    Hung,
    /// Could not connect: the server is gone.
    Down(std::io::Error),
}

/// The API's routes from its OpenAPI document: (method, path template).
fn routes(addr: SocketAddr) -> Vec<(String, String)> {
    let req = format!(
        "GET /api/v1/openapi.json HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {READ}\r\n\
         Connection: close\r\n\r\n"
    );
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    tcp.write_all(req.as_bytes()).expect("request");
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).expect("the OpenAPI document");
    let answer = String::from_utf8(answer).expect("utf-8");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let doc: Value = serde_json::from_str(body).expect("JSON");
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("methods").keys() {
            out.push((method.to_uppercase(), path.clone()));
        }
    }
    assert!(out.len() > 10, "{out:?}");
    out
}

fn fill_name(rng: &mut Rng) -> String {
    match rng.below(12) {
        0 => "health".into(),
        1 => rng.pick(&["raw", "seen"]).to_string(),
        2 => rng.pick(&["dl", "clicks", "strict"]).to_string(),
        3 => "nope".into(),
        4 => "%FF%FE%FD".into(),
        5 => "%00".into(),
        6 => "a%2Fb".into(),
        7 => "..".into(),
        8 => "x".repeat(rng.below(20_000)),
        9 => "%E2%82%AC%C3".into(),
        10 => percent(&rng.some_bytes(40)),
        // Characters a path may hold as they are.
        _ => rng
            .some_text(30)
            .chars()
            .map(
                |c| match c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@".contains(c) {
                    true => c,
                    false => '_',
                },
            )
            .collect(),
    }
}

fn percent(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

fn query_string(rng: &mut Rng) -> Vec<u8> {
    let parts = [
        "limit=",
        "since_seq=",
        "since=",
        "window=",
        "order=",
        "token=",
        "",
        "%ZZ=",
        "a=%FF%FE",
    ];
    let values: [&str; 14] = [
        "1",
        "-1",
        "0",
        "99999999999999999999999",
        "abc",
        "latest",
        "-downloads",
        "-",
        "2024-01-01T00:00:00Z",
        "2024-13-45T99:99:99Z",
        "%FF",
        "",
        "nope",
        "18446744073709551615",
    ];
    let mut q = Vec::new();
    for i in 0..rng.below(5) {
        if i > 0 {
            q.push(b'&');
        }
        q.extend_from_slice(rng.pick(&parts).as_bytes());
        q.extend_from_slice(rng.pick(&values).as_bytes());
    }
    if rng.chance(5) {
        // Raw bytes the request line may not hold.
        q.extend_from_slice(&[0xFF, 0xFE, b' ', 0x01]);
    }
    q
}

const KEYWORDS: [&str; 40] = [
    "SELECT",
    "FROM",
    "WHERE",
    "GROUP",
    "BY",
    "ORDER",
    "LIMIT",
    "CREATE",
    "MATERIALIZED",
    "VIEW",
    "SOURCE",
    "SINK",
    "TABLE",
    "DROP",
    "AS",
    "WITH",
    "JOIN",
    "ON",
    "TUMBLE",
    "HOP",
    "SESSION",
    "INTERVAL",
    "'1' SECOND",
    "count(*)",
    "health",
    "raw",
    "dl",
    "(",
    ")",
    ",",
    ";",
    "*",
    "=",
    "'",
    "\"",
    "--",
    "/*",
    "NULL",
    "CASE",
    "EMIT",
];

/// SQL to send: deep, huge, broken or random.
fn sql(rng: &mut Rng) -> Vec<u8> {
    let n = *rng.pick(&[100, 1_000, 10_000, 100_000]);
    let s = match rng.below(16) {
        0 => format!("SELECT {}1{}", "(".repeat(n), ")".repeat(n)),
        1 => format!("SELECT {}", "(".repeat(n)),
        2 => format!(
            "SELECT * FROM {}SELECT 1{}",
            "(SELECT * FROM ".repeat(n.min(20_000)),
            ") t".repeat(n.min(20_000))
        ),
        3 => format!("SELECT 1 WHERE {}1 = 1", "1 = 1 OR ".repeat(n.min(30_000))),
        4 => format!(
            "SELECT {}1{}",
            "CASE WHEN 1 = 1 THEN ".repeat(n.min(20_000)),
            " END".repeat(n.min(20_000))
        ),
        5 => format!("SELECT {}1{}", "abs(".repeat(n), ")".repeat(n)),
        6 => format!("SELECT '{}'", "a".repeat(10 << 20)),
        7 => "SELECT 1;".repeat(n.min(30_000)),
        8 => format!("SELECT {}", "-".repeat(n)),
        9 => format!("SELECT 1 + {}1", "- ".repeat(n)),
        10 => "SELECT 'unterminated".into(),
        11 => "SELECT /* unterminated".into(),
        12 => rng
            .pick(&[
                "SELECT * FROM health LIMIT 5",
                "SELECT count(*) FROM raw",
                "SHOW VIEWS",
                "DESCRIBE health",
                "EXPLAIN SELECT * FROM raw",
                "SELECT region, count(*) FROM raw GROUP BY region ORDER BY 2 DESC",
                "SELECT * FROM raw r1 JOIN raw r2 ON r1.region = r2.region LIMIT 10",
                "SELECT repeat('x', 1000000000)",
                "CREATE MATERIALIZED VIEW fz AS SELECT region FROM raw",
                "DROP VIEW fz",
                "SELECT arrow_cast(1, 'Nope')",
                "SELECT 1/0",
                "SELECT CAST('x' AS INT)",
                "SELECT * FROM generate_series(1, 100000000000)",
            ])
            .to_string(),
        13 => {
            let mut b = b"SELECT '".to_vec();
            b.extend(rng.some_bytes(200));
            b.push(b'\'');
            return b;
        }
        _ => (0..rng.below(300))
            .map(|_| *rng.pick(&KEYWORDS))
            .collect::<Vec<_>>()
            .join(" "),
    };
    s.into_bytes()
}

/// Events for an `http` source: JSON lines or an array, good, bad and odd.
fn events(rng: &mut Rng) -> Vec<u8> {
    let one = |rng: &mut Rng| -> String {
        match rng.below(8) {
            0 => format!(
                "{{\"id\": {}, \"page\": \"/p\", \"ts\": \"2024-01-01T00:00:00Z\"}}",
                rng.next() as i64
            ),
            1 => "{\"id\": null, \"ts\": \"2024-01-01T00:00:00Z\"}".into(),
            2 => "{\"id\": 1, \"ts\": \"not a time\"}".into(),
            3 => "{\"id\": 1e400, \"ts\": 99999999999999999999}".into(),
            4 => format!("{{\"id\": 1, \"page\": {:?}}}", rng.some_text(100)),
            5 => "[1, 2, 3]".into(),
            6 => format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000)),
            _ => rng.some_text(80),
        }
    };
    let n = *rng.pick(&[1, 10, 1000, 20_000]);
    let items: Vec<String> = (0..n).map(|_| one(rng)).collect();
    match rng.chance(50) {
        true => items.join("\n").into_bytes(),
        false => format!("[{}]", items.join(",")).into_bytes(),
    }
}

/// A request body: random, invalid UTF-8, bad JSON, deep JSON, too large, or SQL (in
/// JSON or not).
fn body(rng: &mut Rng, sql_route: bool) -> (Vec<u8>, &'static str) {
    if sql_route && rng.chance(60) {
        let s = sql(rng);
        return if rng.chance(30) {
            let text = String::from_utf8_lossy(&s).into_owned();
            (
                serde_json::to_vec(&serde_json::json!({ "sql": text })).unwrap_or_default(),
                "application/json",
            )
        } else {
            (s, "text/plain")
        };
    }
    match rng.below(10) {
        0 => (vec![], ""),
        1 => (rng.some_bytes(4096), "random bytes"),
        2 => (
            vec![0xC3, 0x28, 0xA0, 0xA1, 0xF0, 0x28, 0x8C, 0xBC],
            "invalid utf-8",
        ),
        3 => (b"{\"sql\": ".to_vec(), "truncated json"),
        4 => (
            rng.pick(&[
                &b"{\"sql\": 5}"[..],
                b"{\"sql\": null}",
                b"{\"sql\": [\"SELECT 1\"]}",
                b"[]",
                b"null",
                b"{\"sql\": \"\\ud800\"}",
                b"{\"sql\": \"SELECT 1\", \"sql\": \"SELECT 2\"}",
                b"{}",
            ])
            .to_vec(),
            "odd json",
        ),
        5 => {
            let n = *rng.pick(&[1_000, 100_000]);
            (
                format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes(),
                "deep json",
            )
        }
        6 => (vec![b'a'; 2 << 20], "too large"),
        7 => (
            format!("{{\"sql\": {:?}}}", rng.some_text(200)).into_bytes(),
            "json text",
        ),
        _ => (rng.some_text(500).into_bytes(), "random text"),
    }
}

fn token_header(rng: &mut Rng) -> (String, Option<&'static str>) {
    match rng.below(10) {
        0..=4 => (format!("Authorization: Bearer {ADMIN}\r\n"), None),
        5 | 6 => (format!("Authorization: Bearer {READ}\r\n"), None),
        7 => (String::new(), None),
        8 => ("Authorization: Bearer wrong\r\n".into(), None),
        _ => (String::new(), Some(ADMIN)),
    }
}

const CONTENT_TYPES: [&str; 9] = [
    "text/plain",
    "application/json",
    "application/json; charset=utf-8",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "text/plain; charset=latin1",
    "application/octet-stream",
    "",
    "a/b/c; ;;=",
];

/// A well-formed HTTP/1.1 request with fuzzed method, path, query, headers and body.
fn api_case(rng: &mut Rng, routes: &[(String, String)]) -> Case {
    let (method, template) = rng.pick(routes).clone();
    let extra = [
        "/",
        "/docs",
        "/assets/app.js",
        "/assets/..%2F..%2FCargo.toml",
        "/api/v1/openapi.json",
        "/api/v1/nope",
        "/api/v1/views/health/rows/extra",
        "//api//v1//views",
    ];
    let template = if rng.chance(10) {
        rng.pick(&extra).to_string()
    } else {
        template
    };
    let path = template.replace("{name}", &fill_name(rng));
    let method = match rng.below(10) {
        0..=5 => method,
        6..=8 => rng
            .pick(&["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
            .to_string(),
        _ => rng.pick(&["FOO", "TRACE", "CONNECT", "get"]).to_string(),
    };
    let sql_route = path == "/api/v1/sql" || path == "/api/v1/query";
    let (body, kind) = if method == "GET" && !rng.chance(20) {
        (vec![], "")
    } else if path.ends_with("/events") && rng.chance(70) {
        (events(rng), "events")
    } else {
        body(rng, sql_route)
    };
    let content_type = if kind == "application/json" || kind == "text/plain" {
        kind
    } else {
        rng.pick(&CONTENT_TYPES)
    };
    let (auth, query_token) = token_header(rng);
    let mut query = query_string(rng);
    if let Some(t) = query_token {
        if !query.is_empty() {
            query.push(b'&');
        }
        query.extend_from_slice(format!("token={t}").as_bytes());
    }
    let mut bytes = format!("{method} {path}").into_bytes();
    if !query.is_empty() {
        bytes.push(b'?');
        bytes.extend_from_slice(&query);
    }
    bytes.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    bytes.extend_from_slice(auth.as_bytes());
    if !content_type.is_empty() {
        bytes.extend_from_slice(format!("Content-Type: {content_type}\r\n").as_bytes());
    }
    bytes.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    bytes.extend_from_slice(&body);
    let what = format!(
        "{method} {}{} (content type {content_type:?}, {} body of {} bytes, auth {:?})",
        cut(&path),
        if query.is_empty() {
            String::new()
        } else {
            format!("?{}", cut(&String::from_utf8_lossy(&query)))
        },
        if kind.is_empty() { "no" } else { kind },
        body.len(),
        auth.trim()
    );
    // A request line with bytes it may not hold gets hyper's 400 or a close.
    let well_formed = !query.contains(&0xFF);
    // A body may be refused (401, 413) before it is read, and closing a socket with unread
    // bytes resets it, which can lose the answer: a body that fits in the server's first
    // read is all read.
    let must_answer = well_formed && body.len() <= 4096;
    Case {
        json_errors: well_formed && method != "HEAD",
        what,
        bytes,
        truncated: false,
        must_answer,
    }
}

/// Broken HTTP: truncated requests, bad lengths, bad headers, invalid bytes.
fn broken_case(rng: &mut Rng, routes: &[(String, String)]) -> Case {
    let auth = format!("Authorization: Bearer {ADMIN}\r\n");
    let raw: (String, Vec<u8>) = match rng.below(10) {
        0 => {
            let mut c = api_case(rng, routes);
            let at = rng.below(c.bytes.len());
            c.bytes.truncate(at);
            return Case {
                what: format!("truncated at byte {at}: {}", c.what),
                bytes: c.bytes,
                truncated: true,
                must_answer: false,
                json_errors: false,
            };
        }
        1 => (
            "Content-Length: abc".into(),
            format!("POST /api/v1/sql HTTP/1.1\r\n{auth}Content-Length: abc\r\n\r\nSELECT 1").into(),
        ),
        2 => (
            "two Content-Lengths".into(),
            format!(
                "POST /api/v1/query HTTP/1.1\r\n{auth}Content-Length: 8\r\nContent-Length: 3\r\n\r\nSELECT 1"
            )
            .into(),
        ),
        3 => (
            "bad chunked body".into(),
            format!(
                "POST /api/v1/sql HTTP/1.1\r\n{auth}Transfer-Encoding: chunked\r\n\r\nzz\r\nSELECT 1\r\n0\r\n\r\n"
            )
            .into(),
        ),
        4 => (
            "chunked and Content-Length".into(),
            format!(
                "POST /api/v1/sql HTTP/1.1\r\n{auth}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n8\r\nSELECT 1\r\n0\r\n\r\n"
            )
            .into(),
        ),
        5 => {
            let mut b = b"GET /api/v1/views/".to_vec();
            b.extend(rng.bytes(8));
            b.extend_from_slice(format!(" HTTP/1.1\r\n{auth}\r\n").as_bytes());
            ("raw bytes in the path".into(), b)
        }
        6 => {
            let mut b = format!("GET /api/v1/views HTTP/1.1\r\n{auth}X-Bad: ").into_bytes();
            b.extend(rng.bytes(16));
            b.extend_from_slice(b"\r\n\r\n");
            ("raw bytes in a header".into(), b)
        }
        7 => (
            "a header line without a colon".into(),
            format!("GET /health HTTP/1.1\r\n{auth}no colon here\r\n\r\n").into(),
        ),
        8 => (
            "huge headers".into(),
            format!(
                "GET /health HTTP/1.1\r\n{auth}X-Big: {}\r\n\r\n",
                "a".repeat(1 << 20)
            )
            .into(),
        ),
        _ => (
            "a broken request line".into(),
            rng.pick(&[
                &b"GET\r\n\r\n"[..],
                b"GET / HTTP/9.9\r\n\r\n",
                b" / HTTP/1.1\r\n\r\n",
                b"GET /health HTTP/1.1 extra\r\n\r\n",
                b"\r\n\r\n\r\n",
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            ])
            .to_vec(),
        ),
    };
    Case {
        what: raw.0,
        bytes: raw.1,
        truncated: true,
        must_answer: false,
        json_errors: false,
    }
}

fn cut(s: &str) -> String {
    if s.len() <= 120 {
        return s.to_string();
    }
    let mut end = 120;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...({} bytes)", &s[..end], s.len())
}

fn send(addr: SocketAddr, case: &Case) -> Outcome {
    let mut tcp = match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
        Ok(t) => t,
        Err(e) => return Outcome::Down(e),
    };
    // Past the server's request timeout (30 s), so a hang shows as one.
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(45)));
    let _ = tcp.set_write_timeout(Some(Duration::from_secs(45)));
    // The server may answer (413, 400) and close before taking the whole body.
    let _ = tcp.write_all(&case.bytes);
    if case.truncated {
        let _ = tcp.shutdown(Shutdown::Write);
    }
    // The whole answer (Connection: close), or what came before a reset.
    let mut got = Vec::new();
    let mut buf = [0u8; 64 << 10];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if got.is_empty() {
                    return Outcome::Hung;
                }
                break;
            }
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&got);
    let Some(status) = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
    else {
        return Outcome::NoAnswer;
    };
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let json_error = head
        .to_ascii_lowercase()
        .contains("\r\ncontent-type: application/json")
        && serde_json::from_str::<Value>(body).is_ok_and(|v| v["error"]["code"].is_string());
    Outcome::Status(status, json_error)
}

/// GET `path` (no token): the whole response.
fn whole_response(addr: SocketAddr, path: &str) -> String {
    let Ok(mut tcp) = TcpStream::connect(addr) else {
        return "cannot connect".into();
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let mut got = Vec::new();
    let _ = tcp.write_all(req.as_bytes());
    let _ = tcp.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

/// A subscription that is sent an oversized message, or broken frames: the server must
/// close it (and not fall over). Returns a complaint, if any.
fn websocket_case(rng: &mut Rng, addr: SocketAddr) -> (String, Option<String>) {
    use tungstenite::Message;
    let path = if rng.chance(50) {
        "/api/v1/status/subscribe".to_string()
    } else {
        format!(
            "/api/v1/views/{}/subscribe",
            rng.pick(&["health", "raw", "seen"])
        )
    };
    let tcp = match TcpStream::connect(addr) {
        Ok(t) => t,
        Err(e) => return (path, Some(format!("cannot connect: {e}"))),
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
    let since = *rng.pick(&[
        "",
        "&since_seq=0",
        "&since_seq=18446744073709551615",
        "&since_seq=-1",
        "&since_seq=x",
    ]);
    let url = format!("ws://{addr}{path}?token={READ}{since}");
    let mut ws = match tungstenite::client(url.as_str(), tcp) {
        Ok((ws, _)) => ws,
        // A view dropped by an earlier request is a 404 before the upgrade.
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r)))
            if r.status().as_u16() < 500 =>
        {
            return (path, None);
        }
        Err(e) => return (path, Some(format!("handshake: {e}"))),
    };
    let _ = ws
        .get_mut()
        .set_read_timeout(Some(Duration::from_millis(500)));
    let (what, sent) = match rng.below(4) {
        0 => (
            "an oversized text message",
            ws.send(Message::Text("x".repeat(1 << 20).into())),
        ),
        1 => (
            "an oversized binary message",
            ws.send(Message::Binary(vec![7u8; 256 << 10].into())),
        ),
        2 => {
            // An unmasked frame with a reserved opcode: a protocol error.
            let mut frame = vec![0x83, 0x05];
            frame.extend(rng.bytes(5));
            (
                "a frame with a reserved opcode",
                ws.get_mut()
                    .write_all(&frame)
                    .map_err(tungstenite::Error::Io),
            )
        }
        _ => {
            // A masked text frame claiming 2^62 bytes.
            let mut frame = vec![0x81, 0xFF];
            frame.extend_from_slice(&(1u64 << 62).to_be_bytes());
            frame.extend(rng.bytes(4));
            frame.extend(rng.some_bytes(64));
            (
                "a frame claiming 2^62 bytes",
                ws.get_mut()
                    .write_all(&frame)
                    .map_err(tungstenite::Error::Io),
            )
        }
    };
    let what = format!("{what} to {path}?token={READ}{since}");
    if sent.is_err() {
        // Closed while we were sending: refused.
        return (what, None);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        match ws.read() {
            Ok(Message::Close(_)) => return (what, None),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                continue;
            }
            Err(_) => return (what, None),
        }
    }
    (what, Some("the server did not close the socket".into()))
}

/// The `weir` process, killed if the test ends before it stopped.
struct Weir(Child);

impl Drop for Weir {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `weir run` with tokens, its log in `log`; returns it and the address it serves at.
fn start(dir: &Path, log: &Path) -> (Weir, SocketAddr) {
    let config = dir.join("weir.toml");
    std::fs::write(
        &config,
        format!("[server]\nadmin_tokens = ['{ADMIN}']\nread_tokens = ['{READ}']\n"),
    )
    .expect("config");
    let sql = dir.join("fuzz.sql");
    std::fs::write(&sql, SQL).expect("sql");
    let out = std::fs::File::create(log).expect("log");
    let child = Weir(
        Command::new(weir_bin())
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--progress-interval")
            .arg("0s")
            .arg(&sql)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("starting weir"),
    );
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(at) = text.find("serving the API and dashboard at http://") {
            let rest = &text[at + "serving the API and dashboard at http://".len()..];
            let addr = rest.split('/').next().expect("an address");
            return (child, addr.parse().expect("a socket address"));
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "weir did not start serving:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn malformed_requests_get_no_5xx_and_no_panic() {
    let seed = std::env::var("WEIR_FUZZ_SEED")
        .ok()
        .map(|s| s.parse::<u64>().expect("WEIR_FUZZ_SEED is a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let secs: u64 = std::env::var("WEIR_FUZZ_SECS")
        .ok()
        .map(|s| s.parse().expect("WEIR_FUZZ_SECS is a number of seconds"))
        .unwrap_or(20);
    println!("fuzzing the API for {secs} s with WEIR_FUZZ_SEED={seed}");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("weir.log");
    let (mut child, addr) = start(dir.path(), &log);
    let routes = routes(addr);
    let mut rng = Rng(seed);
    let mut offenders: Vec<String> = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut sent = 0usize;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) && offenders.len() < 50 {
        sent += 1;
        if rng.chance(3) {
            let (what, complaint) = websocket_case(&mut rng, addr);
            if let Some(c) = complaint {
                offenders.push(format!("#{sent} {what}: {c}"));
            }
            continue;
        }
        let case = if rng.chance(15) {
            broken_case(&mut rng, &routes)
        } else {
            api_case(&mut rng, &routes)
        };
        let outcome = send(addr, &case);
        match outcome {
            Outcome::Status(s, json_error) => {
                *statuses.entry(s).or_default() += 1;
                // 503 with its reasons is /ready's answer while some source has not
                // delivered anything.
                let ready = case
                    .what
                    .split(' ')
                    .nth(1)
                    .is_some_and(|p| p.starts_with("/ready"));
                let not_ready = s == 503 && ready;
                if s >= 500 && !not_ready {
                    offenders.push(format!("#{sent} {}: {s}", case.what));
                } else if s >= 400 && !not_ready && case.json_errors && !json_error {
                    offenders.push(format!("#{sent} {}: {s} without a JSON error", case.what));
                }
            }
            Outcome::NoAnswer if !case.must_answer => {}
            Outcome::Down(e) => {
                offenders.push(format!("#{sent} {}: the server is down ({e})", case.what));
                break;
            }
            other => offenders.push(format!("#{sent} {}: {other:?}", case.what)),
        }
    }
    println!(
        "{sent} requests in {:?}; statuses {statuses:?}",
        started.elapsed()
    );
    // Still serving, correctly.
    let health = whole_response(addr, "/health");
    // Stopped as Ctrl-C would; then whatever it logged while stopping is in the log too.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.0.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(child);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let bad_lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.contains("panicked")
                || l.contains("overflowed its stack")
                || l.contains("request failed")
        })
        .collect();
    for o in &offenders {
        println!("OFFENDER {o}");
    }
    for l in &bad_lines {
        println!("LOG {l}");
    }
    assert!(
        offenders.is_empty() && bad_lines.is_empty(),
        "WEIR_FUZZ_SEED={seed}: {} offending requests, {} panics or internal errors in the \
         server log (above)",
        offenders.len(),
        bad_lines.len()
    );
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("{\"status\":\"ok\"}"),
        "WEIR_FUZZ_SEED={seed}: /health after the run: {health:?}"
    );
}
