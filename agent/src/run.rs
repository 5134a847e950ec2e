//! `blockwatch run`: watch every end-of-life signal, drain in time, report.
//!
//! The loop is thin: poll IMDS, ask the pure core what to do, do it, record
//! it. AWS is called at start, at drain time and while draining; never while
//! idle.
//!
//! Nothing may hang the loop: every tick runs beside the signals and the
//! watchdog (SIGTERM is served while an AWS call is in flight), every AWS
//! call the loop makes has a time limit of its own, and the start-up EC2
//! lookup runs on a task of its own so that it never delays IMDS polling,
//! `READY=1` or the first state file. When IMDS keeps failing (or refuses
//! our session token), the IMDS client and the AWS credential chain that
//! shares it are built afresh.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Interval};

use crate::actions::ecs::{agent_metadata, introspect, ContainerService};
use crate::actions::{poweroff, webhook};
use crate::core::config::{
    rfc3339, InstanceTags, Lease, OnDrained, OnLeaseEnd, Settings, Sourced, TagChannel,
};
use crate::core::deadline::{capacity_block_recheck_in, Observations};
use crate::core::failures::{FailureLog, Line};
use crate::core::state::{
    decide, poweroff_retry_after, Action, AgentState, CancelCause, Event, Phase, Policy, StopCause,
};
use crate::core::status::Snapshot;
use crate::exit::AgentError;
use crate::host::notify::Notifier;
use crate::host::state;
use crate::join::{resolve, ResolveOptions, Resolved};
use crate::sources::aws::Aws;
use crate::sources::ec2::{Ec2Deadlines, InstanceCapacity};
use crate::sources::imds::{IdentityDocument, Imds, InstanceMetadata};
use crate::sources::notices::{NoticeError, NoticeFailure};
use crate::sources::{notices, AwsFailure, SourceError};

const MAX_BACKOFF: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest the loop waits for one AWS step (a call or two, with the
/// SDK's own retries) before it counts as a transient failure: a backstop
/// above the SDK's operation timeouts, should they not fire.
pub const AWS_CALL_LIMIT: Duration = Duration::from_secs(90);
/// How long shutdown and power-off wait for webhook deliveries in flight.
pub const WEBHOOK_GRACE: Duration = Duration::from_secs(5);
/// Consecutive polls with IMDS failing before its client is built afresh
/// (at once when IMDS refuses our token).
const IMDS_RENEW_AFTER: u32 = 3;
/// The watchdog is fed while a tick is in flight, but only this long: a
/// tick that runs longer is stuck, and systemd should restart us.
const TICK_LIMIT: Duration = Duration::from_secs(600);
pub use crate::core::state::STOP_REASON_PREFIX;

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
    /// IMDS and AWS clients; both are replaced when IMDS needs a fresh session.
    imds: Imds,
    aws: Arc<Aws>,
    /// Tells the EC2 lookup task about a fresh `aws`.
    aws_updates: watch::Sender<Arc<Aws>>,
    /// Consecutive polls on which IMDS failed.
    imds_failing_polls: u32,
    resolved: Resolved,
    policy: Policy,
    observed: Observations,
    state: AgentState,
    container_instance: Option<String>,
    backoff: Backoff,
    next_task_count: Instant,
    errors: BTreeMap<&'static str, u64>,
    failures: FailureLog,
    waiting_logged: bool,
    rebalance_noted: bool,
    /// Whether the local ECS agent answered its introspection API lately:
    /// blockwatch keeps running when ecs.service fails, and says so.
    ecs_agent_answers: Option<bool>,
    next_ecs_agent_check: Instant,
    records: state::Records,
    deliveries: webhook::Deliveries,
    /// The lease in force (tags are read again every `lease_refresh_interval`).
    lease: Option<Sourced<Lease>>,
    next_lease_refresh: Instant,
    /// The last lease tags problem logged, so that it is logged once.
    lease_problem: Option<String>,
    /// A power-off attempt on disk whose command is still to run (when, and
    /// which attempt).
    power_off_recorded: Option<(OffsetDateTime, u32)>,
}

const EC2_LOOKUP_ATTEMPTS: u32 = 8;
/// How the shutdown-behaviour warning starts, in the journal and in status.
const SHUTDOWN_WARNING: &str = "instance-initiated shutdown behaviour is `stop`";
const ECS_AGENT_CHECK_INTERVAL: Duration = Duration::from_secs(30);

