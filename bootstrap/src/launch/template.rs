//! The launch template every instance of a launch starts from: what the
//! instances carry (tags on instance and volumes, metadata options, shutdown
//! behaviour, instance profile, user data, key, security groups) lives here
//! and only here. EC2 Fleet takes these only from a template.
//!
//! A template is reused by content: one kept with `--keep-template` carries
//! the tag `blockwatch:template-hash`, a hash of its data, and a later launch
//! with the same data launches from it instead of creating another. A
//! template the launcher created without `--keep-template` is deleted once
//! the launch is over (instances do not need it after they launched); a
//! reused one is never deleted.

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::builders::RequestLaunchTemplateDataBuilder;
use aws_sdk_ec2::types::{
    CapacityReservationTarget, Filter, LaunchTemplateCapacityReservationSpecificationRequest,
    LaunchTemplateHttpTokensState, LaunchTemplateIamInstanceProfileSpecificationRequest,
    LaunchTemplateInstanceMarketOptionsRequest, LaunchTemplateInstanceMetadataEndpointState,
    LaunchTemplateInstanceMetadataOptionsRequest, LaunchTemplateInstanceMetadataTagsState,
    LaunchTemplateSpecification, LaunchTemplateTagSpecificationRequest, MarketType,
    RequestLaunchTemplateData, ResourceType, Tag, TagSpecification,
};
use aws_sdk_ec2::Client as Ec2;
use blockwatch_aws::classify;
use blockwatch_core::tags::TAG_COMPUTE_ENVIRONMENT;
use serde::Serialize;

use super::{LaunchError, SHUTDOWN_BEHAVIOR};
use crate::plan::{Market, Plan};

/// The tag holding [`Content::hash`] on a kept template.
pub const TAG_TEMPLATE_HASH: &str = "blockwatch:template-hash";

/// What the template holds, in a stable order, so that its hash names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(super) struct Content {
    ami: String,
    tags: Vec<(String, String)>,
    imds_hop_limit: i32,
    instance_profile: Option<String>,
    /// Not yet base64.
    user_data: Option<String>,
    key_name: Option<String>,
    security_groups: Vec<String>,
    shutdown_behavior: &'static str,
    /// A Capacity Block's reservation: EC2 Fleet takes the market and the
    /// reservation only from the template.
    capacity_block: Option<String>,
}

impl Content {
    pub(super) fn new(plan: &Plan, ami: &str, tags: &[(String, String)], cluster: &str) -> Self {
        Self {
            ami: ami.to_owned(),
            tags: tags.to_vec(),
            imds_hop_limit: plan.imds_hop_limit,
            instance_profile: plan.instance_profile.clone(),
            user_data: plan.user_data(cluster),
            key_name: plan.key_name.clone(),
            security_groups: plan.security_groups.clone(),
            shutdown_behavior: SHUTDOWN_BEHAVIOR.as_str(),
            capacity_block: match plan.market {
                Market::CapacityBlock => plan.capacity_reservation_id.clone(),
                Market::Spot | Market::OnDemand => None,
            },
        }
    }

    pub(super) fn hash(&self) -> String {
        content_hash(self)
    }

    /// The template's data, as EC2 takes it.
    fn data(&self) -> RequestLaunchTemplateData {
        let mut data = RequestLaunchTemplateData::builder()
            .image_id(&self.ami)
            .metadata_options(
                LaunchTemplateInstanceMetadataOptionsRequest::builder()
                    .http_tokens(LaunchTemplateHttpTokensState::Required)
                    .http_endpoint(LaunchTemplateInstanceMetadataEndpointState::Enabled)
                    .instance_metadata_tags(LaunchTemplateInstanceMetadataTagsState::Enabled)
                    .http_put_response_hop_limit(self.imds_hop_limit)
                    .build(),
            )
            .instance_initiated_shutdown_behavior(SHUTDOWN_BEHAVIOR)
            .set_key_name(self.key_name.clone());
        // The volumes carry the tags too, so that they are found and billed
        // with their instance.
        for resource in [ResourceType::Instance, ResourceType::Volume] {
            data = data.tag_specifications(tag_specification(resource, &self.tags));
        }
        if !self.security_groups.is_empty() {
            data = data.set_security_group_ids(Some(self.security_groups.clone()));
        }
        if let Some(profile) = &self.instance_profile {
            let spec = LaunchTemplateIamInstanceProfileSpecificationRequest::builder();
            let spec = if profile.starts_with("arn:") {
                spec.arn(profile)
            } else {
                spec.name(profile)
            };
            data = data.iam_instance_profile(spec.build());
        }
        if let Some(reservation) = &self.capacity_block {
            data = in_capacity_block(data, reservation);
        }
        if let Some(script) = &self.user_data {
            data = data.user_data(aws_smithy_types::base64::encode(script.as_bytes()));
        }
        data.build()
    }
}

