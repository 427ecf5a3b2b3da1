//! The HTTP and WebSocket API against a running `weir run` (in process, on a free port):
//! exact rows over REST and WebSocket against the batch answer, resuming with since_seq,
//! SQL errors with positions, DROP conflicts, subscriptions to dropped views, the OpenAPI
//! document against the routes, metrics, readiness, tokens and limits, slow subscribers,
//! statements, rows and seq numbering across a restart (checkpoints), and statements kept
//! in Postgres with `[database] url`.

use serde_json::{Value, json};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket, stream::MaybeTlsStream};
use weir_server::app::{self, Args};

mod docs;
mod fuzz;
mod ingest;
mod rooms;
mod slow_clients;
mod updating;

/// A `weir run` in a thread of its own, stopped on drop.
struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    fn start(args: Args) -> Server {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        // As `weir` runs: threads with the stack statements at the depth limit need.
        let thread = std::thread::Builder::new()
            .stack_size(weir_engine::sql::depth::STACK_SIZE)
            .spawn(move || {
                let rt = app::runtime(Some(2))?;
                rt.block_on(app::run(
                    &args,
                    false,
                    async move {
                        let _ = stop_rx.await;
                    },
                    Some(addr_tx),
                ))
            })
            .expect("start the server thread");
        let addr = match addr_rx.blocking_recv() {
            Ok(a) => a,
            Err(_) => panic!("weir did not start: {:?}", thread.join()),
        };
        Server {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join()
                .expect("join")
                .expect("weir run ended with an error");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// (status, body as JSON or as a string).
pub(crate) fn call(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let a = agent();
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut res = match (method, body) {
        ("GET", _) => {
            let mut r = a.get(url);
            if let Some(h) = &auth {
                r = r.header("Authorization", h);
            }
            r.call()
        }
        ("DELETE", _) => {
            let mut r = a.delete(url);
            if let Some(h) = &auth {
                r = r.header("Authorization", h);
            }
            r.call()
        }
        (_, b) => {
            let mut r = a.post(url).header("Content-Type", "text/plain");
            if let Some(h) = &auth {
                r = r.header("Authorization", h);
            }
            r.send(b.unwrap_or(""))
        }
    }
    .expect("HTTP request");
    let status = res.status().as_u16();
    let text = res.body_mut().read_to_string().expect("body");
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

fn get(s: &Server, path: &str) -> Value {
    let (status, v) = call("GET", &s.url(path), None, None);
    assert_eq!(status, 200, "GET {path}: {v}");
    v
}

fn post(s: &Server, path: &str, body: &str) -> (u16, Value) {
    call("POST", &s.url(path), None, Some(body))
}

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

fn subscribe(s: &Server, path: &str) -> Ws {
    let (ws, _) = tungstenite::connect(format!("ws://{}{path}", s.addr)).expect("connect ws");
    if let MaybeTlsStream::Plain(t) = ws.get_ref() {
        t.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
    }
    ws
}

/// The next JSON message, or None when the server closed.
fn next(ws: &mut Ws) -> Option<Value> {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).expect("json")),
            Ok(Message::Close(_)) => return None,
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return None;
            }
            Err(tungstenite::Error::Protocol(_)) | Err(tungstenite::Error::Io(_)) => return None,
            Err(e) => panic!("websocket: {e}"),
        }
    }
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "no {what} after {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

const ROWS: u64 = 4000;

fn pipeline_sql(dir: &Path) -> PathBuf {
    let sql = format!(
        "CREATE SOURCE dl (event_id VARCHAR, ts TIMESTAMP, region VARCHAR, status VARCHAR, \
           speed_mbps DOUBLE, WATERMARK FOR ts AS ts - INTERVAL '200' MILLISECOND) \
         WITH (connector = 'generator', kind = 'downloads', seed = '7', rows = '{ROWS}', \
           'rows.per.second' = '2000', partitions = '2', start = '2024-01-01T00:00:00Z'); \n\
         CREATE MATERIALIZED VIEW health AS SELECT window_start, window_end, region, \
           count(*) AS downloads, count(*) FILTER (WHERE status = 'failed') AS failures, \
           avg(speed_mbps) AS avg_speed \
           FROM TUMBLE(dl, ts, INTERVAL '250' MILLISECOND) GROUP BY window_start, window_end, region;\n\
         CREATE MATERIALIZED VIEW raw WITH ('retention.rows' = '100000') AS \
           SELECT event_id, ts, region, status, speed_mbps FROM dl;\n"
    );
    let path = dir.join("pipeline.sql");
    std::fs::write(&path, sql).expect("write sql");
    path
}

fn args(dir: &Path, files: Vec<PathBuf>, config: Option<PathBuf>) -> Args {
    Args {
        paths: files,
        config,
        data_dir: Some(dir.join("data")),
        progress_interval: Some("0s".into()),
        listen: Some("0.0.0.0:0".into()),
        ..Args::default()
    }
}

/// A server on a loopback port with this weir.toml.
fn start_with_config(dir: &Path, toml: &str, sql: PathBuf) -> Server {
    let config = dir.join("weir.toml");
    std::fs::write(&config, toml).expect("config");
    let mut a = args(dir, vec![sql], Some(config));
    a.listen = Some("127.0.0.1:0".into());
    Server::start(a)
}

/// `sql` run by a server whose Kafka is an in-process broker of one partition per topic,
/// holding `topic` (the test produces to it); the broker goes with the server.
fn start_on_broker(
    dir: &Path,
    topic: &str,
    sql: &str,
) -> (Server, weir_server::embedded_kafka::EmbeddedKafka) {
    let broker = weir_server::embedded_kafka::EmbeddedKafka::start(
        &weir_server::config::EmbeddedSection {
            enabled: true,
            partitions: 1,
            feeds: vec![],
        },
        &std::collections::BTreeSet::from([topic.to_string()]),
        dir,
    )
    .expect("start the broker");
    let file = dir.join("pipeline.sql");
    std::fs::write(&file, sql).expect("write sql");
    let server = start_with_config(
        dir,
        &format!(
            "[kafka]\n\"bootstrap.servers\" = \"{}\"\n",
            broker.bootstrap_servers()
        ),
        file,
    );
    (server, broker)
}

