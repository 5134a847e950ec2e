//! Fault matrix family `process`: the agent killed or restarted at bad
//! moments, and a state file or directory that is not what it expected.
//! What must hold: a drain is neither repeated nor forgotten, nothing is
//! thrown away without a journal line, and an IO error that could hide a
//! drain in progress no longer stops `run`: it goes on from a fresh state in
//! memory, so that the lease is still enforced.
//!
//! Over 400 lines: many independent scenarios of one fault family.

use blockwatch_core::tags::TAG_LEASE_END;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blockwatch_core::time_text::rfc3339;

use blockwatch_testkit::instance::{
    agent_binary, nothing_runs, now, parse_time, phase, Agent, Instance, FAST,
};
use blockwatch_testkit::registered::registered_in_jobs;

const DRAINS: &str = "UpdateContainerInstancesState";
/// Nothing can ever listen on port 1: the ECS agent's API "is down".
const NO_INTROSPECTION: &str = "http://127.0.0.1:1/v1/metadata";
/// The simulator's instance id when there is no moto.
const SIMULATED_ID: &str = "i-0123456789abcdef0";

/// An instance with no AWS behind it, configured with an explicit cluster so
/// that `run` needs only IMDS.
fn offline(extra_config: &str) -> Instance {
    let instance = Instance::without_aws();
    let quick = if extra_config.contains("poll_interval") {
        FAST.replace("poll_interval = \"1s\"\n", "")
    } else {
        FAST.to_owned()
    };
    instance.write_config(&format!("cluster = \"jobs\"\n{quick}{extra_config}"));
    std::fs::create_dir_all(instance.state_dir()).unwrap();
    instance
}

fn spawn(instance: &Instance, env: &[(&str, &str)]) -> Agent {
    instance.spawn_run(&["--ecs-introspection-url", NO_INTROSPECTION], env)
}

fn watching(instance: &Instance, agent: &Agent) -> serde_json::Value {
    instance.wait_for(agent, Duration::from_secs(30), "watching", |s| {
        phase(s) == "watching"
    })
}

/// A state file as the agent writes it, mid-drain, for instance `id`.
fn draining_state(id: &str) -> String {
    let end = rfc3339(now() + time::Duration::hours(2));
    let started = rfc3339(now() - time::Duration::minutes(1));
    serde_json::to_string_pretty(&serde_json::json!({
        "instance_id": id,
        "cluster": "jobs",
        "compute_environment": null,
        "phase": "draining",
        "deadline": {"at": end, "event": {"kind": "spot-interruption", "id": "terminate@1"}},
        "drain_at": started,
        "drain": {
            "reason": {"kind": "spot-interruption", "id": "terminate@1"},
            "deadline": end,
            "started_at": started,
            "draining_confirmed_at": started,
        },
        "undrain_pending": false,
        "drains_started": 1,
        "drains_completed": 0,
        "updated_at": started,
    }))
    .unwrap()
}

fn state_file(instance: &Instance) -> PathBuf {
    instance.state_dir().join("state.json")
}

