//! Settings, where each one came from, and the precedence between sources:
//! config file > instance tags > discovered via AWS APIs > defaults.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use time::OffsetDateTime;

pub const TAG_COMPUTE_ENVIRONMENT: &str = "blockwatch:compute-environment";
pub const TAG_CLUSTER: &str = "blockwatch:cluster";
pub const TAG_LEASE_END: &str = "blockwatch:lease-end";
pub const TAG_LEASE_DURATION: &str = "blockwatch:lease-duration";
/// Every instance tag the agent reads.
pub const TAG_KEYS: [&str; 4] = [
    TAG_COMPUTE_ENVIRONMENT,
    TAG_CLUSTER,
    TAG_LEASE_END,
    TAG_LEASE_DURATION,
];

pub const DEFAULT_DRAIN_LEAD: Duration = Duration::from_secs(10 * 60);
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// `--no-block`: the power-off stops blockwatch.service, so a `systemctl`
/// that waited for the job would be stopped with it, before it reported
/// success (seen in the nspawn package test).
pub const DEFAULT_POWEROFF_COMMAND: &str = "systemctl --no-block poweroff";
/// The longest duration any setting or tag may hold.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);
/// The shortest poll interval: IMDS is not to be hammered.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(100);
pub const DEFAULT_DRAIN_POLL_INTERVAL: Duration = Duration::from_secs(15);
/// How often the lease tags (and `pendingTime`) are read again from IMDS.
pub const DEFAULT_LEASE_REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// How often a Capacity Block's `EndDate` is asked again while far off.
pub const DEFAULT_CAPACITY_BLOCK_REFRESH_INTERVAL: Duration = Duration::from_secs(30 * 60);

/// `/etc/blockwatch/blockwatch.toml`. Unknown keys are an error, so a typo
/// never silently falls back to a default.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub compute_environment: Option<String>,
    pub cluster: Option<String>,
    pub lease_end: Option<Timestamp>,
    pub lease_duration: Option<HumanDuration>,
    pub drain_lead: Option<HumanDuration>,
    pub drain_on_rebalance: Option<bool>,
    /// Whether reboot and maintenance events drain (default true); they
    /// never power off.
    pub drain_on_maintenance: Option<bool>,
    pub poll_interval: Option<HumanDuration>,
    pub on_drained: Option<OnDrained>,
    pub poweroff_command: Option<String>,
    pub webhook_url: Option<String>,
    pub dry_run: Option<bool>,
    /// Stop tasks still running this long before the end (off by default).
    pub stop_grace: Option<HumanDuration>,
    /// Prometheus textfile to write (off by default).
    pub metrics_file: Option<PathBuf>,
    /// How often running tasks are counted while draining (default 15s).
    pub drain_poll_interval: Option<HumanDuration>,
    /// What a lease's (or Capacity Block's) end does (default poweroff).
    pub on_lease_end: Option<OnLeaseEnd>,
    /// How often lease tags are read again from IMDS (default 1m).
    pub lease_refresh_interval: Option<HumanDuration>,
    /// How often a Capacity Block's end is asked again (default 30m; at
    /// most 5m within its last 2 hours).
    pub capacity_block_refresh_interval: Option<HumanDuration>,
    /// The ECS agent's SIGTERM-to-SIGKILL time for stopped jobs, written as
    /// `ECS_CONTAINER_STOP_TIMEOUT` (off by default: ECS's 30 s).
    pub job_stop_timeout: Option<JobStopTimeout>,
    /// Whether blockwatch stops tasks (`ecs:StopTask`) at `stop_grace` and
    /// at a lease's end (default true). Off, what still runs ends with the
    /// instance, as at a spot interruption.
    pub stop_tasks: Option<bool>,
}

/// `job_stop_timeout`: whole seconds, at least 1 s. The ECS agent parses a
/// Go duration and raises anything below 1 s to 1 s; we write `<n>s`, so a
/// fraction or a value ECS would change is refused rather than rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobStopTimeout(pub Duration);

pub const JOB_STOP_TIMEOUT_KEY: &str = "job_stop_timeout";
pub const STOP_TASKS_KEY: &str = "stop_tasks";

impl std::str::FromStr for JobStopTimeout {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let shown = super::escape::quoted(text).to_string();
        let refuse = |why: &str| format!("{JOB_STOP_TIMEOUT_KEY} = {shown}: {why}");
        // Not trimmed: the value goes into ecs.config, one line.
        if text.is_empty() || text.trim() != text || text.contains(['\n', '\r']) {
            return Err(refuse(
                "must be a duration in whole seconds like 30s or 2m, with nothing around it",
            ));
        }
        let parsed = humantime::parse_duration(text)
            .map_err(|e| refuse(&format!("is not a duration like 30s or 2m ({e})")))?;
        if parsed.subsec_nanos() != 0 {
            return Err(refuse(
                "must be whole seconds (ECS_CONTAINER_STOP_TIMEOUT is written as <n>s)",
            ));
        }
        if parsed < Duration::from_secs(1) {
            return Err(refuse("must be at least 1s (the ECS agent's minimum)"));
        }
        if parsed > MAX_DURATION {
            return Err(refuse("is longer than a year"));
        }
        Ok(Self(parsed))
    }
}