/// What the activities that can fail repeatedly are called in the logs.
const FINDING: &str = "finding the container instance";
const DRAINING: &str = "setting the container instance to DRAINING";
const UNDRAINING: &str = "setting the container instance back to ACTIVE";
const COUNTING: &str = "counting the tasks still running";
const STOPPING: &str = "stopping the remaining tasks";
const RECORDING_POWER_OFF: &str = "recording the power-off";
const POWERING_OFF: &str = "powering off";
const READING_LEASE: &str = "reading the lease tags";
const EC2_LOOKUP: &str = "looking up EC2 end dates";
const IMDS_SESSION: &str = "keeping an IMDS session";

/// SIGTERM and SIGINT.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self, AgentError> {
        let install = |kind| {
            signal(kind).map_err(|e| AgentError::Internal(format!("cannot handle signals: {e}")))
        };
        Ok(Self {
            terminate: install(SignalKind::terminate())?,
            interrupt: install(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

/// The signals, the watchdog and its timer: what must be served while the
/// agent works.
struct Service {
    signals: Signals,
    notifier: Notifier,
    watchdog: Interval,
}

/// How a piece of work ended.
enum Served<T> {
    Done(T),
    /// SIGTERM or SIGINT came first; the work was dropped.
    Stopped,
}

impl Service {
    fn new() -> Result<Self, AgentError> {
        let notifier = Notifier::new();
        // Without a watchdog this timer idles at a day and does nothing.
        let mut watchdog = tokio::time::interval(
            notifier
                .watchdog_interval()
                .unwrap_or(Duration::from_secs(86_400)),
        );
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Self {
            signals: Signals::new()?,
            notifier,
            watchdog,
        })
    }

    /// Runs `work` to its end while feeding the watchdog (for up to
    /// [`TICK_LIMIT`]) and listening for SIGTERM and SIGINT, which drop it.
    async fn serve<T>(&mut self, work: impl Future<Output = T>) -> Served<T> {
        let started = Instant::now();
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return Served::Done(done),
                _ = self.watchdog.tick() => {
                    if started.elapsed() < TICK_LIMIT {
                        self.notifier.watchdog();
                    }
                }
                () = self.signals.recv() => return Served::Stopped,
            }
        }
    }
}

/// Runs an AWS call with [`AWS_CALL_LIMIT`]; past it, a transient failure.
/// The call is boxed: SDK futures are large.
fn bounded<'a, T: 'a>(
    api: &'static str,
    call: impl Future<Output = Result<T, SourceError>> + 'a,
) -> impl Future<Output = Result<T, SourceError>> + 'a {
    let call = Box::pin(call);
    async move {
        tokio::time::timeout(AWS_CALL_LIMIT, call)
            .await
            .unwrap_or_else(|_| {
                Err(SourceError::Aws {
                    api,
                    kind: AwsFailure::Transient,
                    detail: format!(
                        "no answer within {}",
                        humantime::format_duration(AWS_CALL_LIMIT)
                    ),
                })
            })
    }
}

/// What the EC2 lookup task reports to the loop.
#[derive(Debug)]
enum Ec2Report {
    Found(Ec2Deadlines),
    /// A Capacity Block's `EndDate`, asked again.
    CapacityBlock((OffsetDateTime, String)),
    /// `InstanceInitiatedShutdownBehavior`, read once at start.
    ShutdownBehavior(Result<Option<String>, SourceError>),
    /// A failure; `retry_in` is `None` when the lookup gives up.
    Failed {
        error: SourceError,
        retry_in: Option<Duration>,
    },
}

/// EC2's own end dates (legacy spot block, Capacity Block), asked at start
/// on a task of its own and retried with backoff only after transient
/// failures; never fatal. Each attempt uses the current AWS clients. A
/// Capacity Block's end is then asked again on a schedule, since a block
/// can be extended.
async fn look_up_ec2_deadlines(
    aws: watch::Receiver<Arc<Aws>>,
    identity: IdentityDocument,
    capacity_block_refresh: Duration,
    report: mpsc::UnboundedSender<Ec2Report>,
) {
    for attempt in 1..=EC2_LOOKUP_ATTEMPTS {
        let current = Arc::clone(&aws.borrow());
        let result = bounded(
            "ec2:DescribeInstances",
            current.ec2_deadlines(&identity.instance_id, identity.pending_time),
        )
        .await;
        let error = match result {
            Ok(found) => {
                let block = found.capacity_block_end.clone();
                if report.send(Ec2Report::Found(found)).is_err() {
                    return;
                }
                if let Some(block) = block {
                    follow_capacity_block(aws, block, capacity_block_refresh, report).await;
                }
                return;
            }
            Err(error) => error,
        };
        let transient = matches!(
            error,
            SourceError::Aws {
                kind: AwsFailure::Transient,
                ..
            } | SourceError::Imds { .. }
        );
        let retry_in = (transient && attempt < EC2_LOOKUP_ATTEMPTS)
            .then(|| Duration::from_secs(5 * 2u64.pow(attempt - 1)).min(Duration::from_secs(300)));
        let _ = report.send(Ec2Report::Failed { error, retry_in });
        match retry_in {
            Some(wait) => tokio::time::sleep(wait).await,
            None => return,
        }
    }
}