fn view_names(s: &Server) -> Vec<String> {
    get(s, "/api/v1/views")["views"]
        .as_array()
        .expect("views")
        .iter()
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .collect()
}

fn rows_of(v: &Value) -> Vec<Value> {
    v["rows"].as_array().cloned().unwrap_or_default()
}

/// Rows as sorted strings with floats rounded, for comparing streaming and batch answers.
fn normalized(rows: &[Value], cols: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = rows
        .iter()
        .map(|r| {
            cols.iter()
                .map(|c| match &r[*c] {
                    Value::Number(n) if n.is_f64() => {
                        format!("{:.9}", n.as_f64().unwrap_or_default())
                    }
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect();
    out.sort();
    out
}

#[test]
fn rows_over_rest_and_websocket_equal_the_batch_answer_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = pipeline_sql(dir.path());
    let server = Server::start(args(dir.path(), vec![file.clone()], None));
    assert!(
        server.addr.ip().is_loopback(),
        "no tokens: loopback only, got {}",
        server.addr
    );

    // Subscribe at once; the snapshot plus live batches must number every row once.
    let mut ws = subscribe(&server, "/api/v1/views/health/subscribe");
    let mut streamed: Vec<Value> = Vec::new();
    let mut cursor = 0u64;
    let first = next(&mut ws).expect("snapshot");
    assert_eq!(first["type"], "snapshot", "{first}");
    streamed.extend(rows_of(&first));
    cursor += streamed.len() as u64;
    assert_eq!(first["last_seq"], cursor);
    let finished = |s: &Server| get(s, "/api/v1/sources/dl")["status"] == "finished";
    loop {
        if finished(&server) && get(&server, "/api/v1/views/health")["last_seq"] == cursor {
            break;
        }
        let m = next(&mut ws).expect("rows message");
        assert_eq!(m["type"], "rows", "{m}");
        assert_eq!(m["first_seq"], cursor + 1, "no gap, no duplicate: {m}");
        let rows = rows_of(&m);
        cursor += rows.len() as u64;
        assert_eq!(m["last_seq"], cursor);
        // The watermark is null once the bounded input has ended (end of time).
        assert!(m["watermark"].is_string() || finished(&server), "{m}");
        assert!(m["emitted_at"].is_string(), "{m}");
        streamed.extend(rows);
    }
    assert!(cursor > 10, "windows were emitted: {cursor}");

    // REST rows equal what was streamed, in order.
    let rest = get(&server, "/api/v1/views/health/rows?limit=10000");
    assert_eq!(rest["first_seq"], 1);
    assert_eq!(rest["last_seq"], cursor);
    assert_eq!(
        rest["columns"],
        json!([
            "window_start",
            "window_end",
            "region",
            "downloads",
            "failures",
            "avg_speed"
        ])
    );
    assert_eq!(rows_of(&rest), streamed);
    let page = get(&server, "/api/v1/views/health/rows?limit=5&since_seq=3");
    assert_eq!(
        (page["first_seq"].clone(), page["last_seq"].clone()),
        (json!(4), json!(8))
    );
    assert_eq!(rows_of(&page), streamed[3..8].to_vec());
    let newest = get(&server, "/api/v1/views/health/rows?limit=2");
    assert_eq!(rows_of(&newest), streamed[streamed.len() - 2..].to_vec());

    // The streaming answer equals the same SQL in batch over every accepted event.
    let (status, raw_count) = post(&server, "/api/v1/query", "SELECT count(*) AS n FROM raw");
    assert_eq!(status, 200, "{raw_count}");
    assert_eq!(raw_count["rows"], json!([{"n": ROWS}]));
    let (status, batch) = post(
        &server,
        "/api/v1/query",
        "SELECT date_bin(INTERVAL '250 milliseconds', ts, TIMESTAMP '1970-01-01') AS window_start, \
         region, count(*) AS downloads, count(*) FILTER (WHERE status = 'failed') AS failures, \
         avg(speed_mbps) AS avg_speed FROM raw GROUP BY 1, 2",
    );
    assert_eq!(status, 200, "{batch}");
    let cols = [
        "window_start",
        "region",
        "downloads",
        "failures",
        "avg_speed",
    ];
    assert_eq!(
        normalized(&rows_of(&batch), &cols),
        normalized(&streamed, &cols)
    );
    let total: u64 = streamed
        .iter()
        .map(|r| r["downloads"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(total, ROWS);

    // Resuming with since_seq delivers exactly the rows after it.
    let k = cursor / 2;
    let mut resumed = subscribe(
        &server,
        &format!("/api/v1/views/health/subscribe?since_seq={k}"),
    );
    let m = next(&mut resumed).expect("resumed rows");
    assert_eq!(
        (m["type"].clone(), m["first_seq"].clone()),
        (json!("rows"), json!(k + 1))
    );
    assert_eq!(rows_of(&m), streamed[k as usize..].to_vec());
    drop(resumed);

    // Lists and figures.
    let sources = get(&server, "/api/v1/sources");
    let dl = &sources["sources"][0];
    assert_eq!(dl["name"], "dl");
    assert_eq!(dl["figures"]["rows_in"], ROWS);
    assert_eq!(dl["connector"], "generator");
    assert!(
        dl["sql"]
            .as_str()
            .unwrap_or("")
            .starts_with("CREATE SOURCE dl")
    );
    // The WATERMARK column is implicitly NOT NULL.
    assert_eq!(
        dl["schema"][1],
        json!({"name": "ts", "type": "timestamp", "nullable": false})
    );
    let names = view_names(&server);
    assert_eq!(names, ["health", "raw"]);
    assert_eq!(get(&server, "/api/v1/sinks"), json!({"sinks": []}));
    let (status, missing) = call("GET", &server.url("/api/v1/views/nope"), None, None);
    assert_eq!(
        (status, missing["error"]["code"].clone()),
        (404, json!("not_found"))
    );
    let (status, _) = call("GET", &server.url("/api/v1/sources/health"), None, None);
    assert_eq!(status, 404, "health is a view, not a source");

    // Metrics and readiness.
    let (status, metrics) = call("GET", &server.url("/metrics"), None, None);
    assert_eq!(status, 200);
    let metrics = metrics.as_str().expect("text").to_string();
    assert!(
        metrics.contains(&format!("weir_source_rows_total{{source=\"dl\"}} {ROWS}\n")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "weir_view_rows_out_total{{view=\"health\"}} {cursor}\n"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("weir_object_status{kind=\"source\",name=\"dl\",status=\"finished\"} 1"),
        "{metrics}"
    );
    // Every metric the Grafana dashboard in docs/grafana uses is one the server serves.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/grafana/weir.json"
        ))
        .expect("docs/grafana/weir.json"),
    )
    .expect("the dashboard is JSON");
    let mut used = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(at) = rest.find("weir_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                used.insert(name);
            }
        }
    }
    assert!(used.len() >= 10, "{used:?}");
    for name in &used {
        assert!(
            metrics.contains(&format!("# TYPE {name} ")),
            "the Grafana dashboard uses {name}, which /metrics does not serve"
        );
    }
    assert_eq!(get(&server, "/ready")["status"], "ready");
    assert_eq!(get(&server, "/health"), json!({"status": "ok"}));

    // SQL over REST: statements apply in order; the first error has its position.
    let (status, err) = post(
        &server,
        "/api/v1/sql",
        "CREATE MATERIALIZED VIEW eu AS SELECT * FROM raw WHERE region = 'eu';\n\
         CREATE MATERIALIZED VIEW bad AS SELECT nope FROM raw;",
    );
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["code"], "sql_error");
    assert_eq!(
        (err["error"]["line"].clone(), err["error"]["column"].clone()),
        (json!(2), json!(40)),
        "{err}"
    );
    assert_eq!(err["error"]["statement"], 2);
    assert_eq!(err["applied"][0]["name"], "eu");
    assert_eq!(err["applied"][0]["statement"], "CREATE MATERIALIZED VIEW");
    let (status, ok) = post(
        &server,
        "/api/v1/sql",
        "CREATE MATERIALIZED VIEW doomed AS SELECT region FROM raw; SHOW MATERIALIZED VIEWS",
    );
    assert_eq!(status, 200, "{ok}");
    assert_eq!(
        ok["results"][0],
        json!({"statement": "CREATE MATERIALIZED VIEW", "name": "doomed", "kind": "view", "outcome": "created", "columns": null, "rows": null})
    );
    assert_eq!(ok["results"][1]["statement"], "SHOW");

    // DROP: 409 naming dependents; a subscriber of a dropped view is told and closed.
    let (status, conflict) = call("DELETE", &server.url("/api/v1/views/raw"), None, None);
    assert_eq!(status, 409, "{conflict}");
    let deps: Vec<String> = conflict["error"]["dependents"]
        .as_array()
        .expect("dependents")
        .iter()
        .map(|d| {
            format!(
                "{}:{}",
                d["kind"].as_str().unwrap_or(""),
                d["name"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(deps, ["view:eu", "view:doomed"]);
    let mut doomed = subscribe(&server, "/api/v1/views/doomed/subscribe");
    assert_eq!(next(&mut doomed).expect("snapshot")["type"], "snapshot");
    let (status, dropped) = call("DELETE", &server.url("/api/v1/views/doomed"), None, None);
    assert_eq!(status, 200, "{dropped}");
    assert_eq!(dropped["dropped"]["outcome"], "dropped");
    let m = next(&mut doomed).expect("error message");
    assert_eq!(m["type"], "error");
    assert!(
        m["message"].as_str().unwrap_or("").contains("dropped"),
        "{m}"
    );
    assert!(next(&mut doomed).is_none(), "closed after the error");

    // The OpenAPI document lists exactly the routes served, and each answers.
    let doc = get(&server, "/api/v1/openapi.json");
    let mut paths: Vec<String> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(p, item)| {
            item.as_object()
                .into_iter()
                .flat_map(|m| m.keys())
                .map(move |m| format!("{} {p}", m.to_uppercase()))
        })
        .collect();
    paths.sort();
    let expected = [
        "DELETE /api/v1/sinks/{name}",
        "DELETE /api/v1/sources/{name}",
        "DELETE /api/v1/tables/{name}",
        "DELETE /api/v1/views/{name}",
        "GET /api/v1/cluster",
        "GET /api/v1/sinks",
        "GET /api/v1/sinks/{name}",
        "GET /api/v1/sources",
        "GET /api/v1/sources/{name}",
        "GET /api/v1/status/subscribe",
        "GET /api/v1/tables",
        "GET /api/v1/tables/{name}",
        "GET /api/v1/views",
        "GET /api/v1/views/{name}",
        "GET /api/v1/views/{name}/rows",
        "GET /api/v1/views/{name}/subscribe",
        "GET /health",
        "GET /metrics",
        "GET /ready",
        "POST /api/v1/query",
        "POST /api/v1/sources/{name}/events",
        "POST /api/v1/sql",
    ];
    assert_eq!(paths, expected);
    for p in &paths {
        let (method, path) = p.split_once(' ').expect("method path");
        if method != "GET" {
            continue;
        }
        let name = if path.starts_with("/api/v1/sources") {
            "dl"
        } else {
            "health"
        };
        let (status, body) = call(
            "GET",
            &server.url(&path.replace("{name}", name)),
            None,
            None,
        );
        // Served (a WebSocket route answers a plain GET with an upgrade error; there is no
        // sink or table, so one is not found, but the route is).
        assert_ne!(
            body["error"]["message"], "no such route",
            "{p}: {status} {body}"
        );
        // Not a cluster member: the cluster route says so with a 404.
        if path == "/api/v1/cluster" {
            assert_eq!(
                (status, body["error"]["code"].clone()),
                (404, json!("not_found"))
            );
            continue;
        }
        if !path.contains("subscribe")
            && !path.starts_with("/api/v1/sinks/")
            && !path.starts_with("/api/v1/tables/")
        {
            assert_eq!(status, 200, "{p}: {body}");
        }
    }
    let (status, body) = call("GET", &server.url("/api/v1/nothing"), None, None);
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (404, json!("not_found"))
    );

    // A restart: REST statements come back, and the checkpoint taken at the stop restores
    // every view as it was: the same rows under the same seqs, the source at its end, so
    // nothing is computed or numbered twice.
    drop(ws);
    server.stop();
    let journal =
        std::fs::read_to_string(dir.path().join("data/state/statements.sql")).expect("journal");
    assert!(journal.contains("CREATE MATERIALIZED VIEW eu"), "{journal}");
    let server = Server::start(args(dir.path(), vec![file], None));
    let names = view_names(&server);
    assert_eq!(names, ["health", "raw", "eu"], "doomed stays dropped");
    wait_for(
        "the source to finish again",
        Duration::from_secs(60),
        || get(&server, "/api/v1/sources/dl")["status"] == "finished",
    );
    let again = get(&server, "/api/v1/views/health/rows?limit=10000");
    assert_eq!(
        (again["first_seq"].clone(), again["last_seq"].clone()),
        (json!(1), json!(cursor)),
        "the same numbering"
    );
    assert_eq!(
        rows_of(&again),
        streamed,
        "the same rows, restored, not recomputed"
    );
    let (status, raw_count) = post(&server, "/api/v1/query", "SELECT count(*) AS n FROM raw");
    assert_eq!(status, 200, "{raw_count}");
    assert_eq!(
        raw_count["rows"],
        json!([{"n": ROWS}]),
        "retained rows restored"
    );
    let (_, metrics) = call("GET", &server.url("/metrics"), None, None);
    let metrics = metrics.as_str().expect("text").to_string();
    let restored_epoch = metrics
        .lines()
        .find_map(|l| l.strip_prefix("weir_checkpoint_epoch "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        restored_epoch >= 1.0,
        "a checkpoint was restored:\n{metrics}"
    );
    server.stop();
}

/// Wait until the bounded source `dl` has finished and view `health` has emitted what it
/// will (its last seq the same across half a second).
fn wait_until_emitted(server: &Server) {
    wait_for("the source to finish", Duration::from_secs(60), || {
        get(server, "/api/v1/sources/dl")["status"] == "finished"
    });
    let settled = |s: &Server| get(s, "/api/v1/views/health")["last_seq"].clone();
    let mut last = settled(server);
    wait_for("the view to settle", Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(500));
        let now = settled(server);
        std::mem::replace(&mut last, now.clone()) == now
    });
}

/// `weir run` on a directory without SQL files starts empty, and statements sent over the
/// API then run: the view's rows, read to the end once the bounded source finished, count
/// every generated event once, in one row per window and region.
#[test]
fn an_empty_directory_starts_empty_and_runs_what_the_api_sends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queries = dir.path().join("queries");
    std::fs::create_dir(&queries).expect("mkdir");
    let server = Server::start(args(dir.path(), vec![queries], None));
    assert_eq!(view_names(&server), Vec::<String>::new());
    let sql = std::fs::read_to_string(pipeline_sql(dir.path())).expect("sql");
    let (status, v) = post(&server, "/api/v1/sql", &sql);
    assert_eq!(status, 200, "{v}");
    assert_eq!(view_names(&server), vec!["health", "raw"]);
    wait_until_emitted(&server);
    let rows = rows_of(&get(&server, "/api/v1/views/health/rows?limit=100000"));
    let total: u64 = rows
        .iter()
        .map(|r| r["downloads"].as_u64().expect("downloads"))
        .sum();
    assert_eq!(total, ROWS, "every generated event counted once");
    let mut keys: Vec<String> = rows
        .iter()
        .map(|r| format!("{} {}", r["window_start"], r["region"]))
        .collect();
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n, "one row per window and region");
    // Started empty, it started the embedded broker too: an http source created now
    // takes events.
    let (status, v) = post(
        &server,
        "/api/v1/sql",
        "CREATE SOURCE clicks (id BIGINT NOT NULL, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts) \
           WITH (connector = 'http');\n\
         CREATE MATERIALIZED VIEW clicked AS SELECT id FROM clicks;",
    );
    assert_eq!(status, 200, "{v}");
    let (status, v) = post(
        &server,
        "/api/v1/sources/clicks/events",
        "{\"id\": 7, \"ts\": 1}\n{\"id\": 8, \"ts\": 2}",
    );
    assert_eq!(
        (status, &v["accepted"]),
        (200, &serde_json::json!(2)),
        "{v}"
    );
    wait_for("the posted events", Duration::from_secs(60), || {
        rows_of(&get(&server, "/api/v1/views/clicked/rows")).len() >= 2
    });
    let mut ids: Vec<i64> = rows_of(&get(&server, "/api/v1/views/clicked/rows"))
        .iter()
        .map(|r| r["id"].as_i64().expect("id"))
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [7, 8]);
    server.stop();
}

