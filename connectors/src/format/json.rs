//! Newline-delimited JSON to Arrow, with a policy for malformed records.
//!
//! [`JsonDecoder`] decodes a chunk of JSON lines straight into Arrow arrays with arrow-json's
//! tape [`Decoder`](datafusion::arrow::json::reader::Decoder). The fast path decodes the
//! whole chunk at once. Only when that fails (a syntax error, a value of the wrong type, a
//! null or missing value in a NOT NULL column) does it go line by line, with a fresh decoder
//! per line, to find the bad lines; the good ones are then decoded together. Bad lines
//! follow [`BadRecords`]: fail the source, skip them, or skip them and write them to the
//! dead-letter output.
//!
//! NOT NULL columns (a source's event-time column always is) are checked here, not by
//! arrow-json: decoding runs with every column nullable, then a null (or missing value) in
//! a NOT NULL column makes the record bad with a reason naming the column.
//!
//! Timestamp columns (`Timestamp(Millisecond, None)`) accept epoch milliseconds and RFC 3339
//! strings; an RFC 3339 string with an offset is converted to UTC.

use crate::dead_letter::DeadLetterWriter;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::record_batch::RecordBatch;
use std::sync::Arc;
use weir_engine::options::Options;
use weir_engine::{Result, WeirError};

/// The option that selects the policy.
pub const BAD_RECORDS_OPTION: &str = "bad.records";

/// What to do with a record that cannot be decoded into the declared schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BadRecords {
    /// Stop the source with [`WeirError::BadRecord`].
    Fail,
    /// Drop it, counting it.
    Skip,
    /// Drop it, counting it and writing it to the dead-letter output (the default).
    #[default]
    DeadLetter,
}

impl BadRecords {
    pub fn as_str(self) -> &'static str {
        match self {
            BadRecords::Fail => "fail",
            BadRecords::Skip => "skip",
            BadRecords::DeadLetter => "dead-letter",
        }
    }
}

/// Take the `bad.records` option (`fail | skip | dead-letter`, default `dead-letter`).
pub fn parse_bad_records(options: &mut Options) -> Result<BadRecords> {
    let v = options.take_choice(
        BAD_RECORDS_OPTION,
        &["fail", "skip", "dead-letter"],
        "dead-letter",
    )?;
    Ok(match v.as_str() {
        "fail" => BadRecords::Fail,
        "skip" => BadRecords::Skip,
        _ => BadRecords::DeadLetter,
    })
}

/// Applies a [`BadRecords`] policy to bad records one at a time (the file source's JSON
/// lines and Parquet rows).
///
/// Clones share one dead-letter writer (a record is written whole under its lock), so
/// several reader threads of one source can hand bad records to one file.
#[derive(Debug, Clone)]
pub struct BadRecordHandler {
    policy: BadRecords,
    dead_letter: Option<Arc<parking_lot::Mutex<DeadLetterWriter>>>,
}

impl BadRecordHandler {
    /// With [`BadRecords::DeadLetter`] and no writer, bad records are only counted.
    pub fn new(policy: BadRecords, dead_letter: Option<DeadLetterWriter>) -> Self {
        BadRecordHandler {
            policy,
            dead_letter: dead_letter.map(|d| Arc::new(parking_lot::Mutex::new(d))),
        }
    }

    pub fn policy(&self) -> BadRecords {
        self.policy
    }

    /// One bad record: `raw` as read, why it is bad, and where it was (`file x line 3`).
    /// `Err` with [`WeirError::BadRecord`] under [`BadRecords::Fail`]; dead letters are
    /// buffered until [`Self::flush`].
    pub fn handle(&mut self, raw: &[u8], reason: &str, position: &str) -> Result<()> {
        match self.policy {
            BadRecords::Fail => Err(WeirError::BadRecord(format!("{position}: {reason}"))),
            BadRecords::Skip => Ok(()),
            BadRecords::DeadLetter => match &self.dead_letter {
                Some(dl) => dl.lock().write(raw, reason, position),
                None => Ok(()),
            },
        }
    }

    /// Make the dead letters written so far reach their file.
    pub fn flush(&mut self) -> Result<()> {
        match &self.dead_letter {
            Some(dl) => dl.lock().flush(),
            None => Ok(()),
        }
    }
}

/// Decodes chunks of JSON lines into batches of exactly one schema.
#[derive(Debug, Clone)]
pub struct JsonDecoder {
    schema: SchemaRef,
    bad: BadRecordHandler,
}

