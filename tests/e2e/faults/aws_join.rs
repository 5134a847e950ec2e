//! Fault matrix family `aws_join`: AWS misbehaving while `blockwatch join`
//! resolves the compute environment, through the fault proxy in front of
//! moto. Each case: the right exit code, ecs.config untouched (or written
//! once the fault clears), and one readable error line.

use std::time::{Duration, Instant};

use blockwatch_testkit::aws_proxy::{AwsProxy, Fault};

use crate::shared::assert_one_error;
use blockwatch_testkit::instance::{tags, Instance, Run};

use blockwatch_core::tags::TAG_COMPUTE_ENVIRONMENT as CE_TAG;
const DESCRIBE_CE: &str = "DescribeComputeEnvironments";
const BEFORE: &[u8] = b"ECS_ENGINE_AUTH_TYPE=docker\nECS_CLUSTER=previous\n";

/// An instance tagged with an UNMANAGED compute environment in moto, whose
/// AWS endpoint is a fault proxy; ecs.config holds [`BEFORE`].
async fn proxied(tags_in_imds: bool) -> (Instance, AwsProxy, String) {
    let mut instance = Instance::with_moto().await;
    let cluster_arn = instance
        .moto()
        .create_unmanaged_ce("faulty-ce", true)
        .await
        .unwrap();
    instance
        .launch(&[(CE_TAG, "faulty-ce")], tags_in_imds)
        .await;
    let proxy = AwsProxy::start(instance.moto().addr()).unwrap();
    instance.aws_endpoint = proxy.endpoint();
    instance.write_ecs_config(BEFORE);
    let cluster = cluster_arn.rsplit('/').next().unwrap().to_owned();
    (instance, proxy, cluster)
}

/// One error line, a sentence: no Rust debug dumps.
fn assert_readable_failure(run: &Run, needles: &[&str]) {
    eprintln!("{}", run.stderr);
    assert_one_error(run, needles);
    for dump in [
        "SdkBody",
        "DispatchFailure(",
        "Some(",
        "ConnectorError {",
        "{ ",
    ] {
        assert!(
            !run.stderr.contains(dump),
            "debug dump {dump:?}: {}",
            run.stderr
        );
    }
}

#[tokio::test]
async fn no_credentials_exits_77_at_once_naming_the_chain_it_tried() {
    // No moto needed: without credentials no request is ever signed.
    let instance = Instance::without_aws();
    instance.imds.update(|s| {
        s.iam_role = None;
        s.tags = tags(&[(CE_TAG, "research")]);
    });
    instance.write_ecs_config(BEFORE);

    let started = Instant::now();
    let run = instance.join(&["--retry-for", "1min"]);

    assert_eq!(run.code, 77, "{}", run.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "not retried as if transient: {:?}",
        started.elapsed()
    );
    assert_readable_failure(
        &run,
        &[
            "batch:DescribeComputeEnvironments",
            "no AWS credentials found",
            "environment variables",
            "profile files",
            "web identity token",
            "ECS container credentials",
            "EC2 instance profile (IMDS)",
        ],
    );
    assert!(!run.stderr.contains("retrying"), "{}", run.stderr);
    assert_eq!(instance.read_ecs_config().as_deref(), Some(BEFORE));
}

#[tokio::test]
async fn access_denied_exits_77_without_retrying_and_leaves_the_file() {
    let (instance, proxy, _) = proxied(true).await;
    proxy.inject(DESCRIBE_CE, Fault::access_denied_json(), None);

    let run = instance.join(&["--retry-for", "1min"]);

    assert_eq!(run.code, 77, "{}", run.stderr);
    assert_readable_failure(&run, &["AccessDeniedException", "not authorized"]);
    assert_eq!(proxy.seen(DESCRIBE_CE), 1, "a denial is not retried");
    assert_eq!(instance.read_ecs_config().as_deref(), Some(BEFORE));
}

#[tokio::test]
async fn throttling_once_is_retried_and_the_join_succeeds() {
    let (instance, proxy, cluster) = proxied(true).await;
    proxy.inject(DESCRIBE_CE, Fault::throttling_json(), Some(1));

    let run = instance.join(&[]);

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(proxy.seen(DESCRIBE_CE), 2, "the SDK retried once");
    assert_eq!(
        instance.read_ecs_config().unwrap(),
        format!("ECS_ENGINE_AUTH_TYPE=docker\nECS_CLUSTER={cluster}\n").into_bytes()
    );
}

#[tokio::test]
async fn throttling_that_persists_exits_75_and_leaves_the_file() {
    let (instance, proxy, _) = proxied(true).await;
    proxy.inject(DESCRIBE_CE, Fault::throttling_json(), None);

    let run = instance.join(&[]);

    assert_eq!(run.code, 75, "{}", run.stderr);
    assert_readable_failure(&run, &["ThrottlingException", "transient"]);
    assert_eq!(instance.read_ecs_config().as_deref(), Some(BEFORE));
}

