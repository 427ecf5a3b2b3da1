//! Avro in the Confluent wire format: byte 0 is the magic 0, bytes 1..5 the schema id
//! (big-endian), then one Avro binary datum written with that schema.
//!
//! Decoding fetches each writer schema once from a Confluent-compatible schema registry
//! (`GET {schema.registry.url}/schemas/ids/{id}`) and keeps it. Declared columns are matched
//! to the record's fields by name; a declared column the writer schema lacks is NULL (or makes
//! the record bad if it is NOT NULL). Unions with null, the primitive types, `date`,
//! `timestamp-millis`/`-micros`/`-nanos` (and their `local-` forms) and plain longs as epoch
//! milliseconds convert to the declared types.
//!
//! Encoding (sinks) derives a record schema from the view's columns (nullable columns as
//! `["null", T]`, timestamps as `long` with `timestamp-millis`), registers it under the
//! subject (`<topic>-value`, `<topic>-key`) on first use, and writes magic, id and datum per
//! row.
//!
//! The registry client is blocking (ureq) and retries with the engine's [`Backoff`]: the
//! decoder runs on the Kafka source's own thread and the encoder under the Kafka sink's
//! blocking task, never on an async worker.

use super::{Decoded, RecordChunk, RecordDecoder, RecordEncoder};
use apache_avro::Schema as AvroSchema;
use apache_avro::types::Value;
use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use weir_engine::backoff::{Backoff, retry_blocking};
use weir_engine::options::Options;
use weir_engine::{Result, WeirError};

/// The schema-registry options of the `avro` format.
#[derive(Debug, Clone)]
pub struct AvroOptions {
    url: String,
    basic_auth: Option<String>,
}

impl AvroOptions {
    pub fn take(options: &mut Options) -> Result<Self> {
        let url = options
            .take("schema.registry.url")
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| {
                WeirError::user(
                    "format 'avro' needs 'schema.registry.url' (a Confluent-compatible schema \
                     registry)",
                )
            })?;
        Ok(AvroOptions {
            url: url.trim_end_matches('/').to_string(),
            basic_auth: options.take("schema.registry.basic.auth"),
        })
    }
}

/// Retrying a registry request that failed in transport or with a 5xx answer: 5 attempts
/// over about 3 seconds.
const REGISTRY_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(200), Duration::from_secs(2)).max_retries(4);

/// A small blocking client for the two registry calls Weir makes.
struct Registry {
    options: AvroOptions,
    agent: ureq::Agent,
    schemas: HashMap<u32, std::result::Result<Arc<AvroSchema>, String>>,
}

