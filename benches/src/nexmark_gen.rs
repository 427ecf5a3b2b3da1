//! `weir-bench nexmark-gen`: the Nexmark generator's three tables as JSON-lines files, or,
//! without `--out`, how fast the generator produces each table on one core.
//!
//! ```text
//! weir-bench nexmark-gen --events 10000000 --event-rate 100000 --out data/nexmark
//!     -> data/nexmark/person.jsonl, auction.jsonl, bid.jsonl
//! weir-bench nexmark-gen --events 50000000                 (timing only)
//! ```
//! One JSON object per line with the contract's column names; timestamps are epoch
//! milliseconds. Lines are in row order, so `kafka-load --partitions P` (line `j` to
//! partition `j % P`) gives partition `p` the rows a generator source with
//! `partitions = P` gives its partition `p`.

use anyhow::{Context, Result};
use datafusion::arrow::record_batch::RecordBatch;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use weir_connectors::generator::nexmark::{Table, table_source, write_json_lines};
use weir_engine::connector::{Source, SourceEvent};

pub struct NexmarkGenArgs {
    pub events: u64,
    pub event_rate: u64,
    pub seed: u64,
    pub partitions: usize,
    pub out: Option<PathBuf>,
}

/// A generator source for `table` without the columns `skip`, bounded at the run's events,
/// as fast as possible.
fn source(
    args: &NexmarkGenArgs,
    table: Table,
    skip: &[&str],
    partitions: usize,
) -> Result<Box<dyn Source>> {
    let options = [
        ("nexmark.events", args.events.to_string()),
        ("nexmark.event.rate", args.event_rate.to_string()),
        ("seed", args.seed.to_string()),
        ("rows.per.second", "0".to_string()),
        ("partitions", partitions.to_string()),
    ];
    Ok(table_source(
        table,
        skip,
        options.map(|(k, v)| (k.to_string(), v)),
    )?)
}

/// Drain `source`, handing each batch to `each`; returns the rows.
async fn drain(
    source: &mut Box<dyn Source>,
    mut each: impl FnMut(&RecordBatch) -> Result<()>,
) -> Result<u64> {
    let mut rows = 0u64;
    loop {
        match source.next().await? {
            SourceEvent::Batch { batch, .. } => {
                rows += batch.num_rows() as u64;
                each(&batch)?;
            }
            SourceEvent::End => return Ok(rows),
            _ => {}
        }
    }
}

pub async fn nexmark_gen(args: NexmarkGenArgs) -> Result<()> {
    match &args.out {
        Some(dir) => write_files(&args, dir).await,
        None => time_generation(&args).await,
    }
}

async fn write_files(args: &NexmarkGenArgs, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for table in Table::ALL {
        let path = dir.join(format!("{}.jsonl", table.name()));
        let file =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        let mut buf = Vec::with_capacity(4 << 20);
        let start = Instant::now();
        // One partition: the file is in row order whatever `--partitions` says.
        let mut s = source(args, table, &[], 1)?;
        let rows = drain(&mut s, |batch| {
            buf.clear();
            write_json_lines(batch, &mut buf)?;
            w.write_all(&buf)?;
            Ok(())
        })
        .await?;
        w.flush()?;
        println!(
            "table={} rows={rows} file={} secs={:.3}",
            table.name(),
            path.display(),
            start.elapsed().as_secs_f64()
        );
    }
    let p = args.partitions;
    println!("load into Kafka with:");
    for table in Table::ALL {
        let name = table.name();
        println!(
            "  weir-bench kafka-load --topic nexmark-{name} --partitions {p} --input {}",
            dir.join(format!("{name}.jsonl")).display()
        );
    }
    Ok(())
}

/// CPU seconds this process has used (user + system), from /proc/self/stat; `None` where
/// that is not readable. Timing by CPU time keeps the figure per core when other work
/// shares the machine.
fn cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Rows per second of each table straight out of the source (Arrow batches, nothing
/// else), and of bids without `extra`.
async fn time_generation(args: &NexmarkGenArgs) -> Result<()> {
    let runs: [(Table, &[&str]); 4] = [
        (Table::Bid, &[]),
        (Table::Bid, &["extra"]),
        (Table::Auction, &[]),
        (Table::Person, &[]),
    ];
    for (table, skip) in runs {
        let mut s = source(args, table, skip, args.partitions)?;
        let (start, cpu_start) = (Instant::now(), cpu_secs());
        let mut bytes = 0usize;
        let rows = drain(&mut s, |b| {
            bytes += b.get_array_memory_size();
            Ok(())
        })
        .await?;
        let secs = start.elapsed().as_secs_f64();
        let cpu = cpu_start.zip(cpu_secs()).map_or(f64::NAN, |(a, b)| b - a);
        let without = if skip.is_empty() {
            String::new()
        } else {
            format!(" (without {})", skip.join(", "))
        };
        println!(
            "table={}{without} events={} rows={rows} secs={secs:.3} rows_per_sec={:.0} \
             cpu_secs={cpu:.2} rows_per_cpu_sec={:.0} arrow_mib={:.0}",
            table.name(),
            args.events,
            rows as f64 / secs,
            rows as f64 / cpu,
            bytes as f64 / 1048576.0
        );
    }
    Ok(())
}
