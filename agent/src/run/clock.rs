//! Time and randomness as the loop reads them, and as it records and shows
//! them.

use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::host::entropy::random_u64;

/// The time and the randomness the loop's policies use, read only through
/// this trait so that unit tests can replace them.
pub trait Clock {
    /// Monotonic time: retry timers, schedules, log summaries.
    fn instant(&self) -> Instant;
    /// The wall clock: decisions and records.
    fn utc(&self) -> OffsetDateTime;
    /// A uniformly random number, for jitter.
    fn random(&self) -> u64;
}

/// The machine's clocks and per-process random numbers.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn instant(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
    fn utc(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
    fn random(&self) -> u64 {
        random_u64()
    }
}

/// Decisions and records keep whole seconds, as tags and notices do.
pub(super) fn whole_seconds(at: OffsetDateTime) -> OffsetDateTime {
    at.replace_nanosecond(0).unwrap_or(at)
}

/// A jittered wait as the journal shows it: whole milliseconds.
pub(super) fn shown(wait: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(
        u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
    ))
}
