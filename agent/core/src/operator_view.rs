//! What operators see: the state file's snapshot, the systemd STATUS line and
//! `blockwatch status`. Pure: `now` is an argument.
//!
//! About 510 lines, 200 of them tests: the three views say the same state in
//! three forms, and are kept together so that they cannot drift apart.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::decision::{AgentState, Phase};
use super::job_deadline::DeadlineView;
use super::time_text::rfc3339;

/// The state file (`<state-dir>/state.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub instance_id: String,
    /// None when `run` is degraded: no cluster was resolved.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Why `run` works without a cluster (a failed join, an unusable
    /// config): it enforces only the lease, with no ECS call.
    #[serde(default)]
    pub degraded: Option<String>,
    pub compute_environment: Option<String>,
    #[serde(flatten)]
    pub agent: AgentState,
    /// When the agent's state last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(flatten)]
    pub heartbeat: Heartbeat,
}

/// Proof of life: the running agent rewrites the state file at least every
/// `heartbeat_seconds`, even when nothing changes, so that `status` can tell
/// an idle agent from a dead one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Heartbeat {
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_heard: Option<OffsetDateTime>,
    #[serde(default)]
    pub heartbeat_seconds: Option<u64>,
}

/// A heartbeat is stale after this many missed beats.
const MISSED_BEATS: i32 = 3;
/// The interval assumed for a state file that does not say.
const DEFAULT_HEARTBEAT_SECONDS: u64 = 60;

impl Heartbeat {
    /// How long the agent has been silent, when that is longer than
    /// `MISSED_BEATS` heartbeats.
    pub fn stale_for(&self, now: OffsetDateTime) -> Option<time::Duration> {
        let every = self
            .heartbeat_seconds
            .unwrap_or(DEFAULT_HEARTBEAT_SECONDS)
            .max(1);
        let every = time::Duration::seconds(i64::try_from(every).unwrap_or(i64::MAX / 8));
        let silent = now - self.last_heard?;
        (silent > every.saturating_mul(MISSED_BEATS)).then_some(silent)
    }
}

fn clock(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!("{:02}:{:02}Z", at.hour(), at.minute())
}

/// The checkpoint signal for the end in force: when it goes, or what it did.
fn checkpoint_line(a: &AgentState, now: OffsetDateTime) -> Option<String> {
    let at = a.checkpoint_at?;
    let line = match &a.checkpoint {
        Some(pass) => match (pass.signaled_at, pass.unreached_at) {
            (Some(signaled), _) => format!(
                "checkpoint: {} container(s) signaled {}",
                pass.containers,
                rfc3339(signaled)
            ),
            (None, Some(_)) => {
                "checkpoint: the ECS agent or Docker could not be reached; retrying (see the journal)"
                    .to_owned()
            }
            (None, None) => format!("checkpoint: signaling since {}", rfc3339(pass.started_at)),
        },
        None if at > now => format!(
            "checkpoint: {} (in {}): opted-in jobs get their signal then",
            rfc3339(at),
            countdown(now, at)
        ),
        None => format!("checkpoint: {} (due)", rfc3339(at)),
    };
    Some(line)
}

/// The Auto Scaling lifecycle hook of the drain: kept alive, completed, or
/// gone.
fn lifecycle_line(a: &AgentState) -> Option<String> {
    let action = a.lifecycle.as_ref()?;
    let hook = format!(
        "lifecycle: hook {} of group {}",
        action.hook.name, action.hook.group
    );
    let heartbeats = format!("{} heartbeat(s)", action.heartbeats);
    Some(match (action.completed_at, action.gone_at) {
        (Some(at), _) => format!(
            "{hook} completed with CONTINUE {} ({heartbeats})",
            rfc3339(at)
        ),
        (None, Some(at)) => format!(
            "{hook}: Auto Scaling had no waiting action any more at {} (timed out, or completed before); nothing more is sent",
            rfc3339(at)
        ),
        (None, None) => format!(
            "{hook} kept alive ({heartbeats}{}); CONTINUE once drained, by {} at the latest",
            action
                .last_heartbeat_at
                .map(|at| format!(", last {}", rfc3339(at)))
                .unwrap_or_default(),
            rfc3339(action.complete_by())
        ),
    })
}

