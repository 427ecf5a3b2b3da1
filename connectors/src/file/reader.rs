//! The file source's reader thread: blocking reads and decoding, off the async runtime.

use super::{CHUNK_BYTES, FileFormat, FilePart};
use crate::format::json::{count_newlines, decode_all};
use crate::format::{BadRecordHandler, JsonDecoder, all_nullable, not_null_reason};
use crate::util::{cast_to, io_error};
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, UInt32Array};
use datafusion::arrow::compute::{filter_record_batch, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
    RowSelector,
};
use datafusion::parquet::file::metadata::PageIndexPolicy;
use std::cell::Cell;
use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use tokio::sync::mpsc;
use weir_engine::connector::SourceEvent;
use weir_engine::{Result, WeirError};

/// The partitions of a source not yet taken by one of its reader threads, in order, with
/// their index.
pub(super) type PartQueue = parking_lot::Mutex<VecDeque<(usize, FilePart)>>;

pub(super) struct FileReader {
    /// Where this reader takes its next partition from (shared by the source's readers).
    pub(super) parts: Arc<PartQueue>,
    /// Readers of the source still reading: the last to finish ends the source.
    pub(super) readers: Arc<AtomicUsize>,
    pub(super) schema: SchemaRef,
    pub(super) max_rows: usize,
    pub(super) format: FileFormat,
    pub(super) json: Option<JsonDecoder>,
    pub(super) parquet_bad: Option<BadRecordHandler>,
    pub(super) tx: mpsc::Sender<Result<SourceEvent>>,
    /// Per partition: rows handed on so far (the position), and how many of the first
    /// rows to skip because a checkpoint already covers them.
    pub(super) delivered: Vec<Cell<u64>>,
    pub(super) skip: Vec<Cell<u64>>,
    /// The engine's workers: JSON chunks decode on that many threads (1: on this thread,
    /// in turn); Parquet on one fewer, when there are more than two.
    pub(super) decoders: usize,
}

/// A chunk of JSON lines being decoded on a decoder thread: its bytes (kept in case the
/// fast decode fails and the chunk must be decoded again, line by line), its first line's
/// number, and where the decoded batch arrives.
struct InFlight {
    chunk: Arc<Vec<u8>>,
    first_line: u64,
    result: std_mpsc::Receiver<Option<RecordBatch>>,
}

/// Decoder threads that take jobs from one channel and answer each on its own, so the
/// reader can hand out several and take the results back in order.
struct DecoderPool<J, R> {
    jobs: std_mpsc::SyncSender<(J, std_mpsc::SyncSender<R>)>,
}

impl<J: Send, R: Send> DecoderPool<J, R> {
    /// Start `n` threads in `scope`, named `{name}-{i}`, each running `work` on the jobs it
    /// takes. Dropping the pool closes the job channel, which ends the threads the scope
    /// waits for: made inside the scope, every way out of it (an error too) does.
    fn start<'scope, 'env>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        name: &str,
        n: usize,
        work: impl Fn(J) -> R + Send + Sync + 'scope,
    ) -> Result<Self>
    where
        J: 'scope,
        R: 'scope,
    {
        let (jobs, rx) = std_mpsc::sync_channel::<(J, std_mpsc::SyncSender<R>)>(n);
        let rx = Arc::new(parking_lot::Mutex::new(rx));
        let work = Arc::new(work);
        for i in 0..n {
            let (rx, work) = (rx.clone(), work.clone());
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn_scoped(scope, move || {
                    loop {
                        // The lock is held only to take the next job.
                        let job = rx.lock().recv();
                        let Ok((job, reply)) = job else {
                            return;
                        };
                        // The reader stopped waiting (it failed or the source is gone).
                        let _ = reply.send(work(job));
                    }
                })
                .map_err(|e| {
                    WeirError::external_source(format!("starting decoder thread {name}-{i}"), e)
                })?;
        }
        Ok(DecoderPool { jobs })
    }

    /// Hand out `job`; where its result arrives, or `None` when the threads are gone.
    fn submit(&self, job: J) -> Option<std_mpsc::Receiver<R>> {
        let (reply, result) = std_mpsc::sync_channel(1);
        self.jobs.send((job, reply)).ok()?;
        Some(result)
    }
}

/// Rows of a Parquet file one decoder thread decodes at a time (rounded up to whole
/// batches).
const PARQUET_UNIT_ROWS: usize = 65_536;

/// Rows of a Parquet file for one decoder thread: the row groups they lie in, the first
/// row's offset in the first of them, and how many.
struct ParquetSpan {
    groups: Vec<usize>,
    offset: usize,
    len: usize,
}

