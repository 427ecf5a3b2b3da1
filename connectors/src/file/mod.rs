//! The `file` source: JSON-lines or Parquet files, for replay and benchmarks.
//!
//! ```sql
//! CREATE SOURCE downloads (...) WITH (connector = 'file', path = 'data/downloads-*.jsonl',
//!     format = 'json', 'bad.records' = 'dead-letter');
//! ```
//!
//! `path` is a file or a glob (hidden files, e.g. a Parquet sink's in-progress files, are not
//! matched); each match is its own partition (batches are tagged with the file's index in
//! sorted order). The files are read by one thread per engine worker (at most one per
//! file), each taking the next file not yet taken, so a glob of 8 files on 2 workers reads
//! 2 at a time; the workers left over decode within a file, and its batches come back in
//! file order (the same batches as reading it in turn): JSON chunks on the reader's share
//! of the workers, and a Parquet file that has an offset index in units of about 65,536
//! rows on one fewer when the share is more than two. When every file is read the source
//! ends. With `format = 'json'`, `path` may also name a named pipe (FIFO), read like a file
//! until its writer closes it: a stream from another process (`weir-bench soak --pipeline
//! file` feeds one), which a restore cannot re-read. The reading runs on dedicated threads
//! that feed a small bounded channel, so the async runtime never blocks on the disk and
//! memory stays bounded.
//!
//! - JSON lines are read in chunks of about [`CHUNK_BYTES`], cut at the last newline, and
//!   decoded with [`JsonDecoder`](crate::format::JsonDecoder) under the `bad.records`
//!   policy; bad lines are reported as `file <path> line <n>`.
//! - Parquet files are read with the arrow reader, projecting the declared columns by name
//!   and casting them to the declared types. A declared column missing from a file is an
//!   error at `CREATE SOURCE`. A row with a null in a NOT NULL column (the event time
//!   always is) is a bad record under the `bad.records` policy, reported as
//!   `file <path> row <n>` (1-based) with the row as JSON for `raw`.
//!
//! A batch's position is the number of rows read from its file so far. Restoring a
//! checkpoint re-reads each file from its start and skips the rows the checkpoint covers
//! (bad records in the skipped part are reported again).

mod reader;

use crate::dead_letter::DeadLetterWriter;
use crate::format::{BadRecordHandler, BadRecords, JsonDecoder, parse_bad_records};
use crate::util::{check_castable, io_error};
use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use tokio::sync::mpsc;
use weir_engine::connector::{Source, SourceEvent, SourceFactory, SourceSpec};
use weir_engine::{Result, WeirError};

pub const VALID_KEYS: &[&str] = &["path", "format", "bad.records"];

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
        options.finish("the file source", VALID_KEYS)?;

        let files = resolve_files(&path)?;
        let dead_letter = (policy == BadRecords::DeadLetter)
            .then(|| DeadLetterWriter::new(&spec.data_dir, &spec.name));
        let (json, parquet_bad) = match format {
            FileFormat::Json => (
                Some(JsonDecoder::new(spec.schema.clone(), policy, dead_letter)?),
                None,
            ),
            FileFormat::Parquet => {
                for file in &files {
                    if !file.is_file() {
                        return Err(WeirError::user(format!(
                            "{} is not a regular file: Parquet is read from files only",
                            file.display()
                        )));
                    }
                    check_parquet_schema(file, &spec.schema)?;
                }
                (None, Some(BadRecordHandler::new(policy, dead_letter)))
            }
        };
        Ok(Box::new(FileSource {
            name: spec.name,
            schema: spec.schema,
            files,
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

/// Every declared column must be in the file, with a type that casts to the declared one.
fn check_parquet_schema(path: &Path, schema: &SchemaRef) -> Result<()> {
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
        Ok(())
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

/// Reads its files on dedicated threads, one per worker (at most one per file).
pub struct FileSource {
    name: String,
    schema: SchemaRef,
    files: Vec<PathBuf>,
    max_rows: usize,
    format: FileFormat,
    /// Moved to the reader thread when it starts.
    json: Option<JsonDecoder>,
    /// The bad-record policy for Parquet rows (moved to the reader thread too).
    parquet_bad: Option<BadRecordHandler>,
    rx: Option<mpsc::Receiver<Result<SourceEvent>>>,
    ended: bool,
    /// Rows per file a restored checkpoint already covers.
    skip: Vec<u64>,
    /// The engine's workers: a JSON file decodes on that many threads, a Parquet file with
    /// an offset index on one fewer when there are more than two.
    decoders: usize,
}

impl FileSource {
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Start the reader threads: one per worker up to one per file, each taking the next
    /// file not yet taken; the workers left over decode for them (JSON chunks, Parquet
    /// units).
    fn start(&mut self) -> Result<mpsc::Receiver<Result<SourceEvent>>> {
        let readers = self.decoders.min(self.files.len()).max(1);
        let (tx, rx) = mpsc::channel(CHANNEL_BATCHES * readers);
        let queue: Arc<reader::FileQueue> = Arc::new(parking_lot::Mutex::new(
            self.files.iter().cloned().enumerate().collect(),
        ));
        let running = Arc::new(AtomicUsize::new(readers));
        let (json, parquet_bad) = (self.json.take(), self.parquet_bad.take());
        for i in 0..readers {
            let reader = reader::FileReader {
                files: queue.clone(),
                readers: running.clone(),
                schema: self.schema.clone(),
                max_rows: self.max_rows,
                format: self.format,
                json: json.clone(),
                parquet_bad: parquet_bad.clone(),
                tx: tx.clone(),
                delivered: self.files.iter().map(|_| Cell::new(0)).collect(),
                skip: (0..self.files.len())
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
        Ok(rx)
    }
}

#[async_trait]
impl Source for FileSource {
    fn partitions(&self) -> usize {
        self.files.len()
    }

    fn bounded(&self) -> bool {
        true
    }

    /// Files are re-read from the start on resume, and the rows the checkpoint covers
    /// (counted per file) are skipped.
    fn seek(&mut self, positions: &[(usize, i64)]) -> Result<()> {
        self.skip = vec![0; self.files.len()];
        for &(file, rows) in positions {
            if let Some(s) = self.skip.get_mut(file) {
                *s = rows.max(0) as u64;
            }
        }
        Ok(())
    }

    async fn next(&mut self) -> Result<SourceEvent> {
        if self.ended {
            return Ok(SourceEvent::End);
        }
        let rx = match &mut self.rx {
            Some(rx) => rx,
            None => {
                let rx = self.start()?;
                self.rx.insert(rx)
            }
        };
        match rx.recv().await {
            Some(Ok(SourceEvent::End)) => {
                self.ended = true;
                self.rx = None;
                Ok(SourceEvent::End)
            }
            Some(event) => event,
            None => Err(WeirError::Internal(format!(
                "the reader thread of file source '{}' stopped unexpectedly",
                self.name
            ))),
        }
    }
}

#[cfg(test)]
mod tests;
