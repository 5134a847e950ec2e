//! Fakes for the run loop's unit tests: a container service with scripted
//! answers that keeps what ECS and the host would hold, and a clock moved by
//! hand (its wall clock can also step on its own).
//!
//! Like ECS, a stopped task is not a stopped container: `StopTask` marks it
//! stop-requested at once, and its containers stay on the host until the
//! test says they exited ([`FakeEcs::containers_exit`]: SIGTERM honoured, or
//! the stop timeout's SIGKILL).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::clock::Clock;
use crate::actions::autoscaling::{DiscoveryError, HookError, LifecycleHooks};
use crate::actions::checkpoint::{PassReport, TaskContainer, Unreached};
use crate::actions::ecs::{ContainerService, HostTask, StopReport};
use crate::sources::{AwsFailure, CallError};
use blockwatch_core::checkpoint::CheckpointSignal;
use blockwatch_core::lifecycle_hook::LifecycleHook;

/// A clock that stands still until the test moves it; its random numbers
/// are scripted (the top of the jitter window when none is).
#[derive(Debug, Clone)]
pub(super) struct FakeClock(Arc<Mutex<ClockState>>);

#[derive(Debug)]
struct ClockState {
    instant: Instant,
    utc: OffsetDateTime,
    randoms: VecDeque<u64>,
}

impl FakeClock {
    pub(super) fn at(utc: OffsetDateTime) -> Self {
        Self(Arc::new(Mutex::new(ClockState {
            instant: Instant::now(),
            utc,
            randoms: VecDeque::new(),
        })))
    }

    fn state(&self) -> MutexGuard<'_, ClockState> {
        self.0.lock().unwrap()
    }

    pub(super) fn advance(&self, by: Duration) {
        let mut state = self.state();
        state.instant += by;
        state.utc += by;
    }

    /// The wall clock steps by `by` (an NTP step, a wrong RTC); monotonic
    /// time does not move.
    pub(super) fn step_wall(&self, by: time::Duration) {
        let mut state = self.state();
        state.utc += by;
    }

    /// The next `random()` returns `number`.
    pub(super) fn will_draw(&self, number: u64) {
        self.state().randoms.push_back(number);
    }
}

impl Clock for FakeClock {
    fn instant(&self) -> Instant {
        self.state().instant
    }
    fn utc(&self) -> OffsetDateTime {
        self.state().utc
    }
    fn random(&self) -> u64 {
        self.state().randoms.pop_front().unwrap_or(u64::MAX)
    }
}

pub(super) const FIND: &str = "ecs:ListContainerInstances";
pub(super) const SET_DRAINING: &str = "ecs:UpdateContainerInstancesState";
pub(super) const LIST_TASKS: &str = "ecs:ListTasks";
pub(super) const STOP_TASKS: &str = "ecs:StopTask";
pub(super) const DESCRIBE_HOOKS: &str = "autoscaling:DescribeLifecycleHooks";
pub(super) const HEARTBEAT: &str = "autoscaling:RecordLifecycleActionHeartbeat";
pub(super) const COMPLETE: &str = "autoscaling:CompleteLifecycleAction";

/// A call the executor made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Call {
    Find,
    SetDraining { arn: String, draining: bool },
    ListTasks { arn: String },
    StopTasks { tasks: Vec<String>, reason: String },
    SignalCheckpoint,
    DescribeHooks,
    Heartbeat,
    Complete,
}

/// How a scripted call goes instead of the normal answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scripted {
    Fail(AwsFailure),
    /// ECS did it, but its answer never came back.
    AnswerLost,
}

