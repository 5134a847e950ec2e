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
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub poweroff_at: Option<OffsetDateTime>,
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
}

/// How the agent acts on deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub drain_lead: Duration,
    pub drain_on_rebalance: bool,
    pub stop_grace: Option<Duration>,
    pub power_off_when_drained: bool,
}

/// Something the IO side must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Set the container instance to DRAINING (until confirmed).
    Drain,
    /// Set it back to ACTIVE (a canceled scheduled event).
    Undrain,
    /// Stop the remaining tasks (`stop_grace`).
    StopTasks,
    PowerOff,
}

/// Something worth telling operators once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    DrainStarted,
    DrainCompleted,
    DrainCanceled,
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
    state.terminated_seen_at = terminated_seen_at(now, observed, previous);
    let observed = &Observations {
        terminated_seen_at: state.terminated_seen_at,
        ..observed.clone()
    };
    let candidates = observed.candidates(now, policy.drain_on_rebalance);
    let first = earliest(&candidates);
    let mut actions = Vec::new();
    let mut events = Vec::new();
    if state.phase == Phase::Joining {
        state.phase = Phase::Watching;
    }

    // A canceled or completed scheduled event that alone started the drain
    // returns the instance to service, unless another signal is due.
    if let Some(drain) = &state.drain {
        let another_is_due = candidates
            .iter()
            .any(|c| c.key != drain.reason && now >= c.at.saturating_sub(lead));
        if drain.reason.kind == SourceKind::ScheduledEvent
            && observed.scheduled_event_ended(&drain.reason.id)
            && !another_is_due
        {
            state.phase = Phase::Watching;
            // Only an instance that ECS set to DRAINING needs setting back.
            state.undrain_pending = drain.draining_confirmed_at.is_some();
            state.drain = None;
            events.push(Event::DrainCanceled);
        }
    }

    match state.phase {
        Phase::Joining | Phase::Watching => {
            state.deadline = first.map(Deadline::from);
            state.drain_at = first.map(|c| c.at.saturating_sub(lead));
            if let Some(due) = first.filter(|c| now >= c.at.saturating_sub(lead)) {
                state.phase = Phase::Draining;
                state.drains_started += 1;
                state.undrain_pending = false;
                state.drain = Some(Drain {
                    reason: due.key.clone(),
                    deadline: due.at,
                    started_at: now,
                    draining_confirmed_at: None,
                    running_tasks: None,
                    tasks_stopped_at: None,
                    drained_at: None,
                    poweroff_at: None,
                });
                events.push(Event::DrainStarted);
            }
        }
        Phase::Draining | Phase::Drained => {}
    }

    if let Some(drain) = state.drain.as_mut() {
        // The signal that started the drain may move (a postponed event);
        // follow it while it is there.
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
        if state.phase == Phase::Draining {
            if drain.draining_confirmed_at.is_none() {
                actions.push(Action::Drain);
            } else if observed.running_tasks == Some(0) {
                state.phase = Phase::Drained;
                drain.drained_at = Some(now);
                state.drains_completed += 1;
                events.push(Event::DrainCompleted);
            } else if let Some(grace) = policy.stop_grace {
                if now >= end.saturating_sub(duration(grace)) && drain.tasks_stopped_at.is_none() {
                    actions.push(Action::StopTasks);
                }
            }
        }
        if state.phase == Phase::Drained
            && policy.power_off_when_drained
            && drain.poweroff_at.is_none()
        {
            actions.push(Action::PowerOff);
        }
    }
    if state.undrain_pending {
        actions.push(Action::Undrain);
    }
    if state.deadline != previous.deadline && !events.contains(&Event::DrainStarted) {
        events.push(Event::DeadlineChanged);
    }
    Decision {
        state,
        actions,
        events,
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::core::deadline::{ScheduledEvent, SpotAction};

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
        }
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
        assert_eq!(d[1].events.first(), Some(&Event::DrainCanceled));
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
        assert!(!d[1].actions.contains(&Action::StopTasks));
        assert_eq!(d[2].actions, vec![Action::StopTasks]);
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
    fn a_postponed_event_moves_the_drains_deadline() {
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
                (T0 + minutes(1), at(T0 + minutes(30))),
                (T0 + minutes(4), at(T0 + minutes(30))),
            ],
            &grace,
        );
        assert_eq!(
            d[1].state.drain.as_ref().map(|x| x.deadline),
            Some(T0 + minutes(30))
        );
        assert!(
            !d[2].actions.contains(&Action::StopTasks),
            "tasks are not stopped for the old time"
        );
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
