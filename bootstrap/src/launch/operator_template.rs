//! `--launch-template`: the instances start from the operator's own launch
//! template. The launcher adds one version, based on the chosen one with
//! `SourceVersion`, that changes only what blockwatch needs:
//! - the blockwatch tags on instance and volumes (other tags stay; `Name`
//!   only when the template has none);
//! - shutdown behaviour `terminate`, so that a power-off ends the instance;
//! - the metadata options the template leaves unset: IMDS on, IMDSv2
//!   required, the hop limit, instance tags in IMDS;
//! - the AMI with `--ami` (or from SSM when the template has none), a
//!   Capacity Block's market and reservation.
//!
//! Whatever the operator set stays: a template that disables IMDS is refused,
//! and one that hides tags from IMDS is used only when its instance role may
//! call `ec2:DescribeTags` (the agent's fallback), which IAM's policy
//! simulator answers. A version that adds nothing is not made: the chosen
//! one is used as given. A kept version (`--keep-template`) is reused by its
//! description, which holds a hash of what it adds and what it is based on.

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    LaunchTemplateHttpTokensState, LaunchTemplateInstanceMetadataEndpointState,
    LaunchTemplateInstanceMetadataOptionsRequest, LaunchTemplateInstanceMetadataProtocolIpv6,
    LaunchTemplateInstanceMetadataTagsState, RequestLaunchTemplateData, ResourceType,
    ResponseLaunchTemplateData,
};
use aws_sdk_ec2::Client as Ec2;
use aws_sdk_iam::types::PolicyEvaluationDecisionType;
use blockwatch_aws::{classify, AwsFailure, CallError};
use blockwatch_core::tags::TAG_COMPUTE_ENVIRONMENT;
use serde::Serialize;

use super::template::{content_hash, in_capacity_block, tag_specification, LaunchTemplate, Origin};
use super::{LaunchError, SHUTDOWN_BEHAVIOR};
use crate::plan::{TemplateKey, TemplateSelector};

/// The action the agent falls back to when IMDS does not show tags.
const DESCRIBE_TAGS: &str = "ec2:DescribeTags";

/// Why the operator's template cannot be used. Nothing was launched.
#[derive(Debug, thiserror::Error)]
pub enum TemplateRefused {
    #[error("--launch-template {selector}: not found ({detail})")]
    NotFound { selector: String, detail: String },
    #[error("--launch-template {template}: the template does not carry the tag {TAG_COMPUTE_ENVIRONMENT}={compute_environment}. Tag it (ec2 create-tags --resources {id} --tags Key={TAG_COMPUTE_ENVIRONMENT},Value={compute_environment}): the launcher's IAM policy launches from and adds versions to only templates so tagged, and the tag says the launcher may add versions to it")]
    NotTagged {
        template: String,
        id: String,
        compute_environment: String,
    },
    #[error("--launch-template {template}: its metadata options disable IMDS (HttpEndpoint=disabled); the agent reads the instance's id, region and tags there and cannot join. Set HttpEndpoint=enabled in a version of the template")]
    ImdsDisabled { template: String },
    #[error("--launch-template {template}: its metadata options hide instance tags from IMDS (InstanceMetadataTags=disabled) and it has no instance profile, so the agent cannot read its tags with {DESCRIBE_TAGS} either and cannot join. Enable InstanceMetadataTags, or add an instance profile whose role may call {DESCRIBE_TAGS}")]
    TagsHiddenNoProfile { template: String },
    #[error("--launch-template {template}: its metadata options hide instance tags from IMDS (InstanceMetadataTags=disabled) and its instance role {role} may not call {DESCRIBE_TAGS} (IAM policy simulator: {decision}), so the agent cannot read its tags and cannot join. Enable InstanceMetadataTags, or allow {DESCRIBE_TAGS} to the role (bootstrap/iam/agent-policy.json)")]
    TagsHiddenNotAllowed {
        template: String,
        role: String,
        decision: String,
    },
    #[error("--launch-template {template}: its metadata options hide instance tags from IMDS (InstanceMetadataTags=disabled), and whether its instance role may call {DESCRIBE_TAGS} could not be checked ({detail}). Enable InstanceMetadataTags, or let the launcher call iam:GetInstanceProfile and iam:SimulatePrincipalPolicy (bootstrap/iam/launcher-policy.json)")]
    TagsHiddenUnchecked { template: String, detail: String },
}

