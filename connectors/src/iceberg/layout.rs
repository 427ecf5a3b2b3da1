//! What an Iceberg table written by Weir looks like: the Iceberg schema made from a view's
//! Arrow schema, the partition spec made from `'partition.by'`, and how a batch's rows are
//! converted and split by partition before they are written as Parquet.

use datafusion::arrow::array::{Array, ArrayRef, AsArray, UInt32Array};
use datafusion::arrow::compute::{cast, take_record_batch};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Field, Int32Type, Int64Type, Schema as ArrowSchema, SchemaRef, TimeUnit,
    TimestampMicrosecondType,
};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::PARQUET_FIELD_ID_META_KEY;
use iceberg::spec::{
    Literal, NestedField, PrimitiveType, Schema, Struct, Transform, Type, UnboundPartitionSpec,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use weir_engine::{Result, WeirError};

const DAY_US: i64 = 86_400_000_000;
const HOUR_US: i64 = 3_600_000_000;

/// The Iceberg type of an Arrow type and the Arrow type its column is written as (Iceberg
/// timestamps are microseconds; small integers are Iceberg `int`).
fn iceberg_type(t: &DataType) -> Option<(PrimitiveType, DataType)> {
    use DataType as D;
    Some(match t {
        D::Boolean => (PrimitiveType::Boolean, D::Boolean),
        D::Int8 | D::Int16 | D::Int32 | D::UInt8 | D::UInt16 => (PrimitiveType::Int, D::Int32),
        D::Int64 | D::UInt32 | D::UInt64 => (PrimitiveType::Long, D::Int64),
        D::Float32 => (PrimitiveType::Float, D::Float32),
        D::Float64 => (PrimitiveType::Double, D::Float64),
        D::Utf8 | D::LargeUtf8 | D::Utf8View => (PrimitiveType::String, D::Utf8),
        D::Binary | D::LargeBinary | D::BinaryView => (PrimitiveType::Binary, D::Binary),
        D::Date32 | D::Date64 => (PrimitiveType::Date, D::Date32),
        D::Timestamp(_, None) => (
            PrimitiveType::Timestamp,
            D::Timestamp(TimeUnit::Microsecond, None),
        ),
        D::Timestamp(_, Some(_)) => (
            PrimitiveType::Timestamptz,
            D::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        ),
        D::Decimal128(p, s) if *s >= 0 => (
            PrimitiveType::Decimal {
                precision: u32::from(*p),
                scale: *s as u32,
            },
            t.clone(),
        ),
        _ => return None,
    })
}

/// The Iceberg schema of a view (field ids 1, 2, ... in column order). Columns in
/// `never_null` are required, the rest optional.
pub fn table_schema(view: &str, schema: &SchemaRef, never_null: &[String]) -> Result<Schema> {
    let mut fields = Vec::with_capacity(schema.fields().len());
    for (i, f) in schema.fields().iter().enumerate() {
        let Some((t, _)) = iceberg_type(f.data_type()) else {
            return Err(WeirError::user(format!(
                "view '{view}' column '{}' is {}, which the iceberg sink cannot write yet \
                 (booleans, integers, floats, decimals, text, binary, dates and timestamps)",
                f.name(),
                f.data_type()
            )));
        };
        let id = i as i32 + 1;
        let required = !f.is_nullable() || never_null.iter().any(|n| n == f.name());
        let field = if required {
            NestedField::required(id, f.name(), Type::Primitive(t))
        } else {
            NestedField::optional(id, f.name(), Type::Primitive(t))
        };
        fields.push(Arc::new(field));
    }
    Schema::builder()
        .with_schema_id(0)
        .with_fields(fields)
        .build()
        .map_err(|e| WeirError::external_source(format!("iceberg schema of view '{view}'"), e))
}

/// One field of the partition spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionField {
    /// The source column's index in the view.
    pub column: usize,
    pub transform: PartitionTransform,
    /// The partition field's name (`window_start_day`, `region`).
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionTransform {
    Day,
    Hour,
    Identity,
}

/// Parse `'partition.by'`: a comma-separated list of `day`, `hour` (of `window_start`, or
/// the first timestamp column), `day(col)`, `hour(col)` and `col` (identity).
pub fn parse_partition_by(spec: &str, schema: &SchemaRef) -> Result<Vec<PartitionField>> {
    let mut out: Vec<PartitionField> = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (transform, col) = match item.split_once('(') {
            Some((f, rest)) => {
                let col = rest.strip_suffix(')').ok_or_else(|| {
                    WeirError::user(format!("'partition.by': '{item}' is missing its ')'"))
                })?;
                let t = match f.trim().to_ascii_lowercase().as_str() {
                    "day" => PartitionTransform::Day,
                    "hour" => PartitionTransform::Hour,
                    "identity" => PartitionTransform::Identity,
                    other => {
                        return Err(WeirError::user(format!(
                            "'partition.by': unknown transform '{other}' (day, hour or \
                             identity; or a bare column name)"
                        )));
                    }
                };
                (t, Some(col.trim().to_string()))
            }
            None => match item.to_ascii_lowercase().as_str() {
                "none" => continue,
                "day" => (PartitionTransform::Day, None),
                "hour" => (PartitionTransform::Hour, None),
                _ => (PartitionTransform::Identity, Some(item.to_string())),
            },
        };
        let column = match &col {
            Some(c) => schema.index_of(c).map_err(|_| {
                WeirError::user(format!("'partition.by': the view has no column '{c}'"))
            })?,
            None => time_column(schema)?,
        };
        let field = schema.field(column);
        let ok = match transform {
            PartitionTransform::Day | PartitionTransform::Hour => {
                matches!(field.data_type(), DataType::Timestamp(_, _))
            }
            PartitionTransform::Identity => matches!(
                iceberg_type(field.data_type()).map(|t| t.1),
                Some(
                    DataType::Utf8
                        | DataType::Int32
                        | DataType::Int64
                        | DataType::Boolean
                        | DataType::Date32
                )
            ),
        };
        if !ok {
            return Err(WeirError::user(format!(
                "'partition.by': cannot partition by {item}: column '{}' is {} (day and hour \
                 need a timestamp; identity needs text, an integer, a boolean or a date)",
                field.name(),
                field.data_type()
            )));
        }
        let name = match transform {
            PartitionTransform::Day => format!("{}_day", field.name()),
            PartitionTransform::Hour => format!("{}_hour", field.name()),
            PartitionTransform::Identity => field.name().clone(),
        };
        if out
            .iter()
            .any(|p| p.column == column && p.transform == transform)
            || (transform != PartitionTransform::Identity
                && out
                    .iter()
                    .any(|p| p.column == column && p.transform != PartitionTransform::Identity))
        {
            return Err(WeirError::user(format!(
                "'partition.by': column '{}' is partitioned by time twice; use day or hour",
                field.name()
            )));
        }
        out.push(PartitionField {
            column,
            transform,
            name,
        });
    }
    Ok(out)
}

