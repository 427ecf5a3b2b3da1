//! Weir's integration tests, one binary: the streaming .slt suite in every mode, the
//! differential test against batch DataFusion, the Nexmark queries against their batch
//! answers, Parquet read-back, records without their event time in the file source, the
//! Kafka connector
//! against a real broker, the Postgres sink against a real PostgreSQL, and the
//! HTTP/WebSocket API of a running `weir run`, and crash recovery of the real binary killed
//! at random moments, the webhook sink against a real HTTP server, and the `object_store`
//! S3 client and the Parquet sink against a real S3-compatible server, and the Iceberg sink
//! read back with pyiceberg.

mod cluster;
mod crash;
mod differential;
mod event_time;
mod iceberg;
mod kafka;
mod lake;
mod lookup;
mod nested;
mod nexmark;
mod object_store_s3;
mod parquet_readback;
mod postgres;
mod server_api;
mod slt_suite;
mod updating;
mod webhook;
