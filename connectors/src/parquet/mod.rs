//! The `parquet` sink: a view's output as rolling Parquet files, optionally in Hive-style
//! date folders.
//!
//! ```sql
//! CREATE SINK lake FROM region_health WITH (connector = 'parquet',
//!     path = 'data/lake/region_health', 'partition.by' = 'day',
//!     'rollover.rows' = '1000000', 'rollover.interval' = '1m', compression = 'zstd');
//! ```
//!
//! Files are named `part-<unix-millis>-<seq>.parquet`. A file being written is the hidden
//! `.part-<unix-millis>-<seq>.parquet.inprogress` in the same folder, renamed into place
//! (after its footer is written and it is synced) when it rolls over (by rows or by age), on
//! `flush()` and on `close()`, so readers (and the `file` source, which skips hidden files)
//! never see a partial file.
//!
//! `partition.by = 'day'` writes to `dt=YYYY-MM-DD/`, `'hour'` to `dt=YYYY-MM-DD/hr=HH/`,
//! from the `window_start` column if there is one, else the first timestamp column (UTC).
//! Rows whose partition time is null go to `dt=__HIVE_DEFAULT_PARTITION__/`.
//!
//! Writes run under `spawn_blocking`, so the async runtime never waits on the disk.
//!
//! With checkpoints on (`weir run`), a finished file is not published at once: it is
//! synced and staged as the hidden `.part-...parquet.pending`, and the checkpoint's
//! pre-commit finishes every open file and records the pending ones. Only when the
//! checkpoint is complete are they renamed into place, so readers never see rows a crash
//! could take back. After a crash, `recover` publishes the files the last complete
//! checkpoint recorded (if the commit had not got to them) and deletes every other hidden
//! file: rows after the checkpoint are recomputed from the sources' replay, so nothing is
//! lost and nothing appears twice. Each sink needs a `path` of its own. The protocol is
//! the engine's [`StagedFiles`].
//!
//! An updating view (an aggregate without a window: its rows change and go away) cannot
//! be shown by files that are only appended to, and is refused unless `'changelog' =
//! 'true'`: then every change is a row, the view's columns followed by [`OP_COLUMN`]
//! (`insert` or `delete`; an update is the old row deleted and the new one inserted), in
//! the order the view made them. One file is open at a time (`partition.by` is refused:
//! a key's changes could land in several folders), so a file's name orders it: sorted by
//! the two numbers of `part-<unix-millis>-<seq>`, files and the rows in them are the
//! changelog in order, and a view's current rows are the last change per key, where it is
//! an insert.

use crate::util::io_error;
use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, UInt32Array};
use datafusion::arrow::compute::{cast, take_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampMillisecondType};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, GzipLevel, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use weir_engine::changelog;
use weir_engine::connector::{RowIds, Sink, SinkCheckpoint, SinkFactory, SinkSpec};
use weir_engine::fsutil::{Staged, StagedFiles, blocking};
use weir_engine::remote::PendingUpload;
use weir_engine::{Result, WeirError};

pub const VALID_KEYS: &[&str] = &[
    "path",
    "storage.<object_store S3 key>",
    "partition.by",
    "rollover.rows",
    "rollover.interval",
    "compression",
    "changelog",
];

/// The column `'changelog' = 'true'` adds: each change's kind, `insert` or `delete`.
pub const OP_COLUMN: &str = "op";

/// The `compression` values. zstd is the default: DataFusion's parquet build includes it,
/// and it compresses analytics output well at a low CPU cost.
pub const COMPRESSIONS: &[&str] = &["zstd", "snappy", "lz4", "gzip", "none"];

const NULL_PARTITION: &str = "dt=__HIVE_DEFAULT_PARTITION__";
const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

/// How output is split into folders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionBy {
    None,
    /// `dt=YYYY-MM-DD/` from the column at this index.
    Day(usize),
    /// `dt=YYYY-MM-DD/hr=HH/` from the column at this index.
    Hour(usize),
}

/// The parsed options.
#[derive(Debug, Clone)]
pub struct ParquetSinkOptions {
    /// The local directory files are written in: `path`, or for an object-store `path`
    /// the sink's outbox (see [`crate::objects`]).
    pub path: PathBuf,
    /// An object-store `path` (`s3://bucket/prefix`), where published files go.
    pub remote: Option<weir_engine::remote::Remote>,
    pub partition_by: PartitionBy,
    pub rollover_rows: usize,
    pub rollover_interval: Duration,
    pub compression: Compression,
    /// `'changelog' = 'true'`: an updating view's changes, one row each with [`OP_COLUMN`].
    pub changelog: bool,
}

