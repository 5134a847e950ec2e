//! The ECS side of a drain: find our container instance, set DRAINING or
//! ACTIVE, see and stop its tasks; and whether the local ECS agent answers.
//! (About 570 lines: the trait, the introspection client and the ECS API
//! calls it takes are one adapter, and each call keeps its paging and error
//! mapping beside it.)
//!
//! [`ContainerService`] is what the drain executor (`run::executor`) talks
//! to; [`Ecs`] is the real one (the local ECS agent's introspection API and
//! the ECS API), and the executor's unit tests use a fake.
//!
//! A stopped task is not a stopped container: `StopTask` sets desiredStatus
//! STOPPED at once, while the containers run on through their stop timeout.
//! So a task counts until the host says it stopped: the ECS agent's
//! `/v1/tasks` `KnownStatus`, else the control plane's `lastStatus`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use aws_sdk_ecs::types::{ContainerInstanceStatus, DesiredStatus};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::sync::watch;

use super::autoscaling::{AutoScaling, DiscoveryError, HookError, LifecycleHooks};
use super::checkpoint::{signal_opted_in, PassReport, TaskContainer, Unreached};
use super::docker::DockerEngine;
use crate::sources::aws::{classify, Aws};
use crate::sources::{AwsFailure, CallError};
use blockwatch_core::lifecycle_hook::LifecycleHook;

/// The ECS agent's local introspection API: no IAM needed.
pub const DEFAULT_INTROSPECTION_URL: &str = "http://127.0.0.1:51678/v1/metadata";
/// The local ECS agent answers at once or not at all.
const INTROSPECTION_TIMEOUT: Duration = Duration::from_secs(1);
/// The most a `/v1/metadata` answer may hold: more is not the ECS agent.
pub const INTROSPECTION_CAP: usize = 64 * 1024;
/// The most a `/v1/tasks` answer may hold. The ECS agent lists a stopped
/// task for 3 h (about 1 KiB each), so a busy host passes 64 KiB; the
/// checkpoint signal has no other way to its containers.
pub const INTROSPECTION_TASKS_CAP: usize = 1024 * 1024;
/// `DescribeTasks` takes at most this many tasks a call.
const DESCRIBE_TASKS_MAX: usize = 100;
/// The status ECS and its agent give a task whose containers have all exited.
const STOPPED: &str = "STOPPED";

/// A task of this container instance that the host has not seen stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTask {
    pub arn: String,
    /// ECS already wants it stopped (desiredStatus STOPPED): StopTask was called, by us or anyone.
    pub stop_requested: bool,
}

/// How one round of StopTask calls went: each task on its own, so one throttled call does not stop the rest.
#[derive(Debug, Default)]
pub struct StopReport {
    pub stopped: Vec<String>,
    pub failed: Vec<(String, CallError)>,
}

/// ECS and the host's tasks, and the Auto Scaling lifecycle hook of the
/// instance's group (its own adapter, [`AutoScaling`]).
pub trait ContainerService: LifecycleHooks {
    /// Our container instance's ARN, or `None` while it is not registered.
    fn find_container_instance(
        &self,
        cluster: &str,
        instance_id: &str,
    ) -> impl Future<Output = Result<Option<String>, CallError>> + Send;
    /// DRAINING when `draining`, else ACTIVE.
    fn set_draining(
        &self,
        cluster: &str,
        container_instance: &str,
        draining: bool,
    ) -> impl Future<Output = Result<(), CallError>> + Send;
    /// Every task of this container instance still running on the host (KnownStatus not STOPPED).
    fn tasks(
        &self,
        cluster: &str,
        container_instance: &str,
    ) -> impl Future<Output = Result<Vec<HostTask>, CallError>> + Send;
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
    /// Sends the opted-in containers of this instance's tasks their
    /// checkpoint signal.
    fn signal_checkpoint(&self) -> impl Future<Output = PassReport> + Send;
}

