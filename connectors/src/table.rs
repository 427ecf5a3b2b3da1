//! Reference tables for lookup joins (`CREATE TABLE`): loaded whole from a file or a
//! PostgreSQL table, and reloaded on `refresh.interval` by the engine.
//!
//! ```sql
//! CREATE TABLE regions (region TEXT NOT NULL, country TEXT, tier INT)
//!     WITH (connector = 'file', path = 'ref/regions.csv', 'refresh.interval' = '5m');
//! CREATE TABLE content (content_id TEXT, title TEXT, released TIMESTAMP)
//!     WITH (connector = 'postgres', url = 'postgres://...', table = 'public.content',
//!           'refresh.interval' = '1m');
//! ```
//!
//! - `file`: `path` (a file, or a glob whose files are read in name order), `format` =
//!   `csv` (with a header row; `csv.delimiter`, default `,`) | `json` (JSON lines) |
//!   `parquet`, by default from the extension. Read with DataFusion's own readers against
//!   the declared columns; a value that does not fit its column fails the load with the
//!   reader's message.
//! - `postgres`: `url` (or `WEIR_POSTGRES_URL`), and `table` (`name` or `schema.name`) or
//!   `query` (any SELECT); the declared columns are selected by name from it.

use crate::file::resolve_files;
use crate::postgres::{connect_options, schema::TableName};
use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Date32Array, StringArray, TimestampMillisecondArray};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionContext};
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use weir_engine::connector::{TableFactory, TableLoader, TableSpec};
use weir_engine::fsutil::run_blocking;
use weir_engine::{Result, WeirError};

pub const FILE_KEYS: &[&str] = &["path", "format", "csv.delimiter"];
pub const POSTGRES_KEYS: &[&str] = &["url", "table", "query"];

const FORMATS: &[&str] = &["csv", "json", "parquet"];
/// Casts that fail on a value that does not fit, instead of making it null.
const STRICT: CastOptions<'static> = CastOptions {
    safe: false,
    format_options: datafusion::arrow::util::display::FormatOptions::new(),
};
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct FileTableFactory;

impl TableFactory for FileTableFactory {
    fn name(&self) -> &'static str {
        "file"
    }

    fn create(&self, spec: TableSpec) -> Result<Arc<dyn TableLoader>> {
        let mut options = spec.options;
        let path = options.take("path").ok_or_else(|| {
            WeirError::user("the file table needs option 'path' (a file or a glob)")
        })?;
        let by_extension = FORMATS
            .iter()
            .find(|f| {
                let ext = if **f == "json" { ".jsonl" } else { "" };
                path.ends_with(&format!(".{f}")) || (!ext.is_empty() && path.ends_with(ext))
            })
            .copied();
        let format = match (options.take("format"), by_extension) {
            (Some(f), _) => {
                let f = f.to_ascii_lowercase();
                if !FORMATS.contains(&f.as_str()) {
                    return Err(WeirError::user(format!(
                        "option 'format' must be one of {}, got '{f}'",
                        FORMATS.join(", ")
                    )));
                }
                f
            }
            (None, Some(f)) => f.to_string(),
            (None, None) => {
                return Err(WeirError::user(format!(
                    "option 'format' is needed: '{path}' does not end in .csv, .json, .jsonl or .parquet"
                )));
            }
        };
        let delimiter = match options.take("csv.delimiter") {
            None => b',',
            Some(d) if d.len() == 1 && format == "csv" => d.as_bytes()[0],
            Some(d) => {
                return Err(WeirError::user(format!(
                    "option 'csv.delimiter' must be one character, for format 'csv'; got '{d}'"
                )));
            }
        };
        options.finish(&format!("the file table '{}'", spec.name), FILE_KEYS)?;
        Ok(Arc::new(FileTable {
            pattern: path,
            format,
            delimiter,
            schema: spec.schema,
        }))
    }
}

struct FileTable {
    pattern: String,
    format: String,
    delimiter: u8,
    schema: SchemaRef,
}

impl FileTable {
    async fn read(&self, path: &Path) -> datafusion::error::Result<Vec<RecordBatch>> {
        let ctx = SessionContext::new();
        let p = path.to_string_lossy().to_string();
        let ext = path
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_default();
        let df = match self.format.as_str() {
            "csv" => {
                let o = CsvReadOptions::new()
                    .schema(&self.schema)
                    .has_header(true)
                    .delimiter(self.delimiter)
                    .file_extension(&ext);
                ctx.read_csv(p, o).await?
            }
            "json" => {
                let o = JsonReadOptions::default()
                    .schema(&self.schema)
                    .file_extension(&ext);
                ctx.read_json(p, o).await?
            }
            _ => {
                let o = ParquetReadOptions::default().file_extension(&ext);
                let df = ctx.read_parquet(p, o).await?;
                let cols: Vec<&str> = self
                    .schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect();
                df.select_columns(&cols)?
            }
        };
        df.collect().await
    }
}

