//! The Iceberg sink: a view's rows appended to an Apache Iceberg table, exactly once, one
//! snapshot per checkpoint epoch (docs/lake.md).
//!
//! ```sql
//! CREATE SINK health_lake FROM region_health WITH (
//!     connector = 'iceberg', catalog = 'filesystem', warehouse = 'data/warehouse',
//!     table = 'lake.region_health', 'partition.by' = 'day');
//! ```
//!
//! Weir writes the Parquet data files itself (arrow 59, each column tagged with its Iceberg
//! field id) into the table's `data/` folder, and uses the `iceberg` crate (on arrow 58)
//! only for what it is best at: table metadata, manifests, snapshots and catalogs. No Arrow
//! data crosses between the two arrow versions, so no bridge is needed.
//!
//! # Exactly once
//!
//! - Files written between two checkpoints are named for the epoch they belong to
//!   (`<sink>-e<epoch>-<run>-<n>.parquet`); a data file is invisible to readers until a
//!   snapshot lists it.
//! - At a checkpoint's pre-commit the open files are closed and synced, and the list of
//!   files not committed yet goes into the checkpoint.
//! - When the checkpoint is complete, one `append` snapshot adds them, its summary carrying
//!   `weir.epoch` and `weir.sink`.
//! - After a crash the sink reads the newest `weir.epoch` of its snapshots: if the restored
//!   checkpoint's epoch is not in the table yet, its files are committed now (the commit
//!   had not happened or not finished); if it is, nothing is committed twice. Files of
//!   later epochs were never committed and are deleted: their rows are recomputed.
//! - A table whose snapshots are ahead of the restored checkpoint (the checkpoints were
//!   removed, or belong to another pipeline) is refused with an error: committing would
//!   either skip or repeat rows.
//!
//! Without checkpoints (`--until-done`) files are committed as they roll over and at the
//! end, at least once.

mod files;
mod fs_catalog;
pub mod layout;
mod object_storage;
pub mod options;
pub mod stats;

pub use files::WrittenFile;
use files::{Files, WriteContext, file_stem};
pub use options::{CatalogConfig, IcebergOptions, VALID_KEYS, WarehouseStore};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use iceberg::spec::{DataContentType, DataFileBuilder, DataFileFormat};
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog, CatalogBuilder, TableCreation};
use layout::{Layout, PartitionField};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use weir_engine::connector::{RowIds, Sink, SinkCheckpoint, SinkFactory, SinkSpec};
use weir_engine::fsutil::{blocking, io_error};
use weir_engine::{Result, WeirError};

/// The summary keys of the snapshots the sink commits.
pub const EPOCH_KEY: &str = "weir.epoch";
pub const SINK_KEY: &str = "weir.sink";
/// The table property holding the newest epoch sink `<name>` committed
/// (`weir.epoch.<name>`), set in the same commit as the snapshot: it survives snapshot
/// expiry and other engines' snapshots (a compaction) on top.
pub fn epoch_property(sink: &str) -> String {
    format!("{EPOCH_KEY}.{sink}")
}

pub struct IcebergSinkFactory;

impl SinkFactory for IcebergSinkFactory {
    fn name(&self) -> &'static str {
        "iceberg"
    }

    fn create(&self, spec: SinkSpec) -> Result<Box<dyn Sink>> {
        if spec.changelog {
            return Err(WeirError::user(format!(
                "view '{}' is an updating view (an aggregate without a window): its rows change \
                 and go away, and the iceberg sink only appends (equality deletes are not \
                 written yet); sink a windowed view, or use the postgres sink for updating views",
                spec.view
            )));
        }
        let mut options = spec.options.clone();
        let opts = IcebergOptions::parse(&mut options, &spec.data_dir)?;
        options.finish("the iceberg sink", VALID_KEYS)?;
        let schema = layout::table_schema(&spec.view, &spec.schema, &spec.never_null)?;
        let partition = layout::parse_partition_by(&opts.partition_by, &spec.schema)?;
        Ok(Box::new(IcebergSink {
            name: spec.name.clone(),
            view: spec.view.clone(),
            view_schema: spec.schema.clone(),
            schema,
            partition,
            opts,
            checkpointed: spec.checkpointed,
            stats: spec.stats.clone(),
            table: None,
            files: parking_lot::Mutex::new(Some(Files::default())),
            epoch: 1,
            pending: BTreeMap::new(),
            run: weir_engine::fsutil::unique_id(),
            data_dir: spec.data_dir.clone(),
        }))
    }
}

