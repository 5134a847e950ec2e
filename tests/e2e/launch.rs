//! `blockwatch-launch` end to end: the real binary against moto.
//!
//! Over 400 lines: many independent scenarios of one command, one per market,
//! refusal and wait.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use blockwatch_core::tags::{
    TAG_CLUSTER, TAG_COMPUTE_ENVIRONMENT, TAG_LEASE_DURATION, TAG_LEASE_END,
};
use std::process::Command;

use blockwatch_testkit::aws_proxy::{AwsProxy, Fault};
use blockwatch_testkit::imds::{ImdsSimulator, InstanceState};
use blockwatch_testkit::launcher::canned::{self, ec2_error};
use blockwatch_testkit::launcher::{
    assert_volumes_tagged, hermetic_env, launch_args, launch_template_data, shutdown_behavior,
    Launcher, Run,
};
use blockwatch_testkit::moto::{MotoServer, REGION};
use blockwatch_testkit::stub::StubServer;

const LAUNCHER: &str = env!("CARGO_BIN_EXE_blockwatch-launch");

fn launcher(endpoint: &str, args: &[&str]) -> Run {
    Launcher::new(endpoint).args(args).run()
}

async fn moto_with_ce() -> (MotoServer, String) {
    let moto = MotoServer::start().await.unwrap();
    let cluster_arn = moto.create_unmanaged_ce("research", true).await.unwrap();
    (moto, cluster_arn.rsplit('/').next().unwrap().to_owned())
}

async fn instances(moto: &MotoServer) -> Vec<aws_sdk_ec2::types::Instance> {
    blockwatch_testkit::launcher::instances(moto).await.unwrap()
}

fn tag<'a>(instance: &'a aws_sdk_ec2::types::Instance, key: &str) -> Option<&'a str> {
    instance
        .tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// One attribute of instance `id`, as moto holds it.
async fn instance_attribute(
    moto: &MotoServer,
    id: &str,
    name: aws_sdk_ec2::types::InstanceAttributeName,
) -> aws_sdk_ec2::operation::describe_instance_attribute::DescribeInstanceAttributeOutput {
    aws_sdk_ec2::Client::new(moto.sdk())
        .describe_instance_attribute()
        .instance_id(id)
        .attribute(name)
        .send()
        .await
        .unwrap()
}

async fn user_data(moto: &MotoServer, id: &str) -> Option<String> {
    instance_attribute(
        moto,
        id,
        aws_sdk_ec2::types::InstanceAttributeName::UserData,
    )
    .await
    .user_data()
    .and_then(|u| u.value())
    .map(|v| String::from_utf8(aws_smithy_types::base64::decode(v).unwrap()).unwrap())
}

