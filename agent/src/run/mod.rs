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
//!
//! The parts, one concern each:
//! - [`service`]: SIGTERM, SIGINT and the systemd watchdog, served around
//!   every tick;
//! - [`poll`]: a tick's IMDS side: the notices, a fresh IMDS session when
//!   IMDS fails, the lease tags;
//! - [`agent`]: a tick's decision: the pure core decides, the state is
//!   recorded, events are reported, actions are executed;
//! - [`executor`]: the core's actions over a [`ContainerService`], with the
//!   container instance's ARN cache and the one backoff; [`power_off`] is its
//!   persist-first power-off;
//! - [`reporter`]: journal lines, webhook events and error counts;
//! - [`store`]: the state file and the metrics, and the deadline files
//!   jobs read;
//! - [`ec2_end_dates`]: EC2's own end dates, on a task of their own.
//!
//! What they share has a home of its own, so that no part imports from
//! this module (a test keeps it so, and keeps the parts free of import
//! cycles): [`books`] (what the agent knows and keeps), [`clock`], [`node`],
//! [`call_limit`] and [`request`]; [`claim`] takes the state directory
//! before `run` starts.
//!
//! [`ContainerService`]: crate::actions::ecs::ContainerService

mod agent;
mod books;
mod call_limit;
mod checkpoint_signal;
mod claim;
mod clock;
mod ec2_end_dates;
mod executor;
mod lifecycle;
mod node;
mod poll;
mod power_off;
mod reporter;
mod request;
mod service;
mod store;

#[cfg(test)]
mod fakes;
#[cfg(test)]
mod layering_tests;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::actions::docker::DockerEngine;
use crate::actions::ecs::{Ecs, Introspection};
use crate::actions::webhook::Deliveries;
use crate::exit::AgentError;
use crate::host::state_dir;
use crate::join::{resolve, Standing, Unjoined};
use crate::sources::aws::Aws;
use crate::sources::imds::Imds;
use blockwatch_core::deadline::Observations;
use blockwatch_core::settings::{OnLeaseEnd, Settings};

use agent::Agent;
use books::Books;
pub use claim::claim_state;
use poll::Poll;
use service::{Served, Service, Wakeup};
use store::Store;

pub use crate::host::job_deadline_files::DEFAULT_DEADLINE_DIR;
pub use blockwatch_core::decision::STOP_REASON_PREFIX;
pub use call_limit::AWS_CALL_LIMIT;
pub use clock::{Clock, SystemClock};
pub use node::Node;
use reporter::WEBHOOK_GRACE;
pub use request::RunRequest;

/// Says loudly, once, that `run` goes on without a cluster and what it
/// still enforces.
fn log_degraded(node: &Node, unjoined: &Unjoined) {
    let settings = if matches!(unjoined.reason, AgentError::ConfigFile(_)) {
        "the built-in defaults"
    } else {
        "the config file's settings"
    };
    let enforced = match unjoined.settings.on_lease_end.value {
        OnLeaseEnd::Poweroff => {
            "only the lease end (instance tags, the config, or the Capacity Block end) is enforced: power-off at the end"
        }
        OnLeaseEnd::None => {
            "and on_lease_end = \"none\": nothing will end this instance"
        }
    };
    let again = if unjoined.reason.is_transient() {
        "; asking again now and then, and starting again joined once it resolves"
    } else {
        ""
    };
    log::error!(
        INSTANCE_ID = node.instance_id.as_str();
        "DEGRADED: {}; running without a cluster, with {settings}: no ECS drain, no job stop; {enforced}{again}",
        node.degraded.as_deref().unwrap_or_default()
    );
}

