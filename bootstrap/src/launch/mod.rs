//! Launching, the command without a subcommand: check the compute
//! environment, pick the AMI, work out the lease, make (or reuse) the launch
//! template, launch through one EC2 Fleet request (RunInstances for legacy
//! Spot blocks), and optionally wait for the instances.
//!
//! Over 400 lines because it holds the report's types and the steps of one
//! launch in the order they run; the launch template, the fleet request, the
//! RunInstances request and `--wait` live in their own modules.

mod fleet;
mod operator_template;
mod run_instances;
mod template;
mod wait;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aws_sdk_ec2::types::ShutdownBehavior;
use aws_sdk_ec2::Client as Ec2;
use blockwatch_aws::{classify, to_time, AwsFailure, CallError};
use blockwatch_core::compute_environment::{cluster_of, ComputeEnvironmentInfo, Refusal};
use blockwatch_core::tags::{
    TAG_CLUSTER, TAG_COMPUTE_ENVIRONMENT, TAG_LEASE_DURATION, TAG_LEASE_END,
};
use blockwatch_core::time_text::rfc3339;
use serde::Serialize;
use time::OffsetDateTime;

use crate::aws::{self, AwsStepError, Clients};
use crate::cli::LaunchArgs;
use crate::exit::{self, Exit};
use crate::interrupt::Interrupts;
use crate::output;
use crate::plan::{Market, Plan, Request};
pub use fleet::{FleetRequest, PoolError};
pub use operator_template::TemplateRefused;
use run_instances::{Refused, Template};
pub use template::{LaunchTemplate, Origin, TAG_TEMPLATE_HASH};
pub use wait::{wait, WaitOptions};

/// Every instance the launcher starts ends when it powers itself off: the
/// default, `stop`, would keep billing its volumes, and a stopped Capacity
/// Block instance cannot start again once the block has ended.
pub const SHUTDOWN_BEHAVIOR: ShutdownBehavior = ShutdownBehavior::Terminate;