/// Reads for applications: `?window=latest&order=-downloads&limit=2` is the top 2 regions
/// of the latest window, and `?since=<time>` every row from that window on, each row with
/// its seq; both equal what the full page of rows gives when filtered and sorted here.
#[test]
fn rows_by_time_latest_window_and_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(args(dir.path(), vec![pipeline_sql(dir.path())], None));
    wait_until_emitted(&server);
    let all = get(&server, "/api/v1/views/health/rows?limit=100000");
    let first = all["first_seq"].as_u64().expect("rows");
    let rows: Vec<(u64, Value)> = rows_of(&all)
        .into_iter()
        .enumerate()
        .map(|(i, r)| (first + i as u64, r))
        .collect();
    let pairs = |v: &Value| -> Vec<(u64, Value)> {
        let seqs = v["seqs"]
            .as_array()
            .expect("seqs")
            .iter()
            .map(|s| s.as_u64().unwrap());
        seqs.zip(rows_of(v)).collect()
    };
    let latest = rows
        .iter()
        .map(|(_, r)| r["window_start"].as_str().unwrap().to_string())
        .max()
        .expect("a window");
    let mut top: Vec<(u64, Value)> = rows
        .iter()
        .filter(|(_, r)| r["window_start"] == latest.as_str())
        .cloned()
        .collect();
    top.sort_by_key(|(seq, r)| (std::cmp::Reverse(r["downloads"].as_i64().unwrap()), *seq));
    top.truncate(2);
    let got = get(
        &server,
        "/api/v1/views/health/rows?window=latest&order=-downloads&limit=2",
    );
    assert_eq!(pairs(&got), top);
    // Every row from the second window on.
    let mut starts: Vec<String> = rows
        .iter()
        .map(|(_, r)| r["window_start"].as_str().unwrap().to_string())
        .collect();
    starts.sort();
    starts.dedup();
    let from = &starts[1];
    let want: Vec<(u64, Value)> = rows
        .iter()
        .filter(|(_, r)| r["window_start"].as_str().unwrap() >= from.as_str())
        .cloned()
        .collect();
    let got = get(
        &server,
        &format!("/api/v1/views/health/rows?since={from}&limit=100000"),
    );
    assert_eq!(pairs(&got), want);
    let (status, body) = call(
        "GET",
        &server.url("/api/v1/views/health/rows?order=nope"),
        None,
        None,
    );
    assert_eq!(status, 400, "{body}");
    server.stop();
}