impl Registry {
    fn new(options: AvroOptions) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .into();
        Registry {
            options,
            agent,
            schemas: HashMap::new(),
        }
    }

    fn auth(&self) -> Option<String> {
        use base64::Engine;
        self.options.basic_auth.as_ref().map(|a| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(a)
            )
        })
    }

    /// The writer schema for `id`: `Ok(Err(reason))` when the registry does not know it
    /// (the record is bad), `Err` when the registry cannot be reached after retries.
    fn schema(&mut self, id: u32) -> Result<std::result::Result<Arc<AvroSchema>, String>> {
        if let Some(s) = self.schemas.get(&id) {
            return Ok(s.clone());
        }
        let url = format!("{}/schemas/ids/{id}", self.options.url);
        let (status, body) = self.request(|agent, auth| {
            let mut r = agent.get(&url);
            if let Some(a) = auth {
                r = r.header("Authorization", a);
            }
            r.call()
        })?;
        let result = if status == 200 {
            serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["schema"].as_str().map(str::to_string))
                .ok_or_else(|| format!("schema registry answered without a schema for id {id}"))
                .and_then(|text| {
                    AvroSchema::parse_str(&text)
                        .map(Arc::new)
                        .map_err(|e| format!("schema id {id} does not parse: {e}"))
                })
        } else {
            Err(format!(
                "schema id {id} is not in the schema registry (HTTP {status})"
            ))
        };
        self.schemas.insert(id, result.clone());
        Ok(result)
    }

    /// Register `schema` under `subject`; returns its id.
    fn register(&mut self, subject: &str, schema: &str) -> Result<u32> {
        let url = format!("{}/subjects/{subject}/versions", self.options.url);
        let body = serde_json::json!({ "schema": schema }).to_string();
        let (status, text) = self.request(|agent, auth| {
            let mut r = agent
                .post(&url)
                .header("Content-Type", "application/vnd.schemaregistry.v1+json");
            if let Some(a) = auth {
                r = r.header("Authorization", a);
            }
            r.send(body.as_str())
        })?;
        if status != 200 {
            return Err(WeirError::external(format!(
                "registering the Avro schema for subject '{subject}' failed (HTTP {status}): \
                 {text}"
            )));
        }
        serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["id"].as_u64())
            .map(|id| id as u32)
            .ok_or_else(|| {
                WeirError::external(format!(
                    "schema registry answered without an id for subject '{subject}': {text}"
                ))
            })
    }

    /// One request with retries on transport errors and 5xx answers (blocking: see the
    /// module docs).
    fn request(
        &self,
        call: impl Fn(
            &ureq::Agent,
            Option<&str>,
        ) -> std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, String)> {
        let auth = self.auth();
        let url = &self.options.url;
        let attempt = || match call(&self.agent, auth.as_deref()) {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let body = resp.body_mut().read_to_string().map_err(|e| {
                    WeirError::external_source(
                        format!("reading the answer of the schema registry at {url}"),
                        e,
                    )
                    .retryable()
                })?;
                if status >= 500 {
                    return Err(WeirError::external(format!(
                        "the schema registry at {url} answered HTTP {status}: {body}"
                    ))
                    .retryable());
                }
                Ok((status, body))
            }
            Err(e) => Err(WeirError::external_source(
                format!("the schema registry at {url} cannot be reached"),
                e,
            )
            .retryable()),
        };
        retry_blocking(&REGISTRY_BACKOFF, attempt, |e, retry, wait| {
            tracing::warn!(error = %e, retry, wait_ms = wait.as_millis() as u64,
                "schema registry request failed; retrying");
        })
    }
}

/// A datum in the Confluent wire format: the magic 0, the schema id, the datum.
fn confluent_record(id: u32, datum: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(5 + datum.len());
    record.push(0);
    record.extend_from_slice(&id.to_be_bytes());
    record.extend_from_slice(datum);
    record
}

pub struct AvroRecordDecoder {
    schema: SchemaRef,
    registry: Registry,
}

impl AvroRecordDecoder {
    pub fn new(schema: SchemaRef, options: AvroOptions) -> Self {
        AvroRecordDecoder {
            schema,
            registry: Registry::new(options),
        }
    }

    /// One record's values in the declared column order, or why it is bad.
    fn record(&mut self, bytes: &[u8]) -> Result<std::result::Result<Vec<ScalarValue>, String>> {
        if bytes.len() < 5 || bytes[0] != 0 {
            return Ok(Err(
                "not in the Confluent Avro wire format (magic byte 0, then a 4-byte schema id)"
                    .into(),
            ));
        }
        let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        let writer = match self.registry.schema(id)? {
            Ok(s) => s,
            Err(reason) => return Ok(Err(reason)),
        };
        let mut rest = &bytes[5..];
        #[allow(deprecated)]
        let value = match apache_avro::from_avro_datum(&writer, &mut rest, None) {
            Ok(v) => v,
            Err(e) => return Ok(Err(format!("undecodable Avro datum (schema id {id}): {e}"))),
        };
        let Value::Record(fields) = value else {
            return Ok(Err(format!("schema id {id} is not an Avro record")));
        };
        let mut row = Vec::with_capacity(self.schema.fields().len());
        for f in self.schema.fields() {
            let v = fields
                .iter()
                .find(|(name, _)| name == f.name())
                .map(|(_, v)| v);
            let scalar = match v {
                None => ScalarValue::try_from(f.data_type())?,
                Some(v) => match to_scalar(v, f.data_type()) {
                    Ok(s) => s,
                    Err(e) => return Ok(Err(format!("column '{}': {e}", f.name()))),
                },
            };
            if scalar.is_null() && !f.is_nullable() {
                return Ok(Err(super::not_null_reason(f.name())));
            }
            row.push(scalar);
        }
        Ok(Ok(row))
    }
}

