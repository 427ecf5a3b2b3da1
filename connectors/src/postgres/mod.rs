//! The `postgres` sink: a view's output upserted into a PostgreSQL table, exactly once in
//! effect (every row is keyed, so a replay after a restart overwrites itself).
//!
//! ```sql
//! CREATE SINK health_pg FROM region_health WITH (connector = 'postgres',
//!     url = 'postgres://weir@127.0.0.1:15432/weir', table = 'public.region_health');
//! CREATE SINK failed_pg FROM failed_downloads WITH (connector = 'postgres',
//!     table = 'failed_downloads', mode = 'append');
//! ```
//!
//! - `mode = 'upsert'` (the default for windowed views) keys rows by the view's key (window
//!   bounds and group keys) or by `'primary.key' = 'a,b'`: a newer row for a key replaces
//!   the older. `mode = 'append'` (the default for stateless views) adds a column
//!   `weir_row_id bigint PRIMARY KEY` holding each row's
//!   [`RowIds`](weir_engine::connector::RowIds) id, so replayed rows are skipped.
//! - An updating view (an aggregate without a window, whose rows change and go away) is
//!   written by its key ([`Mode::Changelog`]): per transaction, the last change per key of
//!   the buffered changes; deleted keys are staged by COPY and removed with `DELETE ...
//!   USING`, the rest upserted as above, in one transaction. A global aggregate (no key)
//!   keeps one row, deleted and inserted again by each change. `mode = 'append'` is
//!   refused, and `primary.key` may only name the view's key columns.
//! - A missing table is created from the view's schema (see [`schema::pg_type`]); an
//!   existing one is checked (columns, types, a unique key on the key columns) and every
//!   problem is reported at once.
//! - Writes are buffered up to `batch.rows` (and written on every flush, checkpoint and
//!   close), then applied in one transaction: binary `COPY` into a temporary staging table,
//!   `INSERT ... SELECT ... ON CONFLICT (key) DO UPDATE` (rows whose values did not change
//!   are left alone), and at a checkpoint the sink's row in `weir.sink_progress`. A write is
//!   all or nothing. Rows whose keys are all new go straight into the table by COPY instead
//!   (tried in a savepoint, falling back to the upsert on the first existing key).
//! - While PostgreSQL cannot be reached the write is retried with exponential backoff and
//!   jitter (the engine's [`Backoff`]; reconnecting), the sink's status is `retrying`, and the pipeline waits
//!   (backpressure); errors a retry cannot fix fail the sink at once.
//!
//! See docs/postgres.md.

pub mod encode;
pub mod schema;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Int64Array};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use futures::future::BoxFuture;
use schema::{Layout, Mode, ROW_ID, TableColumn, TableInfo, TableName, UniqueKey};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use weir_engine::backoff::Backoff;
use weir_engine::changelog;
use weir_engine::connector::{RowIds, Sink, SinkCheckpoint, SinkFactory, SinkSpec};
use weir_engine::options::Options;
use weir_engine::stats::{Stats, Status};
use weir_engine::{Result, WeirError};

pub const VALID_KEYS: &[&str] = &[
    "url",
    "table",
    "primary.key",
    "mode",
    "batch.rows",
    "retry.max",
    "retry.backoff.max",
];

/// Where `url` comes from when the WITH clause has none.
pub const URL_ENV: &str = "WEIR_POSTGRES_URL";

const DEFAULT_BATCH_ROWS: usize = 50_000;
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Weir's own tables (the `weir` schema), embedded from `migrations/` at the repository root.
fn migrator() -> sqlx::migrate::Migrator {
    let mut m = sqlx::migrate!("../migrations");
    // A database migrated by a newer Weir still works with this one.
    m.set_ignore_missing(true);
    m
}

/// Create or update Weir's own tables (`weir.statements`, `weir.sink_progress`) in the
/// database behind `pool`. Idempotent, and safe to run from several processes at once
/// (the migrator holds an advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<()> {
    migrator()
        .run(pool)
        .await
        .map_err(|e| WeirError::external_source("applying Weir's migrations", e))
}

/// The `url` option (or [`URL_ENV`]) as connection options for Weir's sessions. `what`
/// names the object in errors ("the postgres sink").
pub(crate) fn connect_options(options: &mut Options, what: &str) -> Result<PgConnectOptions> {
    let url = match options.take("url") {
        Some(u) => u,
        None => std::env::var(URL_ENV)
            .ok()
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| {
                WeirError::user(format!(
                    "{what} needs option 'url' (postgres://user@host:port/database) \
                         or the environment variable {URL_ENV}"
                ))
            })?,
    };
    let url = url.trim();
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(WeirError::user(
            "option 'url' is not a PostgreSQL URL like postgres://user@host:port/database",
        ));
    }
    let mut connect = PgConnectOptions::from_str(url).map_err(|e| {
        WeirError::user(format!(
            "option 'url' is not a PostgreSQL URL like postgres://user@host:port/database: {e}"
        ))
    })?;
    if connect.get_application_name().is_none() {
        connect = connect.application_name("weir");
    }
    // The sink's statements are simple and many: compiling them (JIT) would only add
    // latency. sqlx's own statement logging is replaced by the sink's.
    connect = connect
        .options([("jit", "off")])
        .disable_statement_logging();

    Ok(connect)
}

