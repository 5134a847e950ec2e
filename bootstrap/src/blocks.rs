//! The blocks already launched: what `list` shows and what `extend` would
//! change. Pure: AWS's answers and `now` in, decisions out.
//!
//! Over 400 lines because of its unit tests; the rules are under 330.

use std::collections::BTreeMap;
use std::time::Duration;

use blockwatch_core::settings::DEFAULT_DRAIN_LEAD;
use blockwatch_core::tags::{TAG_COMPUTE_ENVIRONMENT, TAG_LEASE_DURATION, TAG_LEASE_END};
use blockwatch_core::time_text::{rfc3339, HumanDuration, Timestamp};
use serde::Serialize;
use time::OffsetDateTime;

use crate::plan::Market;

/// EC2's `InstanceLifecycle` of a Capacity Block instance.
pub const CAPACITY_BLOCK_LIFECYCLE: &str = "capacity-block";
/// Where an operator extends a Capacity Block: EC2 itself, not a tag.
pub const CAPACITY_BLOCK_EXTENSION_HINT: &str = "a Capacity Block ends when EC2 says: extend the block itself with `aws ec2 describe-capacity-block-extension-offerings` and `aws ec2 purchase-capacity-block-extension` (EC2 User Guide, \"Extend a Capacity Block\"); the agent follows the new EndDate";

/// One instance as EC2 describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    pub instance_id: String,
    pub instance_type: String,
    /// `pending`, `running`, `stopping`, `stopped`, `shutting-down`, `terminated`.
    pub state: String,
    /// `spot`, `capacity-block`, `scheduled`, or none for On-Demand.
    pub lifecycle: Option<String>,
    pub capacity_reservation_id: Option<String>,
    pub launch_time: Option<OffsetDateTime>,
    pub tags: BTreeMap<String, String>,
}

/// Which tag a lease end comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeaseSource {
    /// `blockwatch:lease-end`.
    LeaseEnd,
    /// `blockwatch:lease-duration`, counted from the launch.
    LeaseDuration,
}

impl LeaseSource {
    pub fn tag(self) -> &'static str {
        match self {
            Self::LeaseEnd => TAG_LEASE_END,
            Self::LeaseDuration => TAG_LEASE_DURATION,
        }
    }
}

/// An instance's lease end as its tags give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub end: OffsetDateTime,
    pub source: LeaseSource,
}

/// The lease end the agent derives from these tags: `lease-end` first, then
/// `lease-duration` from the launch, each only if it parses (as the agent's
/// `Settings::lease` does).
pub fn lease_of(instance: &Observed) -> Option<Lease> {
    if let Some(end) = instance
        .tags
        .get(TAG_LEASE_END)
        .and_then(|t| t.parse::<Timestamp>().ok())
    {
        return Some(Lease {
            end: end.0.to_offset(time::UtcOffset::UTC),
            source: LeaseSource::LeaseEnd,
        });
    }
    let duration = instance
        .tags
        .get(TAG_LEASE_DURATION)
        .and_then(|t| t.parse::<HumanDuration>().ok())?;
    let launched = instance.launch_time?;
    Some(Lease {
        end: launched + time::Duration::try_from(duration.0).ok()?,
        source: LeaseSource::LeaseDuration,
    })
}

/// The market an instance was bought in. A Capacity Block shows as the
/// `capacity-block` lifecycle or as a reservation of that type
/// (`reservation_is_capacity_block`, from DescribeCapacityReservations).
pub fn market_of(lifecycle: Option<&str>, reservation_is_capacity_block: bool) -> Market {
    match lifecycle {
        Some(CAPACITY_BLOCK_LIFECYCLE) => Market::CapacityBlock,
        _ if reservation_is_capacity_block => Market::CapacityBlock,
        Some("spot") => Market::Spot,
        _ => Market::OnDemand,
    }
}

/// Whether the instance carries the compute environment's tag, by name or ARN
/// (the launcher writes what the operator typed).
pub fn in_compute_environment(instance: &Observed, names: &[&str]) -> bool {
    instance
        .tags
        .get(TAG_COMPUTE_ENVIRONMENT)
        .is_some_and(|ce| names.contains(&ce.as_str()))
}

/// What the container instance in the cluster says, if there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// `ACTIVE`, `DRAINING`, `REGISTERING`, ...
    pub status: String,
    pub running_tasks: i32,
}

