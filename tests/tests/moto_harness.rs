//! The moto harness: starts, seeds through the Rust SDK, stops by PID.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    LaunchTemplateErrorCode, LaunchTemplateHttpTokensState,
    LaunchTemplateIamInstanceProfileSpecificationRequest,
    LaunchTemplateInstanceMetadataOptionsRequest, LaunchTemplateInstanceMetadataTagsState,
    LaunchTemplateTagSpecificationRequest, RequestLaunchTemplateData, ResourceType, Tag,
};
use blockwatch_core::tags::TAG_COMPUTE_ENVIRONMENT;
use blockwatch_testkit::moto::MotoServer;

#[tokio::test]
async fn seeds_a_compute_environment_an_instance_and_a_container_instance_then_stops() {
    let moto = MotoServer::start().await.unwrap();
    let pid = moto.pid();
    assert!(moto.endpoint().starts_with("http://127.0.0.1:"));

    let cluster_arn = moto.create_unmanaged_ce("harness-ce", true).await.unwrap();
    assert!(
        cluster_arn.contains(":cluster/OnDemand_Batch_"),
        "{cluster_arn}"
    );
    let instance_id = moto
        .launch_instance(&[(TAG_COMPUTE_ENVIRONMENT, "harness-ce")])
        .await
        .unwrap();
    assert!(instance_id.starts_with("i-"));

    let tags = aws_sdk_ec2::Client::new(moto.sdk())
        .describe_tags()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("resource-id")
                .values(&instance_id)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(tags
        .tags()
        .iter()
        .any(|t| t.key() == Some(TAG_COMPUTE_ENVIRONMENT) && t.value() == Some("harness-ce")));

    let container_instance = moto
        .register_container_instance(&cluster_arn, &instance_id)
        .await
        .unwrap();
    let listed = aws_sdk_ecs::Client::new(moto.sdk())
        .list_container_instances()
        .cluster(&cluster_arn)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.container_instance_arns(), [container_instance]);

    drop(moto);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "moto_server {pid} still running"
    );
}

// tests/moto/serve.py: the launch template and IAM calls moto lacks behave
// like AWS's.

fn instance_tags(key: &str, value: &str) -> LaunchTemplateTagSpecificationRequest {
    LaunchTemplateTagSpecificationRequest::builder()
        .resource_type(ResourceType::Instance)
        .tags(Tag::builder().key(key).value(value).build())
        .build()
}

/// A template whose version 1 (the default) sets every parameter the launcher inherits.
async fn operator_template(moto: &MotoServer, name: &str) -> aws_sdk_ec2::Client {
    let ec2 = aws_sdk_ec2::Client::new(moto.sdk());
    let data = RequestLaunchTemplateData::builder()
        .image_id("ami-0abcdef1234567890")
        .instance_type(aws_sdk_ec2::types::InstanceType::C6iLarge)
        .user_data("ZWNobyBvcGVyYXRvcg==")
        .iam_instance_profile(
            LaunchTemplateIamInstanceProfileSpecificationRequest::builder()
                .name("operator-profile")
                .build(),
        )
        .tag_specifications(instance_tags("team", "operators"))
        .metadata_options(
            LaunchTemplateInstanceMetadataOptionsRequest::builder()
                .http_tokens(LaunchTemplateHttpTokensState::Required)
                .instance_metadata_tags(LaunchTemplateInstanceMetadataTagsState::Disabled)
                .build(),
        )
        .build();
    ec2.create_launch_template()
        .launch_template_name(name)
        .launch_template_data(data)
        .send()
        .await
        .unwrap();
    ec2
}

/// The numbers DescribeLaunchTemplateVersions lists, from `min_version` on.
async fn version_numbers(
    ec2: &aws_sdk_ec2::Client,
    template: &str,
    min_version: Option<&str>,
) -> Vec<i64> {
    let described = ec2
        .describe_launch_template_versions()
        .launch_template_name(template)
        .set_min_version(min_version.map(str::to_owned))
        .send()
        .await
        .unwrap();
    described
        .launch_template_versions()
        .iter()
        .filter_map(|v| v.version_number())
        .collect()
}