/// The parsed options.
#[derive(Debug, Clone)]
pub struct PostgresSinkOptions {
    pub connect: PgConnectOptions,
    pub table: TableName,
    pub mode: Mode,
    /// The conflict key: the view's key, `primary.key`, or [`ROW_ID`] in append mode.
    pub key: Vec<String>,
    pub batch_rows: usize,
    /// Retries after a failed attempt; `None`: no limit.
    pub retry_max: Option<u32>,
    pub backoff_max: Duration,
}

impl PostgresSinkOptions {
    /// Parse and check the options (no I/O). `table` defaults to the view's name.
    pub fn parse(options: &mut Options, spec: &SinkSpec) -> Result<Self> {
        let connect = connect_options(options, "the postgres sink")?;
        let table = TableName::parse(&options.take_or("table", &spec.view))?;
        let primary_key = options.take("primary.key").map(|k| {
            k.split(',')
                .map(|c| c.trim().to_string())
                .collect::<Vec<_>>()
        });
        let (mode, key) = if spec.changelog {
            (Mode::Changelog, changelog_key(options, spec, primary_key)?)
        } else {
            keyed(options, spec, primary_key)?
        };
        let batch_rows = options
            .take_parse::<usize>("batch.rows")?
            .unwrap_or(DEFAULT_BATCH_ROWS);
        if batch_rows == 0 {
            return Err(WeirError::user("option 'batch.rows' must be at least 1"));
        }
        let retry_max = options.take_parse::<u32>("retry.max")?;
        let backoff_max = options
            .take_duration("retry.backoff.max")?
            .unwrap_or(DEFAULT_BACKOFF_MAX);
        if backoff_max.is_zero() {
            return Err(WeirError::user(
                "option 'retry.backoff.max' must be more than zero",
            ));
        }
        Ok(PostgresSinkOptions {
            connect,
            table,
            mode,
            key,
            batch_rows,
            retry_max,
            backoff_max,
        })
    }
}

/// The mode and conflict key of a view that is not an updating view: upsert by the view's
/// key or `primary.key`, or append by [`ROW_ID`].
fn keyed(
    options: &mut Options,
    spec: &SinkSpec,
    primary_key: Option<Vec<String>>,
) -> Result<(Mode, Vec<String>)> {
    let default_mode = if primary_key.is_some() || !spec.key_columns.is_empty() {
        "upsert"
    } else {
        "append"
    };
    if options.take_choice("mode", &["upsert", "append"], default_mode)? == "append" {
        if primary_key.is_some() {
            return Err(WeirError::user(
                "option 'primary.key' is for mode 'upsert'; mode 'append' keys rows by the \
                 weir_row_id column it adds",
            ));
        }
        if spec.schema.field_with_name(ROW_ID).is_ok() {
            return Err(WeirError::user(format!(
                "view '{}' has a column named {ROW_ID}, which mode 'append' adds itself; rename \
                 it in the view",
                spec.view
            )));
        }
        return Ok((Mode::Append, vec![ROW_ID.to_string()]));
    }
    let key = primary_key.unwrap_or_else(|| spec.key_columns.clone());
    if key.is_empty() {
        return Err(WeirError::user(format!(
            "mode 'upsert' needs a key, and view '{}' has none (it is not windowed); set \
             'primary.key' = 'col1,col2' or use mode 'append'",
            spec.view
        )));
    }
    check_key_columns(&key, spec)?;
    Ok((Mode::Upsert, key))
}

/// The key an updating view's changes are applied by: the view's key (its GROUP BY
/// columns, none for a global aggregate). `primary.key` may only name the same columns
/// (in the order the table's key takes), and mode 'append' is refused: it could not take a
/// row back.
fn changelog_key(
    options: &mut Options,
    spec: &SinkSpec,
    primary_key: Option<Vec<String>>,
) -> Result<Vec<String>> {
    if options.take_choice("mode", &["upsert", "append"], "upsert")? == "append" {
        return Err(WeirError::user(format!(
            "view '{}' is an updating view (an aggregate without a window): its rows change \
             and go away, so the postgres sink upserts and deletes them by the view's key; \
             mode 'append' cannot take a row back. Leave 'mode' out or set it to 'upsert'",
            spec.view
        )));
    }
    let Some(key) = primary_key else {
        return Ok(spec.key_columns.clone());
    };
    check_key_columns(&key, spec)?;
    let sorted = |k: &[String]| {
        let mut k = k.to_vec();
        k.sort();
        k
    };
    if sorted(&key) != sorted(&spec.key_columns) {
        let why = if spec.key_columns.is_empty() {
            "it is a global aggregate, one row without a key, which every change replaces; \
             leave 'primary.key' out"
                .to_string()
        } else {
            format!(
                "its rows are upserted and deleted by its key ({}); leave 'primary.key' out or \
                 name exactly those columns",
                spec.key_columns.join(", ")
            )
        };
        return Err(WeirError::user(format!(
            "option 'primary.key' = '{}' does not match updating view '{}': {why}",
            key.join(","),
            spec.view
        )));
    }
    Ok(key)
}

/// `primary.key`'s columns: named, columns of the view, each once.
fn check_key_columns(key: &[String], spec: &SinkSpec) -> Result<()> {
    let mut seen = HashSet::new();
    for k in key {
        if k.is_empty() {
            return Err(WeirError::user(
                "option 'primary.key' has an empty column name",
            ));
        }
        if spec.schema.field_with_name(k).is_err() {
            let cols: Vec<&str> = spec
                .schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect();
            return Err(WeirError::user(format!(
                "option 'primary.key' names column '{k}', which view '{}' does not have; its \
                 columns: {}",
                spec.view,
                cols.join(", ")
            )));
        }
        if !seen.insert(k) {
            return Err(WeirError::user(format!(
                "option 'primary.key' names column '{k}' twice"
            )));
        }
    }
    Ok(())
}