/// `2h13m`, `4m10s`, `12s`; `now` when due.
pub fn countdown(from: OffsetDateTime, to: OffsetDateTime) -> String {
    let secs = (to - from).whole_seconds();
    if secs <= 0 {
        return "now".to_owned();
    }
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s:02}s"),
        _ => format!("{h}h{m:02}m"),
    }
}

impl Snapshot {
    /// The object `blockwatch status --json` prints (DESIGN.md's contract).
    pub fn status_json(&self, now: OffsetDateTime) -> serde_json::Value {
        let a = &self.agent;
        let drain = a.drain.as_ref();
        // The deadline's fields are the ones jobs read from the deadline files.
        let mut json = serde_json::to_value(DeadlineView::of(&self.instance_id, a))
            .unwrap_or_else(|_| serde_json::json!({}));
        let more = serde_json::json!({
            "cluster": self.cluster,
            "degraded": self.degraded,
            "compute_environment": self.compute_environment,
            "drain_started_at": drain.map(|d| rfc3339(d.started_at)),
            "draining_confirmed_at": drain.and_then(|d| d.draining_confirmed_at).map(rfc3339),
            "running_tasks": drain.and_then(|d| d.running_tasks),
            "drained_at": drain.and_then(|d| d.drained_at).map(rfc3339),
            "drains_started": a.drains_started,
            "drains_completed": a.drains_completed,
            "updated_at": rfc3339(self.updated_at),
            "last_heard": self.heartbeat.last_heard.map(rfc3339),
            "heartbeat_stale": self.heartbeat.stale_for(now).is_some(),
            "end_stop_at": drain.and_then(|d| d.end_stop_at).map(rfc3339),
            "poweroff_attempts": drain.map_or(0, |d| d.poweroff_attempts),
            "poweroff_at": drain.and_then(|d| d.poweroff_at).map(rfc3339),
            "checkpoint_signaled_at": a.checkpoint.as_ref().and_then(|c| c.signaled_at).map(rfc3339),
            "checkpoint_signals": a.checkpoint_signals,
            "lifecycle_hook": a.lifecycle.as_ref().map(|l| l.hook.name.clone()),
            "autoscaling_group": a.lifecycle.as_ref().map(|l| l.hook.group.clone()),
            "lifecycle_heartbeats": a.lifecycle.as_ref().map_or(0, |l| l.heartbeats),
            "lifecycle_last_heartbeat_at": a.lifecycle.as_ref().and_then(|l| l.last_heartbeat_at).map(rfc3339),
            "lifecycle_completed_at": a.lifecycle.as_ref().and_then(|l| l.completed_at).map(rfc3339),
            "warnings": a.warnings,
        });
        if let (Some(fields), serde_json::Value::Object(more)) = (json.as_object_mut(), more) {
            fields.extend(more);
        }
        json
    }

    /// The one-line systemd `STATUS=`.
    pub fn status_line(&self, now: OffsetDateTime) -> String {
        match &self.degraded {
            Some(reason) => self.degraded_line(reason, now),
            None => self.joined_line(now),
        }
    }

    /// Degraded: the reason first, then the end it enforces. No drain is
    /// set, so none is shown.
    fn degraded_line(&self, reason: &str, now: OffsetDateTime) -> String {
        let a = &self.agent;
        let powering_off = a.drain.as_ref().is_some_and(|d| d.poweroff_at.is_some());
        let end = match &a.deadline {
            _ if powering_off => "powering off".to_owned(),
            Some(d) => format!(
                "{} ends {} (in {}): power-off then",
                d.event.kind,
                clock(d.at),
                countdown(now, d.at)
            ),
            None => "no end announced".to_owned(),
        };
        format!("DEGRADED, no ECS drain: {reason} · {end}")
    }

