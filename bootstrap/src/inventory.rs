//! What `list` and `extend` read from AWS: the compute environment, its
//! instances and their markets, and its container instances. Every list call
//! is paged.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::Filter;
use aws_sdk_ec2::Client as Ec2;
use blockwatch_aws::classify;
use blockwatch_aws::to_time;
use blockwatch_aws::CallError;
use blockwatch_core::compute_environment::{ComputeEnvironmentInfo, Refusal};
use blockwatch_core::tags::TAG_COMPUTE_ENVIRONMENT;

use crate::aws::{AwsStepError, Clients};
use crate::blocks::{self, InvalidChange, Observed, Registration, CAPACITY_BLOCK_LIFECYCLE};
use crate::exit::{self, Exit};

/// `DescribeInstances` pages hold 5 to 1000 instances.
pub const PAGE_SIZES: std::ops::RangeInclusive<u32> = 5..=1000;
/// ECS lists at most 100 per page and describes at most 100 per call.
const ECS_PAGE_MAX: u32 = 100;
/// Why `list` or `extend` failed, each as one line.
#[derive(Debug, thiserror::Error)]
pub enum BlocksError {
    #[error(transparent)]
    Invalid(#[from] InvalidChange),
    #[error("--page-size must be between 5 and 1000, not {0}")]
    PageSize(u32),
    #[error(transparent)]
    Aws(#[from] AwsStepError),
    #[error("refused, nothing written: {0}")]
    Refused(String),
}

impl From<CallError> for BlocksError {
    fn from(err: CallError) -> Self {
        Self::Aws(err.into())
    }
}

impl From<Refusal> for BlocksError {
    fn from(err: Refusal) -> Self {
        Self::Aws(err.into())
    }
}

impl BlocksError {
    pub fn exit(&self) -> Exit {
        match self {
            Self::Invalid(_) | Self::PageSize(_) => exit::INVALID,
            Self::Aws(step) => step.exit(),
            Self::Refused(_) => exit::EXTEND_REFUSED,
        }
    }
}

/// How many items each paged call asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(u32);

impl PageSize {
    pub const DEFAULT: u32 = 1000;

    pub fn new(size: u32) -> Result<Self, BlocksError> {
        if PAGE_SIZES.contains(&size) {
            Ok(Self(size))
        } else {
            Err(BlocksError::PageSize(size))
        }
    }

    fn ec2(self) -> i32 {
        i32::try_from(self.0).unwrap_or(1000)
    }

    fn ecs(self) -> i32 {
        i32::try_from(self.0.min(ECS_PAGE_MAX)).unwrap_or(100)
    }
}

/// The compute environment named `name`, which must exist.
pub(crate) async fn compute_environment(
    clients: &Clients,
    name: &str,
) -> Result<ComputeEnvironmentInfo, BlocksError> {
    Ok(
        blockwatch_aws::describe_compute_environment::describe(&clients.batch, name)
            .await?
            .ok_or_else(|| Refusal::NotFound(name.to_owned()))?,
    )
}

/// The tag values that put an instance in `ce`: the launcher writes what the
/// operator typed, its name or its ARN.
pub(crate) fn tag_values(ce: &ComputeEnvironmentInfo) -> Vec<String> {
    let mut values = vec![ce.name.clone()];
    if !ce.arn.is_empty() && ce.arn != ce.name {
        values.push(ce.arn.clone());
    }
    values
}

fn observed(instance: &aws_sdk_ec2::types::Instance) -> Observed {
    Observed {
        instance_id: instance.instance_id().unwrap_or_default().to_owned(),
        instance_type: instance
            .instance_type()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
        state: instance
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_owned())
            .unwrap_or_default(),
        lifecycle: instance.instance_lifecycle().map(|l| l.as_str().to_owned()),
        capacity_reservation_id: instance.capacity_reservation_id().map(str::to_owned),
        launch_time: instance.launch_time().and_then(to_time),
        tags: instance
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
            .collect(),
    }
}

fn state_filter(states: &[&str]) -> Filter {
    Filter::builder()
        .name("instance-state-name")
        .set_values(Some(states.iter().map(|s| (*s).to_owned()).collect()))
        .build()
}

/// Every instance tagged for `ce` in one of `states`, page by page.
pub(crate) async fn tagged_instances(
    ec2: &Ec2,
    ce: &ComputeEnvironmentInfo,
    states: &[&str],
    page_size: PageSize,
) -> Result<Vec<Observed>, BlocksError> {
    let mut pages = ec2
        .describe_instances()
        .filters(
            Filter::builder()
                .name(format!("tag:{TAG_COMPUTE_ENVIRONMENT}"))
                .set_values(Some(tag_values(ce)))
                .build(),
        )
        .filters(state_filter(states))
        .max_results(page_size.ec2())
        .into_paginator()
        .send();
    let mut found = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| classify("ec2:DescribeInstances", &e))?;
        found.extend(
            page.reservations()
                .iter()
                .flat_map(|r| r.instances())
                .map(observed),
        );
    }
    Ok(found)
}

