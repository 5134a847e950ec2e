//! The executor: carries out the core's actions over a [`ContainerService`]
//! and records what they did in the state.
//! (About 420 lines: every action with its backoff and its record reads
//! best beside the one ARN cache and backoff they share.)
//!
//! It owns the container instance's ARN (found once, forgotten when ECS
//! rejects it), the one backoff every failing ECS call shares (exponential,
//! capped, jittered), and the task-count schedule. Its time and randomness
//! come from a [`Clock`]; the wall time of a decision is passed in. The
//! power-off protocol is in [`super::power_off`].

use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::books::Books;
use super::call_limit::{bounded, AWS_CALL_LIMIT};
use super::clock::{shown, Clock};
use super::node::Node;
use crate::actions::ecs::{ContainerService, StopReport};
use crate::sources::{AwsFailure, CallError};
use blockwatch_core::backoff::Backoff;
use blockwatch_core::deadline::SourceKind;
use blockwatch_core::decision::{
    record, Action, AgentState, Outcome, Phase, StopCause, STOP_REASON_PREFIX,
};
use blockwatch_core::settings::Settings;
use blockwatch_core::time_text::rfc3339;

/// Failed ECS calls are retried after up to 1 s, doubling to 30 s.
pub(super) const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the activities that can fail repeatedly are called in the logs.
const FINDING: &str = "finding the container instance";
const DRAINING: &str = "setting the container instance to DRAINING";
const UNDRAINING: &str = "setting the container instance back to ACTIVE";
const COUNTING: &str = "counting the tasks still running";
const STOPPING: &str = "stopping the remaining tasks";

#[derive(Debug)]
pub(super) struct Executor<S, K> {
    service: S,
    pub(super) clock: K,
    pub(super) node: Node,
    pub(super) dry_run: bool,
    drain_poll_interval: Duration,
    pub(super) poweroff_command: String,
    /// Our container instance's ARN, once found.
    container_instance: Option<String>,
    backoff: Backoff,
    next_task_count: Instant,
    /// Whether "waiting for … to register" was logged.
    waiting_logged: bool,
    /// A power-off attempt on disk whose command is still to run (when, and
    /// which attempt).
    pub(super) power_off_recorded: Option<(OffsetDateTime, u32)>,
    /// Auto Scaling's calls back off on their own: they never hold ECS's.
    pub(super) hook_backoff: Backoff,
    /// Whether Auto Scaling answered where the termination hook is, for
    /// the `Terminated` seen (found, none, or a configured one missing).
    pub(super) hook_lookup_settled: bool,
    /// `lifecycle_hook`: the hook to complete, when not discovered.
    pub(super) lifecycle_hook_name: Option<String>,
}

impl<S: ContainerService, K: Clock> Executor<S, K> {
    pub(super) fn new(service: S, clock: K, settings: &Settings, node: &Node) -> Self {
        Self {
            next_task_count: clock.instant(),
            service,
            clock,
            node: node.clone(),
            dry_run: settings.dry_run.value,
            drain_poll_interval: settings.drain_poll_interval.value,
            poweroff_command: settings.poweroff_command.value.clone(),
            container_instance: None,
            backoff: Backoff::new(FIRST_BACKOFF, MAX_BACKOFF),
            waiting_logged: false,
            power_off_recorded: None,
            hook_backoff: Backoff::new(FIRST_BACKOFF, MAX_BACKOFF),
            hook_lookup_settled: false,
            lifecycle_hook_name: settings.lifecycle_hook.as_ref().map(|h| h.value.clone()),
        }
    }

    pub(super) fn service(&self) -> &S {
        &self.service
    }