/// moto ships the public ECS-optimized AMI parameters.
async fn ami_from_ssm(moto: &MotoServer, arm64: bool) -> String {
    let name = if arm64 {
        blockwatch_launch::plan::AMI_PARAMETER_ARM64
    } else {
        blockwatch_launch::plan::AMI_PARAMETER_X86
    };
    let ssm = aws_sdk_ssm::Client::new(moto.sdk());
    ssm.get_parameter()
        .name(name)
        .send()
        .await
        .unwrap()
        .parameter()
        .unwrap()
        .value()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn spot_market_launches_tagged_spot_instances_with_imdsv2_and_no_user_data() {
    let (moto, cluster) = moto_with_ce().await;
    let run = Launcher::new(&moto.endpoint())
        .launch(2, "3h")
        .args(["--output", "json", "--keep-template"])
        .run();
    run.assert_exit(0);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["cluster"], cluster);
    assert_eq!(report["market"], "spot");

    let all = instances(&moto).await;
    assert_eq!(all.len(), 2);
    let expected_ami = ami_from_ssm(&moto, false).await;
    for instance in &all {
        assert_eq!(tag(instance, TAG_COMPUTE_ENVIRONMENT), Some("research"));
        assert_eq!(tag(instance, TAG_LEASE_DURATION), Some("3h"));
        assert_eq!(tag(instance, "Name"), Some("blockwatch-research"));
        assert_eq!(
            instance.instance_lifecycle().map(|l| l.as_str()),
            Some("spot")
        );
        assert_eq!(instance.image_id(), Some(expected_ami.as_str()));
        // What the template carried, on the instance EC2 Fleet launched.
        let metadata = instance.metadata_options().unwrap();
        assert_eq!(metadata.http_tokens().map(|t| t.as_str()), Some("required"));
        assert_eq!(
            metadata.instance_metadata_tags().map(|t| t.as_str()),
            Some("enabled")
        );
        assert_eq!(
            metadata.http_put_response_hop_limit(),
            Some(1),
            "containers on a bridge network cannot reach IMDS by default"
        );
        let id = instance.instance_id().unwrap();
        assert_eq!(
            shutdown_behavior(&moto, id).await.as_deref(),
            Some("terminate")
        );
        assert_volumes_tagged(
            &moto,
            id,
            &[
                (TAG_COMPUTE_ENVIRONMENT, "research"),
                (TAG_LEASE_DURATION, "3h"),
                ("Name", "blockwatch-research"),
            ],
        )
        .await;
        assert_eq!(user_data(&moto, id).await, None, "no user data by default");
    }
    // --output json matches what moto holds.
    let mut reported: Vec<String> = report["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap().to_owned())
        .collect();
    let mut held: Vec<String> = all
        .iter()
        .map(|i| i.instance_id().unwrap().to_owned())
        .collect();
    reported.sort();
    held.sort();
    assert_eq!(reported, held);
    for entry in report["instances"].as_array().unwrap() {
        let instance = all
            .iter()
            .find(|i| i.instance_id() == entry["instance_id"].as_str())
            .unwrap();
        let launched =
            time::OffsetDateTime::from_unix_timestamp(instance.launch_time().unwrap().secs())
                .unwrap();
        let lease_end = time::OffsetDateTime::parse(
            entry["lease_end"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert_eq!(lease_end - launched, time::Duration::hours(3));
        assert_eq!(entry["instance_type"], "m6i.large");
    }
}

#[tokio::test]
async fn on_demand_market_and_graviton_types_use_the_arm64_ami() {
    let (moto, _) = moto_with_ce().await;
    let run = Launcher::new(&moto.endpoint())
        .launch(1, "90m")
        .args(["--market", "on-demand", "--instance-type", "m7g.large"])
        .run();
    run.assert_exit(0);
    let all = instances(&moto).await;
    assert_eq!(all.len(), 1);
    assert_eq!(
        all[0].instance_lifecycle(),
        None,
        "on-demand has no lifecycle"
    );
    assert_eq!(
        all[0].image_id(),
        Some(ami_from_ssm(&moto, true).await.as_str())
    );
    assert_eq!(tag(&all[0], "blockwatch:lease-duration"), Some("1h 30m"));
    run.assert_stdout_has("launched 1 of 1");
}

#[tokio::test]
async fn ecs_config_user_data_carries_the_resolved_cluster() {
    let (moto, cluster) = moto_with_ce().await;
    let run = Launcher::new(&moto.endpoint())
        .launch(1, "1h")
        .args([
            "--user-data-mode",
            "ecs-config",
            "--ami",
            "ami-0123456789abcdef0",
        ])
        .run();
    run.assert_exit(0);
    let all = instances(&moto).await;
    assert_eq!(
        all[0].image_id(),
        Some("ami-0123456789abcdef0"),
        "--ami wins over SSM"
    );
    let script = user_data(&moto, all[0].instance_id().unwrap())
        .await
        .unwrap();
    assert!(
        script.contains(&format!(
            "echo \"ECS_CLUSTER={cluster}\" >> /etc/ecs/ecs.config"
        )),
        "{script}"
    );
}

async fn assert_refused_and_nothing_launched(
    moto: &MotoServer,
    args: &[&str],
    code: i32,
    needle: &str,
) {
    let before = moto.requests().len();
    let run = launcher(&moto.endpoint(), args);
    assert_eq!(run.code, code, "{args:?}: {}", run.stderr);
    assert!(run.stderr.contains(needle), "{args:?}: {}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "one line: {}", run.stderr);
    assert!(
        instances(moto).await.is_empty(),
        "{args:?} launched something"
    );
    let _ = before;
}

#[tokio::test]
async fn unknown_managed_and_bad_requests_are_refused_and_nothing_launches() {
    let (moto, _) = moto_with_ce().await;
    moto.create_managed_ce("managed-ce").await.unwrap();
    let base = |ce: &'static str, duration: &'static str| launch_args(ce, "1", duration);

    assert_refused_and_nothing_launched(
        &moto,
        &base("no-such-ce", "3h"),
        3,
        "compute environment \"no-such-ce\" not found",
    )
    .await;
    assert_refused_and_nothing_launched(&moto, &base("managed-ce", "3h"), 3, "is MANAGED").await;

    // Refused before any AWS call at all.
    let before = moto.requests().len();
    for (duration, needle) in [
        ("0s", "at least 10m"),
        ("5m", "at least 10m"),
        ("soon", "is not a duration"),
    ] {
        assert_refused_and_nothing_launched(&moto, &base("research", duration), 2, needle).await;
    }
    let negative = [
        "--compute-environment",
        "research",
        "--count",
        "1",
        "--duration=-3h",
    ];
    assert_refused_and_nothing_launched(&moto, &negative, 2, "\"-3h\" is not a duration").await;
    let mut legacy = base("research", "90m");
    legacy.push("--legacy-spot-block");
    assert_refused_and_nothing_launched(&moto, &legacy, 2, "60 to 360 minutes in steps of 60")
        .await;
    let mut legacy = base("research", "7h");
    legacy.push("--legacy-spot-block");
    assert_refused_and_nothing_launched(&moto, &legacy, 2, "60 to 360 minutes").await;
    let mut price = base("research", "3h");
    price.extend(["--market", "on-demand", "--max-price", "0.1"]);
    assert_refused_and_nothing_launched(
        &moto,
        &price,
        2,
        "--max-price only applies to --market spot",
    )
    .await;
    let mut block = base("research", "3h");
    block.extend(["--market", "capacity-block"]);
    assert_refused_and_nothing_launched(&moto, &block, 2, "needs --capacity-reservation-id").await;
    let zero = Launcher::new(&moto.endpoint()).launch(0, "3h").run();
    zero.assert_exit(2);
    // Only the test's own DescribeInstances reached moto: validation made no call.
    let made = moto.requests().len() - before;
    assert_eq!(
        made, 8,
        "one DescribeInstances per refused request checked above, nothing else"
    );
}

#[tokio::test]
async fn dry_run_launches_nothing_and_prints_the_plan() {
    let (moto, cluster) = moto_with_ce().await;
    let run = Launcher::new(&moto.endpoint())
        .launch(3, "2h")
        .args(["--dry-run", "--output", "json"])
        .run();
    run.assert_exit(0);
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["cluster"], cluster);
    assert_eq!(plan["requested"], 3);
    assert!(plan["instances"].as_array().unwrap().is_empty());
    assert!(instances(&moto).await.is_empty());
    assert_eq!(plan["fleet_request"]["Type"], "instant", "{plan}");
    assert!(
        launch_templates(&moto).await.is_empty(),
        "the template the DryRun needed is gone"
    );

    let text = Launcher::new(&moto.endpoint())
        .launch(3, "2h")
        .args(["--dry-run"])
        .run();
    text.assert_stdout_has("would launch 3 x m6i.large (spot)");
    text.assert_stdout_has("nothing was launched");
}

#[tokio::test]
async fn retired_spot_blocks_get_a_clear_message() {
    let (moto, _) = moto_with_ce().await;
    // EC2 as it answers today; Batch and SSM still go to moto.
    let ec2 = canned::run_instances(moto.addr(), |_| {
        (
            400,
            ec2_error(
                "InvalidParameterValue",
                "The parameter BlockDurationMinutes is not a valid parameter.",
            ),
        )
    })
    .unwrap();
    let output = Launcher::new(&moto.endpoint())
        .env("AWS_ENDPOINT_URL_EC2", ec2.url(""))
        .launch(1, "2h")
        .args(["--legacy-spot-block"])
        .command()
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(6), "{stderr}");
    assert!(
        stderr.contains("retired on 2022-12-31")
            && stderr.contains("--market spot with the same --duration 2h"),
        "{stderr}"
    );
    let run_instances = ec2
        .received()
        .into_iter()
        .find(|r| r.body.contains("Action=RunInstances"))
        .unwrap();
    assert!(
        run_instances.body.contains("BlockDurationMinutes=120"),
        "{run_instances:?}"
    );
}

#[tokio::test]
async fn agent_joins_with_no_aws_call_and_derives_the_lease_end_the_launcher_printed() {
    let (moto, cluster) = moto_with_ce().await;
    let run = Launcher::new(&moto.endpoint())
        .launch(1, "4h")
        .args(["--output", "json"])
        .run();
    run.assert_exit(0);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let printed = report["instances"][0]["lease_end"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = report["instances"][0]["instance_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The instance as IMDS would show it: its launch time and its tags.
    let instance = instances(&moto)
        .await
        .into_iter()
        .find(|i| i.instance_id() == Some(id.as_str()))
        .unwrap();
    let launched =
        time::OffsetDateTime::from_unix_timestamp(instance.launch_time().unwrap().secs()).unwrap();
    let imds = ImdsSimulator::start(InstanceState {
        instance_id: id.clone(),
        region: REGION.to_owned(),
        pending_time: launched,
        tags: Some(
            instance
                .tags()
                .iter()
                .map(|t| (t.key().unwrap().to_owned(), t.value().unwrap().to_owned()))
                .collect(),
        ),
        ..InstanceState::default()
    })
    .unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    let agent = blockwatch_testkit::instance::agent_binary();
    assert_eq!(
        tag(&instance, TAG_CLUSTER),
        Some(cluster.as_str()),
        "the launcher tags the resolved cluster"
    );
    assert_eq!(tag(&instance, TAG_COMPUTE_ENVIRONMENT), Some("research"));

    // A launcher-started instance joins from IMDS alone: no AWS call.
    let before = moto.requests().len();
    let scratch = tempfile::tempdir().unwrap();
    let joined = Command::new(&agent)
        .env_clear()
        .env("PATH", blockwatch_testkit::host_guard::path())
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.endpoint())
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .arg("join")
        .arg("--ecs-config")
        .arg(scratch.path().join("ecs.config"))
        .arg("--state-dir")
        .arg(scratch.path().join("state"))
        .output()
        .unwrap();
    assert!(joined.status.success(), "{joined:?}");
    assert_eq!(
        std::fs::read_to_string(scratch.path().join("ecs.config")).unwrap(),
        format!("ECS_CLUSTER={cluster}\n")
    );
    let during: Vec<_> = moto.requests().into_iter().skip(before).collect();
    assert!(during.is_empty(), "AWS calls during the join: {during:?}");

    let mut child = Command::new(&agent)
        .env_clear()
        .env("PATH", blockwatch_testkit::host_guard::path())
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.endpoint())
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("BLOCKWATCH_DEADLINE_DIR", state_dir.path().join("run"))
        .args([
            "run",
            "--ecs-introspection-url",
            "http://127.0.0.1:9/v1/metadata",
            "--state-dir",
        ])
        .arg(state_dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let state = state_dir.path().join("state.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !state.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let snapshot: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(snapshot["cluster"], cluster);
    assert_eq!(
        snapshot["deadline"]["at"].as_str(),
        Some(printed.as_str()),
        "agent and launcher agree on the lease end"
    );
    assert_eq!(snapshot["deadline"]["event"]["kind"], "lease");
}

#[tokio::test]
async fn wait_returns_once_the_instances_run_with_a_quiet_line_when_piped() {
    let (moto, _) = moto_with_ce().await;
    let run = Launcher::new(&moto.endpoint())
        .launch(2, "1h")
        .args(["--wait", "--wait-timeout", "30s"])
        .run();
    run.assert_exit(0);
    assert_eq!(
        run.stderr.trim(),
        "waiting: 2/2 running",
        "one line, no redraws, when piped"
    );
    run.assert_stdout_has("running");
}

/// Runs the launcher with Batch and SSM at moto and EC2 at `ec2`.
/// The EC2 requests of `action` that the stand-in `ec2` received.
fn sent(ec2: &StubServer, action: &str) -> Vec<blockwatch_testkit::stub::Received> {
    ec2.received()
        .into_iter()
        .filter(|r| r.body.contains(&format!("Action={action}&")))
        .collect()
}

fn launcher_with_ec2(moto: &MotoServer, ec2: &StubServer, args: &[&str]) -> Run {
    Launcher::new(&moto.endpoint())
        .ec2_at(&ec2.url(""))
        .args(args)
        .run()
}

#[tokio::test]
async fn capacity_shortfall_price_and_access_denied_get_specific_errors() {
    let (moto, _) = moto_with_ce().await;
    let args = [
        launch_args("research", "2", "1h"),
        vec![
            "--instance-type",
            "p5.48xlarge",
            "--instance-type",
            "m6i.large",
        ],
    ]
    .concat();

    // One fleet request: the first type has no capacity, the second gives one instance.
    let fleet = |instances: &[(&str, &str, &str)], errors: &[(&str, &str, &str, &str)]| {
        canned::answering(
            moto.addr(),
            vec![
                ("CreateFleet", 200, canned::create_fleet(instances, errors)),
                (
                    "DescribeInstances",
                    200,
                    canned::pending_instance(
                        "i-0aaaaaaaaaaaaaaa1",
                        "m6i.large",
                        "2026-11-29T12:00:00.000Z",
                    ),
                ),
            ],
        )
        .unwrap()
    };
    let partial = fleet(
        &[("i-0aaaaaaaaaaaaaaa1", "m6i.large", "spot")],
        &[(
            "p5.48xlarge",
            "spot",
            "InsufficientInstanceCapacity",
            "We currently do not have sufficient p5.48xlarge capacity.",
        )],
    );
    let run = launcher_with_ec2(&moto, &partial, &args);
    run.assert_exit(4);
    run.assert_stderr_has("insufficient capacity: launched 1 of 2")
        .assert_stderr_has("p5.48xlarge (spot): InsufficientInstanceCapacity");
    assert!(
        run.stdout.contains(
            "i-0aaaaaaaaaaaaaaa1  m6i.large  spot  -  pending  lease ends 2026-11-29T13:00:00Z"
        ),
        "what launched is still reported: {}",
        run.stdout
    );
    run.assert_stdout_has("  not filled: p5.48xlarge (spot): InsufficientInstanceCapacity (We currently do not have sufficient p5.48xlarge capacity.)");
    assert_eq!(
        sent(&partial, "CreateFleet").len(),
        1,
        "one request over both pools"
    );

    // With --min-count 1, the same is a success with a warning, and each
    // pool's outcome is in the JSON.
    let mut lenient = args.to_vec();
    lenient.extend(["--min-count", "1", "--output", "json"]);
    let run = launcher_with_ec2(&moto, &partial, &lenient);
    run.assert_exit(0);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(
        report["warnings"][0]
            .as_str()
            .unwrap()
            .starts_with("partial capacity: launched 1 of 2"),
        "{report}"
    );
    assert_eq!(
        report["pool_errors"],
        serde_json::json!([{"instance_type": "p5.48xlarge", "subnet": null, "lifecycle": "spot", "code": "InsufficientInstanceCapacity", "message": "We currently do not have sufficient p5.48xlarge capacity."}])
    );
    assert_eq!(report["instances"][0]["lifecycle"], "spot");
    let spot_options = &report["fleet_request"]["SpotOptions"];
    assert_eq!(spot_options["MinTargetCapacity"], 1, "{spot_options}");
    assert_eq!(spot_options["SingleAvailabilityZone"], true);

    let low = fleet(
        &[],
        &[(
            "m6i.large",
            "spot",
            "SpotMaxPriceTooLow",
            "Your Spot request price of 0.001 is lower than the minimum required Spot request fulfillment price of 0.05.",
        )],
    );
    let mut priced = args.to_vec();
    priced.extend(["--max-price", "0.001"]);
    let run = launcher_with_ec2(&moto, &low, &priced);
    run.assert_exit(6);
    run.assert_stderr_has("spot price too low")
        .assert_stderr_has("--max-price");

    let denied = canned::answering(
        moto.addr(),
        vec![(
            "CreateFleet",
            403,
            ec2_error(
                "UnauthorizedOperation",
                "You are not authorized to perform this operation.",
            ),
        )],
    )
    .unwrap();
    let run = launcher_with_ec2(&moto, &denied, &args);
    run.assert_exit(5);
    run.assert_stderr_has("AccessDenied: the caller may not call ec2:CreateFleet");
    assert!(
        launch_templates(&moto).await.is_empty(),
        "the template is deleted after a failed launch too"
    );
}

#[test]
fn launch_help_explains_itself() {
    let output = Command::new(LAUNCHER).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "--compute-environment",
        "--duration",
        "--market",
        "capacity-block",
        "--legacy-spot-block",
        "retired",
        "--wait",
        "--allocation-strategy",
        "--on-demand-allocation-strategy",
        "--on-demand-base",
        "--keep-template",
        "--launch-template",
        "blockwatch:compute-environment=<compute environment>",
        "10  --launch-template refused",
        "--call-timeout",
        "How long one AWS call may go unanswered",
        "Exit codes",
    ] {
        assert!(help.contains(needle), "help lacks {needle}:\n{help}");
    }
}

/// EC2 with one Capacity Block, `cr-0123abcd`, ending at `end_date`: moto
/// has no Capacity Blocks, so DescribeCapacityReservations is answered here.
/// moto's CreateFleet launches nothing for the target capacity type
/// `capacity-block`; EC2 launches into the block, instances that run like
/// On-Demand ones, so the fleet reaches moto as an On-Demand one. Every
/// other EC2 call passes through; `received()` keeps what the launcher sent.
fn capacity_block_ec2(moto: &MotoServer, end_date: time::OffsetDateTime) -> StubServer {
    let end_text = blockwatch_core::time_text::rfc3339(end_date);
    let upstream = moto.addr();
    StubServer::start(move |_, request| {
        if request.body.contains("Action=DescribeCapacityReservations") {
            return (200, canned::capacity_block("cr-0123abcd", &end_text));
        }
        let mut request = request.clone();
        if request.body.contains("Action=CreateFleet&") {
            request.body = request.body.replace(
                "DefaultTargetCapacityType=capacity-block",
                "DefaultTargetCapacityType=on-demand",
            );
        }
        blockwatch_testkit::stub::forward(upstream, &request)
    })
    .unwrap()
}

#[tokio::test]
async fn capacity_block_market_carries_the_reservation_and_its_end_minus_thirty_minutes() {
    let (moto, _) = moto_with_ce().await;
    let end_date = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap()
        + time::Duration::hours(3);
    let ec2 = capacity_block_ec2(&moto, end_date);
    let run = launcher_with_ec2(
        &moto,
        &ec2,
        &[
            &launch_args("research", "1", "6h")[..],
            &[
                "--market",
                "capacity-block",
                "--capacity-reservation-id",
                "cr-0123abcd",
                "--instance-type",
                "p5.48xlarge",
                "--output",
                "json",
            ],
        ]
        .concat(),
    );
    run.assert_exit(0);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let lease_end = blockwatch_core::time_text::rfc3339(end_date - time::Duration::minutes(30));
    assert_eq!(report["market"], "capacity-block");
    assert_eq!(
        report["instances"][0]["lease_end"].as_str(),
        Some(lease_end.as_str()),
        "EndDate - 30 min, shorter than --duration"
    );

    let all = instances(&moto).await;
    assert_eq!(all.len(), 1);
    assert_eq!(tag(&all[0], TAG_LEASE_END), Some(lease_end.as_str()));
    assert_eq!(tag(&all[0], TAG_LEASE_DURATION), None);
    // One fleet of the block's type; the template carries the market and
    // the reservation (EC2 Fleet takes them from nowhere else).
    let fleets = sent(&ec2, "CreateFleet");
    assert_eq!(fleets.len(), 1);
    assert!(sent(&ec2, "RunInstances").is_empty());
    for pair in [
        "TargetCapacitySpecification.DefaultTargetCapacityType=capacity-block",
        "TargetCapacitySpecification.TotalTargetCapacity=1",
        "Overrides.1.InstanceType=p5.48xlarge",
    ] {
        assert!(fleets[0].body.contains(pair), "{pair}: {}", fleets[0].body);
    }
    assert!(!fleets[0].body.contains("SpotTargetCapacity"));
    assert!(!fleets[0].body.contains("OnDemandTargetCapacity"));
    let template = &sent(&ec2, "CreateLaunchTemplate")[0].body;
    for pair in [
        "LaunchTemplateData.InstanceMarketOptions.MarketType=capacity-block",
        "LaunchTemplateData.CapacityReservationSpecification.CapacityReservationTarget.CapacityReservationId=cr-0123abcd",
    ] {
        assert!(template.contains(pair), "{pair}: {template}");
    }
    assert_eq!(report["instances"][0]["lifecycle"], "capacity-block");
}

#[tokio::test]
async fn network_profile_and_key_reach_the_instances() {
    let (moto, _) = moto_with_ce().await;
    let profile_arn = moto
        .create_instance_profile("research-blockwatch-instance")
        .await
        .unwrap();
    let (subnet, group) = moto.default_network().await.unwrap();
    aws_sdk_ec2::Client::new(moto.sdk())
        .create_key_pair()
        .key_name("ops")
        .send()
        .await
        .unwrap();
    let run = Launcher::new(&moto.endpoint())
        .launch(1, "2h")
        .args([
            "--subnet",
            &subnet,
            "--security-group",
            &group,
            "--instance-profile",
            "research-blockwatch-instance",
            "--key-name",
            "ops",
            "--name",
            "gpu-block",
            "--keep-template",
            "--output",
            "json",
        ])
        .run();
    run.assert_exit(0);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let all = instances(&moto).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].subnet_id(), Some(subnet.as_str()));
    let groups: Vec<_> = all[0]
        .security_groups()
        .iter()
        .filter_map(|g| g.group_id())
        .collect();
    assert_eq!(groups, [group.as_str()]);
    assert_eq!(
        all[0].iam_instance_profile().and_then(|p| p.arn()),
        Some(profile_arn.as_str())
    );
    let template = launch_template_data(&moto, &report["launch_template"])
        .await
        .unwrap();
    assert_eq!(
        template.iam_instance_profile().and_then(|p| p.name()),
        Some("research-blockwatch-instance"),
        "the template names the profile as given"
    );
    assert_eq!(all[0].key_name(), Some("ops"));
    assert_eq!(tag(&all[0], "Name"), Some("gpu-block"));
}

/// What `launch_two_and_register_them` saw: the launcher's output and the
/// instances it registered.
struct RegisteredLaunch {
    output: std::process::Output,
    registered: Vec<String>,
}

/// Runs `--count 2 --wait --wait-registered` against `ce` and plays the ECS
/// agents: registers each new instance (not in `skip`) once it exists.
async fn launch_two_and_register_them(
    moto: &MotoServer,
    cluster_arn: &str,
    ce: &str,
    wait_timeout: &str,
    ecs_endpoint: Option<&str>,
    skip: &[String],
) -> RegisteredLaunch {
    let mut launcher = Launcher::new(&moto.endpoint());
    if let Some(endpoint) = ecs_endpoint {
        launcher = launcher.env("AWS_ENDPOINT_URL_ECS", endpoint);
    }
    let child = launcher
        .args(launch_args(ce, "2", "1h"))
        .args([
            "--wait",
            "--wait-registered",
            "--wait-timeout",
            wait_timeout,
        ])
        .command()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut registered = Vec::new();
    while registered.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the launcher launched nothing"
        );
        for instance in instances(moto).await {
            let id = instance.instance_id().unwrap().to_owned();
            if !registered.contains(&id) && !skip.contains(&id) {
                moto.register_container_instance(cluster_arn, &id)
                    .await
                    .unwrap();
                registered.push(id);
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    RegisteredLaunch {
        output: child.wait_with_output().unwrap(),
        registered,
    }
}

#[tokio::test]
async fn wait_registered_waits_for_container_instances_and_times_out_without_them() {
    let (moto, _) = moto_with_ce().await;
    let cluster_arn = moto.create_unmanaged_ce("second", true).await.unwrap();
    let output = launch_two_and_register_them(&moto, &cluster_arn, "second", "60s", None, &[])
        .await
        .output;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("2/2 registered"), "{stderr}");

    // Nobody registers these: --wait gives up after its timeout.
    let run = launcher(
        &moto.endpoint(),
        &[
            "--compute-environment",
            "second",
            "--count",
            "1",
            "--duration",
            "1h",
            "--wait",
            "--wait-registered",
            "--wait-timeout",
            "3s",
        ],
    );
    run.assert_exit(8);
    run.assert_stderr_has("timed out after 3s");
    // The launched instance is still reported.
    run.assert_stdout_has("launched 1 of 1");
}

#[tokio::test]
async fn wait_redraws_its_progress_on_a_tty() {
    let (moto, _) = moto_with_ce().await;
    // util-linux `script` gives the launcher a pseudo-terminal.
    let command = format!(
        "{LAUNCHER} --compute-environment research --count 1 --duration 1h --wait --wait-timeout 30s"
    );
    let output = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(hermetic_env(&moto.endpoint()))
        .output()
        .expect("util-linux script (apt-get install bsdutils)");
    let screen = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{screen}");
    assert!(
        screen.contains("\rwaiting: 1/1 running\x1b[K"),
        "redrawn in place on a TTY: {screen:?}"
    );
}

#[tokio::test]
async fn imds_hop_limit_defaults_to_1_reaches_ec2_and_the_plan_and_is_validated() {
    let (moto, _) = moto_with_ce().await;
    let base = launch_args("research", "1", "1h");

    let mut two = base.to_vec();
    two.extend([
        "--imds-hop-limit",
        "2",
        "--output",
        "json",
        "--keep-template",
    ]);
    let run = launcher(&moto.endpoint(), &two);
    run.assert_exit(0);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["imds_hop_limit"], 2);
    assert!(
        report["warnings"].as_array().unwrap().iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("take the instance role's credentials")),
        "{report}"
    );
    let all = instances(&moto).await;
    assert_eq!(all.len(), 1);
    let template = launch_template_data(&moto, &report["launch_template"])
        .await
        .unwrap();
    assert_eq!(
        template
            .metadata_options()
            .and_then(|m| m.http_put_response_hop_limit()),
        Some(2),
        "--imds-hop-limit 2 reaches EC2"
    );

    // The plan shows the default.
    let mut dry = base.to_vec();
    dry.extend(["--dry-run", "--output", "json"]);
    let plan: serde_json::Value =
        serde_json::from_str(&launcher(&moto.endpoint(), &dry).stdout).unwrap();
    assert_eq!(plan["imds_hop_limit"], 1);
    assert_eq!(plan["warnings"], serde_json::json!([]), "no warning at 1");
    let mut dry_text = base.to_vec();
    dry_text.push("--dry-run");
    let text = launcher(&moto.endpoint(), &dry_text);
    text.assert_stdout_has("hop limit 1");
    assert!(
        text.stdout
            .contains("Batch jobs run in host network mode and can use the instance role"),
        "the plan does not claim hop limit 1 protects from jobs\n{}",
        text.stdout
    );

    for bad in ["0", "65"] {
        let mut refused = base.to_vec();
        refused.extend(["--imds-hop-limit", bad]);
        let before = instances(&moto).await.len();
        let run = launcher(&moto.endpoint(), &refused);
        assert_eq!(run.code, 2, "{bad}: {}", run.stderr);
        run.assert_stderr_has(format!(
            "--imds-hop-limit must be between 1 and 64, not {bad}"
        ));
        assert_eq!(instances(&moto).await.len(), before, "nothing launched");
    }
}