pub async fn run(request: &RunRequest, imds: Imds) -> Result<(), AgentError> {
    let mut service = Service::new()?;
    let aws = Arc::new(Aws::new(imds.clone()));
    let Some(standing) = start_up(&mut service, request, &imds, &aws).await? else {
        return Ok(());
    };
    let (identity, settings, node) = match &standing {
        Standing::Joined(resolved) => (
            resolved.identity.clone(),
            resolved.settings.clone(),
            Node::of(resolved),
        ),
        Standing::Unjoined(unjoined) => (
            unjoined.identity.clone(),
            unjoined.settings.clone(),
            Node::unjoined(unjoined),
        ),
    };
    let identity = identity.ok_or_else(|| AgentError::Internal("no identity document".into()))?;
    if let Standing::Unjoined(unjoined) = &standing {
        log_degraded(&node, unjoined);
    }
    // A dry run's made-up phases never reach the monitoring.
    let metrics_file = settings
        .metrics_file
        .as_ref()
        .filter(|_| !settings.dry_run.value)
        .map(|p| p.value.clone());
    let (records, mut state) =
        state_dir::Records::open(&request.state_dir, &identity.instance_id, metrics_file)?;
    // A lease duration counts from the first launch, not from a restart
    // after a stop.
    state.first_launched_at.get_or_insert(identity.pending_time);
    let observed = Observations {
        launched_at: Some(identity.pending_time),
        ..Observations::default()
    };
    // One HTTP client for the ECS agent's introspection API and the webhook;
    // each request sets its own timeout.
    let http = crate::host::http::client()
        .map_err(|e| AgentError::Internal(format!("cannot build the HTTP client: {e}")))?;
    let books = Books::new(
        &settings,
        &node,
        Store::new(records, &node).with_deadline_files(request.deadline_dir.clone()),
        state,
        observed,
        Deliveries::new(http.clone()),
    );
    let (aws_updates, current_aws) = watch::channel(aws);
    let introspection = Introspection::new(http, request.introspection_url.clone());
    let ecs = Ecs::new(
        current_aws.clone(),
        introspection,
        checkpoint_docker(&settings),
    );
    let url = request.introspection_url.clone();
    let mut agent = Agent::new(books, &settings, &node, ecs, SystemClock, url);
    let rejoin_imds = imds.clone();
    let mut poll = Poll::new(imds, aws_updates, &settings, SystemClock);
    poll.follow_lease(settings.lease.clone(), &mut agent.books);
    let mut ec2_reports = ec2_end_dates::spawn(current_aws, identity, &settings);

    let interval = settings.poll_interval.value.max(Duration::from_millis(100));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Degraded by a transient failure: asked again, and restarted joined.
    let mut rejoin = match &standing {
        Standing::Unjoined(unjoined) if unjoined.reason.is_transient() => {
            Some(Rejoin::new(rejoin_imds))
        }
        _ => None,
    };
    loop {
        match service.wait(&mut ticker, &mut ec2_reports).await {
            Wakeup::Tick => {}
            Wakeup::Message(report) => {
                agent.note_ec2_report(report);
                continue;
            }
            Wakeup::Stop => break,
        }
        if let Served::Stopped = service.serve(Box::pin(poll.tick(&mut agent))).await {
            break;
        }
        // Outside `serve`: the power-off makes systemd send SIGTERM, which
        // must not drop the command's outcome before it is recorded; the
        // watchdog is fed while the command runs.
        let stop_asked = service.finish(agent.run_power_off()).await;
        let status = agent.record_tick().await;
        service.notifier.tick(&status);
        if stop_asked {
            break;
        }
        if let Some(rejoin) = rejoin.as_mut() {
            match service.serve(Box::pin(rejoin.try_again(request))).await {
                Served::Done(None) => {}
                Served::Done(Some(joined)) => {
                    shut_down(&mut service, &mut agent.books.reporter.deliveries, request).await;
                    return Err(joined);
                }
                Served::Stopped => break,
            }
        }
    }
    shut_down(&mut service, &mut agent.books.reporter.deliveries, request).await;
    Ok(())
}

/// The first wait before a degraded `run` asks again; it doubles to
/// [`REJOIN_MAX_WAIT`].
const REJOIN_FIRST_WAIT: Duration = Duration::from_secs(5);
const REJOIN_MAX_WAIT: Duration = Duration::from_secs(120);