#[test]
fn tokens_roles_and_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = pipeline_sql(dir.path());
    let server = start_with_config(
        dir.path(),
        "[server]\nadmin_tokens = ['adm-secret']\nread_tokens = ['rd-secret']\nmax_sql_bytes = 200\n",
        file,
    );
    let url = |p: &str| server.url(p);

    assert_eq!(call("GET", &url("/health"), None, None).0, 200);
    let (status, body) = call("GET", &url("/api/v1/views"), None, None);
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (401, json!("unauthorized"))
    );
    assert!(
        body.get("views").is_none(),
        "no data without a token: {body}"
    );
    assert_eq!(
        call("GET", &url("/api/v1/views"), Some("wrong"), None).0,
        401
    );
    assert_eq!(call("GET", &url("/metrics"), None, None).0, 401);
    assert_eq!(
        call("GET", &url("/api/v1/views"), Some("rd-secret"), None).0,
        200
    );
    assert_eq!(
        call("GET", &url("/api/v1/views?token=rd-secret"), None, None).0,
        200
    );
    let (status, body) = call(
        "POST",
        &url("/api/v1/sql"),
        Some("rd-secret"),
        Some("CREATE MATERIALIZED VIEW x AS SELECT region FROM raw"),
    );
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (403, json!("forbidden"))
    );
    assert_eq!(
        call("DELETE", &url("/api/v1/views/raw"), Some("rd-secret"), None).0,
        403
    );
    let (status, body) = call(
        "POST",
        &url("/api/v1/sql"),
        Some("adm-secret"),
        Some("CREATE MATERIALIZED VIEW x AS SELECT region FROM raw"),
    );
    assert_eq!(status, 200, "{body}");
    let long = format!(
        "SELECT region FROM raw WHERE region IN ({})",
        vec!["'eu'"; 60].join(",")
    );
    let (status, body) = call(
        "POST",
        &url("/api/v1/query"),
        Some("adm-secret"),
        Some(&long),
    );
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (413, json!("too_large")),
        "{body}"
    );

    // WebSocket: no token, no upgrade; ?token= works.
    let denied = tungstenite::connect(format!(
        "ws://{}/api/v1/views/health/subscribe",
        server.addr
    ));
    match denied {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    let mut ws = subscribe(&server, "/api/v1/views/health/subscribe?token=rd-secret");
    assert_eq!(next(&mut ws).expect("snapshot")["type"], "snapshot");
    server.stop();
}

