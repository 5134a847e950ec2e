//! The run loop's policies, driven step by step with a fake container
//! service and a fake clock; the state file is real (in a temporary
//! directory), and so is the power-off command (a harmless one).
//! Longer than 400 lines: one scenario per rule, each told in full.

use std::path::{Path, PathBuf};
use std::time::Duration;

use time::macros::datetime;
use time::OffsetDateTime;

use super::agent::Agent;
use super::books::Books;
use super::fakes::{Call, FakeClock, FakeEcs, Scripted, HEARTBEAT, SET_DRAINING, STOP_TASKS};
use super::node::Node;
use super::store::Store;
use crate::actions::webhook::Deliveries;
use crate::host::state_dir::{read_snapshot, Records};
use crate::sources::AwsFailure;
use blockwatch_core::deadline::{Observations, SpotAction};
use blockwatch_core::decision::{poweroff_retry_after, AgentState, Phase};
use blockwatch_core::file_model::FileConfig;
use blockwatch_core::lifecycle_hook::LifecycleHook;
use blockwatch_core::settings::Settings;

const T0: OffsetDateTime = datetime!(2026-11-29 12:00:00 UTC);
const ARN: &str = "arn:aws:ecs:us-east-1:123456789012:container-instance/jobs/1111";
const NEW_ARN: &str = "arn:aws:ecs:us-east-1:123456789012:container-instance/jobs/2222";
const THROTTLED: Scripted = Scripted::Fail(AwsFailure::Throttled);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn node() -> Node {
    Node {
        instance_id: "i-0123456789abcdef0".into(),
        cluster: Some("jobs".into()),
        degraded: None,
        compute_environment: None,
    }
}

fn settings(config: &str) -> Settings {
    let path = Path::new("/etc/blockwatch/blockwatch.toml");
    let file = FileConfig::parse(config, path).unwrap();
    Settings::resolve(&file, path, None, false).0
}

/// One agent over a fake ECS and a fake clock, with its state directory.
struct Harness {
    agent: Agent<FakeEcs, FakeClock>,
    ecs: FakeEcs,
    clock: FakeClock,
    dir: tempfile::TempDir,
}

impl Harness {
    fn new(config: &str, ecs: FakeEcs) -> Self {
        Self::resume(tempfile::tempdir().unwrap(), config, ecs, T0)
    }

