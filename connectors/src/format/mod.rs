//! Record formats: bytes from a source to Arrow batches of the declared schema.
//!
//! Each format is one module exposing a decoder built from the declared schema and the
//! source's bad-record policy. To add one (CSV, Avro), add a module here and let the
//! connectors that read bytes choose it from their `format` option.

pub mod json;

pub use json::{BadRecords, JsonDecoder, parse_bad_records};
