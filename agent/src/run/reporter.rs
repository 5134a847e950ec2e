//! The reporter: what operators are told. Every decision as a journal line
//! with the fields journald indexes; drain events also to the webhook;
//! failures that repeat, once and then as a count; error counts for the
//! metrics file.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::node::Node;
use crate::actions::webhook::{self, Deliveries};
use blockwatch_core::deadline::Observations;
use blockwatch_core::decision::{AgentState, CancelCause, Event};
use blockwatch_core::failures::{FailureLog, Line};
use blockwatch_core::job_deadline::DeadlineView;
use blockwatch_core::settings::Settings;
use blockwatch_core::time_text::rfc3339;

/// How long shutdown and power-off wait for webhook deliveries in flight.
pub(super) const WEBHOOK_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(super) struct Reporter {
    node: Node,
    dry_run: bool,
    webhook_url: Option<String>,
    pub deliveries: Deliveries,
    failures: FailureLog,
    /// Failures by source (`ecs`, `imds`, …), for the metrics file.
    errors: BTreeMap<&'static str, u64>,
    /// The end of the clock-step hold last logged, so it is logged once.
    held_until_logged: Option<OffsetDateTime>,
}

impl Reporter {
    pub(super) fn new(settings: &Settings, node: &Node, deliveries: Deliveries) -> Self {
        Self {
            node: node.clone(),
            dry_run: settings.dry_run.value,
            webhook_url: settings.webhook_url.as_ref().map(|u| u.value.clone()),
            deliveries,
            failures: FailureLog::default(),
            errors: BTreeMap::new(),
            held_until_logged: None,
        }
    }

    /// `activity` failed with `error`; `then` says what happens next. Logged
    /// when it starts failing, then as a count now and then.
    pub(super) fn failed(&mut self, activity: &str, error: &str, then: &str, now: Instant) {
        if let Some(line) = self.failures.failed(activity, error, then, now) {
            emit(line);
        }
    }

    /// `activity` worked: one line if it had been failing.
    pub(super) fn worked(&mut self, activity: &str, now: Instant) {
        if let Some(line) = self.failures.succeeded(activity, now) {
            emit(line);
        }
    }

    /// Ends a failure streak without a line (the caller says it better).
    pub(super) fn forget_failures(&mut self, activity: &str, now: Instant) {
        let _ = self.failures.succeeded(activity, now);
    }

    pub(super) fn count_error(&mut self, source: &'static str) {
        *self.errors.entry(source).or_default() += 1;
    }

    pub(super) fn errors(&self) -> &BTreeMap<&'static str, u64> {
        &self.errors
    }

    /// Logs with the journald fields every decision carries.
    pub(super) fn decision(&self, state: &AgentState, message: &str) {
        let deadline = state
            .deadline
            .as_ref()
            .map(|d| rfc3339(d.at))
            .unwrap_or_default();
        let source = state
            .deadline
            .as_ref()
            .map(|d| d.event.kind.name())
            .unwrap_or("none");
        log::info!(
            INSTANCE_ID = self.node.instance_id.as_str(),
            CLUSTER = self.node.cluster.as_deref().unwrap_or_default(),
            PHASE = state.phase.name(),
            DEADLINE = deadline.as_str(),
            DEADLINE_SOURCE = source;
            "{message}"
        );
    }

    /// An event of the core: a journal line, and a webhook POST for all
    /// but a deadline change.
    pub(super) fn event(
        &mut self,
        event: &Event,
        state: &AgentState,
        observed: &Observations,
        now: OffsetDateTime,
    ) {
        let deadline = state.deadline.as_ref();
        let described = deadline
            .map(|d| {
                format!(
                    "{} [{}] at {} (in {})",
                    d.event.kind,
                    d.event.id,
                    rfc3339(d.at),
                    blockwatch_core::operator_view::countdown(now, d.at)
                )
            })
            .unwrap_or_else(|| "no end announced".to_owned());
        let (name, message) = match event {
            Event::DrainStarted if self.node.cluster.is_none() => (
                "drain-started",
                format!(
                    "the end is near: the instance ends {described}; not joined, so nothing to drain or stop"
                ),
            ),
            Event::DrainStarted => (
                "drain-started",
                format!("draining: the instance ends {described}"),
            ),
            Event::DrainCompleted => (
                "drain-completed",
                "drained: no task left on this instance".to_owned(),
            ),
            Event::DrainCanceled(cause) => (
                "drain-canceled",
                format!(
                    "drain canceled: {}; watching again: {described}",
                    match cause {
                        CancelCause::EventEnded => "its scheduled event is over".to_owned(),
                        CancelCause::DeadlineMoved => "its deadline moved later".to_owned(),
                        CancelCause::NewLife => format!(
                            "the instance was started again (pendingTime {}) after the drain began",
                            observed.launched_at.map(rfc3339).unwrap_or_default()
                        ),
                    }
                ),
            ),
            Event::DeadlineChanged => ("deadline-changed", format!("deadline: {described}")),
            Event::StopWaitOver { timed_out: false } => (
                "",
                "the stopped tasks are gone on this instance".to_owned(),
            ),
            Event::StopWaitOver { timed_out: true } => (
                "",
                format!(
                    "the stopped tasks had their stop timeout and margin; {} still running on this instance",
                    state
                        .drain
                        .as_ref()
                        .and_then(|d| d.running_tasks)
                        .map_or_else(|| "unknown how many".to_owned(), |n| n.to_string())
                ),
            ),
            Event::CheckpointSignaled { containers } => (
                "checkpoint-signaled",
                format!("checkpoint signal sent to {containers} opted-in container(s)"),
            ),
            Event::LifecycleCompleted => {
                let Some(action) = &state.lifecycle else {
                    return;
                };
                (
                    "lifecycle-completed",
                    format!(
                        "Auto Scaling lifecycle hook {} of group {} completed with CONTINUE after {} heartbeat(s): the group terminates the instance now",
                        action.hook.name, action.hook.group, action.heartbeats
                    ),
                )
            }
            Event::HeldForClockStep(until) => {
                if self.held_until_logged != Some(*until) {
                    self.held_until_logged = Some(*until);
                    log::warn!(
                        "the wall clock stepped: no task is stopped and nothing is powered off until {} (wall and monotonic time disagreed)",
                        rfc3339(*until)
                    );
                }
                return;
            }
        };
        self.decision(state, &message);
        if name.is_empty() || *event == Event::DeadlineChanged {
            return;
        }
        let Some(url) = &self.webhook_url else {
            return;
        };
        let cause = match event {
            Event::DrainCanceled(CancelCause::EventEnded) => Some("event-ended"),
            Event::DrainCanceled(CancelCause::DeadlineMoved) => Some("deadline-moved"),
            Event::DrainCanceled(CancelCause::NewLife) => Some("started-again"),
            _ => None,
        };
        let mut payload = webhook_body(name, &self.node, state, cause, now);
        if let (Event::CheckpointSignaled { containers }, Some(fields)) =
            (event, payload.as_object_mut())
        {
            fields.insert("containers".into(), (*containers).into());
        }
        if let (Event::LifecycleCompleted, Some(action), Some(fields)) =
            (event, &state.lifecycle, payload.as_object_mut())
        {
            fields.insert("lifecycle_hook".into(), action.hook.name.clone().into());
            fields.insert("autoscaling_group".into(), action.hook.group.clone().into());
            fields.insert("lifecycle_heartbeats".into(), action.heartbeats.into());
        }
        if self.dry_run {
            log::info!(
                "dry run: would POST {name} to webhook {}",
                webhook::redacted(url)
            );
        } else {
            self.deliveries.post(url.clone(), payload);
        }
    }
}

