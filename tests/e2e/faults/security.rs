//! Fault matrix family `security`: hostile values never reach ecs.config or
//! forge log lines; ecs.config keeps its owner, mode and bytes; a config
//! file that others could change is refused.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use blockwatch_testkit::aws_proxy::{AwsProxy, Fault};

use crate::shared::{assert_one_error, cluster_tag, joined_over};
use blockwatch_testkit::instance::{tags, Instance, Run};

use blockwatch_core::tags::TAG_COMPUTE_ENVIRONMENT as CE_TAG;

/// Every stderr line is one of ours: nothing from outside started a line.
fn assert_no_forged_line(run: &Run) {
    for line in run.stderr.lines() {
        assert!(
            line.starts_with("blockwatch: "),
            "forged line {line:?} in:\n{}",
            run.stderr
        );
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[tokio::test]
async fn hostile_cluster_names_never_reach_ecs_config() {
    let instance = Instance::without_aws();
    let before = b"ECS_ENABLE_TASK_IAM_ROLE=true\nECS_CLUSTER=good\n".to_vec();
    instance.write_ecs_config(&before);
    let long = "x".repeat(256);
    for value in [
        "good\nECS_ENABLE_PRIVILEGED=true",
        "good\rECS_ENABLE_PRIVILEGED=true",
        "a=b",
        "a b",
        "\"quoted\"",
        "x#comment",
        "ünïcode",
        "",
        long.as_str(),
        "arn:aws:ecs:eu-west-1:123456789012:cluster/bad\nname",
    ] {
        cluster_tag(&instance, value);
        let run = instance.join(&[]);
        assert_eq!(run.code, 78, "{value:?}: {}", run.stderr);
        assert_no_forged_line(&run);
        assert_eq!(
            instance.read_ecs_config(),
            Some(before.clone()),
            "{value:?}"
        );
    }
}

#[tokio::test]
async fn a_0600_ecs_config_keeps_its_mode_owner_and_group() {
    let instance = Instance::without_aws();
    cluster_tag(&instance, "c1");
    instance.write_ecs_config(b"ECS_ENGINE_AUTH_DATA={\"r\":{\"password\":\"s3cret\"}}\n");
    let path = instance.ecs_config();
    std::os::unix::fs::chown(&path, Some(4242), Some(4343)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();

    let run = instance.join(&[]);

    assert_eq!(run.code, 0, "{}", run.stderr);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600, "never widened");
    assert_eq!((meta.uid(), meta.gid()), (4242, 4343));
    assert_eq!(
        instance.read_ecs_config(),
        Some(b"ECS_ENGINE_AUTH_DATA={\"r\":{\"password\":\"s3cret\"}}\nECS_CLUSTER=c1\n".to_vec())
    );
}

#[tokio::test]
async fn a_right_ecs_config_with_a_narrow_mode_is_left_alone() {
    let instance = Instance::without_aws();
    cluster_tag(&instance, "c1");
    instance.write_ecs_config(b"ECS_CLUSTER=c1\n");
    let path = instance.ecs_config();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();

    let run = instance.join(&[]);

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(mode(&path), 0o600);
}

#[tokio::test]
async fn a_non_utf8_byte_in_another_line_is_kept() {
    let (instance, _) = joined_over(
        b"ECS_INSTANCE_ATTRIBUTES={\"site\":\"caf\xe9\"}\nECS_CLUSTER=old\n\xff\xfe=odd\n",
    );
    assert_eq!(
        instance.read_ecs_config(),
        Some(
            b"ECS_INSTANCE_ATTRIBUTES={\"site\":\"caf\xe9\"}\nECS_CLUSTER=c1\n\xff\xfe=odd\n"
                .to_vec()
        )
    );
}

#[tokio::test]
async fn a_symlinked_ecs_config_is_written_through_and_stays_a_link() {
    let instance = Instance::without_aws();
    cluster_tag(&instance, "c1");
    let real = instance.root.path().join("persistent/ecs.config");
    std::fs::create_dir_all(real.parent().unwrap()).unwrap();
    std::fs::write(&real, b"A=1\n").unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640)).unwrap();
    let link = instance.ecs_config();
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();

    let run = instance.join(&[]);

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_link(&link).unwrap(), real);
    assert_eq!(std::fs::read(&real).unwrap(), b"A=1\nECS_CLUSTER=c1\n");
    assert_eq!(mode(&real), 0o640);
}

