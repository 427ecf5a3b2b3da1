//! The API's JSON: rows are written by the engine's one Arrow-to-JSON encoder
//! ([`weir_engine::json`], documented in `docs/json.md`), re-exported here; this module
//! adds how the API describes schemas and writes an updating view's changes.

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use weir_engine::changelog::{self, DELETE};

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

/// A batch of an updating view's changes (`changelog.rs`) whose row i has seq `seqs[i]`,
/// as the members `"rows":[...],"ops":[...],"seqs":[...]` of a JSON object: the view's
/// columns, each row's op (`insert` or `delete`) and seq, three parallel arrays.
pub fn write_changes(
    changes: &RecordBatch,
    seqs: &[u64],
    out: &mut Vec<u8>,
) -> weir_engine::Result<()> {
    let (rows, ops) = changelog::split(changes)?;
    out.extend_from_slice(b"\"rows\":[");
    write_rows([&rows], out, true);
    out.extend_from_slice(b"],\"ops\":[");
    for (i, op) in ops.values().iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(if *op == DELETE {
            b"\"delete\""
        } else {
            b"\"insert\""
        });
    }
    out.extend_from_slice(b"],\"seqs\":");
    out.extend(serde_json::to_vec(seqs).unwrap_or_default());
    Ok(())
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
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema, TimeUnit};
    use std::sync::Arc;

    #[test]
    fn changes_are_rows_ops_and_seqs_side_by_side() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("site", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
        ]));
        let rows = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a", "a"])),
                Arc::new(Int64Array::from(vec![Some(2), None])),
            ],
        )
        .unwrap();
        let deleted = changelog::tag(rows.slice(0, 1), DELETE).unwrap();
        let inserted = changelog::tag(rows.slice(1, 1), changelog::INSERT).unwrap();
        let changes =
            datafusion::arrow::compute::concat_batches(&deleted.schema(), [&deleted, &inserted])
                .unwrap();
        let mut out = b"{".to_vec();
        write_changes(&changes, &[7, 8], &mut out).unwrap();
        out.push(b'}');
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "rows": [{"site": "a", "n": 2}, {"site": "a", "n": null}],
                "ops": ["delete", "insert"],
                "seqs": [7, 8],
            })
        );
        // Rows without their op column are not changes.
        assert!(write_changes(&rows, &[1, 2], &mut Vec::new()).is_err());
    }

    #[test]
    fn type_names_are_sql_words() {
        assert_eq!(type_name(&DataType::Int64), "bigint");
        assert_eq!(
            type_name(&DataType::Timestamp(TimeUnit::Millisecond, None)),
            "timestamp"
        );
        assert_eq!(type_name(&DataType::Utf8View), "varchar");
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
