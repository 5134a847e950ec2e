//! A block ends when it says it does: the real `blockwatch run` against
//! moto and the IMDS simulator, enforcing the lease end (stop what still
//! runs, power off once, retry a failing power-off) and following deadlines
//! that move (lease tags, Capacity Block extensions, a stop and start).
//! `poweroff_command` is always a harmless command that records its runs.
//!
//! Over 400 lines: many independent scenarios of one rule.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use blockwatch_core::tags::TAG_LEASE_END;
use blockwatch_core::time_text::rfc3339;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use blockwatch_testkit::ec2_stub::{ec2_stub, fixed_end};
use blockwatch_testkit::imds::SpotInstanceAction;
use blockwatch_testkit::instance::{now, parse_time, phase, Agent, PATIENCE};
use blockwatch_testkit::introspection::IntrospectionStandIn;
use blockwatch_testkit::registered::{
    assert_on_time, receiver_refusing_first, registered_in_jobs, Registered, LATE, LEAD, STARTUP,
};
use time::OffsetDateTime;

/// Polls every second; the drain lead is each test's.
const QUICK: &str = "poll_interval = \"1s\"\ndrain_poll_interval = \"1s\"\n";
/// Lease tags and `pendingTime` are read again every second here.
const REFRESH: &str = "lease_refresh_interval = \"1s\"\n";

/// A fixture whose `poweroff_command` appends a line to a file.
struct Block {
    f: Registered,
    powered_off: PathBuf,
}

async fn block(config: &str) -> Block {
    let f = registered_in_jobs(&[], "").await;
    let powered_off = f.instance.root.path().join("powered-off");
    let command = format!("echo off >> {}", powered_off.display());
    let lead = if config.contains("drain_lead") {
        ""
    } else {
        "drain_lead = \"10s\"\n"
    };
    f.instance.write_config(&format!(
        "{QUICK}{lead}poweroff_command = {command:?}\n{config}"
    ));
    Block { f, powered_off }
}

impl Block {
    fn power_offs(&self) -> usize {
        std::fs::read_to_string(&self.powered_off)
            .unwrap_or_default()
            .lines()
            .count()
    }

    fn wait_powered_off(&self, agent: &Agent) -> serde_json::Value {
        self.f
            .instance
            .wait_for(agent, PATIENCE, "a recorded power-off", |s| {
                s["drain"]["poweroff_at"].is_string()
            })
    }

    fn set_lease_end(&self, end: OffsetDateTime) {
        self.f.instance.imds.update(|s| {
            s.tags
                .get_or_insert_with(Default::default)
                .insert(TAG_LEASE_END.into(), rfc3339(end));
        });
    }

    async fn stop_reason(&self, task: &str) -> Option<String> {
        self.f
            .instance
            .moto()
            .task_stopped_reason(&self.f.cluster_arn, task)
            .await
            .unwrap()
            // moto answers "" for a task still running.
            .filter(|reason| !reason.is_empty())
    }
}

fn time_at(snapshot: &serde_json::Value, pointer: &str) -> OffsetDateTime {
    parse_time(
        snapshot
            .pointer(pointer)
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("no {pointer} in {snapshot}")),
    )
}

#[tokio::test]
async fn a_job_running_at_the_lease_end_is_stopped_at_the_end_then_the_instance_powers_off_once() {
    let b = block("").await;
    let task = b.f.start_task().await;
    let end = b.f.lease_ends_in(STARTUP + LEAD);
    let agent = b.f.start();
    b.f.wait_draining(&agent, PATIENCE);
    assert_eq!(b.stop_reason(&task).await, None, "not stopped at the drain");

    let off = b.wait_powered_off(&agent);

    let stopped = time_at(&off, "/drain/end_stop_at");
    assert!(stopped >= end, "stopped before the end {end}: {stopped}");
    assert!(stopped <= end + LATE, "stopped late: {stopped}, end {end}");
    let reason = b.stop_reason(&task).await.unwrap_or_default();
    assert!(
        reason.starts_with("blockwatch: lease ended"),
        "the evaluateOnExit rule matches blockwatch:*: {reason}"
    );
    assert!(time_at(&off, "/drain/poweroff_at") >= stopped);
    assert_eq!(off["drain"]["poweroff_attempts"], 1);
    b.f.instance.wait_ticks(&agent, 3);
    assert_eq!(b.power_offs(), 1, "powered off once\n{}", agent.log());
    let log = agent.log();
    assert!(
        log.contains("the lease ended at") && log.contains("powering off with"),
        "{log}"
    );
}

