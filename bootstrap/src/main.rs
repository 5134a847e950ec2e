//! The `blockwatch-launch` binary: parse, validate, launch, print.

use std::process::ExitCode;
use std::time::Duration;

use blockwatch_launch::blocks::parse_change;
use blockwatch_launch::inventory::{self, BlocksError, PageSize, Selection};
use blockwatch_launch::launch::{launch, wait, LaunchError, WaitOptions};
use blockwatch_launch::output::{self, Output};
use blockwatch_launch::plan::{Market, Request, UserDataMode, DEFAULT_IMDS_HOP_LIMIT};
use clap::{Args, Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit codes:
  0   launched, listed or extended (or dry run accepted)
  1   internal error
  2   invalid request (flags, duration, count, price, --until, combination)
  3   compute environment refused (not found, MANAGED)
  4   insufficient capacity: fewer instances than --min-count
  5   AWS denied a call (the message names the action)
  6   EC2 refused the request (price too low, spot blocks retired, not a Capacity Block)
  7   AWS rejected the request for another reason
  8   --wait timed out
  9   extend refused an instance (unknown, another compute environment, a Capacity
      Block, ended, or its new end is past); nothing was written
  75  transient: AWS unreachable or throttled after retries";

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
    after_help = EXIT_CODES,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    launch: LaunchArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show every instance tagged for a compute environment: market, state, lease end and time
    /// left, ECS status and running jobs
    #[command(after_help = EXIT_CODES)]
    List(ListArgs),
    /// Move the lease end of running instances (rewrites blockwatch:lease-end; their agents pick
    /// the new end up within a minute). Capacity Blocks are extended through EC2 instead
    #[command(after_help = EXIT_CODES)]
    Extend(ExtendArgs),
}

#[derive(Debug, Args)]
struct ListArgs {
    /// The compute environment (name or ARN)
    #[arg(long, value_name = "NAME")]
    compute_environment: String,
    /// Output format
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Items per page of every AWS list call (5 to 1000; ECS pages hold at most 100); for tests
    #[arg(long, value_name = "N", hide = true, default_value_t = PageSize::DEFAULT)]
    page_size: u32,
}

#[derive(Debug, Args)]
#[command(
    group(clap::ArgGroup::new("which").required(true).args(["instances", "all"])),
    group(clap::ArgGroup::new("change").required(true).args(["by", "until"]))
)]
struct ExtendArgs {
    /// The compute environment the instances belong to (name or ARN)
    #[arg(long, value_name = "NAME")]
    compute_environment: String,
    /// An instance to extend; repeatable. Each must carry the compute environment's tag
    #[arg(long = "instance", value_name = "ID", num_args = 1..)]
    instances: Vec<String>,
    /// Every instance of the compute environment (Capacity Blocks and ended ones are skipped)
    #[arg(long)]
    all: bool,
    /// Add this to the current end, like 1h or 30m
    #[arg(long, value_name = "DUR")]
    by: Option<String>,
    /// The new end, RFC 3339 like 2026-01-31T18:00:00Z (earlier than the current end shortens
    /// the lease)
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Show old and new ends and check permissions with EC2's DryRun; write nothing
    #[arg(long)]
    dry_run: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Items per page of every AWS list call (5 to 1000); for tests
    #[arg(long, value_name = "N", hide = true, default_value_t = PageSize::DEFAULT)]
    page_size: u32,
}

