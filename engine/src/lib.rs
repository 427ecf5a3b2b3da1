//! weir-engine: SQL to streaming plans and incremental execution over Arrow micro-batches.
//!
//! A statement goes through [`sql`] (parsing, window rewrite) and [`planner`] (a typed
//! [`planner::ViewPlan`] on DataFusion), is recorded in the [`catalog`], and becomes a node
//! of the [`dataflow`] (an operator graph: source watermarks in [`watermark`], window
//! operators in [`window`], joins in [`join`]). [`pipeline`] ties them together with one
//! [`sequencer`] per view and the [`serving`] buffers readers use; [`ddl`] interprets
//! statements. The [`runtime`] drives a pipeline from real sources into real sinks
//! ([`connector`] is the seam connectors implement) and takes [`checkpoint`]s.
//! `docs/engine.md` walks through it.
//!
//! Shared by the connectors and the server: [`json`] (Arrow rows as the JSON users see),
//! [`fsutil`] (durable files and the staged-file protocol of exactly-once sinks),
//! [`backoff`] (how anything that talks to an outside system retries).

pub mod adhoc;
pub mod backoff;
pub mod catalog;
pub mod changelog;
pub mod checkpoint;
pub mod clock;
pub mod cluster;
pub mod compact;
pub mod connector;
pub mod dataflow;
mod ddl;
pub mod dead_letter;
pub mod error;
pub mod fsutil;
pub mod join;
pub mod json;
pub mod lookup;
pub mod object;
pub mod options;
pub mod pipeline;
pub mod planner;
pub mod remote;
pub mod runtime;
pub mod sequencer;
pub mod serving;
pub mod sql;
pub mod stats;
pub mod tables;
pub mod watermark;
pub mod window;

/// A hash map with a fast (not DoS-resistant) hasher, for keys the engine made itself
/// (row-format group keys), not for anything an outsider picks.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub use error::{Location, Result, WeirError};
