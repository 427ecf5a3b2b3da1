//! `weir-bench gen`: download events from the built-in generator written as JSON lines
//! (flat, or nested into objects) or Parquet, the inputs of the file benchmarks.

use crate::DOWNLOADS_DDL;
use anyhow::{Context, Result, bail};
use datafusion::arrow::record_batch::RecordBatch;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use weir_engine::connector::{SourceEvent, SourceSpec};
use weir_engine::options::Options;

/// Write `rows` download events to `out` as `format` (`json`, `json-nested`, `parquet`).
pub async fn generate(format: &str, rows: u64, out: PathBuf) -> Result<()> {
    let schema = weir_engine::sql::parse_script(&format!(
        "CREATE SOURCE d ({DOWNLOADS_DDL}) WITH (connector = 'generator')"
    ))?;
    let weir_engine::sql::WeirStatement::CreateSource(c) = &schema[0].statement else {
        bail!("schema");
    };
    let factory = weir_connectors::registry().source("generator")?;
    let mut source = factory.create(SourceSpec {
        metadata: vec![],
        name: "d".into(),
        schema: c.schema.clone(),
        event_time: Some("ts".into()),
        options: Options::new([
            ("kind".to_string(), "downloads".to_string()),
            ("rows.per.second".to_string(), "0".to_string()),
            ("rows".to_string(), rows.to_string()),
            ("start".to_string(), "2024-05-01T00:00:00Z".to_string()),
            ("max.out.of.orderness".to_string(), "2s".to_string()),
        ]),
        data_dir: std::env::temp_dir(),
        batch: Default::default(),
        stats: Default::default(),
        workers: 1,
        idle_timeout: weir_engine::connector::DEFAULT_IDLE_TIMEOUT,
    })?;
    let file =
        std::fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut buf = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut parquet = None;
    if format == "parquet" {
        parquet = Some(datafusion::parquet::arrow::ArrowWriter::try_new(
            buf.get_ref().try_clone()?,
            c.schema.clone(),
            None,
        )?);
    }
    let mut n = 0u64;
    loop {
        match source.next().await? {
            SourceEvent::Batch { batch, .. } => {
                n += batch.num_rows() as u64;
                match parquet.as_mut() {
                    Some(w) => w.write(&batch)?,
                    None => {
                        let batch = if format == "json-nested" {
                            nest_downloads(&batch)?
                        } else {
                            batch
                        };
                        let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut buf);
                        w.write(&batch)?;
                        w.finish()?;
                    }
                }
            }
            SourceEvent::End => break,
            _ => {}
        }
    }
    if let Some(w) = parquet {
        w.close()?;
    }
    buf.flush()?;
    eprintln!("wrote {n} rows to {}", out.display());
    Ok(())
}

/// A flat downloads batch as [`NESTED_DDL`]'s columns.
fn nest_downloads(batch: &RecordBatch) -> Result<RecordBatch> {
    use datafusion::arrow::array::{ArrayRef, StructArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    let col = |name: &str| -> Result<(Arc<Field>, ArrayRef)> {
        let i = batch.schema().index_of(name)?;
        let f = batch.schema().field(i).clone();
        Ok((Arc::new(f), batch.column(i).clone()))
    };
    let object = |members: &[(&str, &str)]| -> Result<ArrayRef> {
        let mut fields = Vec::new();
        for (flat, nested) in members {
            let (f, a) = col(flat)?;
            fields.push((Arc::new(f.as_ref().clone().with_name(*nested)), a));
        }
        Ok(Arc::new(StructArray::from(fields)))
    };
    let content = object(&[("content_id", "id"), ("content_type", "type")])?;
    let client = object(&[("region", "region"), ("device_type", "device_type")])?;
    let result = object(&[
        ("status", "status"),
        ("duration_seconds", "duration_seconds"),
        ("speed_mbps", "speed_mbps"),
        ("error_code", "error_code"),
    ])?;
    let (id_f, id) = col("event_id")?;
    let (ts_f, ts) = col("ts")?;
    let schema = Arc::new(Schema::new(vec![
        id_f.as_ref().clone(),
        ts_f.as_ref().clone(),
        Field::new("content", content.data_type().clone(), true),
        Field::new("client", client.data_type().clone(), true),
        Field::new("result", result.data_type().clone(), true),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![id, ts, content, client, result],
    )?)
}