impl JsonDecoder {
    /// Fails if arrow-json cannot decode into one of the schema's types. With
    /// [`BadRecords::DeadLetter`] and no writer, bad records are only counted.
    pub fn new(
        schema: SchemaRef,
        policy: BadRecords,
        dead_letter: Option<DeadLetterWriter>,
    ) -> Result<Self> {
        ReaderBuilder::new(schema.clone())
            .with_batch_size(1)
            .build_decoder()
            .map_err(|e| {
                WeirError::user(format!("the JSON format cannot decode this schema: {e}"))
            })?;
        Ok(JsonDecoder {
            schema,
            bad: BadRecordHandler::new(policy, dead_letter),
        })
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn policy(&self) -> BadRecords {
        self.bad.policy()
    }

    /// Decode a chunk of newline-delimited JSON (complete lines; a final line without a
    /// newline is fine). `position(i)` describes the chunk's 0-based line `i` for error
    /// messages and dead letters, e.g. `file data/x.jsonl line 17`. Blank lines are ignored.
    /// Returns the good rows as one batch of the decoder's schema, and how many lines were
    /// bad.
    pub fn decode(
        &mut self,
        chunk: &[u8],
        position: impl Fn(usize) -> String,
    ) -> Result<(RecordBatch, u64)> {
        let lines = count_newlines(chunk) + 1;
        if let Ok(batch) = decode_all(&self.schema, chunk, lines) {
            return Ok((batch, 0));
        }
        self.decode_slow(chunk, position)
    }

    fn decode_slow(
        &mut self,
        chunk: &[u8],
        position: impl Fn(usize) -> String,
    ) -> Result<(RecordBatch, u64)> {
        let mut good: Vec<u8> = Vec::with_capacity(chunk.len());
        let mut good_lines = 0usize;
        let mut bad = 0u64;
        let mut result = Ok(());
        for (i, line) in chunk.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match check_line(&self.schema, line) {
                Ok(()) => {
                    good.extend_from_slice(line);
                    good.push(b'\n');
                    good_lines += 1;
                }
                Err(reason) => {
                    bad += 1;
                    let raw = line.strip_suffix(b"\r").unwrap_or(line);
                    if let Err(e) = self.bad.handle(raw, &reason, &position(i)) {
                        result = Err(e);
                        break;
                    }
                }
            }
        }
        self.bad.flush()?;
        result?;
        let batch = decode_all(&self.schema, &good, good_lines + 1).map_err(|e| {
            WeirError::Internal(format!(
                "JSON lines that decode one by one failed to decode together: {e}"
            ))
        })?;
        Ok((batch, bad))
    }
}

/// The first NOT NULL column of `schema` that has a null in `batch` (decoded with the
/// same columns).
fn null_in_not_null<'a>(schema: &'a SchemaRef, batch: &RecordBatch) -> Option<&'a str> {
    schema
        .fields()
        .iter()
        .zip(batch.columns())
        .find(|(f, c)| !f.is_nullable() && c.null_count() > 0)
        .map(|(f, _)| f.name().as_str())
}

/// Decode every record in `bytes` into one batch of `schema`. `rows_hint` sizes the
/// decoder; more rows than that still work (several batches are concatenated). A null in
/// a NOT NULL column is an error.
pub(crate) fn decode_all(
    schema: &SchemaRef,
    bytes: &[u8],
    rows_hint: usize,
) -> Result<RecordBatch, ArrowError> {
    let batch = decode_lenient(&super::all_nullable(schema), bytes, rows_hint)?;
    // Fails on a null in a NOT NULL column.
    RecordBatch::try_new(schema.clone(), batch.columns().to_vec())
}

fn decode_lenient(
    schema: &SchemaRef,
    bytes: &[u8],
    rows_hint: usize,
) -> Result<RecordBatch, ArrowError> {
    let mut decoder = ReaderBuilder::new(schema.clone())
        .with_batch_size(rows_hint.max(1))
        .build_decoder()?;
    let mut batches = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = decoder.decode(rest)?;
        rest = &rest[n..];
        if !rest.is_empty() {
            // The decoder stops when its batch is full.
            match decoder.flush()? {
                Some(b) => batches.push(b),
                None if n == 0 => {
                    return Err(ArrowError::JsonError(
                        "the JSON decoder made no progress".to_string(),
                    ));
                }
                None => {}
            }
        }
    }
    if let Some(b) = decoder.flush()? {
        batches.push(b);
    }
    match batches.len() {
        0 => Ok(RecordBatch::new_empty(schema.clone())),
        1 => Ok(batches.swap_remove(0)),
        _ => concat_batches(schema, &batches),
    }
}

/// Why one line does not decode into `schema`, if it does not.
pub(crate) fn check_line(schema: &SchemaRef, line: &[u8]) -> Result<(), String> {
    let mut decoder = ReaderBuilder::new(super::all_nullable(schema))
        .with_batch_size(1)
        .build_decoder()
        .map_err(reason)?;
    let n = decoder.decode(line).map_err(reason)?;
    if !line[n..].iter().all(u8::is_ascii_whitespace) {
        return Err("more than one JSON value on one line".to_string());
    }
    match decoder.flush() {
        Ok(Some(batch)) => match null_in_not_null(schema, &batch) {
            Some(column) => Err(super::not_null_reason(column)),
            None => Ok(()),
        },
        Ok(None) => Err("no JSON object on the line".to_string()),
        Err(e) => Err(reason(e)),
    }
}

