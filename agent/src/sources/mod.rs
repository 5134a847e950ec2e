//! Adapters that read the world: instance metadata, the config file, EC2 and
//! Batch. Each sits behind a small trait so the join can be tested without a
//! network; each also has a test against the real peer (simulator or moto).

pub mod aws;
pub mod batch;
pub mod config_file;
pub mod ec2;
pub mod imds;
pub mod notices;

/// A source that could not answer.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
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
    /// Network, timeout, throttling or a server error, after the SDK's retries.
    Transient,
    /// Missing permission or credentials.
    Denied,
    /// The request was refused for a reason retrying will not fix.
    Rejected,
}
