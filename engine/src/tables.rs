//! Reference tables (`CREATE TABLE`): small tables loaded whole from a file or Postgres,
//! for lookup joins with streams (see `lookup.rs` for how plans read them). A table is
//! loaded when it is created; the runtime reloads it every `refresh.interval`
//! ([`TableRefresh`]); `REFRESH TABLE` reloads it at once. A failed load keeps the previous
//! contents and shows the error in the table's status.

use crate::clock::wall_ms;
use crate::connector::TableLoader;
use crate::error::{Result, WeirError};
use crate::lookup::TableHandle;
use crate::stats::{Stats, Status};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use std::sync::Arc;
use std::time::Duration;

/// A reference table (`CREATE TABLE`), see `lookup.rs`.
pub struct RefTable {
    pub name: String,
    pub sql: String,
    pub connector: String,
    pub loader: Arc<dyn TableLoader>,
    pub handle: Arc<TableHandle>,
    pub refresh: Option<Duration>,
    pub stats: Arc<Stats>,
    /// Whether the runtime has been handed its refresh task.
    pub started: bool,
}

/// A reference table to reload every `interval`, for the runtime.
pub struct TableRefresh {
    pub name: String,
    pub loader: Arc<dyn TableLoader>,
    pub handle: Arc<TableHandle>,
    pub interval: Duration,
    pub stats: Arc<Stats>,
}

impl TableRefresh {
    /// Load the table once and swap it in; a failure keeps the old contents.
    pub async fn reload(&self) -> Result<usize> {
        reload_table(&self.name, self.loader.as_ref(), &self.handle, &self.stats).await
    }

    /// Reload the table every `interval`, forever (the runtime aborts the task when the
    /// table is dropped). A failed load is logged and shown in the table's status; the
    /// table keeps its previous contents and is tried again at the next interval.
    pub async fn run(self) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate, and CREATE TABLE has just loaded the table.
        ticks.tick().await;
        loop {
            ticks.tick().await;
            // A failed load is logged and shown in the table's status by `reload`; the
            // table keeps its contents and the next interval tries again.
            let _ = self.reload().await;
        }
    }
}

/// Load a reference table and swap it in (the previous contents stay if the load fails).
pub async fn reload_table(
    name: &str,
    loader: &dyn TableLoader,
    handle: &TableHandle,
    stats: &Stats,
) -> Result<usize> {
    let started = std::time::Instant::now();
    match loader
        .load()
        .await
        .and_then(|b| check_table_batches(name, &handle.schema, b))
    {
        Ok(batches) => {
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            handle.replace(batches, wall_ms());
            stats
                .rows_in
                .store(rows as u64, std::sync::atomic::Ordering::Relaxed);
            Stats::add(&stats.batches, 1);
            stats.set_status(Status::Running);
            tracing::info!(table = %name, rows, ms = started.elapsed().as_millis() as u64, "table loaded");
            Ok(rows)
        }
        Err(e) => {
            let msg = e.to_string();
            handle.failed(msg.clone());
            stats.set_error(msg.clone());
            stats.set_status(Status::Retrying);
            tracing::error!(table = %name, error = %msg, "table load failed; keeping the previous contents");
            Err(e)
        }
    }
}

/// A loader's batches, checked against (and cast to) the table's declared schema.
fn check_table_batches(
    name: &str,
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<Vec<RecordBatch>> {
    batches
        .into_iter()
        .map(|b| {
            if b.schema().fields() == schema.fields() {
                return Ok(RecordBatch::try_new(schema.clone(), b.columns().to_vec())?);
            }
            if b.num_columns() != schema.fields().len() {
                return Err(WeirError::Internal(format!(
                    "table '{name}': the loader returned {} columns, {} declared",
                    b.num_columns(),
                    schema.fields().len()
                )));
            }
            let cols = b
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(c, f)| {
                    if c.data_type() == f.data_type() {
                        Ok(c.clone())
                    } else {
                        let strict = datafusion::arrow::compute::CastOptions {
                            safe: false,
                            ..Default::default()
                        };
                        datafusion::arrow::compute::cast_with_options(c, f.data_type(), &strict)
                    }
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            RecordBatch::try_new(schema.clone(), cols).map_err(|e| {
                WeirError::user(format!(
                    "table '{name}' does not fit its declared columns: {e}"
                ))
            })
        })
        .collect()
}

/// DESCRIBE's lines about a table's loads.
pub fn table_description(t: &RefTable) -> String {
    let info = t.handle.info();
    let mut lines = vec![
        format!("reads {}", t.loader.describe()),
        format!(
            "refresh {}",
            t.refresh
                .map(|d| format!("every {d:?}"))
                .unwrap_or_else(|| "never (REFRESH TABLE reloads it)".into())
        ),
        format!(
            "loaded rows={} loads={} at={}",
            info.rows,
            info.loads,
            crate::stats::fmt_watermark(Some(info.loaded_at_ms))
        ),
    ];
    if let Some(e) = info.last_error {
        lines.push(format!("last_error {e}"));
    }
    lines.join("\n")
}
