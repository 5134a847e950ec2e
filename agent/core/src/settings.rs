//! Every setting the agent runs with: the defaults, the lease, and how the
//! config file, the tags and the defaults combine into `Settings`.
//!
//! Over 400 lines with its tests because each of the seventeen settings takes
//! a line in `Settings`, in `resolve` and in `describe`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use time::OffsetDateTime;

use crate::file_model::{FileConfig, JobStopTimeout, STOP_TASKS_KEY};
use crate::origin::{Origin, Sourced};
use crate::tags::{InstanceTags, TAG_LEASE_DURATION, TAG_LEASE_END};
use crate::time_text::{HumanDuration, Timestamp};

pub const DEFAULT_DRAIN_LEAD: Duration = Duration::from_secs(10 * 60);
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// `--no-block`: the power-off stops blockwatch.service, so a `systemctl`
/// that waited for the job would be stopped with it, before it reported
/// success (seen in the nspawn package test).
pub const DEFAULT_POWEROFF_COMMAND: &str = "systemctl --no-block poweroff";
/// The shortest poll interval: IMDS is not to be hammered.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(100);
pub const DEFAULT_DRAIN_POLL_INTERVAL: Duration = Duration::from_secs(15);
/// How often the lease tags (and `pendingTime`) are read again from IMDS.
pub const DEFAULT_LEASE_REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// How often a Capacity Block's `EndDate` is asked again while far off.
pub const DEFAULT_CAPACITY_BLOCK_REFRESH_INTERVAL: Duration = Duration::from_secs(30 * 60);

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
    pub checkpoint_lead: Option<Sourced<Duration>>,
    pub lifecycle_hook: Option<Sourced<String>>,
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
            checkpoint_lead: file.checkpoint_lead.map(|v| Sourced::new(v.0, in_file())),
            lifecycle_hook: file
                .lifecycle_hook
                .clone()
                .map(|v| Sourced::new(v, in_file())),
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
        if let Some(Sourced {
            value: text,
            origin,
        }) = Sourced::from_tag(tags, TAG_LEASE_END)
        {
            match text.parse::<Timestamp>() {
                Ok(end) => return Some(Sourced::new(Lease::Ends(end), origin)),
                Err(reason) => problems.push(TagProblem {
                    key: TAG_LEASE_END,
                    reason,
                }),
            }
        }
        if let Some(Sourced {
            value: text,
            origin,
        }) = Sourced::from_tag(tags, TAG_LEASE_DURATION)
        {
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
                .saturating_add(crate::decision::JOB_STOP_MARGIN);
            items.push(format!(
                "job_stop_timeout={} ({}; ECS_CONTAINER_STOP_TIMEOUT={}; stops start at T - {})",
                humantime::format_duration(timeout.value.0),
                timeout.origin,
                timeout.value.ecs_value(),
                humantime::format_duration(lead)
            ));
        }
        if let Some(lead) = &self.checkpoint_lead {
            items.push(format!(
                "checkpoint_lead={} ({}; opted-in containers ({}) are signaled at stop_at - {})",
                humantime::format_duration(lead.value),
                lead.origin,
                crate::checkpoint::CHECKPOINT_SIGNAL_ENV,
                humantime::format_duration(lead.value)
            ));
        }
        if let Some(hook) = &self.lifecycle_hook {
            items.push(format!(
                "lifecycle_hook={} ({}; completed with CONTINUE after an Auto Scaling drain)",
                hook.value, hook.origin
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
    use crate::file_model::tests::{parse, path, refusal};
    use crate::tags::tests::tags;

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
