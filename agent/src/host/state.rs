//! The state directory: what the agent has done, readable with no network.
//! (About 450 lines, a quarter of them its tests: the state file's rules
//! read best in one place.)
//!
//! `state.json` is what keeps a drain from being forgotten or repeated
//! across restarts, so it is never thrown away silently: only content that
//! is not a state (bad JSON, wrong shape) is moved aside, with a journal
//! line; any other read error stops `run` (exit 74) so that systemd retries.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::atomic_file;
use super::metrics::MetricsFile;
use crate::core::state::AgentState;
use crate::core::status::{Heartbeat, Snapshot};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/blockwatch";
const JOIN_RECORD: &str = "join.json";
const STATE_FILE: &str = "state.json";
/// How often a running agent rewrites its state file when nothing changes.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(60);
/// Overrides [`HEARTBEAT_INTERVAL`] (humantime, e.g. `1s`); for tests.
pub const HEARTBEAT_ENV: &str = "BLOCKWATCH_HEARTBEAT_INTERVAL";

/// What `blockwatch join` decided, for `run` and `status` to read later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRecord {
    pub instance_id: Option<String>,
    pub cluster: String,
    pub cluster_source: String,
    pub compute_environment: Option<String>,
    pub ecs_config: PathBuf,
    #[serde(with = "time::serde::rfc3339")]
    pub joined_at: OffsetDateTime,
}

/// Why the state file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the state file {}: {source}; not starting, so that a drain in progress is not forgotten (systemd retries)", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the state file {} is not a blockwatch state: {detail}", path.display())]
    Invalid { path: PathBuf, detail: String },
}

pub fn join_record_path(state_dir: &Path) -> PathBuf {
    state_dir.join(JOIN_RECORD)
}

pub fn write_join_record(state_dir: &Path, record: &JoinRecord) -> io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    bytes.push(b'\n');
    atomic_file::replace(&join_record_path(state_dir), &bytes, 0o644)
}

pub fn state_path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATE_FILE)
}

pub fn read_join_record(state_dir: &Path) -> io::Result<Option<JoinRecord>> {
    let path = join_record_path(state_dir);
    match read_json(&path) {
        Ok(Stored::Absent) => Ok(None),
        Ok(Stored::Found(record)) => Ok(Some(record)),
        Ok(Stored::Invalid(detail)) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {detail}", path.display()),
        )),
        Err(err) => Err(io::Error::new(
            err.kind(),
            format!("{}: {err}", path.display()),
        )),
    }
}

/// The agent's state file, if there is one (for `status`).
pub fn read_snapshot(state_dir: &Path) -> Result<Option<Snapshot>, StateError> {
    let path = state_path(state_dir);
    match read_json(&path) {
        Ok(Stored::Absent) => Ok(None),
        Ok(Stored::Found(snapshot)) => Ok(Some(snapshot)),
        Ok(Stored::Invalid(detail)) => Err(StateError::Invalid { path, detail }),
        Err(source) => Err(StateError::Read { path, source }),
    }
}

pub fn write_snapshot(state_dir: &Path, snapshot: &Snapshot) -> io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(snapshot).map_err(io::Error::other)?;
    bytes.push(b'\n');
    atomic_file::replace(&state_path(state_dir), &bytes, 0o644)
}

/// A file's content, read but not yet trusted.
enum Stored<T> {
    Absent,
    Found(T),
    /// Readable bytes that are not a `T`, and why.
    Invalid(String),
}

/// Only a missing file is "absent": every other IO error is returned.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<Stored<T>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(match serde_json::from_slice(&bytes) {
            Ok(value) => Stored::Found(value),
            Err(err) => Stored::Invalid(err.to_string()),
        }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Stored::Absent),
        Err(err) => Err(err),
    }
}