impl ParquetSinkOptions {
    pub fn parse(options: &mut weir_engine::options::Options, schema: &SchemaRef) -> Result<Self> {
        let path = options.take("path").ok_or_else(|| {
            WeirError::user(
                "the parquet sink needs option 'path' (a directory, or s3://bucket/prefix)",
            )
        })?;
        let storage = options.take_prefixed(weir_engine::remote::STORAGE_PREFIX);
        let remote = if weir_engine::remote::is_url(&path) {
            Some(weir_engine::remote::Remote::new(&path, &storage)?)
        } else if !storage.is_empty() {
            return Err(WeirError::user(
                "'storage.*' options are for an object-store path (s3://bucket/prefix)",
            ));
        } else {
            None
        };
        let partition = options.take_choice("partition.by", &["none", "day", "hour"], "none")?;
        let partition_by = match partition.as_str() {
            "none" => PartitionBy::None,
            by => {
                let col = partition_column(schema)?;
                if by == "day" {
                    PartitionBy::Day(col)
                } else {
                    PartitionBy::Hour(col)
                }
            }
        };
        let rollover_rows = options
            .take_parse::<usize>("rollover.rows")?
            .unwrap_or(1_000_000);
        if rollover_rows == 0 {
            return Err(WeirError::user("option 'rollover.rows' must be at least 1"));
        }
        let rollover_interval = options
            .take_duration("rollover.interval")?
            .unwrap_or(Duration::from_secs(60));
        let compression = match options
            .take_choice("compression", COMPRESSIONS, "zstd")?
            .as_str()
        {
            "snappy" => Compression::SNAPPY,
            "lz4" => Compression::LZ4_RAW,
            "gzip" => Compression::GZIP(GzipLevel::default()),
            "none" => Compression::UNCOMPRESSED,
            _ => Compression::ZSTD(ZstdLevel::default()),
        };
        let changelog = options.take_choice("changelog", &["true", "false"], "false")? == "true";
        Ok(ParquetSinkOptions {
            path: PathBuf::from(path),
            remote,
            partition_by,
            rollover_rows,
            rollover_interval,
            compression,
            changelog,
        })
    }
}

/// `window_start` if present, else the first timestamp column.
fn partition_column(schema: &SchemaRef) -> Result<usize> {
    if let Ok(i) = schema.index_of("window_start") {
        return match schema.field(i).data_type() {
            DataType::Timestamp(_, _) => Ok(i),
            other => Err(WeirError::user(format!(
                "option 'partition.by' uses column 'window_start', but it is {other}, not a timestamp"
            ))),
        };
    }
    schema
        .fields()
        .iter()
        .position(|f| matches!(f.data_type(), DataType::Timestamp(_, _)))
        .ok_or_else(|| {
            WeirError::user(
                "option 'partition.by' needs a timestamp column (window_start or any TIMESTAMP), \
                 and the view has none",
            )
        })
}

pub struct ParquetSinkFactory;

impl SinkFactory for ParquetSinkFactory {
    fn name(&self) -> &'static str {
        "parquet"
    }

    fn create(&self, spec: SinkSpec) -> Result<Box<dyn Sink>> {
        let mut options = spec.options.clone();
        let mut opts = ParquetSinkOptions::parse(&mut options, &spec.schema)?;
        options.finish("the parquet sink", VALID_KEYS)?;
        if opts.remote.is_some() {
            opts.path = spec.data_dir.join("outbox").join(&spec.name);
        }
        let schema = file_schema(&spec, &opts)?;
        // Fail now, not at the first write, if the schema cannot be written as Parquet.
        datafusion::parquet::arrow::ArrowSchemaConverter::new()
            .convert(&schema)
            .map_err(|e| {
                WeirError::user(format!(
                    "view '{}' cannot be written as Parquet: {e}",
                    spec.view
                ))
            })?;
        Ok(Box::new(ParquetSink::new(schema, opts, spec.checkpointed)))
    }
}

/// The files' schema: the view's, with [`OP_COLUMN`] last for a changelog. An updating view
/// needs `'changelog' = 'true'`, and only an updating view takes it.
fn file_schema(spec: &SinkSpec, opts: &ParquetSinkOptions) -> Result<SchemaRef> {
    let view = &spec.view;
    match (spec.changelog, opts.changelog) {
        (false, false) => Ok(spec.schema.clone()),
        (true, false) => Err(WeirError::user(format!(
            "view '{view}' is an updating view (an aggregate without a window): its rows \
             change and go away, which Parquet files, only ever appended to, cannot show; set \
             'changelog' = 'true' to write every change as a row with a column '{OP_COLUMN}' \
             ('insert' or 'delete')"
        ))),
        (false, true) => Err(WeirError::user(format!(
            "option 'changelog' is for updating views (aggregates without a window), and view \
             '{view}' is not one: its rows never change; leave 'changelog' out"
        ))),
        (true, true) => {
            if spec.schema.field_with_name(OP_COLUMN).is_ok() {
                return Err(WeirError::user(format!(
                    "view '{view}' has a column named {OP_COLUMN}, which 'changelog' = 'true' \
                     adds; rename it in the view"
                )));
            }
            if opts.partition_by != PartitionBy::None {
                return Err(WeirError::user(
                    "option 'partition.by' cannot be used with 'changelog' = 'true': a key's \
                     changes must stay in one sequence of files, in order",
                ));
            }
            let empty = RecordBatch::new_empty(changelog::with_op(&spec.schema));
            Ok(changelog::with_op_names(&empty, OP_COLUMN)?.schema())
        }
    }
}

/// Writes rolling Parquet files under one directory.
pub struct ParquetSink {
    /// Moved into the blocking task during a write and back out after.
    state: Option<Writers>,
    /// With an object-store path in a checkpointed pipeline: the uploads staged for files
    /// not committed yet, by the file's local staged path (`weir_engine::remote`).
    uploads: BTreeMap<PathBuf, PendingUpload>,
}