/// A `run` degraded by a transient failure asks for its cluster again now
/// and then; once it resolves, `run` exits (75) for systemd to start it
/// again joined.
#[derive(Debug)]
struct Rejoin {
    imds: Imds,
    wait: Duration,
    next: tokio::time::Instant,
}

impl Rejoin {
    fn new(imds: Imds) -> Self {
        Self {
            imds,
            wait: REJOIN_FIRST_WAIT,
            next: tokio::time::Instant::now() + REJOIN_FIRST_WAIT,
        }
    }

    /// When due, resolves again; the error to exit with once joined.
    async fn try_again(&mut self, request: &RunRequest) -> Option<AgentError> {
        let now = tokio::time::Instant::now();
        if now < self.next {
            return None;
        }
        self.wait = (self.wait * 2).min(REJOIN_MAX_WAIT);
        self.next = now + self.wait;
        let known = state_dir::read_join_record(&request.state_dir)
            .ok()
            .flatten();
        let options = request.resolve_options(known.as_ref(), false);
        let aws = Aws::new(self.imds.clone());
        match resolve(options, &self.imds, &aws, &aws).await {
            Ok(Standing::Joined(resolved)) => Some(AgentError::Rejoined {
                cluster: resolved.cluster.to_string(),
            }),
            Ok(Standing::Unjoined(_)) => None,
            Err(err) => {
                log::warn!(
                    "still degraded: {err}; asking again in {}",
                    humantime::format_duration(self.wait)
                );
                None
            }
        }
    }
}

/// Resolves who we are and our settings, serving signals meanwhile; `None`
/// when told to stop first. A failure that retrying cannot mend gives
/// [`Standing::Unjoined`]: `run` then goes on degraded.
async fn start_up(
    service: &mut Service,
    request: &RunRequest,
    imds: &Imds,
    aws: &Aws,
) -> Result<Option<Standing>, AgentError> {
    let known = state_dir::read_join_record(&request.state_dir).unwrap_or_else(|err| {
        log::warn!("ignoring the join record: {err}");
        None
    });
    let options = request.resolve_options(known.as_ref(), true);
    match service
        .serve(Box::pin(resolve(options, imds, aws, aws)))
        .await
    {
        Served::Done(resolved) => Ok(Some(resolved?)),
        Served::Stopped => {
            log::info!("stopping before the start-up finished");
            service.notifier.stopping();
            Ok(None)
        }
    }
}

/// Says where the state is kept, and gives webhook deliveries in flight a
/// little time (a second SIGTERM drops them).
async fn shut_down(service: &mut Service, deliveries: &mut Deliveries, request: &RunRequest) {
    log::info!(
        "stopping; state kept in {}",
        state_dir::state_path(&request.state_dir).display()
    );
    service.notifier.stopping();
    let stopping = "blockwatch is stopping";
    if let Served::Stopped = service
        .serve(deliveries.settle(WEBHOOK_GRACE, stopping))
        .await
    {
        deliveries.abandon("blockwatch was told again to stop");
    }
}

/// Where checkpoint signals go (`DOCKER_HOST`, else Docker's default
/// socket). With `checkpoint_lead` set, whether Docker answers is said once
/// at start, in the background: a missing Docker changes nothing else.
fn checkpoint_docker(settings: &Settings) -> Result<DockerEngine, String> {
    let docker = DockerEngine::from_env().map_err(|e| e.to_string());
    if settings.checkpoint_lead.is_none() {
        return docker;
    }
    match &docker {
        Ok(engine) => {
            let engine = engine.clone();
            tokio::spawn(async move {
                match engine.ping().await {
                    Ok(()) => log::info!(
                        "checkpoint signals go through Docker at {}: it answers",
                        engine.endpoint()
                    ),
                    Err(err) => log::warn!(
                        "checkpoint_lead is set, but {err}; jobs get no checkpoint signal while it cannot be reached (the rest of an end goes on as before)"
                    ),
                }
            });
        }
        Err(why) => log::warn!(
            "checkpoint_lead is set, but {why}; jobs get no checkpoint signal (the rest of an end goes on as before)"
        ),
    }
    docker
}
