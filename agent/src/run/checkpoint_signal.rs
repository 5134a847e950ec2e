//! The checkpoint signal pass, as the executor carries it out: recorded
//! before its first signal (so a restart never signals twice for the same
//! end), then each opted-in container signaled and logged, and the pass
//! reported once it is over.
//!
//! A pass that reaches neither the ECS agent nor Docker signaled nothing:
//! it is logged once, and the core asks again after `CHECKPOINT_RETRY`
//! until the end. Nothing else of the end waits for it.

use time::OffsetDateTime;

use super::books::Books;
use super::clock::Clock;
use super::executor::Executor;
use crate::actions::checkpoint::PassReport;
use crate::actions::ecs::ContainerService;
use blockwatch_core::checkpoint::CHECKPOINT_RETRY;
use blockwatch_core::decision::{record, Event, Outcome};
use blockwatch_core::time_text::rfc3339;

const RECORDING: &str = "recording the checkpoint signal";
const SIGNALING: &str = "sending the checkpoint signal";

impl<S: ContainerService, K: Clock> Executor<S, K> {
    /// Signals the opted-in containers for the end at `end`.
    pub(super) async fn signal_checkpoint(
        &mut self,
        end: OffsetDateTime,
        now: OffsetDateTime,
        books: &mut Books,
    ) -> Option<Outcome> {
        record(&mut books.state, Outcome::CheckpointStarted(end), now);
        if books.persist(now).await {
            books.reporter.worked(RECORDING, self.clock.instant());
        } else {
            books.reporter.failed(
                RECORDING,
                "the checkpoint signal cannot be recorded in the state file",
                "signaling all the same (a restart before it is recorded may signal again)",
                self.clock.instant(),
            );
        }
        let report = self.service().signal_checkpoint().await;
        self.report_pass(&report, end, now, books);
        // Recorded here already: the agent writes nothing more for it.
        None
    }

    /// Logs the pass container by container, records what it did and
    /// reports it.
    fn report_pass(
        &mut self,
        report: &PassReport,
        end: OffsetDateTime,
        now: OffsetDateTime,
        books: &mut Books,
    ) {
        if let Some(why) = &report.unreachable {
            books.reporter.count_error("checkpoint");
            let then = format!(
                "no job was signaled; trying again every {} until {} (the rest of the end goes on as before)",
                humantime::format_duration(CHECKPOINT_RETRY),
                rfc3339(end)
            );
            books
                .reporter
                .failed(SIGNALING, &why.to_string(), &then, self.clock.instant());
            record(&mut books.state, Outcome::CheckpointUnreached, now);
            return;
        }
        books
            .reporter
            .forget_failures(SIGNALING, self.clock.instant());
        for (container, signal) in &report.signaled {
            log::info!(
                TASK_ARN = container.task_arn.as_str(),
                CONTAINER = container.name.as_str(),
                DOCKER_ID = container.docker_id.as_str(),
                SIGNAL = signal.name();
                "checkpoint signal {signal} sent to container {} of task {} (stop at {})",
                container.name,
                container.task_arn,
                rfc3339(end)
            );
        }
        for (container, refusal) in &report.refused {
            log::warn!(
                TASK_ARN = container.task_arn.as_str(),
                CONTAINER = container.name.as_str();
                "container {} of task {}: {refusal}; it gets no checkpoint signal",
                container.name,
                container.task_arn
            );
        }
        for (container, err) in &report.failed {
            books.reporter.count_error("checkpoint");
            log::warn!(
                TASK_ARN = container.task_arn.as_str(),
                CONTAINER = container.name.as_str();
                "the checkpoint signal to container {} of task {} failed: {err}",
                container.name,
                container.task_arn
            );
        }
        if let Some(err) = &report.abandoned_because {
            books.reporter.count_error("checkpoint");
            log::warn!(
                "{err}: {} container(s) not looked at for the checkpoint signal: {}",
                report.abandoned.len(),
                report
                    .abandoned
                    .iter()
                    .map(|c| format!("{} of task {}", c.name, c.task_arn))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let containers = u32::try_from(report.signaled.len()).unwrap_or(u32::MAX);
        record(
            &mut books.state,
            Outcome::CheckpointSignaled(containers),
            now,
        );
        books.reporter.event(
            &Event::CheckpointSignaled { containers },
            &books.state,
            &books.observed,
            now,
        );
    }
}
