//! What must be served while the agent works: SIGTERM and SIGINT, and the
//! systemd watchdog.

use std::future::Future;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::time::{Instant, Interval};

use crate::exit::AgentError;
use crate::host::notify::Notifier;

/// The watchdog is fed while a tick is in flight, but only this long: a
/// tick that runs longer is stuck, and systemd should restart us.
const TICK_LIMIT: Duration = Duration::from_secs(600);

/// SIGTERM and SIGINT.
#[derive(Debug)]
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self, AgentError> {
        let install = |kind| {
            signal(kind).map_err(|e| AgentError::Internal(format!("cannot handle signals: {e}")))
        };
        Ok(Self {
            terminate: install(SignalKind::terminate())?,
            interrupt: install(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

/// The signals, the watchdog and its timer: what must be served while the
/// agent works.
#[derive(Debug)]
pub(super) struct Service {
    signals: Signals,
    pub notifier: Notifier,
    watchdog: Interval,
}

/// How a piece of work ended.
#[derive(Debug)]
pub(super) enum Served<T> {
    Done(T),
    /// SIGTERM or SIGINT came first; the work was dropped.
    Stopped,
}

/// What the loop waits for between ticks.
#[derive(Debug)]
pub(super) enum Wakeup<T> {
    /// Time for a tick.
    Tick,
    /// Something else sent to the loop (an EC2 lookup's report).
    Message(T),
    /// SIGTERM or SIGINT.
    Stop,
}

impl Service {
    pub(super) fn new() -> Result<Self, AgentError> {
        let notifier = Notifier::new();
        // Without a watchdog this timer idles at a day and does nothing.
        let mut watchdog = tokio::time::interval(
            notifier
                .watchdog_interval()
                .unwrap_or(Duration::from_secs(86_400)),
        );
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Self {
            signals: Signals::new()?,
            notifier,
            watchdog,
        })
    }

    /// Waits for the next tick of `ticker`, a message, or a signal, feeding
    /// the watchdog meanwhile.
    pub(super) async fn wait<T>(
        &mut self,
        ticker: &mut Interval,
        messages: &mut tokio::sync::mpsc::UnboundedReceiver<T>,
    ) -> Wakeup<T> {
        loop {
            tokio::select! {
                _ = ticker.tick() => return Wakeup::Tick,
                _ = self.watchdog.tick() => self.notifier.watchdog(),
                () = self.signals.recv() => return Wakeup::Stop,
                Some(message) = messages.recv() => return Wakeup::Message(message),
            }
        }
    }

    /// Runs `work` to its end while feeding the watchdog (for up to
    /// [`TICK_LIMIT`]) and listening for SIGTERM and SIGINT, which drop it.
    pub(super) async fn serve<T>(&mut self, work: impl Future<Output = T>) -> Served<T> {
        let started = Instant::now();
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return Served::Done(done),
                _ = self.watchdog.tick() => {
                    if started.elapsed() < TICK_LIMIT {
                        self.notifier.watchdog();
                    }
                }
                () = self.signals.recv() => return Served::Stopped,
            }
        }
    }

    /// Runs `work` to its end, whatever comes: feeds the watchdog meanwhile
    /// (for up to [`TICK_LIMIT`]) and remembers, without acting on it, a
    /// SIGTERM or SIGINT. For the power-off command, which makes systemd
    /// send SIGTERM and may take longer than `WatchdogSec`. Returns whether
    /// a stop was asked meanwhile.
    pub(super) async fn finish(&mut self, work: impl Future<Output = ()>) -> bool {
        let started = Instant::now();
        let mut stop_asked = false;
        tokio::pin!(work);
        loop {
            tokio::select! {
                () = &mut work => return stop_asked,
                _ = self.watchdog.tick() => {
                    if started.elapsed() < TICK_LIMIT {
                        self.notifier.watchdog();
                    }
                }
                () = self.signals.recv() => {
                    if !stop_asked {
                        log::info!("asked to stop; finishing the power-off first");
                    }
                    stop_asked = true;
                }
            }
        }
    }
}
