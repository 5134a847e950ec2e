//! A failed join or an unusable config never leaves a lease unenforced: the
//! real `blockwatch run` against moto and the IMDS simulator goes on without
//! a cluster (degraded), says so, makes no ECS call, and powers off at the
//! lease end, not before. `poweroff_command` (or, with the built-in
//! defaults, `systemctl`) is always a harmless stand-in that records its runs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use blockwatch_core::tags::{TAG_CLUSTER, TAG_COMPUTE_ENVIRONMENT, TAG_LEASE_END};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use blockwatch_core::time_text::rfc3339;
use blockwatch_testkit::instance::{
    agent_binary, now, parse_time, phase, Agent, Instance, FAST, PATIENCE,
};
use blockwatch_testkit::registered::STARTUP;
use time::OffsetDateTime;

/// How far after the test's own setup the lease ends: the start, plus a
/// stretch of watching in which a power-off would be too early.
const LEASE: time::Duration = time::Duration::seconds(20);

/// Every ECS API call moto saw (the JSON protocol's target prefix).
fn ecs_calls(instance: &Instance) -> Vec<String> {
    instance
        .moto()
        .requests()
        .into_iter()
        .filter_map(|r| r.target)
        .filter(|t| t.starts_with("AmazonEC2ContainerServiceV"))
        .collect()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn lease_ends(instance: &Instance, end: OffsetDateTime) {
    instance.imds.update(|s| {
        s.tags
            .get_or_insert_with(Default::default)
            .insert(TAG_LEASE_END.into(), rfc3339(end));
    });
}

/// Waits for the recorded power-off; fails if `runs` shows a power-off
/// command before `end`.
fn wait_powered_off_not_before(
    instance: &Instance,
    agent: &mut Agent,
    runs: &Path,
    end: OffsetDateTime,
) -> serde_json::Value {
    let give_up = std::time::Instant::now() + PATIENCE + std::time::Duration::from_secs(30);
    loop {
        // Read the clock first: a run seen after it was read while still
        // before the end is too early.
        let before_looking = now();
        let ran = lines(runs);
        assert!(
            before_looking >= end || ran.is_empty(),
            "powered off before the lease end {end}: {ran:?}\n{}",
            agent.log()
        );
        assert!(
            agent.child.try_wait().unwrap().is_none(),
            "run exited\n{}",
            agent.log()
        );
        if let Some(snapshot) = instance.snapshot() {
            if snapshot["drain"]["poweroff_at"].is_string() {
                return snapshot;
            }
        }
        assert!(
            std::time::Instant::now() < give_up,
            "no power-off; state {:?}\n{}",
            instance.snapshot(),
            agent.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn status(instance: &Instance, json: bool) -> String {
    let mut command = std::process::Command::new(agent_binary());
    command.env_clear().arg("status");
    if json {
        command.arg("--json");
    }
    let output = command
        .arg("--state-dir")
        .arg(instance.state_dir())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The first `STATUS=` line the agent sends to `socket`.
fn first_status(socket: &UnixDatagram, agent: &Agent) -> String {
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buffer = [0u8; 4096];
    loop {
        let n = socket
            .recv(&mut buffer)
            .unwrap_or_else(|e| panic!("no notification: {e}\n{}", agent.log()));
        let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
        if let Some(status) = message.lines().find_map(|l| l.strip_prefix("STATUS=")) {
            return status.to_owned();
        }
    }
}

#[tokio::test]
async fn a_compute_environment_that_names_nothing_still_powers_off_at_the_lease_end() {
    let instance = Instance::with_moto().await;
    instance
        .launch(&[(TAG_COMPUTE_ENVIRONMENT, "no-such-ce")], true)
        .await;
    let runs = instance.root.path().join("powered-off");
    let command = format!("echo off >> {}", runs.display());
    instance.write_config(&format!("{FAST}poweroff_command = {command:?}\n"));
    let socket_path = instance.root.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let end = now() + STARTUP + LEASE;
    lease_ends(&instance, end);

    let mut agent = instance.spawn_run(&[], &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())]);

    let reason = "compute environment \"no-such-ce\" not found";
    let line = first_status(&socket, &agent);
    // Read no more: closed, the agent's next sends fail at once instead of
    // filling the socket's queue.
    drop(socket);
    assert!(
        line.starts_with(&format!("DEGRADED, no ECS drain: {reason} · lease ends ")),
        "{line}"
    );
    instance.wait_for(&agent, PATIENCE, "a state file", |s| phase(s) != "joining");
    let json: serde_json::Value = serde_json::from_str(&status(&instance, true)).unwrap();
    assert_eq!(json["degraded"], reason, "{json}");
    assert_eq!(json["cluster"], serde_json::Value::Null, "{json}");
    assert_eq!(json["compute_environment"], "no-such-ce", "{json}");
    assert_eq!(parse_time(json["deadline"].as_str().unwrap()), end);
    let text = status(&instance, false);
    assert!(text.contains(&format!("DEGRADED:  {reason}")), "{text}");

    let off = wait_powered_off_not_before(&instance, &mut agent, &runs, end);

    assert!(parse_time(off["drain"]["poweroff_at"].as_str().unwrap()) >= end);
    instance.wait_ticks(&agent, 3);
    assert_eq!(
        lines(&runs),
        vec!["off"],
        "powered off once\n{}",
        agent.log()
    );
    let log = agent.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("DEGRADED: ")).collect();
    assert_eq!(errors.len(), 1, "one loud line: {log}");
    assert!(errors[0].contains(reason), "{log}");
    assert_eq!(ecs_calls(&instance), Vec::<String>::new(), "no ECS call");
}

/// A directory whose `systemctl` records its arguments and succeeds, put
/// before the host guard: the built-in `poweroff_command` runs it.
fn recording_systemctl(root: &Path) -> (PathBuf, String) {
    let dir = root.join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let runs = root.join("systemctl-runs");
    let script = dir.join("systemctl");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$*\" >> '{}'\n", runs.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut path = dir.into_os_string();
    path.push(":");
    path.push(blockwatch_testkit::host_guard::path());
    (runs, path.into_string().unwrap())
}

#[tokio::test]
async fn an_unusable_config_still_powers_off_at_the_lease_end_with_the_defaults() {
    let instance = Instance::with_moto().await;
    instance.launch(&[(TAG_CLUSTER, "jobs")], true).await;
    instance.write_config("poll_interval = [not toml\n");
    let (runs, path) = recording_systemctl(instance.root.path());
    let end = now() + STARTUP + LEASE;
    lease_ends(&instance, end);

    let mut agent = instance.spawn_run(&[], &[("PATH", &path)]);

    instance.wait_for(&agent, PATIENCE, "a state file", |s| phase(s) != "joining");
    let json: serde_json::Value = serde_json::from_str(&status(&instance, true)).unwrap();
    let reason = json["degraded"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with(&format!("config file {}", instance.config_file().display())),
        "{json}"
    );
    assert_eq!(json["cluster"], serde_json::Value::Null, "{json}");

    let off = wait_powered_off_not_before(&instance, &mut agent, &runs, end);

    assert!(parse_time(off["drain"]["poweroff_at"].as_str().unwrap()) >= end);
    instance.wait_ticks(&agent, 3);
    // The built-in poweroff_command.
    assert_eq!(
        lines(&runs),
        vec!["--no-block poweroff"],
        "powered off once\n{}",
        agent.log()
    );
    agent.assert_log_has("with the built-in defaults");
    assert_eq!(ecs_calls(&instance), Vec::<String>::new(), "no ECS call");
}

/// An instance tagged with an UNMANAGED compute environment in moto, whose
/// AWS endpoint is a fault proxy answering Batch's DescribeComputeEnvironments
/// with a server error (`times` times, or for good).
async fn batch_failing(
    times: Option<usize>,
) -> (Instance, blockwatch_testkit::aws_proxy::AwsProxy) {
    use blockwatch_testkit::aws_proxy::{AwsProxy, Fault};
    let mut instance = Instance::with_moto().await;
    instance.launch_in_compute_environment("research").await;
    let proxy = AwsProxy::start(instance.moto().addr()).unwrap();
    proxy.inject("DescribeComputeEnvironments", Fault::server_error(), times);
    instance.aws_endpoint = proxy.endpoint();
    (instance, proxy)
}

#[tokio::test]
async fn batch_unreachable_for_good_still_powers_off_at_the_lease_end() {
    // A private subnet with no Batch endpoint: the join can never succeed.
    let (instance, _proxy) = batch_failing(None).await;
    let runs = instance.root.path().join("powered-off");
    let command = format!("echo off >> {}", runs.display());
    instance.write_config(&format!("{FAST}poweroff_command = {command:?}\n"));
    let end = now() + STARTUP + LEASE;
    lease_ends(&instance, end);

    let mut agent = instance.spawn_run(&[], &[]);

    let watching = instance.wait_for(&agent, PATIENCE, "a state file", |s| phase(s) != "joining");
    assert!(
        watching["degraded"]
            .as_str()
            .is_some_and(|r| r.contains("batch:DescribeComputeEnvironments")),
        "{watching:#}"
    );
    let off = wait_powered_off_not_before(&instance, &mut agent, &runs, end);
    assert!(parse_time(off["drain"]["poweroff_at"].as_str().unwrap()) >= end);
    let log = agent.log();
    assert!(log.contains("still degraded"), "asked again: {log}");
    assert_eq!(ecs_calls(&instance), Vec::<String>::new(), "no ECS call");
}

#[tokio::test]
async fn a_run_degraded_by_a_transient_failure_exits_to_start_again_joined_once_batch_answers() {
    // Batch fails the start-up's lookup (both SDK attempts), then answers.
    let (instance, proxy) = batch_failing(Some(2)).await;
    instance.write_config(FAST);
    let mut agent = instance.spawn_run(&[], &[]);

    let deadline = std::time::Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running\n{}",
            agent.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let log = agent.log();
    assert!(log.contains("DEGRADED: "), "degraded first: {log}");
    assert_eq!(
        status.code(),
        Some(75),
        "for systemd to start it again\n{log}"
    );
    assert!(log.contains("the cluster resolves now"), "{log}");
    assert!(proxy.seen("DescribeComputeEnvironments") >= 3, "{log}");
}

#[tokio::test]
async fn an_unusable_config_that_asks_for_a_dry_run_stays_a_dry_run() {
    let instance = Instance::with_moto().await;
    instance.launch(&[(TAG_CLUSTER, "jobs")], true).await;
    instance.write_config("dry_run = true\npoll_interval = [not toml\n");
    let (runs, path) = recording_systemctl(instance.root.path());
    // Already over: a live agent would power off within seconds.
    lease_ends(&instance, now() - time::Duration::minutes(1));

    let agent = instance.spawn_run(&[], &[("PATH", &path)]);

    let log = agent.wait_for_log("dry run, nothing changed: would run", PATIENCE);
    assert!(log.contains("DEGRADED: "), "{log}");
    assert!(lines(&runs).is_empty(), "a real power-off ran\n{log}");
    assert!(
        instance.snapshot().is_none(),
        "the live state directory is left alone\n{log}"
    );
}
