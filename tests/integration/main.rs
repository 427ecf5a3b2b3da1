//! Weir's integration tests, one binary: the streaming .slt suite in every mode, the
//! differential test against batch DataFusion, Parquet read-back, and the Kafka connector
//! against a real broker.

mod differential;
mod kafka;
mod parquet_readback;
mod slt_suite;
