//! Logging: structured records to journald when our stderr is connected to
//! the journal (as under systemd), plain lines on stderr otherwise.
//!
//! Structured fields travel as `log` key-values; journald receives them as
//! fields (`INSTANCE_ID`, `CLUSTER`, `SOURCE`, ...). On stderr only the
//! message is shown, since it already says the same in words.

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Installs the logger. Never fails: if the journal cannot be used, stderr is.
pub fn init(level: LevelFilter) {
    if systemd_journal_logger::connected_to_journal() {
        if let Ok(journal) = systemd_journal_logger::JournalLog::new() {
            let installed = journal
                .with_extra_fields([("VERSION", env!("CARGO_PKG_VERSION"))])
                .with_syslog_identifier("blockwatch".to_owned())
                .install();
            if installed.is_ok() {
                log::set_max_level(level);
                return;
            }
        }
    }
    if log::set_boxed_logger(Box::new(StderrLog)).is_ok() {
        log::set_max_level(level);
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