impl<'de> Deserialize<'de> for JobStopTimeout {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl JobStopTimeout {
    /// The value for `ECS_CONTAINER_STOP_TIMEOUT`: `<seconds>s`.
    pub fn ecs_value(self) -> String {
        format!("{}s", self.0.as_secs())
    }
}

/// A config file that could not be used, as one line naming the file.
#[derive(Debug, thiserror::Error)]
#[error("config file {path}: {reason}")]
pub struct ConfigFileError {
    pub path: PathBuf,
    pub reason: String,
}

impl FileConfig {
    /// Parses the TOML text of the file at `path` (used in messages).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigFileError> {
        let parsed: Self = toml::from_str(text).map_err(|err| {
            // serde reports an unknown key against the whole table: find
            // the key's own line instead.
            let line = unknown_key_line(text, err.message()).or_else(|| {
                err.span()
                    .map(|span| text[..span.start.min(text.len())].lines().count().max(1))
            });
            let message = super::escape::escape(&err.message().replace('\n', " "));
            ConfigFileError {
                path: path.to_owned(),
                reason: match line {
                    Some(line) => format!("line {line}: {message}"),
                    None => message,
                },
            }
        })?;
        parsed
            .check_job_stop_timeout()
            .and_then(|()| parsed.check_stop_tasks())
            .map_err(|reason| ConfigFileError {
                path: path.to_owned(),
                reason,
            })?;
        Ok(parsed)
    }

    /// `stop_grace` asks for a stop that `stop_tasks = false` forbids: one
    /// of them is a mistake, and neither is dropped silently.
    fn check_stop_tasks(&self) -> Result<(), String> {
        if self.stop_tasks == Some(false) && self.stop_grace.is_some() {
            return Err(format!(
                "{STOP_TASKS_KEY} = false and stop_grace are both set, but with {STOP_TASKS_KEY} = false nothing is stopped; remove one"
            ));
        }
        Ok(())
    }

    /// A stop that starts `job_stop_timeout` plus the margin before the end
    /// must come after the drain, `drain_lead` before the end: refused
    /// otherwise, never shortened behind the operator's back.
    fn check_job_stop_timeout(&self) -> Result<(), String> {
        let Some(timeout) = self.job_stop_timeout else {
            return Ok(());
        };
        let lead = timeout.0.saturating_add(super::decision::JOB_STOP_MARGIN);
        let drain_lead = self.drain_lead.map_or(DEFAULT_DRAIN_LEAD, |d| d.0);
        if lead >= drain_lead {
            return Err(format!(
                "{JOB_STOP_TIMEOUT_KEY} = \"{}\": the stop must start {} before the end (the timeout plus a {} margin), which is not after the drain (drain_lead = {}); shorten {JOB_STOP_TIMEOUT_KEY} or lengthen drain_lead",
                humantime::format_duration(timeout.0),
                humantime::format_duration(lead),
                humantime::format_duration(super::decision::JOB_STOP_MARGIN),
                humantime::format_duration(drain_lead),
            ));
        }
        Ok(())
    }
}

/// Why a file (or a directory above it) that blockwatch trusts could be
/// changed by someone other than root or blockwatch's own user, as sshd's
/// StrictModes judges it; `None` when it is safe.
///
/// The config file names `poweroff_command`, which runs as root, so a file
/// others can write is a local privilege escalation. A directory others can
/// write lets them replace the file, unless its sticky bit (as on /tmp) keeps
/// them from renaming entries they do not own.
pub fn writable_by_others(is_dir: bool, mode: u32, owner: u32, euid: u32) -> Option<String> {
    let shown = format!("mode {:04o}", mode & 0o7777);
    if owner != 0 && owner != euid {
        let allowed = if euid == 0 {
            "root".to_owned()
        } else {
            format!("root or uid {euid}")
        };
        return Some(format!("is owned by uid {owner}, not {allowed} ({shown})"));
    }
    let sticky = is_dir && mode & 0o1000 != 0;
    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        _ if sticky => return None,
        (true, true) => "group- and world-writable",
        (true, false) => "group-writable",
        (false, true) => "world-writable",
        (false, false) => return None,
    };
    Some(format!("is {who} ({shown})"))
}

