//! Weir's integration tests, one binary: the streaming .slt suite in every mode, the
//! differential test against batch DataFusion, Parquet read-back, and the Kafka connector
//! against a real broker, and the HTTP/WebSocket API of a running `weir run`.

mod differential;
mod kafka;
mod parquet_readback;
mod server_api;
mod slt_suite;