/// What a Parquet decoder thread needs to decode part of a file.
struct ParquetUnit<'a> {
    path: &'a Path,
    metadata: &'a ArrowReaderMetadata,
    mask: &'a ProjectionMask,
    schema: &'a SchemaRef,
    max_rows: usize,
}

impl ParquetUnit<'_> {
    /// Decode the rows of `span`, in the declared columns.
    fn decode(&self, span: ParquetSpan) -> Result<Vec<RecordBatch>> {
        let ParquetSpan {
            groups,
            offset,
            len,
        } = span;
        let shown = self.path.display();
        let parquet_error = |e: datafusion::parquet::errors::ParquetError| {
            WeirError::external_source(format!("reading Parquet file {shown}"), e)
        };
        let file = File::open(self.path).map_err(|e| io_error("opening", self.path, e))?;
        let mut selection = Vec::with_capacity(2);
        if offset > 0 {
            selection.push(RowSelector::skip(offset));
        }
        selection.push(RowSelector::select(len));
        let reader =
            ParquetRecordBatchReaderBuilder::new_with_metadata(file, self.metadata.clone())
                .with_row_groups(groups)
                .with_row_selection(RowSelection::from(selection))
                .with_projection(self.mask.clone())
                .with_batch_size(self.max_rows)
                .build()
                .map_err(parquet_error)?;
        let mut out = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| {
                WeirError::external_source(format!("reading Parquet file {shown}"), e)
            })?;
            out.push(declared_columns(self.schema, &batch, self.path)?);
        }
        Ok(out)
    }
}

/// `batch` (as read from a Parquet file) in `schema`'s columns and types, every column
/// nullable.
fn declared_columns(schema: &SchemaRef, batch: &RecordBatch, path: &Path) -> Result<RecordBatch> {
    let mut columns = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let column = batch.column_by_name(field.name()).ok_or_else(|| {
            WeirError::external(format!(
                "Parquet file {} has no column '{}'",
                path.display(),
                field.name()
            ))
        })?;
        columns.push(cast_to(column, field.data_type(), field.name())?);
    }
    Ok(RecordBatch::try_new(all_nullable(schema), columns)?)
}

/// Whether to keep going: false once the source is gone.
type Continue = bool;

