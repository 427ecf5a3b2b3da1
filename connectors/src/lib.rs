//! weir-connectors: the sources and sinks Weir pipelines read from and write to.
//!
//! Every connector is a [`SourceFactory`](weir_engine::connector::SourceFactory) or a
//! [`SinkFactory`](weir_engine::connector::SinkFactory) in its own module, and
//! [`registry()`] lists them all explicitly.
//!
//! - sources: [`generator`] (synthetic `downloads`, `ticks` and Nexmark streams), [`file`]
//!   (JSON lines or Parquet files, for replay and benchmarks), [`kafka`] (every partition of
//!   a topic), [`http`] (events POSTed to the API, kept in a Kafka topic)
//! - sinks: [`parquet`] (rolling, optionally Hive-partitioned Parquet files), [`blackhole`]
//!   (counts and discards rows), [`kafka`] (one message per row, at least once),
//!   [`postgres`] (upserts into a PostgreSQL table by the view's key, or appends by row id)
//! - reference tables for lookup joins ([`table`]): `file` (CSV, JSON lines, Parquet) and
//!   `postgres`
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
pub mod http;
pub mod iceberg;
pub mod kafka;
pub mod parquet;
pub mod postgres;
pub mod table;
mod util;
pub mod webhook;

use weir_engine::connector::ConnectorRegistry;

/// Every connector this crate provides, with no Kafka cluster configured (Kafka sources
/// and sinks then need `bootstrap.servers` in their WITH clause).
pub fn registry() -> ConnectorRegistry {
    registry_with(kafka::KafkaSettings::default())
}

/// Every connector, with the server's `[kafka]` settings as defaults.
pub fn registry_with(kafka: kafka::KafkaSettings) -> ConnectorRegistry {
    registry_full(kafka, http::Endpoints::default())
}

/// Every connector, with the server's `[kafka]` settings as defaults; `http` sources
/// register in `endpoints`, where the server finds them.
pub fn registry_full(kafka: kafka::KafkaSettings, endpoints: http::Endpoints) -> ConnectorRegistry {
    let kafka = std::sync::Arc::new(kafka);
    ConnectorRegistry::new()
        // sources
        .with_source(generator::GeneratorSourceFactory)
        .with_source(file::FileSourceFactory)
        .with_source(kafka::KafkaSourceFactory::new(kafka.clone()))
        .with_source(http::HttpSourceFactory::new(kafka.clone(), endpoints))
        // sinks
        .with_sink(parquet::ParquetSinkFactory)
        .with_sink(iceberg::IcebergSinkFactory)
        .with_sink(blackhole::BlackholeSinkFactory)
        .with_sink(kafka::KafkaSinkFactory::new(kafka))
        .with_sink(postgres::PostgresSinkFactory)
        .with_sink(webhook::WebhookSinkFactory)
        // reference tables
        .with_table(table::FileTableFactory)
        .with_table(table::PostgresTableFactory)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn registry_lists_every_connector() {
        let r = super::registry();
        assert_eq!(r.source_names(), vec!["generator", "file", "kafka", "http"]);
        assert_eq!(
            r.sink_names(),
            vec![
                "parquet",
                "iceberg",
                "blackhole",
                "kafka",
                "postgres",
                "webhook"
            ]
        );
        assert_eq!(r.table_names(), vec!["file", "postgres"]);
        assert!(r.source("GENERATOR").is_ok());
        assert!(r.sink("Postgres").is_ok());
        let e = r.sink("mysql").err().unwrap();
        assert_eq!(
            e.to_string(),
            "unknown sink connector 'mysql'; available: parquet, iceberg, blackhole, kafka, postgres, webhook"
        );
    }
}