/// One row of `list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listed {
    pub instance_id: String,
    pub instance_type: String,
    pub market: Market,
    pub state: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub launch_time: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub lease_end: Option<OffsetDateTime>,
    pub lease_source: Option<LeaseSource>,
    /// Seconds until the lease end (negative once it is past).
    pub seconds_left: Option<i64>,
    /// The container instance's status, null when not registered.
    pub ecs_status: Option<String>,
    /// `runningTasksCount`: Batch jobs on the instance, null when not registered.
    pub running_jobs: Option<i32>,
    pub capacity_reservation_id: Option<String>,
}

/// The row for `instance`, as of `now`.
pub fn listed(
    instance: &Observed,
    market: Market,
    registration: Option<&Registration>,
    now: OffsetDateTime,
) -> Listed {
    let lease = lease_of(instance);
    Listed {
        instance_id: instance.instance_id.clone(),
        instance_type: instance.instance_type.clone(),
        market,
        state: instance.state.clone(),
        launch_time: instance.launch_time,
        lease_end: lease.map(|l| l.end),
        lease_source: lease.map(|l| l.source),
        seconds_left: lease.map(|l| (l.end - now).whole_seconds()),
        ecs_status: registration.map(|r| r.status.clone()),
        running_jobs: registration.map(|r| r.running_tasks),
        capacity_reservation_id: instance.capacity_reservation_id.clone(),
    }
}

/// Soonest end first, instances without a lease last.
pub fn sort_rows(rows: &mut [Listed]) {
    rows.sort_by(|a, b| {
        (a.lease_end.is_none(), a.lease_end, &a.instance_id).cmp(&(
            b.lease_end.is_none(),
            b.lease_end,
            &b.instance_id,
        ))
    });
}

/// `2h 5m` left, `45s` under a minute, `ended` once past.
pub fn time_left(seconds: i64) -> String {
    match u64::try_from(seconds) {
        Ok(0) | Err(_) => "ended".to_owned(),
        Ok(s) if s < 60 => format!("{s}s"),
        Ok(s) => humantime::format_duration(Duration::from_secs(s - s % 60)).to_string(),
    }
}

/// How `extend` moves the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Added to the current end.
    By(Duration),
    /// The new end.
    Until(OffsetDateTime),
}

/// `extend` flags refused before any AWS call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidChange {
    #[error("--by {0:?} is not a duration like 1h or 30m")]
    By(String),
    #[error("--by must be longer than zero")]
    ZeroBy,
    #[error("--until {0:?} is not an RFC 3339 time like 2026-01-31T15:00:00Z")]
    Until(String),
    #[error("--until {until} is not in the future (now {now})")]
    UntilPast { until: String, now: String },
}

/// A time rounded down to the whole second, in UTC: what a tag holds.
pub fn whole_second_utc(at: OffsetDateTime) -> OffsetDateTime {
    let utc = at.to_offset(time::UtcOffset::UTC);
    utc.replace_nanosecond(0).unwrap_or(utc)
}

/// Parses `--by` or `--until` (exactly one is given; clap makes sure).
pub fn parse_change(
    by: Option<&str>,
    until: Option<&str>,
    now: OffsetDateTime,
) -> Result<Change, InvalidChange> {
    if let Some(text) = until {
        let at = text
            .parse::<Timestamp>()
            .map_err(|_| InvalidChange::Until(text.to_owned()))?;
        let at = whole_second_utc(at.0);
        if at <= now {
            return Err(InvalidChange::UntilPast {
                until: rfc3339(at),
                now: rfc3339(whole_second_utc(now)),
            });
        }
        return Ok(Change::Until(at));
    }
    let text = by.unwrap_or_default();
    let duration = text
        .parse::<HumanDuration>()
        .map_err(|_| InvalidChange::By(text.to_owned()))?
        .0;
    if duration < Duration::from_secs(1) {
        return Err(InvalidChange::ZeroBy);
    }
    Ok(Change::By(duration))
}

/// One instance's lease, before and after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Extension {
    pub instance_id: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub old_end: Option<OffsetDateTime>,
    pub old_source: Option<LeaseSource>,
    #[serde(with = "time::serde::rfc3339")]
    pub new_end: OffsetDateTime,
    /// `blockwatch:lease-duration` is deleted once the end is written.
    pub removes_lease_duration: bool,
    /// Set when the new end is so close the agent drains at once.
    pub warning: Option<String>,
}

