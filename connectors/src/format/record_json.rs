//! JSON records, one object per message: the message-source side of the `json` format.
//!
//! The chunk is laid out as JSON lines (a raw newline inside a valid JSON document can only
//! be whitespace, so it is replaced by a space) and decoded in one go by arrow-json; only
//! when that fails, or yields a different number of rows than records, is each record
//! checked on its own to find the bad ones.

use super::json::{check_line, decode_all};
use super::{Decoded, RecordChunk, RecordDecoder, RecordEncoder};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::record_batch::RecordBatch;
use weir_engine::{Result, WeirError};

pub struct JsonRecordDecoder {
    schema: SchemaRef,
    lines: Vec<u8>,
}

impl JsonRecordDecoder {
    pub fn new(schema: SchemaRef) -> Result<Self> {
        ReaderBuilder::new(schema.clone())
            .with_batch_size(1)
            .build_decoder()
            .map_err(|e| {
                WeirError::user(format!("the JSON format cannot decode this schema: {e}"))
            })?;
        Ok(JsonRecordDecoder {
            schema,
            lines: Vec::new(),
        })
    }

    fn lay_out(&mut self, records: &RecordChunk, keep: impl Fn(usize) -> bool) -> usize {
        self.lines.clear();
        let mut n = 0;
        for (i, r) in records.iter().enumerate() {
            if !keep(i) {
                continue;
            }
            self.lines.extend(
                r.iter()
                    .map(|b| if *b == b'\n' || *b == b'\r' { b' ' } else { *b }),
            );
            self.lines.push(b'\n');
            n += 1;
        }
        n
    }
}

impl RecordDecoder for JsonRecordDecoder {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn decode(&mut self, records: &RecordChunk) -> Result<Decoded> {
        let n = self.lay_out(records, |_| true);
        if let Ok(batch) = decode_all(&self.schema, &self.lines, n)
            && batch.num_rows() == n
        {
            return Ok(Decoded { batch, bad: vec![] });
        }
        let mut bad = Vec::new();
        for (i, r) in records.iter().enumerate() {
            let reason = if r.iter().all(u8::is_ascii_whitespace) {
                Err("empty message".to_string())
            } else {
                let line: Vec<u8> = r
                    .iter()
                    .map(|b| if *b == b'\n' || *b == b'\r' { b' ' } else { *b })
                    .collect();
                check_line(&self.schema, &line)
            };
            if let Err(reason) = reason {
                bad.push((i, reason));
            }
        }
        let mut is_bad = vec![false; records.len()];
        for (i, _) in &bad {
            is_bad[*i] = true;
        }
        let n = self.lay_out(records, |i| !is_bad[i]);
        let batch = decode_all(&self.schema, &self.lines, n).map_err(|e| {
            WeirError::Internal(format!(
                "JSON records that decode one by one failed to decode together: {e}"
            ))
        })?;
        if batch.num_rows() != n {
            return Err(WeirError::Internal(format!(
                "{n} JSON records decoded into {} rows",
                batch.num_rows()
            )));
        }
        Ok(Decoded { batch, bad })
    }
}

/// One JSON object per row, in the engine's one row encoding ([`weir_engine::json`],
/// `docs/json.md`): timestamps as RFC 3339 in UTC, nulls written out.
pub struct JsonRecordEncoder;

impl JsonRecordEncoder {
    pub fn new(_schema: SchemaRef) -> Self {
        JsonRecordEncoder
    }
}

impl RecordEncoder for JsonRecordEncoder {
    fn encode(&mut self, batch: &RecordBatch, out: &mut RecordChunk) -> Result<()> {
        let RecordChunk { data, ends } = out;
        weir_engine::json::write_row_records(batch, data, |d| ends.push(d.len()));
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{AsArray, Int64Array, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};
    use std::sync::Arc;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]))
    }

    fn chunk(records: &[&str]) -> RecordChunk {
        let mut c = RecordChunk::default();
        for r in records {
            c.push(r.as_bytes());
        }
        c
    }

    #[test]
    fn decodes_good_records_and_names_bad_ones() {
        let mut d = JsonRecordDecoder::new(schema()).unwrap();
        let c = chunk(&[
            r#"{"id": 1, "name": "a"}"#,
            "{\"id\":\n 2}",
            r#"{"id": "x"}"#,
            "",
            r#"{"id": 3}{"id": 4}"#,
            r#"{"name": "no id"}"#,
            r#"{"id": 5}"#,
        ]);
        let d = d.decode(&c).unwrap();
        let ids = d.batch.column(0).as_primitive::<Int64Type>();
        assert_eq!(ids, &Int64Array::from(vec![1, 2, 5]));
        let bad: Vec<usize> = d.bad.iter().map(|(i, _)| *i).collect();
        assert_eq!(bad, vec![2, 3, 4, 5]);
        assert_eq!(d.bad[1].1, "empty message");
        assert_eq!(d.bad[2].1, "more than one JSON value on one line");
        assert_eq!(d.bad[3].1, "missing or null value for NOT NULL column 'id'");
    }

    #[test]
    fn encodes_one_record_per_row() {
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(datafusion::arrow::array::StringArray::from(vec![
                    Some("a"),
                    None,
                ])),
            ],
        )
        .unwrap();
        let mut out = RecordChunk::default();
        // Appends after what the chunk holds.
        out.push(b"before");
        JsonRecordEncoder::new(schema())
            .encode(&batch, &mut out)
            .unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out.get(1), br#"{"id":1,"name":"a"}"#);
        assert_eq!(out.get(2), br#"{"id":2,"name":null}"#);
    }

    /// A message without its event time (missing or null) is a bad record naming the
    /// column, in a chunk whose other messages decode.
    #[test]
    fn messages_without_their_event_time_are_bad() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
        ]));
        let mut d = JsonRecordDecoder::new(schema).unwrap();
        let out = d
            .decode(&chunk(&[
                r#"{"id": 1, "ts": 1714557600000}"#,
                r#"{"id": 2}"#,
                r#"{"id": 3, "ts": null}"#,
                r#"{"id": 4, "ts": "2024-05-01T10:00:01Z"}"#,
            ]))
            .unwrap();
        let ids = out.batch.column(0).as_primitive::<Int64Type>();
        assert_eq!(ids, &Int64Array::from(vec![1, 4]));
        let reason = "missing or null value for NOT NULL column 'ts'".to_string();
        assert_eq!(out.bad, vec![(1, reason.clone()), (2, reason)]);
    }

    /// Regression: the sink wrote timestamps as arrow's JSON writer does, without a time
    /// zone (`2024-05-01T10:00:00`), unlike the API; now as every JSON Weir writes.
    #[test]
    fn timestamps_are_rfc3339_utc() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        )]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(TimestampMillisecondArray::from(vec![
                1_714_557_600_250,
            ]))],
        )
        .unwrap();
        let mut out = RecordChunk::default();
        JsonRecordEncoder::new(schema)
            .encode(&batch, &mut out)
            .unwrap();
        assert_eq!(out.get(0), br#"{"ts":"2024-05-01T10:00:00.250Z"}"#);
        // The source side reads it back as the same instant.
        let mut d = JsonRecordDecoder::new(batch.schema()).unwrap();
        assert_eq!(d.decode(&out).unwrap().batch, batch);
    }
}
