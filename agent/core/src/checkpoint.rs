//! The checkpoint signal: which signals a job may ask for, and when the one
//! signal for an end is due.
//!
//! A container opts in through its environment
//! ([`CHECKPOINT_SIGNAL_ENV`]`=SIGUSR1`); at `checkpoint_lead` before the
//! end blockwatch sends that signal to each opted-in container of this
//! instance's ECS tasks, once per end. The end is `stop_at` (when
//! blockwatch stops what still runs), or the deadline when nothing will be
//! stopped.
//!
//! Once per end, across restarts: a pass is recorded before its first
//! signal, so a process killed mid-pass never sends a second one. An end
//! that moves earlier is a new end (signaled again); one that moves later
//! is the same end, unless its checkpoint time is in the future again, when
//! the signal is re-armed for that time, as a drain is undone for it.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The environment variable a container opts in with.
pub const CHECKPOINT_SIGNAL_ENV: &str = "BLOCKWATCH_CHECKPOINT_SIGNAL";

/// After a pass that reached neither the ECS agent nor Docker (nothing was
/// signaled), the next try comes this much later, until the end.
pub const CHECKPOINT_RETRY: Duration = Duration::from_secs(30);

/// The signals a job may ask for: the ones a program can catch and that
/// mean "wrap up" by convention. Anything else (SIGKILL and SIGSTOP cannot
/// be caught; others would crash or confuse a job) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CheckpointSignal {
    Usr1,
    Usr2,
    Hup,
    Int,
    Term,
}

impl CheckpointSignal {
    pub const ALL: [Self; 5] = [Self::Usr1, Self::Usr2, Self::Hup, Self::Int, Self::Term];

    /// The name Docker's kill API takes and the logs say.
    pub fn name(self) -> &'static str {
        match self {
            Self::Usr1 => "SIGUSR1",
            Self::Usr2 => "SIGUSR2",
            Self::Hup => "SIGHUP",
            Self::Int => "SIGINT",
            Self::Term => "SIGTERM",
        }
    }

    /// The allowed names, for messages and docs.
    pub fn allowed_list() -> String {
        Self::ALL.map(Self::name).join(", ")
    }

    /// Reads an opt-in value: a signal name, with or without `SIG`, in any
    /// case (`SIGUSR1`, `USR1`, `sigusr1`), spaces around ignored. Numbers
    /// are refused: they differ between architectures.
    pub fn parse(value: &str) -> Result<Self, SignalRefusal> {
        let upper = value.trim().to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        let refused = |why| SignalRefusal {
            value: value.to_owned(),
            why,
        };
        match bare {
            "USR1" => Ok(Self::Usr1),
            "USR2" => Ok(Self::Usr2),
            "HUP" => Ok(Self::Hup),
            "INT" => Ok(Self::Int),
            "TERM" => Ok(Self::Term),
            "KILL" | "STOP" => Err(refused(RefusalReason::Uncatchable)),
            "" => Err(refused(RefusalReason::Empty)),
            _ => Err(refused(RefusalReason::NotAllowed)),
        }
    }
}

impl fmt::Display for CheckpointSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an opt-in value is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// SIGKILL or SIGSTOP: a job cannot catch it, so it cannot checkpoint.
    Uncatchable,
    Empty,
    NotAllowed,
}

/// An opt-in value that is not an allowed signal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{CHECKPOINT_SIGNAL_ENV}={value:?} is refused: {}", self.reason_text())]
pub struct SignalRefusal {
    pub value: String,
    pub why: RefusalReason,
}

impl SignalRefusal {
    fn reason_text(&self) -> String {
        let allowed = CheckpointSignal::allowed_list();
        match self.why {
            RefusalReason::Uncatchable => {
                format!("a job cannot catch it, so it cannot checkpoint (allowed: {allowed})")
            }
            RefusalReason::Empty => format!("it names no signal (allowed: {allowed})"),
            RefusalReason::NotAllowed => format!("not an allowed signal (allowed: {allowed})"),
        }
    }
}

/// The signal pass for one end, as recorded in the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The end it is for (`stop_at`, or the deadline).
    #[serde(with = "time::serde::rfc3339")]
    pub end: OffsetDateTime,
    /// When the pass started: recorded before its first signal.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// When the pass finished, having reached the ECS agent and Docker.
    #[serde(
        with = "time::serde::rfc3339::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub signaled_at: Option<OffsetDateTime>,
    /// How many containers it signaled.
    #[serde(default)]
    pub containers: u32,
    /// When the pass found the ECS agent or Docker unreachable, having
    /// signaled nothing: tried again after [`CHECKPOINT_RETRY`].
    #[serde(
        with = "time::serde::rfc3339::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub unreached_at: Option<OffsetDateTime>,
}