/// Launching, the command without a subcommand.
#[derive(Debug, Args)]
struct LaunchArgs {
    /// The UNMANAGED compute environment to join (name or ARN)
    #[arg(long, value_name = "NAME", required = true)]
    compute_environment: Option<String>,
    /// How many instances
    #[arg(long, value_name = "N", required = true)]
    count: Option<u32>,
    /// Launch even if only this many are available [default: --count]
    #[arg(long, value_name = "N")]
    min_count: Option<u32>,
    /// How long the block lasts, like 3h or 90m (the lease counts from each instance's launch)
    #[arg(long, value_name = "DUR", required = true)]
    duration: Option<String>,
    /// Instance type; repeat to let EC2 fall back to others [default: m6i.large]
    #[arg(long = "instance-type", value_name = "T")]
    instance_types: Vec<String>,
    /// Subnet; repeat to try several
    #[arg(long = "subnet", value_name = "S")]
    subnets: Vec<String>,
    /// Security group; repeatable
    #[arg(long = "security-group", value_name = "G")]
    security_groups: Vec<String>,
    /// Instance profile (name or ARN) with the agent's policy (bootstrap/iam/agent-policy.json)
    #[arg(long, value_name = "NAME")]
    instance_profile: Option<String>,
    /// AMI [default: the ECS-optimized Amazon Linux 2023 AMI from SSM, arm64 for Graviton types]
    #[arg(long, value_name = "ID")]
    ami: Option<String>,
    /// Purchase option
    #[arg(long, value_enum, default_value_t = Market::Spot)]
    market: Market,
    /// Highest Spot price in USD per hour [default: the On-Demand price]
    #[arg(long, value_name = "USD")]
    max_price: Option<String>,
    /// The Capacity Block's reservation id (with --market capacity-block)
    #[arg(long, value_name = "ID")]
    capacity_reservation_id: Option<String>,
    /// Also send BlockDurationMinutes (retired by AWS on 2022-12-31; for emulators or old accounts)
    #[arg(long)]
    legacy_spot_block: bool,
    /// EC2 key pair for SSH
    #[arg(long, value_name = "K")]
    key_name: Option<String>,
    /// The Name tag [default: blockwatch-<compute environment>]
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// User data to send
    #[arg(long, value_enum, default_value_t = UserDataMode::None)]
    user_data_mode: UserDataMode,
    /// IMDS hop limit, 1 to 64. 1 keeps containers in bridge and awsvpc network modes from IMDS
    /// (and the instance role). It does not protect from Batch ECS-EC2 jobs: they run in host
    /// network mode, reach IMDS like the host does, and can use the instance role whatever the
    /// hop limit. 2 or more: bridge-mode containers reach IMDS too
    #[arg(long, value_name = "N", default_value_t = DEFAULT_IMDS_HOP_LIMIT)]
    imds_hop_limit: u32,
    /// Check permissions with EC2's DryRun and print the plan; launch nothing
    #[arg(long)]
    dry_run: bool,
    /// Wait until the instances run
    #[arg(long)]
    wait: bool,
    /// With --wait, also wait until they registered as container instances in the cluster
    #[arg(long, requires = "wait")]
    wait_registered: bool,
    /// Give up waiting after this long
    #[arg(long, value_name = "DUR", default_value = "10m")]
    wait_timeout: humantime::Duration,
    /// How long EC2 may answer InvalidInstanceID.NotFound for instances it just launched
    /// (eventual consistency) before --wait gives up; for tests
    #[arg(long, value_name = "DUR", hide = true,
          default_value_t = WaitOptions::DEFAULT_NOT_FOUND_GRACE.into())]
    not_found_grace: humantime::Duration,
    /// Output format
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[allow(clippy::print_stdout)]
fn print(text: &str) {
    println!("{text}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("blockwatch-launch: error: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let done = match &cli.command {
        None => return run_launch(&runtime, &cli.launch),
        Some(Command::List(args)) => runtime.block_on(run_list(args)),
        Some(Command::Extend(args)) => runtime.block_on(run_extend(args)),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("blockwatch-launch: error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

async fn sdk() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(blockwatch_aws::https_client())
        .load()
        .await
}

async fn run_list(args: &ListArgs) -> Result<(), BlocksError> {
    let page_size = PageSize::new(args.page_size)?;
    let now = time::OffsetDateTime::now_utc();
    let report = inventory::list(&sdk().await, &args.compute_environment, page_size, now).await?;
    print(&output::render_list(&report, args.output));
    Ok(())
}

async fn run_extend(args: &ExtendArgs) -> Result<(), BlocksError> {
    // Everything checkable without AWS is checked before the first call.
    let page_size = PageSize::new(args.page_size)?;
    let now = time::OffsetDateTime::now_utc();
    let change = parse_change(args.by.as_deref(), args.until.as_deref(), now)?;
    let selection = if args.all {
        Selection::All
    } else {
        Selection::Ids(args.instances.clone())
    };
    let report = inventory::extend(
        &sdk().await,
        &args.compute_environment,
        &selection,
        change,
        args.dry_run,
        page_size,
        now,
    )
    .await?;
    print(&output::render_extend(&report, args.output));
    Ok(())
}

fn run_launch(runtime: &tokio::runtime::Runtime, args: &LaunchArgs) -> ExitCode {
    let request = Request {
        compute_environment: args.compute_environment.clone().unwrap_or_default(),
        count: args.count.unwrap_or_default(),
        min_count: args.min_count,
        duration: args.duration.clone().unwrap_or_default(),
        instance_types: args.instance_types.clone(),
        subnets: args.subnets.clone(),
        security_groups: args.security_groups.clone(),
        instance_profile: args.instance_profile.clone(),
        ami: args.ami.clone(),
        market: Some(args.market),
        max_price: args.max_price.clone(),
        capacity_reservation_id: args.capacity_reservation_id.clone(),
        legacy_spot_block: args.legacy_spot_block,
        key_name: args.key_name.clone(),
        name: args.name.clone(),
        user_data_mode: args.user_data_mode,
        imds_hop_limit: Some(args.imds_hop_limit),
    };
    match runtime.block_on(run(args, &request)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if let LaunchError::Shortfall { report, .. } = &err {
                // What was launched must not be lost: print it before failing.
                print(&output::render(report, args.output));
            }
            eprintln!("blockwatch-launch: error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

async fn run(args: &LaunchArgs, request: &Request) -> Result<(), LaunchError> {
    // Everything checkable without AWS is checked before the first call.
    let plan = request.validate()?;
    let sdk = sdk().await;
    let mut report = launch(&sdk, &plan, args.dry_run, time::OffsetDateTime::now_utc()).await?;
    let waited = if args.wait && !args.dry_run {
        let options = WaitOptions {
            registered: args.wait_registered,
            timeout: Duration::from(args.wait_timeout),
            not_found_grace: Duration::from(args.not_found_grace),
            poll_interval: WaitOptions::DEFAULT_POLL_INTERVAL,
        };
        wait(&sdk, &mut report, options).await
    } else {
        Ok(())
    };
    // The instances exist even if waiting failed: always say which.
    print(&output::render(&report, args.output));
    waited
}
