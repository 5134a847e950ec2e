//! Spot and On-Demand blocks as one EC2 Fleet request of type `instant`
//! over every --instance-type x --subnet pool, from the launch template.
//! The request is built once as [`FleetRequest`], which the plan prints
//! (in the API's own names) and which is sent as it is printed.
//!
//! Over 400 lines because a quarter is unit tests and the request exists
//! twice by design: as the printed plan and as the SDK's request.

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::operation::create_fleet::CreateFleetOutput;
use aws_sdk_ec2::types::{
    DefaultTargetCapacityType, FleetLaunchTemplateConfigRequest,
    FleetLaunchTemplateOverridesRequest, FleetLaunchTemplateSpecificationRequest,
    FleetOnDemandAllocationStrategy, FleetType, OnDemandOptionsRequest, SpotAllocationStrategy,
    SpotInstanceInterruptionBehavior, SpotOptionsRequest, TargetCapacitySpecificationRequest,
};
use aws_sdk_ec2::Client as Ec2;
use blockwatch_aws::classify;
use serde::Serialize;

use super::template::LaunchTemplate;
use super::LaunchError;
use crate::aws::AwsStepError;
use crate::plan::{Market, OnDemandAllocation, Plan, SpotAllocation};

/// The CreateFleet request, in the API's names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct FleetRequest {
    #[serde(rename = "Type")]
    pub fleet_type: &'static str,
    pub target_capacity_specification: TargetCapacity,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spot_options: Option<MarketOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_demand_options: Option<MarketOptions>,
    pub launch_template_configs: [TemplateConfig; 1],
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TargetCapacity {
    pub total_target_capacity: u32,
    /// Absent for a Capacity Block: EC2 refuses either with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_demand_target_capacity: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spot_target_capacity: Option<u32>,
    pub default_target_capacity_type: &'static str,
}

/// `SpotOptions` or `OnDemandOptions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MarketOptions {
    pub allocation_strategy: &'static str,
    /// Spot only: `terminate`, as the agent expects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_interruption_behavior: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_target_capacity: Option<u32>,
    /// EC2 takes a minimum target capacity only with a single AZ or type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub single_availability_zone: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TemplateConfig {
    pub launch_template_specification: TemplateSpecification,
    pub overrides: Vec<Override>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TemplateSpecification {
    pub launch_template_id: String,
    pub version: String,
}

/// One pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Override {
    pub instance_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_price: Option<String>,
    /// Lower is preferred; only with a prioritized strategy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
}

impl FleetRequest {
    pub fn new(plan: &Plan, template: &LaunchTemplate) -> Self {
        if plan.market == Market::CapacityBlock {
            return Self::capacity_block(plan, template);
        }
        let on_demand = match plan.market {
            Market::OnDemand => plan.count,
            _ => plan.on_demand_base,
        };
        let spot = plan.count - on_demand;
        // A minimum only when --min-count is given: EC2 then launches all
        // of it or nothing, and ties it to one AZ.
        let minimum =
            |part: u32, floor: u32| (plan.min_count_given && part > 0).then_some(floor.min(part));
        let spot_min = minimum(spot, plan.min_count.saturating_sub(on_demand));
        let on_demand_min = minimum(on_demand, plan.min_count);
        let prioritized = plan.spot_allocation == SpotAllocation::CapacityOptimizedPrioritized
            || plan.on_demand_allocation == OnDemandAllocation::Prioritized;
        let overrides = plan
            .placements()
            .into_iter()
            .enumerate()
            .map(|(rank, (instance_type, subnet_id))| Override {
                instance_type,
                subnet_id,
                max_price: plan.max_price.clone(),
                priority: prioritized.then(|| u32::try_from(rank).unwrap_or(u32::MAX)),
            })
            .collect();
        Self {
            fleet_type: "instant",
            target_capacity_specification: TargetCapacity {
                total_target_capacity: plan.count,
                on_demand_target_capacity: Some(on_demand),
                spot_target_capacity: Some(spot),
                default_target_capacity_type: if spot > 0 { "spot" } else { "on-demand" },
            },
            spot_options: (spot > 0).then(|| MarketOptions {
                allocation_strategy: plan.spot_allocation.as_str(),
                instance_interruption_behavior: Some("terminate"),
                min_target_capacity: spot_min,
                single_availability_zone: spot_min.map(|_| true),
            }),
            on_demand_options: (on_demand > 0).then(|| MarketOptions {
                allocation_strategy: plan.on_demand_allocation.as_str(),
                instance_interruption_behavior: None,
                min_target_capacity: on_demand_min,
                single_availability_zone: on_demand_min.map(|_| true),
            }),
            launch_template_configs: template_configs(template, overrides),
        }
    }

