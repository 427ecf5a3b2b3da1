//! `weir-bench cluster`: the region-health view over a pre-loaded Kafka topic, run by the
//! release `weir` binary alone (`--members 0`) or as a cluster of N members on this machine
//! (docs/cluster.md), timed from start until member 0 serves every window's row over
//! REST. With `--kill-after S` the last member is SIGKILLed S seconds in, and the time
//! until the served rows grow again is the failover time. The members' totals give the
//! exchange bytes per input event.

use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const SQL: &str = "CREATE SOURCE downloads (event_id TEXT NOT NULL, ts TIMESTAMP NOT NULL, \
    content_id TEXT, content_type TEXT, region TEXT, device_type TEXT, status TEXT, \
    duration_seconds DOUBLE, speed_mbps DOUBLE, error_code TEXT, \
    WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) \
    WITH (connector = 'kafka', topic = '{topic}', format = 'json');\n\
    CREATE MATERIALIZED VIEW region_health AS \
    SELECT window_start, window_end, region, count(*) AS downloads, \
    count(*) FILTER (WHERE status = 'failed') AS failures, avg(speed_mbps) AS avg_speed_mbps, \
    max(duration_seconds) AS max_duration_s \
    FROM TUMBLE(downloads, ts, INTERVAL '1' MINUTE) GROUP BY window_start, window_end, region;\n\
    CREATE SINK out FROM region_health WITH (connector = 'blackhole');\n";

/// With `--open-groups`: one open group per event until the end (a one-day window keyed
/// by event id), so the state a failover restores is large.
const OPEN_GROUPS_SQL: &str = "CREATE MATERIALIZED VIEW open_state AS \
    SELECT window_start, window_end, event_id, count(*) AS n \
    FROM TUMBLE(downloads, ts, INTERVAL '1' DAY) GROUP BY window_start, window_end, event_id;\n\
    CREATE SINK out_state FROM open_state WITH (connector = 'blackhole');\n";

/// The key partitions of `view` that the member whose log is `victim` owned when it was
/// killed: those it took over after its last revocation.
fn owned_at_death(victim: &Path, view: &str) -> BTreeSet<u64> {
    let log = plain(&std::fs::read_to_string(victim).unwrap_or_default());
    let mut owned = BTreeSet::new();
    for line in log.lines().filter(|l| l.contains(&format!("view={view} "))) {
        if line.contains("key partitions revoked") {
            owned.clear();
        } else if line.contains("key partition taken over") {
            owned.insert(field(line, "kp"));
        }
    }
    owned
}

/// What the survivors logged, after the kill, for the first take-over of each of the dead
/// member's key partitions of `view` (the members' logs from their lengths at the kill):
/// partitions, open groups restored, the longest restore, and the time from the kill to
/// the last of those take-overs.
fn restored_after_kill(
    logs: &[(PathBuf, usize)],
    dead: &BTreeSet<u64>,
    view: &str,
    killed_at: chrono::DateTime<chrono::Utc>,
) -> (usize, u64, u64, i64) {
    let mut first: BTreeMap<u64, (u64, u64, i64)> = BTreeMap::new();
    for (path, from) in logs {
        let log = plain(&std::fs::read_to_string(path).unwrap_or_default());
        for line in log.get(*from..).unwrap_or("").lines() {
            if !line.contains("key partition taken over")
                || !line.contains(&format!("view={view} "))
            {
                continue;
            }
            let kp = field(line, "kp");
            if !dead.contains(&kp) {
                continue;
            }
            let Some(at) = line
                .split_whitespace()
                .next()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            else {
                continue;
            };
            let after = (at.with_timezone(&chrono::Utc) - killed_at).num_milliseconds();
            let this = (field(line, "open_groups"), field(line, "ms"), after);
            first
                .entry(kp)
                .and_modify(|f| {
                    if after < f.2 {
                        *f = this
                    }
                })
                .or_insert(this);
        }
    }
    let groups = first.values().map(|f| f.0).sum();
    let longest = first.values().map(|f| f.1).max().unwrap_or(0);
    let last = first.values().map(|f| f.2).max().unwrap_or(0);
    (first.len(), groups, longest, last)
}