    fn joined_line(&self, now: OffsetDateTime) -> String {
        let cluster = self.cluster.as_deref().unwrap_or("none");
        let a = &self.agent;
        let ends = a.deadline.as_ref().map(|d| format!("ends {}", clock(d.at)));
        match a.phase {
            Phase::Joining | Phase::Watching => match (&a.deadline, a.drain_at) {
                (Some(d), Some(drain_at)) => format!(
                    "cluster {cluster} · {} ends {} (in {}) · drain at {}",
                    d.event.kind,
                    clock(d.at),
                    countdown(now, d.at),
                    clock(drain_at)
                ),
                _ => format!("cluster {cluster} · no end announced · watching"),
            },
            Phase::Draining => {
                let drain = a.drain.as_ref();
                let tasks = match (
                    drain.and_then(|d| d.draining_confirmed_at),
                    drain.and_then(|d| d.running_tasks),
                ) {
                    (None, _) => "setting DRAINING".to_owned(),
                    (Some(_), Some(1)) => "1 job running".to_owned(),
                    (Some(_), Some(n)) => format!("{n} jobs running"),
                    (Some(_), None) => "counting jobs".to_owned(),
                };
                format!("draining · {tasks} · {}", ends.unwrap_or_default())
            }
            Phase::Drained => format!("drained · no jobs left · {}", ends.unwrap_or_default()),
            Phase::Stopping => {
                let tasks = match a.drain.as_ref().and_then(|d| d.running_tasks) {
                    Some(1) => "1 job stopping".to_owned(),
                    Some(n) => format!("{n} jobs stopping"),
                    None => "jobs stopping".to_owned(),
                };
                format!("stopping · {tasks} · {}", ends.unwrap_or_default())
            }
            Phase::Stopped => format!("stopped · no jobs left · {}", ends.unwrap_or_default()),
            Phase::PoweringOff => {
                let failing = match a.drain.as_ref().map(|d| d.poweroff_attempts) {
                    Some(n) if n > 1 => format!(" · power-off failing, attempt {n}"),
                    _ => String::new(),
                };
                format!("powering off · {}{failing}", ends.unwrap_or_default())
            }
            Phase::PoweredOff => format!("powering off · {}", ends.unwrap_or_default()),
        }
    }

    /// The text `blockwatch status` prints.
    pub fn summary(&self, now: OffsetDateTime) -> String {
        let a = &self.agent;
        let mut lines = vec![format!("instance:  {}", self.instance_id)];
        if let Some(reason) = &self.degraded {
            lines.push(format!(
                "DEGRADED:  {reason}; enforcing the lease end only (no ECS drain, no job stop)"
            ));
        }
        lines.extend([
            format!(
                "cluster:   {}{}",
                self.cluster.as_deref().unwrap_or("none"),
                self.compute_environment
                    .as_ref()
                    .map(|ce| format!(" (compute environment {ce})"))
                    .unwrap_or_default()
            ),
            format!("phase:     {}", a.phase.name()),
        ]);
        match &a.deadline {
            Some(d) => lines.push(format!(
                "deadline:  {} ({}) from {} [{}]",
                rfc3339(d.at),
                if d.at > now {
                    format!("in {}", countdown(now, d.at))
                } else {
                    "passed".to_owned()
                },
                d.event.kind,
                d.event.id
            )),
            None => lines.push("deadline:  none announced".to_owned()),
        }
        if let Some(at) = a.drain_at {
            let verb = if a.drain.is_some() {
                "drain started"
            } else {
                "drain at"
            };
            lines.push(format!(
                "{verb}: {} ({})",
                rfc3339(at),
                if at > now {
                    format!("in {}", countdown(now, at))
                } else {
                    "passed".into()
                }
            ));
        }
        if let Some(at) = a.stop_at {
            let stopped = a
                .drain
                .as_ref()
                .is_some_and(|d| d.end_stop_at.is_some() || d.tasks_stopped_at.is_some());
            if !stopped {
                lines.push(format!(
                    "stop at:   {} ({}): what still runs is stopped then",
                    rfc3339(at),
                    if at > now {
                        format!("in {}", countdown(now, at))
                    } else {
                        "passed".into()
                    }
                ));
            }
        }
        if let Some(line) = checkpoint_line(a, now) {
            lines.push(line);
        }
        if let Some(line) = lifecycle_line(a) {
            lines.push(line);
        }
        if let Some(drain) = &a.drain {
            if let Some(n) = drain.running_tasks {
                lines.push(format!("jobs:      {n} running"));
            }
            if let Some(at) = drain.drained_at {
                lines.push(format!("drained:   {}", rfc3339(at)));
            }
        }
        if let Some(drain) = &a.drain {
            if let Some(at) = drain.end_stop_at {
                lines.push(format!("stopped:   {} (the end came)", rfc3339(at)));
            }
            match (drain.poweroff_at, drain.poweroff_attempts) {
                (Some(at), _) => lines.push(format!("power-off: requested {}", rfc3339(at))),
                (None, 0) => {}
                (None, n) => lines.push(format!(
                    "power-off: {n} attempt(s) failed; retrying (see the journal)"
                )),
            }
        }
        for warning in &a.warnings {
            lines.push(format!("WARNING:   {warning}"));
        }
        lines.push(format!("status:    {}", self.status_line(now)));
        lines.push(format!(
            "last change: {} ({})",
            rfc3339(self.updated_at),
            ago(self.updated_at, now)
        ));
        lines.push(match self.heartbeat.last_heard {
            None => "last heard:  unknown (this state file has no heartbeat)".to_owned(),
            Some(heard) => {
                let mut line = format!("last heard:  {} ({})", rfc3339(heard), ago(heard, now));
                if let Some(silent) = self.heartbeat.stale_for(now) {
                    let every = self
                        .heartbeat
                        .heartbeat_seconds
                        .unwrap_or(DEFAULT_HEARTBEAT_SECONDS);
                    line.push_str(&format!(
                        " · STALE: silent for {} (it writes every {}s): blockwatch run is stopped or stuck, see systemctl status blockwatch; everything above may be out of date",
                        countdown(now - silent, now),
                        every
                    ));
                }
                line
            }
        });
        lines.join("\n")
    }
}

