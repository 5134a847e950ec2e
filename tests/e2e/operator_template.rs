//! `blockwatch-launch --launch-template`: the operator's own launch template,
//! extended by one version, against moto (with the test kit's shim for
//! `SourceVersion`, `DeleteLaunchTemplateVersions` and
//! `SimulatePrincipalPolicy`, which moto lacks).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aws_sdk_ec2::types::{
    LaunchTemplateHttpTokensState, LaunchTemplateIamInstanceProfileSpecificationRequest,
    LaunchTemplateInstanceMetadataEndpointState, LaunchTemplateInstanceMetadataOptionsRequest,
    LaunchTemplateInstanceMetadataTagsState, LaunchTemplateTagSpecificationRequest,
    RequestLaunchTemplateData, ResourceType, ResponseLaunchTemplateData, ShutdownBehavior, Tag,
    TagSpecification,
};
use blockwatch_core::tags::{TAG_CLUSTER, TAG_COMPUTE_ENVIRONMENT, TAG_LEASE_DURATION};
use blockwatch_testkit::launcher::{
    assert_volumes_tagged, instances, shutdown_behavior, Launcher, Run,
};
use blockwatch_testkit::moto::MotoServer;

const TEAM_USER_DATA: &str = "#!/bin/sh\necho team >> /var/log/team\n";

async fn moto_with_ce() -> MotoServer {
    let moto = MotoServer::start().await.unwrap();
    moto.create_unmanaged_ce("research", true).await.unwrap();
    moto
}

fn ec2(moto: &MotoServer) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(moto.sdk())
}

/// One of the Amazon AMIs moto holds, for templates to name.
async fn an_ami(moto: &MotoServer) -> String {
    let images = ec2(moto)
        .describe_images()
        .owners("amazon")
        .send()
        .await
        .unwrap();
    images.images()[0].image_id().unwrap().to_owned()
}

/// A team's template as operators write them: an image, a type, user data,
/// a profile, their own tags, IMDSv2 optional with hop limit 2, and no
/// shutdown behaviour or instance tags in IMDS.
async fn team_data(moto: &MotoServer, profile: &str) -> RequestLaunchTemplateData {
    RequestLaunchTemplateData::builder()
        .image_id(an_ami(moto).await)
        .instance_type("m5.large".into())
        .user_data(aws_smithy_types::base64::encode(TEAM_USER_DATA))
        .iam_instance_profile(
            LaunchTemplateIamInstanceProfileSpecificationRequest::builder()
                .name(profile)
                .build(),
        )
        .tag_specifications(
            LaunchTemplateTagSpecificationRequest::builder()
                .resource_type(ResourceType::Instance)
                .tags(Tag::builder().key("team").value("genomics").build())
                .tags(Tag::builder().key("Name").value("team-node").build())
                .build(),
        )
        .metadata_options(
            LaunchTemplateInstanceMetadataOptionsRequest::builder()
                .http_tokens(LaunchTemplateHttpTokensState::Optional)
                .http_put_response_hop_limit(2)
                .build(),
        )
        .build()
}

/// Creates the operator's template, tagged for `compute_environment` when
/// given; returns its id.
async fn operator_template(
    moto: &MotoServer,
    name: &str,
    compute_environment: Option<&str>,
    data: RequestLaunchTemplateData,
) -> String {
    let mut request = ec2(moto)
        .create_launch_template()
        .launch_template_name(name)
        .launch_template_data(data);
    if let Some(ce) = compute_environment {
        request = request.tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::LaunchTemplate)
                .tags(
                    Tag::builder()
                        .key(TAG_COMPUTE_ENVIRONMENT)
                        .value(ce)
                        .build(),
                )
                .build(),
        );
    }
    let created = request.send().await.unwrap();
    created
        .launch_template()
        .unwrap()
        .launch_template_id()
        .unwrap()
        .to_owned()
}

