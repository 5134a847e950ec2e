//! `blockwatch run` and `status` end to end: the real binary, moto's server
//! and the IMDS simulator, on short leases (drain_lead 10 s, poll 1 s).
//!
//! Over 400 lines: many independent scenarios of one command.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use blockwatch_core::tags::{TAG_CLUSTER, TAG_LEASE_DURATION, TAG_LEASE_END};
use blockwatch_core::time_text::rfc3339;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use blockwatch_testkit::ec2_stub::{ec2_stub, fixed_end};
use blockwatch_testkit::imds::{ScheduledEvent, SpotInstanceAction};
use blockwatch_testkit::instance::{
    agent_binary, nothing_runs, now, parse_time, phase, tags, Agent, Instance, CLOSED_ENDPOINT,
    FAST, PATIENCE,
};
use blockwatch_testkit::registered::{
    assert_on_time, receiver_refusing_first, registered_in_jobs, Registered, DRAINS, LATE, LEAD,
    STARTUP,
};
use blockwatch_testkit::stub::StubServer;

#[tokio::test]
async fn lease_end_tag_drains_at_end_minus_lead() {
    let f = registered_in_jobs(&[], "").await;
    let end = f.lease_ends_in(STARTUP + LEAD);
    let agent = f.start();
    let watching = f.instance.snapshot().unwrap();
    assert_eq!(phase(&watching), "watching");
    assert_eq!(watching["deadline"]["at"], rfc3339(end));
    assert_eq!(f.drain_calls(), 0);

    let drained = f.wait_draining(&agent, PATIENCE);

    assert_on_time(&drained, end - LEAD, &agent.log());
    assert_eq!(drained["drain"]["reason"]["kind"], "lease");
    assert_eq!(f.status_at_moto().await, "DRAINING");
    assert_eq!(f.drain_calls(), 1);
}

#[tokio::test]
async fn lease_duration_counts_from_pending_time() {
    let f = registered_in_jobs(&[(TAG_LEASE_DURATION, "1h")], "").await;
    let launched = now() - time::Duration::hours(1) + STARTUP + LEAD;
    f.instance.imds.update(|s| s.pending_time = launched);
    let agent = f.start();

    let drained = f.wait_draining(&agent, PATIENCE);

    assert_on_time(
        &drained,
        launched + time::Duration::hours(1) - LEAD,
        &agent.log(),
    );
    assert_eq!(f.status_at_moto().await, "DRAINING");
}

#[tokio::test]
async fn spot_notice_drains_at_once_through_the_introspection_api() {
    let f = registered_in_jobs(&[], "").await;
    let introspection = {
        let body = serde_json::json!({"Cluster": "jobs", "ContainerInstanceArn": f.container_instance, "Version": "Amazon ECS Agent - v1.89.0"}).to_string();
        StubServer::start(move |_, _| (200, body.clone())).unwrap()
    };
    let agent = f.instance.spawn_run(
        &[
            "--ecs-introspection-url",
            &introspection.url("/v1/metadata"),
        ],
        &[],
    );
    f.instance
        .wait_for(&agent, PATIENCE, "watching", |s| phase(s) == "watching");
    f.instance.wait_ticks(&agent, 2);
    assert_eq!(f.drain_calls(), 0);

    let noticed = now();
    // Real notices give 2 minutes against a 10-minute lead; here 5 s against 10 s.
    let terminates = noticed + time::Duration::seconds(5);
    f.instance.imds.update(|s| {
        s.spot_instance_action = Some(SpotInstanceAction {
            action: "terminate".into(),
            time: terminates,
        })
    });
    let drained = f.wait_draining(&agent, PATIENCE);

    // The notice is shorter than the lead: drain as soon as it is seen.
    assert_on_time(&drained, noticed, &agent.log());
    assert_eq!(drained["deadline"]["at"], rfc3339(terminates));
    assert_eq!(drained["deadline"]["event"]["kind"], "spot-interruption");
    assert_eq!(f.status_at_moto().await, "DRAINING");
    assert!(!introspection.received().is_empty());
    assert_eq!(
        f.instance.moto().ecs_calls("ListContainerInstances"),
        0,
        "found through introspection"
    );
}

