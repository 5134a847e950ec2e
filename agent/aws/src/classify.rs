//! AWS SDK errors as one-line, typed [`CallError`]s: what failed, where,
//! and whether retrying can help.

use std::error::Error as StdError;

use aws_config::meta::ProviderChainError;
use aws_config::Region;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_batch::config::http::HttpResponse;
use aws_sdk_batch::error::{ConnectorError, ProvideErrorMetadata, SdkError};
use blockwatch_core::escape::escape;

use crate::{chain, AwsFailure, CallError};

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

/// The endpoint the SDK sends `service`'s calls to, for messages: the
/// standard `AWS_ENDPOINT_URL_<SERVICE>` or `AWS_ENDPOINT_URL` override, else
/// the regional AWS endpoint.
pub fn endpoint_of(service: &str, region: Option<&Region>) -> String {
    let variable = format!("AWS_ENDPOINT_URL_{}", service.to_ascii_uppercase());
    [variable.as_str(), "AWS_ENDPOINT_URL"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| {
            let region = region.map_or("<region>", |r| r.as_ref());
            format!("https://{service}.{region}.amazonaws.com")
        })
}

/// The instance metadata endpoint as the SDK resolves it from the
/// environment (`AWS_EC2_METADATA_SERVICE_ENDPOINT`, the IPv6 mode, else the
/// default address), for messages.
pub fn imds_endpoint_from_env() -> String {
    match std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => endpoint,
        _ => match std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE") {
            Ok(mode) if mode.eq_ignore_ascii_case("ipv6") => "http://[fd00:ec2::254]".into(),
            _ => "http://169.254.169.254".into(),
        },
    }
}

/// Turns an SDK error into a one-line [`CallError`] that knows whether a
/// retry could help. Text from the service is escaped; no Debug dumps.
pub fn classify<E>(api: &'static str, err: &SdkError<E, HttpResponse>) -> CallError
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    classify_at(api, None, err)
}

/// [`classify`], naming `endpoint` when the call did not get an answer.
pub fn classify_at<E>(
    api: &'static str,
    endpoint: Option<&str>,
    err: &SdkError<E, HttpResponse>,
) -> CallError
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    let from = endpoint.map(|e| format!(" from {e}")).unwrap_or_default();
    let to = endpoint.map_or_else(|| "the endpoint".to_owned(), str::to_owned);
    let (kind, detail) = match err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = err.code().unwrap_or("unknown error");
            let message = err.message().unwrap_or("");
            let detail = if message.is_empty() {
                format!("{code} (HTTP {status})")
            } else {
                format!("{code}: {message} (HTTP {status})")
            };
            let kind = if DENIED_CODES.contains(&code) {
                AwsFailure::Denied
            } else if status == 429 || code.contains("Throttl") || code == "RequestLimitExceeded" {
                AwsFailure::Throttled
            } else if status >= 500 {
                AwsFailure::Transient
            } else {
                AwsFailure::Rejected
            };
            (kind, detail)
        }
        _ if credentials_error(err).is_some() => credentials_failure(credentials_error(err)),
        SdkError::TimeoutError(_) => (
            AwsFailure::Transient,
            format!("no answer in time{from} ({})", causes(err)),
        ),
        SdkError::DispatchFailure(failure) => {
            let what = if failure.is_timeout() {
                format!("timed out connecting to {to}")
            } else if failure.is_io() {
                format!("could not reach {to}")
            } else {
                format!("the request to {to} could not be sent")
            };
            (
                AwsFailure::Transient,
                format!("{what}: {}", root_cause(err)),
            )
        }
        SdkError::ResponseError(response) => (
            AwsFailure::Transient,
            format!(
                "unreadable response{from} (HTTP {}): {}",
                response.raw().status().as_u16(),
                causes(err)
            ),
        ),
        // Building the request failed: a bad endpoint URL or a missing
        // parameter. Trying again will not fix it.
        _ => (
            AwsFailure::Rejected,
            format!("could not build the request: {}", causes(err)),
        ),
    };
    CallError::Aws {
        api,
        kind,
        detail: escape(&detail),
    }
}

