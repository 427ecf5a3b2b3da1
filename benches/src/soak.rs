//! `weir-bench soak`: memory over time. Runs the release `weir` binary as a child process
//! on a steady input for N minutes, samples its resident set size (`VmRSS` in
//! `/proc/<pid>/status`) every few seconds, and fails when RSS grew by more than a threshold
//! after a warm-up. A streaming engine runs for months: whatever it keeps of every batch
//! shows up here as a steady slope.
//!
//! ```text
//! weir-bench soak                          10 min: generator -> 1-minute TUMBLE view -> blackhole
//! weir-bench soak --pipeline file          the same from a file source (a named pipe this
//!                                          program writes paced JSON lines into)
//! weir-bench soak --demo                   30 min: weir run queries/ with the embedded Kafka
//!                                          broker and its feeds (warm-up 15 min)
//! ```
//!
//! Output: one line per sample (`t=<s> rss_mib=<MiB>`), then a summary line with RSS at
//! start (the first sample), after the warm-up and at the end, the growth after the
//! warm-up in MiB and MiB per minute (end minus after-warm-up, and a least-squares slope
//! over the samples after the warm-up) and `OK` or `FAIL`. The exit status is 1 when the
//! growth after the warm-up exceeds `--max-growth-mib`, and non-zero as well when `weir`
//! exits early.

use anyhow::{Context, Result, bail, ensure};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What `weir run` runs during a soak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SoakPipeline {
    /// A `generator` source (download events, paced on the wall clock) into a one-minute
    /// TUMBLE view grouped by region (8 groups) into a `blackhole` sink.
    Generator,
    /// The same view over a `file` source reading JSON lines from a named pipe, which this
    /// program fills at the same pace from the downloads generator.
    File,
}

/// `weir-bench soak`'s options.
#[derive(clap::Args)]
pub struct SoakArgs {
    /// How long weir runs, minutes; default 10, with --demo 30.
    #[arg(long)]
    pub minutes: Option<f64>,
    /// Growth is measured from the first sample at or after this many minutes; default
    /// 3, with --demo 15 (the embedded broker keeps up to 5 MB per partition in memory,
    /// and the ticks topic's quietest partition takes about 14 minutes to fill).
    #[arg(long)]
    pub warmup_minutes: Option<f64>,
    #[arg(long, default_value_t = 20.0)]
    pub interval_secs: f64,
    /// Fail (exit non-zero) when RSS grew by more than this after the warm-up.
    #[arg(long, default_value_t = 5.0)]
    pub max_growth_mib: f64,
    /// Run the demo instead: `weir run queries/` with the embedded defaults (Kafka
    /// broker fed by the downloads and ticks generators, Parquet sinks).
    #[arg(long)]
    pub demo: bool,
    /// generator: generator source -> view -> blackhole; file: the same from a file
    /// source reading a named pipe that this program fills with JSON lines.
    #[arg(long, value_enum, default_value = "generator")]
    pub pipeline: SoakPipeline,
    /// Input rows per second (event time follows the wall clock).
    #[arg(long, default_value_t = 2500)]
    pub rate: u64,
    /// The weir binary; default: `weir` next to this program.
    #[arg(long)]
    pub weir: Option<PathBuf>,
    /// --demo: the queries directory; default: this checkout's queries/.
    #[arg(long)]
    pub queries: Option<PathBuf>,
    /// Working directory of the run (data dir, log, Parquet output), kept afterwards;
    /// default: a temporary one, removed after a passing run.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// More arguments for `weir run`, e.g. --weir-arg=--progress-interval=0s.
    #[arg(long = "weir-arg", allow_hyphen_values = true)]
    pub weir_args: Vec<String>,
}

const DOWNLOADS_COLUMNS: &str = "event_id TEXT NOT NULL, ts TIMESTAMP NOT NULL, \
    content_id TEXT, content_type TEXT, region TEXT, device_type TEXT, status TEXT, \
    duration_seconds DOUBLE, speed_mbps DOUBLE, error_code TEXT";

const VIEW: &str = "CREATE MATERIALIZED VIEW region_health AS \
    SELECT window_start, window_end, region, count(*) AS downloads, \
    count(*) FILTER (WHERE status = 'failed') AS failures, avg(speed_mbps) AS avg_speed_mbps, \
    max(duration_seconds) AS max_duration_s \
    FROM TUMBLE(downloads, ts, INTERVAL '1' MINUTE) GROUP BY window_start, window_end, region;\n\
    CREATE SINK out FROM region_health WITH (connector = 'blackhole');\n";