/// 16 hex digits of FNV-1a over `content`'s JSON: a name for equal content,
/// not a secret.
pub(super) fn content_hash(content: &impl Serialize) -> String {
    let json = serde_json::to_string(content).unwrap_or_default();
    let hash = json.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// Tags for one resource type, as a template carries them.
pub(super) fn tag_specification(
    resource: ResourceType,
    tags: &[(String, String)],
) -> LaunchTemplateTagSpecificationRequest {
    let mut spec = LaunchTemplateTagSpecificationRequest::builder().resource_type(resource);
    for (key, value) in tags {
        spec = spec.tags(Tag::builder().key(key).value(value).build());
    }
    spec.build()
}

/// A Capacity Block's market and reservation: EC2 Fleet takes them only from
/// the template.
pub(super) fn in_capacity_block(
    data: RequestLaunchTemplateDataBuilder,
    reservation: &str,
) -> RequestLaunchTemplateDataBuilder {
    data.instance_market_options(
        LaunchTemplateInstanceMarketOptionsRequest::builder()
            .market_type(MarketType::CapacityBlock)
            .build(),
    )
    .capacity_reservation_specification(
        LaunchTemplateCapacityReservationSpecificationRequest::builder()
            .capacity_reservation_target(
                CapacityReservationTarget::builder()
                    .capacity_reservation_id(reservation)
                    .build(),
            )
            .build(),
    )
}

/// The template a launch uses, as the plan reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LaunchTemplate {
    pub id: String,
    pub name: String,
    pub version: i64,
    /// `created` by this launch, or `reused` (a kept one with the same content).
    pub origin: Origin,
    /// False: the launcher deletes it once the launch is over.
    pub kept: bool,
    /// With `--launch-template`: the operator's version that `version`
    /// extends (the same number when it is used as given). None: the
    /// launcher's own template.
    pub based_on: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    Created,
    Reused,
    /// The operator's version already carries what blockwatch needs.
    AsGiven,
}

impl LaunchTemplate {
    /// The version to launch from, pinned: a later version of a shared
    /// template does not change what this launch started.
    pub(super) fn specification(&self) -> LaunchTemplateSpecification {
        LaunchTemplateSpecification::builder()
            .launch_template_id(&self.id)
            .version(self.version.to_string())
            .build()
    }

    /// Whether the launcher deletes it when the launch is over.
    pub(super) fn to_delete(&self) -> bool {
        self.origin == Origin::Created && !self.kept
    }
}

