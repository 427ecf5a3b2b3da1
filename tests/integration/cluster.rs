//! A Weir cluster (docs/cluster.md): three `weir run` processes (the real binary) with
//! the same `[cluster] group` over a 12-partition Kafka topic keyed differently from the
//! views' GROUP BY, writing to PostgreSQL. Members are SIGKILLed and replaced mid-stream;
//! the tables must equal the answer computed directly from the events, every row once.

#![allow(clippy::unwrap_used)]

use crate::crash::{WindowRow, expected, pg_lock, read_windows, weir_bin};
use crate::kafka::{
    Ev, T0, bootstrap, broker_lock, create_topic, events, produce_all, producer, sentinels, unique,
};
use crate::postgres::pg_url;
use sqlx::Row;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 12;
const WINDOWS: i64 = 60;
const PER_WINDOW: i64 = 100;

/// One row of `per_speed`: (window_start ms, speed, n).
type SpeedRow = (i64, f64, i64);

fn expected_speed(evs: &[Ev]) -> Vec<SpeedRow> {
    let mut m: BTreeMap<(i64, u64), i64> = BTreeMap::new();
    for e in evs {
        let start = e.ts - e.ts.rem_euclid(10_000);
        *m.entry((start, e.speed.to_bits())).or_default() += 1;
    }
    let mut out: Vec<SpeedRow> = m
        .into_iter()
        .map(|((s, speed), n)| (s, f64::from_bits(speed), n))
        .collect();
    out.sort_by(|a, b| a.partial_cmp(b).unwrap());
    out
}

async fn read_speed(db: &sqlx::PgPool, table: &str) -> Vec<SpeedRow> {
    let rows = sqlx::query(&format!("SELECT window_start, speed_mbps, n FROM {table}"))
        .fetch_all(db)
        .await
        .unwrap_or_default();
    let mut out: Vec<SpeedRow> = rows
        .iter()
        .map(|r| {
            let ts: chrono::DateTime<chrono::Utc> = r.get(0);
            (ts.timestamp_millis(), r.get(1), r.get(2))
        })
        .collect();
    out.sort_by(|a, b| a.partial_cmp(b).unwrap());
    out
}

struct Cluster {
    dir: PathBuf,
    sql: PathBuf,
    config: PathBuf,
    members: BTreeMap<usize, Child>,
}

impl Cluster {
    fn log(&self, member: usize) -> PathBuf {
        self.dir.join(format!("m{member}.log"))
    }

