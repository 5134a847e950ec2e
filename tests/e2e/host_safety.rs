//! The host side of a safe end, with the real `blockwatch run` against moto
//! and the IMDS simulator: one agent per state directory, and a dry run that
//! never writes where a live agent reads. `poweroff_command` is always a
//! harmless command that records its runs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use blockwatch_testkit::instance::{Agent, FAST, PATIENCE};
use blockwatch_testkit::registered::{registered_in_jobs, LEAD, STARTUP};

/// sysexits' CANTCREAT: the state directory is held by another agent.
const STATE_DIR_BUSY: i32 = 73;

/// Waits for `agent` to exit; its exit code.
fn wait_exit(agent: &mut Agent, within: Duration) -> i32 {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(
            Instant::now() < deadline,
            "still running after {within:?}:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn still_running(agent: &mut Agent) -> bool {
    agent.child.try_wait().unwrap().is_none()
}

#[tokio::test]
async fn a_second_run_on_the_same_state_directory_exits_naming_the_first_until_the_first_is_killed()
{
    let f = registered_in_jobs(&[], "").await;
    let mut first = f.start();

    let mut second = f.instance.spawn_run(&[], &[]);
    let code = wait_exit(&mut second, PATIENCE);

    let log = second.log();
    assert_eq!(code, STATE_DIR_BUSY, "{log}");
    let state_dir = f.instance.state_dir().display().to_string();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "one clear line, before anything else:\n{log}"
    );
    assert!(
        lines[0].contains("error: ")
            && lines[0].contains(&format!("pid {}", first.child.id()))
            && lines[0].contains(&state_dir),
        "{log}"
    );
    assert!(still_running(&mut first), "the first keeps running");

    // A lock dies with its holder: after SIGKILL a new agent takes over.
    first.kill_9();
    let mut third = f.instance.spawn_run(&[], &[]);
    third.wait_for_log("resuming from", PATIENCE);
    assert!(still_running(&mut third), "{}", third.log());
    let holder = std::fs::read_to_string(f.instance.state_dir().join("run.lock")).unwrap();
    assert_eq!(holder.trim(), third.child.id().to_string());
}

/// A file's bytes and mtime.
fn seen(path: &Path) -> (Vec<u8>, SystemTime) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (bytes, std::fs::metadata(path).unwrap().modified().unwrap())
}

/// The private state directory a dry run names in its first lines.
fn private_state_dir(dry: &Agent) -> PathBuf {
    let log = dry.wait_for_log("dry run: state kept in ", PATIENCE);
    let rest = log.split("dry run: state kept in ").nth(1).unwrap();
    PathBuf::from(rest.split(" and deadline files in ").next().unwrap())
}

#[tokio::test]
async fn a_dry_run_beside_a_live_agent_never_writes_its_files_and_the_restarted_agent_still_powers_off(
) {
    let f = registered_in_jobs(&[], "").await;
    let powered_off = f.instance.root.path().join("powered-off");
    let command = format!("echo off >> {}", powered_off.display());
    f.instance
        .write_config(&format!("{}poweroff_command = {command:?}\n", FAST));
    // Two start-ups (the live agent, then the dry run) before the drain.
    f.lease_ends_in(STARTUP + STARTUP + LEAD);
    let mut live = f.start();

    // The same state directory, deadline directory and config as the live
    // agent; its private directory goes to the scratch root (TMPDIR).
    let tmp = f.instance.root.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let tmpdir = tmp.display().to_string();
    let mut dry = f
        .instance
        .spawn_run(&["--dry-run"], &[("TMPDIR", tmpdir.as_str())]);
    let private = private_state_dir(&dry);
    assert!(private.starts_with(&tmp), "{}", private.display());
    dry.wait_for_log("resuming from", PATIENCE);
    assert!(still_running(&mut dry), "no lock taken:\n{}", dry.log());

    // The live agent stops (as for a restart); from here on only the dry
    // run could touch the live files.
    live.kill_9();
    let live_files = [
        f.instance.state_dir().join("state.json"),
        f.instance.deadline_dir().join("deadline.json"),
        f.instance.deadline_dir().join("deadline"),
    ];
    let before: Vec<_> = live_files.iter().map(|p| seen(p)).collect();

    // The dry run drains and powers off, on paper.
    dry.wait_for_log(
        "dry run, nothing changed: would set the container instance to DRAINING",
        PATIENCE,
    );
    dry.wait_for_log("dry run, nothing changed: would run", PATIENCE);
    // What it would have written there is in its own directory (the log
    // line comes before the write: wait for the file, do not race it).
    let on_paper = || -> Option<serde_json::Value> {
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(private.join("state.json")).ok()?).ok()?;
        state["drain"]["poweroff_at"].is_string().then_some(state)
    };
    let deadline = Instant::now() + PATIENCE;
    while on_paper().is_none() {
        assert!(
            Instant::now() < deadline,
            "no power-off on paper in {}:\n{}",
            private.display(),
            dry.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    dry.kill_9();
    for (path, was) in live_files.iter().zip(&before) {
        assert!(seen(path) == *was, "the dry run wrote {}", path.display());
    }
    assert_eq!(f.drain_calls(), 0, "{}", dry.log());
    assert!(!powered_off.exists());

    // The live agent, restarted, still drains and powers off.
    let restarted = f.instance.spawn_run(&[], &[]);
    let off = f
        .instance
        .wait_for(&restarted, PATIENCE, "a recorded power-off", |s| {
            s["drain"]["poweroff_at"].is_string()
        });
    assert!(off["drain"]["draining_confirmed_at"].is_string(), "{off}");
    assert!(f.drain_calls() >= 1, "{}", restarted.log());
    assert_eq!(f.status_at_moto().await, "DRAINING");
    let deadline = Instant::now() + PATIENCE;
    while !powered_off.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let runs = std::fs::read_to_string(&powered_off).unwrap_or_default();
    assert_eq!(runs.lines().count(), 1, "{}", restarted.log());
}