/// Why a launch failed, each as one line.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Invalid(#[from] crate::plan::Invalid),
    #[error(transparent)]
    Aws(#[from] AwsStepError),
    #[error(transparent)]
    Template(#[from] TemplateRefused),
    #[error("--legacy-spot-block: EC2 refused BlockDurationMinutes ({detail}). Spot blocks (defined-duration Spot) were closed to new customers on 2021-07-01 and retired on 2022-12-31. Use --market spot with the same --duration {duration}: blockwatch enforces the lease on the instance instead.")]
    SpotBlocksRetired { detail: String, duration: String },
    #[error("spot price too low: {detail}; raise --max-price or drop it to pay up to the On-Demand price")]
    PriceTooLow { detail: String },
    #[error("insufficient capacity: launched {launched} of {requested} (at least {min} needed). {detail}. Try more --instance-type or --subnet values, or another market")]
    Shortfall {
        launched: usize,
        requested: u32,
        min: u32,
        detail: String,
        report: Box<Report>,
    },
    #[error("capacity reservation {0} not found")]
    NoReservation(String),
    #[error("capacity reservation {id} is not a Capacity Block with an end date (type {kind})")]
    NotACapacityBlock { id: String, kind: String },
    #[error("timed out after {0} waiting for the instances")]
    WaitTimeout(String),
    #[error("interrupted: the wait was given up; what was launched is listed above")]
    Interrupted,
    #[error("interrupted before anything was launched; nothing is left behind")]
    StoppedBeforeLaunch,
    #[error("stopped at once by a second interrupt, in the middle of the launch: EC2 may have launched instances (`blockwatch-launch list --compute-environment {compute_environment}` shows them; they carry their lease, which their agents enforce), and a launch template this launch created may be left (tagged blockwatch:compute-environment={compute_environment})")]
    StoppedMidLaunch { compute_environment: String },
    #[error("{api} failed without EC2's answer ({detail}), so EC2 may have launched instances all the same: `blockwatch-launch list --compute-environment {compute_environment}` shows them (they carry their lease, which their agents enforce)")]
    Unconfirmed {
        api: &'static str,
        detail: String,
        compute_environment: String,
    },
    #[error("EC2 still does not know {ids} {after} after launching them (ec2:DescribeInstances: InvalidInstanceID.NotFound: {detail}); look for them in the EC2 console")]
    StillNotFound {
        ids: String,
        after: String,
        detail: String,
    },
}

impl From<CallError> for LaunchError {
    fn from(err: CallError) -> Self {
        Self::Aws(err.into())
    }
}

impl From<Refusal> for LaunchError {
    fn from(err: Refusal) -> Self {
        Self::Aws(err.into())
    }
}

impl LaunchError {
    pub fn exit(&self) -> Exit {
        match self {
            Self::Invalid(_) => exit::INVALID,
            Self::Aws(step) => step.exit(),
            Self::Template(_) => exit::TEMPLATE_REFUSED,
            Self::Shortfall { .. } => exit::SHORTFALL,
            Self::Unconfirmed { .. } => exit::TRANSIENT,
            Self::SpotBlocksRetired { .. }
            | Self::PriceTooLow { .. }
            | Self::NoReservation(_)
            | Self::NotACapacityBlock { .. } => exit::EC2_REFUSED,
            Self::StillNotFound { .. } => exit::REJECTED,
            Self::WaitTimeout(_) => exit::WAIT_TIMEOUT,
            Self::Interrupted | Self::StoppedBeforeLaunch | Self::StoppedMidLaunch { .. } => {
                exit::INTERRUPTED
            }
        }
    }
}

/// One launched instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Launched {
    pub instance_id: String,
    pub instance_type: String,
    pub subnet: Option<String>,
    /// `spot`, `on-demand` or `capacity-block`.
    pub lifecycle: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub launch_time: Option<OffsetDateTime>,
    /// When the agent will consider the lease over.
    #[serde(with = "time::serde::rfc3339::option")]
    pub lease_end: Option<OffsetDateTime>,
    pub state: Option<String>,
}

/// What happened (or, in a dry run, what would).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub compute_environment: String,
    pub compute_environment_state: Option<String>,
    pub cluster: String,
    pub market: Market,
    pub ami: String,
    pub ami_source: String,
    pub duration: String,
    pub requested: u32,
    pub min_count: u32,
    pub instance_types: Vec<String>,
    pub subnets: Vec<String>,
    pub tags: Vec<(String, String)>,
    pub user_data: bool,
    /// `HttpPutResponseHopLimit`: 1 keeps IMDS (and the instance role's
    /// credentials) from containers in bridge and awsvpc network modes; Batch
    /// ECS-EC2 jobs run in host mode and reach IMDS whatever it is.
    pub imds_hop_limit: i32,
    /// `InstanceInitiatedShutdownBehavior`: a power-off from inside the
    /// instance ends it (and its billing) instead of leaving it stopped.
    pub shutdown_behavior: String,
    /// The launch template the instances start from.
    pub launch_template: LaunchTemplate,
    /// The EC2 Fleet request (Spot and On-Demand), as sent.
    pub fleet_request: Option<FleetRequest>,
    /// The pools the fleet could not fill, with its error codes.
    pub pool_errors: Vec<PoolError>,
    pub dry_run: bool,
    pub instances: Vec<Launched>,
    pub warnings: Vec<String>,
}

