//! The `file` source: JSON-lines or Parquet files, for replay and benchmarks.
//!
//! ```sql
//! CREATE SOURCE downloads (...) WITH (connector = 'file', path = 'data/downloads-*.jsonl',
//!     format = 'json', 'bad.records' = 'dead-letter');
//! ```
//!
//! `path` is a file or a glob (hidden files, e.g. a Parquet sink's in-progress files, are not
//! matched). The source's partitions are its files in sorted order, except that a Parquet
//! file is split into runs of whole row groups of at least `'parquet.partition.rows'` rows
//! (default [`PARQUET_PARTITION_ROWS`]), each a partition of its own, as DataFusion's and
//! DuckDB's scans split a file. The partitions are read by one thread per engine worker (at
//! most one per partition), each taking the next partition not yet taken, so a glob of 8
//! files, or one Parquet file of 8 row groups, on 2 workers reads 2 at a time; the workers
//! left over decode within a partition, and its batches come back in order (the same
//! batches as reading it in turn): JSON chunks on the reader's share of the workers, and
//! Parquet rows with an offset index in units of about 65,536 rows on one fewer when the
//! share is more than two. When every partition is read the source ends. With
//! `format = 'json'`, `path` may also name a named pipe (FIFO), read like a file until its
//! writer closes it: a stream from another process (`weir-bench soak --pipeline file`
//! feeds one), which a restore cannot re-read. The reading runs on dedicated threads that
//! feed a small bounded channel, so the async runtime never blocks on the disk and memory
//! stays bounded.
//!
//! Partitions waiting for a reader are not idle: the source reports every regular file's
//! partition that has not ended as active (`SourceEvent::Active`) four times per
//! `idle.timeout`, so a partition read late cannot find its rows late because processing
//! time released the watermark meanwhile. A Parquet partition also reports the least
//! event time its row groups' statistics give (`SourceEvent::EarliestEventTime`), so
//! until it is read it holds the watermark there rather than at the start of time: parts
//! of one file read two at a time let windows close as they go.
//!
//! - JSON lines are read in chunks of about [`CHUNK_BYTES`], cut at the last newline, and
//!   decoded with [`JsonDecoder`](crate::format::JsonDecoder) under the `bad.records`
//!   policy; bad lines are reported as `file <path> line <n>`.
//! - Parquet files are read with the arrow reader, projecting the declared columns by name
//!   and casting them to the declared types. A declared column missing from a file is an
//!   error at `CREATE SOURCE`. A row with a null in a NOT NULL column (the event time
//!   always is) is a bad record under the `bad.records` policy, reported as
//!   `file <path> row <n>` (1-based, counted in the file) with the row as JSON for `raw`.
//!
//! A batch's position is the number of good rows handed on from its partition so far.
//! Restoring a checkpoint re-reads each partition from its start and skips the rows the
//! checkpoint covers (bad records in the skipped part are reported again).

mod reader;

use crate::dead_letter::DeadLetterWriter;
use crate::format::{BadRecordHandler, BadRecords, JsonDecoder, parse_bad_records};
use crate::util::{cast_to, check_castable, io_error};
use async_trait::async_trait;
use datafusion::arrow::array::Array;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use datafusion::parquet::arrow::parquet_to_arrow_schema;
use datafusion::parquet::file::metadata::ParquetMetaData;
use std::cell::Cell;
use std::collections::VecDeque;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;
use tokio::sync::mpsc;
use weir_engine::connector::{Source, SourceEvent, SourceFactory, SourceSpec};
use weir_engine::dataflow::source::ts_millis;
use weir_engine::{Result, WeirError};

pub const VALID_KEYS: &[&str] = &["path", "format", "bad.records", "parquet.partition.rows"];

/// The least rows of a Parquet file's partition (`'parquet.partition.rows'`): row groups
/// are taken into a partition until it has this many.
pub const PARQUET_PARTITION_ROWS: u64 = 1 << 20;

/// Roughly how much JSON is read and decoded at a time.
pub const CHUNK_BYTES: usize = 2 * 1024 * 1024;

/// How many decoded batches may wait between the reader thread and the pipeline.
const CHANNEL_BATCHES: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Json,
    Parquet,
}

pub struct FileSourceFactory;

