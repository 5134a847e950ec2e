//! What to log about failures that repeat: the first one in full, then a
//! count at most every `summary_every`, then one line when it works again.
//! A drain that fails for an hour writes a dozen lines, not one per retry.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How often a failure that keeps repeating is summarised.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(300);

/// A line to log, and how loud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Warn(String),
    Info(String),
}

#[derive(Debug, Clone)]
struct Streak {
    since: Instant,
    failures: u64,
    unreported: u64,
    last_report: Instant,
    latest: String,
}

/// Failing activities by kind (a short phrase such as `setting DRAINING`).
#[derive(Debug, Clone)]
pub struct FailureLog {
    streaks: BTreeMap<String, Streak>,
    summary_every: Duration,
}

impl Default for FailureLog {
    fn default() -> Self {
        Self::new(SUMMARY_EVERY)
    }
}

impl FailureLog {
    pub fn new(summary_every: Duration) -> Self {
        Self {
            streaks: BTreeMap::new(),
            summary_every,
        }
    }

    /// `kind` failed with `error` (one line); `then` says what happens next
    /// (`retrying in 4s`). Returns the line to log, if any.
    pub fn failed(&mut self, kind: &str, error: &str, then: &str, now: Instant) -> Option<Line> {
        let then = if then.is_empty() {
            String::new()
        } else {
            format!("; {then}")
        };
        let Some(streak) = self.streaks.get_mut(kind) else {
            self.streaks.insert(
                kind.to_owned(),
                Streak {
                    since: now,
                    failures: 1,
                    unreported: 0,
                    last_report: now,
                    latest: error.to_owned(),
                },
            );
            return Some(Line::Warn(format!(
                "{error}{then} (repeats are counted and summarised every {})",
                rounded(self.summary_every)
            )));
        };
        streak.failures += 1;
        streak.unreported += 1;
        error.clone_into(&mut streak.latest);
        if now.saturating_duration_since(streak.last_report) < self.summary_every {
            return None;
        }
        let line = format!(
            "{} more failure(s) {kind} in the last {}{then}; latest: {error}",
            streak.unreported,
            rounded(now.saturating_duration_since(streak.last_report)),
        );
        streak.unreported = 0;
        streak.last_report = now;
        Some(Line::Warn(line))
    }

    /// `kind` worked: one line if it had been failing.
    pub fn succeeded(&mut self, kind: &str, now: Instant) -> Option<Line> {
        let streak = self.streaks.remove(kind)?;
        Some(Line::Info(format!(
            "{kind} works again after {} failure(s) over {}",
            streak.failures,
            rounded(now.saturating_duration_since(streak.since)),
        )))
    }

    /// Whether `kind` is failing now.
    pub fn is_failing(&self, kind: &str) -> bool {
        self.streaks.contains_key(kind)
    }
}

/// Whole seconds, as humantime writes them: `1h 4m`, `5m 15s`, `7s`.
fn rounded(span: Duration) -> String {
    let secs = span.as_secs();
    let parts = [
        (secs / 3600, "h"),
        (secs % 3600 / 60, "m"),
        (secs % 60, "s"),
    ];
    let shown: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if shown.is_empty() {
        "0s".to_owned()
    } else {
        shown.join(" ")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn logs_the_first_failure_then_a_count_then_the_recovery() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut log = FailureLog::new(Duration::from_secs(300));
        let kind = "setting DRAINING";

        let first = log.failed(
            kind,
            "ecs:UpdateContainerInstancesState: boom",
            "retrying in 1s",
            at(0),
        );
        assert_eq!(
            first,
            Some(Line::Warn(
                "ecs:UpdateContainerInstancesState: boom; retrying in 1s (repeats are counted and summarised every 5m)".into()
            ))
        );
        for s in [1, 3, 7, 15, 45, 75, 105, 135, 165, 195, 225, 255, 285] {
            assert_eq!(
                log.failed(kind, "boom", "retrying in 30s", at(s)),
                None,
                "{s}"
            );
        }
        let summary = log.failed(kind, "ecs:X: throttled", "retrying in 30s", at(315));
        assert_eq!(
            summary,
            Some(Line::Warn(
                "14 more failure(s) setting DRAINING in the last 5m 15s; retrying in 30s; latest: ecs:X: throttled".into()
            ))
        );
        assert_eq!(log.failed(kind, "boom", "", at(345)), None);
        assert!(log.is_failing(kind));
        assert_eq!(
            log.succeeded(kind, at(360)),
            Some(Line::Info(
                "setting DRAINING works again after 16 failure(s) over 6m".into()
            ))
        );
        assert_eq!(log.succeeded(kind, at(361)), None, "said once");
        assert!(log
            .failed(kind, "boom", "", at(400))
            .is_some_and(|l| matches!(l, Line::Warn(_))));
    }

    #[test]
    fn kinds_are_counted_apart() {
        let now = Instant::now();
        let mut log = FailureLog::default();
        assert!(log.failed("a", "x", "", now).is_some());
        assert!(log.failed("b", "y", "", now).is_some());
        assert!(log.failed("a", "x", "", now).is_none());
        assert!(log.succeeded("b", now).is_some());
        assert!(log.is_failing("a"));
    }
}
