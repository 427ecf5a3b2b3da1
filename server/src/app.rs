//! What `weir run` and `weir check` do: load the configuration and the SQL files, start
//! the embedded Kafka broker when needed, replay the API's journal, serve the API and run
//! the pipeline until Ctrl-C (or, with `--until-done`, until every source has ended).

use crate::api::{self, ApiSettings, ApiToken, AppState, Role, Scope};
use crate::config;
use crate::embedded_kafka::{self, EmbeddedKafka};
use crate::progress;
use crate::state::StateDir;
use anyhow::{Context, Result, bail};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use weir_connectors::kafka::KafkaSettings;
use weir_engine::adhoc::QueryLimits;
use weir_engine::checkpoint::CheckpointStore;
use weir_engine::connector::BatchLimits;
use weir_engine::options::parse_duration;
use weir_engine::pipeline::{EngineConfig, Pipeline, StatementResult};
use weir_engine::runtime::{Controller, RunEnd, RunOptions};

/// What the command line says.
#[derive(Debug, Clone, Default)]
pub struct Args {
    /// SQL files or directories of *.sql files.
    pub paths: Vec<PathBuf>,
    pub config: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub progress_interval: Option<String>,
    /// Overrides `[server] listen`.
    pub listen: Option<String>,
    /// Overrides `[engine] workers`.
    pub workers: Option<usize>,
    /// Overrides `[engine] key_partitions`.
    pub key_partitions: Option<u32>,
    /// Sets `[engine] repartition`.
    pub repartition: bool,
}

/// The directory `weir run` loads when no path is given, if it exists.
const DEFAULT_QUERIES: &str = "queries";

