//! Powering off once drained. The command is configurable so tests (and
//! operators) can substitute something harmless.

/// Runs `command` with `/bin/sh -c`; returns its exit status as text on failure.
pub async fn run(command: &str) -> Result<(), String> {
    let status = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .status()
        .await
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} exited with {status}"))
    }
}
