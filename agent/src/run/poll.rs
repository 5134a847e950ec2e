//! A tick's IMDS side: read the notices, start a fresh IMDS session when
//! IMDS keeps failing, and follow the lease tags; then the agent's step.

use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::sync::watch;

use super::agent::Agent;
use super::books::Books;
use super::clock::{whole_seconds, Clock};
use super::reporter::Reporter;
use crate::actions::ecs::ContainerService;
use crate::sources::aws::Aws;
use crate::sources::imds::{Imds, InstanceMetadata};
use crate::sources::notices::{self, NoticeError, NoticeFailure};
use crate::sources::CallError;
use blockwatch_core::origin::Sourced;
use blockwatch_core::settings::{Lease, Settings};
use blockwatch_core::tags::{InstanceTags, TagChannel};
use blockwatch_core::time_text::rfc3339;

/// Consecutive polls with IMDS failing before its client is built afresh
/// (at once when IMDS refuses our token).
const IMDS_RENEW_AFTER: u32 = 3;
const READING_LEASE: &str = "reading the lease tags";
const IMDS_SESSION: &str = "keeping an IMDS session";

#[derive(Debug)]
pub(super) struct Poll<K> {
    /// Replaced when IMDS needs a fresh session, and so are the AWS clients
    /// (`aws_updates`) whose credential chain uses it.
    imds: Imds,
    aws_updates: watch::Sender<Arc<Aws>>,
    /// Consecutive polls on which IMDS failed.
    imds_failing_polls: u32,
    clock: K,
    /// The lease in force (tags are read again every `lease_refresh`).
    lease: Option<Sourced<Lease>>,
    lease_refresh: Duration,
    lease_is_from_file: bool,
    next_lease_refresh: Instant,
    /// The last lease tags problem logged, so that it is logged once.
    lease_problem: Option<String>,
}

impl<K: Clock + Clone> Poll<K> {
    pub(super) fn new(
        imds: Imds,
        aws_updates: watch::Sender<Arc<Aws>>,
        settings: &Settings,
        clock: K,
    ) -> Self {
        let lease_refresh = settings.lease_refresh_interval.value;
        Self {
            imds,
            aws_updates,
            imds_failing_polls: 0,
            next_lease_refresh: clock.instant() + lease_refresh,
            clock,
            lease: None,
            lease_refresh,
            lease_is_from_file: settings.lease_is_from_file(),
            lease_problem: None,
        }
    }

    /// One poll: read the notices, decide, act, record.
    pub(super) async fn tick<S: ContainerService>(&mut self, agent: &mut Agent<S, K>) {
        let now = whole_seconds(self.clock.utc());
        let errors = notices::poll(&self.imds, &mut agent.books.observed, now).await;
        self.heal_imds(&errors, &mut agent.books.reporter);
        self.note_notice_errors(errors, &mut agent.books.reporter);
        self.refresh_lease_if_due(&mut agent.books).await;
        let now = agent.step().await;
        if std::mem::take(&mut agent.lease_look_wanted) {
            // The last look before a lease powers the instance off: the
            // tags again (a few IMDS GETs, no AWS call), then the same
            // decision again.
            self.refresh_lease(&mut agent.books).await;
            agent.books.observed.lease_confirmed_at = Some(now);
            agent.decide_and_act(now).await;
        }
        agent.check_ecs_agent().await;
    }

    /// aws-config's IMDS client keeps its session token for hours and
    /// retries a 401 with the same token, so a token IMDS has forgotten would
    /// blind the agent. A refused token, or IMDS failing on several polls in
    /// a row, starts a fresh session: a new IMDS client, and new AWS clients
    /// whose credential chain uses it.
    fn heal_imds(&mut self, errors: &[NoticeError], reporter: &mut Reporter) {
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
        reporter.failed(IMDS_SESSION, &error, then, self.clock.instant());
        self.imds = self.imds.renewed();
        self.aws_updates
            .send_replace(Arc::new(Aws::new(self.imds.clone())));
        self.imds_failing_polls = 0;
    }

    /// Logs a failing notice source when it starts failing, a count at
    /// most every few minutes, and once when it recovers; not every second.
    fn note_notice_errors(&mut self, errors: Vec<NoticeError>, reporter: &mut Reporter) {
        let now = self.clock.instant();
        let failing_now: Vec<&'static str> = errors.iter().map(|e| e.source).collect();
        for err in errors {
            reporter.count_error(err.source);
            if err.failure == NoticeFailure::TokenRefused {
                // Healed at once by a fresh session, which says so itself.
                continue;
            }
            let then = match err.failure {
                NoticeFailure::Unreadable => "not acted upon; keeping its last known value",
                _ => "keeping its last known value",
            };
            reporter.failed(&notice_kind(err.source), &err.error.to_string(), then, now);
        }
        for source in notices::SOURCES {
            if !failing_now.contains(&source) {
                reporter.worked(&notice_kind(source), now);
            }
        }
    }

    /// Puts `lease` in force: its end becomes the lease deadline. A lease
    /// that is gone (`None`) keeps the last one: removing a tag is not a way
    /// to cancel a lease, and an unreadable tag must not cancel a drain.
    pub(super) fn follow_lease(&mut self, lease: Option<Sourced<Lease>>, books: &mut Books) {
        let Some(lease) = lease else {
            return;
        };
        if self.lease.as_ref().map(|l| l.value) == Some(lease.value) {
            return;
        }
        let launched = books
            .state
            .first_launched_at
            .or(books.observed.launched_at)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let end = lease.value.end(launched);
        let previous_end = books.observed.lease_end.as_ref().map(|(at, _)| *at);
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
        books.observed.lease_end = Some((end, lease.origin.kind().to_owned()));
        self.lease = Some(lease);
    }

    /// Every `lease_refresh_interval`: `pendingTime` (a stop and start, or a
    /// hibernation, changes it) and the lease tags, from IMDS only: no AWS
    /// call while idle. A lease from the config file is not re-read.
    async fn refresh_lease_if_due(&mut self, books: &mut Books) {
        if self.clock.instant() < self.next_lease_refresh {
            return;
        }
        self.next_lease_refresh = self.clock.instant() + self.lease_refresh;
        self.refresh_lease(books).await;
    }

    /// Reads `pendingTime` and the lease tags now. A failed read keeps what
    /// is known (logged).
    async fn refresh_lease(&mut self, books: &mut Books) {
        let read = async {
            let identity = self.imds.fresh_identity().await?;
            let tags = if self.lease_is_from_file {
                None
            } else {
                self.imds.tags().await?
            };
            Ok::<_, CallError>((identity, tags))
        };
        let (identity, tags) = match read.await {
            Ok(read) => read,
            Err(err) => {
                books.reporter.count_error("imds");
                let then = "keeping the lease and launch time known";
                let now = self.clock.instant();
                books
                    .reporter
                    .failed(READING_LEASE, &err.to_string(), then, now);
                return;
            }
        };
        books.reporter.worked(READING_LEASE, self.clock.instant());
        if let Some(was) = books.observed.launched_at {
            if identity.pending_time != was {
                log::info!(
                    "pendingTime is now {} (was {}): the instance was started again",
                    rfc3339(identity.pending_time),
                    rfc3339(was)
                );
            }
        }
        books.observed.launched_at = Some(identity.pending_time);
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
        self.follow_lease(lease, books);
    }
}

/// `reading spot notices`, as failures of a notice source are called.
fn notice_kind(source: &str) -> String {
    format!("reading {source} notices")
}
