//! `blockwatch join`: find the cluster and write `ECS_CLUSTER` before the ECS
//! agent starts.
//! (About 480 lines: resolving is shared with `run` and tells every source
//! and its fallback, the join's logging says where each value came from;
//! the `--retry-for` loop is in [`retry`].)

mod retry;

pub use retry::join_retrying;

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::actions::ecs_config_file::{Outcome, Plan};
use crate::exit::AgentError;
use crate::host::state_dir::{self, JoinRecord};
use crate::sources::batch::ComputeEnvironments;
use crate::sources::config_file;
use crate::sources::ec2::TagDirectory;
use crate::sources::imds::{IdentityDocument, InstanceMetadata};
use blockwatch_core::cluster::ClusterName;
use blockwatch_core::compute_environment::{cluster_of, Refusal};
use blockwatch_core::ecs_config_text::STOP_TIMEOUT_KEY;
use blockwatch_core::escape::{escape, escaped, quoted};
use blockwatch_core::origin::{choose_cluster_target, ClusterTarget, Origin, Sourced};
use blockwatch_core::settings::Settings;
use blockwatch_core::tags::{InstanceTags, TagChannel};

/// What `join` was asked to do.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub config_path: PathBuf,
    /// False when `--config` was not given: a missing default file is fine.
    pub config_path_explicit: bool,
    pub ecs_config: PathBuf,
    pub state_dir: PathBuf,
    pub dry_run: bool,
}

/// What `join` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub cluster: ClusterName,
    pub origin: Origin,
    pub outcome: Outcome,
    pub dry_run: bool,
}

/// Where the agent stands before it acts: who it is, its settings, and its
/// cluster, each with its origin.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub identity: Option<IdentityDocument>,
    pub instance_id: String,
    pub settings: Settings,
    pub cluster: ClusterName,
    pub origin: Origin,
    pub compute_environment: Option<Sourced<String>>,
}

/// What `run` knows when the join cannot be done: who it is and the
/// settings it can use (the built-in defaults when the config file is
/// unusable), without a cluster, and why.
#[derive(Debug)]
pub struct Unjoined {
    pub identity: Option<IdentityDocument>,
    pub settings: Settings,
    /// The compute environment the instance names, if any (for `status`).
    pub compute_environment: Option<Sourced<String>>,
    pub reason: AgentError,
}

/// How resolving ended: joined, or (`run` only) without a cluster.
#[derive(Debug)]
pub enum Standing {
    Joined(Resolved),
    Unjoined(Unjoined),
}

/// How to resolve: which config file, and what `run` already knows.
#[derive(Debug, Clone, Copy)]
pub struct ResolveOptions<'a> {
    pub config_path: &'a Path,
    pub config_path_explicit: bool,
    pub dry_run_flag: bool,
    /// `run` always reads the tags (they carry the lease); `join` only when
    /// the config file does not name the cluster.
    pub always_read_tags: bool,
    /// The last join on this instance: its cluster saves a Batch call.
    pub known: Option<&'a JoinRecord>,
    /// `run`: a failure that retrying cannot mend (an unusable config, a
    /// cluster that cannot be resolved, tags that cannot be read) gives
    /// [`Standing::Unjoined`] instead of an error, so that the lease is
    /// still enforced. A transient one too (Batch unreachable from a private
    /// subnet could be for good): `run` then asks again now and then and
    /// restarts joined once it resolves.
    pub go_on_unjoined: bool,
}

/// Keeps the first failure `run` can go on without; returns any other.
fn go_on_without(
    options: &ResolveOptions<'_>,
    failure: &mut Option<AgentError>,
    err: AgentError,
) -> Result<(), AgentError> {
    if !options.go_on_unjoined {
        return Err(err);
    }
    failure.get_or_insert(err);
    Ok(())
}

