//! Writing `ECS_CLUSTER` into ecs.config on disk.
//!
//! ecs.config may hold secrets (`ECS_ENGINE_AUTH_DATA`), so a rewrite keeps
//! the file's mode, owner and group; only a new file gets 0644. Other lines
//! keep their bytes. A symlinked ecs.config is written through: the link's
//! final target is replaced atomically and the link stays a link. A link to
//! nothing, or a path that is not a regular file, is refused.

use std::fs::{self, Metadata};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::host::atomic_file;
use blockwatch_core::cluster::ClusterName;
use blockwatch_core::ecs_config_text::{
    current_cluster, set_keys, Rewrite, CLUSTER_KEY, STOP_TIMEOUT_KEY,
};

pub const DEFAULT_ECS_CONFIG_PATH: &str = "/etc/ecs/ecs.config";
/// The mode of an ecs.config that blockwatch creates.
const NEW_FILE_MODE: u32 = 0o644;

/// What the writer did, or would do in a dry run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated { previous_cluster: Option<String> },
    AlreadyCorrect,
}

/// The plan for one ecs.config: its current and its wanted content.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The path as given (`--ecs-config`).
    pub path: PathBuf,
    /// The file that is read and replaced: `path`, or its symlink's target.
    pub target: PathBuf,
    existing: Option<Existing>,
    rewrite: Rewrite,
}

#[derive(Debug, Clone)]
struct Existing {
    bytes: Vec<u8>,
    mode: u32,
    uid: u32,
    gid: u32,
}

/// Why ecs.config could not be read or written; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{path}: could not {action}: {source}")]
    Io {
        path: String,
        action: &'static str,
        source: io::Error,
    },
    #[error("{path} is a symlink to {target}, which does not exist; refusing to create a file through a dangling link (create the target, or replace the link with a file)")]
    DanglingLink { path: String, target: String },
    #[error("{path} is {kind}, not a regular file; refusing to replace it")]
    NotAFile { path: String, kind: &'static str },
}

fn io_error(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> WriteError {
    let path = path.display().to_string();
    move |source| WriteError::Io {
        path,
        action,
        source,
    }
}

fn kind_of(meta: &Metadata) -> &'static str {
    let kind = meta.file_type();
    if kind.is_dir() {
        "a directory"
    } else if kind.is_symlink() {
        "a symlink"
    } else {
        "a special file"
    }
}

/// The file to read and replace for `path`: itself, or the final target of
/// a symlink. `None` when nothing exists there yet.
fn resolve_target(path: &Path) -> Result<(PathBuf, Option<Metadata>), WriteError> {
    let link = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok((path.to_owned(), None)),
        Err(source) => return Err(io_error(path, "inspect it")(source)),
    };
    let target = if link.file_type().is_symlink() {
        match fs::canonicalize(path) {
            Ok(target) => target,
            Err(err) if err.kind() == ErrorKind::NotFound => {
                let target = fs::read_link(path).map_err(io_error(path, "read the symlink"))?;
                return Err(WriteError::DanglingLink {
                    path: path.display().to_string(),
                    target: blockwatch_core::escape::escape(&target.display().to_string()),
                });
            }
            Err(source) => return Err(io_error(path, "resolve the symlink")(source)),
        }
    } else {
        path.to_owned()
    };
    let meta = fs::metadata(&target).map_err(io_error(&target, "inspect it"))?;
    if !meta.is_file() {
        return Err(WriteError::NotAFile {
            path: target.display().to_string(),
            kind: kind_of(&meta),
        });
    }
    Ok((target, Some(meta)))
}

impl Plan {
    /// Reads the file (absent is fine) and works out its new content.
    pub fn new(path: &Path, cluster: &ClusterName) -> Result<Self, WriteError> {
        Self::with_stop_timeout(path, cluster, None)
    }

    /// As [`Plan::new`], also setting `ECS_CONTAINER_STOP_TIMEOUT` when
    /// given (one write for both keys); when not, a hand-set line stays.
    pub fn with_stop_timeout(
        path: &Path,
        cluster: &ClusterName,
        stop_timeout: Option<&str>,
    ) -> Result<Self, WriteError> {
        let (target, meta) = resolve_target(path)?;
        let existing = match meta {
            None => None,
            Some(meta) => Some(Existing {
                bytes: fs::read(&target).map_err(io_error(&target, "read it"))?,
                mode: meta.permissions().mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
            }),
        };
        let mut wanted = vec![(CLUSTER_KEY, cluster.as_str())];
        wanted.extend(stop_timeout.map(|value| (STOP_TIMEOUT_KEY, value)));
        let rewrite = set_keys(existing.as_ref().map(|e| e.bytes.as_slice()), &wanted);
        Ok(Self {
            path: path.to_owned(),
            target,
            existing,
            rewrite,
        })
    }

