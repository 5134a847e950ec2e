//! The ECS side of a drain: find our container instance, set DRAINING or
//! ACTIVE, count and stop its tasks; and whether the local ECS agent answers.
//!
//! [`ContainerService`] is what the drain executor (`run::executor`) talks
//! to; [`Ecs`] is the real one (the local ECS agent's introspection API and
//! the ECS API), and the executor's unit tests use a fake.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ecs::types::{ContainerInstanceStatus, DesiredStatus};
use serde::Deserialize;
use tokio::sync::watch;

use crate::sources::aws::{classify, Aws};
use crate::sources::{AwsFailure, SourceError};

/// The ECS agent's local introspection API: no IAM needed.
pub const DEFAULT_INTROSPECTION_URL: &str = "http://127.0.0.1:51678/v1/metadata";
/// The local ECS agent answers at once or not at all.
const INTROSPECTION_TIMEOUT: Duration = Duration::from_secs(1);

/// A task of this container instance that the host has not seen stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTask {
    pub arn: String,
    /// ECS already wants it stopped (desiredStatus STOPPED): StopTask was
    /// called, by us or anyone.
    pub stop_requested: bool,
}

/// How one round of StopTask calls went: each task on its own, so one
/// throttled call does not stop the rest.
#[derive(Debug, Default)]
pub struct StopReport {
    pub stopped: Vec<String>,
    pub failed: Vec<(String, SourceError)>,
}

pub trait ContainerService {
    /// Our container instance's ARN, or `None` while it is not registered.
    fn find_container_instance(
        &self,
        cluster: &str,
        instance_id: &str,
    ) -> impl Future<Output = Result<Option<String>, SourceError>> + Send;
    /// DRAINING when `draining`, else ACTIVE.
    fn set_draining(
        &self,
        cluster: &str,
        container_instance: &str,
        draining: bool,
    ) -> impl Future<Output = Result<(), SourceError>> + Send;
    /// Every task of this container instance still running on the host
    /// (KnownStatus not STOPPED).
    fn tasks(
        &self,
        cluster: &str,
        container_instance: &str,
    ) -> impl Future<Output = Result<Vec<HostTask>, SourceError>> + Send;
    /// One StopTask per task; goes on after a failure.
    fn stop_tasks(
        &self,
        cluster: &str,
        tasks: &[String],
        reason: &str,
    ) -> impl Future<Output = StopReport> + Send;
    /// Whether the local ECS agent answers (no AWS call): blockwatch keeps
    /// running when ecs.service fails, and says so.
    fn agent_answers(&self) -> impl Future<Output = bool> + Send;
}

/// What the local ECS agent says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentMetadata {
    pub cluster: Option<String>,
    pub container_instance_arn: Option<String>,
}

/// The local ECS agent's introspection API.
#[derive(Debug, Clone)]
pub struct Introspection {
    client: reqwest::Client,
    url: String,
}

impl Introspection {
    /// `client` is the agent's one HTTP client; each request here has its
    /// own short timeout.
    pub fn new(client: reqwest::Client, url: String) -> Self {
        Self { client, url }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// What the ECS agent says about itself; `None` when it does not answer
    /// (ecs.service not running, or not yet).
    pub async fn metadata(&self) -> Option<AgentMetadata> {
        let request = self.client.get(&self.url).timeout(INTROSPECTION_TIMEOUT);
        let body = request.send().await.ok()?.bytes().await.ok()?;
        serde_json::from_slice(&body).ok()
    }

    /// Our container instance as the local ECS agent registered it, or
    /// `None` when it does not answer or names another cluster.
    pub async fn container_instance(&self, cluster: &str) -> Option<String> {
        let metadata = self.metadata().await?;
        let same_cluster = metadata
            .cluster
            .as_deref()
            .is_some_and(|c| c == cluster || c.ends_with(&format!("/{cluster}")));
        metadata.container_instance_arn.filter(|_| same_cluster)
    }
}

/// The real container service: the local ECS agent first (no IAM, no API
/// call), then the ECS API through the current AWS clients (the run loop
/// replaces them when IMDS needs a fresh session).
#[derive(Debug, Clone)]
pub struct Ecs {
    aws: watch::Receiver<Arc<Aws>>,
    introspection: Introspection,
}

impl Ecs {
    pub fn new(aws: watch::Receiver<Arc<Aws>>, introspection: Introspection) -> Self {
        Self { aws, introspection }
    }