/// Asks for the Capacity Block's `EndDate` every `refresh` (more often near
/// its end) for as long as the agent runs; a failure waits for the next turn.
async fn follow_capacity_block(
    aws: watch::Receiver<Arc<Aws>>,
    (mut end, reservation): (OffsetDateTime, String),
    refresh: Duration,
    report: mpsc::UnboundedSender<Ec2Report>,
) {
    loop {
        let wait = capacity_block_recheck_in(OffsetDateTime::now_utc(), end, refresh);
        tokio::time::sleep(wait).await;
        let current = Arc::clone(&aws.borrow());
        let asked = bounded(
            "ec2:DescribeCapacityReservations",
            current.capacity_block_end(&reservation),
        )
        .await;
        let sent = match asked {
            Ok(Some(now_ends)) => {
                end = now_ends;
                report.send(Ec2Report::CapacityBlock((end, reservation.clone())))
            }
            // No longer answered as a Capacity Block: keep the end we know.
            Ok(None) => Ok(()),
            Err(error) => report.send(Ec2Report::Failed {
                error,
                retry_in: Some(capacity_block_recheck_in(
                    OffsetDateTime::now_utc(),
                    end,
                    refresh,
                )),
            }),
        };
        if sent.is_err() {
            return;
        }
    }
}

/// Reads the instance's shutdown behaviour once: a power-off of an instance
/// whose behaviour is `stop` leaves it stopped, still paying for its volumes.
async fn read_shutdown_behavior(
    aws: Arc<Aws>,
    instance_id: String,
    report: mpsc::UnboundedSender<Ec2Report>,
) {
    let read = bounded(
        "ec2:DescribeInstanceAttribute",
        aws.shutdown_behavior(&instance_id),
    )
    .await;
    let _ = report.send(Ec2Report::ShutdownBehavior(read));
}

pub async fn run(request: &RunRequest, imds: Imds) -> Result<(), AgentError> {
    let mut service = Service::new()?;
    let aws = Arc::new(Aws::new(imds.clone()));
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
    let resolved = match service
        .serve(Box::pin(resolve(
            options,
            &imds,
            aws.as_ref(),
            aws.as_ref(),
        )))
        .await
    {
        Served::Done(resolved) => resolved?,
        Served::Stopped => {
            log::info!("stopping before the start-up finished");
            service.notifier.stopping();
            return Ok(());
        }
    };
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
        enforce_lease_end: settings.on_lease_end.value == OnLeaseEnd::Poweroff,
    };

    let metrics_file = settings.metrics_file.as_ref().map(|p| p.value.clone());
    let (records, mut state) =
        state::Records::open(&request.state_dir, &identity.instance_id, metrics_file)?;
    // A lease duration counts from the first launch, not from a restart
    // after a stop.
    state.first_launched_at.get_or_insert(identity.pending_time);
    let observed = Observations {
        launched_at: Some(identity.pending_time),
        ..Observations::default()
    };

    let (aws_updates, aws_for_lookup) = watch::channel(Arc::clone(&aws));
    let mut agent = Agent {
        request,
        imds,
        aws,
        aws_updates,
        imds_failing_polls: 0,
        resolved,
        policy,
        observed,
        state,
        container_instance: None,
        backoff: Backoff::new(),
        next_task_count: Instant::now(),
        errors: BTreeMap::new(),
        failures: FailureLog::default(),
        waiting_logged: false,
        rebalance_noted: false,
        ecs_agent_answers: None,
        next_ecs_agent_check: Instant::now(),
        records,
        deliveries: webhook::Deliveries::default(),
        lease: None,
        next_lease_refresh: Instant::now() + settings.lease_refresh_interval.value,
        lease_problem: None,
        power_off_recorded: None,
    };
    agent.follow_lease(settings.lease.clone());
    let (report, mut ec2_reports) = mpsc::unbounded_channel();
    if settings.powers_off() {
        tokio::spawn(read_shutdown_behavior(
            Arc::clone(&agent.aws),
            identity.instance_id.clone(),
            report.clone(),
        ));
    }
    tokio::spawn(look_up_ec2_deadlines(
        aws_for_lookup,
        identity,
        settings.capacity_block_refresh_interval.value,
        report,
    ));

    let poll = settings.poll_interval.value.max(Duration::from_millis(100));
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = service.watchdog.tick() => {
                service.notifier.watchdog();
                continue;
            }
            () = service.signals.recv() => break,
            Some(found) = ec2_reports.recv() => {
                agent.note_ec2_lookup(found);
                continue;
            }
        }
        match service.serve(Box::pin(agent.tick())).await {
            Served::Done(()) => {}
            Served::Stopped => break,
        }
        // Outside `serve`: the power-off makes systemd send SIGTERM, which
        // must not drop the command's outcome before it is recorded.
        agent.run_power_off().await;
        let now = whole_seconds(OffsetDateTime::now_utc());
        agent.records.tick(agent.snapshot(now), &agent.errors, now);
        service.notifier.tick(&agent.status_line(now));
    }
    log::info!(
        "stopping; state kept in {}",
        state::state_path(&request.state_dir).display()
    );
    service.notifier.stopping();
    let stopping = "blockwatch is stopping";
    if let Served::Stopped = service
        .serve(agent.deliveries.settle(WEBHOOK_GRACE, stopping))
        .await
    {
        agent
            .deliveries
            .abandon("blockwatch was told again to stop");
    }
    Ok(())
}

