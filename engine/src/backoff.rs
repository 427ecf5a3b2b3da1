//! How Weir retries what an outside system refused for now (a database restarting, a
//! broker coordinator loading, a schema registry answering 5xx): exponential backoff with
//! jitter, one policy for every connector.
//!
//! [`Backoff`] is a policy: the first delay, the cap the delays double up to, and
//! optionally how many retries or how long in all before giving up. [`Attempts`] walks
//! the policy for one operation: after each failure it says how long to wait, or that it
//! is time to give up. [`retry`] runs an async operation under a policy, retrying the
//! errors that are [`WeirError::is_retryable`]; [`retry_blocking`] does the same on a
//! thread of its own (never on an async worker: it sleeps the thread).
//!
//! Each delay is jittered to between half and all of its nominal value, so sinks that
//! failed together do not retry together.

use crate::error::{Result, WeirError};
use std::future::Future;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

/// A retry policy (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    jitter: bool,
    max_retries: Option<u32>,
    give_up_after: Option<Duration>,
}

impl Backoff {
    /// Delays from `first`, doubling up to `max`, jittered; retries forever.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            jitter: true,
            max_retries: None,
            give_up_after: None,
        }
    }

    /// Give up after `n` retries (`n + 1` attempts).
    pub const fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = Some(n);
        self
    }

    /// Give up when a failure comes this long after the first attempt started.
    pub const fn give_up_after(mut self, d: Duration) -> Self {
        self.give_up_after = Some(d);
        self
    }

    /// Exact delays (for tests and for waits that are not about contention).
    pub const fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// Start walking the policy for one operation.
    pub fn start(&self) -> Attempts {
        Attempts {
            policy: *self,
            retries: 0,
            next: self.first.min(self.max),
            started: Instant::now(),
            random: std::hash::RandomState::new(),
        }
    }
}

/// One operation's way through a [`Backoff`].
#[derive(Debug)]
pub struct Attempts {
    policy: Backoff,
    retries: u32,
    next: Duration,
    started: Instant,
    /// Randomly keyed per instance: hashing the retry count gives the jitter.
    random: std::hash::RandomState,
}

impl Attempts {
    /// After a failed attempt: how long to wait before the next one, or `None` when the
    /// policy gives up.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self
            .policy
            .max_retries
            .is_some_and(|max| self.retries >= max)
            || self
                .policy
                .give_up_after
                .is_some_and(|d| self.started.elapsed() >= d)
        {
            return None;
        }
        self.retries += 1;
        let nominal = self.next;
        self.next = nominal.saturating_mul(2).min(self.policy.max);
        if !self.policy.jitter {
            return Some(nominal);
        }
        let r = self.random.hash_one(self.retries);
        // The top 53 bits as a fraction in [0, 1).
        let frac = (r >> 11) as f64 / (1u64 << 53) as f64;
        Some(nominal.mul_f64(0.5 + 0.5 * frac))
    }

    /// After a failed attempt with `e`: the wait before the next attempt, or `None` when
    /// `e` is not worth retrying or the policy gives up.
    pub fn after(&mut self, e: &WeirError) -> Option<Duration> {
        if e.is_retryable() {
            self.next_delay()
        } else {
            None
        }
    }

    /// How many retries were granted so far (attempts made minus one, once one failed).
    pub fn retries(&self) -> u32 {
        self.retries
    }
}

/// Run `attempt` until it succeeds, fails with an error that is not retryable, or the
/// policy gives up (the last error is returned). `on_retry(error, retry number, wait)` is
/// called before each wait, to log or count.
pub async fn retry<T, Fut>(
    policy: &Backoff,
    mut attempt: impl FnMut() -> Fut,
    mut on_retry: impl FnMut(&WeirError, u32, Duration),
) -> Result<T>
where
    Fut: Future<Output = Result<T>>,
{
    let mut attempts = policy.start();
    loop {
        let e = match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let Some(wait) = attempts.after(&e) else {
            return Err(e);
        };
        on_retry(&e, attempts.retries(), wait);
        tokio::time::sleep(wait).await;
    }
}

