//! Deadlines: every signal that says "this instance ends at T", each with an
//! identity taken from its payload (never from when it was seen).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::lifecycle_hook::LifecycleHook;

/// EC2 starts terminating Capacity Block instances this long before `EndDate`.
pub const CAPACITY_BLOCK_TERMINATION_LEAD: Duration = Duration::from_secs(30 * 60);

/// Where a deadline comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    Lease,
    LegacySpotBlock,
    CapacityBlock,
    SpotInterruption,
    ScheduledEvent,
    #[serde(rename = "autoscaling")]
    AutoScaling,
    Rebalance,
}

impl SourceKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Lease => "lease",
            Self::LegacySpotBlock => "legacy-spot-block",
            Self::CapacityBlock => "capacity-block",
            Self::SpotInterruption => "spot-interruption",
            Self::ScheduledEvent => "scheduled-event",
            Self::AutoScaling => "autoscaling",
            Self::Rebalance => "rebalance",
        }
    }

    /// A lease or a Capacity Block: an end the instance keeps by itself
    /// (with `on_lease_end = "poweroff"`). AWS ends the others itself.
    pub fn is_lease(self) -> bool {
        matches!(self, Self::Lease | Self::CapacityBlock)
    }

    /// Whether a drain this source started is undone when the source moves
    /// its end later. A spot notice, a rebalance recommendation or an Auto
    /// Scaling termination never takes itself back.
    pub fn can_move_later(self) -> bool {
        matches!(
            self,
            Self::Lease | Self::CapacityBlock | Self::LegacySpotBlock | Self::ScheduledEvent
        )
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The identity of one end-of-life signal, from its payload: the same notice
/// seen twice is the same event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EventKey {
    pub kind: SourceKind,
    pub id: String,
}

/// One source's claim that the instance ends at `at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub at: OffsetDateTime,
    pub key: EventKey,
    /// What the signal does to the instance: only an end may be followed by
    /// a power-off (`on_drained = "poweroff"`).
    pub fate: Fate,
}

/// What a signal does to the instance when its time comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// It ends: a lease, a termination, a retirement.
    Ends,
    /// It comes back (a reboot, a spot stop or hibernation), or keeps running
    /// (maintenance), or blockwatch cannot tell: drain, never power off.
    ComesBack,
}

/// The spot `instance-action` that ends the instance; `stop` and
/// `hibernate` bring it back later, and an action EC2 may add one day is
/// read the safe way: drain, never power off.
pub const SPOT_TERMINATE: &str = "terminate";

/// Scheduled event codes that end the instance. `system-reboot` and
/// `instance-reboot` bring it back after a reboot, `system-maintenance`
/// leaves it running; an unknown code is read the safe way.
pub const ENDING_EVENT_CODES: [&str; 2] = ["instance-stop", "instance-retirement"];
/// Scheduled event codes that only reboot or maintain the instance; they
/// drain unless `drain_on_maintenance = false`.
pub const MAINTENANCE_EVENT_CODES: [&str; 3] =
    ["system-reboot", "instance-reboot", "system-maintenance"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpotAction {
    pub action: String,
    pub time: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledEvent {
    pub id: String,
    pub code: String,
    pub not_before: OffsetDateTime,
    /// `active`, `canceled` or `completed`.
    pub state: String,
}

impl ScheduledEvent {
    pub fn is_active(&self) -> bool {
        self.state.eq_ignore_ascii_case("active")
    }

    pub fn fate(&self) -> Fate {
        if ENDING_EVENT_CODES.contains(&self.code.as_str()) {
            Fate::Ends
        } else {
            Fate::ComesBack
        }
    }

    /// A reboot or maintenance: the instance is there again afterwards.
    pub fn is_maintenance(&self) -> bool {
        MAINTENANCE_EVENT_CODES.contains(&self.code.as_str())
    }
}

impl SpotAction {
    pub fn fate(&self) -> Fate {
        if self.action == SPOT_TERMINATE {
            Fate::Ends
        } else {
            Fate::ComesBack
        }
    }
}

/// Which signals drain: rebalance recommendations only when opted in;
/// reboots and maintenance unless opted out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Draining {
    pub on_rebalance: bool,
    pub on_maintenance: bool,
}

impl Default for Draining {
    fn default() -> Self {
        Self {
            on_rebalance: false,
            on_maintenance: true,
        }
    }
}

/// Everything the sources currently say. IMDS values are the last answer
/// received: a failed poll keeps the previous value rather than erasing it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observations {
    /// The lease end and where it came from (config file or tag).
    pub lease_end: Option<(OffsetDateTime, String)>,
    /// Legacy spot block end and the spot request id.
    pub legacy_spot_block_end: Option<(OffsetDateTime, String)>,
    /// The Capacity Block's `EndDate` and the reservation id.
    pub capacity_block_end: Option<(OffsetDateTime, String)>,
    pub spot_action: Option<SpotAction>,
    pub scheduled_events: Vec<ScheduledEvent>,
    /// Whether `scheduled_events` comes from a successful read; until then an
    /// absent event proves nothing (for example right after a restart).
    pub scheduled_events_known: bool,
    pub target_lifecycle_state: Option<String>,
    /// When `Terminated` was first seen: Auto Scaling gives no time, and a
    /// deadline that moved with every poll would churn.
    pub terminated_seen_at: Option<OffsetDateTime>,
    /// The Auto Scaling group's termination lifecycle hook, once known
    /// (the config's `lifecycle_hook`, or discovered).
    pub lifecycle_hook: Option<LifecycleHook>,
    pub rebalance_notice: Option<OffsetDateTime>,
    /// Tasks of our container instance still running on the host (their
    /// containers not yet stopped); only read while draining.
    pub running_tasks: Option<usize>,
    /// When the wall clock was last seen to step (it disagreed with the
    /// monotonic clock): irreversible steps wait a while after it.
    pub clock_stepped_at: Option<OffsetDateTime>,
    /// When the lease was last confirmed for a power-off: read again from
    /// the instance tags (or nothing to read) at that decision's `now`.
    pub lease_confirmed_at: Option<OffsetDateTime>,
    /// The instance's current `pendingTime`: newer than a drain's start, it
    /// says the instance was stopped (or hibernated) and started again.
    pub launched_at: Option<OffsetDateTime>,
}