/// ECS as the fake holds it: the registered container instance, its
/// status, its tasks; and the calls made.
#[derive(Debug, Default)]
pub(super) struct EcsState {
    pub calls: Vec<Call>,
    pub registered: Option<String>,
    pub status: &'static str,
    /// The tasks on the host: each with whether ECS wants it stopped.
    pub tasks: Vec<HostTask>,
    pub agent_answers: bool,
    /// Docker cannot be reached: a checkpoint pass signals nothing.
    pub docker_down: bool,
    /// A file read when a checkpoint pass starts (the state file), and
    /// what it held then.
    pub read_at_signal: Option<std::path::PathBuf>,
    pub seen_at_signal: Option<String>,
    /// The instance's group's termination hook, if it has one.
    pub hook: Option<LifecycleHook>,
    /// Whether a lifecycle action waits on that hook (the instance is in
    /// `Terminating:Wait`); `CONTINUE` ends it.
    pub hook_waiting: bool,
    /// `CONTINUE` results Auto Scaling accepted.
    pub continued: u32,
    script: BTreeMap<&'static str, VecDeque<Scripted>>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct FakeEcs(Arc<Mutex<EcsState>>);

impl FakeEcs {
    /// Registered as `arn`, ACTIVE, with `tasks` running.
    pub(super) fn registered(arn: &str, tasks: &[&str]) -> Self {
        let fake = Self::default();
        {
            let mut state = fake.state();
            state.registered = Some(arn.to_owned());
            state.status = "ACTIVE";
            state.tasks = tasks
                .iter()
                .map(|t| HostTask {
                    arn: (*t).to_owned(),
                    stop_requested: false,
                })
                .collect();
            state.agent_answers = true;
        }
        fake
    }

    pub(super) fn state(&self) -> MutexGuard<'_, EcsState> {
        self.0.lock().unwrap()
    }

    /// The next calls of `api` ([`SET_DRAINING`], …) go as `how`, in order.
    pub(super) fn script(&self, api: &'static str, how: &[Scripted]) {
        self.state()
            .script
            .entry(api)
            .or_default()
            .extend(how.iter().copied());
    }

    /// The ECS agent registered again under `arn` (the old ARN is gone).
    pub(super) fn register_again(&self, arn: &str) {
        let mut state = self.state();
        state.registered = Some(arn.to_owned());
        state.status = "ACTIVE";
    }

    /// The containers of every stopped task have exited (after SIGTERM or
    /// at the stop timeout): the host no longer runs them.
    pub(super) fn containers_exit(&self) {
        self.state().tasks.retain(|t| !t.stop_requested);
    }

    /// The tasks the host still runs.
    pub(super) fn on_host(&self) -> Vec<String> {
        self.state().tasks.iter().map(|t| t.arn.clone()).collect()
    }

    pub(super) fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    pub(super) fn drain_calls(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| matches!(c, Call::SetDraining { .. }))
            .collect()
    }

    /// Records `call`, then answers as scripted for `api`, else as ECS
    /// would (`answer`, which may change what ECS holds). A lost answer is
    /// given once ECS has done the work.
    fn answer<T>(
        &self,
        api: &'static str,
        call: Call,
        answer: impl FnOnce(&mut EcsState) -> Result<T, CallError>,
    ) -> Result<T, CallError> {
        let mut state = self.state();
        state.calls.push(call);
        let scripted = state.script.get_mut(api).and_then(VecDeque::pop_front);
        if let Some(Scripted::Fail(kind)) = scripted {
            return Err(failure(api, kind));
        }
        let answered = answer(&mut state)?;
        match scripted {
            Some(Scripted::AnswerLost) => Err(failure(api, AwsFailure::Transient)),
            _ => Ok(answered),
        }
    }
}

fn failure(api: &'static str, kind: AwsFailure) -> CallError {
    CallError::Aws {
        api,
        kind,
        detail: format!("scripted {kind:?}"),
    }
}

impl FakeEcs {
    /// Auto Scaling put the instance in `Terminating:Wait` on `hook`.
    pub(super) fn terminating_on(&self, hook: LifecycleHook) {
        let mut state = self.state();
        state.hook = Some(hook);
        state.hook_waiting = true;
    }

    /// Like Auto Scaling: a heartbeat or a completion for no waiting
    /// action is a `ValidationError`.
    fn waiting(ecs: &EcsState, api: &'static str) -> Result<LifecycleHook, HookError> {
        match (&ecs.hook, ecs.hook_waiting) {
            (Some(hook), true) => Ok(hook.clone()),
            (hook, _) => Err(HookError::NoActiveAction {
                api,
                group: hook.as_ref().map(|h| h.group.clone()).unwrap_or_default(),
                hook: hook.as_ref().map(|h| h.name.clone()).unwrap_or_default(),
                detail: "ValidationError: No active Lifecycle Action found (HTTP 400)".into(),
            }),
        }
    }
}