/// The first free name among `state.json.unreadable`, `….unreadable.2`, …:
/// an earlier incident's file is never overwritten.
fn aside_path(path: &Path) -> PathBuf {
    let base = path.with_extension("json.unreadable");
    let free =
        |p: &Path| matches!(p.symlink_metadata(), Err(e) if e.kind() == io::ErrorKind::NotFound);
    if free(&base) {
        return base;
    }
    let numbered = |n: u32| PathBuf::from(format!("{}.{n}", base.display()));
    (2..1000)
        .map(numbered)
        .find(|p| free(p))
        .unwrap_or_else(|| numbered(1000))
}

/// Moves invalid content aside for a human, and says truly what happened.
fn set_aside(path: &Path, detail: &str) {
    let aside = aside_path(path);
    match std::fs::rename(path, &aside) {
        Ok(()) => log::error!(
            "the state file {} is not a blockwatch state ({detail}); moved it to {} and starting afresh: a drain in progress is decided again from the current notices",
            path.display(),
            aside.display()
        ),
        Err(err) => log::error!(
            "the state file {} is not a blockwatch state ({detail}) and could not be moved to {} ({err}); starting afresh: it stays in place until the next successful save replaces it",
            path.display(),
            aside.display()
        ),
    }
}

/// Temp files of writers killed mid-write (see `atomic_file::replace`): a
/// partial state is never read, but they should not pile up.
fn remove_leftover_temp_files(state_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return;
    };
    let prefix = format!(".{STATE_FILE}.blockwatch-");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".tmp") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => log::info!(
                    "removed {}, left by a blockwatch stopped mid-write",
                    entry.path().display()
                ),
                Err(err) => log::warn!("cannot remove {}: {err}", entry.path().display()),
            }
        }
    }
}

fn heartbeat_interval() -> Duration {
    let Ok(text) = std::env::var(HEARTBEAT_ENV) else {
        return HEARTBEAT_INTERVAL;
    };
    humantime::parse_duration(&text).unwrap_or_else(|err| {
        log::warn!(
            "ignoring {HEARTBEAT_ENV}={text:?} ({err}); heartbeat every {}",
            humantime::format_duration(HEARTBEAT_INTERVAL)
        );
        HEARTBEAT_INTERVAL
    })
}

/// What a running agent keeps on disk: the state file (on every change, and
/// as a heartbeat while nothing changes) and the optional metrics file.
#[derive(Debug)]
pub struct Records {
    dir: PathBuf,
    heartbeat: Duration,
    /// The latest state handed in, saved or not, and when it last changed.
    latest: Option<AgentState>,
    changed_at: Option<OffsetDateTime>,
    last_heard: Option<OffsetDateTime>,
    /// Why the latest state is not on disk; retried every tick, logged once.
    unsaved: Option<String>,
    /// Failures of the files kept here, counted in the metrics.
    errors: BTreeMap<&'static str, u64>,
    metrics: Option<MetricsFile>,
}

impl Records {
    /// Opens the state directory at the start of `run`: the state to resume
    /// (fresh when there is none, when its content is invalid, or when it
    /// belongs to another instance), or an error when it cannot be read.
    pub fn open(
        state_dir: &Path,
        instance_id: &str,
        metrics_file: Option<PathBuf>,
    ) -> Result<(Self, AgentState), StateError> {
        let heartbeat = heartbeat_interval();
        let mut records = Self {
            dir: state_dir.to_owned(),
            heartbeat,
            latest: None,
            changed_at: None,
            last_heard: None,
            unsaved: None,
            errors: BTreeMap::new(),
            metrics: metrics_file.map(|path| MetricsFile::new(path, heartbeat)),
        };
        let path = state_path(state_dir);
        let stored = read_json::<Snapshot>(&path).map_err(|source| StateError::Read {
            path: path.clone(),
            source,
        })?;
        remove_leftover_temp_files(state_dir);
        let state = match stored {
            Stored::Absent => AgentState::default(),
            Stored::Invalid(detail) => {
                set_aside(&path, &detail);
                AgentState::default()
            }
            Stored::Found(snapshot) if snapshot.instance_id != instance_id => {
                log::warn!(
                    "the state file {} belongs to instance {:?}, not to this one ({instance_id:?}): copied with an image? starting afresh; the next save replaces it",
                    path.display(),
                    snapshot.instance_id
                );
                AgentState::default()
            }
            Stored::Found(snapshot) => {
                log::info!(PHASE = snapshot.agent.phase.name(); "resuming from {}: phase {}", path.display(), snapshot.agent.phase.name());
                records.latest = Some(snapshot.agent.clone());
                records.changed_at = Some(snapshot.updated_at);
                snapshot.agent
            }
        };
        Ok((records, state))
    }