pub struct PostgresSinkFactory;

impl SinkFactory for PostgresSinkFactory {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn create(&self, spec: SinkSpec) -> Result<Box<dyn Sink>> {
        Ok(Box::new(PostgresSink::new(spec)?))
    }
}

/// Rows encoded for one transaction.
struct Payload {
    /// A complete binary COPY stream of the rows to write.
    bytes: Vec<u8>,
    rows: usize,
    /// An updating view's deletes, applied before the rows are written.
    deletes: Option<Deletes>,
    /// Cluster mode: the key partitions the rows came from, whose fencing epochs the
    /// transaction checks.
    kps: Vec<u32>,
}

/// Cluster mode: the fencing scope of this sink and the epochs it claimed
/// (`weir.cluster_fence`, docs/cluster.md).
struct Fence {
    scope: String,
    epochs: BTreeMap<u32, i64>,
    /// Key partitions to claim at the next attempt.
    claiming: Vec<u32>,
    /// Key partitions of the rows buffered since the last payload was encoded.
    buffered: BTreeSet<u32>,
}

impl Payload {
    /// The rows written and deleted.
    fn changes(&self) -> usize {
        self.rows + self.deletes.as_ref().map_or(0, |d| d.rows)
    }

    fn len(&self) -> usize {
        self.bytes.len() + self.deletes.as_ref().map_or(0, |d| d.keys.len())
    }
}

/// The rows a transaction of an updating view deletes.
struct Deletes {
    /// A complete binary COPY stream of their key columns, for the delete staging table;
    /// empty for a global aggregate, whose one row goes whatever the change.
    keys: Vec<u8>,
    rows: usize,
    /// Some key has a NULL in it (see [`Layout::delete_nulls`]).
    nulls: bool,
}

pub struct PostgresSink {
    name: String,
    opts: PostgresSinkOptions,
    layout: Layout,
    /// Batches as written: the view's schema, with [`ROW_ID`] in front in append mode.
    schema: SchemaRef,
    /// Key column positions in `schema`, for deduplicating upserts.
    key_idx: Vec<usize>,
    stats: Arc<Stats>,
    conn: Option<PgConnection>,
    /// The table has been created or checked (once per sink).
    ready: bool,
    /// `weir.sink_progress` exists.
    progress: bool,
    /// The table holds rows with a NULL in their key (its key is `UNIQUE NULLS NOT
    /// DISTINCT`); known once the table is created or checked.
    null_keys: bool,
    /// Transactions left before the direct-COPY fast path is tried again, and the next
    /// such pause (see [`FastPath`]).
    fast: FastPath,
    direct_copy: bool,
    buffer: Vec<RecordBatch>,
    buffered_rows: usize,
    /// Encoded rows not yet committed (a write that gave up after `retry.max`).
    pending: Option<Payload>,
    /// Rows committed so far (carried across restarts in the checkpoint).
    rows: u64,
    fence: Option<Fence>,
}

impl PostgresSink {
    pub fn new(spec: SinkSpec) -> Result<Self> {
        let mut options = spec.options.clone();
        let opts = PostgresSinkOptions::parse(&mut options, &spec)?;
        options.finish("the postgres sink", VALID_KEYS)?;
        let layout = Layout::new(
            opts.table.clone(),
            &spec.view,
            &spec.schema,
            opts.mode,
            opts.key.clone(),
        )?
        .never_null(&spec.never_null);
        let schema = match opts.mode {
            Mode::Upsert | Mode::Changelog => spec.schema.clone(),
            Mode::Append => {
                let mut fields = vec![Arc::new(Field::new(ROW_ID, DataType::Int64, false))];
                fields.extend(spec.schema.fields().iter().cloned());
                Arc::new(Schema::new(fields))
            }
        };
        let key_idx = opts
            .key
            .iter()
            .map(|k| schema.index_of(k))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(PostgresSink {
            name: spec.name,
            opts,
            layout,
            schema,
            key_idx,
            stats: spec.stats,
            conn: None,
            ready: false,
            progress: false,
            null_keys: false,
            fast: FastPath::default(),
            direct_copy: true,
            buffer: Vec::new(),
            buffered_rows: 0,
            pending: None,
            rows: 0,
            fence: None,
        })
    }

    /// Rows committed to the table so far.
    pub fn rows_written(&self) -> u64 {
        self.rows
    }

    /// Whether to try copying rows straight into the table before falling back to the
    /// upsert (on by default; see `transaction`). Off, every write takes the upsert path:
    /// for benchmarks that measure it.
    pub fn set_direct_copy(&mut self, on: bool) {
        self.direct_copy = on;
    }

    fn what(&self) -> String {
        format!("postgres sink '{}' (table {})", self.name, self.opts.table)
    }

