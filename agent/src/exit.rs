//! Exit codes: [`TABLE`] is the one list. `blockwatch --help` is rendered
//! from it, and a test (`tests/tests/exit_codes.rs`) checks README.md's
//! table and both systemd units' `RestartPreventExitStatus=` against it.
//!
//! The codes follow sysexits(3), so `systemctl status` names them sensibly
//! (status=78/CONFIG, status=65/DATAERR, ...).

use std::fmt::Write as _;
use std::time::Duration;

use crate::actions::ecs_config_file::WriteError;
use crate::sources::{AwsFailure, CallError};
use blockwatch_core::cluster::InvalidCluster;
use blockwatch_core::compute_environment::Refusal;
use blockwatch_core::file_model::ConfigFileError;
use blockwatch_core::origin::{NoClusterSource, Origin};

/// One exit code, as the help, the README and the systemd units give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: u8,
    /// The sysexits(3) name, as `systemctl status` shows it; empty for 0 and 2.
    pub name: &'static str,
    /// What it means, in Markdown (the help drops the backticks).
    pub meaning: &'static str,
    /// Whether running again later may succeed, as the README says it.
    pub retry_helps: &'static str,
    /// What `blockwatch-join.service` does after it.
    pub join_unit: Systemd,
    /// What `blockwatch.service` (`run`) does after it.
    pub run_unit: Systemd,
}

/// What a systemd unit does when its command exits with a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Systemd {
    /// Not in `RestartPreventExitStatus=`: the unit's `Restart=` applies.
    MayRestart,
    /// In `RestartPreventExitStatus=`: running the same command again cannot
    /// mend it, so the unit stays down.
    StaysDown,
}

use Systemd::{MayRestart, StaysDown};

pub const SUCCESS: Exit = Exit {
    code: 0,
    name: "",
    meaning: "success: written, already correct, or dry run",
    retry_helps: "-",
    join_unit: MayRestart,
    run_unit: MayRestart,
};
/// clap's own code for bad flags. A restart runs the same command line, so
/// neither unit starts again.
pub const USAGE: Exit = Exit {
    code: 2,
    name: "",
    meaning: "usage error (bad flags)",
    retry_helps: "no",
    join_unit: StaysDown,
    run_unit: StaysDown,
};
pub const COMPUTE_ENVIRONMENT: Exit = Exit {
    code: 65,
    name: "DATAERR",
    meaning: "compute environment refused: not found, `MANAGED`, or without a usable ECS cluster",
    retry_helps: "no",
    join_unit: StaysDown,
    // `run` goes on degraded instead; were it ever to exit for this, it
    // would be restarted rather than leave a lease unenforced.
    run_unit: MayRestart,
};
pub const NO_STATE: Exit = Exit {
    code: 66,
    name: "NOINPUT",
    meaning: "`status`: no state to show yet",
    retry_helps: "no",
    // Only `status` exits with it; no unit runs `status`.
    join_unit: MayRestart,
    run_unit: MayRestart,
};
pub const AWS_REJECTED: Exit = Exit {
    code: 69,
    name: "UNAVAILABLE",
    meaning: "AWS rejected a request for another reason",
    retry_helps: "no",
    join_unit: StaysDown,
    run_unit: MayRestart,
};
/// `run` is restarted after an internal error: the runtime or the HTTP
/// client may build next time (resources), and a stopped `run` enforces
/// nothing.
pub const INTERNAL: Exit = Exit {
    code: 70,
    name: "SOFTWARE",
    meaning: "internal error",
    retry_helps: "no",
    join_unit: StaysDown,
    run_unit: MayRestart,
};
/// sysexits' "cannot create an output file": the state directory cannot be
/// taken for writing, because another agent holds it (two agents would act
/// on each other's drains), or a dry run has no private directory to write.
/// `run` is restarted: the other agent may be gone by then.
pub const CANT_CREATE: Exit = Exit {
    code: 73,
    name: "CANTCREAT",
    meaning: "`run`: another agent holds the state directory (the message names its pid), or a dry run cannot make its private directory",
    retry_helps: "no (`run`: systemd retries)",
    // `join` takes no lock and never exits with it.
    join_unit: MayRestart,
    run_unit: MayRestart,
};
/// `run` is restarted when its state directory cannot be used: a full or
/// read-only disk may be mended while it waits.
pub const ECS_CONFIG_IO: Exit = Exit {
    code: 74,
    name: "IOERR",
    meaning: "ecs.config could not be read or written",
    retry_helps: "no",
    join_unit: StaysDown,
    run_unit: MayRestart,
};
pub const TRANSIENT: Exit = Exit {
    code: 75,
    name: "TEMPFAIL",
    meaning: "transient: IMDS or AWS unreachable, throttled or failing after the SDK's retries; `run`: degraded, and the cluster resolves now (start again joined)",
    retry_helps: "yes",
    join_unit: MayRestart,
    run_unit: MayRestart,
};
pub const AWS_DENIED: Exit = Exit {
    code: 77,
    name: "NOPERM",
    meaning: "AWS denied a request, or no credentials were found anywhere in the default chain (the message lists each step tried)",
    retry_helps: "no",
    join_unit: StaysDown,
    run_unit: MayRestart,
};
pub const CONFIG: Exit = Exit {
    code: 78,
    name: "CONFIG",
    meaning: "configuration error: unreadable, invalid or untrusted (writable by others) config file, no cluster source, invalid cluster value",
    retry_helps: "no",
    join_unit: StaysDown,
    run_unit: MayRestart,
};

