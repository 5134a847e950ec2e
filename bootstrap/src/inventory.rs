//! `list` and `extend` against AWS: the compute environment's instances,
//! their container instances, and the lease tags. Every list call is paged.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{Filter, Tag};
use aws_sdk_ec2::Client as Ec2;
use blockwatch_aws::classify;
use blockwatch_aws::to_time;
use blockwatch_aws::{AwsFailure, CallError};
use blockwatch_core::compute_environment::{cluster_of, ComputeEnvironmentInfo, Refusal};
use blockwatch_core::tags::{TAG_COMPUTE_ENVIRONMENT, TAG_LEASE_DURATION, TAG_LEASE_END};
use blockwatch_core::time_text::rfc3339;
use serde::Serialize;
use time::OffsetDateTime;

use crate::blocks::{
    self, Change, Extension, InvalidChange, Listed, Observed, Registration,
    CAPACITY_BLOCK_LIFECYCLE, EXTENDABLE_STATES,
};

/// Every state but `terminated`: what `list` shows.
const LISTED_STATES: [&str; 5] = ["pending", "running", "shutting-down", "stopping", "stopped"];
/// `DescribeInstances` pages hold 5 to 1000 instances.
pub const PAGE_SIZES: std::ops::RangeInclusive<u32> = 5..=1000;
/// ECS lists at most 100 per page and describes at most 100 per call.
const ECS_PAGE_MAX: u32 = 100;
/// Instances per CreateTags or DeleteTags call.
const TAG_WRITE_CHUNK: usize = 100;

/// Why `list` or `extend` failed, each as one line.
#[derive(Debug, thiserror::Error)]
pub enum BlocksError {
    #[error(transparent)]
    Invalid(#[from] InvalidChange),
    #[error("--page-size must be between 5 and 1000, not {0}")]
    PageSize(u32),
    #[error(transparent)]
    ComputeEnvironment(#[from] Refusal),
    #[error(transparent)]
    Aws(CallError),
    #[error("AccessDenied: the caller may not call {action}; grant it (see bootstrap/iam/launcher-policy.json)")]
    Denied {
        action: &'static str,
        detail: String,
    },
    #[error("refused, nothing written: {0}")]
    Refused(String),
}

impl From<CallError> for BlocksError {
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

impl BlocksError {
    /// The launcher's exit codes (see `--help`); 9 is an instance `extend`
    /// refuses.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Invalid(_) | Self::PageSize(_) => 2,
            Self::ComputeEnvironment(_) => 3,
            Self::Denied { .. } => 5,
            Self::Aws(CallError::Aws {
                kind: AwsFailure::Rejected,
                ..
            }) => 7,
            Self::Aws(_) => 75,
            Self::Refused(_) => 9,
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

/// What `list` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListReport {
    pub compute_environment: String,
    pub cluster: String,
    #[serde(with = "time::serde::rfc3339")]
    pub listed_at: OffsetDateTime,
    pub instances: Vec<Listed>,
}

/// An instance `extend --all` leaves alone, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub instance_id: String,
    pub reason: String,
}

/// What `extend` did (or, with `--dry-run`, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExtendReport {
    pub compute_environment: String,
    pub dry_run: bool,
    pub extended: Vec<Extension>,
    pub skipped: Vec<Skipped>,
}

/// Which instances `extend` changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These, each of which must be in the compute environment.
    Ids(Vec<String>),
    /// Every instance tagged for the compute environment that can be extended.
    All,
}

async fn compute_environment(
    sdk: &aws_config::SdkConfig,
    name: &str,
) -> Result<ComputeEnvironmentInfo, BlocksError> {
    let batch = aws_sdk_batch::Client::new(sdk);
    Ok(
        blockwatch_aws::describe_compute_environment::describe(&batch, name)
            .await?
            .ok_or_else(|| Refusal::NotFound(name.to_owned()))?,
    )
}

