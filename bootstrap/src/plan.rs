//! What to launch, validated before any API call. Pure: no IO.
//!
//! Over 400 lines because half of it is the unit tests of every refusal;
//! the code itself is under 400.

use std::fmt;
use std::time::Duration;

use blockwatch_core::settings::MIN_LEASE_DURATION;
use blockwatch_core::time_text::HumanDuration;
use serde::Serialize;

pub const AMI_PARAMETER_X86: &str =
    "/aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id";
pub const AMI_PARAMETER_ARM64: &str =
    "/aws/service/ecs/optimized-ami/amazon-linux-2023/arm64/recommended/image_id";
pub const DEFAULT_INSTANCE_TYPE: &str = "m6i.large";
pub const MAX_COUNT: u32 = 1000;
/// A hop limit of 1 keeps IMDS tokens from containers in bridge and awsvpc
/// network modes, which sit one hop further than the host. Batch ECS-EC2 jobs
/// run in host network mode: no hop limit keeps them from IMDS.
pub const DEFAULT_IMDS_HOP_LIMIT: u32 = 1;
/// EC2's limits for `HttpPutResponseHopLimit`.
pub const IMDS_HOP_LIMITS: std::ops::RangeInclusive<u32> = 1..=64;
const ECS_CONFIG_TEMPLATE: &str = include_str!("../user-data/ecs-config.sh");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Market {
    /// One-time Spot, terminated on interruption, with an agent-enforced lease
    Spot,
    /// On-Demand, with an agent-enforced lease
    OnDemand,
    /// An EC2 Capacity Block for ML (needs --capacity-reservation-id)
    CapacityBlock,
}

impl fmt::Display for Market {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Spot => "spot",
            Self::OnDemand => "on-demand",
            Self::CapacityBlock => "capacity-block",
        })
    }
}

/// How EC2 Fleet picks Spot pools (`SpotOptions.AllocationStrategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SpotAllocation {
    /// The pools least likely to be interrupted, then the cheapest of them (AWS's recommendation)
    #[default]
    PriceCapacityOptimized,
    /// The pools least likely to be interrupted, whatever their price
    CapacityOptimized,
    /// As capacity-optimized, preferring the --instance-type order given
    CapacityOptimizedPrioritized,
    /// The cheapest pools (interrupted most)
    LowestPrice,
    /// Spread over every pool
    Diversified,
}

/// How EC2 Fleet picks On-Demand pools (`OnDemandOptions.AllocationStrategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OnDemandAllocation {
    /// The cheapest pool first
    #[default]
    LowestPrice,
    /// The --instance-type order given, then the --subnet order
    Prioritized,
}

impl SpotAllocation {
    /// The name EC2 takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PriceCapacityOptimized => "price-capacity-optimized",
            Self::CapacityOptimized => "capacity-optimized",
            Self::CapacityOptimizedPrioritized => "capacity-optimized-prioritized",
            Self::LowestPrice => "lowest-price",
            Self::Diversified => "diversified",
        }
    }
}

impl OnDemandAllocation {
    /// The name EC2 takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LowestPrice => "lowest-price",
            Self::Prioritized => "prioritized",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum UserDataMode {
    /// No user data: the blockwatch agent baked into the AMI needs none
    #[default]
    None,
    /// A one-line script that appends ECS_CLUSTER (for stock ECS AMIs without blockwatch)
    EcsConfig,
}

/// Everything the operator asked for, before validation.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub compute_environment: String,
    pub count: u32,
    pub min_count: Option<u32>,
    pub duration: String,
    pub instance_types: Vec<String>,
    pub subnets: Vec<String>,
    pub security_groups: Vec<String>,
    pub instance_profile: Option<String>,
    pub ami: Option<String>,
    pub market: Option<Market>,
    pub max_price: Option<String>,
    pub capacity_reservation_id: Option<String>,
    pub legacy_spot_block: bool,
    pub key_name: Option<String>,
    pub name: Option<String>,
    pub user_data_mode: UserDataMode,
    /// `HttpPutResponseHopLimit` [default: 1].
    pub imds_hop_limit: Option<u32>,
    /// Keep the launch template the launch creates, for later launches.
    pub keep_template: bool,
    pub spot_allocation: Option<SpotAllocation>,
    pub on_demand_allocation: Option<OnDemandAllocation>,
    /// On-Demand instances within a Spot launch.
    pub on_demand_base: Option<u32>,
    /// `--launch-template NAME|ID[:VERSION]`: the operator's template.
    pub launch_template: Option<String>,
}

