//! Reading `/etc/blockwatch/blockwatch.toml`.
//!
//! The file names `poweroff_command`, which runs as root, so it is refused
//! (like sshd's StrictModes) when anyone but root (or the user blockwatch
//! runs as) could change it: a file that is group- or world-writable or owned
//! by another user, or in a directory on its path that is.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use blockwatch_core::escape::escape;
use blockwatch_core::file_model::{writable_by_others, ConfigFileError, FileConfig};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/blockwatch/blockwatch.toml";

/// Loads the config file. A missing file is an empty config only when it is
/// the default path; a path the operator named must exist.
pub fn load(path: &Path, explicitly_named: bool) -> Result<Option<FileConfig>, ConfigFileError> {
    let fail = |reason: String| ConfigFileError {
        path: path.to_owned(),
        reason,
    };
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == ErrorKind::NotFound && !explicitly_named => return Ok(None),
        Err(err) => return Err(fail(format!("cannot open it: {err}"))),
    };
    // Judged on the open file, so it cannot be swapped between check and read.
    let meta = file
        .metadata()
        .map_err(|err| fail(format!("cannot inspect it: {err}")))?;
    if meta.is_dir() {
        return Err(fail("is a directory, not a file".to_owned()));
    }
    if !meta.is_file() {
        return Err(fail("is not a regular file".to_owned()));
    }
    let euid = effective_uid();
    if let Some(problem) = writable_by_others(false, meta.mode(), meta.uid(), euid) {
        return Err(fail(format!(
            "{problem}: others could change the command blockwatch runs as root; refusing it (fix: chown root: and chmod go-w the file)"
        )));
    }
    for dir in directories_above(path) {
        let Ok(dir_meta) = std::fs::metadata(&dir) else {
            continue;
        };
        if let Some(problem) = writable_by_others(true, dir_meta.mode(), dir_meta.uid(), euid) {
            return Err(fail(format!(
                "its directory {} {problem}: others could replace the file; refusing it (fix: chown root: and chmod go-w that directory)",
                dir.display()
            )));
        }
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|err| fail(format!("cannot read it: {err}")))?;
    let text = String::from_utf8(bytes).map_err(|err| {
        let at = err.utf8_error().valid_up_to();
        let line = err.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1;
        fail(format!(
            "line {line}: not UTF-8 (invalid byte at offset {at}); TOML files must be UTF-8"
        ))
    })?;
    if text.trim().is_empty() {
        log::info!(
            "config file {} is empty",
            escape(&path.display().to_string())
        );
    }
    FileConfig::parse(&text, path).map(Some)
}

/// Every directory from the file's own up to `/`, both along the path as
/// given and along its resolved form (symlinks followed).
fn directories_above(path: &Path) -> BTreeSet<PathBuf> {
    let mut dirs = BTreeSet::new();
    let given_parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    for start in [
        std::fs::canonicalize(path)
            .ok()
            .and_then(|p| p.parent().map(Path::to_owned)),
        std::fs::canonicalize(given_parent).ok(),
    ]
    .into_iter()
    .flatten()
    {
        dirs.extend(start.ancestors().map(Path::to_owned));
    }
    dirs
}

/// The effective uid, from `/proc/self/status`; root if it cannot be read,
/// which is the stricter assumption.
fn effective_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1))
                .and_then(|euid| euid.parse().ok())
        })
        .unwrap_or(0)
}