/// A kept template with this content, else a new one. `keep` tags the new
/// one for reuse; otherwise its name is unique to this launch (`stamp`).
pub(super) async fn ensure(
    ec2: &Ec2,
    content: &Content,
    compute_environment: &str,
    keep: bool,
    stamp: i128,
) -> Result<LaunchTemplate, LaunchError> {
    let hash = content.hash();
    let found = ec2
        .describe_launch_templates()
        .filters(
            Filter::builder()
                .name(format!("tag:{TAG_TEMPLATE_HASH}"))
                .values(&hash)
                .build(),
        )
        .send()
        .await
        .map_err(|e| classify("ec2:DescribeLaunchTemplates", &e))?;
    if let Some(reused) = found.launch_templates().first() {
        return Ok(LaunchTemplate {
            id: reused.launch_template_id().unwrap_or_default().to_owned(),
            name: reused.launch_template_name().unwrap_or_default().to_owned(),
            version: reused.latest_version_number().unwrap_or(1),
            origin: Origin::Reused,
            kept: true,
            based_on: None,
        });
    }
    let name = if keep {
        format!("blockwatch-{hash}")
    } else {
        format!("blockwatch-{hash}-{stamp}")
    };
    let mut tags = TagSpecification::builder()
        .resource_type(ResourceType::LaunchTemplate)
        .tags(
            Tag::builder()
                .key(TAG_COMPUTE_ENVIRONMENT)
                .value(compute_environment)
                .build(),
        );
    if keep {
        tags = tags.tags(Tag::builder().key(TAG_TEMPLATE_HASH).value(&hash).build());
    }
    let created = ec2
        .create_launch_template()
        .launch_template_name(&name)
        .launch_template_data(content.data())
        .tag_specifications(tags.build())
        .send()
        .await
        .map_err(|e| classify("ec2:CreateLaunchTemplate", &e))?;
    let template = created.launch_template();
    Ok(LaunchTemplate {
        id: template
            .and_then(|t| t.launch_template_id())
            .unwrap_or_default()
            .to_owned(),
        name,
        version: template
            .and_then(|t| t.latest_version_number())
            .unwrap_or(1),
        origin: Origin::Created,
        kept: keep,
        based_on: None,
    })
}

/// Deletes a template (or, on the operator's template, the version) this
/// launch created and did not keep. A failure is a warning: the instances
/// launched (or not) all the same.
pub(super) async fn clean_up(ec2: &Ec2, template: &LaunchTemplate) -> Option<String> {
    if !template.to_delete() {
        return None;
    }
    if template.based_on.is_some() {
        match ec2
            .delete_launch_template_versions()
            .launch_template_id(&template.id)
            .versions(template.version.to_string())
            .send()
            .await
        {
            Ok(answer) => answer
                .unsuccessfully_deleted_launch_template_versions()
                .first()
                .map(|failed| {
                    let error = failed.response_error();
                    format!(
                        "{}: {}",
                        error
                            .and_then(|e| e.code())
                            .map_or("no code", |c| c.as_str()),
                        error.and_then(|e| e.message()).unwrap_or_default()
                    )
                }),
            Err(err) => Some(err.code().unwrap_or("no code").to_owned()),
        }
        .map(|why| {
            format!(
                "could not delete version {} of launch template {} ({}): ec2:DeleteLaunchTemplateVersions: {why}; delete it by hand",
                template.version, template.name, template.id
            )
        })
    } else {
        ec2.delete_launch_template()
            .launch_template_id(&template.id)
            .send()
            .await
            .err()
            .map(|err| {
                format!(
                    "could not delete launch template {} ({}): ec2:DeleteLaunchTemplate: {}; delete it by hand",
                    template.name,
                    template.id,
                    err.code().unwrap_or("no code")
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Request;

    fn content(duration: &str) -> Content {
        let plan = Request {
            compute_environment: "ce".into(),
            count: 1,
            duration: duration.into(),
            ..Request::default()
        }
        .validate()
        .unwrap();
        let tags = vec![("blockwatch:lease-duration".to_owned(), duration.to_owned())];
        Content::new(&plan, "ami-1", &tags, "ce_Batch_1")
    }

    #[test]
    fn equal_content_has_one_hash_and_any_change_another() {
        assert_eq!(content("3h").hash(), content("3h").hash());
        assert_ne!(content("3h").hash(), content("4h").hash());
        assert_eq!(content("3h").hash().len(), 16);
    }

    #[test]
    fn only_a_created_template_not_kept_is_deleted() {
        let template = |origin, kept| LaunchTemplate {
            id: "lt-1".into(),
            name: "n".into(),
            version: 1,
            origin,
            kept,
            based_on: None,
        };
        assert!(template(Origin::Created, false).to_delete());
        assert!(!template(Origin::Created, true).to_delete());
        assert!(!template(Origin::Reused, true).to_delete());
        assert!(!template(Origin::AsGiven, true).to_delete());
    }
}
