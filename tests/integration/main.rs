//! Weir's integration tests, one binary: the streaming .slt suite in every mode, the
//! differential test against batch DataFusion, Parquet read-back.

mod differential;
mod parquet_readback;
mod slt_suite;