    /// Open a connection, set the table up on the first one, and create the staging table.
    ///
    /// The sqlx calls run in boxed futures (here and below): proving a future `Send` for
    /// every lifetime through sqlx's `Executor` impls is beyond rustc when the calls sit
    /// deep inside the sink's `async_trait` methods.
    fn connect(&mut self) -> BoxFuture<'_, Result<PgConnection>> {
        Box::pin(async move {
            let mut conn = match tokio::time::timeout(
                CONNECT_TIMEOUT,
                PgConnection::connect_with(&self.opts.connect),
            )
            .await
            {
                Err(_) => {
                    return Err(WeirError::external(format!(
                        "connecting: no answer within {}s",
                        CONNECT_TIMEOUT.as_secs()
                    ))
                    .retryable());
                }
                Ok(r) => r.map_err(|e| pg_error("connecting", e))?,
            };
            if !self.ready {
                self.setup(&mut conn).await?;
                self.ready = true;
            }
            sqlx::Executor::execute(&mut conn, self.layout.create_stage().as_str())
                .await
                .map_err(|e| pg_error("creating the staging table", e))?;
            if let Some(sql) = self.layout.create_delete_stage() {
                sqlx::Executor::execute(&mut conn, sql.as_str())
                    .await
                    .map_err(|e| pg_error("creating the staging table for deletes", e))?;
            }
            Ok(conn)
        })
    }

    /// Apply the migrations, then create the table or check the one there.
    fn setup<'a>(&'a mut self, conn: &'a mut PgConnection) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            // On a connection of its own: a failed migration can leave the migrator's advisory
            // lock held by its session.
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(CONNECT_TIMEOUT)
                .connect_with(self.opts.connect.clone())
                .await
                .map_err(|e| pg_error("connecting", e))?;
            let migrated = migrator().run(&pool).await;
            pool.close().await;
            if let Err(e) = migrated {
                let transient = match &e {
                    sqlx::migrate::MigrateError::Execute(se)
                    | sqlx::migrate::MigrateError::ExecuteMigration(se, _) => transient(se),
                    _ => false,
                };
                if transient {
                    return Err(
                        WeirError::external_source("applying Weir's migrations", e).retryable()
                    );
                }
                tracing::warn!(
                    sink = %self.name,
                    error = %e,
                    "could not apply Weir's migrations (schema weir); sink progress is not recorded"
                );
            }
            self.progress = sqlx::query_scalar::<_, bool>(
                "SELECT to_regclass('weir.sink_progress') IS NOT NULL",
            )
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| pg_error("looking for weir.sink_progress", e))?;

            let version: i32 =
                sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(|e| pg_error("reading the server version", e))?;
            let mut info = self.read_table(conn).await?;
            if info.is_none() {
                let create = self.layout.create_table(version >= 150_000);
                let created = sqlx::Executor::execute(&mut *conn, create.as_str()).await;
                info = self.read_table(conn).await?;
                match created {
                    Ok(_) => {
                        tracing::info!(sink = %self.name, table = %self.opts.table, "created table")
                    }
                    // Another process (a cluster's members start together) created it
                    // between our look and our CREATE: use theirs.
                    Err(e) if info.is_some() => tracing::debug!(
                        sink = %self.name, error = %e, "the table was created meanwhile"
                    ),
                    Err(e) => return Err(pg_error("creating the table", e)),
                }
            }
            let Some(info) = info else {
                return Err(WeirError::external(
                    "the table is not there after CREATE TABLE",
                ));
            };
            let problems = self.layout.problems(&info);
            if !problems.is_empty() {
                return Err(WeirError::user(format!(
                    "postgres sink '{}': table {} does not fit view '{}': {}",
                    self.name,
                    info.name,
                    self.layout.view,
                    problems.join("; ")
                )));
            }
            self.null_keys = self.layout.holds_null_keys(&info);
            if self.layout.nullable_key() && !self.null_keys {
                tracing::warn!(
                    sink = %self.name,
                    table = %info.name,
                    "the view's key can be NULL but the table's key cannot hold a NULL (it is \
                     a primary key, or a unique index whose NULLs are distinct): a row with a \
                     NULL key will stop the sink. {}",
                    NULL_KEY_HELP
                );
            }
            Ok(())
        })
    }

    fn read_table<'a>(
        &'a self,
        conn: &'a mut PgConnection,
    ) -> BoxFuture<'a, Result<Option<TableInfo>>> {
        Box::pin(async move {
            let t = self.opts.table.sql();
            let found: Option<(String, String)> = sqlx::query_as(schema::FIND_TABLE)
                .bind(&t)
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| pg_error("reading the catalog", e))?;
            let Some((ns, rel)) = found else {
                return Ok(None);
            };
            let columns: Vec<(String, String, bool, bool)> = sqlx::query_as(schema::TABLE_COLUMNS)
                .bind(&t)
                .fetch_all(&mut *conn)
                .await
                .map_err(|e| pg_error("reading the catalog", e))?;
            let unique_keys: Vec<(Vec<String>, bool)> = sqlx::query_as(schema::UNIQUE_KEYS)
                .bind(&t)
                .fetch_all(&mut *conn)
                .await
                .map_err(|e| pg_error("reading the catalog", e))?;
            Ok(Some(TableInfo {
                name: format!("{ns}.{rel}"),
                columns: columns
                    .into_iter()
                    .map(|(name, type_name, not_null, has_default)| TableColumn {
                        name,
                        type_name,
                        not_null,
                        has_default,
                    })
                    .collect(),
                unique_keys: unique_keys
                    .into_iter()
                    .map(|(columns, nulls_not_distinct)| UniqueKey {
                        columns,
                        nulls_not_distinct,
                    })
                    .collect(),
            }))
        })
    }

    /// One try at committing the pending rows and (at a checkpoint) the progress row.
    async fn attempt(&mut self, epoch: Option<u64>) -> Result<()> {
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => self.connect().await?,
        };
        self.claim_fences(&mut conn).await?;
        // The connection goes back only after a success: after any failure it may be in a
        // transaction or halfway through a COPY, and the next attempt opens a new one.
        // An updating view's changes mostly update keys already there: no fast path.
        let try_fast = self.direct_copy
            && self.opts.mode != Mode::Changelog
            && self.pending.is_some()
            && self.fast.ready();
        let went_fast = self.transaction(&mut conn, epoch, try_fast).await?;
        if self.pending.is_some() {
            self.fast.record(try_fast, went_fast);
        }
        self.conn = Some(conn);
        Ok(())
    }

    /// One transaction: the pending rows (if any) and, at a checkpoint, the progress row.
    /// Returns whether the rows went in by the fast path.
    ///
    /// The rows go into the staging table by binary COPY and from there into the target by
    /// `INSERT ... ON CONFLICT`. When `try_fast`, they are first copied straight into the
    /// target inside a savepoint: if none of their keys is there yet (a windowed view's
    /// rows, each window written once), that is the whole job, at the cost of a plain
    /// COPY, about twice as fast as the speculative insertion ON CONFLICT does per row. A
    /// key that is already there makes the COPY fail with a unique violation; the savepoint
    /// is rolled back and the rows take the upsert path in the same transaction.
    ///
    /// An updating view's deletes go first: their keys by binary COPY into the delete
    /// staging table, then `DELETE ... USING` it (for a global aggregate, `DELETE` of the
    /// table's one row, which the new row, if any, replaces), in the same round trip as the
    /// upsert and the COMMIT.
    fn transaction<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        epoch: Option<u64>,
        try_fast: bool,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let payload = self.pending.as_ref();
            let started = std::time::Instant::now();
            let mut copied = started;
            let mut tail = String::new();
            let mut went_fast = false;
            if let Some(p) = payload {
                tail.push_str(&self.fence_check(p)?);
                let begin = if try_fast {
                    "BEGIN; SAVEPOINT weir_fast"
                } else {
                    "BEGIN"
                };
                sqlx::Executor::execute(&mut *conn, begin)
                    .await
                    .map_err(|e| pg_error("BEGIN", e))?;
                let doing = format!("writing {} rows", p.rows);
                if let Some(d) = &p.deletes {
                    if !self.opts.key.is_empty() {
                        copy_in(conn, &self.layout.copy_deletes(), &d.keys)
                            .await
                            .map_err(|e| pg_error(&format!("deleting {} rows", d.rows), e))?;
                    }
                    tail.push_str(&self.layout.delete());
                    tail.push_str("; ");
                    if d.nulls {
                        tail.push_str(&self.layout.delete_nulls());
                        tail.push_str("; ");
                    }
                }
                if try_fast {
                    match copy_in(conn, &self.layout.copy_direct(), &p.bytes).await {
                        Ok(()) => went_fast = true,
                        Err(sqlx::Error::Database(db))
                            if db.code().as_deref() == Some(UNIQUE_VIOLATION) =>
                        {
                            sqlx::Executor::execute(&mut *conn, "ROLLBACK TO SAVEPOINT weir_fast")
                                .await
                                .map_err(|e| pg_error(&doing, e))?;
                        }
                        Err(e) => return Err(pg_error(&doing, e)),
                    }
                }
                if !went_fast && p.rows > 0 {
                    copy_in(conn, &self.layout.copy(), &p.bytes)
                        .await
                        .map_err(|e| pg_error(&doing, e))?;
                    tail.push_str(&self.layout.upsert());
                    tail.push_str("; ");
                }
                copied = std::time::Instant::now();
            }
            if let (Some(epoch), true) = (epoch, self.progress) {
                let rows = self.rows + payload.map_or(0, |p| p.changes() as u64);
                tail.push_str(&format!(
                    "INSERT INTO weir.sink_progress (sink, epoch, rows) VALUES ({}, {}, {}) \
                 ON CONFLICT (sink) DO UPDATE SET epoch = EXCLUDED.epoch, rows = EXCLUDED.rows, \
                 updated_at = now(); ",
                    schema::quote_literal(&self.name),
                    epoch as i64,
                    rows as i64
                ));
            }
            if payload.is_none() && tail.is_empty() {
                return Ok(false);
            }
            // Upsert, progress and COMMIT in one round trip; an error skips the rest.
            if payload.is_some() {
                tail.push_str("COMMIT");
            }
            let doing = match payload {
                Some(p) => format!("upserting {} rows", p.rows),
                None => "recording progress".to_string(),
            };
            sqlx::Executor::execute(&mut *conn, tail.as_str())
                .await
                .map_err(|e| pg_error(&doing, e))?;
            tracing::debug!(
                sink = %self.name,
                rows = payload.map_or(0, |p| p.rows),
                direct = went_fast,
                copy_ms = (copied - started).as_millis() as u64,
                commit_ms = copied.elapsed().as_millis() as u64,
                "postgres sink: transaction committed"
            );
            Ok(went_fast)
        })
    }

    /// Take the key partitions waiting to be claimed: raise their epochs in
    /// `weir.cluster_fence` (inserting them at 1), which makes any other member's
    /// transaction with their rows fail its check from now on.
    fn claim_fences<'a>(&'a mut self, conn: &'a mut PgConnection) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let Some(f) = self.fence.as_mut().filter(|f| !f.claiming.is_empty()) else {
                return Ok(());
            };
            let kps: Vec<i32> = f.claiming.iter().map(|&k| k as i32).collect();
            let rows: Vec<(i32, i64)> = sqlx::query_as(
                "INSERT INTO weir.cluster_fence AS f (scope, kp, epoch) \
                 SELECT $1, k, 1 FROM unnest($2::integer[]) AS k ORDER BY k \
                 ON CONFLICT (scope, kp) DO UPDATE SET epoch = f.epoch + 1, updated_at = now() \
                 RETURNING kp, epoch",
            )
            .bind(&f.scope)
            .bind(&kps)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| pg_error("claiming key partitions", e))?;
            for (kp, epoch) in rows {
                f.epochs.insert(kp as u32, epoch);
            }
            tracing::debug!(sink = %self.name, scope = %f.scope, kps = ?f.claiming,
                "postgres sink: key partitions claimed");
            f.claiming.clear();
            Ok(())
        })
    }

    /// The statement that checks, inside a transaction writing `p`, that this member
    /// still holds the key partitions its rows came from (empty outside a cluster).
    fn fence_check(&self, p: &Payload) -> Result<String> {
        let Some(f) = self.fence.as_ref().filter(|_| !p.kps.is_empty()) else {
            return Ok(String::new());
        };
        let mut epochs = Vec::with_capacity(p.kps.len());
        for kp in &p.kps {
            let Some(e) = f.epochs.get(kp) else {
                return Err(WeirError::Fenced(format!(
                    "{}: rows of key partition {kp}, which this member no longer owns",
                    self.what()
                )));
            };
            epochs.push(e.to_string());
        }
        let kps: Vec<String> = p.kps.iter().map(|k| k.to_string()).collect();
        Ok(format!(
            "SELECT weir.check_fence({}, ARRAY[{}]::integer[], ARRAY[{}]::bigint[]); ",
            schema::quote_literal(&f.scope),
            kps.join(","),
            epochs.join(",")
        ))
    }

    /// Run attempts until one succeeds, backing off between them (the engine's
    /// [`Backoff`], doubling up to `retry.backoff.max`); gives up after `retry.max`
    /// retries, or at once on an error a retry cannot fix.
    async fn run(&mut self, epoch: Option<u64>) -> Result<()> {
        let mut policy = Backoff::new(FIRST_BACKOFF, self.opts.backoff_max);
        if let Some(max) = self.opts.retry_max {
            policy = policy.max_retries(max);
        }
        let mut attempts = policy.start();
        loop {
            let e = match self.attempt(epoch).await {
                Ok(()) => {
                    if let Some(p) = self.pending.take() {
                        self.rows += p.changes() as u64;
                        Stats::add(&self.stats.bytes, p.len() as u64);
                    }
                    if attempts.retries() > 0 {
                        self.stats.set_status(Status::Running);
                        tracing::info!(sink = %self.name, attempts = attempts.retries() + 1,
                            "postgres sink recovered");
                    }
                    return Ok(());
                }
                Err(e) => e,
            };
            if !e.is_retryable() {
                return Err(e.context(self.what()));
            }
            Stats::add(&self.stats.errors, 1);
            let msg = format!("{}: {e}", self.what());
            self.stats.set_error(msg.clone());
            self.stats.set_status(Status::Retrying);
            let Some(wait) = attempts.after(&e) else {
                let max = self.opts.retry_max.unwrap_or_default();
                return Err(e
                    .context(format!(
                        "gave up after {} attempts (retry.max = {max})",
                        attempts.retries() + 1
                    ))
                    .context(self.what()));
            };
            tracing::warn!(
                sink = %self.name,
                attempt = attempts.retries(),
                next_retry_ms = wait.as_millis() as u64,
                error = %msg,
                "postgres sink: write failed, retrying"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// Encode the buffered batches as one COPY stream, keeping only the last row per key
    /// when the upsert updates (ON CONFLICT DO UPDATE may not touch a row twice).
    fn encode_buffer(&mut self) -> Result<Payload> {
        let batches = std::mem::take(&mut self.buffer);
        self.buffered_rows = 0;
        if self.opts.mode == Mode::Changelog {
            return self.encode_changes(&batches);
        }
        let keep = if self.layout.updates() {
            last_per_key(&batches, &self.key_idx)?
        } else {
            None
        };
        let total: usize = batches.iter().map(|b| b.num_rows()).sum();
        let mut bytes = Vec::with_capacity(encode::HEADER.len() + 2 + total * 64);
        bytes.extend_from_slice(encode::HEADER);
        let mut rows = 0;
        for (i, b) in batches.iter().enumerate() {
            let sel = keep.as_ref().map(|k| k[i].as_slice());
            rows += sel.map_or(b.num_rows(), |s| s.len());
            encode::encode_rows(b, sel, &mut bytes)?;
        }
        bytes.extend_from_slice(encode::TRAILER);
        Ok(Payload {
            bytes,
            rows,
            deletes: None,
            kps: Vec::new(),
        })
    }

    /// An updating view's buffered changes as their effect on the table: per key, the last
    /// change ([`changelog::net_changes`]), an insert to upsert or a delete. Applying that
    /// again (a replay after a restart) leaves the table as it is.
    fn encode_changes(&self, batches: &[RecordBatch]) -> Result<Payload> {
        let Some(first) = batches.first() else {
            return Ok(Payload {
                bytes: encode::encode(&[])?,
                rows: 0,
                deletes: None,
                kps: Vec::new(),
            });
        };
        let all = concat_batches(&first.schema(), batches)?;
        let net = changelog::net_changes(&all, &self.key_idx)?;
        let deleted = net.deletes.num_rows();
        let deletes = if self.key_idx.is_empty() {
            // A global aggregate: its one row goes, and the new one (if any) takes its place.
            (deleted + net.upserts.num_rows() > 0).then(|| Deletes {
                keys: Vec::new(),
                rows: deleted,
                nulls: false,
            })
        } else {
            (deleted > 0)
                .then(|| -> Result<Deletes> {
                    let keys = net.deletes.project(&self.key_idx)?;
                    Ok(Deletes {
                        nulls: keys.columns().iter().any(|c| c.null_count() > 0),
                        keys: encode::encode(&[keys])?,
                        rows: deleted,
                    })
                })
                .transpose()?
        };
        Ok(Payload {
            bytes: encode::encode(std::slice::from_ref(&net.upserts))?,
            rows: net.upserts.num_rows(),
            deletes,
            kps: Vec::new(),
        })
    }

    /// Write what is buffered (and pending), with the progress row at a checkpoint.
    async fn write_out(&mut self, epoch: Option<u64>) -> Result<()> {
        if self.pending.is_some() && !self.buffer.is_empty() {
            // Rows from a write that gave up earlier go first, on their own.
            self.run(None).await?;
        }
        if self.pending.is_none() && !self.buffer.is_empty() {
            let mut payload = self.encode_buffer()?;
            if let Some(f) = &mut self.fence {
                payload.kps = std::mem::take(&mut f.buffered).into_iter().collect();
            }
            self.pending = Some(payload);
        }
        if self.pending.is_some() || epoch.is_some() || !self.ready {
            self.run(epoch).await?;
        }
        Ok(())
    }

    /// The batch as written: with the row ids in front in append mode.
    fn with_ids(&self, batch: RecordBatch, ids: RowIds) -> Result<RecordBatch> {
        match self.opts.mode {
            Mode::Upsert | Mode::Changelog => Ok(batch),
            Mode::Append => {
                let n = batch.num_rows();
                let mut cols: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns() + 1);
                cols.push(Arc::new(Int64Array::from_iter_values(
                    (0..n).map(|i| ids.id(i)),
                )));
                cols.extend(batch.columns().iter().cloned());
                Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
            }
        }
    }
}

/// What to do about a NULL key the table cannot hold.
const NULL_KEY_HELP: &str = "On PostgreSQL 15 and later the sink creates the table with \
    UNIQUE NULLS NOT DISTINCT on the key, which holds a NULL key as one key: drop the table to \
    have it created so, or add such a constraint; or filter the NULLs out or COALESCE them in \
    the view";

/// The SQLSTATE `weir.check_fence` raises (migrations/0002_cluster_fence.sql).
const FENCED: &str = "WF001";

/// SQLSTATE unique_violation.
const UNIQUE_VIOLATION: &str = "23505";

/// A binary COPY of `bytes` with `statement`.
async fn copy_in(conn: &mut PgConnection, statement: &str, bytes: &[u8]) -> sqlx::Result<()> {
    let mut copy = conn.copy_in_raw(statement).await?;
    copy.send(bytes).await?;
    copy.finish().await?;
    Ok(())
}

/// When to try the direct-COPY fast path. After it meets a key that is already in the
/// table (a replay after a restart, a window updated by late rows), the next transactions
/// go straight to the upsert for a while (4, doubling to 64 while it keeps failing), so a
/// stream of updates wastes at most one short COPY now and then.
#[derive(Debug, Clone, Copy)]
struct FastPath {
    skip: u32,
    pause: u32,
}

impl Default for FastPath {
    fn default() -> Self {
        FastPath { skip: 0, pause: 4 }
    }
}

impl FastPath {
    fn ready(&self) -> bool {
        self.skip == 0
    }

    /// After a committed transaction with rows.
    fn record(&mut self, tried: bool, succeeded: bool) {
        if !tried {
            self.skip = self.skip.saturating_sub(1);
        } else if succeeded {
            self.pause = 4;
        } else {
            self.skip = self.pause;
            self.pause = (self.pause * 2).min(64);
        }
    }
}

/// Per batch, the rows to keep (in order) so that each key appears once, as its last row
/// across all batches; `None` when every row is kept (the usual case: a window's row is
/// emitted once).
///
/// Done here rather than with `SELECT DISTINCT ON (key) ... ORDER BY key, ordinal DESC` in
/// the upsert: that sorts every staged batch inside PostgreSQL, the sink's bottleneck (one
/// backend per sink), and sends rows that are then thrown away; one hashing pass over the
/// key columns here costs a few milliseconds per 50,000 rows and usually drops nothing.
fn last_per_key(batches: &[RecordBatch], key_idx: &[usize]) -> Result<Option<Vec<Vec<u32>>>> {
    let Some(first) = batches.first() else {
        return Ok(None);
    };
    let fields: Vec<SortField> = key_idx
        .iter()
        .map(|&i| SortField::new(first.schema().field(i).data_type().clone()))
        .collect();
    let converter = RowConverter::new(fields)?;
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut rows = converter.empty_rows(total, total * 16);
    for b in batches {
        let cols: Vec<ArrayRef> = key_idx.iter().map(|&i| b.column(i).clone()).collect();
        converter.append(&mut rows, &cols)?;
    }
    let mut seen = HashSet::with_capacity(total);
    let mut keep = vec![true; total];
    let mut dropped = false;
    for i in (0..total).rev() {
        if !seen.insert(rows.row(i)) {
            keep[i] = false;
            dropped = true;
        }
    }
    if !dropped {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(batches.len());
    let mut at = 0;
    for b in batches {
        let n = b.num_rows();
        out.push((0..n).filter(|&j| keep[at + j]).map(|j| j as u32).collect());
        at += n;
    }
    Ok(Some(out))
}

/// Whether an error may go away by itself: the connection broke or could not be made, the
/// server is starting, stopping or out of resources, or a transaction lost a race.
fn transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| transient_sqlstate(&c)),
        _ => false,
    }
}

