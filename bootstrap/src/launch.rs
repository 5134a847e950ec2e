//! Launching: check the compute environment, pick the AMI, run the instances,
//! and optionally wait for them.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    CapacityReservationSpecification, CapacityReservationTarget, HttpTokensState,
    IamInstanceProfileSpecification, InstanceInterruptionBehavior, InstanceMarketOptionsRequest,
    InstanceMetadataEndpointState, InstanceMetadataOptionsRequest, InstanceMetadataTagsState,
    InstanceStateName, MarketType, ResourceType, ShutdownBehavior, SpotInstanceType,
    SpotMarketOptions, Tag, TagSpecification,
};
use aws_sdk_ec2::Client as Ec2;
use blockwatch_aws::classify;
use blockwatch_aws::to_time;
use blockwatch_aws::{AwsFailure, CallError};
use blockwatch_core::compute_environment::{cluster_of, Refusal};
use blockwatch_core::deadline::CAPACITY_BLOCK_TERMINATION_LEAD;
use blockwatch_core::tags::{
    TAG_CLUSTER, TAG_COMPUTE_ENVIRONMENT, TAG_LEASE_DURATION, TAG_LEASE_END,
};
use blockwatch_core::time_text::rfc3339;
use serde::Serialize;
use time::OffsetDateTime;

use crate::plan::{Market, Plan};

/// Every instance the launcher starts ends when it powers itself off: the
/// default, `stop`, would keep billing its volumes, and a stopped Capacity
/// Block instance cannot start again once the block has ended.
pub const SHUTDOWN_BEHAVIOR: ShutdownBehavior = ShutdownBehavior::Terminate;

/// Why a launch failed, each as one line.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Invalid(#[from] crate::plan::Invalid),
    #[error(transparent)]
    ComputeEnvironment(#[from] Refusal),
    #[error(transparent)]
    Aws(CallError),
    #[error("AccessDenied: the caller may not call {action}; grant it (see bootstrap/iam/launcher-policy.json)")]
    Denied {
        action: &'static str,
        detail: String,
    },
    #[error("--legacy-spot-block: EC2 refused BlockDurationMinutes ({detail}). Spot blocks (defined-duration Spot) were closed to new customers on 2021-07-01 and retired on 2022-12-31. Use --market spot with the same --duration {duration}: blockwatch enforces the lease on the instance instead.")]
    SpotBlocksRetired { detail: String, duration: String },
    #[error("spot price too low: {detail}; raise --max-price or drop it to pay up to the On-Demand price")]
    PriceTooLow { detail: String },
    #[error("insufficient capacity: launched {launched} of {requested} (at least {min} needed). {detail}. Try more --instance-type or --subnet values, or another market")]
    Shortfall {
        launched: usize,
        requested: u32,
        min: u32,
        detail: String,
        report: Box<Report>,
    },
    #[error("capacity reservation {0} not found")]
    NoReservation(String),
    #[error("capacity reservation {id} is not a Capacity Block with an end date (type {kind})")]
    NotACapacityBlock { id: String, kind: String },
    #[error("timed out after {0} waiting for the instances")]
    WaitTimeout(String),
    #[error("EC2 still does not know {ids} {after} after launching them (ec2:DescribeInstances: InvalidInstanceID.NotFound: {detail}); look for them in the EC2 console")]
    StillNotFound {
        ids: String,
        after: String,
        detail: String,
    },
}

/// Every AWS failure comes through here, so that a denial anywhere names
/// the missing action the same way.
impl From<CallError> for LaunchError {
    fn from(err: CallError) -> Self {
        match err {
            CallError::Aws {
                api,
                kind: AwsFailure::Denied,
                detail,
            } => Self::Denied {
                action: api,
                detail,
            },
            other => Self::Aws(other),
        }
    }
}

