//! The agent's persisted state and the pure decision step.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::deadline::{earliest, Candidate, EventKey, Observations, SourceKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    #[default]
    Joining,
    Watching,
    Draining,
    Drained,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Self::Joining => "joining",
            Self::Watching => "watching",
            Self::Draining => "draining",
            Self::Drained => "drained",
        }
    }
}

/// The deadline in force and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deadline {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub event: EventKey,
}

impl From<&Candidate> for Deadline {
    fn from(c: &Candidate) -> Self {
        Self {
            at: c.at,
            event: c.key.clone(),
        }
    }
}

/// One drain, from its decision to its end. Kept across restarts so a drain
/// is neither repeated nor forgotten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    /// The signal that started it.
    pub reason: EventKey,
    #[serde(with = "time::serde::rfc3339")]
    pub deadline: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// When ECS accepted DRAINING; until then the call is (re)tried.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub draining_confirmed_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub running_tasks: Option<usize>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub tasks_stopped_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub drained_at: Option<OffsetDateTime>,
    /// When the tasks still running at a lease's end were stopped.
    #[serde(
        with = "time::serde::rfc3339::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub end_stop_at: Option<OffsetDateTime>,
    /// Power-off attempts started so far, and when the last one started:
    /// recorded before the command runs, so a failing command is retried
    /// with backoff, never in a tight loop.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub poweroff_attempts: u32,
    #[serde(
        with = "time::serde::rfc3339::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub poweroff_attempted_at: Option<OffsetDateTime>,
    /// When the power-off command succeeded; until then it is retried.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub poweroff_at: Option<OffsetDateTime>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Drain {
    fn new(reason: EventKey, deadline: OffsetDateTime, now: OffsetDateTime) -> Self {
        Self {
            reason,
            deadline,
            started_at: now,
            draining_confirmed_at: None,
            running_tasks: None,
            tasks_stopped_at: None,
            drained_at: None,
            end_stop_at: None,
            poweroff_attempts: 0,
            poweroff_attempted_at: None,
            poweroff_at: None,
        }
    }

    /// Whether a power-off was started: from then on the drain is never undone.
    pub fn powering_off(&self) -> bool {
        self.poweroff_attempts > 0 || self.poweroff_at.is_some()
    }
}

/// What the agent knows and has done.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AgentState {
    pub phase: Phase,
    #[serde(default)]
    pub deadline: Option<Deadline>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub drain_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub drain: Option<Drain>,
    /// A canceled drain whose return to ACTIVE has not been confirmed yet.
    #[serde(default)]
    pub undrain_pending: bool,
    #[serde(default)]
    pub drains_started: u64,
    #[serde(default)]
    pub drains_completed: u64,
    /// When Auto Scaling's `Terminated` was first seen: its deadline, kept
    /// so that a restart does not restart its clock.
    #[serde(
        with = "time::serde::rfc3339::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub terminated_seen_at: Option<OffsetDateTime>,
    /// The first `pendingTime` seen on this instance: a lease duration
    /// counts from it, so that a stop and start does not lengthen the lease.
    #[serde(
        with = "time::serde::rfc3339::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub first_launched_at: Option<OffsetDateTime>,
    /// Things an operator should fix, shown by `blockwatch status`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// When blockwatch will stop what still runs (`Policy::planned_stop_at`
    /// for the current deadline), or `None`.
    #[serde(
        with = "time::serde::rfc3339::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_at: Option<OffsetDateTime>,
}

/// How long tasks still running at a lease's end have to stop before the
/// instance is powered off whatever happens.
pub const LEASE_END_STOP_WAIT: Duration = Duration::from_secs(120);
/// The wait after a first failed power-off; it doubles up to the maximum.
pub const POWEROFF_RETRY_FIRST: Duration = Duration::from_secs(5);
pub const POWEROFF_RETRY_MAX: Duration = Duration::from_secs(300);

/// How long to wait after `failed` power-off attempts before the next one.
pub fn poweroff_retry_after(failed: u32) -> Duration {
    let doublings = failed.saturating_sub(1).min(16);
    POWEROFF_RETRY_FIRST
        .saturating_mul(1 << doublings)
        .min(POWEROFF_RETRY_MAX)
}

/// How the agent acts on deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub drain_lead: Duration,
    pub drain_on_rebalance: bool,
    pub stop_grace: Option<Duration>,
    pub power_off_when_drained: bool,
    /// `on_lease_end = "poweroff"`: a lease or a Capacity Block ends the
    /// instance at its end, whatever still runs.
    pub enforce_lease_end: bool,
    /// `job_stop_timeout`: the time the ECS agent gives a stopped container
    /// between SIGTERM and SIGKILL (`ECS_CONTAINER_STOP_TIMEOUT`). Stops then
    /// start early enough for it to fit before the end.
    pub job_stop_timeout: Option<Duration>,
    /// Whether the instance joined a cluster (true normally). When false
    /// (`run` degraded: no cluster, or no usable config) there is no
    /// container instance: no drain, undrain or stop is asked for, and a
    /// lease powers off at its end.
    pub joined: bool,
}

/// Between the stop blockwatch asks for and the ECS agent's SIGTERM: the
/// ECS call, the agent's poll of its task list, `docker stop` starting.
pub const JOB_STOP_MARGIN: Duration = Duration::from_secs(10);

impl Policy {
    /// How long before an end a stop must start for `job_stop_timeout` to
    /// fit: the timeout plus [`JOB_STOP_MARGIN`].
    pub fn stop_lead(&self) -> Option<Duration> {
        self.job_stop_timeout
            .map(|timeout| timeout.saturating_add(JOB_STOP_MARGIN))
    }

    /// How long before the end what still runs is stopped: `stop_grace`,
    /// lengthened to the stop lead when `job_stop_timeout` needs more.
    pub fn effective_stop_grace(&self) -> Option<Duration> {
        match (self.stop_grace, self.stop_lead()) {
            (Some(grace), Some(lead)) => Some(grace.max(lead)),
            (grace, lead) => grace.or(lead),
        }
    }

    /// When what still runs will be stopped for an end at `end`, given the
    /// end of a lease that applies (if any): the earlier of the grace stop
    /// and the lease-end stop (at the lease end, or the stop lead before it).
    pub fn planned_stop_at(
        &self,
        end: OffsetDateTime,
        lease_end: Option<OffsetDateTime>,
    ) -> Option<OffsetDateTime> {
        let grace = self
            .effective_stop_grace()
            .map(|grace| end.saturating_sub(duration(grace)));
        let lease = lease_end
            .filter(|_| self.enforce_lease_end)
            .map(|at| at.saturating_sub(duration(self.stop_lead().unwrap_or_default())));
        grace.into_iter().chain(lease).min()
    }
}