/// The command: validate, launch, wait if asked, print. What was launched
/// is printed even when the launch or the wait then fails.
pub async fn run(args: &LaunchArgs, call_timeout: Duration) -> Result<(), LaunchError> {
    // Everything checkable without AWS is checked before the first call.
    let plan = request(args).validate()?;
    let clients = Clients::new(&aws::sdk(call_timeout).await);
    let mut interrupts = Interrupts::register();
    let stop = AtomicBool::new(false);
    let mut launching = Box::pin(launch(
        &clients,
        &plan,
        args.dry_run,
        OffsetDateTime::now_utc(),
        Duration::from(args.not_found_grace),
        &stop,
    ));
    // An interrupt never abandons a call under way: that would leave a
    // template behind, or instances unreported. The launch stops at its
    // next step instead; a second interrupt stops at once.
    let mut interrupted = false;
    let launched = tokio::select! {
        launched = &mut launching => launched,
        () = interrupts.next() => {
            interrupted = true;
            stop.store(true, Ordering::SeqCst);
            log::warn!("interrupted: stopping after the AWS call under way, so that nothing is left behind (each call ends within --call-timeout); interrupt again to stop at once");
            tokio::select! {
                launched = &mut launching => launched,
                () = interrupts.next() => {
                    return Err(LaunchError::StoppedMidLaunch {
                        compute_environment: plan.compute_environment.clone(),
                    });
                }
            }
        }
    };
    if let Err(LaunchError::Shortfall { report, .. }) = &launched {
        output::print(&output::render(report, args.output));
    }
    let mut report = launched?;
    let waited = if !args.wait || args.dry_run {
        Ok(())
    } else if interrupted {
        Err(LaunchError::Interrupted)
    } else {
        let options = WaitOptions {
            registered: args.wait_registered,
            timeout: Duration::from(args.wait_timeout),
            not_found_grace: Duration::from(args.not_found_grace),
            poll_interval: WaitOptions::DEFAULT_POLL_INTERVAL,
        };
        tokio::select! {
            waited = Box::pin(wait(&clients, &mut report, options)) => waited,
            () = interrupts.next() => Err(LaunchError::Interrupted),
        }
    };
    output::print(&output::render(&report, args.output));
    waited
}

/// The flags as a request to validate.
fn request(args: &LaunchArgs) -> Request {
    Request {
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
        keep_template: args.keep_template,
        spot_allocation: args.allocation_strategy,
        on_demand_allocation: args.on_demand_allocation_strategy,
        on_demand_base: args.on_demand_base,
        launch_template: args.launch_template.clone(),
    }
}

/// Runs the whole launch. `dry_run` checks permissions with EC2's `DryRun`
/// and launches nothing. `not_found_grace`: how long EC2 may not know the
/// instances the fleet just launched (their launch times give the leases).
/// `stop` set (an interrupt): no launch request is sent any more, and what
/// was created for it is deleted.
pub async fn launch(
    clients: &Clients,
    plan: &Plan,
    dry_run: bool,
    now: OffsetDateTime,
    not_found_grace: Duration,
    stop: &AtomicBool,
) -> Result<Report, LaunchError> {
    let (info, cluster, mut warnings) = compute_environment(clients, plan).await?;
    let lease = lease(&clients.ec2, plan, now).await?;
    let tags = tags(plan, &cluster, &lease);
    // Nothing written yet.
    if stop.load(Ordering::SeqCst) {
        return Err(LaunchError::StoppedBeforeLaunch);
    }
    let prepared = match &plan.launch_template {
        Some(selector) => {
            Box::pin(from_operator_template(clients, plan, selector, &tags, now)).await?
        }
        None => Box::pin(from_own_template(clients, plan, &tags, &cluster, now)).await?,
    };
    let plan = &prepared.plan;
    warnings.extend(hop_limit_warning(prepared.imds_hop_limit));
    warnings.extend(prepared.warnings);
    let launch_template = prepared.launch_template;
    if stop.load(Ordering::SeqCst) {
        if let Some(warning) = template::clean_up(&clients.ec2, &launch_template).await {
            log::warn!("{warning}");
        }
        return Err(LaunchError::StoppedBeforeLaunch);
    }
    let mut report = Report {
        compute_environment: plan.compute_environment.clone(),
        compute_environment_state: info.state.clone(),
        cluster: cluster.clone(),
        market: plan.market,
        ami: prepared.ami,
        ami_source: prepared.ami_source,
        duration: plan.duration_text.clone(),
        requested: plan.count,
        min_count: plan.min_count,
        instance_types: plan.instance_types.clone(),
        subnets: plan.subnets.clone(),
        tags: prepared.tags,
        user_data: prepared.user_data,
        imds_hop_limit: prepared.imds_hop_limit,
        shutdown_behavior: SHUTDOWN_BEHAVIOR.as_str().to_owned(),
        launch_template: launch_template.clone(),
        fleet_request: None,
        pool_errors: Vec::new(),
        dry_run,
        instances: Vec::new(),
        warnings,
    };
    let template = Template {
        plan,
        launch_template: &launch_template,
        dry_run,
    };
    // The template goes once the launch is over, whatever its outcome.
    let placed = if plan.uses_fleet() {
        run_fleet(
            &clients.ec2,
            &template,
            &lease,
            &mut report,
            not_found_grace,
        )
        .await
    } else {
        run_placements(&clients.ec2, &template, &lease, &mut report).await
    };
    let cleanup = template::clean_up(&clients.ec2, &launch_template).await;
    report.warnings.extend(cleanup.clone());
    match placed {
        Ok(Placed::DryRunAccepted) => Ok(report),
        Ok(Placed::Tried { failures }) => enough(plan, report, &failures),
        Err(err) => {
            if let Some(warning) = cleanup {
                log::warn!("{warning}");
            }
            Err(err)
        }
    }
}

