//! One agent per state directory: `blockwatch run` holds an exclusive
//! `flock` on `<state-dir>/run.lock` for its whole life. Two agents on one
//! directory would each resume, record and act on the other's drain.
//!
//! The kernel drops the lock with its holder, so a killed agent never
//! leaves a stale one. The file holds the holder's pid, for the message a
//! second agent gives.

use std::fs::{DirBuilder, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const LOCK_FILE: &str = "run.lock";

/// Held while it lives; dropping it (or exiting) releases the lock.
#[derive(Debug)]
pub struct StateDirLock {
    _file: File,
}

/// Another agent holds the state directory.
#[derive(Debug, thiserror::Error)]
#[error(
    "another blockwatch run ({}) holds the state directory {} (lock {}); only one agent may run per state directory",
    holder.map_or_else(|| "pid not yet written".to_owned(), |pid| format!("pid {pid}")),
    dir.display(),
    lock.display()
)]
pub struct StateDirBusy {
    pub dir: PathBuf,
    pub lock: PathBuf,
    /// The holder's pid, as it wrote it.
    pub holder: Option<u32>,
}

pub fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join(LOCK_FILE)
}

impl StateDirLock {
    /// Takes the lock at once, or says who holds it. `Ok(None)` when the lock
    /// cannot be taken for another reason (a read-only or full disk): that
    /// is logged, and the agent runs unguarded rather than leave the
    /// instance unwatched.
    pub fn acquire(state_dir: &Path) -> Result<Option<Self>, StateDirBusy> {
        let path = lock_path(state_dir);
        let mut file = match open(state_dir, &path) {
            Ok(file) => file,
            Err(err) => {
                unguarded(&path, &err);
                return Ok(None);
            }
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StateDirBusy {
                    dir: state_dir.to_owned(),
                    holder: holder(&mut file),
                    lock: path,
                });
            }
            Err(TryLockError::Error(err)) => {
                unguarded(&path, &err);
                return Ok(None);
            }
        }
        if let Err(err) = write_pid(&mut file) {
            log::warn!(
                "holding {} but cannot write our pid into it: {err}; a second agent will not name us",
                path.display()
            );
        }
        Ok(Some(Self { _file: file }))
    }
}

/// Read-write (created 0644) when it can be; else an existing lock file
/// read-only, which `flock` takes just as well.
fn open(state_dir: &Path, path: &Path) -> io::Result<File> {
    let writable = DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(state_dir)
        .and_then(|()| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(path)
        });
    writable.or_else(|err| File::open(path).map_err(|_| err))
}

fn unguarded(path: &Path, err: &io::Error) {
    log::error!(
        "cannot lock {}: {err}; running without the one-agent-per-state-directory guard",
        path.display()
    );
}

fn write_pid(file: &mut File) -> io::Result<()> {
    file.set_len(0)?;
    file.rewind()?;
    file.write_all(format!("{}\n", std::process::id()).as_bytes())?;
    file.sync_data()
}

fn holder(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_and_a_released_one_is_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("var/lib/blockwatch");
        let first = StateDirLock::acquire(&state_dir).unwrap().unwrap();
        let busy = StateDirLock::acquire(&state_dir).unwrap_err();
        assert_eq!(busy.holder, Some(std::process::id()));
        let message = busy.to_string();
        assert!(
            message.contains(&format!("pid {}", std::process::id()))
                && message.contains(&state_dir.display().to_string()),
            "{message}"
        );
        drop(first);
        assert!(StateDirLock::acquire(&state_dir).unwrap().is_some());
    }
}
