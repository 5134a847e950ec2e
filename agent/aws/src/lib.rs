//! What the agent and the launcher share about AWS: typed, one-line errors
//! of the SDK's calls ([`CallError`], [`classify`]), the compute
//! environment lookup, and SDK timestamps. It links the AWS SDK, so it is
//! apart from `blockwatch-core`, which does no IO.

pub mod classify;
pub mod describe_compute_environment;

pub use classify::{classify, classify_at, endpoint_of, imds_endpoint_from_env};

/// A source that could not answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// IMDS did not answer (after the client's retries), or answered garbage.
    #[error("instance metadata {path}: {detail}")]
    Imds { path: String, detail: String },
    /// An AWS API call failed.
    #[error("{api}: {detail}")]
    Aws {
        api: &'static str,
        kind: AwsFailure,
        detail: String,
    },
}

/// How an AWS call failed, which decides whether retrying later can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwsFailure {
    /// Network, timeout or a server error, after the SDK's retries.
    Transient,
    /// The service is over its request rate: retrying helps, but only spread
    /// out, since every other caller of the account is told the same.
    Throttled,
    /// Missing permission or credentials.
    Denied,
    /// The request was refused for a reason retrying will not fix.
    Rejected,
}

impl AwsFailure {
    /// Whether trying again later can succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Transient | Self::Throttled)
    }
}

impl CallError {
    /// Whether the service answered that its request rate was exceeded.
    pub fn is_throttled(&self) -> bool {
        matches!(
            self,
            Self::Aws {
                kind: AwsFailure::Throttled,
                ..
            }
        )
    }
}

/// Every message in `err`'s chain that is not one of `generic` (wrappers
/// such as "dispatch failure"), joined with `: `, repeats dropped, on one
/// line. Empty when every message was generic.
pub fn causes_except(err: &(dyn std::error::Error + 'static), generic: &[&str]) -> String {
    let mut parts: Vec<String> = Vec::new();
    for e in chain(err) {
        let text = sentence(e).replace(['\n', '\r'], " ");
        let text = text.trim();
        // Wrappers often repeat their source's text; keep each once.
        if !text.is_empty() && !generic.contains(&text) && !parts.iter().any(|p| p.contains(text)) {
            parts.push(text.to_owned());
        }
    }
    parts.join(": ")
}

/// One error's own message. An IMDS error answer is said by its status:
/// the SDK's text of it carries a debug dump of the whole response.
fn sentence(err: &(dyn std::error::Error + 'static)) -> String {
    match err.downcast_ref::<aws_config::imds::client::error::ImdsError>() {
        Some(aws_config::imds::client::error::ImdsError::ErrorResponse(answer)) => {
            format!("IMDS answered HTTP {}", answer.response().status().as_u16())
        }
        _ => err.to_string(),
    }
}

/// `err` and its sources, outermost first.
pub fn chain<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |e: &&'a (dyn std::error::Error + 'static)| {
        (*e).source()
    })
}

/// An SDK timestamp as an `OffsetDateTime` (whole seconds).
pub fn to_time(at: &aws_smithy_types::DateTime) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(at.secs()).ok()
}

/// The HTTPS client every AWS SDK client of blockwatch uses: hyper with
/// rustls on ring, trusting the system's CA certificates. Built here, not by
/// the SDK's default features, so that one TLS stack is linked (see README,
/// binary size).
pub fn https_client() -> aws_sdk_batch::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}
