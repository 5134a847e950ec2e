//! Auto Scaling's termination lifecycle hook: when its heartbeats and its
//! completion are due.
//!
//! When Auto Scaling terminates an instance whose group has a termination
//! hook, the instance waits in `Terminating:Wait` until the hook is
//! completed or times out. blockwatch keeps the wait alive with
//! `RecordLifecycleActionHeartbeat` while it drains and its jobs stop, then
//! sends `CompleteLifecycleAction` with `CONTINUE` once: when nothing runs
//! any more, at the drain's end, or before the hook's global timeout,
//! whichever comes first. An instance then never waits idle (and billed)
//! for the rest of the hook's timeout.
//!
//! Heartbeats: one at once (Auto Scaling started the hook's timer before
//! our poll saw `Terminated`), then every half heartbeat timeout. Half
//! leaves the other half for a failed call to be retried (the executor's
//! backoff is at most 30 s, and Auto Scaling's shortest heartbeat timeout
//! is 30 s) and for a poll's delay.
//!
//! Recorded in the state (heartbeats, completion), so that a restart
//! resumes the heartbeats and never completes twice.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The longest a lifecycle hook's wait may last, whatever its heartbeats:
/// 48 hours, or 100 heartbeat timeouts if that is shorter (Auto Scaling's
/// `GlobalTimeout`).
pub const GLOBAL_TIMEOUT_MAX: Duration = Duration::from_secs(48 * 3600);
pub const GLOBAL_TIMEOUT_HEARTBEATS: u32 = 100;

/// The transition of the hooks blockwatch completes.
pub const TERMINATING: &str = "autoscaling:EC2_INSTANCE_TERMINATING";
/// The result blockwatch completes the hook with: terminate now.
pub const CONTINUE: &str = "CONTINUE";

/// A group's termination hook, as configured or discovered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleHook {
    /// The Auto Scaling group's name.
    pub group: String,
    /// The hook's name.
    pub name: String,
    /// `HeartbeatTimeout`.
    #[serde(with = "whole_seconds")]
    pub heartbeat_timeout: Duration,
    /// `GlobalTimeout` as Auto Scaling reported it (absent: the maximum).
    #[serde(
        with = "whole_seconds::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub global_timeout: Option<Duration>,
}

impl LifecycleHook {
    /// How long the wait may last at most: the reported global timeout,
    /// never more than Auto Scaling allows.
    pub fn global_timeout(&self) -> Duration {
        let most = self
            .heartbeat_timeout
            .saturating_mul(GLOBAL_TIMEOUT_HEARTBEATS)
            .min(GLOBAL_TIMEOUT_MAX);
        self.global_timeout
            .map_or(most, |reported| reported.min(most))
    }

    /// Half the heartbeat timeout (see the module's notes).
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_timeout / 2
    }
}

/// One lifecycle action (one `Terminated`), as recorded in the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleAction {
    pub hook: LifecycleHook,
    /// When `Terminated` was first seen: the wait started no later.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// Heartbeats Auto Scaling accepted, and when the last one was.
    #[serde(default)]
    pub heartbeats: u32,
    #[serde(
        with = "time::serde::rfc3339::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub last_heartbeat_at: Option<OffsetDateTime>,
    /// When Auto Scaling accepted `CONTINUE`.
    #[serde(
        with = "time::serde::rfc3339::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub completed_at: Option<OffsetDateTime>,
    /// When Auto Scaling said it has no such action any more (it timed
    /// out, or a previous process completed it): nothing more is sent.
    #[serde(
        with = "time::serde::rfc3339::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub gone_at: Option<OffsetDateTime>,
}

impl LifecycleAction {
    pub fn new(hook: LifecycleHook, started_at: OffsetDateTime) -> Self {
        Self {
            hook,
            started_at,
            heartbeats: 0,
            last_heartbeat_at: None,
            completed_at: None,
            gone_at: None,
        }
    }

    /// When Auto Scaling ends the wait by itself, whatever the heartbeats.
    pub fn global_timeout_at(&self) -> OffsetDateTime {
        self.started_at
            .saturating_add(duration(self.hook.global_timeout()))
    }

    /// The latest time blockwatch completes the hook: one heartbeat
    /// interval before the global timeout, so that a failed call has time
    /// to be retried.
    pub fn complete_by(&self) -> OffsetDateTime {
        self.global_timeout_at()
            .saturating_sub(duration(self.hook.heartbeat_interval()))
    }

    /// Whether a heartbeat is due: none sent yet, or the last one an
    /// interval old; never past the global timeout. One "in the future"
    /// was timed by a clock that has since stepped back: due now.
    pub fn heartbeat_due(&self, now: OffsetDateTime) -> bool {
        let interval = duration(self.hook.heartbeat_interval());
        let due = self
            .last_heartbeat_at
            .is_none_or(|at| at > now || now >= at.saturating_add(interval));
        due && !self.is_over() && now < self.global_timeout_at()
    }

    /// Whether nothing more is to be sent.
    pub fn is_over(&self) -> bool {
        self.completed_at.is_some() || self.gone_at.is_some()
    }
}

/// What the hook needs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookStep {
    Heartbeat,
    Complete,
}

/// The step due at `now` for `action`: completion once `nothing_runs`, at
/// `end` (the drain's end, when another signal gives one), or at
/// [`LifecycleAction::complete_by`]; else a heartbeat when the last one is
/// an interval old (or none was sent), never past the global timeout.
pub fn step(
    now: OffsetDateTime,
    action: &LifecycleAction,
    nothing_runs: bool,
    end: Option<OffsetDateTime>,
) -> Option<HookStep> {
    if action.is_over() {
        return None;
    }
    let deadline = end.map_or(action.complete_by(), |end| end.min(action.complete_by()));
    if nothing_runs || now >= deadline {
        return Some(HookStep::Complete);
    }
    action.heartbeat_due(now).then_some(HookStep::Heartbeat)
}

