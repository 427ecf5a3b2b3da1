//! Serving benchmarks: window-close-to-WebSocket latency, and fan-out to many subscribers.
//! Each runs `weir run` in process (the same code as the binary) on a free loopback port
//! and talks to it as a client would: WebSocket with tungstenite, REST with ureq.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};
use weir_server::app::{self, Args};

/// `weir run` on its own runtime thread.
struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    dir: PathBuf,
}

impl Server {
    fn start(name: &str, config: &str, sql: &str, workers: usize) -> Result<Server> {
        let dir = std::env::temp_dir().join(format!("weir-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("weir.toml"), config)?;
        let mut paths = vec![];
        if !sql.is_empty() {
            std::fs::write(dir.join("pipeline.sql"), sql)?;
            paths.push(dir.join("pipeline.sql"));
        }
        let args = Args {
            paths,
            config: Some(dir.join("weir.toml")),
            data_dir: Some(dir.join("data")),
            progress_interval: Some("0s".into()),
            listen: Some("127.0.0.1:0".into()),
            workers: Some(workers),
            ..Args::default()
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            let rt = app::runtime(Some(workers))?;
            rt.block_on(app::run(
                &args,
                false,
                async move {
                    let _ = stop_rx.await;
                },
                Some(addr_tx),
            ))
        });
        let Ok(addr) = addr_rx.blocking_recv() else {
            bail!("weir did not start: {:?}", thread.join());
        };
        Ok(Server {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
            dir,
        })
    }

    fn get(&self, path: &str) -> Result<Value> {
        let mut res = ureq::get(&format!("http://{}{path}", self.addr))
            .call()
            .with_context(|| format!("GET {path}"))?;
        Ok(serde_json::from_str(&res.body_mut().read_to_string()?)?)
    }

    fn post(&self, path: &str, body: &str) -> Result<Value> {
        let mut res = ureq::post(&format!("http://{}{path}", self.addr))
            .header("Content-Type", "text/plain")
            .send(body)
            .with_context(|| format!("POST {path}"))?;
        Ok(serde_json::from_str(&res.body_mut().read_to_string()?)?)
    }

    fn source_rows(&self, name: &str) -> Result<u64> {
        Ok(
            self.get(&format!("/api/v1/sources/{name}"))?["figures"]["rows_in"]
                .as_u64()
                .unwrap_or(0),
        )
    }

    fn finished(&self, name: &str) -> Result<bool> {
        Ok(self.get(&format!("/api/v1/sources/{name}"))?["status"] == "finished")
    }

    fn subscribe(&self, path: &str) -> Result<WebSocket<MaybeTlsStream<TcpStream>>> {
        let (ws, _) = tungstenite::connect(format!("ws://{}{path}", self.addr))?;
        Ok(ws)
    }

    fn stop(mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

fn now_us() -> i64 {
    use weir_engine::clock::Clock;
    weir_engine::clock::SystemClock.now_us()
}

fn parse_us(v: &Value) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|d| d.timestamp_micros())
}

fn percentiles(name: &str, mut v: Vec<i64>) {
    if v.is_empty() {
        println!("{name}: no samples");
        return;
    }
    v.sort_unstable();
    let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    println!(
        "{name}: n={} p50={:.2} ms p90={:.2} ms p99={:.2} ms max={:.2} ms",
        v.len(),
        p(0.5),
        p(0.9),
        p(0.99),
        p(1.0)
    );
}

/// Latency from a window closing to its rows arriving at a WebSocket subscriber, with a
/// generator at `rate` events/s whose event time follows the wall clock.
pub fn ws_latency(rate: u64, secs: u64, window_ms: u64, batch_delay_ms: u64) -> Result<()> {
    let config = format!(
        "[engine]\nbatch_delay = '{batch_delay_ms}ms'\n[server]\nws_send_timeout = '30s'\n"
    );
    let sql = format!(
        "CREATE SOURCE dl (ts TIMESTAMP, region VARCHAR, status VARCHAR, speed_mbps DOUBLE, \
           WATERMARK FOR ts AS ts - INTERVAL '1' MILLISECOND) \
         WITH (connector = 'generator', kind = 'downloads', 'rows.per.second' = '{rate}', \
           partitions = '2');\n\
         CREATE MATERIALIZED VIEW health AS SELECT window_start, window_end, region, \
           count(*) AS downloads, count(*) FILTER (WHERE status = 'failed') AS failures, \
           avg(speed_mbps) AS avg_speed \
           FROM TUMBLE(dl, ts, INTERVAL '{window_ms}' MILLISECOND) \
           GROUP BY window_start, window_end, region;\n"
    );
    let server = Server::start("latency", &config, &sql, 2)?;
    let mut ws = server.subscribe("/api/v1/views/health/subscribe")?;
    if let MaybeTlsStream::Plain(t) = ws.get_ref() {
        t.set_read_timeout(Some(Duration::from_secs(1)))?;
    }
    // Skip the first windows: the pipeline is warming up and the first window is partial.
    let warmup = Duration::from_secs(3);
    let start = Instant::now();
    let rows_at_start = server.source_rows("dl")?;
    let mut measured_from = None;
    let (mut emitted, mut closable, mut messages, mut rows) = (vec![], vec![], 0u64, 0u64);
    while start.elapsed() < warmup + Duration::from_secs(secs) {
        let msg = match ws.read() {
            Ok(Message::Text(t)) => t,
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => bail!("websocket: {e}"),
        };
        let recv = now_us();
        let m: Value = serde_json::from_str(&msg)?;
        if m["type"] != "rows" || start.elapsed() < warmup {
            continue;
        }
        measured_from.get_or_insert((Instant::now(), server.source_rows("dl")?));
        let batch = m["rows"].as_array().cloned().unwrap_or_default();
        messages += 1;
        rows += batch.len() as u64;
        if let Some(at) = parse_us(&m["emitted_at"]) {
            emitted.push(recv - at);
        }
        // The earliest instant the window could close: its end (plus the 1 ms watermark
        // delay; event time follows the wall clock).
        if let Some(end) = batch
            .iter()
            .filter_map(|r| parse_us(&r["window_end"]))
            .max()
        {
            closable.push(recv - end);
        }
    }
    let (t0, r0) = measured_from.context("no window closed during the run")?;
    let elapsed = t0.elapsed().as_secs_f64();
    let r1 = server.source_rows("dl")?;
    println!(
        "input: {:.0} events/s sustained over the measurement (target {rate}); {} windows' rows \
         in {messages} messages ({rows} rows); {} events before it",
        (r1 - r0) as f64 / elapsed,
        messages,
        r0 - rows_at_start
    );
    percentiles("close (emitted_at) -> client receive", emitted);
    percentiles("window_end -> client receive", closable);
    drop(ws);
    server.stop()
}

/// `subscribers` WebSocket clients on one view while a fast bounded source runs; reports
/// delivery and the source's throughput measured only while every client is connected.
pub fn ws_fanout(subscribers: usize, rows: u64, window_secs: u64) -> Result<()> {
    let config = "[server]\nws_send_timeout = '30s'\n";
    let server = Server::start("fanout", config, "", 2)?;
    // Event time advances 1 ms per row at full speed, so a window of `window_secs` holds
    // 1000 x window_secs rows of each region group.
    let sql = format!(
        "CREATE SOURCE fast (ts TIMESTAMP, region VARCHAR, status VARCHAR, speed_mbps DOUBLE, \
           WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
         WITH (connector = 'generator', kind = 'downloads', 'rows.per.second' = '0', \
           rows = '{rows}', start = '2024-01-01T00:00:00Z');\n\
         CREATE MATERIALIZED VIEW health WITH ('retention.rows' = '10000000') AS \
           SELECT window_start, window_end, region, count(*) AS downloads, \
           avg(speed_mbps) AS avg_speed FROM TUMBLE(fast, ts, INTERVAL '{window_secs}' SECOND) \
           GROUP BY window_start, window_end, region;"
    );
    let created = Instant::now();
    server.post("/api/v1/sql", &sql)?;
    let delivered = Arc::new(AtomicU64::new(0));
    let messages = Arc::new(AtomicU64::new(0));
    let gaps = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::with_capacity(subscribers);
    for i in 0..subscribers {
        let mut ws = server
            .subscribe("/api/v1/views/health/subscribe")
            .with_context(|| format!("subscriber {i}"))?;
        if let MaybeTlsStream::Plain(t) = ws.get_ref() {
            t.set_read_timeout(Some(Duration::from_millis(500)))?;
        }
        let (delivered, messages, gaps, done) = (
            delivered.clone(),
            messages.clone(),
            gaps.clone(),
            done.clone(),
        );
        clients.push(
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || -> u64 {
                    let mut last = 0u64;
                    while !done.load(Ordering::Relaxed) {
                        let t = match ws.read() {
                            Ok(Message::Text(t)) => t,
                            Ok(_) => continue,
                            Err(tungstenite::Error::Io(_)) => continue,
                            Err(_) => break,
                        };
                        let Ok(m) = serde_json::from_str::<Value>(&t) else {
                            continue;
                        };
                        let n = m["rows"].as_array().map_or(0, |r| r.len() as u64);
                        match m["type"].as_str() {
                            Some("snapshot") => last = m["last_seq"].as_u64().unwrap_or(0),
                            Some("rows") => {
                                if m["first_seq"].as_u64() != Some(last + 1) {
                                    gaps.fetch_add(1, Ordering::Relaxed);
                                }
                                last = m["last_seq"].as_u64().unwrap_or(last);
                            }
                            _ => break,
                        }
                        delivered.fetch_add(n, Ordering::Relaxed);
                        messages.fetch_add(1, Ordering::Relaxed);
                    }
                    last
                })?,
        );
    }
    let connected_after = created.elapsed();
    let view = server.get("/api/v1/views/health")?;
    let subscribed = view["subscribers"].as_u64().unwrap_or(0);
    let (t0, r0, d0) = (
        Instant::now(),
        server.source_rows("fast")?,
        delivered.load(Ordering::Relaxed),
    );
    while !server.finished("fast")? {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (t1, r1) = (t0.elapsed().as_secs_f64(), server.source_rows("fast")?);
    let last_seq = server.get("/api/v1/views/health")?["last_seq"]
        .as_u64()
        .unwrap_or(0);
    // Let every client catch up with the last row.
    let caught_up = Instant::now();
    while delivered.load(Ordering::Relaxed) < last_seq * subscribers as u64
        && caught_up.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let t2 = t0.elapsed().as_secs_f64();
    let d1 = delivered.load(Ordering::Relaxed);
    done.store(true, Ordering::Relaxed);
    let lasts: Vec<u64> = clients.into_iter().map(|c| c.join().unwrap_or(0)).collect();
    let complete = lasts.iter().filter(|l| **l == last_seq).count();
    println!(
        "{subscribers} subscribers ({subscribed} seen by the server) connected {:.1} s after \
         the source started, at row {r0} of {rows}",
        connected_after.as_secs_f64()
    );
    println!(
        "source throughput while they were connected: {:.0} events/s ({} rows in {t1:.2} s)",
        (r1 - r0) as f64 / t1,
        r1 - r0
    );
    println!(
        "view emitted {last_seq} rows; delivered {} rows in {} messages to all clients in \
         {t2:.2} s: {:.0} rows/s; clients with every row: {complete}/{subscribers}; seq gaps: {}",
        d1 - d0,
        messages.load(Ordering::Relaxed),
        (d1 - d0) as f64 / t2,
        gaps.load(Ordering::Relaxed)
    );
    server.stop()
}

/// CPU seconds (user + system) of this process's threads not named `skip`: the server's
/// share when the clients run on threads of that name.
fn cpu_seconds_except(skip: &str) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut total = 0u64;
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() == skip {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // The fields after the command (which ends at the last ')'): utime is the 12th,
        // stime the 13th.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, r)| r.split_whitespace().collect())
            .unwrap_or_default();
        let num = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        total += num(11) + num(12);
    }
    total as f64 / tick
}