/// The SQL files `paths` name (with none: `queries/`, if it exists). A directory without
/// `.sql` files is an error, except for `run`, which may start empty.
fn sql_files(paths: &[PathBuf], mode: Mode) -> Result<Vec<PathBuf>> {
    let default = [PathBuf::from(DEFAULT_QUERIES)];
    let paths = match paths {
        [] if default[0].is_dir() => &default[..],
        p => p,
    };
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "sql"))
                .collect();
            files.sort();
            if files.is_empty() && mode != Mode::Run {
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

pub(crate) fn duration(what: &str, s: &str) -> Result<Duration> {
    parse_duration(s).map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

/// `d`, unless it is zero (for settings where zero would mean "at once").
fn positive(what: &str, d: Duration) -> Result<Duration> {
    if d.is_zero() {
        bail!("{what} must be more than 0");
    }
    Ok(d)
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

/// Said by a Kafka source or sink that finds no cluster under `--until-done`.
const BACKFILL_KAFKA_HINT: &str = "with --until-done the embedded Kafka broker is not started \
    (its generator feeds never end); set [kafka] bootstrap.servers in the config or \
    'bootstrap.servers' in the WITH clause";

/// A stand-in address for `check` when the embedded broker would serve the Kafka objects:
/// checking connects to nothing.
const CHECK_PLACEHOLDER_BOOTSTRAP: &str = "embedded-broker:9092";

/// The Kafka cluster defaults for the registry: the configured cluster, or the embedded
/// broker (started here) when no cluster is configured, `weir run` is not a backfill and
/// some Kafka or http source or Kafka sink in `files` has no `bootstrap.servers` of its
/// own, or there are no files (statements will come over the API).
fn kafka_setup(
    cfg: &config::Config,
    files: &[PathBuf],
    mode: Mode,
) -> Result<(KafkaSettings, Option<EmbeddedKafka>)> {
    let mut settings = KafkaSettings {
        bootstrap_servers: None,
        properties: cfg.kafka.properties.clone(),
        no_cluster_hint: None,
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
        return Ok((settings, None));
    }
    let usage = embedded_kafka::kafka_usage(files);
    // Started empty, statements come over the API: the broker is there for the Kafka and
    // http sources they may create.
    let empty = files.is_empty() && mode == Mode::Run;
    if !(usage.default_cluster || empty) || !cfg.kafka.embedded.enabled {
        return Ok((settings, None));
    }
    match mode {
        Mode::Check => {
            settings.bootstrap_servers = Some(CHECK_PLACEHOLDER_BOOTSTRAP.to_string());
            Ok((settings, None))
        }
        Mode::Backfill => {
            // A Kafka source or sink without a cluster fails to load, saying why.
            settings.no_cluster_hint = Some(BACKFILL_KAFKA_HINT.to_string());
            Ok((settings, None))
        }
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
            Ok((settings, Some(k)))
        }
    }
}

/// Whether this run takes checkpoints (and restores from them).
fn checkpoints_enabled(cfg: &config::Config, mode: Mode) -> bool {
    // A cluster member keeps its state in the cluster's snapshots, not in checkpoints,
    // and its sinks write as they go.
    cfg.cluster.group.is_none() && cfg.checkpoint.enabled.unwrap_or(mode == Mode::Run)
}

fn checkpoint_store(cfg: &config::Config) -> Result<CheckpointStore> {
    let local = cfg.engine.data_dir.join("checkpoints");
    let c = &cfg.checkpoint;
    let dir = c.dir.as_ref().map(|d| d.to_string_lossy().to_string());
    match dir {
        Some(url) if weir_engine::remote::is_url(&url) => {
            let options: Vec<(String, String)> = c.storage.clone().into_iter().collect();
            let remote = weir_engine::remote::Remote::new(&url, &options)
                .map_err(|e| e.context("[checkpoint] dir"))?;
            Ok(CheckpointStore::new(local, c.retain).with_remote(remote))
        }
        Some(dir) => Ok(CheckpointStore::new(dir, c.retain)),
        None => {
            if !c.storage.is_empty() {
                bail!(
                    "[checkpoint] storage is for a dir that is an object-store URL \
                     (s3://bucket/prefix), and dir is not set"
                );
            }
            Ok(CheckpointStore::new(local, c.retain))
        }
    }
}

/// Restore the newest complete checkpoint into `pipeline` (objects already declared);
/// returns the options for taking the next ones.
fn restore_checkpoint(
    pipeline: &mut Pipeline,
    cfg: &config::Config,
    restore: bool,
) -> Result<weir_engine::runtime::CheckpointOptions> {
    let store = checkpoint_store(cfg)?;
    let stats = pipeline.catalog().checkpoint_stats();
    let started = std::time::Instant::now();
    store.remove_incomplete()?;
    let latest = store.latest()?;
    let latest = match latest {
        Some(r) if !restore => {
            tracing::info!(
                "the embedded Kafka broker keeps no data across restarts, so its topics' \
                 offsets in checkpoint {} mean nothing now: starting afresh, with the views' \
                 row numbering carried on (checkpoints are still taken, for the sinks)",
                r.manifest.epoch
            );
            pipeline.restore_sequencers(&r);
            None
        }
        other => other,
    };
    match latest {
        Some(r) => {
            let report = pipeline.restore(&r).with_context(|| {
                format!(
                    "restoring checkpoint {} from {}",
                    r.manifest.epoch,
                    store.location()
                )
            })?;
            let ms = started.elapsed().as_millis() as u64;
            stats.restored_epoch.store(report.epoch, Ordering::Relaxed);
            stats.epoch.store(report.epoch, Ordering::Relaxed);
            stats.restore_ms.store(ms, Ordering::Relaxed);
            tracing::info!(
                epoch = report.epoch,
                sources = report.sources.len(),
                views = report.views.len(),
                sinks = report.sinks.len(),
                open_groups = report.open_groups,
                ms,
                "restored from checkpoint {} in {}",
                report.epoch,
                store.location()
            );
            for s in &report.skipped {
                tracing::warn!("not restored: {s}; it starts afresh");
            }
        }
        None => tracing::info!(
            dir = %store.location(),
            "no checkpoint to restore: starting afresh"
        ),
    }
    Ok(weir_engine::runtime::CheckpointOptions {
        first_epoch: store.next_epoch()?,
        store,
        interval: duration("checkpoint.interval", &cfg.checkpoint.interval)?,
        timeout: duration("checkpoint.timeout", &cfg.checkpoint.timeout)?,
        stats,
    })
}

/// The tokio runtime `weir` runs on (`worker_threads`: tokio's default, one per core,
/// when `None`). Its worker and blocking threads get the stack that parsing, planning and
/// running the deepest statement Weir accepts needs
/// ([`weir_engine::sql::depth::STACK_SIZE`]): statements are applied and queries run on
/// them. Whatever calls `block_on` should have as much (see [`with_stack`]).
pub fn runtime(worker_threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads {
        b.worker_threads(n);
    }
    b.thread_stack_size(weir_engine::sql::depth::STACK_SIZE)
        .enable_all()
        .build()
}

/// Run `f` on a thread with [`weir_engine::sql::depth::STACK_SIZE`] of stack (the thread
/// that calls `block_on` loads the SQL files), and wait for it.
pub fn with_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let thread = std::thread::Builder::new()
        .name("weir".into())
        .stack_size(weir_engine::sql::depth::STACK_SIZE)
        .spawn(f)
        .context("starting the main thread")?;
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("the main thread panicked"))
}

