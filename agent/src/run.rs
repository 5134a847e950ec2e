//! `blockwatch run`: watch every end-of-life signal, drain in time, report.
//!
//! The loop is thin: poll IMDS, ask the pure core what to do, do it, record
//! it. AWS is called at start, at drain time and while draining; never while
//! idle.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

use crate::actions::ecs::{agent_metadata, introspect, ContainerService};
use crate::actions::{poweroff, webhook};
use crate::core::config::{rfc3339, OnDrained};
use crate::core::deadline::Observations;
use crate::core::state::{decide, Action, AgentState, Event, Phase, Policy};
use crate::core::status::Snapshot;
use crate::exit::AgentError;
use crate::host::notify::Notifier;
use crate::host::state;
use crate::join::{resolve, ResolveOptions, Resolved};
use crate::sources::aws::Aws;
use crate::sources::ec2::InstanceCapacity;
use crate::sources::imds::Imds;
use crate::sources::{notices, AwsFailure, SourceError};

const MAX_BACKOFF: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The reason given to tasks stopped at `stop_grace`; Batch retry rules
/// match it with `onReason: "blockwatch:*"`.
pub const STOP_REASON_PREFIX: &str = "blockwatch:";

#[derive(Debug, Clone)]
pub struct RunRequest {
    pub config_path: PathBuf,
    pub config_path_explicit: bool,
    pub state_dir: PathBuf,
    pub dry_run: bool,
    pub introspection_url: String,
}

/// Retries AWS actions with exponential backoff, without blocking the loop.
#[derive(Debug)]
struct Backoff {
    not_before: Option<Instant>,
    delay: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self {
            not_before: None,
            delay: FIRST_BACKOFF,
        }
    }
    fn ready(&self) -> bool {
        self.not_before.is_none_or(|at| Instant::now() >= at)
    }
    fn failed(&mut self) -> Duration {
        let wait = self.delay;
        self.not_before = Some(Instant::now() + wait);
        self.delay = (self.delay * 2).min(MAX_BACKOFF);
        wait
    }
    fn succeeded(&mut self) {
        *self = Self::new();
    }
}

/// Everything the loop carries between ticks.
struct Agent<'a> {
    request: &'a RunRequest,
    aws: &'a Aws,
    resolved: Resolved,
    policy: Policy,
    observed: Observations,
    state: AgentState,
    container_instance: Option<String>,
    backoff: Backoff,
    next_task_count: Instant,
    errors: BTreeMap<&'static str, u64>,
    failing: BTreeMap<&'static str, bool>,
    waiting_logged: bool,
    rebalance_noted: bool,
    /// Whether the local ECS agent answered its introspection API lately:
    /// blockwatch keeps running when ecs.service fails, and says so.
    ecs_agent_answers: Option<bool>,
    next_ecs_agent_check: Instant,
    /// The EC2 end-date lookup, while it still has to succeed.
    ec2_lookup: Option<Ec2Lookup>,
    records: state::Records,
}

/// Retries of the start-up EC2 lookup after transient failures.
#[derive(Debug, Clone, Copy)]
struct Ec2Lookup {
    attempts: u32,
    next: Instant,
}

const EC2_LOOKUP_ATTEMPTS: u32 = 8;
const ECS_AGENT_CHECK_INTERVAL: Duration = Duration::from_secs(30);

