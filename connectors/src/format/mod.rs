//! Record formats: bytes from a source to Arrow batches of the declared schema, and rows of
//! a view back to bytes for sinks.
//!
//! Two shapes of input exist. Files hand over a chunk of newline-delimited JSON, which
//! [`JsonDecoder`] decodes with its own bad-record handling. Message sources (Kafka) hand
//! over a [`RecordChunk`]: many records, one per message, stored back to back; a
//! [`RecordDecoder`] turns a chunk into one batch of the good records and a list of the bad
//! ones with a reason each, and the source applies its bad-record policy (it knows the
//! message coordinates that belong in a dead letter). [`decoder_for`] and [`encoder_for`]
//! pick the implementation from the `format` option.

pub mod avro;
pub mod csv;
pub mod json;
pub mod record_json;

pub use json::{BadRecordHandler, BadRecords, JsonDecoder, parse_bad_records};

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use std::sync::Arc;
use weir_engine::Result;
use weir_engine::options::Options;

/// Many records stored back to back: record `i` is `data[ends[i-1]..ends[i]]`.
#[derive(Debug, Default, Clone)]
pub struct RecordChunk {
    pub data: Vec<u8>,
    pub ends: Vec<usize>,
}

impl RecordChunk {
    pub fn push(&mut self, record: &[u8]) {
        self.data.extend_from_slice(record);
        self.ends.push(self.data.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.data[start..self.ends[i]]
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len()).map(|i| self.get(i))
    }

    pub fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
    }
}

/// Why a record is bad when its NOT NULL `column` (a source's event time always is) is
/// missing or null: every format and the file source say it the same way.
pub(crate) fn not_null_reason(column: &str) -> String {
    format!("missing or null value for NOT NULL column '{column}'")
}

/// `schema` with every column nullable: what decoders decode into, so that a null in a
/// NOT NULL column is found by checking the decoded columns (and named in a reason by
/// [`not_null_reason`]) rather than from a decoder's error text.
pub(crate) fn all_nullable(schema: &SchemaRef) -> SchemaRef {
    if schema.fields().iter().all(|f| f.is_nullable()) {
        return schema.clone();
    }
    Arc::new(Schema::new_with_metadata(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
        schema.metadata().clone(),
    ))
}

/// What decoding a chunk gave.
#[derive(Debug)]
pub struct Decoded {
    /// The good records, in chunk order, in the decoder's schema.
    pub batch: RecordBatch,
    /// The bad records: (index in the chunk, reason), ascending by index.
    pub bad: Vec<(usize, String)>,
}

/// Decodes chunks of records, one record per message, into batches of one schema.
///
/// May block (the Avro decoder fetches writer schemas over HTTP, with retries): call it
/// from a thread of its own or under `spawn_blocking`, never on an async worker.
pub trait RecordDecoder: Send {
    fn schema(&self) -> &SchemaRef;
    /// Decode every record. A record that does not decode is reported in
    /// [`Decoded::bad`], never as an error; `Err` is for failures that are not the record's
    /// fault (a schema registry that cannot be reached after retries).
    fn decode(&mut self, records: &RecordChunk) -> Result<Decoded>;
}

/// Encodes the rows of batches as records, one per row.
///
/// The Avro encoder may block (it registers its schema over HTTP on first use): call an
/// encoder of a format chosen by the user from a thread of its own or under
/// `spawn_blocking`, never on an async worker (the JSON and CSV encoders never block).
pub trait RecordEncoder: Send {
    /// Append one record per row of `batch` to `out`, in row order.
    fn encode(&mut self, batch: &RecordBatch, out: &mut RecordChunk) -> Result<()>;
}

/// The formats message sources and sinks accept.
pub const MESSAGE_FORMATS: &[&str] = &["json", "csv", "avro"];

/// A decoder for `format`, taking that format's own options (for example
/// `schema.registry.url`) from `options`.
pub fn decoder_for(
    format: &str,
    schema: SchemaRef,
    options: &mut Options,
) -> Result<Box<dyn RecordDecoder>> {
    match format {
        "json" => Ok(Box::new(record_json::JsonRecordDecoder::new(schema)?)),
        "csv" => Ok(Box::new(csv::CsvRecordDecoder::new(
            schema,
            csv::CsvOptions::take(options)?,
        )?)),
        "avro" => Ok(Box::new(avro::AvroRecordDecoder::new(
            schema,
            avro::AvroOptions::take(options)?,
        ))),
        other => Err(weir_engine::WeirError::user(format!(
            "format '{other}' is not supported here; valid formats: {}",
            MESSAGE_FORMATS.join(", ")
        ))),
    }
}

/// An encoder for `format`. `subject` names the records for formats that register a
/// schema (Avro: the `<topic>-value` subject).
pub fn encoder_for(
    format: &str,
    schema: SchemaRef,
    options: &mut Options,
    subject: &str,
) -> Result<Box<dyn RecordEncoder>> {
    match format {
        "avro" => Ok(Box::new(avro::AvroRecordEncoder::new(
            schema,
            avro::AvroOptions::take(options)?,
            subject,
        )?)),
        "json" => Ok(Box::new(record_json::JsonRecordEncoder::new(schema))),
        "csv" => Ok(Box::new(csv::CsvRecordEncoder::new(csv::CsvOptions::take(
            options,
        )?))),
        other => Err(weir_engine::WeirError::user(format!(
            "format '{other}' is not supported here; valid formats: {}",
            MESSAGE_FORMATS.join(", ")
        ))),
    }
}