/// The compute environment, which must exist and be UNMANAGED, its cluster,
/// and what the operator should know about it.
async fn compute_environment(
    clients: &Clients,
    plan: &Plan,
) -> Result<(ComputeEnvironmentInfo, String, Vec<String>), LaunchError> {
    let info = blockwatch_aws::describe_compute_environment::describe(
        &clients.batch,
        &plan.compute_environment,
    )
    .await?
    .ok_or_else(|| Refusal::NotFound(plan.compute_environment.clone()))?;
    let (cluster, warnings) = cluster_of(&info)?;
    Ok((info, cluster.to_string(), warnings))
}

/// The launch template ready, and what the report says of it.
struct Prepared {
    /// The plan, with the operator's template's instance type when no
    /// `--instance-type` was given.
    plan: Plan,
    launch_template: LaunchTemplate,
    ami: String,
    ami_source: String,
    /// The tags the instances get.
    tags: Vec<(String, String)>,
    user_data: bool,
    imds_hop_limit: i32,
    warnings: Vec<String>,
}

/// The launcher's own template, created or reused by content.
async fn from_own_template(
    clients: &Clients,
    plan: &Plan,
    tags: &[(String, String)],
    cluster: &str,
    now: OffsetDateTime,
) -> Result<Prepared, LaunchError> {
    let (ami, ami_source) = ami(clients, plan).await?;
    let content = template::Content::new(plan, &ami, tags, cluster);
    let launch_template = template::ensure(
        &clients.ec2,
        &content,
        &plan.compute_environment,
        plan.keep_template,
        now.unix_timestamp_nanos(),
    )
    .await?;
    Ok(Prepared {
        plan: plan.clone(),
        launch_template,
        ami,
        ami_source,
        tags: tags.to_vec(),
        user_data: plan.user_data(cluster).is_some(),
        imds_hop_limit: plan.imds_hop_limit,
        warnings: Vec::new(),
    })
}