/// Scoped tokens: a read token limited to `health*` sees only those objects in lists, the
/// status stream and queries; any other name, existing or not, gets the same 403; routes
/// about every object (statements, metrics, the cluster) are refused to it; a read token
/// may now run SELECTs (POST /api/v1/query); a token from the environment works.
#[test]
fn scoped_tokens_see_only_their_objects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = pipeline_sql(dir.path());
    // A token from the environment: CARGO_PKG_NAME, which cargo sets for the test run.
    let env_token = std::env::var("CARGO_PKG_NAME").expect("cargo sets CARGO_PKG_NAME");
    let server = start_with_config(
        dir.path(),
        "[server]\nadmin_tokens = ['adm-secret']\n\
         [[server.tokens]]\ntoken = 'team-a'\nrole = 'read'\nobjects = ['health*']\n\
         [[server.tokens]]\ntoken_env = 'CARGO_PKG_NAME'\nrole = 'read'\n",
        file,
    );
    let url = |p: &str| server.url(p);
    let get = |p: &str, t: &str| call("GET", &url(p), Some(t), None);
    let names = |v: &Value, key: &str| -> Vec<String> {
        v[key]
            .as_array()
            .expect("a list")
            .iter()
            .map(|o| o["name"].as_str().expect("name").to_string())
            .collect()
    };
    let (status, views) = get("/api/v1/views", "team-a");
    assert_eq!(status, 200, "{views}");
    assert_eq!(names(&views, "views"), vec!["health"]);
    assert_eq!(
        names(&get("/api/v1/sources", "team-a").1, "sources"),
        Vec::<String>::new()
    );
    let (_, all) = get("/api/v1/views", &env_token);
    assert_eq!(names(&all, "views"), vec!["health", "raw"]);
    assert_eq!(get("/api/v1/views/health", "team-a").0, 200);
    assert_eq!(get("/api/v1/views/health/rows?limit=1", "team-a").0, 200);
    // Out of scope: the same answer for an object that exists and one that does not.
    let (s1, b1) = get("/api/v1/views/raw", "team-a");
    let (s2, b2) = get("/api/v1/views/nope", "team-a");
    assert_eq!((s1, s2), (403, 403));
    assert_eq!(b1["error"]["code"], b2["error"]["code"]);
    assert_eq!(get("/api/v1/sources/dl", "team-a").0, 403);
    assert_eq!(get("/api/v1/views/raw/rows", "team-a").0, 403);
    for (method, path) in [
        ("POST", "/api/v1/sql"),
        ("GET", "/metrics"),
        ("GET", "/api/v1/cluster"),
    ] {
        let (status, body) = call(method, &url(path), Some("team-a"), Some("SHOW VIEWS"));
        assert_eq!(status, 403, "{method} {path}: {body}");
    }
    // Queries: a read token may SELECT; a scoped one sees its views only, the others are
    // unknown tables.
    let (status, body) = call(
        "POST",
        &url("/api/v1/query"),
        Some("team-a"),
        Some("SELECT count(*) AS n FROM health"),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(
        "POST",
        &url("/api/v1/query"),
        Some("team-a"),
        Some("SELECT count(*) FROM raw"),
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = call(
        "POST",
        &url("/api/v1/query"),
        Some(&env_token),
        Some("SELECT count(*) AS n FROM raw"),
    );
    assert_eq!(status, 200, "{body}");
    // The status stream names only the objects in scope.
    let mut ws = subscribe(&server, "/api/v1/status/subscribe?token=team-a");
    let m = next(&mut ws).expect("status");
    assert_eq!(names(&m, "views"), vec!["health"]);
    assert_eq!(names(&m, "sources"), Vec::<String>::new());
    // Subscriptions are scoped like the rest.
    match tungstenite::connect(format!(
        "ws://{}/api/v1/views/raw/subscribe?token=team-a",
        server.addr
    )) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    server.stop();
}

/// A TLS connection to the test server at `addr`, trusting `cert` only.
fn tls_to(
    addr: SocketAddr,
    cert: &rustls::pki_types::CertificateDer<'static>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).expect("root");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("tls");
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    rustls::StreamOwned::new(conn, tcp)
}

/// HTTPS and WSS: with `[server] tls_cert` and `tls_key` (a certificate the test makes for
/// 127.0.0.1), REST answers over HTTPS to a client that trusts the certificate, a view
/// subscription works over WSS, and a plain-HTTP request gets no answer.
#[test]
fn the_api_serves_https_and_wss() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("a certificate");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).expect("cert");
    std::fs::write(&key, made.key_pair.serialize_pem()).expect("key");
    let server = start_with_config(
        dir.path(),
        &format!(
            "[server]\ntls_cert = '{}'\ntls_key = '{}'\n",
            cert.display(),
            key.display()
        ),
        pipeline_sql(dir.path()),
    );
    let der = made.cert.der().clone();
    let mut https = tls_to(server.addr, &der);
    https
        .write_all(b"GET /api/v1/views HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut answer = String::new();
    // A peer that closes without close_notify is an error at the end; what came is kept.
    let _ = https.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"health\""), "{answer}");
    let (mut ws, _) = tungstenite::client(
        format!(
            "wss://127.0.0.1:{}/api/v1/views/health/subscribe",
            server.addr.port()
        ),
        tls_to(server.addr, &der),
    )
    .expect("wss handshake");
    let first = loop {
        match ws.read().expect("a message") {
            Message::Text(t) => break serde_json::from_str::<Value>(&t).expect("json"),
            _ => continue,
        }
    };
    assert_eq!(first["type"], "snapshot", "{first}");
    // Plain HTTP to the TLS port: no HTTP answer.
    let mut plain = TcpStream::connect(server.addr).expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .expect("write");
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(
        !got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    server.stop();
}

