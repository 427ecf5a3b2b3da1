//! Tests of the Avro format: the registry client, bad records, the derived schema, nested
//! values both ways.

#![allow(clippy::unwrap_used)]
use super::*;

fn registry(auth: Option<&str>) -> Registry {
    Registry::new(AvroOptions {
        url: "http://127.0.0.1:1".into(),
        basic_auth: auth.map(str::to_string),
    })
}

#[test]
fn basic_auth_header() {
    assert_eq!(
        registry(Some("user:pass")).auth().as_deref(),
        Some("Basic dXNlcjpwYXNz")
    );
    assert_eq!(registry(None).auth(), None);
}

/// A record without its event time (null, or a writer schema without the field) is a
/// bad record naming the column; the others decode.
#[test]
fn records_without_their_event_time_are_bad() {
    use datafusion::arrow::array::{StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("region", DataType::Utf8, true),
    ]));
    let with_ts = AvroSchema::parse_str(
        r#"{"type": "record", "name": "r", "fields": [
            {"name": "ts", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}]},
            {"name": "region", "type": "string"}]}"#,
    )
    .unwrap();
    let without_ts = AvroSchema::parse_str(
        r#"{"type": "record", "name": "r", "fields": [{"name": "region", "type": "string"}]}"#,
    )
    .unwrap();
    let mut d = AvroRecordDecoder::new(schema.clone(), registry(None).options);
    // The registry's answers, as if fetched: no network in this test.
    d.registry.schemas.insert(1, Ok(Arc::new(with_ts.clone())));
    d.registry
        .schemas
        .insert(2, Ok(Arc::new(without_ts.clone())));
    let record = |id: u32, writer: &AvroSchema, fields: Vec<(&str, Value)>| {
        let fields = fields
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .collect();
        #[allow(deprecated)]
        let datum = apache_avro::to_avro_datum(writer, Value::Record(fields)).unwrap();
        confluent_record(id, &datum)
    };
    let ts = |ms: Option<i64>| match ms {
        Some(ms) => Value::Union(1, Box::new(Value::TimestampMillis(ms))),
        None => Value::Union(0, Box::new(Value::Null)),
    };
    let mut chunk = RecordChunk::default();
    chunk.push(&record(
        1,
        &with_ts,
        vec![
            ("ts", ts(Some(1_000))),
            ("region", Value::String("EU".into())),
        ],
    ));
    chunk.push(&record(
        1,
        &with_ts,
        vec![("ts", ts(None)), ("region", Value::String("US".into()))],
    ));
    chunk.push(&record(
        2,
        &without_ts,
        vec![("region", Value::String("AP".into()))],
    ));
    let out = d.decode(&chunk).unwrap();
    let reason = "missing or null value for NOT NULL column 'ts'".to_string();
    assert_eq!(out.bad, vec![(1, reason.clone()), (2, reason)]);
    let expected = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(TimestampMillisecondArray::from(vec![1_000])),
            Arc::new(StringArray::from(vec!["EU"])),
        ],
    )
    .unwrap();
    assert_eq!(out.batch, expected);
}

