//! The `blockwatch-launch` binary: parse, validate, launch, print.

use std::process::ExitCode;
use std::time::Duration;

use blockwatch_launch::blocks::parse_change;
use blockwatch_launch::cli::{Cli, Command, ExtendArgs, LaunchArgs, ListArgs};
use blockwatch_launch::inventory::{self, BlocksError, PageSize, Selection};
use blockwatch_launch::launch::{launch, wait, LaunchError, WaitOptions};
use blockwatch_launch::output;
use blockwatch_launch::plan::Request;
use clap::Parser;

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
