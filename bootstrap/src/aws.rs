//! The launcher's side of AWS: its clients, which log each call at debug, and
//! the one error every AWS step of every subcommand fails with.

use std::time::Duration;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use blockwatch_aws::{AwsFailure, CallError};
use blockwatch_core::compute_environment::Refusal;

use crate::exit::{self, Exit};

/// An AWS step failed: the compute environment is refused, a call was
/// denied, or a call failed otherwise. Every subcommand's error embeds it, so
/// that a denial anywhere names the missing action the same way.
#[derive(Debug, thiserror::Error)]
pub enum AwsStepError {
    #[error(transparent)]
    ComputeEnvironment(#[from] Refusal),
    #[error("AccessDenied: the caller may not call {action}; grant it (see bootstrap/iam/launcher-policy.json)")]
    Denied {
        action: &'static str,
        detail: String,
    },
    #[error(transparent)]
    Call(CallError),
}

impl From<CallError> for AwsStepError {
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
            other => Self::Call(other),
        }
    }
}

impl AwsStepError {
    pub fn exit(&self) -> Exit {
        match self {
            Self::ComputeEnvironment(_) => exit::COMPUTE_ENVIRONMENT,
            Self::Denied { .. } => exit::DENIED,
            Self::Call(CallError::Aws {
                kind: AwsFailure::Rejected,
                ..
            }) => exit::REJECTED,
            Self::Call(_) => exit::TRANSIENT,
        }
    }
}

/// The SDK configuration: the standard chain (profiles with SSO and
/// credential_process included) over blockwatch's HTTPS client.
pub async fn sdk(call_timeout: Duration) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(blockwatch_aws::https_client())
        .timeout_config(timeouts(call_timeout))
        .load()
        .await
}

/// The SDK sets no limit on an answer's wait by default: a call that is
/// never answered would hold the command forever. Each attempt gets
/// `call_timeout`, and the SDK's retries (3 attempts) together get 4 times
/// it. Retrying a launch is safe: the SDK gives `CreateFleet`,
/// `RunInstances` and the template calls one `ClientToken` for all attempts.
fn timeouts(call_timeout: Duration) -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT.min(call_timeout))
        .operation_attempt_timeout(call_timeout)
        .operation_timeout(call_timeout.saturating_mul(4))
        .build()
}

/// How long reaching an endpoint may take, within `--call-timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The launcher's AWS clients, each logging its calls.
#[derive(Debug, Clone)]
pub struct Clients {
    pub batch: aws_sdk_batch::Client,
    pub ec2: aws_sdk_ec2::Client,
    pub ecs: aws_sdk_ecs::Client,
    /// Only for `--launch-template` when it hides tags from IMDS.
    pub iam: aws_sdk_iam::Client,
    pub ssm: aws_sdk_ssm::Client,
}

impl Clients {
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        Self {
            batch: aws_sdk_batch::Client::from_conf(
                aws_sdk_batch::config::Builder::from(sdk)
                    .interceptor(LogCalls)
                    .build(),
            ),
            ec2: aws_sdk_ec2::Client::from_conf(
                aws_sdk_ec2::config::Builder::from(sdk)
                    .interceptor(LogCalls)
                    .build(),
            ),
            ecs: aws_sdk_ecs::Client::from_conf(
                aws_sdk_ecs::config::Builder::from(sdk)
                    .interceptor(LogCalls)
                    .build(),
            ),
            iam: aws_sdk_iam::Client::from_conf(
                aws_sdk_iam::config::Builder::from(sdk)
                    .interceptor(LogCalls)
                    .build(),
            ),
            ssm: aws_sdk_ssm::Client::from_conf(
                aws_sdk_ssm::config::Builder::from(sdk)
                    .interceptor(LogCalls)
                    .build(),
            ),
        }
    }
}

/// Logs each attempt of each call at debug, named as IAM names it
/// (`ec2:RunInstances`), so `--log-level debug` shows what the launcher asks.
#[derive(Debug)]
struct LogCalls;

impl Intercept for LogCalls {
    fn name(&self) -> &'static str {
        "LogCalls"
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(call) = cfg.load::<Metadata>() {
            log::debug!(
                "calling {}:{}",
                call.service().to_ascii_lowercase(),
                call.name()
            );
        }
        Ok(())
    }
}
