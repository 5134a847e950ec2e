//! `blockwatch status`: reads the state file; needs no network.

use std::path::Path;

use time::OffsetDateTime;

use crate::host::state_dir;
use blockwatch_core::decision::AgentState;
use blockwatch_core::job_deadline::DeadlineView;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("{0}")]
    State(#[from] state_dir::StateError),
    #[error("cannot read the join record: {0}")]
    Read(#[from] std::io::Error),
    #[error("no state in {0}: blockwatch has not run on this instance (is blockwatch-join.service enabled?)")]
    Nothing(String),
}

/// The human summary, or the JSON object of DESIGN.md's contract.
pub fn render(state_dir: &Path, json: bool, now: OffsetDateTime) -> Result<String, StatusError> {
    if let Some(snapshot) = state_dir::read_snapshot(state_dir)? {
        return Ok(if json {
            serde_json::to_string_pretty(&snapshot.status_json(now)).unwrap_or_default()
        } else {
            snapshot.summary(now)
        });
    }
    // Joined, but `run` has not started yet.
    let record = state_dir::read_join_record(state_dir)?
        .ok_or_else(|| StatusError::Nothing(state_dir.display().to_string()))?;
    Ok(if json {
        // The deadline's fields as a state without a deadline has them.
        let mut value = DeadlineView::of("", &AgentState::default()).fields();
        let joined = serde_json::json!({
            "instance_id": record.instance_id,
            "cluster": record.cluster,
            "degraded": null,
            "compute_environment": record.compute_environment,
        });
        if let serde_json::Value::Object(joined) = joined {
            value.extend(joined);
        }
        serde_json::to_string_pretty(&value).unwrap_or_default()
    } else {
        format!(
            "instance:  {}\ncluster:   {} ({})\nphase:     joining (ECS_CLUSTER written; blockwatch run has not started)",
            record.instance_id.as_deref().unwrap_or("unknown"),
            record.cluster,
            record.cluster_source
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::PathBuf;

    use time::macros::datetime;

    use super::*;

    #[test]
    fn joined_but_not_running_shows_the_joining_phase_without_a_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let record = state_dir::JoinRecord {
            instance_id: Some("i-0abc".into()),
            cluster: "jobs".into(),
            cluster_source: "config".into(),
            compute_environment: None,
            ecs_config: PathBuf::from("/etc/ecs/ecs.config"),
            joined_at: datetime!(2026-11-30 12:00:00 UTC),
        };
        state_dir::write_join_record(dir.path(), &record).unwrap();
        let json = render(dir.path(), true, datetime!(2026-11-30 12:01:00 UTC)).unwrap();
        let expected = r#"{
  "checkpoint_at": null,
  "cluster": "jobs",
  "compute_environment": null,
  "deadline": null,
  "deadline_source": null,
  "degraded": null,
  "drain_at": null,
  "instance_id": "i-0abc",
  "phase": "joining",
  "stop_at": null
}"#;
        assert_eq!(json, expected);
    }
}