/// A proxy in front of moto that records every request (with its headers).
fn recording_proxy(moto: &MotoServer) -> StubServer {
    let upstream = moto.addr();
    StubServer::start(move |_, request| blockwatch_testkit::stub::forward(upstream, request))
        .unwrap()
}

/// The launcher with nothing but an AWS profile: no keys in the environment,
/// no instance metadata, `AWS_CONFIG_FILE` and `AWS_PROFILE` naming the profile.
fn launcher_with_profile(endpoint: &str, home: &std::path::Path, profile: &str) -> Launcher {
    Launcher::new(endpoint)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", home)
        .env("AWS_CONFIG_FILE", home.join("config"))
        .env("AWS_PROFILE", profile)
        .launch(1, "1h")
        .args(["--dry-run"])
}

fn assert_signed_by(proxy: &StubServer, access_key: &str) {
    let received = proxy.received();
    assert!(!received.is_empty(), "nothing reached AWS");
    for request in &received {
        let authorization = request.header("authorization").unwrap_or_default();
        assert!(
            authorization.contains(&format!("Credential={access_key}/")),
            "{} signed with {authorization:?}",
            request.path
        );
    }
}

#[tokio::test]
async fn credential_process_profile_is_honoured() {
    let (moto, _) = moto_with_ce().await;
    let proxy = recording_proxy(&moto);
    let home = tempfile::tempdir().unwrap();
    let script = home.path().join("credentials.sh");
    let ran = home.path().join("ran");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ntouch '{}'\necho '{{\"Version\": 1, \"AccessKeyId\": \"AKIDFROMPROCESS\", \"SecretAccessKey\": \"secret\", \"SessionToken\": \"token\"}}'\n",
            ran.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &script,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(
        home.path().join("config"),
        format!("[profile ops]\ncredential_process = {}\n", script.display()),
    )
    .unwrap();

    let run = launcher_with_profile(&proxy.url(""), home.path(), "ops").run();
    run.assert_exit(0);
    run.assert_stdout_has("nothing was launched");
    assert!(ran.exists(), "the credential_process ran");
    assert_signed_by(&proxy, "AKIDFROMPROCESS");
}

