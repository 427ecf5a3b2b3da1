//! The Iceberg sink's data files: one open Parquet file per partition, written on a
//! blocking thread, closed (synced) into the list the next commit adds.

use super::layout::{self, PartitionField, PartitionKey};
use super::stats;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use weir_engine::fsutil::{io_error, sync_dir};
use weir_engine::{Result, WeirError};

/// A data file written and closed, not committed yet.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct WrittenFile {
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    pub partition: PartitionKey,
    /// Column metrics for the manifest.
    #[serde(default)]
    pub stats: stats::FileStats,
}

/// The open files, one per partition, and the closed ones.
#[derive(Default)]
pub(super) struct Files {
    open: BTreeMap<PartitionKey, OpenFile>,
    pub(super) closed: Vec<WrittenFile>,
    seq: u64,
}

struct OpenFile {
    writer: ArrowWriter<File>,
    path: PathBuf,
    rows: usize,
    opened: Instant,
    partition: PartitionKey,
    stats: stats::FileStats,
}

/// A sink name made safe for a file name.
pub(super) fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Files {
    pub(super) fn write(
        &mut self,
        parts: Vec<(PartitionKey, RecordBatch)>,
        ctx: &WriteContext,
    ) -> Result<()> {
        for (key, rows) in parts {
            if !self.open.contains_key(&key) {
                self.seq += 1;
                let folder = layout::partition_folder(&ctx.partition, &key);
                let dir = if folder.is_empty() {
                    ctx.data_dir.clone()
                } else {
                    ctx.data_dir.join(&folder)
                };
                std::fs::create_dir_all(&dir).map_err(|e| io_error("creating", &dir, e))?;
                let path = dir.join(format!(
                    "{}-e{}-{}-{}.parquet",
                    ctx.stem, ctx.epoch, ctx.run, self.seq
                ));
                let file = File::create(&path).map_err(|e| io_error("creating", &path, e))?;
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::default()))
                    .build();
                let writer =
                    ArrowWriter::try_new(file, rows.schema(), Some(props)).map_err(|e| {
                        WeirError::external_source(format!("creating {}", path.display()), e)
                    })?;
                self.open.insert(
                    key.clone(),
                    OpenFile {
                        writer,
                        path,
                        rows: 0,
                        opened: Instant::now(),
                        partition: key.clone(),
                        stats: stats::FileStats::default(),
                    },
                );
            }
            let full = {
                let Some(f) = self.open.get_mut(&key) else {
                    continue;
                };
                f.writer.write(&rows).map_err(|e| {
                    WeirError::external_source(format!("writing {}", f.path.display()), e)
                })?;
                f.stats.add(&rows, &ctx.ids);
                f.rows += rows.num_rows();
                f.rows >= ctx.rollover_rows
            };
            if full {
                self.close(&key)?;
            }
        }
        Ok(())
    }

    fn close(&mut self, key: &PartitionKey) -> Result<()> {
        let Some(f) = self.open.remove(key) else {
            return Ok(());
        };
        let file = f.writer.into_inner().map_err(|e| {
            WeirError::external_source(format!("finishing {}", f.path.display()), e)
        })?;
        file.sync_all()
            .map_err(|e| io_error("syncing", &f.path, e))?;
        let bytes = file
            .metadata()
            .map_err(|e| io_error("reading", &f.path, e))?
            .len();
        if let Some(dir) = f.path.parent() {
            sync_dir(dir)?;
        }
        self.closed.push(WrittenFile {
            path: f.path.display().to_string(),
            rows: f.rows as u64,
            bytes,
            partition: f.partition,
            stats: f.stats,
        });
        Ok(())
    }

    pub(super) fn close_all(&mut self) -> Result<()> {
        let keys: Vec<PartitionKey> = self.open.keys().cloned().collect();
        for k in keys {
            self.close(&k)?;
        }
        Ok(())
    }

    pub(super) fn close_older_than(&mut self, age: Duration) -> Result<()> {
        let keys: Vec<PartitionKey> = self
            .open
            .iter()
            .filter(|(_, f)| f.opened.elapsed() >= age)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.close(&k)?;
        }
        Ok(())
    }
}

/// What a blocking write needs to know about the sink.
pub(super) struct WriteContext {
    pub(super) data_dir: PathBuf,
    /// Each column's field id.
    pub(super) ids: Vec<i32>,
    pub(super) partition: Vec<PartitionField>,
    pub(super) stem: String,
    pub(super) run: String,
    pub(super) epoch: u64,
    pub(super) rollover_rows: usize,
}