#[tokio::test]
async fn scheduled_event_drains_and_its_cancel_returns_the_instance_to_active() {
    let f = registered_in_jobs(&[], "").await;
    let not_before = now() + STARTUP + LEAD;
    f.instance.imds.update(|s| {
        s.scheduled_events = vec![ScheduledEvent::reboot(
            "instance-event-0d59937288b749b32",
            not_before,
        )]
    });
    let agent = f.start();

    let drained = f.wait_draining(&agent, PATIENCE);
    assert_on_time(&drained, not_before - LEAD, &agent.log());
    assert_eq!(
        drained["drain"]["reason"]["id"],
        "instance-event-0d59937288b749b32"
    );
    assert_eq!(f.status_at_moto().await, "DRAINING");

    f.instance
        .imds
        .update(|s| s.scheduled_events[0].state = "canceled".into());
    let back = f.instance.wait_for(&agent, PATIENCE, "the cancel", |s| {
        phase(s) == "watching" && !s["undrain_pending"].as_bool().unwrap_or(true)
    });
    assert!(back["drain"].is_null());
    assert_eq!(f.status_at_moto().await, "ACTIVE");
    assert_eq!(f.drain_calls(), 2, "DRAINING once, ACTIVE once");
}

#[tokio::test]
async fn autoscaling_terminated_drains_now() {
    let f = registered_in_jobs(&[], "").await;
    let agent = f.start();
    f.instance
        .imds
        .update(|s| s.target_lifecycle_state = Some("InService".into()));
    f.instance.wait_ticks(&agent, 2);
    assert_eq!(
        phase(&f.instance.snapshot().unwrap()),
        "watching",
        "InService is not an end"
    );

    let seen = now();
    f.instance
        .imds
        .update(|s| s.target_lifecycle_state = Some("Terminated".into()));
    let drained = f.wait_draining(&agent, PATIENCE);

    assert_on_time(&drained, seen, &agent.log());
    assert_eq!(drained["drain"]["reason"]["kind"], "autoscaling");
}

#[tokio::test]
async fn rebalance_drains_only_when_opted_in() {
    let off = registered_in_jobs(&[], "").await;
    let agent = off.start();
    off.instance
        .imds
        .update(|s| s.rebalance_notice_time = Some(now()));
    agent.wait_for_log("rebalance recommendation seen; not draining", PATIENCE);
    off.instance.wait_ticks(&agent, 2);
    assert_eq!(phase(&off.instance.snapshot().unwrap()), "watching");
    assert_eq!(off.drain_calls(), 0);

    let on = registered_in_jobs(&[], "drain_on_rebalance = true\n").await;
    let agent = on.start();
    let seen = now();
    on.instance
        .imds
        .update(|s| s.rebalance_notice_time = Some(seen));
    let drained = on.wait_draining(&agent, PATIENCE);
    assert_on_time(&drained, seen, &agent.log());
    assert_eq!(drained["drain"]["reason"]["kind"], "rebalance");
}

#[tokio::test]
async fn notify_socket_gets_ready_and_a_status_naming_the_cluster() {
    let f = registered_in_jobs(&[], "").await;
    f.lease_ends_in(time::Duration::hours(2));
    let socket_path = f.instance.root.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let agent = f.instance.spawn_run(
        &[],
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "3000000"),
        ],
    );

    let mut messages = Vec::new();
    let mut buffer = [0u8; 4096];
    let fed = |messages: &Vec<String>| messages.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    while !messages.iter().any(|m: &String| m.contains("READY=1")) || fed(&messages) < 3 {
        let n = socket
            .recv(&mut buffer)
            .unwrap_or_else(|e| panic!("no notification: {e}\n{}", agent.log()));
        messages.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
    }
    let all = messages.join("\n");
    let status = all
        .lines()
        .find(|l| l.starts_with("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS in {all}"));
    assert!(
        status.starts_with("STATUS=cluster jobs · lease ends "),
        "{status}"
    );
    assert!(
        status.contains("(in 1h59m") || status.contains("(in 2h00m"),
        "{status}"
    );
    assert!(status.contains("· drain at "), "{status}");
    // Nothing answers at the test's introspection URL: the ECS agent is "down".
    assert!(status.ends_with("· ECS agent not answering"), "{status}");
    agent.assert_log_has("the ECS agent does not answer");
    assert!(
        all.lines().filter(|l| *l == "WATCHDOG=1").count() >= 3,
        "the watchdog is fed: {all}"
    );
}

