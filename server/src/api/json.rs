//! The API's JSON: rows are written by the engine's one Arrow-to-JSON encoder
//! ([`weir_engine::json`], documented in `docs/json.md`), re-exported here; this module
//! adds how the API describes schemas.

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;

pub use weir_engine::json::{rfc3339_ms, rfc3339_us, rows_array, write_rows};

/// The lower-case SQL name of a column type, as the API reports schemas.
pub fn type_name(t: &DataType) -> String {
    match t {
        DataType::Boolean => "boolean".into(),
        DataType::Int8 => "tinyint".into(),
        DataType::Int16 => "smallint".into(),
        DataType::Int32 => "int".into(),
        DataType::Int64 => "bigint".into(),
        DataType::UInt8 => "tinyint unsigned".into(),
        DataType::UInt16 => "smallint unsigned".into(),
        DataType::UInt32 => "int unsigned".into(),
        DataType::UInt64 => "bigint unsigned".into(),
        DataType::Float16 | DataType::Float32 => "float".into(),
        DataType::Float64 => "double".into(),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("decimal({p},{s})"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "varchar".into(),
        DataType::Timestamp(_, _) => "timestamp".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytea".into(),
        DataType::List(item) | DataType::LargeList(item) | DataType::FixedSizeList(item, _) => {
            format!("array<{}>", type_name(item.data_type()))
        }
        DataType::Struct(fields) => {
            let fields: Vec<String> = fields
                .iter()
                .map(|f| format!("{} {}", f.name(), type_name(f.data_type())))
                .collect();
            format!("struct<{}>", fields.join(", "))
        }
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => format!(
                "map<{}, {}>",
                type_name(kv[0].data_type()),
                type_name(kv[1].data_type())
            ),
            other => other.to_string().to_ascii_lowercase(),
        },
        other => other.to_string().to_ascii_lowercase(),
    }
}

/// The schema as `[{"name", "type", "nullable"}]`.
pub fn schema_json(schema: &SchemaRef) -> serde_json::Value {
    serde_json::Value::Array(
        schema
            .fields()
            .iter()
            .map(|f| {
                serde_json::json!({
                    "name": f.name(),
                    "type": type_name(f.data_type()),
                    "nullable": f.is_nullable(),
                })
            })
            .collect(),
    )
}

/// The column names of a result (empty when there are no batches).
pub fn column_names(batches: &[RecordBatch]) -> Vec<String> {
    batches
        .first()
        .map(|b| {
            b.schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::TimeUnit;

    #[test]
    fn type_names_are_sql_words() {
        assert_eq!(type_name(&DataType::Int64), "bigint");
        assert_eq!(
            type_name(&DataType::Timestamp(TimeUnit::Millisecond, None)),
            "timestamp"
        );
        assert_eq!(type_name(&DataType::Utf8View), "varchar");
        use datafusion::arrow::datatypes::Field;
        let address = DataType::Struct(vec![Field::new("city", DataType::Utf8, true)].into());
        let customer = DataType::Struct(
            vec![
                Field::new("name", DataType::Utf8, true),
                Field::new("tags", DataType::new_list(DataType::Int32, true), true),
                Field::new("address", address, true),
            ]
            .into(),
        );
        assert_eq!(
            type_name(&customer),
            "struct<name varchar, tags array<int>, address struct<city varchar>>"
        );
        let entries = Field::new(
            "entries",
            DataType::Struct(
                vec![
                    Field::new("keys", DataType::Utf8, false),
                    Field::new("values", DataType::Float64, true),
                ]
                .into(),
            ),
            false,
        );
        assert_eq!(
            type_name(&DataType::Map(std::sync::Arc::new(entries), false)),
            "map<varchar, double>"
        );
    }
}
