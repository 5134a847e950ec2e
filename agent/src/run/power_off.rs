//! The power-off: an attempt is recorded before its command runs, so a
//! restart sees every attempt; it counts as done only once the command
//! succeeded, and a failure is retried when the core says so
//! (`poweroff_retry_after`). An attempt that cannot be written to disk (a
//! full or read-only disk) still runs: its retry schedule is kept in memory
//! and the failure logged. A second power-off on a host going away is
//! harmless; an instance that bills forever is not.
//!
//! In two halves: the tick records the attempt ([`Executor::act`] with
//! `PowerOff`), and the loop runs the command after the tick, outside the
//! SIGTERM-cancelable part ([`Executor::run_power_off`]): the power-off
//! makes systemd send SIGTERM, which must not drop the command's outcome.

use time::OffsetDateTime;

use super::books::Books;
use super::clock::Clock;
use super::executor::Executor;
use super::reporter::WEBHOOK_GRACE;
use crate::actions::ecs::ContainerService;
use crate::actions::shutdown_command;
use blockwatch_core::decision::{poweroff_retry_after, record, Outcome, Phase};
use blockwatch_core::time_text::rfc3339;

const RECORDING_POWER_OFF: &str = "recording the power-off";
const POWERING_OFF: &str = "powering off";

impl<S: ContainerService, K: Clock> Executor<S, K> {
    /// Records a power-off attempt, for [`Self::run_power_off`] to run.
    pub(super) async fn record_power_off(
        &mut self,
        now: OffsetDateTime,
        books: &mut Books,
    ) -> Option<Outcome> {
        // The drain-completed webhook was just sent: give it a chance.
        // Before the record, so that a SIGTERM while waiting leaves the
        // power-off to the next start.
        books
            .reporter
            .deliveries
            .settle(WEBHOOK_GRACE, "powering off")
            .await;
        let why = power_off_cause(now, books);
        books.state.drain.as_ref()?;
        record(&mut books.state, Outcome::PowerOffStarted, now);
        let attempts = books
            .state
            .drain
            .as_ref()
            .map_or(1, |d| d.poweroff_attempts);
        if books.persist(now).await {
            books
                .reporter
                .worked(RECORDING_POWER_OFF, self.clock.instant());
        } else {
            let unrecorded = "the power-off attempt cannot be recorded in the state file";
            let then = "powering off all the same (the retry schedule is kept in memory)";
            books
                .reporter
                .failed(RECORDING_POWER_OFF, unrecorded, then, self.clock.instant());
        }
        if attempts == 1 {
            let command = &self.poweroff_command;
            books.decision(&format!("{why}; powering off with {command:?}"));
        }
        self.power_off_recorded = Some((now, attempts));
        // Recorded here already: the agent writes nothing more for it.
        None
    }

    /// Runs the power-off the tick recorded, and records its outcome.
    /// Bounded by [`poweroff::COMMAND_LIMIT`].
    pub(super) async fn run_power_off(&mut self, books: &mut Books) {
        let Some((now, attempts)) = self.power_off_recorded.take() else {
            return;
        };
        let command = &self.poweroff_command;
        match shutdown_command::run(command).await {
            Ok(()) => {
                record(&mut books.state, Outcome::PoweredOff, now);
                books.reporter.worked(POWERING_OFF, self.clock.instant());
                books.decision(&format!(
                    "power-off requested: {command:?} succeeded (attempt {attempts})"
                ));
                books.persist(now).await;
            }
            Err(err) => {
                books.reporter.count_error("poweroff");
                let then = format!(
                    "retrying in {}",
                    humantime::format_duration(poweroff_retry_after(attempts))
                );
                books
                    .reporter
                    .failed(POWERING_OFF, &err, &then, self.clock.instant());
            }
        }
    }
}

/// Why the instance powers off now, for the journal.
fn power_off_cause(now: OffsetDateTime, books: &Books) -> String {
    let lease_end = books
        .observed
        .candidates(now, books.policy.draining())
        .into_iter()
        .filter(|c| c.key.kind.is_lease())
        .map(|c| (c.at, c.key.kind))
        .min();
    let stop_wait = humantime::format_duration(books.policy.stop_wait());
    if !books.policy.joined {
        return match lease_end {
            Some((at, kind)) => format!(
                "the {kind} ended at {} (not joined: nothing was drained or stopped)",
                rfc3339(at)
            ),
            None => "the end has come (not joined: nothing was drained or stopped)".to_owned(),
        };
    }
    match (books.state.phase, lease_end) {
        (Phase::Drained, Some((at, kind))) if now < at => {
            format!("drained before the {kind} ends at {}", rfc3339(at))
        }
        (Phase::Drained, Some((at, kind))) => {
            format!("the {kind} ended at {}; no task is left", rfc3339(at))
        }
        (Phase::Drained, None) => "drained".to_owned(),
        (Phase::Stopped, Some((at, kind))) if now < at => format!(
            "the tasks stopped for the {kind} ending at {} are gone or had their {stop_wait}",
            rfc3339(at)
        ),
        (Phase::Stopped, Some((at, kind))) => format!(
            "the {kind} ended at {}; the tasks stopped for it are gone or had their {stop_wait}",
            rfc3339(at)
        ),
        (Phase::Stopped, None) => format!("the stopped tasks are gone or had their {stop_wait}"),
        (_, Some((at, kind))) => format!(
            "the {kind} ended at {}; what still runs could not be stopped or seen in time",
            rfc3339(at)
        ),
        (_, None) => "the end has come".to_owned(),
    }
}