/// `stop_tasks = false`: the instance role need not hold `ecs:StopTask`.
/// What runs at the end ends with the instance, as at a spot interruption.
#[tokio::test]
async fn with_stop_tasks_off_a_job_running_at_the_lease_end_is_not_stopped_and_the_instance_powers_off_once(
) {
    // With a job_stop_timeout a stop would be due 12 s before the end.
    let b = block("stop_tasks = false\ndrain_lead = \"20s\"\njob_stop_timeout = \"2s\"\n").await;
    let task = b.f.start_task().await;
    let end = b.f.lease_ends_in(STARTUP + time::Duration::seconds(20));
    let agent = b.f.start();
    agent.wait_for_log("stop_tasks=false (config file", PATIENCE);
    b.f.wait_draining(&agent, PATIENCE);

    let off = b.wait_powered_off(&agent);

    let log = agent.log();
    assert_eq!(
        b.stop_reason(&task).await,
        None,
        "the job still runs\n{log}"
    );
    assert_eq!(b.f.instance.moto().ecs_calls("StopTask"), 0, "{log}");
    assert!(off["drain"]["end_stop_at"].is_null(), "{off}");
    assert!(off["stop_at"].is_null(), "no stop planned: {off}");
    let powered = time_at(&off, "/drain/poweroff_at");
    assert!(
        powered >= end,
        "powered off before the end {end}: {powered}"
    );
    assert!(
        powered <= end + LATE,
        "at the end, with no stop wait: {powered}, end {end}"
    );
    b.f.instance.wait_ticks(&agent, 3);
    assert_eq!(b.power_offs(), 1, "powered off once\n{}", agent.log());
}

#[tokio::test]
async fn drained_before_the_lease_end_the_instance_powers_off_at_once() {
    // A lead of 30 s: drained at once, the power-off must not wait for T.
    let b = block("drain_lead = \"30s\"\n").await;
    let end = b.f.lease_ends_in(STARTUP + time::Duration::seconds(30));
    let agent = b.f.start();

    let off = b.wait_powered_off(&agent);

    let drained = time_at(&off, "/drain/drained_at");
    let powered = time_at(&off, "/drain/poweroff_at");
    assert!(powered >= drained);
    assert!(
        powered < end - time::Duration::seconds(20),
        "powered off {powered}, long before the end {end}"
    );
    assert_eq!(phase(&off), "powered-off");
    b.f.instance.wait_ticks(&agent, 2);
    assert_eq!(b.power_offs(), 1);
    agent.assert_log_has("drained before the lease ends at");
}

#[tokio::test]
async fn with_on_lease_end_none_nothing_is_stopped_and_nothing_powers_off() {
    let b = block("on_lease_end = \"none\"\n").await;
    let task = b.f.start_task().await;
    let end = b.f.lease_ends_in(STARTUP + LEAD);
    let agent = b.f.start();
    agent.wait_for_log("on_lease_end=none (config file", PATIENCE);
    b.f.wait_draining(&agent, PATIENCE);

    // Past the end, and ticks after it in which a stop and a power-off
    // would have happened.
    while now() <= end {
        std::thread::sleep(Duration::from_millis(200));
    }
    b.f.instance.wait_ticks(&agent, 3);

    let snapshot = b.f.instance.snapshot().unwrap();
    assert_eq!(phase(&snapshot), "draining", "{}", agent.log());
    assert!(snapshot["drain"]["end_stop_at"].is_null());
    assert_eq!(b.stop_reason(&task).await, None, "the job still runs");
    assert_eq!(b.power_offs(), 0);
}

