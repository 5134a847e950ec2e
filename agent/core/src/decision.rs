//! The agent's persisted state and the pure decision step: the whole end
//! sequence lives here.
//!
//! A drain goes watching → draining → (drained, or stopping → stopped) →
//! powering-off → powered-off, one step per decision at most where a step
//! needs the one before it to have happened (DRAINING before a stop, a stop
//! and its wait before a power-off). The executor carries out [`Action`]s and
//! reports what happened as an [`Outcome`]; only [`record`] writes outcomes
//! into the state, so a dry run and a real run record the same way.
//!
//! A power-off cannot be undone, so it needs two reasons: nothing runs any
//! more (or its time is up), and an end that is the instance's own (a lease
//! read again just before, or a signal that ends the instance). Until the
//! clock has been steady for a while after a step, no task is stopped and
//! nothing is powered off.
//!
//! Long (about 870 lines of code, 1,600 of tests): the end sequence is one
//! state machine, kept in one file so its order reads top to bottom, and the
//! tests walk each of its paths.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::deadline::{earliest, Candidate, Draining, EventKey, Fate, Observations, SourceKind};
use crate::checkpoint::{self, Checkpoint};
use crate::lifecycle_hook::{self, HookStep, LifecycleAction};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    #[default]
    Joining,
    Watching,
    /// DRAINING asked for (or confirmed); tasks may still run.
    Draining,
    /// Nothing runs any more, by itself.
    Drained,
    /// blockwatch stopped the remaining tasks; their containers are inside
    /// their stop timeout.
    Stopping,
    /// The stopped tasks are gone on the host, or their time is up.
    Stopped,
    /// A power-off was started and has not succeeded yet.
    PoweringOff,
    PoweredOff,
}