/// SQLSTATE classes and codes worth retrying: 08 connection exception, 53 insufficient
/// resources, 57P01-57P05 (shutdown, cannot connect now, idle timeouts), 40 transaction
/// rollback (serialization failure, deadlock), 55P03 lock not available, 58 system error.
fn transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("40")
        || code.starts_with("58")
        || code.starts_with("57P")
        || code == "55P03"
}

/// A failed database call while `doing`: retryable when [`transient`]. A server error
/// shows its detail and SQLSTATE ([`ServerError`]).
fn pg_error(doing: &str, e: sqlx::Error) -> WeirError {
    if let sqlx::Error::Database(db) = &e
        && db.code().as_deref() == Some(FENCED)
    {
        return WeirError::Fenced(format!("{doing}: {}", ServerError(e)));
    }
    let retry = transient(&e);
    let e = match e {
        sqlx::Error::Database(_) => WeirError::external_source(doing, ServerError(e)),
        other => WeirError::external_source(doing, other),
    };
    if retry { e.retryable() } else { e }
}

/// An error the server sent, shown with its detail and SQLSTATE; the sqlx error is its
/// source.
#[derive(Debug)]
struct ServerError(sqlx::Error);

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sqlx::Error::Database(db) = &self.0 else {
            return write!(f, "{}", self.0);
        };
        write!(f, "{}", db.message())?;
        if let Some(d) = db
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .and_then(|pg| pg.detail())
        {
            write!(f, " ({d})")?;
        }
        if let Some(code) = db.code() {
            write!(f, " [SQLSTATE {code}]")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[async_trait]
impl Sink for PostgresSink {
    /// Rows are written by the view's key or by row id: written again, they overwrite
    /// themselves.
    fn idempotent(&self) -> bool {
        true
    }

    /// Connect, apply the migrations, create or check the table (retrying while the
    /// database cannot be reached), and pick up the row count from the checkpoint.
    async fn recover(&mut self, restored: Option<(u64, SinkCheckpoint)>) -> Result<()> {
        if let Some((_, cp)) = restored {
            self.rows = cp.get("rows").and_then(|r| r.as_u64()).unwrap_or(0);
        }
        self.run(None).await
    }

    async fn write(&mut self, batch: RecordBatch, ids: RowIds) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.opts.mode != Mode::Append && !self.null_keys {
            for (&i, k) in self.key_idx.iter().zip(&self.opts.key) {
                if batch.column(i).null_count() > 0 {
                    return Err(WeirError::external(format!(
                        "{}: a row of view '{}' has NULL in key column '{k}', which the \
                         table's key cannot hold (a primary key, or a unique index whose NULLs \
                         are distinct). {NULL_KEY_HELP}",
                        self.what(),
                        self.layout.view
                    )));
                }
            }
        }
        self.buffered_rows += batch.num_rows();
        if let Some(f) = &mut self.fence {
            f.buffered.insert(ids.origin);
        }
        let batch = self.with_ids(batch, ids)?;
        self.buffer.push(batch);
        if self.buffered_rows >= self.opts.batch_rows {
            self.write_out(None).await?;
        }
        Ok(())
    }

    async fn claim(&mut self, scope: &str, kps: &[u32]) -> Result<()> {
        let scope = format!("{scope}/{}", self.name);
        let f = self.fence.get_or_insert_with(|| Fence {
            scope,
            epochs: BTreeMap::new(),
            claiming: Vec::new(),
            buffered: BTreeSet::new(),
        });
        f.claiming.extend_from_slice(kps);
        self.run(None).await
    }

    fn release(&mut self, kps: &[u32]) {
        if let Some(f) = &mut self.fence {
            for kp in kps {
                f.epochs.remove(kp);
            }
        }
    }

    fn discard(&mut self) {
        self.buffer.clear();
        self.buffered_rows = 0;
        self.pending = None;
        if let Some(f) = &mut self.fence {
            f.buffered.clear();
        }
    }

    async fn flush(&mut self) -> Result<()> {
        if self.buffer.is_empty() && self.pending.is_none() {
            return Ok(());
        }
        self.write_out(None).await
    }

    async fn precommit(&mut self, epoch: u64) -> Result<SinkCheckpoint> {
        self.write_out(Some(epoch)).await?;
        Ok(serde_json::json!({"epoch": epoch, "rows": self.rows}))
    }

    async fn close(&mut self) -> Result<()> {
        if !self.buffer.is_empty() || self.pending.is_some() {
            self.write_out(None).await?;
        }
        if let Some(conn) = self.conn.take() {
            // Everything is committed: a failed goodbye to the server loses nothing (the
            // connection is dropped either way).
            let _ = conn.close().await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
