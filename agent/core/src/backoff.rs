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

/// The join's retries within `--retry-for`: quick after a network or server
/// error, spread out after throttling.
///
/// Throttling is the service saying the whole account asks too fast. At a
/// fleet's boot hundreds of instances hear it at once, and retries within a
/// few seconds only make most of them fail again (a 1,000-instance storm
/// against 10 requests/s cost 8 requests an instance that way). Spreading the
/// first retry over 40 s keeps it near 2.5.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRetry {
    after_error: Backoff,
    after_throttling: Backoff,
}

impl JoinRetry {
    pub const ERROR_FIRST: Duration = Duration::from_secs(1);
    pub const ERROR_MAX: Duration = Duration::from_secs(30);
    pub const THROTTLED_FIRST: Duration = Duration::from_secs(40);
    pub const THROTTLED_MAX: Duration = Duration::from_secs(120);

    /// The schedule for a join that may retry for `retry_for`. A short
    /// budget spreads throttled retries over an eighth of it instead of
    /// 40 s, so that several tries still fit.
    pub fn new(retry_for: Duration) -> Self {
        Self {
            after_error: Backoff::new(Self::ERROR_FIRST, Self::ERROR_MAX),
            after_throttling: Backoff::new(
                Self::THROTTLED_FIRST.min(retry_for / 8),
                Self::THROTTLED_MAX,
            ),
        }
    }

    /// Records a failure at `now` and returns the wait before the next try,
    /// never past `left` (the rest of the budget): a wait that would end
    /// after it is cut short for one last try at the end.
    pub fn failed(
        &mut self,
        throttled: bool,
        now: Instant,
        random: u64,
        left: Duration,
    ) -> Duration {
        let backoff = if throttled {
            &mut self.after_throttling
        } else {
            &mut self.after_error
        };
        backoff.failed(now, random).min(left)
    }

    /// The window the last throttled retry was drawn from, for the log.
    pub fn throttled_window(&self) -> Duration {
        self.after_throttling
            .ceiling(self.after_throttling.failures())
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

    #[test]
    fn a_join_retries_errors_quickly_and_spreads_throttled_retries() {
        let now = Instant::now();
        let ten_minutes = 600 * SECOND;
        let ceilings = |throttled: bool, retry_for: Duration| -> Vec<u64> {
            let mut retry = JoinRetry::new(retry_for);
            (0..5)
                .map(|_| {
                    retry
                        .failed(throttled, now, u64::MAX, retry_for)
                        .as_millis() as u64
                })
                .collect()
        };
        assert_eq!(
            ceilings(false, ten_minutes),
            [1000, 2000, 4000, 8000, 16000]
        );
        assert_eq!(
            ceilings(true, ten_minutes),
            [40_000, 80_000, 120_000, 120_000, 120_000]
        );
        // A short budget: an eighth of it, so that several tries fit.
        assert_eq!(ceilings(true, 8 * SECOND), [1000, 2000, 4000, 8000, 8000]);
        // The two kinds keep their own counts.
        let mut retry = JoinRetry::new(ten_minutes);
        retry.failed(true, now, u64::MAX, ten_minutes);
        assert_eq!(retry.failed(false, now, u64::MAX, ten_minutes), SECOND);
        assert_eq!(retry.throttled_window(), 40 * SECOND);
        // Never past the budget: one last try at its end.
        assert_eq!(retry.failed(true, now, u64::MAX, 3 * SECOND), 3 * SECOND);
    }

    /// 1,000 instances join at once against a Batch held to 10 requests/s (a
    /// token bucket of 10, as the fleet benchmark's proxy): the schedule,
    /// simulated, costs at most 3 requests an instance, and the last joins
    /// within about twice the ideal 100 s. The old schedule (1 s doubling to
    /// 30 s for throttling too) cost about 8.
    #[test]
    fn a_throttled_boot_storm_of_1000_costs_at_most_3_requests_an_instance() {
        let (requests, last) = simulate_storm(1000, 10.0, JoinRetry::new);
        let per_instance = requests as f64 / 1000.0;
        assert!(
            per_instance <= 3.0,
            "{per_instance:.2} requests an instance"
        );
        assert!(last <= 220.0, "the last join after {last:.0} s");
        let (old, _) = simulate_storm(1000, 10.0, |_| JoinRetry {
            after_error: Backoff::new(SECOND, 30 * SECOND),
            after_throttling: Backoff::new(SECOND, 30 * SECOND),
        });
        assert!(
            old as f64 / 1000.0 > 6.0,
            "the simulation tells them apart: {old}"
        );
    }

    /// A discrete-event run of `n` joins starting within the first second;
    /// returns the requests sent and when the last one succeeded (seconds).
    fn simulate_storm(
        n: usize,
        rate: f64,
        schedule: impl Fn(Duration) -> JoinRetry,
    ) -> (usize, f64) {
        let origin = Instant::now();
        let mut random = 0x2545_F491_4F6C_DD1Du64;
        let mut next_random = move || {
            // splitmix64: deterministic, so the figure does not flake.
            random = random.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = random;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let budget = 600 * SECOND;
        let mut joins: Vec<JoinRetry> = (0..n).map(|_| schedule(budget)).collect();
        // (time in ms, instance), earliest first.
        let mut due: std::collections::BinaryHeap<std::cmp::Reverse<(u64, usize)>> = (0..n)
            .map(|i| std::cmp::Reverse((next_random() % 1000, i)))
            .collect();
        let (mut tokens, mut last_refill, mut requests, mut last_join) = (rate, 0u64, 0, 0u64);
        while let Some(std::cmp::Reverse((at, i))) = due.pop() {
            tokens = (tokens + (at - last_refill) as f64 / 1000.0 * rate).min(rate);
            last_refill = at;
            requests += 1;
            if tokens >= 1.0 {
                tokens -= 1.0;
                last_join = at;
                continue;
            }
            let now = origin + Duration::from_millis(at);
            let left = budget.saturating_sub(Duration::from_millis(at));
            let wait = joins[i].failed(true, now, next_random(), left);
            due.push(std::cmp::Reverse((at + 10 + wait.as_millis() as u64, i)));
        }
        (requests, last_join as f64 / 1000.0)
    }
}
