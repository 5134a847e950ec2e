//! `batch:DescribeComputeEnvironments`, shared by the agent and the launcher.

use blockwatch_core::compute_environment::ComputeEnvironmentInfo;

use crate::classify::{classify_at, endpoint_of};
use crate::CallError;

/// Looks up one compute environment by name or ARN with `client`; shared by
/// the agent and the launcher.
pub async fn describe(
    client: &aws_sdk_batch::Client,
    name: &str,
) -> Result<Option<ComputeEnvironmentInfo>, CallError> {
    let output = client
        .describe_compute_environments()
        .compute_environments(name)
        .send()
        .await
        .map_err(|e| {
            let endpoint = endpoint_of("batch", client.config().region());
            classify_at("batch:DescribeComputeEnvironments", Some(&endpoint), &e)
        })?;
    Ok(output
        .compute_environments()
        .iter()
        .find(|ce| {
            ce.compute_environment_name() == Some(name)
                || ce.compute_environment_arn() == Some(name)
        })
        .map(|ce| ComputeEnvironmentInfo {
            name: ce.compute_environment_name().unwrap_or(name).to_owned(),
            arn: ce.compute_environment_arn().unwrap_or_default().to_owned(),
            kind: ce
                .r#type()
                .map(|t| t.as_str().to_owned())
                .unwrap_or_default(),
            state: ce.state().map(|s| s.as_str().to_owned()),
            status: ce.status().map(|s| s.as_str().to_owned()),
            status_reason: ce.status_reason().map(str::to_owned),
            ecs_cluster_arn: ce.ecs_cluster_arn().map(str::to_owned),
        }))
}