/// [`retry`] for code on a thread of its own or under `spawn_blocking`: waits by sleeping
/// the thread, so never call it on an async worker.
pub fn retry_blocking<T>(
    policy: &Backoff,
    mut attempt: impl FnMut() -> Result<T>,
    mut on_retry: impl FnMut(&WeirError, u32, Duration),
) -> Result<T> {
    let mut attempts = policy.start();
    loop {
        let e = match attempt() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let Some(wait) = attempts.after(&e) else {
            return Err(e);
        };
        on_retry(&e, attempts.retries(), wait);
        std::thread::sleep(wait);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_double_up_to_the_cap() {
        let mut a = Backoff::new(100 * MS, 1000 * MS).without_jitter().start();
        let delays: Vec<Duration> = (0..6).map(|_| a.next_delay().unwrap()).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1000, 1000].map(|m| m * MS).to_vec()
        );
        assert_eq!(a.retries(), 6);
        // A first delay above the cap starts at the cap.
        let mut a = Backoff::new(5000 * MS, 1000 * MS).without_jitter().start();
        assert_eq!(a.next_delay(), Some(1000 * MS));
    }

    #[test]
    fn jitter_stays_between_half_and_all() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            let mut a = Backoff::new(1000 * MS, 1000 * MS).start();
            for _ in 0..10 {
                let d = a.next_delay().unwrap();
                assert!(d >= 500 * MS && d <= 1000 * MS, "{d:?}");
                seen.insert(d);
            }
        }
        // Jittered: not all the same.
        assert!(seen.len() > 10, "{seen:?}");
    }

    #[test]
    fn gives_up_after_max_retries_or_time() {
        let mut a = Backoff::new(MS, MS).max_retries(2).start();
        assert!(a.next_delay().is_some());
        assert!(a.next_delay().is_some());
        assert_eq!(a.next_delay(), None);
        let mut a = Backoff::new(MS, MS).give_up_after(Duration::ZERO).start();
        assert_eq!(a.next_delay(), None);
        let mut a = Backoff::new(MS, MS)
            .give_up_after(Duration::from_secs(3600))
            .start();
        assert!(a.next_delay().is_some());
    }

    #[test]
    fn only_retryable_errors_are_retried() {
        let mut a = Backoff::new(MS, MS).start();
        assert_eq!(a.after(&WeirError::external("refused")), None);
        assert_eq!(a.retries(), 0);
        assert!(a.after(&WeirError::external("down").retryable()).is_some());
        assert_eq!(a.retries(), 1);
    }

    #[tokio::test]
    async fn retry_runs_until_success_or_a_fatal_error_or_the_limit() {
        let policy = Backoff::new(MS, MS).max_retries(3);
        let mut calls = 0;
        let mut logged = Vec::new();
        let v = retry(
            &policy,
            || {
                calls += 1;
                let n = calls;
                async move {
                    if n < 3 {
                        Err(WeirError::external(format!("down {n}")).retryable())
                    } else {
                        Ok(n)
                    }
                }
            },
            |e, retry, _| logged.push(format!("{retry}: {e}")),
        )
        .await
        .unwrap();
        assert_eq!(v, 3);
        assert_eq!(logged, vec!["1: down 1", "2: down 2"]);

        let mut calls = 0;
        let e = retry(
            &policy,
            || {
                calls += 1;
                async { Err::<(), _>(WeirError::external("constraint")) }
            },
            |_, _, _| {},
        )
        .await
        .unwrap_err();
        assert_eq!((calls, e.to_string()), (1, "constraint".to_string()));

        let mut calls = 0;
        let e = retry_blocking(
            &policy,
            || {
                calls += 1;
                Err::<(), _>(WeirError::external("still down").retryable())
            },
            |_, _, _| {},
        )
        .unwrap_err();
        assert_eq!(calls, 4);
        assert!(e.is_retryable());
    }
}
