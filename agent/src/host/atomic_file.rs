//! Replacing a file so that readers see the old bytes or the new, never a mix,
//! even across a crash or power loss.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether a failed directory fsync was logged: once per process is enough
/// to tell an operator their filesystem does not sync directories.
static DIRECTORY_SYNC_WARNED: AtomicBool = AtomicBool::new(false);

/// Writes `bytes` to `path` with `mode`: a temp file in the same directory,
/// fsync, rename over the target, fsync the directory. Missing parent
/// directories are created with mode 0755. On error the target is untouched
/// and the temp file is removed. Once the rename is done the file is
/// replaced: a failing directory fsync after it is logged (once), not
/// returned, since readers already see the new bytes.
pub fn replace(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    replace_owned(path, bytes, mode, None)
}

/// Like [`replace`], and the new file also gets `owner` (uid, gid) before it
/// takes the old one's place, so a replaced file keeps its owner. The temp
/// file is created with `mode` (less any set-id bits) from the start, so a
/// private file is never readable by others, not even for a moment.
pub fn replace_owned(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    replace_then_sync(path, bytes, mode, owner, sync_directory)
}

/// [`replace_owned`] with the directory fsync given, so that tests can make
/// it fail.
fn replace_then_sync(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
    sync_dir: fn(&Path) -> io::Result<()>,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    DirBuilder::new().recursive(true).mode(0o755).create(&dir)?;
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let temp = dir.join(format!(
        ".{}.blockwatch-{}.tmp",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = write_then_rename(&temp, path, bytes, mode, owner);
    if result.is_err() {
        // Best effort: the error that matters is the one we return.
        let _ = fs::remove_file(&temp);
    }
    result?;
    after_rename(&dir, sync_dir(&dir));
    Ok(())
}

fn sync_directory(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The rename made the new bytes visible; a failed directory fsync only
/// means the rename may not survive a power loss.
fn after_rename(dir: &Path, synced: io::Result<()>) {
    if let Err(err) = synced {
        if !DIRECTORY_SYNC_WARNED.swap(true, Ordering::Relaxed) {
            log::warn!(
                "cannot fsync the directory {} after replacing a file in it: {err}; the file is written, but a power loss may undo the replacement (logged once)",
                dir.display()
            );
        }
    }
}

fn write_then_rename(
    temp: &Path,
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    // A temp file left by a crashed run with the same PID is ours to replace.
    match fs::remove_file(temp) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & 0o777)
        .open(temp)?;
    file.write_all(bytes)?;
    // The umask may have narrowed the mode given at creation.
    file.set_permissions(Permissions::from_mode(mode))?;
    // Mode first: once the file is another user's, changing its mode would
    // take CAP_FOWNER. Only a different owner costs a chown (CAP_CHOWN), and
    // set-id bits do not survive it (ecs.config has no use for them).
    if let Some((uid, gid)) = owner {
        let created = file.metadata()?;
        if (created.uid(), created.gid()) != (uid, gid) {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        }
    }
    file.sync_all()?;
    drop(file);
    fs::rename(temp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_parents_and_sets_the_mode_despite_umask() -> io::Result<()> {
        let root = tempfile::tempdir()?;
        let path = root.path().join("etc/ecs/ecs.config");
        replace(&path, b"A=1\n", 0o644)?;
        assert_eq!(fs::read(&path)?, b"A=1\n");
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o644);
        assert_eq!(
            fs::read_dir(path.parent().unwrap_or(root.path()))?.count(),
            1,
            "no temp file left"
        );
        Ok(())
    }

    #[test]
    fn replace_owned_gives_the_new_file_the_owner_and_mode() -> io::Result<()> {
        let root = tempfile::tempdir()?;
        let path = root.path().join("secret");
        // Our own uid and gid: a chown any user may do.
        let me = fs::metadata(root.path())?;
        replace_owned(&path, b"S=1\n", 0o600, Some((me.uid(), me.gid())))?;
        let meta = fs::metadata(&path)?;
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        assert_eq!((meta.uid(), meta.gid()), (me.uid(), me.gid()));
        Ok(())
    }

    #[test]
    fn a_failed_directory_fsync_after_the_rename_is_not_a_failed_write() -> io::Result<()> {
        let root = tempfile::tempdir()?;
        let path = root.path().join("state.json");
        fs::write(&path, b"OLD\n")?;
        let failing = |_: &Path| Err(io::Error::from_raw_os_error(5));
        replace_then_sync(&path, b"NEW\n", 0o644, None, failing)?;
        assert_eq!(fs::read(&path)?, b"NEW\n");
        assert_eq!(fs::read_dir(root.path())?.count(), 1, "no temp file left");
        Ok(())
    }

    #[test]
    fn a_failed_write_leaves_the_target_untouched_and_no_temp_file() -> io::Result<()> {
        let root = tempfile::tempdir()?;
        let path = root.path().join("ecs.config");
        fs::write(&path, b"OLD\r\n")?;
        // A directory where the temp file must go makes the write fail.
        let temp = root
            .path()
            .join(format!(".ecs.config.blockwatch-{}.tmp", std::process::id()));
        fs::create_dir(&temp)?;
        fs::write(temp.join("pin"), b"")?;
        assert!(replace(&path, b"NEW\n", 0o644).is_err());
        assert_eq!(fs::read(&path)?, b"OLD\r\n");
        Ok(())
    }
}