/// The demo's queries in this checkout.
fn default_queries() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../queries")
}

/// The `weir` binary next to this program (both are built into the same target directory).
fn default_weir() -> Result<PathBuf> {
    Ok(std::env::current_exe()?.with_file_name("weir"))
}

/// Resident set size of process `pid`, MiB.
pub fn rss_mib_of(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse::<f64>()
        .ok()?;
    Some(kb / 1024.0)
}

/// The last `n` lines of a log file, for error messages.
fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Least-squares slope of `y` over `x`.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// The child `weir`, stopped (SIGTERM, then SIGKILL after 30 s) when dropped.
struct Weir {
    child: Child,
}

impl Weir {
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Fill the named pipe `fifo` with the downloads generator's rows as JSON lines, paced at
/// `rate` rows per second with event time following the wall clock, until the reader goes
/// away.
fn feed_fifo(fifo: PathBuf, rate: u64) -> Result<()> {
    use weir_engine::connector::{Source, SourceEvent, SourceSpec};
    let parsed = weir_engine::sql::parse_script(&format!(
        "CREATE SOURCE d ({DOWNLOADS_COLUMNS}) WITH (connector = 'generator')"
    ))?;
    let Some(weir_engine::sql::WeirStatement::CreateSource(c)) =
        parsed.first().map(|s| &s.statement)
    else {
        bail!("the downloads columns did not parse");
    };
    let mut source: Box<dyn Source> =
        weir_connectors::registry()
            .source("generator")?
            .create(SourceSpec {
                metadata: vec![],
                name: "soak-feed".into(),
                schema: c.schema.clone(),
                event_time: Some("ts".into()),
                options: weir_engine::options::Options::new([
                    ("kind".to_string(), "downloads".to_string()),
                    ("rows.per.second".to_string(), rate.to_string()),
                ]),
                data_dir: std::env::temp_dir(),
                batch: Default::default(),
                stats: Default::default(),
                workers: 1,
                idle_timeout: weir_engine::connector::DEFAULT_IDLE_TIMEOUT,
            })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Opening a named pipe for writing waits for its reader.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .with_context(|| format!("opening {}", fifo.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
    loop {
        match rt.block_on(source.next())? {
            SourceEvent::Batch { batch, .. } => {
                let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut out);
                w.write(&batch)?;
                w.finish()?;
                // A write error means weir closed the pipe: the soak is over.
                if out.flush().is_err() {
                    return Ok(());
                }
            }
            SourceEvent::End => return Ok(()),
            _ => {}
        }
    }
}

/// Run the soak; `Ok(false)` when RSS grew by more than `max_growth_mib` after the warm-up.
pub fn soak(a: SoakArgs) -> Result<bool> {
    let minutes = a.minutes.unwrap_or(if a.demo { 30.0 } else { 10.0 });
    let warmup_minutes = a.warmup_minutes.unwrap_or(if a.demo { 15.0 } else { 3.0 });
    ensure!(minutes > 0.0, "--minutes must be positive");
    ensure!(
        warmup_minutes >= 0.0 && warmup_minutes < minutes,
        "--warmup-minutes must be less than --minutes"
    );
    ensure!(a.interval_secs >= 1.0, "--interval-secs must be at least 1");
    let weir = match a.weir {
        Some(w) => w,
        None => default_weir()?,
    };
    ensure!(
        weir.is_file(),
        "{} not found: build it with `cargo build --release -p weir-server` or pass --weir",
        weir.display()
    );
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("weir-soak-{}", std::process::id())),
    };
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;

    let mut feeder = None;
    let (what, paths) = if a.demo {
        let queries = a.queries.clone().unwrap_or_else(default_queries);
        let queries = queries
            .canonicalize()
            .with_context(|| format!("the demo queries {}", queries.display()))?;
        (
            format!("demo: weir run {}", queries.display()),
            vec![queries],
        )
    } else {
        let source = match a.pipeline {
            SoakPipeline::Generator => format!(
                "connector = 'generator', kind = 'downloads', 'rows.per.second' = '{}'",
                a.rate
            ),
            SoakPipeline::File => {
                let fifo = dir.join("downloads.jsonl");
                let status = Command::new("mkfifo")
                    .arg(&fifo)
                    .status()
                    .context("running mkfifo")?;
                ensure!(status.success(), "mkfifo {} failed", fifo.display());
                let rate = a.rate;
                let path = fifo.clone();
                feeder = Some(std::thread::spawn(move || feed_fifo(path, rate)));
                format!(
                    "connector = 'file', path = '{}', format = 'json'",
                    fifo.display()
                )
            }
        };
        let sql = format!(
            "CREATE SOURCE downloads ({DOWNLOADS_COLUMNS}, \
             WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) WITH ({source});\n{VIEW}"
        );
        let file = dir.join("pipeline.sql");
        std::fs::write(&file, sql)?;
        (
            format!(
                "{:?} source at {} rows/s -> 1-minute TUMBLE view by region -> blackhole",
                a.pipeline, a.rate
            )
            .to_lowercase(),
            vec![file],
        )
    };