impl Observations {
    /// Every current claim of an end. `now` is the end for an Auto Scaling
    /// termination (which gives no time); a rebalance recommendation counts
    /// only when the operator opted in, reboots and maintenance unless they
    /// opted out.
    pub fn candidates(&self, now: OffsetDateTime, draining: Draining) -> Vec<Candidate> {
        let mut found = Vec::new();
        let mut push = |at, kind, id: String, fate| {
            found.push(Candidate {
                at,
                key: EventKey { kind, id },
                fate,
            })
        };
        if let Some((at, origin)) = &self.lease_end {
            push(*at, SourceKind::Lease, origin.clone(), Fate::Ends);
        }
        if let Some((at, request)) = &self.legacy_spot_block_end {
            push(
                *at,
                SourceKind::LegacySpotBlock,
                request.clone(),
                Fate::Ends,
            );
        }
        if let Some((end, reservation)) = &self.capacity_block_end {
            push(
                capacity_block_termination_starts(*end),
                SourceKind::CapacityBlock,
                reservation.clone(),
                Fate::Ends,
            );
        }
        if let Some(spot) = &self.spot_action {
            push(
                spot.time,
                SourceKind::SpotInterruption,
                format!("{}@{}", spot.action, spot.time.unix_timestamp()),
                spot.fate(),
            );
        }
        let events = self.scheduled_events.iter().filter(|e| e.is_active());
        for event in events.filter(|e| draining.on_maintenance || !e.is_maintenance()) {
            push(
                event.not_before,
                SourceKind::ScheduledEvent,
                event.id.clone(),
                event.fate(),
            );
        }
        if self.target_lifecycle_state.as_deref() == Some("Terminated") {
            push(
                self.terminated_seen_at.unwrap_or(now),
                SourceKind::AutoScaling,
                "Terminated".to_owned(),
                Fate::Ends,
            );
        }
        if let (Some(notice), true) = (self.rebalance_notice, draining.on_rebalance) {
            // A recommendation, not an end: AWS may never interrupt.
            push(
                notice,
                SourceKind::Rebalance,
                notice.unix_timestamp().to_string(),
                Fate::ComesBack,
            );
        }
        found
    }

    /// Whether the scheduled event `id` is over: canceled, completed, or gone
    /// from a list that was actually read.
    pub fn scheduled_event_ended(&self, id: &str) -> bool {
        match self.scheduled_events.iter().find(|e| e.id == id) {
            Some(event) => !event.is_active(),
            None => self.scheduled_events_known,
        }
    }
}