    /// An ECS client on the current AWS configuration.
    async fn client(&self) -> Result<aws_sdk_ecs::Client, SourceError> {
        let aws = Arc::clone(&self.aws.borrow());
        Ok(aws_sdk_ecs::Client::new(aws.config().await?))
    }
}

impl ContainerService for Ecs {
    async fn find_container_instance(
        &self,
        cluster: &str,
        instance_id: &str,
    ) -> Result<Option<String>, SourceError> {
        if let Some(arn) = self.introspection.container_instance(cluster).await {
            return Ok(Some(arn));
        }
        list_container_instance(&self.client().await?, cluster, instance_id).await
    }

    async fn set_draining(
        &self,
        cluster: &str,
        container_instance: &str,
        draining: bool,
    ) -> Result<(), SourceError> {
        update_state(&self.client().await?, cluster, container_instance, draining).await
    }

    async fn tasks(
        &self,
        cluster: &str,
        container_instance: &str,
    ) -> Result<Vec<HostTask>, SourceError> {
        let running =
            list_running_tasks(&self.client().await?, cluster, container_instance).await?;
        Ok(running
            .into_iter()
            .map(|arn| HostTask {
                arn,
                stop_requested: false,
            })
            .collect())
    }

    async fn stop_tasks(&self, cluster: &str, tasks: &[String], reason: &str) -> StopReport {
        match self.client().await {
            Ok(client) => stop_each(&client, cluster, tasks, reason).await,
            Err(err) => StopReport {
                stopped: Vec::new(),
                failed: vec![(tasks.join(", "), err)],
            },
        }
    }

    async fn agent_answers(&self) -> bool {
        self.introspection.metadata().await.is_some()
    }
}

/// `ecs:ListContainerInstances` filtered on the instance id, checked with
/// `ecs:DescribeContainerInstances`.
async fn list_container_instance(
    client: &aws_sdk_ecs::Client,
    cluster: &str,
    instance_id: &str,
) -> Result<Option<String>, SourceError> {
    let listed = client
        .list_container_instances()
        .cluster(cluster)
        .filter(format!("ec2InstanceId == {instance_id}"))
        .send()
        .await
        .map_err(|e| classify("ecs:ListContainerInstances", &e))?;
    if listed.container_instance_arns().is_empty() {
        return Ok(None);
    }
    // Check the instance id ourselves rather than trust the filter.
    let described = client
        .describe_container_instances()
        .cluster(cluster)
        .set_container_instances(Some(listed.container_instance_arns().to_vec()))
        .send()
        .await
        .map_err(|e| classify("ecs:DescribeContainerInstances", &e))?;
    Ok(described
        .container_instances()
        .iter()
        .filter(|ci| ci.ec2_instance_id() == Some(instance_id))
        .find(|ci| matches!(ci.status(), Some("ACTIVE" | "DRAINING")))
        .and_then(|ci| ci.container_instance_arn())
        .map(str::to_owned))
}

/// `ecs:UpdateContainerInstancesState`; a failure ECS lists in its answer
/// is a rejection.
async fn update_state(
    client: &aws_sdk_ecs::Client,
    cluster: &str,
    container_instance: &str,
    draining: bool,
) -> Result<(), SourceError> {
    let status = if draining {
        ContainerInstanceStatus::Draining
    } else {
        ContainerInstanceStatus::Active
    };
    let api = "ecs:UpdateContainerInstancesState";
    let output = client
        .update_container_instances_state()
        .cluster(cluster)
        .container_instances(container_instance)
        .status(status)
        .send()
        .await
        .map_err(|e| classify(api, &e))?;
    match output.failures().first() {
        None => Ok(()),
        Some(failure) => Err(SourceError::Aws {
            api,
            kind: AwsFailure::Rejected,
            detail: format!(
                "{}: {}",
                failure.arn().unwrap_or(container_instance),
                failure.reason().or(failure.detail()).unwrap_or("failed")
            ),
        }),
    }
}

async fn list_running_tasks(
    client: &aws_sdk_ecs::Client,
    cluster: &str,
    container_instance: &str,
) -> Result<Vec<String>, SourceError> {
    let mut tasks = Vec::new();
    let mut pages = client
        .list_tasks()
        .cluster(cluster)
        .container_instance(container_instance)
        .desired_status(DesiredStatus::Running)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| classify("ecs:ListTasks", &e))?;
        tasks.extend(page.task_arns().iter().cloned());
    }
    Ok(tasks)
}

async fn stop_each(
    client: &aws_sdk_ecs::Client,
    cluster: &str,
    tasks: &[String],
    reason: &str,
) -> StopReport {
    let mut report = StopReport::default();
    for task in tasks {
        let stopped = client
            .stop_task()
            .cluster(cluster)
            .task(task)
            .reason(reason)
            .send()
            .await
            .map_err(|e| classify("ecs:StopTask", &e));
        match stopped {
            Ok(_) => report.stopped.push(task.clone()),
            Err(err) => report.failed.push((task.clone(), err)),
        }
    }
    report
}