/// The line of the key an "unknown field `key`" message names.
fn unknown_key_line(text: &str, message: &str) -> Option<usize> {
    let key = message.strip_prefix("unknown field `")?.split('`').next()?;
    text.lines()
        .position(|line| {
            line.split_once('=')
                .is_some_and(|(k, _)| k.trim().trim_matches('"') == key)
        })
        .map(|index| index + 1)
}

/// A humantime duration such as `10m` or `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl std::str::FromStr for HumanDuration {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let parsed = humantime::parse_duration(text.trim())
            .map_err(|e| format!("{text:?} is not a duration like 10m or 1h30m ({e})"))?;
        // Bounded so that no date arithmetic can overflow.
        if parsed > MAX_DURATION {
            return Err(format!("{text:?} is longer than a year"));
        }
        Ok(Self(parsed))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// An RFC 3339 instant; TOML may give it as a string or as a native datetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub OffsetDateTime);

impl std::str::FromStr for Timestamp {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
            .map(Self)
            .map_err(|_| format!("{text:?} is not an RFC 3339 time like 2026-01-31T15:00:00Z"))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Toml(toml::value::Datetime),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Text(text) => text,
            Raw::Toml(datetime) => datetime.to_string(),
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `2026-01-31T15:00:00Z`: how every instant is written in logs, state and output.
pub fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&rfc3339(self.0))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDrained {
    #[default]
    None,
    Poweroff,
}

impl fmt::Display for OnDrained {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Poweroff => "poweroff",
        })
    }
}

/// What happens at the end of a lease or a Capacity Block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnLeaseEnd {
    /// Stop what still runs at the end and power off; power off at once
    /// when drained before it.
    #[default]
    Poweroff,
    /// Drain only; the instance keeps running (and billing).
    None,
}

impl fmt::Display for OnLeaseEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Poweroff => "poweroff",
            Self::None => "none",
        })
    }
}

/// How the instance tags were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagChannel {
    Imds,
    DescribeTags,
}

/// The `blockwatch:*` tags of this instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceTags {
    pub values: BTreeMap<String, String>,
    pub channel: TagChannel,
}

impl InstanceTags {
    fn get(&self, key: &'static str) -> Option<(String, Origin)> {
        self.values.get(key).map(|value| {
            (
                value.clone(),
                Origin::InstanceTag {
                    key,
                    channel: self.channel,
                },
            )
        })
    }
}

/// Where a setting came from; logged next to every effective value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    ConfigFile(PathBuf),
    CommandLine,
    InstanceTag {
        key: &'static str,
        channel: TagChannel,
    },
    Discovered(&'static str),
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ConfigFile(path) => write!(f, "config file {}", path.display()),
            Self::CommandLine => f.write_str("command line"),
            Self::InstanceTag {
                key,
                channel: TagChannel::Imds,
            } => {
                write!(f, "instance tag {key} (IMDS)")
            }
            Self::InstanceTag {
                key,
                channel: TagChannel::DescribeTags,
            } => {
                write!(f, "instance tag {key} (ec2:DescribeTags)")
            }
            Self::Discovered(api) => write!(f, "discovered via {api}"),
            Self::Default => f.write_str("default"),
        }
    }
}

impl Origin {
    /// A short machine-friendly name for journald's `SOURCE` field.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ConfigFile(_) => "config",
            Self::CommandLine => "cli",
            Self::InstanceTag { .. } => "tag",
            Self::Discovered(_) => "discovered",
            Self::Default => "default",
        }
    }
}

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced<T> {
    pub value: T,
    pub origin: Origin,
}

impl<T> Sourced<T> {
    pub fn new(value: T, origin: Origin) -> Self {
        Self { value, origin }
    }
}

/// How the join finds its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterTarget {
    /// A cluster given outright; Batch is not asked.
    Cluster(Sourced<String>),
    /// A compute environment whose `ecsClusterArn` names the cluster.
    ComputeEnvironment(Sourced<String>),
}

/// Neither the config file nor the tags say which cluster to join.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no cluster source: set `cluster` or `compute_environment` in {config}, or tag the instance with {TAG_CLUSTER} or {TAG_COMPUTE_ENVIRONMENT}{tags_note}")]
pub struct NoClusterSource {
    pub config: String,
    pub tags_note: &'static str,
}