/// A request that passed every check that needs no AWS call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub compute_environment: String,
    pub count: u32,
    pub min_count: u32,
    pub duration: Duration,
    pub duration_text: String,
    pub instance_types: Vec<String>,
    pub arm64: bool,
    pub subnets: Vec<String>,
    pub security_groups: Vec<String>,
    pub instance_profile: Option<String>,
    pub ami: Option<String>,
    pub market: Market,
    pub max_price: Option<String>,
    pub capacity_reservation_id: Option<String>,
    /// `BlockDurationMinutes`, for `--legacy-spot-block`.
    pub block_duration_minutes: Option<i32>,
    pub key_name: Option<String>,
    pub name: String,
    pub user_data_mode: UserDataMode,
    pub imds_hop_limit: i32,
    pub keep_template: bool,
    /// Whether `--min-count` was given: only then does the fleet get a
    /// minimum target capacity (which EC2 ties to a single AZ).
    pub min_count_given: bool,
    pub spot_allocation: SpotAllocation,
    pub on_demand_allocation: OnDemandAllocation,
    pub on_demand_base: u32,
    /// The operator's launch template, which the instances start from.
    pub launch_template: Option<TemplateSelector>,
    /// Whether `--instance-type` was given: with `--launch-template`, the
    /// template's own type is the default instead of m6i.large.
    pub instance_types_given: bool,
}

/// A request refused before any API call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("--compute-environment is empty")]
    NoComputeEnvironment,
    #[error("--count must be between 1 and {MAX_COUNT}, not {0}")]
    Count(u32),
    #[error("--min-count must be between 1 and --count ({count}), not {min}")]
    MinCount { min: u32, count: u32 },
    #[error("--duration {0:?} is not a duration like 3h or 90m")]
    Duration(String),
    #[error(
        "--duration must be at least {}: the agent refuses a shorter lease",
        humantime::format_duration(MIN_LEASE_DURATION)
    )]
    ShortDuration,
    #[error("--max-price {0:?} is not a positive price in USD per hour, like 0.12")]
    Price(String),
    #[error("--max-price only applies to --market spot")]
    PriceWithoutSpot,
    #[error("--market capacity-block needs --capacity-reservation-id (the Capacity Block's reservation)")]
    CapacityBlockWithoutReservation,
    #[error("--capacity-reservation-id only applies to --market capacity-block")]
    ReservationWithoutCapacityBlock,
    #[error("--legacy-spot-block only applies to --market spot")]
    LegacyBlockWithoutSpot,
    #[error("--legacy-spot-block needs a --duration of 60 to 360 minutes in steps of 60 (BlockDurationMinutes), not {0}")]
    LegacyBlockDuration(String),
    #[error("instance types {arm} (Graviton, arm64) and {x86} (x86_64) need different AMIs; launch them separately")]
    MixedArchitectures { arm: String, x86: String },
    #[error("instance type {0:?} is not like m6i.large")]
    InstanceType(String),
    #[error("--imds-hop-limit must be between 1 and 64, not {0}")]
    ImdsHopLimit(u32),
    #[error("--on-demand-base must be at most --count ({count}), not {base}")]
    OnDemandBase { base: u32, count: u32 },
    #[error("--on-demand-base and --allocation-strategy only apply to --market spot without --legacy-spot-block")]
    SpotFleetOnly,
    #[error("--on-demand-allocation-strategy only applies to --market spot or on-demand")]
    OnDemandAllocationWithoutFleet,
    #[error("--launch-template {0:?} is not NAME, lt-ID, NAME:VERSION or lt-ID:VERSION (VERSION: a number, $Latest or $Default)")]
    LaunchTemplate(String),
    #[error("--launch-template: the template carries {0} itself; drop the flag (or add it to a version of the template)")]
    LaunchTemplateCarries(&'static str),
    #[error("--legacy-spot-block cannot start from --launch-template: it launches with RunInstances from the launcher's own template")]
    LaunchTemplateLegacyBlock,
}