impl SourceFactory for FileSourceFactory {
    fn name(&self) -> &'static str {
        "file"
    }

    fn create(&self, spec: SourceSpec) -> Result<Box<dyn Source>> {
        let mut options = spec.options.clone();
        let path = options
            .take("path")
            .ok_or_else(|| WeirError::user("the file source needs option 'path'"))?;
        let format = match options
            .take_choice("format", &["json", "parquet"], "json")?
            .as_str()
        {
            "parquet" => FileFormat::Parquet,
            _ => FileFormat::Json,
        };
        let policy = parse_bad_records(&mut options)?;
        let part_rows = options
            .take_parse::<u64>("parquet.partition.rows")?
            .unwrap_or(PARQUET_PARTITION_ROWS);
        if part_rows == 0 {
            return Err(WeirError::user(
                "option 'parquet.partition.rows' must be at least 1",
            ));
        }
        options.finish("the file source", VALID_KEYS)?;

        let files = resolve_files(&path)?;
        let dead_letter = (policy == BadRecords::DeadLetter)
            .then(|| DeadLetterWriter::new(&spec.data_dir, &spec.name));
        let mut parts = Vec::new();
        let (json, parquet_bad) = match format {
            FileFormat::Json => {
                parts.extend(files.iter().map(|path| FilePart::whole(path.clone())));
                (
                    Some(JsonDecoder::new(spec.schema.clone(), policy, dead_letter)?),
                    None,
                )
            }
            FileFormat::Parquet => {
                for file in &files {
                    if !file.is_file() {
                        return Err(WeirError::user(format!(
                            "{} is not a regular file: Parquet is read from files only",
                            file.display()
                        )));
                    }
                    let metadata = check_parquet_schema(file, &spec.schema)?;
                    parts.extend(parquet_parts(
                        file,
                        &metadata,
                        &spec.schema,
                        spec.event_time.as_deref(),
                        part_rows,
                    )?);
                }
                (None, Some(BadRecordHandler::new(policy, dead_letter)))
            }
        };
        // Four reports per idle timeout, so a waiting partition never looks idle.
        let keep_alive = (spec.idle_timeout / 4).max(Duration::from_millis(1));
        Ok(Box::new(FileSource {
            name: spec.name,
            schema: spec.schema,
            files,
            parts,
            announce: VecDeque::new(),
            keep_alive,
            next_keep_alive: None,
            ended_parts: vec![],
            max_rows: spec.batch.max_rows.max(1),
            json,
            parquet_bad,
            format,
            rx: None,
            ended: false,
            skip: vec![],
            decoders: spec.workers.max(1),
        }))
    }
}

/// The files a `path` option names, sorted. A plain path must exist; a glob must match at
/// least one file.
pub fn resolve_files(pattern: &str) -> Result<Vec<PathBuf>> {
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: true,
    };
    let paths = glob::glob_with(pattern, options).map_err(|e| {
        WeirError::user(format!(
            "option 'path' is not a valid glob '{pattern}': {e}"
        ))
    })?;
    let mut files = Vec::new();
    for entry in paths {
        let path =
            entry.map_err(|e| WeirError::external_source(format!("listing '{pattern}'"), e))?;
        if is_readable_file(&path) {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(WeirError::user(format!(
            "option 'path' = '{pattern}' matches no files"
        )));
    }
    Ok(files)
}

/// A regular file, or a named pipe (FIFO).
fn is_readable_file(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() || m.file_type().is_fifo())
}

/// One partition of a file source: a whole file, or a run of a Parquet file's row groups.
#[derive(Debug, Clone)]
pub(crate) struct FilePart {
    pub(crate) path: PathBuf,
    /// Parquet: the row groups (consecutive) and the row of the file the first begins
    /// at; `None`: the whole file.
    pub(crate) groups: Option<(Range<usize>, u64)>,
    /// The least event time the row groups' statistics give (epoch ms), if they give one.
    pub(crate) earliest: Option<i64>,
    /// A regular file (not a named pipe): its rows are there to read, so it is never idle.
    pub(crate) regular: bool,
}

impl FilePart {
    fn whole(path: PathBuf) -> Self {
        let regular = path.is_file();
        FilePart {
            path,
            groups: None,
            earliest: None,
            regular,
        }
    }
}