/// `--launch-template`: the operator's template, extended by a version with
/// what blockwatch needs (see `operator_template`). Every refusal comes
/// before anything is written.
async fn from_operator_template(
    clients: &Clients,
    plan: &Plan,
    selector: &crate::plan::TemplateSelector,
    tags: &[(String, String)],
    now: OffsetDateTime,
) -> Result<Prepared, LaunchError> {
    let source = operator_template::find(&clients.ec2, selector).await?;
    source.check_tagged(&plan.compute_environment)?;
    let plan = if plan.instance_types_given {
        plan.clone()
    } else {
        let own = source
            .instance_type()
            .unwrap_or_else(|| crate::plan::DEFAULT_INSTANCE_TYPE.to_owned());
        plan.with_instance_types(vec![own])
    };
    let (ami, ami_source) = match (&plan.ami, source.image_id()) {
        (None, Some(image)) => (
            image.to_owned(),
            format!("launch template {}", source.label()),
        ),
        _ => ami(clients, &plan).await?,
    };
    let reservation = match plan.market {
        Market::CapacityBlock => plan.capacity_reservation_id.as_deref(),
        Market::Spot | Market::OnDemand => None,
    };
    let wanted = operator_template::Wanted {
        tags,
        ami: Some(ami.as_str()),
        imds_hop_limit: plan.imds_hop_limit,
        capacity_block: reservation,
    };
    let extension = operator_template::additions(&source, &wanted)?;
    if extension.tags_hidden {
        operator_template::check_describe_tags(&clients.iam, &source).await?;
    }
    let launch_template = operator_template::ensure_version(
        &clients.ec2,
        &source,
        &extension.additions,
        plan.keep_template,
        now.unix_timestamp_nanos(),
    )
    .await?;
    Ok(Prepared {
        user_data: source.has_user_data(),
        plan,
        launch_template,
        ami,
        ami_source,
        tags: extension.instance_tags,
        imds_hop_limit: extension.imds_hop_limit,
        warnings: extension.warnings,
    })
}

/// A hop limit above 1 lets containers at IMDS: the operator should know.
fn hop_limit_warning(imds_hop_limit: i32) -> Option<String> {
    (imds_hop_limit > 1).then(|| {
        format!(
            "IMDS hop limit {imds_hop_limit}: containers in bridge network mode can reach IMDS and take the instance role's credentials too (Batch ECS-EC2 jobs, in host network mode, can at any hop limit)"
        )
    })
}

/// The AMI and where it came from: `--ami`, else the ECS-optimized one from SSM.
async fn ami(clients: &Clients, plan: &Plan) -> Result<(String, String), LaunchError> {
    if let Some(ami) = &plan.ami {
        return Ok((ami.clone(), "--ami".to_owned()));
    }
    let parameter = plan.ami_parameter();
    let found = clients
        .ssm
        .get_parameter()
        .name(parameter)
        .send()
        .await
        .map_err(|e| classify("ssm:GetParameter", &e))?;
    let value = found
        .parameter()
        .and_then(|p| p.value())
        .unwrap_or_default()
        .to_owned();
    Ok((value, format!("SSM {parameter}")))
}

/// The lease the instances carry, as one tag.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Lease {
    /// `blockwatch:lease-end`: a Capacity Block's instances share one end.
    Ends(OffsetDateTime),
    /// `blockwatch:lease-duration`, counted from each instance's launch.
    Lasts { text: String, duration: Duration },
}

impl Lease {
    fn tag(&self) -> (String, String) {
        match self {
            Self::Ends(end) => (TAG_LEASE_END.to_owned(), rfc3339(*end)),
            Self::Lasts { text, .. } => (TAG_LEASE_DURATION.to_owned(), text.clone()),
        }
    }

    /// The end of an instance launched at `launch_time`.
    fn end_for(&self, launch_time: Option<OffsetDateTime>) -> Option<OffsetDateTime> {
        match self {
            Self::Ends(end) => Some(*end),
            Self::Lasts { duration, .. } => launch_time
                .map(|t| t + time::Duration::try_from(*duration).unwrap_or(time::Duration::ZERO)),
        }
    }
}