fn emit(line: Line) {
    match line {
        Line::Warn(text) => log::warn!("{text}"),
        Line::Info(text) => log::info!("{text}"),
    }
}

/// `reading spot notices`, as failures of a notice source are called.
fn notice_kind(source: &str) -> String {
    format!("reading {source} notices")
}

/// Decisions and records keep whole seconds, as tags and notices do.
fn whole_seconds(at: OffsetDateTime) -> OffsetDateTime {
    at.replace_nanosecond(0).unwrap_or(at)
}

impl Agent<'_> {
    /// One poll: read the notices, decide, act, record.
    async fn tick(&mut self) {
        let errors = notices::poll(
            &self.imds,
            &mut self.observed,
            whole_seconds(OffsetDateTime::now_utc()),
        )
        .await;
        self.heal_imds(&errors);
        self.note_notice_errors(errors);
        self.refresh_lease_if_due().await;
        self.step().await;
        self.check_ecs_agent().await;
    }

    /// aws-config's IMDS client keeps its session token for hours and
    /// retries a 401 with the same token, so a token IMDS has forgotten would
    /// blind the agent. A refused token, or IMDS failing on several polls in
    /// a row, starts a fresh session: a new IMDS client, and new AWS clients
    /// whose credential chain uses it.
    fn heal_imds(&mut self, errors: &[NoticeError]) {
        let refused = errors
            .iter()
            .any(|e| e.failure == NoticeFailure::TokenRefused);
        let failing = errors
            .iter()
            .any(|e| e.failure != NoticeFailure::Unreadable);
        if !failing {
            self.imds_failing_polls = 0;
            return;
        }
        self.imds_failing_polls += 1;
        if !refused && self.imds_failing_polls < IMDS_RENEW_AFTER {
            return;
        }
        let why = if refused {
            "IMDS refused our session token (HTTP 401)".to_owned()
        } else {
            format!("IMDS failed {} polls in a row", self.imds_failing_polls)
        };
        let error = format!("{why} at {}", self.imds.endpoint());
        let then = "starting a fresh IMDS session and AWS credential chain";
        // A token that IMDS forgets every few minutes is summarised too.
        let now = Instant::now().into_std();
        if let Some(line) = self.failures.failed(IMDS_SESSION, &error, then, now) {
            emit(line);
        }
        self.imds = self.imds.renewed();
        self.aws = Arc::new(Aws::new(self.imds.clone()));
        self.aws_updates.send_replace(Arc::clone(&self.aws));
        self.imds_failing_polls = 0;
    }

    fn note_ec2_lookup(&mut self, report: Ec2Report) {
        let now = Instant::now().into_std();
        match report {
            Ec2Report::Found(found) => {
                if let Some(line) = self.failures.succeeded(EC2_LOOKUP, now) {
                    emit(line);
                }
                if let Some((end, id)) = &found.legacy_spot_block_end {
                    log::info!("legacy spot block {id}: ends {}", rfc3339(*end));
                }
                if let Some((end, id)) = &found.capacity_block_end {
                    log::info!(
                        "Capacity Block {id}: EndDate {} (EC2 terminates 30 min earlier)",
                        rfc3339(*end)
                    );
                }
                if found == Ec2Deadlines::default() {
                    log::info!("EC2 knows no spot block or Capacity Block for this instance");
                }
                self.observed.legacy_spot_block_end = found.legacy_spot_block_end;
                self.observed.capacity_block_end = found.capacity_block_end;
            }
            Ec2Report::CapacityBlock((end, id)) => {
                if let Some(line) = self.failures.succeeded(EC2_LOOKUP, now) {
                    emit(line);
                }
                let known = self.observed.capacity_block_end.as_ref().map(|(at, _)| *at);
                if known != Some(end) {
                    log::info!(
                        "Capacity Block {id}: EndDate is now {} (was {}); EC2 terminates 30 min earlier",
                        rfc3339(end),
                        known.map_or_else(|| "unknown".to_owned(), rfc3339)
                    );
                }
                self.observed.capacity_block_end = Some((end, id));
            }
            Ec2Report::ShutdownBehavior(read) => self.note_shutdown_behavior(read),
            Ec2Report::Failed {
                error,
                retry_in: Some(wait),
            } => {
                self.count_error("ec2");
                let then = format!("will ask again in {}", humantime::format_duration(wait));
                if let Some(line) = self
                    .failures
                    .failed(EC2_LOOKUP, &error.to_string(), &then, now)
                {
                    emit(line);
                }
            }
            Ec2Report::Failed {
                error,
                retry_in: None,
            } => {
                self.count_error("ec2");
                let _ = self.failures.succeeded(EC2_LOOKUP, now);
                log::warn!("{error}; spot block and Capacity Block end dates are not checked");
            }
        }
    }

    /// Puts `lease` in force: its end becomes the lease deadline. A lease
    /// that is gone (`None`) keeps the last one: removing a tag is not a way
    /// to cancel a lease, and an unreadable tag must not cancel a drain.
    fn follow_lease(&mut self, lease: Option<Sourced<Lease>>) {
        let Some(lease) = lease else {
            return;
        };
        if self.lease.as_ref().map(|l| l.value) == Some(lease.value) {
            return;
        }
        let launched = self
            .state
            .first_launched_at
            .or(self.observed.launched_at)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let end = lease.value.end(launched);
        let previous_end = self.observed.lease_end.as_ref().map(|(at, _)| *at);
        match (previous_end, lease.value) {
            (Some(was), _) => log::info!(
                "lease moved: {} ({}): ends {} (was {})",
                lease.value,
                lease.origin,
                rfc3339(end),
                rfc3339(was)
            ),
            (None, Lease::Ends(_)) => {
                log::info!("lease ends {} ({})", rfc3339(end), lease.origin);
            }
            (None, Lease::LastsFromLaunch(_)) => log::info!(
                "lease of {} ({}): ends {}",
                lease.value,
                lease.origin,
                rfc3339(end)
            ),
        }
        self.observed.lease_end = Some((end, lease.origin.kind().to_owned()));
        self.lease = Some(lease);
    }

    /// Every `lease_refresh_interval`: `pendingTime` (a stop and start, or a
    /// hibernation, changes it) and the lease tags, from IMDS only: no AWS
    /// call while idle. A lease from the config file is not re-read.
    async fn refresh_lease_if_due(&mut self) {
        if Instant::now() < self.next_lease_refresh {
            return;
        }
        self.next_lease_refresh =
            Instant::now() + self.resolved.settings.lease_refresh_interval.value;
        let read = async {
            let identity = self.imds.fresh_identity().await?;
            let tags = if self.resolved.settings.lease_is_from_file() {
                None
            } else {
                self.imds.tags().await?
            };
            Ok::<_, SourceError>((identity, tags))
        };
        let (identity, tags) = match read.await {
            Ok(read) => read,
            Err(err) => {
                self.count_error("imds");
                let then = "keeping the lease and launch time known";
                let now = Instant::now().into_std();
                if let Some(line) = self
                    .failures
                    .failed(READING_LEASE, &err.to_string(), then, now)
                {
                    emit(line);
                }
                return;
            }
        };
        if let Some(line) = self
            .failures
            .succeeded(READING_LEASE, Instant::now().into_std())
        {
            emit(line);
        }
        if let Some(was) = self.observed.launched_at {
            if identity.pending_time != was {
                log::info!(
                    "pendingTime is now {} (was {}): the instance was started again",
                    rfc3339(identity.pending_time),
                    rfc3339(was)
                );
            }
        }
        self.observed.launched_at = Some(identity.pending_time);
        // Tags not in IMDS: moving a lease would need an AWS call; the lease
        // read at start stays.
        let Some(values) = tags else {
            return;
        };
        let tags = InstanceTags {
            values,
            channel: TagChannel::Imds,
        };
        let (lease, problems) = Settings::lease_from_tags(&tags);
        let problem = match (&lease, problems.first(), &self.lease) {
            (None, Some(p), _) => Some(format!(
                "ignoring instance tag {}: {}; keeping the lease known",
                p.key, p.reason
            )),
            (None, None, Some(_)) => {
                Some("the lease tags are gone; keeping the lease known".to_owned())
            }
            _ => None,
        };
        if problem.is_some() && problem != self.lease_problem {
            if let Some(text) = &problem {
                log::warn!("{text}");
            }
        }
        self.lease_problem = problem;
        self.follow_lease(lease);
    }

    /// A `stop` shutdown behaviour makes every power-off a stop: warned
    /// about once in the journal and kept for `blockwatch status`.
    fn note_shutdown_behavior(&mut self, read: Result<Option<String>, SourceError>) {
        self.state
            .warnings
            .retain(|w| !w.starts_with(SHUTDOWN_WARNING));
        match read {
            Ok(Some(behavior)) if behavior == "stop" => {
                let warning = format!(
                    "{SHUTDOWN_WARNING}: a power-off stops this instance instead of terminating it, and its volumes stay billed; launch with InstanceInitiatedShutdownBehavior=terminate (blockwatch-launch does) or change it with ec2:ModifyInstanceAttribute"
                );
                log::warn!("{warning}");
                self.state.warnings.push(warning);
            }
            Ok(Some(behavior)) => log::info!("instance-initiated shutdown behaviour: {behavior}"),
            Ok(None) => {}
            Err(err) => {
                self.count_error("ec2");
                log::warn!(
                    "{err}; cannot tell whether a power-off terminates this instance or only stops it"
                );
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

    /// Logs a failing notice source when it starts failing, a count at
    /// most every few minutes, and once when it recovers; not every second.
    fn note_notice_errors(&mut self, errors: Vec<NoticeError>) {
        let now = Instant::now().into_std();
        let failing_now: Vec<&'static str> = errors.iter().map(|e| e.source).collect();
        for err in errors {
            self.count_error(err.source);
            if err.failure == NoticeFailure::TokenRefused {
                // Healed at once by a fresh session, which says so itself.
                continue;
            }
            let then = match err.failure {
                NoticeFailure::Unreadable => "not acted upon; keeping its last known value",
                _ => "keeping its last known value",
            };
            let kind = notice_kind(err.source);
            if let Some(line) = self
                .failures
                .failed(&kind, &err.error.to_string(), then, now)
            {
                emit(line);
            }
        }
        for source in notices::SOURCES {
            if !failing_now.contains(&source) {
                if let Some(line) = self.failures.succeeded(&notice_kind(source), now) {
                    emit(line);
                }
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
        let aws = Arc::clone(&self.aws);
        match bounded(
            "ecs:ListTasks",
            aws.running_tasks(&self.cluster(), &container_instance),
        )
        .await
        {
            Ok(tasks) => {
                self.aws_worked(COUNTING);
                if self.observed.running_tasks != Some(tasks.len()) {
                    log::info!(CLUSTER = self.cluster().as_str(), PHASE = "draining"; "{} task(s) still running on {container_instance}", tasks.len());
                }
                self.observed.running_tasks = Some(tasks.len());
            }
            Err(err) => self.aws_failed(COUNTING, &err),
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
            let aws = Arc::clone(&self.aws);
            match bounded(
                "ecs:ListContainerInstances",
                aws.find_container_instance(&cluster, &self.resolved.instance_id),
            )
            .await
            {
                Ok(arn) => {
                    self.aws_worked(FINDING);
                    found = arn;
                }
                Err(err) => {
                    self.aws_failed(FINDING, &err);
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

    /// Counts a failed AWS activity, backs off, and logs it the first time
    /// and then as a count now and then.
    fn aws_failed(&mut self, activity: &str, err: &SourceError) {
        self.count_error("ecs");
        let wait = self.backoff.failed();
        let then = format!("retrying in {}", humantime::format_duration(wait));
        let now = Instant::now().into_std();
        if let Some(line) = self.failures.failed(activity, &err.to_string(), &then, now) {
            emit(line);
        }
    }

    fn aws_worked(&mut self, activity: &str) {
        if let Some(line) = self.failures.succeeded(activity, Instant::now().into_std()) {
            emit(line);
        }
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
                let activity = if draining { DRAINING } else { UNDRAINING };
                let aws = Arc::clone(&self.aws);
                match bounded(
                    "ecs:UpdateContainerInstancesState",
                    aws.set_draining(&self.cluster(), &container_instance, draining),
                )
                .await
                {
                    Ok(()) => {
                        self.backoff.succeeded();
                        self.aws_worked(activity);
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
                        self.aws_failed(activity, &err);
                    }
                }
            }
            Action::StopTasks(cause) => {
                let Some(container_instance) = self.container_instance().await else {
                    if self.backoff.ready() {
                        self.backoff.failed();
                    }
                    return;
                };
                let cluster = self.cluster();
                let reason = self.stop_reason(cause);
                let aws = Arc::clone(&self.aws);
                let result = match bounded(
                    "ecs:ListTasks",
                    aws.running_tasks(&cluster, &container_instance),
                )
                .await
                {
                    Ok(tasks) => bounded("ecs:StopTask", aws.stop_tasks(&cluster, &tasks, &reason))
                        .await
                        .map(|()| tasks.len()),
                    Err(err) => Err(err),
                };
                match result {
                    Ok(stopped) => {
                        self.backoff.succeeded();
                        self.aws_worked(STOPPING);
                        if let Some(drain) = self.state.drain.as_mut() {
                            match cause {
                                StopCause::Grace => drain.tasks_stopped_at = Some(now),
                                StopCause::LeaseEnded => drain.end_stop_at = Some(now),
                            }
                        }
                        // Count again soon: the power-off waits for them.
                        self.next_task_count = Instant::now();
                        self.log_decision(&format!(
                            "stopped {stopped} task(s) with reason {reason:?}"
                        ));
                    }
                    Err(err) => self.aws_failed(STOPPING, &err),
                }
            }
            Action::PowerOff => self.record_power_off(now).await,
        }
    }

    /// Records a power-off attempt before [`Self::run_power_off`] runs
    /// `poweroff_command`: a state the agent cannot write never allows a
    /// power-off it could repeat. It counts as done only once the command
    /// succeeded; a failure is retried with backoff (the core times it).
    async fn record_power_off(&mut self, now: OffsetDateTime) {
        // The drain-completed webhook was just sent: give it a chance.
        // Before the record, so that a SIGTERM while waiting leaves the
        // power-off to the next start.
        self.deliveries.settle(WEBHOOK_GRACE, "powering off").await;
        let why = self.power_off_cause(now);
        let Some(drain) = self.state.drain.as_mut() else {
            return;
        };
        drain.poweroff_attempts += 1;
        drain.poweroff_attempted_at = Some(now);
        let attempts = drain.poweroff_attempts;
        if !self.persist(now) {
            if let Some(drain) = self.state.drain.as_mut() {
                drain.poweroff_attempts -= 1;
                drain.poweroff_attempted_at = None;
            }
            let now = Instant::now().into_std();
            let unrecorded = "the power-off cannot be recorded in the state file";
            let then = "not powering off until it can";
            if let Some(line) = self
                .failures
                .failed(RECORDING_POWER_OFF, unrecorded, then, now)
            {
                emit(line);
            }
            return;
        }
        if let Some(line) = self
            .failures
            .succeeded(RECORDING_POWER_OFF, Instant::now().into_std())
        {
            emit(line);
        }
        let command = self.resolved.settings.poweroff_command.value.clone();
        if attempts == 1 {
            self.log_decision(&format!("{why}; powering off with {command:?}"));
        }
        self.power_off_recorded = Some((now, attempts));
    }

    /// Runs the power-off the tick recorded, and records its outcome. Not
    /// interrupted by SIGTERM (the loop sees it next), and bounded by
    /// [`poweroff::COMMAND_LIMIT`].
    async fn run_power_off(&mut self) {
        let Some((now, attempts)) = self.power_off_recorded.take() else {
            return;
        };
        let command = self.resolved.settings.poweroff_command.value.clone();
        match poweroff::run(&command).await {
            Ok(()) => {
                if let Some(drain) = self.state.drain.as_mut() {
                    drain.poweroff_at = Some(now);
                }
                if let Some(line) = self
                    .failures
                    .succeeded(POWERING_OFF, Instant::now().into_std())
                {
                    emit(line);
                }
                self.log_decision(&format!(
                    "power-off requested: {command:?} succeeded (attempt {attempts})"
                ));
                self.persist(now);
            }
            Err(err) => {
                self.count_error("poweroff");
                let then = format!(
                    "retrying in {}",
                    humantime::format_duration(poweroff_retry_after(attempts))
                );
                let now = Instant::now().into_std();
                if let Some(line) = self.failures.failed(POWERING_OFF, &err, &then, now) {
                    emit(line);
                }
            }
        }
    }

    /// Why the instance powers off now, for the journal.
    fn power_off_cause(&self, now: OffsetDateTime) -> String {
        let lease_end = self
            .observed
            .candidates(now, self.policy.drain_on_rebalance)
            .into_iter()
            .filter(|c| c.key.kind.is_lease())
            .map(|c| (c.at, c.key.kind))
            .min();
        match (self.state.phase, lease_end) {
            (Phase::Drained, Some((at, kind))) if now < at => {
                format!("drained before the {kind} ends at {}", rfc3339(at))
            }
            (Phase::Drained, Some((at, kind))) => {
                format!("the {kind} ended at {}; no task is left", rfc3339(at))
            }
            (Phase::Drained, None) => "drained".to_owned(),
            (_, Some((at, kind))) => format!(
                "the {kind} ended at {}; tasks still running had {} to stop",
                rfc3339(at),
                humantime::format_duration(crate::core::state::LEASE_END_STOP_WAIT)
            ),
            (_, None) => "the end has come".to_owned(),
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
            Action::StopTasks(cause) => {
                if let Some(drain) = self.state.drain.as_mut() {
                    match cause {
                        StopCause::Grace => drain.tasks_stopped_at = Some(now),
                        StopCause::LeaseEnded => drain.end_stop_at = Some(now),
                    }
                }
                format!(
                    "stop the remaining tasks with reason {:?}",
                    self.stop_reason(cause)
                )
            }
            Action::PowerOff => {
                if let Some(drain) = self.state.drain.as_mut() {
                    drain.poweroff_attempts += 1;
                    drain.poweroff_attempted_at = Some(now);
                    drain.poweroff_at = Some(now);
                }
                format!("run {:?}", self.resolved.settings.poweroff_command.value)
            }
        };
        self.log_decision(&format!("dry run, nothing changed: would {what}"));
    }

    fn stop_reason(&self, cause: StopCause) -> String {
        if cause == StopCause::LeaseEnded {
            let kind = self
                .state
                .drain
                .as_ref()
                .map(|d| d.reason.kind)
                .filter(|k| k.is_lease())
                .unwrap_or(crate::core::deadline::SourceKind::Lease);
            let ended = match kind {
                crate::core::deadline::SourceKind::CapacityBlock => "Capacity Block ended",
                _ => "lease ended",
            };
            return format!(
                "{STOP_REASON_PREFIX} {ended} (instance {})",
                self.resolved.instance_id
            );
        }
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

    fn report(&mut self, event: &Event, now: OffsetDateTime) {
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
            Event::DrainCanceled(cause) => (
                "drain-canceled",
                format!(
                    "drain canceled: {}; watching again: {described}",
                    match cause {
                        CancelCause::EventEnded => "its scheduled event is over".to_owned(),
                        CancelCause::DeadlineMoved => "its deadline moved later".to_owned(),
                        CancelCause::NewLife => format!(
                            "the instance was started again (pendingTime {}) after the drain began",
                            self.observed.launched_at.map(rfc3339).unwrap_or_default()
                        ),
                    }
                ),
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
                "drain_at": self.state.drain_at.map(rfc3339),
                "cause": match event {
                    Event::DrainCanceled(CancelCause::EventEnded) => Some("event-ended"),
                    Event::DrainCanceled(CancelCause::DeadlineMoved) => Some("deadline-moved"),
                    Event::DrainCanceled(CancelCause::NewLife) => Some("started-again"),
                    _ => None,
                },
                "at": rfc3339(now),
            });
            if self.dry_run() {
                log::info!(
                    "dry run: would POST {name} to webhook {}",
                    webhook::redacted(&url.value)
                );
            } else {
                let url = url.value.clone();
                self.deliveries.post(url, payload);
            }
        }
    }

    /// Writes the state file (and metrics); false when the state could not be saved.
    fn persist(&mut self, now: OffsetDateTime) -> bool {
        self.records.save(self.snapshot(now), &self.errors, now)
    }
}