/// Why the introspection API gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum IntrospectionError {
    #[error("the ECS agent does not answer at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("the ECS agent answered HTTP {status} at {url}")]
    Status { url: String, status: u16 },
    #[error("the answer at {url} is over {cap} bytes: refused")]
    TooLarge { url: String, cap: usize },
    #[error("the answer at {url} is not the ECS agent's JSON: {detail}")]
    NotJson { url: String, detail: String },
    #[error("no tasks URL can be made from {url}")]
    NoTasksUrl { url: String },
}

/// What the local ECS agent says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentMetadata {
    pub cluster: Option<String>,
    pub container_instance_arn: Option<String>,
}

impl AgentMetadata {
    /// The container instance, when the ECS agent registered it in `cluster`
    /// (a name or an ARN).
    fn container_instance_in(self, cluster: &str) -> Option<String> {
        let same_cluster = self
            .cluster
            .as_deref()
            .is_some_and(|c| c == cluster || c.ends_with(&format!("/{cluster}")));
        self.container_instance_arn.filter(|_| same_cluster)
    }
}

/// `GET /v1/tasks` (the ECS agent's `TasksResponse`): every task it knows,
/// STOPPED ones included until it cleans them up (3 h by default).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AgentTasks {
    tasks: Vec<AgentTask>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AgentTask {
    arn: String,
    #[serde(default)]
    containers: Vec<AgentContainer>,
    /// Omitted by the agent in some states (`omitempty`).
    #[serde(default)]
    desired_status: Option<String>,
    /// The backend status: PENDING, RUNNING or STOPPED.
    known_status: String,
}

/// A container of a task, as `/v1/tasks` gives it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AgentContainer {
    /// Empty until Docker created the container (`omitempty`).
    #[serde(default)]
    docker_id: String,
    #[serde(default)]
    name: String,
}

/// The local ECS agent's introspection API.
#[derive(Debug, Clone)]
pub struct Introspection {
    client: reqwest::Client,
    url: String,
    tasks_url: Option<String>,
}