/// `window_start` if it is a timestamp, else the first timestamp column.
fn time_column(schema: &SchemaRef) -> Result<usize> {
    if let Ok(i) = schema.index_of("window_start")
        && matches!(schema.field(i).data_type(), DataType::Timestamp(_, _))
    {
        return Ok(i);
    }
    schema
        .fields()
        .iter()
        .position(|f| matches!(f.data_type(), DataType::Timestamp(_, _)))
        .ok_or_else(|| {
            WeirError::user(
                "'partition.by' = 'day' or 'hour' needs a timestamp column (window_start or \
                 any TIMESTAMP), and the view has none",
            )
        })
}

/// The partition spec (source ids are the view's field ids, 1-based).
pub fn partition_spec(fields: &[PartitionField]) -> Result<UnboundPartitionSpec> {
    let mut b = UnboundPartitionSpec::builder().with_spec_id(0);
    for f in fields {
        let t = match f.transform {
            PartitionTransform::Day => Transform::Day,
            PartitionTransform::Hour => Transform::Hour,
            PartitionTransform::Identity => Transform::Identity,
        };
        b = b
            .add_partition_field(f.column as i32 + 1, f.name.clone(), t)
            .map_err(|e| WeirError::external_source("iceberg partition spec", e))?;
    }
    Ok(b.build())
}

/// One partition value of a row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum PartitionValue {
    Int(i32),
    Long(i64),
    Date(i32),
    Text(String),
    Bool(bool),
}

/// A row's partition: one value (or NULL) per partition field.
pub type PartitionKey = Vec<Option<PartitionValue>>;

impl PartitionValue {
    fn literal(&self) -> Literal {
        match self {
            PartitionValue::Int(v) => Literal::int(*v),
            PartitionValue::Long(v) => Literal::long(*v),
            PartitionValue::Date(v) => Literal::date(*v),
            PartitionValue::Text(v) => Literal::string(v.clone()),
            PartitionValue::Bool(v) => Literal::bool(*v),
        }
    }
}

/// The partition struct of a data file.
pub fn partition_struct(key: &PartitionKey) -> Struct {
    Struct::from_iter(key.iter().map(|v| v.as_ref().map(PartitionValue::literal)))
}

