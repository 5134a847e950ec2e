//! The host: files written atomically, logging to journald or stderr, the
//! state directory (its lock, a dry run's private copy), the HTTP client.

pub mod atomic_file;
pub mod dry_run;
pub mod entropy;
pub mod http;
pub mod job_deadline_files;
pub mod lock;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod state_dir;