/// A Parquet file's partitions: runs of consecutive row groups, each closed once it has at
/// least `part_rows` rows (so the split depends on the file alone, never on the workers,
/// and a checkpoint's positions mean the same after a restart with another worker count).
fn parquet_parts(
    path: &Path,
    metadata: &ParquetMetaData,
    schema: &SchemaRef,
    event_time: Option<&str>,
    part_rows: u64,
) -> Result<Vec<FilePart>> {
    let groups = metadata.row_groups();
    let earliest = match event_time {
        Some(column) => earliest_event_times(path, metadata, schema, column)?,
        None => vec![None; groups.len()],
    };
    let mut parts = Vec::new();
    let (mut start, mut rows, mut first_row) = (0usize, 0u64, 0u64);
    for (g, meta) in groups.iter().enumerate() {
        rows += meta.num_rows().max(0) as u64;
        if rows >= part_rows || g + 1 == groups.len() {
            let range = start..g + 1;
            // The least of the groups' minimums, if every group has one.
            let least = earliest[range.clone()]
                .iter()
                .try_fold(i64::MAX, |m, e| e.map(|e| m.min(e)));
            parts.push(FilePart {
                path: path.to_path_buf(),
                groups: Some((range, first_row)),
                earliest: least,
                regular: true,
            });
            first_row += rows;
            (start, rows) = (g + 1, 0);
        }
    }
    if parts.is_empty() {
        // A file without row groups: one partition that ends at once.
        parts.push(FilePart {
            path: path.to_path_buf(),
            groups: Some((0..0, 0)),
            earliest: None,
            regular: true,
        });
    }
    Ok(parts)
}

/// Per row group, the least value of the event-time column the statistics record, as
/// epoch milliseconds the way the engine reads the column (cast to the declared type,
/// then to milliseconds). Only for columns stored as timestamps, dates or integers, whose
/// order the cast keeps; `None` where a group has no statistics.
fn earliest_event_times(
    path: &Path,
    metadata: &ParquetMetaData,
    schema: &SchemaRef,
    column: &str,
) -> Result<Vec<Option<i64>>> {
    let none = vec![None; metadata.row_groups().len()];
    let file_schema = parquet_to_arrow_schema(
        metadata.file_metadata().schema_descr(),
        metadata.file_metadata().key_value_metadata(),
    )
    .map_err(|e| {
        WeirError::external_source(format!("reading Parquet file {}", path.display()), e)
    })?;
    let Ok(stored) = file_schema.field_with_name(column) else {
        return Ok(none);
    };
    if !matches!(
        stored.data_type(),
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 | DataType::Int64
    ) {
        return Ok(none);
    }
    let declared = schema.field_with_name(column)?.data_type().clone();
    let Ok(converter) = StatisticsConverter::try_new(
        column,
        &file_schema,
        metadata.file_metadata().schema_descr(),
    ) else {
        return Ok(none);
    };
    let Ok(mins) = converter.row_group_mins(metadata.row_groups().iter()) else {
        return Ok(none);
    };
    let mins = cast_to(&mins, &declared, column)?;
    let mins = ts_millis(mins.as_ref())?;
    Ok((0..mins.len())
        .map(|i| mins.is_valid(i).then(|| mins.value(i)))
        .collect())
}