/// Every exit code, in order.
pub const TABLE: &[Exit] = &[
    SUCCESS,
    USAGE,
    COMPUTE_ENVIRONMENT,
    NO_STATE,
    AWS_REJECTED,
    INTERNAL,
    CANT_CREATE,
    ECS_CONFIG_IO,
    TRANSIENT,
    AWS_DENIED,
    CONFIG,
];

/// The table as `--help` ends with it: one entry a code, wrapped to fit.
pub fn help_text() -> String {
    const WIDTH: usize = 100;
    const INDENT: &str = "      ";
    let mut text = String::from("Exit codes (sysexits, as systemctl status names them):");
    for exit in TABLE {
        let meaning = exit.meaning.replace('`', "");
        let said = if exit.name.is_empty() {
            meaning
        } else {
            format!("{}: {meaning}", exit.name)
        };
        let mut line = format!("  {:<3}", exit.code);
        for word in said.split_whitespace() {
            if line.len() + 1 + word.len() > WIDTH && !line.ends_with(' ') {
                let _ = write!(text, "\n{line}");
                line = INDENT.to_owned();
            } else {
                line.push(' ');
            }
            line.push_str(word);
        }
        let _ = write!(text, "\n{line}");
    }
    text
}

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
            Self::ConfigFile(_) | Self::NoClusterSource(_) | Self::InvalidCluster { .. } => {
                CONFIG.code
            }
            Self::ComputeEnvironment(_) => COMPUTE_ENVIRONMENT.code,
            Self::Source(CallError::Imds { .. }) => TRANSIENT.code,
            Self::Source(CallError::Aws { kind, .. }) => match kind {
                AwsFailure::Transient | AwsFailure::Throttled => TRANSIENT.code,
                AwsFailure::Denied => AWS_DENIED.code,
                AwsFailure::Rejected => AWS_REJECTED.code,
            },
            Self::EcsConfig(_) | Self::State(_) => ECS_CONFIG_IO.code,
            Self::StateDirBusy(_) | Self::DryRunDir(_) => CANT_CREATE.code,
            Self::Internal(_) => INTERNAL.code,
            Self::TimedOut { .. } | Self::Rejoined { .. } => TRANSIENT.code,
            Self::GaveUp { last, .. } => last.exit_code(),
        }
    }

    /// Whether running again later may succeed.
    pub fn is_transient(&self) -> bool {
        self.exit_code() == TRANSIENT.code
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
