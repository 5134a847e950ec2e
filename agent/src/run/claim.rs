//! Before `run` reads or writes its state: a live run takes the state
//! directory's lock, a dry run gets private directories instead.

use super::request::RunRequest;
use crate::exit::AgentError;
use crate::host::dry_run;
use crate::host::lock::StateDirLock;
use crate::sources::config_file;

/// A live run takes the state directory's lock; a dry run gets private
/// directories instead and leaves the live ones (and their lock) alone.
pub fn claim_state(request: RunRequest) -> Result<(RunRequest, Option<StateDirLock>), AgentError> {
    let unusable_but_dry = unusable_config_says_dry_run(&request);
    if request.dry_run || unusable_but_dry || config_asks_for_a_dry_run(&request) {
        let private = dry_run::prepare(&request.state_dir, &request.deadline_dir)?;
        let request = RunRequest {
            state_dir: private.state_dir,
            deadline_dir: private.deadline_dir,
            // A config `run` cannot use leaves the built-in defaults, which
            // are live: a file that asks for a dry run stays one.
            dry_run: request.dry_run || unusable_but_dry,
            ..request
        };
        return Ok((request, None));
    }
    let lock = StateDirLock::acquire(&request.state_dir)?;
    Ok((request, lock))
}

/// `dry_run = true` in the config file. Start-up reads the file again and
/// reports its errors; an unusable file here means a live run, which takes
/// the lock (the safe side).
fn config_asks_for_a_dry_run(request: &RunRequest) -> bool {
    matches!(
        config_file::load(&request.config_path, request.config_path_explicit),
        Ok(Some(file)) if file.dry_run == Some(true)
    )
}

/// A config file that cannot be used but has a `dry_run = true` line: its
/// author asked for a dry run, and a degraded `run` must not act for real.
fn unusable_config_says_dry_run(request: &RunRequest) -> bool {
    if config_file::load(&request.config_path, request.config_path_explicit).is_ok() {
        return false;
    }
    let text = std::fs::read_to_string(&request.config_path).unwrap_or_default();
    text.lines().any(|line| {
        let line = line.split('#').next().unwrap_or_default();
        matches!(line.split_once('='), Some((key, value)) if key.trim() == "dry_run" && value.trim() == "true")
    })
}