/// A Capacity Block's instances end with the block (see
/// `blockwatch_core::capacity_block::lease_end`); the others after `--duration`.
async fn lease(ec2: &Ec2, plan: &Plan, now: OffsetDateTime) -> Result<Lease, LaunchError> {
    match (&plan.market, &plan.capacity_reservation_id) {
        (Market::CapacityBlock, Some(id)) => {
            let end_date = capacity_block_end(ec2, id).await?;
            Ok(Lease::Ends(blockwatch_core::capacity_block::lease_end(
                end_date,
                plan.duration,
                now,
            )))
        }
        _ => Ok(Lease::Lasts {
            text: plan.duration_text.clone(),
            duration: plan.duration,
        }),
    }
}

/// The tags every instance gets. The cluster too: the agent's join then
/// makes no AWS call at all (an explicit cluster wins within the tags). The
/// compute environment stays, for operators and for `list`.
fn tags(plan: &Plan, cluster: &str, lease: &Lease) -> Vec<(String, String)> {
    vec![
        (
            TAG_COMPUTE_ENVIRONMENT.to_owned(),
            plan.compute_environment.clone(),
        ),
        (TAG_CLUSTER.to_owned(), cluster.to_owned()),
        lease.tag(),
        ("Name".to_owned(), plan.name.clone()),
    ]
}

/// How the placements went.
#[derive(Debug)]
enum Placed {
    /// A dry run's permission check passed: nothing launched.
    DryRunAccepted,
    /// Every placement was tried; `failures` say where capacity ran out.
    Tried { failures: Vec<String> },
}

/// One CreateFleet over every pool; what it launched is described once
/// (within `not_found_grace`) for the launch times the leases count from.
async fn run_fleet(
    ec2: &Ec2,
    template: &Template<'_>,
    lease: &Lease,
    report: &mut Report,
    not_found_grace: Duration,
) -> Result<Placed, LaunchError> {
    let request = FleetRequest::new(template.plan, template.launch_template);
    report.fleet_request = Some(request.clone());
    let sent = request.send(ec2, template.dry_run).await;
    let sent = sent.map_err(|err| match err {
        LaunchError::Aws(AwsStepError::Call(CallError::Aws {
            api,
            kind: AwsFailure::Transient,
            detail,
        })) if !template.dry_run => LaunchError::Unconfirmed {
            api,
            detail,
            compute_environment: template.plan.compute_environment.clone(),
        },
        other => other,
    })?;
    let answer = match sent {
        fleet::Sent::DryRunAccepted => return Ok(Placed::DryRunAccepted),
        fleet::Sent::Answered(answer) => answer,
    };
    if let Some(refused) = fleet::refusal(&answer) {
        return Err(refused);
    }
    let ids: Vec<String> = answer
        .instances
        .iter()
        .map(|i| i.instance_id.clone())
        .collect();
    let (described, warning) = wait::describe_launched(ec2, &ids, not_found_grace).await;
    report.warnings.extend(warning);
    for instance in &answer.instances {
        // A Capacity Block instance is reported as one, whatever lifecycle
        // the fleet names.
        let lifecycle = match template.plan.market {
            Market::CapacityBlock => Market::CapacityBlock.to_string(),
            Market::Spot | Market::OnDemand => instance.lifecycle.clone(),
        };
        let found = described
            .iter()
            .find(|d| d.instance_id() == Some(instance.instance_id.as_str()));
        let launch_time = found.and_then(|d| d.launch_time()).and_then(to_time);
        report.instances.push(Launched {
            instance_id: instance.instance_id.clone(),
            instance_type: instance.instance_type.clone(),
            subnet: found
                .and_then(|d| d.subnet_id())
                .map(str::to_owned)
                .or_else(|| instance.subnet.clone()),
            lifecycle,
            launch_time,
            lease_end: lease.end_for(launch_time),
            state: found
                .and_then(|d| d.state())
                .and_then(|s| s.name())
                .map(|n| n.as_str().to_owned()),
        });
    }
    let failures = answer.errors.iter().map(PoolError::summary).collect();
    report.pool_errors = answer.errors;
    Ok(Placed::Tried { failures })
}

