//! Powering off. The command is configurable so tests (and operators) can
//! substitute something harmless.

use std::time::Duration;

/// The longest a power-off command may take before it counts as failed (and
/// is killed): `systemctl --no-block poweroff` returns as soon as the job is
/// queued.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// Runs `command` with `/bin/sh -c`; returns its exit status as text on failure.
pub async fn run(command: &str) -> Result<(), String> {
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    let status = tokio::time::timeout(COMMAND_LIMIT, child.wait())
        .await
        .map_err(|_| {
            format!(
                "{command:?} did not finish within {}",
                humantime::format_duration(COMMAND_LIMIT)
            )
        })?
        .map_err(|e| format!("cannot wait for {command:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} exited with {status}"))
    }
}
