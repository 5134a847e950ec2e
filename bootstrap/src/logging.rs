//! What the launcher says on stderr besides its result: errors, `--wait`
//! progress, and at debug each AWS call. `--log-level` chooses how much, with
//! the agent's level names; info, the default, shows what the launcher has
//! always shown.
//!
//! A small logger of its own rather than env_logger: lines keep the
//! `blockwatch-launch: error: ...` form scripts already match, and the level
//! comes from the flag alone.

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// The levels `--log-level` names: each shows itself and every level above.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogLevel {
    /// Only the error that ends the command
    Error,
    /// Errors and warnings
    Warn,
    /// Also `--wait` progress
    #[default]
    Info,
    /// Also each AWS call
    Debug,
    /// Everything
    Trace,
}

impl From<LogLevel> for LevelFilter {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Error => Self::Error,
            LogLevel::Warn => Self::Warn,
            LogLevel::Info => Self::Info,
            LogLevel::Debug => Self::Debug,
            LogLevel::Trace => Self::Trace,
        }
    }
}

/// Installs the stderr logger at `level`. A logger already installed (only
/// possible in tests) is kept.
pub fn init(level: LogLevel) {
    if log::set_boxed_logger(Box::new(StderrLog)).is_ok() {
        log::set_max_level(level.into());
    }
}

/// Whether `--wait` progress is shown.
pub fn shows_progress() -> bool {
    log::log_enabled!(Level::Info)
}

#[derive(Debug)]
struct StderrLog;

/// The line for a record, newline included.
fn line(level: Level, message: &std::fmt::Arguments<'_>) -> String {
    let label = match level {
        Level::Error => "error: ",
        Level::Warn => "warning: ",
        Level::Info => "",
        Level::Debug => "debug: ",
        Level::Trace => "trace: ",
    };
    format!("blockwatch-launch: {label}{message}\n")
}

impl Log for StderrLog {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        // Only the launcher's own records: the SDK's dependencies log too.
        if !record.target().starts_with("blockwatch") {
            return;
        }
        // One write per line so concurrent lines never interleave.
        let text = line(record.level(), record.args());
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_line_keeps_the_form_scripts_match() {
        assert_eq!(
            line(Level::Error, &format_args!("no such thing")),
            "blockwatch-launch: error: no such thing\n"
        );
        assert_eq!(
            line(Level::Debug, &format_args!("calling ec2:RunInstances")),
            "blockwatch-launch: debug: calling ec2:RunInstances\n"
        );
    }

    #[test]
    fn each_level_shows_itself_and_those_above() {
        assert_eq!(LevelFilter::from(LogLevel::default()), LevelFilter::Info);
        assert!(LevelFilter::from(LogLevel::Error) < LevelFilter::from(LogLevel::Warn));
        assert!(LevelFilter::from(LogLevel::Debug) < LevelFilter::from(LogLevel::Trace));
    }
}
