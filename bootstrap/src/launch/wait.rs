//! `--wait`: until the launched instances run, and with `--wait-registered`
//! until each is a container instance in the cluster.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::InstanceStateName;
use blockwatch_aws::classify;

use super::{LaunchError, Report};
use crate::aws::Clients;
use crate::logging;

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
    clients: &Clients,
    report: &mut Report,
    options: WaitOptions,
) -> Result<(), LaunchError> {
    let (ec2, ecs) = (&clients.ec2, &clients.ecs);
    // Progress is info: `--log-level warn` and below keep it off stderr.
    let progress = logging::shows_progress();
    let tty = progress && std::io::stderr().is_terminal();
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
            registered_count(ecs, &report.cluster, &ids).await?
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
            } else if progress {
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

/// The instances just launched, as EC2 describes them, asked again while EC2
/// does not know them yet (up to `grace`). A failure is a warning: they
/// launched all the same, only their launch times (and leases) are unknown.
pub(super) async fn describe_launched(
    ec2: &aws_sdk_ec2::Client,
    ids: &[String],
    grace: Duration,
) -> (Vec<aws_sdk_ec2::types::Instance>, Option<String>) {
    if ids.is_empty() {
        return (Vec::new(), None);
    }
    let started = tokio::time::Instant::now();
    loop {
        match ec2
            .describe_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
        {
            Ok(described) => {
                let instances = described
                    .reservations()
                    .iter()
                    .flat_map(|r| r.instances().iter().cloned())
                    .collect();
                return (instances, None);
            }
            Err(err)
                if err.code() == Some("InvalidInstanceID.NotFound")
                    && started.elapsed() < grace =>
            {
                tokio::time::sleep(WaitOptions::DEFAULT_POLL_INTERVAL.min(grace)).await;
            }
            Err(err) => {
                let warning = format!(
                    "launched, but their launch times (and lease ends) are unknown: {}",
                    classify("ec2:DescribeInstances", &err)
                );
                return (Vec::new(), Some(warning));
            }
        }
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