#[tokio::test]
async fn waits_for_the_container_instance_to_register_before_draining() {
    let instance = Instance::with_moto().await;
    let cluster_arn = instance.moto().create_cluster("jobs").await.unwrap();
    let end = now() + time::Duration::seconds(5);
    let id = instance
        .launch(
            &[(TAG_CLUSTER, "jobs"), (TAG_LEASE_END, &rfc3339(end))],
            true,
        )
        .await;
    instance.write_config("poll_interval = \"1s\"\ndrain_lead = \"10s\"\n");
    let agent = instance.spawn_run(&[], &[]);
    instance.wait_for(&agent, PATIENCE, "a drain decision", |s| {
        phase(s) == "draining"
    });
    agent.wait_for_log(
        &format!("waiting for {id} to register as a container instance"),
        PATIENCE,
    );
    assert_eq!(
        instance.snapshot().unwrap()["drain"]["draining_confirmed_at"],
        serde_json::Value::Null
    );

    // The ECS agent registers late; blockwatch finds it on a later retry.
    let container_instance = instance
        .moto()
        .register_container_instance(&cluster_arn, &id)
        .await
        .unwrap();
    let f = Registered {
        instance,
        cluster_arn,
        container_instance,
    };
    f.instance
        .wait_for(&agent, PATIENCE, "a confirmed drain", |s| {
            s["drain"]["draining_confirmed_at"].is_string()
        });
    assert_eq!(f.status_at_moto().await, "DRAINING");
    assert_eq!(f.instance.moto().ecs_calls(DRAINS), 1);
}

#[tokio::test]
async fn no_aws_call_while_idle() {
    let end = now() + time::Duration::hours(2);
    let f = registered_in_jobs(&[(TAG_LEASE_END, &rfc3339(end))], "").await;
    let agent = f.start();
    agent.wait_for_start_reads();
    f.instance.wait_ticks(&agent, 1);
    let before = f.instance.moto().requests().len();

    f.instance.wait_ticks(&agent, 5);

    let during: Vec<_> = f
        .instance
        .moto()
        .requests()
        .into_iter()
        .skip(before)
        .collect();
    assert!(
        during.is_empty(),
        "AWS calls while idle: {during:?}\n{}",
        agent.log()
    );
}