impl LaunchError {
    /// Exit codes: 2 bad request, 3 compute environment refused, 4 not enough
    /// capacity, 5 denied, 6 refused by EC2 (price, retired spot blocks), 7
    /// other AWS rejection, 75 transient, 8 timed out waiting.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Invalid(_) => 2,
            Self::ComputeEnvironment(_) => 3,
            Self::Shortfall { .. } => 4,
            Self::Denied { .. } => 5,
            Self::SpotBlocksRetired { .. }
            | Self::PriceTooLow { .. }
            | Self::NoReservation(_)
            | Self::NotACapacityBlock { .. } => 6,
            Self::Aws(CallError::Aws {
                kind: AwsFailure::Rejected,
                ..
            })
            | Self::StillNotFound { .. } => 7,
            Self::Aws(_) => 75,
            Self::WaitTimeout(_) => 8,
        }
    }
}

/// One launched instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Launched {
    pub instance_id: String,
    pub instance_type: String,
    pub subnet: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub launch_time: Option<OffsetDateTime>,
    /// When the agent will consider the lease over.
    #[serde(with = "time::serde::rfc3339::option")]
    pub lease_end: Option<OffsetDateTime>,
    pub state: Option<String>,
}

/// What happened (or, in a dry run, what would).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub compute_environment: String,
    pub compute_environment_state: Option<String>,
    pub cluster: String,
    pub market: Market,
    pub ami: String,
    pub ami_source: String,
    pub duration: String,
    pub requested: u32,
    pub min_count: u32,
    pub instance_types: Vec<String>,
    pub subnets: Vec<String>,
    pub tags: Vec<(String, String)>,
    pub user_data: bool,
    /// `HttpPutResponseHopLimit`: 1 keeps IMDS (and the instance role's
    /// credentials) from containers in bridge and awsvpc network modes; Batch
    /// ECS-EC2 jobs run in host mode and reach IMDS whatever it is.
    pub imds_hop_limit: i32,
    /// `InstanceInitiatedShutdownBehavior`: a power-off from inside the
    /// instance ends it (and its billing) instead of leaving it stopped.
    pub shutdown_behavior: String,
    pub dry_run: bool,
    pub instances: Vec<Launched>,
    pub warnings: Vec<String>,
}