#[tokio::test]
async fn sso_profile_with_a_cached_token_is_honoured() {
    let (moto, _) = moto_with_ce().await;
    let proxy = recording_proxy(&moto);
    // The SSO portal: GetRoleCredentials for the cached token.
    let portal = StubServer::start(|_, request| {
        if request.path.starts_with("/federation/credentials") {
            (200, "{\"roleCredentials\":{\"accessKeyId\":\"ASIAFROMSSO\",\"secretAccessKey\":\"secret\",\"sessionToken\":\"token\",\"expiration\":4102444800000}}".into())
        } else {
            (404, "{}".into())
        }
    })
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    // Where the AWS CLI caches the token of `aws sso login`: the SHA-1 of the
    // start URL (this URL's hash is the one aws-config's own tests use).
    let start_url = "https://d-92671207e4.awsapps.com/start";
    let cache = home.path().join(".aws/sso/cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(
        cache.join("13f9d35043871d073ab260e020f0ffde092cb14b.json"),
        format!("{{\"accessToken\": \"cached-sso-token\", \"expiresAt\": \"2099-01-01T00:00:00Z\", \"region\": \"{REGION}\", \"startUrl\": \"{start_url}\"}}"),
    )
    .unwrap();
    std::fs::write(
        home.path().join("config"),
        format!(
            "[profile ops-sso]\nsso_start_url = {start_url}\nsso_region = {REGION}\nsso_account_id = 123456789012\nsso_role_name = BlockwatchLauncher\n"
        ),
    )
    .unwrap();

    let run = launcher_with_profile(&proxy.url(""), home.path(), "ops-sso")
        .env("AWS_ENDPOINT_URL_SSO", portal.url(""))
        .run();
    run.assert_exit(0);
    let asked = portal.received();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(
        asked[0].path.contains("role_name=BlockwatchLauncher")
            && asked[0].path.contains("account_id=123456789012"),
        "{}",
        asked[0].path
    );
    assert_eq!(
        asked[0].header("x-amz-sso_bearer_token"),
        Some("cached-sso-token")
    );
    assert_signed_by(&proxy, "ASIAFROMSSO");
}

