//! What operators see: the state file's snapshot, the systemd STATUS line and
//! `blockwatch status`. Pure: `now` is an argument.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::config::rfc3339;
use super::state::{AgentState, Phase};

/// The state file (`<state-dir>/state.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub instance_id: String,
    pub cluster: String,
    pub compute_environment: Option<String>,
    #[serde(flatten)]
    pub agent: AgentState,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

fn clock(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!("{:02}:{:02}Z", at.hour(), at.minute())
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
    pub fn status_json(&self) -> serde_json::Value {
        let a = &self.agent;
        let drain = a.drain.as_ref();
        serde_json::json!({
            "instance_id": self.instance_id,
            "cluster": self.cluster,
            "compute_environment": self.compute_environment,
            "phase": a.phase.name(),
            "deadline": a.deadline.as_ref().map(|d| rfc3339(d.at)),
            "deadline_source": a.deadline.as_ref().map(|d| d.event.kind.name()),
            "deadline_event": a.deadline.as_ref().map(|d| d.event.id.clone()),
            "drain_at": a.drain_at.map(rfc3339),
            "drain_started_at": drain.map(|d| rfc3339(d.started_at)),
            "draining_confirmed_at": drain.and_then(|d| d.draining_confirmed_at).map(rfc3339),
            "running_tasks": drain.and_then(|d| d.running_tasks),
            "drained_at": drain.and_then(|d| d.drained_at).map(rfc3339),
            "drains_started": a.drains_started,
            "drains_completed": a.drains_completed,
            "updated_at": rfc3339(self.updated_at),
        })
    }

    /// The one-line systemd `STATUS=`.
    pub fn status_line(&self, now: OffsetDateTime) -> String {
        let a = &self.agent;
        let ends = a.deadline.as_ref().map(|d| format!("ends {}", clock(d.at)));
        match a.phase {
            Phase::Joining | Phase::Watching => match (&a.deadline, a.drain_at) {
                (Some(d), Some(drain_at)) => format!(
                    "cluster {} · {} ends {} (in {}) · drain at {}",
                    self.cluster,
                    d.event.kind,
                    clock(d.at),
                    countdown(now, d.at),
                    clock(drain_at)
                ),
                _ => format!("cluster {} · no end announced · watching", self.cluster),
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
        }
    }

    /// The text `blockwatch status` prints.
    pub fn summary(&self, now: OffsetDateTime) -> String {
        let a = &self.agent;
        let mut lines = vec![
            format!("instance:  {}", self.instance_id),
            format!(
                "cluster:   {}{}",
                self.cluster,
                self.compute_environment
                    .as_ref()
                    .map(|ce| format!(" (compute environment {ce})"))
                    .unwrap_or_default()
            ),
            format!("phase:     {}", a.phase.name()),
        ];
        match &a.deadline {
            Some(d) => lines.push(format!(
                "deadline:  {} (in {}) from {} [{}]",
                rfc3339(d.at),
                countdown(now, d.at),
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
        if let Some(drain) = &a.drain {
            if let Some(n) = drain.running_tasks {
                lines.push(format!("jobs:      {n} running"));
            }
            if let Some(at) = drain.drained_at {
                lines.push(format!("drained:   {}", rfc3339(at)));
            }
        }
        lines.push(format!("status:    {}", self.status_line(now)));
        let age = match countdown(self.updated_at, now).as_str() {
            "now" => "just now".to_owned(),
            ago => format!("{ago} ago"),
        };
        lines.push(format!("updated:   {} ({age})", rfc3339(self.updated_at)));
        lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::core::deadline::{EventKey, SourceKind};
    use crate::core::state::Deadline;

    fn snapshot(phase: Phase) -> Snapshot {
        Snapshot {
            instance_id: "i-1".into(),
            cluster: "batch-a".into(),
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
        let json = snapshot(Phase::Watching).status_json();
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
        assert_eq!(json["deadline_source"], "lease");
        assert_eq!(json["phase"], "watching");
    }

    #[test]
    fn countdown_reads_well() {
        let t = datetime!(2026-11-29 12:00 UTC);
        assert_eq!(countdown(t, t + time::Duration::seconds(12)), "12s");
        assert_eq!(countdown(t, t + time::Duration::seconds(250)), "4m10s");
        assert_eq!(countdown(t, t - time::Duration::seconds(5)), "now");
    }
}