/// Runs the whole launch. `dry_run` checks permissions with EC2's `DryRun`
/// and launches nothing.
pub async fn launch(
    sdk: &aws_config::SdkConfig,
    plan: &Plan,
    dry_run: bool,
    now: OffsetDateTime,
) -> Result<Report, LaunchError> {
    // 1. The compute environment must exist and be UNMANAGED.
    let batch = aws_sdk_batch::Client::new(sdk);
    let info =
        blockwatch_aws::describe_compute_environment::describe(&batch, &plan.compute_environment)
            .await?
            .ok_or_else(|| Refusal::NotFound(plan.compute_environment.clone()))?;
    let (cluster, mut warnings) = cluster_of(&info)?;
    if plan.imds_hop_limit > 1 {
        warnings.push(format!(
            "IMDS hop limit {}: containers in bridge network mode can reach IMDS and take the instance role's credentials too (Batch ECS-EC2 jobs, in host network mode, can at any hop limit)",
            plan.imds_hop_limit
        ));
    }

    // 2. The AMI.
    let (ami, ami_source) = match &plan.ami {
        Some(ami) => (ami.clone(), "--ami".to_owned()),
        None => {
            let ssm = aws_sdk_ssm::Client::new(sdk);
            let parameter = plan.ami_parameter();
            let found = ssm
                .get_parameter()
                .name(parameter)
                .send()
                .await
                .map_err(|e| classify("ssm:GetParameter", &e))?;
            let value = found
                .parameter()
                .and_then(|p| p.value())
                .unwrap_or_default()
                .to_owned();
            (value, format!("SSM {parameter}"))
        }
    };

    // 3. The lease the instances carry.
    let ec2 = Ec2::new(sdk);
    let capacity_block_end = match (&plan.market, &plan.capacity_reservation_id) {
        (Market::CapacityBlock, Some(id)) => Some(capacity_block_end(&ec2, id).await?),
        _ => None,
    };
    let lease_tag = match capacity_block_end {
        // EC2 starts terminating 30 minutes before EndDate; the lease is the
        // shorter of that and --duration.
        Some(end) => {
            let lead = time::Duration::try_from(CAPACITY_BLOCK_TERMINATION_LEAD)
                .unwrap_or(time::Duration::ZERO);
            let by_duration =
                now + time::Duration::try_from(plan.duration).unwrap_or(time::Duration::ZERO);
            (
                TAG_LEASE_END.to_owned(),
                rfc3339(end.saturating_sub(lead).min(by_duration)),
            )
        }
        None => (TAG_LEASE_DURATION.to_owned(), plan.duration_text.clone()),
    };
    // The cluster too: the agent's join then makes no AWS call at all (an
    // explicit cluster wins within the tags). The compute environment stays,
    // for operators and for `list`.
    let tags = vec![
        (
            TAG_COMPUTE_ENVIRONMENT.to_owned(),
            plan.compute_environment.clone(),
        ),
        (TAG_CLUSTER.to_owned(), cluster.to_string()),
        lease_tag.clone(),
        ("Name".to_owned(), plan.name.clone()),
    ];

    let mut report = Report {
        compute_environment: plan.compute_environment.clone(),
        compute_environment_state: info.state.clone(),
        cluster: cluster.to_string(),
        market: plan.market,
        ami: ami.clone(),
        ami_source,
        duration: plan.duration_text.clone(),
        requested: plan.count,
        min_count: plan.min_count,
        instance_types: plan.instance_types.clone(),
        subnets: plan.subnets.clone(),
        tags: tags.clone(),
        user_data: plan.user_data(cluster.as_str()).is_some(),
        imds_hop_limit: plan.imds_hop_limit,
        shutdown_behavior: SHUTDOWN_BEHAVIOR.as_str().to_owned(),
        dry_run,
        instances: Vec::new(),
        warnings,
    };

    // 4. RunInstances per (type, subnet) until the count is met. Each call
    // asks for what is still missing with MinCount 1, so EC2 launches what it
    // can; a placement is asked again while it keeps delivering.
    let mut failures = Vec::new();
    for (instance_type, subnet) in plan.placements() {
        for _ in 0..plan.count {
            let remaining = plan.count as usize - report.instances.len();
            if remaining == 0 {
                break;
            }
            let request = run_instances(
                &ec2,
                plan,
                &ami,
                &instance_type,
                subnet.as_deref(),
                &tags,
                cluster.as_str(),
                remaining,
                dry_run,
            );
            match request.send().await {
                Ok(output) if output.instances().is_empty() => break,
                Ok(output) => {
                    for instance in output.instances() {
                        let launch_time = instance.launch_time().and_then(to_time);
                        let lease_end = match capacity_block_end {
                            Some(_) => lease_tag
                                .1
                                .parse::<blockwatch_core::time_text::Timestamp>()
                                .ok()
                                .map(|t| t.0),
                            None => launch_time.map(|t| {
                                t + time::Duration::try_from(plan.duration)
                                    .unwrap_or(time::Duration::ZERO)
                            }),
                        };
                        report.instances.push(Launched {
                            instance_id: instance.instance_id().unwrap_or_default().to_owned(),
                            instance_type: instance_type.clone(),
                            subnet: instance
                                .subnet_id()
                                .map(str::to_owned)
                                .or_else(|| subnet.clone()),
                            launch_time,
                            lease_end,
                            state: instance
                                .state()
                                .and_then(|s| s.name())
                                .map(|n| n.as_str().to_owned()),
                        });
                    }
                }
                Err(err) => {
                    let code = err.code().unwrap_or_default().to_owned();
                    let message = err.message().unwrap_or_default().to_owned();
                    if dry_run && code == "DryRunOperation" {
                        // Permission granted; nothing launched. Once is enough.
                        return Ok(report);
                    }
                    if plan.block_duration_minutes.is_some()
                        && (message.contains("BlockDuration")
                            || message.contains("not a valid parameter")
                            || code == "InvalidParameterValue")
                    {
                        return Err(LaunchError::SpotBlocksRetired {
                            detail: format!("{code}: {message}"),
                            duration: plan.duration_text.clone(),
                        });
                    }
                    match code.as_str() {
                        "SpotMaxPriceTooLow" | "MaxSpotPriceTooLow" => {
                            return Err(LaunchError::PriceTooLow {
                                detail: format!("{code}: {message}"),
                            })
                        }
                        "InsufficientInstanceCapacity"
                        | "InsufficientCapacity"
                        | "InsufficientCapacityOnHost"
                        | "InsufficientFreeAddressesInSubnet"
                        | "Unsupported" => {
                            let place = subnet
                                .as_deref()
                                .map(|s| format!(" in {s}"))
                                .unwrap_or_default();
                            failures.push(format!("{instance_type}{place}: {code}"));
                            break;
                        }
                        _ => return Err(classify("ec2:RunInstances", &err).into()),
                    }
                }
            }
        }
    }
    let launched = report.instances.len();
    if launched < plan.min_count as usize {
        let detail = if failures.is_empty() {
            "EC2 returned fewer instances".to_owned()
        } else {
            failures.join("; ")
        };
        return Err(LaunchError::Shortfall {
            launched,
            requested: plan.count,
            min: plan.min_count,
            detail,
            report: Box::new(report),
        });
    }
    if launched < plan.count as usize {
        report.warnings.push(format!(
            "partial capacity: launched {launched} of {} ({})",
            plan.count,
            failures.join("; ")
        ));
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn run_instances(
    ec2: &Ec2,
    plan: &Plan,
    ami: &str,
    instance_type: &str,
    subnet: Option<&str>,
    tags: &[(String, String)],
    cluster: &str,
    count: usize,
    dry_run: bool,
) -> aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder {
    let mut spec = TagSpecification::builder().resource_type(ResourceType::Instance);
    for (key, value) in tags {
        spec = spec.tags(Tag::builder().key(key).value(value).build());
    }
    let metadata = InstanceMetadataOptionsRequest::builder()
        .http_tokens(HttpTokensState::Required)
        .http_endpoint(InstanceMetadataEndpointState::Enabled)
        .instance_metadata_tags(InstanceMetadataTagsState::Enabled)
        .http_put_response_hop_limit(plan.imds_hop_limit)
        .build();
    let mut request = ec2
        .run_instances()
        .image_id(ami)
        .instance_type(instance_type.into())
        .min_count(1)
        .max_count(i32::try_from(count).unwrap_or(i32::MAX))
        .tag_specifications(spec.build())
        .metadata_options(metadata)
        .instance_initiated_shutdown_behavior(SHUTDOWN_BEHAVIOR)
        .dry_run(dry_run)
        .set_subnet_id(subnet.map(str::to_owned))
        .set_key_name(plan.key_name.clone());
    if !plan.security_groups.is_empty() {
        request = request.set_security_group_ids(Some(plan.security_groups.clone()));
    }
    if let Some(profile) = &plan.instance_profile {
        let spec = if profile.starts_with("arn:") {
            IamInstanceProfileSpecification::builder().arn(profile)
        } else {
            IamInstanceProfileSpecification::builder().name(profile)
        };
        request = request.iam_instance_profile(spec.build());
    }
    match plan.market {
        Market::Spot => {
            let mut spot = SpotMarketOptions::builder()
                .spot_instance_type(SpotInstanceType::OneTime)
                .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                .set_max_price(plan.max_price.clone());
            if let Some(minutes) = plan.block_duration_minutes {
                spot = spot.block_duration_minutes(minutes);
            }
            request = request.instance_market_options(
                InstanceMarketOptionsRequest::builder()
                    .market_type(MarketType::Spot)
                    .spot_options(spot.build())
                    .build(),
            );
        }
        Market::OnDemand => {}
        Market::CapacityBlock => {
            let target = CapacityReservationTarget::builder()
                .set_capacity_reservation_id(plan.capacity_reservation_id.clone())
                .build();
            request = request
                .instance_market_options(
                    InstanceMarketOptionsRequest::builder()
                        .market_type(MarketType::CapacityBlock)
                        .build(),
                )
                .capacity_reservation_specification(
                    CapacityReservationSpecification::builder()
                        .capacity_reservation_target(target)
                        .build(),
                );
        }
    }
    if let Some(script) = plan.user_data(cluster) {
        request = request.user_data(aws_smithy_types::base64::encode(script.as_bytes()));
    }
    request
}

async fn capacity_block_end(ec2: &Ec2, id: &str) -> Result<OffsetDateTime, LaunchError> {
    let described = ec2
        .describe_capacity_reservations()
        .capacity_reservation_ids(id)
        .send()
        .await
        .map_err(|e| classify("ec2:DescribeCapacityReservations", &e))?;
    let reservation = described
        .capacity_reservations()
        .first()
        .ok_or_else(|| LaunchError::NoReservation(id.to_owned()))?;
    let kind = reservation
        .reservation_type()
        .map(|t| t.as_str().to_owned())
        .unwrap_or_else(|| "default".into());
    match (kind.as_str(), reservation.end_date().and_then(to_time)) {
        ("capacity-block", Some(end)) => Ok(end),
        _ => Err(LaunchError::NotACapacityBlock {
            id: id.to_owned(),
            kind,
        }),
    }
}

/// How [`wait`] waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitOptions {
    /// Also wait until each instance is a container instance in the cluster.
    pub registered: bool,
    /// Give up after this long.
    pub timeout: Duration,
    /// How long `InvalidInstanceID.NotFound` means "not yet": EC2 is
    /// eventually consistent right after RunInstances.
    pub not_found_grace: Duration,
    pub poll_interval: Duration,
}

impl WaitOptions {
    pub const DEFAULT_NOT_FOUND_GRACE: Duration = Duration::from_secs(60);
    pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);
}