    pub fn outcome(&self) -> Outcome {
        match (&self.existing, &self.rewrite) {
            (_, Rewrite::Unchanged) => Outcome::AlreadyCorrect,
            (None, Rewrite::Replace(_)) => Outcome::Created,
            (Some(old), Rewrite::Replace(_)) => Outcome::Updated {
                previous_cluster: current_cluster(&old.bytes),
            },
        }
    }

    /// The full content the file will have.
    pub fn content(&self) -> &[u8] {
        match &self.rewrite {
            Rewrite::Replace(bytes) => bytes,
            Rewrite::Unchanged => self
                .existing
                .as_ref()
                .map(|e| e.bytes.as_slice())
                .unwrap_or_default(),
        }
    }

    /// Writes the file atomically with its old mode, owner and group, unless
    /// it is already right; a file that is already right is not touched.
    pub fn apply(&self) -> Result<Outcome, WriteError> {
        if let Rewrite::Replace(bytes) = &self.rewrite {
            let (mode, owner) = match &self.existing {
                Some(old) => (old.mode, Some((old.uid, old.gid))),
                None => (NEW_FILE_MODE, None),
            };
            atomic_file::replace_owned(&self.target, bytes, mode, owner)
                .map_err(io_error(&self.target, "write it"))?;
        }
        Ok(self.outcome())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::Permissions;

    fn cluster(name: &str) -> ClusterName {
        ClusterName::parse(name).unwrap_or_else(|e| panic!("{e}"))
    }

    type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

    /// An `ecs.config` in a fresh directory holding `contents`, with `mode`
    /// if given; the directory lives as long as the returned guard.
    fn ecs_config(contents: &str, mode: Option<u32>) -> TestResult<(tempfile::TempDir, PathBuf)> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("ecs.config");
        fs::write(&path, contents)?;
        if let Some(mode) = mode {
            fs::set_permissions(&path, Permissions::from_mode(mode))?;
        }
        Ok((dir, path))
    }

    #[test]
    fn second_apply_does_not_touch_the_file() -> Result<(), Box<dyn std::error::Error>> {
        let (_dir, path) = ecs_config("X=1\r\nECS_CLUSTER=\"old\"\r\n", None)?;
        let first = Plan::new(&path, &cluster("new"))?.apply()?;
        assert_eq!(
            first,
            Outcome::Updated {
                previous_cluster: Some("\"old\"".into())
            }
        );
        let inode = fs::metadata(&path)?.ino();
        assert_eq!(
            Plan::new(&path, &cluster("new"))?.apply()?,
            Outcome::AlreadyCorrect
        );
        assert_eq!(fs::metadata(&path)?.ino(), inode, "not rewritten");
        assert_eq!(fs::read_to_string(&path)?, "X=1\nECS_CLUSTER=new\n");
        Ok(())
    }

    #[test]
    fn a_right_file_keeps_its_mode() -> Result<(), Box<dyn std::error::Error>> {
        let (_dir, path) = ecs_config("ECS_CLUSTER=c\n", Some(0o600))?;
        assert_eq!(
            Plan::new(&path, &cluster("c"))?.apply()?,
            Outcome::AlreadyCorrect
        );
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        Ok(())
    }

    #[test]
    fn a_rewritten_file_keeps_its_mode_and_a_new_one_gets_0644(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let (dir, path) = ecs_config("ECS_ENGINE_AUTH_DATA={}\n", Some(0o640))?;
        Plan::new(&path, &cluster("c"))?.apply()?;
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o7777, 0o640);

        let fresh = dir.path().join("new.config");
        assert_eq!(Plan::new(&fresh, &cluster("c"))?.apply()?, Outcome::Created);
        assert_eq!(fs::metadata(&fresh)?.permissions().mode() & 0o7777, 0o644);
        Ok(())
    }

    #[test]
    fn a_symlink_is_written_through_and_stays_a_link() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let real = dir.path().join("real.config");
        fs::write(&real, "A=1\n")?;
        let link = dir.path().join("ecs.config");
        std::os::unix::fs::symlink("real.config", &link)?;
        Plan::new(&link, &cluster("c"))?.apply()?;
        assert!(fs::symlink_metadata(&link)?.file_type().is_symlink());
        assert_eq!(fs::read_to_string(&real)?, "A=1\nECS_CLUSTER=c\n");
        Ok(())
    }

    #[test]
    fn a_dangling_link_and_a_directory_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let link = dir.path().join("ecs.config");
        std::os::unix::fs::symlink("missing.config", &link)?;
        let err = Plan::new(&link, &cluster("c")).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("missing.config, which does not exist")),
            "{err:?}"
        );
        assert!(fs::symlink_metadata(&link)?.file_type().is_symlink());

        let err = Plan::new(dir.path(), &cluster("c"))
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("is a directory, not a regular file")),
            "{err:?}"
        );
        Ok(())
    }
}
