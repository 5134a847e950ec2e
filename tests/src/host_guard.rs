//! A `PATH` for every `blockwatch` a test starts, whose first directory
//! holds stand-ins for `systemctl`, `poweroff`, `shutdown`, `reboot` and
//! `halt`. The agent's default `poweroff_command` is `systemctl --no-block poweroff`,
//! and a lease now ends in a power-off by default: a test that forgets to
//! set a harmless command must never power off the machine running it.
//! The stand-ins write what they were asked to a log and fail.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The commands that could end the host.
pub const GUARDED: [&str; 5] = ["systemctl", "poweroff", "shutdown", "reboot", "halt"];

/// The PATH the guarded host directories follow.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One directory for every test process of this user (nextest runs each
/// test in a process of its own): each stand-in is written to a temporary
/// file and renamed into place, so a process never runs a half-written one.
#[allow(clippy::panic)]
fn guard_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let uid = std::fs::metadata("/proc/self").map_or(0, |m| {
            use std::os::unix::fs::MetadataExt;
            m.uid()
        });
        let dir = std::env::temp_dir().join(format!("blockwatch-host-guard-{uid}"));
        let made = std::fs::create_dir_all(&dir).and_then(|()| {
            for name in GUARDED {
                let script = format!(
                    "#!/bin/sh\necho \"{name} $*\" >> '{}'\necho 'blocked by the test host guard: {name} $*' >&2\nexit 1\n",
                    dir.join("calls.log").display()
                );
                let path = dir.join(name);
                if std::fs::read_to_string(&path).is_ok_and(|s| s == script) {
                    continue;
                }
                let temp = dir.join(format!(".{name}.{}", std::process::id()));
                std::fs::write(&temp, script)?;
                std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o755))?;
                std::fs::rename(&temp, &path)?;
            }
            Ok(())
        });
        if let Err(err) = made {
            // Without the guard no agent may start: the test fails loudly.
            panic!("cannot write the host guard in {}: {err}", dir.display());
        }
        dir
    })
}

/// `PATH` with the guard first.
pub fn path() -> OsString {
    let mut path = guard_dir().clone().into_os_string();
    path.push(":");
    path.push(SYSTEM_PATH);
    path
}

/// What the stand-ins were asked, one line a call (empty when none was).
pub fn calls() -> String {
    std::fs::read_to_string(guard_dir().join("calls.log")).unwrap_or_default()
}
