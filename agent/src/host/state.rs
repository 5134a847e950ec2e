//! The state directory: what the agent has done, readable with no network.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::atomic_file;
use crate::core::status::Snapshot;

pub const DEFAULT_STATE_DIR: &str = "/var/lib/blockwatch";
const JOIN_RECORD: &str = "join.json";
const STATE_FILE: &str = "state.json";

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

pub fn state_path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATE_FILE)
}

pub fn read_join_record(state_dir: &Path) -> std::io::Result<Option<JoinRecord>> {
    read_json(&join_record_path(state_dir))
}

/// The agent's state file, if there is one.
pub fn read_snapshot(state_dir: &Path) -> std::io::Result<Option<Snapshot>> {
    read_json(&state_path(state_dir))
}

pub fn write_snapshot(state_dir: &Path, snapshot: &Snapshot) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(snapshot).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    atomic_file::replace(&state_path(state_dir), &bytes, 0o644)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> std::io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(std::io::Error::new(
            err.kind(),
            format!("{}: {err}", path.display()),
        )),
    }
}
