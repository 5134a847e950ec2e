//! The state directory: what the agent has done, readable with no network.
//! (About 600 lines, a quarter of them its tests: the state file's rules
//! read best in one place.)
//!
//! `state.json` is what keeps a drain from being forgotten or repeated
//! across restarts, so it is never thrown away silently: only content that
//! is not a state (bad JSON, wrong shape) is moved aside, with a journal
//! line; any other read error stops `run` (exit 74) so that systemd retries.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::atomic_file;
use super::metrics::{MetricsFile, MetricsWrite};
use blockwatch_core::decision::AgentState;
use blockwatch_core::operator_view::{Heartbeat, Snapshot};

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

fn snapshot_bytes(snapshot: &Snapshot) -> io::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(snapshot).map_err(io::Error::other)?;
    bytes.push(b'\n');
    Ok(bytes)
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
///
/// A save or a tick is planned here on the async runtime ([`Records::plan_save`],
/// [`Records::plan_tick`]), written off it ([`RecordsWrite::perform`], which
/// fsyncs), then settled ([`Records::settle`]). The heartbeat's timer runs on
/// the monotonic clock: a wall-clock step neither stops it nor makes it fire
/// on every poll.
#[derive(Debug)]
pub struct Records {
    dir: PathBuf,
    heartbeat: Duration,
    /// The latest state handed in, saved or not, and when it last changed.
    latest: Option<AgentState>,
    changed_at: Option<OffsetDateTime>,
    /// When the state file was last written (monotonic).
    heard_at: Option<Instant>,
    /// Why the latest state is not on disk; retried every tick, logged once.
    unsaved: Option<String>,
    /// Failures of the files kept here, counted in the metrics.
    errors: BTreeMap<&'static str, u64>,
    metrics: Option<MetricsFile>,
}

/// The writes a save or a tick decided on, to be done off the async runtime.
#[derive(Debug)]
pub struct RecordsWrite {
    dir: PathBuf,
    /// The state file's bytes, when it is due.
    state: Option<io::Result<Vec<u8>>>,
    at: Instant,
    metrics: Option<MetricsWrite>,
}

/// A [`RecordsWrite`] done, with how each file went.
#[derive(Debug)]
pub struct RecordsWritten {
    write: RecordsWrite,
    state: Option<io::Result<()>>,
    metrics: Option<io::Result<()>>,
}