#[tokio::test]
async fn wait_registered_finds_ours_past_the_first_page_of_a_busy_cluster() {
    let (moto, _) = moto_with_ce().await;
    let cluster_arn = moto.create_unmanaged_ce("busy", true).await.unwrap();
    // 110 container instances that are not ours, listed first (moto
    // registers only instances that exist).
    let launched = aws_sdk_ec2::Client::new(moto.sdk())
        .run_instances()
        .image_id("ami-0abcdef1234567890")
        .min_count(110)
        .max_count(110)
        .send()
        .await
        .unwrap();
    let not_ours: Vec<String> = launched
        .instances()
        .iter()
        .map(|i| i.instance_id().unwrap().to_owned())
        .collect();
    let mut others = Vec::new();
    for id in &not_ours {
        others.push(
            moto.register_container_instance(&cluster_arn, id)
                .await
                .unwrap(),
        );
    }
    let ecs = canned::paginating_ecs(moto.addr(), 100, others).unwrap();
    let ecs_endpoint = ecs.url("");
    let RegisteredLaunch {
        output,
        registered: ours,
    } = launch_two_and_register_them(
        &moto,
        &cluster_arn,
        "busy",
        "40s",
        Some(&ecs_endpoint),
        &not_ours,
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("2/2 registered"), "{stderr}");
    // It asked ECS for our instances by id, not for the whole cluster.
    let filtered = ecs.received().into_iter().any(|r| {
        r.header("x-amz-target")
            .is_some_and(|t| t.ends_with(".ListContainerInstances"))
            && ours.iter().all(|id| r.body.contains(&format!("'{id}'")))
            && r.body.contains("ec2InstanceId in [")
    });
    assert!(filtered, "{:?}", ecs.received());
}

/// EC2 in front of moto that answers the first `not_found` DescribeInstances
/// calls with InvalidInstanceID.NotFound, as EC2 does right after RunInstances.
fn eventually_consistent_ec2(moto: &MotoServer, not_found: usize) -> StubServer {
    let upstream = moto.addr();
    let described = std::sync::atomic::AtomicUsize::new(0);
    StubServer::start(move |_, request| {
        if request.body.contains("Action=DescribeInstances")
            && described.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < not_found
        {
            return (
                400,
                ec2_error(
                    "InvalidInstanceID.NotFound",
                    "The instance ID 'i-0123456789abcdef0' does not exist",
                ),
            );
        }
        blockwatch_testkit::stub::forward(upstream, request)
    })
    .unwrap()
}