/// Something the IO side must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Set the container instance to DRAINING (until confirmed).
    Drain,
    /// Set it back to ACTIVE (a drain undone).
    Undrain,
    /// Stop the remaining tasks.
    StopTasks(StopCause),
    /// Run the power-off command (until it succeeds).
    PowerOff,
}

/// How the reason given to the tasks blockwatch stops begins; Batch retry
/// rules match it with `onStatusReason: "blockwatch:*"`.
pub const STOP_REASON_PREFIX: &str = "blockwatch:";

/// Why remaining tasks are stopped; their stop reason says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// `stop_grace` before the end.
    Grace,
    /// The lease (or Capacity Block) ended with tasks still running.
    LeaseEnded,
}

/// Why a drain was undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelCause {
    /// The scheduled event that started it was canceled or completed.
    EventEnded,
    /// Its deadline moved later, and the new drain time is in the future.
    DeadlineMoved,
    /// The instance was stopped (or hibernated) and started again: a new life.
    NewLife,
}

/// Something worth telling operators once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    DrainStarted,
    DrainCompleted,
    DrainCanceled(CancelCause),
    DeadlineChanged,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub state: AgentState,
    pub actions: Vec<Action>,
    pub events: Vec<Event>,
}

fn duration(d: Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

/// When Auto Scaling's `Terminated` was first seen, by this process or one
/// before it. Another lifecycle state clears it; an unread one (IMDS down,
/// or not polled yet after a restart) keeps it.
fn terminated_seen_at(
    now: OffsetDateTime,
    observed: &Observations,
    previous: &AgentState,
) -> Option<OffsetDateTime> {
    match observed.target_lifecycle_state.as_deref() {
        Some("Terminated") => previous
            .terminated_seen_at
            .or(observed.terminated_seen_at)
            .or(Some(now)),
        Some(_) => None,
        None => previous.terminated_seen_at,
    }
}

/// The earliest end that the instance keeps by itself (a lease or a
/// Capacity Block), when `on_lease_end = "poweroff"`.
fn lease_end(candidates: &[Candidate], drain: &Drain) -> Option<OffsetDateTime> {
    candidates
        .iter()
        .filter(|c| c.key.kind.is_lease())
        .map(|c| c.at)
        .chain(Some(drain.deadline).filter(|_| drain.reason.kind.is_lease()))
        .min()
}

/// Why the drain in `state` should be undone now, if it should: its
/// scheduled event is over, or its deadline moved later with the new drain
/// time still ahead; and no other signal is due. Never once a power-off
/// started.
fn cancel_cause(
    now: OffsetDateTime,
    lead: time::Duration,
    drain: &Drain,
    candidates: &[Candidate],
    observed: &Observations,
) -> Option<CancelCause> {
    if drain.powering_off() {
        return None;
    }
    let another_is_due = candidates
        .iter()
        .any(|c| c.key != drain.reason && now >= c.at.saturating_sub(lead));
    if another_is_due {
        return None;
    }
    let reason = &drain.reason;
    if reason.kind == SourceKind::ScheduledEvent && observed.scheduled_event_ended(&reason.id) {
        return Some(CancelCause::EventEnded);
    }
    let moved_later = reason.kind.can_move_later()
        && candidates
            .iter()
            .any(|c| c.key == *reason && c.at > drain.deadline && c.at.saturating_sub(lead) > now);
    moved_later.then_some(CancelCause::DeadlineMoved)
}

/// One step: given `now`, what the sources say, and what has been done,
/// returns the new state, the actions to take and the events to report.
/// No IO and no clock: the same inputs always give the same decision.
pub fn decide(
    now: OffsetDateTime,
    observed: &Observations,
    previous: &AgentState,
    policy: &Policy,
) -> Decision {
    let lead = duration(policy.drain_lead);
    let mut state = previous.clone();
    let mut actions = Vec::new();
    let mut events = Vec::new();

    // Started again after a stop or a hibernation: the drain belonged to the
    // instance's last life, and ECS may still have it DRAINING.
    let new_life = state
        .drain
        .as_ref()
        .zip(observed.launched_at)
        .is_some_and(|(drain, launched)| launched > drain.started_at);
    if new_life {
        end_drain(&mut state, CancelCause::NewLife, &mut events);
        state.terminated_seen_at = None;
    }

    state.terminated_seen_at = terminated_seen_at(now, observed, &state);
    let observed = &Observations {
        terminated_seen_at: state.terminated_seen_at,
        ..observed.clone()
    };
    let candidates = observed.candidates(now, policy.drain_on_rebalance);
    let first = earliest(&candidates);
    if state.phase == Phase::Joining {
        state.phase = Phase::Watching;
    }

    if let Some(cause) = state
        .drain
        .as_ref()
        .and_then(|drain| cancel_cause(now, lead, drain, &candidates, observed))
    {
        end_drain(&mut state, cause, &mut events);
    }

    match state.phase {
        Phase::Joining | Phase::Watching => {
            state.deadline = first.map(Deadline::from);
            state.drain_at = first.map(|c| c.at.saturating_sub(lead));
            if let Some(due) = first.filter(|c| now >= c.at.saturating_sub(lead)) {
                state.phase = Phase::Draining;
                state.drains_started += 1;
                state.undrain_pending = false;
                state.drain = Some(Drain::new(due.key.clone(), due.at, now));
                events.push(Event::DrainStarted);
            }
        }
        Phase::Draining | Phase::Drained => {}
    }

    if let Some(drain) = state.drain.as_mut() {
        // The signal that started the drain may move; follow it while it is
        // there.
        if let Some(same) = candidates.iter().find(|c| c.key == drain.reason) {
            drain.deadline = same.at;
        }
        // A notice that vanishes does not bring the instance back; an earlier
        // one moves the end forward.
        let end = first.map_or(drain.deadline, |c| c.at.min(drain.deadline));
        state.deadline = Some(match first.filter(|c| c.at < drain.deadline) {
            Some(c) => Deadline::from(c),
            None => Deadline {
                at: drain.deadline,
                event: drain.reason.clone(),
            },
        });
        state.drain_at = Some(drain.started_at);
        if let Some(tasks) = observed.running_tasks {
            drain.running_tasks = Some(tasks);
        }
        let lease_end = lease_end(&candidates, drain).filter(|_| policy.enforce_lease_end);
        let lease_ended = lease_end.is_some_and(|at| now >= at);
        // With a job stop timeout, the lease-end stop starts early enough
        // for the jobs' SIGTERM-to-SIGKILL time to fit before the end.
        let lease_stop_due = lease_end.is_some_and(|at| {
            now >= at.saturating_sub(duration(policy.stop_lead().unwrap_or_default()))
        });
        if state.phase == Phase::Draining {
            if drain.draining_confirmed_at.is_none() {
                actions.push(Action::Drain);
            } else if observed.running_tasks == Some(0) {
                state.phase = Phase::Drained;
                drain.drained_at = Some(now);
                state.drains_completed += 1;
                events.push(Event::DrainCompleted);
            }
        }
        if state.phase == Phase::Draining {
            if lease_stop_due {
                if drain.end_stop_at.is_none() {
                    actions.push(Action::StopTasks(StopCause::LeaseEnded));
                }
            } else if let Some(grace) = policy.effective_stop_grace() {
                let confirmed = drain.draining_confirmed_at.is_some();
                if confirmed
                    && now >= end.saturating_sub(duration(grace))
                    && drain.tasks_stopped_at.is_none()
                {
                    actions.push(Action::StopTasks(StopCause::Grace));
                }
            }
        }
        // Drained for a lease, or drained after it ended: nothing is left to
        // do, and every idle minute is paid for. Past the end plus the stop
        // wait, power off whatever still runs.
        let drained = state.phase == Phase::Drained;
        let for_the_lease = drained && (drain.reason.kind.is_lease() || lease_ended);
        let out_of_time =
            lease_end.is_some_and(|at| now >= at.saturating_add(duration(LEASE_END_STOP_WAIT)));
        let wanted = (drained && policy.power_off_when_drained)
            || (lease_end.is_some() && for_the_lease)
            || out_of_time
            || (!policy.joined && lease_ended);
        let retry_due = drain.poweroff_attempted_at.is_none_or(|at| {
            now >= at.saturating_add(duration(poweroff_retry_after(drain.poweroff_attempts)))
        });
        if wanted && drain.poweroff_at.is_none() && retry_due {
            actions.push(Action::PowerOff);
        }
    }
    if state.undrain_pending {
        actions.push(Action::Undrain);
    }
    if !policy.joined {
        actions.retain(|action| *action == Action::PowerOff);
    }
    state.stop_at = state.deadline.as_ref().and_then(|deadline| {
        let lease = candidates
            .iter()
            .filter(|c| c.key.kind.is_lease())
            .map(|c| c.at)
            .chain(state.drain.as_ref().and_then(|d| lease_end(&candidates, d)))
            .min();
        policy.planned_stop_at(deadline.at, lease)
    });
    if state.deadline != previous.deadline && !events.contains(&Event::DrainStarted) {
        events.push(Event::DeadlineChanged);
    }
    Decision {
        state,
        actions,
        events,
    }
}

/// Undoes the drain in `state`: back to watching, and back to ACTIVE when
/// ECS had accepted DRAINING.
fn end_drain(state: &mut AgentState, cause: CancelCause, events: &mut Vec<Event>) {
    if let Some(drain) = state.drain.take() {
        state.phase = Phase::Watching;
        state.undrain_pending |= drain.draining_confirmed_at.is_some();
        events.push(Event::DrainCanceled(cause));
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::deadline::{ScheduledEvent, SpotAction};

    const T0: OffsetDateTime = datetime!(2026-11-29 12:00:00 UTC);

    fn minutes(m: i64) -> time::Duration {
        time::Duration::minutes(m)
    }

    fn policy() -> Policy {
        Policy {
            drain_lead: Duration::from_secs(600),
            drain_on_rebalance: false,
            stop_grace: None,
            power_off_when_drained: false,
            enforce_lease_end: false,
            job_stop_timeout: None,
            joined: true,
        }
    }

    #[test]
    fn unjoined_the_lease_powers_off_at_its_end_with_no_ecs_action() {
        let end = T0 + minutes(20);
        let policy = Policy {
            joined: false,
            enforce_lease_end: true,
            stop_grace: Some(Duration::from_secs(60)),
            ..policy()
        };
        let mut state = AgentState::default();
        let mut asked = Vec::new();
        for now in [
            T0,
            end - minutes(10),
            end - minutes(1),
            end - time::Duration::seconds(1),
        ] {
            let d = decide(now, &lease(end), &state, &policy);
            state = d.state;
            asked.extend(d.actions);
        }
        assert!(asked.is_empty(), "nothing before the end: {asked:?}");
        let at_end = decide(end, &lease(end), &state, &policy);
        assert_eq!(at_end.actions, vec![Action::PowerOff]);
    }

    fn lease(at: OffsetDateTime) -> Observations {
        Observations {
            lease_end: Some((at, "tag".into())),
            ..Observations::default()
        }
    }

    fn spot(at: OffsetDateTime) -> Option<SpotAction> {
        Some(SpotAction {
            action: "terminate".into(),
            time: at,
        })
    }

    fn event(id: &str, at: OffsetDateTime, state: &str) -> ScheduledEvent {
        ScheduledEvent {
            id: id.into(),
            code: "system-reboot".into(),
            not_before: at,
            state: state.into(),
        }
    }

    /// Runs `steps` of (now, observations) from a fresh state.
    fn run(steps: &[(OffsetDateTime, Observations)], policy: &Policy) -> Vec<Decision> {
        let mut state = AgentState::default();
        steps
            .iter()
            .map(|(now, observed)| {
                let decision = decide(*now, observed, &state, policy);
                state = decision.state.clone();
                // The executor confirms DRAINING at once.
                if decision.actions.contains(&Action::Drain) {
                    if let Some(d) = state.drain.as_mut() {
                        d.draining_confirmed_at = Some(*now);
                    }
                }
                if decision.actions.contains(&Action::Undrain) {
                    state.undrain_pending = false;
                }
                decision
            })
            .collect()
    }

    #[test]
    fn drains_at_deadline_minus_lead_and_not_before() {
        let end = T0 + minutes(60);
        let d = run(
            &[
                (T0, lease(end)),
                (end - minutes(10) - time::Duration::SECOND, lease(end)),
                (end - minutes(10), lease(end)),
            ],
            &policy(),
        );
        assert_eq!(d[0].state.phase, Phase::Watching);
        assert_eq!(d[0].state.drain_at, Some(end - minutes(10)));
        assert!(
            d[1].actions.is_empty() && d[1].state.phase == Phase::Watching,
            "one second early: nothing"
        );
        assert_eq!(d[2].state.phase, Phase::Draining);
        assert_eq!(d[2].actions, vec![Action::Drain]);
        assert_eq!(d[2].events, vec![Event::DrainStarted]);
    }

    #[test]
    fn table_of_sources_earliest_wins() {
        let cases: Vec<(&str, Observations, Option<SourceKind>, bool)> = vec![
            ("nothing", Observations::default(), None, false),
            (
                "lease far away",
                lease(T0 + minutes(120)),
                Some(SourceKind::Lease),
                false,
            ),
            (
                "spot notice beats a later lease and is due",
                Observations {
                    spot_action: spot(T0 + minutes(2)),
                    ..lease(T0 + minutes(120))
                },
                Some(SourceKind::SpotInterruption),
                true,
            ),
            (
                "active scheduled event in the future",
                Observations {
                    scheduled_events: vec![event("e1", T0 + minutes(30), "active")],
                    ..Observations::default()
                },
                Some(SourceKind::ScheduledEvent),
                false,
            ),
            (
                "canceled scheduled event is ignored",
                Observations {
                    scheduled_events: vec![event("e1", T0 + minutes(1), "canceled")],
                    ..Observations::default()
                },
                None,
                false,
            ),
            (
                "autoscaling Terminated is due now",
                Observations {
                    target_lifecycle_state: Some("Terminated".into()),
                    ..lease(T0 + minutes(120))
                },
                Some(SourceKind::AutoScaling),
                true,
            ),
            (
                "autoscaling InService is nothing",
                Observations {
                    target_lifecycle_state: Some("InService".into()),
                    ..Observations::default()
                },
                None,
                false,
            ),
            (
                "rebalance is ignored by default",
                Observations {
                    rebalance_notice: Some(T0),
                    ..Observations::default()
                },
                None,
                false,
            ),
            (
                "capacity block ends 30 min before EndDate",
                Observations {
                    capacity_block_end: Some((T0 + minutes(39), "cr-1".into())),
                    ..lease(T0 + minutes(100))
                },
                Some(SourceKind::CapacityBlock),
                true,
            ),
            (
                "legacy spot block",
                Observations {
                    legacy_spot_block_end: Some((T0 + minutes(5), "sir-1".into())),
                    ..Observations::default()
                },
                Some(SourceKind::LegacySpotBlock),
                true,
            ),
            (
                "deadline already past at boot",
                lease(T0 - minutes(5)),
                Some(SourceKind::Lease),
                true,
            ),
        ];
        for (name, observed, source, drains) in cases {
            let d = decide(T0, &observed, &AgentState::default(), &policy());
            assert_eq!(
                d.state.deadline.as_ref().map(|x| x.event.kind),
                source,
                "{name}"
            );
            assert_eq!(d.state.phase == Phase::Draining, drains, "{name}");
            assert_eq!(d.actions.contains(&Action::Drain), drains, "{name}");
        }
    }

    #[test]
    fn rebalance_drains_when_opted_in() {
        let observed = Observations {
            rebalance_notice: Some(T0),
            ..Observations::default()
        };
        let d = decide(
            T0,
            &observed,
            &AgentState::default(),
            &Policy {
                drain_on_rebalance: true,
                ..policy()
            },
        );
        assert_eq!(d.state.phase, Phase::Draining);
        assert_eq!(
            d.state.drain.map(|x| x.reason.kind),
            Some(SourceKind::Rebalance)
        );
    }

    #[test]
    fn duplicate_observations_drain_once() {
        let seen = Observations {
            spot_action: spot(T0 + minutes(2)),
            ..Observations::default()
        };
        let steps: Vec<_> = (0..5)
            .map(|s| (T0 + time::Duration::seconds(s), seen.clone()))
            .collect();
        let d = run(&steps, &policy());
        let started: usize = d
            .iter()
            .map(|x| {
                x.events
                    .iter()
                    .filter(|e| **e == Event::DrainStarted)
                    .count()
            })
            .sum();
        let drains: usize = d
            .iter()
            .map(|x| x.actions.iter().filter(|a| **a == Action::Drain).count())
            .sum();
        assert_eq!((started, drains), (1, 1));
        assert_eq!(d[4].state.drains_started, 1);
    }

    #[test]
    fn a_vanished_notice_before_drain_at_changes_nothing_and_after_keeps_draining() {
        let end = T0 + minutes(120);
        let with_far_spot = Observations {
            spot_action: spot(T0 + minutes(30)),
            ..lease(end)
        };
        let d = run(
            &[(T0, with_far_spot), (T0 + minutes(1), lease(end))],
            &policy(),
        );
        assert_eq!(
            d[1].state.deadline.as_ref().map(|x| x.event.kind),
            Some(SourceKind::Lease)
        );
        assert_eq!(d[1].state.phase, Phase::Watching);

        let with_due_spot = Observations {
            spot_action: spot(T0 + minutes(2)),
            ..lease(end)
        };
        let d = run(
            &[(T0, with_due_spot), (T0 + minutes(1), lease(end))],
            &policy(),
        );
        assert_eq!(
            d[1].state.phase,
            Phase::Draining,
            "a spot notice never un-drains"
        );
        assert_eq!(
            d[1].state.deadline.as_ref().map(|x| x.at),
            Some(T0 + minutes(2))
        );
    }

    #[test]
    fn a_canceled_scheduled_event_returns_the_instance_to_active() {
        let active = Observations {
            scheduled_events: vec![event("e1", T0 + minutes(5), "active")],
            ..lease(T0 + minutes(300))
        };
        let canceled = Observations {
            scheduled_events: vec![event("e1", T0 + minutes(5), "canceled")],
            ..lease(T0 + minutes(300))
        };
        let d = run(
            &[
                (T0, active),
                (T0 + minutes(1), canceled.clone()),
                (T0 + minutes(2), canceled),
            ],
            &policy(),
        );
        assert_eq!(d[0].state.phase, Phase::Draining);
        assert_eq!(d[1].state.phase, Phase::Watching);
        assert_eq!(d[1].actions, vec![Action::Undrain]);
        assert_eq!(
            d[1].events.first(),
            Some(&Event::DrainCanceled(CancelCause::EventEnded))
        );
        assert_eq!(
            d[1].state.deadline.as_ref().map(|x| x.event.kind),
            Some(SourceKind::Lease)
        );
        assert!(d[2].actions.is_empty(), "ACTIVE is set once");
    }

    #[test]
    fn a_canceled_event_does_not_undrain_when_another_signal_is_due() {
        let both = Observations {
            scheduled_events: vec![event("e1", T0 + minutes(5), "active")],
            spot_action: spot(T0 + minutes(6)),
            ..Observations::default()
        };
        let canceled = Observations {
            scheduled_events: vec![event("e1", T0 + minutes(5), "completed")],
            spot_action: spot(T0 + minutes(6)),
            ..Observations::default()
        };
        let d = run(&[(T0, both), (T0 + minutes(1), canceled)], &policy());
        assert_eq!(d[1].state.phase, Phase::Draining);
        assert!(!d[1].actions.contains(&Action::Undrain));
    }

    #[test]
    fn clock_jumps_follow_absolute_time() {
        let end = T0 + minutes(60);
        // Forward past drain_at: drain at once. Back again: the drain stays.
        let d = run(
            &[
                (T0, lease(end)),
                (T0 + minutes(55), lease(end)),
                (T0, lease(end)),
            ],
            &policy(),
        );
        assert_eq!(d[1].state.phase, Phase::Draining);
        assert_eq!(d[2].state.phase, Phase::Draining);
        assert_eq!(d[2].state.drains_started, 1);
    }

    #[test]
    fn drained_when_no_task_is_left_then_power_off_once() {
        let end = T0 + minutes(5);
        let tasks = |n| Observations {
            running_tasks: Some(n),
            ..lease(end)
        };
        let p = Policy {
            power_off_when_drained: true,
            ..policy()
        };
        let mut state = AgentState::default();
        let mut all = Vec::new();
        for (now, observed) in [
            (T0, lease(end)),
            (T0 + minutes(1), tasks(2)),
            (T0 + minutes(2), tasks(0)),
            (T0 + minutes(3), tasks(0)),
        ] {
            let d = decide(now, &observed, &state, &p);
            state = d.state.clone();
            if let Some(drain) = state.drain.as_mut() {
                drain.draining_confirmed_at.get_or_insert(now);
                if d.actions.contains(&Action::PowerOff) {
                    drain.poweroff_at = Some(now);
                }
            }
            all.push(d);
        }
        assert_eq!(all[1].state.phase, Phase::Draining);
        assert_eq!(
            all[1].state.drain.as_ref().and_then(|x| x.running_tasks),
            Some(2)
        );
        assert_eq!(all[2].state.phase, Phase::Drained);
        assert_eq!(all[2].events, vec![Event::DrainCompleted]);
        assert_eq!(all[2].actions, vec![Action::PowerOff]);
        assert!(all[3].actions.is_empty(), "power off once");
        assert_eq!(all[3].state.drains_completed, 1);
    }

    #[test]
    fn stop_grace_stops_tasks_before_the_end() {
        let end = T0 + minutes(5);
        let p = Policy {
            stop_grace: Some(Duration::from_secs(120)),
            ..policy()
        };
        let tasks = Observations {
            running_tasks: Some(1),
            ..lease(end)
        };
        let d = run(
            &[
                (T0, lease(end)),
                (T0 + minutes(2), tasks.clone()),
                (T0 + minutes(3), tasks),
            ],
            &p,
        );
        assert!(!d[1].actions.contains(&Action::StopTasks(StopCause::Grace)));
        assert_eq!(d[2].actions, vec![Action::StopTasks(StopCause::Grace)]);
    }

    #[test]
    fn an_unconfirmed_drain_is_retried_after_a_restart() {
        let d = decide(
            T0,
            &lease(T0 + minutes(1)),
            &AgentState::default(),
            &policy(),
        );
        // Restarted with the state as persisted: DRAINING not yet confirmed.
        let again = decide(
            T0 + minutes(1),
            &lease(T0 + minutes(1)),
            &d.state,
            &policy(),
        );
        assert_eq!(again.actions, vec![Action::Drain]);
        assert!(again.events.is_empty(), "not a second drain");
        assert_eq!(again.state.drains_started, 1);
    }

    #[test]
    fn event_identity_comes_from_the_payload() {
        let a = Observations {
            spot_action: spot(T0 + minutes(2)),
            ..Observations::default()
        };
        let first = a.candidates(T0, false);
        let later = a.candidates(T0 + minutes(1), false);
        assert_eq!(first[0].key, later[0].key);
    }

    #[test]
    fn an_unread_event_list_never_cancels_a_drain() {
        let active = Observations {
            scheduled_events: vec![event("e1", T0 + minutes(5), "active")],
            scheduled_events_known: true,
            ..Observations::default()
        };
        let mut draining = run(&[(T0, active)], &policy())[0].state.clone();
        if let Some(d) = draining.drain.as_mut() {
            d.draining_confirmed_at = Some(T0);
        }
        // Restarted: nothing read yet, so the event's absence proves nothing.
        let unread = decide(
            T0 + minutes(1),
            &Observations::default(),
            &draining,
            &policy(),
        );
        assert_eq!(unread.state.phase, Phase::Draining);
        assert!(unread.actions.is_empty());
        // A successful read without the event: it is over.
        let read = Observations {
            scheduled_events_known: true,
            ..Observations::default()
        };
        let gone = decide(T0 + minutes(2), &read, &unread.state, &policy());
        assert_eq!(gone.state.phase, Phase::Watching);
        assert_eq!(gone.actions, vec![Action::Undrain]);
    }

    #[test]
    fn a_canceled_drain_that_never_reached_ecs_needs_no_undrain() {
        let active = Observations {
            scheduled_events: vec![event("e1", T0 + minutes(5), "active")],
            ..Observations::default()
        };
        let started = decide(T0, &active, &AgentState::default(), &policy());
        let canceled = Observations {
            scheduled_events: vec![event("e1", T0 + minutes(5), "canceled")],
            ..Observations::default()
        };
        let d = decide(T0 + minutes(1), &canceled, &started.state, &policy());
        assert_eq!(d.state.phase, Phase::Watching);
        assert!(d.actions.is_empty(), "{:?}", d.actions);
    }

    #[test]
    fn autoscaling_deadline_is_when_terminated_was_first_seen() {
        let seen = Observations {
            target_lifecycle_state: Some("Terminated".into()),
            terminated_seen_at: Some(T0),
            ..lease(T0 + minutes(60))
        };
        let d = run(
            &[
                (T0, seen.clone()),
                (T0 + minutes(1), seen.clone()),
                (T0 + minutes(2), seen),
            ],
            &policy(),
        );
        assert_eq!(d[2].state.deadline.as_ref().map(|x| x.at), Some(T0));
        assert!(!d[2].events.contains(&Event::DeadlineChanged), "no churn");
    }

    #[test]
    fn the_autoscaling_deadline_survives_a_restart() {
        let terminated = |seen| Observations {
            target_lifecycle_state: Some("Terminated".into()),
            terminated_seen_at: Some(seen),
            ..Observations::default()
        };
        let first = decide(T0, &terminated(T0), &AgentState::default(), &policy());
        assert_eq!(first.state.phase, Phase::Draining);
        // Written to the state file and read back by a restarted agent, whose
        // own polls first see `Terminated` three minutes later.
        let persisted: AgentState =
            serde_json::from_str(&serde_json::to_string(&first.state).unwrap()).unwrap();
        let later = T0 + minutes(3);
        let again = decide(later, &terminated(later), &persisted, &policy());
        assert_eq!(again.state.deadline.as_ref().map(|d| d.at), Some(T0));
        assert_eq!(again.state.drain.as_ref().map(|d| d.deadline), Some(T0));
        assert!(again.events.is_empty(), "{:?}", again.events);
        assert_eq!(again.state.drains_started, 1);
    }

    #[test]
    fn autoscaling_back_in_service_forgets_when_terminated_was_seen() {
        let terminated = Observations {
            target_lifecycle_state: Some("Terminated".into()),
            terminated_seen_at: Some(T0),
            ..Observations::default()
        };
        let watching = AgentState {
            phase: Phase::Watching,
            ..AgentState::default()
        };
        let seen = decide(T0, &terminated, &watching, &policy());
        let in_service = Observations {
            target_lifecycle_state: Some("InService".into()),
            ..Observations::default()
        };
        let d = decide(T0 + minutes(1), &in_service, &seen.state, &policy());
        // A later `Terminated` is a new one, with its own time.
        let later = T0 + minutes(5);
        let again = Observations {
            terminated_seen_at: Some(later),
            ..terminated
        };
        let restarted = AgentState {
            phase: Phase::Watching,
            drain: None,
            ..d.state
        };
        let d = decide(later, &again, &restarted, &policy());
        assert_eq!(d.state.deadline.as_ref().map(|x| x.at), Some(later));
    }

    #[test]
    fn a_postponed_event_still_due_moves_the_drains_deadline() {
        let grace = Policy {
            stop_grace: Some(Duration::from_secs(60)),
            ..policy()
        };
        let at = |t| Observations {
            scheduled_events: vec![event("e1", t, "active")],
            ..Observations::default()
        };
        let d = run(
            &[
                (T0, at(T0 + minutes(5))),
                (T0 + minutes(1), at(T0 + minutes(8))),
                (T0 + minutes(4), at(T0 + minutes(8))),
            ],
            &grace,
        );
        assert_eq!(
            d[1].state.phase,
            Phase::Draining,
            "8 min away is within the lead"
        );
        assert_eq!(
            d[1].state.drain.as_ref().map(|x| x.deadline),
            Some(T0 + minutes(8))
        );
        assert!(
            !d[2].actions.contains(&Action::StopTasks(StopCause::Grace)),
            "tasks are not stopped for the old time"
        );
    }

    #[test]
    fn a_deadline_moved_past_the_lead_undoes_the_drain_then_drains_at_the_new_time() {
        for (name, before, after) in [
            (
                "scheduled event postponed",
                Observations {
                    scheduled_events: vec![event("e1", T0 + minutes(5), "active")],
                    ..Observations::default()
                },
                Observations {
                    scheduled_events: vec![event("e1", T0 + minutes(30), "active")],
                    ..Observations::default()
                },
            ),
            (
                "lease extended",
                lease(T0 + minutes(5)),
                lease(T0 + minutes(30)),
            ),
            (
                "capacity block extended",
                capacity_block(T0 + minutes(35)),
                capacity_block(T0 + minutes(60)),
            ),
        ] {
            let d = run(
                &[
                    (T0, before),
                    (T0 + minutes(1), after.clone()),
                    (T0 + minutes(2), after.clone()),
                    (T0 + minutes(20), after),
                ],
                &policy(),
            );
            assert_eq!(d[0].state.phase, Phase::Draining, "{name}");
            assert_eq!(d[1].state.phase, Phase::Watching, "{name}");
            assert_eq!(d[1].actions, vec![Action::Undrain], "{name}");
            assert_eq!(
                d[1].events.first(),
                Some(&Event::DrainCanceled(CancelCause::DeadlineMoved)),
                "{name}"
            );
            assert_eq!(d[1].state.drain_at, Some(T0 + minutes(20)), "{name}");
            assert!(d[2].actions.is_empty(), "{name}: ACTIVE is set once");
            assert_eq!(d[3].state.phase, Phase::Draining, "{name}: drains again");
            assert_eq!(d[3].state.drains_started, 2, "{name}");
        }
    }

    #[test]
    fn a_deadline_moved_later_with_its_drain_time_passed_keeps_draining() {
        let d = run(
            &[
                (T0, lease(T0 + minutes(5))),
                (T0 + minutes(1), lease(T0 + minutes(8))),
            ],
            &policy(),
        );
        assert_eq!(d[1].state.phase, Phase::Draining);
        assert!(d[1].actions.is_empty(), "{:?}", d[1].actions);
        assert_eq!(
            d[1].state.deadline.as_ref().map(|x| x.at),
            Some(T0 + minutes(8))
        );
    }

    #[test]
    fn a_lease_moved_earlier_drains_at_the_new_time() {
        let d = run(
            &[
                (T0, lease(T0 + minutes(60))),
                (T0 + minutes(1), lease(T0 + minutes(20))),
                (T0 + minutes(10), lease(T0 + minutes(20))),
            ],
            &policy(),
        );
        assert_eq!(d[1].state.phase, Phase::Watching);
        assert_eq!(d[1].state.drain_at, Some(T0 + minutes(10)));
        assert_eq!(d[1].events, vec![Event::DeadlineChanged]);
        assert_eq!(d[2].state.phase, Phase::Draining);
    }

    #[test]
    fn a_spot_notice_never_undoes_a_drain() {
        let d = run(
            &[
                (
                    T0,
                    Observations {
                        spot_action: spot(T0 + minutes(2)),
                        ..Observations::default()
                    },
                ),
                (
                    T0 + minutes(1),
                    Observations {
                        spot_action: spot(T0 + minutes(60)),
                        ..Observations::default()
                    },
                ),
            ],
            &policy(),
        );
        assert_eq!(d[1].state.phase, Phase::Draining);
        assert!(!d[1].actions.contains(&Action::Undrain));
    }

    fn capacity_block(end_date: OffsetDateTime) -> Observations {
        Observations {
            capacity_block_end: Some((end_date, "cr-1".into())),
            ..Observations::default()
        }
    }

    fn enforcing() -> Policy {
        Policy {
            enforce_lease_end: true,
            ..policy()
        }
    }

    /// Runs `steps` like `run`, with an executor whose actions all succeed
    /// at once (a power-off included) and tasks counted as given.
    fn run_enforced(steps: &[(OffsetDateTime, Observations)], policy: &Policy) -> Vec<Decision> {
        let mut state = AgentState::default();
        steps
            .iter()
            .map(|(now, observed)| {
                let decision = decide(*now, observed, &state, policy);
                state = decision.state.clone();
                for action in &decision.actions {
                    let Some(drain) = state.drain.as_mut() else {
                        continue;
                    };
                    match action {
                        Action::Drain => drain.draining_confirmed_at = Some(*now),
                        Action::StopTasks(StopCause::Grace) => drain.tasks_stopped_at = Some(*now),
                        Action::StopTasks(StopCause::LeaseEnded) => {
                            drain.end_stop_at = Some(*now);
                        }
                        Action::PowerOff => {
                            drain.poweroff_attempts += 1;
                            drain.poweroff_attempted_at = Some(*now);
                            drain.poweroff_at = Some(*now);
                        }
                        Action::Undrain => {}
                    }
                }
                decision
            })
            .collect()
    }

    fn with_tasks(observed: Observations, n: usize) -> Observations {
        Observations {
            running_tasks: Some(n),
            ..observed
        }
    }

    fn count(decisions: &[Decision], action: Action) -> usize {
        decisions
            .iter()
            .map(|d| d.actions.iter().filter(|a| **a == action).count())
            .sum()
    }

    fn stop_timeout(seconds: u64) -> Policy {
        Policy {
            job_stop_timeout: Some(Duration::from_secs(seconds)),
            ..enforcing()
        }
    }

    #[test]
    fn with_a_job_stop_timeout_the_lease_end_stop_starts_the_timeout_and_margin_before_the_end() {
        let end = T0 + minutes(10);
        let stop = Action::StopTasks(StopCause::LeaseEnded);
        // 60 s for the jobs, 10 s margin: the stop is due at end - 70 s.
        let due = end - time::Duration::seconds(70);
        let d = run_enforced(
            &[
                (T0, lease(end)),
                (T0 + minutes(1), with_tasks(lease(end), 1)),
                (due - time::Duration::SECOND, with_tasks(lease(end), 1)),
                (due, with_tasks(lease(end), 1)),
                (due + time::Duration::seconds(5), with_tasks(lease(end), 1)),
                (end - time::Duration::seconds(20), with_tasks(lease(end), 0)),
            ],
            &stop_timeout(60),
        );
        assert_eq!(
            d[0].state.stop_at,
            Some(due),
            "known from the first decision"
        );
        assert!(
            !d[2].actions.contains(&stop),
            "not before T - timeout - margin"
        );
        assert_eq!(
            d[3].actions,
            vec![stop],
            "at T - timeout - margin, not later"
        );
        assert_eq!(count(&d, stop), 1);
        assert_eq!(
            d[5].actions,
            vec![Action::PowerOff],
            "stopped in time: off at once"
        );
    }

    #[test]
    fn a_job_stop_timeout_lengthens_a_shorter_stop_grace_and_applies_to_every_end() {
        let now = T0;
        let end = T0 + minutes(2);
        let spot = |tasks| Observations {
            spot_action: spot(end),
            running_tasks: Some(tasks),
            ..Observations::default()
        };
        let policy = Policy {
            stop_grace: Some(Duration::from_secs(30)),
            job_stop_timeout: Some(Duration::from_secs(60)),
            ..policy()
        };
        assert_eq!(policy.effective_stop_grace(), Some(Duration::from_secs(70)));
        let first = decide(now, &spot(1), &AgentState::default(), &policy);
        assert_eq!(first.state.stop_at, Some(end - time::Duration::seconds(70)));
        let mut state = first.state;
        if let Some(drain) = state.drain.as_mut() {
            drain.draining_confirmed_at = Some(now);
        }
        let before = decide(end - time::Duration::seconds(71), &spot(1), &state, &policy);
        assert!(!before
            .actions
            .contains(&Action::StopTasks(StopCause::Grace)));
        let at = decide(end - time::Duration::seconds(70), &spot(1), &state, &policy);
        assert!(at.actions.contains(&Action::StopTasks(StopCause::Grace)));
        // Without a job stop timeout nothing changes: no stop, no stop_at.
        let plain = decide(now, &spot(1), &AgentState::default(), &self::policy());
        assert_eq!(plain.state.stop_at, None);
        // A longer grace wins over the stop lead.
        let long = Policy {
            stop_grace: Some(Duration::from_secs(300)),
            job_stop_timeout: Some(Duration::from_secs(60)),
            ..self::policy()
        };
        assert_eq!(long.effective_stop_grace(), Some(Duration::from_secs(300)));
    }

    #[test]
    fn stop_at_follows_a_moved_lease_end() {
        let policy = stop_timeout(30);
        let first = decide(
            T0,
            &lease(T0 + minutes(60)),
            &AgentState::default(),
            &policy,
        );
        assert_eq!(
            first.state.stop_at,
            Some(T0 + minutes(60) - time::Duration::seconds(40))
        );
        let moved = decide(
            T0 + minutes(1),
            &lease(T0 + minutes(90)),
            &first.state,
            &policy,
        );
        assert_eq!(
            moved.state.stop_at,
            Some(T0 + minutes(90) - time::Duration::seconds(40))
        );
        // A lease not enforced (on_lease_end = none) and no grace: nothing is stopped.
        let none = Policy {
            enforce_lease_end: false,
            ..policy
        };
        let d = decide(T0, &lease(T0 + minutes(60)), &AgentState::default(), &none);
        assert_eq!(
            d.state.stop_at,
            Some(T0 + minutes(60) - time::Duration::seconds(40)),
            "the stop lead still applies as a grace"
        );
    }

    #[test]
    fn drained_before_the_lease_end_powers_off_at_once() {
        let end = T0 + minutes(10);
        let d = run_enforced(
            &[
                (T0, lease(end)),
                (T0 + minutes(1), with_tasks(lease(end), 0)),
                (T0 + minutes(2), with_tasks(lease(end), 0)),
            ],
            &enforcing(),
        );
        assert_eq!(d[1].state.phase, Phase::Drained);
        assert_eq!(d[1].actions, vec![Action::PowerOff], "before the end");
        assert_eq!(count(&d, Action::PowerOff), 1);
    }

    #[test]
    fn at_the_lease_end_running_tasks_are_stopped_then_the_instance_powers_off() {
        let end = T0 + minutes(10);
        let stop = Action::StopTasks(StopCause::LeaseEnded);
        let d = run_enforced(
            &[
                (T0, lease(end)),
                (T0 + minutes(1), with_tasks(lease(end), 1)),
                (end - time::Duration::SECOND, with_tasks(lease(end), 1)),
                (end, with_tasks(lease(end), 1)),
                (end + time::Duration::seconds(5), with_tasks(lease(end), 1)),
                (end + time::Duration::seconds(10), with_tasks(lease(end), 0)),
                (end + minutes(5), with_tasks(lease(end), 0)),
            ],
            &enforcing(),
        );
        assert!(!d[2].actions.contains(&stop), "not before the end");
        assert_eq!(d[3].actions, vec![stop], "at the end");
        assert!(d[4].actions.is_empty(), "stopped once: {:?}", d[4].actions);
        assert_eq!(d[5].actions, vec![Action::PowerOff], "once they stopped");
        assert_eq!(count(&d, stop), 1);
        assert_eq!(count(&d, Action::PowerOff), 1);
    }

    #[test]
    fn past_the_lease_end_and_the_stop_wait_the_instance_powers_off_whatever_runs() {
        let end = T0 + minutes(10);
        let wait = time::Duration::try_from(LEASE_END_STOP_WAIT).unwrap();
        let d = run_enforced(
            &[
                (T0, lease(end)),
                (end, with_tasks(lease(end), 3)),
                (
                    end + wait - time::Duration::SECOND,
                    with_tasks(lease(end), 3),
                ),
                (end + wait, with_tasks(lease(end), 3)),
            ],
            &enforcing(),
        );
        assert!(!d[2].actions.contains(&Action::PowerOff));
        assert_eq!(d[3].actions, vec![Action::PowerOff]);
    }

    #[test]
    fn a_capacity_block_is_enforced_like_a_lease() {
        let end_date = T0 + minutes(40); // EC2 ends it 30 min earlier
        let d = run_enforced(
            &[
                (T0, capacity_block(end_date)),
                (T0 + minutes(10), with_tasks(capacity_block(end_date), 1)),
            ],
            &enforcing(),
        );
        assert_eq!(d[1].actions, vec![Action::StopTasks(StopCause::LeaseEnded)]);
    }

    #[test]
    fn on_lease_end_none_neither_stops_nor_powers_off() {
        let end = T0 + minutes(10);
        let d = run_enforced(
            &[
                (T0, lease(end)),
                (end, with_tasks(lease(end), 1)),
                (end + minutes(10), with_tasks(lease(end), 1)),
                (end + minutes(11), with_tasks(lease(end), 0)),
            ],
            &policy(),
        );
        assert_eq!(d[3].state.phase, Phase::Drained);
        assert!(d
            .iter()
            .all(|x| x.actions.is_empty() || x.actions == [Action::Drain]));
    }

    #[test]
    fn a_spot_interruption_is_left_to_aws() {
        let d = run_enforced(
            &[
                (
                    T0,
                    Observations {
                        spot_action: spot(T0 + minutes(2)),
                        ..lease(T0 + minutes(300))
                    },
                ),
                (
                    T0 + minutes(3),
                    Observations {
                        spot_action: spot(T0 + minutes(2)),
                        running_tasks: Some(0),
                        ..lease(T0 + minutes(300))
                    },
                ),
            ],
            &enforcing(),
        );
        assert_eq!(d[1].state.phase, Phase::Drained);
        assert!(d[1].actions.is_empty(), "{:?}", d[1].actions);
    }

    #[test]
    fn a_failed_power_off_is_retried_with_backoff_until_it_succeeds() {
        let end = T0 + minutes(10);
        let drained = with_tasks(lease(end), 0);
        let mut state = run_enforced(&[(T0, lease(end))], &enforcing())[0]
            .state
            .clone();
        if let Some(d) = state.drain.as_mut() {
            d.draining_confirmed_at = Some(T0);
        }
        let mut attempts_at = Vec::new();
        for second in 0..60 {
            let now = T0 + minutes(1) + time::Duration::seconds(second);
            let d = decide(now, &drained, &state, &enforcing());
            state = d.state;
            if d.actions.contains(&Action::PowerOff) {
                attempts_at.push(second);
                // The executor records the attempt; the command fails.
                let drain = state.drain.as_mut().unwrap();
                drain.poweroff_attempts += 1;
                drain.poweroff_attempted_at = Some(now);
            }
        }
        assert_eq!(attempts_at, vec![0, 5, 15, 35], "5 s, then doubling");
        let drain = state.drain.clone().unwrap();
        assert_eq!(drain.poweroff_at, None, "not done until it succeeds");
        // A success ends the retries.
        state.drain.as_mut().unwrap().poweroff_at = Some(T0 + minutes(2));
        let d = decide(T0 + minutes(30), &drained, &state, &enforcing());
        assert!(d.actions.is_empty());
        assert_eq!(poweroff_retry_after(40), POWEROFF_RETRY_MAX);
    }

    #[test]
    fn a_drain_is_never_undone_once_a_power_off_started() {
        let end = T0 + minutes(10);
        let d = run_enforced(
            &[
                (T0, lease(end)),
                (T0 + minutes(1), with_tasks(lease(end), 0)),
                (T0 + minutes(2), lease(T0 + minutes(300))),
            ],
            &enforcing(),
        );
        assert_eq!(d[1].actions, vec![Action::PowerOff]);
        assert_eq!(d[2].state.phase, Phase::Drained);
        assert!(d[2].actions.is_empty());
    }

    #[test]
    fn a_drain_from_before_the_instance_started_again_is_finished() {
        let spotted = Observations {
            spot_action: Some(SpotAction {
                action: "stop".into(),
                time: T0 + minutes(2),
            }),
            launched_at: Some(T0 - minutes(60)),
            ..lease(T0 + minutes(300))
        };
        let d = run(&[(T0, spotted)], &policy());
        assert_eq!(d[0].state.phase, Phase::Draining);
        let mut draining = d[0].state.clone();
        draining.drain.as_mut().unwrap().draining_confirmed_at = Some(T0);
        // Stopped at T0 + 2 min, started again at T0 + 30 min; the notice is gone.
        let resumed = Observations {
            launched_at: Some(T0 + minutes(30)),
            ..lease(T0 + minutes(300))
        };
        let again = decide(T0 + minutes(31), &resumed, &draining, &policy());
        assert_eq!(again.state.phase, Phase::Watching);
        assert_eq!(again.actions, vec![Action::Undrain], "ECS had it DRAINING");
        assert_eq!(
            again.events.first(),
            Some(&Event::DrainCanceled(CancelCause::NewLife))
        );
        assert_eq!(again.state.drain, None);
        // The same life goes on: nothing more.
        let later = decide(T0 + minutes(32), &resumed, &again.state, &policy());
        assert_eq!(later.state.phase, Phase::Watching);
        assert!(later.events.is_empty(), "{:?}", later.events);
    }

    #[test]
    fn extreme_values_do_not_panic() {
        let huge = Policy {
            drain_lead: Duration::from_secs(u64::MAX / 4),
            stop_grace: Some(Duration::from_secs(u64::MAX / 4)),
            ..policy()
        };
        let d = decide(T0, &lease(T0 + minutes(5)), &AgentState::default(), &huge);
        assert_eq!(d.state.phase, Phase::Draining);
    }
}