/// Subscriber limits: with `ws_max_subscribers_per_client = 2`, a third subscription from
/// the same address gets 503 `too_many_subscribers` before the upgrade; once one of the
/// two closes, a new one is taken.
#[test]
fn subscriptions_beyond_the_limit_get_503_until_one_closes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_with_config(
        dir.path(),
        "[server]\nws_max_subscribers_per_client = 2\n",
        pipeline_sql(dir.path()),
    );
    let mut first = subscribe(&server, "/api/v1/views/health/subscribe");
    let _second = subscribe(&server, "/api/v1/status/subscribe");
    let third = || tungstenite::connect(format!("ws://{}/api/v1/views/raw/subscribe", server.addr));
    match third() {
        Err(tungstenite::Error::Http(r)) => {
            assert_eq!(r.status().as_u16(), 503);
            let body: Value =
                serde_json::from_slice(r.body().as_deref().unwrap_or_default()).expect("json");
            assert_eq!(body["error"]["code"], "too_many_subscribers", "{body}");
        }
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    first.close(None).expect("close");
    while !matches!(first.read(), Err(_) | Ok(Message::Close(_))) {}
    wait_for("a free place", Duration::from_secs(10), || third().is_ok());
    server.stop();
}

#[test]
fn a_slow_subscriber_is_dropped_without_slowing_the_pipeline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = 400_000u64;
    let sql = dir.path().join("fast.sql");
    std::fs::write(
        &sql,
        format!(
            "CREATE SOURCE fast (event_id VARCHAR, ts TIMESTAMP, region VARCHAR, content_id VARCHAR, \
               device_type VARCHAR, error_code VARCHAR) \
             WITH (connector = 'generator', kind = 'downloads', rows = '{rows}', \
               'rows.per.second' = '0', start = '2024-01-01T00:00:00Z');\n\
             CREATE MATERIALIZED VIEW everything WITH ('retention.rows' = '1000') AS SELECT * FROM fast;\n"
        ),
    )
    .expect("sql");
    let server = start_with_config(
        dir.path(),
        "[server]\nws_send_timeout = '1s'\n[engine]\nbatch_rows = 64\n",
        sql,
    );
    // A client that subscribes and then reads nothing.
    let mut ws = subscribe(&server, "/api/v1/views/everything/subscribe");
    wait_for("the source to finish", Duration::from_secs(120), || {
        get(&server, "/api/v1/sources/fast")["status"] == "finished"
    });
    assert_eq!(
        get(&server, "/api/v1/views/everything")["figures"]["rows_out"],
        rows
    );
    wait_for(
        "the slow subscriber to be dropped",
        Duration::from_secs(30),
        || get(&server, "/api/v1/views/everything")["subscribers"] == 0,
    );
    // What the client can still read ends before the last row.
    let mut seen = 0u64;
    let mut error = None;
    while let Some(m) = next(&mut ws) {
        match m["type"].as_str() {
            Some("error") => error = m["message"].as_str().map(str::to_string),
            _ => seen += rows_of(&m).len() as u64,
        }
    }
    assert!(seen < rows, "the stream ended early: {seen} of {rows} rows");
    // The server counts why it dropped the subscriber: exactly once, for being slow. The
    // client may or may not get the error message (its socket was full when it was sent);
    // when it does, the message says why.
    let (_, metrics) = call("GET", &server.url("/metrics"), None, None);
    let metrics = metrics.as_str().expect("text").to_string();
    let dropped = |reason: &str| -> u64 {
        let line = format!("weir_ws_subscribers_dropped_total{{reason=\"{reason}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .unwrap_or_else(|| panic!("no {line} in /metrics:\n{metrics}"))
            .parse()
            .expect("a count")
    };
    assert_eq!(
        dropped("lagged") + dropped("send_timeout"),
        1,
        "one slow subscriber dropped:\n{metrics}"
    );
    match error {
        Some(e) if dropped("lagged") == 1 => {
            assert!(e.contains("fell") && e.contains("behind"), "{e}")
        }
        Some(e) => assert!(e.contains("did not take a message"), "{e}"),
        None => {}
    }
    server.stop();
}