fn status(state_dir: &Path, json: bool) -> (i32, String) {
    let mut command = Command::new(agent_binary());
    command
        .env_clear()
        .arg("status")
        .arg("--state-dir")
        .arg(state_dir);
    if json {
        command.arg("--json");
    }
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[tokio::test]
async fn sigkill_mid_drain_resumes_without_a_second_draining_call() {
    let r = registered_in_jobs(&[], "").await;
    let task = r.start_task().await;
    let mut agent = spawn(&r.instance, &[]);
    watching(&r.instance, &agent);
    r.instance.imds.update(|s| {
        s.spot_instance_action = Some(blockwatch_testkit::imds::SpotInstanceAction {
            action: "terminate".into(),
            time: now() + time::Duration::seconds(5),
        })
    });
    r.instance
        .wait_for(&agent, Duration::from_secs(15), "a task count", |s| {
            s["drain"]["running_tasks"] == 1
        });
    assert_eq!(r.instance.moto().ecs_calls(DRAINS), 1);

    agent.kill_9();
    let restarted = spawn(&r.instance, &[]);
    restarted.wait_for_log("resuming", Duration::from_secs(15));
    r.instance.wait_ticks(&restarted, 3);

    let snapshot = r.instance.snapshot().unwrap();
    assert_eq!(phase(&snapshot), "draining", "{}", restarted.log());
    assert_eq!(snapshot["drains_started"], 1);
    assert_eq!(
        r.instance.moto().ecs_calls(DRAINS),
        1,
        "no second DRAINING call\n{}",
        restarted.log()
    );
    assert_eq!(r.status_at_moto().await, "DRAINING");
    // The drain goes on to its end under the new process.
    r.instance
        .moto()
        .stop_task(&r.cluster_arn, &task)
        .await
        .unwrap();
    r.instance
        .wait_for(&restarted, Duration::from_secs(15), "drained", nothing_runs);
}

#[test]
fn sigkill_mid_write_never_leaves_a_partial_state_file() {
    let instance = offline("poll_interval = \"100ms\"\n");
    let path = state_file(&instance);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut valid, mut invalid) = (0usize, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(bytes) = std::fs::read(&path) {
                    match serde_json::from_slice::<serde_json::Value>(&bytes) {
                        Ok(_) => valid += 1,
                        Err(e) => invalid.push(format!("{e}: {}", String::from_utf8_lossy(&bytes))),
                    }
                }
            }
            (valid, invalid)
        })
    };
    // A heartbeat on every poll: the file is rewritten about 10 times a second.
    let env = [("BLOCKWATCH_HEARTBEAT_INTERVAL", "0s")];
    let mut last = None;
    for pause_ms in [700, 330, 910, 450, 620, 275] {
        let mut agent = spawn(&instance, &env);
        instance.wait_for(&agent, Duration::from_secs(30), "a state file", |_| true);
        std::thread::sleep(Duration::from_millis(pause_ms));
        agent.kill_9();
        last = Some(agent);
    }
    let final_run = spawn(&instance, &env);
    final_run.wait_for_log("resuming", Duration::from_secs(15));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (valid, invalid) = reader.join().unwrap();
    assert!(invalid.is_empty(), "partial state files: {invalid:?}");
    assert!(valid > 20, "only {valid} reads: was the file rewritten?");
    assert!(
        !final_run.log().contains("unreadable"),
        "{}",
        final_run.log()
    );
    // Temp files of killed writers are cleaned up, not left to pile up.
    let temps: Vec<_> = std::fs::read_dir(instance.state_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(temps.len() <= 1, "{temps:?}");
    drop(last);
}

#[test]
fn a_truncated_state_file_is_moved_aside_and_a_fresh_watch_starts() {
    let instance = offline("");
    let full = draining_state(SIMULATED_ID);
    let truncated = &full.as_bytes()[..full.len() / 2];
    std::fs::write(state_file(&instance), truncated).unwrap();

    let agent = spawn(&instance, &[]);
    let fresh = watching(&instance, &agent);

    let aside = instance.state_dir().join("state.json.unreadable");
    assert_eq!(
        std::fs::read(&aside).unwrap(),
        truncated,
        "kept byte for byte"
    );
    assert_eq!(fresh["drains_started"], 0);
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("state.json.unreadable"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("moved it to"), "{line}");
    assert!(
        line.contains("EOF while parsing"),
        "says what is wrong: {line}"
    );
    assert!(!line.contains("Error {"), "no debug dump: {line}");
}

#[test]
fn a_corrupted_state_file_is_moved_aside_without_overwriting_an_earlier_one() {
    let instance = offline("");
    let earlier = instance.state_dir().join("state.json.unreadable");
    std::fs::write(&earlier, b"kept from an earlier incident").unwrap();
    // Valid JSON, wrong shape: a phase the agent does not know.
    let corrupted = draining_state(SIMULATED_ID).replace("\"draining\"", "\"exploding\"");
    std::fs::write(state_file(&instance), &corrupted).unwrap();

    let agent = spawn(&instance, &[]);
    watching(&instance, &agent);

    assert_eq!(
        std::fs::read(&earlier).unwrap(),
        b"kept from an earlier incident"
    );
    let second = instance.state_dir().join("state.json.unreadable.2");
    assert_eq!(std::fs::read_to_string(&second).unwrap(), corrupted);
    let log = agent.log();
    assert!(
        log.contains(&format!("moved it to {}", second.display())),
        "{log}"
    );
    assert!(log.contains("unknown variant `exploding`"), "{log}");
}

