//! weir-connectors: the sources and sinks Weir pipelines read from and write to.
//!
//! Every connector is a [`SourceFactory`](weir_engine::connector::SourceFactory) or a
//! [`SinkFactory`](weir_engine::connector::SinkFactory) in its own module, and
//! [`registry()`] lists them all explicitly.
//!
//! - sources: [`generator`] (synthetic `downloads` and `ticks` streams), [`file`] (JSON lines
//!   or Parquet files, for replay and benchmarks)
//! - sinks: [`parquet`] (rolling, optionally Hive-partitioned Parquet files), [`blackhole`]
//!   (counts and discards rows)
//! - shared pieces: [`format`] (record formats with a bad-record policy) and [`dead_letter`]
//!   (where malformed records go)
//!
//! To add a connector: write a new module (a folder if it has several parts) with a factory
//! that takes every option it knows from the spec's [`Options`](weir_engine::options::Options)
//! and ends with `finish(what, VALID_KEYS)`, then add one line to [`registry()`].
//! Errors are the engine's [`WeirError`](weir_engine::WeirError): `WeirError::user` for
//! bad options (raised in `create`, so they point at the statement), `External`/`Io` for I/O.

pub mod blackhole;
pub mod dead_letter;
pub mod file;
pub mod format;
pub mod generator;
pub mod parquet;
mod util;

use weir_engine::connector::ConnectorRegistry;

/// Every connector this crate provides.
pub fn registry() -> ConnectorRegistry {
    ConnectorRegistry::new()
        // sources
        .with_source(generator::GeneratorSourceFactory)
        .with_source(file::FileSourceFactory)
        // sinks
        .with_sink(parquet::ParquetSinkFactory)
        .with_sink(blackhole::BlackholeSinkFactory)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn registry_lists_every_connector() {
        let r = super::registry();
        assert_eq!(r.source_names(), vec!["generator", "file"]);
        assert_eq!(r.sink_names(), vec!["parquet", "blackhole"]);
        assert!(r.source("GENERATOR").is_ok());
        let e = r.sink("kafka").err().unwrap();
        assert_eq!(
            e.to_string(),
            "unknown sink connector 'kafka'; available: parquet, blackhole"
        );
    }
}