pub async fn run(request: &RunRequest, imds: &Imds, aws: &Aws) -> Result<(), AgentError> {
    let mut notifier = Notifier::new();
    let known = state::read_join_record(&request.state_dir).unwrap_or_else(|err| {
        log::warn!("ignoring the join record: {err}");
        None
    });
    let options = ResolveOptions {
        config_path: &request.config_path,
        config_path_explicit: request.config_path_explicit,
        dry_run_flag: request.dry_run,
        always_read_tags: true,
        known: known.as_ref(),
    };
    let resolved = resolve(options, imds, aws, aws).await?;
    let identity = resolved
        .identity
        .clone()
        .ok_or_else(|| AgentError::Internal("no identity document".into()))?;
    let settings = resolved.settings.clone();
    let policy = Policy {
        drain_lead: settings.drain_lead.value,
        drain_on_rebalance: settings.drain_on_rebalance.value,
        stop_grace: settings.stop_grace.as_ref().map(|g| g.value),
        power_off_when_drained: settings.on_drained.value == OnDrained::Poweroff,
    };

    let mut observed = Observations::default();
    if let Some(lease) = &settings.lease {
        let end = lease.value.end(identity.pending_time);
        match lease.value {
            crate::core::config::Lease::Ends(_) => {
                log::info!("lease ends {} ({})", rfc3339(end), lease.origin)
            }
            crate::core::config::Lease::LastsFromLaunch(_) => {
                log::info!(
                    "lease of {} ({}): ends {}",
                    lease.value,
                    lease.origin,
                    rfc3339(end)
                );
            }
        }
        observed.lease_end = Some((end, lease.origin.kind().to_owned()));
    }
    let errors = BTreeMap::new();

    let metrics_file = settings.metrics_file.as_ref().map(|p| p.value.clone());
    let (records, state) =
        state::Records::open(&request.state_dir, &identity.instance_id, metrics_file)?;

    let mut agent = Agent {
        request,
        aws,
        resolved,
        policy,
        observed,
        state,
        container_instance: None,
        backoff: Backoff::new(),
        next_task_count: Instant::now(),
        errors,
        failing: BTreeMap::new(),
        waiting_logged: false,
        rebalance_noted: false,
        ecs_agent_answers: None,
        next_ecs_agent_check: Instant::now(),
        ec2_lookup: Some(Ec2Lookup {
            attempts: 0,
            next: Instant::now(),
        }),
        records,
    };
    let identity_for_lookup = identity.clone();
    agent.lookup_ec2_deadlines(&identity_for_lookup).await;
    let poll = settings.poll_interval.value.max(Duration::from_millis(100));
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|e| AgentError::Internal(format!("signal handler: {e}")))?;
    let mut interrupt = signal(SignalKind::interrupt())
        .map_err(|e| AgentError::Internal(format!("signal handler: {e}")))?;
    // Without a watchdog this timer idles at a day and does nothing.
    let mut watchdog = tokio::time::interval(
        notifier
            .watchdog_interval()
            .unwrap_or(Duration::from_secs(86_400)),
    );
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = watchdog.tick() => {
                notifier.watchdog();
                continue;
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
        agent.lookup_ec2_deadlines(&identity).await;
        let errors = notices::poll(
            imds,
            &mut agent.observed,
            whole_seconds(OffsetDateTime::now_utc()),
        )
        .await;
        agent.note_notice_errors(errors);
        agent.step().await;
        let now = whole_seconds(OffsetDateTime::now_utc());
        agent.check_ecs_agent().await;
        agent.records.tick(agent.snapshot(now), &agent.errors, now);
        notifier.tick(&agent.status_line(now));
    }
    log::info!(
        "stopping; state kept in {}",
        state::state_path(&request.state_dir).display()
    );
    notifier.stopping();
    Ok(())
}

/// Decisions and records keep whole seconds, as tags and notices do.
fn whole_seconds(at: OffsetDateTime) -> OffsetDateTime {
    at.replace_nanosecond(0).unwrap_or(at)
}

