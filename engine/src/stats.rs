//! Live figures for sources, views and sinks, shared with whoever displays them (the
//! terminal progress line now, REST and /metrics later). Atomics so readers never block
//! the pipeline.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::time::Instant;

/// Where an object is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Declared, not yet heard from (a source that has not connected yet).
    Starting,
    Running,
    /// A bounded input that has ended.
    Finished,
    /// Stopped by an error; see [`Stats::last_error`].
    Failed,
    /// Cannot reach what it reads or writes and is retrying (a sink whose database is
    /// down); see [`Stats::last_error`]. Back to running when it succeeds.
    Retrying,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Starting => "starting",
            Status::Running => "running",
            Status::Finished => "finished",
            Status::Failed => "failed",
            Status::Retrying => "retrying",
        }
    }
}

#[derive(Debug)]
pub struct Stats {
    pub rows_in: AtomicU64,
    pub rows_out: AtomicU64,
    pub batches: AtomicU64,
    pub late_rows: AtomicU64,
    pub bad_rows: AtomicU64,
    /// Event-time watermark in epoch milliseconds; `i64::MIN` before the first one.
    pub watermark: AtomicI64,
    /// Open windows and groups (windowed views only).
    pub open_windows: AtomicU64,
    pub open_groups: AtomicU64,
    pub state_bytes: AtomicU64,
    /// Key partitions of a windowed view's state, and the groups in the largest.
    pub key_partitions: AtomicU64,
    pub busiest_partition_groups: AtomicU64,
    /// Percent of stage 2's work done by the busiest key partition.
    pub busiest_partition_share: AtomicU64,
    /// Payload bytes read (sources) or written (sinks), where the connector knows them.
    pub bytes: AtomicU64,
    /// Messages the source has not read yet (Kafka: high watermark minus position, summed
    /// over partitions); -1 when the connector cannot tell.
    pub lag: AtomicI64,
    /// Errors that did not stop the object (a sink's failed delivery that was retried).
    pub errors: AtomicU64,
    status: AtomicU8,
    last_error: Mutex<Option<String>>,
    rate: Mutex<RateSample>,
}

#[derive(Debug)]
struct RateSample {
    at: Instant,
    rows: u64,
    per_sec: f64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            rows_in: AtomicU64::new(0),
            rows_out: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            late_rows: AtomicU64::new(0),
            bad_rows: AtomicU64::new(0),
            watermark: AtomicI64::new(i64::MIN),
            open_windows: AtomicU64::new(0),
            open_groups: AtomicU64::new(0),
            key_partitions: AtomicU64::new(0),
            busiest_partition_groups: AtomicU64::new(0),
            busiest_partition_share: AtomicU64::new(0),
            state_bytes: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            lag: AtomicI64::new(-1),
            errors: AtomicU64::new(0),
            status: AtomicU8::new(Status::Running as u8),
            last_error: Mutex::new(None),
            rate: Mutex::new(RateSample {
                at: Instant::now(),
                rows: 0,
                per_sec: 0.0,
            }),
        }
    }
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn watermark(&self) -> Option<i64> {
        match self.watermark.load(Ordering::Relaxed) {
            i64::MIN => None,
            w => Some(w),
        }
    }

    /// Stats for an object that starts in `status`.
    pub fn with_status(status: Status) -> Self {
        let s = Stats::default();
        s.set_status(status);
        s
    }

    pub fn status(&self) -> Status {
        match self.status.load(Ordering::Relaxed) {
            0 => Status::Starting,
            1 => Status::Running,
            2 => Status::Finished,
            3 => Status::Failed,
            _ => Status::Retrying,
        }
    }

    pub fn set_status(&self, s: Status) {
        self.status.store(s as u8, Ordering::Relaxed);
    }

    /// A starting object has been heard from: it is running (a finished or failed one
    /// stays so).
    pub fn mark_running(&self) {
        // Fails only when the status is no longer `Starting`, which is what we want kept.
        let _ = self.status.compare_exchange(
            Status::Starting as u8,
            Status::Running as u8,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Stopped by `e`.
    pub fn fail(&self, e: impl Into<String>) {
        self.set_error(e);
        self.set_status(Status::Failed);
    }

    pub fn lag(&self) -> Option<u64> {
        u64::try_from(self.lag.load(Ordering::Relaxed)).ok()
    }

    /// Rows in per second since the previous call (called about once a second by one
    /// sampler); [`Stats::rows_per_sec`] reads the last value.
    pub fn sample_rate(&self) -> f64 {
        let rows = Self::get(&self.rows_in);
        let mut r = self.rate.lock();
        let now = Instant::now();
        let dt = now.duration_since(r.at).as_secs_f64();
        if dt > 0.0 {
            r.per_sec = rows.saturating_sub(r.rows) as f64 / dt;
        }
        r.at = now;
        r.rows = rows;
        r.per_sec
    }

    pub fn rows_per_sec(&self) -> f64 {
        self.rate.lock().per_sec
    }

    pub fn set_error(&self, e: impl Into<String>) {
        *self.last_error.lock() = Some(e.into());
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            rows_in: Self::get(&self.rows_in),
            rows_out: Self::get(&self.rows_out),
            late_rows: Self::get(&self.late_rows),
            bad_rows: Self::get(&self.bad_rows),
            watermark: self.watermark(),
            open_windows: Self::get(&self.open_windows),
            open_groups: Self::get(&self.open_groups),
            state_bytes: Self::get(&self.state_bytes),
            key_partitions: Self::get(&self.key_partitions),
            busiest_partition_groups: Self::get(&self.busiest_partition_groups),
            busiest_partition_share: Self::get(&self.busiest_partition_share),
            last_error: self.last_error(),
        }
    }
}

/// Checkpoint figures, shared with /metrics and the status API.
#[derive(Debug, Default)]
pub struct CheckpointStats {
    /// The newest complete checkpoint's epoch (0 before the first).
    pub epoch: AtomicU64,
    /// The epoch the pipeline restored from at start (0: started afresh).
    pub restored_epoch: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    /// The last checkpoint: how long it took (from barrier to manifest), state bytes
    /// written, and when it completed (epoch ms).
    pub last_duration_ms: AtomicU64,
    pub last_bytes: AtomicU64,
    pub last_at_ms: AtomicI64,
    /// How long the restore at start took.
    pub restore_ms: AtomicU64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    pub rows_in: u64,
    pub rows_out: u64,
    pub late_rows: u64,
    pub bad_rows: u64,
    pub watermark: Option<i64>,
    pub open_windows: u64,
    pub open_groups: u64,
    pub state_bytes: u64,
    pub key_partitions: u64,
    pub busiest_partition_groups: u64,
    pub busiest_partition_share: u64,
    pub last_error: Option<String>,
}

/// Render epoch millis as RFC 3339 (UTC) for logs; `-` when there is none, `end` at the end
/// of time.
pub fn fmt_watermark(w: Option<i64>) -> String {
    match w {
        None => "-".into(),
        Some(i64::MAX) => "end".into(),
        Some(ms) => chrono::DateTime::from_timestamp_millis(ms)
            .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
            .unwrap_or_else(|| ms.to_string()),
    }
}
