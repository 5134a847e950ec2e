//! A Prometheus text-format file for node_exporter's textfile collector.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use crate::core::state::{AgentState, Phase};
use crate::host::atomic_file;

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
    let phases = [
        Phase::Joining,
        Phase::Watching,
        Phase::Draining,
        Phase::Drained,
    ]
    .map(|phase| {
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
