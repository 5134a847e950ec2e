//! `run --dry-run` never writes where a live agent reads. Its state file and
//! deadline files go to a fresh private directory; the live state directory
//! is only read, to start from a copy of what the live agent knows
//! (`state.json`, `join.json`), so that the dry run shows what the live agent
//! would do next. A dry run takes no lock: it shares nothing with a live
//! agent.

use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::entropy::random_u64;
use super::state_dir::{join_record_path, state_path};

/// Where a dry run keeps its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRunDirs {
    pub state_dir: PathBuf,
    pub deadline_dir: PathBuf,
}

/// Why a dry run has nowhere to write.
#[derive(Debug, thiserror::Error)]
#[error("cannot make a private directory for the dry run under {}: {source}", parent.display())]
pub struct NoPrivateDir {
    pub parent: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Makes a fresh private directory under the system's temp directory
/// (`TMPDIR`; a private one under blockwatch.service), copies the live state
/// into it, and logs once where everything is.
pub fn prepare(
    live_state_dir: &Path,
    live_deadline_dir: &Path,
) -> Result<DryRunDirs, NoPrivateDir> {
    let parent = std::env::temp_dir();
    let root = make_private_dir(&parent).map_err(|source| NoPrivateDir {
        parent: parent.clone(),
        source,
    })?;
    let dirs = DryRunDirs {
        state_dir: root.join("state"),
        deadline_dir: root.join("deadline"),
    };
    DirBuilder::new()
        .mode(0o755)
        .create(&dirs.state_dir)
        .map_err(|source| NoPrivateDir {
            parent: parent.clone(),
            source,
        })?;
    let copied: Vec<String> = [state_path, join_record_path]
        .iter()
        .filter_map(|path_in| copy(&path_in(live_state_dir), &path_in(&dirs.state_dir)))
        .collect();
    let started_from = if copied.is_empty() {
        "nothing there to start from".to_owned()
    } else {
        format!("starting from a copy of its {}", copied.join(" and "))
    };
    log::info!(
        "dry run: state kept in {} and deadline files in {}; the live state directory {} ({started_from}) and deadline directory {} are never written. See it with: blockwatch status --state-dir {}",
        dirs.state_dir.display(),
        dirs.deadline_dir.display(),
        live_state_dir.display(),
        live_deadline_dir.display(),
        dirs.state_dir.display()
    );
    Ok(dirs)
}

/// A new directory, 0700, that no other process chose: the name has our pid
/// and a random part, and creating it fails if it exists.
fn make_private_dir(parent: &Path) -> io::Result<PathBuf> {
    let mut last = None;
    for _ in 0..8 {
        let dir = parent.join(format!(
            "blockwatch-dry-run-{}-{:08x}",
            std::process::id(),
            random_u64() & 0xffff_ffff
        ));
        match DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => last = Some(err),
            Err(err) => return Err(err),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free name")))
}

/// Copies one live file, read only; its name when copied. A file that
/// cannot be read is logged, and the dry run starts without it.
fn copy(from: &Path, to: &Path) -> Option<String> {
    let name = from.file_name()?.to_string_lossy().into_owned();
    match std::fs::read(from) {
        Ok(bytes) => match std::fs::write(to, bytes) {
            Ok(()) => Some(name),
            Err(err) => {
                log::warn!(
                    "dry run: cannot copy {} to {}: {err}; starting without it",
                    from.display(),
                    to.display()
                );
                None
            }
        },
        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
        Err(err) => {
            log::warn!(
                "dry run: cannot read {}: {err}; starting without it",
                from.display()
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_dry_run_works_on_a_private_copy_of_the_live_state() {
        let live = tempfile::tempdir().unwrap();
        std::fs::write(state_path(live.path()), b"{\"live\": 1}\n").unwrap();
        let deadline = live.path().join("run");
        let dirs = prepare(live.path(), &deadline).unwrap();
        assert!(!dirs.state_dir.starts_with(live.path()));
        assert!(!dirs.deadline_dir.starts_with(live.path()));
        let again = prepare(live.path(), &deadline).unwrap();
        assert_ne!(dirs, again, "fresh each time");
        std::fs::remove_dir_all(again.state_dir.parent().unwrap()).unwrap();
        assert_eq!(
            std::fs::read(state_path(&dirs.state_dir)).unwrap(),
            b"{\"live\": 1}\n"
        );
        assert!(!join_record_path(&dirs.state_dir).exists());
        let root = dirs.state_dir.parent().unwrap();
        let mode = std::fs::metadata(root).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::remove_dir_all(root).unwrap();
    }
}
