//! `list`: every instance tagged for a compute environment, but the
//! terminated ones, with its market, its lease and its place in the cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use blockwatch_core::compute_environment::cluster_of;
use serde::Serialize;
use time::OffsetDateTime;

use crate::aws::{self, Clients};
use crate::blocks::{self, Listed};
use crate::cli::ListArgs;
use crate::inventory::{self, BlocksError, PageSize};
use crate::output;

/// Every state but `terminated`: what `list` shows.
const LISTED_STATES: [&str; 5] = ["pending", "running", "shutting-down", "stopping", "stopped"];
/// What `list` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListReport {
    pub compute_environment: String,
    pub cluster: String,
    #[serde(with = "time::serde::rfc3339")]
    pub listed_at: OffsetDateTime,
    pub instances: Vec<Listed>,
}

/// The command.
pub async fn run(args: &ListArgs, call_timeout: Duration) -> Result<(), BlocksError> {
    let page_size = PageSize::new(args.page_size)?;
    let now = OffsetDateTime::now_utc();
    let clients = Clients::new(&aws::sdk(call_timeout).await);
    let report = list(&clients, &args.compute_environment, page_size, now).await?;
    output::print(&output::render_list(&report, args.output));
    Ok(())
}

/// `list`: every instance tagged for the compute environment, but the
/// terminated ones, with its lease and its place in the cluster.
pub async fn list(
    clients: &Clients,
    compute_environment: &str,
    page_size: PageSize,
    now: OffsetDateTime,
) -> Result<ListReport, BlocksError> {
    let ce = inventory::compute_environment(clients, compute_environment).await?;
    let (cluster, _) = cluster_of(&ce)?;
    let ec2 = &clients.ec2;
    let instances = inventory::tagged_instances(ec2, &ce, &LISTED_STATES, page_size).await?;
    let instances = inventory::with_markets(ec2, instances).await?;
    let registered = if instances.is_empty() {
        BTreeMap::new()
    } else {
        inventory::registrations(&clients.ecs, cluster.as_str(), page_size).await?
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