impl ParquetSink {
    /// `checkpointed`: publish files only when a checkpoint commits (see the module docs).
    pub fn new(schema: SchemaRef, opts: ParquetSinkOptions, checkpointed: bool) -> Self {
        let props = WriterProperties::builder()
            .set_compression(opts.compression)
            .build();
        ParquetSink {
            uploads: BTreeMap::new(),
            state: Some(Writers {
                schema,
                props,
                files: StagedFiles::new(&opts.path, is_hidden),
                opts,
                open: BTreeMap::new(),
                seq: 0,
                files_written: Vec::new(),
                checkpointed,
            }),
        }
    }

    /// Cluster mode: a sink like this one for key partition `kp` of the view, writing
    /// under `<path>/kp=<kp>/` with its files published only when the member commits
    /// (docs/cluster.md, "Parquet"), so each key partition's files are its own and its
    /// new owner's recovery touches no other partition's.
    pub(crate) fn for_key_partition(&self, kp: u32) -> Result<ParquetSink> {
        let w = self
            .state
            .as_ref()
            .ok_or_else(|| WeirError::Internal("parquet sink busy".into()))?;
        let mut opts = w.opts.clone();
        opts.path = opts.path.join(format!("kp={kp}"));
        opts.remote = opts.remote.map(|r| r.join(&format!("kp={kp}")));
        Ok(ParquetSink::new(w.schema.clone(), opts, true))
    }

    /// The files this sink has moved into place so far.
    pub fn files_written(&self) -> &[PathBuf] {
        self.state
            .as_ref()
            .map_or(&[], |w| w.files_written.as_slice())
    }

