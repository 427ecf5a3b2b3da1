//! The `weir` binary: loads SQL files and runs the pipelines they declare.

mod config;
mod embedded_kafka;
mod progress;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use embedded_kafka::EmbeddedKafka;
use std::path::{Path, PathBuf};
use std::time::Duration;
use weir_connectors::kafka::KafkaSettings;
use weir_engine::connector::BatchLimits;
use weir_engine::options::parse_duration;
use weir_engine::pipeline::{EngineConfig, Pipeline, StatementResult};
use weir_engine::runtime::{RunEnd, RunOptions};

#[derive(Parser, Debug)]
#[command(
    name = "weir",
    version,
    about = "Weir: streaming SQL over Arrow micro-batches"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Load SQL files (a directory's *.sql in name order, or files) and run the pipelines.
    Run {
        #[command(flatten)]
        common: Common,
        /// Exit once every source has ended (all must be bounded), after closing every
        /// window and flushing sinks; exit non-zero if anything failed. The embedded Kafka
        /// broker is not started in this mode (its generator feeds never end).
        #[arg(long)]
        until_done: bool,
    },
    /// Parse and plan the SQL files without running them; print each view's streaming plan.
    Check {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(clap::Args, Debug)]
struct Common {
    /// SQL files or directories of *.sql files.
    #[arg(default_value = "queries")]
    paths: Vec<PathBuf>,
    /// Configuration file (TOML); WEIR__SECTION__KEY environment variables override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Overrides [engine] data_dir.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Overrides [run] progress_interval ("0s" turns progress lines off).
    #[arg(long)]
    progress_interval: Option<String>,
}

fn sql_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "sql"))
                .collect();
            files.sort();
            if files.is_empty() {
                bail!("{} holds no .sql files", p.display());
            }
            out.extend(files);
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            bail!("{} is neither a SQL file nor a directory", p.display());
        }
    }
    Ok(out)
}

fn duration(what: &str, s: &str) -> Result<Duration> {
    parse_duration(s).map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

/// What the pipeline is loaded for.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// `run`: unbounded, Ctrl-C stops.
    Run,
    /// `run --until-done`.
    Backfill,
    /// `check`: nothing runs.
    Check,
}

/// Shown with a load error when `--until-done` left Kafka objects without a cluster.
const BACKFILL_KAFKA_HINT: &str = "with --until-done the embedded Kafka broker is not started \
    (its generator feeds never end); set [kafka] bootstrap.servers in the config or \
    'bootstrap.servers' in the WITH clause";

/// A stand-in address for `check` when the embedded broker would serve the Kafka objects:
/// checking connects to nothing.
const CHECK_PLACEHOLDER_BOOTSTRAP: &str = "embedded-broker:9092";

/// The Kafka cluster defaults for the registry: the configured cluster, or the embedded
/// broker (started here) when no cluster is configured, `weir run` is not a backfill and
/// some Kafka source or sink in `files` has no `bootstrap.servers` of its own.
fn kafka_setup(
    cfg: &config::Config,
    files: &[PathBuf],
    mode: Mode,
) -> Result<(KafkaSettings, Option<EmbeddedKafka>, Option<&'static str>)> {
    let mut settings = KafkaSettings {
        bootstrap_servers: None,
        properties: cfg.kafka.properties.clone(),
    };
    if let Some(b) = &cfg.kafka.bootstrap_servers {
        if b.trim().is_empty() {
            bail!("kafka.bootstrap.servers is empty; remove it to use the embedded broker");
        }
        if mode != Mode::Check {
            tracing::info!(
                "Kafka cluster from [kafka] bootstrap.servers: {b} (the embedded broker is off)"
            );
        }
        settings.bootstrap_servers = Some(b.trim().to_string());
        return Ok((settings, None, None));
    }
    let usage = embedded_kafka::kafka_usage(files);
    if !usage.default_cluster || !cfg.kafka.embedded.enabled {
        return Ok((settings, None, None));
    }
    match mode {
        Mode::Check => {
            settings.bootstrap_servers = Some(CHECK_PLACEHOLDER_BOOTSTRAP.to_string());
            Ok((settings, None, None))
        }
        Mode::Backfill => Ok((settings, None, Some(BACKFILL_KAFKA_HINT))),
        Mode::Run => {
            let k = EmbeddedKafka::start(
                &cfg.kafka.embedded,
                &usage.sink_topics,
                &cfg.engine.data_dir,
            )?;
            let feeds = if k.feeds_summary().is_empty() {
                "no generators (no [[kafka.embedded.feed]])".to_string()
            } else {
                format!("generators: {}", k.feeds_summary())
            };
            tracing::info!(
                "no [kafka] bootstrap.servers configured: started an embedded Kafka-protocol \
                 broker at {} (rdkafka mock cluster) fed by {feeds}; set [kafka] \
                 bootstrap.servers to use your cluster",
                k.bootstrap_servers()
            );
            settings.bootstrap_servers = Some(k.bootstrap_servers().to_string());
            Ok((settings, Some(k), None))
        }
    }
}