/// Launches one instance into `research` through `ec2` and waits up to 60 s
/// for it to run; `extra` arguments are added.
fn launch_one_and_wait(moto: &MotoServer, ec2: &StubServer, extra: &[&str]) -> Run {
    let mut args = launch_args("research", "1", "1h");
    args.extend(["--wait", "--wait-timeout", "60s"]);
    args.extend_from_slice(extra);
    launcher_with_ec2(moto, ec2, &args)
}

#[tokio::test]
async fn instances_ec2_does_not_know_yet_are_waited_for_not_refused() {
    let (moto, _) = moto_with_ce().await;
    let ec2 = eventually_consistent_ec2(&moto, 2);
    let run = launch_one_and_wait(&moto, &ec2, &[]);
    run.assert_exit(0);
    run.assert_stderr_has("waiting: 1/1 running");
    assert_eq!(
        sent(&ec2, "DescribeInstances").len(),
        4,
        "two NotFound answers, then the instance (for its launch time), then the wait's"
    );
    run.assert_stdout_has("lease ends 20");
}

#[tokio::test]
async fn instances_ec2_never_knows_are_refused_after_a_bounded_while() {
    let (moto, _) = moto_with_ce().await;
    let ec2 = eventually_consistent_ec2(&moto, usize::MAX);
    let started = std::time::Instant::now();
    let run = launch_one_and_wait(&moto, &ec2, &["--not-found-grace", "3s"]);
    run.assert_exit(7);
    run.assert_stderr_has("InvalidInstanceID.NotFound")
        .assert_stderr_has("3s");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(40),
        "gave up after the grace, not the wait timeout"
    );
    // The launched instance is still reported.
    run.assert_stdout_has("launched 1 of 1");
    let help = Command::new(LAUNCHER).arg("--help").output().unwrap();
    assert!(
        !String::from_utf8_lossy(&help.stdout).contains("--not-found-grace"),
        "a test knob, not an operator's flag"
    );
}

fn launched_ids(run: &Run) -> Vec<String> {
    run.assert_exit(0);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["shutdown_behavior"], "terminate", "{report}");
    report["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn every_market_launches_instances_that_terminate_when_they_power_off() {
    let (moto, _) = moto_with_ce().await;
    // Not kept: what the template carried stays with the instance.
    let base = [launch_args("research", "1", "2h"), vec!["--output", "json"]].concat();
    let mut launched = Vec::new();
    for market in [
        &["--market", "spot"][..],
        &["--market", "on-demand"],
        &["--market", "spot", "--legacy-spot-block"],
    ] {
        let mut args = base.to_vec();
        args.extend_from_slice(market);
        let run = launcher(&moto.endpoint(), &args);
        let ids = launched_ids(&run);
        launched.extend(ids.into_iter().map(|id| (market.join(" "), id)));
    }
    let block_end = time::OffsetDateTime::now_utc() + time::Duration::hours(3);
    let ec2 = capacity_block_ec2(&moto, block_end);
    let mut args = base.to_vec();
    args.extend([
        "--market",
        "capacity-block",
        "--capacity-reservation-id",
        "cr-0123abcd",
    ]);
    let run = launcher_with_ec2(&moto, &ec2, &args);
    let ids = launched_ids(&run);
    launched.extend(ids.into_iter().map(|id| ("capacity-block".to_owned(), id)));

    assert_eq!(launched.len(), 4, "{launched:?}");
    let all = instances(&moto).await;
    for (market, id) in &launched {
        assert!(all.iter().any(|i| i.instance_id() == Some(id)), "{id}");
        assert_eq!(
            shutdown_behavior(&moto, id).await.as_deref(),
            Some("terminate"),
            "{market}: a power-off must end the instance, not stop it"
        );
    }
    let calls = |action: &str| {
        moto.requests()
            .into_iter()
            .filter(|r| r.body.contains(&format!("Action={action}&")))
            .count()
    };
    assert_eq!(
        (calls("CreateFleet"), calls("RunInstances")),
        (3, 1),
        "spot, on-demand and the Capacity Block (through its stand-in) by EC2 Fleet; legacy spot blocks by RunInstances"
    );

    // The plan says so before anything is launched.
    let mut dry = base.to_vec();
    dry.push("--dry-run");
    let plan: serde_json::Value =
        serde_json::from_str(&launcher(&moto.endpoint(), &dry).stdout).unwrap();
    assert_eq!(plan["shutdown_behavior"], "terminate");
    let mut dry_text = base[..6].to_vec();
    dry_text.push("--dry-run");
    let text = launcher(&moto.endpoint(), &dry_text);
    text.assert_stdout_has("on shutdown: terminate");
    let requests = moto.requests();
    let dry_run_request = requests
        .iter()
        .rfind(|r| r.body.contains("Action=CreateFleet") && r.body.contains("DryRun=true"))
        .unwrap();
    assert!(
        dry_run_request
            .body
            .contains("LaunchTemplateSpecification.LaunchTemplateId="),
        "the DryRun checks the request that would be sent, from the template: {}",
        dry_run_request.body
    );
    let template_created = requests
        .iter()
        .rfind(|r| r.body.contains("Action=CreateLaunchTemplate"))
        .unwrap();
    assert!(
        template_created
            .body
            .contains("LaunchTemplateData.InstanceInitiatedShutdownBehavior=terminate"),
        "{}",
        template_created.body
    );
}

#[tokio::test]
async fn log_level_debug_shows_each_aws_call_and_error_keeps_only_the_error() {
    let (moto, _) = moto_with_ce().await;
    let launched_and_waited = |level: &[&str]| {
        Launcher::new(&moto.endpoint())
            .launch(1, "1h")
            .args(["--wait", "--wait-timeout", "30s"])
            .args(level)
            .run()
    };
    let default = launched_and_waited(&[]);
    default.assert_exit(0);
    assert_eq!(
        default.stderr, "waiting: 1/1 running\n",
        "info: progress only"
    );

    let debug = launched_and_waited(&["--log-level", "debug"]);
    debug.assert_exit(0);
    for call in [
        "batch:DescribeComputeEnvironments",
        "ssm:GetParameter",
        "ec2:DescribeLaunchTemplates",
        "ec2:CreateLaunchTemplate",
        "ec2:CreateFleet",
        "ec2:DescribeInstances",
        "ec2:DeleteLaunchTemplate",
    ] {
        let line = format!("blockwatch-launch: debug: calling {call}\n");
        assert!(debug.stderr.contains(&line), "{call}: {}", debug.stderr);
    }
    assert!(debug.stderr.ends_with("waiting: 1/1 running\n"));

    let quiet = launched_and_waited(&["--log-level", "error"]);
    quiet.assert_exit(0);
    assert_eq!(quiet.stderr, "", "error: no progress");

    // The error that ends the command is shown at every level, and the flag
    // works after a subcommand too.
    let refused = Launcher::new(&moto.endpoint())
        .args([
            "list",
            "--compute-environment",
            "nope",
            "--log-level",
            "error",
        ])
        .run();
    refused.assert_exit(3);
    assert!(
        refused.stderr.starts_with("blockwatch-launch: error: ") && refused.stderr.contains("nope"),
        "{}",
        refused.stderr
    );

    let bad = Launcher::new(&moto.endpoint())
        .launch(1, "1h")
        .args(["--log-level", "loud"])
        .run();
    bad.assert_exit(2);
    bad.assert_stderr_has("--log-level");
}

