//! CSV records, one line per message, the declared columns in order, no header.
//!
//! Options: `csv.delimiter` (one character, default `,`), `csv.quote` (default `"`),
//! `csv.null` (the text that means NULL, default the empty field). Timestamp columns accept
//! RFC 3339 text and epoch milliseconds. Decoding runs arrow-csv over the whole chunk; only
//! when that fails, or gives a different number of rows than records, is each record
//! checked alone to find the bad ones and say why.

use super::{Decoded, RecordChunk, RecordDecoder, RecordEncoder};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::csv::reader::Decoder;
use datafusion::arrow::csv::{ReaderBuilder, WriterBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use std::sync::Arc;
use weir_engine::options::Options;
use weir_engine::{Result, WeirError};

/// The CSV options a source or sink may set.
#[derive(Debug, Clone)]
pub struct CsvOptions {
    delimiter: u8,
    quote: u8,
    null: String,
}

fn one_char(options: &mut Options, key: &str, default: u8) -> Result<u8> {
    match options.take(key) {
        None => Ok(default),
        Some(v) if v.len() == 1 && v.is_ascii() => Ok(v.as_bytes()[0]),
        Some(v) if v == "\\t" => Ok(b'\t'),
        Some(v) => Err(WeirError::user(format!(
            "option '{key}' must be one ASCII character, got '{v}'"
        ))),
    }
}

impl CsvOptions {
    pub fn take(options: &mut Options) -> Result<Self> {
        Ok(CsvOptions {
            delimiter: one_char(options, "csv.delimiter", b',')?,
            quote: one_char(options, "csv.quote", b'"')?,
            null: options.take("csv.null").unwrap_or_default(),
        })
    }
}

pub struct CsvRecordDecoder {
    schema: SchemaRef,
    /// The schema arrow-csv decodes into: timestamps as text, converted afterwards, and
    /// every column nullable.
    read_schema: SchemaRef,
    options: CsvOptions,
    null: Option<regex::Regex>,
    lines: Vec<u8>,
}

impl CsvRecordDecoder {
    pub fn new(schema: SchemaRef, options: CsvOptions) -> Result<Self> {
        let read_schema = Arc::new(Schema::new(
            schema
                .fields()
                .iter()
                .map(|f| match f.data_type() {
                    DataType::Timestamp(_, _) => Field::new(f.name(), DataType::Utf8, true),
                    // NOT NULL is checked after decoding, with a clear reason.
                    _ => f.as_ref().clone().with_nullable(true),
                })
                .collect::<Vec<_>>(),
        ));
        let null = if options.null.is_empty() {
            None
        } else {
            Some(
                regex::Regex::new(&format!("^{}$", regex::escape(&options.null)))
                    .map_err(|e| WeirError::user(format!("option 'csv.null': {e}")))?,
            )
        };
        Ok(CsvRecordDecoder {
            schema,
            read_schema,
            options,
            null,
            lines: Vec::new(),
        })
    }

    fn decoder(&self, rows: usize) -> Decoder {
        let mut b = ReaderBuilder::new(self.read_schema.clone())
            .with_header(false)
            .with_delimiter(self.options.delimiter)
            .with_quote(self.options.quote)
            .with_batch_size(rows.max(1));
        if let Some(r) = &self.null {
            b = b.with_null_regex(r.clone());
        }
        b.build_decoder()
    }

    /// Decode `bytes` (records separated by newlines) into the declared schema.
    fn decode_bytes(&self, bytes: &[u8], rows: usize) -> std::result::Result<RecordBatch, String> {
        let mut d = self.decoder(rows);
        let mut batches = Vec::new();
        let mut rest = bytes;
        loop {
            let n = d.decode(rest).map_err(reason)?;
            rest = &rest[n..];
            if let Some(b) = d.flush().map_err(reason)? {
                batches.push(b);
            }
            if rest.is_empty() {
                // Signal the end of input so a last line without a newline is read.
                d.decode(&[]).map_err(reason)?;
                if let Some(b) = d.flush().map_err(reason)? {
                    batches.push(b);
                }
                break;
            }
            if n == 0 {
                return Err("the CSV decoder made no progress".into());
            }
        }
        let raw = match batches.len() {
            0 => RecordBatch::new_empty(self.read_schema.clone()),
            1 => batches.swap_remove(0),
            _ => concat_batches(&self.read_schema, &batches).map_err(reason)?,
        };
        self.convert(raw)
    }

    /// Timestamps from text (RFC 3339 or epoch milliseconds); NOT NULL checks.
    fn convert(&self, raw: RecordBatch) -> std::result::Result<RecordBatch, String> {
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(raw.num_columns());
        for (f, col) in self.schema.fields().iter().zip(raw.columns()) {
            let col = match f.data_type() {
                DataType::Timestamp(unit, tz) => timestamps(col, *unit, tz.clone(), f.name())?,
                _ => col.clone(),
            };
            if !f.is_nullable() && col.null_count() > 0 {
                return Err(super::not_null_reason(f.name()));
            }
            cols.push(col);
        }
        RecordBatch::try_new(self.schema.clone(), cols).map_err(reason)
    }
}

fn timestamps(
    col: &ArrayRef,
    unit: TimeUnit,
    tz: Option<Arc<str>>,
    name: &str,
) -> std::result::Result<ArrayRef, String> {
    let text = col.as_string::<i32>();
    let target = DataType::Timestamp(unit, tz);
    let all_digits = text
        .iter()
        .flatten()
        .all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'-'));
    if all_digits {
        let mut millis = Vec::with_capacity(text.len());
        for v in text.iter() {
            millis.push(match v {
                None => None,
                Some(s) => Some(
                    s.parse::<i64>()
                        .map_err(|_| format!("column '{name}': '{s}' is not a timestamp"))?,
                ),
            });
        }
        let ms: ArrayRef = Arc::new(Int64Array::from(millis));
        let ms = cast(&ms, &DataType::Timestamp(TimeUnit::Millisecond, None)).map_err(reason)?;
        return cast(&ms, &target).map_err(reason);
    }
    // Strict: a value that does not parse is an error, not a NULL.
    let out = cast(col, &target).map_err(|e| format!("column '{name}': {}", reason(e)))?;
    if out.null_count() != col.null_count() {
        return Err(format!("column '{name}': a value is not a timestamp"));
    }
    Ok(out)
}

