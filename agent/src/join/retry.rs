//! `join --retry-for`: the join again and again, with [`JoinRetry`]'s
//! backoff, until it succeeds, fails for good, or the time is up.

use std::future::Future;
use std::time::{Duration, Instant};

use super::{join, JoinRequest};
use crate::exit::AgentError;
use crate::host::entropy::random_u64;
use crate::sources::aws::{Aws, AwsTimeouts};
use crate::sources::imds::Imds;
use blockwatch_core::backoff::JoinRetry;

/// Time, randomness and waiting as the retry loop sees them, so that a unit
/// test runs the loop without waiting.
trait RetryClock {
    fn now(&self) -> Instant;
    /// A uniformly random number, for jitter.
    fn random(&self) -> u64;
    fn sleep(&self, wait: Duration) -> impl Future<Output = ()>;
}

/// The machine's clock and tokio's timers.
#[derive(Debug, Clone, Copy, Default)]
struct SystemRetryClock;

impl RetryClock for SystemRetryClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn random(&self) -> u64 {
        random_u64()
    }
    fn sleep(&self, wait: Duration) -> impl Future<Output = ()> {
        tokio::time::sleep(wait)
    }
}

/// Joins; transient failures are retried with backoff for `retry_for`.
///
/// Nothing hangs the join: every AWS call has attempt and operation
/// timeouts fitted to `retry_for`, and each attempt as a whole is cut off one
/// operation timeout after the end of `retry_for`, so the join ends by then.
pub async fn join_retrying(request: &JoinRequest, retry_for: Duration) -> Result<(), AgentError> {
    let timeouts = if retry_for.is_zero() {
        AwsTimeouts::DEFAULT
    } else {
        AwsTimeouts::within(retry_for)
    };
    retry(retry_for, timeouts.operation, &SystemRetryClock, |budget| {
        attempt(request, retry_for, timeouts, budget)
    })
    .await
}

/// One join with fresh clients, cut off after `budget`.
async fn attempt(
    request: &JoinRequest,
    retry_for: Duration,
    timeouts: AwsTimeouts,
    budget: Duration,
) -> Result<(), AgentError> {
    // Fresh clients each attempt: a failed IMDS session is not reused.
    let imds = Imds::new();
    let aws = Aws::with_timeouts(imds.clone(), timeouts);
    // With --retry-for the retry loop is the one retry layer (jittered):
    // a fleet's throttled joins then cost one request per attempt.
    let aws = if retry_for.is_zero() {
        aws
    } else {
        aws.single_attempt()
    };
    let attempt = join(request, &imds, &aws, &aws, time::OffsetDateTime::now_utc());
    match tokio::time::timeout(budget, attempt).await {
        Ok(result) => result.map(|_| ()),
        Err(_) => Err(AgentError::TimedOut {
            what: "join attempt",
            after: budget,
        }),
    }
}