/// Reads the config file; the instance identity document from IMDS; the
/// tags (IMDS, else `ec2:DescribeTags`); Batch only for a compute
/// environment the last join did not already resolve.
pub async fn resolve<M, T, B>(
    options: ResolveOptions<'_>,
    metadata: &M,
    tag_directory: &T,
    batch: &B,
) -> Result<Standing, AgentError>
where
    M: InstanceMetadata,
    T: TagDirectory,
    B: ComputeEnvironments,
{
    let mut failure = None;
    let config_path = options.config_path;
    let file = match config_file::load(config_path, options.config_path_explicit) {
        Ok(file) => file,
        Err(err) => {
            go_on_without(&options, &mut failure, err.into())?;
            None
        }
    };
    match (&file, &failure) {
        (Some(_), _) => log::info!("read config file {}", config_path.display()),
        (None, None) => log::info!(
            "no config file at {}; using tags and defaults",
            config_path.display()
        ),
        (None, Some(_)) => {}
    }
    let file = file.unwrap_or_default();

    // With a cluster named in the file, the join needs nothing from the
    // network; IMDS is then only asked for the instance id, for the logs.
    let identity = match metadata.identity().await {
        Ok(identity) => Some(identity),
        Err(err) if file.cluster.is_some() && !options.always_read_tags => {
            log::warn!("{err}; continuing with the cluster from the config file");
            None
        }
        Err(err) => return Err(err.into()),
    };
    let instance_id = identity
        .as_ref()
        .map_or("unknown", |i| i.instance_id.as_str())
        .to_owned();
    if let Some(identity) = &identity {
        log_identity(identity);
    }

    let file_decides = file.cluster.is_some() || file.compute_environment.is_some();
    let tags = match (&identity, file_decides && !options.always_read_tags) {
        (Some(identity), false) => {
            match read_tags(metadata, tag_directory, &identity.instance_id).await {
                Ok(tags) => Some(tags),
                Err(err) => {
                    go_on_without(&options, &mut failure, err)?;
                    None
                }
            }
        }
        _ => None,
    };

    let target = match choose_cluster_target(&file, config_path, tags.as_ref()) {
        Ok((target, overridden)) => {
            for value in overridden {
                log::info!(
                    "ignoring {} from {}: a higher-precedence source decides the cluster",
                    quoted(&value.value),
                    value.origin
                );
            }
            Some(target)
        }
        Err(err) => {
            go_on_without(&options, &mut failure, err.into())?;
            None
        }
    };
    let (settings, tag_problems) =
        Settings::resolve(&file, config_path, tags.as_ref(), options.dry_run_flag);
    for problem in tag_problems {
        log::warn!("ignoring instance tag {}: {}", problem.key, problem.reason);
    }
    let named_compute_environment = match &target {
        Some(ClusterTarget::ComputeEnvironment(ce)) => Some(ce.clone()),
        _ => None,
    };

    // An unusable config leaves no cluster worth resolving: the join failed
    // on it too, so the ECS agent is not running.
    let found = match (target, &failure) {
        (Some(target), None) => match find_cluster(target, &options, &instance_id, batch).await {
            Ok(found) => Some(found),
            Err(err) => {
                go_on_without(&options, &mut failure, err)?;
                None
            }
        },
        _ => None,
    };

    let mut effective = vec![format!("instance_id={}", escaped(&instance_id))];
    match &found {
        Some((cluster, origin, _)) => effective.push(format!("cluster={cluster} ({origin})")),
        None => effective.push("no cluster (degraded)".to_owned()),
    }
    let compute_environment = match &found {
        Some((_, _, ce)) => ce.clone(),
        None => named_compute_environment,
    };
    if let Some(ce) = &compute_environment {
        effective.push(format!(
            "compute_environment={} ({})",
            escaped(&ce.value),
            ce.origin
        ));
    }
    effective.extend(settings.describe());
    if tags.is_none() && failure.is_none() {
        effective.push("instance tags not read (the config file names the cluster)".to_owned());
    }
    let (cluster, origin) = match (found, failure) {
        (Some((cluster, origin, _)), None) => (cluster, origin),
        (_, Some(reason)) => {
            log::info!(
                INSTANCE_ID = escape(&instance_id).as_str();
                "effective configuration: {}", effective.join(", ")
            );
            return Ok(Standing::Unjoined(Unjoined {
                identity,
                settings,
                compute_environment,
                reason,
            }));
        }
        // Every path that finds no cluster keeps its failure.
        (None, None) => return Err(AgentError::Internal("no cluster and no reason".into())),
    };
    log::info!(
        INSTANCE_ID = escape(&instance_id).as_str(), CLUSTER = cluster.as_str(), SOURCE = origin.kind();
        "effective configuration: {}", effective.join(", ")
    );
    Ok(Standing::Joined(Resolved {
        identity,
        instance_id,
        settings,
        cluster,
        origin,
        compute_environment,
    }))
}

