//! Writing `ECS_CLUSTER` into ecs.config on disk.

use std::fs::{self, Permissions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::core::cluster::ClusterName;
use crate::core::ecs_config::{current_cluster, set_cluster, Rewrite};
use crate::host::atomic_file;

pub const DEFAULT_ECS_CONFIG_PATH: &str = "/etc/ecs/ecs.config";
const MODE: u32 = 0o644;

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
    pub path: PathBuf,
    existing: Option<Vec<u8>>,
    rewrite: Rewrite,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct WriteError {
    pub path: String,
    pub source: io::Error,
}

impl Plan {
    /// Reads the file (absent is fine) and works out its new content.
    pub fn new(path: &Path, cluster: &ClusterName) -> Result<Self, WriteError> {
        let existing = match fs::read(path) {
            Ok(bytes) => Some(bytes),
            Err(err) if err.kind() == ErrorKind::NotFound => None,
            Err(source) => {
                return Err(WriteError {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        let rewrite = set_cluster(existing.as_deref(), cluster);
        Ok(Self {
            path: path.to_owned(),
            existing,
            rewrite,
        })
    }

    pub fn outcome(&self) -> Outcome {
        match (&self.existing, &self.rewrite) {
            (_, Rewrite::Unchanged) => Outcome::AlreadyCorrect,
            (None, Rewrite::Replace(_)) => Outcome::Created,
            (Some(old), Rewrite::Replace(_)) => Outcome::Updated {
                previous_cluster: current_cluster(old),
            },
        }
    }

    /// The full content the file will have.
    pub fn content(&self) -> &[u8] {
        match &self.rewrite {
            Rewrite::Replace(bytes) => bytes,
            Rewrite::Unchanged => self.existing.as_deref().unwrap_or_default(),
        }
    }

    /// Writes the file atomically, unless it is already right. A right file
    /// with the wrong mode only gets its mode fixed.
    pub fn apply(&self) -> Result<Outcome, WriteError> {
        let fail = |source| WriteError {
            path: self.path.display().to_string(),
            source,
        };
        match &self.rewrite {
            Rewrite::Replace(bytes) => {
                atomic_file::replace(&self.path, bytes, MODE).map_err(fail)?
            }
            Rewrite::Unchanged => {
                let mode = fs::metadata(&self.path).map_err(fail)?.permissions().mode() & 0o7777;
                if mode != MODE {
                    fs::set_permissions(&self.path, Permissions::from_mode(MODE)).map_err(fail)?;
                }
            }
        }
        Ok(self.outcome())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(name: &str) -> ClusterName {
        ClusterName::parse(name).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn second_apply_does_not_touch_the_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("ecs.config");
        fs::write(&path, "X=1\r\nECS_CLUSTER=\"old\"\r\n")?;
        let first = Plan::new(&path, &cluster("new"))?.apply()?;
        assert_eq!(
            first,
            Outcome::Updated {
                previous_cluster: Some("\"old\"".into())
            }
        );
        let inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path)?);
        assert_eq!(
            Plan::new(&path, &cluster("new"))?.apply()?,
            Outcome::AlreadyCorrect
        );
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path)?),
            inode,
            "not rewritten"
        );
        assert_eq!(fs::read_to_string(&path)?, "X=1\nECS_CLUSTER=new\n");
        Ok(())
    }

    #[test]
    fn fixes_only_the_mode_of_a_right_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("ecs.config");
        fs::write(&path, "ECS_CLUSTER=c\n")?;
        fs::set_permissions(&path, Permissions::from_mode(0o600))?;
        assert_eq!(
            Plan::new(&path, &cluster("c"))?.apply()?,
            Outcome::AlreadyCorrect
        );
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o644);
        Ok(())
    }
}