/// Batch over its rate answers HTTP 429 `TooManyRequestsException`. With
/// `--retry-for 24s` the throttled retries are spread over an eighth of it
/// (3 s, then 6 s), where a server error would retry within a second: the
/// schedule itself is `JoinRetry`'s, unit-tested with a 1,000-instance storm.
#[tokio::test]
async fn batch_over_its_rate_is_retried_spread_out_then_the_join_succeeds() {
    let (instance, proxy, cluster) = proxied(true).await;
    proxy.inject(DESCRIBE_CE, Fault::too_many_requests(), Some(2));

    let run = instance.join(&["--retry-for", "24s"]);

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(proxy.seen(DESCRIBE_CE), 3, "one request an attempt");
    let windows: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("TooManyRequestsException") && l.contains("throttled: retrying in"))
        .filter_map(|l| l.split("spread over ").nth(1))
        .collect();
    assert_eq!(
        windows,
        [
            "3s so that a fleet does not retry at once)",
            "6s so that a fleet does not retry at once)"
        ],
        "{}",
        run.stderr
    );
    assert!(
        instance.read_ecs_config().is_some_and(
            |c| String::from_utf8_lossy(&c).contains(&format!("ECS_CLUSTER={cluster}"))
        ),
        "joined"
    );
}

#[tokio::test]
async fn server_errors_are_retried_within_retry_for_then_the_join_succeeds() {
    let (instance, proxy, cluster) = proxied(true).await;
    // Two join attempts' worth of 500s (the SDK makes two tries each).
    proxy.inject(DESCRIBE_CE, Fault::server_error(), Some(4));

    let run = instance.join(&["--retry-for", "30s"]);

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("retrying in") && run.stderr.contains("HTTP 500"),
        "{}",
        run.stderr
    );
    assert_eq!(proxy.seen(DESCRIBE_CE), 5);
    assert!(String::from_utf8(instance.read_ecs_config().unwrap())
        .unwrap()
        .contains(&format!("ECS_CLUSTER={cluster}\n")));
}

#[tokio::test]
async fn server_errors_that_persist_exit_75_and_leave_the_file() {
    let (instance, proxy, _) = proxied(true).await;
    proxy.inject(DESCRIBE_CE, Fault::server_error(), None);

    let run = instance.join(&[]);

    assert_eq!(run.code, 75, "{}", run.stderr);
    assert_readable_failure(&run, &["InternalFailure", "HTTP 500"]);
    assert_eq!(instance.read_ecs_config().as_deref(), Some(BEFORE));
}

#[tokio::test]
async fn a_reset_connection_exits_75_and_leaves_the_file() {
    let (instance, proxy, _) = proxied(true).await;
    proxy.inject(DESCRIBE_CE, Fault::Reset, None);

    let run = instance.join(&[]);

    assert_eq!(run.code, 75, "{}", run.stderr);
    assert_readable_failure(&run, &["batch:DescribeComputeEnvironments", "transient"]);
    assert!(proxy.seen(DESCRIBE_CE) >= 2, "retried by the SDK");
    assert_eq!(instance.read_ecs_config().as_deref(), Some(BEFORE));
}

#[tokio::test]
async fn a_call_that_never_answers_is_given_up_and_the_join_exits_75_after_retry_for() {
    let (instance, proxy, _) = proxied(true).await;
    proxy.inject(DESCRIBE_CE, Fault::Hang, None);

    let started = Instant::now();
    let run = instance.join(&["--retry-for", "4s"]);
    let took = started.elapsed();

    assert_eq!(run.code, 75, "{}", run.stderr);
    // Bounded by --retry-for plus one call's timeout, never for ever.
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(20),
        "{took:?}"
    );
    // One request per attempt (the join is the one retry layer); how many
    // fit in 4 s depends on the jittered waits, at least two.
    assert!(
        proxy.seen(DESCRIBE_CE) >= 2,
        "each attempt was given up and retried: {}",
        proxy.seen(DESCRIBE_CE)
    );
    assert_readable_failure(&run, &["gave up after", "--retry-for", "no answer in time"]);
    assert_eq!(instance.read_ecs_config().as_deref(), Some(BEFORE));
}

#[tokio::test]
async fn describe_tags_throttled_in_ec2_format_exits_75_and_leaves_the_file() {
    let (instance, proxy, _) = proxied(false).await;
    proxy.inject("DescribeTags", Fault::throttling_ec2(), None);

    let run = instance.join(&[]);

    assert_eq!(run.code, 75, "{}", run.stderr);
    assert_readable_failure(
        &run,
        &["ec2:DescribeTags", "RequestLimitExceeded", "HTTP 503"],
    );
    assert_eq!(instance.read_ecs_config().as_deref(), Some(BEFORE));
}

#[tokio::test]
async fn describe_tags_unauthorized_exits_77_and_leaves_the_file() {
    let (instance, proxy, _) = proxied(false).await;
    proxy.inject("DescribeTags", Fault::access_denied_ec2(), None);

    let run = instance.join(&[]);

    assert_eq!(run.code, 77, "{}", run.stderr);
    assert_readable_failure(&run, &["ec2:DescribeTags", "UnauthorizedOperation"]);
    assert_eq!(proxy.seen(DESCRIBE_CE), 0, "nothing after a denial");
    assert_eq!(instance.read_ecs_config().as_deref(), Some(BEFORE));
}

#[tokio::test]
async fn with_retry_for_each_throttled_attempt_is_one_request_not_the_sdks_retries_multiplied() {
    let (instance, proxy, _) = proxied(true).await;
    proxy.inject(DESCRIBE_CE, Fault::throttling_json(), None);

    let run = instance.join(&["--retry-for", "5s"]);

    assert_eq!(run.code, 75, "{}", run.stderr);
    let attempts = run.stderr.matches("retrying in").count() + 1;
    assert!(attempts >= 3, "retried with backoff: {}", run.stderr);
    assert_eq!(
        proxy.seen(DESCRIBE_CE),
        attempts,
        "one retry layer (the join's, jittered): {}",
        run.stderr
    );
    assert_readable_failure(&run, &["gave up after", "ThrottlingException"]);
}