/// `subscribers` WebSocket clients on a per-symbol view of the 12-symbol ticks stream,
/// each following `follow` symbols through a filtered subscription (`filtered`), or taking
/// every row (and keeping the ones it wants, as a client must without filters). Reports
/// the rows delivered per second and the server's CPU time.
pub fn ws_rooms(
    subscribers: usize,
    follow: usize,
    filtered: bool,
    rate: u64,
    secs: u64,
) -> Result<()> {
    let config = "[server]\nws_send_timeout = '30s'\nws_max_subscribers_per_client = 100000\n";
    let server = Server::start("rooms", config, "", 2)?;
    let rows = rate * secs;
    let sql = format!(
        "CREATE SOURCE t (symbol VARCHAR NOT NULL, price DOUBLE, volume BIGINT, ts TIMESTAMP NOT NULL, \
           WATERMARK FOR ts AS ts) \
         WITH (connector = 'generator', kind = 'ticks', 'rows.per.second' = '{rate}', rows = '{rows}');\n\
         CREATE MATERIALIZED VIEW per_symbol AS \
           SELECT window_start, symbol, count(*) AS trades, avg(price) AS price \
           FROM TUMBLE(t, ts, INTERVAL '100' MILLISECOND) GROUP BY window_start, window_end, symbol;"
    );
    server.post("/api/v1/sql", &sql)?;
    // The symbols, from the first windows.
    let started = Instant::now();
    let symbols: Vec<String> = loop {
        let v = server.get("/api/v1/views/per_symbol/rows?limit=1000")?;
        let mut s: Vec<String> = v["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["symbol"].as_str().map(str::to_string))
            .collect();
        s.sort();
        s.dedup();
        if s.len() >= 12 {
            break s;
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the view has {} symbols after 30 s", s.len());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let delivered = Arc::new(AtomicU64::new(0));
    let wanted = Arc::new(AtomicU64::new(0));
    let wrong = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::with_capacity(subscribers);
    for i in 0..subscribers {
        let mine: Vec<String> = (0..follow)
            .map(|k| symbols[(i + k * 5) % symbols.len()].clone())
            .collect();
        let path = if filtered {
            let q: Vec<String> = mine.iter().map(|s| format!("key.symbol={s}")).collect();
            format!("/api/v1/views/per_symbol/subscribe?{}", q.join("&"))
        } else {
            "/api/v1/views/per_symbol/subscribe".to_string()
        };
        let mut ws = server
            .subscribe(&path)
            .with_context(|| format!("subscriber {i}"))?;
        if let MaybeTlsStream::Plain(t) = ws.get_ref() {
            t.set_read_timeout(Some(Duration::from_millis(500)))?;
        }
        let (delivered, wanted, wrong, done) = (
            delivered.clone(),
            wanted.clone(),
            wrong.clone(),
            done.clone(),
        );
        clients.push(
            std::thread::Builder::new()
                .name("wsclient".into())
                .stack_size(256 << 10)
                .spawn(move || {
                    while !done.load(Ordering::Relaxed) {
                        let t = match ws.read() {
                            Ok(Message::Text(t)) => t,
                            Ok(_) => continue,
                            Err(tungstenite::Error::Io(_)) => continue,
                            Err(_) => break,
                        };
                        let Ok(m) = serde_json::from_str::<Value>(&t) else {
                            continue;
                        };
                        let rows = m["rows"].as_array().cloned().unwrap_or_default();
                        let mut keep = 0;
                        for r in &rows {
                            if mine.iter().any(|s| r["symbol"] == s.as_str()) {
                                keep += 1;
                            }
                        }
                        if filtered && keep != rows.len() as u64 {
                            wrong.fetch_add(rows.len() as u64 - keep, Ordering::Relaxed);
                        }
                        delivered.fetch_add(rows.len() as u64, Ordering::Relaxed);
                        wanted.fetch_add(keep, Ordering::Relaxed);
                    }
                })?,
        );
    }
    let (t0, c0, d0, w0) = (
        Instant::now(),
        cpu_seconds_except("wsclient"),
        delivered.load(Ordering::Relaxed),
        wanted.load(Ordering::Relaxed),
    );
    while !server.finished("t")? {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let the clients take what was sent (no new rows for 1 s).
    let mut last = (delivered.load(Ordering::Relaxed), Instant::now());
    while last.1.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(100));
        let d = delivered.load(Ordering::Relaxed);
        if d != last.0 {
            last = (d, Instant::now());
        }
    }
    let t = (last.1 - t0).as_secs_f64();
    let cpu = cpu_seconds_except("wsclient") - c0;
    done.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let (d, w) = (
        delivered.load(Ordering::Relaxed) - d0,
        wanted.load(Ordering::Relaxed) - w0,
    );
    println!(
        "{subscribers} subscribers following {follow} of {} symbols, {}: {d} rows delivered \
         ({w} of them wanted) in {t:.2} s: {:.0} rows/s delivered, {:.0} wanted rows/s; \
         server CPU {cpu:.2} s ({:.0}% of a core); rows outside the filter: {}",
        symbols.len(),
        if filtered { "filtered" } else { "unfiltered" },
        d as f64 / t,
        w as f64 / t,
        cpu / t * 100.0,
        wrong.load(Ordering::Relaxed)
    );
    server.stop()
}

/// HTTP ingest: `clients` threads post `batch` events per request to an `http` source for
/// `secs` seconds, each waiting for its answer (durable acknowledgement: the events are in
/// Kafka). Reports accepted events per second, request latency percentiles and the
/// server's CPU. `bootstrap`: a Kafka cluster (else the embedded broker).
pub fn http_ingest(
    clients: usize,
    batch: usize,
    secs: u64,
    bootstrap: Option<String>,
) -> Result<()> {
    let config = match &bootstrap {
        Some(b) => {
            format!("[kafka]\nbootstrap_servers = \"{b}\"\n[kafka.embedded]\nenabled = false\n")
        }
        None => String::new(),
    };
    let topic = format!("bench-http-{}", std::process::id());
    // In the files, so that the embedded broker starts for it.
    let sql = format!(
        "CREATE SOURCE ev (id BIGINT NOT NULL, user_id TEXT, page TEXT, ts TIMESTAMP NOT NULL, \
           WATERMARK FOR ts AS ts) WITH (connector = 'http', topic = '{topic}', partitions = '2');\n\
         CREATE MATERIALIZED VIEW per_page WITH ('retention.rows' = '1000') AS \
           SELECT window_start, page, count(*) AS n FROM TUMBLE(ev, ts, INTERVAL '1' SECOND) \
           GROUP BY window_start, window_end, page;"
    );
    let server = Server::start("ingest", &config, &sql, 2)?;
    let url = format!("http://{}/api/v1/sources/ev/events", server.addr);
    // The topic is ready once a first request is taken.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let warm = agent.post(&url).send("{\"id\":0,\"ts\":0}")?;
    if warm.status() != 200 {
        bail!("the first request got {}", warm.status());
    }
    let done = Arc::new(AtomicBool::new(false));
    let (c0, t0) = (cpu_seconds_except("ingclient"), Instant::now());
    let mut handles = Vec::new();
    for c in 0..clients {
        let (url, done, agent) = (url.clone(), done.clone(), agent.clone());
        handles.push(std::thread::Builder::new().name("ingclient".into()).spawn(
            move || -> (u64, Vec<i64>, u64) {
                let (mut accepted, mut lat, mut failed) = (0u64, Vec::new(), 0u64);
                let mut id = (c as i64) << 40;
                let pages = ["/", "/cart", "/pay", "/search", "/item"];
                while !done.load(Ordering::Relaxed) {
                    let mut body = String::with_capacity(batch * 80);
                    for _ in 0..batch {
                        id += 1;
                        body.push_str(&format!(
                            "{{\"id\":{id},\"user_id\":\"u{}\",\"page\":\"{}\",\"ts\":{}}}\n",
                            id % 1000,
                            pages[(id % 5) as usize],
                            now_us() / 1000
                        ));
                    }
                    let t = Instant::now();
                    match agent.post(&url).send(body.as_str()) {
                        Ok(r) if r.status() == 200 => {
                            accepted += batch as u64;
                            lat.push(t.elapsed().as_micros() as i64);
                        }
                        _ => failed += 1,
                    }
                }
                (accepted, lat, failed)
            },
        )?);
    }
    std::thread::sleep(Duration::from_secs(secs));
    done.store(true, Ordering::Relaxed);
    let (mut accepted, mut lat, mut failed) = (0u64, Vec::new(), 0u64);
    for h in handles {
        let (a, l, f) = h.join().map_err(|_| anyhow::anyhow!("a client panicked"))?;
        accepted += a;
        lat.extend(l);
        failed += f;
    }
    let t = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds_except("ingclient") - c0;
    println!(
        "{clients} clients x {batch} events per request for {t:.1} s on {}: {accepted} events \
         accepted, {:.0} events/s, {} requests ({failed} failed); server CPU {cpu:.2} s \
         ({:.0}% of a core): {:.0} events/s per core",
        bootstrap.as_deref().unwrap_or("the embedded broker"),
        accepted as f64 / t,
        lat.len(),
        cpu / t * 100.0,
        accepted as f64 / cpu.max(1e-9)
    );
    percentiles("acknowledgement latency (µs)", lat);
    // The pipeline read them all.
    let deadline = Instant::now() + Duration::from_secs(120);
    while server.source_rows("ev")? < accepted + 1 {
        if Instant::now() > deadline {
            bail!(
                "the source read {} of {} events",
                server.source_rows("ev")?,
                accepted + 1
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("the source read every accepted event ({})", accepted + 1);
    server.stop()
}

/// What the webhook benchmark's receiver got.
#[derive(Default)]
struct Received {
    keys: parking_lot::Mutex<std::collections::HashSet<String>>,
    rows: AtomicU64,
    requests: AtomicU64,
    refused: AtomicU64,
    down: AtomicBool,
}

async fn receive(
    axum::extract::State(r): axum::extract::State<Arc<Received>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    r.requests.fetch_add(1, Ordering::Relaxed);
    if r.down.load(Ordering::Relaxed) {
        r.refused.fetch_add(1, Ordering::Relaxed);
        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return axum::http::StatusCode::BAD_REQUEST;
    };
    // A repeat (same key) is answered 200 and not counted again.
    if r.keys.lock().insert(key) {
        let n = v["rows"].as_array().map_or(0, |a| a.len() as u64);
        r.rows.fetch_add(n, Ordering::Relaxed);
    }
    axum::http::StatusCode::OK
}

/// Resident memory of this process, in MiB.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The webhook sink against a local receiver (axum on loopback, dropping repeats by the
/// Idempotency-Key header): first `rows` rows as fast as they come (rows/s delivered),
/// then, with `down_secs` > 0, a generator at `rate` rows/s for `secs` seconds while the
/// receiver answers 503 for `down_secs` from its 10th second: memory each second, and
/// every row delivered (or dead-lettered) once it is back.
pub fn webhook(rows: u64, rate: u64, secs: u64, down_secs: u64, retry_max: u32) -> Result<()> {
    let received = Arc::new(Received::default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(received.clone());
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let hook = format!("http://{}/hook", listener.local_addr()?);
    rt.spawn(async move { axum::serve(listener, app).await });

    // Throughput: a bounded stream as fast as it comes.
    let sql = format!(
        "CREATE SOURCE fast (event_id VARCHAR, ts TIMESTAMP NOT NULL, region VARCHAR, status VARCHAR, \
           speed_mbps DOUBLE, WATERMARK FOR ts AS ts) \
         WITH (connector = 'generator', kind = 'downloads', 'rows.per.second' = '0', rows = '{rows}');\n\
         CREATE MATERIALIZED VIEW raw WITH ('retention.rows' = '0') AS \
           SELECT event_id, ts, region, status, speed_mbps FROM fast;\n\
         CREATE SINK hook FROM raw WITH (connector = 'webhook', url = '{hook}');"
    );
    let server = Server::start("webhook", "", &sql, 2)?;
    let t0 = Instant::now();
    while received.rows.load(Ordering::Relaxed) < rows {
        if t0.elapsed() > Duration::from_secs(600) {
            bail!(
                "{} of {rows} rows after 600 s",
                received.rows.load(Ordering::Relaxed)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = t0.elapsed().as_secs_f64();
    println!(
        "{rows} rows to a local receiver in {t:.2} s: {:.0} rows/s, {} requests of up to 500 rows",
        rows as f64 / t,
        received.requests.load(Ordering::Relaxed)
    );
    server.stop()?;
    if down_secs == 0 {
        return Ok(());
    }

    // An outage: the receiver answers 503 for `down_secs`.
    received.rows.store(0, Ordering::Relaxed);
    received.keys.lock().clear();
    let total = rate * secs;
    let sql = format!(
        "CREATE SOURCE paced (event_id VARCHAR, ts TIMESTAMP NOT NULL, region VARCHAR, \
           WATERMARK FOR ts AS ts) \
         WITH (connector = 'generator', kind = 'downloads', 'rows.per.second' = '{rate}', rows = '{total}');\n\
         CREATE MATERIALIZED VIEW raw WITH ('retention.rows' = '0') AS SELECT event_id, ts, region FROM paced;\n\
         CREATE SINK hook FROM raw WITH (connector = 'webhook', url = '{hook}', 'retry.max' = '{retry_max}');"
    );
    let server = Server::start("webhook-down", "", &sql, 2)?;
    let dead_letters = server.dir.join("data/dead-letter/hook.jsonl");
    let dead = || {
        std::fs::read_to_string(&dead_letters)
            .map(|s| s.lines().count() as u64)
            .unwrap_or(0)
    };
    let t0 = Instant::now();
    let mut peak_before = 0f64;
    let mut peak_down = 0f64;
    let mut back_at = None;
    loop {
        let s = t0.elapsed().as_secs();
        let down = (10..10 + down_secs).contains(&s);
        received.down.store(down, Ordering::Relaxed);
        let rss = rss_mib();
        if s < 10 {
            peak_before = peak_before.max(rss);
        } else if down {
            peak_down = peak_down.max(rss);
        } else if back_at.is_none() {
            back_at = Some(Instant::now());
        }
        let (got, dl) = (received.rows.load(Ordering::Relaxed), dead());
        if s.is_multiple_of(5) && t0.elapsed().subsec_millis() < 200 {
            println!(
                "t={s:>3} s receiver {} rows {got} dead-lettered {dl} rss {rss:.0} MiB source read {}",
                if down { "DOWN" } else { "up" },
                server.source_rows("paced")?
            );
        }
        if !down && got + dl >= total && back_at.is_some() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(secs + down_secs + 300) {
            bail!("{got} rows received and {dl} dead-lettered of {total}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (got, dl) = (received.rows.load(Ordering::Relaxed), dead());
    println!(
        "receiver down {down_secs} s: {total} rows emitted, {got} received once each, {dl} \
         dead-lettered (retry.max {retry_max}), {} requests refused; caught up {:.1} s after \
         it came back; peak RSS {peak_before:.0} MiB before, {peak_down:.0} MiB while down",
        received.refused.load(Ordering::Relaxed),
        back_at.map_or(0.0, |b| b.elapsed().as_secs_f64())
    );
    if got + dl != total {
        bail!("rows lost or repeated: {got} + {dl} != {total}");
    }
    server.stop()
}
