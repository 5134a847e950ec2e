//! `blockwatch join` end to end: the real binary against the IMDS simulator
//! and moto's server.
//!
//! Over 400 lines: many independent scenarios of one command.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use blockwatch_core::tags::TAG_COMPUTE_ENVIRONMENT;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use blockwatch_testkit::instance::{address_for_later, agent_binary, tags, Instance, Run};

use blockwatch_core::tags::TAG_CLUSTER as CLUSTER;
use blockwatch_core::tags::TAG_COMPUTE_ENVIRONMENT as CE;

fn cluster_name(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap()
}

fn text(bytes: Option<Vec<u8>>) -> String {
    String::from_utf8(bytes.expect("ecs.config exists")).unwrap()
}

#[tokio::test]
async fn tag_path_writes_the_compute_environments_cluster() {
    let instance = Instance::with_moto().await;
    let name = instance.launch_in_compute_environment("research").await;

    let run = instance.join(&[]);

    assert_eq!(run.code, 0, "{}", run.stderr);
    let name = name.as_str();
    assert!(
        name.starts_with("OnDemand_Batch_"),
        "moto names the cluster itself: {name}"
    );
    assert_eq!(
        text(instance.read_ecs_config()),
        format!("ECS_CLUSTER={name}\n")
    );
    let mode = std::fs::metadata(instance.ecs_config())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o644);
    assert!(
        run.stderr
            .contains("instance tag blockwatch:compute-environment (IMDS)"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("discovered via batch:DescribeComputeEnvironments"),
        "{}",
        run.stderr
    );
    // One IMDS session serves the identity document, the tags and the
    // instance-profile credentials.
    assert_eq!(instance.token_puts(), 1, "{:?}", instance.imds.exchanges());
    let record = std::fs::read_to_string(instance.state_dir().join("join.json")).unwrap();
    assert!(
        record.contains(name) && record.contains("research"),
        "{record}"
    );
}

#[tokio::test]
async fn config_file_path_works_with_tags_disabled_in_imds() {
    let instance = Instance::with_moto().await;
    let cluster_arn = instance
        .moto()
        .create_unmanaged_ce("from-file", true)
        .await
        .unwrap();
    // The tags point elsewhere and IMDS does not expose them: the file decides.
    instance.launch(&[(CE, "elsewhere")], false).await;
    instance.write_config("compute_environment = \"from-file\"\ndrain_lead = \"15m\"\n");

    let run = instance.join(&[]);

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        text(instance.read_ecs_config()),
        format!("ECS_CLUSTER={}\n", cluster_name(&cluster_arn))
    );
    run.assert_stderr_has(format!(
        "compute_environment=from-file (config file {}",
        instance.config_file().display()
    ));
    run.assert_stderr_has("drain_lead=15m (config file");
    let paths: Vec<_> = instance
        .imds
        .exchanges()
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert!(
        !paths.iter().any(|p| p.contains("/tags/")),
        "the file decides, so tags are not read: {paths:?}"
    );
}

