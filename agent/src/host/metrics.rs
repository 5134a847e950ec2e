//! A Prometheus text-format file for node_exporter's textfile collector.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::host::atomic_file;
use blockwatch_core::decision::{AgentState, Phase};

/// The one directory the shipped unit lets blockwatch write metrics to
/// (`ReadWritePaths=-…`): node_exporter's textfile collector.
pub const TEXTFILE_DIRECTORY: &str = "/var/lib/node_exporter/textfile_collector";
/// New error counts are written at most this often (and at once when the
/// state changes), so that a source failing every poll is not a write loop.
const MIN_GAP: Duration = Duration::from_secs(10);

/// One metric family: its HELP and TYPE lines, then `(labels, value)` samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, i64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Renders the metrics; `errors` counts failures by source.
pub fn render(state: &AgentState, errors: &BTreeMap<&'static str, u64>) -> String {
    let mut out = String::new();
    let deadline = state.deadline.as_ref().map_or(0, |d| d.at.unix_timestamp());
    family(
        &mut out,
        "blockwatch_deadline_timestamp_seconds",
        "gauge",
        "When this instance ends (Unix time); 0 when no end is announced.",
        &[(String::new(), deadline)],
    );
    let phases = Phase::ALL.map(|phase| {
        (
            format!("{{phase=\"{}\"}}", phase.name()),
            i64::from(state.phase == phase),
        )
    });
    family(
        &mut out,
        "blockwatch_phase",
        "gauge",
        "The agent's phase (1 for the current one).",
        &phases,
    );
    family(
        &mut out,
        "blockwatch_drains_started_total",
        "counter",
        "Drains started.",
        &[(String::new(), count(state.drains_started))],
    );
    family(
        &mut out,
        "blockwatch_drains_completed_total",
        "counter",
        "Drains that ended with no task left.",
        &[(String::new(), count(state.drains_completed))],
    );
    family(
        &mut out,
        "blockwatch_checkpoint_timestamp_seconds",
        "gauge",
        "When opted-in jobs get their checkpoint signal for the end in force (Unix time); 0 when off or no end is announced.",
        &[(
            String::new(),
            state.checkpoint_at.map_or(0, |at| at.unix_timestamp()),
        )],
    );
    family(
        &mut out,
        "blockwatch_checkpoint_signals_total",
        "counter",
        "Checkpoint signals sent, one per container.",
        &[(String::new(), count(state.checkpoint_signals))],
    );
    let lifecycle = state.lifecycle.as_ref();
    family(
        &mut out,
        "blockwatch_lifecycle_heartbeats_total",
        "counter",
        "Auto Scaling lifecycle action heartbeats accepted for the termination in progress.",
        &[(
            String::new(),
            count(lifecycle.map_or(0, |l| u64::from(l.heartbeats))),
        )],
    );
    family(
        &mut out,
        "blockwatch_lifecycle_completed_timestamp_seconds",
        "gauge",
        "When Auto Scaling accepted CONTINUE for the termination lifecycle hook (Unix time); 0 until then.",
        &[(
            String::new(),
            lifecycle
                .and_then(|l| l.completed_at)
                .map_or(0, |at| at.unix_timestamp()),
        )],
    );
    let by_source: Vec<_> = errors
        .iter()
        .map(|(source, n)| (format!("{{source=\"{source}\"}}"), count(*n)))
        .collect();
    family(
        &mut out,
        "blockwatch_errors_total",
        "counter",
        "Failed reads or calls, by source.",
        &by_source,
    );
    out
}

pub fn write(path: &Path, text: &str) -> std::io::Result<()> {
    atomic_file::replace(path, text.as_bytes(), 0o644)
}

/// The metrics file of a running agent: rewritten when the state changes,
/// when the error counts change (at most every `MIN_GAP`), and every
/// `refresh` in any case, so that its mtime shows the agent is alive. Its
/// timers run on the monotonic clock: a wall-clock step neither stops the
/// file nor rewrites it on every poll.
#[derive(Debug)]
pub struct MetricsFile {
    path: PathBuf,
    refresh: Duration,
    /// What was last written (or tried), and when.
    written: Option<(String, Instant)>,
    failing: bool,
}

/// Metrics that are due, to be written off the async runtime.
#[derive(Debug)]
pub struct MetricsWrite {
    path: PathBuf,
    text: String,
    at: Instant,
}

impl MetricsWrite {
    /// Writes the file (with its fsyncs): blocking.
    pub fn perform(&self) -> std::io::Result<()> {
        write(&self.path, &self.text)
    }
}

impl MetricsFile {
    pub fn new(path: PathBuf, refresh: Duration) -> Self {
        Self {
            path,
            refresh,
            written: None,
            failing: false,
        }
    }