/// `--launch-template NAME|ID[:VERSION]`: which of the operator's templates,
/// and which version of it [default: its default version].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateSelector {
    pub template: TemplateKey,
    pub version: TemplateVersion,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateKey {
    /// `lt-` and 17 hex digits.
    Id(String),
    Name(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateVersion {
    Default,
    Latest,
    Number(i64),
}

impl TemplateVersion {
    /// As EC2 takes it: `$Default`, `$Latest` or the number.
    pub fn as_api(self) -> String {
        match self {
            Self::Default => "$Default".to_owned(),
            Self::Latest => "$Latest".to_owned(),
            Self::Number(n) => n.to_string(),
        }
    }
}

impl fmt::Display for TemplateSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (TemplateKey::Id(key) | TemplateKey::Name(key)) = &self.template;
        write!(f, "{key}:{}", self.version.as_api())
    }
}

impl std::str::FromStr for TemplateSelector {
    type Err = Invalid;

    fn from_str(text: &str) -> Result<Self, Invalid> {
        let invalid = || Invalid::LaunchTemplate(text.to_owned());
        // Template names cannot hold a colon, so the last one starts the version.
        let (key, version) = match text.rsplit_once(':') {
            Some((key, version)) => (key, Some(version)),
            None => (text, None),
        };
        let version = match version.map(str::to_ascii_lowercase).as_deref() {
            None | Some("$default") => TemplateVersion::Default,
            Some("$latest") => TemplateVersion::Latest,
            Some(number) => match number.parse::<i64>() {
                Ok(n) if n >= 1 && number.bytes().all(|b| b.is_ascii_digit()) => {
                    TemplateVersion::Number(n)
                }
                _ => return Err(invalid()),
            },
        };
        let is_id = key.len() == 20
            && key.starts_with("lt-")
            && key[3..].bytes().all(|b| b.is_ascii_hexdigit());
        // EC2's rule for names: 3 to 128 of letters, digits and ( ) . - / _
        let is_name = (3..=128).contains(&key.len())
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"().-/_".contains(&b));
        let template = if is_id {
            TemplateKey::Id(key.to_owned())
        } else if is_name {
            TemplateKey::Name(key.to_owned())
        } else {
            return Err(invalid());
        };
        Ok(Self { template, version })
    }
}

/// Graviton (arm64) instance types: `a1`, or a family whose attributes after
/// the generation digit include `g` (`m7g`, `c6gn`, `t4g`, `x2gd`, `g5g`).
pub fn is_graviton(instance_type: &str) -> bool {
    let family = instance_type.split('.').next().unwrap_or_default();
    if family == "a1" {
        return true;
    }
    let attributes = family
        .trim_start_matches(|c: char| c.is_ascii_lowercase())
        .trim_start_matches(|c: char| c.is_ascii_digit());
    attributes.contains('g')
}

fn valid_price(text: &str) -> bool {
    let digits_and_one_dot =
        text.chars().all(|c| c.is_ascii_digit() || c == '.') && text.matches('.').count() <= 1;
    digits_and_one_dot && text.parse::<f64>().is_ok_and(|p| p > 0.0 && p.is_finite())
}

