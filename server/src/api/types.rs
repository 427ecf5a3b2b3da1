//! The data types of the HTTP API that more than one part of it uses (objects, figures,
//! error bodies), so routes and the WebSocket handlers depend on them, not on each other.

use super::json::rfc3339_ms;
use serde::Serialize;
use utoipa::ToSchema;
use weir_engine::catalog::ObjectInfo;
use weir_engine::sql::ObjectKind;
use weir_engine::stats::Status;

#[derive(Debug, Serialize, ToSchema)]
pub struct Column {
    pub name: String,
    /// A SQL type name: bigint, double, varchar, timestamp, ...
    #[serde(rename = "type")]
    pub data_type: String,
    pub nullable: bool,
}

/// Live figures of a source, view or sink.
#[derive(Debug, Serialize, ToSchema)]
pub struct Figures {
    pub rows_in: u64,
    pub rows_out: u64,
    /// Rows in per second over the last second.
    pub rows_per_sec: f64,
    /// Messages not read yet (Kafka sources); null when unknown.
    pub lag: Option<u64>,
    /// The event-time watermark, RFC 3339; null before the first.
    pub watermark: Option<String>,
    /// How far the watermark is behind the wall clock, in milliseconds.
    pub watermark_delay_ms: Option<i64>,
    pub late_rows: u64,
    pub bad_rows: u64,
    pub open_windows: u64,
    pub open_groups: u64,
    pub state_bytes: u64,
    /// Windowed views: key partitions of the state (0 for other objects).
    pub key_partitions: u64,
    /// Windowed views: groups in the largest key partition (skew shows as this far above
    /// `open_groups / key_partitions`).
    pub busiest_partition_groups: u64,
    /// Windowed views: the percent of the merging and folding work the busiest key
    /// partition has done (100 / `key_partitions` when the keys are even; a hot key
    /// pushes it up).
    pub busiest_partition_share: u64,
    pub bytes: u64,
    pub errors: u64,
    pub last_error: Option<String>,
}

/// A source, view or sink.
#[derive(Debug, Serialize, ToSchema)]
pub struct Object {
    pub name: String,
    /// source, view or sink
    pub kind: String,
    /// The statement that created it.
    pub sql: String,
    pub schema: Vec<Column>,
    /// starting, running, finished (a bounded input that ended) or failed.
    pub status: String,
    /// Why it failed.
    pub reason: Option<String>,
    /// The connector (sources and sinks).
    pub connector: Option<String>,
    /// What it reads (views and sinks); a join view's first input.
    pub input: Option<String>,
    /// Everything it reads: both inputs of a join view.
    pub inputs: Vec<String>,
    /// The seq of the newest row the view emitted (views).
    pub last_seq: Option<u64>,
    /// Live WebSocket subscribers (views).
    pub subscribers: Option<usize>,
    /// The columns that identify a view's row (window bounds and group keys; views only).
    /// With `EMIT EVERY`, a newer row with the same key replaces the earlier one; an
    /// updating view keeps one current row per key (none: a global aggregate's one row).
    pub key: Option<Vec<String>>,
    /// Views: true for an updating view (an aggregate without a window), whose rows change
    /// and disappear: its rows and subscriptions carry each row's op and seq, to be
    /// applied by `key`.
    pub updating: Option<bool>,
    pub figures: Figures,
}

pub fn object(o: &ObjectInfo) -> Object {
    let s = o.stats.snapshot();
    let status = o.stats.status();
    let watermark = s.watermark.filter(|w| *w != i64::MAX);
    Object {
        name: o.name.clone(),
        kind: o.kind.word().into(),
        sql: o.sql.clone(),
        schema: o
            .schema
            .fields()
            .iter()
            .map(|f| Column {
                name: f.name().clone(),
                data_type: super::json::type_name(f.data_type()),
                nullable: f.is_nullable(),
            })
            .collect(),
        status: status.as_str().into(),
        reason: matches!(status, Status::Failed | Status::Retrying)
            .then(|| s.last_error.clone())
            .flatten(),
        connector: (o.kind != ObjectKind::View).then(|| o.detail.clone()),
        input: o.input.clone(),
        inputs: o.inputs.clone(),
        last_seq: o.buffer.as_ref().map(|b| b.last_seq()),
        subscribers: o.buffer.as_ref().map(|b| b.subscribers()),
        key: (o.kind == ObjectKind::View).then(|| o.key.clone()),
        updating: o.buffer.as_ref().map(|b| b.is_keyed()),
        figures: Figures {
            rows_in: s.rows_in,
            rows_out: s.rows_out,
            rows_per_sec: (o.stats.rows_per_sec() * 10.0).round() / 10.0,
            lag: o.stats.lag(),
            watermark: watermark.and_then(rfc3339_ms),
            watermark_delay_ms: watermark.map(|w| weir_engine::clock::wall_ms() - w),
            late_rows: s.late_rows,
            bad_rows: s.bad_rows,
            open_windows: s.open_windows,
            open_groups: s.open_groups,
            state_bytes: s.state_bytes,
            key_partitions: s.key_partitions,
            busiest_partition_groups: s.busiest_partition_groups,
            busiest_partition_share: s.busiest_partition_share,
            bytes: weir_engine::stats::Stats::get(&o.stats.bytes),
            errors: weir_engine::stats::Stats::get(&o.stats.errors),
            last_error: s.last_error,
        },
    }
}

/// The shape of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// sql_error, bad_request, not_found, conflict, unauthorized, forbidden, too_large,
    /// unavailable, internal
    pub code: String,
    pub message: String,
    /// For SQL errors: where, in the submitted text (1-based).
    pub line: Option<u64>,
    pub column: Option<u64>,
    /// For SQL errors: which statement (1-based).
    pub statement: Option<usize>,
}