    /// While draining (once ECS confirmed DRAINING) and while stopped tasks
    /// wind down, counts the tasks still running on the host every
    /// `drain_poll_interval` (at once after DRAINING is confirmed and after
    /// tasks were stopped) into the core's observations.
    pub(super) async fn count_tasks_if_due(&mut self, books: &mut Books) {
        let confirmed = books
            .state
            .drain
            .as_ref()
            .is_some_and(|d| d.draining_confirmed_at.is_some());
        let counting = matches!(books.state.phase, Phase::Draining | Phase::Stopping);
        // A dry run asks nothing of ECS: its drain found nothing to wait for.
        if self.dry_run {
            return;
        }
        if !counting || !confirmed {
            books.observed.running_tasks = None;
            return;
        }
        if self.clock.instant() < self.next_task_count {
            return;
        }
        self.next_task_count = self.clock.instant() + self.drain_poll_interval;
        let Some(container_instance) = self.container_instance(books).await else {
            return;
        };
        let Some(cluster) = &self.node.cluster else {
            return;
        };
        let counted = bounded(
            "ecs:ListTasks",
            self.service.tasks(cluster, &container_instance),
        )
        .await;
        match counted {
            Ok(tasks) => {
                self.worked(COUNTING, books);
                if books.observed.running_tasks != Some(tasks.len()) {
                    log::info!(CLUSTER = cluster.as_str(), PHASE = books.state.phase.name(); "{} task(s) still running on {container_instance}", tasks.len());
                }
                books.observed.running_tasks = Some(tasks.len());
            }
            Err(err) => self.failed(COUNTING, &err, books),
        }
    }

    /// Carries out `action`, decided at `now`, and reports what happened
    /// for the core to record. A failed ECS call is retried when the core
    /// asks again after the backoff; until then the action is skipped.
    pub(super) async fn act(
        &mut self,
        action: Action,
        now: OffsetDateTime,
        books: &mut Books,
    ) -> Option<Outcome> {
        if self.dry_run {
            return self.act_dry(action, now, books);
        }
        // The ECS backoff holds ECS calls only.
        let ecs_call = !matches!(
            action,
            Action::PowerOff
                | Action::SignalCheckpoint(_)
                | Action::RecordLifecycleHeartbeat
                | Action::CompleteLifecycleAction
        );
        let hook_call = matches!(
            action,
            Action::RecordLifecycleHeartbeat | Action::CompleteLifecycleAction
        );
        if hook_call && !self.hook_backoff.ready(self.clock.instant()) {
            return None;
        }
        if ecs_call && !self.backoff.ready(self.clock.instant()) {
            return None;
        }
        match action {
            Action::Drain => self.set_draining(true, books).await,
            Action::Undrain => self.set_draining(false, books).await,
            Action::StopTasks(cause) => self.stop_tasks(cause, now, books).await,
            Action::PowerOff => self.record_power_off(now, books).await,
            Action::SignalCheckpoint(end) => self.signal_checkpoint(end, now, books).await,
            Action::RecordLifecycleHeartbeat => self.lifecycle_heartbeat(now, books).await,
            Action::CompleteLifecycleAction => self.complete_lifecycle(now, books).await,
            // The last look at the lease is the poll's (it reads IMDS).
            Action::ConfirmLease => None,
        }
    }

    /// DRAINING (a drain) or ACTIVE (a drain undone).
    async fn set_draining(&mut self, draining: bool, books: &mut Books) -> Option<Outcome> {
        let Some(container_instance) = self.container_instance(books).await else {
            // Not registered yet: ask again after a backoff (an AWS error
            // has already started one).
            self.back_off_unless_waiting();
            return None;
        };
        let Some(cluster) = &self.node.cluster else {
            return None;
        };
        let activity = if draining { DRAINING } else { UNDRAINING };
        let set = bounded(
            "ecs:UpdateContainerInstancesState",
            self.service
                .set_draining(cluster, &container_instance, draining),
        )
        .await;
        if let Err(err) = set {
            // A rejection may mean the ECS agent registered again under a new ARN.
            if matches!(
                err,
                CallError::Aws {
                    kind: AwsFailure::Rejected,
                    ..
                }
            ) {
                self.container_instance = None;
            }
            self.failed(activity, &err, books);
            return None;
        }
        self.backoff.succeeded();
        self.worked(activity, books);
        if draining {
            self.next_task_count = self.clock.instant();
        }
        books.decision(if draining {
            "container instance set to DRAINING: no new jobs are placed here"
        } else {
            "container instance set back to ACTIVE"
        });
        Some(if draining {
            Outcome::Draining
        } else {
            Outcome::Active
        })
    }

