//! The state directory: what the agent has done, readable with no network.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::atomic_file;

pub const DEFAULT_STATE_DIR: &str = "/var/lib/blockwatch";
const JOIN_RECORD: &str = "join.json";

/// What `blockwatch join` decided, for `run` and `status` to read later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRecord {
    pub instance_id: Option<String>,
    pub cluster: String,
    pub cluster_source: String,
    pub compute_environment: Option<String>,
    pub ecs_config: PathBuf,
    #[serde(with = "time::serde::rfc3339")]
    pub joined_at: time::OffsetDateTime,
}

pub fn join_record_path(state_dir: &Path) -> PathBuf {
    state_dir.join(JOIN_RECORD)
}

pub fn write_join_record(state_dir: &Path, record: &JoinRecord) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    atomic_file::replace(&join_record_path(state_dir), &bytes, 0o644)
}