/// With `[database] url`, statements submitted over the API live in `weir.statements`
/// (created by the migrations at start-up): they come back after a restart even when the
/// data directory is lost.
#[test]
fn api_statements_kept_in_postgres() {
    let Some(url) = crate::postgres::pg_url() else {
        return;
    };
    let _pg = crate::crash::pg_lock().blocking_read();
    // A database of its own, so no other run's statements are replayed.
    let db = format!("weir_api_{}", std::process::id());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        use sqlx::Executor;
        let pool = sqlx::PgPool::connect(&url).await.expect("connect");
        let _ = pool
            .execute(format!("DROP DATABASE IF EXISTS {db}").as_str())
            .await;
        pool.execute(format!("CREATE DATABASE {db}").as_str())
            .await
            .expect("create database");
    });
    let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
    let db_url = format!("{base}/{db}");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = pipeline_sql(dir.path());
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        format!("[database]\nurl = \"{db_url}\"\n[checkpoint]\nenabled = false\n"),
    )
    .expect("config");
    let server = Server::start(args(dir.path(), vec![file.clone()], Some(config.clone())));
    let (status, body) = post(
        &server,
        "/api/v1/sql",
        "CREATE MATERIALIZED VIEW us AS SELECT * FROM health WHERE region LIKE 'US%'",
    );
    assert_eq!(status, 200, "{body}");
    server.stop();
    // The local state is gone; the database still has the statement.
    std::fs::remove_dir_all(dir.path().join("data")).expect("remove data dir");
    let server = Server::start(args(dir.path(), vec![file], Some(config)));
    assert_eq!(view_names(&server), ["health", "raw", "us"]);
    server.stop();
    let stored: Vec<String> = rt.block_on(async {
        let pool = sqlx::PgPool::connect(&db_url).await.expect("connect");
        sqlx::query_scalar("SELECT sql FROM weir.statements ORDER BY seq")
            .fetch_all(&pool)
            .await
            .expect("weir.statements")
    });
    assert_eq!(
        stored,
        ["CREATE MATERIALIZED VIEW us AS SELECT * FROM health WHERE region LIKE 'US%'"]
    );
    rt.block_on(async {
        use sqlx::Executor;
        let pool = sqlx::PgPool::connect(&url).await.expect("connect");
        let _ = pool
            .execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str())
            .await;
    });
}

/// A request refused by a limit: its exact status, error code and limit kind, a message that
/// names the limit, and an answer within `within`.
fn refused(
    s: &Server,
    path: &str,
    sql: &str,
    status: u16,
    limit: &str,
    says: &str,
    within: Duration,
) -> Value {
    let started = Instant::now();
    let (got, body) = post(s, path, sql);
    let took = started.elapsed();
    let shown = &sql[..sql.len().min(100)];
    assert_eq!(
        (
            got,
            body["error"]["code"].clone(),
            body["error"]["limit"].clone()
        ),
        (status, json!("limit"), json!(limit)),
        "{path} {shown}: {body}"
    );
    eprintln!("{path} {:.60}...: {got} in {took:?}", shown);
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "{path} {shown}: {message}");
    assert!(took < within, "{path} {shown}: answered after {took:?}");
    body
}

/// `1 + 1 + ...` with `n` terms.
fn chain(n: usize) -> String {
    vec!["1"; n].join(" + ")
}