/// The highest-precedence source that names a cluster or a compute
/// environment decides; within one source an explicit cluster wins, since it
/// needs no Batch call. Returns the choice and any lower-precedence values it
/// overrides, so they can be logged.
pub fn choose_cluster_target(
    file: &FileConfig,
    file_path: &Path,
    tags: Option<&InstanceTags>,
) -> Result<(ClusterTarget, Vec<Sourced<String>>), NoClusterSource> {
    let from_file = |value: &Option<String>| {
        value
            .clone()
            .map(|v| Sourced::new(v, Origin::ConfigFile(file_path.to_owned())))
    };
    let from_tag = |key| {
        tags.and_then(|t| t.get(key))
            .map(|(v, o)| Sourced::new(v, o))
    };
    let candidates = [
        from_file(&file.cluster).map(ClusterTarget::Cluster),
        from_file(&file.compute_environment).map(ClusterTarget::ComputeEnvironment),
        from_tag(TAG_CLUSTER).map(ClusterTarget::Cluster),
        from_tag(TAG_COMPUTE_ENVIRONMENT).map(ClusterTarget::ComputeEnvironment),
    ];
    let mut found = candidates.into_iter().flatten();
    match found.next() {
        Some(chosen) => {
            let overridden = found
                .map(|target| match target {
                    ClusterTarget::Cluster(s) | ClusterTarget::ComputeEnvironment(s) => s,
                })
                .collect();
            Ok((chosen, overridden))
        }
        None => Err(NoClusterSource {
            config: file_path.display().to_string(),
            tags_note: if tags.is_some() {
                ""
            } else {
                " (instance tags could not be read)"
            },
        }),
    }
}

/// The shortest lease duration taken from a tag: a shorter one (`0s`, a
/// slip of the unit) would end an instance at once, so it is refused like
/// any invalid tag and the last valid lease is kept.
pub const MIN_LEASE_DURATION: Duration = Duration::from_secs(10 * 60);

fn at_least_the_lease_floor(d: HumanDuration) -> Result<HumanDuration, String> {
    if d.0 < MIN_LEASE_DURATION {
        return Err(format!(
            "{} is shorter than the {} a lease must last",
            humantime::format_duration(d.0),
            humantime::format_duration(MIN_LEASE_DURATION)
        ));
    }
    Ok(d)
}

/// The lease the launcher gave this instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    Ends(Timestamp),
    LastsFromLaunch(HumanDuration),
}

impl Lease {
    /// When the lease ends, for an instance launched at `launched`.
    pub fn end(self, launched: OffsetDateTime) -> OffsetDateTime {
        match self {
            Self::Ends(at) => at.0,
            Self::LastsFromLaunch(d) => launched
                .saturating_add(time::Duration::try_from(d.0).unwrap_or(time::Duration::MAX)),
        }
    }
}

impl fmt::Display for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ends(at) => write!(f, "ends {at}"),
            Self::LastsFromLaunch(d) => write!(f, "{d} from launch"),
        }
    }
}

/// Every setting the agent runs with, each with its origin.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub lease: Option<Sourced<Lease>>,
    pub drain_lead: Sourced<Duration>,
    pub drain_on_rebalance: Sourced<bool>,
    pub drain_on_maintenance: Sourced<bool>,
    pub poll_interval: Sourced<Duration>,
    pub on_drained: Sourced<OnDrained>,
    pub poweroff_command: Sourced<String>,
    pub webhook_url: Option<Sourced<String>>,
    pub dry_run: Sourced<bool>,
    pub stop_grace: Option<Sourced<Duration>>,
    pub metrics_file: Option<Sourced<PathBuf>>,
    pub drain_poll_interval: Sourced<Duration>,
    pub on_lease_end: Sourced<OnLeaseEnd>,
    pub lease_refresh_interval: Sourced<Duration>,
    pub capacity_block_refresh_interval: Sourced<Duration>,
    pub job_stop_timeout: Option<Sourced<JobStopTimeout>>,
    pub stop_tasks: Sourced<bool>,
}

/// A tag value that does not parse; the tag is ignored with a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagProblem {
    pub key: &'static str,
    pub reason: String,
}

