//! The persist-first power-off: an attempt is on disk before its command
//! runs, so a state the agent cannot write never allows a power-off it could
//! repeat, and a restart sees every attempt. An attempt counts as done only
//! once the command succeeded; a failure is retried when the core says so
//! (`poweroff_retry_after`).
//!
//! In two halves: the tick records the attempt ([`Executor::act`] with
//! `PowerOff`), and the loop runs the command after the tick, outside the
//! SIGTERM-cancelable part ([`Executor::run_power_off`]): the power-off
//! makes systemd send SIGTERM, which must not drop the command's outcome.

use time::OffsetDateTime;

use super::agent::Books;
use super::executor::Executor;
use super::{Clock, WEBHOOK_GRACE};
use crate::actions::ecs::ContainerService;
use crate::actions::poweroff;
use crate::core::config::rfc3339;
use crate::core::state::{poweroff_retry_after, Phase, LEASE_END_STOP_WAIT};

const RECORDING_POWER_OFF: &str = "recording the power-off";
const POWERING_OFF: &str = "powering off";

impl<S: ContainerService, K: Clock> Executor<S, K> {
    /// Records a power-off attempt, for [`Self::run_power_off`] to run.
    pub(super) async fn record_power_off(&mut self, now: OffsetDateTime, books: &mut Books) {
        // The drain-completed webhook was just sent: give it a chance.
        // Before the record, so that a SIGTERM while waiting leaves the
        // power-off to the next start.
        books
            .reporter
            .deliveries
            .settle(WEBHOOK_GRACE, "powering off")
            .await;
        let why = power_off_cause(now, books);
        let Some(drain) = books.state.drain.as_mut() else {
            return;
        };
        drain.poweroff_attempts += 1;
        drain.poweroff_attempted_at = Some(now);
        let attempts = drain.poweroff_attempts;
        if !books.persist(now).await {
            if let Some(drain) = books.state.drain.as_mut() {
                drain.poweroff_attempts -= 1;
                drain.poweroff_attempted_at = None;
            }
            let unrecorded = "the power-off cannot be recorded in the state file";
            let then = "not powering off until it can";
            books
                .reporter
                .failed(RECORDING_POWER_OFF, unrecorded, then, self.clock.instant());
            return;
        }
        books
            .reporter
            .worked(RECORDING_POWER_OFF, self.clock.instant());
        if attempts == 1 {
            let command = &self.poweroff_command;
            books.decision(&format!("{why}; powering off with {command:?}"));
        }
        self.power_off_recorded = Some((now, attempts));
    }

    /// Runs the power-off the tick recorded, and records its outcome.
    /// Bounded by [`poweroff::COMMAND_LIMIT`].
    pub async fn run_power_off(&mut self, books: &mut Books) {
        let Some((now, attempts)) = self.power_off_recorded.take() else {
            return;
        };
        let command = &self.poweroff_command;
        match poweroff::run(command).await {
            Ok(()) => {
                if let Some(drain) = books.state.drain.as_mut() {
                    drain.poweroff_at = Some(now);
                }
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
        .candidates(now, books.policy.drain_on_rebalance)
        .into_iter()
        .filter(|c| c.key.kind.is_lease())
        .map(|c| (c.at, c.key.kind))
        .min();
    match (books.state.phase, lease_end) {
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
            humantime::format_duration(LEASE_END_STOP_WAIT)
        ),
        (_, None) => "the end has come".to_owned(),
    }
}