    /// Records a state that changed (and refreshes the metrics); false when
    /// it could not be written.
    pub fn save(
        &mut self,
        snapshot: Snapshot,
        errors: &BTreeMap<&'static str, u64>,
        now: OffsetDateTime,
    ) -> bool {
        let saved = self.write(snapshot, now);
        self.refresh_metrics(errors, now, true);
        saved
    }

    /// Once per poll: the heartbeat when due, a save that failed before, and
    /// the metrics when their errors changed or their timer is up. Never
    /// calls AWS.
    pub fn tick(
        &mut self,
        snapshot: Snapshot,
        errors: &BTreeMap<&'static str, u64>,
        now: OffsetDateTime,
    ) {
        let heartbeat_due = self.last_heard.is_none_or(|heard| {
            now - heard >= time::Duration::try_from(self.heartbeat).unwrap_or(time::Duration::MAX)
        });
        let changed = self.latest.as_ref() != Some(&snapshot.agent);
        if heartbeat_due || changed || self.unsaved.is_some() {
            self.write(snapshot, now);
        }
        self.refresh_metrics(errors, now, changed);
    }

    /// A few words for the systemd STATUS line while the state is not saved.
    pub fn problem(&self) -> Option<&'static str> {
        self.unsaved.as_ref().map(|_| "state not saved")
    }

    fn write(&mut self, mut snapshot: Snapshot, now: OffsetDateTime) -> bool {
        if self.latest.as_ref() != Some(&snapshot.agent) {
            self.latest = Some(snapshot.agent.clone());
            self.changed_at = Some(now);
        }
        snapshot.updated_at = self.changed_at.unwrap_or(now);
        snapshot.heartbeat = Heartbeat {
            last_heard: Some(now),
            heartbeat_seconds: Some(self.heartbeat.as_secs()),
        };
        let path = state_path(&self.dir);
        match write_snapshot(&self.dir, &snapshot) {
            Ok(()) => {
                self.last_heard = Some(now);
                if self.unsaved.take().is_some() {
                    log::info!(
                        "the state file {} is written again: decisions are recorded",
                        path.display()
                    );
                }
                true
            }
            Err(err) => {
                *self.errors.entry("state").or_default() += 1;
                if self.unsaved.is_none() {
                    log::error!(
                        "cannot write the state file {}: {err}; blockwatch keeps watching and draining, but does not power off until its decision is recorded (retrying every poll; logged once)",
                        path.display()
                    );
                }
                self.unsaved = Some(err.to_string());
                false
            }
        }
    }

    fn refresh_metrics(
        &mut self,
        errors: &BTreeMap<&'static str, u64>,
        now: OffsetDateTime,
        changed: bool,
    ) {
        let Some(metrics) = self.metrics.as_mut() else {
            return;
        };
        let Some(state) = self.latest.as_ref() else {
            return;
        };
        let mut all = errors.clone();
        for (source, n) in &self.errors {
            *all.entry(source).or_default() += n;
        }
        if !metrics.refresh(state, &all, now, changed) {
            *self.errors.entry("metrics").or_default() += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::core::state::Phase;

    const T0: OffsetDateTime = datetime!(2026-11-29 12:00:00 UTC);

    fn snapshot(phase: Phase) -> Snapshot {
        Snapshot {
            instance_id: "i-1".into(),
            cluster: Some("jobs".into()),
            degraded: None,
            compute_environment: None,
            agent: AgentState {
                phase,
                ..AgentState::default()
            },
            updated_at: T0,
            heartbeat: Heartbeat::default(),
        }
    }

    fn read(dir: &Path) -> Snapshot {
        read_snapshot(dir).unwrap().unwrap()
    }

    #[test]
    fn a_heartbeat_moves_last_heard_but_not_the_last_change() {
        let dir = tempfile::tempdir().unwrap();
        let (mut records, state) = Records::open(dir.path(), "i-1", None).unwrap();
        assert_eq!(state, AgentState::default());
        let none = BTreeMap::new();
        assert!(records.save(snapshot(Phase::Watching), &none, T0));
        let later = T0 + time::Duration::seconds(30);
        records.tick(snapshot(Phase::Watching), &none, later);
        assert_eq!(read(dir.path()).heartbeat.last_heard, Some(T0), "not due");
        let due = T0 + time::Duration::seconds(60);
        records.tick(snapshot(Phase::Watching), &none, due);
        let on_disk = read(dir.path());
        assert_eq!(on_disk.heartbeat.last_heard, Some(due));
        assert_eq!(on_disk.heartbeat.heartbeat_seconds, Some(60));
        assert_eq!(on_disk.updated_at, T0, "nothing changed");

        // Restarted: the last change survives, and a change moves it.
        let (mut again, state) = Records::open(dir.path(), "i-1", None).unwrap();
        assert_eq!(state.phase, Phase::Watching);
        let next = due + time::Duration::seconds(1);
        again.tick(snapshot(Phase::Watching), &none, next);
        assert_eq!(read(dir.path()).updated_at, T0);
        again.tick(snapshot(Phase::Draining), &none, next);
        assert_eq!(read(dir.path()).updated_at, next);
    }

    #[test]
    fn invalid_content_is_moved_aside_and_other_errors_are_returned() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(dir.path());
        std::fs::write(&path, b"{\"phase\": ").unwrap();
        let (_, state) = Records::open(dir.path(), "i-1", None).unwrap();
        assert_eq!(state, AgentState::default());
        assert_eq!(
            std::fs::read(dir.path().join("state.json.unreadable")).unwrap(),
            b"{\"phase\": "
        );
        assert!(!path.exists());

        std::fs::create_dir(&path).unwrap();
        let err = Records::open(dir.path(), "i-1", None).unwrap_err();
        assert!(matches!(err, StateError::Read { .. }), "{err}");
        assert!(path.is_dir(), "left in place");
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("cannot read the state file {}: ", path.display())),
            "{message}"
        );
    }

    #[test]
    fn a_failed_save_is_retried_on_the_next_tick() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the state directory's parent should be: writes fail.
        let blocked = dir.path().join("blocked");
        std::fs::write(&blocked, b"").unwrap();
        let mut records = Records {
            dir: blocked.join("sub"),
            heartbeat: HEARTBEAT_INTERVAL,
            latest: None,
            changed_at: None,
            last_heard: None,
            unsaved: None,
            errors: BTreeMap::new(),
            metrics: None,
        };
        let none = BTreeMap::new();
        assert!(!records.save(snapshot(Phase::Draining), &none, T0));
        assert_eq!(records.problem(), Some("state not saved"));
        std::fs::remove_file(&blocked).unwrap();
        records.tick(snapshot(Phase::Draining), &none, T0);
        assert_eq!(records.problem(), None);
        let on_disk = read(&blocked.join("sub"));
        assert_eq!(on_disk.agent.phase, Phase::Draining);
        assert_eq!(on_disk.updated_at, T0);
    }
}