/// The folder of a partition under the table's `data/`, Hive-style
/// (`window_start_day=2024-05-01/region=eu`); empty when unpartitioned.
pub fn partition_folder(fields: &[PartitionField], key: &PartitionKey) -> String {
    let parts: Vec<String> = fields
        .iter()
        .zip(key)
        .map(|(f, v)| {
            let value = match (f.transform, v) {
                (_, None) => "null".to_string(),
                (PartitionTransform::Day, Some(PartitionValue::Date(d))) => {
                    day_text(i64::from(*d) * DAY_US)
                }
                (PartitionTransform::Hour, Some(PartitionValue::Int(h))) => {
                    chrono::DateTime::from_timestamp_micros(i64::from(*h) * HOUR_US)
                        .map_or_else(|| h.to_string(), |t| t.format("%Y-%m-%d-%H").to_string())
                }
                (_, Some(PartitionValue::Date(d))) => day_text(i64::from(*d) * DAY_US),
                (_, Some(PartitionValue::Int(v))) => v.to_string(),
                (_, Some(PartitionValue::Long(v))) => v.to_string(),
                (_, Some(PartitionValue::Bool(v))) => v.to_string(),
                (_, Some(PartitionValue::Text(s))) => escape(s),
            };
            format!("{}={value}", escape(&f.name))
        })
        .collect();
    parts.join("/")
}

fn day_text(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map_or_else(|| us.to_string(), |t| t.format("%Y-%m-%d").to_string())
}

/// A value made safe for a path segment: anything but letters, digits, `-`, `_` and `.`
/// as `%XX`.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Converts a view's batches to the table's file schema and splits them by partition.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The Parquet files' Arrow schema: Iceberg's types, with each field's id.
    pub file_schema: SchemaRef,
    /// Each column's field id.
    pub ids: Vec<i32>,
    pub partition: Vec<PartitionField>,
}

impl Layout {
    /// `ids`: the table's field id of each column, by name (a table created earlier may
    /// number them differently).
    pub fn new(
        view: &SchemaRef,
        ids: &HashMap<String, i32>,
        required: &[bool],
        partition: Vec<PartitionField>,
    ) -> Result<Layout> {
        let mut fields = Vec::with_capacity(view.fields().len());
        let mut field_ids = Vec::with_capacity(view.fields().len());
        for (i, f) in view.fields().iter().enumerate() {
            let (_, t) = iceberg_type(f.data_type()).ok_or_else(|| {
                WeirError::Internal(format!("iceberg: column '{}' has no type", f.name()))
            })?;
            let id = ids.get(f.name()).ok_or_else(|| {
                WeirError::user(format!("the iceberg table has no column '{}'", f.name()))
            })?;
            let field =
                Field::new(f.name(), t, !required.get(i).copied().unwrap_or(false)).with_metadata(
                    HashMap::from([(PARQUET_FIELD_ID_META_KEY.to_string(), id.to_string())]),
                );
            fields.push(field);
            field_ids.push(*id);
        }
        Ok(Layout {
            file_schema: Arc::new(ArrowSchema::new(fields)),
            ids: field_ids,
            partition,
        })
    }

    /// `batch` (the view's schema) in the file schema, split by partition.
    pub fn split(&self, batch: &RecordBatch) -> Result<Vec<(PartitionKey, RecordBatch)>> {
        let columns: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .zip(self.file_schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c.clone())
                } else {
                    cast(c, f.data_type())
                }
            })
            .collect::<std::result::Result<_, _>>()?;
        let rows = RecordBatch::try_new(self.file_schema.clone(), columns)?;
        if self.partition.is_empty() || rows.num_rows() == 0 {
            return Ok(vec![(Vec::new(), rows)]);
        }
        let values: Vec<Vec<Option<PartitionValue>>> = self
            .partition
            .iter()
            .map(|p| partition_values(rows.column(p.column), p.transform))
            .collect::<Result<_>>()?;
        let mut groups: BTreeMap<PartitionKey, Vec<u32>> = BTreeMap::new();
        for row in 0..rows.num_rows() {
            let key: PartitionKey = values.iter().map(|v| v[row].clone()).collect();
            groups.entry(key).or_default().push(row as u32);
        }
        if groups.len() == 1 {
            let (key, _) = groups.into_iter().next().unwrap_or_default();
            return Ok(vec![(key, rows)]);
        }
        groups
            .into_iter()
            .map(|(key, idx)| {
                let part = take_record_batch(&rows, &UInt32Array::from(idx))?;
                Ok((key, part))
            })
            .collect()
    }
}

