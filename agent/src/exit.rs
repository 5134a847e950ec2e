//! Exit codes. The table is also in README.md; systemd units use it to
//! retry transient failures and give up on terminal ones.
//!
//! The codes follow sysexits(3), so `systemctl status` names them sensibly
//! (status=78/CONFIG, status=65/DATAERR, ...).
//!
//! | code | name | meaning | retry helps? |
//! |---|---|---|---|
//! | 0  | | success (written, already correct, or dry run) | - |
//! | 2  | | usage error (bad flags) | no |
//! | 65 | DATAERR | compute environment refused: not found, MANAGED, or without a usable ECS cluster | no |
//! | 66 | NOINPUT | `status`: no state to show yet | no |
//! | 69 | UNAVAILABLE | AWS rejected a request for another reason | no |
//! | 70 | SOFTWARE | internal error | no |
//! | 73 | CANTCREAT | `run`: another agent holds the state directory (the message names its pid), or a dry run cannot make its private directory | no (`run`: systemd retries) |
//! | 74 | IOERR | ecs.config could not be read or written | no |
//! | 75 | TEMPFAIL | transient: IMDS or AWS unreachable, throttled or failing after retries | yes |
//! | 77 | NOPERM | AWS denied a request (missing IAM permission), or no credentials were found in the default chain | no |
//! | 78 | CONFIG | configuration error: unreadable, invalid or untrusted (writable by others) config file, no cluster source, invalid cluster value | no |

use std::time::Duration;

use crate::actions::ecs_config_file::WriteError;
use crate::sources::{AwsFailure, CallError};
use blockwatch_core::cluster::InvalidCluster;
use blockwatch_core::compute_environment::Refusal;
use blockwatch_core::file_model::ConfigFileError;
use blockwatch_core::origin::{NoClusterSource, Origin};

pub const USAGE: u8 = 2;
pub const COMPUTE_ENVIRONMENT: u8 = 65;
pub const NO_STATE: u8 = 66;
pub const AWS_REJECTED: u8 = 69;
pub const INTERNAL: u8 = 70;
/// sysexits' "cannot create an output file": the state directory cannot be
/// taken for writing, because another agent holds it (two agents would act
/// on each other's drains), or a dry run has no private directory to write.
pub const CANT_CREATE: u8 = 73;
pub const ECS_CONFIG_IO: u8 = 74;
pub const TRANSIENT: u8 = 75;
pub const AWS_DENIED: u8 = 77;
pub const CONFIG: u8 = 78;

/// Everything that can stop `blockwatch join` or `run`, each as one line.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    ConfigFile(#[from] ConfigFileError),
    #[error(transparent)]
    NoClusterSource(#[from] NoClusterSource),
    #[error("{reason} (from {origin})")]
    InvalidCluster {
        reason: InvalidCluster,
        origin: Origin,
    },
    #[error(transparent)]
    ComputeEnvironment(#[from] Refusal),
    #[error(transparent)]
    Source(#[from] CallError),
    #[error("ecs.config {0}")]
    EcsConfig(#[from] WriteError),
    #[error(transparent)]
    State(#[from] crate::host::state_dir::StateError),
    #[error(transparent)]
    StateDirBusy(#[from] crate::host::lock::StateDirBusy),
    #[error(transparent)]
    DryRunDir(#[from] crate::host::dry_run::NoPrivateDir),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("{what} did not finish within {}", humantime::format_duration(*after))]
    TimedOut { what: &'static str, after: Duration },
    #[error("the cluster resolves now ({cluster}); exiting so that blockwatch starts again joined and drains through ECS")]
    Rejoined { cluster: String },
    #[error("gave up after {} of retries (--retry-for): {last}", humantime::format_duration(Duration::from_secs(after.as_secs())))]
    GaveUp {
        after: Duration,
        last: Box<AgentError>,
    },
}

impl AgentError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::ConfigFile(_) | Self::NoClusterSource(_) | Self::InvalidCluster { .. } => CONFIG,
            Self::ComputeEnvironment(_) => COMPUTE_ENVIRONMENT,
            Self::Source(CallError::Imds { .. }) => TRANSIENT,
            Self::Source(CallError::Aws { kind, .. }) => match kind {
                AwsFailure::Transient | AwsFailure::Throttled => TRANSIENT,
                AwsFailure::Denied => AWS_DENIED,
                AwsFailure::Rejected => AWS_REJECTED,
            },
            Self::EcsConfig(_) | Self::State(_) => ECS_CONFIG_IO,
            Self::StateDirBusy(_) | Self::DryRunDir(_) => CANT_CREATE,
            Self::Internal(_) => INTERNAL,
            Self::TimedOut { .. } | Self::Rejoined { .. } => TRANSIENT,
            Self::GaveUp { last, .. } => last.exit_code(),
        }
    }

    /// Whether running again later may succeed.
    pub fn is_transient(&self) -> bool {
        self.exit_code() == TRANSIENT
    }

    /// Whether an AWS service answered that its request rate was exceeded.
    pub fn is_throttled(&self) -> bool {
        match self {
            Self::Source(source) => source.is_throttled(),
            Self::GaveUp { last, .. } => last.is_throttled(),
            _ => false,
        }
    }
}
