//! The `blackhole` sink: counts rows and discards them. Useful for benchmarks (measures
//! the pipeline without sink cost) and for trying a view out. Takes no options.

use async_trait::async_trait;
use datafusion::arrow::record_batch::RecordBatch;
use weir_engine::Result;
use weir_engine::connector::{RowIds, Sink, SinkFactory, SinkSpec};

pub const VALID_KEYS: &[&str] = &[];

pub struct BlackholeSinkFactory;

impl SinkFactory for BlackholeSinkFactory {
    fn name(&self) -> &'static str {
        "blackhole"
    }

    fn create(&self, spec: SinkSpec) -> Result<Box<dyn Sink>> {
        spec.options.finish("the blackhole sink", VALID_KEYS)?;
        Ok(Box::new(BlackholeSink {
            name: spec.name,
            rows: 0,
            batches: 0,
        }))
    }
}

/// Counts what it is given.
#[derive(Debug)]
pub struct BlackholeSink {
    name: String,
    rows: u64,
    batches: u64,
}

impl BlackholeSink {
    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn batches(&self) -> u64 {
        self.batches
    }
}

#[async_trait]
impl Sink for BlackholeSink {
    /// Nothing is kept, so rows written again change nothing (its row count aside).
    fn idempotent(&self) -> bool {
        true
    }

    async fn write(&mut self, batch: RecordBatch, _ids: RowIds) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        self.batches += 1;
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        tracing::info!(sink = %self.name, rows = self.rows, batches = self.batches, "blackhole sink closed");
        Ok(())
    }
}