/// A webhook event's JSON: what happened, to which instance, and the
/// deadline's fields as [`DeadlineView`] names them.
fn webhook_body(
    name: &str,
    node: &Node,
    state: &AgentState,
    cause: Option<&str>,
    now: OffsetDateTime,
) -> serde_json::Value {
    let mut body = DeadlineView::of(&node.instance_id, state).fields();
    let about = serde_json::json!({
        "event": name,
        "instance_id": node.instance_id,
        "cluster": node.cluster,
        "cause": cause,
        "at": rfc3339(now),
    });
    if let serde_json::Value::Object(about) = about {
        body.extend(about);
    }
    serde_json::Value::Object(body)
}

fn emit(line: Line) {
    match line {
        Line::Warn(text) => log::warn!("{text}"),
        Line::Info(text) => log::info!("{text}"),
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use blockwatch_core::deadline::{EventKey, SourceKind};
    use blockwatch_core::decision::{Deadline, Phase};

    #[test]
    fn a_webhook_body_keeps_its_fields_and_their_formats() {
        let node = Node {
            instance_id: "i-0abc".into(),
            cluster: Some("jobs".into()),
            degraded: None,
            compute_environment: None,
        };
        let state = AgentState {
            phase: Phase::Draining,
            deadline: Some(Deadline {
                at: datetime!(2026-11-30 18:00:00 UTC),
                event: EventKey {
                    kind: SourceKind::Lease,
                    id: "tag:2026-11-30T18:00:00Z".into(),
                },
            }),
            drain_at: Some(datetime!(2026-11-30 17:50:00 UTC)),
            stop_at: None,
            checkpoint_at: Some(datetime!(2026-11-30 17:45:00 UTC)),
            ..AgentState::default()
        };
        let body = webhook_body(
            "drain-canceled",
            &node,
            &state,
            Some("deadline-moved"),
            datetime!(2026-11-30 17:51:02 UTC),
        );
        assert_eq!(
            serde_json::to_string(&body).unwrap_or_default(),
            concat!(
                r#"{"at":"2026-11-30T17:51:02Z","cause":"deadline-moved","#,
                r#""checkpoint_at":"2026-11-30T17:45:00Z","cluster":"jobs","#,
                r#""deadline":"2026-11-30T18:00:00Z","deadline_source":"lease","#,
                r#""drain_at":"2026-11-30T17:50:00Z","event":"drain-canceled","#,
                r#""instance_id":"i-0abc","phase":"draining","stop_at":null}"#
            )
        );
    }
}