impl Introspection {
    /// `client` is the agent's one HTTP client; each request here has its
    /// own short timeout. `url` is the metadata URL (`…/v1/metadata`); the
    /// tasks URL is its sibling (`…/v1/tasks`).
    pub fn new(client: reqwest::Client, url: String) -> Self {
        let tasks_url = reqwest::Url::parse(&url)
            .and_then(|u| u.join("tasks"))
            .ok()
            .map(String::from);
        Self {
            client,
            url,
            tasks_url,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// What the ECS agent says about itself.
    pub async fn metadata(&self) -> Result<AgentMetadata, IntrospectionError> {
        self.get(&self.url, INTROSPECTION_CAP).await
    }

    /// The tasks the ECS agent has not seen stop.
    pub async fn tasks(&self) -> Result<Vec<HostTask>, IntrospectionError> {
        let answer: AgentTasks = self.get(self.tasks_url()?, INTROSPECTION_TASKS_CAP).await?;
        Ok(answer
            .tasks
            .into_iter()
            .filter(|t| t.known_status != STOPPED)
            .map(|t| HostTask {
                stop_requested: t.desired_status.as_deref() == Some(STOPPED),
                arn: t.arn,
            })
            .collect())
    }

    /// The containers of the tasks the ECS agent has not seen stop: the only
    /// ones a checkpoint signal may go to.
    pub async fn task_containers(&self) -> Result<Vec<TaskContainer>, IntrospectionError> {
        let answer: AgentTasks = self.get(self.tasks_url()?, INTROSPECTION_TASKS_CAP).await?;
        Ok(answer
            .tasks
            .into_iter()
            .filter(|t| t.known_status != STOPPED)
            .flat_map(|task| {
                let arn = task.arn;
                task.containers
                    .into_iter()
                    .filter(|c| !c.docker_id.is_empty())
                    .map(move |c| TaskContainer {
                        task_arn: arn.clone(),
                        name: c.name,
                        docker_id: c.docker_id,
                    })
            })
            .collect())
    }

    fn tasks_url(&self) -> Result<&str, IntrospectionError> {
        self.tasks_url
            .as_deref()
            .ok_or_else(|| IntrospectionError::NoTasksUrl {
                url: self.url.clone(),
            })
    }

    /// A JSON answer of at most `cap` bytes, read as it comes so that a
    /// larger one is never held.
    async fn get<T: DeserializeOwned>(
        &self,
        url: &str,
        cap: usize,
    ) -> Result<T, IntrospectionError> {
        let unreachable = |e: reqwest::Error| IntrospectionError::Unreachable {
            url: url.to_owned(),
            detail: e.to_string(),
        };
        let too_large = || IntrospectionError::TooLarge {
            url: url.to_owned(),
            cap,
        };
        let request = self.client.get(url).timeout(INTROSPECTION_TIMEOUT);
        let mut response = request.send().await.map_err(unreachable)?;
        if !response.status().is_success() {
            return Err(IntrospectionError::Status {
                url: url.to_owned(),
                status: response.status().as_u16(),
            });
        }
        if response
            .content_length()
            .is_some_and(|n| n > u64::try_from(cap).unwrap_or(u64::MAX))
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > cap {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| IntrospectionError::NotJson {
            url: url.to_owned(),
            detail: e.to_string(),
        })
    }
}

/// Whether a container instance ARN the ECS agent gave is ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ownership {
    Ours,
    /// Registered for another EC2 instance: never written to.
    Other,
}

/// The real container service: the local ECS agent first (no IAM, no API
/// call), then the ECS API through the current AWS clients (the run loop
/// replaces them when IMDS needs a fresh session).
#[derive(Debug, Clone)]
pub struct Ecs {
    aws: watch::Receiver<Arc<Aws>>,
    introspection: Introspection,
    /// Each introspection ARN checked once against the instance id.
    confirmed: Arc<Mutex<HashMap<String, Ownership>>>,
    /// Why introspection last failed to give the tasks: logged when it changes.
    tasks_fallback: Arc<Mutex<Option<String>>>,
    /// Where checkpoint signals go, or why they cannot (a `DOCKER_HOST`
    /// blockwatch cannot use).
    docker: Result<DockerEngine, String>,
    autoscaling: AutoScaling,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Ecs {
    pub fn new(
        aws: watch::Receiver<Arc<Aws>>,
        introspection: Introspection,
        docker: Result<DockerEngine, String>,
    ) -> Self {
        Self {
            autoscaling: AutoScaling::new(aws.clone()),
            aws,
            introspection,
            confirmed: Arc::default(),
            tasks_fallback: Arc::default(),
            docker,
        }
    }

    /// An ECS client on the current AWS configuration.
    async fn client(&self) -> Result<aws_sdk_ecs::Client, CallError> {
        let aws = Arc::clone(&self.aws.borrow());
        Ok(aws_sdk_ecs::Client::new(aws.config().await?))
    }

    /// Whether `arn` (from the introspection API) is `instance_id`'s
    /// container instance in `cluster`: asked of ECS once per ARN. `None`
    /// when ECS does not know it (yet): asked again next time.
    async fn ownership(
        &self,
        cluster: &str,
        arn: &str,
        instance_id: &str,
    ) -> Result<Option<Ownership>, CallError> {
        if let Some(known) = lock(&self.confirmed).get(arn) {
            return Ok(Some(*known));
        }
        let described = self
            .client()
            .await?
            .describe_container_instances()
            .cluster(cluster)
            .container_instances(arn)
            .send()
            .await
            .map_err(|e| classify("ecs:DescribeContainerInstances", &e))?;
        let Some(ec2_instance) = described
            .container_instances()
            .iter()
            .find(|ci| ci.container_instance_arn() == Some(arn))
            .and_then(|ci| ci.ec2_instance_id())
        else {
            return Ok(None);
        };
        let ownership = if ec2_instance == instance_id {
            Ownership::Ours
        } else {
            log::warn!(CLUSTER = cluster;
                "the ECS agent's introspection API names container instance {arn}, which is EC2 instance {ec2_instance}, not {instance_id}: refused, looking ours up by instance id"
            );
            Ownership::Other
        };
        lock(&self.confirmed).insert(arn.to_owned(), ownership);
        Ok(Some(ownership))
    }

    /// Logs once each time the way tasks are seen changes.
    fn note_tasks_source(&self, fallback: Option<&IntrospectionError>) {
        let why = fallback.map(ToString::to_string);
        let mut last = lock(&self.tasks_fallback);
        if *last == why {
            return;
        }
        match &why {
            Some(why) => {
                log::warn!("{why}; seeing tasks through ecs:ListTasks and ecs:DescribeTasks")
            }
            None if last.is_some() => {
                log::info!("seeing tasks through the ECS agent's introspection API again");
            }
            None => {}
        }
        *last = why;
    }
}

impl LifecycleHooks for Ecs {
    async fn termination_hook(
        &self,
        instance_id: &str,
        group: Option<&str>,
        hook: Option<&str>,
    ) -> Result<Option<LifecycleHook>, DiscoveryError> {
        self.autoscaling
            .termination_hook(instance_id, group, hook)
            .await
    }