/// `12s ago`, `just now`.
fn ago(at: OffsetDateTime, now: OffsetDateTime) -> String {
    match countdown(at, now).as_str() {
        "now" => "just now".to_owned(),
        ago => format!("{ago} ago"),
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::deadline::{EventKey, SourceKind};
    use crate::decision::Deadline;

    fn snapshot(phase: Phase) -> Snapshot {
        Snapshot {
            instance_id: "i-1".into(),
            cluster: Some("batch-a".into()),
            degraded: None,
            compute_environment: Some("ce".into()),
            agent: AgentState {
                phase,
                deadline: Some(Deadline {
                    at: datetime!(2026-11-29 15:00 UTC),
                    event: EventKey {
                        kind: SourceKind::Lease,
                        id: "tag".into(),
                    },
                }),
                drain_at: Some(datetime!(2026-11-29 14:50 UTC)),
                ..AgentState::default()
            },
            updated_at: datetime!(2026-11-29 12:47 UTC),
            heartbeat: Heartbeat {
                last_heard: Some(datetime!(2026-11-29 12:50 UTC)),
                heartbeat_seconds: Some(60),
            },
        }
    }

    #[test]
    fn status_line_while_watching_has_a_countdown() {
        let line = snapshot(Phase::Watching).status_line(datetime!(2026-11-29 12:47 UTC));
        assert_eq!(
            line,
            "cluster batch-a · lease ends 15:00Z (in 2h13m) · drain at 14:50Z"
        );
    }

    #[test]
    fn status_json_has_the_contract_keys() {
        let json = snapshot(Phase::Watching).status_json(datetime!(2026-11-29 12:51 UTC));
        for key in [
            "instance_id",
            "cluster",
            "compute_environment",
            "phase",
            "deadline",
            "deadline_source",
            "drain_at",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
        assert_eq!(json["deadline"], "2026-11-29T15:00:00Z");
        assert_eq!(json["stop_at"], serde_json::Value::Null);
        assert_eq!(json["deadline_source"], "lease");
        assert_eq!(json["phase"], "watching");
        assert_eq!(json["degraded"], serde_json::Value::Null);
    }

    #[test]
    fn degraded_is_said_in_the_status_line_the_summary_and_the_json() {
        let mut shown = snapshot(Phase::Watching);
        shown.cluster = None;
        shown.degraded = Some("compute environment \"nope\" not found".into());
        let now = datetime!(2026-11-29 14:47 UTC);
        assert_eq!(
            shown.status_line(now),
            "DEGRADED, no ECS drain: compute environment \"nope\" not found · lease ends 15:00Z (in 13m00s): power-off then"
        );
        let text = shown.summary(now);
        assert!(
            text.contains(
                "DEGRADED:  compute environment \"nope\" not found; enforcing the lease end only"
            ),
            "{text}"
        );
        assert!(text.contains("cluster:   none"), "{text}");
        let json = shown.status_json(now);
        assert_eq!(json["degraded"], "compute environment \"nope\" not found");
        assert_eq!(json["cluster"], serde_json::Value::Null);
    }

    #[test]
    fn status_shows_the_shutdown_warning_and_the_power_off_retries() {
        let mut shown = snapshot(Phase::PoweringOff);
        shown.agent.warnings = vec!["instance-initiated shutdown behaviour is `stop`".into()];
        shown.agent.drain = Some(crate::decision::Drain {
            reason: EventKey {
                kind: SourceKind::Lease,
                id: "tag".into(),
            },
            ends_instance: true,
            deadline: datetime!(2026-11-29 15:00 UTC),
            started_at: datetime!(2026-11-29 14:50 UTC),
            launched_at: None,
            stopped_at: None,
            draining_confirmed_at: None,
            running_tasks: Some(0),
            tasks_stopped_at: None,
            drained_at: None,
            end_stop_at: None,
            poweroff_attempts: 2,
            poweroff_attempted_at: Some(datetime!(2026-11-29 14:52 UTC)),
            poweroff_at: None,
        });
        let now = datetime!(2026-11-29 14:53 UTC);
        let text = shown.summary(now);
        assert!(
            text.contains("WARNING:   instance-initiated shutdown behaviour is `stop`"),
            "{text}"
        );
        assert!(text.contains("power-off: 2 attempt(s) failed"), "{text}");
        assert!(
            shown
                .status_line(now)
                .ends_with(" · power-off failing, attempt 2"),
            "{}",
            shown.status_line(now)
        );
        let json = shown.status_json(now);
        assert_eq!(
            json["warnings"][0],
            "instance-initiated shutdown behaviour is `stop`"
        );
        assert_eq!(json["poweroff_attempts"], 2);
        assert_eq!(json["poweroff_at"], serde_json::Value::Null);
    }

    #[test]
    fn status_shows_last_change_and_last_heard() {
        let text = snapshot(Phase::Watching).summary(datetime!(2026-11-29 12:51 UTC));
        assert!(
            text.contains("last change: 2026-11-29T12:47:00Z (4m00s ago)"),
            "{text}"
        );
        assert!(
            text.contains("last heard:  2026-11-29T12:50:00Z (1m00s ago)"),
            "{text}"
        );
        assert!(!text.contains("STALE"), "{text}");
        let json = snapshot(Phase::Watching).status_json(datetime!(2026-11-29 12:51 UTC));
        assert_eq!(json["last_heard"], "2026-11-29T12:50:00Z");
        assert_eq!(json["heartbeat_stale"], false);
    }

    #[test]
    fn a_heartbeat_three_beats_old_is_called_stale() {
        let s = snapshot(Phase::Draining);
        // Last heard 12:50, every 60 s: fine at 12:53, stale after.
        assert!(s
            .heartbeat
            .stale_for(datetime!(2026-11-29 12:53 UTC))
            .is_none());
        let late = datetime!(2026-11-29 12:53:01 UTC);
        assert_eq!(
            s.heartbeat.stale_for(late),
            Some(time::Duration::seconds(181))
        );
        let text = s.summary(late);
        let line = text
            .lines()
            .find(|l| l.starts_with("last heard:"))
            .unwrap_or_default();
        assert_eq!(
            line,
            "last heard:  2026-11-29T12:50:00Z (3m01s ago) · STALE: silent for 3m01s (it writes every 60s): blockwatch run is stopped or stuck, see systemctl status blockwatch; everything above may be out of date"
        );
        assert_eq!(s.status_json(late)["heartbeat_stale"], true);
    }

    #[test]
    fn an_old_state_file_without_a_heartbeat_still_reads() {
        let mut json = serde_json::to_value(snapshot(Phase::Watching)).unwrap();
        let object = json.as_object_mut().unwrap();
        object.remove("last_heard");
        object.remove("heartbeat_seconds");
        let old: Snapshot = serde_json::from_value(json).unwrap();
        assert_eq!(old.heartbeat, Heartbeat::default());
        let text = old.summary(datetime!(2026-11-29 12:51 UTC));
        assert!(text.contains("last heard:  unknown"), "{text}");
        assert!(!text.contains("STALE"), "{text}");
    }

    #[test]
    fn countdown_reads_well() {
        let t = datetime!(2026-11-29 12:00 UTC);
        assert_eq!(countdown(t, t + time::Duration::seconds(12)), "12s");
        assert_eq!(countdown(t, t + time::Duration::seconds(250)), "4m10s");
        assert_eq!(countdown(t, t - time::Duration::seconds(5)), "now");
    }

    #[test]
    fn the_summary_says_when_the_checkpoint_signal_goes_and_what_it_did() {
        let now = datetime!(2026-11-29 14:40 UTC);
        let mut shown = snapshot(Phase::Watching);
        shown.agent.checkpoint_at = Some(datetime!(2026-11-29 14:45 UTC));
        assert!(
            shown.summary(now).contains(
                "checkpoint: 2026-11-29T14:45:00Z (in 5m00s): opted-in jobs get their signal then"
            ),
            "{}",
            shown.summary(now)
        );
        let started = datetime!(2026-11-29 14:45 UTC);
        shown.agent.checkpoint = Some(crate::checkpoint::Checkpoint {
            signaled_at: Some(started),
            containers: 2,
            ..crate::checkpoint::Checkpoint::started(datetime!(2026-11-29 14:50 UTC), started)
        });
        shown.agent.checkpoint_signals = 2;
        let later = datetime!(2026-11-29 14:46 UTC);
        assert!(shown
            .summary(later)
            .contains("checkpoint: 2 container(s) signaled 2026-11-29T14:45:00Z"));
        let json = shown.status_json(later);
        assert_eq!(json["checkpoint_at"], "2026-11-29T14:45:00Z");
        assert_eq!(json["checkpoint_signaled_at"], "2026-11-29T14:45:00Z");
        assert_eq!(json["checkpoint_signals"], 2);
        shown.agent.checkpoint = Some(crate::checkpoint::Checkpoint {
            unreached_at: Some(started),
            ..crate::checkpoint::Checkpoint::started(datetime!(2026-11-29 14:50 UTC), started)
        });
        assert!(shown
            .summary(later)
            .contains("could not be reached; retrying"));
    }

    #[test]
    fn the_summary_and_json_say_the_lifecycle_hook_and_its_completion() {
        let now = datetime!(2026-11-29 14:46 UTC);
        let started = datetime!(2026-11-29 14:40 UTC);
        let mut shown = snapshot(Phase::Draining);
        let hook = crate::lifecycle_hook::LifecycleHook {
            group: "batch-asg".into(),
            name: "drain".into(),
            heartbeat_timeout: std::time::Duration::from_secs(600),
            global_timeout: Some(std::time::Duration::from_secs(7200)),
        };
        shown.agent.lifecycle = Some(crate::lifecycle_hook::LifecycleAction {
            heartbeats: 2,
            last_heartbeat_at: Some(datetime!(2026-11-29 14:45 UTC)),
            ..crate::lifecycle_hook::LifecycleAction::new(hook, started)
        });
        let summary = shown.summary(now);
        assert!(
            summary.contains("lifecycle: hook drain of group batch-asg kept alive (2 heartbeat(s), last 2026-11-29T14:45:00Z); CONTINUE once drained, by 2026-11-29T16:35:00Z at the latest"),
            "{summary}"
        );
        let json = shown.status_json(now);
        assert_eq!(json["lifecycle_hook"], "drain");
        assert_eq!(json["autoscaling_group"], "batch-asg");
        assert_eq!(json["lifecycle_heartbeats"], 2);
        assert!(json["lifecycle_completed_at"].is_null(), "{json}");
        if let Some(action) = shown.agent.lifecycle.as_mut() {
            action.completed_at = Some(now);
        }
        assert!(shown.summary(now).contains(
            "lifecycle: hook drain of group batch-asg completed with CONTINUE 2026-11-29T14:46:00Z (2 heartbeat(s))"
        ));
        assert_eq!(
            shown.status_json(now)["lifecycle_completed_at"],
            "2026-11-29T14:46:00Z"
        );
    }
}