/// The cluster a target names: as given, from the last join, or from Batch.
async fn find_cluster<B: ComputeEnvironments>(
    target: ClusterTarget,
    options: &ResolveOptions<'_>,
    instance_id: &str,
    batch: &B,
) -> Result<(ClusterName, Origin, Option<Sourced<String>>), AgentError> {
    match target {
        ClusterTarget::Cluster(Sourced { value, origin }) => {
            let cluster =
                ClusterName::parse(&value).map_err(|reason| AgentError::InvalidCluster {
                    reason,
                    origin: origin.clone(),
                })?;
            Ok((cluster, origin, None))
        }
        ClusterTarget::ComputeEnvironment(ce) => {
            log::info!("compute_environment={} ({})", escaped(&ce.value), ce.origin);
            let remembered = options.known.filter(|k| {
                k.instance_id.as_deref() == Some(instance_id)
                    && k.compute_environment.as_deref() == Some(ce.value.as_str())
            });
            if let Some(Ok(cluster)) = remembered.map(|k| ClusterName::parse(&k.cluster)) {
                return Ok((
                    cluster,
                    Origin::Discovered("the last join (join.json)"),
                    Some(ce),
                ));
            }
            let info = batch
                .describe_compute_environment(&ce.value)
                .await?
                .ok_or_else(|| Refusal::NotFound(ce.value.clone()))?;
            let (cluster, warnings) = cluster_of(&info)?;
            for warning in warnings {
                log::warn!("{warning}");
            }
            Ok((
                cluster,
                Origin::Discovered("batch:DescribeComputeEnvironments"),
                Some(ce),
            ))
        }
    }
}

/// `blockwatch join`: resolves, then writes ecs.config.
pub async fn join<M, T, B>(
    request: &JoinRequest,
    metadata: &M,
    tag_directory: &T,
    batch: &B,
    now: time::OffsetDateTime,
) -> Result<Joined, AgentError>
where
    M: InstanceMetadata,
    T: TagDirectory,
    B: ComputeEnvironments,
{
    let options = ResolveOptions {
        config_path: &request.config_path,
        config_path_explicit: request.config_path_explicit,
        dry_run_flag: request.dry_run,
        always_read_tags: false,
        known: None,
        go_on_unjoined: false,
    };
    let Resolved {
        identity,
        instance_id,
        settings,
        cluster,
        origin,
        compute_environment,
    } = match resolve(options, metadata, tag_directory, batch).await? {
        Standing::Joined(resolved) => resolved,
        Standing::Unjoined(unjoined) => return Err(unjoined.reason),
    };

    let stop_timeout = settings
        .job_stop_timeout
        .as_ref()
        .map(|t| t.value.ecs_value());
    let plan = Plan::with_stop_timeout(&request.ecs_config, &cluster, stop_timeout.as_deref())?;
    let dry_run = settings.dry_run.value;
    let outcome = if dry_run {
        show_dry_run(&plan)?;
        plan.outcome()
    } else {
        plan.apply()?
    };
    let written = Written {
        cluster: &cluster,
        stop_timeout: stop_timeout.as_deref(),
    };
    log_outcome(&instance_id, &written, &origin, &plan, &outcome, dry_run);

    if !dry_run {
        let record = JoinRecord {
            instance_id: identity.map(|i| i.instance_id),
            cluster: cluster.to_string(),
            cluster_source: origin.to_string(),
            compute_environment: compute_environment.map(|ce| ce.value),
            ecs_config: request.ecs_config.clone(),
            joined_at: now,
        };
        // ecs.config is what matters; a state dir we cannot write only costs
        // `status` its answer.
        if let Err(err) = state_dir::write_join_record(&request.state_dir, &record) {
            log::warn!(
                "could not record the join in {}: {err}",
                request.state_dir.display()
            );
        }
    }
    Ok(Joined {
        cluster,
        origin,
        outcome,
        dry_run,
    })
}