/// ECS cluster query expressions are at most 2000 characters: 50 quoted
/// instance ids and the rest of the expression stay well under.
const INSTANCE_IDS_PER_FILTER: usize = 50;
/// DescribeContainerInstances takes at most 100 container instances.
const CONTAINER_INSTANCES_PER_DESCRIBE: usize = 100;

/// Waits until every instance runs, and with `registered` until each is a
/// container instance in `cluster`. Progress goes to stderr, redrawn on a
/// TTY and only at the end otherwise.
pub async fn wait(
    sdk: &aws_config::SdkConfig,
    report: &mut Report,
    options: WaitOptions,
) -> Result<(), LaunchError> {
    let ec2 = Ec2::new(sdk);
    let ecs = aws_sdk_ecs::Client::new(sdk);
    let tty = std::io::stderr().is_terminal();
    let ids: Vec<String> = report
        .instances
        .iter()
        .map(|i| i.instance_id.clone())
        .collect();
    let started = tokio::time::Instant::now();
    let deadline = started + options.timeout;
    loop {
        let described = match ec2
            .describe_instances()
            .set_instance_ids(Some(ids.clone()))
            .send()
            .await
        {
            Ok(described) => Some(described),
            Err(err) if err.code() == Some("InvalidInstanceID.NotFound") => {
                if started.elapsed() >= options.not_found_grace {
                    if tty {
                        let _ = writeln!(std::io::stderr());
                    }
                    return Err(LaunchError::StillNotFound {
                        ids: ids.join(", "),
                        after: humantime::format_duration(options.not_found_grace).to_string(),
                        detail: err.message().unwrap_or("no message").replace('\n', " "),
                    });
                }
                // Not yet: EC2 has not caught up with its own RunInstances.
                None
            }
            Err(err) => return Err(classify("ec2:DescribeInstances", &err).into()),
        };
        let instances = described
            .iter()
            .flat_map(|d| d.reservations())
            .flat_map(|r| r.instances());
        for instance in instances {
            if let Some(ours) = report
                .instances
                .iter_mut()
                .find(|i| Some(i.instance_id.as_str()) == instance.instance_id())
            {
                ours.state = instance
                    .state()
                    .and_then(|s| s.name())
                    .map(|n| n.as_str().to_owned());
            }
        }
        let running = report
            .instances
            .iter()
            .filter(|i| i.state.as_deref() == Some(InstanceStateName::Running.as_str()))
            .count();
        let joined = if options.registered && running == ids.len() {
            registered_count(&ecs, &report.cluster, &ids).await?
        } else {
            0
        };
        let done = running == ids.len() && (!options.registered || joined == ids.len());
        let line = if options.registered {
            format!(
                "waiting: {running}/{} running, {joined}/{} registered in {}",
                ids.len(),
                ids.len(),
                report.cluster
            )
        } else {
            format!("waiting: {running}/{} running", ids.len())
        };
        if tty {
            let _ = write!(std::io::stderr(), "\r{line}\x1b[K");
        }
        if done {
            if tty {
                let _ = writeln!(std::io::stderr());
            } else {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            if tty {
                let _ = writeln!(std::io::stderr());
            }
            return Err(LaunchError::WaitTimeout(
                humantime::format_duration(options.timeout).to_string(),
            ));
        }
        tokio::time::sleep(options.poll_interval).await;
    }
}

/// The cluster query that lists only these instances' container instances.
fn instance_filter(ids: &[String]) -> String {
    let quoted: Vec<String> = ids.iter().map(|id| format!("'{id}'")).collect();
    format!("ec2InstanceId in [{}]", quoted.join(", "))
}

/// How many of `ids` are container instances in `cluster`. Asks ECS for
/// these instances only, page by page, and checks the ids itself rather
/// than trust the filter: a cluster in a real account holds many others.
async fn registered_count(
    ecs: &aws_sdk_ecs::Client,
    cluster: &str,
    ids: &[String],
) -> Result<usize, LaunchError> {
    let mut arns = BTreeSet::new();
    for chunk in ids.chunks(INSTANCE_IDS_PER_FILTER) {
        let mut pages = ecs
            .list_container_instances()
            .cluster(cluster)
            .filter(instance_filter(chunk))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify("ecs:ListContainerInstances", &e))?;
            arns.extend(page.container_instance_arns().iter().cloned());
        }
    }
    let arns: Vec<String> = arns.into_iter().collect();
    let mut found = BTreeSet::new();
    for chunk in arns.chunks(CONTAINER_INSTANCES_PER_DESCRIBE) {
        let described = ecs
            .describe_container_instances()
            .cluster(cluster)
            .set_container_instances(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| classify("ecs:DescribeContainerInstances", &e))?;
        found.extend(
            described
                .container_instances()
                .iter()
                .filter_map(|ci| ci.ec2_instance_id())
                .filter(|id| ids.iter().any(|i| i == id))
                .map(str::to_owned),
        );
    }
    Ok(found.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_instance_filter_quotes_each_id_and_stays_under_ecs_limit() {
        let ids = vec![
            "i-0123456789abcdef0".to_owned(),
            "i-0fedcba9876543210".to_owned(),
        ];
        assert_eq!(
            instance_filter(&ids),
            "ec2InstanceId in ['i-0123456789abcdef0', 'i-0fedcba9876543210']"
        );
        let many: Vec<String> = (0..INSTANCE_IDS_PER_FILTER)
            .map(|n| format!("i-{n:017x}"))
            .collect();
        assert!(instance_filter(&many).len() < 2000);
    }
}
