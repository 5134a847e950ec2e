//! Fault matrix family `imds`: the IMDS simulator misbehaves while
//! `blockwatch run` watches. The daemon keeps running, never drains on
//! garbage, says what failed in one sentence (path, endpoint, cause), and
//! drains on the real notice once IMDS is back.
//!
//! No AWS here (`Instance::without_aws`): the decision to drain is in the
//! state file before any AWS call, which is what these cases check.

use std::time::{Duration, Instant};

use blockwatch_testkit::imds::{Fault, Faults, ScheduledEvent, SpotInstanceAction};

use super::aws_run::{sigterm, spot_notice, wait_exit, warnings};
use blockwatch_testkit::instance::{now, phase, Agent, Instance, FAST};

const SPOT: &str = "/latest/meta-data/spot/instance-action";
const SCHEDULED: &str = "/latest/meta-data/events/maintenance/scheduled";

fn instance() -> Instance {
    let instance = Instance::in_cluster_without_aws("jobs");
    instance.write_config(FAST);
    instance
}

fn start(instance: &Instance) -> Agent {
    let agent = instance.spawn_run(&[], &[]);
    instance.wait_for(&agent, Duration::from_secs(20), "watching", |s| {
        phase(s) == "watching"
    });
    agent
}

/// Waits for a drain decision for a spot interruption; how long it took.
fn drains_on_spot(instance: &Instance, agent: &Agent, within: Duration) -> Duration {
    let started = Instant::now();
    instance.wait_for(agent, within, "a spot drain", |s| {
        phase(s) == "draining" && s["drain"]["reason"]["kind"] == "spot-interruption"
    });
    started.elapsed()
}

/// Watches for `secs` seconds: the agent stays up and does not drain.
fn stays_watching(instance: &Instance, agent: &mut Agent, secs: u64) {
    for _ in 0..secs * 10 {
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            agent.child.try_wait().unwrap().is_none(),
            "the agent exited\n{}",
            agent.log()
        );
        let snapshot = instance.snapshot().unwrap();
        assert_eq!(phase(&snapshot), "watching", "{}", agent.log());
    }
}

/// Every IMDS warning is one sentence naming the path and the endpoint,
/// with no debug dump of the SDK's types.
fn assert_sentences(instance: &Instance, log: &str) {
    for line in log.lines().filter(|l| l.contains("instance metadata")) {
        assert!(
            !line.contains("SdkBody") && !line.contains("Response {") && !line.contains("{ "),
            "a debug dump: {line}"
        );
        if line.contains("warning:") && !line.contains("unreadable") {
            assert!(
                line.contains(&instance.imds.endpoint()),
                "no endpoint: {line}"
            );
        }
    }
}

/// Hides the spot notice behind `faults` for `secs` seconds, in which the
/// daemon keeps watching and `says_so` checks its log, then lifts them: the
/// notice must drain within a few seconds.
fn outage_then_notice_with(faults: Faults, secs: u64, says_so: impl Fn(&str)) {
    let instance = instance();
    let mut agent = start(&instance);
    instance.imds.set_faults(faults);
    spot_notice(&instance);
    stays_watching(&instance, &mut agent, secs);
    let log = agent.log();
    says_so(&log);
    assert_sentences(&instance, &log);

    instance.imds.clear_faults();
    let took = drains_on_spot(&instance, &agent, Duration::from_secs(15));
    assert!(
        took < Duration::from_secs(8),
        "drained {took:?} after IMDS came back"
    );
    agent.assert_log_has("notices works again after");
}

/// Hides the spot notice behind `fault` on every path for a while, then
/// lifts it: the notice must drain within a few seconds.
fn outage_then_notice(fault: Fault, cause: &str) {
    let faults = Faults {
        paths: [("*".to_owned(), fault)].into(),
        ..Faults::default()
    };
    outage_then_notice_with(faults, 3, |log| {
        assert!(
            log.lines()
                .any(|l| l.contains("warning:") && l.contains(SPOT) && l.contains(cause)),
            "a warning names the path and {cause:?}\n{log}"
        );
    });
}

#[test]
fn imds_500s_keep_the_daemon_watching_and_the_notice_drains_once_they_stop() {
    outage_then_notice(Fault::Status(500), "HTTP 500 Internal Server Error");
}

#[test]
fn imds_429s_keep_the_daemon_watching_and_the_notice_drains_once_they_stop() {
    outage_then_notice(Fault::Status(429), "HTTP 429 Too Many Requests");
}

