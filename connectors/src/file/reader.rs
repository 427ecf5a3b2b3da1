//! The file source's reader thread: blocking reads and decoding, off the async runtime.

use super::{CHUNK_BYTES, FileFormat};
use crate::format::JsonDecoder;
use crate::format::json::count_newlines;
use crate::util::{cast_to, io_error};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::cell::Cell;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;
use weir_engine::connector::SourceEvent;
use weir_engine::{Result, WeirError};

pub(super) struct FileReader {
    pub(super) files: Vec<PathBuf>,
    pub(super) schema: SchemaRef,
    pub(super) max_rows: usize,
    pub(super) format: FileFormat,
    pub(super) json: Option<JsonDecoder>,
    pub(super) tx: mpsc::Sender<Result<SourceEvent>>,
    /// Per file: good rows handed on so far (the position), and how many of the first
    /// rows to skip because a checkpoint already covers them.
    pub(super) delivered: Vec<Cell<u64>>,
    pub(super) skip: Vec<Cell<u64>>,
}

/// Whether to keep going: false once the source is gone.
type Continue = bool;

impl FileReader {
    pub(super) fn run(mut self) {
        let files = std::mem::take(&mut self.files);
        for (partition, path) in files.iter().enumerate() {
            let result = match self.format {
                FileFormat::Json => self.read_json(partition, path),
                FileFormat::Parquet => self.read_parquet(partition, path),
            };
            match result {
                Ok(true) => {
                    // This file is done: its partition stops holding the watermark back.
                    if self
                        .tx
                        .blocking_send(Ok(SourceEvent::PartitionEnd { partition }))
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(false) => return,
                Err(e) => {
                    // The receiver reports the error; nothing more to read after it.
                    let _ = self.tx.blocking_send(Err(e));
                    return;
                }
            }
        }
        let _ = self.tx.blocking_send(Ok(SourceEvent::End));
    }

    /// Hand a batch on, with the file's position after it; rows a restored checkpoint
    /// already covers are dropped first.
    fn send(&self, partition: usize, mut batch: RecordBatch, bad_records: u64) -> Continue {
        let (Some(skip), Some(delivered)) =
            (self.skip.get(partition), self.delivered.get(partition))
        else {
            return false;
        };
        let rows = batch.num_rows() as u64;
        let skipped = skip.get().min(rows);
        if skipped > 0 {
            skip.set(skip.get() - skipped);
            batch = batch.slice(skipped as usize, (rows - skipped) as usize);
        }
        delivered.set(delivered.get() + rows);
        if batch.num_rows() == 0 && (bad_records == 0 || skipped > 0) {
            return true;
        }
        self.tx
            .blocking_send(Ok(SourceEvent::Batch {
                partition,
                batch,
                bad_records,
                position: Some(delivered.get() as i64),
            }))
            .is_ok()
    }

    /// Send `batch` in slices of at most `max_rows`, the bad-record count with the first.
    fn send_sliced(&self, partition: usize, batch: &RecordBatch, mut bad: u64) -> Continue {
        let rows = batch.num_rows();
        let mut offset = 0;
        while offset < rows {
            let len = self.max_rows.min(rows - offset);
            if !self.send(partition, batch.slice(offset, len), bad) {
                return false;
            }
            bad = 0;
            offset += len;
        }
        true
    }

    fn read_json(&mut self, partition: usize, path: &Path) -> Result<Continue> {
        let Some(mut decoder) = self.json.take() else {
            return Err(WeirError::Internal(
                "file source without a JSON decoder".into(),
            ));
        };
        let result = self.read_json_with(&mut decoder, partition, path);
        self.json = Some(decoder);
        result
    }

    fn read_json_with(
        &self,
        decoder: &mut JsonDecoder,
        partition: usize,
        path: &Path,
    ) -> Result<Continue> {
        let mut file = File::open(path).map_err(|e| io_error("opening", path, e))?;
        let shown = path.display().to_string();
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK_BYTES + CHUNK_BYTES / 4);
        // 1-based line number of `buf[0]`.
        let mut line_no: u64 = 1;
        // Bad records seen in chunks that had no good rows, reported with the next batch.
        let mut pending_bad: u64 = 0;
        let mut eof = false;
        while !eof || !buf.is_empty() {
            if !eof {
                let start = buf.len();
                buf.resize(start + CHUNK_BYTES, 0);
                let n = read_full(&mut file, &mut buf[start..])
                    .map_err(|e| io_error("reading", path, e))?;
                buf.truncate(start + n);
                eof = n == 0;
            }
            let end = if eof {
                buf.len()
            } else {
                match buf.iter().rposition(|b| *b == b'\n') {
                    Some(i) => i + 1,
                    // One line longer than a chunk: read more.
                    None => continue,
                }
            };
            let chunk = &buf[..end];
            let first = line_no;
            let (batch, bad) =
                decoder.decode(chunk, |i| format!("file {shown} line {}", first + i as u64))?;
            line_no += count_newlines(chunk) as u64;
            buf.drain(..end);
            pending_bad += bad;
            if batch.num_rows() > 0 {
                if !self.send_sliced(partition, &batch, pending_bad) {
                    return Ok(false);
                }
                pending_bad = 0;
            }
        }
        if pending_bad > 0 {
            let empty = RecordBatch::new_empty(self.schema.clone());
            return Ok(self.send(partition, empty, pending_bad));
        }
        Ok(true)
    }

    fn read_parquet(&self, partition: usize, path: &Path) -> Result<Continue> {
        let parquet_error = |e: datafusion::parquet::errors::ParquetError| {
            WeirError::external(format!("reading Parquet file {}: {e}", path.display()))
        };
        let file = File::open(path).map_err(|e| io_error("opening", path, e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_error)?;
        let file_schema = builder.schema().clone();
        let roots = builder.parquet_schema().root_schema().get_fields().len();
        let mut indices = Vec::with_capacity(self.schema.fields().len());
        for field in self.schema.fields() {
            let (i, _) = file_schema.column_with_name(field.name()).ok_or_else(|| {
                WeirError::external(format!(
                    "Parquet file {} has no column '{}'",
                    path.display(),
                    field.name()
                ))
            })?;
            if i < roots {
                indices.push(i);
            }
        }
        let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(self.max_rows)
            .build()
            .map_err(parquet_error)?;
        for batch in reader {
            let batch = batch.map_err(|e| {
                WeirError::external(format!("reading Parquet file {}: {e}", path.display()))
            })?;
            let mut columns = Vec::with_capacity(self.schema.fields().len());
            for field in self.schema.fields() {
                let column = batch.column_by_name(field.name()).ok_or_else(|| {
                    WeirError::external(format!(
                        "Parquet file {} has no column '{}'",
                        path.display(),
                        field.name()
                    ))
                })?;
                columns.push(cast_to(column, field.data_type(), field.name())?);
            }
            let batch = RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| {
                WeirError::external(format!(
                    "Parquet file {} does not fit the declared columns: {e}",
                    path.display()
                ))
            })?;
            if !self.send(partition, batch, 0) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Read until `buf` is full or the file ends; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