/// The connected table.
struct Connected {
    catalog: Arc<dyn Catalog>,
    layout: Layout,
    /// Where data files are written: `<table location>/data`, or with an object-store
    /// warehouse a local staging folder, uploaded to `remote` at the pre-commit.
    data_dir: PathBuf,
    /// `<table location>/data` in the object store.
    remote: Option<weir_engine::remote::Remote>,
    spec_id: i32,
}

pub struct IcebergSink {
    name: String,
    view: String,
    view_schema: SchemaRef,
    schema: iceberg::spec::Schema,
    partition: Vec<PartitionField>,
    opts: IcebergOptions,
    checkpointed: bool,
    stats: Arc<weir_engine::stats::Stats>,
    table: Option<Connected>,
    /// Moved into the blocking task during a write and back out after. (In a mutex only
    /// so that the sink is `Sync`: Parquet writers are not.)
    files: parking_lot::Mutex<Option<Files>>,
    /// The epoch the files being written belong to: the last pre-committed one plus one.
    epoch: u64,
    /// Closed files per epoch, not committed yet.
    pending: BTreeMap<u64, Vec<WrittenFile>>,
    run: String,
    /// The pipeline's data directory (staging for an object-store warehouse).
    data_dir: PathBuf,
}

fn ice(context: String) -> impl Fn(iceberg::Error) -> WeirError {
    move |e| WeirError::external_source(context.clone(), e)
}

impl IcebergSink {
    /// Connect to the catalog and load the table, creating it (and its namespace) if it
    /// does not exist; check an existing one has the view's columns and partitioning.
    async fn connect(&mut self) -> Result<()> {
        if self.table.is_some() {
            return Ok(());
        }
        let ident = self.opts.table.clone();
        let catalog: Arc<dyn Catalog> = match &self.opts.catalog {
            CatalogConfig::Filesystem { warehouse } => {
                Arc::new(fs_catalog::FsCatalog::new(warehouse.clone()))
            }
            CatalogConfig::Sql {
                uri,
                name,
                warehouse,
            } => {
                let storage: Arc<dyn iceberg::io::StorageFactory> = match &self.opts.store {
                    Some(st) => Arc::new(object_storage::ObjectStorageFactory {
                        root: st.root.clone(),
                        options: st.options.clone(),
                    }),
                    None => Arc::new(iceberg::io::LocalFsStorageFactory),
                };
                let c = iceberg_catalog_sql::SqlCatalogBuilder::default()
                    .uri(uri.clone())
                    .warehouse_location(warehouse.clone())
                    .with_storage_factory(storage)
                    .load(name.clone(), HashMap::new())
                    .await
                    .map_err(ice(format!(
                        "iceberg sink '{}': connecting to the SQL catalog",
                        self.name
                    )))?;
                Arc::new(c)
            }
        };
        let failed = |doing: &str| ice(format!("iceberg sink '{}': {doing} {ident}", self.name));
        let ns = ident.namespace().clone();
        if !catalog
            .namespace_exists(&ns)
            .await
            .map_err(failed("looking up the namespace of"))?
        {
            catalog
                .create_namespace(&ns, HashMap::new())
                .await
                .map_err(failed("creating the namespace of"))?;
        }
        let table = if catalog
            .table_exists(&ident)
            .await
            .map_err(failed("looking up"))?
        {
            catalog
                .load_table(&ident)
                .await
                .map_err(failed("loading"))?
        } else {
            let creation = TableCreation::builder()
                .name(ident.name().to_string())
                .schema(self.schema.clone())
                .partition_spec(layout::partition_spec(&self.partition)?)
                .properties(HashMap::from([
                    ("write.format.default".to_string(), "parquet".to_string()),
                    (
                        "write.parquet.compression-codec".to_string(),
                        "zstd".to_string(),
                    ),
                    // The filesystem catalog keeps this many metadata files and removes
                    // older ones.
                    (
                        "write.metadata.delete-after-commit.enabled".to_string(),
                        "true".to_string(),
                    ),
                    (
                        "write.metadata.previous-versions-max".to_string(),
                        "20".to_string(),
                    ),
                ]))
                .build();
            let t = catalog
                .create_table(&ns, creation)
                .await
                .map_err(failed("creating"))?;
            tracing::info!(sink = %self.name, table = %ident, location = %t.metadata().location(), "created iceberg table");
            t
        };
        let (layout, spec_id) = self.check_table(&table)?;
        let location = table.metadata().location().trim_end_matches('/');
        let (data_dir, remote) = match &self.opts.store {
            // Files are written in a local staging folder and uploaded at the pre-commit.
            Some(st) => (
                self.data_dir
                    .join("iceberg-staging")
                    .join(file_stem(&self.name)),
                Some(weir_engine::remote::Remote::new(
                    &format!("{location}/data"),
                    &st.options,
                )?),
            ),
            None => (
                PathBuf::from(location.strip_prefix("file://").unwrap_or(location)).join("data"),
                None,
            ),
        };
        self.table = Some(Connected {
            catalog,
            layout,
            data_dir,
            remote,
            spec_id,
        });
        Ok(())
    }