/// A record's decoding error as a reason: arrow-json's message without its prefix.
fn reason(e: ArrowError) -> String {
    match e {
        ArrowError::JsonError(m) => m,
        other => other.to_string(),
    }
}

pub(crate) fn count_newlines(bytes: &[u8]) -> usize {
    // A SIMD search: a byte-by-byte count was 5 to 8 % of a JSON file's CPU at two workers,
    // half of it on the reader thread every decoder waits on.
    memchr::memchr_iter(b'\n', bytes).count()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn newlines_are_counted() {
        assert_eq!(count_newlines(b""), 0);
        assert_eq!(count_newlines(b"{}"), 0);
        assert_eq!(count_newlines(b"{}\n{}\r\n\n"), 3);
        let long: Vec<u8> = (0..10_000)
            .map(|i| if i % 7 == 0 { b'\n' } else { b'x' })
            .collect();
        assert_eq!(count_newlines(&long), 1_429);
    }
    use datafusion::arrow::array::{Array, AsArray, Int64Array};
    use datafusion::arrow::datatypes::{
        DataType, Field, Int64Type, Schema, TimeUnit, TimestampMillisecondType,
    };
    use std::sync::Arc;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("name", DataType::Utf8, true),
        ]))
    }

    fn ids(batch: &RecordBatch) -> Vec<i64> {
        batch
            .column(0)
            .as_primitive::<Int64Type>()
            .values()
            .to_vec()
    }

    fn pos(i: usize) -> String {
        format!("file t.jsonl line {}", i + 1)
    }

    const MIXED: &str = concat!(
        "{\"id\": 1, \"ts\": 1700000000000, \"name\": \"a\"}\n",
        "{\"id\": 2, \"ts\": \n",
        "\n",
        "{\"id\": \"three\", \"ts\": 1700000000000}\n",
        "{\"id\": 4, \"name\": \"no ts\"}\n",
        "   \n",
        "{\"id\": 5, \"ts\": \"2023-11-14T22:13:20.5Z\"}\n",
        "{\"id\": 6, \"ts\": null}\n",
        "{\"id\": 7, \"ts\": 1700000000007}"
    );

    #[test]
    fn good_lines_decode_with_millis_and_rfc3339() {
        let chunk = concat!(
            "{\"id\": 1, \"ts\": 1700000000000, \"name\": \"a\"}\n",
            "\n",
            "{\"id\": 2, \"ts\": \"2023-11-14T22:13:20.250Z\", \"extra\": [1, 2]}\n",
            "{\"id\": 3, \"ts\": \"2023-11-15T00:13:20+02:00\"}\r\n",
        );
        let mut d = JsonDecoder::new(schema(), BadRecords::Fail, None).unwrap();
        let (batch, bad) = d.decode(chunk.as_bytes(), pos).unwrap();
        assert_eq!(bad, 0);
        assert_eq!(batch.schema(), schema());
        assert_eq!(ids(&batch), vec![1, 2, 3]);
        let ts = batch.column(1).as_primitive::<TimestampMillisecondType>();
        assert_eq!(
            ts.values().to_vec(),
            vec![1_700_000_000_000, 1_700_000_000_250, 1_700_000_000_000]
        );
        let names = batch.column(2).as_string::<i32>();
        assert_eq!(names.value(0), "a");
        assert!(names.is_null(1));
    }

    #[test]
    fn empty_and_blank_chunks_give_empty_batches() {
        let mut d = JsonDecoder::new(schema(), BadRecords::Fail, None).unwrap();
        for chunk in ["", "\n\n  \n"] {
            let (batch, bad) = d.decode(chunk.as_bytes(), pos).unwrap();
            assert_eq!((batch.num_rows(), bad), (0, 0));
            assert_eq!(batch.schema(), schema());
        }
    }

    #[test]
    fn bad_lines_fail() {
        let mut d = JsonDecoder::new(schema(), BadRecords::Fail, None).unwrap();
        let err = d.decode(MIXED.as_bytes(), pos).unwrap_err();
        assert!(matches!(err, WeirError::BadRecord(_)), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.starts_with("bad record: file t.jsonl line 2: "),
            "{msg}"
        );
    }

    #[test]
    fn bad_lines_skip() {
        let mut d = JsonDecoder::new(schema(), BadRecords::Skip, None).unwrap();
        let (batch, bad) = d.decode(MIXED.as_bytes(), pos).unwrap();
        assert_eq!(ids(&batch), vec![1, 5, 7]);
        assert_eq!(bad, 4);
        let ts = batch.column(1).as_primitive::<TimestampMillisecondType>();
        assert_eq!(ts.value(1), 1_700_000_000_500);
    }

    #[test]
    fn bad_lines_dead_letter() {
        let dir = tempfile::tempdir().unwrap();
        let dl = DeadLetterWriter::new(dir.path(), "downloads");
        let mut d = JsonDecoder::new(schema(), BadRecords::DeadLetter, Some(dl)).unwrap();
        let (batch, bad) = d.decode(MIXED.as_bytes(), pos).unwrap();
        assert_eq!(ids(&batch), vec![1, 5, 7]);
        assert_eq!(bad, 4);
        // A second chunk appends to the same file.
        let (batch, bad) = d
            .decode(b"{\"id\": 8, \"ts\": 1}\nnot json\n", pos)
            .unwrap();
        assert_eq!((ids(&batch), bad), (vec![8], 1));

        let text = std::fs::read_to_string(dir.path().join("dead-letter").join("downloads.jsonl"))
            .unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 5);
        let raws: Vec<&str> = lines.iter().map(|l| l["raw"].as_str().unwrap()).collect();
        assert_eq!(
            raws,
            vec![
                "{\"id\": 2, \"ts\": ",
                "{\"id\": \"three\", \"ts\": 1700000000000}",
                "{\"id\": 4, \"name\": \"no ts\"}",
                "{\"id\": 6, \"ts\": null}",
                "not json",
            ]
        );
        let positions: Vec<&str> = lines
            .iter()
            .map(|l| l["position"].as_str().unwrap())
            .collect();
        assert_eq!(
            positions,
            vec![
                "file t.jsonl line 2",
                "file t.jsonl line 4",
                "file t.jsonl line 5",
                "file t.jsonl line 8",
                "file t.jsonl line 2",
            ]
        );
        for l in &lines {
            assert_eq!(l["source"], "downloads");
            assert!(!l["reason"].as_str().unwrap().is_empty());
            let time = l["time"].as_str().unwrap();
            assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok(), "{time}");
        }
        assert_eq!(
            lines[1]["reason"],
            "whilst decoding field 'id': failed to parse \"three\" as Int64"
        );
        // The event time missing, then null: the reason names the column.
        assert_eq!(
            lines[2]["reason"],
            "missing or null value for NOT NULL column 'ts'"
        );
        assert_eq!(
            lines[3]["reason"],
            "missing or null value for NOT NULL column 'ts'"
        );
    }

    /// Regression: the column was named by parsing arrow-json's error text; now the
    /// decoded columns are checked, so the first NOT NULL column without a value is named
    /// whatever arrow's message says, and nested nulls stay arrow's own reason.
    #[test]
    fn the_missing_not_null_column_is_named_from_the_data() {
        for (line, column) in [
            (r#"{"ts": 1}"#, "id"),
            (r#"{"id": 1, "ts": null, "name": "x"}"#, "ts"),
            (r#"{"id": null, "ts": null}"#, "id"),
            (r#"{"name": "only"}"#, "id"),
        ] {
            assert_eq!(
                check_line(&schema(), line.as_bytes()),
                Err(format!(
                    "missing or null value for NOT NULL column '{column}'"
                )),
                "{line}"
            );
        }
        assert_eq!(check_line(&schema(), br#"{"id": 1, "ts": 2}"#), Ok(()));
    }

    #[test]
    fn many_rows_in_one_chunk() {
        let mut chunk = String::new();
        for i in 0..10_000 {
            chunk.push_str(&format!("{{\"id\": {i}, \"ts\": {i}}}\n"));
        }
        chunk.push_str("oops\n");
        let mut d = JsonDecoder::new(schema(), BadRecords::Skip, None).unwrap();
        let (batch, bad) = d.decode(chunk.as_bytes(), pos).unwrap();
        assert_eq!(bad, 1);
        assert_eq!(
            batch.column(0).as_primitive::<Int64Type>(),
            &Int64Array::from_iter_values(0..10_000)
        );
    }

    #[test]
    fn bad_records_option() {
        let mut o = Options::new([("bad.records".into(), "SKIP".into())]);
        assert_eq!(parse_bad_records(&mut o).unwrap(), BadRecords::Skip);
        assert!(o.is_empty());
        let mut o = Options::default();
        assert_eq!(parse_bad_records(&mut o).unwrap(), BadRecords::DeadLetter);
        let mut o = Options::new([("bad.records".into(), "ignore".into())]);
        let e = parse_bad_records(&mut o).unwrap_err().to_string();
        assert_eq!(
            e,
            "option 'bad.records' must be one of fail | skip | dead-letter, got 'ignore'"
        );
    }
}
