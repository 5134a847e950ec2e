//! The Auto Scaling lifecycle hook, as the executor carries it out: the
//! group's termination hook found once Auto Scaling says `Terminated`, then
//! the heartbeats and the completion the core asks for.
//!
//! Its calls have a backoff of their own: a failing Auto Scaling call (a
//! missing permission, say) never holds the drain's ECS calls or the
//! power-off, and the instance then simply waits out the hook's timeout,
//! as it would without blockwatch.

use std::time::Instant;

use time::OffsetDateTime;

use super::books::Books;
use super::call_limit::bounded;
use super::clock::{shown, Clock};
use super::executor::Executor;
use crate::actions::autoscaling::{DiscoveryError, HookError};
use crate::actions::ecs::ContainerService;
use crate::sources::CallError;
use blockwatch_core::decision::{record, Event, Outcome};
use blockwatch_core::time_text::rfc3339;

const FINDING: &str = "finding the Auto Scaling lifecycle hook";
const HEARTBEAT: &str = "recording a lifecycle action heartbeat";
const COMPLETING: &str = "completing the lifecycle action";

impl<S: ContainerService, K: Clock> Executor<S, K> {
    /// Once Auto Scaling says `Terminated` and no hook is known, asks Auto
    /// Scaling for the group's termination hook (once; again after the
    /// backoff when it fails). A dry run asks nothing.
    pub(super) async fn find_lifecycle_hook_if_due(&mut self, books: &mut Books) {
        let terminated = books.observed.target_lifecycle_state.as_deref() == Some("Terminated");
        if !terminated {
            self.hook_lookup_settled = false;
            return;
        }
        let known = books.observed.lifecycle_hook.is_some() || books.state.lifecycle.is_some();
        if known || self.hook_lookup_settled || self.dry_run {
            return;
        }
        if !self.hook_backoff.ready(self.clock.instant()) {
            return;
        }
        let found = bounded_discovery(self.service().termination_hook(
            &self.node.instance_id,
            None,
            self.lifecycle_hook_name.as_deref(),
        ))
        .await;
        match found {
            Ok(Some(hook)) => {
                self.hook_backoff.succeeded();
                books.reporter.worked(FINDING, self.clock.instant());
                log::info!(
                    "Auto Scaling group {} has termination lifecycle hook {} (heartbeat timeout {}, global timeout {}): blockwatch keeps it alive while draining and completes it with CONTINUE",
                    hook.group,
                    hook.name,
                    humantime::format_duration(hook.heartbeat_timeout),
                    humantime::format_duration(hook.global_timeout())
                );
                books.observed.lifecycle_hook = Some(hook);
                self.hook_lookup_settled = true;
            }
            Ok(None) => {
                self.hook_backoff.succeeded();
                books.reporter.worked(FINDING, self.clock.instant());
                log::info!(
                    "Auto Scaling says Terminated, and the instance's group has no termination lifecycle hook: nothing to complete"
                );
                self.hook_lookup_settled = true;
            }
            Err(err @ DiscoveryError::NoSuchHook { .. }) => {
                // A configuration mistake: asking again will not mend it.
                books.reporter.count_error("autoscaling");
                log::warn!(
                    "{err}: nothing is completed; the instance waits out the hook's timeout"
                );
                self.hook_lookup_settled = true;
            }
            Err(err) => self.hook_failed(FINDING, &err.to_string(), books),
        }
    }

    /// `RecordLifecycleActionHeartbeat` (a debug line each).
    pub(super) async fn lifecycle_heartbeat(
        &mut self,
        now: OffsetDateTime,
        books: &mut Books,
    ) -> Option<Outcome> {
        let hook = books.state.lifecycle.as_ref()?.hook.clone();
        let sent = bounded_hook(
            "autoscaling:RecordLifecycleActionHeartbeat",
            self.service()
                .record_heartbeat(&hook, &self.node.instance_id),
        )
        .await;
        match sent {
            Ok(()) => {
                self.hook_backoff.succeeded();
                books.reporter.worked(HEARTBEAT, self.clock.instant());
                log::debug!(
                    "lifecycle action heartbeat recorded for hook {} of group {} at {}",
                    hook.name,
                    hook.group,
                    rfc3339(now)
                );
                Some(Outcome::LifecycleHeartbeat)
            }
            Err(err) => self.hook_refused(HEARTBEAT, &err, books),
        }
    }

    /// `CompleteLifecycleAction` with `CONTINUE` (an info line, and the
    /// `lifecycle-completed` event once recorded).
    pub(super) async fn complete_lifecycle(
        &mut self,
        now: OffsetDateTime,
        books: &mut Books,
    ) -> Option<Outcome> {
        let hook = books.state.lifecycle.as_ref()?.hook.clone();
        let sent = bounded_hook(
            "autoscaling:CompleteLifecycleAction",
            self.service().complete(&hook, &self.node.instance_id),
        )
        .await;
        match sent {
            Ok(()) => {
                self.hook_backoff.succeeded();
                books.reporter.worked(COMPLETING, self.clock.instant());
                record(&mut books.state, Outcome::LifecycleCompleted, now);
                books.reporter.event(
                    &Event::LifecycleCompleted,
                    &books.state,
                    &books.observed,
                    now,
                );
                // Recorded here already, for the event to say it.
                None
            }
            Err(err) => self.hook_refused(COMPLETING, &err, books),
        }
    }

    /// A hook call that failed: no action waiting any more is recorded
    /// (nothing more is sent); anything else is retried after the backoff.
    fn hook_refused(
        &mut self,
        activity: &str,
        err: &HookError,
        books: &mut Books,
    ) -> Option<Outcome> {
        if let HookError::NoActiveAction { .. } = err {
            self.hook_backoff.succeeded();
            log::warn!("{err}; nothing more is sent for it");
            return Some(Outcome::LifecycleGone);
        }
        self.hook_failed(activity, &err.to_string(), books);
        None
    }

    /// Counts a failed Auto Scaling call, backs off, and logs it the first
    /// time and then as a count now and then.
    fn hook_failed(&mut self, activity: &str, err: &str, books: &mut Books) {
        books.reporter.count_error("autoscaling");
        let now: Instant = self.clock.instant();
        let wait = self.hook_backoff.failed(now, self.clock.random());
        let then = format!(
            "retrying in {} (the drain and the power-off go on)",
            shown(wait)
        );
        books.reporter.failed(activity, err, &then, now);
    }
}

/// [`bounded`] for the hook calls, whose errors are their own.
async fn bounded_hook(
    api: &'static str,
    call: impl std::future::Future<Output = Result<(), HookError>>,
) -> Result<(), HookError> {
    match bounded(api, async { Ok::<_, CallError>(call.await) }).await {
        Ok(answer) => answer,
        Err(timed_out) => Err(HookError::Call(timed_out)),
    }
}

async fn bounded_discovery<T>(
    call: impl std::future::Future<Output = Result<T, DiscoveryError>>,
) -> Result<T, DiscoveryError> {
    match bounded("autoscaling:DescribeLifecycleHooks", async {
        Ok::<_, CallError>(call.await)
    })
    .await
    {
        Ok(answer) => answer,
        Err(timed_out) => Err(DiscoveryError::Call(timed_out)),
    }
}