fn to_scalar(v: &Value, dt: &DataType) -> std::result::Result<ScalarValue, String> {
    let ms = |x: i64| ScalarValue::TimestampMillisecond(Some(x), None);
    let s = match v {
        Value::Union(_, inner) => return to_scalar(inner, dt),
        Value::Null => return ScalarValue::try_from(dt).map_err(|e| e.to_string()),
        Value::Record(_) | Value::Array(_) | Value::Map(_) => return nested_scalar(v, dt),
        Value::Boolean(b) => ScalarValue::Boolean(Some(*b)),
        Value::Int(i) => ScalarValue::Int64(Some(i64::from(*i))),
        Value::Long(l) => ScalarValue::Int64(Some(*l)),
        Value::Float(f) => ScalarValue::Float64(Some(f64::from(*f))),
        Value::Double(d) => ScalarValue::Float64(Some(*d)),
        Value::String(s) | Value::Enum(_, s) => ScalarValue::Utf8(Some(s.clone())),
        Value::Uuid(u) => ScalarValue::Utf8(Some(u.to_string())),
        Value::Bytes(b) | Value::Fixed(_, b) => ScalarValue::Binary(Some(b.clone())),
        Value::Date(d) => ScalarValue::Date32(Some(*d)),
        Value::TimestampMillis(x) | Value::LocalTimestampMillis(x) => ms(*x),
        Value::TimestampMicros(x) | Value::LocalTimestampMicros(x) => ms(x.div_euclid(1000)),
        Value::TimestampNanos(x) | Value::LocalTimestampNanos(x) => ms(x.div_euclid(1_000_000)),
        other => return Err(format!("Avro value {other:?} is not supported")),
    };
    if &s.data_type() == dt {
        return Ok(s);
    }
    s.cast_to(dt)
        .map_err(|_| format!("cannot convert {} to {dt}", s.data_type()))
}