#[tokio::test]
async fn a_failing_power_off_is_retried_and_recorded_only_once_it_succeeds() {
    let f = registered_in_jobs(&[], "").await;
    let tries = f.instance.root.path().join("tries");
    // Fails twice, then succeeds.
    let command = format!(
        "n=$(($(cat {0} 2>/dev/null || echo 0) + 1)); echo $n > {0}; [ $n -ge 3 ]",
        tries.display()
    );
    f.instance.write_config(&format!(
        "{QUICK}drain_lead = \"30s\"\npoweroff_command = {command:?}\n"
    ));
    f.lease_ends_in(STARTUP + time::Duration::seconds(60));
    let agent = f.start();

    let failed_once = f
        .instance
        .wait_for(&agent, PATIENCE, "a failed attempt", |s| {
            s["drain"]["poweroff_attempts"] == 1
                && std::fs::read_to_string(&tries).is_ok_and(|t| t.trim() == "1")
        });
    assert!(
        failed_once["drain"]["poweroff_at"].is_null(),
        "a failed power-off is not recorded as done"
    );
    let status = f
        .instance
        .command()
        .arg("status")
        .arg("--state-dir")
        .arg(f.instance.state_dir())
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        status.contains("power-off: 1 attempt(s) failed"),
        "{status}"
    );

    let done = f
        .instance
        .wait_for(&agent, PATIENCE, "a recorded power-off", |s| {
            s["drain"]["poweroff_at"].is_string()
        });

    assert_eq!(done["drain"]["poweroff_attempts"], 3);
    let first = time_at(&failed_once, "/drain/poweroff_attempted_at");
    let last = time_at(&done, "/drain/poweroff_attempted_at");
    assert!(
        last - first >= time::Duration::seconds(14),
        "backoff 5 s then 10 s: {first} .. {last}"
    );
    f.instance.wait_ticks(&agent, 3);
    assert_eq!(std::fs::read_to_string(&tries).unwrap().trim(), "3");
    let log = agent.log();
    assert!(log.contains("exited with"), "{log}");
    assert!(log.contains("retrying in 5s"), "{log}");
}

#[tokio::test]
async fn a_lease_tag_moved_while_watching_moves_the_drain_and_an_earlier_end_drains_then() {
    let b = block(REFRESH).await;
    b.f.lease_ends_in(time::Duration::hours(1));
    let agent = b.f.start();

    let later = now() + time::Duration::hours(2);
    b.set_lease_end(later);
    let moved = b.f.instance.wait_for(
        &agent,
        Duration::from_secs(20),
        "the drain time to move",
        |s| s["drain_at"] == rfc3339(later - LEAD),
    );
    assert_eq!(phase(&moved), "watching");
    assert_eq!(moved["deadline"]["at"], rfc3339(later));

    // Shortened: the drain starts at the new time, within one refresh.
    let sooner = now() + STARTUP + LEAD;
    b.set_lease_end(sooner);
    let drained = b.f.wait_draining(&agent, PATIENCE);
    assert_on_time(&drained, sooner - LEAD, &agent.log());
    agent.assert_log_has("lease moved");
}

#[tokio::test]
async fn a_lease_extended_while_draining_returns_the_instance_to_active() {
    let hook = receiver_refusing_first(0);
    let b = block(&format!("{REFRESH}webhook_url = {:?}\n", hook.url("/hook"))).await;
    let task = b.f.start_task().await;
    b.f.lease_ends_in(STARTUP + LEAD);
    let agent = b.f.start();
    b.f.wait_draining(&agent, PATIENCE);
    assert_eq!(b.f.status_at_moto().await, "DRAINING");

    let extended = now() + time::Duration::hours(1);
    b.set_lease_end(extended);

    let back =
        b.f.instance
            .wait_for(&agent, Duration::from_secs(20), "ACTIVE again", |s| {
                phase(s) == "watching" && s["undrain_pending"] == false
            });
    assert_eq!(back["drain_at"], rfc3339(extended - LEAD));
    assert_eq!(b.f.status_at_moto().await, "ACTIVE");
    assert_eq!(b.stop_reason(&task).await, None, "the job was left alone");
    assert_eq!(b.power_offs(), 0);
    let log = agent.log();
    assert!(
        log.contains("drain canceled: its deadline moved later"),
        "{log}"
    );
    let deadline = Instant::now() + PATIENCE;
    let canceled = loop {
        let found = hook
            .received()
            .into_iter()
            .find(|r| r.body.contains("\"drain-canceled\""));
        if let Some(found) = found {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "no drain-canceled webhook\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        canceled.body.contains("\"cause\":\"deadline-moved\""),
        "{}",
        canceled.body
    );
}