    /// Start member `m` (its own data directory and log; the same member id as any
    /// member `m` before it, so a replacement takes its place in the groups).
    fn start(&mut self, m: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(m))
            .unwrap();
        let child = Command::new(weir_bin())
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(self.dir.join(format!("data-{m}")))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--progress-interval")
            .arg("0s")
            .arg(&self.sql)
            .env("WEIR__CLUSTER__MEMBER", format!("m{m}"))
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        assert!(self.members.insert(m, child).is_none());
    }

    fn kill(&mut self, m: usize) {
        let mut child = self.members.remove(&m).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM every member and check each stopped cleanly.
    fn stop_all(&mut self) {
        for (m, mut child) in std::mem::take(&mut self.members) {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let status = child.wait().unwrap();
            let log = std::fs::read_to_string(self.log(m)).unwrap_or_default();
            assert!(
                status.success(),
                "member {m} exited with {status}; log:\n{log}"
            );
        }
    }

    fn logs(&self) -> String {
        (0..8)
            .filter_map(|m| {
                std::fs::read_to_string(self.log(m))
                    .ok()
                    .map(|l| format!("--- m{m}\n{l}"))
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.members.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Wait until `done` holds, failing with the members' logs after `limit`.
async fn wait_for<F, Fut>(cluster: &Cluster, limit: Duration, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<String>>,
{
    let started = Instant::now();
    let deadline = started + limit;
    let mut said = started;
    loop {
        let Some(state) = done().await else {
            eprintln!("{what}: after {:.1}s", started.elapsed().as_secs_f64());
            return;
        };
        if said.elapsed() >= Duration::from_secs(5) {
            eprintln!(
                "{what}: waiting {:.0}s: {state}",
                started.elapsed().as_secs_f64()
            );
            said = Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not after {}s ({state}); logs:\n{}",
            limit.as_secs(),
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_of_three_with_a_member_killed_and_replaced_is_exact() {
    let Some(b) = bootstrap() else { return };
    let Some(url) = pg_url() else { return };
    let _g = broker_lock().read().await;
    let _pg = pg_lock().read().await;
    let topic = unique("cluster");
    create_topic(&b, &topic, PARTITIONS).await;
    let evs = events(PARTITIONS, WINDOWS, PER_WINDOW, 11);
    let (want_windows, _) = expected(&evs);
    let want_speed = expected_speed(&evs);

    let dir = tempfile::tempdir().unwrap();
    let suffix = topic.replace('-', "_");
    let (wtable, stable) = (format!("cl_w_{suffix}"), format!("cl_s_{suffix}"));
    let sql = dir.path().join("pipeline.sql");
    std::fs::write(
        &sql,
        format!(
            "CREATE SOURCE downloads (ts TIMESTAMP NOT NULL, region TEXT, status TEXT, \
             speed_mbps DOUBLE, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) \
             WITH (connector = 'kafka', topic = '{topic}', format = 'json');\n\
             CREATE MATERIALIZED VIEW per_window AS SELECT window_start, window_end, region, \
             count(*) AS downloads, count(*) FILTER (WHERE status = 'failed') AS failures, \
             sum(speed_mbps) AS speed FROM TUMBLE(downloads, ts, INTERVAL '10' SECOND) \
             GROUP BY window_start, window_end, region;\n\
             CREATE MATERIALIZED VIEW per_speed AS SELECT window_start, speed_mbps, \
             count(*) AS n FROM TUMBLE(downloads, ts, INTERVAL '10' SECOND) \
             GROUP BY window_start, speed_mbps;\n\
             CREATE SINK pg_windows FROM per_window WITH (connector = 'postgres', \
             url = '{url}', table = '{wtable}');\n\
             CREATE SINK pg_speed FROM per_speed WITH (connector = 'postgres', \
             url = '{url}', table = '{stable}');\n"
        ),
    )
    .unwrap();
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbootstrap_servers = \"{b}\"\n[kafka.embedded]\nenabled = false\n\
             [engine]\nbatch_rows = 500\nkey_partitions = 8\n\
             [cluster]\ngroup = \"{topic}\"\nsession_timeout = \"6s\"\n\
             state_dir = \"{}\"\nsnapshot_interval = \"500ms\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap();
    let mut cluster = Cluster {
        dir: dir.path().to_path_buf(),
        sql,
        config,
        members: BTreeMap::new(),
    };
    // The events in three parts by time, the sentinels (far-future events on every
    // partition, which close every window) last.
    let span = WINDOWS * 10_000;
    let part = |k: i64| -> Vec<Ev> {
        evs.iter()
            .filter(|e| e.ts >= T0 + span * k / 3 && e.ts < T0 + span * (k + 1) / 3)
            .cloned()
            .collect()
    };
    let p = producer(&b);
    produce_all(&p, &topic, &part(0)).await;
    for m in 0..3 {
        cluster.start(m);
    }
    wait_for(
        &cluster,
        Duration::from_secs(120),
        "first windows",
        || async {
            let n = read_windows(&db, &wtable).await.len();
            (n == 0).then(|| format!("{n} rows"))
        },
    )
    .await;
    // Mid-stream: member 1 killed and replaced (the same member id).
    produce_all(&p, &topic, &part(1)).await;
    cluster.kill(1);
    cluster.start(1);
    let before = read_windows(&db, &wtable).await.len();
    wait_for(
        &cluster,
        Duration::from_secs(120),
        "progress after the kill",
        || async {
            let n = read_windows(&db, &wtable).await.len();
            (n <= before).then(|| format!("{n} rows, {before} before"))
        },
    )
    .await;
    // Member 2 killed and not replaced: the others take its partitions after the
    // session timeout.
    cluster.kill(2);
    produce_all(&p, &topic, &part(2)).await;
    produce_all(&p, &topic, &sentinels(PARTITIONS, T0 + span + 600_000)).await;
    wait_for(
        &cluster,
        Duration::from_secs(180),
        "every window",
        || async {
            let (w, s) = (
                read_windows(&db, &wtable).await.len(),
                read_speed(&db, &stable).await.len(),
            );
            (w < want_windows.len() || s < want_speed.len()).then(|| {
                format!(
                    "{w} of {} window rows, {s} of {} speed rows",
                    want_windows.len(),
                    want_speed.len()
                )
            })
        },
    )
    .await;
    cluster.stop_all();
    // Read to the end, with every member stopped: nothing missing, nothing twice, nothing
    // extra.
    let got: Vec<WindowRow> = read_windows(&db, &wtable).await;
    assert_eq!(got, want_windows);
    assert_eq!(read_speed(&db, &stable).await, want_speed);
    let logs = cluster.logs();
    eprintln!(
        "{} window rows, {} speed rows; {} key partition take-overs",
        want_windows.len(),
        want_speed.len(),
        logs.matches("key partition taken over").count()
    );
    assert!(
        logs.contains("key partition taken over"),
        "no key partition changed hands; logs:\n{logs}"
    );
}
