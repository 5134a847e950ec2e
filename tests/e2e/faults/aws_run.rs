//! Fault matrix family `aws_run`: AWS failing at drain time, with
//! [`AwsProxy`] between `blockwatch run` and moto. The agent retries, keeps
//! serving SIGTERM and the watchdog, logs a failure once with a count, and
//! drains (DRAINING at moto) once the service answers again. Also: webhook
//! deliveries at shutdown, and webhook credentials in logs.
//!
//! Over 400 lines: many independent scenarios of one fault family.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blockwatch_testkit::aws_proxy::{AwsProxy, Fault};
use blockwatch_testkit::imds::SpotInstanceAction;
use blockwatch_testkit::stub::StubServer;

use blockwatch_testkit::instance::{now, phase, Agent, Instance, FAST, PATIENCE};
use blockwatch_testkit::registered::{receiver_refusing_first, registered_in_jobs, Registered};

pub(crate) const DRAIN_CALL: &str = "UpdateContainerInstancesState";
const LIST_CALL: &str = "ListContainerInstances";

/// A spot interruption notice, due in less than the 10 s drain lead (as a
/// real 2-minute notice is against the default 10-minute lead): drain at once.
pub(crate) fn spot_notice(instance: &Instance) {
    instance.imds.update(|s| {
        s.spot_instance_action = Some(SpotInstanceAction {
            action: "terminate".into(),
            time: now() + time::Duration::seconds(5),
        });
    });
}

/// Sends SIGTERM to our own child, by PID.
pub(crate) fn sigterm(agent: &Agent) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &agent.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for the agent to exit; its exit code and how long it took.
pub(crate) fn wait_exit(agent: &mut Agent, within: Duration) -> (Option<i32>, Duration) {
    let started = Instant::now();
    loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            return (status.code(), started.elapsed());
        }
        assert!(
            started.elapsed() < within,
            "still running {within:?} after SIGTERM\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `done` holds, or panics with the agent's log.
pub(crate) fn wait_until(agent: &Agent, within: Duration, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Warning lines in the agent's log that contain `needle`.
pub(crate) fn warnings(log: &str, needle: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("warning:") && l.contains(needle))
        .count()
}

/// A NOTIFY_SOCKET that records every datagram on a thread of its own.
pub(crate) struct NotifySocket {
    pub path: std::path::PathBuf,
    messages: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NotifySocket {
    pub(crate) fn bind(instance: &Instance) -> Self {
        let path = instance.root.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (messages, stop) = (Arc::clone(&messages), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = socket.recv(&mut buffer) {
                        let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
                        messages.lock().unwrap().push((Instant::now(), text));
                    }
                }
            })
        };
        Self {
            path,
            messages,
            stop,
            thread: Some(thread),
        }
    }

    /// The environment that makes the agent notify us, with a 2 s watchdog
    /// (fed every second).
    pub(crate) fn env(&self) -> [(&'static str, String); 2] {
        [
            ("NOTIFY_SOCKET", self.path.to_str().unwrap().to_owned()),
            ("WATCHDOG_USEC", "2000000".to_owned()),
        ]
    }

    /// Messages containing `needle` received after `since`.
    pub(crate) fn count_since(&self, needle: &str, since: Instant) -> usize {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, text)| *at >= since && text.contains(needle))
            .count()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An instance registered in cluster `jobs`, with AWS behind a fault proxy.
pub(crate) struct Fixture {
    registered: Registered,
    pub proxy: AwsProxy,
}

/// The instance, its cluster and `status_at_moto` come from [`Registered`].
impl std::ops::Deref for Fixture {
    type Target = Registered;
    fn deref(&self) -> &Registered {
        &self.registered
    }
}

impl Fixture {
    pub(crate) async fn new(config: &str) -> Self {
        let mut registered = registered_in_jobs(&[], config).await;
        let proxy = AwsProxy::start(registered.instance.moto().addr()).unwrap();
        registered.instance.aws_endpoint = proxy.endpoint();
        Self { registered, proxy }
    }

    /// Starts `run` and waits for its first state file.
    pub(crate) fn start(&self, env: &[(&str, &str)]) -> Agent {
        let agent = self.instance.spawn_run(&[], env);
        self.instance
            .wait_for(&agent, Duration::from_secs(30), "watching", |s| {
                phase(s) == "watching"
            });
        agent
    }

    fn wait_draining(&self, agent: &Agent, within: Duration) {
        self.instance
            .wait_for(agent, within, "a confirmed drain", |s| {
                s["drain"]["draining_confirmed_at"].is_string()
            });
    }