impl Request {
    pub fn validate(&self) -> Result<Plan, Invalid> {
        if self.compute_environment.trim().is_empty() {
            return Err(Invalid::NoComputeEnvironment);
        }
        if !(1..=MAX_COUNT).contains(&self.count) {
            return Err(Invalid::Count(self.count));
        }
        let min_count = self.min_count.unwrap_or(self.count);
        if !(1..=self.count).contains(&min_count) {
            return Err(Invalid::MinCount {
                min: min_count,
                count: self.count,
            });
        }
        let duration = self
            .duration
            .parse::<HumanDuration>()
            .map_err(|_| Invalid::Duration(self.duration.clone()))?
            .0;
        // The agent refuses a shorter lease tag, and would then enforce none.
        if duration < MIN_LEASE_DURATION {
            return Err(Invalid::ShortDuration);
        }
        let market = self.market.unwrap_or(Market::Spot);
        if let Some(price) = &self.max_price {
            if !valid_price(price) {
                return Err(Invalid::Price(price.clone()));
            }
            if market != Market::Spot {
                return Err(Invalid::PriceWithoutSpot);
            }
        }
        match (market, &self.capacity_reservation_id) {
            (Market::CapacityBlock, None) => return Err(Invalid::CapacityBlockWithoutReservation),
            (Market::Spot | Market::OnDemand, Some(_)) => {
                return Err(Invalid::ReservationWithoutCapacityBlock)
            }
            _ => {}
        }
        let block_duration_minutes = if self.legacy_spot_block {
            if market != Market::Spot {
                return Err(Invalid::LegacyBlockWithoutSpot);
            }
            let minutes = duration.as_secs() / 60;
            if duration.as_secs() % 3600 != 0 || !(60..=360).contains(&minutes) {
                return Err(Invalid::LegacyBlockDuration(self.duration.clone()));
            }
            i32::try_from(minutes).ok()
        } else {
            None
        };
        let instance_types = if self.instance_types.is_empty() {
            vec![DEFAULT_INSTANCE_TYPE.to_owned()]
        } else {
            self.instance_types.clone()
        };
        for t in &instance_types {
            let ok = t.split_once('.').is_some_and(|(family, size)| {
                !family.is_empty()
                    && !size.is_empty()
                    && t.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-'
                    })
            });
            if !ok {
                return Err(Invalid::InstanceType(t.clone()));
            }
        }
        let hop_limit = self.imds_hop_limit.unwrap_or(DEFAULT_IMDS_HOP_LIMIT);
        let imds_hop_limit = match i32::try_from(hop_limit) {
            Ok(limit) if IMDS_HOP_LIMITS.contains(&hop_limit) => limit,
            _ => return Err(Invalid::ImdsHopLimit(hop_limit)),
        };
        let spot_fleet = market == Market::Spot && block_duration_minutes.is_none();
        if (self.on_demand_base.is_some() || self.spot_allocation.is_some()) && !spot_fleet {
            return Err(Invalid::SpotFleetOnly);
        }
        if self.on_demand_allocation.is_some() && !(spot_fleet || market == Market::OnDemand) {
            return Err(Invalid::OnDemandAllocationWithoutFleet);
        }
        let on_demand_base = self.on_demand_base.unwrap_or(0);
        if on_demand_base > self.count {
            return Err(Invalid::OnDemandBase {
                base: on_demand_base,
                count: self.count,
            });
        }
        let launch_template = self.operator_template(block_duration_minutes.is_some())?;
        let arm = instance_types.iter().find(|t| is_graviton(t));
        let x86 = instance_types.iter().find(|t| !is_graviton(t));
        if let (Some(arm), Some(x86)) = (arm, x86) {
            return Err(Invalid::MixedArchitectures {
                arm: arm.clone(),
                x86: x86.clone(),
            });
        }
        Ok(Plan {
            compute_environment: self.compute_environment.trim().to_owned(),
            count: self.count,
            min_count,
            duration,
            duration_text: humantime::format_duration(duration).to_string(),
            arm64: arm.is_some(),
            instance_types,
            subnets: self.subnets.clone(),
            security_groups: self.security_groups.clone(),
            instance_profile: self.instance_profile.clone(),
            ami: self.ami.clone(),
            market,
            max_price: self.max_price.clone(),
            capacity_reservation_id: self.capacity_reservation_id.clone(),
            block_duration_minutes,
            key_name: self.key_name.clone(),
            name: self
                .name
                .clone()
                .unwrap_or_else(|| format!("blockwatch-{}", self.compute_environment.trim())),
            user_data_mode: self.user_data_mode,
            imds_hop_limit,
            keep_template: self.keep_template,
            min_count_given: self.min_count.is_some(),
            spot_allocation: self.spot_allocation.unwrap_or_default(),
            on_demand_allocation: self.on_demand_allocation.unwrap_or_default(),
            on_demand_base,
            launch_template,
            instance_types_given: !self.instance_types.is_empty(),
        })
    }

    /// `--launch-template`, parsed; the flags whose settings the template
    /// carries are refused with it, so that nothing given is silently dropped.
    fn operator_template(&self, legacy_block: bool) -> Result<Option<TemplateSelector>, Invalid> {
        let Some(text) = &self.launch_template else {
            return Ok(None);
        };
        let selector: TemplateSelector = text.parse()?;
        if legacy_block {
            return Err(Invalid::LaunchTemplateLegacyBlock);
        }
        let carried = [
            (
                !self.security_groups.is_empty(),
                "its security groups (--security-group)",
            ),
            (
                self.instance_profile.is_some(),
                "its instance profile (--instance-profile)",
            ),
            (self.key_name.is_some(), "its key pair (--key-name)"),
            (
                self.user_data_mode != UserDataMode::None,
                "its user data (--user-data-mode)",
            ),
        ];
        match carried.iter().find(|(given, _)| *given) {
            Some((_, what)) => Err(Invalid::LaunchTemplateCarries(what)),
            None => Ok(Some(selector)),
        }
    }
}

