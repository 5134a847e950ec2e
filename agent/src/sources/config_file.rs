//! Reading `/etc/blockwatch/blockwatch.toml`.

use std::io::ErrorKind;
use std::path::Path;

use crate::core::config::{ConfigFileError, FileConfig};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/blockwatch/blockwatch.toml";

/// Loads the config file. A missing file is an empty config only when it is
/// the default path; a path the operator named must exist.
pub fn load(path: &Path, explicitly_named: bool) -> Result<Option<FileConfig>, ConfigFileError> {
    match std::fs::read_to_string(path) {
        Ok(text) => FileConfig::parse(&text, path).map(Some),
        Err(err) if err.kind() == ErrorKind::NotFound && !explicitly_named => Ok(None),
        Err(err) => Err(ConfigFileError {
            path: path.to_owned(),
            reason: err.to_string(),
        }),
    }
}