/// When the kill happened, and each survivor's log with its length then.
type KillMark = (chrono::DateTime<chrono::Utc>, Vec<(PathBuf, usize)>);

/// The number after `name=` in a log line (0 if none).
fn field(line: &str, name: &str) -> u64 {
    line.split(&format!(" {name}="))
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}

/// The (minute, region) windows of `input` (JSON lines from `gen`): the rows the view
/// emits once every window has closed.
fn expected_rows(input: &Path) -> Result<(usize, u64)> {
    let file =
        std::fs::File::open(input).with_context(|| format!("reading {}", input.display()))?;
    let mut windows = BTreeSet::new();
    let mut events = 0u64;
    for line in std::io::BufReader::with_capacity(1 << 20, file).lines() {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        let e: serde_json::Value = serde_json::from_str(&line)?;
        let ts = e["ts"].as_str().unwrap_or_default();
        let region = e["region"].as_str().map(str::to_string);
        windows.insert((ts.get(..16).unwrap_or_default().to_string(), region));
        events += 1;
    }
    Ok((windows.len(), events))
}

/// One far-future event per partition: every window of the data closes.
fn produce_sentinels(bootstrap: &str, topic: &str) -> Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = md
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    if partitions == 0 {
        bail!("topic '{topic}' has no partitions: load it first (weir-bench kafka-load)");
    }
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let payload = r#"{"event_id":"sentinel","ts":"2100-01-01T00:00:00","region":"ZZ"}"#;
    for p in 0..partitions {
        producer
            .send(
                BaseRecord::<(), str>::to(topic)
                    .partition(p as i32)
                    .payload(payload),
            )
            .map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(())
}

/// `text` without its terminal colour codes (`ESC [ ... m`).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

struct Member {
    child: Child,
    log: PathBuf,
}

impl Member {
    fn api(&self) -> Option<String> {
        let log = std::fs::read_to_string(&self.log).ok()?;
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("serving the API and dashboard at"))?;
        let at = line.split("http://").nth(1)?.split('/').next()?;
        Some(format!("http://{at}"))
    }
}

/// The newest seq `api` serves for the view (0 before it serves).
fn served(api: &str) -> u64 {
    let url = format!("{api}/api/v1/views/region_health/rows?limit=1");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    agent
        .get(&url)
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["last_seq"].as_u64())
        .unwrap_or(0)
}

pub struct Options {
    pub bootstrap: String,
    pub topic: String,
    pub input: PathBuf,
    pub members: usize,
    pub weir: PathBuf,
    pub kill_after: Option<f64>,
    pub open_groups: bool,
}