#[async_trait]
impl TableLoader for FileTable {
    async fn load(&self) -> Result<Vec<RecordBatch>> {
        // Listing the files is blocking I/O: off the async workers.
        let pattern = self.pattern.clone();
        let files = run_blocking("listing table files", move || resolve_files(&pattern)).await??;
        let mut out = Vec::new();
        for f in &files {
            let batches = self
                .read(f)
                .await
                .map_err(|e| WeirError::external_source(format!("reading {}", f.display()), e))?;
            out.extend(batches);
        }
        Ok(out)
    }

    fn describe(&self) -> String {
        format!("file {} ({})", self.pattern, self.format)
    }
}

pub struct PostgresTableFactory;

impl TableFactory for PostgresTableFactory {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn create(&self, spec: TableSpec) -> Result<Arc<dyn TableLoader>> {
        let mut options = spec.options;
        let what = format!("the postgres table '{}'", spec.name);
        let connect = connect_options(&mut options, &what)?;
        let from = match (options.take("table"), options.take("query")) {
            (Some(t), None) => TableName::parse(&t)?.sql(),
            (None, Some(q)) => format!("({q})"),
            (None, None) => TableName::parse(&spec.name)?.sql(),
            (Some(_), Some(_)) => {
                return Err(WeirError::user(format!(
                    "{what} takes option 'table' or 'query', not both"
                )));
            }
        };
        options.finish(&what, POSTGRES_KEYS)?;
        let select = spec
            .schema
            .fields()
            .iter()
            .map(|f| column_expr(f.name(), f.data_type()))
            .collect::<Result<Vec<_>>>()?
            .join(", ");
        Ok(Arc::new(PostgresTable {
            connect,
            sql: format!("SELECT {select} FROM {from} AS weir_table"),
            from,
            schema: spec.schema,
        }))
    }
}

/// How a declared column is read: timestamps as epoch milliseconds, dates as days since
/// the epoch, everything else as text that arrow casts to the declared type.
fn column_expr(name: &str, t: &DataType) -> Result<String> {
    let c = crate::postgres::schema::quote_ident(name);
    Ok(match t {
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            format!("(extract(epoch from {c}) * 1000)::int8")
        }
        DataType::Date32 => format!("({c} - DATE '1970-01-01')::int4"),
        DataType::Timestamp(_, _) => {
            return Err(WeirError::user(format!(
                "column '{name}': only millisecond TIMESTAMP columns are supported in tables"
            )));
        }
        _ => format!("{c}::text"),
    })
}

struct PostgresTable {
    connect: PgConnectOptions,
    from: String,
    sql: String,
    schema: SchemaRef,
}

#[async_trait]
impl TableLoader for PostgresTable {
    async fn load(&self) -> Result<Vec<RecordBatch>> {
        let err = |doing: &str, e: sqlx::Error| {
            WeirError::external_source(format!("{doing} {}", self.from), e)
        };
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(self.connect.clone())
            .await
            .map_err(|e| err("connecting to read", e))?;
        let rows = sqlx::query(&self.sql).fetch_all(&pool).await;
        pool.close().await;
        let rows = rows.map_err(|e| err("reading", e))?;
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for (i, f) in self.schema.fields().iter().enumerate() {
            let get_err = |e: sqlx::Error| {
                WeirError::external_source(
                    format!("reading column '{}' of {}", f.name(), self.from),
                    e,
                )
            };
            let col: ArrayRef = match f.data_type() {
                DataType::Timestamp(TimeUnit::Millisecond, tz) => {
                    let v = rows
                        .iter()
                        .map(|r| r.try_get::<Option<i64>, _>(i))
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .map_err(get_err)?;
                    Arc::new(TimestampMillisecondArray::from(v).with_timezone_opt(tz.clone()))
                }
                DataType::Date32 => {
                    let v = rows
                        .iter()
                        .map(|r| r.try_get::<Option<i32>, _>(i))
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .map_err(get_err)?;
                    Arc::new(Date32Array::from(v))
                }
                t => {
                    let v = rows
                        .iter()
                        .map(|r| r.try_get::<Option<String>, _>(i))
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .map_err(get_err)?;
                    let text: ArrayRef = Arc::new(StringArray::from(v));
                    cast_with_options(&text, t, &STRICT).map_err(|e| {
                        WeirError::external_source(
                            format!(
                                "column '{}' of {}: a value is not a {t}",
                                f.name(),
                                self.from
                            ),
                            e,
                        )
                    })?
                }
            };
            cols.push(col);
        }
        Ok(vec![RecordBatch::try_new(self.schema.clone(), cols)?])
    }

    fn describe(&self) -> String {
        format!("postgres {}", self.from)
    }
}