/// Runs `attempt` until it succeeds, fails terminally, or `retry_for` is
/// spent; a transient failure waits [`JoinRetry`]'s schedule first.
/// `attempt` gets its budget: the time left plus `operation_timeout`, since
/// the calls' own timeouts should end an attempt first, with their cause.
async fn retry<C, A, F>(
    retry_for: Duration,
    operation_timeout: Duration,
    clock: &C,
    mut attempt: A,
) -> Result<(), AgentError>
where
    C: RetryClock,
    A: FnMut(Duration) -> F,
    F: Future<Output = Result<(), AgentError>>,
{
    let started = clock.now();
    let deadline = started + retry_for;
    let mut schedule = JoinRetry::new(retry_for);
    loop {
        let budget = deadline.saturating_duration_since(clock.now()) + operation_timeout;
        let err = match attempt(budget).await {
            Ok(()) => return Ok(()),
            Err(err) if err.is_transient() => err,
            Err(err) => return Err(err),
        };
        let left = deadline.saturating_duration_since(clock.now());
        if left.is_zero() {
            return if retry_for.is_zero() {
                Err(err)
            } else {
                Err(AgentError::GaveUp {
                    after: clock.now().saturating_duration_since(started),
                    last: Box::new(err),
                })
            };
        }
        // Jittered: a fleet booting at once must not retry in lockstep.
        let wait = schedule.failed(err.is_throttled(), clock.now(), clock.random(), left);
        if err.is_throttled() {
            log::warn!(
                "{err}; throttled: retrying in {} (spread over {} so that a fleet does not retry at once)",
                humantime::format_duration(wait),
                humantime::format_duration(schedule.throttled_window())
            );
        } else {
            log::warn!("{err}; retrying in {}", humantime::format_duration(wait));
        }
        clock.sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use super::*;
    use crate::sources::{AwsFailure, CallError};

    const RETRY_FOR: Duration = Duration::from_secs(300);
    const OPERATION: Duration = Duration::from_secs(30);

    /// Time that moves only when the loop sleeps; the jitter always picks
    /// the top of its window, so the waits are the schedule's ceilings.
    struct FakeClock {
        now: Cell<Instant>,
        slept: RefCell<Vec<Duration>>,
    }

    impl FakeClock {
        fn new() -> Self {
            Self {
                now: Cell::new(Instant::now()),
                slept: RefCell::new(Vec::new()),
            }
        }
        fn slept(&self) -> Vec<Duration> {
            self.slept.borrow().clone()
        }
    }

    impl RetryClock for FakeClock {
        fn now(&self) -> Instant {
            self.now.get()
        }
        fn random(&self) -> u64 {
            u64::MAX
        }
        fn sleep(&self, wait: Duration) -> impl Future<Output = ()> {
            self.now.set(self.now.get() + wait);
            self.slept.borrow_mut().push(wait);
            std::future::ready(())
        }
    }

    fn aws(kind: AwsFailure, detail: &str) -> AgentError {
        AgentError::Source(CallError::Aws {
            api: "DescribeComputeEnvironments",
            kind,
            detail: detail.to_owned(),
        })
    }

    /// Runs the loop over answers taken in turn (the last one repeats); how
    /// many attempts were made, and the result.
    async fn run(
        clock: &FakeClock,
        retry_for: Duration,
        answers: Vec<fn() -> Result<(), AgentError>>,
    ) -> (usize, Result<(), AgentError>) {
        let attempts = Cell::new(0_usize);
        let result = retry(retry_for, OPERATION, clock, |_budget| {
            let n = attempts.get();
            attempts.set(n + 1);
            let answer = answers[n.min(answers.len() - 1)];
            std::future::ready(answer())
        })
        .await;
        (attempts.get(), result)
    }

    #[tokio::test]
    async fn gives_up_after_retry_for_with_the_last_error() {
        let clock = FakeClock::new();
        let started = clock.now();
        let (attempts, result) = run(
            &clock,
            RETRY_FOR,
            vec![|| Err(aws(AwsFailure::Transient, "first")), || {
                Err(aws(AwsFailure::Transient, "last"))
            }],
        )
        .await;
        let Err(AgentError::GaveUp { after, last }) = result else {
            panic!("expected GaveUp, got {result:?}");
        };
        assert!(last.to_string().contains("last"), "{last}");
        assert_eq!(after, RETRY_FOR);
        assert_eq!(clock.now().duration_since(started), RETRY_FOR);
        assert!(attempts > 2, "{attempts} attempts");
        // 1 s, 2 s, 4 s ... up to 30 s, the last wait cut to what is left.
        let slept = clock.slept();
        assert_eq!(slept[..3], [1, 2, 4].map(Duration::from_secs));
        assert!(slept.iter().all(|wait| *wait <= JoinRetry::ERROR_MAX));
    }

    #[tokio::test]
    async fn without_retry_for_the_error_is_returned_as_is() {
        let clock = FakeClock::new();
        let (attempts, result) = run(
            &clock,
            Duration::ZERO,
            vec![|| Err(aws(AwsFailure::Transient, "down"))],
        )
        .await;
        assert_eq!(attempts, 1);
        assert!(matches!(result, Err(AgentError::Source(_))), "{result:?}");
        assert!(clock.slept().is_empty());
    }

    #[tokio::test]
    async fn a_terminal_error_stops_at_once() {
        let clock = FakeClock::new();
        let (attempts, result) = run(
            &clock,
            RETRY_FOR,
            vec![|| Err(aws(AwsFailure::Transient, "not yet")), || {
                Err(aws(AwsFailure::Denied, "no permission"))
            }],
        )
        .await;
        assert_eq!(attempts, 2);
        assert!(matches!(
            result,
            Err(AgentError::Source(CallError::Aws {
                kind: AwsFailure::Denied,
                ..
            }))
        ));
        assert_eq!(clock.slept(), [JoinRetry::ERROR_FIRST]);
    }

    #[tokio::test]
    async fn a_throttled_error_waits_the_throttled_schedule() {
        // Long enough that the throttled schedule is not shortened to an
        // eighth of it.
        let clock = FakeClock::new();
        let (attempts, result) = run(
            &clock,
            Duration::from_secs(600),
            vec![
                || Err(aws(AwsFailure::Throttled, "rate exceeded")),
                || Err(aws(AwsFailure::Throttled, "rate exceeded")),
                || Ok(()),
            ],
        )
        .await;
        assert_eq!(attempts, 3);
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(
            clock.slept(),
            [JoinRetry::THROTTLED_FIRST, JoinRetry::THROTTLED_FIRST * 2]
        );
    }

    #[tokio::test]
    async fn each_attempt_may_run_to_one_operation_timeout_past_the_end() {
        let clock = FakeClock::new();
        let budgets = RefCell::new(Vec::new());
        let result = retry(RETRY_FOR, OPERATION, &clock, |budget| {
            budgets.borrow_mut().push(budget);
            let answer = if budgets.borrow().len() < 2 {
                Err(aws(AwsFailure::Transient, "down"))
            } else {
                Ok(())
            };
            std::future::ready(answer)
        })
        .await;
        assert!(result.is_ok());
        let second = RETRY_FOR - JoinRetry::ERROR_FIRST + OPERATION;
        assert_eq!(*budgets.borrow(), [RETRY_FOR + OPERATION, second]);
    }
}