/// The launch templates moto holds: (id, name).
async fn launch_templates(moto: &MotoServer) -> Vec<(String, String)> {
    aws_sdk_ec2::Client::new(moto.sdk())
        .describe_launch_templates()
        .send()
        .await
        .unwrap()
        .launch_templates()
        .iter()
        .map(|t| {
            (
                t.launch_template_id().unwrap().to_owned(),
                t.launch_template_name().unwrap().to_owned(),
            )
        })
        .collect()
}

fn template_of(run: &Run) -> serde_json::Value {
    run.assert_exit(0);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    report["launch_template"].clone()
}

#[tokio::test]
async fn a_created_template_is_deleted_unless_kept_and_a_kept_one_is_reused_by_content() {
    let (moto, _) = moto_with_ce().await;
    let json = ["--output", "json"];

    let once = template_of(
        &Launcher::new(&moto.endpoint())
            .launch(1, "2h")
            .args(json)
            .run(),
    );
    assert_eq!(
        (once["origin"].as_str(), once["kept"].as_bool()),
        (Some("created"), Some(false))
    );
    assert!(
        launch_templates(&moto).await.is_empty(),
        "deleted once the launch is over"
    );

    let kept = template_of(
        &Launcher::new(&moto.endpoint())
            .launch(1, "2h")
            .args(json)
            .args(["--keep-template"])
            .run(),
    );
    assert_eq!(
        (kept["origin"].as_str(), kept["kept"].as_bool()),
        (Some("created"), Some(true))
    );
    let held = launch_templates(&moto).await;
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].0, kept["id"].as_str().unwrap());

    // The same content, without --keep-template: reused, and not deleted.
    let again = Launcher::new(&moto.endpoint())
        .launch(1, "2h")
        .args(json)
        .run();
    let reused = template_of(&again);
    assert_eq!(reused["origin"], "reused");
    assert_eq!(reused["id"], kept["id"]);
    assert_eq!(launch_templates(&moto).await, held);
    let report: serde_json::Value = serde_json::from_str(&again.stdout).unwrap();
    let id = report["instances"][0]["instance_id"].as_str().unwrap();
    let instance = instances(&moto)
        .await
        .into_iter()
        .find(|i| i.instance_id() == Some(id))
        .unwrap();
    assert_eq!(tag(&instance, TAG_COMPUTE_ENVIRONMENT), Some("research"));
    assert_eq!(
        report["fleet_request"]["LaunchTemplateConfigs"][0]["LaunchTemplateSpecification"]
            ["LaunchTemplateId"],
        kept["id"]
    );
    // Instance and volumes carry blockwatch's tags.
    let data = launch_template_data(&moto, &reused).await.unwrap();
    for resource in ["instance", "volume"] {
        let spec = data
            .tag_specifications()
            .iter()
            .find(|s| s.resource_type().map(|r| r.as_str()) == Some(resource))
            .unwrap_or_else(|| panic!("no {resource} tags: {data:?}"));
        for key in [
            TAG_COMPUTE_ENVIRONMENT,
            TAG_CLUSTER,
            TAG_LEASE_DURATION,
            "Name",
        ] {
            assert!(
                spec.tags().iter().any(|t| t.key() == Some(key)),
                "{resource} lacks {key}: {spec:?}"
            );
        }
    }

    // Other content (another lease): another template, created and deleted.
    let other = template_of(
        &Launcher::new(&moto.endpoint())
            .launch(1, "3h")
            .args(json)
            .run(),
    );
    assert_eq!(other["origin"], "created");
    assert_ne!(other["id"], kept["id"]);
    assert_eq!(launch_templates(&moto).await, held);
    let created = moto
        .requests()
        .iter()
        .filter(|r| r.body.contains("Action=CreateLaunchTemplate"))
        .count();
    assert_eq!(created, 3, "the reuse created none");

    let text = Launcher::new(&moto.endpoint())
        .launch(1, "2h")
        .args(["--dry-run"])
        .run();
    text.assert_stdout_has(format!(
        "launch template: {} ({}, version 1), reused",
        kept["name"].as_str().unwrap(),
        kept["id"].as_str().unwrap()
    ));
}