impl Agent<'_> {
    /// EC2's own end dates (legacy spot block, Capacity Block): asked at
    /// start, retried with backoff only after transient failures, never fatal.
    async fn lookup_ec2_deadlines(&mut self, identity: &crate::sources::imds::IdentityDocument) {
        let Some(lookup) = self.ec2_lookup else {
            return;
        };
        if Instant::now() < lookup.next {
            return;
        }
        match self
            .aws
            .ec2_deadlines(&identity.instance_id, identity.pending_time)
            .await
        {
            Ok(found) => {
                if let Some((end, id)) = &found.legacy_spot_block_end {
                    log::info!("legacy spot block {id}: ends {}", rfc3339(*end));
                }
                if let Some((end, id)) = &found.capacity_block_end {
                    log::info!(
                        "Capacity Block {id}: EndDate {} (EC2 terminates 30 min earlier)",
                        rfc3339(*end)
                    );
                }
                self.observed.legacy_spot_block_end = found.legacy_spot_block_end;
                self.observed.capacity_block_end = found.capacity_block_end;
                self.ec2_lookup = None;
            }
            Err(err) => {
                self.count_error("ec2");
                let attempts = lookup.attempts + 1;
                let transient = matches!(
                    err,
                    SourceError::Aws {
                        kind: AwsFailure::Transient,
                        ..
                    } | SourceError::Imds { .. }
                );
                if transient && attempts < EC2_LOOKUP_ATTEMPTS {
                    let wait = Duration::from_secs(5 * 2u64.pow(attempts - 1))
                        .min(Duration::from_secs(300));
                    log::warn!(
                        "{err}; will ask again in {}",
                        humantime::format_duration(wait)
                    );
                    self.ec2_lookup = Some(Ec2Lookup {
                        attempts,
                        next: Instant::now() + wait,
                    });
                } else {
                    log::warn!("{err}; spot block and Capacity Block end dates are not checked");
                    self.ec2_lookup = None;
                }
            }
        }
    }

    /// Every 30 s, a local (no AWS) look at whether the ECS agent answers.
    async fn check_ecs_agent(&mut self) {
        if Instant::now() < self.next_ecs_agent_check {
            return;
        }
        self.next_ecs_agent_check = Instant::now() + ECS_AGENT_CHECK_INTERVAL;
        let answers = agent_metadata(&self.request.introspection_url)
            .await
            .is_some();
        match (self.ecs_agent_answers, answers) {
            (Some(true) | None, false) => log::warn!(
                "the ECS agent does not answer at {}: is ecs.service running? blockwatch keeps watching",
                self.request.introspection_url
            ),
            (Some(false), true) => log::info!("the ECS agent answers again"),
            _ => {}
        }
        self.ecs_agent_answers = Some(answers);
    }

    /// The systemd STATUS line, with a warning when the ECS agent is down.
    fn status_line(&self, now: OffsetDateTime) -> String {
        let mut line = self.snapshot(now).status_line(now);
        if self.ecs_agent_answers == Some(false) {
            line.push_str(" · ECS agent not answering");
        }
        if let Some(problem) = self.records.problem() {
            line.push_str(" · ");
            line.push_str(problem);
        }
        line
    }

    fn cluster(&self) -> String {
        self.resolved.cluster.to_string()
    }

    fn snapshot(&self, now: OffsetDateTime) -> Snapshot {
        Snapshot {
            instance_id: self.resolved.instance_id.clone(),
            cluster: self.cluster(),
            compute_environment: self
                .resolved
                .compute_environment
                .as_ref()
                .map(|ce| ce.value.clone()),
            agent: self.state.clone(),
            updated_at: now,
            heartbeat: Default::default(),
        }
    }

    fn dry_run(&self) -> bool {
        self.resolved.settings.dry_run.value
    }

    fn count_error(&mut self, source: &'static str) {
        *self.errors.entry(source).or_default() += 1;
    }

    /// Logs a failing source once when it starts failing and once when it
    /// recovers, not every second.
    fn note_notice_errors(&mut self, errors: Vec<notices::NoticeError>) {
        let failing_now: Vec<&'static str> = errors.iter().map(|e| e.source).collect();
        for err in errors {
            self.count_error(err.source);
            if !self.failing.get(err.source).copied().unwrap_or(false) {
                log::warn!(
                    "{} (keeping its last known value; logged once until it recovers)",
                    err.error
                );
                self.failing.insert(err.source, true);
            }
        }
        for (source, failing) in self.failing.iter_mut() {
            if *failing && !failing_now.contains(source) {
                log::info!("{source} notices readable again");
                *failing = false;
            }
        }
    }

    async fn step(&mut self) {
        let now = whole_seconds(OffsetDateTime::now_utc());
        if self.observed.rebalance_notice.is_some()
            && !self.policy.drain_on_rebalance
            && !self.rebalance_noted
        {
            log::info!(
                "rebalance recommendation seen; not draining for it (drain_on_rebalance = false)"
            );
            self.rebalance_noted = true;
        }
        self.count_tasks_if_due().await;
        let decision = decide(now, &self.observed, &self.state, &self.policy);
        let before = self.state.clone();
        self.state = decision.state;
        // The decision is on disk before anything acts on it, so a crash
        // between the two neither forgets nor repeats it.
        if self.state != before {
            self.persist(now);
        }
        for event in &decision.events {
            self.report(event, now);
        }
        for action in decision.actions {
            let before_action = self.state.clone();
            self.act(action, now).await;
            if self.state != before_action {
                self.persist(now);
            }
        }
    }

    /// While draining, count running tasks every `drain_poll_interval`.
    async fn count_tasks_if_due(&mut self) {
        let confirmed = self
            .state
            .drain
            .as_ref()
            .is_some_and(|d| d.draining_confirmed_at.is_some());
        if self.state.phase != Phase::Draining || !confirmed {
            self.observed.running_tasks = None;
            return;
        }
        if Instant::now() < self.next_task_count {
            return;
        }
        self.next_task_count = Instant::now() + self.resolved.settings.drain_poll_interval.value;
        let Some(container_instance) = self.container_instance().await else {
            return;
        };
        match self
            .aws
            .running_tasks(&self.cluster(), &container_instance)
            .await
        {
            Ok(tasks) => {
                if self.observed.running_tasks != Some(tasks.len()) {
                    log::info!(CLUSTER = self.cluster().as_str(), PHASE = "draining"; "{} task(s) still running on {container_instance}", tasks.len());
                }
                self.observed.running_tasks = Some(tasks.len());
            }
            Err(err) => self.aws_failed("ecs", &err),
        }
    }

    /// Our container instance: the ECS agent's introspection API first (no
    /// IAM, no API call), then `ecs:ListContainerInstances`.
    async fn container_instance(&mut self) -> Option<String> {
        if self.container_instance.is_some() {
            return self.container_instance.clone();
        }
        let cluster = self.cluster();
        let mut found = introspect(&self.request.introspection_url, &cluster).await;
        if found.is_none() {
            match self
                .aws
                .find_container_instance(&cluster, &self.resolved.instance_id)
                .await
            {
                Ok(arn) => found = arn,
                Err(err) => {
                    self.aws_failed("ecs", &err);
                    return None;
                }
            }
        }
        match &found {
            Some(arn) => log::info!(CLUSTER = cluster.as_str(); "container instance {arn}"),
            None if !self.waiting_logged => {
                log::info!(
                    "waiting for {} to register as a container instance in {cluster}",
                    self.resolved.instance_id
                );
                self.waiting_logged = true;
            }
            None => {}
        }
        self.container_instance.clone_from(&found);
        found
    }

    fn aws_failed(&mut self, source: &'static str, err: &SourceError) {
        self.count_error(source);
        let wait = self.backoff.failed();
        log::warn!("{err}; retrying in {}", humantime::format_duration(wait));
    }

    async fn act(&mut self, action: Action, now: OffsetDateTime) {
        if self.dry_run() {
            self.act_dry(action, now);
            return;
        }
        if action != Action::PowerOff && !self.backoff.ready() {
            return;
        }
        match action {
            Action::Drain | Action::Undrain => {
                let draining = action == Action::Drain;
                let Some(container_instance) = self.container_instance().await else {
                    // Not registered yet: ask again after a backoff (an AWS
                    // error has already started one).
                    if self.backoff.ready() {
                        self.backoff.failed();
                    }
                    return;
                };
                match self
                    .aws
                    .set_draining(&self.cluster(), &container_instance, draining)
                    .await
                {
                    Ok(()) => {
                        self.backoff.succeeded();
                        if draining {
                            if let Some(drain) = self.state.drain.as_mut() {
                                drain.draining_confirmed_at = Some(now);
                            }
                            self.next_task_count = Instant::now();
                        } else {
                            self.state.undrain_pending = false;
                        }
                        self.log_decision(if draining {
                            "container instance set to DRAINING: no new jobs are placed here"
                        } else {
                            "container instance set back to ACTIVE"
                        });
                    }
                    Err(err) => {
                        // A rejection may mean the ECS agent registered again under a new ARN.
                        if matches!(
                            err,
                            SourceError::Aws {
                                kind: AwsFailure::Rejected,
                                ..
                            }
                        ) {
                            self.container_instance = None;
                        }
                        self.aws_failed("ecs", &err);
                    }
                }
            }
            Action::StopTasks => {
                let Some(container_instance) = self.container_instance().await else {
                    return;
                };
                let cluster = self.cluster();
                let reason = self.stop_reason();
                let result = match self.aws.running_tasks(&cluster, &container_instance).await {
                    Ok(tasks) => self
                        .aws
                        .stop_tasks(&cluster, &tasks, &reason)
                        .await
                        .map(|()| tasks.len()),
                    Err(err) => Err(err),
                };
                match result {
                    Ok(stopped) => {
                        self.backoff.succeeded();
                        if let Some(drain) = self.state.drain.as_mut() {
                            drain.tasks_stopped_at = Some(now);
                        }
                        self.log_decision(&format!(
                            "stopped {stopped} task(s) with reason {reason:?}"
                        ));
                    }
                    Err(err) => self.aws_failed("ecs", &err),
                }
            }
            Action::PowerOff => {
                // Recorded first: a restart must never power off twice.
                if let Some(drain) = self.state.drain.as_mut() {
                    drain.poweroff_at = Some(now);
                }
                if !self.persist(now) {
                    // Unrecorded, a restart could power off a second time.
                    if let Some(drain) = self.state.drain.as_mut() {
                        drain.poweroff_at = None;
                    }
                    log::error!("not powering off until the state file can be written");
                    return;
                }
                let command = self.resolved.settings.poweroff_command.value.clone();
                self.log_decision(&format!("drained; powering off with {command:?}"));
                if let Err(err) = poweroff::run(&command).await {
                    self.count_error("poweroff");
                    log::error!("power off failed: {err}");
                }
            }
        }
    }

    fn act_dry(&mut self, action: Action, now: OffsetDateTime) {
        let what = match action {
            Action::Drain => {
                if let Some(drain) = self.state.drain.as_mut() {
                    drain.draining_confirmed_at = Some(now);
                    // Nothing was drained, so there is nothing to wait for.
                    drain.running_tasks = Some(0);
                }
                self.observed.running_tasks = Some(0);
                "set the container instance to DRAINING".to_owned()
            }
            Action::Undrain => {
                self.state.undrain_pending = false;
                "set the container instance back to ACTIVE".to_owned()
            }
            Action::StopTasks => {
                if let Some(drain) = self.state.drain.as_mut() {
                    drain.tasks_stopped_at = Some(now);
                }
                format!(
                    "stop the remaining tasks with reason {:?}",
                    self.stop_reason()
                )
            }
            Action::PowerOff => {
                if let Some(drain) = self.state.drain.as_mut() {
                    drain.poweroff_at = Some(now);
                }
                format!("run {:?}", self.resolved.settings.poweroff_command.value)
            }
        };
        self.log_decision(&format!("dry run, nothing changed: would {what}"));
    }

    fn stop_reason(&self) -> String {
        let ends = self
            .state
            .deadline
            .as_ref()
            .map(|d| format!(" at {} ({})", rfc3339(d.at), d.event.kind))
            .unwrap_or_default();
        format!(
            "{STOP_REASON_PREFIX} instance {} ends{ends}",
            self.resolved.instance_id
        )
    }

    /// Logs with the journald fields every decision carries.
    fn log_decision(&self, message: &str) {
        let deadline = self
            .state
            .deadline
            .as_ref()
            .map(|d| rfc3339(d.at))
            .unwrap_or_default();
        let source = self
            .state
            .deadline
            .as_ref()
            .map(|d| d.event.kind.name())
            .unwrap_or("none");
        log::info!(
            INSTANCE_ID = self.resolved.instance_id.as_str(),
            CLUSTER = self.cluster().as_str(),
            PHASE = self.state.phase.name(),
            DEADLINE = deadline.as_str(),
            DEADLINE_SOURCE = source;
            "{message}"
        );
    }

    fn report(&self, event: &Event, now: OffsetDateTime) {
        let deadline = self.state.deadline.as_ref();
        let described = deadline
            .map(|d| {
                format!(
                    "{} [{}] at {} (in {})",
                    d.event.kind,
                    d.event.id,
                    rfc3339(d.at),
                    crate::core::status::countdown(now, d.at)
                )
            })
            .unwrap_or_else(|| "no end announced".to_owned());
        let (name, message) = match event {
            Event::DrainStarted => (
                "drain-started",
                format!("draining: the instance ends {described}"),
            ),
            Event::DrainCompleted => (
                "drain-completed",
                "drained: no task left on this instance".to_owned(),
            ),
            Event::DrainCanceled => (
                "drain-canceled",
                format!("drain canceled: its scheduled event is over; now {described}"),
            ),
            Event::DeadlineChanged => ("deadline-changed", format!("deadline: {described}")),
        };
        self.log_decision(&message);
        if *event == Event::DeadlineChanged {
            return;
        }
        if let Some(url) = &self.resolved.settings.webhook_url {
            let payload = serde_json::json!({
                "event": name,
                "instance_id": self.resolved.instance_id,
                "cluster": self.cluster(),
                "phase": self.state.phase.name(),
                "deadline": deadline.map(|d| rfc3339(d.at)),
                "deadline_source": deadline.map(|d| d.event.kind.name()),
                "at": rfc3339(now),
            });
            if self.dry_run() {
                log::info!(
                    "dry run: would POST {name} to webhook {}",
                    webhook::redacted(&url.value)
                );
            } else {
                webhook::post(url.value.clone(), payload);
            }
        }
    }

    /// Writes the state file (and metrics); false when the state could not be saved.
    fn persist(&mut self, now: OffsetDateTime) -> bool {
        self.records.save(self.snapshot(now), &self.errors, now)
    }
}