#[tokio::test]
async fn a_capacity_block_extension_moves_the_deadline_and_undoes_its_drain() {
    let b = block("capacity_block_refresh_interval = \"1s\"\n").await;
    let end_date = now() + time::Duration::minutes(30) + STARTUP + LEAD;
    let movable = fixed_end(Some(end_date));
    let ec2 = ec2_stub(
        b.f.instance.imds.state().instance_id,
        None,
        std::sync::Arc::clone(&movable),
    );
    let task = b.f.start_task().await;
    let agent =
        b.f.instance
            .spawn_run(&[], &[("AWS_ENDPOINT_URL_EC2", &ec2.url(""))]);
    let drained = b.f.wait_draining(&agent, PATIENCE);
    assert_eq!(drained["drain"]["reason"]["kind"], "capacity-block");

    let extended = end_date + time::Duration::hours(2);
    *movable.lock().unwrap() = Some(extended);

    let back =
        b.f.instance
            .wait_for(&agent, Duration::from_secs(20), "the extension", |s| {
                phase(s) == "watching" && s["undrain_pending"] == false
            });
    assert_eq!(
        back["deadline"]["at"],
        rfc3339(extended - time::Duration::minutes(30))
    );
    assert_eq!(back["deadline"]["event"]["kind"], "capacity-block");
    assert_eq!(b.f.status_at_moto().await, "ACTIVE");
    assert_eq!(b.stop_reason(&task).await, None);
    let log = agent.log();
    assert!(log.contains("EndDate is now"), "{log}");
}

#[tokio::test]
async fn a_drain_from_before_a_stop_and_start_is_finished_and_the_instance_is_active_again() {
    let b = block("").await;
    b.f.lease_ends_in(time::Duration::hours(3));
    let mut agent = b.f.start();
    let interrupted = now() + time::Duration::seconds(5);
    b.f.instance.imds.update(|s| {
        s.spot_instance_action = Some(SpotInstanceAction {
            action: "stop".into(),
            time: interrupted,
        });
    });
    b.f.wait_draining(&agent, PATIENCE);
    assert_eq!(b.f.status_at_moto().await, "DRAINING");

    // EC2 stops the instance (the agent with it) and starts it again later:
    // a new pendingTime, and no notice any more.
    agent.kill_9();
    std::thread::sleep(Duration::from_millis(1100));
    let started_again = now();
    b.f.instance.imds.update(|s| {
        s.spot_instance_action = None;
        s.pending_time = started_again;
    });
    let restarted = b.f.instance.spawn_run(&[], &[]);

    let back =
        b.f.instance
            .wait_for(&restarted, PATIENCE, "a new life", |s| {
                phase(s) == "watching" && s["undrain_pending"] == false
            });
    assert!(back["drain"].is_null());
    assert_eq!(b.f.status_at_moto().await, "ACTIVE");
    assert_eq!(back["drains_started"], 1);
    assert_eq!(b.power_offs(), 0);
    restarted.assert_log_has("the instance was started again");
}

#[tokio::test]
async fn a_hibernated_instance_that_resumes_is_watched_again_without_a_restart() {
    let b = block(REFRESH).await;
    b.f.lease_ends_in(time::Duration::hours(3));
    let agent = b.f.start();
    b.f.instance.imds.update(|s| {
        s.spot_instance_action = Some(SpotInstanceAction {
            action: "hibernate".into(),
            time: now() + time::Duration::seconds(5),
        });
    });
    b.f.wait_draining(&agent, PATIENCE);

    std::thread::sleep(Duration::from_millis(1100));
    b.f.instance.imds.update(|s| {
        s.spot_instance_action = None;
        s.pending_time = now();
    });

    b.f.instance
        .wait_for(&agent, Duration::from_secs(20), "a new life", |s| {
            phase(s) == "watching" && s["undrain_pending"] == false
        });
    assert_eq!(b.f.status_at_moto().await, "ACTIVE");
}

