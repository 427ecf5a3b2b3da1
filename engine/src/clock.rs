//! Processing time. The engine never reads the system clock itself: whoever drives a
//! pipeline gives it a [`Clock`]. The runtime uses [`SystemClock`]; tests and the .slt
//! runner use a [`ManualClock`] they move by hand, so idle timeouts and `EMIT EVERY`
//! intervals are deterministic.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// A source of processing time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
    /// Microseconds since the Unix epoch (for latency figures).
    fn now_us(&self) -> i64 {
        self.now_ms().saturating_mul(1000)
    }
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        system_now_us().div_euclid(1000)
    }
    fn now_us(&self) -> i64 {
        system_now_us()
    }
}

/// The wall clock in epoch microseconds (0 if the system clock is before 1970).
fn system_now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The wall clock in epoch milliseconds, for code outside a pipeline (logs, API
/// responses, checkpoint timestamps).
pub fn wall_ms() -> i64 {
    SystemClock.now_ms()
}

/// A clock that moves only when told to.
#[derive(Debug, Default, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(now_ms: i64) -> Self {
        ManualClock(Arc::new(AtomicI64::new(now_ms)))
    }

    /// Set the time; it never goes backwards.
    pub fn set(&self, now_ms: i64) {
        self.0.fetch_max(now_ms, Ordering::Relaxed);
    }

    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_forward_only() {
        let c = ManualClock::new(1_000);
        c.set(500);
        assert_eq!(c.now_ms(), 1_000);
        c.advance(250);
        assert_eq!(c.now_ms(), 1_250);
        assert_eq!(c.now_us(), 1_250_000);
        let shared = c.clone();
        shared.set(5_000);
        assert_eq!(c.now_ms(), 5_000);
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now_ms() > 1_577_836_800_000);
        assert!(wall_ms() > 1_577_836_800_000);
    }
}
