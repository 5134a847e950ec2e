//! blockwatch: a node agent for AWS Batch unmanaged compute environments.
//!
//! `blockwatch_core` is pure (values in, decisions out); `sources` read the world,
//! `actions` change it, `host` is the machine the agent runs on.

pub mod actions;
pub mod cli;
pub mod exit;
pub mod host;
pub mod join;
pub mod run;
pub mod sources;
pub mod status_command;