    async fn record_heartbeat(
        &self,
        hook: &LifecycleHook,
        instance_id: &str,
    ) -> Result<(), HookError> {
        self.autoscaling.record_heartbeat(hook, instance_id).await
    }

    async fn complete(&self, hook: &LifecycleHook, instance_id: &str) -> Result<(), HookError> {
        self.autoscaling.complete(hook, instance_id).await
    }
}

impl ContainerService for Ecs {
    async fn find_container_instance(
        &self,
        cluster: &str,
        instance_id: &str,
    ) -> Result<Option<String>, CallError> {
        let introspected = self
            .introspection
            .metadata()
            .await
            .inspect_err(|e| {
                if matches!(
                    e,
                    IntrospectionError::TooLarge { .. } | IntrospectionError::NotJson { .. }
                ) {
                    log::warn!("{e}; looking the container instance up by instance id");
                }
            })
            .ok()
            .and_then(|m| m.container_instance_in(cluster));
        if let Some(arn) = introspected {
            if self.ownership(cluster, &arn, instance_id).await? == Some(Ownership::Ours) {
                return Ok(Some(arn));
            }
        }
        list_container_instance(&self.client().await?, cluster, instance_id).await
    }

    async fn set_draining(
        &self,
        cluster: &str,
        container_instance: &str,
        draining: bool,
    ) -> Result<(), CallError> {
        update_state(&self.client().await?, cluster, container_instance, draining).await
    }

    async fn tasks(
        &self,
        cluster: &str,
        container_instance: &str,
    ) -> Result<Vec<HostTask>, CallError> {
        // The local ECS agent holds this host's tasks only: no filter needed.
        match self.introspection.tasks().await {
            Ok(tasks) => {
                self.note_tasks_source(None);
                Ok(tasks)
            }
            Err(err) => {
                self.note_tasks_source(Some(&err));
                list_host_tasks(&self.client().await?, cluster, container_instance).await
            }
        }
    }

    async fn stop_tasks(&self, cluster: &str, tasks: &[String], reason: &str) -> StopReport {
        match self.client().await {
            Ok(client) => stop_each(&client, cluster, tasks, reason).await,
            Err(err) => StopReport {
                stopped: Vec::new(),
                failed: tasks.iter().map(|t| (t.clone(), copy_of(&err))).collect(),
            },
        }
    }

    async fn agent_answers(&self) -> bool {
        self.introspection.metadata().await.is_ok()
    }