async fn load_pipeline(
    common: &Common,
    mode: Mode,
) -> Result<(Pipeline, config::Config, Option<EmbeddedKafka>)> {
    let mut cfg = config::load(common.config.as_deref(), std::env::vars())?;
    if let Some(d) = &common.data_dir {
        cfg.engine.data_dir = d.clone();
    }
    if let Some(p) = &common.progress_interval {
        cfg.run.progress_interval = p.clone();
    }
    let engine = EngineConfig {
        data_dir: cfg.engine.data_dir.clone(),
        batch: BatchLimits {
            max_rows: cfg.engine.batch_rows.max(1),
            max_delay: duration("engine.batch_delay", &cfg.engine.batch_delay)?,
        },
        idle_timeout: duration("engine.idle_timeout", &cfg.engine.idle_timeout)?,
        retention_rows: cfg.engine.retention_rows,
    };
    let files = sql_files(&common.paths)?;
    let (kafka, embedded, hint) = kafka_setup(&cfg, &files, mode)?;
    let mut pipeline = Pipeline::new(engine, weir_connectors::registry_with(kafka));
    pipeline.set_processing_time(weir_engine::runtime::now_ms());
    for file in &files {
        if let Err(e) = load_file(&mut pipeline, file).await {
            if let Some(k) = embedded {
                k.stop().await;
            }
            return Err(match hint {
                Some(h) if format!("{e:#}").contains("no Kafka cluster") => {
                    anyhow::anyhow!("{e:#}\n  note: {h}")
                }
                _ => e,
            });
        }
    }
    Ok((pipeline, cfg, embedded))
}

async fn load_file(pipeline: &mut Pipeline, file: &Path) -> Result<()> {
    let sql =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let results = pipeline
        .execute(&sql)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    for r in results {
        match r {
            StatementResult::Created { kind, name } => {
                tracing::info!(file = %file.display(), "created {} {name}", kind.noun())
            }
            StatementResult::Dropped { kind, name } => {
                tracing::info!(file = %file.display(), "dropped {} {name}", kind.noun())
            }
            StatementResult::Unchanged { kind, name } => {
                tracing::info!(file = %file.display(), "{} {name} unchanged", kind.noun())
            }
            StatementResult::Rows(_) => {}
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("stopping: flushing sinks (open windows are not emitted)");
}

async fn run(common: Common, until_done: bool) -> Result<()> {
    let mode = if until_done {
        Mode::Backfill
    } else {
        Mode::Run
    };
    let (pipeline, cfg, embedded) = load_pipeline(&common, mode).await?;
    let result = run_pipeline(pipeline, cfg, until_done).await;
    // After the pipeline: its Kafka sinks flushed to the embedded broker as they closed.
    if let Some(k) = embedded {
        k.stop().await;
    }
    result
}

async fn run_pipeline(pipeline: Pipeline, cfg: config::Config, until_done: bool) -> Result<()> {
    let objects = pipeline.objects();
    if objects.is_empty() {
        bail!("the SQL files declare nothing to run");
    }
    let progress_every = duration("run.progress_interval", &cfg.run.progress_interval)?;
    let reporter = (!progress_every.is_zero())
        .then(|| tokio::spawn(progress::report(objects.clone(), progress_every)));
    let options = RunOptions {
        until_done,
        channel_capacity: cfg.run.channel_capacity.max(1),
        ..RunOptions::default()
    };
    tracing::info!(
        sources = objects.iter().filter(|o| o.kind == weir_engine::sql::ObjectKind::Source).count(),
        views = objects.iter().filter(|o| o.kind == weir_engine::sql::ObjectKind::View).count(),
        sinks = objects.iter().filter(|o| o.kind == weir_engine::sql::ObjectKind::Sink).count(),
        data_dir = %cfg.engine.data_dir.display(),
        "running; Ctrl-C stops"
    );
    let end = weir_engine::runtime::run(pipeline, options, shutdown_signal()).await;
    if let Some(r) = reporter {
        r.abort();
    }
    progress::summary(&objects);
    match end {
        Ok(RunEnd::Done) => {
            tracing::info!("every source ended; all windows closed and sinks flushed");
            Ok(())
        }
        Ok(RunEnd::Stopped) => Ok(()),
        Err(e) => Err(anyhow::anyhow!("pipeline failed: {e}")),
    }
}

async fn check(common: Common) -> Result<()> {
    let (mut pipeline, _, _) = load_pipeline(&common, Mode::Check).await?;
    for o in pipeline.objects() {
        if o.kind == weir_engine::sql::ObjectKind::View {
            let r = pipeline
                .execute(&format!("DESCRIBE \"{}\"", o.name))
                .await?;
            if let Some(StatementResult::Rows(batches)) = r.first() {
                println!("== view {}", o.name);
                for b in batches {
                    let lines = datafusion::arrow::util::display::ArrayFormatter::try_new(
                        b.column(0).as_ref(),
                        &Default::default(),
                    )?;
                    for i in 0..b.num_rows() {
                        println!("  {}", lines.value(i));
                    }
                }
            }
        }
    }
    println!("ok: {} objects", pipeline.objects().len());
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { common, until_done } => run(common, until_done).await,
        Command::Check { common } => check(common).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