/// The tag values that put an instance in `ce`: the launcher writes what the
/// operator typed, its name or its ARN.
fn tag_values(ce: &ComputeEnvironmentInfo) -> Vec<String> {
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
async fn tagged_instances(
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
async fn instances_by_id(ec2: &Ec2, ids: &[String]) -> Result<Vec<Observed>, BlocksError> {
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
async fn with_markets(
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
async fn registrations(
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

/// `list`: every instance tagged for the compute environment, but the
/// terminated ones, with its lease and its place in the cluster.
pub async fn list(
    sdk: &aws_config::SdkConfig,
    compute_environment: &str,
    page_size: PageSize,
    now: OffsetDateTime,
) -> Result<ListReport, BlocksError> {
    let ce = self::compute_environment(sdk, compute_environment).await?;
    let (cluster, _) = cluster_of(&ce)?;
    let ec2 = Ec2::new(sdk);
    let instances = tagged_instances(&ec2, &ce, &LISTED_STATES, page_size).await?;
    let instances = with_markets(&ec2, instances).await?;
    let registered = if instances.is_empty() {
        BTreeMap::new()
    } else {
        registrations(&aws_sdk_ecs::Client::new(sdk), cluster.as_str(), page_size).await?
    };
    let mut rows: Vec<Listed> = instances
        .iter()
        .map(|(i, market)| blocks::listed(i, *market, registered.get(&i.instance_id), now))
        .collect();
    blocks::sort_rows(&mut rows);
    Ok(ListReport {
        compute_environment: ce.name,
        cluster: cluster.to_string(),
        listed_at: blocks::whole_second_utc(now),
        instances: rows,
    })
}

/// `extend`: checks every selected instance, then writes the new ends (or,
/// with `dry_run`, asks EC2's DryRun whether it could).
pub async fn extend(
    sdk: &aws_config::SdkConfig,
    compute_environment: &str,
    selection: &Selection,
    change: Change,
    dry_run: bool,
    page_size: PageSize,
    now: OffsetDateTime,
) -> Result<ExtendReport, BlocksError> {
    let ce = self::compute_environment(sdk, compute_environment).await?;
    let names = tag_values(&ce);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let ec2 = Ec2::new(sdk);
    let instances = match selection {
        Selection::All => tagged_instances(&ec2, &ce, &EXTENDABLE_STATES, page_size).await?,
        Selection::Ids(ids) => {
            let unique: Vec<String> = ids
                .iter()
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            instances_by_id(&ec2, &unique).await?
        }
    };
    let mut extended = Vec::new();
    let mut skipped = Vec::new();
    for (instance, market) in with_markets(&ec2, instances).await? {
        match blocks::extension(&instance, market, &ce.name, &names, change, now) {
            Ok(extension) => extended.push(extension),
            Err(refusal) => skipped.push(Skipped {
                instance_id: instance.instance_id.clone(),
                reason: refusal.to_string(),
            }),
        }
    }
    extended.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    skipped.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    // Named instances are all or nothing; --all leaves out what it cannot
    // extend, unless that is everything.
    let refuse = match selection {
        Selection::Ids(_) => !skipped.is_empty(),
        Selection::All => extended.is_empty() && !skipped.is_empty(),
    };
    if refuse {
        let reasons: Vec<String> = skipped
            .iter()
            .map(|s| format!("{} {}", s.instance_id, s.reason))
            .collect();
        return Err(BlocksError::Refused(reasons.join("; ")));
    }
    write_ends(&ec2, &extended, dry_run).await?;
    Ok(ExtendReport {
        compute_environment: ce.name,
        dry_run,
        extended,
        skipped,
    })
}

/// Writes `blockwatch:lease-end`, then deletes `blockwatch:lease-duration`
/// where there was one. The agent reads `lease-end` first, so the instance
/// has one unambiguous end at every step. With `dry_run`, one DryRun call of
/// each kind checks the permissions and nothing is written.
async fn write_ends(ec2: &Ec2, extended: &[Extension], dry_run: bool) -> Result<(), BlocksError> {
    let mut by_end: BTreeMap<OffsetDateTime, Vec<String>> = BTreeMap::new();
    for e in extended {
        by_end
            .entry(e.new_end)
            .or_default()
            .push(e.instance_id.clone());
    }
    let with_duration: Vec<String> = extended
        .iter()
        .filter(|e| e.removes_lease_duration)
        .map(|e| e.instance_id.clone())
        .collect();
    let chunks_to_send = if dry_run { 1 } else { usize::MAX };
    let writes = by_end
        .iter()
        .flat_map(|(end, ids)| ids.chunks(TAG_WRITE_CHUNK).map(move |c| (*end, c)))
        .take(chunks_to_send);
    for (end, chunk) in writes {
        let sent = ec2
            .create_tags()
            .set_resources(Some(chunk.to_vec()))
            .tags(
                Tag::builder()
                    .key(TAG_LEASE_END)
                    .value(rfc3339(end))
                    .build(),
            )
            .dry_run(dry_run)
            .send()
            .await;
        match sent {
            Err(err) if !(dry_run && err.code() == Some("DryRunOperation")) => {
                return Err(classify("ec2:CreateTags", &err).into())
            }
            _ => {}
        }
    }
    for chunk in with_duration.chunks(TAG_WRITE_CHUNK).take(chunks_to_send) {
        let sent = ec2
            .delete_tags()
            .set_resources(Some(chunk.to_vec()))
            .tags(Tag::builder().key(TAG_LEASE_DURATION).build())
            .dry_run(dry_run)
            .send()
            .await;
        match sent {
            Err(err) if !(dry_run && err.code() == Some("DryRunOperation")) => {
                return Err(classify("ec2:DeleteTags", &err).into())
            }
            _ => {}
        }
    }
    Ok(())
}
