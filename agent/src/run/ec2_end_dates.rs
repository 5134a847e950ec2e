//! EC2's own end dates (legacy spot block, Capacity Block) and the shutdown
//! behaviour, asked on a task of their own so that a slow EC2 never delays
//! IMDS polling, `READY=1` or the first state file; and what the loop does
//! with their reports.

use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};

use super::agent::Agent;
use super::call_limit::bounded;
use super::clock::{shown, Clock};
use crate::actions::ecs::ContainerService;
use crate::host::entropy::random_u64;
use crate::sources::ec2::{Ec2Deadlines, InstanceCapacity};
use crate::sources::imds::IdentityDocument;
use crate::sources::{AwsFailure, CallError};
use blockwatch_core::backoff::Backoff;
use blockwatch_core::deadline::capacity_block_recheck_in;
use blockwatch_core::settings::Settings;
use blockwatch_core::time_text::rfc3339;

const EC2_LOOKUP_ATTEMPTS: u32 = 8;
/// Failed lookups are retried after up to 5 s, doubling to 5 min.
const EC2_RETRY_FIRST: Duration = Duration::from_secs(5);
const EC2_RETRY_MAX: Duration = Duration::from_secs(300);
/// How the shutdown-behaviour warning starts, in the journal and in status.
const SHUTDOWN_WARNING: &str = "instance-initiated shutdown behaviour is `stop`";
/// How the line starts when the shutdown behaviour may not be read.
const SHUTDOWN_UNKNOWN: &str = "instance-initiated shutdown behaviour unknown";
const EC2_LOOKUP: &str = "looking up EC2 end dates";

/// What the EC2 lookup task reports to the loop.
#[derive(Debug)]
pub(super) enum Ec2Report {
    Found(Ec2Deadlines),
    /// A Capacity Block's `EndDate`, asked again.
    CapacityBlock((OffsetDateTime, String)),
    /// `InstanceInitiatedShutdownBehavior`, read at start; after a failure
    /// `retry_in` says when it is asked again (`None`: given up).
    ShutdownBehavior {
        read: Result<Option<String>, CallError>,
        retry_in: Option<Duration>,
    },
    /// A failure; `retry_in` is `None` when the lookup gives up.
    Failed {
        error: CallError,
        retry_in: Option<Duration>,
    },
}

/// Starts the lookups with the AWS clients `aws` holds (the loop replaces
/// them when IMDS needs a fresh session); their reports come on the channel.
pub(super) fn spawn<A>(
    aws: watch::Receiver<Arc<A>>,
    identity: IdentityDocument,
    settings: &Settings,
) -> mpsc::UnboundedReceiver<Ec2Report>
where
    A: InstanceCapacity + Send + Sync + 'static,
{
    let (report, reports) = mpsc::unbounded_channel();
    if settings.powers_off() {
        let instance_id = identity.instance_id.clone();
        tokio::spawn(read_shutdown_behavior(
            aws.clone(),
            instance_id,
            report.clone(),
        ));
    }
    let refresh = settings.capacity_block_refresh_interval.value;
    tokio::spawn(look_up_deadlines(aws, identity, refresh, report));
    reports
}

/// When to ask again after failed attempt number `attempt` (from 1): only
/// after a transient failure and for [`EC2_LOOKUP_ATTEMPTS`] attempts in
/// all; `None` gives up.
fn next_attempt_in(
    error: &CallError,
    attempt: u32,
    backoff: &mut Backoff,
    now: Instant,
    random: u64,
) -> Option<Duration> {
    let transient = match error {
        CallError::Aws { kind, .. } => kind.is_retryable(),
        CallError::Imds { .. } => true,
    };
    (transient && attempt < EC2_LOOKUP_ATTEMPTS).then(|| backoff.failed(now, random))
}

/// EC2's end dates, asked at start and retried with backoff only after
/// transient failures; never fatal. Each attempt uses the current AWS
/// clients. A Capacity Block's end is then asked again on a schedule, since
/// a block can be extended.
async fn look_up_deadlines<A: InstanceCapacity>(
    aws: watch::Receiver<Arc<A>>,
    identity: IdentityDocument,
    capacity_block_refresh: Duration,
    report: mpsc::UnboundedSender<Ec2Report>,
) {
    let mut backoff = Backoff::new(EC2_RETRY_FIRST, EC2_RETRY_MAX);
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
        let retry_in = next_attempt_in(&error, attempt, &mut backoff, Instant::now(), random_u64());
        let _ = report.send(Ec2Report::Failed { error, retry_in });
        match retry_in {
            Some(wait) => tokio::time::sleep(wait).await,
            None => return,
        }
    }
}

