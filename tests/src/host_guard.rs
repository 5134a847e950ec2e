//! A `PATH` for every `blockwatch` a test starts, whose first directory
//! holds stand-ins for `systemctl`, `poweroff`, `shutdown`, `reboot` and
//! `halt`. The agent's default `poweroff_command` is `systemctl poweroff`,
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

#[allow(clippy::panic)]
fn guard_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("blockwatch-host-guard-{}", std::process::id()));
        let made = std::fs::create_dir_all(&dir).and_then(|()| {
            for name in GUARDED {
                let path = dir.join(name);
                let script = format!(
                    "#!/bin/sh\necho \"{name} $*\" >> '{}'\necho 'blocked by the test host guard: {name} $*' >&2\nexit 1\n",
                    dir.join("calls.log").display()
                );
                std::fs::write(&path, script)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
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