impl Settings {
    /// Applies file > tags > defaults. `dry_run_flag` is the command line's
    /// `--dry-run`, which can only turn dry-run on.
    pub fn resolve(
        file: &FileConfig,
        file_path: &Path,
        tags: Option<&InstanceTags>,
        dry_run_flag: bool,
    ) -> (Self, Vec<TagProblem>) {
        let in_file = || Origin::ConfigFile(file_path.to_owned());
        let or_default = |value: Option<Duration>, default| match value {
            Some(v) => Sourced::new(v, in_file()),
            None => Sourced::new(default, Origin::Default),
        };
        let mut problems = Vec::new();
        let lease = Self::lease(file, tags, in_file(), &mut problems);
        let dry_run = if dry_run_flag {
            Sourced::new(true, Origin::CommandLine)
        } else {
            file.dry_run
                .map_or(Sourced::new(false, Origin::Default), |v| {
                    Sourced::new(v, in_file())
                })
        };
        let settings = Self {
            lease,
            drain_lead: or_default(file.drain_lead.map(|d| d.0), DEFAULT_DRAIN_LEAD),
            drain_on_rebalance: file
                .drain_on_rebalance
                .map_or(Sourced::new(false, Origin::Default), |v| {
                    Sourced::new(v, in_file())
                }),
            drain_on_maintenance: file
                .drain_on_maintenance
                .map_or(Sourced::new(true, Origin::Default), |v| {
                    Sourced::new(v, in_file())
                }),
            poll_interval: or_default(
                file.poll_interval.map(|d| d.0.max(MIN_POLL_INTERVAL)),
                DEFAULT_POLL_INTERVAL,
            ),
            on_drained: file
                .on_drained
                .map_or(Sourced::new(OnDrained::None, Origin::Default), |v| {
                    Sourced::new(v, in_file())
                }),
            poweroff_command: file.poweroff_command.clone().map_or(
                Sourced::new(DEFAULT_POWEROFF_COMMAND.to_owned(), Origin::Default),
                |v| Sourced::new(v, in_file()),
            ),
            webhook_url: file.webhook_url.clone().map(|v| Sourced::new(v, in_file())),
            dry_run,
            stop_grace: file.stop_grace.map(|v| Sourced::new(v.0, in_file())),
            metrics_file: file
                .metrics_file
                .clone()
                .map(|v| Sourced::new(v, in_file())),
            drain_poll_interval: or_default(
                file.drain_poll_interval.map(|d| d.0.max(MIN_POLL_INTERVAL)),
                DEFAULT_DRAIN_POLL_INTERVAL,
            ),
            on_lease_end: file
                .on_lease_end
                .map_or(Sourced::new(OnLeaseEnd::Poweroff, Origin::Default), |v| {
                    Sourced::new(v, in_file())
                }),
            lease_refresh_interval: or_default(
                file.lease_refresh_interval
                    .map(|d| d.0.max(MIN_POLL_INTERVAL)),
                DEFAULT_LEASE_REFRESH_INTERVAL,
            ),
            capacity_block_refresh_interval: or_default(
                file.capacity_block_refresh_interval
                    .map(|d| d.0.max(MIN_POLL_INTERVAL)),
                DEFAULT_CAPACITY_BLOCK_REFRESH_INTERVAL,
            ),
            job_stop_timeout: file.job_stop_timeout.map(|v| Sourced::new(v, in_file())),
            stop_tasks: file
                .stop_tasks
                .map_or(Sourced::new(true, Origin::Default), |v| {
                    Sourced::new(v, in_file())
                }),
        };
        (settings, problems)
    }

    fn lease(
        file: &FileConfig,
        tags: Option<&InstanceTags>,
        in_file: Origin,
        problems: &mut Vec<TagProblem>,
    ) -> Option<Sourced<Lease>> {
        if let Some(end) = file.lease_end {
            return Some(Sourced::new(Lease::Ends(end), in_file));
        }
        if let Some(duration) = file.lease_duration {
            return Some(Sourced::new(Lease::LastsFromLaunch(duration), in_file));
        }
        let tags = tags?;
        if let Some((text, origin)) = tags.get(TAG_LEASE_END) {
            match text.parse::<Timestamp>() {
                Ok(end) => return Some(Sourced::new(Lease::Ends(end), origin)),
                Err(reason) => problems.push(TagProblem {
                    key: TAG_LEASE_END,
                    reason,
                }),
            }
        }
        if let Some((text, origin)) = tags.get(TAG_LEASE_DURATION) {
            match text
                .parse::<HumanDuration>()
                .and_then(at_least_the_lease_floor)
            {
                Ok(d) => return Some(Sourced::new(Lease::LastsFromLaunch(d), origin)),
                Err(reason) => problems.push(TagProblem {
                    key: TAG_LEASE_DURATION,
                    reason,
                }),
            }
        }
        None
    }

    /// Whether `poweroff_command` may run: when drained, or at a lease's end.
    pub fn powers_off(&self) -> bool {
        self.on_drained.value == OnDrained::Poweroff
            || self.on_lease_end.value == OnLeaseEnd::Poweroff
    }

    /// The lease the tags alone give (the config file is not consulted):
    /// what a refresh of the tags reads.
    pub fn lease_from_tags(tags: &InstanceTags) -> (Option<Sourced<Lease>>, Vec<TagProblem>) {
        let mut problems = Vec::new();
        let lease = Self::lease(
            &FileConfig::default(),
            Some(tags),
            Origin::Default,
            &mut problems,
        );
        (lease, problems)
    }

    /// Whether the config file sets the lease (then tags cannot move it).
    pub fn lease_is_from_file(&self) -> bool {
        self.lease
            .as_ref()
            .is_some_and(|l| matches!(l.origin, Origin::ConfigFile(_)))
    }