/// The template's versions as moto holds them: (number, description, data).
async fn versions(
    moto: &MotoServer,
    id: &str,
) -> Vec<(i64, Option<String>, ResponseLaunchTemplateData)> {
    ec2(moto)
        .describe_launch_template_versions()
        .launch_template_id(id)
        .max_results(200)
        .send()
        .await
        .unwrap()
        .launch_template_versions()
        .iter()
        .map(|v| {
            (
                v.version_number().unwrap(),
                v.version_description().map(str::to_owned),
                v.launch_template_data().unwrap().clone(),
            )
        })
        .collect()
}

fn launch(moto: &MotoServer, template: &str, extra: &[&str]) -> Run {
    Launcher::new(&moto.endpoint())
        .launch(2, "2h")
        .args(["--launch-template", template, "--output", "json"])
        .args(extra)
        .run()
}

fn json(run: &Run) -> serde_json::Value {
    run.assert_exit(0);
    serde_json::from_str(&run.stdout).unwrap()
}

fn calls(moto: &MotoServer, action: &str) -> Vec<String> {
    moto.requests()
        .into_iter()
        .filter(|r| r.body.contains(&format!("Action={action}&")))
        .map(|r| r.body)
        .collect()
}

fn tags_of(data: &ResponseLaunchTemplateData, resource: &str) -> Vec<(String, String)> {
    data.tag_specifications()
        .iter()
        .find(|s| s.resource_type().map(|r| r.as_str()) == Some(resource))
        .map(|s| {
            s.tags()
                .iter()
                .map(|t| (t.key().unwrap().to_owned(), t.value().unwrap().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_kept_version_adds_only_what_blockwatch_needs_and_is_reused() {
    let moto = moto_with_ce().await;
    let profile_arn = moto.create_instance_profile("team-node").await.unwrap();
    let data = team_data(&moto, "team-node").await;
    let id = operator_template(&moto, "team-batch", Some("research"), data).await;

    let run = launch(&moto, "team-batch", &["--keep-template"]);
    let report = json(&run);
    let template = &report["launch_template"];
    assert_eq!(template["id"], id.as_str());
    assert_eq!(template["name"], "team-batch");
    assert_eq!(template["origin"], "created");
    assert_eq!(template["kept"], true);
    assert_eq!(template["based_on"], 1);
    assert_eq!(template["version"], 2);
    // The template's own image, type, user data and hop limit.
    assert!(
        report["ami_source"]
            .as_str()
            .unwrap()
            .starts_with("launch template team-batch"),
        "{report}"
    );
    assert!(calls(&moto, "GetParameter").is_empty(), "no SSM lookup");
    assert_eq!(report["instance_types"], serde_json::json!(["m5.large"]));
    assert_eq!(report["imds_hop_limit"], 2);
    assert_eq!(report["user_data"], true);
    let reported: Vec<(String, String)> = serde_json::from_value(report["tags"].clone()).unwrap();
    assert!(
        reported.contains(&("Name".into(), "team-node".into())),
        "{reported:?}"
    );
    assert!(
        reported.contains(&("team".into(), "genomics".into())),
        "{reported:?}"
    );

    // One new version, based on 1, sending only what blockwatch changes.
    let created = calls(&moto, "CreateLaunchTemplateVersion");
    assert_eq!(created.len(), 1);
    let body = &created[0];
    assert!(body.contains("SourceVersion=1"), "{body}");
    for absent in ["ImageId", "UserData", "IamInstanceProfile", "InstanceType"] {
        assert!(
            !body.contains(&format!("LaunchTemplateData.{absent}")),
            "{absent} sent: {body}"
        );
    }
    let all = versions(&moto, &id).await;
    assert_eq!(all.len(), 2);
    let (original, ours) = (&all[0].2, &all[1].2);
    assert_eq!(
        original.instance_initiated_shutdown_behavior(),
        None,
        "v1 untouched"
    );
    assert_eq!(ours.image_id(), original.image_id());
    assert_eq!(ours.user_data(), original.user_data());
    assert_eq!(
        ours.iam_instance_profile().and_then(|p| p.name()),
        Some("team-node")
    );
    assert_eq!(
        ours.instance_initiated_shutdown_behavior(),
        Some(&ShutdownBehavior::Terminate)
    );
    let metadata = ours.metadata_options().unwrap();
    assert_eq!(
        metadata.http_tokens(),
        Some(&LaunchTemplateHttpTokensState::Optional),
        "the operator's choice stays"
    );
    assert_eq!(metadata.http_put_response_hop_limit(), Some(2));
    assert_eq!(
        metadata.http_endpoint(),
        Some(&LaunchTemplateInstanceMetadataEndpointState::Enabled)
    );
    assert_eq!(
        metadata.instance_metadata_tags(),
        Some(&LaunchTemplateInstanceMetadataTagsState::Enabled)
    );
    let instance_tags = tags_of(ours, "instance");
    let cluster = instance_tags
        .iter()
        .find(|(k, _)| k == TAG_CLUSTER)
        .map(|(_, v)| v.clone())
        .unwrap();
    assert!(cluster.starts_with("OnDemand_Batch_"), "{cluster}");
    for (key, value) in [
        ("team", "genomics"),
        ("Name", "team-node"),
        (TAG_COMPUTE_ENVIRONMENT, "research"),
        (TAG_LEASE_DURATION, "2h"),
    ] {
        assert!(
            instance_tags.contains(&(key.into(), value.into())),
            "{key}: {instance_tags:?}"
        );
    }
    let template_volume_tags = tags_of(ours, "volume");
    assert!(template_volume_tags.contains(&(TAG_COMPUTE_ENVIRONMENT.into(), "research".into())));
    assert!(template_volume_tags.contains(&("Name".into(), "blockwatch-research".into())));

    // The instances came from that version.
    let fleets = calls(&moto, "CreateFleet");
    assert!(fleets[0].contains(&format!(
        "LaunchTemplateConfigs.1.LaunchTemplateSpecification.LaunchTemplateId={id}"
    )));
    assert!(fleets[0].contains("LaunchTemplateConfigs.1.LaunchTemplateSpecification.Version=2"));
    let launched = instances(&moto).await.unwrap();
    assert_eq!(launched.len(), 2);
    for instance in &launched {
        assert_eq!(instance.image_id(), original.image_id());
        assert_eq!(
            instance.instance_type().map(|t| t.as_str()),
            Some("m5.large")
        );
        let has = |key: &str, value: &str| {
            instance
                .tags()
                .iter()
                .any(|t| t.key() == Some(key) && t.value() == Some(value))
        };
        assert!(has("team", "genomics") && has(TAG_COMPUTE_ENVIRONMENT, "research"));
        assert!(has(TAG_CLUSTER, &cluster) && has(TAG_LEASE_DURATION, "2h"));
        // The operator's profile and IMDS choices, with blockwatch's additions.
        let id = instance.instance_id().unwrap();
        assert_eq!(
            instance.iam_instance_profile().and_then(|p| p.arn()),
            Some(profile_arn.as_str())
        );
        let metadata = instance.metadata_options().unwrap();
        assert_eq!(metadata.http_tokens().map(|t| t.as_str()), Some("optional"));
        assert_eq!(metadata.http_put_response_hop_limit(), Some(2));
        assert_eq!(
            metadata.instance_metadata_tags().map(|t| t.as_str()),
            Some("enabled")
        );
        assert_eq!(
            shutdown_behavior(&moto, id).await.as_deref(),
            Some("terminate")
        );
        assert_volumes_tagged(&moto, id, &[(TAG_COMPUTE_ENVIRONMENT, "research")]).await;
    }

    // The same launch again reuses the kept version and writes nothing.
    let again = json(&launch(&moto, "team-batch", &[]));
    assert_eq!(again["launch_template"]["origin"], "reused");
    assert_eq!(again["launch_template"]["version"], 2);
    assert_eq!(calls(&moto, "CreateLaunchTemplateVersion").len(), 1);
    assert!(calls(&moto, "DeleteLaunchTemplateVersions").is_empty());
    assert_eq!(versions(&moto, &id).await.len(), 2);

    // The text plan says what it is.
    let text = Launcher::new(&moto.endpoint())
        .launch(1, "2h")
        .args(["--launch-template", &id, "--dry-run"])
        .run();
    text.assert_exit(0).assert_stdout_has(format!(
        "launch template: team-batch ({id}, version 2), your version 1 plus blockwatch's tags and options, reused"
    ));
}

#[tokio::test]
async fn a_version_not_kept_is_deleted_and_the_chosen_version_is_the_base() {
    let moto = moto_with_ce().await;
    moto.create_instance_profile("team-node").await.unwrap();
    let data = team_data(&moto, "team-node").await;
    let id = operator_template(&moto, "team-batch", Some("research"), data).await;
    // Version 2 is another type; the default stays 1.
    ec2(&moto)
        .create_launch_template_version()
        .launch_template_id(&id)
        .source_version("1")
        .launch_template_data(
            RequestLaunchTemplateData::builder()
                .instance_type("c5.large".into())
                .build(),
        )
        .send()
        .await
        .unwrap();

    let default = json(&launch(&moto, "team-batch", &[]));
    assert_eq!(default["launch_template"]["based_on"], 1);
    assert_eq!(default["launch_template"]["version"], 3);
    assert_eq!(default["launch_template"]["kept"], false);
    assert_eq!(default["instance_types"], serde_json::json!(["m5.large"]));
    let deleted = calls(&moto, "DeleteLaunchTemplateVersions");
    assert_eq!(deleted.len(), 1);
    assert!(
        deleted[0].contains("LaunchTemplateVersion.1=3"),
        "{}",
        deleted[0]
    );
    let numbers: Vec<i64> = versions(&moto, &id).await.iter().map(|v| v.0).collect();
    assert_eq!(
        numbers,
        [1, 2],
        "the operator's versions stay, ours is gone"
    );
    assert!(default["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .all(|w| !w.as_str().unwrap().contains("could not delete")));

    let chosen = json(&launch(
        &moto,
        &format!("{id}:2"),
        &["--instance-type", "m6i.large"],
    ));
    assert_eq!(chosen["launch_template"]["based_on"], 2);
    assert_eq!(
        chosen["instance_types"],
        serde_json::json!(["m6i.large"]),
        "--instance-type wins over the template's type"
    );
    let created = calls(&moto, "CreateLaunchTemplateVersion");
    assert!(created.last().unwrap().contains("SourceVersion=2"));

    // A dry run shows the fleet request from the new version and deletes it.
    let before = instances(&moto).await.unwrap().len();
    let dry = json(&launch(&moto, "team-batch:$Latest", &["--dry-run"]));
    assert_eq!(dry["launch_template"]["based_on"], 2);
    let version = dry["launch_template"]["version"].clone();
    assert_eq!(
        dry["fleet_request"]["LaunchTemplateConfigs"][0]["LaunchTemplateSpecification"]["Version"],
        version.to_string()
    );
    assert_eq!(instances(&moto).await.unwrap().len(), before);
    let numbers: Vec<i64> = versions(&moto, &id).await.iter().map(|v| v.0).collect();
    assert_eq!(numbers, [1, 2]);
}

#[tokio::test]
async fn a_template_that_carries_everything_is_used_as_given() {
    let moto = moto_with_ce().await;
    let cluster_arn = moto.create_unmanaged_ce("complete", true).await.unwrap();
    let cluster = cluster_arn.rsplit('/').next().unwrap().to_owned();
    let tagged = |resource| {
        LaunchTemplateTagSpecificationRequest::builder()
            .resource_type(resource)
            .tags(
                Tag::builder()
                    .key(TAG_COMPUTE_ENVIRONMENT)
                    .value("complete")
                    .build(),
            )
            .tags(Tag::builder().key(TAG_CLUSTER).value(&cluster).build())
            .tags(Tag::builder().key(TAG_LEASE_DURATION).value("2h").build())
            .tags(Tag::builder().key("Name").value("mine").build())
            .build()
    };
    let data = RequestLaunchTemplateData::builder()
        .image_id(an_ami(&moto).await)
        .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
        .metadata_options(
            LaunchTemplateInstanceMetadataOptionsRequest::builder()
                .http_endpoint(LaunchTemplateInstanceMetadataEndpointState::Enabled)
                .http_tokens(LaunchTemplateHttpTokensState::Required)
                .http_put_response_hop_limit(1)
                .instance_metadata_tags(LaunchTemplateInstanceMetadataTagsState::Enabled)
                .build(),
        )
        .tag_specifications(tagged(ResourceType::Instance))
        .tag_specifications(tagged(ResourceType::Volume))
        .build();
    let id = operator_template(&moto, "complete-lt", Some("complete"), data).await;
    let run = Launcher::new(&moto.endpoint())
        .args([
            "--compute-environment",
            "complete",
            "--count",
            "1",
            "--duration",
            "2h",
            "--launch-template",
            "complete-lt",
            "--output",
            "json",
        ])
        .run();
    let report = json(&run);
    assert_eq!(report["launch_template"]["origin"], "as-given");
    assert_eq!(report["launch_template"]["version"], 1);
    assert!(calls(&moto, "CreateLaunchTemplateVersion").is_empty());
    assert!(calls(&moto, "DeleteLaunchTemplateVersions").is_empty());
    assert_eq!(versions(&moto, &id).await.len(), 1);
    let launched = instances(&moto).await.unwrap();
    assert_eq!(launched.len(), 1);
    assert!(launched[0]
        .tags()
        .iter()
        .any(|t| t.key() == Some("Name") && t.value() == Some("mine")));
}

/// Refused with exit 10 and one line holding `needle`; nothing launched and
/// no version written.
async fn assert_refused(moto: &MotoServer, template: &str, needle: &str) {
    let run = launch(moto, template, &[]);
    assert_eq!(run.code, 10, "{template}: {}", run.stderr);
    assert!(run.stderr.contains(needle), "{template}: {}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "one line: {}", run.stderr);
    assert!(instances(moto).await.unwrap().is_empty());
    assert!(calls(moto, "CreateLaunchTemplateVersion").is_empty());
    assert!(calls(moto, "CreateFleet").is_empty());
}

fn metadata(
    endpoint: Option<LaunchTemplateInstanceMetadataEndpointState>,
    tags: Option<LaunchTemplateInstanceMetadataTagsState>,
) -> LaunchTemplateInstanceMetadataOptionsRequest {
    LaunchTemplateInstanceMetadataOptionsRequest::builder()
        .set_http_endpoint(endpoint)
        .set_instance_metadata_tags(tags)
        .build()
}

#[tokio::test]
async fn templates_that_cannot_join_or_are_not_ours_are_refused_before_anything_is_written() {
    let moto = moto_with_ce().await;
    let ami = an_ami(&moto).await;
    let bare = || RequestLaunchTemplateData::builder().image_id(&ami);

    assert_refused(
        &moto,
        "nobody-has-this",
        "--launch-template nobody-has-this:$Default: not found",
    )
    .await;
    operator_template(&moto, "untagged", None, bare().build()).await;
    assert_refused(
        &moto,
        "untagged",
        "does not carry the tag blockwatch:compute-environment=research",
    )
    .await;
    operator_template(&moto, "other-ce", Some("other"), bare().build()).await;
    assert_refused(&moto, "other-ce", "does not carry the tag").await;
    assert_refused(&moto, "other-ce:9", "not found").await;

    let no_imds = bare()
        .metadata_options(metadata(
            Some(LaunchTemplateInstanceMetadataEndpointState::Disabled),
            None,
        ))
        .build();
    operator_template(&moto, "no-imds", Some("research"), no_imds).await;
    assert_refused(&moto, "no-imds", "disable IMDS (HttpEndpoint=disabled)").await;

    let hidden = || {
        metadata(
            None,
            Some(LaunchTemplateInstanceMetadataTagsState::Disabled),
        )
    };
    operator_template(
        &moto,
        "hidden-no-profile",
        Some("research"),
        bare().metadata_options(hidden()).build(),
    )
    .await;
    assert_refused(&moto, "hidden-no-profile", "it has no instance profile").await;

    // A role that may describe instances, but not their tags.
    let profile = moto
        .create_instance_profile("no-describe-tags")
        .await
        .unwrap();
    let iam = aws_sdk_iam::Client::new(moto.sdk());
    iam.put_role_policy()
        .role_name("no-describe-tags")
        .policy_name("describe")
        .policy_document(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ec2:DescribeInstances","Resource":"*"}]}"#,
        )
        .send()
        .await
        .unwrap();
    let by_arn = LaunchTemplateIamInstanceProfileSpecificationRequest::builder()
        .arn(&profile)
        .build();
    operator_template(
        &moto,
        "hidden-no-permission",
        Some("research"),
        bare()
            .metadata_options(hidden())
            .iam_instance_profile(by_arn)
            .build(),
    )
    .await;
    assert_refused(
        &moto,
        "hidden-no-permission",
        "its instance role arn:aws:iam::123456789012:role/no-describe-tags may not call ec2:DescribeTags (IAM policy simulator: implicitDeny)",
    )
    .await;
    assert_eq!(calls(&moto, "SimulatePrincipalPolicy").len(), 1);

    // IAM out of reach is a transient failure (exit 75), not a refusal, and
    // writes nothing either.
    let run = Launcher::new(&moto.endpoint())
        .env("AWS_ENDPOINT_URL_IAM", "http://127.0.0.1:1")
        .launch(1, "2h")
        .args(["--launch-template", "hidden-no-permission"])
        .run();
    run.assert_exit(75)
        .assert_stderr_has("iam:GetInstanceProfile");
    assert!(calls(&moto, "CreateLaunchTemplateVersion").is_empty());

    // Flags the template carries are refused before any call.
    let run = launch(&moto, "untagged", &["--key-name", "ops"]);
    run.assert_exit(2)
        .assert_stderr_has("the template carries its key pair (--key-name)");
}

#[tokio::test]
async fn hidden_tags_are_kept_when_the_role_may_describe_them() {
    let moto = moto_with_ce().await;
    moto.create_instance_profile("reads-tags").await.unwrap();
    aws_sdk_iam::Client::new(moto.sdk())
        .put_role_policy()
        .role_name("reads-tags")
        .policy_name("agent")
        .policy_document(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["ec2:DescribeTags","ec2:DescribeInstances"],"Resource":"*"}]}"#,
        )
        .send()
        .await
        .unwrap();
    let data = RequestLaunchTemplateData::builder()
        .image_id(an_ami(&moto).await)
        .iam_instance_profile(
            LaunchTemplateIamInstanceProfileSpecificationRequest::builder()
                .name("reads-tags")
                .build(),
        )
        .metadata_options(metadata(
            None,
            Some(LaunchTemplateInstanceMetadataTagsState::Disabled),
        ))
        .build();
    let id = operator_template(&moto, "private-tags", Some("research"), data).await;
    let report = json(&launch(&moto, "private-tags", &["--keep-template"]));
    assert_eq!(report["launch_template"]["origin"], "created");
    assert_eq!(calls(&moto, "SimulatePrincipalPolicy").len(), 1);
    let all = versions(&moto, &id).await;
    assert_eq!(
        all[1]
            .2
            .metadata_options()
            .unwrap()
            .instance_metadata_tags(),
        Some(&LaunchTemplateInstanceMetadataTagsState::Disabled),
        "the operator's choice is kept"
    );
    assert_eq!(instances(&moto).await.unwrap().len(), 2);
}