/// The operator's template and the version chosen, as EC2 describes them.
#[derive(Debug, Clone)]
pub(super) struct Source {
    pub id: String,
    pub name: String,
    pub version: i64,
    pub tags: Vec<(String, String)>,
    pub data: ResponseLaunchTemplateData,
}

impl Source {
    /// `name (lt-…) version N`, for messages.
    pub(super) fn label(&self) -> String {
        format!("{} ({}) version {}", self.name, self.id, self.version)
    }

    pub(super) fn instance_type(&self) -> Option<String> {
        self.data.instance_type().map(|t| t.as_str().to_owned())
    }

    pub(super) fn image_id(&self) -> Option<&str> {
        self.data.image_id().filter(|i| !i.is_empty())
    }

    pub(super) fn has_user_data(&self) -> bool {
        self.data.user_data().is_some_and(|u| !u.is_empty())
    }

    /// Refused unless it carries the compute environment's tag.
    pub(super) fn check_tagged(&self, compute_environment: &str) -> Result<(), TemplateRefused> {
        let tagged = self
            .tags
            .iter()
            .any(|(k, v)| k == TAG_COMPUTE_ENVIRONMENT && v == compute_environment);
        if tagged {
            Ok(())
        } else {
            Err(TemplateRefused::NotTagged {
                template: self.name.clone(),
                id: self.id.clone(),
                compute_environment: compute_environment.to_owned(),
            })
        }
    }
}

/// The template and the version `selector` names. An unknown template or
/// version is refused; other failures are AWS errors.
pub(super) async fn find(ec2: &Ec2, selector: &TemplateSelector) -> Result<Source, LaunchError> {
    let not_found = |code: &str, message: Option<&str>| {
        LaunchError::Template(TemplateRefused::NotFound {
            selector: selector.to_string(),
            detail: format!("{code}: {}", message.unwrap_or_default()),
        })
    };
    let templates = match &selector.template {
        TemplateKey::Id(id) => ec2.describe_launch_templates().launch_template_ids(id),
        TemplateKey::Name(name) => ec2.describe_launch_templates().launch_template_names(name),
    }
    .send()
    .await
    .map_err(|e| lookup_failed("ec2:DescribeLaunchTemplates", &e, selector))?;
    let Some(template) = templates.launch_templates().first() else {
        return Err(not_found("no such template", None));
    };
    let id = template.launch_template_id().unwrap_or_default().to_owned();
    let versions = ec2
        .describe_launch_template_versions()
        .launch_template_id(&id)
        .versions(selector.version.as_api())
        .send()
        .await
        .map_err(|e| lookup_failed("ec2:DescribeLaunchTemplateVersions", &e, selector))?;
    let Some(version) = versions.launch_template_versions().first() else {
        return Err(not_found("no such version", None));
    };
    Ok(Source {
        id,
        name: template
            .launch_template_name()
            .unwrap_or_default()
            .to_owned(),
        version: version.version_number().unwrap_or(1),
        tags: template
            .tags()
            .iter()
            .map(|t| {
                (
                    t.key().unwrap_or_default().to_owned(),
                    t.value().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
        data: version
            .launch_template_data()
            .cloned()
            .unwrap_or_else(|| ResponseLaunchTemplateData::builder().build()),
    })
}

/// Tags by resource type (`instance`, `volume`, ...), in the template's order.
type TagsByResource = Vec<(String, Vec<(String, String)>)>;

/// EC2's codes for an unknown (or malformed) template or version are a
/// refusal; other failures are AWS errors.
fn lookup_failed<E>(
    api: &'static str,
    err: &SdkError<E, HttpResponse>,
    selector: &TemplateSelector,
) -> LaunchError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err.code() {
        Some(code) if code.starts_with("InvalidLaunchTemplate") => {
            LaunchError::Template(TemplateRefused::NotFound {
                selector: selector.to_string(),
                detail: format!("{code}: {}", err.message().unwrap_or_default()),
            })
        }
        _ => classify(api, err).into(),
    }
}

/// What blockwatch wants every instance to have.
#[derive(Debug, Clone)]
pub(super) struct Wanted<'a> {
    pub tags: &'a [(String, String)],
    /// `--ami`, or the SSM default when the template has no image.
    pub ami: Option<&'a str>,
    pub imds_hop_limit: i32,
    pub capacity_block: Option<&'a str>,
}

/// The metadata options of the new version, whole: a version based on
/// another replaces each top-level setting it gives, so what the operator
/// set is copied alongside what is filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Metadata {
    http_endpoint: String,
    http_tokens: String,
    hop_limit: i32,
    protocol_ipv6: Option<String>,
    instance_metadata_tags: String,
}

