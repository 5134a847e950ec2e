//! `batch:DescribeComputeEnvironments`.

use std::future::Future;

use super::aws::Aws;
use super::CallError;
use blockwatch_core::compute_environment::ComputeEnvironmentInfo;

pub trait ComputeEnvironments {
    /// The compute environment with this name or ARN, or `None` if there is none.
    fn describe_compute_environment(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<ComputeEnvironmentInfo>, CallError>> + Send;
}

impl ComputeEnvironments for Aws {
    async fn describe_compute_environment(
        &self,
        name: &str,
    ) -> Result<Option<ComputeEnvironmentInfo>, CallError> {
        let client = aws_sdk_batch::Client::new(self.config().await?);
        describe(&client, name).await
    }
}

pub use blockwatch_aws::describe_compute_environment::describe;