impl Checkpoint {
    pub fn started(end: OffsetDateTime, now: OffsetDateTime) -> Self {
        Self {
            end,
            started_at: now,
            signaled_at: None,
            containers: 0,
            unreached_at: None,
        }
    }
}

/// What one decision says about the signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointPlan {
    /// When the signal goes (or went) for the end in force.
    pub at: Option<OffsetDateTime>,
    /// The record to keep (`None`: forgotten, the end it was for is gone).
    pub record: Option<Checkpoint>,
    /// The end to signal for now, if a pass is due.
    pub due: Option<OffsetDateTime>,
}

/// The signal for `end` (the end in force, if any), given the `lead`
/// (`None`: off) and what was recorded. `may_signal` is false where there
/// is nothing to signal (not joined, or powering off).
pub fn plan(
    now: OffsetDateTime,
    end: Option<OffsetDateTime>,
    lead: Option<Duration>,
    recorded: Option<&Checkpoint>,
    may_signal: bool,
) -> CheckpointPlan {
    let (Some(end), Some(lead)) = (end, lead) else {
        return CheckpointPlan {
            at: None,
            // No end: the one it was for is over (canceled or done); an end
            // seen later is a new one. Off: nothing to keep.
            record: recorded.cloned().filter(|_| end.is_some()),
            due: None,
        };
    };
    let at = end.saturating_sub(time::Duration::try_from(lead).unwrap_or(time::Duration::MAX));
    let record = recorded
        .filter(|r| {
            // Moved later with its time in the future again: re-armed.
            let rearmed = end > r.end && now < at;
            !rearmed
        })
        .cloned();
    let retry = |r: &Checkpoint| {
        r.signaled_at.is_none()
            && r.unreached_at.is_some_and(|unreached| {
                now >= unreached
                    .saturating_add(time::Duration::try_from(CHECKPOINT_RETRY).unwrap_or_default())
            })
            && now < end
    };
    let due = match &record {
        None => now >= at,
        // Moved earlier: a new end.
        Some(r) if end < r.end => now >= at,
        Some(r) => retry(r),
    };
    CheckpointPlan {
        at: Some(at),
        record,
        due: (due && may_signal).then_some(end),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use time::macros::datetime;

    use super::*;

    const LEAD: Option<Duration> = Some(Duration::from_secs(300));
    const END: OffsetDateTime = datetime!(2026-12-07 18:00:00 UTC);

    #[test]
    fn the_allowed_signals_parse_in_any_common_spelling() {
        for (text, signal) in [
            ("SIGUSR1", CheckpointSignal::Usr1),
            ("USR1", CheckpointSignal::Usr1),
            (" sigusr2 ", CheckpointSignal::Usr2),
            ("SIGHUP", CheckpointSignal::Hup),
            ("int", CheckpointSignal::Int),
            ("SIGTERM", CheckpointSignal::Term),
        ] {
            assert_eq!(CheckpointSignal::parse(text), Ok(signal), "{text}");
        }
    }

    #[test]
    fn kill_stop_numbers_and_unknown_names_are_refused_with_the_allowed_list() {
        let refusal = CheckpointSignal::parse("SIGKILL").unwrap_err();
        assert_eq!(refusal.why, RefusalReason::Uncatchable);
        let text = refusal.to_string();
        assert!(
            text.contains("BLOCKWATCH_CHECKPOINT_SIGNAL=\"SIGKILL\" is refused"),
            "{text}"
        );
        assert!(
            text.contains("SIGUSR1, SIGUSR2, SIGHUP, SIGINT, SIGTERM"),
            "{text}"
        );
        assert_eq!(
            CheckpointSignal::parse("STOP").unwrap_err().why,
            RefusalReason::Uncatchable
        );
        for value in ["10", "SIGSEGV", "SIGUSR3", "usr 1"] {
            assert_eq!(
                CheckpointSignal::parse(value).unwrap_err().why,
                RefusalReason::NotAllowed,
                "{value}"
            );
        }
        assert_eq!(
            CheckpointSignal::parse(" ").unwrap_err().why,
            RefusalReason::Empty
        );
    }

    #[test]
    fn the_signal_is_due_at_the_lead_before_the_end_and_not_before() {
        let before = plan(
            END - time::Duration::minutes(6),
            Some(END),
            LEAD,
            None,
            true,
        );
        assert_eq!(before.at, Some(datetime!(2026-12-07 17:55:00 UTC)));
        assert_eq!(before.due, None);
        let at = plan(
            datetime!(2026-12-07 17:55:00 UTC),
            Some(END),
            LEAD,
            None,
            true,
        );
        assert_eq!(at.due, Some(END));
    }

    #[test]
    fn an_end_learned_with_less_than_the_lead_left_is_signaled_at_once() {
        let notice = plan(
            END - time::Duration::minutes(2),
            Some(END),
            LEAD,
            None,
            true,
        );
        assert_eq!(notice.due, Some(END));
    }

    #[test]
    fn off_or_without_an_end_or_where_nothing_may_be_signaled_nothing_is_due() {
        let late = END - time::Duration::minutes(1);
        assert_eq!(plan(late, Some(END), None, None, true).due, None);
        assert_eq!(plan(late, None, LEAD, None, true).due, None);
        let not_joined = plan(late, Some(END), LEAD, None, false);
        assert_eq!(not_joined.due, None);
        assert!(not_joined.at.is_some());
    }

    #[test]
    fn a_recorded_pass_is_never_repeated_for_the_same_end_even_unfinished() {
        let now = END - time::Duration::minutes(4);
        let signaled = Checkpoint {
            signaled_at: Some(now),
            containers: 2,
            ..Checkpoint::started(END, now)
        };
        assert_eq!(plan(now, Some(END), LEAD, Some(&signaled), true).due, None);
        // Killed mid-pass: some containers may have their signal.
        let unfinished = Checkpoint::started(END, now);
        let later = END - time::Duration::minutes(1);
        let kept = plan(later, Some(END), LEAD, Some(&unfinished), true);
        assert_eq!(kept.due, None);
        assert_eq!(kept.record, Some(unfinished));
    }

    #[test]
    fn an_end_moved_earlier_is_signaled_again_and_one_moved_later_is_not() {
        let now = END - time::Duration::minutes(4);
        let signaled = Checkpoint {
            signaled_at: Some(now),
            ..Checkpoint::started(END, now)
        };
        let earlier = END - time::Duration::minutes(2);
        assert_eq!(
            plan(now, Some(earlier), LEAD, Some(&signaled), true).due,
            Some(earlier)
        );
        // Its checkpoint time (17:56) has come: the same end, moved.
        let later = END + time::Duration::minutes(1);
        let moved = plan(now, Some(later), LEAD, Some(&signaled), true);
        assert_eq!(moved.due, None);
        assert_eq!(moved.record, Some(signaled));
    }

    #[test]
    fn an_end_moved_so_late_that_its_time_is_ahead_again_is_rearmed_for_that_time() {
        let now = END - time::Duration::minutes(4);
        let signaled = Checkpoint {
            signaled_at: Some(now),
            ..Checkpoint::started(END, now)
        };
        let extended = END + time::Duration::hours(2);
        let rearmed = plan(now, Some(extended), LEAD, Some(&signaled), true);
        assert_eq!(rearmed.record, None);
        assert_eq!(rearmed.due, None);
        let then = extended - time::Duration::minutes(5);
        assert_eq!(
            plan(then, Some(extended), LEAD, None, true).due,
            Some(extended)
        );
    }

    #[test]
    fn a_pass_that_reached_nothing_is_tried_again_after_the_retry_until_the_end() {
        let now = END - time::Duration::minutes(4);
        let unreached = Checkpoint {
            unreached_at: Some(now),
            ..Checkpoint::started(END, now)
        };
        let soon = now + time::Duration::seconds(29);
        assert_eq!(
            plan(soon, Some(END), LEAD, Some(&unreached), true).due,
            None
        );
        let retry = now + time::Duration::seconds(30);
        assert_eq!(
            plan(retry, Some(END), LEAD, Some(&unreached), true).due,
            Some(END)
        );
        assert_eq!(plan(END, Some(END), LEAD, Some(&unreached), true).due, None);
    }

    #[test]
    fn an_end_that_is_gone_forgets_its_record_so_a_new_end_is_signaled() {
        let now = END - time::Duration::minutes(4);
        let signaled = Checkpoint {
            signaled_at: Some(now),
            ..Checkpoint::started(END, now)
        };
        assert_eq!(plan(now, None, LEAD, Some(&signaled), true).record, None);
    }

    #[test]
    fn the_record_reads_back_as_written() {
        let record = Checkpoint {
            signaled_at: Some(END),
            containers: 3,
            ..Checkpoint::started(END, END)
        };
        let json = serde_json::to_string(&record).unwrap();
        assert!(!json.contains("unreached_at"), "{json}");
        assert_eq!(serde_json::from_str::<Checkpoint>(&json).unwrap(), record);
    }
}
