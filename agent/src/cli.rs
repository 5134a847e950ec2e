//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::actions::ecs_config_file::DEFAULT_ECS_CONFIG_PATH;
use crate::host::state_dir::DEFAULT_STATE_DIR;
use crate::join::JoinRequest;
use crate::run::RunRequest;
use crate::sources::config_file::DEFAULT_CONFIG_PATH;

/// Node agent for AWS Batch unmanaged compute environments.
///
/// Joins this instance to its compute environment's ECS cluster at boot, then
/// drains the container instance before the instance's capacity ends.
#[derive(Debug, Parser)]
#[command(name = "blockwatch", version, propagate_version = true, after_help = crate::exit::help_text())]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand takes.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Config file (TOML). A missing file is fine at the default path, an error anywhere else
    /// [default: /etc/blockwatch/blockwatch.toml]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// The ECS agent's config file, where ECS_CLUSTER is written
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_ECS_CONFIG_PATH)]
    pub ecs_config: PathBuf,

    /// Where blockwatch records what it has done
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    /// How much to log; wins over RUST_LOG, which takes the same names [default: info]
    #[arg(long, global = true, value_name = "LEVEL", value_enum)]
    pub log_level: Option<LogLevel>,
}

/// The levels `--log-level` and `RUST_LOG` name: each shows itself and every
/// level above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<LogLevel> for log::LevelFilter {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Error => Self::Error,
            LogLevel::Warn => Self::Warn,
            LogLevel::Info => Self::Info,
            LogLevel::Debug => Self::Debug,
            LogLevel::Trace => Self::Trace,
        }
    }
}

impl CommonArgs {
    /// The config path, and whether the operator named it.
    pub fn config_path(&self) -> (PathBuf, bool) {
        match &self.config {
            Some(path) => (path.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write ECS_CLUSTER into ecs.config for this instance's compute environment (run at boot,
    /// before ecs.service)
    #[command(long_about = JOIN_ABOUT, after_help = crate::exit::help_text())]
    Join(JoinArgs),
    /// Watch every end-of-life signal and drain the container instance in time (the long-running
    /// service)
    #[command(long_about = RUN_ABOUT, after_help = crate::exit::help_text())]
    Run(RunArgs),
    /// Show what blockwatch knows and has done, from its state file (no network)
    Status(StatusArgs),
}

const RUN_ABOUT: &str = "\
Watch every signal that this instance is about to end, and drain its ECS container
instance in time, so Batch places no new jobs on an instance that is going away.

Deadline sources (the earliest wins):
  lease            config lease_end / lease_duration, or tags blockwatch:lease-end
                   (RFC 3339) / blockwatch:lease-duration (counted from the first
                   launch); tags are read again from IMDS every
                   lease_refresh_interval (default 1m), so a changed tag moves the end
  legacy spot block, Capacity Block   asked of EC2 at start (EndDate - 30 min); a
                   Capacity Block's EndDate is asked again every 30m, every 5m in
                   its last 2 hours (capacity_block_refresh_interval)
  spot interruption, scheduled events (active ones), Auto Scaling Terminated,
  rebalance recommendation (only with drain_on_rebalance = true)
                   polled from IMDS every poll_interval (default 1s)

At deadline - drain_lead (default 10m) the container instance is set to DRAINING:
running jobs keep running, no new ones arrive. Running tasks are counted every
drain_poll_interval (default 15s) until none is left; then the instance is
drained and, with on_drained = \"poweroff\", poweroff_command runs. With
stop_grace set, tasks still running at deadline - stop_grace are stopped with a
reason starting \"blockwatch:\".

With checkpoint_lead set, each container of this instance's ECS tasks whose
environment has BLOCKWATCH_CHECKPOINT_SIGNAL (SIGUSR1, SIGUSR2, SIGHUP, SIGINT or
SIGTERM) gets that signal checkpoint_lead before stop_at, once per end (again if
the end moves earlier), through Docker (DOCKER_HOST, else /var/run/docker.sock).

A block ends when it says it does. With on_lease_end = \"poweroff\" (the default),
for a lease or a Capacity Block: drained before the end, the instance powers off
at once; at the end, tasks still running are stopped with the reason
\"blockwatch: lease ended ...\" and the instance powers off once they have stopped,
or 2 minutes after the end whatever runs. A failing poweroff_command is retried
with backoff. AWS ends spot-interrupted, scheduled-event and Auto Scaling
instances itself. on_lease_end = \"none\" only drains.

A drain is undone (the instance set back to ACTIVE) when the deadline that caused
it moves later and the new drain time is still ahead (an extended lease or
Capacity Block, a postponed or canceled scheduled event), and when the instance
was stopped or hibernated and started again since the drain began. A spot
interruption notice never undoes a drain.

While nothing is due only IMDS is polled: no AWS API call (a Capacity Block's
EndDate excepted, as above). State is kept in
<state-dir>/state.json, so a restart resumes a drain without repeating it.
One agent runs per state directory: run holds a lock on <state-dir>/run.lock
(with its pid) for its whole life, and a second run on the same directory
exits at once (73) naming the first's pid.

A dry run (--dry-run or dry_run = true) changes nothing: not ECS, not the
power, and not the files a live agent or a job reads. It keeps its state and
deadline files in a fresh private directory under the temp directory (logged
at start), starting from a copy of <state-dir>/state.json and join.json, which
it only reads; it takes no lock, so it can run beside the live agent.

For jobs: <deadline-dir>/deadline.json (instance_id, phase, deadline,
deadline_source, drain_at, stop_at, updated_at) and <deadline-dir>/deadline
(the RFC 3339 deadline and a newline, or empty), mode 0644 in a 0755
directory, replaced atomically whenever they change. Mount the directory
read-only into a job's container so it can checkpoint before the end.
Under systemd (Type=notify) it reports READY, a STATUS line and the watchdog.";

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Log every action and change nothing (same as dry_run = true); state and deadline files go
    /// to a private directory, never to --state-dir or --deadline-dir
    #[arg(long)]
    pub dry_run: bool,

    /// The ECS agent's introspection endpoint, used to find our container instance
    #[arg(long, value_name = "URL", default_value = crate::actions::ecs::DEFAULT_INTROSPECTION_URL)]
    pub ecs_introspection_url: String,

    /// Where the deadline files jobs read are kept (deadline.json, deadline); mount it read-only
    /// into a job's container
    #[arg(
        long,
        value_name = "PATH",
        env = "BLOCKWATCH_DEADLINE_DIR",
        default_value = crate::run::DEFAULT_DEADLINE_DIR
    )]
    pub deadline_dir: PathBuf,
}