/// What the new version changes, in a stable order, so that its hash names it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(super) struct Additions {
    image_id: Option<String>,
    /// Every resource type's tags, whole (see [`Metadata`]).
    tag_specifications: Option<TagsByResource>,
    metadata: Option<Metadata>,
    shutdown_terminate: bool,
    capacity_block: Option<String>,
}

/// [`additions`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Extension {
    pub additions: Additions,
    /// The HttpPutResponseHopLimit the instances get.
    pub imds_hop_limit: i32,
    /// The tags the instances get: the template's with blockwatch's.
    pub instance_tags: Vec<(String, String)>,
    /// The template hides tags from IMDS on purpose: the agent then needs
    /// `ec2:DescribeTags`.
    pub tags_hidden: bool,
    pub warnings: Vec<String>,
}

/// What the version based on `source` must change so that its instances
/// join and end as blockwatch expects. Pure.
pub(super) fn additions(
    source: &Source,
    wanted: &Wanted<'_>,
) -> Result<Extension, TemplateRefused> {
    let data = &source.data;
    let options = data.metadata_options();
    if options.and_then(|o| o.http_endpoint())
        == Some(&LaunchTemplateInstanceMetadataEndpointState::Disabled)
    {
        return Err(TemplateRefused::ImdsDisabled {
            template: source.label(),
        });
    }
    let tags_state = options.and_then(|o| o.instance_metadata_tags()).cloned();
    let metadata = Metadata {
        http_endpoint: LaunchTemplateInstanceMetadataEndpointState::Enabled
            .as_str()
            .to_owned(),
        http_tokens: options
            .and_then(|o| o.http_tokens())
            .unwrap_or(&LaunchTemplateHttpTokensState::Required)
            .as_str()
            .to_owned(),
        hop_limit: options
            .and_then(|o| o.http_put_response_hop_limit())
            .unwrap_or(wanted.imds_hop_limit),
        protocol_ipv6: options
            .and_then(|o| o.http_protocol_ipv6())
            .map(|p| p.as_str().to_owned()),
        instance_metadata_tags: tags_state
            .clone()
            .unwrap_or(LaunchTemplateInstanceMetadataTagsState::Enabled)
            .as_str()
            .to_owned(),
    };
    // Nothing to fill in: the operator set all of it.
    let metadata_complete = options.is_some_and(|o| {
        o.http_endpoint().is_some()
            && o.http_tokens().is_some()
            && o.http_put_response_hop_limit().is_some()
            && o.instance_metadata_tags().is_some()
    });
    let mut warnings = Vec::new();
    let shutdown = data.instance_initiated_shutdown_behavior();
    let shutdown_terminate = shutdown != Some(&SHUTDOWN_BEHAVIOR);
    if let Some(other) = shutdown.filter(|s| **s != SHUTDOWN_BEHAVIOR) {
        warnings.push(format!(
            "launch template {}: shutdown behaviour {} replaced by {} in the version launched, so that a power-off at the lease end ends the instance and its billing",
            source.label(),
            other.as_str(),
            SHUTDOWN_BEHAVIOR.as_str()
        ));
    }
    let specs = merged_tags(data, wanted.tags);
    let instance_tags = specs
        .iter()
        .find(|(resource, _)| resource == ResourceType::Instance.as_str())
        .map(|(_, tags)| tags.clone())
        .unwrap_or_default();
    let tag_specifications = (specs != current_tags(data)).then_some(specs);
    Ok(Extension {
        additions: Additions {
            image_id: wanted
                .ami
                .filter(|ami| source.image_id() != Some(*ami))
                .map(str::to_owned),
            tag_specifications,
            metadata: (!metadata_complete).then(|| metadata.clone()),
            shutdown_terminate,
            capacity_block: wanted.capacity_block.map(str::to_owned),
        },
        imds_hop_limit: metadata.hop_limit,
        instance_tags,
        tags_hidden: tags_state == Some(LaunchTemplateInstanceMetadataTagsState::Disabled),
        warnings,
    })
}

