//! `weir-bench lake`: the data-lake sinks against each other. Pre-built batches of a
//! windowed view's rows (window_start, region, downloads, failures, avg speed) go straight
//! into one sink (no pipeline, no source), with a checkpoint (pre-commit, then commit)
//! every `--checkpoint-rows` rows, as the runtime would: rows/s through the sink, and the
//! time of each checkpoint's pre-commit and commit (the sink's part of a checkpoint's
//! latency). Sinks: `parquet` (local disk), `parquet-s3` (an S3-compatible store, from
//! WEIR_S3_ENDPOINT / AWS_* as scripts/s3.sh sets them), `iceberg` (filesystem catalog on
//! local disk), `iceberg-s3` (warehouse on that S3 store, SQL catalog in the Postgres of
//! WEIR_POSTGRES_URL). See BENCHMARKS.md, "The data lake".

use anyhow::{Context, Result, bail};
use datafusion::arrow::array::TimestampMillisecondArray;
use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_engine::connector::{RowIds, SinkSpec};
use weir_engine::options::Options;
use weir_engine::stats::Stats;

#[derive(clap::Args)]
pub struct LakeArgs {
    /// parquet, parquet-s3, iceberg or iceberg-s3 (SQL catalog in WEIR_POSTGRES_URL).
    #[arg(long, default_value = "parquet")]
    sink: String,
    /// Rows in all.
    #[arg(long, default_value_t = 5_000_000)]
    rows: u64,
    /// Rows per batch written.
    #[arg(long, default_value_t = 8192)]
    batch_rows: usize,
    /// A checkpoint every this many rows.
    #[arg(long, default_value_t = 500_000)]
    checkpoint_rows: u64,
    /// 'partition.by' for the sink (parquet: none, day or hour; iceberg: any of its forms).
    #[arg(long, default_value = "day")]
    partition_by: String,
    /// Where local files go (a fresh directory under it is used and removed).
    #[arg(long, default_value = "/tmp")]
    dir: std::path::PathBuf,
}

const REGIONS: [&str; 8] = ["eu", "us", "ap", "sa", "af", "me", "oc", "an"];

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new(
            "window_start",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("region", DataType::Utf8, true),
        Field::new("downloads", DataType::Int64, false),
        Field::new("failures", DataType::Int64, false),
        Field::new("avg_speed_mbps", DataType::Float64, true),
    ]))
}

/// Rows `first..first + n`: one per region per minute from 2024-05-01.
fn batch(first: u64, n: usize) -> Result<RecordBatch> {
    let t0 = 1_714_521_600_000i64;
    let idx: Vec<u64> = (first..first + n as u64).collect();
    let regions = REGIONS.len() as u64;
    let cols: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from(
            idx.iter()
                .map(|i| t0 + (i / regions) as i64 * 60_000)
                .collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            idx.iter()
                .map(|i| REGIONS[(i % regions) as usize])
                .collect::<Vec<_>>(),
        )),
        Arc::new(Int64Array::from(
            idx.iter().map(|i| (i % 997) as i64 * 3).collect::<Vec<_>>(),
        )),
        Arc::new(Int64Array::from(
            idx.iter().map(|i| (i % 13) as i64).collect::<Vec<_>>(),
        )),
        Arc::new(Float64Array::from(
            idx.iter()
                .map(|i| 40.0 + (i % 101) as f64 / 7.0)
                .collect::<Vec<_>>(),
        )),
    ];
    Ok(RecordBatch::try_new(schema(), cols)?)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