    /// Stops every task on the host that ECS does not already want stopped;
    /// done once each of them was asked. A failed call is logged with its
    /// task and asked again after the backoff; the others are not repeated.
    async fn stop_tasks(
        &mut self,
        cause: StopCause,
        now: OffsetDateTime,
        books: &mut Books,
    ) -> Option<Outcome> {
        let Some(container_instance) = self.container_instance(books).await else {
            self.back_off_unless_waiting();
            return None;
        };
        let Some(cluster) = &self.node.cluster else {
            return None;
        };
        let reason = stop_reason(cause, &books.state, &self.node, now);
        let tasks = match bounded(
            "ecs:ListTasks",
            self.service.tasks(cluster, &container_instance),
        )
        .await
        {
            Ok(tasks) => tasks,
            Err(err) => {
                self.failed(STOPPING, &err, books);
                return None;
            }
        };
        let to_stop: Vec<String> = tasks
            .iter()
            .filter(|t| !t.stop_requested)
            .map(|t| t.arn.clone())
            .collect();
        let report = match tokio::time::timeout(
            AWS_CALL_LIMIT,
            Box::pin(self.service.stop_tasks(cluster, &to_stop, &reason)),
        )
        .await
        {
            Ok(report) => report,
            Err(_) => StopReport {
                stopped: Vec::new(),
                failed: vec![(
                    to_stop.join(", "),
                    CallError::Aws {
                        api: "ecs:StopTask",
                        kind: AwsFailure::Transient,
                        detail: format!(
                            "no answer within {}",
                            humantime::format_duration(AWS_CALL_LIMIT)
                        ),
                    },
                )],
            },
        };
        // Count again soon: the power-off waits for them.
        self.next_task_count = self.clock.instant();
        if !report.stopped.is_empty() {
            books.decision(&format!(
                "stopped {} task(s) with reason {reason:?}",
                report.stopped.len()
            ));
        }
        if let Some((_, first)) = report.failed.first() {
            for (task, err) in &report.failed {
                log::warn!("could not stop task {task}: {err}");
            }
            self.failed(STOPPING, first, books);
            return None;
        }
        self.backoff.succeeded();
        self.worked(STOPPING, books);
        if to_stop.is_empty() {
            books.decision("no task left to stop");
        }
        Some(Outcome::StopsRequested(cause))
    }

    /// Dry run: nothing is asked of ECS or run; each action is reported done
    /// at once, so that the drain goes on as it would. The dry run keeps its
    /// own state (never the live agent's), so this changes nothing real.
    fn act_dry(
        &mut self,
        action: Action,
        now: OffsetDateTime,
        books: &mut Books,
    ) -> Option<Outcome> {
        let (what, outcome) = match action {
            Action::Drain => {
                // Nothing was drained, so there is nothing to wait for.
                books.observed.running_tasks = Some(0);
                (
                    "set the container instance to DRAINING".to_owned(),
                    Outcome::Draining,
                )
            }
            Action::Undrain => (
                "set the container instance back to ACTIVE".to_owned(),
                Outcome::Active,
            ),
            Action::StopTasks(cause) => (
                format!(
                    "stop the remaining tasks with reason {:?}",
                    stop_reason(cause, &books.state, &self.node, now)
                ),
                Outcome::StopsRequested(cause),
            ),
            Action::PowerOff => (
                format!("run {:?}", self.poweroff_command),
                Outcome::PoweredOff,
            ),
            Action::SignalCheckpoint(end) => {
                record(&mut books.state, Outcome::CheckpointStarted(end), now);
                (
                    "send the opted-in containers their checkpoint signal".to_owned(),
                    Outcome::CheckpointSignaled(0),
                )
            }
            // A dry run looks for no hook, so the core asks for none.
            Action::RecordLifecycleHeartbeat => (
                "record a lifecycle action heartbeat".to_owned(),
                Outcome::LifecycleHeartbeat,
            ),
            Action::CompleteLifecycleAction => (
                "complete the lifecycle action with CONTINUE".to_owned(),
                Outcome::LifecycleCompleted,
            ),
            Action::ConfirmLease => return None,
        };
        books.decision(&format!("dry run, nothing changed: would {what}"));
        Some(outcome)
    }