async fn add_version(ec2: &aws_sdk_ec2::Client, template: &str) -> i64 {
    let created = ec2
        .create_launch_template_version()
        .launch_template_name(template)
        .source_version("$Latest")
        .launch_template_data(RequestLaunchTemplateData::builder().build())
        .send()
        .await
        .unwrap();
    created
        .launch_template_version()
        .and_then(|v| v.version_number())
        .unwrap()
}

#[tokio::test]
async fn a_version_from_a_source_version_inherits_all_but_the_top_level_keys_given() {
    let moto = MotoServer::start().await.unwrap();
    let ec2 = operator_template(&moto, "operator-lt").await;

    // MetadataOptions given whole, without HttpTokens; TagSpecifications given.
    let data = RequestLaunchTemplateData::builder()
        .metadata_options(
            LaunchTemplateInstanceMetadataOptionsRequest::builder()
                .instance_metadata_tags(LaunchTemplateInstanceMetadataTagsState::Enabled)
                .build(),
        )
        .tag_specifications(instance_tags("blockwatch", "yes"))
        .build();
    let created = ec2
        .create_launch_template_version()
        .launch_template_name("operator-lt")
        .source_version("$Default")
        .launch_template_data(data)
        .send()
        .await
        .unwrap();
    assert_eq!(
        created.launch_template_version().unwrap().version_number(),
        Some(2)
    );

    let described = ec2
        .describe_launch_template_versions()
        .launch_template_name("operator-lt")
        .versions("2")
        .send()
        .await
        .unwrap();
    let version = described.launch_template_versions().first().unwrap();
    let data = version.launch_template_data().unwrap();
    assert_eq!(data.image_id(), Some("ami-0abcdef1234567890"));
    assert_eq!(
        data.instance_type(),
        Some(&aws_sdk_ec2::types::InstanceType::C6iLarge)
    );
    assert_eq!(data.user_data(), Some("ZWNobyBvcGVyYXRvcg=="));
    assert_eq!(
        data.iam_instance_profile().and_then(|p| p.name()),
        Some("operator-profile")
    );
    let metadata = data.metadata_options().unwrap();
    assert_eq!(
        metadata.instance_metadata_tags(),
        Some(&LaunchTemplateInstanceMetadataTagsState::Enabled)
    );
    assert_eq!(metadata.http_tokens(), None, "the object is replaced whole");
    let tags: Vec<_> = data
        .tag_specifications()
        .iter()
        .flat_map(|s| s.tags())
        .map(|t| (t.key().unwrap(), t.value().unwrap()))
        .collect();
    assert_eq!(tags, [("blockwatch", "yes")], "the list is replaced");

    let unknown = ec2
        .create_launch_template_version()
        .launch_template_name("operator-lt")
        .source_version("9")
        .launch_template_data(RequestLaunchTemplateData::builder().build())
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        unknown.code(),
        Some("InvalidLaunchTemplateId.VersionNotFound")
    );
}

