//! `weir-bench scale`: the throughput curve over worker counts, one process per count,
//! pinned to that many cores, so it can be rerun on a bigger machine: of the file ->
//! region-health pipeline (`--input`, as `weir-bench throughput`) or of one Nexmark query
//! over the generator (`--query`, as `weir-bench nexmark`).

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;

#[derive(clap::Args, Debug)]
pub struct ScaleArgs {
    /// The input file (JSON lines or Parquet from `weir-bench gen`), or a glob of them.
    #[arg(long, required_unless_present = "query", conflicts_with = "query")]
    pub input: Option<PathBuf>,
    /// A Nexmark query (q0 ... q8) over the generator instead of a file, with its default
    /// events and rate.
    #[arg(long)]
    pub query: Option<String>,
    #[arg(long, default_value = "json")]
    pub format: String,
    /// The largest worker count (default: the available cores).
    #[arg(long)]
    pub max_workers: Option<usize>,
    #[arg(long, default_value_t = 8192)]
    pub batch_rows: usize,
}

/// One point of the curve.
struct Point {
    workers: usize,
    events_per_sec: f64,
    peak_rss_mib: f64,
}

/// Run `weir-bench throughput` for 1..=N workers, each pinned with `taskset` to cores
/// 0..workers-1 (unpinned when taskset is missing, which the output says), and print the
/// curve: events/s, the speed-up over one worker and the efficiency per worker.
pub fn scale(args: ScaleArgs) -> Result<()> {
    let max = args
        .max_workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let exe = std::env::current_exe().context("finding weir-bench itself")?;
    let pinned = Command::new("taskset").arg("--version").output().is_ok();
    if !pinned {
        eprintln!("taskset not found: the runs are not pinned to cores");
    }
    let mut points: Vec<Point> = Vec::new();
    for workers in 1..=max {
        let mut cmd = if pinned {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(format!("0-{}", workers - 1)).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let what = match (&args.input, &args.query) {
            (Some(input), _) => {
                cmd.arg("throughput")
                    .arg("--input")
                    .arg(input)
                    .arg("--format")
                    .arg(&args.format)
                    .arg("--batch-rows")
                    .arg(args.batch_rows.to_string());
                "throughput"
            }
            (None, Some(query)) => {
                cmd.arg("nexmark").arg("--query").arg(query);
                "nexmark"
            }
            (None, None) => bail!("give --input or --query"),
        };
        cmd.arg("--threads").arg(workers.to_string());
        let out = cmd
            .output()
            .with_context(|| format!("running weir-bench {what}"))?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() {
            bail!(
                "weir-bench {what} with {workers} workers failed: {}{}",
                text,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // `throughput` prints name=value pairs, `nexmark` one JSON object.
        let json: Option<serde_json::Value> = serde_json::from_str(text.trim()).ok();
        let field = |name: &str| -> Result<f64> {
            json.as_ref()
                .and_then(|j| j.get(name))
                .and_then(|v| v.as_f64())
                .or_else(|| {
                    text.split_whitespace()
                        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                        .and_then(|v| v.parse().ok())
                })
                .with_context(|| format!("no {name} in the output: {text}"))
        };
        let point = Point {
            workers,
            events_per_sec: field("events_per_sec")?,
            peak_rss_mib: field("peak_rss_mib")?,
        };
        eprintln!("{workers} worker(s): {:.0} events/s", point.events_per_sec);
        points.push(point);
    }
    let one = points.first().map_or(1.0, |p| p.events_per_sec);
    println!("| workers | events/s | speed-up | per worker | peak RSS |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for p in &points {
        let speedup = p.events_per_sec / one;
        println!(
            "| {} | {:.0} | {speedup:.2}x | {:.0}% | {:.0} MiB |",
            p.workers,
            p.events_per_sec,
            100.0 * speedup / p.workers as f64,
            p.peak_rss_mib
        );
    }
    Ok(())
}