    /// A Capacity Block: its reservation (in the template) fixes the type
    /// and AZ, so the pools are only the --subnet choices; no Spot or
    /// On-Demand capacity and no market options (EC2 refuses them with
    /// `capacity-block`), and no minimum: the launcher checks --min-count.
    fn capacity_block(plan: &Plan, template: &LaunchTemplate) -> Self {
        let overrides = plan
            .placements()
            .into_iter()
            .map(|(instance_type, subnet_id)| Override {
                instance_type,
                subnet_id,
                max_price: None,
                priority: None,
            })
            .collect();
        Self {
            fleet_type: "instant",
            target_capacity_specification: TargetCapacity {
                total_target_capacity: plan.count,
                on_demand_target_capacity: None,
                spot_target_capacity: None,
                default_target_capacity_type: "capacity-block",
            },
            spot_options: None,
            on_demand_options: None,
            launch_template_configs: template_configs(template, overrides),
        }
    }

    /// Sends it (with EC2's DryRun when asked).
    pub async fn send(&self, ec2: &Ec2, dry_run: bool) -> Result<Sent, LaunchError> {
        let config = &self.launch_template_configs[0];
        let mut request_config = FleetLaunchTemplateConfigRequest::builder()
            .launch_template_specification(
                FleetLaunchTemplateSpecificationRequest::builder()
                    .launch_template_id(&config.launch_template_specification.launch_template_id)
                    .version(&config.launch_template_specification.version)
                    .build(),
            );
        for pool in &config.overrides {
            request_config = request_config.overrides(
                FleetLaunchTemplateOverridesRequest::builder()
                    .instance_type(pool.instance_type.as_str().into())
                    .set_subnet_id(pool.subnet_id.clone())
                    .set_max_price(pool.max_price.clone())
                    .set_priority(pool.priority.map(f64::from))
                    .build(),
            );
        }
        let capacity = &self.target_capacity_specification;
        let mut request = ec2
            .create_fleet()
            .r#type(FleetType::Instant)
            .target_capacity_specification(
                TargetCapacitySpecificationRequest::builder()
                    .total_target_capacity(count(capacity.total_target_capacity))
                    .set_on_demand_target_capacity(capacity.on_demand_target_capacity.map(count))
                    .set_spot_target_capacity(capacity.spot_target_capacity.map(count))
                    .default_target_capacity_type(DefaultTargetCapacityType::from(
                        capacity.default_target_capacity_type,
                    ))
                    .build(),
            )
            .launch_template_configs(request_config.build())
            .dry_run(dry_run);
        if let Some(spot) = &self.spot_options {
            request = request.spot_options(
                SpotOptionsRequest::builder()
                    .allocation_strategy(SpotAllocationStrategy::from(spot.allocation_strategy))
                    .instance_interruption_behavior(SpotInstanceInterruptionBehavior::Terminate)
                    .set_min_target_capacity(spot.min_target_capacity.map(count))
                    .set_single_availability_zone(spot.single_availability_zone)
                    .build(),
            );
        }
        if let Some(on_demand) = &self.on_demand_options {
            request = request.on_demand_options(
                OnDemandOptionsRequest::builder()
                    .allocation_strategy(FleetOnDemandAllocationStrategy::from(
                        on_demand.allocation_strategy,
                    ))
                    .set_min_target_capacity(on_demand.min_target_capacity.map(count))
                    .set_single_availability_zone(on_demand.single_availability_zone)
                    .build(),
            );
        }
        match request.send().await {
            Ok(output) => Ok(Sent::Answered(answer(&output))),
            Err(err) if dry_run && err.code() == Some("DryRunOperation") => {
                Ok(Sent::DryRunAccepted)
            }
            Err(err) => Err(classify("ec2:CreateFleet", &err).into()),
        }
    }
}

fn template_configs(template: &LaunchTemplate, overrides: Vec<Override>) -> [TemplateConfig; 1] {
    [TemplateConfig {
        launch_template_specification: TemplateSpecification {
            launch_template_id: template.id.clone(),
            version: template.version.to_string(),
        },
        overrides,
    }]
}