#[tokio::test]
async fn no_aws_request_while_watching_a_lease_over_several_tag_refreshes() {
    let b = block(REFRESH).await;
    let end = b.f.lease_ends_in(time::Duration::hours(2));
    let agent = b.f.start();
    agent.wait_for_start_reads();
    b.f.instance.wait_ticks(&agent, 1);
    let before = b.f.instance.moto().requests().len();
    let exchanges_before = b.f.instance.imds.exchanges().len();

    // Four ticks a second or more apart: the tags are due at least twice.
    b.f.instance.wait_ticks(&agent, 4);

    let during: Vec<_> =
        b.f.instance
            .moto()
            .requests()
            .into_iter()
            .skip(before)
            .collect();
    assert!(during.is_empty(), "AWS calls while idle: {during:?}");
    let refreshes: Vec<_> =
        b.f.instance
            .imds
            .exchanges()
            .into_iter()
            .skip(exchanges_before)
            .filter(|e| e.path == "/latest/meta-data/tags/instance/blockwatch:lease-end")
            .collect();
    assert!(refreshes.len() >= 2, "tags read from IMDS: {refreshes:?}");
    assert_eq!(
        b.f.instance.snapshot().unwrap()["deadline"]["at"],
        rfc3339(end)
    );

    // moto launches with the default shutdown behaviour, `stop`: said once.
    let log = agent.log();
    assert_eq!(
        log.matches("shutdown behaviour is `stop`").count(),
        1,
        "{log}"
    );
    let status =
        b.f.instance
            .command()
            .arg("status")
            .arg("--state-dir")
            .arg(b.f.instance.state_dir())
            .output()
            .unwrap();
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        status.contains("WARNING:   instance-initiated shutdown behaviour is `stop`"),
        "{status}"
    );
}

#[tokio::test]
async fn the_sigterm_a_power_off_brings_does_not_lose_its_record() {
    // `systemctl poweroff` makes systemd stop blockwatch.service at once;
    // here the command sends SIGTERM to the agent itself ($PPID of sh -c).
    let f = registered_in_jobs(&[], "").await;
    let ran = f.instance.root.path().join("ran");
    let command = format!("kill -TERM $PPID; sleep 1; echo off >> {}", ran.display());
    f.instance.write_config(&format!(
        "{QUICK}drain_lead = \"30s\"\npoweroff_command = {command:?}\n"
    ));
    f.lease_ends_in(STARTUP + time::Duration::seconds(30));
    let mut agent = f.start();

    let status = {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = agent.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "never stopped\n{}", agent.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    assert!(status.success(), "{status:?}\n{}", agent.log());
    let snapshot = f.instance.snapshot().unwrap();
    assert!(
        snapshot["drain"]["poweroff_at"].is_string(),
        "the command succeeded: recorded before stopping\n{snapshot:#}\n{}",
        agent.log()
    );
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "off\n");
    // Started again in the same life: nothing runs a second time.
    let again = f.instance.spawn_run(&[], &[]);
    again.wait_for_log("resuming", PATIENCE);
    f.instance.wait_ticks(&again, 3);
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "off\n");
    agent.kill_9();
}

/// `blockwatch status --json`, parsed.
fn status_json(f: &Registered) -> serde_json::Value {
    f.instance.status_json(f.instance.command())
}

