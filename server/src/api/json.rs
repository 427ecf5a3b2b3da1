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
    }
}