    /// The metrics to write at `at`, if due.
    pub fn plan(
        &self,
        state: &AgentState,
        errors: &BTreeMap<&'static str, u64>,
        at: Instant,
        state_changed: bool,
    ) -> Option<MetricsWrite> {
        let text = render(state, errors);
        let since = |gap: Duration| {
            self.written
                .as_ref()
                .is_none_or(|(_, written_at)| at.saturating_duration_since(*written_at) >= gap)
        };
        let differs = self.written.as_ref().is_none_or(|(old, _)| *old != text);
        let due =
            state_changed || since(self.refresh) || (differs && since(MIN_GAP.min(self.refresh)));
        due.then(|| MetricsWrite {
            path: self.path.clone(),
            text,
            at,
        })
    }

    /// Records how a planned write went; false when it failed (logged once
    /// until it works again).
    pub fn settle(&mut self, done: MetricsWrite, result: std::io::Result<()>) -> bool {
        // A failure is tried again at the next gap, not every poll.
        self.written = Some((done.text, done.at));
        match result {
            Ok(()) => {
                if self.failing {
                    log::info!("metrics written to {} again", self.path.display());
                    self.failing = false;
                }
                true
            }
            Err(err) => {
                if !self.failing {
                    log::warn!(
                        "cannot write metrics to {}: {err}; under blockwatch.service only {TEXTFILE_DIRECTORY}/ is writable for them (logged once until it works)",
                        self.path.display()
                    );
                    self.failing = true;
                }
                false
            }
        }
    }

    /// Plans, writes and settles at once (blocking).
    #[cfg(test)]
    fn refresh(
        &mut self,
        state: &AgentState,
        errors: &BTreeMap<&'static str, u64>,
        at: Instant,
        state_changed: bool,
    ) -> bool {
        match self.plan(state, errors, at, state_changed) {
            Some(due) => {
                let result = due.perform();
                self.settle(due, result)
            }
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn errors(n: u64) -> BTreeMap<&'static str, u64> {
        BTreeMap::from([("spot", n)])
    }

    #[test]
    fn the_lifecycle_hook_heartbeats_and_completion_are_rendered() {
        let started = time::macros::datetime!(2026-11-29 12:00 UTC);
        let hook = blockwatch_core::lifecycle_hook::LifecycleHook {
            group: "batch-asg".into(),
            name: "drain".into(),
            heartbeat_timeout: secs(60),
            global_timeout: None,
        };
        let state = AgentState {
            lifecycle: Some(blockwatch_core::lifecycle_hook::LifecycleAction {
                heartbeats: 3,
                completed_at: Some(started + time::Duration::minutes(2)),
                ..blockwatch_core::lifecycle_hook::LifecycleAction::new(hook, started)
            }),
            ..AgentState::default()
        };
        let text = render(&state, &BTreeMap::new());
        assert!(
            text.contains("blockwatch_lifecycle_heartbeats_total 3\n"),
            "{text}"
        );
        let completed = (started + time::Duration::minutes(2)).unix_timestamp();
        assert!(
            text.contains(&format!(
                "blockwatch_lifecycle_completed_timestamp_seconds {completed}\n"
            )),
            "{text}"
        );
        let idle = render(&AgentState::default(), &BTreeMap::new());
        assert!(
            idle.contains("blockwatch_lifecycle_heartbeats_total 0\n"),
            "{idle}"
        );
    }

    #[test]
    fn error_counts_reach_the_file_while_nothing_else_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blockwatch.prom");
        let mut file = MetricsFile::new(path.clone(), Duration::from_secs(60));
        let state = AgentState::default();
        let read = || std::fs::read_to_string(&path).unwrap();
        let t0 = Instant::now();
        assert!(file.refresh(&state, &errors(1), t0, true));
        assert!(read().contains("blockwatch_errors_total{source=\"spot\"} 1"));
        // A new count within the gap waits; after it, it is written.
        file.refresh(&state, &errors(2), t0 + secs(5), false);
        assert!(read().contains("{source=\"spot\"} 1"));
        file.refresh(&state, &errors(3), t0 + secs(10), false);
        assert!(read().contains("{source=\"spot\"} 3"), "{}", read());
        // The same content is rewritten only on the timer.
        std::fs::remove_file(&path).unwrap();
        file.refresh(&state, &errors(3), t0 + secs(59), false);
        assert!(!path.exists());
        file.refresh(&state, &errors(3), t0 + secs(70), false);
        assert!(path.exists());
    }

    #[test]
    fn an_unwritable_path_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"").unwrap();
        let mut file = MetricsFile::new(blocker.join("blockwatch.prom"), Duration::from_secs(60));
        assert!(!file.refresh(&AgentState::default(), &errors(0), Instant::now(), true));
    }
}