async fn read_tags<M: InstanceMetadata, T: TagDirectory>(
    metadata: &M,
    tag_directory: &T,
    instance_id: &str,
) -> Result<InstanceTags, AgentError> {
    if let Some(values) = metadata.tags().await? {
        log::info!("read {} blockwatch instance tag(s) from IMDS", values.len());
        return Ok(InstanceTags {
            values,
            channel: TagChannel::Imds,
        });
    }
    log::info!("instance tags are not exposed in IMDS (InstanceMetadataTags disabled); asking ec2:DescribeTags");
    let values = tag_directory.instance_tags(instance_id).await?;
    log::info!(
        "read {} blockwatch instance tag(s) via ec2:DescribeTags",
        values.len()
    );
    Ok(InstanceTags {
        values,
        channel: TagChannel::DescribeTags,
    })
}

fn log_identity(identity: &IdentityDocument) {
    let instance_id = escape(&identity.instance_id);
    log::info!(
        INSTANCE_ID = instance_id.as_str();
        "instance {instance_id} ({}) in {} ({}), launched {}",
        escaped(&identity.instance_type),
        escaped(&identity.availability_zone),
        escaped(&identity.region),
        blockwatch_core::time_text::Timestamp(identity.pending_time)
    );
}

fn show_dry_run(plan: &Plan) -> Result<(), AgentError> {
    let verdict = match plan.outcome() {
        Outcome::AlreadyCorrect => "is already correct; it would be left alone",
        Outcome::Created => "does not exist; it would be created with",
        Outcome::Updated { .. } => "would be rewritten to",
    };
    let mut out = std::io::stdout().lock();
    let shown = writeln!(out, "dry run: {} {verdict}:", plan.path.display())
        .and_then(|()| out.write_all(plan.content()))
        .and_then(|()| out.flush());
    shown.map_err(|e| AgentError::Internal(format!("could not print the dry run: {e}")))
}

/// The keys the join sets in ecs.config.
struct Written<'a> {
    cluster: &'a ClusterName,
    stop_timeout: Option<&'a str>,
}

impl std::fmt::Display for Written<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ECS_CLUSTER={}", self.cluster)?;
        if let Some(timeout) = self.stop_timeout {
            write!(f, " and {STOP_TIMEOUT_KEY}={timeout}")?;
        }
        Ok(())
    }
}

fn log_outcome(
    instance_id: &str,
    written: &Written<'_>,
    origin: &Origin,
    plan: &Plan,
    outcome: &Outcome,
    dry_run: bool,
) {
    let path = plan.path.display();
    let cluster = written.cluster;
    let what = match outcome {
        Outcome::AlreadyCorrect => {
            format!("{path} already has {written}; left untouched")
        }
        Outcome::Created => format!("created {path} with {written}"),
        Outcome::Updated {
            previous_cluster: Some(old),
        } if old != cluster.as_str() => {
            format!("set {written} in {path} (was {})", escaped(old))
        }
        Outcome::Updated { .. } => format!("set {written} in {path}"),
    };
    let prefix = if dry_run {
        "dry run, nothing written: would have "
    } else {
        ""
    };
    let instance_id = escape(instance_id);
    log::info!(
        INSTANCE_ID = instance_id.as_str(), CLUSTER = cluster.as_str(), SOURCE = origin.kind(), DRY_RUN = dry_run;
        "{prefix}{what} (cluster: {origin})"
    );
}