    /// The table's columns must be the view's (names and types, in order) and its
    /// partition spec the one `'partition.by'` asks for.
    fn check_table(&self, table: &iceberg::table::Table) -> Result<(Layout, i32)> {
        let md = table.metadata();
        let current = md.current_schema();
        let theirs: Vec<(String, String)> = current
            .as_struct()
            .fields()
            .iter()
            .map(|f| (f.name.clone(), f.field_type.to_string()))
            .collect();
        let ours: Vec<(String, String)> = self
            .schema
            .as_struct()
            .fields()
            .iter()
            .map(|f| (f.name.clone(), f.field_type.to_string()))
            .collect();
        if theirs != ours {
            return Err(WeirError::user(format!(
                "iceberg table {} has columns {theirs:?}, and view '{}' has {ours:?}; sink \
                 into a new table, or change the table's schema to match",
                self.opts.table, self.view
            )));
        }
        let spec = md.default_partition_spec();
        let theirs: Vec<(String, String)> = spec
            .fields()
            .iter()
            .map(|f| (f.name.clone(), f.transform.to_string()))
            .collect();
        let wanted = layout::partition_spec(&self.partition)?;
        let ours: Vec<(String, String)> = wanted
            .fields()
            .iter()
            .map(|f| (f.name.clone(), f.transform.to_string()))
            .collect();
        if theirs != ours {
            return Err(WeirError::user(format!(
                "iceberg table {} is partitioned by {theirs:?}, and 'partition.by' asks for \
                 {ours:?}; sink into a new table, or match its partitioning",
                self.opts.table
            )));
        }
        let ids: HashMap<String, i32> = current
            .as_struct()
            .fields()
            .iter()
            .map(|f| (f.name.clone(), f.id))
            .collect();
        let required: Vec<bool> = current
            .as_struct()
            .fields()
            .iter()
            .map(|f| f.required)
            .collect();
        let layout = Layout::new(&self.view_schema, &ids, &required, self.partition.clone())?;
        Ok((layout, md.default_partition_spec_id()))
    }

    fn connected(&self) -> Result<&Connected> {
        self.table
            .as_ref()
            .ok_or_else(|| WeirError::Internal("iceberg sink used before connecting".into()))
    }

