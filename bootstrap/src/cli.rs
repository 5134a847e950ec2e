//! Command-line interface of `blockwatch-launch`.

use clap::{Args, Parser, Subcommand};

use crate::exit;
use crate::inventory::PageSize;
use crate::launch::WaitOptions;
use crate::logging::LogLevel;
use crate::output::Output;
use crate::plan::{
    Market, OnDemandAllocation, SpotAllocation, UserDataMode, DEFAULT_IMDS_HOP_LIMIT,
};

/// Request a block of instances that join an AWS Batch UNMANAGED compute environment by themselves.
///
/// The instances carry tags (blockwatch:compute-environment, blockwatch:lease-duration or
/// blockwatch:lease-end) that the blockwatch agent baked into the AMI reads at boot: no user data
/// is needed. Spot blocks (defined-duration Spot) were retired on 2022-12-31, so a block is an
/// ordinary Spot or On-Demand instance with a lease the agent enforces (it drains the instance
/// before the lease ends), or an EC2 Capacity Block. Every instance is launched with
/// InstanceInitiatedShutdownBehavior=terminate, so a power-off at the lease end ends it.
///
/// `list` shows a compute environment's instances and their leases; `extend` moves lease ends.
#[derive(Debug, Parser)]
#[command(
    name = "blockwatch-launch",
    version,
    after_help = exit::help(),
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub launch: LaunchArgs,
    /// How much to say on stderr: error, warn, info (adds --wait progress), debug (adds each
    /// AWS call) or trace
    #[arg(long, global = true, value_name = "LEVEL", value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,
    /// How long one AWS call may go unanswered before it is tried again. A call is tried at most
    /// 3 times and given at most 4 times this in all; then the command fails with exit 75
    #[arg(long, global = true, value_name = "DUR", default_value = "60s")]
    pub call_timeout: humantime::Duration,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show every instance tagged for a compute environment: market, state, lease end and time
    /// left, ECS status and running jobs
    #[command(after_help = exit::help())]
    List(ListArgs),
    /// Move the lease end of running instances (rewrites blockwatch:lease-end; their agents pick
    /// the new end up within a minute). Capacity Blocks are extended through EC2 instead
    #[command(after_help = exit::help())]
    Extend(ExtendArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// The compute environment (name or ARN)
    #[arg(long, value_name = "NAME")]
    pub compute_environment: String,
    /// Output format
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Items per page of every AWS list call (5 to 1000; ECS pages hold at most 100); for tests
    #[arg(long, value_name = "N", hide = true, default_value_t = PageSize::DEFAULT)]
    pub page_size: u32,
}

#[derive(Debug, Args)]
#[command(
    group(clap::ArgGroup::new("which").required(true).args(["instances", "all"])),
    group(clap::ArgGroup::new("change").required(true).args(["by", "until"]))
)]
pub struct ExtendArgs {
    /// The compute environment the instances belong to (name or ARN)
    #[arg(long, value_name = "NAME")]
    pub compute_environment: String,
    /// An instance to extend; repeatable. Each must carry the compute environment's tag
    #[arg(long = "instance", value_name = "ID", num_args = 1..)]
    pub instances: Vec<String>,
    /// Every instance of the compute environment (Capacity Blocks and ended ones are skipped)
    #[arg(long)]
    pub all: bool,
    /// Add this to the current end, like 1h or 30m
    #[arg(long, value_name = "DUR")]
    pub by: Option<String>,
    /// The new end, RFC 3339 like 2026-01-31T18:00:00Z (earlier than the current end shortens
    /// the lease)
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Show old and new ends and check permissions with EC2's DryRun; write nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Items per page of every AWS list call (5 to 1000); for tests
    #[arg(long, value_name = "N", hide = true, default_value_t = PageSize::DEFAULT)]
    pub page_size: u32,
}