/// The limits of ad-hoc queries from `[engine]`.
fn query_limits(cfg: &config::EngineSection) -> Result<QueryLimits> {
    Ok(QueryLimits {
        timeout: duration("engine.query_timeout", &cfg.query_timeout)?,
        max_bytes: cfg.max_query_bytes.max(1),
        max_rows: cfg.max_query_rows.max(1),
    })
}

/// The configuration: the file, then `WEIR__...` variables, then flags.
pub fn load_config(args: &Args) -> Result<config::Config> {
    let mut cfg = config::load(args.config.as_deref(), std::env::vars())?;
    if let Some(d) = &args.data_dir {
        cfg.engine.data_dir = d.clone();
    }
    if let Some(p) = &args.progress_interval {
        cfg.run.progress_interval = p.clone();
    }
    if let Some(l) = &args.listen {
        cfg.server.listen = l.clone();
    }
    if let Some(w) = args.workers {
        cfg.engine.workers = w;
    }
    if let Some(k) = args.key_partitions {
        cfg.engine.key_partitions = k;
    }
    if args.repartition {
        cfg.engine.repartition = true;
    }
    if cfg.engine.key_partitions == 0 {
        bail!("engine.key_partitions must be at least 1 (it is 0)");
    }
    Ok(cfg)
}

/// A loaded pipeline, its configuration, the embedded broker if one was started, and
/// where its `http` sources take events.
type Loaded = (
    Pipeline,
    config::Config,
    Option<EmbeddedKafka>,
    weir_connectors::http::Endpoints,
);

async fn load_pipeline(args: &Args, mode: Mode) -> Result<Loaded> {
    let cfg = load_config(args)?;
    let engine = EngineConfig {
        data_dir: cfg.engine.data_dir.clone(),
        batch: BatchLimits {
            max_rows: cfg.engine.batch_rows.max(1),
            max_delay: duration("engine.batch_delay", &cfg.engine.batch_delay)?,
        },
        idle_timeout: duration("engine.idle_timeout", &cfg.engine.idle_timeout)?,
        retention_rows: cfg.engine.retention_rows,
        checkpoints: checkpoints_enabled(&cfg, mode),
        // SELECT statements in the files and over the API run within these.
        query_limits: query_limits(&cfg.engine)?,
        workers: cfg.engine.worker_count(),
        key_partitions: cfg.engine.key_partitions,
        repartition: cfg.engine.repartition,
        sink_options: cfg.sink_options(),
    };
    let files = sql_files(&args.paths, mode)?;
    if files.is_empty() {
        match mode {
            Mode::Run if cfg.cluster.group.is_some() => bail!(
                "no SQL files: a cluster member runs the SQL it is started with (statements \
                 over the API are refused in a cluster); give the same SQL files to every member"
            ),
            Mode::Run if cfg.server.enabled => tracing::info!(
                "no SQL files ({}): starting empty, waiting for statements over the API \
                 (POST /api/v1/sql)",
                match args.paths.as_slice() {
                    [] => format!("no paths given and no {DEFAULT_QUERIES}/ directory"),
                    p => p
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                }
            ),
            Mode::Run => bail!(
                "no SQL files to run, and [server] enabled = false: nothing could ever run \
                 (give SQL files, or enable the server to submit statements over the API)"
            ),
            Mode::Backfill | Mode::Check => bail!(
                "no SQL files: give SQL files or directories (no paths given and no \
                 {DEFAULT_QUERIES}/ directory)"
            ),
        }
    }
    let (kafka, embedded) = kafka_setup(&cfg, &files, mode)?;
    // `weir run` prepares an http source's topic when the source is created; `weir check`
    // reaches for no cluster.
    let endpoints = if mode == Mode::Run {
        weir_connectors::http::Endpoints::eager(embedded.is_none())
    } else {
        weir_connectors::http::Endpoints::default()
    };
    let mut pipeline = Pipeline::new(
        engine,
        weir_connectors::registry_full(kafka, endpoints.clone()),
    );
    for file in &files {
        if let Err(e) = load_file(&mut pipeline, file).await {
            if let Some(k) = embedded {
                k.stop().await;
            }
            return Err(e);
        }
    }
    Ok((pipeline, cfg, embedded, endpoints))
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

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    // Without a SIGTERM handler, Ctrl-C alone stops (or nothing, if even
                    // that cannot be listened for).
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
    tracing::info!(
        "stopping: a final checkpoint (when checkpoints are on), then flushing sinks (open \
         windows are not emitted)"
    );
}