#[tokio::test]
async fn deleting_launch_template_versions_spares_the_default_and_never_reuses_numbers() {
    let moto = MotoServer::start().await.unwrap();
    let ec2 = operator_template(&moto, "operator-lt").await;
    assert_eq!(add_version(&ec2, "operator-lt").await, 2);
    assert_eq!(add_version(&ec2, "operator-lt").await, 3);

    let deleted = ec2
        .delete_launch_template_versions()
        .launch_template_name("operator-lt")
        .versions("2")
        .versions("1")
        .versions("9")
        .send()
        .await
        .unwrap();
    let succeeded: Vec<_> = deleted
        .successfully_deleted_launch_template_versions()
        .iter()
        .filter_map(|v| v.version_number())
        .collect();
    assert_eq!(succeeded, [2]);
    let failed: Vec<_> = deleted
        .unsuccessfully_deleted_launch_template_versions()
        .iter()
        .map(|v| {
            (
                v.version_number(),
                v.response_error().and_then(|e| e.code()).cloned(),
            )
        })
        .collect();
    assert_eq!(
        failed,
        [
            (Some(1), Some(LaunchTemplateErrorCode::UnexpectedError)),
            (
                Some(9),
                Some(LaunchTemplateErrorCode::LaunchTemplateVersionDoesNotExist)
            ),
        ]
    );

    assert_eq!(version_numbers(&ec2, "operator-lt", None).await, [1, 3]);
    let gone = ec2
        .describe_launch_template_versions()
        .launch_template_name("operator-lt")
        .versions("2")
        .send()
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Some("InvalidLaunchTemplateId.VersionNotFound"));

    // The latest deleted too: its number is not given again.
    assert_eq!(add_version(&ec2, "operator-lt").await, 4);
    ec2.delete_launch_template_versions()
        .launch_template_name("operator-lt")
        .versions("4")
        .send()
        .await
        .unwrap();
    assert_eq!(add_version(&ec2, "operator-lt").await, 5);
    assert_eq!(version_numbers(&ec2, "operator-lt", None).await, [1, 3, 5]);
    assert_eq!(
        version_numbers(&ec2, "operator-lt", Some("3")).await,
        [3, 5],
        "MinVersion is a number, not a position"
    );

    let no_template = ec2
        .delete_launch_template_versions()
        .launch_template_name("no-such-lt")
        .versions("2")
        .send()
        .await
        .unwrap();
    let failed = no_template
        .unsuccessfully_deleted_launch_template_versions()
        .first()
        .unwrap();
    assert_eq!(failed.version_number(), Some(2));
    assert_eq!(
        failed.response_error().and_then(|e| e.code()),
        Some(&LaunchTemplateErrorCode::LaunchTemplateNameDoesNotExist)
    );
}

/// An instant fleet of `count` instances of `capacity` from `version` of
/// `template`, as EC2 answers it.
async fn instant_fleet(
    ec2: &aws_sdk_ec2::Client,
    template: &str,
    version: &str,
    capacity: aws_sdk_ec2::types::DefaultTargetCapacityType,
    count: i32,
) -> Result<
    aws_sdk_ec2::operation::create_fleet::CreateFleetOutput,
    aws_sdk_ec2::error::SdkError<aws_sdk_ec2::operation::create_fleet::CreateFleetError>,