fn duration(d: Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

/// Durations as whole seconds in the state file, as Auto Scaling gives them.
mod whole_seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }

    pub(super) mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        pub(in super::super) fn serialize<S: Serializer>(
            d: &Option<Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.serialize_some(&d.as_secs()),
                None => s.serialize_none(),
            }
        }

        pub(in super::super) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Duration>, D::Error> {
            Option::<u64>::deserialize(d).map(|secs| secs.map(Duration::from_secs))
        }
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    const T0: OffsetDateTime = datetime!(2026-11-29 12:00:00 UTC);

    fn secs(s: i64) -> time::Duration {
        time::Duration::seconds(s)
    }

    fn hook(heartbeat: u64, global: Option<u64>) -> LifecycleHook {
        LifecycleHook {
            group: "batch-asg".into(),
            name: "drain".into(),
            heartbeat_timeout: Duration::from_secs(heartbeat),
            global_timeout: global.map(Duration::from_secs),
        }
    }

    #[test]
    fn the_global_timeout_is_the_reported_one_within_what_auto_scaling_allows() {
        let table = [
            // (heartbeat, reported global, expected)
            (3600, None, 48 * 3600),
            (3600, Some(7200), 7200),
            (3600, Some(1_000_000), 48 * 3600),
            (60, None, 6000),
            (60, Some(100_000), 6000),
            (30, Some(300), 300),
        ];
        for (heartbeat, global, expected) in table {
            assert_eq!(
                hook(heartbeat, global).global_timeout(),
                Duration::from_secs(expected),
                "heartbeat {heartbeat} s, reported {global:?}"
            );
        }
    }

    #[test]
    fn heartbeats_go_at_once_then_every_half_heartbeat_timeout() {
        let mut action = LifecycleAction::new(hook(60, None), T0);
        let table = [
            // (last heartbeat, now, due)
            (None, T0, Some(HookStep::Heartbeat)),
            (Some(T0), T0 + secs(29), None),
            (Some(T0), T0 + secs(30), Some(HookStep::Heartbeat)),
            (Some(T0 + secs(30)), T0 + secs(59), None),
            // The clock stepped back past the last heartbeat.
            (
                Some(T0 + secs(30)),
                T0 + secs(10),
                Some(HookStep::Heartbeat),
            ),
        ];
        for (last, now, due) in table {
            action.last_heartbeat_at = last;
            assert_eq!(
                step(now, &action, false, None),
                due,
                "last {last:?}, now {now}"
            );
        }
    }

    #[test]
    fn completes_when_nothing_runs_at_the_end_or_before_the_global_timeout() {
        // Global timeout 300 s, heartbeat interval 15 s: complete by 285 s.
        let action = LifecycleAction {
            last_heartbeat_at: Some(T0),
            ..LifecycleAction::new(hook(30, Some(300)), T0)
        };
        let table = [
            // (now, nothing runs, another end, due)
            (T0 + secs(5), true, None, Some(HookStep::Complete)),
            (T0 + secs(5), false, None, None),
            (
                T0 + secs(120),
                false,
                Some(T0 + secs(120)),
                Some(HookStep::Complete),
            ),
            (
                T0 + secs(119),
                false,
                Some(T0 + secs(120)),
                Some(HookStep::Heartbeat),
            ),
            (T0 + secs(284), false, None, Some(HookStep::Heartbeat)),
            (T0 + secs(285), false, None, Some(HookStep::Complete)),
            // An end later than the bound changes nothing.
            (
                T0 + secs(285),
                false,
                Some(T0 + secs(900)),
                Some(HookStep::Complete),
            ),
        ];
        for (now, nothing_runs, end, due) in table {
            assert_eq!(
                step(now, &action, nothing_runs, end),
                due,
                "now {now}, nothing runs {nothing_runs}, end {end:?}"
            );
        }
    }

    #[test]
    fn nothing_is_sent_once_completed_or_gone() {
        let completed = LifecycleAction {
            completed_at: Some(T0),
            ..LifecycleAction::new(hook(60, None), T0)
        };
        let gone = LifecycleAction {
            gone_at: Some(T0),
            ..LifecycleAction::new(hook(60, None), T0)
        };
        for action in [completed, gone] {
            assert_eq!(step(T0 + secs(1), &action, true, None), None);
            assert_eq!(step(T0 + secs(90_000), &action, false, None), None);
        }
    }

    #[test]
    fn no_heartbeat_past_the_global_timeout() {
        // A heartbeat interval longer than the bound's margin cannot
        // happen with Auto Scaling's limits; the rule holds regardless.
        let action = LifecycleAction {
            last_heartbeat_at: Some(T0),
            ..LifecycleAction::new(hook(30, Some(300)), T0)
        };
        // Past complete_by the step is always the completion.
        assert_eq!(
            step(T0 + secs(301), &action, false, None),
            Some(HookStep::Complete)
        );
        assert!(action.complete_by() < action.global_timeout_at());
    }

    #[test]
    fn the_record_reads_back_with_whole_seconds() {
        let action = LifecycleAction {
            heartbeats: 2,
            last_heartbeat_at: Some(T0 + secs(30)),
            ..LifecycleAction::new(hook(60, Some(600)), T0)
        };
        let text = serde_json::to_string(&action).unwrap();
        assert!(text.contains("\"heartbeat_timeout\":60"), "{text}");
        assert_eq!(
            serde_json::from_str::<LifecycleAction>(&text).unwrap(),
            action
        );
    }
}
