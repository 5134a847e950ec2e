//! Logging: structured records to journald when our stderr is connected to
//! the journal (as under systemd), plain lines on stderr otherwise, both at
//! the level `--log-level`, else `RUST_LOG`, else info, chooses.
//!
//! Structured fields travel as `log` key-values; journald receives them as
//! fields (`INSTANCE_ID`, `CLUSTER`, `SOURCE`, ...). On stderr only the
//! message is shown, since it already says the same in words.
//!
//! Every message is escaped once more as a whole before it is written (see
//! `core::escape`, idempotent): values are escaped where they are logged,
//! and this is the safety net for one that was not, so no message can
//! start a log line of its own.

use std::ffi::OsStr;
use std::io::Write;

use clap::ValueEnum;
use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::cli::LogLevel;
use blockwatch_core::escape::{escaped, quoted};

/// The level to log at, where it came from, and a `RUST_LOG` that was not
/// understood (to be said once the logger is up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelChoice {
    pub level: LevelFilter,
    pub source: &'static str,
    pub rejected_rust_log: Option<String>,
}

/// `--log-level` wins; then `RUST_LOG` (a level name, any case; empty counts
/// as unset); else info. A `RUST_LOG` of any other form (such as
/// `blockwatch=debug`) is refused, not half-understood: info, and a warning.
pub fn choose_level(flag: Option<LogLevel>, rust_log: Option<&OsStr>) -> LevelChoice {
    let default = LevelChoice {
        level: LevelFilter::Info,
        source: "the default",
        rejected_rust_log: None,
    };
    if let Some(level) = flag {
        return LevelChoice {
            level: level.into(),
            source: "--log-level",
            rejected_rust_log: None,
        };
    }
    let Some(value) = rust_log.map(OsStr::to_string_lossy) else {
        return default;
    };
    if value.trim().is_empty() {
        return default;
    }
    match LogLevel::from_str(value.trim(), true) {
        Ok(level) => LevelChoice {
            level: level.into(),
            source: "RUST_LOG",
            rejected_rust_log: None,
        },
        Err(_) => LevelChoice {
            rejected_rust_log: Some(value.into_owned()),
            ..default
        },
    }
}

/// Installs the logger at the level [`choose_level`] picks. Never fails: if
/// the journal cannot be used, stderr is.
pub fn init(flag: Option<LogLevel>, rust_log: Option<&OsStr>) {
    let choice = choose_level(flag, rust_log);
    install(choice.level);
    if let Some(value) = &choice.rejected_rust_log {
        log::warn!(
            "ignoring RUST_LOG={}: not a log level (error, warn, info, debug or trace); logging at info",
            quoted(value)
        );
    }
    log::debug!(
        "blockwatch {}: logging at {} (from {})",
        env!("CARGO_PKG_VERSION"),
        choice.level.as_str().to_ascii_lowercase(),
        choice.source
    );
}

fn install(level: LevelFilter) {
    if systemd_journal_logger::connected_to_journal() {
        if let Ok(journal) = systemd_journal_logger::JournalLog::new() {
            let journal = journal
                .with_extra_fields([("VERSION", env!("CARGO_PKG_VERSION"))])
                .with_syslog_identifier("blockwatch".to_owned());
            if log::set_boxed_logger(Box::new(Escaping(journal))).is_ok() {
                log::set_max_level(level);
                return;
            }
        }
    }
    if log::set_boxed_logger(Box::new(Escaping(StderrLog))).is_ok() {
        log::set_max_level(level);
    }
}

/// Hands `inner` each record with its message escaped.
#[derive(Debug)]
struct Escaping<L>(L);

impl<L: Log> Log for Escaping<L> {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        let message = record.args().to_string();
        self.0.log(
            &Record::builder()
                .args(format_args!("{}", escaped(&message)))
                .metadata(record.metadata().clone())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .key_values(record.key_values())
                .build(),
        );
    }

    fn flush(&self) {
        self.0.flush();
    }
}

#[derive(Debug)]
struct StderrLog;

impl Log for StderrLog {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        let label = match record.level() {
            Level::Error => "error: ",
            Level::Warn => "warning: ",
            Level::Info => "",
            Level::Debug => "debug: ",
            Level::Trace => "trace: ",
        };
        // One write per line so concurrent lines never interleave.
        let line = format!("blockwatch: {label}{}\n", record.args());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Keeps the messages it is given.
    #[derive(Debug, Default)]
    struct Kept(Mutex<Vec<String>>);

    impl Log for Kept {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &Record<'_>) {
            if let Ok(mut kept) = self.0.lock() {
                kept.push(record.args().to_string());
            }
        }
        fn flush(&self) {}
    }

    fn choose(flag: Option<LogLevel>, rust_log: Option<&str>) -> LevelChoice {
        choose_level(flag, rust_log.map(OsStr::new))
    }

    #[test]
    fn the_flag_wins_over_rust_log_even_an_invalid_one() {
        for rust_log in [None, Some("trace"), Some("not-a-level")] {
            let choice = choose(Some(LogLevel::Warn), rust_log);
            assert_eq!(
                choice,
                LevelChoice {
                    level: LevelFilter::Warn,
                    source: "--log-level",
                    rejected_rust_log: None,
                },
                "RUST_LOG={rust_log:?}"
            );
        }
    }

    #[test]
    fn rust_log_names_a_level_in_any_case() {
        for (rust_log, level) in [
            ("debug", LevelFilter::Debug),
            ("TRACE", LevelFilter::Trace),
            (" Error\n", LevelFilter::Error),
        ] {
            let choice = choose(None, Some(rust_log));
            assert_eq!(
                (choice.level, choice.source),
                (level, "RUST_LOG"),
                "{rust_log:?}"
            );
            assert_eq!(choice.rejected_rust_log, None);
        }
    }

    #[test]
    fn without_flag_or_rust_log_the_level_is_info() {
        for rust_log in [None, Some(""), Some("  ")] {
            let choice = choose(None, rust_log);
            assert_eq!(
                (choice.level, choice.source, choice.rejected_rust_log),
                (LevelFilter::Info, "the default", None),
                "RUST_LOG={rust_log:?}"
            );
        }
    }

    #[test]
    fn a_rust_log_that_is_not_a_level_is_refused_and_info_used() {
        for rust_log in ["blockwatch=debug", "off", "verbose", "debug,info"] {
            let choice = choose(None, Some(rust_log));
            assert_eq!(choice.level, LevelFilter::Info, "{rust_log}");
            assert_eq!(choice.rejected_rust_log.as_deref(), Some(rust_log));
        }
    }

    #[test]
    fn a_message_cannot_start_a_line_of_its_own() {
        let logger = Escaping(Kept::default());
        let value = "ce\nECS_ENABLE_PRIVILEGED=true";
        logger.log(
            &Record::builder()
                .args(format_args!("cluster from tag: {value}"))
                .level(Level::Info)
                .build(),
        );
        let kept = logger.0 .0.lock().map(|k| k.clone()).unwrap_or_default();
        assert_eq!(
            kept,
            ["cluster from tag: ce\\nECS_ENABLE_PRIVILEGED=true".to_owned()]
        );
    }
}