/// An Avro record, array or map as the declared STRUCT, ARRAY or MAP: fields by name
/// (missing ones NULL), items and values converted in turn; a failure names the path to
/// the value (`field 'address': field 'zip': ...`, `item 2: ...`, `key 'k': ...`). Map
/// entries come out in key order (Avro maps have none).
fn nested_scalar(v: &Value, dt: &DataType) -> std::result::Result<ScalarValue, String> {
    use datafusion::arrow::array::{Array, ListArray, MapArray, StringArray, StructArray};
    use datafusion::arrow::buffer::OffsetBuffer;
    let values_array =
        |values: Vec<ScalarValue>, t: &DataType| -> std::result::Result<ArrayRef, String> {
            if values.is_empty() {
                Ok(datafusion::arrow::array::new_empty_array(t))
            } else {
                ScalarValue::iter_to_array(values).map_err(|e| e.to_string())
            }
        };
    let one = |n: usize| OffsetBuffer::new(vec![0i32, n as i32].into());
    match (v, dt) {
        (Value::Record(fields), DataType::Struct(targets)) => {
            let mut b = datafusion::common::scalar::ScalarStructBuilder::new();
            for t in targets.iter() {
                let s = match fields.iter().find(|(n, _)| n == t.name()) {
                    None => ScalarValue::try_from(t.data_type()).map_err(|e| e.to_string())?,
                    Some((_, v)) => to_scalar(v, t.data_type())
                        .map_err(|e| format!("field '{}': {e}", t.name()))?,
                };
                b = b.with_scalar(t.clone(), s);
            }
            b.build().map_err(|e| e.to_string())
        }
        (Value::Array(items), DataType::List(item)) => {
            let scalars = items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    to_scalar(v, item.data_type()).map_err(|e| format!("item {}: {e}", i + 1))
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let values = values_array(scalars, item.data_type())?;
            let list = ListArray::try_new(item.clone(), one(values.len()), values, None)
                .map_err(|e| e.to_string())?;
            Ok(ScalarValue::List(Arc::new(list)))
        }
        (Value::Map(m), DataType::Map(entries, sorted)) => {
            let DataType::Struct(kv) = entries.data_type() else {
                return Err(format!("map type {dt} has no key and value"));
            };
            let (Some(key_field), Some(value_field)) = (kv.first(), kv.get(1)) else {
                return Err(format!("map type {dt} has no key and value"));
            };
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let values = keys
                .iter()
                .map(|k| {
                    to_scalar(&m[*k], value_field.data_type())
                        .map_err(|e| format!("key '{k}': {e}"))
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let key_array: ArrayRef = Arc::new(StringArray::from_iter_values(keys.iter()));
            let key_array = datafusion::arrow::compute::cast(&key_array, key_field.data_type())
                .map_err(|_| format!("map keys cannot be read as {}", key_field.data_type()))?;
            let value_array = values_array(values, value_field.data_type())?;
            let n = key_array.len();
            let pairs = StructArray::try_new(kv.clone(), vec![key_array, value_array], None)
                .map_err(|e| e.to_string())?;
            let map = MapArray::try_new(entries.clone(), one(n), pairs, None, *sorted)
                .map_err(|e| e.to_string())?;
            Ok(ScalarValue::Map(Arc::new(map)))
        }
        (Value::Record(_), _) => Err(format!("an Avro record where {dt} is declared")),
        (Value::Array(_), _) => Err(format!("an Avro array where {dt} is declared")),
        (Value::Map(_), _) => Err(format!("an Avro map where {dt} is declared")),
        (other, _) => Err(format!("Avro value {other:?} where {dt} is declared")),
    }
}

impl RecordDecoder for AvroRecordDecoder {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn decode(&mut self, records: &RecordChunk) -> Result<Decoded> {
        let width = self.schema.fields().len();
        let mut columns: Vec<Vec<ScalarValue>> = vec![Vec::with_capacity(records.len()); width];
        let mut bad = Vec::new();
        for i in 0..records.len() {
            match self.record(records.get(i))? {
                Ok(row) => {
                    for (c, v) in columns.iter_mut().zip(row) {
                        c.push(v);
                    }
                }
                Err(reason) => bad.push((i, reason)),
            }
        }
        let arrays: Vec<ArrayRef> = self
            .schema
            .fields()
            .iter()
            .zip(columns)
            .map(|(f, values)| {
                if values.is_empty() {
                    Ok(datafusion::arrow::array::new_empty_array(f.data_type()))
                } else {
                    ScalarValue::iter_to_array(values)
                }
            })
            .collect::<std::result::Result<_, _>>()?;
        let batch = RecordBatch::try_new_with_options(
            self.schema.clone(),
            arrays,
            &datafusion::arrow::record_batch::RecordBatchOptions::new()
                .with_row_count(Some(records.len() - bad.len())),
        )?;
        Ok(Decoded { batch, bad })
    }
}

pub struct AvroRecordEncoder {
    schema: SchemaRef,
    avro: AvroSchema,
    avro_text: String,
    subject: String,
    registry: Registry,
    id: Option<u32>,
}

impl AvroRecordEncoder {
    pub fn new(schema: SchemaRef, options: AvroOptions, subject: &str) -> Result<Self> {
        let avro_text = avro_schema_for(&schema, subject)?;
        let avro = AvroSchema::parse_str(&avro_text)
            .map_err(|e| WeirError::Internal(format!("derived Avro schema: {e}")))?;
        Ok(AvroRecordEncoder {
            schema,
            avro,
            avro_text,
            subject: subject.to_string(),
            registry: Registry::new(options),
            id: None,
        })
    }
}

/// The Avro record schema Weir writes for `schema`.
fn avro_schema_for(schema: &SchemaRef, subject: &str) -> Result<String> {
    let name: String = subject
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let name = if name.starts_with(|c: char| c.is_ascii_digit()) {
        format!("_{name}")
    } else {
        name
    };
    let fields = schema
        .fields()
        .iter()
        .map(|f| avro_field(f, &name))
        .collect::<Result<Vec<_>>>()?;
    Ok(serde_json::json!({"type": "record", "name": name, "fields": fields}).to_string())
}

/// A field of an Avro record: nullable as a union with null (default null).
fn avro_field(f: &datafusion::arrow::datatypes::Field, parent: &str) -> Result<serde_json::Value> {
    let t = avro_type(f.data_type(), &format!("{parent}_{}", f.name()))
        .map_err(|e| WeirError::user(format!("column '{}' {e}", f.name())))?;
    Ok(if f.is_nullable() {
        serde_json::json!({"name": f.name(), "type": ["null", t], "default": null})
    } else {
        serde_json::json!({"name": f.name(), "type": t})
    })
}

/// The Avro type of an Arrow type; a struct is a record named after its path (`name`),
/// which keeps record names unique within the schema.
fn avro_type(dt: &DataType, name: &str) -> std::result::Result<serde_json::Value, String> {
    let nullable = |t: serde_json::Value, n: bool| {
        if n { serde_json::json!(["null", t]) } else { t }
    };
    Ok(match dt {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => serde_json::json!("string"),
        DataType::Boolean => serde_json::json!("boolean"),
        DataType::Int8 | DataType::Int16 | DataType::Int32 => serde_json::json!("int"),
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => serde_json::json!("long"),
        DataType::Float32 => serde_json::json!("float"),
        DataType::Float64 | DataType::Decimal128(_, _) => serde_json::json!("double"),
        DataType::Binary | DataType::LargeBinary => serde_json::json!("bytes"),
        DataType::Date32 => serde_json::json!({"type": "int", "logicalType": "date"}),
        DataType::Timestamp(_, _) => {
            serde_json::json!({"type": "long", "logicalType": "timestamp-millis"})
        }
        DataType::Struct(fields) => {
            let fields = fields
                .iter()
                .map(|f| avro_field(f, name).map_err(|e| e.to_string()))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            serde_json::json!({"type": "record", "name": name, "fields": fields})
        }
        DataType::List(item) | DataType::LargeList(item) => serde_json::json!({
            "type": "array",
            "items": nullable(avro_type(item.data_type(), &format!("{name}_item"))?, item.is_nullable())
        }),
        DataType::Map(entries, _) => {
            let DataType::Struct(kv) = entries.data_type() else {
                return Err(format!("of type {dt} cannot be written as Avro"));
            };
            match (kv.first().map(|k| k.data_type()), kv.get(1)) {
                (Some(DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View), Some(v)) => {
                    serde_json::json!({
                        "type": "map",
                        "values": nullable(avro_type(v.data_type(), &format!("{name}_value"))?, v.is_nullable())
                    })
                }
                _ => return Err(format!("of type {dt}: Avro map keys are strings")),
            }
        }
        other => return Err(format!("of type {other} cannot be written as Avro")),
    })
}

/// A nested value (struct, list or map scalar) as Avro, nullable members as unions.
fn nested_to_avro(s: &ScalarValue, dt: &DataType) -> std::result::Result<Value, String> {
    use datafusion::arrow::array::{Array, AsArray};
    let member = |a: &ArrayRef, i: usize, t: &DataType, nullable: bool| {
        let v = to_avro(
            ScalarValue::try_from_array(a, i).map_err(|e| e.to_string())?,
            t,
        )?;
        Ok::<Value, String>(match (nullable, v) {
            (false, v) => v,
            (true, Value::Null) => Value::Union(0, Box::new(Value::Null)),
            (true, v) => Value::Union(1, Box::new(v)),
        })
    };
    match s {
        ScalarValue::Struct(a) => {
            let DataType::Struct(fields) = dt else {
                return Err(format!("a struct where {dt} is declared"));
            };
            let mut out = Vec::with_capacity(fields.len());
            for (f, col) in fields.iter().zip(a.columns()) {
                out.push((
                    f.name().clone(),
                    member(col, 0, f.data_type(), f.is_nullable())
                        .map_err(|e| format!("field '{}': {e}", f.name()))?,
                ));
            }
            Ok(Value::Record(out))
        }
        ScalarValue::List(a) => {
            let values = a.value(0);
            let (t, n) = match dt {
                DataType::List(item) => (item.data_type(), item.is_nullable()),
                _ => return Err(format!("a list where {dt} is declared")),
            };
            (0..values.len())
                .map(|i| member(&values, i, t, n).map_err(|e| format!("item {}: {e}", i + 1)))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map(Value::Array)
        }
        ScalarValue::Map(a) => {
            let entries = a.value(0);
            let keys = datafusion::arrow::compute::cast(entries.column(0), &DataType::Utf8)
                .map_err(|e| e.to_string())?;
            let keys = keys.as_string::<i32>();
            let (t, n) = match entries.fields().get(1) {
                Some(v) => (v.data_type().clone(), v.is_nullable()),
                None => return Err(format!("map type {dt} has no values")),
            };
            let mut out = std::collections::HashMap::new();
            for i in 0..entries.len() {
                out.insert(
                    keys.value(i).to_string(),
                    member(entries.column(1), i, &t, n)
                        .map_err(|e| format!("key '{}': {e}", keys.value(i)))?,
                );
            }
            Ok(Value::Map(out))
        }
        other => Err(format!(
            "{} cannot be written as Avro ({dt})",
            other.data_type()
        )),
    }
}

fn to_avro(s: ScalarValue, dt: &DataType) -> std::result::Result<Value, String> {
    Ok(match s {
        ScalarValue::Utf8(Some(v))
        | ScalarValue::LargeUtf8(Some(v))
        | ScalarValue::Utf8View(Some(v)) => Value::String(v),
        ScalarValue::Boolean(Some(v)) => Value::Boolean(v),
        ScalarValue::Int8(Some(v)) => Value::Int(i32::from(v)),
        ScalarValue::Int16(Some(v)) => Value::Int(i32::from(v)),
        ScalarValue::Int32(Some(v)) => Value::Int(v),
        ScalarValue::Int64(Some(v)) => Value::Long(v),
        ScalarValue::UInt32(Some(v)) => Value::Long(i64::from(v)),
        ScalarValue::UInt64(Some(v)) => Value::Long(v as i64),
        ScalarValue::Float32(Some(v)) => Value::Float(v),
        ScalarValue::Float64(Some(v)) => Value::Double(v),
        ScalarValue::Binary(Some(v)) | ScalarValue::LargeBinary(Some(v)) => Value::Bytes(v),
        ScalarValue::Date32(Some(v)) => Value::Date(v),
        s @ (ScalarValue::TimestampSecond(Some(_), _)
        | ScalarValue::TimestampMillisecond(Some(_), _)
        | ScalarValue::TimestampMicrosecond(Some(_), _)
        | ScalarValue::TimestampNanosecond(Some(_), _)) => {
            match s.cast_to(&DataType::Timestamp(TimeUnit::Millisecond, None)) {
                Ok(ScalarValue::TimestampMillisecond(Some(ms), _)) => Value::TimestampMillis(ms),
                _ => return Err("timestamp out of range".into()),
            }
        }
        s @ ScalarValue::Decimal128(Some(_), _, _) => match s.cast_to(&DataType::Float64) {
            Ok(ScalarValue::Float64(Some(v))) => Value::Double(v),
            _ => return Err("decimal out of range".into()),
        },
        s if s.is_null() => Value::Null,
        s @ (ScalarValue::Struct(_) | ScalarValue::List(_) | ScalarValue::Map(_)) => {
            return nested_to_avro(&s, dt);
        }
        other => {
            return Err(format!(
                "{} cannot be written as Avro ({dt})",
                other.data_type()
            ));
        }
    })
}

impl RecordEncoder for AvroRecordEncoder {
    fn encode(&mut self, batch: &RecordBatch, out: &mut RecordChunk) -> Result<()> {
        let id = match self.id {
            Some(id) => id,
            None => {
                let id = self.registry.register(&self.subject, &self.avro_text)?;
                self.id = Some(id);
                id
            }
        };
        for row in 0..batch.num_rows() {
            let mut fields = Vec::with_capacity(batch.num_columns());
            for (f, col) in self.schema.fields().iter().zip(batch.columns()) {
                let s = ScalarValue::try_from_array(col, row)?;
                let v = to_avro(s, f.data_type())
                    .map_err(|e| WeirError::external(format!("column '{}': {e}", f.name())))?;
                let v = if f.is_nullable() {
                    match v {
                        Value::Null => Value::Union(0, Box::new(Value::Null)),
                        v => Value::Union(1, Box::new(v)),
                    }
                } else {
                    v
                };
                fields.push((f.name().clone(), v));
            }
            #[allow(deprecated)]
            let datum = apache_avro::to_avro_datum(&self.avro, Value::Record(fields))
                .map_err(|e| WeirError::external_source("Avro encoding", e))?;
            out.push(&confluent_record(id, &datum));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
