//! A tick's decision, which needs no IMDS: the pure core decides from what
//! was observed, the new state is recorded before anything acts on it,
//! events are reported, and the executor carries out the actions.

use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::books::Books;
use super::clock::{whole_seconds, Clock};
use super::executor::Executor;
use super::node::Node;
use crate::actions::ecs::ContainerService;
use blockwatch_core::decision::{decide, record, Action};
use blockwatch_core::settings::Settings;

const ECS_AGENT_CHECK_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub(super) struct Agent<S, K> {
    pub books: Books,
    executor: Executor<S, K>,
    pub(super) clock: K,
    rebalance_noted: bool,
    /// Whether the local ECS agent answered its introspection API lately
    /// (at `ecs_agent_url`): blockwatch keeps running when ecs.service
    /// fails, and says so.
    ecs_agent_answers: Option<bool>,
    ecs_agent_url: String,
    next_ecs_agent_check: Instant,
    /// The wall and monotonic time of the last step: when they drift apart
    /// the wall clock stepped.
    clock_base: Option<(OffsetDateTime, Instant)>,
    /// The core asked for a last look at the lease before a power-off.
    pub(super) lease_look_wanted: bool,
}

/// The wall clock may drift this far from the monotonic one between two
/// steps before it counts as a step (NTP slews far less).
pub(super) const CLOCK_STEP_TOLERANCE: Duration = Duration::from_secs(5);

impl<S: ContainerService, K: Clock + Clone> Agent<S, K> {
    pub(super) fn new(
        books: Books,
        settings: &Settings,
        node: &Node,
        service: S,
        clock: K,
        ecs_agent_url: String,
    ) -> Self {
        Self {
            books,
            executor: Executor::new(service, clock.clone(), settings, node),
            next_ecs_agent_check: clock.instant(),
            clock,
            rebalance_noted: false,
            ecs_agent_answers: None,
            ecs_agent_url,
            clock_base: None,
            lease_look_wanted: false,
        }
    }

    /// Notes a wall-clock step since the last step: the wall clock moved
    /// more (or less) than the monotonic one.
    fn watch_the_clock(&mut self, now: OffsetDateTime) {
        let (wall, mono) = (self.clock.utc(), self.clock.instant());
        if let Some((last_wall, last_mono)) = self.clock_base {
            let expected = last_wall + mono.saturating_duration_since(last_mono);
            let drift = (wall - expected).abs();
            if drift > CLOCK_STEP_TOLERANCE {
                log::warn!(
                    "the wall clock stepped by {} ({} seconds {})",
                    humantime::format_duration(Duration::from_secs(
                        drift.whole_seconds().unsigned_abs()
                    )),
                    drift.whole_seconds(),
                    if wall > expected { "ahead" } else { "back" }
                );
                self.books.observed.clock_stepped_at = Some(now);
            }
        }
        self.clock_base = Some((wall, mono));
    }

    /// Decides, records, reports and acts; returns the decision's `now`.
    pub(super) async fn step(&mut self) -> OffsetDateTime {
        let now = whole_seconds(self.clock.utc());
        self.watch_the_clock(now);
        let books = &mut self.books;
        if books.observed.rebalance_notice.is_some()
            && !books.policy.drain_on_rebalance
            && !self.rebalance_noted
        {
            log::info!(
                "rebalance recommendation seen; not draining for it (drain_on_rebalance = false)"
            );
            self.rebalance_noted = true;
        }
        self.executor.count_tasks_if_due(books).await;
        self.executor.find_lifecycle_hook_if_due(books).await;
        self.decide_and_act(now).await;
        now
    }

    /// The core decides at `now`; the decision is recorded, reported and
    /// carried out, and what the executor did is recorded by the core.
    pub(super) async fn decide_and_act(&mut self, now: OffsetDateTime) {
        let books = &mut self.books;
        let decision = decide(now, &books.observed, &books.state, &books.policy);
        let before = std::mem::replace(&mut books.state, decision.state);
        // The decision is on disk before anything acts on it, so a crash
        // between the two neither forgets nor repeats it.
        if books.state != before {
            books.persist(now).await;
        }
        for event in &decision.events {
            books
                .reporter
                .event(event, &books.state, &books.observed, now);
        }
        for action in decision.actions {
            if action == Action::ConfirmLease {
                self.lease_look_wanted = true;
                continue;
            }
            let before_action = books.state.clone();
            if let Some(outcome) = self.executor.act(action, now, books).await {
                record(&mut books.state, outcome, now);
            }
            if books.state != before_action {
                books.persist(now).await;
            }
        }
    }

    /// Every 30 s, a local (no AWS) look at whether the ECS agent answers.
    pub(super) async fn check_ecs_agent(&mut self) {
        if self.clock.instant() < self.next_ecs_agent_check {
            return;
        }
        self.next_ecs_agent_check = self.clock.instant() + ECS_AGENT_CHECK_INTERVAL;
        let answers = self.executor.service().agent_answers().await;
        match (self.ecs_agent_answers, answers) {
            (Some(true) | None, false) => log::warn!(
                "the ECS agent does not answer at {}: is ecs.service running? blockwatch keeps watching",
                self.ecs_agent_url
            ),
            (Some(false), true) => log::info!("the ECS agent answers again"),
            _ => {}
        }
        self.ecs_agent_answers = Some(answers);
    }

    /// Runs the power-off a tick recorded, if any.
    pub(super) async fn run_power_off(&mut self) {
        self.executor.run_power_off(&mut self.books).await;
    }

    /// After each tick: the heartbeat, a save that failed before, the
    /// metrics; returns the systemd STATUS line.
    pub(super) async fn record_tick(&mut self) -> String {
        let now = whole_seconds(self.clock.utc());
        let books = &mut self.books;
        books
            .store
            .tick(&books.state, books.reporter.errors(), now)
            .await;
        self.status_line(now)
    }

    /// The systemd STATUS line, with a warning when the ECS agent is down.
    fn status_line(&self, now: OffsetDateTime) -> String {
        let books = &self.books;
        let mut line = books.store.snapshot(&books.state, now).status_line(now);
        if self.ecs_agent_answers == Some(false) {
            line.push_str(" · ECS agent not answering");
        }
        if let Some(problem) = books.store.problem() {
            line.push_str(" · ");
            line.push_str(problem);
        }
        line
    }
}