/// Every declared column must be in the file, with a type that casts to the declared one.
/// Returns the file's metadata.
fn check_parquet_schema(path: &Path, schema: &SchemaRef) -> Result<Arc<ParquetMetaData>> {
    let file = std::fs::File::open(path).map_err(|e| io_error("opening", path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| {
        WeirError::external_source(format!("reading Parquet file {}", path.display()), e)
    })?;
    let file_schema = builder.schema();
    let mut missing = Vec::new();
    for field in schema.fields() {
        match file_schema.field_with_name(field.name()) {
            Ok(f) => check_castable(
                field.name(),
                f.data_type(),
                field.data_type(),
                &format!("Parquet file {}", path.display()),
            )?,
            Err(_) => missing.push(format!("'{}'", field.name())),
        }
    }
    if missing.is_empty() {
        Ok(builder.metadata().clone())
    } else {
        let present: Vec<&str> = file_schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        Err(WeirError::user(format!(
            "Parquet file {} has no column {}; its columns are: {}",
            path.display(),
            missing.join(", "),
            present.join(", ")
        )))
    }
}

/// Reads its partitions on dedicated threads, one per worker (at most one per partition).
pub struct FileSource {
    name: String,
    schema: SchemaRef,
    files: Vec<PathBuf>,
    /// The partitions, in order: files, or runs of a Parquet file's row groups.
    parts: Vec<FilePart>,
    max_rows: usize,
    format: FileFormat,
    /// Moved to the reader thread when it starts.
    json: Option<JsonDecoder>,
    /// The bad-record policy for Parquet rows (moved to the reader thread too).
    parquet_bad: Option<BadRecordHandler>,
    rx: Option<mpsc::Receiver<Result<SourceEvent>>>,
    ended: bool,
    /// Rows per partition a restored checkpoint already covers.
    skip: Vec<u64>,
    /// The engine's workers: a JSON file decodes on that many threads, a Parquet file with
    /// an offset index on one fewer when there are more than two.
    decoders: usize,
    /// Events to hand out before the next one from the readers (each partition's earliest
    /// event time at the start, then the keep-alive reports).
    announce: VecDeque<SourceEvent>,
    /// How often partitions not yet ended are reported active, and when next.
    keep_alive: Duration,
    next_keep_alive: Option<tokio::time::Instant>,
    /// Partitions whose end the readers reported.
    ended_parts: Vec<bool>,
}

impl FileSource {
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Start the reader threads: one per worker up to one per partition, each taking the
    /// next partition not yet taken; the workers left over decode for them (JSON chunks,
    /// Parquet units).
    fn start(&mut self) -> Result<mpsc::Receiver<Result<SourceEvent>>> {
        let readers = self.decoders.min(self.parts.len()).max(1);
        let (tx, rx) = mpsc::channel(CHANNEL_BATCHES * readers);
        let queue: Arc<reader::PartQueue> = Arc::new(parking_lot::Mutex::new(
            self.parts.iter().cloned().enumerate().collect(),
        ));
        let running = Arc::new(AtomicUsize::new(readers));
        let (json, parquet_bad) = (self.json.take(), self.parquet_bad.take());
        for i in 0..readers {
            let reader = reader::FileReader {
                parts: queue.clone(),
                readers: running.clone(),
                schema: self.schema.clone(),
                max_rows: self.max_rows,
                format: self.format,
                json: json.clone(),
                parquet_bad: parquet_bad.clone(),
                tx: tx.clone(),
                delivered: self.parts.iter().map(|_| Cell::new(0)).collect(),
                skip: (0..self.parts.len())
                    .map(|i| Cell::new(self.skip.get(i).copied().unwrap_or(0)))
                    .collect(),
                // Each reader's share of the workers.
                decoders: (self.decoders / readers).max(1),
            };
            std::thread::Builder::new()
                .name(format!("weir-file-{}-{i}", self.name))
                .spawn(move || reader.run())
                .map_err(|e| WeirError::external_source("starting a file reader thread", e))?;
        }
        self.ended_parts = vec![false; self.parts.len()];
        self.announce
            .extend(self.parts.iter().enumerate().filter_map(|(partition, p)| {
                Some(SourceEvent::EarliestEventTime {
                    partition,
                    event_time_ms: p.earliest?,
                })
            }));
        Ok(rx)
    }

    /// Report every regular file's partition not yet ended as active.
    fn keep_alive_reports(&mut self) {
        for (partition, part) in self.parts.iter().enumerate() {
            if part.regular && !self.ended_parts.get(partition).copied().unwrap_or(true) {
                self.announce.push_back(SourceEvent::Active { partition });
            }
        }
    }
}

#[async_trait]
impl Source for FileSource {
    fn partitions(&self) -> usize {
        self.parts.len()
    }

    fn bounded(&self) -> bool {
        true
    }

    /// Partitions are re-read from the start on resume, and the rows the checkpoint covers
    /// (counted per partition) are skipped.
    fn seek(&mut self, positions: &[(usize, i64)]) -> Result<()> {
        self.skip = vec![0; self.parts.len()];
        for &(partition, rows) in positions {
            if let Some(s) = self.skip.get_mut(partition) {
                *s = rows.max(0) as u64;
            }
        }
        Ok(())
    }

    async fn next(&mut self) -> Result<SourceEvent> {
        if self.ended {
            return Ok(SourceEvent::End);
        }
        if self.rx.is_none() {
            let rx = self.start()?;
            self.rx = Some(rx);
            self.next_keep_alive = Some(tokio::time::Instant::now() + self.keep_alive);
        }
        loop {
            if let Some(event) = self.announce.pop_front() {
                return Ok(event);
            }
            let (Some(rx), Some(due)) = (&mut self.rx, self.next_keep_alive) else {
                return Err(WeirError::Internal("file source not started".into()));
            };
            let event = tokio::select! {
                event = rx.recv() => Some(event),
                _ = tokio::time::sleep_until(due) => None,
            };
            let Some(event) = event else {
                self.next_keep_alive = Some(tokio::time::Instant::now() + self.keep_alive);
                self.keep_alive_reports();
                continue;
            };
            return match event {
                Some(Ok(SourceEvent::End)) => {
                    self.ended = true;
                    self.rx = None;
                    Ok(SourceEvent::End)
                }
                Some(Ok(SourceEvent::PartitionEnd { partition })) => {
                    if let Some(e) = self.ended_parts.get_mut(partition) {
                        *e = true;
                    }
                    Ok(SourceEvent::PartitionEnd { partition })
                }
                Some(event) => event,
                None => Err(WeirError::Internal(format!(
                    "the reader thread of file source '{}' stopped unexpectedly",
                    self.name
                ))),
            };
        }
    }
}

#[cfg(test)]
mod tests;
