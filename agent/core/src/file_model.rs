//! The config file's model: `/etc/blockwatch/blockwatch.toml` parsed and
//! checked, and the rule for trusting the file at all.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::settings::{OnDrained, OnLeaseEnd, DEFAULT_DRAIN_LEAD};
use crate::time_text::{HumanDuration, Timestamp, MAX_DURATION};

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
    /// How long before the end opted-in containers get their checkpoint
    /// signal (off by default).
    pub checkpoint_lead: Option<HumanDuration>,
    /// The Auto Scaling termination lifecycle hook to complete (found
    /// through `DescribeLifecycleHooks` when unset).
    pub lifecycle_hook: Option<String>,
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
        let shown = crate::escape::quoted(text).to_string();
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
            let message = crate::escape::escape(&err.message().replace('\n', " "));
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
        let lead = timeout.0.saturating_add(crate::decision::JOB_STOP_MARGIN);
        let drain_lead = self.drain_lead.map_or(DEFAULT_DRAIN_LEAD, |d| d.0);
        if lead >= drain_lead {
            return Err(format!(
                "{JOB_STOP_TIMEOUT_KEY} = \"{}\": the stop must start {} before the end (the timeout plus a {} margin), which is not after the drain (drain_lead = {}); shorten {JOB_STOP_TIMEOUT_KEY} or lengthen drain_lead",
                humantime::format_duration(timeout.0),
                humantime::format_duration(lead),
                humantime::format_duration(crate::decision::JOB_STOP_MARGIN),
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn path() -> PathBuf {
        PathBuf::from("/etc/blockwatch/blockwatch.toml")
    }

    pub(crate) fn parse(text: &str) -> FileConfig {
        match FileConfig::parse(text, &path()) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    pub(crate) fn refusal(text: &str) -> String {
        FileConfig::parse(text, &path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| panic!("{text:?} was accepted"))
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
}