> {
    use aws_sdk_ec2::types::{
        FleetLaunchTemplateConfigRequest, FleetLaunchTemplateSpecificationRequest, FleetType,
        TargetCapacitySpecificationRequest,
    };
    ec2.create_fleet()
        .r#type(FleetType::Instant)
        .target_capacity_specification(
            TargetCapacitySpecificationRequest::builder()
                .total_target_capacity(count)
                .default_target_capacity_type(capacity)
                .build(),
        )
        .launch_template_configs(
            FleetLaunchTemplateConfigRequest::builder()
                .launch_template_specification(
                    FleetLaunchTemplateSpecificationRequest::builder()
                        .launch_template_name(template)
                        .version(version)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
}

#[tokio::test]
async fn an_instant_fleet_from_a_deleted_version_launches_nothing() {
    use aws_sdk_ec2::types::DefaultTargetCapacityType;
    let moto = MotoServer::start().await.unwrap();
    let ec2 = operator_template(&moto, "operator-lt").await;
    assert_eq!(add_version(&ec2, "operator-lt").await, 2);
    // A version after it: moto's lookup by list position would find this one.
    assert_eq!(add_version(&ec2, "operator-lt").await, 3);
    ec2.delete_launch_template_versions()
        .launch_template_name("operator-lt")
        .versions("2")
        .send()
        .await
        .unwrap();

    let fleet = instant_fleet(
        &ec2,
        "operator-lt",
        "2",
        DefaultTargetCapacityType::OnDemand,
        1,
    )
    .await
    .unwrap_err();
    assert_eq!(
        fleet.code(),
        Some("InvalidLaunchTemplateId.VersionNotFound")
    );

    let run = ec2
        .run_instances()
        .min_count(1)
        .max_count(1)
        .launch_template(
            aws_sdk_ec2::types::LaunchTemplateSpecification::builder()
                .launch_template_name("operator-lt")
                .version("2")
                .build(),
        )
        .send()
        .await
        .unwrap_err();
    assert_eq!(run.code(), Some("InvalidLaunchTemplateId.VersionNotFound"));

    let described = ec2.describe_instances().send().await.unwrap();
    assert!(described.reservations().is_empty(), "{described:?}");
}

/// What a launched instance carries of a template: (http tokens, tags in
/// IMDS, shutdown behaviour, profile ARN, security groups).
async fn carried(
    ec2: &aws_sdk_ec2::Client,
    id: &str,
) -> (String, String, String, Option<String>, Vec<String>) {
    let described = ec2
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .unwrap();
    let instance = &described.reservations()[0].instances()[0];
    let metadata = instance.metadata_options().unwrap();
    let shutdown = ec2
        .describe_instance_attribute()
        .instance_id(id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::InstanceInitiatedShutdownBehavior)
        .send()
        .await
        .unwrap();
    (
        metadata.http_tokens().unwrap().as_str().to_owned(),
        metadata
            .instance_metadata_tags()
            .unwrap()
            .as_str()
            .to_owned(),
        shutdown
            .instance_initiated_shutdown_behavior()
            .and_then(|b| b.value())
            .unwrap()
            .to_owned(),
        instance
            .iam_instance_profile()
            .and_then(|p| p.arn())
            .map(str::to_owned),
        instance
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id())
            .map(str::to_owned)
            .collect(),
    )
}

#[tokio::test]
async fn instances_launched_from_a_template_carry_its_options_unless_the_call_sets_them() {
    use aws_sdk_ec2::types::{
        DefaultTargetCapacityType, InstanceMetadataOptionsRequest, LaunchTemplateSpecification,
        ShutdownBehavior,
    };
    let moto = MotoServer::start().await.unwrap();
    let profile_arn = moto
        .create_instance_profile("operator-profile")
        .await
        .unwrap();
    let ec2 = operator_template(&moto, "operator-lt").await;
    let vpc = ec2.describe_vpcs().send().await.unwrap().vpcs()[0]
        .vpc_id()
        .unwrap()
        .to_owned();
    let group = ec2
        .create_security_group()
        .group_name("batch-nodes")
        .description("batch nodes")
        .vpc_id(vpc)
        .send()
        .await
        .unwrap()
        .group_id()
        .unwrap()
        .to_owned();
    ec2.create_launch_template_version()
        .launch_template_name("operator-lt")
        .source_version("1")
        .launch_template_data(
            RequestLaunchTemplateData::builder()
                .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
                .security_group_ids(&group)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let version_2 = || {
        LaunchTemplateSpecification::builder()
            .launch_template_name("operator-lt")
            .version("2")
            .build()
    };
    let from_template = (
        "required".to_owned(),
        "disabled".to_owned(),
        "terminate".to_owned(),
        Some(profile_arn),
        vec![group.clone()],
    );

    // RunInstances: the template's options, as AWS applies them.
    let run = ec2
        .run_instances()
        .min_count(1)
        .max_count(1)
        .launch_template(version_2())
        .send()
        .await
        .unwrap();
    let id = run.instances()[0].instance_id().unwrap();
    assert_eq!(carried(&ec2, id).await, from_template);

    // A parameter of the call wins over the template's.
    let run = ec2
        .run_instances()
        .min_count(1)
        .max_count(1)
        .launch_template(version_2())
        .instance_initiated_shutdown_behavior(ShutdownBehavior::Stop)
        .metadata_options(
            InstanceMetadataOptionsRequest::builder()
                .http_tokens(aws_sdk_ec2::types::HttpTokensState::Optional)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let (tokens, _, shutdown, profile, groups) =
        carried(&ec2, run.instances()[0].instance_id().unwrap()).await;
    assert_eq!((tokens.as_str(), shutdown.as_str()), ("optional", "stop"));
    assert_eq!((&profile, &groups), (&from_template.3, &from_template.4));

    // An instant fleet, On-Demand and Spot: every instance the same.
    for capacity in [
        DefaultTargetCapacityType::OnDemand,
        DefaultTargetCapacityType::Spot,
    ] {
        let fleet = instant_fleet(&ec2, "operator-lt", "2", capacity.clone(), 2)
            .await
            .unwrap();
        let ids: Vec<&str> = fleet
            .instances()
            .iter()
            .flat_map(|i| i.instance_ids())
            .map(String::as_str)
            .collect();
        assert_eq!(ids.len(), 2, "{capacity:?}: {fleet:?}");
        for id in ids {
            assert_eq!(carried(&ec2, id).await, from_template, "{capacity:?}");
        }
    }
}

const EC2_TRUST: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;

fn policy(effect: &str, action: &str) -> String {
    format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"{effect}","Action":"{action}","Resource":"*"}}]}}"#
    )
}

