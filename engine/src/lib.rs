//! weir-engine: SQL to streaming plans and incremental execution over Arrow micro-batches.
//!
//! The main types: [`connector`] (the `Source`/`Sink` seams and the registry connectors
//! plug into), [`options`] (WITH options), [`error`] (the crate's error type),
//! [`pipeline`] (the catalog and the dataflow), [`runtime`] (tasks, backpressure and the
//! checkpoint coordinator), [`checkpoint`] (checkpoints on disk).
//!
//! Shared by the connectors and the server: [`json`] (Arrow rows as the JSON users see),
//! [`fsutil`] (durable files and the staged-file protocol of exactly-once sinks),
//! [`backoff`] (how anything that talks to an outside system retries).

pub mod backoff;
pub mod checkpoint;
pub mod connector;
pub mod dead_letter;
pub mod error;
pub mod fsutil;
pub mod join;
pub mod json;
pub mod lookup;
pub mod object;
pub mod options;
pub mod pipeline;
pub mod plan;
pub mod runtime;
pub mod sql;
pub mod stats;
pub mod window;

pub use error::{Location, Result, WeirError};