#[tokio::test]
async fn tags_disabled_in_imds_fall_back_to_describe_tags() {
    let instance = Instance::with_moto().await;
    let cluster_arn = instance
        .moto()
        .create_unmanaged_ce("via-api", true)
        .await
        .unwrap();
    instance
        .launch(&[(CE, "via-api"), ("Name", "worker")], false)
        .await;

    let run = instance.join(&[]);

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        text(instance.read_ecs_config()),
        format!("ECS_CLUSTER={}\n", cluster_name(&cluster_arn))
    );
    assert!(
        run.stderr
            .contains("instance tag blockwatch:compute-environment (ec2:DescribeTags)"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn explicit_cluster_needs_no_aws_call() {
    // AWS is a closed port: any Batch or EC2 call would fail the join.
    let instance = Instance::without_aws();
    instance
        .imds
        .update(|s| s.tags = tags(&[(CLUSTER, "gpu-pool"), (CE, "ignored")]));

    let run = instance.join(&[]);

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(text(instance.read_ecs_config()), "ECS_CLUSTER=gpu-pool\n");
    assert!(
        run.stderr
            .contains("cluster=gpu-pool (instance tag blockwatch:cluster (IMDS))"),
        "{}",
        run.stderr
    );
    let credential_reads = instance
        .imds
        .exchanges()
        .iter()
        .filter(|e| e.path.contains("security-credentials"))
        .count();
    assert_eq!(
        credential_reads, 0,
        "no AWS client, so no credentials are fetched"
    );
}

#[tokio::test]
async fn explicit_cluster_arn_in_the_config_file_is_written_as_its_name() {
    let instance = Instance::without_aws();
    instance.write_config("cluster = \"arn:aws:ecs:eu-west-1:123456789012:cluster/batch-a\"\n");

    let run = instance.join(&[]);

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(text(instance.read_ecs_config()), "ECS_CLUSTER=batch-a\n");
}

#[tokio::test]
async fn unknown_compute_environment_leaves_the_file_untouched() {
    let instance = Instance::with_moto().await;
    instance
        .moto()
        .create_unmanaged_ce("real-one", true)
        .await
        .unwrap();
    instance.launch(&[(CE, "no-such-ce")], true).await;
    let before = b"ECS_CLUSTER=previous\r\nECS_LOGLEVEL=debug\r\n".to_vec();
    instance.write_ecs_config(&before);

    let run = instance.join(&[]);

    assert_eq!(run.code, 65, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("compute environment \"no-such-ce\" not found"),
        "{}",
        run.stderr
    );
    assert_eq!(instance.read_ecs_config(), Some(before));
}

#[tokio::test]
async fn managed_compute_environment_is_refused() {
    let instance = Instance::with_moto().await;
    instance
        .moto()
        .create_managed_ce("managed-ce")
        .await
        .unwrap();
    instance.launch(&[(CE, "managed-ce")], true).await;

    let run = instance.join(&[]);

    assert_eq!(run.code, 65, "{}", run.stderr);
    run.assert_stderr_has("\"managed-ce\" is MANAGED");
    assert_eq!(instance.read_ecs_config(), None, "nothing written");
}

#[tokio::test]
async fn disabled_compute_environment_joins_with_a_warning() {
    let instance = Instance::with_moto().await;
    instance
        .moto()
        .create_unmanaged_ce("paused", false)
        .await
        .unwrap();
    instance.launch(&[(CE, "paused")], true).await;

    let run = instance.join(&[]);

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("warning: compute environment \"paused\" is DISABLED"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn no_source_at_all_fails_and_writes_nothing() {
    let instance = Instance::without_aws();
    instance
        .imds
        .update(|s| s.tags = tags(&[("Name", "worker")]));
    instance.write_ecs_config(b"ECS_LOGLEVEL=info\n");

    let run = instance.join(&[]);

    assert_eq!(run.code, 78, "{}", run.stderr);
    run.assert_stderr_has("no cluster source");
    assert_eq!(
        instance.read_ecs_config(),
        Some(b"ECS_LOGLEVEL=info\n".to_vec())
    );
    assert!(!instance.state_dir().join("join.json").exists());
}

#[tokio::test]
async fn a_newline_in_a_tag_cannot_smuggle_a_key_into_ecs_config() {
    let instance = Instance::without_aws();
    let evil = "good\nECS_ENABLE_TASK_IAM_ROLE=false";
    instance.imds.update(|s| s.tags = tags(&[(CLUSTER, evil)]));
    instance.write_ecs_config(b"ECS_ENABLE_TASK_IAM_ROLE=true\n");

    let run = instance.join(&[]);

    assert_eq!(run.code, 78, "{}", run.stderr);
    assert!(
        run.stderr.contains("good\\nECS_ENABLE_TASK_IAM_ROLE=false"),
        "value shown escaped: {}",
        run.stderr
    );
    run.assert_stderr_has("from instance tag blockwatch:cluster");
    assert_eq!(
        instance.read_ecs_config(),
        Some(b"ECS_ENABLE_TASK_IAM_ROLE=true\n".to_vec())
    );
}

#[tokio::test]
async fn a_newline_in_the_compute_environment_tag_is_only_ever_a_lookup_key() {
    let instance = Instance::with_moto().await;
    instance
        .launch(&[(CE, "ce\nECS_ENABLE_TASK_IAM_ROLE=false")], true)
        .await;

    let run = instance.join(&[]);

    assert_eq!(run.code, 65, "{}", run.stderr);
    assert_eq!(instance.read_ecs_config(), None);
}

#[tokio::test]
async fn existing_file_with_crlf_quotes_duplicates_and_other_keys() {
    let instance = Instance::without_aws();
    instance
        .imds
        .update(|s| s.tags = tags(&[(CLUSTER, "batch-b")]));
    instance.write_ecs_config(
        b"ECS_ENABLE_TASK_IAM_ROLE=true\r\nECS_CLUSTER=\"batch-a\"\r\n# ops note\r\n\r\nECS_CLUSTER=default\r\nECS_RESERVED_MEMORY=256\r\n",
    );

    let run = instance.join(&[]);

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        text(instance.read_ecs_config()),
        "ECS_ENABLE_TASK_IAM_ROLE=true\nECS_CLUSTER=batch-b\n# ops note\n\nECS_RESERVED_MEMORY=256\n"
    );
    run.assert_stderr_has("(was default)");
}

#[tokio::test]
async fn second_run_is_idempotent_and_does_not_rewrite() {
    let instance = Instance::without_aws();
    instance
        .imds
        .update(|s| s.tags = tags(&[(CLUSTER, "batch-c")]));
    assert_eq!(instance.join(&[]).code, 0);
    let first = std::fs::metadata(instance.ecs_config()).unwrap();

    let run = instance.join(&[]);

    assert_eq!(run.code, 0, "{}", run.stderr);
    let second = std::fs::metadata(instance.ecs_config()).unwrap();
    assert_eq!(
        (first.ino(), first.mtime_nsec()),
        (second.ino(), second.mtime_nsec()),
        "file not replaced"
    );
    assert!(
        run.stderr
            .contains("already has ECS_CLUSTER=batch-c; left untouched"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn missing_file_and_directory_are_created() {
    let instance = Instance::without_aws();
    instance
        .imds
        .update(|s| s.tags = tags(&[(CLUSTER, "batch-d")]));
    assert!(!instance.ecs_config().parent().unwrap().exists());

    let run = instance.join(&[]);

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(text(instance.read_ecs_config()), "ECS_CLUSTER=batch-d\n");
    let meta = std::fs::metadata(instance.ecs_config()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    run.assert_stderr_has("created");
}

#[tokio::test]
async fn dry_run_shows_the_file_and_writes_nothing() {
    let instance = Instance::without_aws();
    instance
        .imds
        .update(|s| s.tags = tags(&[(CLUSTER, "batch-e")]));
    instance.write_ecs_config(b"ECS_LOGLEVEL=info\n");

    let run = instance.join(&["--dry-run"]);

    assert_eq!(run.code, 0, "{}", run.stderr);
    run.assert_stdout_has("would be rewritten to");
    assert!(
        run.stdout
            .ends_with("ECS_LOGLEVEL=info\nECS_CLUSTER=batch-e\n"),
        "{}",
        run.stdout
    );
    assert_eq!(
        instance.read_ecs_config(),
        Some(b"ECS_LOGLEVEL=info\n".to_vec())
    );
    assert!(!instance.state_dir().exists());
}

#[tokio::test]
async fn unreachable_imds_is_a_transient_failure() {
    let instance = Instance::without_aws();
    let mut command = instance.command();
    // Point IMDS at a closed port instead of the simulator.
    command.env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &instance.aws_endpoint);
    let run: Run = command
        .args(["join", "--ecs-config"])
        .arg(instance.ecs_config())
        .arg("--state-dir")
        .arg(instance.state_dir())
        .output()
        .unwrap()
        .into();

    assert_eq!(run.code, 75, "{}", run.stderr);
    assert!(
        run.stderr.contains("instance metadata") && run.stderr.contains("transient"),
        "{}",
        run.stderr
    );
    assert_eq!(instance.read_ecs_config(), None);
}

#[tokio::test]
async fn unreachable_batch_is_a_transient_failure() {
    let instance = Instance::without_aws();
    instance.imds.update(|s| s.tags = tags(&[(CE, "research")]));

    let run = instance.join(&[]);

    assert_eq!(run.code, 75, "{}", run.stderr);
    run.assert_stderr_has("batch:DescribeComputeEnvironments");
}

#[tokio::test]
async fn a_named_config_file_must_exist_and_parse() {
    let instance = Instance::without_aws();
    let missing = instance.root.path().join("nope.toml");
    let run: Run = instance
        .command()
        .arg("join")
        .arg("--config")
        .arg(&missing)
        .output()
        .unwrap()
        .into();
    assert_eq!(run.code, 78, "{}", run.stderr);
    run.assert_stderr_has("nope.toml");

    instance.write_config("clustr = \"typo\"\n");
    let run = instance.join(&[]);
    assert_eq!(run.code, 78, "{}", run.stderr);
    run.assert_stderr_has("unknown field `clustr`");
    assert_eq!(
        run.stderr.lines().filter(|l| l.contains("error")).count(),
        1,
        "{}",
        run.stderr
    );
}

#[test]
fn join_help_explains_itself() {
    let output = std::process::Command::new(agent_binary())
        .args(["join", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    for needle in [
        "--dry-run",
        "--config",
        "--ecs-config",
        "--state-dir",
        TAG_COMPUTE_ENVIRONMENT,
        "MANAGED",
        "Exit codes",
        "75",
    ] {
        assert!(help.contains(needle), "help lacks {needle}:\n{help}");
    }
}

#[tokio::test]
async fn retry_for_waits_out_an_imds_that_is_not_up_yet() {
    let instance = Instance::without_aws();
    // An address the simulator will take two seconds from now, as IMDS may
    // be unreachable early in boot.
    let later = address_for_later();
    let mut command = instance.command();
    command
        .env(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            format!("http://{later}"),
        )
        .args(["join", "--retry-for", "30s", "--ecs-config"])
        .arg(instance.ecs_config())
        .arg("--state-dir")
        .arg(instance.state_dir())
        .stderr(std::process::Stdio::piped());
    let child = command.spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let late = blockwatch_testkit::imds::ImdsSimulator::start_on(
        &later.to_string(),
        blockwatch_testkit::imds::InstanceState {
            tags: tags(&[(CLUSTER, "late-cluster")]),
            ..Default::default()
        },
        false,
    )
    .unwrap();

    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("retrying in"), "{stderr}");
    assert_eq!(
        text(instance.read_ecs_config()),
        "ECS_CLUSTER=late-cluster\n"
    );
    drop(late);

    // A terminal error is not retried, however long --retry-for is.
    instance
        .imds
        .update(|s| s.tags = tags(&[("Name", "no-source")]));
    let started = std::time::Instant::now();
    let run = instance.join(&["--retry-for", "30s"]);
    assert_eq!(run.code, 78, "{}", run.stderr);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn the_join_unit_lets_the_join_give_up_before_systemd_kills_it_and_keeps_ecs_down() {
    let packaging = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd");
    let unit = std::fs::read_to_string(packaging.join("blockwatch-join.service")).unwrap();
    let setting = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} missing:\n{unit}"))
            .trim()
            .to_owned()
    };
    let exec = setting("ExecStart=");
    let retry_for = exec
        .split_once("--retry-for ")
        .map(|(_, rest)| rest.split_whitespace().next().unwrap())
        .unwrap();
    let retry_for = humantime::parse_duration(retry_for).unwrap();
    let start_timeout = humantime::parse_duration(&setting("TimeoutStartSec=")).unwrap();
    // The join ends by --retry-for plus one AWS call's timeout; systemd's
    // limit only catches what nothing else bounds.
    let join_bound = retry_for + blockwatch::sources::aws::AwsTimeouts::DEFAULT.operation;
    assert!(
        start_timeout >= join_bound + std::time::Duration::from_secs(30),
        "TimeoutStartSec {start_timeout:?} leaves no room after {join_bound:?}"
    );
    assert!(
        start_timeout <= join_bound * 2,
        "TimeoutStartSec {start_timeout:?} is far beyond the join's own bound"
    );
    let dropin =
        std::fs::read_to_string(packaging.join("ecs.service.d/10-blockwatch.conf")).unwrap();
    assert!(
        dropin.contains("Requires=blockwatch-join.service"),
        "{dropin}"
    );
    assert!(dropin.contains("After=blockwatch-join.service"), "{dropin}");
}

#[tokio::test]
async fn job_stop_timeout_lands_once_beside_the_cluster_and_a_second_join_leaves_the_file_alone() {
    let instance = Instance::without_aws();
    instance
        .imds
        .update(|s| s.tags = tags(&[(CLUSTER, "batch-t")]));
    instance.write_config("job_stop_timeout = \"2m\"\n");
    instance.write_ecs_config(
        b"ECS_LOGLEVEL=info\r\nECS_CONTAINER_STOP_TIMEOUT=\"5s\"\r\nECS_CLUSTER=old\r\n ECS_CONTAINER_STOP_TIMEOUT = 9s\r\nECS_RESERVED_MEMORY=256\r\n",
    );

    let run = instance.join(&[]);

    assert_eq!(run.code, 0, "{}", run.stderr);
    let written = text(instance.read_ecs_config());
    assert_eq!(
        written,
        "ECS_LOGLEVEL=info\nECS_CONTAINER_STOP_TIMEOUT=120s\nECS_CLUSTER=batch-t\nECS_RESERVED_MEMORY=256\n"
    );
    assert_eq!(written.matches("ECS_CONTAINER_STOP_TIMEOUT").count(), 1);
    assert!(
        run.stderr.contains("stops start at T - 2m 10s"),
        "the effective configuration says when stops start: {}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("ECS_CLUSTER=batch-t and ECS_CONTAINER_STOP_TIMEOUT=120s"),
        "{}",
        run.stderr
    );
    let first = std::fs::metadata(instance.ecs_config()).unwrap();

    let again = instance.join(&[]);

    assert_eq!(again.code, 0, "{}", again.stderr);
    let second = std::fs::metadata(instance.ecs_config()).unwrap();
    assert_eq!(
        (first.ino(), first.mtime_nsec()),
        (second.ino(), second.mtime_nsec()),
        "file not replaced"
    );
    assert_eq!(text(instance.read_ecs_config()), written);
    again.assert_stderr_has("left untouched");
}

#[tokio::test]
async fn a_fresh_ecs_config_gets_both_keys_in_one_file() {
    let instance = Instance::without_aws();
    instance
        .imds
        .update(|s| s.tags = tags(&[(CLUSTER, "batch-u")]));
    instance.write_config("job_stop_timeout = \"45s\"\n");

    let run = instance.join(&[]);

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        text(instance.read_ecs_config()),
        "ECS_CLUSTER=batch-u\nECS_CONTAINER_STOP_TIMEOUT=45s\n"
    );
}

#[tokio::test]
async fn hostile_and_out_of_range_job_stop_timeouts_exit_78_and_leave_ecs_config_untouched() {
    let instance = Instance::without_aws();
    instance
        .imds
        .update(|s| s.tags = tags(&[(CLUSTER, "batch-v")]));
    let before = b"ECS_CLUSTER=old\nECS_CONTAINER_STOP_TIMEOUT=30s\n";
    instance.write_ecs_config(before);
    // Old enough that a rewrite would show in the mtime.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(instance.ecs_config())
        .unwrap()
        .set_modified(old)
        .unwrap();
    let mtime = || {
        let meta = std::fs::metadata(instance.ecs_config()).unwrap();
        (meta.ino(), meta.mtime(), meta.mtime_nsec())
    };
    let untouched = mtime();

    for (config, needle) in [
        ("job_stop_timeout = \"0s\"\n", "at least 1s"),
        ("job_stop_timeout = \"500ms\"\n", "whole seconds"),
        ("job_stop_timeout = \"1.5s\"\n", "whole seconds"),
        ("job_stop_timeout = \"-5s\"\n", "not a duration"),
        ("job_stop_timeout = \"abc\"\n", "not a duration"),
        (
            "job_stop_timeout = \"5s\\nECS_CLUSTER=evil\"\n",
            "nothing around it",
        ),
        ("job_stop_timeout = \"\"\"5s\n\"\"\"\n", "nothing around it"),
        (
            "drain_lead = \"1m\"\njob_stop_timeout = \"50s\"\n",
            "drain_lead = 1m",
        ),
        ("job_stop_timeout = \"10m\"\n", "drain_lead = 10m"),
    ] {
        instance.write_config(config);

        let run = instance.join(&[]);

        assert_eq!(run.code, 78, "{config}: {}", run.stderr);
        assert!(
            run.stderr.contains("job_stop_timeout") && run.stderr.contains(needle),
            "{config}: the message names the key and says {needle}: {}",
            run.stderr
        );
        let errors: Vec<_> = run
            .stderr
            .lines()
            .filter(|l| l.contains("job_stop_timeout"))
            .collect();
        assert_eq!(errors.len(), 1, "{config}: one line: {}", run.stderr);
        assert_eq!(
            instance.read_ecs_config().as_deref(),
            Some(&before[..]),
            "{config}"
        );
        assert_eq!(mtime(), untouched, "{config}: ecs.config not rewritten");
        assert!(
            !instance.state_dir().join("join.json").exists(),
            "{config}: nothing recorded"
        );
    }
}

#[tokio::test]
async fn without_job_stop_timeout_a_hand_set_stop_timeout_line_is_kept() {
    let instance = Instance::without_aws();
    instance
        .imds
        .update(|s| s.tags = tags(&[(CLUSTER, "batch-w")]));
    instance.write_ecs_config(b"ECS_CONTAINER_STOP_TIMEOUT=\"2m\"\r\nECS_CLUSTER=old\n");

    let run = instance.join(&[]);

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        text(instance.read_ecs_config()),
        "ECS_CONTAINER_STOP_TIMEOUT=\"2m\"\nECS_CLUSTER=batch-w\n",
        "the operator's line keeps its value (only its CRLF becomes LF, as for every line)"
    );
    assert!(!run.stderr.contains("job_stop_timeout"), "{}", run.stderr);
}