    /// Starts at `at`, resuming the state kept in `dir` (if any).
    fn resume(dir: tempfile::TempDir, config: &str, ecs: FakeEcs, at: OffsetDateTime) -> Self {
        let config = config.replace("{dir}", &dir.path().display().to_string());
        let settings = settings(&config);
        let state_dir = dir.path().join("state");
        std::fs::create_dir_all(&state_dir).unwrap();
        let node = node();
        let (records, state) = Records::open(&state_dir, &node.instance_id, None).unwrap();
        let observed = Observations {
            launched_at: Some(T0 - time::Duration::hours(1)),
            ..Observations::default()
        };
        let deliveries = Deliveries::new(crate::host::http::client().unwrap());
        let store = Store::new(records, &node);
        let books = Books::new(&settings, &node, store, state, observed, deliveries);
        let clock = FakeClock::at(at);
        let url = "http://127.0.0.1:9/v1/metadata".to_owned();
        let agent = Agent::new(books, &settings, &node, ecs.clone(), clock.clone(), url);
        Self {
            agent,
            ecs,
            clock,
            dir,
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A spot interruption two minutes from T0: a drain at once.
    fn spot_notice(&mut self) {
        self.agent.books.observed.spot_action = Some(SpotAction {
            action: "terminate".into(),
            time: T0 + time::Duration::minutes(2),
        });
    }

    /// A lease ending five minutes after T0: a drain at once, and a
    /// power-off once drained (`on_lease_end = "poweroff"`).
    fn lease_ending_soon(&mut self) {
        self.agent.books.observed.lease_end = Some((T0 + time::Duration::minutes(5), "tag".into()));
    }

    /// A step `wait` after the last, with the poll's last look at the
    /// lease (the tags have not moved) when the core asks for it.
    async fn step_after(&mut self, wait: Duration) {
        self.clock.advance(wait);
        let now = self.agent.step().await;
        if std::mem::take(&mut self.agent.lease_look_wanted) {
            self.agent.books.observed.lease_confirmed_at = Some(now);
            self.agent.decide_and_act(now).await;
        }
    }

    fn state(&self) -> &AgentState {
        &self.agent.books.state
    }

    fn on_disk(&self) -> AgentState {
        read_snapshot(&self.state_dir()).unwrap().unwrap().agent
    }

    fn confirmed_at(&self) -> Option<OffsetDateTime> {
        self.state().drain.as_ref()?.draining_confirmed_at
    }

    fn count_calls(&self, wanted: fn(&Call) -> bool) -> usize {
        self.ecs.calls().iter().filter(|c| wanted(c)).count()
    }

    fn list_calls(&self) -> usize {
        self.count_calls(|c| matches!(c, Call::ListTasks { .. }))
    }
}

fn set_draining(arn: &str) -> Call {
    Call::SetDraining {
        arn: arn.to_owned(),
        draining: true,
    }
}

fn at(after: Duration) -> Option<OffsetDateTime> {
    Some(T0 + after)
}

#[tokio::test]
async fn throttled_draining_backs_off_and_is_retried_until_ecs_confirms() {
    let ecs = FakeEcs::registered(ARN, &[]);
    ecs.script(SET_DRAINING, &[THROTTLED, THROTTLED]);
    let mut h = Harness::new("", ecs);
    h.spot_notice();

    h.step_after(Duration::ZERO).await;
    assert_eq!(h.ecs.drain_calls().len(), 1);
    let on_disk = h.on_disk();
    assert_eq!(on_disk.phase, Phase::Draining, "decided and kept on disk");
    assert_eq!(on_disk.drain.unwrap().draining_confirmed_at, None);

    // First wait: up to 1 s (the fake clock draws the top of the window).
    h.step_after(ms(999)).await;
    assert_eq!(h.ecs.drain_calls().len(), 1, "backing off");
    h.step_after(ms(1)).await;
    assert_eq!(h.ecs.drain_calls().len(), 2, "retried");
    // Second wait: up to 2 s.
    h.step_after(ms(1999)).await;
    assert_eq!(h.ecs.drain_calls().len(), 2, "backing off longer");
    h.step_after(ms(1)).await;
    assert_eq!(h.ecs.drain_calls().len(), 3);
    assert_eq!(h.confirmed_at(), at(secs(3)));
    assert_eq!(h.ecs.state().status, "DRAINING");
    assert_eq!(h.agent.books.reporter.errors().get("ecs"), Some(&2));

    h.step_after(secs(60)).await;
    assert_eq!(h.ecs.drain_calls().len(), 3, "nothing more once confirmed");
}

#[tokio::test]
async fn the_drain_backoff_is_jittered_so_a_fleet_does_not_retry_in_lockstep() {
    // Instances throttled at the same moment draw different numbers, so
    // they retry at different times: anywhere from 0.1 s to the ceiling.
    for (drawn, retry_after) in [(0, ms(100)), (u64::MAX / 4, ms(250)), (u64::MAX, ms(1000))] {
        let ecs = FakeEcs::registered(ARN, &[]);
        ecs.script(SET_DRAINING, &[THROTTLED]);
        let mut h = Harness::new("", ecs);
        h.spot_notice();
        h.clock.will_draw(drawn);
        h.step_after(Duration::ZERO).await;
        h.step_after(retry_after - ms(1)).await;
        assert_eq!(h.ecs.drain_calls().len(), 1, "drew {drawn}: not yet");
        h.step_after(ms(1)).await;
        assert_eq!(
            h.ecs.drain_calls().len(),
            2,
            "drew {drawn}: retried after {retry_after:?}"
        );
        assert_eq!(
            h.confirmed_at(),
            at(retry_after).map(super::clock::whole_seconds)
        );
    }
}

#[tokio::test]
async fn a_rejected_container_instance_is_forgotten_and_found_again() {
    let ecs = FakeEcs::registered(ARN, &[]);
    ecs.script(SET_DRAINING, &[THROTTLED]);
    let mut h = Harness::new("", ecs);
    h.spot_notice();

    h.step_after(Duration::ZERO).await;
    // The ECS agent registers again: the ARN we know is gone.
    h.ecs.register_again(NEW_ARN);
    h.step_after(secs(1)).await;
    assert_eq!(h.confirmed_at(), None, "rejected");
    h.step_after(secs(2)).await;

    assert_eq!(
        h.ecs.calls(),
        [
            Call::Find,
            set_draining(ARN),
            // A throttled call keeps the ARN …
            set_draining(ARN),
            // … a rejected one forgets it.
            Call::Find,
            set_draining(NEW_ARN),
        ]
    );
    assert_eq!(h.confirmed_at(), at(secs(3)));
    assert_eq!(h.ecs.state().status, "DRAINING");
}

/// A spot notice drains; ECS sets DRAINING but its answer is lost.
async fn draining_with_its_answer_lost() -> Harness {
    let ecs = FakeEcs::registered(ARN, &[]);
    ecs.script(SET_DRAINING, &[Scripted::AnswerLost]);
    let mut h = Harness::new("", ecs);
    h.spot_notice();
    h.step_after(Duration::ZERO).await;
    h
}

#[tokio::test]
async fn a_lost_draining_answer_is_retried_once_harmlessly_and_recorded_once() {
    let mut h = draining_with_its_answer_lost().await;
    assert_eq!(h.ecs.state().status, "DRAINING", "ECS did it");
    assert_eq!(h.confirmed_at(), None, "but we do not know");

    h.step_after(secs(1)).await;
    for _ in 0..5 {
        h.step_after(secs(10)).await;
    }
    assert_eq!(h.ecs.drain_calls(), [set_draining(ARN), set_draining(ARN)]);
    let on_disk = h.on_disk();
    assert_eq!(on_disk.drains_started, 1);
    assert_eq!(
        on_disk.drain.unwrap().draining_confirmed_at,
        at(secs(1)),
        "confirmed once, by the retry"
    );
}

#[tokio::test]
async fn a_restart_between_drain_requested_and_confirmed_sets_draining_again_not_a_second_drain() {
    let first = draining_with_its_answer_lost().await;
    let requested = first.on_disk();
    assert_eq!(requested.phase, Phase::Draining);
    assert_eq!(
        requested.drain.as_ref().unwrap().draining_confirmed_at,
        None
    );
    let dir = first.dir;

    // Restarted 30 s later; ECS kept the DRAINING it never confirmed.
    let ecs = FakeEcs::registered(ARN, &[]);
    ecs.state().status = "DRAINING";
    let mut again = Harness::resume(dir, "", ecs, T0 + time::Duration::seconds(30));
    again.spot_notice();
    again.step_after(Duration::ZERO).await;

    assert_eq!(again.ecs.drain_calls(), [set_draining(ARN)]);
    let state = again.on_disk();
    assert_eq!(state.drains_started, 1, "the same drain");
    let drain = state.drain.unwrap();
    assert_eq!(drain.started_at, T0);
    assert_eq!(drain.draining_confirmed_at, at(secs(30)));
}

#[tokio::test]
async fn a_power_off_is_on_disk_before_its_command_runs() {
    let config = r#"poweroff_command = "cp {dir}/state/state.json {dir}/seen.json""#;
    let mut h = Harness::new(config, FakeEcs::registered(ARN, &[]));
    h.lease_ending_soon();
    h.step_after(Duration::ZERO).await;
    h.step_after(secs(1)).await;
    assert_eq!(h.state().phase, Phase::PoweringOff);
    assert!(
        !h.dir.path().join("seen.json").exists(),
        "not run in the tick"
    );

    h.agent.run_power_off().await;
    let seen = std::fs::read(h.dir.path().join("seen.json")).unwrap();
    let seen: serde_json::Value = serde_json::from_slice(&seen).unwrap();
    assert_eq!(seen["drain"]["poweroff_attempts"], 1);
    assert_eq!(seen["drain"]["poweroff_at"], serde_json::Value::Null);
    let drain = h.on_disk().drain.unwrap();
    assert_eq!(drain.poweroff_at, at(secs(1)), "its success recorded");
    assert_eq!(drain.poweroff_attempts, 1);
}

#[tokio::test]
async fn a_power_off_that_cannot_be_recorded_still_runs_and_keeps_its_retries_in_memory() {
    let config = r#"poweroff_command = "echo off >> {dir}/powered-off; false""#;
    let mut h = Harness::new(config, FakeEcs::registered(ARN, &[]));
    let powered_off = h.dir.path().join("powered-off");
    h.lease_ending_soon();
    h.step_after(Duration::ZERO).await;
    // The state directory becomes unwritable (a full disk, a read-only
    // remount): a file stands in its place.
    std::fs::remove_dir_all(h.state_dir()).unwrap();
    std::fs::write(h.state_dir(), b"").unwrap();
    h.step_after(secs(1)).await;
    h.agent.run_power_off().await;
    let runs = || {
        std::fs::read_to_string(&powered_off)
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert_eq!(runs(), 1, "the block ends even when it cannot be recorded");
    let drain = h.state().drain.clone().unwrap();
    assert_eq!(drain.poweroff_attempts, 1, "kept in memory");
    assert_eq!(drain.poweroff_attempted_at, at(secs(1)));
    // The command failed: retried on the in-memory schedule, not every tick.
    h.step_after(poweroff_retry_after(1) - secs(1)).await;
    h.agent.run_power_off().await;
    assert_eq!(runs(), 1, "not before its retry is due");
    h.step_after(secs(1)).await;
    h.agent.run_power_off().await;
    assert_eq!(runs(), 2, "retried");
    let line = h.agent.record_tick().await;
    assert!(line.contains("state not saved"), "{line}");
}

#[tokio::test]
async fn a_failed_power_off_is_retried_when_the_core_says() {
    let mut h = Harness::new(
        r#"poweroff_command = "false""#,
        FakeEcs::registered(ARN, &[]),
    );
    h.lease_ending_soon();
    h.step_after(Duration::ZERO).await;
    h.step_after(secs(1)).await;
    let mut attempts = Vec::new();
    for _ in 0..20 {
        h.agent.run_power_off().await;
        let drain = h.on_disk().drain.unwrap();
        assert_eq!(drain.poweroff_at, None, "never succeeded");
        attempts.push((drain.poweroff_attempts, drain.poweroff_attempted_at));
        h.step_after(secs(1)).await;
    }
    attempts.dedup();
    let first = secs(1);
    let second = first + poweroff_retry_after(1);
    let third = second + poweroff_retry_after(2);
    assert_eq!(
        attempts,
        [(1, at(first)), (2, at(second)), (3, at(third))],
        "5 s, then 10 s"
    );
    assert_eq!(h.agent.books.reporter.errors().get("poweroff"), Some(&3));
}

#[tokio::test]
async fn a_dry_run_confirms_each_action_without_changing_ecs_or_powering_off() {
    let mut h = Harness::new(
        "dry_run = true\npoweroff_command = \"touch {dir}/powered-off\"\n",
        FakeEcs::registered(ARN, &["task-1"]),
    );
    h.lease_ending_soon();
    h.step_after(Duration::ZERO).await;
    assert_eq!(h.confirmed_at(), Some(T0), "DRAINING confirmed at once");
    assert_eq!(
        h.agent.books.observed.running_tasks,
        Some(0),
        "nothing to wait for"
    );
    h.ecs.state().tasks.clear();
    h.step_after(secs(1)).await;
    h.agent.run_power_off().await;

    let drain = h.on_disk().drain.unwrap();
    assert_eq!(h.on_disk().phase, Phase::PoweredOff);
    assert_eq!(
        (drain.poweroff_attempts, drain.poweroff_at),
        (1, at(secs(1)))
    );
    assert!(!h.dir.path().join("powered-off").exists());
    assert_eq!(h.ecs.drain_calls(), [], "ECS left alone");
    assert_eq!(h.ecs.state().status, "ACTIVE");
}

#[tokio::test]
async fn a_dry_run_signals_no_container() {
    let config = format!("dry_run = true\n{CHECKPOINTING}");
    let mut h = Harness::new(&config, FakeEcs::registered(ARN, &["task-1"]));
    h.lease_ending_in_ten_minutes();
    h.step_after(secs(240)).await;
    let pass = h.state().checkpoint.clone().unwrap();
    assert_eq!(pass.signaled_at, at(secs(240)), "reported done");
    assert_eq!(h.signal_passes(), 0, "Docker left alone");
}

#[tokio::test]
async fn tasks_are_counted_once_draining_is_confirmed_then_every_drain_poll_interval() {
    let ecs = FakeEcs::registered(ARN, &["task-1"]);
    ecs.script(SET_DRAINING, &[THROTTLED]);
    let mut h = Harness::new("drain_poll_interval = \"5s\"\n", ecs);
    h.spot_notice();
    h.step_after(Duration::ZERO).await;
    h.step_after(secs(1)).await;
    assert_eq!(h.confirmed_at(), at(secs(1)));
    assert_eq!(h.list_calls(), 0, "not before ECS confirmed DRAINING");

    h.step_after(secs(1)).await;
    assert_eq!(h.list_calls(), 1, "at once after the confirmation");
    assert_eq!(h.state().drain.as_ref().unwrap().running_tasks, Some(1));
    h.step_after(secs(4)).await;
    assert_eq!(h.list_calls(), 1, "not before drain_poll_interval");
    h.step_after(secs(1)).await;
    assert_eq!(h.list_calls(), 2);
    assert_eq!(h.state().phase, Phase::Draining);
}

#[tokio::test]
async fn tasks_are_counted_again_at_once_after_they_were_stopped() {
    let config = "drain_poll_interval = \"1m\"\nstop_grace = \"10m\"\n";
    let mut h = Harness::new(config, FakeEcs::registered(ARN, &["task-1", "task-2"]));
    h.spot_notice();
    h.step_after(Duration::ZERO).await;
    h.step_after(secs(1)).await;
    h.step_after(secs(1)).await;

    let calls = h.ecs.calls();
    let list = Call::ListTasks { arn: ARN.into() };
    assert_eq!(
        calls[..4],
        [Call::Find, set_draining(ARN), list.clone(), list.clone()]
    );
    let stopped: Vec<&Call> = calls[4..6].iter().collect();
    for (call, task) in stopped.iter().zip(["task-1", "task-2"]) {
        let Call::StopTasks { tasks, reason } = call else {
            panic!("{calls:?}");
        };
        assert_eq!(tasks, &[task]);
        assert!(reason.starts_with("blockwatch: instance i-0123456789abcdef0 ends at "));
    }
    assert_eq!(calls[6..], [list], "counted again without waiting a minute");
    assert_eq!(
        h.state().phase,
        Phase::Stopping,
        "their containers still run"
    );
    assert_eq!(h.state().drain.as_ref().unwrap().running_tasks, Some(2));
    assert_eq!(
        h.state().drain.as_ref().unwrap().tasks_stopped_at,
        at(secs(1))
    );
}

#[tokio::test]
async fn an_ecs_agent_that_stops_answering_shows_in_the_status_line_checked_every_30_s() {
    let ecs = FakeEcs::registered(ARN, &[]);
    ecs.state().agent_answers = false;
    let mut h = Harness::new("", ecs);
    h.agent.check_ecs_agent().await;
    assert!(h
        .agent
        .record_tick()
        .await
        .ends_with(" · ECS agent not answering"));

    h.ecs.state().agent_answers = true;
    h.clock.advance(secs(29));
    h.agent.check_ecs_agent().await;
    assert!(h
        .agent
        .record_tick()
        .await
        .contains("ECS agent not answering"));
    h.clock.advance(secs(1));
    h.agent.check_ecs_agent().await;
    assert!(!h
        .agent
        .record_tick()
        .await
        .contains("ECS agent not answering"));
}

#[tokio::test]
async fn after_a_success_the_backoff_starts_over_from_its_first_wait() {
    let config = "stop_grace = \"10m\"\n";
    let ecs = FakeEcs::registered(ARN, &["task-1"]);
    ecs.script(SET_DRAINING, &[THROTTLED]);
    ecs.script(STOP_TASKS, &[THROTTLED]);
    let mut h = Harness::new(config, ecs);
    h.spot_notice();
    h.step_after(Duration::ZERO).await;
    h.step_after(secs(1)).await;
    assert_eq!(h.confirmed_at(), at(secs(1)), "after one failure");
    h.step_after(secs(1)).await;
    let stops = |h: &Harness| h.count_calls(|c| matches!(c, Call::StopTasks { .. }));
    assert_eq!(stops(&h), 1, "throttled");
    h.step_after(secs(1)).await;
    assert_eq!(stops(&h), 2, "retried after 1 s, not 2 s");
    assert_eq!(
        h.state().drain.as_ref().unwrap().tasks_stopped_at,
        at(secs(3))
    );
}

#[tokio::test]
async fn a_second_drain_counts_its_tasks_at_once_once_confirmed() {
    let config = "drain_poll_interval = \"1m\"\non_lease_end = \"none\"\n";
    let mut h = Harness::new(config, FakeEcs::registered(ARN, &["task-1"]));
    h.lease_ending_soon();
    h.step_after(Duration::ZERO).await;
    h.step_after(secs(1)).await;
    assert_eq!(h.list_calls(), 1);
    // The lease moves two hours later: the drain is undone …
    h.agent.books.observed.lease_end = Some((T0 + time::Duration::hours(2), "tag".into()));
    h.step_after(secs(1)).await;
    assert_eq!(h.state().phase, Phase::Watching);
    assert_eq!(h.ecs.state().status, "ACTIVE");
    // … and a spot notice starts another one.
    h.spot_notice();
    h.step_after(secs(1)).await;
    assert_eq!(h.confirmed_at(), at(secs(3)));
    h.step_after(secs(1)).await;
    assert_eq!(h.list_calls(), 2, "not a minute after the last count");
}

/// A lease ending five minutes after T0 with `tasks` running, stopped at
/// the lease end with ECS's default stop timeout: the instance at the end.
async fn at_a_lease_end_with(tasks: &[&str]) -> Harness {
    let config =
        "drain_poll_interval = \"1s\"\npoweroff_command = \"echo off >> {dir}/powered-off\"\n";
    let mut h = Harness::new(config, FakeEcs::registered(ARN, tasks));
    h.lease_ending_soon();
    h.step_after(Duration::ZERO).await;
    h.step_after(secs(1)).await;
    assert_eq!(h.state().phase, Phase::Draining);
    h.step_after(secs(5 * 60 - 1)).await;
    h
}

impl Harness {
    fn power_offs(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("powered-off"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// Steps every second for `seconds`, running any power-off recorded.
    async fn run_for(&mut self, seconds: u64) {
        for _ in 0..seconds {
            self.step_after(secs(1)).await;
            self.agent.run_power_off().await;
        }
    }
}

#[tokio::test]
async fn stopped_tasks_that_linger_on_the_host_get_their_stop_timeout_before_the_power_off() {
    let mut h = at_a_lease_end_with(&["job-1"]).await;
    assert_eq!(h.state().phase, Phase::Stopping, "stopped at the end");
    assert_eq!(
        h.ecs.on_host(),
        ["job-1"],
        "ECS wants it stopped; it still runs"
    );
    // ECS's default 30 s stop timeout and the 10 s margin.
    h.run_for(39).await;
    assert_eq!(h.power_offs(), 0, "not while the job may still be stopping");
    h.run_for(1).await;
    assert_eq!(h.state().phase, Phase::PoweredOff);
    assert_eq!(h.power_offs(), 1);
}

#[tokio::test]
async fn the_power_off_follows_at_once_when_the_host_says_the_stopped_tasks_are_gone() {
    let mut h = at_a_lease_end_with(&["job-1", "job-2"]).await;
    h.run_for(5).await;
    assert_eq!(h.power_offs(), 0);
    // Both jobs checkpointed and exited on SIGTERM.
    h.ecs.containers_exit();
    h.run_for(2).await;
    assert_eq!(h.power_offs(), 1);
    assert!(h.state().drain.as_ref().unwrap().stopped_at.is_some());
}

#[tokio::test]
async fn a_throttled_stop_task_does_not_stop_the_others_and_only_it_is_asked_again() {
    let ecs = FakeEcs::registered(ARN, &["job-1", "job-2", "job-3"]);
    ecs.script(STOP_TASKS, &[Scripted::Fail(AwsFailure::Throttled)]);
    let mut h = Harness::new("stop_grace = \"10m\"\n", ecs);
    h.spot_notice();
    h.step_after(Duration::ZERO).await;
    h.step_after(secs(1)).await;
    let stops = |h: &Harness| {
        h.ecs
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::StopTasks { tasks, .. } => Some(tasks.join(",")),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        stops(&h),
        ["job-1", "job-2", "job-3"],
        "went on after the throttle"
    );
    assert_eq!(h.state().phase, Phase::Draining, "not all stopped yet");
    h.step_after(secs(1)).await;
    assert_eq!(stops(&h)[3..], ["job-1"], "only the throttled one again");
    assert_eq!(h.state().phase, Phase::Stopping);
}

#[tokio::test]
async fn a_wall_clock_step_is_noticed_and_holds_the_power_off() {
    let config = r#"poweroff_command = "echo off >> {dir}/powered-off""#;
    let mut h = Harness::new(config, FakeEcs::registered(ARN, &[]));
    // A lease two hours away; the drain lead is 10 minutes.
    h.agent.books.observed.lease_end = Some((T0 + time::Duration::hours(2), "tag".into()));
    h.run_for(2).await;
    assert_eq!(h.state().phase, Phase::Watching);
    // The wall clock jumps a day ahead (a bad RTC corrected by NTP).
    h.clock.step_wall(time::Duration::days(1));
    h.run_for(60).await;
    assert!(h.confirmed_at().is_some(), "DRAINING is not held");
    assert_eq!(h.power_offs(), 0, "held after the step");
    h.run_for(130).await;
    assert_eq!(h.power_offs(), 1, "the hold ends, and so does the lease");
}

/// A lease ending 10 minutes after T0 with a 5-minute checkpoint lead and
/// a 1-minute stop grace: the signal is due at T0 + 4 min.
const CHECKPOINTING: &str = "checkpoint_lead = \"5m\"\nstop_grace = \"1m\"\ndrain_lead = \"2m\"";

impl Harness {
    fn lease_ending_in_ten_minutes(&mut self) {
        self.agent.books.observed.lease_end =
            Some((T0 + time::Duration::minutes(10), "tag".into()));
    }

    fn signal_passes(&self) -> usize {
        self.count_calls(|c| matches!(c, Call::SignalCheckpoint))
    }
}

#[tokio::test]
async fn the_checkpoint_signal_goes_at_its_time_once_and_is_on_disk_before_it_is_sent() {
    let ecs = FakeEcs::registered(ARN, &["arn:aws:ecs:eu-west-1:123456789012:task/jobs/t1"]);
    let mut h = Harness::new(CHECKPOINTING, ecs);
    h.ecs.state().read_at_signal = Some(h.state_dir().join("state.json"));
    h.lease_ending_in_ten_minutes();
    h.step_after(Duration::ZERO).await;
    assert_eq!(h.state().checkpoint_at, at(secs(240)));
    h.step_after(secs(239)).await;
    assert_eq!(h.signal_passes(), 0, "not before its time");
    h.step_after(secs(1)).await;
    assert_eq!(h.signal_passes(), 1);
    let seen = h.ecs.state().seen_at_signal.clone().unwrap();
    let seen: serde_json::Value = serde_json::from_str(&seen).unwrap();
    assert_eq!(
        seen["checkpoint"]["started_at"], "2026-11-29T12:04:00Z",
        "recorded before the signal: {seen}"
    );
    assert!(seen["checkpoint"]["signaled_at"].is_null(), "{seen}");
    let pass = h.on_disk().checkpoint.unwrap();
    assert_eq!(pass.signaled_at, at(secs(240)));
    assert_eq!(pass.containers, 1);
    assert_eq!(h.on_disk().checkpoint_signals, 1);
    for _ in 0..5 {
        h.step_after(secs(10)).await;
    }
    assert_eq!(h.signal_passes(), 1, "once per end");

    // A restart reads the pass back and does not signal again.
    let Harness { dir, ecs, .. } = h;
    let mut again = Harness::resume(dir, CHECKPOINTING, ecs, T0 + time::Duration::minutes(5));
    again.lease_ending_in_ten_minutes();
    again.step_after(Duration::ZERO).await;
    again.step_after(secs(10)).await;
    assert_eq!(again.signal_passes(), 1, "never twice for the same end");
}

#[tokio::test]
async fn docker_unreachable_signals_nothing_is_tried_again_and_ecs_backoff_does_not_hold_it() {
    let ecs = FakeEcs::registered(ARN, &["arn:aws:ecs:eu-west-1:123456789012:task/jobs/t1"]);
    ecs.state().docker_down = true;
    // ECS throttles: its backoff must not hold the signal back.
    ecs.script(SET_DRAINING, &[Scripted::Fail(AwsFailure::Throttled); 20]);
    let mut h = Harness::new(CHECKPOINTING, ecs);
    h.lease_ending_in_ten_minutes();
    h.step_after(secs(240)).await;
    assert_eq!(h.signal_passes(), 1);
    let pass = h.state().checkpoint.clone().unwrap();
    assert_eq!(pass.signaled_at, None);
    assert_eq!(pass.unreached_at, at(secs(240)));
    h.step_after(secs(29)).await;
    assert_eq!(h.signal_passes(), 1, "not before the retry");
    h.ecs.state().docker_down = false;
    h.step_after(secs(1)).await;
    assert_eq!(h.signal_passes(), 2, "tried again");
    assert_eq!(h.state().checkpoint.clone().unwrap().containers, 1);
    assert_eq!(h.state().checkpoint_signals, 1);
}

/// Heartbeat timeout 60 s (a heartbeat every 30 s), global timeout 600 s.
fn lifecycle_hook() -> LifecycleHook {
    LifecycleHook {
        group: "batch-asg".into(),
        name: "drain".into(),
        heartbeat_timeout: secs(60),
        global_timeout: Some(secs(600)),
    }
}

impl Harness {
    /// Auto Scaling terminates the instance, waiting on its hook.
    fn terminated_by_auto_scaling(&mut self) {
        self.agent.books.observed.target_lifecycle_state = Some("Terminated".into());
    }

    fn hook_calls(&self) -> Vec<Call> {
        self.ecs
            .calls()
            .into_iter()
            .filter(|c| matches!(c, Call::DescribeHooks | Call::Heartbeat | Call::Complete))
            .collect()
    }
}

#[tokio::test]
async fn heartbeats_while_a_task_runs_then_continue_once_drained_once_across_a_restart() {
    let ecs = FakeEcs::registered(ARN, &["arn:aws:ecs:eu-west-1:123456789012:task/jobs/t1"]);
    ecs.terminating_on(lifecycle_hook());
    let mut h = Harness::new("", ecs);
    h.terminated_by_auto_scaling();
    h.step_after(Duration::ZERO).await;
    assert_eq!(h.hook_calls(), vec![Call::DescribeHooks, Call::Heartbeat]);
    assert_eq!(h.ecs.drain_calls(), vec![set_draining(ARN)], "drained too");
    h.step_after(secs(29)).await;
    assert_eq!(
        h.hook_calls().len(),
        2,
        "not before half the heartbeat timeout"
    );
    h.step_after(secs(1)).await;
    assert_eq!(h.hook_calls().len(), 3);
    assert_eq!(h.on_disk().lifecycle.unwrap().heartbeats, 2);
    assert_eq!(h.ecs.state().continued, 0, "not while the task runs");

    h.ecs.state().tasks.clear();
    for _ in 0..6 {
        h.step_after(secs(10)).await;
    }
    assert_eq!(h.ecs.state().continued, 1);
    let action = h.on_disk().lifecycle.unwrap();
    assert!(action.completed_at.is_some(), "{action:?}");
    assert_eq!(h.hook_calls().last(), Some(&Call::Complete));
    let complete_calls = |h: &Harness| h.count_calls(|c| matches!(c, Call::Complete));
    assert_eq!(complete_calls(&h), 1);

    // Restarted: the completion is read back, nothing more is sent.
    let Harness { dir, ecs, .. } = h;
    let calls_before = ecs.calls().len();
    let mut again = Harness::resume(dir, "", ecs, T0 + time::Duration::minutes(3));
    again.terminated_by_auto_scaling();
    for _ in 0..4 {
        again.step_after(secs(30)).await;
    }
    let new_hook_calls = again.ecs.calls()[calls_before..]
        .iter()
        .filter(|c| matches!(c, Call::DescribeHooks | Call::Heartbeat | Call::Complete))
        .count();
    assert_eq!(new_hook_calls, 0, "never completed twice");
    assert_eq!(again.ecs.state().continued, 1);
}

#[tokio::test]
async fn a_denied_heartbeat_backs_off_on_its_own_and_never_holds_the_drain() {
    let ecs = FakeEcs::registered(ARN, &["arn:aws:ecs:eu-west-1:123456789012:task/jobs/t1"]);
    ecs.terminating_on(lifecycle_hook());
    ecs.script(HEARTBEAT, &[Scripted::Fail(AwsFailure::Denied); 2]);
    let mut h = Harness::new("", ecs);
    h.terminated_by_auto_scaling();
    h.step_after(Duration::ZERO).await;
    assert_eq!(
        h.ecs.drain_calls(),
        vec![set_draining(ARN)],
        "the drain goes on"
    );
    assert!(h.confirmed_at().is_some());
    let heartbeats = |h: &Harness| h.count_calls(|c| matches!(c, Call::Heartbeat));
    assert_eq!(heartbeats(&h), 1);
    assert_eq!(h.state().lifecycle.clone().unwrap().heartbeats, 0);
    // The first backoff is at most 1 s: nothing is asked before it.
    h.clock.will_draw(u64::MAX);
    h.step_after(ms(100)).await;
    assert_eq!(heartbeats(&h), 1, "held by its backoff");
    for _ in 0..4 {
        h.step_after(secs(3)).await;
    }
    assert_eq!(heartbeats(&h), 3, "retried until accepted");
    assert_eq!(h.state().lifecycle.clone().unwrap().heartbeats, 1);
    assert!(
        h.agent
            .books
            .reporter
            .errors()
            .get("autoscaling")
            .copied()
            .unwrap_or(0)
            >= 2
    );
}

#[tokio::test]
async fn an_action_that_timed_out_is_recorded_gone_and_nothing_more_is_sent() {
    let ecs = FakeEcs::registered(ARN, &["arn:aws:ecs:eu-west-1:123456789012:task/jobs/t1"]);
    ecs.terminating_on(lifecycle_hook());
    ecs.state().hook_waiting = false;
    let mut h = Harness::new("", ecs);
    h.terminated_by_auto_scaling();
    h.step_after(Duration::ZERO).await;
    assert!(h.on_disk().lifecycle.unwrap().gone_at.is_some());
    for _ in 0..4 {
        h.step_after(secs(30)).await;
    }
    assert_eq!(h.hook_calls(), vec![Call::DescribeHooks, Call::Heartbeat]);
}

#[tokio::test]
async fn a_configured_hook_the_group_does_not_have_is_never_sent() {
    let ecs = FakeEcs::registered(ARN, &[]);
    ecs.terminating_on(lifecycle_hook());
    let mut h = Harness::new("lifecycle_hook = \"other\"", ecs);
    h.terminated_by_auto_scaling();
    for _ in 0..4 {
        h.step_after(secs(30)).await;
    }
    assert_eq!(h.hook_calls(), vec![Call::DescribeHooks], "asked once");
    assert_eq!(h.state().lifecycle, None);
}

#[tokio::test]
async fn a_throttled_ecs_never_holds_the_heartbeats() {
    let ecs = FakeEcs::registered(ARN, &["arn:aws:ecs:eu-west-1:123456789012:task/jobs/t1"]);
    ecs.terminating_on(lifecycle_hook());
    ecs.script(SET_DRAINING, &[THROTTLED; 20]);
    let mut h = Harness::new("", ecs);
    h.terminated_by_auto_scaling();
    h.step_after(Duration::ZERO).await;
    // ECS's backoff reaches 16 s by then (failures at 0, 1, 3, 7 and 15 s).
    for _ in 0..30 {
        h.step_after(secs(1)).await;
    }
    assert_eq!(h.confirmed_at(), None, "ECS still throttles");
    let action = h.state().lifecycle.clone().unwrap();
    assert_eq!(action.last_heartbeat_at, at(secs(30)), "on time");
    assert_eq!(action.heartbeats, 2);
}