    /// Injects `fault` into the drain call until `failures` calls failed,
    /// then lets it through: the drain must still happen.
    async fn drain_survives(&self, fault: Fault, failures: usize) -> Agent {
        let agent = self.start(&[]);
        self.proxy.inject(DRAIN_CALL, fault, Some(failures));
        spot_notice(&self.instance);
        self.wait_draining(&agent, Duration::from_secs(30));
        assert_eq!(self.status_at_moto().await, "DRAINING", "{}", agent.log());
        assert!(
            self.proxy.seen(DRAIN_CALL) > failures,
            "every faulted call was retried: {} calls\n{}",
            self.proxy.seen(DRAIN_CALL),
            agent.log()
        );
        agent
    }
}

#[tokio::test]
async fn throttled_drain_calls_are_retried_until_the_instance_is_draining() {
    let f = Fixture::new("").await;
    let agent = f.drain_survives(Fault::throttling_json(), 3).await;
    agent.assert_log_has("ThrottlingException");
}

#[tokio::test]
async fn server_errors_on_the_drain_call_are_retried_until_the_instance_is_draining() {
    let f = Fixture::new("").await;
    let agent = f.drain_survives(Fault::server_error(), 3).await;
    agent.assert_log_has("HTTP 500");
}

#[tokio::test]
async fn connection_resets_on_the_drain_call_are_retried_until_the_instance_is_draining() {
    let f = Fixture::new("").await;
    f.drain_survives(Fault::Reset, 3).await;
}

#[tokio::test]
async fn a_denied_drain_call_is_named_and_retried_until_the_permission_is_granted() {
    let f = Fixture::new("").await;
    let agent = f.start(&[]);
    f.proxy
        .inject(DRAIN_CALL, Fault::access_denied_json(), None);
    spot_notice(&f.instance);
    wait_until(&agent, Duration::from_secs(20), "two denied calls", || {
        f.proxy.seen(DRAIN_CALL) >= 2
    });
    assert_eq!(f.status_at_moto().await, "ACTIVE");
    let log = agent.log();
    assert_eq!(
        warnings(
            &log,
            "ecs:UpdateContainerInstancesState: AccessDeniedException"
        ),
        1,
        "one line naming the call and the denial\n{log}"
    );

    f.proxy.clear();
    f.wait_draining(&agent, Duration::from_secs(40));
    assert_eq!(f.status_at_moto().await, "DRAINING");
    agent.assert_log_has("setting the container instance to DRAINING works again");
}

#[tokio::test]
async fn a_drain_call_that_never_answers_leaves_sigterm_and_the_watchdog_served() {
    let f = Fixture::new("").await;
    let notify = NotifySocket::bind(&f.instance);
    let env = notify.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut agent = f.start(&env);
    f.proxy.inject(DRAIN_CALL, Fault::Hang, None);
    spot_notice(&f.instance);
    wait_until(&agent, Duration::from_secs(20), "the drain call", || {
        f.proxy.seen(DRAIN_CALL) >= 1
    });

    // The tick waits on the call, so no poll begins while it hangs: feeds
    // counted while the polls stand still came during the hang.
    let hung_at = Instant::now();
    let polls = f.instance.polls_begun();
    wait_until(&agent, PATIENCE, "three watchdog feeds", || {
        notify.count_since("WATCHDOG=1", hung_at) >= 3
    });
    assert_eq!(
        f.instance.polls_begun(),
        polls,
        "the call still hangs\n{}",
        agent.log()
    );
    assert_eq!(f.proxy.seen(DRAIN_CALL), 1, "still the same call");

    sigterm(&agent);
    let (code, took) = wait_exit(&mut agent, Duration::from_secs(10));
    assert!(took < Duration::from_secs(2), "SIGTERM took {took:?}");
    assert_eq!(code, Some(0), "{}", agent.log());
    assert!(notify.count_since("STOPPING=1", hung_at) >= 1);
}

#[tokio::test]
async fn a_container_instance_lookup_that_never_answers_leaves_sigterm_served() {
    let f = Fixture::new("").await;
    let mut agent = f.start(&[]);
    f.proxy.inject(LIST_CALL, Fault::Hang, None);
    spot_notice(&f.instance);
    wait_until(&agent, Duration::from_secs(20), "the lookup", || {
        f.proxy.seen(LIST_CALL) >= 1
    });
    std::thread::sleep(Duration::from_millis(500));

    sigterm(&agent);
    let (code, took) = wait_exit(&mut agent, Duration::from_secs(10));
    assert!(took < Duration::from_secs(2), "SIGTERM took {took:?}");
    assert_eq!(code, Some(0), "{}", agent.log());
}