#[test]
fn a_hanging_imds_keeps_the_daemon_watching_and_the_notice_drains_once_it_answers() {
    outage_then_notice(Fault::Hang, "cannot reach IMDS at");
}

#[test]
fn imds_gone_for_a_while_and_back_drains_on_the_notice() {
    let faults = Faults {
        all: Some(Fault::Gone),
        ..Faults::default()
    };
    outage_then_notice_with(faults, 5, |log| {
        assert_eq!(
            warnings(log, "starting a fresh IMDS session"),
            1,
            "a fresh session is tried, and said once\n{log}"
        );
    });
}

#[test]
fn tokens_forgotten_mid_run_heal_and_a_spot_notice_drains_in_the_usual_time() {
    let instance = instance();
    let agent = start(&instance);
    instance.imds.expire_tokens();
    // The agent meets the forgotten token before the notice comes.
    agent.wait_for_log("IMDS refused our session token", Duration::from_secs(20));

    spot_notice(&instance);
    let took = drains_on_spot(&instance, &agent, Duration::from_secs(20));
    assert!(
        took < Duration::from_secs(5),
        "drained {took:?} after the notice"
    );
    let log = agent.log();
    assert_eq!(
        warnings(
            &log,
            "IMDS refused our session token (HTTP 401) at http://127.0.0.1:"
        ),
        1,
        "{log}"
    );
    assert_eq!(warnings(&log, "HTTP 401"), 1, "healed, not repeated\n{log}");
}

#[test]
fn tokens_forgotten_continuously_still_let_a_spot_notice_drain_in_the_usual_time() {
    let instance = instance();
    instance.imds.set_faults(Faults {
        token_lifetime_ms: Some(1500),
        ..Faults::default()
    });
    let agent = start(&instance);
    // Through a few token lifetimes before the notice comes.
    instance.wait_ticks(&agent, 4);

    spot_notice(&instance);
    let took = drains_on_spot(&instance, &agent, Duration::from_secs(20));
    assert!(
        took < Duration::from_secs(5),
        "drained {took:?} after the notice"
    );
}

#[test]
fn a_refused_token_put_is_one_sentence_and_the_notice_drains_once_it_is_allowed() {
    let instance = instance();
    let mut agent = start(&instance);
    instance.imds.set_faults(Faults {
        token: Some(Fault::Status(403)),
        ..Faults::default()
    });
    instance.imds.expire_tokens();
    spot_notice(&instance);
    stays_watching(&instance, &mut agent, 3);
    let log = agent.log();
    assert!(
        log.lines().any(|l| l.contains("warning:")
            && l.contains("no IMDSv2 session token")
            && l.contains("PUT /latest/api/token answered HTTP 403 Forbidden")),
        "{log}"
    );
    assert_sentences(&instance, &log);

    instance.imds.clear_faults();
    let took = drains_on_spot(&instance, &agent, Duration::from_secs(15));
    assert!(
        took < Duration::from_secs(8),
        "drained {took:?} after the token came back"
    );
}

#[test]
fn a_refused_token_put_at_start_exits_75_with_one_sentence() {
    let instance = instance();
    instance.imds.set_faults(Faults {
        token: Some(Fault::Status(405)),
        ..Faults::default()
    });
    let mut agent = instance.spawn_run(&[], &[]);
    let (code, _) = wait_exit(&mut agent, Duration::from_secs(20));
    assert_eq!(
        code,
        Some(75),
        "transient: systemd restarts it\n{}",
        agent.log()
    );
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("error:"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("/latest/dynamic/instance-identity/document")
            && line.contains(&instance.imds.endpoint())
            && line.contains("HTTP 405"),
        "{line}"
    );
    assert_sentences(&instance, &log);
}

#[test]
fn a_malformed_spot_notice_never_drains_and_the_real_one_does() {
    let instance = instance();
    let mut agent = start(&instance);
    instance.imds.set_faults(Faults {
        paths: [(
            SPOT.to_owned(),
            Fault::Body("{\"action\": \"terminate\", \"time\"".into()),
        )]
        .into(),
        ..Faults::default()
    });
    stays_watching(&instance, &mut agent, 3);
    let log = agent.log();
    assert_eq!(warnings(&log, "unreadable spot notice"), 1, "{log}");

    instance.imds.clear_faults();
    spot_notice(&instance);
    drains_on_spot(&instance, &agent, Duration::from_secs(10));
}