/// Legacy Spot blocks: RunInstances per (type, subnet) until the count is met. Each call asks
/// for what is still missing with MinCount 1, so EC2 launches what it can; a
/// placement is asked again while it keeps delivering.
async fn run_placements(
    ec2: &Ec2,
    template: &Template<'_>,
    lease: &Lease,
    report: &mut Report,
) -> Result<Placed, LaunchError> {
    let plan = template.plan;
    let mut failures = Vec::new();
    for (instance_type, subnet) in plan.placements() {
        for _ in 0..plan.count {
            let remaining = plan.count as usize - report.instances.len();
            if remaining == 0 {
                break;
            }
            let request = template.request(ec2, &instance_type, subnet.as_deref(), remaining);
            match request.send().await {
                Ok(output) if output.instances().is_empty() => break,
                Ok(output) => {
                    for instance in output.instances() {
                        report.instances.push(launched(
                            instance,
                            &instance_type,
                            subnet.as_deref(),
                            plan.market,
                            lease,
                        ));
                    }
                }
                Err(err) => match run_instances::refused(plan, template.dry_run, &err) {
                    // Permission granted; nothing launched. Once is enough.
                    Refused::DryRunAccepted => return Ok(Placed::DryRunAccepted),
                    Refused::NoCapacity(code) => {
                        let place = subnet
                            .as_deref()
                            .map(|s| format!(" in {s}"))
                            .unwrap_or_default();
                        failures.push(format!("{instance_type}{place}: {code}"));
                        break;
                    }
                    Refused::Fatal(err) => return Err(err),
                },
            }
        }
    }
    Ok(Placed::Tried { failures })
}

/// One instance RunInstances returned, as the report shows it.
fn launched(
    instance: &aws_sdk_ec2::types::Instance,
    instance_type: &str,
    subnet: Option<&str>,
    market: Market,
    lease: &Lease,
) -> Launched {
    let launch_time = instance.launch_time().and_then(to_time);
    Launched {
        instance_id: instance.instance_id().unwrap_or_default().to_owned(),
        instance_type: instance_type.to_owned(),
        subnet: instance.subnet_id().or(subnet).map(str::to_owned),
        lifecycle: market.to_string(),
        launch_time,
        lease_end: lease.end_for(launch_time),
        state: instance
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_owned()),
    }
}

/// Fewer than `--min-count` fails (with what did launch); fewer than
/// `--count` warns.
fn enough(plan: &Plan, mut report: Report, failures: &[String]) -> Result<Report, LaunchError> {
    let launched = report.instances.len();
    if launched < plan.min_count as usize {
        let detail = if failures.is_empty() {
            "EC2 returned fewer instances".to_owned()
        } else {
            failures.join("; ")
        };
        return Err(LaunchError::Shortfall {
            launched,
            requested: plan.count,
            min: plan.min_count,
            detail,
            report: Box::new(report),
        });
    }
    if launched < plan.count as usize {
        report.warnings.push(format!(
            "partial capacity: launched {launched} of {} ({})",
            plan.count,
            failures.join("; ")
        ));
    }
    Ok(report)
}

/// The Capacity Block's `EndDate`; a reservation that is not a Capacity
/// Block is refused.
async fn capacity_block_end(ec2: &Ec2, id: &str) -> Result<OffsetDateTime, LaunchError> {
    let described = ec2
        .describe_capacity_reservations()
        .capacity_reservation_ids(id)
        .send()
        .await
        .map_err(|e| classify("ec2:DescribeCapacityReservations", &e))?;
    let reservation = described
        .capacity_reservations()
        .first()
        .ok_or_else(|| LaunchError::NoReservation(id.to_owned()))?;
    let kind = reservation
        .reservation_type()
        .map(|t| t.as_str().to_owned())
        .unwrap_or_else(|| "default".into());
    match (kind.as_str(), reservation.end_date().and_then(to_time)) {
        ("capacity-block", Some(end)) => Ok(end),
        _ => Err(LaunchError::NotACapacityBlock {
            id: id.to_owned(),
            kind,
        }),
    }
}