pub fn run(o: Options) -> Result<()> {
    let (want, events) = expected_rows(&o.input)?;
    produce_sentinels(&o.bootstrap, &o.topic)?;
    let dir = std::env::temp_dir().join(format!("weir-bench-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let sql = dir.join("bench.sql");
    let mut text = SQL.replace("{topic}", &o.topic);
    if o.open_groups {
        text.push_str(OPEN_GROUPS_SQL);
    }
    std::fs::write(&sql, text)?;
    let group = format!("bench-{}", std::process::id());
    let mut config = format!(
        "[kafka]\nbootstrap_servers = \"{}\"\n[kafka.embedded]\nenabled = false\n",
        o.bootstrap
    );
    if o.members > 0 {
        config.push_str(&format!(
            "[cluster]\ngroup = \"{group}\"\nstate_dir = \"{}\"\n",
            dir.join("state").display()
        ));
    }
    let config_path = dir.join("weir.toml");
    std::fs::write(&config_path, config)?;
    let started = Instant::now();
    let mut members = Vec::new();
    for m in 0..o.members.max(1) {
        let log = dir.join(format!("m{m}.log"));
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(&o.weir);
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .arg("--data-dir")
            .arg(dir.join(format!("data-{m}")))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--progress-interval")
            .arg("0s")
            .arg(&sql)
            .env("WEIR__CLUSTER__MEMBER", format!("m{m}"))
            .env("RUST_LOG", "info")
            .stdout(out.try_clone()?)
            .stderr(out);
        if o.members == 0 {
            // Alone: the source's own group, unique per run.
            cmd.env_remove("WEIR__CLUSTER__GROUP");
        }
        members.push(Member {
            child: cmd.spawn().context("starting weir")?,
            log,
        });
    }
    let deadline = started + Duration::from_secs(600);
    let mut killed: Option<Instant> = None;
    // The kill's wall-clock time and the survivors' log lengths then.
    let mut kill_mark: Option<KillMark> = None;
    // After the kill: when the served rows last grew, and the longest stall between two
    // growths with the time from the kill to its end (the successors' first windows:
    // windows close everywhere only once every input partition moves again).
    let mut grew_at: Option<Instant> = None;
    let mut stall = (Duration::ZERO, Duration::ZERO);
    let mut last = 0;
    loop {
        let n = members[0].api().map_or(0, |a| served(&a));
        if n > last
            && let Some(k) = killed
        {
            let now = Instant::now();
            let gap = now - grew_at.unwrap_or(k);
            if gap > stall.0 {
                stall = (gap, now - k);
            }
            grew_at = Some(now);
        }
        last = last.max(n);
        if n as usize >= want {
            break;
        }
        if let Some(k) = o.kill_after
            && killed.is_none()
            && o.members > 1
            && started.elapsed().as_secs_f64() >= k
        {
            let mut victim = members.pop().context("no member to kill")?;
            victim.child.kill()?;
            victim.child.wait()?;
            killed = Some(Instant::now());
            let lengths = members
                .iter()
                .map(|m| {
                    let len = std::fs::metadata(&m.log).map_or(0, |md| md.len() as usize);
                    (m.log.clone(), len)
                })
                .collect();
            kill_mark = Some((chrono::Utc::now(), lengths));
        }
        if Instant::now() > deadline {
            bail!(
                "not done after 600 s: {last} of {want} rows; logs in {}",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = started.elapsed().as_secs_f64();
    // Stop cleanly; the members log their totals.
    for m in &mut members {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(m.child.id().to_string())
            .status();
    }
    for m in &mut members {
        m.child.wait()?;
    }
    let (mut records, mut bytes) = (0u64, 0u64);
    for m in 0..o.members {
        let log =
            plain(&std::fs::read_to_string(dir.join(format!("m{m}.log"))).unwrap_or_default());
        for line in log.lines().filter(|l| l.contains("cluster member totals")) {
            if o.open_groups && !line.contains("view=region_health ") {
                continue;
            }
            records += field(line, "records_in");
            bytes += field(line, "exchange_bytes");
        }
    }
    let per_event = if records > 0 {
        format!("{:.2}", bytes as f64 / records as f64)
    } else {
        "-".into()
    };
    println!(
        "members={} events={events} rows={want} secs={secs:.3} events_per_sec={:.0} \
         exchange_bytes={bytes} exchange_bytes_per_event={per_event} \
         longest_stall_after_kill_ms={} kill_to_its_end_ms={}",
        o.members,
        events as f64 / secs,
        killed.map_or("-".to_string(), |_| stall.0.as_millis().to_string()),
        killed.map_or("-".to_string(), |_| stall.1.as_millis().to_string()),
    );
    if let (true, Some((at, logs))) = (o.open_groups, &kill_mark) {
        let victim = dir.join(format!("m{}.log", o.members - 1));
        let dead = owned_at_death(&victim, "open_state");
        let (parts, groups, longest, last) = restored_after_kill(logs, &dead, "open_state", *at);
        println!(
            "open_state: the dead member owned {} key partitions; taken over after the \
             kill: {parts}, open_groups_restored={groups} longest_restore_ms={longest} \
             kill_to_last_take_over_ms={last}",
            dead.len()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