impl Plan {
    /// The plan with these instance types: the operator's template's own
    /// type, when `--instance-type` was not given.
    pub fn with_instance_types(&self, instance_types: Vec<String>) -> Self {
        Self {
            arm64: instance_types.iter().any(|t| is_graviton(t)),
            instance_types,
            ..self.clone()
        }
    }

    /// The SSM parameter holding the ECS-optimized AL2023 AMI for this architecture.
    pub fn ami_parameter(&self) -> &'static str {
        if self.arm64 {
            AMI_PARAMETER_ARM64
        } else {
            AMI_PARAMETER_X86
        }
    }

    /// Whether the launch is one EC2 Fleet request: every market but legacy
    /// Spot blocks (a fleet takes no `BlockDurationMinutes`), which stay on
    /// RunInstances.
    pub fn uses_fleet(&self) -> bool {
        self.block_duration_minutes.is_none()
    }

    /// (instance type, subnet) pairs, in the order given: the fleet's pools,
    /// or tried in turn with RunInstances.
    pub fn placements(&self) -> Vec<(String, Option<String>)> {
        let subnets: Vec<Option<String>> = if self.subnets.is_empty() {
            vec![None]
        } else {
            self.subnets.iter().cloned().map(Some).collect()
        };
        self.instance_types
            .iter()
            .flat_map(|t| subnets.iter().map(move |s| (t.clone(), s.clone())))
            .collect()
    }

    /// The user data to send, if any (not yet base64).
    pub fn user_data(&self, cluster: &str) -> Option<String> {
        match self.user_data_mode {
            UserDataMode::None => None,
            UserDataMode::EcsConfig => Some(ECS_CONFIG_TEMPLATE.replace("{{cluster}}", cluster)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Request {
        Request {
            compute_environment: "ce".into(),
            count: 2,
            duration: "3h".into(),
            ..Request::default()
        }
    }

    #[test]
    fn defaults_to_spot_with_the_whole_count() {
        let plan = request().validate().unwrap();
        assert_eq!(
            (plan.market, plan.min_count, plan.duration),
            (Market::Spot, 2, Duration::from_secs(3 * 3600))
        );
        assert_eq!(plan.instance_types, vec![DEFAULT_INSTANCE_TYPE.to_owned()]);
        assert_eq!(plan.name, "blockwatch-ce");
        assert_eq!(plan.user_data("c"), None);
        assert_eq!(plan.imds_hop_limit, 1);
    }

    #[test]
    fn imds_hop_limit_takes_1_to_64() {
        for ok in [1, 2, 64] {
            let plan = Request {
                imds_hop_limit: Some(ok),
                ..request()
            }
            .validate();
            assert_eq!(plan.map(|p| p.imds_hop_limit), Ok(ok as i32));
        }
        for bad in [0, 65, u32::MAX] {
            let refused = Request {
                imds_hop_limit: Some(bad),
                ..request()
            }
            .validate();
            assert_eq!(refused, Err(Invalid::ImdsHopLimit(bad)));
        }
    }

    #[test]
    fn refuses_bad_durations_counts_and_prices() {
        let cases: Vec<(Request, Invalid)> = vec![
            (
                Request {
                    duration: "0s".into(),
                    ..request()
                },
                Invalid::ShortDuration,
            ),
            (
                Request {
                    duration: "9m 59s".into(),
                    ..request()
                },
                Invalid::ShortDuration,
            ),
            (
                Request {
                    duration: "-3h".into(),
                    ..request()
                },
                Invalid::Duration("-3h".into()),
            ),
            (
                Request {
                    duration: "soon".into(),
                    ..request()
                },
                Invalid::Duration("soon".into()),
            ),
            (
                Request {
                    count: 0,
                    ..request()
                },
                Invalid::Count(0),
            ),
            (
                Request {
                    min_count: Some(3),
                    ..request()
                },
                Invalid::MinCount { min: 3, count: 2 },
            ),
            (
                Request {
                    max_price: Some("-1".into()),
                    ..request()
                },
                Invalid::Price("-1".into()),
            ),
            (
                Request {
                    max_price: Some("1e3".into()),
                    ..request()
                },
                Invalid::Price("1e3".into()),
            ),
            (
                Request {
                    max_price: Some("0.1".into()),
                    market: Some(Market::OnDemand),
                    ..request()
                },
                Invalid::PriceWithoutSpot,
            ),
            (
                Request {
                    market: Some(Market::CapacityBlock),
                    ..request()
                },
                Invalid::CapacityBlockWithoutReservation,
            ),
            (
                Request {
                    capacity_reservation_id: Some("cr-1".into()),
                    ..request()
                },
                Invalid::ReservationWithoutCapacityBlock,
            ),
            (
                Request {
                    instance_types: vec!["large".into()],
                    ..request()
                },
                Invalid::InstanceType("large".into()),
            ),
        ];
        for (bad, expected) in cases {
            assert_eq!(bad.validate(), Err(expected));
        }
    }

    #[test]
    fn legacy_spot_block_takes_60_to_360_minutes_in_steps_of_60() {
        for ok in ["1h", "60m", "6h", "360m"] {
            let plan = Request {
                legacy_spot_block: true,
                duration: ok.into(),
                ..request()
            }
            .validate();
            assert!(
                plan.is_ok_and(|p| p.block_duration_minutes.is_some()),
                "{ok}"
            );
        }
        for bad in ["30m", "90m", "7h", "2h30m"] {
            let refused = Request {
                legacy_spot_block: true,
                duration: bad.into(),
                ..request()
            }
            .validate();
            assert_eq!(
                refused,
                Err(Invalid::LegacyBlockDuration(bad.into())),
                "{bad}"
            );
        }
        let on_demand = Request {
            legacy_spot_block: true,
            market: Some(Market::OnDemand),
            ..request()
        };
        assert_eq!(on_demand.validate(), Err(Invalid::LegacyBlockWithoutSpot));
    }

    #[test]
    fn graviton_types_pick_the_arm64_ami_and_cannot_mix() {
        for arm in [
            "m7g.large",
            "c6gn.xlarge",
            "t4g.micro",
            "x2gd.large",
            "g5g.xlarge",
            "a1.medium",
            "r8g.large",
        ] {
            assert!(is_graviton(arm), "{arm}");
        }
        for x86 in [
            "m6i.large",
            "g5.xlarge",
            "c7a.large",
            "p5.48xlarge",
            "inf2.xlarge",
            "trn1.2xlarge",
        ] {
            assert!(!is_graviton(x86), "{x86}");
        }
        let plan = Request {
            instance_types: vec!["m7g.large".into()],
            ..request()
        }
        .validate()
        .unwrap();
        assert_eq!(plan.ami_parameter(), AMI_PARAMETER_ARM64);
        let mixed = Request {
            instance_types: vec!["m7g.large".into(), "m6i.large".into()],
            ..request()
        };
        assert!(matches!(
            mixed.validate(),
            Err(Invalid::MixedArchitectures { .. })
        ));
    }

    #[test]
    fn placements_try_every_type_in_every_subnet() {
        let plan = Request {
            instance_types: vec!["m6i.large".into(), "m5.large".into()],
            subnets: vec!["subnet-a".into(), "subnet-b".into()],
            ..request()
        }
        .validate()
        .unwrap();
        assert_eq!(plan.placements().len(), 4);
        assert_eq!(
            plan.placements()[1],
            ("m6i.large".into(), Some("subnet-b".into()))
        );
    }

    #[test]
    fn fleet_flags_apply_to_spot_and_on_demand_only() {
        let plan = request().validate().unwrap();
        assert!(plan.uses_fleet());
        assert_eq!(
            (
                plan.spot_allocation,
                plan.on_demand_base,
                plan.min_count_given
            ),
            (SpotAllocation::PriceCapacityOptimized, 0, false)
        );
        let base = |market, base| Request {
            market: Some(market),
            on_demand_base: Some(base),
            ..request()
        };
        assert_eq!(
            base(Market::Spot, 2).validate().map(|p| p.on_demand_base),
            Ok(2)
        );
        assert_eq!(
            base(Market::Spot, 3).validate(),
            Err(Invalid::OnDemandBase { base: 3, count: 2 })
        );
        assert_eq!(
            base(Market::OnDemand, 1).validate(),
            Err(Invalid::SpotFleetOnly)
        );
        let legacy = Request {
            legacy_spot_block: true,
            spot_allocation: Some(SpotAllocation::LowestPrice),
            ..request()
        };
        assert_eq!(legacy.validate(), Err(Invalid::SpotFleetOnly));
        let block = Request {
            market: Some(Market::CapacityBlock),
            capacity_reservation_id: Some("cr-1".into()),
            on_demand_allocation: Some(OnDemandAllocation::Prioritized),
            ..request()
        };
        assert_eq!(
            block.validate(),
            Err(Invalid::OnDemandAllocationWithoutFleet)
        );
        let block = Request {
            market: Some(Market::CapacityBlock),
            capacity_reservation_id: Some("cr-1".into()),
            ..request()
        };
        assert!(block.validate().unwrap().uses_fleet());
        let legacy = Request {
            legacy_spot_block: true,
            duration: "2h".into(),
            ..request()
        };
        assert!(!legacy.validate().unwrap().uses_fleet());
        let given = Request {
            min_count: Some(1),
            ..request()
        };
        assert!(given.validate().unwrap().min_count_given);
    }

    #[test]
    fn ecs_config_user_data_carries_the_cluster() {
        let plan = Request {
            user_data_mode: UserDataMode::EcsConfig,
            ..request()
        }
        .validate()
        .unwrap();
        let script = plan.user_data("ce_Batch_123").unwrap();
        assert!(script.starts_with("#!/bin/bash"));
        assert!(script.contains("echo \"ECS_CLUSTER=ce_Batch_123\" >> /etc/ecs/ecs.config"));
    }

    #[test]
    fn launch_template_takes_a_name_or_id_and_a_version() {
        let parse = |text: &str| text.parse::<TemplateSelector>();
        assert_eq!(
            parse("team-batch").unwrap(),
            TemplateSelector {
                template: TemplateKey::Name("team-batch".into()),
                version: TemplateVersion::Default,
            }
        );
        assert_eq!(
            parse("lt-0123456789abcdef0:7").unwrap(),
            TemplateSelector {
                template: TemplateKey::Id("lt-0123456789abcdef0".into()),
                version: TemplateVersion::Number(7),
            }
        );
        assert_eq!(
            parse("a/b_c.(d):$Latest").unwrap().version,
            TemplateVersion::Latest
        );
        assert_eq!(
            parse("team:$default").unwrap().version,
            TemplateVersion::Default
        );
        assert_eq!(parse("team:3").unwrap().to_string(), "team:3");
        for bad in [
            "", "ab", "team:", "team:0", "team:-1", "team:+2", "team:x", "a b", "t:1:2",
        ] {
            assert_eq!(
                parse(bad),
                Err(Invalid::LaunchTemplate(bad.into())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn launch_template_refuses_the_flags_the_template_carries() {
        let with = |change: fn(&mut Request)| {
            let mut request = Request {
                compute_environment: "ce".into(),
                count: 1,
                duration: "3h".into(),
                launch_template: Some("team".into()),
                ..Request::default()
            };
            change(&mut request);
            request.validate()
        };
        let plan = with(|_| {}).unwrap();
        assert!(plan.launch_template.is_some());
        assert!(!plan.instance_types_given);
        assert!(matches!(
            with(|r| r.security_groups = vec!["sg-1".into()]),
            Err(Invalid::LaunchTemplateCarries(what)) if what.contains("--security-group")
        ));
        assert!(matches!(
            with(|r| r.instance_profile = Some("p".into())),
            Err(Invalid::LaunchTemplateCarries(what)) if what.contains("--instance-profile")
        ));
        assert!(matches!(
            with(|r| r.key_name = Some("k".into())),
            Err(Invalid::LaunchTemplateCarries(what)) if what.contains("--key-name")
        ));
        assert!(matches!(
            with(|r| r.user_data_mode = UserDataMode::EcsConfig),
            Err(Invalid::LaunchTemplateCarries(what)) if what.contains("--user-data-mode")
        ));
        assert_eq!(
            with(|r| {
                r.legacy_spot_block = true;
                r.duration = "1h".into();
            }),
            Err(Invalid::LaunchTemplateLegacyBlock)
        );
        let typed = with(|r| r.instance_types = vec!["m7g.large".into()]).unwrap();
        assert!(typed.instance_types_given);
        let graviton = plan.with_instance_types(vec!["c7g.xlarge".into()]);
        assert!(graviton.arm64);
    }
}
