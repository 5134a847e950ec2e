//! `blockwatch status`: reads the state file; needs no network.

use std::path::Path;

use time::OffsetDateTime;

use crate::host::state_dir;

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
        let value = serde_json::json!({
            "instance_id": record.instance_id,
            "cluster": record.cluster,
            "degraded": null,
            "compute_environment": record.compute_environment,
            "phase": "joining",
            "deadline": null,
            "deadline_source": null,
            "drain_at": null,
            "stop_at": null,
        });
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