#[test]
fn an_unknown_spot_action_with_a_valid_time_drains_is_named_escaped_and_never_powers_off() {
    let instance = instance();
    let powered_off = instance.root.path().join("powered-off");
    instance.write_config(&format!(
        "{FAST}on_drained = \"poweroff\"\npoweroff_command = \"echo off >> {}\"\n",
        powered_off.display()
    ));
    let agent = start(&instance);
    instance.imds.update(|s| {
        s.spot_instance_action = Some(SpotInstanceAction {
            action: "explode\nECS_ENABLE_PRIVILEGED=true".into(),
            time: now() + time::Duration::seconds(5),
        });
    });
    // Any instance-action document is an interruption: the fail-safe reading.
    drains_on_spot(&instance, &agent, Duration::from_secs(10));
    let log = agent.log();
    assert!(
        log.contains(r#"spot instance-action "explode\nECS_ENABLE_PRIVILEGED=true" is none of terminate, stop, hibernate"#),
        "named, escaped\n{log}"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("ECS_ENABLE_PRIVILEGED")),
        "{log}"
    );
    assert!(!powered_off.exists(), "never powers off for it");
}

#[test]
fn garbage_scheduled_event_dates_never_drain_but_a_good_event_beside_them_does() {
    let instance = instance();
    let mut agent = start(&instance);
    let garbage = serde_json::json!([{
        "NotBefore": "soon", "NotAfter": "later", "Code": "system-reboot",
        "Description": "x", "EventId": "instance-event-bad", "State": "active"
    }]);
    instance.imds.set_faults(Faults {
        paths: [(SCHEDULED.to_owned(), Fault::Body(garbage.to_string()))].into(),
        ..Faults::default()
    });
    stays_watching(&instance, &mut agent, 3);
    assert_eq!(
        warnings(&agent.log(), "NotBefore \"soon\""),
        1,
        "{}",
        agent.log()
    );

    instance.imds.clear_faults();
    let not_before = now() + time::Duration::seconds(5);
    instance.imds.update(|s| {
        s.scheduled_events = vec![ScheduledEvent::reboot("instance-event-good", not_before)]
    });
    let drained = instance.wait_for(&agent, Duration::from_secs(10), "a drain", |s| {
        phase(s) == "draining"
    });
    assert_eq!(drained["drain"]["reason"]["id"], "instance-event-good");
}

#[test]
fn sigterm_while_imds_hangs_exits_at_once() {
    let instance = instance();
    let mut agent = start(&instance);
    instance.imds.set_faults(Faults {
        all: Some(Fault::Hang),
        ..Faults::default()
    });
    std::thread::sleep(Duration::from_millis(1500));
    sigterm(&agent);
    let (code, took) = wait_exit(&mut agent, Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", agent.log());
    assert!(took < Duration::from_secs(2), "SIGTERM took {took:?}");
}

/// Runs the agent with `fault` on IMDS's credentials paths only; the
/// instance, the warning line of the AWS call that needed them, and the log.
fn credentials_warning(fault: &Fault) -> (Instance, String, String) {
    let instance = instance();
    let paths = [
        "/latest/meta-data/iam/security-credentials/",
        "/latest/meta-data/iam/security-credentials-extended/",
    ]
    .into_iter()
    .map(|path| (path.to_owned(), fault.clone()))
    .collect();
    instance.imds.set_faults(Faults {
        paths,
        ..Faults::default()
    });
    let agent = start(&instance);

    let needle = "could not load AWS credentials";
    let log = agent.wait_for_log(needle, Duration::from_secs(20));
    let line = log.lines().find(|l| l.contains(needle)).unwrap().to_owned();
    (instance, line, log)
}

/// IMDS answers everything but the credentials: the warning of the AWS call
/// that needed them names the IMDS endpoint like every other IMDS warning.
#[test]
fn credentials_that_imds_does_not_hand_out_are_named_with_its_endpoint() {
    let (instance, line, log) = credentials_warning(&Fault::Gone);
    assert!(line.contains(&instance.imds.endpoint()), "{line}");
    assert_sentences(&instance, &log);
}

/// IMDS answers the credentials request with HTTP 500: the warning says the
/// status in a sentence, never the SDK's dump of the response.
#[test]
fn credentials_that_imds_answers_with_500_are_said_without_a_debug_dump() {
    let (instance, line, log) = credentials_warning(&Fault::Status(500));
    assert!(line.contains("IMDS answered HTTP 500"), "{line}");
    assert!(!line.contains("Response {"), "a debug dump: {line}");
    assert!(line.contains(&instance.imds.endpoint()), "{line}");
    assert_sentences(&instance, &log);
}