/// `column = 0 OR column = 1 OR ...` with `n` terms.
fn ors(column: &str, n: usize) -> String {
    (0..n)
        .map(|i| format!("{column} = {i}"))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// Statements that used to crash `weir`, hang it or keep it busy are refused, each with the
/// limit it hit and quickly, over both SQL routes, while the pipeline runs; afterwards the
/// server answers, nothing new was created and the view's rows are exactly the batch answer.
/// The deepest statements accepted plan and run, as a query and as a view over new data.
#[test]
fn hostile_sql_is_refused_and_the_pipeline_runs_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = pipeline_sql(dir.path());
    let server = start_with_config(
        dir.path(),
        "[engine]\nquery_timeout = '2s'\nmax_query_bytes = 16777216\nmax_query_rows = 100000\n",
        file,
    );
    let fast = Duration::from_secs(5);
    let q = "/api/v1/query";
    let depth = "the statement nests too deeply: more than 500 levels at line 1, column";

    // Depth: 2,000 terms crashed the process; 20,000 ORs took 25 s to plan.
    let body = refused(
        &server,
        q,
        &format!("SELECT {}", chain(2000)),
        400,
        "expression_depth",
        // SELECT and the statement are two levels, so the 499th `+` is the 501st.
        "statement 1: the statement nests too deeply: more than 500 levels at line 1, column 2002",
        fast,
    );
    assert_eq!(body["error"]["statement"], 1);
    let where_2000 = format!("SELECT region FROM raw WHERE {}", ors("speed_mbps", 2000));
    refused(
        &server,
        q,
        &where_2000,
        400,
        "expression_depth",
        depth,
        fast,
    );
    let where_20000 = format!(
        "SELECT region FROM raw WHERE {}",
        vec!["a=1"; 20_000].join(" OR ")
    );
    refused(
        &server,
        q,
        &where_20000,
        400,
        "expression_depth",
        depth,
        fast,
    );
    // Values, time, rows and memory.
    refused(
        &server,
        q,
        "SELECT repeat('a', 2000000000)",
        413,
        "value_size",
        "repeat(...) would build 2000000000 bytes in one call; the value size limit is 67108864 bytes",
        fast,
    );
    refused(
        &server,
        q,
        "SELECT count(*) FROM generate_series(1, 10000000000)",
        408,
        "query_time",
        "the query time limit (engine.query_timeout) is 2s",
        Duration::from_secs(10),
    );
    refused(
        &server,
        q,
        "SELECT * FROM generate_series(1, 10000000000)",
        413,
        "query_rows",
        "the query row limit (engine.max_query_rows) is 100000",
        Duration::from_secs(10),
    );
    refused(
        &server,
        q,
        "SELECT value FROM generate_series(1, 5000000) ORDER BY value DESC",
        413,
        "query_memory",
        "the query memory limit (engine.max_query_bytes) is 16777216 bytes",
        Duration::from_secs(10),
    );

    // The same through POST /api/v1/sql, as view bodies and other statements.
    let sql = "/api/v1/sql";
    let view_2000 = format!("CREATE MATERIALIZED VIEW deep AS {where_2000}");
    refused(
        &server,
        sql,
        &view_2000,
        400,
        "expression_depth",
        depth,
        fast,
    );
    let body = refused(
        &server,
        sql,
        &format!(
            "CREATE MATERIALIZED VIEW fine AS SELECT region FROM raw;\n\
                  CREATE MATERIALIZED VIEW deep AS {where_20000}"
        ),
        400,
        "expression_depth",
        "statement 2: the statement nests too deeply: more than 500 levels at line 2, column",
        fast,
    );
    assert_eq!(body["error"]["statement"], 2);
    assert_eq!(
        body["applied"],
        json!([]),
        "refused before anything was applied"
    );
    refused(
        &server,
        sql,
        &format!(
            "EXPLAIN CREATE MATERIALIZED VIEW deep AS SELECT {} AS n FROM raw",
            chain(2000)
        ),
        400,
        "expression_depth",
        depth,
        fast,
    );
    refused(
        &server,
        sql,
        &format!(
            "CREATE SOURCE deep (ts TIMESTAMP, WATERMARK FOR ts AS ts - {}) \
                  WITH (connector = 'generator')",
            chain(2000)
        ),
        400,
        "expression_depth",
        depth,
        fast,
    );
    refused(
        &server,
        sql,
        "SELECT repeat('a', 2000000000)",
        413,
        "value_size",
        "the value size limit is 67108864 bytes",
        fast,
    );
    refused(
        &server,
        sql,
        "SELECT count(*) FROM generate_series(1, 10000000000)",
        408,
        "query_time",
        "the query time limit (engine.query_timeout) is 2s",
        Duration::from_secs(10),
    );
    // A view that would build a huge value from literals is refused when planned, as the
    // same limit.
    refused(
        &server,
        sql,
        "CREATE MATERIALIZED VIEW big AS SELECT repeat('a', 2000000000) AS s FROM raw",
        413,
        "value_size",
        "the value size limit is 67108864 bytes",
        fast,
    );

    // Still serving, nothing created, the pipeline ran to its end, and the view's rows are
    // exactly the batch answer over every event.
    assert_eq!(get(&server, "/health"), json!({"status": "ok"}));
    wait_for("the source to finish", Duration::from_secs(60), || {
        get(&server, "/api/v1/sources/dl")["status"] == "finished"
    });
    assert_eq!(get(&server, "/ready")["status"], "ready");
    assert_eq!(view_names(&server), ["health", "raw"]);
    assert_eq!(
        get(&server, "/api/v1/sources/dl")["figures"]["rows_in"],
        ROWS
    );
    let streamed = rows_of(&get(&server, "/api/v1/views/health/rows?limit=10000"));
    let (status, batch) = post(
        &server,
        q,
        "SELECT date_bin(INTERVAL '250 milliseconds', ts, TIMESTAMP '1970-01-01') AS window_start, \
         region, count(*) AS downloads, count(*) FILTER (WHERE status = 'failed') AS failures, \
         avg(speed_mbps) AS avg_speed FROM raw GROUP BY 1, 2",
    );
    assert_eq!(status, 200, "{batch}");
    let cols = [
        "window_start",
        "region",
        "downloads",
        "failures",
        "avg_speed",
    ];
    assert_eq!(
        normalized(&rows_of(&batch), &cols),
        normalized(&streamed, &cols)
    );
    let total: u64 = streamed
        .iter()
        .map(|r| r["downloads"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(total, ROWS);

    // The deepest accepted query plans and runs on the server's threads; one term more is
    // refused. (`SELECT <t terms> AS n` is t + 2 levels deep.)
    let (status, body) = post(&server, q, &format!("SELECT {} AS n", chain(498)));
    assert_eq!(
        (status, body["rows"].clone()),
        (200, json!([{"n": 498}])),
        "{body}"
    );
    refused(
        &server,
        q,
        &format!("SELECT {} AS n", chain(499)),
        400,
        "expression_depth",
        depth,
        fast,
    );
    // And the deepest accepted view, over a new source, on the pipeline's driver:
    // `SELECT event_id, <t terms> AS n FROM nums` is t + 3 levels deep. The source starts
    // once the script is applied, so the view sees all of its rows.
    let edge = |t: usize| {
        format!(
            "CREATE SOURCE nums (event_id VARCHAR, ts TIMESTAMP) WITH (connector = 'generator', \
             kind = 'downloads', seed = '3', rows = '50', 'rows.per.second' = '0', \
             start = '2024-01-01T00:00:00Z');\n\
             CREATE MATERIALIZED VIEW edge AS SELECT event_id, 0 + {} AS n FROM nums",
            chain(t - 1)
        )
    };
    refused(
        &server,
        sql,
        &edge(498),
        400,
        "expression_depth",
        "statement 2: the statement nests too deeply: more than 500 levels at line 2, column",
        fast,
    );
    let (status, body) = post(&server, sql, &edge(497));
    assert_eq!(status, 200, "{body}");
    wait_for(
        "the view to take the new source's rows",
        Duration::from_secs(60),
        || {
            get(&server, "/api/v1/sources/nums")["status"] == "finished"
                && get(&server, "/api/v1/views/edge")["figures"]["rows_out"] == 50
        },
    );
    let rows = rows_of(&get(&server, "/api/v1/views/edge/rows?limit=100"));
    assert_eq!(rows.len(), 50);
    assert!(rows.iter().all(|r| r["n"] == 496), "{rows:?}");
    server.stop();
}