#[tokio::test]
async fn one_fleet_request_covers_every_type_and_subnet_with_the_on_demand_base() {
    let (moto, _) = moto_with_ce().await;
    let (subnet_a, _) = moto.default_network().await.unwrap();
    let subnet_b = aws_sdk_ec2::Client::new(moto.sdk())
        .describe_subnets()
        .send()
        .await
        .unwrap()
        .subnets()
        .iter()
        .filter_map(|s| s.subnet_id())
        .find(|s| *s != subnet_a)
        .unwrap()
        .to_owned();
    let two_types = || {
        Launcher::new(&moto.endpoint()).launch(3, "2h").args([
            "--instance-type",
            "m6i.large",
            "--instance-type",
            "m5.large",
        ])
    };
    let before = moto.requests().len();
    let run = two_types()
        .args([
            "--subnet",
            &subnet_a,
            "--subnet",
            &subnet_b,
            "--on-demand-base",
            "1",
            "--output",
            "json",
        ])
        .run();
    run.assert_exit(0);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();

    let fleets: Vec<_> = moto
        .requests()
        .into_iter()
        .skip(before)
        .filter(|r| r.body.contains("Action=CreateFleet&"))
        .collect();
    assert_eq!(fleets.len(), 1, "one request for every pool");
    let body = &fleets[0].body;
    for pair in [
        "Type=instant",
        "TargetCapacitySpecification.TotalTargetCapacity=3",
        "TargetCapacitySpecification.OnDemandTargetCapacity=1",
        "TargetCapacitySpecification.SpotTargetCapacity=2",
        "TargetCapacitySpecification.DefaultTargetCapacityType=spot",
        "SpotOptions.AllocationStrategy=price-capacity-optimized",
        "SpotOptions.InstanceInterruptionBehavior=terminate",
        "OnDemandOptions.AllocationStrategy=lowest-price",
        "LaunchTemplateConfigs.1.Overrides.4.InstanceType=m5.large",
    ] {
        assert!(body.contains(pair), "{pair}: {body}");
    }
    assert!(body.contains(&format!(
        "LaunchTemplateConfigs.1.Overrides.4.SubnetId={subnet_b}"
    )));
    assert!(
        !body.contains("MinTargetCapacity"),
        "no minimum without --min-count: EC2 would tie the fleet to one AZ"
    );
    assert!(!body.contains("Overrides.5."), "{body}");

    // 1 On-Demand and 2 Spot, every one tagged from the launch template.
    let all = instances(&moto).await;
    assert_eq!(all.len(), 3);
    let spot = all
        .iter()
        .filter(|i| i.instance_lifecycle().map(|l| l.as_str()) == Some("spot"))
        .count();
    assert_eq!(spot, 2);
    for instance in &all {
        assert_eq!(tag(instance, TAG_COMPUTE_ENVIRONMENT), Some("research"));
        assert_eq!(tag(instance, TAG_LEASE_DURATION), Some("2h"));
        assert!(tag(instance, TAG_CLUSTER).is_some());
        assert_eq!(tag(instance, "Name"), Some("blockwatch-research"));
    }
    let mut lifecycles: Vec<&str> = report["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["lifecycle"].as_str().unwrap())
        .collect();
    lifecycles.sort_unstable();
    assert_eq!(lifecycles, ["on-demand", "spot", "spot"]);
    assert!(report["instances"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["lease_end"].is_string()));

    // The dry run prints the whole request.
    let dry = two_types()
        .args([
            "--market",
            "on-demand",
            "--on-demand-allocation-strategy",
            "prioritized",
            "--dry-run",
        ])
        .run();
    dry.assert_exit(0);
    dry.assert_stdout_has("fleet request (ec2:CreateFleet):")
        .assert_stdout_has("\"AllocationStrategy\": \"prioritized\"")
        .assert_stdout_has("\"DefaultTargetCapacityType\": \"on-demand\"")
        .assert_stdout_has("\"Priority\": 1");
    assert_eq!(
        instances(&moto).await.len(),
        3,
        "the dry run launched nothing"
    );

    // The strategies, priorities and minimum as sent, not only as printed.
    let before = moto.requests().len();
    two_types()
        .args([
            "--on-demand-base",
            "1",
            "--allocation-strategy",
            "capacity-optimized-prioritized",
            "--on-demand-allocation-strategy",
            "prioritized",
            "--min-count",
            "3",
        ])
        .run()
        .assert_exit(0);
    let sent: Vec<_> = moto
        .requests()
        .into_iter()
        .skip(before)
        .filter(|r| r.body.contains("Action=CreateFleet&"))
        .collect();
    assert_eq!(sent.len(), 1);
    let body = &sent[0].body;
    for pair in [
        "SpotOptions.AllocationStrategy=capacity-optimized-prioritized",
        "OnDemandOptions.AllocationStrategy=prioritized",
        "SpotOptions.MinTargetCapacity=2",
        "SpotOptions.SingleAvailabilityZone=true",
        "OnDemandOptions.MinTargetCapacity=1",
        "OnDemandOptions.SingleAvailabilityZone=true",
        "LaunchTemplateConfigs.1.Overrides.1.InstanceType=m6i.large",
        "LaunchTemplateConfigs.1.Overrides.1.Priority=0",
        "LaunchTemplateConfigs.1.Overrides.2.InstanceType=m5.large",
        "LaunchTemplateConfigs.1.Overrides.2.Priority=1",
    ] {
        assert!(
            body.split('&')
                .any(|p| p == pair || p.strip_prefix(pair) == Some(".0")),
            "{pair}: {body}"
        );
    }
}

/// Far longer than the few seconds a 1 s `--call-timeout` allows: the
/// launcher is killed, and its test fails, only if it hangs.
const HANG_GUARD: std::time::Duration = std::time::Duration::from_secs(120);

#[tokio::test]
async fn a_call_that_is_never_answered_fails_with_75_instead_of_hanging() {
    let (moto, _) = moto_with_ce().await;

    // The first call of every subcommand.
    let proxy = AwsProxy::start(moto.addr()).unwrap();
    proxy.inject("DescribeComputeEnvironments", Fault::Hang, None);
    let run = Launcher::new(&proxy.endpoint())
        .launch(1, "2h")
        .args(["--call-timeout", "1s"])
        .run_within(HANG_GUARD);
    run.assert_exit(75)
        .assert_stderr_has("batch:DescribeComputeEnvironments")
        .assert_stderr_has("no answer in time");
    let tries = proxy.seen("DescribeComputeEnvironments");
    assert!(
        (2..=3).contains(&tries),
        "tried again, each try cut at --call-timeout, at most 3 in all: {tries}"
    );
    let listed = Launcher::new(&proxy.endpoint())
        .args([
            "list",
            "--compute-environment",
            "research",
            "--call-timeout",
            "1s",
        ])
        .run_within(HANG_GUARD);
    listed
        .assert_exit(75)
        .assert_stderr_has("no answer in time");

    // CreateFleet itself: EC2 may have launched, so the operator is told
    // where to look; the template the launch created is deleted all the same.
    let proxy = AwsProxy::start(moto.addr()).unwrap();
    proxy.inject("CreateFleet", Fault::Hang, None);
    let run = Launcher::new(&proxy.endpoint())
        .launch(1, "2h")
        .args(["--call-timeout", "1s"])
        .run_within(HANG_GUARD);
    run.assert_exit(75)
        .assert_stderr_has("ec2:CreateFleet failed without EC2's answer")
        .assert_stderr_has("blockwatch-launch list --compute-environment research");
    assert!(
        proxy.seen("DeleteLaunchTemplate") >= 1,
        "the template was cleaned up"
    );
    assert_eq!(launch_templates(&moto).await, Vec::new());
    assert!(instances(&moto).await.is_empty());
}

/// Waits, within [`HANG_GUARD`], until `done` holds.
fn eventually(what: &str, done: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < HANG_GUARD, "never: {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[tokio::test]
async fn an_interrupt_finishes_the_launch_under_way_and_a_second_stops_at_once() {
    let (moto, _) = moto_with_ce().await;
    // CreateFleet unanswered: the interrupt comes while the launch waits on it.
    let proxy = AwsProxy::start(moto.addr()).unwrap();
    proxy.inject("CreateFleet", Fault::Hang, None);
    let hanging_launch = || {
        Launcher::new(&proxy.endpoint())
            .launch(1, "2h")
            .args(["--call-timeout", "2s"])
            .spawn()
            .unwrap()
    };

    let running = hanging_launch();
    eventually("CreateFleet sent", || proxy.seen("CreateFleet") >= 1);
    running.interrupt();
    let run = running.finish_within(HANG_GUARD);
    run.assert_exit(75)
        .assert_stderr_has("interrupted: stopping after the AWS call under way")
        .assert_stderr_has("ec2:CreateFleet failed without EC2's answer");
    assert_eq!(
        launch_templates(&moto).await,
        Vec::new(),
        "the template it created is deleted: {}",
        run.stderr
    );

    // Interrupted twice: it stops at once and says what may be left.
    let sent = proxy.seen("CreateFleet");
    let running = hanging_launch();
    eventually("CreateFleet sent again", || {
        proxy.seen("CreateFleet") > sent
    });
    running.interrupt();
    std::thread::sleep(std::time::Duration::from_millis(500));
    running.interrupt();
    let run = running.finish_within(HANG_GUARD);
    run.assert_exit(130)
        .assert_stderr_has("stopped at once by a second interrupt")
        .assert_stderr_has("blockwatch-launch list --compute-environment research");
}

#[tokio::test]
async fn an_interrupt_gives_up_the_wait_and_prints_what_launched() {
    let (moto, _) = moto_with_ce().await;
    // No ECS agent registers: --wait-registered would wait its whole timeout.
    let running = Launcher::new(&moto.endpoint())
        .launch(1, "2h")
        .args([
            "--wait",
            "--wait-registered",
            "--wait-timeout",
            "10m",
            "--output",
            "json",
        ])
        .spawn()
        .unwrap();
    eventually("the instance launched", || {
        moto.requests()
            .iter()
            .any(|r| r.body.contains("Action=DescribeInstances&"))
    });
    running.interrupt();
    let run = running.finish_within(HANG_GUARD);
    run.assert_exit(130).assert_stderr_has("interrupted");
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let launched = instances(&moto).await;
    assert_eq!(launched.len(), 1);
    assert_eq!(
        report["instances"][0]["instance_id"].as_str(),
        launched[0].instance_id()
    );
    assert_eq!(launch_templates(&moto).await, Vec::new());
}

#[tokio::test]
async fn an_interrupt_before_the_launch_request_launches_nothing_and_leaves_nothing() {
    let (moto, _) = moto_with_ce().await;
    // A slow answer to the template lookup, before anything is written: the
    // interrupt comes while it is under way.
    let proxy = AwsProxy::start(moto.addr()).unwrap();
    proxy.inject(
        "DescribeLaunchTemplates",
        Fault::Delay(std::time::Duration::from_secs(2)),
        None,
    );
    let running = Launcher::new(&proxy.endpoint())
        .launch(1, "2h")
        .spawn()
        .unwrap();
    eventually("the template lookup sent", || {
        proxy.seen("DescribeLaunchTemplates") >= 1
    });
    running.interrupt();
    let run = running.finish_within(HANG_GUARD);
    run.assert_exit(130)
        .assert_stderr_has("interrupted before anything was launched; nothing is left behind");
    assert_eq!(proxy.seen("CreateFleet"), 0, "{}", run.stderr);
    assert!(instances(&moto).await.is_empty());
    assert_eq!(launch_templates(&moto).await, Vec::new());
}