    /// Run `f` on the files on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Files) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        blocking(self.files.get_mut(), "iceberg sink", f).await
    }

    /// The newest epoch this sink committed to the table (0: none), from the summaries of
    /// the current snapshot and its ancestors.
    async fn committed_epoch(&self) -> Result<(iceberg::table::Table, u64)> {
        let c = self.connected()?;
        let table = c
            .catalog
            .load_table(&self.opts.table)
            .await
            .map_err(ice(format!(
                "iceberg sink '{}': loading {}",
                self.name, self.opts.table
            )))?;
        let md = table.metadata_ref();
        let in_summary = match md.current_snapshot() {
            None => 0,
            Some(s) => iceberg::util::snapshot::ancestors_of(&md, s.snapshot_id())
                .find_map(|s| {
                    let p = &s.summary().additional_properties;
                    if p.get(SINK_KEY) != Some(&self.name) {
                        return None;
                    }
                    p.get(EPOCH_KEY)?.parse::<u64>().ok()
                })
                .unwrap_or(0),
        };
        let in_properties = md
            .properties()
            .get(&epoch_property(&self.name))
            .and_then(|e| e.parse::<u64>().ok())
            .unwrap_or(0);
        Ok((table, in_summary.max(in_properties)))
    }

    /// Append `files` in one snapshot, recording `epoch` (if any) in its summary.
    async fn append(
        &self,
        table: iceberg::table::Table,
        files: Vec<WrittenFile>,
        epoch: Option<u64>,
    ) -> Result<()> {
        let c = self.connected()?;
        let mut data_files = Vec::with_capacity(files.len());
        let rows: u64 = files.iter().map(|f| f.rows).sum();
        for f in &files {
            let df = DataFileBuilder::default()
                .content(DataContentType::Data)
                .file_path(f.path.clone())
                .file_format(DataFileFormat::Parquet)
                .partition(layout::partition_struct(&f.partition))
                .partition_spec_id(c.spec_id)
                .record_count(f.rows)
                .file_size_in_bytes(f.bytes)
                .value_counts(f.stats.value_counts())
                .null_value_counts(f.stats.null_counts())
                .lower_bounds(f.stats.lower_bounds())
                .upper_bounds(f.stats.upper_bounds())
                .build()
                .map_err(|e| WeirError::Internal(format!("iceberg data file {}: {e}", f.path)))?;
            data_files.push(df);
        }
        let mut summary = HashMap::from([(SINK_KEY.to_string(), self.name.clone())]);
        if let Some(e) = epoch {
            summary.insert(EPOCH_KEY.to_string(), e.to_string());
        }
        let started = Instant::now();
        let tx = Transaction::new(&table);
        let tx = tx
            .fast_append()
            .add_data_files(data_files)
            .set_snapshot_properties(summary)
            // The epoch check does this job, without reading every manifest each time.
            .with_check_duplicate(false)
            .apply(tx)
            .map_err(ice(format!(
                "iceberg sink '{}': preparing a commit",
                self.name
            )))?;
        tx.commit(c.catalog.as_ref()).await.map_err(ice(format!(
            "iceberg sink '{}': committing to {}",
            self.name, self.opts.table
        )))?;
        tracing::debug!(
            sink = %self.name,
            table = %self.opts.table,
            epoch,
            files = files.len(),
            rows,
            ms = started.elapsed().as_millis() as u64,
            "iceberg snapshot committed"
        );
        self.expire(table).await
    }

    /// With `'snapshots.retain'`: expire all but the newest that many snapshots once there
    /// are a tenth more (so not at every commit), and delete their manifest lists. Nothing
    /// else becomes unreferenced: appends carry every earlier manifest and data file on.
    async fn expire(&self, table: iceberg::table::Table) -> Result<()> {
        let retain = self.opts.snapshots_retain;
        let count = table.metadata().snapshots().len();
        if retain == 0 || count < retain + retain / 10 + 1 {
            return Ok(());
        }
        let c = self.connected()?;
        let before: HashMap<i64, String> = table
            .metadata()
            .snapshots()
            .map(|s| (s.snapshot_id(), s.manifest_list().to_string()))
            .collect();
        let now = chrono::Utc::now().timestamp_millis();
        let tx = Transaction::new(&table);
        let tx = tx
            .expire_snapshots()
            .expire_older_than_ms(now)
            .retain_last(retain)
            .apply(tx)
            .map_err(ice(format!(
                "iceberg sink '{}': expiring snapshots",
                self.name
            )))?;
        let table = tx.commit(c.catalog.as_ref()).await.map_err(ice(format!(
            "iceberg sink '{}': expiring snapshots of {}",
            self.name, self.opts.table
        )))?;
        let kept: std::collections::HashSet<i64> = table
            .metadata()
            .snapshots()
            .map(|s| s.snapshot_id())
            .collect();
        let mut removed = 0;
        for (id, list) in before {
            if !kept.contains(&id) {
                table.file_io().delete(&list).await.map_err(ice(format!(
                    "iceberg sink '{}': deleting the manifest list {list}",
                    self.name
                )))?;
                removed += 1;
            }
        }
        tracing::debug!(sink = %self.name, expired = removed, kept = kept.len(), "iceberg snapshots expired");
        Ok(())
    }

    /// Delete this sink's data files of epochs after `epoch`: written after the restored
    /// checkpoint, never committed, recomputed now.
    async fn remove_uncommitted(&self, epoch: u64) -> Result<usize> {
        let c = self.connected()?;
        let dir = c.data_dir.clone();
        let prefix = format!("{}-e", file_stem(&self.name));
        let later = |name: &str| {
            name.strip_prefix(&prefix)
                .and_then(|r| r.split('-').next())
                .and_then(|e| e.parse::<u64>().ok())
                .is_some_and(|e| e > epoch)
        };
        if let Some(remote) = &c.remote {
            let mut removed = 0;
            for (key, _) in remote.list("").await? {
                if later(key.rsplit('/').next().unwrap_or_default()) {
                    remote.delete(&key).await?;
                    removed += 1;
                }
            }
            // Whatever is staged locally never got into a checkpoint.
            let staged = weir_engine::fsutil::files_below(&dir)?;
            for rel in &staged {
                weir_engine::fsutil::remove_file(&dir.join(rel))?;
            }
            return Ok(removed + staged.len());
        }
        weir_engine::fsutil::run_blocking("iceberg sink cleanup", move || -> Result<usize> {
            let mut removed = 0;
            for rel in weir_engine::fsutil::files_below(&dir)? {
                let Some(name) = rel.file_name().map(|n| n.to_string_lossy().to_string()) else {
                    continue;
                };
                let tagged = name
                    .strip_prefix(&prefix)
                    .and_then(|r| r.split('-').next())
                    .and_then(|e| e.parse::<u64>().ok());
                if tagged.is_some_and(|e| e > epoch) {
                    weir_engine::fsutil::remove_file(&dir.join(rel))?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await?
    }

    /// Close every open file (synced) and take the closed ones, uploaded to the table's
    /// location if that is in an object store.
    async fn close_files(&mut self) -> Result<Vec<WrittenFile>> {
        let closed = self
            .blocking(|f| {
                f.close_all()?;
                Ok(std::mem::take(&mut f.closed))
            })
            .await?;
        self.upload(closed).await
    }

    /// With an object-store warehouse: put each file at its place under the table's
    /// `data/` (invisible until a snapshot lists it) and remove the local copy.
    async fn upload(&self, files: Vec<WrittenFile>) -> Result<Vec<WrittenFile>> {
        let c = self.connected()?;
        let Some(remote) = &c.remote else {
            return Ok(files);
        };
        let mut out = Vec::with_capacity(files.len());
        for mut f in files {
            let local = PathBuf::from(&f.path);
            let rel = local
                .strip_prefix(&c.data_dir)
                .map_err(|_| WeirError::Internal(format!("{} is not staged", f.path)))?
                .iter()
                .map(|p| p.to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            let bytes = tokio::fs::read(&local)
                .await
                .map_err(|e| io_error("reading", &local, e))?;
            remote.put_at(&rel, bytes).await?;
            weir_engine::fsutil::remove_file(&local)?;
            f.path = format!("{}/{rel}", remote.url().trim_end_matches('/'));
            out.push(f);
        }
        Ok(out)
    }
}

#[async_trait]
impl Sink for IcebergSink {
    async fn recover(&mut self, restored: Option<(u64, SinkCheckpoint)>) -> Result<()> {
        self.connect().await?;
        if !self.checkpointed {
            return Ok(());
        }
        let (epoch, pending) = match &restored {
            Some((epoch, cp)) => {
                let pending: Vec<WrittenFile> = match cp.get("files") {
                    Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                        WeirError::external(format!(
                            "iceberg sink '{}': the checkpoint's file list is unreadable: {e}",
                            self.name
                        ))
                    })?,
                    None => Vec::new(),
                };
                (*epoch, pending)
            }
            None => (0, Vec::new()),
        };
        let (table, committed) = self.committed_epoch().await?;
        if committed > epoch {
            return Err(WeirError::user(format!(
                "iceberg table {} already has this sink's snapshots up to checkpoint epoch \
                 {committed}, but the checkpoint restored is {}: the checkpoints do not belong \
                 to what wrote the table (removed, or another pipeline's). Committing now would \
                 skip or repeat rows; sink into a new table, or restore the matching checkpoints",
                self.opts.table,
                if epoch == 0 {
                    "none".to_string()
                } else {
                    epoch.to_string()
                }
            )));
        }
        if committed < epoch && !pending.is_empty() {
            tracing::info!(
                sink = %self.name,
                epoch,
                files = pending.len(),
                "committing the iceberg files the checkpoint had staged"
            );
            self.append(table, pending, Some(epoch)).await?;
        }
        let removed = self.remove_uncommitted(epoch).await?;
        if removed > 0 {
            tracing::info!(
                sink = %self.name,
                files = removed,
                "removed iceberg data files written after the last checkpoint (they are recomputed)"
            );
        }
        self.epoch = epoch + 1;
        self.pending.clear();
        Ok(())
    }

    async fn write(&mut self, batch: RecordBatch, _ids: RowIds) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.connect().await?;
        let c = self.connected()?;
        let parts = c.layout.split(&batch)?;
        let ctx = WriteContext {
            data_dir: c.data_dir.clone(),
            ids: c.layout.ids.clone(),
            partition: self.partition.clone(),
            stem: file_stem(&self.name),
            run: self.run.clone(),
            epoch: self.epoch,
            rollover_rows: self.opts.rollover_rows,
        };
        self.blocking(move |f| f.write(parts, &ctx)).await
    }

    /// Without checkpoints: commit files open for `rollover.interval`.
    async fn flush(&mut self) -> Result<()> {
        if self.checkpointed || self.table.is_none() {
            return Ok(());
        }
        let age = self.opts.rollover_interval;
        let closed = self
            .blocking(move |f| {
                f.close_older_than(age)?;
                Ok(std::mem::take(&mut f.closed))
            })
            .await?;
        let closed = self.upload(closed).await?;
        if !closed.is_empty() {
            let (table, _) = self.committed_epoch().await?;
            self.append(table, closed, None).await?;
        }
        Ok(())
    }

    async fn precommit(&mut self, epoch: u64) -> Result<SinkCheckpoint> {
        let closed = self.close_files().await?;
        let bytes: u64 = closed.iter().map(|f| f.bytes).sum();
        weir_engine::stats::Stats::add(&self.stats.bytes, bytes);
        self.pending.entry(epoch).or_default().extend(closed);
        self.epoch = epoch + 1;
        let all: Vec<&WrittenFile> = self.pending.values().flatten().collect();
        Ok(serde_json::json!({ "files": all }))
    }

    async fn commit(&mut self, epoch: u64) -> Result<()> {
        let later = self.pending.split_off(&(epoch + 1));
        let due: Vec<WrittenFile> = std::mem::replace(&mut self.pending, later)
            .into_values()
            .flatten()
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let (table, committed) = self.committed_epoch().await?;
        if committed >= epoch {
            tracing::warn!(sink = %self.name, epoch, committed, "iceberg epoch already committed; not again");
            return Ok(());
        }
        self.append(table, due, Some(epoch)).await
    }

    async fn close(&mut self) -> Result<()> {
        if self.table.is_none() {
            return Ok(());
        }
        let closed = self.close_files().await?;
        if self.checkpointed {
            // Rows after the last checkpoint: the next run recomputes them (and removes
            // these files).
            return Ok(());
        }
        if !closed.is_empty() {
            let (table, _) = self.committed_epoch().await?;
            self.append(table, closed, None).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