#[tokio::test]
async fn a_hung_start_up_ec2_lookup_delays_neither_ready_nor_the_state_file_nor_a_spot_drain() {
    let f = Fixture::new("").await;
    f.proxy.inject("DescribeInstances", Fault::Hang, None);
    let notify = NotifySocket::bind(&f.instance);
    let env = notify.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let started = Instant::now();
    let agent = f.start(&env);
    wait_until(&agent, Duration::from_secs(10), "READY=1", || {
        notify.count_since("READY=1", started) == 1
    });
    // The lookup runs on its own task, so on a loaded machine READY=1 may
    // even come before its request: wait for it to hang, then notice.
    wait_until(&agent, Duration::from_secs(10), "the EC2 lookup", || {
        f.proxy.seen("DescribeInstances") >= 1
    });

    spot_notice(&f.instance);
    f.wait_draining(&agent, Duration::from_secs(15));
    assert_eq!(f.status_at_moto().await, "DRAINING");
}

/// The shutdown behaviour is read once at start; a transient failure (here
/// throttling, in the fleet benchmark credentials that IMDS was too slow to
/// hand out) is asked again, so the `stop` warning is not lost.
#[tokio::test]
async fn a_throttled_shutdown_behaviour_read_is_asked_again() {
    let f = Fixture::new("").await;
    f.proxy.inject(
        "DescribeInstanceAttribute",
        Fault::throttling_ec2(),
        Some(3),
    );
    let agent = f.start(&[]);

    agent.wait_for_log("shutdown behaviour is `stop`", Duration::from_secs(30));
    let log = agent.log();
    eprintln!("DBG {:#?}", f.proxy.log());
    // The SDK's three attempts, then the agent's retry.
    assert_eq!(f.proxy.seen("DescribeInstanceAttribute"), 4, "{log}");
    assert_eq!(warnings(&log, "RequestLimitExceeded"), 1, "{log}");
    assert!(log.contains("will ask again in"), "{log}");
    assert!(!log.contains("cannot tell whether"), "{log}");
}

/// The default policy may leave `ec2:DescribeInstanceAttribute` out: a
/// denied read is said once, as what it is, and nothing else changes.
#[tokio::test]
async fn a_denied_shutdown_behaviour_read_is_said_once_and_the_agent_drains_and_powers_off() {
    let f = Fixture::new("").await;
    let marker = f.instance.root.path().join("powered-off");
    f.instance.write_config(&format!(
        "{FAST}on_drained = \"poweroff\"\npoweroff_command = \"touch {}\"\n",
        marker.display()
    ));
    f.proxy.inject(
        "DescribeInstanceAttribute",
        Fault::access_denied_ec2(),
        None,
    );
    let agent = f.start(&[]);
    agent.wait_for_log("blockwatch may not read it", Duration::from_secs(30));

    spot_notice(&f.instance);
    wait_until(&agent, Duration::from_secs(30), "the power-off", || {
        marker.exists()
    });
    assert_eq!(f.status_at_moto().await, "DRAINING", "{}", agent.log());

    let log = agent.log();
    // The denial is said once. (On a loaded machine the first read may also
    // fail for another reason first, such as a slow credential fetch; that
    // is its own line and not a denial.)
    let attribute_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("DescribeInstanceAttribute") && l.contains("UnauthorizedOperation"))
        .collect();
    assert_eq!(attribute_lines.len(), 1, "{log}");
    assert!(
        attribute_lines[0].contains("warning:")
            && attribute_lines[0].contains(
                "instance-initiated shutdown behaviour unknown: blockwatch may not read it"
            )
            && attribute_lines[0].contains("UnauthorizedOperation"),
        "{log}"
    );
    // Denied is not transient: asked once (the SDK does not retry it).
    assert_eq!(f.proxy.seen("DescribeInstanceAttribute"), 1, "{log}");
}

#[tokio::test]
async fn repeated_ecs_failures_are_logged_once_with_a_count_not_once_per_retry() {
    let f = Fixture::new("").await;
    let agent = f.start(&[]);
    f.proxy.inject(DRAIN_CALL, Fault::server_error(), None);
    spot_notice(&f.instance);
    // AWS_MAX_ATTEMPTS=2: two requests per failed drain attempt.
    wait_until(&agent, Duration::from_secs(40), "5 failed drains", || {
        f.proxy.seen(DRAIN_CALL) >= 10
    });
    let log = agent.log();
    let lines = warnings(&log, "UpdateContainerInstancesState");
    assert!(
        (1..=2).contains(&lines),
        "{lines} warning lines for 5 failures\n{log}"
    );
    assert!(log.contains("repeats are counted and summarised"), "{log}");
    // The recovery line is checked by the AccessDenied case.
}