/// The template's tags by resource type, in its order.
fn current_tags(data: &ResponseLaunchTemplateData) -> TagsByResource {
    data.tag_specifications()
        .iter()
        .map(|spec| {
            (
                spec.resource_type()
                    .map(|r| r.as_str().to_owned())
                    .unwrap_or_default(),
                spec.tags()
                    .iter()
                    .map(|t| {
                        (
                            t.key().unwrap_or_default().to_owned(),
                            t.value().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect(),
            )
        })
        .collect()
}

/// The template's tags with blockwatch's on instance and volume: a
/// `blockwatch:` tag is always blockwatch's value; another (`Name`) is added
/// only where the template has none of that key.
fn merged_tags(data: &ResponseLaunchTemplateData, wanted: &[(String, String)]) -> TagsByResource {
    let mut specs = current_tags(data);
    for resource in [ResourceType::Instance, ResourceType::Volume] {
        let index = match specs.iter().position(|(r, _)| r == resource.as_str()) {
            Some(index) => index,
            None => {
                specs.push((resource.as_str().to_owned(), Vec::new()));
                specs.len() - 1
            }
        };
        let tags = &mut specs[index].1;
        for (key, value) in wanted {
            match tags.iter_mut().find(|(k, _)| k == key) {
                Some(existing) if key.starts_with("blockwatch:") => existing.1.clone_from(value),
                Some(_) => {}
                None => tags.push((key.clone(), value.clone())),
            }
        }
    }
    specs
}

impl Additions {
    pub(super) fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The version's description, which names what it adds to which version:
    /// `blockwatch <16 hex digits>`.
    fn description(&self, source: &Source) -> String {
        let hash = content_hash(&(&source.id, source.version, self));
        format!("blockwatch {hash}")
    }

    /// The new version's data: only what changes.
    fn data(&self) -> RequestLaunchTemplateData {
        let mut data = RequestLaunchTemplateData::builder().set_image_id(self.image_id.clone());
        if self.shutdown_terminate {
            data = data.instance_initiated_shutdown_behavior(SHUTDOWN_BEHAVIOR);
        }
        if let Some(metadata) = &self.metadata {
            data = data.metadata_options(
                LaunchTemplateInstanceMetadataOptionsRequest::builder()
                    .http_endpoint(metadata.http_endpoint.as_str().into())
                    .http_tokens(metadata.http_tokens.as_str().into())
                    .http_put_response_hop_limit(metadata.hop_limit)
                    .set_http_protocol_ipv6(
                        metadata
                            .protocol_ipv6
                            .as_deref()
                            .map(LaunchTemplateInstanceMetadataProtocolIpv6::from),
                    )
                    .instance_metadata_tags(metadata.instance_metadata_tags.as_str().into())
                    .build(),
            );
        }
        for (resource, tags) in self.tag_specifications.iter().flatten() {
            data = data.tag_specifications(tag_specification(resource.as_str().into(), tags));
        }
        if let Some(reservation) = &self.capacity_block {
            data = in_capacity_block(data, reservation);
        }
        data.build()
    }
}

/// The version to launch from: the operator's as given when nothing needs
/// adding, a kept version with the same additions, or a new one.
pub(super) async fn ensure_version(
    ec2: &Ec2,
    source: &Source,
    additions: &Additions,
    keep: bool,
    stamp: i128,
) -> Result<LaunchTemplate, LaunchError> {
    let template = |version, origin, kept| LaunchTemplate {
        id: source.id.clone(),
        name: source.name.clone(),
        version,
        origin,
        kept,
        based_on: Some(source.version),
    };
    if additions.is_empty() {
        return Ok(template(source.version, Origin::AsGiven, true));
    }
    let description = additions.description(source);
    let mut pages = ec2
        .describe_launch_template_versions()
        .launch_template_id(&source.id)
        .max_results(200)
        .into_paginator()
        .items()
        .send();
    while let Some(version) = pages.next().await {
        let version = version.map_err(|e| classify("ec2:DescribeLaunchTemplateVersions", &e))?;
        if version.version_description() == Some(description.as_str()) {
            return Ok(template(
                version.version_number().unwrap_or_default(),
                Origin::Reused,
                true,
            ));
        }
    }
    // A version that is deleted afterwards is not found for reuse by another launch.
    let description = if keep {
        description
    } else {
        format!("{description} {stamp}")
    };
    let created = ec2
        .create_launch_template_version()
        .launch_template_id(&source.id)
        .source_version(source.version.to_string())
        .version_description(description)
        .launch_template_data(additions.data())
        .send()
        .await
        .map_err(|e| classify("ec2:CreateLaunchTemplateVersion", &e))?;
    let version = created
        .launch_template_version()
        .and_then(|v| v.version_number())
        .unwrap_or_default();
    Ok(template(version, Origin::Created, keep))
}

/// A template that hides tags from IMDS joins only if its role may call
/// `ec2:DescribeTags`: asked of IAM's policy simulator for the template's
/// instance profile's role (identity policies, permissions boundary, and
/// the organization's SCPs where there are any).
pub(super) async fn check_describe_tags(
    iam: &aws_sdk_iam::Client,
    source: &Source,
) -> Result<(), LaunchError> {
    let template = source.label();
    // Denied or refused (an unknown profile): the answer is the operator's to
    // give. Unreachable or throttled: the usual transient exit.
    let not_checkable = |err: CallError| match err {
        CallError::Aws {
            kind: AwsFailure::Denied | AwsFailure::Rejected,
            ..
        } => LaunchError::Template(TemplateRefused::TagsHiddenUnchecked {
            template: template.clone(),
            detail: err.to_string(),
        }),
        other => LaunchError::from(other),
    };
    let profile = source.data.iam_instance_profile();
    let Some(name) = profile.and_then(|p| {
        p.name()
            .or_else(|| p.arn().and_then(|arn| arn.rsplit('/').next()))
    }) else {
        return Err(LaunchError::Template(
            TemplateRefused::TagsHiddenNoProfile { template },
        ));
    };
    let found = iam
        .get_instance_profile()
        .instance_profile_name(name)
        .send()
        .await
        .map_err(|e| not_checkable(classify("iam:GetInstanceProfile", &e)))?;
    let Some(role) = found.instance_profile().and_then(|p| p.roles().first()) else {
        return Err(LaunchError::Template(
            TemplateRefused::TagsHiddenNoProfile { template },
        ));
    };
    let simulated = iam
        .simulate_principal_policy()
        .policy_source_arn(role.arn())
        .action_names(DESCRIBE_TAGS)
        .send()
        .await
        .map_err(|e| not_checkable(classify("iam:SimulatePrincipalPolicy", &e)))?;
    let decision = simulated
        .evaluation_results()
        .iter()
        .find(|r| r.eval_action_name() == DESCRIBE_TAGS)
        .map(|r| r.eval_decision().clone());
    match decision {
        Some(PolicyEvaluationDecisionType::Allowed) => Ok(()),
        other => Err(LaunchError::Template(
            TemplateRefused::TagsHiddenNotAllowed {
                template,
                role: role.arn().to_owned(),
                decision: other.map_or_else(|| "no answer".to_owned(), |d| d.as_str().to_owned()),
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::types::{
        LaunchTemplateInstanceMetadataOptions, LaunchTemplateTagSpecification, ShutdownBehavior,
        Tag,
    };

    use super::*;

    fn source(data: ResponseLaunchTemplateData) -> Source {
        Source {
            id: "lt-0123456789abcdef0".into(),
            name: "team".into(),
            version: 3,
            tags: vec![(TAG_COMPUTE_ENVIRONMENT.into(), "ce".into())],
            data,
        }
    }

    fn ours() -> Vec<(String, String)> {
        vec![
            (TAG_COMPUTE_ENVIRONMENT.into(), "ce".into()),
            ("blockwatch:lease-duration".into(), "3h".into()),
            ("Name".into(), "blockwatch-ce".into()),
        ]
    }

    fn wanted(tags: &[(String, String)]) -> Wanted<'_> {
        Wanted {
            tags,
            ami: None,
            imds_hop_limit: 1,
            capacity_block: None,
        }
    }

    fn complete() -> ResponseLaunchTemplateData {
        let tagged = |resource| {
            LaunchTemplateTagSpecification::builder()
                .resource_type(resource)
                .tags(
                    Tag::builder()
                        .key(TAG_COMPUTE_ENVIRONMENT)
                        .value("ce")
                        .build(),
                )
                .tags(
                    Tag::builder()
                        .key("blockwatch:lease-duration")
                        .value("3h")
                        .build(),
                )
                .tags(Tag::builder().key("Name").value("theirs").build())
                .build()
        };
        ResponseLaunchTemplateData::builder()
            .image_id("ami-1")
            .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
            .metadata_options(
                LaunchTemplateInstanceMetadataOptions::builder()
                    .http_endpoint(LaunchTemplateInstanceMetadataEndpointState::Enabled)
                    .http_tokens(LaunchTemplateHttpTokensState::Optional)
                    .http_put_response_hop_limit(2)
                    .instance_metadata_tags(LaunchTemplateInstanceMetadataTagsState::Enabled)
                    .build(),
            )
            .tag_specifications(tagged(ResourceType::Instance))
            .tag_specifications(tagged(ResourceType::Volume))
            .build()
    }

    #[test]
    fn a_template_with_everything_needs_no_version() {
        let tags = ours();
        let extension = additions(&source(complete()), &wanted(&tags)).unwrap();
        assert!(extension.additions.is_empty(), "{extension:?}");
        assert_eq!(extension.imds_hop_limit, 2);
        assert!(!extension.tags_hidden);
    }

    #[test]
    fn a_bare_template_gets_tags_shutdown_and_the_unset_metadata_options() {
        let tags = ours();
        let data = ResponseLaunchTemplateData::builder()
            .image_id("ami-1")
            .tag_specifications(
                LaunchTemplateTagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .tags(Tag::builder().key("team").value("genomics").build())
                    .tags(
                        Tag::builder()
                            .key(TAG_COMPUTE_ENVIRONMENT)
                            .value("old")
                            .build(),
                    )
                    .build(),
            )
            .tag_specifications(
                LaunchTemplateTagSpecification::builder()
                    .resource_type(ResourceType::NetworkInterface)
                    .tags(Tag::builder().key("eni").value("1").build())
                    .build(),
            )
            .metadata_options(
                LaunchTemplateInstanceMetadataOptions::builder()
                    .http_tokens(LaunchTemplateHttpTokensState::Optional)
                    .build(),
            )
            .build();
        let extension = additions(&source(data), &wanted(&tags)).unwrap();
        let added = &extension.additions;
        assert!(added.shutdown_terminate);
        assert_eq!(added.image_id, None, "the template's image stays");
        let metadata = added.metadata.clone().unwrap();
        assert_eq!(
            metadata.http_tokens, "optional",
            "the operator's choice stays"
        );
        assert_eq!(metadata.http_endpoint, "enabled");
        assert_eq!(metadata.hop_limit, 1);
        assert_eq!(metadata.instance_metadata_tags, "enabled");
        let specs = added.tag_specifications.clone().unwrap();
        let of = |resource: &str| specs.iter().find(|(r, _)| r == resource).unwrap().1.clone();
        assert_eq!(
            of("instance"),
            vec![
                ("team".into(), "genomics".into()),
                (TAG_COMPUTE_ENVIRONMENT.into(), "ce".into()),
                ("blockwatch:lease-duration".into(), "3h".into()),
                ("Name".into(), "blockwatch-ce".into()),
            ]
        );
        assert_eq!(of("volume"), ours());
        assert_eq!(of("network-interface"), vec![("eni".into(), "1".into())]);
        assert!(extension.warnings.is_empty());
    }

    #[test]
    fn shutdown_stop_is_replaced_with_a_warning() {
        let tags = ours();
        let mut data = complete();
        data.instance_initiated_shutdown_behavior = Some(ShutdownBehavior::Stop);
        let extension = additions(&source(data), &wanted(&tags)).unwrap();
        assert!(extension.additions.shutdown_terminate);
        assert!(extension.warnings[0].contains("shutdown behaviour stop replaced by terminate"));
        assert_eq!(extension.additions.metadata, None);
        assert_eq!(extension.additions.tag_specifications, None);
    }

    #[test]
    fn imds_disabled_is_refused_and_hidden_tags_are_flagged() {
        let tags = ours();
        let with_options = |options| {
            let mut data = complete();
            data.metadata_options = Some(options);
            additions(&source(data), &wanted(&tags))
        };
        let refused = with_options(
            LaunchTemplateInstanceMetadataOptions::builder()
                .http_endpoint(LaunchTemplateInstanceMetadataEndpointState::Disabled)
                .build(),
        );
        assert!(
            matches!(refused, Err(TemplateRefused::ImdsDisabled { .. })),
            "{refused:?}"
        );
        let hidden = with_options(
            LaunchTemplateInstanceMetadataOptions::builder()
                .instance_metadata_tags(LaunchTemplateInstanceMetadataTagsState::Disabled)
                .build(),
        )
        .unwrap();
        assert!(hidden.tags_hidden);
        assert_eq!(
            hidden.additions.metadata.unwrap().instance_metadata_tags,
            "disabled",
            "the operator's choice is kept, not overturned"
        );
    }

    #[test]
    fn the_description_names_what_is_added_to_which_version() {
        let tags = ours();
        let bare = source(ResponseLaunchTemplateData::builder().build());
        let one = additions(&bare, &wanted(&tags)).unwrap().additions;
        assert_eq!(one.description(&bare), one.description(&bare));
        assert!(one.description(&bare).starts_with("blockwatch "));
        let other_version = Source {
            version: 4,
            ..bare.clone()
        };
        assert_ne!(one.description(&bare), one.description(&other_version));
        let longer = vec![(
            String::from("blockwatch:lease-duration"),
            String::from("4h"),
        )];
        let two = additions(&bare, &wanted(&longer)).unwrap().additions;
        assert_ne!(one.description(&bare), two.description(&bare));
    }

    #[test]
    fn an_explicit_ami_is_added_only_when_it_differs() {
        let tags = ours();
        let mut want = wanted(&tags);
        want.ami = Some("ami-1");
        assert_eq!(
            additions(&source(complete()), &want)
                .unwrap()
                .additions
                .image_id,
            None
        );
        want.ami = Some("ami-2");
        assert_eq!(
            additions(&source(complete()), &want)
                .unwrap()
                .additions
                .image_id
                .as_deref(),
            Some("ami-2")
        );
    }
}
