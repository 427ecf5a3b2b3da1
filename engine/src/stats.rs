//! Live figures for sources, views and sinks, shared with whoever displays them (the
//! terminal progress line now, REST and /metrics later). Atomics so readers never block
//! the pipeline.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

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
    last_error: Mutex<Option<String>>,
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
            state_bytes: AtomicU64::new(0),
            last_error: Mutex::new(None),
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

    pub fn set_error(&self, e: impl Into<String>) {
        if let Ok(mut g) = self.last_error.lock() {
            *g = Some(e.into());
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|g| g.clone())
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
            last_error: self.last_error(),
        }
    }
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
