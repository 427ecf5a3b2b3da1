//! The `weir` binary: loads SQL files and runs the pipelines they declare.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use weir_server::app::{self, Args};
use weir_server::config::LogFormat;

/// mimalloc keeps freed pages for reuse, where glibc malloc hands each micro-batch's column
/// buffers back to the kernel and faults fresh pages in for the next (docs/nexmark.md,
/// "Generator figures"). Off without the `mimalloc` feature (`--no-default-features`), for
/// heap profilers that interpose malloc (BENCHMARKS.md, "Profiling memory").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

#[derive(clap::Args, Debug, Clone)]
struct Common {
    /// SQL files or directories of *.sql files [default: queries, if it exists]. With
    /// none, `run` starts empty and waits for statements over the API.
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
    /// Where the API and dashboard listen (HOST:PORT, port 0 for any free port); overrides
    /// [server] listen. With --until-done the server runs only when this is given.
    #[arg(long)]
    listen: Option<String>,
    /// Worker threads that compute (0: one per core); overrides [engine] workers.
    #[arg(long)]
    workers: Option<usize>,
    /// Key partitions of new windowed views' state; overrides [engine] key_partitions.
    #[arg(long)]
    key_partitions: Option<u32>,
    /// On restore, re-split every view's state into the configured key partitions (use
    /// after a clean stop); sets [engine] repartition.
    #[arg(long)]
    repartition: bool,
}

impl Common {
    fn args(self) -> Args {
        Args {
            paths: self.paths,
            config: self.config,
            data_dir: self.data_dir,
            progress_interval: self.progress_interval,
            listen: self.listen,
            workers: self.workers,
            key_partitions: self.key_partitions,
            repartition: self.repartition,
        }
    }
}

/// How long the exit waits for blocking calls still running after the run ended.
const EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // `[log] format` decides how the log looks, so the configuration is read first; a
    // configuration that does not load is reported by the command itself, below.
    let args = match &cli.command {
        Command::Run { common, .. } | Command::Check { common } => common.clone().args(),
    };
    let cfg = app::load_config(&args);
    let format = cfg.as_ref().map_or(LogFormat::Text, |c| c.log.format);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        // Colours only on a terminal: a log redirected to a file stays plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match format {
        LogFormat::Text => log.init(),
        LogFormat::Json => log.json().init(),
    }
    // Statements are parsed and planned on the runtime's threads and, for the SQL files,
    // on the thread that runs it: all get the stack the deepest accepted statement needs
    // (app::runtime).
    let result = app::with_stack(move || -> anyhow::Result<()> {
        // The runtime's threads are the workers, so the configuration is read first.
        let workers = cfg?.engine.worker_count();
        let rt = app::runtime(Some(workers))?;
        let result = rt.block_on(async move {
            match cli.command {
                Command::Run { common, until_done } => {
                    app::run(&common.args(), until_done, app::shutdown_signal(), None).await
                }
                Command::Check { common } => app::check(&common.args()).await,
            }
        });
        // The run is over (its sinks closed, or were given up on after their close
        // timeout). Dropping the runtime would wait for every blocking call still running,
        // such as a Kafka producer's flush to a broker that cannot be reached (about 30 s):
        // what such a sink had not made durable is recomputed from the last checkpoint at
        // the next start, so the process does not wait for it.
        rt.shutdown_timeout(EXIT_GRACE);
        result
    })
    .and_then(|r| r);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
