//! A Prometheus text-format file for node_exporter's textfile collector.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use crate::core::state::{AgentState, Phase};
use crate::host::atomic_file;

/// Renders the metrics; `errors` counts failures by source.
pub fn render(state: &AgentState, errors: &BTreeMap<&'static str, u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# HELP blockwatch_deadline_timestamp_seconds When this instance ends (Unix time); 0 when no end is announced.");
    let _ = writeln!(out, "# TYPE blockwatch_deadline_timestamp_seconds gauge");
    let deadline = state.deadline.as_ref().map_or(0, |d| d.at.unix_timestamp());
    let _ = writeln!(out, "blockwatch_deadline_timestamp_seconds {deadline}");
    let _ = writeln!(
        out,
        "# HELP blockwatch_phase The agent's phase (1 for the current one)."
    );
    let _ = writeln!(out, "# TYPE blockwatch_phase gauge");
    for phase in [
        Phase::Joining,
        Phase::Watching,
        Phase::Draining,
        Phase::Drained,
    ] {
        let _ = writeln!(
            out,
            "blockwatch_phase{{phase=\"{}\"}} {}",
            phase.name(),
            u8::from(state.phase == phase)
        );
    }
    let _ = writeln!(
        out,
        "# HELP blockwatch_drains_started_total Drains started."
    );
    let _ = writeln!(out, "# TYPE blockwatch_drains_started_total counter");
    let _ = writeln!(
        out,
        "blockwatch_drains_started_total {}",
        state.drains_started
    );
    let _ = writeln!(
        out,
        "# HELP blockwatch_drains_completed_total Drains that ended with no task left."
    );
    let _ = writeln!(out, "# TYPE blockwatch_drains_completed_total counter");
    let _ = writeln!(
        out,
        "blockwatch_drains_completed_total {}",
        state.drains_completed
    );
    let _ = writeln!(
        out,
        "# HELP blockwatch_errors_total Failed reads or calls, by source."
    );
    let _ = writeln!(out, "# TYPE blockwatch_errors_total counter");
    for (source, count) in errors {
        let _ = writeln!(
            out,
            "blockwatch_errors_total{{source=\"{source}\"}} {count}"
        );
    }
    out
}

pub fn write(path: &Path, text: &str) -> std::io::Result<()> {
    atomic_file::replace(path, text.as_bytes(), 0o644)
}