/// Each row's value of one partition field (`column` already in the file schema's type).
fn partition_values(
    column: &ArrayRef,
    transform: PartitionTransform,
) -> Result<Vec<Option<PartitionValue>>> {
    let n = column.len();
    let mut out = Vec::with_capacity(n);
    match transform {
        PartitionTransform::Day | PartitionTransform::Hour => {
            let us = column.as_primitive::<TimestampMicrosecondType>();
            let (unit, day) = match transform {
                PartitionTransform::Day => (DAY_US, true),
                _ => (HOUR_US, false),
            };
            for i in 0..n {
                out.push((!us.is_null(i)).then(|| {
                    let v = us.value(i).div_euclid(unit) as i32;
                    if day {
                        PartitionValue::Date(v)
                    } else {
                        PartitionValue::Int(v)
                    }
                }));
            }
        }
        PartitionTransform::Identity => match column.data_type() {
            DataType::Utf8 => {
                let s = column.as_string::<i32>();
                out.extend((0..n).map(|i| {
                    (!s.is_null(i)).then(|| PartitionValue::Text(s.value(i).to_string()))
                }));
            }
            DataType::Int32 => {
                let a = column.as_primitive::<Int32Type>();
                out.extend(
                    (0..n).map(|i| (!a.is_null(i)).then(|| PartitionValue::Int(a.value(i)))),
                );
            }
            DataType::Int64 => {
                let a = column.as_primitive::<Int64Type>();
                out.extend(
                    (0..n).map(|i| (!a.is_null(i)).then(|| PartitionValue::Long(a.value(i)))),
                );
            }
            DataType::Date32 => {
                let a = column.as_primitive::<Date32Type>();
                out.extend(
                    (0..n).map(|i| (!a.is_null(i)).then(|| PartitionValue::Date(a.value(i)))),
                );
            }
            DataType::Boolean => {
                let a = column.as_boolean();
                out.extend(
                    (0..n).map(|i| (!a.is_null(i)).then(|| PartitionValue::Bool(a.value(i)))),
                );
            }
            other => {
                return Err(WeirError::Internal(format!(
                    "iceberg: identity partition on {other}"
                )));
            }
        },
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::iceberg::tests::schema;
    use datafusion::arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};

    #[test]
    fn partition_by_parses_and_refuses() {
        let s = schema();
        let p = parse_partition_by("day, region", &s).unwrap();
        assert_eq!(
            p,
            vec![
                PartitionField {
                    column: 0,
                    transform: PartitionTransform::Day,
                    name: "window_start_day".into()
                },
                PartitionField {
                    column: 1,
                    transform: PartitionTransform::Identity,
                    name: "region".into()
                },
            ]
        );
        assert_eq!(
            parse_partition_by("hour(window_start)", &s).unwrap()[0].name,
            "window_start_hour"
        );
        for bad in [
            "day, hour",
            "nope",
            "day(region)",
            "month(window_start)",
            "day(window_start",
        ] {
            let e = parse_partition_by(bad, &s).unwrap_err();
            assert!(e.is_user(), "{bad}: {e}");
        }
    }

    #[test]
    fn split_converts_and_groups_by_partition() {
        let s = schema();
        let fields = parse_partition_by("hour, region", &s).unwrap();
        let ids: HashMap<String, i32> = [("window_start", 1), ("region", 2), ("n", 3)]
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let layout = Layout::new(&s, &ids, &[false, false, true], fields.clone()).unwrap();
        let h = 3_600_000i64;
        let batch = RecordBatch::try_new(
            s.clone(),
            vec![
                Arc::new(TimestampMillisecondArray::from(vec![
                    Some(0),
                    Some(h + 1),
                    Some(5),
                    None,
                ])),
                Arc::new(StringArray::from(vec![
                    Some("eu"),
                    Some("eu"),
                    Some("us west"),
                    Some("eu"),
                ])),
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
            ],
        )
        .unwrap();
        let parts = layout.split(&batch).unwrap();
        let keys: Vec<(String, usize)> = parts
            .iter()
            .map(|(k, b)| (partition_folder(&fields, k), b.num_rows()))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("window_start_hour=null/region=eu".to_string(), 1),
                ("window_start_hour=1970-01-01-00/region=eu".to_string(), 1),
                (
                    "window_start_hour=1970-01-01-00/region=us%20west".to_string(),
                    1
                ),
                ("window_start_hour=1970-01-01-01/region=eu".to_string(), 1),
            ]
        );
        let f = parts[1].1.schema();
        assert_eq!(
            f.field(0).data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, None)
        );
        assert_eq!(
            f.field(2)
                .metadata()
                .get(PARQUET_FIELD_ID_META_KEY)
                .map(String::as_str),
            Some("3")
        );
    }
}
