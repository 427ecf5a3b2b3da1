//! The `weir` server: configuration, the run loop around the engine, the embedded Kafka
//! broker, the HTTP/WebSocket API and the dashboard.

pub mod api;
pub mod app;
pub mod cluster;
pub mod config;
pub mod dashboard;
pub mod embedded_kafka;
pub mod progress;
pub mod state;
