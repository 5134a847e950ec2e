//! One RunInstances call of a legacy Spot block (`--legacy-spot-block`, the
//! one market EC2 Fleet cannot take): the request every placement sends
//! (from the launch template), and what EC2's refusal of it means.

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder;
use aws_sdk_ec2::operation::run_instances::RunInstancesError;
use aws_sdk_ec2::types::{
    InstanceInterruptionBehavior, InstanceMarketOptionsRequest, MarketType, SpotInstanceType,
    SpotMarketOptions,
};
use aws_sdk_ec2::Client as Ec2;
use blockwatch_aws::classify;

use super::template::LaunchTemplate;
use super::LaunchError;
use crate::plan::Plan;

/// What every RunInstances call of one launch shares: the launch template
/// carries what the instances are; each call adds where and how many.
#[derive(Debug, Clone, Copy)]
pub(super) struct Template<'a> {
    pub plan: &'a Plan,
    pub launch_template: &'a LaunchTemplate,
    pub dry_run: bool,
}

impl Template<'_> {
    /// Up to `count` instances of `instance_type` in `subnet`; MinCount 1,
    /// so EC2 launches what it can.
    pub(super) fn request(
        &self,
        ec2: &Ec2,
        instance_type: &str,
        subnet: Option<&str>,
        count: usize,
    ) -> RunInstancesFluentBuilder {
        let request = ec2
            .run_instances()
            .launch_template(self.launch_template.specification())
            .instance_type(instance_type.into())
            .min_count(1)
            .max_count(i32::try_from(count).unwrap_or(i32::MAX))
            .dry_run(self.dry_run)
            .set_subnet_id(subnet.map(str::to_owned));
        spot_block_options(request, self.plan)
    }
}

/// One-time Spot with `BlockDurationMinutes`: EC2 Fleet takes no block
/// duration, so legacy Spot blocks are the one market left on RunInstances.
fn spot_block_options(
    request: RunInstancesFluentBuilder,
    plan: &Plan,
) -> RunInstancesFluentBuilder {
    let spot = SpotMarketOptions::builder()
        .spot_instance_type(SpotInstanceType::OneTime)
        .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
        .set_max_price(plan.max_price.clone())
        .set_block_duration_minutes(plan.block_duration_minutes);
    request.instance_market_options(
        InstanceMarketOptionsRequest::builder()
            .market_type(MarketType::Spot)
            .spot_options(spot.build())
            .build(),
    )
}

/// What a refused RunInstances means for the launch.
#[derive(Debug)]
pub(super) enum Refused {
    /// A dry run's permission check passed; nothing launched.
    DryRunAccepted,
    /// This placement has no capacity (EC2's code): try the next.
    NoCapacity(String),
    /// The launch stops.
    Fatal(LaunchError),
}

/// Reads EC2's refusal of a RunInstances call.
pub(super) fn refused(
    plan: &Plan,
    dry_run: bool,
    err: &SdkError<RunInstancesError, HttpResponse>,
) -> Refused {
    let code = err.code().unwrap_or_default().to_owned();
    let message = err.message().unwrap_or_default().to_owned();
    if dry_run && code == "DryRunOperation" {
        return Refused::DryRunAccepted;
    }
    if plan.block_duration_minutes.is_some()
        && (message.contains("BlockDuration")
            || message.contains("not a valid parameter")
            || code == "InvalidParameterValue")
    {
        return Refused::Fatal(LaunchError::SpotBlocksRetired {
            detail: format!("{code}: {message}"),
            duration: plan.duration_text.clone(),
        });
    }
    match code.as_str() {
        "SpotMaxPriceTooLow" | "MaxSpotPriceTooLow" => Refused::Fatal(LaunchError::PriceTooLow {
            detail: format!("{code}: {message}"),
        }),
        "InsufficientInstanceCapacity"
        | "InsufficientCapacity"
        | "InsufficientCapacityOnHost"
        | "InsufficientFreeAddressesInSubnet"
        | "Unsupported" => Refused::NoCapacity(code),
        _ => Refused::Fatal(classify("ec2:RunInstances", err).into()),
    }
}
