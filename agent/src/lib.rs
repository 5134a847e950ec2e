//! blockwatch: a node agent for AWS Batch unmanaged compute environments.
//!
//! `core` is pure (values in, decisions out); `sources` read the world,
//! `actions` change it, `host` is the machine the agent runs on.

/// The pure core, a crate of its own (`agent/core`), under its old path.
pub use blockwatch_core as core;

pub mod actions;
pub mod cli;
pub mod exit;
pub mod host;
pub mod join;
pub mod run;
pub mod sources;
pub mod status;
