//! Logging: structured records to journald when our stderr is connected to
//! the journal (as under systemd), plain lines on stderr otherwise.
//!
//! Structured fields travel as `log` key-values; journald receives them as
//! fields (`INSTANCE_ID`, `CLUSTER`, `SOURCE`, ...). On stderr only the
//! message is shown, since it already says the same in words.
//!
//! Every message is escaped once more as a whole before it is written (see
//! `core::escape`, idempotent): values are escaped where they are logged,
//! and this is the safety net for one that was not, so no message can
//! start a log line of its own.

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::core::escape::escaped;

/// Installs the logger. Never fails: if the journal cannot be used, stderr is.
pub fn init(level: LevelFilter) {
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