/// These instances by id. An id EC2 does not know refuses the request.
pub(crate) async fn instances_by_id(
    ec2: &Ec2,
    ids: &[String],
) -> Result<Vec<Observed>, BlocksError> {
    let mut pages = ec2
        .describe_instances()
        .set_instance_ids(Some(ids.to_vec()))
        .into_paginator()
        .send();
    let mut found = Vec::new();
    while let Some(page) = pages.next().await {
        let page = match page {
            Ok(page) => page,
            Err(err)
                if err
                    .code()
                    .is_some_and(|c| c.starts_with("InvalidInstanceID")) =>
            {
                return Err(BlocksError::Refused(format!(
                    "ec2:DescribeInstances: {}: {}",
                    err.code().unwrap_or_default(),
                    err.message().unwrap_or("no message").replace('\n', " ")
                )))
            }
            Err(err) => return Err(classify("ec2:DescribeInstances", &err).into()),
        };
        found.extend(
            page.reservations()
                .iter()
                .flat_map(|r| r.instances())
                .map(observed),
        );
    }
    let known: BTreeSet<&str> = found.iter().map(|i| i.instance_id.as_str()).collect();
    let missing: Vec<&str> = ids
        .iter()
        .map(String::as_str)
        .filter(|id| !known.contains(id))
        .collect();
    if !missing.is_empty() {
        return Err(BlocksError::Refused(format!(
            "EC2 does not know {}",
            missing.join(", ")
        )));
    }
    Ok(found)
}

/// The capacity reservations among `ids` that are Capacity Blocks.
async fn capacity_blocks(
    ec2: &Ec2,
    ids: BTreeSet<String>,
) -> Result<BTreeSet<String>, BlocksError> {
    let mut blocks = BTreeSet::new();
    if ids.is_empty() {
        return Ok(blocks);
    }
    let mut pages = ec2
        .describe_capacity_reservations()
        .set_capacity_reservation_ids(Some(ids.into_iter().collect()))
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| classify("ec2:DescribeCapacityReservations", &e))?;
        blocks.extend(
            page.capacity_reservations()
                .iter()
                .filter(|r| {
                    blockwatch_core::deadline::is_capacity_block(
                        r.reservation_type().map(|t| t.as_str()),
                    )
                })
                .filter_map(|r| r.capacity_reservation_id())
                .map(str::to_owned),
        );
    }
    Ok(blocks)
}

/// Each instance with its market: a Capacity Block shows by its lifecycle or
/// by its reservation's type, which takes one DescribeCapacityReservations.
pub(crate) async fn with_markets(
    ec2: &Ec2,
    instances: Vec<Observed>,
) -> Result<Vec<(Observed, crate::plan::Market)>, BlocksError> {
    let reservations: BTreeSet<String> = instances
        .iter()
        .filter(|i| i.lifecycle.as_deref() != Some(CAPACITY_BLOCK_LIFECYCLE))
        .filter_map(|i| i.capacity_reservation_id.clone())
        .collect();
    let blocks = capacity_blocks(ec2, reservations).await?;
    Ok(instances
        .into_iter()
        .map(|i| {
            let in_block = i
                .capacity_reservation_id
                .as_ref()
                .is_some_and(|r| blocks.contains(r));
            let market = blocks::market_of(i.lifecycle.as_deref(), in_block);
            (i, market)
        })
        .collect())
}

/// The cluster's container instances by EC2 instance id, page by page.
pub(crate) async fn registrations(
    ecs: &aws_sdk_ecs::Client,
    cluster: &str,
    page_size: PageSize,
) -> Result<BTreeMap<String, Registration>, BlocksError> {
    let mut arns = Vec::new();
    let mut pages = ecs
        .list_container_instances()
        .cluster(cluster)
        .max_results(page_size.ecs())
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| classify("ecs:ListContainerInstances", &e))?;
        arns.extend(page.container_instance_arns().iter().cloned());
    }
    let chunk = usize::try_from(page_size.ecs()).unwrap_or(100);
    let mut found = BTreeMap::new();
    for arns in arns.chunks(chunk) {
        let described = ecs
            .describe_container_instances()
            .cluster(cluster)
            .set_container_instances(Some(arns.to_vec()))
            .send()
            .await
            .map_err(|e| classify("ecs:DescribeContainerInstances", &e))?;
        for ci in described.container_instances() {
            if let Some(id) = ci.ec2_instance_id() {
                found.insert(
                    id.to_owned(),
                    Registration {
                        status: ci.status().unwrap_or("unknown").to_owned(),
                        running_tasks: ci.running_tasks_count(),
                    },
                );
            }
        }
    }
    Ok(found)
}