impl LifecycleHooks for FakeEcs {
    async fn termination_hook(
        &self,
        _instance_id: &str,
        _group: Option<&str>,
        wanted: Option<&str>,
    ) -> Result<Option<LifecycleHook>, DiscoveryError> {
        let found = self.answer(DESCRIBE_HOOKS, Call::DescribeHooks, |ecs| {
            Ok(ecs.hook.clone())
        })?;
        match (found, wanted) {
            (Some(hook), Some(name)) if hook.name != name => Err(DiscoveryError::NoSuchHook {
                group: hook.group,
                hook: name.to_owned(),
            }),
            (found, _) => Ok(found),
        }
    }

    async fn record_heartbeat(
        &self,
        _hook: &LifecycleHook,
        _instance_id: &str,
    ) -> Result<(), HookError> {
        let mut state = self.state();
        state.calls.push(Call::Heartbeat);
        if let Some(Scripted::Fail(kind)) = state
            .script
            .get_mut(HEARTBEAT)
            .and_then(VecDeque::pop_front)
        {
            return Err(HookError::Call(failure(HEARTBEAT, kind)));
        }
        Self::waiting(&state, HEARTBEAT).map(|_| ())
    }

    async fn complete(&self, _hook: &LifecycleHook, _instance_id: &str) -> Result<(), HookError> {
        let mut state = self.state();
        state.calls.push(Call::Complete);
        if let Some(Scripted::Fail(kind)) =
            state.script.get_mut(COMPLETE).and_then(VecDeque::pop_front)
        {
            return Err(HookError::Call(failure(COMPLETE, kind)));
        }
        Self::waiting(&state, COMPLETE)?;
        state.hook_waiting = false;
        state.continued += 1;
        Ok(())
    }
}

impl ContainerService for FakeEcs {
    async fn find_container_instance(
        &self,
        _cluster: &str,
        _instance_id: &str,
    ) -> Result<Option<String>, CallError> {
        self.answer(FIND, Call::Find, |ecs| Ok(ecs.registered.clone()))
    }

    async fn set_draining(
        &self,
        _cluster: &str,
        container_instance: &str,
        draining: bool,
    ) -> Result<(), CallError> {
        let arn = container_instance.to_owned();
        let call = Call::SetDraining {
            arn: arn.clone(),
            draining,
        };
        self.answer(SET_DRAINING, call, |ecs| {
            if ecs.registered != Some(arn) {
                return Err(failure(SET_DRAINING, AwsFailure::Rejected));
            }
            ecs.status = if draining { "DRAINING" } else { "ACTIVE" };
            Ok(())
        })
    }

    async fn tasks(
        &self,
        _cluster: &str,
        container_instance: &str,
    ) -> Result<Vec<HostTask>, CallError> {
        let arn = container_instance.to_owned();
        self.answer(LIST_TASKS, Call::ListTasks { arn }, |ecs| {
            Ok(ecs.tasks.clone())
        })
    }

    async fn stop_tasks(&self, _cluster: &str, tasks: &[String], reason: &str) -> StopReport {
        let mut report = StopReport::default();
        for task in tasks {
            let call = Call::StopTasks {
                tasks: vec![task.clone()],
                reason: reason.to_owned(),
            };
            let stopped = self.answer(STOP_TASKS, call, |ecs| {
                // desiredStatus STOPPED at once; the containers run on.
                for t in ecs.tasks.iter_mut().filter(|t| t.arn == *task) {
                    t.stop_requested = true;
                }
                Ok(())
            });
            match stopped {
                Ok(()) => report.stopped.push(task.clone()),
                Err(err) => report.failed.push((task.clone(), err)),
            }
        }
        report
    }

    async fn agent_answers(&self) -> bool {
        self.state().agent_answers
    }

    /// Every task on the host has one container, opted in with SIGUSR1.
    async fn signal_checkpoint(&self) -> PassReport {
        let mut state = self.state();
        state.calls.push(Call::SignalCheckpoint);
        state.seen_at_signal = state
            .read_at_signal
            .as_ref()
            .map(|path| std::fs::read_to_string(path).unwrap_or_default());
        if state.docker_down {
            return PassReport::unreached(Unreached::DockerHost(
                "Docker cannot be reached (scripted)".into(),
            ));
        }
        let signaled = state
            .tasks
            .iter()
            .map(|t| {
                let container = TaskContainer {
                    task_arn: t.arn.clone(),
                    name: "job".into(),
                    docker_id: "0".repeat(64),
                };
                (container, CheckpointSignal::Usr1)
            })
            .collect();
        PassReport {
            signaled,
            ..PassReport::default()
        }
    }
}