pub async fn run(args: LakeArgs) -> Result<()> {
    let dir = tempfile_dir(&args.dir)?;
    let mut options: Vec<(String, String)> = vec![];
    match args.sink.as_str() {
        "parquet" => {
            options.push(("connector".into(), "parquet".into()));
            options.push(("path".into(), dir.join("out").display().to_string()));
        }
        "parquet-s3" => {
            let bucket = std::env::var("WEIR_S3_BUCKET")
                .context("parquet-s3 needs the S3 store of scripts/s3.sh: eval \"$(bash scripts/s3.sh env)\"")?;
            let prefix = format!("bench-{}", std::process::id());
            options.push(("connector".into(), "parquet".into()));
            options.push(("path".into(), format!("s3://{bucket}/{prefix}")));
        }
        "iceberg" => {
            options.push(("connector".into(), "iceberg".into()));
            options.push((
                "warehouse".into(),
                dir.join("warehouse").display().to_string(),
            ));
            options.push(("table".into(), "bench.lake".into()));
        }
        "iceberg-s3" => {
            let bucket = std::env::var("WEIR_S3_BUCKET").context(
                "iceberg-s3 needs the S3 store of scripts/s3.sh: eval \"$(bash scripts/s3.sh env)\"",
            )?;
            let pg = std::env::var("WEIR_POSTGRES_URL").context(
                "iceberg-s3 needs a SQL catalog: eval \"$(bash scripts/postgres.sh env)\"",
            )?;
            let ns = format!("bench_{}", std::process::id());
            options.push(("connector".into(), "iceberg".into()));
            options.push(("catalog".into(), "sql".into()));
            options.push(("catalog.uri".into(), pg));
            options.push(("warehouse".into(), format!("s3://{bucket}/{ns}")));
            options.push(("table".into(), format!("{ns}.lake")));
        }
        other => bail!("--sink is parquet, parquet-s3, iceberg or iceberg-s3, not '{other}'"),
    }
    if args.partition_by != "none" {
        options.push(("partition.by".into(), args.partition_by.clone()));
    }
    // Files roll over at checkpoints, not before.
    options.push(("rollover.rows".into(), "100000000".into()));
    let mut opts = Options::new(options);
    let connector = opts.take("connector").unwrap_or_default();
    let registry = weir_connectors::registry();
    let factory = registry.sink(&connector)?;
    let stats = Arc::new(Stats::default());
    let spec = SinkSpec {
        name: "lake".into(),
        view: "region_health".into(),
        schema: schema(),
        key_columns: vec!["window_start".into(), "region".into()],
        never_null: vec!["window_start".into()],
        changelog: false,
        options: opts,
        data_dir: dir.clone(),
        stats: stats.clone(),
        checkpointed: true,
    };
    let mut sink = factory.create(spec)?;
    sink.recover(None).await?;
    let batches: Vec<RecordBatch> = (0..16)
        .map(|i| batch(i * args.batch_rows as u64, args.batch_rows))
        .collect::<Result<_>>()?;
    let mut precommits = Vec::new();
    let mut commits = Vec::new();
    let mut written = 0u64;
    let mut since_checkpoint = 0u64;
    let mut epoch = 0u64;
    let started = Instant::now();
    let mut i = 0usize;
    while written < args.rows {
        let n = (args.rows - written).min(args.batch_rows as u64) as usize;
        // The same 16 batches over and over, shifted in time so windows keep moving.
        let b = if n == args.batch_rows {
            let base = &batches[i % batches.len()];
            shift(
                base,
                (i / batches.len()) as i64 * 16 * args.batch_rows as i64 / 8 * 60_000,
            )?
        } else {
            batch(written, n)?
        };
        i += 1;
        sink.write(b, RowIds::default()).await?;
        written += n as u64;
        since_checkpoint += n as u64;
        if since_checkpoint >= args.checkpoint_rows || written >= args.rows {
            epoch += 1;
            let t = Instant::now();
            sink.precommit(epoch).await?;
            precommits.push(t.elapsed());
            let t = Instant::now();
            sink.commit(epoch).await?;
            commits.push(t.elapsed());
            since_checkpoint = 0;
        }
    }
    sink.close().await?;
    let secs = started.elapsed().as_secs_f64();
    precommits.sort();
    commits.sort();
    let bytes = Stats::get(&stats.bytes);
    println!(
        "{{\"sink\":\"{}\",\"rows\":{written},\"secs\":{secs:.3},\"rows_per_sec\":{:.0},\
         \"checkpoints\":{epoch},\"precommit_ms_p50\":{:.1},\"precommit_ms_max\":{:.1},\
         \"commit_ms_p50\":{:.1},\"commit_ms_max\":{:.1},\"bytes\":{bytes}}}",
        args.sink,
        written as f64 / secs,
        percentile(&precommits, 0.5),
        percentile(&precommits, 1.0),
        percentile(&commits, 0.5),
        percentile(&commits, 1.0),
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `b` with its window starts moved `ms` later.
fn shift(b: &RecordBatch, ms: i64) -> Result<RecordBatch> {
    let ts = b
        .column(0)
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .context("window_start")?;
    let moved: TimestampMillisecondArray = ts.iter().map(|v| v.map(|v| v + ms)).collect();
    let mut cols = b.columns().to_vec();
    cols[0] = Arc::new(moved);
    Ok(RecordBatch::try_new(b.schema(), cols)?)
}

fn tempfile_dir(under: &std::path::Path) -> Result<std::path::PathBuf> {
    let d = under.join(format!("weir-bench-lake-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
