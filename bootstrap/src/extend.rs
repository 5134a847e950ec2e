//! `extend`: moves the lease end of a compute environment's instances by
//! rewriting `blockwatch:lease-end`, all or nothing for named instances.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::Tag;
use aws_sdk_ec2::Client as Ec2;
use blockwatch_aws::classify;
use blockwatch_core::tags::{TAG_LEASE_DURATION, TAG_LEASE_END};
use blockwatch_core::time_text::rfc3339;
use serde::Serialize;
use time::OffsetDateTime;

use crate::aws::{self, Clients};
use crate::blocks::{self, parse_change, Change, Extension, EXTENDABLE_STATES};
use crate::cli::ExtendArgs;
use crate::inventory::{self, BlocksError, PageSize};
use crate::output;

/// Instances per CreateTags or DeleteTags call.
const TAG_WRITE_CHUNK: usize = 100;

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

/// The command.
pub async fn run(args: &ExtendArgs, call_timeout: Duration) -> Result<(), BlocksError> {
    // Everything checkable without AWS is checked before the first call.
    let page_size = PageSize::new(args.page_size)?;
    let now = OffsetDateTime::now_utc();
    let change = parse_change(args.by.as_deref(), args.until.as_deref(), now)?;
    let selection = if args.all {
        Selection::All
    } else {
        Selection::Ids(args.instances.clone())
    };
    let clients = Clients::new(&aws::sdk(call_timeout).await);
    let report = extend(
        &clients,
        &args.compute_environment,
        &selection,
        change,
        args.dry_run,
        page_size,
        now,
    )
    .await?;
    output::print(&output::render_extend(&report, args.output));
    Ok(())
}

/// `extend`: checks every selected instance, then writes the new ends (or,
/// with `dry_run`, asks EC2's DryRun whether it could).
pub async fn extend(
    clients: &Clients,
    compute_environment: &str,
    selection: &Selection,
    change: Change,
    dry_run: bool,
    page_size: PageSize,
    now: OffsetDateTime,
) -> Result<ExtendReport, BlocksError> {
    let ce = inventory::compute_environment(clients, compute_environment).await?;
    let names = inventory::tag_values(&ce);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let ec2 = &clients.ec2;
    let instances = match selection {
        Selection::All => {
            inventory::tagged_instances(ec2, &ce, &EXTENDABLE_STATES, page_size).await?
        }
        Selection::Ids(ids) => {
            let unique: Vec<String> = ids
                .iter()
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            inventory::instances_by_id(ec2, &unique).await?
        }
    };
    let mut extended = Vec::new();
    let mut skipped = Vec::new();
    for (instance, market) in inventory::with_markets(ec2, instances).await? {
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
    write_ends(ec2, &extended, dry_run).await?;
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
