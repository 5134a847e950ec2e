//! Ctrl-C (SIGINT) and SIGTERM while `launch` runs. Once registered they no
//! longer end the process at once: a launch under way is finished, so that
//! what it launched is reported and the template it created is deleted;
//! a `--wait` is given up. A second one stops at once.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// SIGINT and SIGTERM, registered.
#[derive(Debug)]
pub struct Interrupts {
    interrupt: Option<Signal>,
    terminate: Option<Signal>,
}

impl Interrupts {
    /// Registers both. One that cannot be registered keeps its default
    /// action (the process ends), as before.
    pub fn register() -> Self {
        Self {
            interrupt: registered(SignalKind::interrupt()),
            terminate: registered(SignalKind::terminate()),
        }
    }

    /// The next SIGINT or SIGTERM.
    pub async fn next(&mut self) {
        tokio::select! {
            () = arrival(&mut self.interrupt) => {}
            () = arrival(&mut self.terminate) => {}
        }
    }
}

fn registered(kind: SignalKind) -> Option<Signal> {
    signal(kind)
        .map_err(|err| log::debug!("cannot handle signal {}: {err}", kind.as_raw_value()))
        .ok()
}

/// The signal's next arrival; never, for one not registered.
async fn arrival(signal: &mut Option<Signal>) {
    let arrived = match signal {
        Some(signal) => signal.recv().await,
        None => None,
    };
    if arrived.is_none() {
        std::future::pending::<()>().await;
    }
}
