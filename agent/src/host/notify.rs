//! systemd notifications (`Type=notify`): READY, STATUS and the watchdog.

use std::time::Duration;

use sd_notify::NotifyState;

#[derive(Debug)]
pub struct Notifier {
    watchdog: Option<Duration>,
    ready: bool,
    last_status: String,
}

impl Notifier {
    /// Reads `WATCHDOG_USEC`; does nothing at all outside systemd.
    pub fn new() -> Self {
        Self {
            watchdog: sd_notify::watchdog_enabled(),
            ready: false,
            last_status: String::new(),
        }
    }

    /// How often the watchdog must be fed, if the unit set `WatchdogSec`.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
            .map(|w| (w / 2).max(Duration::from_millis(100)))
    }

    /// Sends `STATUS=` (when it changed), `READY=1` the first time, and
    /// `WATCHDOG=1` when enabled.
    pub fn tick(&mut self, status: &str) {
        let mut states = Vec::new();
        if status != self.last_status {
            states.push(NotifyState::Status(status));
        }
        if !self.ready {
            states.push(NotifyState::Ready);
        }
        if self.watchdog.is_some() {
            states.push(NotifyState::Watchdog);
        }
        if states.is_empty() {
            return;
        }
        // Without NOTIFY_SOCKET this is a no-op; a send error only costs a status line.
        if let Err(err) = sd_notify::notify(&states) {
            log::debug!("sd_notify: {err}");
        }
        self.ready = true;
        self.last_status = status.to_owned();
    }

    /// Feeds the watchdog between polls, for a `WatchdogSec` shorter than
    /// the poll interval.
    pub fn watchdog(&self) {
        if self.watchdog.is_some() {
            let _ = sd_notify::notify(&[NotifyState::Watchdog]);
        }
    }

    pub fn stopping(&self) {
        let _ = sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }
}

impl Default for Notifier {
    fn default() -> Self {
        Self::new()
    }
}