/// The API settings from `[server]`.
fn api_settings(
    cfg: &config::ServerSection,
    engine: &config::EngineSection,
) -> Result<ApiSettings> {
    let plain = |secret: &String, role| ApiToken {
        secret: secret.clone(),
        role,
        scope: Scope::all(),
    };
    let mut tokens: Vec<ApiToken> = cfg
        .admin_tokens
        .iter()
        .map(|t| plain(t, Role::Admin))
        .collect();
    tokens.extend(cfg.read_tokens.iter().map(|t| plain(t, Role::Read)));
    for (i, t) in cfg.tokens.iter().enumerate() {
        let what = format!("server.tokens[{i}]");
        let secret = match (&t.token, &t.token_env) {
            (Some(s), None) => s.clone(),
            (None, Some(var)) => std::env::var(var).map_err(|_| {
                anyhow::anyhow!("{what}: token_env names '{var}', which is not set")
            })?,
            _ => bail!("{what}: give token or token_env (one of them)"),
        };
        if secret.trim().is_empty() {
            bail!("{what}: the token is empty");
        }
        let role = match t.role.as_str() {
            "read" => Role::Read,
            "write" => Role::Write,
            "admin" => Role::Admin,
            other => bail!("{what}: role '{other}' is not read, write or admin"),
        };
        tokens.push(ApiToken {
            secret,
            role,
            scope: Scope::of(&t.objects),
        });
    }
    Ok(ApiSettings {
        tokens,
        cors_origins: cfg.cors_origins.clone(),
        max_body_bytes: cfg.max_body_bytes.max(1024),
        max_sql_bytes: cfg.max_sql_bytes.max(1),
        ws_max_message_bytes: cfg.ws_max_message_bytes.max(1024),
        ws_max_subscribers: cfg.ws_max_subscribers.max(1),
        ws_max_subscribers_per_client: cfg.ws_max_subscribers_per_client.max(1),
        ws_send_timeout: duration("server.ws_send_timeout", &cfg.ws_send_timeout)?,
        request_timeout: duration("server.request_timeout", &cfg.request_timeout)?,
        header_read_timeout: positive(
            "server.header_read_timeout",
            duration("server.header_read_timeout", &cfg.header_read_timeout)?,
        )?,
        max_result_rows: cfg.max_result_rows.max(1),
        query_limits: query_limits(engine)?,
        ..ApiSettings::default()
    })
}

