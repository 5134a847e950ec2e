//! The host: files written atomically, logging to journald or stderr, the
//! state directory, the HTTP client.

pub mod atomic_file;
pub mod entropy;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod state;