/// Why `extend` leaves an instance alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("is not in compute environment {compute_environment:?} (its {TAG_COMPUTE_ENVIRONMENT} tag is {tag})")]
    OtherComputeEnvironment {
        compute_environment: String,
        tag: String,
    },
    #[error("is a Capacity Block instance{}: {CAPACITY_BLOCK_EXTENSION_HINT}", reservation.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())]
    CapacityBlock { reservation: Option<String> },
    #[error("is {0}: there is nothing left to extend")]
    Ended(String),
    #[error("has no lease tag to add --by to; give the end with --until")]
    NoLease,
    #[error("would end at {0}, which is already past; use a longer --by or --until")]
    PastEnd(String),
}

/// The states an instance can be extended in.
pub const EXTENDABLE_STATES: [&str; 4] = ["pending", "running", "stopping", "stopped"];

/// What `extend` would do to `instance`, or why it will not.
pub fn extension(
    instance: &Observed,
    market: Market,
    compute_environment: &str,
    names: &[&str],
    change: Change,
    now: OffsetDateTime,
) -> Result<Extension, Refusal> {
    if !in_compute_environment(instance, names) {
        return Err(Refusal::OtherComputeEnvironment {
            compute_environment: compute_environment.to_owned(),
            tag: instance
                .tags
                .get(TAG_COMPUTE_ENVIRONMENT)
                .map_or_else(|| "missing".to_owned(), |t| format!("{t:?}")),
        });
    }
    if market == Market::CapacityBlock {
        return Err(Refusal::CapacityBlock {
            reservation: instance.capacity_reservation_id.clone(),
        });
    }
    if !EXTENDABLE_STATES.contains(&instance.state.as_str()) {
        return Err(Refusal::Ended(instance.state.clone()));
    }
    let lease = lease_of(instance);
    let new_end = match change {
        Change::Until(at) => at,
        Change::By(by) => {
            let old = lease.ok_or(Refusal::NoLease)?;
            let by = time::Duration::try_from(by).map_err(|_| Refusal::NoLease)?;
            whole_second_utc(old.end + by)
        }
    };
    if new_end <= now {
        return Err(Refusal::PastEnd(rfc3339(new_end)));
    }
    let lead = time::Duration::try_from(DEFAULT_DRAIN_LEAD).unwrap_or(time::Duration::ZERO);
    let warning = (new_end - now < lead).then(|| {
        format!(
            "ends in under {}: with the default drain_lead the agent drains it at once",
            humantime::format_duration(DEFAULT_DRAIN_LEAD)
        )
    });
    Ok(Extension {
        instance_id: instance.instance_id.clone(),
        old_end: lease.map(|l| l.end),
        old_source: lease.map(|l| l.source),
        new_end,
        removes_lease_duration: instance.tags.contains_key(TAG_LEASE_DURATION),
        warning,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-03-01 12:00:00 UTC);

    fn instance(tags: &[(&str, &str)]) -> Observed {
        Observed {
            instance_id: "i-1".into(),
            instance_type: "m6i.large".into(),
            state: "running".into(),
            launch_time: Some(datetime!(2026-03-01 10:00:00 UTC)),
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Observed::default()
        }
    }

    #[test]
    fn lease_end_tag_wins_over_duration_and_a_bad_one_falls_back() {
        let both = instance(&[
            (TAG_LEASE_END, "2026-03-01T15:00:00+01:00"),
            (TAG_LEASE_DURATION, "3h"),
        ]);
        assert_eq!(
            lease_of(&both),
            Some(Lease {
                end: datetime!(2026-03-01 14:00:00 UTC),
                source: LeaseSource::LeaseEnd
            })
        );
        let bad_end = instance(&[(TAG_LEASE_END, "soon"), (TAG_LEASE_DURATION, "3h")]);
        assert_eq!(
            lease_of(&bad_end),
            Some(Lease {
                end: datetime!(2026-03-01 13:00:00 UTC),
                source: LeaseSource::LeaseDuration
            })
        );
        assert_eq!(lease_of(&instance(&[])), None);
    }

    #[test]
    fn capacity_blocks_are_known_by_lifecycle_or_reservation() {
        assert_eq!(
            market_of(Some("capacity-block"), false),
            Market::CapacityBlock
        );
        assert_eq!(market_of(Some("spot"), true), Market::CapacityBlock);
        assert_eq!(market_of(None, true), Market::CapacityBlock);
        assert_eq!(market_of(Some("spot"), false), Market::Spot);
        assert_eq!(market_of(None, false), Market::OnDemand);
    }

    #[test]
    fn time_left_is_whole_minutes_then_seconds_then_ended() {
        assert_eq!(time_left(2 * 3600 + 5 * 60 + 59), "2h 5m");
        assert_eq!(time_left(45), "45s");
        assert_eq!(time_left(0), "ended");
        assert_eq!(time_left(-30), "ended");
    }

    #[test]
    fn until_must_parse_and_lie_ahead_and_by_must_be_positive() {
        assert_eq!(
            parse_change(None, Some("2026-03-01T13:30:00.750+02:00"), NOW),
            Err(InvalidChange::UntilPast {
                until: "2026-03-01T11:30:00Z".into(),
                now: "2026-03-01T12:00:00Z".into()
            })
        );
        assert_eq!(
            parse_change(None, Some("2026-03-01T18:30:00.750+02:00"), NOW),
            Ok(Change::Until(datetime!(2026-03-01 16:30:00 UTC)))
        );
        assert_eq!(
            parse_change(None, Some("tomorrow"), NOW),
            Err(InvalidChange::Until("tomorrow".into()))
        );
        assert_eq!(
            parse_change(Some("0s"), None, NOW),
            Err(InvalidChange::ZeroBy)
        );
        assert_eq!(
            parse_change(Some("-1h"), None, NOW),
            Err(InvalidChange::By("-1h".into()))
        );
        assert_eq!(
            parse_change(Some("90m"), None, NOW),
            Ok(Change::By(Duration::from_secs(5400)))
        );
    }

    #[test]
    fn by_turns_a_duration_into_an_end_and_refuses_what_it_cannot_extend() {
        let names = ["ce", "arn:aws:batch:eu-west-1:1:compute-environment/ce"];
        let on_duration = instance(&[(TAG_COMPUTE_ENVIRONMENT, "ce"), (TAG_LEASE_DURATION, "3h")]);
        let hour = Change::By(Duration::from_secs(3600));
        let extended = extension(&on_duration, Market::Spot, "ce", &names, hour, NOW).unwrap();
        assert_eq!(extended.old_end, Some(datetime!(2026-03-01 13:00:00 UTC)));
        assert_eq!(extended.new_end, datetime!(2026-03-01 14:00:00 UTC));
        assert!(extended.removes_lease_duration);
        assert_eq!(extended.warning, None);

        let other = instance(&[
            (TAG_COMPUTE_ENVIRONMENT, "other"),
            (TAG_LEASE_DURATION, "3h"),
        ]);
        assert!(matches!(
            extension(&other, Market::Spot, "ce", &names, hour, NOW),
            Err(Refusal::OtherComputeEnvironment { .. })
        ));
        let block = Observed {
            capacity_reservation_id: Some("cr-1".into()),
            ..on_duration.clone()
        };
        let refused = extension(&block, Market::CapacityBlock, "ce", &names, hour, NOW)
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("purchase-capacity-block-extension") && refused.contains("cr-1"),
            "{refused}"
        );
        let no_lease = instance(&[(TAG_COMPUTE_ENVIRONMENT, "ce")]);
        assert_eq!(
            extension(&no_lease, Market::OnDemand, "ce", &names, hour, NOW),
            Err(Refusal::NoLease)
        );
        let long_over = instance(&[(TAG_COMPUTE_ENVIRONMENT, "ce"), (TAG_LEASE_DURATION, "5m")]);
        assert_eq!(
            extension(&long_over, Market::OnDemand, "ce", &names, hour, NOW),
            Err(Refusal::PastEnd("2026-03-01T11:05:00Z".into()))
        );
        let gone = Observed {
            state: "shutting-down".into(),
            ..on_duration.clone()
        };
        assert_eq!(
            extension(&gone, Market::Spot, "ce", &names, hour, NOW),
            Err(Refusal::Ended("shutting-down".into()))
        );
        let soon = Change::Until(NOW + time::Duration::minutes(5));
        let warned = extension(&on_duration, Market::Spot, "ce", &names, soon, NOW).unwrap();
        assert!(warned.warning.is_some());
    }
}