/// When EC2 starts terminating a Capacity Block's instances: the time its
/// end leaves no more room.
pub fn capacity_block_termination_starts(end_date: OffsetDateTime) -> OffsetDateTime {
    end_date.saturating_sub(
        time::Duration::try_from(CAPACITY_BLOCK_TERMINATION_LEAD).unwrap_or(time::Duration::ZERO),
    )
}

/// The earliest claim wins; ties go to the lowest source kind, so the choice
/// is stable from one poll to the next.
pub fn earliest(candidates: &[Candidate]) -> Option<&Candidate> {
    candidates
        .iter()
        .min_by(|a, b| (a.at, a.key.kind, &a.key.id).cmp(&(b.at, b.key.kind, &b.key.id)))
}

/// A legacy spot block's end: the launch plus `BlockDurationMinutes`, when
/// the request had a block duration at all.
pub fn legacy_spot_block_end(
    launched: OffsetDateTime,
    block_duration_minutes: Option<i32>,
) -> Option<OffsetDateTime> {
    block_duration_minutes
        .filter(|m| *m > 0)
        .map(|m| launched.saturating_add(time::Duration::minutes(i64::from(m))))
}

/// How EC2 names a Capacity Block's reservation type; other capacity
/// reservations have no end of their own.
pub const CAPACITY_BLOCK_RESERVATION_TYPE: &str = "capacity-block";

/// Whether a capacity reservation of `reservation_type` is a Capacity Block.
pub fn is_capacity_block(reservation_type: Option<&str>) -> bool {
    reservation_type == Some(CAPACITY_BLOCK_RESERVATION_TYPE)
}

/// Within this long of a Capacity Block's `EndDate`, its end is asked again
/// more often: an extension bought late must still be seen in time.
pub const CAPACITY_BLOCK_NEAR_END: Duration = Duration::from_secs(2 * 3600);
/// How often it is asked within [`CAPACITY_BLOCK_NEAR_END`], at most.
pub const CAPACITY_BLOCK_NEAR_REFRESH: Duration = Duration::from_secs(5 * 60);

/// How long until a Capacity Block's `EndDate` is asked again: `base` while
/// the end is far, at most 5 minutes within its last 2 hours, and never
/// sleeping past the moment it becomes near.
pub fn capacity_block_recheck_in(
    now: OffsetDateTime,
    end_date: OffsetDateTime,
    base: Duration,
) -> Duration {
    let near_from = end_date.saturating_sub(
        time::Duration::try_from(CAPACITY_BLOCK_NEAR_END).unwrap_or(time::Duration::ZERO),
    );
    if now >= near_from {
        return base.min(CAPACITY_BLOCK_NEAR_REFRESH);
    }
    let until_near = Duration::try_from(near_from - now).unwrap_or(Duration::ZERO);
    base.min(until_near.max(CAPACITY_BLOCK_NEAR_REFRESH))
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn a_legacy_spot_block_ends_its_minutes_after_launch() {
        let launched = datetime!(2026-12-01 12:00 UTC);
        assert_eq!(
            legacy_spot_block_end(launched, Some(60)),
            Some(datetime!(2026-12-01 13:00 UTC))
        );
        assert_eq!(legacy_spot_block_end(launched, Some(0)), None);
        assert_eq!(legacy_spot_block_end(launched, None), None);
        assert!(is_capacity_block(Some("capacity-block")));
        assert!(!is_capacity_block(Some("default")));
        assert!(!is_capacity_block(None));
    }

    #[test]
    fn a_capacity_block_is_asked_every_30_min_then_every_5_min_in_its_last_2_hours() {
        let end = datetime!(2026-12-01 12:00 UTC);
        let base = Duration::from_secs(30 * 60);
        let at = |h: i64, m: i64| end - time::Duration::hours(h) - time::Duration::minutes(m);
        assert_eq!(capacity_block_recheck_in(at(5, 0), end, base), base);
        assert_eq!(
            capacity_block_recheck_in(at(2, 10), end, base),
            Duration::from_secs(10 * 60),
            "wakes when the end becomes near"
        );
        assert_eq!(
            capacity_block_recheck_in(at(1, 0), end, base),
            CAPACITY_BLOCK_NEAR_REFRESH
        );
        assert_eq!(
            capacity_block_recheck_in(end + time::Duration::hours(1), end, base),
            CAPACITY_BLOCK_NEAR_REFRESH
        );
        let fast = Duration::from_secs(2);
        assert_eq!(capacity_block_recheck_in(at(1, 0), end, fast), fast);
        assert_eq!(capacity_block_recheck_in(at(9, 0), end, fast), fast);
    }
}
