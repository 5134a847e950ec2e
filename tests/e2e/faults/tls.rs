//! Fault matrix family `tls`: real TLS handshakes through the shipped code
//! paths, so that a broken TLS stack (no crypto provider, certificates not
//! loaded) fails here rather than on the first real AWS call. moto serves
//! HTTPS with a certificate from a CA made for the test, and the binaries
//! trust that CA through `SSL_CERT_FILE`, as an operator's bundle would be.

use blockwatch_core::tags::{TAG_CLUSTER, TAG_LEASE_END};
use std::path::Path;
use std::time::{Duration, Instant};

use blockwatch_core::time_text::rfc3339;
use blockwatch_testkit::moto::MotoServer;
use blockwatch_testkit::registered::Registered;
use blockwatch_testkit::tls::{HttpsReceiver, TestCa};

use crate::shared::assert_one_error;
use blockwatch_testkit::instance::{nothing_runs, now, Agent, Instance, Run, FAST, PATIENCE};

const BEFORE: &[u8] = b"ECS_ENGINE_AUTH_TYPE=docker\nECS_CLUSTER=previous\n";

/// An instance whose AWS endpoint is moto over HTTPS with `ca`'s
/// certificate (`https://127.0.0.1:<port>`).
async fn instance_over_https(ca: &TestCa) -> Instance {
    let moto = MotoServer::start_tls(ca).await.expect("moto over HTTPS");
    assert!(
        moto.endpoint().starts_with("https://127.0.0.1:"),
        "{}",
        moto.endpoint()
    );
    Instance::with(moto)
}

/// An instance tagged with an UNMANAGED compute environment in moto over
/// HTTPS; returns it and the cluster's name.
async fn tagged_over_https(ca: &TestCa) -> (Instance, String) {
    let instance = instance_over_https(ca).await;
    let cluster = instance.launch_in_compute_environment("secure-ce").await;
    (instance, cluster)
}

/// `blockwatch join` trusting the CA certificates in `ca_file` only.
fn join_trusting(instance: &Instance, ca_file: &Path) -> Run {
    instance
        .join_command()
        .env("SSL_CERT_FILE", ca_file)
        .output()
        .expect("run blockwatch")
        .into()
}

fn calls_to(instance: &Instance, api_path: &str) -> usize {
    instance
        .moto()
        .requests()
        .iter()
        .filter(|r| r.url.contains(api_path))
        .count()
}

#[tokio::test]
async fn join_over_https_trusting_the_ca_writes_the_cluster() {
    let ca = TestCa::create().unwrap();
    let (instance, cluster) = tagged_over_https(&ca).await;
    let seeded = calls_to(&instance, "/v1/describecomputeenvironments");

    let run = join_trusting(&instance, &ca.ca_file());

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        instance.read_ecs_config().as_deref(),
        Some(format!("ECS_CLUSTER={cluster}\n").as_bytes())
    );
    assert!(
        calls_to(&instance, "/v1/describecomputeenvironments") > seeded,
        "the agent asked moto over HTTPS: {:?}",
        instance.moto().requests()
    );
}

#[tokio::test]
async fn join_over_https_with_an_untrusted_certificate_exits_75_naming_it_and_leaves_the_file() {
    let ca = TestCa::create().unwrap();
    // A bundle that holds a CA, just not the one that signed moto's certificate.
    let unrelated = TestCa::create().unwrap();
    let (instance, _) = tagged_over_https(&ca).await;
    instance.write_ecs_config(BEFORE);
    let seeded = calls_to(&instance, "/v1/describecomputeenvironments");

    let run = join_trusting(&instance, &unrelated.ca_file());

    eprintln!("{}", run.stderr);
    assert_eq!(run.code, 75, "{}", run.stderr);
    assert_one_error(
        &run,
        &[
            "batch:DescribeComputeEnvironments",
            "certificate",
            "UnknownIssuer",
        ],
    );
    for dump in ["DispatchFailure(", "ConnectorError {", "Some(", "{ "] {
        assert!(
            !run.stderr.contains(dump),
            "debug dump {dump:?}: {}",
            run.stderr
        );
    }
    assert_eq!(
        calls_to(&instance, "/v1/describecomputeenvironments"),
        seeded,
        "no request got past the handshake"
    );
    assert_eq!(instance.read_ecs_config().as_deref(), Some(BEFORE));
}