/// Launching, the command without a subcommand.
#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// The UNMANAGED compute environment to join (name or ARN)
    #[arg(long, value_name = "NAME", required = true)]
    pub compute_environment: Option<String>,
    /// How many instances
    #[arg(long, value_name = "N", required = true)]
    pub count: Option<u32>,
    /// Launch even if only this many are available [default: --count]. When given, it is the
    /// fleet's minimum target capacity: EC2 launches at least this many or none, in one AZ
    /// (EC2 ties a minimum to a single AZ)
    #[arg(long, value_name = "N")]
    pub min_count: Option<u32>,
    /// How long the block lasts, like 3h or 90m (the lease counts from each instance's launch)
    #[arg(long, value_name = "DUR", required = true)]
    pub duration: Option<String>,
    /// Instance type; repeat to let EC2 fall back to others [default: the --launch-template's
    /// own type, else m6i.large]
    #[arg(long = "instance-type", value_name = "T")]
    pub instance_types: Vec<String>,
    /// Subnet; repeat to try several
    #[arg(long = "subnet", value_name = "S")]
    pub subnets: Vec<String>,
    /// Security group; repeatable
    #[arg(long = "security-group", value_name = "G")]
    pub security_groups: Vec<String>,
    /// Instance profile (name or ARN) with the agent's policy (bootstrap/iam/agent-policy.json)
    #[arg(long, value_name = "NAME")]
    pub instance_profile: Option<String>,
    /// AMI [default: the --launch-template's own image, else the ECS-optimized Amazon Linux 2023
    /// AMI from SSM, arm64 for Graviton types]
    #[arg(long, value_name = "ID")]
    pub ami: Option<String>,
    /// Purchase option
    #[arg(long, value_enum, default_value_t = Market::Spot)]
    pub market: Market,
    /// How EC2 Fleet picks Spot pools among every --instance-type x --subnet
    /// [default: price-capacity-optimized]
    #[arg(long, value_enum, value_name = "S")]
    pub allocation_strategy: Option<SpotAllocation>,
    /// How EC2 Fleet picks On-Demand pools [default: lowest-price]
    #[arg(long, value_enum, value_name = "S")]
    pub on_demand_allocation_strategy: Option<OnDemandAllocation>,
    /// With --market spot: this many of --count On-Demand, the rest Spot, in one fleet request
    #[arg(long, value_name = "N")]
    pub on_demand_base: Option<u32>,
    /// Highest Spot price in USD per hour [default: the On-Demand price]
    #[arg(long, value_name = "USD")]
    pub max_price: Option<String>,
    /// The Capacity Block's reservation id (with --market capacity-block)
    #[arg(long, value_name = "ID")]
    pub capacity_reservation_id: Option<String>,
    /// Also send BlockDurationMinutes (retired by AWS on 2022-12-31; for emulators or old accounts)
    #[arg(long)]
    pub legacy_spot_block: bool,
    /// EC2 key pair for SSH
    #[arg(long, value_name = "K")]
    pub key_name: Option<String>,
    /// The Name tag [default: blockwatch-<compute environment>]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// User data to send
    #[arg(long, value_enum, default_value_t = UserDataMode::None)]
    pub user_data_mode: UserDataMode,
    /// IMDS hop limit, 1 to 64. 1 keeps containers in bridge and awsvpc network modes from IMDS
    /// (and the instance role). It does not protect from Batch ECS-EC2 jobs: they run in host
    /// network mode, reach IMDS like the host does, and can use the instance role whatever the
    /// hop limit. 2 or more: bridge-mode containers reach IMDS too
    #[arg(long, value_name = "N", default_value_t = DEFAULT_IMDS_HOP_LIMIT)]
    pub imds_hop_limit: u32,
    /// Start from your own launch template (name or lt- id; VERSION: a number, $Latest or
    /// $Default [default: $Default]). The template must carry the tag
    /// blockwatch:compute-environment=<compute environment> (the launcher's IAM policy writes
    /// only to templates so tagged). The launcher adds a version based on VERSION with only what
    /// blockwatch needs: the blockwatch tags on instance and volumes, shutdown behaviour
    /// terminate, and the metadata options the template leaves unset (IMDSv2 required, hop limit
    /// --imds-hop-limit, instance tags in IMDS); everything else comes from the template. That
    /// version is deleted after the launch unless --keep-template. A template that disables IMDS,
    /// or hides tags from IMDS while its instance role may not call ec2:DescribeTags, is refused
    #[arg(long, value_name = "NAME|ID[:VERSION]")]
    pub launch_template: Option<String>,
    /// Keep the launch template (or, with --launch-template, the version) this launch creates,
    /// marked with a hash of its content, so that a later launch with the same AMI, tags and
    /// options reuses it. Without it, the launcher deletes what it created once the launch is
    /// over; a reused one is never deleted
    #[arg(long)]
    pub keep_template: bool,
    /// Check permissions with EC2's DryRun and print the plan; launch nothing (the launch
    /// template the check needs is deleted again unless --keep-template)
    #[arg(long)]
    pub dry_run: bool,
    /// Wait until the instances run
    #[arg(long)]
    pub wait: bool,
    /// With --wait, also wait until they registered as container instances in the cluster
    #[arg(long, requires = "wait")]
    pub wait_registered: bool,
    /// Give up waiting after this long
    #[arg(long, value_name = "DUR", default_value = "10m")]
    pub wait_timeout: humantime::Duration,
    /// How long EC2 may answer InvalidInstanceID.NotFound for instances it just launched
    /// (eventual consistency) before the launch reports them without launch times, and before
    /// --wait gives up; for tests
    #[arg(long, value_name = "DUR", hide = true,
          default_value_t = WaitOptions::DEFAULT_NOT_FOUND_GRACE.into())]
    pub not_found_grace: humantime::Duration,
    /// Output format
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}
