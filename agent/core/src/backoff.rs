//! One backoff for every retry: exponential, capped, with full jitter, so a
//! fleet that fails at the same moment does not retry in lockstep.
//!
//! Pure: the caller passes the time and a random number, so a test can
//! replay any schedule.

use std::time::{Duration, Instant};

/// Exponential backoff with full jitter: after `n` failures in a row the
/// next attempt waits a random time up to `min(max, first · 2^(n-1))`, and
/// at least a tenth of `first`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    failures: u32,
    not_before: Option<Instant>,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            failures: 0,
            not_before: None,
        }
    }

    /// Failures in a row since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether an attempt may be made at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|at| now >= at)
    }

    /// The longest the next wait can be, after `failures` failures.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.first.saturating_mul(1 << doublings).min(self.max)
    }

    /// Records a failure at `now` and returns how long to wait before the
    /// next attempt; `random` is any uniformly random number.
    pub fn failed(&mut self, now: Instant, random: u64) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let wait = jittered(self.ceiling(self.failures), random).max(self.first / 10);
        // A wait past what `Instant` can hold is a year: still not ready.
        self.not_before = now
            .checked_add(wait)
            .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)));
        wait
    }

    /// A success: the next failure starts from `first` again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.not_before = None;
    }
}

/// A point of `[0, ceiling]` picked by `random`.
fn jittered(ceiling: Duration, random: u64) -> Duration {
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    let picked = u128::from(nanos) * u128::from(random) / u128::from(u64::MAX);
    Duration::from_nanos(u64::try_from(picked).unwrap_or(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn waits_grow_to_the_cap_and_stay_under_each_ceiling() {
        let mut backoff = Backoff::new(SECOND, 30 * SECOND);
        let now = Instant::now();
        let waits: Vec<_> = (0..8).map(|_| backoff.failed(now, u64::MAX)).collect();
        let secs: Vec<_> = waits.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert!(!backoff.ready(now));
        assert!(backoff.ready(now + 30 * SECOND));
        backoff.succeeded();
        assert!(backoff.ready(now));
        assert_eq!(backoff.failures(), 0);
        assert_eq!(backoff.failed(now, u64::MAX), SECOND, "starts over");
    }

    #[test]
    fn jitter_spreads_a_fleet_over_the_whole_window() {
        let now = Instant::now();
        // 1000 instances failing at once, each with its own random number.
        let waits: Vec<Duration> = (0..1000u64)
            .map(|i| {
                let mut b = Backoff::new(SECOND, 60 * SECOND);
                b.failed(now, i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                b.failed(now, i.wrapping_mul(0xD1B5_4A32_D192_ED03))
            })
            .collect();
        let ceiling = 2 * SECOND;
        assert!(waits.iter().all(|w| *w <= ceiling && *w >= SECOND / 10));
        let early = waits.iter().filter(|w| **w < ceiling / 2).count();
        assert!(
            (400..600).contains(&early),
            "about half in the first half of the window: {early}"
        );
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(distinct.len() > 900, "not in lockstep: {}", distinct.len());
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let mut b = Backoff::new(Duration::MAX, Duration::MAX);
        let now = Instant::now();
        for _ in 0..100 {
            b.failed(now, u64::MAX);
        }
        assert_eq!(b.failures(), 100);
        assert!(!b.ready(now + Duration::from_secs(3600)));
    }
}