    /// Our container instance: found once (the local ECS agent first, then
    /// `ecs:ListContainerInstances`), then kept until ECS rejects it.
    async fn container_instance(&mut self, books: &mut Books) -> Option<String> {
        if self.container_instance.is_some() {
            return self.container_instance.clone();
        }
        // Unjoined (`run` degraded): no cluster, so no ECS call at all.
        let cluster = self.node.cluster.as_deref()?;
        let found = bounded(
            "ecs:ListContainerInstances",
            self.service
                .find_container_instance(cluster, &self.node.instance_id),
        )
        .await;
        let found = match found {
            Ok(found) => found,
            Err(err) => {
                self.failed(FINDING, &err, books);
                return None;
            }
        };
        self.worked(FINDING, books);
        match &found {
            Some(arn) => log::info!(CLUSTER = cluster; "container instance {arn}"),
            None if !self.waiting_logged => {
                log::info!(
                    "waiting for {} to register as a container instance in {cluster}",
                    self.node.instance_id
                );
                self.waiting_logged = true;
            }
            None => {}
        }
        self.container_instance.clone_from(&found);
        found
    }

    /// Starts a backoff when none is running.
    fn back_off_unless_waiting(&mut self) {
        let now = self.clock.instant();
        if self.backoff.ready(now) {
            self.backoff.failed(now, self.clock.random());
        }
    }

    /// Counts a failed ECS call, backs off, and logs it the first time and
    /// then as a count now and then.
    fn failed(&mut self, activity: &str, err: &CallError, books: &mut Books) {
        books.reporter.count_error("ecs");
        let now = self.clock.instant();
        let wait = self.backoff.failed(now, self.clock.random());
        let then = format!("retrying in {}", shown(wait));
        books
            .reporter
            .failed(activity, &err.to_string(), &then, now);
    }

    fn worked(&self, activity: &str, books: &mut Books) {
        books.reporter.worked(activity, self.clock.instant());
    }
}

/// The reason the stopped tasks are given: Batch retry rules match its
/// prefix. A lease-end stop made ahead of the end (`job_stop_timeout`)
/// says when the end comes rather than that it came.
fn stop_reason(cause: StopCause, state: &AgentState, node: &Node, now: OffsetDateTime) -> String {
    if cause == StopCause::LeaseEnded {
        let lease = state
            .drain
            .as_ref()
            .filter(|d| d.reason.kind.is_lease())
            .map(|d| (d.reason.kind, d.deadline))
            .or_else(|| {
                state
                    .deadline
                    .as_ref()
                    .filter(|d| d.event.kind.is_lease())
                    .map(|d| (d.event.kind, d.at))
            });
        let kind = lease.map_or(SourceKind::Lease, |(kind, _)| kind);
        let what = match kind {
            SourceKind::CapacityBlock => "Capacity Block",
            _ => "lease",
        };
        return match lease.map(|(_, end)| end).filter(|end| *end > now) {
            Some(end) => format!(
                "{STOP_REASON_PREFIX} {what} ends at {} (instance {})",
                rfc3339(end),
                node.instance_id
            ),
            None => format!(
                "{STOP_REASON_PREFIX} {what} ended (instance {})",
                node.instance_id
            ),
        };
    }
    let ends = state
        .deadline
        .as_ref()
        .map(|d| format!(" at {} ({})", rfc3339(d.at), d.event.kind))
        .unwrap_or_default();
    format!(
        "{STOP_REASON_PREFIX} instance {} ends{ends}",
        node.instance_id
    )
}