#[tokio::test]
async fn a_dangling_ecs_config_symlink_is_refused_with_74() {
    let instance = Instance::without_aws();
    cluster_tag(&instance, "c1");
    let link = instance.ecs_config();
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink("/nonexistent/ecs.config", &link).unwrap();

    let run = instance.join(&[]);

    assert_eq!(run.code, 74, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("is a symlink to /nonexistent/ecs.config, which does not exist"),
        "{}",
        run.stderr
    );
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(!Path::new("/nonexistent/ecs.config").exists());
}

/// A config file naming the cluster (and a harmless poweroff command).
fn config(instance: &Instance) -> std::path::PathBuf {
    instance.write_config("cluster = \"c1\"\npoweroff_command = \"true\"\n")
}

fn assert_config_refused(instance: &Instance, needles: &[&str]) {
    let run = instance.join(&[]);
    assert_eq!(run.code, 78, "{}", run.stderr);
    assert_one_error(&run, needles);
    assert_eq!(instance.read_ecs_config(), None, "nothing written");
}

#[tokio::test]
async fn a_group_writable_config_file_is_refused_with_78() {
    let instance = Instance::without_aws();
    let path = config(&instance);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).unwrap();

    assert_config_refused(
        &instance,
        &[
            &path.display().to_string(),
            "is group-writable (mode 0664)",
            "refusing it",
        ],
    );
}

#[tokio::test]
async fn a_world_writable_config_file_is_refused_with_78() {
    let instance = Instance::without_aws();
    let path = config(&instance);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o646)).unwrap();

    assert_config_refused(&instance, &["is world-writable (mode 0646)"]);
}

#[tokio::test]
async fn a_config_file_owned_by_another_user_is_refused_with_78() {
    let instance = Instance::without_aws();
    let path = config(&instance);
    std::os::unix::fs::chown(&path, Some(1000), None).unwrap();

    assert_config_refused(&instance, &["is owned by uid 1000, not root (mode 0644)"]);
}

#[tokio::test]
async fn a_config_file_in_a_directory_others_can_write_is_refused_with_78() {
    let instance = Instance::without_aws();
    let path = config(&instance);
    let dir = path.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();

    assert_config_refused(
        &instance,
        &[&format!(
            "its directory {} is group- and world-writable (mode 0777)",
            dir.display()
        )],
    );
}

#[tokio::test]
async fn a_tag_value_cannot_forge_a_log_line() {
    let instance = Instance::without_aws();
    instance
        .imds
        .update(|s| s.tags = tags(&[(CE_TAG, "ce\nECS_ENABLE_PRIVILEGED=true")]));

    let run = instance.join(&[]);

    assert_eq!(run.code, 75, "{}", run.stderr);
    assert_no_forged_line(&run);
    assert!(
        run.stderr
            .contains("compute_environment=ce\\nECS_ENABLE_PRIVILEGED=true"),
        "shown escaped: {}",
        run.stderr
    );
}

#[tokio::test]
async fn an_aws_error_message_cannot_forge_a_log_line() {
    let mut instance = Instance::with_moto().await;
    instance.launch_in_compute_environment("forge-ce").await;
    let proxy = AwsProxy::start(instance.moto().addr()).unwrap();
    instance.aws_endpoint = proxy.endpoint();
    proxy.inject(
        "DescribeComputeEnvironments",
        Fault::json_error(
            400,
            "AccessDeniedException",
            "no\nblockwatch: set ECS_CLUSTER=evil\r\u{1b}[2K",
        ),
        None,
    );

    let run = instance.join(&[]);

    assert_eq!(run.code, 77, "{}", run.stderr);
    assert_no_forged_line(&run);
    assert!(!run.stderr.contains('\u{1b}'), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("no\\nblockwatch: set ECS_CLUSTER=evil\\r\\u{1b}[2K"),
        "{}",
        run.stderr
    );
    assert_eq!(instance.read_ecs_config(), None);
}

#[tokio::test]
async fn a_config_key_cannot_forge_a_log_line() {
    let instance = Instance::without_aws();
    instance.write_config("\"x\\nblockwatch: all good\" = 1\n");

    let run = instance.join(&[]);

    assert_eq!(run.code, 78, "{}", run.stderr);
    assert_no_forged_line(&run);
}