fn reason(e: ArrowError) -> String {
    match e {
        ArrowError::CsvError(m) | ArrowError::ParseError(m) | ArrowError::CastError(m) => m,
        other => other.to_string(),
    }
}

impl RecordDecoder for CsvRecordDecoder {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn decode(&mut self, records: &RecordChunk) -> Result<Decoded> {
        let mut lines = std::mem::take(&mut self.lines);
        lines.clear();
        for r in records.iter() {
            lines.extend_from_slice(strip_newline(r));
            lines.push(b'\n');
        }
        let fast = self.decode_bytes(&lines, records.len());
        self.lines = lines;
        if let Ok(batch) = fast
            && batch.num_rows() == records.len()
        {
            return Ok(Decoded { batch, bad: vec![] });
        }
        let mut bad = Vec::new();
        let mut good = Vec::new();
        for (i, r) in records.iter().enumerate() {
            let line = strip_newline(r);
            let result = if line.iter().all(u8::is_ascii_whitespace) {
                Err("empty message".to_string())
            } else {
                let mut one = line.to_vec();
                one.push(b'\n');
                self.decode_bytes(&one, 1).and_then(|b| match b.num_rows() {
                    1 => Ok(b),
                    n => Err(format!("one message must be one CSV line, found {n} rows")),
                })
            };
            match result {
                Ok(b) => good.push(b),
                Err(reason) => bad.push((i, reason)),
            }
        }
        let batch = if good.is_empty() {
            RecordBatch::new_empty(self.schema.clone())
        } else {
            concat_batches(&self.schema, &good)?
        };
        Ok(Decoded { batch, bad })
    }
}

fn strip_newline(r: &[u8]) -> &[u8] {
    let r = r.strip_suffix(b"\n").unwrap_or(r);
    r.strip_suffix(b"\r").unwrap_or(r)
}

/// One CSV line per row, no header; timestamps in RFC 3339.
pub struct CsvRecordEncoder {
    options: CsvOptions,
    buf: Vec<u8>,
}

impl CsvRecordEncoder {
    pub fn new(options: CsvOptions) -> Self {
        CsvRecordEncoder {
            options,
            buf: Vec::new(),
        }
    }
}

impl RecordEncoder for CsvRecordEncoder {
    fn encode(&mut self, batch: &RecordBatch, out: &mut RecordChunk) -> Result<()> {
        if batch.num_columns() == 0 {
            // No columns (a global aggregate's message key): an empty record per row.
            (0..batch.num_rows()).for_each(|_| out.push(b""));
            return Ok(());
        }
        self.buf.clear();
        {
            let mut w = WriterBuilder::new()
                .with_header(false)
                .with_delimiter(self.options.delimiter)
                .with_quote(self.options.quote)
                .with_null(self.options.null.clone())
                .with_timestamp_format("%Y-%m-%dT%H:%M:%S%.3fZ".to_string())
                .build(&mut self.buf);
            w.write(batch)?;
        }
        for line in self.buf.split(|b| *b == b'\n') {
            if !line.is_empty() {
                out.push(line);
            }
        }
        if out.len() < batch.num_rows() {
            return Err(WeirError::Internal(
                "CSV encoding gave fewer lines than rows".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{Float64Type, TimestampMillisecondType};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("region", DataType::Utf8, true),
            Field::new("speed", DataType::Float64, true),
        ]))
    }