/// A webhook receiver that answers after `delay`.
fn slow_receiver(delay: Duration) -> StubServer {
    StubServer::start(move |_, _| {
        std::thread::sleep(delay);
        (200, "ok".into())
    })
    .unwrap()
}

/// `http://hook-user:hook-secret@127.0.0.1:<port>/hooks/T000/path-secret?token=query-secret`
fn secret_url(receiver: &StubServer) -> String {
    receiver
        .url("/hooks/T000/path-secret?token=query-secret")
        .replacen("http://", "http://hook-user:hook-secret@", 1)
}

const SECRETS: [&str; 4] = ["hook-user", "hook-secret", "path-secret", "query-secret"];

/// Starts draining with a webhook receiver that answers after `delay`, sends
/// SIGTERM once the delivery is in flight and waits up to `within` for the
/// exit: (exit code, how long the exit took, the log).
async fn sigterm_mid_delivery(
    delay: Duration,
    within: Duration,
) -> (Option<i32>, Duration, String) {
    let receiver = slow_receiver(delay);
    let f = Fixture::new(&format!("webhook_url = {:?}\n", secret_url(&receiver))).await;
    let mut agent = f.start(&[]);
    spot_notice(&f.instance);
    f.instance
        .wait_for(&agent, Duration::from_secs(15), "draining", |s| {
            phase(s) == "draining"
        });
    wait_until(&agent, Duration::from_secs(5), "the delivery", || {
        !receiver.received().is_empty()
    });

    sigterm(&agent);
    let (code, took) = wait_exit(&mut agent, within);
    (code, took, agent.log())
}

#[tokio::test]
async fn sigterm_waits_for_a_webhook_delivery_in_flight() {
    let (code, took, log) =
        sigterm_mid_delivery(Duration::from_millis(2500), Duration::from_secs(10)).await;
    assert_eq!(code, Some(0));
    assert!(
        log.contains("delivered \"drain-started\""),
        "delivered before exiting (took {took:?})\n{log}"
    );
    assert!(took < Duration::from_millis(5500), "bounded: {took:?}");
    for secret in SECRETS {
        assert!(!log.contains(secret), "{secret} in\n{log}");
    }
}

#[tokio::test]
async fn sigterm_drops_a_webhook_slower_than_the_grace_and_says_so() {
    let (code, took, log) =
        sigterm_mid_delivery(Duration::from_secs(9), Duration::from_secs(15)).await;
    assert_eq!(code, Some(0));
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(8),
        "waited about 5 s: {took:?}"
    );
    let dropped: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("dropped drain-started undelivered"))
        .collect();
    assert_eq!(dropped.len(), 1, "{log}");
    assert!(dropped[0].contains("http://127.0.0.1/…"), "{}", dropped[0]);
    for secret in SECRETS {
        assert!(!log.contains(secret), "{secret} in\n{log}");
    }
}

#[tokio::test]
async fn power_off_waits_for_the_drain_completed_webhook() {
    let receiver = slow_receiver(Duration::from_millis(1500));
    let f = Fixture::new("").await;
    let marker = f.instance.root.path().join("powered-off");
    f.instance.write_config(&format!(
        "{FAST}webhook_url = {:?}\non_drained = \"poweroff\"\npoweroff_command = \"touch {}\"\n",
        secret_url(&receiver),
        marker.display()
    ));
    let agent = f.start(&[]);
    spot_notice(&f.instance);
    wait_until(&agent, Duration::from_secs(30), "the power-off", || {
        marker.exists()
    });

    let log = agent.log();
    let delivered = log
        .find("delivered \"drain-completed\"")
        .unwrap_or_else(|| panic!("drain-completed not delivered before power-off\n{log}"));
    let powering_off = log.find("powering off with").unwrap();
    assert!(delivered < powering_off, "{log}");
}

#[tokio::test]
async fn webhook_credentials_never_appear_in_any_log_line() {
    // Refused first, so the retries and the failures are logged too.
    let receiver = receiver_refusing_first(2);
    let f = Fixture::new(&format!(
        "webhook_url = {:?}\ndry_run = false\n",
        secret_url(&receiver)
    ))
    .await;
    let mut agent = f.start(&[]);
    f.proxy.inject(DRAIN_CALL, Fault::server_error(), Some(2));
    spot_notice(&f.instance);
    wait_until(&agent, Duration::from_secs(20), "a delivery", || {
        agent.log().contains("delivered")
    });
    sigterm(&agent);
    wait_exit(&mut agent, Duration::from_secs(10));

    let log = agent.log();
    assert!(log.contains("webhook http://127.0.0.1/…"), "{log}");
    for secret in SECRETS {
        assert!(!log.contains(secret), "{secret} in\n{log}");
    }
}