    let log = dir.join("weir.log");
    let log_file = std::fs::File::create(&log)?;
    let mut cmd = Command::new(&weir);
    cmd.arg("run")
        .args(&paths)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen", "127.0.0.1:0"])
        .args(&a.weir_args)
        // The demo's Parquet sinks write under data/lake relative to the working directory.
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    let mut child = Weir {
        child: cmd
            .spawn()
            .with_context(|| format!("starting {}", weir.display()))?,
    };
    let pid = child.child.id();
    println!(
        "soak: {what}; {} pid {pid}; {} min, warm-up {} min, a sample every {} s; log {}",
        weir.display(),
        minutes,
        warmup_minutes,
        a.interval_secs,
        log.display()
    );

    let start = Instant::now();
    let total = Duration::from_secs_f64(minutes * 60.0);
    let interval = Duration::from_secs_f64(a.interval_secs);
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let mut next = interval;
    loop {
        let now = start.elapsed();
        if now < next {
            std::thread::sleep(next - now);
        }
        if let Some(status) = child.child.try_wait()? {
            bail!(
                "weir exited early ({status}); the end of its log:\n{}",
                log_tail(&log, 20)
            );
        }
        let t = start.elapsed().as_secs_f64();
        let rss = rss_mib_of(pid).context("reading the RSS of weir")?;
        println!("t={t:.0}s rss_mib={rss:.1}");
        let _ = std::io::stdout().flush();
        samples.push((t, rss));
        if next >= total {
            break;
        }
        next = (next + interval).min(total);
    }
    child.stop();
    if let Some(f) = feeder {
        match f.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("the named-pipe feeder stopped: {e:#}"),
            Err(_) => eprintln!("the named-pipe feeder panicked"),
        }
    }

    let warmup_secs = warmup_minutes * 60.0;
    let (t0, start_rss) = samples[0];
    let after: Vec<(f64, f64)> = samples
        .iter()
        .copied()
        .filter(|(t, _)| *t >= warmup_secs - 0.5)
        .collect();
    let &(tw, warm_rss) = after.first().context("no sample after the warm-up")?;
    let &(te, end_rss) = after.last().context("no sample")?;
    let growth = end_rss - warm_rss;
    let span_minutes = (te - tw) / 60.0;
    let per_min = if span_minutes > 0.0 {
        growth / span_minutes
    } else {
        0.0
    };
    let fit = slope(&after).map_or(f64::NAN, |s| s * 60.0);
    let peak = samples.iter().map(|s| s.1).fold(f64::MIN, f64::max);
    println!(
        "rss_start_mib={start_rss:.1} (t={t0:.0}s) rss_after_warmup_mib={warm_rss:.1} (t={tw:.0}s) \
         rss_end_mib={end_rss:.1} (t={te:.0}s) rss_peak_mib={peak:.1} \
         growth_after_warmup_mib={growth:.1} growth_mib_per_min={per_min:.2} \
         slope_mib_per_min={fit:.2} max_growth_mib={}",
        a.max_growth_mib
    );
    if growth > a.max_growth_mib {
        println!(
            "FAIL: RSS grew {growth:.1} MiB after the warm-up ({per_min:.2} MiB/min), more than \
             --max-growth-mib {}; weir's log: {}",
            a.max_growth_mib,
            log.display()
        );
        return Ok(false);
    }
    println!("OK: RSS grew {growth:.1} MiB after the warm-up");
    if a.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::slope;

    #[test]
    fn slope_of_a_line() {
        let points: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 3.0 + 0.5 * i as f64)).collect();
        assert!((slope(&points).unwrap_or(f64::NAN) - 0.5).abs() < 1e-12);
        assert!(slope(&points[..1]).is_none());
    }
}