fn count(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// What CreateFleet said.
#[derive(Debug)]
pub enum Sent {
    DryRunAccepted,
    Answered(Answer),
}

/// The fleet's answer: instances and errors, each with its pool.
#[derive(Debug, Default)]
pub struct Answer {
    pub instances: Vec<FleetInstance>,
    pub errors: Vec<PoolError>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetInstance {
    pub instance_id: String,
    pub instance_type: String,
    pub subnet: Option<String>,
    pub lifecycle: String,
}

/// One pool EC2 could not fill, with the fleet's own error code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolError {
    pub instance_type: Option<String>,
    pub subnet: Option<String>,
    pub lifecycle: Option<String>,
    pub code: String,
    pub message: String,
}

impl PoolError {
    /// `m6i.large in subnet-a (spot): InsufficientInstanceCapacity`.
    pub fn summary(&self) -> String {
        let place = self
            .subnet
            .as_deref()
            .map(|s| format!(" in {s}"))
            .unwrap_or_default();
        let lifecycle = self
            .lifecycle
            .as_deref()
            .map(|l| format!(" ({l})"))
            .unwrap_or_default();
        format!(
            "{}{place}{lifecycle}: {}",
            self.instance_type.as_deref().unwrap_or("any type"),
            self.code
        )
    }
}

fn answer(output: &CreateFleetOutput) -> Answer {
    let mut answer = Answer::default();
    for group in output.instances() {
        let pool = group
            .launch_template_and_overrides()
            .and_then(|l| l.overrides());
        let instance_type = group
            .instance_type()
            .or_else(|| pool.and_then(|p| p.instance_type()))
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default();
        let subnet = group
            .subnet_id()
            .or_else(|| pool.and_then(|p| p.subnet_id()))
            .map(str::to_owned);
        let lifecycle = group
            .lifecycle()
            .map(|l| l.as_str().to_owned())
            .unwrap_or_else(|| "on-demand".to_owned());
        for id in group.instance_ids() {
            answer.instances.push(FleetInstance {
                instance_id: id.clone(),
                instance_type: instance_type.clone(),
                subnet: subnet.clone(),
                lifecycle: lifecycle.clone(),
            });
        }
    }
    for error in output.errors() {
        let pool = error
            .launch_template_and_overrides()
            .and_then(|l| l.overrides());
        answer.errors.push(PoolError {
            instance_type: pool
                .and_then(|p| p.instance_type())
                .map(|t| t.as_str().to_owned()),
            subnet: pool.and_then(|p| p.subnet_id()).map(str::to_owned),
            lifecycle: error.lifecycle().map(|l| l.as_str().to_owned()),
            code: error.error_code().unwrap_or_default().to_owned(),
            message: error.error_message().unwrap_or_default().to_owned(),
        });
    }
    answer
}

/// An answer with no instance whose errors are not about capacity fails
/// the launch with what EC2 said; capacity errors are a shortfall.
pub(super) fn refusal(answer: &Answer) -> Option<LaunchError> {
    if !answer.instances.is_empty() {
        return None;
    }
    let detail = |e: &PoolError| format!("{}: {}", e.code, e.message);
    if let Some(e) = answer
        .errors
        .iter()
        .find(|e| matches!(e.code.as_str(), "SpotMaxPriceTooLow" | "MaxSpotPriceTooLow"))
    {
        return Some(LaunchError::PriceTooLow { detail: detail(e) });
    }
    if let Some(e) = answer
        .errors
        .iter()
        .find(|e| e.code == "UnauthorizedOperation" || e.code.ends_with("AccessDenied"))
    {
        return Some(LaunchError::Aws(AwsStepError::Denied {
            action: "ec2:RunInstances",
            detail: format!("through ec2:CreateFleet: {}", detail(e)),
        }));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::template::Origin;
    use crate::plan::Request;

    fn template() -> LaunchTemplate {
        LaunchTemplate {
            id: "lt-1".into(),
            name: "blockwatch-x".into(),
            version: 3,
            origin: Origin::Created,
            kept: false,
            based_on: None,
        }
    }

    /// Five instances over two types in two subnets.
    fn plan_request() -> Request {
        Request {
            compute_environment: "ce".into(),
            count: 5,
            duration: "3h".into(),
            instance_types: vec!["m6i.large".into(), "m5.large".into()],
            subnets: vec!["subnet-a".into(), "subnet-b".into()],
            ..Request::default()
        }
    }

    fn plan(request: &Request) -> Plan {
        request.validate().unwrap()
    }

    #[test]
    fn one_request_over_every_pool_spot_with_the_on_demand_base() {
        let fleet = FleetRequest::new(
            &plan(&Request {
                on_demand_base: Some(2),
                ..plan_request()
            }),
            &template(),
        );
        let json = serde_json::to_value(&fleet).unwrap();
        assert_eq!(json["Type"], "instant");
        assert_eq!(
            json["TargetCapacitySpecification"],
            serde_json::json!({"TotalTargetCapacity": 5, "OnDemandTargetCapacity": 2, "SpotTargetCapacity": 3, "DefaultTargetCapacityType": "spot"})
        );
        assert_eq!(
            json["SpotOptions"]["AllocationStrategy"],
            "price-capacity-optimized"
        );
        assert_eq!(
            json["OnDemandOptions"]["AllocationStrategy"],
            "lowest-price"
        );
        assert!(json["SpotOptions"].get("MinTargetCapacity").is_none());
        let overrides = json["LaunchTemplateConfigs"][0]["Overrides"]
            .as_array()
            .unwrap();
        assert_eq!(overrides.len(), 4);
        assert_eq!(
            overrides[1],
            serde_json::json!({"InstanceType": "m6i.large", "SubnetId": "subnet-b"})
        );
        assert_eq!(
            json["LaunchTemplateConfigs"][0]["LaunchTemplateSpecification"],
            serde_json::json!({"LaunchTemplateId": "lt-1", "Version": "3"})
        );
    }

    #[test]
    fn on_demand_prioritized_follows_the_order_given_and_min_count_is_a_single_az_minimum() {
        let fleet = FleetRequest::new(
            &plan(&Request {
                market: Some(Market::OnDemand),
                on_demand_allocation: Some(OnDemandAllocation::Prioritized),
                min_count: Some(3),
                ..plan_request()
            }),
            &template(),
        );
        let json = serde_json::to_value(&fleet).unwrap();
        assert!(json.get("SpotOptions").is_none());
        assert_eq!(
            json["OnDemandOptions"],
            serde_json::json!({"AllocationStrategy": "prioritized", "MinTargetCapacity": 3, "SingleAvailabilityZone": true})
        );
        let priorities: Vec<u64> = json["LaunchTemplateConfigs"][0]["Overrides"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["Priority"].as_u64().unwrap())
            .collect();
        assert_eq!(priorities, [0, 1, 2, 3]);
        assert_eq!(
            json["TargetCapacitySpecification"]["DefaultTargetCapacityType"],
            "on-demand"
        );
    }

    #[test]
    fn a_capacity_block_is_a_capacity_block_fleet_without_market_options() {
        let fleet = FleetRequest::new(
            &plan(&Request {
                market: Some(Market::CapacityBlock),
                capacity_reservation_id: Some("cr-1".into()),
                instance_types: vec!["p5.48xlarge".into()],
                ..plan_request()
            }),
            &template(),
        );
        let json = serde_json::to_value(&fleet).unwrap();
        assert_eq!(
            json["TargetCapacitySpecification"],
            serde_json::json!({"TotalTargetCapacity": 5, "DefaultTargetCapacityType": "capacity-block"})
        );
        assert!(json.get("SpotOptions").is_none() && json.get("OnDemandOptions").is_none());
        assert_eq!(
            json["LaunchTemplateConfigs"][0]["Overrides"],
            serde_json::json!([{"InstanceType": "p5.48xlarge", "SubnetId": "subnet-a"}, {"InstanceType": "p5.48xlarge", "SubnetId": "subnet-b"}])
        );
    }

    #[test]
    fn only_a_non_capacity_error_with_nothing_launched_is_a_refusal() {
        let error = |code: &str| PoolError {
            instance_type: Some("m6i.large".into()),
            subnet: Some("subnet-a".into()),
            lifecycle: Some("spot".into()),
            code: code.into(),
            message: "m".into(),
        };
        let none = |codes: &[&str]| Answer {
            instances: Vec::new(),
            errors: codes.iter().map(|c| error(c)).collect(),
        };
        assert!(refusal(&none(&["InsufficientInstanceCapacity"])).is_none());
        assert!(matches!(
            refusal(&none(&[
                "InsufficientInstanceCapacity",
                "SpotMaxPriceTooLow"
            ])),
            Some(LaunchError::PriceTooLow { .. })
        ));
        assert!(matches!(
            refusal(&none(&["UnauthorizedOperation"])),
            Some(LaunchError::Aws(AwsStepError::Denied { .. }))
        ));
        assert_eq!(
            error("InsufficientInstanceCapacity").summary(),
            "m6i.large in subnet-a (spot): InsufficientInstanceCapacity"
        );
    }
}
