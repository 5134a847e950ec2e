//! What the demo and the benchmarks share: they narrate on stdout and end
//! with an exit code that says whether they ran through.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// One line of the narration, on stdout.
#[allow(clippy::print_stdout)]
pub fn say(text: &str) {
    println!("{text}");
}

/// The exit code of a script whose run gave `outcome`; a failure is said on
/// stderr after `what`.
pub fn finish(what: &str, outcome: Result<(), String>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{what}: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The agent binary a benchmark measures: `arg`, else the release build.
pub fn agent_binary_or_release(arg: Option<String>) -> PathBuf {
    arg.map_or_else(|| PathBuf::from("target/release/blockwatch"), PathBuf::from)
}

/// `blockwatch run` with its config, state and deadline files in `dir`, and
/// no ECS agent to ask (nothing listens on port 9).
pub fn run_args_in(dir: &Path) -> Vec<OsString> {
    vec![
        "run".into(),
        "--ecs-introspection-url".into(),
        "http://127.0.0.1:9/v1/metadata".into(),
        "--config".into(),
        dir.join("blockwatch.toml").into(),
        "--state-dir".into(),
        dir.join("state").into(),
        "--deadline-dir".into(),
        dir.join("run").into(),
    ]
}
