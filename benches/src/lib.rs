//! Benchmark code shared by the `weir-bench` program and the integration tests: the
//! Nexmark queries and their correctness check (see [`nexmark`]).

pub mod nexmark;