impl Phase {
    /// Every phase, in order (the metrics list them all).
    pub const ALL: [Self; 8] = [
        Self::Joining,
        Self::Watching,
        Self::Draining,
        Self::Drained,
        Self::Stopping,
        Self::Stopped,
        Self::PoweringOff,
        Self::PoweredOff,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Joining => "joining",
            Self::Watching => "watching",
            Self::Draining => "draining",
            Self::Drained => "drained",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::PoweringOff => "powering-off",
            Self::PoweredOff => "powered-off",
        }
    }

    /// A drain is under way, in one of its phases.
    pub fn is_ending(self) -> bool {
        !matches!(self, Self::Joining | Self::Watching)
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
    /// Whether that signal ends the instance (absent in older state files:
    /// read the safe way).
    #[serde(default = "comes_back")]
    pub ends_instance: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub deadline: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// The instance's `pendingTime` when the drain started: a newer one is
    /// a new life (the guest clock is not trusted for this).
    #[serde(
        with = "time::serde::rfc3339::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub launched_at: Option<OffsetDateTime>,
    /// When ECS accepted DRAINING; until then the call is (re)tried.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub draining_confirmed_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub running_tasks: Option<usize>,
    /// When the tasks still running were stopped `stop_grace` before the end.
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
    /// When the stopped tasks were gone on the host, or their stop timeout
    /// and a margin had passed.
    #[serde(
        with = "time::serde::rfc3339::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub stopped_at: Option<OffsetDateTime>,
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

fn comes_back() -> bool {
    false
}

impl Drain {
    fn new(due: &Candidate, now: OffsetDateTime, launched_at: Option<OffsetDateTime>) -> Self {
        Self {
            reason: due.key.clone(),
            ends_instance: due.fate == Fate::Ends,
            deadline: due.at,
            started_at: now,
            launched_at,
            draining_confirmed_at: None,
            running_tasks: None,
            tasks_stopped_at: None,
            drained_at: None,
            end_stop_at: None,
            stopped_at: None,
            poweroff_attempts: 0,
            poweroff_attempted_at: None,
            poweroff_at: None,
        }
    }

    /// Whether a power-off was started: from then on the drain is never undone.
    pub fn powering_off(&self) -> bool {
        self.poweroff_attempts > 0 || self.poweroff_at.is_some()
    }

    /// When blockwatch last asked ECS to stop the remaining tasks.
    pub fn stop_requested_at(&self) -> Option<OffsetDateTime> {
        self.tasks_stopped_at.max(self.end_stop_at)
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
    /// Checkpoint signals sent, one per container.
    #[serde(default)]
    pub checkpoint_signals: u64,
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
    /// When the checkpoint signal goes (or went) for the end in force:
    /// `checkpoint_lead` before `stop_at`, or before the deadline when
    /// nothing will be stopped; `None` when off or no end is known.
    #[serde(
        with = "time::serde::rfc3339::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub checkpoint_at: Option<OffsetDateTime>,
    /// The checkpoint signal pass for the current end, once started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,
    /// The Auto Scaling lifecycle action of a drain for `Terminated`, when
    /// the group has a termination hook: its heartbeats and completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<LifecycleAction>,
}

/// How long after a lease's end (or after a drain that started past it) the
/// instance powers off whatever still runs, when the stops cannot be made
/// or seen (ECS unreachable). Never shorter than a stop's own wait.
pub const LEASE_END_STOP_WAIT: Duration = Duration::from_secs(120);
/// The wait after a first failed power-off; it doubles up to the maximum.
pub const POWEROFF_RETRY_FIRST: Duration = Duration::from_secs(5);
pub const POWEROFF_RETRY_MAX: Duration = Duration::from_secs(300);
/// ECS's own SIGTERM-to-SIGKILL time (`ECS_CONTAINER_STOP_TIMEOUT`'s default).
pub const ECS_DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// After the wall clock steps, no task is stopped and nothing is powered
/// off for this long: a wrong clock must not end an instance.
pub const CLOCK_STEP_HOLD: Duration = Duration::from_secs(180);

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
    /// Whether reboots and maintenance events drain (`drain_on_maintenance`).
    pub drain_on_maintenance: bool,
    pub stop_grace: Option<Duration>,
    pub power_off_when_drained: bool,
    /// `on_lease_end = "poweroff"`: a lease or a Capacity Block ends the
    /// instance at its end, whatever still runs.
    pub enforce_lease_end: bool,
    /// `job_stop_timeout`: the time the ECS agent gives a stopped container
    /// between SIGTERM and SIGKILL (`ECS_CONTAINER_STOP_TIMEOUT`). Stops then
    /// start early enough for it to fit before the end.
    pub job_stop_timeout: Option<Duration>,
    /// `stop_tasks`: whether blockwatch may stop tasks (`ecs:StopTask`).
    /// Without it nothing is ever stopped: what still runs at the end ends
    /// with the instance, as at a spot interruption.
    pub stop_tasks: bool,
    /// How long before the end opted-in containers get their checkpoint
    /// signal (`checkpoint_lead`); `None`: off.
    pub checkpoint_lead: Option<Duration>,
    /// Whether the instance has a cluster to drain in. Without one (the join
    /// failed, or the config is unusable) nothing is asked of ECS, and a
    /// lease still ends with a power-off at its end.
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

    /// How long stopped tasks may take to be gone on the host: their stop
    /// timeout (ECS's default when not set) and [`JOB_STOP_MARGIN`].
    pub fn stop_wait(&self) -> Duration {
        self.job_stop_timeout
            .unwrap_or(ECS_DEFAULT_STOP_TIMEOUT)
            .saturating_add(JOB_STOP_MARGIN)
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
        if !self.stop_tasks {
            return None;
        }
        let grace = self
            .effective_stop_grace()
            .map(|grace| end.saturating_sub(duration(grace)));
        let lease = lease_end
            .filter(|_| self.enforce_lease_end)
            .map(|at| at.saturating_sub(duration(self.stop_lead().unwrap_or_default())));
        grace.into_iter().chain(lease).min()
    }

    pub fn draining(&self) -> Draining {
        Draining {
            on_rebalance: self.drain_on_rebalance,
            on_maintenance: self.drain_on_maintenance,
        }
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
    /// Read the lease tags again before a lease powers the instance off,
    /// then decide again with the same `now` (the last look).
    ConfirmLease,
    /// Run the power-off command (until it succeeds).
    PowerOff,
    /// Send the opted-in containers their checkpoint signal, for the end
    /// at this time.
    SignalCheckpoint(OffsetDateTime),
    /// `RecordLifecycleActionHeartbeat` for the hook in `state.lifecycle`.
    RecordLifecycleHeartbeat,
    /// `CompleteLifecycleAction` with `CONTINUE` for that hook.
    CompleteLifecycleAction,
}

/// What the IO side did, for [`record`] to write into the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// ECS accepted DRAINING.
    Draining,
    /// ECS accepted ACTIVE again.
    Active,
    /// Every remaining task was asked to stop, with this cause.
    StopsRequested(StopCause),
    /// A power-off attempt is about to run (recorded before it runs).
    PowerOffStarted,
    /// The power-off command succeeded.
    PoweredOff,
    /// A checkpoint signal pass for the end at this time is about to start
    /// (recorded before its first signal).
    CheckpointStarted(OffsetDateTime),
    /// The pass reached the ECS agent and Docker and signaled this many
    /// containers.
    CheckpointSignaled(u32),
    /// The pass reached neither the ECS agent nor Docker: nothing was
    /// signaled; it is tried again after `CHECKPOINT_RETRY`.
    CheckpointUnreached,
    /// Auto Scaling accepted a lifecycle heartbeat.
    LifecycleHeartbeat,
    /// Auto Scaling accepted `CONTINUE`.
    LifecycleCompleted,
    /// Auto Scaling has no such lifecycle action any more (timed out, or
    /// completed before a restart): nothing more is sent for it.
    LifecycleGone,
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
    /// Its deadline is not due any more: it moved later, or the wall clock
    /// stepped back, and the drain time is in the future.
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
    /// The tasks blockwatch stopped are gone on the host (`false`), or their
    /// stop timeout and margin passed first (`true`).
    StopWaitOver {
        timed_out: bool,
    },
    /// Stops and power-offs are held after a wall-clock step, until then.
    HeldForClockStep(OffsetDateTime),
    /// Opted-in containers were sent their checkpoint signal (this many;
    /// the IO side reports it once the pass is over).
    CheckpointSignaled {
        containers: u32,
    },
    /// Auto Scaling accepted `CONTINUE` for the group's termination hook
    /// (the IO side reports it once accepted).
    LifecycleCompleted,
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

/// The earliest end that leaves no time for a stop to run its course: a
/// spot interruption's time, or when EC2 starts terminating a Capacity
/// Block's instances.
fn hard_end(candidates: &[Candidate]) -> Option<OffsetDateTime> {
    candidates
        .iter()
        .filter(|c| {
            matches!(
                c.key.kind,
                SourceKind::SpotInterruption | SourceKind::CapacityBlock
            )
        })
        .map(|c| c.at)
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
    // Not due any more: its end moved later, or the wall clock stepped
    // back past the drain time (a clock that was wrong when it started).
    let no_longer_due = reason.kind.can_move_later()
        && candidates
            .iter()
            .any(|c| c.key == *reason && c.at.saturating_sub(lead) > now);
    no_longer_due.then_some(CancelCause::DeadlineMoved)
}

/// Whether the instance was started again since the drain began: a newer
/// `pendingTime` than the one the drain recorded (or, for a drain recorded
/// before blockwatch kept it, than the drain's start).
fn is_new_life(drain: &Drain, launched: OffsetDateTime) -> bool {
    match drain.launched_at {
        Some(was) => launched > was,
        None => launched > drain.started_at,
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
    let mut actions = Vec::new();
    let mut events = Vec::new();

    // Started again after a stop or a hibernation: the drain belonged to the
    // instance's last life, and ECS may still have it DRAINING.
    let new_life = state
        .drain
        .as_ref()
        .zip(observed.launched_at)
        .is_some_and(|(drain, launched)| is_new_life(drain, launched));
    if new_life {
        end_drain(&mut state, CancelCause::NewLife, &mut events);
        state.terminated_seen_at = None;
    }

    state.terminated_seen_at = terminated_seen_at(now, observed, &state);
    let observed = &Observations {
        terminated_seen_at: state.terminated_seen_at,
        ..observed.clone()
    };
    let candidates = observed.candidates(now, policy.draining());
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

    if !state.phase.is_ending() {
        state.deadline = first.map(Deadline::from);
        state.drain_at = first.map(|c| c.at.saturating_sub(lead));
        if let Some(due) = first.filter(|c| now >= c.at.saturating_sub(lead)) {
            state.phase = Phase::Draining;
            state.drains_started += 1;
            state.undrain_pending = false;
            state.drain = Some(Drain::new(due, now, observed.launched_at));
            events.push(Event::DrainStarted);
        }
    }

    // Irreversible steps wait after a wall-clock step, at least as long as
    // a stop's own wait (whose wall-clock timing the step skewed).
    let hold = CLOCK_STEP_HOLD.max(policy.stop_wait());
    let held_until = observed
        .clock_stepped_at
        .map(|at| at.saturating_add(duration(hold)))
        .filter(|until| now < *until);

    if let Some(drain) = state.drain.as_mut() {
        let phase = &mut state.phase;
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
        let ends = Ends {
            now,
            end,
            lease_end,
            hard_end: hard_end(&candidates),
            held: held_until.is_some(),
        };
        let mut step = Step {
            drain,
            phase,
            actions: &mut actions,
            events: &mut events,
            policy,
            observed,
        };
        step.advance(&ends);
        if let Some(until) = held_until.filter(|_| step.would_act_irreversibly(&ends)) {
            events.push(Event::HeldForClockStep(until));
        }
        let completed = matches!(state.phase, Phase::Drained | Phase::Stopped)
            && !matches!(previous.phase, Phase::Drained | Phase::Stopped);
        if completed {
            state.drains_completed += 1;
            events.push(Event::DrainCompleted);
        }
    }
    let held = held_until.is_some();
    lifecycle_steps(now, &mut state, observed, &candidates, held, &mut actions);
    if state.undrain_pending && policy.joined {
        actions.push(Action::Undrain);
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
    let checkpoint = checkpoint::plan(
        now,
        state.stop_at.or(state.deadline.as_ref().map(|d| d.at)),
        policy.checkpoint_lead,
        state.checkpoint.as_ref(),
        policy.joined && !matches!(state.phase, Phase::PoweringOff | Phase::PoweredOff),
    );
    state.checkpoint_at = checkpoint.at;
    state.checkpoint = checkpoint.record;
    if let Some(end) = checkpoint.due {
        actions.push(Action::SignalCheckpoint(end));
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

/// The lifecycle hook while Auto Scaling says `Terminated` and a drain is in
/// force, whichever signal started the drain (a spot notice or a lease end
/// may come first): started once the hook is known, forgotten with the
/// drain; its heartbeat or its completion goes first among the actions
/// (before a power-off). Completing ends the instance, so a completion for
/// time (not because nothing runs) waits while the clock is held, as a
/// power-off does.
fn lifecycle_steps(
    now: OffsetDateTime,
    state: &mut AgentState,
    observed: &Observations,
    candidates: &[Candidate],
    held: bool,
    actions: &mut Vec<Action>,
) {
    // Another lifecycle state than `Terminated`, or no drain: no wait to end.
    let Some(started_at) = state.terminated_seen_at.filter(|_| state.drain.is_some()) else {
        state.lifecycle = None;
        return;
    };
    if state.lifecycle.is_none() {
        state.lifecycle = observed
            .lifecycle_hook
            .clone()
            .map(|hook| LifecycleAction::new(hook, started_at));
    }
    let Some(action) = &state.lifecycle else {
        return;
    };
    let nothing_runs = matches!(
        state.phase,
        Phase::Drained | Phase::Stopped | Phase::PoweringOff | Phase::PoweredOff
    );
    // Auto Scaling's own end is the moment it was seen: the drain's end,
    // for the hook, is another signal's.
    let end = candidates
        .iter()
        .filter(|c| c.key.kind != SourceKind::AutoScaling && c.fate == Fate::Ends)
        .map(|c| c.at)
        .min();
    match lifecycle_hook::step(now, action, nothing_runs, end) {
        Some(HookStep::Complete) if held && !nothing_runs && action.heartbeat_due(now) => {
            actions.insert(0, Action::RecordLifecycleHeartbeat);
        }
        Some(HookStep::Complete) if held && !nothing_runs => {}
        Some(HookStep::Complete) => actions.insert(0, Action::CompleteLifecycleAction),
        Some(HookStep::Heartbeat) => actions.insert(0, Action::RecordLifecycleHeartbeat),
        None => {}
    }
}

/// The times one decision about a drain goes by.
#[derive(Clone, Copy)]
struct Ends {
    now: OffsetDateTime,
    /// The earliest end in force.
    end: OffsetDateTime,
    /// The end of a lease or Capacity Block that blockwatch enforces.
    lease_end: Option<OffsetDateTime>,
    hard_end: Option<OffsetDateTime>,
    /// Stops and power-offs are held (a wall-clock step).
    held: bool,
}

/// One decision about a drain in progress.
struct Step<'a> {
    drain: &'a mut Drain,
    phase: &'a mut Phase,
    actions: &'a mut Vec<Action>,
    events: &'a mut Vec<Event>,
    policy: &'a Policy,
    observed: &'a Observations,
}

impl Step<'_> {
    /// Moves the drain on by at most one step that needs the last one done.
    fn advance(&mut self, ends: &Ends) {
        let now = ends.now;
        match *self.phase {
            Phase::Draining if !self.policy.joined => {
                // Nothing to drain or stop: the lease ends at its end.
                if ends.lease_end.is_some_and(|at| now >= at) {
                    *self.phase = Phase::Stopped;
                    self.drain.stopped_at = Some(now);
                }
            }
            Phase::Draining if self.drain.draining_confirmed_at.is_none() => {
                self.actions.push(Action::Drain);
            }
            Phase::Draining if self.observed.running_tasks == Some(0) => {
                *self.phase = Phase::Drained;
                self.drain.drained_at = Some(now);
            }
            Phase::Draining => {
                // Out of time, a stop would only delay the power-off.
                let stop = self
                    .stop_due(ends)
                    .filter(|_| !ends.held && !self.out_of_time(ends));
                if let Some(cause) = stop {
                    self.actions.push(Action::StopTasks(cause));
                    // One irreversible step a decision: the stop first.
                    return;
                }
            }
            Phase::Stopping => {
                let gone = self.observed.running_tasks == Some(0);
                let waited = self
                    .drain
                    .stop_requested_at()
                    .is_some_and(|at| now >= at.saturating_add(duration(self.policy.stop_wait())));
                let no_time = ends.hard_end.is_some_and(|at| now >= at);
                if gone || waited || no_time {
                    *self.phase = Phase::Stopped;
                    self.drain.stopped_at = Some(now);
                    self.events.push(Event::StopWaitOver { timed_out: !gone });
                }
            }
            Phase::Drained | Phase::Stopped | Phase::PoweringOff | Phase::PoweredOff => {}
            Phase::Joining | Phase::Watching => {}
        }
        self.power_off_if_due(ends);
    }

    /// The stop that is due now, if any: at the lease end (less the stop
    /// lead), or `stop_grace` before the end; each once.
    fn stop_due(&self, ends: &Ends) -> Option<StopCause> {
        if !self.policy.stop_tasks {
            return None;
        }
        let now = ends.now;
        let lease_stop_due = ends.lease_end.is_some_and(|at| {
            now >= at.saturating_sub(duration(self.policy.stop_lead().unwrap_or_default()))
        });
        if lease_stop_due {
            return self
                .drain
                .end_stop_at
                .is_none()
                .then_some(StopCause::LeaseEnded);
        }
        let grace = self.policy.effective_stop_grace()?;
        let grace_due = now >= ends.end.saturating_sub(duration(grace));
        (grace_due && self.drain.tasks_stopped_at.is_none()).then_some(StopCause::Grace)
    }

    /// Whether the power-off may run now: wanted for two reasons (nothing
    /// runs, or its time is up; and an end of the instance's own), its
    /// retry due, the lease confirmed by a last look, and the clock steady.
    fn power_off_if_due(&mut self, ends: &Ends) {
        let drain = &*self.drain;
        if drain.poweroff_at.is_some() || !self.power_off_wanted(ends) || ends.held {
            return;
        }
        // An attempt "in the future" was timed by a clock that has since
        // stepped back: due now, not after the step.
        let retry_due = drain.poweroff_attempted_at.is_none_or(|at| {
            at > ends.now
                || ends.now
                    >= at.saturating_add(duration(poweroff_retry_after(drain.poweroff_attempts)))
        });
        if !retry_due {
            return;
        }
        let lease_needs_a_look = drain.poweroff_attempts == 0
            && ends.lease_end.is_some()
            && self.observed.lease_end.is_some()
            && self.observed.lease_confirmed_at != Some(ends.now);
        self.actions.push(if lease_needs_a_look {
            Action::ConfirmLease
        } else {
            Action::PowerOff
        });
    }

    fn power_off_wanted(&self, ends: &Ends) -> bool {
        let drain = &*self.drain;
        let nothing_runs = matches!(
            *self.phase,
            Phase::Drained | Phase::Stopped | Phase::PoweringOff
        );
        // on_drained = "poweroff": only for a signal that ends the instance.
        let drained_for_an_end =
            nothing_runs && self.policy.power_off_when_drained && drain.ends_instance;
        // A lease: drained before its end (idle minutes are paid for), or
        // stopped at it.
        let lease_over = ends
            .lease_end
            .is_some_and(|at| nothing_runs && (drain.reason.kind.is_lease() || ends.now >= at));
        drained_for_an_end || lease_over || self.out_of_time(ends)
    }

    /// Past the lease end and every wait: what still runs cannot be stopped
    /// or seen (ECS unreachable). Counted from the drain's start for an end
    /// first seen already past, so the sequence runs whole. With
    /// `stop_tasks = false` there is no stop to wait for: the lease end.
    fn out_of_time(&self, ends: &Ends) -> bool {
        let drain = &*self.drain;
        if !self.policy.stop_tasks {
            // Nothing to stop or wait for, but never in the decision that
            // starts the drain: DRAINING comes first.
            return ends
                .lease_end
                .is_some_and(|at| ends.now >= at && ends.now > drain.started_at);
        }
        ends.lease_end.is_some_and(|at| {
            let wait = duration(LEASE_END_STOP_WAIT.max(self.policy.stop_wait()));
            let from_end = at.max(drain.started_at).saturating_add(wait);
            let from_stop = drain
                .stop_requested_at()
                .map(|stop| stop.saturating_add(duration(self.policy.stop_wait())));
            ends.now >= from_end.max(from_stop.unwrap_or(from_end))
        })
    }

    /// Whether a stop or a power-off would be asked now, were the clock steady.
    fn would_act_irreversibly(&self, ends: &Ends) -> bool {
        let steady = Ends {
            held: false,
            ..*ends
        };
        let stop = *self.phase == Phase::Draining
            && self.drain.draining_confirmed_at.is_some()
            && self.observed.running_tasks != Some(0)
            && self.stop_due(&steady).is_some();
        stop || (self.drain.poweroff_at.is_none() && self.power_off_wanted(&steady))
    }
}

/// Writes what the IO side did into the state: the one place outcomes are
/// recorded, for real runs and dry runs alike.
pub fn record(state: &mut AgentState, outcome: Outcome, now: OffsetDateTime) {
    match outcome {
        Outcome::Active => {
            state.undrain_pending = false;
            return;
        }
        Outcome::CheckpointStarted(end) => {
            state.checkpoint = Some(Checkpoint::started(end, now));
            return;
        }
        Outcome::CheckpointSignaled(containers) => {
            state.checkpoint_signals = state
                .checkpoint_signals
                .saturating_add(u64::from(containers));
            if let Some(pass) = state.checkpoint.as_mut() {
                pass.signaled_at = Some(now);
                pass.containers = containers;
            }
            return;
        }
        Outcome::CheckpointUnreached => {
            if let Some(pass) = state.checkpoint.as_mut() {
                pass.unreached_at = Some(now);
            }
            return;
        }
        Outcome::LifecycleHeartbeat | Outcome::LifecycleCompleted | Outcome::LifecycleGone => {
            if let Some(action) = state.lifecycle.as_mut() {
                match outcome {
                    Outcome::LifecycleHeartbeat => {
                        action.heartbeats = action.heartbeats.saturating_add(1);
                        action.last_heartbeat_at = Some(now);
                    }
                    Outcome::LifecycleCompleted => {
                        action.completed_at.get_or_insert(now);
                    }
                    _ => {
                        action.gone_at.get_or_insert(now);
                    }
                }
            }
            return;
        }
        _ => {}
    }
    let Some(drain) = state.drain.as_mut() else {
        return;
    };
    match outcome {
        Outcome::Draining => {
            drain.draining_confirmed_at.get_or_insert(now);
        }
        Outcome::Active
        | Outcome::CheckpointStarted(_)
        | Outcome::CheckpointSignaled(_)
        | Outcome::CheckpointUnreached
        | Outcome::LifecycleHeartbeat
        | Outcome::LifecycleCompleted
        | Outcome::LifecycleGone => {}
        Outcome::StopsRequested(cause) => {
            match cause {
                StopCause::Grace => drain.tasks_stopped_at = Some(now),
                StopCause::LeaseEnded => drain.end_stop_at = Some(now),
            }
            if state.phase == Phase::Draining {
                state.phase = Phase::Stopping;
            }
        }
        Outcome::PowerOffStarted => {
            drain.poweroff_attempts = drain.poweroff_attempts.saturating_add(1);
            drain.poweroff_attempted_at = Some(now);
            state.phase = Phase::PoweringOff;
        }
        Outcome::PoweredOff => {
            drain.poweroff_attempts = drain.poweroff_attempts.max(1);
            drain.poweroff_attempted_at.get_or_insert(now);
            drain.poweroff_at = Some(now);
            state.phase = Phase::PoweredOff;
        }
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
            drain_on_maintenance: true,
            joined: true,
            stop_grace: None,
            power_off_when_drained: false,
            enforce_lease_end: false,
            job_stop_timeout: None,
            stop_tasks: true,
            checkpoint_lead: None,
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

    /// Decides at `now` as the agent does: a last look at the lease (it
    /// has not moved) is a second decision with the same `now`.
    fn decide_with_look(
        now: OffsetDateTime,
        observed: &Observations,
        state: &AgentState,
        policy: &Policy,
    ) -> Decision {
        let decision = decide(now, observed, state, policy);
        if !decision.actions.contains(&Action::ConfirmLease) {
            return decision;
        }
        let looked = Observations {
            lease_confirmed_at: Some(now),
            ..observed.clone()
        };
        decide(now, &looked, state, policy)
    }

    /// Records what an executor whose every action succeeds at once would
    /// report for `decision`'s actions.
    fn carry_out(state: &mut AgentState, decision: &Decision, now: OffsetDateTime) {
        for action in &decision.actions {
            match action {
                Action::Drain => record(state, Outcome::Draining, now),
                Action::Undrain => record(state, Outcome::Active, now),
                Action::StopTasks(cause) => record(state, Outcome::StopsRequested(*cause), now),
                Action::PowerOff => {
                    record(state, Outcome::PowerOffStarted, now);
                    record(state, Outcome::PoweredOff, now);
                }
                Action::ConfirmLease => {}
                Action::SignalCheckpoint(end) => {
                    record(state, Outcome::CheckpointStarted(*end), now);
                    record(state, Outcome::CheckpointSignaled(1), now);
                }
                Action::RecordLifecycleHeartbeat => record(state, Outcome::LifecycleHeartbeat, now),
                Action::CompleteLifecycleAction => record(state, Outcome::LifecycleCompleted, now),
            }
        }
    }

    /// Runs `steps` of (now, observations) from a fresh state, with an
    /// executor whose actions all succeed at once.
    fn run(steps: &[(OffsetDateTime, Observations)], policy: &Policy) -> Vec<Decision> {
        let mut state = AgentState::default();
        steps
            .iter()
            .map(|(now, observed)| {
                let decision = decide_with_look(*now, observed, &state, policy);
                state = decision.state.clone();
                carry_out(&mut state, &decision, *now);
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
        // Forward past drain_at: drain at once (DRAINING can be undone).
        // Back again, the drain is not due any more: undone, ACTIVE again,
        // and drained again at the real drain time.
        let d = run(
            &[
                (T0, lease(end)),
                (T0 + minutes(55), lease(end)),
                (T0, lease(end)),
                (T0 + minutes(50), lease(end)),
            ],
            &policy(),
        );
        assert_eq!(d[1].state.phase, Phase::Draining);
        assert_eq!(d[2].state.phase, Phase::Watching);
        assert_eq!(d[2].actions, vec![Action::Undrain]);
        assert_eq!(d[3].state.phase, Phase::Draining);
        assert_eq!(d[3].state.drains_started, 2);
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
        let first = a.candidates(T0, Draining::default());
        let later = a.candidates(T0 + minutes(1), Draining::default());
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

    fn run_enforced(steps: &[(OffsetDateTime, Observations)], policy: &Policy) -> Vec<Decision> {
        run(steps, policy)
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
    fn with_stop_tasks_off_nothing_is_stopped_and_the_lease_powers_off_at_its_end() {
        let end = T0 + minutes(10);
        let running = || with_tasks(lease(end), 1);
        let steps = [
            (T0, lease(end)),
            (T0 + minutes(1), running()),
            (end - time::Duration::SECOND, running()),
            (end, running()),
            (end + time::Duration::seconds(5), running()),
            (end + minutes(5), running()),
        ];
        let grace = Policy {
            stop_grace: Some(Duration::from_secs(120)),
            job_stop_timeout: Some(Duration::from_secs(60)),
            ..enforcing()
        };
        // The same steps with stops allowed do stop: the steps are a test.
        let stopping = run_enforced(&steps, &grace);
        assert!(stopping
            .iter()
            .any(|d| d.actions.iter().any(|a| matches!(a, Action::StopTasks(_)))));

        let d = run_enforced(
            &steps,
            &Policy {
                stop_tasks: false,
                ..grace
            },
        );
        assert!(
            d.iter()
                .all(|d| !d.actions.iter().any(|a| matches!(a, Action::StopTasks(_)))),
            "never a stop: {d:#?}"
        );
        assert_eq!(d[0].state.stop_at, None, "no stop is planned");
        assert!(!d[2].actions.contains(&Action::PowerOff), "not before T");
        assert_eq!(d[3].actions, vec![Action::PowerOff], "at T, tasks running");
        assert_eq!(count(&d, Action::PowerOff), 1);
    }

    #[test]
    fn with_stop_tasks_off_an_end_first_seen_past_drains_first_then_powers_off() {
        let end = T0 - minutes(10);
        let policy = Policy {
            stop_tasks: false,
            ..enforcing()
        };
        let d = run_enforced(
            &[
                (T0, with_tasks(lease(end), 1)),
                (T0 + time::Duration::SECOND, with_tasks(lease(end), 1)),
            ],
            &policy,
        );
        assert_eq!(d[0].actions, vec![Action::Drain], "DRAINING alone first");
        assert_eq!(d[1].actions, vec![Action::PowerOff], "then the power-off");
        assert!(!d
            .iter()
            .flat_map(|x| &x.actions)
            .any(|a| matches!(a, Action::StopTasks(_))));
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
    fn tasks_stopped_at_the_lease_end_get_their_stop_timeout_and_margin_then_the_power_off() {
        let end = T0 + minutes(10);
        let wait = time::Duration::try_from(ECS_DEFAULT_STOP_TIMEOUT + JOB_STOP_MARGIN).unwrap();
        let d = run_enforced(
            &[
                (T0, lease(end)),
                (end, with_tasks(lease(end), 3)),
                // ListTasks would say 0 at once; the host still runs them.
                (end + time::Duration::SECOND, with_tasks(lease(end), 3)),
                (
                    end + wait - time::Duration::SECOND,
                    with_tasks(lease(end), 3),
                ),
                (end + wait, with_tasks(lease(end), 3)),
                (
                    end + wait + time::Duration::SECOND,
                    with_tasks(lease(end), 3),
                ),
            ],
            &enforcing(),
        );
        assert_eq!(d[1].actions, vec![Action::StopTasks(StopCause::LeaseEnded)]);
        assert_eq!(d[2].state.phase, Phase::Stopping);
        assert!(d[2].actions.is_empty() && d[3].actions.is_empty(), "{d:?}");
        assert_eq!(
            d[4].state.phase,
            Phase::Stopped,
            "the stop timeout and margin passed"
        );
        assert_eq!(d[4].actions, vec![Action::PowerOff]);
        assert_eq!(d[5].state.phase, Phase::PoweredOff);
    }

    #[test]
    fn when_no_stop_can_be_made_the_lease_powers_off_after_the_stop_wait() {
        // ECS never confirms DRAINING (unreachable): nothing can be stopped.
        let end = T0 + minutes(10);
        let wait = time::Duration::try_from(LEASE_END_STOP_WAIT).unwrap();
        let mut state = AgentState::default();
        let mut powered = None;
        for second in (0..=900).step_by(5) {
            let now = T0 + time::Duration::seconds(second);
            let d = decide_with_look(now, &with_tasks(lease(end), 2), &state, &enforcing());
            assert!(!d.actions.iter().any(|a| matches!(a, Action::StopTasks(_))));
            if d.actions.contains(&Action::PowerOff) && powered.is_none() {
                powered = Some(now);
            }
            state = d.state;
        }
        assert_eq!(powered, Some(end + wait));
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
        record(&mut state, Outcome::Draining, T0);
        let mut attempts_at = Vec::new();
        for second in 0..60 {
            let now = T0 + minutes(1) + time::Duration::seconds(second);
            let d = decide_with_look(now, &drained, &state, &enforcing());
            state = d.state;
            if d.actions.contains(&Action::PowerOff) {
                attempts_at.push(second);
                // The executor records the attempt; the command fails.
                record(&mut state, Outcome::PowerOffStarted, now);
            }
        }
        assert_eq!(attempts_at, vec![0, 5, 15, 35], "5 s, then doubling");
        assert_eq!(state.phase, Phase::PoweringOff);
        let drain = state.drain.clone().unwrap();
        assert_eq!(drain.poweroff_at, None, "not done until it succeeds");
        // A success ends the retries.
        record(&mut state, Outcome::PoweredOff, T0 + minutes(2));
        let d = decide_with_look(T0 + minutes(30), &drained, &state, &enforcing());
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
        assert_eq!(d[2].state.phase, Phase::PoweredOff);
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

    fn powering_off_when_drained() -> Policy {
        Policy {
            power_off_when_drained: true,
            ..policy()
        }
    }

    fn scheduled(code: &str, at: OffsetDateTime) -> Observations {
        Observations {
            scheduled_events: vec![ScheduledEvent {
                id: "instance-event-1".into(),
                code: code.into(),
                not_before: at,
                state: "active".into(),
            }],
            scheduled_events_known: true,
            ..Observations::default()
        }
    }

    fn spot_action(action: &str, at: OffsetDateTime) -> Observations {
        Observations {
            spot_action: Some(SpotAction {
                action: action.into(),
                time: at,
            }),
            ..Observations::default()
        }
    }

    #[test]
    fn each_signal_drains_and_only_an_end_powers_off_when_drained() {
        let at = T0 + minutes(2);
        // (signal, drains, powers off with on_drained = "poweroff")
        let table: Vec<(&str, Observations, bool)> = vec![
            ("instance-stop", scheduled("instance-stop", at), true),
            (
                "instance-retirement",
                scheduled("instance-retirement", at),
                true,
            ),
            ("system-reboot", scheduled("system-reboot", at), false),
            ("instance-reboot", scheduled("instance-reboot", at), false),
            (
                "system-maintenance",
                scheduled("system-maintenance", at),
                false,
            ),
            (
                "an unknown event code",
                scheduled("instance-vanish", at),
                false,
            ),
            ("spot terminate", spot_action("terminate", at), true),
            ("spot stop", spot_action("stop", at), false),
            ("spot hibernate", spot_action("hibernate", at), false),
            (
                "an unknown spot action",
                spot_action("unrecognised", at),
                false,
            ),
            (
                "autoscaling Terminated",
                Observations {
                    target_lifecycle_state: Some("Terminated".into()),
                    ..Observations::default()
                },
                true,
            ),
            ("a lease", lease(at), true),
        ];
        for (name, observed, powers_off) in table {
            let d = run(
                &[
                    (T0, observed.clone()),
                    (T0 + minutes(1), with_tasks(observed.clone(), 0)),
                ],
                &powering_off_when_drained(),
            );
            assert_eq!(d[0].actions, vec![Action::Drain], "{name} drains");
            assert_eq!(d[1].state.phase, Phase::Drained, "{name}");
            assert_eq!(
                d[1].actions.contains(&Action::PowerOff),
                powers_off,
                "{name}: {:?}",
                d[1].actions
            );
        }
    }

    #[test]
    fn reboots_and_maintenance_drain_only_while_drain_on_maintenance_is_on() {
        let at = T0 + minutes(2);
        let off = Policy {
            drain_on_maintenance: false,
            ..powering_off_when_drained()
        };
        for code in MAINTENANCE_CODES {
            let d = run(&[(T0, scheduled(code, at))], &off);
            assert_eq!(d[0].state.phase, Phase::Watching, "{code}");
            assert!(d[0].actions.is_empty(), "{code}");
        }
        let d = run(&[(T0, scheduled("instance-retirement", at))], &off);
        assert_eq!(d[0].actions, vec![Action::Drain], "an end still drains");
    }

    const MAINTENANCE_CODES: [&str; 3] = ["system-reboot", "instance-reboot", "system-maintenance"];

    #[test]
    fn a_reboot_drain_is_undone_when_its_event_completes_and_never_powers_off() {
        let at = T0 + minutes(2);
        let completed = Observations {
            scheduled_events: vec![ScheduledEvent {
                state: "completed".into(),
                ..scheduled("system-reboot", at).scheduled_events[0].clone()
            }],
            ..scheduled("system-reboot", at)
        };
        let d = run(
            &[
                (T0, scheduled("system-reboot", at)),
                (
                    T0 + minutes(1),
                    with_tasks(scheduled("system-reboot", at), 0),
                ),
                (T0 + minutes(20), completed),
            ],
            &powering_off_when_drained(),
        );
        assert_eq!(d[1].state.phase, Phase::Drained);
        assert_eq!(d[2].state.phase, Phase::Watching);
        assert_eq!(d[2].actions, vec![Action::Undrain]);
        assert_eq!(count(&d, Action::PowerOff), 0);
    }

    #[test]
    fn an_end_first_seen_past_runs_the_whole_sequence_one_step_at_a_time() {
        let end = T0 - minutes(10);
        let second = time::Duration::SECOND;
        let wait = time::Duration::try_from(ECS_DEFAULT_STOP_TIMEOUT + JOB_STOP_MARGIN).unwrap();
        let d = run_enforced(
            &[
                (T0, with_tasks(lease(end), 1)),
                (T0 + second, with_tasks(lease(end), 1)),
                (T0 + second * 2, with_tasks(lease(end), 1)),
                (T0 + second + wait - second, with_tasks(lease(end), 1)),
                (T0 + second + wait, with_tasks(lease(end), 1)),
            ],
            &enforcing(),
        );
        assert_eq!(d[0].actions, vec![Action::Drain], "DRAINING first, alone");
        assert_eq!(d[0].state.phase, Phase::Draining);
        assert_eq!(
            d[1].actions,
            vec![Action::StopTasks(StopCause::LeaseEnded)],
            "then the stop"
        );
        assert!(d[2].actions.is_empty() && d[3].actions.is_empty(), "{d:?}");
        assert_eq!(d[4].actions, vec![Action::PowerOff], "after the stop wait");
        for decision in &d {
            assert!(decision.actions.len() <= 1, "one step a tick: {decision:?}");
        }
    }

    #[test]
    fn a_capacity_blocks_hard_end_cuts_the_stop_wait_short() {
        // First seen with EC2 already terminating (EndDate - 30 min passed).
        let end_date = T0 + minutes(20);
        let observed = |n| with_tasks(capacity_block(end_date), n);
        let d = run_enforced(
            &[
                (T0, observed(1)),
                (T0 + time::Duration::SECOND, observed(1)),
                (T0 + time::Duration::seconds(2), observed(1)),
            ],
            &enforcing(),
        );
        assert_eq!(d[0].actions, vec![Action::Drain]);
        assert_eq!(d[1].actions, vec![Action::StopTasks(StopCause::LeaseEnded)]);
        assert_eq!(d[2].state.phase, Phase::Stopped);
        assert_eq!(d[2].actions, vec![Action::PowerOff]);
    }

    #[test]
    fn a_wall_clock_step_holds_stops_and_power_offs_for_a_while() {
        let end = T0 + minutes(10);
        // The wall clock jumped a day ahead: the lease looks long over.
        let now = T0 + time::Duration::days(1);
        let stepped = |n| Observations {
            clock_stepped_at: Some(now),
            ..with_tasks(lease(end), n)
        };
        let hold = time::Duration::try_from(CLOCK_STEP_HOLD).unwrap();
        let mut state = AgentState::default();
        let mut irreversible = Vec::new();
        for second in (0..=240).step_by(2) {
            let at = now + time::Duration::seconds(second);
            let d = decide_with_look(at, &stepped(1), &state, &enforcing());
            if d.actions
                .iter()
                .any(|a| matches!(a, Action::StopTasks(_) | Action::PowerOff))
            {
                irreversible.push(at);
            }
            if second == 2 {
                assert!(
                    d.events.contains(&Event::HeldForClockStep(now + hold)),
                    "{:?}",
                    d.events
                );
            }
            state = d.state.clone();
            carry_out(&mut state, &d, at);
        }
        assert_eq!(
            irreversible.first(),
            Some(&(now + hold)),
            "held, then the stop"
        );
        let drain = state.drain.clone().unwrap();
        assert_eq!(
            drain.draining_confirmed_at,
            Some(now),
            "DRAINING is not held"
        );
        assert_eq!(state.phase, Phase::PoweredOff, "then the sequence went on");
    }

    #[test]
    fn the_last_look_cancels_a_lease_power_off_when_the_end_moved_later() {
        let end = T0 + minutes(10);
        let mut state = run(&[(T0, lease(end))], &enforcing())[0].state.clone();
        record(&mut state, Outcome::Draining, T0);
        let now = T0 + time::Duration::seconds(2);
        let d = decide(now, &with_tasks(lease(end), 0), &state, &enforcing());
        assert_eq!(
            d.actions,
            vec![Action::ConfirmLease],
            "a look before the power-off"
        );
        // The tag was moved an hour later a second ago.
        let moved = Observations {
            lease_confirmed_at: Some(now),
            ..with_tasks(lease(end + minutes(60)), 0)
        };
        let d = decide(now, &moved, &state, &enforcing());
        assert!(!d.actions.contains(&Action::PowerOff), "{:?}", d.actions);
        assert_eq!(d.actions, vec![Action::Undrain]);
        assert_eq!(d.state.phase, Phase::Watching);
        assert!(d
            .events
            .contains(&Event::DrainCanceled(CancelCause::DeadlineMoved)));
        // Unmoved, the look lets the power-off go.
        let looked = Observations {
            lease_confirmed_at: Some(now),
            ..with_tasks(lease(end), 0)
        };
        let d = decide(now, &looked, &state, &enforcing());
        assert_eq!(d.actions, vec![Action::PowerOff]);
    }

    #[test]
    fn unjoined_the_lease_still_ends_with_a_power_off_at_its_end_and_nothing_asks_ecs() {
        let end = T0 + minutes(10);
        let unjoined = Policy {
            joined: false,
            ..enforcing()
        };
        let mut state = AgentState::default();
        let mut powered = None;
        for second in (0..=700).step_by(5) {
            let now = T0 + time::Duration::seconds(second);
            let d = decide_with_look(now, &lease(end), &state, &unjoined);
            assert!(
                d.actions.iter().all(|a| *a == Action::PowerOff),
                "no ECS action: {:?}",
                d.actions
            );
            if d.actions.contains(&Action::PowerOff) && powered.is_none() {
                powered = Some(now);
            }
            state = d.state.clone();
            carry_out(&mut state, &d, now);
        }
        assert_eq!(
            powered,
            Some(end),
            "at the lease end, not at the drain time"
        );
    }

    #[test]
    fn a_new_life_is_told_by_pending_time_not_by_the_guest_clock() {
        let launched = T0 - minutes(30);
        // The guest clock was an hour behind when the drain started.
        let early = T0 - minutes(60);
        let observed = Observations {
            launched_at: Some(launched),
            ..spot_action("stop", early + minutes(2))
        };
        let d = decide(early, &observed, &AgentState::default(), &policy());
        assert_eq!(d.state.phase, Phase::Draining);
        let d2 = decide(T0, &observed, &d.state, &policy());
        assert_eq!(
            d2.state.phase,
            Phase::Draining,
            "same pendingTime: same life"
        );
        let restarted = Observations {
            launched_at: Some(T0 + minutes(5)),
            spot_action: None,
            ..observed
        };
        let d3 = decide(T0 + minutes(6), &restarted, &d2.state, &policy());
        assert!(d3
            .events
            .contains(&Event::DrainCanceled(CancelCause::NewLife)));
    }

    #[test]
    fn a_clock_that_steps_ahead_and_back_undoes_its_drain_and_never_powers_off() {
        // The lease ends in two hours; the clock is a day ahead for a while.
        let end = T0 + minutes(120);
        let idle = with_tasks(lease(end), 0);
        let ahead = T0 + time::Duration::days(1);
        let mut state = AgentState::default();
        let mut irreversible = 0;
        let mut steps: Vec<(OffsetDateTime, Observations)> = Vec::new();
        for second in 0..60 {
            let now = ahead + time::Duration::seconds(second);
            let stepped = Observations {
                clock_stepped_at: Some(ahead),
                ..idle.clone()
            };
            steps.push((now, stepped));
        }
        // NTP steps it back.
        let back = T0 + minutes(1);
        for second in 0..300 {
            let now = back + time::Duration::seconds(second);
            let stepped = Observations {
                clock_stepped_at: Some(back),
                ..idle.clone()
            };
            steps.push((now, stepped));
        }
        let mut undone = false;
        for (now, observed) in &steps {
            let d = decide_with_look(*now, observed, &state, &enforcing());
            irreversible += d
                .actions
                .iter()
                .filter(|a| matches!(a, Action::StopTasks(_) | Action::PowerOff))
                .count();
            undone |= d
                .events
                .contains(&Event::DrainCanceled(CancelCause::DeadlineMoved));
            state = d.state.clone();
            carry_out(&mut state, &d, *now);
        }
        assert!(undone, "the drain the wrong clock started is undone");
        assert_eq!(irreversible, 0);
        assert_eq!(state.phase, Phase::Watching);
        assert!(!state.undrain_pending, "ACTIVE again");
    }

    #[test]
    fn a_stop_that_keeps_failing_past_the_end_never_shares_a_decision_with_the_power_off() {
        // First seen past its end; every StopTask is throttled (nothing is
        // recorded), so the core asks again each poll until time is up.
        let end = T0 - minutes(30);
        let mut state = AgentState::default();
        let mut powered = None;
        for second in 0..=200 {
            let now = T0 + time::Duration::seconds(second);
            let d = decide_with_look(now, &with_tasks(lease(end), 2), &state, &enforcing());
            let stops = d.actions.iter().any(|a| matches!(a, Action::StopTasks(_)));
            let power_off = d.actions.contains(&Action::PowerOff);
            assert!(
                !(stops && power_off),
                "one irreversible step: {:?}",
                d.actions
            );
            if power_off && powered.is_none() {
                powered = Some(now);
            }
            state = d.state.clone();
            if d.actions.contains(&Action::Drain) {
                record(&mut state, Outcome::Draining, now);
            }
            if power_off {
                record(&mut state, Outcome::PowerOffStarted, now);
                record(&mut state, Outcome::PoweredOff, now);
            }
        }
        let wait = time::Duration::try_from(LEASE_END_STOP_WAIT).unwrap();
        assert_eq!(powered, Some(T0 + wait), "the block still ends");
    }

    #[test]
    fn a_power_off_attempt_timed_by_a_clock_that_stepped_back_is_retried_at_once() {
        let end = T0 + minutes(10);
        let mut state = run_enforced(&[(T0, lease(end))], &enforcing())[0]
            .state
            .clone();
        record(&mut state, Outcome::Draining, T0);
        // The failed attempt was recorded a day ahead.
        record(
            &mut state,
            Outcome::PowerOffStarted,
            T0 + time::Duration::days(1),
        );
        let d = decide_with_look(
            T0 + minutes(1),
            &with_tasks(lease(end), 0),
            &state,
            &enforcing(),
        );
        assert_eq!(d.actions, vec![Action::PowerOff]);
    }

    fn checkpointing() -> Policy {
        Policy {
            enforce_lease_end: true,
            stop_grace: Some(Duration::from_secs(120)),
            checkpoint_lead: Some(Duration::from_secs(300)),
            ..policy()
        }
    }

    fn signals(decisions: &[Decision]) -> Vec<(usize, OffsetDateTime)> {
        decisions
            .iter()
            .enumerate()
            .flat_map(|(i, d)| {
                d.actions.iter().filter_map(move |a| match a {
                    Action::SignalCheckpoint(end) => Some((i, *end)),
                    _ => None,
                })
            })
            .collect()
    }

    #[test]
    fn the_checkpoint_signal_goes_once_at_the_lead_before_stop_at() {
        let end = T0 + minutes(60);
        let stop_at = end - minutes(2);
        let steps: Vec<_> = [0, 52, 53, 54, 55, 59, 61]
            .into_iter()
            .map(|m| (T0 + minutes(m), lease(end)))
            .collect();
        let d = run(&steps, &checkpointing());
        assert_eq!(d[0].state.stop_at, Some(stop_at));
        assert_eq!(d[0].state.checkpoint_at, Some(stop_at - minutes(5)));
        // Due at 53 min (stop_at 58 min less 5), then never again.
        assert_eq!(signals(&d), vec![(2, stop_at)]);
        let pass = d[6]
            .state
            .checkpoint
            .clone()
            .unwrap_or_else(|| panic!("kept"));
        assert_eq!(pass.end, stop_at);
        assert_eq!(pass.started_at, T0 + minutes(53));
    }

    #[test]
    fn without_a_stop_the_deadline_is_the_end_the_signal_leads() {
        let policy = Policy {
            stop_tasks: false,
            stop_grace: None,
            ..checkpointing()
        };
        let d = run(&[(T0, lease(T0 + minutes(60)))], &policy);
        assert_eq!(d[0].state.stop_at, None);
        assert_eq!(d[0].state.checkpoint_at, Some(T0 + minutes(55)));
    }

    #[test]
    fn a_spot_notice_during_a_lease_moves_the_end_earlier_and_signals_again() {
        let end = T0 + minutes(60);
        let with_notice = |notice: OffsetDateTime| Observations {
            spot_action: spot(notice),
            ..lease(end)
        };
        let d = run(
            &[
                (T0 + minutes(53), lease(end)),
                (T0 + minutes(54), with_notice(T0 + minutes(56))),
                (T0 + minutes(55), with_notice(T0 + minutes(56))),
            ],
            &checkpointing(),
        );
        // The notice's 2 minutes: less than the lead left, so at once.
        assert_eq!(
            signals(&d),
            vec![(0, end - minutes(2)), (1, T0 + minutes(54))]
        );
    }

    #[test]
    fn nothing_is_signaled_unjoined_or_when_off() {
        let end = T0 + minutes(60);
        let unjoined = Policy {
            joined: false,
            ..checkpointing()
        };
        let off = Policy {
            checkpoint_lead: None,
            ..checkpointing()
        };
        for policy in [unjoined, off] {
            let d = run(&[(T0 + minutes(57), lease(end))], &policy);
            assert_eq!(signals(&d), vec![]);
        }
    }

    #[test]
    fn a_restart_after_the_signal_does_not_signal_again() {
        let end = T0 + minutes(60);
        let d = run(&[(T0 + minutes(54), lease(end))], &checkpointing());
        assert_eq!(signals(&d).len(), 1);
        let mut state = d[0].state.clone();
        carry_out(&mut state, &d[0], T0 + minutes(54));
        // What a restart reads back from the state file.
        let saved = serde_json::to_string(&state).unwrap_or_default();
        let restored: AgentState = serde_json::from_str(&saved).unwrap_or_default();
        assert!(restored.checkpoint.is_some(), "{saved}");
        let again = decide(T0 + minutes(55), &lease(end), &restored, &checkpointing());
        assert!(!again
            .actions
            .iter()
            .any(|a| matches!(a, Action::SignalCheckpoint(_))));
    }

    mod lifecycle {
        use super::*;
        use crate::lifecycle_hook::LifecycleHook;

        fn secs(s: i64) -> time::Duration {
            time::Duration::seconds(s)
        }

        /// Heartbeat timeout 60 s (a heartbeat every 30 s), global timeout
        /// 600 s: completed by 570 s at the latest.
        fn hook() -> LifecycleHook {
            LifecycleHook {
                group: "batch-asg".into(),
                name: "drain".into(),
                heartbeat_timeout: Duration::from_secs(60),
                global_timeout: Some(Duration::from_secs(600)),
            }
        }

        fn terminated(tasks: usize) -> Observations {
            Observations {
                target_lifecycle_state: Some("Terminated".into()),
                lifecycle_hook: Some(hook()),
                running_tasks: Some(tasks),
                ..Observations::default()
            }
        }

        fn hook_actions(d: &Decision) -> Vec<Action> {
            d.actions
                .iter()
                .copied()
                .filter(|a| {
                    matches!(
                        a,
                        Action::RecordLifecycleHeartbeat | Action::CompleteLifecycleAction
                    )
                })
                .collect()
        }

        #[test]
        fn heartbeats_while_tasks_run_then_continue_once_drained() {
            let d = run(
                &[
                    (T0, terminated(2)),
                    (T0 + secs(10), terminated(2)),
                    (T0 + secs(30), terminated(1)),
                    (T0 + secs(45), terminated(0)),
                    (T0 + secs(60), terminated(0)),
                    (T0 + secs(120), terminated(0)),
                ],
                &policy(),
            );
            let steps: Vec<_> = d.iter().map(hook_actions).collect();
            assert_eq!(
                steps,
                vec![
                    vec![Action::RecordLifecycleHeartbeat],
                    vec![],
                    vec![Action::RecordLifecycleHeartbeat],
                    vec![Action::CompleteLifecycleAction],
                    vec![],
                    vec![],
                ]
            );
            // The heartbeat goes before DRAINING, in the first decision.
            assert_eq!(d[0].actions[0], Action::RecordLifecycleHeartbeat);
            assert!(d[0].actions.contains(&Action::Drain));
            let action = d[5].state.lifecycle.clone().unwrap();
            assert_eq!(action.started_at, T0);
        }

        #[test]
        fn the_record_says_heartbeats_and_completion() {
            let mut state = AgentState::default();
            for (now, tasks) in [(T0, 1), (T0 + secs(30), 1), (T0 + secs(40), 0)] {
                let d = decide(now, &terminated(tasks), &state, &policy());
                state = d.state.clone();
                carry_out(&mut state, &d, now);
            }
            let action = state.lifecycle.unwrap();
            assert_eq!(action.heartbeats, 2);
            assert_eq!(action.last_heartbeat_at, Some(T0 + secs(30)));
            assert_eq!(action.completed_at, Some(T0 + secs(40)));
        }

        #[test]
        fn a_restart_resumes_heartbeats_and_never_completes_twice() {
            let mut state = AgentState::default();
            let d = decide(T0, &terminated(1), &state, &policy());
            state = d.state.clone();
            carry_out(&mut state, &d, T0);
            // Restarted from the state file: the hook is discovered again
            // later, the heartbeat is timed from the recorded one.
            let restarted = Observations {
                lifecycle_hook: None,
                ..terminated(1)
            };
            let early = decide(T0 + secs(20), &restarted, &state, &policy());
            assert_eq!(hook_actions(&early), vec![]);
            let due = decide(T0 + secs(30), &restarted, &state, &policy());
            assert_eq!(hook_actions(&due), vec![Action::RecordLifecycleHeartbeat]);

            let done = decide(T0 + secs(40), &terminated(0), &state, &policy());
            assert_eq!(hook_actions(&done), vec![Action::CompleteLifecycleAction]);
            let mut completed = done.state.clone();
            carry_out(&mut completed, &done, T0 + secs(40));
            for now in [T0 + secs(41), T0 + secs(600), T0 + secs(3600)] {
                let again = decide(now, &restarted, &completed, &policy());
                assert_eq!(hook_actions(&again), vec![], "at {now}");
            }
        }

        #[test]
        fn gone_ends_the_hook_without_completing() {
            let mut state = decide(T0, &terminated(1), &AgentState::default(), &policy()).state;
            record(&mut state, Outcome::LifecycleGone, T0 + secs(1));
            let d = decide(T0 + secs(60), &terminated(0), &state, &policy());
            assert_eq!(hook_actions(&d), vec![]);
            assert_eq!(d.state.lifecycle.unwrap().completed_at, None);
        }

        #[test]
        fn bounded_by_the_global_timeout_when_tasks_never_end() {
            // stop_tasks off: nothing stops them, so only the bound ends the hook.
            let p = Policy {
                stop_tasks: false,
                ..policy()
            };
            let mut state = AgentState::default();
            let mut completed_at = None;
            let mut last_heartbeat = None;
            for s in (0..=700).step_by(5) {
                let now = T0 + secs(s);
                let d = decide(now, &terminated(3), &state, &p);
                let actions = hook_actions(&d);
                if actions.contains(&Action::RecordLifecycleHeartbeat) {
                    last_heartbeat = Some(now);
                }
                if actions.contains(&Action::CompleteLifecycleAction) {
                    assert_eq!(completed_at, None, "completed twice");
                    completed_at = Some(now);
                }
                state = d.state.clone();
                carry_out(&mut state, &d, now);
            }
            assert_eq!(completed_at, Some(T0 + secs(570)));
            assert_eq!(last_heartbeat, Some(T0 + secs(540)));
        }

        #[test]
        fn another_signals_end_completes_it_then() {
            let spot_too = Observations {
                spot_action: spot(T0 + secs(120)),
                ..terminated(2)
            };
            let d = run(
                &[
                    (T0, terminated(2)),
                    (T0 + secs(100), spot_too.clone()),
                    (T0 + secs(120), spot_too),
                ],
                &policy(),
            );
            assert_eq!(hook_actions(&d[2]), vec![Action::CompleteLifecycleAction]);
            assert!(!hook_actions(&d[1]).contains(&Action::CompleteLifecycleAction));
        }

        #[test]
        fn a_drain_another_signal_started_completes_the_hook_too() {
            let spot_notice = Observations {
                spot_action: spot(T0 + secs(120)),
                running_tasks: Some(2),
                ..Observations::default()
            };
            let then_terminated = |tasks| Observations {
                spot_action: spot(T0 + secs(120)),
                ..terminated(tasks)
            };
            let d = run(
                &[
                    (T0, spot_notice),
                    (T0 + secs(10), then_terminated(2)),
                    (T0 + secs(20), then_terminated(0)),
                    (T0 + secs(30), then_terminated(0)),
                ],
                &policy(),
            );
            assert_eq!(
                d[0].state.drain.as_ref().map(|d| d.reason.kind),
                Some(SourceKind::SpotInterruption)
            );
            let steps: Vec<_> = d.iter().map(hook_actions).collect();
            assert_eq!(
                steps,
                vec![
                    vec![],
                    vec![Action::RecordLifecycleHeartbeat],
                    vec![Action::CompleteLifecycleAction],
                    vec![],
                ]
            );
            assert_eq!(
                d[3].state.lifecycle.clone().unwrap().started_at,
                T0 + secs(10)
            );
        }

        #[test]
        fn completion_goes_before_the_power_off() {
            let p = Policy {
                power_off_when_drained: true,
                ..policy()
            };
            let d = run(&[(T0, terminated(1)), (T0 + secs(10), terminated(0))], &p);
            let actions = &d[1].actions;
            assert_eq!(actions.first(), Some(&Action::CompleteLifecycleAction));
            assert!(actions.contains(&Action::PowerOff), "{actions:?}");
        }

        #[test]
        fn no_hook_without_terminated_or_without_a_hook() {
            let spot_first = Observations {
                spot_action: spot(T0 + secs(120)),
                lifecycle_hook: Some(hook()),
                running_tasks: Some(1),
                ..Observations::default()
            };
            let no_hook = Observations {
                lifecycle_hook: None,
                ..terminated(0)
            };
            for observed in [spot_first, no_hook] {
                let d = run(
                    &[(T0, observed.clone()), (T0 + secs(30), observed)],
                    &policy(),
                );
                assert!(d.iter().all(|d| hook_actions(d).is_empty()));
                assert_eq!(d[1].state.lifecycle, None);
            }
        }

        #[test]
        fn a_clock_step_holds_the_completion_for_time_not_the_heartbeats() {
            let p = Policy {
                stop_tasks: false,
                ..policy()
            };
            let mut state = run(&[(T0, terminated(1))], &p)[0].state.clone();
            record(&mut state, Outcome::Draining, T0);
            record(&mut state, Outcome::LifecycleHeartbeat, T0 + secs(540));
            let stepped = Observations {
                clock_stepped_at: Some(T0 + secs(560)),
                ..terminated(1)
            };
            let held = decide(T0 + secs(575), &stepped, &state, &p);
            assert_eq!(hook_actions(&held), vec![Action::RecordLifecycleHeartbeat]);
            let mut beaten = state.clone();
            record(&mut beaten, Outcome::LifecycleHeartbeat, T0 + secs(575));
            let still_held = decide(T0 + secs(580), &stepped, &beaten, &p);
            assert_eq!(hook_actions(&still_held), vec![]);
            // Nothing runs: completing is not held.
            let drained = decide(
                T0 + secs(575),
                &Observations {
                    running_tasks: Some(0),
                    ..stepped
                },
                &state,
                &p,
            );
            assert_eq!(
                hook_actions(&drained),
                vec![Action::CompleteLifecycleAction]
            );
        }

        #[test]
        fn back_in_service_forgets_the_hook() {
            let d = run(&[(T0, terminated(1))], &policy());
            let in_service = Observations {
                target_lifecycle_state: Some("InService".into()),
                ..terminated(1)
            };
            let back = decide(T0 + secs(30), &in_service, &d[0].state, &policy());
            assert_eq!(back.state.lifecycle, None);
            assert_eq!(hook_actions(&back), vec![]);
        }
    }
}
