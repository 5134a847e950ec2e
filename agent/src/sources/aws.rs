//! The shared AWS SDK configuration, built once and only when a call needs it.

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_batch::config::http::HttpResponse;
use aws_sdk_batch::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use tokio::sync::OnceCell;

use super::imds::{Imds, InstanceMetadata};
use super::{AwsFailure, SourceError};

/// Lazily-built SDK configuration.
///
/// Nothing here touches the network until the first AWS call: a join with an
/// explicit cluster makes none. The region is `AWS_REGION` if set, else the
/// one in the (cached) identity document, so the SDK never asks IMDS for it
/// again; the credential chain reuses our IMDS client and its token.
#[derive(Debug)]
pub struct Aws {
    imds: Imds,
    config: OnceCell<SdkConfig>,
}

impl Aws {
    pub fn new(imds: Imds) -> Self {
        Self {
            imds,
            config: OnceCell::new(),
        }
    }

    pub(crate) async fn config(&self) -> Result<&SdkConfig, SourceError> {
        self.config.get_or_try_init(|| self.load()).await
    }

    async fn load(&self) -> Result<SdkConfig, SourceError> {
        let region = match std::env::var("AWS_REGION") {
            Ok(region) if !region.is_empty() => region,
            _ => self.imds.identity().await?.region,
        };
        let region = Region::new(region);
        let credentials = DefaultCredentialsChain::builder()
            .region(region.clone())
            .imds_client(self.imds.client())
            .build()
            .await;
        Ok(aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .credentials_provider(credentials)
            .load()
            .await)
    }
}

/// Error codes that mean "you may not", whatever the service.
const DENIED_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "AuthFailure",
    "ExpiredToken",
    "ExpiredTokenException",
    "SignatureDoesNotMatch",
];

/// Turns an SDK error into a one-line [`SourceError`] that knows whether a
/// retry could help.
pub fn classify<E>(api: &'static str, err: &SdkError<E, HttpResponse>) -> SourceError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let (kind, detail) = match err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = err.code().unwrap_or("unknown error");
            let message = err.message().unwrap_or("");
            let detail = format!("{code}: {message} (HTTP {status})");
            let kind = if DENIED_CODES.contains(&code) {
                AwsFailure::Denied
            } else if status >= 500
                || status == 429
                || code.contains("Throttl")
                || code == "RequestLimitExceeded"
            {
                AwsFailure::Transient
            } else {
                AwsFailure::Rejected
            };
            (kind, detail)
        }
        other => (
            AwsFailure::Transient,
            DisplayErrorContext(other).to_string(),
        ),
    };
    SourceError::Aws {
        api,
        kind,
        detail: detail.replace('\n', " "),
    }
}