/// A role with one inline policy `effect` `action`; returns its ARN.
async fn role_with_inline(
    iam: &aws_sdk_iam::Client,
    name: &str,
    effect: &str,
    action: &str,
) -> String {
    let role = iam
        .create_role()
        .role_name(name)
        .assume_role_policy_document(EC2_TRUST)
        .send()
        .await
        .unwrap();
    iam.put_role_policy()
        .role_name(name)
        .policy_name("inline")
        .policy_document(policy(effect, action))
        .send()
        .await
        .unwrap();
    role.role().unwrap().arn().to_owned()
}

async fn decision(iam: &aws_sdk_iam::Client, principal: &str, action: &str) -> String {
    let simulated = iam
        .simulate_principal_policy()
        .policy_source_arn(principal)
        .action_names(action)
        .send()
        .await
        .unwrap();
    assert!(!simulated.is_truncated());
    let result = simulated.evaluation_results().first().unwrap();
    assert_eq!(result.eval_action_name(), action);
    assert_eq!(result.eval_resource_name(), Some("*"));
    result.eval_decision().as_str().to_owned()
}

#[tokio::test]
async fn simulate_principal_policy_evaluates_the_roles_policies() {
    let moto = MotoServer::start().await.unwrap();
    let iam = aws_sdk_iam::Client::new(moto.sdk());

    let tags_role = role_with_inline(&iam, "tags-role", "Allow", "ec2:DescribeTags").await;
    assert_eq!(
        decision(&iam, &tags_role, "ec2:DescribeTags").await,
        "allowed"
    );

    let other_role = role_with_inline(&iam, "other-role", "Allow", "ec2:DescribeInstances").await;
    assert_eq!(
        decision(&iam, &other_role, "ec2:DescribeTags").await,
        "implicitDeny"
    );

    let denied_role = role_with_inline(&iam, "denied-role", "Deny", "ec2:DescribeTags").await;
    let managed = iam
        .create_policy()
        .policy_name("ec2-read")
        .policy_document(policy("Allow", "ec2:Describe*"))
        .send()
        .await
        .unwrap();
    iam.attach_role_policy()
        .role_name("denied-role")
        .policy_arn(managed.policy().unwrap().arn().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        decision(&iam, &denied_role, "ec2:DescribeInstances").await,
        "allowed",
        "the managed policy counts"
    );
    assert_eq!(
        decision(&iam, &denied_role, "ec2:DescribeTags").await,
        "explicitDeny"
    );

    let unknown = iam
        .simulate_principal_policy()
        .policy_source_arn("arn:aws:iam::123456789012:role/no-such-role")
        .action_names("ec2:DescribeTags")
        .send()
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Some("NoSuchEntity"));
}

#[tokio::test]
async fn simulate_principal_policy_applies_the_permissions_boundary() {
    let moto = MotoServer::start().await.unwrap();
    let iam = aws_sdk_iam::Client::new(moto.sdk());
    let boundary = iam
        .create_policy()
        .policy_name("instances-only")
        .policy_document(policy("Allow", "ec2:DescribeInstances"))
        .send()
        .await
        .unwrap();
    let role = iam
        .create_role()
        .role_name("bounded-role")
        .assume_role_policy_document(EC2_TRUST)
        .permissions_boundary(boundary.policy().unwrap().arn().unwrap())
        .send()
        .await
        .unwrap();
    iam.put_role_policy()
        .role_name("bounded-role")
        .policy_name("inline")
        .policy_document(policy("Allow", "ec2:Describe*"))
        .send()
        .await
        .unwrap();
    let arn = role.role().unwrap().arn();
    assert_eq!(
        decision(&iam, arn, "ec2:DescribeInstances").await,
        "allowed"
    );
    assert_eq!(
        decision(&iam, arn, "ec2:DescribeTags").await,
        "implicitDeny"
    );
}
