//! What a finished command left: its exit code and its output, as text.

use std::process::Output;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The exit code; -1 when a signal ended the process.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Assertions that show the run whenever they fail.
#[allow(clippy::panic)]
impl Run {
    /// It exited with `code`.
    #[track_caller]
    pub fn assert_exit(&self, code: i32) -> &Self {
        if self.code != code {
            panic!(
                "exit {} instead of {code}: {}{}",
                self.code, self.stderr, self.stdout
            );
        }
        self
    }

    /// Its stdout holds `needle`.
    #[track_caller]
    pub fn assert_stdout_has(&self, needle: impl AsRef<str>) -> &Self {
        if !self.stdout.contains(needle.as_ref()) {
            panic!("stdout lacks {:?}: {}", needle.as_ref(), self.stdout);
        }
        self
    }

    /// Its stderr holds `needle`.
    #[track_caller]
    pub fn assert_stderr_has(&self, needle: impl AsRef<str>) -> &Self {
        if !self.stderr.contains(needle.as_ref()) {
            panic!("stderr lacks {:?}: {}", needle.as_ref(), self.stderr);
        }
        self
    }
}