impl RecordsWrite {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.state.is_none() && self.metrics.is_none()
    }

    /// Writes the state file, then the metrics (with their fsyncs): blocking.
    pub fn perform(mut self) -> RecordsWritten {
        let state = self.state.take().map(|bytes| {
            bytes.and_then(|bytes| atomic_file::replace(&state_path(&self.dir), &bytes, 0o644))
        });
        let metrics = self.metrics.as_ref().map(MetricsWrite::perform);
        RecordsWritten {
            write: self,
            state,
            metrics,
        }
    }
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
            heard_at: None,
            unsaved: None,
            errors: BTreeMap::new(),
            metrics: metrics_file.map(|path| MetricsFile::new(path, heartbeat)),
        };
        let path = state_path(state_dir);
        let stored = match read_json::<Snapshot>(&path) {
            Ok(stored) => stored,
            Err(err) => {
                // Exiting would leave the lease unenforced for good (systemd
                // restarts into the same error); a drain decided again is
                // harmless (a second DRAINING or stop changes nothing).
                log::error!(
                    "cannot read the state file {}: {err}; going on with a fresh state in memory: a drain in progress is decided again from the current notices, and the lease is still enforced",
                    path.display()
                );
                return Ok((records, AgentState::default()));
            }
        };
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

    /// A state that changed: the state file (and the metrics) to write.
    /// `now` is what the file says; `at` times the heartbeat.
    pub fn plan_save(
        &mut self,
        snapshot: Snapshot,
        errors: &BTreeMap<&'static str, u64>,
        now: OffsetDateTime,
        at: Instant,
    ) -> RecordsWrite {
        let state = Some(self.prepare(snapshot, now));
        RecordsWrite {
            dir: self.dir.clone(),
            state,
            at,
            metrics: self.plan_metrics(errors, at, true),
        }
    }

    /// Once per poll: the heartbeat when due, a save that failed before, and
    /// the metrics when their errors changed or their timer is up. Never
    /// calls AWS.
    pub fn plan_tick(
        &mut self,
        snapshot: Snapshot,
        errors: &BTreeMap<&'static str, u64>,
        now: OffsetDateTime,
        at: Instant,
    ) -> RecordsWrite {
        let heartbeat_due = self
            .heard_at
            .is_none_or(|heard| at.saturating_duration_since(heard) >= self.heartbeat);
        let changed = self.latest.as_ref() != Some(&snapshot.agent);
        let state = (heartbeat_due || changed || self.unsaved.is_some())
            .then(|| self.prepare(snapshot, now));
        RecordsWrite {
            dir: self.dir.clone(),
            state,
            at,
            metrics: self.plan_metrics(errors, at, changed),
        }
    }

    /// Takes in how a planned write went; false when the state file was due
    /// and could not be written.
    pub fn settle(&mut self, written: RecordsWritten) -> bool {
        let RecordsWritten {
            write,
            state,
            metrics,
        } = written;
        if let (Some(metrics_file), Some(done), Some(result)) =
            (self.metrics.as_mut(), write.metrics, metrics)
        {
            if !metrics_file.settle(done, result) {
                *self.errors.entry("metrics").or_default() += 1;
            }
        }
        let path = state_path(&self.dir);
        match state {
            None => true,
            Some(Ok(())) => {
                self.heard_at = Some(write.at);
                if self.unsaved.take().is_some() {
                    log::info!(
                        "the state file {} is written again: decisions are recorded",
                        path.display()
                    );
                }
                true
            }
            Some(Err(err)) => {
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

    /// A planned write that never came back (its task panicked): the state
    /// counts as not saved, and is written again on the next tick.
    pub fn write_lost(&mut self, reason: &str) {
        *self.errors.entry("state").or_default() += 1;
        self.unsaved = Some(reason.to_owned());
    }

    /// A few words for the systemd STATUS line while the state is not saved.
    pub fn problem(&self) -> Option<&'static str> {
        self.unsaved.as_ref().map(|_| "state not saved")
    }

    /// The state file's bytes for `snapshot`, taking it as the latest state.
    fn prepare(&mut self, mut snapshot: Snapshot, now: OffsetDateTime) -> io::Result<Vec<u8>> {
        if self.latest.as_ref() != Some(&snapshot.agent) {
            self.latest = Some(snapshot.agent.clone());
            self.changed_at = Some(now);
        }
        snapshot.updated_at = self.changed_at.unwrap_or(now);
        snapshot.heartbeat = Heartbeat {
            last_heard: Some(now),
            heartbeat_seconds: Some(self.heartbeat.as_secs()),
        };
        snapshot_bytes(&snapshot)
    }

    fn plan_metrics(
        &self,
        errors: &BTreeMap<&'static str, u64>,
        at: Instant,
        changed: bool,
    ) -> Option<MetricsWrite> {
        let metrics = self.metrics.as_ref()?;
        let state = self.latest.as_ref()?;
        let mut all = errors.clone();
        for (source, n) in &self.errors {
            *all.entry(source).or_default() += n;
        }
        metrics.plan(state, &all, at, changed)
    }

    /// Plans, writes and settles a save at once (blocking).
    #[cfg(test)]
    fn save(
        &mut self,
        snapshot: Snapshot,
        errors: &BTreeMap<&'static str, u64>,
        now: OffsetDateTime,
        at: Instant,
    ) -> bool {
        let write = self.plan_save(snapshot, errors, now, at);
        self.settle(write.perform())
    }

    /// Plans, writes and settles a tick at once (blocking).
    #[cfg(test)]
    fn tick(
        &mut self,
        snapshot: Snapshot,
        errors: &BTreeMap<&'static str, u64>,
        now: OffsetDateTime,
        at: Instant,
    ) {
        let write = self.plan_tick(snapshot, errors, now, at);
        self.settle(write.perform());
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use blockwatch_core::decision::Phase;

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

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn the_heartbeat_follows_the_monotonic_clock_through_wall_clock_steps() {
        let dir = tempfile::tempdir().unwrap();
        let (mut records, _) = Records::open(dir.path(), "i-1", None).unwrap();
        let none = BTreeMap::new();
        let t0 = Instant::now();
        assert!(records.save(snapshot(Phase::Watching), &none, T0, t0));
        let heard = || read(dir.path()).heartbeat.last_heard;

        // The wall clock steps a day forward, 1 s later: no beat before its time.
        let day = time::Duration::days(1);
        records.tick(snapshot(Phase::Watching), &none, T0 + day, t0 + secs(1));
        assert_eq!(heard(), Some(T0), "a forward step is not a heartbeat");

        // Then a day back (to before the last beat): it still beats on time.
        let back = T0 - time::Duration::seconds(10);
        records.tick(snapshot(Phase::Watching), &none, back, t0 + secs(59));
        assert_eq!(heard(), Some(T0), "not due yet");
        records.tick(snapshot(Phase::Watching), &none, back, t0 + secs(60));
        assert_eq!(
            heard(),
            Some(back),
            "a backward step does not stop the heartbeat"
        );
        records.tick(snapshot(Phase::Watching), &none, back + day, t0 + secs(61));
        assert_eq!(heard(), Some(back), "nor makes it beat on every poll");
    }

    #[test]
    fn a_heartbeat_moves_last_heard_but_not_the_last_change() {
        let dir = tempfile::tempdir().unwrap();
        let (mut records, state) = Records::open(dir.path(), "i-1", None).unwrap();
        assert_eq!(state, AgentState::default());
        let none = BTreeMap::new();
        let t0 = Instant::now();
        assert!(records.save(snapshot(Phase::Watching), &none, T0, t0));
        let later = T0 + time::Duration::seconds(30);
        records.tick(snapshot(Phase::Watching), &none, later, t0 + secs(30));
        assert_eq!(read(dir.path()).heartbeat.last_heard, Some(T0), "not due");
        let due = T0 + time::Duration::seconds(60);
        records.tick(snapshot(Phase::Watching), &none, due, t0 + secs(60));
        let on_disk = read(dir.path());
        assert_eq!(on_disk.heartbeat.last_heard, Some(due));
        assert_eq!(on_disk.heartbeat.heartbeat_seconds, Some(60));
        assert_eq!(on_disk.updated_at, T0, "nothing changed");

        // Restarted: the last change survives, and a change moves it.
        let (mut again, state) = Records::open(dir.path(), "i-1", None).unwrap();
        assert_eq!(state.phase, Phase::Watching);
        let next = due + time::Duration::seconds(1);
        again.tick(snapshot(Phase::Watching), &none, next, t0 + secs(61));
        assert_eq!(read(dir.path()).updated_at, T0);
        again.tick(snapshot(Phase::Draining), &none, next, t0 + secs(61));
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

        // Unreadable (EISDIR): a fresh state in memory, never an exit that
        // would leave the lease unenforced; the path is left in place.
        std::fs::create_dir(&path).unwrap();
        let (_, state) = Records::open(dir.path(), "i-1", None).unwrap();
        assert_eq!(state, AgentState::default());
        assert!(path.is_dir(), "left in place");
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
            heard_at: None,
            unsaved: None,
            errors: BTreeMap::new(),
            metrics: None,
        };
        let none = BTreeMap::new();
        let t0 = Instant::now();
        assert!(!records.save(snapshot(Phase::Draining), &none, T0, t0));
        assert_eq!(records.problem(), Some("state not saved"));
        std::fs::remove_file(&blocked).unwrap();
        records.tick(snapshot(Phase::Draining), &none, T0, t0);
        assert_eq!(records.problem(), None);
        let on_disk = read(&blocked.join("sub"));
        assert_eq!(on_disk.agent.phase, Phase::Draining);
        assert_eq!(on_disk.updated_at, T0);
    }
}
