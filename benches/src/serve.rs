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