#[tokio::test]
async fn with_a_job_stop_timeout_the_running_job_is_stopped_the_timeout_and_margin_before_the_lease_end(
) {
    // 5 s for the job to stop plus the 10 s margin: the stop is due at
    // T - 15 s, after the drain at T - 20 s.
    let hook = receiver_refusing_first(0);
    let b = block(&format!(
        "drain_lead = \"20s\"\njob_stop_timeout = \"5s\"\nwebhook_url = {:?}\n",
        hook.url("/hook")
    ))
    .await;
    let task = b.f.start_task().await;
    let end = b.f.lease_ends_in(STARTUP + time::Duration::seconds(25));
    let due = end - time::Duration::seconds(15);
    let agent = b.f.start();

    let status = status_json(&b.f);
    assert_eq!(
        status["stop_at"],
        rfc3339(due),
        "known from the start: {status}"
    );
    assert_eq!(
        status["drain_at"],
        rfc3339(end - time::Duration::seconds(20))
    );
    let text =
        b.f.instance
            .command()
            .args(["status", "--state-dir"])
            .arg(b.f.instance.state_dir())
            .output()
            .unwrap();
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains(&format!("stop at:   {}", rfc3339(due))),
        "{text}"
    );
    agent.assert_log_has("stops start at T - 15s");

    let stopped_state =
        b.f.instance
            .wait_for(&agent, PATIENCE, "the lease-end stop", |s| {
                s["drain"]["end_stop_at"].is_string()
            });

    let stopped = time_at(&stopped_state, "/drain/end_stop_at");
    let log = agent.log();
    assert!(stopped >= due, "stopped early: {stopped}, due {due}\n{log}");
    assert!(
        stopped <= due + LATE,
        "stopped late: {stopped}, due {due} (end {end})\n{log}"
    );
    assert!(
        now() < end,
        "the test saw the stop before the end: the machine is too slow to judge"
    );
    let reason = b.stop_reason(&task).await.unwrap_or_default();
    assert_eq!(
        reason,
        format!(
            "blockwatch: lease ends at {} (instance {})",
            rfc3339(end),
            stopped_state["instance_id"].as_str().unwrap()
        ),
        "the end is still ahead, and Batch retry rules match blockwatch:*"
    );
    assert_eq!(status_json(&b.f)["stop_at"], rfc3339(due));

    let deadline = Instant::now() + PATIENCE;
    let started = loop {
        let found = hook
            .received()
            .into_iter()
            .find(|r| r.body.contains("\"drain-started\""));
        if let Some(found) = found {
            break found;
        }
        assert!(Instant::now() < deadline, "no drain-started webhook\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let payload: serde_json::Value = serde_json::from_str(&started.body).unwrap();
    assert_eq!(payload["stop_at"], rfc3339(due), "{}", started.body);
}

/// An idle instance with `on_drained = "poweroff"` given `signal`: it
/// drains, and the test waits until it is drained and a few more polls.
async fn drained_for(
    signal: impl FnOnce(&mut blockwatch_testkit::imds::InstanceState),
) -> (Block, Agent) {
    let b = block("on_drained = \"poweroff\"\non_lease_end = \"none\"\n").await;
    let agent = b.f.start();
    b.f.instance.imds.update(signal);
    b.f.instance.wait_for(&agent, PATIENCE, "drained", |s| {
        phase(s) != "watching" && s["drain"]["drained_at"].is_string()
    });
    b.f.instance.wait_ticks(&agent, 3);
    (b, agent)
}

fn scheduled(code: &str) -> impl FnOnce(&mut blockwatch_testkit::imds::InstanceState) {
    let code = code.to_owned();
    move |s| {
        let at = now() + time::Duration::seconds(5);
        s.scheduled_events = vec![blockwatch_testkit::imds::ScheduledEvent {
            code,
            description: "scheduled".into(),
            event_id: "instance-event-0abc".into(),
            not_before: at,
            not_after: at + time::Duration::minutes(15),
            state: "active".into(),
        }];
    }
}

fn spot_notice(action: &str) -> impl FnOnce(&mut blockwatch_testkit::imds::InstanceState) {
    let action = action.to_owned();
    move |s| {
        s.spot_instance_action = Some(SpotInstanceAction {
            action,
            time: now() + time::Duration::seconds(5),
        });
    }
}

/// Drained for a signal after which the instance comes back: with
/// `on_drained = "poweroff"` it is not powered off.
async fn drains_but_never_powers_off(
    signal: impl FnOnce(&mut blockwatch_testkit::imds::InstanceState),
) -> (Block, Agent) {
    let (b, agent) = drained_for(signal).await;
    let snapshot = b.f.instance.snapshot().unwrap();
    assert_eq!(phase(&snapshot), "drained", "{snapshot:#}\n{}", agent.log());
    assert_eq!(b.f.status_at_moto().await, "DRAINING");
    assert_eq!(b.power_offs(), 0, "{}", agent.log());
    assert!(
        snapshot["drain"]["poweroff_attempts"].is_null()
            || snapshot["drain"]["poweroff_attempts"] == 0
    );
    (b, agent)
}

#[tokio::test]
async fn a_system_reboot_drains_never_powers_off_and_its_completion_makes_the_instance_active() {
    let (b, agent) = drains_but_never_powers_off(scheduled("system-reboot")).await;
    b.f.instance
        .imds
        .update(|s| s.scheduled_events[0].state = "completed".into());
    b.f.instance
        .wait_for(&agent, PATIENCE, "ACTIVE again", |s| {
            phase(s) == "watching" && s["undrain_pending"] == false
        });
    assert_eq!(b.f.status_at_moto().await, "ACTIVE");
    assert_eq!(b.power_offs(), 0);
}

#[tokio::test]
async fn an_instance_reboot_drains_and_never_powers_off() {
    drains_but_never_powers_off(scheduled("instance-reboot")).await;
}

#[tokio::test]
async fn system_maintenance_drains_and_never_powers_off() {
    drains_but_never_powers_off(scheduled("system-maintenance")).await;
}

#[tokio::test]
async fn a_spot_stop_notice_drains_and_never_powers_off() {
    drains_but_never_powers_off(spot_notice("stop")).await;
}

#[tokio::test]
async fn a_spot_hibernate_notice_drains_and_never_powers_off() {
    drains_but_never_powers_off(spot_notice("hibernate")).await;
}

#[tokio::test]
async fn an_instance_retirement_drains_and_powers_off_when_drained() {
    // The same setup powers off for an end: the tests above would see one.
    let (b, agent) = drained_for(scheduled("instance-retirement")).await;
    b.wait_powered_off(&agent);
    assert_eq!(b.power_offs(), 1);
}

impl Block {
    /// The local ECS agent, as a stand-in that keeps a stopped task's
    /// containers running for `stop_timeout` (as ECS does).
    fn ecs_agent(&self, stop_timeout: Duration) -> IntrospectionStandIn {
        IntrospectionStandIn::start(
            self.f.instance.moto(),
            &self.f.cluster_arn,
            &self.f.container_instance,
        )
        .unwrap()
        .with_stop_timeout(stop_timeout)
    }

    /// Starts the agent with `ecs_agent` as the local ECS agent.
    fn start_beside(&self, ecs_agent: &IntrospectionStandIn) -> Agent {
        let url = ecs_agent.metadata_url();
        let agent = self
            .f
            .instance
            .spawn_run(&["--ecs-introspection-url", &url], &[]);
        self.f
            .instance
            .wait_for(&agent, PATIENCE, "watching", |s| phase(s) != "joining");
        agent
    }
}

/// How long after the stop the power-off came, from the state file.
fn stop_to_power_off(off: &serde_json::Value, stop: &str) -> time::Duration {
    time_at(off, "/drain/poweroff_attempted_at") - time_at(off, stop)
}

#[tokio::test]
async fn an_end_first_seen_ten_minutes_past_drains_stops_waits_then_powers_off_in_order() {
    let b = block("").await;
    let task = b.f.start_task().await;
    let ecs_agent = b.ecs_agent(Duration::from_secs(6));
    let end = b.f.lease_ends_in(-time::Duration::minutes(10));
    let agent = b.start_beside(&ecs_agent);

    let off = b.wait_powered_off(&agent);

    let drained = time_at(&off, "/drain/draining_confirmed_at");
    let stopped = time_at(&off, "/drain/end_stop_at");
    assert!(drained <= stopped, "{off:#}");
    assert!(
        stop_to_power_off(&off, "/drain/end_stop_at") >= time::Duration::seconds(6),
        "the job had its 6 s stop timeout on the host\n{off:#}\n{}",
        agent.log()
    );
    let reason = b.stop_reason(&task).await.unwrap_or_default();
    assert!(reason.starts_with("blockwatch: lease ended"), "{reason}");
    let log = agent.log();
    let at = |needle: &str| {
        log.find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in\n{log}"))
    };
    assert!(
        at("set to DRAINING") < at("stopped 1 task(s)")
            && at("stopped 1 task(s)") < at("the stopped tasks are gone")
            && at("the stopped tasks are gone") < at("powering off with"),
        "DRAINING, the stop, its wait, then the power-off\n{log}"
    );
    assert!(log.contains(&rfc3339(end)), "{log}");
    assert_eq!(b.power_offs(), 1);
}

#[tokio::test]
async fn at_the_lease_end_the_power_off_waits_for_the_job_stop_timeout_on_the_host() {
    // job_stop_timeout 5 s: stopped at T - 15 s; the host runs the job's
    // container until its SIGKILL 5 s later, and only then powers off.
    let b = block("drain_lead = \"20s\"\njob_stop_timeout = \"5s\"\n").await;
    b.f.start_task().await;
    let ecs_agent = b.ecs_agent(Duration::from_secs(5));
    b.f.lease_ends_in(STARTUP + time::Duration::seconds(25));
    let agent = b.start_beside(&ecs_agent);

    let off = b.wait_powered_off(&agent);

    let waited = stop_to_power_off(&off, "/drain/end_stop_at");
    assert!(
        waited >= time::Duration::seconds(5),
        "powered off {waited} after the stop: inside the job's stop timeout\n{}",
        agent.log()
    );
    assert!(
        waited <= time::Duration::seconds(15) + LATE,
        "waited past the stop timeout and margin: {waited}"
    );
    assert!(ecs_agent.task_requests() > 0, "counted on the host");
    assert_eq!(b.power_offs(), 1);
}

#[tokio::test]
async fn after_a_stop_grace_stop_the_power_off_waits_for_the_job_to_stop_on_the_host() {
    let b = block("drain_lead = \"30s\"\nstop_grace = \"25s\"\njob_stop_timeout = \"8s\"\n").await;
    b.f.start_task().await;
    let ecs_agent = b.ecs_agent(Duration::from_secs(8));
    b.f.lease_ends_in(STARTUP + time::Duration::seconds(30));
    let agent = b.start_beside(&ecs_agent);

    let off = b.wait_powered_off(&agent);

    assert!(off["drain"]["tasks_stopped_at"].is_string(), "{off:#}");
    let waited = stop_to_power_off(&off, "/drain/tasks_stopped_at");
    assert!(
        waited >= time::Duration::seconds(8),
        "powered off {waited} after the grace stop: inside the job's stop timeout\n{}",
        agent.log()
    );
    assert_eq!(b.power_offs(), 1);
}

#[tokio::test]
async fn a_state_directory_that_cannot_be_written_at_the_lease_end_still_powers_off() {
    let b = block("").await;
    b.f.lease_ends_in(STARTUP + LEAD);
    let agent = b.f.start();
    // The disk goes bad under the agent: a file stands where its state
    // directory was, so every save fails.
    let state_dir = b.f.instance.state_dir();
    std::fs::rename(&state_dir, state_dir.with_extension("gone")).unwrap();
    std::fs::write(&state_dir, b"").unwrap();

    let deadline = Instant::now() + PATIENCE;
    while b.power_offs() == 0 {
        assert!(
            Instant::now() < deadline,
            "never powered off\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = agent.log();
    assert!(log.contains("cannot be recorded"), "{log}");
    assert!(log.contains("powering off all the same"), "{log}");
}

#[tokio::test]
async fn a_lease_moved_a_second_before_an_idle_drain_is_seen_by_the_last_look_and_nothing_powers_off(
) {
    // The default refresh (1 min): the drain starts on the old lease; the
    // last look before the power-off reads the new tag.
    let b = block("drain_lead = \"10s\"\n").await;
    let end = b.f.lease_ends_in(STARTUP + LEAD);
    let agent = b.f.start();
    let drain_at = end - LEAD;
    while now() < drain_at - time::Duration::seconds(1) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let extended = now() + time::Duration::hours(1);
    b.set_lease_end(extended);

    let back =
        b.f.instance
            .wait_for(&agent, PATIENCE, "watching the new lease", |s| {
                phase(s) == "watching"
                    && s["deadline"]["at"] == rfc3339(extended)
                    && s["undrain_pending"] == false
            });
    b.f.instance.wait_ticks(&agent, 3);
    assert_eq!(b.power_offs(), 0, "{}", agent.log());
    assert!(back["drain"].is_null());
    assert_eq!(b.f.status_at_moto().await, "ACTIVE");
}