impl FileReader {
    pub(super) fn run(mut self) {
        loop {
            // The lock is held only to take the next partition.
            let next = self.parts.lock().pop_front();
            let Some((partition, part)) = next else {
                break;
            };
            let result = match self.format {
                FileFormat::Json => self.read_json(partition, &part.path),
                FileFormat::Parquet => self.read_parquet(partition, &part),
            };
            match result {
                Ok(true) => {
                    // This partition is done: it stops holding the watermark back.
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
                    // The receiver reports the error; nothing more to read after it. A
                    // failed send means the source is gone, and nobody is left to tell.
                    let _ = self.tx.blocking_send(Err(e));
                    return;
                }
            }
        }
        // The last reader ends the source. As above: a failed send means the source is
        // gone and wants nothing more.
        if self.readers.fetch_sub(1, Ordering::AcqRel) == 1 {
            let _ = self.tx.blocking_send(Ok(SourceEvent::End));
        }
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
        if self.decoders > 1 {
            return self.read_json_parallel(decoder, partition, path);
        }
        let mut file = File::open(path).map_err(|e| io_error("opening", path, e))?;
        let shown = path.display().to_string();
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK_BYTES + CHUNK_BYTES / 4);
        // 1-based line number of `buf[0]`.
        let mut line_no: u64 = 1;
        // Bad records seen in chunks that had no good rows, reported with the next batch.
        let mut pending_bad: u64 = 0;
        let mut eof = false;
        while !eof || !buf.is_empty() {
            let end = if eof {
                buf.len()
            } else {
                let (ended, end) = fill_chunk(&mut file, &mut buf, path)?;
                eof = ended;
                match end {
                    Some(end) => end,
                    // One line longer than a chunk: read more.
                    None => continue,
                }
            };
            let chunk = &buf[..end];
            let (batch, bad) = decode_lines(decoder, chunk, &shown, line_no)?;
            line_no += count_newlines(chunk) as u64;
            buf.drain(..end);
            if !self.send_decoded(partition, &batch, bad, &mut pending_bad) {
                return Ok(false);
            }
        }
        Ok(self.send_pending_bad(partition, pending_bad))
    }

    /// A decoded JSON chunk: its good rows go on with the bad records counted since the
    /// last batch sent (`pending`, which a chunk of bad lines only adds to).
    fn send_decoded(
        &self,
        partition: usize,
        batch: &RecordBatch,
        bad: u64,
        pending: &mut u64,
    ) -> Continue {
        *pending += bad;
        if batch.num_rows() == 0 {
            return true;
        }
        let bad = std::mem::take(pending);
        self.send_sliced(partition, batch, bad)
    }

    /// The end of a JSON file: bad records not reported yet go with an empty batch.
    fn send_pending_bad(&self, partition: usize, pending: u64) -> Continue {
        if pending == 0 {
            return true;
        }
        let empty = RecordBatch::new_empty(self.schema.clone());
        self.send(partition, empty, pending)
    }

    /// [`FileReader::read_json_with`] on `decoders` threads: this thread reads chunks (cut
    /// at the last newline) and hands them out, up to two per decoder ahead, and takes the
    /// decoded batches back in file order, so rows, positions and line numbers are those
    /// of reading in turn. The decoder threads run the fast path only (the whole chunk
    /// decodes, or nothing); a chunk with a bad line is decoded again here with the
    /// source's decoder, which applies the `bad.records` policy in order.
    fn read_json_parallel(
        &self,
        decoder: &mut JsonDecoder,
        partition: usize,
        path: &Path,
    ) -> Result<Continue> {
        let mut file = File::open(path).map_err(|e| io_error("opening", path, e))?;
        let shown = path.display().to_string();
        let schema = self.schema.clone();
        std::thread::scope(|scope| -> Result<Continue> {
            let pool = DecoderPool::start(
                scope,
                "weir-json",
                self.decoders,
                move |chunk: Arc<Vec<u8>>| {
                    let lines = count_newlines(&chunk) + 1;
                    decode_all(&schema, &chunk, lines).ok()
                },
            )?;
            let mut in_flight: VecDeque<InFlight> = VecDeque::new();
            let mut line_no: u64 = 1;
            let mut pending_bad: u64 = 0;
            let mut buf: Vec<u8> = Vec::with_capacity(CHUNK_BYTES + CHUNK_BYTES / 4);
            let mut eof = false;
            loop {
                // Keep the decoders busy: read ahead until enough chunks are in flight.
                while !eof && in_flight.len() < 2 * self.decoders {
                    let (ended, end) = fill_chunk(&mut file, &mut buf, path)?;
                    eof = ended;
                    let Some(end) = end.filter(|e| *e > 0) else {
                        // No whole line yet (read more), or nothing left.
                        continue;
                    };
                    let rest = buf.split_off(end);
                    let chunk = Arc::new(std::mem::replace(&mut buf, rest));
                    let first_line = line_no;
                    line_no += count_newlines(&chunk) as u64;
                    let Some(result) = pool.submit(chunk.clone()) else {
                        return Err(WeirError::Internal("the JSON decoders stopped".into()));
                    };
                    in_flight.push_back(InFlight {
                        chunk,
                        first_line,
                        result,
                    });
                }
                let Some(next) = in_flight.pop_front() else {
                    return Ok(self.send_pending_bad(partition, pending_bad));
                };
                let decoded = next
                    .result
                    .recv()
                    .map_err(|_| WeirError::Internal("a JSON decoder thread stopped".into()))?;
                let (batch, bad) = match decoded {
                    Some(batch) => (batch, 0),
                    None => decode_lines(decoder, &next.chunk, &shown, next.first_line)?,
                };
                if !self.send_decoded(partition, &batch, bad, &mut pending_bad) {
                    return Ok(false);
                }
            }
        })
    }

    fn read_parquet(&mut self, partition: usize, part: &FilePart) -> Result<Continue> {
        let Some(mut bad) = self.parquet_bad.take() else {
            return Err(WeirError::Internal(
                "file source without a Parquet bad-record policy".into(),
            ));
        };
        let result = self.read_parquet_with(&mut bad, partition, part);
        self.parquet_bad = Some(bad);
        result
    }

    /// Read a Parquet partition: its row groups, or the whole file.
    fn read_parquet_with(
        &self,
        bad: &mut BadRecordHandler,
        partition: usize,
        part: &FilePart,
    ) -> Result<Continue> {
        let path = part.path.as_path();
        let parquet_error = |e: datafusion::parquet::errors::ParquetError| {
            WeirError::external_source(format!("reading Parquet file {}", path.display()), e)
        };
        let missing = |name: &str| {
            WeirError::external(format!(
                "Parquet file {} has no column '{name}'",
                path.display()
            ))
        };
        let file = File::open(path).map_err(|e| io_error("opening", path, e))?;
        // The offset index (where each page starts) lets a decoder thread skip to its rows
        // without reading the pages before them; files without one are read in turn.
        let options = ArrowReaderOptions::new().with_offset_index_policy(PageIndexPolicy::Optional);
        let metadata = ArrowReaderMetadata::load(&file, options).map_err(parquet_error)?;
        let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, metadata.clone());
        let file_schema = builder.schema().clone();
        let roots = builder.parquet_schema().root_schema().get_fields().len();
        let mut indices = Vec::with_capacity(self.schema.fields().len());
        for field in self.schema.fields() {
            let (i, _) = file_schema
                .column_with_name(field.name())
                .ok_or_else(|| missing(field.name()))?;
            if i < roots {
                indices.push(i);
            }
        }
        let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
        let shown = path.display().to_string();
        let (groups, first_row): (Vec<usize>, u64) = match &part.groups {
            Some((range, first_row)) => (range.clone().collect(), *first_row),
            None => ((0..metadata.metadata().num_row_groups()).collect(), 0),
        };
        // Rows of the file before the batch, for the positions of bad rows.
        let mut rows_before: u64 = first_row;
        let mut take = |read: RecordBatch| -> Result<Continue> {
            let rows = read.num_rows() as u64;
            let (good, bad_rows) = self.drop_null_rows(read, bad, |row| {
                format!("file {shown} row {}", rows_before + row as u64 + 1)
            })?;
            rows_before += rows;
            Ok(self.send(partition, good, bad_rows))
        };
        // Decoding Parquet is a smaller share of the work than decoding JSON, and a decoder
        // thread re-reads each column's dictionary for every unit: one worker is left to
        // the rest of the pipeline (with two workers the file is read in turn, which
        // measured faster than two decoders: BENCHMARKS.md, "Workers").
        if self.decoders > 2 && metadata.metadata().offset_index().is_some() {
            return self.read_parquet_parallel(path, &metadata, &groups, &mask, &mut take);
        }
        let reader = builder
            .with_row_groups(groups)
            .with_projection(mask)
            .with_batch_size(self.max_rows)
            .build()
            .map_err(parquet_error)?;
        for batch in reader {
            let batch = batch.map_err(|e| {
                WeirError::external_source(format!("reading Parquet file {shown}"), e)
            })?;
            if !take(self.declared_columns(&batch, path)?)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A batch as read from a Parquet file, in the declared columns and types (every
    /// column nullable: NOT NULL is checked by [`FileReader::drop_null_rows`]).
    fn declared_columns(&self, batch: &RecordBatch, path: &Path) -> Result<RecordBatch> {
        declared_columns(&self.schema, batch, path)
    }

    /// [`FileReader::read_parquet_with`] on `decoders - 1` threads: the rows of row groups
    /// `row_groups` (consecutive) are cut into units of about [`PARQUET_UNIT_ROWS`] rows
    /// (whole batches), decoded on the decoder threads (up to two units per decoder ahead)
    /// and handed to `take` in file order, so batches, positions and bad rows are those of
    /// reading in turn.
    fn read_parquet_parallel(
        &self,
        path: &Path,
        metadata: &ArrowReaderMetadata,
        row_groups: &[usize],
        mask: &ProjectionMask,
        take: &mut dyn FnMut(RecordBatch) -> Result<Continue>,
    ) -> Result<Continue> {
        // Units of whole batches, so the batches are the ones a reader in turn makes
        // (it fills each batch across row groups): a unit is rows [start, end) of the
        // partition, read from the row groups it overlaps.
        let unit_rows = self.max_rows * PARQUET_UNIT_ROWS.div_ceil(self.max_rows);
        let mut starts = Vec::new();
        let mut total = 0usize;
        for &g in row_groups {
            starts.push(total);
            total += metadata.metadata().row_group(g).num_rows().max(0) as usize;
        }
        let mut units: VecDeque<ParquetSpan> = VecDeque::new();
        let mut start = 0;
        while start < total {
            let end = (start + unit_rows).min(total);
            let overlapping: Vec<usize> = (0..starts.len())
                .filter(|&i| {
                    let i_end = starts.get(i + 1).copied().unwrap_or(total);
                    starts[i] < end && i_end > start
                })
                .collect();
            let first = overlapping.first().map_or(0, |&i| starts[i]);
            let groups = overlapping.iter().map(|&i| row_groups[i]).collect();
            units.push_back(ParquetSpan {
                groups,
                offset: start - first,
                len: end - start,
            });
            start = end;
        }
        std::thread::scope(|scope| -> Result<Continue> {
            let decoders = self.decoders - 1;
            let unit = ParquetUnit {
                path,
                metadata,
                mask,
                schema: &self.schema,
                max_rows: self.max_rows,
            };
            let pool = DecoderPool::start(scope, "weir-parquet", decoders, move |span| {
                unit.decode(span)
            })?;
            let mut in_flight: VecDeque<std_mpsc::Receiver<Result<Vec<RecordBatch>>>> =
                VecDeque::new();
            loop {
                while in_flight.len() < 2 * decoders {
                    let Some(unit) = units.pop_front() else {
                        break;
                    };
                    let Some(result) = pool.submit(unit) else {
                        return Err(WeirError::Internal("the Parquet decoders stopped".into()));
                    };
                    in_flight.push_back(result);
                }
                let Some(next) = in_flight.pop_front() else {
                    return Ok(true);
                };
                let batches = next.recv().map_err(|_| {
                    WeirError::Internal("a Parquet decoder thread stopped".into())
                })??;
                for b in batches {
                    if !take(b)? {
                        return Ok(false);
                    }
                }
            }
        })
    }

    /// The rows of `batch` (decoded with every column nullable) that have a value in every
    /// NOT NULL column, in the declared schema, and how many did not; those are handed to
    /// `bad` with the row as JSON, a reason naming the column and `position(row)`.
    fn drop_null_rows(
        &self,
        batch: RecordBatch,
        bad: &mut BadRecordHandler,
        position: impl Fn(usize) -> String,
    ) -> Result<(RecordBatch, u64)> {
        let required: Vec<(&str, &ArrayRef)> = self
            .schema
            .fields()
            .iter()
            .zip(batch.columns())
            .filter(|(f, c)| !f.is_nullable() && c.null_count() > 0)
            .map(|(f, c)| (f.name().as_str(), c))
            .collect();
        if required.is_empty() {
            let good = RecordBatch::try_new(self.schema.clone(), batch.columns().to_vec())?;
            return Ok((good, 0));
        }
        let mut keep = vec![true; batch.num_rows()];
        let mut bad_rows: Vec<(u32, &str)> = Vec::new();
        for (row, k) in keep.iter_mut().enumerate() {
            if let Some((name, _)) = required.iter().find(|(_, c)| c.is_null(row)) {
                *k = false;
                bad_rows.push((row as u32, name));
            }
        }
        let rows = take_record_batch(
            &batch,
            &UInt32Array::from(bad_rows.iter().map(|(r, _)| *r).collect::<Vec<_>>()),
        )?;
        // Each bad row as JSON, in column order, for the dead letter's `raw`.
        let mut raw = Vec::new();
        let mut ends = vec![0];
        weir_engine::json::write_row_records(&rows, &mut raw, |r| ends.push(r.len()));
        let mut handled = Ok(());
        for (k, (row, name)) in bad_rows.iter().enumerate() {
            handled = bad.handle(
                &raw[ends[k]..ends[k + 1]],
                &not_null_reason(name),
                &position(*row as usize),
            );
            if handled.is_err() {
                break;
            }
        }
        bad.flush()?;
        handled?;
        let good = filter_record_batch(&batch, &BooleanArray::from(keep))?;
        let good = RecordBatch::try_new(self.schema.clone(), good.columns().to_vec())?;
        Ok((good, bad_rows.len() as u64))
    }
}

/// Decode a chunk of JSON lines whose first line is line `first_line` of the file `shown`,
/// under the source's `bad.records` policy.
fn decode_lines(
    decoder: &mut JsonDecoder,
    chunk: &[u8],
    shown: &str,
    first_line: u64,
) -> Result<(RecordBatch, u64)> {
    decoder.decode(chunk, |i| {
        format!("file {shown} line {}", first_line + i as u64)
    })
}

/// Read up to [`CHUNK_BYTES`] more of `file` onto `buf`: whether the file has ended, and
/// where the chunk of whole lines ends (`None`: no newline yet, read more; at the end, the
/// rest is a chunk, even without a final newline).
fn fill_chunk(file: &mut File, buf: &mut Vec<u8>, path: &Path) -> Result<(bool, Option<usize>)> {
    let start = buf.len();
    buf.resize(start + CHUNK_BYTES, 0);
    let n = read_full(file, &mut buf[start..]).map_err(|e| io_error("reading", path, e))?;
    buf.truncate(start + n);
    if n == 0 {
        return Ok((true, Some(buf.len())));
    }
    Ok((false, buf.iter().rposition(|b| *b == b'\n').map(|i| i + 1)))
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