/// An instance registered in cluster `jobs` at moto over HTTPS (trusting
/// `ca`), with a webhook to `webhook_url` and a lease that ends soon after
/// the setup: drain_lead (10 s) is already past, so the drain starts as
/// soon as the agent watches. Returns it and the instance id.
async fn draining_over_https(ca: &TestCa, webhook_url: &str) -> (Registered, String) {
    let instance = instance_over_https(ca).await;
    let moto = instance.moto();
    let cluster_arn = moto.create_cluster("jobs").await.unwrap();
    let id = instance.launch(&[(TAG_CLUSTER, "jobs")], true).await;
    let container_instance = moto
        .register_container_instance(&cluster_arn, &id)
        .await
        .unwrap();
    instance.write_config(&format!(
        "{FAST}webhook_url = {webhook_url:?}\non_lease_end = \"none\"\n"
    ));
    let end = now() + time::Duration::seconds(5);
    instance.imds.update(|s| {
        s.tags
            .get_or_insert_with(Default::default)
            .insert(TAG_LEASE_END.into(), rfc3339(end));
    });
    let registered = Registered {
        instance,
        cluster_arn,
        container_instance,
    };
    (registered, id)
}

/// `blockwatch run` trusting the CA certificates in `ca_file` only.
fn run_trusting(instance: &Instance, ca_file: &Path) -> Agent {
    instance.spawn_run(&[], &[("SSL_CERT_FILE", ca_file.to_str().unwrap())])
}

#[tokio::test]
async fn run_drains_over_https_and_delivers_the_webhook_over_https() {
    let ca = TestCa::create().unwrap();
    let receiver = HttpsReceiver::start(&ca).unwrap();
    let (f, id) = draining_over_https(&ca, &receiver.url("/hooks/drain")).await;

    let agent = run_trusting(&f.instance, &ca.ca_file());

    f.instance
        .wait_for(&agent, PATIENCE, "drained", nothing_runs);
    assert_eq!(
        f.status_at_moto().await,
        "DRAINING",
        "UpdateContainerInstancesState reached moto over HTTPS"
    );
    let deadline = Instant::now() + PATIENCE;
    let started = loop {
        let posted = receiver.received();
        let started = posted.iter().find_map(|p| {
            let event: serde_json::Value = serde_json::from_str(&p.body).ok()?;
            (event["event"] == "drain-started").then_some((p.path.clone(), event))
        });
        if let Some(started) = started {
            break started;
        }
        assert!(
            Instant::now() < deadline,
            "no drain-started over HTTPS: {posted:?}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(started.0, "/hooks/drain");
    assert_eq!(started.1["cluster"], "jobs");
    assert_eq!(started.1["instance_id"], id.as_str());
    agent.assert_log_has("webhook https://127.0.0.1/…: delivered");
}

#[tokio::test]
async fn a_webhook_receiver_with_an_untrusted_certificate_gets_nothing_and_the_log_names_the_certificate(
) {
    let ca = TestCa::create().unwrap();
    // The receiver's certificate comes from a CA the agent does not trust.
    let unrelated = TestCa::create().unwrap();
    let receiver = HttpsReceiver::start(&unrelated).unwrap();
    let (Registered { instance, .. }, _) =
        draining_over_https(&ca, &receiver.url("/hooks/drain")).await;

    let agent = run_trusting(&instance, &ca.ca_file());

    let log = agent.wait_for_log("webhook https://127.0.0.1/…: attempt 1 failed (", PATIENCE);
    let failed = log
        .lines()
        .find(|l| l.contains("attempt 1 failed ("))
        .unwrap();
    assert!(
        failed.contains("certificate") && failed.contains("UnknownIssuer"),
        "{failed}"
    );
    eprintln!("{failed}");
    assert!(!failed.contains("{ "), "no debug dump: {failed}");
    assert_eq!(receiver.received(), [], "nothing got past the handshake");
}