/// Structs in structs, lists of structs and maps go to Avro (records, arrays, maps,
/// nullable members as unions with null) and come back as they were; a value of the
/// wrong type two levels down is a bad record whose reason names the path.
#[test]
fn nested_values_round_trip_and_bad_ones_name_their_path() {
    let ddl = "CREATE SOURCE o (id BIGINT NOT NULL, \
         customer STRUCT<name TEXT, address STRUCT<city TEXT, zip TEXT>>, \
         items ARRAY<STRUCT<sku TEXT, qty INT>>, attrs MAP<TEXT, TEXT>) \
         WITH (connector = 'kafka')";
    let weir_engine::sql::WeirStatement::CreateSource(source) = weir_engine::sql::parse_script(ddl)
        .unwrap()
        .remove(0)
        .statement
    else {
        panic!("not a source")
    };
    let declared = source.schema;
    let lines = r#"{"id": 1, "customer": {"name": "Ada", "address": {"city": "Paris", "zip": "75001"}}, "items": [{"sku": "A", "qty": 2}, {"sku": "B"}], "attrs": {"b": "2", "a": "1"}}
{"id": 2, "customer": {"name": "Bo", "address": null}, "items": [], "attrs": {}}
{"id": 3, "customer": null, "items": null, "attrs": null}
"#;
    let mut reader = datafusion::arrow::json::ReaderBuilder::new(declared.clone())
        .build(std::io::Cursor::new(lines))
        .unwrap();
    let batch = reader.next().unwrap().unwrap();
    let text = avro_schema_for(&declared, "orders-value").unwrap();
    let writer = AvroSchema::parse_str(&text).unwrap();
    let mut d = AvroRecordDecoder::new(declared.clone(), registry(None).options);
    d.registry.schemas.insert(7, Ok(Arc::new(writer.clone())));
    let mut chunk = RecordChunk::default();
    for row in 0..batch.num_rows() {
        let mut fields = Vec::new();
        for (f, col) in declared.fields().iter().zip(batch.columns()) {
            let v = to_avro(
                ScalarValue::try_from_array(col, row).unwrap(),
                f.data_type(),
            )
            .unwrap();
            let v = match (f.is_nullable(), v) {
                (false, v) => v,
                (true, Value::Null) => Value::Union(0, Box::new(Value::Null)),
                (true, v) => Value::Union(1, Box::new(v)),
            };
            fields.push((f.name().clone(), v));
        }
        #[allow(deprecated)]
        let datum = apache_avro::to_avro_datum(&writer, Value::Record(fields)).unwrap();
        chunk.push(&confluent_record(7, &datum));
    }
    // A writer whose zip is a number, where the column declares text inside a struct.
    let bad_writer = AvroSchema::parse_str(
        r#"{"type": "record", "name": "r", "fields": [
            {"name": "id", "type": "long"},
            {"name": "customer", "type": {"type": "record", "name": "c", "fields": [
                {"name": "address", "type": {"type": "record", "name": "a", "fields": [
                    {"name": "zip", "type": {"type": "array", "items": "long"}}]}}]}}]}"#,
    )
    .unwrap();
    d.registry
        .schemas
        .insert(8, Ok(Arc::new(bad_writer.clone())));
    let bad = Value::Record(vec![
        ("id".into(), Value::Long(4)),
        (
            "customer".into(),
            Value::Record(vec![(
                "address".into(),
                Value::Record(vec![("zip".into(), Value::Array(vec![Value::Long(1)]))]),
            )]),
        ),
    ]);
    #[allow(deprecated)]
    let datum = apache_avro::to_avro_datum(&bad_writer, bad).unwrap();
    chunk.push(&confluent_record(8, &datum));
    let out = d.decode(&chunk).unwrap();
    assert_eq!(
        out.bad,
        vec![(
            3,
            "column 'customer': field 'address': field 'zip': an Avro array where Utf8 is \
             declared"
                .to_string()
        )]
    );
    assert_eq!(
        weir_engine::json::row_objects(&out.batch),
        weir_engine::json::row_objects(&batch)
    );
    // Map entries in key order.
    assert_eq!(
        weir_engine::json::row_objects(&out.batch)[0]["attrs"],
        serde_json::json!({"a": "1", "b": "2"})
    );
}

#[test]
fn derived_schema_parses_and_marks_nullable_columns() {
    use datafusion::arrow::datatypes::{Field, Schema};
    let s = Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("region", DataType::Utf8, true),
        Field::new("n", DataType::Int64, false),
    ]));
    let text = avro_schema_for(&s, "alerts-value").unwrap();
    assert!(AvroSchema::parse_str(&text).is_ok(), "{text}");
    assert!(text.contains(r#""name":"alerts_value""#), "{text}");
    assert!(text.contains(r#"["null","string"]"#), "{text}");
    assert!(text.contains("timestamp-millis"), "{text}");
}