#[tokio::test]
async fn kill_9_mid_drain_resumes_without_a_second_drain() {
    let end = now() + time::Duration::seconds(5);
    let f = registered_in_jobs(&[(TAG_LEASE_END, &rfc3339(end))], "").await;
    let powered_off = f.instance.root.path().join("powered-off");
    let command = format!("echo off >> {}", powered_off.display());
    f.instance.write_config(&format!(
        "poll_interval = \"1s\"\ndrain_lead = \"10s\"\ndrain_poll_interval = \"1s\"\non_drained = \"poweroff\"\npoweroff_command = {command:?}\n"
    ));
    let task = f.start_task().await;
    let mut agent = f.start();
    f.wait_draining(&agent, PATIENCE);
    f.instance.wait_for(&agent, PATIENCE, "a task count", |s| {
        s["drain"]["running_tasks"] == 1
    });
    assert_eq!(f.drain_calls(), 1);

    agent.kill_9();
    let counted = f.instance.moto().ecs_calls("ListTasks");
    let mut restarted = f.instance.spawn_run(&[], &[]);
    restarted.wait_for_log("resuming", PATIENCE);
    // Until the restarted agent has counted tasks once: it has acted on the
    // resumed drain, and a second DRAINING call would have been made by now.
    let deadline = std::time::Instant::now() + PATIENCE;
    while f.instance.moto().ecs_calls("ListTasks") <= counted {
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted agent never counted tasks\n{}",
            restarted.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let snapshot = f.instance.snapshot().unwrap();
    assert_eq!(phase(&snapshot), "draining", "{}", restarted.log());
    assert_eq!(snapshot["drains_started"], 1);
    assert_eq!(
        f.drain_calls(),
        1,
        "no second DRAINING call after the restart\n{}",
        restarted.log()
    );
    assert!(!powered_off.exists(), "a job is still running");

    f.instance
        .moto()
        .stop_task(&f.cluster_arn, &task)
        .await
        .unwrap();
    let done = f
        .instance
        .wait_for(&restarted, PATIENCE, "drained", nothing_runs);
    assert_eq!(done["drains_completed"], 1);
    let deadline = std::time::Instant::now() + PATIENCE;
    while !powered_off.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "never powered off\n{}",
            restarted.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    f.instance.wait_ticks(&restarted, 2);
    assert_eq!(
        std::fs::read_to_string(&powered_off).unwrap(),
        "off\n",
        "powered off once"
    );

    // A restart after the power-off does not run it again.
    restarted.kill_9();
    let again = f.instance.spawn_run(&[], &[]);
    again.wait_for_log("resuming", PATIENCE);
    f.instance.wait_ticks(&again, 3);
    assert_eq!(std::fs::read_to_string(&powered_off).unwrap(), "off\n");
    assert_eq!(f.drain_calls(), 1);
}

#[tokio::test]
async fn status_reads_the_state_file_without_network() {
    let end = now() + time::Duration::hours(3);
    let f = registered_in_jobs(&[(TAG_LEASE_END, &rfc3339(end))], "").await;
    let agent = f.start();
    drop(agent);

    // No IMDS, no AWS: status only reads the state directory.
    let mut bare = std::process::Command::new(agent_binary());
    bare.env_clear();
    let json = f.instance.status_json(bare);
    for key in [
        "instance_id",
        "cluster",
        "compute_environment",
        "phase",
        "deadline",
        "deadline_source",
        "drain_at",
    ] {
        assert!(json.get(key).is_some(), "status --json lacks {key}: {json}");
    }
    assert_eq!(json["phase"], "watching");
    assert_eq!(json["cluster"], "jobs");
    assert_eq!(json["deadline"], rfc3339(end));
    assert_eq!(json["deadline_source"], "lease");
    assert_eq!(json["drain_at"], rfc3339(end - LEAD));

    let human = std::process::Command::new(agent_binary())
        .env_clear()
        .args(["status", "--state-dir"])
        .arg(f.instance.state_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("phase:     watching") && text.contains("cluster jobs · lease ends"),
        "{text}"
    );

    let empty = tempfile::tempdir().unwrap();
    let none = std::process::Command::new(agent_binary())
        .env_clear()
        .args(["status", "--state-dir"])
        .arg(empty.path())
        .output()
        .unwrap();
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no state in"));
}

#[tokio::test]
async fn webhook_gets_both_events_even_when_its_first_attempts_fail() {
    let receiver = receiver_refusing_first(2);
    let url = receiver.url("/hooks/T000/secret-token?key=hunter2");
    let end = now() + time::Duration::seconds(5);
    let f = registered_in_jobs(
        &[(TAG_LEASE_END, &rfc3339(end))],
        &format!("webhook_url = {url:?}\n"),
    )
    .await;
    let agent = f.start();

    f.instance
        .wait_for(&agent, PATIENCE, "drained", nothing_runs);
    let deadline = std::time::Instant::now() + PATIENCE;
    let events = loop {
        // Requests 0 and 1 were answered 503; only later ones were accepted.
        let events: Vec<serde_json::Value> = receiver
            .received()
            .iter()
            .skip(2)
            .filter_map(|r| serde_json::from_str(&r.body).ok())
            .collect();
        let names: Vec<_> = events
            .iter()
            .map(|e| e["event"].as_str().unwrap_or_default().to_owned())
            .collect();
        if names.contains(&"drain-started".to_owned())
            && names.contains(&"drain-completed".to_owned())
        {
            break events;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "webhook events: {names:?}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let started = events
        .iter()
        .find(|e| e["event"] == "drain-started")
        .unwrap();
    assert_eq!(started["cluster"], "jobs");
    assert_eq!(started["deadline"], rfc3339(end));
    assert_eq!(started["deadline_source"], "lease");
    assert!(started["instance_id"].as_str().unwrap().starts_with("i-"));
    assert!(
        receiver.received().len() >= 4,
        "two failed attempts, then both events"
    );
    assert!(
        !agent.log().contains("secret-token") && !agent.log().contains("hunter2"),
        "{}",
        agent.log()
    );
}

#[tokio::test]
async fn dry_run_logs_and_changes_nothing() {
    let end = now() + time::Duration::seconds(5);
    let f = registered_in_jobs(&[(TAG_LEASE_END, &rfc3339(end))], "dry_run = true\n").await;
    // A dry run keeps its state in a private directory (host_safety.rs).
    let agent = f.instance.spawn_run(&[], &[]);
    agent.wait_for_log(
        "dry run, nothing changed: would set the container instance to DRAINING",
        PATIENCE,
    );
    f.instance.wait_ticks(&agent, 2);
    assert!(f.instance.snapshot().is_none(), "{}", agent.log());

    assert_eq!(f.drain_calls(), 0);
    assert_eq!(f.status_at_moto().await, "ACTIVE");
    agent.assert_log_has("dry run, nothing changed: would set the container instance to DRAINING");
}

#[tokio::test]
async fn stop_grace_stops_remaining_tasks_with_a_blockwatch_reason() {
    let f = registered_in_jobs(&[], "stop_grace = \"8s\"\n").await;
    let task = f.start_task().await;
    let end = f.lease_ends_in(STARTUP + LEAD);
    let agent = f.start();

    let drained = f
        .instance
        .wait_for(&agent, PATIENCE, "drained", nothing_runs);

    let stopped_at = parse_time(drained["drain"]["tasks_stopped_at"].as_str().unwrap());
    assert!(
        stopped_at >= end - time::Duration::seconds(8),
        "stopped before T - stop_grace: {stopped_at}"
    );
    assert!(
        stopped_at <= end - time::Duration::seconds(8) + LATE,
        "stopped late: {stopped_at}"
    );
    let reason = f
        .instance
        .moto()
        .task_stopped_reason(&f.cluster_arn, &task)
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(reason.starts_with("blockwatch:"), "{reason}");
}

#[tokio::test]
async fn metrics_file_follows_the_phase() {
    let metrics = tempfile::tempdir().unwrap();
    let path = metrics.path().join("blockwatch.prom");
    let f = registered_in_jobs(
        &[],
        &format!(
            "metrics_file = {:?}\non_lease_end = \"none\"\n",
            path.to_str().unwrap()
        ),
    )
    .await;
    let end = f.lease_ends_in(STARTUP + LEAD);
    let agent = f.start();
    // The metrics file is written just after the state file: wait for it.
    let watching = metrics_once(&path, &agent, "blockwatch_phase{phase=\"watching\"} 1");
    assert!(
        watching.contains(&format!(
            "blockwatch_deadline_timestamp_seconds {}",
            end.unix_timestamp()
        )),
        "{watching}"
    );
    assert!(
        watching.contains("blockwatch_drains_started_total 0"),
        "{watching}"
    );

    f.instance
        .wait_for(&agent, PATIENCE, "drained", nothing_runs);
    let drained = metrics_once(&path, &agent, "blockwatch_phase{phase=\"drained\"} 1");
    assert!(
        drained.contains("blockwatch_drains_started_total 1"),
        "{drained}"
    );
    assert!(
        drained.contains("blockwatch_drains_completed_total 1"),
        "{drained}"
    );
    assert!(
        drained.contains("# TYPE blockwatch_errors_total counter"),
        "{drained}"
    );
}

/// The metrics file once it contains `line`.
fn metrics_once(path: &std::path::Path, agent: &Agent, line: &str) -> String {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().any(|l| l == line) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {line:?} in {}: {text}\n{}",
            path.display(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn legacy_spot_block_ends_at_launch_plus_block_duration() {
    let f = registered_in_jobs(&[], "").await;
    let launched = now() - time::Duration::minutes(60) + STARTUP + LEAD;
    let instance_id = f.instance.imds.state().instance_id;
    f.instance.imds.update(|s| s.pending_time = launched);
    let ec2 = ec2_stub(instance_id, Some(60), fixed_end(None));
    let agent = f
        .instance
        .spawn_run(&[], &[("AWS_ENDPOINT_URL_EC2", &ec2.url(""))]);

    let drained = f.wait_draining(&agent, PATIENCE);

    assert_on_time(
        &drained,
        launched + time::Duration::minutes(60) - LEAD,
        &agent.log(),
    );
    assert_eq!(drained["drain"]["reason"]["kind"], "legacy-spot-block");
    assert_eq!(drained["drain"]["reason"]["id"], "sir-0123abcd");
}

#[tokio::test]
async fn capacity_block_ends_thirty_minutes_before_its_end_date() {
    let f = registered_in_jobs(&[], "").await;
    let end_date = now() + time::Duration::minutes(30) + STARTUP + LEAD;
    let ec2 = ec2_stub(
        f.instance.imds.state().instance_id,
        None,
        fixed_end(Some(end_date)),
    );
    let agent = f
        .instance
        .spawn_run(&[], &[("AWS_ENDPOINT_URL_EC2", &ec2.url(""))]);

    let drained = f.wait_draining(&agent, PATIENCE);

    assert_on_time(
        &drained,
        end_date - time::Duration::minutes(30) - LEAD,
        &agent.log(),
    );
    assert_eq!(drained["drain"]["reason"]["kind"], "capacity-block");
}

#[tokio::test]
async fn a_denied_ec2_lookup_is_logged_once_and_never_fatal() {
    let f = registered_in_jobs(&[], "").await;
    let denied = StubServer::start(|_, _| {
        (403, "<Response><Errors><Error><Code>UnauthorizedOperation</Code><Message>You are not authorized to perform: ec2:DescribeInstances</Message></Error></Errors><RequestID>r</RequestID></Response>".into())
    })
    .unwrap();
    let end = f.lease_ends_in(STARTUP + LEAD);
    let agent = f
        .instance
        .spawn_run(&[], &[("AWS_ENDPOINT_URL_EC2", &denied.url(""))]);

    let drained = f.wait_draining(&agent, PATIENCE);

    assert_on_time(&drained, end - LEAD, &agent.log());
    let log = agent.log();
    assert_eq!(
        log.matches("ec2:DescribeInstances: UnauthorizedOperation")
            .count(),
        1,
        "{log}"
    );
    let asked = |action: &str| {
        denied
            .received()
            .iter()
            .filter(|r| r.body.contains(&format!("Action={action}")))
            .count()
    };
    assert_eq!(asked("DescribeInstances"), 1, "asked once, at start");
    // The shutdown behaviour is read once too; its denial is a warning.
    assert_eq!(asked("DescribeInstanceAttribute"), 1);
    assert_eq!(denied.received().len(), 2);
    assert_eq!(
        log.matches("cannot tell whether a power-off terminates this instance")
            .count(),
        1,
        "{log}"
    );
}

#[tokio::test]
async fn with_moto_the_ec2_lookups_find_no_block_and_the_lease_still_rules() {
    let end = now() + time::Duration::hours(1);
    let f = registered_in_jobs(&[(TAG_LEASE_END, &rfc3339(end))], "").await;
    let seeded = f.instance.moto().requests().len();
    let agent = f.start();
    assert_eq!(
        f.instance.snapshot().unwrap()["deadline"]["event"]["kind"],
        "lease",
        "{}",
        agent.log()
    );
    // EC2's query protocol: a POST with no X-Amz-Target. The lookup runs
    // beside the loop, so it may come after the first state file.
    let ec2_calls = || {
        f.instance
            .moto()
            .requests()
            .iter()
            .skip(seeded)
            .filter(|r| r.method == "POST" && r.target.is_none())
            .map(|r| {
                r.body
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("Action="))
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect::<std::collections::BTreeSet<_>>()
    };
    let asked_by = std::time::Instant::now() + PATIENCE;
    while ec2_calls().len() < 2 {
        assert!(
            std::time::Instant::now() < asked_by,
            "the start-up EC2 lookups never came: {:?}\n{}",
            ec2_calls(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    f.instance.wait_ticks(&agent, 2);
    let seen: Vec<_> = f
        .instance
        .moto()
        .requests()
        .into_iter()
        .skip(seeded)
        .filter(|r| r.method == "POST" && r.target.is_none())
        .collect();
    assert_eq!(
        ec2_calls().into_iter().collect::<Vec<_>>(),
        ["DescribeInstanceAttribute", "DescribeInstances"],
        "one DescribeInstances and one DescribeInstanceAttribute at start, nothing more for an on-demand instance"
    );
    assert_eq!(seen.len(), 2, "{seen:?}");
    let log = agent.log();
    assert!(!log.contains("not checked"), "{log}");
    assert!(
        log.contains("instance-initiated shutdown behaviour is `stop`"),
        "moto's instance was launched with the default, stop: {log}"
    );
}

// The deadline files jobs read (`<deadline-dir>/deadline.json`, `deadline`).

use blockwatch_core::tags::TAG_LEASE_END as LEASE_TAG;

/// An instance in cluster `jobs` (no AWS needed: nothing is due) whose lease
/// tag is read again every second.
fn leased_instance(end: time::OffsetDateTime) -> Instance {
    let instance = Instance::without_aws();
    instance.imds.update(|s| {
        s.tags = tags(&[("blockwatch:cluster", "jobs"), (LEASE_TAG, &rfc3339(end))]);
    });
    instance.write_config(&format!(
        "{}lease_refresh_interval = \"1s\"\npoweroff_command = \"true\"\n",
        FAST
    ));
    instance
}

fn move_lease(instance: &Instance, end: time::OffsetDateTime) {
    instance.imds.update(|s| {
        s.tags
            .get_or_insert_with(Default::default)
            .insert(LEASE_TAG.into(), rfc3339(end));
    });
}

/// `blockwatch run` as `spawn_run` starts it, under umask 077.
fn spawn_run_with_umask_077(instance: &Instance) -> Agent {
    let model = instance.command();
    let mut command = std::process::Command::new("sh");
    command.env_clear();
    for (key, value) in model.get_envs() {
        if let Some(value) = value {
            command.env(key, value);
        }
    }
    let stderr = instance.root.path().join("run-umask.log");
    command
        .args(["-c", r#"umask 077 && exec "$0" "$@""#])
        .arg(agent_binary())
        .arg("run")
        .arg("--state-dir")
        .arg(instance.state_dir())
        .arg("--config")
        .arg(instance.config_file())
        .args([
            "--ecs-introspection-url",
            &format!("{}/v1/metadata", CLOSED_ENDPOINT),
        ])
        .stderr(std::fs::File::create(&stderr).unwrap());
    let child = command.spawn().expect("spawn blockwatch run");
    Agent { child, stderr }
}

fn deadline_json(instance: &Instance) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(instance.deadline_dir().join("deadline.json")).ok()?;
    Some(serde_json::from_str(&text).expect("deadline.json parses"))
}

fn plain_deadline(instance: &Instance) -> Option<String> {
    std::fs::read_to_string(instance.deadline_dir().join("deadline")).ok()
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Waits until both deadline files name `end` (or no end), or panics.
fn wait_for_deadline(instance: &Instance, agent: &Agent, end: Option<time::OffsetDateTime>) {
    let want_plain = end.map_or(String::new(), |end| format!("{}\n", rfc3339(end)));
    let want_json = end.map_or(serde_json::Value::Null, |end| rfc3339(end).into());
    let until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let json = deadline_json(instance);
        if plain_deadline(instance).as_deref() == Some(want_plain.as_str())
            && json.as_ref().is_some_and(|j| j["deadline"] == want_json)
        {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "the deadline files never said {want_plain:?}: {json:?} / {:?}\nlog:\n{}",
            plain_deadline(instance),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn deadline_files_appear_with_the_first_decision_and_follow_a_moved_lease() {
    let end = now() + time::Duration::hours(1);
    let instance = leased_instance(end);
    let agent = spawn_run_with_umask_077(&instance);
    let dir = instance.deadline_dir();

    // Written before the state file: once it exists, they do.
    let first = instance.wait_for(&agent, PATIENCE, "the first state file", |_| true);
    let json = deadline_json(&instance).expect("deadline.json with the first state file");
    assert_eq!(json["instance_id"], first["instance_id"]);
    assert_eq!(json["deadline"], rfc3339(end));
    assert_eq!(json["deadline_source"], "lease");
    assert_eq!(
        plain_deadline(&instance).as_deref(),
        Some(format!("{}\n", rfc3339(end)).as_str())
    );
    // Readable by any user whatever the agent's umask.
    assert_eq!(mode(&dir), 0o755);
    assert_eq!(mode(&dir.join("deadline.json")), 0o644);
    assert_eq!(mode(&dir.join("deadline")), 0o644);

    let watching = instance.wait_for(&agent, PATIENCE, "watching", |s| phase(s) == "watching");
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let json = loop {
        let json = deadline_json(&instance).unwrap();
        if json["phase"] == "watching" || std::time::Instant::now() > until {
            break json;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(json["phase"], "watching", "{json}");
    assert_eq!(json["drain_at"], rfc3339(end - LEAD));
    assert!(json["stop_at"].is_string(), "{json}");
    assert_eq!(json["stop_at"], watching["stop_at"], "{json}");
    for key in ["deadline_event", "updated_at"] {
        assert!(json[key].is_string(), "{key}: {json}");
    }

    // Not rewritten while nothing changes (a rename gives a new inode).
    let inode = |name: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(dir.join(name)).unwrap().ino()
    };
    let (json_inode, plain_inode) = (inode("deadline.json"), inode("deadline"));
    instance.wait_ticks(&agent, 3);
    assert_eq!(
        inode("deadline.json"),
        json_inode,
        "rewritten without a change"
    );
    assert_eq!(inode("deadline"), plain_inode, "rewritten without a change");

    // An extended lease: both files follow within a few polls.
    let later = end + time::Duration::minutes(30);
    move_lease(&instance, later);
    wait_for_deadline(&instance, &agent, Some(later));
    let json = deadline_json(&instance).unwrap();
    assert_eq!(json["drain_at"], rfc3339(later - LEAD));
    assert_ne!(json["updated_at"], serde_json::Value::Null);

    // An earlier scheduled event takes over; canceled, the lease rules again.
    let reboot = now() + time::Duration::minutes(20);
    let event = |state: &str| ScheduledEvent {
        state: state.into(),
        ..ScheduledEvent::reboot("instance-event-0d59937288b749b32", reboot)
    };
    instance
        .imds
        .update(|s| s.scheduled_events = vec![event("active")]);
    wait_for_deadline(&instance, &agent, Some(reboot));
    let json = deadline_json(&instance).unwrap();
    assert_eq!(json["deadline_source"], "scheduled-event", "{json}");
    instance
        .imds
        .update(|s| s.scheduled_events = vec![event("canceled")]);
    wait_for_deadline(&instance, &agent, Some(later));
    let json = deadline_json(&instance).unwrap();
    assert_eq!(json["deadline_source"], "lease", "{json}");
    assert_eq!(mode(&dir.join("deadline")), 0o644);
}

#[tokio::test]
async fn a_reader_never_sees_a_partial_deadline_file() {
    let end = now() + time::Duration::hours(1);
    let instance = leased_instance(end);
    let agent = instance.spawn_run(&[], &[]);
    instance.wait_for(&agent, PATIENCE, "watching", |s| phase(s) == "watching");
    wait_for_deadline(&instance, &agent, Some(end));

    let dir = instance.deadline_dir();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut reads, mut seen) = (0_u64, std::collections::BTreeSet::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let text = std::fs::read_to_string(dir.join("deadline.json")).unwrap();
                let json: serde_json::Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("partial deadline.json ({e}): {text:?}"));
                let deadline = json["deadline"].as_str().unwrap().to_owned();
                let plain = std::fs::read_to_string(dir.join("deadline")).unwrap();
                let plain = plain
                    .strip_suffix('\n')
                    .unwrap_or_else(|| panic!("partial deadline file: {plain:?}"));
                time::OffsetDateTime::parse(plain, &time::format_description::well_known::Rfc3339)
                    .unwrap_or_else(|e| panic!("partial deadline file ({e}): {plain:?}"));
                seen.insert(deadline);
                reads += 1;
            }
            (reads, seen)
        })
    };
    let moves = 6;
    for n in 1..=moves {
        let moved = end + time::Duration::minutes(n);
        move_lease(&instance, moved);
        wait_for_deadline(&instance, &agent, Some(moved));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reads, seen) = reader.join().expect("the reader saw only whole files");

    assert!(reads >= 2_000, "only {reads} reads");
    assert!(
        seen.len() >= moves as usize,
        "the reader saw {} deadlines: {seen:?}",
        seen.len()
    );
}
