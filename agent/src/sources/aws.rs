//! The shared AWS SDK configuration, built once and only when a call needs it.

use std::time::Duration;

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use tokio::sync::OnceCell;

use super::imds::{Imds, InstanceMetadata};
use super::CallError;

/// How long one AWS call may take. Every call the agent makes is small, so
/// a healthy endpoint answers in well under a second; these bound a network
/// or endpoint that accepts and never answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwsTimeouts {
    /// Establishing a TCP (and TLS) connection.
    pub connect: Duration,
    /// One HTTP attempt; a timed-out attempt is retried by the SDK.
    pub attempt: Duration,
    /// The whole call, retries included.
    pub operation: Duration,
}

impl AwsTimeouts {
    /// For `run` and a join with a long `--retry-for`: attempts of 10 s, calls
    /// of 30 s. A drain step that hangs is abandoned and retried by the loop
    /// on its next tick, well inside a 10-minute drain lead.
    pub const DEFAULT: Self = Self {
        connect: Duration::from_secs(3),
        attempt: Duration::from_secs(10),
        operation: Duration::from_secs(30),
    };

    /// Timeouts that leave room for retries within `budget` (a join's
    /// `--retry-for`): a quarter of it per attempt and half per call, never
    /// more than [`Self::DEFAULT`] and never under 1 s per attempt.
    pub fn within(budget: Duration) -> Self {
        let one = Duration::from_secs(1);
        let attempt = (budget / 4).clamp(one, Self::DEFAULT.attempt);
        let operation = (budget / 2).clamp(attempt * 2, Self::DEFAULT.operation);
        Self {
            connect: Self::DEFAULT.connect.min(attempt),
            attempt,
            operation,
        }
    }

    fn config(self) -> TimeoutConfig {
        TimeoutConfig::builder()
            .connect_timeout(self.connect)
            .operation_attempt_timeout(self.attempt)
            .operation_timeout(self.operation)
            .build()
    }
}

impl Default for AwsTimeouts {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Lazily-built SDK configuration.
///
/// Nothing here touches the network until the first AWS call: a join with an
/// explicit cluster makes none. The region is `AWS_REGION` if set, else the
/// one in the (cached) identity document, so the SDK never asks IMDS for it
/// again; the credential chain reuses our IMDS client and its token.
#[derive(Debug)]
pub struct Aws {
    imds: Imds,
    timeouts: AwsTimeouts,
    /// `Some(1)` when the caller retries itself: one retry layer, not the
    /// SDK's attempts multiplied by the caller's.
    max_attempts: Option<u32>,
    config: OnceCell<SdkConfig>,
}

impl Aws {
    pub fn new(imds: Imds) -> Self {
        Self::with_timeouts(imds, AwsTimeouts::DEFAULT)
    }

    pub fn with_timeouts(imds: Imds, timeouts: AwsTimeouts) -> Self {
        Self {
            imds,
            timeouts,
            max_attempts: None,
            config: OnceCell::new(),
        }
    }

    /// On a configuration built elsewhere (tests against moto): no lookup
    /// of region or credentials.
    pub fn with_config(imds: Imds, config: SdkConfig) -> Self {
        Self {
            config: OnceCell::new_with(Some(config)),
            ..Self::new(imds)
        }
    }

    /// Each call makes one HTTP attempt: the caller (the join's jittered
    /// retry) is the only retry layer.
    pub fn single_attempt(mut self) -> Self {
        self.max_attempts = Some(1);
        self
    }

    /// The IMDS client the credential chain shares.
    pub(crate) fn imds(&self) -> &Imds {
        &self.imds
    }

    pub(crate) async fn config(&self) -> Result<&SdkConfig, CallError> {
        self.config.get_or_try_init(|| self.load()).await
    }

    async fn load(&self) -> Result<SdkConfig, CallError> {
        let region = match std::env::var("AWS_REGION") {
            Ok(region) if !region.is_empty() => region,
            _ => self.imds.identity().await?.region,
        };
        let region = Region::new(region);
        // The chain's own HTTP calls (container credentials, STS for web
        // identity) go through the same client as the SDK's.
        let provider_config = aws_config::provider_config::ProviderConfig::default()
            .with_http_client(blockwatch_aws::https_client());
        let credentials = DefaultCredentialsChain::builder()
            .configure(provider_config)
            .region(region.clone())
            .imds_client(self.imds.client())
            .build()
            .await;
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(blockwatch_aws::https_client())
            .region(region)
            .credentials_provider(credentials)
            .timeout_config(self.timeouts.config());
        if let Some(attempts) = self.max_attempts {
            loader = loader.retry_config(RetryConfig::standard().with_max_attempts(attempts));
        }
        Ok(loader.load().await)
    }
}

pub use blockwatch_aws::classify::{causes, classify, classify_at, endpoint_of};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_fit_a_short_retry_budget_and_cap_at_the_defaults() {
        let short = AwsTimeouts::within(Duration::from_secs(4));
        assert_eq!(short.attempt, Duration::from_secs(1));
        assert_eq!(short.operation, Duration::from_secs(2));
        assert_eq!(short.connect, Duration::from_secs(1));
        assert_eq!(
            AwsTimeouts::within(Duration::from_secs(300)),
            AwsTimeouts::DEFAULT
        );
        let none = AwsTimeouts::within(Duration::ZERO);
        assert!(none.attempt >= Duration::from_secs(1) && none.operation >= none.attempt);
    }
}