    /// Run `f` on the writers on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Writers) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        blocking(&mut self.state, "parquet sink", f).await
    }

    /// With an object-store path in a checkpointed pipeline: stage an upload of every file
    /// `listed` (what a pre-commit returned) that has none yet, and add them to the
    /// checkpoint (`"uploads"`), so the commit, or a restart anywhere, can complete them.
    async fn stage_uploads(&mut self, checkpoint: &mut SinkCheckpoint) -> Result<()> {
        let Some(w) = &self.state else {
            return Err(WeirError::Internal("parquet sink busy".into()));
        };
        let Some(remote) = w.opts.remote.clone() else {
            return Ok(());
        };
        let outbox = w.opts.path.clone();
        let listed = checkpoint
            .get("files")
            .and_then(Staged::list_from_json)
            .unwrap_or_default();
        let mut recorded = Vec::new();
        for f in listed {
            let Some(to) = &f.publish_to else { continue };
            if !self.uploads.contains_key(&f.path) {
                let relative = relative_key(&outbox, to)?;
                let bytes = tokio::fs::read(&f.path)
                    .await
                    .map_err(|e| weir_engine::fsutil::io_error("reading", &f.path, e))?;
                let upload = remote.stage(&relative, bytes).await?;
                self.uploads.insert(f.path.clone(), upload);
                // At once, so a failure staging the next file leaves this one journaled.
                self.write_journal(&outbox)?;
            }
            if let Some(upload) = self.uploads.get(&f.path) {
                recorded.push(StagedUpload {
                    file: f.path.clone(),
                    upload: upload.clone(),
                });
            }
        }
        checkpoint["uploads"] = serde_json::to_value(recorded)
            .map_err(|e| WeirError::Internal(format!("parquet sink checkpoint: {e}")))?;
        Ok(())
    }

    /// Record the uploads staged and not completed in `<outbox>/.part-uploads.pending`
    /// (a hidden name, never shipped), so that a restart on this machine can abandon those
    /// its checkpoint does not list: uploads for a checkpoint that never completed.
    fn write_journal(&self, outbox: &Path) -> Result<()> {
        let uploads: Vec<&PendingUpload> = self.uploads.values().collect();
        let text = serde_json::to_vec(&uploads)
            .map_err(|e| WeirError::Internal(format!("parquet upload journal: {e}")))?;
        std::fs::create_dir_all(outbox)
            .map_err(|e| weir_engine::fsutil::io_error("creating", outbox, e))?;
        let tmp = outbox.join(".part-uploads-next.pending");
        let path = outbox.join(UPLOAD_JOURNAL);
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| weir_engine::fsutil::io_error("writing", &path, e))
    }

    /// Complete the staged uploads of `published` (files a commit just moved into the
    /// outbox) and remove the local copies.
    async fn complete_uploads(&mut self, published: Vec<Staged>) -> Result<()> {
        let Some(remote) = self.state.as_ref().and_then(|w| w.opts.remote.clone()) else {
            return Ok(());
        };
        let mut completed = 0;
        for f in published {
            if let Some(upload) = self.uploads.remove(&f.path) {
                remote.complete(&upload).await?;
                if let Some(local) = &f.publish_to {
                    weir_engine::fsutil::remove_file(local)?;
                }
                completed += 1;
            }
        }
        if completed > 0
            && let Some(w) = &self.state
        {
            self.write_journal(&w.opts.path)?;
        }
        Ok(())
    }

    /// After a restart with an object-store path: complete the uploads the restored
    /// checkpoint recorded (on this machine or the one before it), and drop the local
    /// staged copies of those files.
    async fn recover_uploads(&mut self, restored: Option<&SinkCheckpoint>) -> Result<()> {
        self.uploads.clear();
        let Some(w) = &self.state else {
            return Err(WeirError::Internal("parquet sink busy".into()));
        };
        let Some(remote) = w.opts.remote.clone() else {
            return Ok(());
        };
        // Uploads this machine staged: those the restored checkpoint does not list were
        // for a checkpoint that never completed. (The journal itself is a hidden file,
        // removed with the others by the local recovery.)
        let journal = w.opts.path.join(UPLOAD_JOURNAL);
        let staged: Vec<PendingUpload> = match std::fs::read(&journal) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                // Only cleanup is lost: the uploads stay invisible either way.
                tracing::warn!(path = %journal.display(), error = %e, "unreadable upload journal");
                Vec::new()
            }),
            Err(_) => Vec::new(),
        };
        // What the restored checkpoint recorded, read once: an unreadable list is an
        // error before anything is abandoned.
        let uploads: Vec<StagedUpload> = match restored.and_then(|cp| cp.get("uploads")) {
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                WeirError::external(format!("parquet sink checkpoint: bad uploads: {e}"))
            })?,
            None => Vec::new(),
        };
        let listed_ids: std::collections::HashSet<&str> =
            uploads.iter().map(|u| u.upload.id.as_str()).collect();
        let mut abandoned = 0;
        for u in staged
            .iter()
            .filter(|u| !listed_ids.contains(u.id.as_str()))
        {
            remote.abort(u).await?;
            abandoned += 1;
        }
        if abandoned > 0 {
            tracing::info!(
                url = %remote.url(),
                uploads = abandoned,
                "abandoned parquet uploads staged for a checkpoint that never completed"
            );
        }
        for u in &uploads {
            remote.complete(&u.upload).await?;
            // The upload stands for the staged file: publishing it locally too would
            // upload it again. (On another machine the file is not there at all.)
            weir_engine::fsutil::remove_file(&u.file)?;
        }
        if !uploads.is_empty() {
            tracing::info!(
                url = %remote.url(),
                files = uploads.len(),
                "completed parquet uploads the checkpoint had staged"
            );
        }
        Ok(())
    }

    /// With an object-store path: upload the files published into the outbox.
    async fn ship(&mut self) -> Result<()> {
        let Some(w) = &self.state else {
            return Err(WeirError::Internal("parquet sink busy".into()));
        };
        if let Some(remote) = w.opts.remote.clone() {
            let outbox = w.opts.path.clone();
            let n = remote.ship(&outbox, is_hidden).await?;
            if n > 0 {
                tracing::debug!(url = %remote.url(), files = n, "parquet files uploaded");
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for ParquetSink {
    fn as_any_mut(&mut self) -> Option<&mut (dyn std::any::Any + Send)> {
        Some(self)
    }

    async fn write(&mut self, batch: RecordBatch, _ids: RowIds) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let published = self.blocking(move |w| w.write(&batch)).await?;
        if published {
            self.ship().await?;
        }
        Ok(())
    }

    /// Called on the runtime's flush timer: publish files that have been open for
    /// `rollover.interval`, so time-based rollover happens even when writes pause. Closing
    /// every file on each flush would make one small file per second.
    async fn flush(&mut self) -> Result<()> {
        self.blocking(|w| w.roll_old()).await?;
        self.ship().await
    }

    async fn close(&mut self) -> Result<()> {
        self.blocking(|w| w.roll_all()).await?;
        self.ship().await
    }

    async fn recover(&mut self, restored: Option<(u64, SinkCheckpoint)>) -> Result<()> {
        self.recover_uploads(restored.as_ref().map(|(_, cp)| cp))
            .await?;
        self.blocking(move |w| w.recover(restored)).await?;
        self.ship().await
    }

    async fn precommit(&mut self, epoch: u64) -> Result<SinkCheckpoint> {
        let mut checkpoint = self.blocking(move |w| w.precommit(epoch)).await?;
        self.stage_uploads(&mut checkpoint).await?;
        Ok(checkpoint)
    }

    async fn commit(&mut self, epoch: u64) -> Result<()> {
        let published = self.blocking(move |w| w.commit(epoch)).await?;
        self.complete_uploads(published).await?;
        self.ship().await
    }
}

/// The open files, one per partition folder.
struct Writers {
    schema: SchemaRef,
    props: WriterProperties,
    opts: ParquetSinkOptions,
    /// Keyed by folder relative to the sink's path ("" without partitioning).
    open: BTreeMap<String, OpenFile>,
    seq: u64,
    files_written: Vec<PathBuf>,
    /// Publish only on checkpoint commit.
    checkpointed: bool,
    /// Finished files waiting for their checkpoint (checkpointed only).
    files: StagedFiles,
}

struct OpenFile {
    writer: ArrowWriter<File>,
    tmp_path: PathBuf,
    final_path: PathBuf,
    rows: usize,
    opened: Instant,
}

impl Writers {
    /// Write `batch`; returns whether a file was published (moved into place) meanwhile.
    fn write(&mut self, batch: &RecordBatch) -> Result<bool> {
        let before = self.files_written.len();
        // Roll stale files first, so a file holds at most `rollover.interval` of output.
        self.roll_old()?;
        if self.opts.changelog {
            let named = changelog::with_op_names(batch, OP_COLUMN)?;
            let rows = RecordBatch::try_new(self.schema.clone(), named.columns().to_vec())?;
            self.write_to(String::new(), &rows)?;
        } else {
            for (folder, part) in self.split(batch)? {
                self.write_to(folder, &part)?;
            }
        }
        Ok(self.files_written.len() > before)
    }

    /// The batch's rows grouped by partition folder.
    fn split(&self, batch: &RecordBatch) -> Result<Vec<(String, RecordBatch)>> {
        let (col, unit_ms) = match self.opts.partition_by {
            PartitionBy::None => return Ok(vec![(String::new(), batch.clone())]),
            PartitionBy::Day(c) => (c, DAY_MS),
            PartitionBy::Hour(c) => (c, HOUR_MS),
        };
        let millis = cast(
            batch.column(col),
            &DataType::Timestamp(TimeUnit::Millisecond, None),
        )?;
        let millis = millis.as_primitive::<TimestampMillisecondType>();
        let key = |i: usize| (!millis.is_null(i)).then(|| millis.value(i).div_euclid(unit_ms));
        let first = key(0);
        if (1..batch.num_rows()).all(|i| key(i) == first) {
            return Ok(vec![(folder_name(first, unit_ms), batch.clone())]);
        }
        let mut groups: BTreeMap<Option<i64>, Vec<u32>> = BTreeMap::new();
        for i in 0..batch.num_rows() {
            groups.entry(key(i)).or_default().push(i as u32);
        }
        groups
            .into_iter()
            .map(|(k, rows)| {
                let part = take_record_batch(batch, &UInt32Array::from(rows))?;
                Ok((folder_name(k, unit_ms), part))
            })
            .collect()
    }

    fn write_to(&mut self, folder: String, batch: &RecordBatch) -> Result<()> {
        let file = match self.open.get_mut(&folder) {
            Some(f) => f,
            None => {
                let f = self.open_file(&folder)?;
                self.open.entry(folder.clone()).or_insert(f)
            }
        };
        file.writer.write(batch).map_err(|e| {
            WeirError::external_source(format!("writing {}", file.tmp_path.display()), e)
        })?;
        file.rows += batch.num_rows();
        if file.rows >= self.opts.rollover_rows {
            self.roll(&folder)?;
        }
        Ok(())
    }

    fn open_file(&mut self, folder: &str) -> Result<OpenFile> {
        let dir = self.opts.path.join(folder);
        std::fs::create_dir_all(&dir).map_err(|e| io_error("creating directory", &dir, e))?;
        let millis = chrono::Utc::now().timestamp_millis();
        let name = format!("part-{millis}-{}.parquet", self.seq);
        self.seq += 1;
        let tmp_path = dir.join(format!(".{name}.inprogress"));
        let final_path = dir.join(name);
        let file = File::create(&tmp_path).map_err(|e| io_error("creating", &tmp_path, e))?;
        let writer = ArrowWriter::try_new(file, self.schema.clone(), Some(self.props.clone()))
            .map_err(|e| {
                WeirError::external_source(format!("creating {}", tmp_path.display()), e)
            })?;
        Ok(OpenFile {
            writer,
            tmp_path,
            final_path,
            rows: 0,
            opened: Instant::now(),
        })
    }

    /// Finish one folder's file and move it into place.
    fn roll(&mut self, folder: &str) -> Result<()> {
        let Some(file) = self.open.remove(folder) else {
            return Ok(());
        };
        let OpenFile {
            writer,
            tmp_path,
            final_path,
            rows,
            ..
        } = file;
        let inner = writer.into_inner().map_err(|e| {
            WeirError::external_source(format!("finishing {}", tmp_path.display()), e)
        })?;
        if rows == 0 {
            drop(inner);
            return std::fs::remove_file(&tmp_path).map_err(|e| io_error("removing", &tmp_path, e));
        }
        if self.checkpointed {
            let pending = pending_path(&final_path);
            tracing::debug!(file = %pending.display(), rows, "parquet file staged");
            let staged = Staged {
                path: pending,
                publish_to: Some(final_path),
            };
            return self.files.stage(inner, &tmp_path, staged);
        }
        inner
            .sync_all()
            .map_err(|e| io_error("syncing", &tmp_path, e))?;
        drop(inner);
        std::fs::rename(&tmp_path, &final_path).map_err(|e| io_error("renaming", &tmp_path, e))?;
        tracing::debug!(file = %final_path.display(), rows, "parquet file written");
        self.files_written.push(final_path);
        Ok(())
    }

    /// Finish every open file and record what this checkpoint publishes:
    /// `{"files": [[pending, final], ...]}`, every file not committed yet.
    fn precommit(&mut self, epoch: u64) -> Result<SinkCheckpoint> {
        self.roll_all()?;
        let listed = self.files.precommit(epoch)?;
        Ok(serde_json::json!({ "files": Staged::list_to_json(&listed) }))
    }

    /// Publish the files of every pre-committed epoch up to `epoch`.
    fn commit(&mut self, epoch: u64) -> Result<Vec<Staged>> {
        let published = self.files.commit(epoch)?;
        for f in &published {
            self.files_written.extend(f.publish_to.clone());
        }
        Ok(published)
    }

    /// After a restart: publish what the restored checkpoint recorded, remove every other
    /// hidden file under the path (left by a run that did not reach its checkpoint).
    fn recover(&mut self, restored: Option<(u64, SinkCheckpoint)>) -> Result<()> {
        if !self.checkpointed {
            return Ok(());
        }
        let (epoch, listed) = match &restored {
            Some((epoch, v)) => (
                Some(*epoch),
                v.get("files")
                    .and_then(Staged::list_from_json)
                    .unwrap_or_default(),
            ),
            None => (None, Vec::new()),
        };
        let r = self.files.recover(&listed)?;
        if !r.published.is_empty() {
            tracing::info!(
                epoch,
                files = r.published.len(),
                "published parquet files the checkpoint had staged"
            );
        }
        if r.removed > 0 {
            tracing::info!(
                path = %self.opts.path.display(),
                files = r.removed,
                "removed parquet files written after the last checkpoint (they are recomputed)"
            );
        }
        Ok(())
    }

    /// Roll files older than `rollover.interval`.
    fn roll_old(&mut self) -> Result<()> {
        let interval = self.opts.rollover_interval;
        let old: Vec<String> = self
            .open
            .iter()
            .filter(|(_, f)| f.opened.elapsed() >= interval)
            .map(|(k, _)| k.clone())
            .collect();
        for folder in old {
            self.roll(&folder)?;
        }
        Ok(())
    }

    fn roll_all(&mut self) -> Result<()> {
        let folders: Vec<String> = self.open.keys().cloned().collect();
        for folder in folders {
            self.roll(&folder)?;
        }
        Ok(())
    }
}

/// `.part-X.parquet.pending` next to `part-X.parquet`.
fn pending_path(final_path: &std::path::Path) -> PathBuf {
    let name = final_path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    final_path.with_file_name(format!(".{name}.pending"))
}

/// The sink's hidden files: in progress (`.part-X.parquet.inprogress`) and staged
/// (`.part-X.parquet.pending`).
/// The file (under the outbox) listing the uploads staged and not completed.
const UPLOAD_JOURNAL: &str = ".part-uploads.pending";

/// An upload staged for a file, as a checkpoint records it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StagedUpload {
    /// The staged file (local path) it stands for.
    file: PathBuf,
    upload: PendingUpload,
}

/// The object-store path of `file` (under the outbox): its path relative to `outbox`.
fn relative_key(outbox: &Path, file: &Path) -> Result<String> {
    let rel = file.strip_prefix(outbox).map_err(|_| {
        WeirError::Internal(format!(
            "parquet file {} is not under the outbox {}",
            file.display(),
            outbox.display()
        ))
    })?;
    Ok(rel
        .iter()
        .map(|p| p.to_string_lossy())
        .collect::<Vec<_>>()
        .join("/"))
}

fn is_hidden(name: &str) -> bool {
    name.starts_with(".part-") && (name.ends_with(".inprogress") || name.ends_with(".pending"))
}

/// `dt=YYYY-MM-DD` or `dt=YYYY-MM-DD/hr=HH` for a day or hour number since the epoch.
fn folder_name(key: Option<i64>, unit_ms: i64) -> String {
    let Some(key) = key else {
        return NULL_PARTITION.to_string();
    };
    let Some(t) = chrono::DateTime::from_timestamp_millis(key.saturating_mul(unit_ms)) else {
        return NULL_PARTITION.to_string();
    };
    if unit_ms == DAY_MS {
        t.format("dt=%Y-%m-%d").to_string()
    } else {
        t.format("dt=%Y-%m-%d/hr=%H").to_string()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::compute::SortColumn;
    use datafusion::arrow::compute::{concat_batches, lexsort_to_indices, take_record_batch};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use std::path::Path;
    use std::sync::Arc;
    use weir_engine::options::Options;

    const DAY1: i64 = 1_704_067_200_000; // 2024-01-01T00:00:00Z

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new(
                "window_start",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("region", DataType::Utf8, false),
            Field::new("downloads", DataType::Int64, false),
        ]))
    }

    fn batch(rows: &[(i64, &str, i64)]) -> RecordBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(TimestampMillisecondArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
        ];
        RecordBatch::try_new(schema(), columns).unwrap()
    }

    fn spec(schema: SchemaRef, options: &[(&str, &str)]) -> SinkSpec {
        SinkSpec {
            name: "lake".into(),
            view: "region_health".into(),
            schema,
            key_columns: vec!["window_start".into(), "region".into()],
            never_null: vec![],
            changelog: false,
            options: Options::new(options.iter().map(|(k, v)| (k.to_string(), v.to_string()))),
            data_dir: std::env::temp_dir(),
            stats: Default::default(),
            checkpointed: false,
        }
    }

    /// Every file under `dir`, relative, sorted.
    fn files(dir: &Path) -> Vec<String> {
        weir_engine::fsutil::files_below(dir)
            .unwrap()
            .iter()
            .map(|p| p.display().to_string())
            .collect()
    }

    fn read_all(dir: &Path) -> RecordBatch {
        let mut batches = Vec::new();
        for f in files(dir) {
            let file = std::fs::File::open(dir.join(&f)).unwrap();
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .unwrap()
                .build()
                .unwrap();
            for b in reader {
                batches.push(b.unwrap());
            }
        }
        let all = concat_batches(&schema(), &batches).unwrap();
        let sort: Vec<SortColumn> = (0..2)
            .map(|i| SortColumn {
                values: all.column(i).clone(),
                options: None,
            })
            .collect();
        let idx = lexsort_to_indices(&sort, None).unwrap();
        take_record_batch(&all, &idx).unwrap()
    }

    fn is_part_name(name: &str) -> bool {
        let Some(rest) = name
            .strip_prefix("part-")
            .and_then(|r| r.strip_suffix(".parquet"))
        else {
            return false;
        };
        let mut it = rest.split('-');
        let (Some(ms), Some(seq), None) = (it.next(), it.next(), it.next()) else {
            return false;
        };
        ms.len() == 13 && ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok()
    }

    #[tokio::test]
    async fn round_trip_partitioned_by_day() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("lake/region_health");
        let mut sink = ParquetSinkFactory
            .create(spec(
                schema(),
                &[
                    ("path", out.to_str().unwrap()),
                    ("partition.by", "day"),
                    ("rollover.rows", "3"),
                ],
            ))
            .unwrap();
        let day2 = DAY1 + DAY_MS + 5 * 60_000;
        sink.write(
            batch(&[
                (DAY1, "EU-West", 1),
                (day2, "EU-West", 2),
                (DAY1 + 60_000, "US-East", 3),
            ]),
            RowIds::default(),
        )
        .await
        .unwrap();
        // Nothing is visible yet: only hidden in-progress files.
        let before = files(&out);
        assert_eq!(before.len(), 2);
        assert!(
            before
                .iter()
                .all(|f| f.contains("/.part-") && f.ends_with(".inprogress"))
        );

        sink.write(
            batch(&[
                (DAY1 + 120_000, "AP-East", 4),
                (DAY1 + 120_000, "SA-East", 5),
            ]),
            RowIds::default(),
        )
        .await
        .unwrap();
        sink.flush().await.unwrap();
        sink.write(batch(&[(day2, "US-East", 6)]), RowIds::default())
            .await
            .unwrap();
        sink.write(batch(&[]), RowIds::default()).await.unwrap();
        sink.close().await.unwrap();

        let written = files(&out);
        // Day 1: rolled once it reached 3 rows (at 4); day 2: the flush left the young file
        // open (rollover.interval is a minute), so both its rows are in one file at close.
        assert_eq!(written.len(), 2, "{written:?}");
        for f in &written {
            let (folder, name) = f.split_once('/').unwrap();
            assert!(
                folder == "dt=2024-01-01" || folder == "dt=2024-01-02",
                "{f}"
            );
            assert!(is_part_name(name), "{f}");
        }
        assert_eq!(
            written
                .iter()
                .filter(|f| f.starts_with("dt=2024-01-02/"))
                .count(),
            1
        );
        let expected = batch(&[
            (DAY1, "EU-West", 1),
            (DAY1 + 60_000, "US-East", 3),
            (DAY1 + 120_000, "AP-East", 4),
            (DAY1 + 120_000, "SA-East", 5),
            (day2, "EU-West", 2),
            (day2, "US-East", 6),
        ]);
        assert_eq!(read_all(&out), expected);
    }

    #[tokio::test]
    async fn hour_folders_and_no_partitioning() {
        let dir = tempfile::tempdir().unwrap();
        let hourly = dir.path().join("hourly");
        let mut sink = ParquetSinkFactory
            .create(spec(
                schema(),
                &[("path", hourly.to_str().unwrap()), ("partition.by", "HOUR")],
            ))
            .unwrap();
        let rows = [
            (DAY1 + 3 * HOUR_MS + 1, "EU-West", 1),
            (DAY1 - 1, "US-West", 2),
        ];
        sink.write(batch(&rows), RowIds::default()).await.unwrap();
        sink.close().await.unwrap();
        let written = files(&hourly);
        assert_eq!(written.len(), 2);
        assert!(
            written[0].starts_with("dt=2023-12-31/hr=23/part-"),
            "{written:?}"
        );
        assert!(
            written[1].starts_with("dt=2024-01-01/hr=03/part-"),
            "{written:?}"
        );

        let flat = dir.path().join("flat");
        let mut sink = ParquetSinkFactory
            .create(spec(
                schema(),
                &[("path", flat.to_str().unwrap()), ("compression", "snappy")],
            ))
            .unwrap();
        sink.write(batch(&rows), RowIds::default()).await.unwrap();
        sink.close().await.unwrap();
        // Closing again with nothing open writes nothing.
        sink.close().await.unwrap();
        let written = files(&flat);
        assert_eq!(written.len(), 1);
        assert!(is_part_name(&written[0]), "{written:?}");
        assert_eq!(read_all(&flat), batch(&[rows[1], rows[0]]));
    }

    #[tokio::test]
    async fn rolls_over_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("aged");
        let mut sink = ParquetSinkFactory
            .create(spec(
                schema(),
                &[
                    ("path", out.to_str().unwrap()),
                    ("rollover.interval", "30ms"),
                ],
            ))
            .unwrap();
        sink.write(batch(&[(DAY1, "EU-West", 1)]), RowIds::default())
            .await
            .unwrap();
        assert!(files(&out).iter().all(|f| f.ends_with(".inprogress")));
        tokio::time::sleep(Duration::from_millis(60)).await;
        sink.write(batch(&[(DAY1, "US-East", 2)]), RowIds::default())
            .await
            .unwrap();
        let visible: Vec<String> = files(&out)
            .into_iter()
            .filter(|f| f.ends_with(".parquet"))
            .collect();
        assert_eq!(visible.len(), 1, "{visible:?}");
        sink.close().await.unwrap();
        assert_eq!(files(&out).len(), 2);
        assert_eq!(
            read_all(&out),
            batch(&[(DAY1, "EU-West", 1), (DAY1, "US-East", 2)])
        );
    }

    #[test]
    fn partition_column_is_first_timestamp_without_window_start() {
        let s = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, None),
                false,
            ),
        ]));
        assert_eq!(partition_column(&s).unwrap(), 1);
        assert_eq!(partition_column(&schema()).unwrap(), 0);
    }

    #[test]
    fn option_errors() {
        let no_ts = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false)]));
        let e = ParquetSinkFactory
            .create(spec(no_ts, &[("path", "x"), ("partition.by", "day")]))
            .err()
            .unwrap();
        assert!(e.is_user());
        assert!(
            e.to_string()
                .starts_with("option 'partition.by' needs a timestamp column")
        );
        let e = ParquetSinkFactory
            .create(spec(schema(), &[]))
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "the parquet sink needs option 'path' (a directory, or s3://bucket/prefix)"
        );
        // Object storage: S3 only for now; 'storage.*' only with it, and only S3 keys.
        let err = |opts: &[(&str, &str)]| {
            ParquetSinkFactory
                .create(spec(schema(), opts))
                .err()
                .unwrap()
                .to_string()
        };
        assert!(err(&[("path", "gs://b/p")]).contains("'gs://' is not supported yet"));
        assert!(
            err(&[("path", "x"), ("storage.aws_region", "eu")])
                .contains("are for an object-store path")
        );
        assert!(
            err(&[("path", "s3://b/p"), ("storage.colour", "red")])
                .contains("'storage.colour' is not an S3 setting")
        );
        let e = ParquetSinkFactory
            .create(spec(schema(), &[("path", "x"), ("rollover", "1m")]))
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "unknown option 'rollover' for the parquet sink; valid options: changelog, \
             compression, partition.by, path, rollover.interval, rollover.rows, \
             storage.<object_store S3 key>"
        );
        let e = ParquetSinkFactory
            .create(spec(schema(), &[("path", "x"), ("compression", "lzo")]))
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "option 'compression' must be one of zstd | snappy | lz4 | gzip | none, got 'lzo'"
        );
    }

    /// An updating view's spec: its batches are changes.
    fn changes_spec(schema: SchemaRef, options: &[(&str, &str)]) -> SinkSpec {
        SinkSpec {
            changelog: true,
            ..spec(schema, options)
        }
    }

    #[test]
    fn changelog_option_errors() {
        let err = |s: SinkSpec| ParquetSinkFactory.create(s).err().unwrap();
        let e = err(spec(schema(), &[("path", "x"), ("changelog", "true")]));
        assert!(e.is_user());
        assert_eq!(
            e.to_string(),
            "option 'changelog' is for updating views (aggregates without a window), and view \
             'region_health' is not one: its rows never change; leave 'changelog' out"
        );
        let e = err(changes_spec(
            schema(),
            &[
                ("path", "x"),
                ("changelog", "true"),
                ("partition.by", "day"),
            ],
        ));
        assert_eq!(
            e.to_string(),
            "option 'partition.by' cannot be used with 'changelog' = 'true': a key's changes \
             must stay in one sequence of files, in order"
        );
        let with_op = Arc::new(Schema::new(vec![Field::new("op", DataType::Utf8, false)]));
        let e = err(changes_spec(
            with_op,
            &[("path", "x"), ("changelog", "TRUE")],
        ));
        assert_eq!(
            e.to_string(),
            "view 'region_health' has a column named op, which 'changelog' = 'true' adds; \
             rename it in the view"
        );
        let e = err(changes_spec(
            schema(),
            &[("path", "x"), ("changelog", "yes")],
        ));
        assert_eq!(
            e.to_string(),
            "option 'changelog' must be one of true | false, got 'yes'"
        );
        // Without the option the refusal names it (the exact text is checked end to end).
        let e = err(changes_spec(schema(), &[("path", "x")]));
        assert!(e.to_string().contains("set 'changelog' = 'true'"), "{e}");
    }

    #[tokio::test]
    async fn blackhole_takes_updating_views() {
        let mut sink = crate::blackhole::BlackholeSinkFactory
            .create(changes_spec(schema(), &[]))
            .unwrap();
        let changes = changelog::tag(batch(&[(DAY1, "EU-West", 1)]), changelog::DELETE).unwrap();
        sink.write(changes, RowIds::default()).await.unwrap();
        sink.close().await.unwrap();
    }

    #[tokio::test]
    async fn blackhole_takes_no_options() {
        let e = crate::blackhole::BlackholeSinkFactory
            .create(spec(schema(), &[("path", "x")]))
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "unknown option 'path' for the blackhole sink; valid options: "
        );
        let mut sink = crate::blackhole::BlackholeSinkFactory
            .create(spec(schema(), &[]))
            .unwrap();
        sink.write(batch(&[(DAY1, "EU-West", 1)]), RowIds::default())
            .await
            .unwrap();
        sink.close().await.unwrap();
    }
}
