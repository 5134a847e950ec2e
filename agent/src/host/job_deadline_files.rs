//! Writes the deadline files a job reads (`deadline.json`, `deadline`) when
//! what they say changes. A failure is logged once and retried every tick;
//! it never stops the agent. The store plans the writes on the async
//! runtime and does them off it ([`DeadlineWrite::perform`] fsyncs).

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use crate::host::atomic_file;
use blockwatch_core::decision::AgentState;
use blockwatch_core::job_deadline::DeadlineView;

/// Where `blockwatch run` keeps the deadline files by default.
pub const DEFAULT_DEADLINE_DIR: &str = "/run/blockwatch";
/// Readable by every user, and so by any job that mounts the directory.
const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;
const JSON_FILE: &str = "deadline.json";
const PLAIN_FILE: &str = "deadline";

#[derive(Debug)]
pub struct DeadlineFiles {
    dir: PathBuf,
    instance_id: String,
    /// What the files say now; `None` until they are written.
    written: Option<DeadlineView>,
    /// Why the last write failed, while it fails: logged once.
    failing: Option<String>,
}

impl DeadlineFiles {
    pub fn new(dir: PathBuf, instance_id: &str) -> Self {
        Self {
            dir,
            instance_id: instance_id.to_owned(),
            written: None,
            failing: None,
        }
    }

    #[cfg(test)]
    fn json_path(&self) -> PathBuf {
        self.dir.join(JSON_FILE)
    }

    #[cfg(test)]
    fn plain_path(&self) -> PathBuf {
        self.dir.join(PLAIN_FILE)
    }

    /// The files to write when their content (other than `updated_at`)
    /// differs from what was last written, or when the last write failed.
    pub fn plan(&self, state: &AgentState, now: OffsetDateTime) -> Option<DeadlineWrite> {
        let view = DeadlineView::of(&self.instance_id, state);
        if self.written.as_ref() == Some(&view) {
            return None;
        }
        Some(DeadlineWrite {
            dir: self.dir.clone(),
            json: view.json(now),
            plain: view.plain(),
            view,
        })
    }

    /// Takes in how a planned write went: a failure is logged once and
    /// retried at the next plan.
    pub fn settle(&mut self, done: DeadlineWrite, result: io::Result<()>) {
        match result {
            Ok(()) => {
                if self.failing.take().is_some() {
                    log::info!(
                        "the deadline files in {} are written again",
                        self.dir.display()
                    );
                }
                self.written = Some(done.view);
            }
            Err(err) => {
                if self.failing.is_none() {
                    log::error!(
                        "cannot write the deadline files in {}: {err}; jobs cannot read the deadline there, blockwatch keeps watching and draining (retrying on every poll; logged once)",
                        self.dir.display()
                    );
                }
                self.failing = Some(err.to_string());
            }
        }
    }

    /// Plans, writes and settles at once (blocking).
    #[cfg(test)]
    fn follow(&mut self, state: &AgentState, now: OffsetDateTime) {
        if let Some(due) = self.plan(state, now) {
            let result = due.perform();
            self.settle(due, result);
        }
    }
}

/// Deadline files that are due, to be written off the async runtime.
#[derive(Debug)]
pub struct DeadlineWrite {
    dir: PathBuf,
    json: Vec<u8>,
    plain: Vec<u8>,
    view: DeadlineView,
}

impl DeadlineWrite {
    /// Writes both files (with their fsyncs): blocking.
    pub fn perform(&self) -> io::Result<()> {
        make_dir(&self.dir)?;
        // The JSON first: a reader that sees the plain file changed finds
        // the JSON already saying so.
        atomic_file::replace(&self.dir.join(JSON_FILE), &self.json, FILE_MODE)?;
        atomic_file::replace(&self.dir.join(PLAIN_FILE), &self.plain, FILE_MODE)
    }
}

/// Creates `dir` (and its parents) 0755, and gives an existing one the read
/// and search bits a 0755 directory has when the umask (or an operator) left
/// them out, so jobs reach the files. A directory others may write to (group
/// or world, sticky or not) is set to 0755, since anyone who can write there
/// can replace the files jobs trust; if it cannot be, the files are not
/// written.
fn make_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let mode = fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
            .map(|()| {
                log::warn!(
                    "the deadline directory {} was writable by others (mode {mode:04o}), who could replace the files jobs read; set it to {DIR_MODE:04o}",
                    dir.display()
                );
            })
            .map_err(|err| {
                io::Error::new(
                    err.kind(),
                    format!(
                        "it is writable by others (mode {mode:04o}) and cannot be set to {DIR_MODE:04o} ({err}); not writing files there that others could replace"
                    ),
                )
            });
    }
    if mode & DIR_MODE != DIR_MODE {
        fs::set_permissions(dir, Permissions::from_mode(mode | DIR_MODE))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use blockwatch_core::decision::Phase;

    #[test]
    fn writes_once_per_change_and_retries_a_failed_write() -> io::Result<()> {
        let root = tempfile::tempdir()?;
        // A file where the directory must go makes the write fail.
        let blocked = root.path().join("run");
        fs::write(&blocked, b"")?;
        let mut files = DeadlineFiles::new(blocked.join("blockwatch"), "i-1");
        let state = AgentState {
            phase: Phase::Watching,
            ..AgentState::default()
        };
        files.follow(&state, datetime!(2026-11-30 12:00:00 UTC));
        assert!(files.failing.is_some());
        fs::remove_file(&blocked)?;
        files.follow(&state, datetime!(2026-11-30 12:00:01 UTC));
        assert!(files.failing.is_none());
        let first = fs::read(files.json_path())?;
        assert_eq!(fs::read(files.plain_path())?, b"");
        // Same content, a later time: not rewritten.
        files.follow(&state, datetime!(2026-11-30 12:00:05 UTC));
        assert_eq!(fs::read(files.json_path())?, first);
        let dir_mode = fs::metadata(blocked.join("blockwatch"))?
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o755);
        Ok(())
    }

    #[test]
    fn a_directory_others_may_write_is_set_to_0755() -> io::Result<()> {
        let state = AgentState::default();
        for mode in [0o777, 0o1777, 0o775, 0o757] {
            let root = tempfile::tempdir()?;
            let dir = root.path().join("blockwatch");
            fs::create_dir(&dir)?;
            fs::set_permissions(&dir, Permissions::from_mode(mode))?;
            let mut files = DeadlineFiles::new(dir.clone(), "i-1");
            files.follow(&state, datetime!(2026-11-30 12:00:00 UTC));
            assert!(files.failing.is_none(), "{:?}", files.failing);
            let now = fs::metadata(&dir)?.permissions().mode() & 0o7777;
            assert_eq!(now, 0o755, "from {mode:04o}");
            assert!(files.json_path().exists());
        }
        Ok(())
    }
}
