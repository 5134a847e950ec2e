//! What `run` was asked to do.

use std::path::PathBuf;

use crate::host::state_dir;
use crate::join::ResolveOptions;

#[derive(Debug, Clone)]
pub struct RunRequest {
    pub config_path: PathBuf,
    pub config_path_explicit: bool,
    pub state_dir: PathBuf,
    pub dry_run: bool,
    pub introspection_url: String,
    /// Where the deadline files jobs read are kept.
    pub deadline_dir: PathBuf,
}

impl RunRequest {
    /// How `run` resolves its cluster: tags always read (they carry the
    /// lease), `known` from the last join, and whether it may go on unjoined.
    pub fn resolve_options<'a>(
        &'a self,
        known: Option<&'a state_dir::JoinRecord>,
        go_on_unjoined: bool,
    ) -> ResolveOptions<'a> {
        ResolveOptions {
            config_path: &self.config_path,
            config_path_explicit: self.config_path_explicit,
            dry_run_flag: self.dry_run,
            always_read_tags: true,
            known,
            go_on_unjoined,
        }
    }
}