/// Asks for the Capacity Block's `EndDate` every `refresh` (more often near
/// its end) for as long as the agent runs; a failure waits for the next turn.
async fn follow_capacity_block<A: InstanceCapacity>(
    aws: watch::Receiver<Arc<A>>,
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
/// Transient failures (credentials not loaded yet, throttling) are retried as
/// the EC2 lookups are.
async fn read_shutdown_behavior<A: InstanceCapacity>(
    aws: watch::Receiver<Arc<A>>,
    instance_id: String,
    report: mpsc::UnboundedSender<Ec2Report>,
) {
    let mut backoff = Backoff::new(EC2_RETRY_FIRST, EC2_RETRY_MAX);
    for attempt in 1..=EC2_LOOKUP_ATTEMPTS {
        let current = Arc::clone(&aws.borrow());
        let read = bounded(
            "ec2:DescribeInstanceAttribute",
            current.shutdown_behavior(&instance_id),
        )
        .await;
        let retry_in = match &read {
            Ok(_) => None,
            Err(error) => {
                next_attempt_in(error, attempt, &mut backoff, Instant::now(), random_u64())
            }
        };
        if report
            .send(Ec2Report::ShutdownBehavior { read, retry_in })
            .is_err()
        {
            return;
        }
        match retry_in {
            Some(wait) => tokio::time::sleep(wait).await,
            None => return,
        }
    }
}

impl<S: ContainerService, K: Clock + Clone> Agent<S, K> {
    /// Puts what the EC2 lookups found into the core's observations.
    pub(super) fn note_ec2_report(&mut self, report: Ec2Report) {
        let now = self.clock.instant();
        let books = &mut self.books;
        match report {
            Ec2Report::Found(found) => {
                books.reporter.worked(EC2_LOOKUP, now);
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
                books.observed.legacy_spot_block_end = found.legacy_spot_block_end;
                books.observed.capacity_block_end = found.capacity_block_end;
            }
            Ec2Report::CapacityBlock((end, id)) => {
                books.reporter.worked(EC2_LOOKUP, now);
                let known = books
                    .observed
                    .capacity_block_end
                    .as_ref()
                    .map(|(at, _)| *at);
                if known != Some(end) {
                    log::info!(
                        "Capacity Block {id}: EndDate is now {} (was {}); EC2 terminates 30 min earlier",
                        rfc3339(end),
                        known.map_or_else(|| "unknown".to_owned(), rfc3339)
                    );
                }
                books.observed.capacity_block_end = Some((end, id));
            }
            Ec2Report::ShutdownBehavior { read, retry_in } => {
                self.note_shutdown_behavior(read, retry_in);
            }
            Ec2Report::Failed {
                error,
                retry_in: Some(wait),
            } => {
                books.reporter.count_error("ec2");
                let then = format!("will ask again in {}", shown(wait));
                books
                    .reporter
                    .failed(EC2_LOOKUP, &error.to_string(), &then, now);
            }
            Ec2Report::Failed {
                error,
                retry_in: None,
            } => {
                books.reporter.count_error("ec2");
                books.reporter.forget_failures(EC2_LOOKUP, now);
                log::warn!("{error}; spot block and Capacity Block end dates are not checked");
            }
        }
    }

    /// A `stop` shutdown behaviour makes every power-off a stop: warned
    /// about once in the journal and kept for `blockwatch status`.
    fn note_shutdown_behavior(
        &mut self,
        read: Result<Option<String>, CallError>,
        retry_in: Option<Duration>,
    ) {
        let books = &mut self.books;
        books
            .state
            .warnings
            .retain(|w| !w.starts_with(SHUTDOWN_WARNING));
        match read {
            Ok(Some(behavior)) if behavior == "stop" => {
                let warning = format!(
                    "{SHUTDOWN_WARNING}: a power-off stops this instance instead of terminating it, and its volumes stay billed; launch with InstanceInitiatedShutdownBehavior=terminate (blockwatch-launch does) or change it with ec2:ModifyInstanceAttribute"
                );
                log::warn!("{warning}");
                books.state.warnings.push(warning);
            }
            Ok(Some(behavior)) => log::info!("instance-initiated shutdown behaviour: {behavior}"),
            Ok(None) => {}
            Err(CallError::Aws {
                kind: AwsFailure::Denied,
                detail,
                ..
            }) => {
                // The default policy leaves this read out (it cannot be
                // scoped to the instance itself): said once, not an error.
                log::warn!(
                    "{SHUTDOWN_UNKNOWN}: blockwatch may not read it (ec2:DescribeInstanceAttribute denied: {detail}), so it cannot tell whether a power-off terminates this instance or only stops it; going on"
                );
            }
            Err(err) => {
                books.reporter.count_error("ec2");
                match retry_in {
                    Some(wait) => log::warn!("{err}; will ask again in {}", shown(wait)),
                    None => log::warn!(
                        "{err}; cannot tell whether a power-off terminates this instance or only stops it"
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(kind: AwsFailure) -> CallError {
        CallError::Aws {
            api: "ec2:DescribeInstances",
            kind,
            detail: "scripted".into(),
        }
    }

    #[test]
    fn ec2_lookups_retry_transient_failures_with_a_jittered_capped_backoff_then_give_up() {
        let now = Instant::now();
        let throttled = failure(AwsFailure::Throttled);
        let mut backoff = Backoff::new(EC2_RETRY_FIRST, EC2_RETRY_MAX);
        let ceilings: Vec<u64> = (1..EC2_LOOKUP_ATTEMPTS)
            .map(|attempt| next_attempt_in(&throttled, attempt, &mut backoff, now, u64::MAX))
            .map(|wait| wait.unwrap().as_secs())
            .collect();
        assert_eq!(ceilings, [5, 10, 20, 40, 80, 160, 300]);
        let last = next_attempt_in(&throttled, EC2_LOOKUP_ATTEMPTS, &mut backoff, now, 0);
        assert_eq!(last, None, "gives up after {EC2_LOOKUP_ATTEMPTS} attempts");

        let mut backoff = Backoff::new(EC2_RETRY_FIRST, EC2_RETRY_MAX);
        let jittered = next_attempt_in(&throttled, 1, &mut backoff, now, u64::MAX / 2);
        assert_eq!(
            jittered.map(|w| w.as_millis()),
            Some(2499),
            "half the window"
        );

        for permanent in [AwsFailure::Denied, AwsFailure::Rejected] {
            let mut backoff = Backoff::new(EC2_RETRY_FIRST, EC2_RETRY_MAX);
            let wait = next_attempt_in(&failure(permanent), 1, &mut backoff, now, u64::MAX);
            assert_eq!(wait, None, "{permanent:?} is not retried");
        }
    }
}