    /// One `key=value (origin)` item per setting, for the startup log line.
    /// The webhook URL is never shown: it may carry a secret.
    pub fn describe(&self) -> Vec<String> {
        let mut items = Vec::new();
        match &self.lease {
            Some(lease) => items.push(format!("lease={} ({})", lease.value, lease.origin)),
            None => items.push("lease=none".to_owned()),
        }
        items.push(format!(
            "drain_lead={} ({})",
            humantime::format_duration(self.drain_lead.value),
            self.drain_lead.origin
        ));
        items.push(format!(
            "drain_on_rebalance={} ({})",
            self.drain_on_rebalance.value, self.drain_on_rebalance.origin
        ));
        items.push(format!(
            "drain_on_maintenance={} ({})",
            self.drain_on_maintenance.value, self.drain_on_maintenance.origin
        ));
        items.push(format!(
            "poll_interval={} ({})",
            humantime::format_duration(self.poll_interval.value),
            self.poll_interval.origin
        ));
        items.push(format!(
            "on_drained={} ({})",
            self.on_drained.value, self.on_drained.origin
        ));
        items.push(format!(
            "on_lease_end={} ({})",
            self.on_lease_end.value, self.on_lease_end.origin
        ));
        if self.powers_off() {
            items.push(format!(
                "poweroff_command={:?} ({})",
                self.poweroff_command.value, self.poweroff_command.origin
            ));
        }
        if let Some(timeout) = &self.job_stop_timeout {
            let lead = timeout
                .value
                .0
                .saturating_add(super::decision::JOB_STOP_MARGIN);
            items.push(format!(
                "job_stop_timeout={} ({}; ECS_CONTAINER_STOP_TIMEOUT={}; stops start at T - {})",
                humantime::format_duration(timeout.value.0),
                timeout.origin,
                timeout.value.ecs_value(),
                humantime::format_duration(lead)
            ));
        }
        items.push(if self.stop_tasks.value {
            format!("{STOP_TASKS_KEY}=true ({})", self.stop_tasks.origin)
        } else {
            format!(
                "{STOP_TASKS_KEY}=false ({}; nothing is stopped: what runs at the end ends with the instance)",
                self.stop_tasks.origin
            )
        });
        if let Some(hook) = &self.webhook_url {
            items.push(format!("webhook_url=<set> ({})", hook.origin));
        }
        items.push(format!(
            "dry_run={} ({})",
            self.dry_run.value, self.dry_run.origin
        ));
        items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> PathBuf {
        PathBuf::from("/etc/blockwatch/blockwatch.toml")
    }

    fn tags(pairs: &[(&str, &str)]) -> InstanceTags {
        InstanceTags {
            values: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            channel: TagChannel::Imds,
        }
    }

    fn parse(text: &str) -> FileConfig {
        match FileConfig::parse(text, &path()) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    fn target(file: &FileConfig, tags: Option<&InstanceTags>) -> ClusterTarget {
        match choose_cluster_target(file, &path(), tags) {
            Ok((t, _)) => t,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_file_or_directory_others_can_write_is_not_trusted() {
        assert_eq!(writable_by_others(false, 0o100644, 0, 0), None);
        assert_eq!(writable_by_others(false, 0o100600, 0, 0), None);
        // As shipped: root:root 0640.
        assert_eq!(writable_by_others(false, 0o100640, 0, 0), None);
        assert_eq!(
            writable_by_others(false, 0o100664, 0, 0).as_deref(),
            Some("is group-writable (mode 0664)")
        );
        assert_eq!(
            writable_by_others(false, 0o100646, 0, 0).as_deref(),
            Some("is world-writable (mode 0646)")
        );
        assert_eq!(
            writable_by_others(false, 0o100666, 0, 0).as_deref(),
            Some("is group- and world-writable (mode 0666)")
        );
        assert_eq!(
            writable_by_others(false, 0o100644, 1000, 0).as_deref(),
            Some("is owned by uid 1000, not root (mode 0644)")
        );
        // Running as uid 1000, the user's own file is fine.
        assert_eq!(writable_by_others(false, 0o100644, 1000, 1000), None);
        // /tmp: world-writable but sticky.
        assert_eq!(writable_by_others(true, 0o41777, 0, 0), None);
        assert_eq!(
            writable_by_others(true, 0o40777, 0, 0).as_deref(),
            Some("is group- and world-writable (mode 0777)")
        );
    }

    #[test]
    fn parses_every_contract_key() {
        let c = parse(
            r#"
            compute_environment = "ce"
            cluster = "c"
            lease_end = 2026-01-31T15:00:00Z
            lease_duration = "3h"
            drain_lead = "15m"
            drain_on_rebalance = true
            poll_interval = "2s"
            on_drained = "poweroff"
            poweroff_command = "/bin/true"
            webhook_url = "https://hooks.example/x"
            dry_run = true
            stop_grace = "2m"
            metrics_file = "/var/lib/node_exporter/textfile/blockwatch.prom"
            drain_poll_interval = "5s"
            "#,
        );
        assert_eq!(c.drain_lead, Some(HumanDuration(Duration::from_secs(900))));
        assert_eq!(c.on_drained, Some(OnDrained::Poweroff));
        assert_eq!(
            c.lease_end.map(|t| t.to_string()).as_deref(),
            Some("2026-01-31T15:00:00Z")
        );
        assert_eq!(
            parse(r#"lease_end = "2026-01-31T15:00:00Z""#).lease_end,
            c.lease_end
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_one_line_errors_naming_the_file() {
        for (text, needle) in [
            ("clustr = \"x\"", "clustr"),
            ("cluster = \"c\"\n\n  typo = 1", "line 3"),
            ("drain_lead = \"soon\"", "soon"),
            ("\n\non_drained = \"explode\"", "line 3"),
            ("lease_end = \"tomorrow\"", "RFC 3339"),
        ] {
            let err = FileConfig::parse(text, &path())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                err.starts_with("config file /etc/blockwatch/blockwatch.toml: "),
                "{err}"
            );
            assert!(err.contains(needle), "{err} should mention {needle}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn config_file_beats_tags() {
        let file = parse(r#"compute_environment = "from-file""#);
        let t = tags(&[
            (TAG_CLUSTER, "from-tag"),
            (TAG_COMPUTE_ENVIRONMENT, "ce-tag"),
        ]);
        let (chosen, overridden) = match choose_cluster_target(&file, &path(), Some(&t)) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            chosen,
            ClusterTarget::ComputeEnvironment(Sourced::new(
                "from-file".into(),
                Origin::ConfigFile(path())
            ))
        );
        assert_eq!(overridden.len(), 2);
    }

    #[test]
    fn explicit_cluster_beats_compute_environment_within_a_source() {
        let file = parse("cluster = \"c\"\ncompute_environment = \"ce\"");
        assert!(matches!(target(&file, None), ClusterTarget::Cluster(s) if s.value == "c"));
        let t = tags(&[(TAG_COMPUTE_ENVIRONMENT, "ce"), (TAG_CLUSTER, "c")]);
        assert!(matches!(
            target(&FileConfig::default(), Some(&t)),
            ClusterTarget::Cluster(Sourced {
                origin: Origin::InstanceTag {
                    key: TAG_CLUSTER,
                    ..
                },
                ..
            })
        ));
    }

    #[test]
    fn tags_are_used_when_the_file_is_silent() {
        let t = InstanceTags {
            channel: TagChannel::DescribeTags,
            ..tags(&[(TAG_COMPUTE_ENVIRONMENT, "ce")])
        };
        let chosen = target(&parse(r#"drain_lead = "5m""#), Some(&t));
        let ClusterTarget::ComputeEnvironment(ce) = chosen else {
            panic!("expected a CE")
        };
        assert_eq!(
            ce.origin.to_string(),
            "instance tag blockwatch:compute-environment (ec2:DescribeTags)"
        );
    }

    #[test]
    fn no_source_is_an_error_that_says_what_to_set() {
        let err = choose_cluster_target(&FileConfig::default(), &path(), Some(&tags(&[])));
        let text = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            text.contains("blockwatch:compute-environment") && text.contains("compute_environment"),
            "{text}"
        );
    }

    #[test]
    fn settings_take_file_then_tags_then_defaults() {
        let t = tags(&[(TAG_LEASE_DURATION, "3h"), (TAG_LEASE_END, "garbage")]);
        let (s, problems) = Settings::resolve(&FileConfig::default(), &path(), Some(&t), false);
        assert_eq!(
            s.drain_lead,
            Sourced::new(DEFAULT_DRAIN_LEAD, Origin::Default)
        );
        assert_eq!(
            s.lease.map(|l| l.value),
            Some(Lease::LastsFromLaunch(HumanDuration(Duration::from_secs(
                3 * 3600
            ))))
        );
        assert_eq!(
            problems.len(),
            1,
            "the unparsable lease-end tag is reported"
        );

        let file = parse("lease_duration = \"1h\"\ndrain_lead = \"20m\"\ndry_run = false");
        let (s, problems) = Settings::resolve(&file, &path(), Some(&t), true);
        assert!(problems.is_empty());
        assert_eq!(s.lease.map(|l| l.origin), Some(Origin::ConfigFile(path())));
        assert_eq!(s.drain_lead.value, Duration::from_secs(1200));
        assert_eq!(s.dry_run, Sourced::new(true, Origin::CommandLine));
    }

    #[test]
    fn describe_never_shows_the_webhook_url() {
        let file = parse(r#"webhook_url = "https://user:secret@hooks.example/x""#);
        let (s, _) = Settings::resolve(&file, &path(), None, false);
        let text = s.describe().join(" ");
        assert!(
            !text.contains("secret") && text.contains("webhook_url=<set>"),
            "{text}"
        );
    }

    fn refusal(text: &str) -> String {
        FileConfig::parse(text, &path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| panic!("{text:?} was accepted"))
    }

    #[test]
    fn job_stop_timeout_is_whole_seconds_of_at_least_one_and_fits_before_the_drain() {
        let c = parse("job_stop_timeout = \"2m\"");
        assert_eq!(
            c.job_stop_timeout,
            Some(JobStopTimeout(Duration::from_secs(120)))
        );
        assert_eq!(
            c.job_stop_timeout.map(JobStopTimeout::ecs_value).as_deref(),
            Some("120s")
        );
        for (value, needle) in [
            ("\"0s\"", "at least 1s"),
            ("\"500ms\"", "whole seconds"),
            ("\"1s 500ms\"", "whole seconds"),
            ("\"1.5s\"", "whole seconds"),
            ("\"-5s\"", "not a duration"),
            ("\"abc\"", "not a duration"),
            ("\"5s\\nECS_CLUSTER=evil\"", "nothing around it"),
            ("\" 5s\"", "nothing around it"),
        ] {
            let err = refusal(&format!("job_stop_timeout = {value}"));
            assert!(err.contains("job_stop_timeout"), "{err}");
            assert!(err.contains(needle), "{err} should say {needle}");
            assert!(!err.contains('\n'), "{err}");
        }
        // A bare number is no duration (as for the ECS agent).
        assert!(refusal("job_stop_timeout = 30").contains("invalid type"));
        // The stop (timeout + 10 s) must start after the drain.
        let err = refusal("drain_lead = \"40s\"\njob_stop_timeout = \"30s\"");
        assert!(
            err.contains("job_stop_timeout = \"30s\"") && err.contains("drain_lead = 40s"),
            "{err}"
        );
        assert!(parse("drain_lead = \"41s\"\njob_stop_timeout = \"30s\"")
            .job_stop_timeout
            .is_some());
        // Against the default drain lead of 10 minutes.
        assert!(refusal("job_stop_timeout = \"9m 50s\"").contains("drain_lead = 10m"));
        assert!(parse("job_stop_timeout = \"9m 49s\"")
            .job_stop_timeout
            .is_some());
    }

    #[test]
    fn stop_tasks_defaults_to_true_is_said_at_start_and_refuses_a_stop_grace_beside_false() {
        let (plain, _) = Settings::resolve(&FileConfig::default(), &path(), None, false);
        assert!(plain.stop_tasks.value);
        assert!(plain
            .describe()
            .join(", ")
            .contains("stop_tasks=true (default)"));
        let (off, _) = Settings::resolve(&parse("stop_tasks = false"), &path(), None, false);
        assert!(!off.stop_tasks.value);
        let text = off.describe().join(", ");
        assert!(
            text.contains(
                "stop_tasks=false (config file /etc/blockwatch/blockwatch.toml; nothing is stopped"
            ),
            "{text}"
        );
        let err = refusal("stop_tasks = false\nstop_grace = \"2m\"");
        assert!(err.contains("stop_tasks = false and stop_grace"), "{err}");
        assert!(parse("stop_tasks = true\nstop_grace = \"2m\"")
            .stop_grace
            .is_some());
    }

    #[test]
    fn describe_says_when_the_stops_start() {
        let file = parse("job_stop_timeout = \"30s\"");
        let (s, _) = Settings::resolve(&file, &path(), None, false);
        let text = s.describe().join(", ");
        assert!(
            text.contains("job_stop_timeout=30s (config file /etc/blockwatch/blockwatch.toml; ECS_CONTAINER_STOP_TIMEOUT=30s; stops start at T - 40s)"),
            "{text}"
        );
        let (plain, _) = Settings::resolve(&FileConfig::default(), &path(), None, false);
        assert!(!plain.describe().join(" ").contains("job_stop_timeout"));
    }

    #[test]
    fn a_lease_duration_tag_below_the_floor_is_refused_and_a_long_one_saturates() {
        for short in ["0s", "5m", "9m 59s"] {
            let (lease, problems) =
                Settings::lease_from_tags(&tags(&[(TAG_LEASE_DURATION, short)]));
            assert_eq!(lease, None, "{short}");
            assert_eq!(problems[0].key, TAG_LEASE_DURATION, "{short}");
            assert!(
                problems[0].reason.contains("shorter than the 10m"),
                "{:?}",
                problems
            );
        }
        let (lease, problems) = Settings::lease_from_tags(&tags(&[(TAG_LEASE_DURATION, "10m")]));
        assert!(problems.is_empty());
        assert_eq!(
            lease.map(|l| l.value),
            Some(Lease::LastsFromLaunch(HumanDuration(MIN_LEASE_DURATION)))
        );
        let forever = Lease::LastsFromLaunch(HumanDuration(Duration::MAX));
        let launched = OffsetDateTime::UNIX_EPOCH;
        assert!(forever.end(launched) > launched, "saturates, never panics");
    }
}