impl RunArgs {
    /// What `run` is asked to do.
    pub fn request(self, common: CommonArgs) -> RunRequest {
        let (config_path, config_path_explicit) = common.config_path();
        RunRequest {
            config_path,
            config_path_explicit,
            state_dir: common.state_dir,
            dry_run: self.dry_run,
            introspection_url: self.ecs_introspection_url,
            deadline_dir: self.deadline_dir,
        }
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print a JSON object (instance_id, cluster, compute_environment, phase, deadline,
    /// deadline_source, drain_at, ...)
    #[arg(long)]
    pub json: bool,
}

const JOIN_ABOUT: &str = "\
Write ECS_CLUSTER into ecs.config so the ECS agent registers this instance in the
compute environment's cluster. Run it at boot, before ecs.service starts: without
ECS_CLUSTER the ECS agent joins (and remembers) the cluster `default`.

Where the cluster comes from, highest precedence first:
  1. the config file: `cluster = \"...\"`, or `compute_environment = \"...\"`
  2. instance tags: blockwatch:cluster, or blockwatch:compute-environment
     (read from IMDS; if the instance was launched without tags in metadata,
     from ec2:DescribeTags)
An explicit cluster is used as is. A compute environment is looked up with
batch:DescribeComputeEnvironments and its ecsClusterArn is used; MANAGED compute
environments are refused.

Every other line of ecs.config is kept. The file is replaced atomically and only
when it changes; on any error it is left untouched.

AWS and IMDS endpoints follow the SDK conventions: AWS_REGION (else the region in
the instance identity document), AWS_ENDPOINT_URL, AWS_EC2_METADATA_SERVICE_ENDPOINT,
and the default credential chain.";

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// Print what would be written to ecs.config, and change nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Keep retrying transient failures (exit 75: IMDS or AWS not reachable yet, as early in
    /// boot) with backoff for this long; terminal errors still fail at once
    #[arg(long, value_name = "DUR", default_value = "0s")]
    pub retry_for: humantime::Duration,
}

impl JoinArgs {
    /// What `join` is asked to do.
    pub fn request(&self, common: CommonArgs) -> JoinRequest {
        let (config_path, config_path_explicit) = common.config_path();
        JoinRequest {
            config_path,
            config_path_explicit,
            ecs_config: common.ecs_config,
            state_dir: common.state_dir,
            dry_run: self.dry_run,
        }
    }
}