    async fn signal_checkpoint(&self) -> PassReport {
        let docker = match self.docker.as_ref() {
            Ok(docker) => docker,
            Err(why) => return PassReport::unreached(Unreached::DockerHost(why.clone())),
        };
        match self.introspection.task_containers().await {
            Ok(containers) => signal_opted_in(&containers, docker).await,
            Err(err) => PassReport::unreached(Unreached::Tasks(err)),
        }
    }
}

/// The same failure again, for each task it kept from being stopped.
fn copy_of(err: &CallError) -> CallError {
    match err {
        CallError::Imds { path, detail } => CallError::Imds {
            path: path.clone(),
            detail: detail.clone(),
        },
        CallError::Aws { api, kind, detail } => CallError::Aws {
            api,
            kind: *kind,
            detail: detail.clone(),
        },
    }
}
/// `ecs:ListContainerInstances` filtered on the instance id, checked with
/// `ecs:DescribeContainerInstances`.
async fn list_container_instance(
    client: &aws_sdk_ecs::Client,
    cluster: &str,
    instance_id: &str,
) -> Result<Option<String>, CallError> {
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
) -> Result<(), CallError> {
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
        Some(failure) => Err(CallError::Aws {
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

/// The control plane's view, when the ECS agent's is not to be had: the
/// tasks `ecs:ListTasks` lists with either desired status, less those
/// `ecs:DescribeTasks` says are STOPPED (`lastStatus`).
///
/// Only the tasks ECS wants stopped are described: ECS wants a task stopped
/// once it stops, so one it wants running runs. That saves calls, and moto
/// moves each running task it describes a step towards STOPPED.
async fn list_host_tasks(
    client: &aws_sdk_ecs::Client,
    cluster: &str,
    container_instance: &str,
) -> Result<Vec<HostTask>, CallError> {
    let running = list_tasks(client, cluster, container_instance, DesiredStatus::Running).await?;
    let stopping = list_tasks(client, cluster, container_instance, DesiredStatus::Stopped).await?;
    // arn → stop requested; a task stopped between the two listings is in both.
    let mut host: BTreeMap<String, bool> = running.into_iter().map(|arn| (arn, false)).collect();
    host.extend(stopping.iter().map(|arn| (arn.clone(), true)));
    for chunk in stopping.chunks(DESCRIBE_TASKS_MAX) {
        let described = client
            .describe_tasks()
            .cluster(cluster)
            .set_tasks(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| classify("ecs:DescribeTasks", &e))?;
        // A listed task ECS could not describe is kept: not known stopped.
        for task in described.tasks() {
            if task.last_status() == Some(STOPPED) {
                if let Some(arn) = task.task_arn() {
                    host.remove(arn);
                }
            }
        }
    }
    Ok(host
        .into_iter()
        .map(|(arn, stop_requested)| HostTask {
            arn,
            stop_requested,
        })
        .collect())
}

/// `ecs:ListTasks` of `container_instance` with `desired` status, every page.
/// (Public for the test kit's ECS-agent stand-in, which lists the same way.)
pub async fn list_tasks(
    client: &aws_sdk_ecs::Client,
    cluster: &str,
    container_instance: &str,
    desired: DesiredStatus,
) -> Result<Vec<String>, CallError> {
    let mut tasks = Vec::new();
    let mut pages = client
        .list_tasks()
        .cluster(cluster)
        .container_instance(container_instance)
        .desired_status(desired)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| classify("ecs:ListTasks", &e))?;
        tasks.extend(page.task_arns().iter().cloned());
    }
    Ok(tasks)
}

/// One `ecs:StopTask` per task; a failure is recorded and the next task is
/// stopped all the same.
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
            .await;
        match stopped {
            Ok(_) => report.stopped.push(task.clone()),
            Err(e) => report
                .failed
                .push((task.clone(), classify("ecs:StopTask", &e))),
        }
    }
    report
}