/// The credential provider's error behind a failed call, if that is why it failed.
fn credentials_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a CredentialsError> {
    chain(err).find_map(|e| e.downcast_ref::<CredentialsError>())
}

/// The default chain's providers, in order, as an operator knows them.
const CHAIN_STEPS: &[(&str, &str)] = &[
    ("Environment", "environment variables (AWS_ACCESS_KEY_ID)"),
    (
        "Profile",
        "profile files (AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE)",
    ),
    (
        "WebIdentityToken",
        "web identity token (AWS_WEB_IDENTITY_TOKEN_FILE)",
    ),
    (
        "EcsContainer",
        "ECS container credentials (AWS_CONTAINER_CREDENTIALS_*)",
    ),
    ("Ec2InstanceMetadata", "the EC2 instance profile (IMDS)"),
];

fn credentials_failure(err: Option<&CredentialsError>) -> (AwsFailure, String) {
    match err {
        Some(CredentialsError::CredentialsNotLoaded(_)) => {
            let attempts = err.and_then(|e| {
                chain(e).find_map(|e| e.downcast_ref::<ProviderChainError<CredentialsError>>())
            });
            // "Not loaded" also covers an IMDS that did not answer the token
            // request: that is an outage, not a missing instance profile.
            let unreachable = attempts.is_some_and(|a| {
                a.attempts()
                    .iter()
                    .any(|attempt| chain(attempt.error()).any(|e| e.is::<ConnectorError>()))
            });
            if unreachable {
                return (
                    AwsFailure::Transient,
                    format!(
                        "no AWS credentials yet: the instance metadata service at {} did not answer the credentials request",
                        imds_endpoint_from_env()
                    ),
                );
            }
            let tried: Vec<String> = match attempts {
                Some(attempts) => attempts
                    .attempts()
                    .iter()
                    .map(|attempt| {
                        let label = CHAIN_STEPS
                            .iter()
                            .find(|(name, _)| *name == attempt.name())
                            .map_or(attempt.name(), |(_, label)| label);
                        format!("{label}: {}", causes(attempt.error()))
                    })
                    .collect(),
                None => CHAIN_STEPS.iter().map(|(_, l)| (*l).to_owned()).collect(),
            };
            (
                AwsFailure::Denied,
                format!(
                    "no AWS credentials found; tried {}. Attach an instance profile with the blockwatch policy",
                    tried.join("; ")
                ),
            )
        }
        Some(CredentialsError::InvalidConfiguration(_)) => (
            AwsFailure::Denied,
            format!(
                "the AWS credentials configuration is invalid: {}",
                err.map(|e| causes(e)).unwrap_or_default()
            ),
        ),
        Some(CredentialsError::ProviderTimedOut(_)) => (
            AwsFailure::Transient,
            "loading AWS credentials timed out".to_owned(),
        ),
        _ => {
            let causes = err.map(|e| causes(e)).unwrap_or_default();
            // The SDK's IMDS errors do not say where IMDS is; every other
            // IMDS message of blockwatch does.
            let at = if causes.contains("IMDS") {
                format!(
                    " from the instance metadata service at {}",
                    imds_endpoint_from_env()
                )
            } else {
                String::new()
            };
            (
                AwsFailure::Transient,
                format!("could not load AWS credentials{at}: {causes}"),
            )
        }
    }
}

/// Every message in `err`'s chain, joined with `: `, repeats dropped; one line.
pub fn causes(err: &(dyn StdError + 'static)) -> String {
    super::causes_except(err, &[])
}

/// The innermost message of `err`'s chain: the actual cause.
fn root_cause(err: &(dyn StdError + 'static)) -> String {
    chain(err)
        .last()
        .map(|e| e.to_string().replace('\n', " "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_one_line_without_repeats() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("dispatch failure")
            }
        }
        impl StdError for Outer {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let err = Outer(std::io::Error::other("connection\nrefused"));
        assert_eq!(causes(&err), "dispatch failure: connection refused");
        assert_eq!(root_cause(&err), "connection refused");
    }
}