    fn chunk(records: &[&str]) -> RecordChunk {
        let mut c = RecordChunk::default();
        for r in records {
            c.push(r.as_bytes());
        }
        c
    }

    fn opts(pairs: &[(&str, &str)]) -> CsvOptions {
        let mut o = Options::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        CsvOptions::take(&mut o).unwrap()
    }

    #[test]
    fn decodes_epoch_and_rfc3339_timestamps_quotes_and_nulls() {
        let mut d = CsvRecordDecoder::new(schema(), opts(&[])).unwrap();
        let out = d
            .decode(&chunk(&[
                "1714521600000,EU,1.5",
                "2024-05-01T00:00:01Z,\"US, east\",",
                "1714521602000,,2.5\n",
            ]))
            .unwrap();
        assert!(out.bad.is_empty(), "{:?}", out.bad);
        let ts = out
            .batch
            .column(0)
            .as_primitive::<TimestampMillisecondType>();
        assert_eq!(
            ts.values().to_vec(),
            vec![1714521600000, 1714521601000, 1714521602000]
        );
        let region = out.batch.column(1).as_string::<i32>();
        assert_eq!(region.value(1), "US, east");
        assert!(region.is_null(2));
        let speed = out.batch.column(2).as_primitive::<Float64Type>();
        assert!(speed.is_null(1));
    }

    #[test]
    fn names_each_bad_record() {
        let mut d = CsvRecordDecoder::new(schema(), opts(&[])).unwrap();
        let out = d
            .decode(&chunk(&[
                "1714521600000,EU,1.5",
                "1714521600000,EU,fast",
                ",EU,1.0",
                "",
                "1714521600000,EU",
                "yesterday,EU,1.0",
                "1714521601000,US,2.0",
            ]))
            .unwrap();
        assert_eq!(out.batch.num_rows(), 2);
        let bad: Vec<usize> = out.bad.iter().map(|(i, _)| *i).collect();
        assert_eq!(bad, vec![1, 2, 3, 4, 5]);
        assert_eq!(
            out.bad[1].1,
            "missing or null value for NOT NULL column 'ts'"
        );
        assert_eq!(out.bad[2].1, "empty message");
        for (_, reason) in &out.bad {
            assert!(!reason.is_empty());
        }
    }

    /// A line without its event time (empty, the null text, or too few fields) is a bad
    /// record naming the column.
    #[test]
    fn lines_without_their_event_time_are_bad() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("region", DataType::Utf8, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
        ]));
        let mut d = CsvRecordDecoder::new(schema, opts(&[("csv.null", "NULL")])).unwrap();
        let out = d
            .decode(&chunk(&[
                "EU,1714521600000",
                "US,NULL",
                "AP,",
                "SA",
                "EU,2024-05-01T00:00:01Z",
            ]))
            .unwrap();
        let ts = out
            .batch
            .column(1)
            .as_primitive::<TimestampMillisecondType>();
        assert_eq!(ts.values().to_vec(), vec![1714521600000, 1714521601000]);
        let bad: Vec<usize> = out.bad.iter().map(|(i, _)| *i).collect();
        assert_eq!(bad, vec![1, 2, 3]);
        assert_eq!(
            out.bad[0].1,
            "missing or null value for NOT NULL column 'ts'"
        );
    }

    #[test]
    fn no_columns_encode_as_empty_records() {
        let empty = RecordBatch::try_new_with_options(
            Arc::new(Schema::empty()),
            vec![],
            &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(2)),
        )
        .unwrap();
        let mut out = RecordChunk::default();
        CsvRecordEncoder::new(opts(&[]))
            .encode(&empty, &mut out)
            .unwrap();
        assert_eq!(out.iter().collect::<Vec<_>>(), vec![b"" as &[u8], b""]);
    }

    #[test]
    fn round_trip_with_options() {
        let o = opts(&[("csv.delimiter", ";"), ("csv.null", "NULL")]);
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(TimestampMillisecondArray::from(vec![
                    1714521600000,
                    1714521600250,
                ])),
                Arc::new(StringArray::from(vec![Some("a;b"), None])),
                Arc::new(Float64Array::from(vec![Some(1.25), None])),
            ],
        )
        .unwrap();
        let mut records = RecordChunk::default();
        CsvRecordEncoder::new(o.clone())
            .encode(&batch, &mut records)
            .unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records.get(1), b"2024-05-01T00:00:00.250Z;NULL;NULL");
        let out = CsvRecordDecoder::new(schema(), o)
            .unwrap()
            .decode(&records)
            .unwrap();
        assert!(out.bad.is_empty(), "{:?}", out.bad);
        assert_eq!(out.batch, batch);
    }
}
