//! Kafka: a source that consumes every partition of a topic and a sink that produces a
//! view's rows, both on librdkafka through rdkafka.
//!
//! ```sql
//! CREATE SOURCE downloads (..., kafka_partition INT METADATA FROM 'partition',
//!     WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)
//! WITH (connector = 'kafka', topic = 'content-downloads', format = 'json');
//! CREATE SINK alerts_out FROM alerts WITH (connector = 'kafka', topic = 'alerts');
//! ```
//!
//! `bootstrap.servers` and any `properties.<librdkafka key>` default to the server's
//! `[kafka]` settings ([`KafkaSettings`]); keys given in the WITH clause win. The source
//! ([`source`]) runs a `BaseConsumer` on a thread of its own, assigned every partition
//! (no consumer-group rebalancing: Weir tracks positions itself and commits them to the
//! group only so that standard tools show lag), batches each partition's messages, decodes
//! a batch at once, and hands batches to the pipeline over a bounded channel. The sink
//! ([`sink`]) encodes whole batches and produces them: in one transaction per checkpoint
//! epoch when the pipeline takes checkpoints (exactly once for `read_committed`
//! consumers), at least once otherwise.

pub mod cluster;
pub mod common;
pub mod exchange;
pub mod sink;
pub mod source;

pub use common::KafkaSettings;
pub use sink::KafkaSinkFactory;
pub use source::KafkaSourceFactory;