/// Waits until the agent has polled IMDS `n` more times: it is alive and
/// watching, whatever its state directory holds.
fn keeps_polling(instance: &Instance, agent: &mut Agent, n: usize) {
    let polls = || {
        instance
            .imds
            .exchanges()
            .iter()
            .filter(|e| e.path.ends_with("spot/instance-action"))
            .count()
    };
    let target = polls() + n;
    let deadline = Instant::now() + Duration::from_secs(30);
    while polls() < target {
        assert!(
            agent.child.try_wait().unwrap().is_none(),
            "run exited\n{}",
            agent.log()
        );
        assert!(Instant::now() < deadline, "not polling\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_state_file_that_is_a_directory_is_left_in_place_and_run_goes_on_from_a_fresh_state() {
    let instance = offline("");
    // EISDIR: unlike a file mode, root cannot be denied this.
    std::fs::create_dir_all(state_file(&instance).join("pin")).unwrap();

    let mut agent = spawn(&instance, &[]);
    keeps_polling(&instance, &mut agent, 3);

    assert!(state_file(&instance).join("pin").is_dir(), "left in place");
    assert!(!instance.state_dir().join("state.json.unreadable").exists());
    let log = agent.log();
    assert!(
        log.contains(&format!(
            "cannot read the state file {}",
            state_file(&instance).display()
        )),
        "{log}"
    );
    assert!(log.contains("Is a directory"), "{log}");
    assert!(
        log.contains("going on with a fresh state in memory"),
        "{log}"
    );
    assert!(!log.contains("moved it"), "{log}");
}

#[test]
fn a_state_directory_that_is_a_file_is_left_alone_and_run_goes_on() {
    let instance = offline("");
    std::fs::remove_dir(instance.state_dir()).unwrap();
    std::fs::write(instance.state_dir(), b"not a directory").unwrap();

    let mut agent = spawn(&instance, &[]);
    keeps_polling(&instance, &mut agent, 3);

    assert_eq!(
        std::fs::read(instance.state_dir()).unwrap(),
        b"not a directory"
    );
    agent.assert_log_has("Not a directory");
}

/// `blockwatch run` in a private mount namespace where the state directory
/// is a read-only bind mount of itself.
fn spawn_with_read_only_state(instance: &Instance, notify: Option<&Path>) -> Agent {
    let log = instance.root.path().join("run-read-only.log");
    let model = instance.command();
    let mut command = Command::new("unshare");
    command.env_clear();
    for (key, value) in model.get_envs() {
        if let Some(value) = value {
            command.env(key, value);
        }
    }
    if let Some(socket) = notify {
        command.env("NOTIFY_SOCKET", socket);
    }
    command
        .args(["-m", "--", "sh", "-c"])
        .arg(r#"mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@""#)
        .arg(instance.state_dir())
        .arg(agent_binary())
        .args(["run", "--ecs-introspection-url", NO_INTROSPECTION])
        .arg("--state-dir")
        .arg(instance.state_dir())
        .arg("--config")
        .arg(instance.config_file())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let child = command.spawn().unwrap();
    Agent { child, stderr: log }
}

#[tokio::test]
async fn a_read_only_state_directory_still_drains_and_powers_off_at_the_lease_end_unrecorded() {
    let powered_off = tempfile::tempdir().unwrap();
    let marker = powered_off.path().join("powered-off");
    let end = now() + time::Duration::seconds(5);
    let r = registered_in_jobs(
        &[(TAG_LEASE_END, &rfc3339(end))],
        &format!(
            "on_drained = \"poweroff\"\npoweroff_command = {:?}\n",
            format!("echo off >> {}", marker.display())
        ),
    )
    .await;
    std::fs::create_dir_all(r.instance.state_dir()).unwrap();
    let socket_path = r.instance.root.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();

    let mut agent = spawn_with_read_only_state(&r.instance, Some(&socket_path));

    let deadline = Instant::now() + Duration::from_secs(20);
    while r.status_at_moto().await != "DRAINING" {
        assert!(Instant::now() < deadline, "no drain\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A block must still end when its state cannot be written (a full or
    // read-only disk): the power-off runs, unrecorded, and says so.
    let log = agent.wait_for_log(
        "the power-off attempt cannot be recorded in the state file; powering off all the same",
        Duration::from_secs(20),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "never powered off\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The STATUS line says the state is not saved.
    let mut buffer = [0u8; 4096];
    let status = loop {
        let n = socket
            .recv(&mut buffer)
            .unwrap_or_else(|e| panic!("no notification: {e}\n{}", agent.log()));
        let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
        if let Some(line) = message
            .lines()
            .find(|l| l.starts_with("STATUS=powering off"))
        {
            break line.to_owned();
        }
    };
    assert!(status.contains("state not saved"), "{status}");
    assert!(agent.child.try_wait().unwrap().is_none(), "still watching");
    assert!(!state_file(&r.instance).exists());
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "off\n",
        "once: the command succeeded, so no retry\n{log}"
    );
    let log = agent.log();
    let failures: Vec<_> = log
        .lines()
        .filter(|l| l.contains("cannot write the state file"))
        .collect();
    assert_eq!(failures.len(), 1, "logged once, not every second:\n{log}");
    assert!(failures[0].contains("Read-only file system"), "{log}");
    assert_eq!(r.instance.moto().ecs_calls(DRAINS), 1);
}

#[test]
fn state_from_another_instance_is_named_and_not_resumed() {
    let instance = offline("");
    // An image baked from a running instance carries its state file.
    std::fs::write(state_file(&instance), draining_state("i-0fffffffffffffff0")).unwrap();

    let agent = spawn(&instance, &[]);
    let fresh = watching(&instance, &agent);

    assert_eq!(fresh["instance_id"], SIMULATED_ID);
    assert_eq!(fresh["drains_started"], 0);
    assert!(fresh["drain"].is_null());
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("i-0fffffffffffffff0"))
        .unwrap_or_else(|| panic!("the other instance is not named:\n{log}"));
    assert!(line.contains(SIMULATED_ID), "{line}");
    assert!(line.contains("starting afresh"), "{line}");
}

#[tokio::test]
async fn the_autoscaling_deadline_survives_a_restart() {
    let r = registered_in_jobs(&[], "").await;
    r.start_task().await;
    let mut agent = spawn(&r.instance, &[]);
    watching(&r.instance, &agent);
    r.instance
        .imds
        .update(|s| s.target_lifecycle_state = Some("Terminated".into()));
    let first = r
        .instance
        .wait_for(&agent, Duration::from_secs(15), "a task count", |s| {
            s["drain"]["running_tasks"] == 1
        });
    let deadline = first["deadline"]["at"].as_str().unwrap().to_owned();
    assert_eq!(first["deadline"]["event"]["kind"], "autoscaling");

    agent.kill_9();
    // Restarted a few seconds later: its own polls see `Terminated` anew.
    std::thread::sleep(Duration::from_millis(2100));
    let restarted = spawn(&r.instance, &[]);
    restarted.wait_for_log("resuming", Duration::from_secs(15));
    r.instance.wait_ticks(&restarted, 3);

    let after = r.instance.snapshot().unwrap();
    assert_eq!(
        after["deadline"]["at"],
        deadline.as_str(),
        "{}",
        restarted.log()
    );
    assert_eq!(after["drain"]["deadline"], deadline.as_str());
    assert_eq!(after["terminated_seen_at"], deadline.as_str());
    assert_eq!(after["drains_started"], 1);
    assert_eq!(r.instance.moto().ecs_calls(DRAINS), 1, "no second drain");
    assert!(
        !restarted.log().contains("deadline: autoscaling"),
        "the deadline did not move:\n{}",
        restarted.log()
    );
}

#[test]
fn an_idle_agent_keeps_a_heartbeat_and_a_killed_one_is_called_stale() {
    let instance = offline("");
    let mut agent = spawn(&instance, &[("BLOCKWATCH_HEARTBEAT_INTERVAL", "1s")]);
    let first = instance.wait_for(&agent, Duration::from_secs(30), "a heartbeat", |s| {
        phase(s) == "watching" && s["last_heard"].is_string()
    });
    let heard = parse_time(first["last_heard"].as_str().unwrap());
    let moved = instance.wait_for(&agent, Duration::from_secs(10), "a later heartbeat", |s| {
        parse_time(s["last_heard"].as_str().unwrap()) > heard
    });
    assert_eq!(
        moved["updated_at"], first["updated_at"],
        "no change, only a heartbeat"
    );
    let (code, text) = status(&instance.state_dir(), false);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("last change:") && text.contains("last heard:"),
        "{text}"
    );
    assert!(!text.contains("STALE"), "{text}");

    agent.kill_9();
    // Stale after three missed heartbeats.
    std::thread::sleep(Duration::from_millis(4500));
    let (_, text) = status(&instance.state_dir(), false);
    assert!(text.contains("STALE"), "{text}");
    let (code, json) = status(&instance.state_dir(), true);
    assert_eq!(code, 0, "{json}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(json["last_heard"].is_string(), "{json}");
    assert_eq!(json["heartbeat_stale"], true, "{json}");
}

#[test]
fn a_corrupted_state_file_that_cannot_be_moved_is_said_so_truly() {
    let instance = offline("");
    let corrupted = b"{\"phase\": \"draining\", \"drain\": {";
    std::fs::write(state_file(&instance), corrupted).unwrap();

    let mut agent = spawn_with_read_only_state(&instance, None);
    let log = agent.wait_for_log("cannot write the state file", Duration::from_secs(20));

    let line = log
        .lines()
        .find(|l| l.contains("is not a blockwatch state"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("could not be moved to") && line.contains("Read-only file system"),
        "{line}"
    );
    assert!(
        !log.contains("moved it to"),
        "a move that did not happen:\n{log}"
    );
    assert_eq!(std::fs::read(state_file(&instance)).unwrap(), corrupted);
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "still watching\n{log}"
    );
}
