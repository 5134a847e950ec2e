//! Auto Scaling's termination lifecycle hook over `aws-sdk-autoscaling`:
//! finding the group and its hook, the heartbeats and the completion.
//!
//! The group comes from the instance tag `aws:autoscaling:groupName` in
//! IMDS (when the instance exposes its tags there), else from
//! `DescribeAutoScalingInstances`; the hook is the configured one, else the
//! group's termination
//! hook (`autoscaling:EC2_INSTANCE_TERMINATING`) from
//! `DescribeLifecycleHooks`. The run loop's unit tests use a fake.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_autoscaling::error::ProvideErrorMetadata;
use tokio::sync::watch;

use crate::sources::aws::{classify, Aws};
use crate::sources::CallError;
use blockwatch_core::lifecycle_hook::{LifecycleHook, CONTINUE, TERMINATING};

/// Auto Scaling's answer when the instance has no lifecycle action
/// waiting on that hook (it timed out, or was completed already).
const VALIDATION_ERROR: &str = "ValidationError";
/// The instance tag Auto Scaling puts on the instances of a group.
const GROUP_TAG: &str = "/latest/meta-data/tags/instance/aws:autoscaling:groupName";

/// Why a lifecycle hook call failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// Auto Scaling has no such action waiting for this instance: it timed
    /// out, or it was completed already (before a restart). Nothing more
    /// is to be sent for it.
    #[error("{api}: no lifecycle action waits on hook {hook} of group {group} for this instance: {detail}")]
    NoActiveAction {
        api: &'static str,
        group: String,
        hook: String,
        detail: String,
    },
    #[error(transparent)]
    Call(#[from] CallError),
}

/// Why the termination hook could not be found.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("lifecycle_hook {hook:?} is not a termination hook of Auto Scaling group {group}")]
    NoSuchHook { group: String, hook: String },
}

/// Auto Scaling's lifecycle hook calls, for the executor.
pub trait LifecycleHooks {
    /// The termination hook of this instance's group: `None` when the
    /// instance is in no group, or its group has no termination hook.
    /// `group` when already known; `hook` when configured.
    fn termination_hook(
        &self,
        instance_id: &str,
        group: Option<&str>,
        hook: Option<&str>,
    ) -> impl Future<Output = Result<Option<LifecycleHook>, DiscoveryError>> + Send;
    /// `RecordLifecycleActionHeartbeat`.
    fn record_heartbeat(
        &self,
        hook: &LifecycleHook,
        instance_id: &str,
    ) -> impl Future<Output = Result<(), HookError>> + Send;
    /// `CompleteLifecycleAction` with `CONTINUE`.
    fn complete(
        &self,
        hook: &LifecycleHook,
        instance_id: &str,
    ) -> impl Future<Output = Result<(), HookError>> + Send;
}

/// The real Auto Scaling, on the agent's current AWS configuration.
#[derive(Debug, Clone)]
pub struct AutoScaling {
    aws: watch::Receiver<Arc<Aws>>,
}

impl AutoScaling {
    pub fn new(aws: watch::Receiver<Arc<Aws>>) -> Self {
        Self { aws }
    }

    async fn client(&self) -> Result<aws_sdk_autoscaling::Client, CallError> {
        let aws = Arc::clone(&self.aws.borrow());
        Ok(aws_sdk_autoscaling::Client::new(aws.config().await?))
    }

    /// The group's name from the instance tag in IMDS; `None` when tags are
    /// not exposed there (or IMDS fails: the API is asked instead).
    async fn group_from_tag(&self) -> Option<String> {
        let aws = Arc::clone(&self.aws.borrow());
        let tag = aws.imds().get_optional(GROUP_TAG).await;
        tag.ok().flatten().filter(|g| !g.is_empty())
    }
}

/// A hook call's error: "no active lifecycle action" apart, since retrying
/// cannot help it.
fn hook_error<E>(
    api: &'static str,
    hook: &LifecycleHook,
    err: &aws_sdk_autoscaling::error::SdkError<E, aws_sdk_autoscaling::config::http::HttpResponse>,
) -> HookError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let call = classify(api, err);
    if err.code() == Some(VALIDATION_ERROR) {
        let CallError::Aws { detail, .. } = call else {
            return HookError::Call(call);
        };
        return HookError::NoActiveAction {
            api,
            group: hook.group.clone(),
            hook: hook.name.clone(),
            detail,
        };
    }
    HookError::Call(call)
}

fn seconds(value: Option<i32>) -> Option<Duration> {
    value
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs)
}

impl LifecycleHooks for AutoScaling {
    async fn termination_hook(
        &self,
        instance_id: &str,
        group: Option<&str>,
        hook: Option<&str>,
    ) -> Result<Option<LifecycleHook>, DiscoveryError> {
        let client = self.client().await?;
        let group = match group.map(str::to_owned) {
            Some(group) => group,
            None => match self.group_from_tag().await {
                Some(group) => group,
                None => {
                    const API: &str = "autoscaling:DescribeAutoScalingInstances";
                    let found = client
                        .describe_auto_scaling_instances()
                        .instance_ids(instance_id)
                        .send()
                        .await
                        .map_err(|e| classify(API, &e))?;
                    let Some(group) = found
                        .auto_scaling_instances()
                        .iter()
                        .find_map(|i| i.auto_scaling_group_name())
                    else {
                        return Ok(None);
                    };
                    group.to_owned()
                }
            },
        };
        const API: &str = "autoscaling:DescribeLifecycleHooks";
        let mut request = client
            .describe_lifecycle_hooks()
            .auto_scaling_group_name(&group);
        if let Some(name) = hook {
            request = request.lifecycle_hook_names(name);
        }
        let hooks = request.send().await.map_err(|e| classify(API, &e))?;
        let found = hooks
            .lifecycle_hooks()
            .iter()
            .filter(|h| h.lifecycle_transition() == Some(TERMINATING))
            .find_map(|h| {
                Some(LifecycleHook {
                    group: group.clone(),
                    name: h.lifecycle_hook_name()?.to_owned(),
                    heartbeat_timeout: seconds(h.heartbeat_timeout())?,
                    global_timeout: seconds(h.global_timeout()),
                })
            });
        match (found, hook) {
            (None, Some(hook)) => Err(DiscoveryError::NoSuchHook {
                group,
                hook: hook.to_owned(),
            }),
            (found, _) => Ok(found),
        }
    }

    async fn record_heartbeat(
        &self,
        hook: &LifecycleHook,
        instance_id: &str,
    ) -> Result<(), HookError> {
        const API: &str = "autoscaling:RecordLifecycleActionHeartbeat";
        self.client()
            .await?
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(&hook.group)
            .lifecycle_hook_name(&hook.name)
            .instance_id(instance_id)
            .send()
            .await
            .map_err(|e| hook_error(API, hook, &e))?;
        Ok(())
    }

    async fn complete(&self, hook: &LifecycleHook, instance_id: &str) -> Result<(), HookError> {
        const API: &str = "autoscaling:CompleteLifecycleAction";
        self.client()
            .await?
            .complete_lifecycle_action()
            .auto_scaling_group_name(&hook.group)
            .lifecycle_hook_name(&hook.name)
            .instance_id(instance_id)
            .lifecycle_action_result(CONTINUE)
            .send()
            .await
            .map_err(|e| hook_error(API, hook, &e))?;
        Ok(())
    }
}