/// `weir run`: run until `shutdown` resolves (Ctrl-C), or with `until_done` until every
/// source has ended. `on_listen` hears the address the API is served at.
pub async fn run(
    args: &Args,
    until_done: bool,
    shutdown: impl Future<Output = ()>,
    on_listen: Option<oneshot::Sender<SocketAddr>>,
) -> Result<()> {
    let mode = if until_done {
        Mode::Backfill
    } else {
        Mode::Run
    };
    let (mut pipeline, cfg, embedded, endpoints) = load_pipeline(args, mode).await?;
    if cfg.cluster.group.is_some() {
        if let Some(k) = embedded {
            k.stop().await;
            bail!(
                "[cluster] needs a Kafka every member reaches: set [kafka] \
                 bootstrap_servers (the embedded broker lives in one process)"
            );
        }
        if mode != Mode::Run {
            bail!("[cluster] is for `weir run`; a backfill runs alone (unset the group)");
        }
        return crate::cluster::run(pipeline, &cfg, endpoints, on_listen, shutdown).await;
    }
    let result = async {
        let mut state = StateDir::open(&cfg.engine.data_dir)?;
        if let Some(url) = &cfg.database.url {
            state = state.with_database(url).await?;
            tracing::info!(
                "database {}: Weir's tables migrated; statements submitted over the API are kept in weir.statements",
                crate::state::redact(url)
            );
        }
        let state = Arc::new(state);
        if mode == Mode::Run {
            let n = state.replay(&mut pipeline).await?;
            if n > 0 {
                tracing::info!(
                    "re-applied {n} statement(s) submitted over the API ({})",
                    state.journal_location()
                );
            }
        }
        let checkpoint = if checkpoints_enabled(&cfg, mode) {
            Some(restore_checkpoint(&mut pipeline, &cfg, embedded.is_none())?)
        } else {
            None
        };
        // A backfill serves only when asked to (--listen), so scripts do not collide on
        // the port.
        let serve = cfg.server.enabled && (mode == Mode::Run || args.listen.is_some());
        let run = RunParts {
            until_done,
            state,
            serve,
            on_listen,
            checkpoint,
            endpoints,
        };
        run_pipeline(pipeline, cfg, run, shutdown).await
    }
    .await;
    // After the pipeline: its Kafka sinks flushed to the embedded broker as they closed.
    if let Some(k) = embedded {
        k.stop().await;
    }
    result
}

struct RunParts {
    until_done: bool,
    state: Arc<StateDir>,
    serve: bool,
    on_listen: Option<oneshot::Sender<SocketAddr>>,
    checkpoint: Option<weir_engine::runtime::CheckpointOptions>,
    endpoints: weir_connectors::http::Endpoints,
}

/// Bind the API's listener, say where it serves, and serve the state `app` builds.
pub(crate) async fn start_api(
    cfg: &config::Config,
    on_listen: Option<oneshot::Sender<SocketAddr>>,
    app: impl FnOnce(ApiSettings) -> AppState,
) -> Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let settings = api_settings(&cfg.server, &cfg.engine)?;
    let tls = match (&cfg.server.tls_cert, &cfg.server.tls_key) {
        (Some(cert), Some(key)) => Some(api::tls::server_config(cert, key)?),
        (None, None) => None,
        _ => bail!("server.tls_cert and server.tls_key go together: set both, or neither"),
    };
    let listener = api::bind(&cfg.server.listen, &settings).await?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    if settings.tokens.is_empty() {
        tracing::info!(
            "serving the API and dashboard at {scheme}://{addr}/ (no tokens configured: \
             loopback only, no authentication; set [server] admin_tokens to require them)"
        );
    } else {
        tracing::info!(
            "serving the API and dashboard at {scheme}://{addr}/ ({} token(s); every route \
             but /health, /, /docs and /assets needs one)",
            settings.tokens.len()
        );
    }
    if let Some(tx) = on_listen {
        let _ = tx.send(addr);
    }
    Ok(tokio::spawn(api::serve(listener, tls, app(settings))))
}

/// Give the API's open requests a moment once subscriptions were told to close, then
/// stop it.
pub(crate) async fn stop_api(server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>) {
    if let Some(mut s) = server
        && tokio::time::timeout(Duration::from_secs(3), &mut s)
            .await
            .is_err()
    {
        s.abort();
    }
}

async fn run_pipeline(
    pipeline: Pipeline,
    cfg: config::Config,
    parts: RunParts,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let RunParts {
        until_done,
        state,
        serve,
        on_listen,
        checkpoint,
        endpoints,
    } = parts;
    let catalog = pipeline.catalog();
    let objects = catalog.objects();
    if objects.is_empty() && !serve {
        bail!("the SQL files declare nothing to run");
    }
    let progress_every = duration("run.progress_interval", &cfg.run.progress_interval)?;
    let (controller, control) = Controller::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = if serve {
        let app = |settings| {
            AppState::new(
                catalog.clone(),
                controller,
                settings,
                state.clone(),
                stop_rx,
            )
            .with_endpoints(endpoints)
        };
        Some(start_api(&cfg, on_listen, app).await?)
    } else {
        drop(controller);
        None
    };
    let reporter = (!progress_every.is_zero())
        .then(|| tokio::spawn(progress::report(catalog.clone(), progress_every)));
    let dead_letters = dead_letter_shipper(&cfg)?;
    if let Some(c) = &checkpoint {
        tracing::info!(
            dir = %c.store.location(),
            interval = %cfg.checkpoint.interval,
            first_epoch = c.first_epoch,
            "checkpoints on"
        );
    }
    let options = RunOptions {
        until_done,
        channel_capacity: cfg.run.channel_capacity.max(1),
        checkpoint,
        ..RunOptions::default()
    };
    let count = |k| objects.iter().filter(|o| o.kind == k).count();
    tracing::info!(
        sources = count(weir_engine::sql::ObjectKind::Source),
        views = count(weir_engine::sql::ObjectKind::View),
        sinks = count(weir_engine::sql::ObjectKind::Sink),
        data_dir = %cfg.engine.data_dir.display(),
        "running; Ctrl-C stops"
    );
    let control = serve.then_some(control);
    let end = weir_engine::runtime::run_with(pipeline, options, shutdown, control).await;
    // Subscribers are told the server is stopping; none listening is fine.
    let _ = stop_tx.send(true);
    if let Some(r) = reporter {
        r.abort();
    }
    if let Some((task, stop)) = dead_letters {
        // The last records too: the task ships once more and ends.
        let _ = stop.send(true);
        let _ = task.await;
    }
    stop_api(server).await;
    progress::summary(&catalog.objects());
    match end {
        Ok(RunEnd::Done) => {
            tracing::info!("every source ended; all windows closed and sinks flushed");
            Ok(())
        }
        Ok(RunEnd::Stopped) => Ok(()),
        Err(e) => Err(anyhow::anyhow!("pipeline failed: {e}")),
    }
}

/// With `[dead_letter] upload`: a task shipping dead-letter records every interval until
/// told to stop, then once more (engine/src/dead_letter.rs). A failed upload is logged and
/// tried again next time: the records stay in the local files meanwhile.
fn dead_letter_shipper(
    cfg: &config::Config,
) -> Result<Option<(tokio::task::JoinHandle<()>, watch::Sender<bool>)>> {
    let d = &cfg.dead_letter;
    let Some(url) = &d.upload else {
        if !d.storage.is_empty() {
            bail!("[dead_letter] storage is for an upload URL, and upload is not set");
        }
        return Ok(None);
    };
    let every = duration("dead_letter.interval", &d.interval)?;
    let options: Vec<(String, String)> = d.storage.clone().into_iter().collect();
    let remote = weir_engine::remote::Remote::new(url, &options)
        .map_err(|e| e.context("[dead_letter] upload"))?;
    let mut shipper =
        weir_engine::dead_letter::DeadLetterShipper::new(&cfg.engine.data_dir, remote)?;
    tracing::info!(url = %shipper.url(), every = %d.interval, "dead-letter records are uploaded");
    let (tx, mut rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        loop {
            let stopping = tokio::select! {
                _ = tokio::time::sleep(every) => false,
                _ = rx.changed() => true,
            };
            match shipper.ship().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(objects = n, "dead-letter records uploaded"),
                Err(e) => {
                    tracing::warn!(error = %e, "uploading dead-letter records failed; trying again later")
                }
            }
            if stopping {
                break;
            }
        }
    });
    Ok(Some((task, tx)))
}

/// `weir check`: parse and plan, print each view's plan.
pub async fn check(args: &Args) -> Result<()> {
    let (mut pipeline, _, _, _) = load_pipeline(args, Mode::Check).await?;
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn header_read_timeout_defaults_to_10s_and_must_be_positive() {
        let settings = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let cfg = config::load(None, vars.into_iter()).unwrap();
            api_settings(&cfg.server, &cfg.engine)
        };
        assert_eq!(
            settings(&[]).unwrap().header_read_timeout,
            Duration::from_secs(10)
        );
        let s = settings(&[("WEIR__SERVER__HEADER_READ_TIMEOUT", "2500ms")]).unwrap();
        assert_eq!(s.header_read_timeout, Duration::from_millis(2500));
        for bad in ["0s", "soon"] {
            let e = settings(&[("WEIR__SERVER__HEADER_READ_TIMEOUT", bad)]).unwrap_err();
            assert!(
                format!("{e:#}").contains("server.header_read_timeout"),
                "{e:#}"
            );
        }
    }
}
